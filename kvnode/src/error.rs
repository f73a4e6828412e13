//! The one place where errors become HTTP answers.
//!
//! Every failure a client can see is an [`ApiError`]: a machine-readable code (whose HTTP status
//! is fixed by `ErrorCode::http_status`), one sentence for people, and where useful the leader's
//! address or a `Retry-After`. No error is ever sent with a 2xx status.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use kvapi::{ErrorBody, ErrorCode, ErrorDetail, LeaderRef};

use crate::node::NodeError;

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
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            leader: None,
            retry_after: None,
        }
    }

    /// 400 with `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// Map a node error, adding the leader this node knows of.
    pub fn from_node(e: NodeError, leader: Option<LeaderRef>) -> Self {
        let code = match &e {
            NodeError::NotLeader { .. } | NodeError::NoLeader { .. } | NodeError::NoQuorum(_) => {
                ErrorCode::Unavailable
            }
            NodeError::OutcomeUnknown { .. } | NodeError::Interrupted => ErrorCode::OutcomeUnknown,
            NodeError::ShuttingDown => ErrorCode::ShuttingDown,
            NodeError::Internal(_) => ErrorCode::Internal,
        };
        let retry_after = matches!(code, ErrorCode::Unavailable | ErrorCode::ShuttingDown).then_some(1);
        ApiError {
            code,
            message: e.to_string(),
            leader,
            retry_after,
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
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
