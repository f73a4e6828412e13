//! The retry loop: route an attempt, send it, judge its failure, wait, try again.
//!
//! One loop serves every request. It ends with the first success, with a failure that
//! [`judge`] calls final, or when the deadline leaves no room for another attempt. What it
//! reports at the end is chosen for the operator:
//!
//! - A write that some attempt may have applied ends as [`ClientError::OutcomeUnknown`] with its
//!   idempotency key, whatever happened afterwards, because only a definite answer settles it.
//! - The reason given is the most telling one seen. An attempt cut short by the deadline adds
//!   nothing to an earlier answer from the server (say, a `503` that named the cause), so that
//!   answer stays the reason, with a note about the last attempt, and the message never mixes
//!   the operation's timeout with a stub of an attempt's.
//! - The server's `Retry-After` is a floor on the wait before the next attempt. When it asks for
//!   more than the time left, the loop ends at once instead of sleeping out the deadline.

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::{Answer, Call, Client};
use crate::error::{format_duration, ClientError};
use crate::retry::{judge, Verdict};
use crate::transport::{fate, preview, Failure, Fate};

/// Room kept before the deadline for one last attempt to be worth making.
const LAST_ATTEMPT: Duration = Duration::from_millis(100);

/// How a pause between attempts ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pause {
    /// The wait is over: try again.
    Waited,
    /// Too little time is left for another attempt.
    NoTimeLeft,
    /// The server asked to wait this long, which is more than the time left.
    ServerAsksLater(Duration),
}

impl Client {
    /// Run one request to completion before `deadline`: route, send, judge failures, back off,
    /// retry. `key` names the key in errors.
    pub(super) async fn execute(
        &self,
        call: &Call,
        key: &str,
        deadline: Instant,
    ) -> Result<Answer, ClientError> {
        let started = Instant::now();
        let request = &call.request;
        let is_write = request.is_write();
        let mut attempts = 0u32;
        let mut failures = 0u32;
        let mut doubt: Option<String> = None;
        let mut last_reason: Option<String> = None;
        loop {
            let mut retry_after = None;
            let target = if call.stale {
                Ok(self.any_node())
            } else {
                match self.cached_leader() {
                    Some(leader) => Ok(leader),
                    None => self.discover(deadline).await,
                }
            };
            match target {
                Err(super::discovery::Undiscovered::Refused(failure)) => {
                    return Err(final_error(
                        failure,
                        key,
                        doubt.is_some(),
                        request.idempotency_key.as_deref(),
                    ))
                }
                Err(super::discovery::Undiscovered::Retry(reason)) => last_reason = Some(reason),
                Ok(target) => {
                    attempts += 1;
                    let limit = self.attempt_limit(deadline);
                    tracing::debug!(
                        attempt = attempts,
                        node = %target.address,
                        method = %request.method,
                        path = %request.path,
                        "sending"
                    );
                    let failure = match self.transport.send(&target.address, request, limit).await {
                        Ok(reply) => {
                            if reply.replayed {
                                tracing::debug!("answered from the idempotency table");
                            }
                            return Ok(Answer {
                                body: reply.body,
                                replayed: reply.replayed,
                                attempts,
                            });
                        }
                        Err(failure) => failure,
                    };
                    let verdict = judge(&failure, is_write);
                    if verdict == Verdict::Fail {
                        return Err(final_error(
                            failure,
                            key,
                            doubt.is_some(),
                            request.idempotency_key.as_deref(),
                        ));
                    }
                    // Cut short by the deadline rather than by the attempt's own bound.
                    let late =
                        limit < self.config.attempt_timeout && matches!(failure, Failure::TimedOut { .. });
                    let reason = format!("{}: {}", target.address, failure.describe());
                    tracing::debug!("attempt failed: {reason}");
                    let last_words = format!(
                        "; a last attempt to {} was still unanswered when the time ran out",
                        target.address
                    );
                    let reason = match (&last_reason, late) {
                        (Some(earlier), true) => format!("{earlier}{last_words}"),
                        (None, true) => format!("{}: still no answer when the time ran out", target.address),
                        (_, false) => reason,
                    };
                    if let Verdict::Retry {
                        rediscover,
                        doubt: in_doubt,
                    } = verdict
                    {
                        if in_doubt {
                            doubt = Some(match (&doubt, late) {
                                (Some(earlier), true) => format!("{earlier}{last_words}"),
                                _ => reason.clone(),
                            });
                        }
                        if rediscover {
                            self.forget_leader();
                            if let Failure::Answered {
                                leader: Some(hint), ..
                            } = &failure
                            {
                                self.follow_hint(hint.id, hint.http.as_deref());
                            }
                        }
                    }
                    retry_after = failure.retry_after();
                    last_reason = Some(reason);
                }
            }
            failures += 1;
            let reason = last_reason
                .clone()
                .unwrap_or_else(|| "no attempt could be made".into());
            let note = match self.pause(failures, deadline, &reason, retry_after).await {
                Pause::Waited => continue,
                Pause::NoTimeLeft => String::new(),
                Pause::ServerAsksLater(wait) => format!(
                    "; the server asked to wait {} before retrying, longer than the time left",
                    format_duration(wait)
                ),
            };
            return Err(match (doubt, &request.idempotency_key) {
                (Some(reason), Some(idempotency_key)) => ClientError::OutcomeUnknown {
                    reason: format!("{reason}{note}"),
                    idempotency_key: idempotency_key.clone(),
                },
                _ => ClientError::Unavailable {
                    reason: format!("{reason}{note}"),
                    waited: started.elapsed(),
                },
            });
        }
    }

    /// Wait before the next attempt: the backoff for `failures` failures, at least the
    /// server's `retry_after`, cut short so that one last attempt still fits before the
    /// deadline.
    pub(super) async fn pause(
        &self,
        failures: u32,
        deadline: Instant,
        reason: &str,
        retry_after: Option<Duration>,
    ) -> Pause {
        let left = deadline.saturating_duration_since(Instant::now());
        if left <= LAST_ATTEMPT {
            return Pause::NoTimeLeft;
        }
        let room = left - LAST_ATTEMPT;
        if let Some(asked) = retry_after.filter(|asked| *asked > room) {
            return Pause::ServerAsksLater(asked);
        }
        let wait = self
            .config
            .retry
            .wait(failures, retry_after, &mut rand::thread_rng())
            .min(room);
        tracing::debug!("retrying in {} after: {reason}", format_duration(wait));
        tokio::time::sleep(wait).await;
        Pause::Waited
    }

    /// Time allowed for one exchange: the per-attempt bound, cut to what the deadline leaves.
    fn attempt_limit(&self, deadline: Instant) -> Duration {
        let left = deadline.saturating_duration_since(Instant::now());
        self.config
            .attempt_timeout
            .min(left)
            .max(Duration::from_millis(1))
    }
}

/// Decode a successful answer.
pub(super) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|e| {
        ClientError::Other(format!(
            "unexpected answer from the server ({e}): {}",
            preview(body)
        ))
    })
}

/// Turn the failure that ended the operation into the caller's error. `in_doubt`: an earlier
/// attempt may have applied the write; `idempotency_key`: the write's key (`None` for reads).
pub(super) fn final_error(
    failure: Failure,
    key: &str,
    in_doubt: bool,
    idempotency_key: Option<&str>,
) -> ClientError {
    use kvapi::ErrorCode as C;
    match failure {
        Failure::Answered {
            code: Some(C::KeyNotFound),
            ..
        } => ClientError::NotFound { key: key.to_string() },
        // Settles a write in doubt too: had an earlier attempt been applied, the server would
        // have replayed its success from the idempotency table.
        Failure::Answered {
            code: Some(C::PreconditionFailed),
            message,
            current,
            ..
        } => ClientError::PreconditionFailed {
            key: key.to_string(),
            current: current.flatten(),
            message,
        },
        // A refusal on the merits settles even a write in doubt: had an earlier attempt been
        // applied, the server would have answered with its result.
        Failure::Answered {
            code:
                Some(
                    code @ (C::InvalidJson
                    | C::InvalidRequest
                    | C::TypeConflict
                    | C::ValueTooLarge
                    | C::IdempotencyKeyReused
                    | C::MemberNotFound
                    | C::MemberConflict
                    | C::LearnerBehind
                    | C::Unauthenticated
                    | C::Forbidden),
                ),
            message,
            ..
        } => ClientError::Rejected { code, message },
        other => match idempotency_key {
            Some(idempotency_key) if in_doubt || fate(&other, true) == Fate::MaybeApplied => {
                ClientError::OutcomeUnknown {
                    reason: other.describe(),
                    idempotency_key: idempotency_key.to_string(),
                }
            }
            _ => match other {
                Failure::Tls(why) => ClientError::Other(why),
                other => ClientError::Other(format!("server error: {}", other.describe())),
            },
        },
    }
}
