//! The retry policy: which failed attempts deserve another try, what a failure says about a
//! write's fate, and how long to wait before the next attempt.
//!
//! The policy is pure (no I/O, no clock, randomness passed in) so it can be tested exactly; the
//! [`Client`](crate::Client) loop applies it. The rules:
//!
//! - A request that never left (connection refused, no route) is always safe to retry, and the
//!   leader we had is probably gone: discover again.
//! - A request that left but got no answer (timeout, connection reset) may have been applied.
//!   Retrying is still safe for a write because every attempt carries the same idempotency key;
//!   the write is marked *in doubt* so that, if the deadline runs out before a definite answer,
//!   the caller hears "outcome unknown" and not "unavailable".
//! - `503 unavailable` and `shutting_down` mean no leader could take the request: retry after
//!   discovering again. `504 outcome_unknown` is the server admitting the doubt itself.
//! - Anything the server refused on its merits (bad input, type conflict, key not found) is
//!   final, and so are `500 internal` and `422 idempotency_key_expired`: asking again would get
//!   the same answer.
//!
//! Whether a failure leaves a write in doubt is not decided here but by
//! [`transport::fate`](crate::transport::fate), the verdict that `kvctl bench` and the chaos
//! workload use for their single attempts too.
//!
//! Backoff is exponential with "equal jitter": half of the step is fixed, half random. The fixed
//! half stops a client from hammering a cluster in the middle of an election; the random half
//! stops many clients that failed together from retrying in lockstep.

use std::time::Duration;

use kvapi::ErrorCode;
use rand::Rng;

pub use crate::transport::Failure;
use crate::transport::{fate, Fate};

/// Exponential backoff between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Step before the second attempt.
    pub initial: Duration,
    /// Largest step.
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// 50 ms doubling up to 1 s: an election in a healthy cluster takes a few hundred
    /// milliseconds, so the first retries are quick and later ones stop hammering.
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `failures` (1 for the first failure): a step of
    /// `initial * 2^(failures-1)` capped at `max`, of which a random half is waited.
    pub fn backoff(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let exponent = failures.saturating_sub(1).min(20);
        let step = self.initial.saturating_mul(1u32 << exponent).min(self.max);
        let half = step / 2;
        let jitter_nanos = rng.gen_range(0..=half.as_nanos() as u64);
        half + Duration::from_nanos(jitter_nanos)
    }

    /// The wait before the next attempt: the backoff, but never less than the server asked for
    /// with `Retry-After`. The server knows why it refused (an election, a shutdown) and how
    /// soon that may change; retrying earlier only adds load while it recovers.
    pub fn wait(&self, failures: u32, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        self.backoff(failures, rng).max(retry_after.unwrap_or_default())
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Stop: the failure is the answer.
    Fail,
    /// Try again after a backoff.
    Retry {
        /// Forget the cached leader and find it again (or follow the hint in the answer).
        rediscover: bool,
        /// The attempt may have applied the write.
        doubt: bool,
    },
}

/// Decide what a failure means. `is_write` tells whether the request changes state, which
/// decides whether a lost answer leaves something in doubt.
pub fn judge(failure: &Failure, is_write: bool) -> Verdict {
    let retry = Verdict::Retry {
        rediscover: true,
        doubt: fate(failure, is_write) == Fate::MaybeApplied,
    };
    match failure {
        Failure::NotSent(_) | Failure::NoAnswer(_) | Failure::TimedOut { .. } => retry,
        // A certificate does not become acceptable by asking again.
        Failure::Tls(_) => Verdict::Fail,
        Failure::Answered { status, code, .. } => match code {
            Some(
                ErrorCode::Unavailable
                | ErrorCode::NoQuorum
                | ErrorCode::ShuttingDown
                | ErrorCode::OutcomeUnknown,
            ) => retry,
            // Busy, not gone: the same node is worth another try after its Retry-After.
            Some(ErrorCode::Overloaded) => Verdict::Retry {
                rediscover: false,
                doubt: false,
            },
            Some(_) => Verdict::Fail,
            // No envelope: a proxy or a crashed handler. Gateway errors are transient by nature;
            // treat them like their kvnode counterparts and everything else as final.
            None => match status {
                502..=504 => retry,
                _ => Verdict::Fail,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn answered(status: u16, code: Option<ErrorCode>) -> Failure {
        Failure::Answered {
            status,
            code,
            message: "m".into(),
            leader: None,
            retry_after: None,
            current: None,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_half_jitter() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
        };
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            for (failures, step_ms) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 800), (60, 800)] {
                let step = Duration::from_millis(step_ms);
                let wait = policy.backoff(failures, &mut rng);
                assert!(wait >= step / 2 && wait <= step, "{failures}: {wait:?}");
            }
        }
    }

    #[test]
    fn backoff_is_actually_random() {
        let policy = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(1);
        let waits: std::collections::HashSet<_> = (0..20).map(|_| policy.backoff(5, &mut rng)).collect();
        assert!(waits.len() > 10, "jitter should spread retries: {waits:?}");
        assert!(policy.backoff(0, &mut rng) <= policy.initial);
    }

    #[test]
    fn the_server_s_retry_after_is_a_floor_on_the_wait() {
        let policy = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(3);
        for failures in 1..10 {
            let wait = policy.wait(failures, Some(Duration::from_secs(2)), &mut rng);
            assert_eq!(wait, Duration::from_secs(2), "{failures}");
            assert!(policy.wait(failures, None, &mut rng) <= policy.max);
            assert!(policy.wait(failures, Some(Duration::ZERO), &mut rng) >= policy.initial / 2);
        }
    }

    #[test]
    fn unsent_requests_are_retried_without_doubt() {
        let v = judge(&Failure::NotSent("refused".into()), true);
        assert_eq!(
            v,
            Verdict::Retry {
                rediscover: true,
                doubt: false
            }
        );
    }

    #[test]
    fn lost_answers_leave_writes_in_doubt_but_not_reads() {
        let lost = Failure::NoAnswer("timed out".into());
        assert_eq!(
            judge(&lost, true),
            Verdict::Retry {
                rediscover: true,
                doubt: true
            }
        );
        assert_eq!(
            judge(&lost, false),
            Verdict::Retry {
                rediscover: true,
                doubt: false
            }
        );
        assert_eq!(
            judge(&answered(504, Some(ErrorCode::OutcomeUnknown)), true),
            Verdict::Retry {
                rediscover: true,
                doubt: true
            }
        );
    }

    #[test]
    fn no_leader_is_retried() {
        for code in [
            ErrorCode::Unavailable,
            ErrorCode::NoQuorum,
            ErrorCode::ShuttingDown,
        ] {
            assert_eq!(
                judge(&answered(503, Some(code)), true),
                Verdict::Retry {
                    rediscover: true,
                    doubt: false
                }
            );
        }
        assert!(matches!(
            judge(&answered(502, None), false),
            Verdict::Retry { .. }
        ));
    }

    #[test]
    fn refusals_on_the_merits_are_final() {
        for code in [
            ErrorCode::InvalidJson,
            ErrorCode::InvalidRequest,
            ErrorCode::KeyNotFound,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::TypeConflict,
            ErrorCode::IdempotencyKeyReused,
            ErrorCode::IdempotencyKeyExpired,
            ErrorCode::ValueTooLarge,
            ErrorCode::Internal,
        ] {
            assert_eq!(
                judge(&answered(code.http_status(), Some(code)), true),
                Verdict::Fail,
                "{code:?}"
            );
        }
        assert_eq!(judge(&answered(500, None), true), Verdict::Fail);
        assert_eq!(judge(&answered(400, None), false), Verdict::Fail);
    }

    #[test]
    fn every_error_code_has_a_verdict() {
        for &code in ErrorCode::ALL {
            let retried = matches!(
                code,
                ErrorCode::Unavailable
                    | ErrorCode::NoQuorum
                    | ErrorCode::ShuttingDown
                    | ErrorCode::OutcomeUnknown
                    | ErrorCode::Overloaded
            );
            let verdict = judge(&answered(code.http_status(), Some(code)), true);
            assert_eq!(verdict != Verdict::Fail, retried, "{code:?}: {verdict:?}");
        }
    }
}
