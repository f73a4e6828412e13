//! Versions, conditional writes and watch through kvctl (issue 14), against real clusters.
//!
//! - The command line: `-o json get` shows the versions; `put --if-absent`, `put`/`append`/
//!   `delete --if-index` apply or exit 6 saying what the key's index is now (with `-o json`,
//!   in the error object); `watch` prints changes in every output form, follows the cluster
//!   when its node is killed with no gap and no duplicate, and ends with Ctrl-C, in one-shot
//!   use and in the REPL.
//! - The counter: 16 clients each add one to a counter by reading it and writing the next value
//!   under `If-Match`, retrying after a 412, while the leader is killed and restarted. It ends
//!   at exactly the number of increments: without the condition, concurrent read-modify-writes
//!   lose updates; with a condition checked anywhere but in the state machine, or a retry
//!   answered with a 412 of its own making, some increments would be lost or counted twice.
//!   CI runs 16 × 25 with two kills; the issue's 16 × 200 with three kills (3,200) is the same
//!   code, ignored by default because it takes minutes.
//!
//! Every wait polls with a deadline; clusters and child processes are killed when a test ends,
//! and node logs are printed when it fails.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvapi::{Precondition, WriteKind};
use kvctl::client::new_idempotency_key;
use kvctl::{Client, ClientConfig, ClientError};
use rexpect::reader::Options;
use rexpect::session::spawn_with_options;
use serde_json::{json, Value};
use testkit::{poll, Cluster};

const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn kvctl(cluster: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--cluster")
        .arg(cluster)
        .args(args)
        .env_remove("KVCTL_CLUSTER")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run kvctl");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[track_caller]
fn ok(run: Run) -> String {
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout
}

/// The index in `OK (index N)`.
#[track_caller]
fn ok_index(run: Run) -> u64 {
    let out = ok(run);
    out.trim()
        .strip_prefix("OK (index ")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an OK line: {out:?}"))
}

/// A `kvctl watch` running in the background; its stdout lines are collected as they come.
/// Killed when dropped.
struct Watching {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Watching {
    fn start(cluster: &Path, args: &[&str]) -> Watching {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .arg("--cluster")
            .arg(cluster)
            .args(args)
            .env("RUST_LOG", "kvctl=debug")
            .env_remove("KVCTL_CLUSTER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvctl watch");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            sink.lock().expect("stderr").push_str(&text);
        });
        Watching { child, lines, stderr }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    #[track_caller]
    fn wait_for(&self, n: usize) -> Vec<String> {
        poll(WAIT, &format!("{n} lines of watch output"), || {
            let lines = self.lines();
            (lines.len() >= n).then_some(lines)
        })
    }

    /// Ctrl-C, as from a terminal; returns the exit code.
    fn interrupt(&mut self) -> i32 {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = poll(WAIT, "kvctl watch to end after Ctrl-C", || {
            self.child.try_wait().ok().flatten()
        });
        status.code().unwrap_or(-1)
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "kvctl watch stderr:\n{}",
                self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
            );
        }
    }
}

#[test]
fn versions_conditions_and_watch_from_the_command_line_and_the_repl() {
    let mut c = Cluster::start(3);
    let file = c.cluster_file().to_path_buf();
    let f = file.as_path();

    // Versions.
    let created = ok_index(kvctl(f, &["put", "k", "1"]));
    let changed = ok_index(kvctl(f, &["put", "k", "2"]));
    assert_eq!(
        kvctl(f, &["append", "k", "3"]).code,
        5,
        "an append onto a number is refused"
    );
    let shown: Value = serde_json::from_str(&ok(kvctl(f, &["-o", "json", "get", "k"]))).expect("json");
    assert_eq!(
        (
            &shown["value"],
            &shown["create_index"],
            &shown["mod_index"],
            &shown["version"]
        ),
        (&json!(2), &json!(created), &json!(changed), &json!(2)),
        "{shown}"
    );
    assert_eq!(
        ok(kvctl(f, &["get", "k"])).trim(),
        "2",
        "table output stays the bare value"
    );

    // A lock from --if-absent and --if-index.
    let held = ok_index(kvctl(f, &["put", "--if-absent", "lock", "worker-1"]));
    let taken = kvctl(f, &["put", "--if-absent", "lock", "worker-2"]);
    assert_eq!(taken.code, 6, "{taken:?}");
    assert!(
        taken.stderr.starts_with("kvctl: condition not met:")
            && taken.stderr.contains(&format!("last changed at index {held}")),
        "{taken:?}"
    );
    let taken = kvctl(f, &["-o", "json", "put", "--if-absent", "lock", "worker-2"]);
    assert_eq!(taken.code, 6);
    let error: Value = serde_json::from_str(taken.stderr.trim()).expect("one JSON object");
    assert_eq!(error["error"]["code"], "precondition_failed");
    assert_eq!(error["error"]["exists"], true);
    assert_eq!(error["error"]["mod_index"], held);
    let renewed = ok_index(kvctl(
        f,
        &["put", "--if-index", &held.to_string(), "lock", "worker-1"],
    ));
    let stale = kvctl(f, &["delete", "--if-index", &held.to_string(), "lock"]);
    assert_eq!(stale.code, 6, "{stale:?}");
    let stale_append = kvctl(f, &["append", "--if-index", &held.to_string(), "lock", "x"]);
    assert_eq!(stale_append.code, 6, "{stale_append:?}");
    ok(kvctl(f, &["delete", "--if-index", &renewed.to_string(), "lock"]));
    let gone = kvctl(
        f,
        &[
            "-o",
            "json",
            "put",
            "--if-index",
            &renewed.to_string(),
            "lock",
            "x",
        ],
    );
    assert_eq!(gone.code, 6);
    let error: Value = serde_json::from_str(gone.stderr.trim()).expect("one JSON object");
    assert_eq!(
        (&error["error"]["exists"], error["error"].get("mod_index")),
        (&json!(false), None)
    );
    let help = ok(kvctl(f, &["--help"]));
    assert!(help.contains("6  condition not met"), "{help}");

    // Watch, in each output form: from a known index, so nothing written after it is missed.
    let from = ok_index(kvctl(f, &["put", "w", "0"]));
    let one = ok_index(kvctl(f, &["put", "w", "{\"a\":1}"]));
    let two = ok_index(kvctl(f, &["append", "w2", "x"]));
    let three = ok_index(kvctl(f, &["delete", "w"]));
    let args = |format: &'static str, what: &'static [&'static str]| {
        let mut a = vec!["-o", format, "watch"];
        a.extend_from_slice(what);
        a
    };
    let after = from.to_string();
    let run = |format, what: &'static [&'static str], count: &str| {
        let mut a = args(format, what);
        a.extend_from_slice(&["--after", &after, "--count", count]);
        ok(kvctl(f, &a))
    };
    assert_eq!(
        run("plain", &["w"], "2"),
        format!("{one}\tput\tw\t{{\"a\":1}}\n{three}\tdelete\tw\t\n")
    );
    let json_lines: Vec<Value> = run("json", &["--prefix", "w"], "3")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(
        json_lines,
        vec![
            json!({"index": one, "kind": "put", "key": "w", "value": {"a": 1}}),
            json!({"index": two, "kind": "append", "key": "w2", "value": ["x"]}),
            json!({"index": three, "kind": "delete", "key": "w"}),
        ]
    );
    let table = run("table", &["w2"], "1");
    assert_eq!(
        table.lines().collect::<Vec<_>>(),
        [
            "   INDEX  KIND    KEY  VALUE",
            &format!("{two:>8}  append  w2  [\"x\"]")
        ]
    );
    let bad = kvctl(f, &["watch", "k", "--prefix", "p"]);
    assert_eq!(bad.code, 2, "{bad:?}");

    // A watch follows the cluster when its node dies: kvctl starts on the first node of the
    // cluster file, node 0, which is killed between two runs of writes.
    let start = ok_index(kvctl(f, &["put", "f/start", "0"]));
    let mut watch = Watching::start(
        f,
        &[
            "-o",
            "plain",
            "watch",
            "--prefix",
            "f/",
            "--after",
            &start.to_string(),
        ],
    );
    let mut expected = Vec::new();
    for i in 0..5 {
        let index = ok_index(kvctl(f, &["put", &format!("f/{i}"), &i.to_string()]));
        expected.push(format!("{index}\tput\tf/{i}\t{i}"));
    }
    assert_eq!(watch.wait_for(5), expected);
    let leader = c.wait_for_leader(WAIT);
    c.kill(0);
    if leader == 0 {
        c.wait_for_new_leader(0, WAIT);
    }
    for i in 5..10 {
        let index = ok_index(kvctl(f, &["put", &format!("f/{i}"), &i.to_string()]));
        expected.push(format!("{index}\tput\tf/{i}\t{i}"));
    }
    let lines = watch.wait_for(10);
    assert_eq!(lines, expected, "no gap, no duplicate across the failover");
    assert_eq!(watch.interrupt(), 0, "Ctrl-C ends a watch with success");
    assert_eq!(watch.lines(), expected, "and nothing more came");
    let moved = watch.stderr.lock().expect("stderr").clone();
    assert!(moved.contains("watch moves to another node"), "{moved}");
    c.restart(0);

    // In the REPL, `watch` runs until Ctrl-C and the session goes on.
    let mark = ok_index(kvctl(f, &["put", "r", "0"]));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    cmd.arg("--cluster")
        .arg(f)
        .arg("repl")
        .env("KVCTL_HISTORY", c.dir().join("history"))
        .env("TERM", "xterm")
        .env_remove("RUST_LOG")
        .env_remove("KVCTL_CLUSTER");
    let options = Options::new()
        .timeout_ms(Some(WAIT.as_millis() as u64))
        .strip_ansi_escape_codes(true);
    let mut repl = spawn_with_options(cmd, options).expect("kvctl repl in a pty");
    repl.exp_regex(r"kv\[leader=\d+ term=\d+\]> ").expect("a prompt");
    repl.send(&format!("watch r --after {mark}\r")).expect("type");
    repl.flush().expect("flush");
    repl.exp_string("INDEX  KIND").expect("the watch's header");
    let next = ok_index(kvctl(f, &["put", "r", "\"seen\""]));
    repl.exp_string(&format!("{next:>8}  put     r  \"seen\""))
        .expect("the change, as it happens");
    repl.send_control('c').expect("Ctrl-C");
    repl.exp_regex(r"kv\[leader=\d+ term=\d+\]> ")
        .expect("the prompt again");
    repl.send("get r\r").expect("type");
    repl.flush().expect("flush");
    repl.exp_string("\"seen\"").expect("the session goes on");
    repl.send("exit\r").expect("type");
    repl.flush().expect("flush");
    repl.exp_eof().expect("the REPL ends");
}

/// 16 clients × 25 increments by read and `If-Match` put, with the leader killed twice: the
/// size that runs in every `cargo test` (each increment waits for the one before it, so the
/// full size of the issue takes minutes on a 2-core machine; see the next test).
#[test]
fn sixteen_clients_count_exactly_with_compare_and_swap_through_leader_kills() {
    count_with_compare_and_swap(16, 25, 2);
}

/// The issue's full size: 16 clients × 200 increments, ending at exactly 3,200, with the
/// leader killed three times. About four minutes on a loaded 2-core machine, so it is not part
/// of CI: `cargo test -p kvctl --test coordination -- --ignored`.
#[test]
#[ignore = "minutes long; run with --ignored"]
fn sixteen_clients_count_to_exactly_3200_with_compare_and_swap_through_leader_kills() {
    count_with_compare_and_swap(16, 200, 3);
}

/// `clients` clients each add one to a counter `each` times by read and `If-Match` put, while
/// the leader is killed (and brought back) `kills` times, evenly spread over the run; the
/// counter must end at exactly `clients × each`, changed once per increment.
fn count_with_compare_and_swap(clients: u64, each: u64, kills: u64) {
    let mut c = Cluster::start(3);
    let file = kvapi::ClusterFile::load(c.cluster_file()).expect("cluster file");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = |timeout| {
        let mut config = ClientConfig::from_cluster(&file);
        config.timeout = timeout;
        Client::new(config).expect("client")
    };
    runtime
        .block_on(client(WAIT).put("counter", json!(0)))
        .expect("start at 0");

    let done = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let client = client(Duration::from_secs(20));
            let (done, refused) = (done.clone(), refused.clone());
            runtime.spawn(async move {
                for _ in 0..each {
                    increment(&client, &refused).await;
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // Kill the leader at evenly spaced points of the run, and bring it back each time.
    let mut killed = Vec::new();
    for k in 1..=kills {
        let target = clients * each * k / (kills + 1);
        poll(Duration::from_secs(600), &format!("{target} increments"), || {
            (done.load(Ordering::SeqCst) >= target).then_some(())
        });
        let leader = c.wait_for_leader(WAIT);
        c.kill(leader);
        c.wait_for_new_leader(leader, WAIT);
        c.restart(leader);
        killed.push((leader, done.load(Ordering::SeqCst)));
    }
    runtime.block_on(async {
        for w in workers {
            w.await.expect("a client finished");
        }
    });
    let total = runtime
        .block_on(client(WAIT).get("counter"))
        .expect("the counter");
    eprintln!(
        "{} increments in {:?}, {} refused by a condition, leaders killed at {killed:?}",
        clients * each,
        started.elapsed(),
        refused.load(Ordering::SeqCst)
    );
    assert_eq!(total.value, json!(clients * each), "every increment exactly once");
    assert_eq!(total.version, clients * each + 1, "one change per increment");
    assert!(
        refused.load(Ordering::SeqCst) > 0,
        "the clients raced: conditions were refused"
    );
    assert!(
        killed.iter().all(|&(_, at)| at < clients * each),
        "every kill came while the clients were counting: {killed:?}"
    );
}

/// Add one to the counter: read it, write the next value only if nobody wrote it since (retried
/// with the same idempotency key while its outcome is unknown), and start over after a 412.
async fn increment(client: &Client, refused: &AtomicU64) {
    loop {
        let read = match client.get("counter").await {
            Ok(read) => read,
            Err(ClientError::Unavailable { .. }) => continue,
            Err(e) => panic!("read failed: {e}"),
        };
        let n = read.value.as_u64().expect("a number");
        let idem = new_idempotency_key();
        loop {
            let result = client
                .write_if(
                    "counter",
                    WriteKind::Put,
                    json!(n + 1),
                    Some(Precondition::ModIndex(read.mod_index)),
                    &idem,
                )
                .await;
            match result {
                Ok(_) => return,
                Err(ClientError::PreconditionFailed { .. }) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                // Applied or not, only the same write again can tell: it is answered with its
                // first outcome.
                Err(ClientError::OutcomeUnknown { .. } | ClientError::Unavailable { .. }) => continue,
                Err(e) => panic!("write failed: {e}"),
            }
        }
    }
}
