//! Changing who is in the cluster: list, add a learner, promote, remove, update addresses,
//! hand leadership over, and admit a node that has no data.
//!
//! Every request may arrive at any node; it is routed to the leader as a write is (see
//! `node`), over the peer port, and carried out there. The leader makes one change at a time
//! (a lock around every change, and a wait until the previous one has committed), because Raft
//! changes membership safely only from a settled configuration:
//!
//! - A change of voters goes through *joint consensus* (openraft's `change_membership`): first
//!   an entry with both the old and the new voter sets, during which every commit and every
//!   election needs a majority of each, then an entry with the new set alone. No moment exists
//!   at which two disjoint majorities could decide, whatever fails in between. A leader that
//!   crashes mid-change leaves the joint configuration in the log; the next leader finishes it
//!   before anything else can change (`wait_settled`).
//! - A new node is added as a *learner*: it receives the log (or a snapshot) but neither votes
//!   nor counts towards a quorum, so adding it costs the cluster no availability however far
//!   behind it starts. It becomes a voter only when promoted, and promotion is refused while it
//!   trails the leader by more than [`MAX_PROMOTE_LAG`] entries: a voter that cannot keep up
//!   would count towards the quorum without being able to help reach it.
//! - Removing the leader first hands leadership to the most up-to-date other voter, which then
//!   carries out the removal: the cluster never waits out an election timeout for it.
//! - Changing a member's addresses replaces its entry (openraft's `SetNodes`); the new
//!   addresses must not belong to another member, or two ids would share one node.
//!
//! A voter that comes back without its data is admitted by being made a learner, marked
//! `promote`; [`promote_caught_up`] promotes such learners back as soon as they have caught up
//! (see `cluster` for why this keeps every committed write).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ChangeMembershipError, ClientWriteError, Fatal, ForwardReason, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use kvapi::cluster::check_host_port;
use kvapi::{
    AddMemberBody, MemberRole, MemberStatus, MembersResponse, TransferLeaderResponse, UpdateMemberBody,
};

use crate::error::NodeError;
use crate::node::Node;
use crate::peer_client::PeerError;
use crate::types::{NodeId, NodeInfo, TypeConfig};
use crate::wire::{self, route, Admit, Admitted};

/// Most entries a learner may trail the leader by and still be promoted.
pub const MAX_PROMOTE_LAG: u64 = 100;

/// How a membership request failed. Travels between nodes when a request is forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AdminError {
    /// Routing or committing failed (no leader, no quorum, outcome unknown...).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The node named is not a member.
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the membership; nothing changed.
    #[error("{0}")]
    Conflict(String),
    /// The learner is too far behind to be promoted; nothing changed.
    #[error("{0}")]
    Behind(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
}

/// A membership request, as forwarded to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    /// The members and their progress.
    List,
    /// Add a learner.
    Add(AddMemberBody),
    /// Make a learner a voter.
    Promote(NodeId),
    /// Remove a member.
    Remove(NodeId),
    /// Change a member's addresses.
    Update(NodeId, UpdateMemberBody),
    /// Hand leadership to this voter, or to the most up-to-date other one.
    TransferLeader(Option<NodeId>),
    /// Admit a node without data (see `cluster`).
    Admit(Admit),
}

impl AdminRequest {
    /// True for requests that change nothing, which may be retried after a lost answer.
    fn is_read(&self) -> bool {
        matches!(self, AdminRequest::List)
    }
}

/// The leader's answer to an [`AdminRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminReply {
    /// The membership (after the change, for changes).
    Members(MembersResponse),
    /// Who leads after a transfer.
    Transferred(TransferLeaderResponse),
    /// The node is admitted.
    Admitted(Admitted),
}

type Changes = ChangeMembers<NodeId, NodeInfo>;

impl Node {
    /// Carry out a membership request wherever the leader is.
    pub async fn admin(&self, request: AdminRequest) -> Result<AdminReply, AdminError> {
        let mut routing = self.routing();
        let timeout = self.config.leader_wait + self.config.batch.write_timeout + Duration::from_secs(2);
        loop {
            let error = match self.leader() {
                // Refusals that did nothing are retried. `no_quorum` only for one lease, as
                // with writes: a leader that just took over may not have heard from a majority
                // yet, but one that lost its majority should be reported at once.
                Some(l) if l == self.id => match self.admin_as_leader(request.clone()).await {
                    Err(AdminError::Node(e @ NodeError::NotLeader { .. })) => Some(e),
                    Err(AdminError::Node(e @ NodeError::NoQuorum(_)))
                        if routing.started.elapsed() < self.lease() =>
                    {
                        Some(e)
                    }
                    other => return other,
                },
                Some(l) => match self.forward_admin(l, &request, timeout).await {
                    Ok(reply) => return Ok(reply),
                    Err(Forward::NotSent) => None,
                    Err(Forward::Refused(AdminError::Node(
                        e @ (NodeError::NotLeader { .. } | NodeError::ShuttingDown),
                    ))) => Some(e),
                    Err(Forward::Refused(AdminError::Node(e @ NodeError::NoQuorum(_))))
                        if routing.started.elapsed() < self.lease() =>
                    {
                        Some(e)
                    }
                    Err(Forward::Refused(e)) => return Err(e),
                    Err(Forward::Unknown(_)) if request.is_read() => None,
                    Err(Forward::Unknown(reason)) => {
                        warn!(%reason, "a forwarded membership request lost its answer");
                        return Err(AdminError::Node(NodeError::OutcomeUnknown {
                            waited_ms: routing.started.elapsed().as_millis() as u64,
                        }));
                    }
                },
                None => None,
            };
            self.retry(&mut routing, error).await?;
        }
    }

    async fn forward_admin(
        &self,
        leader: NodeId,
        request: &AdminRequest,
        timeout: Duration,
    ) -> Result<AdminReply, Forward> {
        let addr = self.raft_addr_of(leader).ok_or(Forward::NotSent)?;
        self.peers
            .post(&addr, leader, route::FORWARD_ADMIN, request, timeout)
            .await
            .map_err(|e| match e {
                PeerError::NotSent { .. } => Forward::NotSent,
                PeerError::Unknown { reason, .. } => Forward::Unknown(reason),
                PeerError::Remote { status, body, .. } => match wire::decode::<AdminError>(&body) {
                    Ok(e) => Forward::Refused(e),
                    // Refused by the identity check: nothing was processed.
                    Err(_) if status == 421 => Forward::NotSent,
                    Err(_) => Forward::Unknown(format!("peer answered {status}")),
                },
            })
    }

    /// Carry out a membership request on this node, which must lead.
    pub async fn admin_as_leader(&self, request: AdminRequest) -> Result<AdminReply, AdminError> {
        self.check_leader()?;
        match request {
            AdminRequest::List => Ok(AdminReply::Members(self.members_view()?)),
            AdminRequest::TransferLeader(to) => self.transfer_leader(to).await.map(AdminReply::Transferred),
            AdminRequest::Remove(id) if id == self.id => {
                // Hand over first; the new leader carries out the removal (see `admin`).
                let handed = self.transfer_leader(None).await?;
                info!(
                    new_leader = handed.leader,
                    "handed leadership over before removing this node"
                );
                Err(AdminError::Node(NodeError::NotLeader {
                    leader: Some(handed.leader),
                }))
            }
            request => {
                let _one_at_a_time = self.admin_lock.lock().await;
                self.check_leader()?;
                match request {
                    AdminRequest::Admit(a) => return self.admit(a).await.map(AdminReply::Admitted),
                    AdminRequest::Add(body) => self.add_learner(body).await?,
                    AdminRequest::Promote(id) => self.promote(id).await?,
                    AdminRequest::Remove(id) => self.remove(id).await?,
                    AdminRequest::Update(id, body) => self.update(id, body).await?,
                    AdminRequest::List | AdminRequest::TransferLeader(_) => {}
                }
                Ok(AdminReply::Members(self.members_view()?))
            }
        }
    }

    fn check_leader(&self) -> Result<(), AdminError> {
        match self.leader() {
            Some(l) if l == self.id => Ok(()),
            leader => Err(AdminError::Node(NodeError::NotLeader { leader })),
        }
    }

    /// The membership as this leader sees it, with each member's progress.
    pub fn members_view(&self) -> Result<MembersResponse, AdminError> {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        let members = membership
            .nodes()
            .map(|(id, info)| {
                let matched = if *id == self.id {
                    m.last_log_index
                } else {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map(|l| l.index)
                };
                MemberStatus {
                    id: *id,
                    http: info.http.clone(),
                    raft: info.raft.clone(),
                    role: if voters.contains(id) {
                        MemberRole::Voter
                    } else {
                        MemberRole::Learner
                    },
                    matched_index: matched,
                    lag: matched.map(|i| last.saturating_sub(i)),
                    promote_when_caught_up: info.promote,
                }
            })
            .collect();
        Ok(MembersResponse {
            cluster_id: self.cluster.id().unwrap_or_default(),
            leader: self.id,
            term: m.current_term,
            joint: membership.get_joint_config().len() > 1,
            members,
        })
    }

    /// The member `id`'s entry and whether it votes; `None` when it is not a member.
    fn member(&self, id: NodeId) -> Option<(NodeInfo, bool)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let info = membership.get_node(&id)?.clone();
        let voter = membership.voter_ids().any(|v| v == id);
        Some((info, voter))
    }

    /// How far behind the leader `id` is, as the leader knows it.
    fn lag_of(&self, id: NodeId) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let last = m.last_log_index.unwrap_or(0);
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map(|l| l.index)?;
        Some(last.saturating_sub(matched))
    }

    /// Refuse addresses that are malformed or belong to another member.
    fn check_addresses(&self, id: NodeId, http: &str, raft: &str) -> Result<(), AdminError> {
        check_host_port(http).map_err(|e| AdminError::Invalid(format!("http address {http:?} {e}")))?;
        check_host_port(raft).map_err(|e| AdminError::Invalid(format!("raft address {raft:?} {e}")))?;
        if http == raft {
            return Err(AdminError::Invalid(
                "the http and raft addresses must differ".into(),
            ));
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        for (other, info) in m.membership_config.membership().nodes() {
            if *other == id {
                continue;
            }
            for addr in [http, raft] {
                if info.http == addr || info.raft == addr {
                    return Err(AdminError::Conflict(format!(
                        "address {addr} belongs to node {other} already; give node {id} addresses of its own"
                    )));
                }
            }
        }
        Ok(())
    }

    fn node_info(&self, http: &str, raft: &str, promote: bool) -> NodeInfo {
        NodeInfo {
            http: http.to_string(),
            raft: raft.to_string(),
            cluster: self.cluster.id().unwrap_or_default(),
            promote,
        }
    }

    async fn add_learner(&self, body: AddMemberBody) -> Result<(), AdminError> {
        if let Some((info, voter)) = self.member(body.id) {
            if !voter && info.http == body.http && info.raft == body.raft {
                return Ok(());
            }
            return Err(AdminError::Conflict(format!(
                "node {} is already a {} of the cluster (http {}, raft {}); use `member update` to \
                 change its addresses, or remove it first",
                body.id,
                if voter { "voter" } else { "learner" },
                info.http,
                info.raft
            )));
        }
        self.check_addresses(body.id, &body.http, &body.raft)?;
        self.wait_settled().await?;
        let info = self.node_info(&body.http, &body.raft, false);
        let started = Instant::now();
        let result = tokio::time::timeout(
            self.config.batch.write_timeout,
            self.raft.add_learner(body.id, info, false),
        )
        .await;
        match result {
            Err(_) => Err(outcome_unknown(started)),
            Ok(Ok(_)) => {
                info!(node = body.id, http = %body.http, raft = %body.raft, "added node {} as a learner", body.id);
                Ok(())
            }
            Ok(Err(e)) => Err(write_error(e, started)),
        }
    }

    async fn promote(&self, id: NodeId) -> Result<(), AdminError> {
        let (info, voter) = self.member(id).ok_or_else(|| not_found(id))?;
        if voter {
            return Ok(());
        }
        let lag = self.lag_of(id);
        match lag {
            Some(lag) if lag <= MAX_PROMOTE_LAG => {}
            Some(lag) => {
                return Err(AdminError::Behind(format!(
                    "node {id} is a learner {lag} entries behind the leader; it can be promoted once \
                     it trails by at most {MAX_PROMOTE_LAG} (`kvctl member list` shows its lag): \
                     wait and retry"
                )))
            }
            None => {
                return Err(AdminError::Behind(format!(
                    "the leader has not heard from node {id}, a learner, yet (is it running, at raft \
                     address {}?); it can be promoted once it has caught up: wait and retry",
                    info.raft
                )))
            }
        }
        let mut changes = Vec::new();
        if info.promote {
            let cleared = NodeInfo {
                promote: false,
                ..info.clone()
            };
            changes.push(Changes::SetNodes(BTreeMap::from([(id, cleared)])));
        }
        changes.push(Changes::AddVoterIds(BTreeSet::from([id])));
        self.change(Changes::Batch(changes), true).await?;
        info!(node = id, "promoted node {id} to voter");
        Ok(())
    }

    async fn remove(&self, id: NodeId) -> Result<(), AdminError> {
        let (_, voter) = self.member(id).ok_or_else(|| not_found(id))?;
        if !voter {
            self.change(Changes::RemoveNodes(BTreeSet::from([id])), false)
                .await?;
            info!(node = id, "removed learner {id}");
            return Ok(());
        }
        let voters: BTreeSet<NodeId> = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            m.membership_config.membership().voter_ids().collect()
        };
        if voters.len() == 1 {
            return Err(AdminError::Conflict(format!(
                "node {id} is the last voter: a cluster without voters can decide nothing"
            )));
        }
        self.change(Changes::RemoveVoters(BTreeSet::from([id])), false)
            .await?;
        info!(node = id, "removed voter {id}");
        Ok(())
    }

    async fn update(&self, id: NodeId, body: UpdateMemberBody) -> Result<(), AdminError> {
        let (info, _) = self.member(id).ok_or_else(|| not_found(id))?;
        self.check_addresses(id, &body.http, &body.raft)?;
        if info.http == body.http && info.raft == body.raft {
            return Ok(());
        }
        let updated = NodeInfo {
            http: body.http.clone(),
            raft: body.raft.clone(),
            cluster: self.cluster.id().unwrap_or(info.cluster),
            promote: info.promote,
        };
        self.change(Changes::SetNodes(BTreeMap::from([(id, updated)])), true)
            .await?;
        info!(node = id, http = %body.http, raft = %body.raft, "updated the addresses of node {id}");
        Ok(())
    }

    /// Admit a node without data: see `cluster`.
    async fn admit(&self, a: Admit) -> Result<Admitted, AdminError> {
        let Some(cluster) = self.cluster.id() else {
            return Err(AdminError::Node(NodeError::Internal(
                "this leader has no cluster id".into(),
            )));
        };
        if a.id == self.id {
            return Err(AdminError::Conflict(format!(
                "node {} is this leader; another process cannot be admitted under its id",
                a.id
            )));
        }
        let was_voter = match self.member(a.id) {
            Some((info, voter)) => {
                if !a.join && info.raft != a.raft {
                    return Err(AdminError::Conflict(format!(
                        "node {} of cluster {cluster} listens at raft address {}, not {}; to move \
                         it, remove it and start it with --join",
                        a.id, info.raft, a.raft
                    )));
                }
                self.check_addresses(a.id, &a.http, &a.raft)?;
                if voter {
                    // It holds none of what it promised: make it a learner until it has
                    // caught up, with a change that commits without it.
                    let learner = self.node_info(&a.http, &a.raft, true);
                    let changes = Changes::Batch(vec![
                        Changes::SetNodes(BTreeMap::from([(a.id, learner)])),
                        Changes::RemoveVoters(BTreeSet::from([a.id])),
                    ]);
                    self.change(changes, true).await?;
                    info!(
                        node = a.id,
                        "node {} came back without its data: it is a learner until it has caught up", a.id
                    );
                    true
                } else {
                    if info.http != a.http || info.raft != a.raft {
                        let moved = self.node_info(&a.http, &a.raft, info.promote);
                        self.change(Changes::SetNodes(BTreeMap::from([(a.id, moved)])), true)
                            .await?;
                    }
                    info.promote
                }
            }
            None if a.join => {
                self.add_learner(AddMemberBody {
                    id: a.id,
                    http: a.http.clone(),
                    raft: a.raft.clone(),
                })
                .await?;
                false
            }
            None => {
                return Err(AdminError::NotFound(format!(
                    "node {} is not a member of cluster {cluster}; to add it, start it with \
                     --join (or run `kvctl member add`)",
                    a.id
                )))
            }
        };
        let vote = self.raft.metrics().borrow_watched().vote;
        Ok(Admitted {
            cluster,
            vote,
            was_voter,
        })
    }

    /// Propose `changes` once the previous change has committed, and wait for it to commit.
    async fn change(&self, changes: Changes, retain: bool) -> Result<(), AdminError> {
        self.wait_settled().await?;
        debug!(%changes, "changing the membership");
        let started = Instant::now();
        // A leader elected a moment ago (after a transfer, say) has no acknowledgement from a
        // majority yet and refuses with an expired lease: nothing was proposed, so wait up to
        // one lease for the acknowledgements and ask again.
        let lease_by = started + self.lease();
        loop {
            match tokio::time::timeout(
                self.config.batch.write_timeout,
                self.raft.change_membership(changes.clone(), retain),
            )
            .await
            {
                Err(_) => return Err(outcome_unknown(started)),
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => match write_error(e, started) {
                    AdminError::Node(NodeError::NoQuorum(_))
                        if Instant::now() < lease_by && self.wait_for_change(lease_by).await => {}
                    other => return Err(other),
                },
            }
        }
    }

    /// Wait until the last membership entry has committed and is not joint. A committed joint
    /// configuration is one a former leader did not live to finish (openraft leaves it so):
    /// finish it by moving to its new voter set.
    async fn wait_settled(&self) -> Result<(), AdminError> {
        let deadline = Instant::now() + self.config.leader_wait;
        loop {
            let (pending, unfinished) = {
                let metrics = self.raft.metrics();
                let m = metrics.borrow_watched();
                let effective = &m.membership_config;
                let committed = &m.committed_membership_config;
                let settled = effective.log_id() == committed.log_id();
                let joint = effective.get_joint_config();
                (
                    (!settled || joint.len() > 1).then(|| effective.log_id().map(|l| l.index)),
                    (settled && joint.len() > 1).then(|| joint.last().cloned().unwrap_or_default()),
                )
            };
            let Some(at) = pending else {
                return Ok(());
            };
            self.check_leader()?;
            if let Some(voters) = unfinished {
                info!(
                    ?voters,
                    "finishing a membership change a former leader left half done"
                );
                let started = Instant::now();
                match tokio::time::timeout(
                    self.config.batch.write_timeout,
                    self.raft
                        .change_membership(Changes::ReplaceAllVoters(voters), true),
                )
                .await
                {
                    Err(_) => return Err(outcome_unknown(started)),
                    Ok(Err(e)) => return Err(write_error(e, started)),
                    Ok(Ok(_)) => continue,
                }
            }
            if !self.wait_for_change(deadline).await {
                return Err(AdminError::Node(NodeError::NoQuorum(format!(
                    "the previous membership change (entry {}) has not committed: it needs a \
                     majority of the old and of the new voters",
                    at.map_or("?".into(), |i| i.to_string())
                ))));
            }
        }
    }

    /// Hand leadership to `to`, or to the most up-to-date other voter, and wait for a new
    /// leader.
    async fn transfer_leader(&self, to: Option<NodeId>) -> Result<TransferLeaderResponse, AdminError> {
        let target = match to {
            Some(id) if id == self.id => {
                let term = self.raft.metrics().borrow_watched().current_term;
                return Ok(TransferLeaderResponse {
                    leader: self.id,
                    http: Some(self.config.http_addr.clone()),
                    term,
                    previous: self.id,
                });
            }
            Some(id) => match self.member(id) {
                None => return Err(not_found(id)),
                Some((_, false)) => {
                    return Err(AdminError::Conflict(format!(
                        "node {id} is a learner: only a voter can lead (promote it first)"
                    )))
                }
                Some(_) => id,
            },
            None => self.best_successor().ok_or_else(|| {
                AdminError::Conflict(
                    "this leader is the only voter: there is nobody to hand leadership to".into(),
                )
            })?,
        };
        // openraft ignores a transfer to a node whose log is behind the leader's, and the
        // leader then stays silent until an election: give the target time to catch up first.
        let lease = Duration::from_millis(self.config.election_max_ms);
        let caught_up_by = Instant::now() + 2 * lease;
        while self.lag_of(target).is_none_or(|lag| lag > 0) && self.wait_for_change(caught_up_by).await {}
        info!(to = target, "handing leadership over to node {target}");
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|e| AdminError::Node(fatal(e)))?;
        let deadline = Instant::now() + 4 * lease + Duration::from_secs(2);
        loop {
            let (leader, term) = {
                let metrics = self.raft.metrics();
                let m = metrics.borrow_watched();
                (m.current_leader, m.current_term)
            };
            if let Some(leader) = leader.filter(|l| *l != self.id) {
                let http = self.leader_ref().and_then(|l| l.http);
                return Ok(TransferLeaderResponse {
                    leader,
                    http,
                    term,
                    previous: self.id,
                });
            }
            if !self.wait_for_change(deadline).await {
                return Err(AdminError::Node(NodeError::NoQuorum(format!(
                    "no new leader appeared within {} ms of handing leadership to node {target}",
                    (4 * lease + Duration::from_secs(2)).as_millis()
                ))));
            }
        }
    }

    /// The voter other than this leader that has the most of the log.
    fn best_successor(&self) -> Option<NodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let matched = |id: &NodeId| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index)
        };
        m.membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != self.id)
            .max_by_key(|id| (matched(id), std::cmp::Reverse(*id)))
    }
}

/// How a forwarded membership request failed.
enum Forward {
    NotSent,
    Refused(AdminError),
    Unknown(String),
}

fn not_found(id: NodeId) -> AdminError {
    AdminError::NotFound(format!(
        "node {id} is not a member of the cluster (`kvctl member list` shows the members)"
    ))
}

fn outcome_unknown(started: Instant) -> AdminError {
    AdminError::Node(NodeError::OutcomeUnknown {
        waited_ms: started.elapsed().as_millis() as u64,
    })
}

fn fatal(e: Fatal<TypeConfig>) -> NodeError {
    match e {
        Fatal::Stopped => NodeError::ShuttingDown,
        other => NodeError::Internal(other.to_string()),
    }
}

/// Map openraft's answer to a membership change.
fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>, started: Instant) -> AdminError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match f.reason {
            ForwardReason::LeaseExpired => AdminError::Node(NodeError::NoQuorum(
                "no majority has acknowledged this leader within its lease".into(),
            )),
            _ => AdminError::Node(NodeError::NotLeader { leader: f.leader_id }),
        },
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => outcome_unknown(started),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(p) => AdminError::Node(NodeError::NoQuorum(format!(
                "a previous membership change has not committed yet ({p})"
            ))),
            ChangeMembershipError::UncommittedLeaderLog(_) => AdminError::Node(NodeError::NoQuorum(
                "this leader has not committed an entry of its own term yet".into(),
            )),
            ChangeMembershipError::LearnerNotFound(l) => AdminError::NotFound(l.to_string()),
            other => AdminError::Conflict(other.to_string()),
        },
        RaftError::APIError(ClientWriteError::PreconditionFailed(p)) => AdminError::Conflict(p.to_string()),
        RaftError::Fatal(f) => AdminError::Node(fatal(f)),
    }
}

/// On the leader, promote every learner marked `promote` (a voter that came back without its
/// data) once it has caught up. Runs until `stop` fires.
pub async fn promote_caught_up(node: Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = stop.changed() => return,
        }
        let candidates: Vec<NodeId> = {
            let metrics = node.raft.metrics();
            let m = metrics.borrow_watched();
            if m.state != ServerState::Leader {
                continue;
            }
            let membership = m.membership_config.membership();
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            membership
                .nodes()
                .filter(|(id, info)| info.promote && !voters.contains(id))
                .map(|(id, _)| *id)
                .collect()
        };
        for id in candidates {
            if node.lag_of(id).is_none_or(|lag| lag > MAX_PROMOTE_LAG) {
                continue;
            }
            match node.admin_as_leader(AdminRequest::Promote(id)).await {
                Ok(_) => info!(node = id, "node {id} has caught up: promoted back to voter"),
                Err(e) => debug!(node = id, error = %e, "could not promote node {id} yet"),
            }
        }
    }
}
