//! A node's settings, validated, whichever way they were given on the command line.
//!
//! A node starts in one of two ways. With a *seed* (a cluster file, or the assignment's
//! positional addresses) it knows the members a new cluster starts with: it forms that
//! cluster with them, or, when it already exists, becomes part of it again. With `--join` it
//! knows only where a running cluster answers, and asks to be added to it as a learner. Either
//! way, after the first start the cluster's own membership (in its log) is what counts; the
//! seed is only where the node first looks.

use std::path::PathBuf;
use std::time::Duration;

use kvapi::cluster::check_host_port;
use kvapi::ClusterFile;

use crate::tls::{ClientPortFiles, PeerFiles};
use crate::types::NodeId;

/// Limits of group commit (see `batcher`).
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most writes in one entry.
    pub max_ops: usize,
    /// Soft limit on the bytes of one entry (a single larger write still goes alone).
    pub max_bytes: usize,
    /// Entries being committed at once.
    pub max_in_flight: usize,
    /// How long to wait for a commit before answering "outcome unknown".
    pub write_timeout: Duration,
}

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id.
    pub id: NodeId,
    /// Client API address (`host:port`), bound and advertised.
    pub http_addr: String,
    /// Peer address (`host:port`), bound and advertised.
    pub raft_addr: String,
    /// The members a new cluster starts with (this node included), sorted by id; empty when
    /// the node joins a running cluster instead.
    pub seed: Vec<SeedMember>,
    /// Fingerprint of the seed: nodes agree to form a cluster only with nodes that have the
    /// same one (see `cluster`).
    pub seed_fingerprint: String,
    /// `--join`: client addresses of members of the running cluster to join.
    pub join: Vec<String>,
    /// `--join-token-file`: the token a `--join` node sends to those client addresses, when
    /// they check tokens (`read` suffices).
    pub join_token_file: Option<PathBuf>,
    /// `--force-new-cluster`: restart this node's data as a one-member cluster.
    pub force_new_cluster: bool,
    /// Where the log, vote and snapshots live.
    pub data_dir: PathBuf,
    /// Largest accepted value (serialized JSON bytes).
    pub max_value_bytes: usize,
    /// How long a request waits for a leader during an election before 503.
    pub leader_wait: Duration,
    /// Bound on one leadership confirmation for reads.
    pub read_timeout: Duration,
    /// Group commit limits, including the write timeout.
    pub batch: BatchLimits,
    /// Heartbeat interval.
    pub heartbeat_ms: u64,
    /// Election timeout, lower bound.
    pub election_min_ms: u64,
    /// Election timeout, upper bound.
    pub election_max_ms: u64,
    /// Build a snapshot after this many log entries.
    pub snapshot_every: u64,
    /// How much history of changes the node keeps for watchers.
    pub watch_history: crate::history::HistoryLimits,
    /// Where the client listener binds, when not on `http_addr` (e.g. `0.0.0.0:8080`).
    pub listen_http: Option<String>,
    /// Where the peer listener binds, when not on `raft_addr`.
    pub listen_raft: Option<String>,
    /// HTTPS on the client port.
    pub client_tls: Option<ClientPortFiles>,
    /// Mutual TLS on the peer port.
    pub peer_tls: Option<PeerFiles>,
    /// The cluster file's addresses say `https://`: TLS is expected (client port, peer port).
    pub tls_expected: (bool, bool),
    /// Bearer tokens with roles (see `auth`); `None`: the client port is open.
    pub auth_file: Option<PathBuf>,
    /// Client requests served at once; more are answered `503 overloaded`.
    pub max_client_requests: usize,
    /// Bound on a TLS handshake and on reading a request's headers, both ports.
    pub header_timeout: Duration,
    /// Bound on reading a request body, both ports (for a snapshot stream: on any gap in it).
    pub body_timeout: Duration,
    /// Largest snapshot accepted from a peer, in bytes.
    pub max_snapshot_bytes: u64,
}

/// One member of the seed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeedMember {
    /// Its id.
    pub id: NodeId,
    /// Its peer address.
    pub raft: String,
    /// Its client address, when the seed says it (cluster files do, the positional form only
    /// for this node).
    pub http: Option<String>,
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl NodeConfig {
    /// Settings with defaults for node `id` of the given seed.
    fn with_defaults(id: NodeId, http_addr: String, raft_addr: String, mut seed: Vec<SeedMember>) -> Self {
        seed.sort();
        let pairs: Vec<(NodeId, String)> = seed.iter().map(|m| (m.id, m.raft.clone())).collect();
        let seed_fingerprint = if seed.is_empty() {
            String::new()
        } else {
            fingerprint(&pairs)
        };
        NodeConfig {
            id,
            http_addr,
            raft_addr,
            seed,
            seed_fingerprint,
            join: Vec::new(),
            join_token_file: None,
            force_new_cluster: false,
            data_dir: PathBuf::from(format!("data/node{id}")),
            max_value_bytes: kvapi::DEFAULT_MAX_VALUE_BYTES,
            leader_wait: kvapi::DEFAULT_LEADER_WAIT,
            read_timeout: Duration::from_secs(3),
            batch: BatchLimits {
                max_ops: 1024,
                max_bytes: 4 * 1024 * 1024,
                max_in_flight: 1,
                write_timeout: kvapi::DEFAULT_WRITE_TIMEOUT,
            },
            heartbeat_ms: 50,
            election_min_ms: 300,
            election_max_ms: 600,
            snapshot_every: 10_000,
            watch_history: crate::history::HistoryLimits::default(),
            listen_http: None,
            listen_raft: None,
            client_tls: None,
            peer_tls: None,
            tls_expected: (false, false),
            auth_file: None,
            max_client_requests: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_snapshot_bytes: 64 * 1024 * 1024 * 1024,
        }
    }

    /// The largest peer request body: one AppendEntries part (see `peer_client`) is at most
    /// `MAX_APPEND_BYTES`, unless a single entry is larger; an entry is a batch of at most
    /// `batch.max_bytes` plus the one write that crossed that soft limit. The rest is room
    /// for the encoding. Snapshots are streamed to disk and limited apart
    /// ([`NodeConfig::max_snapshot_bytes`]).
    pub fn peer_body_limit(&self) -> usize {
        let entry = self.batch.max_bytes + self.max_value_bytes + kvapi::MAX_KEY_BYTES + 64 * 1024;
        crate::peer_client::MAX_APPEND_BYTES.max(entry) + 1024 * 1024
    }

    /// Where the client listener binds.
    pub fn client_listen_addr(&self) -> &str {
        self.listen_http.as_deref().unwrap_or(&self.http_addr)
    }

    /// Where the peer listener binds.
    pub fn peer_listen_addr(&self) -> &str {
        self.listen_raft.as_deref().unwrap_or(&self.raft_addr)
    }

    /// Node `id` of the cluster described by a cluster file.
    pub fn from_cluster_file(file: &ClusterFile, id: NodeId) -> Result<Self, ConfigError> {
        let me = file.get(id).ok_or_else(|| {
            let ids: Vec<String> = file.node.iter().map(|n| n.id.to_string()).collect();
            ConfigError(format!(
                "node id {id} is not in the cluster file (it lists {})",
                ids.join(", ")
            ))
        })?;
        let seed = file
            .node
            .iter()
            .map(|n| SeedMember {
                id: n.id,
                raft: n.raft.clone(),
                http: Some(n.http.clone()),
            })
            .collect();
        let mut config = Self::with_defaults(id, me.http.clone(), me.raft.clone(), seed);
        config.tls_expected = (file.client_tls, file.peer_tls);
        if let Some(tls) = file.tls.as_ref().map(|t| t.for_node(id)) {
            config.client_tls = match (tls.cert, tls.key) {
                (Some(cert), Some(key)) => Some(ClientPortFiles {
                    cert,
                    key,
                    client_ca: tls.client_ca,
                }),
                (None, None) if tls.client_ca.is_none() => None,
                _ => {
                    return Err(ConfigError(
                        "the cluster file's [tls] needs both cert and key for the client port (client_ca needs them too)"
                            .into(),
                    ))
                }
            };
            config.peer_tls = match (tls.peer_cert, tls.peer_key, tls.peer_ca) {
                (Some(cert), Some(key), Some(ca)) => Some(PeerFiles { cert, key, ca }),
                (None, None, None) => None,
                _ => return Err(ConfigError(
                    "the cluster file's [tls] needs all of peer_cert, peer_key and peer_ca for the peer port"
                        .into(),
                )),
            };
        }
        Ok(config)
    }

    /// `--join`: node `id` listening on `http` and `raft`, to be added to the cluster that
    /// answers at one of the client addresses `join`.
    pub fn for_join(id: NodeId, http: &str, raft: &str, join: &[String]) -> Result<Self, ConfigError> {
        check_host_port(http).map_err(|e| ConfigError(format!("--http {http:?} {e}")))?;
        check_host_port(raft).map_err(|e| ConfigError(format!("--raft {raft:?} {e}")))?;
        if http == raft {
            return Err(ConfigError(
                "--http and --raft must be different addresses".into(),
            ));
        }
        if join.is_empty() {
            return Err(ConfigError(
                "--join needs at least one client address of a member of the cluster".into(),
            ));
        }
        for a in join {
            let bare = join_scheme(a)
                .map_err(|e| ConfigError(format!("--join address {a:?} {e}")))?
                .1;
            check_host_port(bare).map_err(|e| ConfigError(format!("--join address {a:?} {e}")))?;
        }
        let mut config = Self::with_defaults(id, http.to_string(), raft.to_string(), Vec::new());
        config.join = join.to_vec();
        Ok(config)
    }

    /// The assignment's form: this node's HTTP port, its Raft address, the others' Raft
    /// addresses. Ids are the positions of the Raft addresses in sorted order, so every node
    /// derives the same ids from the same set of addresses.
    pub fn from_positional(http_port: u16, raft: &str, others: &[String]) -> Result<Self, ConfigError> {
        check_host_port(raft).map_err(|e| ConfigError(format!("raft address {raft:?} {e}")))?;
        let mut all: Vec<String> = others.to_vec();
        for a in &all {
            check_host_port(a).map_err(|e| ConfigError(format!("peer address {a:?} {e}")))?;
        }
        all.push(raft.to_string());
        all.sort();
        if all.windows(2).any(|w| w[0] == w[1]) {
            return Err(ConfigError("a Raft address is listed twice".into()));
        }
        let id = all
            .iter()
            .position(|a| a == raft)
            .map(|i| i as NodeId)
            .ok_or_else(|| ConfigError("own raft address missing".into()))?;
        let host = raft.rsplit_once(':').map(|(h, _)| h).unwrap_or("127.0.0.1");
        if http_port == 0 {
            return Err(ConfigError("the HTTP port must be 1-65535".into()));
        }
        let http = format!("{host}:{http_port}");
        let seed = all
            .iter()
            .enumerate()
            .map(|(i, a)| SeedMember {
                id: i as NodeId,
                raft: a.clone(),
                http: (i as NodeId == id).then(|| http.clone()),
            })
            .collect();
        Ok(Self::with_defaults(id, http, raft.to_string(), seed))
    }

    /// Check the settings fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.election_min_ms <= self.heartbeat_ms || self.election_max_ms <= self.election_min_ms {
            return Err(ConfigError(format!(
                "timing must satisfy heartbeat < election-min < election-max (got {} < {} < {})",
                self.heartbeat_ms, self.election_min_ms, self.election_max_ms
            )));
        }
        if self.max_value_bytes == 0 {
            return Err(ConfigError("--max-value-bytes must be positive".into()));
        }
        if self.snapshot_every == 0 {
            return Err(ConfigError("--snapshot-every must be positive".into()));
        }
        if self.watch_history.changes == 0 || self.watch_history.bytes == 0 {
            return Err(ConfigError(
                "--watch-history-changes and --watch-history-bytes must be positive".into(),
            ));
        }
        if self.tls_expected.0 && self.client_tls.is_none() {
            return Err(ConfigError(
                "the cluster file gives https:// client addresses, but no certificate for the client port: \
                 give --cert-file and --key-file, or cert and key in the cluster file's [tls]"
                    .into(),
            ));
        }
        if self.tls_expected.1 && self.peer_tls.is_none() {
            return Err(ConfigError(
                "the cluster file gives https:// raft addresses, but no peer certificates: give \
                 --peer-cert-file, --peer-key-file and --peer-ca-file, or peer_cert, peer_key and \
                 peer_ca in the cluster file's [tls]"
                    .into(),
            ));
        }
        if self.peer_tls.is_none() {
            if let Some(a) = self.join.iter().find(|a| a.starts_with("https://")) {
                return Err(ConfigError(format!(
                    "--join address {a:?} speaks TLS, but this node has no CA to check it with: give \
                     --peer-cert-file, --peer-key-file and --peer-ca-file (the cluster's peer \
                     certificates), or an http:// address"
                )));
            }
        }
        if self.max_client_requests == 0 {
            return Err(ConfigError("--max-client-requests must be positive".into()));
        }
        if self.header_timeout.is_zero() || self.body_timeout.is_zero() {
            return Err(ConfigError(
                "--header-timeout-ms and --body-timeout-ms must be positive".into(),
            ));
        }
        for (what, addr) in [
            ("--listen-client", &self.listen_http),
            ("--listen-peer", &self.listen_raft),
        ] {
            if let Some(addr) = addr {
                check_host_port(addr).map_err(|e| ConfigError(format!("{what} {addr:?} {e}")))?;
            }
        }
        Ok(())
    }
}

/// A short, stable name for a member list: FNV-1a over the sorted `(id, raft address)` pairs.
/// It names a seed; clusters formed before cluster ids existed also use it as their id.
pub fn fingerprint(members: &[(NodeId, String)]) -> String {
    let mut sorted = members.to_vec();
    sorted.sort();
    let text: String = sorted.iter().map(|(id, a)| format!("{id}={a};")).collect();
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}")
}

/// Split a `--join` address into whether it names its scheme (`Some(true)`: `https://`,
/// `Some(false)`: `http://`, `None`: a bare `host:port`) and the `host:port` after it.
pub fn join_scheme(addr: &str) -> Result<(Option<bool>, &str), String> {
    if let Some(rest) = addr.strip_prefix("https://") {
        return Ok((Some(true), rest));
    }
    if let Some(rest) = addr.strip_prefix("http://") {
        return Ok((Some(false), rest));
    }
    match addr.split_once("://") {
        Some((scheme, _)) => Err(format!(
            "has scheme {scheme:?}; give http://, https:// or a bare host:port"
        )),
        None => Ok((None, addr)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positional_form_gives_every_node_the_same_ids() {
        let a = NodeConfig::from_positional(
            8080,
            "127.0.0.1:6000",
            &["127.0.0.1:6001".into(), "127.0.0.1:6002".into()],
        )
        .expect("valid");
        let c = NodeConfig::from_positional(
            8082,
            "127.0.0.1:6002",
            &["127.0.0.1:6001".into(), "127.0.0.1:6000".into()],
        )
        .expect("valid");
        assert_eq!(a.id, 0);
        assert_eq!(c.id, 2);
        assert_eq!(a.seed_fingerprint, c.seed_fingerprint);
        let ids = |c: &NodeConfig| c.seed.iter().map(|m| (m.id, m.raft.clone())).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&c));
        assert_eq!(a.http_addr, "127.0.0.1:8080");
    }

    #[test]
    fn bad_positional_input_is_refused() {
        assert!(NodeConfig::from_positional(8080, "nonsense", &[]).is_err());
        assert!(NodeConfig::from_positional(8080, "h:1", &["h:1".into()]).is_err());
        assert!(NodeConfig::from_positional(0, "h:1", &[]).is_err());
    }

    #[test]
    fn the_seed_fingerprint_is_the_one_clusters_were_named_by_before_cluster_ids() {
        // A directory of a cluster formed before cluster ids records this fingerprint as its
        // cluster; it must not change (see `store::Identity`).
        let c = NodeConfig::from_positional(
            8080,
            "127.0.0.1:6000",
            &["127.0.0.1:6001".into(), "127.0.0.1:6002".into()],
        )
        .expect("valid");
        let pairs: Vec<(NodeId, String)> = (0..3).map(|i| (i, format!("127.0.0.1:600{i}"))).collect();
        assert_eq!(c.seed_fingerprint, fingerprint(&pairs));
        assert_eq!(
            fingerprint(&pairs),
            "02ae3703214e962e",
            "the stored format of old clusters"
        );
    }

    #[test]
    fn join_settings_are_checked() {
        let ok = NodeConfig::for_join(3, "h:1", "h:2", &["h:8080".into()]).expect("valid");
        assert!(ok.seed.is_empty() && ok.seed_fingerprint.is_empty());
        assert!(NodeConfig::for_join(3, "h:1", "h:1", &["h:8080".into()]).is_err());
        assert!(NodeConfig::for_join(3, "h:1", "h:2", &[]).is_err());
        assert!(NodeConfig::for_join(3, "nope", "h:2", &["h:8080".into()]).is_err());
        let schemes = NodeConfig::for_join(
            3,
            "h:1",
            "h:2",
            &["http://h:8080".into(), "https://g:8081".into()],
        )
        .expect("addresses may say which scheme they speak");
        assert_eq!(schemes.join, ["http://h:8080", "https://g:8081"]);
        for bad in ["ftp://h:8080", "https://h", "http://:8080"] {
            let e = NodeConfig::for_join(3, "h:1", "h:2", &[bad.into()]).expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
        // https:// needs a CA to check the member with: the peer CA.
        let e = schemes.validate().expect_err("https without peer TLS");
        assert!(e.to_string().contains("--peer-ca-file"), "{e}");
        let plain = NodeConfig::for_join(3, "h:1", "h:2", &["http://h:8080".into()]).expect("valid");
        plain.validate().expect("http:// needs nothing");
    }
}
