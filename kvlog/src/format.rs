//! The bytes on disk: segment headers, record frames and the meta file.
//!
//! A log directory holds numbered segment files (`00000000000000000001.seg`, ...) and one `meta`
//! file. Every multi-byte integer is little-endian.
//!
//! A segment starts with a 40-byte header: the magic `KVLOGSEG`, the format version, the
//! segment's own id (so a renamed or copied file is caught), the sequence number its first write
//! group will carry, and a CRC32 of all that. Records follow back to back, each starting at an
//! offset that is a multiple of 8. The rest of the file is zeros: segments are created at full
//! size and written with zeros (see `segment::prepare_segment`), so a write overwrites blocks the
//! file already has and `fdatasync` does not have to commit a change to the file's size or block
//! map. Recovery also relies on the zeros: they mark where the log ends.
//!
//! A record is a 32-byte header and a payload padded with zeros to a multiple of 8:
//!
//! ```text
//!  0..4   payload length                 u32
//!  4..8   CRC32 of the payload           u32
//!  8..16  group sequence number          u64
//! 16..24  offset of the group's first record in this segment   u64
//! 24      record kind (1 entry, 2 truncate, 3 committed, 4 seal)
//! 25..28  zero
//! 28..32  CRC32 of bytes 0..28           u32
//! ```
//!
//! A *group* is what one `write` + `fdatasync` put on disk. The writer never starts a group
//! before the previous one is durable, so after a crash at most the last group of the last
//! segment can be torn. Each record names its group and where that group began, which is what
//! lets recovery tell a torn write (damage inside the last group) from damage to data that was
//! already durable (an intact record of a *later* group lies beyond the damage): the first is
//! cut off, the second is refused.
//!
//! Payloads are MessagePack (`rmp-serde`, named fields), chosen because it carries
//! `serde_json::Value` and tagged enums, which bincode-style formats cannot.
//!
//! The meta file is the magic `KVLOGMET`, a u32 payload length, a CRC32 of the payload, and the
//! payload (vote, last purged log id, committed hint). It is only ever replaced whole (write a
//! temporary file, fsync it, rename it over the old one, fsync the directory), so it is either
//! the old or the new version, never a mix.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// First bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"KVLOGSEG";
/// First bytes of the meta file.
pub(crate) const META_MAGIC: &[u8; 8] = b"KVLOGMET";
/// Version of the layout described above; bumped on any incompatible change.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Size of a segment header; the first record starts right after it.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 40;
/// Size of a record header.
pub(crate) const RECORD_HEADER_LEN: usize = 32;
/// The largest payload a record can frame (its length field is a u32).
pub(crate) const MAX_PAYLOAD: usize = u32::MAX as usize;
/// Records start at offsets that are multiples of this, so recovery can look for intact records
/// past a damaged one without trying every byte offset.
pub(crate) const ALIGN: usize = 8;

/// What a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordKind {
    /// One log entry (`C::Entry`).
    Entry = 1,
    /// `truncate_after(Option<LogId>)`: entries after that index are gone.
    Truncate = 2,
    /// `save_committed(Option<LogId>)`: the committed hint.
    Committed = 3,
    /// The segment is full; the log continues in the next segment.
    Seal = 4,
}

impl RecordKind {
    /// The kind stored as `byte`, or `None` for a byte no version of this format writes.
    pub(crate) fn from_byte(byte: u8) -> Option<RecordKind> {
        match byte {
            1 => Some(RecordKind::Entry),
            2 => Some(RecordKind::Truncate),
            3 => Some(RecordKind::Committed),
            4 => Some(RecordKind::Seal),
            _ => None,
        }
    }
}

/// A decoded record header whose checksum matched.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordHeader {
    /// The record kind byte; checked by the caller so that an unknown kind is reported as such.
    pub(crate) kind: u8,
    /// The write group this record belongs to.
    pub(crate) group: u64,
    /// Offset in the segment of the group's first record.
    pub(crate) group_start: u64,
}

/// What lies at a record offset.
#[derive(Debug)]
pub(crate) enum Decoded<'a> {
    /// An intact record and its payload.
    Record(RecordHeader, &'a [u8]),
    /// Zeros up to the end of a header (or of the file): nothing was written here.
    End,
    /// Bytes that are not an intact record, with the reason.
    Damaged(&'static str),
}

/// `len` rounded up to the record alignment.
pub(crate) fn padded(len: usize) -> usize {
    len.div_ceil(ALIGN) * ALIGN
}

/// Bytes a record with a payload of `payload_len` bytes takes on disk.
pub(crate) fn record_len(payload_len: usize) -> usize {
    RECORD_HEADER_LEN + padded(payload_len)
}

/// Appends one framed record to `out`.
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    kind: RecordKind,
    group: u64,
    group_start: u64,
    payload: &[u8],
) {
    let len = u32::try_from(payload.len()).expect("callers refuse payloads over MAX_PAYLOAD before framing");
    let mut header = [0u8; RECORD_HEADER_LEN];
    header[0..4].copy_from_slice(&len.to_le_bytes());
    header[4..8].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    header[8..16].copy_from_slice(&group.to_le_bytes());
    header[16..24].copy_from_slice(&group_start.to_le_bytes());
    header[24] = kind as u8;
    let crc = crc32fast::hash(&header[0..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    out.resize(out.len() + padded(payload.len()) - payload.len(), 0);
}

/// Reads the record at `pos` in `data` (a whole segment, or a slice starting at a record).
pub(crate) fn decode_record(data: &[u8], pos: usize) -> Decoded<'_> {
    let rest = data.get(pos..).unwrap_or(&[]);
    let Some(header) = rest.get(..RECORD_HEADER_LEN) else {
        return if rest.iter().all(|b| *b == 0) {
            Decoded::End
        } else {
            Decoded::Damaged("a record header is cut short by the end of the file")
        };
    };
    if header.iter().all(|b| *b == 0) {
        return Decoded::End;
    }
    let stored_crc = read_u32(header, 28);
    if crc32fast::hash(&header[0..28]) != stored_crc {
        return Decoded::Damaged("record header checksum mismatch");
    }
    if header[25..28] != [0, 0, 0] {
        return Decoded::Damaged("record header has non-zero reserved bytes");
    }
    let len = read_u32(header, 0) as usize;
    let Some(payload) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len) else {
        return Decoded::Damaged("record payload runs past the end of the file");
    };
    if crc32fast::hash(payload) != read_u32(header, 4) {
        return Decoded::Damaged("record payload checksum mismatch");
    }
    let parsed = RecordHeader {
        kind: header[24],
        group: read_u64(header, 8),
        group_start: read_u64(header, 16),
    };
    Decoded::Record(parsed, payload)
}

/// The header of a new segment.
pub(crate) fn encode_segment_header(id: u64, first_group: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&id.to_le_bytes());
    h[24..32].copy_from_slice(&first_group.to_le_bytes());
    let crc = crc32fast::hash(&h[0..36]);
    h[36..40].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A checked segment header: the segment id and the first group sequence number.
pub(crate) fn decode_segment_header(data: &[u8]) -> Result<(u64, u64), String> {
    let Some(h) = data.get(..SEGMENT_HEADER_LEN as usize) else {
        return Err(format!(
            "the file is {} bytes long, shorter than a segment header",
            data.len()
        ));
    };
    if &h[0..8] != SEGMENT_MAGIC {
        return Err("the file does not start with the segment magic KVLOGSEG".to_string());
    }
    if crc32fast::hash(&h[0..36]) != read_u32(h, 36) {
        return Err("segment header checksum mismatch".to_string());
    }
    let version = read_u32(h, 8);
    if version != FORMAT_VERSION {
        return Err(format!(
            "segment format version {version}; this build reads version {FORMAT_VERSION}"
        ));
    }
    Ok((read_u64(h, 16), read_u64(h, 24)))
}

/// The whole content of a meta file around `payload`.
pub(crate) fn encode_meta(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("the meta payload is a few hundred bytes");
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(META_MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The checked payload of a meta file.
pub(crate) fn decode_meta(data: &[u8]) -> Result<&[u8], String> {
    if data.len() < 16 || &data[0..8] != META_MAGIC {
        return Err("the file does not start with the meta magic KVLOGMET".to_string());
    }
    let len = read_u32(data, 8) as usize;
    let payload = data
        .get(16..16 + len)
        .ok_or_else(|| format!("the payload length {len} runs past the end of the file"))?;
    if crc32fast::hash(payload) != read_u32(data, 12) {
        return Err("meta checksum mismatch".to_string());
    }
    Ok(payload)
}

/// MessagePack with named fields, the encoding of every payload.
pub(crate) fn to_payload<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

/// The inverse of [`to_payload`].
pub(crate) fn from_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_is_aligned() {
        let mut buf = Vec::new();
        encode_record(&mut buf, RecordKind::Entry, 7, 40, b"hello");
        assert_eq!(buf.len(), record_len(5));
        assert_eq!(buf.len() % ALIGN, 0);
        match decode_record(&buf, 0) {
            Decoded::Record(h, payload) => {
                assert_eq!(payload, b"hello");
                assert_eq!(h.group, 7);
                assert_eq!(h.group_start, 40);
                assert_eq!(RecordKind::from_byte(h.kind), Some(RecordKind::Entry));
            }
            other => panic!("expected a record, got {other:?}"),
        }
    }

    #[test]
    fn any_flipped_byte_is_noticed() {
        let mut buf = Vec::new();
        encode_record(&mut buf, RecordKind::Committed, 1, 40, b"some payload");
        for i in 0..RECORD_HEADER_LEN + 12 {
            let mut bad = buf.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(decode_record(&bad, 0), Decoded::Damaged(_)),
                "flipping byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn zeros_are_the_end_and_a_cut_record_is_damage() {
        assert!(matches!(decode_record(&[0u8; 64], 0), Decoded::End));
        assert!(matches!(decode_record(&[0u8; 8], 0), Decoded::End));
        let mut buf = Vec::new();
        encode_record(&mut buf, RecordKind::Entry, 1, 40, &[9u8; 100]);
        assert!(matches!(decode_record(&buf[..50], 0), Decoded::Damaged(_)));
        assert!(matches!(decode_record(&buf[..20], 0), Decoded::Damaged(_)));
    }

    #[test]
    fn headers_and_meta_are_checked() {
        let h = encode_segment_header(3, 99);
        assert_eq!(decode_segment_header(&h), Ok((3, 99)));
        let mut bad = h;
        bad[20] ^= 1;
        assert!(decode_segment_header(&bad).is_err());

        let m = encode_meta(b"abc");
        assert_eq!(decode_meta(&m), Ok(&b"abc"[..]));
        let mut bad = m.clone();
        bad[17] ^= 1;
        assert!(decode_meta(&bad).is_err());
        assert!(decode_meta(&m[..17]).is_err());
    }
}
