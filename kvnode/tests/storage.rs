//! Storage tier: openraft's conformance suite on the real stores, and what survives a reopen.

use openraft::impls::leader_id_adv::LeaderId;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder, StorageError};
use serde_json::json;

use kvnode::store::{DataDir, LogStore, OpenError, StateMachineStore};
use kvnode::types::{Batch, Command, Entry, IdemKey, LogId, Op, TypeConfig, Vote};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = DataDir::open(dir.path(), 0).expect("open data dir");
        Ok((dir, data.log, data.sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_conformance_suite() {
    Suite::test_all(Builder)
        .await
        .expect("the stores satisfy openraft's storage contract");
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id: 0 }, index)
}

const T0: u64 = 1_700_000_000_000;

/// The idempotency key of the write at `index` (a UUIDv7 made at `T0`).
fn idem(index: u64) -> IdemKey {
    IdemKey((u128::from(T0) << 80) | (7u128 << 76) | u128::from(index))
}

fn entry(term: u64, index: u64, key: &str, value: serde_json::Value) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Batch {
            ts_ms: T0,
            ops: vec![Op {
                key: key.into(),
                cmd: Command::Append(value),
                idem: Some(idem(index)),
                cond: None,
            }],
        }),
    }
}

async fn apply(sm: &mut StateMachineStore, entries: Vec<Entry>) {
    let stream = futures_util::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream).await.expect("apply");
}

fn value(sm: &StateMachineStore, key: &str) -> Option<serde_json::Value> {
    sm.read().kv.get(key).map(|s| s.value.clone())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn log_vote_and_purge_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tmp");
    rt().block_on(async {
        let mut data = DataDir::open(dir.path(), 0).expect("open");
        let entries: Vec<Entry> = (1..=10).map(|i| entry(1, i, "k", json!(i))).collect();
        data.log.blocking_append(entries).await.expect("append");
        data.log.save_vote(&Vote::new(3, 1)).await.expect("vote");
        data.log.purge(log_id(1, 4)).await.expect("purge");
        data.log
            .truncate_after(Some(log_id(1, 8)))
            .await
            .expect("truncate");
    });
    rt().block_on(async {
        let mut data = DataDir::open(dir.path(), 0).expect("reopen");
        assert_eq!(
            data.log.reader().read_vote().await.expect("vote"),
            Some(Vote::new(3, 1))
        );
        let state = data.log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(4));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(8));
        let got = data.log.reader().try_get_log_entries(0..100).await.expect("read");
        let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, vec![5, 6, 7, 8]);
    });
}

#[test]
fn state_machine_restores_from_its_snapshot_and_ignores_a_torn_temporary_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let applied_id = rt().block_on(async {
        let mut data = DataDir::open(dir.path(), 0).expect("open");
        apply(
            &mut data.sm,
            (1..=5).map(|i| entry(1, i, "k", json!(i))).collect(),
        )
        .await;
        let snap = data.sm.build_snapshot().await.expect("snapshot");
        snap.meta.last_log_id
    });
    // A crash in the middle of writing the next snapshot leaves only a temporary file.
    let torn = dir.path().join("snapshots").join("tmp-1-0.part");
    std::fs::write(&torn, b"KVSNAP2\n\x05\x00").expect("write");
    rt().block_on(async {
        let mut data = DataDir::open(dir.path(), 0).expect("reopen");
        let (applied, _) = data.sm.applied_state().await.expect("state");
        assert_eq!(applied, applied_id);
        assert_eq!(value(&data.sm, "k"), Some(json!([1, 2, 3, 4, 5])));
        // The idempotency table came back too: a replay of entry 3 changes nothing.
        apply(&mut data.sm, vec![entry(1, 6, "k", json!(6))]).await;
        assert_eq!(value(&data.sm, "k"), Some(json!([1, 2, 3, 4, 5, 6])));
        let again = Entry {
            log_id: log_id(1, 7),
            ..entry(1, 3, "k", json!(3))
        };
        apply(&mut data.sm, vec![again]).await;
        assert_eq!(value(&data.sm, "k"), Some(json!([1, 2, 3, 4, 5, 6])));
        // Installing a received snapshot replaces the state.
        let snap = data.sm.build_snapshot().await.expect("snapshot");
        let mut fresh = DataDir::open(&dir.path().join("other"), 0).expect("open other");
        let received = fresh.sm.receive_path();
        std::fs::copy(&snap.snapshot.path, &received).expect("copy");
        let file = kvnode::store::snapshot::SnapshotFile::open(&received).expect("open");
        fresh
            .sm
            .install_snapshot(&snap.meta, file)
            .await
            .expect("install");
        assert_eq!(value(&fresh.sm, "k"), Some(json!([1, 2, 3, 4, 5, 6])));
        assert!(
            !received.exists(),
            "the received file was published under its final name"
        );
        let current = fresh.sm.get_current_snapshot().await.expect("read").expect("one");
        assert_eq!(current.meta, snap.meta);
    });
    assert!(!torn.exists(), "leftover temporary file removed");
}

#[test]
fn a_damaged_snapshot_or_identity_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let snap = rt().block_on(async {
        let mut data = DataDir::open(dir.path(), 0).expect("open");
        apply(&mut data.sm, vec![entry(1, 1, "k", json!(1))]).await;
        data.sm.build_snapshot().await.expect("snapshot").snapshot.path
    });
    let bytes = std::fs::read(&snap).expect("read");
    // Torn: a truncated file.
    std::fs::write(&snap, &bytes[..bytes.len() - 3]).expect("write");
    match DataDir::open(dir.path(), 0) {
        Err(OpenError::Corrupt { reason, .. }) => assert!(reason.contains("ends"), "{reason}"),
        other => panic!("expected a corrupt snapshot error, got {:?}", other.err()),
    }
    // Flipped bit in the payload.
    let mut flipped = bytes.clone();
    let last = flipped.len() - 6;
    flipped[last] ^= 0x01;
    std::fs::write(&snap, &flipped).expect("write");
    match DataDir::open(dir.path(), 0) {
        Err(OpenError::Corrupt { reason, .. }) => assert!(reason.contains("checksum"), "{reason}"),
        other => panic!("expected a checksum error, got {:?}", other.err()),
    }
    std::fs::write(&snap, &bytes).expect("restore");
    assert!(DataDir::open(dir.path(), 0).is_ok());

    // Data without an identity file is refused rather than adopted.
    std::fs::remove_file(dir.path().join("node.json")).expect("rm");
    match DataDir::open(dir.path(), 0) {
        Err(OpenError::Corrupt { reason, .. }) => assert!(reason.contains("no node.json"), "{reason}"),
        other => panic!("expected refusal, got {:?}", other.err()),
    }
}

/// A data directory written by kvnode 0.1 (openraft 0.9, redb log, JSON snapshot): a node of a
/// 3-node cluster that took 30 APPENDs over keys k0..k6, two PUTs and a DELETE of k0 (log up to
/// index 34, snapshot at 19), then stopped. It is migrated when opened, and the state rebuilt
/// from the migrated snapshot and log is what the old node had.
#[test]
fn a_data_directory_written_by_kvnode_0_1_is_migrated_when_opened() {
    let dir = tempfile::tempdir().expect("tmp");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/data-dir-0.1.tar.gz");
    let status = std::process::Command::new("tar")
        .args(["xzf", fixture, "-C"])
        .arg(dir.path())
        .status()
        .expect("tar runs");
    assert!(status.success());
    let data_dir = dir.path().join("data0");
    let file = kvapi::ClusterFile::load(&dir.path().join("cluster.toml")).expect("cluster file");
    let config = kvnode::NodeConfig::from_cluster_file(&file, 0).expect("config");
    rt().block_on(async {
        let mut data = DataDir::open(&data_dir, 0).expect("the 0.1 directory opens");
        // Its cluster is named by the fingerprint of the member list it was formed from, as
        // the other members of that cluster name it.
        assert_eq!(
            data.identity.cluster.as_deref(),
            Some(config.seed_fingerprint.as_str())
        );
        assert!(data.identity.joined);
        assert!(
            data_dir.join("raft.redb.0.9-migrated").exists(),
            "the old files are kept aside"
        );
        assert!(!data_dir.join("raft.redb").exists());
        let (applied, _) = data.sm.applied_state().await.expect("state");
        assert_eq!(
            applied.map(|l| l.index),
            Some(19),
            "the snapshot was carried over"
        );
        assert!(data.log.reader().read_vote().await.expect("vote").is_some());
        let state = data.log.get_log_state().await.expect("log state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(34));
        let rest = data
            .log
            .reader()
            .try_get_log_entries(20..35)
            .await
            .expect("entries");
        assert_eq!(rest.len(), 15);
        apply(&mut data.sm, rest).await;
        let expected = |j: u64| json!((1..=30).filter(|i| i % 7 == j).collect::<Vec<u64>>());
        assert_eq!(value(&data.sm, "k0"), None, "deleted after the snapshot");
        for j in 1..7 {
            assert_eq!(value(&data.sm, &format!("k{j}")), Some(expected(j)), "k{j}");
        }
        assert_eq!(value(&data.sm, "name"), Some(json!("Kyle Chard")));
        assert_eq!(
            value(&data.sm, "obj"),
            Some(json!({"a": [1, 2.5, null, true], "b": "é"}))
        );
    });
    // Opening again finds the new format and migrates nothing.
    rt().block_on(async {
        let mut data = DataDir::open(&data_dir, 0).expect("reopens");
        assert_eq!(
            data.identity.cluster.as_deref(),
            Some(config.seed_fingerprint.as_str()),
            "rewritten in the new format, same cluster"
        );
        let state = data.log.get_log_state().await.expect("log state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(34));
    });
}

/// `node.json` written before cluster ids (`{"node_id", "cluster": <fingerprint>}`): with Raft
/// state the fingerprint is the cluster's id; without, the directory is new. A directory that
/// says it joined a cluster but lost its log is refused rather than treated as new.
#[test]
fn identities_old_and_new_are_read_by_what_the_directory_holds() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path();
    // Fresh: no cluster yet.
    let data = DataDir::open(path, 0).expect("open");
    assert_eq!(
        (data.identity.cluster.clone(), data.identity.joined),
        (None, false)
    );
    drop(data);
    // An old-format identity without state is new as well.
    std::fs::write(
        path.join("node.json"),
        r#"{"node_id":0,"cluster":"0123456789abcdef"}"#,
    )
    .expect("write");
    let data = DataDir::open(path, 0).expect("open");
    assert_eq!(
        (data.identity.cluster.clone(), data.identity.joined),
        (None, false)
    );
    // With state, the old fingerprint names the cluster.
    rt().block_on(async {
        let mut data = data;
        data.log.save_vote(&Vote::new(1, 0)).await.expect("vote");
    });
    std::fs::write(
        path.join("node.json"),
        r#"{"node_id":0,"cluster":"0123456789abcdef"}"#,
    )
    .expect("write");
    let data = DataDir::open(path, 0).expect("open");
    assert_eq!(
        (data.identity.cluster.as_deref(), data.identity.joined),
        (Some("0123456789abcdef"), true)
    );
    drop(data);
    let stored = std::fs::read_to_string(path.join("node.json")).expect("read");
    assert!(stored.contains(r#""joined": true"#), "{stored}");

    // Joined, then the log is lost while node.json stays: refused.
    std::fs::remove_dir_all(path.join("log")).expect("rm log");
    match DataDir::open(path, 0) {
        Err(OpenError::Corrupt { reason, .. }) => {
            assert!(reason.contains("log and snapshots are gone"), "{reason}")
        }
        other => panic!("expected refusal, got {:?}", other.err()),
    }
    // Another node id: refused.
    match DataDir::open(path, 3) {
        Err(OpenError::WrongNode {
            found: 0,
            expected: 3,
            ..
        }) => {}
        other => panic!("expected refusal, got {:?}", other.err()),
    }
}
