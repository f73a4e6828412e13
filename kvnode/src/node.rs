//! A running node: the Raft instance plus the logic that routes client work to the leader.
//!
//! Any node accepts any request. Writes and read-index requests go through the same routing
//! loop: done here when this node leads, forwarded over the peer port otherwise,
//! and during an election held for up to `leader_wait` until a leader appears. Forwarding
//! retries only what is certainly not applied: a connection that was never made, or a target
//! that answers "not the leader" (it proposed nothing). A write that carries an idempotency key
//! can be retried after any failure, because the state machine answers a second copy from its
//! table.
//!
//! A linearizable read needs a read index from the leader: the leader confirms its leadership
//! with a quorum (openraft's ReadIndex, which shares one heartbeat round among all reads that
//! arrive together) and answers with the log position every acknowledged write is at or
//! before; the serving node waits until it has applied that far and reads locally. The same
//! path serves followers and leaders, so a follower never answers from data older than a write
//! acknowledged before the read began.
//!
//! A leader that has lost its majority answers at once with `no_quorum` rather than letting
//! requests wait: openraft refuses its writes once its lease has run out, and its read-index
//! rounds fail after one lease.
//!
//! Membership requests (`membership`) take the same road to the leader.

use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{Fatal, ForwardReason, LinearizableReadError, RaftError};
use openraft::{ReadPolicy, ServerState};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::warn;

use kvapi::{FollowerProgress, LeaderRef, Member, Role, Status};

use crate::batcher::Batcher;
use crate::cluster::ClusterCell;
use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::peer_client::{PeerClient, PeerError};
use crate::state::KvState;
use crate::store::StateMachineStore;
use crate::types::{LogIndex, NodeId, Op, OpReply, Raft};
use crate::wire::{self, route, ForwardWrite, ReadIndex};

/// One node.
pub struct Node {
    /// This node's id.
    pub id: NodeId,
    /// The Raft instance.
    pub raft: Raft,
    /// The state machine (for local reads).
    pub sm: StateMachineStore,
    /// True when the log held nothing at all (no vote, entry or purge) when the node started.
    pub started_pristine: bool,
    /// Settings.
    pub config: NodeConfig,
    /// Pooled peer client.
    pub peers: PeerClient,
    /// The cluster this node belongs to (see `cluster`).
    pub cluster: ClusterCell,
    /// Held by the leader while it makes one membership change (see `membership`).
    pub(crate) admin_lock: tokio::sync::Mutex<()>,
    batcher: Batcher,
}

/// The retry state of one routed request: a deadline for finding a leader, and the error to
/// give if it passes.
pub(crate) struct Routing {
    pub(crate) started: Instant,
    deadline: Instant,
    last: Option<NodeError>,
    /// Set once an attempt of a write may have been applied (its answer was lost): from then
    /// on the write can only end applied or in doubt, never "not done".
    doubt: Option<NodeError>,
}

/// The answer to a write whose routing ended in `result`, given the doubt an earlier attempt
/// left. A later refusal that did nothing does not undo an earlier attempt that may have been
/// applied: the client must hear "outcome unknown", or it would take the write for failed
/// while a copy of it commits. (Found by a chaos run: a forwarded write lost its answer, was
/// committed, and the retry was refused with `no_quorum` by a leader whose lease had run out.)
fn settle<T>(result: Result<T, NodeError>, doubt: Option<NodeError>) -> Result<T, NodeError> {
    match (result, doubt) {
        (Err(e), Some(doubt)) if e.did_nothing() => Err(doubt),
        (result, _) => result,
    }
}

/// How a forwarded request failed.
enum Forwarded {
    /// Certainly not processed by the target.
    NotSent,
    /// The target answered with an error.
    Refused(NodeError),
    /// May or may not have been processed.
    Unknown(String),
}

impl From<PeerError> for Forwarded {
    fn from(e: PeerError) -> Self {
        match e {
            PeerError::NotSent { .. } => Forwarded::NotSent,
            PeerError::Unknown { reason, .. } => Forwarded::Unknown(reason),
            PeerError::Remote { status, body, .. } => match wire::decode::<NodeError>(&body) {
                Ok(e) => Forwarded::Refused(e),
                // A refusal by the identity check happens before anything is processed.
                Err(_) if status == 421 => Forwarded::NotSent,
                Err(_) => Forwarded::Unknown(format!("peer answered {status}")),
            },
        }
    }
}

impl Node {
    /// Assemble a node around a started Raft instance.
    pub fn new(
        config: NodeConfig,
        raft: Raft,
        sm: StateMachineStore,
        started_pristine: bool,
        peers: PeerClient,
        cluster: ClusterCell,
    ) -> Node {
        let batcher = Batcher::start(raft.clone(), config.batch);
        Node {
            id: config.id,
            raft,
            sm,
            started_pristine,
            config,
            peers,
            cluster,
            admin_lock: tokio::sync::Mutex::new(()),
            batcher,
        }
    }

    pub(crate) fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    pub(crate) fn raft_addr_of(&self, id: NodeId) -> Option<String> {
        let known = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .nodes()
            .find(|(nid, _)| **nid == id)
            .map(|(_, n)| n.raft.clone());
        known.or_else(|| {
            self.config
                .seed
                .iter()
                .find(|m| m.id == id)
                .map(|m| m.raft.clone())
        })
    }

    /// The leader and its client address, as far as this node knows.
    pub fn leader_ref(&self) -> Option<LeaderRef> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let id = m.current_leader?;
        let http = m
            .membership_config
            .nodes()
            .find(|(nid, _)| **nid == id)
            .map(|(_, n)| n.http.clone());
        Some(LeaderRef { id, http })
    }

    /// Wait until the metrics change or `until` passes; false when the deadline passed.
    pub(crate) async fn wait_for_change(&self, until: Instant) -> bool {
        let now = Instant::now();
        if now >= until {
            return false;
        }
        let mut rx = self.raft.metrics();
        // Mark what is there as seen, so that `changed` waits for something new.
        drop(rx.borrow_and_update());
        let step = (until - now).min(Duration::from_millis(100));
        let _ = tokio::time::timeout(step, rx.changed()).await;
        true
    }

    /// How long a leader's lease lasts: one maximal election timeout.
    pub(crate) fn lease(&self) -> Duration {
        Duration::from_millis(self.config.election_max_ms)
    }

    pub(crate) fn routing(&self) -> Routing {
        let started = Instant::now();
        Routing {
            started,
            deadline: started + self.config.leader_wait,
            last: None,
            doubt: None,
        }
    }

    /// After an attempt that did nothing (remembering `error`, if any, in case time runs out):
    /// wait until the cluster changes, or give up once `leader_wait` has passed. Writes and
    /// read-index requests share this loop.
    pub(crate) async fn retry(
        &self,
        routing: &mut Routing,
        error: Option<NodeError>,
    ) -> Result<(), NodeError> {
        routing.last = error.or(routing.last.take());
        if self.wait_for_change(routing.deadline).await {
            return Ok(());
        }
        Err(routing.last.take().unwrap_or(NodeError::NoLeader {
            waited_ms: routing.started.elapsed().as_millis() as u64,
        }))
    }

    async fn forward<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        leader: NodeId,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, Forwarded> {
        let addr = self.raft_addr_of(leader).ok_or(Forwarded::NotSent)?;
        self.peers
            .post(&addr, leader, path, body, timeout)
            .await
            .map_err(Forwarded::from)
    }

    /// Apply a write wherever the leader is and return its outcome.
    pub async fn write(&self, op: Op, size: usize) -> Result<OpReply, NodeError> {
        let mut routing = self.routing();
        let result = self.route_write(&op, size, &mut routing).await;
        settle(result, routing.doubt)
    }

    async fn route_write(&self, op: &Op, size: usize, routing: &mut Routing) -> Result<OpReply, NodeError> {
        let forward_timeout = self.config.batch.write_timeout + Duration::from_secs(1);
        loop {
            let error = match self.leader() {
                Some(l) if l == self.id => match self.batcher.submit(op.clone(), size).await {
                    Err(NodeError::NotLeader { .. }) => None,
                    // A leader elected a moment ago has no acknowledgement from a majority yet
                    // and refuses writes until its first heartbeat round: worth waiting for,
                    // but only for about one election timeout. A leader cut off from the
                    // majority answers after that.
                    Err(e @ NodeError::NoQuorum(_)) if routing.started.elapsed() < self.lease() => Some(e),
                    other => return other,
                },
                Some(l) => {
                    let body = ForwardWrite { op: op.clone(), size };
                    match self
                        .forward(l, route::FORWARD_WRITE, &body, forward_timeout)
                        .await
                    {
                        Ok(reply) => return Ok(reply),
                        Err(Forwarded::NotSent) => None,
                        Err(Forwarded::Refused(NodeError::NotLeader { .. } | NodeError::ShuttingDown)) => {
                            None
                        }
                        Err(Forwarded::Refused(e @ NodeError::NoQuorum(_)))
                            if routing.started.elapsed() < self.lease() =>
                        {
                            Some(e)
                        }
                        Err(Forwarded::Refused(e)) => return Err(e),
                        Err(Forwarded::Unknown(reason)) => {
                            let unknown = NodeError::OutcomeUnknown {
                                waited_ms: routing.started.elapsed().as_millis() as u64,
                            };
                            if op.idem.is_none() {
                                warn!(%reason, "forwarded write lost its answer");
                                return Err(unknown);
                            }
                            // With an idempotency key a second copy is answered from the table.
                            routing.doubt = Some(unknown.clone());
                            Some(unknown)
                        }
                    }
                }
                None => None,
            };
            self.retry(routing, error).await?;
        }
    }

    /// Serve a write forwarded by a peer: only the leader proposes; anyone else refuses.
    pub async fn write_as_leader(&self, op: Op, size: usize) -> Result<OpReply, NodeError> {
        match self.leader() {
            Some(l) if l == self.id => self.batcher.submit(op, size).await,
            leader => Err(NodeError::NotLeader { leader }),
        }
    }

    /// The index a linearizable read must wait for, confirmed by the leader after this call.
    pub async fn read_index(&self) -> Result<Option<LogIndex>, NodeError> {
        let mut routing = self.routing();
        let forward_timeout = self.config.read_timeout + Duration::from_secs(1);
        loop {
            let error = match self.leader() {
                Some(l) if l == self.id => match self.confirm_as_leader().await {
                    Err(e @ NodeError::NotLeader { .. }) => Some(e),
                    other => return other,
                },
                Some(l) => match self
                    .forward::<_, ReadIndex>(l, route::FORWARD_READ_INDEX, &(), forward_timeout)
                    .await
                {
                    Ok(r) => return Ok(r.index),
                    Err(Forwarded::Refused(e @ (NodeError::NotLeader { .. } | NodeError::ShuttingDown))) => {
                        Some(e)
                    }
                    Err(Forwarded::Refused(e)) => return Err(e),
                    Err(Forwarded::NotSent | Forwarded::Unknown(_)) => None,
                },
                None => None,
            };
            self.retry(&mut routing, error).await?;
        }
    }

    /// Serve a read-index request from a peer: only the leader answers.
    pub async fn read_index_as_leader(&self) -> Result<Option<LogIndex>, NodeError> {
        match self.leader() {
            Some(l) if l == self.id => self.confirm_as_leader().await,
            leader => Err(NodeError::NotLeader { leader }),
        }
    }

    /// Confirm with a quorum that this node still leads; returns the read index.
    async fn confirm_as_leader(&self) -> Result<Option<LogIndex>, NodeError> {
        let timeout = self.config.read_timeout;
        match tokio::time::timeout(timeout, self.raft.get_read_linearizer(ReadPolicy::ReadIndex)).await {
            Ok(Ok(linearizer)) => Ok(Some(linearizer.read_log_id().index())),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => match f.reason {
                ForwardReason::LeaseExpired => Err(NodeError::NoQuorum(
                    "no majority has acknowledged this leader within its lease".into(),
                )),
                _ => Err(NodeError::NotLeader { leader: f.leader_id }),
            },
            Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)))) => Err(
                NodeError::NoQuorum("a majority of nodes did not confirm this leader".into()),
            ),
            Ok(Err(RaftError::Fatal(Fatal::Stopped))) => Err(NodeError::ShuttingDown),
            Ok(Err(RaftError::Fatal(f))) => Err(NodeError::Internal(f.to_string())),
            Err(_) => Err(NodeError::NoQuorum(format!(
                "no majority confirmed this leader within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    /// Run `f` on the state after a linearizable read barrier; returns its result and the
    /// applied index it saw.
    pub async fn read_linearizable<T>(
        &self,
        f: impl FnOnce(&KvState) -> T,
    ) -> Result<(T, Option<LogIndex>), NodeError> {
        let index = self.read_index().await?;
        if let Some(index) = index {
            let applied = self.sm.read().last_applied.map(|l| l.index);
            if applied < Some(index) {
                self.raft
                    .wait(Some(self.config.read_timeout))
                    .applied_index_at_least(Some(index), "linearizable read")
                    .await
                    .map_err(|e| {
                        NodeError::NoQuorum(format!("this replica did not catch up in time: {e}"))
                    })?;
            }
        }
        Ok(self.read_stale(f))
    }

    /// Run `f` on this replica's state as it is; returns its result and the applied index.
    pub fn read_stale<T>(&self, f: impl FnOnce(&KvState) -> T) -> (T, Option<LogIndex>) {
        let applied = self.sm.read();
        (f(&applied.kv), applied.last_applied.map(|l| l.index))
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow_watched().clone();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let (members, learners): (Vec<Member>, Vec<Member>) = membership
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                http: n.http.clone(),
                raft: n.raft.clone(),
            })
            .partition(|mb| voters.contains(&mb.id));
        let last = m.last_log_index.unwrap_or(0);
        let followers = m.replication.as_ref().map(|r| {
            r.iter()
                .filter(|(id, _)| **id != self.id)
                .map(|(id, matched)| {
                    let matched_index = matched.map(|l| l.index);
                    FollowerProgress {
                        id: *id,
                        matched_index,
                        lag: matched_index.map(|i| last.saturating_sub(i)),
                    }
                })
                .collect()
        });
        let keys = self.sm.read().kv.len() as u64;
        Status {
            id: self.id,
            role,
            term: m.current_term,
            leader: self.leader_ref(),
            commit_index: m.local_committed.map(|l| l.index),
            last_applied: m.last_applied.map(|l| l.index),
            last_log_index: m.last_log_index,
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            members,
            learners,
            cluster_id: self.cluster.id(),
            followers,
            keys,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_in_doubt_is_never_reported_as_not_done() {
        let doubt = || Some(NodeError::OutcomeUnknown { waited_ms: 5 });
        let refusals = [
            NodeError::NoQuorum("lease".into()),
            NodeError::NotLeader { leader: None },
            NodeError::NoLeader { waited_ms: 1 },
            NodeError::ShuttingDown,
            NodeError::Refused("value too large".into()),
        ];
        for refusal in refusals {
            assert_eq!(
                settle::<()>(Err(refusal.clone()), doubt()),
                Err(NodeError::OutcomeUnknown { waited_ms: 5 }),
                "{refusal:?} after a lost answer"
            );
            assert_eq!(settle::<()>(Err(refusal.clone()), None), Err(refusal));
        }
        // An answer, or an error that is not a promise of nothing done, stands as it is.
        assert_eq!(settle(Ok(7), doubt()), Ok(7));
        let internal = NodeError::Internal("disk".into());
        assert_eq!(settle::<()>(Err(internal.clone()), doubt()), Err(internal));
    }
}
