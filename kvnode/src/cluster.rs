//! Which cluster a node belongs to, how a cluster is formed, how a node without data gets
//! (back) into one, and the rule a node follows before it votes.
//!
//! # Cluster ids
//!
//! A cluster is named by an id made when it forms (16 random hex digits), written into every
//! member's entry of the membership (so it travels in the log and in snapshots) and into each
//! node's `node.json`. Every peer request carries it (`x-kv-cluster`), and a node answers
//! nothing but probes, formation offers and admission requests until it has one, and then only
//! requests with that very id. The member list is not part of it: members come and go and
//! change address, the cluster stays the same. (Clusters formed before ids existed keep the
//! fingerprint of their member list as their id; see `store::Identity`.)
//!
//! # Forming a cluster
//!
//! A node started with a seed (a cluster file, or the assignment's peer addresses) and no Raft
//! state probes the other seed members. When one of them already belongs to a cluster, the
//! node asks to be admitted to it instead (below): a node never forms a cluster next to one
//! that runs. Otherwise, once a majority of the seed is up and holds nothing, the one with the
//! lowest id among them forms the cluster: it makes an id, offers it to the others (`adopt`,
//! accepted only by a node without Raft state whose seed has the same fingerprint, and by no
//! node that adopted another id), and when a majority (itself included) has adopted the id it
//! initialises Raft with every seed member as a voter. Two nodes that both think they should
//! form cannot both win: each needs a majority of adoptions and a node adopts one id. An
//! adoption that leads nowhere lapses after [`ADOPTION_TTL`]. When every seed member is up the
//! cluster forms at once; with only a majority the formers wait [`FORMATION_GRACE`] first, so
//! that nodes started together do not form without the one that was a moment late.
//!
//! # Admission of a node without data
//!
//! A seed member that holds no Raft state after the cluster formed (it was down at formation,
//! or it lost its data directory) and a node started with `--join` both ask a member to admit
//! them; the member forwards the request to the leader (see `membership::admit`). A `--join`
//! node that is not a member is added as a learner. A *voter* without data is first made a
//! learner (a joint-consensus change that commits without it), marked to be promoted again once
//! it has caught up. Only when the leader has done that does the node take the cluster id,
//! and before it does, it records the admitting leader's vote (see `accept_admission`). Until
//! then it answers no Raft request at all.
//!
//! # Why a node without data never helps lose a write
//!
//! Raft's safety rests on every node keeping what it promised: the entries it acknowledged and
//! the votes it granted. A node whose directory was wiped has forgotten both. If it voted, a
//! candidate lacking an entry committed on the wiped node and one other could win (A leads, C
//! is down, w commits on A and B, B loses its disk, A crashes, C returns without w: B's vote
//! would elect C and w would be gone). If its acknowledgements counted, a deposed leader it
//! happened to hear first could commit with it. So such a node neither votes nor acknowledges
//! anything as a voter until the cluster has taken its vote away: it answers no Raft request
//! before it is admitted, and it is admitted as a learner, which the leader never counts. The
//! change that makes it a learner needs a quorum of the other voters, in which every committed
//! entry survives; when it cannot get one (C is down and A is gone in the example), nothing
//! changes and nobody is elected without w. Once admitted it records the leader's vote, so no
//! leader older than the one that admitted it can use it either, and it votes again only once
//! its own log shows it a voter: the promotion entry is in its log only after everything
//! before it, which includes every entry committed before its promotion. That is [`may_vote`]:
//! a node votes only while it is a voter of the membership it holds, or in the very election
//! that forms a new cluster (empty log, never voted, a candidate with nothing but the initial
//! membership).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::raft::VoteRequest;
use rand::Rng;
use tracing::{error, info, warn};

use kvapi::MembersResponse;

use crate::config::NodeConfig;
use crate::membership::{AdminError, AdminReply, AdminRequest};
use crate::node::Node;
use crate::peer_client::{PeerClient, PeerError};
use crate::store::{DataDir, Identity};
use crate::types::{
    Entry, LogId, LogIndex, NodeId, NodeInfo, SnapshotMeta, StoredMembership, TypeConfig, Vote,
};
use crate::wire::{self, route, Admit, Admitted, Adopt, ProbeReply};

/// How long an adopted cluster id is kept while the cluster it names does not form.
pub const ADOPTION_TTL: Duration = Duration::from_secs(10);
/// How long a majority of the seed must have been up and empty before it forms a cluster
/// without the others.
pub const FORMATION_GRACE: Duration = Duration::from_secs(3);
/// Pause between rounds of probing.
const ROUND: Duration = Duration::from_millis(300);

/// A fresh cluster id: 16 random hex digits.
pub fn new_cluster_id() -> String {
    format!("{:016x}", rand::thread_rng().gen::<u64>())
}

/// This node's cluster id and whether it has joined that cluster, kept in step with
/// `node.json` and with the header the peer client sends.
pub struct ClusterCell {
    dir: std::path::PathBuf,
    peers: PeerClient,
    state: Mutex<CellState>,
}

struct CellState {
    identity: Identity,
    /// When an id was adopted for a formation (in this process).
    adopted_at: Option<Instant>,
}

impl ClusterCell {
    /// The cell of the data directory `dir`, whose identity is `identity`; `peers` sends the id.
    pub fn new(dir: std::path::PathBuf, identity: Identity, peers: PeerClient) -> Self {
        peers.set_cluster(identity.cluster.clone());
        ClusterCell {
            dir,
            peers,
            state: Mutex::new(CellState {
                identity,
                adopted_at: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CellState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cluster id, adopted or joined.
    pub fn id(&self) -> Option<String> {
        self.lock().identity.cluster.clone()
    }

    /// True once this node has joined its cluster.
    pub fn joined(&self) -> bool {
        self.lock().identity.joined
    }

    fn set(&self, cluster: Option<String>, joined: bool) -> std::io::Result<()> {
        let mut state = self.lock();
        let identity = Identity {
            node_id: state.identity.node_id,
            cluster: cluster.clone(),
            joined,
        };
        identity.save(&self.dir)?;
        state.identity = identity;
        state.adopted_at = (!joined && cluster.is_some()).then(Instant::now);
        self.peers.set_cluster(cluster);
        Ok(())
    }

    /// Adopt `cluster` for a formation under way (durably, before saying yes).
    fn adopt(&self, cluster: &str) -> std::io::Result<()> {
        self.set(Some(cluster.to_string()), false)
    }

    /// Drop an adopted id whose formation did not happen.
    fn release(&self) -> std::io::Result<()> {
        self.set(None, false)
    }

    /// Join `cluster` for good.
    pub fn join(&self, cluster: &str) -> std::io::Result<()> {
        self.set(Some(cluster.to_string()), true)
    }

    fn adopted_at(&self) -> Option<Instant> {
        self.lock().adopted_at
    }
}

/// True when this node holds any Raft state: a vote, a log entry, a purge, a snapshot. What the
/// log held at startup is remembered; what came since shows in Raft's metrics.
pub fn has_raft_state(node: &Node) -> bool {
    if !node.started_pristine || node.sm.has_snapshot() {
        return true;
    }
    let metrics = node.raft.metrics();
    let m = metrics.borrow_watched();
    m.vote.leader_id.term > 0 || m.last_log_index.is_some() || m.purged.is_some() || m.snapshot.is_some()
}

/// Answer a probe from a peer.
pub fn probe(node: &Node) -> ProbeReply {
    ProbeReply {
        node_id: node.id,
        http: node.config.http_addr.clone(),
        initialized: has_raft_state(node),
        cluster: node.cluster.id(),
        seed: node.config.seed_fingerprint.clone(),
    }
}

/// Whether this node may answer a vote (or pre-vote) request; `Err` says why not. See the
/// module documentation for why this is the rule.
pub fn may_vote(node: &Node, req: &VoteRequest<TypeConfig>) -> Result<(), &'static str> {
    let metrics = node.raft.metrics();
    let m = metrics.borrow_watched();
    if m.membership_config
        .membership()
        .voter_ids()
        .any(|id| id == node.id)
    {
        return Ok(());
    }
    let empty = node.started_pristine
        && !node.sm.has_snapshot()
        && m.last_log_index.is_none()
        && m.purged.is_none()
        && m.snapshot.is_none();
    let never_voted = node.started_pristine && m.vote.leader_id.term == 0;
    let forming = req.last_log_id.is_none_or(|l| l.index == 0);
    if empty && never_voted && forming {
        return Ok(());
    }
    warn!(
        candidate = %req.vote,
        "refusing to vote: this node is not a voter of the membership it holds"
    );
    Err(
        "this node is not a voter of the membership it holds (a learner, a member being \
         re-admitted after it lost its data, or a removed node): it does not vote",
    )
}

/// Whether a snapshot sent with `vote` could have been produced by a protocol-following
/// leader, judged against this node's committed log. openraft panics on one that could not; a
/// forged or corrupted snapshot is refused here instead.
pub fn snapshot_fits(node: &Node, vote: &Vote, meta: &SnapshotMeta) -> Result<(), String> {
    let Some(last) = meta.last_log_id else {
        return Ok(());
    };
    // Leader ids are only partially ordered: two leaders of one term are not comparable.
    let owned = matches!(
        last.leader_id.partial_cmp(&vote.leader_id),
        Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
    );
    if !owned {
        return Err(format!(
            "snapshot at {last} cannot come from the leader with vote {vote}: refusing it"
        ));
    }
    let committed = node.raft.metrics().borrow_watched().local_committed;
    if let Some(c) = committed {
        if Some(last) > Some(c) && last.index <= c.index {
            return Err(format!(
                "snapshot at {last} contradicts this node's committed log (at {c}): refusing it"
            ));
        }
    }
    Ok(())
}

/// Why an offer to adopt a cluster id was declined.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// This node already belongs to a cluster.
    #[error("node {0} already holds Raft state: it belongs to a cluster and forms no new one")]
    Member(NodeId),
    /// The seeds differ: the nodes were not started as members of the same cluster.
    #[error("the seeds differ (this node's fingerprint {mine:?}, the offer's {theirs:?}): the nodes were started with different member lists")]
    OtherSeed {
        /// This node's seed fingerprint.
        mine: String,
        /// The offer's.
        theirs: String,
    },
    /// This node adopted another id first.
    #[error("this node already adopted cluster {0} for a formation under way")]
    Taken(String),
    /// The adoption could not be recorded.
    #[error("cannot record the cluster id: {0}")]
    Io(#[from] std::io::Error),
}

/// Handle an offer to take part in forming a cluster.
pub fn adopt(node: &Node, offer: &Adopt) -> Result<(), AdoptError> {
    if has_raft_state(node) || node.cluster.joined() {
        return Err(AdoptError::Member(node.id));
    }
    if offer.seed != node.config.seed_fingerprint || offer.seed.is_empty() {
        return Err(AdoptError::OtherSeed {
            mine: node.config.seed_fingerprint.clone(),
            theirs: offer.seed.clone(),
        });
    }
    match node.cluster.id() {
        Some(id) if id == offer.cluster => Ok(()),
        Some(id) => Err(AdoptError::Taken(id)),
        None => {
            node.cluster.adopt(&offer.cluster)?;
            info!(cluster = %offer.cluster, "adopted the id of a cluster being formed");
            Ok(())
        }
    }
}

/// Why the settling loop stopped the node.
#[derive(Debug, Clone)]
pub struct Refusal(pub String);

/// Bring this node into a cluster, and keep an eye on it until it is in one: form the cluster
/// of the seed, or get admitted to the running one (see the module documentation). Returns
/// once the node has joined, or when `stop` fires; `refuse` receives the reason when the node
/// must not run (its directory belongs to another cluster than the one it was told to join).
pub async fn settle(
    node: Arc<Node>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    refuse: tokio::sync::watch::Sender<Option<Refusal>>,
) {
    let mut majority_since: Option<Instant> = None;
    let mut said = Said::default();
    loop {
        if node.cluster.joined() {
            if !node.config.join.is_empty() {
                check_joined_cluster(&node, &refuse).await;
            }
            return;
        }
        if let Some(id) = node.cluster.id() {
            if has_raft_state(&node) {
                // The formation this node took part in happened: it is a member now.
                match node.cluster.join(&id) {
                    Ok(()) => info!(cluster = %id, "this node is a member of cluster {id}"),
                    Err(e) => error!(error = %e, "cannot record the cluster id in node.json"),
                }
                continue;
            }
            if node
                .cluster
                .adopted_at()
                .is_none_or(|at| at.elapsed() > ADOPTION_TTL)
            {
                info!(cluster = %id, "the cluster this node adopted did not form; forgetting its id");
                if let Err(e) = node.cluster.release() {
                    error!(error = %e, "cannot update node.json");
                }
            }
        }
        if node.config.join.is_empty() {
            seed_round(&node, &mut majority_since, &mut said).await;
        } else {
            join_round(&node, &mut said).await;
        }
        if node.cluster.joined() {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(ROUND) => {}
            _ = stop.changed() => return,
        }
    }
}

/// What has been logged already, so a waiting node says each thing once.
#[derive(Default)]
struct Said {
    waiting: Option<String>,
}

impl Said {
    fn once(&mut self, what: String) {
        if self.waiting.as_ref() != Some(&what) {
            info!("{what}");
            self.waiting = Some(what);
        }
    }
}

/// Probe every other seed member; `None` for those that do not answer.
async fn probe_seed(node: &Node) -> Vec<(NodeId, Result<ProbeReply, String>)> {
    let probes = node
        .config
        .seed
        .iter()
        .filter(|m| m.id != node.id)
        .map(|m| async move {
            let r = node
                .peers
                .post::<_, ProbeReply>(&m.raft, m.id, route::PROBE, &(), Duration::from_secs(1))
                .await
                .map_err(|e| e.to_string());
            (m.id, r)
        });
    futures_util::future::join_all(probes).await
}

/// One round of a node with a seed: find the running cluster and be admitted, or form one.
async fn seed_round(node: &Arc<Node>, majority_since: &mut Option<Instant>, said: &mut Said) {
    let probes = probe_seed(node).await;
    let running = probes.iter().find_map(|(id, p)| match p {
        Ok(p) if p.initialized => p.cluster.clone().map(|c| (*id, c)),
        _ => None,
    });
    if let Some((via, cluster)) = running {
        let Some(addr) = node
            .config
            .seed
            .iter()
            .find(|m| m.id == via)
            .map(|m| m.raft.clone())
        else {
            return;
        };
        if node.cluster.id().as_deref() == Some(cluster.as_str()) && !node.cluster.joined() {
            // This node adopted that very id: the cluster formed with it as a voter, and its
            // first entries are on their way (the leader's vote may have arrived already,
            // while this round probed: the next round sees the state and records the
            // membership). Asking to be admitted would only make the leader demote it and
            // promote it again. (An adoption that leads nowhere lapses, and the node asks then.)
            said.once(format!(
                "cluster {cluster} formed with this node as a member; waiting for its first entries"
            ));
            return;
        }
        if !has_raft_state(node) {
            said.once(format!(
                "seed member {via} belongs to cluster {cluster}: asking to be admitted to it \
                 (this node holds no data, so it joins as a learner that catches up)"
            ));
        }
        ask_admission(node, &cluster, &[(via, addr)], false, said).await;
        return;
    }
    if has_raft_state(node) {
        // Holds state but no cluster id: an interrupted admission or formation whose peers are
        // not reachable now. Nothing to form; wait for the others.
        said.once("waiting for the other members to answer".into());
        return;
    }
    if node.cluster.id().is_some() {
        // Adopted for a formation under way: its former initialises Raft next.
        return;
    }
    if probes
        .iter()
        .any(|(_, p)| p.as_ref().is_ok_and(|p| p.cluster.is_some()))
    {
        said.once("another seed member is forming the cluster; waiting".into());
        return;
    }
    let mut empty: Vec<(NodeId, String)> = vec![(node.id, node.config.http_addr.clone())];
    let mut missing = Vec::new();
    for (id, p) in &probes {
        match p {
            Ok(p) if p.seed == node.config.seed_fingerprint => empty.push((*id, p.http.clone())),
            Ok(p) => missing.push(format!(
                "{id} (started with another member list: seed {:?})",
                p.seed
            )),
            Err(e) => missing.push(format!("{id} ({e})")),
        }
    }
    let seed_size = node.config.seed.len();
    let majority = seed_size / 2 + 1;
    if empty.len() < majority {
        *majority_since = None;
        said.once(format!(
            "waiting for a majority of the {seed_size} members before forming a new cluster \
             ({} up and empty; not answering: {})",
            empty.len(),
            missing.join(", ")
        ));
        return;
    }
    if empty.len() < seed_size {
        let since = *majority_since.get_or_insert_with(Instant::now);
        if since.elapsed() < FORMATION_GRACE {
            return;
        }
    }
    let lowest = empty.iter().map(|(id, _)| *id).min().unwrap_or(node.id);
    if lowest != node.id {
        said.once(format!("waiting for node {lowest} to form the cluster"));
        return;
    }
    form(node, &empty, &missing).await;
}

/// Form a new cluster with the seed members in `empty` (this node first) up and empty.
async fn form(node: &Arc<Node>, empty: &[(NodeId, String)], missing: &[String]) {
    let cluster = new_cluster_id();
    if let Err(e) = node.cluster.adopt(&cluster) {
        error!(error = %e, "cannot record the new cluster id in node.json");
        return;
    }
    let offer = Adopt {
        cluster: cluster.clone(),
        seed: node.config.seed_fingerprint.clone(),
    };
    let mut adopted = vec![node.id];
    for (id, _) in empty.iter().filter(|(id, _)| *id != node.id) {
        let Some(addr) = node
            .config
            .seed
            .iter()
            .find(|m| m.id == *id)
            .map(|m| m.raft.clone())
        else {
            continue;
        };
        match node
            .peers
            .post::<_, ()>(&addr, *id, route::ADOPT, &offer, Duration::from_secs(1))
            .await
        {
            Ok(()) => adopted.push(*id),
            Err(e) => info!(peer = id, "the offer to form cluster {cluster} was declined: {e}"),
        }
    }
    let majority = node.config.seed.len() / 2 + 1;
    if adopted.len() < majority {
        info!(
            adopted = adopted.len(),
            "too few members adopted cluster {cluster}; trying again"
        );
        if let Err(e) = node.cluster.release() {
            error!(error = %e, "cannot update node.json");
        }
        return;
    }
    let http_of = |id: NodeId| {
        empty
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, h)| h.clone())
            .or_else(|| {
                node.config
                    .seed
                    .iter()
                    .find(|m| m.id == id)
                    .and_then(|m| m.http.clone())
            })
            .unwrap_or_default()
    };
    let members: BTreeMap<NodeId, NodeInfo> = node
        .config
        .seed
        .iter()
        .map(|m| {
            (
                m.id,
                NodeInfo {
                    http: http_of(m.id),
                    raft: m.raft.clone(),
                    cluster: cluster.clone(),
                    promote: false,
                },
            )
        })
        .collect();
    info!(
        cluster = %cluster,
        members = members.len(),
        up = adopted.len(),
        "forming cluster {cluster}: {} of {} members are up and empty{}",
        adopted.len(),
        members.len(),
        if missing.is_empty() {
            String::new()
        } else {
            format!(
                "; the others ({}) are admitted when they start",
                missing.join(", ")
            )
        }
    );
    match node.raft.initialize(members).await {
        Ok(()) => {
            if let Err(e) = node.cluster.join(&cluster) {
                error!(error = %e, "cannot record the cluster id in node.json");
            }
            info!(cluster = %cluster, "cluster formed");
        }
        Err(e) => warn!(error = %e, "could not form the cluster"),
    }
}

/// One round of a `--join` node: learn the cluster from one of the addresses, ask to be
/// admitted.
async fn join_round(node: &Arc<Node>, said: &mut Said) {
    for addr in &node.config.join {
        let members: MembersResponse = match node
            .peers
            .get_client_api(addr, "/admin/members", Duration::from_secs(5))
            .await
        {
            Ok(m) => m,
            Err(e) => {
                said.once(format!("waiting for the cluster at {addr}: {}", short(&e)));
                continue;
            }
        };
        if let Some(mine) = node.cluster.id().filter(|_| has_raft_state(node)) {
            if mine != members.cluster_id {
                warn!(
                    "this node holds state of cluster {mine}, but {addr} belongs to cluster {}; \
                     not joining it",
                    members.cluster_id
                );
                return;
            }
        }
        // The leader first: the others would only forward the request to it.
        let mut targets: Vec<(NodeId, String)> = members
            .members
            .iter()
            .filter(|m| m.id != node.id)
            .map(|m| (m.id, m.raft.clone()))
            .collect();
        targets.sort_by_key(|(id, _)| *id != members.leader);
        said.once(format!(
            "asking cluster {} (leader: node {}) to admit this node as a learner",
            members.cluster_id, members.leader
        ));
        if ask_admission(node, &members.cluster_id, &targets, true, said).await {
            return;
        }
    }
}

/// Ask the members in `via`, in turn, to admit this node to `cluster`; true once admitted.
async fn ask_admission(
    node: &Arc<Node>,
    cluster: &str,
    via: &[(NodeId, String)],
    join: bool,
    said: &mut Said,
) -> bool {
    let request = Admit {
        id: node.id,
        http: node.config.http_addr.clone(),
        raft: node.config.raft_addr.clone(),
        join,
    };
    // Demoting a voter is a joint-consensus change; give it time to commit.
    let timeout = node.config.leader_wait + node.config.batch.write_timeout + Duration::from_secs(1);
    for (id, addr) in via {
        let answer: Result<Result<Admitted, AdminError>, PeerError> = node
            .peers
            .post_as(cluster, addr, *id, route::ADMIT, &request, timeout)
            .await
            .map(Ok)
            .or_else(|e| match &e {
                PeerError::Remote {
                    status: 503, body, ..
                } => wire::decode::<AdminError>(body).map(Err).map_err(|_| e),
                _ => Err(e),
            });
        match answer {
            Ok(Ok(admitted)) => {
                accept_admission(node, admitted).await;
                return true;
            }
            Ok(Err(refusal @ (AdminError::NotFound(_) | AdminError::Conflict(_)))) => {
                said.once(format!("cluster {cluster} does not admit this node: {refusal}"));
                return false;
            }
            Ok(Err(e)) => said.once(format!(
                "cluster {cluster} cannot admit this node yet ({e}); asking again"
            )),
            Err(e) => said.once(format!(
                "waiting to be admitted to cluster {cluster}: node {id} at {addr}: {}",
                short(&e)
            )),
        }
    }
    false
}

fn short(e: &PeerError) -> String {
    match e {
        PeerError::Remote { status, body, .. } => format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ),
        other => other.to_string(),
    }
}

/// Take the cluster id the leader admitted this node with, after recording the leader's vote:
/// a deposed leader that reaches this node first then finds a newer vote and is refused, so
/// it can never count this node towards a commit of its own.
async fn accept_admission(node: &Node, admitted: Admitted) {
    let leader = admitted.vote.leader_id.node_id;
    let vote = Vote::new(admitted.vote.leader_id.term, leader);
    let request = VoteRequest {
        vote,
        last_log_id: None,
        leadership_transfer: false,
    };
    match node.raft.vote(request).await {
        Ok(answer) if answer.is_granted_to(&vote) => {}
        Ok(_) => info!("this node already holds a vote at least as new as its admitting leader's"),
        Err(e) => {
            error!(error = %e, "could not record the admitting leader's vote; not joining yet");
            return;
        }
    }
    if let Err(e) = node.cluster.join(&admitted.cluster) {
        error!(error = %e, "cannot record the cluster id in node.json; not joining yet");
        return;
    }
    if admitted.was_voter {
        info!(
            cluster = %admitted.cluster,
            leader,
            "admitted to cluster {} as a learner: this node was a voter without its data, so it \
             catches up first and the leader promotes it back to voter when it has",
            admitted.cluster
        );
    } else {
        info!(
            cluster = %admitted.cluster,
            leader,
            "admitted to cluster {} as a learner; it catches up from the leader",
            admitted.cluster
        );
    }
}

/// A joined node started with `--join`: the cluster answering at the join addresses must be
/// its own. A directory of another cluster is refused.
async fn check_joined_cluster(node: &Node, refuse: &tokio::sync::watch::Sender<Option<Refusal>>) {
    let Some(mine) = node.cluster.id() else {
        return;
    };
    for addr in &node.config.join {
        match node
            .peers
            .get_client_api::<MembersResponse>(addr, "/admin/members", Duration::from_secs(3))
            .await
        {
            Ok(m) if m.cluster_id == mine => return,
            Ok(m) => {
                let e = crate::store::OpenError::WrongCluster {
                    path: node.config.data_dir.clone(),
                    found: mine,
                    expected: m.cluster_id,
                };
                error!("{e}");
                let _ = refuse.send(Some(Refusal(e.to_string())));
                return;
            }
            Err(_) => continue,
        }
    }
}

/// Serve the peer request to admit a node: any member forwards it to the leader.
pub async fn admit(node: &Node, request: Admit) -> Result<Admitted, AdminError> {
    match node.admin(AdminRequest::Admit(request)).await? {
        AdminReply::Admitted(a) => Ok(a),
        _ => Err(AdminError::Node(crate::error::NodeError::Internal(
            "the leader answered an admission with something else".into(),
        ))),
    }
}

/// What `--force-new-cluster` did.
#[derive(Debug, Clone)]
pub struct Forced {
    /// The cluster the node leaves.
    pub old_cluster: Option<String>,
    /// Its voters.
    pub old_voters: Vec<NodeId>,
    /// The new cluster's id.
    pub new_cluster: String,
    /// The commit index the node knew.
    pub committed: Option<LogIndex>,
    /// Its last log index before the forced entry.
    pub last: LogIndex,
}

/// `--force-new-cluster`, before Raft starts: append to this node's log a membership entry in
/// which it is the only voter, in a term above any it has seen, and give it a new cluster id.
/// When Raft starts it elects itself (it is a quorum of one) and commits that entry with
/// everything before it. The other members of the old cluster keep the old id, so neither
/// side can ever count on the other: they would otherwise go on as a second cluster with the
/// same name. `None` when this node already is the only voter.
pub async fn force_new_cluster(data: &mut DataDir, config: &NodeConfig) -> Result<Option<Forced>, String> {
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
    use openraft::RaftLogReader;

    let snapshot_last = data.sm.read().last_applied;
    let last = data.log.last_log_id().max(snapshot_last).ok_or_else(|| {
        "this node holds no data (no log, no snapshot): there is nothing to start a cluster from; \
         run it on the data directory of a surviving member"
            .to_string()
    })?;
    // The membership in force: the snapshot's, then every membership entry after it.
    let mut membership: StoredMembership = data.sm.read().membership.clone();
    let first = data.log.purged().map_or(0, |p| p.index + 1);
    let mut reader = data.log.reader();
    let mut from = first;
    while let Some(log_last) = data.log.last_log_id().filter(|l| from <= l.index) {
        let to = (from + 1024).min(log_last.index + 1);
        let entries: Vec<Entry> = reader
            .try_get_log_entries(from..to)
            .await
            .map_err(|e| format!("cannot read the log: {e}"))?;
        for e in entries {
            if let openraft::EntryPayload::Membership(m) = e.payload {
                membership = StoredMembership::new(Some(e.log_id), m);
            }
        }
        from = to;
    }
    let old_voters: Vec<NodeId> = membership.voter_ids().collect();
    if old_voters == [config.id] && membership.get_joint_config().len() == 1 {
        return Ok(None);
    }
    let vote_term = data.log.vote().map_or(0, |v| v.leader_id.term);
    let term = vote_term.max(last.leader_id.term) + 1;
    let new_cluster = new_cluster_id();
    let me = NodeInfo {
        http: config.http_addr.clone(),
        raft: config.raft_addr.clone(),
        cluster: new_cluster.clone(),
        promote: false,
    };
    let alone = openraft::Membership::new(
        vec![std::collections::BTreeSet::from([config.id])],
        BTreeMap::from([(config.id, me)]),
    )
    .map_err(|e| format!("cannot build the one-member membership: {e}"))?;
    let leader = openraft::impls::leader_id_adv::LeaderId {
        term,
        node_id: config.id,
    };
    let entry = Entry {
        log_id: LogId::new(leader, last.index + 1),
        payload: openraft::EntryPayload::Membership(alone),
    };
    data.log
        .save_vote(&Vote::new(term, config.id))
        .await
        .map_err(|e| format!("cannot save the vote: {e}"))?;
    data.log
        .blocking_append(vec![entry])
        .await
        .map_err(|e| format!("cannot append the new membership: {e}"))?;
    let old_cluster = data.identity.cluster.clone();
    let identity = Identity {
        node_id: config.id,
        cluster: Some(new_cluster.clone()),
        joined: true,
    };
    identity
        .save(&config.data_dir)
        .map_err(|e| format!("cannot record the new cluster id: {e}"))?;
    data.identity = identity;
    Ok(Some(Forced {
        old_cluster,
        old_voters,
        new_cluster,
        committed: data.log.committed_index(),
        last: last.index,
    }))
}
