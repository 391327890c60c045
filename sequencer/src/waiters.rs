//! Clients waiting for their transactions' results.
//!
//! A request registers under its request id before it is queued; when this replica executes a
//! transaction with that id (or finds it in the dedupe table), every waiter for the id gets the
//! result. The map is bounded by the sequencer queue and the proposals in flight: every entry
//! belongs to a request that is queued, proposed or timing out at the edge.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ordo_scheduler::TxnResult;
use tokio::sync::oneshot;

/// Why a waiting request got no result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxnFailure {
    /// The proposal did not reach the log (no leader, leader changed, node shutting down). The
    /// transaction may or may not be applied later: retry with the same request id.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The leader's sequencer queue was full: retry later with the same request id. The
    /// transaction was not sequenced.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The transaction was not sequenced and never will be from this attempt (no leader was
    /// known when its batch was cut, the leader refused the forwarded batch): retry.
    #[error("not applied: {0}")]
    NotApplied(String),
    /// The leader found the transaction inadmissible (the validator execution uses).
    #[error("invalid: {0}")]
    Invalid(String),
}

pub type TxnOutcome = Result<TxnResult, TxnFailure>;

type Slot = (u64, oneshot::Sender<TxnOutcome>);

#[derive(Default)]
pub struct Waiters {
    // A HashMap is fine here: this is the edge, and its order never reaches state or results.
    by_request: Mutex<HashMap<String, Vec<Slot>>>,
    next_id: AtomicU64,
}

/// A registered wait: the id to cancel it with, and where the outcome arrives.
pub struct Wait {
    pub request_id: String,
    pub id: u64,
    pub rx: oneshot::Receiver<TxnOutcome>,
}

impl Waiters {
    pub fn register(&self, request_id: &str) -> Wait {
        self.register_or_join(request_id).0
    }

    /// Registers a wait; the flag says whether the request id was already waited for (in
    /// flight on this node), in which case the caller joins that request instead of queueing
    /// the same request again.
    pub fn register_or_join(&self, request_id: &str) -> (Wait, bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut map = self.by_request.lock().expect("waiters lock");
        let slots = map.entry(request_id.to_string()).or_default();
        let joined = !slots.is_empty();
        slots.push((id, tx));
        let wait = Wait {
            request_id: request_id.to_string(),
            id,
            rx,
        };
        (wait, joined)
    }

    /// Delivers an executed transaction's result to everyone waiting for its request id.
    pub fn complete(&self, result: &TxnResult) {
        let slots = self
            .by_request
            .lock()
            .expect("waiters lock")
            .remove(&result.request_id);
        for (_, tx) in slots.unwrap_or_default() {
            let _ = tx.send(Ok(result.clone()));
        }
    }

    /// Fails the waiters of requests whose proposal did not reach the log.
    pub fn fail<'a>(&self, request_ids: impl IntoIterator<Item = &'a str>, failure: &TxnFailure) {
        let mut map = self.by_request.lock().expect("waiters lock");
        for request_id in request_ids {
            for (_, tx) in map.remove(request_id).unwrap_or_default() {
                let _ = tx.send(Err(failure.clone()));
            }
        }
    }

    /// Fails every waiter (the leader changed: no pending outcome can be vouched for).
    /// Returns how many request ids were failed.
    pub fn fail_all(&self, failure: &TxnFailure) -> usize {
        let pending = std::mem::take(&mut *self.by_request.lock().expect("waiters lock"));
        let count = pending.len();
        for (_, tx) in pending.into_values().flatten() {
            let _ = tx.send(Err(failure.clone()));
        }
        count
    }

    /// Forgets one wait (the client gave up or timed out).
    pub fn cancel(&self, request_id: &str, id: u64) {
        let mut map = self.by_request.lock().expect("waiters lock");
        if let Some(slots) = map.get_mut(request_id) {
            slots.retain(|(slot, _)| *slot != id);
            if slots.is_empty() {
                map.remove(request_id);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_request.lock().expect("waiters lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_all_answers_every_waiter_and_joined_one_once() {
        let waiters = Waiters::default();
        let a = waiters.register("a");
        let (b1, joined1) = waiters.register_or_join("b");
        let (b2, joined2) = waiters.register_or_join("b");
        assert!(!joined1 && joined2);
        let failure = TxnFailure::Unavailable("leader 1 was replaced by 2".into());
        assert_eq!(waiters.fail_all(&failure), 2, "two request ids");
        assert!(waiters.is_empty());
        for mut w in [a, b1, b2] {
            assert_eq!(w.rx.try_recv().unwrap(), Err(failure.clone()));
        }
        // A request registered afterwards waits for its own outcome.
        let mut c = waiters.register("c");
        assert!(c.rx.try_recv().is_err());
        assert_eq!(waiters.len(), 1);
    }
}
