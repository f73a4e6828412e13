//! The markdown and JSON summaries of an evaluation run.

use std::fmt::Write as _;

use serde::Serialize;

use crate::failover::{Failover, Stat, NO_SUCCESS_AFTER_KILL};
use crate::stats::median;
use crate::sweep::{workload_title, Series, Sweep, WorkloadResults};

/// The two series compared in the ratio columns: our system and etcd, both on 3 nodes.
pub fn compared_series() -> (Series, Series) {
    (Series::new("kv", 3), Series::new("etcd", 3))
}

/// `a / b` as `2.31×`, or `–` when the ratio is undefined.
pub fn format_ratio(a: f64, b: f64) -> String {
    match ratio(a, b) {
        Some(r) => format!("{r:.2}×"),
        None => "–".to_string(),
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// Operations per second, rounded, with thousands separators: `12,345`.
pub fn format_ops(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v.round() < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// Latency in ms: two decimals below 10 ms, one above.
pub fn format_latency(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

/// The ratios of one row of a workload table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RatioRow {
    /// Workload.
    pub workload: String,
    /// Concurrent clients.
    pub clients: u32,
    /// kv 3 nodes throughput over etcd 3 nodes throughput.
    pub kv_over_etcd_throughput: Option<f64>,
    /// etcd 3 nodes p99 latency over kv 3 nodes p99 latency (above 1: kv is faster).
    pub etcd_p99_over_kv_p99: Option<f64>,
}

/// The ratio rows of a workload, empty unless both compared series are present.
pub fn ratios(w: &WorkloadResults) -> Vec<RatioRow> {
    let (kv, etcd) = compared_series();
    let (Some(kv), Some(etcd)) = (w.get(&kv), w.get(&etcd)) else {
        return Vec::new();
    };
    w.clients()
        .into_iter()
        .map(|clients| {
            let (k, e) = (kv.cell(clients), etcd.cell(clients));
            let both = k.zip(e);
            RatioRow {
                workload: w.workload.clone(),
                clients,
                kv_over_etcd_throughput: both.and_then(|(k, e)| ratio(k.throughput, e.throughput)),
                etcd_p99_over_kv_p99: both.and_then(|(k, e)| ratio(e.latency_ms.p99, k.latency_ms.p99)),
            }
        })
        .collect()
}

fn workload_table(out: &mut String, w: &WorkloadResults, caption: &str) {
    let ratio_rows = ratios(w);
    let _ = writeln!(out, "### {}\n", workload_title(&w.workload));
    let _ = writeln!(
        out,
        "*{caption} per cell. ops/s = successful operations per second; p50/p99 = latency of successful \
         operations.*\n"
    );
    let mut header = vec!["clients".to_string()];
    for s in &w.series {
        for col in ["ops/s", "p50 ms", "p99 ms"] {
            header.push(format!("{} {col}", s.label));
        }
    }
    if !ratio_rows.is_empty() {
        header.push("kv/etcd throughput".into());
        header.push("etcd p99 / kv p99".into());
    }
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", "---:|".repeat(header.len()));
    for clients in w.clients() {
        let mut row = vec![clients.to_string()];
        for s in &w.series {
            match s.cell(clients) {
                Some(c) => {
                    row.push(format_ops(c.throughput));
                    row.push(format_latency(c.latency_ms.p50));
                    row.push(format_latency(c.latency_ms.p99));
                }
                None => row.extend(["–".to_string(), "–".to_string(), "–".to_string()]),
            }
        }
        if !ratio_rows.is_empty() {
            let (kv, etcd) = compared_series();
            let pair = w
                .get(&kv)
                .and_then(|s| s.cell(clients))
                .zip(w.get(&etcd).and_then(|s| s.cell(clients)));
            match pair {
                Some((k, e)) => {
                    row.push(format_ratio(k.throughput, e.throughput));
                    row.push(format_ratio(e.latency_ms.p99, k.latency_ms.p99));
                }
                None => row.extend(["–".to_string(), "–".to_string()]),
            }
        }
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    let errors: Vec<String> = w
        .series
        .iter()
        .flat_map(|s| s.cells.iter().map(move |c| (s, c)))
        .filter(|(_, c)| c.errors_unknown > 0)
        .map(|(s, c)| {
            let plural = if c.clients == 1 { "" } else { "s" };
            format!(
                "{} with {} client{plural}: {}",
                s.label, c.clients, c.errors_unknown
            )
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(
            out,
            "\nFailed or unknown operations (summed over runs): {}.",
            errors.join("; ")
        );
    }
    out.push('\n');
}

fn format_ms(v: Option<f64>, missing: &str) -> String {
    v.map_or_else(|| missing.to_string(), |v| format!("{v:.1}"))
}

fn format_stat(stat: &Stat, never: bool) -> String {
    let missing = if never { "never" } else { "–" };
    format!(
        "{} / {}",
        format_ms(stat.median, missing),
        format_ms(stat.max, missing)
    )
}

/// `median / max` of counts.
fn count_stat(counts: impl Iterator<Item = u64>) -> String {
    let counts: Vec<f64> = counts.map(|n| n as f64).collect();
    let max = counts.iter().copied().fold(0.0, f64::max);
    format!("{} / {max}", median(&counts).unwrap_or(0.0))
}

fn failover_table(out: &mut String, f: &Failover) {
    out.push_str("## Leader failover\n\n");
    out.push_str(
        "*A steady write load; the leader is killed with `kill -9` and restarted later. unavailable = from \
         the last ok write completed before the kill to the first ok write completed after it; to first \
         ok = from the kill to that first ok write; restart gap = longest gap between consecutive ok \
         writes around the 5 s after the restart. failed/unknown are counted over the whole repetition.*\n\n",
    );
    out.push_str(
        "| repetition | killed node | unavailable ms | to first ok ms | restart gap ms | failed | unknown | note |\n",
    );
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|:---|\n");
    for r in &f.repetitions {
        let plotted = if f.median_rep == Some(r.rep) {
            " (plotted)"
        } else {
            ""
        };
        let never = r.to_first_ok_ms.is_none();
        let missing = if never { NO_SUCCESS_AFTER_KILL } else { "–" };
        let _ = writeln!(
            out,
            "| {}{plotted} | {} | {} | {} | {} | {} | {} | {} |",
            r.rep,
            r.killed_node,
            format_ms(r.unavailable_ms, missing),
            format_ms(r.to_first_ok_ms, missing),
            format_ms(r.restart_gap_ms, "–"),
            r.failed,
            r.unknown,
            r.note.as_deref().unwrap_or(""),
        );
    }
    let never = f.never_recovered > 0;
    let _ = writeln!(
        out,
        "| **median / max** | | **{}** | {} | {} | {} | {} | |",
        format_stat(&f.unavailable_ms, never),
        format_stat(&f.to_first_ok_ms, never),
        format_stat(&f.restart_gap_ms, false),
        count_stat(f.repetitions.iter().map(|r| r.failed)),
        count_stat(f.repetitions.iter().map(|r| r.unknown)),
    );
    if never {
        let _ = writeln!(
            out,
            "\n{} of {} repetitions had no successful write after the kill; they count as unbounded in the \
             median and maximum.",
            f.never_recovered,
            f.repetitions.len()
        );
    }
    out.push('\n');
}

/// Renders the markdown summary: the machine description, one table per workload and the failover
/// table. Absent parts are left out.
pub fn markdown(machine: Option<&str>, sweep: Option<&Sweep>, failover: Option<&Failover>) -> String {
    let mut out = String::from("# Evaluation summary\n\n");
    if let Some(machine) = machine {
        let fence = if machine.contains("```") { "~~~~" } else { "```" };
        let _ = writeln!(
            out,
            "## Machine\n\n{fence}text\n{}\n{fence}\n",
            machine.trim_end()
        );
    }
    if let Some(sweep) = sweep.filter(|s| !s.is_empty()) {
        out.push_str("## Throughput and latency\n\n");
        let caption = sweep.runs_caption();
        let caption = caption[..1].to_uppercase() + &caption[1..];
        for w in &sweep.workloads {
            workload_table(&mut out, w, &caption);
        }
    }
    if let Some(f) = failover {
        failover_table(&mut out, f);
    }
    out
}

/// The machine-readable summary: the same numbers as the markdown.
#[derive(Debug, Serialize)]
pub struct SummaryJson<'a> {
    /// Contents of `machine.txt`, if present.
    pub machine: Option<&'a str>,
    /// Medians per workload, series and client count.
    pub sweep: Option<&'a Sweep>,
    /// kv 3 nodes versus etcd 3 nodes, per workload and client count.
    pub ratios: Vec<RatioRow>,
    /// Per-repetition failover figures with their median and maximum.
    pub failover: Option<&'a Failover>,
}

impl<'a> SummaryJson<'a> {
    /// Collects the parts of the summary.
    pub fn new(machine: Option<&'a str>, sweep: Option<&'a Sweep>, failover: Option<&'a Failover>) -> Self {
        let ratios = sweep
            .map(|s| s.workloads.iter().flat_map(ratios).collect())
            .unwrap_or_default();
        Self {
            machine,
            sweep,
            ratios,
            failover,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::{parse_file_name, Latency, RunReport};

    #[test]
    fn formats_ratios() {
        assert_eq!(format_ratio(2310.0, 1000.0), "2.31×");
        assert_eq!(format_ratio(1.0, 3.0), "0.33×");
        assert_eq!(format_ratio(5.0, 0.0), "–");
        assert_eq!(format_ratio(f64::NAN, 1.0), "–");
    }

    #[test]
    fn formats_numbers() {
        assert_eq!(format_ops(1234567.4), "1,234,567");
        assert_eq!(format_ops(999.6), "1,000");
        assert_eq!(format_ops(12.0), "12");
        assert_eq!(format_latency(8.126), "8.13");
        assert_eq!(format_latency(14.14), "14.1");
    }

    fn run(throughput: f64, p99: f64) -> RunReport {
        let latency_ms = Latency {
            p50: 1.0,
            p90: 2.0,
            p99,
            p999: p99,
            max: p99,
        };
        RunReport {
            throughput,
            latency_ms,
            ok: 1,
            errors: 0,
            unknown: 0,
            duration_s: 5.0,
        }
    }

    #[test]
    fn table_has_ratio_columns_only_with_both_three_node_series() {
        let name = |s: &str| parse_file_name(s).unwrap();
        let sweep = Sweep::aggregate(vec![
            (name("kv_3n_put_c1_r1"), run(2310.0, 2.0)),
            (name("etcd_3n_put_c1_r1"), run(1000.0, 5.0)),
            (name("kv_3n_get_c1_r1"), run(10.0, 1.0)),
        ]);
        let md = markdown(Some("cpu: test"), Some(&sweep), None);
        assert!(md.contains("```text\ncpu: test\n```"));
        assert!(md
            .contains("| clients | kv 3 nodes ops/s | kv 3 nodes p50 ms | kv 3 nodes p99 ms | etcd 3 nodes"));
        assert!(
            md.contains("| 1 | 2,310 | 1.00 | 2.00 | 1,000 | 1.00 | 5.00 | 2.31× | 2.50× |"),
            "{md}"
        );
        assert!(md.contains("*Single run per cell."));
        let get = &md[md.find("### get").unwrap()..];
        assert!(!get.contains("kv/etcd"));
        let json = SummaryJson::new(None, Some(&sweep), None);
        assert_eq!(json.ratios.len(), 1);
        assert_eq!(json.ratios[0].kv_over_etcd_throughput, Some(2.31));
    }
}
