//! An optional window into the writer thread, for metrics.
//!
//! The costs an operator wants to watch in a log store happen on its writer thread: how long
//! each `fdatasync` takes and how many entries each write group carries (the fruit of group
//! commit). Only that thread knows them, so the store reports them through a
//! [`WriteObserver`] given in [`LogStoreOptions`](crate::LogStoreOptions). The crate stays
//! free of any metrics library: the caller decides what to do with the numbers.
//!
//! The observer runs on the writer thread, between a group's `fdatasync` and the callbacks
//! that tell openraft the entries are durable, so it must return quickly (update an atomic or
//! a histogram; never block or do I/O).

use std::fmt::Debug;
use std::time::Duration;

/// One write group made durable: what it carried and what its two system calls cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupWritten {
    /// Log entries in the group (the appends of every `append` call gathered into it).
    pub entries: usize,
    /// Records in the group: entries plus truncation markers and committed hints.
    pub records: usize,
    /// Bytes written, record framing included.
    pub bytes: usize,
    /// Time spent in the `pwrite` of the group.
    pub write: Duration,
    /// Time spent in its `fdatasync`.
    pub sync: Duration,
}

/// Receives what the writer thread does. Every method is called on the writer thread and
/// must return quickly; the default methods ignore the event.
pub trait WriteObserver: Send + Sync + Debug {
    /// A write group is on disk (written and `fdatasync`ed).
    fn group_written(&self, group: &GroupWritten);

    /// The meta file (vote, purge point) was replaced durably, which took `elapsed`
    /// (write, `fsync`, rename, directory `fsync`).
    fn meta_written(&self, elapsed: Duration) {
        let _ = elapsed;
    }

    /// A write failed: the store is poisoned and refuses every later write (see
    /// [`LogStore`](crate::LogStore)). `why` names the file and the error.
    fn failed(&self, why: &str) {
        let _ = why;
    }
}
