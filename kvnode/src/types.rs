//! The types openraft is instantiated with, and the payload of a log entry.
//!
//! One log entry carries a [`Batch`] of client operations rather than a single one: the node
//! groups concurrent writes into one entry (see `batcher`), which amortises the per-entry work
//! of replication and apply. The entry also carries the leader's wall-clock time when it was
//! proposed; replicas derive the state machine's clock from those stamps, never from their own
//! clocks, so every replica expires idempotency records identically (see `state`).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use kvapi::{LogIndex, NodeId, Term};

use crate::store::StateMachineStore;

/// What openraft stores about each member, replicated with the membership in the log and in
/// snapshots: where it listens, which cluster it belongs to, and whether the leader should
/// promote it back to voter once it has caught up.
///
/// The two later fields are optional on the wire, so membership entries written before they
/// existed still decode (with an empty cluster id: see `store::Identity` for where the id of
/// such a cluster comes from).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Client HTTP address, `host:port`; empty when not known yet (a member named only by its
    /// peer address on the assignment's command line, down when the cluster formed).
    pub http: String,
    /// Peer (Raft) address, `host:port`.
    pub raft: String,
    /// The id of the cluster, made when it formed (see `cluster`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    /// A voter that lost its data (or never had any) and was made a learner to catch up: the
    /// leader promotes it back once it has (see `membership`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promote: bool,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http={} raft={}", self.http, self.raft)?;
        if self.promote {
            write!(f, " (promote when caught up)")?;
        }
        Ok(())
    }
}

openraft::declare_raft_types!(
    /// The Raft type configuration of kvnode.
    pub TypeConfig:
        D = Batch,
        R = BatchResult,
        NodeId = NodeId,
        Node = NodeInfo,
);

/// The Raft handle of this application.
pub type Raft = openraft::Raft<TypeConfig, StateMachineStore>;
/// A log id of this application.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A log entry of this application.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// A vote of this application.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// Membership as stored in the state machine.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata of this application.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;

/// An idempotency key: a UUIDv7, whose first 48 bits are its creation time in Unix
/// milliseconds. The time is what lets the state machine tell a retry whose record was
/// forgotten from a write it has never seen (see `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdemKey(pub u128);

impl IdemKey {
    /// Parse the `Idempotency-Key` header: a UUID of version 7, hyphenated or not.
    pub fn parse(text: &str) -> Result<IdemKey, String> {
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        let valid_shape = hex.len() == 32
            && hex.chars().all(|c| c.is_ascii_hexdigit())
            && (text.len() == 32 || hyphenated(text));
        let value = if valid_shape {
            u128::from_str_radix(&hex, 16).ok()
        } else {
            None
        };
        let Some(value) = value else {
            return Err(format!(
                "the Idempotency-Key {text:?} is not a UUID; send a UUIDv7 (kvctl does this for you)"
            ));
        };
        let key = IdemKey(value);
        if key.version() != 7 {
            return Err(format!(
                "the Idempotency-Key {text:?} is a version-{} UUID; it must be a UUIDv7, whose time lets the \
                 server tell a late retry from a new write",
                key.version()
            ));
        }
        Ok(key)
    }

    /// The UUID version nibble.
    fn version(self) -> u8 {
        ((self.0 >> 76) & 0xf) as u8
    }

    /// Creation time written into the key by the client, in Unix milliseconds.
    pub fn time_ms(self) -> u64 {
        (self.0 >> 80) as u64
    }
}

fn hyphenated(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 36 && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
}

impl fmt::Display for IdemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = format!("{:032x}", self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// The application payload of one log entry: operations applied in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Leader's wall clock (ms since the Unix epoch) when the batch was proposed.
    pub ts_ms: u64,
    /// The operations, applied in this order.
    pub ops: Vec<Op>,
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch of {} ops at {} ms", self.ops.len(), self.ts_ms)
    }
}

/// One client write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// The key written.
    pub key: String,
    /// What to do to it.
    pub cmd: Command,
    /// The client's idempotency key, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idem: Option<IdemKey>,
    /// The condition the write is applied under (`If-Match` / `If-None-Match`), checked by the
    /// state machine when it applies the entry. Absent from entries written before conditions
    /// existed, which therefore read back unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cond: Option<Condition>,
}

/// The condition of a conditional write. It travels inside the log entry so that every
/// replica checks it against the same state at the same point of the log (see `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The key exists and was last changed at this index.
    ModIndex(LogIndex),
    /// The key does not exist.
    Absent,
}

impl From<kvapi::Precondition> for Condition {
    fn from(p: kvapi::Precondition) -> Self {
        match p {
            kvapi::Precondition::ModIndex(i) => Condition::ModIndex(i),
            kvapi::Precondition::Absent => Condition::Absent,
        }
    }
}

/// A mutation of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Replace the value.
    Put(Value),
    /// Push onto a list / concatenate onto a string / create `[value]`.
    Append(Value),
    /// Remove the key.
    Delete,
}

/// The JSON type of a value, as named in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonType {
    /// `null`
    Null,
    /// `true` / `false`
    Boolean,
    /// A number.
    Number,
    /// A string.
    String,
    /// An array.
    List,
    /// An object.
    Object,
}

impl JsonType {
    /// The type of `v`.
    pub fn of(v: &Value) -> JsonType {
        match v {
            Value::Null => JsonType::Null,
            Value::Bool(_) => JsonType::Boolean,
            Value::Number(_) => JsonType::Number,
            Value::String(_) => JsonType::String,
            Value::Array(_) => JsonType::List,
            Value::Object(_) => JsonType::Object,
        }
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            JsonType::Null => "null",
            JsonType::Boolean => "boolean",
            JsonType::Number => "number",
            JsonType::String => "string",
            JsonType::List => "list",
            JsonType::Object => "object",
        }
    }
}

/// Outcome of one operation, decided deterministically by the state machine. Small and `Copy`
/// on purpose: the idempotency table keeps one per remembered write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpOutcome {
    /// Applied at this log index.
    Applied {
        /// Log index of the entry that applied it.
        index: LogIndex,
    },
    /// DELETE of an absent key; nothing changed.
    NotFound {
        /// Log index of the entry that carried it.
        index: LogIndex,
    },
    /// APPEND onto an incompatible value; nothing changed.
    TypeConflict {
        /// JSON type of the stored value.
        existing: JsonType,
        /// JSON type of the appended value.
        appended: JsonType,
    },
    /// The write's condition did not hold when it was applied; nothing changed.
    PreconditionFailed {
        /// The key's `mod_index` at that point, or `None` when it did not exist.
        current: Option<LogIndex>,
    },
    /// The idempotency key was first used for a different write; nothing changed.
    IdempotencyKeyReused,
    /// The idempotency key is older than the table's memory reaches: the write may have been
    /// applied long ago, so it is not applied now; nothing changed.
    IdempotencyKeyExpired,
    /// The idempotency key claims a creation time too far ahead of the leader's clock;
    /// nothing changed.
    IdempotencyKeyFromFuture,
}

/// What a replayed or fresh operation answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpReply {
    /// The outcome.
    pub outcome: OpOutcome,
    /// True when the outcome was remembered from an earlier copy of the same write.
    pub replayed: bool,
}

/// The state machine's answer to one log entry: one reply per operation (empty for blank and
/// membership entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    /// One reply per operation of the batch, in order.
    pub replies: Vec<OpReply>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_must_be_uuid_v7() {
        let k = IdemKey::parse("0190a3b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b").expect("v7");
        assert_eq!(k.time_ms(), 0x0190_a3b4_5c6d);
        assert_eq!(k.to_string(), "0190a3b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b");
        assert_eq!(IdemKey::parse("0190a3b45c6d7e8f9a0b1c2d3e4f5a6b"), Ok(k));
        for bad in [
            "",
            "abc",
            "0190a3b4-5c6d-4e8f-9a0b-1c2d3e4f5a6b", // version 4
            "0190a3b4-5c6d-7e8f-9a0b-1c2d3e4f5a6",  // short
            "0190a3b4-5c6d-7e8f-9a0b-1c2d3e4f5a6g", // not hex
            "0190a3b45-c6d-7e8f-9a0b-1c2d3e4f5a6b", // misplaced hyphen
        ] {
            assert!(IdemKey::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
