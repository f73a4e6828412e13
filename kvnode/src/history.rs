//! The node's history of recent changes: what watchers are served from.
//!
//! Every change the state machine applies (index, kind, key, new value; see
//! `state::KvState::apply_batch_observed`) is appended here, in log order, by the apply task.
//! A watch reads from it with a cursor, "everything after index N", so a watcher that falls
//! behind or reconnects picks up exactly where it was, without the history being copied per
//! watcher.
//!
//! # What it covers
//!
//! The history covers every change with an index in `(floor, applied]`: `applied` is the last
//! index the state machine applied (blank and membership entries included), and `floor` is
//! where the memory of this node begins. A watch from `after >= floor` is served; one from
//! before it would miss changes, so it is refused as `compacted` with the oldest index still
//! covered (`floor + 1`), never served with a silent gap. `floor` moves in three ways:
//!
//! - At startup it is the index the node starts from: that of its snapshot, the only state it
//!   has on disk. The log entries after the snapshot are then applied again and land here as
//!   they are applied, so a restarted node covers everything after its snapshot.
//! - When a snapshot from the leader is installed, the state jumps to the snapshot's index
//!   without the changes in between ever being applied here: the history is emptied and
//!   `floor` becomes that index. Watchers that were behind it are told `compacted`.
//! - When the history is over its bounds, the oldest changes are forgotten, always every
//!   change of one index together (one entry may carry many writes, and a resume point is an
//!   index), and `floor` becomes the index forgotten last.
//!
//! # Bounds
//!
//! The history is bounded both in changes and in bytes ([`HistoryLimits`], by default 100,000
//! changes and 64 MiB; `kvnode --watch-history-changes/--watch-history-bytes`). A change's
//! bytes are its key plus its value as JSON text, the part that grows with the data; the count
//! bounds the fixed per-change cost of small ones. The value is the key's whole new value, so
//! an APPEND to a long list costs the list's size; such a history reaches back less far. At
//! 10,000 small writes a second the defaults keep the last ten seconds or more, plenty for a
//! watcher to reconnect to another node after its own dies.
//!
//! # Waking watchers
//!
//! A `tokio::sync::watch` channel carries a generation number bumped after every change to
//! the history (an append, a reset, closing at shutdown). Watchers mark it seen, read, and
//! wait for the next bump: nothing is lost between the read and the wait.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use kvapi::ChangeKind;
use serde_json::Value;
use tokio::sync::watch;

use crate::state::Change;
use crate::types::LogIndex;

/// How much history a node keeps (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Most changes kept.
    pub changes: usize,
    /// Most bytes (keys plus values as JSON text) kept.
    pub bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            changes: 100_000,
            bytes: 64 * 1024 * 1024,
        }
    }
}

/// One change as the history keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// Log index of the entry that applied it.
    pub index: LogIndex,
    /// What it did.
    pub kind: ChangeKind,
    /// The key.
    pub key: String,
    /// The key's value after the change; `None` for a delete.
    pub value: Option<Value>,
    /// Its size as counted against [`HistoryLimits::bytes`].
    bytes: usize,
}

impl Recorded {
    /// A copy of `change`, to keep after the state has moved on. Its size is measured later,
    /// by [`History::record`], outside the state machine's lock.
    pub fn from_change(change: Change<'_>) -> Recorded {
        Recorded {
            index: change.index,
            kind: change.kind,
            key: change.key.to_string(),
            value: change.value.cloned(),
            bytes: 0,
        }
    }
}

/// Which keys a watch wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Exactly this key.
    Key(String),
    /// Every key starting with this (the empty prefix: every key).
    Prefix(String),
}

impl Filter {
    /// True when `key` is watched.
    pub fn matches(&self, key: &str) -> bool {
        match self {
            Filter::Key(k) => k == key,
            Filter::Prefix(p) => key.starts_with(p.as_str()),
        }
    }
}

/// What a read of the history found.
#[derive(Debug, Clone, PartialEq)]
pub enum Slice {
    /// The history no longer reaches back to the cursor: the oldest index it still covers.
    Compacted {
        /// `floor + 1`; a watch from `after >= oldest - 1` can be served.
        oldest: LogIndex,
    },
    /// The node is shutting down.
    Closed,
    /// The matching changes after the cursor (whole indexes only), and the index up to which
    /// every change has been looked at: resuming from `covered` misses nothing.
    Changes {
        /// The matching changes, in log order.
        events: Vec<Arc<Recorded>>,
        /// Every change at or before this index has been considered.
        covered: LogIndex,
    },
}

#[derive(Debug)]
struct Ring {
    changes: VecDeque<Arc<Recorded>>,
    bytes: usize,
    floor: LogIndex,
    applied: LogIndex,
    limits: HistoryLimits,
    closed: bool,
}

impl Ring {
    /// Forget the oldest indexes, whole, until the bounds hold.
    fn evict(&mut self) {
        while self.changes.len() > self.limits.changes || self.bytes > self.limits.bytes {
            let Some(victim) = self.changes.front().map(|c| c.index) else {
                break;
            };
            while self.changes.front().is_some_and(|c| c.index == victim) {
                if let Some(gone) = self.changes.pop_front() {
                    self.bytes -= gone.bytes;
                }
            }
            self.floor = self.floor.max(victim);
        }
    }
}

/// The history of one node (see the module documentation). Shared by the apply task, which
/// writes it, and every watch, which reads it.
#[derive(Debug)]
pub struct History {
    ring: Mutex<Ring>,
    generation: watch::Sender<u64>,
}

/// What the history covers right now, for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// Changes after this index are all kept.
    pub floor: LogIndex,
    /// The last index applied.
    pub applied: LogIndex,
    /// Changes kept.
    pub changes: usize,
    /// Bytes counted.
    pub bytes: usize,
}

impl History {
    /// An empty history of a state machine that has applied everything up to `applied`.
    pub fn new(applied: LogIndex, limits: HistoryLimits) -> History {
        History {
            ring: Mutex::new(Ring {
                changes: VecDeque::new(),
                bytes: 0,
                floor: applied,
                applied,
                limits,
                closed: false,
            }),
            generation: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // Every mutation leaves the ring whole before it can panic, so a poisoned lock's data
        // is still valid.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Change the bounds, forgetting what no longer fits.
    pub fn set_limits(&self, limits: HistoryLimits) {
        let mut ring = self.lock();
        ring.limits = limits;
        ring.evict();
    }

    /// The entry at `index` has been applied and made `changes` (possibly none: blank and
    /// membership entries, writes that changed nothing).
    pub fn record(&self, index: LogIndex, changes: Vec<Recorded>) {
        let measured: Vec<Arc<Recorded>> = changes
            .into_iter()
            .map(|mut c| {
                c.bytes = c.key.len() + c.value.as_ref().map_or(0, json_len);
                Arc::new(c)
            })
            .collect();
        {
            let mut ring = self.lock();
            // Index 0 is a new cluster's first entry (its membership, no changes), and an
            // empty history's `applied` is 0 as well: that is no repeat.
            let repeat = index < ring.applied || (index == ring.applied && index > 0);
            if repeat {
                // Apply never goes back; a repeat would duplicate events, so it is dropped.
                tracing::warn!(
                    index,
                    applied = ring.applied,
                    "history: an index applied twice is ignored"
                );
                return;
            }
            ring.applied = index;
            for c in measured {
                ring.bytes += c.bytes;
                ring.changes.push_back(c);
            }
            ring.evict();
        }
        self.bump();
    }

    /// The state was replaced by a snapshot at `applied`: the changes before it were never
    /// seen here, so the history starts again from it.
    pub fn reset(&self, applied: LogIndex) {
        {
            let mut ring = self.lock();
            ring.changes.clear();
            ring.bytes = 0;
            ring.floor = applied;
            ring.applied = applied;
        }
        self.bump();
    }

    /// The node is stopping: every watch ends, and no new one starts.
    pub fn close(&self) {
        self.lock().closed = true;
        self.bump();
    }

    /// A receiver of the generation number, bumped after every change to the history.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Where a watch from `after` starts (`None`: from what is applied now), or why it cannot.
    pub fn start(&self, after: Option<LogIndex>) -> Result<LogIndex, Slice> {
        let ring = self.lock();
        if ring.closed {
            return Err(Slice::Closed);
        }
        match after {
            None => Ok(ring.applied),
            Some(after) if after < ring.floor => Err(Slice::Compacted {
                oldest: ring.floor + 1,
            }),
            Some(after) => Ok(after),
        }
    }

    /// The changes after `after` that `filter` matches, at most about `max_events` of them:
    /// never part of an index, so a batch may exceed it by the rest of its last index.
    pub fn read(&self, after: LogIndex, filter: &Filter, max_events: usize) -> Slice {
        let ring = self.lock();
        if ring.closed {
            return Slice::Closed;
        }
        if after < ring.floor {
            return Slice::Compacted {
                oldest: ring.floor + 1,
            };
        }
        let start = ring.changes.partition_point(|c| c.index <= after);
        let mut events = Vec::new();
        let mut covered = after.max(ring.applied);
        let mut previous = None;
        for c in ring.changes.range(start..) {
            if events.len() >= max_events && previous != Some(c.index) {
                covered = c.index - 1;
                break;
            }
            previous = Some(c.index);
            if filter.matches(&c.key) {
                events.push(c.clone());
            }
        }
        Slice::Changes { events, covered }
    }

    /// What the history covers now.
    pub fn coverage(&self) -> Coverage {
        let ring = self.lock();
        Coverage {
            floor: ring.floor,
            applied: ring.applied,
            changes: ring.changes.len(),
            bytes: ring.bytes,
        }
    }
}

/// Length of `value` as compact JSON text, without building the text.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value into a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(index: LogIndex, key: &str, value: Value) -> Recorded {
        Recorded {
            index,
            kind: ChangeKind::Put,
            key: key.into(),
            value: Some(value),
            bytes: 0,
        }
    }

    fn events(slice: &Slice) -> Vec<(LogIndex, String)> {
        match slice {
            Slice::Changes { events, .. } => events.iter().map(|c| (c.index, c.key.clone())).collect(),
            other => panic!("expected changes, got {other:?}"),
        }
    }

    fn covered(slice: &Slice) -> LogIndex {
        match slice {
            Slice::Changes { covered, .. } => *covered,
            other => panic!("expected changes, got {other:?}"),
        }
    }

    #[test]
    fn reads_are_filtered_ordered_and_resume_exactly() {
        let h = History::new(0, HistoryLimits::default());
        h.record(1, vec![change(1, "a", json!(1)), change(1, "b", json!(2))]);
        h.record(2, vec![]);
        h.record(3, vec![change(3, "a/x", json!(3)), change(3, "a", json!(4))]);
        let all = Filter::Prefix(String::new());
        let r = h.read(0, &all, 100);
        assert_eq!(
            events(&r),
            vec![
                (1, "a".into()),
                (1, "b".into()),
                (3, "a/x".into()),
                (3, "a".into())
            ]
        );
        assert_eq!(covered(&r), 3);
        let key = Filter::Key("a".into());
        assert_eq!(
            events(&h.read(0, &key, 100)),
            vec![(1, "a".into()), (3, "a".into())]
        );
        assert_eq!(events(&h.read(1, &key, 100)), vec![(3, "a".into())]);
        let none = h.read(0, &Filter::Key("zz".into()), 100);
        assert_eq!(
            (events(&none), covered(&none)),
            (vec![], 3),
            "nothing matched, all covered"
        );
        // A cursor ahead of what is applied is waited for, not refused.
        assert_eq!(covered(&h.read(9, &all, 100)), 9);
        assert_eq!(h.start(Some(9)), Ok(9));
        assert_eq!(h.start(None), Ok(3));
    }

    #[test]
    fn a_limited_read_never_splits_an_index() {
        let h = History::new(0, HistoryLimits::default());
        h.record(
            1,
            vec![
                change(1, "a", json!(1)),
                change(1, "a", json!(2)),
                change(1, "a", json!(3)),
            ],
        );
        h.record(2, vec![change(2, "a", json!(4))]);
        let all = Filter::Prefix(String::new());
        let r = h.read(0, &all, 2);
        assert_eq!(events(&r).len(), 3, "the rest of index 1 comes along");
        assert_eq!(covered(&r), 1);
        let r = h.read(1, &all, 2);
        assert_eq!((events(&r), covered(&r)), (vec![(2, "a".into())], 2));
    }

    #[test]
    fn eviction_drops_whole_indexes_and_raises_the_floor() {
        let h = History::new(
            10,
            HistoryLimits {
                changes: 3,
                bytes: 1 << 20,
            },
        );
        assert_eq!(h.start(Some(9)), Err(Slice::Compacted { oldest: 11 }));
        h.record(11, vec![change(11, "a", json!(1)), change(11, "b", json!(1))]);
        h.record(12, vec![change(12, "a", json!(1))]);
        assert_eq!(h.coverage().floor, 10);
        h.record(13, vec![change(13, "a", json!(1))]);
        // Four changes: index 11 goes, both of its changes.
        let c = h.coverage();
        assert_eq!((c.floor, c.changes, c.applied), (11, 2, 13));
        assert_eq!(
            h.read(10, &Filter::Key("a".into()), 10),
            Slice::Compacted { oldest: 12 }
        );
        assert_eq!(events(&h.read(11, &Filter::Key("a".into()), 10)).len(), 2);
    }

    #[test]
    fn bytes_are_bounded_too() {
        let h = History::new(
            0,
            HistoryLimits {
                changes: 1000,
                bytes: 100,
            },
        );
        // "k" + 20 bytes of JSON ("xxxxxxxxxxxxxxxxxx" with its quotes) = 21 bytes each.
        for i in 1..=10 {
            h.record(i, vec![change(i, "k", json!("x".repeat(18)))]);
        }
        let c = h.coverage();
        assert_eq!((c.changes, c.bytes, c.floor), (4, 84, 6));
        // One change larger than the whole budget empties the history rather than break it.
        h.record(11, vec![change(11, "k", json!("y".repeat(200)))]);
        let c = h.coverage();
        assert_eq!((c.changes, c.bytes, c.floor, c.applied), (0, 0, 11, 11));
    }

    #[test]
    fn a_snapshot_install_restarts_the_history_and_closing_ends_every_read() {
        let h = History::new(0, HistoryLimits::default());
        h.record(1, vec![change(1, "a", json!(1))]);
        let mut rx = h.subscribe();
        rx.borrow_and_update();
        h.reset(50);
        assert!(rx.has_changed().expect("open"), "watchers are woken");
        assert_eq!(
            h.read(1, &Filter::Key("a".into()), 10),
            Slice::Compacted { oldest: 51 }
        );
        assert_eq!(covered(&h.read(50, &Filter::Key("a".into()), 10)), 50);
        h.record(40, vec![change(40, "a", json!(1))]);
        assert_eq!(
            h.coverage().changes,
            0,
            "an index from before the reset is ignored"
        );
        h.close();
        assert_eq!(h.read(50, &Filter::Key("a".into()), 10), Slice::Closed);
        assert_eq!(h.start(None), Err(Slice::Closed));
    }
}
