//! Starting and stopping a node: open storage, start Raft, serve both listeners, shut down
//! gracefully.

use std::future::Future;
use std::sync::Arc;

use openraft::{Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tracing::info;

use crate::config::NodeConfig;
use crate::network::{PeerClient, PeerNetwork};
use crate::node::{Node, Restart};
use crate::store::{DataDir, Identity, OpenError};
use crate::types::Raft;
use openraft::storage::RaftLogStorage;

/// Why a node could not start or stopped with an error. Each message names the problem.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The settings do not fit together.
    #[error("invalid settings: {0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Which listener.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The data directory cannot be used.
    #[error(transparent)]
    Storage(#[from] OpenError),
    /// Raft failed to start.
    #[error("raft failed: {0}")]
    Raft(String),
    /// Serving failed.
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// Addresses a started node listens on.
#[derive(Debug, Clone)]
pub struct Bound {
    /// Client API address.
    pub http: std::net::SocketAddr,
    /// Peer address.
    pub raft: std::net::SocketAddr,
}

async fn bind(addr: &str, what: &'static str) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr).await.map_err(|source| RunError::Bind {
        addr: addr.to_string(),
        what,
        source,
    })
}

/// Run a node until `shutdown` resolves, then stop gracefully: stop taking client requests and
/// let those in flight finish, stop Raft (closing storage), stop the peer listener.
/// `on_ready` is called once both listeners are bound.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(Bound) + Send,
) -> Result<(), RunError> {
    config.validate().map_err(|e| RunError::Config(e.to_string()))?;
    let raft_config = Config {
        cluster_name: format!("kv-{}", config.cluster),
        heartbeat_interval: config.heartbeat_ms,
        election_timeout_min: config.election_min_ms,
        election_timeout_max: config.election_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
        max_in_snapshot_log_to_keep: 1000,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| RunError::Config(e.to_string()))?;

    let http_listener = bind(&config.http_addr, "client API").await?;
    let raft_listener = bind(&config.raft_addr, "peer").await?;
    let identity = Identity {
        node_id: config.id,
        cluster: config.cluster.clone(),
    };
    let data = DataDir::open(&config.data_dir, &identity)?;
    let peers = PeerClient::new(config.cluster.clone()).map_err(|e| RunError::Raft(e.to_string()))?;
    let restart = {
        let mut log = data.log.clone();
        let state = log
            .get_log_state()
            .await
            .map_err(|e| RunError::Raft(e.to_string()))?;
        let vote = log.read_vote().await.map_err(|e| RunError::Raft(e.to_string()))?;
        Restart {
            term: vote.map_or(0, |v| v.leader_id.term),
            last_log_index: state.last_log_id.map(|l| l.index),
        }
    };
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        PeerNetwork::new(peers.clone()),
        data.log.clone(),
        data.sm.clone(),
    )
    .await
    .map_err(|e| RunError::Raft(e.to_string()))?;
    let node = Arc::new(Node::new(
        config.clone(),
        raft.clone(),
        data.sm,
        data.log,
        peers,
        restart,
    ));

    let bound = Bound {
        http: http_listener.local_addr().map_err(RunError::Serve)?,
        raft: raft_listener.local_addr().map_err(RunError::Serve)?,
    };
    info!(id = config.id, http = %bound.http, raft = %bound.raft, data_dir = %config.data_dir.display(), "node started");
    on_ready(bound);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(node.clone().bootstrap(stop_rx.clone()));

    let mut peer_stop = stop_rx.clone();
    let peer_router = crate::peer::router(node.clone());
    let peer_server = tokio::spawn(async move {
        axum::serve(raft_listener, peer_router)
            .with_graceful_shutdown(async move {
                let _ = peer_stop.wait_for(|s| *s).await;
            })
            .await
    });
    let client_result = axum::serve(http_listener, crate::api::router(node.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    info!("client API stopped; shutting down raft");
    let _ = stop_tx.send(true);
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not stop cleanly");
    }
    let _ = peer_server.await;
    info!("node stopped");
    client_result.map_err(RunError::Serve)
}
