//! Opening a data directory written by kvnode 0.1 (openraft 0.9): its log, vote and snapshot
//! are carried over into today's format, so an upgraded cluster starts with everything it had.
//!
//! kvnode 0.1 kept its log and vote in a redb database (`raft.redb`, entries as JSON) and its
//! snapshot in `snapshot.bin` (a JSON header line and a JSON payload). Peers of the two versions
//! cannot talk to each other (the peer protocol changed), so an upgrade stops every node,
//! starts each on the new version, and each migrates its own directory on its first start:
//!
//! 1. Anything a previous, interrupted migration left in `log/` and `snapshots/` is removed.
//! 2. The snapshot becomes a snapshot of the new format; keys get versions as if created at
//!    the snapshot's index.
//! 3. The vote, the purge point, every entry and the commit hint are written to a new log.
//! 4. Only then is `raft.redb` renamed to `raft.redb.0.9-migrated` (and `snapshot.bin` beside
//!    it): that rename is the point of no return, and a crash before it repeats the migration.
//!
//! What is not carried over: the idempotency table. 0.1 used opaque keys that cannot tell a
//! late retry from a new write; a retry of a write made before the upgrade is applied again.
//! Upgrade while no client is retrying.

use std::collections::BTreeMap;
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::EntryPayload;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::{KvState, LogClock, StateMeta, Stored};
use crate::store::snapshot::{self, SnapshotDir};
use crate::types::{Batch, Command, Entry, LogId, NodeId, NodeInfo, Op, SnapshotMeta, Vote};

/// The 0.1 database file.
pub const OLD_DB: &str = "raft.redb";
const OLD_SNAPSHOT: &str = "snapshot.bin";
const OLD_MAGIC: &[u8] = b"KVSNAP1\n";
const MIGRATED_SUFFIX: &str = "0.9-migrated";

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// A 0.1 log entry's payload. openraft's entry type asks for the traits of application data;
/// only deserializing is used.
#[derive(Debug, Serialize, Deserialize)]
struct OldBatch {
    ts_ms: u64,
    ops: Vec<OldOp>,
}

impl std::fmt::Display for OldBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0.1 batch of {} ops", self.ops.len())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct OldOp {
    key: String,
    cmd: OldCommand,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", content = "value", rename_all = "snake_case")]
enum OldCommand {
    Put(Value),
    Append(Value),
    Delete,
}

type OldEntry = openraft::Entry<
    openraft::impls::leader_id_adv::LeaderId<u64, NodeId>,
    EntryPayload<OldBatch, NodeId, NodeInfo>,
>;

#[derive(Deserialize)]
struct OldSnapshotHeader {
    meta: SnapshotMeta,
    len: u64,
    crc32: u32,
}

#[derive(Deserialize)]
struct OldState {
    data: BTreeMap<String, Value>,
    clock_ms: u64,
}

/// What a migration carried over, for the log line that announces it.
#[derive(Debug, Clone, Copy)]
pub struct Migrated {
    /// Entries copied into the new log.
    pub entries: usize,
    /// Keys in the carried-over snapshot.
    pub snapshot_keys: usize,
}

fn bad(what: impl std::fmt::Display) -> String {
    what.to_string()
}

/// Migrate `dir` when it holds a 0.1 database; `Ok(None)` when there is nothing to migrate.
pub fn migrate_if_needed(
    dir: &Path,
    log_dir: &Path,
    snapshot_dir: &Path,
) -> Result<Option<Migrated>, String> {
    let db_path = dir.join(OLD_DB);
    if !db_path.exists() {
        return Ok(None);
    }
    for partial in [log_dir, snapshot_dir] {
        if partial.exists() {
            std::fs::remove_dir_all(partial)
                .map_err(|e| format!("cannot clear {}: {e}", partial.display()))?;
        }
    }
    let db = redb::Database::open(&db_path).map_err(|e| format!("cannot open {}: {e}", db_path.display()))?;
    let txn = db.begin_read().map_err(bad)?;
    let meta = txn.open_table(META).map_err(bad)?;
    let read_meta = |key: &str| -> Result<Option<Vec<u8>>, String> {
        Ok(meta.get(key).map_err(bad)?.map(|v| v.value().to_vec()))
    };
    let vote: Option<Vote> = match read_meta("vote")? {
        Some(b) => Some(serde_json::from_slice(&b).map_err(|e| format!("the old vote: {e}"))?),
        None => None,
    };
    let purged: Option<LogId> = match read_meta("last_purged")? {
        Some(b) => Some(serde_json::from_slice(&b).map_err(|e| format!("the old purge point: {e}"))?),
        None => None,
    };
    let committed: Option<LogId> = match read_meta("committed")? {
        Some(b) => {
            serde_json::from_slice::<Option<LogId>>(&b).map_err(|e| format!("the old commit hint: {e}"))?
        }
        None => None,
    };
    let mut entries = Vec::new();
    for row in txn.open_table(LOGS).map_err(bad)?.iter().map_err(bad)? {
        let (index, bytes) = row.map_err(bad)?;
        let old: OldEntry = serde_json::from_slice(bytes.value())
            .map_err(|e| format!("old log entry {}: {e}", index.value()))?;
        entries.push(convert_entry(old));
    }
    drop(txn);
    drop(db);

    let snapshot_keys = migrate_snapshot(dir, snapshot_dir)?;
    let count = entries.len();
    write_log(log_dir, vote, purged, committed, entries)?;

    // The point of no return: from here on the directory is in the new format.
    let retire = |name: &str| -> Result<(), String> {
        let from = dir.join(name);
        if from.exists() {
            let to = dir.join(format!("{name}.{MIGRATED_SUFFIX}"));
            std::fs::rename(&from, &to).map_err(|e| format!("cannot rename {}: {e}", from.display()))?;
        }
        Ok(())
    };
    retire(OLD_SNAPSHOT)?;
    retire(OLD_DB)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
    Ok(Some(Migrated {
        entries: count,
        snapshot_keys,
    }))
}

fn convert_entry(old: OldEntry) -> Entry {
    let payload = match old.payload {
        EntryPayload::Blank => EntryPayload::Blank,
        EntryPayload::Membership(m) => EntryPayload::Membership(m),
        EntryPayload::Normal(batch) => EntryPayload::Normal(Batch {
            ts_ms: batch.ts_ms,
            ops: batch
                .ops
                .into_iter()
                .map(|op| Op {
                    key: op.key,
                    cmd: match op.cmd {
                        OldCommand::Put(v) => Command::Put(v),
                        OldCommand::Append(v) => Command::Append(v),
                        OldCommand::Delete => Command::Delete,
                    },
                    idem: None,
                    cond: None,
                })
                .collect(),
        }),
    };
    Entry {
        log_id: old.log_id,
        payload,
    }
}

/// Turn `snapshot.bin` into a snapshot of the new format; returns its key count.
fn migrate_snapshot(dir: &Path, snapshot_dir: &Path) -> Result<usize, String> {
    let path = dir.join(OLD_SNAPSHOT);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let corrupt = |why: &str| format!("{} is corrupt: {why}", path.display());
    let rest = bytes
        .strip_prefix(OLD_MAGIC)
        .ok_or_else(|| corrupt("no snapshot marker"))?;
    let nl = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt("no header"))?;
    let header: OldSnapshotHeader =
        serde_json::from_slice(&rest[..nl]).map_err(|e| corrupt(&format!("header: {e}")))?;
    let payload = &rest[nl + 1..];
    if payload.len() as u64 != header.len || crc32fast::hash(payload) != header.crc32 {
        return Err(corrupt("its length or checksum does not match"));
    }
    let old: OldState = serde_json::from_slice(payload).map_err(|e| corrupt(&format!("payload: {e}")))?;
    let index = header.meta.last_log_id.map_or(0, |l| l.index);
    let keys = old.data.len();
    let state = KvState::from_parts(
        old.data.into_iter().map(|(k, value)| {
            (
                k,
                Stored {
                    value,
                    create_index: index,
                    mod_index: index,
                    version: 1,
                },
            )
        }),
        Vec::new(),
        StateMeta {
            clock: LogClock {
                now_ms: 0,
                last_stamp_ms: old.clock_ms,
            },
            horizon_ms: 0,
        },
    );
    let snapshots = SnapshotDir::open(snapshot_dir).map_err(bad)?;
    let temp = snapshots.temp_path();
    snapshot::write(&temp, &header.meta, &state).map_err(bad)?;
    snapshots.publish(&header.meta, &temp).map_err(bad)?;
    Ok(keys)
}

fn write_log(
    log_dir: &Path,
    vote: Option<Vote>,
    purged: Option<LogId>,
    committed: Option<LogId>,
    entries: Vec<Entry>,
) -> Result<(), String> {
    // The store's own writer thread does the work; any executor can wait for it, and this one
    // also runs where a tokio runtime is already entered (the node opens its directory on a
    // blocking thread of its runtime).
    futures_executor::block_on(async {
        let mut log = crate::store::LogStore::open(log_dir, Default::default()).map_err(bad)?;
        if let Some(v) = vote {
            log.save_vote(&v).await.map_err(bad)?;
        }
        if let Some(p) = purged {
            log.purge(p).await.map_err(bad)?;
        }
        for chunk in entries.chunks(1024) {
            log.blocking_append(chunk.to_vec()).await.map_err(bad)?;
        }
        if committed.is_some() {
            log.save_committed(committed).await.map_err(bad)?;
        }
        log.close().map_err(bad)
    })
}
