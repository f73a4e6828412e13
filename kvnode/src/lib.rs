//! `kvnode`: one node of a Raft-replicated key/value store.
//!
//! The pieces, from the outside in:
//! - [`api`]: the client HTTP API; [`error`]: how failures become HTTP answers.
//! - [`node`]: routing of writes and reads to the leader, cluster formation, status.
//! - [`batcher`]: group commit of concurrent writes; [`reads`]: shared leadership checks.
//! - [`peer`] and [`network`]: the peer listener and the pooled peer client.
//! - [`store`]: the durable log (redb) and the state machine with its snapshots.
//! - [`state`]: the deterministic key/value semantics and the idempotency table.
//! - [`server`]: start, serve, stop.

pub mod api;
pub mod batcher;
pub mod config;
pub mod error;
pub mod network;
pub mod node;
pub mod peer;
pub mod reads;
pub mod server;
pub mod state;
pub mod store;
pub mod types;

pub use config::NodeConfig;
pub use server::{run, Bound, RunError};
