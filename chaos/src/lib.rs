//! Jepsen-style fault injection for the kvnode cluster: real nodes, real faults, a recorded
//! history and a checker that catches lost, duplicated or stale results.
//!
//! The pieces, in the order a run uses them:
//!
//! - [`netns`]: as root, one network namespace per node, so partitions cut real peer traffic.
//! - [`nemesis`]: a seeded schedule of faults (kill -9 and restart, SIGSTOP/SIGCONT,
//!   partitions, wiping a follower's data, adding and removing members) and the executor that
//!   applies it and records every action.
//! - [`workload`]: concurrent clients appending unique values and reading them back, through
//!   kvctl's client (via the leader) or one bare attempt at a random node.
//! - [`watchers`]: kvctl's watcher following the keys through every fault, recording each
//!   change it delivers.
//! - [`history`]: the record of every operation (invoke time, completion time, outcome) and
//!   fault, as JSON lines.
//! - [`checker`]: the pure function that judges a history, with unit tests on hand-made
//!   histories for every anomaly class.
//! - [`run`]: one whole run, from starting the cluster to the verdict.
//!
//! The `chaos` binary runs one (long) run from the command line; `tests/short.rs` runs short
//! ones as part of `cargo test`, and `tests/scenarios.rs` holds scripted scenarios that need
//! exact control over which node is cut off when.

#![warn(missing_docs)]

pub mod checker;
pub mod history;
pub mod nemesis;
pub mod netns;
pub mod run;
pub mod watchers;
pub mod workload;

pub use checker::{check, Anomaly, AnomalyKind, Report};
pub use history::{History, Op, OpKind, Outcome, Recorder};
pub use run::{run, RunConfig, RunError, RunResult};
