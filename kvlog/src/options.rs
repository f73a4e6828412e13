//! Tuning knobs of a [`LogStore`](crate::LogStore).
//!
//! The defaults suit a kvnode: segments large enough that rolling to a new one (an extra
//! `fsync` plus a file creation) is rare, and a cache that holds the recent entries which
//! replication to a slightly lagging follower rereads.

use std::sync::Arc;

use crate::observer::WriteObserver;

/// Options for [`LogStore::open`](crate::LogStore::open).
///
/// Start from [`LogStoreOptions::default`] and change fields as needed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LogStoreOptions {
    /// Size in bytes of each segment file, allocated when it is created. A write group that does not fit in
    /// what is left of the current segment starts a new one; a single group larger than this
    /// gets a segment of its own that grows past this size. Default 64 MiB; at least 4 KiB.
    pub segment_size: u64,
    /// How many bytes of encoded entries that are already on disk stay in memory so reads need
    /// no disk access. Entries not yet on disk are always in memory, on top of this budget.
    /// Default 32 MiB; 0 keeps only unflushed entries.
    pub cache_bytes: usize,
    /// Write zeros over each new segment when it is created, instead of only allocating its
    /// space. Costs `segment_size` bytes of writes per segment (done ahead of time on a helper
    /// thread, except for a segment created while opening), and makes every later `fdatasync`
    /// cheaper, most of all for larger write groups; see `logbench`. Default true.
    pub zero_fill_segments: bool,
    /// Told about every write group and meta file the writer thread makes durable, and about
    /// a failed write (see [`WriteObserver`]). Default none.
    pub observer: Option<Arc<dyn WriteObserver>>,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        LogStoreOptions {
            segment_size: 64 * 1024 * 1024,
            cache_bytes: 32 * 1024 * 1024,
            zero_fill_segments: true,
            observer: None,
        }
    }
}

impl LogStoreOptions {
    /// The smallest accepted [`segment_size`](Self::segment_size).
    pub const MIN_SEGMENT_SIZE: u64 = 4096;

    /// These options with [`segment_size`](Self::segment_size) set to `bytes`.
    pub fn with_segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// These options with [`zero_fill_segments`](Self::zero_fill_segments) set to `zero_fill`.
    pub fn with_zero_fill_segments(mut self, zero_fill: bool) -> Self {
        self.zero_fill_segments = zero_fill;
        self
    }

    /// These options with [`cache_bytes`](Self::cache_bytes) set to `bytes`.
    pub fn with_cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// These options with `observer` told about the writer thread's work.
    pub fn with_observer(mut self, observer: Arc<dyn WriteObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Why these options cannot be used, if they cannot.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.segment_size < Self::MIN_SEGMENT_SIZE {
            return Err(format!(
                "segment_size {} is below the minimum of {} bytes",
                self.segment_size,
                Self::MIN_SEGMENT_SIZE
            ));
        }
        Ok(())
    }
}
