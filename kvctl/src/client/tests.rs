//! Unit tests of the client against scripted servers (see [`crate::mock_server`]).

use std::sync::atomic::Ordering;

use super::attempts::final_error;
use super::*;
use crate::transport::Failure;
use kvapi::ErrorCode;

#[test]
fn final_errors_follow_the_server_code() {
    let answered = |code: ErrorCode| Failure::Answered {
        status: code.http_status(),
        code: Some(code),
        message: "why".into(),
        leader: None,
        retry_after: None,
        current: None,
    };
    assert!(matches!(
        final_error(answered(ErrorCode::KeyNotFound), "k", false, None),
        ClientError::NotFound { key } if key == "k"
    ));
    assert!(matches!(
        final_error(answered(ErrorCode::TypeConflict), "k", true, Some("id")),
        ClientError::Rejected {
            code: ErrorCode::TypeConflict,
            ..
        }
    ));
    // A read that met a server bug failed; a write that met one may have been applied.
    let err = final_error(answered(ErrorCode::Internal), "k", false, None);
    assert_eq!(err.to_string(), "server error: 500 internal: why");
    let err = final_error(answered(ErrorCode::Internal), "k", false, Some("id-1"));
    assert!(
        matches!(&err, ClientError::OutcomeUnknown { idempotency_key, .. } if idempotency_key == "id-1"),
        "{err}"
    );
    // The server cannot tell what became of a write whose key it has forgotten.
    let err = final_error(
        answered(ErrorCode::IdempotencyKeyExpired),
        "k",
        false,
        Some("id-2"),
    );
    assert_eq!(err.exit().code(), 4);
    assert!(
        err.to_string().contains("idempotency_key_expired") && err.to_string().contains("id-2"),
        "{err}"
    );
    // A route the server does not know changed nothing.
    let err = final_error(answered(ErrorCode::NotFound), "k", false, Some("id-3"));
    assert!(matches!(err, ClientError::Other(_)), "{err}");
    // A failed condition is an answer, also for a write in doubt (its retry would have been
    // answered with the first copy's success), with the key's current index.
    let refused = |current| Failure::Answered {
        status: 412,
        code: Some(ErrorCode::PreconditionFailed),
        message: "why".into(),
        leader: None,
        retry_after: None,
        current: Some(current),
    };
    let err = final_error(refused(Some(7)), "k", true, Some("id-4"));
    assert!(
        matches!(&err, ClientError::PreconditionFailed { key, current: Some(7), .. } if key == "k"),
        "{err}"
    );
    assert_eq!(err.exit().code(), 6);
    let err = final_error(refused(None), "k", false, Some("id-5"));
    assert!(
        matches!(&err, ClientError::PreconditionFailed { current: None, .. }),
        "{err}"
    );
}

#[test]
fn keys_are_checked_locally() {
    assert!(check_key("ok").is_ok());
    assert!(matches!(check_key(""), Err(ClientError::Rejected { .. })));
    assert!(check_key(&"x".repeat(MAX_KEY_BYTES + 1)).is_err());
}

#[test]
fn idempotency_keys_are_fresh_uuids_that_carry_their_creation_time() {
    let before = SystemTime::now() - Duration::from_millis(1);
    let a = new_idempotency_key();
    let b = new_idempotency_key();
    let after = SystemTime::now() + Duration::from_millis(1);
    assert_ne!(a, b);
    assert_eq!(a.len(), 36);
    assert!(a.len() <= kvapi::MAX_IDEMPOTENCY_KEY_BYTES);
    let created = idempotency_key_created(&a).expect("a UUIDv7");
    assert!(before <= created && created <= after, "{a}: {created:?}");
    assert_eq!(idempotency_key_created(&uuid::Uuid::new_v4().to_string()), None);
    assert_eq!(idempotency_key_created("chaos-c1-7"), None);
}

/// A UUIDv7 key created `age` before `now`. Measured from the caller's own `now`, so that the
/// clock moving on between the two calls cannot make the key look younger than `age`.
fn key_aged(age: Duration, now: SystemTime) -> String {
    let created = now - age;
    let since = created.duration_since(UNIX_EPOCH).expect("after 1970");
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
    uuid::Uuid::new_v7(ts).to_string()
}

#[test]
fn a_write_is_retried_only_inside_the_cluster_s_memory_of_its_key() {
    assert!(WRITE_WINDOW < kvapi::IDEMPOTENCY_RETENTION);
    let now = SystemTime::now();
    let fresh = write_window_left(&new_idempotency_key(), now);
    assert!(fresh <= WRITE_WINDOW && fresh > WRITE_WINDOW - Duration::from_secs(1));
    let aged = write_window_left(&key_aged(Duration::from_secs(500), now), now);
    assert!(
        aged <= Duration::from_secs(40) && aged > Duration::from_secs(38),
        "{aged:?}"
    );
    assert_eq!(
        write_window_left(&key_aged(Duration::from_secs(540), now), now),
        Duration::ZERO
    );
    assert_eq!(
        write_window_left("caller-chosen", now),
        WRITE_WINDOW,
        "age unknown: counted from now"
    );
}

/// A write whose key is too old is not sent at all: the cluster may have forgotten the key and
/// would apply the write a second time.
#[tokio::test]
async fn a_write_with_a_key_too_old_is_not_resent() {
    let endpoint = Endpoint::parse("127.0.0.1:1").expect("endpoint");
    let client = Client::new(ClientConfig::new(vec![endpoint])).expect("client");
    let old = key_aged(Duration::from_secs(11 * 60), SystemTime::now());
    let started = Instant::now();
    let err = client
        .write("k", WriteKind::Append, Value::from(1), &old)
        .await
        .expect_err("too old");
    assert!(started.elapsed() < Duration::from_secs(1), "nothing was tried");
    match &err {
        ClientError::OutcomeUnknown {
            idempotency_key,
            reason,
        } => {
            assert_eq!(idempotency_key, &old);
            assert!(reason.contains("could apply the write a second time"), "{reason}");
        }
        other => panic!("expected OutcomeUnknown, got {other}"),
    }
}

/// A connection to a port nobody listens on is "not sent", with a short cause; the whole
/// operation then gives up as Unavailable within its timeout.
#[tokio::test]
async fn a_dead_cluster_is_unavailable_within_the_timeout() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let endpoint = Endpoint::parse(&format!("127.0.0.1:{port}")).expect("endpoint");
    let mut config = ClientConfig::new(vec![endpoint]);
    config.timeout = Duration::from_millis(600);
    let client = Client::new(config).expect("client");
    let started = Instant::now();
    let err = client.put("k", Value::from(1)).await.expect_err("nobody listens");
    assert!(started.elapsed() < Duration::from_secs(2), "{err}");
    match err {
        ClientError::Unavailable { reason, .. } => {
            assert!(reason.contains("connection refused"), "{reason}")
        }
        other => panic!("expected Unavailable, got {other}"),
    }
    let reports = client.node_statuses().await;
    assert_eq!(reports.len(), 1);
    let error = reports[0].result.as_ref().expect_err("down");
    assert!(error.contains("connection refused"), "{error}");
}

mod scripted {
    use super::*;
    use crate::mock_server::{status_json, Mock, Reply, DELAY};
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    fn ok(body: String) -> Reply {
        Some((200, vec![], body))
    }

    fn error(status: u16, code: &str, leader: Option<(u64, &str)>) -> Reply {
        let leader = leader
            .map(|(id, http)| format!(r#","leader":{{"id":{id},"http":"{http}"}}"#))
            .unwrap_or_default();
        Some((
            status,
            vec![],
            format!(r#"{{"error":{{"code":"{code}","message":"scripted"{leader}}}}}"#),
        ))
    }

    fn written(key: &str, index: u64) -> String {
        format!(r#"{{"key":"{key}","index":{index}}}"#)
    }

    fn client(mocks: &[&Mock], timeout_ms: u64) -> Client {
        let endpoints = mocks
            .iter()
            .map(|m| Endpoint::parse(&m.address).expect("endpoint"))
            .collect();
        let mut config = ClientConfig::new(endpoints);
        config.timeout = Duration::from_millis(timeout_ms);
        config.attempt_timeout = Duration::from_millis(300);
        config.probe_timeout = Duration::from_millis(300);
        config.retry = RetryPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
        };
        Client::new(config).expect("client")
    }

    #[tokio::test]
    async fn a_lost_answer_is_retried_with_the_same_idempotency_key() {
        let posts = Arc::new(AtomicUsize::new(0));
        let counter = posts.clone();
        let leader = Mock::start(move |req| match req.method.as_str() {
            "GET" => ok(status_json(0, "leader", 2, Some((0, "self")))),
            _ if counter.fetch_add(1, Ordering::SeqCst) == 0 => error(504, "outcome_unknown", None),
            _ => Some((200, vec![("idempotent-replayed", "true".into())], written("k", 9))),
        })
        .await;
        let outcome = client(&[&leader], 3000)
            .append("k", Value::from("x"))
            .await
            .expect("second attempt succeeds");
        assert!(outcome.replayed);
        assert_eq!(outcome.attempts, 2);
        assert_eq!(outcome.response.index, 9);
        let sent = leader.requests("POST");
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].idempotency_key, sent[1].idempotency_key);
        assert_eq!(
            sent[0].idempotency_key.as_deref(),
            Some(outcome.idempotency_key.as_str())
        );
        assert_eq!(sent[0].path, "/keys/k");
        assert_eq!(sent[0].body, r#"{"type":"APPEND","value":"x"}"#);
    }

    #[tokio::test]
    async fn requests_go_straight_to_the_leader_a_follower_names() {
        let leader = Mock::start(|req| match req.method.as_str() {
            "GET" => ok(status_json(1, "leader", 3, None)),
            _ => ok(written("a/b", 4)),
        })
        .await;
        let hint = leader.address.clone();
        let follower = Mock::start(move |req| match req.method.as_str() {
            "GET" => ok(status_json(0, "follower", 3, Some((1, &hint)))),
            _ => error(500, "internal", None),
        })
        .await;
        let c = client(&[&follower, &leader], 3000);
        c.put("a/b", Value::from(1)).await.expect("put");
        assert_eq!(leader.requests("POST").len(), 1);
        assert_eq!(leader.requests("POST")[0].path, "/keys/a%2Fb");
        assert!(follower.requests("POST").is_empty());
        // The leader is cached: the next write needs no discovery.
        let before = leader.requests("GET").len() + follower.requests("GET").len();
        c.delete("a/b").await.expect("delete");
        let after = leader.requests("GET").len() + follower.requests("GET").len();
        assert_eq!(before, after);
        assert_eq!(leader.requests("DELETE").len(), 1);
    }

    #[tokio::test]
    async fn a_503_with_a_hint_moves_the_write_to_the_new_leader() {
        let new_leader = Mock::start(|req| match req.method.as_str() {
            "GET" => ok(status_json(1, "leader", 5, None)),
            _ => ok(written("k", 12)),
        })
        .await;
        let hint = new_leader.address.clone();
        let old_leader = Mock::start(move |req| match req.method.as_str() {
            "GET" => ok(status_json(0, "leader", 5, None)),
            _ => error(503, "unavailable", Some((1, &hint))),
        })
        .await;
        let c = client(&[&old_leader], 3000);
        let outcome = c.put("k", Value::from(true)).await.expect("put");
        assert_eq!(outcome.response.index, 12);
        let first = old_leader.requests("POST");
        let second = new_leader.requests("POST");
        assert_eq!((first.len(), second.len()), (1, 1));
        assert_eq!(first[0].idempotency_key, second[0].idempotency_key);
    }

    #[tokio::test]
    async fn a_write_never_answered_is_outcome_unknown_within_the_timeout() {
        let silent = Mock::start(|req| match req.method.as_str() {
            "GET" => ok(status_json(0, "leader", 1, None)),
            _ => None,
        })
        .await;
        let started = Instant::now();
        let err = client(&[&silent], 1000)
            .put("k", Value::from(1))
            .await
            .expect_err("never answered");
        assert!(started.elapsed() < Duration::from_millis(1500));
        let ClientError::OutcomeUnknown { idempotency_key, .. } = err else {
            panic!("expected OutcomeUnknown, got {err}");
        };
        let sent = silent.requests("POST");
        assert!(sent.len() >= 2, "retried: {sent:?}");
        assert!(sent
            .iter()
            .all(|s| s.idempotency_key.as_deref() == Some(idempotency_key.as_str())));
    }

    #[tokio::test]
    async fn a_server_error_after_a_doubtful_attempt_is_still_outcome_unknown() {
        let posts = Arc::new(AtomicUsize::new(0));
        let counter = posts.clone();
        let leader = Mock::start(move |req| match req.method.as_str() {
            "GET" => ok(status_json(0, "leader", 1, None)),
            _ if counter.fetch_add(1, Ordering::SeqCst) == 0 => error(504, "outcome_unknown", None),
            _ => error(500, "internal", None),
        })
        .await;
        let err = client(&[&leader], 3000)
            .put("k", Value::from(1))
            .await
            .expect_err("never settled");
        assert!(matches!(err, ClientError::OutcomeUnknown { .. }), "{err}");
        assert_eq!(err.exit().code(), 4);
    }

    #[tokio::test]
    async fn not_found_and_rejections_are_final() {
        let leader = Mock::start(|req| match req.method.as_str() {
            "GET" if req.path == "/admin/status" => ok(status_json(0, "leader", 1, None)),
            "GET" => error(404, "key_not_found", None),
            _ => error(409, "type_conflict", None),
        })
        .await;
        let c = client(&[&leader], 3000);
        let err = c.get("missing").await.expect_err("absent");
        assert!(matches!(err, ClientError::NotFound { .. }), "{err}");
        let err = c.append("n", Value::from(1)).await.expect_err("conflict");
        assert!(
            matches!(
                err,
                ClientError::Rejected {
                    code: kvapi::ErrorCode::TypeConflict,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(leader.requests("POST").len(), 1, "no retry of a refusal");
    }

    #[tokio::test]
    async fn a_lone_node_of_a_larger_cluster_is_not_handed_writes_it_cannot_commit() {
        // `--endpoints` names one node, but it reports three members: answering alone it
        // is a minority, so the write is not parked on it to time out in doubt.
        let lone = Mock::start(|req| match req.path.as_str() {
            "/admin/status" => ok(status_json(2, "candidate", 7, None).replace(
                r#""members":[]"#,
                r#""members":[{"id":0,"http":"127.0.0.1:1","raft":"127.0.0.1:2"},
                    {"id":1,"http":"127.0.0.1:3","raft":"127.0.0.1:4"},
                    {"id":2,"http":"127.0.0.1:5","raft":"127.0.0.1:6"}]"#,
            )),
            _ => error(503, "unavailable", None),
        })
        .await;
        let err = client(&[&lone], 300)
            .put("k", serde_json::json!(1))
            .await
            .expect_err("no quorum");
        assert!(matches!(err, ClientError::Unavailable { .. }), "{err}");
        assert!(err.to_string().contains("no leader elected"), "{err}");
        assert!(
            lone.requests("POST").is_empty(),
            "nothing was sent to the lone node"
        );
    }

    #[tokio::test]
    async fn stale_reads_work_without_a_leader() {
        // A candidate: it serves stale reads and, like kvnode, answers a linearizable one
        // with 503 once no leader has appeared.
        let lonely = Mock::start(|req| match req.path.as_str() {
            "/admin/status" => ok(status_json(2, "candidate", 7, None)),
            "/keys/k?consistency=stale" => {
                ok(r#"{"key":"k","value":[1],"consistency":"stale","served_by":2,"applied_index":3}"#.into())
            }
            _ => error(503, "unavailable", None),
        })
        .await;
        let mut c = client(&[&lonely], 2000);
        c.config.consistency = Consistency::Stale;
        let got = c.get("k").await.expect("stale read");
        assert_eq!(got.value, serde_json::json!([1]));
        assert_eq!(lonely.requests("GET")[0].path, "/keys/k?consistency=stale");

        c.config.consistency = Consistency::Linearizable;
        c.config.timeout = Duration::from_millis(300);
        let err = c.get("k").await.expect_err("no leader");
        assert!(matches!(err, ClientError::Unavailable { .. }), "{err}");
        assert!(err.to_string().contains("unavailable"), "{err}");
        assert!(
            lonely.requests("GET").iter().any(|r| r.path == "/keys/k"),
            "the read went to the node that answers, which can wait for an election"
        );
    }

    #[test]
    fn one_attempt_outlasts_the_server_s_own_waits() {
        assert!(DEFAULT_ATTEMPT_TIMEOUT > kvapi::DEFAULT_LEADER_WAIT);
        assert!(DEFAULT_ATTEMPT_TIMEOUT > kvapi::DEFAULT_WRITE_TIMEOUT);
        assert_eq!(
            ClientConfig::new(Vec::new()).attempt_timeout,
            DEFAULT_ATTEMPT_TIMEOUT
        );
    }

    /// A node that waits out its leader wait (3 s by default) before answering 503: with the
    /// default attempt bound the user reads the server's reason, not "no answer within".
    #[tokio::test]
    async fn the_server_s_own_late_answer_is_heard() {
        let slow = Mock::start(|req| match req.method.as_str() {
            "GET" => ok(status_json(0, "leader", 1, None)),
            _ => Some((
                503,
                vec![(DELAY, "3200".into()), ("retry-after", "1".into())],
                r#"{"error":{"code":"unavailable","message":"no leader is available (waited 3000 ms for an election); retry shortly"}}"#.into(),
            )),
        })
        .await;
        let mut config = ClientConfig::new(vec![Endpoint::parse(&slow.address).expect("endpoint")]);
        config.timeout = Duration::from_secs(4);
        let err = Client::new(config)
            .expect("client")
            .put("k", Value::from(1))
            .await
            .expect_err("no leader");
        let text = err.to_string();
        assert!(matches!(err, ClientError::Unavailable { .. }), "{text}");
        assert!(text.contains("503 unavailable: no leader is available"), "{text}");
        assert!(!text.contains("no answer within"), "{text}");
        assert!(text.contains("asked to wait 1s"), "{text}");
        assert_eq!(
            slow.requests("POST").len(),
            1,
            "Retry-After left no time for another"
        );
    }

    #[tokio::test]
    async fn retry_after_is_a_floor_on_the_wait_between_attempts() {
        let posts = Arc::new(AtomicUsize::new(0));
        let counter = posts.clone();
        let leader = Mock::start(move |req| match req.method.as_str() {
            "GET" => ok(status_json(0, "leader", 2, None)),
            _ if counter.fetch_add(1, Ordering::SeqCst) == 0 => Some((
                503,
                vec![("retry-after", "1".into())],
                r#"{"error":{"code":"unavailable","message":"electing"}}"#.into(),
            )),
            _ => ok(written("k", 5)),
        })
        .await;
        let outcome = client(&[&leader], 5000)
            .put("k", Value::from(1))
            .await
            .expect("the second attempt succeeds");
        assert_eq!(outcome.attempts, 2);
        let sent = leader.requests("POST");
        let gap = sent[1].at.duration_since(sent[0].at);
        assert!(
            gap >= Duration::from_secs(1),
            "retried after {gap:?}, not after 1 s"
        );

        // Asked to wait longer than the time left, the client stops at once.
        let busy = Mock::start(|req| match req.method.as_str() {
            "GET" => ok(status_json(0, "leader", 2, None)),
            _ => Some((
                503,
                vec![("retry-after", "30".into())],
                r#"{"error":{"code":"shutting_down","message":"bye"}}"#.into(),
            )),
        })
        .await;
        let started = Instant::now();
        let err = client(&[&busy], 3000)
            .put("k", Value::from(1))
            .await
            .expect_err("unavailable");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(err.to_string().contains("asked to wait 30s"), "{err}");
        assert_eq!(err.exit().code(), 3);
    }

    /// The deadline cuts the last attempt short: the message keeps the server's earlier
    /// answer and names one duration only.
    #[tokio::test]
    async fn an_attempt_cut_by_the_deadline_keeps_the_earlier_reason() {
        let posts = Arc::new(AtomicUsize::new(0));
        let counter = posts.clone();
        let leader = Mock::start(move |req| match req.method.as_str() {
            "GET" => ok(status_json(0, "leader", 2, None)),
            _ if counter.fetch_add(1, Ordering::SeqCst) == 0 => error(503, "unavailable", None),
            _ => None,
        })
        .await;
        let mut c = client(&[&leader], 1000);
        c.config.attempt_timeout = Duration::from_secs(5);
        let err = c.put("k", Value::from(1)).await.expect_err("cut off");
        let text = err.to_string();
        assert!(matches!(err, ClientError::OutcomeUnknown { .. }), "{text}");
        assert!(text.contains("503 unavailable: scripted"), "{text}");
        assert!(text.contains("still unanswered when the time ran out"), "{text}");
        assert!(!text.contains("no answer within"), "{text}");
    }

    #[tokio::test]
    async fn an_expired_idempotency_key_is_outcome_unknown_and_not_retried() {
        let leader = Mock::start(|req| match req.method.as_str() {
            "GET" => ok(status_json(0, "leader", 2, None)),
            _ => error(422, "idempotency_key_expired", None),
        })
        .await;
        let err = client(&[&leader], 3000)
            .append("k", Value::from(1))
            .await
            .expect_err("expired");
        let ClientError::OutcomeUnknown {
            idempotency_key,
            reason,
        } = &err
        else {
            panic!("expected OutcomeUnknown, got {err}");
        };
        assert!(reason.contains("idempotency_key_expired"), "{reason}");
        assert_eq!(
            leader.requests("POST")[0].idempotency_key.as_deref(),
            Some(idempotency_key.as_str())
        );
        assert_eq!(leader.requests("POST").len(), 1);
        assert_eq!(err.exit().code(), 4);
    }

    #[tokio::test]
    async fn a_server_bug_leaves_a_write_in_doubt_but_fails_a_read() {
        let leader = Mock::start(|req| match req.method.as_str() {
            "GET" if req.path == "/admin/status" => ok(status_json(0, "leader", 2, None)),
            _ => Some((500, vec![], "panicked".into())),
        })
        .await;
        let c = client(&[&leader], 3000);
        let err = c.put("k", Value::from(1)).await.expect_err("500");
        assert!(matches!(err, ClientError::OutcomeUnknown { .. }), "{err}");
        let err = c.get("k").await.expect_err("500");
        assert!(matches!(err, ClientError::Other(_)), "{err}");
        assert_eq!(leader.requests("POST").len(), 1, "a server bug is not retried");
    }

    /// `leader` asks every member: a node that still says it leads while the other two are
    /// gone has no quorum, and that is an error (exit 3), not an answer.
    #[tokio::test]
    async fn a_leader_without_a_quorum_is_not_reported_as_the_leader() {
        let lone = Mock::start(|req| match req.path.as_str() {
            "/admin/status" => ok(status_json(0, "leader", 7, Some((0, "self"))).replace(
                r#""members":[]"#,
                r#""members":[{"id":0,"http":"127.0.0.1:1","raft":"127.0.0.1:2"},
                    {"id":1,"http":"127.0.0.1:3","raft":"127.0.0.1:4"},
                    {"id":2,"http":"127.0.0.1:5","raft":"127.0.0.1:6"}]"#,
            )),
            _ => None,
        })
        .await;
        let started = Instant::now();
        let err = client(&[&lone], 800).leader().await.expect_err("no quorum");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(err.exit().code(), 3, "{err}");
        assert!(err.to_string().contains("claims to lead term 7"), "{err}");

        let healthy = Mock::start(|req| match req.path.as_str() {
            "/admin/status" => ok(status_json(0, "leader", 7, Some((0, "self")))),
            _ => None,
        })
        .await;
        let leader = client(&[&healthy], 800).leader().await.expect("a leader");
        assert_eq!((leader.id, leader.term), (0, 7));
        assert_eq!(leader.address, healthy.address);
    }
}
