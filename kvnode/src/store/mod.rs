//! A node's data directory: who it belongs to, the durable log, and the state machine.
//!
//! ```text
//! DATA_DIR/
//!   node.json      identity: node id and cluster fingerprint, written once
//!   log/           log entries, vote, purge point, commit hint (the `kvlog` crate)
//!   snapshots/     the latest snapshot of the state machine (see `snapshot`)
//! ```
//!
//! Opening refuses, with a message that names the problem, a directory that belongs to another
//! node or another cluster, one that holds data but no identity, and one whose files are
//! damaged. A node must never start empty on top of data it failed to read: that would let it
//! vote and acknowledge as if it had never promised anything. A directory written by kvnode
//! 0.1 (openraft 0.9) is migrated on the first start (see `migrate`).

pub mod migrate;
pub mod sm;
pub mod snapshot;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use sm::StateMachineStore;

use crate::types::{NodeId, TypeConfig};

/// The durable Raft log of a node: segment files with group commit (see the `kvlog` crate).
pub type LogStore = kvlog::LogStore<TypeConfig>;

const IDENTITY_FILE: &str = "node.json";
const LOG_DIR: &str = "log";
const SNAPSHOT_DIR: &str = "snapshots";
/// Recent entries kept in memory for replication; older ones are read back from disk. Small,
/// because a follower that is up to date needs only the last few batches.
const LOG_CACHE_BYTES: usize = 8 * 1024 * 1024;
/// Size of one log segment file. Segments are written full of zeros before use (that keeps
/// `fdatasync` from committing a size change on every write), so a new node writes this much at
/// once: 16 MiB is seconds of writes at full speed, and a cluster of test nodes stays light.
const LOG_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Who a data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The node's id.
    pub node_id: NodeId,
    /// Fingerprint of the cluster's membership (ids and peer addresses).
    pub cluster: String,
}

/// Why a data directory cannot be used. The message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory could not be created or read.
    #[error("data directory {path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// It belongs to a different node id.
    #[error("data directory {path} belongs to node {found}, not node {expected}; point --data-dir at node {expected}'s directory")]
    WrongNode {
        /// The directory.
        path: PathBuf,
        /// The id recorded there.
        found: NodeId,
        /// The id this process was started as.
        expected: NodeId,
    },
    /// It belongs to a different cluster.
    #[error("data directory {path} belongs to another cluster (fingerprint {found}, this cluster's is {expected}); use a fresh directory or the original cluster file")]
    WrongCluster {
        /// The directory.
        path: PathBuf,
        /// The fingerprint recorded there.
        found: String,
        /// The fingerprint of the cluster this process was started with.
        expected: String,
    },
    /// Something in it is damaged or missing.
    #[error("data directory {path} is corrupt: {reason}; refusing to start rather than lose data")]
    Corrupt {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// An opened data directory.
pub struct DataDir {
    /// The durable log.
    pub log: LogStore,
    /// The state machine.
    pub sm: StateMachineStore,
}

impl DataDir {
    /// Open (creating when absent) the data directory for `identity`.
    pub fn open(dir: &Path, identity: &Identity) -> Result<DataDir, OpenError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let id_path = dir.join(IDENTITY_FILE);
        match std::fs::read(&id_path) {
            Ok(bytes) => {
                let found: Identity = serde_json::from_slice(&bytes).map_err(|e| OpenError::Corrupt {
                    path: id_path.clone(),
                    reason: format!("{IDENTITY_FILE} is not valid: {e}"),
                })?;
                if found.node_id != identity.node_id {
                    return Err(OpenError::WrongNode {
                        path: dir.to_path_buf(),
                        found: found.node_id,
                        expected: identity.node_id,
                    });
                }
                if found.cluster != identity.cluster {
                    return Err(OpenError::WrongCluster {
                        path: dir.to_path_buf(),
                        found: found.cluster,
                        expected: identity.cluster.clone(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                for file in [LOG_DIR, SNAPSHOT_DIR, migrate::OLD_DB] {
                    if dir.join(file).exists() {
                        return Err(OpenError::Corrupt {
                            path: dir.to_path_buf(),
                            reason: format!("it holds {file} but no {IDENTITY_FILE}"),
                        });
                    }
                }
                let bytes = serde_json::to_vec_pretty(identity).map_err(|e| OpenError::Corrupt {
                    path: id_path.clone(),
                    reason: e.to_string(),
                })?;
                write_atomically(&id_path, &bytes).map_err(io(&id_path))?;
            }
            Err(e) => return Err(io(&id_path)(e)),
        }

        let log_dir = dir.join(LOG_DIR);
        let snapshot_dir = dir.join(SNAPSHOT_DIR);
        match migrate::migrate_if_needed(dir, &log_dir, &snapshot_dir) {
            Ok(None) => {}
            Ok(Some(m)) => tracing::warn!(
                entries = m.entries,
                snapshot_keys = m.snapshot_keys,
                "migrated a data directory written by kvnode 0.1 (openraft 0.9) to the current format; \
                 the old files are kept as *.0.9-migrated and can be removed once the cluster runs"
            ),
            Err(reason) => {
                return Err(OpenError::Corrupt {
                    path: dir.join(migrate::OLD_DB),
                    reason: format!(
                        "it was written by kvnode 0.1 and could not be migrated: {reason}; \
                         start this node with an empty data directory to have it rebuilt from the others"
                    ),
                })
            }
        }
        let options = kvlog::LogStoreOptions::default()
            .with_cache_bytes(LOG_CACHE_BYTES)
            .with_segment_size(LOG_SEGMENT_BYTES);
        let log = LogStore::open(&log_dir, options).map_err(|e| match e {
            kvlog::OpenError::Io { path, source, .. } => OpenError::Io { path, source },
            kvlog::OpenError::Locked { dir, .. } => OpenError::Io {
                path: dir,
                source: std::io::Error::other(
                    "it is in use by another process (is this node already running?)",
                ),
            },
            other => OpenError::Corrupt {
                path: log_dir.clone(),
                reason: other.to_string(),
            },
        })?;
        let sm = StateMachineStore::open(&snapshot_dir).map_err(|e| match e {
            snapshot::SnapshotError::Io { path, source } => OpenError::Io { path, source },
            corrupt => OpenError::Corrupt {
                path: dir.join(SNAPSHOT_DIR),
                reason: corrupt.to_string(),
            },
        })?;
        Ok(DataDir { log, sm })
    }
}

/// Replace `path` with `bytes` so that a crash leaves the old or the new content, never a mix:
/// write a temporary file, fsync it, rename it over `path`, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(match path.extension() {
        Some(ext) => format!("{}.tmp", ext.to_string_lossy()),
        None => "tmp".to_string(),
    });
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}
