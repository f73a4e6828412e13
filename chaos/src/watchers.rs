//! The watchers: kvctl's [`Watcher`] following the keys while the nemesis works, recording
//! every change it delivers.
//!
//! One watcher per node, each starting on a different node, so that whichever node a fault
//! hits, some watcher is streaming from it: a killed node closes its streams, a paused one
//! falls silent (the watcher gives up after three missed heartbeats), and one cut off by a
//! partition stops applying until it heals. Even watchers watch every key (`prefix=""`), odd
//! ones the first key alone, so both filters are exercised. Every watcher starts after index 0,
//! before any write, so what it must deliver is known exactly: for each watched key, every
//! append in the key's final list, one change each, in order, at the index its append was
//! acknowledged at.
//!
//! A watcher records facts, not verdicts ([`Seen`]): each change compactly (the new list's
//! length, last element and digest), each move to another node, and how far it got. After the
//! faults heal and the cluster converges, the harness tells the watchers the index the cluster
//! applied ([`Finish`]); each stops once it has covered it, and the checker
//! (`checker::check_watches`) compares what they saw with the committed history.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvctl::watch::{Notice, WatchConfig, WatchTarget, Watcher};
use kvctl::Endpoint;
use serde_json::Value;

use crate::history::{digest_step, Recorder, Seen, DIGEST_START};
use crate::workload::NodeEndpoint;

/// Heartbeats asked of the nodes: a paused node is left within about a second.
pub const HEARTBEAT: Duration = Duration::from_millis(300);

/// How long a watcher keeps trying to reach some node before it gives up. Faults are healed
/// one at a time within seconds, so running out of it is a finding.
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The index the watchers must reach before they stop; unset (`u64::MAX`) while the run goes
/// on.
#[derive(Debug)]
pub struct Finish(AtomicU64);

impl Default for Finish {
    fn default() -> Self {
        Finish(AtomicU64::new(u64::MAX))
    }
}

impl Finish {
    /// Let the watchers stop once they have covered `index`.
    pub fn at(&self, index: u64) {
        self.0.store(index, Ordering::SeqCst);
    }

    fn target(&self) -> Option<u64> {
        Some(self.0.load(Ordering::SeqCst)).filter(|&t| t != u64::MAX)
    }
}

/// One watcher of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherSpec {
    /// Its id in the history.
    pub id: u32,
    /// What it watches.
    pub target: WatchTarget,
    /// The node it starts on (an index into the node list).
    pub first_node: usize,
}

/// One watcher per node; even ones watch every key, odd ones the first of `keys`.
pub fn specs(nodes: usize, keys: &[String]) -> Vec<WatcherSpec> {
    (0..nodes)
        .map(|i| WatcherSpec {
            id: i as u32,
            target: match keys.first() {
                Some(key) if i % 2 == 1 => WatchTarget::Key(key.clone()),
                _ => WatchTarget::Prefix(String::new()),
            },
            first_node: i,
        })
        .collect()
}

/// Run one watcher until it has covered the index `finish` names, recording into `recorder`.
/// Never fails: a watcher that cannot go on records why in its `End`.
pub async fn run(
    spec: WatcherSpec,
    nodes: Vec<NodeEndpoint>,
    security: kvctl::security::Security,
    recorder: Recorder,
    finish: Arc<Finish>,
) {
    let (key, prefix) = match &spec.target {
        WatchTarget::Key(k) => (Some(k.clone()), None),
        WatchTarget::Prefix(p) => (None, Some(p.clone())),
    };
    recorder.watch(
        spec.id,
        Seen::Start {
            key,
            prefix,
            after: 0,
        },
    );
    let endpoints = nodes
        .iter()
        .map(|n| Endpoint {
            id: Some(n.id),
            address: n.http.clone(),
        })
        .collect();
    let mut config = WatchConfig::new(endpoints, spec.target.clone());
    config.after = Some(0);
    config.heartbeat = HEARTBEAT;
    config.reconnect_timeout = RECONNECT_TIMEOUT;
    config.first_node = spec.first_node;
    config.security = security;
    let end = |covered, error: Option<String>| Seen::End {
        covered,
        target: finish.target().unwrap_or(0),
        error,
    };
    let mut watcher = match Watcher::new(config) {
        Ok(w) => w,
        Err(e) => return recorder.watch(spec.id, end(None, Some(e.to_string()))),
    };
    let mut covered = None;
    loop {
        if let Some(target) = finish.target() {
            if covered.is_some_and(|c| c >= target) {
                return recorder.watch(spec.id, end(covered, None));
            }
        }
        match watcher.next().await {
            Ok(Notice::Event(e)) => {
                let (len, last, digest) = summarize(e.value.as_ref());
                recorder.watch(
                    spec.id,
                    Seen::Change {
                        index: e.index,
                        kind: e.kind.as_str().to_string(),
                        key: e.key,
                        len,
                        last,
                        digest,
                    },
                );
            }
            Ok(Notice::Progress(index)) => covered = Some(index),
            Ok(Notice::Disconnected { node, reason }) => {
                recorder.watch(spec.id, Seen::Reconnect { node, reason });
            }
            Ok(Notice::Connected { .. }) => {}
            Err(e) => return recorder.watch(spec.id, end(covered, Some(e.to_string()))),
        }
    }
}

/// A value as a watcher records it: the length of the list, its last element and its digest;
/// `None` for the length when it is not a list of strings.
fn summarize(value: Option<&Value>) -> (Option<usize>, Option<String>, u64) {
    let Some(items) = value.and_then(Value::as_array) else {
        return (None, None, DIGEST_START);
    };
    let strings: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
    match strings {
        Some(list) => (
            Some(list.len()),
            list.last().map(|s| s.to_string()),
            list.iter().fold(DIGEST_START, |h, s| digest_step(h, s)),
        ),
        None => (None, None, DIGEST_START),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::list_digest;
    use serde_json::json;

    #[test]
    fn watchers_cover_every_node_and_both_filters() {
        let keys = vec!["k0".to_string(), "k1".to_string()];
        let s = specs(3, &keys);
        assert_eq!(s.iter().map(|w| w.first_node).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(s[0].target, WatchTarget::Prefix(String::new()));
        assert_eq!(s[1].target, WatchTarget::Key("k0".into()));
    }

    #[test]
    fn values_are_summarized_by_length_last_element_and_digest() {
        let v = json!(["a", "b"]);
        assert_eq!(
            summarize(Some(&v)),
            (Some(2), Some("b".into()), list_digest(["a", "b"]))
        );
        assert_eq!(summarize(Some(&json!(5))).0, None);
        assert_eq!(summarize(Some(&json!(["a", 1]))).0, None);
        assert_eq!(summarize(None).0, None);
    }
}
