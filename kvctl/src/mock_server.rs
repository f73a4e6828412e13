//! A scripted HTTP/1.1 server for unit tests of the client's routing and retry logic.
//!
//! Real clusters cannot be told to lose exactly one answer or to name a particular leader, so
//! these tests stand up tiny servers whose answers a closure decides, on `127.0.0.1:0`, and
//! check what the client sent. One request per connection (`Connection: close`) keeps the
//! parser trivial. A reply with the pseudo-header [`DELAY`] is sent that many milliseconds
//! late (the header itself is not sent), to play a server that waits before it answers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Pseudo-header of a [`Reply`]: answer after this many milliseconds.
pub const DELAY: &str = "x-mock-delay-ms";

/// A request as the mock saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When it arrived.
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub idempotency_key: Option<String>,
    pub body: String,
}

/// What the mock answers: status, extra headers, body. `None` means never answer.
pub type Reply = Option<(u16, Vec<(&'static str, String)>, String)>;

/// A running mock server.
pub struct Mock {
    pub address: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Mock {
    /// Start a mock whose answers `handler` decides.
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let handler = Arc::new(handler);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let log = log.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut socket).await else {
                        return;
                    };
                    log.lock().expect("log").push(request.clone());
                    match handler(&request) {
                        Some((status, headers, body)) => {
                            if let Some((_, ms)) = headers.iter().find(|(name, _)| *name == DELAY) {
                                let ms = ms.parse().expect("delay in milliseconds");
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            let mut text = format!(
                                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                                 content-length: {}\r\nconnection: close\r\n",
                                body.len()
                            );
                            for (name, value) in headers.iter().filter(|(name, _)| *name != DELAY) {
                                text.push_str(&format!("{name}: {value}\r\n"));
                            }
                            text.push_str("\r\n");
                            text.push_str(&body);
                            let _ = socket.write_all(text.as_bytes()).await;
                            let _ = socket.shutdown().await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(60)).await,
                    }
                });
            }
        });
        Mock { address, seen }
    }

    /// The requests seen so far with this method.
    pub fn requests(&self, method: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .expect("log")
            .iter()
            .filter(|s| s.method == method)
            .cloned()
            .collect()
    }
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Seen> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let mut length = 0usize;
    let mut idempotency_key = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            if name == "content-length" {
                length = value.trim().parse().ok()?;
            } else if name == kvapi::IDEMPOTENCY_HEADER {
                idempotency_key = Some(value.trim().to_string());
            }
        }
    }
    while buffer.len() < header_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Some(Seen {
        at: Instant::now(),
        method,
        path,
        idempotency_key,
        body: String::from_utf8_lossy(&buffer[header_end..header_end + length]).to_string(),
    })
}

/// A status document for node `id` with `role`, naming `leader` (id and address).
pub fn status_json(id: u64, role: &str, term: u64, leader: Option<(u64, &str)>) -> String {
    let leader = match leader {
        Some((lid, http)) => format!(r#"{{"id":{lid},"http":"{http}"}}"#),
        None => "null".into(),
    };
    format!(
        r#"{{"id":{id},"role":"{role}","term":{term},"leader":{leader},"commit_index":1,
            "last_applied":1,"last_log_index":1,"snapshot_index":null,"members":[],"keys":0}}"#
    )
}
