//! The watch stream's wire types: `GET /watch?key=K` or `?prefix=P`, with `&after=INDEX`.
//!
//! The stream is server-sent events (`text/event-stream`). Each applied change to a watched
//! key is one unnamed event (a browser's `EventSource` hands it to `onmessage`) whose data is
//! a [`WatchEvent`]: its log index, its kind, the key and the key's new value. A change
//! carries the SSE `id:` field, the log index, when it is the last event of its index on the
//! stream: one log entry can carry several writes (group commit), and an id is a promise that
//! everything at or before it has been delivered, so `Last-Event-ID` resumes exactly.
//!
//! An idle stream carries `event: heartbeat` events whose data is a [`WatchProgress`] and whose
//! id is the index the stream has covered; the first event of every stream is one, saying where
//! it starts. A stream the server ends on its own ends with `event: error` carrying the usual
//! error envelope (`compacted` or `shutting_down`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::LogIndex;

/// Request header of the SSE standard: resume after this event id (an index), like `after`.
pub const LAST_EVENT_ID_HEADER: &str = "last-event-id";
/// SSE event name of heartbeats.
pub const HEARTBEAT_EVENT: &str = "heartbeat";
/// SSE event name of the error that ends a stream.
pub const ERROR_EVENT: &str = "error";
/// Heartbeat interval when the request does not choose one (`heartbeat_ms`).
pub const DEFAULT_WATCH_HEARTBEAT: Duration = Duration::from_secs(5);
/// Shortest heartbeat interval a request may ask for.
pub const MIN_WATCH_HEARTBEAT: Duration = Duration::from_millis(100);
/// Longest heartbeat interval a request may ask for.
pub const MAX_WATCH_HEARTBEAT: Duration = Duration::from_secs(60);

/// What a change did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A PUT replaced the value.
    Put,
    /// An APPEND extended the value (or created `[value]`).
    Append,
    /// A DELETE removed the key.
    Delete,
}

impl ChangeKind {
    /// The lowercase name used on the wire and in output.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Put => "put",
            ChangeKind::Append => "append",
            ChangeKind::Delete => "delete",
        }
    }
}

/// One applied change to a watched key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// Log index of the entry that applied it (the key's `mod_index` after it).
    pub index: LogIndex,
    /// What it did.
    pub kind: ChangeKind,
    /// The key.
    pub key: String,
    /// The key's value after the change; absent for a delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// A heartbeat: every change to the watched keys at or before `index` has been delivered on
/// this stream. Resuming with `after=index` misses nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchProgress {
    /// The index the stream has covered.
    pub index: LogIndex,
}
