//! A node's data directory: who it belongs to, the durable log, and the state machine.
//!
//! ```text
//! DATA_DIR/
//!   node.json      identity: node id, cluster id, whether the node has joined it
//!   log/           log entries, vote, purge point, commit hint (the `kvlog` crate)
//!   snapshots/     the latest snapshot of the state machine (see `snapshot`)
//! ```
//!
//! # Identity
//!
//! A directory belongs to one node id and, once the node is part of a cluster, to one cluster
//! id: an id made when the cluster formed, replicated with the membership (see `cluster`). The
//! member list is not part of it, so a node keeps its data when members come and go or when its
//! own addresses change. `node.json` holds three facts:
//!
//! - `node_id`, fixed when the directory is created;
//! - `cluster`, absent while the node waits to form or join a cluster, then the cluster's id;
//! - `joined`, false while the id is only *adopted* (a cluster is being formed with this node,
//!   see `cluster`), true once the node holds Raft state in that cluster.
//!
//! Directories written before cluster ids existed have `cluster` (a fingerprint of the member
//! list the cluster was formed from) and no `joined`: when they hold Raft state that
//! fingerprint *is* their cluster's id (every member of such a cluster recorded the same one,
//! and their peers still send it), otherwise they are treated as new. kvnode 0.1 directories
//! are first migrated (see `migrate`) and then read the same way.
//!
//! Opening refuses, with a message that names the problem, a directory that belongs to another
//! node, one that holds data but no identity, one whose identity says it joined a cluster but
//! whose log and snapshots are gone, and one whose files are damaged. A node must never start
//! empty on top of data it failed to read, or as a member that forgot what it promised: that
//! would let it vote and acknowledge as if it had never promised anything.

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The node's id.
    pub node_id: NodeId,
    /// The cluster's id, once the node knows it.
    pub cluster: Option<String>,
    /// True once the node holds Raft state in that cluster; false while the id is only
    /// adopted for a formation under way.
    pub joined: bool,
}

/// `node.json` as stored. `joined` is absent in directories written before cluster ids.
#[derive(Debug, Serialize, Deserialize)]
struct IdentityFile {
    node_id: NodeId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    joined: Option<bool>,
}

impl Identity {
    /// Write `node.json` in `dir` atomically.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let file = IdentityFile {
            node_id: self.node_id,
            cluster: self.cluster.clone(),
            joined: Some(self.joined),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        write_atomically(&dir.join(IDENTITY_FILE), &bytes)
    }
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
    #[error("data directory {path} belongs to another cluster ({found}) than the one this node was told to join ({expected}); give it a fresh data directory to join {expected}, or point --join at a node of {found}")]
    WrongCluster {
        /// The directory.
        path: PathBuf,
        /// The cluster id recorded there.
        found: String,
        /// The cluster id of the cluster this process was started to join.
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
    /// Who it belongs to (already normalised on disk).
    pub identity: Identity,
}

impl DataDir {
    /// Open (creating when absent) the data directory of node `node_id`.
    pub fn open(dir: &Path, node_id: NodeId) -> Result<DataDir, OpenError> {
        Self::open_observed(dir, node_id, None)
    }

    /// [`DataDir::open`], with `observer` told about the log's writes (for metrics).
    pub fn open_observed(
        dir: &Path,
        node_id: NodeId,
        observer: Option<std::sync::Arc<dyn kvlog::WriteObserver>>,
    ) -> Result<DataDir, OpenError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let id_path = dir.join(IDENTITY_FILE);
        let recorded: IdentityFile = match std::fs::read(&id_path) {
            Ok(bytes) => {
                let found: IdentityFile = serde_json::from_slice(&bytes).map_err(|e| OpenError::Corrupt {
                    path: id_path.clone(),
                    reason: format!("{IDENTITY_FILE} is not valid: {e}"),
                })?;
                if found.node_id != node_id {
                    return Err(OpenError::WrongNode {
                        path: dir.to_path_buf(),
                        found: found.node_id,
                        expected: node_id,
                    });
                }
                found
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
                let fresh = Identity {
                    node_id,
                    cluster: None,
                    joined: false,
                };
                fresh.save(dir).map_err(io(&id_path))?;
                IdentityFile {
                    node_id,
                    cluster: None,
                    joined: Some(false),
                }
            }
            Err(e) => return Err(io(&id_path)(e)),
        };

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
        let mut options = kvlog::LogStoreOptions::default()
            .with_cache_bytes(LOG_CACHE_BYTES)
            .with_segment_size(LOG_SEGMENT_BYTES);
        if let Some(observer) = observer {
            options = options.with_observer(observer);
        }
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
        let has_state = !log.is_pristine() || sm.has_snapshot();
        let identity = resolve(dir, recorded, has_state)?;
        identity.save(dir).map_err(io(&id_path))?;
        Ok(DataDir { log, sm, identity })
    }
}

/// What `node.json` means given whether the directory holds Raft state (see the module
/// documentation).
fn resolve(dir: &Path, recorded: IdentityFile, has_state: bool) -> Result<Identity, OpenError> {
    let node_id = recorded.node_id;
    match (recorded.joined, recorded.cluster) {
        // Written before cluster ids: the recorded fingerprint is the cluster's id.
        (None, Some(fingerprint)) if has_state => Ok(Identity {
            node_id,
            cluster: Some(fingerprint),
            joined: true,
        }),
        (None, _) => Ok(Identity {
            node_id,
            cluster: None,
            joined: false,
        }),
        (Some(true), Some(cluster)) if !has_state => Err(OpenError::Corrupt {
            path: dir.to_path_buf(),
            reason: format!(
                "{IDENTITY_FILE} says this node joined cluster {cluster}, but its log and snapshots \
                 are gone; a node that lost its data must not come back as if it had it (it could \
                 help elect a leader that lacks acknowledged writes): delete the whole directory \
                 and start the node again, and the cluster re-admits it as a learner that catches up"
            ),
        }),
        (Some(true), None) => Err(OpenError::Corrupt {
            path: dir.to_path_buf(),
            reason: format!("{IDENTITY_FILE} says this node joined a cluster but names none"),
        }),
        (Some(joined), cluster) => Ok(Identity {
            node_id,
            cluster,
            joined,
        }),
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
