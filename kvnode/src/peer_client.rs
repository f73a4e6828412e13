//! Outgoing peer traffic: Raft RPCs and forwarded client requests, over one pooled HTTP client.
//!
//! Every request names the node it is meant for and the cluster it belongs to (headers
//! `x-kv-target` and `x-kv-cluster`, the latter the cluster's id, see `cluster`); the receiver
//! refuses a mismatch, so a stale address or a node of another cluster can never join in by
//! accident. A node learns its cluster id when the cluster forms or admits it, so the header
//! is read from a shared cell at each request. Bodies are binary (see `wire`).
//! Those headers keep out mistakes, not attackers: anyone can compute them. With mutual TLS
//! (see `tls`) every connection, the replication stream included, presents this node's
//! certificate and accepts only a certificate that names the node it is meant for; each
//! target has its own HTTP client for that, since the name to expect differs per target.
//!
//! Where a peer listens is read from the current membership at each connection (an address
//! book the node keeps up to date), not from the address openraft knew when it set up the
//! replication to it: `kvctl member update` then takes effect at the next connection.
//!
//! Failures are sorted by what they mean for a write: [`PeerError::NotSent`] (the connection was
//! never made, so the request certainly did nothing) versus [`PeerError::Unknown`] (it may have
//! been received). Forwarding relies on that distinction to retry only what is safe to retry.
//!
//! Replication (and heartbeats) run over long-lived streams (see `wire::stream` and
//! [`PeerConn::stream_append`]): the leader writes each AppendEntries as soon as it has it,
//! without waiting for the answer to the one before, and the follower answers in order. That
//! keeps several batches in flight per follower and saves an HTTP exchange per batch. A stream
//! that ended cleanly is kept for the next session to the same peer.
//!
//! Timeouts fit the payload. openraft bounds a replication call by the heartbeat interval,
//! which is right for a heartbeat and wrong for a request carrying megabytes to a follower that
//! is catching up: it would time out every time and never catch up. So an AppendEntries is
//! split into parts of at most [`MAX_APPEND_BYTES`], and each answer is awaited for a base plus
//! the part's size at a conservative transfer rate; a snapshot likewise.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

use futures_util::StreamExt;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use crate::tls::PeerTls;

use crate::store::sm::Snapshot;
use crate::store::snapshot::SnapshotFile;
use crate::types::{NodeId, NodeInfo, TypeConfig, Vote};
use crate::wire::{self, route, SnapshotHeader, CLUSTER_HEADER, CONTENT_TYPE, TARGET_HEADER};

/// Largest AppendEntries body sent in one call (a single larger entry still goes alone).
pub const MAX_APPEND_BYTES: usize = 4 * 1024 * 1024;
/// Every peer call gets at least this long.
const BASE_TIMEOUT: Duration = Duration::from_millis(500);
/// Transfer rate assumed when sizing a deadline: slow enough for a loaded small machine.
const BYTES_PER_SEC: u64 = 10 * 1024 * 1024;

/// A deadline for sending `bytes`: at least `floor`, else a base plus the transfer time.
pub fn deadline_for(bytes: u64, floor: Duration) -> Duration {
    floor.max(BASE_TIMEOUT + Duration::from_millis(bytes.saturating_mul(1000) / BYTES_PER_SEC))
}

/// Why a peer request failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No connection could be made: the request was certainly not processed.
    #[error("peer {addr} is unreachable: {reason}")]
    NotSent {
        /// The peer address.
        addr: String,
        /// The cause.
        reason: String,
    },
    /// The request may have reached the peer, but no answer came back.
    #[error("no answer from peer {addr}: {reason}")]
    Unknown {
        /// The peer address.
        addr: String,
        /// The cause.
        reason: String,
    },
    /// The peer answered with an error status; the body is the peer's error document.
    #[error("peer {addr} answered {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]))]
    Remote {
        /// The peer address.
        addr: String,
        /// HTTP status.
        status: u16,
        /// Body.
        body: Vec<u8>,
    },
}

/// The pooled client for all peer traffic of one node.
#[derive(Clone)]
pub struct PeerClient {
    /// Plain HTTP, for every target; unused under TLS.
    http: reqwest::Client,
    /// For other nodes' client ports (a `--join` node asking who the members are).
    client_api: reqwest::Client,
    shared: Arc<Shared>,
    /// Mutual TLS, when the peer port speaks it.
    tls: Option<Arc<PeerTls>>,
    /// Under TLS, one client per target: each accepts only its target's certificate.
    by_target: Arc<Mutex<HashMap<NodeId, reqwest::Client>>>,
}

/// What every clone of a [`PeerClient`] sees alike.
#[derive(Default)]
struct Shared {
    /// This node's cluster id, sent with every request.
    cluster: RwLock<Option<String>>,
    /// Peer addresses by node id, from the current membership.
    addresses: RwLock<HashMap<NodeId, String>>,
    /// Bearer token for other nodes' client ports.
    client_api_token: RwLock<Option<String>>,
}

/// A connection to a peer, plain or TLS.
trait PeerIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin> PeerIo for T {}

type Io = Box<dyn PeerIo>;

/// An open replication stream (see `wire::stream`).
struct StreamConn {
    reader: BufReader<ReadHalf<Io>>,
    writer: WriteHalf<Io>,
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .no_proxy()
}

impl PeerClient {
    /// A client for a node of cluster `cluster` (`None`: it has none yet); `tls`: mutual TLS
    /// on the peer port.
    pub fn new(cluster: Option<String>, tls: Option<Arc<PeerTls>>) -> Result<Self, reqwest::Error> {
        crate::tls::install_default_provider();
        let http = builder().build()?;
        let client_api = match &tls {
            None => http.clone(),
            Some(tls) => builder()
                .tls_backend_preconfigured((*tls.client_api_config()).clone())
                .build()?,
        };
        let shared = Shared {
            cluster: RwLock::new(cluster),
            addresses: RwLock::default(),
            client_api_token: RwLock::default(),
        };
        Ok(PeerClient {
            http,
            client_api,
            shared: Arc::new(shared),
            tls,
            by_target: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The token sent with [`PeerClient::get_client_api`] requests (a `--join` node's, for a
    /// cluster whose client ports check tokens).
    pub fn set_client_api_token(&self, token: Option<String>) {
        *self
            .shared
            .client_api_token
            .write()
            .unwrap_or_else(|p| p.into_inner()) = token;
    }

    /// The HTTP client and URL scheme for requests to `target`.
    fn http_for(&self, addr: &str, target: NodeId) -> Result<(reqwest::Client, &'static str), PeerError> {
        let Some(tls) = &self.tls else {
            return Ok((self.http.clone(), "http"));
        };
        let mut clients = self.by_target.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&target) {
            return Ok((client.clone(), "https"));
        }
        let not_sent = |reason: String| PeerError::NotSent {
            addr: addr.to_string(),
            reason,
        };
        let config = tls
            .client_config_for(target)
            .map_err(|e| not_sent(e.to_string()))?;
        let client = builder()
            .tls_backend_preconfigured((*config).clone())
            .build()
            .map_err(|e| not_sent(error_chain(&e)))?;
        clients.insert(target, client.clone());
        Ok((client, "https"))
    }

    /// The cluster id sent with requests.
    pub fn cluster(&self) -> Option<String> {
        self.shared
            .cluster
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Change the cluster id sent with requests.
    pub fn set_cluster(&self, cluster: Option<String>) {
        *self.shared.cluster.write().unwrap_or_else(|p| p.into_inner()) = cluster;
    }

    /// Replace the address book (peer addresses by node id).
    pub fn set_addresses(&self, addresses: HashMap<NodeId, String>) {
        *self.shared.addresses.write().unwrap_or_else(|p| p.into_inner()) = addresses;
    }

    /// Where node `id` listens, by the address book.
    pub fn address_of(&self, id: NodeId) -> Option<String> {
        self.shared
            .addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// GET a JSON document from another node's client API at `addr`: `http://host:port`,
    /// `https://host:port`, or a bare `host:port`, which is reached over HTTPS when this node's
    /// peer port speaks mutual TLS and over plain HTTP otherwise.
    pub async fn get_client_api<T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<T, PeerError> {
        // Over HTTPS this node presents its peer certificate and trusts the peer CA
        // (`kvnode certs` signs both kinds with one CA).
        let url = match crate::config::join_scheme(addr) {
            Ok((Some(_), _)) => format!("{addr}{path}"),
            _ if self.tls.is_some() => format!("https://{addr}{path}"),
            _ => format!("http://{addr}{path}"),
        };
        let mut request = self.client_api.get(url).timeout(timeout);
        let token = self
            .shared
            .client_api_token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(token) = token {
            request = request.header(reqwest::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let resp = request.send().await.map_err(|e| PeerError::NotSent {
            addr: addr.to_string(),
            reason: error_chain(&e),
        })?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| PeerError::Unknown {
            addr: addr.to_string(),
            reason: error_chain(&e),
        })?;
        if !(200..300).contains(&status) {
            return Err(PeerError::Remote {
                addr: addr.to_string(),
                status,
                body: body.to_vec(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| PeerError::Unknown {
            addr: addr.to_string(),
            reason: format!("unreadable answer: {e}"),
        })
    }

    /// [`PeerClient::post`] with `cluster` in the cluster header instead of this node's own:
    /// how a node without a cluster asks a member to admit it.
    pub async fn post_as<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        cluster: &str,
        addr: &str,
        target: NodeId,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let bytes = self
            .send(
                Some(cluster),
                addr,
                target,
                path,
                reqwest::Body::from(wire::encode(body)),
                timeout,
            )
            .await?;
        wire::decode(&bytes).map_err(|e| PeerError::Unknown {
            addr: addr.to_string(),
            reason: e.to_string(),
        })
    }

    /// POST a MessagePack-encoded `body` to node `target` at `addr` and decode a 2xx answer.
    pub async fn post<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        target: NodeId,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let bytes = self
            .post_raw(
                addr,
                target,
                path,
                reqwest::Body::from(wire::encode(body)),
                timeout,
            )
            .await?;
        wire::decode(&bytes).map_err(|e| PeerError::Unknown {
            addr: addr.to_string(),
            reason: e.to_string(),
        })
    }

    /// POST `body` as it is and return the bytes of a 2xx answer.
    pub async fn post_raw(
        &self,
        addr: &str,
        target: NodeId,
        path: &str,
        body: reqwest::Body,
        timeout: Duration,
    ) -> Result<Vec<u8>, PeerError> {
        let cluster = self.cluster();
        self.send(cluster.as_deref(), addr, target, path, body, timeout)
            .await
    }

    async fn send(
        &self,
        cluster: Option<&str>,
        addr: &str,
        target: NodeId,
        path: &str,
        body: reqwest::Body,
        timeout: Duration,
    ) -> Result<Vec<u8>, PeerError> {
        let unknown = |reason: String| PeerError::Unknown {
            addr: addr.to_string(),
            reason,
        };
        let (http, scheme) = self.http_for(addr, target)?;
        let mut request = http
            .post(format!("{scheme}://{addr}{path}"))
            .header(TARGET_HEADER, target.to_string())
            .header("content-type", CONTENT_TYPE)
            .timeout(timeout)
            .body(body);
        if let Some(cluster) = cluster {
            request = request.header(CLUSTER_HEADER, cluster);
        }
        let resp = request.send().await.map_err(|e| {
            if e.is_connect() {
                PeerError::NotSent {
                    addr: addr.to_string(),
                    reason: error_chain(&e),
                }
            } else {
                unknown(error_chain(&e))
            }
        })?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| unknown(error_chain(&e)))?;
        if !(200..300).contains(&status) {
            return Err(PeerError::Remote {
                addr: addr.to_string(),
                status,
                body: body.to_vec(),
            });
        }
        Ok(body.to_vec())
    }
}

/// An error and all its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// openraft's network factory: one [`PeerConn`] per target, all sharing the pooled client.
pub struct PeerNetwork {
    client: PeerClient,
}

impl PeerNetwork {
    /// Wrap the node's pooled client.
    pub fn new(client: PeerClient) -> Self {
        PeerNetwork { client }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        PeerConn {
            client: self.client.clone(),
            target,
            node: node.clone(),
            idle: None,
            last_open_failure: None,
        }
    }
}

/// Raft RPCs to one peer.
pub struct PeerConn {
    client: PeerClient,
    target: NodeId,
    node: NodeInfo,
    /// The replication stream of the last session, when it ended cleanly, and the address it
    /// is connected to.
    idle: Option<(String, StreamConn)>,
    /// When opening a replication stream last failed. openraft starts its backoff only once
    /// its core has seen the error; until then its replication task asks for a new stream at
    /// once, thousands of times in a fraction of a second when a follower has just died.
    last_open_failure: Option<Instant>,
}

/// Least time between two attempts to open a replication stream to a peer that refused one.
const REOPEN_PAUSE: Duration = Duration::from_millis(50);

fn rpc_error(e: PeerError) -> RPCError<TypeConfig> {
    match e {
        // Nothing was sent, or the peer refused us before doing anything (wrong cluster or id,
        // an error of its own): back off as from an unreachable node.
        PeerError::NotSent { .. } | PeerError::Remote { .. } => RPCError::Unreachable(Unreachable::new(&e)),
        PeerError::Unknown { .. } => RPCError::Network(NetworkError::new(&e)),
    }
}

impl PeerConn {
    /// Where the peer listens now: the address book, else what openraft was given.
    fn addr(&self) -> String {
        self.client
            .address_of(self.target)
            .unwrap_or_else(|| self.node.raft.clone())
    }

    /// Open a replication stream: a connection upgraded by `POST /raft/stream`, over mutual
    /// TLS when the peer port speaks it, with the same check of the peer's certificate as every
    /// other peer request.
    async fn open_stream(&self, addr: &str) -> Result<StreamConn, PeerError> {
        let not_sent = |reason: String| PeerError::NotSent {
            addr: addr.to_string(),
            reason,
        };
        let tcp = tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| not_sent("connecting timed out".into()))?
            .map_err(|e| not_sent(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let io: Io = match &self.client.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let config = tls
                    .client_config_for(self.target)
                    .map_err(|e| not_sent(e.to_string()))?;
                let name = rustls_pki_types::ServerName::try_from(crate::tls::node_name(self.target))
                    .map_err(|e| not_sent(e.to_string()))?;
                let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
                let tls = tokio::time::timeout(BASE_TIMEOUT, connect)
                    .await
                    .map_err(|_| not_sent("the TLS handshake timed out".into()))?
                    .map_err(|e| not_sent(format!("the TLS handshake failed: {e}")))?;
                Box::new(tls)
            }
        };
        let (read, mut writer) = tokio::io::split(io);
        let mut reader = BufReader::new(read);
        let cluster = self
            .client
            .cluster()
            .map(|c| format!("{CLUSTER_HEADER}: {c}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST {} HTTP/1.1\r\nhost: {addr}\r\n{TARGET_HEADER}: {}\r\n{cluster}\
             connection: upgrade\r\nupgrade: {}\r\ncontent-length: 0\r\n\r\n",
            route::STREAM,
            self.target,
            wire::stream::PROTOCOL,
        );
        let handshake = async {
            writer.write_all(request.as_bytes()).await?;
            let mut status = String::new();
            reader.read_line(&mut status).await?;
            let mut refusal = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
                    break;
                }
                refusal.push_str(line.trim_end());
                refusal.push(' ');
            }
            Ok::<_, std::io::Error>((status, refusal))
        };
        let (status, headers) = tokio::time::timeout(BASE_TIMEOUT, handshake)
            .await
            .map_err(|_| not_sent("the stream handshake timed out".into()))?
            .map_err(|e| not_sent(e.to_string()))?;
        if !status.starts_with("HTTP/1.1 101") {
            // Refused before anything was processed (identity mismatch, old peer).
            return Err(not_sent(format!(
                "the peer refused a replication stream: {} {headers}",
                status.trim()
            )));
        }
        Ok(StreamConn { reader, writer })
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        self.client
            .post(&self.addr(), self.target, path, req, timeout)
            .await
            .map_err(rpc_error)
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConn {
    type SnapshotData = SnapshotFile;

    /// Send a stream of AppendEntries over one replication stream, answers read in order.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures_util::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            let addr = self.addr();
            let conn = match self.idle.take() {
                // A stream to an address the peer no longer has is not worth reusing.
                Some((at, conn)) if at == addr => conn,
                _ => {
                    if let Some(failed) = self.last_open_failure {
                        tokio::time::sleep_until(failed + REOPEN_PAUSE).await;
                    }
                    match self.open_stream(&addr).await {
                        Ok(conn) => {
                            self.last_open_failure = None;
                            conn
                        }
                        Err(e) => {
                            self.last_open_failure = Some(Instant::now());
                            return Err(rpc_error(e));
                        }
                    }
                }
            };
            let StreamConn { reader, writer } = conn;
            let (sent_tx, sent_rx) = mpsc::unbounded_channel();
            let writer = tokio::spawn(send_requests(input, writer, sent_tx));
            let session = Session {
                reader: Some(reader),
                sent: sent_rx,
                writer: Some(writer),
                idle: &mut self.idle,
                floor: option.hard_ttl(),
                addr,
            };
            let answers = futures_util::stream::unfold(session, |mut s| async move {
                let answer = s.next_answer().await?;
                Some((answer, s))
            });
            Ok(answers.boxed())
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let (body, sent) = wire::encode_append(&rpc, MAX_APPEND_BYTES);
        let timeout = deadline_for(body.len() as u64, option.hard_ttl());
        let bytes = self
            .client
            .post_raw(&self.addr(), self.target, route::APPEND, body.into(), timeout)
            .await
            .map_err(rpc_error)?;
        let resp: AppendEntriesResponse<TypeConfig> =
            wire::decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // Entries left out for size follow in the next call: tell openraft how far this one got.
        if sent < rpc.entries.len() && resp.is_success() {
            return Ok(AppendEntriesResponse::PartialSuccess(Some(
                rpc.entries[sent - 1].log_id,
            )));
        }
        Ok(resp)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(route::VOTE, &rpc, deadline_for(0, option.hard_ttl()))
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(route::PRE_VOTE, &rpc, deadline_for(0, option.hard_ttl()))
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let SnapshotFile { file, len, .. } = snapshot.snapshot;
        let header = wire::frame(&SnapshotHeader {
            vote,
            meta: snapshot.meta,
            len,
        });
        let head =
            futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(header)) });
        let file = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 256 * 1024);
        let body = reqwest::Body::wrap_stream(futures_util::StreamExt::chain(head, file));
        let timeout = deadline_for(len, option.hard_ttl()) + Duration::from_secs(10);
        let addr = self.addr();
        let send = self
            .client
            .post_raw(&addr, self.target, route::SNAPSHOT, body, timeout);
        let bytes = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = send => r.map_err(|e| match rpc_error(e) {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Network(n) => StreamingError::Network(n),
                other => StreamingError::Network(NetworkError::new(&other)),
            })?,
        };
        wire::decode(&bytes).map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(route::TRANSFER_LEADER, &req, deadline_for(0, option.hard_ttl()))
            .await
    }
}

/// Write each request of `input` to the stream as it comes, split into parts, and tell the
/// reader how many answers to expect for it and how many bytes it carried.
async fn send_requests<S>(
    mut input: S,
    mut writer: WriteHalf<Io>,
    sent: mpsc::UnboundedSender<(usize, u64)>,
) -> std::io::Result<WriteHalf<Io>>
where
    S: futures_util::Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    while let Some(req) = input.next().await {
        let parts = wire::encode_append_parts(&req, MAX_APPEND_BYTES);
        let bytes = parts.iter().map(|p| p.len() as u64).sum();
        wire::stream::write_frames(&mut writer, &parts).await?;
        if sent.send((parts.len(), bytes)).is_err() {
            break;
        }
    }
    Ok(writer)
}

/// One `stream_append` session: reads the answers for what the writer sent.
struct Session<'s> {
    reader: Option<BufReader<ReadHalf<Io>>>,
    sent: mpsc::UnboundedReceiver<(usize, u64)>,
    writer: Option<tokio::task::JoinHandle<std::io::Result<WriteHalf<Io>>>>,
    /// Where a cleanly finished stream is kept for the next session.
    idle: &'s mut Option<(String, StreamConn)>,
    floor: Duration,
    addr: String,
}

impl Session<'_> {
    fn failed(&mut self, reason: String) -> Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>> {
        self.reader = None;
        let e = PeerError::Unknown {
            addr: self.addr.clone(),
            reason,
        };
        Err(RPCError::Network(NetworkError::new(&e)))
    }

    async fn next_answer(&mut self) -> Option<Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> {
        let mut reader = self.reader.take()?;
        let Some((parts, bytes)) = self.sent.recv().await else {
            // The input ended and everything sent was answered: keep the stream for later.
            let writer = self.writer.take()?.await;
            return match writer {
                Ok(Ok(writer)) => {
                    *self.idle = Some((self.addr.clone(), StreamConn { reader, writer }));
                    None
                }
                Ok(Err(e)) => Some(self.failed(format!("sending on the replication stream failed: {e}"))),
                Err(e) => Some(self.failed(format!("the replication sender stopped: {e}"))),
            };
        };
        let limit = deadline_for(bytes, self.floor) + Duration::from_secs(1);
        let mut acknowledged = None;
        for _ in 0..parts {
            let frame = match tokio::time::timeout(limit, wire::stream::read_frame(&mut reader)).await {
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) => return Some(self.failed("the peer closed the replication stream".into())),
                Ok(Err(e)) => {
                    return Some(self.failed(format!("reading the replication stream failed: {e}")))
                }
                Err(_) => {
                    return Some(self.failed(format!(
                        "no answer on the replication stream within {} ms",
                        limit.as_millis()
                    )))
                }
            };
            match wire::decode::<StreamAppendResult<TypeConfig>>(&frame) {
                Ok(Ok(matched)) => acknowledged = Some(matched),
                // A conflict or a higher vote ends the session; the peer closes the stream.
                Ok(Err(refusal)) => return Some(Ok(Err(refusal))),
                Err(e) => return Some(self.failed(e.to_string())),
            }
        }
        self.reader = Some(reader);
        acknowledged.map(|matched| Ok(Ok(matched)))
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            writer.abort();
        }
    }
}
