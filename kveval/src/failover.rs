//! The failover experiment: a steady write load during which the leader is killed and later restarted.
//!
//! Each repetition `i` leaves `rep<i>.ops.csv` (one line per operation:
//! `start_unix_us,end_unix_us,outcome`) and `rep<i>.events` (lines `<event> <unix_ms> <node_id>` with
//! events `start`, `kill`, `restart`, `stop`; other event names are ignored).

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::stats::{median, round1};

/// Width of a timeline bucket, microseconds.
pub const BUCKET_US: i64 = 100_000;
/// How long after the restart [`Repetition::restart_gap_ms`] looks, microseconds.
pub const RESTART_WINDOW_US: i64 = 5_000_000;
/// Note for a repetition in which no write succeeded after the kill.
pub const NO_SUCCESS_AFTER_KILL: &str = "no success after kill";

/// How one operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged.
    Ok,
    /// Definitely not applied.
    Failed,
    /// May or may not have been applied.
    Unknown,
}

/// One operation of the write load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    /// Invocation time, Unix microseconds.
    pub start_us: i64,
    /// Completion time, Unix microseconds.
    pub end_us: i64,
    /// How it ended.
    pub outcome: Outcome,
}

/// Parses an operations CSV (`start_unix_us,end_unix_us,outcome` with a header line). Errors name the
/// line number.
pub fn parse_ops(text: &str) -> Result<Vec<Op>> {
    let mut ops = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let header = i == 0 && fields[0].parse::<i64>().is_err();
        if line.is_empty() || header {
            continue;
        }
        let [start, end, outcome] = fields[..] else {
            bail!("line {}: expected 3 comma-separated fields, got `{line}`", i + 1);
        };
        let time = |s: &str| {
            s.parse::<i64>()
                .with_context(|| format!("line {}: bad time `{s}`", i + 1))
        };
        let outcome = match outcome {
            "ok" => Outcome::Ok,
            "failed" => Outcome::Failed,
            "unknown" => Outcome::Unknown,
            other => bail!(
                "line {}: bad outcome `{other}` (expected ok, failed or unknown)",
                i + 1
            ),
        };
        ops.push(Op {
            start_us: time(start)?,
            end_us: time(end)?,
            outcome,
        });
    }
    Ok(ops)
}

/// The events of one repetition, Unix milliseconds. Only the first `kill`, and the first `restart`
/// after it, are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    /// Start of the load window.
    pub start_ms: Option<i64>,
    /// The kill: time and node id.
    pub kill: Option<(i64, u32)>,
    /// The restart of the killed node: time and node id.
    pub restart: Option<(i64, u32)>,
    /// End of the load window.
    pub stop_ms: Option<i64>,
}

/// Parses an events file (`<event> <unix_ms> <node_id>` per line; blank lines and `#` comments are
/// skipped, unknown event names ignored).
pub fn parse_events(text: &str) -> Result<Events> {
    let mut events = Events::default();
    let mut restarts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [event, time, node] = fields[..] else {
            bail!(
                "line {}: expected `<event> <unix_ms> <node_id>`, got `{line}`",
                i + 1
            );
        };
        let time: i64 = time
            .parse()
            .with_context(|| format!("line {}: bad time `{time}`", i + 1))?;
        let node: u32 = node
            .parse()
            .with_context(|| format!("line {}: bad node id `{node}`", i + 1))?;
        match event {
            "start" => events.start_ms = events.start_ms.or(Some(time)),
            "stop" => events.stop_ms = Some(time),
            "kill" => events.kill = events.kill.or(Some((time, node))),
            "restart" => restarts.push((time, node)),
            _ => {}
        }
    }
    let kill_ms = events.kill.map_or(i64::MIN, |(t, _)| t);
    events.restart = restarts.into_iter().find(|&(t, _)| t >= kill_ms);
    Ok(events)
}

/// What one repetition shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Repetition {
    /// Repetition number (`i` in `rep<i>`).
    pub rep: u32,
    /// The node that was killed.
    pub killed_node: u32,
    /// From the last ok write completed before the kill to the first one completed after it, ms.
    pub unavailable_ms: Option<f64>,
    /// From the kill to the first ok write completed after it, ms.
    pub to_first_ok_ms: Option<f64>,
    /// Longest gap between consecutive ok completions around the 5 s after the restart, ms.
    pub restart_gap_ms: Option<f64>,
    /// Ok operations in the whole repetition.
    pub ok: u64,
    /// Failed operations in the whole repetition.
    pub failed: u64,
    /// Operations of unknown outcome in the whole repetition.
    pub unknown: u64,
    /// Why a figure is missing, e.g. [`NO_SUCCESS_AFTER_KILL`].
    pub note: Option<String>,
}

impl Repetition {
    /// The value used to rank repetitions by unavailability: a repetition that never recovered counts
    /// as infinitely long; one without any ok write before the kill cannot be ranked.
    fn rank_value(&self) -> Option<f64> {
        match (self.unavailable_ms, self.to_first_ok_ms) {
            (Some(u), _) => Some(u),
            (None, None) => Some(f64::INFINITY),
            (None, Some(_)) => None,
        }
    }
}

fn ms(us: i64) -> f64 {
    round1(us as f64 / 1000.0)
}

/// Computes the unavailability window and the other figures of one repetition.
pub fn analyze(rep: u32, ops: &[Op], events: &Events) -> Result<Repetition> {
    let Some((kill_ms, killed_node)) = events.kill else {
        bail!("no `kill` event");
    };
    let kill_us = kill_ms * 1000;
    let mut ok_ends: Vec<i64> = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok)
        .map(|o| o.end_us)
        .collect();
    ok_ends.sort_unstable();
    let count = |outcome| ops.iter().filter(|o| o.outcome == outcome).count() as u64;

    let split = ok_ends.partition_point(|&t| t < kill_us);
    let last_ok_before = split.checked_sub(1).map(|i| ok_ends[i]);
    let first_ok_after = ok_ends.get(split).copied();
    let mut notes = Vec::new();
    match (last_ok_before, first_ok_after) {
        (_, None) => notes.push(NO_SUCCESS_AFTER_KILL.to_string()),
        (None, Some(_)) => notes.push("no success before kill".to_string()),
        _ => {}
    }

    let restart_gap_ms = match events.restart {
        None => {
            notes.push("no restart".to_string());
            None
        }
        Some((restart_ms, _)) => {
            let gap = longest_gap_around(&ok_ends, restart_ms * 1000, restart_ms * 1000 + RESTART_WINDOW_US);
            if gap.is_none() {
                notes.push("no success after restart".to_string());
            }
            gap.map(ms)
        }
    };

    Ok(Repetition {
        rep,
        killed_node,
        unavailable_ms: last_ok_before.zip(first_ok_after).map(|(a, b)| ms(b - a)),
        to_first_ok_ms: first_ok_after.map(|b| ms(b - kill_us)),
        restart_gap_ms,
        ok: count(Outcome::Ok),
        failed: count(Outcome::Failed),
        unknown: count(Outcome::Unknown),
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    })
}

/// The longest gap between consecutive (sorted) completion times `a`, `b` that overlaps `[from, to]`,
/// i.e. with `b >= from` and `a <= to`. `None` if no completion lies at or after `from`.
pub fn longest_gap_around(sorted_ends: &[i64], from: i64, to: i64) -> Option<i64> {
    sorted_ends
        .windows(2)
        .filter(|w| w[1] >= from && w[0] <= to)
        .map(|w| w[1] - w[0])
        .max()
        .or_else(|| {
            // A single completion in the window and none before it: no gap to measure, but it succeeded.
            sorted_ends.iter().any(|&t| t >= from && t <= to).then_some(0)
        })
}

/// Per-bucket counts of one repetition, for the timeline plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    /// Repetition number.
    pub rep: u32,
    /// Ok completions per bucket, as ops/s, keyed by the bucket's start in seconds since `start`.
    pub ok_per_s: Vec<(f64, f64)>,
    /// Failed plus unknown completions per bucket.
    pub failed_unknown: Vec<(f64, u64)>,
    /// The kill, seconds since `start`.
    pub kill_s: f64,
    /// The restart, seconds since `start`.
    pub restart_s: Option<f64>,
    /// The end of the load window, seconds since `start`.
    pub end_s: f64,
}

/// Buckets the completions of one repetition into [`BUCKET_US`] intervals from the `start` event (or
/// the first operation) to the `stop` event (or the last completion).
pub fn timeline(rep: u32, ops: &[Op], events: &Events) -> Timeline {
    let first_op = ops.iter().map(|o| o.start_us).min().unwrap_or(0);
    let last_end = ops.iter().map(|o| o.end_us).max().unwrap_or(first_op);
    let t0 = events.start_ms.map_or(first_op, |t| t * 1000);
    let t1 = events.stop_ms.map_or(last_end, |t| t * 1000).max(t0);
    let buckets = ((t1 - t0) as f64 / BUCKET_US as f64).ceil().max(1.0) as usize;
    let mut ok = vec![0u64; buckets];
    let mut bad = vec![0u64; buckets];
    for op in ops {
        if op.end_us < t0 || op.end_us > t1 {
            continue;
        }
        let i = (((op.end_us - t0) / BUCKET_US) as usize).min(buckets - 1);
        match op.outcome {
            Outcome::Ok => ok[i] += 1,
            Outcome::Failed | Outcome::Unknown => bad[i] += 1,
        }
    }
    let secs = |us: i64| (us - t0) as f64 / 1e6;
    let bucket_start = |i: usize| i as f64 * BUCKET_US as f64 / 1e6;
    let per_s = 1e6 / BUCKET_US as f64;
    Timeline {
        rep,
        ok_per_s: ok
            .iter()
            .enumerate()
            .map(|(i, &n)| (bucket_start(i), n as f64 * per_s))
            .collect(),
        failed_unknown: bad
            .iter()
            .enumerate()
            .map(|(i, &n)| (bucket_start(i), n))
            .collect(),
        kill_s: events.kill.map_or(0.0, |(t, _)| secs(t * 1000)),
        restart_s: events.restart.map(|(t, _)| secs(t * 1000)),
        end_s: secs(t1),
    }
}

/// Median and maximum of one figure over the repetitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Stat {
    /// Median (mean of the two middle values for an even count), ms; `None` when it is unbounded
    /// (a repetition never recovered) or nothing was measured.
    pub median: Option<f64>,
    /// Maximum, ms; `None` when unbounded or nothing was measured.
    pub max: Option<f64>,
}

impl Stat {
    /// Median and maximum of `values`, where infinity stands for "never".
    fn of(values: &[f64]) -> Self {
        let finite = |v: f64| v.is_finite().then_some(v);
        Stat {
            median: median(values).and_then(finite).map(round1),
            max: values.iter().copied().reduce(f64::max).and_then(finite),
        }
    }
}

/// All repetitions of the failover experiment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failover {
    /// One entry per repetition, by repetition number.
    pub repetitions: Vec<Repetition>,
    /// `unavailable_ms` over repetitions; a repetition that never recovered counts as unbounded, one
    /// without an ok write before the kill is left out.
    pub unavailable_ms: Stat,
    /// `to_first_ok_ms` over repetitions; a repetition that never recovered counts as unbounded.
    pub to_first_ok_ms: Stat,
    /// `restart_gap_ms` over the repetitions that have one.
    pub restart_gap_ms: Stat,
    /// Repetitions without an ok write after the kill.
    pub never_recovered: usize,
    /// The repetition whose unavailability is the (lower) median: the one plotted.
    pub median_rep: Option<u32>,
    /// The plotted repetition's timeline.
    #[serde(skip)]
    pub timeline: Option<Timeline>,
}

impl Failover {
    /// Summarises analysed repetitions; `ops_of` gives the operations and events of a repetition for
    /// the timeline of the median one.
    pub fn summarize(
        repetitions: Vec<Repetition>,
        ops_of: impl Fn(u32) -> Option<(Vec<Op>, Events)>,
    ) -> Self {
        let mut ranked: Vec<(f64, u32)> = repetitions
            .iter()
            .filter_map(|r| r.rank_value().map(|v| (v, r.rep)))
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let unavailable: Vec<f64> = ranked.iter().map(|&(v, _)| v).collect();
        let to_first_ok: Vec<f64> = repetitions
            .iter()
            .map(|r| r.to_first_ok_ms.unwrap_or(f64::INFINITY))
            .collect();
        let restart_gap: Vec<f64> = repetitions.iter().filter_map(|r| r.restart_gap_ms).collect();
        let median_rep = ranked
            .get(ranked.len().saturating_sub(1) / 2)
            .map(|&(_, rep)| rep);
        let timeline = median_rep.and_then(|rep| ops_of(rep).map(|(ops, ev)| timeline(rep, &ops, &ev)));
        Failover {
            unavailable_ms: Stat::of(&unavailable),
            to_first_ok_ms: Stat::of(&to_first_ok),
            restart_gap_ms: Stat::of(&restart_gap),
            never_recovered: repetitions.iter().filter(|r| r.to_first_ok_ms.is_none()).count(),
            repetitions,
            median_rep,
            timeline,
        }
    }

    /// The analysed repetition with this number.
    pub fn repetition(&self, rep: u32) -> Option<&Repetition> {
        self.repetitions.iter().find(|r| r.rep == rep)
    }
}

fn read_rep(dir: &Path, rep: u32) -> Result<(Vec<Op>, Events)> {
    let ops_path = dir.join(format!("rep{rep}.ops.csv"));
    let events_path = dir.join(format!("rep{rep}.events"));
    let ops_text =
        fs::read_to_string(&ops_path).with_context(|| format!("cannot read {}", ops_path.display()))?;
    let ops = parse_ops(&ops_text).with_context(|| format!("cannot parse {}", ops_path.display()))?;
    let events_text =
        fs::read_to_string(&events_path).with_context(|| format!("cannot read {}", events_path.display()))?;
    let events =
        parse_events(&events_text).with_context(|| format!("cannot parse {}", events_path.display()))?;
    Ok((ops, events))
}

/// Reads and analyses every `rep<i>.ops.csv` (with its `rep<i>.events`) in a failover directory.
/// Returns `None` when there is no repetition.
pub fn load_failover(dir: &Path) -> Result<Option<Failover>> {
    let mut reps: Vec<u32> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("rep")?.strip_suffix(".ops.csv")?.parse().ok()
        })
        .collect();
    if reps.is_empty() {
        return Ok(None);
    }
    reps.sort_unstable();
    let mut analysed = Vec::new();
    for &rep in &reps {
        let (ops, events) = read_rep(dir, rep)?;
        let events_path = dir.join(format!("rep{rep}.events"));
        analysed.push(analyze(rep, &ops, &events).with_context(|| format!("in {}", events_path.display()))?);
    }
    Ok(Some(Failover::summarize(analysed, |rep| read_rep(dir, rep).ok())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: i64 = 1_000_000; // kill time in ms

    fn ok(end_ms: f64) -> Op {
        let end_us = (end_ms * 1000.0) as i64;
        Op {
            start_us: end_us - 500,
            end_us,
            outcome: Outcome::Ok,
        }
    }

    fn op(end_ms: i64, outcome: Outcome) -> Op {
        Op {
            start_us: end_ms * 1000 - 500,
            end_us: end_ms * 1000,
            outcome,
        }
    }

    fn events(restart: Option<i64>) -> Events {
        Events {
            start_ms: Some(K - 1000),
            kill: Some((K, 2)),
            restart: restart.map(|t| (t, 2)),
            stop_ms: Some(K + 10_000),
        }
    }

    #[test]
    fn computes_unavailability_window() {
        let ops = vec![
            ok(K as f64 - 20.0),
            ok(K as f64 - 3.25),
            op(K + 5, Outcome::Unknown),
            op(K + 100, Outcome::Failed),
            ok(K as f64 + 1500.0),
            ok(K as f64 + 1510.0),
            ok(K as f64 + 3000.0),
            ok(K as f64 + 3400.0),
            ok(K as f64 + 4000.0),
        ];
        let r = analyze(1, &ops, &events(Some(K + 3100))).unwrap();
        assert_eq!(r.unavailable_ms, Some(1503.3)); // 1500 + 3.25, one decimal
        assert_eq!(r.to_first_ok_ms, Some(1500.0));
        // Gaps overlapping [restart, restart + 5 s]: 3000→3400 (400) and 3400→4000 (600).
        assert_eq!(r.restart_gap_ms, Some(600.0));
        assert_eq!((r.ok, r.failed, r.unknown, r.killed_node), (7, 1, 1, 2));
        assert_eq!(r.note, None);
    }

    #[test]
    fn ok_exactly_at_kill_counts_as_after() {
        let ops = vec![ok(K as f64 - 10.0), ok(K as f64)];
        let r = analyze(1, &ops, &events(None)).unwrap();
        assert_eq!((r.unavailable_ms, r.to_first_ok_ms), (Some(10.0), Some(0.0)));
        assert_eq!(r.note.as_deref(), Some("no restart"));
    }

    #[test]
    fn reports_no_success_after_kill() {
        let ops = vec![ok(K as f64 - 10.0), op(K + 10, Outcome::Failed)];
        let r = analyze(3, &ops, &events(Some(K + 2000))).unwrap();
        assert_eq!(
            (r.unavailable_ms, r.to_first_ok_ms, r.restart_gap_ms),
            (None, None, None)
        );
        assert!(r.note.unwrap().contains(NO_SUCCESS_AFTER_KILL));
    }

    #[test]
    fn missing_kill_is_an_error() {
        let ev = Events {
            kill: None,
            ..events(None)
        };
        assert!(analyze(1, &[ok(1.0)], &ev).is_err());
    }

    #[test]
    fn median_counts_never_recovered_as_longest() {
        let rep = |rep, unavailable: Option<f64>| Repetition {
            rep,
            killed_node: 1,
            unavailable_ms: unavailable,
            to_first_ok_ms: unavailable,
            restart_gap_ms: None,
            ok: 0,
            failed: 0,
            unknown: 0,
            note: None,
        };
        let f = Failover::summarize(
            vec![rep(1, Some(300.0)), rep(2, None), rep(3, Some(100.0))],
            |_| None,
        );
        assert_eq!(
            f.unavailable_ms,
            Stat {
                median: Some(300.0),
                max: None
            }
        );
        assert_eq!((f.median_rep, f.never_recovered), (Some(1), 1));
        let f = Failover::summarize(vec![rep(1, Some(300.0)), rep(2, Some(100.0))], |_| None);
        assert_eq!(
            f.unavailable_ms,
            Stat {
                median: Some(200.0),
                max: Some(300.0)
            }
        );
        assert_eq!(f.median_rep, Some(2));
    }

    #[test]
    fn parses_ops_and_events() {
        let ops = parse_ops("start_unix_us,end_unix_us,outcome\n1,2,ok\n3,4,failed\n5,6,unknown\n").unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!(
            ops[2],
            Op {
                start_us: 5,
                end_us: 6,
                outcome: Outcome::Unknown
            }
        );
        assert!(parse_ops("h\n1,2,maybe\n")
            .unwrap_err()
            .to_string()
            .contains("line 2"));
        assert!(parse_ops("h\n1,2\n").is_err());
        let ev = parse_events("start 10 0\nrestart 5 1\nkill 20 1\nleader 21 2\nrestart 30 1\nstop 40 0\n")
            .unwrap();
        assert_eq!(
            ev,
            Events {
                start_ms: Some(10),
                kill: Some((20, 1)),
                restart: Some((30, 1)),
                stop_ms: Some(40)
            }
        );
        assert!(parse_events("kill x 1").is_err());
    }

    #[test]
    fn buckets_completions_from_start() {
        let ev = Events {
            start_ms: Some(1000),
            kill: Some((1150, 1)),
            restart: None,
            stop_ms: Some(1300),
        };
        let ops = vec![
            op(1010, Outcome::Ok),
            op(1020, Outcome::Ok),
            op(1150, Outcome::Failed),
            op(1299, Outcome::Ok),
        ];
        let t = timeline(1, &ops, &ev);
        assert_eq!(t.ok_per_s.len(), 3);
        assert_eq!(t.ok_per_s[0], (0.0, 20.0));
        assert_eq!(t.failed_unknown[1], (0.1, 1));
        assert_eq!(t.ok_per_s[2].1, 10.0);
        assert!((t.kill_s - 0.15).abs() < 1e-9);
        assert!((t.end_s - 0.3).abs() < 1e-9);
    }
}
