//! The replicated state: a sorted map from keys to JSON values, plus the idempotency table.
//!
//! Everything here is a pure, deterministic function of the log: every replica that applies
//! the same entries ends in the same state and gives the same answers. That is what makes it
//! safe to answer a retried write from the table on any node.
//!
//! The idempotency table remembers, for each client-chosen key, a fingerprint of the write it
//! named and the outcome it got. The check happens here, while applying, and not when the write
//! is proposed: two copies of the same write may both be in the log (the client retried after a
//! leader change), and only apply sees them in their final order. Records are forgotten ten
//! minutes after their last use, measured with the time stamps that leaders write into the
//! entries, never with a replica's own clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::types::{Batch, BatchResult, Command, LogIndex, Op, OpOutcome, OpReply};

/// How long an idempotency record lives after its last use.
pub const SESSION_TTL_MS: u64 = 10 * 60 * 1000;

/// The key/value map and the idempotency table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "KvStateRepr", into = "KvStateRepr")]
pub struct KvState {
    data: BTreeMap<String, Value>,
    sessions: HashMap<String, Session>,
    /// Expiry order: (last use, idempotency key).
    expiry: BTreeSet<(u64, String)>,
    /// Largest time stamp seen in the log; the state machine's notion of "now".
    clock_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    last_used_ms: u64,
    fingerprint: u64,
    outcome: OpOutcome,
}

/// The serialized form: sessions as a list, the expiry index rebuilt on load.
#[derive(Serialize, Deserialize)]
struct KvStateRepr {
    data: BTreeMap<String, Value>,
    sessions: Vec<(String, Session)>,
    clock_ms: u64,
}

impl From<KvStateRepr> for KvState {
    fn from(r: KvStateRepr) -> Self {
        let expiry = r
            .sessions
            .iter()
            .map(|(k, s)| (s.last_used_ms, k.clone()))
            .collect();
        KvState {
            data: r.data,
            sessions: r.sessions.into_iter().collect(),
            expiry,
            clock_ms: r.clock_ms,
        }
    }
}

impl From<KvState> for KvStateRepr {
    fn from(s: KvState) -> Self {
        let mut sessions: Vec<_> = s.sessions.into_iter().collect();
        sessions.sort_by(|a, b| a.0.cmp(&b.0));
        KvStateRepr {
            data: s.data,
            sessions,
            clock_ms: s.clock_ms,
        }
    }
}

impl KvState {
    /// Apply one batch that sits at log index `index`; one reply per operation.
    pub fn apply_batch(&mut self, index: LogIndex, batch: &Batch) -> BatchResult {
        self.clock_ms = self.clock_ms.max(batch.ts_ms);
        self.expire_sessions();
        let replies = batch.ops.iter().map(|op| self.apply_op(index, op)).collect();
        BatchResult { replies }
    }

    fn apply_op(&mut self, index: LogIndex, op: &Op) -> OpReply {
        let Some(idem) = &op.idem else {
            return OpReply {
                outcome: self.mutate(index, op),
                replayed: false,
            };
        };
        let fingerprint = fingerprint(op);
        let now = self.clock_ms;
        if let Some(session) = self.sessions.get_mut(idem) {
            let outcome = if session.fingerprint == fingerprint {
                session.outcome.clone()
            } else {
                OpOutcome::IdempotencyKeyReused
            };
            self.expiry.remove(&(session.last_used_ms, idem.clone()));
            session.last_used_ms = now;
            self.expiry.insert((now, idem.clone()));
            return OpReply {
                outcome,
                replayed: true,
            };
        }
        let outcome = self.mutate(index, op);
        self.sessions.insert(
            idem.clone(),
            Session {
                last_used_ms: now,
                fingerprint,
                outcome: outcome.clone(),
            },
        );
        self.expiry.insert((now, idem.clone()));
        OpReply {
            outcome,
            replayed: false,
        }
    }

    fn mutate(&mut self, index: LogIndex, op: &Op) -> OpOutcome {
        match &op.cmd {
            Command::Put(v) => {
                self.data.insert(op.key.clone(), v.clone());
                OpOutcome::Applied { index }
            }
            Command::Delete => match self.data.remove(&op.key) {
                Some(_) => OpOutcome::Applied { index },
                None => OpOutcome::NotFound { index },
            },
            Command::Append(v) => match self.data.get_mut(&op.key) {
                None => {
                    self.data.insert(op.key.clone(), Value::Array(vec![v.clone()]));
                    OpOutcome::Applied { index }
                }
                Some(Value::Array(items)) => {
                    items.push(v.clone());
                    OpOutcome::Applied { index }
                }
                Some(Value::String(s)) if v.is_string() => {
                    s.push_str(v.as_str().unwrap_or_default());
                    OpOutcome::Applied { index }
                }
                Some(existing) => OpOutcome::TypeConflict {
                    existing: json_type(existing).to_string(),
                    appended: json_type(v).to_string(),
                },
            },
        }
    }

    fn expire_sessions(&mut self) {
        let Some(cutoff) = self.clock_ms.checked_sub(SESSION_TTL_MS) else {
            return;
        };
        while let Some((used, _)) = self.expiry.first() {
            if *used >= cutoff {
                break;
            }
            if let Some((_, key)) = self.expiry.pop_first() {
                self.sessions.remove(&key);
            }
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.data.get(key)
    }

    /// Keys starting with `prefix`, ascending, at most `limit`; the flag says more matched.
    pub fn keys(&self, prefix: &str, limit: usize) -> (Vec<String>, bool) {
        let mut it = self
            .data
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
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
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

/// The name of a JSON value's type, as used in error messages.
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// A stable 64-bit FNV-1a hash of what an operation does, so that a reused idempotency key can
/// be told apart from a genuine retry. It must not depend on the process (no random seeds).
fn fingerprint(op: &Op) -> u64 {
    let bytes = serde_json::to_vec(&(&op.key, &op.cmd)).unwrap_or_default();
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(key: &str, cmd: Command, idem: Option<&str>) -> Op {
        Op {
            key: key.into(),
            cmd,
            idem: idem.map(String::from),
        }
    }

    fn apply(s: &mut KvState, index: LogIndex, ts_ms: u64, ops: Vec<Op>) -> Vec<OpReply> {
        s.apply_batch(index, &Batch { ts_ms, ops }).replies
    }

    #[test]
    fn put_append_delete_follow_the_assignment() {
        let mut s = KvState::default();
        apply(
            &mut s,
            1,
            0,
            vec![op("a", Command::Put(json!(["cat", "dog"])), None)],
        );
        apply(&mut s, 2, 0, vec![op("a", Command::Append(json!("mouse")), None)]);
        assert_eq!(s.get("a"), Some(&json!(["cat", "dog", "mouse"])));

        apply(&mut s, 3, 0, vec![op("b", Command::Append(json!([1])), None)]);
        assert_eq!(s.get("b"), Some(&json!([[1]])), "absent key becomes [value]");
        apply(&mut s, 4, 0, vec![op("b", Command::Append(json!([2])), None)]);
        assert_eq!(
            s.get("b"),
            Some(&json!([[1], [2]])),
            "a list is pushed as one element"
        );

        apply(&mut s, 5, 0, vec![op("s", Command::Put(json!("ab")), None)]);
        apply(&mut s, 6, 0, vec![op("s", Command::Append(json!("cd")), None)]);
        assert_eq!(s.get("s"), Some(&json!("abcd")));

        let r = apply(&mut s, 7, 0, vec![op("a", Command::Delete, None)]);
        assert_eq!(r[0].outcome, OpOutcome::Applied { index: 7 });
        let r = apply(&mut s, 8, 0, vec![op("a", Command::Delete, None)]);
        assert_eq!(r[0].outcome, OpOutcome::NotFound { index: 8 });
    }

    #[test]
    fn append_onto_incompatible_types_changes_nothing() {
        let mut s = KvState::default();
        apply(&mut s, 1, 0, vec![op("n", Command::Put(json!(5)), None)]);
        apply(&mut s, 2, 0, vec![op("s", Command::Put(json!("x")), None)]);
        let r = apply(
            &mut s,
            3,
            0,
            vec![
                op("n", Command::Append(json!(1)), None),
                op("s", Command::Append(json!(1)), None),
                op("s", Command::Append(json!({"k": 1})), None),
            ],
        );
        assert_eq!(
            r[0].outcome,
            OpOutcome::TypeConflict {
                existing: "number".into(),
                appended: "number".into()
            }
        );
        assert_eq!(
            r[1].outcome,
            OpOutcome::TypeConflict {
                existing: "string".into(),
                appended: "number".into()
            }
        );
        assert!(matches!(r[2].outcome, OpOutcome::TypeConflict { .. }));
        assert_eq!(s.get("n"), Some(&json!(5)));
        assert_eq!(s.get("s"), Some(&json!("x")));
    }

    #[test]
    fn a_retried_write_is_applied_once_and_answered_with_the_original_result() {
        let mut s = KvState::default();
        let w = || op("k", Command::Append(json!("x")), Some("id-1"));
        let first = apply(&mut s, 1, 1000, vec![w()]);
        // Two copies in one batch and one more later: all answered from the table.
        let again = apply(&mut s, 2, 2000, vec![w(), w()]);
        assert_eq!(s.get("k"), Some(&json!(["x"])));
        assert!(!first[0].replayed);
        for r in &again {
            assert!(r.replayed);
            assert_eq!(r.outcome, OpOutcome::Applied { index: 1 });
        }
        // Reusing the key for a different write is refused and changes nothing.
        let other = apply(
            &mut s,
            3,
            2000,
            vec![op("k", Command::Append(json!("y")), Some("id-1"))],
        );
        assert_eq!(other[0].outcome, OpOutcome::IdempotencyKeyReused);
        assert_eq!(s.get("k"), Some(&json!(["x"])));
    }

    #[test]
    fn idempotency_records_expire_by_log_time_not_before_ten_minutes() {
        let mut s = KvState::default();
        let w = || op("k", Command::Append(json!("x")), Some("id"));
        apply(&mut s, 1, 1_000, vec![w()]);
        // Used again 9 minutes later: the record is refreshed.
        apply(&mut s, 2, 1_000 + 9 * 60_000, vec![w()]);
        // 10 minutes after the last use: still remembered.
        apply(&mut s, 3, 1_000 + 19 * 60_000, vec![]);
        assert_eq!(s.sessions(), 1);
        apply(&mut s, 4, 1_000 + 19 * 60_000, vec![w()]);
        assert_eq!(s.get("k"), Some(&json!(["x"])));
        // A leader whose clock is behind cannot move time backwards.
        apply(&mut s, 5, 0, vec![]);
        assert_eq!(s.sessions(), 1);
        // Past ten minutes after the last use the record is gone.
        apply(&mut s, 6, 1_000 + 29 * 60_000 + 1, vec![]);
        assert_eq!(s.sessions(), 0);
    }

    #[test]
    fn snapshots_round_trip_including_the_expiry_index() {
        let mut s = KvState::default();
        apply(
            &mut s,
            1,
            5,
            vec![op("a", Command::Put(json!({"x": [1, 2]})), Some("i"))],
        );
        let bytes = serde_json::to_vec(&s).expect("serializes");
        let back: KvState = serde_json::from_slice(&bytes).expect("parses");
        assert_eq!(back, s);
    }

    #[test]
    fn keys_lists_by_prefix_with_limit() {
        let mut s = KvState::default();
        for k in ["a/1", "a/2", "a/3", "b", "a"] {
            apply(&mut s, 1, 0, vec![op(k, Command::Put(json!(1)), None)]);
        }
        assert_eq!(
            s.keys("a/", 10),
            (vec!["a/1".into(), "a/2".into(), "a/3".into()], false)
        );
        assert_eq!(s.keys("a/", 2), (vec!["a/1".into(), "a/2".into()], true));
        assert_eq!(s.keys("", 100).0.len(), 5);
        assert_eq!(s.keys("zzz", 10), (vec![], false));
    }
}
