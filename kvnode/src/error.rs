//! The node's errors, and the one place where they become HTTP answers.
//!
//! [`NodeError`] is what routing a request to the leader can end in; it is phrased by what the
//! caller should do and travels between nodes when a request is forwarded. Every failure a
//! client can see is an [`ApiError`]: a machine-readable code (whose HTTP status is fixed by
//! `ErrorCode::http_status`), one sentence for people, and where useful the leader's address or
//! a `Retry-After`. No error is ever sent with a 2xx status.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use serde::{Deserialize, Serialize};

use kvapi::{ErrorBody, ErrorCode, ErrorDetail, LeaderRef};

use crate::types::{LogIndex, NodeId};

/// What can go wrong while routing and serving a request, phrased by what the caller should
/// do. Travels between nodes when a request is forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum NodeError {
    /// This node is not the leader; nothing was proposed. Send the request to the leader.
    #[error("node is not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// No leader appeared in time. Retry shortly.
    #[error("no leader is available (waited {waited_ms} ms for an election); retry shortly")]
    NoLeader {
        /// How long the node waited.
        waited_ms: u64,
    },
    /// The leader cannot confirm it still leads: a majority does not answer it. Nothing was
    /// proposed. Retry shortly, or on a node of the majority.
    #[error("the leader cannot reach a majority of the cluster ({0}); retry shortly")]
    NoQuorum(String),
    /// A write was proposed but its commit was not confirmed in time.
    #[error("the write was submitted but its commit was not confirmed within {waited_ms} ms; it may or may not have been applied (retry with the same Idempotency-Key to find out)")]
    OutcomeUnknown {
        /// How long the node waited.
        waited_ms: u64,
    },
    /// The node is stopping and did not propose the request. Retry on another node.
    #[error("node is shutting down; retry on another node")]
    ShuttingDown,
    /// The node stopped while a proposed write was in flight: it may still commit.
    #[error("the node stopped while the write was in flight; it may or may not have been applied (retry with the same Idempotency-Key to find out)")]
    Interrupted,
    /// A bug or storage failure.
    #[error("internal error: {0}")]
    Internal(String),
    /// The leader refused a forwarded write that breaks a rule (key length, value size), as
    /// it would refuse a client's. Nothing was proposed. Fix the input.
    #[error("the leader refused the write: {0}")]
    Refused(String),
}

impl NodeError {
    /// True when the error promises that nothing was proposed.
    pub fn did_nothing(&self) -> bool {
        matches!(
            self,
            NodeError::NotLeader { .. }
                | NodeError::NoLeader { .. }
                | NodeError::NoQuorum(_)
                | NodeError::ShuttingDown
                | NodeError::Refused(_)
        )
    }
}

/// An error answer of the client API.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Machine-readable code; fixes the status.
    pub code: ErrorCode,
    /// One sentence saying what happened and what to do.
    pub message: String,
    /// The leader, when known and useful.
    pub leader: Option<LeaderRef>,
    /// Seconds after which a retry makes sense.
    pub retry_after: Option<u32>,
    /// `precondition_failed`: the key's `mod_index` now, or `None` when it does not exist
    /// (sent as `exists` and `mod_index`, and the index as the `ETag` header).
    pub current: Option<Option<LogIndex>>,
    /// `compacted`: the oldest index the history still covers.
    pub oldest_index: Option<LogIndex>,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            leader: None,
            retry_after: None,
            current: None,
            oldest_index: None,
        }
    }

    /// 400 with `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// Map a node error, adding the leader this node knows of.
    pub fn from_node(e: NodeError, leader: Option<LeaderRef>) -> Self {
        let code = match &e {
            NodeError::NotLeader { .. } | NodeError::NoLeader { .. } => ErrorCode::Unavailable,
            NodeError::NoQuorum(_) => ErrorCode::NoQuorum,
            NodeError::OutcomeUnknown { .. } | NodeError::Interrupted => ErrorCode::OutcomeUnknown,
            NodeError::ShuttingDown => ErrorCode::ShuttingDown,
            NodeError::Internal(_) => ErrorCode::Internal,
            NodeError::Refused(_) => ErrorCode::InvalidRequest,
        };
        let retry_after = matches!(
            code,
            ErrorCode::Unavailable | ErrorCode::NoQuorum | ErrorCode::ShuttingDown
        )
        .then_some(1);
        ApiError {
            leader,
            retry_after,
            ..ApiError::new(code, e.to_string())
        }
    }
}

impl From<crate::membership::AdminError> for ApiError {
    /// The one mapping of membership failures to codes (and so to statuses).
    fn from(e: crate::membership::AdminError) -> Self {
        use crate::membership::AdminError;
        match e {
            AdminError::Node(e) => ApiError::from_node(e, None),
            AdminError::NotFound(m) => ApiError::new(ErrorCode::MemberNotFound, m),
            AdminError::Conflict(m) => ApiError::new(ErrorCode::MemberConflict, m),
            AdminError::Behind(m) => ApiError::new(ErrorCode::LearnerBehind, m),
            AdminError::Invalid(m) => ApiError::invalid(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                leader: self.leader,
                exists: self.current.map(|c| c.is_some()),
                mod_index: self.current.flatten(),
                oldest_index: self.oldest_index,
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(Some(index)) = self.current {
            if let Ok(tag) = HeaderValue::from_str(&kvapi::precondition::etag(index)) {
                resp.headers_mut().insert(axum::http::header::ETAG, tag);
            }
        }
        resp
    }
}
