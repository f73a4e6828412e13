//! A running node: the Raft instance plus the logic that routes client work to the leader.
//!
//! Any node accepts any request. A write is proposed locally when this node leads and forwarded
//! over the peer port otherwise; during an election it waits (up to `leader_wait`) for a leader
//! to appear. Forwarding retries only what is certainly not applied: a connection that was never
//! made, or a target that answers "not the leader" (it proposed nothing). A write that carries
//! an idempotency key can be retried after any failure, because the state machine answers a
//! second copy from its table.
//!
//! A linearizable read needs a read index from the leader: the leader confirms its leadership
//! with a quorum (see `reads`) and answers with its commit point; the serving node then waits
//! until it has applied that far and reads locally. The same path serves followers and leaders,
//! so a follower never answers from data older than a write acknowledged before the read began.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use kvapi::{FollowerProgress, LeaderRef, Member, Role, Status};

use crate::batcher::Batcher;
use crate::config::NodeConfig;
use crate::network::{PeerClient, PeerError};
use crate::reads::ReadBarrier;
use crate::state::KvState;
use crate::store::{LogStore, StateMachineStore};
use crate::types::{LogIndex, NodeId, NodeInfo, Op, OpReply, Raft, Term};

/// What can go wrong while serving a request, phrased by what the caller should do. Travels
/// between nodes when a request is forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum NodeError {
    /// This node is not the leader; nothing was proposed. Send the request to the leader.
    #[error("node is not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// No leader appeared in time. Retry shortly.
    #[error("no leader is available (waited {waited_ms} ms for an election); retry shortly")]
    NoLeader {
        /// How long the node waited.
        waited_ms: u64,
    },
    /// The leader could not confirm it still leads. Retry shortly.
    #[error("the leader could not reach a quorum: {0}; retry shortly")]
    NoQuorum(String),
    /// A write was proposed but its commit was not confirmed in time.
    #[error("the write was submitted but its commit was not confirmed within {waited_ms} ms; it may or may not have been applied (retry with the same Idempotency-Key to find out)")]
    OutcomeUnknown {
        /// How long the node waited.
        waited_ms: u64,
    },
    /// The node is stopping and did not propose the request. Retry on another node.
    #[error("node is shutting down; retry on another node")]
    ShuttingDown,
    /// The node stopped while a proposed write was in flight: it may still commit.
    #[error("the node stopped while the write was in flight; it may or may not have been applied (retry with the same Idempotency-Key to find out)")]
    Interrupted,
    /// A bug or storage failure.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A forwarded write, as sent over the peer port.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardWrite {
    /// The write.
    pub op: Op,
    /// Its size in bytes, for batching.
    pub size: usize,
}

/// Answer to a read-index request.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReadIndex {
    /// Apply at least this far before reading.
    pub index: Option<LogIndex>,
}

/// Answer to a probe: who a peer is and whether it already belongs to a running cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeReply {
    /// The peer's id.
    pub node_id: NodeId,
    /// The peer's client address.
    pub http: String,
    /// True when the peer holds any Raft state (vote, log or snapshot).
    pub initialized: bool,
}

/// What the log held when this process started, for the read barrier of a restarted leader.
///
/// openraft 0.9 restores a node that led term T straight back to leading T when it restarts
/// before anyone else is elected, without a new entry of its own; its read index is then its
/// commit index, which may trail entries it acknowledged before the crash (the commit hint is
/// not synced). While it still leads the term it restarted in, a read therefore also waits for
/// everything that was in its log at startup: as T's leader it never truncates its own log, so
/// those entries commit. In a later term the term's first entry already follows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restart {
    /// Term of the vote found on disk (0 when none).
    pub term: Term,
    /// Last log index found on disk.
    pub last_log_index: Option<LogIndex>,
}

/// One node.
pub struct Node {
    /// This node's id.
    pub id: NodeId,
    /// The Raft instance.
    pub raft: Raft,
    /// The state machine (for local reads).
    pub sm: StateMachineStore,
    /// The log store (for the commit index).
    pub log: LogStore,
    /// Settings.
    pub config: NodeConfig,
    /// Pooled peer client.
    pub peers: PeerClient,
    batcher: Batcher,
    barrier: ReadBarrier,
    restart: Restart,
}

impl Node {
    /// Assemble a node around a started Raft instance.
    pub fn new(
        config: NodeConfig,
        raft: Raft,
        sm: StateMachineStore,
        log: LogStore,
        peers: PeerClient,
        restart: Restart,
    ) -> Node {
        let batcher = Batcher::start(raft.clone(), config.batch);
        let barrier = ReadBarrier::start(raft.clone(), config.read_timeout);
        Node {
            id: config.id,
            raft,
            sm,
            log,
            config,
            peers,
            batcher,
            barrier,
            restart,
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    fn raft_addr_of(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let known = m
            .nodes()
            .find(|(nid, _)| **nid == id)
            .map(|(_, n)| n.raft.clone());
        known.or_else(|| {
            self.config
                .members
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, a)| a.clone())
        })
    }

    /// The leader and its client address, as far as this node knows.
    pub fn leader_ref(&self) -> Option<LeaderRef> {
        let metrics = self.raft.metrics().borrow().clone();
        let id = metrics.current_leader?;
        let http = metrics
            .membership_config
            .nodes()
            .find(|(nid, _)| **nid == id)
            .map(|(_, n)| n.http.clone());
        Some(LeaderRef { id, http })
    }

    /// Wait until the metrics change or `until` passes; false when the deadline passed.
    async fn wait_for_change(&self, until: Instant) -> bool {
        let now = Instant::now();
        if now >= until {
            return false;
        }
        let mut rx = self.raft.metrics();
        let step = (until - now).min(Duration::from_millis(100));
        let _ = tokio::time::timeout(step, rx.changed()).await;
        true
    }

    /// Apply a write wherever the leader is and return its outcome.
    pub async fn write(&self, op: Op, size: usize) -> Result<OpReply, NodeError> {
        let started = Instant::now();
        let deadline = started + self.config.leader_wait;
        let mut last_err: Option<NodeError> = None;
        loop {
            match self.leader() {
                Some(l) if l == self.id => match self.batcher.submit(op.clone(), size).await {
                    Err(NodeError::NotLeader { .. }) => {}
                    other => return other,
                },
                Some(l) => match self.forward_write(l, &op, size).await {
                    Ok(reply) => return Ok(reply),
                    Err(Forwarded::Refused(NodeError::NotLeader { .. })) | Err(Forwarded::NotSent) => {}
                    Err(Forwarded::Refused(NodeError::ShuttingDown)) => {}
                    Err(Forwarded::Refused(e)) => return Err(e),
                    Err(Forwarded::Unknown(reason)) => {
                        if op.idem.is_none() {
                            warn!(%reason, "forwarded write lost its answer");
                            return Err(NodeError::OutcomeUnknown {
                                waited_ms: started.elapsed().as_millis() as u64,
                            });
                        }
                        // With an idempotency key a second copy is answered from the table.
                        last_err = Some(NodeError::OutcomeUnknown {
                            waited_ms: started.elapsed().as_millis() as u64,
                        });
                    }
                },
                None => {}
            }
            if !self.wait_for_change(deadline).await {
                return Err(last_err.unwrap_or(NodeError::NoLeader {
                    waited_ms: started.elapsed().as_millis() as u64,
                }));
            }
        }
    }

    /// Serve a write forwarded by a peer: only the leader proposes; anyone else refuses.
    pub async fn write_as_leader(&self, op: Op, size: usize) -> Result<OpReply, NodeError> {
        match self.leader() {
            Some(l) if l == self.id => self.batcher.submit(op, size).await,
            leader => Err(NodeError::NotLeader { leader }),
        }
    }

    async fn forward_write(&self, leader: NodeId, op: &Op, size: usize) -> Result<OpReply, Forwarded> {
        let addr = self.raft_addr_of(leader).ok_or(Forwarded::NotSent)?;
        let body = ForwardWrite { op: op.clone(), size };
        let timeout = self.config.batch.write_timeout + Duration::from_secs(1);
        self.peers
            .post(&addr, leader, "/forward/write", &body, timeout)
            .await
            .map_err(Forwarded::from)
    }

    /// The index a linearizable read must wait for, confirmed by the leader after this call.
    pub async fn read_index(&self) -> Result<Option<LogIndex>, NodeError> {
        let started = Instant::now();
        let deadline = started + self.config.leader_wait;
        let mut last_err = None;
        loop {
            match self.leader() {
                Some(l) if l == self.id => match self.confirm_as_leader().await {
                    Err(e @ NodeError::NoQuorum(_)) | Err(e @ NodeError::NotLeader { .. }) => {
                        last_err = Some(e)
                    }
                    other => return other,
                },
                Some(l) => {
                    let addr = self.raft_addr_of(l);
                    let timeout = self.config.read_timeout + Duration::from_secs(1);
                    if let Some(addr) = addr {
                        match self
                            .peers
                            .post::<_, ReadIndex>(&addr, l, "/forward/read-index", &(), timeout)
                            .await
                        {
                            Ok(r) => return Ok(r.index),
                            Err(e) => {
                                if let Forwarded::Refused(e) = Forwarded::from(e) {
                                    if !matches!(
                                        e,
                                        NodeError::NotLeader { .. }
                                            | NodeError::NoQuorum(_)
                                            | NodeError::ShuttingDown
                                    ) {
                                        return Err(e);
                                    }
                                    last_err = Some(e);
                                }
                            }
                        }
                    }
                }
                None => {}
            }
            if !self.wait_for_change(deadline).await {
                return Err(match last_err {
                    Some(e @ NodeError::NoQuorum(_)) => e,
                    _ => NodeError::NoLeader {
                        waited_ms: started.elapsed().as_millis() as u64,
                    },
                });
            }
        }
    }

    /// Serve a read-index request from a peer: only the leader answers.
    pub async fn read_index_as_leader(&self) -> Result<Option<LogIndex>, NodeError> {
        match self.leader() {
            Some(l) if l == self.id => self.confirm_as_leader().await,
            leader => Err(NodeError::NotLeader { leader }),
        }
    }

    /// The read index on the leader: a shared leadership round, raised to the log's end at
    /// startup while this node still leads the term it restarted in (see [`Restart`]).
    async fn confirm_as_leader(&self) -> Result<Option<LogIndex>, NodeError> {
        let index = self.barrier.confirm().await?;
        let term = self.raft.metrics().borrow().current_term;
        Ok(if term == self.restart.term {
            index.max(self.restart.last_log_index)
        } else {
            index
        })
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
        let m = self.raft.metrics().borrow().clone();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        let mut members: Vec<Member> = m
            .membership_config
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                http: n.http.clone(),
                raft: n.raft.clone(),
            })
            .collect();
        members.sort_by_key(|n| n.id);
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
            commit_index: self.log.committed_index(),
            last_applied: m.last_applied.map(|l| l.index),
            last_log_index: m.last_log_index,
            snapshot_index: m.snapshot.map(|l| l.index),
            members,
            followers,
            keys,
        }
    }

    /// Answer a probe from a peer.
    pub fn probe(&self) -> ProbeReply {
        ProbeReply {
            node_id: self.id,
            http: self.config.http_addr.clone(),
            initialized: self.has_raft_state(),
        }
    }

    /// Whether this node may answer a vote request from a candidate whose last log index is
    /// `candidate_last`.
    ///
    /// A node without Raft state has either never joined (a cluster is being formed) or lost
    /// its data directory. A wiped node has forgotten the entries it stored and the votes it
    /// cast: if it voted, a candidate lacking an entry that was committed on the wiped node and
    /// one other could win, and that entry would be lost. So it votes only for a candidate
    /// whose log holds nothing but the initial membership entry (index 0), which is exactly the
    /// election that forms a new cluster; otherwise it waits until a leader has replicated to it.
    pub fn may_vote(&self, candidate_last: LogIndex) -> bool {
        let may = candidate_last == 0 || self.has_raft_state();
        if !may {
            tracing::warn!(
                candidate_last,
                "refusing to vote: this node has no Raft state (wiped?) and the candidate's log is not empty"
            );
        }
        may
    }

    fn has_raft_state(&self) -> bool {
        !self.log.is_pristine() || self.sm.has_snapshot()
    }

    /// Form a new cluster when, and only when, it is safe: this node has the lowest id, holds no
    /// Raft state, and every other member answers that it holds none either. A node whose data
    /// was wiped therefore never initializes (and so splits) a cluster that still runs: its
    /// peers say they are initialized and it waits to be brought up to date by their leader.
    pub async fn bootstrap(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        if self.has_raft_state() {
            return;
        }
        let lowest = self.config.members.iter().map(|(id, _)| *id).min();
        if lowest != Some(self.id) {
            info!(
                "waiting for node {} to form the cluster",
                lowest.unwrap_or_default()
            );
            return;
        }
        let mut announced = false;
        loop {
            if self.has_raft_state() {
                return;
            }
            let mut members = BTreeMap::new();
            members.insert(
                self.id,
                NodeInfo {
                    http: self.config.http_addr.clone(),
                    raft: self.config.raft_addr.clone(),
                },
            );
            let mut missing = Vec::new();
            for (id, addr) in self.config.members.iter().filter(|(id, _)| *id != self.id) {
                match self
                    .peers
                    .post::<_, ProbeReply>(addr, *id, "/raft/probe", &(), Duration::from_secs(1))
                    .await
                {
                    Ok(p) if p.initialized => {
                        info!(
                            peer = id,
                            "peer already belongs to a cluster; joining it instead of forming one"
                        );
                        return;
                    }
                    Ok(p) => {
                        members.insert(
                            *id,
                            NodeInfo {
                                http: p.http,
                                raft: addr.clone(),
                            },
                        );
                    }
                    Err(e) => missing.push(format!("{id} ({e})")),
                }
            }
            if missing.is_empty() {
                info!(
                    members = members.len(),
                    "all members are up and empty: forming the cluster"
                );
                match self.raft.initialize(members).await {
                    Ok(()) => info!("cluster formed"),
                    Err(e) => warn!(error = %e, "could not form the cluster"),
                }
                return;
            }
            if !announced {
                info!(waiting_for = %missing.join(", "), "waiting for every member before forming a new cluster");
                announced = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = stop.changed() => return,
            }
        }
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
            PeerError::Remote { status, body, .. } => match serde_json::from_slice::<NodeError>(&body) {
                Ok(e) => Forwarded::Refused(e),
                // A refusal by the identity check happens before anything is processed.
                Err(_) if status == 421 => Forwarded::NotSent,
                Err(_) => Forwarded::Unknown(format!("peer answered {status}")),
            },
        }
    }
}
