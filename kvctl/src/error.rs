//! Errors a caller of the [`Client`](crate::Client) can act on, and the exit codes they become.
//!
//! The variants follow what the caller should do next, not where the failure happened:
//!
//! - [`ClientError::NotFound`]: the key does not exist; nothing to retry.
//! - [`ClientError::Unavailable`]: the client gave up because no leader (or no quorum) answered
//!   within the deadline; try again later or fix the cluster.
//! - [`ClientError::OutcomeUnknown`]: a write was sent but no definite answer came back before
//!   the deadline. It may or may not have been applied; retrying with the same idempotency key
//!   resolves it.
//! - [`ClientError::PreconditionFailed`]: a conditional write's condition did not hold; the
//!   key changed (or appeared, or vanished) since it was read. Read it again and decide.
//! - [`ClientError::Rejected`]: the server refused the input (bad key, type conflict, value too
//!   large); fix the input.
//! - [`ClientError::Other`]: anything else (a server bug, a response we cannot parse).
//!
//! The exit codes are part of kvctl's interface and documented in `--help`; [`Exit`] is their
//! single definition.

use std::time::Duration;

use kvapi::ErrorCode;

/// A failed client operation. Each variant names what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The key does not exist.
    #[error("key not found: {key:?}")]
    NotFound {
        /// The key that was asked for.
        key: String,
    },
    /// No leader or no quorum answered within the deadline: retry later or repair the cluster.
    #[error("cluster unavailable after {}: {reason}", format_duration(*waited))]
    Unavailable {
        /// The last reason seen, e.g. "no leader elected" or "connection refused".
        reason: String,
        /// How long the client kept trying.
        waited: Duration,
    },
    /// A write was sent but its outcome was never confirmed: it may or may not have been applied.
    /// Retrying it with the same idempotency key applies it at most once and tells which.
    #[error(
        "outcome unknown: the write may or may not have been applied ({reason}); \
         idempotency key {idempotency_key}"
    )]
    OutcomeUnknown {
        /// What left the outcome in doubt.
        reason: String,
        /// The idempotency key the write carried, to retry it safely.
        idempotency_key: String,
    },
    /// A conditional write was not applied because its condition did not hold when the
    /// cluster applied it: the key is now at `current` (or absent). Nothing was changed.
    #[error("condition not met: {message}")]
    PreconditionFailed {
        /// The key written.
        key: String,
        /// The key's `mod_index` when the write was applied; `None` when it did not exist.
        current: Option<kvapi::LogIndex>,
        /// The server's explanation.
        message: String,
    },
    /// The server refused the request as invalid: fix the input. Nothing was changed.
    #[error("rejected by the server ({}): {message}", code_name(*code))]
    Rejected {
        /// The server's machine-readable code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// Any other failure: a server error, an unexpected response, a local I/O problem.
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    /// The machine-readable code of this error in kvctl's JSON error objects: the server's code
    /// when the server refused the request, else one of kvctl's own (`key_not_found`,
    /// `unavailable`, `outcome_unknown`, `other`).
    pub fn code(&self) -> String {
        match self {
            ClientError::NotFound { .. } => code_name(ErrorCode::KeyNotFound),
            ClientError::Unavailable { .. } => code_name(ErrorCode::Unavailable),
            ClientError::OutcomeUnknown { .. } => code_name(ErrorCode::OutcomeUnknown),
            ClientError::PreconditionFailed { .. } => code_name(ErrorCode::PreconditionFailed),
            ClientError::Rejected { code, .. } => code_name(*code),
            ClientError::Other(_) => "other".into(),
        }
    }

    /// The exit code kvctl uses for this error.
    pub fn exit(&self) -> Exit {
        match self {
            ClientError::NotFound { .. } => Exit::NotFound,
            ClientError::Unavailable { .. } => Exit::Unavailable,
            ClientError::OutcomeUnknown { .. } => Exit::OutcomeUnknown,
            ClientError::PreconditionFailed { .. } => Exit::ConditionNotMet,
            ClientError::Rejected { .. } | ClientError::Other(_) => Exit::Other,
        }
    }
}

/// kvctl's documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: the command did what was asked.
    Success,
    /// 1: the key does not exist.
    NotFound,
    /// 2: the command line, cluster file or input is invalid.
    Usage,
    /// 3: no leader or no quorum within the timeout.
    Unavailable,
    /// 4: a write may or may not have been applied.
    OutcomeUnknown,
    /// 5: anything else, including input the server rejected.
    Other,
    /// 6: a conditional write's condition did not hold (`--if-index`, `--if-absent`); nothing
    /// was changed.
    ConditionNotMet,
}

impl Exit {
    /// The numeric process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::NotFound => 1,
            Exit::Usage => 2,
            Exit::Unavailable => 3,
            Exit::OutcomeUnknown => 4,
            Exit::Other => 5,
            Exit::ConditionNotMet => 6,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}

/// The snake_case wire name of an error code, as the server sends it.
pub fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{code:?}"))
}

/// A short human form of a duration: `850ms`, `2.5s`, `9m`, `10m30s`.
pub fn format_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d >= Duration::from_secs(60) {
        let (minutes, seconds) = (d.as_secs() / 60, d.as_secs() % 60);
        if seconds == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{seconds}s")
        }
    } else {
        let tenths = d.as_millis() / 100;
        if tenths.is_multiple_of(10) {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_documented_exit_code() {
        let cases = [
            (ClientError::NotFound { key: "k".into() }, 1),
            (
                ClientError::Unavailable {
                    reason: "no leader".into(),
                    waited: Duration::from_secs(10),
                },
                3,
            ),
            (
                ClientError::OutcomeUnknown {
                    reason: "timed out".into(),
                    idempotency_key: "x".into(),
                },
                4,
            ),
            (
                ClientError::Rejected {
                    code: ErrorCode::TypeConflict,
                    message: "m".into(),
                },
                5,
            ),
            (ClientError::Other("boom".into()), 5),
            (
                ClientError::PreconditionFailed {
                    key: "k".into(),
                    current: Some(7),
                    message: "m".into(),
                },
                6,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.exit().code(), code, "{err}");
        }
        assert_eq!(Exit::Success.code(), 0);
        assert_eq!(Exit::Usage.code(), 2);
    }

    #[test]
    fn messages_name_the_cause() {
        let err = ClientError::Rejected {
            code: ErrorCode::TypeConflict,
            message: "cannot append to a number".into(),
        };
        assert_eq!(
            err.to_string(),
            "rejected by the server (type_conflict): cannot append to a number"
        );
        let err = ClientError::Unavailable {
            reason: "no leader elected".into(),
            waited: Duration::from_millis(2500),
        };
        assert_eq!(
            err.to_string(),
            "cluster unavailable after 2.5s: no leader elected"
        );
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(format_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_duration(Duration::from_millis(1234)), "1.2s");
        assert_eq!(format_duration(Duration::from_secs(540)), "9m");
        assert_eq!(format_duration(Duration::from_secs(630)), "10m30s");
    }

    #[test]
    fn every_error_has_a_machine_readable_code() {
        let codes: Vec<String> = [
            ClientError::NotFound { key: "k".into() },
            ClientError::Unavailable {
                reason: "r".into(),
                waited: Duration::from_secs(1),
            },
            ClientError::OutcomeUnknown {
                reason: "r".into(),
                idempotency_key: "x".into(),
            },
            ClientError::Rejected {
                code: ErrorCode::TypeConflict,
                message: "m".into(),
            },
            ClientError::Other("boom".into()),
            ClientError::PreconditionFailed {
                key: "k".into(),
                current: None,
                message: "m".into(),
            },
        ]
        .iter()
        .map(ClientError::code)
        .collect();
        assert_eq!(
            codes,
            [
                "key_not_found",
                "unavailable",
                "outcome_unknown",
                "type_conflict",
                "other",
                "precondition_failed"
            ]
        );
    }
}
