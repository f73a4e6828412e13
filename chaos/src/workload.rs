//! The workload: W concurrent clients appending unique values to a few keys and reading them.
//!
//! Each client loops until told to stop: it picks a key, picks an APPEND of a value nobody else
//! will ever send (`c<client>-<n>`) or a linearizable GET, and picks a route:
//!
//! - **via the leader**: kvctl's [`Client`], which discovers the leader, retries with backoff
//!   and sends one idempotency key with every attempt of a write. This is the path real users
//!   take, and it exercises exactly-once writes across leader changes.
//! - **via a random node**: one bare HTTP attempt at a random node, which forwards to the
//!   leader. No retries, so forwarding, 503s and lost answers show up in the history as they
//!   are.
//!
//! Every operation is recorded with invoke and completion times and an [`Outcome`]. The mapping
//! from answers to outcomes is deliberately conservative, because calling an operation
//! "failed" when it did land would be reported as a server bug: only a request that was never
//! sent, a 4xx refusal, or a 503 whose code is `unavailable` (the server's promise that it never
//! proposed the write) count as failed; every other non-success is unknown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvapi::{NodeId, WriteKind};
use kvctl::{Client, ClientConfig, ClientError, Endpoint};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::history::{Op, OpKind, Outcome, Recorder};

/// How the clients behave.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Number of concurrent clients.
    pub clients: usize,
    /// The keys, all of which get appends and reads.
    pub keys: Vec<String>,
    /// Fraction of operations that are reads.
    pub read_fraction: f64,
    /// Fraction of operations sent to a random node instead of through the leader.
    pub random_node_fraction: f64,
    /// Bound on one operation through kvctl's client (discovery and retries included).
    pub op_timeout: Duration,
    /// Bound on one bare attempt at a random node.
    pub attempt_timeout: Duration,
    /// Seed of the clients' choices.
    pub seed: u64,
    /// Send the reads at random nodes with `consistency=stale`. Only for proving that the
    /// checker catches stale reads in a real run: such a run is expected to fail.
    pub stale_random_reads: bool,
}

impl WorkloadConfig {
    /// Defaults for `clients` clients on `keys` keys: half reads, half of the operations to
    /// random nodes, 5 s per operation.
    pub fn new(clients: usize, keys: usize, seed: u64) -> Self {
        WorkloadConfig {
            clients,
            keys: (0..keys).map(|k| format!("k{k}")).collect(),
            read_fraction: 0.5,
            random_node_fraction: 0.5,
            op_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
            seed,
            stale_random_reads: false,
        }
    }
}

/// One node's client address.
#[derive(Debug, Clone)]
pub struct NodeEndpoint {
    /// The node's id.
    pub id: NodeId,
    /// `host:port`.
    pub http: String,
}

/// Why the workload could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The HTTP stack could not be built.
    #[error("cannot set up a client: {0}")]
    Setup(String),
}

/// Run the clients until `stop` is set; every operation lands in `recorder`. Operations in
/// flight when `stop` is set run to completion (bounded by their timeouts).
pub async fn run(
    config: &WorkloadConfig,
    nodes: &[NodeEndpoint],
    recorder: &Recorder,
    stop: Arc<AtomicBool>,
) -> Result<(), WorkloadError> {
    let bare = bare_http(config.attempt_timeout)?;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..config.clients {
        let client = kvctl_client(nodes, config.op_timeout)?;
        let worker = Worker {
            id: c as u32,
            config: config.clone(),
            nodes: nodes.to_vec(),
            kvctl: client,
            bare: bare.clone(),
            recorder: recorder.clone(),
            rng: StdRng::seed_from_u64(config.seed.wrapping_mul(1_000_003).wrapping_add(c as u64)),
        };
        let stop = stop.clone();
        tasks.spawn(worker.run(stop));
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// A kvctl client for these nodes with the given operation bound.
pub fn kvctl_client(nodes: &[NodeEndpoint], timeout: Duration) -> Result<Client, WorkloadError> {
    let endpoints = nodes
        .iter()
        .map(|n| Endpoint {
            id: Some(n.id),
            address: n.http.clone(),
        })
        .collect();
    let mut config = ClientConfig::new(endpoints);
    config.timeout = timeout;
    config.attempt_timeout = Duration::from_millis(1500).min(timeout);
    Client::new(config).map_err(|e| WorkloadError::Setup(e.to_string()))
}

fn bare_http(timeout: Duration) -> Result<reqwest::Client, WorkloadError> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .map_err(|e| WorkloadError::Setup(e.to_string()))
}

struct Worker {
    id: u32,
    config: WorkloadConfig,
    nodes: Vec<NodeEndpoint>,
    kvctl: Client,
    bare: reqwest::Client,
    recorder: Recorder,
    rng: StdRng,
}

/// What one attempt came to, before it is stamped into an [`Op`].
struct Attempt {
    outcome: Outcome,
    read: Option<Value>,
    error: Option<String>,
}

impl Attempt {
    fn ok(read: Option<Value>) -> Self {
        Attempt {
            outcome: Outcome::Ok,
            read,
            error: None,
        }
    }
    fn not_ok(outcome: Outcome, error: impl Into<String>) -> Self {
        Attempt {
            outcome,
            read: None,
            error: Some(error.into()),
        }
    }
}

impl Worker {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let key = self.config.keys[self.rng.gen_range(0..self.config.keys.len())].clone();
            let read = self.rng.gen_bool(self.config.read_fraction);
            let node = self
                .rng
                .gen_bool(self.config.random_node_fraction)
                .then(|| self.nodes[self.rng.gen_range(0..self.nodes.len())].clone());
            let via = node
                .as_ref()
                .map(|n| format!("n{}", n.id))
                .unwrap_or_else(|| "leader".into());
            let value = (!read).then(|| {
                n += 1;
                format!("c{}-{}", self.id, n)
            });
            let invoke = self.recorder.now();
            let result = match (&value, &node) {
                (None, None) => self.read_via_leader(&key).await,
                (None, Some(node)) => self.read_at(node, &key).await,
                (Some(v), None) => self.append_via_leader(&key, v).await,
                (Some(v), Some(node)) => self.append_at(node, &key, v).await,
            };
            let complete = self.recorder.now();
            self.recorder.op(Op {
                id: 0,
                client: Some(self.id),
                kind: if read { OpKind::Read } else { OpKind::Append },
                key,
                value,
                read: result.read,
                via,
                invoke,
                complete,
                outcome: result.outcome,
                error: result.error,
            });
            // A short, random think time keeps the history readable and the clients out of
            // lockstep without starving the cluster of load.
            let think = self.rng.gen_range(0..=5);
            tokio::time::sleep(Duration::from_millis(think)).await;
        }
    }

    async fn append_via_leader(&self, key: &str, value: &str) -> Attempt {
        let idem = idempotency_key(value);
        match self
            .kvctl
            .write(key, WriteKind::Append, Value::from(value), &idem)
            .await
        {
            Ok(_) => Attempt::ok(None),
            // kvctl reports Unavailable only when no attempt may have been applied: every
            // attempt was refused before sending or answered 503 by the server.
            Err(e @ ClientError::Unavailable { .. }) => Attempt::not_ok(Outcome::Failed, e.to_string()),
            Err(e @ (ClientError::Rejected { .. } | ClientError::NotFound { .. })) => {
                Attempt::not_ok(Outcome::Failed, e.to_string())
            }
            Err(e) => Attempt::not_ok(Outcome::Unknown, e.to_string()),
        }
    }

    async fn read_via_leader(&self, key: &str) -> Attempt {
        match self.kvctl.get(key).await {
            Ok(got) => Attempt::ok(Some(got.value)),
            Err(ClientError::NotFound { .. }) => Attempt::ok(Some(Value::Array(Vec::new()))),
            Err(e) => Attempt::not_ok(Outcome::Failed, e.to_string()),
        }
    }

    async fn append_at(&self, node: &NodeEndpoint, key: &str, value: &str) -> Attempt {
        let body = serde_json::json!({"type": "APPEND", "value": value}).to_string();
        let request = self
            .bare
            .post(format!("http://{}{}", node.http, kvctl::endpoint::key_path(key)))
            .header(kvapi::IDEMPOTENCY_HEADER, idempotency_key(value))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        match request.send().await {
            Err(e) if e.is_connect() => Attempt::not_ok(Outcome::Failed, format!("not sent: {e}")),
            Err(e) => Attempt::not_ok(Outcome::Unknown, format!("no answer: {e}")),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.bytes().await;
                match (status, body) {
                    (200..=299, Ok(_)) => Attempt::ok(None),
                    (_, Err(e)) => {
                        Attempt::not_ok(Outcome::Unknown, format!("HTTP {status}, body lost: {e}"))
                    }
                    (_, Ok(bytes)) => {
                        let code = error_code(&bytes);
                        let what = format!("HTTP {status} {}", code.as_deref().unwrap_or("-"));
                        match (status, code.as_deref()) {
                            (503, Some("unavailable")) => Attempt::not_ok(Outcome::Failed, what),
                            (400..=499, Some(_)) => Attempt::not_ok(Outcome::Failed, what),
                            _ => Attempt::not_ok(Outcome::Unknown, what),
                        }
                    }
                }
            }
        }
    }

    async fn read_at(&self, node: &NodeEndpoint, key: &str) -> Attempt {
        let mut url = format!("http://{}{}", node.http, kvctl::endpoint::key_path(key));
        if self.config.stale_random_reads {
            url.push_str("?consistency=stale");
        }
        let resp = match self.bare.get(url).send().await {
            Ok(resp) => resp,
            Err(e) => return Attempt::not_ok(Outcome::Failed, format!("read failed: {e}")),
        };
        let status = resp.status().as_u16();
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Attempt::not_ok(Outcome::Failed, format!("read body lost: {e}")),
        };
        match status {
            200 => match serde_json::from_slice::<kvapi::GetResponse>(&bytes) {
                Ok(got) => Attempt::ok(Some(got.value)),
                // A 200 whose body is not a GetResponse is a server bug the checker should see.
                Err(_) => Attempt {
                    outcome: Outcome::Ok,
                    read: Some(serde_json::from_slice(&bytes).unwrap_or(Value::Null)),
                    error: Some("unparseable 200 answer".into()),
                },
            },
            404 if error_code(&bytes).as_deref() == Some("key_not_found") => {
                Attempt::ok(Some(Value::Array(Vec::new())))
            }
            _ => Attempt::not_ok(
                Outcome::Failed,
                format!("HTTP {status} {}", error_code(&bytes).unwrap_or_default()),
            ),
        }
    }
}

/// The idempotency key of the append of `value`: a fresh UUIDv7 per logical append (kvctl
/// reuses it on its own retries).
fn idempotency_key(_value: &str) -> String {
    kvctl::client::new_idempotency_key()
}

/// The `error.code` of a standard error envelope.
fn error_code(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v["error"]["code"].as_str().map(str::to_owned)
}
