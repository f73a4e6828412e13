//! The client library behind `kvctl`: everything an operator's tool needs to talk to a kvnode
//! cluster, shared by the one-shot commands, the REPL and the benchmark.
//!
//! The pieces, in the order a request meets them:
//!
//! - [`endpoint`]: where the nodes are (a cluster file or a list of URLs) and how a key becomes
//!   a URL path.
//! - [`client`]: the async [`Client`]. It finds the leader, sends each request straight to it,
//!   and when the leader disappears it discovers the new one and retries with backoff until the
//!   caller's deadline. Every write carries one idempotency key for all of its attempts, so a
//!   retried APPEND lands exactly once.
//! - [`transport`]: one HTTP exchange with one node, and the one verdict on what a failed
//!   exchange says about a write; shared by the client, `kvctl bench` and the chaos workload.
//! - [`retry`]: the pure policy behind the client's retries: which failures are worth another
//!   attempt and how long to wait in between.
//! - [`error`]: the typed errors a caller can act on, and the process exit code each one maps to.
//! - [`value`]: how a command-line argument becomes a JSON value.
//! - [`survey`]: the cluster-wide picture assembled from every node's status: who leads, how far
//!   each follower trails, whether there is a quorum.
//! - [`bench`]: the load generator behind `kvctl bench`.
//! - [`snapshot`]: backups, `kvctl snapshot save` and `kvctl snapshot status`.
//! - [`watch`]: the [`Watcher`](watch::Watcher), which follows `GET /watch` across nodes and
//!   resumes after a failover with no gap and no duplicate.
//! - [`output`]: rendering of results as tables, JSON or plain lines into any `io::Write`.
//!
//! Nothing here prints on its own: diagnostics go through `tracing`, results through [`output`].

#![warn(missing_docs)]

pub mod bench;
pub mod client;
pub mod endpoint;
pub mod error;
pub mod output;
pub mod retry;
pub mod security;
pub mod snapshot;
pub mod survey;
pub mod transport;
pub mod value;
pub mod watch;

#[cfg(test)]
mod mock_server;

pub use client::{Client, ClientConfig, LeaderInfo, WriteOutcome};
pub use endpoint::Endpoint;
pub use error::{ClientError, Exit};
pub use survey::NodeReport;
