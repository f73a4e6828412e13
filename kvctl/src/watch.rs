//! Watching keys: `GET /watch` as a stream of changes that survives the death of its node.
//!
//! A node streams the changes it applies (server-sent events, see kvnode's `watch` module).
//! Any node can serve a watch, and all of them apply the same log, so when the node a
//! [`Watcher`] reads from dies, is paused or stops answering, the watcher connects to the next
//! node and resumes from the last index it has completely seen: the caller gets every change
//! exactly once, in log order, across any number of failovers.
//!
//! Three things make the resume exact:
//!
//! - **What is complete.** A server marks the last event of each log index with the index as
//!   its event id (one entry can carry several writes), and its heartbeats carry the index the
//!   stream has covered. [`Resume`] keeps the highest such index (`done`), and for the index in
//!   progress, how many of its events were already handed to the caller.
//! - **Resuming.** The next connection asks for `after=done`; the events of the unfinished
//!   index come again, in the same order (every node applies the same entries the same way),
//!   and the ones already handed out are skipped by count. Nothing is skipped that was not
//!   seen, and nothing is handed out twice.
//! - **Noticing a dead node.** A node that is killed closes the connection; one that is paused
//!   or cut off just goes quiet. The watcher asks for heartbeats every `heartbeat` and gives up
//!   on a connection that stays silent for three of them.
//!
//! A node whose history no longer reaches back to `done` (it restarted from a snapshot, or the
//! watcher fell too far behind) answers `410 compacted`; the watcher then tries the other
//! nodes, and reports the error only when none of them can serve it. A watcher that can reach
//! no node keeps trying, with backoff, for `reconnect_timeout`, counted from the last time it
//! heard from a node.
//!
//! [`SseParser`] and [`Resume`] are pure and tested on their own; [`Watcher`] is the I/O
//! around them.

use std::time::{Duration, Instant};

use kvapi::watch::{ERROR_EVENT, HEARTBEAT_EVENT};
use kvapi::{ErrorBody, ErrorCode, LogIndex, WatchEvent, WatchProgress};

use crate::endpoint::{encode_component, Endpoint};
use crate::error::{format_duration, ClientError};
use crate::retry::RetryPolicy;
use crate::security::Security;

/// What to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchTarget {
    /// One key.
    Key(String),
    /// Every key starting with this (empty: every key).
    Prefix(String),
}

/// How a [`Watcher`] runs.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The nodes, tried in turn.
    pub endpoints: Vec<Endpoint>,
    /// What to watch.
    pub target: WatchTarget,
    /// Start after this index (`None`: from what the first node has applied when it starts).
    pub after: Option<LogIndex>,
    /// Heartbeat interval asked of the server; a connection silent for three of them is
    /// abandoned.
    pub heartbeat: Duration,
    /// How long to keep trying to connect after the last time a node was heard from.
    pub reconnect_timeout: Duration,
    /// Which endpoint to try first (an index into `endpoints`, wrapped).
    pub first_node: usize,
    /// TLS and the token, as for every other request.
    pub security: Security,
}

impl WatchConfig {
    /// Watch `target` on `endpoints` from now, with 2 s heartbeats and 10 s to reconnect.
    pub fn new(endpoints: Vec<Endpoint>, target: WatchTarget) -> Self {
        WatchConfig {
            endpoints,
            target,
            after: None,
            heartbeat: Duration::from_secs(2),
            reconnect_timeout: Duration::from_secs(10),
            first_node: 0,
            security: Security::default(),
        }
    }
}

/// What [`Watcher::next`] reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A change to a watched key.
    Event(WatchEvent),
    /// Everything up to this index has been delivered: when an index completes, and on every
    /// heartbeat (then possibly the same index again), so an idle stream is heard from too.
    Progress(LogIndex),
    /// A stream to this node started, resuming after this index.
    Connected {
        /// The node's address.
        node: String,
        /// Where it resumes (`None`: from the node's current state).
        after: Option<LogIndex>,
    },
    /// The stream from this node ended; the watcher will try another node.
    Disconnected {
        /// The node's address.
        node: String,
        /// Why.
        reason: String,
    },
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field (`None`: an unnamed event, a change here).
    pub event: Option<String>,
    /// The `id:` field.
    pub id: Option<String>,
    /// The `data:` lines, joined with newlines.
    pub data: String,
}

/// Turns the bytes of a `text/event-stream` into events, however the bytes are split.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    current: SseEvent,
    has_data: bool,
    /// The previous chunk ended with `\r`: a `\n` at the start of the next one belongs to it.
    after_cr: bool,
}

impl SseParser {
    /// Feed the next bytes; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in bytes {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.end_line(&line) {
                        out.push(event);
                    }
                }
                _ => self.line.push(b),
            }
        }
        out
    }

    fn end_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.current);
            return std::mem::take(&mut self.has_data).then_some(event);
        }
        if line[0] == b':' {
            return None;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()),
            None => (text.to_string(), String::new()),
        };
        match field.as_str() {
            "event" => self.current.event = Some(value),
            "id" => self.current.id = Some(value),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(&value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

/// The resume state of a watch (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// Every change at or before this index has been handed out.
    done: Option<LogIndex>,
    /// The index in progress: events handed out, and events of it seen on this connection.
    open: Option<Open>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Open {
    index: LogIndex,
    delivered: usize,
    seen: usize,
}

impl Resume {
    /// Starting after `after` (`None`: wherever the first stream starts).
    pub fn new(after: Option<LogIndex>) -> Resume {
        Resume {
            done: after,
            open: None,
        }
    }

    /// Where the next connection resumes: `after=` this.
    pub fn after(&self) -> Option<LogIndex> {
        self.done
    }

    /// A new connection starts: the events of the open index will come again.
    pub fn reconnected(&mut self) {
        if let Some(open) = &mut self.open {
            open.seen = 0;
        }
    }

    /// A heartbeat: everything up to `index` has been sent. Returns the new progress, if any.
    pub fn heartbeat(&mut self, index: LogIndex) -> Option<LogIndex> {
        if self.done.is_some_and(|d| d >= index) {
            return None;
        }
        self.done = Some(index);
        if self.open.is_some_and(|o| o.index <= index) {
            self.open = None;
        }
        Some(index)
    }

    /// A change arrived, with the event id the server gave it. Returns whether to hand it out
    /// (false: the caller already has it).
    pub fn event(&mut self, index: LogIndex, id: Option<LogIndex>) -> bool {
        if self.done.is_some_and(|d| index <= d) {
            return false;
        }
        let deliver = match &mut self.open {
            Some(open) if open.index == index => {
                open.seen += 1;
                let fresh = open.seen > open.delivered;
                open.delivered = open.delivered.max(open.seen);
                fresh
            }
            Some(open) if index < open.index => false,
            _ => {
                // A later index: whatever was open is complete (its id was lost or never sent).
                if let Some(open) = self.open {
                    self.done = Some(open.index);
                }
                self.open = Some(Open {
                    index,
                    delivered: 1,
                    seen: 1,
                });
                true
            }
        };
        if id == Some(index) {
            self.done = Some(index);
            self.open = None;
        }
        deliver
    }
}

/// Follows a watch across nodes (see the module documentation).
pub struct Watcher {
    http: reqwest::Client,
    config: WatchConfig,
    resume: Resume,
    node: usize,
    stream: Option<Stream>,
    /// Pending notices, handed out before anything else.
    queue: std::collections::VecDeque<Notice>,
    /// Nodes that answered `compacted` since the last stream that worked.
    compacted: Vec<usize>,
    last_heard: Instant,
    failures: u32,
    policy: RetryPolicy,
}

struct Stream {
    response: reqwest::Response,
    parser: SseParser,
    address: String,
}

/// Why one connection attempt did not give a stream.
enum Refusal {
    /// Try another node.
    Next(String),
    /// This node's history does not reach back far enough.
    Compacted(String),
    /// Final: the request itself is wrong.
    Fatal(ClientError),
}

impl Watcher {
    /// A watcher; it connects on the first [`Watcher::next`].
    pub fn new(config: WatchConfig) -> Result<Watcher, ClientError> {
        if config.endpoints.is_empty() {
            return Err(ClientError::Other("no endpoints to connect to".into()));
        }
        crate::security::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        if let Some(tls) = config
            .security
            .tls_config()
            .map_err(|e| ClientError::Other(e.to_string()))?
        {
            builder = builder.tls_backend_preconfigured(tls);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Other(format!("cannot set up HTTP: {e}")))?;
        let node = config.first_node % config.endpoints.len();
        Ok(Watcher {
            http,
            resume: Resume::new(config.after),
            node,
            config,
            stream: None,
            queue: Default::default(),
            compacted: Vec::new(),
            last_heard: Instant::now(),
            failures: 0,
            policy: RetryPolicy::default(),
        })
    }

    /// Where a new connection would resume (`after=`).
    pub fn resume_point(&self) -> Option<LogIndex> {
        self.resume.after()
    }

    /// The next notice: a change, progress, or a connection starting or ending. Fails when no
    /// node can serve the watch within `reconnect_timeout`, when every node's history is too
    /// short (`compacted`), or when a node refuses the request as invalid.
    pub async fn next(&mut self) -> Result<Notice, ClientError> {
        loop {
            if let Some(notice) = self.queue.pop_front() {
                return Ok(notice);
            }
            let Some(stream) = &mut self.stream else {
                self.connect().await?;
                continue;
            };
            let silence = self.config.heartbeat * 3 + Duration::from_millis(500);
            let reason = match tokio::time::timeout(silence, stream.response.chunk()).await {
                Ok(Ok(Some(bytes))) => {
                    self.last_heard = Instant::now();
                    let events = stream.parser.feed(&bytes);
                    if let Err(reason) = self.take(events) {
                        self.drop_stream(reason);
                    }
                    continue;
                }
                Ok(Ok(None)) => "the node closed the stream".to_string(),
                Ok(Err(e)) => format!("the stream broke: {}", root_cause(&e)),
                Err(_) => format!(
                    "nothing heard for {} (three heartbeats)",
                    format_duration(silence)
                ),
            };
            self.drop_stream(reason);
        }
    }

    fn drop_stream(&mut self, reason: String) {
        if let Some(stream) = self.stream.take() {
            tracing::debug!(node = %stream.address, %reason, "watch stream ended");
            self.queue.push_back(Notice::Disconnected {
                node: stream.address,
                reason,
            });
            self.node = (self.node + 1) % self.config.endpoints.len();
        }
    }

    /// Turn parsed events into notices. An `error` event ends the stream (the reason is
    /// returned); a `compacted` one also marks the node.
    fn take(&mut self, events: Vec<SseEvent>) -> Result<(), String> {
        for event in events {
            match event.event.as_deref() {
                None => {
                    let change: WatchEvent = serde_json::from_str(&event.data)
                        .map_err(|e| format!("the node sent a change that is not one ({e})"))?;
                    let id = event.id.as_deref().and_then(|i| i.trim().parse().ok());
                    let before = self.resume.after();
                    if self.resume.event(change.index, id) {
                        self.queue.push_back(Notice::Event(change));
                    }
                    if let Some(done) = self.resume.after().filter(|_| self.resume.after() != before) {
                        self.queue.push_back(Notice::Progress(done));
                    }
                }
                Some(HEARTBEAT_EVENT) => {
                    let progress: WatchProgress = serde_json::from_str(&event.data)
                        .map_err(|e| format!("the node sent a heartbeat that is not one ({e})"))?;
                    // Reported even when it moves nothing: a caller waiting for an index, or
                    // for a sign of life, hears from an idle stream too.
                    self.resume.heartbeat(progress.index);
                    if let Some(done) = self.resume.after() {
                        self.queue.push_back(Notice::Progress(done));
                    }
                    self.compacted.clear();
                    self.failures = 0;
                }
                Some(ERROR_EVENT) => {
                    let reason = match serde_json::from_str::<ErrorBody>(&event.data) {
                        Ok(body) => {
                            if body.error.code == ErrorCode::Compacted {
                                self.compacted.push(self.node);
                            }
                            body.error.message
                        }
                        Err(_) => event.data,
                    };
                    return Err(reason);
                }
                // Event kinds of a newer server are not ours to interpret.
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Connect to the next node that serves the watch, waiting between rounds.
    async fn connect(&mut self) -> Result<(), ClientError> {
        let n = self.config.endpoints.len();
        let mut last_reason = String::new();
        loop {
            for _ in 0..n {
                let node = self.node;
                let address = self.config.endpoints[node].address.clone();
                if self.compacted.contains(&node) {
                    self.node = (node + 1) % n;
                    continue;
                }
                match self.open(&address).await {
                    Ok(response) => {
                        self.resume.reconnected();
                        self.queue.push_back(Notice::Connected {
                            node: address.clone(),
                            after: self.resume.after(),
                        });
                        self.stream = Some(Stream {
                            response,
                            parser: SseParser::default(),
                            address,
                        });
                        self.last_heard = Instant::now();
                        return Ok(());
                    }
                    Err(Refusal::Fatal(e)) => return Err(e),
                    Err(Refusal::Compacted(reason)) => {
                        self.compacted.push(node);
                        last_reason = format!("{address}: {reason}");
                    }
                    Err(Refusal::Next(reason)) => last_reason = format!("{address}: {reason}"),
                }
                tracing::debug!("watch: {last_reason}");
                self.node = (node + 1) % n;
            }
            if (0..n).all(|i| self.compacted.contains(&i)) {
                return Err(ClientError::Rejected {
                    code: ErrorCode::Compacted,
                    message: format!(
                        "no node's history of changes reaches back to index {} any more ({last_reason}); \
                         read the current value and watch again from its mod_index",
                        self.resume.after().unwrap_or_default()
                    ),
                });
            }
            let waited = self.last_heard.elapsed();
            if waited >= self.config.reconnect_timeout {
                return Err(ClientError::Unavailable {
                    reason: format!("no node serves the watch ({last_reason})"),
                    waited,
                });
            }
            self.failures += 1;
            let pause = self
                .policy
                .backoff(self.failures, &mut rand::thread_rng())
                .min(self.config.reconnect_timeout - waited);
            tokio::time::sleep(pause).await;
        }
    }

    async fn open(&self, address: &str) -> Result<reqwest::Response, Refusal> {
        let (name, value) = match &self.config.target {
            WatchTarget::Key(k) => ("key", k),
            WatchTarget::Prefix(p) => ("prefix", p),
        };
        let mut url = format!(
            "{}://{address}/watch?{name}={}&heartbeat_ms={}",
            self.config.security.scheme(),
            encode_component(value),
            self.config.heartbeat.as_millis()
        );
        if let Some(after) = self.resume.after() {
            url.push_str(&format!("&after={after}"));
        }
        let limit = self.config.heartbeat * 3 + Duration::from_millis(500);
        let mut request = self.http.get(url);
        if let Some(token) = &self.config.security.token {
            request = request.header(reqwest::header::AUTHORIZATION, token.header_value());
        }
        let response = match tokio::time::timeout(limit, request.send()).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err(Refusal::Next(root_cause(&e))),
            Err(_) => return Err(Refusal::Next("no answer".into())),
        };
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(response);
        }
        let body = tokio::time::timeout(limit, response.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let failure = crate::transport::error_answer(status, &body, None);
        let message = failure.describe();
        Err(match failure {
            crate::transport::Failure::Answered {
                code: Some(ErrorCode::Compacted),
                ..
            } => Refusal::Compacted(message),
            crate::transport::Failure::Answered {
                code:
                    Some(
                        code @ (ErrorCode::InvalidRequest
                        | ErrorCode::InvalidJson
                        | ErrorCode::Unauthenticated
                        | ErrorCode::Forbidden),
                    ),
                message,
                ..
            } => Refusal::Fatal(ClientError::Rejected { code, message }),
            _ => Refusal::Next(message),
        })
    }
}

/// The innermost cause of an error, where the useful words are.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_is_parsed_however_the_bytes_are_split() {
        let text = "event: heartbeat\nid: 3\ndata: {\"index\":3}\n\n: a comment\n\
                    data: {\"a\":1}\r\n\r\ndata:x\ndata: y\nid: 9\n\nevent: lonely\n\n";
        let whole = SseParser::default().feed(text.as_bytes());
        let expected = vec![
            SseEvent {
                event: Some("heartbeat".into()),
                id: Some("3".into()),
                data: "{\"index\":3}".into(),
            },
            SseEvent {
                event: None,
                id: None,
                data: "{\"a\":1}".into(),
            },
            SseEvent {
                event: None,
                id: Some("9".into()),
                data: "x\ny".into(),
            },
        ];
        assert_eq!(whole, expected, "an event without data is not dispatched");
        for split in 1..text.len() {
            let mut p = SseParser::default();
            let mut got = p.feed(&text.as_bytes()[..split]);
            got.extend(p.feed(&text.as_bytes()[split..]));
            assert_eq!(got, expected, "split at {split}");
        }
        let mut p = SseParser::default();
        let got: Vec<SseEvent> = text.bytes().flat_map(|b| p.feed(&[b])).collect();
        assert_eq!(got, expected, "byte by byte");
    }

    #[test]
    fn resuming_mid_index_skips_exactly_what_was_delivered() {
        let mut r = Resume::new(None);
        assert_eq!(r.heartbeat(10), Some(10));
        assert_eq!(r.after(), Some(10));
        // Index 11 has three events; the stream breaks after two.
        assert!(r.event(11, None));
        assert!(r.event(11, None));
        assert_eq!(r.after(), Some(10), "11 is not complete");
        r.reconnected();
        // The new node sends all of 11 again: the first two are skipped.
        assert!(!r.event(11, None));
        assert!(!r.event(11, None));
        assert!(r.event(11, Some(11)));
        assert_eq!(r.after(), Some(11));
        // Events at or before what is done are never handed out again.
        assert!(!r.event(11, Some(11)));
        assert!(!r.event(5, Some(5)));
        // A heartbeat moves the resume point on a quiet key, and never back.
        assert_eq!(r.heartbeat(20), Some(20));
        assert_eq!(r.heartbeat(15), None);
        assert_eq!(r.after(), Some(20));
        // A later index without an id for the earlier one completes the earlier one.
        assert!(r.event(21, None));
        assert!(r.event(22, Some(22)));
        assert_eq!(r.after(), Some(22));
    }

    #[test]
    fn every_heartbeat_is_reported_so_an_idle_watch_is_heard_from() {
        let endpoint = Endpoint {
            id: None,
            address: "127.0.0.1:1".into(),
        };
        let config = WatchConfig::new(vec![endpoint], WatchTarget::Key("k".into()));
        let mut w = Watcher::new(config).expect("a watcher");
        let beat = |index: u64| SseEvent {
            event: Some(HEARTBEAT_EVENT.into()),
            id: Some(index.to_string()),
            data: format!("{{\"index\":{index}}}"),
        };
        w.take(vec![beat(7), beat(7), beat(9)]).expect("heartbeats");
        let notices: Vec<Notice> = w.queue.drain(..).collect();
        assert_eq!(
            notices,
            [Notice::Progress(7), Notice::Progress(7), Notice::Progress(9)],
            "a caller waiting for an index must not wait for a change to hear it"
        );
        assert_eq!(w.resume_point(), Some(9));
    }

    #[test]
    fn a_reconnect_before_anything_was_delivered_asks_for_the_same_start() {
        let mut r = Resume::new(Some(4));
        r.reconnected();
        assert_eq!(r.after(), Some(4));
        let mut r = Resume::new(None);
        r.reconnected();
        assert_eq!(r.after(), None);
    }
}
