//! The epoch batcher: the sequencer's front door, on every node.
//!
//! Transactions enter a bounded queue (`queue_txns_max`); a full queue is refused at once
//! (the edge answers RESOURCE_EXHAUSTED), never buffered without bound. One task cuts the queue
//! into batches of at most `batch_txns_max` transactions and `batch_bytes_max` bytes.
//!
//! On the leader: at most one cut per `epoch_ms` (an idle leader cuts at once, so a lone request
//! does not wait out an epoch); each batch is stamped with a monotonic time (`max(previous + 1,
//! now)`, from the leader's clock only) and proposed as one Raft entry. Proposals are pipelined:
//! the next batch is proposed before the previous one commits, with at most
//! `proposals_in_flight_max` outstanding.
//!
//! On a follower: whatever is queued is forwarded at once, as one batch, to the leader's
//! sequencer (`ordo.internal.v1.Raft/Forward`), pipelined under the same bound. The follower's
//! clients are answered by the follower's own execution of their transactions; the leader's
//! reply only names transactions that did not reach the log, whose clients get UNAVAILABLE.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use ordo_proto::internal::v1::{forward_refusal, ForwardRequest};
use ordo_scheduler::{Batch, Txn, BATCH_TXNS_LIMIT};
use ordo_storage::Store;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::network::{
    encode, Channels, APPEND_ENTRIES_MAX, BATCH_BYTES_LIMIT, RAFT_MESSAGE_BYTES_MAX,
};
use crate::peers::MemberAddr;
use crate::types::{NodeId, Raft};
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
    /// The most bytes (encoded transactions) in one batch.
    pub batch_bytes_max: usize,
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
            batch_bytes_max: 4 * 1024 * 1024,
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
        if self.batch_bytes_max < 64 * 1024 || self.batch_bytes_max > BATCH_BYTES_LIMIT {
            return Err(format!(
                "batch_bytes_max must be 65536..={BATCH_BYTES_LIMIT} (so that {APPEND_ENTRIES_MAX} \
                 batches fit one Raft message of {RAFT_MESSAGE_BYTES_MAX} bytes), not {}",
                self.batch_bytes_max
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

/// What the batcher needs to know about its node.
pub struct BatcherContext {
    pub node_id: NodeId,
    pub raft: Raft,
    pub config: SequencerConfig,
    pub waiters: Arc<Waiters>,
    pub clock: Clock,
    pub channels: Channels,
    /// How long a follower waits for the leader to answer a forwarded batch.
    pub forward_timeout: Duration,
    /// The applied state, for when the next hold lapses (an idle leader cuts an epoch then).
    pub store: Arc<Store>,
}

/// The shortest and the longest an idle batcher sleeps before it looks again for a hold that
/// has lapsed.
const HOLDS_CHECK_MIN: Duration = Duration::from_millis(5);
const HOLDS_CHECK_MAX: Duration = Duration::from_millis(250);
/// Empty epochs, cut only to expire holds, come at most once per this interval (or per epoch,
/// if that is longer): a backlog of expiries is swept at `expiry_per_epoch_max` per partition
/// per empty epoch.
const EMPTY_EPOCH_GAP: Duration = Duration::from_millis(20);

/// The leader's epoch stamps: `max(its clock, previous + 1, previous + the monotonic time since
/// the previous stamp)`, where the previous stamp is this node's own or, after a leader change,
/// the applied epoch's time. Sequencer time so moves on at least at real pace even while the
/// leader's clock is behind it (after a clock stepped forward and back, or a leader change to a
/// slower clock), so a hold's TTL lasts about that long in real time and not one millisecond
/// per epoch. Execution still only takes `max(previous + 1, stamp)`.
#[derive(Default)]
struct Stamper {
    /// This node's last stamp and when it was made.
    last: Option<(u64, Instant)>,
}

impl Stamper {
    fn peek(&self, ctx: &BatcherContext) -> u64 {
        let applied = ctx.store.applied_time_ms();
        let paced = match self.last {
            Some((ms, at)) if ms >= applied => ms.saturating_add(at.elapsed().as_millis() as u64),
            _ => 0,
        };
        let previous = self.last.map_or(0, |(ms, _)| ms).max(applied);
        (ctx.clock)().max(paced).max(previous.saturating_add(1))
    }

    fn next(&mut self, ctx: &BatcherContext) -> u64 {
        let ms = self.peek(ctx);
        self.last = Some((ms, Instant::now()));
        ms
    }
}

/// How long an idle batcher may sleep before it must look at the holds again, and whether an
/// epoch is due now (the earliest unswept hold has lapsed by this leader's clock).
fn holds_due(ctx: &BatcherContext, now_ms: u64) -> (Duration, bool) {
    match ordo_scheduler::reads::next_hold_due(&ctx.store) {
        Ok(Some(at)) if at <= now_ms => (HOLDS_CHECK_MIN, true),
        Ok(Some(at)) => (
            Duration::from_millis(at - now_ms).clamp(HOLDS_CHECK_MIN, HOLDS_CHECK_MAX),
            false,
        ),
        Ok(None) => (HOLDS_CHECK_MAX, false),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read when the next hold lapses");
            (HOLDS_CHECK_MAX, false)
        }
    }
}

impl Sequencer {
    /// Starts the batcher task. It ends when every `Sequencer` handle is dropped.
    pub fn start(ctx: BatcherContext) -> Self {
        let (tx, rx) = mpsc::channel(ctx.config.queue_txns_max);
        let capacity = ctx.config.queue_txns_max;
        let waiters = ctx.waiters.clone();
        tokio::spawn(fail_waiters_on_leader_change(
            ctx.raft.clone(),
            waiters.clone(),
        ));
        tokio::spawn(run_batcher(rx, ctx));
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
            let (wait, joined) = self.waiters.register_or_join(&txn);
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

/// The leader this node knows of, with its address, unless it is this node.
pub(crate) fn remote_leader(
    raft: &Raft,
    node_id: NodeId,
) -> Result<Option<(NodeId, MemberAddr)>, String> {
    let metrics = raft.metrics().borrow().clone();
    match metrics.current_leader {
        Some(leader) if leader == node_id && metrics.state == ServerState::Leader => Ok(None),
        Some(leader) if leader != node_id => {
            let addr = metrics
                .membership_config
                .membership()
                .get_node(&leader)
                .map(|n| MemberAddr::parse(&n.addr))
                .ok_or_else(|| format!("leader {leader} has no address in the membership"))?;
            Ok(Some((leader, addr)))
        }
        _ => Err(format!("node {node_id} knows no leader right now")),
    }
}

fn txn_bytes(txn: &Txn) -> usize {
    bincode::serialized_size(txn)
        .map(|n| n as usize)
        .unwrap_or(usize::MAX)
}

async fn run_batcher(mut rx: mpsc::Receiver<Txn>, ctx: BatcherContext) {
    let config = &ctx.config;
    let epoch = Duration::from_millis(config.epoch_ms);
    let in_flight = Arc::new(Semaphore::new(config.proposals_in_flight_max));
    let mut last_cut = Instant::now() - epoch;
    let mut stamps = Stamper::default();
    // A transaction that did not fit the previous batch's byte budget.
    let mut carry: Option<Txn> = None;
    let mut idle_sleep = HOLDS_CHECK_MIN;
    loop {
        let first = match carry.take() {
            Some(txn) => Some(txn),
            None => tokio::select! {
                biased;
                next = rx.recv() => match next {
                    Some(txn) => Some(txn),
                    None => return,
                },
                _ = tokio::time::sleep(idle_sleep) => None,
            },
        };
        let Some(first) = first else {
            // Idle. Holds lapse by epoch time, so when one is due the leader cuts an empty
            // epoch: its prologue sweeps them, and reads see the new time.
            let (sleep, due) = holds_due(&ctx, stamps.peek(&ctx));
            idle_sleep = sleep;
            let gap = epoch.max(EMPTY_EPOCH_GAP);
            let leading = matches!(remote_leader(&ctx.raft, ctx.node_id), Ok(None));
            if due && leading && last_cut.elapsed() >= gap {
                if let Ok(permit) = in_flight.clone().try_acquire_owned() {
                    ordo_metrics::EPOCH_INTERVAL.observe_duration(last_cut.elapsed());
                    ordo_metrics::EPOCH_TXNS.observe(0);
                    last_cut = Instant::now();
                    let time_ms = stamps.next(&ctx);
                    propose(&ctx, Vec::new(), time_ms, permit).await;
                }
            }
            continue;
        };
        // No batch may outgrow its budget, not even a batch of one.
        let first_bytes = txn_bytes(&first);
        if first_bytes > config.batch_bytes_max {
            let failure = TxnFailure::Invalid(format!(
                "the transaction is {first_bytes} bytes; one epoch batch holds at most {}",
                config.batch_bytes_max
            ));
            ctx.waiters
                .fail([&first], &failure, ctx.waiters.watermark());
            continue;
        }
        let leading = matches!(remote_leader(&ctx.raft, ctx.node_id), Ok(None));
        // A follower forwards at once; the leader cuts at most once per epoch.
        let deadline = if leading {
            last_cut + epoch
        } else {
            Instant::now()
        };
        let mut bytes = first_bytes;
        let mut txns = vec![first];
        while txns.len() < config.batch_txns_max && bytes < config.batch_bytes_max {
            let next = if Instant::now() >= deadline {
                match rx.try_recv() {
                    Ok(txn) => txn,
                    Err(_) => break,
                }
            } else {
                tokio::select! {
                    biased;
                    next = rx.recv() => match next {
                        Some(txn) => txn,
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => continue,
                }
            };
            let size = txn_bytes(&next);
            if bytes.saturating_add(size) > config.batch_bytes_max {
                carry = Some(next);
                break;
            }
            bytes = bytes.saturating_add(size);
            txns.push(next);
        }
        let interval = last_cut.elapsed();
        last_cut = Instant::now();
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        match remote_leader(&ctx.raft, ctx.node_id) {
            Ok(None) => {
                ordo_metrics::EPOCH_INTERVAL.observe_duration(interval);
                ordo_metrics::EPOCH_TXNS.observe(txns.len() as u64);
                let time_ms = stamps.next(&ctx);
                propose(&ctx, txns, time_ms, permit).await;
            }
            Ok(Some((leader, addr))) => forward(&ctx, txns, leader, addr.peer, permit),
            Err(why) => {
                // Cut but never proposed nor forwarded: definitely not applied.
                let failure = TxnFailure::NotApplied(why);
                ctx.waiters.fail(&txns, &failure, ctx.waiters.watermark());
            }
        }
    }
}

/// Fails every waiting request when a new leader is known. A batch proposed by, or forwarded
/// to, the old leader may or may not commit; waiting for it would hold clients until their
/// timeout (a paused leader answers nothing). The failure is UNAVAILABLE with the new leader
/// as the hint, which tells clients to retry there with the same request id; the dedupe table
/// makes that retry safe whether or not the first attempt commits. While no leader is known,
/// requests keep waiting (up to the request timeout): there is nowhere better to send them.
/// Ends when Raft shuts down.
async fn fail_waiters_on_leader_change(raft: Raft, waiters: Arc<Waiters>) {
    let mut metrics = raft.metrics();
    let mut known = metrics.borrow().current_leader;
    while metrics.changed().await.is_ok() {
        let Some(now) = metrics.borrow().current_leader else {
            continue;
        };
        if known == Some(now) {
            continue;
        }
        if let (Some(old), false) = (known, waiters.is_empty()) {
            let failure = TxnFailure::Unavailable(format!(
                "leader {old} was replaced by {now}; the outcome is unknown: retry with the \
                 same request id"
            ));
            let failed = waiters.fail_all(&failure);
            tracing::info!(old, now, failed, "leader changed; failed waiting requests");
        }
        known = Some(now);
    }
}

/// Proposes a batch as one Raft entry, in cut order; waits for the commit off the batcher task.
async fn propose(ctx: &BatcherContext, txns: Vec<Txn>, time_ms: u64, permit: OwnedSemaphorePermit) {
    let request_ids: Vec<String> = txns.iter().map(|t| t.request_id.clone()).collect();
    let proposed = std::time::Instant::now();
    match ctx.raft.client_write_ff(Batch { time_ms, txns }).await {
        Ok(rx) => {
            let waiters = ctx.waiters.clone();
            tokio::spawn(async move {
                let outcome = rx.await;
                drop(permit);
                let failure = match outcome {
                    Ok(Ok(_)) => {
                        ordo_metrics::RAFT_COMMIT.observe_duration(proposed.elapsed());
                        return;
                    }
                    Ok(Err(e)) => TxnFailure::Unavailable(e.to_string()),
                    Err(_) => TxnFailure::Unavailable("the raft node stopped".into()),
                };
                if request_ids.is_empty() {
                    // An empty epoch cut to expire holds: the next leader cuts its own.
                    tracing::debug!(%failure, "empty batch not committed");
                } else {
                    tracing::warn!(%failure, txns = request_ids.len(), "batch not committed");
                }
                waiters.fail_uncertain(request_ids.iter().map(String::as_str), &failure);
            });
        }
        Err(fatal) => {
            let failure = TxnFailure::Unavailable(format!("raft stopped: {fatal}"));
            ctx.waiters
                .fail_uncertain(request_ids.iter().map(String::as_str), &failure);
        }
    }
}

/// Hands a batch to the leader; the clients are answered by this node's own execution, except
/// for the transactions the leader reports it could not get into the log.
fn forward(
    ctx: &BatcherContext,
    txns: Vec<Txn>,
    leader: NodeId,
    addr: String,
    permit: OwnedSemaphorePermit,
) {
    let request_ids: Vec<String> = txns.iter().map(|t| t.request_id.clone()).collect();
    ordo_metrics::FORWARDED_BATCHES.inc();
    let waiters = ctx.waiters.clone();
    // Every wait of this batch was registered before now; a retry registered later is not
    // this attempt's to fail.
    let watermark = waiters.watermark();
    let client = ctx.channels.raft_client(&addr);
    let from_node = ctx.node_id;
    let timeout = ctx.forward_timeout;
    let mut metrics = ctx.raft.metrics();
    tokio::spawn(async move {
        let outcome = async {
            // Nothing has left this node yet: a failure here is definite.
            let mut client = client.map_err(TxnFailure::NotApplied)?;
            let txns = encode(&txns).map_err(TxnFailure::NotApplied)?;
            let call = client.forward(ForwardRequest { from_node, txns });
            // A leader that stops answering (paused, cut off) is usually replaced long before
            // the timeout: stop waiting for it then.
            let replaced = metrics.wait_for(|m| m.current_leader != Some(leader));
            let answer = tokio::select! {
                answer = tokio::time::timeout(timeout, call) => answer,
                _ = replaced => {
                    return Err(TxnFailure::Unavailable(format!(
                        "leader {leader} was replaced before it answered a forwarded batch; the \
                         outcome is unknown: retry with the same request id"
                    )))
                }
            };
            match answer {
                Err(_) => Err(TxnFailure::Unavailable(format!(
                    "leader {leader} at {addr} did not answer a forwarded batch within {timeout:?}"
                ))),
                Ok(Err(status)) if status.code() == tonic::Code::ResourceExhausted => {
                    Err(TxnFailure::Overloaded(status.message().to_string()))
                }
                // Refused by the leader before anything was queued there.
                Ok(Err(status))
                    if matches!(
                        status.code(),
                        tonic::Code::FailedPrecondition
                            | tonic::Code::Unauthenticated
                            | tonic::Code::InvalidArgument
                    ) =>
                {
                    Err(TxnFailure::NotApplied(format!(
                        "leader {leader} at {addr} refused a forwarded batch: {}",
                        status.message()
                    )))
                }
                Ok(Err(status)) => Err(TxnFailure::Unavailable(format!(
                    "forwarding to leader {leader} at {addr}: {}",
                    status.message()
                ))),
                Ok(Ok(response)) => Ok(response.into_inner()),
            }
        }
        .await;
        drop(permit);
        match outcome {
            Ok(response) => {
                for refusal in &response.refused {
                    let failure = match refusal.kind() {
                        forward_refusal::Kind::Invalid => {
                            TxnFailure::Invalid(refusal.reason.clone())
                        }
                        forward_refusal::Kind::NotApplied => TxnFailure::NotApplied(format!(
                            "on leader {leader}: {}",
                            refusal.reason
                        )),
                    };
                    let refused = txns.iter().filter(|t| t.request_id == refusal.request_id);
                    waiters.fail(refused, &failure, watermark);
                }
                if !response.failed_request_ids.is_empty() {
                    let failure =
                        TxnFailure::Unavailable(format!("on leader {leader}: {}", response.error));
                    waiters.fail_uncertain(
                        response.failed_request_ids.iter().map(String::as_str),
                        &failure,
                    );
                }
            }
            Err(failure) => {
                tracing::debug!(%failure, txns = request_ids.len(), "forwarded batch failed");
                match failure {
                    TxnFailure::Unavailable(_) => {
                        waiters.fail_uncertain(request_ids.iter().map(String::as_str), &failure)
                    }
                    _ => waiters.fail(&txns, &failure, watermark),
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_bytes_max_is_capped_so_append_entries_fits_a_raft_message() {
        let with = |batch_bytes_max| SequencerConfig {
            batch_bytes_max,
            ..SequencerConfig::default()
        };
        assert!(with(BATCH_BYTES_LIMIT).validate().is_ok());
        let refused = with(BATCH_BYTES_LIMIT + 1).validate().unwrap_err();
        assert!(refused.contains("batch_bytes_max"), "{refused}");
        assert!(with(64 * 1024 - 1).validate().is_err());
        assert!(
            (APPEND_ENTRIES_MAX as usize) * BATCH_BYTES_LIMIT < RAFT_MESSAGE_BYTES_MAX,
            "room for the envelopes"
        );
    }
}
