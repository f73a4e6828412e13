//! The same load against etcd, through the JSON gateway that etcd 3.4 serves on its client port
//! (`POST /v3/kv/put`, `POST /v3/kv/range`), so both stores are measured by one load generator
//! over the same kind of connection: HTTP/1.1 with JSON bodies.
//!
//! Keys and values travel base64-encoded, as the gateway wants. A value is the JSON text that
//! kvnode would store for the same operation, so both stores carry the same bytes. Reads are
//! linearizable unless `--consistency stale`, which asks for etcd's serializable reads: the
//! member's local copy, the counterpart of kvnode's stale reads.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use kvapi::Consistency;
use serde_json::{json, Value};

use super::{transport_outcome, Outcome};
use crate::endpoint::Endpoint;

/// One etcd member's gateway.
#[derive(Clone)]
pub(super) struct Gateway {
    http: reqwest::Client,
    base: String,
    serializable: bool,
}

impl Gateway {
    pub(super) fn new(http: reqwest::Client, base: String, consistency: Consistency) -> Self {
        Gateway {
            http,
            base,
            serializable: consistency == Consistency::Stale,
        }
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value, (Outcome, String)> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| (transport_outcome(&e), format!("etcd: {e}")))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| (Outcome::Unknown, format!("etcd: {e}")))?;
        if !status.is_success() {
            let outcome = if status.as_u16() == 503 || status.as_u16() == 504 {
                Outcome::Unknown
            } else {
                Outcome::Failed
            };
            return Err((
                outcome,
                format!("etcd: HTTP {}: {}", status.as_u16(), text.trim()),
            ));
        }
        serde_json::from_str(&text).map_err(|e| (Outcome::Failed, format!("etcd: unreadable answer: {e}")))
    }

    /// Store `value` (as JSON text) under `key`.
    pub(super) async fn put(&self, key: &str, value: &Value) -> Result<(), (Outcome, String)> {
        let body = json!({ "key": B64.encode(key), "value": B64.encode(value.to_string()) });
        self.call("/v3/kv/put", body).await.map(|_| ())
    }

    /// Read `key`; a missing key is a successful read.
    pub(super) async fn get(&self, key: &str) -> Result<(), (Outcome, String)> {
        let body = json!({ "key": B64.encode(key), "serializable": self.serializable });
        self.call("/v3/kv/range", body).await.map(|_| ())
    }
}

/// The base URL of the member that is etcd's leader, asked of each endpoint in turn.
pub(super) async fn find_leader(http: &reqwest::Client, endpoints: &[Endpoint]) -> Result<String, String> {
    let mut last_error = String::from("no endpoints");
    for endpoint in endpoints {
        let base = endpoint.base_url();
        let answer = async {
            let resp = http
                .post(format!("{base}/v3/maintenance/status"))
                .body("{}")
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let text = resp.text().await.map_err(|e| e.to_string())?;
            serde_json::from_str::<Value>(&text).map_err(|e| e.to_string())
        }
        .await;
        match answer {
            Ok(status) => {
                // The gateway writes 64-bit ids as strings.
                let member = &status["header"]["member_id"];
                let leader = &status["leader"];
                if !member.is_null() && member == leader {
                    return Ok(base);
                }
                last_error = format!("{base} is not the leader");
            }
            Err(e) => last_error = format!("{base}: {e}"),
        }
    }
    Err(format!("cannot find etcd's leader: {last_error}"))
}
