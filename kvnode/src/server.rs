//! Starting and stopping a node: open storage, start Raft, serve both listeners, shut down
//! gracefully.
//!
//! Next to the listeners run three tasks: `cluster::settle` (form the cluster or get this node
//! admitted to it), `membership::promote_caught_up` (on the leader, promote learners that lost
//! their data once they have caught up), and an address book that keeps peer connections on
//! the addresses the current membership gives.
//!
//! Everything that can be wrong with the settings (a certificate that does not load, an auth
//! file that does not parse) is found before a listener is bound or the data directory is
//! opened, so a node that starts is a node that can serve.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::auth::Gate;
use crate::cluster::{ClusterCell, Refusal};
use crate::config::NodeConfig;
use crate::listener::ServeConfig;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::peer_client::{PeerClient, PeerNetwork};
use crate::store::{DataDir, OpenError};
use crate::types::Raft;

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
    /// A certificate, key or CA could not be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The auth file could not be used.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthFileError),
    /// Raft failed to start.
    #[error("raft failed: {0}")]
    Raft(String),
    /// Serving failed.
    #[error("server error: {0}")]
    Serve(std::io::Error),
    /// Raft stopped on a fatal error (a storage failure such as a full disk or an I/O error):
    /// the node stopped serving rather than answer from a state it can no longer keep.
    #[error("stopped after a fatal error: {0}; fix the cause (disk space, file system, permissions) and restart the node")]
    Fatal(String),
    /// The node must not run with this data directory (it belongs to another cluster).
    #[error("{0}")]
    Refused(String),
    /// `--force-new-cluster` could not be carried out.
    #[error("--force-new-cluster: {0}")]
    ForceNewCluster(String),
}

/// Log what the data directory holds before Raft starts from it: the bounds of the log and the
/// snapshot. After a crash this says where the node was: e.g. a snapshot ahead of the log's
/// end means it died after installing a snapshot and before purging the log it replaces
/// (openraft purges the rest at startup).
fn log_what_was_found(data: &DataDir) {
    let snapshot = data.sm.read().last_applied.map(|l| l.index);
    let found = data.log.recovered();
    info!(
        log_purged = ?found.purged.map(|l| l.index),
        log_last = ?found.last_log_id.map(|l| l.index),
        snapshot = ?snapshot,
        "data directory opened"
    );
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
        cluster_name: "kvnode".into(),
        heartbeat_interval: config.heartbeat_ms,
        election_timeout_min: config.election_min_ms,
        election_timeout_max: config.election_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
        max_in_snapshot_log_to_keep: 1000,
        install_snapshot_timeout: 10_000,
        // A follower that returns from a pause or a partition asks first whether it could win,
        // instead of bumping the term and deposing a healthy leader.
        enable_pre_vote: Some(true),
        // A leader restarted within its term would otherwise resume at once with a commit index
        // it cannot vouch for, and could serve a stale read. Winning a new election costs one
        // round and gives it a fresh entry of its own term to read behind.
        enable_leader_restore: Some(false),
        // A follower whose data directory was wiped comes back with an empty log; without this
        // the leader refuses to replicate to it. Safe here because such a node refuses to vote
        // until it has state again (see `cluster::may_vote`).
        allow_log_reversion: Some(true),
        ..Default::default()
    }
    .validate()
    .map_err(|e| RunError::Config(e.to_string()))?;

    let (client_tls, client_cert) = match config.client_tls.as_ref().map(crate::tls::client_port_config) {
        Some(made) => {
            let (config, cert) = made?;
            (Some(config), Some(cert))
        }
        None => (None, None),
    };
    let peer_tls = config
        .peer_tls
        .as_ref()
        .map(crate::tls::PeerTls::load)
        .transpose()?
        .map(Arc::new);
    if let Some(named) = peer_tls.as_ref().and_then(|t| t.own_node()) {
        if named != config.id {
            return Err(RunError::Config(format!(
                "--peer-cert-file names node {named}, but this is node {}: give it its own certificate",
                config.id
            )));
        }
    }
    let gate = Arc::new(Gate::new(config.auth_file.clone())?);
    crate::auth::reload_on_sighup(gate.clone()).map_err(RunError::Serve)?;
    let own_certs = client_cert
        .into_iter()
        .chain(peer_tls.as_ref().map(|t| t.cert()))
        .collect();
    crate::tls::reload_on_sighup(own_certs).map_err(RunError::Serve)?;
    let join_token = config
        .join_token_file
        .as_deref()
        .map(crate::auth::read_token_file)
        .transpose()
        .map_err(RunError::Config)?;

    let http_listener = bind(config.client_listen_addr(), "client API").await?;
    let raft_listener = bind(config.peer_listen_addr(), "peer").await?;
    let dir = config.data_dir.clone();
    let id = config.id;
    let metrics = Metrics::new(config.id);
    let log_observer: Arc<dyn kvlog::WriteObserver> = metrics.log_observer();
    let mut data = tokio::task::spawn_blocking(move || DataDir::open_observed(&dir, id, Some(log_observer)))
        .await
        .map_err(|e| RunError::Raft(format!("opening the data directory failed: {e}")))??;
    log_what_was_found(&data);
    if config.force_new_cluster {
        force_new_cluster(&mut data, &config).await?;
    }
    let snapshot_metrics = metrics.clone();
    data.sm
        .observe_snapshots(Arc::new(move |event| snapshot_metrics.snapshot(event)));
    data.sm.history().set_limits(config.watch_history);
    let started_pristine = data.log.is_pristine();
    let identity = data.identity.clone();
    let peers = PeerClient::new(identity.cluster.clone(), peer_tls.clone())
        .map_err(|e| RunError::Raft(e.to_string()))?;
    peers.set_client_api_token(join_token);
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        PeerNetwork::new(peers.clone()),
        data.log,
        data.sm.clone(),
    )
    .await
    .map_err(|e| RunError::Raft(e.to_string()))?;
    metrics.attach(&raft).await;
    check_membership_names_this_cluster(&raft, &identity, &config)?;
    let cell = ClusterCell::new(config.data_dir.clone(), identity, peers.clone());
    let node = Arc::new(Node::new(
        config.clone(),
        raft.clone(),
        data.sm,
        started_pristine,
        peers.clone(),
        cell,
    ));

    let bound = Bound {
        http: http_listener.local_addr().map_err(RunError::Serve)?,
        raft: raft_listener.local_addr().map_err(RunError::Serve)?,
    };
    info!(
        id = config.id,
        http = %bound.http,
        raft = %bound.raft,
        client_tls = client_tls.is_some(),
        peer_tls = peer_tls.is_some(),
        tokens = gate.file().is_some(),
        data_dir = %config.data_dir.display(),
        "node started"
    );
    on_ready(bound);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (refuse_tx, mut refuse_rx) = tokio::sync::watch::channel(None::<Refusal>);
    tokio::spawn(crate::cluster::settle(node.clone(), stop_rx.clone(), refuse_tx));
    tokio::spawn(crate::membership::promote_caught_up(
        node.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(keep_addresses(raft.clone(), peers));
    let (fatal_tx, mut fatal_rx) = tokio::sync::watch::channel(None::<String>);
    tokio::spawn(watch_for_fatal(raft.clone(), fatal_tx));

    // In-flight client requests may wait for a leader or a commit; past that, shutdown does
    // not wait for anyone.
    let grace = config.batch.write_timeout.max(config.leader_wait) + Duration::from_secs(1);
    let mut peer_stop = stop_rx.clone();
    let peer_router = crate::peer_api::router(node.clone());
    let peer_serve = ServeConfig {
        what: "peer",
        tls: peer_tls.as_ref().map(|t| t.server_config()),
        require_node_cert: peer_tls.is_some(),
        header_timeout: config.header_timeout,
        body_timeout: config.body_timeout,
        streamed_paths: &[crate::wire::route::SNAPSHOT],
        grace,
    };
    let peer_server = tokio::spawn(async move {
        crate::listener::serve(raft_listener, peer_router, peer_serve, async move {
            let _ = peer_stop.wait_for(|s| *s).await;
        })
        .await
    });
    let history = node.sm.history();
    let refused = {
        let rx = refuse_rx.clone();
        move || rx.borrow().clone()
    };
    let stop_serving = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = fatal_rx.wait_for(|f| f.is_some()) => {}
            // The settling task drops its sender when the node has joined: a closed channel
            // is no refusal (the pattern then disables this branch).
            Ok(_) = refuse_rx.wait_for(|r| r.is_some()) => {}
        }
        // Watch streams never end by themselves; a graceful shutdown waits for open responses.
        history.close();
    };
    let client_serve = ServeConfig {
        what: "client API",
        tls: client_tls,
        require_node_cert: false,
        header_timeout: config.header_timeout,
        body_timeout: config.body_timeout,
        streamed_paths: &[],
        grace,
    };
    let client_result = crate::listener::serve(
        http_listener,
        crate::ops_api::wrap(
            crate::client_api::router(node.clone()),
            node.clone(),
            metrics.clone(),
            gate,
        ),
        client_serve,
        stop_serving,
    )
    .await;
    let fatal = fatal_error(&node);
    info!("client API stopped; shutting down raft");
    let _ = stop_tx.send(true);
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not stop cleanly");
    }
    let _ = peer_server.await;
    info!("node stopped");
    if let Some(Refusal(reason)) = refused() {
        return Err(RunError::Refused(reason));
    }
    if let Some(reason) = fatal {
        return Err(RunError::Fatal(reason));
    }
    client_result.map_err(RunError::Serve)
}

/// A joined node's membership (from its own log) names its cluster in every member's entry; a
/// different name means `node.json` and the log come from different directories.
fn check_membership_names_this_cluster(
    raft: &Raft,
    identity: &crate::store::Identity,
    config: &NodeConfig,
) -> Result<(), RunError> {
    let Some(mine) = identity.cluster.as_deref().filter(|_| identity.joined) else {
        return Ok(());
    };
    let metrics = raft.metrics();
    let m = metrics.borrow_watched();
    let other = m
        .membership_config
        .nodes()
        .map(|(_, n)| n.cluster.as_str())
        .find(|c| !c.is_empty() && *c != mine);
    match other {
        Some(other) => Err(RunError::Storage(OpenError::Corrupt {
            path: config.data_dir.clone(),
            reason: format!(
                "node.json names cluster {mine}, but the membership in its log names cluster {other}"
            ),
        })),
        None => Ok(()),
    }
}

/// `--force-new-cluster`: rewrite this node's log so that it starts as the only voter of a new
/// cluster, with all its data, and say loudly what that means.
async fn force_new_cluster(data: &mut DataDir, config: &NodeConfig) -> Result<(), RunError> {
    let forced = crate::cluster::force_new_cluster(data, config)
        .await
        .map_err(RunError::ForceNewCluster)?;
    let Some(f) = forced else {
        tracing::warn!(
            "--force-new-cluster: this node is already the only voter of cluster {}; nothing to do \
             (remove --force-new-cluster from its command line)",
            data.identity.cluster.clone().unwrap_or_default()
        );
        return Ok(());
    };
    let lines = [
        "=================================================================================".to_string(),
        format!(
            "--force-new-cluster: node {} now starts a NEW cluster {} on its own, with all its data",
            config.id, f.new_cluster
        ),
        format!(
            "  it leaves cluster {} (voters {:?}); those nodes are not members of the new cluster, and \
             their requests are refused: do not restart them on their old data",
            f.old_cluster.as_deref().unwrap_or("?"),
            f.old_voters
        ),
        match f.committed {
            Some(c) if c >= f.last => "  every entry in its log was known to be committed".to_string(),
            committed => format!(
                "  its log entries {}..={} were not known to be committed; the new cluster commits them now",
                committed.map_or(0, |c| c + 1),
                f.last
            ),
        },
        format!(
            "  grow it again: start new nodes (fresh data directories) with `kvnode --join {} --id N \
             --http HOST:PORT --raft HOST:PORT`, then `kvctl member promote N`",
            config.http_addr
        ),
        "  and remove --force-new-cluster from this node's command line".to_string(),
        "=================================================================================".to_string(),
    ];
    for line in lines {
        tracing::warn!("{line}");
    }
    Ok(())
}

/// Keep the peer client's address book equal to the current membership.
async fn keep_addresses(raft: Raft, peers: PeerClient) {
    let mut metrics = raft.metrics();
    loop {
        let book: std::collections::HashMap<_, _> = metrics
            .borrow_and_update()
            .membership_config
            .nodes()
            .map(|(id, n)| (*id, n.raft.clone()))
            .collect();
        peers.set_addresses(book);
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
/// The fatal error Raft stopped with, if it did.
fn fatal_error(node: &Node) -> Option<String> {
    match &node.raft.metrics().borrow_watched().running_state {
        Err(openraft::errors::Fatal::Stopped) | Ok(()) => None,
        Err(fatal) => Some(fatal.to_string()),
    }
}

/// Report the first fatal error Raft stops with. Storage failures end up here: the node must
/// then stop serving (a replica that cannot write its log must not keep answering reads) and
/// exit non-zero, so that a supervisor restarts it once the cause is fixed.
async fn watch_for_fatal(raft: Raft, tx: tokio::sync::watch::Sender<Option<String>>) {
    let mut metrics = raft.metrics();
    loop {
        let state = metrics.borrow_and_update().running_state.clone();
        match state {
            Err(openraft::errors::Fatal::Stopped) => return,
            Err(fatal) => {
                error!(error = %fatal, "raft stopped on a fatal error; the node stops serving");
                let _ = tx.send(Some(fatal.to_string()));
                return;
            }
            Ok(()) => {}
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
