//! Clients waiting for their transactions' results.
//!
//! A request registers under its request id before it is queued; when this replica executes a
//! transaction with that id (or finds it in the dedupe table), every waiter for the id gets the
//! result. The map is bounded by the sequencer queue and the proposals in flight: every entry
//! belongs to a request that is queued, proposed or timing out at the edge.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ordo_scheduler::{body_digest, Txn, TxnResult};
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

/// What a request's body hashes to ([`body_digest`]): waits are per request id *and* body, so
/// two requests that share an id but not a body never answer each other.
pub type Digest = [u8; 32];

struct Slot {
    id: u64,
    digest: Digest,
    tx: oneshot::Sender<TxnOutcome>,
}

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
    pub fn register(&self, txn: &Txn) -> Wait {
        self.register_or_join(txn).0
    }

    /// Registers a wait for `txn`; the flag says whether the same request (same id, same
    /// body) is already waited for on this node, in which case the caller joins it instead of
    /// queueing it again. A request with the same id and another body does not join: it is
    /// sequenced, and execution refuses it (ALREADY_EXISTS) or refuses the other one.
    pub fn register_or_join(&self, txn: &Txn) -> (Wait, bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let digest = body_digest(&txn.op);
        let (tx, rx) = oneshot::channel();
        let mut map = self.by_request.lock().expect("waiters lock");
        let slots = map.entry(txn.request_id.clone()).or_default();
        let joined = slots.iter().any(|s| s.digest == digest);
        slots.push(Slot { id, digest, tx });
        let wait = Wait {
            request_id: txn.request_id.clone(),
            id,
            rx,
        };
        (wait, joined)
    }

    /// Delivers an executed transaction's result to everyone waiting for that request (its
    /// request id and its body).
    pub fn complete(&self, txn: &Txn, result: &TxnResult) {
        let mut map = self.by_request.lock().expect("waiters lock");
        let Some(slots) = map.get_mut(&result.request_id) else {
            return;
        };
        let digest = body_digest(&txn.op);
        for slot in take_matching(slots, &digest) {
            let _ = slot.tx.send(Ok(result.clone()));
        }
        if slots.is_empty() {
            map.remove(&result.request_id);
        }
    }

    /// The id the next wait will get: waits registered from now on have ids at or above it.
    pub fn watermark(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// Fails the waiters of these requests (id and body) registered before `watermark`: for
    /// definite failures, which must reach neither a request with the same id and another
    /// body, nor a retry registered after the failed attempt left (its own attempt may still
    /// be applied).
    pub fn fail<'a>(
        &self,
        txns: impl IntoIterator<Item = &'a Txn>,
        failure: &TxnFailure,
        watermark: u64,
    ) {
        let mut map = self.by_request.lock().expect("waiters lock");
        for txn in txns {
            let Some(slots) = map.get_mut(&txn.request_id) else {
                continue;
            };
            let digest = body_digest(&txn.op);
            let (failed, kept): (Vec<Slot>, Vec<Slot>) = std::mem::take(slots)
                .into_iter()
                .partition(|s| s.digest == digest && s.id < watermark);
            *slots = kept;
            for slot in failed {
                let _ = slot.tx.send(Err(failure.clone()));
            }
            if slots.is_empty() {
                map.remove(&txn.request_id);
            }
        }
    }

    /// Fails every waiter of these request ids, whatever its body, with an outcome that is
    /// not definite (UNAVAILABLE: retry with the same request id, and dedupe sorts it out).
    pub fn fail_uncertain<'a>(
        &self,
        request_ids: impl IntoIterator<Item = &'a str>,
        failure: &TxnFailure,
    ) {
        let mut map = self.by_request.lock().expect("waiters lock");
        for request_id in request_ids {
            for slot in map.remove(request_id).unwrap_or_default() {
                let _ = slot.tx.send(Err(failure.clone()));
            }
        }
    }

    /// Fails every waiter (the leader changed: no pending outcome can be vouched for).
    /// Returns how many request ids were failed.
    pub fn fail_all(&self, failure: &TxnFailure) -> usize {
        let pending = std::mem::take(&mut *self.by_request.lock().expect("waiters lock"));
        let count = pending.len();
        for slot in pending.into_values().flatten() {
            let _ = slot.tx.send(Err(failure.clone()));
        }
        count
    }

    /// Forgets one wait (the client gave up or timed out).
    pub fn cancel(&self, request_id: &str, id: u64) {
        let mut map = self.by_request.lock().expect("waiters lock");
        if let Some(slots) = map.get_mut(request_id) {
            slots.retain(|slot| slot.id != id);
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

/// Removes and returns the slots waiting for the request with this body.
fn take_matching(slots: &mut Vec<Slot>, digest: &Digest) -> Vec<Slot> {
    let (matching, rest): (Vec<Slot>, Vec<Slot>) = std::mem::take(slots)
        .into_iter()
        .partition(|s| &s.digest == digest);
    *slots = rest;
    matching
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordo_scheduler::{KvOp, Op, Outcome};

    fn kv(id: &str, value: i64) -> Txn {
        Txn {
            request_id: id.into(),
            op: Op::Kv(vec![KvOp::Write("k".into(), value)]),
        }
    }

    fn result(id: &str) -> TxnResult {
        TxnResult {
            request_id: id.into(),
            epoch: 1,
            outcome: Outcome::Kv {
                results: vec![None],
                abort: None,
            },
        }
    }

    #[test]
    fn one_id_two_bodies_never_answer_each_other() {
        let waiters = Waiters::default();
        let (mut first, joined) = waiters.register_or_join(&kv("x", 5));
        assert!(!joined);
        let (mut other, joined) = waiters.register_or_join(&kv("x", -3));
        assert!(!joined, "another body does not join");
        waiters.complete(&kv("x", 5), &result("x"));
        assert!(first.rx.try_recv().unwrap().is_ok());
        assert!(
            other.rx.try_recv().is_err(),
            "still waiting for its own execution"
        );
        let mark = waiters.watermark();
        let (mut retry, joined) = waiters.register_or_join(&kv("x", -3));
        assert!(joined);
        waiters.fail(
            [&kv("x", -3)],
            &TxnFailure::NotApplied("no leader".into()),
            mark,
        );
        assert!(other.rx.try_recv().unwrap().is_err());
        assert!(
            retry.rx.try_recv().is_err(),
            "a wait registered after the failed attempt left is not failed by it"
        );
    }

    #[test]
    fn fail_all_answers_every_waiter_and_joined_one_once() {
        let waiters = Waiters::default();
        let a = waiters.register(&kv("a", 1));
        let (b1, joined1) = waiters.register_or_join(&kv("b", 1));
        let (b2, joined2) = waiters.register_or_join(&kv("b", 1));
        assert!(!joined1 && joined2);
        let failure = TxnFailure::Unavailable("leader 1 was replaced by 2".into());
        assert_eq!(waiters.fail_all(&failure), 2, "two request ids");
        assert!(waiters.is_empty());
        for mut w in [a, b1, b2] {
            assert_eq!(w.rx.try_recv().unwrap(), Err(failure.clone()));
        }
        // A request registered afterwards waits for its own outcome.
        let mut c = waiters.register(&kv("c", 1));
        assert!(c.rx.try_recv().is_err());
        assert_eq!(waiters.len(), 1);
    }
}
