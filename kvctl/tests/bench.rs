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
    // Reads, with a timeline file.
    let timeline = c.dir().join("timeline.csv");
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
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(r["verification"].is_null());
    let csv = std::fs::read_to_string(&timeline).expect("timeline written");
    assert!(csv.starts_with("second,ok,errors,p50_ms,p99_ms\n"), "{csv}");
    assert!(csv.lines().count() >= 2, "{csv}");
}

#[test]
fn bench_refuses_bad_arguments_with_a_usage_error() {
    let c = Cluster::spawn(1, &[]);
    for args in [
        &["--workload", "mixed:101"][..],
        &["--clients", "0"],
        &["--duration", "1ms"],
        &["--workload", "scan"],
    ] {
        let (code, _, err) = bench(&c, args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.starts_with("kvctl:") || err.contains("error:"), "{err}");
    }
}
