//! Backups: `kvctl snapshot save FILE` and `kvctl snapshot status FILE`.
//!
//! `save` asks the leader for `GET /admin/snapshot`, which streams a snapshot of the state
//! machine taken after a linearizable read barrier: it holds every write acknowledged before
//! the request, at the log index the response names. The body goes to a temporary file next to
//! `FILE` as it arrives; once complete it is fsynced, checked from the start (every frame and
//! the checksum, see [`kvapi::snapshot::inspect`]), and only then renamed to `FILE` and the
//! directory fsynced. So `FILE` is either absent, or a complete and verified backup, whatever
//! happens on the way (a node dying mid-stream, a full disk, Ctrl-C).
//!
//! `status` reads a file the same way and reports what it holds.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvapi::ops::{REQUEST_ID_HEADER, SNAPSHOT_INDEX_HEADER};
use kvapi::snapshot::{inspect, Summary};
use kvapi::NodeId;
use serde::Serialize;

use crate::endpoint::base_url;
use crate::error::ClientError;
use crate::transport::{error_answer, new_request_id};
use crate::Client;

/// Why a snapshot could not be saved or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The cluster could not be asked (no leader, no quorum): see the client's error.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The leader refused or broke off the download; nothing was written to the file.
    #[error("the snapshot download from {address} failed: {reason}; {file} was not written")]
    Download {
        /// The node asked.
        address: String,
        /// What went wrong.
        reason: String,
        /// The file that was not written.
        file: PathBuf,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a sound snapshot.
    #[error("{path} is not a sound snapshot: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A saved snapshot: what it holds and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct Saved {
    /// What the file holds (read back from it).
    #[serde(flatten)]
    pub summary: Summary,
    /// The node that sent it.
    pub node: NodeId,
    /// Its address.
    pub address: String,
    /// How long the download took, in seconds.
    pub seconds: f64,
}

/// Describe and verify the snapshot file at `path`.
pub fn status(path: &Path) -> Result<Summary, SnapshotError> {
    let file = std::fs::File::open(path).map_err(|source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    inspect(file).map_err(|e| SnapshotError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Save a snapshot of the cluster's data to `path` (see the module documentation). The
/// client's timeout bounds finding the leader and waiting for the download to start, and
/// also any pause in the download.
pub async fn save(client: &Client, path: &Path) -> Result<Saved, SnapshotError> {
    let started = Instant::now();
    let leader = client.leader().await?;
    let patience = client.config().timeout;
    let temp = temp_path(path);
    let result = download(&leader.address, &temp, path, patience).await;
    let finished = result.and_then(|announced| {
        let summary = status(&temp)?;
        if announced.is_some() && announced != summary.index {
            return Err(SnapshotError::Invalid {
                path: temp.clone(),
                reason: format!(
                    "the node announced index {announced:?} but the file holds {:?}",
                    summary.index
                ),
            });
        }
        publish(&temp, path)?;
        Ok(summary)
    });
    match finished {
        Ok(summary) => Ok(Saved {
            summary,
            node: leader.id,
            address: leader.address,
            seconds: started.elapsed().as_secs_f64(),
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// `.NAME.part` next to `path`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    path.with_file_name(format!(".{name}.part"))
}

/// Stream the leader's snapshot into `temp` and fsync it; returns the index it announced.
async fn download(
    address: &str,
    temp: &Path,
    target: &Path,
    patience: Duration,
) -> Result<Option<u64>, SnapshotError> {
    let failed = |reason: String| SnapshotError::Download {
        address: address.to_string(),
        reason,
        file: target.to_path_buf(),
    };
    let io = |source: std::io::Error| SnapshotError::Io {
        path: temp.to_path_buf(),
        source,
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(1).min(patience))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let request_id = new_request_id();
    let request = http
        .get(format!("{}/admin/snapshot", base_url(address)))
        .header(REQUEST_ID_HEADER, &request_id)
        .send();
    let mut response = tokio::time::timeout(patience, request)
        .await
        .map_err(|_| failed(format!("no answer within {patience:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    tracing::debug!(%address, %request_id, status = response.status().as_u16(), "snapshot download started");
    let status = response.status().as_u16();
    if status != 200 {
        let body = response.bytes().await.unwrap_or_default();
        return Err(failed(format!(
            "{} (request id {request_id})",
            error_answer(status, &body, None).describe()
        )));
    }
    let announced = response
        .headers()
        .get(SNAPSHOT_INDEX_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut file = std::fs::File::create(temp).map_err(io)?;
    loop {
        let chunk = tokio::time::timeout(patience, response.chunk())
            .await
            .map_err(|_| failed(format!("the download stalled for {patience:?}")))?
            .map_err(|e| failed(format!("the stream broke off: {e} (request id {request_id})")))?;
        match chunk {
            Some(bytes) => file.write_all(&bytes).map_err(io)?,
            None => break,
        }
    }
    file.sync_all().map_err(io)?;
    Ok(announced)
}

/// Rename the verified `temp` to `path` and make the rename durable.
fn publish(temp: &Path, path: &Path) -> Result<(), SnapshotError> {
    let io = |source: std::io::Error| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::rename(temp, path).map_err(io)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temporary_file_is_hidden_next_to_the_target() {
        assert_eq!(
            temp_path(Path::new("/backups/kv.snap")),
            PathBuf::from("/backups/.kv.snap.part")
        );
        assert_eq!(temp_path(Path::new("kv.snap")), PathBuf::from(".kv.snap.part"));
    }

    #[test]
    fn a_file_that_is_not_a_snapshot_is_named_as_such() {
        let dir = std::env::temp_dir().join(format!("kvctl-snap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("junk.snap");
        std::fs::write(&path, b"not a snapshot at all").expect("write");
        let err = status(&path).expect_err("junk");
        assert!(err.to_string().contains("is not a sound snapshot"), "{err}");
        let err = status(&dir.join("missing.snap")).expect_err("missing");
        assert!(matches!(err, SnapshotError::Io { .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
