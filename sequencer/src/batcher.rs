//! The epoch batcher: the sequencer's front door.
//!
//! Transactions enter a bounded queue (`queue_txns_max`); a full queue is refused at once
//! (the edge answers RESOURCE_EXHAUSTED), never buffered without bound. One task cuts the queue
//! into batches: at most one cut per `epoch_ms` (an idle node cuts at once, so a lone request
//! does not wait out an epoch) and at most `batch_txns_max` transactions per batch. Each batch is
//! stamped with a monotonic time (`max(previous + 1, now)`) and proposed as one Raft entry.
//! Proposals are pipelined: the next batch is proposed before the previous one commits, with
//! at most `proposals_in_flight_max` outstanding.

use std::sync::Arc;
use std::time::Duration;

use ordo_scheduler::{Batch, Txn, BATCH_TXNS_LIMIT};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::types::Raft;
use crate::waiters::{TxnFailure, Wait, Waiters};

/// A source of milliseconds since the Unix epoch. Injectable so that fault tests can skew a
/// node's clock; only the batcher reads it, never execution.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

#[derive(Clone, Debug)]
pub struct SequencerConfig {
    /// Epoch length: at most one batch is cut per this many milliseconds.
    pub epoch_ms: u64,
    /// The most transactions in one batch (one Raft entry).
    pub batch_txns_max: usize,
    /// The most transactions waiting to be batched; more are refused.
    pub queue_txns_max: usize,
    /// The most batches proposed but not yet committed.
    pub proposals_in_flight_max: usize,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        Self {
            epoch_ms: 5,
            batch_txns_max: 10_000,
            queue_txns_max: 100_000,
            proposals_in_flight_max: 64,
        }
    }
}

impl SequencerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.epoch_ms == 0 || self.epoch_ms > 10_000 {
            return Err(format!("epoch_ms must be 1..=10000, not {}", self.epoch_ms));
        }
        if self.batch_txns_max == 0 || self.batch_txns_max > BATCH_TXNS_LIMIT {
            return Err(format!(
                "batch_txns_max must be 1..={BATCH_TXNS_LIMIT}, not {}",
                self.batch_txns_max
            ));
        }
        if self.queue_txns_max == 0 {
            return Err("queue_txns_max must be at least 1".into());
        }
        if self.proposals_in_flight_max == 0 {
            return Err("proposals_in_flight_max must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the sequencer queue is full ({capacity} transactions); retry later with the same request id")]
    QueueFull { capacity: usize },
    #[error("the sequencer is shutting down")]
    ShuttingDown,
}

/// Handle for submitting transactions. Cheap to clone.
#[derive(Clone)]
pub struct Sequencer {
    tx: mpsc::Sender<Txn>,
    waiters: Arc<Waiters>,
    capacity: usize,
}

impl Sequencer {
    /// Starts the batcher task. It ends when every `Sequencer` handle is dropped.
    pub fn start(raft: Raft, config: SequencerConfig, waiters: Arc<Waiters>, clock: Clock) -> Self {
        let (tx, rx) = mpsc::channel(config.queue_txns_max);
        let capacity = config.queue_txns_max;
        tokio::spawn(run_batcher(rx, raft, config, waiters.clone(), clock));
        Self {
            tx,
            waiters,
            capacity,
        }
    }

    /// Queues transactions as a unit: either all are queued or none is. Returns one wait per
    /// transaction, registered before the transaction is queued. A transaction whose request id
    /// is already in flight on this node is not queued again: its wait joins the first one.
    pub fn submit(&self, txns: Vec<Txn>) -> Result<Vec<Wait>, SubmitError> {
        let permits = match self.tx.try_reserve_many(txns.len()) {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Full(())) => {
                return Err(SubmitError::QueueFull {
                    capacity: self.capacity,
                })
            }
            Err(mpsc::error::TrySendError::Closed(())) => return Err(SubmitError::ShuttingDown),
        };
        let mut waits = Vec::with_capacity(txns.len());
        for (permit, txn) in permits.zip(txns) {
            let (wait, joined) = self.waiters.register_or_join(&txn.request_id);
            waits.push(wait);
            if joined {
                drop(permit);
            } else {
                permit.send(txn);
            }
        }
        Ok(waits)
    }

    /// Transactions waiting to be batched.
    pub fn queued(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    pub fn waiters(&self) -> &Arc<Waiters> {
        &self.waiters
    }
}

async fn run_batcher(
    mut rx: mpsc::Receiver<Txn>,
    raft: Raft,
    config: SequencerConfig,
    waiters: Arc<Waiters>,
    clock: Clock,
) {
    let epoch = Duration::from_millis(config.epoch_ms);
    let in_flight = Arc::new(Semaphore::new(config.proposals_in_flight_max));
    let mut last_cut = Instant::now() - epoch;
    let mut last_time_ms = 0u64;
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut txns = vec![first];
        let deadline = last_cut + epoch;
        while txns.len() < config.batch_txns_max {
            tokio::select! {
                biased;
                next = rx.recv() => match next {
                    Some(txn) => txns.push(txn),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    // Take what is already queued, without waiting any longer.
                    while txns.len() < config.batch_txns_max {
                        match rx.try_recv() {
                            Ok(txn) => txns.push(txn),
                            Err(_) => break,
                        }
                    }
                    break;
                }
            }
        }
        last_cut = Instant::now();
        last_time_ms = clock().max(last_time_ms + 1);
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let request_ids: Vec<String> = txns.iter().map(|t| t.request_id.clone()).collect();
        let batch = Batch {
            time_ms: last_time_ms,
            txns,
        };
        // Enqueue in cut order; wait for the commit off this task so proposals pipeline.
        match raft.client_write_ff(batch).await {
            Ok(rx) => {
                let waiters = waiters.clone();
                tokio::spawn(async move {
                    let outcome = rx.await;
                    drop(permit);
                    let failure = match outcome {
                        Ok(Ok(_)) => return,
                        Ok(Err(e)) => TxnFailure::Unavailable(e.to_string()),
                        Err(_) => TxnFailure::Unavailable("the raft node stopped".into()),
                    };
                    tracing::warn!(%failure, txns = request_ids.len(), "batch not committed");
                    waiters.fail(request_ids.iter().map(String::as_str), &failure);
                });
            }
            Err(fatal) => {
                let failure = TxnFailure::Unavailable(format!("raft stopped: {fatal}"));
                waiters.fail(request_ids.iter().map(String::as_str), &failure);
            }
        }
    }
}
