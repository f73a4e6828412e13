//! `kvctl bench`: a load generator and a report, in the style of etcd's `benchmark` tool.
//!
//! N workers each run one request at a time, back to back, for a fixed duration: PUTs, APPENDs,
//! GETs or a mix, on a fixed set of keys chosen by a seeded random generator, so a run can be
//! repeated exactly. Against `--target leader` the workers share one [`Client`] and so get its
//! leader discovery, retries and exactly-once writes; against `--target all` each worker sends
//! straight to one node (round robin over the nodes), which exercises forwarding.
//!
//! Every operation's latency is kept, so the report gives exact percentiles rather than
//! histogram estimates; an operation ends as ok, failed (an error the server or client says
//! changed nothing) or unknown (a write whose outcome was never confirmed). An APPEND run ends
//! by reading every key back and checking that each acknowledged append is present exactly once
//! and nothing appears that was never sent.
//!
//! `--system etcd` sends the same PUTs and GETs to etcd's JSON gateway instead (see [`etcd`]),
//! so that the two stores can be compared by one load generator in one run.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kvapi::{Consistency, ErrorCode, WriteBody, WriteKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;

use crate::client::new_idempotency_key;
use crate::endpoint::{key_path, Endpoint};
use crate::transport::{self, Failure, Fate, Request, Transport};
use crate::{Client, ClientConfig, ClientError};

mod etcd;

/// Which store receives the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// A kvnode cluster.
    Kv,
    /// An etcd 3.4 cluster, through its JSON gateway (PUT, GET and mixed workloads only).
    Etcd,
}

/// What the workers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Only PUTs.
    Put,
    /// Only APPENDs of unique values (verified at the end).
    Append,
    /// Only GETs (the keys are written once before the run).
    Get,
    /// GETs with this percentage, PUTs otherwise.
    Mixed {
        /// Percentage of reads, 0 to 100.
        read_percent: u8,
    },
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "put" => Ok(Workload::Put),
            "append" => Ok(Workload::Append),
            "get" => Ok(Workload::Get),
            _ => match s.strip_prefix("mixed:").map(str::parse::<u8>) {
                Some(Ok(p)) if p <= 100 => Ok(Workload::Mixed { read_percent: p }),
                _ => Err(format!(
                    "unknown workload {s:?}: use put, append, get or mixed:READ_PERCENT (0-100)"
                )),
            },
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Workload::Put => write!(f, "put"),
            Workload::Append => write!(f, "append"),
            Workload::Get => write!(f, "get"),
            Workload::Mixed { read_percent } => write!(f, "mixed:{read_percent}"),
        }
    }
}

/// Where requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// To the leader, through the client library.
    Leader,
    /// Straight to every node in turn; followers forward.
    All,
}

/// A benchmark to run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchSpec {
    /// Concurrent workers, each with one request in flight.
    pub clients: usize,
    /// How long to generate load.
    pub duration: Duration,
    /// What to do.
    pub workload: Workload,
    /// Number of distinct keys.
    pub keys: usize,
    /// Bytes of each written value (a JSON string of this many characters).
    pub value_size: usize,
    /// Read consistency.
    pub consistency: Consistency,
    /// Where requests go.
    pub target: Target,
    /// Seed of the random choices.
    pub seed: u64,
    /// Write a per-second CSV timeline here.
    pub timeline: Option<PathBuf>,
    /// Write every operation (start and end as Unix microseconds, outcome) as CSV here.
    pub ops_log: Option<PathBuf>,
    /// The store under load.
    pub system: System,
    /// Bound on one operation, retries included.
    pub op_timeout: Duration,
    /// TLS and token for a secured cluster.
    pub security: crate::security::Security,
}

impl BenchSpec {
    /// Why this benchmark cannot run as asked, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.system == System::Etcd && self.workload == Workload::Append {
            return Err(
                "--workload append needs kvnode: etcd has no APPEND (use put, get or mixed:N)".into(),
            );
        }
        Ok(())
    }
}

/// A tag unique to one run, put in front of every appended value, so that a run's read-back
/// ignores values left on the same keys by earlier runs.
fn run_tag() -> String {
    format!("r{:08x}", rand::random::<u32>())
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

/// One second of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Second {
    /// Seconds since the start.
    pub second: u64,
    /// Operations that completed ok in that second.
    pub ok: u64,
    /// Operations that failed or ended unknown in that second.
    pub errors: u64,
    /// Median latency of that second's ok operations, ms.
    pub p50: f64,
    /// 99th percentile latency of that second's ok operations, ms.
    pub p99: f64,
}

/// The result of an APPEND run's read-back.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Verification {
    /// Acknowledged appends found exactly once.
    pub acknowledged_once: u64,
    /// Acknowledged appends missing from the final state.
    pub lost: u64,
    /// Values present more than once.
    pub duplicated: u64,
    /// Values present that no worker sent, or whose append definitely failed.
    pub unexpected: u64,
    /// Appends with unknown outcome that turned out applied.
    pub unknown_applied: u64,
}

impl Verification {
    /// True when nothing was lost, duplicated or invented.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.unexpected == 0
    }
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The store under load.
    pub system: System,
    /// The workload.
    pub workload: Workload,
    /// Workers.
    pub clients: usize,
    /// Measured duration, seconds.
    pub duration_s: f64,
    /// Distinct keys.
    pub keys: usize,
    /// Value size, bytes.
    pub value_size: usize,
    /// Read consistency.
    pub consistency: Consistency,
    /// Where requests went.
    pub target: Target,
    /// Seed.
    pub seed: u64,
    /// Operations that succeeded (for GETs, including "key not found").
    pub ok: u64,
    /// Operations that definitely failed.
    pub errors: u64,
    /// Writes whose outcome is unknown.
    pub unknown: u64,
    /// Successful operations per second.
    pub throughput: f64,
    /// Latency of successful operations.
    pub latency_ms: Latency,
    /// The first few error messages, with counts.
    pub error_samples: Vec<(String, u64)>,
    /// Per-second figures.
    pub timeline: Vec<Second>,
    /// Read-back check of an APPEND run.
    pub verification: Option<Verification>,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The client could not be set up or the cluster could not be prepared.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The benchmark cannot run as asked (for example APPEND against etcd).
    #[error("{0}")]
    Setup(String),
    /// The timeline or the operations log could not be written.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    Unknown,
}

struct Sample {
    /// Microseconds from the start of the run to the end of the operation.
    done_us: u64,
    latency_us: u32,
    outcome: Outcome,
}

/// What one worker did.
#[derive(Default)]
struct WorkerLog {
    samples: Vec<Sample>,
    /// APPEND values by outcome.
    acked: Vec<String>,
    unknown: Vec<String>,
    failed: Vec<String>,
    errors: HashMap<String, u64>,
}

/// Shared live counters for the progress line.
#[derive(Default)]
struct Live {
    ok: AtomicU64,
    errors: AtomicU64,
    unknown: AtomicU64,
    recent_us: Mutex<Vec<u32>>,
}

/// Key `k` of a workload. APPEND runs get keys of their own: a PUT run leaves strings behind,
/// and appending to a string concatenates instead of pushing onto a list.
fn key_name(workload: Workload, k: usize) -> String {
    match workload {
        Workload::Append => format!("bench/list/{k:06}"),
        _ => format!("bench/kv/{k:06}"),
    }
}

fn filler(prefix: &str, size: usize) -> Value {
    let mut s = String::with_capacity(size.max(prefix.len()));
    s.push_str(prefix);
    while s.len() < size {
        s.push('x');
    }
    Value::String(s)
}

/// Sender for `--target all`: one attempt at one node, no retries, so that forwarding is what
/// is measured. A failed attempt is judged by [`transport::fate`], the verdict the client and the
/// chaos workload use too.
struct Direct {
    transport: Transport,
    address: String,
    consistency: Consistency,
    op_timeout: Duration,
}

impl Direct {
    async fn write(&self, key: &str, kind: WriteKind, value: Value) -> Result<(), (Outcome, String)> {
        let body =
            serde_json::to_vec(&WriteBody { kind, value }).map_err(|e| (Outcome::Failed, e.to_string()))?;
        let request = Request {
            method: reqwest::Method::POST,
            path: key_path(key),
            body: Some(body),
            idempotency_key: Some(new_idempotency_key()),
            precondition: None,
        };
        self.send(&request).await
    }

    async fn get(&self, key: &str) -> Result<(), (Outcome, String)> {
        let mut path = key_path(key);
        if self.consistency == Consistency::Stale {
            path.push_str("?consistency=stale");
        }
        let request = Request {
            method: reqwest::Method::GET,
            path,
            body: None,
            idempotency_key: None,
            precondition: None,
        };
        match self
            .transport
            .send(&self.address, &request, self.op_timeout)
            .await
        {
            // A read of a key not written yet is an answer like any other.
            Ok(_)
            | Err(Failure::Answered {
                code: Some(ErrorCode::KeyNotFound),
                ..
            }) => Ok(()),
            Err(failure) => Err((outcome_of(&failure, false), failure.describe())),
        }
    }

    async fn send(&self, request: &Request) -> Result<(), (Outcome, String)> {
        match self.transport.send(&self.address, request, self.op_timeout).await {
            Ok(_) => Ok(()),
            Err(failure) => Err((outcome_of(&failure, request.is_write()), failure.describe())),
        }
    }
}

/// How a failed single attempt counts in the report: the shared verdict of
/// [`transport::fate`].
fn outcome_of(failure: &Failure, is_write: bool) -> Outcome {
    match transport::fate(failure, is_write) {
        Fate::NotApplied => Outcome::Failed,
        Fate::MaybeApplied => Outcome::Unknown,
    }
}

/// What a request to etcd that got no answer did: one that never connected changed nothing;
/// any other may have been applied.
fn transport_outcome(e: &reqwest::Error) -> Outcome {
    if e.is_connect() {
        Outcome::Failed
    } else {
        Outcome::Unknown
    }
}

enum Sender {
    Leader(Arc<Client>),
    Direct(Direct),
    Etcd(etcd::Gateway),
}

impl Sender {
    async fn write(&self, key: &str, kind: WriteKind, value: Value) -> Result<(), (Outcome, String)> {
        match self {
            Sender::Leader(c) => c
                .write(key, kind, value, &new_idempotency_key())
                .await
                .map(|_| ())
                .map_err(classify),
            Sender::Direct(d) => d.write(key, kind, value).await,
            Sender::Etcd(g) => match kind {
                WriteKind::Put => g.put(key, &value).await,
                _ => Err((Outcome::Failed, "etcd has no APPEND".into())),
            },
        }
    }

    async fn get(&self, key: &str) -> Result<(), (Outcome, String)> {
        match self {
            Sender::Leader(c) => match c.get(key).await {
                Ok(_) | Err(ClientError::NotFound { .. }) => Ok(()),
                Err(e) => Err(classify(e)),
            },
            Sender::Direct(d) => d.get(key).await,
            Sender::Etcd(g) => g.get(key).await,
        }
    }
}

fn classify(e: ClientError) -> (Outcome, String) {
    let outcome = match e {
        ClientError::OutcomeUnknown { .. } => Outcome::Unknown,
        _ => Outcome::Failed,
    };
    (outcome, e.to_string())
}

fn client_for(endpoints: &[Endpoint], spec: &BenchSpec) -> Result<Client, ClientError> {
    let mut config = ClientConfig::new(endpoints.to_vec());
    config.security = spec.security.clone();
    config.timeout = spec.op_timeout;
    config.consistency = spec.consistency;
    Client::new(config)
}

/// Run a benchmark against the cluster at `endpoints`. `progress`: print a live line to stderr.
pub async fn run(
    endpoints: &[Endpoint],
    spec: &BenchSpec,
    progress: bool,
) -> Result<BenchReport, BenchError> {
    spec.check().map_err(BenchError::Setup)?;
    let client = Arc::new(client_for(endpoints, spec)?);
    let transport = Transport::with_security(Duration::from_secs(1), &spec.security)
        .map_err(|e| ClientError::Other(e.to_string()))?;
    // etcd's gateway has a sender of its own: its answers mean other things.
    crate::security::install_crypto_provider();
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(spec.op_timeout)
        .build()
        .map_err(|e| ClientError::Other(format!("cannot set up HTTP: {e}")))?;
    let etcd_leader = match (spec.system, spec.target) {
        (System::Etcd, Target::Leader) => Some(
            etcd::find_leader(&http, endpoints)
                .await
                .map_err(BenchError::Setup)?,
        ),
        _ => None,
    };
    let sender_for = |worker: usize| match (spec.system, spec.target, &etcd_leader) {
        (System::Kv, Target::Leader, _) => Sender::Leader(client.clone()),
        (System::Kv, Target::All, _) => Sender::Direct(Direct {
            transport: transport.clone(),
            address: endpoints[worker % endpoints.len()].address.clone(),
            consistency: spec.consistency,
            op_timeout: spec.op_timeout,
        }),
        (System::Etcd, _, Some(leader)) => {
            Sender::Etcd(etcd::Gateway::new(http.clone(), leader.clone(), spec.consistency))
        }
        (System::Etcd, _, None) => Sender::Etcd(etcd::Gateway::new(
            http.clone(),
            endpoints[worker % endpoints.len()].base_url(),
            spec.consistency,
        )),
    };
    // Reads need something to read: write every key once first (not measured).
    if matches!(spec.workload, Workload::Get | Workload::Mixed { .. }) {
        prepare_keys(&sender_for, spec).await?;
    }

    let live = Arc::new(Live::default());
    let tag = Arc::new(run_tag());
    let start = Instant::now();
    let start_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let deadline = start + spec.duration;
    let mut tasks = Vec::new();
    for worker in 0..spec.clients {
        let sender = sender_for(worker);
        let spec = spec.clone();
        let live = live.clone();
        let tag = tag.clone();
        tasks.push(tokio::spawn(async move {
            work(worker, sender, &spec, &tag, start, deadline, &live).await
        }));
    }
    let ticker = progress.then(|| tokio::spawn(show_progress(live.clone(), start, spec.duration)));

    let mut logs = Vec::new();
    for t in tasks {
        logs.push(
            t.await
                .map_err(|e| ClientError::Other(format!("worker failed: {e}")))?,
        );
    }
    let elapsed = start.elapsed();
    if let Some(t) = ticker {
        t.abort();
        eprint!("\r\x1b[2K");
    }

    let verification = if spec.workload == Workload::Append {
        Some(verify_appends(&client, spec, &tag, &logs).await?)
    } else {
        None
    };
    let report = summarize(spec, elapsed, &logs, verification);
    if let Some(path) = &spec.timeline {
        write_timeline(path, &report.timeline).map_err(|source| BenchError::Output {
            path: path.clone(),
            source,
        })?;
    }
    if let Some(path) = &spec.ops_log {
        write_ops_log(path, start_unix, &logs).map_err(|source| BenchError::Output {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report)
}

async fn prepare_keys(sender_for: &dyn Fn(usize) -> Sender, spec: &BenchSpec) -> Result<(), BenchError> {
    let value = filler("init-", spec.value_size);
    let writers = 32.min(spec.keys.max(1));
    let mut set = tokio::task::JoinSet::new();
    for w in 0..writers {
        let sender = sender_for(w);
        let value = value.clone();
        let keys = spec.keys;
        set.spawn(async move {
            for k in (w..keys).step_by(writers) {
                sender
                    .write(&key_name(Workload::Put, k), WriteKind::Put, value.clone())
                    .await
                    .map_err(|(_, e)| e)?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| e.to_string())
            .and_then(|written| written)
            .map_err(|e| BenchError::Setup(format!("preparing keys failed: {e}")))?;
    }
    Ok(())
}

async fn work(
    worker: usize,
    sender: Sender,
    spec: &BenchSpec,
    tag: &str,
    start: Instant,
    deadline: Instant,
    live: &Live,
) -> WorkerLog {
    let mut rng = StdRng::seed_from_u64(spec.seed.wrapping_mul(1_000_003).wrapping_add(worker as u64));
    let mut log = WorkerLog::default();
    let mut seq = 0u64;
    while Instant::now() < deadline {
        let key = key_name(spec.workload, rng.gen_range(0..spec.keys.max(1)));
        let read = match spec.workload {
            Workload::Get => true,
            Workload::Put | Workload::Append => false,
            Workload::Mixed { read_percent } => rng.gen_range(0..100) < u32::from(read_percent),
        };
        let began = Instant::now();
        let (result, appended) = if read {
            (sender.get(&key).await, None)
        } else if spec.workload == Workload::Append {
            let unique = format!("{tag}-w{worker}-{seq}-");
            seq += 1;
            let value = filler(&unique, spec.value_size);
            (
                sender.write(&key, WriteKind::Append, value.clone()).await,
                Some(value),
            )
        } else {
            let value = filler(&format!("w{worker}-{seq}-"), spec.value_size);
            seq += 1;
            (sender.write(&key, WriteKind::Put, value).await, None)
        };
        let latency = began.elapsed();
        let outcome = match &result {
            Ok(()) => Outcome::Ok,
            Err((o, _)) => *o,
        };
        if let Err((_, msg)) = &result {
            *log.errors.entry(msg.clone()).or_default() += 1;
        }
        if let Some(Value::String(v)) = appended {
            match outcome {
                Outcome::Ok => log.acked.push(v),
                Outcome::Unknown => log.unknown.push(v),
                Outcome::Failed => log.failed.push(v),
            }
        }
        let counter = match outcome {
            Outcome::Ok => &live.ok,
            Outcome::Failed => &live.errors,
            Outcome::Unknown => &live.unknown,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let latency_us = latency.as_micros().min(u128::from(u32::MAX)) as u32;
        if outcome == Outcome::Ok {
            if let Ok(mut recent) = live.recent_us.lock() {
                recent.push(latency_us);
            }
        }
        log.samples.push(Sample {
            done_us: start.elapsed().as_micros().min(u128::from(u64::MAX)) as u64,
            latency_us,
            outcome,
        });
    }
    log
}

async fn show_progress(live: Arc<Live>, start: Instant, duration: Duration) {
    let mut last_ok = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let ok = live.ok.load(Ordering::Relaxed);
        let mut recent = live
            .recent_us
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        recent.sort_unstable();
        let p99 = percentile(&recent, 0.99);
        eprint!(
            "\r\x1b[2K  {:>3.0}s/{}s  {:>8} ops/s  p99 {:>7.2} ms  errors {}  unknown {}",
            start.elapsed().as_secs_f64(),
            duration.as_secs(),
            ok - last_ok,
            p99,
            live.errors.load(Ordering::Relaxed),
            live.unknown.load(Ordering::Relaxed),
        );
        let _ = std::io::stderr().flush();
        last_ok = ok;
    }
}

/// The `q` quantile (0..=1) of sorted microsecond samples, in milliseconds.
pub fn percentile(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted_us.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[i]) / 1000.0
}

fn latency_of(mut us: Vec<u32>) -> Latency {
    us.sort_unstable();
    Latency {
        p50: percentile(&us, 0.50),
        p90: percentile(&us, 0.90),
        p99: percentile(&us, 0.99),
        p999: percentile(&us, 0.999),
        max: us.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
    }
}

fn summarize(
    spec: &BenchSpec,
    elapsed: Duration,
    logs: &[WorkerLog],
    verification: Option<Verification>,
) -> BenchReport {
    let mut ok = 0;
    let mut errors = 0;
    let mut unknown = 0;
    let mut ok_us = Vec::new();
    let mut per_second: Vec<(u64, u64, Vec<u32>)> = Vec::new();
    let mut error_counts: HashMap<String, u64> = HashMap::new();
    for log in logs {
        for (msg, n) in &log.errors {
            *error_counts.entry(msg.clone()).or_default() += n;
        }
        for s in &log.samples {
            let sec = s.done_us / 1_000_000;
            while per_second.len() as u64 <= sec {
                per_second.push((0, 0, Vec::new()));
            }
            let slot = &mut per_second[sec as usize];
            match s.outcome {
                Outcome::Ok => {
                    ok += 1;
                    ok_us.push(s.latency_us);
                    slot.0 += 1;
                    slot.2.push(s.latency_us);
                }
                Outcome::Failed => {
                    errors += 1;
                    slot.1 += 1;
                }
                Outcome::Unknown => {
                    unknown += 1;
                    slot.1 += 1;
                }
            }
        }
    }
    let timeline = per_second
        .into_iter()
        .enumerate()
        .map(|(i, (ok, errors, us))| {
            let l = latency_of(us);
            Second {
                second: i as u64,
                ok,
                errors,
                p50: l.p50,
                p99: l.p99,
            }
        })
        .collect();
    let mut error_samples: Vec<(String, u64)> = error_counts.into_iter().collect();
    error_samples.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    error_samples.truncate(5);
    let secs = elapsed.as_secs_f64().max(1e-9);
    BenchReport {
        system: spec.system,
        workload: spec.workload,
        clients: spec.clients,
        duration_s: secs,
        keys: spec.keys,
        value_size: spec.value_size,
        consistency: spec.consistency,
        target: spec.target,
        seed: spec.seed,
        ok,
        errors,
        unknown,
        throughput: ok as f64 / secs,
        latency_ms: latency_of(ok_us),
        error_samples,
        timeline,
        verification,
    }
}

async fn verify_appends(
    client: &Client,
    spec: &BenchSpec,
    tag: &str,
    logs: &[WorkerLog],
) -> Result<Verification, ClientError> {
    let mut expected: HashMap<&str, Outcome> = HashMap::new();
    for log in logs {
        for v in &log.acked {
            expected.insert(v, Outcome::Ok);
        }
        for v in &log.unknown {
            expected.insert(v, Outcome::Unknown);
        }
        for v in &log.failed {
            expected.insert(v, Outcome::Failed);
        }
    }
    let mut seen: HashMap<String, u64> = HashMap::new();
    for k in 0..spec.keys {
        match client.get(&key_name(Workload::Append, k)).await {
            Ok(r) => {
                if let Value::Array(items) = r.value {
                    for item in items {
                        match item {
                            // Another run's value: not this run's business.
                            Value::String(s) if !s.starts_with(tag) => {}
                            Value::String(s) => *seen.entry(s).or_default() += 1,
                            // Anything else on a bench key was never sent by any run.
                            other => *seen.entry(other.to_string()).or_default() += 1,
                        }
                    }
                }
            }
            Err(ClientError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let mut v = Verification::default();
    for (value, outcome) in &expected {
        let n = seen.get(*value).copied().unwrap_or(0);
        match (outcome, n) {
            (Outcome::Ok, 0) => v.lost += 1,
            (Outcome::Ok, 1) => v.acknowledged_once += 1,
            (Outcome::Unknown, 1) => v.unknown_applied += 1,
            (Outcome::Failed, n) if n > 0 => v.unexpected += 1,
            _ => {}
        }
        if n > 1 {
            v.duplicated += 1;
        }
    }
    v.unexpected += seen.keys().filter(|s| !expected.contains_key(s.as_str())).count() as u64;
    Ok(v)
}

fn write_timeline(path: &PathBuf, timeline: &[Second]) -> std::io::Result<()> {
    let mut out = String::from("second,ok,errors,p50_ms,p99_ms\n");
    for s in timeline {
        out.push_str(&format!(
            "{},{},{},{:.3},{:.3}\n",
            s.second, s.ok, s.errors, s.p50, s.p99
        ));
    }
    std::fs::write(path, out)
}

/// One line per operation, in completion order: start and end in Unix microseconds, outcome.
/// Enough to find, for example, the longest stretch without a successful write.
fn write_ops_log(path: &PathBuf, start_unix: Duration, logs: &[WorkerLog]) -> std::io::Result<()> {
    let origin = start_unix.as_micros() as u64;
    let mut ops: Vec<&Sample> = logs.iter().flat_map(|l| &l.samples).collect();
    ops.sort_by_key(|s| s.done_us);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "start_unix_us,end_unix_us,outcome")?;
    for s in ops {
        let end = origin + s.done_us;
        let outcome = match s.outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        };
        writeln!(
            out,
            "{},{end},{outcome}",
            end.saturating_sub(u64::from(s.latency_us))
        )?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Render the report for people.
pub fn write_report(w: &mut dyn Write, r: &BenchReport) -> std::io::Result<()> {
    writeln!(
        w,
        "workload     {}{} on {} keys, {}-byte values, {} clients, target {}, {} reads, seed {}",
        if r.system == System::Etcd { "etcd " } else { "" },
        r.workload,
        r.keys,
        r.value_size,
        r.clients,
        match r.target {
            Target::Leader => "leader",
            Target::All => "all nodes",
        },
        r.consistency.as_str(),
        r.seed
    )?;
    writeln!(
        w,
        "operations   {} ok, {} failed, {} unknown in {:.1} s",
        r.ok, r.errors, r.unknown, r.duration_s
    )?;
    writeln!(w, "throughput   {:.0} ops/s", r.throughput)?;
    let l = &r.latency_ms;
    writeln!(
        w,
        "latency      p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        l.p50, l.p90, l.p99, l.p999, l.max
    )?;
    for (msg, n) in &r.error_samples {
        writeln!(w, "error        {n} x {msg}")?;
    }
    if let Some(v) = &r.verification {
        let verdict = if v.passed() { "passed" } else { "FAILED" };
        writeln!(
            w,
            "verified     {verdict}: {} acknowledged appends present exactly once, {} lost, {} duplicated, {} unexpected, {} unknown-outcome appends applied",
            v.acknowledged_once, v.lost, v.duplicated, v.unexpected, v.unknown_applied
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--target all` counts a failed attempt by the same verdict as the client and the chaos
    /// workload: an unlisted 5xx on a write may have been applied.
    #[test]
    fn single_attempts_are_counted_by_the_shared_verdict() {
        let answered = |status, code| Failure::Answered {
            status,
            code,
            message: "m".into(),
            leader: None,
            retry_after: None,
            current: None,
        };
        assert!(outcome_of(&answered(500, None), true) == Outcome::Unknown);
        assert!(outcome_of(&answered(502, None), true) == Outcome::Unknown);
        assert!(outcome_of(&answered(500, None), false) == Outcome::Failed);
        let unavailable = answered(503, Some(kvapi::ErrorCode::Unavailable));
        assert!(outcome_of(&unavailable, true) == Outcome::Failed);
        let expired = answered(422, Some(kvapi::ErrorCode::IdempotencyKeyExpired));
        assert!(outcome_of(&expired, true) == Outcome::Unknown);
        assert!(outcome_of(&Failure::NotSent("refused".into()), true) == Outcome::Failed);
    }

    #[test]
    fn workloads_parse_and_print_back() {
        for s in ["put", "append", "get", "mixed:90", "mixed:0", "mixed:100"] {
            assert_eq!(s.parse::<Workload>().expect(s).to_string(), s);
        }
        for bad in ["mixed", "mixed:101", "mixed:x", "delete", ""] {
            assert!(bad.parse::<Workload>().is_err(), "{bad}");
        }
    }

    #[test]
    fn percentiles_are_exact_ranks() {
        let us: Vec<u32> = (1..=1000).map(|i| i * 1000).collect();
        assert_eq!(percentile(&us, 0.5), 500.0);
        assert_eq!(percentile(&us, 0.99), 990.0);
        assert_eq!(percentile(&us, 0.999), 999.0);
        assert_eq!(percentile(&us, 1.0), 1000.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7000], 0.01), 7.0);
    }

    #[test]
    fn values_have_the_requested_size_and_a_unique_prefix() {
        let v = filler("w1-2-", 100);
        assert_eq!(v.as_str().map(str::len), Some(100));
        assert!(v.as_str().is_some_and(|s| s.starts_with("w1-2-")));
        assert_eq!(filler("long-prefix", 3).as_str(), Some("long-prefix"));
    }

    #[test]
    fn verification_flags_lost_duplicated_and_invented_values() {
        let v = Verification {
            acknowledged_once: 3,
            ..Default::default()
        };
        assert!(v.passed());
        for bad in [
            Verification {
                lost: 1,
                ..Default::default()
            },
            Verification {
                duplicated: 1,
                ..Default::default()
            },
            Verification {
                unexpected: 1,
                ..Default::default()
            },
        ] {
            assert!(!bad.passed());
        }
    }

    #[test]
    fn the_report_names_every_figure() {
        let spec = BenchSpec {
            clients: 2,
            duration: Duration::from_secs(1),
            workload: Workload::Put,
            keys: 10,
            value_size: 100,
            consistency: Consistency::Linearizable,
            target: Target::Leader,
            seed: 7,
            timeline: None,
            ops_log: None,
            system: System::Kv,
            op_timeout: Duration::from_secs(1),
            security: Default::default(),
        };
        let log = WorkerLog {
            samples: vec![
                Sample {
                    done_us: 10_000,
                    latency_us: 1000,
                    outcome: Outcome::Ok,
                },
                Sample {
                    done_us: 1_500_000,
                    latency_us: 3000,
                    outcome: Outcome::Ok,
                },
                Sample {
                    done_us: 1_600_000,
                    latency_us: 9000,
                    outcome: Outcome::Unknown,
                },
            ],
            ..Default::default()
        };
        let r = summarize(&spec, Duration::from_secs(2), &[log], None);
        assert_eq!((r.ok, r.errors, r.unknown), (2, 0, 1));
        assert_eq!(r.throughput, 1.0);
        assert_eq!(r.latency_ms.max, 3.0);
        assert_eq!(r.timeline.len(), 2);
        assert_eq!(r.timeline[1].errors, 1);
        let mut out = Vec::new();
        write_report(&mut out, &r).expect("render");
        let text = String::from_utf8(out).expect("utf8");
        for needle in [
            "throughput   1 ops/s",
            "p99 3.00 ms",
            "2 ok, 0 failed, 1 unknown",
            "seed 7",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
    }
}
