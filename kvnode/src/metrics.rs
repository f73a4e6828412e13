//! `GET /metrics`: what a node does, in the Prometheus text format, every series named
//! `kvnode_...` with its unit in the name.
//!
//! Two kinds of series, collected in two ways so that serving traffic pays almost nothing:
//!
//! - **Events** (requests, fsyncs, write groups, snapshots, leader changes) are counted where
//!   they happen, in atomics and histograms (`prometheus-client`'s, whose lock is held for one
//!   bucket increment). They come from four places: the HTTP middleware (`ops_api`), the log
//!   store's writer thread (through `kvlog`'s [`WriteObserver`] hook, so the log crate needs no
//!   metrics library), openraft's [`MetricsRecorder`] (append and apply batch sizes, vote and
//!   heartbeat counts) and the state machine's snapshot hook.
//! - **State** (term, leader, indexes, per-follower progress, keys, the exactly-once table) is
//!   read when Prometheus scrapes, from the Raft metrics openraft already keeps and from the
//!   state machine, and turned into gauges then. Nothing is updated on the hot path for them.
//!
//! docs/OPERATIONS.md lists every series, what it means and what to alert on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::metrics::MetricsRecorder;
use openraft::ServerState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::node::Node;
use crate::store::sm::{SnapshotEvent, SnapshotKind};
use crate::types::{NodeId, Raft};

/// The `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Labels of an HTTP request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The HTTP method.
    pub method: String,
    /// The route pattern (`/keys/{*key}`), never the concrete path, so that the number of
    /// series stays bounded; `unmatched` for paths no route knows.
    pub route: String,
    /// The status code answered.
    pub status: u16,
}

/// Labels of the HTTP latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The HTTP method.
    pub method: String,
    /// The route pattern.
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowerLabels {
    follower: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    node: String,
    version: &'static str,
}

/// Latency buckets from 100 µs to about 13 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 18)
}

/// Count buckets from 1 to 8192, doubling.
fn count_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1.0, 2.0, 14)
}

fn new_latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// What the log store's writer thread reports (see `kvlog::WriteObserver`).
#[derive(Debug)]
pub struct LogMetrics {
    fsync: Histogram,
    group_entries: Histogram,
    group_bytes: Histogram,
    meta_fsync: Histogram,
    failures: Counter,
    failed: AtomicBool,
}

impl kvlog::WriteObserver for LogMetrics {
    fn group_written(&self, group: &kvlog::GroupWritten) {
        self.fsync.observe(group.sync.as_secs_f64());
        self.group_entries.observe(group.entries as f64);
        self.group_bytes.observe(group.bytes as f64);
    }

    fn meta_written(&self, elapsed: Duration) {
        self.meta_fsync.observe(elapsed.as_secs_f64());
    }

    fn failed(&self, _why: &str) {
        self.failures.inc();
        self.failed.store(true, Ordering::Relaxed);
    }
}

impl LogMetrics {
    /// True once a write to the log or the vote has failed.
    pub fn storage_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

/// What openraft reports through its recorder hook. Gauges it forwards are ignored: the same
/// values are read from its metrics at scrape time.
#[derive(Debug)]
struct RaftRecorder {
    append_batch: Histogram,
    apply_batch: Histogram,
    votes: Counter,
    heartbeats: Counter,
    appends: Counter,
}

impl MetricsRecorder for RaftRecorder {
    fn record_apply_batch(&self, entry_count: u64) {
        self.apply_batch.observe(entry_count as f64);
    }
    fn record_append_batch(&self, entry_count: u64) {
        self.append_batch.observe(entry_count as f64);
    }
    fn record_write_batch(&self, _entry_count: u64) {}
    fn set_current_term(&self, _term: u64) {}
    fn set_last_log_index(&self, _index: u64) {}
    fn set_committed_index(&self, _index: u64) {}
    fn set_applied_index(&self, _index: u64) {}
    fn set_snapshot_index(&self, _index: u64) {}
    fn set_purged_index(&self, _index: u64) {}
    fn set_server_state(&self, _state: u8) {}
    fn increment_vote(&self) {
        self.votes.inc();
    }
    fn increment_heartbeat(&self) {
        self.heartbeats.inc();
    }
    fn increment_append(&self) {
        self.appends.inc();
    }
}

/// Every event-counting metric of one node, and the registry that names them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    node: NodeId,
    /// Requests by method, route and status.
    pub http_requests: Family<RequestLabels, Counter>,
    /// Request latency by method and route.
    pub http_duration: Family<RouteLabels, Histogram>,
    /// Requests being served now.
    pub http_in_flight: Gauge,
    log: Arc<LogMetrics>,
    raft: Arc<RaftRecorder>,
    leader_changes: Counter,
    snapshots: Family<KindLabels, Counter>,
    snapshot_duration: Family<KindLabels, Histogram>,
    snapshot_bytes: Gauge,
    snapshot_keys: Gauge,
}

impl Metrics {
    /// The metrics of node `node`, all at zero.
    pub fn new(node: NodeId) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("kvnode");
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Client API requests answered, by method, route pattern and status code",
            http_requests.clone(),
        );
        let http_duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            new_latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time from receiving a client API request to its answer, by method and route pattern",
            Unit::Seconds,
            http_duration.clone(),
        );
        let http_in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "Client API requests being served now (writes waiting for a commit included)",
            http_in_flight.clone(),
        );

        let log = Arc::new(LogMetrics {
            fsync: Histogram::new(latency_buckets()),
            group_entries: Histogram::new(count_buckets()),
            group_bytes: Histogram::new(exponential_buckets(256.0, 4.0, 12)),
            meta_fsync: Histogram::new(latency_buckets()),
            failures: Counter::default(),
            failed: AtomicBool::new(false),
        });
        registry.register_with_unit(
            "log_fsync_duration",
            "Time of each fdatasync of a log write group (the durability cost of a write)",
            Unit::Seconds,
            log.fsync.clone(),
        );
        registry.register(
            "log_write_batch_entries",
            "Log entries made durable by one write group (one pwrite and one fdatasync)",
            log.group_entries.clone(),
        );
        registry.register_with_unit(
            "log_write_batch",
            "Bytes written by one log write group",
            Unit::Bytes,
            log.group_bytes.clone(),
        );
        registry.register_with_unit(
            "log_meta_write_duration",
            "Time to replace the log's meta file durably (vote or purge point)",
            Unit::Seconds,
            log.meta_fsync.clone(),
        );
        registry.register(
            "log_write_failures",
            "Failed log writes; after one the node stops (see kvnode_storage_failed)",
            log.failures.clone(),
        );

        let raft = Arc::new(RaftRecorder {
            append_batch: Histogram::new(count_buckets()),
            apply_batch: Histogram::new(count_buckets()),
            votes: Counter::default(),
            heartbeats: Counter::default(),
            appends: Counter::default(),
        });
        registry.register(
            "raft_append_batch_entries",
            "Entries handed to the log store by one append call of openraft",
            raft.append_batch.clone(),
        );
        registry.register(
            "raft_apply_batch_entries",
            "Committed entries applied to the state machine together",
            raft.apply_batch.clone(),
        );
        registry.register(
            "raft_vote_requests",
            "Vote and pre-vote requests this node answered",
            raft.votes.clone(),
        );
        registry.register(
            "raft_heartbeats",
            "Heartbeat rounds this node sent as leader",
            raft.heartbeats.clone(),
        );
        registry.register(
            "raft_append_entries_requests",
            "AppendEntries requests this node received as follower",
            raft.appends.clone(),
        );
        let leader_changes = Counter::default();
        registry.register(
            "raft_leader_changes",
            "Leaders this node has seen take over (a new leader, or a new term of the same one)",
            leader_changes.clone(),
        );

        let snapshots = Family::<KindLabels, Counter>::default();
        registry.register(
            "snapshots",
            "Snapshots of the state machine built here (kind=built) or received from the leader (kind=installed)",
            snapshots.clone(),
        );
        let snapshot_duration =
            Family::<KindLabels, Histogram>::new_with_constructor(new_latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "snapshot_duration",
            "Time to write and publish a snapshot (built) or to check and load a received one (installed)",
            Unit::Seconds,
            snapshot_duration.clone(),
        );
        let snapshot_bytes = Gauge::default();
        registry.register_with_unit(
            "snapshot_size",
            "Size of the last snapshot built or installed",
            Unit::Bytes,
            snapshot_bytes.clone(),
        );
        let snapshot_keys = Gauge::default();
        registry.register(
            "snapshot_keys",
            "Keys in the last snapshot built or installed",
            snapshot_keys.clone(),
        );

        Arc::new(Metrics {
            registry,
            node,
            http_requests,
            http_duration,
            http_in_flight,
            log,
            raft,
            leader_changes,
            snapshots,
            snapshot_duration,
            snapshot_bytes,
            snapshot_keys,
        })
    }

    /// The observer to give the log store (see `kvlog::LogStoreOptions::observer`).
    pub fn log_observer(&self) -> Arc<LogMetrics> {
        self.log.clone()
    }

    /// True once a write to the log or the vote has failed.
    pub fn storage_failed(&self) -> bool {
        self.log.storage_failed()
    }

    /// Record a snapshot built or installed.
    pub fn snapshot(&self, event: &SnapshotEvent) {
        let kind = KindLabels {
            kind: match event.kind {
                SnapshotKind::Built => "built",
                SnapshotKind::Installed => "installed",
            },
        };
        self.snapshots.get_or_create(&kind).inc();
        self.snapshot_duration
            .get_or_create(&kind)
            .observe(event.took.as_secs_f64());
        self.snapshot_bytes
            .set(i64::try_from(event.bytes).unwrap_or(i64::MAX));
        self.snapshot_keys
            .set(i64::try_from(event.keys).unwrap_or(i64::MAX));
    }

    /// Hook these metrics into a started Raft instance: its recorder, and a task that counts
    /// leader changes until Raft stops.
    pub async fn attach(self: &Arc<Self>, raft: &Raft) {
        if let Err(e) = raft.set_metrics_recorder(Some(self.raft.clone())).await {
            tracing::warn!(error = %e, "cannot install the Raft metrics recorder");
        }
        let mut server = raft.server_metrics();
        let metrics = self.clone();
        tokio::spawn(async move {
            let mut seen = None;
            loop {
                let now = {
                    let m = server.borrow_watched();
                    m.current_leader.map(|l| (l, m.vote.leader_id.term))
                };
                if now.is_some() && now != seen {
                    if seen.is_some() || now.is_some_and(|(_, term)| term > 0) {
                        metrics.leader_changes.inc();
                    }
                    seen = now;
                }
                if server.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// The whole exposition: the event metrics, then the state of `node` as it is now.
    pub fn render(&self, node: &Node) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.state_registry(node))?;
        Ok(text)
    }

    /// Gauges read from Raft's metrics and the state machine at scrape time.
    fn state_registry(&self, node: &Node) -> Registry {
        let mut r = Registry::with_prefix("kvnode");
        let m = node.raft.metrics().borrow_watched().clone();
        let gauge = |v: i64| {
            let g: Gauge = Gauge::default();
            g.set(v);
            g
        };
        let index = |v: Option<u64>| gauge(v.map_or(0, |i| i64::try_from(i).unwrap_or(i64::MAX)));

        let info = Family::<InfoLabels, Gauge>::default();
        info.get_or_create(&InfoLabels {
            node: self.node.to_string(),
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
        r.register(
            "build_info",
            "Always 1; labels name this node and its version",
            info,
        );

        let states = Family::<StateLabels, Gauge>::default();
        for (state, name) in [
            (ServerState::Leader, "leader"),
            (ServerState::Follower, "follower"),
            (ServerState::Candidate, "candidate"),
            (ServerState::Learner, "learner"),
            (ServerState::Shutdown, "shutdown"),
        ] {
            states
                .get_or_create(&StateLabels { state: name })
                .set(i64::from(m.state == state));
        }
        r.register(
            "raft_state",
            "1 for this node's current Raft role, 0 for the others",
            states,
        );
        r.register("raft_term", "The current Raft term", index(Some(m.current_term)));
        r.register(
            "raft_is_leader",
            "1 when this node is the leader",
            gauge(i64::from(m.state == ServerState::Leader)),
        );
        r.register(
            "raft_has_leader",
            "1 when this node knows a leader",
            gauge(i64::from(m.current_leader.is_some())),
        );
        if let Some(leader) = m.current_leader {
            r.register(
                "raft_leader_id",
                "Id of the leader this node knows (absent when it knows none)",
                index(Some(leader)),
            );
        }
        r.register(
            "raft_last_log_index",
            "Index of the last entry in this node's log",
            index(m.last_log_index),
        );
        let committed = m.local_committed.map(|l| l.index);
        let leader_commit = m.cluster_committed.map(|l| l.index).max(committed);
        let applied = m.last_applied.map(|l| l.index);
        r.register(
            "raft_commit_index",
            "Index of the last entry this node knows to be committed",
            index(committed),
        );
        r.register(
            "raft_applied_index",
            "Index of the last entry applied to this node's state machine",
            index(applied),
        );
        r.register(
            "raft_apply_lag_entries",
            "Committed entries (as far as the leader has told this node) not yet applied here",
            index(Some(
                leader_commit.unwrap_or(0).saturating_sub(applied.unwrap_or(0)),
            )),
        );
        r.register(
            "raft_snapshot_index",
            "Last index covered by this node's snapshot",
            index(m.snapshot.map(|l| l.index)),
        );
        r.register(
            "raft_purged_index",
            "Last index deleted from this node's log after a snapshot",
            index(m.purged.map(|l| l.index)),
        );
        let last = m.last_log_index.unwrap_or(0);
        r.register(
            "raft_proposals_pending",
            "On the leader: entries in its log not yet committed (0 elsewhere)",
            index(Some(if m.state == ServerState::Leader {
                last.saturating_sub(committed.unwrap_or(0))
            } else {
                0
            })),
        );
        r.register(
            "raft_voters",
            "Voting members in this node's view of the configuration",
            index(Some(m.membership_config.voter_ids().count() as u64)),
        );

        if let Some(replication) = &m.replication {
            let matched = Family::<FollowerLabels, Gauge>::default();
            let lag = Family::<FollowerLabels, Gauge>::default();
            for (id, log_id) in replication.iter().filter(|(id, _)| **id != node.id) {
                let labels = FollowerLabels {
                    follower: id.to_string(),
                };
                if let Some(l) = log_id {
                    matched
                        .get_or_create(&labels)
                        .set(i64::try_from(l.index).unwrap_or(i64::MAX));
                    lag.get_or_create(&labels)
                        .set(i64::try_from(last.saturating_sub(l.index)).unwrap_or(i64::MAX));
                }
            }
            r.register(
                "raft_follower_matched_index",
                "On the leader: the last index each follower is known to hold",
                matched,
            );
            r.register(
                "raft_follower_lag_entries",
                "On the leader: entries each follower is behind the leader's log (absent while unknown)",
                lag,
            );
        }
        if let Some(heartbeat) = &m.heartbeat {
            let age = Family::<FollowerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
            for (id, acked) in heartbeat.iter().filter(|(id, _)| **id != node.id) {
                if let Some(at) = acked {
                    age.get_or_create(&FollowerLabels {
                        follower: id.to_string(),
                    })
                    .set(elapsed_since(at).as_secs_f64());
                }
            }
            r.register_with_unit(
                "raft_follower_last_ack_age",
                "On the leader: time since each follower last acknowledged a heartbeat or entries",
                Unit::Seconds,
                age,
            );
        }
        if let Some(at) = &m.last_quorum_acked {
            let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
            g.set(elapsed_since(at).as_secs_f64());
            r.register_with_unit(
                "raft_quorum_ack_age",
                "On the leader: time since a majority last acknowledged it (above the election timeout it refuses writes)",
                Unit::Seconds,
                g,
            );
        }

        let (keys, records) = {
            let a = node.sm.read();
            (a.kv.len() as u64, a.kv.records() as u64)
        };
        r.register("keys", "Keys in this node's replica", index(Some(keys)));
        r.register(
            "idempotency_records",
            "Writes remembered by the exactly-once table (the idempotency keys of the last 10 minutes of log time)",
            index(Some(records)),
        );
        let fatal = !matches!(m.running_state, Ok(()) | Err(openraft::errors::Fatal::Stopped));
        r.register(
            "storage_failed",
            "1 once a storage write failed (the node then stops and exits non-zero)",
            gauge(i64::from(fatal || self.storage_failed())),
        );
        r
    }
}

/// Time since an instant in openraft's metrics.
fn elapsed_since<I: openraft::Instant>(at: &openraft::metrics::SerdeInstant<I>) -> Duration {
    (**at).elapsed()
}
