//! Membership changes with real `kvnode` processes: the life of a node (join, promote, remove,
//! replace), leadership transfer, formation with a member missing, disaster recovery, and the
//! double fault that a node without its data must never turn into a lost write.
//!
//! Every test starts its own nodes on ephemeral ports (see `testkit`), and kills them when it
//! ends; a failing test prints every node's log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvapi::{MemberRole, MembersResponse, Role};
use serde_json::json;
use testkit::{poll, Cluster};

const FAST: &[&str] = testkit::FAST_ELECTIONS;

fn code(r: &testkit::Reply) -> &str {
    r.error_code()
}

fn members(c: &Cluster, via: u64) -> MembersResponse {
    poll(Duration::from_secs(20), "the member list", || c.members_of(via))
}

fn role_of(m: &MembersResponse, id: u64) -> Option<MemberRole> {
    m.members.iter().find(|x| x.id == id).map(|x| x.role)
}

/// PUT through node `via` right after a failure, as a client would: a `503` (no leader yet, or
/// a leader elected a moment ago that has not heard from a majority) is retried until 20 s
/// have passed; any other answer is returned.
fn put_after_failure(c: &Cluster, via: u64, key: &str, value: serde_json::Value) -> testkit::Reply {
    poll(
        Duration::from_secs(20),
        &format!("PUT {key} through node {via}"),
        || {
            let r = c.put(via, key, value.clone())?;
            (r.status != 503).then_some(r)
        },
    )
}

/// `DELETE /admin/members/{id}` through `via`, retried while `via` does not answer (it may be
/// starting) or answers `503`/`504`. A retry that finds the member gone after an attempt whose
/// answer was lost counts as done.
fn remove_member(c: &Cluster, via: u64, id: u64) {
    let mut lost = false;
    poll(
        Duration::from_secs(30),
        &format!("node {id} to be removed"),
        || {
            let Some(r) = c.request(via, "DELETE", &format!("/admin/members/{id}"), None, &[]) else {
                lost = true;
                return None;
            };
            match r.status {
                200 => Some(()),
                404 if lost && code(&r) == "member_not_found" => Some(()),
                503 | 504 => {
                    lost |= r.status == 504;
                    None
                }
                other => panic!("removing node {id}: {other} {:?}", r.json),
            }
        },
    );
}

/// `POST /admin/members/{id}/promote` through `via` until the learner has caught up.
fn promote(c: &Cluster, via: u64, id: u64) {
    poll(
        Duration::from_secs(60),
        &format!("node {id} to be promoted"),
        || {
            let r = c.request(via, "POST", &format!("/admin/members/{id}/promote"), None, &[])?;
            match r.status {
                200 => Some(()),
                409 if code(&r) == "learner_behind" => None,
                // The node has not been admitted yet (it joins by itself, asynchronously).
                404 if code(&r) == "member_not_found" => None,
                503 => None,
                other => panic!("promoting {id}: {other} {:?}", r.json),
            }
        },
    );
}

/// Clients appending unique values to `key` through random nodes until stopped; returns the
/// acknowledged values. Every append carries an idempotency key and is retried with it until
/// it gets a definite answer, so each acknowledged value must be present exactly once.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(c: &Cluster, key: &'static str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|t| {
                let stop = stop.clone();
                let acked = acked.clone();
                let urls: Vec<String> = c.members().into_iter().map(|id| c.url(id)).collect();
                std::thread::spawn(move || {
                    let http = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(8))
                        .build()
                        .expect("client");
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let value = format!("t{t}-{n}");
                        n += 1;
                        let idem = uuid::Uuid::now_v7().to_string();
                        let body = json!({"type": "APPEND", "value": value}).to_string();
                        let deadline = Instant::now() + Duration::from_secs(60);
                        let mut i = n;
                        while Instant::now() < deadline {
                            i += 1;
                            let url = format!("{}/keys/{key}", urls[i % urls.len()]);
                            match http
                                .post(url)
                                .header("Idempotency-Key", &idem)
                                .body(body.clone())
                                .send()
                            {
                                Ok(r) if r.status().as_u16() == 200 => {
                                    acked.lock().expect("lock").push(value.clone());
                                    break;
                                }
                                _ => std::thread::sleep(Duration::from_millis(50)),
                            }
                        }
                    }
                })
            })
            .collect();
        Load { stop, acked, threads }
    }

    /// How many appends have been acknowledged so far.
    fn acked(&self) -> usize {
        self.acked.lock().expect("lock").len()
    }

    /// Wait until `more` appends beyond those acknowledged now have been acknowledged.
    fn wait_for(&self, more: usize) {
        let target = self.acked() + more;
        poll(
            Duration::from_secs(30),
            &format!("{more} more acknowledged appends"),
            || (self.acked() >= target).then_some(()),
        );
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("load thread");
        }
        let acked = self.acked.lock().expect("lock").clone();
        acked
    }
}

/// Every acknowledged value is in `key` exactly once, read linearizably through `via`.
fn check_exactly_once(c: &Cluster, via: u64, key: &str, acked: &[String]) {
    let value = c.get(via, key).expect("answer").expect("present");
    let list: Vec<String> = serde_json::from_value(value).expect("a list of strings");
    for a in acked {
        let n = list.iter().filter(|v| *v == a).count();
        assert_eq!(n, 1, "acknowledged append {a} is present {n} times");
    }
    let mut unique = list.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), list.len(), "no value appears twice");
}

#[test]
fn a_cluster_grows_from_three_to_five_and_shrinks_back_under_a_steady_write_load() {
    let mut c = Cluster::start_with(3, FAST);
    let load = Load::start(&c, "grow", 4);
    load.wait_for(20); // some load before the first change
    let mut voters = vec![0, 1, 2];
    for id in [3, 4] {
        c.join(id, &[0, 1, 2]);
        c.wait_for_members(0, &voters, &[id], Duration::from_secs(30));
        promote(&c, 1, id);
        voters.push(id);
    }
    c.wait_for_members(2, &[0, 1, 2, 3, 4], &[], Duration::from_secs(30));
    let m = members(&c, 3);
    assert_eq!(m.members.len(), 5);
    assert!(!m.cluster_id.is_empty());
    // Five voters tolerate two failures: kill two of the original three.
    c.kill(0);
    c.kill(1);
    let r = put_after_failure(&c, 2, "after-growth", json!(1));
    assert_eq!(r.status, 200, "{:?}", r.json);
    c.restart(0);
    c.restart(1);
    // Shrink back: remove the two new voters (whichever leads, the removal is routed).
    for id in [4, 3] {
        remove_member(&c, 0, id);
        c.retire(id);
    }
    c.wait_for_members(0, &[0, 1, 2], &[], Duration::from_secs(30));
    load.wait_for(20); // some load after the last change
    let acked = load.finish();
    assert!(acked.len() > 20, "the load ran ({} appends)", acked.len());
    check_exactly_once(&c, 1, "grow", &acked);
}

#[test]
fn a_dead_node_is_replaced_by_a_new_one_on_another_address() {
    let mut c = Cluster::start_with(3, FAST);
    assert_eq!(c.put(0, "k", json!("before")).expect("answer").status, 200);
    // Node 2's machine is gone for good.
    c.retire(2);
    c.join(3, &[0]);
    c.wait_for_members(0, &[0, 1, 2], &[3], Duration::from_secs(30));
    promote(&c, 0, 3);
    let r = c
        .request(1, "DELETE", "/admin/members/2", None, &[])
        .expect("answer");
    assert_eq!(r.status, 200, "{:?}", r.json);
    c.wait_for_members(0, &[0, 1, 3], &[], Duration::from_secs(30));
    // The new node holds the data, and the cluster survives losing one more original node.
    poll(Duration::from_secs(20), "node 3 to hold the data", || {
        let r = c.request(3, "GET", "/keys/k?consistency=stale", None, &[])?;
        (r.json["value"] == json!("before")).then_some(())
    });
    c.kill(0);
    let r = put_after_failure(&c, 3, "k", json!("after"));
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(c.get(1, "k").expect("answer"), Some(json!("after")));
}

#[test]
fn leadership_moves_on_request_and_removing_the_leader_hands_it_over_first() {
    let mut c = Cluster::start_with(3, FAST);
    let first = c.wait_for_leader(Duration::from_secs(20));
    let term = c.status(first).expect("status").term;
    let target = c.ids().into_iter().find(|i| *i != first).expect("a follower");
    // Asked of a node that is not the leader: it forwards.
    let via = c
        .ids()
        .into_iter()
        .find(|i| *i != first && *i != target)
        .expect("third");
    let r = c
        .request(
            via,
            "POST",
            "/admin/leader/transfer",
            Some(&json!({"to": target}).to_string()),
            &[],
        )
        .expect("answer");
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["leader"], json!(target), "{:?}", r.json);
    assert_eq!(r.json["previous"], json!(first));
    assert!(r.json["term"].as_u64().expect("term") > term);
    assert_eq!(c.wait_for_leader(Duration::from_secs(20)), target);
    // Without a target: the most up-to-date other voter.
    let r = c
        .request(target, "POST", "/admin/leader/transfer", None, &[])
        .expect("answer");
    assert_eq!(r.status, 200, "{:?}", r.json);
    let second = r.json["leader"].as_u64().expect("leader");
    assert_ne!(second, target);
    // Learners and strangers cannot lead.
    let r = c
        .request(0, "POST", "/admin/leader/transfer", Some(r#"{"to":9}"#), &[])
        .expect("answer");
    assert_eq!((r.status, code(&r)), (404, "member_not_found"), "{:?}", r.json);

    // Removing the leader: leadership goes elsewhere first, and writes go on.
    let leader = c.wait_for_leader(Duration::from_secs(20));
    assert_eq!(c.put(leader, "k", json!(1)).expect("answer").status, 200);
    let asked = c.ids().into_iter().find(|i| *i != leader).expect("another node");
    let r = c
        .request(asked, "DELETE", &format!("/admin/members/{leader}"), None, &[])
        .expect("answer");
    assert_eq!(r.status, 200, "{:?}", r.json);
    let after: MembersResponse = serde_json::from_value(r.json.clone()).expect("members");
    assert_ne!(
        after.leader, leader,
        "the removal was carried out by the new leader"
    );
    assert_eq!(role_of(&after, leader), None);
    c.retire(leader);
    let rest: Vec<u64> = c.members();
    c.wait_for_members(rest[0], &rest, &[], Duration::from_secs(20));
    assert_eq!(put_after_failure(&c, rest[1], "k", json!(2)).status, 200);
    assert_eq!(c.get(rest[0], "k").expect("answer"), Some(json!(2)));
    assert!(
        c.log(leader)
            .contains("handed leadership over before removing this node"),
        "the old leader handed over first"
    );
}

#[test]
fn a_cluster_forms_with_one_listed_member_dead_and_admits_it_when_it_starts() {
    let mut c = Cluster::spawn_some(3, &[0, 1], FAST);
    c.wait_for_leader(Duration::from_secs(30));
    assert_eq!(
        c.put(0, "k", json!("formed without 2")).expect("answer").status,
        200
    );
    assert!(
        c.log(0).contains("2 of 3 members are up and empty")
            || c.log(1).contains("2 of 3 members are up and empty")
    );
    // The latecomer holds nothing: it is admitted as a learner, catches up, and the leader
    // promotes it back to the voter the cluster file says it is.
    c.restart(2);
    c.wait_for_members(0, &[0, 1, 2], &[], Duration::from_secs(40));
    poll(Duration::from_secs(20), "node 2 to hold the data", || {
        let r = c.request(2, "GET", "/keys/k?consistency=stale", None, &[])?;
        (r.json["value"] == json!("formed without 2")).then_some(())
    });
    let ids: Vec<String> = c
        .ids()
        .into_iter()
        .filter_map(|i| c.status(i).and_then(|s| s.cluster_id))
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|i| *i == ids[0]), "one cluster id: {ids:?}");
}

#[test]
fn a_node_never_forms_a_cluster_next_to_a_running_one() {
    let mut c = Cluster::start_with(3, FAST);
    assert_eq!(c.put(1, "k", json!("v")).expect("answer").status, 200);
    // Node 0 is the one that forms new clusters; wipe it while the others run. It must be
    // admitted to the running cluster, not form a second one with a fresh id.
    let id = c.status(1).and_then(|s| s.cluster_id).expect("cluster id");
    c.wipe(0);
    c.restart(0);
    c.wait_for_members(1, &[0, 1, 2], &[], Duration::from_secs(40));
    poll(Duration::from_secs(20), "the wiped node to hold the data", || {
        let r = c.request(0, "GET", "/keys/k?consistency=stale", None, &[])?;
        (r.json["value"] == json!("v")).then_some(())
    });
    assert_eq!(c.status(0).and_then(|s| s.cluster_id), Some(id));
    assert!(
        c.log(0).contains("asking to be admitted"),
        "node 0 saw the running cluster"
    );
}

/// The double fault of issue 11: A leads, C is down, w commits on A and B; B loses its disk
/// and restarts; A crashes before B has caught up; C returns without w. B must not help C win,
/// or w is gone. The state is large enough that B's catch-up is a snapshot of tens of MB, so
/// that a B which took part in Raft at once (as kvnode did before) is caught with a vote and
/// no data: the test stops it right there, which makes the old behaviour fail every time.
#[test]
fn a_wiped_voter_does_not_help_elect_a_node_that_lacks_a_committed_write() {
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend(["--snapshot-every", "1050"]);
    let mut c = Cluster::start_with(3, &args);
    let a = c.wait_for_leader(Duration::from_secs(20));
    let others: Vec<u64> = c.ids().into_iter().filter(|i| *i != a).collect();
    let (b, lagging) = (others[0], others[1]);
    // About 50 MB of state, then enough entries that the leader's log no longer starts at the
    // beginning: a node without data can only catch up from a snapshot.
    let big = "x".repeat(1_000_000);
    for i in 0..50 {
        let r = c.put(a, &format!("big{i}"), json!(big)).expect("answer");
        assert_eq!(r.status, 200, "{:?}", r.json);
    }
    for i in 0..1010 {
        let r = c.put(a, &format!("k{}", i % 20), json!(i)).expect("answer");
        assert_eq!(r.status, 200, "{:?}", r.json);
    }
    poll(Duration::from_secs(60), "the leader to compact its log", || {
        c.status(a).and_then(|s| s.purged_index).filter(|p| *p > 0)
    });

    // w commits on a and b only.
    c.kill(lagging);
    let r = c.put(a, "w", json!("acknowledged")).expect("answer");
    assert_eq!(r.status, 200, "{:?}", r.json);

    // b loses its disk and comes back under its old id.
    c.wipe(b);
    c.restart(b);
    let stopped = poll(
        Duration::from_secs(30),
        "the wiped node to take part in Raft or to wait for admission",
        || {
            let s = c.status(b)?;
            if s.term > 0 && s.last_applied.is_none() {
                // It holds a vote but none of the data: freeze it right here.
                c.pause(b);
                return Some(true);
            }
            (s.term == 0 && c.log(b).contains("to be admitted")).then_some(false)
        },
    );
    // a crashes before b has caught up; the lagging node returns without w.
    c.kill(a);
    if stopped {
        c.resume(b);
    }
    c.restart(lagging);
    // Several election timeouts (300-600 ms) in which nobody may win.
    let window = Instant::now() + Duration::from_secs(4);
    while Instant::now() < window {
        for id in [lagging, b] {
            if let Some(s) = c.status(id) {
                assert_ne!(
                    s.role,
                    Role::Leader,
                    "node {id} was elected without the committed write w (the wiped node {b} \
                     voted for it): w would be lost"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // With a back, a leader holding w is elected, w is there, and the wiped node is a voter
    // again once it has caught up.
    c.restart(a);
    c.wait_for_leader(Duration::from_secs(30));
    assert_eq!(c.get(lagging, "w").expect("answer"), Some(json!("acknowledged")));
    c.wait_for_members(a, &[0, 1, 2], &[], Duration::from_secs(90));
    poll(Duration::from_secs(30), "the wiped node to hold w", || {
        let r = c.request(b, "GET", "/keys/w?consistency=stale", None, &[])?;
        (r.json["value"] == json!("acknowledged")).then_some(())
    });
}

#[test]
fn force_new_cluster_restarts_a_survivor_alone_with_its_data() {
    let mut c = Cluster::start_with(3, FAST);
    let old_id = c.status(0).and_then(|s| s.cluster_id).expect("cluster id");
    for i in 0..10 {
        assert_eq!(c.put(0, &format!("k{i}"), json!(i)).expect("answer").status, 200);
    }
    // The majority is gone for good; node 2 survives.
    for id in c.ids() {
        c.kill(id);
    }
    c.retire(0);
    c.retire(1);
    c.next_start_with(2, &["--force-new-cluster"]);
    c.restart(2);
    poll(Duration::from_secs(30), "the survivor to lead alone", || {
        c.status(2).filter(|s| s.role == Role::Leader).map(|_| ())
    });
    let status = c.status(2).expect("status");
    let new_id = status.cluster_id.expect("cluster id");
    assert_ne!(new_id, old_id, "a new cluster id");
    assert_eq!(status.members.len(), 1);
    for i in 0..10 {
        assert_eq!(c.get(2, &format!("k{i}")).expect("answer"), Some(json!(i)));
    }
    assert_eq!(c.put(2, "after", json!(true)).expect("answer").status, 200);
    let log = c.log(2);
    for loud in [
        "--force-new-cluster: node 2 now starts a NEW cluster",
        "do not restart them on their old data",
        "remove --force-new-cluster",
    ] {
        assert!(log.contains(loud), "the log says {loud:?}");
    }
    // It grows again.
    c.join(3, &[2]);
    promote(&c, 2, 3);
    c.wait_for_members(2, &[2, 3], &[], Duration::from_secs(30));
    // Restarted without the flag, it is simply the leader of the new cluster again.
    c.kill(2);
    c.restart(2);
    c.wait_for_leader(Duration::from_secs(30));
    assert_eq!(c.status(2).and_then(|s| s.cluster_id), Some(new_id));
    assert_eq!(c.get(3, "after").expect("answer"), Some(json!(true)));
}

#[test]
fn membership_requests_are_refused_with_a_clear_status() {
    let c = Cluster::start_with(3, FAST);
    let leader = c.wait_for_leader(Duration::from_secs(20));
    let follower = c.ids().into_iter().find(|i| *i != leader).expect("follower");
    let r = c
        .request(
            follower,
            "POST",
            "/admin/members",
            Some(r#"{"id":7,"http":"127.0.0.1:1","raft":"127.0.0.1:2"}"#),
            &[],
        )
        .expect("answer");
    assert_eq!(r.status, 200, "a follower forwards: {:?}", r.json);
    // A learner that never answered the leader cannot be promoted.
    let r = c
        .request(follower, "POST", "/admin/members/7/promote", None, &[])
        .expect("answer");
    assert_eq!((r.status, code(&r)), (409, "learner_behind"), "{:?}", r.json);
    let msg = r.json["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("node 7") && msg.contains("caught up"), "{msg}");
    let cases: Vec<(&str, String, Option<&str>, u16, &str)> = vec![
        // The same learner again is fine; another address for it is not.
        (
            "POST",
            "/admin/members".into(),
            Some(r#"{"id":7,"http":"127.0.0.1:1","raft":"127.0.0.1:2"}"#),
            200,
            "",
        ),
        (
            "POST",
            "/admin/members".into(),
            Some(r#"{"id":7,"http":"127.0.0.1:5","raft":"127.0.0.1:6"}"#),
            409,
            "member_conflict",
        ),
        (
            "POST",
            "/admin/members".into(),
            Some(&*Box::leak(
                format!(
                    r#"{{"id":8,"http":"127.0.0.1:9","raft":"{}"}}"#,
                    c.raft_addr(leader)
                )
                .into_boxed_str(),
            )),
            409,
            "member_conflict",
        ),
        (
            "POST",
            "/admin/members".into(),
            Some(r#"{"id":8,"http":"nowhere","raft":"127.0.0.1:2"}"#),
            400,
            "invalid_request",
        ),
        ("POST", "/admin/members".into(), Some("{"), 400, "invalid_json"),
        (
            "POST",
            "/admin/members".into(),
            Some(r#"{"id":8}"#),
            400,
            "invalid_request",
        ),
        ("DELETE", "/admin/members/9".into(), None, 404, "member_not_found"),
        ("DELETE", "/admin/members/x".into(), None, 400, "invalid_request"),
        (
            "POST",
            "/admin/members/9/promote".into(),
            None,
            404,
            "member_not_found",
        ),
        (
            "PUT",
            "/admin/members/9".into(),
            Some(r#"{"http":"127.0.0.1:11","raft":"127.0.0.1:12"}"#),
            404,
            "member_not_found",
        ),
        (
            "POST",
            "/admin/leader/transfer".into(),
            Some(r#"{"to":7}"#),
            409,
            "member_conflict",
        ),
        ("DELETE", "/admin/members/7".into(), None, 200, ""),
    ];
    for (method, path, body, status, expected) in &cases {
        let r = c.request(follower, method, path, *body, &[]).expect("answer");
        assert_eq!(r.status, *status, "{method} {path} {body:?}: {:?}", r.json);
        if !expected.is_empty() {
            assert_eq!(code(&r), *expected, "{method} {path}");
            assert!(r.json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
    let m = members(&c, follower);
    assert_eq!(m.members.len(), 3, "nothing else changed: {m:?}");
}

#[test]
fn the_last_voter_cannot_be_removed() {
    let c = Cluster::start_with(1, FAST);
    let r = c
        .request(0, "DELETE", "/admin/members/0", None, &[])
        .expect("answer");
    assert_eq!((r.status, code(&r)), (409, "member_conflict"), "{:?}", r.json);
}

#[test]
fn a_member_moves_to_new_addresses_and_keeps_its_data() {
    let mut c = Cluster::start_with(3, FAST);
    assert_eq!(c.put(0, "k", json!("kept")).expect("answer").status, 200);
    // Node 3 joins, is told it moved, and comes back on the new addresses with its data.
    c.join(3, &[0]);
    promote(&c, 0, 3);
    let ports = testkit::free_ports(2);
    let (http, raft) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let body = json!({"http": http, "raft": raft}).to_string();
    let r = c
        .request(1, "PUT", "/admin/members/3", Some(&body), &[])
        .expect("answer");
    assert_eq!(r.status, 200, "{:?}", r.json);
    c.kill(3);
    let old_dir = c.data_dir(3);
    c.retire(3);
    // Same id, same data directory, new addresses: a new process of the same node.
    let moved = std::process::Command::new(testkit::kvnode_bin())
        .args([
            "--join",
            &c.http_addr(0),
            "--id",
            "3",
            "--http",
            &http,
            "--raft",
            &raft,
        ])
        .arg("--data-dir")
        .arg(&old_dir)
        .args(FAST)
        .stderr(std::fs::File::create(c.dir().join("node3-moved.log")).expect("log"))
        .spawn()
        .expect("spawn");
    let _guard = testkit::ChildGuard::new("node 3 moved", moved, c.dir().join("node3-moved.log"));
    assert_eq!(put_after_failure(&c, 1, "k", json!("moved")).status, 200);
    let url = format!("http://{http}/keys/k?consistency=stale");
    poll(Duration::from_secs(30), "the moved node to follow", || {
        let r = reqwest::blocking::get(&url).ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.text().ok()?).ok()?;
        (v["value"] == json!("moved")).then_some(())
    });
    let m = members(&c, 0);
    let three = m.members.iter().find(|x| x.id == 3).expect("node 3");
    assert_eq!(
        (three.http.as_str(), three.raft.as_str(), three.role),
        (http.as_str(), raft.as_str(), MemberRole::Voter)
    );
}

#[test]
fn a_data_directory_of_another_cluster_is_refused() {
    let mut one = Cluster::start_with(1, FAST);
    let other = Cluster::start_with(1, FAST);
    assert_eq!(one.put(0, "k", json!(1)).expect("answer").status, 200);
    one.kill(0);
    let dir = one.data_dir(0);
    // Node 0's directory, told to join the other cluster: refused, exit 1, with the reason.
    let ports = testkit::free_ports(2);
    let out = std::process::Command::new(testkit::kvnode_bin())
        .args(["--join", &other.http_addr(0), "--id", "0"])
        .args(["--http", &format!("127.0.0.1:{}", ports[0])])
        .args(["--raft", &format!("127.0.0.1:{}", ports[1])])
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .expect("run kvnode");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("belongs to another cluster"), "{err}");
    // And its peers refuse it: a node of one cluster is answered 421 by the other.
    let id = other.status(0).and_then(|s| s.cluster_id).expect("id");
    let r = reqwest::blocking::Client::new()
        .post(format!("http://{}/raft/vote", other.raft_addr(0)))
        .header("x-kv-target", "0")
        .header("x-kv-cluster", "0000000000000000")
        .send()
        .expect("answer");
    assert_eq!(r.status().as_u16(), 421);
    assert!(r.text().unwrap_or_default().contains(&id));
}
