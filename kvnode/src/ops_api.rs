//! The operations surface of the client port: `/health`, `/ready`, `/metrics`,
//! `/admin/snapshot`, and the middleware every client request passes through (request id,
//! request metrics, a log line for failures).
//!
//! # Health and readiness
//!
//! `/health` answers whether the process and its storage work; a supervisor restarts a node
//! that fails it. `/ready` answers whether the node can serve clients now: it knows a leader
//! (and if it leads, a majority acknowledged it within its lease), it is a member of the
//! configuration, its storage works, and it has applied everything the leader had committed
//! when the check began. The last two are checked by asking the leader for a read index (it
//! confirms its leadership with a majority and names its commit index, as for a linearizable
//! read): a follower's own view is not enough, because with pre-vote a follower cut off from a
//! dead leader keeps naming it. A healthy node then reaches that index within milliseconds,
//! so the check waits for up to [`READY_APPLY_WAIT`] before it calls the node `catching_up`. A
//! follower applying a long backlog or a snapshot stays unready until it is done, which is
//! what a load balancer should know. Both answers are one JSON document, the same shape with
//! `200` and `503`.
//!
//! # Backups
//!
//! `GET /admin/snapshot` streams a snapshot of the state machine in the snapshot file format
//! (`store::snapshot`, checksum last). By default it is taken after a linearizable read
//! barrier, so it holds every write acknowledged before the request; `?consistency=stale`
//! skips the barrier. The state is frozen in constant time (the maps are persistent) and
//! serialized on a blocking thread into the response as it is sent, so neither a lock nor the
//! whole snapshot in memory is held while the client reads. The headers say which log index
//! it reflects.
//!
//! # Request ids
//!
//! Each request gets an id: the client's `X-Request-Id` when it is sane, else one made here
//! (`<node>-<random>-<counter>`). It names the request's tracing span, so every log line the
//! request causes carries it, and it is returned in `X-Request-Id`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tracing::Instrument;

use kvapi::ops::{
    valid_request_id, Health, NotReadyReason, Readiness, UnhealthyReason, REQUEST_ID_HEADER,
    SNAPSHOT_INDEX_HEADER, SNAPSHOT_KEYS_HEADER, SNAPSHOT_TERM_HEADER,
};
use kvapi::{Consistency, ErrorCode};

use crate::error::ApiError;
use crate::metrics::{Metrics, RequestLabels, RouteLabels};
use crate::node::Node;
use crate::types::{LogIndex, NodeId, SnapshotMeta};

/// How long `/ready` waits for this node to apply what the leader had committed when the
/// check began, before it answers `catching_up`.
pub const READY_APPLY_WAIT: Duration = Duration::from_millis(500);

/// Bytes per chunk of a streamed snapshot.
const SNAPSHOT_CHUNK: usize = 256 * 1024;

/// What the operations handlers share.
pub struct Ops {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    ids: RequestIds,
}

/// Makes request ids: unique per process start (a random part) and per request (a counter).
struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    fn new(node: NodeId) -> RequestIds {
        RequestIds {
            prefix: format!("{node}-{:08x}", rand::random::<u32>()),
            next: AtomicU64::new(1),
        }
    }

    fn make(&self) -> String {
        format!("{}-{:x}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// Add the operations routes to the client router `api`, put every route (and the fallback)
/// behind the token check and the request cap (`client_api::guard`), and all of that behind
/// the request middleware, outermost, so that refusals are counted and carry a request id too.
pub fn wrap(api: Router, node: Arc<Node>, metrics: Arc<Metrics>, gate: Arc<crate::auth::Gate>) -> Router {
    let max_requests = node.config.max_client_requests;
    let ops = Arc::new(Ops {
        ids: RequestIds::new(node.id),
        node,
        metrics,
    });
    let routes = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/admin/snapshot", get(snapshot))
        .method_not_allowed_fallback(crate::client_api::method_not_allowed)
        .with_state(ops.clone());
    crate::client_api::guard(api.merge(routes), max_requests, gate)
        .layer(axum::middleware::from_fn_with_state(ops, track))
}

/// The middleware: request id and span, metrics, and a log line for answers that mean trouble.
async fn track(State(ops): State<Arc<Ops>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| ops.ids.make());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().as_str().to_owned();
    let span = tracing::info_span!("request", node = ops.node.id, id = %id, method = %method, route = %route);
    ops.metrics.http_in_flight.inc();
    let mut response = next.run(request).instrument(span.clone()).await;
    ops.metrics.http_in_flight.dec();
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    ops.metrics
        .http_duration
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(elapsed.as_secs_f64());
    ops.metrics
        .http_requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status,
        })
        .inc();
    span.in_scope(|| {
        let ms = elapsed.as_millis() as u64;
        match status {
            500.. if status != 503 && status != 504 => tracing::warn!(status, ms, "request failed"),
            503 | 504 => tracing::info!(status, ms, "request not served"),
            _ => tracing::debug!(status, ms, "request served"),
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

async fn metrics_text(State(ops): State<Arc<Ops>>) -> Response {
    match ops.metrics.render(&ops.node) {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            ApiError::new(ErrorCode::Internal, format!("cannot encode the metrics: {e}")).into_response()
        }
    }
}

/// What health and readiness are decided from: a copy of the few facts they need.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// This node.
    pub id: NodeId,
    /// Raft's running state: `None` while it runs, else whether it merely stopped.
    pub stopped: Option<Stop>,
    /// A storage write failed (reported by the log store before Raft noticed).
    pub storage_failed: bool,
    /// Its role.
    pub state: ServerState,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// Members (voters and learners) of its configuration; empty before the cluster formed.
    pub members: Vec<NodeId>,
    /// Voters among them.
    pub voters: usize,
    /// When this node leads: how long ago a majority last acknowledged it (`None`: not yet).
    pub quorum_ack_age: Option<Duration>,
    /// The leader's lease: a leader unacknowledged for longer refuses writes.
    pub lease: Duration,
    /// What the leader had committed, as far as this node knows.
    pub leader_commit: Option<LogIndex>,
    /// What this node has applied.
    pub applied: Option<LogIndex>,
}

/// Why Raft stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// It was shut down.
    Shutdown,
    /// It stopped on a fatal error (a storage failure).
    Fatal(String),
}

impl Facts {
    /// The facts of `node` now.
    pub fn of(node: &Node, storage_failed: bool) -> Facts {
        let m = node.raft.metrics().borrow_watched().clone();
        let stopped = match &m.running_state {
            Ok(()) => None,
            Err(openraft::errors::Fatal::Stopped) => Some(Stop::Shutdown),
            Err(f) => Some(Stop::Fatal(f.to_string())),
        };
        let committed = m.local_committed.map(|l| l.index);
        Facts {
            id: node.id,
            stopped,
            storage_failed,
            state: m.state,
            leader: m.current_leader,
            members: m.membership_config.nodes().map(|(id, _)| *id).collect(),
            voters: m.membership_config.voter_ids().count(),
            quorum_ack_age: m
                .last_quorum_acked
                .as_ref()
                .map(|at| openraft::Instant::elapsed(&**at)),
            lease: Duration::from_millis(node.config.election_max_ms),
            leader_commit: m.cluster_committed.map(|l| l.index).max(committed),
            applied: m.last_applied.map(|l| l.index),
        }
    }

    /// Whether the process and its storage work; `Err` names the reason.
    pub fn health(&self) -> Result<(), (UnhealthyReason, String)> {
        match &self.stopped {
            Some(Stop::Fatal(why)) => Err((
                UnhealthyReason::StorageFailed,
                format!("raft stopped on a fatal error: {why}; the node stops and exits non-zero"),
            )),
            _ if self.storage_failed => Err((
                UnhealthyReason::StorageFailed,
                "a write to the log failed; the node stops and exits non-zero".into(),
            )),
            Some(Stop::Shutdown) => Err((UnhealthyReason::ShuttingDown, "the node is stopping".into())),
            None => Ok(()),
        }
    }

    /// Whether the node can serve as far as its own state tells; `/ready` then confirms the
    /// leader's commit with the leader and waits for it. `Err` names the reason.
    pub fn readiness(&self) -> Result<(), (NotReadyReason, String)> {
        if let Err((_, why)) = self.health() {
            return Err((NotReadyReason::StorageFailed, why));
        }
        if !self.members.is_empty() && !self.members.contains(&self.id) {
            return Err((
                NotReadyReason::Removed,
                format!("node {} is not a member of the cluster's configuration", self.id),
            ));
        }
        let Some(leader) = self.leader else {
            return Err((
                NotReadyReason::NoLeader,
                if self.members.is_empty() {
                    "the cluster has not formed yet".into()
                } else {
                    "this node knows no leader (an election, or it is cut off from the majority)".into()
                },
            ));
        };
        if leader == self.id && self.state == ServerState::Leader {
            // A lone voter is its own majority: openraft stops refreshing its acknowledgement
            // time once nothing is replicated, which says nothing about it.
            let unacknowledged = self.voters > 1 && self.quorum_ack_age.is_none_or(|age| age > self.lease);
            if unacknowledged {
                return Err((
                    NotReadyReason::NoLeader,
                    "this node leads, but no majority has acknowledged it within its lease: it cannot commit"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}

async fn health(State(ops): State<Arc<Ops>>) -> Response {
    let facts = Facts::of(&ops.node, ops.metrics.storage_failed());
    let (status, body) = match facts.health() {
        Ok(()) => (
            StatusCode::OK,
            Health {
                node: facts.id,
                healthy: true,
                reason: None,
                message: None,
            },
        ),
        Err((reason, message)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Health {
                node: facts.id,
                healthy: false,
                reason: Some(reason),
                message: Some(message),
            },
        ),
    };
    (status, Json(body)).into_response()
}

async fn ready(State(ops): State<Arc<Ops>>) -> Response {
    let facts = Facts::of(&ops.node, ops.metrics.storage_failed());
    let mut leader_commit = facts.leader_commit;
    let mut verdict = facts.readiness();
    if verdict.is_ok() {
        match confirm_leader_commit(&ops.node).await {
            Ok(index) => {
                leader_commit = index;
                let applied = ops
                    .node
                    .raft
                    .metrics()
                    .borrow_watched()
                    .last_applied
                    .map(|l| l.index);
                if applied < index {
                    let reached = ops
                        .node
                        .raft
                        .wait(Some(READY_APPLY_WAIT))
                        .applied_index_at_least(index, "readiness check")
                        .await;
                    if reached.is_err() {
                        verdict = Err((
                            NotReadyReason::CatchingUp,
                            format!(
                                "this node has applied up to index {} of the {} the leader had committed",
                                applied.unwrap_or(0),
                                index.unwrap_or(0)
                            ),
                        ));
                    }
                }
            }
            Err(why) => verdict = Err((NotReadyReason::NoLeader, why)),
        }
    }
    let applied = ops
        .node
        .raft
        .metrics()
        .borrow_watched()
        .last_applied
        .map(|l| l.index);
    let (status, reason, message) = match verdict {
        Ok(()) => (StatusCode::OK, None, None),
        Err((reason, message)) => (StatusCode::SERVICE_UNAVAILABLE, Some(reason), Some(message)),
    };
    let body = Readiness {
        node: facts.id,
        ready: reason.is_none(),
        reason,
        message,
        leader: facts.leader,
        leader_commit,
        applied_index: applied,
    };
    (status, Json(body)).into_response()
}

/// What the leader has committed, confirmed by the leader with a majority now (a read index),
/// within [`READY_APPLY_WAIT`]. Asking the leader rather than trusting this node's view matters
/// on a follower cut off from a dead leader: with pre-vote it keeps naming that leader.
async fn confirm_leader_commit(node: &Node) -> Result<Option<LogIndex>, String> {
    match tokio::time::timeout(READY_APPLY_WAIT, node.read_index()).await {
        Ok(Ok(index)) => Ok(index),
        Ok(Err(e)) => Err(format!("no leader confirmed its leadership: {e}")),
        Err(_) => Err(format!(
            "no leader confirmed its leadership with a majority within {} ms",
            READY_APPLY_WAIT.as_millis()
        )),
    }
}

async fn snapshot(
    State(ops): State<Arc<Ops>>,
    q: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::invalid(format!("the query string is malformed: {e}")))?;
    if let Some(bad) = q.keys().find(|k| k.as_str() != "consistency") {
        return Err(ApiError::invalid(format!(
            "unknown query parameter {bad:?}; allowed: consistency"
        )));
    }
    let consistency = match q.get("consistency").map(String::as_str) {
        None | Some("linearizable") => Consistency::Linearizable,
        Some("stale") => Consistency::Stale,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "unknown consistency {other:?}: use linearizable or stale"
            )))
        }
    };
    let node = &ops.node;
    if consistency == Consistency::Linearizable {
        node.read_linearizable(|_| ())
            .await
            .map_err(|e| ApiError::from_node(e, node.leader_ref()))?;
    }
    let (meta, frozen) = {
        let a = node.sm.read();
        let meta = SnapshotMeta {
            last_log_id: a.last_applied,
            last_membership: a.membership.clone(),
        };
        (meta, a.kv.clone())
    };
    let index = meta.last_log_id.map(|l| l.index);
    let term = meta.last_log_id.map(|l| l.leader_id.term);
    let keys = frozen.len();
    tracing::info!(index, keys, ?consistency, "streaming a snapshot");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let sink = ChunkSender {
            tx: tx.clone(),
            buf: Vec::with_capacity(SNAPSHOT_CHUNK),
        };
        match crate::store::snapshot::write_to(sink, &meta, &frozen) {
            Ok((_, bytes)) => tracing::info!(bytes, "snapshot streamed"),
            Err(e) => {
                tracing::warn!(error = %e, "snapshot stream ended early");
                // Tell the client the body is incomplete rather than end it as if complete.
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let index_text = index.map_or_else(|| "none".to_string(), |i| i.to_string());
    for (name, value) in [
        (SNAPSHOT_INDEX_HEADER, index_text),
        (SNAPSHOT_TERM_HEADER, term.unwrap_or(0).to_string()),
        (SNAPSHOT_KEYS_HEADER, keys.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    Ok(response)
}

/// A blocking `Write` that hands the response body to the async side in chunks; a client that
/// went away makes the next write fail, which ends the serialization.
struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= SNAPSHOT_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(SNAPSHOT_CHUNK),
        ));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy_follower() -> Facts {
        Facts {
            id: 1,
            stopped: None,
            storage_failed: false,
            state: ServerState::Follower,
            leader: Some(0),
            members: vec![0, 1, 2],
            voters: 3,
            quorum_ack_age: None,
            lease: Duration::from_millis(600),
            leader_commit: Some(10),
            applied: Some(10),
        }
    }

    fn reason(f: &Facts) -> Option<NotReadyReason> {
        f.readiness().err().map(|(r, _)| r)
    }

    #[test]
    fn a_follower_that_knows_the_leader_is_ready_as_far_as_it_can_tell() {
        let f = healthy_follower();
        assert_eq!(f.health(), Ok(()));
        assert_eq!(reason(&f), None);
    }

    #[test]
    fn every_reason_is_found() {
        let no_leader = Facts {
            leader: None,
            ..healthy_follower()
        };
        assert_eq!(reason(&no_leader), Some(NotReadyReason::NoLeader));
        let unformed = Facts {
            leader: None,
            members: vec![],
            ..healthy_follower()
        };
        let (r, why) = unformed.readiness().expect_err("not formed");
        assert_eq!((r, why.contains("not formed")), (NotReadyReason::NoLeader, true));
        let removed = Facts {
            members: vec![0, 2],
            ..healthy_follower()
        };
        assert_eq!(reason(&removed), Some(NotReadyReason::Removed));
        let failed = Facts {
            storage_failed: true,
            ..healthy_follower()
        };
        assert_eq!(reason(&failed), Some(NotReadyReason::StorageFailed));
        assert_eq!(
            failed.health().map_err(|(r, _)| r),
            Err(UnhealthyReason::StorageFailed)
        );
        let fatal = Facts {
            stopped: Some(Stop::Fatal("No space left on device".into())),
            ..healthy_follower()
        };
        assert_eq!(
            fatal.health().map_err(|(r, _)| r),
            Err(UnhealthyReason::StorageFailed)
        );
        let stopping = Facts {
            stopped: Some(Stop::Shutdown),
            ..healthy_follower()
        };
        assert_eq!(
            stopping.health().map_err(|(r, _)| r),
            Err(UnhealthyReason::ShuttingDown)
        );
    }

    #[test]
    fn a_leader_is_ready_only_while_a_majority_acknowledges_it() {
        let leader = |age: Option<u64>, voters: usize| Facts {
            id: 0,
            state: ServerState::Leader,
            leader: Some(0),
            voters,
            quorum_ack_age: age.map(Duration::from_millis),
            ..healthy_follower()
        };
        assert_eq!(reason(&leader(Some(50), 3)), None);
        assert_eq!(reason(&leader(Some(5000), 3)), Some(NotReadyReason::NoLeader));
        assert_eq!(
            reason(&leader(None, 3)),
            Some(NotReadyReason::NoLeader),
            "not acknowledged yet"
        );
        assert_eq!(reason(&leader(None, 1)), None, "a lone voter needs nobody");
        assert_eq!(reason(&leader(Some(60_000), 1)), None, "nor does an idle one");
    }

    #[test]
    fn request_ids_are_unique_and_valid() {
        let ids = RequestIds::new(3);
        let (a, b) = (ids.make(), ids.make());
        assert_ne!(a, b);
        assert!(a.starts_with("3-") && valid_request_id(&a), "{a}");
    }
}
