//! `kveval`: figures and summaries of an evaluation run, and terminal screenshots.
//!
//! ```text
//! kveval report RESULTS --images DIR [--prefix eval-]
//! kveval term2svg --title TITLE [--width-cols N] INPUT.txt OUTPUT.svg
//! ```
//!
//! Paths written go to stdout, warnings to stderr.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use kveval::report::{report, ReportOptions};
use kveval::term2svg;

/// Figures and summaries of an evaluation run, and terminal screenshots.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Plot a results directory and write RESULTS/summary.md and RESULTS/summary.json.
    Report {
        /// The results directory (sweep/, failover/, machine.txt).
        results: PathBuf,
        /// Directory for the SVG figures (created if needed).
        #[arg(long)]
        images: PathBuf,
        /// File name prefix of the figures.
        #[arg(long, default_value = "eval-")]
        prefix: String,
    },
    /// Render captured terminal text as an SVG terminal window.
    Term2svg {
        /// Window title.
        #[arg(long)]
        title: String,
        /// Window width in columns (longer lines are cut); default: the longest line.
        #[arg(long)]
        width_cols: Option<usize>,
        /// The captured text (may contain ANSI colour codes).
        input: PathBuf,
        /// The SVG file to write.
        output: PathBuf,
    },
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Report {
            results,
            images,
            prefix,
        } => {
            let written = report(&ReportOptions {
                results,
                images,
                prefix,
            })?;
            for warning in &written.warnings {
                eprintln!("warning: {warning}");
            }
            for path in &written.paths {
                println!("{}", path.display());
            }
        }
        Command::Term2svg {
            title,
            width_cols,
            input,
            output,
        } => {
            let bytes = fs::read(&input).with_context(|| format!("cannot read {}", input.display()))?;
            let svg = term2svg::render(
                &String::from_utf8_lossy(&bytes),
                &term2svg::Options { title, width_cols },
            );
            fs::write(&output, svg).with_context(|| format!("cannot write {}", output.display()))?;
            println!("{}", output.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
