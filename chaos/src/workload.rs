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
//!   are. The attempt goes through kvctl's [`Transport`], the sender the client and `kvctl
//!   bench` use.
//!
//! Every operation is recorded with invoke and completion times and an [`Outcome`]. The mapping
//! from answers to outcomes must be conservative, because calling an operation "failed" when it
//! did land would be reported as a server bug. It is kvctl's one verdict,
//! [`kvctl::transport::fate`]: failed only when the request was never sent or kvnode itself
//! promises that nothing changed (a 4xx refusal, `503 unavailable` or `shutting_down`); every
//! other non-success is unknown. Every write carries a fresh UUIDv7 idempotency key, as kvctl's
//! do, so the cluster can tell its age.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvapi::{ErrorCode, NodeId, WriteKind};
use kvctl::client::new_idempotency_key;
use kvctl::security::Security;
use kvctl::transport::{fate, Failure, Fate, Request, Transport};
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
    /// The key slots, all of which get appends and reads. A slot moves on to a fresh key
    /// (`k0`, `k0.1`, `k0.2`, ...) every `appends_per_key` appends: every read returns the
    /// whole list of its key, so unbounded keys would make the history grow with the square of
    /// the run's length (a 10-minute run once needed 23 GB to check).
    pub keys: Vec<String>,
    /// Appends per key before its slot moves on to the next key.
    pub appends_per_key: u64,
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
    /// TLS and the token of a secured cluster.
    pub security: Security,
}

/// Appends per key before a slot moves on (see [`WorkloadConfig::keys`]): long enough for a
/// key to live through several faults, short enough that a read stays small.
pub const DEFAULT_APPENDS_PER_KEY: u64 = 200;

/// The key of `slot` that holds its append number `n`.
pub fn slot_key(slot: &str, n: u64, appends_per_key: u64) -> String {
    match n / appends_per_key.max(1) {
        0 => slot.to_string(),
        g => format!("{slot}.{g}"),
    }
}

impl WorkloadConfig {
    /// Defaults for `clients` clients on `keys` keys: half reads, half of the operations to
    /// random nodes, 5 s per operation.
    pub fn new(clients: usize, keys: usize, seed: u64) -> Self {
        WorkloadConfig {
            clients,
            keys: (0..keys).map(|k| format!("k{k}")).collect(),
            appends_per_key: DEFAULT_APPENDS_PER_KEY,
            read_fraction: 0.5,
            random_node_fraction: 0.5,
            op_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
            seed,
            stale_random_reads: false,
            security: Security::default(),
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
    let bare = Transport::with_security(Duration::from_millis(500), &config.security)
        .map_err(|e| WorkloadError::Setup(e.to_string()))?;
    let appended: Arc<Vec<AtomicU64>> = Arc::new(config.keys.iter().map(|_| AtomicU64::new(0)).collect());
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..config.clients {
        let client = kvctl_client_with(nodes, config.op_timeout, &config.security)?;
        let worker = Worker {
            id: c as u32,
            config: config.clone(),
            nodes: nodes.to_vec(),
            kvctl: client,
            bare: bare.clone(),
            recorder: recorder.clone(),
            rng: StdRng::seed_from_u64(config.seed.wrapping_mul(1_000_003).wrapping_add(c as u64)),
            appended: appended.clone(),
        };
        let stop = stop.clone();
        tasks.spawn(worker.run(stop));
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// A kvctl client for these nodes with the given operation bound.
pub fn kvctl_client(nodes: &[NodeEndpoint], timeout: Duration) -> Result<Client, WorkloadError> {
    kvctl_client_with(nodes, timeout, &Security::default())
}

/// [`kvctl_client`] for a secured cluster.
pub fn kvctl_client_with(
    nodes: &[NodeEndpoint],
    timeout: Duration,
    security: &Security,
) -> Result<Client, WorkloadError> {
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
    // A paused node must not hold discovery longer than an attempt.
    config.probe_timeout = config.attempt_timeout;
    config.security = security.clone();
    Client::new(config).map_err(|e| WorkloadError::Setup(e.to_string()))
}

struct Worker {
    id: u32,
    config: WorkloadConfig,
    nodes: Vec<NodeEndpoint>,
    kvctl: Client,
    bare: Transport,
    recorder: Recorder,
    rng: StdRng,
    /// Appends started per key slot, shared by all clients: which key a slot is on.
    appended: Arc<Vec<AtomicU64>>,
}

/// What one attempt came to, before it is stamped into an [`Op`].
struct Attempt {
    outcome: Outcome,
    read: Option<Value>,
    error: Option<String>,
    /// The log index an acknowledged write was applied at.
    index: Option<u64>,
}

impl Attempt {
    fn ok(read: Option<Value>) -> Self {
        Attempt {
            outcome: Outcome::Ok,
            read,
            error: None,
            index: None,
        }
    }
    fn written(index: u64) -> Self {
        Attempt {
            index: Some(index),
            ..Attempt::ok(None)
        }
    }
    fn not_ok(outcome: Outcome, error: impl Into<String>) -> Self {
        Attempt {
            outcome,
            read: None,
            error: Some(error.into()),
            index: None,
        }
    }
}

impl Worker {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let slot = self.rng.gen_range(0..self.config.keys.len());
            let read = self.rng.gen_bool(self.config.read_fraction);
            let counter = &self.appended[slot];
            let position = if read {
                counter.load(Ordering::Relaxed)
            } else {
                counter.fetch_add(1, Ordering::Relaxed)
            };
            let key = slot_key(&self.config.keys[slot], position, self.config.appends_per_key);
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
                index: result.index,
            });
            // A short, random think time keeps the history readable and the clients out of
            // lockstep without starving the cluster of load.
            let think = self.rng.gen_range(0..=5);
            tokio::time::sleep(Duration::from_millis(think)).await;
        }
    }

    async fn append_via_leader(&self, key: &str, value: &str) -> Attempt {
        let idem = new_idempotency_key();
        match self
            .kvctl
            .write(key, WriteKind::Append, Value::from(value), &idem)
            .await
        {
            Ok(written) => Attempt::written(written.response.index),
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
        let request = Request {
            method: reqwest::Method::POST,
            path: kvctl::endpoint::key_path(key),
            body: Some(body.into_bytes()),
            idempotency_key: Some(new_idempotency_key()),
            precondition: None,
        };
        match self
            .bare
            .send(&node.http, &request, self.config.attempt_timeout)
            .await
        {
            Ok(reply) => match serde_json::from_slice::<kvapi::WriteResponse>(&reply.body) {
                Ok(written) => Attempt::written(written.index),
                // A 200 without a write's answer still says the write was applied.
                Err(_) => Attempt::ok(None),
            },
            Err(failure) => {
                let outcome = match fate(&failure, true) {
                    Fate::NotApplied => Outcome::Failed,
                    Fate::MaybeApplied => Outcome::Unknown,
                };
                Attempt::not_ok(outcome, failure.describe())
            }
        }
    }

    async fn read_at(&self, node: &NodeEndpoint, key: &str) -> Attempt {
        let mut path = kvctl::endpoint::key_path(key);
        if self.config.stale_random_reads {
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
            .bare
            .send(&node.http, &request, self.config.attempt_timeout)
            .await
        {
            Ok(reply) => match serde_json::from_slice::<kvapi::GetResponse>(&reply.body) {
                Ok(got) => Attempt::ok(Some(got.value)),
                // A 200 whose body is not a GetResponse is a server bug the checker should see.
                Err(_) => Attempt {
                    outcome: Outcome::Ok,
                    read: Some(serde_json::from_slice(&reply.body).unwrap_or(Value::Null)),
                    error: Some("unparseable 200 answer".into()),
                    index: None,
                },
            },
            Err(Failure::Answered {
                code: Some(ErrorCode::KeyNotFound),
                ..
            }) => Attempt::ok(Some(Value::Array(Vec::new()))),
            // A read changes nothing, so a read that did not answer simply failed.
            Err(failure) => Attempt::not_ok(Outcome::Failed, failure.describe()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_moves_on_to_a_fresh_key_every_so_many_appends() {
        let keys: Vec<String> = (0..450).map(|n| slot_key("k2", n, 200)).collect();
        assert_eq!(keys[0], "k2");
        assert_eq!(keys[199], "k2");
        assert_eq!(keys[200], "k2.1");
        assert_eq!(keys[449], "k2.2");
    }
}
