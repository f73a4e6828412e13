//! Opening a log directory: reading the meta file, replaying every segment to rebuild the index
//! of live entries, and repairing a torn tail.
//!
//! Replay applies the records in the order they were written: an entry extends the log, a
//! truncation marker cuts it back, a committed record updates the hint. Because nothing is ever
//! overwritten in place, entries removed by a truncation cannot come back: they stay on disk
//! before the marker that removed them. Every entry must extend the log by exactly one index
//! without going back to an older leader; the only allowed jump is past entries that the meta
//! file already records as purged (the writer logged those before the purge and new entries
//! after it). A record that passes its checksum but breaks these rules is not something a crash
//! can produce, so it is refused as corruption.
//!
//! What counts as a torn tail: in the last segment only, damage (or zeros) after which nothing
//! but pieces of the *same* write group follow. Such a group was being written when the process
//! died and was never reported durable, so it is cut off: the bytes from the damage on are
//! zeroed and synced before the store accepts new writes, so that a later, shorter write cannot
//! be followed by stale bytes. Anything else (damage in an earlier segment, a segment without
//! its seal, a missing segment, or damage followed by an intact later group) means data that was
//! once durable is gone; the store refuses to open rather than start on top of a log it could
//! not read.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::type_config::alias::{LogIdOf, VoteOf};
use openraft::RaftTypeConfig;
use serde::{Deserialize, Serialize};

use crate::error::OpenError;
use crate::format::{
    decode_meta, decode_record, decode_segment_header, encode_meta, from_payload, record_len, to_payload,
    Decoded, RecordKind, ALIGN, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::options::LogStoreOptions;
use crate::segment::{
    create_segment, parse_segment_file_name, preallocate, segment_path, sync_dir, write_meta_file, LOCK_FILE,
    META_FILE, TMP_SUFFIX,
};
use crate::state::Loc;
use crate::TailRepair;

/// The content of the meta file.
#[derive(Serialize, Deserialize)]
#[serde(bound = "C: RaftTypeConfig")]
pub(crate) struct Meta<C: RaftTypeConfig> {
    pub(crate) vote: Option<VoteOf<C>>,
    pub(crate) purged: Option<LogIdOf<C>>,
    pub(crate) committed: Option<LogIdOf<C>>,
}

impl<C: RaftTypeConfig> Meta<C> {
    /// The complete meta file for these values.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        Ok(encode_meta(&to_payload(self)?))
    }
}

/// Everything `LogStore::open` needs from the directory.
pub(crate) struct Opened<C: RaftTypeConfig> {
    pub(crate) lock: File,
    pub(crate) vote: Option<VoteOf<C>>,
    pub(crate) purged: Option<LogIdOf<C>>,
    pub(crate) committed: Option<LogIdOf<C>>,
    pub(crate) entries: Vec<(LogIdOf<C>, Loc)>,
    pub(crate) segments: BTreeMap<u64, Arc<File>>,
    pub(crate) active_id: u64,
    pub(crate) active_offset: u64,
    pub(crate) next_group: u64,
    /// Per open segment, the highest index of any entry record in it (live or not).
    pub(crate) max_index: BTreeMap<u64, Option<u64>>,
    pub(crate) pristine: bool,
    pub(crate) repair: Option<TailRepair>,
}

/// Opens (creating if needed), locks, checks, replays and repairs the log directory `dir`.
pub(crate) fn open_dir<C: RaftTypeConfig>(
    dir: &Path,
    options: &LogStoreOptions,
) -> Result<Opened<C>, OpenError> {
    // Directories this open creates; their names must be made durable too, or a crash could
    // take the whole log (and the vote in it) away after the node had used it.
    let created: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    fs::create_dir_all(dir).map_err(|e| OpenError::io("create log directory", dir, e))?;
    for new in created.iter().rev() {
        if let Some(parent) = new.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent).map_err(|e| OpenError::io("sync directory", parent, e))?;
        }
    }
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| OpenError::io("open lock file", &lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(OpenError::Locked {
                dir: dir.to_path_buf(),
                lock: lock_path,
            })
        }
        Err(fs::TryLockError::Error(e)) => return Err(OpenError::io("lock", &lock_path, e)),
    }

    let mut ids = Vec::new();
    let mut removed_tmp = false;
    let listing = fs::read_dir(dir).map_err(|e| OpenError::io("list log directory", dir, e))?;
    for item in listing {
        let item = item.map_err(|e| OpenError::io("list log directory", dir, e))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TMP_SUFFIX) {
            // An unfinished segment creation or meta replacement; never part of the log.
            fs::remove_file(item.path())
                .map_err(|e| OpenError::io("remove leftover temporary file", item.path(), e))?;
            removed_tmp = true;
        } else if let Some(id) = parse_segment_file_name(name) {
            ids.push(id);
        }
    }
    if removed_tmp {
        sync_dir(dir).map_err(|e| OpenError::io("sync log directory", dir, e))?;
    }
    ids.sort_unstable();

    let meta_path = dir.join(META_FILE);
    let meta: Meta<C> = match fs::read(&meta_path) {
        Ok(bytes) => {
            let payload = decode_meta(&bytes).map_err(|why| OpenError::corrupt(&meta_path, 0, why))?;
            from_payload(payload)
                .map_err(|e| OpenError::corrupt(&meta_path, 16, format!("cannot decode: {e}")))?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !ids.is_empty() {
                return Err(OpenError::MissingMeta {
                    dir: dir.to_path_buf(),
                    meta: meta_path,
                });
            }
            // A new directory. Writing the meta file now means that its absence later, next to
            // segments, is known to be damage rather than a new log.
            let fresh = Meta::<C> {
                vote: None,
                purged: None,
                committed: None,
            };
            let bytes = fresh
                .encode()
                .map_err(|e| OpenError::io("encode meta file", &meta_path, io::Error::other(e)))?;
            write_meta_file(dir, &bytes).map_err(|e| OpenError::io("write meta file", &meta_path, e))?;
            fresh
        }
        Err(e) => return Err(OpenError::io("read meta file", &meta_path, e)),
    };

    for pair in ids.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(OpenError::corrupt(
                segment_path(dir, pair[1]),
                0,
                format!(
                    "segment {} is missing between {} and {}",
                    pair[0] + 1,
                    segment_path(dir, pair[0]).display(),
                    segment_path(dir, pair[1]).display()
                ),
            ));
        }
    }

    if meta.purged.is_none() {
        if let Some(&first) = ids.first().filter(|&&id| id != 1) {
            // Segments are deleted only after a purge is recorded.
            return Err(OpenError::corrupt(
                segment_path(dir, first),
                0,
                format!(
                    "nothing was ever purged, yet the log starts at segment {first}: {} is missing",
                    segment_path(dir, 1).display()
                ),
            ));
        }
    }

    let mut replay = Replay::<C> {
        purged: meta.purged.clone(),
        max_index: BTreeMap::new(),
        live: VecDeque::new(),
        committed: None,
        prev_group: None,
        max_group: 0,
        records: 0,
    };
    let mut segments = BTreeMap::new();
    // (id, path, end of the log in it, sealed, torn range, file length) of the last segment.
    let mut last = None;
    for (n, &id) in ids.iter().enumerate() {
        let is_last = n + 1 == ids.len();
        let path = segment_path(dir, id);
        let data = fs::read(&path).map_err(|e| OpenError::io("read segment", &path, e))?;
        let (end, sealed, torn) = replay.segment(&path, id, &data, is_last)?;
        let file = OpenOptions::new()
            .read(true)
            .write(is_last)
            .open(&path)
            .map_err(|e| OpenError::io("open segment", &path, e))?;
        segments.insert(id, Arc::new(file));
        if is_last {
            last = Some((id, path, end, sealed, torn, data.len() as u64));
        }
    }

    let purged = meta.purged.clone();
    let mut live = replay.live;
    if let Some(p) = &purged {
        while live.front().is_some_and(|(id, _)| id.index <= p.index) {
            live.pop_front();
        }
        if let Some((first, loc)) = live.front() {
            if first.index != p.index + 1 {
                return Err(OpenError::corrupt(
                    segment_path(dir, loc.segment),
                    loc.offset,
                    format!(
                        "the log continues at entry {first} but the meta file says it was purged only up to {p}: \
                         entries {} to {} are missing",
                        p.index + 1,
                        first.index - 1
                    ),
                ));
            }
            if first.leader_id < p.leader_id {
                return Err(OpenError::corrupt(
                    segment_path(dir, loc.segment),
                    loc.offset,
                    format!("entry {first} is older than the purged log id {p} recorded in the meta file"),
                ));
            }
        }
    }

    let last_log_id = live.back().map(|(id, _)| id.clone()).or_else(|| purged.clone());
    let mut committed = std::cmp::max(meta.committed.clone(), replay.committed);
    if let Some(c) = &committed {
        if last_log_id.as_ref().is_none_or(|last| c.index > last.index) {
            // Unreachable by construction (a hint is written after the entries it covers), but a
            // hint must never claim more than the log holds.
            tracing::warn!(committed = %c, "kvlog: the committed hint is ahead of the log; ignoring it");
            committed = None;
        }
    }

    // Everything checked out. Only now change files, so that a refused open leaves them as
    // they were.
    let mut repair = None;
    let (active_id, active_offset) = match last {
        Some((id, path, end, sealed, torn, len)) => {
            let file = segments
                .get(&id)
                .cloned()
                .expect("the last segment was opened above");
            if let Some((from, to)) = torn {
                zero_range(&file, from, to).map_err(|e| OpenError::io("repair torn tail of", &path, e))?;
                tracing::warn!(
                    path = %path.display(), offset = from, bytes = to - from,
                    "kvlog: cut off a torn write at the end of the log"
                );
                repair = Some(TailRepair {
                    path: path.clone(),
                    offset: from,
                    bytes: to - from,
                });
            }
            if len < options.segment_size {
                // A shortened file (copied, or cut by hand) gets its preallocation back.
                preallocate(&file, options.segment_size)
                    .map_err(|e| OpenError::io("preallocate", &path, e))?;
                file.sync_all().map_err(|e| OpenError::io("sync", &path, e))?;
            }
            if sealed {
                // The process died between sealing this segment and creating the next.
                let next = segment_path(dir, id + 1);
                let file = create_segment(
                    dir,
                    id + 1,
                    replay.max_group + 1,
                    options.segment_size,
                    options.zero_fill_segments,
                )
                .map_err(|e| OpenError::io("create segment", &next, e))?;
                segments.insert(id + 1, Arc::new(file));
                (id + 1, SEGMENT_HEADER_LEN)
            } else {
                (id, end)
            }
        }
        None => {
            let path = segment_path(dir, 1);
            let file = create_segment(dir, 1, 1, options.segment_size, options.zero_fill_segments)
                .map_err(|e| OpenError::io("create segment", &path, e))?;
            segments.insert(1, Arc::new(file));
            (1, SEGMENT_HEADER_LEN)
        }
    };
    let next_group = replay.max_group + 1;

    // Finish a purge that the meta file records but whose segments were not all deleted: the
    // same rule as the writer's, oldest first, every entry record at or below the purge point.
    if let Some(p) = &purged {
        let doomed: Vec<u64> = replay
            .max_index
            .iter()
            .filter(|(id, _)| **id < active_id)
            .take_while(|(_, max)| max.is_none_or(|m| m <= p.index))
            .map(|(id, _)| *id)
            .collect();
        if !doomed.is_empty() {
            for id in doomed {
                let path = segment_path(dir, id);
                fs::remove_file(&path).map_err(|e| OpenError::io("delete purged segment", &path, e))?;
                segments.remove(&id);
            }
            sync_dir(dir).map_err(|e| OpenError::io("sync log directory", dir, e))?;
        }
    }

    let mut max_index = replay.max_index;
    max_index.retain(|id, _| segments.contains_key(id));
    for id in segments.keys() {
        max_index.entry(*id).or_insert(None);
    }

    let pristine = meta.vote.is_none()
        && meta.purged.is_none()
        && meta.committed.is_none()
        && replay.records == 0
        && repair.is_none();
    Ok(Opened {
        lock,
        vote: meta.vote,
        purged,
        committed,
        entries: live.into_iter().collect(),
        segments,
        active_id,
        active_offset,
        next_group,
        max_index,
        pristine,
        repair,
    })
}

/// Writes zeros over `from..to` and makes that durable.
fn zero_range(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1024 * 1024];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_data()
}

/// Replay state carried from record to record and from segment to segment.
struct Replay<C: RaftTypeConfig> {
    /// The purged log id from the meta file.
    purged: Option<LogIdOf<C>>,
    /// Per segment, the highest index of any entry record in it.
    max_index: BTreeMap<u64, Option<u64>>,
    live: VecDeque<(LogIdOf<C>, Loc)>,
    committed: Option<LogIdOf<C>>,
    /// (sequence, start offset, segment) of the last group seen.
    prev_group: Option<(u64, u64, u64)>,
    max_group: u64,
    /// Intact records seen, of any kind.
    records: u64,
}

/// (offset where the next write goes, sealed, torn byte range to zero).
type SegmentEnd = (u64, bool, Option<(u64, u64)>);

impl<C: RaftTypeConfig> Replay<C> {
    /// Replays one segment file.
    fn segment(&mut self, path: &Path, id: u64, data: &[u8], is_last: bool) -> Result<SegmentEnd, OpenError> {
        let (header_id, first_group) =
            decode_segment_header(data).map_err(|why| OpenError::corrupt(path, 0, why))?;
        if header_id != id {
            return Err(OpenError::corrupt(
                path,
                0,
                format!("the header says this is segment {header_id}, but the file name says {id}"),
            ));
        }
        if let Some((prev, _, _)) = self.prev_group {
            if first_group <= prev {
                return Err(OpenError::corrupt(
                    path,
                    0,
                    format!("the segment starts at write group {first_group}, not after group {prev} of the segment before"),
                ));
            }
        }
        self.max_group = self.max_group.max(first_group.saturating_sub(1));
        self.max_index.insert(id, None);

        let mut pos = SEGMENT_HEADER_LEN as usize;
        let damage: Option<&'static str> = loop {
            match decode_record(data, pos) {
                Decoded::Record(header, payload) => {
                    let at = pos as u64;
                    let sealed = self
                        .record(id, at, first_group, header, payload)
                        .map_err(|why| OpenError::corrupt(path, at, why))?;
                    pos += record_len(payload.len());
                    if sealed {
                        if is_last {
                            // The crash came between sealing this segment and creating the
                            // next; the caller creates it. What follows the seal must be zeros.
                            let torn = self.tail(path, id, data, pos, None)?;
                            return Ok((pos as u64, true, torn));
                        }
                        return Ok((pos as u64, true, None));
                    }
                }
                Decoded::End => break None,
                Decoded::Damaged(why) => break Some(why),
            }
        };
        if !is_last {
            let reason = match damage {
                Some(why) => format!("{why}; later segments exist, so this is not a torn write"),
                None => "the segment ends without a seal record although later segments exist".to_string(),
            };
            return Err(OpenError::corrupt(path, pos as u64, reason));
        }
        let torn = self.tail(path, id, data, pos, damage)?;
        Ok((pos as u64, false, torn))
    }

    /// Applies one intact record; returns whether it seals the segment.
    fn record(
        &mut self,
        segment: u64,
        offset: u64,
        first_group: u64,
        header: crate::format::RecordHeader,
        payload: &[u8],
    ) -> Result<bool, String> {
        self.check_group(segment, offset, first_group, header)?;
        self.records += 1;
        let kind = RecordKind::from_byte(header.kind).ok_or_else(|| {
            format!(
                "unknown record kind {} (written by a newer version?)",
                header.kind
            )
        })?;
        match kind {
            RecordKind::Entry => {
                let entry: C::Entry =
                    from_payload(payload).map_err(|e| format!("cannot decode the log entry: {e}"))?;
                let log_id = entry.log_id();
                if let Some((last, _)) = self.live.back() {
                    let follows = log_id.index == last.index + 1;
                    // A forward jump is how the log continues after a purge past its end (a
                    // snapshot install). Only a purge recorded in the meta file explains one, and
                    // only when everything before the jump is purged. The new entry may itself be
                    // purged by a later purge; the final check against the purge point catches a
                    // hole either way.
                    let past_purge = log_id.index > last.index + 1
                        && self.purged.as_ref().is_some_and(|p| last.index <= p.index);
                    if follows || past_purge {
                        if log_id.leader_id < last.leader_id {
                            return Err(format!(
                                "entry {log_id} goes back to an older leader than entry {last}"
                            ));
                        }
                        if !follows {
                            // Everything live so far is purged; the log continued after the purge.
                            self.live.clear();
                        }
                    } else {
                        return Err(format!("entry {log_id} does not follow entry {last}"));
                    }
                }
                let seg_max = self.max_index.entry(segment).or_insert(None);
                *seg_max = Some(seg_max.map_or(log_id.index, |m| m.max(log_id.index)));
                let len = payload.len() as u32;
                self.live.push_back((log_id, Loc { segment, offset, len }));
                Ok(false)
            }
            RecordKind::Truncate => {
                let after: Option<LogIdOf<C>> =
                    from_payload(payload).map_err(|e| format!("cannot decode the truncation marker: {e}"))?;
                let keep = after.map(|a| a.index);
                while self
                    .live
                    .back()
                    .is_some_and(|(id, _)| keep.is_none_or(|k| id.index > k))
                {
                    self.live.pop_back();
                }
                Ok(false)
            }
            RecordKind::Committed => {
                self.committed =
                    from_payload(payload).map_err(|e| format!("cannot decode the committed hint: {e}"))?;
                Ok(false)
            }
            RecordKind::Seal => {
                let next: u64 =
                    from_payload(payload).map_err(|e| format!("cannot decode the seal record: {e}"))?;
                if next != segment + 1 {
                    return Err(format!(
                        "the seal record points at segment {next}, not {}",
                        segment + 1
                    ));
                }
                Ok(true)
            }
        }
    }

    /// Checks that the record fits the group structure: a group starts where its first record
    /// is, with a sequence number above every earlier group, and its later records repeat both.
    fn check_group(
        &mut self,
        segment: u64,
        offset: u64,
        first_group: u64,
        header: crate::format::RecordHeader,
    ) -> Result<(), String> {
        if header.group_start == offset {
            let floor = match self.prev_group {
                Some((seq, _, _)) => seq + 1,
                None => 0,
            }
            .max(first_group);
            if header.group < floor {
                return Err(format!(
                    "write group {} starts here, but groups up to {} came before",
                    header.group,
                    floor - 1
                ));
            }
        } else {
            match self.prev_group {
                Some((seq, start, seg)) if seg == segment && seq == header.group && start == header.group_start => {}
                _ => {
                    return Err(format!(
                        "the record claims to continue write group {} begun at offset {}, which is not the group before it",
                        header.group, header.group_start
                    ))
                }
            }
        }
        self.prev_group = Some((header.group, header.group_start, segment));
        self.max_group = self.max_group.max(header.group);
        Ok(())
    }

    /// Decides what follows the end of the readable log at `end` in the last segment. Returns
    /// the byte range to zero when something is there that belongs to an interrupted write; an
    /// intact record of a group that began after `end` proves the damage is not a torn write.
    fn tail(
        &self,
        path: &Path,
        segment: u64,
        data: &[u8],
        end: usize,
        damage: Option<&'static str>,
    ) -> Result<Option<(u64, u64)>, OpenError> {
        let Some(last_nonzero) = data
            .get(end..)
            .and_then(|rest| rest.iter().rposition(|b| *b != 0))
        else {
            return Ok(None);
        };
        let stop = end + last_nonzero + 1;
        // The group that was being written: the one the last intact record belongs to, or one
        // starting exactly at `end`.
        let current = self.prev_group.filter(|(_, _, seg)| *seg == segment);
        let mut pos = end + ALIGN;
        while pos + RECORD_HEADER_LEN <= stop {
            if let Decoded::Record(header, payload) = decode_record(data, pos) {
                let same_group =
                    current.is_some_and(|(seq, start, _)| header.group == seq && header.group_start == start);
                let starts_at_end =
                    header.group_start == end as u64 && current.is_none_or(|(seq, _, _)| header.group > seq);
                if !(same_group || starts_at_end) {
                    let what = damage.unwrap_or("the log ends (zeros)");
                    return Err(OpenError::corrupt(
                        path,
                        end as u64,
                        format!(
                            "{what} here, but an intact record of write group {} (begun at offset {}) follows at offset {pos}; \
                             data written after this point was durable, so this is damage, not a torn write",
                            header.group, header.group_start
                        ),
                    ));
                }
                pos += record_len(payload.len());
            } else {
                pos += ALIGN;
            }
        }
        Ok(Some((end as u64, stop.div_ceil(ALIGN) as u64 * ALIGN as u64)))
    }
}

#[cfg(test)]
mod tests {
    //! Replay rules on hand-made segments: records that pass their checksums but could not have
    //! been written by this store in this order must be refused, not repaired.

    use super::*;
    use crate::format::{encode_record, encode_segment_header};
    use openraft::vote::RaftLeaderIdExt;

    openraft::declare_raft_types!(TestConfig);
    type C = TestConfig;

    fn log_id(term: u64, index: u64) -> LogIdOf<C> {
        openraft::LogId {
            leader_id: <C as RaftTypeConfig>::LeaderId::new_committed(term, 1),
            index,
        }
    }

    enum Rec {
        Entry(u64, u64),
        Truncate(Option<(u64, u64)>),
        /// (kind byte, group)
        Raw(u8, u64),
    }

    /// Writes a directory with one segment holding `recs`, each its own write group (unless
    /// `Raw` says otherwise), and a meta file with `purged`.
    fn make_dir(recs: &[Rec], purged: Option<(u64, u64)>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut data = encode_segment_header(1, 1).to_vec();
        for (n, rec) in recs.iter().enumerate() {
            let start = data.len() as u64;
            let group = n as u64 + 1;
            match rec {
                Rec::Entry(term, index) => {
                    let entry = <C as RaftTypeConfig>::Entry::new_blank(log_id(*term, *index));
                    let payload = to_payload(&entry).expect("encode");
                    encode_record(&mut data, RecordKind::Entry, group, start, &payload);
                }
                Rec::Truncate(after) => {
                    let after = after.map(|(t, i)| log_id(t, i));
                    let payload = to_payload(&after).expect("encode");
                    encode_record(&mut data, RecordKind::Truncate, group, start, &payload);
                }
                Rec::Raw(kind, group) => {
                    let payload = to_payload(&None::<LogIdOf<C>>).expect("encode");
                    encode_record(&mut data, RecordKind::Committed, *group, start, &payload);
                    // Rewrite the kind byte and the header checksum, as a future version might.
                    let at = start as usize;
                    data[at + 24] = *kind;
                    let crc = crc32fast::hash(&data[at..at + 28]);
                    data[at + 28..at + 32].copy_from_slice(&crc.to_le_bytes());
                }
            }
        }
        data.resize(8192, 0);
        std::fs::write(crate::segment::segment_path(dir.path(), 1), data).expect("write segment");
        let meta = Meta::<C> {
            vote: None,
            purged: purged.map(|(t, i)| log_id(t, i)),
            committed: None,
        };
        std::fs::write(dir.path().join(META_FILE), meta.encode().expect("encode meta")).expect("write meta");
        dir
    }

    fn options() -> LogStoreOptions {
        LogStoreOptions {
            segment_size: 8192,
            ..LogStoreOptions::default()
        }
    }

    fn open(dir: &tempfile::TempDir) -> Result<Opened<C>, OpenError> {
        open_dir::<C>(dir.path(), &options())
    }

    fn corrupt_reason(dir: &tempfile::TempDir) -> String {
        match open(dir) {
            Err(OpenError::Corrupt { reason, .. }) => reason,
            Err(other) => panic!("expected Corrupt, got {other}"),
            Ok(opened) => panic!("opened with {} entries", opened.entries.len()),
        }
    }

    fn indexes(opened: &Opened<C>) -> Vec<u64> {
        opened.entries.iter().map(|(id, _)| id.index).collect()
    }

    #[test]
    fn a_gap_is_refused() {
        let dir = make_dir(&[Rec::Entry(1, 1), Rec::Entry(1, 2), Rec::Entry(1, 4)], None);
        assert!(corrupt_reason(&dir).contains("does not follow"));
    }

    #[test]
    fn going_back_to_an_older_leader_is_refused() {
        let dir = make_dir(&[Rec::Entry(2, 1), Rec::Entry(1, 2)], None);
        assert!(corrupt_reason(&dir).contains("older leader"));
    }

    #[test]
    fn an_entry_that_repeats_an_index_without_a_truncation_is_refused() {
        let dir = make_dir(&[Rec::Entry(1, 1), Rec::Entry(1, 2), Rec::Entry(2, 2)], None);
        assert!(corrupt_reason(&dir).contains("does not follow"));
        let dir = make_dir(
            &[
                Rec::Entry(1, 1),
                Rec::Entry(1, 2),
                Rec::Truncate(Some((1, 1))),
                Rec::Entry(2, 2),
            ],
            None,
        );
        let opened = open(&dir).expect("a truncation makes room");
        assert_eq!(opened.entries.last().map(|(id, _)| *id), Some(log_id(2, 2)));
    }

    #[test]
    fn a_jump_is_allowed_only_past_the_purge_point() {
        let recs = [
            Rec::Entry(1, 1),
            Rec::Entry(1, 2),
            Rec::Entry(1, 3),
            Rec::Entry(2, 6),
            Rec::Entry(2, 7),
        ];
        let opened = open(&make_dir(&recs, Some((2, 5)))).expect("jump past the purge");
        assert_eq!(indexes(&opened), vec![6, 7]);
        // A later purge may have covered the start of what followed the jump too.
        let opened = open(&make_dir(&recs, Some((2, 6)))).expect("jump, then a purge beyond it");
        assert_eq!(indexes(&opened), vec![7]);
        // Backwards is never a jump: that needs a truncation marker.
        let back = [
            Rec::Entry(1, 1),
            Rec::Entry(1, 2),
            Rec::Entry(1, 3),
            Rec::Entry(2, 2),
        ];
        assert!(corrupt_reason(&make_dir(&back, Some((1, 3)))).contains("does not follow"));
        assert!(corrupt_reason(&make_dir(&recs, Some((1, 2)))).contains("does not follow"));
    }

    #[test]
    fn group_numbers_going_backwards_are_refused() {
        let dir = make_dir(&[Rec::Entry(1, 1), Rec::Raw(3, 5), Rec::Raw(3, 4)], None);
        assert!(corrupt_reason(&dir).contains("write group"));
    }

    #[test]
    fn an_unknown_record_kind_is_refused_not_cut_off() {
        let dir = make_dir(&[Rec::Entry(1, 1), Rec::Raw(9, 2)], None);
        assert!(corrupt_reason(&dir).contains("unknown record kind"));
    }

    #[test]
    fn a_committed_hint_ahead_of_the_log_is_dropped() {
        let dir = make_dir(&[Rec::Entry(1, 1)], None);
        let meta = Meta::<C> {
            vote: None,
            purged: None,
            committed: Some(log_id(1, 9)),
        };
        std::fs::write(dir.path().join(META_FILE), meta.encode().expect("encode meta")).expect("write meta");
        let opened = open(&dir).expect("open");
        assert_eq!(opened.committed, None);
    }
}
