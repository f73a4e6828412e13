//! The nemesis: a seeded schedule of faults, and the executor that applies it to a cluster.
//!
//! The schedule is a pure function of the seed, the enabled fault kinds, the cluster size and
//! the duration ([`schedule`]), so a failing run can be replayed with the same faults in the
//! same order at the same offsets. What cannot be fixed in advance is *which node leads* when a
//! "kill the leader" step comes, nor who is a member when a membership step comes; the
//! executor resolves that at the time, and records the node it chose in the history, next to
//! every other action.
//!
//! Faults are applied one at a time: a step waits its gap, applies its fault, holds it, then
//! heals it completely (restart, SIGCONT, mend every cut link) before the next step. One fault
//! at a time keeps a majority alive at every moment, so any unavailability beyond a fault's
//! hold time is a liveness finding, and any anomaly is a safety bug, never an artefact of the
//! schedule. Each step still brings real disruption: a killed leader loses its in-flight
//! writes, a paused leader is deposed while it still believes it leads, and a bridge partition
//! leaves one node talking to both halves.
//!
//! Two kinds change who is in the cluster, and their effects outlive their step:
//!
//! - **wipe**: `kill -9` a voter that does not lead, delete its data directory, and after the
//!   hold restart it empty under its old id. kvnode re-admits it as a learner and promotes it
//!   back once it has caught up, by itself; meanwhile the next steps (kills, pauses,
//!   partitions of the others) run against a cluster with one voter fewer. This is the fault a
//!   wiped node must never turn into a lost acknowledged write.
//! - **member**: alternately *grow* (start a spare node under a fresh id with `kvnode --join`,
//!   poll until it has caught up, promote it) and *shrink* (remove a voter, sometimes the
//!   leader, which hands leadership over first, and stop its process for good: a removed
//!   node's data directory cannot rejoin). The cluster stays within its original size and one
//!   more. A shrink removes an original node only while a majority of the original nodes
//!   stays, so the clients' cluster file always names a majority of live members.
//!
//! Both wait (polling, with a deadline) for the membership to be *settled* before they act: no
//! change half done, no wiped node still waiting to be promoted back, every running member a
//! voter following the leader. Wiping a second node while the first is still a learner would
//! leave a three-node cluster with one voter able to answer: Raft rightly refuses to decide
//! anything then, and that is a loss of quorum no heal can undo. A step whose cluster does not
//! settle in time is skipped and recorded as `skip`, with the reason.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kvapi::{MemberRole, MembersResponse, NodeId, Role};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use testkit::{Cluster, NodeLayout};

use crate::history::Recorder;
use crate::netns::{Netns, NetnsError};

/// A class of fault that can be enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// `kill -9` a node, then restart it on the same data directory.
    Kill,
    /// SIGSTOP a node, then SIGCONT it.
    Pause,
    /// Cut peer traffic between groups of nodes (needs root for network namespaces).
    Partition,
    /// `kill -9` a follower, delete its data directory, restart it empty under its old id.
    Wipe,
    /// Membership changes: add a spare node and promote it, remove a voter.
    Member,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Wipe,
        FaultKind::Member,
    ];

    /// The kinds a run injects unless told otherwise.
    pub const DEFAULT: [FaultKind; 3] = [FaultKind::Kill, FaultKind::Pause, FaultKind::Partition];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Wipe => "wipe",
            FaultKind::Member => "member",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown fault kind on the command line.
#[derive(Debug, thiserror::Error)]
#[error("unknown fault kind {0:?}: expected kill, pause, partition, wipe or member")]
pub struct UnknownFault(String);

impl FromStr for FaultKind {
    type Err = UnknownFault;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| UnknownFault(s.to_string()))
    }
}

/// Which node a process fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Victim {
    /// This node.
    Node(NodeId),
    /// Whichever node leads when the step starts.
    Leader,
}

/// The shape of a network partition, by node index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partition {
    /// The listed minority is cut off from the rest.
    MajorityMinority {
        /// The smaller side.
        minority: Vec<usize>,
    },
    /// Whichever node leads is cut off from everyone.
    IsolateLeader,
    /// Two halves that cannot talk, and one node that talks to both.
    Bridge {
        /// One half.
        left: Vec<usize>,
        /// The node in the middle.
        bridge: usize,
        /// The other half.
        right: Vec<usize>,
    },
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, hold, restart.
    Kill(Victim),
    /// SIGSTOP, hold, SIGCONT.
    Pause(Victim),
    /// Cut, hold, mend.
    Partition(Partition),
    /// SIGKILL a voter that does not lead and delete its data directory, hold, restart it
    /// empty. The number picks the victim among the voters that do not lead, in id order
    /// (modulo their count).
    Wipe(usize),
    /// Change the membership; the change stays after the hold.
    Member(MemberChange),
}

/// A membership change of the nemesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// Start a spare node under a fresh id with `kvnode --join` (a learner), wait until it
    /// has caught up and promote it to voter.
    Grow,
    /// Remove a voter (a learner first, if a failed promotion left one) and stop its process
    /// for good.
    Shrink {
        /// Remove the leader, when it may be removed.
        leader: bool,
        /// Otherwise the victim, an index into the removable voters in id order.
        pick: usize,
    },
}

/// One step of the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Quiet time before the fault.
    pub gap: Duration,
    /// The fault.
    pub fault: Fault,
    /// How long the fault lasts.
    pub hold: Duration,
}

/// The pacing of a schedule: gaps and holds are drawn uniformly from these ranges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Shortest and longest quiet time between faults.
    pub gap: (Duration, Duration),
    /// Shortest and longest fault.
    pub hold: (Duration, Duration),
    /// Probability that a kill is a crash with an immediate restart (held 0–100 ms): the node
    /// is back before anyone else could be elected, which is when a restarted leader resumes
    /// its old term.
    pub quick_restart: f64,
}

impl Default for Pace {
    /// Gaps of 0.3–1.5 s, faults of 0.8–3 s: long enough for elections (300–600 ms
    /// timeouts) to happen inside a fault, short enough for a 25 s run to see about eight.
    /// One kill in four restarts at once.
    fn default() -> Self {
        Pace {
            gap: (Duration::from_millis(300), Duration::from_millis(1500)),
            hold: (Duration::from_millis(800), Duration::from_millis(3000)),
            quick_restart: 0.25,
        }
    }
}

fn between(rng: &mut StdRng, (lo, hi): (Duration, Duration)) -> Duration {
    if hi <= lo {
        return lo;
    }
    Duration::from_millis(rng.gen_range(lo.as_millis() as u64..=hi.as_millis() as u64))
}

/// The seeded fault schedule for `nodes` nodes filling about `duration`. Pure: the same inputs
/// give the same steps. Empty when no kind is enabled.
pub fn schedule(
    seed: u64,
    kinds: &BTreeSet<FaultKind>,
    nodes: usize,
    duration: Duration,
    pace: Pace,
) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321);
    let kinds: Vec<FaultKind> = kinds.iter().copied().collect();
    let mut steps = Vec::new();
    if kinds.is_empty() || nodes == 0 {
        return steps;
    }
    let mut elapsed = Duration::ZERO;
    // Membership steps alternate, so the cluster stays within its size and one more.
    let mut grown = false;
    loop {
        let gap = between(&mut rng, pace.gap);
        let hold = between(&mut rng, pace.hold);
        if elapsed + gap + hold > duration {
            break;
        }
        elapsed += gap + hold;
        let victim = |rng: &mut StdRng| {
            if rng.gen_bool(0.5) {
                Victim::Leader
            } else {
                Victim::Node(rng.gen_range(0..nodes) as NodeId)
            }
        };
        let mut hold = hold;
        let fault = match kinds[rng.gen_range(0..kinds.len())] {
            FaultKind::Kill => {
                if pace.quick_restart > 0.0 && rng.gen_bool(pace.quick_restart.min(1.0)) {
                    hold = Duration::from_millis(rng.gen_range(0..=100));
                }
                Fault::Kill(victim(&mut rng))
            }
            FaultKind::Pause => Fault::Pause(victim(&mut rng)),
            FaultKind::Partition => {
                let mut order: Vec<usize> = (0..nodes).collect();
                order.shuffle(&mut rng);
                match rng.gen_range(0..3) {
                    0 => Fault::Partition(Partition::MajorityMinority {
                        minority: sorted(&order[..(nodes - 1) / 2]),
                    }),
                    1 => Fault::Partition(Partition::IsolateLeader),
                    _ if nodes >= 3 => {
                        let half = (nodes - 1) / 2;
                        Fault::Partition(Partition::Bridge {
                            left: sorted(&order[..half]),
                            bridge: order[half],
                            right: sorted(&order[half + 1..]),
                        })
                    }
                    _ => Fault::Partition(Partition::IsolateLeader),
                }
            }
            FaultKind::Wipe => Fault::Wipe(rng.gen_range(0..nodes)),
            FaultKind::Member => {
                let change = if grown {
                    MemberChange::Shrink {
                        leader: rng.gen_bool(0.3),
                        pick: rng.gen_range(0..=nodes),
                    }
                } else {
                    MemberChange::Grow
                };
                grown = !grown;
                Fault::Member(change)
            }
        };
        steps.push(Step { gap, fault, hold });
    }
    steps
}

fn sorted(nodes: &[usize]) -> Vec<usize> {
    let mut v = nodes.to_vec();
    v.sort_unstable();
    v
}

/// The node that leads now: among the running, unpaused nodes that answer, the one claiming
/// leadership in the highest term (a deposed leader that has not noticed yet is outvoted by
/// the newer term).
pub fn current_leader(cluster: &Cluster) -> Option<NodeId> {
    cluster
        .running()
        .into_iter()
        .filter(|&id| !cluster.is_paused(id))
        .filter_map(|id| cluster.status(id))
        .filter(|s| s.role == Role::Leader)
        .max_by_key(|s| s.term)
        .map(|s| s.id)
}

/// Why the nemesis could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum NemesisError {
    /// A partition could not be made or mended.
    #[error("network fault failed: {0}")]
    Net(#[from] NetnsError),
}

/// How long a membership step waits for the cluster to settle before it is skipped.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a spare node may take to be admitted, catch up and be promoted.
pub const PROMOTE_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a removal may take to be carried out and committed.
pub const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// How settled the membership must be before a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Every member a voter (before a wipe or a grow).
    AllVoters,
    /// Learners allowed, but none waiting to be promoted back (before a shrink).
    NoneWaiting,
}

/// Applies a schedule to a cluster and records every action.
pub struct Nemesis<'a> {
    cluster: &'a mut Cluster,
    net: Option<&'a mut Netns>,
    recorder: Recorder,
    rng: StdRng,
    /// The cluster's size as started: its nodes have ids `0..originals`.
    originals: usize,
    /// The id the next spare node gets.
    next_id: NodeId,
    /// The node living in each network namespace (by namespace index), when there are
    /// namespaces. A removed node's namespace goes to the next spare.
    slots: Vec<Option<NodeId>>,
}

impl<'a> Nemesis<'a> {
    /// A nemesis for `cluster`, whose nodes have ids `0..n` and live, with namespaces, in the
    /// first `n` of `net`'s namespaces (the rest are for spare nodes). Partitions need `net`.
    /// `seed` decides the fallback victim when no leader can be found.
    pub fn new(cluster: &'a mut Cluster, net: Option<&'a mut Netns>, recorder: Recorder, seed: u64) -> Self {
        let originals = cluster.ids().len();
        let slots = net
            .as_deref()
            .map(|n| {
                (0..n.nodes().len())
                    .map(|i| (i < originals).then_some(i as NodeId))
                    .collect()
            })
            .unwrap_or_default();
        Nemesis {
            cluster,
            net,
            recorder,
            rng: StdRng::seed_from_u64(seed ^ 0x7669_6374_696d_7321),
            originals,
            next_id: originals as NodeId,
            slots,
        }
    }

    /// Run the steps in order until they are done or `stop` is set, healing each fault before
    /// the next one. Returns the number of steps applied (skipped ones included).
    pub fn run(&mut self, steps: &[Step], stop: &AtomicBool) -> Result<usize, NemesisError> {
        let mut applied = 0;
        for step in steps {
            if !sleep_unless(step.gap, stop) {
                break;
            }
            self.restart_exited();
            let healer = self.apply(&step.fault)?;
            applied += 1;
            // The hold is not cut short by `stop`: the schedule says how long the fault lasts.
            std::thread::sleep(step.hold);
            self.undo(healer)?;
        }
        Ok(applied)
    }

    /// The members (not removed) in id order.
    fn members(&self) -> Vec<NodeId> {
        let mut ids = self.cluster.members();
        ids.sort_unstable();
        ids
    }

    fn resolve(&mut self, victim: Victim) -> (NodeId, String) {
        match victim {
            Victim::Node(i) => {
                let ids = self.members();
                (ids[i as usize % ids.len()], "scheduled node".into())
            }
            Victim::Leader => match current_leader(self.cluster) {
                Some(id) => (id, "the leader".into()),
                None => {
                    let ids = self.members();
                    let id = ids[self.rng.gen_range(0..ids.len())];
                    (id, "no leader found: a random node instead".into())
                }
            },
        }
    }

    /// The namespace of node `id`.
    fn slot_of(&self, id: NodeId) -> Option<usize> {
        self.slots.iter().position(|s| *s == Some(id))
    }

    /// Record a step that could not be carried out, and why; nothing to undo.
    fn skip(&self, what: &str, why: impl fmt::Display) -> Undo {
        self.recorder.fault("skip", Vec::new(), format!("{what}: {why}"));
        Undo::Nothing
    }

    fn apply(&mut self, fault: &Fault) -> Result<Undo, NemesisError> {
        match fault {
            Fault::Kill(victim) => {
                let (id, why) = self.resolve(*victim);
                self.cluster.kill(id);
                self.recorder.fault("kill", vec![id], why);
                Ok(Undo::Restart(id))
            }
            Fault::Pause(victim) => {
                let (id, why) = self.resolve(*victim);
                self.cluster.pause(id);
                self.recorder.fault("pause", vec![id], why);
                Ok(Undo::Resume(id))
            }
            Fault::Partition(shape) => self.partition(shape),
            Fault::Wipe(prefer) => Ok(self.wipe(*prefer)),
            Fault::Member(MemberChange::Grow) => Ok(self.grow()),
            Fault::Member(MemberChange::Shrink { leader, pick }) => Ok(self.shrink(*leader, *pick)),
        }
    }

    /// Cut the links of `shape`. Scheduled indexes are positions among the current members in
    /// id order; members the shape does not name (a spare) join the larger side.
    fn partition(&mut self, shape: &Partition) -> Result<Undo, NemesisError> {
        if self.net.is_none() {
            // The run decided partitions are off (not root); a stray step is a no-op.
            return Ok(Undo::Nothing);
        }
        let ids = self.members();
        let at = |i: usize| ids[i % ids.len()];
        let rest = |taken: &[NodeId]| -> Vec<NodeId> {
            ids.iter().copied().filter(|id| !taken.contains(id)).collect()
        };
        let (left, right, detail): (Vec<NodeId>, Vec<NodeId>, String) = match shape {
            Partition::MajorityMinority { minority } => {
                let left: Vec<NodeId> = minority.iter().map(|&i| at(i)).collect();
                let right = rest(&left);
                let detail = format!("majority/minority: {left:?} cut off");
                (left, right, detail)
            }
            Partition::IsolateLeader => {
                let (id, why) = self.resolve(Victim::Leader);
                (vec![id], rest(&[id]), format!("isolated {why} ({id})"))
            }
            Partition::Bridge { left, bridge, right } => {
                let left: Vec<NodeId> = left.iter().map(|&i| at(i)).collect();
                let bridge = at(*bridge);
                let named: Vec<NodeId> = right.iter().map(|&i| at(i)).collect();
                let mut taken = left.clone();
                taken.push(bridge);
                // The right side is the larger one for an even count; it takes the extras.
                let right = rest(&taken);
                let detail = format!("bridge: {left:?} | {bridge} | {right:?} (scheduled right: {named:?})");
                (left, right, detail)
            }
        };
        let slots =
            |nodes: &[NodeId]| -> Vec<usize> { nodes.iter().filter_map(|&id| self.slot_of(id)).collect() };
        let (l, r) = (slots(&left), slots(&right));
        let net = self.net.as_deref_mut().expect("checked above");
        net.split(&l, &r)?;
        let mut touched: Vec<NodeId> = left.iter().chain(&right).copied().collect();
        touched.sort_unstable();
        self.recorder.fault("partition", touched, detail);
        Ok(Undo::Heal)
    }

    /// The membership as the leader reports it once it is settled (see the module
    /// documentation); `Err` says what is still missing.
    fn settled(&self, want: Settled) -> Result<MembersResponse, String> {
        let live = self.members();
        let m = live
            .iter()
            .find_map(|&id| self.cluster.members_of(id))
            .ok_or("no node answers GET /admin/members")?;
        if m.joint {
            return Err(format!(
                "a membership change is in progress (leader {})",
                m.leader
            ));
        }
        for member in &m.members {
            if member.promote_when_caught_up {
                return Err(format!(
                    "node {} lost its data and is not a voter again yet",
                    member.id
                ));
            }
            if want == Settled::AllVoters && member.role == MemberRole::Learner {
                return Err(format!("node {} is a learner", member.id));
            }
        }
        for &id in &live {
            let Some(listed) = m.members.iter().find(|x| x.id == id) else {
                return Err(format!("node {id} runs but is not a member"));
            };
            let status = self
                .cluster
                .status(id)
                .ok_or_else(|| format!("node {id} does not answer"))?;
            let follows = status.cluster_id.is_some()
                && status.leader.as_ref().map(|l| l.id) == Some(m.leader)
                && match listed.role {
                    MemberRole::Voter => matches!(status.role, Role::Leader | Role::Follower),
                    MemberRole::Learner => true,
                };
            if !follows {
                return Err(format!(
                    "node {id} does not follow leader {} as a member yet ({:?} of term {})",
                    m.leader, status.role, status.term
                ));
            }
        }
        Ok(m)
    }

    /// Poll [`Nemesis::settled`] until it holds or [`SETTLE_TIMEOUT`] passes.
    fn wait_settled(&self, want: Settled) -> Result<MembersResponse, String> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            match self.settled(want) {
                Ok(m) => return Ok(m),
                Err(why) if Instant::now() >= deadline => {
                    return Err(format!("not settled within {SETTLE_TIMEOUT:?}: {why}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Wipe a voter that does not lead (see [`Fault::Wipe`]).
    fn wipe(&mut self, prefer: usize) -> Undo {
        let m = match self.wait_settled(Settled::AllVoters) {
            Ok(m) => m,
            Err(why) => return self.skip("wipe", why),
        };
        let voters = voters_of(&m);
        if voters.len() < 3 {
            // With two voters, the one left alone could not re-admit the wiped one.
            return self.skip("wipe", format!("only {} voters", voters.len()));
        }
        let followers: Vec<NodeId> = voters.iter().copied().filter(|&v| v != m.leader).collect();
        // Leadership may have moved since the member list was taken: ask the node itself
        // right before the kill (a move in the milliseconds between is harmless for safety,
        // but the step is meant to hit a follower).
        let victim = (0..followers.len())
            .map(|k| followers[(prefer + k) % followers.len()])
            .find(|&id| self.cluster.status(id).is_some_and(|s| s.role == Role::Follower));
        let Some(id) = victim else {
            return self.skip("wipe", "no follower answers as one");
        };
        self.cluster.wipe(id);
        self.recorder.fault(
            "wipe",
            vec![id],
            format!(
                "a follower of leader {}: killed, data directory deleted",
                m.leader
            ),
        );
        Undo::Rejoin(id)
    }

    /// Add a spare node and promote it (see [`MemberChange::Grow`]).
    fn grow(&mut self) -> Undo {
        let m = match self.wait_settled(Settled::AllVoters) {
            Ok(m) => m,
            Err(why) => return self.skip("grow", why),
        };
        if m.members.len() > self.originals {
            return self.skip(
                "grow",
                format!("already {} members, one more than at the start", m.members.len()),
            );
        }
        let id = self.next_id;
        let via = voters_of(&m);
        let layout = if self.net.is_some() {
            let live = self.members();
            let Some(slot) = self
                .slots
                .iter()
                .position(|s| s.is_none_or(|owner| !live.contains(&owner)))
            else {
                return self.skip("grow", "no free network namespace for a spare node");
            };
            let net = self.net.as_deref().expect("checked above");
            let addr = net.nodes()[slot].addr;
            // A fresh port per id: a spare never takes over a removed node's address.
            let port = |base: u64| base + id;
            let layout = NodeLayout {
                http: format!("{addr}:{}", port(8080)),
                raft: format!("{addr}:{}", port(9090)),
                launch_prefix: net.launch_prefix(slot),
            };
            self.slots[slot] = Some(id);
            Some(layout)
        } else {
            None
        };
        self.next_id += 1;
        match layout {
            Some(layout) => self.cluster.join_with_layout(id, layout, &via),
            None => self.cluster.join(id, &via),
        }
        self.recorder.fault(
            "add",
            vec![id],
            format!("spare node {id} started with --join through {via:?}: a learner until promoted"),
        );
        match self.promote(id) {
            Ok(took) => {
                self.recorder.fault(
                    "promote",
                    vec![id],
                    format!("caught up and promoted {took:?} after it started"),
                );
                Undo::Nothing
            }
            Err(why) => {
                // A learner left behind would block the next wipe and grow: take it out again.
                let removed = self.remove(id);
                let what = format!("promoting node {id}: {why}");
                match removed {
                    Ok(()) => {
                        self.retire(id);
                        self.skip("grow", format!("{what}; removed it again"))
                    }
                    Err(e) => self.skip("grow", format!("{what}; and removing it again: {e}")),
                }
            }
        }
    }

    /// Remove a voter and stop it for good (see [`MemberChange::Shrink`]).
    fn shrink(&mut self, leader: bool, pick: usize) -> Undo {
        let m = match self.wait_settled(Settled::NoneWaiting) {
            Ok(m) => m,
            Err(why) => return self.skip("shrink", why),
        };
        let voters = voters_of(&m);
        let learner = m
            .members
            .iter()
            .find(|x| x.role == MemberRole::Learner)
            .map(|x| x.id);
        let (victim, why) = match learner {
            Some(id) => (id, "a learner left behind".to_string()),
            None => {
                if voters.len() <= self.originals {
                    return self.skip(
                        "shrink",
                        format!("{} voters, as many as at the start", voters.len()),
                    );
                }
                let candidates = removable(&voters, self.originals);
                if candidates.is_empty() {
                    return self.skip("shrink", "no voter may be removed");
                }
                if leader && candidates.contains(&m.leader) {
                    (m.leader, "the leader".to_string())
                } else {
                    (candidates[pick % candidates.len()], "a voter".to_string())
                }
            }
        };
        match self.remove(victim) {
            Ok(()) => {
                self.retire(victim);
                self.recorder.fault(
                    "remove",
                    vec![victim],
                    format!("{why} (leader was {}): removed and stopped for good", m.leader),
                );
            }
            Err(e) => {
                self.skip("shrink", format!("removing node {victim}: {e}; left running"));
            }
        }
        Undo::Nothing
    }

    /// Stop a removed node for good and free its namespace.
    fn retire(&mut self, id: NodeId) {
        self.cluster.retire(id);
        if let Some(slot) = self.slot_of(id) {
            self.slots[slot] = None;
        }
    }

    /// Send a membership request through the members other than `subject` in turn (the
    /// subject itself when it is the only one), one per attempt, until `answer` accepts a
    /// reply or `timeout` passes. `answer` returns `Some(Ok)` when done, `Some(Err)` to give
    /// up, `None` to try again; no reply at all (a node restarting or stopped) is tried again.
    fn admin_until<T>(
        &self,
        method: &str,
        path: &str,
        subject: NodeId,
        timeout: Duration,
        mut answer: impl FnMut(&testkit::Reply) -> Option<Result<T, String>>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no attempt");
        for attempt in 0.. {
            let mut via: Vec<NodeId> = self.members().into_iter().filter(|&v| v != subject).collect();
            if via.is_empty() {
                via.push(subject);
            }
            let node = via[attempt % via.len()];
            match self.cluster.request(node, method, path, None, &[]) {
                None => last = format!("node {node} did not answer"),
                Some(reply) => match answer(&reply) {
                    Some(done) => return done,
                    None => last = format!("node {node} answered {} {}", reply.status, error_code(&reply)),
                },
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("gave up after {timeout:?}; last: {last}"))
    }

    /// Promote learner `id` once it has caught up; how long that took since it started.
    fn promote(&self, id: NodeId) -> Result<Duration, String> {
        let started = Instant::now();
        let path = format!("/admin/members/{id}/promote");
        self.admin_until("POST", &path, id, PROMOTE_TIMEOUT, |r| {
            match (r.status, error_code(r)) {
                // Promoting a voter changes nothing: a retry after a lost answer ends here too.
                (200, _) => Some(Ok(started.elapsed())),
                // Behind, not admitted yet, no leader, no quorum, outcome unknown: later.
                (409, "learner_behind") | (404, "member_not_found") | (500 | 503 | 504, _) => None,
                (status, code) => Some(Err(format!("refused: {status} {code}: {}", r.json))),
            }
        })
    }

    /// Remove member `id` and wait until the removal has committed.
    fn remove(&self, id: NodeId) -> Result<(), String> {
        let path = format!("/admin/members/{id}");
        self.admin_until("DELETE", &path, id, REMOVE_TIMEOUT, |r| {
            match (r.status, error_code(r)) {
                // 404: gone already, e.g. by an earlier attempt whose answer was lost.
                (200, _) | (404, "member_not_found") => Some(Ok(())),
                (500 | 503 | 504, _) => None,
                (status, code) => Some(Err(format!("refused: {status} {code}: {}", r.json))),
            }
        })?;
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        loop {
            let gone = self
                .members()
                .into_iter()
                .filter(|&v| v != id)
                .find_map(|v| self.cluster.members_of(v))
                .is_some_and(|m| !m.joint && m.members.iter().all(|x| x.id != id));
            if gone {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "still a member {REMOVE_TIMEOUT:?} after its removal was accepted"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn undo(&mut self, undo: Undo) -> Result<(), NemesisError> {
        match undo {
            Undo::Restart(id) => {
                self.cluster.restart(id);
                self.recorder.fault("restart", vec![id], "");
            }
            Undo::Rejoin(id) => {
                self.cluster.restart(id);
                self.recorder.fault(
                    "restart",
                    vec![id],
                    "with an empty data directory: to be re-admitted as a learner and promoted back",
                );
            }
            Undo::Resume(id) => {
                self.cluster.resume(id);
                self.recorder.fault("resume", vec![id], "");
            }
            Undo::Heal => {
                if let Some(net) = self.net.as_deref_mut() {
                    let cut: Vec<usize> = net.cuts().iter().flat_map(|&(a, b)| [a, b]).collect();
                    net.heal()?;
                    let mut nodes: Vec<NodeId> = cut.into_iter().filter_map(|s| self.slots[s]).collect();
                    nodes.sort_unstable();
                    nodes.dedup();
                    self.recorder.fault("heal", nodes, "");
                }
            }
            Undo::Nothing => {}
        }
        Ok(())
    }

    /// Restart every member whose process ended although the nemesis did not stop it (a
    /// crash, or a signal from outside the harness), recording `exited` with its exit status:
    /// left alone, such a node would count as running and the cluster could never converge.
    fn restart_exited(&mut self) {
        for id in self.members() {
            if let Some(code) = self.cluster.wait_exit(id, Duration::ZERO) {
                self.recorder.fault(
                    "exited",
                    vec![id],
                    format!("exit status {code} (-1: killed by a signal), not by the nemesis: restarted; see its log"),
                );
                self.cluster.restart(id);
            }
        }
    }

    /// Undo anything still in effect: resume paused nodes, start stopped ones (removed nodes
    /// stay stopped), mend every link.
    pub fn heal_all(&mut self) -> Result<(), NemesisError> {
        self.restart_exited();
        for id in self.members() {
            if self.cluster.is_paused(id) {
                self.cluster.resume(id);
                self.recorder.fault("resume", vec![id], "final heal");
            }
            if !self.cluster.running().contains(&id) {
                self.cluster.restart(id);
                self.recorder.fault("restart", vec![id], "final heal");
            }
        }
        if let Some(net) = self.net.as_deref_mut() {
            if !net.cuts().is_empty() {
                net.heal()?;
                self.recorder.fault("heal", Vec::new(), "final heal");
            }
        }
        Ok(())
    }
}

/// The voters of a member list, in id order.
fn voters_of(m: &MembersResponse) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = m
        .members
        .iter()
        .filter(|x| x.role == MemberRole::Voter)
        .map(|x| x.id)
        .collect();
    v.sort_unstable();
    v
}

/// The voters a shrink may remove: any spare (id `originals` or above), and an original node
/// only while a majority of the original nodes stays afterwards.
pub fn removable(voters: &[NodeId], originals: usize) -> Vec<NodeId> {
    let original = |id: NodeId| (id as usize) < originals;
    let left = voters.iter().filter(|&&v| original(v)).count();
    let may_lose_one = left > originals / 2 + 1;
    voters
        .iter()
        .copied()
        .filter(|&v| !original(v) || may_lose_one)
        .collect()
}

/// The error code of an answer, or `-` when it has none.
fn error_code(r: &testkit::Reply) -> &str {
    r.json["error"]["code"].as_str().unwrap_or("-")
}

/// How to end a fault.
enum Undo {
    Restart(NodeId),
    /// Restart a wiped node.
    Rejoin(NodeId),
    Resume(NodeId),
    Heal,
    Nothing,
}

/// Sleep `d` in short slices; false when `stop` was set meanwhile.
fn sleep_unless(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    !stop.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(list: &[FaultKind]) -> BTreeSet<FaultKind> {
        list.iter().copied().collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let all = kinds(&FaultKind::ALL);
        let a = schedule(42, &all, 5, Duration::from_secs(60), Pace::default());
        let b = schedule(42, &all, 5, Duration::from_secs(60), Pace::default());
        let c = schedule(43, &all, 5, Duration::from_secs(60), Pace::default());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.len() >= 10, "{} steps", a.len());
    }

    #[test]
    fn a_schedule_fits_its_duration_and_uses_only_enabled_kinds() {
        let only_kill = kinds(&[FaultKind::Kill]);
        let steps = schedule(1, &only_kill, 3, Duration::from_secs(30), Pace::default());
        let total: Duration = steps.iter().map(|s| s.gap + s.hold).sum();
        assert!(total <= Duration::from_secs(30));
        assert!(steps.iter().all(|s| matches!(s.fault, Fault::Kill(_))));
        assert!(schedule(1, &BTreeSet::new(), 3, Duration::from_secs(30), Pace::default()).is_empty());
    }

    #[test]
    fn partitions_are_well_formed() {
        let part = kinds(&[FaultKind::Partition]);
        for nodes in [3, 5] {
            for step in schedule(7, &part, nodes, Duration::from_secs(300), Pace::default()) {
                match step.fault {
                    Fault::Partition(Partition::MajorityMinority { minority }) => {
                        assert_eq!(minority.len(), (nodes - 1) / 2);
                    }
                    Fault::Partition(Partition::Bridge { left, bridge, right }) => {
                        let mut all: Vec<usize> = left.iter().chain(&right).copied().collect();
                        all.push(bridge);
                        all.sort_unstable();
                        assert_eq!(all, (0..nodes).collect::<Vec<_>>());
                        assert!(!left.is_empty() && !right.is_empty());
                    }
                    Fault::Partition(Partition::IsolateLeader) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }

    #[test]
    fn fault_kinds_parse_from_their_names() {
        assert_eq!("pause".parse::<FaultKind>().expect("known"), FaultKind::Pause);
        assert_eq!("wipe".parse::<FaultKind>().expect("known"), FaultKind::Wipe);
        assert_eq!("member".parse::<FaultKind>().expect("known"), FaultKind::Member);
        assert!("flood".parse::<FaultKind>().is_err());
        for kind in FaultKind::ALL {
            assert_eq!(kind.name().parse::<FaultKind>().expect("round trip"), kind);
        }
    }

    #[test]
    fn wipes_name_a_node_of_the_cluster() {
        let wipe = kinds(&[FaultKind::Wipe]);
        for nodes in [3, 5] {
            let steps = schedule(11, &wipe, nodes, Duration::from_secs(120), Pace::default());
            assert!(steps.len() >= 20, "{} steps", steps.len());
            let mut seen = BTreeSet::new();
            for step in steps {
                match step.fault {
                    Fault::Wipe(i) => {
                        assert!(i < nodes);
                        seen.insert(i);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(seen.len(), nodes, "every node is a candidate");
        }
    }

    #[test]
    fn membership_steps_alternate_between_growing_and_shrinking() {
        let member = kinds(&[FaultKind::Member, FaultKind::Kill]);
        for (seed, nodes) in [(3, 3), (4, 5)] {
            let changes: Vec<MemberChange> =
                schedule(seed, &member, nodes, Duration::from_secs(300), Pace::default())
                    .into_iter()
                    .filter_map(|s| match s.fault {
                        Fault::Member(c) => Some(c),
                        _ => None,
                    })
                    .collect();
            assert!(changes.len() >= 20, "{} membership steps", changes.len());
            let mut leader_removals = 0;
            for (k, change) in changes.iter().enumerate() {
                match *change {
                    MemberChange::Grow => assert_eq!(k % 2, 0, "step {k}: {changes:?}"),
                    MemberChange::Shrink { leader, pick } => {
                        assert_eq!(k % 2, 1, "step {k}: {changes:?}");
                        assert!(pick <= nodes);
                        leader_removals += usize::from(leader);
                    }
                }
            }
            assert!(leader_removals > 0, "the leader is removed sometimes");
            assert!(leader_removals < changes.len() / 2, "but not always");
        }
    }

    #[test]
    fn the_default_kinds_are_the_old_ones_and_their_schedules_ignore_the_new_kinds() {
        assert_eq!(
            FaultKind::DEFAULT,
            [FaultKind::Kill, FaultKind::Pause, FaultKind::Partition]
        );
        // A schedule of kills alone is the same whichever other kinds exist: old seeds replay.
        let only_kill = kinds(&[FaultKind::Kill]);
        let a = schedule(5, &only_kill, 3, Duration::from_secs(60), Pace::default());
        assert!(a.iter().all(|s| matches!(s.fault, Fault::Kill(_))));
        let all = kinds(&FaultKind::ALL);
        let b = schedule(5, &all, 3, Duration::from_secs(600), Pace::default());
        for kind in ["wipe", "member", "kill", "pause", "partition"] {
            let found = b.iter().any(|s| {
                let name = match s.fault {
                    Fault::Kill(_) => "kill",
                    Fault::Pause(_) => "pause",
                    Fault::Partition(_) => "partition",
                    Fault::Wipe(_) => "wipe",
                    Fault::Member(_) => "member",
                };
                name == kind
            });
            assert!(found, "{kind} appears in a long schedule of every kind");
        }
    }

    #[test]
    fn a_shrink_keeps_a_majority_of_the_original_nodes() {
        // Three original nodes and a spare: any of them may go.
        assert_eq!(removable(&[0, 1, 2, 3], 3), vec![0, 1, 2, 3]);
        // One original gone already: only spares may go now.
        assert_eq!(removable(&[0, 2, 3, 4], 3), vec![3, 4]);
        // Five original nodes: two may go, one at a time.
        assert_eq!(removable(&[0, 1, 2, 3, 4, 5], 5), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(removable(&[0, 1, 3, 4, 6], 5), vec![0, 1, 3, 4, 6]);
        assert_eq!(removable(&[0, 3, 4, 6, 7], 5), vec![6, 7]);
        assert!(removable(&[0, 1, 2], 3).len() == 3, "the caller checks the size");
    }
}
