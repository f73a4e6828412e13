//! `kvctl bench` against a real cluster: it runs, reports, and verifies its appends.

use std::process::Command;
use std::time::Duration;

use testkit::Cluster;

fn bench(c: &Cluster, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--cluster")
        .arg(c.cluster_file())
        .args(["bench", "-o", "json"])
        .args(args)
        .output()
        .expect("run kvctl bench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code(),
        json,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn bench_reports_and_verifies_appends_through_the_leader_and_every_node() {
    let c = Cluster::start(3);
    c.wait_for_leader(Duration::from_secs(20));
    for target in ["leader", "all"] {
        let (code, r, err) = bench(
            &c,
            &[
                "--workload",
                "append",
                "--clients",
                "4",
                "--duration",
                "1s",
                "--keys",
                "5",
                "--target",
                target,
            ],
        );
        assert_eq!(code, Some(0), "{err}");
        assert!(r["ok"].as_u64().unwrap_or(0) > 0, "{r}");
        assert!(r["throughput"].as_f64().unwrap_or(0.0) > 0.0);
        for p in ["p50", "p90", "p99", "p999", "max"] {
            assert!(r["latency_ms"][p].as_f64().is_some(), "{p} in {r}");
        }
        let v = &r["verification"];
        assert_eq!(v["lost"], 0, "{r}");
        assert_eq!(v["duplicated"], 0, "{r}");
        assert_eq!(v["unexpected"], 0, "{r}");
        assert_eq!(
            v["acknowledged_once"].as_u64(),
            r["ok"].as_u64(),
            "every acknowledged append is present exactly once: {r}"
        );
    }
    // Reads, with a timeline file and an operations log.
    let timeline = c.dir().join("timeline.csv");
    let ops_log = c.dir().join("ops.csv");
    let before = unix_us();
    let (code, r, err) = bench(
        &c,
        &[
            "--workload",
            "mixed:90",
            "--clients",
            "2",
            "--duration",
            "1s",
            "--timeline",
            timeline.to_str().expect("utf8"),
            "--ops-log",
            ops_log.to_str().expect("utf8"),
        ],
    );
    let after = unix_us();
    assert_eq!(code, Some(0), "{err}");
    assert!(r["verification"].is_null());
    let csv = std::fs::read_to_string(&timeline).expect("timeline written");
    assert!(csv.starts_with("second,ok,errors,p50_ms,p99_ms\n"), "{csv}");
    assert!(csv.lines().count() >= 2, "{csv}");
    check_ops_log(
        &std::fs::read_to_string(&ops_log).expect("ops log written"),
        &r,
        before,
        after,
    );
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// The operations log has one line per operation of the report, in completion order, each
/// inside the run's wall-clock window.
fn check_ops_log(log: &str, report: &serde_json::Value, before: u64, after: u64) {
    let mut lines = log.lines();
    assert_eq!(lines.next(), Some("start_unix_us,end_unix_us,outcome"));
    let mut last_end = 0;
    let mut ok = 0;
    let mut others = 0;
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), 3, "{line}");
        let start: u64 = fields[0].parse().expect("start");
        let end: u64 = fields[1].parse().expect("end");
        assert!(
            before <= start && start <= end && end <= after,
            "{line} outside {before}..{after}"
        );
        assert!(end >= last_end, "completion order: {line}");
        last_end = end;
        match fields[2] {
            "ok" => ok += 1,
            "failed" | "unknown" => others += 1,
            other => panic!("outcome {other} in {line}"),
        }
    }
    assert_eq!(Some(ok), report["ok"].as_u64(), "{report}");
    assert_eq!(
        Some(others),
        report["errors"]
            .as_u64()
            .zip(report["unknown"].as_u64())
            .map(|(e, u)| e + u)
    );
}

#[test]
fn bench_refuses_bad_arguments_with_a_usage_error() {
    let c = Cluster::spawn(1, &[]);
    for args in [
        &["--workload", "mixed:101"][..],
        &["--clients", "0"],
        &["--duration", "1ms"],
        &["--workload", "scan"],
        &["--system", "etcd", "--workload", "append"],
        &["--system", "zookeeper"],
    ] {
        let (code, _, err) = bench(&c, args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        // `bench -o json` reports its errors as JSON too.
        let error: serde_json::Value =
            serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {err}"));
        assert_eq!(error["error"]["code"], "usage", "{err}");
    }
}

/// The same load against etcd, when etcd is installed (Debian: `apt-get install etcd-server`;
/// `.ci/run` installs it): a one-member etcd on ephemeral ports, loaded through its JSON
/// gateway, reads and writes succeed and the report has the same shape.
#[test]
fn bench_loads_etcd_through_its_json_gateway() {
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!("skipped: etcd is not installed (apt-get install etcd-server)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = testkit::free_ports(2);
    let (client, peer) = (ports[0], ports[1]);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log file");
    let etcd = Command::new("etcd")
        .args(["--name", "e0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("e0={peer_url}")])
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start etcd");
    let etcd = testkit::ChildGuard::new("etcd", etcd, dir.path().join("etcd.log"));

    let run = |workload: &str| {
        Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .args([
                "--endpoints",
                &client_url,
                "bench",
                "-o",
                "json",
                "--system",
                "etcd",
            ])
            .args([
                "--workload",
                workload,
                "--clients",
                "2",
                "--duration",
                "500ms",
                "--keys",
                "5",
            ])
            .output()
            .expect("run kvctl bench")
    };
    // etcd takes a moment to elect itself; until then the bench cannot find its leader.
    let out = testkit::poll(Duration::from_secs(20), "etcd to answer", || {
        let out = run("put");
        out.status.success().then_some(out)
    });
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(report["system"], "etcd", "{report}");
    assert!(report["ok"].as_u64().unwrap_or(0) > 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let out = run("mixed:50");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert!(report["ok"].as_u64().unwrap_or(0) > 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    drop(etcd);
}
