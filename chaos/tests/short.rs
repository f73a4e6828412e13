//! The short fault-injection runs that are part of `cargo test`: about two minutes in total.
//!
//! Each run starts a fresh cluster of real `kvnode` processes, drives concurrent clients
//! against it while the nemesis kills, pauses and (as root) partitions nodes on a seeded
//! schedule, heals, reads the final state and checks the whole history. The seed is printed
//! first; set `CHAOS_SEED` to replay one. A failing run prints its summary with the first
//! anomalies of each class, saves its history, and (through testkit's drop) every node's log.
//!
//! The runs take turns (one lock) rather than sharing the two cores of CI: faults are timed,
//! and a starved cluster would only make the schedule meaningless.
//!
//! Quick restarts after a kill are on, as in the long runs: they once found a stale-read bug
//! in kvnode (see `a_leader_restarted_after_a_crash_does_not_serve_stale_reads` in
//! scenarios.rs), and after the move to openraft 0.10 long runs with them found a write
//! answered "not done" while it was applied (fixed in `kvnode::node::settle`).
//!
//! The three-node run is secured (TLS and tokens, see `RunConfig::secure`); the five-node run
//! is plain, so both kinds of cluster are covered without a third run.
//! One run adds the membership nemesis to kills and pauses (and, as root, partitions): a
//! follower wiped and restarted empty, a spare node joined and promoted, a voter removed. It
//! picks, from the seed on, the first seed whose schedule does all three early, and fails
//! unless each really happened.
//!
//! The last test is the harness checking itself: the same machinery with stale reads switched
//! on must report anomalies, so a run that passes is not passing because it cannot fail.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use chaos::nemesis::{schedule, Fault, FaultKind, MemberChange};
use chaos::{AnomalyKind, RunConfig, RunResult};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000_000)
                .unwrap_or(1)
        })
}

/// Run, print the summary, save the history when the run failed.
fn run(config: &RunConfig) -> (RunResult, String) {
    eprintln!(
        "chaos seed {} (replay: CHAOS_SEED={} or {})",
        config.seed,
        config.seed,
        config.replay_command()
    );
    let result = chaos::run(config, &mut std::io::stderr()).expect("the run could be carried out");
    let mut summary = Vec::new();
    result.summarize(config, &mut summary).expect("render");
    let summary = String::from_utf8(summary).expect("utf8");
    eprintln!("{summary}");
    if !result.passed() {
        let base = std::env::temp_dir().join(format!("chaos-seed-{}", config.seed));
        match result.save(&base) {
            Ok(files) => eprintln!("history and node logs saved: {files:?}"),
            Err(e) => eprintln!("could not save the failing run: {e}"),
        }
    }
    (result, summary)
}

fn check_clean_run(nodes: usize, clients: usize, secure: bool) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut config = RunConfig::new(seed(), nodes, clients, Duration::from_secs(25));
    config.secure = secure;
    let (result, summary) = run(&config);
    // Panicking while `result` holds the cluster makes testkit print every node's log.
    assert!(
        result.passed(),
        "seed {}: anomalies found\n{summary}",
        config.seed
    );
    // Guard against a vacuous pass: the run must have done real work under real faults.
    let faults = result.report.faults_injected();
    assert!(faults >= 4, "too few faults injected ({faults}):\n{summary}");
    assert!(
        result.report.appends.ok >= 100,
        "too few acknowledged appends:\n{summary}"
    );
    assert!(
        result.report.reads.ok >= 100,
        "too few successful reads:\n{summary}"
    );
    if chaos::netns::can_make_namespaces() {
        assert!(
            result.faults.contains(&FaultKind::Partition),
            "root runs partition too"
        );
    }
}

/// This run is also the secured one: TLS on both ports (mutual between nodes) and bearer
/// tokens, so that every fault is survived with the replication stream over TLS, forwarded
/// writes over mutual TLS and every client request authorized. (One of the existing runs
/// rather than a third, to keep CI's time.)
#[test]
fn three_nodes_with_tls_and_tokens_survive_kills_pauses_and_partitions() {
    check_clean_run(3, 6, true);
}

#[test]
fn five_nodes_survive_kills_pauses_and_partitions() {
    check_clean_run(5, 8, false);
}

/// The first seed from `from` on whose schedule wipes a node, grows and shrinks the cluster
/// within the first `within` (planned time; membership steps take longer than planned).
fn seed_covering_membership(from: u64, config: &RunConfig, within: Duration) -> u64 {
    (from..)
        .find(|&seed| {
            let mut planned = Duration::ZERO;
            let (mut wipe, mut grow, mut shrink) = (false, false, false);
            for step in schedule(seed, &config.faults, config.nodes, config.duration, config.pace) {
                planned += step.gap + step.hold;
                if planned > within {
                    break;
                }
                match step.fault {
                    Fault::Wipe(_) => wipe = true,
                    Fault::Member(MemberChange::Grow) => grow = true,
                    Fault::Member(MemberChange::Shrink { .. }) => shrink = true,
                    _ => {}
                }
            }
            wipe && grow && shrink
        })
        .expect("some seed covers every kind")
}

#[test]
fn three_nodes_survive_wipes_and_membership_changes_among_kills_and_pauses() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut config = RunConfig::new(0, 3, 6, Duration::from_secs(25));
    config.faults = BTreeSet::from([
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Wipe,
        FaultKind::Member,
    ]);
    // The run drops partitions when it cannot make namespaces: search the schedule it will use.
    if chaos::netns::can_make_namespaces() {
        config.faults.insert(FaultKind::Partition);
    }
    config.seed = seed_covering_membership(seed(), &config, Duration::from_secs(12));
    let (result, summary) = run(&config);
    for f in &result.history.faults {
        eprintln!(
            "{:>8.3}s {} {:?} {}",
            f.at as f64 / 1e6,
            f.action,
            f.nodes,
            f.detail
        );
    }
    assert!(
        result.passed(),
        "seed {}: anomalies found\n{summary}",
        config.seed
    );
    let done = |action: &str| result.report.faults.get(action).copied().unwrap_or(0);
    for action in ["wipe", "add", "promote", "remove"] {
        assert!(
            done(action) >= 1,
            "no {action} was carried out (skipped steps say why in the history):\n{summary}"
        );
    }
    assert!(
        result.report.appends.ok >= 100,
        "too few acknowledged appends:\n{summary}"
    );
    assert!(
        result.report.reads.ok >= 100,
        "too few successful reads:\n{summary}"
    );
}

#[test]
fn the_harness_catches_stale_reads_in_a_real_run() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut config = RunConfig::new(seed(), 3, 6, Duration::from_secs(8));
    config.faults = BTreeSet::from([FaultKind::Kill]);
    config.stale_reads = true;
    let (result, summary) = run(&config);
    let stale = [AnomalyKind::MissedAcknowledged, AnomalyKind::NonMonotonic];
    assert!(
        stale.iter().any(|k| result.report.anomaly_counts.contains_key(k)),
        "stale reads from restarted followers went unnoticed:\n{summary}"
    );
    // Stale reads are the only thing wrong with this run: writes are still exactly-once.
    let unexpected: Vec<&AnomalyKind> = result
        .report
        .anomaly_counts
        .keys()
        .filter(|k| !stale.contains(k))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected anomalies {unexpected:?}:\n{summary}"
    );
}
