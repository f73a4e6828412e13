//! The checker: a pure function from a [`History`] to a [`Report`] of anomalies.
//!
//! The workload only ever APPENDs unique values to a few keys and reads them back, which makes
//! the expected behaviour of a linearizable store easy to state per key without searching for a
//! linearization (the trick Jepsen's list-append workload and etcd's robustness tests use):
//! every value has exactly one writer, so a read's list says precisely which appends it saw and
//! in which order. For each key the checker demands:
//!
//! 1. **Duplicate**: no read holds a value twice (an append applied twice: a retry that the
//!    idempotency table failed to catch).
//! 2. **NotPrefixOrdered**: all reads are ordered by prefix (each is a prefix of every longer
//!    one). Two replicas that applied appends in different orders, or a lost entry that was
//!    later replaced, show up here.
//! 3. **MissedAcknowledged**: a read never misses an append acknowledged before the read began
//!    (a stale read after a confirmed write).
//! 4. **NonMonotonic**: a read never returns less than a read that completed before it began
//!    (a stale read after a fresher read, e.g. from a deposed leader).
//! 5. **LostAcknowledged**: every acknowledged append is in the final state.
//! 6. **FailedAppeared**: no value of a definitely failed append appears anywhere.
//! 7. **NeverSent**: no value appears that was never sent to that key.
//! 8. **FromTheFuture**: no read contains a value whose append was invoked after the read
//!    completed.
//! 9. **Divergent**: after convergence, every replica's own copy equals the final read.
//! 10. **Malformed** and **NoFinalRead**: a read that is not a list of strings, or a key whose
//!     final state could not be read, make the history uncheckable and so fail it too.
//!
//! The watchers (see `watchers`) are held to the committed history, which for these
//! append-only keys is each key's final list: a watcher that started after index 0 must have
//! delivered, for each key it watches, one change per element of the final list, in order,
//! each showing exactly the list up to that element, at the index its append was acknowledged
//! at, and no other change:
//!
//! 11. **WatchPhantom**: a change that is not in the committed history (a list that is not a
//!     prefix of the key's final list, a kind other than append, a key it does not watch).
//! 12. **WatchGap**: a change skipped (a list longer than the previous change's by more than
//!     one element, or a watcher that caught up without delivering the end of a list).
//! 13. **WatchDuplicate**: a change delivered twice (a list not longer than the previous one).
//! 14. **WatchOutOfOrder**: indexes going backwards on a stream, or a change delivered at
//!     another index than its append was acknowledged at.
//! 15. **WatchIncomplete**: a watcher that stopped (no node could serve it) or never caught up
//!     with the index the healed cluster applied.
//!
//! Appends of unknown outcome may or may not appear; the checker holds them to rules 1, 2, 4
//! and 8 only. Reads that did not succeed say nothing and are ignored.
//!
//! Real-time order uses strict inequalities on one monotonic clock: an operation that completed
//! at the same microsecond another was invoked is treated as concurrent, never as before it.
//!
//! The checks are near-linear: appends and reads are sorted by completion time once, and with
//! reads prefix-ordered, "read r contains append a" is "a's position in the longest read is
//! below len(r)". Only reads already caught breaking prefix order fall back to set lookups.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Write;

use serde_json::Value;

use crate::history::{digest_step, History, Micros, Op, OpKind, Outcome, Seen, WatchRecord, DIGEST_START};

/// The classes of anomaly, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnomalyKind {
    /// A read holds the same value twice.
    Duplicate,
    /// Two reads of a key where neither is a prefix of the other.
    NotPrefixOrdered,
    /// A read misses an append acknowledged before the read began.
    MissedAcknowledged,
    /// A read returns less than a read that completed before it began.
    NonMonotonic,
    /// An acknowledged append is missing from the final state.
    LostAcknowledged,
    /// A definitely failed append is visible.
    FailedAppeared,
    /// A value that was never sent to this key is visible.
    NeverSent,
    /// A read contains a value whose append started after the read had completed.
    FromTheFuture,
    /// A replica's copy differs from the final read after convergence.
    Divergent,
    /// A read is not a list of strings.
    Malformed,
    /// A key's final state could not be read.
    NoFinalRead,
    /// A watcher delivered a change that is not in the committed history of its keys.
    WatchPhantom,
    /// A watcher skipped a change.
    WatchGap,
    /// A watcher delivered a change twice.
    WatchDuplicate,
    /// A watcher delivered changes out of log order or at the wrong index.
    WatchOutOfOrder,
    /// A watcher stopped or never caught up with the healed cluster.
    WatchIncomplete,
}

impl AnomalyKind {
    /// Every class, in report order.
    pub const ALL: [AnomalyKind; 16] = [
        AnomalyKind::Duplicate,
        AnomalyKind::NotPrefixOrdered,
        AnomalyKind::MissedAcknowledged,
        AnomalyKind::NonMonotonic,
        AnomalyKind::LostAcknowledged,
        AnomalyKind::FailedAppeared,
        AnomalyKind::NeverSent,
        AnomalyKind::FromTheFuture,
        AnomalyKind::Divergent,
        AnomalyKind::Malformed,
        AnomalyKind::NoFinalRead,
        AnomalyKind::WatchPhantom,
        AnomalyKind::WatchGap,
        AnomalyKind::WatchDuplicate,
        AnomalyKind::WatchOutOfOrder,
        AnomalyKind::WatchIncomplete,
    ];

    /// Short name used in summaries.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::Duplicate => "duplicate",
            AnomalyKind::NotPrefixOrdered => "not-prefix-ordered",
            AnomalyKind::MissedAcknowledged => "missed-acknowledged-append",
            AnomalyKind::NonMonotonic => "non-monotonic-read",
            AnomalyKind::LostAcknowledged => "lost-acknowledged-append",
            AnomalyKind::FailedAppeared => "failed-append-appeared",
            AnomalyKind::NeverSent => "never-sent-value",
            AnomalyKind::FromTheFuture => "read-from-the-future",
            AnomalyKind::Divergent => "divergent-replica",
            AnomalyKind::Malformed => "malformed-read",
            AnomalyKind::NoFinalRead => "no-final-read",
            AnomalyKind::WatchPhantom => "watch-phantom-change",
            AnomalyKind::WatchGap => "watch-missed-change",
            AnomalyKind::WatchDuplicate => "watch-duplicate-change",
            AnomalyKind::WatchOutOfOrder => "watch-out-of-order",
            AnomalyKind::WatchIncomplete => "watch-incomplete",
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One anomaly, with the operations that prove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    /// Its class.
    pub kind: AnomalyKind,
    /// The key.
    pub key: String,
    /// Ids of the operations involved (the offending read first).
    pub ops: Vec<u64>,
    /// What is wrong, in words.
    pub explanation: String,
}

/// How many operations had each outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// Confirmed.
    pub ok: usize,
    /// Definitely not applied.
    pub failed: usize,
    /// Undetermined.
    pub unknown: usize,
}

impl OutcomeCounts {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Unknown => self.unknown += 1,
        }
    }

    /// All operations counted.
    pub fn total(&self) -> usize {
        self.ok + self.failed + self.unknown
    }
}

/// The verdict on a history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Appends by outcome.
    pub appends: OutcomeCounts,
    /// Reads during the run by outcome.
    pub reads: OutcomeCounts,
    /// Final and replica reads by outcome.
    pub final_reads: OutcomeCounts,
    /// Appends of unknown outcome that turned out to be applied (in the final state).
    pub unknown_applied: usize,
    /// Nemesis actions by name.
    pub faults: BTreeMap<String, usize>,
    /// Watchers in the history.
    pub watchers: usize,
    /// Changes the watchers delivered, all together.
    pub watch_changes: usize,
    /// Times a watcher moved to another node.
    pub watch_reconnects: usize,
    /// Number of anomalies of each class (all of them, not only the kept examples).
    pub anomaly_counts: BTreeMap<AnomalyKind, usize>,
    /// The first few anomalies of each class.
    pub examples: Vec<Anomaly>,
}

/// Nemesis actions that inject a fault or change the membership (each change counts: `add`,
/// `promote` and `remove`). Of the others, `restart`, `resume` and `heal` undo a fault, and
/// [`SKIP_ACTION`] records a step that could not be carried out.
pub const FAULT_ACTIONS: [&str; 7] = ["kill", "pause", "partition", "wipe", "add", "promote", "remove"];

/// The nemesis action recording a step it skipped, with the reason in its detail.
pub const SKIP_ACTION: &str = "skip";

/// The nemesis action recording a node whose process ended without the nemesis stopping it
/// (it was restarted).
pub const EXITED_ACTION: &str = "exited";

/// How many examples of each anomaly class a report keeps.
pub const EXAMPLES_PER_KIND: usize = 5;

impl Report {
    /// True when no anomaly was found.
    pub fn is_valid(&self) -> bool {
        self.anomaly_counts.is_empty()
    }

    /// Number of faults injected (kills, pauses, partitions), not counting their undoing.
    pub fn faults_injected(&self) -> usize {
        self.faults
            .iter()
            .filter(|(action, _)| FAULT_ACTIONS.contains(&action.as_str()))
            .map(|(_, n)| n)
            .sum()
    }

    /// Total anomalies of all classes.
    pub fn anomalies(&self) -> usize {
        self.anomaly_counts.values().sum()
    }

    fn push(&mut self, anomaly: Anomaly) {
        let count = self.anomaly_counts.entry(anomaly.kind).or_insert(0);
        *count += 1;
        if *count <= EXAMPLES_PER_KIND {
            self.examples.push(anomaly);
        }
    }

    /// Write the summary: counts of operations, outcomes, faults and anomalies, then the first
    /// examples of each anomaly class with the operations involved.
    pub fn render(&self, history: &History, mut out: impl Write) -> std::io::Result<()> {
        let line = |c: &OutcomeCounts| {
            format!(
                "{} ({} ok, {} failed, {} unknown)",
                c.total(),
                c.ok,
                c.failed,
                c.unknown
            )
        };
        writeln!(
            out,
            "operations: {}",
            self.appends.total() + self.reads.total() + self.final_reads.total()
        )?;
        writeln!(out, "  appends:     {}", line(&self.appends))?;
        writeln!(out, "  reads:       {}", line(&self.reads))?;
        writeln!(out, "  final reads: {}", line(&self.final_reads))?;
        writeln!(out, "  unknown appends found applied: {}", self.unknown_applied)?;
        let (injected, undone): (Vec<_>, Vec<_>) = self
            .faults
            .iter()
            .filter(|(action, _)| ![SKIP_ACTION, EXITED_ACTION].contains(&action.as_str()))
            .partition(|(action, _)| FAULT_ACTIONS.contains(&action.as_str()));
        let list = |actions: &[(&String, &usize)]| {
            let total: usize = actions.iter().map(|(_, n)| **n).sum();
            let each: Vec<String> = actions.iter().map(|(k, v)| format!("{k} {v}")).collect();
            format!("{total} ({})", each.join(", "))
        };
        writeln!(
            out,
            "faults injected: {}; undone: {}",
            list(&injected),
            list(&undone)
        )?;
        if let Some(skipped) = self.faults.get(SKIP_ACTION) {
            writeln!(out, "fault steps skipped (the history says why): {skipped}")?;
        }
        if let Some(exited) = self.faults.get(EXITED_ACTION) {
            writeln!(
                out,
                "nodes that ended by themselves (crash or outside signal; restarted; the run fails): {exited}"
            )?;
        }
        if self.watchers > 0 {
            writeln!(
                out,
                "watchers: {} delivered {} changes, moving to another node {} times",
                self.watchers, self.watch_changes, self.watch_reconnects
            )?;
        }
        if self.is_valid() {
            writeln!(out, "anomalies: none")?;
            return Ok(());
        }
        writeln!(out, "anomalies: {}", self.anomalies())?;
        let by_id: HashMap<u64, &Op> = history.ops.iter().map(|op| (op.id, op)).collect();
        for kind in AnomalyKind::ALL {
            let Some(count) = self.anomaly_counts.get(&kind) else {
                continue;
            };
            writeln!(out, "  {kind}: {count}")?;
            for a in self.examples.iter().filter(|a| a.kind == kind) {
                writeln!(out, "    key {}: {}", a.key, a.explanation)?;
                for id in &a.ops {
                    if let Some(op) = by_id.get(id) {
                        writeln!(out, "      {}", describe(op))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// One line describing an operation, for anomaly examples.
pub fn describe(op: &Op) -> String {
    let what = match op.kind {
        OpKind::Append => format!("append {}", op.value.as_deref().unwrap_or("?")),
        OpKind::Read => "read".to_string(),
        OpKind::FinalRead => "final read".to_string(),
        OpKind::ReplicaRead => "replica read".to_string(),
    };
    let read = op
        .read
        .as_ref()
        .map(|v| format!(" -> {}", abbreviate(v)))
        .unwrap_or_default();
    let client = op
        .client
        .map(|c| format!("c{c}"))
        .unwrap_or_else(|| "harness".into());
    let error = op.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default();
    format!(
        "op {} {client} via {} [{:.3}s..{:.3}s] {what} {:?}{read}{error}",
        op.id,
        op.via,
        op.invoke as f64 / 1e6,
        op.complete as f64 / 1e6,
        op.outcome
    )
}

/// A read's value, shortened to its first and last few elements.
fn abbreviate(value: &Value) -> String {
    match value.as_array() {
        Some(items) if items.len() > 8 => {
            let show = |s: &[Value]| s.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",");
            format!(
                "[{} ... {}] (len {})",
                show(&items[..4]),
                show(&items[items.len() - 4..]),
                items.len()
            )
        }
        _ => value.to_string(),
    }
}

/// A successful read, parsed.
struct ReadObs<'a> {
    op: &'a Op,
    values: Vec<String>,
}

/// Judge a history. Pure: no I/O, no clock.
pub fn check(history: &History) -> Report {
    let mut report = Report::default();
    for f in &history.faults {
        *report.faults.entry(f.action.clone()).or_insert(0) += 1;
    }
    let mut keys: Vec<&str> = history.ops.iter().map(|op| op.key.as_str()).collect();
    if let Some(meta) = &history.meta {
        keys.extend(meta.keys.iter().map(String::as_str));
    }
    keys.sort_unstable();
    keys.dedup();
    for op in &history.ops {
        match op.kind {
            OpKind::Append => report.appends.add(op.outcome),
            OpKind::Read => report.reads.add(op.outcome),
            OpKind::FinalRead | OpKind::ReplicaRead => report.final_reads.add(op.outcome),
        }
    }
    for key in keys {
        let ops: Vec<&Op> = history.ops.iter().filter(|op| op.key == key).collect();
        check_key(key, &ops, &mut report);
    }
    check_watches(history, &mut report);
    report
}

/// Rules 11 to 15: what every watcher delivered against each key's final list.
fn check_watches(history: &History, report: &mut Report) {
    if history.watches.is_empty() {
        return;
    }
    // The committed history of each key: its last successful final read.
    let mut finals: HashMap<&str, (Vec<String>, Micros)> = HashMap::new();
    for op in history
        .ops
        .iter()
        .filter(|op| op.kind == OpKind::FinalRead && op.outcome == Outcome::Ok)
    {
        if let Some(values) = parse_list(op.read.as_ref()) {
            let newer = finals.get(op.key.as_str()).is_none_or(|(_, t)| op.complete > *t);
            if newer {
                finals.insert(op.key.as_str(), (values, op.complete));
            }
        }
    }
    // Digests of every prefix of every final list: prefixes[key][n] is that of the first n.
    let prefixes: HashMap<&str, Vec<u64>> = finals
        .iter()
        .map(|(k, (values, _))| {
            let digests = std::iter::once(DIGEST_START)
                .chain(values.iter().scan(DIGEST_START, |h, v| {
                    *h = digest_step(*h, v);
                    Some(*h)
                }))
                .collect();
            (*k, digests)
        })
        .collect();
    let mut appends: HashMap<&str, &Op> = HashMap::new();
    for op in history.ops.iter().filter(|op| op.kind == OpKind::Append) {
        if let Some(v) = &op.value {
            appends.entry(v.as_str()).or_insert(op);
        }
    }
    let mut by_watcher: BTreeMap<u32, Vec<&WatchRecord>> = BTreeMap::new();
    for record in &history.watches {
        by_watcher.entry(record.watcher).or_default().push(record);
    }
    for (watcher, records) in by_watcher {
        report.watchers += 1;
        let anomaly = |kind, key: &str, ops: Vec<u64>, explanation: String| Anomaly {
            kind,
            key: key.to_string(),
            ops,
            explanation: format!("watcher {watcher}: {explanation}"),
        };
        let start = records.iter().find_map(|r| match &r.seen {
            Seen::Start { key, prefix, after } => Some((key.clone(), prefix.clone(), *after)),
            _ => None,
        });
        let Some((watched_key, watched_prefix, after)) = start else {
            report.push(anomaly(
                AnomalyKind::WatchIncomplete,
                "",
                vec![],
                "no record of what it watched".into(),
            ));
            continue;
        };
        let watches = |key: &str| match (&watched_key, &watched_prefix) {
            (Some(k), _) => k == key,
            (None, Some(p)) => key.starts_with(p.as_str()),
            (None, None) => false,
        };
        // Per key, the length of the list the last change showed; known to be 0 at the start
        // only for a watch from the beginning.
        let mut shown: HashMap<&str, Option<usize>> = HashMap::new();
        let initial = (after == 0).then_some(0);
        let mut last_index: Option<u64> = None;
        let mut end = None;
        for record in &records {
            match &record.seen {
                Seen::Start { .. } => {}
                Seen::Reconnect { .. } => report.watch_reconnects += 1,
                Seen::End {
                    covered,
                    target,
                    error,
                } => end = Some((*covered, *target, error.clone())),
                Seen::Change {
                    index,
                    kind,
                    key,
                    len,
                    last,
                    digest,
                } => {
                    report.watch_changes += 1;
                    if let Some(previous) = last_index.filter(|l| index < l) {
                        report.push(anomaly(
                            AnomalyKind::WatchOutOfOrder,
                            key,
                            vec![],
                            format!("a change at index {index} came after one at index {previous}"),
                        ));
                    }
                    last_index = last_index.max(Some(*index));
                    let phantom = |why: String| anomaly(AnomalyKind::WatchPhantom, key, vec![], why);
                    if !watches(key) {
                        report.push(phantom(format!("a change to {key:?}, which it does not watch")));
                        continue;
                    }
                    if kind != "append" {
                        report.push(phantom(format!(
                            "a {kind} at index {index}, but only appends were ever sent"
                        )));
                        continue;
                    }
                    let (Some((list, _)), Some(digests)) =
                        (finals.get(key.as_str()), prefixes.get(key.as_str()))
                    else {
                        // No final state to compare with: NoFinalRead says so for the key.
                        continue;
                    };
                    let previous = *shown.entry(key.as_str()).or_insert(initial);
                    let Some(n) = len.filter(|&n| n > 0 && n <= list.len() && digests[n] == *digest) else {
                        report.push(phantom(format!(
                            "the change at index {index} shows a list ({} values, ending {:?}) that is not a prefix of the key's final list of {} values",
                            len.map_or("not a list of strings".to_string(), |n| n.to_string()),
                            last.as_deref().unwrap_or("-"),
                            list.len()
                        )));
                        continue;
                    };
                    let value = list[n - 1].as_str();
                    let append = appends.get(value);
                    let ids: Vec<u64> = append.map(|a| a.id).into_iter().collect();
                    match previous {
                        Some(p) if n <= p => report.push(anomaly(
                            AnomalyKind::WatchDuplicate,
                            key,
                            ids.clone(),
                            format!(
                                "the change at index {index} shows {n} values, after a change that showed {p}: {value:?} was delivered again"
                            ),
                        )),
                        Some(p) if n > p + 1 => report.push(anomaly(
                            AnomalyKind::WatchGap,
                            key,
                            ids.clone(),
                            format!(
                                "the change at index {index} shows {n} values, after a change that showed {p}: {} change(s) were skipped, starting with {:?}",
                                n - p - 1,
                                list[p]
                            ),
                        )),
                        _ => {}
                    }
                    if let Some(acked) = append.filter(|a| a.outcome == Outcome::Ok).and_then(|a| a.index) {
                        if acked != *index {
                            report.push(anomaly(
                                AnomalyKind::WatchOutOfOrder,
                                key,
                                ids,
                                format!(
                                    "{value:?} was delivered at index {index}, but its append was acknowledged at index {acked}"
                                ),
                            ));
                        }
                    }
                    shown.insert(key.as_str(), Some(n));
                }
            }
        }
        match end {
            None => report.push(anomaly(
                AnomalyKind::WatchIncomplete,
                "",
                vec![],
                "it never finished".into(),
            )),
            Some((_, _, Some(error))) => report.push(anomaly(
                AnomalyKind::WatchIncomplete,
                "",
                vec![],
                format!("it stopped: {error}"),
            )),
            Some((covered, target, None)) if covered.is_none_or(|c| c < target) => report.push(anomaly(
                AnomalyKind::WatchIncomplete,
                "",
                vec![],
                format!("it reached index {covered:?}, not the {target} the cluster applied"),
            )),
            Some(_) if after == 0 => {
                let mut keys: Vec<&&str> = finals.keys().filter(|k| watches(k)).collect();
                keys.sort();
                for key in keys {
                    let list = &finals[*key].0;
                    let got = shown.get(*key).copied().flatten().unwrap_or(0);
                    if got < list.len() {
                        report.push(anomaly(
                            AnomalyKind::WatchGap,
                            key,
                            appends.get(list[got].as_str()).map(|a| a.id).into_iter().collect(),
                            format!(
                                "it caught up with the cluster but delivered {got} of the {} changes, missing {:?} onwards",
                                list.len(),
                                list[got]
                            ),
                        ));
                    }
                }
            }
            Some(_) => {}
        }
    }
}

fn check_key(key: &str, ops: &[&Op], report: &mut Report) {
    let anomaly = |kind, ops: Vec<u64>, explanation: String| Anomaly {
        kind,
        key: key.to_string(),
        ops,
        explanation,
    };

    // Appends by value. The workload never sends a value twice; if a history does, the first
    // send is the one judged.
    let mut appends: HashMap<&str, &Op> = HashMap::new();
    for op in ops.iter().filter(|op| op.kind == OpKind::Append) {
        if let Some(v) = &op.value {
            appends.entry(v.as_str()).or_insert(op);
        }
    }

    // Successful reads, parsed; malformed ones are reported and left out.
    let mut reads: Vec<ReadObs> = Vec::new();
    let mut replica_reads: Vec<ReadObs> = Vec::new();
    for op in ops
        .iter()
        .filter(|op| op.kind != OpKind::Append && op.outcome == Outcome::Ok)
    {
        match parse_list(op.read.as_ref()) {
            Some(values) => {
                let obs = ReadObs { op, values };
                if op.kind == OpKind::ReplicaRead {
                    replica_reads.push(obs);
                } else {
                    reads.push(obs);
                }
            }
            None => report.push(anomaly(
                AnomalyKind::Malformed,
                vec![op.id],
                format!(
                    "read returned {}, not a list of strings",
                    abbreviate(op.read.as_ref().unwrap_or(&Value::Null))
                ),
            )),
        }
    }

    // Rules 1, 6, 7, 8: each read on its own.
    for r in reads.iter().chain(&replica_reads) {
        let mut seen = HashSet::new();
        let mut reported_dup = false;
        for v in &r.values {
            if !seen.insert(v.as_str()) && !reported_dup {
                reported_dup = true;
                let mut ids = vec![r.op.id];
                ids.extend(appends.get(v.as_str()).map(|a| a.id));
                report.push(anomaly(
                    AnomalyKind::Duplicate,
                    ids,
                    format!("value {v:?} appears more than once in one read"),
                ));
            }
            match appends.get(v.as_str()) {
                None => report.push(anomaly(
                    AnomalyKind::NeverSent,
                    vec![r.op.id],
                    format!("value {v:?} was never appended to this key"),
                )),
                Some(a) if a.outcome == Outcome::Failed => report.push(anomaly(
                    AnomalyKind::FailedAppeared,
                    vec![r.op.id, a.id],
                    format!("value {v:?} is visible although its append definitely failed"),
                )),
                Some(a) if a.invoke > r.op.complete => report.push(anomaly(
                    AnomalyKind::FromTheFuture,
                    vec![r.op.id, a.id],
                    format!("value {v:?} was read before its append was invoked"),
                )),
                Some(_) => {}
            }
        }
    }

    // Rule 2: every read is a prefix of the longest one.
    let longest = reads.iter().max_by_key(|r| r.values.len());
    let longest_values: &[String] = longest.map(|r| r.values.as_slice()).unwrap_or(&[]);
    let mut prefix_ok = vec![true; reads.len()];
    for (i, r) in reads.iter().enumerate() {
        if !longest_values.starts_with(&r.values) {
            prefix_ok[i] = false;
            let at = r
                .values
                .iter()
                .zip(longest_values)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            let longest_id = longest.map(|l| l.op.id).unwrap_or(r.op.id);
            report.push(anomaly(
                AnomalyKind::NotPrefixOrdered,
                vec![r.op.id, longest_id],
                format!(
                    "read of length {} and read of length {} differ at position {at}: {:?} vs {:?}",
                    r.values.len(),
                    longest_values.len(),
                    r.values.get(at),
                    longest_values.get(at)
                ),
            ));
        }
    }
    let position: HashMap<&str, usize> = longest_values
        .iter()
        .enumerate()
        .rev()
        .map(|(i, v)| (v.as_str(), i))
        .collect();

    // Rule 3: appends acknowledged before a read began are in it. Final reads are judged by
    // rule 5 instead, so that a lost append is reported once, as lost.
    let mut acked: Vec<&Op> = appends
        .values()
        .copied()
        .filter(|a| a.outcome == Outcome::Ok)
        .collect();
    acked.sort_by_key(|a| a.complete);
    let acked_done: Vec<Micros> = acked.iter().map(|a| a.complete).collect();
    // furthest[i]: the largest position in the longest read among acked[..=i] (usize::MAX when
    // one of them is not in the longest read at all).
    let furthest: Vec<usize> = acked
        .iter()
        .scan(0usize, |max, a| {
            let p = a
                .value
                .as_deref()
                .and_then(|v| position.get(v))
                .copied()
                .unwrap_or(usize::MAX);
            *max = (*max).max(p);
            Some(*max)
        })
        .collect();
    for (i, r) in reads.iter().enumerate() {
        if r.op.kind != OpKind::Read {
            continue;
        }
        let before = acked_done.partition_point(|&t| t < r.op.invoke);
        if before == 0 {
            continue;
        }
        let misses = if prefix_ok[i] {
            furthest[before - 1] == usize::MAX || furthest[before - 1] >= r.values.len()
        } else {
            true
        };
        if misses {
            let have: HashSet<&str> = r.values.iter().map(String::as_str).collect();
            if let Some(missed) = acked[..before]
                .iter()
                .find(|a| !a.value.as_deref().is_some_and(|v| have.contains(v)))
            {
                report.push(anomaly(
                    AnomalyKind::MissedAcknowledged,
                    vec![r.op.id, missed.id],
                    format!(
                        "read misses {:?}, acknowledged {:.3}s before the read began",
                        missed.value.as_deref().unwrap_or("?"),
                        (r.op.invoke - missed.complete) as f64 / 1e6
                    ),
                ));
            }
        }
    }

    // Rule 4: a read is at least as long as every read that completed before it began.
    let mut by_done: Vec<&ReadObs> = reads.iter().collect();
    by_done.sort_by_key(|r| r.op.complete);
    let done: Vec<Micros> = by_done.iter().map(|r| r.op.complete).collect();
    let longest_so_far: Vec<&ReadObs> = by_done
        .iter()
        .scan(None::<&ReadObs>, |best, r| {
            if best.is_none_or(|b| r.values.len() > b.values.len()) {
                *best = Some(r);
            }
            *best
        })
        .collect();
    for r in &reads {
        let before = done.partition_point(|&t| t < r.op.invoke);
        if before == 0 {
            continue;
        }
        let earlier = longest_so_far[before - 1];
        if earlier.values.len() > r.values.len() {
            report.push(anomaly(
                AnomalyKind::NonMonotonic,
                vec![r.op.id, earlier.op.id],
                format!(
                    "read returned {} values, but a read that completed {:.3}s before it began returned {}",
                    r.values.len(),
                    (r.op.invoke - earlier.op.complete) as f64 / 1e6,
                    earlier.values.len()
                ),
            ));
        }
    }

    // Rule 5 (and the unknown-applied statistic): the final state.
    let final_read = reads
        .iter()
        .filter(|r| r.op.kind == OpKind::FinalRead)
        .max_by_key(|r| r.op.complete);
    let Some(final_read) = final_read else {
        let any_final = ops.iter().any(|op| op.kind == OpKind::FinalRead);
        let attempted: Vec<u64> = ops
            .iter()
            .filter(|op| op.kind == OpKind::FinalRead)
            .map(|op| op.id)
            .collect();
        if any_final || !acked.is_empty() {
            report.push(anomaly(
                AnomalyKind::NoFinalRead,
                attempted,
                "the final state of this key could not be read, so lost appends cannot be ruled out".into(),
            ));
        }
        return;
    };
    let final_values: HashSet<&str> = final_read.values.iter().map(String::as_str).collect();
    for a in &acked {
        if !a.value.as_deref().is_some_and(|v| final_values.contains(v)) {
            report.push(anomaly(
                AnomalyKind::LostAcknowledged,
                vec![final_read.op.id, a.id],
                format!(
                    "acknowledged append {:?} is missing from the final state",
                    a.value.as_deref().unwrap_or("?")
                ),
            ));
        }
    }
    report.unknown_applied += appends
        .values()
        .filter(|a| a.outcome == Outcome::Unknown)
        .filter(|a| a.value.as_deref().is_some_and(|v| final_values.contains(v)))
        .count();

    // Rule 9: every replica holds the final state.
    for r in &replica_reads {
        if r.values != final_read.values {
            report.push(anomaly(
                AnomalyKind::Divergent,
                vec![r.op.id, final_read.op.id],
                format!(
                    "replica {} holds {} values, the final read {}",
                    r.op.via,
                    r.values.len(),
                    final_read.values.len()
                ),
            ));
        }
    }
}

/// A read's value as a list of strings; `None` when it is anything else.
fn parse_list(value: Option<&Value>) -> Option<Vec<String>> {
    value?
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    //! Hand-made histories: one per anomaly class proving it is caught, and clean ones (with
    //! concurrency and unknown outcomes) proving they are accepted.
    use super::*;
    use serde_json::json;

    /// Builds histories tersely: times are in milliseconds.
    #[derive(Default)]
    struct H(History);

    impl H {
        fn push(
            &mut self,
            kind: OpKind,
            key: &str,
            value: Option<&str>,
            read: Option<Value>,
            t: (u64, u64),
            outcome: Outcome,
        ) -> u64 {
            let id = self.0.ops.len() as u64;
            self.0.ops.push(Op {
                id,
                client: Some(0),
                kind,
                key: key.into(),
                value: value.map(str::to_owned),
                read,
                via: "leader".into(),
                invoke: t.0 * 1000,
                complete: t.1 * 1000,
                outcome,
                error: None,
                index: None,
            });
            id
        }
        fn append(&mut self, v: &str, t: (u64, u64), outcome: Outcome) -> u64 {
            self.push(OpKind::Append, "k", Some(v), None, t, outcome)
        }
        fn read(&mut self, vals: &[&str], t: (u64, u64)) -> u64 {
            self.push(OpKind::Read, "k", None, Some(json!(vals)), t, Outcome::Ok)
        }
        fn final_read(&mut self, vals: &[&str]) -> u64 {
            self.push(
                OpKind::FinalRead,
                "k",
                None,
                Some(json!(vals)),
                (10_000, 10_001),
                Outcome::Ok,
            )
        }
        fn replica_read(&mut self, vals: &[&str]) -> u64 {
            self.push(
                OpKind::ReplicaRead,
                "k",
                None,
                Some(json!(vals)),
                (10_002, 10_003),
                Outcome::Ok,
            )
        }
        fn check(&self) -> Report {
            check(&self.0)
        }
    }

    fn only(report: &Report, kind: AnomalyKind) -> Anomaly {
        let kinds: Vec<AnomalyKind> = report.anomaly_counts.keys().copied().collect();
        assert_eq!(kinds, vec![kind], "{report:#?}");
        report
            .examples
            .iter()
            .find(|a| a.kind == kind)
            .expect("an example is kept")
            .clone()
    }

    /// Appends a, b, c acknowledged one after another, reads in between, one concurrent
    /// unknown append that did land and one that did not, a failed append that did not land.
    fn clean() -> H {
        let mut h = H::default();
        h.read(&[], (0, 5));
        h.append("a", (10, 20), Outcome::Ok);
        h.read(&["a"], (21, 25));
        h.append("b", (30, 40), Outcome::Ok);
        // Concurrent with b's append: may or may not see it.
        h.read(&["a"], (35, 45));
        h.append("u1", (41, 5000), Outcome::Unknown);
        h.append("u2", (42, 5000), Outcome::Unknown);
        h.append("f", (43, 44), Outcome::Failed);
        h.read(&["a", "b", "u1"], (50, 60));
        h.append("c", (61, 70), Outcome::Ok);
        h.read(&["a", "b", "u1", "c"], (71, 80));
        h.final_read(&["a", "b", "u1", "c"]);
        h.replica_read(&["a", "b", "u1", "c"]);
        h
    }

    #[test]
    fn a_clean_history_is_accepted() {
        let report = clean().check();
        assert!(report.is_valid(), "{report:#?}");
        assert_eq!(
            report.appends,
            OutcomeCounts {
                ok: 3,
                failed: 1,
                unknown: 2
            }
        );
        assert_eq!(report.reads.ok, 5);
        assert_eq!(report.final_reads.ok, 2);
        assert_eq!(report.unknown_applied, 1);
    }

    #[test]
    fn concurrent_reads_may_see_a_write_in_either_order() {
        let mut h = H::default();
        h.append("a", (0, 100), Outcome::Ok);
        // Both reads overlap the append; the first to complete sees it, the later one does not,
        // but they overlap each other, so neither is "before" the other.
        h.read(&["a"], (10, 50));
        h.read(&[], (20, 60));
        h.final_read(&["a"]);
        assert!(h.check().is_valid());
    }

    #[test]
    fn an_empty_history_with_empty_final_reads_is_accepted() {
        let mut h = H::default();
        h.final_read(&[]);
        assert!(h.check().is_valid());
    }

    #[test]
    fn a_duplicate_value_is_detected() {
        // A retried append applied twice: the idempotency table missed the second copy.
        let mut h = H::default();
        h.append("a", (0, 10), Outcome::Ok);
        h.append("c", (20, 30), Outcome::Ok);
        h.final_read(&["a", "c", "c"]);
        let a = only(&h.check(), AnomalyKind::Duplicate);
        assert!(a.explanation.contains("\"c\""), "{a:?}");
    }

    #[test]
    fn reads_not_ordered_by_prefix_are_detected() {
        let mut h = H::default();
        h.append("a", (0, 10), Outcome::Unknown);
        h.append("b", (0, 10), Outcome::Unknown);
        h.read(&["a", "b"], (20, 30));
        h.read(&["b", "a"], (40, 50));
        h.final_read(&["a", "b"]);
        let report = h.check();
        only(&report, AnomalyKind::NotPrefixOrdered);
        assert_eq!(report.anomaly_counts[&AnomalyKind::NotPrefixOrdered], 1);
    }

    #[test]
    fn a_read_missing_an_acknowledged_append_is_detected() {
        let mut h = H::default();
        let a = h.append("a", (0, 10), Outcome::Ok);
        let r = h.read(&[], (11, 20));
        h.final_read(&["a"]);
        let anomaly = only(&h.check(), AnomalyKind::MissedAcknowledged);
        assert_eq!(anomaly.ops, vec![r, a]);
    }

    #[test]
    fn a_read_missing_an_earlier_acknowledged_append_but_holding_a_later_one_is_detected() {
        // The read is shorter than the position of an acked append in the longest read, even
        // though its length equals the number of acked appends before it.
        let mut h = H::default();
        h.append("x", (0, 1000), Outcome::Unknown);
        h.append("a", (1, 10), Outcome::Ok);
        h.read(&["x"], (11, 20));
        h.final_read(&["x", "a"]);
        // The read must be a prefix ["x"], which lacks "a": missed.
        only(&h.check(), AnomalyKind::MissedAcknowledged);
    }

    #[test]
    fn a_read_going_back_in_time_is_detected() {
        let mut h = H::default();
        h.append("a", (0, 1000), Outcome::Unknown);
        let first = h.read(&["a"], (10, 20));
        let second = h.read(&[], (30, 40));
        h.final_read(&["a"]);
        let anomaly = only(&h.check(), AnomalyKind::NonMonotonic);
        assert_eq!(anomaly.ops, vec![second, first]);
    }

    #[test]
    fn a_lost_acknowledged_append_is_detected() {
        let mut h = H::default();
        h.append("a", (0, 10), Outcome::Ok);
        let b = h.append("b", (20, 30), Outcome::Ok);
        let f = h.final_read(&["a"]);
        let anomaly = only(&h.check(), AnomalyKind::LostAcknowledged);
        assert_eq!(anomaly.ops, vec![f, b]);
    }

    #[test]
    fn a_failed_append_that_appears_is_detected() {
        let mut h = H::default();
        let f = h.append("f", (0, 10), Outcome::Failed);
        h.final_read(&["f"]);
        let report = h.check();
        let anomaly = only(&report, AnomalyKind::FailedAppeared);
        assert_eq!(anomaly.ops[1], f);
    }

    #[test]
    fn a_value_never_sent_is_detected() {
        let mut h = H::default();
        h.append("a", (0, 10), Outcome::Ok);
        // "z" was sent, but to another key.
        h.push(OpKind::Append, "other", Some("z"), None, (0, 10), Outcome::Ok);
        h.push(
            OpKind::FinalRead,
            "other",
            None,
            Some(json!(["z"])),
            (10_000, 10_001),
            Outcome::Ok,
        );
        h.final_read(&["a", "z"]);
        only(&h.check(), AnomalyKind::NeverSent);
    }

    #[test]
    fn a_read_from_the_future_is_detected() {
        let mut h = H::default();
        h.read(&["a"], (0, 10));
        h.append("a", (20, 30), Outcome::Ok);
        h.final_read(&["a"]);
        only(&h.check(), AnomalyKind::FromTheFuture);
    }

    #[test]
    fn a_divergent_replica_is_detected() {
        let mut h = clean();
        h.replica_read(&["a", "b"]);
        only(&h.check(), AnomalyKind::Divergent);
    }

    #[test]
    fn a_malformed_read_is_detected() {
        let mut h = clean();
        h.push(
            OpKind::Read,
            "k",
            None,
            Some(json!({"not": "a list"})),
            (90, 95),
            Outcome::Ok,
        );
        only(&h.check(), AnomalyKind::Malformed);
    }

    #[test]
    fn a_key_without_a_final_read_fails_the_history() {
        let mut h = H::default();
        h.append("a", (0, 10), Outcome::Ok);
        h.push(
            OpKind::FinalRead,
            "k",
            None,
            None,
            (10_000, 10_001),
            Outcome::Unknown,
        );
        only(&h.check(), AnomalyKind::NoFinalRead);
    }

    #[test]
    fn failed_reads_are_ignored() {
        let mut h = clean();
        // A failed read's (absent) value says nothing.
        h.push(OpKind::Read, "k", None, None, (90, 95), Outcome::Failed);
        assert!(h.check().is_valid());
    }

    /// A watcher's records, tersely: `change(index, key, list)` for an append.
    struct W {
        id: u32,
        records: Vec<WatchRecord>,
    }

    impl W {
        fn new(id: u32, key: Option<&str>) -> W {
            let mut w = W { id, records: vec![] };
            w.push(Seen::Start {
                key: key.map(str::to_owned),
                prefix: key.is_none().then(String::new),
                after: 0,
            });
            w
        }
        fn push(&mut self, seen: Seen) {
            let at = self.records.len() as u64;
            self.records.push(WatchRecord {
                watcher: self.id,
                at,
                seen,
            });
        }
        fn change(mut self, index: u64, key: &str, list: &[&str]) -> W {
            self.push(Seen::Change {
                index,
                kind: "append".into(),
                key: key.into(),
                len: Some(list.len()),
                last: list.last().map(|s| s.to_string()),
                digest: crate::history::list_digest(list.iter().copied()),
            });
            self
        }
        fn end(mut self, covered: u64, target: u64) -> Vec<WatchRecord> {
            self.push(Seen::End {
                covered: Some(covered),
                target,
                error: None,
            });
            self.records
        }
    }

    /// Appends a (index 2), b (3) and c (4) to k, acknowledged with their indexes, and the final
    /// read; a watcher that saw exactly that is clean.
    fn watched() -> H {
        let mut h = H::default();
        for (v, index) in [("a", 2), ("b", 3), ("c", 4)] {
            let id = h.append(v, (index * 10, index * 10 + 5), Outcome::Ok);
            h.0.ops[id as usize].index = Some(index);
        }
        h.final_read(&["a", "b", "c"]);
        h
    }

    fn with_watches(mut h: H, watches: Vec<Vec<WatchRecord>>) -> Report {
        h.0.watches = watches.into_iter().flatten().collect();
        h.check()
    }

    #[test]
    fn watchers_that_saw_the_committed_history_are_accepted() {
        let all = W::new(0, None)
            .change(2, "k", &["a"])
            .change(3, "k", &["a", "b"])
            .change(4, "k", &["a", "b", "c"])
            .end(9, 9);
        let one = W::new(1, Some("k"))
            .change(2, "k", &["a"])
            .change(3, "k", &["a", "b"])
            .change(4, "k", &["a", "b", "c"])
            .end(9, 9);
        let report = with_watches(watched(), vec![all, one]);
        assert!(report.is_valid(), "{report:#?}");
        assert_eq!((report.watchers, report.watch_changes), (2, 6));
    }

    #[test]
    fn a_watched_change_outside_the_committed_history_is_detected() {
        // "x" never reached the final list: an uncommitted (or invented) change.
        let w = W::new(0, None)
            .change(2, "k", &["a"])
            .change(3, "k", &["a", "x"])
            .change(3, "k", &["a", "b"])
            .change(4, "k", &["a", "b", "c"])
            .end(9, 9);
        let a = only(&with_watches(watched(), vec![w]), AnomalyKind::WatchPhantom);
        assert!(a.explanation.contains("not a prefix"), "{a:?}");
        // A key the watcher does not watch.
        let w = W::new(0, Some("other")).change(2, "k", &["a"]).end(9, 9);
        only(&with_watches(watched(), vec![w]), AnomalyKind::WatchPhantom);
    }

    #[test]
    fn a_watched_change_skipped_is_detected() {
        let w = W::new(0, None)
            .change(2, "k", &["a"])
            .change(4, "k", &["a", "b", "c"])
            .end(9, 9);
        let a = only(&with_watches(watched(), vec![w]), AnomalyKind::WatchGap);
        assert!(a.explanation.contains("\"b\""), "{a:?}");
        // The end missing, though the watcher caught up.
        let w = W::new(0, None)
            .change(2, "k", &["a"])
            .change(3, "k", &["a", "b"])
            .end(9, 9);
        let a = only(&with_watches(watched(), vec![w]), AnomalyKind::WatchGap);
        assert!(a.explanation.contains("caught up"), "{a:?}");
    }

    #[test]
    fn a_watched_change_delivered_twice_is_detected() {
        // The classic failover bug: resuming from the index before the last one seen.
        let w = W::new(0, None)
            .change(2, "k", &["a"])
            .change(3, "k", &["a", "b"])
            .change(3, "k", &["a", "b"])
            .change(4, "k", &["a", "b", "c"])
            .end(9, 9);
        only(&with_watches(watched(), vec![w]), AnomalyKind::WatchDuplicate);
    }

    #[test]
    fn watched_changes_out_of_order_or_at_the_wrong_index_are_detected() {
        let w = W::new(0, None)
            .change(2, "k", &["a"])
            .change(4, "k", &["a", "b"])
            .change(3, "k", &["a", "b", "c"])
            .end(9, 9);
        let report = with_watches(watched(), vec![w]);
        only(&report, AnomalyKind::WatchOutOfOrder);
        assert_eq!(
            report.anomaly_counts[&AnomalyKind::WatchOutOfOrder],
            3,
            "{report:#?}"
        );
    }

    #[test]
    fn a_watcher_that_stopped_or_fell_behind_is_detected() {
        let w = W::new(0, None)
            .change(2, "k", &["a"])
            .change(3, "k", &["a", "b"])
            .change(4, "k", &["a", "b", "c"])
            .end(5, 9);
        let a = only(&with_watches(watched(), vec![w]), AnomalyKind::WatchIncomplete);
        assert!(a.explanation.contains("not the 9"), "{a:?}");
        let mut w = W::new(0, None).change(2, "k", &["a"]);
        w.push(Seen::End {
            covered: Some(2),
            target: 9,
            error: Some("no node serves the watch".into()),
        });
        only(
            &with_watches(watched(), vec![w.records]),
            AnomalyKind::WatchIncomplete,
        );
        let unfinished = W::new(0, None).change(2, "k", &["a"]).records;
        only(
            &with_watches(watched(), vec![unfinished]),
            AnomalyKind::WatchIncomplete,
        );
    }

    #[test]
    fn examples_are_capped_but_every_anomaly_is_counted() {
        let mut h = H::default();
        h.append("a", (0, 10), Outcome::Ok);
        for i in 0..20 {
            h.read(&[], (20 + 10 * i, 25 + 10 * i));
        }
        h.final_read(&["a"]);
        let report = h.check();
        assert_eq!(report.anomaly_counts[&AnomalyKind::MissedAcknowledged], 20);
        assert_eq!(report.examples.len(), EXAMPLES_PER_KIND);
        let mut out = Vec::new();
        report.render(&h.0, &mut out).expect("render");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("missed-acknowledged-append: 20"), "{text}");
        assert!(text.contains("op 0 c0 via leader"), "{text}");
    }
}
