//! The in-memory view every reader sees: which entries exist, where each one lives, and a cache
//! of recent ones.
//!
//! This state reflects every operation *submitted*, not only those on disk: openraft requires an
//! appended entry to be readable as soon as `append` returns, and the replication task reads
//! exactly what was submitted. Entries that are not yet on disk are therefore always held in
//! memory; once the writer has made them durable it records their location, and the oldest of
//! them may then be dropped from memory to respect the cache budget (the cached ones always form
//! a suffix of the log, because flushes happen in log order).
//!
//! One `std::sync::Mutex` guards it. Every critical section is short and never spans an
//! `.await` or a disk read: a reader copies out cached entries and the locations of the others,
//! releases the lock, and only then reads from disk.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::entry::RaftEntry;
use openraft::type_config::alias::{LogIdOf, VoteOf};
use openraft::RaftTypeConfig;

use crate::format::{decode_record, from_payload, record_len, Decoded, RecordKind};
use crate::hooks::Hooks;
use crate::segment::segment_path;

/// Where a flushed entry's record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    /// Segment id.
    pub(crate) segment: u64,
    /// Offset of the record header in the segment.
    pub(crate) offset: u64,
    /// Payload length.
    pub(crate) len: u32,
}

/// One live log entry.
struct Slot<C: RaftTypeConfig> {
    log_id: LogIdOf<C>,
    /// The `append` call that submitted it; lets the writer tell this entry apart from one that
    /// replaced it at the same index after a truncation.
    batch: u64,
    /// Encoded size, the unit of the cache budget.
    size: usize,
    /// Set once the entry is on disk.
    loc: Option<Loc>,
    /// Present while unflushed, and afterwards while the cache budget allows.
    entry: Option<C::Entry>,
}

/// State shared by the store, its readers and the writer thread.
pub(crate) struct Shared<C: RaftTypeConfig> {
    pub(crate) inner: Mutex<Inner<C>>,
    pub(crate) dir: PathBuf,
    pub(crate) hooks: Hooks,
}

impl<C: RaftTypeConfig> Shared<C> {
    /// Locks the state. A panic while the lock was held cannot leave it half-updated in a way
    /// that matters more than the panic itself, so a poisoned lock is used as is.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner<C>> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The entries with indexes in `range` that exist, in order.
    pub(crate) fn read_range<RB: RangeBounds<u64>>(&self, range: RB) -> io::Result<Vec<C::Entry>>
    where
        C::Entry: Clone,
    {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        let plan = self.lock().plan_read(start, end)?;
        let mut out = Vec::with_capacity(plan.len());
        let mut i = 0;
        while i < plan.len() {
            match &plan[i] {
                Planned::Cached(entry) => {
                    out.push(entry.clone());
                    i += 1;
                }
                Planned::Disk(..) => {
                    // A run of records that sit back to back in one segment is read at once.
                    let run_end = disk_run_end(&plan, i);
                    read_run::<C>(&self.dir, &plan[i..run_end], &mut out)?;
                    i = run_end;
                }
            }
        }
        Ok(out)
    }
}

/// What a read will return for one index.
pub(crate) enum Planned<C: RaftTypeConfig> {
    /// A copy from memory.
    Cached(C::Entry),
    /// To be read from disk: index, location, and a handle on the segment that stays valid even
    /// if a purge deletes the file meanwhile.
    Disk(u64, Loc, Arc<File>),
}

/// Upper bound of one disk read, so a huge range does not allocate one huge buffer.
const MAX_RUN_BYTES: u64 = 8 * 1024 * 1024;

fn disk_run_end<C: RaftTypeConfig>(plan: &[Planned<C>], start: usize) -> usize {
    let Planned::Disk(_, first, _) = &plan[start] else {
        return start;
    };
    let mut next_offset = first.offset + record_len(first.len as usize) as u64;
    let mut end = start + 1;
    while let Some(Planned::Disk(_, loc, _)) = plan.get(end) {
        if loc.segment != first.segment
            || loc.offset != next_offset
            || next_offset - first.offset > MAX_RUN_BYTES
        {
            break;
        }
        next_offset = loc.offset + record_len(loc.len as usize) as u64;
        end += 1;
    }
    end
}

fn read_run<C: RaftTypeConfig>(dir: &Path, run: &[Planned<C>], out: &mut Vec<C::Entry>) -> io::Result<()> {
    let (Some(Planned::Disk(_, first, file)), Some(Planned::Disk(_, last, _))) = (run.first(), run.last())
    else {
        return Ok(());
    };
    let total = last.offset + record_len(last.len as usize) as u64 - first.offset;
    let mut buf = vec![0u8; total as usize];
    file.read_exact_at(&mut buf, first.offset).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "reading log entries from {} at offset {}: {e}",
                segment_path(dir, first.segment).display(),
                first.offset
            ),
        )
    })?;
    for planned in run {
        let Planned::Disk(index, loc, _) = planned else {
            continue;
        };
        let damaged = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "log entry {index} in {} at offset {} is damaged: {why}",
                    segment_path(dir, loc.segment).display(),
                    loc.offset
                ),
            )
        };
        let at = (loc.offset - first.offset) as usize;
        let entry: C::Entry = match decode_record(&buf, at) {
            Decoded::Record(h, payload)
                if h.kind == RecordKind::Entry as u8 && payload.len() == loc.len as usize =>
            {
                from_payload(payload).map_err(|e| damaged(&e.to_string()))?
            }
            Decoded::Record(..) => {
                return Err(damaged("another record is stored where the entry was written"))
            }
            Decoded::End => return Err(damaged("the record is gone (zeros)")),
            Decoded::Damaged(why) => return Err(damaged(why)),
        };
        if entry.index() != *index {
            return Err(damaged(&format!("the record holds index {}", entry.index())));
        }
        out.push(entry);
    }
    Ok(())
}

/// Everything behind the lock.
pub(crate) struct Inner<C: RaftTypeConfig> {
    /// Last vote submitted.
    pub(crate) vote: Option<VoteOf<C>>,
    /// Last committed hint submitted.
    pub(crate) committed: Option<LogIdOf<C>>,
    /// The encoded committed hint not yet taken by the writer. The hint does not travel through
    /// the writer's queue: it is not worth waking the writer for, and it rides along with the
    /// next group the writer forms anyway (see `writer`).
    /// Each is paired with the number of operations submitted before it was set: the writer
    /// takes a hint only once it has handled that many, so a hint is never written ahead of the
    /// entries it names, and it is durable once anything submitted after it is. Several may wait
    /// while the writer is busy; it writes the newest it may take.
    pub(crate) committed_payloads: std::collections::VecDeque<(u64, Vec<u8>)>,
    /// Operations submitted to the writer so far.
    pub(crate) submitted: u64,
    /// Last purged log id submitted.
    pub(crate) purged: Option<LogIdOf<C>>,
    /// Set when the writer failed; every later write is refused with this text.
    pub(crate) poisoned: Option<String>,
    /// Nothing was ever stored (see `LogStore::is_pristine`).
    pub(crate) pristine: bool,
    /// Open segment files, for readers. The writer adds and removes them.
    pub(crate) segments: BTreeMap<u64, Arc<File>>,
    /// Live entries, consecutive, starting at `first_index`.
    slots: VecDeque<Slot<C>>,
    first_index: u64,
    /// Entries below this index are not cached.
    cache_from: u64,
    cached_bytes: usize,
    cache_limit: usize,
    next_batch: u64,
}

impl<C: RaftTypeConfig> Inner<C> {
    /// State for a store whose directory held `entries` (all on disk, none cached).
    pub(crate) fn new(
        vote: Option<VoteOf<C>>,
        committed: Option<LogIdOf<C>>,
        purged: Option<LogIdOf<C>>,
        entries: Vec<(LogIdOf<C>, Loc)>,
        segments: BTreeMap<u64, Arc<File>>,
        pristine: bool,
        cache_limit: usize,
    ) -> Self {
        let first_index = entries.first().map(|(id, _)| id.index).unwrap_or(0);
        let slots: VecDeque<Slot<C>> = entries
            .into_iter()
            .map(|(log_id, loc)| Slot {
                log_id,
                batch: 0,
                size: loc.len as usize,
                loc: Some(loc),
                entry: None,
            })
            .collect();
        let cache_from = first_index + slots.len() as u64;
        Inner {
            vote,
            committed,
            committed_payloads: std::collections::VecDeque::new(),
            submitted: 0,
            purged,
            poisoned: None,
            pristine,
            segments,
            slots,
            first_index,
            cache_from,
            cached_bytes: 0,
            cache_limit,
            next_batch: 1,
        }
    }

    fn end_index(&self) -> u64 {
        self.first_index + self.slots.len() as u64
    }

    /// The last log id: of the last entry, or the last purged one when no entry is left.
    pub(crate) fn last_log_id(&self) -> Option<LogIdOf<C>> {
        match self.slots.back() {
            Some(slot) => Some(slot.log_id.clone()),
            None => self.purged.clone(),
        }
    }

    /// Why entries with these log ids cannot be appended now, if they cannot: they must
    /// continue the log without a gap and never go back to an older leader.
    pub(crate) fn check_append(&self, ids: &[LogIdOf<C>]) -> Result<(), String> {
        let Some(first) = ids.first() else {
            return Ok(());
        };
        let before = match self.slots.back() {
            Some(slot) => Some(&slot.log_id),
            None => self.purged.as_ref(),
        };
        if let Some(before) = before {
            if first.index != before.index + 1 || first.leader_id < before.leader_id {
                return Err(format!(
                    "entry {first} does not follow {before}: appends must continue the log (truncate first)"
                ));
            }
        }
        for pair in ids.windows(2) {
            if pair[1].index != pair[0].index + 1 || pair[1].leader_id < pair[0].leader_id {
                return Err(format!(
                    "entry {} does not follow {} in one append",
                    pair[1], pair[0]
                ));
            }
        }
        Ok(())
    }

    /// Adds entries (already checked) and returns the batch number that identifies them.
    pub(crate) fn push(&mut self, entries: Vec<(C::Entry, usize)>) -> u64 {
        let batch = self.next_batch;
        self.next_batch += 1;
        for (entry, size) in entries {
            let log_id = entry.log_id();
            if self.slots.is_empty() {
                self.first_index = log_id.index;
                self.cache_from = log_id.index;
            }
            self.cached_bytes += size;
            self.slots.push_back(Slot {
                log_id,
                batch,
                size,
                loc: None,
                entry: Some(entry),
            });
        }
        batch
    }

    /// Drops entries after `last` (all when `None`).
    pub(crate) fn truncate_after(&mut self, last: Option<u64>) {
        let keep = match last {
            None => 0,
            Some(i) if i < self.first_index => 0,
            Some(i) => (i - self.first_index + 1).min(self.slots.len() as u64) as usize,
        };
        while self.slots.len() > keep {
            if let Some(slot) = self.slots.pop_back() {
                if slot.entry.is_some() {
                    self.cached_bytes -= slot.size;
                }
            }
        }
        self.cache_from = self.cache_from.min(self.end_index());
    }

    /// Drops entries up to and including `index`.
    pub(crate) fn purge_upto(&mut self, index: u64) {
        while self.slots.front().is_some_and(|s| s.log_id.index <= index) {
            if let Some(slot) = self.slots.pop_front() {
                if slot.entry.is_some() {
                    self.cached_bytes -= slot.size;
                }
            }
            self.first_index += 1;
        }
        if self.slots.is_empty() {
            self.first_index = index.saturating_add(1);
        }
        self.cache_from = self.cache_from.max(self.first_index);
    }

    /// Records where the writer put the entries of `batch` starting at `first_index`, then
    /// trims the cache. Entries that were truncated or purged meanwhile are skipped.
    pub(crate) fn set_flushed(&mut self, batch: u64, first_index: u64, locs: &[Loc]) {
        for (i, loc) in locs.iter().enumerate() {
            let index = first_index + i as u64;
            if index < self.first_index {
                continue;
            }
            let Some(slot) = self.slots.get_mut((index - self.first_index) as usize) else {
                break;
            };
            if slot.batch == batch {
                slot.loc = Some(*loc);
            }
        }
        self.evict();
    }

    /// Drops flushed entries from memory, oldest first, while over budget.
    fn evict(&mut self) {
        while self.cached_bytes > self.cache_limit && self.cache_from < self.end_index() {
            let pos = (self.cache_from - self.first_index) as usize;
            let slot = &mut self.slots[pos];
            if slot.loc.is_none() {
                // The rest is not on disk yet; it has to stay.
                break;
            }
            if slot.entry.take().is_some() {
                self.cached_bytes -= slot.size;
            }
            self.cache_from += 1;
        }
    }

    fn plan_read(&self, start: u64, end: u64) -> io::Result<Vec<Planned<C>>>
    where
        C::Entry: Clone,
    {
        let start = start.max(self.first_index);
        let end = end.min(self.end_index());
        let mut plan = Vec::with_capacity(end.saturating_sub(start) as usize);
        for index in start..end {
            let slot = &self.slots[(index - self.first_index) as usize];
            if let Some(entry) = &slot.entry {
                plan.push(Planned::Cached(entry.clone()));
            } else if let Some(loc) = slot.loc {
                // A segment is closed only once nothing live is in it, so it is there.
                let file = self.segments.get(&loc.segment).ok_or_else(|| {
                    io::Error::other(format!(
                        "log entry {index} is recorded in segment {} which is no longer open",
                        loc.segment
                    ))
                })?;
                plan.push(Planned::Disk(index, loc, file.clone()));
            } else {
                // An entry leaves memory only after it is on disk, so this cannot happen; an
                // error is still better than a log with a hole.
                return Err(io::Error::other(format!(
                    "log entry {index} is neither in memory nor on disk"
                )));
            }
        }
        Ok(plan)
    }
}
