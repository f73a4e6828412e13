//! The README's quick start and its kvctl examples, run the way a newcomer runs them.
//!
//! On a clean copy of the repository (the files git tracks, nothing else), in a bash whose PATH
//! holds cargo and the system's programs but no kvctl or kvnode, the test runs the lines of the
//! README's quick-start block exactly as written (it builds the release binaries and starts
//! the cluster of `bin/cluster.toml`), then every `$ ` line of the example in "kvctl, the
//! client", and compares each command's output with the output the README shows (for the
//! quick start, in the console block under it). Numbers and
//! response times may differ between runs (an election on a loaded machine moves every log
//! index), so they are compared by shape; every word must match.
//!
//! The build is reused: the copy's `target` is a link to this build's target directory, so a
//! release build made earlier is fresh for the copy too, and a first one happens here, as it
//! would for the newcomer (minutes on a small machine). The quick start's cluster listens on
//! the fixed ports of `bin/cluster.toml` (8080-8082, 6000-6002), which no test can choose; when
//! one of them is taken the test fails at once and says by what means to free it. Every
//! process the run starts is stopped when the test ends, failing or not.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use regex::Regex;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The lines of the first fenced block of type `kind` after the heading `heading`.
fn block_after(readme: &str, heading: &str, kind: &str) -> Vec<String> {
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("the README has no heading {heading:?}"));
    let rest = &readme[start..];
    let open = rest
        .find(&format!("\n```{kind}\n"))
        .unwrap_or_else(|| panic!("no ```{kind} block under {heading:?}"));
    let body = &rest[open + kind.len() + 5..];
    let end = body.find("\n```").expect("the block ends");
    body[..end].lines().map(str::to_string).collect()
}

/// One example: the command after `$ `, and the output the README shows under it.
#[derive(Debug)]
struct Example {
    command: String,
    output: Vec<String>,
}

fn examples(console: &[String]) -> Vec<Example> {
    let mut examples: Vec<Example> = Vec::new();
    for line in console {
        match line.strip_prefix("$ ") {
            Some(command) => examples.push(Example {
                command: command.to_string(),
                output: Vec::new(),
            }),
            None => examples
                .last_mut()
                .expect("the block starts with a command")
                .output
                .push(line.clone()),
        }
    }
    examples
}

/// A pattern for an output line as the README shows it: the words exactly, numbers and
/// durations as any number or duration, table padding and rules of any width, and the leader's
/// mark on whichever row leads.
fn shape(line: &str) -> Regex {
    let line = line.trim_end();
    let number = Regex::new(r"[0-9]+(\.[0-9]+)?(ms|s)?").expect("regex");
    let mut pattern = String::from("^");
    let mut last = 0;
    for m in number.find_iter(line) {
        pattern.push_str(&loose(&line[last..m.start()]));
        pattern.push_str(r"[0-9]+(\.[0-9]+)?(ms|s)?");
        last = m.end();
    }
    pattern.push_str(&loose(&line[last..]));
    pattern.push('$');
    Regex::new(&pattern).unwrap_or_else(|e| panic!("pattern for {line:?}: {e}"))
}

/// Escape `text`, letting runs of spaces and of table rules stretch and a role cell say either
/// role.
fn loose(text: &str) -> String {
    const ROLE: &str = "\u{0}role\u{0}";
    let escaped = regex::escape(text)
        .replace(r"\* leader", ROLE)
        .replace("follower", ROLE);
    Regex::new(r"( +|─+|═+)")
        .expect("regex")
        .replace_all(&escaped, |c: &regex::Captures| {
            let first = c[0].chars().next().unwrap_or(' ');
            format!("{first}+")
        })
        .replace(ROLE, r"(\* leader|follower)")
}

/// What each command printed (stdout and stderr, in order) and its exit status.
struct Transcript {
    outputs: Vec<(Vec<String>, i32)>,
    text: String,
}

const MARK: &str = "::readme-test::";

/// A bash script that runs `commands` in order, each followed by a marker line with its exit
/// status, so that the transcript can be cut into the output of each.
fn script(commands: &[String]) -> String {
    let mut script = String::from("exec 2>&1\n");
    for (i, command) in commands.iter().enumerate() {
        let _ = writeln!(script, "printf '\\n{MARK} start {i}\\n'");
        let _ = writeln!(script, "{command}");
        let _ = writeln!(script, "printf '\\n{MARK} end {i} %d\\n' \"$?\"");
    }
    script
}

fn transcript(text: String, commands: usize) -> Transcript {
    let mut outputs = Vec::new();
    for i in 0..commands {
        let start = format!("\n{MARK} start {i}\n");
        let from = text
            .find(&start)
            .unwrap_or_else(|| panic!("command {i} never started:\n{text}"))
            + start.len();
        let end = Regex::new(&format!(r"\n{MARK} end {i} (\d+)\n")).expect("regex");
        let Some(found) = end.captures(&text[from..]) else {
            panic!("command {i} never ended:\n{text}");
        };
        let status: i32 = found[1].parse().expect("a status");
        let whole = found.get(0).expect("the match");
        let output: Vec<String> = text[from..from + whole.start()]
            .lines()
            .map(str::to_string)
            .collect();
        outputs.push((output, status));
    }
    Transcript { outputs, text }
}

/// Copy the files git tracks, keeping their modes and modification times (so that the reused
/// build is as fresh for the copy as for the original).
fn clean_copy(to: &Path) {
    let listed = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo())
        .output()
        .expect("git must be installed: the test copies the files git tracks");
    assert!(
        listed.status.success(),
        "git ls-files failed: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    for name in listed.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).to_string();
        let from = repo().join(&name);
        let Ok(meta) = std::fs::metadata(&from) else {
            continue; // deleted in the working tree
        };
        let dest = to.join(&name);
        std::fs::create_dir_all(dest.parent().expect("a parent")).expect("mkdir");
        std::fs::copy(&from, &dest).expect("copy");
        let modified = meta.modified().expect("mtime");
        std::fs::File::options()
            .write(true)
            .open(&dest)
            .and_then(|f| f.set_modified(modified))
            .expect("keep the mtime");
    }
}

/// The ports of `bin/cluster.toml`, each refused with a message when it is taken.
fn check_ports() {
    let file = kvapi::ClusterFile::load(&repo().join("bin/cluster.toml")).expect("bin/cluster.toml");
    for node in &file.node {
        for address in [&node.http, &node.raft] {
            if let Err(e) = std::net::TcpListener::bind(address.as_str()) {
                panic!(
                    "{address} is taken ({e}). The README's quick start runs the cluster of \
                     bin/cluster.toml on its fixed ports (8080-8082 and 6000-6002), so this test \
                     needs them free: stop what listens there (a cluster from bin/cluster.sh \
                     start stops with bin/cluster.sh stop; see `ss -ltnp`) and run it again."
                );
            }
        }
    }
}

/// Stops what the README's commands started: the cluster (as the README says, with
/// `bin/cluster.sh stop`), then anything left in the shell's process group, then any node a pid
/// file still names. Prints the nodes' logs when the test failed.
struct Cleanup {
    copy: PathBuf,
    shell_group: Option<i32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let run = self.copy.join("bin/run");
        if std::thread::panicking() {
            for id in 0..3 {
                let log = run.join(format!("node{id}.log"));
                if let Ok(text) = std::fs::read_to_string(&log) {
                    let tail: Vec<&str> = text.lines().rev().take(100).collect();
                    eprintln!("===== {} (last 100 lines) =====", log.display());
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
        let _ = Command::new("bash")
            .arg(self.copy.join("bin/cluster.sh"))
            .arg("stop")
            .env_remove("KV_CLUSTER")
            .env_remove("KV_RUN_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(group) = self.shell_group {
            // SAFETY: kill(2) on the process group of the shell this test started.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        for id in 0..3 {
            if let Some(pid) = std::fs::read_to_string(run.join(format!("node{id}.pid")))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a node the README's commands started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn the_readme_quick_start_and_kvctl_examples_work_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let quick_start: Vec<String> = block_after(&readme, "## Quick start", "sh")
        .into_iter()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        quick_start.iter().any(|l| l.starts_with("bin/cluster.sh start"))
            && quick_start.iter().any(|l| l.starts_with("export PATH=")),
        "the quick start starts the cluster and puts kvctl on the PATH: {quick_start:?}"
    );
    // The output the quick start shows for its own commands.
    let shown = examples(&block_after(&readme, "## Quick start", "console"));
    let examples = examples(&block_after(&readme, "## kvctl, the client", "console"));
    assert!(examples.len() >= 8, "{examples:?}");
    check_ports();

    let scratch = tempfile::tempdir().expect("temp dir");
    let copy = scratch.path().join("kv");
    clean_copy(&copy);
    // The test executable is target/<profile>/deps/readme-*: its target directory is reused.
    let exe = std::env::current_exe().expect("test executable");
    let target = exe.ancestors().nth(3).expect("the target directory");
    std::os::unix::fs::symlink(target, copy.join("target")).expect("link the target directory");

    // Cargo and the system's programs, and nothing that holds a kvctl.
    let cargo_dir = Path::new(env!("CARGO")).parent().expect("cargo's directory");
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", cargo_dir.display());
    let mut commands = vec!["command -v kvctl kvnode".to_string()];
    commands.extend(quick_start.iter().cloned());
    commands.push("command -v kvctl".into());
    commands.extend(examples.iter().map(|e| e.command.clone()));
    let mut cleanup = Cleanup {
        copy: copy.clone(),
        shell_group: None,
    };
    let log_path = scratch.path().join("transcript.txt");
    let log = std::fs::File::create(&log_path).expect("transcript file");
    let mut shell = Command::new("/bin/bash");
    shell
        .args(["--noprofile", "--norc", "-c", &script(&commands)])
        .current_dir(&copy)
        .env_clear()
        .env("PATH", &path)
        .env("TERM", "dumb")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("transcript"))
        .stderr(log)
        .process_group(0);
    // The newcomer's environment as far as building goes; nothing of this test run's (no
    // CARGO_TARGET_DIR, KVCTL_CLUSTER, RUST_LOG, ...).
    let keep = |name: &str| {
        [
            "HOME",
            "USER",
            "LANG",
            "TMPDIR",
            "CARGO_HOME",
            "RUSTUP_HOME",
            "RUSTUP_TOOLCHAIN",
        ]
        .contains(&name)
            || ["CARGO_NET_", "CARGO_HTTP_", "CARGO_REGISTRIES_"]
                .iter()
                .any(|p| name.starts_with(p))
            || name.eq_ignore_ascii_case("http_proxy")
            || name.eq_ignore_ascii_case("https_proxy")
            || name.eq_ignore_ascii_case("no_proxy")
    };
    for (name, value) in std::env::vars_os() {
        if name.to_str().is_some_and(keep) {
            shell.env(name, value);
        }
    }
    let mut child = shell.spawn().expect("start bash");
    cleanup.shell_group = Some(child.id() as i32);
    // A first release build on two cores takes minutes; a hang is still a failure.
    let deadline = Instant::now() + Duration::from_secs(45 * 60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bash") {
            break status;
        }
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("the README's commands did not finish within 45 minutes:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&log_path).expect("transcript");
    assert!(status.success(), "bash failed ({status}):\n{text}");
    let run = transcript(text, commands.len());
    let show = || run.text.clone();

    let (found, status) = &run.outputs[0];
    assert_ne!(
        *status, 0,
        "kvctl must not be on the PATH before the README puts it there: {found:?}"
    );
    for (i, line) in quick_start.iter().enumerate() {
        let (output, status) = &run.outputs[1 + i];
        assert_eq!(*status, 0, "quick start line {line:?} failed:\n{}", show());
        if line.starts_with("bin/cluster.sh start") {
            // It prints the line to paste, naming the release directory the README's line names.
            let release = copy.join("target/release");
            let expected = format!("export PATH=\"{}:$PATH\"", release.display());
            assert!(
                output.iter().any(|l| l.trim() == expected),
                "cluster.sh start prints {expected:?}:\n{}",
                show()
            );
        }
    }
    let (found, status) = &run.outputs[1 + quick_start.len()];
    assert_eq!(*status, 0, "the README's PATH line finds kvctl:\n{}", show());
    assert_eq!(
        found.last().map(String::as_str),
        Some(copy.join("target/release/kvctl").to_str().expect("utf-8")),
        "{found:?}"
    );

    for example in &shown {
        let i = quick_start
            .iter()
            .position(|l| *l == example.command)
            .unwrap_or_else(|| panic!("the quick start shows {:?} but does not run it", example.command));
        compare(example, &run.outputs[1 + i].0);
    }
    let first = 2 + quick_start.len();
    for (i, example) in examples.iter().enumerate() {
        compare(example, &run.outputs[first + i].0);
    }
}

/// Assert that `output` has the shape of the output the README shows for `example`.
#[track_caller]
fn compare(example: &Example, output: &[String]) {
    let output: Vec<&String> = output.iter().filter(|l| !l.is_empty()).collect();
    let expected: Vec<&String> = example.output.iter().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        output.len(),
        expected.len(),
        "`{}` printed {output:#?}\nbut the README shows {expected:#?}",
        example.command
    );
    for (got, want) in output.iter().zip(&expected) {
        assert!(
            shape(want).is_match(got.trim_end()),
            "`{}`: the README shows\n  {want}\nbut it printed\n  {got}",
            example.command
        );
    }
}

#[test]
fn output_is_compared_by_shape() {
    assert!(shape("OK (index 2)").is_match("OK (index 17)"));
    assert!(!shape("OK (index 2)").is_match("OK (index 2; an earlier attempt had already applied it)"));
    assert!(shape("│ 0  ┆ 127.0.0.1:8080 ┆ * leader ┆ 1.5ms ┆       │")
        .is_match("│ 0  ┆ 127.0.0.1:8080 ┆ follower ┆ 12ms  ┆       │"));
    assert!(shape("┌────┬──────┐").is_match("┌────┬────┐"));
    assert!(!shape("Quorum: yes (3 of 3 voters answer, 2 needed)")
        .is_match("Quorum: NO (1 of 3 voters answer, 2 needed)"));
    assert!(!shape(r#"kvctl: key not found: "nope""#).is_match(r#"kvctl: key not found: "other""#));
}
