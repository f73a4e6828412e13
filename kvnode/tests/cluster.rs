//! Real clusters of `kvnode` processes: the user-visible promises of the server.
//!
//! Every test starts its own nodes on ephemeral ports (see `testkit`), talks to them over HTTP,
//! and kills them when it ends; a failing test prints every node's log.

use std::time::Duration;

use serde_json::json;
use testkit::{poll, ChildGuard, Cluster};

const FAST: &[&str] = testkit::FAST_ELECTIONS;

fn code(r: &testkit::Reply) -> &str {
    r.error_code()
}

#[test]
fn the_assignment_examples_work_through_any_node() {
    let c = Cluster::start(3);
    let leader = c.wait_for_leader(Duration::from_secs(20));
    let follower = c.ids().into_iter().find(|i| *i != leader).expect("a follower");
    let other = c
        .ids()
        .into_iter()
        .find(|i| *i != leader && *i != follower)
        .expect("another follower");

    let r = c.put(follower, "a", json!(["cat", "dog"])).expect("answer");
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert!(
        r.json["index"].as_u64().is_some(),
        "write answers carry the log index: {:?}",
        r.json
    );
    // curl -d sends a form content type: the body is JSON anyway.
    let r = c
        .request(
            other,
            "POST",
            "/keys/a",
            Some(r#"{"type":"APPEND","value":"mouse"}"#),
            &[("content-type", "application/x-www-form-urlencoded")],
        )
        .expect("answer");
    assert_eq!(r.status, 200, "{:?}", r.json);
    for id in c.ids() {
        let r = c.request(id, "GET", "/keys/a", None, &[]).expect("answer");
        assert_eq!(r.status, 200);
        assert_eq!(r.json["key"], "a");
        assert_eq!(r.json["value"], json!(["cat", "dog", "mouse"]), "node {id}");
    }
    let stale = c
        .request(other, "GET", "/keys/a?consistency=stale", None, &[])
        .expect("answer");
    assert_eq!(stale.status, 200);
    assert_eq!(stale.json["consistency"], "stale");
    assert!(stale.json["applied_index"].as_u64().is_some());

    // Keys may contain slashes and percent-encoded characters.
    assert_eq!(
        c.put(leader, "dir/sub%20key", json!(1)).expect("answer").status,
        200
    );
    assert_eq!(c.get(follower, "dir/sub%20key").expect("answer"), Some(json!(1)));
    let listing = c
        .request(follower, "GET", "/keys?prefix=dir/", None, &[])
        .expect("answer");
    assert_eq!(listing.json["keys"], json!(["dir/sub key"]));

    let del = c
        .request(follower, "DELETE", "/keys/a", None, &[])
        .expect("answer");
    assert_eq!(del.status, 200);
    let del = c.request(leader, "DELETE", "/keys/a", None, &[]).expect("answer");
    assert_eq!((del.status, code(&del)), (404, "key_not_found"));
    let get = c.request(other, "GET", "/keys/a", None, &[]).expect("answer");
    assert_eq!((get.status, code(&get)), (404, "key_not_found"));

    let s = c.status(leader).expect("status");
    assert_eq!(s.role, kvapi::Role::Leader);
    assert_eq!(s.members.len(), 3);
    let followers = s.followers.expect("the leader reports follower progress");
    assert_eq!(followers.len(), 2);
    let fs = c.status(follower).expect("status");
    assert_eq!(fs.leader.map(|l| l.id), Some(leader));
    assert!(fs.followers.is_none());
}

#[test]
fn bad_input_gets_a_json_error_and_changes_nothing() {
    let c = Cluster::start_with(1, &["--max-value-bytes", "1000"]);
    assert_eq!(c.put(0, "k", json!(["x"])).expect("answer").status, 200);
    let long_key = "k".repeat(1025);
    let big = format!(r#"{{"type":"PUT","value":"{}"}}"#, "x".repeat(2000));
    let huge = format!(r#"{{"type":"PUT","value":"{}"}}"#, "x".repeat(200_000));
    let cases: Vec<(&str, String, Option<&str>, u16, &str)> = vec![
        ("POST", "/keys/k".into(), Some("{not json"), 400, "invalid_json"),
        ("POST", "/keys/k".into(), Some(""), 400, "invalid_json"),
        (
            "POST",
            "/keys/k".into(),
            Some(r#"{"value":1}"#),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/keys/k".into(),
            Some(r#"{"type":"PUSH","value":1}"#),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/keys/k".into(),
            Some(r#"{"type":"PUT"}"#),
            400,
            "invalid_request",
        ),
        ("POST", "/keys/k".into(), Some(r#"[1,2]"#), 400, "invalid_request"),
        (
            "POST",
            "/keys/".into(),
            Some(r#"{"type":"PUT","value":1}"#),
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("/keys/{long_key}"),
            Some(r#"{"type":"PUT","value":1}"#),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/keys/k".into(),
            Some(big.as_str()),
            413,
            "value_too_large",
        ),
        (
            "POST",
            "/keys/k".into(),
            Some(huge.as_str()),
            413,
            "value_too_large",
        ),
        (
            "GET",
            "/keys/k?consistency=eventual".into(),
            None,
            400,
            "invalid_request",
        ),
        ("GET", "/keys?limit=0".into(), None, 400, "invalid_request"),
        ("GET", "/nowhere".into(), None, 404, "not_found"),
        (
            "PUT",
            "/keys/k".into(),
            Some(r#"{"type":"PUT","value":1}"#),
            405,
            "method_not_allowed",
        ),
        ("DELETE", "/admin/status".into(), None, 405, "method_not_allowed"),
    ];
    for (method, path, body, status, expected) in &cases {
        let r = c.request(0, method, path, body.as_deref(), &[]).expect("answer");
        assert_eq!(
            (r.status, code(&r)),
            (*status, *expected),
            "{method} {} {:?}",
            &path[..path.len().min(60)],
            r.json
        );
        assert!(
            r.json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "every error has a message"
        );
    }
    // Idempotency keys are UUIDv7s (their time is what lets a late retry be recognised), not
    // too long, and not from the future.
    let future = {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64
            + 3_600_000;
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
        uuid::Uuid::new_v7(ts).to_string()
    };
    for (idem, needle) in [
        ("i".repeat(129), "at most"),
        ("write-1".to_string(), "not a UUID"),
        (uuid::Uuid::new_v4().to_string(), "UUIDv7"),
        (future, "ahead"),
    ] {
        let r = c
            .request(
                0,
                "POST",
                "/keys/k",
                Some(r#"{"type":"APPEND","value":1}"#),
                &[("Idempotency-Key", &idem)],
            )
            .expect("answer");
        let msg = r.json["error"]["message"].as_str().unwrap_or_default();
        assert_eq!((r.status, code(&r)), (400, "invalid_request"), "{idem}: {msg}");
        assert!(msg.contains(needle), "{idem}: {msg}");
    }

    // APPEND onto a number: 409 naming both types.
    assert_eq!(c.put(0, "n", json!(5)).expect("answer").status, 200);
    let r = c.append(0, "n", json!("x"), None).expect("answer");
    assert_eq!((r.status, code(&r)), (409, "type_conflict"));
    let msg = r.json["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("number") && msg.contains("string"), "{msg}");

    assert_eq!(
        c.get(0, "k").expect("answer"),
        Some(json!(["x"])),
        "nothing changed"
    );
    assert_eq!(c.get(0, "n").expect("answer"), Some(json!(5)));
}

#[test]
fn a_retried_append_with_the_same_idempotency_key_lands_once_on_any_node() {
    let c = Cluster::start(3);
    let key = uuid::Uuid::now_v7().to_string();
    for id in c.ids() {
        let r = c.append(id, "log", json!("once"), Some(&key)).expect("answer");
        assert_eq!(r.status, 200, "{:?}", r.json);
        let replayed = r.headers.get("idempotent-replayed").is_some();
        assert_eq!(replayed, id != 0, "only the first copy is applied (node {id})");
    }
    assert_eq!(c.get(2, "log").expect("answer"), Some(json!(["once"])));
    let reused = c.append(1, "log", json!("other"), Some(&key)).expect("answer");
    assert_eq!((reused.status, code(&reused)), (422, "idempotency_key_reused"));
    assert_eq!(c.get(1, "log").expect("answer"), Some(json!(["once"])));
}

#[test]
fn killing_the_leader_elects_another_and_loses_no_acknowledged_write() {
    let mut c = Cluster::start_with(3, FAST);
    let leader = c.wait_for_leader(Duration::from_secs(20));
    let mut acked = Vec::new();
    for i in 0..30 {
        let via = c.ids()[i % 3];
        let r = c
            .append(via, "k", json!(i), Some(&uuid::Uuid::now_v7().to_string()))
            .expect("answer");
        assert_eq!(r.status, 200, "{:?}", r.json);
        acked.push(i);
    }
    c.kill(leader);
    let new_leader = c.wait_for_new_leader(leader, Duration::from_secs(20));
    assert_ne!(new_leader, leader);
    for id in c.running() {
        assert_eq!(c.get(id, "k").expect("answer"), Some(json!(acked)), "node {id}");
    }
    // Writes continue, and the old leader catches up when it comes back.
    assert_eq!(
        c.append(new_leader, "k", json!(30), None).expect("answer").status,
        200
    );
    acked.push(30);
    c.restart(leader);
    poll(Duration::from_secs(20), "the old leader to catch up", || {
        let r = c.request(leader, "GET", "/keys/k?consistency=stale", None, &[])?;
        (r.json["value"] == json!(acked)).then_some(())
    });
}

#[test]
fn killing_every_node_at_once_loses_nothing() {
    let mut c = Cluster::start_with(3, FAST);
    for i in 0..20 {
        let r = c
            .put(c.ids()[i % 3], &format!("key{i}"), json!({"n": i}))
            .expect("answer");
        assert_eq!(r.status, 200);
    }
    for id in c.ids() {
        c.kill(id);
    }
    for id in c.ids() {
        c.restart(id);
    }
    c.wait_for_leader(Duration::from_secs(30));
    for i in 0..20 {
        assert_eq!(
            c.get(i % 3, &format!("key{i}")).expect("answer"),
            Some(json!({"n": i}))
        );
    }
}

#[test]
fn without_a_quorum_writes_and_reads_fail_fast_with_503() {
    let mut c = Cluster::start_with(
        3,
        &[
            "--leader-wait-ms",
            "800",
            "--election-min-ms",
            "300",
            "--election-max-ms",
            "600",
        ],
    );
    let leader = c.wait_for_leader(Duration::from_secs(20));
    assert_eq!(c.put(leader, "k", json!(1)).expect("answer").status, 200);
    let others: Vec<_> = c.ids().into_iter().filter(|i| *i != leader).collect();
    for id in &others {
        c.kill(*id);
    }
    // The old leader cannot confirm leadership: a linearizable read must not be served, and
    // the answer says why at once (no_quorum), not after a timeout.
    let r = c.request(leader, "GET", "/keys/k", None, &[]).expect("answer");
    assert_eq!((r.status, code(&r)), (503, "no_quorum"), "{:?}", r.json);
    assert!(r.headers.get("retry-after").is_some());
    // A stale read says what this replica has.
    let r = c
        .request(leader, "GET", "/keys/k?consistency=stale", None, &[])
        .expect("answer");
    assert_eq!(r.status, 200);
    // A write is refused before it is proposed: the leader's lease has run out, so it answers
    // no_quorum instead of proposing and timing out with "outcome unknown".
    let r = c.put(leader, "k", json!(2)).expect("answer");
    assert_eq!((r.status, code(&r)), (503, "no_quorum"), "{:?}", r.json);
    assert!(r.headers.get("retry-after").is_some());
    // The cluster heals when the others return, and the acknowledged value is there.
    for id in &others {
        c.restart(*id);
    }
    c.wait_for_leader(Duration::from_secs(20));
    let v = c.get(others[0], "k").expect("answer").expect("present");
    assert!(v == json!(1) || v == json!(2), "{v}");
}

#[test]
fn a_follower_that_missed_compacted_entries_catches_up_from_a_snapshot() {
    let mut c = Cluster::start_with(3, &["--snapshot-every", "20"]);
    let leader = c.wait_for_leader(Duration::from_secs(20));
    let lagging = c.ids().into_iter().find(|i| *i != leader).expect("follower");
    c.kill(lagging);
    fill_past_compaction(&c, leader);
    c.restart(lagging);
    poll(
        Duration::from_secs(30),
        "the lagging follower to catch up",
        || {
            let r = c.request(lagging, "GET", "/keys/k49?consistency=stale", None, &[])?;
            (r.json["value"] == json!(1099)).then_some(())
        },
    );
    let fs = c.status(lagging).expect("status");
    assert!(fs.snapshot_index.is_some(), "it installed a snapshot: {fs:?}");
    // And it survives a restart from its own snapshot plus log.
    c.kill(lagging);
    c.restart(lagging);
    poll(Duration::from_secs(20), "the follower to come back", || {
        let r = c.request(lagging, "GET", "/keys/k0?consistency=stale", None, &[])?;
        (r.json["value"] == json!(1050)).then_some(())
    });
}

/// Write entries one by one (`k0`..`k49`, the last value 1099), so the log grows well past
/// the snapshot threshold of 20 plus the 1000 entries openraft keeps after a snapshot: the
/// leader's log no longer starts at the beginning.
fn fill_past_compaction(c: &Cluster, leader: u64) {
    for i in 0..1100 {
        let r = c.put(leader, &format!("k{}", i % 50), json!(i)).expect("answer");
        assert_eq!(r.status, 200, "{:?}", r.json);
    }
    let s = c.status(leader).expect("status");
    assert!(s.snapshot_index.is_some(), "the leader took a snapshot: {s:?}");
}

#[test]
fn a_follower_wiped_after_compaction_rejoins_from_a_snapshot() {
    let mut c = Cluster::start_with(3, &["--snapshot-every", "20"]);
    let leader = c.wait_for_leader(Duration::from_secs(20));
    fill_past_compaction(&c, leader);
    // The leader remembers how far this follower's log reached; the wiped follower has none
    // of it, and the start of the leader's log is gone: only a snapshot can bring it back.
    let wiped = c.ids().into_iter().find(|i| *i != leader).expect("follower");
    c.wipe(wiped);
    c.restart(wiped);
    poll(Duration::from_secs(30), "the wiped follower to catch up", || {
        let r = c.request(wiped, "GET", "/keys/k49?consistency=stale", None, &[])?;
        (r.json["value"] == json!(1099)).then_some(())
    });
    let s = c.status(wiped).expect("status");
    assert!(s.snapshot_index.is_some(), "it installed a snapshot: {s:?}");
    // It keeps following: a new write reaches it.
    assert_eq!(c.put(leader, "after", json!(true)).expect("answer").status, 200);
    poll(Duration::from_secs(20), "the next write to reach it", || {
        let r = c.request(wiped, "GET", "/keys/after?consistency=stale", None, &[])?;
        (r.json["value"] == json!(true)).then_some(())
    });
}

#[test]
fn data_directories_of_another_node_or_damaged_ones_are_refused() {
    let mut c = Cluster::start(1);
    assert_eq!(c.put(0, "k", json!(1)).expect("answer").status, 200);
    c.kill(0);
    let dir = c.data_dir(0);
    // Start node `id` of `cluster` on node 0's data directory: it must refuse, exit 1, and
    // say why.
    let refused = |cluster: &std::path::Path, id: &str, why: &str| {
        let out = std::process::Command::new(testkit::kvnode_bin())
            .arg("--cluster")
            .arg(cluster)
            .args(["--id", id, "--data-dir"])
            .arg(&dir)
            .output()
            .expect("run kvnode");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(why), "expected {why:?} in: {err}");
    };

    // Another node id on this directory.
    let other = c.dir().join("other.toml");
    let mut file = c.description().clone();
    file.node[0].id = 7;
    std::fs::write(&other, file.to_toml()).expect("write");
    refused(&other, "7", "belongs to node 0");

    // (A directory of another cluster is refused too: see `membership.rs`. Changed addresses
    // in the cluster file are not another cluster: the cluster id names it.)

    // A damaged log segment.
    let segment = std::fs::read_dir(dir.join("log"))
        .expect("log directory")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("a log segment");
    let mut bytes = std::fs::read(&segment).expect("read segment");
    for b in bytes.iter_mut().take(4096) {
        *b = 0xAB;
    }
    std::fs::write(&segment, bytes).expect("write segment");
    refused(c.cluster_file(), "0", "corrupt");
}

#[test]
fn bad_command_lines_and_busy_ports_give_one_line_errors() {
    let bin = testkit::kvnode_bin();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bin).args(args).output().expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&["--cluster", "/nonexistent/cluster.toml", "--id", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot read cluster file"), "{err}");

    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[node]]\nid = 0\nhttp = \"nope\"\nraft = \"127.0.0.1:1\"\n",
    )
    .expect("write");
    let (code, err) = run(&["--cluster", bad.to_str().expect("utf8"), "--id", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("host:port"), "{err}");

    let (code, err) = run(&["--bogus-flag"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = run(&["notaport", "127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = run(&["8080", "not-an-address"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("host:port"), "{err}");

    // An address already in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let raft = testkit::free_ports(1)[0];
    let data = dir.path().join("d");
    let (code, err) = run(&[
        &port.to_string(),
        &format!("127.0.0.1:{raft}"),
        "--data-dir",
        data.to_str().expect("utf8"),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot listen on") && err.contains(&port.to_string()),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn the_assignment_command_line_forms_a_cluster_and_sigterm_stops_cleanly() {
    let ports = testkit::free_ports(6);
    let dir = tempfile::tempdir().expect("tmp");
    let raft: Vec<String> = ports[3..].iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut children = Vec::new();
    for i in 0..3 {
        let mut args = vec![ports[i].to_string(), raft[i].clone()];
        args.extend(raft.iter().filter(|a| **a != raft[i]).cloned());
        let log_path = dir.path().join(format!("n{i}.log"));
        let log = std::fs::File::create(&log_path).expect("log");
        let child = std::process::Command::new(testkit::kvnode_bin())
            .args(&args)
            .arg("--data-dir")
            .arg(dir.path().join(format!("d{i}")))
            .stderr(log)
            .spawn()
            .expect("spawn");
        children.push(ChildGuard::new(format!("node {i}"), child, log_path));
    }
    let http = testkit::http_client(None, None);
    let url = |i: usize, path: &str| format!("http://127.0.0.1:{}{}", ports[i], path);
    poll(Duration::from_secs(30), "a write to succeed", || {
        let r = http
            .post(url(1, "/keys/a"))
            .body(r#"{"type":"PUT","value":["cat","dog"]}"#)
            .send()
            .ok()?;
        (r.status().as_u16() == 200).then_some(())
    });
    let r = http.get(url(2, "/keys/a")).send().expect("get");
    assert_eq!(r.status().as_u16(), 200);
    // SIGTERM: graceful shutdown with exit code 0.
    let mut first = children.remove(0);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(first.child.id() as i32, libc::SIGTERM) };
    let status = poll(Duration::from_secs(20), "node 0 to exit", || {
        first.child.try_wait().ok().flatten()
    });
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_deposed_leader_never_serves_a_stale_read() {
    let mut c = Cluster::start_with(3, FAST);
    let old = c.wait_for_leader(Duration::from_secs(20));
    assert_eq!(c.put(old, "k", json!("old")).expect("answer").status, 200);
    // Freeze the leader: the others elect a new one and accept a newer value.
    c.pause(old);
    let new = c.wait_for_new_leader(old, Duration::from_secs(20));
    assert_eq!(c.put(new, "k", json!("new")).expect("answer").status, 200);
    // Thawed, the old leader still believes it leads until it hears the new term. A read sent
    // to it at once must not return the old value: it either finds the new one or refuses.
    c.resume(old);
    let r = c.request(old, "GET", "/keys/k", None, &[]).expect("answer");
    match r.status {
        200 => assert_eq!(r.json["value"], json!("new"), "stale read from a deposed leader"),
        503 => {}
        other => panic!("unexpected answer {other}: {:?}", r.json),
    }
    // Its own replica catches up, and stale reads say so.
    poll(
        Duration::from_secs(20),
        "the old leader to apply the new value",
        || {
            let r = c.request(old, "GET", "/keys/k?consistency=stale", None, &[])?;
            (r.json["value"] == json!("new")).then_some(())
        },
    );
}

#[test]
fn a_wiped_node_does_not_help_a_lagging_node_win_and_lose_a_committed_write() {
    let mut c = Cluster::start_with(3, FAST);
    let a = c.wait_for_leader(Duration::from_secs(20));
    let others: Vec<_> = c.ids().into_iter().filter(|i| *i != a).collect();
    let (b, lagging) = (others[0], others[1]);
    // Committed on a and b only.
    c.kill(lagging);
    assert_eq!(c.put(a, "k", json!("v")).expect("answer").status, 200);
    // a loses its data; b is down. The lagging node lacks the write and must not be elected
    // with the vote of a node that forgot it ever stored it.
    c.kill(b);
    c.wipe(a);
    c.restart(a);
    c.restart(lagging);
    let window = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < window {
        let s = c.status(lagging);
        assert!(
            s.as_ref().is_none_or(|s| s.role != kvapi::Role::Leader),
            "the lagging node won an election with the wiped node's vote: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // With b back, a leader holding the write is elected and nothing is lost.
    c.restart(b);
    c.wait_for_leader(Duration::from_secs(20));
    assert_eq!(c.get(lagging, "k").expect("answer"), Some(json!("v")));
    poll(
        Duration::from_secs(20),
        "the wiped node to receive the write",
        || {
            let r = c.request(a, "GET", "/keys/k?consistency=stale", None, &[])?;
            (r.json["value"] == json!("v")).then_some(())
        },
    );
}

#[test]
fn a_follower_back_from_a_pause_does_not_depose_a_healthy_leader() {
    let mut c = Cluster::start_with(3, FAST);
    let leader = c.wait_for_leader(Duration::from_secs(20));
    let term = c.status(leader).expect("leader status").term;
    let follower = c.ids().into_iter().find(|i| *i != leader).expect("a follower");
    for round in 0..3 {
        // Paused for several election timeouts: when it runs again its election timer has long
        // expired. With pre-vote it first asks whether it could win; the others still hear from
        // their leader and say no, so no term is spent and the leader stays.
        c.pause(follower);
        let r = c.put(leader, "k", json!(round)).expect("answer");
        assert_eq!(r.status, 200, "{:?}", r.json);
        std::thread::sleep(Duration::from_millis(1500)); // the fault's length, not a wait
        c.resume(follower);
        let target = c.status(leader).and_then(|s| s.last_applied).expect("applied");
        c.wait_applied(follower, target, Duration::from_secs(20));
        for id in c.ids() {
            let s = c.status(id).expect("status");
            assert_eq!(
                (s.term, s.leader.map(|l| l.id)),
                (term, Some(leader)),
                "round {round}: node {id} saw a new term or leader after node {follower} came back"
            );
        }
    }
}

/// A tmpfs mounted for one test and unmounted when it ends.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(megabytes: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("tmp");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn a_node_whose_disk_fills_up_stops_serving_and_exits_non_zero() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small file system needs root");
        return;
    }
    let Some(disk) = SmallDisk::mount(96) else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    let ports = testkit::free_ports(2);
    let dir = tempfile::tempdir().expect("tmp");
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(
        &cluster,
        format!(
            "[[node]]\nid = 0\nhttp = \"127.0.0.1:{}\"\nraft = \"127.0.0.1:{}\"\n",
            ports[0], ports[1]
        ),
    )
    .expect("cluster file");
    let log_path = dir.path().join("node.log");
    let child = std::process::Command::new(testkit::kvnode_bin())
        .arg("--cluster")
        .arg(&cluster)
        .args(["--id", "0", "--snapshot-every", "50"])
        .arg("--data-dir")
        .arg(disk.0.path().join("data"))
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("spawn");
    let mut node = ChildGuard::new("node 0", child, &log_path);
    let http = testkit::http_client(None, None);
    let url = |path: &str| format!("http://127.0.0.1:{}{}", ports[0], path);
    poll(
        Duration::from_secs(30),
        "the one-node cluster to accept writes",
        || {
            let r = http
                .post(url("/keys/first"))
                .body(r#"{"type":"PUT","value":1}"#)
                .send()
                .ok()?;
            (r.status().as_u16() == 200).then_some(())
        },
    );
    // Half-megabyte values until the disk is full: the node must then stop, not go on
    // answering from a state it can no longer make durable.
    let big = format!(r#"{{"type":"PUT","value":"{}"}}"#, "x".repeat(512 * 1024));
    let mut acknowledged = 0;
    let status = poll(
        Duration::from_secs(120),
        "the node to exit on a full disk",
        || {
            if let Some(status) = node.child.try_wait().ok().flatten() {
                return Some(status);
            }
            let key = format!("/keys/big{acknowledged}");
            if let Ok(r) = http.post(url(&key)).body(big.clone()).send() {
                if r.status().as_u16() == 200 {
                    acknowledged += 1;
                }
            }
            None
        },
    );
    assert!(
        acknowledged > 10,
        "the disk filled up too early ({acknowledged} writes)"
    );
    assert_eq!(status.code(), Some(1), "a fatal storage error exits with 1");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        log.contains("No space left on device") || log.contains("os error 28"),
        "the node says why it stopped:\n{}",
        &log[log.len().saturating_sub(3000)..]
    );
    assert!(
        http.get(url("/admin/status")).send().is_err(),
        "nothing answers after the node stopped"
    );
}
