//! The command line of the `chaos` binary, turned into a plain validated [`Command`].

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use chaos::nemesis::FaultKind;
use chaos::RunConfig;
use clap::Parser;

/// Run a Jepsen-style fault-injection test against a cluster of real kvnode processes, or check
/// a recorded history.
///
/// Exit codes: 0 the history is clean, 1 anomalies were found (or the healed cluster did not
/// converge), 2 the run could not be carried out.
#[derive(Debug, Parser)]
#[command(name = "chaos", version)]
pub struct Cli {
    /// Length of the faulty phase, e.g. 90s, 10m, 500ms.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Seed of the workload and the fault schedule (default: from the clock; always printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// Number of concurrent clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Number of keys.
    #[arg(long, default_value_t = 4)]
    pub keys: usize,
    /// Fault kinds, comma-separated, or "none". kill: kill -9 a node (often the leader) and
    /// restart it; pause: SIGSTOP and SIGCONT; partition: cut peer traffic (root only); wipe:
    /// kill -9 a follower, delete its data directory and restart it empty under its old id (it
    /// must be re-admitted as a learner and promoted back by itself); member: membership
    /// changes, alternately adding a spare node with `kvnode --join` and promoting it once it
    /// has caught up, and removing a voter (sometimes the leader) and stopping it for good.
    #[arg(long, default_value = "kill,pause,partition")]
    pub faults: String,
    /// Write the history (JSON lines) to this file.
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Pass --snapshot-every N to every node (forces frequent snapshots and log compaction).
    #[arg(long)]
    pub snapshot_every: Option<u64>,
    /// Probability that a kill is followed by an immediate restart (0 to 1).
    #[arg(long, default_value_t = 0.25)]
    pub quick_restarts: f64,
    /// Checker self-test: send the reads at random nodes with consistency=stale. Such a run is
    /// expected to report stale-read anomalies (and exit 1).
    #[arg(long)]
    pub stale_reads: bool,
    /// Run the cluster secured: TLS on both ports (certificates by kvnode certs) and bearer
    /// tokens; the clients use a write-role token.
    #[arg(long)]
    pub secure: bool,
    /// Do not run anything: check this history file and print the verdict.
    #[arg(long, conflicts_with_all = ["history", "seed"])]
    pub check: Option<PathBuf>,
}

/// What to do.
pub enum Command {
    /// Run against a fresh cluster.
    Run {
        /// The run.
        config: RunConfig,
        /// Where to write the history.
        history: Option<PathBuf>,
    },
    /// Check a recorded history.
    Check(PathBuf),
}

impl Cli {
    /// Validate and turn into a [`Command`].
    pub fn into_command(self) -> Result<Command, String> {
        if let Some(path) = self.check {
            return Ok(Command::Check(path));
        }
        if self.clients == 0 || self.keys == 0 {
            return Err("--clients and --keys must be positive".into());
        }
        let faults = parse_faults(&self.faults)?;
        if !(0.0..=1.0).contains(&self.quick_restarts) {
            return Err("--quick-restarts must be between 0 and 1".into());
        }
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000_000)
                .unwrap_or(1)
        });
        let mut config = RunConfig::new(seed, self.nodes as usize, self.clients, self.duration);
        config.keys = self.keys;
        config.faults = faults;
        config.stale_reads = self.stale_reads;
        config.secure = self.secure;
        config.pace.quick_restart = self.quick_restarts;
        if let Some(n) = self.snapshot_every {
            config
                .node_args
                .extend(["--snapshot-every".to_string(), n.to_string()]);
        }
        Ok(Command::Run {
            config,
            history: self.history,
        })
    }
}

fn parse_faults(list: &str) -> Result<BTreeSet<FaultKind>, String> {
    if list.trim() == "none" {
        return Ok(BTreeSet::new());
    }
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.parse::<FaultKind>().map_err(|e| e.to_string()))
        .collect()
}

/// `90s`, `10m`, `500ms`, `1h`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 90s, 10m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("invalid duration unit {unit:?}: use ms, s, m or h")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_fault_lists_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_faults("kill, pause").map(|f| f.len()), Ok(2));
        assert_eq!(parse_faults("none").map(|f| f.len()), Ok(0));
        assert!(parse_faults("kill,flood").is_err());
    }
}
