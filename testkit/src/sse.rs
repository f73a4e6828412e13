//! Reading a server-sent event stream (`GET /watch`) in a test, with a deadline per event.
//!
//! A blocking read cannot be given a deadline, so a thread reads the stream and hands each
//! event over a channel; [`SseStream::next`] waits on the channel with a timeout. The thread
//! ends when the stream does: when the node closes it, dies, or the request's total time limit
//! passes.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

/// One event of the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (`None` for an unnamed event).
    pub event: Option<String>,
    /// `id:`.
    pub id: Option<String>,
    /// `data:` lines, joined by newlines.
    pub data: String,
}

impl SseEvent {
    /// The data parsed as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null)
    }
}

/// An open stream.
pub struct SseStream {
    /// HTTP status of the answer.
    pub status: u16,
    /// Its headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body when the answer was not a stream (an error's JSON).
    pub body: Option<serde_json::Value>,
    events: mpsc::Receiver<SseEvent>,
}

impl SseStream {
    /// GET `url` with `headers`; the stream may stay open for at most `total`.
    pub fn open(url: &str, headers: &[(&str, &str)], total: Duration) -> Option<SseStream> {
        let http = reqwest::blocking::Client::builder()
            .timeout(total)
            .no_proxy()
            .build()
            .expect("http client");
        let mut req = http.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().ok()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let (tx, events) = mpsc::channel();
        let streaming = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/event-stream"));
        if !streaming {
            let body = resp.text().ok().and_then(|t| serde_json::from_str(&t).ok());
            return Some(SseStream {
                status,
                headers,
                body,
                events,
            });
        }
        std::thread::spawn(move || {
            let mut current = SseEvent::default();
            let mut has_data = false;
            for line in BufReader::new(resp).lines() {
                let Ok(line) = line else { return };
                if line.is_empty() {
                    if std::mem::take(&mut has_data) && tx.send(std::mem::take(&mut current)).is_err() {
                        return;
                    }
                    continue;
                }
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
                let value = value.strip_prefix(' ').unwrap_or(value).to_string();
                match field {
                    "event" => current.event = Some(value),
                    "id" => current.id = Some(value),
                    "data" => {
                        if has_data {
                            current.data.push('\n');
                        }
                        current.data.push_str(&value);
                        has_data = true;
                    }
                    _ => {}
                }
            }
        });
        Some(SseStream {
            status,
            headers,
            body: None,
            events,
        })
    }

    /// The next event, if one comes within `timeout`; `None` also when the stream ended.
    pub fn next(&self, timeout: Duration) -> Option<SseEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    /// The next event that is not a heartbeat, within `timeout`.
    pub fn next_change(&self, timeout: Duration) -> Option<SseEvent> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let event = self.next(left)?;
            if event.event.as_deref() != Some("heartbeat") {
                return Some(event);
            }
        }
    }
}
