//! Where the leader is: asking the nodes, following hints, remembering addresses.
//!
//! The client finds the leader by asking every node for its status at once: a node that says
//! it leads wins, otherwise the freshest leader hint (highest term) is followed. Answers are
//! collected until a majority has spoken, so one stale node that still believes it leads after
//! a partition is outvoted by the newer term. Every status answer also teaches the client the
//! members' addresses (voters and learners), so that a hint that names only an id can be
//! followed, and so that a cluster file older than the cluster's membership still leads to it:
//! when the listed nodes lead nowhere, discovery asks the members learned so far as well.
//!
//! While there is no leader to send to, a request goes through a node that answers when a
//! majority does: every node holds a request until an election ends and forwards it to the
//! winner, which beats sleeping until the client notices the new leader itself. Without a
//! majority no election can end, and the request would only wait to time out.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kvapi::{NodeId, Role, Status, Term};
use tokio::task::JoinSet;

use super::{lock, Client, Target};
use crate::survey::NodeReport;
use crate::transport::Failure;

/// Why discovery found no node to send to.
pub(super) enum Undiscovered {
    /// Nothing lasting: try again (the reason is worded for the operator).
    Retry(String),
    /// Every node that answered refused kvctl itself (TLS failed, no valid token, a role
    /// too weak): asking again cannot help.
    Refused(Failure),
}

/// A failure that says kvctl itself is refused, not that the cluster is busy.
fn refuses_us(failure: &Failure) -> bool {
    use kvapi::ErrorCode::{Forbidden, Unauthenticated};
    matches!(
        failure,
        Failure::Tls(_)
            | Failure::Answered {
                code: Some(Unauthenticated | Forbidden),
                ..
            }
    )
}

impl Client {
    /// [`Client::node_statuses`] bounded by `deadline`; with `readiness`, each node's
    /// `/ready` is asked too, at the same time as its status.
    pub(super) async fn statuses_by(&self, deadline: Instant, readiness: bool) -> Vec<NodeReport> {
        let first: Vec<Target> = self
            .config
            .endpoints
            .iter()
            .map(|e| Target {
                id: e.id,
                address: e.address.clone(),
            })
            .collect();
        let mut reports = self.ask_statuses(first, deadline, readiness, true).await;

        let asked: Vec<String> = reports.iter().map(|r| r.address.clone()).collect();
        let mut extra: Vec<Target> = Vec::new();
        for report in &reports {
            if let Ok(status) = &report.result {
                for m in status.members.iter().chain(&status.learners) {
                    if m.http.is_empty() {
                        continue;
                    }
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
            reports.extend(self.ask_statuses(extra, deadline, readiness, false).await);
        }
        reports.sort_by(|a, b| (a.id.is_none(), a.id, &a.address).cmp(&(b.id.is_none(), b.id, &b.address)));
        reports
    }

    async fn ask_statuses(
        &self,
        targets: Vec<Target>,
        deadline: Instant,
        readiness: bool,
        listed: bool,
    ) -> Vec<NodeReport> {
        let limit = self.probe_limit(deadline);
        let mut set = JoinSet::new();
        for (i, target) in targets.into_iter().enumerate() {
            let transport = self.transport.clone();
            set.spawn(async move {
                let status = async {
                    let started = Instant::now();
                    let result = transport.status(&target.address, limit).await;
                    (result, started.elapsed())
                };
                let ready = async {
                    if readiness {
                        Some(transport.readiness(&target.address, limit).await)
                    } else {
                        None
                    }
                };
                let ((result, elapsed), ready) = tokio::join!(status, ready);
                let report = NodeReport {
                    id: target.id.or_else(|| result.as_ref().ok().map(|s: &Status| s.id)),
                    address: target.address,
                    result: result.map_err(|f| f.describe()),
                    elapsed,
                    ready: ready.map(|r| r.map_err(|f| f.describe())),
                    listed,
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

    /// Time allowed for one status request: the probe bound, cut to what the deadline leaves.
    pub(super) fn probe_limit(&self, deadline: Instant) -> Duration {
        let left = deadline.saturating_duration_since(Instant::now());
        self.config.probe_timeout.min(left).max(Duration::from_millis(1))
    }

    /// One discovery round: ask the listed nodes for their status and pick the leader; when
    /// they lead nowhere, ask the members learned since as well. The listed nodes come first
    /// because they are what the operator named: `--endpoints` may be a proxy or a load
    /// balancer, which a leader's own address would bypass. Errors are a reason to retry,
    /// worded for the operator, unless every node refused kvctl itself.
    pub(super) async fn discover(&self, deadline: Instant) -> Result<Target, Undiscovered> {
        let listed: Vec<String> = self.config.endpoints.iter().map(|e| e.address.clone()).collect();
        let all = self.discovery_targets();
        let first = self.discover_among(listed.clone(), deadline).await;
        let retry = matches!(first, Err(Undiscovered::Retry(_)));
        if !retry || all.len() == listed.len() || Instant::now() >= deadline {
            return first;
        }
        self.discover_among(all, deadline).await
    }

    async fn discover_among(
        &self,
        endpoints: Vec<String>,
        deadline: Instant,
    ) -> Result<Target, Undiscovered> {
        let limit = self.probe_limit(deadline);
        let majority = endpoints.len() / 2 + 1;
        let mut set = JoinSet::new();
        for address in &endpoints {
            let transport = self.transport.clone();
            let address = address.clone();
            set.spawn(async move {
                let result = transport.status(&address, limit).await;
                (address, result)
            });
        }
        let mut answered = 0usize;
        let mut first_error: Option<String> = None;
        let mut refused: Option<Failure> = None;
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
                    if refuses_us(&failure) {
                        refused.get_or_insert(failure);
                    }
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
            // No leader to send to: see the module documentation. The node sent through is
            // not cached: it is not the leader.
            None => match live.filter(|_| answered > endpoints.len().max(members) / 2) {
                Some(via) => {
                    tracing::debug!(
                        node = %via.address,
                        silent_leader = ?dead_leader.and_then(|t| t.id),
                        "no leader to send to; sending through a node that answers"
                    );
                    Ok(via)
                }
                None if answered == 0 && refused.is_some() => Err(Undiscovered::Refused(
                    refused.unwrap_or(Failure::NotSent(String::new())),
                )),
                None if dead_leader.is_some() => Err(Undiscovered::Retry(format!(
                    "the last known leader{} does not answer; waiting for a new election",
                    dead_leader
                        .and_then(|t| t.id)
                        .map(|id| format!(" (node {id})"))
                        .unwrap_or_default()
                ))),
                None if answered == 0 => Err(Undiscovered::Retry(format!(
                    "no node answered ({})",
                    first_error.unwrap_or_else(|| "no endpoints".into())
                ))),
                None => Err(Undiscovered::Retry(format!(
                    "no leader elected ({answered} of {} nodes answered, none knows a leader)",
                    endpoints.len()
                ))),
            },
        }
    }

    /// Remember the addresses of the members a node reports.
    fn learn(&self, status: &Status) {
        let mut addresses = lock(&self.addresses);
        for m in status.members.iter().chain(&status.learners) {
            if !m.http.is_empty() {
                addresses.insert(m.id, m.http.clone());
            }
        }
    }

    /// Where discovery asks at most: the listed nodes, then every member learned since.
    fn discovery_targets(&self) -> Vec<String> {
        let mut targets: Vec<String> = self.config.endpoints.iter().map(|e| e.address.clone()).collect();
        for address in lock(&self.addresses).values() {
            if !targets.contains(address) {
                targets.push(address.clone());
            }
        }
        targets
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

    pub(super) fn follow_hint(&self, id: NodeId, http: Option<&str>) {
        if let Some(target) = self.resolve(id, http) {
            tracing::debug!(leader = id, node = %target.address, "following leader hint");
            *lock(&self.leader) = Some(target);
        }
    }

    pub(super) fn cached_leader(&self) -> Option<Target> {
        lock(&self.leader).clone()
    }

    pub(super) fn forget_leader(&self) {
        *lock(&self.leader) = None;
    }

    /// The node for a stale read: the cached leader, else the next node in turn.
    pub(super) fn any_node(&self) -> Target {
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
