//! Versions, conditional writes and watches on real `kvnode` processes (issue 14).
//!
//! - Conditions hold through every node and race-free: `If-None-Match: *` and `If-Match`
//!   against the versions a GET reports, 412 with the current index, and a retried conditional
//!   write answered with its first outcome, never with a 412 its own success caused.
//! - Watches: every node streams the same changes in log order; a stream cut by a `kill -9`
//!   resumes on another node from its last id with nothing missing or repeated; a node's
//!   history starts at what it has applied (after a restart, after installing a snapshot)
//!   and a watch from before it is refused with 410; a graceful shutdown ends open streams.
//!
//! Every wait polls with a deadline; clusters are killed when a test ends, and their logs are
//! printed when it fails.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use testkit::{poll, Cluster, SseEvent, SseStream};

const WAIT: Duration = Duration::from_secs(20);

fn write(c: &Cluster, node: u64, key: &str, value: Value, headers: &[(&str, &str)]) -> testkit::Reply {
    let body = json!({"type": "PUT", "value": value}).to_string();
    c.request(node, "POST", &format!("/keys/{key}"), Some(&body), headers)
        .expect("an answer")
}

fn versions(c: &Cluster, node: u64, key: &str) -> (u64, u64, u64) {
    let r = c
        .request(node, "GET", &format!("/keys/{key}"), None, &[])
        .expect("an answer");
    assert_eq!(r.status, 200, "{:?}", r.json);
    let field = |f: &str| {
        r.json[f]
            .as_u64()
            .unwrap_or_else(|| panic!("{f} in {:?}", r.json))
    };
    let etag = r
        .headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(
        etag,
        Some(format!("\"{}\"", field("mod_index"))),
        "ETag is the mod_index"
    );
    (field("create_index"), field("mod_index"), field("version"))
}

#[test]
fn conditional_writes_hold_through_every_node_and_a_retry_gets_its_first_answer() {
    let c = Cluster::start(3);
    let leader = c.wait_for_leader(WAIT);
    let follower = c.ids().into_iter().find(|&i| i != leader).expect("a follower");

    // Create-if-absent, through a follower: the first wins, the second is told the index.
    let first = write(&c, follower, "lock", json!("a"), &[("If-None-Match", "*")]);
    assert_eq!(first.status, 200, "{:?}", first.json);
    let created = first.json["index"].as_u64().expect("index");
    let second = write(&c, leader, "lock", json!("b"), &[("If-None-Match", "*")]);
    assert_eq!(second.status, 412, "{:?}", second.json);
    assert_eq!(second.json["error"]["code"], "precondition_failed");
    assert_eq!(second.json["error"]["exists"], true);
    assert_eq!(second.json["error"]["mod_index"], created);
    let message = second.json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("index {created}")), "{message}");
    assert_eq!(versions(&c, follower, "lock"), (created, created, 1));

    // Compare-and-swap against the version read: the stale one fails and changes nothing.
    let tag = format!("\"{created}\"");
    let swapped = write(&c, follower, "lock", json!("c"), &[("If-Match", &tag)]);
    assert_eq!(swapped.status, 200, "{:?}", swapped.json);
    let moved = swapped.json["index"].as_u64().expect("index");
    let stale = write(&c, leader, "lock", json!("d"), &[("If-Match", &tag)]);
    assert_eq!(
        (stale.status, &stale.json["error"]["mod_index"]),
        (412, &json!(moved))
    );
    assert_eq!(c.get(leader, "lock"), Some(Some(json!("c"))));
    assert_eq!(versions(&c, leader, "lock"), (created, moved, 2));
    let append = c
        .request(
            follower,
            "POST",
            "/keys/lock",
            Some(r#"{"type":"APPEND","value":"e"}"#),
            &[("If-Match", &tag)],
        )
        .expect("answer");
    assert_eq!(append.status, 412, "APPEND takes conditions too");

    // A conditional delete; then the key is absent, for If-Match as for a later create.
    let stale_delete = c
        .request(leader, "DELETE", "/keys/lock", None, &[("If-Match", &tag)])
        .expect("answer");
    assert_eq!(stale_delete.status, 412);
    let current = format!("\"{moved}\"");
    let delete = c
        .request(follower, "DELETE", "/keys/lock", None, &[("If-Match", &current)])
        .expect("answer");
    assert_eq!(delete.status, 200, "{:?}", delete.json);
    let gone = write(&c, leader, "lock", json!("f"), &[("If-Match", &current)]);
    assert_eq!(gone.status, 412);
    assert_eq!(gone.json["error"]["exists"], false);
    assert!(gone.headers.get("etag").is_none(), "no ETag for an absent key");

    // The same conditional write sent twice with one idempotency key, through two nodes: the
    // copy is answered with the first success, though a fresh check would now fail.
    let idem = "0190a3b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b";
    let idem = uuid_now(idem);
    let once = [("If-None-Match", "*"), ("Idempotency-Key", idem.as_str())];
    let a = write(&c, follower, "once", json!(1), &once);
    let b = write(&c, leader, "once", json!(1), &once);
    assert_eq!((a.status, b.status), (200, 200), "{:?} {:?}", a.json, b.json);
    assert_eq!(a.json["index"], b.json["index"]);
    assert_eq!(
        b.headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(versions(&c, leader, "once").2, 1, "applied once");
    // The same key under another condition is another write: refused as a reused key.
    let other = write(
        &c,
        leader,
        "once",
        json!(1),
        &[("Idempotency-Key", idem.as_str())],
    );
    assert_eq!(other.status, 422, "{:?}", other.json);

    // Bad conditions are refused before anything is proposed.
    for (name, value) in [
        ("If-Match", "*"),
        ("If-Match", "W/\"3\""),
        ("If-Match", "3"),
        ("If-None-Match", "\"3\""),
    ] {
        let r = write(&c, follower, "bad", json!(1), &[(name, value)]);
        assert_eq!(r.status, 400, "{name}: {value}: {:?}", r.json);
    }
    assert_eq!(c.get(leader, "bad"), Some(None));
}

/// A UUIDv7 made now (the server refuses keys from far in the future or the distant past),
/// with the random part of `template`.
fn uuid_now(template: &str) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    format!("{:08x}-{:04x}{}", ms >> 16, ms & 0xffff, &template[13..])
}

/// The changes of a stream until `n` have come: (index, kind, key, value, id).
fn changes(stream: &SseStream, n: usize) -> Vec<(u64, String, String, Value, Option<String>)> {
    (0..n)
        .map(|i| {
            let e: SseEvent = stream
                .next_change(WAIT)
                .unwrap_or_else(|| panic!("change {i} of {n} did not come"));
            let d = e.json();
            (
                d["index"].as_u64().expect("index"),
                d["kind"].as_str().expect("kind").to_string(),
                d["key"].as_str().expect("key").to_string(),
                d.get("value").cloned().unwrap_or(Value::Null),
                e.id,
            )
        })
        .collect()
}

#[test]
fn every_node_streams_the_same_changes_in_log_order_and_a_killed_one_is_resumed_elsewhere() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader(WAIT);
    let start = write(&c, leader, "w/start", json!(0), &[]).json["index"]
        .as_u64()
        .expect("index");
    for id in c.ids() {
        c.wait_applied(id, start, WAIT);
    }
    let after = format!("prefix=w/&after={start}&heartbeat_ms=200");
    let streams: BTreeMap<u64, SseStream> = c
        .ids()
        .into_iter()
        .map(|id| (id, c.watch(id, &after, &[]).expect("a stream")))
        .collect();
    let one_key = c
        .watch(leader, &format!("key=w/a&after={start}"), &[])
        .expect("a stream");
    for s in streams.values() {
        let first = s.next(WAIT).expect("the opening heartbeat");
        assert_eq!(first.event.as_deref(), Some("heartbeat"));
        assert_eq!(first.json()["index"], start);
    }

    // Writes from several threads at once, so that some share a log entry (group commit).
    std::thread::scope(|scope| {
        for t in 0..4 {
            let c = &c;
            scope.spawn(move || {
                for i in 0..5 {
                    let node = (t + i) % 3;
                    let body = json!({"type": "APPEND", "value": format!("t{t}-{i}")}).to_string();
                    let key = if t % 2 == 0 { "w/a" } else { "w/b" };
                    let r = c
                        .request(node as u64, "POST", &format!("/keys/{key}"), Some(&body), &[])
                        .expect("answer");
                    assert_eq!(r.status, 200, "{:?}", r.json);
                }
            });
        }
    });
    assert_eq!(c.put(leader, "other", json!(1)).expect("answer").status, 200);
    c.request(leader, "DELETE", "/keys/w/b", None, &[])
        .expect("answer");

    let seen: BTreeMap<u64, Vec<_>> = streams.iter().map(|(id, s)| (*id, changes(s, 21))).collect();
    let reference = &seen[&leader];
    for (id, got) in &seen {
        assert_eq!(got, reference, "node {id} streams what the leader streams");
    }
    // In log order; the ids mark the last event of each index; the values grow one at a time.
    for pair in reference.windows(2) {
        assert!(pair[0].0 <= pair[1].0, "{pair:?}");
        assert_eq!(pair[0].4.is_some(), pair[0].0 != pair[1].0, "{pair:?}");
    }
    assert_eq!(reference.last().map(|e| e.1.as_str()), Some("delete"));
    assert!(
        reference.iter().all(|e| e.2.starts_with("w/")),
        "only watched keys"
    );
    let a_lists: Vec<usize> = reference
        .iter()
        .filter(|e| e.2 == "w/a")
        .map(|e| e.3.as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(a_lists, (1..=10).collect::<Vec<_>>());
    let only_a = changes(&one_key, 10);
    assert!(only_a.iter().all(|e| e.2 == "w/a"));

    // Kill a node whose stream is open: the stream ends; resumed on another node from the last
    // id seen, nothing is missing and nothing repeats.
    let victim = c.ids().into_iter().find(|&i| i != leader).expect("a follower");
    let resume_from = reference[10].0;
    let tail: Vec<_> = reference.iter().filter(|e| e.0 > resume_from).cloned().collect();
    c.kill(victim);
    while let Some(e) = streams[&victim].next(WAIT) {
        assert_eq!(
            e.event.as_deref(),
            Some("heartbeat"),
            "no change after the last: {e:?}"
        );
    }
    let survivor = c
        .ids()
        .into_iter()
        .find(|&i| i != victim && i != leader)
        .expect("a node");
    let resumed = c
        .watch(
            survivor,
            "prefix=w/",
            &[("Last-Event-ID", &resume_from.to_string())],
        )
        .expect("a stream");
    assert_eq!(changes(&resumed, tail.len()), tail);
    let later = write(&c, leader, "w/a", json!("new"), &[]);
    assert_eq!(later.status, 200);
    let next = changes(&resumed, 1);
    assert_eq!(
        (next[0].0, next[0].1.as_str()),
        (later.json["index"].as_u64().expect("i"), "put")
    );
}

#[test]
fn a_node_s_history_starts_at_what_it_applied_and_older_watches_get_410() {
    let mut c = Cluster::start_with(3, &["--snapshot-every", "20"]);
    let leader = c.wait_for_leader(WAIT);
    let victim = c.ids().into_iter().find(|&i| i != leader).expect("a follower");
    let mut puts: Vec<u64> = Vec::new();
    let mut put = |c: &Cluster, i: u64| {
        let r = c.put(leader, "h", json!(i)).expect("answer");
        assert_eq!(r.status, 200, "{:?}", r.json);
        puts.push(r.json["index"].as_u64().expect("index"));
    };
    for i in 0..5 {
        put(&c, i);
    }
    let before = c.status(leader).and_then(|s| s.last_applied).expect("applied");
    c.wait_applied(victim, before, WAIT);
    let victim_end = c.status(victim).and_then(|s| s.last_log_index).expect("log end");

    // While the follower is down the leader snapshots and compacts its log past it, so that
    // the follower comes back through a snapshot install.
    c.kill(victim);
    let mut i = 5;
    poll(
        Duration::from_secs(60),
        "the leader to purge its log past the stopped follower",
        || {
            for _ in 0..10 {
                i += 1;
                put(&c, i);
            }
            c.status(leader)
                .and_then(|s| s.purged_index)
                .filter(|p| *p > victim_end)
        },
    );
    let purged = c.status(leader).and_then(|s| s.purged_index).expect("purged");
    c.restart(victim);
    poll(WAIT, "the follower to install the leader's snapshot", || {
        c.log(victim).contains("snapshot installed").then_some(())
    });
    for _ in 0..3 {
        i += 1;
        put(&c, i);
    }
    let applied = c.status(leader).and_then(|s| s.last_applied).expect("applied");
    c.wait_applied(victim, applied, WAIT);

    // The leader never restarted: its history reaches back to the start. The follower's starts
    // at the snapshot it installed, which covers at least what the leader purged.
    let from_start = c.watch(leader, "key=h&after=0", &[]).expect("answer");
    assert_eq!(from_start.status, 200);
    let refused = c.watch(victim, "key=h&after=0", &[]).expect("answer");
    assert_eq!(refused.status, 410, "{:?}", refused.body);
    let body = refused.body.expect("an error body");
    assert_eq!(body["error"]["code"], "compacted");
    let oldest = body["error"]["oldest_index"].as_u64().expect("oldest_index");
    assert!(
        oldest > purged && oldest <= applied + 1,
        "oldest {oldest}, leader purged {purged}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("after={}", oldest - 1)), "{message}");
    // From where the follower's history starts, it streams exactly the writes after it, as the
    // leader does.
    let q = format!("key=h&after={}", oldest - 1);
    let expected: Vec<u64> = puts.iter().copied().filter(|&p| p >= oldest).collect();
    assert!(expected.len() >= 3, "{expected:?}");
    let mine = changes(&c.watch(victim, &q, &[]).expect("answer"), expected.len());
    let theirs = changes(&c.watch(leader, &q, &[]).expect("answer"), expected.len());
    assert_eq!(mine, theirs);
    assert_eq!(mine.iter().map(|e| e.0).collect::<Vec<_>>(), expected);

    // After a restart the history starts at the node's own newest snapshot: no older than the
    // one it installed, and what it replays from its log after that is covered again.
    c.restart(victim);
    c.wait_applied(victim, applied, WAIT);
    let again = c.watch(victim, "key=h&after=0", &[]).expect("answer");
    assert_eq!(again.status, 410);
    let oldest_now = again.body.expect("body")["error"]["oldest_index"]
        .as_u64()
        .expect("oldest_index");
    assert!(oldest_now >= oldest && oldest_now <= applied + 1, "{oldest_now}");
    let expected: Vec<u64> = puts.iter().copied().filter(|&p| p >= oldest_now).collect();
    let replayed = c
        .watch(victim, &format!("key=h&after={}", oldest_now - 1), &[])
        .expect("answer");
    assert_eq!(replayed.status, 200);
    let got = changes(&replayed, expected.len());
    assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), expected);
}

#[test]
fn a_graceful_shutdown_ends_open_watches() {
    let mut c = Cluster::start(1);
    c.wait_for_leader(WAIT);
    let stream = c.watch(0, "prefix=", &[]).expect("a stream");
    assert_eq!(stream.next(WAIT).and_then(|e| e.event), Some("heartbeat".into()));
    assert_eq!(
        c.terminate(0),
        Some(0),
        "the node exits cleanly with a watch open"
    );
    let last = stream.next_change(WAIT).expect("a closing event");
    assert_eq!(last.event.as_deref(), Some("error"));
    assert_eq!(last.json()["error"]["code"], "shutting_down");
    assert!(stream.next(Duration::from_secs(5)).is_none(), "the stream ends");
}
