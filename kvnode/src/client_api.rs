//! The client-facing HTTP handlers (`api_description.yml` describes them exactly).
//!
//! Handlers here only translate: they validate input into an [`Op`] or a read, hand it to the
//! [`Node`], and turn the outcome into a response. Bodies are read with our own size limit and
//! parsed as JSON whatever the Content-Type says (curl's `-d` sends a form type), so that every
//! bad input gets a JSON error with the right status rather than a framework's plain-text one.
//!
//! A GET answers the key's versions too, and its `mod_index` as the `ETag`; a write may carry
//! `If-Match: "<mod_index>"` or `If-None-Match: *`, which becomes the condition inside the
//! [`Op`] (checked by the state machine, not here) and may come back as `412`. `GET /watch` is
//! served by [`crate::watch`].
//!
//! Two layers stand before the handlers: the token check ([`crate::auth`]), then a cap on the
//! requests served at once, past which a node answers `503 overloaded` with `Retry-After`
//! rather than queueing without bound (health and readiness checks are exempt from both).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use kvapi::precondition::{etag, IF_MATCH_HEADER, IF_NONE_MATCH_HEADER};
use kvapi::{
    AddMemberBody, Consistency, ErrorCode, GetResponse, KeysResponse, Precondition, TransferLeaderBody,
    UpdateMemberBody, WriteKind, WriteResponse, DEFAULT_KEYS_LIMIT, IDEMPOTENCY_HEADER,
    MAX_IDEMPOTENCY_KEY_BYTES, MAX_KEYS_LIMIT, MAX_KEY_BYTES, REPLAYED_HEADER,
};

use crate::auth::{Access, Gate};
use crate::error::{ApiError, NodeError};
use crate::membership::{AdminReply, AdminRequest};
use crate::node::Node;
use crate::state::{KvState, IDEMPOTENCY_TTL_MS};
use crate::types::{Command, Condition, IdemKey, LogIndex, Op, OpOutcome, OpReply};

/// Room for the envelope around the largest value.
const BODY_OVERHEAD: usize = 64 * 1024;

/// The client router of `node`, behind `gate` and a cap of `node.config.max_client_requests`
/// requests at once.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/keys", get(list_keys))
        .route("/keys/", get(empty_key).post(empty_key).delete(empty_key))
        .route("/keys/{*key}", get(get_key).post(write_key).delete(delete_key))
        .route("/watch", get(crate::watch::watch))
        .route("/admin/status", get(status))
        .route("/admin/members", get(list_members).post(add_member))
        .route(
            "/admin/members/{id}",
            axum::routing::put(update_member).delete(remove_member),
        )
        .route("/admin/members/{id}/promote", post(promote_member))
        .route("/admin/leader/transfer", post(transfer_leader))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(node)
}

/// The two layers before every client route (the operations routes included): the token
/// check, then the cap on requests served at once.
pub fn guard(router: Router, max_requests: usize, gate: Arc<Gate>) -> Router {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_requests));
    let router = router.layer(axum::middleware::from_fn_with_state(slots, admit));
    // Without an auth file the port is open for good (SIGHUP has no file to read): no layer,
    // so an open node pays nothing per request for the check.
    if gate.file().is_none() {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(gate, crate::auth::authorize))
}

/// Serve the request if a slot is free, else answer `503 overloaded` at once.
async fn admit(
    State(slots): State<Arc<tokio::sync::Semaphore>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if crate::auth::access_for(req.method(), req.uri().path()) == Access::Open {
        return next.run(req).await;
    }
    match slots.clone().try_acquire_owned() {
        Ok(_slot) => next.run(req).await,
        Err(_) => {
            let mut e = ApiError::new(
                ErrorCode::Overloaded,
                "this node is serving as many requests as it allows at once (--max-client-requests); \
                 nothing was done; retry shortly",
            );
            e.retry_after = Some(1);
            e.into_response()
        }
    }
}

/// The rules a write must pass wherever it comes from, a client or a follower forwarding one:
/// a key of 1 to [`MAX_KEY_BYTES`] bytes and a value of at most `max_value` bytes of JSON.
/// Returns the write's size for batching.
pub fn check_op(op: &Op, max_value: usize) -> std::result::Result<usize, String> {
    if op.key.is_empty() || op.key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "the key is {} bytes long; keys are 1 to {MAX_KEY_BYTES} bytes",
            op.key.len()
        ));
    }
    let value = match &op.cmd {
        Command::Put(v) | Command::Append(v) => serde_json::to_vec(v).map(|v| v.len()).unwrap_or(usize::MAX),
        Command::Delete => 0,
    };
    if value > max_value {
        return Err(format!(
            "the value is {value} bytes; the limit is {max_value} bytes"
        ));
    }
    Ok(value + op.key.len())
}

type Result<T, E = ApiError> = std::result::Result<T, E>;

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route for {}; see api_description.yml", uri.path()),
    )
}

/// The 405 answer (with the error envelope) of every route on the client port.
pub(crate) async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn empty_key() -> ApiError {
    ApiError::invalid("the key is empty: use /keys/{key}")
}

fn node_err(node: &Node, e: NodeError) -> ApiError {
    ApiError::from_node(e, node.leader_ref())
}

/// The key is the rest of the path after `/keys/`, percent-decoded; it may contain `/`.
fn key_from_uri(uri: &Uri) -> Result<String> {
    let raw = uri.path().strip_prefix("/keys/").unwrap_or_default();
    let key = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::invalid("the key is not valid UTF-8 after percent-decoding"))?
        .into_owned();
    if key.is_empty() {
        return Err(ApiError::invalid("the key is empty: use /keys/{key}"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::invalid(format!(
            "the key is {} bytes long; the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(key)
}

/// The write's condition, from `If-Match` / `If-None-Match`.
fn condition(headers: &HeaderMap) -> Result<Option<Condition>> {
    let text = |name: &str| -> Result<Option<&str>> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map_err(|_| ApiError::invalid(format!("the {name} header must be visible ASCII")))
            })
            .transpose()
    };
    Precondition::from_headers(text(IF_MATCH_HEADER)?, text(IF_NONE_MATCH_HEADER)?)
        .map(|p| p.map(Condition::from))
        .map_err(ApiError::invalid)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdemKey>> {
    let Some(v) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::invalid("the Idempotency-Key header must be visible ASCII"))?;
    if s.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(ApiError::invalid(format!(
            "the Idempotency-Key header must be at most {MAX_IDEMPOTENCY_KEY_BYTES} bytes long"
        )));
    }
    IdemKey::parse(s).map(Some).map_err(ApiError::invalid)
}

/// Bytes of an oversized body read and thrown away before answering 413, so that the client,
/// still sending, gets the answer instead of a reset connection. Past this the connection is
/// closed.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

async fn read_body(body: Body, max_value: usize) -> Result<axum::body::Bytes> {
    use http_body_util::BodyExt;
    let limit = max_value + BODY_OVERHEAD;
    let mut body = body;
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::invalid(format!("the request body could not be read: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= limit {
                buf.extend_from_slice(&data);
            } else if seen > limit + DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > limit {
        return Err(ApiError::new(
            ErrorCode::ValueTooLarge,
            format!("the request body exceeds {limit} bytes (values are limited to {max_value} bytes)"),
        ));
    }
    Ok(buf.into())
}

/// Validate a write body: `{"type":"PUT"|"APPEND","value":<json>}` and nothing else.
fn parse_write_body(bytes: &[u8]) -> Result<(WriteKind, Value)> {
    let doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut fields) = doc else {
        return Err(ApiError::invalid(
            r#"the body must be a JSON object like {"type":"PUT","value":...}"#,
        ));
    };
    let kind = match fields.remove("type") {
        None => {
            return Err(ApiError::invalid(
                r#"the body has no "type": use "PUT" or "APPEND""#,
            ))
        }
        Some(Value::String(t)) if t == "PUT" => WriteKind::Put,
        Some(Value::String(t)) if t == "APPEND" => WriteKind::Append,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                r#"unknown "type" {other}: use "PUT" or "APPEND""#
            )))
        }
    };
    let value = fields
        .remove("value")
        .ok_or_else(|| ApiError::invalid(r#"the body has no "value""#))?;
    if let Some(extra) = fields.keys().next() {
        return Err(ApiError::invalid(format!(
            r#"unknown field "{extra}": the body takes only "type" and "value""#
        )));
    }
    Ok((kind, value))
}

async fn write_key(
    State(node): State<Arc<Node>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let key = key_from_uri(&uri)?;
    let idem = idempotency_key(&headers)?;
    let cond = condition(&headers)?;
    let max = node.config.max_value_bytes;
    let bytes = read_body(body, max).await?;
    let (kind, value) = parse_write_body(&bytes)?;
    let size = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > max {
        return Err(ApiError::new(
            ErrorCode::ValueTooLarge,
            format!("the value is {size} bytes; the limit is {max} bytes"),
        ));
    }
    let cmd = match kind {
        WriteKind::Put => Command::Put(value),
        WriteKind::Append => Command::Append(value),
    };
    let reply = node
        .write(
            Op {
                key: key.clone(),
                cmd,
                idem,
                cond,
            },
            size + key.len(),
        )
        .await
        .map_err(|e| node_err(&node, e))?;
    write_response(key, reply, kind_name(kind))
}

async fn delete_key(State(node): State<Arc<Node>>, uri: Uri, headers: HeaderMap) -> Result<Response> {
    let key = key_from_uri(&uri)?;
    let idem = idempotency_key(&headers)?;
    let cond = condition(&headers)?;
    let size = key.len();
    let reply = node
        .write(
            Op {
                key: key.clone(),
                cmd: Command::Delete,
                idem,
                cond,
            },
            size,
        )
        .await
        .map_err(|e| node_err(&node, e))?;
    write_response(key, reply, "DELETE")
}

fn kind_name(kind: WriteKind) -> &'static str {
    match kind {
        WriteKind::Put => "PUT",
        WriteKind::Append => "APPEND",
    }
}

fn write_response(key: String, reply: OpReply, what: &str) -> Result<Response> {
    let mut resp = match reply.outcome {
        OpOutcome::Applied { index } => Json(WriteResponse { key, index }).into_response(),
        OpOutcome::NotFound { .. } => {
            ApiError::new(ErrorCode::KeyNotFound, format!("key {key:?} does not exist")).into_response()
        }
        OpOutcome::TypeConflict { existing, appended } => ApiError::new(
            ErrorCode::TypeConflict,
            format!(
                "cannot {what} a {} to the {} at key {key:?}: APPEND pushes onto a list or concatenates a string onto a string; nothing was changed",
                appended.name(),
                existing.name()
            ),
        )
        .into_response(),
        OpOutcome::PreconditionFailed { current } => {
            let now = match current {
                Some(index) => format!("key {key:?} was last changed at index {index}"),
                None => format!("key {key:?} does not exist"),
            };
            ApiError {
                current: Some(current),
                ..ApiError::new(
                    ErrorCode::PreconditionFailed,
                    format!("the {what}'s condition does not hold: {now}; nothing was changed"),
                )
            }
            .into_response()
        }
        OpOutcome::IdempotencyKeyReused => ApiError::new(
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was already used for a different write; use a fresh key for each write",
        )
        .into_response(),
        OpOutcome::IdempotencyKeyExpired => ApiError::new(
            ErrorCode::IdempotencyKeyExpired,
            format!(
                "this Idempotency-Key is older than the {} minutes the cluster remembers idempotent writes for: \
                 the write may have been applied long ago, so it was not applied now; nothing was changed \
                 (if this is a new write, your clock may be behind: send a fresh UUIDv7)",
                IDEMPOTENCY_TTL_MS / 60_000
            ),
        )
        .into_response(),
        OpOutcome::IdempotencyKeyFromFuture => ApiError::invalid(
            "this Idempotency-Key's time is more than a minute ahead of the leader's clock: check this \
             machine's clock and send a fresh UUIDv7; nothing was changed",
        )
        .into_response(),
    };
    if reply.replayed {
        resp.headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// Query parameters of reads. Unknown ones are refused so that typos do not pass silently.
fn read_params(q: &HashMap<String, String>, allowed: &[&str]) -> Result<Consistency> {
    if let Some(bad) = q.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(format!(
            "unknown query parameter {bad:?}; allowed: {}",
            allowed.join(", ")
        )));
    }
    match q.get("consistency").map(String::as_str) {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("stale") => Ok(Consistency::Stale),
        Some(other) => Err(ApiError::invalid(format!(
            "unknown consistency {other:?}: use linearizable or stale"
        ))),
    }
}

fn query(
    q: std::result::Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<HashMap<String, String>> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::invalid(format!("the query string is malformed: {e}")))
}

async fn read<T>(
    node: &Node,
    consistency: Consistency,
    f: impl FnOnce(&KvState) -> T,
) -> Result<(T, Option<LogIndex>)> {
    match consistency {
        Consistency::Linearizable => node.read_linearizable(f).await.map_err(|e| node_err(node, e)),
        Consistency::Stale => Ok(node.read_stale(f)),
    }
}

async fn get_key(
    State(node): State<Arc<Node>>,
    uri: Uri,
    q: std::result::Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let key = key_from_uri(&uri)?;
    let consistency = read_params(&query(q)?, &["consistency"])?;
    let (stored, applied_index) = read(&node, consistency, |kv| kv.get(&key).cloned()).await?;
    match stored {
        Some(stored) => {
            let mut resp = Json(GetResponse {
                key,
                value: stored.value,
                consistency,
                served_by: node.id,
                applied_index,
                create_index: stored.create_index,
                mod_index: stored.mod_index,
                version: stored.version,
            })
            .into_response();
            if let Ok(tag) = HeaderValue::from_str(&etag(stored.mod_index)) {
                resp.headers_mut().insert(axum::http::header::ETAG, tag);
            }
            Ok(resp)
        }
        None => Err(ApiError::new(
            ErrorCode::KeyNotFound,
            format!("key {key:?} does not exist"),
        )),
    }
}

async fn list_keys(
    State(node): State<Arc<Node>>,
    q: std::result::Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let q = query(q)?;
    let consistency = read_params(&q, &["consistency", "prefix", "limit"])?;
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let limit = match q.get("limit") {
        None => DEFAULT_KEYS_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_KEYS_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(format!(
                    "limit must be a whole number from 1 to {MAX_KEYS_LIMIT}, not {l:?}"
                )))
            }
        },
    };
    let ((keys, truncated), applied_index) = read(&node, consistency, |kv| kv.keys(&prefix, limit)).await?;
    Ok(Json(KeysResponse {
        keys,
        truncated,
        consistency,
        applied_index,
    })
    .into_response())
}

async fn status(State(node): State<Arc<Node>>) -> Response {
    (StatusCode::OK, Json(node.status())).into_response()
}

/// A small JSON body of a membership request, parsed with the API's own errors.
async fn admin_body<T: serde::de::DeserializeOwned>(body: Body, empty: Option<T>) -> Result<T> {
    let bytes = read_body(body, 64 * 1024).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        if let Some(default) = empty {
            return Ok(default);
        }
    }
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("the body is not valid JSON: {e}")))?;
    serde_json::from_value(doc).map_err(|e| ApiError::invalid(format!("the body does not fit: {e}")))
}

fn member_id(raw: &str) -> Result<crate::types::NodeId> {
    raw.parse()
        .map_err(|_| ApiError::invalid(format!("{raw:?} is not a node id (a whole number)")))
}

async fn admin(node: &Node, request: AdminRequest) -> Result<Response> {
    let reply = node.admin(request).await.map_err(|e| {
        let mut api = ApiError::from(e);
        api.leader = api.leader.or_else(|| node.leader_ref());
        api
    })?;
    Ok(match reply {
        AdminReply::Members(m) => Json(m).into_response(),
        AdminReply::Transferred(t) => Json(t).into_response(),
        AdminReply::Admitted(_) => ApiError::new(ErrorCode::Internal, "unexpected admission").into_response(),
    })
}

async fn list_members(State(node): State<Arc<Node>>) -> Result<Response> {
    admin(&node, AdminRequest::List).await
}

async fn add_member(State(node): State<Arc<Node>>, body: Body) -> Result<Response> {
    let body: AddMemberBody = admin_body(body, None).await?;
    admin(&node, AdminRequest::Add(body)).await
}

async fn update_member(
    State(node): State<Arc<Node>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: Body,
) -> Result<Response> {
    let id = member_id(&id)?;
    let body: UpdateMemberBody = admin_body(body, None).await?;
    admin(&node, AdminRequest::Update(id, body)).await
}

async fn remove_member(
    State(node): State<Arc<Node>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response> {
    admin(&node, AdminRequest::Remove(member_id(&id)?)).await
}

async fn promote_member(
    State(node): State<Arc<Node>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response> {
    admin(&node, AdminRequest::Promote(member_id(&id)?)).await
}

async fn transfer_leader(State(node): State<Arc<Node>>, body: Body) -> Result<Response> {
    let body: TransferLeaderBody = admin_body(body, Some(TransferLeaderBody::default())).await?;
    admin(&node, AdminRequest::TransferLeader(body.to)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_bodies_are_validated_with_clear_messages() {
        assert_eq!(
            parse_write_body(br#"{"type":"PUT","value":["cat","dog"]}"#)
                .expect("valid")
                .0,
            WriteKind::Put
        );
        let cases: &[(&[u8], ErrorCode, &str)] = &[
            (b"{", ErrorCode::InvalidJson, "not valid JSON"),
            (b"[1]", ErrorCode::InvalidRequest, "JSON object"),
            (br#"{"value":1}"#, ErrorCode::InvalidRequest, "no \"type\""),
            (
                br#"{"type":"POP","value":1}"#,
                ErrorCode::InvalidRequest,
                "unknown \"type\"",
            ),
            (
                br#"{"type":1,"value":1}"#,
                ErrorCode::InvalidRequest,
                "unknown \"type\"",
            ),
            (br#"{"type":"PUT"}"#, ErrorCode::InvalidRequest, "no \"value\""),
            (
                br#"{"type":"PUT","value":1,"x":2}"#,
                ErrorCode::InvalidRequest,
                "unknown field",
            ),
        ];
        for (body, code, needle) in cases {
            let e = parse_write_body(body).expect_err("must be refused");
            assert_eq!(e.code, *code, "{}", String::from_utf8_lossy(body));
            assert!(
                e.message.contains(needle),
                "{} -> {}",
                String::from_utf8_lossy(body),
                e.message
            );
        }
        // A null value is a value.
        assert!(parse_write_body(br#"{"type":"PUT","value":null}"#).is_ok());
    }

    #[test]
    fn keys_come_from_the_rest_of_the_path() {
        let k = |p: &str| key_from_uri(&p.parse::<Uri>().expect("uri"));
        assert_eq!(k("/keys/a").expect("ok"), "a");
        assert_eq!(k("/keys/a/b/c").expect("ok"), "a/b/c");
        assert_eq!(k("/keys/a%2Fb%20c").expect("ok"), "a/b c");
        assert!(k("/keys/").is_err());
        assert!(k("/keys/%FF").is_err());
        assert!(k(&format!("/keys/{}", "x".repeat(MAX_KEY_BYTES + 1))).is_err());
        assert!(k(&format!("/keys/{}", "x".repeat(MAX_KEY_BYTES))).is_ok());
    }
}
