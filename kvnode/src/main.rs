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
/// Three ways to start a node:
///
///   kvnode 8080 127.0.0.1:6000 127.0.0.1:6001 127.0.0.1:6002
///       this node's HTTP port, its Raft address, the other nodes' Raft addresses
///
///   kvnode --cluster cluster.toml --id 0 [--data-dir DIR]
///       node 0 of the cluster described by a cluster file
///
///   kvnode --join 127.0.0.1:8080 --id 3 --http 127.0.0.1:8083 --raft 127.0.0.1:6003
///       a new node that joins a running cluster as a learner (any member's client address;
///       promote it with `kvctl member promote 3` once it has caught up)
///
/// And two subcommands:
///
///   kvnode restore FILE --cluster cluster.toml --id 0 --data-dir DIR
///       make a node of a new cluster from a backup (see kvnode restore --help)
///
///   kvnode certs --cluster cluster.toml --out DIR
///       write a development CA and every node's certificates, and DIR/cluster.toml that uses
///       them (see README, "Running it securely")
///
/// A new cluster forms by itself once a majority of the listed nodes is started; the others
/// are admitted when they start. A node that lost its data rejoins by itself (as a learner
/// first, promoted back once it has caught up). When a majority is gone for good,
/// --force-new-cluster restarts a survivor as a one-member cluster with its data. Logs go to
/// stderr, as text or JSON lines (--log-format); RUST_LOG overrides the default level (info).
/// Exit codes: 0 clean shutdown, 1 failure, 2 bad usage.
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

    /// Cluster file (TOML, one [[node]] table per node with id, http, raft): where a new
    /// cluster starts and where this node first looks for the running one.
    #[arg(long, value_name = "FILE", requires = "id", conflicts_with = "join")]
    cluster: Option<PathBuf>,

    /// This node's id (in the cluster file, or a new id with --join).
    #[arg(long, value_name = "N")]
    id: Option<u64>,

    /// Join a running cluster: client addresses of any of its members, comma-separated. The
    /// node is added as a learner and catches up. A bare host:port is asked over HTTPS when
    /// this node has peer certificates, else over HTTP; http:// or https:// says which.
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',', requires_all = ["id", "http", "raft"])]
    join: Vec<String>,

    /// With --join, when the cluster's client ports check tokens: a file holding a token
    /// (role read or more) to ask them who the members are.
    #[arg(long, value_name = "FILE", requires = "join", help_heading = "Security")]
    join_token_file: Option<PathBuf>,

    /// This node's client address, host:port (with --join).
    #[arg(long, value_name = "HOST:PORT", requires = "join")]
    http: Option<String>,

    /// This node's peer (Raft) address, host:port (with --join).
    #[arg(long, value_name = "HOST:PORT", requires = "join")]
    raft: Option<String>,

    /// Disaster recovery when a majority of the cluster is gone for good: restart this node
    /// as the only member of a NEW cluster (new cluster id) with all its data, committing
    /// whatever its log holds. The old members are not part of it. Remove the flag after.
    #[arg(long)]
    force_new_cluster: bool,

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

    /// Most changes the node keeps in memory for watchers (GET /watch); a watch that resumes
    /// from before them is answered 410 compacted.
    #[arg(long, value_name = "N", default_value_t = kvnode::history::HistoryLimits::default().changes)]
    watch_history_changes: usize,

    /// Most bytes (keys plus values as JSON) of changes kept for watchers.
    #[arg(long, value_name = "BYTES", default_value_t = kvnode::history::HistoryLimits::default().bytes)]
    watch_history_bytes: usize,

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
    /// Log lines as text for people, or as JSON objects (one per line) for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// `--log-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the span fields (node, request id) inside.
    Json,
}

/// Build the data directory of one node of a NEW cluster that starts with the keys and values
/// of a backup (a file written by `kvctl snapshot save`), as `etcdctl snapshot restore` does.
///
/// Run it once per node of the new cluster, each with the same backup and cluster file, then
/// start every node as usual (kvnode --cluster FILE --id N --data-dir DIR). The new cluster
/// holds the backup's data at the backup's log index, and its members are those of the cluster
/// file. The data directory must not exist or be empty.
#[derive(Parser, Debug)]
#[command(name = "kvnode restore", version, verbatim_doc_comment)]
struct RestoreCli {
    /// The backup: a snapshot file from `kvctl snapshot save`.
    #[arg(value_name = "FILE")]
    backup: PathBuf,

    /// The NEW cluster's file (TOML, one [[node]] table per node with id, http, raft).
    #[arg(long, value_name = "FILE")]
    cluster: PathBuf,

    /// The id of the node whose data directory to build.
    #[arg(long, value_name = "N")]
    id: u64,

    /// Where to build it (new or empty).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
}

/// kvnode certs: write a development CA and certificates for every node of a cluster file.
#[derive(Parser, Debug)]
#[command(name = "kvnode certs")]
struct CertsCli {
    /// The cluster file whose nodes get certificates.
    #[arg(long, value_name = "FILE", required_unless_present = "add_node")]
    cluster: Option<PathBuf>,

    /// Where to write them (created; an existing CA there is never overwritten).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Instead: certificates for one more node (to start with --join), or new ones for a node
    /// (read on SIGHUP), signed by the CA that `kvnode certs` wrote into --out before.
    #[arg(long, value_name = "ID", conflicts_with = "cluster", requires_all = ["http", "raft"])]
    add_node: Option<u64>,

    /// With --add-node: the node's client address, host:port.
    #[arg(long, value_name = "HOST:PORT", requires = "add_node")]
    http: Option<String>,

    /// With --add-node: the node's peer address, host:port.
    #[arg(long, value_name = "HOST:PORT", requires = "add_node")]
    raft: Option<String>,
}

/// `kvnode certs ...`: exit 0 when written, 1 when not, 2 for bad usage.
fn certs(args: Vec<std::ffi::OsString>) -> ExitCode {
    let cli = CertsCli::parse_from(args);
    if let (Some(id), Some(http), Some(raft)) = (cli.add_node, &cli.http, &cli.raft) {
        let node = kvapi::NodeAddr {
            id,
            http: http.clone(),
            raft: raft.clone(),
        };
        return match kvnode::certs::add_node(&cli.out, &node) {
            Ok(files) => {
                for f in &files {
                    println!("wrote {}", f.display());
                }
                let dir = cli.out.display();
                println!(
                    "\nsigned by {dir}/ca.pem. A new node joins with: kvnode --join ADDR --id {id} \
                     --http {http} --raft {raft} --cert-file {dir}/node{id}.pem --key-file {dir}/node{id}.key \
                     --peer-cert-file {dir}/node{id}-peer.pem --peer-key-file {dir}/node{id}-peer.key \
                     --peer-ca-file {dir}/ca.pem (and --join-token-file FILE when the cluster checks tokens); \
                     a running node whose certificates these renew reads them on SIGHUP"
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kvnode certs: {e}");
                ExitCode::from(1)
            }
        };
    }
    let Some(path) = &cli.cluster else {
        eprintln!("kvnode certs: give --cluster FILE, or --add-node ID --http HOST:PORT --raft HOST:PORT");
        return ExitCode::from(2);
    };
    let cluster = match ClusterFile::load(path) {
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
        let mut config = match (self.http_port, &self.cluster, self.id, self.join.is_empty()) {
            (Some(port), None, None, true) => {
                let raft = self.raft_addr.as_deref().ok_or("missing RAFT_ADDR")?;
                NodeConfig::from_positional(port, raft, &self.peers).map_err(|e| e.to_string())?
            }
            (None, Some(path), Some(id), true) => {
                let file = ClusterFile::load(path).map_err(|e| e.to_string())?;
                NodeConfig::from_cluster_file(&file, id).map_err(|e| e.to_string())?
            }
            (None, None, Some(id), false) => {
                let http = self.http.as_deref().ok_or("--join needs --http")?;
                let raft = self.raft.as_deref().ok_or("--join needs --raft")?;
                NodeConfig::for_join(id, http, raft, &self.join).map_err(|e| e.to_string())?
            }
            _ => {
                return Err(
                    "give HTTP_PORT RAFT_ADDR [PEERS...], or --cluster FILE --id N, or \
                     --join ADDR --id N --http HOST:PORT --raft HOST:PORT (see --help)"
                        .into(),
                )
            }
        };
        config.force_new_cluster = self.force_new_cluster;
        config.join_token_file = self.join_token_file;
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
        config.watch_history = kvnode::history::HistoryLimits {
            changes: self.watch_history_changes,
            bytes: self.watch_history_bytes,
        };
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
    // Subcommands beside the assignment's positional form, which clap cannot tell apart
    // from a port number.
    if args.get(1).is_some_and(|a| a == "restore") {
        return restore_main(&args[1..]);
    }
    if args.get(1).is_some_and(|a| a == "certs") {
        return certs(args.into_iter().skip(1).collect());
    }
    let cli = Cli::parse_from(&args);
    let log_format = cli.log_format;
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvnode: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(log_format, "info,openraft=warn");
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

/// Logs on stderr, in the chosen format, of `default` levels. `RUST_LOG`, when set, chooses
/// what is logged instead.
fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
    }
}

/// `kvnode restore`: exit 0 with the directory built, 1 when it could not be, 2 for a bad
/// command line.
fn restore_main(args: &[std::ffi::OsString]) -> ExitCode {
    let cli = RestoreCli::parse_from(args);
    let file = match ClusterFile::load(&cli.cluster) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("kvnode restore: {e}");
            return ExitCode::from(2);
        }
    };
    let mut config = match NodeConfig::from_cluster_file(&file, cli.id) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvnode restore: {e}");
            return ExitCode::from(2);
        }
    };
    config.data_dir = cli.data_dir.clone();
    init_logging(LogFormat::Text, "warn");
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvnode restore: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(kvnode::restore::restore(&cli.backup, &file, &config)) {
        Ok(r) => {
            let members: Vec<String> = r.members.iter().map(u64::to_string).collect();
            println!(
                "restored {} keys at index {} into {} as node {} of new cluster {} (nodes {})",
                r.keys,
                r.index,
                cli.data_dir.display(),
                cli.id,
                r.cluster,
                members.join(", ")
            );
            println!(
                "start it with: kvnode --cluster {} --id {} --data-dir {}",
                cli.cluster.display(),
                cli.id,
                cli.data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kvnode restore: {e}");
            ExitCode::from(1)
        }
    }
}
