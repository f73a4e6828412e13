//! One whole run: start a cluster, run the workload under the nemesis, heal, converge, read the
//! final state, check.
//!
//! The phases, in order:
//!
//! 1. **Setup.** As root and with partitions enabled, every node gets its own network
//!    namespace ([`crate::netns`]); otherwise nodes run on loopback and partitions are dropped
//!    from the run with a note saying so. With membership faults one namespace more is made for
//!    the spare node, so that a node that joined can be partitioned like any other. The nodes
//!    are real `kvnode` processes started by [`testkit`], with short election timeouts so that
//!    a 25 s run sees many elections.
//! 2. **Faulty phase.** The clients ([`crate::workload`]) run on a tokio runtime while the
//!    nemesis ([`crate::nemesis`]) works through its seeded schedule on its own thread; both stop
//!    when the duration is up.
//! 3. **Heal and converge.** Every fault is undone, then the harness polls (with a deadline)
//!    until every member answers, all agree on one leader and term, all have applied the same
//!    index, and no wiped node still waits to be promoted back. A cluster that does not
//!    converge is a liveness failure and reported as such.
//! 4. **Final reads.** Each key is read linearizably through kvctl's client, then from every
//!    replica's own copy, and all of it is appended to the history. Both go to the members as
//!    they are now (nodes removed by the membership nemesis are gone, spares it added are
//!    in); the clients of the faulty phase kept the cluster file of the start, which always
//!    names a majority of live members.
//! 5. **Watchers finish.** Watchers ([`crate::watchers`]) have streamed the changes since
//!    before the first write, through every fault; they now run until they have covered the
//!    index the converged cluster applied.
//! 6. **Check.** The pure [`crate::checker`] judges the history.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvapi::NodeId;
use kvctl::security::{Security, Token};
use testkit::{Cluster, NodeLayout, Secure};

use crate::checker::{check, Report};
use crate::history::{History, Op, OpKind, Outcome, Recorder, RunMeta, Seen};
use crate::nemesis::{current_leader, schedule, FaultKind, Nemesis, NemesisError, Pace};
use crate::netns::{can_make_namespaces, Netns, NetnsError};
use crate::watchers::{self, Finish};
use crate::workload::{self, NodeEndpoint, WorkloadConfig, WorkloadError};

/// Election timing used unless the caller overrides it: fast elections make every fault
/// visible within a short run.
pub const DEFAULT_NODE_ARGS: &[&str] = testkit::FAST_ELECTIONS;

/// Everything a run needs; the same config and seed replay the same workload choices and fault
/// schedule.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Seed of the workload and the schedule.
    pub seed: u64,
    /// Cluster size (3 and 5 are the interesting ones).
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Number of keys.
    pub keys: usize,
    /// Length of the faulty phase.
    pub duration: Duration,
    /// Fault kinds to inject.
    pub faults: BTreeSet<FaultKind>,
    /// Gaps and holds of the schedule.
    pub pace: Pace,
    /// Arguments for every `kvnode` ([`DEFAULT_NODE_ARGS`] by default).
    pub node_args: Vec<String>,
    /// How long the healed cluster may take to converge.
    pub converge_timeout: Duration,
    /// Checker self-test: reads at random nodes are stale (see
    /// [`WorkloadConfig::stale_random_reads`]); the run is expected to find anomalies.
    pub stale_reads: bool,
    /// Run the cluster secured: TLS on both ports (certificates by `kvnode certs`) and tokens;
    /// the clients use the write role's token.
    pub secure: bool,
}

impl RunConfig {
    /// A run of `duration` on `nodes` nodes with `clients` clients, four keys, and the default
    /// fault kinds (kill, pause, partition).
    pub fn new(seed: u64, nodes: usize, clients: usize, duration: Duration) -> Self {
        RunConfig {
            seed,
            nodes,
            clients,
            keys: 4,
            duration,
            faults: FaultKind::DEFAULT.into_iter().collect(),
            pace: Pace::default(),
            node_args: DEFAULT_NODE_ARGS.iter().map(|s| s.to_string()).collect(),
            converge_timeout: Duration::from_secs(60),
            stale_reads: false,
            secure: false,
        }
    }

    /// The command line that replays this run.
    pub fn replay_command(&self) -> String {
        let faults: Vec<&str> = self.faults.iter().map(|f| f.name()).collect();
        let snapshot = self
            .node_args
            .iter()
            .position(|a| a == "--snapshot-every")
            .and_then(|i| self.node_args.get(i + 1))
            .map(|n| format!(" --snapshot-every {n}"))
            .unwrap_or_default();
        format!(
            "cargo run --release -p chaos -- --seed {} --nodes {} --clients {} --keys {} --duration {}s \
             --quick-restarts {} --faults {}",
            self.seed,
            self.nodes,
            self.clients,
            self.keys,
            self.duration.as_secs(),
            self.pace.quick_restart,
            if faults.is_empty() {
                "none".into()
            } else {
                faults.join(",")
            }
        ) + &snapshot
            + if self.stale_reads { " --stale-reads" } else { "" }
            + if self.secure { " --secure" } else { "" }
    }
}

/// Why a run could not be carried out (as opposed to finding anomalies, which is a result).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Network namespaces could not be set up.
    #[error("cannot set up network namespaces: {0}")]
    Netns(#[from] NetnsError),
    /// The fresh cluster never elected a leader; see the node logs.
    #[error("no leader was elected within {0:?} of starting the cluster")]
    NoLeader(Duration),
    /// The clients could not start.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// The nemesis failed to apply or undo a fault.
    #[error(transparent)]
    Nemesis(#[from] NemesisError),
    /// The async runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// The nemesis thread panicked.
    #[error("the nemesis thread panicked")]
    NemesisPanicked,
}

/// What a run produced. Holds the cluster so that a caller can print node logs; dropping it
/// stops the nodes (printing their logs if the thread is panicking) and then removes the
/// namespaces.
pub struct RunResult {
    /// The fault kinds actually injected (partitions are dropped when not root).
    pub faults: BTreeSet<FaultKind>,
    /// Things the operator should know, e.g. that partitions were skipped.
    pub notes: Vec<String>,
    /// True when the healed cluster converged before the deadline.
    pub converged: bool,
    /// The recorded history.
    pub history: History,
    /// The checker's verdict.
    pub report: Report,
    /// The cluster, still running. Declared before `net` so it is dropped first.
    pub cluster: Cluster,
    /// The namespaces, when partitions were enabled.
    pub net: Option<Netns>,
}

impl RunResult {
    /// True when the history is free of anomalies, the cluster converged, and no node ended
    /// by itself (a crash is a failure even when the others carried on).
    pub fn passed(&self) -> bool {
        self.report.is_valid() && self.converged && self.exited() == 0
    }

    /// Nodes whose process ended without the nemesis stopping it (each was restarted).
    pub fn exited(&self) -> usize {
        self.history
            .faults
            .iter()
            .filter(|f| f.action == crate::checker::EXITED_ACTION)
            .count()
    }

    /// Save the history and every node's full log next to each other: `<base>.jsonl` and
    /// `<base>.node<i>.log`. Returns the files written.
    pub fn save(&self, base: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
        let mut written = Vec::new();
        let history = base.with_extension("jsonl");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&history)?);
        self.history
            .write_jsonl(&mut out)
            .map_err(std::io::Error::other)?;
        out.flush()?;
        written.push(history);
        for id in self.cluster.ids() {
            let path = base.with_extension(format!("node{id}.log"));
            std::fs::write(&path, self.cluster.log(id))?;
            written.push(path);
        }
        Ok(written)
    }

    /// Write the summary: configuration, notes, counts, anomalies and, on failure, the seed and
    /// the command that replays the run.
    pub fn summarize(&self, config: &RunConfig, mut out: impl Write) -> std::io::Result<()> {
        let faults: Vec<&str> = self.faults.iter().map(|f| f.name()).collect();
        writeln!(
            out,
            "chaos run: seed {} | {} nodes | {} clients | {} keys | {:?} | faults: {}",
            config.seed,
            config.nodes,
            config.clients,
            config.keys,
            config.duration,
            if faults.is_empty() {
                "none".into()
            } else {
                faults.join(",")
            }
        )?;
        for note in &self.notes {
            writeln!(out, "note: {note}")?;
        }
        self.report.render(&self.history, &mut out)?;
        if !self.converged {
            writeln!(
                out,
                "LIVENESS: the healed cluster did not converge within {:?}",
                config.converge_timeout
            )?;
        }
        if self.passed() {
            writeln!(out, "result: PASS")?;
        } else {
            writeln!(out, "result: FAIL (seed {})", config.seed)?;
            writeln!(out, "replay: {}", config.replay_command())?;
        }
        Ok(())
    }
}

/// Carry out one run. Progress lines go to `progress`.
pub fn run(config: &RunConfig, progress: &mut dyn Write) -> Result<RunResult, RunError> {
    let mut notes = Vec::new();
    let mut faults = config.faults.clone();
    if faults.contains(&FaultKind::Partition) && !can_make_namespaces() {
        faults.remove(&FaultKind::Partition);
        notes.push("not running as root or no iproute2 `ip`: network partitions need namespaces and are skipped; kill and pause faults still run".into());
    }
    // A membership nemesis adds at most one spare at a time, and a removed node's namespace
    // goes to the next spare: one namespace more is enough.
    let spares = usize::from(faults.contains(&FaultKind::Member));
    let mut net = if faults.contains(&FaultKind::Partition) {
        Some(Netns::create(config.nodes + spares)?)
    } else {
        None
    };
    let args: Vec<&str> = config.node_args.iter().map(String::as_str).collect();
    let secure = if config.secure {
        Secure::all()
    } else {
        Secure::default()
    };
    let mut cluster = match &net {
        Some(net) => {
            let layout: Vec<NodeLayout> = net
                .nodes()
                .iter()
                .take(config.nodes)
                .enumerate()
                .map(|(i, n)| NodeLayout {
                    http: format!("{}:8080", n.addr),
                    raft: format!("{}:9090", n.addr),
                    launch_prefix: net.launch_prefix(i),
                })
                .collect();
            Cluster::spawn_secure_with_layout(&layout, &args, secure)
        }
        None => Cluster::spawn_secure(config.nodes, &args, secure),
    };
    let security = security_of(&cluster)?;
    let started = Instant::now();
    let leader = poll(Duration::from_secs(30), || current_leader(&cluster))
        .ok_or(RunError::NoLeader(Duration::from_secs(30)))?;
    let _ = writeln!(
        progress,
        "cluster of {} up in {:?}, leader {leader}",
        config.nodes,
        started.elapsed()
    );

    let endpoints: Vec<NodeEndpoint> = cluster
        .ids()
        .into_iter()
        .map(|id| NodeEndpoint {
            id,
            http: cluster.http_addr(id),
        })
        .collect();
    let keys: Vec<String> = (0..config.keys).map(|k| format!("k{k}")).collect();
    let recorder = Recorder::new(Some(RunMeta {
        seed: config.seed,
        nodes: config.nodes,
        clients: config.clients,
        duration_ms: config.duration.as_millis() as u64,
        faults: faults.iter().map(|f| f.name().to_string()).collect(),
        keys: keys.clone(),
        started_unix_ms: 0,
    }));
    let mut workload_config = WorkloadConfig::new(config.clients, config.keys, config.seed);
    workload_config.keys = keys.clone();
    workload_config.stale_random_reads = config.stale_reads;
    workload_config.security = security.clone();
    let steps = schedule(config.seed, &faults, config.nodes, config.duration, config.pace);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let finish = Arc::new(Finish::default());
    let watchers: Vec<_> = watchers::specs(config.nodes, &keys)
        .into_iter()
        .map(|spec| {
            runtime.spawn(watchers::run(
                spec,
                endpoints.clone(),
                security.clone(),
                recorder.clone(),
                finish.clone(),
            ))
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let (workload_result, nemesis_result) = std::thread::scope(|s| {
        let nemesis = s.spawn(|| {
            let mut nemesis = Nemesis::new(&mut cluster, net.as_mut(), recorder.clone(), config.seed);
            let applied = nemesis.run(&steps, &stop);
            // Heal even after a failed step, so the nodes are left in a usable state.
            let healed = nemesis.heal_all();
            applied.and_then(|n| healed.map(|()| n))
        });
        let workload_result = runtime.block_on(async {
            let timer = {
                let stop = stop.clone();
                let duration = config.duration;
                tokio::spawn(async move {
                    tokio::time::sleep(duration).await;
                    stop.store(true, Ordering::Relaxed);
                })
            };
            let result = workload::run(&workload_config, &endpoints, &recorder, stop.clone()).await;
            // If the clients could not start, the nemesis must not run out its whole schedule.
            stop.store(true, Ordering::Relaxed);
            timer.abort();
            result
        });
        (workload_result, nemesis.join())
    });
    workload_result?;
    let applied = nemesis_result.map_err(|_| RunError::NemesisPanicked)??;
    let _ = writeln!(
        progress,
        "faulty phase over after {:?}: {applied} faults; healing",
        started.elapsed()
    );

    let converged = converge(&cluster, config.converge_timeout);
    let _ = writeln!(progress, "converged: {converged}; reading the final state");
    // The slots moved on to fresh keys while the run went on: read every key any operation
    // touched, and the slots' first keys even if nothing touched them.
    let mut touched = recorder.keys();
    touched.extend(keys.iter().cloned());
    touched.sort_unstable();
    touched.dedup();
    let keys = touched;
    // The final reads go to the members now: a membership nemesis may have removed some of
    // the nodes the run started with and added others.
    let members: Vec<NodeEndpoint> = cluster
        .members()
        .into_iter()
        .map(|id| NodeEndpoint {
            id,
            http: cluster.http_addr(id),
        })
        .collect();
    runtime.block_on(final_reads_with(&members, &keys, &recorder, &security))?;
    if converged && converge(&cluster, config.converge_timeout) {
        runtime.block_on(replica_reads_with(&members, &keys, &recorder, &security))?;
    }
    finish_watchers(&cluster, &runtime, watchers, &finish, &recorder, converged);
    drop(runtime);

    let history = recorder.snapshot();
    for exit in history.faults.iter().filter(|f| f.action == "exited") {
        notes.push(format!(
            "node {:?} ended by itself {:.1} s into the run ({}): a crash, or a signal from \
             outside the harness",
            exit.nodes,
            exit.at as f64 / 1e6,
            exit.detail
        ));
    }
    let report = check(&history);
    Ok(RunResult {
        faults,
        notes,
        converged,
        history,
        report,
        cluster,
        net,
    })
}

/// How long the watchers may take to catch up with the healed cluster.
const WATCHERS_CATCH_UP: Duration = Duration::from_secs(30);

/// Let the watchers run until they have covered what the converged cluster applied, and record
/// the end of any that do not within [`WATCHERS_CATCH_UP`] (or at all, when the cluster did not
/// converge, so there is nothing definite to reach).
fn finish_watchers(
    cluster: &Cluster,
    runtime: &tokio::runtime::Runtime,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    finish: &Finish,
    recorder: &Recorder,
    converged: bool,
) {
    let applied = cluster
        .ids()
        .into_iter()
        .filter_map(|id| cluster.status(id).and_then(|s| s.last_applied))
        .max();
    let why = match (converged, applied) {
        (true, Some(applied)) => {
            finish.at(applied);
            let deadline = Instant::now() + WATCHERS_CATCH_UP;
            while tasks.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            format!("it did not reach index {applied} within {WATCHERS_CATCH_UP:?} of the cluster converging")
        }
        _ => "the cluster did not converge, so there was no final index to reach".to_string(),
    };
    for (i, task) in tasks.into_iter().enumerate() {
        task.abort();
        // A task that ended by itself recorded its own end; only a cancelled one needs one.
        if runtime.block_on(task).is_err() {
            recorder.watch(
                i as u32,
                Seen::End {
                    covered: None,
                    target: applied.unwrap_or(0),
                    error: Some(why.clone()),
                },
            );
        }
    }
}

/// Poll `f` every 50 ms until it gives a value or `timeout` passes.
fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until every member (removed nodes aside) answers, all follow one leader in one term,
/// all have applied the same index, and the membership is settled: no change half done, no
/// node that lost its data still waiting to be promoted back. False when that does not happen
/// within `timeout`.
pub fn converge(cluster: &Cluster, timeout: Duration) -> bool {
    poll(timeout, || {
        let statuses: Vec<kvapi::Status> = cluster
            .members()
            .into_iter()
            .map(|id| cluster.status(id))
            .collect::<Option<_>>()?;
        let first = statuses.first()?;
        let leader: NodeId = first.leader.as_ref()?.id;
        let same = statuses.iter().all(|s| {
            s.leader.as_ref().map(|l| l.id) == Some(leader)
                && s.term == first.term
                && s.last_applied.is_some()
                && s.last_applied == first.last_applied
        });
        if !same {
            return None;
        }
        let m = cluster.members_of(leader)?;
        (!m.joint && m.members.iter().all(|x| !x.promote_when_caught_up)).then_some(())
    })
    .is_some()
}

/// Read every key linearizably through kvctl's client, with a generous deadline, recording
/// each read as a [`OpKind::FinalRead`] (what the checker takes as the final state).
pub async fn final_reads(
    nodes: &[NodeEndpoint],
    keys: &[String],
    recorder: &Recorder,
) -> Result<(), RunError> {
    final_reads_with(nodes, keys, recorder, &Security::default()).await
}

/// What the clients of a secured cluster need: its CA and the write role's token (the
/// workload appends and reads, nothing more).
fn security_of(cluster: &Cluster) -> Result<Security, RunError> {
    let token = match cluster.tokens() {
        Some(t) => Some(Token::new(&t.write).map_err(|e| WorkloadError::Setup(e.to_string()))?),
        None => None,
    };
    Ok(Security {
        https: cluster.client_port_tls(),
        cacert: cluster.certs_dir().map(|d| d.join("ca.pem")),
        cert: None,
        key: None,
        token,
    })
}

/// [`final_reads`] on a secured cluster.
pub async fn final_reads_with(
    nodes: &[NodeEndpoint],
    keys: &[String],
    recorder: &Recorder,
    security: &Security,
) -> Result<(), RunError> {
    let client = workload::kvctl_client_with(nodes, Duration::from_secs(20), security)?;
    for key in keys {
        let invoke = recorder.now();
        let (outcome, read, error) = match client.get(key).await {
            Ok(got) => (Outcome::Ok, Some(got.value), None),
            Err(kvctl::ClientError::NotFound { .. }) => (Outcome::Ok, Some(serde_json::json!([])), None),
            Err(e) => (Outcome::Failed, None, Some(e.to_string())),
        };
        recorder.op(Op {
            id: 0,
            client: None,
            kind: OpKind::FinalRead,
            key: key.clone(),
            value: None,
            read,
            via: "leader".into(),
            invoke,
            complete: recorder.now(),
            outcome,
            error,
            index: None,
        });
    }
    Ok(())
}

/// Read every key from every replica's own copy (`consistency=stale`), recording each read as
/// a [`OpKind::ReplicaRead`]; call it once the cluster has converged, so that every replica
/// must equal the final state.
pub async fn replica_reads(
    nodes: &[NodeEndpoint],
    keys: &[String],
    recorder: &Recorder,
) -> Result<(), RunError> {
    replica_reads_with(nodes, keys, recorder, &Security::default()).await
}

/// [`replica_reads`] on a secured cluster.
pub async fn replica_reads_with(
    nodes: &[NodeEndpoint],
    keys: &[String],
    recorder: &Recorder,
    security: &Security,
) -> Result<(), RunError> {
    let transport = kvctl::transport::Transport::with_security(Duration::from_secs(2), security)
        .map_err(|e| WorkloadError::Setup(e.to_string()))?;
    for node in nodes {
        for key in keys {
            let invoke = recorder.now();
            let request = kvctl::transport::Request {
                method: reqwest::Method::GET,
                path: format!("{}?consistency=stale", kvctl::endpoint::key_path(key)),
                body: None,
                idempotency_key: None,
                precondition: None,
            };
            let answer = match transport
                .send(&node.http, &request, Duration::from_secs(10))
                .await
            {
                Ok(reply) => Ok((reply.status, reply.body)),
                Err(kvctl::transport::Failure::Answered { status, .. }) => Ok((status, Vec::new())),
                Err(failure) => Err(failure.describe()),
            };
            let (outcome, read, error) = match answer {
                Ok((200, body)) => match serde_json::from_slice::<kvapi::GetResponse>(&body) {
                    Ok(got) => (Outcome::Ok, Some(got.value), None),
                    Err(e) => (Outcome::Failed, None, Some(format!("unparseable answer: {e}"))),
                },
                Ok((404, _)) => (Outcome::Ok, Some(serde_json::json!([])), None),
                Ok((status, _)) => (Outcome::Failed, None, Some(format!("HTTP {status}"))),
                Err(e) => (Outcome::Failed, None, Some(e)),
            };
            recorder.op(Op {
                id: 0,
                client: None,
                kind: OpKind::ReplicaRead,
                key: key.clone(),
                value: None,
                read,
                via: format!("n{}", node.id),
                invoke,
                complete: recorder.now(),
                outcome,
                error,
                index: None,
            });
        }
    }
    Ok(())
}
