//! The command line: clap's types, and their conversion into a plain, validated [`Config`].
//!
//! clap checks the grammar; [`Config::from_cli`] checks the meaning: that a cluster can be
//! found, that a value could be read, that durations make sense. Every problem found here is a
//! usage error (exit code 2), reported before any network traffic, so `main` and the commands
//! never see a half-valid configuration.
//!
//! Where the cluster is: `--endpoints` when given, else `--cluster FILE`, else the file named
//! by `$KVCTL_CLUSTER`, else `./cluster.toml`. The environment variable is read here rather
//! than by clap so that `--endpoints` can override it without clap calling the two a conflict.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kvapi::{ClusterFile, Consistency, WriteKind};
use kvctl::endpoint::Endpoint;
use kvctl::output::Format;
use kvctl::value::{parse_value, Source};
use serde_json::Value;

/// Environment variable naming the default cluster file.
pub const CLUSTER_ENV: &str = "KVCTL_CLUSTER";

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  key not found
  2  usage error (bad arguments, unreadable or malformed cluster file, empty input)
  3  cluster unavailable: no leader or no quorum within the timeout
  4  outcome unknown: a write may or may not have been applied
  5  other errors (including input the server rejected, such as a type conflict)

Values: VALUE is stored as JSON when it is valid JSON (42, true, '[\"cat\",\"dog\"]',
'{\"a\":1}') and as a string otherwise (\"Kyle Chard\"). --string forces a string.";

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
    /// seconds)
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

    #[command(subcommand)]
    pub command: Command,
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
    /// Print the current leader
    Leader,
    /// Generate load and report throughput and latency percentiles
    Bench(BenchArgs),
    /// Start an interactive shell: these commands with history, completion of commands and
    /// keys, and a prompt that shows the leader (reads a script when stdin is not a terminal)
    Repl,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
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
    },
    /// DELETE.
    Delete {
        /// The key.
        key: String,
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
    /// Run a benchmark.
    Bench(kvctl::bench::BenchSpec),
    /// Print a completion script.
    Completions(clap_complete::Shell),
    /// Start the interactive shell.
    Repl,
}

/// The validated configuration of one kvctl run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The nodes; empty only for commands that do not talk to the cluster.
    pub endpoints: Vec<Endpoint>,
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
}

/// A usage problem found while validating the command line; exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl Config {
    /// Validate the parsed command line. `stdin` is read only when the value is `-`;
    /// `env_cluster` is the value of `$KVCTL_CLUSTER`.
    pub fn from_cli(
        cli: Cli,
        stdin: &mut dyn Read,
        env_cluster: Option<PathBuf>,
    ) -> Result<Config, UsageError> {
        Config::build(cli, stdin, |list, cluster| endpoints(list, cluster, env_cluster))
    }

    /// Validate one line typed into `kvctl repl`: the same grammar and checks as
    /// [`Config::from_cli`], but the nodes are the session's, found once when it started, so
    /// a line never rereads the cluster file and cannot point elsewhere.
    pub fn for_session(cli: Cli, stdin: &mut dyn Read, session: &[Endpoint]) -> Result<Config, UsageError> {
        if cli.cluster.is_some() || cli.endpoints.is_some() {
            return Err(UsageError(
                "--cluster and --endpoints are chosen when the REPL starts; restart it to change them".into(),
            ));
        }
        Config::build(cli, stdin, |_, _| Ok(session.to_vec()))
    }

    /// The checks shared by one-shot commands and REPL lines; `nodes` finds the cluster from
    /// `--endpoints` and `--cluster`.
    fn build(
        cli: Cli,
        stdin: &mut dyn Read,
        nodes: impl FnOnce(Option<&str>, Option<PathBuf>) -> Result<Vec<Endpoint>, UsageError>,
    ) -> Result<Config, UsageError> {
        let action = match cli.command {
            Command::Put(args) => write_action(WriteKind::Put, args, stdin)?,
            Command::Append(args) => write_action(WriteKind::Append, args, stdin)?,
            Command::Get { key } => Action::Get {
                key: checked_key(key)?,
            },
            Command::Delete { key } => Action::Delete {
                key: checked_key(key)?,
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
            Command::Leader => Action::Leader,
            Command::Completions { shell } => Action::Completions(shell),
            Command::Repl => Action::Repl,
            Command::Bench(args) => Action::Bench(args.into_spec(cli.consistency)?),
        };
        let endpoints = if matches!(action, Action::Completions(_)) {
            Vec::new()
        } else {
            nodes(cli.endpoints.as_deref(), cli.cluster)?
        };
        Ok(Config {
            endpoints,
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
        })
    }
}

/// Find the nodes: `--endpoints`, else `--cluster`, else `$KVCTL_CLUSTER`, else
/// `./cluster.toml`.
fn endpoints(
    list: Option<&str>,
    cluster: Option<PathBuf>,
    env_cluster: Option<PathBuf>,
) -> Result<Vec<Endpoint>, UsageError> {
    if let Some(list) = list {
        return Endpoint::parse_list(list).map_err(|e| UsageError(e.to_string()));
    }
    let (path, origin) = match (cluster, env_cluster) {
        (Some(path), _) => (path, ""),
        (None, Some(path)) => (path, " (from $KVCTL_CLUSTER)"),
        (None, None) => (PathBuf::from("cluster.toml"), " (the default)"),
    };
    match ClusterFile::load(&path) {
        Ok(file) => Ok(Endpoint::from_cluster_file(&file)),
        Err(kvapi::ClusterFileError::Read { path, source }) => Err(UsageError(format!(
            "cannot read cluster file {}{origin}: {source}; give one with --cluster FILE or \
             ${CLUSTER_ENV}, or list nodes with --endpoints",
            path.display()
        ))),
        Err(e) => Err(UsageError(e.to_string())),
    }
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
    Ok(Action::Write { kind, key, value })
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
                value: json!(["cat", "dog"])
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
        assert!(config(&["kvctl", "--endpoints", "https://h:1", "get", "k"], "").is_err());
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
