//! openraft's own conformance suite for log stores, run against `kvlog::LogStore`, once with
//! the default options and once with tiny segments and no cache, so that reads come from disk
//! and appends cross segment boundaries.

mod common;

use common::{MemStateMachine, Store, C};
use kvlog::LogStoreOptions;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError};
use tempfile::TempDir;

struct Builder {
    options: LogStoreOptions,
}

impl StoreBuilder<C, Store, MemStateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, Store, MemStateMachine), StorageError<C>> {
        let io = |e: std::io::Error| StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e);
        let dir = tempfile::tempdir().map_err(io)?;
        let store =
            Store::open(dir.path(), self.options.clone()).map_err(|e| io(std::io::Error::other(e)))?;
        Ok((dir, store, MemStateMachine::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_with_default_options() -> Result<(), StorageError<C>> {
    Suite::test_all(Builder {
        options: LogStoreOptions::default(),
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_with_tiny_segments_and_no_cache() -> Result<(), StorageError<C>> {
    let options = LogStoreOptions::default()
        .with_segment_size(LogStoreOptions::MIN_SEGMENT_SIZE)
        .with_cache_bytes(0);
    Suite::test_all(Builder { options }).await
}
