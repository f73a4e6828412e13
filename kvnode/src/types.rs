//! The types openraft is instantiated with, and the payload of a log entry.
//!
//! One log entry carries a [`Batch`] of client operations rather than a single one: openraft 0.9
//! flushes the leader's log once per `client_write`, so the node groups concurrent writes into
//! one entry (see `batcher`). The entry also carries the leader's wall-clock time when it was
//! proposed; replicas use that stamp, never their own clocks, to expire idempotency records,
//! which keeps every replica's table identical.

use std::io::Cursor;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use kvapi::{LogIndex, NodeId, Term};

/// What openraft stores about each member: where it listens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Client HTTP address, `host:port`.
    pub http: String,
    /// Peer (Raft) address, `host:port`.
    pub raft: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http={} raft={}", self.http, self.raft)
    }
}

openraft::declare_raft_types!(
    /// The Raft type configuration of kvnode.
    pub TypeConfig:
        D = Batch,
        R = BatchResult,
        NodeId = NodeId,
        Node = NodeInfo,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The Raft handle of this application.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id of this application.
pub type LogId = openraft::LogId<NodeId>;
/// A log entry of this application.
pub type Entry = openraft::Entry<TypeConfig>;
/// Membership as stored in the state machine.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
/// Snapshot metadata of this application.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
/// A storage error of this application.
pub type StorageError = openraft::StorageError<NodeId>;

/// The application payload of one log entry: operations applied in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Leader's wall clock (ms since the Unix epoch) when the batch was proposed.
    pub ts_ms: u64,
    /// The operations, applied in this order.
    pub ops: Vec<Op>,
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
    pub idem: Option<String>,
}

/// A mutation of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", content = "value", rename_all = "snake_case")]
pub enum Command {
    /// Replace the value.
    Put(Value),
    /// Push onto a list / concatenate onto a string / create `[value]`.
    Append(Value),
    /// Remove the key.
    Delete,
}

/// Outcome of one operation, decided deterministically by the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
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
        existing: String,
        /// JSON type of the appended value.
        appended: String,
    },
    /// The idempotency key was first used for a different write; nothing changed.
    IdempotencyKeyReused,
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
