//! Linearizable reads with shared leadership confirmations.
//!
//! Before answering a linearizable read, the leader must confirm with a quorum that it is still
//! the leader (`ensure_linearizable`, one heartbeat round), or a deposed leader that has not yet
//! heard of its successor could serve stale data. One round per read would cap read throughput
//! at one round trip per read, so concurrent readers share rounds: the barrier task takes every
//! reader waiting when a round starts and answers them all with its result. A reader that
//! arrives during a round waits for the next one, because only a round that started after the
//! read began proves the read is not stale.
//!
//! A round that fails with `QuorumNotEnough` is retried once before giving up: a single lost
//! heartbeat is common right after an election.

use std::time::Duration;

use openraft::error::{CheckIsLeaderError, Fatal, RaftError};
use tokio::sync::{mpsc, oneshot};

use crate::node::NodeError;
use crate::types::{LogIndex, Raft};

type Waiter = oneshot::Sender<Result<Option<LogIndex>, NodeError>>;

/// Handle to the read-barrier task of a node.
#[derive(Clone)]
pub struct ReadBarrier {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl ReadBarrier {
    /// Start the barrier task for `raft`; each round is bounded by `timeout`.
    pub fn start(raft: Raft, timeout: Duration) -> ReadBarrier {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx, timeout));
        ReadBarrier { tx }
    }

    /// Wait until a leadership round that started after this call succeeds and the state
    /// machine has applied up to the returned read index.
    pub async fn confirm(&self) -> Result<Option<LogIndex>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| NodeError::ShuttingDown)?;
        rx.await.map_err(|_| NodeError::ShuttingDown)?
    }
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<Waiter>, timeout: Duration) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let result = round(&raft, timeout).await;
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

async fn round(raft: &Raft, timeout: Duration) -> Result<Option<LogIndex>, NodeError> {
    for attempt in 0..2 {
        match tokio::time::timeout(timeout, raft.ensure_linearizable()).await {
            Ok(Ok(read_log_id)) => return Ok(read_log_id.map(|l| l.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                return Err(NodeError::NotLeader { leader: f.leader_id })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) if attempt == 0 => continue,
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                return Err(NodeError::NoQuorum(
                    "a majority of nodes did not confirm this leader".into(),
                ))
            }
            Ok(Err(RaftError::Fatal(Fatal::Stopped))) => return Err(NodeError::ShuttingDown),
            Ok(Err(RaftError::Fatal(f))) => return Err(NodeError::Internal(f.to_string())),
            Err(_) => {
                return Err(NodeError::NoQuorum(format!(
                    "no quorum confirmed leadership within {} ms",
                    timeout.as_millis()
                )))
            }
        }
    }
    Err(NodeError::NoQuorum("leadership could not be confirmed".into()))
}
