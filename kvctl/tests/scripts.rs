//! The scripts in `bin/` as a newcomer uses them: the assignment's `create_server*.sh` and
//! `cluster.sh` start one and the same cluster, `cluster.sh` asks the nodes rather than trusting
//! its pid files alone, and every script builds with the same command.
//!
//! The scripts run for real, with bash, against a cluster file on ephemeral ports and a run
//! directory in a temporary directory (`KV_CLUSTER`, `KV_RUN_DIR`), on the binaries this test
//! run built (`KV_BIN_DIR`, `KV_NO_BUILD=1`). Every process a script starts in the background
//! is stopped when the test ends, failing or not, and the nodes' logs are printed on failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use testkit::{free_ports, kvnode_bin, poll, ChildGuard};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// A cluster file on free ports and a run directory, with what a script needs to use them.
struct Setup {
    dir: tempfile::TempDir,
    cluster: PathBuf,
    run_dir: PathBuf,
    http: Vec<String>,
    bin_dir: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(6);
        let http: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", ports[2 * i])).collect();
        let text: String = (0..3)
            .map(|i| {
                format!(
                    "[[node]]\nid = {i}\nhttp = \"{}\"\nraft = \"127.0.0.1:{}\"\n\n",
                    http[i],
                    ports[2 * i + 1]
                )
            })
            .collect();
        let cluster = dir.path().join("cluster.toml");
        std::fs::write(&cluster, text).expect("write the cluster file");
        let bin_dir = kvnode_bin().parent().expect("kvnode's directory").to_path_buf();
        assert_eq!(
            Path::new(env!("CARGO_BIN_EXE_kvctl")).parent(),
            Some(bin_dir.as_path()),
            "kvnode and kvctl of this build live side by side"
        );
        Setup {
            run_dir: dir.path().join("run"),
            dir,
            cluster,
            http,
            bin_dir,
        }
    }

    /// `bin/NAME ARGS` with this setup's environment.
    fn script(&self, name: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("bin").join(name))
            .args(args)
            .env("KV_CLUSTER", &self.cluster)
            .env("KV_RUN_DIR", &self.run_dir)
            .env("KV_BIN_DIR", &self.bin_dir)
            .env("KV_NO_BUILD", "1")
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null());
        cmd
    }

    /// Run `bin/cluster.sh ARGS` to completion.
    fn cluster_sh(&self, args: &[&str]) -> (i32, String) {
        exit_and_output(self.script("cluster.sh", args))
    }

    fn kvctl(&self, args: &[&str]) -> Output {
        kvctl_on(&self.cluster, None, args)
    }

    /// The line of `cluster.sh status` for node `id`.
    fn status_row(&self, id: usize) -> String {
        let (code, text) = self.cluster_sh(&["status"]);
        assert_eq!(code, 0, "{text}");
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(self.http[id].as_str()))
            .unwrap_or_else(|| panic!("no row for node {id}: {text}"))
            .to_string()
    }

    fn pid_of(&self, id: usize) -> Option<i32> {
        std::fs::read_to_string(self.run_dir.join(format!("node{id}.pid")))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }
}

/// Run a script to completion: its exit code (-1 if killed) and its stdout and stderr.
fn exit_and_output(mut cmd: Command) -> (i32, String) {
    let out: Output = cmd.output().expect("run the script");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `kvctl --cluster FILE ARGS`, with `token` as `KVCTL_TOKEN` when given.
fn kvctl_on(cluster: &Path, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    cmd.arg("--cluster")
        .arg(cluster)
        .args(args)
        .env_remove("KVCTL_CLUSTER")
        .env_remove("KVCTL_TOKEN");
    if let Some(token) = token {
        cmd.env("KVCTL_TOKEN", token);
    }
    cmd.output().expect("run kvctl")
}

/// Stops what `cluster.sh start` put in the background, whatever happens to the test.
struct StopOnDrop<'a>(&'a Setup);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for id in 0..3 {
                let log = self.0.run_dir.join(format!("node{id}.log"));
                if let Ok(text) = std::fs::read_to_string(&log) {
                    eprintln!("===== {} =====\n{text}", log.display());
                }
            }
        }
        let _ = self.0.cluster_sh(&["stop"]);
        // Should the script have failed to stop one, its pid file still names it.
        for id in 0..3 {
            if let Some(pid) = self.0.pid_of(id) {
                // SAFETY: kill(2) on a pid our own script started and recorded.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) == 0 };
    exists
        && !std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .contains("State:\tZ")
}

#[test]
fn the_assignment_scripts_and_cluster_sh_run_one_cluster() {
    let setup = Setup::new();
    let _stop = StopOnDrop(&setup);

    // The assignment's way: one script per node, in the foreground.
    let mut servers: Vec<Option<ChildGuard>> = (0..3)
        .map(|id| {
            let log = setup.dir.path().join(format!("create_server{id}.log"));
            let file = std::fs::File::create(&log).expect("log file");
            let child = setup
                .script(&format!("create_server{id}.sh"), &[])
                .stdout(file.try_clone().expect("log"))
                .stderr(file)
                .spawn()
                .expect("start create_server");
            Some(ChildGuard::new(format!("create_server{id}.sh"), child, log))
        })
        .collect();
    poll(Duration::from_secs(60), "a leader", || {
        setup.kvctl(&["leader"]).status.success().then_some(())
    });
    // Their data is where cluster.sh keeps it.
    for id in 0..3 {
        let node_json = setup.run_dir.join(format!("data/node{id}/node.json"));
        assert!(node_json.exists(), "{} is missing", node_json.display());
    }
    assert!(!repo().join("bin/data").exists(), "nothing in the old place");

    // cluster.sh sees nodes it did not start, and leaves them alone.
    for id in 0..3 {
        let row = setup.status_row(id);
        assert!(row.contains("(not started by cluster.sh)"), "{row}");
        assert!(row.contains("term="), "{row}");
    }
    let (code, text) = setup.cluster_sh(&["start"]);
    assert_eq!(code, 0, "{text}");
    for id in 0..3 {
        assert!(
            text.contains(&format!(
                "node {id} already answers at {} (not started by cluster.sh",
                setup.http[id]
            )),
            "{text}"
        );
    }
    assert!(
        text.contains(&format!("export PATH=\"{}:$PATH\"", setup.bin_dir.display())),
        "cluster.sh prints the line that puts kvctl on the PATH: {text}"
    );
    assert!(
        text.contains(&format!("export KVCTL_CLUSTER=\"{}\"", setup.cluster.display())),
        "{text}"
    );
    let put = setup.kvctl(&["put", "k", "\"written while create_server ran\""]);
    assert!(put.status.success(), "{put:?}");

    // Two of the foreground nodes stop; cluster.sh starts them again, on the same data.
    servers[1] = None;
    servers[2] = None;
    let (code, text) = setup.cluster_sh(&["start"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("node 0 already answers"), "{text}");
    assert!(
        text.contains("node 1 starting") && text.contains("node 2 starting"),
        "{text}"
    );
    let got = setup.kvctl(&["get", "k"]);
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "\"written while create_server ran\"\n",
        "{got:?}"
    );
    assert!(setup.status_row(0).contains("(not started by cluster.sh)"));
    for id in [1, 2] {
        let row = setup.status_row(id);
        let pid = setup.pid_of(id).expect("a pid file");
        assert!(
            row.contains(&pid.to_string()) && !row.contains("not started"),
            "{row}"
        );
    }

    // One node killed: status says so, and start brings back just that one.
    let victim = setup.pid_of(2).expect("node 2's pid");
    // SAFETY: kill(2) on the node our script started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    poll(Duration::from_secs(10), "node 2 to die", || {
        (!alive(victim)).then_some(())
    });
    assert!(setup.status_row(2).ends_with("down"), "{}", setup.status_row(2));
    let (code, text) = setup.cluster_sh(&["start"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("node 1 already running"), "{text}");
    assert!(text.contains("node 2 starting"), "{text}");
    poll(Duration::from_secs(30), "node 2 to answer", || {
        (!setup.status_row(2).contains("down")).then_some(())
    });

    // stop stops what it started and names what it did not.
    let (code, text) = setup.cluster_sh(&["stop"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("node 1 stopped") && text.contains("node 2 stopped"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "node 0 at {} was not started by cluster.sh",
            setup.http[0]
        )),
        "{text}"
    );
    assert!(
        servers[0]
            .as_mut()
            .is_some_and(|s| s.child.try_wait().ok() == Some(None)),
        "node 0 left running"
    );
}

/// Every script builds with one command, so that cargo resolves the same features and a second
/// script never compiles the dependencies again; and none hides cargo's progress.
#[test]
fn every_script_builds_the_same_packages_with_progress() {
    let mut builds = 0;
    for entry in std::fs::read_dir(repo().join("bin")).expect("bin/") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("cargo build")) {
            let line = line.trim();
            if line.starts_with('#') || line.starts_with("rem ") {
                continue;
            }
            builds += 1;
            assert!(!line.contains("--quiet"), "{}: {line}", path.display());
            let shared = line.contains("cargo build --release -p kvnode -p kvctl)")
                || line.starts_with("cargo build --release -p kvnode -p kvctl ||");
            let kveval_alone =
                path.ends_with("evaluate.sh") && line.contains("cargo build --release -p kveval ||");
            assert!(shared || kveval_alone, "{}: {line}", path.display());
        }
        let calls_cargo_build = text.contains("cargo build");
        let shell = path.extension().is_some_and(|e| e == "sh") && !path.ends_with("common.sh");
        if shell && !calls_cargo_build {
            // A shell script that builds does it through common.sh's `build`, or not at all.
            let starts = text.contains("$KVNODE") || text.contains("cluster.sh");
            assert!(
                !starts || text.contains("common.sh"),
                "{} starts nodes without common.sh",
                path.display()
            );
        }
    }
    assert!(
        builds >= 4,
        "the .bat scripts, common.sh and evaluate.sh build: {builds}"
    );
}

/// The README's secured cluster: `KV_NODE_ARGS="--auth-file F" bin/cluster.sh start --tls`. The
/// script waits for a leader although the nodes refuse it /admin/status without a token (their
/// open /ready names the leader), and kvctl then works with the TLS cluster file and a token.
#[test]
fn cluster_sh_starts_a_tls_cluster_whose_nodes_check_tokens() {
    let setup = Setup::new();
    let _stop = StopOnDrop(&setup);
    let token = "a-token-for-the-script-test";
    let digest = testkit::sha256_hex(token);
    let auth = setup.dir.path().join("auth.toml");
    std::fs::write(
        &auth,
        format!("[[token]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{digest}\"\n"),
    )
    .expect("write the auth file");
    let mut start = setup.script("cluster.sh", &["start", "--tls"]);
    start.env("KV_NODE_ARGS", format!("--auth-file {}", auth.display()));
    let (code, text) = exit_and_output(start);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("leader: node "), "{text}");
    let (code, status) = setup.cluster_sh(&["status"]);
    assert_eq!(code, 0, "{status}");
    assert_eq!(status.matches(" leader term=").count(), 1, "{status}");
    assert_eq!(status.matches(" member term=").count(), 2, "{status}");
    let tls_file = setup.run_dir.join("tls/cluster.toml");
    let kvctl = |args: &[&str]| kvctl_on(&tls_file, Some(token), args);
    let put = kvctl(&["put", "k", "\"secured\""]);
    assert!(put.status.success(), "{put:?}");
    let got = kvctl(&["get", "k"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "\"secured\"\n", "{got:?}");
}
