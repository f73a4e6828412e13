//! Outgoing peer traffic: Raft RPCs and forwarded client requests, over one pooled HTTP client.
//!
//! Every request names the node it is meant for and the cluster it belongs to (headers
//! `x-kv-target` and `x-kv-cluster`); the receiver refuses a mismatch, so a stale address or a
//! node of another cluster can never join in by accident.
//!
//! Failures are sorted by what they mean for a write: [`PeerError::NotSent`] (the connection was
//! never made, so the request certainly did nothing) versus [`PeerError::Unknown`] (it may have
//! been received). Forwarding relies on that distinction to retry only what is safe to retry.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{NodeId, NodeInfo, TypeConfig};

/// Header naming the node a peer request is for.
pub const TARGET_HEADER: &str = "x-kv-target";
/// Header naming the cluster a peer request belongs to.
pub const CLUSTER_HEADER: &str = "x-kv-cluster";

/// Why a peer request failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No connection could be made: the request was certainly not processed.
    #[error("peer {addr} is unreachable: {reason}")]
    NotSent {
        /// The peer address.
        addr: String,
        /// The cause.
        reason: String,
    },
    /// The request may have reached the peer, but no answer came back.
    #[error("no answer from peer {addr}: {reason}")]
    Unknown {
        /// The peer address.
        addr: String,
        /// The cause.
        reason: String,
    },
    /// The peer answered with an error status; the body is the peer's error document.
    #[error("peer {addr} answered {status}")]
    Remote {
        /// The peer address.
        addr: String,
        /// HTTP status.
        status: u16,
        /// Body.
        body: Vec<u8>,
    },
}

/// The pooled client for all peer traffic of one node.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    cluster: String,
}

impl PeerClient {
    /// A client for the cluster with this fingerprint.
    pub fn new(cluster: String) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .no_proxy()
            .build()?;
        Ok(PeerClient { http, cluster })
    }

    /// POST `body` as JSON to `http://{addr}{path}` for node `target` and decode a 2xx answer.
    pub async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        target: NodeId,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let unknown = |reason: String| PeerError::Unknown {
            addr: addr.to_string(),
            reason,
        };
        let bytes = serde_json::to_vec(body).map_err(|e| unknown(format!("cannot encode request: {e}")))?;
        let resp = self
            .http
            .post(format!("http://{addr}{path}"))
            .header(TARGET_HEADER, target.to_string())
            .header(CLUSTER_HEADER, &self.cluster)
            .header("content-type", "application/json")
            .timeout(timeout)
            .body(bytes)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    PeerError::NotSent {
                        addr: addr.to_string(),
                        reason: error_chain(&e),
                    }
                } else {
                    unknown(error_chain(&e))
                }
            })?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| unknown(error_chain(&e)))?;
        if !(200..300).contains(&status) {
            return Err(PeerError::Remote {
                addr: addr.to_string(),
                status,
                body: body.to_vec(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| unknown(format!("undecodable answer: {e}")))
    }
}

/// An error and all its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// openraft's network factory: one [`PeerConn`] per target, all sharing the pooled client.
pub struct PeerNetwork {
    client: PeerClient,
}

impl PeerNetwork {
    /// Wrap the node's pooled client.
    pub fn new(client: PeerClient) -> Self {
        PeerNetwork { client }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        PeerConn {
            client: self.client.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// Raft RPCs to one peer.
pub struct PeerConn {
    client: PeerClient,
    target: NodeId,
    node: NodeInfo,
}

impl PeerConn {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        self.client
            .post(&self.node.raft, self.target, path, req, option.hard_ttl())
            .await
            .map_err(|e| match e {
                PeerError::NotSent { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                PeerError::Unknown { .. } => RPCError::Network(NetworkError::new(&e)),
                PeerError::Remote { ref body, .. } => {
                    match serde_json::from_slice::<RaftError<NodeId, E>>(body) {
                        Ok(remote) => RPCError::RemoteError(RemoteError::new_with_node(
                            self.target,
                            self.node.clone(),
                            remote,
                        )),
                        // Not a Raft error: the peer refused us (wrong cluster or id). Back off.
                        Err(_) => RPCError::Unreachable(Unreachable::new(&e)),
                    }
                }
            })
    }
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call("/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call("/raft/vote", &rpc, &option).await
    }
}
