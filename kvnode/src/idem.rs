//! The idempotency table: what the state machine remembers about idempotent writes, in a shape
//! that stays small and is cheap to snapshot.
//!
//! A record is 40 bytes (the UUIDv7 key, a fingerprint of the write and its outcome), whatever
//! the write's size. Records are kept in *segments* in the order they were made: one active
//! segment takes new records, and is sealed (shrunk to fit and frozen behind an `Arc`) once it
//! holds [`SEGMENT_RECORDS`] records or spans [`SEGMENT_SPAN_MS`] of log time. Three things
//! follow:
//!
//! - Expiry drops whole sealed segments, oldest first, once their newest record is older than
//!   the retention: no per-record expiry index is needed, and records live at least the
//!   retention (at most one segment span longer).
//! - A snapshot copies the list of sealed segments (reference counts) and only the active one,
//!   which is bounded, so it never copies the whole table while apply waits.
//! - The segment limit is chosen so that a sealed table fills its hash buckets to 7/8, the most
//!   the hash map allows, which keeps memory near the 40 bytes of payload.
//!
//! Segment boundaries depend only on the log (record counts and log time), so every replica
//! has the same segments and forgets the same records at the same entry.
//!
//! A lookup checks the active segment and then each sealed one; at the most (ten minutes at ten
//! thousand writes a second) that is about a hundred probes of a few nanoseconds each.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::types::{IdemKey, OpOutcome};

/// Records in a segment before it is sealed: 7/8 of a power of two, so that a sealed segment
/// fills its buckets exactly as far as the hash map allows.
pub const SEGMENT_RECORDS: usize = 57_344;
/// Log time a segment may span before it is sealed.
pub const SEGMENT_SPAN_MS: u64 = 60_000;

/// One remembered idempotent write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdemRecord {
    /// What the write did (see `state::fingerprint`): a reused key is told from a retry by it.
    pub fingerprint: u64,
    /// The outcome to answer retries with.
    pub outcome: OpOutcome,
}

/// Hashes an [`IdemKey`] by its random bits: a UUIDv7 carries 74 of them after its time, so
/// they need no further mixing, and a keyed hash would only cost time.
#[derive(Default)]
pub struct IdemHasher(u64);

impl Hasher for IdemHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = (n as u64) ^ ((n >> 64) as u64).rotate_left(32);
    }
}

type Records = HashMap<IdemKey, IdemRecord, BuildHasherDefault<IdemHasher>>;

/// Records made in one stretch of log time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Segment {
    records: Records,
    /// Log time of its first record.
    pub first_ms: u64,
    /// Log time of its last record.
    pub last_ms: u64,
    /// The newest key time among its records.
    pub newest_key_ms: u64,
}

impl Segment {
    /// A segment with these bounds and records (for snapshots).
    pub fn from_parts(
        first_ms: u64,
        last_ms: u64,
        newest_key_ms: u64,
        records: impl IntoIterator<Item = (IdemKey, IdemRecord)>,
    ) -> Segment {
        Segment {
            records: records.into_iter().collect(),
            first_ms,
            last_ms,
            newest_key_ms,
        }
    }

    /// Its records.
    pub fn records(&self) -> impl Iterator<Item = (&IdemKey, &IdemRecord)> {
        self.records.iter()
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// The table (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdemTable {
    sealed: Vec<Arc<Segment>>,
    active: Segment,
    horizon_ms: u64,
}

impl IdemTable {
    /// The record of `key`, if it is remembered.
    pub fn get(&self, key: &IdemKey) -> Option<&IdemRecord> {
        self.active
            .records
            .get(key)
            .or_else(|| self.sealed.iter().rev().find_map(|s| s.records.get(key)))
    }

    /// Remember `record` for `key`, made at log time `now_ms`.
    pub fn insert(&mut self, now_ms: u64, key: IdemKey, record: IdemRecord) {
        let full = self.active.records.len() >= SEGMENT_RECORDS;
        let old = !self.active.is_empty() && now_ms.saturating_sub(self.active.first_ms) >= SEGMENT_SPAN_MS;
        if full || old {
            let mut sealed = std::mem::take(&mut self.active);
            sealed.records.shrink_to_fit();
            self.sealed.push(Arc::new(sealed));
        }
        if self.active.is_empty() {
            self.active.first_ms = now_ms;
        }
        self.active.last_ms = now_ms;
        self.active.newest_key_ms = self.active.newest_key_ms.max(key.time_ms());
        self.active.records.insert(key, record);
    }

    /// Forget every segment whose newest record was made `retention_ms` or more before
    /// `now_ms`, raising the horizon to the newest key time they held.
    pub fn expire(&mut self, now_ms: u64, retention_ms: u64) {
        let expired = |s: &Segment| !s.is_empty() && s.last_ms.saturating_add(retention_ms) <= now_ms;
        let gone = self.sealed.iter().take_while(|s| expired(s)).count();
        for s in self.sealed.drain(..gone) {
            self.horizon_ms = self.horizon_ms.max(s.newest_key_ms);
        }
        if self.sealed.is_empty() && expired(&self.active) {
            self.horizon_ms = self.horizon_ms.max(self.active.newest_key_ms);
            self.active = Segment::default();
        }
    }

    /// The newest key time among forgotten records.
    pub fn horizon_ms(&self) -> u64 {
        self.horizon_ms
    }

    /// Number of remembered records.
    pub fn len(&self) -> usize {
        self.active.len() + self.sealed.iter().map(|s| s.len()).sum::<usize>()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The segments, oldest first; the last one is the active segment.
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.sealed
            .iter()
            .map(|s| s.as_ref())
            .chain(std::iter::once(&self.active))
    }

    /// Rebuild a table from what [`segments`](Self::segments) and
    /// [`horizon_ms`](Self::horizon_ms) gave.
    pub fn from_parts(mut segments: Vec<Segment>, horizon_ms: u64) -> IdemTable {
        let active = segments.pop().unwrap_or_default();
        IdemTable {
            sealed: segments.into_iter().map(Arc::new).collect(),
            active,
            horizon_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ms: u64, n: u64) -> IdemKey {
        IdemKey((u128::from(ms) << 80) | (7u128 << 76) | u128::from(n))
    }

    fn rec(n: u64) -> IdemRecord {
        IdemRecord {
            fingerprint: n,
            outcome: OpOutcome::Applied { index: n },
        }
    }

    #[test]
    fn segments_seal_by_size_and_span_and_expire_whole() {
        let mut t = IdemTable::default();
        for n in 0..(SEGMENT_RECORDS as u64 + 10) {
            t.insert(1_000, key(5, n), rec(n));
        }
        assert_eq!(t.segments().count(), 2, "a full segment is sealed");
        t.insert(1_000 + SEGMENT_SPAN_MS, key(9, 1), rec(1));
        assert_eq!(t.segments().count(), 3, "an old segment is sealed");
        assert_eq!(t.get(&key(5, 3)), Some(&rec(3)));
        assert_eq!(t.get(&key(9, 1)), Some(&rec(1)));
        assert_eq!(t.len(), SEGMENT_RECORDS + 11);

        t.expire(1_000 + 600_000 - 1, 600_000);
        assert_eq!(
            t.len(),
            SEGMENT_RECORDS + 11,
            "nothing is forgotten before its time"
        );
        t.expire(1_000 + 600_000, 600_000);
        assert_eq!(t.len(), 1, "both segments made at 1000 are forgotten together");
        assert_eq!(t.horizon_ms(), 5);
        assert_eq!(t.get(&key(5, 3)), None);
        t.expire(1_000 + SEGMENT_SPAN_MS + 600_000, 600_000);
        assert!(t.is_empty());
        assert_eq!(t.horizon_ms(), 9);
    }

    #[test]
    fn a_table_round_trips_through_its_parts() {
        let mut t = IdemTable::default();
        for n in 0..100 {
            t.insert(n * 1_000, key(n, n), rec(n));
        }
        t.expire(70_000 + 600_000, 600_000);
        let back = IdemTable::from_parts(t.segments().cloned().collect(), t.horizon_ms());
        assert_eq!(back, t);
    }
}
