//! A survey of the cluster: every node's status folded into one picture.
//!
//! `kvctl status` asks each node separately; this module decides what the answers mean
//! together. It is pure, so each rule below is tested on hand-made reports:
//!
//! - The leader is the node that says it leads in the highest term among the answers. A node
//!   that still claims leadership in an older term (a deposed leader behind a partition) is not
//!   it.
//! - Lag comes from the leader's own replication progress, the only place it is measured; the
//!   leader itself trails by 0. Without a reachable leader there is no lag to show, and a
//!   follower the leader has not heard from in its term has a lag nobody knows: both are `None`,
//!   and the output tells the two apart.
//! - The voters are the members the leader reports (else the highest-term answer's members,
//!   else every node asked). A voter *follows* the leader when it answers, works, and names
//!   that leader in that term; the leader follows itself. There is a quorum when a majority of
//!   the voters follow the leader. A node that still says it leads while most voters are down
//!   or elsewhere is a leader without a quorum: it cannot commit anything, and kvctl says so
//!   instead of calling it the leader. The cluster survives as many more failures as it has
//!   following voters beyond that majority.
//! - [`Health`] folds this into three states. Without a leader but with a majority answering,
//!   an election can (and normally soon will) end: that is an election, not a lost quorum, and
//!   `status --watch` does not log it as one.
//! - The membership is the cluster's, not the cluster file's: learners (which receive the log
//!   but do not vote) are shown and not counted as voters, members the file does not list are
//!   asked too (the client learns them from the answers), and nodes the file lists that are no
//!   longer members are named as such.

use std::time::Duration;

use kvapi::ops::{NotReadyReason, Readiness};
use kvapi::{NodeId, Role, Status, Term};
use serde::Serialize;

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
    /// Its answer to `/ready`, when it was asked (`None`: not asked).
    pub ready: Option<Result<Readiness, String>>,
    /// True for a node of the cluster file (or `--endpoints`); false for one learned from the
    /// members the nodes report.
    pub listed: bool,
}

/// One node's row in the survey.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRow {
    /// Node id, when known.
    pub id: Option<NodeId>,
    /// Client address asked.
    pub address: String,
    /// Role, when the node answered.
    pub role: Option<Role>,
    /// True for the surveyed leader.
    pub is_leader: bool,
    /// Current term.
    pub term: Option<Term>,
    /// Highest log index stored.
    pub last_log_index: Option<u64>,
    /// Highest committed index.
    pub commit_index: Option<u64>,
    /// Highest applied index.
    pub last_applied: Option<u64>,
    /// Index covered by the latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Number of keys in this replica.
    pub keys: Option<u64>,
    /// Entries behind the leader, as the leader measures it; `None` without a leader, or when
    /// the leader does not know this node's progress.
    pub lag: Option<u64>,
    /// Response time in milliseconds (fractional).
    pub response_ms: f64,
    /// Why the node did not answer.
    pub error: Option<String>,
    /// Whether the node says it is ready to serve (`/ready`); `None` when unknown (it did not
    /// answer, or was not asked).
    pub ready: Option<bool>,
    /// Why it is not ready, when it says so.
    pub not_ready_reason: Option<NotReadyReason>,
}

/// The cluster-wide picture.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Survey {
    /// One row per node, sorted by id.
    pub nodes: Vec<NodeRow>,
    /// The leader's id, if one answered.
    pub leader: Option<NodeId>,
    /// The leader's address.
    pub leader_address: Option<String>,
    /// Highest term any node reported.
    pub term: Option<Term>,
    /// Number of voting members.
    pub voters: usize,
    /// Voters that answered.
    pub answering: usize,
    /// Voters that answered and follow the leader, the leader included (0 without a leader).
    pub following: usize,
    /// Voters needed for a quorum.
    pub quorum_size: usize,
    /// Whether the cluster can make progress: a majority of the voters follow the leader.
    pub quorum: bool,
    /// How many more voters may fail before the quorum is lost (0 without quorum).
    pub failures_tolerated: usize,
    /// Learners: members that receive the log but do not vote.
    pub learners: Vec<NodeId>,
    /// Members the cluster file does not list (learned from the cluster).
    pub unlisted: Vec<NodeId>,
    /// Nodes the cluster file lists that are not members of the cluster.
    pub not_members: Vec<NodeId>,
}

/// The cluster's state in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// A majority of the voters follow one leader: writes commit.
    Quorum,
    /// No leader that a majority follows, but a majority of the voters answer: an election can
    /// end (or has just ended and the followers are learning of it).
    Election,
    /// Fewer than a majority of the voters answer: nothing can commit until nodes come back.
    NoQuorum,
}

impl Survey {
    /// Fold the reports of every node into one picture.
    pub fn from_reports(reports: &[NodeReport]) -> Survey {
        let answers: Vec<&Status> = reports.iter().filter_map(|r| r.result.as_ref().ok()).collect();
        let term = answers.iter().map(|s| s.term).max();
        let leader_status = answers
            .iter()
            .filter(|s| s.role == Role::Leader && Some(s.term) == term)
            .min_by_key(|s| s.id)
            .copied();
        let leader = leader_status.map(|s| s.id);

        let membership = leader_status
            .or_else(|| answers.iter().filter(|s| Some(s.term) == term).copied().next())
            .map(|s| &s.members)
            .filter(|m| !m.is_empty());
        // A node whose Raft engine has stopped still answers HTTP, but it cannot vote or
        // store entries: it does not count towards the quorum.
        let working = |s: &&&Status| s.role != Role::Shutdown;
        // Without a membership list every node asked counts as a voter.
        let voting: Vec<&Status> = answers
            .iter()
            .filter(working)
            .filter(|s| membership.is_none_or(|members| members.iter().any(|m| m.id == s.id)))
            .copied()
            .collect();
        let voters = membership.map_or(reports.len().max(1), Vec::len);
        let answering = voting.len();
        let following = match leader_status {
            Some(l) => voting
                .iter()
                .filter(|s| {
                    s.id == l.id || (s.term == l.term && s.leader.as_ref().is_some_and(|h| h.id == l.id))
                })
                .count(),
            None => 0,
        };
        let quorum_size = voters / 2 + 1;
        let quorum = leader.is_some() && following >= quorum_size;
        let failures_tolerated = if quorum { following - quorum_size } else { 0 };
        let learners: Vec<NodeId> = leader_status
            .or_else(|| answers.iter().filter(|s| Some(s.term) == term).copied().next())
            .map(|s| s.learners.iter().map(|m| m.id).collect())
            .unwrap_or_default();
        let unlisted: Vec<NodeId> = reports
            .iter()
            .filter(|r| !r.listed)
            .filter_map(|r| r.id)
            .collect();
        let not_members: Vec<NodeId> = match membership {
            Some(members) => reports
                .iter()
                .filter(|r| r.listed)
                .filter_map(|r| r.id)
                .filter(|id| !members.iter().any(|m| m.id == *id) && !learners.contains(id))
                .collect(),
            None => Vec::new(),
        };

        let nodes = reports
            .iter()
            .map(|r| {
                // Whole microseconds, so JSON shows 1.234 and not 1.2340000000000002.
                let response_ms = r.elapsed.as_micros() as f64 / 1000.0;
                let readiness = match &r.ready {
                    Some(Ok(readiness)) if r.result.is_ok() => Some(readiness),
                    _ => None,
                };
                let ready = readiness.map(|x| x.ready);
                let not_ready_reason = readiness.and_then(|x| x.reason);
                match &r.result {
                    Ok(s) => NodeRow {
                        id: Some(s.id),
                        address: r.address.clone(),
                        role: Some(s.role),
                        is_leader: Some(s.id) == leader,
                        term: Some(s.term),
                        last_log_index: s.last_log_index,
                        commit_index: s.commit_index,
                        last_applied: s.last_applied,
                        snapshot_index: s.snapshot_index,
                        keys: Some(s.keys),
                        lag: lag_of(s.id, leader_status),
                        response_ms,
                        error: None,
                        ready,
                        not_ready_reason,
                    },
                    Err(e) => NodeRow {
                        id: r.id,
                        address: r.address.clone(),
                        role: None,
                        is_leader: false,
                        term: None,
                        last_log_index: None,
                        commit_index: None,
                        last_applied: None,
                        snapshot_index: None,
                        keys: None,
                        lag: r.id.and_then(|id| lag_of(id, leader_status)),
                        response_ms,
                        error: Some(e.clone()),
                        ready: None,
                        not_ready_reason: None,
                    },
                }
            })
            .collect();

        Survey {
            nodes,
            leader,
            leader_address: leader.and_then(|id| {
                reports
                    .iter()
                    .find(|r| r.result.as_ref().is_ok_and(|s| s.id == id))
                    .map(|r| r.address.clone())
            }),
            term,
            voters,
            answering,
            following,
            quorum_size,
            quorum,
            failures_tolerated,
            learners,
            unlisted,
            not_members,
        }
    }

    /// Lines about the membership worth an operator's eye: learners, members the cluster file
    /// does not list, and listed nodes that are not members. Empty when there is nothing to say.
    pub fn membership_lines(&self) -> Vec<String> {
        let list = |ids: &[NodeId]| {
            ids.iter()
                .map(|id| format!("node {id}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut lines = Vec::new();
        if !self.learners.is_empty() {
            lines.push(format!(
                "Learners: {} (receive the log, do not vote)",
                list(&self.learners)
            ));
        }
        if !self.unlisted.is_empty() {
            lines.push(format!(
                "Not in the cluster file: {} (learned from the cluster)",
                list(&self.unlisted)
            ));
        }
        if !self.not_members.is_empty() {
            lines.push(format!(
                "Not members of the cluster: {} (listed in the cluster file only)",
                list(&self.not_members)
            ));
        }
        lines
    }

    /// The cluster's state in one word.
    pub fn health(&self) -> Health {
        if self.quorum {
            Health::Quorum
        } else if self.answering >= self.quorum_size {
            Health::Election
        } else {
            Health::NoQuorum
        }
    }

    /// Why there is no leader with a quorum, for an error message; `None` when there is one.
    pub fn unavailable_reason(&self) -> Option<String> {
        if self.quorum {
            return None;
        }
        let counts = format!(
            "{} of {} voters answer, {} needed",
            self.answering, self.voters, self.quorum_size
        );
        Some(match (self.leader, &self.leader_address, self.term) {
            (Some(id), Some(address), Some(term)) => format!(
                "node {id} ({address}) claims to lead term {term}, but only {} of {} voters answer \
                 and follow it ({} needed): it has no quorum and cannot commit",
                self.following, self.voters, self.quorum_size
            ),
            _ if self.answering == 0 => {
                let first_error = self
                    .nodes
                    .iter()
                    .find_map(|n| n.error.as_ref().map(|e| format!("{}: {e}", n.address)));
                match first_error {
                    Some(e) => format!("no node answered ({e})"),
                    None => "no node answered".to_string(),
                }
            }
            _ if self.answering >= self.quorum_size => {
                format!("no leader elected ({counts}; an election may be under way)")
            }
            _ => format!("no leader and no quorum ({counts})"),
        })
    }

    /// One-line summary of who leads, for `status` and `status --watch`.
    pub fn leader_line(&self) -> String {
        match (self.leader, &self.leader_address, self.term) {
            (Some(id), Some(addr), Some(term)) if self.quorum => {
                format!("Leader: node {id} ({addr}), term {term}")
            }
            (Some(id), Some(addr), Some(term)) => {
                format!("Leader: none with a quorum; node {id} ({addr}) claims term {term}")
            }
            (_, _, Some(term)) => format!("Leader: none (highest term seen: {term})"),
            _ => "Leader: unknown (no node answered)".to_string(),
        }
    }

    /// One-line summary of the quorum.
    pub fn quorum_line(&self) -> String {
        if self.quorum && self.following == self.answering {
            format!(
                "Quorum: yes ({} of {} voters answer, {} needed)",
                self.answering, self.voters, self.quorum_size
            )
        } else if self.quorum {
            format!(
                "Quorum: yes ({} of {} voters follow the leader, {} needed; {} answer)",
                self.following, self.voters, self.quorum_size, self.answering
            )
        } else if let Some(id) = self.leader {
            format!(
                "Quorum: NO (only {} of {} voters answer and follow node {id}, {} needed)",
                self.following, self.voters, self.quorum_size
            )
        } else if self.answering >= self.quorum_size {
            format!(
                "Quorum: no leader ({} of {} voters answer, {} needed; an election may be under way)",
                self.answering, self.voters, self.quorum_size
            )
        } else {
            format!(
                "Quorum: NO ({} of {} voters answer, {} needed)",
                self.answering, self.voters, self.quorum_size
            )
        }
    }

    /// One-line summary of the fault tolerance.
    pub fn tolerance_line(&self) -> String {
        if self.quorum {
            match self.failures_tolerated {
                0 => "Fault tolerance: none; one more node failure stops the cluster".to_string(),
                1 => "Fault tolerance: survives 1 more node failure".to_string(),
                n => format!("Fault tolerance: survives {n} more node failures"),
            }
        } else {
            let missing = self.quorum_size.saturating_sub(self.answering);
            match missing {
                0 => "Fault tolerance: none until a leader is elected".to_string(),
                1 => "Fault tolerance: none; 1 more node must come back for a quorum".to_string(),
                n => format!("Fault tolerance: none; {n} more nodes must come back for a quorum"),
            }
        }
    }
}

/// What changed between two surveys that an operator watching should notice: a new leader, a
/// lost leader, a new term, a quorum lost or regained. Empty when nothing did. An ordinary
/// election (the leader gone, a majority still answering) changes the leader and the term but
/// is not a lost quorum.
pub fn changes(before: &Survey, after: &Survey) -> Vec<String> {
    let mut events = Vec::new();
    match (before.leader, after.leader) {
        (Some(a), Some(b)) if a != b => events.push(format!("leader changed: node {a} -> node {b}")),
        (Some(a), None) => events.push(format!("leader lost: node {a} no longer leads")),
        (None, Some(b)) => events.push(format!("leader elected: node {b}")),
        _ => {}
    }
    if let (Some(a), Some(b)) = (before.term, after.term) {
        if a != b {
            events.push(format!("term changed: {a} -> {b}"));
        }
    }
    match (before.health(), after.health()) {
        (Health::NoQuorum, Health::NoQuorum) => {}
        (_, Health::NoQuorum) => events.push(format!(
            "quorum lost: {} of {} voters answer, {} needed",
            after.answering, after.voters, after.quorum_size
        )),
        (Health::NoQuorum, _) => events.push("quorum regained".to_string()),
        _ => {}
    }
    events
}

fn lag_of(id: NodeId, leader: Option<&Status>) -> Option<u64> {
    let leader = leader?;
    if leader.id == id {
        return Some(0);
    }
    leader
        .followers
        .as_ref()?
        .iter()
        .find(|f| f.id == id)
        .and_then(|f| f.lag)
}

/// Response time for display: `1.2ms`, `35ms`, `1.5s`.
pub fn format_response_time(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        crate::error::format_duration(Duration::from_secs_f64(ms / 1000.0))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kvapi::{FollowerProgress, LeaderRef, Member};

    pub(crate) fn members(n: u64) -> Vec<Member> {
        (0..n)
            .map(|id| Member {
                id,
                http: format!("127.0.0.1:{}", 8000 + id),
                raft: format!("127.0.0.1:{}", 9000 + id),
            })
            .collect()
    }

    pub(crate) fn status(id: NodeId, role: Role, term: Term, leader: Option<NodeId>) -> Status {
        Status {
            id,
            role,
            term,
            leader: leader.map(|l| LeaderRef {
                id: l,
                http: Some(format!("127.0.0.1:{}", 8000 + l)),
            }),
            commit_index: Some(10),
            last_applied: Some(10),
            last_log_index: Some(10),
            snapshot_index: None,
            purged_index: None,
            members: members(3),
            learners: Vec::new(),
            cluster_id: None,
            followers: (role == Role::Leader).then(|| {
                (0..3)
                    .filter(|f| *f != id)
                    .map(|f| FollowerProgress {
                        id: f,
                        matched_index: Some(10 - f),
                        lag: Some(f),
                    })
                    .collect()
            }),
            keys: 4,
        }
    }

    pub(crate) fn report(id: NodeId, result: Result<Status, &str>) -> NodeReport {
        NodeReport {
            id: Some(id),
            address: format!("127.0.0.1:{}", 8000 + id),
            result: result.map_err(str::to_string),
            elapsed: Duration::from_micros(1500),
            ready: None,
            listed: true,
        }
    }

    /// Node 0 leads in term 3; nodes 1 and 2 follow.
    pub(crate) fn healthy() -> Vec<NodeReport> {
        vec![
            report(0, Ok(status(0, Role::Leader, 3, Some(0)))),
            report(1, Ok(status(1, Role::Follower, 3, Some(0)))),
            report(2, Ok(status(2, Role::Follower, 3, Some(0)))),
        ]
    }

    #[test]
    fn a_healthy_cluster_has_a_leader_quorum_and_one_spare() {
        let s = Survey::from_reports(&healthy());
        assert_eq!(s.leader, Some(0));
        assert_eq!(s.leader_address.as_deref(), Some("127.0.0.1:8000"));
        assert_eq!((s.voters, s.answering, s.quorum_size), (3, 3, 2));
        assert!(s.quorum);
        assert_eq!(s.failures_tolerated, 1);
        let lags: Vec<_> = s.nodes.iter().map(|n| n.lag).collect();
        assert_eq!(lags, vec![Some(0), Some(1), Some(2)]);
        assert!(s.nodes[0].is_leader && !s.nodes[1].is_leader);
        assert_eq!(
            s.tolerance_line(),
            "Fault tolerance: survives 1 more node failure"
        );
    }

    #[test]
    fn one_node_down_keeps_quorum_without_spare() {
        let mut reports = healthy();
        reports[2] = report(2, Err("connection refused"));
        let s = Survey::from_reports(&reports);
        assert!(s.quorum);
        assert_eq!(s.failures_tolerated, 0);
        assert_eq!(s.nodes[2].error.as_deref(), Some("connection refused"));
        assert_eq!(
            s.nodes[2].lag,
            Some(2),
            "the leader still measures a down follower"
        );
        assert!(s.tolerance_line().contains("one more node failure stops"));
    }

    #[test]
    fn a_node_that_stopped_its_raft_engine_is_not_counted_as_answering() {
        let reports = vec![
            report(0, Ok(status(0, Role::Leader, 3, Some(0)))),
            report(1, Ok(status(1, Role::Shutdown, 3, Some(0)))),
            report(2, Ok(status(2, Role::Follower, 3, Some(0)))),
        ];
        let s = Survey::from_reports(&reports);
        assert_eq!((s.voters, s.answering), (3, 2));
        assert!(s.quorum);
        assert_eq!(s.failures_tolerated, 0, "{}", s.tolerance_line());
    }

    #[test]
    fn two_nodes_down_is_no_quorum() {
        let reports = vec![
            report(0, Err("connection refused")),
            report(1, Ok(status(1, Role::Candidate, 5, None))),
            report(2, Err("connection refused")),
        ];
        let s = Survey::from_reports(&reports);
        assert_eq!(s.leader, None);
        assert!(!s.quorum);
        assert_eq!(s.answering, 1);
        assert!(
            s.quorum_line().starts_with("Quorum: NO (1 of 3"),
            "{}",
            s.quorum_line()
        );
        assert!(s.tolerance_line().contains("1 more node must come back"));
        assert_eq!(s.leader_line(), "Leader: none (highest term seen: 5)");
        assert_eq!(s.nodes[1].lag, None);
    }

    #[test]
    fn a_deposed_leader_in_an_older_term_is_not_the_leader() {
        let reports = vec![
            report(0, Ok(status(0, Role::Leader, 3, Some(0)))),
            report(1, Ok(status(1, Role::Leader, 4, Some(1)))),
            report(2, Ok(status(2, Role::Follower, 4, Some(1)))),
        ];
        let s = Survey::from_reports(&reports);
        assert_eq!(s.leader, Some(1));
        assert_eq!(s.term, Some(4));
        assert!(s.nodes[1].is_leader && !s.nodes[0].is_leader);
    }

    #[test]
    fn nothing_answering_is_described() {
        let mut unknown = report(1, Err("refused"));
        unknown.id = None;
        let reports = vec![report(0, Err("refused")), unknown];
        let s = Survey::from_reports(&reports);
        assert!(!s.quorum);
        assert_eq!(s.voters, 2);
        assert_eq!(s.leader_line(), "Leader: unknown (no node answered)");
        assert!(s.tolerance_line().contains("2 more nodes must come back"));
    }

    #[test]
    fn changes_mark_new_leaders_and_terms() {
        let before = Survey::from_reports(&healthy());
        assert!(changes(&before, &before).is_empty());
        let after = Survey::from_reports(&[
            report(0, Err("connection refused")),
            report(1, Ok(status(1, Role::Leader, 4, Some(1)))),
            report(2, Ok(status(2, Role::Follower, 4, Some(1)))),
        ]);
        assert_eq!(
            changes(&before, &after),
            vec!["leader changed: node 0 -> node 1", "term changed: 3 -> 4"]
        );
        let lost = Survey::from_reports(&[
            report(0, Err("refused")),
            report(1, Ok(status(1, Role::Candidate, 5, None))),
            report(2, Err("refused")),
        ]);
        assert_eq!(
            changes(&after, &lost),
            vec![
                "leader lost: node 1 no longer leads",
                "term changed: 4 -> 5",
                "quorum lost: 1 of 3 voters answer, 2 needed"
            ]
        );
        assert_eq!(
            changes(&lost, &after),
            vec![
                "leader elected: node 1",
                "term changed: 5 -> 4",
                "quorum regained"
            ]
        );
    }

    #[test]
    fn an_ordinary_election_is_not_a_lost_quorum() {
        let before = Survey::from_reports(&healthy());
        // The leader died; the two others answer and have not elected a new one yet.
        let electing = Survey::from_reports(&[
            report(0, Err("connection refused")),
            report(1, Ok(status(1, Role::Candidate, 4, None))),
            report(2, Ok(status(2, Role::Follower, 4, None))),
        ]);
        assert_eq!(electing.health(), Health::Election);
        assert_eq!(
            changes(&before, &electing),
            vec!["leader lost: node 0 no longer leads", "term changed: 3 -> 4"]
        );
        let elected = Survey::from_reports(&[
            report(0, Err("connection refused")),
            report(1, Ok(status(1, Role::Leader, 4, Some(1)))),
            report(2, Ok(status(2, Role::Follower, 4, Some(1)))),
        ]);
        assert_eq!(elected.health(), Health::Quorum);
        assert_eq!(changes(&electing, &elected), vec!["leader elected: node 1"]);
        assert!(electing
            .unavailable_reason()
            .is_some_and(|r| r.contains("election may be under way")));
    }

    #[test]
    fn a_leader_that_most_voters_do_not_follow_has_no_quorum() {
        // Two of three nodes died; the old leader still says it leads.
        let reports = vec![
            report(0, Ok(status(0, Role::Leader, 1, Some(0)))),
            report(1, Err("connection refused")),
            report(2, Err("connection refused")),
        ];
        let s = Survey::from_reports(&reports);
        assert_eq!(s.leader, Some(0), "the claim is still shown");
        assert!(!s.quorum);
        assert_eq!(s.health(), Health::NoQuorum);
        assert_eq!((s.answering, s.following), (1, 1));
        assert_eq!(
            s.leader_line(),
            "Leader: none with a quorum; node 0 (127.0.0.1:8000) claims term 1"
        );
        assert_eq!(
            s.quorum_line(),
            "Quorum: NO (only 1 of 3 voters answer and follow node 0, 2 needed)"
        );
        let reason = s.unavailable_reason().expect("no quorum");
        assert!(
            reason.starts_with("node 0 (127.0.0.1:8000) claims to lead term 1, but only 1 of 3"),
            "{reason}"
        );

        // All answer, but the followers have moved to a newer term without a leader yet: the
        // old leader is deposed, so no leader is claimed at all.
        let reports = vec![
            report(0, Ok(status(0, Role::Leader, 1, Some(0)))),
            report(1, Ok(status(1, Role::Candidate, 2, None))),
            report(2, Ok(status(2, Role::Follower, 2, None))),
        ];
        let s = Survey::from_reports(&reports);
        assert_eq!((s.leader, s.quorum, s.health()), (None, false, Health::Election));

        // A follower that does not name the leader (yet) does not count for it.
        let reports = vec![
            report(0, Ok(status(0, Role::Leader, 3, Some(0)))),
            report(1, Ok(status(1, Role::Follower, 3, None))),
            report(2, Err("connection refused")),
        ];
        let s = Survey::from_reports(&reports);
        assert_eq!((s.answering, s.following, s.quorum), (2, 1, false));
        assert_eq!(s.health(), Health::Election);
    }

    #[test]
    fn a_follower_the_leader_has_not_heard_from_has_an_unknown_lag() {
        let mut leader = status(0, Role::Leader, 3, Some(0));
        if let Some(followers) = leader.followers.as_mut() {
            followers[1].matched_index = None;
            followers[1].lag = None;
        }
        let reports = vec![
            report(0, Ok(leader)),
            report(1, Ok(status(1, Role::Follower, 3, Some(0)))),
            report(2, Err("connection refused")),
        ];
        let s = Survey::from_reports(&reports);
        assert_eq!(s.nodes[1].lag, Some(1));
        assert_eq!(s.nodes[2].lag, None);
        assert_eq!(s.leader, Some(0));
    }

    #[test]
    fn learners_do_not_vote_and_unlisted_or_former_members_are_named() {
        // Voters 0, 1, 2; learner 3, which the file does not list; node 4 in the file only.
        let learner = |s: &mut Status| {
            s.learners = vec![Member {
                id: 3,
                http: "127.0.0.1:8003".into(),
                raft: "127.0.0.1:9003".into(),
            }]
        };
        let mut leader = status(0, Role::Leader, 3, Some(0));
        learner(&mut leader);
        let mut three = report(3, Ok(status(3, Role::Learner, 3, Some(0))));
        three.listed = false;
        let reports = vec![
            report(0, Ok(leader)),
            report(1, Ok(status(1, Role::Follower, 3, Some(0)))),
            report(2, Err("connection refused")),
            three,
            report(4, Err("connection refused")),
        ];
        let s = Survey::from_reports(&reports);
        assert_eq!((s.voters, s.answering, s.following), (3, 2, 2));
        assert!(s.quorum);
        assert_eq!(s.learners, vec![3]);
        assert_eq!(s.unlisted, vec![3]);
        assert_eq!(s.not_members, vec![4]);
        assert_eq!(
            s.membership_lines(),
            vec![
                "Learners: node 3 (receive the log, do not vote)",
                "Not in the cluster file: node 3 (learned from the cluster)",
                "Not members of the cluster: node 4 (listed in the cluster file only)",
            ]
        );
        assert!(Survey::from_reports(&healthy()).membership_lines().is_empty());
    }

    #[test]
    fn response_times_are_short() {
        assert_eq!(format_response_time(1.24), "1.2ms");
        assert_eq!(format_response_time(35.4), "35ms");
        assert_eq!(format_response_time(1500.0), "1.5s");
    }
}
