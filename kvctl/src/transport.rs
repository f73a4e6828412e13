//! One HTTP exchange with one node, and what its failure says about a write.
//!
//! Three programs send requests to kvnode: the [`Client`](crate::Client), which finds the
//! leader and retries; `kvctl bench --target all`, which sends each operation once, straight to
//! one node, so that forwarding is what gets measured; and the chaos workload's random-node
//! route, which sends one bare attempt so that the recorded history shows exactly what the
//! server did. They all send through [`Transport::send`], so they agree on two things that are
//! easy to get subtly different:
//!
//! - how a failed attempt is described ([`Failure`]): never sent, sent without an answer, or
//!   answered with an error (with the server's code, message, leader hint and `Retry-After`);
//! - what that failure says about a write ([`fate`]): *not applied* only when kvnode itself
//!   promises that nothing changed, *maybe applied* in every other case. Calling a write "failed"
//!   when it did land is the expensive mistake: the chaos checker would report a correct server
//!   as losing data, and a benchmark's read-back would flag it. So an answer the server did not
//!   word itself (a proxy's 502, a bare 500) leaves a write in doubt.
//!
//! There is no retrying here and no clock beyond the one attempt's time limit; the retry loop
//! lives in the client, the retry policy in [`retry`](crate::retry).

use std::time::Duration;

use kvapi::ops::Readiness;
use kvapi::{
    ErrorBody, ErrorCode, LeaderRef, LogIndex, Precondition, Status, IDEMPOTENCY_HEADER, REPLAYED_HEADER,
};

use crate::error::{code_name, format_duration};
use crate::security::{describe_tls_failure, Security, Token};

/// The longest `Retry-After` that is taken at its word; a larger one is treated as this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The request was never sent: connection refused, unreachable, bad address.
    NotSent(String),
    /// The request was never sent because TLS failed: the node's certificate is not
    /// acceptable, or the node refused kvctl's. Retrying cannot help; the message says which
    /// node and why.
    Tls(String),
    /// The request was sent (or may have been), but the connection broke before an answer.
    NoAnswer(String),
    /// The request was sent and no answer came within the attempt's time limit.
    TimedOut {
        /// The limit the attempt had.
        after: Duration,
    },
    /// The server answered with an error status.
    Answered {
        /// HTTP status.
        status: u16,
        /// The error code from the body, when the body is kvnode's error envelope.
        code: Option<ErrorCode>,
        /// The server's message, or a description of the unexpected body.
        message: String,
        /// The leader the server pointed to, if any.
        leader: Option<LeaderRef>,
        /// How long the server asked the client to wait before trying again (`Retry-After`).
        retry_after: Option<Duration>,
        /// For `412 precondition_failed`: the key's `mod_index` now, `Some(None)` when it does
        /// not exist; `None` for every other answer.
        current: Option<Option<LogIndex>>,
    },
}

impl Failure {
    /// One line describing the failure, for messages and diagnostics.
    pub fn describe(&self) -> String {
        match self {
            Failure::NotSent(m) | Failure::NoAnswer(m) | Failure::Tls(m) => m.clone(),
            Failure::TimedOut { after } => format!("no answer within {}", format_duration(*after)),
            Failure::Answered {
                status,
                code: Some(code),
                message,
                ..
            } => format!("{status} {}: {message}", code_name(*code)),
            Failure::Answered { status, message, .. } => format!("HTTP {status}: {message}"),
        }
    }

    /// The server's `Retry-After`, when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Answered { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What a failed attempt says about the effect of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Nothing was changed: the request was never sent, was a read, or kvnode answered with a
    /// code that promises it changed nothing.
    NotApplied,
    /// A write that may or may not have been applied.
    MaybeApplied,
}

/// The one verdict on a failed attempt, shared by the client, `kvctl bench` and the chaos
/// workload. `is_write`: the request changes state (reads never leave anything in doubt).
///
/// Not applied: a request never sent (TLS failures included); kvnode's `503 unavailable`,
/// `503 shutting_down` and `503 overloaded` (it never proposed the write); its `401` and `403`
/// (checked before anything is done); and its refusals on the merits, `4xx` with a kvnode code
/// (bad input, type conflict, a failed condition (`412`), a key reused for another write:
/// nothing changed). Maybe applied: everything else, namely a lost or late answer, `504
/// outcome_unknown`, `422 idempotency_key_expired` (the server cannot tell whether an earlier
/// copy was applied), a `500`, and any answer without kvnode's error envelope, which something
/// between the client and the node may have sent after the node received the write.
pub fn fate(failure: &Failure, is_write: bool) -> Fate {
    if !is_write {
        return Fate::NotApplied;
    }
    match failure {
        Failure::NotSent(_) | Failure::Tls(_) => Fate::NotApplied,
        Failure::NoAnswer(_) | Failure::TimedOut { .. } => Fate::MaybeApplied,
        Failure::Answered { code: None, .. } => Fate::MaybeApplied,
        Failure::Answered { code: Some(code), .. } => match code {
            ErrorCode::InvalidJson
            | ErrorCode::InvalidRequest
            | ErrorCode::KeyNotFound
            | ErrorCode::NotFound
            | ErrorCode::MethodNotAllowed
            | ErrorCode::TypeConflict
            | ErrorCode::PreconditionFailed
            | ErrorCode::Compacted
            | ErrorCode::IdempotencyKeyReused
            | ErrorCode::ValueTooLarge
            | ErrorCode::Unavailable
            | ErrorCode::NoQuorum
            | ErrorCode::ShuttingDown
            | ErrorCode::MemberNotFound
            | ErrorCode::MemberConflict
            | ErrorCode::LearnerBehind
            | ErrorCode::Unauthenticated
            | ErrorCode::Forbidden
            | ErrorCode::Overloaded => Fate::NotApplied,
            ErrorCode::IdempotencyKeyExpired | ErrorCode::OutcomeUnknown | ErrorCode::Internal => {
                Fate::MaybeApplied
            }
        },
    }
}

/// One request, independent of the node it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// HTTP method.
    pub method: reqwest::Method,
    /// Path and query, e.g. `/keys/a%2Fb?consistency=stale`.
    pub path: String,
    /// JSON body, if any.
    pub body: Option<Vec<u8>>,
    /// The write's idempotency key; `None` for reads.
    pub idempotency_key: Option<String>,
    /// The write's condition (`If-Match` / `If-None-Match`), if any.
    pub precondition: Option<Precondition>,
}

impl Request {
    /// True when the request changes state (it carries an idempotency key).
    pub fn is_write(&self) -> bool {
        self.idempotency_key.is_some()
    }
}

/// A successful (2xx) answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
    /// The server answered from its idempotency table (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

/// Why the HTTP stack could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up HTTP: {0}")]
pub struct TransportError(String);

/// The HTTP connection pool, shared by every attempt of its owner.
#[derive(Debug, Clone)]
pub struct Transport {
    http: reqwest::Client,
    scheme: &'static str,
    token: Option<Token>,
}

impl Transport {
    /// A plain-HTTP pool that gives up connecting after `connect_timeout`; each exchange gets
    /// its own limit in [`Transport::send`].
    pub fn new(connect_timeout: Duration) -> Result<Transport, TransportError> {
        Transport::with_security(connect_timeout, &Security::default())
    }

    /// A pool that speaks TLS and sends a token as `security` says.
    pub fn with_security(
        connect_timeout: Duration,
        security: &Security,
    ) -> Result<Transport, TransportError> {
        crate::security::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            // Environment proxies would intercept cluster-internal addresses; never use them.
            .no_proxy()
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true);
        if let Some(tls) = security.tls_config().map_err(|e| TransportError(e.to_string()))? {
            builder = builder.tls_backend_preconfigured(tls);
        }
        let http = builder.build().map_err(|e| TransportError(e.to_string()))?;
        Ok(Transport {
            http,
            scheme: security.scheme(),
            token: security.token.clone(),
        })
    }

    /// The base URL of the node at `address`: `http://host:port` or `https://host:port`.
    pub fn base_url(&self, address: &str) -> String {
        format!("{}://{address}", self.scheme)
    }

    /// Send `request` once to the node at `address` (`host:port`), allowing `limit` for the
    /// whole exchange. A 2xx answer is a [`Reply`]; anything else is a [`Failure`].
    ///
    /// Every attempt carries a fresh `X-Request-Id`, which the node names in its log lines
    /// about the request; a failed attempt is logged at debug level (`kvctl -v`) with that id,
    /// so it can be looked up in the node's log, even when no answer came.
    pub async fn send(&self, address: &str, request: &Request, limit: Duration) -> Result<Reply, Failure> {
        let request_id = new_request_id();
        let result = self.send_once(address, request, limit, &request_id).await;
        if let Err(failure) = &result {
            tracing::debug!(
                "{} {} to {address} failed (request id {request_id}): {}",
                request.method,
                request.path,
                failure.describe()
            );
        }
        result
    }

    async fn send_once(
        &self,
        address: &str,
        request: &Request,
        limit: Duration,
        request_id: &str,
    ) -> Result<Reply, Failure> {
        let url = format!("{}{}", self.base_url(address), request.path);
        let mut builder = self
            .http
            .request(request.method.clone(), url)
            .timeout(limit)
            .header(kvapi::ops::REQUEST_ID_HEADER, request_id);
        if let Some(token) = &self.token {
            builder = builder.header(reqwest::header::AUTHORIZATION, token.header_value());
        }
        if let Some(key) = &request.idempotency_key {
            builder = builder.header(IDEMPOTENCY_HEADER, key.as_str());
        }
        if let Some(condition) = request.precondition {
            let (name, value) = condition.header();
            builder = builder.header(name, value);
        }
        if let Some(body) = &request.body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let response = builder
            .send()
            .await
            .map_err(|e| transport_failure(&e, limit, address))?;
        let status = response.status().as_u16();
        let headers = response.headers();
        let replayed = headers
            .get(REPLAYED_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_failure(&e, limit, address))?
            .to_vec();
        if (200..300).contains(&status) {
            Ok(Reply {
                status,
                body,
                replayed,
            })
        } else {
            Err(error_answer(status, &body, retry_after))
        }
    }

    /// GET one node's `/ready` within `limit`. Its document comes with `200` (ready) and with
    /// `503` (not ready, with the reason); anything else is a failure.
    pub async fn readiness(&self, address: &str, limit: Duration) -> Result<Readiness, Failure> {
        let response = self
            .http
            .get(format!("{}/ready", self.base_url(address)))
            .timeout(limit)
            .header(kvapi::ops::REQUEST_ID_HEADER, new_request_id())
            .send()
            .await
            .map_err(|e| transport_failure(&e, limit, address))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_failure(&e, limit, address))?;
        match serde_json::from_slice::<Readiness>(&body) {
            Ok(readiness) if status == 200 || status == 503 => Ok(readiness),
            _ => Err(error_answer(status, &body, None)),
        }
    }

    /// GET one node's `/admin/status` within `limit`.
    pub async fn status(&self, address: &str, limit: Duration) -> Result<Status, Failure> {
        let request = Request {
            method: reqwest::Method::GET,
            path: "/admin/status".into(),
            body: None,
            idempotency_key: None,
            precondition: None,
        };
        let reply = self.send(address, &request, limit).await?;
        serde_json::from_slice(&reply.body).map_err(|e| Failure::Answered {
            status: reply.status,
            code: None,
            message: format!("unreadable status document: {e}"),
            leader: None,
            retry_after: None,
            current: None,
        })
    }
}

/// A fresh id for one request: `kvctl-` and 16 random hex digits.
pub fn new_request_id() -> String {
    format!("kvctl-{:016x}", rand::random::<u64>())
}

/// `Retry-After` in its delta-seconds form (the one kvnode sends); the HTTP-date form is not
/// worth a date parser here and is ignored.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// Interpret an error answer: kvnode's envelope when it is one, else the raw text.
pub fn error_answer(status: u16, body: &[u8], retry_after: Option<Duration>) -> Failure {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(envelope) => Failure::Answered {
            status,
            code: Some(envelope.error.code),
            current: (envelope.error.code == ErrorCode::PreconditionFailed).then(|| {
                envelope
                    .error
                    .mod_index
                    .filter(|_| envelope.error.exists != Some(false))
            }),
            message: envelope.error.message,
            leader: envelope.error.leader,
            retry_after,
        },
        Err(_) => Failure::Answered {
            status,
            code: None,
            message: preview(body),
            leader: None,
            retry_after,
            current: None,
        },
    }
}

/// The first line of a body, shortened, for error messages.
pub fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        "(empty body)".into()
    } else if line.chars().count() > 200 {
        format!("{}...", line.chars().take(200).collect::<String>())
    } else {
        line.to_string()
    }
}

/// Classify a transport error: was the request sent at all? A TLS failure says why.
fn transport_failure(error: &reqwest::Error, limit: Duration, address: &str) -> Failure {
    if let Some(why) = describe_tls_failure(error, address) {
        return Failure::Tls(why);
    }
    if error.is_connect() {
        return Failure::NotSent(root_cause(error));
    }
    if error.is_timeout() {
        return Failure::TimedOut { after: limit };
    }
    Failure::NoAnswer(root_cause(error))
}

/// The innermost cause of an error, which is where the useful words are ("Connection refused"),
/// without the OS error number.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let text = cause.to_string();
    let text = match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "unknown error".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_server::{Mock, Reply as MockReply};

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

    /// The whole verdict table: every kvnode code, every kind of transport failure, answers
    /// without kvnode's envelope, and reads.
    #[test]
    fn one_verdict_for_every_failure() {
        use Fate::{MaybeApplied, NotApplied};
        for &code in ErrorCode::ALL {
            let expected = match code {
                ErrorCode::OutcomeUnknown | ErrorCode::IdempotencyKeyExpired | ErrorCode::Internal => {
                    MaybeApplied
                }
                _ => NotApplied,
            };
            let failure = answered(code.http_status(), Some(code));
            assert_eq!(fate(&failure, true), expected, "{code:?}");
            assert_eq!(fate(&failure, false), NotApplied, "a read of {code:?}");
        }
        // The case the three senders used to disagree on: a 5xx that kvnode did not word.
        for status in [500, 502, 503, 504, 599] {
            assert_eq!(fate(&answered(status, None), true), MaybeApplied, "{status}");
        }
        assert_eq!(fate(&answered(400, None), true), MaybeApplied);
        assert_eq!(fate(&Failure::NotSent("refused".into()), true), NotApplied);
        assert_eq!(fate(&Failure::NoAnswer("reset".into()), true), MaybeApplied);
        let late = Failure::TimedOut {
            after: Duration::from_secs(6),
        };
        assert_eq!(fate(&late, true), MaybeApplied);
        assert_eq!(fate(&late, false), NotApplied);
    }

    #[test]
    fn failures_describe_themselves() {
        assert_eq!(
            answered(409, Some(ErrorCode::TypeConflict)).describe(),
            "409 type_conflict: m"
        );
        assert_eq!(answered(502, None).describe(), "HTTP 502: m");
        let late = Failure::TimedOut {
            after: Duration::from_millis(6000),
        };
        assert_eq!(late.describe(), "no answer within 6s");
    }

    #[test]
    fn error_envelopes_become_typed_failures() {
        let body =
            br#"{"error":{"code":"unavailable","message":"no leader","leader":{"id":2,"http":"h:2"}}}"#;
        match error_answer(503, body, Some(Duration::from_secs(1))) {
            Failure::Answered {
                status: 503,
                code: Some(ErrorCode::Unavailable),
                leader: Some(leader),
                retry_after: Some(wait),
                ..
            } => {
                assert_eq!(leader.id, 2);
                assert_eq!(wait, Duration::from_secs(1));
            }
            other => panic!("unexpected {other:?}"),
        }
        let body = br#"{"error":{"code":"precondition_failed","message":"m","exists":true,"mod_index":7}}"#;
        assert!(
            matches!(
                error_answer(412, body, None),
                Failure::Answered {
                    current: Some(Some(7)),
                    ..
                }
            ),
            "a 412 carries the key's current index"
        );
        let body = br#"{"error":{"code":"precondition_failed","message":"m","exists":false}}"#;
        assert!(matches!(
            error_answer(412, body, None),
            Failure::Answered {
                current: Some(None),
                ..
            }
        ));
        let failure = error_answer(502, b"<html>Bad Gateway</html>\nmore", None);
        assert_eq!(failure.describe(), "HTTP 502: <html>Bad Gateway</html>");
    }

    #[test]
    fn retry_after_takes_seconds_and_is_bounded() {
        assert_eq!(parse_retry_after("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("86400"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    fn write_request() -> Request {
        Request {
            method: reqwest::Method::POST,
            path: "/keys/k".into(),
            body: Some(br#"{"type":"PUT","value":1}"#.to_vec()),
            idempotency_key: Some("key-1".into()),
            precondition: None,
        }
    }

    /// Over a real socket: what each kind of answer becomes, and the headers that are read.
    #[tokio::test]
    async fn one_exchange_over_http() {
        let mock = Mock::start(|req| -> MockReply {
            match req.path.as_str() {
                "/ok" => Some((200, vec![("idempotent-replayed", "true".into())], "{}".into())),
                "/busy" => Some((
                    503,
                    vec![("retry-after", "2".into())],
                    r#"{"error":{"code":"unavailable","message":"no leader"}}"#.into(),
                )),
                "/crash" => Some((500, vec![], "panic".into())),
                _ => None,
            }
        })
        .await;
        let transport = Transport::new(Duration::from_secs(1)).expect("transport");
        let at = |path: &str| Request {
            path: path.into(),
            ..write_request()
        };
        let limit = Duration::from_millis(500);
        let reply = transport
            .send(&mock.address, &at("/ok"), limit)
            .await
            .expect("200");
        assert!(reply.replayed);
        assert_eq!(mock.requests("POST")[0].idempotency_key.as_deref(), Some("key-1"));
        let busy = transport
            .send(&mock.address, &at("/busy"), limit)
            .await
            .expect_err("503");
        assert_eq!(busy.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(fate(&busy, true), Fate::NotApplied);
        let crash = transport
            .send(&mock.address, &at("/crash"), limit)
            .await
            .expect_err("500");
        assert_eq!(fate(&crash, true), Fate::MaybeApplied);
        let silent = transport
            .send(&mock.address, &at("/silent"), limit)
            .await
            .expect_err("no answer");
        assert_eq!(silent, Failure::TimedOut { after: limit });
        assert_eq!(fate(&silent, true), Fate::MaybeApplied);

        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let refused = transport
            .send(&format!("127.0.0.1:{port}"), &write_request(), limit)
            .await
            .expect_err("nobody listens");
        assert!(
            matches!(&refused, Failure::NotSent(m) if m.contains("connection refused")),
            "{refused:?}"
        );
        assert_eq!(fate(&refused, true), Fate::NotApplied);
    }
}
