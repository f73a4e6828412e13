//! The peer router: Raft RPCs, probes and forwarded client requests.
//!
//! Clients never see these routes; they listen on the node's separate Raft address so tests (and
//! firewalls) can cut peer traffic while clients still reach the node. Every request must name
//! this node and this cluster (see `network`); a mismatch is answered 421 before anything is
//! processed. Raft errors are answered with an error status and openraft's error document, never
//! with 200. The body limit is lifted: snapshots and batches of large values exceed axum's 2 MB
//! default, and peers are trusted once the identity check passes.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;

use crate::network::{CLUSTER_HEADER, TARGET_HEADER};
use crate::node::{ForwardWrite, Node, NodeError, ReadIndex};
use crate::types::TypeConfig;

/// The peer router of `node`.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/probe", post(probe))
        .route("/forward/write", post(forward_write))
        .route("/forward/read-index", post(forward_read_index))
        .layer(middleware::from_fn_with_state(node.clone(), check_identity))
        .layer(DefaultBodyLimit::disable())
        .with_state(node)
}

async fn check_identity(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let (target, cluster) = {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        (header(TARGET_HEADER), header(CLUSTER_HEADER))
    };
    if cluster.as_deref() != Some(node.config.cluster.as_str()) {
        let msg = format!(
            "cluster mismatch: this node belongs to cluster {}, the request to {:?}",
            node.config.cluster, cluster
        );
        return (StatusCode::MISDIRECTED_REQUEST, msg).into_response();
    }
    if target != Some(node.id.to_string()) {
        let msg = format!(
            "node mismatch: this is node {}, the request is for {:?}",
            node.id, target
        );
        return (StatusCode::MISDIRECTED_REQUEST, msg).into_response();
    }
    next.run(req).await
}

fn answer<T: Serialize, E: Serialize>(result: Result<T, E>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(e)).into_response(),
    }
}

async fn append(
    State(node): State<Arc<Node>>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    answer(node.raft.append_entries(req).await)
}

async fn vote(State(node): State<Arc<Node>>, Json(req): Json<VoteRequest<u64>>) -> Response {
    let candidate_last = req.last_log_id.map_or(0, |l| l.index);
    if !node.may_vote(candidate_last) {
        let msg = "this node holds no Raft state (new or wiped data directory) and votes only for a \
                   cluster being formed, or once a leader has brought it up to date";
        return (StatusCode::SERVICE_UNAVAILABLE, msg).into_response();
    }
    answer(node.raft.vote(req).await)
}

async fn snapshot(
    State(node): State<Arc<Node>>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    answer(node.raft.install_snapshot(req).await)
}

async fn probe(State(node): State<Arc<Node>>) -> Response {
    Json(node.probe()).into_response()
}

async fn forward_write(State(node): State<Arc<Node>>, Json(req): Json<ForwardWrite>) -> Response {
    answer::<_, NodeError>(node.write_as_leader(req.op, req.size).await)
}

async fn forward_read_index(State(node): State<Arc<Node>>) -> Response {
    answer::<_, NodeError>(node.read_index_as_leader().await.map(|index| ReadIndex { index }))
}
