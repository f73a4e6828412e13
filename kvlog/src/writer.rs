//! The writer thread: the only code that writes to the log directory after it is opened.
//!
//! Every write operation is queued here in the order the store received it, and performed in
//! that order, which is what openraft's I/O ordering rules need (a vote must be on disk before
//! any entry submitted after it, and so on). The thread takes everything that is queued at once
//! and turns consecutive log records (entries, truncation markers, committed hints) into one
//! *group*: one `pwrite` and one `fdatasync`, after which the `IOFlushed` callbacks of the
//! appends in the group fire, in submission order. A vote or purge in the queue first makes the
//! records before it durable, then replaces the meta file; so anything on disk implies that
//! everything submitted before it is too.
//!
//! A new group is only started once the previous one is durable. Recovery depends on this: only
//! the last group can be torn by a crash.
//!
//! Committed hints are not worth an `fdatasync` of their own. A hint waits for the next group
//! (or the shutdown); after a crash it may lag behind, but it is never written before the
//! entries it covers, so it is never ahead of what is durable.
//!
//! The first failed write poisons the store: its callbacks and every later one get the error,
//! and the store refuses new writes. Continuing after a failed `fdatasync` is unsafe because the
//! kernel may have dropped the dirty pages it could not write.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use openraft::storage::IOFlushed;
use openraft::RaftTypeConfig;
use tokio::sync::oneshot;

use crate::format::{encode_record, record_len, to_payload, RecordKind, SEGMENT_HEADER_LEN};
use crate::observer::{GroupWritten, WriteObserver};
use crate::segment::{
    create_segment, install_segment, prepare_segment, segment_path, sync_dir, write_meta_file,
};
use crate::state::{Loc, Shared};

/// One queued write.
pub(crate) enum Op<C: RaftTypeConfig> {
    /// Encoded entries of one `append` call, the first at `first_index`.
    Append {
        batch: u64,
        first_index: u64,
        payloads: Vec<Vec<u8>>,
        callback: IOFlushed<C>,
    },
    /// An encoded `Option<LogId>` after which entries were truncated.
    Truncate(Vec<u8>),
    /// A complete new meta file. `purged` is the purge point it records when it was written for
    /// a purge: once the file is durable, segments holding only entries up to there can go.
    Meta {
        bytes: Vec<u8>,
        purged: Option<u64>,
        done: Option<oneshot::Sender<io::Result<()>>>,
    },
}

/// A helper thread making the next segment; it returns the temporary path and the file.
pub(crate) type Preparation = JoinHandle<io::Result<(PathBuf, File)>>;

/// The segment being written.
pub(crate) struct Active {
    pub(crate) id: u64,
    pub(crate) file: Arc<File>,
    /// Where the next group goes.
    pub(crate) offset: u64,
}

/// The writer thread's state.
pub(crate) struct Writer<C: RaftTypeConfig> {
    pub(crate) shared: Arc<Shared<C>>,
    pub(crate) dir: PathBuf,
    pub(crate) segment_size: u64,
    pub(crate) active: Active,
    pub(crate) next_group: u64,
    pub(crate) failed: Option<String>,
    pub(crate) pending_committed: Option<Vec<u8>>,
    /// Operations taken from the queue so far (see `take_committed`).
    pub(crate) handled: u64,
    pub(crate) buf: Vec<u8>,
    /// Per open segment, the highest index of any entry record written to it (live or not).
    pub(crate) max_index: BTreeMap<u64, Option<u64>>,
    /// Whether new segments are written with zeros (see `LogStoreOptions`).
    pub(crate) zero_fill: bool,
    /// The next segment being prepared on a helper thread: its id and the thread.
    pub(crate) preparing: Option<(u64, Preparation)>,
    /// Tells a running preparation to stop (at shutdown).
    pub(crate) cancel_preparation: Arc<std::sync::atomic::AtomicBool>,
    /// Told about each durable group and meta file, and about a failure (see `observer`).
    pub(crate) observer: Option<Arc<dyn WriteObserver>>,
}

/// Records gathered for one group, with what to do once they are durable.
struct Group<C: RaftTypeConfig> {
    records: Vec<(RecordKind, Vec<u8>)>,
    /// (batch, first index, first record position, record count) per append.
    appends: Vec<(u64, u64, usize, usize)>,
    /// (batch, callback) per append, in submission order.
    callbacks: Vec<(u64, IOFlushed<C>)>,
}

impl<C: RaftTypeConfig> Group<C> {
    fn new() -> Self {
        Group {
            records: Vec::new(),
            appends: Vec::new(),
            callbacks: Vec::new(),
        }
    }
}

impl<C: RaftTypeConfig> Writer<C> {
    /// Runs until the store drops its end of the queue, then finishes what is queued.
    pub(crate) fn run(mut self, rx: Receiver<Op<C>>) {
        while let Ok(first) = rx.recv() {
            self.shared.hooks.pause_point();
            let mut group = Group::new();
            self.handle(first, &mut group);
            while let Ok(op) = rx.try_recv() {
                self.handle(op, &mut group);
            }
            self.flush(group, false);
        }
        self.flush(Group::new(), true);
        self.finish_preparation();
    }

    /// Takes the committed hint when every operation submitted before it has been handled:
    /// the entries it names are then in this group or an earlier one, and so is the hint of any
    /// append submitted after it, which makes the hint durable whenever that append is.
    fn take_committed(&mut self) {
        let mut inner = self.shared.lock();
        while inner
            .committed_payloads
            .front()
            .is_some_and(|(after, _)| *after <= self.handled)
        {
            self.pending_committed = inner.committed_payloads.pop_front().map(|(_, payload)| payload);
        }
    }

    fn handle(&mut self, op: Op<C>, group: &mut Group<C>) {
        self.handled += 1;
        match op {
            Op::Append {
                batch,
                first_index,
                payloads,
                callback,
            } => {
                group
                    .appends
                    .push((batch, first_index, group.records.len(), payloads.len()));
                group
                    .records
                    .extend(payloads.into_iter().map(|p| (RecordKind::Entry, p)));
                group.callbacks.push((batch, callback));
            }
            Op::Truncate(payload) => group.records.push((RecordKind::Truncate, payload)),
            Op::Meta { bytes, purged, done } => {
                // Everything queued before the meta change must be durable before it.
                let before = std::mem::replace(group, Group::new());
                self.flush(before, false);
                let result = self.replace_meta(&bytes, purged);
                if let Some(done) = done {
                    // The caller may have given up waiting; the meta file is written anyway.
                    let _ = done.send(result);
                }
            }
        }
    }

    /// Writes `group` (plus a pending committed hint if anything else is written, or if this is
    /// the final flush) and fires its callbacks.
    fn flush(&mut self, mut group: Group<C>, last: bool) {
        // Here, in every flush (also the one a meta change forces in the middle of a drain),
        // since a flushed append makes every hint set before it durable.
        self.take_committed();
        if (!group.records.is_empty() || last) && self.failed.is_none() {
            if let Some(committed) = self.pending_committed.take() {
                group.records.push((RecordKind::Committed, committed));
            }
        }
        if let Some(why) = &self.failed {
            let why = why.clone();
            self.complete(group.callbacks, Some(why));
            return;
        }
        if group.records.is_empty() {
            // Nothing to write: everything submitted before these callbacks is durable already.
            self.complete(group.callbacks, None);
            return;
        }
        match self.write_group(&group.records) {
            Ok(offsets) => {
                let segment = self.active.id;
                let written_max = group
                    .appends
                    .iter()
                    .filter(|a| a.3 > 0)
                    .map(|&(_, first_index, _, count)| first_index + count as u64 - 1)
                    .max();
                if let Some(m) = written_max {
                    let slot = self.max_index.entry(segment).or_insert(None);
                    *slot = Some(slot.map_or(m, |old| old.max(m)));
                }
                let mut inner = self.shared.lock();
                for &(batch, first_index, first_record, count) in &group.appends {
                    let locs: Vec<Loc> = (first_record..first_record + count)
                        .map(|i| Loc {
                            segment,
                            offset: offsets[i],
                            len: group.records[i].1.len() as u32,
                        })
                        .collect();
                    inner.set_flushed(batch, first_index, &locs);
                }
                drop(inner);
                self.complete(group.callbacks, None);
            }
            Err(e) => {
                let why = format!(
                    "writing to {} failed: {e}",
                    segment_path(&self.dir, self.active.id).display()
                );
                self.fail(why.clone());
                self.complete(group.callbacks, Some(why));
            }
        }
    }

    fn complete(&self, callbacks: Vec<(u64, IOFlushed<C>)>, failure: Option<String>) {
        for (batch, callback) in callbacks {
            self.shared.hooks.fired(batch);
            match &failure {
                None => callback.io_completed(Ok(())),
                Some(why) => callback.io_completed(Err(io::Error::other(why.clone()))),
            }
        }
    }

    fn fail(&mut self, why: String) {
        tracing::error!(error = %why, "kvlog: write failed; the log store refuses further writes");
        if let Some(observer) = &self.observer {
            observer.failed(&why);
        }
        self.shared.lock().poisoned = Some(why.clone());
        self.failed = Some(why);
    }

    /// Writes one group durably; returns the offset of each record in the active segment.
    fn write_group(&mut self, records: &[(RecordKind, Vec<u8>)]) -> io::Result<Vec<u64>> {
        let total: u64 = records.iter().map(|(_, p)| record_len(p.len()) as u64).sum();
        if self.active.offset > SEGMENT_HEADER_LEN && self.active.offset + total > self.segment_size {
            self.roll()?;
        }
        let start = self.active.offset;
        let group = self.next_group;
        self.buf.clear();
        let mut offsets = Vec::with_capacity(records.len());
        for (kind, payload) in records {
            offsets.push(start + self.buf.len() as u64);
            encode_record(&mut self.buf, *kind, group, start, payload);
        }
        self.shared.hooks.before_write()?;
        let started = Instant::now();
        self.active.file.write_all_at(&self.buf, start)?;
        let written = Instant::now();
        self.active.file.sync_data()?;
        if let Some(observer) = &self.observer {
            observer.group_written(&GroupWritten {
                entries: records.iter().filter(|(k, _)| *k == RecordKind::Entry).count(),
                records: records.len(),
                bytes: self.buf.len(),
                write: written - started,
                sync: written.elapsed(),
            });
        }
        self.next_group += 1;
        self.active.offset += self.buf.len() as u64;
        self.prepare_next_segment();
        Ok(offsets)
    }

    /// Once the active segment is half full, starts making the next one on a helper thread,
    /// so that rolling over does not wait for a segment's worth of zeros to be written.
    fn prepare_next_segment(&mut self) {
        if self.preparing.is_some() || self.active.offset < self.segment_size / 2 {
            return;
        }
        let (dir, id, size, zero_fill) = (
            self.dir.clone(),
            self.active.id + 1,
            self.segment_size,
            self.zero_fill,
        );
        let cancel = self.cancel_preparation.clone();
        match std::thread::Builder::new()
            .name("kvlog-prepare".to_string())
            .spawn(move || prepare_segment(&dir, id, size, zero_fill, &cancel))
        {
            Ok(handle) => self.preparing = Some((id, handle)),
            // Not fatal: the segment is then made when it is needed.
            Err(e) => tracing::warn!(error = %e, "kvlog: cannot start a segment preparation thread"),
        }
    }

    /// Stops a segment preparation still running at shutdown and removes its file. It must be
    /// over before the directory is unlocked: a preparation left running could still be writing
    /// zeros into a file of the same name that the next opener prepares and installs.
    fn finish_preparation(&mut self) {
        self.cancel_preparation
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some((id, handle)) = self.preparing.take() {
            if let Ok(Ok((tmp, file))) = handle.join() {
                drop(file);
                if let Err(e) = std::fs::remove_file(&tmp) {
                    tracing::warn!(path = %tmp.display(), error = %e, "kvlog: cannot remove an unused segment {id}");
                }
            }
        }
    }

    /// Seals the active segment and continues in a new one.
    fn roll(&mut self) -> io::Result<()> {
        let next_id = self.active.id + 1;
        let seal = to_payload(&next_id).map_err(io::Error::other)?;
        self.buf.clear();
        let start = self.active.offset;
        encode_record(&mut self.buf, RecordKind::Seal, self.next_group, start, &seal);
        self.active.file.write_all_at(&self.buf, start)?;
        self.active.file.sync_data()?;
        self.next_group += 1;
        self.active.offset += self.buf.len() as u64;

        let prepared = match self.preparing.take() {
            Some((id, handle)) if id == next_id => match handle.join() {
                Ok(Ok(prepared)) => Some(prepared),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kvlog: preparing the next segment failed; creating it now");
                    None
                }
                Err(_) => {
                    tracing::warn!("kvlog: the segment preparation thread panicked; creating it now");
                    None
                }
            },
            _ => None,
        };
        let file = Arc::new(match prepared {
            Some((tmp, file)) => install_segment(&self.dir, &tmp, file, next_id, self.next_group)?,
            None => create_segment(
                &self.dir,
                next_id,
                self.next_group,
                self.segment_size,
                self.zero_fill,
            )?,
        });
        self.shared.lock().segments.insert(next_id, file.clone());
        self.max_index.insert(next_id, None);
        self.active = Active {
            id: next_id,
            file,
            offset: SEGMENT_HEADER_LEN,
        };
        Ok(())
    }

    fn replace_meta(&mut self, bytes: &[u8], purged: Option<u64>) -> io::Result<()> {
        if let Some(why) = &self.failed {
            return Err(io::Error::other(why.clone()));
        }
        let started = Instant::now();
        if let Err(e) = self
            .shared
            .hooks
            .before_write()
            .and_then(|()| write_meta_file(&self.dir, bytes))
        {
            let why = format!("replacing the meta file in {} failed: {e}", self.dir.display());
            self.fail(why.clone());
            return Err(io::Error::other(why));
        }
        if let Some(observer) = &self.observer {
            observer.meta_written(started.elapsed());
        }
        if let Some(purged) = purged {
            self.delete_purged_segments(purged);
        }
        Ok(())
    }

    /// Deletes, oldest first, the segments in which every entry record has an index of at most
    /// `purged`, the purge point that the meta file now holds durably.
    ///
    /// The rule looks only at what the segments hold, never at the in-memory state: that state
    /// may already reflect a later purge whose meta file is not written yet, and deleting on its
    /// behalf would leave a hole if the process died before that write. Entries that a
    /// truncation removed still count, which only keeps a segment a little longer.
    ///
    /// A deletion that fails only leaves dead data behind (recovery skips purged entries), so it
    /// is logged and the remaining deletions wait for the next purge, keeping the surviving
    /// segments a contiguous range.
    fn delete_purged_segments(&mut self, purged: u64) {
        let doomed: Vec<u64> = self
            .max_index
            .range(..self.active.id)
            .take_while(|(_, max)| max.is_none_or(|m| m <= purged))
            .map(|(id, _)| *id)
            .collect();
        if doomed.is_empty() {
            return;
        }
        for id in doomed {
            let path = segment_path(&self.dir, id);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "kvlog: cannot delete a purged segment");
                break;
            }
            self.shared.lock().segments.remove(&id);
            self.max_index.remove(&id);
        }
        if let Err(e) = sync_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "kvlog: cannot sync the directory after deleting segments");
        }
    }
}
