//! The state machine as openraft sees it: the in-memory [`KvState`], the last applied log id
//! and membership, and snapshots on disk.
//!
//! The map lives in memory; durability comes from the log plus snapshots (see `snapshot` for
//! the file format). The rules that keep a crash at any step harmless:
//!
//! - A snapshot is built from a frozen clone of the state (constant time, the maps are
//!   persistent), taken under the lock together with the applied log id so the two match. The
//!   file is written on a blocking thread while writes go on, and `build_snapshot` returns only
//!   once it is durable and published: openraft purges the log right after.
//! - A snapshot received from the leader is already a durable temporary file when it reaches
//!   [`install_snapshot`](RaftStateMachine::install_snapshot), which checks it, publishes it and
//!   only then replaces the in-memory state and returns; the log is purged after that.
//! - Publishing never replaces a newer snapshot, and concurrent builds and installs write to
//!   different temporary files.
//!
//! Entries are applied one at a time under a short write lock; readers take the read lock for
//! the duration of one lookup.

use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures_util::TryStreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};

use crate::state::KvState;
use crate::store::snapshot::{self, SnapshotDir, SnapshotError, SnapshotFile};
use crate::types::{BatchResult, LogId, SnapshotMeta, StoredMembership, TypeConfig};

/// A snapshot as openraft passes it around.
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// What has been applied: the data plus the Raft bookkeeping that must move with it.
#[derive(Debug, Default, Clone)]
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
    snapshots: SnapshotDir,
}

/// The state machine store; clones share state.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

/// Statistics of one snapshot written by this node, for logs and metrics.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotStats {
    /// Keys in it.
    pub keys: usize,
    /// Size of the file in bytes.
    pub bytes: u64,
}

impl StateMachineStore {
    /// Open the state machine whose snapshots live in `dir`, loading the newest snapshot.
    ///
    /// A damaged newest snapshot is an error, not a reason to fall back to an older one: the
    /// log may already be purged past the older one, and starting from it would leave a hole.
    pub fn open(dir: &Path) -> Result<Self, SnapshotError> {
        let snapshots = SnapshotDir::open(dir)?;
        let mut applied = Applied::default();
        if let Some((_, path)) = snapshots.list()?.pop() {
            let (meta, kv) = snapshot::read(&path)?;
            applied = Applied {
                last_applied: meta.last_log_id,
                membership: meta.last_membership,
                kv,
            };
        }
        Ok(StateMachineStore {
            shared: Arc::new(Shared {
                applied: RwLock::new(applied),
                snapshots,
            }),
        })
    }

    /// Read access to what has been applied. Do not hold it across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.shared.applied.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.shared.applied.write().unwrap_or_else(|p| p.into_inner())
    }

    /// True when a snapshot has been published in this data directory. Doubt (an unreadable
    /// directory) counts as yes: the answer decides whether the node may vote or form a
    /// cluster, and doubt must never lead to that.
    pub fn has_snapshot(&self) -> bool {
        self.shared.snapshots.any().unwrap_or(true)
    }

    /// A fresh temporary path for receiving a snapshot from the leader.
    pub fn receive_path(&self) -> std::path::PathBuf {
        self.shared.snapshots.temp_path()
    }

    fn current(&self) -> Result<Option<Snapshot>, SnapshotError> {
        let Some((meta, path)) = self.shared.snapshots.list()?.pop() else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: SnapshotFile::open(&path)?,
        }))
    }

    /// Write and publish a snapshot of the current state; returns it with statistics.
    pub async fn snapshot_now(&self) -> Result<(Snapshot, SnapshotStats), std::io::Error> {
        let (meta, frozen) = {
            let a = self.read();
            let meta = SnapshotMeta {
                last_log_id: a.last_applied,
                last_membership: a.membership.clone(),
            };
            (meta, a.kv.clone())
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let temp = this.shared.snapshots.temp_path();
            let bytes = snapshot::write(&temp, &meta, &frozen)?;
            let stats = SnapshotStats {
                keys: frozen.len(),
                bytes,
            };
            drop(frozen);
            if this.shared.snapshots.publish(&meta, &temp)?.is_none() {
                // A newer snapshot (installed meanwhile) is already durable: hand that one back,
                // which covers at least as much of the log as ours would have.
                tracing::info!("a newer snapshot was published while this one was written; keeping it");
            }
            let current = this.current()?.ok_or_else(|| {
                std::io::Error::other("the snapshot directory is empty right after publishing")
            })?;
            Ok((current, stats))
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        let started = std::time::Instant::now();
        let (snapshot, stats) = self.snapshot_now().await?;
        tracing::info!(
            index = snapshot.meta.last_log_id.map(|l| l.index),
            keys = stats.keys,
            bytes = stats.bytes,
            ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), std::io::Error> {
        let a = self.read();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), std::io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let result = {
                let mut applied = self.write();
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => BatchResult::default(),
                    EntryPayload::Normal(batch) => applied.kv.apply_batch(entry.log_id.index, &batch),
                    EntryPayload::Membership(m) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), m);
                        BatchResult::default()
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), std::io::Error> {
        let started = std::time::Instant::now();
        let this = self.clone();
        let meta = meta.clone();
        let (kv, published) = tokio::task::spawn_blocking(move || {
            let SnapshotFile { path, file, .. } = snapshot;
            let (found, kv) = snapshot::read_from(file, &path)?;
            if found != meta {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("snapshot {path:?} holds {found:?}, not the announced {meta:?}"),
                ));
            }
            let published = this.shared.snapshots.publish(&meta, &path)?;
            Ok::<_, std::io::Error>((kv, (meta, published)))
        })
        .await
        .map_err(std::io::Error::other)??;
        let (meta, published) = published;
        let keys = kv.len();
        {
            let mut applied = self.write();
            applied.kv = kv;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
        }
        tracing::info!(
            index = meta.last_log_id.map(|l| l.index),
            keys,
            kept = published.is_some(),
            ms = started.elapsed().as_millis() as u64,
            "snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.current().map_err(std::io::Error::from))
            .await
            .map_err(std::io::Error::other)?
    }
}
