//! Accepting connections and serving HTTP/1.1 on them, with or without TLS, against hostile
//! clients.
//!
//! Both ports are served here rather than by `axum::serve`, because a node that faces the
//! network needs what `axum::serve` does not let us set:
//!
//! - **A TLS handshake per connection, off the accept loop.** A client that opens a
//!   connection and never finishes its handshake must not stop the next one from being
//!   accepted, so each connection is handshaken in its own task, within the header timeout.
//!   On the peer port the certificate a peer presents is also read for the node it names
//!   ([`ConnInfo::peer_node`]): a certificate of the cluster's CA that names no node (a
//!   client's, say) is refused there.
//! - **A header read timeout** (hyper's): a slowloris client that trickles header bytes is
//!   cut off.
//! - **A body read timeout** ([`TimedBody`]): a whole body must arrive within a bound, and no
//!   gap between two of its chunks may be longer; a snapshot stream, which may be gigabytes,
//!   has only the gap bound. A client that stops sending in the middle of a body is cut off.
//! - **A shutdown that slow clients cannot hold up.** On shutdown the listener stops
//!   accepting, every connection is asked to finish its request in progress and close, every
//!   body still being read fails at once (a request whose body has not arrived has done
//!   nothing yet, so cutting it changes nothing), a connection with no request being handled
//!   (one still sending its headers, say) is closed at once, and whatever is still running
//!   after a grace period is abandoned.
//!
//! Every request carries a [`ConnInfo`] extension saying where it came from.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::types::NodeId;

/// Where a request came from.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The remote socket address.
    pub remote: SocketAddr,
    /// The connection is TLS.
    pub tls: bool,
    /// On a peer port under mutual TLS: the node its certificate names.
    pub peer_node: Option<NodeId>,
}

/// How one listener serves.
#[derive(Clone)]
pub struct ServeConfig {
    /// Which listener, for logs ("client API", "peer").
    pub what: &'static str,
    /// TLS, when the port speaks it.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The port is a peer port under mutual TLS: a client certificate must name a node.
    pub require_node_cert: bool,
    /// Bound on the TLS handshake and on reading a request's headers.
    pub header_timeout: Duration,
    /// Bound on reading a whole request body, and on any gap between two of its chunks.
    pub body_timeout: Duration,
    /// Paths whose bodies are streams of any length: only the gap bound applies.
    pub streamed_paths: &'static [&'static str],
    /// How long connections may take to finish after shutdown begins.
    pub grace: Duration,
}

/// Serve `router` on `listener` until `shutdown` resolves, then stop as the module explains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let stopping = CancellationToken::new();
    let tracker = TaskTracker::new();
    let config = Arc::new(config);
    let acceptor = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning; the
                    // connections in progress still finish and free theirs.
                    warn!(what = config.what, error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Answers are small and latency is what matters: send each segment at once.
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let config = config.clone();
        let acceptor = acceptor.clone();
        let stopping = stopping.clone();
        tracker.spawn(async move {
            match acceptor {
                None => {
                    let info = ConnInfo {
                        remote,
                        tls: false,
                        peer_node: None,
                    };
                    serve_connection(tcp, info, router, &config, stopping).await;
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(config.header_timeout, acceptor.accept(tcp));
                    let tls = tokio::select! {
                        done = handshake => match done {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                debug!(what = config.what, %remote, error = %e, "TLS handshake refused");
                                return;
                            }
                            Err(_) => {
                                debug!(what = config.what, %remote, "TLS handshake timed out");
                                return;
                            }
                        },
                        _ = stopping.cancelled() => return,
                    };
                    let peer_node = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(crate::tls::node_named_by);
                    if config.require_node_cert && peer_node.is_none() {
                        warn!(
                            what = config.what,
                            %remote,
                            "refused a connection whose certificate, though signed by the peer CA, names no node"
                        );
                        return;
                    }
                    let info = ConnInfo {
                        remote,
                        tls: true,
                        peer_node,
                    };
                    serve_connection(tls, info, router, &config, stopping).await;
                }
            }
        });
    }
    drop(listener);
    stopping.cancel();
    tracker.close();
    if tokio::time::timeout(config.grace, tracker.wait()).await.is_err() {
        warn!(
            what = config.what,
            connections = tracker.len(),
            grace_ms = config.grace.as_millis() as u64,
            "connections still busy after the grace period were abandoned"
        );
    }
    Ok(())
}

/// Serve HTTP/1.1 (with upgrades, for the replication stream) on one connection.
async fn serve_connection<Io>(
    io: Io,
    info: ConnInfo,
    router: Router,
    config: &ServeConfig,
    stopping: CancellationToken,
) where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let body_timeout = config.body_timeout;
    let streamed = config.streamed_paths;
    let body_stopping = stopping.clone();
    // Requests of this connection being handled (0 or 1: HTTP/1.1 serves one at a time).
    let handling = Arc::new(AtomicUsize::new(0));
    let counted = handling.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let total = (!streamed.contains(&req.uri().path())).then_some(body_timeout);
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(info.clone());
        let body = Body::new(TimedBody::new(body, body_timeout, total, body_stopping.clone()));
        let busy = Busy::enter(&counted);
        let call = router.clone().oneshot(hyper::Request::from_parts(parts, body));
        async move {
            let _busy = busy;
            call.await
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(what = config.what, error = %e, "connection ended with an error");
            }
            return;
        }
        _ = stopping.cancelled() => {}
    }
    // Finish the request in progress (its body, if still arriving, fails at once), then close.
    conn.as_mut().graceful_shutdown();
    if handling.load(Ordering::Acquire) > 0 {
        let _ = conn.await;
        return;
    }
    // No request is being handled: the connection is idle, still sending its headers (hyper
    // would wait for them until the header timeout, though nothing has been done yet), or
    // being sent the answer of a request just handled, which needs only a moment.
    let _ = tokio::time::timeout(ANSWER_FLUSH, conn).await;
}

/// How long a connection with no request being handled may take to close on shutdown.
const ANSWER_FLUSH: Duration = Duration::from_millis(200);

/// Counts a request as being handled until dropped.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(count: &Arc<AtomicUsize>) -> Busy {
        count.fetch_add(1, Ordering::AcqRel);
        Busy(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] hyper::Error),
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {0} ms")]
    TimedOut(u64),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// A request body that must arrive in time (see the module documentation).
pub struct TimedBody {
    inner: Incoming,
    gap: Duration,
    /// Fires when the gap bound or the total bound, whichever comes first, runs out.
    timer: Pin<Box<Sleep>>,
    total_deadline: Option<Instant>,
    limit_ms: u64,
    stopping: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl TimedBody {
    fn new(inner: Incoming, gap: Duration, total: Option<Duration>, stopping: CancellationToken) -> Self {
        let now = Instant::now();
        let total_deadline = total.map(|t| now + t);
        let first = total_deadline.map_or(now + gap, |d| d.min(now + gap));
        TimedBody {
            inner,
            gap,
            timer: Box::pin(tokio::time::sleep_until(first)),
            total_deadline,
            limit_ms: total.unwrap_or(gap).as_millis() as u64,
            stopping: Box::pin(stopping.cancelled_owned()),
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = Instant::now() + this.gap;
                let next = this.total_deadline.map_or(next, |d| d.min(next));
                this.timer.as_mut().reset(next);
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if this.stopping.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyError::ShuttingDown)));
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyError::TimedOut(this.limit_ms))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
