//! Snapshot files: one complete copy of the state machine at a log id, streamed to and from
//! disk in a compact binary form.
//!
//! ```text
//! "KVSNAP2\n"
//! u32 header length, header (MessagePack: snapshot meta, log time, counts)
//! per key:     u32 key length, key, u64 create index, u64 mod index, u64 version,
//!              u32 value length, value as JSON text
//! per segment of the idempotency table (the last one is the active segment):
//!              u64 first, u64 last (log time), u64 newest key time, u64 record count, then
//!              per record: u128 idempotency key, u64 fingerprint, outcome (11 bytes)
//! u32 CRC-32 of every byte before it
//! ```
//!
//! Integers are little-endian. Values stay JSON text inside the binary frame: it is the one
//! encoding that carries any `serde_json::Value` exactly, and it is what clients sent.
//!
//! A file is written under a unique temporary name, fsynced, and only then published under its
//! final name (`<index>-<term>-<node>.snap`, see [`SnapshotDir`]), with the directory fsynced
//! after the rename. Publishing never replaces a newer snapshot with an older one. Readers and
//! writers stream: a snapshot of a million keys is never held in memory as one buffer, and the
//! whole state is never serialized while a lock is held (the caller hands over a frozen clone).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::idem::{IdemRecord, Segment};
use crate::state::{KvState, LogClock, StateMeta, Stored};
use crate::types::{IdemKey, JsonType, LogId, OpOutcome, SnapshotMeta};

const MAGIC: &[u8] = b"KVSNAP2\n";
const SUFFIX: &str = "snap";
const TEMP_SUFFIX: &str = "part";
/// Largest header accepted when reading; a bigger length means a damaged file.
const MAX_HEADER: u32 = 16 * 1024 * 1024;

/// Why a snapshot file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing failed.
    #[error("snapshot file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is damaged or not a snapshot.
    #[error("snapshot file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl From<SnapshotError> for std::io::Error {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Io { source, .. } => source,
            corrupt => std::io::Error::new(std::io::ErrorKind::InvalidData, corrupt.to_string()),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    meta: SnapshotMeta,
    clock_now_ms: u64,
    clock_last_stamp_ms: u64,
    horizon_ms: u64,
    keys: u64,
    segments: u64,
}

/// A snapshot file opened for reading or sending: the snapshot data openraft moves around.
#[derive(Debug)]
pub struct SnapshotFile {
    /// Where it is (it may be unlinked by a newer snapshot meanwhile; the open file stays valid).
    pub path: PathBuf,
    /// The open file, positioned at its start.
    pub file: File,
    /// Its size in bytes.
    pub len: u64,
}

impl SnapshotFile {
    /// Open `path` for reading.
    pub fn open(path: &Path) -> Result<SnapshotFile, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        Ok(SnapshotFile {
            path: path.to_path_buf(),
            file,
            len,
        })
    }
}

/// The directory of snapshot files of one node.
#[derive(Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
    seq: AtomicU64,
}

impl SnapshotDir {
    /// Use (creating when absent) `dir`; leftovers of interrupted writes are removed.
    pub fn open(dir: &Path) -> Result<SnapshotDir, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == TEMP_SUFFIX) {
                std::fs::remove_file(&path).map_err(io)?;
            }
        }
        Ok(SnapshotDir {
            dir: dir.to_path_buf(),
            seq: AtomicU64::new(0),
        })
    }

    /// A fresh temporary path in this directory; no two calls return the same one.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("tmp-{}-{n}.{TEMP_SUFFIX}", std::process::id()))
    }

    /// The final name of the snapshot at `log_id`.
    fn final_path(&self, log_id: Option<&LogId>) -> PathBuf {
        let name = match log_id {
            Some(l) => format!(
                "{:020}-{}-{}.{SUFFIX}",
                l.index, l.leader_id.term, l.leader_id.node_id
            ),
            None => format!("{:020}-0-0.{SUFFIX}", 0),
        };
        self.dir.join(name)
    }

    /// True when a snapshot is published here (without reading any file).
    pub fn any(&self) -> std::io::Result<bool> {
        for entry in std::fs::read_dir(&self.dir)? {
            if entry?.path().extension().is_some_and(|e| e == SUFFIX) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Published snapshot files, newest last, with their metadata (read from each header).
    pub fn list(&self) -> Result<Vec<(SnapshotMeta, PathBuf)>, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == SUFFIX) {
                let meta = read_meta(&path)?;
                found.push((meta, path));
            }
        }
        found.sort_by_key(|(meta, _)| meta.last_log_id);
        Ok(found)
    }

    /// Make the complete, fsynced file at `temp` the snapshot for `meta`, unless a snapshot at
    /// the same or a newer log id is already published: then `temp` is removed. Older snapshots
    /// are removed once the new one is durable. Returns the published path, or `None` when an
    /// equal or newer one won.
    pub fn publish(&self, meta: &SnapshotMeta, temp: &Path) -> Result<Option<PathBuf>, SnapshotError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SnapshotError::Io { path, source }
        };
        let existing = self.list()?;
        if existing
            .last()
            .is_some_and(|(newest, _)| newest.last_log_id >= meta.last_log_id)
        {
            std::fs::remove_file(temp).map_err(io(temp))?;
            return Ok(None);
        }
        let target = self.final_path(meta.last_log_id.as_ref());
        std::fs::rename(temp, &target).map_err(io(&target))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        for (_, old) in existing {
            // Readers that still hold an old file open keep reading it after the unlink.
            std::fs::remove_file(&old).map_err(io(&old))?;
        }
        Ok(Some(target))
    }
}

/// Read only the metadata of a snapshot file.
pub fn read_meta(path: &Path) -> Result<SnapshotMeta, SnapshotError> {
    let file = File::open(path).map_err(|source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut r = CrcReader::new(BufReader::new(file), path);
    Ok(r.header()?.meta)
}

/// Write `state` (frozen at `meta`) to a new file at `path` and fsync it; returns its size.
/// Blocking.
pub fn write(path: &Path, meta: &SnapshotMeta, state: &KvState) -> Result<u64, SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create_new(path).map_err(io)?;
    let mut w = CrcWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
        len: 0,
    };
    write_body(&mut w, meta, state).map_err(io)?;
    let crc = w.crc.clone().finalize();
    w.write_all(&crc.to_le_bytes()).map_err(io)?;
    let len = w.len;
    let file = w.inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(len)
}

fn write_body(w: &mut impl Write, meta: &SnapshotMeta, state: &KvState) -> std::io::Result<()> {
    let StateMeta { clock, horizon_ms } = state.meta();
    let header = Header {
        meta: meta.clone(),
        clock_now_ms: clock.now_ms,
        clock_last_stamp_ms: clock.last_stamp_ms,
        horizon_ms,
        keys: state.len() as u64,
        segments: state.idempotency_segments().count() as u64,
    };
    let header = rmp_serde::to_vec_named(&header)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    w.write_all(MAGIC)?;
    w.write_all(&(header.len() as u32).to_le_bytes())?;
    w.write_all(&header)?;
    let mut value = Vec::new();
    for (key, stored) in state.entries() {
        value.clear();
        serde_json::to_writer(&mut value, &stored.value)?;
        w.write_all(&(key.len() as u32).to_le_bytes())?;
        w.write_all(key.as_bytes())?;
        w.write_all(&stored.create_index.to_le_bytes())?;
        w.write_all(&stored.mod_index.to_le_bytes())?;
        w.write_all(&stored.version.to_le_bytes())?;
        w.write_all(&(value.len() as u32).to_le_bytes())?;
        w.write_all(&value)?;
    }
    for segment in state.idempotency_segments() {
        w.write_all(&segment.first_ms.to_le_bytes())?;
        w.write_all(&segment.last_ms.to_le_bytes())?;
        w.write_all(&segment.newest_key_ms.to_le_bytes())?;
        w.write_all(&(segment.len() as u64).to_le_bytes())?;
        for (key, record) in segment.records() {
            w.write_all(&key.0.to_le_bytes())?;
            w.write_all(&record.fingerprint.to_le_bytes())?;
            w.write_all(&encode_outcome(record.outcome))?;
        }
    }
    Ok(())
}

/// Read a whole snapshot file: its metadata and the state, checking the checksum. Blocking.
pub fn read(path: &Path) -> Result<(SnapshotMeta, KvState), SnapshotError> {
    let file = File::open(path).map_err(|source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_from(file, path)
}

/// Read a whole snapshot from an open file (see [`read`]).
pub fn read_from(file: File, path: &Path) -> Result<(SnapshotMeta, KvState), SnapshotError> {
    let mut r = CrcReader::new(BufReader::with_capacity(1 << 20, file), path);
    let header = r.header()?;
    let mut entries = Vec::with_capacity(header.keys.min(1 << 24) as usize);
    for _ in 0..header.keys {
        let key_len = r.u32()?;
        let key = String::from_utf8(r.bytes(key_len)?).map_err(|_| r.corrupt("a key is not UTF-8"))?;
        let create_index = r.u64()?;
        let mod_index = r.u64()?;
        let version = r.u64()?;
        let value_len = r.u32()?;
        let value = serde_json::from_slice(&r.bytes(value_len)?)
            .map_err(|e| r.corrupt(&format!("the value of {key:?} is not JSON: {e}")))?;
        entries.push((
            key,
            Stored {
                value,
                create_index,
                mod_index,
                version,
            },
        ));
    }
    let mut segments = Vec::with_capacity(header.segments.min(1 << 16) as usize);
    for _ in 0..header.segments {
        let first_ms = r.u64()?;
        let last_ms = r.u64()?;
        let newest_key_ms = r.u64()?;
        let count = r.u64()?;
        let mut records = Vec::with_capacity(count.min(1 << 20) as usize);
        for _ in 0..count {
            let key = IdemKey(u128::from_le_bytes(r.array()?));
            let fingerprint = r.u64()?;
            let outcome = decode_outcome(&r.array()?).ok_or_else(|| r.corrupt("an outcome is not valid"))?;
            records.push((key, IdemRecord { fingerprint, outcome }));
        }
        segments.push(Segment::from_parts(first_ms, last_ms, newest_key_ms, records));
    }
    let computed = r.crc.clone().finalize();
    let mut stored = [0u8; 4];
    r.inner
        .read_exact(&mut stored)
        .map_err(|_| r.corrupt("it ends before its checksum"))?;
    if u32::from_le_bytes(stored) != computed {
        return Err(r.corrupt("its checksum does not match"));
    }
    let mut rest = [0u8; 1];
    if r.inner.read(&mut rest).map_err(|e| r.io(e))? != 0 {
        return Err(r.corrupt("it has bytes after its checksum"));
    }
    let meta = StateMeta {
        clock: LogClock {
            now_ms: header.clock_now_ms,
            last_stamp_ms: header.clock_last_stamp_ms,
        },
        horizon_ms: header.horizon_ms,
    };
    Ok((header.meta, KvState::from_parts(entries, segments, meta)))
}

fn encode_outcome(o: OpOutcome) -> [u8; 11] {
    let mut b = [0u8; 11];
    let (kind, index, x, y) = match o {
        OpOutcome::Applied { index } => (1, index, 0, 0),
        OpOutcome::NotFound { index } => (2, index, 0, 0),
        OpOutcome::TypeConflict { existing, appended } => (3, 0, type_code(existing), type_code(appended)),
        OpOutcome::IdempotencyKeyReused => (4, 0, 0, 0),
        OpOutcome::IdempotencyKeyExpired => (5, 0, 0, 0),
        OpOutcome::IdempotencyKeyFromFuture => (6, 0, 0, 0),
    };
    b[0] = kind;
    b[1..9].copy_from_slice(&index.to_le_bytes());
    b[9] = x;
    b[10] = y;
    b
}

fn decode_outcome(b: &[u8; 11]) -> Option<OpOutcome> {
    let mut index = [0u8; 8];
    index.copy_from_slice(&b[1..9]);
    let index = u64::from_le_bytes(index);
    Some(match b[0] {
        1 => OpOutcome::Applied { index },
        2 => OpOutcome::NotFound { index },
        3 => OpOutcome::TypeConflict {
            existing: type_of_code(b[9])?,
            appended: type_of_code(b[10])?,
        },
        4 => OpOutcome::IdempotencyKeyReused,
        5 => OpOutcome::IdempotencyKeyExpired,
        6 => OpOutcome::IdempotencyKeyFromFuture,
        _ => return None,
    })
}

const TYPES: [JsonType; 6] = [
    JsonType::Null,
    JsonType::Boolean,
    JsonType::Number,
    JsonType::String,
    JsonType::List,
    JsonType::Object,
];

fn type_code(t: JsonType) -> u8 {
    TYPES.iter().position(|x| *x == t).unwrap_or(0) as u8
}

fn type_of_code(c: u8) -> Option<JsonType> {
    TYPES.get(usize::from(c)).copied()
}

struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct CrcReader<'p, R> {
    inner: R,
    crc: crc32fast::Hasher,
    path: &'p Path,
}

impl<'p, R: Read> CrcReader<'p, R> {
    fn new(inner: R, path: &'p Path) -> Self {
        CrcReader {
            inner,
            crc: crc32fast::Hasher::new(),
            path,
        }
    }

    fn corrupt(&self, reason: &str) -> SnapshotError {
        SnapshotError::Corrupt {
            path: self.path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    fn io(&self, source: std::io::Error) -> SnapshotError {
        SnapshotError::Io {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.corrupt("it ends early (truncated)")
            } else {
                self.io(e)
            }
        })?;
        self.crc.update(buf);
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut b = [0u8; N];
        self.fill(&mut b)?;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn bytes(&mut self, len: u32) -> Result<Vec<u8>, SnapshotError> {
        let mut b = vec![0u8; len as usize];
        self.fill(&mut b)?;
        Ok(b)
    }

    fn header(&mut self) -> Result<Header, SnapshotError> {
        let magic: [u8; 8] = self
            .array()
            .map_err(|_| self.corrupt("it is too short to be a snapshot"))?;
        if magic != MAGIC {
            return Err(self.corrupt("it does not start with the snapshot marker"));
        }
        let len = self.u32()?;
        if len > MAX_HEADER {
            return Err(self.corrupt("its header length is implausible"));
        }
        let bytes = self.bytes(len)?;
        rmp_serde::from_slice(&bytes).map_err(|e| self.corrupt(&format!("its header is not valid: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Batch, Command, Op};
    use serde_json::json;

    fn sample() -> KvState {
        let mut s = KvState::default();
        let key = |t: u64| IdemKey((u128::from(1_700_000_000_000 + t) << 80) | (7u128 << 76) | 5);
        s.apply_batch(
            3,
            &Batch {
                ts_ms: 1_700_000_000_000,
                ops: vec![
                    Op {
                        key: "a".into(),
                        cmd: Command::Put(json!({"x": [1, 2.5, "é"]})),
                        idem: Some(key(0)),
                    },
                    Op {
                        key: "n".into(),
                        cmd: Command::Put(json!(5)),
                        idem: None,
                    },
                    Op {
                        key: "n".into(),
                        cmd: Command::Append(json!("s")),
                        idem: Some(key(1)),
                    },
                ],
            },
        );
        s
    }

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(
                openraft::impls::leader_id_adv::LeaderId { term: 2, node_id: 1 },
                3,
            )),
            last_membership: Default::default(),
        }
    }

    #[test]
    fn a_snapshot_round_trips_and_damage_is_detected() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("s.snap");
        let state = sample();
        write(&path, &meta(), &state).expect("write");
        let (m, back) = read(&path).expect("read");
        assert_eq!(m, meta());
        assert_eq!(back, state);
        assert_eq!(read_meta(&path).expect("meta"), meta());

        let bytes = std::fs::read(&path).expect("bytes");
        let mut flipped = bytes.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        std::fs::write(&path, &flipped).expect("write");
        assert!(matches!(read(&path), Err(SnapshotError::Corrupt { .. })));
        std::fs::write(&path, &bytes[..bytes.len() - 9]).expect("write");
        let err = read(&path).expect_err("truncated");
        assert!(err.to_string().contains("ends"), "{err}");
    }

    #[test]
    fn publishing_never_replaces_a_newer_snapshot() {
        let dir = tempfile::tempdir().expect("tmp");
        let snaps = SnapshotDir::open(dir.path()).expect("open");
        let at = |index: u64| SnapshotMeta {
            last_log_id: Some(LogId::new(
                openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 0 },
                index,
            )),
            last_membership: Default::default(),
        };
        let make = |m: &SnapshotMeta| {
            let t = snaps.temp_path();
            write(&t, m, &sample()).expect("write");
            t
        };
        let (t5, t9, t7) = (make(&at(5)), make(&at(9)), make(&at(7)));
        assert_ne!(t5, t9, "temporary names are unique");
        assert!(snaps.publish(&at(5), &t5).expect("publish").is_some());
        assert!(snaps.publish(&at(9), &t9).expect("publish").is_some());
        assert!(
            snaps.publish(&at(7), &t7).expect("publish").is_none(),
            "older loses"
        );
        assert!(!t7.exists());
        let listed = snaps.list().expect("list");
        assert_eq!(listed.len(), 1, "older files are removed");
        assert_eq!(listed[0].0, at(9));
        // A leftover temporary file is removed when the directory is opened again.
        let stray = snaps.temp_path();
        std::fs::write(&stray, b"half").expect("write");
        SnapshotDir::open(dir.path()).expect("reopen");
        assert!(!stray.exists());
    }
}
