//! The async client: leader discovery, request routing and retries with exactly-once writes.
//!
//! Any node accepts any request and forwards it to the leader, so a client could talk to any
//! node. Going straight to the leader saves a hop and, more importantly, makes failures honest:
//! when the leader dies the client sees it at once instead of through a follower's forwarding
//! timeout. So the [`Client`] keeps a cached leader, and finds it by asking every node for its
//! status at once: a node that says it leads wins, otherwise the freshest leader hint (highest
//! term) is followed. Answers are collected until a majority has spoken, so one stale node that
//! still believes it leads after a partition is outvoted by the newer term.
//!
//! Every operation runs against one deadline (the `timeout` of [`ClientConfig`]), which bounds
//! discovery, attempts and backoff together: an operator's `--timeout 5s` means the command
//! ends within about five seconds, whatever the cluster does. Inside that deadline a failed
//! attempt is judged by [`judge`]: on a refused connection, a timeout, a 503 or a leader
//! hint the client forgets its leader, waits a jittered backoff and tries again.
//!
//! Writes are exactly-once. Each logical write gets a fresh uuid v4 idempotency key, and every
//! attempt of that write sends the same key, so a write whose first attempt committed but whose
//! answer was lost is answered from the server's idempotency table on the retry, not applied
//! twice. When the deadline passes while some attempt may have applied the write, the error is
//! [`ClientError::OutcomeUnknown`] with the key, never a misleading "unavailable".
//!
//! Stale reads do not need a leader: they go to the cached leader when there is one, otherwise
//! to each node in turn, so they keep working when the cluster has lost its quorum.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kvapi::{
    Consistency, ErrorBody, GetResponse, KeysResponse, NodeId, Role, Status, Term, WriteBody, WriteKind,
    WriteResponse, IDEMPOTENCY_HEADER, MAX_KEY_BYTES, REPLAYED_HEADER,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::endpoint::{base_url, encode_component, key_path, Endpoint};
use crate::error::{format_duration, ClientError};
use crate::retry::{judge, Failure, RetryPolicy, Verdict};

/// How a [`Client`] reaches the cluster and how patient it is.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The nodes to ask; at least one.
    pub endpoints: Vec<Endpoint>,
    /// Bound on a whole operation: discovery, every attempt and every backoff.
    pub timeout: Duration,
    /// Bound on one HTTP exchange. A slow attempt is abandoned and retried (writes keep their
    /// idempotency key, so this is safe) instead of eating the whole budget.
    pub attempt_timeout: Duration,
    /// How reads are served.
    pub consistency: Consistency,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
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

    /// Defaults: 10 s per operation, 3 s per attempt, linearizable reads.
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        ClientConfig {
            endpoints,
            timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            consistency: Consistency::Linearizable,
            retry: RetryPolicy::default(),
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

/// The current leader, as confirmed by the leader itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderInfo {
    /// Its id.
    pub id: NodeId,
    /// Its client address, `host:port`.
    pub address: String,
    /// The term it leads in.
    pub term: Term,
}

/// One node's answer (or failure to answer) to a status request.
#[derive(Debug, Clone)]
pub struct NodeReport {
    /// The node's id: from the cluster file, else from its own answer.
    pub id: Option<NodeId>,
    /// Where it was asked.
    pub address: String,
    /// Its status, or why it could not be had.
    pub result: Result<Status, String>,
    /// How long the request took.
    pub elapsed: Duration,
}

/// A node a request is sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    id: Option<NodeId>,
    address: String,
}

/// One request, described independently of the node it is sent to.
struct Request {
    method: reqwest::Method,
    path: String,
    body: Option<Vec<u8>>,
    idempotency_key: Option<String>,
    /// Reads that any node may serve from its own replica.
    stale: bool,
}

impl Request {
    fn is_write(&self) -> bool {
        self.idempotency_key.is_some()
    }
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
    http: reqwest::Client,
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
        let http = reqwest::Client::builder()
            // Environment proxies would intercept cluster-internal addresses; never use them.
            .no_proxy()
            .connect_timeout(Duration::from_secs(1).min(config.attempt_timeout))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ClientError::Other(format!("cannot set up HTTP: {e}")))?;
        let addresses = config
            .endpoints
            .iter()
            .filter_map(|e| e.id.map(|id| (id, e.address.clone())))
            .collect();
        Ok(Client {
            http,
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
    /// themselves (after [`ClientError::OutcomeUnknown`]) pass the same key again.
    pub async fn write(
        &self,
        key: &str,
        kind: WriteKind,
        value: Value,
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
            stale: false,
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
        check_key(key)?;
        let request = Request {
            method: reqwest::Method::DELETE,
            path: key_path(key),
            body: None,
            idempotency_key: Some(idempotency_key.to_string()),
            stale: false,
        };
        self.write_request(key, request).await
    }

    async fn write_request(&self, key: &str, request: Request) -> Result<WriteOutcome, ClientError> {
        let answer = self.execute(&request, key).await?;
        let response: WriteResponse = decode(&answer.body)?;
        Ok(WriteOutcome {
            response,
            replayed: answer.replayed,
            idempotency_key: request.idempotency_key.unwrap_or_default(),
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
        let request = Request {
            method: reqwest::Method::GET,
            path,
            body: None,
            idempotency_key: None,
            stale,
        };
        decode(&self.execute(&request, key).await?.body)
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
        let request = Request {
            method: reqwest::Method::GET,
            path,
            body: None,
            idempotency_key: None,
            stale,
        };
        decode(&self.execute(&request, prefix).await?.body)
    }

    /// Ask every node for its status, concurrently. Never fails: a node that does not answer is
    /// a report with its error. Members that a node reports but that are not among the
    /// endpoints are asked too, so `--endpoints` with one address still shows the whole
    /// cluster. Reports are sorted by id, nodes of unknown id last.
    pub async fn node_statuses(&self) -> Vec<NodeReport> {
        let deadline = Instant::now() + self.config.timeout;
        let first: Vec<Target> = self
            .config
            .endpoints
            .iter()
            .map(|e| Target {
                id: e.id,
                address: e.address.clone(),
            })
            .collect();
        let mut reports = self.ask_statuses(first, deadline).await;

        let asked: Vec<String> = reports.iter().map(|r| r.address.clone()).collect();
        let mut extra: Vec<Target> = Vec::new();
        for report in &reports {
            if let Ok(status) = &report.result {
                for m in &status.members {
                    if !asked.contains(&m.http) && !extra.iter().any(|t| t.address == m.http) {
                        extra.push(Target {
                            id: Some(m.id),
                            address: m.http.clone(),
                        });
                    }
                }
            }
        }
        if !extra.is_empty() {
            reports.extend(self.ask_statuses(extra, deadline).await);
        }
        reports.sort_by(|a, b| (a.id.is_none(), a.id, &a.address).cmp(&(b.id.is_none(), b.id, &b.address)));
        reports
    }

    async fn ask_statuses(&self, targets: Vec<Target>, deadline: Instant) -> Vec<NodeReport> {
        let limit = self.attempt_limit(deadline);
        let mut set = JoinSet::new();
        for (i, target) in targets.into_iter().enumerate() {
            let http = self.http.clone();
            set.spawn(async move {
                let started = Instant::now();
                let result = fetch_status(&http, &target.address, limit).await;
                let report = NodeReport {
                    id: target.id.or_else(|| result.as_ref().ok().map(|s: &Status| s.id)),
                    address: target.address,
                    result: result.map_err(|f| f.describe()),
                    elapsed: started.elapsed(),
                };
                (i, report)
            });
        }
        let mut reports = Vec::new();
        while let Some(joined) = set.join_next().await {
            // A status task only panics on a bug; its node then simply has no report.
            if let Ok(pair) = joined {
                reports.push(pair);
            }
        }
        reports.sort_by_key(|(i, _)| *i);
        for (_, report) in &reports {
            if let Ok(status) = &report.result {
                self.learn(status);
            }
        }
        reports.into_iter().map(|(_, r)| r).collect()
    }

    /// Find the leader and have it confirm that it leads, retrying until the deadline.
    pub async fn leader(&self) -> Result<LeaderInfo, ClientError> {
        let started = Instant::now();
        let deadline = started + self.config.timeout;
        let mut failures = 0;
        let mut last_reason;
        loop {
            match self.discover(deadline).await {
                Ok(found) => {
                    let limit = self.attempt_limit(deadline);
                    match fetch_status(&self.http, &found.address, limit).await {
                        Ok(status) if status.role == Role::Leader => {
                            self.learn(&status);
                            return Ok(LeaderInfo {
                                id: status.id,
                                address: found.address,
                                term: status.term,
                            });
                        }
                        Ok(status) => {
                            last_reason = format!(
                                "node {} at {} was named leader but is a {}",
                                status.id,
                                found.address,
                                status.role.as_str()
                            );
                            self.forget_leader();
                        }
                        Err(failure) => {
                            last_reason = format!("leader {}: {}", found.address, failure.describe());
                            self.forget_leader();
                        }
                    }
                }
                Err(reason) => last_reason = reason,
            }
            failures += 1;
            if !self.pause(failures, deadline, &last_reason).await {
                return Err(ClientError::Unavailable {
                    reason: last_reason,
                    waited: started.elapsed(),
                });
            }
        }
    }

    /// Run one request to completion: route, send, judge failures, back off, retry.
    async fn execute(&self, request: &Request, key: &str) -> Result<Answer, ClientError> {
        let started = Instant::now();
        let deadline = started + self.config.timeout;
        let mut attempts = 0u32;
        let mut failures = 0u32;
        let mut doubt: Option<String> = None;
        let mut last_reason: String;
        loop {
            let target = if request.stale {
                Ok(self.any_node())
            } else {
                match self.cached_leader() {
                    Some(leader) => Ok(leader),
                    None => self.discover(deadline).await,
                }
            };
            match target {
                Err(reason) => last_reason = reason,
                Ok(target) => {
                    attempts += 1;
                    let limit = self.attempt_limit(deadline);
                    tracing::debug!(
                        attempt = attempts,
                        node = %target.address,
                        method = %request.method,
                        path = %request.path,
                        "sending"
                    );
                    match self.send(&target, request, limit).await {
                        Ok((body, replayed)) => {
                            if replayed {
                                tracing::debug!("answered from the idempotency table");
                            }
                            return Ok(Answer {
                                body,
                                replayed,
                                attempts,
                            });
                        }
                        Err(failure) => match judge(&failure, request.is_write()) {
                            Verdict::Fail => {
                                return Err(match (final_error(failure, key), doubt) {
                                    // A server failure after an attempt that may have applied
                                    // the write settles nothing; a refusal on the merits does,
                                    // since a replay would have been answered with the result.
                                    (ClientError::Other(reason), Some(_)) => ClientError::OutcomeUnknown {
                                        reason,
                                        idempotency_key: request.idempotency_key.clone().unwrap_or_default(),
                                    },
                                    (error, _) => error,
                                });
                            }
                            Verdict::Retry {
                                rediscover,
                                doubt: in_doubt,
                            } => {
                                last_reason = failure.describe();
                                tracing::debug!(node = %target.address, "attempt failed: {last_reason}");
                                if in_doubt {
                                    doubt = Some(last_reason.clone());
                                }
                                if rediscover {
                                    self.forget_leader();
                                    if let Failure::Answered {
                                        leader: Some(hint), ..
                                    } = &failure
                                    {
                                        self.follow_hint(hint.id, hint.http.as_deref());
                                    }
                                }
                            }
                        },
                    }
                }
            }
            failures += 1;
            if !self.pause(failures, deadline, &last_reason).await {
                return Err(match (doubt, &request.idempotency_key) {
                    (Some(reason), Some(idempotency_key)) => ClientError::OutcomeUnknown {
                        reason,
                        idempotency_key: idempotency_key.clone(),
                    },
                    _ => ClientError::Unavailable {
                        reason: last_reason,
                        waited: started.elapsed(),
                    },
                });
            }
        }
    }

    /// Sleep the backoff for `failures` failures, cut short so that one last attempt still fits
    /// before the deadline. Returns false when too little time is left for an attempt to be
    /// worth making.
    async fn pause(&self, failures: u32, deadline: Instant, reason: &str) -> bool {
        const LAST_ATTEMPT: Duration = Duration::from_millis(100);
        let left = deadline.saturating_duration_since(Instant::now());
        if left <= LAST_ATTEMPT {
            return false;
        }
        let wait = self
            .config
            .retry
            .backoff(failures, &mut rand::thread_rng())
            .min(left - LAST_ATTEMPT);
        tracing::debug!("retrying in {} after: {reason}", format_duration(wait));
        tokio::time::sleep(wait).await;
        true
    }

    /// Time allowed for one exchange: the per-attempt bound, cut to what the deadline leaves.
    fn attempt_limit(&self, deadline: Instant) -> Duration {
        let left = deadline.saturating_duration_since(Instant::now());
        self.config
            .attempt_timeout
            .min(left)
            .max(Duration::from_millis(1))
    }

    /// Send one attempt to one node.
    async fn send(
        &self,
        target: &Target,
        request: &Request,
        limit: Duration,
    ) -> Result<(Vec<u8>, bool), Failure> {
        let url = format!("{}{}", base_url(&target.address), request.path);
        let mut builder = self.http.request(request.method.clone(), url).timeout(limit);
        if let Some(key) = &request.idempotency_key {
            builder = builder.header(IDEMPOTENCY_HEADER, key.as_str());
        }
        if let Some(body) = &request.body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let response = builder.send().await.map_err(|e| transport_failure(&e, limit))?;
        let status = response.status().as_u16();
        let replayed = response
            .headers()
            .get(REPLAYED_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_failure(&e, limit))?
            .to_vec();
        if (200..300).contains(&status) {
            Ok((body, replayed))
        } else {
            Err(error_answer(status, &body))
        }
    }

    /// One discovery round: ask every node for its status and pick the leader. Errors are a
    /// reason to retry, worded for the operator.
    async fn discover(&self, deadline: Instant) -> Result<Target, String> {
        let limit = self.attempt_limit(deadline);
        let endpoints = &self.config.endpoints;
        let majority = endpoints.len() / 2 + 1;
        let mut set = JoinSet::new();
        for endpoint in endpoints {
            let http = self.http.clone();
            let address = endpoint.address.clone();
            set.spawn(async move {
                let result = fetch_status(&http, &address, limit).await;
                (address, result)
            });
        }
        let mut answered = 0usize;
        let mut first_error: Option<String> = None;
        // Nodes that did not answer this round: a hint naming one of them is stale (the old
        // leader died and the others have not noticed yet), so it is not worth an attempt.
        let mut silent: Vec<String> = Vec::new();
        // The first node that answered: while the old leader is silent, it can hold a request
        // until the election ends and forward it to the winner.
        let mut live: Option<Target> = None;
        // The cluster's size as its members report it: `--endpoints` may name fewer nodes.
        let mut members = 0usize;
        // The best self-declared leader and the best hint, each with the term it was seen in.
        let mut claimed: Option<(Term, Target)> = None;
        let mut hinted: Option<(Term, NodeId, Option<String>)> = None;
        while let Some(joined) = set.join_next().await {
            let Ok((address, result)) = joined else {
                continue;
            };
            match result {
                Ok(status) => {
                    answered += 1;
                    members = members.max(status.members.len());
                    self.learn(&status);
                    live.get_or_insert_with(|| Target {
                        id: Some(status.id),
                        address: address.clone(),
                    });
                    if status.role == Role::Leader && claimed.as_ref().is_none_or(|(t, _)| status.term > *t) {
                        claimed = Some((
                            status.term,
                            Target {
                                id: Some(status.id),
                                address: address.clone(),
                            },
                        ));
                    }
                    if let Some(hint) = &status.leader {
                        if hinted.as_ref().is_none_or(|(t, _, _)| status.term > *t) {
                            hinted = Some((status.term, hint.id, hint.http.clone()));
                        }
                    }
                }
                Err(failure) => {
                    tracing::debug!(node = %address, "status failed: {}", failure.describe());
                    first_error.get_or_insert_with(|| format!("{address}: {}", failure.describe()));
                    silent.push(address);
                }
            }
            if claimed.is_some() && answered >= majority {
                break;
            }
        }
        // Dropping the set aborts the requests still in flight.
        drop(set);

        let claim_term = claimed.as_ref().map(|(t, _)| *t);
        let mut dead_leader = None;
        let chosen = match (claimed, hinted) {
            (Some((term, target)), Some((hint_term, _, _))) if term >= hint_term => Some(target),
            (Some((_, target)), None) => Some(target),
            (_, Some((_, id, http))) => match self.resolve(id, http.as_deref()) {
                Some(target) if silent.contains(&target.address) => {
                    dead_leader = Some(target);
                    None
                }
                other => other,
            },
            (None, None) => None,
        };
        match chosen {
            Some(target) => {
                tracing::debug!(
                    leader = ?target.id,
                    node = %target.address,
                    term = ?claim_term,
                    "leader discovered"
                );
                *lock(&self.leader) = Some(target.clone());
                Ok(target)
            }
            // No leader to send to: the old one is silent or the election is still running.
            // When a majority answers, an election can end soon, and every node holds a
            // request until it does (kvnode's --leader-wait-ms) and forwards it to the winner:
            // handing the request to one of them beats sleeping until the client notices the
            // new leader itself. That node is not cached: it is not the leader. Without a
            // majority no election can end, and the request would only wait to time out.
            None => match live.filter(|_| answered > endpoints.len().max(members) / 2) {
                Some(via) => {
                    tracing::debug!(
                        node = %via.address,
                        silent_leader = ?dead_leader.and_then(|t| t.id),
                        "no leader to send to; sending through a node that answers"
                    );
                    Ok(via)
                }
                None if dead_leader.is_some() => Err(format!(
                    "the last known leader{} does not answer; waiting for a new election",
                    dead_leader
                        .and_then(|t| t.id)
                        .map(|id| format!(" (node {id})"))
                        .unwrap_or_default()
                )),
                None if answered == 0 => Err(format!(
                    "no node answered ({})",
                    first_error.unwrap_or_else(|| "no endpoints".into())
                )),
                None => Err(format!(
                    "no leader elected ({answered} of {} nodes answered, none knows a leader)",
                    endpoints.len()
                )),
            },
        }
    }

    /// Remember the addresses of the members a node reports.
    fn learn(&self, status: &Status) {
        let mut addresses = lock(&self.addresses);
        for m in &status.members {
            addresses.insert(m.id, m.http.clone());
        }
    }

    /// Turn a leader hint into a target, using the address book when the hint has no address.
    fn resolve(&self, id: NodeId, http: Option<&str>) -> Option<Target> {
        let address = match http {
            Some(http) => Some(http.to_string()),
            None => lock(&self.addresses).get(&id).cloned(),
        }?;
        Some(Target {
            id: Some(id),
            address,
        })
    }

    fn follow_hint(&self, id: NodeId, http: Option<&str>) {
        if let Some(target) = self.resolve(id, http) {
            tracing::debug!(leader = id, node = %target.address, "following leader hint");
            *lock(&self.leader) = Some(target);
        }
    }

    fn cached_leader(&self) -> Option<Target> {
        lock(&self.leader).clone()
    }

    fn forget_leader(&self) {
        *lock(&self.leader) = None;
    }

    /// The node for a stale read: the cached leader, else the next node in turn.
    fn any_node(&self) -> Target {
        if let Some(leader) = self.cached_leader() {
            return leader;
        }
        let endpoints = &self.config.endpoints;
        let i = self.next_node.fetch_add(1, Ordering::Relaxed) % endpoints.len();
        Target {
            id: endpoints[i].id,
            address: endpoints[i].address.clone(),
        }
    }
}

/// A fresh idempotency key for one logical write.
pub fn new_idempotency_key() -> String {
    uuid::Uuid::now_v7().to_string()
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

/// GET one node's `/admin/status`.
async fn fetch_status(http: &reqwest::Client, address: &str, limit: Duration) -> Result<Status, Failure> {
    let url = format!("{}/admin/status", base_url(address));
    let response = http
        .get(url)
        .timeout(limit)
        .send()
        .await
        .map_err(|e| transport_failure(&e, limit))?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(|e| transport_failure(&e, limit))?;
    if !(200..300).contains(&status) {
        return Err(error_answer(status, &body));
    }
    serde_json::from_slice(&body).map_err(|e| Failure::Answered {
        status,
        code: None,
        message: format!("unreadable status document: {e}"),
        leader: None,
    })
}

/// Decode a successful answer.
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|e| {
        ClientError::Other(format!(
            "unexpected answer from the server ({e}): {}",
            preview(body)
        ))
    })
}

/// Interpret an error answer: the standard envelope when it is one, else the raw text.
fn error_answer(status: u16, body: &[u8]) -> Failure {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(envelope) => Failure::Answered {
            status,
            code: Some(envelope.error.code),
            message: envelope.error.message,
            leader: envelope.error.leader,
        },
        Err(_) => Failure::Answered {
            status,
            code: None,
            message: preview(body),
            leader: None,
        },
    }
}

/// The first line of a body, shortened, for error messages.
fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        "(empty body)".into()
    } else if line.chars().count() > 200 {
        format!("{}...", line.chars().take(200).collect::<String>())
    } else {
        line.to_string()
    }
}

/// Turn the failure that ended the operation into the caller's error.
fn final_error(failure: Failure, key: &str) -> ClientError {
    use kvapi::ErrorCode as C;
    match failure {
        Failure::Answered {
            code: Some(C::KeyNotFound),
            ..
        } => ClientError::NotFound { key: key.to_string() },
        Failure::Answered {
            code:
                Some(
                    code @ (C::InvalidJson
                    | C::InvalidRequest
                    | C::TypeConflict
                    | C::ValueTooLarge
                    | C::IdempotencyKeyReused),
                ),
            message,
            ..
        } => ClientError::Rejected { code, message },
        other => ClientError::Other(format!("server error: {}", other.describe())),
    }
}

/// Classify a transport error: was the request sent at all?
fn transport_failure(error: &reqwest::Error, limit: Duration) -> Failure {
    if error.is_connect() {
        return Failure::NotSent(root_cause(error));
    }
    if error.is_timeout() {
        return Failure::NoAnswer(format!("no answer within {}", format_duration(limit)));
    }
    Failure::NoAnswer(root_cause(error))
}

/// The innermost cause of an error, which is where the useful words are ("Connection refused"),
/// without the OS error number.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let text = cause.to_string();
    let text = match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "unknown error".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvapi::ErrorCode;

    #[test]
    fn error_envelopes_become_typed_failures() {
        let body =
            br#"{"error":{"code":"unavailable","message":"no leader","leader":{"id":2,"http":"h:2"}}}"#;
        let failure = error_answer(503, body);
        match &failure {
            Failure::Answered {
                status: 503,
                code: Some(ErrorCode::Unavailable),
                leader: Some(leader),
                ..
            } => assert_eq!(leader.id, 2),
            other => panic!("unexpected {other:?}"),
        }
        let failure = error_answer(502, b"<html>Bad Gateway</html>\nmore");
        assert_eq!(failure.describe(), "HTTP 502: <html>Bad Gateway</html>");
    }

    #[test]
    fn final_errors_follow_the_server_code() {
        let answered = |code: ErrorCode| Failure::Answered {
            status: code.http_status(),
            code: Some(code),
            message: "why".into(),
            leader: None,
        };
        assert!(matches!(
            final_error(answered(ErrorCode::KeyNotFound), "k"),
            ClientError::NotFound { key } if key == "k"
        ));
        assert!(matches!(
            final_error(answered(ErrorCode::TypeConflict), "k"),
            ClientError::Rejected {
                code: ErrorCode::TypeConflict,
                ..
            }
        ));
        let err = final_error(answered(ErrorCode::Internal), "k");
        assert_eq!(err.to_string(), "server error: 500 internal: why");
    }

    #[test]
    fn keys_are_checked_locally() {
        assert!(check_key("ok").is_ok());
        assert!(matches!(check_key(""), Err(ClientError::Rejected { .. })));
        assert!(check_key(&"x".repeat(MAX_KEY_BYTES + 1)).is_err());
    }

    #[test]
    fn idempotency_keys_are_fresh_uuids() {
        let a = new_idempotency_key();
        let b = new_idempotency_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert!(a.len() <= kvapi::MAX_IDEMPOTENCY_KEY_BYTES);
    }

    /// A connection to a port nobody listens on is "not sent", with a short cause; the whole
    /// operation then gives up as Unavailable within its timeout.
    #[tokio::test]
    async fn a_dead_cluster_is_unavailable_within_the_timeout() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let endpoint = Endpoint::parse(&format!("127.0.0.1:{port}")).expect("endpoint");
        let mut config = ClientConfig::new(vec![endpoint]);
        config.timeout = Duration::from_millis(600);
        let client = Client::new(config).expect("client");
        let started = Instant::now();
        let err = client.put("k", Value::from(1)).await.expect_err("nobody listens");
        assert!(started.elapsed() < Duration::from_secs(2), "{err}");
        match err {
            ClientError::Unavailable { reason, .. } => {
                assert!(reason.contains("connection refused"), "{reason}")
            }
            other => panic!("expected Unavailable, got {other}"),
        }
        let reports = client.node_statuses().await;
        assert_eq!(reports.len(), 1);
        let error = reports[0].result.as_ref().expect_err("down");
        assert!(error.contains("connection refused"), "{error}");
    }

    mod scripted {
        use super::*;
        use crate::mock_server::{status_json, Mock, Reply};
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;

        fn ok(body: String) -> Reply {
            Some((200, vec![], body))
        }

        fn error(status: u16, code: &str, leader: Option<(u64, &str)>) -> Reply {
            let leader = leader
                .map(|(id, http)| format!(r#","leader":{{"id":{id},"http":"{http}"}}"#))
                .unwrap_or_default();
            Some((
                status,
                vec![],
                format!(r#"{{"error":{{"code":"{code}","message":"scripted"{leader}}}}}"#),
            ))
        }

        fn written(key: &str, index: u64) -> String {
            format!(r#"{{"key":"{key}","index":{index}}}"#)
        }

        fn client(mocks: &[&Mock], timeout_ms: u64) -> Client {
            let endpoints = mocks
                .iter()
                .map(|m| Endpoint::parse(&m.address).expect("endpoint"))
                .collect();
            let mut config = ClientConfig::new(endpoints);
            config.timeout = Duration::from_millis(timeout_ms);
            config.attempt_timeout = Duration::from_millis(300);
            config.retry = RetryPolicy {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(50),
            };
            Client::new(config).expect("client")
        }

        #[tokio::test]
        async fn a_lost_answer_is_retried_with_the_same_idempotency_key() {
            let posts = Arc::new(AtomicUsize::new(0));
            let counter = posts.clone();
            let leader = Mock::start(move |req| match req.method.as_str() {
                "GET" => ok(status_json(0, "leader", 2, Some((0, "self")))),
                _ if counter.fetch_add(1, Ordering::SeqCst) == 0 => error(504, "outcome_unknown", None),
                _ => Some((200, vec![("idempotent-replayed", "true".into())], written("k", 9))),
            })
            .await;
            let outcome = client(&[&leader], 3000)
                .append("k", Value::from("x"))
                .await
                .expect("second attempt succeeds");
            assert!(outcome.replayed);
            assert_eq!(outcome.attempts, 2);
            assert_eq!(outcome.response.index, 9);
            let sent = leader.requests("POST");
            assert_eq!(sent.len(), 2);
            assert_eq!(sent[0].idempotency_key, sent[1].idempotency_key);
            assert_eq!(
                sent[0].idempotency_key.as_deref(),
                Some(outcome.idempotency_key.as_str())
            );
            assert_eq!(sent[0].path, "/keys/k");
            assert_eq!(sent[0].body, r#"{"type":"APPEND","value":"x"}"#);
        }

        #[tokio::test]
        async fn requests_go_straight_to_the_leader_a_follower_names() {
            let leader = Mock::start(|req| match req.method.as_str() {
                "GET" => ok(status_json(1, "leader", 3, None)),
                _ => ok(written("a/b", 4)),
            })
            .await;
            let hint = leader.address.clone();
            let follower = Mock::start(move |req| match req.method.as_str() {
                "GET" => ok(status_json(0, "follower", 3, Some((1, &hint)))),
                _ => error(500, "internal", None),
            })
            .await;
            let c = client(&[&follower, &leader], 3000);
            c.put("a/b", Value::from(1)).await.expect("put");
            assert_eq!(leader.requests("POST").len(), 1);
            assert_eq!(leader.requests("POST")[0].path, "/keys/a%2Fb");
            assert!(follower.requests("POST").is_empty());
            // The leader is cached: the next write needs no discovery.
            let before = leader.requests("GET").len() + follower.requests("GET").len();
            c.delete("a/b").await.expect("delete");
            let after = leader.requests("GET").len() + follower.requests("GET").len();
            assert_eq!(before, after);
            assert_eq!(leader.requests("DELETE").len(), 1);
        }

        #[tokio::test]
        async fn a_503_with_a_hint_moves_the_write_to_the_new_leader() {
            let new_leader = Mock::start(|req| match req.method.as_str() {
                "GET" => ok(status_json(1, "leader", 5, None)),
                _ => ok(written("k", 12)),
            })
            .await;
            let hint = new_leader.address.clone();
            let old_leader = Mock::start(move |req| match req.method.as_str() {
                "GET" => ok(status_json(0, "leader", 5, None)),
                _ => error(503, "unavailable", Some((1, &hint))),
            })
            .await;
            let c = client(&[&old_leader], 3000);
            let outcome = c.put("k", Value::from(true)).await.expect("put");
            assert_eq!(outcome.response.index, 12);
            let first = old_leader.requests("POST");
            let second = new_leader.requests("POST");
            assert_eq!((first.len(), second.len()), (1, 1));
            assert_eq!(first[0].idempotency_key, second[0].idempotency_key);
        }

        #[tokio::test]
        async fn a_write_never_answered_is_outcome_unknown_within_the_timeout() {
            let silent = Mock::start(|req| match req.method.as_str() {
                "GET" => ok(status_json(0, "leader", 1, None)),
                _ => None,
            })
            .await;
            let started = Instant::now();
            let err = client(&[&silent], 1000)
                .put("k", Value::from(1))
                .await
                .expect_err("never answered");
            assert!(started.elapsed() < Duration::from_millis(1500));
            let ClientError::OutcomeUnknown { idempotency_key, .. } = err else {
                panic!("expected OutcomeUnknown, got {err}");
            };
            let sent = silent.requests("POST");
            assert!(sent.len() >= 2, "retried: {sent:?}");
            assert!(sent
                .iter()
                .all(|s| s.idempotency_key.as_deref() == Some(idempotency_key.as_str())));
        }

        #[tokio::test]
        async fn a_server_error_after_a_doubtful_attempt_is_still_outcome_unknown() {
            let posts = Arc::new(AtomicUsize::new(0));
            let counter = posts.clone();
            let leader = Mock::start(move |req| match req.method.as_str() {
                "GET" => ok(status_json(0, "leader", 1, None)),
                _ if counter.fetch_add(1, Ordering::SeqCst) == 0 => error(504, "outcome_unknown", None),
                _ => error(500, "internal", None),
            })
            .await;
            let err = client(&[&leader], 3000)
                .put("k", Value::from(1))
                .await
                .expect_err("never settled");
            assert!(matches!(err, ClientError::OutcomeUnknown { .. }), "{err}");
            assert_eq!(err.exit().code(), 4);
        }

        #[tokio::test]
        async fn not_found_and_rejections_are_final() {
            let leader = Mock::start(|req| match req.method.as_str() {
                "GET" if req.path == "/admin/status" => ok(status_json(0, "leader", 1, None)),
                "GET" => error(404, "key_not_found", None),
                _ => error(409, "type_conflict", None),
            })
            .await;
            let c = client(&[&leader], 3000);
            let err = c.get("missing").await.expect_err("absent");
            assert!(matches!(err, ClientError::NotFound { .. }), "{err}");
            let err = c.append("n", Value::from(1)).await.expect_err("conflict");
            assert!(
                matches!(
                    err,
                    ClientError::Rejected {
                        code: kvapi::ErrorCode::TypeConflict,
                        ..
                    }
                ),
                "{err}"
            );
            assert_eq!(leader.requests("POST").len(), 1, "no retry of a refusal");
        }

        #[tokio::test]
        async fn a_lone_node_of_a_larger_cluster_is_not_handed_writes_it_cannot_commit() {
            // `--endpoints` names one node, but it reports three members: answering alone it
            // is a minority, so the write is not parked on it to time out in doubt.
            let lone = Mock::start(|req| match req.path.as_str() {
                "/admin/status" => ok(status_json(2, "candidate", 7, None).replace(
                    r#""members":[]"#,
                    r#""members":[{"id":0,"http":"127.0.0.1:1","raft":"127.0.0.1:2"},
                        {"id":1,"http":"127.0.0.1:3","raft":"127.0.0.1:4"},
                        {"id":2,"http":"127.0.0.1:5","raft":"127.0.0.1:6"}]"#,
                )),
                _ => error(503, "unavailable", None),
            })
            .await;
            let err = client(&[&lone], 300)
                .put("k", serde_json::json!(1))
                .await
                .expect_err("no quorum");
            assert!(matches!(err, ClientError::Unavailable { .. }), "{err}");
            assert!(err.to_string().contains("no leader elected"), "{err}");
            assert!(
                lone.requests("POST").is_empty(),
                "nothing was sent to the lone node"
            );
        }

        #[tokio::test]
        async fn stale_reads_work_without_a_leader() {
            // A candidate: it serves stale reads and, like kvnode, answers a linearizable one
            // with 503 once no leader has appeared.
            let lonely = Mock::start(|req| match req.path.as_str() {
                "/admin/status" => ok(status_json(2, "candidate", 7, None)),
                "/keys/k?consistency=stale" => ok(
                    r#"{"key":"k","value":[1],"consistency":"stale","served_by":2,"applied_index":3}"#.into(),
                ),
                _ => error(503, "unavailable", None),
            })
            .await;
            let mut c = client(&[&lonely], 2000);
            c.config.consistency = Consistency::Stale;
            let got = c.get("k").await.expect("stale read");
            assert_eq!(got.value, serde_json::json!([1]));
            assert_eq!(lonely.requests("GET")[0].path, "/keys/k?consistency=stale");

            c.config.consistency = Consistency::Linearizable;
            c.config.timeout = Duration::from_millis(300);
            let err = c.get("k").await.expect_err("no leader");
            assert!(matches!(err, ClientError::Unavailable { .. }), "{err}");
            assert!(err.to_string().contains("unavailable"), "{err}");
            assert!(
                lonely.requests("GET").iter().any(|r| r.path == "/keys/k"),
                "the read went to the node that answers, which can wait for an election"
            );
        }
    }
}
