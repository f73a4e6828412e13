//! The recorded history of a run: every client operation and every fault, with times.
//!
//! A history is what the checker judges, so it records facts and no conclusions: when an
//! operation was invoked and when it completed (microseconds on one monotonic clock shared by
//! every client and the nemesis, so real-time order between any two events is meaningful), what
//! it asked for, and which of three outcomes it had:
//!
//! - [`Outcome::Ok`]: the server confirmed it. An acknowledged append must be visible to every
//!   later read and in the final state.
//! - [`Outcome::Failed`]: it definitely did not take effect (the request was never sent, or the
//!   server said `unavailable`, which it only answers for writes it never proposed).
//! - [`Outcome::Unknown`]: it may or may not have taken effect (timeout, connection lost after
//!   sending, `outcome_unknown`). The checker allows either.
//!
//! On disk a history is JSON lines, one [`Event`] per line, so a long run can be inspected with
//! `grep` and `jq`, and a history that exposed a bug can be kept as a regression input and fed
//! back to the checker.

use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvapi::NodeId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Microseconds since the start of the run, on a monotonic clock.
pub type Micros = u64;

/// What became of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Confirmed by the server.
    Ok,
    /// Definitely not applied.
    Failed,
    /// May or may not have been applied.
    Unknown,
}

/// The kind of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// APPEND of a unique value to a key's list.
    Append,
    /// A linearizable GET during the run.
    Read,
    /// The linearizable GET of each key after the faults healed and the cluster converged.
    FinalRead,
    /// A stale GET from one replica after convergence; every replica must hold the final state.
    ReplicaRead,
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Unique within the history.
    pub id: u64,
    /// The client that ran it (`None` for the harness's own final reads).
    pub client: Option<u32>,
    /// What it was.
    pub kind: OpKind,
    /// The key it touched.
    pub key: String,
    /// For an append: the value sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// For a successful read: the value returned, exactly as the server sent it (an absent key
    /// is recorded as an empty list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<Value>,
    /// Where it was sent: `"leader"` (kvctl's client, which finds the leader and retries) or
    /// `"n<id>"` (one attempt at that node, which forwards to the leader).
    pub via: String,
    /// When it was invoked.
    pub invoke: Micros,
    /// When its outcome was known.
    pub complete: Micros,
    /// Its outcome.
    pub outcome: Outcome,
    /// Why it was not `Ok`, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One action of the nemesis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// When it happened.
    pub at: Micros,
    /// `kill`, `restart`, `pause`, `resume`, `partition`, `heal`.
    pub action: String,
    /// The nodes it touched.
    pub nodes: Vec<NodeId>,
    /// A description, e.g. the shape of a partition or why a leader was chosen.
    pub detail: String,
}

/// How the run was configured, so that a history file says how to replay it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    /// The seed of the workload and the fault schedule.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Length of the faulty phase, in milliseconds.
    pub duration_ms: u64,
    /// Fault kinds enabled.
    pub faults: Vec<String>,
    /// The keys used.
    pub keys: Vec<String>,
    /// Wall-clock time of the history's time zero (Unix epoch, milliseconds), to line the
    /// history up with the nodes' logs, which carry UTC timestamps.
    #[serde(default)]
    pub started_unix_ms: u64,
}

/// One line of a history file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The run's configuration (first line).
    Meta(RunMeta),
    /// A client operation.
    Op(Op),
    /// A nemesis action.
    Fault(FaultEvent),
}

/// A whole history in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// The run's configuration, when known.
    pub meta: Option<RunMeta>,
    /// Operations in the order they completed.
    pub ops: Vec<Op>,
    /// Nemesis actions in order.
    pub faults: Vec<FaultEvent>,
}

/// Why a history file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading or writing failed.
    #[error("history I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not a valid event; the file is corrupt or from an incompatible version.
    #[error("history line {line} is not a valid event: {source}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// The parser's complaint.
        source: serde_json::Error,
    },
}

impl History {
    /// Write as JSON lines: the meta line (if any), then operations, then faults.
    pub fn write_jsonl(&self, mut out: impl Write) -> Result<(), HistoryError> {
        let mut line = |event: &Event| -> Result<(), HistoryError> {
            serde_json::to_writer(&mut out, event).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            Ok(())
        };
        if let Some(meta) = &self.meta {
            line(&Event::Meta(meta.clone()))?;
        }
        for op in &self.ops {
            line(&Event::Op(op.clone()))?;
        }
        for fault in &self.faults {
            line(&Event::Fault(fault.clone()))?;
        }
        Ok(())
    }

    /// Read JSON lines written by [`History::write_jsonl`]; blank lines are skipped.
    pub fn read_jsonl(input: impl BufRead) -> Result<History, HistoryError> {
        let mut history = History::default();
        for (i, line) in input.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let event: Event =
                serde_json::from_str(&line).map_err(|source| HistoryError::Parse { line: i + 1, source })?;
            match event {
                Event::Meta(m) => history.meta = Some(m),
                Event::Op(op) => history.ops.push(op),
                Event::Fault(f) => history.faults.push(f),
            }
        }
        Ok(history)
    }
}

/// The shared, thread-safe sink every client and the nemesis record into, with the run's clock.
#[derive(Debug, Clone)]
pub struct Recorder {
    start: Instant,
    inner: Arc<Mutex<History>>,
}

impl Recorder {
    /// A recorder whose clock starts now; the meta's `started_unix_ms` is set to now.
    pub fn new(mut meta: Option<RunMeta>) -> Recorder {
        if let Some(m) = &mut meta {
            m.started_unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
        }
        Recorder {
            start: Instant::now(),
            inner: Arc::new(Mutex::new(History {
                meta,
                ..History::default()
            })),
        }
    }

    /// Microseconds since the recorder was created.
    pub fn now(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }

    /// Record a completed operation, assigning its id.
    pub fn op(&self, mut op: Op) {
        let mut h = self.lock();
        op.id = h.ops.len() as u64;
        h.ops.push(op);
    }

    /// Record a nemesis action happening now.
    pub fn fault(&self, action: &str, nodes: Vec<NodeId>, detail: impl Into<String>) {
        let at = self.now();
        self.lock().faults.push(FaultEvent {
            at,
            action: action.to_string(),
            nodes,
            detail: detail.into(),
        });
    }

    /// Every key an operation touched so far, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.lock().ops.iter().map(|op| op.key.clone()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> History {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        // A panicking client cannot leave a half-pushed Vec behind, so the data is still whole.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_round_trip_through_json_lines() {
        let rec = Recorder::new(Some(RunMeta {
            seed: 7,
            nodes: 3,
            clients: 2,
            duration_ms: 1000,
            faults: vec!["kill".into()],
            keys: vec!["k0".into()],
            started_unix_ms: 0,
        }));
        rec.op(Op {
            id: 99,
            client: Some(1),
            kind: OpKind::Append,
            key: "k0".into(),
            value: Some("c1-0".into()),
            read: None,
            via: "leader".into(),
            invoke: 1,
            complete: 2,
            outcome: Outcome::Unknown,
            error: Some("timeout".into()),
        });
        rec.fault("kill", vec![2], "leader");
        let history = rec.snapshot();
        assert_eq!(history.ops[0].id, 0, "ids are assigned by the recorder");
        let mut buf = Vec::new();
        history.write_jsonl(&mut buf).expect("write");
        let text = String::from_utf8(buf.clone()).expect("utf8");
        assert_eq!(text.lines().count(), 3);
        assert!(text
            .lines()
            .next()
            .is_some_and(|l| l.contains(r#""type":"meta""#)));
        let back = History::read_jsonl(&buf[..]).expect("read");
        assert_eq!(back, history);
    }

    #[test]
    fn a_corrupt_line_is_reported_with_its_number() {
        let err = History::read_jsonl(&b"\n{\"type\":\"op\"}\n"[..]).expect_err("corrupt");
        assert!(matches!(err, HistoryError::Parse { line: 2, .. }), "{err}");
    }
}
