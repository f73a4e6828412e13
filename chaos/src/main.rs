//! `chaos`: one fault-injection run from the command line (or a check of a recorded history).
//!
//! ```text
//! cargo run --release -p chaos -- --duration 10m --seed 42 --nodes 5 --clients 10 \
//!     --faults kill,pause,partition --history /tmp/chaos.jsonl
//! ```
//!
//! The summary goes to stdout, progress to stderr. See [`cli::Cli`] for the exit codes.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

fn main() -> ExitCode {
    let command = match cli::Cli::parse().into_command() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match execute(command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Run or check; true when the verdict is clean.
fn execute(command: cli::Command) -> anyhow::Result<bool> {
    let stdout = std::io::stdout();
    match command {
        cli::Command::Check(path) => {
            let file =
                std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            let history = chaos::History::read_jsonl(std::io::BufReader::new(file))?;
            let report = chaos::check(&history);
            let mut out = stdout.lock();
            if let Some(meta) = &history.meta {
                writeln!(
                    out,
                    "history of seed {} ({} nodes, {} clients)",
                    meta.seed, meta.nodes, meta.clients
                )?;
            }
            report.render(&history, &mut out)?;
            Ok(report.is_valid())
        }
        cli::Command::Run { config, history } => {
            locate_kvnode()?;
            eprintln!("seed {} (replay: {})", config.seed, config.replay_command());
            let result =
                chaos::run(&config, &mut std::io::stderr()).context("the run could not be carried out")?;
            if let Some(path) = &history {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                let mut writer = std::io::BufWriter::new(file);
                result.history.write_jsonl(&mut writer)?;
                writer.flush()?;
                eprintln!("history written to {}", path.display());
            }
            if !result.passed() {
                result.cluster.dump_logs();
                // The cluster's directory goes away with it: keep the full logs for the report.
                let base = match &history {
                    Some(path) => path.with_extension(""),
                    None => std::env::temp_dir().join(format!("chaos-seed-{}", config.seed)),
                };
                let saved = result.save(&base).context("cannot save the failing run")?;
                let names: Vec<String> = saved.iter().map(|p| p.display().to_string()).collect();
                eprintln!("failing run saved: {}", names.join(" "));
            }
            let mut out = stdout.lock();
            // A closed stdout (e.g. `| head`) must not hide the verdict in the exit code.
            let _ = result.summarize(&config, &mut out);
            Ok(result.passed())
        }
    }
}

/// Point testkit at the `kvnode` binary next to this one (`target/<profile>/`), unless
/// `KVNODE_BIN` already says where it is. testkit's own fallback assumes a test executable in
/// `target/<profile>/deps/`.
fn locate_kvnode() -> anyhow::Result<()> {
    if std::env::var_os("KVNODE_BIN").is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot find the chaos executable")?;
    let sibling = exe.with_file_name("kvnode");
    anyhow::ensure!(
        sibling.exists(),
        "no kvnode binary at {}: build it first (cargo build --release -p kvnode -p chaos) or set KVNODE_BIN",
        sibling.display()
    );
    // Single-threaded at this point: nothing else reads the environment concurrently.
    std::env::set_var("KVNODE_BIN", &sibling);
    Ok(())
}
