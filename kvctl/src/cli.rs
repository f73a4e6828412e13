//! The command line: clap's types, and their conversion into a plain, validated [`Config`].
//!
//! clap checks the grammar; [`Config::from_cli`] checks the meaning: that a cluster can be
//! found, that a value could be read, that durations make sense. Every problem found here is a
//! usage error (exit code 2), reported before any network traffic, so `main` and the commands
//! never see a half-valid configuration.
//!
//! Where the cluster is: `--endpoints` when given, else `--cluster FILE`, else the file named
//! by `$KVCTL_CLUSTER`, else `./cluster.toml`, else the local default cluster that
//! `bin/cluster.sh` starts (`127.0.0.1:8080` to `8082`), as etcdctl falls back to its default
//! endpoint. A file that was named but cannot be read is an error; only the implicit
//! `./cluster.toml` may be absent. [`Config::source`] says which applied (`-v` prints it). The
//! environment variable is read here rather than by clap so that `--endpoints` can override it
//! without clap calling the two a conflict.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kvapi::{ClusterFile, Consistency, Precondition, WriteKind};
use kvctl::client::WRITE_WINDOW;
use kvctl::endpoint::Endpoint;
use kvctl::error::format_duration;
use kvctl::output::Format;
use kvctl::security::{Security, Token};
use kvctl::value::{parse_value, Source};
use kvctl::watch::WatchTarget;
use serde_json::Value;

/// Environment variable naming the default cluster file.
pub const CLUSTER_ENV: &str = "KVCTL_CLUSTER";
/// Environment variable holding the bearer token.
pub const TOKEN_ENV: &str = "KVCTL_TOKEN";

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  key not found
  2  usage error (bad arguments, unreadable or malformed cluster file, bad input)
  3  cluster unavailable: no leader or no quorum within the timeout
  4  outcome unknown: a write may or may not have been applied
  5  other errors (including input the server rejected, such as a type conflict)
  6  condition not met: --if-index or --if-absent did not hold; nothing was changed

With -o json an error is one JSON object on stderr, {\"error\":{\"code\":...,\"message\":...}}, with
code usage, key_not_found, unavailable, outcome_unknown (plus \"idempotency_key\"),
precondition_failed (plus \"exists\" and \"mod_index\"), the server's code for a refused
request (type_conflict, ...), or other.

Values: VALUE is stored as JSON when it is valid JSON (42, true, '[\"cat\",\"dog\"]',
'{\"a\":1}') and as a string otherwise (\"Kyle Chard\"). Text that starts like JSON ([, { or \")
must be valid JSON. --string stores the text as a string.

Cluster: --endpoints, else --cluster FILE, else $KVCTL_CLUSTER, else ./cluster.toml, else the
local cluster of bin/cluster.sh (127.0.0.1:8080-8082).

Security: https:// endpoints (or https:// addresses in the cluster file, or --cacert) speak TLS;
--cacert, --cert and --key, else the cluster file's [client] table. The token: --token, else
$KVCTL_TOKEN, else the file named by token_file in [client]. kvctl never prints the token.";

/// The operator's client for a kvnode cluster.
#[derive(Debug, Parser)]
#[command(
    name = "kvctl",
    version,
    about = "Operator's client for a kvnode cluster",
    after_help = EXIT_CODES,
    arg_required_else_help = true,
    propagate_version = true
)]
pub struct Cli {
    /// Cluster file listing every node [env: KVCTL_CLUSTER] [default: ./cluster.toml]
    #[arg(long, value_name = "FILE", global = true)]
    pub cluster: Option<PathBuf>,

    /// Comma-separated node addresses (host:port or http://host:port) instead of a cluster file
    #[arg(long, value_name = "URL,...", global = true, conflicts_with = "cluster")]
    pub endpoints: Option<String>,

    /// Bound on the whole operation, retries included (e.g. 10s, 500ms, 2m; bare numbers are
    /// seconds; at most 9m for a write)
    #[arg(long, value_name = "DURATION", default_value = "10s", global = true, value_parser = parse_duration)]
    pub timeout: Duration,

    /// Output format: table for people, json for programs, plain for shell scripts
    #[arg(short, long, value_enum, default_value_t = OutputArg::Table, global = true)]
    pub output: OutputArg,

    /// How reads are served: linearizable (confirmed by a quorum) or stale (any node's replica)
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable, global = true)]
    pub consistency: ConsistencyArg,

    /// Print diagnostics on stderr (-vv for more); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// CA certificate (PEM) that signed the nodes' certificates; means TLS
    #[arg(long, value_name = "FILE", global = true, help_heading = "Security")]
    pub cacert: Option<PathBuf>,

    /// Client certificate (PEM), for nodes that require one
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        requires = "tls_key",
        help_heading = "Security"
    )]
    pub cert: Option<PathBuf>,

    /// The private key (PEM) of --cert
    // Its id is not `key`: a global argument shares its id space with every subcommand's, and
    // `get KEY` has one called `key`.
    #[arg(
        id = "tls_key",
        long = "key",
        value_name = "FILE",
        global = true,
        requires = "cert",
        help_heading = "Security"
    )]
    pub key: Option<PathBuf>,

    /// Bearer token [env: KVCTL_TOKEN]; other users can see a command line, so prefer the
    /// variable or the cluster file's token_file
    #[arg(long, value_name = "TOKEN", global = true, help_heading = "Security")]
    pub token: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// The grammar of a line typed into `kvctl repl`: the one-shot grammar without what does
/// nothing there. `--cluster` and `--endpoints` are hidden (still accepted, so that
/// [`Config::for_session`] can say why they cannot apply) and `--version` is gone, so neither
/// `help put` nor Tab completion offers them.
pub fn repl_grammar() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
        .disable_version_flag(true)
        .mut_subcommands(|sub| sub.disable_version_flag(true))
        .mut_arg("cluster", |a| a.hide(true))
        .mut_arg("endpoints", |a| a.hide(true))
        .mut_arg("cacert", |a| a.hide(true))
        .mut_arg("cert", |a| a.hide(true))
        .mut_arg("tls_key", |a| a.hide(true))
        .mut_arg("token", |a| a.hide(true))
}

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputArg {
    /// Aligned tables and summaries.
    Table,
    /// One JSON document (indented on a terminal).
    Json,
    /// Bare values, one per line.
    Plain,
}

/// `--consistency` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// Confirmed with a quorum: never older than an acknowledged write.
    Linearizable,
    /// Served from one replica; may be behind, but works without a quorum.
    Stale,
}

/// The value of a write, as given on the command line.
#[derive(Debug, clap::Args)]
pub struct ValueArgs {
    /// The key
    pub key: String,
    /// The value: JSON if it parses as JSON, else a string; `-` reads it from stdin
    #[arg(
        required_unless_present = "file",
        conflicts_with = "file",
        allow_hyphen_values = true
    )]
    pub value: Option<String>,
    /// Store the value as a string even when it is valid JSON
    #[arg(long)]
    pub string: bool,
    /// Read the value from a file
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub condition: ConditionArgs,
}

/// The condition of a conditional write.
#[derive(Debug, clap::Args)]
pub struct ConditionArgs {
    /// Only if the key was last changed at index N (its mod_index, from `-o json get`): a
    /// compare-and-swap; exit code 6 when it was changed since
    #[arg(long, value_name = "N", conflicts_with = "if_absent")]
    pub if_index: Option<u64>,
    /// Only if the key does not exist; exit code 6 when it does
    #[arg(long)]
    pub if_absent: bool,
}

impl ConditionArgs {
    fn precondition(&self) -> Option<Precondition> {
        match (self.if_index, self.if_absent) {
            (Some(index), _) => Some(Precondition::ModIndex(index)),
            (None, true) => Some(Precondition::Absent),
            (None, false) => None,
        }
    }
}

/// Arguments of `kvctl bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Concurrent clients, each with one request in flight
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub clients: u64,
    /// How long to generate load (e.g. 10s, 1m)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// put, append, get, or mixed:READ_PERCENT (e.g. mixed:90)
    #[arg(long, default_value = "put")]
    pub workload: kvctl::bench::Workload,
    /// Number of distinct keys
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub keys: u64,
    /// Bytes per written value
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_048_000))]
    pub value_size: u64,
    /// leader: through the client library to the leader; all: straight to every node in turn
    #[arg(long, value_enum, default_value = "leader")]
    pub target: TargetArg,
    /// Seed of the random choices (same seed, same sequence of operations per client)
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write a per-second CSV timeline (second,ok,errors,p50_ms,p99_ms) to this file
    #[arg(long, value_name = "FILE")]
    pub timeline: Option<PathBuf>,
    /// Write every operation (start_unix_us,end_unix_us,outcome) as CSV to this file
    #[arg(long, value_name = "FILE")]
    pub ops_log: Option<PathBuf>,
    /// The store to load: kv, or etcd 3.4 through its JSON gateway (--endpoints are etcd's
    /// client URLs; put, get and mixed workloads)
    #[arg(long, value_enum, default_value = "kv")]
    pub system: SystemArg,
}

/// `--system` of `kvctl bench`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SystemArg {
    /// A kvnode cluster.
    Kv,
    /// An etcd cluster, through its JSON gateway.
    Etcd,
}

/// `--target` of `kvctl bench`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TargetArg {
    /// The leader, found and followed by the client library.
    Leader,
    /// Every node in turn; followers forward writes.
    All,
}

impl BenchArgs {
    fn into_spec(self, consistency: ConsistencyArg) -> Result<kvctl::bench::BenchSpec, UsageError> {
        if self.duration < Duration::from_millis(100) {
            return Err(UsageError("--duration must be at least 100ms".into()));
        }
        let spec = kvctl::bench::BenchSpec {
            clients: self.clients as usize,
            duration: self.duration,
            workload: self.workload,
            keys: self.keys as usize,
            value_size: self.value_size as usize,
            consistency: match consistency {
                ConsistencyArg::Linearizable => Consistency::Linearizable,
                ConsistencyArg::Stale => Consistency::Stale,
            },
            target: match self.target {
                TargetArg::Leader => kvctl::bench::Target::Leader,
                TargetArg::All => kvctl::bench::Target::All,
            },
            seed: self.seed,
            timeline: self.timeline,
            ops_log: self.ops_log,
            system: match self.system {
                SystemArg::Kv => kvctl::bench::System::Kv,
                SystemArg::Etcd => kvctl::bench::System::Etcd,
            },
            op_timeout: Duration::from_secs(10),
            // Filled in once the cluster's security is known (Config::from_env).
            security: Security::default(),
        };
        spec.check().map_err(UsageError)?;
        Ok(spec)
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set KEY to VALUE
    Put(ValueArgs),
    /// Append VALUE to the list at KEY (created when absent), or to the string at KEY
    Append(ValueArgs),
    /// Print the value of KEY as JSON (-o json: with its metadata)
    Get {
        /// The key
        key: String,
    },
    /// Delete KEY
    #[command(visible_alias = "del")]
    Delete {
        /// The key
        key: String,
        /// Only if the key was last changed at index N (its mod_index); exit code 6 when it
        /// was changed since
        #[arg(long, value_name = "N")]
        if_index: Option<u64>,
    },
    /// Print every change to KEY (or to the keys under --prefix) as it is applied, until
    /// Ctrl-C; follows the cluster when a node dies, with no gap and no duplicate
    Watch {
        /// The key
        #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
        key: Option<String>,
        /// Watch every key starting with this instead (an empty prefix: every key)
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<String>,
        /// Start after this log index (e.g. a key's mod_index from `-o json get`), so that no
        /// change after it is missed; default: from now
        #[arg(long, value_name = "INDEX")]
        after: Option<u64>,
        /// Stop after this many changes
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// List keys starting with PREFIX, sorted
    #[command(visible_alias = "ls")]
    Keys {
        /// Only keys starting with this
        #[arg(default_value = "")]
        prefix: String,
        /// At most this many keys (server default 1000)
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=kvapi::MAX_KEYS_LIMIT as u64))]
        limit: Option<u64>,
    },
    /// Show every node of the cluster in one table, with leader, lag and quorum
    Status {
        /// Redraw every SECS seconds (default 2) until Ctrl-C, marking leader and term changes
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2", value_parser = parse_duration)]
        watch: Option<Duration>,
    },
    /// Print the current leader, or hand leadership over (`leader transfer [ID]`)
    Leader {
        #[command(subcommand)]
        action: Option<LeaderCommand>,
    },
    /// List the members, or change them: add a learner, promote, remove, update addresses
    Member {
        #[command(subcommand)]
        action: MemberCommand,
    },
    /// Generate load and report throughput and latency percentiles
    Bench(BenchArgs),
    /// Back up the cluster's data to a file, or check such a file
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Start an interactive shell: these commands with history, completion of commands and
    /// keys, and a prompt that shows the leader (reads a script when stdin is not a terminal)
    Repl,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

/// `kvctl snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a consistent copy of every key and value to FILE (written atomically: FILE appears
    /// only once complete and verified). Restore it with `kvnode restore`.
    Save {
        /// Where to write the snapshot
        file: PathBuf,
    },
    /// Print a snapshot file's index, key count, size and checksum, and verify it
    Status {
        /// The snapshot file
        file: PathBuf,
    },
}

/// `kvctl leader ...`.
#[derive(Debug, Subcommand)]
pub enum LeaderCommand {
    /// Hand leadership to voter ID, or to the most up-to-date other voter
    Transfer {
        /// The voter to lead next
        id: Option<u64>,
    },
}

/// `kvctl member ...`.
#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Every member: id, addresses, voter or learner, how far it trails the leader
    #[command(visible_alias = "ls")]
    List,
    /// Add node ID as a learner: it receives the log but does not vote (start it with
    /// `kvnode --join`, or it joins by itself when started so)
    Add {
        /// The new node's id
        id: u64,
        /// Its client address, host:port
        #[arg(long, value_name = "HOST:PORT")]
        http: String,
        /// Its peer (Raft) address, host:port
        #[arg(long, value_name = "HOST:PORT")]
        raft: String,
    },
    /// Make learner ID a voter (refused while it is behind the leader)
    Promote {
        /// The learner
        id: u64,
    },
    /// Remove member ID (the leader hands leadership over first when it is ID)
    #[command(visible_alias = "rm")]
    Remove {
        /// The member
        id: u64,
    },
    /// Change the addresses of member ID
    Update {
        /// The member
        id: u64,
        /// Its client address, host:port
        #[arg(long, value_name = "HOST:PORT")]
        http: String,
        /// Its peer (Raft) address, host:port
        #[arg(long, value_name = "HOST:PORT")]
        raft: String,
    },
}

/// A membership action, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberAction {
    /// List.
    List,
    /// Add a learner.
    Add {
        /// Id.
        id: u64,
        /// Client address.
        http: String,
        /// Peer address.
        raft: String,
    },
    /// Promote a learner.
    Promote(u64),
    /// Remove a member.
    Remove(u64),
    /// Change addresses.
    Update {
        /// Id.
        id: u64,
        /// Client address.
        http: String,
        /// Peer address.
        raft: String,
    },
}

/// What to do, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// PUT or APPEND.
    Write {
        /// Which.
        kind: WriteKind,
        /// The key.
        key: String,
        /// The value.
        value: Value,
        /// Its condition, if any.
        precondition: Option<Precondition>,
    },
    /// DELETE.
    Delete {
        /// The key.
        key: String,
        /// Its condition, if any.
        precondition: Option<Precondition>,
    },
    /// Follow the changes to keys.
    Watch {
        /// What to watch.
        target: WatchTarget,
        /// Start after this index.
        after: Option<u64>,
        /// Stop after this many changes.
        count: Option<u64>,
    },
    /// GET one key.
    Get {
        /// The key.
        key: String,
    },
    /// List keys.
    Keys {
        /// Prefix, possibly empty.
        prefix: String,
        /// Limit, if given.
        limit: Option<usize>,
    },
    /// The status table, once or repeatedly.
    Status {
        /// Refresh interval for `--watch`.
        watch: Option<Duration>,
    },
    /// Print the leader.
    Leader,
    /// Hand leadership over.
    LeaderTransfer(Option<u64>),
    /// A membership request.
    Member(MemberAction),
    /// Run a benchmark.
    Bench(kvctl::bench::BenchSpec),
    /// Print a completion script.
    Completions(clap_complete::Shell),
    /// Save a snapshot of the cluster's data to a file.
    SnapshotSave {
        /// The file.
        file: PathBuf,
    },
    /// Describe and verify a snapshot file.
    SnapshotStatus {
        /// The file.
        file: PathBuf,
    },
    /// Start the interactive shell.
    Repl,
}

/// Where the nodes of a run came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterSource {
    /// `--endpoints`.
    Endpoints,
    /// `--cluster FILE`.
    File(PathBuf),
    /// The file named by `$KVCTL_CLUSTER`.
    EnvFile(PathBuf),
    /// `./cluster.toml`.
    DefaultFile,
    /// None given or found: the local cluster of `bin/cluster.sh`.
    LocalDefault,
    /// The REPL session's nodes.
    Session,
    /// The command needs no cluster.
    NotNeeded,
}

impl ClusterSource {
    /// One sentence for `-v`.
    pub fn describe(&self, endpoints: &[Endpoint]) -> String {
        let nodes = endpoints
            .iter()
            .map(|e| e.address.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        match self {
            ClusterSource::Endpoints => format!("cluster from --endpoints: {nodes}"),
            ClusterSource::File(path) => format!("cluster from --cluster {}: {nodes}", path.display()),
            ClusterSource::EnvFile(path) => {
                format!("cluster from ${CLUSTER_ENV}={}: {nodes}", path.display())
            }
            ClusterSource::DefaultFile => format!("cluster from ./cluster.toml: {nodes}"),
            ClusterSource::LocalDefault => format!(
                "no cluster file given (--cluster, ${CLUSTER_ENV}) or found (./cluster.toml): \
                 using the local default cluster of bin/cluster.sh, {nodes}"
            ),
            ClusterSource::Session => format!("cluster of the REPL session: {nodes}"),
            ClusterSource::NotNeeded => "no cluster needed".into(),
        }
    }
}

/// The validated configuration of one kvctl run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The nodes; empty only for commands that do not talk to the cluster.
    pub endpoints: Vec<Endpoint>,
    /// Where they came from.
    pub source: ClusterSource,
    /// Bound on the whole operation.
    pub timeout: Duration,
    /// Output format.
    pub format: Format,
    /// Read consistency.
    pub consistency: Consistency,
    /// `-v` count.
    pub verbosity: u8,
    /// What to do.
    pub action: Action,
    /// TLS and the token.
    pub security: Security,
}

/// What the cluster file says about security (nothing, for `--endpoints`).
#[derive(Debug, Clone, Default)]
pub struct FileSecurity {
    /// The endpoints speak TLS (`https://`).
    pub https: bool,
    /// The `[client]` table.
    pub client: Option<kvapi::ClientSecurity>,
}

/// A usage problem found while validating the command line; exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl Config {
    /// Validate the parsed command line. `stdin` is read only when the value is `-`;
    /// `env_cluster` is the value of `$KVCTL_CLUSTER`.
    #[cfg(test)]
    pub fn from_cli(
        cli: Cli,
        stdin: &mut dyn Read,
        env_cluster: Option<PathBuf>,
    ) -> Result<Config, UsageError> {
        Config::from_env(cli, stdin, env_cluster, None)
    }

    /// [`Config::from_cli`] with `$KVCTL_TOKEN` too.
    pub fn from_env(
        cli: Cli,
        stdin: &mut dyn Read,
        env_cluster: Option<PathBuf>,
        env_token: Option<String>,
    ) -> Result<Config, UsageError> {
        let flags = SecurityFlags::take(&cli);
        let mut found = None;
        let mut config = Config::build(cli, stdin, |list, cluster| {
            let (endpoints, source, file) = endpoints(list, cluster, env_cluster, |path| path.exists())?;
            found = Some(file);
            Ok((endpoints, source))
        })?;
        if let Some(file) = found {
            config.security = flags.resolve(file, env_token)?;
        }
        if let Action::Bench(spec) = &mut config.action {
            spec.security = config.security.clone();
        }
        Ok(config)
    }

    /// Validate one line typed into `kvctl repl`: the same grammar and checks as
    /// [`Config::from_cli`], but the nodes are the session's, found once when it started, so
    /// a line never rereads the cluster file and cannot point elsewhere.
    pub fn for_session(
        cli: Cli,
        stdin: &mut dyn Read,
        session: &[Endpoint],
        security: &Security,
    ) -> Result<Config, UsageError> {
        if cli.cluster.is_some() || cli.endpoints.is_some() {
            return Err(UsageError(
                "--cluster and --endpoints are chosen when the REPL starts; restart it to change them".into(),
            ));
        }
        if cli.cacert.is_some() || cli.cert.is_some() || cli.key.is_some() || cli.token.is_some() {
            return Err(UsageError(
                "--cacert, --cert, --key and --token are chosen when the REPL starts; restart it to change them"
                    .into(),
            ));
        }
        let mut config = Config::build(cli, stdin, |_, _| Ok((session.to_vec(), ClusterSource::Session)))?;
        config.security = security.clone();
        if let Action::Bench(spec) = &mut config.action {
            spec.security = config.security.clone();
        }
        Ok(config)
    }

    /// The checks shared by one-shot commands and REPL lines; `nodes` finds the cluster from
    /// `--endpoints` and `--cluster`.
    fn build(
        cli: Cli,
        stdin: &mut dyn Read,
        nodes: impl FnOnce(Option<&str>, Option<PathBuf>) -> Result<(Vec<Endpoint>, ClusterSource), UsageError>,
    ) -> Result<Config, UsageError> {
        let action = match cli.command {
            Command::Put(args) => write_action(WriteKind::Put, args, stdin)?,
            Command::Append(args) => write_action(WriteKind::Append, args, stdin)?,
            Command::Get { key } => Action::Get {
                key: checked_key(key)?,
            },
            Command::Delete { key, if_index } => Action::Delete {
                key: checked_key(key)?,
                precondition: if_index.map(Precondition::ModIndex),
            },
            Command::Watch {
                key,
                prefix,
                after,
                count,
            } => Action::Watch {
                target: match (key, prefix) {
                    (Some(key), None) => WatchTarget::Key(checked_key(key)?),
                    (None, Some(prefix)) if prefix.len() > kvapi::MAX_KEY_BYTES => {
                        return Err(UsageError(format!(
                            "the prefix is {} bytes long; the limit is {}",
                            prefix.len(),
                            kvapi::MAX_KEY_BYTES
                        )))
                    }
                    (None, Some(prefix)) => WatchTarget::Prefix(prefix),
                    // clap's required_unless_present and conflicts_with rule these out.
                    _ => return Err(UsageError("give a KEY or --prefix, not both".into())),
                },
                after,
                count,
            },
            Command::Keys { prefix, limit } => Action::Keys {
                prefix,
                limit: limit.map(|l| l as usize),
            },
            Command::Status { watch } => {
                if let Some(every) = watch {
                    if every < Duration::from_millis(100) {
                        return Err(UsageError("--watch interval must be at least 0.1 seconds".into()));
                    }
                }
                Action::Status { watch }
            }
            Command::Leader { action: None } => Action::Leader,
            Command::Leader {
                action: Some(LeaderCommand::Transfer { id }),
            } => Action::LeaderTransfer(id),
            Command::Member { action } => Action::Member(member_action(action)?),
            Command::Completions { shell } => Action::Completions(shell),
            Command::Repl => Action::Repl,
            Command::Bench(args) => Action::Bench(args.into_spec(cli.consistency)?),
            Command::Snapshot(SnapshotCommand::Save { file }) => Action::SnapshotSave { file },
            Command::Snapshot(SnapshotCommand::Status { file }) => Action::SnapshotStatus { file },
        };
        check_write_timeout(&action, cli.timeout)?;
        let (endpoints, source) = if matches!(action, Action::Completions(_) | Action::SnapshotStatus { .. })
        {
            (Vec::new(), ClusterSource::NotNeeded)
        } else {
            nodes(cli.endpoints.as_deref(), cli.cluster)?
        };
        Ok(Config {
            endpoints,
            source,
            timeout: cli.timeout,
            format: match cli.output {
                OutputArg::Table => Format::Table,
                OutputArg::Json => Format::Json,
                OutputArg::Plain => Format::Plain,
            },
            consistency: match cli.consistency {
                ConsistencyArg::Linearizable => Consistency::Linearizable,
                ConsistencyArg::Stale => Consistency::Stale,
            },
            verbosity: cli.verbose,
            action,
            security: Security::default(),
        })
    }
}

/// The security flags of a command line, taken before the rest is consumed.
struct SecurityFlags {
    cacert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    token: Option<String>,
}

impl SecurityFlags {
    fn take(cli: &Cli) -> SecurityFlags {
        SecurityFlags {
            cacert: cli.cacert.clone(),
            cert: cli.cert.clone(),
            key: cli.key.clone(),
            token: cli.token.clone(),
        }
    }

    /// Flags first, then the environment, then the cluster file.
    fn resolve(self, file: FileSecurity, env_token: Option<String>) -> Result<Security, UsageError> {
        let client = file.client.unwrap_or_default();
        let usage = |e: kvctl::security::SecurityError| UsageError(e.0);
        let token = match (
            self.token,
            env_token.filter(|t| !t.trim().is_empty()),
            &client.token_file,
        ) {
            (Some(t), _, _) => Some(Token::new(&t).map_err(|e| UsageError(format!("--token: {}", e.0)))?),
            (None, Some(t), _) => {
                Some(Token::new(&t).map_err(|e| UsageError(format!("${TOKEN_ENV}: {}", e.0)))?)
            }
            (None, None, Some(path)) => Some(Token::from_file(path).map_err(usage)?),
            (None, None, None) => None,
        };
        let (cert, key) = match (self.cert, self.key) {
            (Some(c), Some(k)) => (Some(c), Some(k)),
            _ => (client.cert, client.key),
        };
        let cacert = self.cacert.or(client.cacert);
        let security = Security {
            https: file.https || cacert.is_some(),
            cacert,
            cert,
            key,
            token,
        };
        // Find a bad certificate file now, as a usage error, not on the first request.
        security.tls_config().map_err(usage)?;
        Ok(security)
    }
}

/// Refuse a `--timeout` that would let a write be retried after the cluster may have forgotten
/// its idempotency key: such a late retry could be applied a second time.
pub fn check_write_timeout(action: &Action, timeout: Duration) -> Result<(), UsageError> {
    if matches!(action, Action::Write { .. } | Action::Delete { .. }) && timeout > WRITE_WINDOW {
        return Err(UsageError(format!(
            "--timeout {} is too long for a write: the cluster remembers a write's idempotency \
             key for {}, and kvctl retries a write only while it surely does; give --timeout {} \
             or less",
            format_duration(timeout),
            format_duration(kvapi::IDEMPOTENCY_RETENTION),
            format_duration(WRITE_WINDOW)
        )));
    }
    Ok(())
}

/// Find the nodes: `--endpoints`, else `--cluster`, else `$KVCTL_CLUSTER`, else
/// `./cluster.toml` when it `exists`, else the local default cluster.
fn endpoints(
    list: Option<&str>,
    cluster: Option<PathBuf>,
    env_cluster: Option<PathBuf>,
    exists: impl Fn(&std::path::Path) -> bool,
) -> Result<(Vec<Endpoint>, ClusterSource, FileSecurity), UsageError> {
    if let Some(list) = list {
        let (endpoints, https) =
            Endpoint::parse_list_with_scheme(list).map_err(|e| UsageError(e.to_string()))?;
        let security = FileSecurity { https, client: None };
        return Ok((endpoints, ClusterSource::Endpoints, security));
    }
    let (path, source, origin) = match (cluster, env_cluster) {
        (Some(path), _) => (path.clone(), ClusterSource::File(path), ""),
        (None, Some(path)) => (
            path.clone(),
            ClusterSource::EnvFile(path),
            " (from $KVCTL_CLUSTER)",
        ),
        (None, None) => {
            let path = PathBuf::from("cluster.toml");
            if !exists(&path) {
                return Ok((
                    Endpoint::local_default(),
                    ClusterSource::LocalDefault,
                    FileSecurity::default(),
                ));
            }
            (path, ClusterSource::DefaultFile, "")
        }
    };
    match ClusterFile::load(&path) {
        Ok(file) => {
            let security = FileSecurity {
                https: file.client_tls,
                client: file.client.clone(),
            };
            Ok((Endpoint::from_cluster_file(&file), source, security))
        }
        Err(kvapi::ClusterFileError::Read { path, source }) => Err(UsageError(format!(
            "cannot read cluster file {}{origin}: {source}; give one with --cluster FILE or \
             ${CLUSTER_ENV}, or list nodes with --endpoints",
            path.display()
        ))),
        Err(e) => Err(UsageError(e.to_string())),
    }
}

fn member_action(command: MemberCommand) -> Result<MemberAction, UsageError> {
    let addresses = |http: &str, raft: &str| {
        for (flag, addr) in [("--http", http), ("--raft", raft)] {
            kvapi::cluster::check_host_port(addr).map_err(|e| UsageError(format!("{flag} {addr:?} {e}")))?;
        }
        if http == raft {
            return Err(UsageError("--http and --raft must be different addresses".into()));
        }
        Ok(())
    };
    Ok(match command {
        MemberCommand::List => MemberAction::List,
        MemberCommand::Add { id, http, raft } => {
            addresses(&http, &raft)?;
            MemberAction::Add { id, http, raft }
        }
        MemberCommand::Promote { id } => MemberAction::Promote(id),
        MemberCommand::Remove { id } => MemberAction::Remove(id),
        MemberCommand::Update { id, http, raft } => {
            addresses(&http, &raft)?;
            MemberAction::Update { id, http, raft }
        }
    })
}

fn checked_key(key: String) -> Result<String, UsageError> {
    if key.is_empty() {
        return Err(UsageError("the key must not be empty".into()));
    }
    if key.len() > kvapi::MAX_KEY_BYTES {
        return Err(UsageError(format!(
            "the key is {} bytes long; the limit is {}",
            key.len(),
            kvapi::MAX_KEY_BYTES
        )));
    }
    Ok(key)
}

fn write_action(kind: WriteKind, args: ValueArgs, stdin: &mut dyn Read) -> Result<Action, UsageError> {
    let key = checked_key(args.key)?;
    let (raw, source) = match (args.value, args.file) {
        (_, Some(path)) => {
            let raw = std::fs::read(&path)
                .map_err(|e| UsageError(format!("cannot read value file {}: {e}", path.display())))?;
            (raw, Source::File)
        }
        (Some(v), None) if v == "-" => {
            let mut raw = Vec::new();
            stdin
                .read_to_end(&mut raw)
                .map_err(|e| UsageError(format!("cannot read the value from stdin: {e}")))?;
            (raw, Source::Stdin)
        }
        (Some(v), None) => (v.into_bytes(), Source::Argument),
        // clap's required_unless_present rules this out; say so rather than panic.
        (None, None) => return Err(UsageError("a VALUE or --file is required".into())),
    };
    let value = parse_value(raw, source, args.string).map_err(|e| UsageError(e.to_string()))?;
    Ok(Action::Write {
        kind,
        key,
        value,
        precondition: args.condition.precondition(),
    })
}

/// Parse `10s`, `500ms`, `2m`, `1.5` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 10s, 500ms or 2m)"))?;
    let seconds = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "sec" | "secs" => n,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("{text:?} has an unknown unit (use ms, s or m)")),
    };
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 86_400.0 {
        return Err(format!("{text:?} must be between 1ms and 24h"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches;
    use serde_json::json;
    use std::io::Cursor;

    fn cluster_file() -> tempfile_lite::TempFile {
        tempfile_lite::TempFile::new(
            "[[node]]\nid = 1\nhttp = \"127.0.0.1:8081\"\nraft = \"127.0.0.1:6001\"\n\
             [[node]]\nid = 0\nhttp = \"127.0.0.1:8080\"\nraft = \"127.0.0.1:6000\"\n",
        )
    }

    /// A file in the temp dir, removed on drop (no tempfile dependency for one helper).
    mod tempfile_lite {
        use std::path::PathBuf;
        pub struct TempFile(pub PathBuf);
        impl TempFile {
            pub fn new(text: &str) -> TempFile {
                let path = std::env::temp_dir().join(format!("kvctl-cli-test-{}.toml", uuid::Uuid::new_v4()));
                std::fs::write(&path, text).expect("write temp file");
                TempFile(path)
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    fn config(args: &[&str], stdin: &str) -> Result<Config, UsageError> {
        let cli = Cli::try_parse_from(args).map_err(|e| UsageError(e.to_string()))?;
        Config::from_cli(cli, &mut Cursor::new(stdin.as_bytes().to_vec()), None)
    }

    #[test]
    fn security_flags_parse_beside_commands_with_a_key() {
        // --key once shared its id with the `key` of get/put and panicked at runtime.
        for args in [
            &[
                "kvctl", "--cacert", "ca.pem", "--cert", "c.pem", "--key", "c.key", "get", "k",
            ][..],
            &[
                "kvctl", "get", "k", "--cert", "c.pem", "--key", "c.key", "--token", "t",
            ],
            &["kvctl", "put", "k", "1", "--key", "c.key", "--cert", "c.pem"],
        ] {
            let cli = Cli::try_parse_from(args).expect("parses");
            assert_eq!(
                cli.key.as_deref(),
                Some(std::path::Path::new("c.key")),
                "{args:?}"
            );
            assert_eq!(
                cli.cert.as_deref(),
                Some(std::path::Path::new("c.pem")),
                "{args:?}"
            );
        }
        assert!(
            Cli::try_parse_from(["kvctl", "--cert", "c.pem", "get", "k"]).is_err(),
            "--cert needs --key"
        );
        let err = config(
            &[
                "kvctl",
                "--endpoints",
                "https://h:1",
                "--cacert",
                "/nonexistent/ca.pem",
                "get",
                "k",
            ],
            "",
        )
        .expect_err("an unreadable CA is a usage error");
        assert!(err.to_string().contains("--cacert /nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn put_parses_json_and_strings() {
        let c = config(
            &["kvctl", "--endpoints", "h:1", "put", "pets", r#"["cat","dog"]"#],
            "",
        )
        .expect("valid");
        assert_eq!(
            c.action,
            Action::Write {
                kind: WriteKind::Put,
                key: "pets".into(),
                value: json!(["cat", "dog"]),
                precondition: None,
            }
        );
        let c = config(&["kvctl", "--endpoints", "h:1", "put", "name", "Kyle Chard"], "").expect("valid");
        assert!(matches!(c.action, Action::Write { value, .. } if value == json!("Kyle Chard")));
        let c = config(&["kvctl", "--endpoints", "h:1", "append", "n", "-5"], "").expect("valid");
        assert!(
            matches!(c.action, Action::Write { kind: WriteKind::Append, value, .. } if value == json!(-5))
        );
        let c = config(&["kvctl", "--endpoints", "h:1", "put", "--string", "n", "42"], "").expect("valid");
        assert!(matches!(c.action, Action::Write { value, .. } if value == json!("42")));
    }

    #[test]
    fn conditions_parse_into_preconditions() {
        let c = config(
            &["kvctl", "--endpoints", "h:1", "put", "--if-index", "7", "n", "8"],
            "",
        )
        .expect("valid");
        assert!(matches!(
            c.action,
            Action::Write {
                precondition: Some(Precondition::ModIndex(7)),
                ..
            }
        ));
        let c = config(
            &["kvctl", "--endpoints", "h:1", "put", "lock", "me", "--if-absent"],
            "",
        )
        .expect("valid");
        assert!(matches!(
            c.action,
            Action::Write {
                precondition: Some(Precondition::Absent),
                ..
            }
        ));
        let c = config(
            &[
                "kvctl",
                "--endpoints",
                "h:1",
                "append",
                "--if-index",
                "3",
                "l",
                "x",
            ],
            "",
        )
        .expect("valid");
        assert!(matches!(
            c.action,
            Action::Write {
                kind: WriteKind::Append,
                precondition: Some(Precondition::ModIndex(3)),
                ..
            }
        ));
        let c = config(
            &["kvctl", "--endpoints", "h:1", "delete", "lock", "--if-index", "9"],
            "",
        )
        .expect("valid");
        assert_eq!(
            c.action,
            Action::Delete {
                key: "lock".into(),
                precondition: Some(Precondition::ModIndex(9))
            }
        );
        assert!(config(
            &[
                "kvctl",
                "--endpoints",
                "h:1",
                "put",
                "k",
                "v",
                "--if-index",
                "1",
                "--if-absent"
            ],
            ""
        )
        .is_err());
        assert!(config(
            &["kvctl", "--endpoints", "h:1", "put", "k", "v", "--if-index", "x"],
            ""
        )
        .is_err());
    }

    #[test]
    fn watch_takes_a_key_or_a_prefix() {
        let c = config(
            &["kvctl", "--endpoints", "h:1", "watch", "config", "--after", "12"],
            "",
        )
        .expect("valid");
        assert_eq!(
            c.action,
            Action::Watch {
                target: WatchTarget::Key("config".into()),
                after: Some(12),
                count: None
            }
        );
        let c = config(
            &[
                "kvctl",
                "--endpoints",
                "h:1",
                "watch",
                "--prefix",
                "",
                "--count",
                "3",
            ],
            "",
        )
        .expect("valid");
        assert_eq!(
            c.action,
            Action::Watch {
                target: WatchTarget::Prefix(String::new()),
                after: None,
                count: Some(3)
            }
        );
        assert!(config(&["kvctl", "--endpoints", "h:1", "watch"], "").is_err());
        assert!(config(
            &["kvctl", "--endpoints", "h:1", "watch", "k", "--prefix", "p"],
            ""
        )
        .is_err());
        assert!(config(&["kvctl", "--endpoints", "h:1", "watch", "k", "--count", "0"], "").is_err());
    }

    #[test]
    fn dash_reads_stdin_and_refuses_it_empty() {
        let c = config(&["kvctl", "--endpoints", "h:1", "put", "k", "-"], "{\"a\":1}\n").expect("valid");
        assert!(matches!(c.action, Action::Write { value, .. } if value == json!({"a": 1})));
        let err = config(&["kvctl", "--endpoints", "h:1", "put", "k", "-"], "").expect_err("empty");
        assert!(err.to_string().contains("standard input is empty"), "{err}");
    }

    #[test]
    fn the_cluster_comes_from_endpoints_file_env_or_default() {
        let file = cluster_file();
        let path = file.0.to_str().expect("utf-8 path");
        let c = config(&["kvctl", "--cluster", path, "leader"], "").expect("valid");
        let ids: Vec<_> = c.endpoints.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![Some(0), Some(1)]);

        let cli = Cli::try_parse_from(["kvctl", "status"]).expect("parses");
        let c = Config::from_cli(cli, &mut std::io::empty(), Some(file.0.clone())).expect("env");
        assert_eq!(c.endpoints.len(), 2);

        let cli = Cli::try_parse_from(["kvctl", "--endpoints", "a:1,b:2", "status"]).expect("ok");
        let c = Config::from_cli(cli, &mut std::io::empty(), Some(file.0.clone())).expect("ok");
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.endpoints[0].id, None, "--endpoints overrides the environment");

        let err =
            config(&["kvctl", "--cluster", "/nonexistent/c.toml", "get", "k"], "").expect_err("missing");
        assert!(err.to_string().contains("cannot read cluster file"), "{err}");
        assert!(err.to_string().contains("--endpoints"), "{err}");
        let cli = Cli::try_parse_from(["kvctl", "status"]).expect("parses");
        let err = Config::from_cli(cli, &mut std::io::empty(), Some("/nonexistent/e.toml".into()))
            .expect_err("a named file must exist");
        assert!(err.to_string().contains("from $KVCTL_CLUSTER"), "{err}");
    }

    #[test]
    fn without_a_cluster_file_the_local_default_cluster_is_used() {
        let none = |_: &std::path::Path| false;
        let (found, source, _) = endpoints(None, None, None, none).expect("fallback");
        assert_eq!(source, ClusterSource::LocalDefault);
        assert_eq!(found, Endpoint::local_default());
        let said = source.describe(&found);
        assert!(
            said.contains("local default cluster") && said.contains("127.0.0.1:8080, 127.0.0.1:8081"),
            "{said}"
        );
        // ./cluster.toml, when there is one, wins over the fallback.
        let file = cluster_file();
        let err = endpoints(None, None, None, |_| true).expect_err("./cluster.toml is not here");
        assert!(err.to_string().contains("cluster.toml"), "{err}");
        let (found, source, _) = endpoints(None, Some(file.0.clone()), None, none).expect("file");
        assert_eq!((found.len(), source), (2, ClusterSource::File(file.0.clone())));
    }

    #[test]
    fn a_write_may_not_outlive_the_cluster_s_memory_of_its_key() {
        let c = config(
            &["kvctl", "--endpoints", "h:1", "--timeout", "9m", "put", "k", "1"],
            "",
        );
        assert!(c.is_ok());
        for write in [&["put", "k", "1"][..], &["append", "k", "1"], &["delete", "k"]] {
            let mut args = vec!["kvctl", "--endpoints", "h:1", "--timeout", "20m"];
            args.extend_from_slice(write);
            let err = config(&args, "").expect_err("too long");
            assert!(
                err.to_string()
                    .starts_with("--timeout 20m is too long for a write: the cluster remembers"),
                "{err}"
            );
            assert!(err.to_string().contains("9m or less"), "{err}");
        }
        let read = config(
            &["kvctl", "--endpoints", "h:1", "--timeout", "20m", "get", "k"],
            "",
        );
        assert!(read.is_ok(), "reads may wait as long as asked");
    }

    #[test]
    fn a_value_that_starts_like_json_must_be_json() {
        let err =
            config(&["kvctl", "--endpoints", "h:1", "put", "c", r#"["cat","#], "").expect_err("broken JSON");
        assert!(err.to_string().contains("starts like JSON"), "{err}");
        let c = config(
            &[
                "kvctl",
                "--endpoints",
                "h:1",
                "put",
                "--string",
                "c",
                r#"["cat","#,
            ],
            "",
        )
        .expect("--string");
        assert!(matches!(c.action, Action::Write { value, .. } if value == json!(r#"["cat","#)));
    }

    #[test]
    fn membership_commands_parse_and_check_addresses() {
        let c = config(&["kvctl", "--endpoints", "h:1", "member", "list"], "").expect("valid");
        assert_eq!(c.action, Action::Member(MemberAction::List));
        let c = config(
            &[
                "kvctl",
                "--endpoints",
                "h:1",
                "member",
                "add",
                "3",
                "--http",
                "h:8083",
                "--raft",
                "h:6003",
            ],
            "",
        )
        .expect("valid");
        assert_eq!(
            c.action,
            Action::Member(MemberAction::Add {
                id: 3,
                http: "h:8083".into(),
                raft: "h:6003".into()
            })
        );
        let err = config(
            &[
                "kvctl",
                "--endpoints",
                "h:1",
                "member",
                "add",
                "3",
                "--http",
                "nope",
                "--raft",
                "h:6003",
            ],
            "",
        )
        .expect_err("bad address");
        assert!(err.to_string().contains("--http"), "{err}");
        let c = config(&["kvctl", "--endpoints", "h:1", "member", "promote", "3"], "").expect("valid");
        assert_eq!(c.action, Action::Member(MemberAction::Promote(3)));
        let c = config(&["kvctl", "--endpoints", "h:1", "member", "rm", "2"], "").expect("valid");
        assert_eq!(c.action, Action::Member(MemberAction::Remove(2)));
        assert!(config(&["kvctl", "--endpoints", "h:1", "member", "promote", "x"], "").is_err());
        let c = config(&["kvctl", "--endpoints", "h:1", "leader"], "").expect("valid");
        assert_eq!(c.action, Action::Leader);
        let c = config(&["kvctl", "--endpoints", "h:1", "leader", "transfer"], "").expect("valid");
        assert_eq!(c.action, Action::LeaderTransfer(None));
        let c = config(&["kvctl", "--endpoints", "h:1", "leader", "transfer", "2"], "").expect("valid");
        assert_eq!(c.action, Action::LeaderTransfer(Some(2)));
    }

    #[test]
    fn completions_need_no_cluster() {
        let c = config(&["kvctl", "--cluster", "/nonexistent", "completions", "bash"], "").expect("valid");
        assert!(c.endpoints.is_empty());
    }

    #[test]
    fn grammar_errors_are_caught_by_clap() {
        assert!(config(&["kvctl", "frobnicate"], "").is_err());
        assert!(config(&["kvctl", "--endpoints", "h:1", "put", "k"], "").is_err());
        assert!(config(&["kvctl", "--endpoints", "h:1", "get", "k", "--bogus"], "").is_err());
        assert!(config(&["kvctl", "--endpoints", "h:1", "-o", "xml", "get", "k"], "").is_err());
        assert!(config(&["kvctl", "--endpoints", "h:1", "get", ""], "").is_err());
        assert!(config(
            &["kvctl", "--endpoints", "h:1", "put", "k", "v", "--file", "f"],
            ""
        )
        .is_err());
    }

    #[test]
    fn status_watch_takes_an_optional_interval() {
        let c = config(&["kvctl", "--endpoints", "h:1", "status"], "").expect("valid");
        assert_eq!(c.action, Action::Status { watch: None });
        let c = config(&["kvctl", "--endpoints", "h:1", "status", "--watch"], "").expect("valid");
        assert_eq!(
            c.action,
            Action::Status {
                watch: Some(Duration::from_secs(2))
            }
        );
        let c = config(&["kvctl", "--endpoints", "h:1", "status", "--watch", "0.5"], "").expect("valid");
        assert_eq!(
            c.action,
            Action::Status {
                watch: Some(Duration::from_millis(500))
            }
        );
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "s", "0", "-1", "10h", "abc", "1e9"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn the_repl_grammar_hides_what_does_nothing_there() {
        repl_grammar().debug_assert();
        // What `help put` in the REPL prints.
        let help = repl_grammar()
            .try_get_matches_from(["kvctl", "put", "--help"])
            .expect_err("help")
            .render()
            .to_string();
        for absent in ["--cluster", "--endpoints", "--version"] {
            assert!(!help.contains(absent), "{absent} in {help}");
        }
        assert!(help.contains("--timeout") && help.contains("--string"), "{help}");
        let version = repl_grammar().try_get_matches_from(["kvctl", "get", "k", "--version"]);
        assert!(version.is_err(), "--version is not a REPL option");
        let matches = repl_grammar()
            .try_get_matches_from(["kvctl", "--cluster", "x.toml", "get", "k"])
            .expect("hidden, still parsed");
        let cli = Cli::from_arg_matches(&matches).expect("cli");
        let err = Config::for_session(cli, &mut std::io::empty(), &[], &Security::default())
            .expect_err("fixed per session");
        assert!(err.to_string().contains("restart"), "{err}");
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let help = Cli::command().render_help().to_string();
        assert!(
            help.contains("Exit codes:") && help.contains("4  outcome unknown"),
            "{help}"
        );
    }
}
