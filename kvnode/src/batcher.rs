//! Group commit: many client writes, one log entry.
//!
//! Every log entry costs the same bookkeeping whatever it carries: a log id, a slot in the
//! replication stream, a trip through apply with its own responder. The batcher queues client
//! writes and proposes them together as one entry: while `max_in_flight` batches are being committed,
//! new writes wait in the queue, and the next batch takes all of them (up to `max_ops` writes
//! or `max_bytes`). Under light load a write goes out alone at once; under heavy load batches
//! grow by themselves, which is the behaviour group commit is for.
//!
//! Each write is answered individually from the state machine's per-operation replies. A batch
//! whose commit is not confirmed within the write timeout answers "outcome unknown": the entry
//! may still commit later, and only the client's idempotency key can tell.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::errors::{ClientWriteError, Fatal, ForwardReason, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::config::BatchLimits;
use crate::error::NodeError;
use crate::types::{Batch, Op, OpReply, Raft};

struct Pending {
    op: Op,
    size: usize,
    done: oneshot::Sender<Result<OpReply, NodeError>>,
}

/// Handle to the group-commit task of a node.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Start the group-commit task for `raft`.
    pub fn start(raft: Raft, limits: BatchLimits) -> Batcher {
        let (tx, rx) = mpsc::channel(16 * 1024);
        tokio::spawn(run(raft, rx, limits));
        Batcher { tx }
    }

    /// Propose `op` (of about `size` bytes) and wait for its outcome. Only call on the leader;
    /// `NodeError::NotLeader` means the write was not proposed and may be sent elsewhere.
    pub async fn submit(&self, op: Op, size: usize) -> Result<OpReply, NodeError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Pending { op, size, done })
            .await
            .map_err(|_| NodeError::ShuttingDown)?;
        // Once queued, the write may be proposed at any moment: losing its answer now means
        // its outcome is unknown, not that it failed.
        rx.await.map_err(|_| NodeError::Interrupted)?
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>, limits: BatchLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut bytes = first.size;
        let mut batch = vec![first];
        while batch.len() < limits.max_ops && bytes < limits.max_bytes {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.size;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(&raft, batch, limits.write_timeout).await;
            drop(permit);
        });
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn commit(raft: &Raft, batch: Vec<Pending>, timeout: Duration) {
    let (ops, waiters): (Vec<Op>, Vec<_>) = batch.into_iter().map(|p| (p.op, p.done)).unzip();
    let n = ops.len();
    let proposal = Batch { ts_ms: now_ms(), ops };
    let started = std::time::Instant::now();
    let result = match tokio::time::timeout(timeout, raft.client_write(proposal)).await {
        Ok(Ok(resp)) if resp.data.replies.len() == n => {
            for (w, reply) in waiters.into_iter().zip(resp.data.replies) {
                let _ = w.send(Ok(reply));
            }
            return;
        }
        Ok(Ok(resp)) => NodeError::Internal(format!(
            "state machine answered {} replies for a batch of {n}",
            resp.data.replies.len()
        )),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => match f.reason {
            ForwardReason::LeaseExpired => {
                NodeError::NoQuorum("no majority has acknowledged this leader within its lease".into())
            }
            _ => NodeError::NotLeader { leader: f.leader_id },
        },
        // The entry was appended, then discarded when this node adopted another leader's log:
        // a copy may still commit through that leader.
        Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => NodeError::OutcomeUnknown {
            waited_ms: started.elapsed().as_millis() as u64,
        },
        Ok(Err(RaftError::APIError(e))) => NodeError::Internal(e.to_string()),
        Ok(Err(RaftError::Fatal(Fatal::Stopped))) => NodeError::Interrupted,
        Ok(Err(RaftError::Fatal(f))) => NodeError::Internal(f.to_string()),
        Err(_) => NodeError::OutcomeUnknown {
            waited_ms: timeout.as_millis() as u64,
        },
    };
    for w in waiters {
        let _ = w.send(Err(result.clone()));
    }
}
