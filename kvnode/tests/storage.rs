//! Storage tier: openraft's conformance suite on the real stores, and what survives a reopen.

use std::io::Cursor;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, Vote};
use serde_json::json;

use kvnode::store::{DataDir, Identity, LogStore, OpenError, StateMachineStore};
use kvnode::types::{Batch, Command, Entry, Op, StorageError, TypeConfig};

fn identity() -> Identity {
    Identity {
        node_id: 0,
        cluster: "test".into(),
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = DataDir::open(dir.path(), &identity()).expect("open data dir");
        Ok((dir, data.log, data.sm))
    }
}

#[test]
fn openraft_storage_conformance_suite() {
    Suite::test_all(Builder).expect("the stores satisfy openraft's storage contract");
}

fn entry(term: u64, index: u64, key: &str, value: serde_json::Value) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 0), index),
        payload: EntryPayload::Normal(Batch {
            ts_ms: 1,
            ops: vec![Op {
                key: key.into(),
                cmd: Command::Append(value),
                idem: Some(format!("id-{index}")),
            }],
        }),
    }
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
        let mut data = DataDir::open(dir.path(), &identity()).expect("open");
        let entries: Vec<Entry> = (1..=10).map(|i| entry(1, i, "k", json!(i))).collect();
        data.log.blocking_append(entries).await.expect("append");
        data.log.save_vote(&Vote::new(3, 1)).await.expect("vote");
        data.log
            .purge(LogId::new(CommittedLeaderId::new(1, 0), 4))
            .await
            .expect("purge");
        data.log
            .truncate(LogId::new(CommittedLeaderId::new(1, 0), 9))
            .await
            .expect("truncate");
    });
    rt().block_on(async {
        let mut data = DataDir::open(dir.path(), &identity()).expect("reopen");
        assert_eq!(data.log.read_vote().await.expect("vote"), Some(Vote::new(3, 1)));
        let state = data.log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(4));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(8));
        let got = data.log.try_get_log_entries(0..100).await.expect("read");
        let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, vec![5, 6, 7, 8]);
    });
}

#[test]
fn state_machine_restores_from_its_snapshot_and_ignores_a_torn_temporary_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let applied_id = rt().block_on(async {
        let mut data = DataDir::open(dir.path(), &identity()).expect("open");
        let entries: Vec<Entry> = (1..=5).map(|i| entry(1, i, "k", json!(i))).collect();
        data.sm.apply(entries).await.expect("apply");
        let snap = data.sm.build_snapshot().await.expect("snapshot");
        snap.meta.last_log_id
    });
    // A crash in the middle of writing the next snapshot leaves only a temporary file.
    std::fs::write(dir.path().join("snapshot.bin.tmp"), b"KVSNAP1\n{\"trunc").expect("write");
    rt().block_on(async {
        let mut data = DataDir::open(dir.path(), &identity()).expect("reopen");
        let (applied, _) = data.sm.applied_state().await.expect("state");
        assert_eq!(applied, applied_id);
        assert_eq!(data.sm.read().kv.get("k"), Some(&json!([1, 2, 3, 4, 5])));
        // The idempotency table came back too: a replay of entry 3 changes nothing.
        data.sm
            .apply(vec![entry(1, 6, "k", json!(6))])
            .await
            .expect("apply");
        assert_eq!(data.sm.read().kv.get("k"), Some(&json!([1, 2, 3, 4, 5, 6])));
        let again = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), 7),
            ..entry(1, 3, "k", json!(3))
        };
        data.sm.apply(vec![again]).await.expect("apply");
        assert_eq!(data.sm.read().kv.get("k"), Some(&json!([1, 2, 3, 4, 5, 6])));
        // Installing a received snapshot replaces the state.
        let snap = data.sm.build_snapshot().await.expect("snapshot");
        let bytes = snap.snapshot.into_inner();
        let mut fresh = DataDir::open(&dir.path().join("other"), &identity()).expect("open other");
        fresh
            .sm
            .install_snapshot(&snap.meta, Box::new(Cursor::new(bytes)))
            .await
            .expect("install");
        assert_eq!(fresh.sm.read().kv.get("k"), Some(&json!([1, 2, 3, 4, 5, 6])));
    });
    assert!(
        !dir.path().join("snapshot.bin.tmp").exists(),
        "leftover temporary file removed"
    );
}

#[test]
fn a_damaged_snapshot_or_identity_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tmp");
    rt().block_on(async {
        let mut data = DataDir::open(dir.path(), &identity()).expect("open");
        data.sm
            .apply(vec![entry(1, 1, "k", json!(1))])
            .await
            .expect("apply");
        data.sm.build_snapshot().await.expect("snapshot");
    });
    let snap = dir.path().join("snapshot.bin");
    let bytes = std::fs::read(&snap).expect("read");
    // Torn: a truncated payload.
    std::fs::write(&snap, &bytes[..bytes.len() - 3]).expect("write");
    match DataDir::open(dir.path(), &identity()) {
        Err(OpenError::Corrupt { reason, .. }) => assert!(reason.contains("payload bytes"), "{reason}"),
        other => panic!("expected a corrupt snapshot error, got {:?}", other.err()),
    }
    // Flipped bit in the payload.
    let mut flipped = bytes.clone();
    let last = flipped.len() - 2;
    flipped[last] ^= 0x01;
    std::fs::write(&snap, &flipped).expect("write");
    match DataDir::open(dir.path(), &identity()) {
        Err(OpenError::Corrupt { reason, .. }) => assert!(reason.contains("checksum"), "{reason}"),
        other => panic!("expected a checksum error, got {:?}", other.err()),
    }
    std::fs::write(&snap, &bytes).expect("restore");
    assert!(DataDir::open(dir.path(), &identity()).is_ok());

    // Data without an identity file is refused rather than adopted.
    std::fs::remove_file(dir.path().join("node.json")).expect("rm");
    match DataDir::open(dir.path(), &identity()) {
        Err(OpenError::Corrupt { reason, .. }) => assert!(reason.contains("no node.json"), "{reason}"),
        other => panic!("expected refusal, got {:?}", other.err()),
    }
}
