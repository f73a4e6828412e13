//! Scripted fault scenarios that need exact control over which node is cut off when.
//!
//! The randomized runs (`short.rs`, the `chaos` binary) find what nobody thought of; these
//! scripts pin down the textbook Raft guarantees one at a time, each readable top to bottom:
//!
//! - an isolated leader cannot acknowledge writes, and a new leader takes over;
//! - a minority side cannot commit, even with the old leader on it;
//! - a deposed leader cannot serve a stale linearizable read;
//! - a follower that missed entries the leader has compacted away catches up via a snapshot;
//! - a node that crashed in the middle of writing a snapshot restarts and recovers;
//! - crashes at each step of a snapshot's life (issue 10), with clients writing throughout and
//!   chaos's checker over the history: `kill -9` while a node (follower or leader) builds a
//!   snapshot, while a follower receives or installs one from the leader, and right after a
//!   follower has installed one. Each kill is aimed by watching the node's snapshot directory
//!   or log, each scenario says how often it hit its window, and fails if it never did.
//!
//! Partition scenarios put every node in its own network namespace and cut peer traffic with
//! blackhole routes ([`chaos::netns`]); they need root and are skipped (saying so) without it.
//! Every wait is a poll with a deadline. A failing scenario panics while the cluster is alive,
//! so testkit prints every node's log.
//!
//! On openraft 0.10 a leader's snapshot past a stopped follower does not yet force that
//! follower onto a snapshot: the leader purges only entries no replication stream still has in
//! flight, and its stream to the stopped follower stays in flight until a failure is reported
//! back (every couple of seconds, with backoff). The snapshot scenarios therefore wait for the
//! leader's `purged_index`, not its `snapshot_index`, to pass the follower.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos::netns::{can_make_namespaces, Netns};
use chaos::run::{converge, final_reads, replica_reads, DEFAULT_NODE_ARGS};
use chaos::workload::{NodeEndpoint, WorkloadConfig};
use chaos::Recorder;
use kvapi::{NodeId, Role};
use testkit::{poll, Cluster, NodeLayout, Reply};

/// A cluster whose nodes live in network namespaces. The cluster is declared first so that it
/// is dropped (nodes killed, logs printed on failure) before the namespaces are removed.
struct Fixture {
    cluster: Cluster,
    net: Netns,
}

fn args_with(extra: &[&'static str]) -> Vec<&'static str> {
    DEFAULT_NODE_ARGS
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

/// `n` nodes in namespaces with a leader elected, or `None` (and a note) when not root.
fn partitionable_cluster(n: usize) -> Option<Fixture> {
    if !can_make_namespaces() {
        eprintln!("skipped: network partitions need root and iproute2 (network namespaces)");
        return None;
    }
    let net = Netns::create(n).expect("create namespaces");
    let layout: Vec<NodeLayout> = net
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, node)| NodeLayout {
            http: format!("{}:8080", node.addr),
            raft: format!("{}:9090", node.addr),
            launch_prefix: net.launch_prefix(i),
        })
        .collect();
    let cluster = Cluster::spawn_with_layout(&layout, &args_with(&[]));
    let fixture = Fixture { cluster, net };
    leader_among(&fixture.cluster, &fixture.cluster.ids(), Duration::from_secs(30));
    Some(fixture)
}

/// Wait for a leader among `ids` that a majority of the whole cluster, all within `ids`,
/// follows in the same term.
fn leader_among(cluster: &Cluster, ids: &[NodeId], timeout: Duration) -> NodeId {
    let majority = cluster.ids().len() / 2 + 1;
    poll(timeout, &format!("a leader among {ids:?}"), || {
        let statuses: Vec<kvapi::Status> = ids.iter().filter_map(|&id| cluster.status(id)).collect();
        let leader = statuses
            .iter()
            .filter(|s| s.role == Role::Leader)
            .max_by_key(|s| s.term)?;
        let followers = statuses
            .iter()
            .filter(|s| s.term == leader.term && s.leader.as_ref().map(|l| l.id) == Some(leader.id))
            .count();
        (followers >= majority).then_some(leader.id)
    })
}

fn append(cluster: &Cluster, id: NodeId, key: &str, value: &str) -> Option<Reply> {
    cluster.append(
        id,
        key,
        serde_json::json!(value),
        Some(&kvctl::client::new_idempotency_key()),
    )
}

fn status_code(reply: &Option<Reply>) -> String {
    match reply {
        Some(r) => format!("{} {}", r.status, r.json["error"]["code"]),
        None => "no answer".into(),
    }
}

/// A linearizable read of a list of strings through node `id`; `None` when it did not succeed.
fn read(cluster: &Cluster, id: NodeId, key: &str) -> Option<Vec<String>> {
    let value = cluster.get(id, key)?.unwrap_or(serde_json::json!([]));
    Some(serde_json::from_value(value).expect("a list of strings"))
}

/// Node `id`'s own copy of `key`, without asking the leader.
fn local_copy(cluster: &Cluster, id: NodeId, key: &str) -> Vec<String> {
    let reply = cluster
        .request(id, "GET", &format!("/keys/{key}?consistency=stale"), None, &[])
        .expect("node answers");
    match reply.status {
        404 => Vec::new(),
        200 => serde_json::from_value(reply.json["value"].clone()).expect("a list of strings"),
        other => panic!("stale read at node {id}: HTTP {other}"),
    }
}

/// Wait for the healed cluster to agree on one leader and applied index; on timeout, fail with
/// every node's status.
fn assert_converges(cluster: &Cluster) {
    if !converge(cluster, Duration::from_secs(30)) {
        let statuses: Vec<String> = cluster
            .ids()
            .iter()
            .map(|&id| format!("{:?}", cluster.status(id)))
            .collect();
        panic!(
            "the healed cluster did not converge within 30 s:\n{}",
            statuses.join("\n")
        );
    }
}

fn others(cluster: &Cluster, but: &[NodeId]) -> Vec<NodeId> {
    cluster.ids().into_iter().filter(|id| !but.contains(id)).collect()
}

fn idx(ids: &[NodeId]) -> Vec<usize> {
    ids.iter().map(|&i| i as usize).collect()
}

#[test]
fn an_isolated_leader_cannot_acknowledge_writes_and_a_new_leader_takes_over() {
    let Some(Fixture { cluster, mut net }) = partitionable_cluster(3) else {
        return;
    };
    let old = leader_among(&cluster, &cluster.ids(), Duration::from_secs(10));
    let reply = append(&cluster, old, "k", "before");
    assert_eq!(
        reply.as_ref().map(|r| r.status),
        Some(200),
        "{}",
        status_code(&reply)
    );

    let rest = others(&cluster, &[old]);
    net.split(&[old as usize], &idx(&rest))
        .expect("isolate the leader");
    // The old leader still believes it leads, but nobody replicates its log.
    let isolated = append(&cluster, old, "k", "isolated");
    assert_ne!(
        isolated.as_ref().map(|r| r.status),
        Some(200),
        "the isolated leader acknowledged a write it could not replicate"
    );
    eprintln!("write at the isolated leader: {}", status_code(&isolated));

    let new = leader_among(&cluster, &rest, Duration::from_secs(10));
    assert_ne!(new, old);
    let reply = append(&cluster, new, "k", "after");
    assert_eq!(
        reply.as_ref().map(|r| r.status),
        Some(200),
        "{}",
        status_code(&reply)
    );

    net.heal().expect("heal");
    assert_converges(&cluster);
    // "isolated" only ever reached the old leader's own log, so the new term overwrote it.
    assert_eq!(
        read(&cluster, new, "k"),
        Some(vec!["before".to_string(), "after".to_string()])
    );
    assert_eq!(
        local_copy(&cluster, old, "k"),
        vec!["before", "after"],
        "the old leader caught up"
    );
}

#[test]
fn a_minority_cannot_commit_even_with_the_old_leader_on_its_side() {
    let Some(Fixture { cluster, mut net }) = partitionable_cluster(5) else {
        return;
    };
    let leader = leader_among(&cluster, &cluster.ids(), Duration::from_secs(10));
    let reply = append(&cluster, leader, "k", "before");
    assert_eq!(
        reply.as_ref().map(|r| r.status),
        Some(200),
        "{}",
        status_code(&reply)
    );
    let buddy = others(&cluster, &[leader])[0];
    let minority = vec![leader, buddy];
    let majority = others(&cluster, &minority);
    // Let the buddy learn that "before" is committed, so the commit index below is current.
    poll(
        Duration::from_secs(10),
        "the buddy to apply the first write",
        || (local_copy(&cluster, buddy, "k") == ["before"]).then_some(()),
    );
    let commit_before: Vec<_> = minority
        .iter()
        .map(|&id| cluster.status(id).expect("status").commit_index)
        .collect();

    net.split(&idx(&minority), &idx(&majority)).expect("partition");
    for &id in &minority {
        let reply = append(&cluster, id, "k", &format!("minority-{id}"));
        assert_ne!(
            reply.as_ref().map(|r| r.status),
            Some(200),
            "node {id} on the minority side acknowledged a write"
        );
        eprintln!("write at minority node {id}: {}", status_code(&reply));
    }
    let commit_after: Vec<_> = minority
        .iter()
        .map(|&id| cluster.status(id).expect("status").commit_index)
        .collect();
    assert_eq!(commit_before, commit_after, "the minority's commit index moved");

    let new = leader_among(&cluster, &majority, Duration::from_secs(10));
    let reply = append(&cluster, new, "k", "majority");
    assert_eq!(
        reply.as_ref().map(|r| r.status),
        Some(200),
        "{}",
        status_code(&reply)
    );

    net.heal().expect("heal");
    assert_converges(&cluster);
    let expected = vec!["before".to_string(), "majority".to_string()];
    assert_eq!(read(&cluster, new, "k"), Some(expected.clone()));
    for id in cluster.ids() {
        assert_eq!(local_copy(&cluster, id, "k"), expected, "node {id}'s copy");
    }
}

#[test]
fn a_deposed_leader_cannot_serve_a_stale_read() {
    let Some(Fixture { cluster, mut net }) = partitionable_cluster(3) else {
        return;
    };
    let old = leader_among(&cluster, &cluster.ids(), Duration::from_secs(10));
    let reply = append(&cluster, old, "k", "v1");
    assert_eq!(
        reply.as_ref().map(|r| r.status),
        Some(200),
        "{}",
        status_code(&reply)
    );

    let rest = others(&cluster, &[old]);
    net.split(&[old as usize], &idx(&rest))
        .expect("isolate the leader");
    let new = leader_among(&cluster, &rest, Duration::from_secs(10));
    let reply = append(&cluster, new, "k", "v2");
    assert_eq!(
        reply.as_ref().map(|r| r.status),
        Some(200),
        "{}",
        status_code(&reply)
    );

    // The old leader's own copy is stale ([v1]); a linearizable read there must not return it.
    assert_eq!(
        local_copy(&cluster, old, "k"),
        vec!["v1"],
        "the premise: the old copy is stale"
    );
    let answer = cluster.request(old, "GET", "/keys/k", None, &[]);
    eprintln!(
        "linearizable read at the deposed leader: {}",
        status_code(&answer)
    );
    if let Some(r) = &answer {
        if r.status == 200 {
            let got: Vec<String> = serde_json::from_value(r.json["value"].clone()).expect("list");
            assert!(
                got.contains(&"v2".to_string()),
                "stale read from a deposed leader: {got:?}"
            );
        }
    }

    net.heal().expect("heal");
    assert_converges(&cluster);
    assert_eq!(
        read(&cluster, old, "k"),
        Some(vec!["v1".to_string(), "v2".to_string()])
    );
}

/// Kept entries after a snapshot (kvnode's `max_in_snapshot_log_to_keep`): a follower must
/// trail by more than this for the leader to have nothing but a snapshot to send.
const LOG_KEPT_AFTER_SNAPSHOT: u64 = 1000;

/// Wait until `leader`'s log no longer holds the entry after `last`: from then on, a follower
/// whose log ends at `last` can only catch up through a snapshot. Returns the leader's snapshot
/// and purged indexes.
///
/// A snapshot past `last` is not enough. The leader purges only entries no replication stream
/// still needs, and its stream to a follower that is down stays in flight from the follower's
/// last position until a failure is reported back (every couple of seconds, with backoff); a
/// follower back before then is sent the entries it lacks, not the snapshot.
fn wait_compacted_past(cluster: &Cluster, leader: NodeId, last: u64, timeout: Duration) -> (u64, u64) {
    poll(timeout, "the leader to purge its log past the follower", || {
        let s = cluster.status(leader)?;
        let purged = s.purged_index.filter(|&p| p > last)?;
        Some((s.snapshot_index?, purged))
    })
}

/// Length of a node's log file, to read only what a later incarnation writes.
fn log_len(cluster: &Cluster, id: NodeId) -> usize {
    cluster.log(id).len()
}

/// The lines of node `id`'s log after byte `from`.
fn log_since(cluster: &Cluster, id: NodeId, from: usize) -> String {
    cluster.log(id).get(from..).unwrap_or_default().to_string()
}

#[test]
fn a_follower_that_missed_compacted_entries_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::start_with(3, &args_with(&["--snapshot-every", "20"]));
    let leader = leader_among(&cluster, &cluster.ids(), Duration::from_secs(10));
    let follower = others(&cluster, &[leader])[0];
    assert_eq!(
        append(&cluster, leader, "k", "first").map(|r| r.status),
        Some(200)
    );
    poll(
        Duration::from_secs(10),
        "the follower to apply the first write",
        || (local_copy(&cluster, follower, "k") == ["first"]).then_some(()),
    );
    let follower_last = cluster
        .status(follower)
        .and_then(|s| s.last_log_index)
        .unwrap_or(0);
    cluster.kill(follower);

    // One write at a time: each is its own log entry, so the log outgrows what is kept.
    let writes = LOG_KEPT_AFTER_SNAPSHOT + 150;
    let mut expected = vec!["first".to_string()];
    for i in 0..writes {
        let value = format!("w{i}");
        let reply = append(&cluster, leader, "k", &value);
        assert_eq!(
            reply.as_ref().map(|r| r.status),
            Some(200),
            "write {i}: {}",
            status_code(&reply)
        );
        expected.push(value);
    }
    // The premise: the entries the follower lacks are gone from the leader's log.
    let (snapshot, purged) = wait_compacted_past(&cluster, leader, follower_last, Duration::from_secs(20));
    eprintln!("follower stopped at {follower_last}; leader snapshot at {snapshot}, purged up to {purged}");

    let log_from = log_len(&cluster, follower);
    cluster.restart(follower);
    poll(Duration::from_secs(30), "the follower to catch up", || {
        let s = cluster.status(follower)?;
        (s.last_applied >= Some(snapshot)).then_some(())
    });
    // The follower had nothing past index {follower_last}, and the leader no longer had those
    // entries: the only way to have caught up is the leader's snapshot. (Holding a snapshot
    // proves nothing: the follower builds its own while it applies entries.)
    assert!(
        log_since(&cluster, follower, log_from).contains("snapshot installed"),
        "the follower caught up without installing the leader's snapshot"
    );
    // The writes after the leader's last snapshot arrive as log entries, a moment later.
    poll(
        Duration::from_secs(20),
        "the follower to hold every write",
        || (local_copy(&cluster, follower, "k") == expected).then_some(()),
    );
}

/// Files under `dir` whose names end with `suffix`.
fn find_suffix(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(find_suffix(&path, suffix));
        } else if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_node_that_crashed_mid_snapshot_recovers() {
    let mut cluster = Cluster::start_with(3, &args_with(&["--snapshot-every", "20"]));
    let leader = leader_among(&cluster, &cluster.ids(), Duration::from_secs(10));
    let victim = others(&cluster, &[leader])[0];
    let mut expected = Vec::new();
    for i in 0..60 {
        let value = format!("a{i}");
        assert_eq!(append(&cluster, leader, "k", &value).map(|r| r.status), Some(200));
        expected.push(value);
    }
    poll(Duration::from_secs(10), "the victim to snapshot", || {
        cluster.status(victim)?.snapshot_index.filter(|&i| i >= 20)
    });
    cluster.kill(victim);

    // What SIGKILL in the middle of writing the next snapshot leaves behind: the previous
    // snapshot intact, and a torn temporary file beside it (kvnode writes `snapshots/*.part`,
    // fsyncs, then renames it to its final `*.snap` name).
    let snapshots = find_suffix(&cluster.data_dir(victim), ".snap");
    assert_eq!(
        snapshots.len(),
        1,
        "expected one published snapshot in the data directory: {snapshots:?}"
    );
    let intact = std::fs::read(&snapshots[0]).expect("read snapshot");
    let torn = snapshots[0].with_file_name("tmp-0-0.part");
    std::fs::write(&torn, &intact[..intact.len() / 2]).expect("write a torn snapshot");

    // The cluster moves on without the victim, then it comes back.
    for i in 0..30 {
        let value = format!("b{i}");
        assert_eq!(append(&cluster, leader, "k", &value).map(|r| r.status), Some(200));
        expected.push(value);
    }
    cluster.restart(victim);
    let target = cluster
        .status(leader)
        .and_then(|s| s.last_applied)
        .expect("leader applied");
    cluster.wait_applied(victim, target, Duration::from_secs(30));
    assert_eq!(
        local_copy(&cluster, victim, "k"),
        expected,
        "the victim's copy after recovery"
    );

    // And crashes right after bursts of writes, while the victim is still applying them and
    // building the snapshot every 20 entries call for.
    for round in 0..5 {
        for i in 0..25 {
            let value = format!("c{round}-{i}");
            assert_eq!(append(&cluster, leader, "k", &value).map(|r| r.status), Some(200));
            expected.push(value);
        }
        cluster.kill(victim);
        cluster.restart(victim);
    }
    let target = cluster
        .status(leader)
        .and_then(|s| s.last_applied)
        .expect("leader applied");
    cluster.wait_applied(victim, target, Duration::from_secs(30));
    assert_eq!(local_copy(&cluster, victim, "k"), expected);
}

/// Found by the randomized run with seed 103 (kill faults, `--snapshot-every 50`): a leader
/// killed right after acknowledging a write and restarted before the followers time out came
/// back as leader of its old term (openraft restores a former leader at once by default), and
/// served a linearizable read that missed the write it had acknowledged. The read barrier it
/// handed out was `max(noop of its term, committed index read from disk)`, and the committed
/// index is persisted without a sync, so after SIGKILL it lagged the last acknowledged entry.
///
/// kvnode turns leader restore off (`enable_leader_restore`): a restarted leader must win a new
/// election, whose first entry it then reads behind. This test failed every time before the
/// first fix (on openraft 0.9).
#[test]
fn a_leader_restarted_after_a_crash_does_not_serve_stale_reads() {
    // Elections slow enough that the old leader is back before anyone else runs for office.
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--heartbeat-ms",
            "50",
            "--election-min-ms",
            "2000",
            "--election-max-ms",
            "3000",
        ],
    );
    // The window is one entry wide (the last acknowledged write's commit not yet on disk), so
    // one crash hits it about every few rounds; forty make the test fail reliably.
    for round in 0..40 {
        let leader = leader_among(&cluster, &cluster.ids(), Duration::from_secs(20));
        let mut acknowledged = read(&cluster, leader, "k").expect("initial read");
        for i in 0..5 {
            let value = format!("r{round}-{i}");
            let reply = append(&cluster, leader, "k", &value);
            assert_eq!(
                reply.as_ref().map(|r| r.status),
                Some(200),
                "{}",
                status_code(&reply)
            );
            acknowledged.push(value);
        }
        cluster.kill(leader);
        cluster.restart(leader);
        let got = poll(
            Duration::from_secs(20),
            "a linearizable read at the restarted node",
            || read(&cluster, leader, "k"),
        );
        let role = cluster.status(leader).map(|s| (s.role, s.term));
        assert_eq!(
            got, acknowledged,
            "round {round}: the restarted node {leader} ({role:?}) served a stale linearizable read"
        );
    }
}

// Crashes at every step of a snapshot (issue 10). The three scenarios below share one shape: a
// state of about ten megabytes, so that building, sending and installing a snapshot each take
// long enough to be caught in the act; clients appending throughout, every operation recorded;
// `kill -9` at the chosen step, seen on disk or in the node's log, never guessed from a timer;
// a restart; and chaos's checker over the whole history plus every replica's own copy.

/// The snapshot crash scenarios keep both cores of CI busy (three debug nodes writing and
/// parsing tens of megabytes, plus clients); they take turns, so that one scenario's timing
/// is not another's starvation.
static SNAPSHOT_CRASHES: Mutex<()> = Mutex::new(());

/// Keys written before the faults, of [`BULK_VALUE_BYTES`] each: about 10 MB of state, which a
/// debug build needs 70 to 900 ms to write out as a snapshot (the nodes log how long), and
/// which takes about ten seconds to write through the API on CI's two cores. More would lengthen
/// every scenario without widening a window that is already hit nearly every time.
const BULK_KEYS: usize = 10_000;
const BULK_VALUE_BYTES: usize = 1000;
/// Concurrent writers of the bulk keys. Group commit folds their writes into entries of many
/// writes each, so the preload costs few commit round trips.
const BULK_WRITERS: usize = 16;

fn bulk_key(i: usize) -> String {
    format!("bulk{i:06}")
}

/// A value of `BULK_VALUE_BYTES` bytes that names its key, so that a value copied to the wrong
/// key cannot pass for the right one.
fn bulk_value(i: usize) -> String {
    let head = format!("{i:06}:");
    head.clone() + &"v".repeat(BULK_VALUE_BYTES - head.len())
}

/// Write every bulk key through `via`; each write must be acknowledged (no faults yet).
fn preload(cluster: &Cluster, via: NodeId) {
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..BULK_WRITERS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= BULK_KEYS {
                    break;
                }
                let reply = cluster.put(via, &bulk_key(i), serde_json::json!(bulk_value(i)));
                assert_eq!(
                    reply.as_ref().map(|r| r.status),
                    Some(200),
                    "bulk write {i}: {}",
                    status_code(&reply)
                );
            });
        }
    });
    eprintln!(
        "preloaded {BULK_KEYS} keys of {BULK_VALUE_BYTES} bytes in {:.1?}",
        started.elapsed()
    );
}

/// Every node holds exactly the bulk keys, and a sample of their values, in its own copy.
fn assert_bulk_everywhere(cluster: &Cluster) {
    let expected: Vec<String> = (0..BULK_KEYS).map(bulk_key).collect();
    for id in cluster.ids() {
        let reply = cluster
            .request(
                id,
                "GET",
                &format!("/keys?prefix=bulk&limit={}&consistency=stale", BULK_KEYS + 1),
                None,
                &[],
            )
            .expect("node answers");
        assert_eq!(reply.status, 200, "listing at node {id}: {:?}", reply.json);
        let listed: Vec<String> = serde_json::from_value(reply.json["keys"].clone()).expect("a list of keys");
        if listed != expected {
            let missing = expected.iter().filter(|k| !listed.contains(k)).take(5);
            panic!(
                "node {id} holds {} bulk keys, not {BULK_KEYS}; missing e.g. {:?}",
                listed.len(),
                missing.collect::<Vec<_>>()
            );
        }
        for i in (0..BULK_KEYS).step_by(BULK_KEYS / 40) {
            let reply = cluster
                .request(
                    id,
                    "GET",
                    &format!("/keys/{}?consistency=stale", bulk_key(i)),
                    None,
                    &[],
                )
                .expect("node answers");
            assert_eq!(
                reply.json["value"],
                serde_json::json!(bulk_value(i)),
                "node {id}'s value of {}",
                bulk_key(i)
            );
        }
    }
}

/// The workload's seed: `CHAOS_SEED` when set, otherwise from the clock (always printed).
fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000_000)
                .unwrap_or(1)
        })
}

/// Clients appending unique values to a few keys (and reading them) through every fault:
/// chaos's own workload on a small runtime of its own, every operation recorded for chaos's
/// checker. Appends through a node that is down fail before they are sent, and are recorded
/// as failed: those values must never appear anywhere.
struct Load {
    runtime: tokio::runtime::Runtime,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    clients: tokio::task::JoinHandle<Result<(), chaos::workload::WorkloadError>>,
    endpoints: Vec<NodeEndpoint>,
    keys: Vec<String>,
}

impl Load {
    fn start(cluster: &Cluster) -> Load {
        let seed = seed();
        eprintln!("workload seed {seed} (CHAOS_SEED={seed} replays the clients' choices)");
        let config = WorkloadConfig::new(4, 3, seed);
        let endpoints: Vec<NodeEndpoint> = cluster
            .ids()
            .into_iter()
            .map(|id| NodeEndpoint {
                id,
                http: cluster.http_addr(id),
            })
            .collect();
        let recorder = Recorder::new(None);
        let stop = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the clients");
        let clients = runtime.spawn({
            let (config, endpoints, recorder, stop) =
                (config.clone(), endpoints.clone(), recorder.clone(), stop.clone());
            async move { chaos::workload::run(&config, &endpoints, &recorder, stop).await }
        });
        Load {
            runtime,
            recorder,
            stop,
            clients,
            endpoints,
            keys: config.keys,
        }
    }

    /// Record a kill in the history, so that anomalies can be lined up with it.
    fn killed(&self, id: NodeId, detail: impl Into<String>) {
        self.recorder.fault("kill", vec![id], detail);
    }

    /// Stop the clients, let every node apply everything the leader holds, read the final state
    /// through the leader and each node's own copy, and fail on any anomaly in the history:
    /// an acknowledged append missing or present twice anywhere, a value of a failed append
    /// present anywhere, a replica that differs from the final state.
    fn finish(self, cluster: &Cluster) {
        self.stop.store(true, Ordering::Relaxed);
        self.runtime
            .block_on(self.clients)
            .expect("the clients' task")
            .expect("the clients ran");
        assert_converges(cluster);
        let leader = leader_among(cluster, &cluster.ids(), Duration::from_secs(10));
        let target = cluster
            .status(leader)
            .and_then(|s| s.last_log_index)
            .expect("the leader has a log");
        for id in cluster.ids() {
            cluster.wait_applied(id, target, Duration::from_secs(30));
        }
        // A key slot moves on to a fresh key every 200 appends (`k0`, `k0.1`, ...): read every
        // key an operation touched, and the slots' first keys even if nothing touched them.
        let mut keys = self.recorder.keys();
        keys.extend(self.keys.iter().cloned());
        keys.sort_unstable();
        keys.dedup();
        self.runtime
            .block_on(final_reads(&self.endpoints, &keys, &self.recorder))
            .expect("final reads");
        self.runtime
            .block_on(replica_reads(&self.endpoints, &keys, &self.recorder))
            .expect("replica reads");
        let history = self.recorder.snapshot();
        let report = chaos::check(&history);
        let mut summary = Vec::new();
        report.render(&history, &mut summary).expect("render");
        let summary = String::from_utf8(summary).expect("utf8");
        eprintln!("{summary}");
        assert!(report.is_valid(), "anomalies in the history:\n{summary}");
        // Not vacuous: every final and replica read answered, and real appends went through.
        let reads = keys.len() * (1 + self.endpoints.len());
        assert_eq!(report.final_reads.ok, reads, "final reads answered:\n{summary}");
        assert!(
            report.appends.ok >= 50,
            "too few acknowledged appends:\n{summary}"
        );
    }
}

/// A node's snapshot directory.
fn snapshot_dir(cluster: &Cluster, id: NodeId) -> PathBuf {
    cluster.data_dir(id).join("snapshots")
}

/// The temporary (`.part`) files in a snapshot directory: snapshots being built or received.
fn parts(dir: &Path) -> Vec<PathBuf> {
    find_suffix(dir, ".part")
}

/// Poll `dir` every millisecond for a `.part` file not in `old`, and return it the moment one
/// appears. Polls this tight because the caller kills the node next, and the file may live for
/// only a fraction of a second.
fn wait_for_part(dir: &Path, old: &[PathBuf], timeout: Duration, what: &str) -> PathBuf {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(p) = parts(dir).into_iter().find(|p| !old.contains(p)) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "no .part file appeared in {} within {timeout:?} ({what})",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Size of the newest published snapshot in `dir` (the size of the next one, give or take the
/// few writes in between), or `None` when there is none.
fn newest_snapshot_size(dir: &Path) -> Option<u64> {
    find_suffix(dir, ".snap")
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .max()
}

/// Poll `part` every millisecond until it holds at least `bytes` bytes: true then, false if it
/// vanished first (published under its final name, or abandoned).
fn wait_for_size(part: &Path, bytes: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match std::fs::metadata(part) {
            Ok(m) if m.len() >= bytes => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
        assert!(
            Instant::now() < deadline,
            "{} did not reach {bytes} bytes within {timeout:?}",
            part.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Where in a file's life the kills of a scenario aim, as fractions of its expected size:
/// as soon as it appears, half-way, and complete (being synced, checked and published).
/// Killing only at first sight would only ever test an empty file.
const KILL_POINTS: [f64; 3] = [0.0, 0.5, 1.0];

/// The byte count at which to kill for `point` of [`KILL_POINTS`], given the expected size
/// (1 % short of it at the end, as the next snapshot differs by a few writes).
fn kill_at(point: f64, expected: u64) -> u64 {
    (expected as f64 * point * 0.99) as u64
}

/// The growing end of a node's log, read from a byte offset on, woken by inotify as soon as
/// the node writes: a sleep between looks would add up to its length to every sighting, and
/// what follows an install (the answer to the leader, the log purge) takes about a millisecond.
struct LogTail {
    file: std::fs::File,
    text: String,
    inotify: i32,
}

impl LogTail {
    fn open(cluster: &Cluster, id: NodeId, from: usize) -> LogTail {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::ffi::OsStrExt;
        let path = cluster.dir().join(format!("node{id}.log"));
        let mut file = std::fs::File::open(&path).expect("open the node's log");
        file.seek(SeekFrom::Start(from as u64)).expect("seek");
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("a path without NUL");
        // SAFETY: plain system calls on a descriptor this struct owns and closes on drop.
        let inotify = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        assert!(inotify >= 0, "inotify_init1: {}", std::io::Error::last_os_error());
        // SAFETY: as above; `c_path` outlives the call.
        let watch = unsafe { libc::inotify_add_watch(inotify, c_path.as_ptr(), libc::IN_MODIFY) };
        assert!(
            watch >= 0,
            "inotify_add_watch: {}",
            std::io::Error::last_os_error()
        );
        LogTail {
            file,
            text: String::new(),
            inotify,
        }
    }

    /// The first line written since the offset that contains `needle`.
    fn find(&mut self, needle: &str) -> Option<String> {
        use std::io::Read;
        self.file
            .read_to_string(&mut self.text)
            .expect("read the node's log");
        self.text.lines().find(|l| l.contains(needle)).map(str::to_string)
    }

    /// Block until the log is written to, or `at_most` passes.
    fn wait(&self, at_most: Duration) {
        let mut fd = libc::pollfd {
            fd: self.inotify,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut events = [0u8; 4096];
        // SAFETY: poll(2) on one pollfd we own, then a non-blocking read(2) into a local buffer
        // of the length given, to drain the events.
        unsafe {
            libc::poll(&mut fd, 1, at_most.as_millis() as i32);
            libc::read(self.inotify, events.as_mut_ptr().cast(), events.len());
        }
    }
}

impl Drop for LogTail {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this struct owns, once.
        unsafe { libc::close(self.inotify) };
    }
}

/// Wait until node `id`'s log (past byte `from`) has a line containing `needle`, and return
/// that line the moment it is written.
fn wait_for_log_line(cluster: &Cluster, id: NodeId, from: usize, needle: &str, timeout: Duration) -> String {
    let mut tail = LogTail::open(cluster, id, from);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(line) = tail.find(needle) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not log {needle:?} within {timeout:?}"
        );
        tail.wait(Duration::from_millis(20));
    }
}

/// The value of `name=<digits>` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    let digits: String = line[start..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The value of `name=Some(<digits>)` or `name=None` in a log line (a field logged with `?`):
/// `None` when the field is missing or malformed.
fn optional_field(line: &str, name: &str) -> Option<Option<u64>> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    let rest = &line[start..];
    if rest.starts_with("None") {
        return Some(None);
    }
    let digits: String = rest
        .strip_prefix("Some(")?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().map(Some)
}

/// Milliseconds from the UTC timestamp that starts a tracing line (`...THH:MM:SS.ffffffZ`) to
/// now, on the time of day (nodes and tests share the machine's clock).
fn ms_since_logged(line: &str) -> Option<f64> {
    let t = line
        .split_whitespace()
        .next()?
        .split('T')
        .nth(1)?
        .trim_end_matches('Z');
    let mut parts = t.split(':');
    let (h, m, s): (f64, f64, f64) = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    let logged = h * 3600.0 + m * 60.0 + s;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64()
        % 86_400.0;
    Some(((now - logged + 86_400.0) % 86_400.0) * 1000.0)
}

/// Print how many snapshots each node wrote and installed and how long they took (`ms=` of
/// kvnode's own log lines): the width of the windows the kills aim at.
fn print_snapshot_timings(cluster: &Cluster) {
    for id in cluster.ids() {
        let log = cluster.log(id);
        for what in ["snapshot written", "snapshot installed"] {
            let ms: Vec<u64> = log
                .lines()
                .filter(|l| l.contains(what))
                .filter_map(|l| field(l, "ms"))
                .collect();
            if let (Some(lo), Some(hi)) = (ms.iter().min(), ms.iter().max()) {
                eprintln!("node {id}: {what} {} times, {lo}-{hi} ms", ms.len());
            }
        }
    }
}

/// Wait until a restarted node answers again, and return its first answer; fail at once, with
/// its exit code, if it exits instead (a node that refuses its own data directory says why in
/// its log).
fn wait_up(cluster: &mut Cluster, id: NodeId, timeout: Duration) -> kvapi::Status {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = cluster.status(id) {
            return status;
        }
        if let Some(code) = cluster.wait_exit(id, Duration::ZERO) {
            panic!("node {id} exited with code {code} after its restart instead of coming up");
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not answer within {timeout:?} of its restart"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Wait until node `id` has applied everything the leader had applied when called.
fn wait_caught_up(cluster: &Cluster, id: NodeId, timeout: Duration) {
    let leader = leader_among(cluster, &cluster.ids(), timeout);
    let target = cluster
        .status(leader)
        .and_then(|s| s.last_applied)
        .expect("the leader applied");
    cluster.wait_applied(id, target, timeout);
}

/// Log entries between snapshots in the crash scenarios: a build every second or two under
/// the clients' load, each taking a good fraction of a second on 20 MB of state.
const SNAPSHOT_EVERY: &str = "200";

#[test]
fn a_node_killed_while_building_a_snapshot_restarts_with_every_write() {
    let _turn = SNAPSHOT_CRASHES.lock().unwrap_or_else(|p| p.into_inner());
    let mut cluster = Cluster::start_with(3, &args_with(&["--snapshot-every", SNAPSHOT_EVERY]));
    let leader = leader_among(&cluster, &cluster.ids(), Duration::from_secs(10));
    preload(&cluster, leader);
    let load = Load::start(&cluster);

    // A build can finish between the moment its file is seen and the SIGKILL, so each attempt
    // says whether it hit. The attempts aim at different points of the build, at followers
    // and at the leader (whose loss also forces an election).
    let points: Vec<f64> = KILL_POINTS.iter().chain(&[0.0]).copied().collect();
    let mut hits = 0;
    for (attempt, &point) in points.iter().enumerate() {
        let leader = leader_among(&cluster, &cluster.ids(), Duration::from_secs(20));
        let victim = if attempt % 2 == 1 {
            leader
        } else {
            others(&cluster, &[leader])[attempt / 2 % 2]
        };
        let dir = snapshot_dir(&cluster, victim);
        let expected = newest_snapshot_size(&dir).expect("the victim has built a snapshot before");
        let old = parts(&dir);
        let seen = wait_for_part(&dir, &old, Duration::from_secs(20), "a snapshot build");
        let reached = wait_for_size(&seen, kill_at(point, expected), Duration::from_secs(20));
        cluster.kill(victim);
        // SIGKILL leaves a file being written where it was: one still here was being built.
        let left = std::fs::metadata(&seen).map(|m| m.len()).ok();
        let hit = reached && left.is_some();
        hits += usize::from(hit);
        let role = if victim == leader { "leader" } else { "follower" };
        load.killed(victim, format!("{role}, snapshot build under way"));
        eprintln!(
            "attempt {attempt}: aimed at {:.0} % of {expected} bytes, killed {role} {victim} {}",
            point * 100.0,
            match left {
                Some(bytes) if hit =>
                    format!("during the build, leaving {bytes} bytes in {}", seen.display()),
                _ => "just after the build finished (missed)".to_string(),
            }
        );
        cluster.restart(victim);
        wait_up(&mut cluster, victim, Duration::from_secs(30));
        wait_caught_up(&cluster, victim, Duration::from_secs(30));
        // The leftover of an interrupted build is gone: the node removes torn files when it
        // opens its directory, and never takes one for a snapshot.
        assert!(!seen.exists(), "{} survived the restart", seen.display());
    }
    eprintln!("snapshot build window hit {hits}/{} times", points.len());
    assert!(hits >= 1, "no kill landed during a snapshot build");

    print_snapshot_timings(&cluster);
    load.finish(&cluster);
    assert_bulk_everywhere(&cluster);
    // Every node kept up, so no snapshot was ever sent: every `.part` above was a build.
    for id in cluster.ids() {
        assert!(
            !cluster.log(id).contains("snapshot installed"),
            "node {id} installed a snapshot; the premise that only builds were interrupted fails"
        );
    }
}

/// Stop `follower` once it holds the first write, then preload the bulk keys and start the
/// clients without it, and wait until the leader's log no longer holds what the follower
/// lacks: on its return it can only catch up through a snapshot. Returns the clients.
fn leave_a_follower_behind_a_snapshot(cluster: &mut Cluster, leader: NodeId, follower: NodeId) -> Load {
    assert_eq!(append(cluster, leader, "first", "x").map(|r| r.status), Some(200));
    poll(
        Duration::from_secs(10),
        "the follower to apply the first write",
        || (local_copy(cluster, follower, "first") == ["x"]).then_some(()),
    );
    let follower_last = cluster
        .status(follower)
        .and_then(|s| s.last_log_index)
        .expect("the follower has a log");
    cluster.kill(follower);
    preload(cluster, leader);
    let load = Load::start(cluster);
    load.killed(follower, "follower, left behind a snapshot");
    let (snapshot, purged) = wait_compacted_past(cluster, leader, follower_last, Duration::from_secs(60));
    eprintln!(
        "follower {follower} stopped at {follower_last}; the leader holds a snapshot at {snapshot} and purged up to {purged}"
    );
    load
}

#[test]
fn a_follower_killed_while_receiving_or_installing_a_snapshot_restarts_and_catches_up() {
    let _turn = SNAPSHOT_CRASHES.lock().unwrap_or_else(|p| p.into_inner());
    let mut cluster = Cluster::start_with(3, &args_with(&["--snapshot-every", SNAPSHOT_EVERY]));
    let leader = leader_among(&cluster, &cluster.ids(), Duration::from_secs(10));
    let follower = others(&cluster, &[leader])[0];
    let load = leave_a_follower_behind_a_snapshot(&mut cluster, leader, follower);
    let dir = snapshot_dir(&cluster, follower);

    // Each return sends the follower the whole snapshot again (the leader never heard that the
    // last one arrived), so every attempt is a new window, from the first byte received to the
    // install's log line; the attempts aim at its beginning, middle and end.
    let mut hits = 0;
    for (attempt, &point) in KILL_POINTS.iter().enumerate() {
        let expected = newest_snapshot_size(&snapshot_dir(&cluster, leader)).expect("leader's snapshot");
        let old = parts(&dir);
        let log_from = log_len(&cluster, follower);
        cluster.restart(follower);
        let seen = wait_for_part(&dir, &old, Duration::from_secs(30), "the leader's snapshot");
        wait_for_size(&seen, kill_at(point, expected), Duration::from_secs(30));
        cluster.kill(follower);
        let left = std::fs::metadata(&seen).map(|m| m.len()).ok();
        let part_left = left.is_some();
        let installed = log_since(&cluster, follower, log_from).contains("snapshot installed");
        let hit = part_left || !installed;
        hits += usize::from(hit);
        load.killed(follower, "follower, receiving or installing a snapshot");
        eprintln!(
            "attempt {attempt}: aimed at {:.0} % of {expected} bytes, killed follower {follower} {}",
            point * 100.0,
            match (part_left, installed) {
                (true, _) => format!(
                    "while the snapshot was received, synced or checked ({} bytes of it left in .part)",
                    left.unwrap_or_default()
                ),
                (false, false) => "after the snapshot was published, before it was installed".to_string(),
                (false, true) => "after the install had finished (missed)".to_string(),
            }
        );
    }
    eprintln!("snapshot install window hit {hits}/{} times", KILL_POINTS.len());
    assert!(
        hits >= 1,
        "no kill landed while a snapshot was received or installed"
    );

    let leftovers = parts(&dir);
    let log_from = log_len(&cluster, follower);
    cluster.restart(follower);
    wait_up(&mut cluster, follower, Duration::from_secs(30));
    // The leftovers of the interrupted transfers are gone (a new transfer may have begun
    // already, under a new name), and the snapshot does arrive.
    let stale: Vec<&PathBuf> = leftovers.iter().filter(|p| p.exists()).collect();
    assert!(
        stale.is_empty(),
        "leftover .part files after the restart: {stale:?}"
    );
    wait_for_log_line(
        &cluster,
        follower,
        log_from,
        "snapshot installed",
        Duration::from_secs(30),
    );
    wait_caught_up(&cluster, follower, Duration::from_secs(30));

    print_snapshot_timings(&cluster);
    load.finish(&cluster);
    assert_bulk_everywhere(&cluster);
}

#[test]
fn a_follower_killed_right_after_installing_a_snapshot_restarts_with_it() {
    let _turn = SNAPSHOT_CRASHES.lock().unwrap_or_else(|p| p.into_inner());
    let mut cluster = Cluster::start_with(3, &args_with(&["--snapshot-every", SNAPSHOT_EVERY]));
    let leader = leader_among(&cluster, &cluster.ids(), Duration::from_secs(10));
    let follower = others(&cluster, &[leader])[0];
    let load = leave_a_follower_behind_a_snapshot(&mut cluster, leader, follower);
    let dir = snapshot_dir(&cluster, follower);

    // Once a snapshot is installed (and logged), the follower answers the leader, purges the
    // log entries the snapshot replaces, and goes on to store the entries after it. Each kill
    // aims before any of that; the restart says what it found ("data directory opened"): a
    // log ending at or before the snapshot means nothing had been stored after the install
    // (the window), a purge short of the snapshot means the kill came even before the purge
    // (about a millisecond, so hit only sometimes), leaving a snapshot ahead of an unpurged
    // log for the restart to reconcile.
    const KILLS: usize = 3;
    let (mut hits, mut before_purge) = (0, 0);
    for attempt in 0..KILLS {
        if attempt > 0 {
            // The next install: a follower that lost its disk also rejoins through a snapshot,
            // since the leader purged its log long ago. (Waiting for the leader to purge past a
            // stopped follower again would cost another thousand entries.)
            cluster.wipe(follower);
        }
        let log_from = log_len(&cluster, follower);
        cluster.restart(follower);
        let line = wait_for_log_line(
            &cluster,
            follower,
            log_from,
            "snapshot installed",
            Duration::from_secs(30),
        );
        let late_ms = ms_since_logged(&line).expect("a timestamped log line");
        cluster.kill(follower);
        load.killed(follower, "follower, right after installing a snapshot");
        let installed = field(&line, "index").expect("the installed index in the log line");
        // The install was durable before it was logged: published under its final name.
        let published = find_suffix(&dir, ".snap");
        assert!(
            published
                .iter()
                .any(|p| p.to_string_lossy().contains(&format!("{installed:020}-"))),
            "the installed snapshot at {installed} is not on disk: {published:?}"
        );

        let log_from = log_len(&cluster, follower);
        cluster.restart(follower);
        wait_up(&mut cluster, follower, Duration::from_secs(30));
        // It comes back with the snapshot it installed, not with the state it had before.
        let found = wait_for_log_line(
            &cluster,
            follower,
            log_from,
            "data directory opened",
            Duration::from_secs(5),
        );
        let on_disk = |name| optional_field(&found, name).unwrap_or_else(|| panic!("{name} in: {found}"));
        assert!(
            on_disk("snapshot") >= Some(installed),
            "the restarted follower lost the snapshot at {installed}: {found}"
        );
        // Openraft agrees, once it has published the restored state (until then a node
        // reports term 0 and nothing applied).
        let restored = poll(Duration::from_secs(10), "the restored state", || {
            cluster.status(follower).filter(|s| s.term > 0)
        });
        assert!(
            restored.last_applied >= Some(installed),
            "the restarted follower applied less than its snapshot at {installed}: {restored:?}"
        );
        let hit = on_disk("log_last") <= Some(installed);
        let purge_pending = on_disk("log_purged") < Some(installed);
        hits += usize::from(hit);
        before_purge += usize::from(purge_pending);
        eprintln!(
            "attempt {attempt}: killed follower {follower} {late_ms:.1} ms after it installed the snapshot at {installed}, {}; restarted from: {}",
            match (hit, purge_pending) {
                (_, true) => "before it purged its log",
                (true, false) => "after it purged its log, before it stored any later entry",
                (false, false) => "after it had stored later entries (missed)",
            },
            found.split("data directory opened").nth(1).unwrap_or_default().trim()
        );
    }
    eprintln!(
        "right-after-install window hit {hits}/{KILLS} times ({before_purge} of them before the log purge)"
    );
    assert!(
        hits >= 1,
        "every kill came after the follower had moved past its install"
    );
    wait_caught_up(&cluster, follower, Duration::from_secs(30));

    print_snapshot_timings(&cluster);
    load.finish(&cluster);
    assert_bulk_everywhere(&cluster);
}
