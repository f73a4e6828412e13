//! The operations surface: the bodies of `GET /health` and `GET /ready`, the request id header,
//! and the headers of `GET /admin/snapshot`.
//!
//! Health and readiness answer the same document with `200` and with `503`: they are reports
//! for probes and people, not errors, so they do not use the error envelope. A probe reads the
//! status code; a person reads `reason` and `message`.

use serde::{Deserialize, Serialize};

use crate::{LogIndex, NodeId};

/// Header carrying the id of one client request. A node takes a client's id when it is sane
/// (see [`valid_request_id`]), makes one otherwise, names it in the request's log span and
/// returns it on every answer, so an operator can find a failed request in the node's log.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id a node accepts from a client; a longer one is replaced.
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// Whether a client's `X-Request-Id` can be used as it is: 1 to 64 characters from
/// `A-Za-z0-9` and `-_.:`, so that it is safe in a log line and a label.
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Response headers of `GET /admin/snapshot`: what the streamed snapshot reflects.
pub const SNAPSHOT_INDEX_HEADER: &str = "x-snapshot-index";
/// The term of the entry at [`SNAPSHOT_INDEX_HEADER`].
pub const SNAPSHOT_TERM_HEADER: &str = "x-snapshot-term";
/// The number of keys in the streamed snapshot.
pub const SNAPSHOT_KEYS_HEADER: &str = "x-snapshot-keys";

/// Why a node's process or storage does not work (`GET /health` answering 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnhealthyReason {
    /// A write to the log or the vote failed (full disk, I/O error): the node stops serving
    /// and exits non-zero; fix the cause and restart it.
    StorageFailed,
    /// The node is stopping.
    ShuttingDown,
}

/// Body of `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// This node's id.
    pub node: NodeId,
    /// True when the process and its storage work (the answer is then 200).
    pub healthy: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<UnhealthyReason>,
    /// One sentence for people, when not healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why a node is not ready to serve (`GET /ready` answering 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotReadyReason {
    /// The node knows no leader (an election, a partition, a cluster not formed yet), or it
    /// leads but no majority has acknowledged it within its lease.
    NoLeader,
    /// The node has not applied what the leader had committed when the check began.
    CatchingUp,
    /// The node's storage failed; see `/health`.
    StorageFailed,
    /// The node is not a member (voter or learner) of the cluster's configuration.
    Removed,
}

impl NotReadyReason {
    /// The wire name, e.g. `catching_up`.
    pub fn name(self) -> &'static str {
        match self {
            NotReadyReason::NoLeader => "no_leader",
            NotReadyReason::CatchingUp => "catching_up",
            NotReadyReason::StorageFailed => "storage_failed",
            NotReadyReason::Removed => "removed",
        }
    }
}

/// Body of `GET /ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// This node's id.
    pub node: NodeId,
    /// True when the node can serve reads and writes (the answer is then 200).
    pub ready: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<NotReadyReason>,
    /// One sentence for people, when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// What the leader had committed when the check began, as far as this node knew.
    pub leader_commit: Option<LogIndex>,
    /// What this node had applied when it answered.
    pub applied_index: Option<LogIndex>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_short_and_plain() {
        assert!(valid_request_id("0190a3b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b"));
        assert!(valid_request_id("n0.abc_1:2"));
        for bad in ["", "a b", "a\nb", "é", &"x".repeat(MAX_REQUEST_ID_BYTES + 1)] {
            assert!(!valid_request_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn reasons_have_their_documented_names() {
        for r in [
            NotReadyReason::NoLeader,
            NotReadyReason::CatchingUp,
            NotReadyReason::StorageFailed,
            NotReadyReason::Removed,
        ] {
            assert_eq!(serde_json::to_value(r).expect("json"), r.name());
        }
    }
}
