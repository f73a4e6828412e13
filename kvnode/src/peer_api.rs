//! The peer-facing HTTP handlers: Raft RPCs, probes and requests forwarded by other nodes.
//!
//! Clients never see these routes; they listen on the node's separate Raft address so tests (and
//! firewalls) can cut peer traffic while clients still reach the node. Every request must name
//! this node and this cluster (see `peer_client`); a mismatch is answered 421 before anything
//! is processed. A node without a cluster id yet (waiting to form a cluster or to be admitted,
//! see `cluster`) answers only probes and formation offers, and refuses everything else with
//! 421: a node that lost its data must not take part in Raft before the cluster has re-admitted
//! it. Failures are answered with an error status and a body that says why, never with 200.
//! Bodies are binary (see `wire`).
//!
//! What a peer may send is bounded, whoever it is: a body no larger than the largest
//! AppendEntries part ([`NodeConfig::peer_body_limit`](crate::config::NodeConfig::peer_body_limit)),
//! the same for each frame of a replication stream, a snapshot no larger than
//! `--max-snapshot-bytes` (checked against its header before a byte is written to disk), and a
//! forwarded write that passes the same key and size rules as a client's. Under mutual TLS a
//! Raft message must also speak for the node the sender's certificate names (its vote's node
//! id), so a node cannot pose as another.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Extension, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures_util::StreamExt;
use openraft::raft::{TransferLeaderRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::cluster;
use crate::error::NodeError;
use crate::listener::ConnInfo;
use crate::membership::AdminRequest;
use crate::node::Node;
use crate::store::sm::Snapshot;
use crate::store::snapshot::SnapshotFile;
use crate::types::{NodeId, TypeConfig, Vote};
use crate::wire::{
    self, route, Admit, Adopt, ForwardWrite, ReadIndex, SnapshotHeader, CLUSTER_HEADER, CONTENT_TYPE,
    TARGET_HEADER,
};

/// The peer router of `node`.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route(route::APPEND, post(append))
        .route(route::STREAM, post(stream))
        .route(route::VOTE, post(vote))
        .route(route::PRE_VOTE, post(pre_vote))
        .route(route::SNAPSHOT, post(snapshot))
        .route(route::TRANSFER_LEADER, post(transfer_leader))
        .route(route::PROBE, post(probe))
        .route(route::ADOPT, post(adopt))
        .route(route::ADMIT, post(admit))
        .route(route::FORWARD_ADMIN, post(forward_admin))
        .route(route::FORWARD_WRITE, post(forward_write))
        .route(route::FORWARD_READ_INDEX, post(forward_read_index))
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
    // Probes and formation offers come from nodes that have no cluster yet.
    let open = matches!(req.uri().path(), route::PROBE | route::ADOPT);
    if !open {
        match node.cluster.id() {
            None => {
                let msg = format!(
                    "node {} belongs to no cluster yet (it waits to form one or to be admitted): \
                     it takes no part in Raft before",
                    node.id
                );
                return (StatusCode::MISDIRECTED_REQUEST, msg).into_response();
            }
            Some(mine) if cluster.as_deref() != Some(mine.as_str()) => {
                let msg = format!(
                    "cluster mismatch: this node belongs to cluster {mine}, the request to {cluster:?}"
                );
                return (StatusCode::MISDIRECTED_REQUEST, msg).into_response();
            }
            Some(_) => {}
        }
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

fn binary<T: Serialize>(value: &T) -> Response {
    ([("content-type", CONTENT_TYPE)], wire::encode(value)).into_response()
}

fn refuse(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, message.to_string()).into_response()
}

/// Answer a node-level result: the value, or the error (which the sender decodes) with 503.
fn answer<T: Serialize>(result: Result<T, NodeError>) -> Response {
    match result {
        Ok(v) => binary(&v),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", CONTENT_TYPE)],
            wire::encode(&e),
        )
            .into_response(),
    }
}

/// Answer a Raft-level result: openraft's answer, or 500 with the fatal error's text.
fn raft_answer<T: Serialize, E: std::fmt::Display>(result: Result<T, E>) -> Response {
    match result {
        Ok(v) => binary(&v),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Read a whole body of at most the peer body limit.
async fn read_all(node: &Node, body: Body) -> Result<axum::body::Bytes, Response> {
    let limit = node.config.peer_body_limit();
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than the {limit} bytes a peer request may carry"),
        )
    };
    // A declared length past the limit is refused before a byte of the body is read.
    if http_body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            too_large()
        } else {
            refuse(
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {e}"),
            )
        }
    })
}

async fn decoded<T: DeserializeOwned>(node: &Node, body: Body) -> Result<T, Response> {
    let bytes = read_all(node, body).await?;
    wire::decode(&bytes).map_err(|e| refuse(StatusCode::BAD_REQUEST, e))
}

/// Under mutual TLS: the sender's certificate must name the node `vote` speaks for; else the
/// refusal to send.
fn speaks_for(conn: &Option<Extension<ConnInfo>>, vote: &Vote) -> Result<(), Box<Response>> {
    let claimed: NodeId = vote.leader_id.node_id;
    match conn.as_ref().and_then(|c| c.peer_node) {
        Some(named) if named != claimed => Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            format!("the sender's certificate names node {named}, but the message speaks for node {claimed}"),
        ))),
        _ => Ok(()),
    }
}

async fn append(State(node): State<Arc<Node>>, conn: Option<Extension<ConnInfo>>, body: Body) -> Response {
    let bytes = match read_all(&node, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match wire::decode_append(&bytes) {
        Ok(req) => {
            if let Err(r) = speaks_for(&conn, &req.vote) {
                return *r;
            }
            raft_answer(node.raft.append_entries(req).await)
        }
        Err(e) => refuse(StatusCode::BAD_REQUEST, e),
    }
}

/// Upgrade the connection to a replication stream (see `wire::stream`) and serve it: each frame
/// is an AppendEntries for openraft, each answer is written back in order once the entries are
/// durable here. openraft keeps up to 64 requests of one stream in flight.
async fn stream(State(node): State<Arc<Node>>, mut req: Request) -> Response {
    let sender = req.extensions().get::<ConnInfo>().and_then(|c| c.peer_node);
    let asked = req
        .headers()
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok());
    if asked != Some(wire::stream::PROTOCOL) {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("{} needs `Upgrade: {}`", route::STREAM, wire::stream::PROTOCOL),
        );
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => serve_stream(node, sender, hyper_util::rt::TokioIo::new(upgraded)).await,
            Err(e) => tracing::warn!(error = %e, "a replication stream could not be upgraded"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (axum::http::header::CONNECTION, "upgrade"),
            (axum::http::header::UPGRADE, wire::stream::PROTOCOL),
        ],
    )
        .into_response()
}

/// `sender`: the node the sender's certificate names, under mutual TLS.
async fn serve_stream<Io>(node: Arc<Node>, sender: Option<NodeId>, io: Io)
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (read, mut write) = tokio::io::split(io);
    let limit = node.config.peer_body_limit();
    let requests = futures_util::stream::unfold(read, move |mut read| async move {
        match wire::stream::read_frame_limited(&mut read, limit).await {
            Ok(Some(frame)) => match wire::decode_append(&frame) {
                Ok(req) if sender.is_some_and(|s| s != req.vote.leader_id.node_id) => {
                    tracing::warn!(
                        sender = ?sender,
                        claims = req.vote.leader_id.node_id,
                        "closing a replication stream whose frames speak for another node than its certificate names"
                    );
                    None
                }
                Ok(req) => Some((req, read)),
                Err(e) => {
                    tracing::warn!(error = %e, "closing a replication stream that sent an undecodable frame");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "closing a replication stream");
                None
            }
            // The leader closed the stream.
            Ok(None) => None,
        }
    });
    let answers = node.raft.stream_append(requests);
    futures_util::pin_mut!(answers);
    while let Some(answer) = answers.next().await {
        let Ok(answer) = answer else {
            // Raft stopped: nothing more can be answered.
            break;
        };
        let refused = answer.is_err();
        if wire::stream::write_frames(&mut write, &[wire::encode(&answer)])
            .await
            .is_err()
            || refused
        {
            break;
        }
    }
}

async fn vote(State(node): State<Arc<Node>>, conn: Option<Extension<ConnInfo>>, body: Body) -> Response {
    election(node, conn, body, false).await
}

async fn pre_vote(State(node): State<Arc<Node>>, conn: Option<Extension<ConnInfo>>, body: Body) -> Response {
    election(node, conn, body, true).await
}

/// A vote, or a pre-vote (would this node grant a vote?): both follow the same rule about who
/// may vote at all (see `cluster::may_vote`).
async fn election(
    node: Arc<Node>,
    conn: Option<Extension<ConnInfo>>,
    body: Body,
    pre_vote: bool,
) -> Response {
    let req: VoteRequest<TypeConfig> = match decoded(&node, body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(r) = speaks_for(&conn, &req.vote) {
        return *r;
    }
    if let Err(why) = cluster::may_vote(&node, &req) {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, why);
    }
    if pre_vote {
        raft_answer(node.raft.pre_vote(req).await)
    } else {
        raft_answer(node.raft.vote(req).await)
    }
}

async fn transfer_leader(
    State(node): State<Arc<Node>>,
    conn: Option<Extension<ConnInfo>>,
    body: Body,
) -> Response {
    let req: TransferLeaderRequest<TypeConfig> = match decoded(&node, body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(r) = speaks_for(&conn, req.from_leader()) {
        return *r;
    }
    raft_answer(node.raft.handle_transfer_leader(req).await)
}

/// Receive a snapshot: stream it to a durable temporary file, then hand it to openraft. The
/// file is on disk before openraft installs it (and then purges the log), so a crash at any
/// point leaves either the old state or the new one.
async fn snapshot(State(node): State<Arc<Node>>, conn: Option<Extension<ConnInfo>>, body: Body) -> Response {
    let path = node.sm.receive_path();
    let received = receive_snapshot(&path, body, node.config.max_snapshot_bytes, &conn).await;
    let response = match received {
        Ok(header) => install_snapshot(&node, header, &path).await,
        Err(r) => r,
    };
    // Published files were renamed away; anything left here is an unused partial file.
    let _ = tokio::fs::remove_file(&path).await;
    response
}

/// Largest snapshot header: a vote and the snapshot's metadata, membership included.
const MAX_SNAPSHOT_HEADER: usize = 1024 * 1024;

async fn receive_snapshot(
    path: &std::path::Path,
    body: Body,
    max_bytes: u64,
    conn: &Option<Extension<ConnInfo>>,
) -> Result<SnapshotHeader, Response> {
    let bad = |m: String| refuse(StatusCode::BAD_REQUEST, m);
    let io = |e: std::io::Error| {
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store the snapshot: {e}"),
        )
    };
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let (header, mut rest) = loop {
        if let Some((frame, rest)) = wire::split_frame(&buf) {
            let header: SnapshotHeader = wire::decode(frame).map_err(|e| bad(e.to_string()))?;
            speaks_for(conn, &header.vote).map_err(|r| *r)?;
            if header.len > max_bytes {
                return Err(refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the snapshot announces {} bytes; this node accepts at most {max_bytes} (--max-snapshot-bytes)",
                        header.len
                    ),
                ));
            }
            break (header, rest.to_vec());
        }
        if buf.len() > MAX_SNAPSHOT_HEADER {
            return Err(bad("the snapshot header is implausibly large".into()));
        }
        match stream.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(bad(format!("the snapshot body could not be read: {e}"))),
            None => return Err(bad("the snapshot body ended inside its header".into())),
        }
    };
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut written = 0u64;
    loop {
        written += rest.len() as u64;
        if written > header.len {
            return Err(bad(format!(
                "the snapshot is longer than the {} bytes announced",
                header.len
            )));
        }
        file.write_all(&rest).await.map_err(io)?;
        match stream.next().await {
            Some(Ok(chunk)) => rest = chunk.to_vec(),
            Some(Err(e)) => return Err(bad(format!("the snapshot body could not be read: {e}"))),
            None => break,
        }
    }
    if written != header.len {
        return Err(bad(format!(
            "the snapshot ended after {written} of {} bytes",
            header.len
        )));
    }
    file.sync_all().await.map_err(io)?;
    Ok(header)
}

async fn install_snapshot(node: &Node, header: SnapshotHeader, path: &std::path::Path) -> Response {
    if let Err(why) = cluster::snapshot_fits(node, &header.vote, &header.meta) {
        return refuse(StatusCode::CONFLICT, why);
    }
    let file = match SnapshotFile::open(path) {
        Ok(f) => f,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let snapshot = Snapshot {
        meta: header.meta,
        snapshot: file,
    };
    raft_answer(node.raft.install_full_snapshot(header.vote, snapshot).await)
}

async fn probe(State(node): State<Arc<Node>>) -> Response {
    binary(&cluster::probe(&node))
}

async fn adopt(State(node): State<Arc<Node>>, body: Body) -> Response {
    let offer: Adopt = match decoded(&node, body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match cluster::adopt(&node, &offer) {
        Ok(()) => binary(&()),
        Err(e) => refuse(StatusCode::CONFLICT, e),
    }
}

/// Answer a membership result: the value, or the error (which the sender decodes) with 503.
fn admin_answer<T: Serialize>(result: Result<T, crate::membership::AdminError>) -> Response {
    match result {
        Ok(v) => binary(&v),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", CONTENT_TYPE)],
            wire::encode(&e),
        )
            .into_response(),
    }
}

async fn admit(State(node): State<Arc<Node>>, conn: Option<Extension<ConnInfo>>, body: Body) -> Response {
    let request: Admit = match decoded(&node, body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    // Under mutual TLS a node asks to be admitted only as the node its certificate names.
    if let Some(named) = conn.as_ref().and_then(|c| c.peer_node) {
        if named != request.id {
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "the sender's certificate names node {named}, but it asks to admit node {}",
                    request.id
                ),
            );
        }
    }
    admin_answer(cluster::admit(&node, request).await)
}

async fn forward_admin(State(node): State<Arc<Node>>, body: Body) -> Response {
    let request: AdminRequest = match decoded(&node, body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    admin_answer(node.admin_as_leader(request).await)
}

/// A write forwarded by a follower. The leader checks it again as if a client had sent it
/// (the key's length, the value's size) and sizes it itself: the forward path must not be a
/// way around a limit.
async fn forward_write(State(node): State<Arc<Node>>, body: Body) -> Response {
    let req: ForwardWrite = match decoded(&node, body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let size = match crate::client_api::check_op(&req.op, node.config.max_value_bytes) {
        Ok(size) => size,
        Err(why) => return answer::<()>(Err(NodeError::Refused(why))),
    };
    answer(node.write_as_leader(req.op, size).await)
}

async fn forward_read_index(State(node): State<Arc<Node>>) -> Response {
    answer(node.read_index_as_leader().await.map(|index| ReadIndex { index }))
}
