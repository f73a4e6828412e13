//! The async client: leader discovery, request routing and retries with exactly-once writes.
//!
//! Any node accepts any request and forwards it to the leader, so a client could talk to any
//! node. Going straight to the leader saves a hop and, more importantly, makes failures honest:
//! when the leader dies the client sees it at once instead of through a follower's forwarding
//! timeout. So the [`Client`] keeps a cached leader and finds it by asking the nodes
//! ([`discovery`]). Each attempt is one exchange through the shared
//! [`Transport`](crate::transport::Transport); the loop around the attempts ([`attempts`])
//! judges each failure with [`retry::judge`](crate::retry::judge), waits a jittered backoff (or
//! the server's `Retry-After`, whichever is longer) and tries again.
//!
//! Every operation runs against one deadline (the `timeout` of [`ClientConfig`]), which bounds
//! discovery, attempts and backoff together: an operator's `--timeout 5s` means the command
//! ends within about five seconds, whatever the cluster does. One attempt may take up to
//! `attempt_timeout`, which is longer than the server's own waits (for a leader during an
//! election, for a commit), so when the server gives up first the user reads the server's
//! reason rather than a bare "no answer".
//!
//! Writes are exactly-once. Each logical write gets a fresh idempotency key, and every attempt
//! of that write sends the same key, so a write whose first attempt committed but whose answer
//! was lost is answered from the server's idempotency table on the retry, not applied twice.
//! The table forgets a key [`kvapi::IDEMPOTENCY_RETENTION`] after its last use, after which a
//! late retry could be applied a second time; so keys are UUIDv7, which carry their creation
//! time, and a write is retried only within [`WRITE_WINDOW`] of its key's creation, whatever
//! the timeout. When the retries end while some attempt may have applied the write, the error
//! is [`ClientError::OutcomeUnknown`] with the key, never a misleading "unavailable".
//!
//! A write may carry a condition ([`Client::write_if`], [`Client::delete_if`]); a condition
//! that does not hold is final ([`ClientError::PreconditionFailed`]): with the same
//! idempotency key on every attempt, a `412` cannot be the echo of the write's own first
//! copy, whose success the server would have replayed instead.
//!
//! Stale reads do not need a leader: they go to the cached leader when there is one, otherwise
//! to each node in turn, so they keep working when the cluster has lost its quorum.

mod attempts;
mod discovery;
mod members;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kvapi::{
    Consistency, GetResponse, KeysResponse, NodeId, Precondition, Term, WriteBody, WriteKind, WriteResponse,
    MAX_KEY_BYTES,
};
use serde::Serialize;
use serde_json::Value;

use crate::endpoint::{encode_component, key_path, Endpoint};
use crate::error::{format_duration, ClientError};
use crate::retry::RetryPolicy;
use crate::survey::{NodeReport, Survey};
use crate::transport::{Request, Transport};

/// How long kvctl keeps retrying one write, counted from the creation of its idempotency key:
/// the cluster's retention of keys ([`kvapi::IDEMPOTENCY_RETENTION`], 10 minutes) less one
/// minute, which covers a client clock that runs behind the cluster's log clock and the last
/// attempt's own time on the wire.
pub const WRITE_WINDOW: Duration = Duration::from_secs(kvapi::IDEMPOTENCY_RETENTION.as_secs() - 60);

/// The default bound on one attempt: longer than the longest the server itself waits before
/// it answers (for a leader during an election, or for a write to commit), so that its `503`
/// or `504`, with its reason, arrives instead of being cut off.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = {
    let wait = if kvapi::DEFAULT_LEADER_WAIT.as_millis() > kvapi::DEFAULT_WRITE_TIMEOUT.as_millis() {
        kvapi::DEFAULT_LEADER_WAIT
    } else {
        kvapi::DEFAULT_WRITE_TIMEOUT
    };
    Duration::from_secs(wait.as_secs() + 1)
};

/// The default bound on one status request. A node answers its status at once, without
/// waiting for anything, so this needs no room for the server's waits.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How a [`Client`] reaches the cluster and how patient it is.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The nodes to ask; at least one.
    pub endpoints: Vec<Endpoint>,
    /// Bound on a whole operation: discovery, every attempt and every backoff. A write's
    /// retries also end [`WRITE_WINDOW`] after its key was created, if that comes first.
    pub timeout: Duration,
    /// Bound on one request exchange. A slow attempt is abandoned and retried (writes keep
    /// their idempotency key, so this is safe) instead of eating the whole budget; it should
    /// exceed the server's own waits ([`DEFAULT_ATTEMPT_TIMEOUT`]).
    pub attempt_timeout: Duration,
    /// Bound on one status request (discovery, `status`, `leader`).
    pub probe_timeout: Duration,
    /// How reads are served.
    pub consistency: Consistency,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// TLS and the bearer token.
    pub security: crate::security::Security,
}

impl ClientConfig {
    /// Every node of a cluster file, with the defaults of [`ClientConfig::new`].
    pub fn from_cluster(file: &kvapi::ClusterFile) -> Self {
        Self::new(Endpoint::from_cluster_file(file))
    }

    /// A comma-separated list of `host:port` or `http://host:port`, with the defaults of
    /// [`ClientConfig::new`].
    pub fn from_endpoints(list: &str) -> Result<Self, crate::endpoint::EndpointError> {
        Ok(Self::new(Endpoint::parse_list(list)?))
    }

    /// Defaults: 10 s per operation, [`DEFAULT_ATTEMPT_TIMEOUT`] per attempt,
    /// [`DEFAULT_PROBE_TIMEOUT`] per status request, linearizable reads.
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        ClientConfig {
            endpoints,
            timeout: Duration::from_secs(10),
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            consistency: Consistency::Linearizable,
            retry: RetryPolicy::default(),
            security: Default::default(),
        }
    }
}

/// The result of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The server's answer.
    pub response: WriteResponse,
    /// True when the server answered from its idempotency table: an earlier attempt of this
    /// write had already been applied.
    pub replayed: bool,
    /// The idempotency key the write carried.
    pub idempotency_key: String,
    /// How many attempts were sent.
    pub attempts: u32,
}

/// The current leader, confirmed by a majority of the voters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderInfo {
    /// Its id.
    pub id: NodeId,
    /// Its client address, `host:port`.
    pub address: String,
    /// The term it leads in.
    pub term: Term,
}

/// A node a request is sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    id: Option<NodeId>,
    address: String,
}

/// One request and how it may be routed.
struct Call {
    request: Request,
    /// A read that any node may serve from its own replica.
    stale: bool,
}

/// A successful exchange.
struct Answer {
    body: Vec<u8>,
    replayed: bool,
    attempts: u32,
}

/// The async client of a kvnode cluster. Cheap to share behind an `Arc`; all methods take
/// `&self`.
#[derive(Debug)]
pub struct Client {
    transport: Transport,
    config: ClientConfig,
    leader: Mutex<Option<Target>>,
    /// Addresses of nodes by id, from the cluster file and learned from status answers, so that
    /// a leader hint carrying only an id can still be followed.
    addresses: Mutex<HashMap<NodeId, String>>,
    /// Rotation for stale reads when no leader is cached.
    next_node: AtomicUsize,
}

impl Client {
    /// Build a client. Fails only if the configuration has no endpoints or the HTTP stack
    /// cannot be set up.
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        if config.endpoints.is_empty() {
            return Err(ClientError::Other("no endpoints to connect to".into()));
        }
        let connect = Duration::from_secs(1)
            .min(config.attempt_timeout)
            .min(config.probe_timeout);
        let transport = Transport::with_security(connect, &config.security)
            .map_err(|e| ClientError::Other(e.to_string()))?;
        let addresses = config
            .endpoints
            .iter()
            .filter_map(|e| e.id.map(|id| (id, e.address.clone())))
            .collect();
        Ok(Client {
            transport,
            config,
            leader: Mutex::new(None),
            addresses: Mutex::new(addresses),
            next_node: AtomicUsize::new(0),
        })
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Replace the value of `key`.
    pub async fn put(&self, key: &str, value: Value) -> Result<WriteOutcome, ClientError> {
        self.write(key, WriteKind::Put, value, &new_idempotency_key())
            .await
    }

    /// Append `value` to the list (or string) at `key`.
    pub async fn append(&self, key: &str, value: Value) -> Result<WriteOutcome, ClientError> {
        self.write(key, WriteKind::Append, value, &new_idempotency_key())
            .await
    }

    /// Send a PUT or APPEND with a caller-chosen idempotency key. Callers that retry a write
    /// themselves (after [`ClientError::OutcomeUnknown`]) pass the same key again; a UUIDv7 key
    /// (see [`new_idempotency_key`]) is retried only within [`WRITE_WINDOW`] of its creation.
    pub async fn write(
        &self,
        key: &str,
        kind: WriteKind,
        value: Value,
        idempotency_key: &str,
    ) -> Result<WriteOutcome, ClientError> {
        self.write_if(key, kind, value, None, idempotency_key).await
    }

    /// [`Client::write`] applied only if `precondition` holds when the cluster applies it;
    /// otherwise [`ClientError::PreconditionFailed`] with the key's current `mod_index`, and
    /// nothing changed. Retries carry the same idempotency key, so a write whose first copy
    /// was applied is answered with that success, never with a `412` of its own making.
    pub async fn write_if(
        &self,
        key: &str,
        kind: WriteKind,
        value: Value,
        precondition: Option<Precondition>,
        idempotency_key: &str,
    ) -> Result<WriteOutcome, ClientError> {
        check_key(key)?;
        let body = serde_json::to_vec(&WriteBody { kind, value })
            .map_err(|e| ClientError::Other(format!("cannot encode the value: {e}")))?;
        let request = Request {
            method: reqwest::Method::POST,
            path: key_path(key),
            body: Some(body),
            idempotency_key: Some(idempotency_key.to_string()),
            precondition,
        };
        self.write_request(key, request).await
    }

    /// Delete `key`. Fails with [`ClientError::NotFound`] when it does not exist.
    pub async fn delete(&self, key: &str) -> Result<WriteOutcome, ClientError> {
        self.delete_with_key(key, &new_idempotency_key()).await
    }

    /// Delete with a caller-chosen idempotency key; see [`Client::write`].
    pub async fn delete_with_key(
        &self,
        key: &str,
        idempotency_key: &str,
    ) -> Result<WriteOutcome, ClientError> {
        self.delete_if(key, None, idempotency_key).await
    }

    /// Delete only if `precondition` holds when the cluster applies it; see
    /// [`Client::write_if`].
    pub async fn delete_if(
        &self,
        key: &str,
        precondition: Option<Precondition>,
        idempotency_key: &str,
    ) -> Result<WriteOutcome, ClientError> {
        check_key(key)?;
        let request = Request {
            method: reqwest::Method::DELETE,
            path: key_path(key),
            body: None,
            idempotency_key: Some(idempotency_key.to_string()),
            precondition,
        };
        self.write_request(key, request).await
    }

    async fn write_request(&self, key: &str, request: Request) -> Result<WriteOutcome, ClientError> {
        let idempotency_key = request.idempotency_key.clone().unwrap_or_default();
        let now = Instant::now();
        let window_left = write_window_left(&idempotency_key, SystemTime::now());
        if window_left.is_zero() {
            return Err(ClientError::OutcomeUnknown {
                reason: format!(
                    "the idempotency key is older than {}, and the cluster forgets keys {} \
                     after their last use: a retry now could apply the write a second time, so \
                     it is not sent",
                    format_duration(WRITE_WINDOW),
                    format_duration(kvapi::IDEMPOTENCY_RETENTION)
                ),
                idempotency_key,
            });
        }
        let deadline = now + self.config.timeout.min(window_left);
        let call = Call {
            request,
            stale: false,
        };
        let answer = self.execute(&call, key, deadline).await?;
        let response: WriteResponse = attempts::decode(&answer.body)?;
        Ok(WriteOutcome {
            response,
            replayed: answer.replayed,
            idempotency_key,
            attempts: answer.attempts,
        })
    }

    /// Read `key` with the configured consistency.
    pub async fn get(&self, key: &str) -> Result<GetResponse, ClientError> {
        check_key(key)?;
        let mut path = key_path(key);
        let stale = self.config.consistency == Consistency::Stale;
        if stale {
            path.push_str("?consistency=stale");
        }
        let call = Call {
            request: read_request(path),
            stale,
        };
        let deadline = Instant::now() + self.config.timeout;
        attempts::decode(&self.execute(&call, key, deadline).await?.body)
    }

    /// List keys starting with `prefix`, sorted, at most `limit` of them (server default when
    /// `None`).
    pub async fn keys(&self, prefix: &str, limit: Option<usize>) -> Result<KeysResponse, ClientError> {
        let mut path = format!("/keys?prefix={}", encode_component(prefix));
        if let Some(limit) = limit {
            path.push_str(&format!("&limit={limit}"));
        }
        let stale = self.config.consistency == Consistency::Stale;
        if stale {
            path.push_str("&consistency=stale");
        }
        let call = Call {
            request: read_request(path),
            stale,
        };
        let deadline = Instant::now() + self.config.timeout;
        attempts::decode(&self.execute(&call, prefix, deadline).await?.body)
    }

    /// Ask every node for its status and readiness, concurrently. Never fails: a node that does
    /// not answer is a report with its error. Members that a node reports but that are not among the
    /// endpoints are asked too, so `--endpoints` with one address still shows the whole
    /// cluster. Reports are sorted by id, nodes of unknown id last.
    pub async fn node_statuses(&self) -> Vec<NodeReport> {
        self.statuses_by(Instant::now() + self.config.timeout, true).await
    }

    /// The leader that a majority of the voters follow, asked of every member and retried
    /// until the deadline (an election normally ends within a second). A node that says it
    /// leads but that fewer than a majority of the voters answer and follow is not it: it
    /// cannot commit anything, and the error says so.
    pub async fn leader(&self) -> Result<LeaderInfo, ClientError> {
        let started = Instant::now();
        let deadline = started + self.config.timeout;
        let mut failures = 0;
        loop {
            let survey = Survey::from_reports(&self.statuses_by(deadline, false).await);
            let reason = match (survey.unavailable_reason(), survey.leader, &survey.leader_address) {
                (None, Some(id), Some(address)) => {
                    *lock(&self.leader) = Some(Target {
                        id: Some(id),
                        address: address.clone(),
                    });
                    return Ok(LeaderInfo {
                        id,
                        address: address.clone(),
                        term: survey.term.unwrap_or_default(),
                    });
                }
                (Some(reason), _, _) => reason,
                (None, _, _) => "no leader found".to_string(),
            };
            failures += 1;
            if self.pause(failures, deadline, &reason, None).await != attempts::Pause::Waited {
                return Err(ClientError::Unavailable {
                    reason,
                    waited: started.elapsed(),
                });
            }
        }
    }
}

fn read_request(path: String) -> Request {
    Request {
        method: reqwest::Method::GET,
        path,
        body: None,
        idempotency_key: None,
        precondition: None,
    }
}

/// A fresh idempotency key for one logical write: a UUIDv7, whose first 48 bits are its
/// creation time in Unix milliseconds, so that the client and the cluster can tell its age.
pub fn new_idempotency_key() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// When an idempotency key was created, if it is a UUIDv7.
pub fn idempotency_key_created(key: &str) -> Option<SystemTime> {
    let uuid = uuid::Uuid::parse_str(key).ok()?;
    if uuid.get_version() != Some(uuid::Version::SortRand) {
        return None;
    }
    let (seconds, nanos) = uuid.get_timestamp()?.to_unix();
    Some(UNIX_EPOCH + Duration::new(seconds, nanos))
}

/// How much of a write's retry window is left at `now`: [`WRITE_WINDOW`] from the key's
/// creation for a UUIDv7 key (a key from a clock ahead of ours counts as created now), the
/// whole window for any other key, whose age cannot be told.
fn write_window_left(key: &str, now: SystemTime) -> Duration {
    match idempotency_key_created(key) {
        Some(created) => {
            let age = now.duration_since(created).unwrap_or_default();
            WRITE_WINDOW.saturating_sub(age)
        }
        None => WRITE_WINDOW,
    }
}

/// Lock a mutex, recovering the data if a panicking thread poisoned it: the guarded values
/// (a cached leader, an address book) are always valid on their own.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Refuse keys the server would refuse anyway, without a round trip.
fn check_key(key: &str) -> Result<(), ClientError> {
    let problem = if key.is_empty() {
        "the key is empty".to_string()
    } else if key.len() > MAX_KEY_BYTES {
        format!(
            "the key is {} bytes long; the limit is {MAX_KEY_BYTES}",
            key.len()
        )
    } else {
        return Ok(());
    };
    Err(ClientError::Rejected {
        code: kvapi::ErrorCode::InvalidRequest,
        message: problem,
    })
}

#[cfg(test)]
mod tests;
