//! Shared by the integration tests: a test type config whose entries carry JSON values and
//! tagged enums (like kvnode's will), a minimal in-memory state machine for openraft's
//! conformance suite, and helpers to build entries and append them.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Cursor};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use kvlog::{LogStore, LogStoreOptions};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::type_config::alias::{
    EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf,
};
use openraft::type_config::TypeConfigExt;
use openraft::vote::{RaftLeaderId, RaftLeaderIdExt, RaftVote};
use openraft::{EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, RaftTypeConfig};
use serde::{Deserialize, Serialize};

/// An adjacently tagged enum, as kvnode uses for its value shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
pub enum Shape {
    Scalar(serde_json::Value),
    Pair(String, u64),
    Nothing,
}

/// An internally tagged request with JSON payloads, like a kvnode write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Set {
        key: String,
        value: serde_json::Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
    },
    Append {
        key: String,
        value: serde_json::Value,
        shape: Shape,
    },
    Delete {
        key: String,
    },
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Request,
        R = serde_json::Value,
);

pub type C = TypeConfig;
pub type Entry = EntryOf<C>;
pub type Store = LogStore<C>;

/// Log id of term `term` (leader node 1) at `index`.
pub fn log_id(term: u64, index: u64) -> LogIdOf<C> {
    LogId {
        leader_id: <C as RaftTypeConfig>::LeaderId::new_committed(term, 1),
        index,
    }
}

/// A vote for node 1 in `term`.
pub fn vote(term: u64, committed: bool) -> VoteOf<C> {
    VoteOf::<C>::from_leader_id(<C as RaftTypeConfig>::LeaderId::new(term, 1), committed)
}

/// A normal entry whose payload is about `payload_bytes` of JSON.
pub fn entry(term: u64, index: u64, payload_bytes: usize) -> Entry {
    let text = "x".repeat(payload_bytes);
    let req = match index % 3 {
        0 => Request::Set {
            key: format!("k{index}"),
            value: serde_json::json!({ "n": index, "s": text, "nested": [1, "two", null, { "f": 1.5 }] }),
            idempotency_key: Some(format!("id-{index}")),
        },
        1 => Request::Append {
            key: format!("k{index}"),
            value: serde_json::Value::String(text),
            shape: match (index / 3) % 3 {
                0 => Shape::Pair("p".into(), index),
                1 => Shape::Scalar(serde_json::json!({ "deep": { "list": [true, -1, 2.5e10, "ü"] } })),
                _ => Shape::Nothing,
            },
        },
        _ => Request::Set {
            key: format!("k{index}"),
            value: serde_json::json!([text, index]),
            idempotency_key: None,
        },
    };
    Entry::new_normal(log_id(term, index), req)
}

/// `count` entries of `term` starting at `first`.
pub fn entries(term: u64, first: u64, count: u64) -> Vec<Entry> {
    (first..first + count).map(|i| entry(term, i, 20)).collect()
}

/// Opens a store with small segments, so tests cross segment boundaries.
pub fn open_small(dir: &Path) -> Store {
    Store::open(dir, small_options()).expect("open log store")
}

pub fn small_options() -> LogStoreOptions {
    LogStoreOptions::default()
        .with_segment_size(16 * 1024)
        .with_cache_bytes(2 * 1024)
}

/// Appends and waits for the flush callback.
pub async fn append(store: &mut Store, entries: Vec<Entry>) -> io::Result<()> {
    let (tx, rx) = C::oneshot();
    store.append(entries, IOFlushed::signal(tx)).await?;
    let flushed = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .map_err(|_| io::Error::other("flush callback did not fire within 20 s"))?;
    flushed.map_err(|_| io::Error::other("flush callback dropped"))?
}

/// All log ids in the store, read through a reader.
pub async fn all_ids(store: &mut Store) -> Vec<LogIdOf<C>> {
    let mut reader = store.get_log_reader().await;
    openraft::RaftLogReader::try_get_log_entries(&mut reader, ..)
        .await
        .expect("read log")
        .iter()
        .map(|e| e.log_id())
        .collect()
}

// ---- A minimal in-memory state machine, for openraft's conformance suite ----

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SmData {
    pub last_applied: Option<LogIdOf<C>>,
    pub last_membership: StoredMembershipOf<C>,
    pub kv: BTreeMap<String, serde_json::Value>,
}

/// The last snapshot built or installed: its meta and its bytes.
type StoredSnapshot = Option<(SnapshotMetaOf<C>, Vec<u8>)>;

#[derive(Default, Clone)]
pub struct MemStateMachine {
    data: Arc<Mutex<SmData>>,
    snapshot: Arc<Mutex<StoredSnapshot>>,
}

impl MemStateMachine {
    fn snapshot_now(&self) -> io::Result<SnapshotOf<C, Cursor<Vec<u8>>>> {
        let data = self.data.lock().expect("sm lock").clone();
        let bytes = serde_json::to_vec(&data).map_err(io::Error::other)?;
        let meta = SnapshotMetaOf::<C> {
            last_log_id: data.last_applied,
            last_membership: data.last_membership.clone(),
        };
        *self.snapshot.lock().expect("snapshot lock") = Some((meta.clone(), bytes.clone()));
        Ok(openraft::Snapshot {
            meta,
            snapshot: Cursor::new(bytes),
        })
    }
}

impl RaftSnapshotBuilder<C> for MemStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Self::SnapshotData>, io::Error> {
        self.snapshot_now()
    }
}

impl RaftStateMachine<C> for MemStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = MemStateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let d = self.data.lock().expect("sm lock");
        Ok((d.last_applied, d.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let mut d = self.data.lock().expect("sm lock");
            d.last_applied = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Blank => serde_json::Value::Null,
                EntryPayload::Normal(Request::Set { key, value, .. })
                | EntryPayload::Normal(Request::Append { key, value, .. }) => {
                    d.kv.insert(key.clone(), value.clone());
                    serde_json::Value::Bool(true)
                }
                EntryPayload::Normal(Request::Delete { key }) => {
                    d.kv.remove(key);
                    serde_json::Value::Bool(true)
                }
                EntryPayload::Membership(m) => {
                    d.last_membership = openraft::StoredMembership::new(Some(entry.log_id), m.clone());
                    serde_json::Value::Null
                }
            };
            drop(d);
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let bytes = snapshot.into_inner();
        let data: SmData = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
        *self.data.lock().expect("sm lock") = data;
        *self.snapshot.lock().expect("snapshot lock") = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Self::SnapshotData>>, io::Error> {
        Ok(self
            .snapshot
            .lock()
            .expect("snapshot lock")
            .clone()
            .map(|(meta, bytes)| openraft::Snapshot {
                meta,
                snapshot: Cursor::new(bytes),
            }))
    }
}
