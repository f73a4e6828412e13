//! A survey of the cluster: every node's status folded into one picture.
//!
//! `kvctl status` asks each node separately; this module decides what the answers mean
//! together. It is pure, so each rule below is tested on hand-made reports:
//!
//! - The leader is the node that says it leads in the highest term among the answers. A node
//!   that still claims leadership in an older term (a deposed leader behind a partition) is not
//!   it.
//! - Lag comes from the leader's own replication progress, the only place it is measured; the
//!   leader itself trails by 0. Without a reachable leader there is no lag to show.
//! - The voters are the members the leader reports (else the highest-term answer's members,
//!   else every node asked). There is a quorum when a leader is reachable and a majority of the
//!   voters answer; the cluster survives as many more failures as it has answering voters
//!   beyond that majority.

use std::time::Duration;

use kvapi::{NodeId, Role, Status, Term};
use serde::Serialize;

use crate::client::NodeReport;

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
    /// Entries behind the leader, as the leader measures it.
    pub lag: Option<u64>,
    /// Response time in milliseconds (fractional).
    pub response_ms: f64,
    /// Why the node did not answer.
    pub error: Option<String>,
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
    /// Voters needed for a quorum.
    pub quorum_size: usize,
    /// Whether the cluster can make progress: a leader answers and a majority of voters do.
    pub quorum: bool,
    /// How many more voters may fail before the quorum is lost (0 without quorum).
    pub failures_tolerated: usize,
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
        let (voters, answering) = match membership {
            Some(members) => (
                members.len(),
                answers
                    .iter()
                    .filter(working)
                    .filter(|s| members.iter().any(|m| m.id == s.id))
                    .count(),
            ),
            None => (reports.len().max(1), answers.iter().filter(working).count()),
        };
        let quorum_size = voters / 2 + 1;
        let quorum = leader.is_some() && answering >= quorum_size;
        let failures_tolerated = if quorum { answering - quorum_size } else { 0 };

        let nodes = reports
            .iter()
            .map(|r| {
                // Whole microseconds, so JSON shows 1.234 and not 1.2340000000000002.
                let response_ms = r.elapsed.as_micros() as f64 / 1000.0;
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
            quorum_size,
            quorum,
            failures_tolerated,
        }
    }

    /// One-line summary of who leads, for `status` and `status --watch`.
    pub fn leader_line(&self) -> String {
        match (self.leader, &self.leader_address, self.term) {
            (Some(id), Some(addr), Some(term)) => {
                format!("Leader: node {id} ({addr}), term {term}")
            }
            (_, _, Some(term)) => format!("Leader: none (highest term seen: {term})"),
            _ => "Leader: unknown (no node answered)".to_string(),
        }
    }

    /// One-line summary of the quorum.
    pub fn quorum_line(&self) -> String {
        if self.quorum {
            format!(
                "Quorum: yes ({} of {} voters answer, {} needed)",
                self.answering, self.voters, self.quorum_size
            )
        } else if self.leader.is_none() && self.answering >= self.quorum_size {
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
/// lost leader, a new term. Empty when nothing did.
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
    if before.quorum != after.quorum {
        events.push(if after.quorum {
            "quorum regained".to_string()
        } else {
            "quorum lost".to_string()
        });
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
        .map(|f| f.lag)
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
            followers: (role == Role::Leader).then(|| {
                (0..3)
                    .filter(|f| *f != id)
                    .map(|f| FollowerProgress {
                        id: f,
                        matched_index: Some(10 - f),
                        lag: f,
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
                "quorum lost"
            ]
        );
    }

    #[test]
    fn response_times_are_short() {
        assert_eq!(format_response_time(1.24), "1.2ms");
        assert_eq!(format_response_time(35.4), "35ms");
        assert_eq!(format_response_time(1500.0), "1.5s");
    }
}
