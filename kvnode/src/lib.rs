//! `kvnode`: one node of a Raft-replicated key/value store, on openraft 0.10.
//!
//! # The life of a write
//!
//! 1. [`client_api`] reads `POST /keys/{key}`, validates the key, the body, the value's size and
//!    the `Idempotency-Key` (a UUIDv7), and turns it into an [`types::Op`].
//! 2. [`node::Node::write`] routes it: on the leader it goes to the [`batcher`]; elsewhere it is
//!    forwarded over the peer port ([`peer_client`] → the leader's [`peer_api`]), and during an
//!    election it waits for a leader.
//! 3. The [`batcher`] groups the writes that arrive together into one log entry and proposes
//!    it with `client_write`.
//! 4. openraft appends the entry to the leader's log (the `kvlog` crate, see [`store`]), which
//!    accepts it at once and fsyncs it in the background, grouped with its neighbours; openraft
//!    replicates it meanwhile. Followers acknowledge once their copy is fsynced; the leader
//!    counts itself once its own fsync is done. With a majority holding it the entry is
//!    committed.
//! 5. The state machine ([`store::sm`]) applies it: [`state::KvState`] changes the keys and
//!    decides each operation's outcome, the idempotency table answering retries from memory.
//!    The outcome travels back to the client through the batcher and the handler.
//!
//! # The life of a read
//!
//! A linearizable `GET` asks the leader for a read index ([`node::Node::read_index`]): the
//! leader confirms with a majority that it still leads (openraft's ReadIndex, one heartbeat
//! round shared by all reads waiting), the node that serves the read waits until it has
//! applied that far, and reads its own copy. `?consistency=stale` skips the first two steps.
//!
//! # Conditional writes and watches
//!
//! A write may carry a condition (`If-Match: "<mod_index>"`, `If-None-Match: *`); it travels
//! inside the [`types::Op`] and is checked by [`state::KvState`] while applying, like the
//! idempotency key (see `state` for why not earlier). Every applied change is also kept in the
//! node's [`history`], from which [`watch`] serves `GET /watch` as a stream of server-sent
//! events, on any node, from that node's own applied state.
//!
//! # On disk
//!
//! ```text
//! DATA_DIR/
//!   node.json    who the directory belongs to (node id, cluster id)    store
//!   log/         log entries, vote, purge point, commit hint           the kvlog crate
//!   snapshots/   the newest snapshot of the state machine              store::snapshot
//! ```
//!
//! # Around it
//!
//! [`cluster`] names clusters, forms a new one, admits nodes that have no data and holds the
//! voting rules; [`membership`] changes the members (learners, promotion, removal, leader
//! transfer); [`server`] starts, serves and stops a node; [`config`] is its validated settings; [`error`] maps failures to HTTP
//! answers; [`wire`] is everything that crosses the peer port.
//!
//! # Operations
//!
//! [`ops_api`] serves `/health`, `/ready`, `/metrics` and `/admin/snapshot` and gives every
//! client request an id and a span; [`metrics`] keeps the Prometheus series; [`restore`]
//! builds a new cluster's data directories from a snapshot file (`kvnode restore`).
//!
//! # Facing the network
//!
//! [`listener`] accepts connections on both ports, with TLS when configured ([`tls`]; `kvnode
//! certs` is [`certs`]), and bounds how long a client may take to send a request; [`auth`]
//! decides who may do what on the client port (bearer tokens with roles, one rule table by
//! method and path). Without TLS the peer port trusts anyone who can reach it: see README,
//! "Running it securely".

pub mod auth;
pub mod batcher;
pub mod certs;
pub mod client_api;
pub mod cluster;
pub mod config;
pub mod error;
pub mod history;
pub mod idem;
pub mod listener;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod ops_api;
pub mod peer_api;
pub mod peer_client;
pub mod restore;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
pub mod types;
pub mod watch;
pub mod wire;

pub use config::NodeConfig;
pub use server::{run, Bound, RunError};
