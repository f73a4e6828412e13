//! `kvlog`: a durable, pipelined Raft log store for openraft 0.10.
//!
//! openraft 0.10 replicates the entries a leader has *submitted* to its log store, not only
//! those it has flushed, and counts the leader towards the quorum once its own flush completes.
//! A store whose `append` returns as soon as the entries are readable, and reports durability
//! later through the `IOFlushed` callback, therefore lets the leader's `fsync` overlap with
//! replication instead of delaying it. This crate is such a store:
//!
//! - `append` puts the entries in memory, queues them, and returns. One writer thread takes
//!   everything queued, writes it with one `pwrite` and one `fdatasync` (group commit), then
//!   fires the callbacks in submission order.
//! - Every write (append, truncate, purge, vote, committed hint) reaches the disk in the order
//!   it was called, as openraft's I/O-ordering rules require. `save_vote` returns only once the
//!   vote is durable.
//! - The log lives in zero-filled, append-only segment files of checksummed records; the vote
//!   and purge point live in a small meta file replaced atomically. Nothing is overwritten in
//!   place, so a crash can tear at most the last write, which recovery cuts off; any other
//!   damage makes [`LogStore::open`] refuse, naming the file and offset.
//!
//! The format is described in the `format` module, recovery rules in `recovery`, and the
//! writer's ordering in `writer`. A [`WriteObserver`] in the options sees each write group's
//! size and `fdatasync` time, for metrics. Usage:
//!
//! ```no_run
//! use std::path::Path;
//! use kvlog::{LogStore, LogStoreOptions, OpenError};
//!
//! fn open_log<C: openraft::RaftTypeConfig>(dir: &Path) -> Result<LogStore<C>, OpenError> {
//!     let store = LogStore::<C>::open(dir, LogStoreOptions::default())?;
//!     // Only a pristine store may form a new cluster (`Raft::initialize`).
//!     let _may_initialize = store.is_pristine();
//!     let _vote_at_open = store.recovered().vote.clone();
//!     Ok(store) // hand it to `openraft::Raft::new`
//! }
//! ```

mod error;
mod format;
mod hooks;
mod observer;
mod options;
mod recovery;
mod segment;
mod state;
mod store;
mod writer;

pub use error::OpenError;
pub use observer::{GroupWritten, WriteObserver};
pub use options::LogStoreOptions;
#[cfg(feature = "test-hooks")]
pub use store::WriteHold;
pub use store::{LogReader, LogStore, Recovered, TailRepair};
