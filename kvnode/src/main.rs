//! The `kvnode` binary: parse the command line, set up logging, run one node until SIGTERM or
//! Ctrl-C.
//!
//! Exit codes: 0 after a clean shutdown, 1 when the node cannot start or fails (the message names
//! the problem), 2 for a bad command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tracing::Instrument;

use kvapi::ClusterFile;
use kvnode::NodeConfig;

/// One node of a fault-tolerant key/value cluster (Raft).
///
/// Two ways to start a node:
///
///   kvnode 8080 127.0.0.1:6000 127.0.0.1:6001 127.0.0.1:6002
///       this node's HTTP port, its Raft address, the other nodes' Raft addresses
///
///   kvnode --cluster cluster.toml --id 0 [--data-dir DIR]
///       node 0 of the cluster described by a cluster file
///
///   kvnode certs --cluster cluster.toml --out DIR
///       write a development CA and every node's certificates, and DIR/cluster.toml that uses
///       them (see README, "Running it securely")
///
/// A new cluster forms by itself once every node is started. Logs go to stderr; RUST_LOG
/// overrides the default level (info). Exit codes: 0 clean shutdown, 1 failure, 2 bad usage.
#[derive(Parser, Debug)]
#[command(name = "kvnode", version, verbatim_doc_comment)]
struct Cli {
    /// This node's HTTP port (assignment form).
    #[arg(value_name = "HTTP_PORT", conflicts_with_all = ["cluster", "id"], requires = "raft_addr")]
    http_port: Option<u16>,

    /// This node's Raft address, host:port (assignment form).
    #[arg(value_name = "RAFT_ADDR")]
    raft_addr: Option<String>,

    /// The other nodes' Raft addresses (assignment form).
    #[arg(value_name = "PEER_RAFT_ADDR")]
    peers: Vec<String>,

    /// Cluster file (TOML, one [[node]] table per node with id, http, raft).
    #[arg(long, value_name = "FILE", requires = "id")]
    cluster: Option<PathBuf>,

    /// This node's id in the cluster file.
    #[arg(long, value_name = "N", requires = "cluster")]
    id: Option<u64>,

    /// Data directory [default: data/node<ID>].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Largest accepted value, in bytes of JSON.
    #[arg(long, value_name = "BYTES", default_value_t = kvapi::DEFAULT_MAX_VALUE_BYTES)]
    max_value_bytes: usize,

    /// How long a request waits for a leader during an election before answering 503.
    #[arg(long, value_name = "MS", default_value_t = kvapi::DEFAULT_LEADER_WAIT.as_millis() as u64)]
    leader_wait_ms: u64,

    /// How long a write waits for its commit before answering 504 (outcome unknown).
    #[arg(long, value_name = "MS", default_value_t = kvapi::DEFAULT_WRITE_TIMEOUT.as_millis() as u64)]
    write_timeout_ms: u64,

    /// Raft heartbeat interval.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    heartbeat_ms: u64,

    /// Raft election timeout, lower bound. A follower stands for election once it has heard
    /// nothing from the leader for the upper bound (the leader's lease) plus a timeout drawn
    /// between the two bounds, so a dead leader is replaced 0.9 to 1.2 s after its last
    /// heartbeat with the defaults.
    #[arg(long, value_name = "MS", default_value_t = 300)]
    election_min_ms: u64,

    /// Raft election timeout, upper bound.
    #[arg(long, value_name = "MS", default_value_t = 600)]
    election_max_ms: u64,

    /// Take a snapshot (and compact the log) after this many log entries.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    snapshot_every: u64,

    /// Most client writes grouped into one log entry.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    batch_max_ops: usize,

    /// Log entries being committed at once by the group-commit task. One is fastest on a
    /// small machine: writes that arrive meanwhile make the next entry larger, and CPU per
    /// write is what limits throughput there.
    #[arg(long, value_name = "N", default_value_t = 1)]
    batch_in_flight: usize,

    /// Serve the client port over HTTPS with this certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "key_file", help_heading = "Security")]
    cert_file: Option<PathBuf>,

    /// The private key (PEM) of --cert-file.
    #[arg(long, value_name = "FILE", requires = "cert_file", help_heading = "Security")]
    key_file: Option<PathBuf>,

    /// Require client certificates signed by this CA (PEM) on the client port.
    #[arg(long, value_name = "FILE", requires = "cert_file", help_heading = "Security")]
    client_ca_file: Option<PathBuf>,

    /// Mutual TLS on the peer port: this node's certificate (PEM), which must name it
    /// (DNS name node-<ID>.kv).
    #[arg(long, value_name = "FILE", requires_all = ["peer_key_file", "peer_ca_file"], help_heading = "Security")]
    peer_cert_file: Option<PathBuf>,

    /// The private key (PEM) of --peer-cert-file.
    #[arg(
        long,
        value_name = "FILE",
        requires = "peer_cert_file",
        help_heading = "Security"
    )]
    peer_key_file: Option<PathBuf>,

    /// The CA (PEM) that signed every node's peer certificate.
    #[arg(
        long,
        value_name = "FILE",
        requires = "peer_cert_file",
        help_heading = "Security"
    )]
    peer_ca_file: Option<PathBuf>,

    /// Bearer tokens with roles (TOML of [[token]] name, role, sha256); re-read on SIGHUP.
    /// Without it the client port is open to anyone who can reach it.
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    auth_file: Option<PathBuf>,

    /// Bind the client port here (e.g. 0.0.0.0:8080) instead of on its advertised address.
    #[arg(long, value_name = "ADDR", help_heading = "Security")]
    listen_client: Option<String>,

    /// Bind the peer port here instead of on its advertised address.
    #[arg(long, value_name = "ADDR", help_heading = "Security")]
    listen_peer: Option<String>,

    /// Client requests served at once; past that a node answers 503 overloaded.
    #[arg(long, value_name = "N", default_value_t = 1024, help_heading = "Security")]
    max_client_requests: usize,

    /// Bound on a TLS handshake and on reading a request's headers (both ports).
    #[arg(long, value_name = "MS", default_value_t = 10_000, help_heading = "Security")]
    header_timeout_ms: u64,

    /// Bound on reading a request's body (both ports; a snapshot stream: on any gap in it).
    #[arg(long, value_name = "MS", default_value_t = 30_000, help_heading = "Security")]
    body_timeout_ms: u64,

    /// Largest snapshot accepted from a peer.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024 * 1024 * 1024, help_heading = "Security")]
    max_snapshot_bytes: u64,
}

/// kvnode certs: write a development CA and certificates for every node of a cluster file.
#[derive(Parser, Debug)]
#[command(name = "kvnode certs")]
struct CertsCli {
    /// The cluster file whose nodes get certificates.
    #[arg(long, value_name = "FILE")]
    cluster: PathBuf,

    /// Where to write them (created; an existing CA there is never overwritten).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// `kvnode certs ...`: exit 0 when written, 1 when not.
fn certs(args: Vec<std::ffi::OsString>) -> ExitCode {
    let cli = CertsCli::parse_from(args);
    let cluster = match ClusterFile::load(&cli.cluster) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvnode certs: {e}");
            return ExitCode::from(2);
        }
    };
    match kvnode::certs::write_all(&cluster, &cli.out) {
        Ok(written) => {
            for f in &written.files {
                println!("wrote {}", f.display());
            }
            println!(
                "\nstart each node with: kvnode --cluster {} --id ID",
                written.cluster_file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kvnode certs: {e}");
            ExitCode::from(1)
        }
    }
}

impl Cli {
    fn into_config(self) -> Result<NodeConfig, String> {
        let mut config = match (self.http_port, &self.cluster, self.id) {
            (Some(port), None, None) => {
                let raft = self.raft_addr.as_deref().ok_or("missing RAFT_ADDR")?;
                NodeConfig::from_positional(port, raft, &self.peers).map_err(|e| e.to_string())?
            }
            (None, Some(path), Some(id)) => {
                let file = ClusterFile::load(path).map_err(|e| e.to_string())?;
                NodeConfig::from_cluster_file(&file, id).map_err(|e| e.to_string())?
            }
            _ => {
                return Err(
                    "give either HTTP_PORT RAFT_ADDR [PEERS...] or --cluster FILE --id N (see --help)".into(),
                )
            }
        };
        if let Some(dir) = self.data_dir {
            config.data_dir = dir;
        }
        config.max_value_bytes = self.max_value_bytes;
        config.leader_wait = Duration::from_millis(self.leader_wait_ms);
        config.batch.write_timeout = Duration::from_millis(self.write_timeout_ms);
        config.batch.max_ops = self.batch_max_ops.max(1);
        config.batch.max_in_flight = self.batch_in_flight.max(1);
        config.heartbeat_ms = self.heartbeat_ms;
        config.election_min_ms = self.election_min_ms;
        config.election_max_ms = self.election_max_ms;
        config.snapshot_every = self.snapshot_every;
        if let (Some(cert), Some(key)) = (self.cert_file, self.key_file) {
            config.client_tls = Some(kvnode::tls::ClientPortFiles {
                cert,
                key,
                client_ca: self.client_ca_file,
            });
        }
        if let (Some(cert), Some(key), Some(ca)) =
            (self.peer_cert_file, self.peer_key_file, self.peer_ca_file)
        {
            config.peer_tls = Some(kvnode::tls::PeerFiles { cert, key, ca });
        }
        config.auth_file = self.auth_file;
        config.listen_http = self.listen_client;
        config.listen_raft = self.listen_peer;
        config.max_client_requests = self.max_client_requests;
        config.header_timeout = Duration::from_millis(self.header_timeout_ms);
        config.body_timeout = Duration::from_millis(self.body_timeout_ms);
        config.max_snapshot_bytes = self.max_snapshot_bytes;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown requested");
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // A subcommand beside the assignment's positional form, which clap cannot tell apart
    // from a port number.
    if args.get(1).is_some_and(|a| a == "certs") {
        return certs(args.into_iter().skip(1).collect());
    }
    let cli = Cli::parse_from(args);
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvnode: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvnode: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let span = tracing::info_span!("node", id = config.id);
    let result = runtime.block_on(kvnode::run(config, shutdown_signal(), |_| {}).instrument(span));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvnode: {e}");
            ExitCode::from(1)
        }
    }
}
