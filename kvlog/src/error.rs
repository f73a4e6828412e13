//! Why a log directory could not be opened.
//!
//! Opening is the one place where this crate returns its own error type: every variant names the
//! file involved and says what an operator should do. Once open, the store speaks
//! `std::io::Error`, as openraft's storage traits require; see [`LogStore`](crate::LogStore) for
//! what those errors mean.

use std::io;
use std::path::PathBuf;

/// Why [`LogStore::open`](crate::LogStore::open) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The options are unusable; fix the caller.
    #[error("invalid log store options: {0}")]
    InvalidOptions(String),

    /// A file-system call failed. Check permissions and free space, then retry.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "read segment".
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Another process (or another `LogStore` in this one) has the directory open. Stop it, or
    /// use another directory; two writers would corrupt the log.
    #[error("log directory {} is in use: {} is locked by another open log store", dir.display(), lock.display())]
    Locked {
        /// The log directory.
        dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },

    /// Data that was once written completely is damaged or inconsistent, so the log cannot be
    /// trusted. Nothing was changed on disk. Restore the directory from a backup, or wipe it
    /// and let the node rejoin its cluster from a snapshot.
    #[error("corrupt log data in {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damage in that file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// Segment files exist but the meta file that holds the vote does not. Starting without the
    /// vote could make this node vote twice in one term, so the store refuses. Restore the meta
    /// file, or wipe the directory and let the node rejoin.
    #[error("log directory {} has segment files but no meta file {}", dir.display(), meta.display())]
    MissingMeta {
        /// The log directory.
        dir: PathBuf,
        /// Where the meta file should be.
        meta: PathBuf,
    },

    /// The writer thread could not be started (usually a resource limit).
    #[error("cannot start the log writer thread: {0}")]
    Spawn(#[source] io::Error),
}

impl OpenError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> OpenError {
        OpenError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> OpenError {
        OpenError::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}
