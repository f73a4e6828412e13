//! `kveval`: turns the raw results of an evaluation run (written by `bin/evaluate.sh`) into SVG plots
//! and markdown/JSON summaries, and renders captured terminal text as SVG "screenshots".
//!
//! - [`sweep`]: per-run JSON reports of the load sweep, reduced to medians.
//! - [`failover`]: the leader-kill experiment: unavailability windows and timelines.
//! - [`plots`]: the SVG figures (plotters, SVG backend only).
//! - [`summary`]: `summary.md` and `summary.json`.
//! - [`report`]: the `kveval report` command tying these together.
//! - [`term2svg`]: the `kveval term2svg` command.

#![warn(missing_docs)]

pub mod failover;
pub mod plots;
pub mod report;
pub mod stats;
pub mod summary;
pub mod sweep;
pub mod term2svg;
