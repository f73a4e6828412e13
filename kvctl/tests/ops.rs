//! Operations with the real binaries: a backup taken under write load and restored into a new
//! cluster, `snapshot status` on sound and damaged files, `status` marking a node that is up
//! but not ready, and `-v` naming the request id of a failed attempt.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use testkit::{poll, Cluster};

const FAST: &[&str] = testkit::FAST_ELECTIONS;

fn kvctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(args)
        .env_remove("KVCTL_CLUSTER")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run kvctl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn cluster_arg(c: &Cluster) -> String {
    c.cluster_file().display().to_string()
}

/// `kvnode restore` for every node of `target`; the id of the new cluster, which every node
/// was told alike.
fn restore_all(backup: &Path, target: &Cluster) -> String {
    let mut ids = std::collections::BTreeSet::new();
    for id in target.ids() {
        let out = Command::new(testkit::kvnode_bin())
            .arg("restore")
            .arg(backup)
            .arg("--cluster")
            .arg(target.cluster_file())
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(target.data_dir(id))
            .output()
            .expect("run kvnode restore");
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "restore of node {id} failed: {stdout}{}",
            text(&out.stderr)
        );
        let said = format!("as node {id} of new cluster ");
        let cluster = stdout
            .split_once(said.as_str())
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no cluster id in: {stdout}"));
        ids.insert(cluster.to_string());
    }
    assert_eq!(ids.len(), 1, "every restored node names one cluster: {ids:?}");
    ids.into_iter().next().expect("one id")
}

/// The cluster id a node recorded in its data directory.
fn recorded_cluster(data_dir: &Path) -> Option<String> {
    let bytes = std::fs::read(data_dir.join("node.json")).ok()?;
    let json: Value = serde_json::from_slice(&bytes).ok()?;
    json["cluster"].as_str().map(str::to_string)
}

/// Sets `stop` when dropped, so that writer threads end even when the test panics (a scoped
/// thread that never ends would keep the test, and its cluster, alive).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What the writers saw: the index of every acknowledged write, and how many writes got no
/// definite answer (they may or may not be in the backup).
#[derive(Default)]
struct Acked {
    index: BTreeMap<String, u64>,
    in_doubt: usize,
}

#[test]
fn a_backup_taken_under_write_load_restores_every_acknowledged_write_into_a_new_cluster() {
    let source = Cluster::start_with(3, FAST);
    let leader = source.wait_for_leader(Duration::from_secs(30));
    let dir = tempfile::tempdir().expect("tmp");
    let backup = dir.path().join("backup.snap");
    let backup_arg = backup.display().to_string();

    // Writers put unique keys through every node and remember the index of every acknowledged
    // one; the backup is taken while they write.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let saved = std::thread::scope(|scope| {
        let _stop_writers = StopOnDrop(stop.clone());
        for w in 0..4u64 {
            let (c, stop, acked) = (&source, stop.clone(), acked.clone());
            scope.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 20_000 {
                    let key = format!("w{w}-{n}");
                    let reply = c.put(w % 3, &key, json!(n));
                    let mut acked = acked.lock().expect("lock");
                    match reply {
                        Some(r) if r.status == 200 => {
                            let index = r.json["index"].as_u64().expect("index");
                            acked.index.insert(key, index);
                        }
                        _ => acked.in_doubt += 1,
                    }
                    n += 1;
                }
            });
        }
        poll(Duration::from_secs(30), "writes before the backup", || {
            (acked.lock().expect("lock").index.len() >= 200).then_some(())
        });
        let saved = kvctl(&[
            "--cluster",
            &cluster_arg(&source),
            "-o",
            "json",
            "snapshot",
            "save",
            &backup_arg,
        ]);
        let writes_after = acked.lock().expect("lock").index.len();
        poll(Duration::from_secs(30), "writes after the backup", || {
            (acked.lock().expect("lock").index.len() >= writes_after + 100).then_some(())
        });
        saved
    });
    assert!(saved.status.success(), "save failed: {}", text(&saved.stderr));
    let saved: Value = serde_json::from_slice(&saved.stdout).expect("save prints JSON");
    assert_eq!(saved["node"], leader, "the backup comes from the leader");
    let index = saved["index"].as_u64().expect("index");
    assert!(
        std::fs::read_dir(dir.path()).expect("dir").all(|e| !e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .ends_with(".part")),
        "no temporary file is left behind"
    );

    let status = kvctl(&["-o", "json", "snapshot", "status", &backup_arg]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let status: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(status["index"], index);
    assert_eq!(status["verified"], true);
    assert_eq!(status["checksum"], saved["checksum"]);
    assert_eq!(status["keys"], saved["keys"]);
    let table = kvctl(&["snapshot", "status", &backup_arg]);
    let table = text(&table.stdout);
    assert!(table.contains("CHECKSUM") && table.contains("yes"), "{table}");

    let acked = acked.lock().expect("lock");
    let before: Vec<(&String, &u64)> = acked.index.iter().filter(|(_, i)| **i <= index).collect();
    let after: Vec<(&String, &u64)> = acked.index.iter().filter(|(_, i)| **i > index).collect();
    assert!(
        before.len() >= 200 && !after.is_empty(),
        "the backup was taken under load ({} before, {} after index {index})",
        before.len(),
        after.len()
    );
    let keys = status["keys"].as_u64().expect("keys") as usize;
    assert!(
        keys >= before.len() && keys <= before.len() + acked.in_doubt,
        "the backup holds the {} writes acknowledged up to its index, and at most the {} without a \
         definite answer besides; it holds {keys}",
        before.len(),
        acked.in_doubt
    );
    let old_cluster = recorded_cluster(&source.data_dir(0)).expect("the source's cluster id");
    drop(source);

    // A new cluster on other ports, built from the backup, under a cluster id of its own.
    let mut target = Cluster::prepare(3, FAST);
    let new_cluster = restore_all(&backup, &target);
    assert_ne!(new_cluster, old_cluster, "a restored cluster is a new cluster");
    for id in target.ids() {
        assert_eq!(recorded_cluster(&target.data_dir(id)), Some(new_cluster.clone()));
    }
    for id in target.ids() {
        target.restart(id);
    }
    let new_leader = target.wait_for_leader(Duration::from_secs(30));
    for (key, n) in &before {
        let value = target.get(new_leader, key).expect("answer");
        assert_eq!(
            value.as_ref().and_then(|v| v.as_u64()),
            key.rsplit('-').next().and_then(|s| s.parse().ok()),
            "{key} (index {n}) was acknowledged before the backup's index {index}"
        );
    }
    for (key, n) in after.iter().take(50) {
        assert_eq!(
            target.get(new_leader, key).expect("answer"),
            None,
            "{key} was written at index {n}, after the backup's index {index}"
        );
    }
    let r = target
        .put(new_leader, "after-restore", json!(true))
        .expect("answer");
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert!(r.json["index"].as_u64().is_some_and(|i| i > index));
    let s = target.status(new_leader).expect("status");
    assert_eq!(s.members.len(), 3);
    assert!(s
        .members
        .iter()
        .all(|m| target.description().get(m.id).is_some_and(|n| n.http == m.http)));

    // A damaged copy is refused, saying why.
    let damaged = dir.path().join("damaged.snap");
    let mut bytes = std::fs::read(&backup).expect("read");
    // One letter of a key changed: every frame still parses, only the checksum can tell.
    let key = before[0].0.as_bytes();
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the key is in the file");
    bytes[at] = b'x';
    std::fs::write(&damaged, &bytes).expect("write");
    let out = kvctl(&["snapshot", "status", &damaged.display().to_string()]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("checksum does not match"),
        "{}",
        text(&out.stderr)
    );
    // And restore will not build a directory from it.
    let out = Command::new(testkit::kvnode_bin())
        .arg("restore")
        .arg(&damaged)
        .arg("--cluster")
        .arg(target.cluster_file())
        .args(["--id", "0"])
        .arg("--data-dir")
        .arg(dir.path().join("never"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!dir.path().join("never").exists());
}

#[test]
fn status_marks_a_node_that_is_up_but_not_ready_and_v_names_request_ids() {
    let mut args = FAST.to_vec();
    args.extend(["--leader-wait-ms", "500"]);
    let mut c = Cluster::prepare(3, &args);
    c.restart(0);
    poll(Duration::from_secs(20), "node 0 to answer", || c.status(0));
    let cluster = cluster_arg(&c);

    let out = kvctl(&["--cluster", &cluster, "--timeout", "3s", "status"]);
    assert_eq!(out.status.code(), Some(3), "no quorum: {}", text(&out.stderr));
    let table = text(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.contains(&c.http_addr(0)))
        .unwrap_or_default();
    assert!(row.contains("not ready: no_leader"), "{table}");
    let out = kvctl(&["--cluster", &cluster, "--timeout", "3s", "-o", "json", "status"]);
    let survey: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(survey["nodes"][0]["ready"], false);
    assert_eq!(survey["nodes"][0]["not_ready_reason"], "no_leader");
    assert_eq!(
        survey["nodes"][1]["ready"],
        Value::Null,
        "a node that is down is not judged"
    );

    // A read that cannot be served (node 0 holds it while it waits for a leader, then answers
    // 503): -v shows each attempt's request id, which the node's log names too.
    let out = kvctl(&["--endpoints", &c.http_addr(0), "--timeout", "2s", "-v", "keys"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let id = stderr
        .split("(request id ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no request id in -v output:\n{stderr}"))
        .to_string();
    assert!(id.starts_with("kvctl-"), "{id}");
    let quiet = kvctl(&["--endpoints", &c.http_addr(0), "--timeout", "1s", "keys"]);
    assert!(!text(&quiet.stderr).contains("request id"), "only -v shows ids");
    poll(
        Duration::from_secs(10),
        "the request id in the node's log",
        || c.log(0).contains(&id).then_some(()),
    );

    c.restart(1);
    c.restart(2);
    c.wait_for_leader(Duration::from_secs(30));
    let ready = poll(
        Duration::from_secs(20),
        "every node ready in kvctl status",
        || {
            let out = kvctl(&["--cluster", &cluster, "-o", "json", "status"]);
            let survey: Value = serde_json::from_slice(&out.stdout).ok()?;
            let nodes = survey["nodes"].as_array()?.clone();
            nodes.iter().all(|n| n["ready"] == json!(true)).then_some(nodes)
        },
    );
    assert_eq!(ready.len(), 3);
}
