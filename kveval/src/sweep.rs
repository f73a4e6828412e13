//! The load sweep: one JSON report per run, named
//! `<system>_<nodes>n_<workload>_c<clients>_r<run>.json`, reduced to medians over runs for every
//! (system, nodes, workload, clients).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::stats::median;

/// A system under test on a cluster of a given size: one line in the plots, one column group in the
/// tables.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Series {
    /// System name from the file name, e.g. `kv` or `etcd`.
    pub system: String,
    /// Cluster size.
    pub nodes: u32,
}

impl Series {
    /// Creates a series.
    pub fn new(system: impl Into<String>, nodes: u32) -> Self {
        Self {
            system: system.into(),
            nodes,
        }
    }

    /// The human label used in legends and table headers, e.g. `kv 3 nodes`.
    pub fn label(&self) -> String {
        format!("{} {} nodes", self.system, self.nodes)
    }

    /// Whether this is our own system (as opposed to the etcd baseline or anything else).
    pub fn is_ours(&self) -> bool {
        self.system == "kv"
    }

    fn rank(&self) -> (u8, &str, u32) {
        let system_rank = match self.system.as_str() {
            "kv" => 0,
            "etcd" => 1,
            _ => 2,
        };
        (system_rank, &self.system, self.nodes)
    }
}

/// Series order: `kv` first, then `etcd`, then anything else alphabetically; smaller clusters first.
impl Ord for Series {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl PartialOrd for Series {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Sort key for workloads: `put`, `get`, `mixed90`, then anything else alphabetically.
pub fn workload_rank(workload: &str) -> (u8, &str) {
    let rank = match workload {
        "put" => 0,
        "get" => 1,
        "mixed90" => 2,
        _ => 3,
    };
    (rank, workload)
}

/// A workload's name with what it does, for titles: `mixed90 (90% reads, 10% writes)`.
pub fn workload_title(workload: &str) -> String {
    match workload {
        "put" => "put (100% writes)".to_string(),
        "get" => "get (100% reads)".to_string(),
        w => match w.strip_prefix("mixed").and_then(|p| p.parse::<u8>().ok()) {
            Some(p) if p <= 100 => format!("{w} ({p}% reads, {}% writes)", 100 - p),
            _ => w.to_string(),
        },
    }
}

/// What a sweep file name says about its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunName {
    /// System and cluster size.
    pub series: Series,
    /// Workload, e.g. `put`.
    pub workload: String,
    /// Concurrent clients.
    pub clients: u32,
    /// Repetition number.
    pub run: u32,
}

/// Parses `<system>_<nodes>n_<workload>_c<clients>_r<run>.json` (the `.json` suffix is optional).
///
/// System and workload are lowercase ASCII letters and digits starting with a letter; nodes and clients
/// are positive integers.
pub fn parse_file_name(name: &str) -> Result<RunName> {
    let stem = name.strip_suffix(".json").unwrap_or(name);
    let parts: Vec<&str> = stem.split('_').collect();
    let [system, nodes, workload, clients, run] = parts[..] else {
        bail!("`{name}` is not of the form <system>_<nodes>n_<workload>_c<clients>_r<run>.json");
    };
    let word = |what: &str, s: &str| -> Result<String> {
        let ok = s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        ensure!(ok, "bad {what} `{s}` in `{name}`");
        Ok(s.to_string())
    };
    let number = |what: &str, s: &str, prefix: Option<char>, suffix: Option<char>| -> Result<u32> {
        let mut digits = s;
        if let Some(p) = prefix {
            digits = digits.strip_prefix(p).unwrap_or("");
        }
        if let Some(x) = suffix {
            digits = digits.strip_suffix(x).unwrap_or("");
        }
        let ok = !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit());
        ensure!(ok, "bad {what} `{s}` in `{name}`");
        digits
            .parse()
            .with_context(|| format!("bad {what} `{s}` in `{name}`"))
    };
    let nodes = number("node count", nodes, None, Some('n'))?;
    let clients = number("client count", clients, Some('c'), None)?;
    ensure!(nodes > 0 && clients > 0, "zero nodes or clients in `{name}`");
    Ok(RunName {
        series: Series::new(word("system", system)?, nodes),
        workload: word("workload", workload)?,
        clients,
        run: number("run number", run, Some('r'), None)?,
    })
}

/// Latency percentiles in milliseconds, as in the run reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest operation.
    pub max: f64,
}

/// The fields of one run report that the evaluation uses; all other fields are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunReport {
    /// Successful operations per second.
    pub throughput: f64,
    /// Latency of successful operations.
    pub latency_ms: Latency,
    /// Successful operations.
    pub ok: u64,
    /// Operations that definitely failed.
    pub errors: u64,
    /// Operations whose outcome is unknown.
    pub unknown: u64,
    /// Measured duration, seconds.
    pub duration_s: f64,
}

/// The runs of one (series, workload, clients) reduced to medians.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// Concurrent clients.
    pub clients: u32,
    /// Number of runs the medians are taken over.
    pub runs: usize,
    /// Median of the runs' throughputs, ops/s.
    pub throughput: f64,
    /// Median of the runs' values, percentile by percentile.
    pub latency_ms: Latency,
    /// Median measured duration, seconds.
    pub duration_s: f64,
    /// Successful operations, summed over runs.
    pub ok: u64,
    /// Failed plus unknown operations, summed over runs.
    pub errors_unknown: u64,
}

impl Cell {
    /// Reduces the reports of the runs of one configuration; `None` if there are none.
    pub fn from_runs(clients: u32, runs: &[RunReport]) -> Option<Self> {
        let med = |f: fn(&RunReport) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        Some(Cell {
            clients,
            runs: runs.len(),
            throughput: med(|r| r.throughput)?,
            latency_ms: Latency {
                p50: med(|r| r.latency_ms.p50)?,
                p90: med(|r| r.latency_ms.p90)?,
                p99: med(|r| r.latency_ms.p99)?,
                p999: med(|r| r.latency_ms.p999)?,
                max: med(|r| r.latency_ms.max)?,
            },
            duration_s: med(|r| r.duration_s)?,
            ok: runs.iter().map(|r| r.ok).sum(),
            errors_unknown: runs.iter().map(|r| r.errors + r.unknown).sum(),
        })
    }
}

/// One series within one workload: a line in a plot panel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesResults {
    /// System and cluster size.
    #[serde(flatten)]
    pub series: Series,
    /// The series label, e.g. `kv 3 nodes`.
    pub label: String,
    /// One cell per client count present, by increasing client count.
    pub cells: Vec<Cell>,
}

impl SeriesResults {
    /// The cell for a client count, if that configuration was run.
    pub fn cell(&self, clients: u32) -> Option<&Cell> {
        self.cells.iter().find(|c| c.clients == clients)
    }
}

/// All series of one workload: a plot panel and a table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadResults {
    /// Workload name.
    pub workload: String,
    /// Series in [`Series`] order.
    pub series: Vec<SeriesResults>,
}

impl WorkloadResults {
    /// The client counts present in any series, ascending.
    pub fn clients(&self) -> Vec<u32> {
        let mut all: Vec<u32> = self
            .series
            .iter()
            .flat_map(|s| s.cells.iter().map(|c| c.clients))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The results of one series, if present.
    pub fn get(&self, series: &Series) -> Option<&SeriesResults> {
        self.series.iter().find(|s| &s.series == series)
    }
}

/// The whole sweep, workloads in [`workload_rank`] order.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sweep {
    /// One entry per workload present.
    pub workloads: Vec<WorkloadResults>,
}

impl Sweep {
    /// Groups the parsed runs by configuration and takes the medians.
    pub fn aggregate(runs: Vec<(RunName, RunReport)>) -> Self {
        let mut groups: BTreeMap<String, BTreeMap<Series, BTreeMap<u32, Vec<RunReport>>>> = BTreeMap::new();
        for (name, report) in runs {
            groups
                .entry(name.workload)
                .or_default()
                .entry(name.series)
                .or_default()
                .entry(name.clients)
                .or_default()
                .push(report);
        }
        let mut workloads: Vec<WorkloadResults> = groups
            .into_iter()
            .map(|(workload, by_series)| WorkloadResults {
                workload,
                series: by_series
                    .into_iter()
                    .map(|(series, by_clients)| SeriesResults {
                        label: series.label(),
                        series,
                        cells: by_clients
                            .iter()
                            .filter_map(|(&clients, runs)| Cell::from_runs(clients, runs))
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        workloads.sort_by(|a, b| workload_rank(&a.workload).cmp(&workload_rank(&b.workload)));
        Sweep { workloads }
    }

    /// Every series present in any workload, in [`Series`] order (for consistent colours and legends).
    pub fn all_series(&self) -> Vec<Series> {
        let mut all: Vec<Series> = self
            .workloads
            .iter()
            .flat_map(|w| w.series.iter().map(|s| s.series.clone()))
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// The smallest and largest number of runs behind any cell.
    pub fn runs_range(&self) -> Option<(usize, usize)> {
        let runs = self
            .workloads
            .iter()
            .flat_map(|w| &w.series)
            .flat_map(|s| &s.cells)
            .map(|c| c.runs);
        let (min, max) = runs.fold((usize::MAX, 0), |(lo, hi), n| (lo.min(n), hi.max(n)));
        (max > 0).then_some((min, max))
    }

    /// `median of N runs`, or `median of N–M runs` when configurations had different run counts.
    pub fn runs_caption(&self) -> String {
        match self.runs_range() {
            Some((1, 1)) => "single run".to_string(),
            Some((lo, hi)) if lo == hi => format!("median of {lo} runs"),
            Some((lo, hi)) => format!("median of {lo}–{hi} runs"),
            None => "no runs".to_string(),
        }
    }

    /// True when no run was found.
    pub fn is_empty(&self) -> bool {
        self.workloads.is_empty()
    }
}

/// Reads every `*.json` file of a sweep directory.
///
/// Files that are not JSON are ignored; JSON files whose names do not follow the naming scheme are
/// skipped with a warning (returned as the second element); a file that cannot be read or parsed is an
/// error naming that file.
pub fn load_sweep(dir: &Path) -> Result<(Sweep, Vec<String>)> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    let mut runs = Vec::new();
    let mut warnings = Vec::new();
    for entry in entries {
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if !file_name.ends_with(".json") || !path.is_file() {
            continue;
        }
        let name = match parse_file_name(&file_name) {
            Ok(n) => n,
            Err(e) => {
                warnings.push(format!("skipping {}: {e}", path.display()));
                continue;
            }
        };
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let report: RunReport = serde_json::from_str(&text)
            .with_context(|| format!("cannot parse the run report {}", path.display()))?;
        runs.push((name, report));
    }
    Ok((Sweep::aggregate(runs), warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(throughput: f64, p99: f64) -> RunReport {
        RunReport {
            throughput,
            latency_ms: Latency {
                p50: p99 / 2.0,
                p90: p99,
                p99,
                p999: p99,
                max: p99,
            },
            ok: 10,
            errors: 1,
            unknown: 2,
            duration_s: 5.0,
        }
    }

    #[test]
    fn parses_good_file_names() {
        let n = parse_file_name("kv_3n_put_c64_r2.json").unwrap();
        assert_eq!(n.series, Series::new("kv", 3));
        assert_eq!((n.workload.as_str(), n.clients, n.run), ("put", 64, 2));
        let n = parse_file_name("etcd_5n_mixed90_c1_r10.json").unwrap();
        assert_eq!(n.series.label(), "etcd 5 nodes");
        assert_eq!((n.workload.as_str(), n.clients, n.run), ("mixed90", 1, 10));
    }

    #[test]
    fn rejects_bad_file_names() {
        for bad in [
            "kv_3n_put_c64.json",
            "kv_3n_put_c64_r2_x.json",
            "kv_3_put_c64_r2.json",
            "kv_3n_put_64_r2.json",
            "kv_3n_put_c64_2.json",
            "kv_3n_put_c_r2.json",
            "kv_0n_put_c64_r2.json",
            "kv_3n_put_c0_r2.json",
            "KV_3n_put_c64_r2.json",
            "kv_3n__c64_r2.json",
            "kv_3n_put_c-1_r2.json",
            "kv_3n_put_c99999999999_r2.json",
            "machine.json",
        ] {
            assert!(parse_file_name(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn aggregates_medians_and_orders_series_and_workloads() {
        let name = |s: &str| parse_file_name(s).unwrap();
        let sweep = Sweep::aggregate(vec![
            (name("etcd_3n_put_c4_r1"), report(100.0, 9.0)),
            (name("kv_3n_put_c4_r1"), report(300.0, 4.0)),
            (name("kv_3n_put_c4_r2"), report(100.0, 2.0)),
            (name("kv_3n_put_c4_r3"), report(200.0, 8.0)),
            (name("kv_3n_put_c1_r1"), report(50.0, 1.0)),
            (name("kv_3n_get_c1_r1"), report(50.0, 1.0)),
            (name("kv_3n_aaa_c1_r1"), report(50.0, 1.0)),
        ]);
        let order: Vec<_> = sweep.workloads.iter().map(|w| w.workload.as_str()).collect();
        assert_eq!(order, ["put", "get", "aaa"]);
        let put = &sweep.workloads[0];
        assert_eq!(put.series[0].label, "kv 3 nodes");
        assert_eq!(put.series[1].label, "etcd 3 nodes");
        assert_eq!(put.clients(), [1, 4]);
        let cell = put.series[0].cell(4).unwrap();
        assert_eq!((cell.runs, cell.throughput, cell.latency_ms.p99), (3, 200.0, 4.0));
        assert_eq!(cell.latency_ms.p50, 2.0);
        assert_eq!(cell.errors_unknown, 9);
        assert_eq!(cell.ok, 30);
        assert_eq!(sweep.runs_range(), Some((1, 3)));
        assert_eq!(sweep.runs_caption(), "median of 1–3 runs");
    }

    #[test]
    fn workload_titles() {
        assert_eq!(workload_title("mixed90"), "mixed90 (90% reads, 10% writes)");
        assert_eq!(workload_title("put"), "put (100% writes)");
        assert_eq!(workload_title("scan"), "scan");
    }

    #[test]
    fn report_ignores_unknown_fields() {
        let json = r#"{"workload":"put","clients":64,"duration_s":5.0,"ok":35000,"errors":0,"unknown":0,
            "throughput":6999.5,"latency_ms":{"p50":8.1,"p90":10.2,"p99":14.1,"p999":20.3,"max":31.0},
            "error_samples":[["msg",3]],"timeline":[],"verification":null}"#;
        let r: RunReport = serde_json::from_str(json).unwrap();
        assert_eq!(r.throughput, 6999.5);
        assert_eq!(r.latency_ms.p999, 20.3);
    }
}
