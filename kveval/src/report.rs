//! `kveval report`: reads a results directory and writes the figures and summaries.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::failover::load_failover;
use crate::plots;
use crate::summary::{markdown, SummaryJson};
use crate::sweep::load_sweep;

/// What to read and where to write.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// The results directory (with `sweep/`, `failover/` and optionally `machine.txt`).
    pub results: PathBuf,
    /// Where the SVG figures go (created if needed).
    pub images: PathBuf,
    /// File name prefix of the figures, e.g. `eval-`.
    pub prefix: String,
}

/// What [`report`] did.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// Every file written, in order.
    pub paths: Vec<PathBuf>,
    /// Things skipped or missing, for the user.
    pub warnings: Vec<String>,
}

/// Reads the results and writes `<prefix>throughput.svg`, `<prefix>latency.svg` (when there are sweep
/// results), `<prefix>failover.svg` (when there are failover results), `summary.md` and
/// `summary.json` (in the results directory).
pub fn report(options: &ReportOptions) -> Result<Written> {
    let results = &options.results;
    let mut written = Written::default();

    let machine_path = results.join("machine.txt");
    let machine = if machine_path.is_file() {
        Some(
            fs::read_to_string(&machine_path)
                .with_context(|| format!("cannot read {}", machine_path.display()))?,
        )
    } else {
        None
    };

    let sweep_dir = results.join("sweep");
    let sweep = if sweep_dir.is_dir() {
        let (sweep, warnings) = load_sweep(&sweep_dir)?;
        written.warnings.extend(warnings);
        if sweep.is_empty() {
            written
                .warnings
                .push(format!("no run reports in {}", sweep_dir.display()));
            None
        } else {
            Some(sweep)
        }
    } else {
        written.warnings.push(format!(
            "no {}: no throughput or latency figures",
            sweep_dir.display()
        ));
        None
    };

    let failover_dir = results.join("failover");
    let failover = if failover_dir.is_dir() {
        let failover = load_failover(&failover_dir)?;
        if failover.is_none() {
            written
                .warnings
                .push(format!("no rep<i>.ops.csv in {}", failover_dir.display()));
        }
        failover
    } else {
        written
            .warnings
            .push(format!("no {}: no failover figure", failover_dir.display()));
        None
    };

    if sweep.is_none() && failover.is_none() {
        bail!(
            "nothing to report in {}: no sweep or failover results",
            results.display()
        );
    }

    fs::create_dir_all(&options.images)
        .with_context(|| format!("cannot create {}", options.images.display()))?;
    let image = |name: &str| options.images.join(format!("{}{name}", options.prefix));
    if let Some(sweep) = &sweep {
        let path = image("throughput.svg");
        plots::throughput_svg(sweep, &path)?;
        written.paths.push(path);
        let path = image("latency.svg");
        plots::latency_svg(sweep, &path)?;
        written.paths.push(path);
    }
    if let Some(failover) = &failover {
        let path = image("failover.svg");
        if plots::failover_svg(failover, &path)? {
            written.paths.push(path);
        } else {
            written
                .warnings
                .push("no repetition with a measurable unavailability: no failover figure".into());
        }
    }

    let md = markdown(machine.as_deref(), sweep.as_ref(), failover.as_ref());
    written.paths.push(write(&results.join("summary.md"), &md)?);
    let json = SummaryJson::new(machine.as_deref(), sweep.as_ref(), failover.as_ref());
    let json = serde_json::to_string_pretty(&json).context("cannot serialise the summary")?;
    written
        .paths
        .push(write(&results.join("summary.json"), &(json + "\n"))?);
    Ok(written)
}

fn write(path: &Path, contents: &str) -> Result<PathBuf> {
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_json(throughput: f64, p50: f64, p99: f64) -> String {
        format!(
            r#"{{"workload":"put","clients":4,"duration_s":5.0,"keys":1000,"ok":100,"errors":1,"unknown":0,
            "throughput":{throughput},"latency_ms":{{"p50":{p50},"p90":1.0,"p99":{p99},"p999":9.0,"max":9.5}},
            "error_samples":[["msg",3]],"timeline":[],"verification":null}}"#
        )
    }

    /// Writes a small results directory: two workloads, kv and etcd on 3 nodes, two runs; two failover
    /// repetitions.
    fn synthetic_results(dir: &Path) {
        let sweep = dir.join("sweep");
        fs::create_dir_all(&sweep).unwrap();
        for workload in ["put", "mixed90"] {
            for clients in [1u32, 4, 16] {
                for run in 1..=2 {
                    let c = f64::from(clients);
                    let kv = run_json(1000.0 * c + f64::from(run), 1.0, 2.0 + c / 4.0);
                    let etcd = run_json(400.0 * c, 2.0, 6.0 + c / 2.0);
                    fs::write(sweep.join(format!("kv_3n_{workload}_c{clients}_r{run}.json")), kv).unwrap();
                    fs::write(
                        sweep.join(format!("etcd_3n_{workload}_c{clients}_r{run}.json")),
                        etcd,
                    )
                    .unwrap();
                }
            }
        }
        fs::write(sweep.join("notes.txt"), "ignored").unwrap();
        let failover = dir.join("failover");
        fs::create_dir_all(&failover).unwrap();
        let t0: i64 = 1_764_471_230_000; // ms
        for (rep, outage_ms) in [(1, 1200), (2, 800)] {
            let kill = t0 + 3000;
            let mut csv = String::from("start_unix_us,end_unix_us,outcome\n");
            let mut t = t0;
            while t < t0 + 8000 {
                let outcome = if t >= kill && t < kill + outage_ms {
                    "failed"
                } else {
                    "ok"
                };
                csv += &format!("{},{},{outcome}\n", t * 1000, (t + 2) * 1000);
                t += if outcome == "failed" { 200 } else { 5 };
            }
            fs::write(failover.join(format!("rep{rep}.ops.csv")), csv).unwrap();
            let events = format!(
                "start {t0} 0\nkill {kill} 1\nrestart {} 1\nstop {} 0\n",
                t0 + 5000,
                t0 + 8000
            );
            fs::write(failover.join(format!("rep{rep}.events")), events).unwrap();
        }
        fs::write(dir.join("machine.txt"), "model name: Test CPU\ncores: 2\n").unwrap();
    }

    #[test]
    fn report_writes_figures_and_summaries() {
        let tmp = tempfile::tempdir().unwrap();
        let results = tmp.path().join("results");
        synthetic_results(&results);
        let images = tmp.path().join("images");
        let options = ReportOptions {
            results: results.clone(),
            images: images.clone(),
            prefix: "eval-".into(),
        };
        let written = report(&options).unwrap();
        assert_eq!(written.paths.len(), 5, "{:?}", written.paths);
        assert!(written.warnings.is_empty(), "{:?}", written.warnings);

        let read = |p: PathBuf| fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let throughput = read(images.join("eval-throughput.svg"));
        assert!(throughput.starts_with("<svg") && throughput.contains("kv 3 nodes"));
        assert!(throughput.contains("etcd 3 nodes") && throughput.contains("mixed90 (90% reads"));
        assert!(throughput.contains("median of 2 runs"));
        let latency = read(images.join("eval-latency.svg"));
        assert!(latency.contains("latency (ms, log scale)"));
        let failover = read(images.join("eval-failover.svg"));
        assert!(failover.contains("kill -9 leader") && failover.contains("restart"));
        // Rep 2's outage (last ok before the kill ends 3 ms before it, first ok after it 802 ms after
        // it: 805 ms) is the lower median of two.
        assert!(failover.contains("repetition 2 of 2"), "{failover}");

        let md = read(results.join("summary.md"));
        assert!(md.contains("```text\nmodel name: Test CPU\ncores: 2\n```"));
        assert!(md.contains("### put (100% writes)") && md.contains("### mixed90"));
        assert!(md.contains("Median of 2 runs per cell"));
        // 16 clients: kv 16001.5 ops/s vs etcd 6400 → 2.50×; p99 14 vs 6 → 2.33×.
        assert!(
            md.contains("| 16 | 16,002 | 1.00 | 6.00 | 6,400 | 2.00 | 14.0 | 2.50× | 2.33× |"),
            "{md}"
        );
        assert!(md.contains("## Leader failover") && md.contains("| 2 (plotted) | 1 | 805.0 | 802.0 |"));
        assert!(
            md.contains("| **median / max** | | **1005.0 / 1205.0** | 1002.0 / 1202.0 |"),
            "{md}"
        );
        assert!(md.contains("etcd 3 nodes with 16 clients: 2"));

        let json: serde_json::Value = serde_json::from_str(&read(results.join("summary.json"))).unwrap();
        assert_eq!(json["failover"]["repetitions"].as_array().unwrap().len(), 2);
        assert_eq!(json["failover"]["median_rep"], 2);
        assert_eq!(json["sweep"]["workloads"][0]["workload"], "put");
    }

    #[test]
    fn unparsable_report_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let sweep = tmp.path().join("sweep");
        fs::create_dir_all(&sweep).unwrap();
        fs::write(sweep.join("kv_3n_put_c1_r1.json"), "{\"throughput\": 1").unwrap();
        let options = ReportOptions {
            results: tmp.path().into(),
            images: tmp.path().join("img"),
            prefix: String::new(),
        };
        let err = format!("{:#}", report(&options).unwrap_err());
        assert!(err.contains("kv_3n_put_c1_r1.json"), "{err}");
    }

    #[test]
    fn empty_results_are_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let options = ReportOptions {
            results: tmp.path().into(),
            images: tmp.path().into(),
            prefix: String::new(),
        };
        assert!(report(&options).is_err());
    }
}
