//! How a cluster is formed, and the rules a node follows before it helps elect anyone.
//!
//! A new cluster is formed by the member with the lowest id, and only once every member
//! answers a probe saying it holds no Raft state: a node whose data was wiped must never form
//! a fresh cluster next to the one that still runs.
//!
//! A node without Raft state has either never joined (a cluster is being formed) or lost its
//! data directory. A wiped node has forgotten the entries it stored and the votes it cast: if
//! it voted, a candidate lacking an entry that was committed on the wiped node and one other
//! could win, and that entry would be lost. So it votes only for a candidate whose log holds
//! nothing but the initial membership entry, which is exactly the election that forms a new
//! cluster; otherwise it waits until a leader has replicated to it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::raft::VoteRequest;
use tracing::{info, warn};

use crate::node::Node;
use crate::types::{NodeInfo, SnapshotMeta, TypeConfig, Vote};
use crate::wire::{route, ProbeReply};

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
    }
}

/// Whether this node may answer a vote (or pre-vote) request; `Err` says why not.
pub fn may_vote(node: &Node, req: &VoteRequest<TypeConfig>) -> Result<(), &'static str> {
    let candidate_last = req.last_log_id.map_or(0, |l| l.index);
    if candidate_last == 0 || has_raft_state(node) {
        return Ok(());
    }
    warn!(
        candidate_last,
        "refusing to vote: this node has no Raft state (wiped?) and the candidate's log is not empty"
    );
    Err(
        "this node holds no Raft state (new or wiped data directory) and votes only for a \
         cluster being formed, or once a leader has brought it up to date",
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

/// Form a new cluster when, and only when, it is safe (see the module documentation).
pub async fn form(node: Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    if has_raft_state(&node) {
        return;
    }
    let lowest = node.config.members.iter().map(|(id, _)| *id).min();
    if lowest != Some(node.id) {
        info!(
            "waiting for node {} to form the cluster",
            lowest.unwrap_or_default()
        );
        return;
    }
    let mut announced = false;
    loop {
        if has_raft_state(&node) {
            return;
        }
        let mut members = BTreeMap::new();
        members.insert(
            node.id,
            NodeInfo {
                http: node.config.http_addr.clone(),
                raft: node.config.raft_addr.clone(),
            },
        );
        let mut missing = Vec::new();
        for (id, addr) in node.config.members.iter().filter(|(id, _)| *id != node.id) {
            match node
                .peers
                .post::<_, ProbeReply>(addr, *id, route::PROBE, &(), Duration::from_secs(1))
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
            match node.raft.initialize(members).await {
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
