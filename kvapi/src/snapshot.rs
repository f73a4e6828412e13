//! Reading the summary of a snapshot file without loading it: what `kvctl snapshot status`
//! prints and what `kvctl snapshot save` checks before it keeps a download.
//!
//! A snapshot file (written by kvnode, streamed by `GET /admin/snapshot`) is
//!
//! ```text
//! "KVSNAP2\n"
//! u32 header length, header (MessagePack map: meta {last_log_id, last_membership}, keys,
//!                            segments, log clock)
//! per key:     u32 key length, key, u64 create index, u64 mod index, u64 version,
//!              u32 value length, value as JSON text
//! per segment of the idempotency table:
//!              u64, u64, u64, u64 record count, then 35 bytes per record
//! u32 CRC-32 of every byte before it
//! ```
//!
//! with little-endian integers. kvnode's `store::snapshot` writes and loads it; this module only
//! walks its frames, counting keys and checking the checksum, so a client can vouch for a file
//! without linking the server. A test in kvnode runs both on one file, so they cannot drift
//! apart.

use std::io::{self, BufReader, Read};

use serde::{Deserialize, Serialize};

use crate::{LogIndex, NodeId, Term};

/// The first bytes of every snapshot file.
pub const MAGIC: &[u8] = b"KVSNAP2\n";
/// Largest header accepted; a bigger length means a damaged file.
const MAX_HEADER: u32 = 16 * 1024 * 1024;
/// Bytes per idempotency record: key, fingerprint, outcome.
const IDEM_RECORD_BYTES: u64 = 16 + 8 + 11;

/// What a snapshot file holds, as far as its frames tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The last log index the snapshot includes (`None`: an empty state machine).
    pub index: Option<LogIndex>,
    /// The term of the entry at `index`.
    pub term: Option<Term>,
    /// The ids of the members of the cluster it was taken from.
    pub members: Vec<NodeId>,
    /// Number of keys.
    pub keys: u64,
    /// Remembered idempotency keys (the exactly-once table).
    pub idempotency_records: u64,
    /// Size of the file in bytes.
    pub size: u64,
    /// The CRC-32 stored at the end of the file, as 8 hex digits.
    pub checksum: String,
}

/// Why a file is not a sound snapshot.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Reading failed.
    #[error("cannot read it: {0}")]
    Io(#[from] io::Error),
    /// It is damaged, truncated, or not a snapshot.
    #[error("{0}")]
    Corrupt(String),
}

#[derive(Deserialize)]
struct Header {
    meta: Meta,
    keys: u64,
    segments: u64,
}

#[derive(Deserialize)]
struct Meta {
    last_log_id: Option<LogId>,
    last_membership: Membership,
}

#[derive(Deserialize)]
struct LogId {
    leader_id: LeaderId,
    index: u64,
}

#[derive(Deserialize)]
struct LeaderId {
    term: u64,
}

#[derive(Deserialize)]
struct Membership {
    membership: MembershipConfig,
}

#[derive(Deserialize)]
struct MembershipConfig {
    configs: Vec<Vec<NodeId>>,
}

struct Walker<R> {
    inner: R,
    crc: crc32fast::Hasher,
    read: u64,
}

impl<R: Read> Walker<R> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), InspectError> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                InspectError::Corrupt(format!("it ends early, after {} bytes (truncated)", self.read))
            } else {
                InspectError::Io(e)
            }
        })?;
        self.crc.update(buf);
        self.read += buf.len() as u64;
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, InspectError> {
        let mut b = [0u8; 4];
        self.fill(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, InspectError> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Read and hash `len` bytes without keeping them.
    fn skip(&mut self, mut len: u64) -> Result<(), InspectError> {
        let mut buf = [0u8; 8192];
        while len > 0 {
            let n = len.min(buf.len() as u64) as usize;
            self.fill(&mut buf[..n])?;
            len -= n as u64;
        }
        Ok(())
    }
}

/// Walk a whole snapshot from `reader`: check its marker, header, every frame and its
/// checksum, and summarize it. Reads to the end; nothing is kept in memory but the header.
pub fn inspect(reader: impl Read) -> Result<Summary, InspectError> {
    let mut w = Walker {
        inner: BufReader::with_capacity(1 << 16, reader),
        crc: crc32fast::Hasher::new(),
        read: 0,
    };
    let corrupt = |m: &str| InspectError::Corrupt(m.to_string());
    let mut magic = [0u8; 8];
    w.fill(&mut magic)
        .map_err(|_| corrupt("it is too short to be a snapshot"))?;
    if magic != MAGIC {
        return Err(corrupt(
            "it does not start with the snapshot marker (not a kvnode snapshot)",
        ));
    }
    let len = w.u32()?;
    if len > MAX_HEADER {
        return Err(corrupt("its header length is implausible"));
    }
    let mut header = vec![0u8; len as usize];
    w.fill(&mut header)?;
    let header: Header = rmp_serde::from_slice(&header)
        .map_err(|e| InspectError::Corrupt(format!("its header is not valid: {e}")))?;
    for _ in 0..header.keys {
        let key_len = w.u32()?;
        w.skip(u64::from(key_len) + 24)?;
        let value_len = w.u32()?;
        w.skip(u64::from(value_len))?;
    }
    let mut records = 0u64;
    for _ in 0..header.segments {
        w.skip(24)?;
        let count = w.u64()?;
        let bytes = count
            .checked_mul(IDEM_RECORD_BYTES)
            .ok_or_else(|| corrupt("an idempotency segment's record count is implausible"))?;
        w.skip(bytes)?;
        records += count;
    }
    let computed = w.crc.clone().finalize();
    let mut stored = [0u8; 4];
    w.inner
        .read_exact(&mut stored)
        .map_err(|_| corrupt("it ends before its checksum (truncated)"))?;
    let stored = u32::from_le_bytes(stored);
    if stored != computed {
        return Err(InspectError::Corrupt(format!(
            "its checksum does not match (stored {stored:08x}, computed {computed:08x})"
        )));
    }
    let mut rest = [0u8; 1];
    if w.inner.read(&mut rest)? != 0 {
        return Err(corrupt("it has bytes after its checksum"));
    }
    let mut members: Vec<NodeId> = header
        .meta
        .last_membership
        .membership
        .configs
        .into_iter()
        .flatten()
        .collect();
    members.sort_unstable();
    members.dedup();
    Ok(Summary {
        index: header.meta.last_log_id.as_ref().map(|l| l.index),
        term: header.meta.last_log_id.as_ref().map(|l| l.leader_id.term),
        members,
        keys: header.keys,
        idempotency_records: records,
        size: w.read + 4,
        checksum: format!("{stored:08x}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_snapshot_is_refused_with_a_reason() {
        let err = inspect(&b"hello"[..]).expect_err("short");
        assert!(err.to_string().contains("too short"), "{err}");
        let err = inspect(&b"NOTASNAPSHOT"[..]).expect_err("marker");
        assert!(err.to_string().contains("marker"), "{err}");
        let mut truncated = MAGIC.to_vec();
        truncated.extend_from_slice(&100u32.to_le_bytes());
        let err = inspect(&truncated[..]).expect_err("truncated");
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
