//! The public store: [`LogStore`] (openraft's `RaftLogStorage`) and [`LogReader`]
//! (`RaftLogReader`).
//!
//! A write method updates the in-memory state (so every reader sees it at once), encodes what
//! has to go to disk, and queues it for the writer thread, all under one lock so the queue order
//! is the order of the calls. `append` returns right there; its callback fires from the writer
//! thread once the entries are durable. `save_vote` waits for the writer, because openraft needs
//! the vote on disk before it answers a vote request. `truncate_after`, `purge` and
//! `save_committed` return once queued: their effects on disk follow in order, before any
//! later append can be reported durable.
//!
//! Errors are `std::io::Error`, as openraft's traits require. After a write fails the store is
//! poisoned: the failed append's callback gets the error (openraft then stops with a fatal
//! storage error) and every later write returns one. Restarting the process and reopening the
//! directory is the way back; recovery cuts off whatever the failed write left half done.

use std::fmt;
use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::type_config::alias::{LogIdOf, VoteOf};
use openraft::{OptionalSend, RaftLogReader, RaftTypeConfig};
use tokio::sync::oneshot;

use crate::error::OpenError;
use crate::format::{to_payload, MAX_PAYLOAD};
use crate::hooks::Hooks;
use crate::options::LogStoreOptions;
use crate::recovery::{open_dir, Meta};
use crate::state::{Inner, Shared};
use crate::writer::{Active, Op, Writer};

/// A durable Raft log and vote in one directory, for openraft 0.10.
///
/// Open it with [`LogStore::open`] and hand it to `openraft::Raft::new`. One directory can be
/// open in one store at a time (a lock file enforces it). Dropping the store, or calling
/// [`close`](Self::close), finishes the queued writes and stops the writer thread; both block
/// for as long as that takes (normally one `fdatasync`).
///
/// Reads of entries that are no longer cached use plain blocking `pread` calls on the calling
/// task; they are short, and usually served by the page cache.
///
/// The openraft traits are implemented for type configs whose `Entry` is `Clone` (openraft's
/// own `Entry` is), because cached entries are handed out as copies.
pub struct LogStore<C: RaftTypeConfig> {
    shared: Arc<Shared<C>>,
    tx: Option<Sender<Op<C>>>,
    writer: Option<JoinHandle<()>>,
    recovered: Recovered<C>,
    /// Held for its lock; released when the store is dropped.
    _lock: File,
}

/// A handle for reading the log; cheap to get, and it sees every entry appended later too.
pub struct LogReader<C: RaftTypeConfig> {
    shared: Arc<Shared<C>>,
}

impl<C: RaftTypeConfig> Clone for LogReader<C> {
    fn clone(&self) -> Self {
        LogReader {
            shared: self.shared.clone(),
        }
    }
}

/// What [`LogStore::open`] found in the directory.
pub struct Recovered<C: RaftTypeConfig> {
    /// The saved vote.
    pub vote: Option<VoteOf<C>>,
    /// The last log id: of the last entry, or the last purged one if no entry is left.
    pub last_log_id: Option<LogIdOf<C>>,
    /// The last purged log id.
    pub purged: Option<LogIdOf<C>>,
    /// The saved committed hint (it may lag behind the real commit point after a crash).
    pub committed: Option<LogIdOf<C>>,
    /// Number of live entries.
    pub entries: u64,
    /// Number of segment files in use.
    pub segments: usize,
    /// Set when the end of the log held a torn write that was cut off.
    pub tail_repair: Option<TailRepair>,
}

impl<C: RaftTypeConfig> Clone for Recovered<C> {
    fn clone(&self) -> Self {
        Recovered {
            vote: self.vote.clone(),
            last_log_id: self.last_log_id.clone(),
            purged: self.purged.clone(),
            committed: self.committed.clone(),
            entries: self.entries,
            segments: self.segments,
            tail_repair: self.tail_repair.clone(),
        }
    }
}

impl<C: RaftTypeConfig> Debug for Recovered<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recovered")
            .field("vote", &self.vote)
            .field("last_log_id", &self.last_log_id)
            .field("purged", &self.purged)
            .field("committed", &self.committed)
            .field("entries", &self.entries)
            .field("segments", &self.segments)
            .field("tail_repair", &self.tail_repair)
            .finish()
    }
}

/// A torn write that recovery removed from the end of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailRepair {
    /// The segment file.
    pub path: PathBuf,
    /// Where the torn write began; the log now ends here.
    pub offset: u64,
    /// How many bytes were zeroed.
    pub bytes: u64,
}

impl<C: RaftTypeConfig> LogStore<C> {
    /// Opens the log in `dir`, creating the directory and an empty log if needed.
    ///
    /// Replays every segment to rebuild the index, cuts off a torn write at the very end, and
    /// refuses (with [`OpenError::Corrupt`] naming the file and offset) anything else that is
    /// damaged. Then starts the writer thread.
    pub fn open(dir: &Path, options: LogStoreOptions) -> Result<LogStore<C>, OpenError> {
        options.check().map_err(OpenError::InvalidOptions)?;
        let opened = open_dir::<C>(dir, &options)?;
        let last_log_id = opened
            .entries
            .last()
            .map(|(id, _)| id.clone())
            .or_else(|| opened.purged.clone());
        let recovered = Recovered {
            vote: opened.vote.clone(),
            last_log_id,
            purged: opened.purged.clone(),
            committed: opened.committed.clone(),
            entries: opened.entries.len() as u64,
            segments: opened.segments.len(),
            tail_repair: opened.repair.clone(),
        };
        let active_file = opened
            .segments
            .get(&opened.active_id)
            .cloned()
            .expect("open_dir always returns the active segment among the open segments");
        let inner = Inner::new(
            opened.vote,
            opened.committed,
            opened.purged,
            opened.entries,
            opened.segments,
            opened.pristine,
            options.cache_bytes,
        );
        let shared = Arc::new(Shared {
            inner: std::sync::Mutex::new(inner),
            dir: dir.to_path_buf(),
            hooks: Hooks::default(),
        });
        let writer = Writer {
            shared: shared.clone(),
            dir: dir.to_path_buf(),
            segment_size: options.segment_size,
            active: Active {
                id: opened.active_id,
                file: active_file,
                offset: opened.active_offset,
            },
            next_group: opened.next_group,
            failed: None,
            pending_committed: None,
            handled: 0,
            buf: Vec::new(),
            max_index: opened.max_index,
            zero_fill: options.zero_fill_segments,
            preparing: None,
            cancel_preparation: Arc::default(),
            observer: options.observer.clone(),
        };
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("kvlog-writer".to_string())
            .spawn(move || writer.run(rx))
            .map_err(OpenError::Spawn)?;
        tracing::info!(
            dir = %dir.display(),
            entries = recovered.entries,
            segments = recovered.segments,
            last_log_id = ?recovered.last_log_id,
            "kvlog: opened"
        );
        Ok(LogStore {
            shared,
            tx: Some(tx),
            writer: Some(handle),
            recovered,
            _lock: opened.lock,
        })
    }

    /// True only if nothing was ever stored here: no vote, no entry, nothing purged, no
    /// committed hint, and no damaged data was found at open. Any doubt counts as "something
    /// was stored", because the caller uses this to decide whether it may form a new cluster.
    pub fn is_pristine(&self) -> bool {
        self.shared.lock().pristine
    }

    /// The index of the last committed hint saved (see `save_committed`), if any.
    pub fn committed_index(&self) -> Option<u64> {
        self.shared.lock().committed.as_ref().map(|c| c.index)
    }

    /// The last committed hint saved, if any.
    pub fn committed(&self) -> Option<LogIdOf<C>> {
        self.shared.lock().committed.clone()
    }

    /// The last vote saved, if any.
    pub fn vote(&self) -> Option<VoteOf<C>> {
        self.shared.lock().vote.clone()
    }

    /// The last log id: of the last entry appended, or the last purged one if none is left.
    pub fn last_log_id(&self) -> Option<LogIdOf<C>> {
        self.shared.lock().last_log_id()
    }

    /// The last purged log id, if any.
    pub fn purged(&self) -> Option<LogIdOf<C>> {
        self.shared.lock().purged.clone()
    }

    /// What was found in the directory when it was opened.
    pub fn recovered(&self) -> &Recovered<C> {
        &self.recovered
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// A reader; the same as `RaftLogStorage::get_log_reader`, without `async`.
    pub fn reader(&self) -> LogReader<C> {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    /// Finishes the queued writes, stops the writer thread and releases the directory.
    /// Returns the error that stopped the writer, if one did.
    pub fn close(mut self) -> io::Result<()> {
        self.stop();
        match self.shared.lock().poisoned.clone() {
            Some(why) => Err(io::Error::other(why)),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        // Dropping the sender lets the writer drain the queue and exit.
        self.tx = None;
        if let Some(handle) = self.writer.take() {
            if handle.join().is_err() {
                tracing::error!("kvlog: the writer thread panicked");
            }
        }
    }

    /// Queues `op` under the state lock, after `update` changed the in-memory state; refuses
    /// when the store is poisoned or its writer is gone.
    fn submit<R>(&self, update: impl FnOnce(&mut Inner<C>) -> io::Result<(R, Op<C>)>) -> io::Result<R> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::other("the log store is closed"))?;
        let mut inner = self.shared.lock();
        if let Some(why) = &inner.poisoned {
            return Err(io::Error::other(format!(
                "the log store refuses writes after an earlier failure: {why}"
            )));
        }
        let (result, op) = update(&mut inner)?;
        inner.pristine = false;
        if tx.send(op).is_err() {
            let why = "the log writer thread is gone".to_string();
            inner.poisoned = Some(why.clone());
            return Err(io::Error::other(why));
        }
        inner.submitted += 1;
        Ok(result)
    }

    fn meta_bytes(inner: &Inner<C>) -> io::Result<Vec<u8>> {
        Meta::<C> {
            vote: inner.vote.clone(),
            purged: inner.purged.clone(),
            committed: inner.committed.clone(),
        }
        .encode()
        .map_err(io::Error::other)
    }
}

#[cfg(feature = "test-hooks")]
impl<C: RaftTypeConfig> LogStore<C> {
    /// Test hook: once the writer receives work, it waits until the returned guard is dropped,
    /// then takes everything queued by then as one batch.
    #[doc(hidden)]
    pub fn hold_writes(&self) -> WriteHold<C> {
        self.shared.hooks.hold();
        WriteHold {
            shared: self.shared.clone(),
        }
    }

    /// Test hook: the appends whose callbacks fired so far, numbered 1, 2, ... in the order
    /// `append` was called, listed in the order their callbacks fired.
    #[doc(hidden)]
    pub fn fired_appends(&self) -> Vec<u64> {
        self.shared.hooks.fired_batches()
    }

    /// Test hook: the writer's next write fails as if the disk had returned an error.
    #[doc(hidden)]
    pub fn fail_next_write(&self) {
        self.shared.hooks.fail_write_after(0);
    }

    /// Test hook: the writer lets `writes` more writes (segment groups or meta files) through,
    /// then the next one fails.
    #[doc(hidden)]
    pub fn fail_write_after(&self, writes: usize) {
        self.shared.hooks.fail_write_after(writes);
    }
}

/// Test hook guard from [`LogStore::hold_writes`].
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub struct WriteHold<C: RaftTypeConfig> {
    shared: Arc<Shared<C>>,
}

#[cfg(feature = "test-hooks")]
impl<C: RaftTypeConfig> WriteHold<C> {
    /// Blocks until the writer has work and is waiting on this hold, or `timeout` passes.
    /// Returns whether it is waiting.
    pub fn wait_until_blocked(&self, timeout: std::time::Duration) -> bool {
        self.shared.hooks.wait_until_writer_waits(timeout)
    }
}

#[cfg(feature = "test-hooks")]
impl<C: RaftTypeConfig> Drop for WriteHold<C> {
    fn drop(&mut self) {
        self.shared.hooks.release();
    }
}

impl<C: RaftTypeConfig> Drop for LogStore<C> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn encode_error(what: &str, e: rmp_serde::encode::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("cannot encode {what}: {e}"))
}

impl<C: RaftTypeConfig> RaftLogReader<C> for LogReader<C>
where
    C::Entry: Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        self.shared.read_range(range)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(self.shared.lock().vote.clone())
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for LogStore<C>
where
    C::Entry: Clone,
{
    type LogReader = LogReader<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let inner = self.shared.lock();
        Ok(LogState {
            last_purged_log_id: inner.purged.clone(),
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        let (done, wait) = oneshot::channel();
        self.submit(|inner| {
            // The in-memory vote changes now, so that a meta file written for a later purge
            // carries it even if this call's future is dropped before the write completes.
            inner.vote = Some(vote.clone());
            let bytes = Self::meta_bytes(inner)?;
            Ok((
                (),
                Op::Meta {
                    bytes,
                    purged: None,
                    done: Some(done),
                },
            ))
        })?;
        wait.await
            .map_err(|_| io::Error::other("the log writer thread stopped before saving the vote"))?
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let payload = to_payload(&committed).map_err(|e| encode_error("the committed log id", e))?;
        let mut inner = self.shared.lock();
        if let Some(why) = &inner.poisoned {
            return Err(io::Error::other(format!(
                "the log store refuses writes after an earlier failure: {why}"
            )));
        }
        inner.committed = committed;
        let after = inner.submitted;
        inner.committed_payloads.push_back((after, payload));
        inner.pristine = false;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.shared.lock().committed.clone())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        let mut payloads = Vec::with_capacity(entries.len());
        let mut ids = Vec::with_capacity(entries.len());
        for entry in &entries {
            let payload = to_payload(entry).map_err(|e| encode_error("a log entry", e))?;
            if payload.len() > MAX_PAYLOAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "log entry {} encodes to {} bytes; a record holds at most {MAX_PAYLOAD}",
                        entry.log_id(),
                        payload.len()
                    ),
                ));
            }
            payloads.push(payload);
            ids.push(entry.log_id());
        }
        let first_index = ids.first().map(|id| id.index).unwrap_or(0);
        self.submit(move |inner| {
            inner
                .check_append(&ids)
                .map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
            let sized = entries.into_iter().zip(payloads.iter().map(Vec::len)).collect();
            let batch = inner.push(sized);
            Ok((
                (),
                Op::Append {
                    batch,
                    first_index,
                    payloads,
                    callback,
                },
            ))
        })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let payload = to_payload(&last_log_id).map_err(|e| encode_error("the truncation point", e))?;
        self.submit(|inner| {
            inner.truncate_after(last_log_id.as_ref().map(|l| l.index));
            Ok(((), Op::Truncate(payload)))
        })
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        if self.shared.lock().purged.as_ref() >= Some(&log_id) {
            return Ok(());
        }
        self.submit(|inner| {
            let index = log_id.index;
            inner.purge_upto(index);
            inner.purged = Some(log_id);
            // The meta file records the new purge point before the writer deletes anything,
            // so a crash in between never leaves a hole.
            let bytes = Self::meta_bytes(inner)?;
            Ok((
                (),
                Op::Meta {
                    bytes,
                    purged: Some(index),
                    done: None,
                },
            ))
        })
    }
}
