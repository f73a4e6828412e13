//! The durable Raft log and vote, in a redb database.
//!
//! Raft's safety rests on three promises this module keeps: an appended entry is on disk before
//! openraft is told so (the `LogFlushed` callback fires only after a durable commit), a vote is
//! on disk before `save_vote` returns, and a purge records `last_purged` in the same transaction
//! that deletes the entries, so a crash can never leave a hole between the two.
//!
//! Entries are stored as JSON under their index. Writes run on the blocking pool because a
//! durable redb commit waits for fsync; reads are short and run inline.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{Entry, LogId, TypeConfig, Vote};

pub(crate) const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_PURGED: &str = "last_purged";
const KEY_COMMITTED: &str = "committed";

/// Sentinel for "no index" in the shared commit-index cell.
const NONE: u64 = u64::MAX;

/// The log store. Cloning is cheap and clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    committed: Arc<AtomicU64>,
}

fn to_bytes<T: Serialize>(v: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(v)
}

fn from_bytes<T: DeserializeOwned>(b: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(b)
}

impl LogStore {
    /// Wrap an open database; creates the tables when missing.
    pub fn new(db: Arc<Database>) -> Result<Self, redb::Error> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.open_table(LOGS)?;
        txn.open_table(META)?;
        txn.commit()?;
        let store = LogStore {
            db,
            committed: Arc::new(AtomicU64::new(NONE)),
        };
        let committed: Option<LogId> = store.read_meta(KEY_COMMITTED).map_err(redb::Error::from)?;
        if let Some(c) = committed {
            store.committed.store(c.index, Ordering::Relaxed);
        }
        Ok(store)
    }

    /// Highest index openraft reported as committed, if any.
    pub fn committed_index(&self) -> Option<u64> {
        match self.committed.load(Ordering::Relaxed) {
            NONE => None,
            i => Some(i),
        }
    }

    /// True when nothing was ever written: no vote, no entries, nothing purged. A storage error
    /// counts as "something was written": the caller uses this to decide whether it may form a
    /// new cluster, and doubt must never lead to that.
    pub fn is_pristine(&self) -> bool {
        let check = || -> Result<bool, MetaError> {
            let vote: Option<Vote> = self.read_meta(KEY_VOTE)?;
            let purged: Option<LogId> = self.read_meta(KEY_PURGED)?;
            let txn = self.db.begin_read()?;
            let empty = txn.open_table(LOGS)?.is_empty()?;
            Ok(vote.is_none() && purged.is_none() && empty)
        };
        check().unwrap_or(false)
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, MetaError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META)?;
        match table.get(key)? {
            Some(v) => Ok(Some(from_bytes(v.value())?)),
            None => Ok(None),
        }
    }

    /// Run a write transaction with the given durability on the blocking pool.
    async fn write<F>(&self, durability: Durability, f: F) -> Result<(), MetaError>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), MetaError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write()?;
            txn.set_durability(durability)?;
            f(&txn)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| MetaError::Join(e.to_string()))?
    }
}

/// Internal error of the log store, turned into openraft's `StorageError` at the boundary.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MetaError {
    #[error(transparent)]
    Db(#[from] redb::Error),
    #[error("stored record is not valid: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("storage task failed: {0}")]
    Join(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for MetaError {
            fn from(e: $t) -> Self { MetaError::Db(e.into()) }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<MetaError> for redb::Error {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Db(e) => e,
            other => redb::Error::Corrupted(other.to_string()),
        }
    }
}

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        let read = || -> Result<Vec<Entry>, MetaError> {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(LOGS)?;
            let mut out = Vec::new();
            for item in table.range(range)? {
                let (_, v) = item?;
                out.push(from_bytes(v.value())?);
            }
            Ok(out)
        };
        read().map_err(io)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        self.read_meta(KEY_VOTE).map_err(io)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, std::io::Error> {
        let state = || -> Result<LogState<TypeConfig>, MetaError> {
            let last_purged_log_id: Option<LogId> = self.read_meta(KEY_PURGED)?;
            let txn = self.db.begin_read()?;
            let table = txn.open_table(LOGS)?;
            let last = match table.last()? {
                Some((_, v)) => Some(from_bytes::<Entry>(v.value())?.log_id),
                None => last_purged_log_id,
            };
            Ok(LogState {
                last_purged_log_id,
                last_log_id: last,
            })
        };
        state().map_err(io)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        let bytes = to_bytes(vote).map_err(io)?;
        self.write(Durability::Immediate, move |txn| {
            txn.open_table(META)?.insert(KEY_VOTE, bytes.as_slice())?;
            Ok(())
        })
        .await
        .map_err(io)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        if let Some(c) = committed {
            self.committed.store(c.index, Ordering::Relaxed);
        }
        let bytes = to_bytes(&committed).map_err(io)?;
        // Losing this hint in a crash is harmless (it only speeds up re-applying after a
        // restart), so it rides along with the next durable commit instead of forcing a sync.
        self.write(Durability::None, move |txn| {
            txn.open_table(META)?.insert(KEY_COMMITTED, bytes.as_slice())?;
            Ok(())
        })
        .await
        .map_err(io)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        self.read_meta(KEY_COMMITTED)
            .map(|c: Option<Option<LogId>>| c.flatten())
            .map_err(io)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for e in entries {
            rows.push((e.log_id.index, to_bytes(&e).map_err(io)?));
        }
        let result = self
            .write(Durability::Immediate, move |txn| {
                let mut table = txn.open_table(LOGS)?;
                for (index, bytes) in &rows {
                    table.insert(*index, bytes.as_slice())?;
                }
                Ok(())
            })
            .await;
        // The commit above was durable, so the entries are on disk when the callback fires.
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io(&e)));
                Err(io(e))
            }
        }
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), std::io::Error> {
        let from = last.map_or(0, |l| l.index + 1);
        self.write(Durability::Immediate, move |txn| {
            let mut table = txn.open_table(LOGS)?;
            table.retain_in(from.., |_, _| false)?;
            Ok(())
        })
        .await
        .map_err(io)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        let bytes = to_bytes(&log_id).map_err(io)?;
        self.write(Durability::Immediate, move |txn| {
            let mut table = txn.open_table(LOGS)?;
            table.retain_in(..=log_id.index, |_, _| false)?;
            txn.open_table(META)?.insert(KEY_PURGED, bytes.as_slice())?;
            Ok(())
        })
        .await
        .map_err(io)
    }
}
