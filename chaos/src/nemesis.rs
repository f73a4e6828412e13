//! The nemesis: a seeded schedule of faults, and the executor that applies it to a cluster.
//!
//! The schedule is a pure function of the seed, the enabled fault kinds, the cluster size and
//! the duration ([`schedule`]), so a failing run can be replayed with the same faults in the
//! same order at the same offsets. What cannot be fixed in advance is *which node leads* when a
//! "kill the leader" step comes; the executor resolves that at the time, and records the node
//! it chose in the history, next to every other action.
//!
//! Faults are applied one at a time: a step waits its gap, applies its fault, holds it, then
//! heals it completely (restart, SIGCONT, mend every cut link) before the next step. One fault
//! at a time keeps a majority alive at every moment, so any unavailability beyond a fault's
//! hold time is a liveness finding, and any anomaly is a safety bug, never an artefact of the
//! schedule. Each step still brings real disruption: a killed leader loses its in-flight
//! writes, a paused leader is deposed while it still believes it leads, and a bridge partition
//! leaves one node talking to both halves.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kvapi::{NodeId, Role};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use testkit::Cluster;

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
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 3] = [FaultKind::Kill, FaultKind::Pause, FaultKind::Partition];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
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
#[error("unknown fault kind {0:?}: expected kill, pause or partition")]
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

/// Applies a schedule to a cluster and records every action.
pub struct Nemesis<'a> {
    cluster: &'a mut Cluster,
    net: Option<&'a mut Netns>,
    recorder: Recorder,
    rng: StdRng,
}

impl<'a> Nemesis<'a> {
    /// A nemesis for `cluster`; partitions need `net`. `seed` decides the fallback victim when
    /// no leader can be found.
    pub fn new(cluster: &'a mut Cluster, net: Option<&'a mut Netns>, recorder: Recorder, seed: u64) -> Self {
        Nemesis {
            cluster,
            net,
            recorder,
            rng: StdRng::seed_from_u64(seed ^ 0x7669_6374_696d_7321),
        }
    }

    /// Run the steps in order until they are done or `stop` is set, healing each fault before
    /// the next one. Returns the number of faults applied.
    pub fn run(&mut self, steps: &[Step], stop: &AtomicBool) -> Result<usize, NemesisError> {
        let mut applied = 0;
        for step in steps {
            if !sleep_unless(step.gap, stop) {
                break;
            }
            let healer = self.apply(&step.fault)?;
            applied += 1;
            // The hold is not cut short by `stop`: the schedule says how long the fault lasts.
            std::thread::sleep(step.hold);
            self.undo(healer)?;
        }
        Ok(applied)
    }

    fn resolve(&mut self, victim: Victim) -> (NodeId, String) {
        match victim {
            Victim::Node(id) => (id, "scheduled node".into()),
            Victim::Leader => match current_leader(self.cluster) {
                Some(id) => (id, "the leader".into()),
                None => {
                    let ids = self.cluster.ids();
                    let id = ids[self.rng.gen_range(0..ids.len())];
                    (id, "no leader found: a random node instead".into())
                }
            },
        }
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
            Fault::Partition(shape) => {
                let Some(net) = self.net.as_deref_mut() else {
                    // The run decided partitions are off (not root); a stray step is a no-op.
                    return Ok(Undo::Nothing);
                };
                let n = net.nodes().len();
                let (left, right, detail) = match shape {
                    Partition::MajorityMinority { minority } => {
                        let rest: Vec<usize> = (0..n).filter(|i| !minority.contains(i)).collect();
                        (
                            minority.clone(),
                            rest,
                            format!("majority/minority: {minority:?} cut off"),
                        )
                    }
                    Partition::IsolateLeader => {
                        let (id, why) = self.resolve(Victim::Leader);
                        let net = self.net.as_deref_mut().expect("checked above");
                        let rest: Vec<usize> = (0..net.nodes().len()).filter(|&i| i != id as usize).collect();
                        (vec![id as usize], rest, format!("isolated {why} ({id})"))
                    }
                    Partition::Bridge { left, bridge, right } => (
                        left.clone(),
                        right.clone(),
                        format!("bridge: {left:?} | {bridge} | {right:?}"),
                    ),
                };
                let net = self.net.as_deref_mut().expect("checked above");
                net.split(&left, &right)?;
                let mut touched: Vec<NodeId> = left.iter().chain(&right).map(|&i| i as NodeId).collect();
                touched.sort_unstable();
                self.recorder.fault("partition", touched, detail);
                Ok(Undo::Heal)
            }
        }
    }

    fn undo(&mut self, undo: Undo) -> Result<(), NemesisError> {
        match undo {
            Undo::Restart(id) => {
                self.cluster.restart(id);
                self.recorder.fault("restart", vec![id], "");
            }
            Undo::Resume(id) => {
                self.cluster.resume(id);
                self.recorder.fault("resume", vec![id], "");
            }
            Undo::Heal => {
                if let Some(net) = self.net.as_deref_mut() {
                    let cut: Vec<NodeId> = net
                        .cuts()
                        .iter()
                        .flat_map(|&(a, b)| [a as NodeId, b as NodeId])
                        .collect();
                    net.heal()?;
                    let mut nodes = cut;
                    nodes.sort_unstable();
                    nodes.dedup();
                    self.recorder.fault("heal", nodes, "");
                }
            }
            Undo::Nothing => {}
        }
        Ok(())
    }

    /// Undo anything still in effect: resume paused nodes, start stopped ones, mend every link.
    pub fn heal_all(&mut self) -> Result<(), NemesisError> {
        for id in self.cluster.ids() {
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

/// How to end a fault.
enum Undo {
    Restart(NodeId),
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
        assert!("flood".parse::<FaultKind>().is_err());
    }
}
