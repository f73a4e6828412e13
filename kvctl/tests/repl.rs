//! Process-level tests of `kvctl repl`: the real binary in a pseudo-terminal against a real
//! cluster, typed at the way a person types, and the same binary running piped scripts.
//!
//! The terminal tests go through rexpect, which reads the pty with ANSI escapes stripped, so
//! what is matched is the text a person would see (prompt, echo, hints, output). Every wait is
//! an expectation with a deadline; nothing sleeps. One cluster serves the whole interactive
//! story (two kvnode clusters are the most two cores should start at once): commands and
//! their output, an error that does not end the session, completion of a command and of two
//! keys, a syntax hint, Ctrl-C on a half-typed line, the prompt following a failover, and
//! history found again with Ctrl-R after a restart.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rexpect::process::WaitStatus;
use rexpect::reader::Options;
use rexpect::session::{spawn_with_options, PtySession};
use serde_json::json;
use testkit::Cluster;

/// Generous: a debug kvnode on a loaded two-core machine can take seconds to elect a leader.
const EXPECT_TIMEOUT_MS: u64 = 30_000;

/// Start `kvctl repl` in a pty with `history` as its history file, and wait for its prompt.
fn spawn_repl(cluster: &Path, history: &Path) -> PtySession {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    cmd.arg("--cluster")
        .arg(cluster)
        .arg("repl")
        .env("KVCTL_HISTORY", history)
        .env("TERM", "xterm")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .env_remove("KVCTL_CLUSTER");
    let options = Options::new()
        .timeout_ms(Some(EXPECT_TIMEOUT_MS))
        .strip_ansi_escape_codes(true);
    let mut repl = spawn_with_options(cmd, options).expect("start kvctl repl in a pty");
    repl.exp_string("`help` lists the commands").expect("the banner");
    repl
}

/// Wait for a new prompt and return the leader it names. A new prompt starts a line; the
/// redraws of the line being edited start with a carriage return only. Keys typed before the
/// new prompt shows could be read, and dropped, by the line that is ending.
#[track_caller]
fn prompt_leader(repl: &mut PtySession) -> u64 {
    let (_, prompt) = repl
        .exp_regex(r"\n\r*kv\[leader=\d+ term=\d+\]> ")
        .expect("a prompt naming the leader");
    let start = prompt.find("kv[leader=").expect("the prompt") + "kv[leader=".len();
    let digits: String = prompt[start..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().expect("a leader id")
}

/// Turn on the echo of typed and control characters (`^C`), as a terminal has it by default.
/// Only safe while a command runs: at the prompt the line editor owns the terminal's modes.
fn echo_control_characters(repl: &PtySession) {
    use std::os::fd::AsRawFd;
    let pty = repl.process().get_file_handle().expect("the pty");
    let fd = pty.as_raw_fd();
    // SAFETY: termios is plain data, filled by tcgetattr on a valid descriptor before use.
    unsafe {
        let mut mode: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd, &mut mode), 0, "tcgetattr");
        mode.c_lflag |= libc::ECHO | libc::ECHOCTL;
        assert_eq!(libc::tcsetattr(fd, libc::TCSANOW, &mode), 0, "tcsetattr");
    }
}

/// Type `keys` (rexpect buffers until a newline, which a terminal never sends).
fn type_keys(repl: &mut PtySession, keys: &str) {
    repl.send(keys).expect("type");
    repl.flush().expect("flush");
}

/// Type `line` and press Enter (a terminal sends a carriage return).
fn enter(repl: &mut PtySession, line: &str) {
    type_keys(repl, &format!("{line}\r"));
}

/// The log index in an `OK (index N)` line.
#[track_caller]
fn expect_ok_index(repl: &mut PtySession) -> u64 {
    let (_, ok) = repl.exp_regex(r"OK \(index \d+\)").expect("an OK line");
    ok.trim_start_matches("OK (index ")
        .trim_end_matches(')')
        .parse()
        .expect("an index")
}

#[track_caller]
fn expect_exit(repl: &mut PtySession, code: i32) {
    repl.exp_eof().expect("kvctl repl ends");
    match repl.process().wait().expect("wait for kvctl") {
        WaitStatus::Exited(_, c) => assert_eq!(c, code, "exit code of kvctl repl"),
        other => panic!("kvctl repl did not exit normally: {other:?}"),
    }
}

#[test]
fn an_interactive_session_types_completes_survives_errors_and_remembers() {
    let mut cluster = Cluster::start(3);
    let file = cluster.cluster_file().to_path_buf();
    let history = cluster.dir().join("history");

    let mut repl = spawn_repl(&file, &history);
    let leader = prompt_leader(&mut repl);
    assert_eq!(
        Some(leader),
        cluster.leader_id(),
        "the prompt names the real leader"
    );

    // JSON values with spaces need no quotes; keys with spaces take shell quotes.
    enter(&mut repl, r#"put animals ["cat", "dog"]"#);
    expect_ok_index(&mut repl);
    prompt_leader(&mut repl);
    enter(&mut repl, r#"append animals {"x": 1}"#);
    expect_ok_index(&mut repl);
    prompt_leader(&mut repl);
    enter(&mut repl, r#"put 'my key' "two words""#);
    expect_ok_index(&mut repl);
    prompt_leader(&mut repl);
    enter(&mut repl, "put zebra/stripes 42");
    let index = expect_ok_index(&mut repl);
    assert_eq!(
        cluster.get(leader, "animals"),
        Some(Some(json!(["cat", "dog", {"x": 1}])))
    );
    prompt_leader(&mut repl);

    // Output is the one-shot commands' output: JSON indented on a terminal.
    enter(&mut repl, "get animals");
    let shown = repl.exp_string("\"x\": 1").expect("the value");
    assert!(
        shown.contains("\"cat\"") && shown.contains("\"dog\""),
        "{shown:?}"
    );
    prompt_leader(&mut repl);

    // An error prints and the session goes on.
    enter(&mut repl, "get no-such-key");
    repl.exp_string("kvctl: key not found").expect("the error");
    prompt_leader(&mut repl);
    enter(&mut repl, "frobnicate");
    repl.exp_string("unrecognized subcommand 'frobnicate'")
        .expect("the grammar error");
    prompt_leader(&mut repl);

    // Tab completes a command: "lea" alone would be an unknown command.
    type_keys(&mut repl, "lea\t");
    repl.exp_string("leader").expect("completed on screen");
    enter(&mut repl, "");
    repl.exp_string(&format!("node {leader} at "))
        .expect("leader's output");
    prompt_leader(&mut repl);

    // Tab completes key names from the server. Completion reads stale, so first let every
    // replica apply the last write.
    for id in cluster.ids() {
        cluster.wait_applied(id, index, Duration::from_secs(10));
    }
    type_keys(&mut repl, "get zeb\t");
    repl.exp_string("zebra/stripes")
        .expect("the key completed on screen");
    enter(&mut repl, "");
    repl.exp_regex(r"\n42\r").expect("the completed key's value");
    prompt_leader(&mut repl);
    // A key that needs quotes is completed with them.
    type_keys(&mut repl, "get my\t");
    repl.exp_string("get 'my key'")
        .expect("the key completed with quotes");
    enter(&mut repl, "");
    repl.exp_string("\"two words\"").expect("its value");
    prompt_leader(&mut repl);

    // A greyed hint shows the syntax while typing; Ctrl-C drops the half-typed line and the
    // session goes on.
    type_keys(&mut repl, "appe");
    repl.exp_string("nd <KEY> [VALUE]").expect("the syntax hint");
    repl.send_control('c').expect("Ctrl-C");
    prompt_leader(&mut repl);
    enter(&mut repl, "keys");
    let listed = repl.exp_string("3 keys").expect("the key listing");
    assert!(!listed.contains("appe"), "the dropped line never ran: {listed:?}");
    prompt_leader(&mut repl);

    // Ctrl-C ends `status --watch`; what follows starts on a line of its own, not after the
    // `^C` the terminal echoed.
    enter(&mut repl, ".timer on");
    prompt_leader(&mut repl);
    enter(&mut repl, "status --watch 0.3");
    repl.exp_string("Ctrl-C to stop").expect("a watch frame");
    repl.exp_string("Fault tolerance").expect("the whole frame");
    // While a command runs the terminal is in cooked mode; a real one echoes Ctrl-C as `^C`.
    // rexpect switches echo off, so switch it back on for this command.
    echo_control_characters(&repl);
    repl.send_control('c').expect("Ctrl-C");
    let (before, _) = repl.exp_regex(r"Time: \d+\.\d ms").expect("the timer line");
    assert!(
        before.ends_with("^C\r\n"),
        "the timer line must start a line of its own: {:?}",
        &before[before.len().saturating_sub(80)..]
    );
    prompt_leader(&mut repl);
    enter(&mut repl, ".timer off");
    prompt_leader(&mut repl);

    // The prompt follows a failover, and commands find the new leader on their own.
    cluster.kill(leader);
    let new_leader = cluster.wait_for_new_leader(leader, Duration::from_secs(30));
    enter(&mut repl, "append animals \"mouse\"");
    expect_ok_index(&mut repl);
    assert_eq!(
        prompt_leader(&mut repl),
        new_leader,
        "the prompt names the new leader"
    );
    enter(&mut repl, "leader");
    repl.exp_string(&format!("node {new_leader} at "))
        .expect("the new leader");
    prompt_leader(&mut repl);

    enter(&mut repl, "exit");
    expect_exit(&mut repl, 0);

    // History survives a restart, and Ctrl-R searches it.
    let saved = std::fs::read_to_string(&history).expect("the history file");
    assert!(saved.contains("put zebra/stripes 42"), "{saved}");
    let mut repl = spawn_repl(&file, &history);
    prompt_leader(&mut repl);
    repl.send_control('r').expect("Ctrl-R");
    type_keys(&mut repl, "mouse");
    repl.exp_string("append animals \"mouse\"")
        .expect("found in the history");
    enter(&mut repl, "");
    expect_ok_index(&mut repl);
    assert_eq!(
        cluster.get(new_leader, "animals"),
        Some(Some(json!(["cat", "dog", {"x": 1}, "mouse", "mouse"])))
    );
    prompt_leader(&mut repl);

    // The last follower dies: the leader still says it leads, but the prompt does not repeat
    // the claim as if it were true.
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader && *id != new_leader)
        .expect("a third node");
    cluster.kill(follower);
    enter(&mut repl, "");
    let (_, prompt) = repl
        .exp_regex(r"\n\r*kv\[(no quorum: node \d+ claims term \d+|no leader term=\d+)\]> ")
        .expect("a prompt without a leader");
    if prompt.contains("no quorum") {
        assert!(
            prompt.contains(&format!("node {new_leader} claims")),
            "{prompt:?}"
        );
    }
    // Ctrl-D on an empty line leaves, with success.
    repl.send_control('d').expect("Ctrl-D");
    expect_exit(&mut repl, 0);
}

/// What a piped run produced.
struct Piped {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run `kvctl [args] repl` with `script` on stdin.
fn run_script(args: &[&str], script: &str) -> Piped {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(args)
        .arg("repl")
        .env_remove("RUST_LOG")
        .env_remove("KVCTL_CLUSTER")
        // A script must not touch the user's history.
        .env("KVCTL_HISTORY", "/nonexistent/kvctl-history")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvctl repl");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(script.as_bytes()).expect("write the script");
    drop(stdin);
    let out = child.wait_with_output().expect("kvctl repl ends");
    Piped {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_piped_script_runs_every_line_and_exits_with_the_first_failure() {
    let cluster = Cluster::start(3);
    let file = cluster.cluster_file().to_str().expect("utf-8 path").to_string();
    let leader = cluster.wait_for_leader(Duration::from_secs(30));

    let script = "# fill two keys\n\
                  put s1 [1, 2]\n\
                  append s1 3\n\
                  get s1\n\
                  get missing-key\n\
                  \n\
                  put s2 \"two words\"\n\
                  .output plain\n\
                  keys s\n";
    let run = run_script(&["--cluster", &file], script);
    assert_eq!(
        run.code,
        Some(1),
        "the first failure was 'not found': {}",
        run.stderr
    );
    let errors: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("kvctl: line 5: ") && errors[0].contains("missing-key"),
        "{errors:?}"
    );
    // No prompt or banner; output as a one-shot command prints into a pipe.
    assert!(
        !run.stdout.contains("kv[") && !run.stdout.contains("REPL"),
        "{}",
        run.stdout
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert!(
        lines[0].starts_with("OK (index") && lines[1].starts_with("OK (index"),
        "{lines:?}"
    );
    assert_eq!(lines[2], "[1,2,3]");
    assert_eq!(&lines[4..], ["s1", "s2"], "plain output after .output plain");
    assert_eq!(
        cluster.get(leader, "s2"),
        Some(Some(json!("two words"))),
        "lines after a failure run"
    );

    // A usage error gives 2 even when later lines succeed; `exit` ends the script.
    let run = run_script(
        &["--cluster", &file],
        "frobnicate\nput after-error 1\nexit\nput after-exit 1\n",
    );
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("line 1: unrecognized subcommand"),
        "{}",
        run.stderr
    );
    assert_eq!(cluster.get(leader, "after-error"), Some(Some(json!(1))));
    assert_eq!(
        cluster.get(leader, "after-exit"),
        Some(None),
        "nothing runs after exit"
    );

    // With -o json (or .output json) errors are JSON objects too, naming their line.
    let run = run_script(
        &["--cluster", &file, "-o", "json"],
        "get missing-key\nput typo [\"cat\",\nget s2 -o table\n",
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let errors: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(errors.len(), 2, "{}", run.stderr);
    assert_eq!(errors[0]["error"]["code"], json!("key_not_found"));
    assert!(
        errors[0]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("line 1: ")),
        "{}",
        run.stderr
    );
    assert_eq!(errors[1]["error"]["code"], json!("usage"));
    assert_eq!(run.stdout, "\"two words\"\n");

    // A script of successes exits 0.
    let run = run_script(&["--cluster", &file], "get s2\nleader -o plain\n");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.starts_with("\"two words\"\n"), "{}", run.stdout);
}

#[test]
fn repl_commands_work_without_a_cluster_and_bad_ones_are_usage_errors() {
    // Nothing listens on port 1; none of these lines needs the cluster except the last.
    let run = run_script(
        &["--endpoints", "127.0.0.1:1", "--timeout", "300ms"],
        "help\nhelp get\n.output json\n.output\n.timer on\n.timer\n.consistency stale\n\
         .consistency\n.output yaml\n.bogus\nget 'unclosed\nput k -\nrepl\nget k\n",
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        run.stdout.contains("REPL commands:") && run.stdout.contains(".consistency"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("Usage: kvctl get"),
        "help get is clap's help: {}",
        run.stdout
    );
    for absent in ["--cluster", "--endpoints", "--version"] {
        assert!(
            !run.stdout.contains(absent),
            "{absent} does nothing in the REPL: {}",
            run.stdout
        );
    }
    for shown in ["json", "on", "stale"] {
        assert!(lines.contains(&shown), "{shown} in {lines:?}");
    }
    let errors: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(errors.len(), 6, "{errors:?}");
    assert!(
        errors[0].contains("line 9: .output takes table, json or plain"),
        "{errors:?}"
    );
    assert!(errors[1].contains("line 10: unknown REPL command"), "{errors:?}");
    assert!(
        errors[2].contains("line 11: unterminated single quote"),
        "{errors:?}"
    );
    assert!(
        errors[3].contains("line 12: ") && errors[3].contains("--file"),
        "{errors:?}"
    );
    assert!(errors[4].contains("line 13: already in the REPL"), "{errors:?}");
    // `.output json` on line 3 made every error a JSON object, in the server's shape.
    for (line, code) in errors
        .iter()
        .zip(["usage", "usage", "usage", "usage", "usage", "unavailable"])
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["error"]["code"], json!(code), "{line}");
    }
    assert!(
        errors[5].contains(r#""message":"line 14: cluster unavailable"#),
        "{errors:?}"
    );
    assert!(
        run.stdout.contains("Time: "),
        ".timer on times commands: {}",
        run.stdout
    );
    assert_eq!(run.code, Some(2), "the first failure was a usage error");
}
