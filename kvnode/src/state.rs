//! The replicated state: a sorted map from keys to JSON values with their versions, plus the
//! idempotency table.
//!
//! Everything here is a pure, deterministic function of the log: every replica that applies
//! the same entries ends in the same state and gives the same answers. That is what makes it
//! safe to answer a retried write from the table on any node.
//!
//! # Exactly once
//!
//! A write may carry an idempotency key, a UUIDv7 chosen by the client and reused on every
//! retry. The table (see `idem`) remembers, per key, a fingerprint of the write it named and
//! the outcome it got: 40 bytes, whatever the write's size. The check happens here, while applying, and
//! not when the write is proposed: two copies of the same write may both be in the log (the
//! client retried after a leader change), and only apply sees them in their final order.
//!
//! Records are forgotten ten minutes (of log time, below) after they were made, so the table
//! stays bounded. A retry that arrives after its record was forgotten must not be applied a
//! second time, and this is where the time inside a UUIDv7 earns its place: the table keeps
//! the *horizon*, the newest key time among the records it has forgotten. A key with no record
//! and a time at or before the horizon may be one of those forgotten writes, so it is refused
//! as expired (nothing changes); a key after the horizon cannot be, so it is new. The rule
//! compares key times with key times only, never with any clock, so it holds whatever the
//! clocks do. Keys claiming to come from more than a minute after the proposing leader's clock
//! are refused, so that one client with a clock far ahead cannot push the horizon past every
//! honest key.
//!
//! # Log time
//!
//! Expiry needs a clock that every replica reads the same, so it is derived from the leaders'
//! time stamps in the entries, never from a replica's own clock. Log time advances by the
//! difference between consecutive stamps, and one entry may advance it by at most
//! [`MAX_CLOCK_STEP_MS`]: a leader whose clock runs an hour ahead moves log time by that much
//! once, not by an hour, and a following leader whose clock is behind neither turns log time
//! back nor freezes it until its own clock catches up. Idle periods count for at most one
//! step, so records may live longer than ten minutes, never shorter.
//!
//! # Versions
//!
//! Each key carries the log index that created it, the index of its last change and the number
//! of changes since its creation. Deleting a key forgets them.
//!
//! # Conditions
//!
//! A write may carry a [`Condition`]: the key's `mod_index` must still be a given index
//! (compare-and-swap), or the key must not exist. The condition is checked here, against the
//! state this entry is applied to, and not by the node that receives the request: between a
//! check at proposal time and the apply, other writes already in the log (or batched into the
//! same entry ahead of this one) may change the key, and a check made on a leader's or
//! follower's view of the map is a check against a state that is not the one the write will
//! land on. Here every replica checks the same condition against the same state at the same
//! point of the log and reaches the same verdict. A failed condition is an outcome like any
//! other: nothing changes, and with an idempotency key the table remembers it, so a retry gets
//! the first answer back (and a retry of a write that succeeded is told it succeeded, never
//! `412` because its own first copy moved `mod_index`). The condition is part of the write's
//! fingerprint: the same key and value under another condition is another write.
//!
//! # Changes
//!
//! [`KvState::apply_batch_observed`] reports every change it makes (index, kind, key, new
//! value) to a callback, in log order; the node keeps the recent ones for watchers (see
//! `history`). Writes that change nothing (a failed condition, a type conflict, a replayed
//! retry, a delete of an absent key) report nothing.
//!
//! The maps are persistent (`imbl`): cloning the state for a snapshot takes constant time, so a
//! snapshot is written from a frozen copy while writes go on.

use kvapi::ChangeKind;
use serde_json::Value;

use crate::idem::{IdemRecord, IdemTable, Segment};
use crate::types::{Batch, BatchResult, Command, Condition, JsonType, LogIndex, Op, OpOutcome, OpReply};

/// How long (in log time) an idempotency record is kept after it was made.
pub const IDEMPOTENCY_TTL_MS: u64 = kvapi::IDEMPOTENCY_RETENTION.as_millis() as u64;
/// Most one entry may move log time forward.
pub const MAX_CLOCK_STEP_MS: u64 = 10_000;
/// How far an idempotency key's time may be ahead of the proposing leader's clock.
pub const MAX_KEY_FUTURE_MS: u64 = 60_000;

/// A stored value with its versions.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The value.
    pub value: Value,
    /// Log index of the write that created the key.
    pub create_index: LogIndex,
    /// Log index of the last write that changed it.
    pub mod_index: LogIndex,
    /// Number of changes since it was created (1 after the creating write).
    pub version: u64,
}

/// One change applied to a key, as [`KvState::apply_batch_observed`] reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change<'a> {
    /// Log index of the entry that applied it.
    pub index: LogIndex,
    /// What it did.
    pub kind: ChangeKind,
    /// The key.
    pub key: &'a str,
    /// The key's value after the change; `None` for a delete.
    pub value: Option<&'a Value>,
}

/// Log time, derived from the leaders' stamps (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogClock {
    /// Log time now, in ms since the first entry (not a wall-clock time).
    pub now_ms: u64,
    /// The stamp of the last entry seen, in the leader's wall-clock ms.
    pub last_stamp_ms: u64,
}

impl LogClock {
    fn observe(&mut self, stamp_ms: u64) {
        if stamp_ms > self.last_stamp_ms {
            self.now_ms += (stamp_ms - self.last_stamp_ms).min(MAX_CLOCK_STEP_MS);
        }
        self.last_stamp_ms = stamp_ms;
    }
}

/// The key/value map and the idempotency table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KvState {
    data: imbl::OrdMap<String, Stored>,
    idem: IdemTable,
    clock: LogClock,
}

/// Everything a [`KvState`] holds apart from its two maps, for snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateMeta {
    /// Log time.
    pub clock: LogClock,
    /// The idempotency horizon.
    pub horizon_ms: u64,
}

impl KvState {
    /// Apply one batch that sits at log index `index`; one reply per operation.
    pub fn apply_batch(&mut self, index: LogIndex, batch: &Batch) -> BatchResult {
        self.apply_batch_observed(index, batch, &mut |_| {})
    }

    /// [`apply_batch`](Self::apply_batch), calling `on_change` with every change made, in
    /// order.
    pub fn apply_batch_observed(
        &mut self,
        index: LogIndex,
        batch: &Batch,
        on_change: &mut dyn FnMut(Change<'_>),
    ) -> BatchResult {
        self.clock.observe(batch.ts_ms);
        self.idem.expire(self.clock.now_ms, IDEMPOTENCY_TTL_MS);
        let replies = batch
            .ops
            .iter()
            .map(|op| self.apply_op(index, batch.ts_ms, op, on_change))
            .collect();
        BatchResult { replies }
    }

    fn apply_op(
        &mut self,
        index: LogIndex,
        stamp_ms: u64,
        op: &Op,
        on_change: &mut dyn FnMut(Change<'_>),
    ) -> OpReply {
        let Some(idem) = op.idem else {
            return OpReply {
                outcome: self.checked_mutate(index, op, on_change),
                replayed: false,
            };
        };
        let fingerprint = fingerprint(op);
        if let Some(record) = self.idem.get(&idem) {
            let outcome = if record.fingerprint == fingerprint {
                record.outcome
            } else {
                OpOutcome::IdempotencyKeyReused
            };
            return OpReply {
                outcome,
                replayed: true,
            };
        }
        let refusal = if idem.time_ms() <= self.idem.horizon_ms() {
            Some(OpOutcome::IdempotencyKeyExpired)
        } else if idem.time_ms() > stamp_ms.saturating_add(MAX_KEY_FUTURE_MS) {
            Some(OpOutcome::IdempotencyKeyFromFuture)
        } else {
            None
        };
        if let Some(outcome) = refusal {
            return OpReply {
                outcome,
                replayed: false,
            };
        }
        let outcome = self.checked_mutate(index, op, on_change);
        self.idem
            .insert(self.clock.now_ms, idem, IdemRecord { fingerprint, outcome });
        OpReply {
            outcome,
            replayed: false,
        }
    }

    /// Apply `op` if its condition holds against the state as it is now.
    fn checked_mutate(
        &mut self,
        index: LogIndex,
        op: &Op,
        on_change: &mut dyn FnMut(Change<'_>),
    ) -> OpOutcome {
        if let Some(cond) = op.cond {
            let current = self.data.get(&op.key).map(|s| s.mod_index);
            let holds = match cond {
                Condition::ModIndex(expected) => current == Some(expected),
                Condition::Absent => current.is_none(),
            };
            if !holds {
                return OpOutcome::PreconditionFailed { current };
            }
        }
        self.mutate(index, op, on_change)
    }

    fn mutate(&mut self, index: LogIndex, op: &Op, on_change: &mut dyn FnMut(Change<'_>)) -> OpOutcome {
        let kind = match &op.cmd {
            Command::Put(v) => {
                self.store(index, &op.key, v.clone());
                ChangeKind::Put
            }
            Command::Delete => match self.data.remove(&op.key) {
                Some(_) => ChangeKind::Delete,
                None => return OpOutcome::NotFound { index },
            },
            Command::Append(v) => {
                match self.data.get_mut(&op.key) {
                    None => self.store(index, &op.key, Value::Array(vec![v.clone()])),
                    Some(stored) => {
                        match (&mut stored.value, v) {
                            (Value::Array(items), v) => items.push(v.clone()),
                            (Value::String(s), Value::String(tail)) => s.push_str(tail),
                            (existing, v) => {
                                return OpOutcome::TypeConflict {
                                    existing: JsonType::of(existing),
                                    appended: JsonType::of(v),
                                }
                            }
                        }
                        stored.mod_index = index;
                        stored.version += 1;
                    }
                }
                ChangeKind::Append
            }
        };
        on_change(Change {
            index,
            kind,
            key: &op.key,
            value: self.data.get(&op.key).map(|s| &s.value),
        });
        OpOutcome::Applied { index }
    }

    /// Set `key` to `value` at `index`, keeping its creation index and counting the change.
    fn store(&mut self, index: LogIndex, key: &str, value: Value) {
        match self.data.get_mut(key) {
            Some(s) => {
                s.value = value;
                s.mod_index = index;
                s.version += 1;
            }
            None => {
                self.data.insert(
                    key.to_string(),
                    Stored {
                        value,
                        create_index: index,
                        mod_index: index,
                        version: 1,
                    },
                );
            }
        }
    }

    /// The value of `key` with its versions.
    pub fn get(&self, key: &str) -> Option<&Stored> {
        self.data.get(key)
    }

    /// Keys starting with `prefix`, ascending, at most `limit`; the flag says more matched.
    pub fn keys(&self, prefix: &str, limit: usize) -> (Vec<String>, bool) {
        let mut it = self
            .data
            .range::<_, str>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone());
        let keys: Vec<String> = it.by_ref().take(limit).collect();
        let truncated = it.next().is_some();
        (keys, truncated)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Number of remembered idempotency keys.
    pub fn records(&self) -> usize {
        self.idem.len()
    }

    /// Every key with its value, in key order (for snapshots).
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Stored)> {
        self.data.iter()
    }

    /// The idempotency table's segments, oldest first (for snapshots).
    pub fn idempotency_segments(&self) -> impl Iterator<Item = &Segment> {
        self.idem.segments()
    }

    /// Clock and horizon (for snapshots).
    pub fn meta(&self) -> StateMeta {
        StateMeta {
            clock: self.clock,
            horizon_ms: self.idem.horizon_ms(),
        }
    }

    /// Rebuild a state from what [`entries`](Self::entries),
    /// [`idempotency_segments`](Self::idempotency_segments) and [`meta`](Self::meta) gave.
    pub fn from_parts(
        entries: impl IntoIterator<Item = (String, Stored)>,
        segments: Vec<Segment>,
        meta: StateMeta,
    ) -> KvState {
        KvState {
            data: entries.into_iter().collect(),
            idem: IdemTable::from_parts(segments, meta.horizon_ms),
            clock: meta.clock,
        }
    }
}

/// A stable 64-bit FNV-1a hash of what an operation does, so that a reused idempotency key can
/// be told apart from a genuine retry. It must not depend on the process or the build (no
/// random seeds, no std hasher whose algorithm may change).
pub fn fingerprint(op: &Op) -> u64 {
    let mut h = Fnv::default();
    h.write(op.key.as_bytes());
    h.write(&[0]);
    match &op.cmd {
        Command::Put(v) => {
            h.write(b"P");
            h.write_json(v);
        }
        Command::Append(v) => {
            h.write(b"A");
            h.write_json(v);
        }
        Command::Delete => h.write(b"D"),
    }
    // Only conditional writes hash a condition, so that the fingerprints of unconditional
    // writes, which tables in snapshots already hold, stay what they were.
    match op.cond {
        None => {}
        Some(Condition::ModIndex(i)) => {
            h.write(b"\0=");
            h.write(&i.to_le_bytes());
        }
        Some(Condition::Absent) => h.write(b"\0!"),
    }
    h.0
}

struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_json(&mut self, v: &Value) {
        // Serializing into the hasher avoids building the JSON text in memory.
        let _ = serde_json::to_writer(FnvWriter(self), v);
    }
}

struct FnvWriter<'a>(&'a mut Fnv);

impl std::io::Write for FnvWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::IdemKey;
    use serde_json::json;

    /// A UUIDv7 created at `ms` with a distinguishing tail.
    fn key(ms: u64, tail: u64) -> IdemKey {
        IdemKey((u128::from(ms) << 80) | (7u128 << 76) | u128::from(tail))
    }

    fn op(k: &str, cmd: Command, idem: Option<IdemKey>) -> Op {
        Op {
            key: k.into(),
            cmd,
            idem,
            cond: None,
        }
    }

    fn cond_op(k: &str, cmd: Command, idem: Option<IdemKey>, cond: Condition) -> Op {
        Op {
            cond: Some(cond),
            ..op(k, cmd, idem)
        }
    }

    fn apply(s: &mut KvState, index: LogIndex, ts_ms: u64, ops: Vec<Op>) -> Vec<OpReply> {
        s.apply_batch(index, &Batch { ts_ms, ops }).replies
    }

    fn value(s: &KvState, k: &str) -> Option<Value> {
        s.get(k).map(|s| s.value.clone())
    }

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn put_append_delete_follow_the_assignment() {
        let mut s = KvState::default();
        apply(
            &mut s,
            1,
            T0,
            vec![op("a", Command::Put(json!(["cat", "dog"])), None)],
        );
        apply(
            &mut s,
            2,
            T0,
            vec![op("a", Command::Append(json!("mouse")), None)],
        );
        assert_eq!(value(&s, "a"), Some(json!(["cat", "dog", "mouse"])));

        apply(&mut s, 3, T0, vec![op("b", Command::Append(json!([1])), None)]);
        assert_eq!(value(&s, "b"), Some(json!([[1]])), "absent key becomes [value]");
        apply(&mut s, 4, T0, vec![op("b", Command::Append(json!([2])), None)]);
        assert_eq!(
            value(&s, "b"),
            Some(json!([[1], [2]])),
            "a list is pushed as one element"
        );

        apply(&mut s, 5, T0, vec![op("s", Command::Put(json!("ab")), None)]);
        apply(&mut s, 6, T0, vec![op("s", Command::Append(json!("cd")), None)]);
        assert_eq!(value(&s, "s"), Some(json!("abcd")));

        let r = apply(&mut s, 7, T0, vec![op("a", Command::Delete, None)]);
        assert_eq!(r[0].outcome, OpOutcome::Applied { index: 7 });
        let r = apply(&mut s, 8, T0, vec![op("a", Command::Delete, None)]);
        assert_eq!(r[0].outcome, OpOutcome::NotFound { index: 8 });
    }

    #[test]
    fn keys_carry_versions_and_a_delete_resets_them() {
        let mut s = KvState::default();
        apply(&mut s, 3, T0, vec![op("k", Command::Put(json!(1)), None)]);
        apply(&mut s, 5, T0, vec![op("k", Command::Append(json!(2)), None)]);
        let st = s.get("k").expect("present");
        assert_eq!((st.create_index, st.mod_index, st.version), (3, 3, 1));
        apply(&mut s, 6, T0, vec![op("k", Command::Put(json!([1])), None)]);
        let st = s.get("k").expect("present");
        assert_eq!((st.create_index, st.mod_index, st.version), (3, 6, 2));
        apply(&mut s, 7, T0, vec![op("k", Command::Append(json!(2)), None)]);
        let st = s.get("k").expect("present");
        assert_eq!((st.create_index, st.mod_index, st.version), (3, 7, 3));
        // A failed append changes nothing, versions included.
        apply(&mut s, 8, T0, vec![op("n", Command::Put(json!(0)), None)]);
        apply(&mut s, 9, T0, vec![op("n", Command::Append(json!(1)), None)]);
        assert_eq!(s.get("n").map(|s| s.version), Some(1));
        apply(&mut s, 10, T0, vec![op("k", Command::Delete, None)]);
        apply(&mut s, 11, T0, vec![op("k", Command::Put(json!(0)), None)]);
        let st = s.get("k").expect("present");
        assert_eq!((st.create_index, st.mod_index, st.version), (11, 11, 1));
    }

    #[test]
    fn append_onto_incompatible_types_changes_nothing() {
        let mut s = KvState::default();
        apply(&mut s, 1, T0, vec![op("n", Command::Put(json!(5)), None)]);
        apply(&mut s, 2, T0, vec![op("s", Command::Put(json!("x")), None)]);
        let r = apply(
            &mut s,
            3,
            T0,
            vec![
                op("n", Command::Append(json!(1)), None),
                op("s", Command::Append(json!(1)), None),
                op("s", Command::Append(json!({"k": 1})), None),
            ],
        );
        assert_eq!(
            r[0].outcome,
            OpOutcome::TypeConflict {
                existing: JsonType::Number,
                appended: JsonType::Number
            }
        );
        assert_eq!(
            r[1].outcome,
            OpOutcome::TypeConflict {
                existing: JsonType::String,
                appended: JsonType::Number
            }
        );
        assert!(matches!(r[2].outcome, OpOutcome::TypeConflict { .. }));
        assert_eq!(value(&s, "n"), Some(json!(5)));
        assert_eq!(value(&s, "s"), Some(json!("x")));
    }

    #[test]
    fn a_retried_write_is_applied_once_and_answered_with_the_original_result() {
        let mut s = KvState::default();
        let id = key(T0, 1);
        let w = || op("k", Command::Append(json!("x")), Some(id));
        let first = apply(&mut s, 1, T0, vec![w()]);
        // Two copies in one batch and one more later: all answered from the table.
        let again = apply(&mut s, 2, T0 + 1000, vec![w(), w()]);
        assert_eq!(value(&s, "k"), Some(json!(["x"])));
        assert!(!first[0].replayed);
        for r in &again {
            assert!(r.replayed);
            assert_eq!(r.outcome, OpOutcome::Applied { index: 1 });
        }
        // Reusing the key for a different write is refused and changes nothing.
        let other = apply(
            &mut s,
            3,
            T0 + 2000,
            vec![op("k", Command::Append(json!("y")), Some(id))],
        );
        assert_eq!(other[0].outcome, OpOutcome::IdempotencyKeyReused);
        assert_eq!(value(&s, "k"), Some(json!(["x"])));
    }

    #[test]
    fn a_retry_after_its_record_expired_is_refused_never_applied_again() {
        let mut s = KvState::default();
        let old = key(T0, 1);
        let w = |k| op("k", Command::Append(json!("x")), Some(k));
        apply(&mut s, 1, T0, vec![w(old)]);
        // Nine minutes later (in steps the clock accepts) the record is still there.
        for i in 1..=54 {
            apply(&mut s, 1 + i, T0 + i * 10_000, vec![]);
        }
        assert_eq!(s.records(), 1);
        // Past ten minutes of log time the record is gone...
        for i in 55..=61 {
            apply(&mut s, 1 + i, T0 + i * 10_000, vec![]);
        }
        assert_eq!(s.records(), 0);
        // ...and the late retry is refused instead of appending a second "x".
        let late = apply(&mut s, 100, T0 + 700_000, vec![w(old)]);
        assert_eq!(late[0].outcome, OpOutcome::IdempotencyKeyExpired);
        assert_eq!(value(&s, "k"), Some(json!(["x"])));
        // A fresh key made after the forgotten one is applied.
        let fresh = apply(&mut s, 101, T0 + 700_000, vec![w(key(T0 + 699_000, 2))]);
        assert_eq!(fresh[0].outcome, OpOutcome::Applied { index: 101 });
    }

    #[test]
    fn keys_from_far_in_the_future_are_refused() {
        let mut s = KvState::default();
        let r = apply(
            &mut s,
            1,
            T0,
            vec![
                op(
                    "a",
                    Command::Put(json!(1)),
                    Some(key(T0 + MAX_KEY_FUTURE_MS + 1, 1)),
                ),
                op("b", Command::Put(json!(1)), Some(key(T0 + MAX_KEY_FUTURE_MS, 2))),
            ],
        );
        assert_eq!(r[0].outcome, OpOutcome::IdempotencyKeyFromFuture);
        assert_eq!(r[1].outcome, OpOutcome::Applied { index: 1 });
        assert!(s.get("a").is_none());
    }

    #[test]
    fn one_entry_moves_log_time_by_a_bounded_step_and_a_slow_leader_does_not_freeze_it() {
        let mut s = KvState::default();
        apply(&mut s, 1, T0, vec![]);
        let start = s.meta().clock.now_ms;
        // A leader whose clock is an hour ahead moves log time by one step only.
        apply(&mut s, 2, T0 + 3_600_000, vec![]);
        assert_eq!(s.meta().clock.now_ms, start + MAX_CLOCK_STEP_MS);
        // The next leader's clock is right (an hour behind): time neither goes back nor stops.
        apply(&mut s, 3, T0 + 1_000, vec![]);
        assert_eq!(s.meta().clock.now_ms, start + MAX_CLOCK_STEP_MS);
        apply(&mut s, 4, T0 + 3_000, vec![]);
        assert_eq!(s.meta().clock.now_ms, start + MAX_CLOCK_STEP_MS + 2_000);
    }

    #[test]
    fn a_clock_jump_cannot_expire_every_record_at_once() {
        let mut s = KvState::default();
        for i in 0..10 {
            apply(
                &mut s,
                1 + i,
                T0 + i * 1_000,
                vec![op("k", Command::Put(json!(i)), Some(key(T0 + i * 1_000, i)))],
            );
        }
        apply(&mut s, 20, T0 + 100 * 3_600_000, vec![]);
        assert_eq!(s.records(), 10, "one entry far ahead forgets nothing");
    }

    #[test]
    fn state_round_trips_through_its_parts() {
        let mut s = KvState::default();
        apply(
            &mut s,
            1,
            T0,
            vec![
                op("a", Command::Put(json!({"x": [1, 2]})), Some(key(T0, 1))),
                op("b", Command::Append(json!("y")), Some(key(T0, 2))),
            ],
        );
        let back = KvState::from_parts(
            s.entries().map(|(k, v)| (k.clone(), v.clone())),
            s.idempotency_segments().cloned().collect(),
            s.meta(),
        );
        assert_eq!(back, s);
    }

    #[test]
    fn keys_lists_by_prefix_with_limit() {
        let mut s = KvState::default();
        for k in ["a/1", "a/2", "a/3", "b", "a"] {
            apply(&mut s, 1, T0, vec![op(k, Command::Put(json!(1)), None)]);
        }
        assert_eq!(
            s.keys("a/", 10),
            (vec!["a/1".into(), "a/2".into(), "a/3".into()], false)
        );
        assert_eq!(s.keys("a/", 2), (vec!["a/1".into(), "a/2".into()], true));
        assert_eq!(s.keys("", 100).0.len(), 5);
        assert_eq!(s.keys("zzz", 10), (vec![], false));
    }

    #[test]
    fn a_condition_is_checked_against_the_state_it_is_applied_to() {
        let mut s = KvState::default();
        let put = |v| Command::Put(json!(v));
        // Absent: the first creates the key, the second (same entry) finds it.
        let r = apply(
            &mut s,
            3,
            T0,
            vec![
                cond_op("lock", put("a"), None, Condition::Absent),
                cond_op("lock", put("b"), None, Condition::Absent),
            ],
        );
        assert_eq!(r[0].outcome, OpOutcome::Applied { index: 3 });
        assert_eq!(r[1].outcome, OpOutcome::PreconditionFailed { current: Some(3) });
        assert_eq!(value(&s, "lock"), Some(json!("a")));
        // Compare-and-swap: two writers that read index 3; only the first lands, and the
        // second is told the index it lost to.
        let r = apply(
            &mut s,
            4,
            T0,
            vec![
                cond_op("lock", put("c"), None, Condition::ModIndex(3)),
                cond_op("lock", Command::Append(json!("d")), None, Condition::ModIndex(3)),
            ],
        );
        assert_eq!(r[0].outcome, OpOutcome::Applied { index: 4 });
        assert_eq!(r[1].outcome, OpOutcome::PreconditionFailed { current: Some(4) });
        let st = s.get("lock").expect("present");
        assert_eq!((st.value.clone(), st.mod_index, st.version), (json!("c"), 4, 2));
        // A delete under a stale index changes nothing; under the current one it deletes.
        let r = apply(
            &mut s,
            5,
            T0,
            vec![
                cond_op("lock", Command::Delete, None, Condition::ModIndex(3)),
                cond_op("lock", Command::Delete, None, Condition::ModIndex(4)),
                cond_op("lock", Command::Delete, None, Condition::ModIndex(4)),
                cond_op("lock", Command::Append(json!(1)), None, Condition::Absent),
            ],
        );
        let outcomes: Vec<OpOutcome> = r.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            vec![
                OpOutcome::PreconditionFailed { current: Some(4) },
                OpOutcome::Applied { index: 5 },
                OpOutcome::PreconditionFailed { current: None },
                OpOutcome::Applied { index: 5 },
            ]
        );
        assert_eq!(value(&s, "lock"), Some(json!([1])));
    }

    #[test]
    fn a_retried_conditional_write_gets_its_first_answer_not_a_412_of_its_own_making() {
        let mut s = KvState::default();
        apply(&mut s, 1, T0, vec![op("n", Command::Put(json!(0)), None)]);
        let id = key(T0, 9);
        let incr = || cond_op("n", Command::Put(json!(1)), Some(id), Condition::ModIndex(1));
        let first = apply(&mut s, 2, T0, vec![incr()]);
        assert_eq!(first[0].outcome, OpOutcome::Applied { index: 2 });
        // The key's mod_index is now 2, so a fresh check would fail; the retry is answered from
        // the table instead, and nothing is applied twice.
        let retry = apply(&mut s, 3, T0 + 10, vec![incr()]);
        assert_eq!(retry[0].outcome, OpOutcome::Applied { index: 2 });
        assert!(retry[0].replayed);
        assert_eq!(s.get("n").map(|s| s.version), Some(2));
        // A failed condition is remembered too: its retry is the same 412, even after the key
        // changed in a way that would let a fresh copy through.
        let lost = key(T0, 10);
        let stale = || cond_op("n", Command::Put(json!(5)), Some(lost), Condition::ModIndex(7));
        let r = apply(&mut s, 4, T0 + 20, vec![stale()]);
        assert_eq!(r[0].outcome, OpOutcome::PreconditionFailed { current: Some(2) });
        for i in 5..=7 {
            apply(&mut s, i, T0 + 30, vec![op("n", Command::Put(json!(i)), None)]);
        }
        let r = apply(&mut s, 8, T0 + 40, vec![stale()]);
        assert_eq!(r[0].outcome, OpOutcome::PreconditionFailed { current: Some(2) });
        assert!(r[0].replayed);
        assert_eq!(value(&s, "n"), Some(json!(7)));
    }

    #[test]
    fn changes_are_reported_in_order_and_refusals_report_nothing() {
        let mut s = KvState::default();
        let mut seen = Vec::new();
        let batch = Batch {
            ts_ms: T0,
            ops: vec![
                op("a", Command::Put(json!(1)), None),
                op("a", Command::Append(json!(2)), None),
                op("l", Command::Append(json!("x")), None),
                op("l", Command::Append(json!("y")), None),
                op("a", Command::Delete, None),
                op("a", Command::Delete, None),
                cond_op("l", Command::Put(json!(0)), None, Condition::Absent),
                op("s", Command::Put(json!("t")), None),
                op("s", Command::Append(json!(3)), None),
            ],
        };
        s.apply_batch_observed(7, &batch, &mut |c| {
            seen.push((c.index, c.kind, c.key.to_string(), c.value.cloned()))
        });
        // The append onto a number, the second delete, the failed condition and the append
        // of a number onto a string change nothing and are not reported.
        assert_eq!(
            seen,
            vec![
                (7, ChangeKind::Put, "a".into(), Some(json!(1))),
                (7, ChangeKind::Append, "l".into(), Some(json!(["x"]))),
                (7, ChangeKind::Append, "l".into(), Some(json!(["x", "y"]))),
                (7, ChangeKind::Delete, "a".into(), None),
                (7, ChangeKind::Put, "s".into(), Some(json!("t"))),
            ]
        );
        // A replayed retry reports nothing either.
        let id = key(T0, 1);
        let w = || op("r", Command::Append(json!(1)), Some(id));
        let mut n = 0;
        s.apply_batch_observed(
            8,
            &Batch {
                ts_ms: T0,
                ops: vec![w(), w()],
            },
            &mut |_| n += 1,
        );
        assert_eq!(n, 1);
    }

    #[test]
    fn fingerprints_tell_writes_apart() {
        let p = |k: &str, v| fingerprint(&op(k, Command::Put(v), None));
        assert_eq!(p("a", json!(1)), p("a", json!(1)));
        assert_ne!(p("a", json!(1)), p("a", json!(2)));
        assert_ne!(p("a", json!(1)), p("b", json!(1)));
        assert_ne!(
            p("a", json!(1)),
            fingerprint(&op("a", Command::Append(json!(1)), None))
        );
        let c = |cond| fingerprint(&cond_op("a", Command::Put(json!(1)), None, cond));
        assert_ne!(c(Condition::ModIndex(3)), p("a", json!(1)));
        assert_ne!(c(Condition::ModIndex(3)), c(Condition::ModIndex(4)));
        assert_ne!(c(Condition::ModIndex(3)), c(Condition::Absent));
        // Unconditional writes hash as they always did: the tables in existing snapshots hold
        // these fingerprints.
        assert_eq!(p("a", json!(1)), 0xabdd_3c82_0dc5_6eb7);
    }
}
