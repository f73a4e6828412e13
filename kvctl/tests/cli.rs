//! Process-level tests: the real `kvctl` binary against a real three-node cluster.
//!
//! Each test drives kvctl exactly as an operator would (arguments, stdin, exit code, stdout,
//! stderr) against `kvnode` processes started by `testkit` on ephemeral ports. Nothing waits
//! on a fixed sleep: every wait polls with a deadline. Clusters are expensive on two cores, so
//! the tests are grouped: one cluster for the output of every command, one for the failure
//! story (leader killed during appends and under `status --watch`, then one node down, then
//! two), and none for bad input.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::{poll, Cluster};

/// What one kvctl run produced.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Assert success and return stdout.
    #[track_caller]
    fn ok(self) -> String {
        assert_eq!(self.code, 0, "kvctl failed: {self:?}");
        self.stdout
    }

    /// Assert failure with `code`, a single `kvctl:` line on stderr, and return that line.
    #[track_caller]
    fn fails(self, code: i32) -> String {
        assert_eq!(self.code, code, "unexpected exit code: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "errors are one line: {self:?}");
        assert!(lines[0].starts_with("kvctl: "), "{self:?}");
        lines[0].to_string()
    }

    /// Assert failure with exit code `code` and one JSON error object on stderr, in the server's
    /// shape, with error code `error_code`; return its `error` member.
    #[track_caller]
    fn fails_json(self, code: i32, error_code: &str) -> Value {
        assert_eq!(self.code, code, "unexpected exit code: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one JSON object: {self:?}");
        let v: Value = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"));
        let error = v["error"].clone();
        assert_eq!(error["code"], json!(error_code), "{self:?}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{self:?}"
        );
        error
    }
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    cmd.args(args)
        .env_remove("KVCTL_CLUSTER")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Run kvctl with `stdin`, killing it if it outlives a generous deadline (a hang is a failure,
/// not a stuck test run).
fn run_with_stdin(args: &[&str], stdin: &str) -> Run {
    let mut child = command(args).spawn().expect("spawn kvctl");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    let stdout = reader(child.stdout.take().expect("stdout"));
    let stderr = reader(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kvctl {args:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn reader(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

fn run(args: &[&str]) -> Run {
    run_with_stdin(args, "")
}

/// Run kvctl against a cluster file, with extra global options first.
fn kvctl(cluster: &Path, args: &[&str]) -> Run {
    let file = cluster.to_str().expect("utf-8 path");
    let mut all = vec!["--cluster", file];
    all.extend_from_slice(args);
    run(&all)
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

#[test]
fn bad_input_gives_a_clear_error_and_the_documented_exit_code() {
    let dir = std::env::temp_dir().join(format!("kvctl-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let missing = dir.join("missing.toml");
    let malformed = dir.join("malformed.toml");
    std::fs::write(&malformed, "[[node]]\nid = \"zero\"\n").expect("write");
    let missing = missing.to_str().expect("utf-8");
    let malformed_path = malformed.to_str().expect("utf-8");

    let line = run(&["--cluster", missing, "get", "k"]).fails(2);
    assert!(
        line.contains("cannot read cluster file") && line.contains("missing.toml"),
        "{line}"
    );

    // Without --cluster, $KVCTL_CLUSTER or ./cluster.toml (the test's directory has none),
    // kvctl talks to the local default cluster and says so with -v. Whether one runs on this
    // machine is not the test's business: only that kvctl tried it, not a usage error.
    let mut cmd = command(&["-v", "--timeout", "300ms", "get", "k"]);
    cmd.current_dir(&dir);
    let out = cmd.output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("using the local default cluster of bin/cluster.sh, 127.0.0.1:8080"),
        "{stderr}"
    );
    if out.status.code() == Some(3) {
        assert!(stderr.contains("start it with bin/cluster.sh start"), "{stderr}");
    }
    // A cluster file that was named must exist.
    let mut cmd = command(&["get", "k"]);
    cmd.current_dir(&dir).env("KVCTL_CLUSTER", missing);
    let out = cmd.output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("from $KVCTL_CLUSTER"));

    let line = run(&["--cluster", malformed_path, "status"]).fails(2);
    assert!(line.contains("malformed"), "{line}");

    let line = run(&["--endpoints", "127.0.0.1:1", "frobnicate"]).fails(2);
    assert!(line.contains("unrecognized subcommand 'frobnicate'"), "{line}");

    let line = run(&["--endpoints", "127.0.0.1:1", "get", "k", "--bogus"]).fails(2);
    assert!(line.contains("--bogus"), "{line}");

    let line = run(&["--endpoints", "127.0.0.1:1", "-o", "xml", "get", "k"]).fails(2);
    assert!(line.contains("xml"), "{line}");

    // https:// is spoken, but a CA file that cannot be read is a usage error, said at once.
    let line = run(&[
        "--endpoints",
        "https://127.0.0.1:1",
        "--cacert",
        "/nonexistent/ca.pem",
        "get",
        "k",
    ])
    .fails(2);
    assert!(line.contains("--cacert /nonexistent/ca.pem"), "{line}");

    let line = run_with_stdin(&["--endpoints", "127.0.0.1:1", "put", "k", "-"], "").fails(2);
    assert!(line.contains("standard input is empty"), "{line}");

    let line = run(&["--endpoints", "127.0.0.1:1", "put", "k", "--file", missing]).fails(2);
    assert!(line.contains("cannot read value file"), "{line}");

    // A value that starts like JSON but is not JSON is a typo, not a string.
    let line = run(&["--endpoints", "127.0.0.1:1", "put", "c", r#"["cat","#]).fails(2);
    assert!(
        line.contains("the value starts like JSON but is not valid JSON") && line.contains("--string"),
        "{line}"
    );
    let broken = dir.join("broken.json");
    std::fs::write(&broken, "{\"a\": [1,\n").expect("write");
    let line = run(&[
        "--endpoints",
        "127.0.0.1:1",
        "append",
        "c",
        "--file",
        broken.to_str().expect("utf-8"),
    ])
    .fails(2);
    assert!(line.contains("the value file starts like JSON"), "{line}");

    // A write may not be retried after the cluster can have forgotten its idempotency key.
    let line = run(&["--endpoints", "127.0.0.1:1", "--timeout", "20m", "put", "k", "1"]).fails(2);
    assert!(line.contains("--timeout 20m is too long for a write"), "{line}");
    assert!(line.contains("9m or less"), "{line}");

    // With -o json every error is one JSON object in the server's shape: usage errors found
    // by clap, by kvctl, and the cluster's unavailability.
    let error = run(&["-o", "json", "--endpoints", "127.0.0.1:1", "frobnicate"]).fails_json(2, "usage");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("frobnicate")),
        "{error}"
    );
    run(&["--endpoints", "127.0.0.1:1", "put", "c", r#"{"a":"#, "-o", "json"]).fails_json(2, "usage");
    let error = run(&[
        "-ojson",
        "--endpoints",
        "127.0.0.1:1",
        "--timeout",
        "500ms",
        "get",
        "k",
    ])
    .fails_json(3, "unavailable");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("cluster unavailable")),
        "{error}"
    );

    // Nobody listens on port 1: the cluster is unavailable, reported within the timeout.
    let started = Instant::now();
    let line = run(&["--endpoints", "127.0.0.1:1", "--timeout", "700ms", "get", "k"]).fails(3);
    assert!(line.contains("cluster unavailable"), "{line}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let help = run(&["--help"]).ok();
    assert!(
        help.contains("Exit codes:") && help.contains("3  cluster unavailable"),
        "{help}"
    );
    let bare = run(&[]);
    assert_eq!(bare.code, 2, "no command is a usage error");

    let script = run(&["completions", "bash"]).ok();
    assert!(script.contains("kvctl"), "{script}");

    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn every_command_prints_its_result_in_table_json_and_plain_form() {
    let cluster = Cluster::start(3);
    let file = cluster.cluster_file();
    let k = |args: &[&str]| kvctl(file, args);

    // put: JSON stays JSON, anything else is a string, --string forces one.
    assert!(k(&["put", "pets", r#"["cat","dog"]"#])
        .ok()
        .starts_with("OK (index "));
    let index: u64 = k(&["-o", "plain", "put", "name", "Kyle Chard"])
        .ok()
        .trim()
        .parse()
        .expect("plain put prints the log index");
    assert!(index > 0);
    let written = json_of(&k(&["-o", "json", "put", "answer", "42"]).ok());
    assert_eq!(written["key"], json!("answer"));
    assert!(written["index"].as_u64().is_some_and(|i| i > index));
    assert_eq!(written["replayed"], json!(false));
    k(&["put", "--string", "text", "42"]).ok();
    k(&["put", "neg", "-5"]).ok();
    k(&["put", "obj", r#"{"a":1}"#]).ok();
    assert_eq!(
        run_with_stdin(
            &["--cluster", file.to_str().expect("utf-8"), "put", "piped", "-"],
            "hello from stdin\n"
        )
        .code,
        0
    );
    let value_file = cluster.dir().join("value.json");
    std::fs::write(&value_file, "{\"from\":\"file\"}\n").expect("write");
    k(&["put", "filed", "--file", value_file.to_str().expect("utf-8")]).ok();

    // get: the value as JSON (compact, since stdout is a pipe); -o json: the whole answer.
    assert_eq!(k(&["get", "pets"]).ok(), "[\"cat\",\"dog\"]\n");
    assert_eq!(k(&["-o", "plain", "get", "name"]).ok(), "\"Kyle Chard\"\n");
    assert_eq!(k(&["get", "answer"]).ok(), "42\n");
    assert_eq!(k(&["get", "text"]).ok(), "\"42\"\n");
    assert_eq!(k(&["get", "neg"]).ok(), "-5\n");
    assert_eq!(k(&["get", "obj"]).ok(), "{\"a\":1}\n");
    assert_eq!(k(&["get", "piped"]).ok(), "\"hello from stdin\"\n");
    assert_eq!(k(&["get", "filed"]).ok(), "{\"from\":\"file\"}\n");
    let full = json_of(&k(&["-o", "json", "get", "pets"]).ok());
    assert_eq!(full["key"], json!("pets"));
    assert_eq!(full["value"], json!(["cat", "dog"]));
    assert_eq!(full["consistency"], json!("linearizable"));
    let stale = json_of(&k(&["-o", "json", "--consistency", "stale", "get", "pets"]).ok());
    assert_eq!(stale["consistency"], json!("stale"));

    // append: onto a list, onto a string, creating a list; a type conflict is exit 5.
    k(&["append", "pets", "mouse"]).ok();
    assert_eq!(k(&["get", "pets"]).ok(), "[\"cat\",\"dog\",\"mouse\"]\n");
    k(&["append", "name", " Jr."]).ok();
    assert_eq!(k(&["get", "name"]).ok(), "\"Kyle Chard Jr.\"\n");
    k(&["append", "fresh", r#"{"n":1}"#]).ok();
    assert_eq!(k(&["get", "fresh"]).ok(), "[{\"n\":1}]\n");
    let line = k(&["append", "answer", "1"]).fails(5);
    assert!(line.contains("type_conflict"), "{line}");
    let error = k(&["-o", "json", "append", "answer", "1"]).fails_json(5, "type_conflict");
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains("APPEND")),
        "{error}"
    );
    k(&["-o", "json", "get", "no-such-key"]).fails_json(1, "key_not_found");
    // Broken JSON is refused before anything is sent; --string stores it as text.
    k(&["put", "typo", r#"["cat","#]).fails(2);
    k(&["get", "typo"]).fails(1);
    k(&["put", "--string", "typo", r#"["cat","#]).ok();
    assert_eq!(k(&["get", "typo"]).ok(), "\"[\\\"cat\\\",\"\n");
    assert_eq!(
        k(&["get", "answer"]).ok(),
        "42\n",
        "a refused append changes nothing"
    );

    // keys: sorted, by prefix, in three forms.
    assert_eq!(
        k(&["-o", "plain", "keys"]).ok(),
        "answer\nfiled\nfresh\nname\nneg\nobj\npets\npiped\ntext\ntypo\n"
    );
    assert_eq!(k(&["-o", "plain", "keys", "p"]).ok(), "pets\npiped\n");
    let table = k(&["keys", "p"]).ok();
    assert!(table.contains("KEY") && table.contains("pets") && table.ends_with("2 keys\n"));
    let listing = json_of(&k(&["-o", "json", "keys", "p"]).ok());
    assert_eq!(listing["keys"], json!(["pets", "piped"]));
    assert_eq!(listing["truncated"], json!(false));
    let limited = json_of(&k(&["-o", "json", "keys", "--limit", "2"]).ok());
    assert_eq!(limited["keys"], json!(["answer", "filed"]));
    assert_eq!(limited["truncated"], json!(true));
    assert_eq!(k(&["-o", "plain", "keys", "zzz"]).ok(), "");

    // Keys with characters that need encoding arrive intact.
    k(&["put", "dir/sub key?#%", "odd"]).ok();
    assert_eq!(k(&["get", "dir/sub key?#%"]).ok(), "\"odd\"\n");
    assert_eq!(k(&["-o", "plain", "keys", "dir/"]).ok(), "dir/sub key?#%\n");

    // delete, then the key is gone: exit 1 for get and for a second delete.
    k(&["put", "gone", "1"]).ok();
    let deleted = json_of(&k(&["-o", "json", "delete", "gone"]).ok());
    assert_eq!(deleted["key"], json!("gone"));
    assert!(k(&["delete", "neg"]).ok().starts_with("OK"));
    let line = k(&["get", "neg"]).fails(1);
    assert!(line.contains("key not found"), "{line}");
    k(&["delete", "neg"]).fails(1);
    assert_eq!(k(&["-o", "plain", "get", "neg"]).stdout, "", "nothing on stdout");

    // leader, in three forms, agreeing with the cluster.
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let address = cluster.http_addr(leader);
    assert_eq!(
        k(&["-o", "plain", "leader"]).ok(),
        format!("{leader}\t{address}\n")
    );
    let table = k(&["leader"]).ok();
    assert!(
        table.starts_with(&format!("node {leader} at {address} leads (term ")),
        "{table}"
    );
    let as_json = json_of(&k(&["-o", "json", "leader"]).ok());
    assert_eq!(as_json["id"], json!(leader));
    assert_eq!(as_json["address"], json!(address));

    // status: every node, sorted by id, the leader marked, a summary under the table.
    let table = k(&["status"]).ok();
    let rows: Vec<&str> = table.lines().filter(|l| l.contains("127.0.0.1:")).collect();
    assert_eq!(rows.len(), 4, "three node rows and the leader line: {table}");
    for id in 0..3u64 {
        assert!(rows[id as usize].contains(&cluster.http_addr(id)), "{table}");
    }
    assert!(rows[leader as usize].contains("* leader"), "{table}");
    assert!(
        table.contains(&format!("Leader: node {leader} ({address}), term ")),
        "{table}"
    );
    assert!(
        table.contains("Quorum: yes (3 of 3 voters answer, 2 needed)"),
        "{table}"
    );
    assert!(
        table.contains("Fault tolerance: survives 1 more node failure"),
        "{table}"
    );

    let plain = k(&["-o", "plain", "status"]).ok();
    let lines: Vec<Vec<&str>> = plain.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 3);
    for (i, fields) in lines.iter().enumerate() {
        assert_eq!(fields.len(), 10, "{plain}");
        assert_eq!(fields[0], i.to_string());
        let role = if i as u64 == leader { "leader" } else { "follower" };
        assert_eq!(fields[2], role, "{plain}");
        assert_eq!(fields[9], "-", "no error: {plain}");
    }

    let status = json_of(&k(&["-o", "json", "status"]).ok());
    assert_eq!(status["leader"], json!(leader));
    assert_eq!(status["quorum"], json!(true));
    assert_eq!(status["failures_tolerated"], json!(1));
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(3));
    assert_eq!(status["nodes"][leader as usize]["lag"], json!(0));

    // A reader that goes away early is not an error.
    let mut child = command(&["--cluster", file.to_str().expect("utf-8"), "status"])
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let stderr = reader(child.stderr.take().expect("stderr"));
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        stderr.join().expect("stderr"),
        "",
        "a broken pipe is not reported"
    );

    // --endpoints with a single address still finds every member.
    let one = run(&["--endpoints", &cluster.url(0), "-o", "plain", "status"]).ok();
    assert_eq!(one.lines().count(), 3, "{one}");
}

/// Watches `kvctl status --watch` output as it arrives.
struct Watch {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Watch {
    fn start(cluster: &Path) -> Watch {
        let file = cluster.to_str().expect("utf-8");
        let mut child = command(&["--cluster", file, "status", "--watch", "0.2"])
            .spawn()
            .expect("spawn watch");
        let output = Arc::new(Mutex::new(String::new()));
        let sink = output.clone();
        let mut stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&chunk[..n]).to_string();
                sink.lock().unwrap_or_else(|p| p.into_inner()).push_str(&text);
            }
        });
        Watch { child, output }
    }

    fn text(&self) -> String {
        self.output.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Ctrl-C, then the exit code.
    fn interrupt(mut self) -> i32 {
        // SAFETY: kill(2) on the pid of our own, not yet reaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "watch ignored Ctrl-C");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn appends_survive_a_leader_kill_and_status_reports_failures() {
    let mut cluster = Cluster::start(3);
    let file = cluster.cluster_file().to_path_buf();
    let old_leader = cluster.wait_for_leader(Duration::from_secs(10));

    let watch = Watch::start(&file);
    poll(Duration::from_secs(10), "the first watch frame", || {
        watch.text().contains("Quorum: yes").then_some(())
    });

    // One writer appends 0..N in sequence, each through a fresh kvctl process; the leader is
    // killed while it runs. Every append must succeed and land exactly once.
    const N: usize = 40;
    let done = Arc::new(AtomicUsize::new(0));
    let progress = done.clone();
    let writer_file = file.clone();
    let writer = std::thread::spawn(move || {
        let mut failures = Vec::new();
        for i in 0..N {
            let r = kvctl(
                &writer_file,
                &["--timeout", "20s", "append", "log", &i.to_string()],
            );
            if r.code != 0 {
                failures.push((i, r));
            }
            progress.fetch_add(1, Ordering::SeqCst);
        }
        failures
    });
    poll(Duration::from_secs(30), "a few appends before the kill", || {
        (done.load(Ordering::SeqCst) >= 5).then_some(())
    });
    cluster.kill(old_leader);
    let killed_at = done.load(Ordering::SeqCst);
    assert!(
        killed_at < N,
        "the kill must land while appends are still running"
    );
    let new_leader = cluster.wait_for_new_leader(old_leader, Duration::from_secs(20));
    let failures = writer.join().expect("writer thread");
    assert!(failures.is_empty(), "appends failed: {failures:?}");

    let expected: Vec<Value> = (0..N).map(|i| json!(i)).collect();
    let log = json_of(&kvctl(&file, &["get", "log"]).ok());
    assert_eq!(log, Value::Array(expected), "each append exactly once, in order");

    // The watch saw the change and stops cleanly on Ctrl-C.
    poll(
        Duration::from_secs(10),
        "the watch to show the new leader",
        || {
            let text = watch.text();
            text.contains(&format!("node {new_leader}"))
                .then_some(())
                .filter(|_| text.contains("Changes:"))
        },
    );
    let seen = watch.text();
    assert!(
        seen.contains("leader lost") || seen.contains("leader changed"),
        "{seen}"
    );
    assert!(seen.contains("term changed"), "{seen}");
    assert!(
        !seen.contains("quorum lost"),
        "an election with 2 of 3 nodes answering is not a lost quorum: {seen}"
    );
    assert_eq!(watch.interrupt(), 0);

    // One node down: its row carries the error, the command still succeeds.
    let table = kvctl(&file, &["status"]).ok();
    let dead_row = table
        .lines()
        .find(|l| l.contains(&cluster.http_addr(old_leader)))
        .unwrap_or_default();
    assert!(
        dead_row.contains("down") && dead_row.contains("connection refused"),
        "{table}"
    );
    // The new leader never heard from the dead node in its term: its lag is unknown, not a
    // made-up number.
    assert!(dead_row.contains("unknown"), "{table}");
    assert!(
        table.contains("Quorum: yes (2 of 3 voters answer, 2 needed)"),
        "{table}"
    );
    assert!(table.contains("Fault tolerance: none"), "{table}");
    let status = json_of(&kvctl(&file, &["-o", "json", "status"]).ok());
    assert_eq!(status["leader"], json!(new_leader));
    assert!(status["nodes"][old_leader as usize]["error"].is_string());
    assert_eq!(status["nodes"][old_leader as usize]["lag"], Value::Null);

    // Two of three down (the leader among them): no quorum, reported with exit code 3, and the
    // table still shows every node.
    cluster.kill(new_leader);
    let survivor = (0..3u64)
        .find(|id| *id != old_leader && *id != new_leader)
        .expect("a third node");
    let r = kvctl(&file, &["status"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stdout.contains("Quorum: NO (1 of 3 voters answer, 2 needed)"),
        "{r:?}"
    );
    assert_eq!(
        r.stdout
            .lines()
            .filter(|l| l.contains("connection refused"))
            .count(),
        2,
        "{r:?}"
    );
    let line = r.fails(3);
    assert!(line.contains("cluster unavailable"), "{line}");

    // Writes give up within the timeout as unavailable; stale reads still work.
    let started = Instant::now();
    let line = kvctl(&file, &["--timeout", "2s", "put", "x", "1"]).fails(3);
    assert!(line.contains("cluster unavailable"), "{line}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    let stale = kvctl(&file, &["--consistency", "stale", "-o", "json", "get", "log"]).ok();
    assert_eq!(json_of(&stale)["served_by"], json!(survivor));
}

/// The issue's case: two of three nodes die and the leader survives. It still says it leads,
/// but it cannot commit, and kvctl must not call it the leader; a write through it ends with
/// the server's own answer, not with kvctl cutting it off.
#[test]
fn a_leader_that_lost_its_quorum_is_not_called_the_leader() {
    let mut cluster = Cluster::start(3);
    let file = cluster.cluster_file().to_path_buf();
    let leader = cluster.wait_for_leader(Duration::from_secs(20));
    // The followers must have heard of the leader, so that `leader` answers at once.
    let answer = kvctl(&file, &["-o", "plain", "leader"]).ok();
    assert!(answer.starts_with(&format!("{leader}\t")), "{answer}");
    for id in cluster.ids().into_iter().filter(|id| *id != leader) {
        cluster.kill(id);
    }

    let started = Instant::now();
    let line = kvctl(&file, &["--timeout", "2s", "leader"]).fails(3);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        line.contains(&format!("node {leader} (")) && line.contains("claims to lead term"),
        "{line}"
    );
    assert!(line.contains("only 1 of 3 voters answer and follow it"), "{line}");
    kvctl(&file, &["-o", "json", "--timeout", "1s", "leader"]).fails_json(3, "unavailable");

    let r = kvctl(&file, &["status"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("Leader: none with a quorum; node {leader} (")),
        "{r:?}"
    );
    assert!(
        r.stdout
            .contains("Quorum: NO (only 1 of 3 voters answer and follow node"),
        "{r:?}"
    );

    // The write waits for the server's verdict: the leader's lease has run out, so it refuses
    // with 503 no_quorum before proposing anything. The words are the server's.
    let r = kvctl(&file, &["put", "k", "v"]);
    let line = r.stderr.trim().to_string();
    assert!(r.code == 3 || r.code == 4, "{r:?}");
    assert!(line.contains("503 no_quorum"), "{line}");
    assert!(!line.contains("no answer within"), "{line}");
}

/// An HTTP/1.1 proxy in front of one node that forwards every request but swallows the answer
/// to the first `lose` POSTs: the write is applied, the client never hears of it. This is the
/// case exactly-once writes exist for, made deterministic.
struct LossyProxy {
    address: String,
    lost: Arc<AtomicUsize>,
}

impl LossyProxy {
    fn start(upstream: String, lose: usize) -> LossyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let address = listener.local_addr().expect("addr").to_string();
        let budget = Arc::new(AtomicUsize::new(lose));
        let lost = Arc::new(AtomicUsize::new(0));
        let counter = lost.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let upstream = upstream.clone();
                let budget = budget.clone();
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let _ = proxy_connection(client, &upstream, &budget, &counter);
                });
            }
        });
        LossyProxy { address, lost }
    }
}

fn proxy_connection(
    client: TcpStream,
    upstream: &str,
    budget: &AtomicUsize,
    lost: &AtomicUsize,
) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream)?;
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let mut from_server = BufReader::new(server.try_clone()?);
    let mut to_server = server;
    loop {
        let Some(request) = read_message(&mut from_client)? else {
            return Ok(());
        };
        to_server.write_all(&request)?;
        let Some(response) = read_message(&mut from_server)? else {
            return Ok(());
        };
        let swallow = request.starts_with(b"POST")
            && budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                .is_ok();
        if swallow {
            lost.fetch_add(1, Ordering::SeqCst);
            to_client.shutdown(Shutdown::Both)?;
            return Ok(());
        }
        to_client.write_all(&response)?;
    }
}

/// One HTTP/1.1 message with a Content-Length body (all kvnode and kvctl send), raw.
fn read_message(reader: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut message = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        message.extend_from_slice(line.as_bytes());
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    message.extend_from_slice(&body);
    Ok(Some(message))
}

#[test]
fn a_write_whose_answer_is_lost_is_retried_and_applied_once() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let proxy = LossyProxy::start(cluster.http_addr(leader), 1);
    let through_proxy = |args: &[&str]| {
        let mut all = vec!["--endpoints", proxy.address.as_str()];
        all.extend_from_slice(args);
        run(&all)
    };

    let answer = json_of(&through_proxy(&["-o", "json", "append", "once", "x"]).ok());
    assert_eq!(
        proxy.lost.load(Ordering::SeqCst),
        1,
        "the first answer was swallowed"
    );
    assert_eq!(
        answer["replayed"],
        json!(true),
        "the retry was answered from the table"
    );
    assert_eq!(kvctl(cluster.cluster_file(), &["get", "once"]).ok(), "[\"x\"]\n");

    // The same for a string append and a delete; table output says what happened.
    let proxy = LossyProxy::start(cluster.http_addr(leader), 2);
    let through_proxy = |args: &[&str]| {
        let mut all = vec!["--endpoints", proxy.address.as_str()];
        all.extend_from_slice(args);
        run(&all)
    };
    kvctl(cluster.cluster_file(), &["put", "s", "ab"]).ok();
    let out = through_proxy(&["append", "s", "cd"]).ok();
    assert!(out.contains("earlier attempt had already applied it"), "{out}");
    assert_eq!(kvctl(cluster.cluster_file(), &["get", "s"]).ok(), "\"abcd\"\n");
    through_proxy(&["delete", "s"]).ok();
    assert_eq!(proxy.lost.load(Ordering::SeqCst), 2);
    kvctl(cluster.cluster_file(), &["get", "s"]).fails(1);
}

/// The operator's story of issue 11 through the real binary: list, add (by `kvnode --join`),
/// promote, hand leadership over, remove; and a cluster file that predates the changes still
/// leads kvctl to the cluster, whose status names what the file does not know.
#[test]
fn members_are_listed_and_changed_and_an_old_cluster_file_still_works() {
    let mut cluster = Cluster::start(3);
    let file = cluster.cluster_file().to_path_buf();
    let k = |args: &[&str]| kvctl(&file, args);

    let listed = json_of(&k(&["-o", "json", "member", "list"]).ok());
    let members = listed.as_array().expect("a list of members");
    assert_eq!(members.len(), 3, "{listed}");
    for m in members {
        for field in ["id", "http", "raft", "role"] {
            assert!(!m[field].is_null(), "{field} in {m}");
        }
        assert_eq!(m["role"], json!("voter"), "{m}");
    }
    let table = k(&["member", "ls"]).ok();
    assert!(
        table.contains("voter (leader)") && table.contains("3 voters, 0 learners"),
        "{table}"
    );

    // Bad requests are refused with the server's reason and nothing changes.
    let line = k(&["member", "promote", "9"]).fails(5);
    assert!(line.contains("not a member"), "{line}");
    let line = k(&[
        "member",
        "add",
        "1",
        "--http",
        "127.0.0.1:1",
        "--raft",
        "127.0.0.1:2",
    ])
    .fails(5);
    assert!(line.contains("already"), "{line}");
    let line = k(&["member", "add", "5", "--http", "nowhere", "--raft", "127.0.0.1:2"]).fails(2);
    assert!(line.contains("--http"), "{line}");

    // A new node joins as a learner, is promoted once it has caught up, and leads on request.
    k(&["put", "k", "\"before\""]).ok();
    cluster.join(3, &[0]);
    cluster.wait_for_members(0, &[0, 1, 2], &[3], Duration::from_secs(30));
    let status = k(&["status"]).ok();
    assert!(status.contains("Learners: node 3"), "{status}");
    assert!(status.contains("Not in the cluster file: node 3"), "{status}");
    poll(Duration::from_secs(30), "node 3 to be promoted", || {
        let run = k(&["member", "promote", "3"]);
        (run.code == 0).then_some(run.stdout)
    });
    let out = k(&["leader", "transfer", "3"]).ok();
    assert!(out.contains("node 3 leads now"), "{out}");
    assert_eq!(cluster.wait_for_leader(Duration::from_secs(20)), 3);

    // Node 0 goes: the file lists it and not node 3, yet kvctl finds the cluster.
    let out = k(&["member", "remove", "0"]).ok();
    assert!(out.contains("node 0 is no longer a member"), "{out}");
    cluster.retire(0);
    cluster.wait_for_members(3, &[1, 2, 3], &[], Duration::from_secs(30));
    k(&["put", "k", "\"after\""]).ok();
    assert_eq!(k(&["get", "k"]).ok(), "\"after\"\n");
    let status = k(&["status"]).ok();
    assert!(status.contains("Not members of the cluster: node 0"), "{status}");
    let ids: Vec<u64> = json_of(&k(&["-o", "json", "member", "list"]).ok())
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["id"].as_u64())
        .collect();
    assert_eq!(ids, vec![1, 2, 3]);
}
