//! The operations surface on real nodes: `/metrics` read by Prometheus's own parser,
//! `/health` and `/ready` with their reasons, request ids in answers and logs, JSON logs, and
//! the streamed snapshot.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use testkit::{poll, Cluster};

const FAST: &[&str] = testkit::FAST_ELECTIONS;

/// GET `path` on node `id`: status, headers and the body as text.
fn get_text(c: &Cluster, id: u64, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
        .get(format!("{}{}", c.url(id), path))
        .send()
        .expect("answer");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().expect("body"))
}

/// The value of the sample `name{labels}` (labels as written, sorted by the encoder), if any.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Every metric family named in `# TYPE` lines.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// `promtool check metrics` on `text`: `None` when promtool is not installed, else its verdict
/// and output.
fn promtool(text: &str) -> Option<(bool, String)> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), said))
}

/// The series docs/OPERATIONS.md promises (families, as `# TYPE` names them).
const PROMISED: &[&str] = &[
    "kvnode_build_info",
    "kvnode_raft_term",
    "kvnode_raft_is_leader",
    "kvnode_raft_has_leader",
    "kvnode_raft_leader_id",
    "kvnode_raft_state",
    "kvnode_raft_commit_index",
    "kvnode_raft_applied_index",
    "kvnode_raft_last_log_index",
    "kvnode_raft_snapshot_index",
    "kvnode_raft_purged_index",
    "kvnode_raft_apply_lag_entries",
    "kvnode_raft_leader_changes_total",
    "kvnode_raft_proposals_pending",
    "kvnode_raft_voters",
    "kvnode_raft_follower_matched_index",
    "kvnode_raft_follower_lag_entries",
    "kvnode_raft_follower_last_ack_age_seconds",
    "kvnode_raft_quorum_ack_age_seconds",
    "kvnode_raft_append_batch_entries",
    "kvnode_raft_apply_batch_entries",
    "kvnode_raft_vote_requests_total",
    "kvnode_raft_heartbeats_total",
    "kvnode_raft_append_entries_requests_total",
    "kvnode_http_requests_total",
    "kvnode_http_request_duration_seconds",
    "kvnode_http_requests_in_flight",
    "kvnode_log_fsync_duration_seconds",
    "kvnode_log_write_batch_entries",
    "kvnode_log_write_batch_bytes",
    "kvnode_log_meta_write_duration_seconds",
    "kvnode_log_write_failures_total",
    "kvnode_snapshots_total",
    "kvnode_snapshot_duration_seconds",
    "kvnode_snapshot_size_bytes",
    "kvnode_snapshot_keys",
    "kvnode_keys",
    "kvnode_idempotency_records",
    "kvnode_storage_failed",
];

#[test]
fn metrics_pass_promtool_and_show_what_the_cluster_did() {
    let mut args = FAST.to_vec();
    args.extend(["--snapshot-every", "20"]);
    let c = Cluster::start_with(3, &args);
    let leader = c.wait_for_leader(Duration::from_secs(20));
    let follower = c.ids().into_iter().find(|id| *id != leader).expect("a follower");
    let writes = 40;
    for i in 0..writes {
        let key = format!("m{i}");
        let idem = uuid::Uuid::now_v7().to_string();
        let r = c.append(leader, &key, json!(i), Some(&idem)).expect("answer");
        assert_eq!(r.status, 200, "{:?}", r.json);
    }
    let last = c.status(leader).and_then(|s| s.last_applied).expect("applied");
    for id in c.ids() {
        c.wait_applied(id, last, Duration::from_secs(20));
    }
    // The leader compacts its log after 20 entries: a snapshot is built.
    poll(Duration::from_secs(20), "a snapshot on the leader", || {
        c.status(leader).and_then(|s| s.snapshot_index).map(|_| ())
    });

    let (status, headers, text) = get_text(&c, leader, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let found = families(&text);
    let missing: Vec<&&str> = PROMISED.iter().filter(|f| !found.contains(**f)).collect();
    assert!(missing.is_empty(), "missing series {missing:?} in:\n{text}");
    for family in &found {
        assert!(family.starts_with("kvnode_"), "{family} lacks the prefix");
    }
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        assert!(line.starts_with("kvnode_"), "{line}");
    }
    for help in found.iter() {
        assert!(
            text.contains(&format!("# HELP {help} ")),
            "{help} has no help text"
        );
    }

    assert_eq!(sample(&text, "kvnode_raft_is_leader"), Some(1.0));
    assert_eq!(sample(&text, "kvnode_raft_leader_id"), Some(leader as f64));
    assert_eq!(sample(&text, "kvnode_raft_state{state=\"leader\"}"), Some(1.0));
    assert!(sample(&text, "kvnode_raft_applied_index").is_some_and(|v| v >= last as f64));
    assert!(sample(&text, "kvnode_raft_leader_changes_total").is_some_and(|v| v >= 1.0));
    assert_eq!(sample(&text, "kvnode_keys"), Some(writes as f64));
    assert_eq!(
        sample(&text, "kvnode_idempotency_records"),
        Some(writes as f64),
        "one record per idempotent write"
    );
    let follower_label = format!("{{follower=\"{follower}\"}}");
    assert!(
        sample(
            &text,
            &format!("kvnode_raft_follower_lag_entries{follower_label}")
        )
        .is_some(),
        "{text}"
    );
    assert!(sample(
        &text,
        &format!("kvnode_raft_follower_last_ack_age_seconds{follower_label}")
    )
    .is_some_and(|age| age < 5.0));
    let ok_writes = sample(
        &text,
        "kvnode_http_requests_total{method=\"POST\",route=\"/keys/{*key}\",status=\"200\"}",
    );
    assert_eq!(ok_writes, Some(writes as f64), "{text}");
    assert!(sample(&text, "kvnode_log_fsync_duration_seconds_count").is_some_and(|n| n >= 1.0));
    assert!(sample(&text, "kvnode_log_write_batch_entries_sum").is_some_and(|n| n >= writes as f64));
    assert!(sample(&text, "kvnode_snapshots_total{kind=\"built\"}").is_some_and(|n| n >= 1.0));
    assert!(sample(&text, "kvnode_snapshot_keys").is_some_and(|n| n >= 1.0));
    assert_eq!(sample(&text, "kvnode_storage_failed"), Some(0.0));

    let (_, _, on_follower) = get_text(&c, follower, "/metrics");
    assert_eq!(sample(&on_follower, "kvnode_raft_is_leader"), Some(0.0));
    assert_eq!(sample(&on_follower, "kvnode_raft_leader_id"), Some(leader as f64));
    assert!(sample(&on_follower, "kvnode_raft_append_entries_requests_total").is_some_and(|n| n >= 1.0));

    for (who, text) in [("leader", &text), ("follower", &on_follower)] {
        match promtool(text) {
            None => eprintln!(
                "SKIPPED: promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it), \
                 so the {who}'s /metrics was not checked by Prometheus's parser"
            ),
            Some((ok, said)) => assert!(ok, "promtool check metrics refused the {who}'s /metrics:\n{said}\n{text}"),
        }
    }
}

#[test]
fn health_and_readiness_answer_with_their_reasons() {
    let mut args = FAST.to_vec();
    args.extend(["--leader-wait-ms", "500"]);
    let mut c = Cluster::prepare(3, &args);
    c.restart(0);
    // Alone, node 0 works but cannot serve: the cluster has not formed.
    let ready = poll(Duration::from_secs(20), "node 0 to answer /ready", || {
        c.request(0, "GET", "/ready", None, &[])
    });
    assert_eq!(ready.status, 503, "{:?}", ready.json);
    assert_eq!(ready.json["ready"], false);
    assert_eq!(ready.json["reason"], "no_leader");
    assert!(ready.json["message"]
        .as_str()
        .is_some_and(|m| m.contains("not formed")));
    let health = c.request(0, "GET", "/health", None, &[]).expect("answer");
    assert_eq!((health.status, &health.json["healthy"]), (200, &json!(true)));

    c.restart(1);
    c.restart(2);
    c.wait_for_leader(Duration::from_secs(30));
    for id in c.ids() {
        let r = poll(Duration::from_secs(20), "every node ready", || {
            c.request(id, "GET", "/ready", None, &[])
                .filter(|r| r.status == 200)
        });
        assert_eq!(r.json["ready"], true, "{:?}", r.json);
        assert!(r.json["applied_index"].as_u64() >= r.json["leader_commit"].as_u64());
    }

    // Two of three gone: the survivor, leader or not, has no leader that can commit.
    let survivor = 0;
    c.kill(1);
    c.kill(2);
    let r = poll(Duration::from_secs(20), "the survivor to say no_leader", || {
        c.request(survivor, "GET", "/ready", None, &[])
            .filter(|r| r.status == 503)
    });
    assert_eq!(r.json["reason"], "no_leader", "{:?}", r.json);
    let health = c.request(survivor, "GET", "/health", None, &[]).expect("answer");
    assert_eq!(health.status, 200, "its process and storage still work");

    // A failed request carries its id in the answer and in the node's log.
    let r = c
        .request(
            survivor,
            "POST",
            "/keys/lost",
            Some(r#"{"type":"PUT","value":1}"#),
            &[("X-Request-Id", "ops-test-42")],
        )
        .expect("answer");
    assert!(r.status == 503 || r.status == 504, "{:?}", r.json);
    assert_eq!(
        r.headers.get("x-request-id").and_then(|v| v.to_str().ok()),
        Some("ops-test-42")
    );
    poll(
        Duration::from_secs(10),
        "the request id in the node's log",
        || c.log(survivor).contains("ops-test-42").then_some(()),
    );
}

#[test]
fn request_ids_are_returned_and_json_logs_are_one_object_per_line() {
    let c = Cluster::start_with(1, &["--log-format", "json"]);
    let r = c.request(0, "GET", "/no/such/route", None, &[]).expect("answer");
    assert_eq!(r.status, 404);
    let made = r
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("an id is made when the client sends none")
        .to_string();
    assert!(made.starts_with("0-"), "{made}");
    let r = c
        .request(0, "GET", "/admin/status", None, &[("X-Request-Id", "bad id")])
        .expect("answer");
    let replaced = r.headers.get("x-request-id").and_then(|v| v.to_str().ok());
    assert!(
        replaced.is_some_and(|id| id.starts_with("0-") && id != made),
        "{replaced:?}"
    );

    let log = c.log(0);
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    let started = lines
        .iter()
        .find(|l| l["fields"]["message"] == "node started")
        .expect("a start line");
    assert_eq!(started["span"]["name"], "node");
    assert_eq!(started["span"]["id"], 0);
}

#[test]
fn the_streamed_snapshot_is_a_verified_file_at_the_announced_index() {
    let c = Cluster::start_with(1, FAST);
    for i in 0..25 {
        assert_eq!(
            c.put(0, &format!("s{i}"), json!({"n": i}))
                .expect("answer")
                .status,
            200
        );
    }
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let r = http
        .get(format!("{}/admin/snapshot", c.url(0)))
        .send()
        .expect("answer");
    assert_eq!(r.status().as_u16(), 200);
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let index: u64 = header("x-snapshot-index")
        .and_then(|v| v.parse().ok())
        .expect("index header");
    assert_eq!(header("x-snapshot-keys").as_deref(), Some("25"));
    let body = r.bytes().expect("body");
    let summary = kvapi::snapshot::inspect(&body[..]).expect("a sound snapshot");
    assert_eq!(summary.index, Some(index));
    assert_eq!(summary.keys, 25);
    assert_eq!(summary.size, body.len() as u64);
    let applied = c.status(0).and_then(|s| s.last_applied).expect("applied");
    assert!(
        index >= applied,
        "taken after a read barrier: {index} < {applied}"
    );

    let stale = c
        .request(0, "GET", "/admin/snapshot?consistency=stale", None, &[])
        .expect("answer");
    assert_eq!(stale.status, 200);
    let bad = c
        .request(0, "GET", "/admin/snapshot?consistency=maybe", None, &[])
        .expect("answer");
    assert_eq!(bad.status, 400);
}
