//! Recorded histories run through the checker, and proof that it catches anomalies planted in
//! a real history (not only in the hand-made ones of its unit tests).
//!
//! `tests/regressions/` holds history files (JSON lines, as written by `chaos --history`):
//! - `clean-*.jsonl` are real runs that must be judged clean;
//! - `anomaly-<class>-*.jsonl` are histories that exposed a bug; the checker must keep
//!   reporting that class for them (e.g. `anomaly-lost-acknowledged-append-seed42.jsonl`).
//!
//! To keep a failing run's history, copy the file it saved (`chaos-seed-N.jsonl` in the temp
//! directory, or the `--history` file) here under the `anomaly-` name.

use std::path::{Path, PathBuf};

use chaos::history::Seen;
use chaos::{check, AnomalyKind, History, OpKind, Outcome};
use serde_json::Value;

fn histories() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/regressions exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> History {
    let file = std::fs::File::open(path).expect("open history");
    History::read_jsonl(std::io::BufReader::new(file)).expect("valid history")
}

#[test]
fn recorded_histories_keep_their_verdicts() {
    let files = histories();
    assert!(!files.is_empty(), "no recorded histories");
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .to_string();
        let history = load(&path);
        let report = check(&history);
        if name.starts_with("clean-") {
            let mut out = Vec::new();
            report.render(&history, &mut out).expect("render");
            assert!(
                report.is_valid(),
                "{name} must be clean:\n{}",
                String::from_utf8_lossy(&out)
            );
        } else if let Some(rest) = name.strip_prefix("anomaly-") {
            let kind = AnomalyKind::ALL
                .into_iter()
                .find(|k| rest.starts_with(k.name()))
                .unwrap_or_else(|| panic!("{name}: no anomaly class in the name"));
            assert!(
                report.anomaly_counts.contains_key(&kind),
                "{name}: {kind} no longer reported"
            );
        } else {
            panic!("{name}: history files are named clean-* or anomaly-<class>-*");
        }
    }
}

/// The clean recorded run, and the values of its key "k0" in the final state.
fn real_history() -> (History, Vec<String>) {
    let path = histories()
        .into_iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("clean-"))
        })
        .expect("a clean recorded history");
    let history = load(&path);
    assert!(check(&history).is_valid());
    let final_values = final_read(&history, "k0");
    assert!(final_values.len() >= 10, "the recorded run appended to k0");
    (history, final_values)
}

fn final_read(history: &History, key: &str) -> Vec<String> {
    let op = history
        .ops
        .iter()
        .find(|op| op.kind == OpKind::FinalRead && op.key == key)
        .expect("final read");
    serde_json::from_value(op.read.clone().expect("value")).expect("list")
}

fn set_final(history: &mut History, key: &str, values: &[String]) {
    for op in history
        .ops
        .iter_mut()
        .filter(|op| op.kind != OpKind::Append && op.key == key)
    {
        if op.kind == OpKind::FinalRead || op.kind == OpKind::ReplicaRead {
            op.read = Some(serde_json::json!(values));
        }
    }
}

fn kinds(history: &History) -> Vec<AnomalyKind> {
    check(history).anomaly_counts.keys().copied().collect()
}

#[test]
fn a_lost_write_planted_in_a_real_history_is_caught() {
    let (mut history, mut values) = real_history();
    // Lose the first acknowledged append from the final state (and every replica).
    let lost = history
        .ops
        .iter()
        .find(|op| op.kind == OpKind::Append && op.key == "k0" && op.outcome == Outcome::Ok)
        .and_then(|op| op.value.clone())
        .expect("an acknowledged append");
    values.retain(|v| *v != lost);
    set_final(&mut history, "k0", &values);
    let found = kinds(&history);
    assert!(found.contains(&AnomalyKind::LostAcknowledged), "{found:?}");
}

#[test]
fn a_duplicate_planted_in_a_real_history_is_caught() {
    let (mut history, mut values) = real_history();
    let last = values.last().cloned().expect("non-empty");
    values.push(last);
    set_final(&mut history, "k0", &values);
    assert!(kinds(&history).contains(&AnomalyKind::Duplicate));
}

#[test]
fn a_stale_read_planted_in_a_real_history_is_caught() {
    let (mut history, _) = real_history();
    // Make the last successful read of k0 during the run return nothing.
    let read = history
        .ops
        .iter_mut()
        .rev()
        .find(|op| {
            op.kind == OpKind::Read
                && op.key == "k0"
                && op.outcome == Outcome::Ok
                && op
                    .read
                    .as_ref()
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
        })
        .expect("a non-empty read");
    read.read = Some(serde_json::json!([]));
    let found = kinds(&history);
    assert!(
        found.contains(&AnomalyKind::MissedAcknowledged) || found.contains(&AnomalyKind::NonMonotonic),
        "{found:?}"
    );
}

#[test]
fn a_failed_append_that_landed_in_a_real_history_is_caught() {
    let (mut history, values) = real_history();
    let applied = values[0].clone();
    let op = history
        .ops
        .iter_mut()
        .find(|op| op.kind == OpKind::Append && op.value.as_deref() == Some(applied.as_str()))
        .expect("its append");
    op.outcome = Outcome::Failed;
    assert!(kinds(&history).contains(&AnomalyKind::FailedAppeared));
}

#[test]
fn reordered_entries_in_a_real_history_are_caught() {
    let (mut history, mut values) = real_history();
    values.swap(0, 1);
    set_final(&mut history, "k0", &values);
    assert!(kinds(&history).contains(&AnomalyKind::NotPrefixOrdered));
}

/// The clean recorded run with watchers, and the position in its watch records of each change
/// the first watcher delivered (it watches every key).
fn watched_history() -> (History, Vec<usize>) {
    let path = histories()
        .into_iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("clean-3n-watch-"))
        })
        .expect("a clean recorded history with watchers");
    let history = load(&path);
    let report = check(&history);
    assert!(report.is_valid() && report.watchers == 3 && report.watch_reconnects > 0);
    let changes: Vec<usize> = history
        .watches
        .iter()
        .enumerate()
        .filter(|(_, w)| w.watcher == 0 && matches!(w.seen, Seen::Change { .. }))
        .map(|(i, _)| i)
        .collect();
    assert!(changes.len() >= 100, "the first watcher saw the run");
    (history, changes)
}

#[test]
fn a_watched_change_dropped_from_a_real_history_is_caught() {
    let (mut history, changes) = watched_history();
    history.watches.remove(changes[changes.len() / 2]);
    assert_eq!(kinds(&history), [AnomalyKind::WatchGap]);
    // The last change of a key, which no later change would reveal as skipped.
    let (mut history, changes) = watched_history();
    history.watches.remove(*changes.last().expect("changes"));
    assert_eq!(kinds(&history), [AnomalyKind::WatchGap]);
}

#[test]
fn a_watched_change_repeated_in_a_real_history_is_caught() {
    let (mut history, changes) = watched_history();
    let again = history.watches[changes[10]].clone();
    history.watches.insert(changes[10] + 1, again);
    assert_eq!(kinds(&history), [AnomalyKind::WatchDuplicate]);
}

#[test]
fn a_watched_change_at_the_wrong_index_in_a_real_history_is_caught() {
    let (mut history, changes) = watched_history();
    if let Seen::Change { index, .. } = &mut history.watches[changes[20]].seen {
        *index += 1;
    }
    assert!(kinds(&history).contains(&AnomalyKind::WatchOutOfOrder));
}

#[test]
fn a_watcher_that_stopped_in_a_real_history_is_caught() {
    let (mut history, _) = watched_history();
    for w in history.watches.iter_mut().filter(|w| w.watcher == 1) {
        if let Seen::End { error, .. } = &mut w.seen {
            *error = Some("no node serves the watch".into());
        }
    }
    assert_eq!(kinds(&history), [AnomalyKind::WatchIncomplete]);
}
