//! The state machine as openraft sees it: the in-memory [`KvState`], the last applied log id
//! and membership, and snapshots on disk.
//!
//! The map lives in memory; durability comes from the log plus snapshots. A snapshot is one
//! file, `snapshot.bin`: a header line with the snapshot's metadata, the payload length and its
//! CRC-32, then the payload (the serialized [`KvState`]). It is written to a temporary file,
//! fsynced, renamed over the old one and the directory fsynced, so a crash leaves either the old
//! snapshot or the new one, never a torn file. `build_snapshot` serializes under the same lock
//! that `apply` takes, so data and applied log id always match, and returns only once the file
//! is durable: openraft may purge the log right after.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};

use crate::state::KvState;
use crate::types::{BatchResult, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const SNAPSHOT_FILE: &str = "snapshot.bin";
const SNAPSHOT_MAGIC: &[u8] = b"KVSNAP1\n";

/// What has been applied: the data plus the Raft bookkeeping that must move with it.
#[derive(Debug, Default)]
pub struct Applied {
    /// Last log id applied.
    pub last_applied: Option<LogId>,
    /// Last membership applied.
    pub membership: StoredMembership,
    /// The data.
    pub kv: KvState,
}

struct Shared {
    applied: RwLock<Applied>,
    dir: PathBuf,
    snapshot_seq: AtomicU64,
}

/// The state machine store; clones share state.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    meta: SnapshotMeta,
    len: u64,
    crc32: u32,
}

/// Why a snapshot file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// Reading failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is damaged.
    #[error("snapshot file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl StateMachineStore {
    /// Open the state machine in `dir`, loading the snapshot if there is one.
    pub fn open(dir: &Path) -> Result<Self, SnapshotFileError> {
        let _ = std::fs::remove_file(dir.join(format!("{SNAPSHOT_FILE}.tmp")));
        let mut applied = Applied::default();
        if let Some((meta, data)) = read_snapshot_file(dir)? {
            applied.kv = serde_json::from_slice(&data).map_err(|e| SnapshotFileError::Corrupt {
                path: dir.join(SNAPSHOT_FILE),
                reason: e.to_string(),
            })?;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership;
        }
        Ok(StateMachineStore {
            shared: Arc::new(Shared {
                applied: RwLock::new(applied),
                dir: dir.to_path_buf(),
                snapshot_seq: AtomicU64::new(0),
            }),
        })
    }

    /// Read access to what has been applied. Do not hold it across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.shared.applied.read().unwrap_or_else(|p| p.into_inner())
    }

    /// True when a snapshot file exists.
    pub fn has_snapshot(&self) -> bool {
        self.shared.dir.join(SNAPSHOT_FILE).exists()
    }

    async fn persist(&self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<Vec<u8>, StorageError> {
        let dir = self.shared.dir.clone();
        let header = SnapshotHeader {
            meta: meta.clone(),
            len: data.len() as u64,
            crc32: crc32fast::hash(&data),
        };
        let sig = meta.signature();
        tokio::task::spawn_blocking(move || write_snapshot_file(&dir, &header, &data).map(|()| data))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(sig.clone()), &e))?
            .map_err(|e| StorageIOError::write_snapshot(Some(sig), &e).into())
    }
}

fn write_snapshot_file(dir: &Path, header: &SnapshotHeader, data: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(data.len() + 512);
    buf.extend_from_slice(SNAPSHOT_MAGIC);
    serde_json::to_writer(&mut buf, header)?;
    buf.push(b'\n');
    buf.extend_from_slice(data);
    crate::store::write_atomically(&dir.join(SNAPSHOT_FILE), &buf)
}

fn read_snapshot_file(dir: &Path) -> Result<Option<(SnapshotMeta, Vec<u8>)>, SnapshotFileError> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SnapshotFileError::Io { path, source }),
    };
    let corrupt = |reason: &str| SnapshotFileError::Corrupt {
        path: path.clone(),
        reason: reason.to_string(),
    };
    let rest = bytes
        .strip_prefix(SNAPSHOT_MAGIC)
        .ok_or_else(|| corrupt("it does not start with the snapshot marker"))?;
    let nl = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt("its header is incomplete"))?;
    let header: SnapshotHeader =
        serde_json::from_slice(&rest[..nl]).map_err(|e| corrupt(&format!("its header is not valid: {e}")))?;
    let data = &rest[nl + 1..];
    if data.len() as u64 != header.len {
        return Err(corrupt(&format!(
            "it holds {} payload bytes where the header says {}",
            data.len(),
            header.len
        )));
    }
    if crc32fast::hash(data) != header.crc32 {
        return Err(corrupt("its checksum does not match"));
    }
    Ok(Some((header.meta, data.to_vec())))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = {
            let applied = self.read();
            let data = serde_json::to_vec(&applied.kv).map_err(|e| StorageIOError::read_state_machine(&e))?;
            let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
            let snapshot_id = match applied.last_applied {
                Some(l) => format!("{}-{}-{}-{seq}", l.leader_id.term, l.leader_id.node_id, l.index),
                None => format!("none-{seq}"),
            };
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
                snapshot_id,
            };
            (meta, data)
        };
        let data = self.persist(&meta, data).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let a = self.read();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.shared.applied.write().unwrap_or_else(|p| p.into_inner());
        let mut replies = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => replies.push(BatchResult::default()),
                EntryPayload::Normal(batch) => {
                    replies.push(applied.kv.apply_batch(entry.log_id.index, &batch));
                }
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), m);
                    replies.push(BatchResult::default());
                }
            }
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let kv: KvState = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.persist(meta, data).await?;
        let mut applied = self.shared.applied.write().unwrap_or_else(|p| p.into_inner());
        applied.kv = kv;
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let dir = self.shared.dir.clone();
        let loaded = tokio::task::spawn_blocking(move || read_snapshot_file(&dir))
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(loaded.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
