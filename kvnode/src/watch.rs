//! `GET /watch`: a stream of the changes to one key or to every key with a prefix, in log
//! order, from the node's own history of applied changes (see `history`).
//!
//! # Why server-sent events
//!
//! The stream is `text/event-stream` (server-sent events) rather than newline-delimited JSON.
//! Both are plain HTTP/1.1 responses that `curl -N` can read, and each event's data here is
//! one line of JSON either way; what SSE adds is exactly what a watch needs on top of that:
//!
//! - **Resuming is part of the standard.** An event's `id:` is the log index it completes, and
//!   a client that reconnects sends the last one back (`Last-Event-ID`, or `after=` here). A
//!   browser's `EventSource` reconnects and resumes by itself, with no code; with NDJSON every
//!   client would have to learn our own resume convention.
//! - **Heartbeats have a standard place.** Named events (`event: heartbeat`) are ignored by
//!   clients that do not listen for them, so keep-alives never look like changes, and they can
//!   carry the index the stream has covered: a client that watches a quiet key still moves its
//!   resume point forward, and does not fall off the end of the history while nothing it
//!   watches changes.
//! - **Proxies know it.** `text/event-stream` with `Cache-Control: no-cache` is not buffered by
//!   common reverse proxies (we also send `X-Accel-Buffering: no` for nginx), whereas a chunked
//!   JSON response may be held back until a buffer fills.
//!
//! The price is the `data: ` framing around each JSON line, which `kvctl watch -o json` strips
//! for scripts (it prints one JSON object per line).
//!
//! # What a stream promises
//!
//! From `after` (or from what the node has applied when the watch starts), the stream carries
//! every later change to the watched keys exactly once, in log order, with no gap: it reads the
//! node's history with a cursor, and a read never stops inside a log index. If the history no
//! longer reaches back to the cursor (the watcher fell too far behind, or the node installed a
//! snapshot), the answer is `410 compacted` before the stream starts, or an `error` event
//! saying `compacted` that ends it: never a silent gap. Any node serves watches from its own
//! applied state, so a follower's stream is in log order too; it may trail the leader by what
//! it has not applied yet, as a stale read does.
//!
//! An event's `id:` is sent on the last event of each index only, because one log entry may
//! carry several writes (group commit): an id promises that everything at or before it was
//! delivered, and resuming after an index whose events were cut off halfway would skip the
//! rest. A client that counts the events of an unfinished index can resume from the index
//! before it and skip what it already has; `kvctl watch` does.
//!
//! Each stream sends a heartbeat first (where it starts) and then whenever it has been idle for
//! the interval the client asked for (`heartbeat_ms`, 0.1 to 60 s, default 5 s). A stream ends
//! when the node shuts down (`error` event `shutting_down`), so that a graceful shutdown is not
//! held up by watchers, and when the client goes away.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio::time::Instant;

use kvapi::watch::{
    DEFAULT_WATCH_HEARTBEAT, ERROR_EVENT, HEARTBEAT_EVENT, LAST_EVENT_ID_HEADER, MAX_WATCH_HEARTBEAT,
    MIN_WATCH_HEARTBEAT,
};
use kvapi::{ErrorBody, ErrorCode, ErrorDetail, WatchEvent, WatchProgress, MAX_KEY_BYTES};

use crate::error::ApiError;
use crate::history::{Filter, History, Recorded, Slice};
use crate::node::Node;
use crate::types::LogIndex;

/// Most events put into one chunk of the response (whole indexes only, so a chunk may carry a
/// few more): bounds the memory one slow watcher holds while it is written.
const EVENTS_PER_CHUNK: usize = 256;

/// A validated watch request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WatchRequest {
    filter: Filter,
    after: Option<LogIndex>,
    heartbeat: Duration,
}

type Params = Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>;

/// The handler of `GET /watch`.
pub async fn watch(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, ApiError> {
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| ApiError::invalid(format!("the query string is malformed: {e}")))?;
    let request = parse(&q, headers.get(LAST_EVENT_ID_HEADER).map(|v| v.to_str()))?;
    let history = node.sm.history();
    let start = history.start(request.after).map_err(|refusal| match refusal {
        Slice::Compacted { oldest } => compacted(request.after.unwrap_or_default(), oldest),
        _ => shutting_down(),
    })?;
    let stream = WatchStream {
        generation: history.subscribe(),
        history,
        filter: request.filter,
        heartbeat: request.heartbeat,
        cursor: start,
        started: false,
        ended: false,
        last_sent: Instant::now(),
    };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), s))
    });
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// Validate the query (`key` or `prefix`, `after`, `heartbeat_ms`) and `Last-Event-ID`.
fn parse(
    q: &HashMap<String, String>,
    last_event_id: Option<Result<&str, header::ToStrError>>,
) -> Result<WatchRequest, ApiError> {
    const ALLOWED: [&str; 4] = ["key", "prefix", "after", "heartbeat_ms"];
    if let Some(bad) = q.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
        return Err(ApiError::invalid(format!(
            "unknown query parameter {bad:?}; allowed: {}",
            ALLOWED.join(", ")
        )));
    }
    let filter = match (q.get("key"), q.get("prefix")) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("give key or prefix, not both")),
        (None, None) => {
            return Err(ApiError::invalid(
                "say what to watch: ?key=K for one key, or ?prefix=P for every key starting with P \
                 (?prefix= for all keys)",
            ))
        }
        (Some(k), None) if k.is_empty() => return Err(ApiError::invalid("the key is empty")),
        (Some(k), None) => Filter::Key(k.clone()),
        (None, Some(p)) => Filter::Prefix(p.clone()),
    };
    let (Filter::Key(text) | Filter::Prefix(text)) = &filter;
    if text.len() > MAX_KEY_BYTES {
        return Err(ApiError::invalid(format!(
            "the key or prefix is {} bytes long; the limit is {MAX_KEY_BYTES}",
            text.len()
        )));
    }
    let index = |what: &str, text: &str| {
        text.trim().parse::<LogIndex>().map_err(|_| {
            ApiError::invalid(format!(
                "{what} must be a log index (a whole number), not {text:?}"
            ))
        })
    };
    let after = match (q.get("after"), last_event_id) {
        (Some(a), _) => Some(index("after", a)?),
        (None, Some(Ok(id))) => Some(index("Last-Event-ID", id)?),
        (None, Some(Err(_))) => {
            return Err(ApiError::invalid(
                "the Last-Event-ID header must be visible ASCII",
            ))
        }
        (None, None) => None,
    };
    let heartbeat = match q.get("heartbeat_ms") {
        None => DEFAULT_WATCH_HEARTBEAT,
        Some(ms) => match ms.parse::<u64>().map(Duration::from_millis) {
            Ok(d) if (MIN_WATCH_HEARTBEAT..=MAX_WATCH_HEARTBEAT).contains(&d) => d,
            _ => {
                return Err(ApiError::invalid(format!(
                    "heartbeat_ms must be a whole number from {} to {}, not {ms:?}",
                    MIN_WATCH_HEARTBEAT.as_millis(),
                    MAX_WATCH_HEARTBEAT.as_millis()
                )))
            }
        },
    };
    Ok(WatchRequest {
        filter,
        after,
        heartbeat,
    })
}

fn compacted(after: LogIndex, oldest: LogIndex) -> ApiError {
    ApiError {
        oldest_index: Some(oldest),
        ..ApiError::new(
            ErrorCode::Compacted,
            format!(
                "this node's history of changes starts after index {}, so changes after {after} \
                 can no longer all be sent; watch from after={} or later (read the key and watch \
                 from its mod_index), or try another node",
                oldest - 1,
                oldest - 1
            ),
        )
    }
}

fn shutting_down() -> ApiError {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            ErrorCode::ShuttingDown,
            "the node is shutting down; watch on another node, resuming from the last index you saw",
        )
    }
}

/// The state of one response stream.
struct WatchStream {
    history: Arc<History>,
    generation: watch::Receiver<u64>,
    filter: Filter,
    heartbeat: Duration,
    /// Every matching change at or before this index has been sent.
    cursor: LogIndex,
    started: bool,
    ended: bool,
    last_sent: Instant,
}

impl WatchStream {
    /// The next piece of the response; `None` ends it.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        if !self.started {
            self.started = true;
            return Some(self.sent(heartbeat(self.cursor)));
        }
        loop {
            // Seen before reading, so that a change made after the read wakes the wait below.
            self.generation.borrow_and_update();
            match self.history.read(self.cursor, &self.filter, EVENTS_PER_CHUNK) {
                Slice::Closed => {
                    self.ended = true;
                    return Some(error_event(shutting_down()));
                }
                Slice::Compacted { oldest } => {
                    self.ended = true;
                    return Some(error_event(compacted(self.cursor, oldest)));
                }
                Slice::Changes { events, covered } => {
                    self.cursor = covered;
                    if !events.is_empty() {
                        return Some(self.sent(render(&events)));
                    }
                }
            }
            tokio::select! {
                changed = self.generation.changed() => {
                    if changed.is_err() {
                        self.ended = true;
                        return None;
                    }
                }
                _ = tokio::time::sleep_until(self.last_sent + self.heartbeat) => {
                    return Some(self.sent(heartbeat(self.cursor)));
                }
            }
        }
    }

    fn sent(&mut self, chunk: Bytes) -> Bytes {
        self.last_sent = Instant::now();
        chunk
    }
}

/// Changes as SSE events; the last event of each index carries the index as its id.
fn render(events: &[Arc<Recorded>]) -> Bytes {
    let mut out = Vec::with_capacity(events.len() * 64);
    for (i, c) in events.iter().enumerate() {
        let event = WatchEvent {
            index: c.index,
            kind: c.kind,
            key: c.key.clone(),
            value: c.value.clone(),
        };
        out.extend_from_slice(b"data: ");
        // Compact JSON has no raw newline (string newlines are escaped), so one data line is
        // one whole event.
        let _ = serde_json::to_writer(&mut out, &event);
        out.push(b'\n');
        let last_of_index = events.get(i + 1).is_none_or(|next| next.index != c.index);
        if last_of_index {
            out.extend_from_slice(format!("id: {}\n", c.index).as_bytes());
        }
        out.push(b'\n');
    }
    out.into()
}

fn heartbeat(index: LogIndex) -> Bytes {
    let data = serde_json::to_string(&WatchProgress { index }).unwrap_or_default();
    format!("event: {HEARTBEAT_EVENT}\nid: {index}\ndata: {data}\n\n").into()
}

fn error_event(e: ApiError) -> Bytes {
    let body = ErrorBody {
        error: ErrorDetail {
            code: e.code,
            message: e.message,
            leader: None,
            exists: None,
            mod_index: None,
            oldest_index: e.oldest_index,
        },
    };
    let data = serde_json::to_string(&body).unwrap_or_default();
    format!("event: {ERROR_EVENT}\ndata: {data}\n\n").into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvapi::ChangeKind;
    use serde_json::json;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn requests_are_validated_with_clear_messages() {
        let ok = parse(&q(&[("key", "a"), ("after", "7"), ("heartbeat_ms", "250")]), None).expect("valid");
        assert_eq!(
            ok,
            WatchRequest {
                filter: Filter::Key("a".into()),
                after: Some(7),
                heartbeat: Duration::from_millis(250)
            }
        );
        let all = parse(&q(&[("prefix", "")]), None).expect("valid");
        assert_eq!(
            (all.filter, all.after, all.heartbeat),
            (Filter::Prefix(String::new()), None, DEFAULT_WATCH_HEARTBEAT)
        );
        let resumed = parse(&q(&[("key", "a")]), Some(Ok("12"))).expect("valid");
        assert_eq!(resumed.after, Some(12), "Last-Event-ID resumes like after");
        let explicit = parse(&q(&[("key", "a"), ("after", "3")]), Some(Ok("12"))).expect("valid");
        assert_eq!(explicit.after, Some(3), "after wins over Last-Event-ID");
        let long = "x".repeat(MAX_KEY_BYTES + 1);
        let refused: Vec<(HashMap<String, String>, &str)> = vec![
            (q(&[]), "say what to watch"),
            (q(&[("key", "a"), ("prefix", "b")]), "not both"),
            (q(&[("key", "")]), "empty"),
            (q(&[("key", &long)]), "limit"),
            (q(&[("key", "a"), ("after", "-1")]), "log index"),
            (q(&[("key", "a"), ("heartbeat_ms", "10")]), "heartbeat_ms"),
            (q(&[("key", "a"), ("heartbeat_ms", "x")]), "heartbeat_ms"),
            (q(&[("key", "a"), ("since", "1")]), "unknown query parameter"),
        ];
        for (query, needle) in refused {
            let e = parse(&query, None).expect_err("refused");
            assert_eq!(e.code, ErrorCode::InvalidRequest);
            assert!(e.message.contains(needle), "{query:?}: {}", e.message);
        }
        let e = parse(&q(&[("key", "a")]), Some(Ok("x"))).expect_err("refused");
        assert!(e.message.contains("Last-Event-ID"), "{}", e.message);
    }

    #[test]
    fn events_carry_an_id_on_the_last_event_of_each_index() {
        let h = History::new(0, Default::default());
        let rec = |index, key: &str, value: Option<serde_json::Value>| {
            let kind = if value.is_some() {
                ChangeKind::Put
            } else {
                ChangeKind::Delete
            };
            Recorded::from_change(crate::state::Change {
                index,
                kind,
                key,
                value: value.as_ref(),
            })
        };
        h.record(
            4,
            vec![
                rec(4, "a", Some(json!(1))),
                rec(4, "a", Some(json!("two\nlines"))),
            ],
        );
        h.record(5, vec![rec(5, "a", None)]);
        let Slice::Changes { events, .. } = h.read(0, &Filter::Key("a".into()), 10) else {
            panic!("changes expected");
        };
        let text = String::from_utf8(render(&events).to_vec()).expect("utf-8");
        assert_eq!(
            text,
            "data: {\"index\":4,\"kind\":\"put\",\"key\":\"a\",\"value\":1}\n\n\
             data: {\"index\":4,\"kind\":\"put\",\"key\":\"a\",\"value\":\"two\\nlines\"}\nid: 4\n\n\
             data: {\"index\":5,\"kind\":\"delete\",\"key\":\"a\"}\nid: 5\n\n"
        );
        assert_eq!(
            String::from_utf8(heartbeat(9).to_vec()).expect("utf-8"),
            "event: heartbeat\nid: 9\ndata: {\"index\":9}\n\n"
        );
        let end = String::from_utf8(error_event(compacted(3, 8)).to_vec()).expect("utf-8");
        assert!(
            end.starts_with("event: error\ndata: {\"error\":{\"code\":\"compacted\""),
            "{end}"
        );
        assert!(end.contains("\"oldest_index\":8"), "{end}");
    }
}
