//! Wire types shared by `kvnode` (the server) and `kvctl` (the client).
//!
//! Everything that crosses the client HTTP API lives here, so the two programs cannot drift
//! apart: request bodies, response bodies, the error envelope with its machine-readable codes,
//! the status document, and the cluster file that both programs read to learn where the nodes
//! are. The server owns the semantics; this crate only fixes the shapes.
//!
//! The HTTP API itself is described in `api_description.yml` at the top of the repository.

pub mod cluster;

pub use cluster::{ClientSecurity, ClusterFile, ClusterFileError, NodeAddr, NodeTls};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A node's identity inside a cluster.
pub type NodeId = u64;
/// A position in the replicated log.
pub type LogIndex = u64;
/// A Raft term: a period with at most one leader.
pub type Term = u64;

/// Header carrying a client-chosen identity for a write. A retry that reuses it is applied once
/// and answered with the original result.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Response header set to `true` when a write was answered from the idempotency table instead of
/// being applied again.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Longest accepted idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// How long the cluster remembers an idempotency key after the write it names was applied, by
/// the clock written into the log. A retry of a write must reach the cluster within this time, or the cluster can
/// no longer tell whether it applied the write (`422 idempotency_key_expired`).
pub const IDEMPOTENCY_RETENTION: std::time::Duration = std::time::Duration::from_secs(600);
/// The server's default bound on waiting for a leader during an election before it answers
/// `503 unavailable`. Clients size their per-attempt timeouts from it, so that they hear the
/// server's own answer instead of cutting the request off first.
pub const DEFAULT_LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// The server's default bound on waiting for a write to commit before it answers
/// `504 outcome_unknown`; see [`DEFAULT_LEADER_WAIT`].
pub const DEFAULT_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest accepted key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Default limit on the size of one value (serialized JSON), in bytes.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// The two kinds of write carried by `POST /keys/{key}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WriteKind {
    /// Replace the value.
    Put,
    /// Push onto a list, or concatenate onto a string.
    Append,
}

/// Body of `POST /keys/{key}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteBody {
    /// `PUT` or `APPEND`.
    #[serde(rename = "type")]
    pub kind: WriteKind,
    /// Any JSON value.
    pub value: Value,
}

/// Answer to a successful PUT, APPEND or DELETE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResponse {
    /// The key that was written.
    pub key: String,
    /// Log index of the entry in which the write was applied.
    pub index: LogIndex,
}

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Confirmed with a quorum first: never older than a write acknowledged before the read.
    #[default]
    Linearizable,
    /// Served from the local replica as far as it has applied; may be behind.
    Stale,
}

impl Consistency {
    /// The name used in query strings and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Stale => "stale",
        }
    }
}

/// Answer to `GET /keys/{key}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetResponse {
    /// The key that was read.
    pub key: String,
    /// Its value.
    pub value: Value,
    /// How the read was served.
    pub consistency: Consistency,
    /// Node that served the read.
    pub served_by: NodeId,
    /// Last log index applied by the replica that served the read.
    pub applied_index: Option<LogIndex>,
}

/// Answer to `GET /keys?prefix=P&limit=N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysResponse {
    /// Matching keys in ascending byte order.
    pub keys: Vec<String>,
    /// True when more keys matched than `limit` allowed.
    pub truncated: bool,
    /// How the listing was served.
    pub consistency: Consistency,
    /// Last log index applied by the replica that served the listing.
    pub applied_index: Option<LogIndex>,
}

/// Default and largest `limit` for key listings.
pub const DEFAULT_KEYS_LIMIT: usize = 1000;
/// Largest accepted `limit` for key listings.
pub const MAX_KEYS_LIMIT: usize = 100_000;

/// Machine-readable error codes. Each names what the caller should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON: fix the input. (400)
    InvalidJson,
    /// The body or key breaks a rule (missing field, unknown type, bad key): fix the input. (400)
    InvalidRequest,
    /// The key does not exist. (404)
    KeyNotFound,
    /// No such route. (404)
    NotFound,
    /// The route exists but not with this method. (405)
    MethodNotAllowed,
    /// APPEND onto a value of an incompatible type; nothing changed. (409)
    TypeConflict,
    /// An idempotency key was reused for a different write. (422)
    IdempotencyKeyReused,
    /// The idempotency key is older than the cluster remembers keys for
    /// ([`IDEMPOTENCY_RETENTION`]), so the server cannot tell whether an earlier copy of the
    /// write was applied, and refuses to apply it again: the write's outcome is unknown. Nothing
    /// was changed by this request. (422)
    IdempotencyKeyExpired,
    /// The value or body is larger than the server accepts. (413)
    ValueTooLarge,
    /// No leader is known right now (election in progress): retry later. (503)
    Unavailable,
    /// The leader cannot reach a majority of the cluster: retry later, or elsewhere. (503)
    NoQuorum,
    /// The write was submitted but its commit was not confirmed in time: it may or may not have
    /// been applied. Retry with the same idempotency key to find out. (504)
    OutcomeUnknown,
    /// The node is shutting down: retry on another node. (503)
    ShuttingDown,
    /// A bug or a storage failure on the server. (500)
    Internal,
    /// The request carries no valid bearer token (the node runs with `--auth-file`): send
    /// `Authorization: Bearer TOKEN`. Nothing was done. (401)
    Unauthenticated,
    /// The token is valid but its role does not allow this request: use a token with the
    /// role the message names. Nothing was done. (403)
    Forbidden,
    /// The node is serving as many requests as it allows at once: retry after `Retry-After`.
    /// Nothing was done. (503)
    Overloaded,
}

impl ErrorCode {
    /// Every code, for documentation checks.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::InvalidJson,
        ErrorCode::InvalidRequest,
        ErrorCode::KeyNotFound,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::TypeConflict,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::IdempotencyKeyExpired,
        ErrorCode::ValueTooLarge,
        ErrorCode::Unavailable,
        ErrorCode::NoQuorum,
        ErrorCode::OutcomeUnknown,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::Overloaded,
    ];

    /// HTTP status code that goes with this error.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidJson | ErrorCode::InvalidRequest => 400,
            ErrorCode::KeyNotFound | ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::TypeConflict => 409,
            ErrorCode::ValueTooLarge => 413,
            ErrorCode::IdempotencyKeyReused | ErrorCode::IdempotencyKeyExpired => 422,
            ErrorCode::Internal => 500,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::Unavailable
            | ErrorCode::NoQuorum
            | ErrorCode::ShuttingDown
            | ErrorCode::Overloaded => 503,
            ErrorCode::OutcomeUnknown => 504,
        }
    }
}

/// The error envelope: every non-2xx answer has this body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// Details of an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// One human-readable sentence.
    pub message: String,
    /// The leader as far as the answering node knows, when that helps the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderRef>,
}

/// A node's role in Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Accepts writes and replicates them.
    Leader,
    /// Follows a leader.
    Follower,
    /// Asking for votes.
    Candidate,
    /// Receives the log but does not vote.
    Learner,
    /// Stopping.
    Shutdown,
}

impl Role {
    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

/// Where the leader is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRef {
    /// Its id.
    pub id: NodeId,
    /// Its client HTTP address (`host:port`), when known.
    pub http: Option<String>,
}

/// One voting member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Its client HTTP address.
    pub http: String,
    /// Its peer (Raft) address.
    pub raft: String,
}

/// Replication progress of one follower, as seen by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerProgress {
    /// The follower's id.
    pub id: NodeId,
    /// Highest log index known to be stored on the follower.
    pub matched_index: Option<LogIndex>,
    /// How many entries the follower trails the leader's last log index by; `None` when the
    /// leader does not know the follower's progress (it has not heard from it in its term).
    pub lag: Option<u64>,
}

/// Answer to `GET /admin/status`: one node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This node's id.
    pub id: NodeId,
    /// This node's role.
    pub role: Role,
    /// This node's current term.
    pub term: Term,
    /// The leader this node knows of, if any.
    pub leader: Option<LeaderRef>,
    /// Highest log index known to be committed.
    pub commit_index: Option<LogIndex>,
    /// Highest log index applied to the state machine.
    pub last_applied: Option<LogIndex>,
    /// Highest log index stored locally.
    pub last_log_index: Option<LogIndex>,
    /// Last log index covered by the latest snapshot.
    pub snapshot_index: Option<LogIndex>,
    /// Last log index deleted from the log (compacted into a snapshot). A follower whose log
    /// ends before it can only catch up from this node through a snapshot. A leader deletes
    /// entries only once no replication still needs them, so this may trail `snapshot_index`
    /// by more than the entries kept after a snapshot.
    #[serde(default)]
    pub purged_index: Option<LogIndex>,
    /// Voting members, sorted by id.
    pub members: Vec<Member>,
    /// On the leader: each follower's progress. Absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followers: Option<Vec<FollowerProgress>>,
    /// Number of keys in this replica.
    pub keys: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_body_uses_the_assignment_field_names() {
        let body: WriteBody =
            serde_json::from_str(r#"{"type":"APPEND","value":"mouse"}"#).expect("valid body parses");
        assert_eq!(body.kind, WriteKind::Append);
        assert_eq!(body.value, Value::String("mouse".into()));
    }

    #[test]
    fn error_codes_are_snake_case_and_map_to_statuses() {
        let body = ErrorBody {
            error: ErrorDetail {
                code: ErrorCode::OutcomeUnknown,
                message: "m".into(),
                leader: None,
            },
        };
        let text = serde_json::to_string(&body).expect("serializes");
        assert_eq!(text, r#"{"error":{"code":"outcome_unknown","message":"m"}}"#);
        assert_eq!(ErrorCode::TypeConflict.http_status(), 409);
        assert_eq!(ErrorCode::Unavailable.http_status(), 503);
        assert_eq!(ErrorCode::IdempotencyKeyExpired.http_status(), 422);
        assert_eq!(
            serde_json::to_value(ErrorCode::IdempotencyKeyExpired).expect("serializes"),
            "idempotency_key_expired"
        );
        let mut seen = std::collections::HashSet::new();
        assert!(
            ErrorCode::ALL.iter().all(|c| seen.insert(*c)),
            "ALL lists each code once"
        );
    }

    #[test]
    fn follower_lag_is_null_when_the_leader_does_not_know_it() {
        let unknown: FollowerProgress =
            serde_json::from_str(r#"{"id":2,"matched_index":null,"lag":null}"#).expect("parses");
        assert_eq!(unknown.lag, None);
        let known = FollowerProgress {
            id: 1,
            matched_index: Some(7),
            lag: Some(0),
        };
        assert_eq!(
            serde_json::to_string(&known).expect("serializes"),
            r#"{"id":1,"matched_index":7,"lag":0}"#
        );
    }
}
