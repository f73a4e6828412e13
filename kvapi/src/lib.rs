//! Wire types shared by `kvnode` (the server) and `kvctl` (the client).
//!
//! Everything that crosses the client HTTP API lives here, so the two programs cannot drift
//! apart: request bodies, response bodies, the error envelope with its machine-readable codes,
//! the status document, and the cluster file that both programs read to learn where the nodes
//! are. The server owns the semantics; this crate only fixes the shapes.
//!
//! The HTTP API itself is described in `api_description.yml` at the top of the repository.
//! Conditional writes ([`precondition`]) and the watch stream ([`watch`]) have modules of
//! their own.

pub mod cluster;
pub mod ops;
pub mod precondition;
pub mod snapshot;
pub mod watch;

pub use cluster::{ClientSecurity, ClusterFile, ClusterFileError, NodeAddr, NodeTls};
pub use precondition::Precondition;
pub use watch::{ChangeKind, WatchEvent, WatchProgress};

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
    /// Log index of the write that created the key (since it last did not exist).
    #[serde(default)]
    pub create_index: LogIndex,
    /// Log index of the last write that changed the key; also sent as the `ETag` header, and
    /// what `If-Match` compares with.
    #[serde(default)]
    pub mod_index: LogIndex,
    /// Number of changes since the key was created: 1 after the creating write.
    #[serde(default)]
    pub version: u64,
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
    /// A conditional write's condition (`If-Match` / `If-None-Match`) did not hold when the
    /// write was applied; nothing changed. The error says the key's current `mod_index`, or
    /// that it does not exist: read it again and decide. (412)
    PreconditionFailed,
    /// A watch asked for changes older than the node's history of changes reaches; the error
    /// says the oldest index a watch can resume from. Read the current value and watch from its
    /// `mod_index`, or try another node. (410)
    Compacted,
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
    /// The node id named is not a member of the cluster (neither voter nor learner). (404)
    MemberNotFound,
    /// The membership change contradicts the current membership: the id or an address is
    /// taken, the node is not a learner, the last voter would go. Nothing changed. (409)
    MemberConflict,
    /// The learner is too far behind the leader to be promoted yet: wait until it has caught
    /// up (`kvctl member list` shows its lag) and retry. Nothing changed. (409)
    LearnerBehind,
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
        ErrorCode::PreconditionFailed,
        ErrorCode::Compacted,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::IdempotencyKeyExpired,
        ErrorCode::ValueTooLarge,
        ErrorCode::Unavailable,
        ErrorCode::NoQuorum,
        ErrorCode::OutcomeUnknown,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
        ErrorCode::MemberNotFound,
        ErrorCode::MemberConflict,
        ErrorCode::LearnerBehind,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::Overloaded,
    ];

    /// HTTP status code that goes with this error.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidJson | ErrorCode::InvalidRequest => 400,
            ErrorCode::KeyNotFound | ErrorCode::NotFound | ErrorCode::MemberNotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::TypeConflict | ErrorCode::MemberConflict | ErrorCode::LearnerBehind => 409,
            ErrorCode::Compacted => 410,
            ErrorCode::PreconditionFailed => 412,
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
    /// `precondition_failed`: whether the key exists now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    /// `precondition_failed`: the key's `mod_index` now, when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mod_index: Option<LogIndex>,
    /// `compacted`: the oldest index the node's history of changes still covers; a watch with
    /// `after` at or above `oldest_index - 1` can be served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_index: Option<LogIndex>,
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

/// One member of the cluster (a voter in [`Status::members`], a learner in
/// [`Status::learners`]).
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
    /// Voting members, sorted by id. During a membership change (joint consensus) the voters
    /// of both configurations.
    pub members: Vec<Member>,
    /// Learners: members that receive the log but do not vote, sorted by id. Absent from
    /// older nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners: Vec<Member>,
    /// The id of the cluster this node belongs to, made when the cluster formed; absent while
    /// the node waits to form or join one, and from older nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// On the leader: each follower's progress. Absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followers: Option<Vec<FollowerProgress>>,
    /// Number of keys in this replica.
    pub keys: u64,
}

/// Whether a member votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// Votes in elections and counts towards the quorum of every commit.
    Voter,
    /// Receives the log (and snapshots) but neither votes nor counts towards a quorum.
    Learner,
}

impl MemberRole {
    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
        }
    }
}

/// One member as the leader sees it: `GET /admin/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its id.
    pub id: NodeId,
    /// Its client HTTP address, `host:port` (empty when the cluster has not learned it yet:
    /// a member of the assignment's command line that was down when the cluster formed).
    pub http: String,
    /// Its peer (Raft) address, `host:port`.
    pub raft: String,
    /// Voter or learner.
    pub role: MemberRole,
    /// Highest log index the leader knows the member stores; `None` when unknown.
    pub matched_index: Option<LogIndex>,
    /// Entries behind the leader's last log index; `None` when unknown.
    pub lag: Option<u64>,
    /// A voter that lost its data and was made a learner to catch up: the leader promotes it
    /// back by itself once it has.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promote_when_caught_up: bool,
}

/// Answer to `GET /admin/members` and to every membership change: the membership after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersResponse {
    /// The cluster's id.
    pub cluster_id: String,
    /// The leader that answered.
    pub leader: NodeId,
    /// Its term.
    pub term: Term,
    /// True while a change is in progress (joint consensus: both the old and the new voters
    /// must agree on every commit).
    pub joint: bool,
    /// Every member, sorted by id.
    pub members: Vec<MemberStatus>,
}

/// Body of `POST /admin/members`: add a learner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemberBody {
    /// The new node's id, unused in the cluster.
    pub id: NodeId,
    /// Its client HTTP address.
    pub http: String,
    /// Its peer (Raft) address.
    pub raft: String,
}

/// Body of `PUT /admin/members/{id}`: new addresses of a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateMemberBody {
    /// Its client HTTP address.
    pub http: String,
    /// Its peer (Raft) address.
    pub raft: String,
}

/// Body of `POST /admin/leader/transfer`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferLeaderBody {
    /// The voter to hand leadership to; absent: the most up-to-date other voter.
    #[serde(default)]
    pub to: Option<NodeId>,
}

/// Answer to `POST /admin/leader/transfer`: who leads now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLeaderResponse {
    /// The new leader.
    pub leader: NodeId,
    /// Its client address, when known.
    pub http: Option<String>,
    /// The term it leads.
    pub term: Term,
    /// The leader before the transfer.
    pub previous: NodeId,
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
                exists: None,
                mod_index: None,
                oldest_index: None,
            },
        };
        let text = serde_json::to_string(&body).expect("serializes");
        assert_eq!(text, r#"{"error":{"code":"outcome_unknown","message":"m"}}"#);
        assert_eq!(ErrorCode::TypeConflict.http_status(), 409);
        assert_eq!(ErrorCode::Unavailable.http_status(), 503);
        assert_eq!(ErrorCode::IdempotencyKeyExpired.http_status(), 422);
        assert_eq!(ErrorCode::PreconditionFailed.http_status(), 412);
        assert_eq!(ErrorCode::Compacted.http_status(), 410);
        assert_eq!(
            serde_json::to_value(ErrorCode::PreconditionFailed).expect("serializes"),
            "precondition_failed"
        );
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
