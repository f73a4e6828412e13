//! `kvnode restore`: the data directory of one node of a *new* cluster that starts with the
//! keys and values of a backup, as `etcdctl snapshot restore` does.
//!
//! A backup (`kvctl snapshot save`, i.e. `GET /admin/snapshot`) is a snapshot of the state
//! machine at some log index `I` of the old cluster, with the old cluster's membership inside.
//! Restoring it as it is would not work: the new nodes have other addresses, and the old log
//! ids carry terms of a history the new cluster never had. So restore rewrites the snapshot's
//! Raft bookkeeping and keeps its data:
//!
//! - The data (keys, values, versions, the exactly-once table and the log clock) is kept as it
//!   is. A client retrying a write across the restore is still answered from the table.
//! - The log id becomes `(term 0, lowest member id, I)`: the same index, so that "everything up
//!   to the backup's index" keeps its meaning, and the smallest term, so that the new cluster's
//!   first election (term 1) produces entries that order after it.
//! - The membership becomes the members of the new cluster file, all voters, recorded at that
//!   same log id.
//!
//! Every node of the new cluster is restored from the same file with the same cluster file, so
//! they agree on all of it. Each starts with an empty log whose start is the snapshot (openraft
//! purges up to it at startup) and with a membership, so no node tries to form a cluster
//! (`cluster::form` sees Raft state) and the first election runs among the new members.
//!
//! - The cluster id is new (see [`restored_cluster_id`]), so that a node of the old cluster
//!   can never talk to, or be mistaken for, a node of the new one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use openraft::storage::RaftStateMachine;

use kvapi::ClusterFile;

use crate::config::NodeConfig;
use crate::store::snapshot::{self, SnapshotError, SnapshotFile};
use crate::store::{DataDir, Identity, OpenError};
use crate::types::{LogId, LogIndex, NodeId, NodeInfo, SnapshotMeta, StoredMembership};

/// Why a data directory could not be restored. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target directory already holds something.
    #[error(
        "data directory {0} is not empty: restore builds a new node's directory; give a new or empty one"
    )]
    NotEmpty(PathBuf),
    /// The snapshot file cannot be read or is damaged.
    #[error("cannot restore from {path}: {source}")]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: SnapshotError,
    },
    /// The snapshot holds no applied entry at all.
    #[error(
        "the snapshot {0} was taken before its cluster had applied anything; there is nothing to restore"
    )]
    Empty(PathBuf),
    /// The cluster file does not describe a valid membership.
    #[error("the cluster file does not make a valid membership: {0}")]
    Membership(String),
    /// The new data directory could not be created.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Writing the snapshot into the new directory failed.
    #[error("cannot write the restored snapshot into {path}: {source}")]
    Write {
        /// The data directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What a restore produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The log index the data reflects (the backup's).
    pub index: LogIndex,
    /// Keys restored.
    pub keys: usize,
    /// Members of the new cluster.
    pub members: Vec<NodeId>,
    /// The new cluster's id.
    pub cluster: String,
}

/// The id of the cluster restored from a backup. Every node of the new cluster is restored
/// separately and must end up with the same id, so it is derived from what they share: the
/// backup's last log id and key count and the new cluster file's members and addresses. It
/// differs from the old cluster's id (which was random), and restoring the same backup onto
/// other addresses gives another cluster.
pub fn restored_cluster_id(backup: &LogId, keys: usize, file: &ClusterFile) -> String {
    use sha2::Digest;
    let mut text = format!(
        "restore term={} leader={} index={} keys={keys}",
        backup.leader_id.term, backup.leader_id.node_id, backup.index
    );
    for n in &file.node {
        text.push_str(&format!(" {}={},{}", n.id, n.http, n.raft));
    }
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Build, in `config.data_dir`, node `config.id`'s data directory of the new cluster described
/// by `file`, holding the data of the snapshot file `backup`.
pub async fn restore(
    backup: &Path,
    file: &ClusterFile,
    config: &NodeConfig,
) -> Result<Restored, RestoreError> {
    let dir = config.data_dir.clone();
    if std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(RestoreError::NotEmpty(dir));
    }
    let path = backup.to_path_buf();
    let (old, kv) = tokio::task::spawn_blocking(move || snapshot::read(&path))
        .await
        .map_err(|e| RestoreError::Write {
            path: dir.clone(),
            source: std::io::Error::other(e),
        })?
        .map_err(|source| RestoreError::Snapshot {
            path: backup.to_path_buf(),
            source,
        })?;
    let old_log_id = old
        .last_log_id
        .ok_or_else(|| RestoreError::Empty(backup.to_path_buf()))?;
    let index = old_log_id.index;
    let keys = kv.len();
    let cluster = restored_cluster_id(&old_log_id, keys, file);
    let meta = new_cluster_meta(index, &cluster, file)?;
    let members: Vec<NodeId> = file.node.iter().map(|n| n.id).collect();

    let (open_dir, id) = (dir.clone(), config.id);
    let data = tokio::task::spawn_blocking(move || DataDir::open(&open_dir, id))
        .await
        .map_err(|e| RestoreError::Write {
            path: dir.clone(),
            source: std::io::Error::other(e),
        })??;
    let write_error = |source: std::io::Error| RestoreError::Write {
        path: dir.clone(),
        source,
    };
    let temp = data.sm.receive_path();
    let (write_meta, write_temp) = (meta.clone(), temp.clone());
    tokio::task::spawn_blocking(move || snapshot::write(&write_temp, &write_meta, &kv))
        .await
        .map_err(|e| write_error(std::io::Error::other(e)))?
        .map_err(|e| write_error(e.into()))?;
    let file = SnapshotFile::open(&temp).map_err(|e| write_error(e.into()))?;
    let mut sm = data.sm.clone();
    sm.install_snapshot(&meta, file).await.map_err(write_error)?;
    let identity = Identity {
        node_id: config.id,
        cluster: Some(cluster.clone()),
        joined: true,
    };
    identity.save(&dir).map_err(write_error)?;
    let DataDir { log, .. } = data;
    tokio::task::spawn_blocking(move || drop(log))
        .await
        .map_err(|e| write_error(std::io::Error::other(e)))?;
    Ok(Restored {
        index,
        keys,
        members,
        cluster,
    })
}

/// The snapshot metadata of the new cluster: the backup's index at term 0, and the new
/// members, all voters (see the module documentation).
fn new_cluster_meta(
    index: LogIndex,
    cluster: &str,
    file: &ClusterFile,
) -> Result<SnapshotMeta, RestoreError> {
    let lowest = file
        .node
        .iter()
        .map(|n| n.id)
        .min()
        .ok_or_else(|| RestoreError::Membership("it lists no node".into()))?;
    let log_id = LogId::new(
        openraft::impls::leader_id_adv::LeaderId {
            term: 0,
            node_id: lowest,
        },
        index,
    );
    let voters: BTreeSet<NodeId> = file.node.iter().map(|n| n.id).collect();
    let nodes: BTreeMap<NodeId, NodeInfo> = file
        .node
        .iter()
        .map(|n| {
            (
                n.id,
                NodeInfo {
                    http: n.http.clone(),
                    raft: n.raft.clone(),
                    cluster: cluster.to_string(),
                    promote: false,
                },
            )
        })
        .collect();
    let membership = openraft::Membership::new(vec![voters], nodes)
        .map_err(|e| RestoreError::Membership(e.to_string()))?;
    Ok(SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterFile {
        ClusterFile::from_nodes(
            (0..3)
                .map(|i| kvapi::NodeAddr {
                    id: i + 4,
                    http: format!("127.0.0.1:{}", 9000 + i),
                    raft: format!("127.0.0.1:{}", 9100 + i),
                })
                .collect(),
        )
        .expect("valid")
    }

    #[test]
    fn the_new_meta_keeps_the_index_and_names_the_new_members() {
        let meta = new_cluster_meta(1234, "c0ffee", &cluster()).expect("meta");
        let log_id = meta.last_log_id.expect("log id");
        assert_eq!(
            (log_id.index, log_id.leader_id.term, log_id.leader_id.node_id),
            (1234, 0, 4)
        );
        let voters: Vec<NodeId> = meta.last_membership.voter_ids().collect();
        assert_eq!(voters, vec![4, 5, 6]);
        assert_eq!(meta.last_membership.log_id(), &Some(log_id));
        assert!(meta
            .last_membership
            .membership()
            .nodes()
            .all(|(_, n)| n.cluster == "c0ffee"));
    }

    #[tokio::test]
    async fn restoring_refuses_a_used_directory_and_a_damaged_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = cluster();
        let mut config = NodeConfig::from_cluster_file(&file, 4).expect("config");
        config.data_dir = dir.path().join("node4");
        std::fs::create_dir_all(config.data_dir.join("log")).expect("mkdir");
        let err = restore(&dir.path().join("none.snap"), &file, &config)
            .await
            .expect_err("not empty");
        assert!(matches!(err, RestoreError::NotEmpty(_)), "{err}");

        config.data_dir = dir.path().join("fresh");
        let bad = dir.path().join("bad.snap");
        std::fs::write(&bad, b"KVSNAP2\nnot really").expect("write");
        let err = restore(&bad, &file, &config).await.expect_err("damaged");
        assert!(err.to_string().contains("cannot restore from"), "{err}");
        assert!(!config.data_dir.exists(), "nothing is created for a bad backup");
    }
}
