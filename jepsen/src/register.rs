//! Linearizability of registers: the WGL search (Wing & Gong, with Lowe's memoisation, as in
//! porcupine), checked per key.
//!
//! Operations are `read` (value null on invoke, the value read on `ok`), `write` (the value)
//! and `cas` (`[from, to]`). The register starts empty (null). What each completion means:
//! - `ok`: it took effect between its invocation and its completion;
//! - `fail` of a `cas`: it ran and its comparison failed, so at its linearization point the
//!   register did not hold `from`; unless its completion value is `{"error": ...}`: then it
//!   was refused before it ran and constrains nothing; a failed `write` did not happen; a failed `read` says nothing;
//! - `info` or no completion: unknown. It may have taken effect at any point after its
//!   invocation, or never (which is the same as taking effect after everything else).

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use crate::history::{EventType, Operation};

/// The register's value: `None` is empty.
type State = Option<i64>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Read(State),
    Write(i64),
    Cas {
        from: i64,
        to: i64,
    },
    /// A cas that ran and failed: the register did not hold `from`.
    CasFailed {
        from: i64,
    },
    /// A cas with an unknown outcome: wherever it is placed, it swaps if the register holds
    /// `from` and does nothing otherwise (it may have failed, or never run).
    CasUnknown {
        from: i64,
        to: i64,
    },
}

/// One operation as the search sees it.
#[derive(Clone, Debug)]
struct RegOp {
    step: Step,
    call: u64,
    /// `u64::MAX` for unknown outcomes.
    ret: u64,
    /// Index into the caller's operation list, for reports.
    source: usize,
}

fn int(v: &Value, what: &str) -> Result<i64, String> {
    v.as_i64()
        .ok_or_else(|| format!("{what}: {v} is not an integer"))
}

fn state(v: &Value, what: &str) -> Result<State, String> {
    if v.is_null() {
        Ok(None)
    } else {
        int(v, what).map(Some)
    }
}

/// Turns a paired operation into what the search needs; `None` if it constrains nothing (a
/// failed write, a read without a result).
fn reg_op(i: usize, op: &Operation) -> Result<Option<RegOp>, String> {
    let ctx = |what: &str| {
        format!(
            "operation {i} ({} at event {}): {what}",
            op.f, op.invoke_index
        )
    };
    let step = match (op.f.as_str(), op.completion) {
        ("read", Some(EventType::Ok)) => Step::Read(state(&op.complete_value, &ctx("read value"))?),
        ("read", _) => return Ok(None),
        ("write", Some(EventType::Fail)) => return Ok(None),
        ("write", _) => Step::Write(int(&op.invoke_value, &ctx("write value"))?),
        ("cas", completion) => {
            let pair = op
                .invoke_value
                .as_array()
                .filter(|a| a.len() == 2)
                .ok_or_else(|| ctx("cas value must be [from, to]"))?;
            let from = int(&pair[0], &ctx("cas from"))?;
            let to = int(&pair[1], &ctx("cas to"))?;
            match completion {
                // Refused before it ran (the server said it was not applied).
                Some(EventType::Fail) if op.complete_value.get("error").is_some() => {
                    return Ok(None)
                }
                Some(EventType::Fail) => Step::CasFailed { from },
                Some(EventType::Ok) => Step::Cas { from, to },
                _ => Step::CasUnknown { from, to },
            }
        }
        (f, _) => return Err(ctx(&format!("unknown register operation {f:?}"))),
    };
    let ret = if op.is_indeterminate() {
        u64::MAX
    } else {
        op.complete_index
    };
    Ok(Some(RegOp {
        step,
        call: op.invoke_index,
        ret,
        source: i,
    }))
}

fn apply(state: State, step: Step) -> Option<State> {
    match step {
        Step::Read(v) => (state == v).then_some(state),
        Step::Write(v) => Some(Some(v)),
        Step::Cas { from, to } => (state == Some(from)).then_some(Some(to)),
        Step::CasFailed { from } => (state != Some(from)).then_some(state),
        Step::CasUnknown { from, to } => Some(if state == Some(from) { Some(to) } else { state }),
    }
}

/// The verdict for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order explains the history; `stuck_at` is an operation no linearization got past.
    NotLinearizable {
        stuck_at: usize,
    },
    /// The search was cut off at `SEARCH_STATES_MAX` states.
    Unknown,
}

/// The most (linearized set, state) pairs the search may remember for one key.
pub const SEARCH_STATES_MAX: usize = 20_000_000;

const NIL: usize = usize::MAX;

/// WGL over one key's operations.
fn check_key(ops: &[RegOp]) -> Verdict {
    let n = ops.len();
    // Entries: 2 per op (call, return), sorted by time; calls before returns at equal times.
    let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        entries.push((op.call, true, i));
        entries.push((op.ret, false, i));
    }
    entries.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    let head = entries.len();
    // Linked list over entry positions, with a head sentinel at `head`.
    let mut next = vec![NIL; entries.len() + 1];
    let mut prev = vec![NIL; entries.len() + 1];
    let mut pos_of_call = vec![0usize; n];
    let mut pos_of_ret = vec![0usize; n];
    let mut last = head;
    for (p, &(_, is_call, i)) in entries.iter().enumerate() {
        next[last] = p;
        prev[p] = last;
        last = p;
        if is_call {
            pos_of_call[i] = p;
        } else {
            pos_of_ret[i] = p;
        }
    }
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut calls: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut entry = next[head];
    let mut deepest = 0usize;

    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, c: usize, r: usize| {
        next[prev[c]] = next[c];
        if next[c] != NIL {
            prev[next[c]] = prev[c];
        }
        next[prev[r]] = next[r];
        if next[r] != NIL {
            prev[next[r]] = prev[r];
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, c: usize, r: usize| {
        next[prev[r]] = r;
        if next[r] != NIL {
            prev[next[r]] = r;
        }
        next[prev[c]] = c;
        if next[c] != NIL {
            prev[next[c]] = c;
        }
    };

    while next[head] != NIL {
        let (_, is_call, i) = entries[entry];
        if is_call {
            if let Some(new_state) = apply(state, ops[i].step) {
                let mut with = linearized.clone();
                with[i / 64] |= 1 << (i % 64);
                if cache.insert((with, new_state)) {
                    if cache.len() > SEARCH_STATES_MAX {
                        return Verdict::Unknown;
                    }
                    calls.push((entry, state));
                    state = new_state;
                    linearized[i / 64] |= 1 << (i % 64);
                    lift(&mut next, &mut prev, pos_of_call[i], pos_of_ret[i]);
                    deepest = deepest.max(calls.len());
                    entry = next[head];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // A return whose call is not linearized yet: backtrack.
            let Some((call_entry, old_state)) = calls.pop() else {
                return Verdict::NotLinearizable {
                    stuck_at: ops[i].source,
                };
            };
            let (_, _, j) = entries[call_entry];
            state = old_state;
            linearized[j / 64] &= !(1 << (j % 64));
            unlift(&mut next, &mut prev, pos_of_call[j], pos_of_ret[j]);
            entry = next[call_entry];
        }
    }
    Verdict::Linearizable
}

/// A key whose history is not linearizable (or could not be decided).
#[derive(Clone, Debug)]
pub struct KeyVerdict {
    pub key: Option<Value>,
    pub ops: usize,
    pub verdict: Verdict,
}

/// Checks every key's operations; keys are independent (linearizability is local).
pub fn check(ops: &[Operation]) -> Result<Vec<KeyVerdict>, String> {
    let mut by_key: BTreeMap<String, (Option<Value>, Vec<RegOp>)> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let Some(r) = reg_op(i, op)? {
            let name = op.key.as_ref().map(|k| k.to_string()).unwrap_or_default();
            by_key
                .entry(name)
                .or_insert_with(|| (op.key.clone(), Vec::new()))
                .1
                .push(r);
        }
    }
    Ok(by_key
        .into_values()
        .map(|(key, ops)| KeyVerdict {
            key,
            ops: ops.len(),
            verdict: check_key(&ops),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{pair, Event, Process};
    use serde_json::json;

    /// (process, type, f, value) in order; index = position.
    fn history(events: &[(u64, &str, &str, Value)]) -> Vec<Operation> {
        let events: Vec<Event> = events
            .iter()
            .enumerate()
            .map(|(i, (p, t, f, v))| Event {
                index: i as u64,
                time_ns: i as u64,
                process: Process::Client(*p),
                kind: serde_json::from_value(json!(t)).unwrap(),
                f: f.to_string(),
                value: v.clone(),
                key: None,
            })
            .collect();
        pair(&events).unwrap()
    }

    fn verdict(events: &[(u64, &str, &str, Value)]) -> Verdict {
        check(&history(events)).unwrap().remove(0).verdict
    }

    #[test]
    fn sequential_and_concurrent_valid_histories_pass() {
        let h = [
            (0, "invoke", "write", json!(1)),
            (0, "ok", "write", json!(1)),
            (1, "invoke", "read", Value::Null),
            (2, "invoke", "write", json!(2)),
            (1, "ok", "read", json!(2)), // concurrent with the write of 2
            (2, "ok", "write", json!(2)),
            (0, "invoke", "cas", json!([2, 3])),
            (0, "ok", "cas", json!([2, 3])),
            (1, "invoke", "read", Value::Null),
            (1, "ok", "read", json!(3)),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let h = [
            (0, "invoke", "write", json!(1)),
            (0, "ok", "write", json!(1)),
            (0, "invoke", "write", json!(2)),
            (0, "ok", "write", json!(2)),
            (1, "invoke", "read", Value::Null),
            (1, "ok", "read", json!(1)),
        ];
        assert!(matches!(verdict(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn a_failed_cas_must_have_seen_another_value() {
        let h = [
            (0, "invoke", "write", json!(5)),
            (0, "ok", "write", json!(5)),
            (1, "invoke", "cas", json!([5, 6])),
            (1, "fail", "cas", json!([5, 6])),
        ];
        assert!(matches!(verdict(&h), Verdict::NotLinearizable { .. }));
        // Refused before it ran: it says nothing about the register.
        let refused = [
            (0, "invoke", "write", json!(5)),
            (0, "ok", "write", json!(5)),
            (1, "invoke", "cas", json!([5, 6])),
            (1, "fail", "cas", json!({"error": "not-applied"})),
        ];
        assert_eq!(verdict(&refused), Verdict::Linearizable);
    }

    #[test]
    fn indeterminate_writes_may_or_may_not_take_effect() {
        let applied = [
            (0, "invoke", "write", json!(7)),
            (0, "info", "write", json!(7)),
            (1, "invoke", "read", Value::Null),
            (1, "ok", "read", json!(7)),
        ];
        assert_eq!(verdict(&applied), Verdict::Linearizable);
        let not_applied = [
            (0, "invoke", "write", json!(7)),
            (0, "info", "write", json!(7)),
            (1, "invoke", "read", Value::Null),
            (1, "ok", "read", Value::Null),
        ];
        assert_eq!(verdict(&not_applied), Verdict::Linearizable);
        // But a value nobody wrote cannot be read.
        let invented = [
            (0, "invoke", "write", json!(7)),
            (0, "info", "write", json!(7)),
            (1, "invoke", "read", Value::Null),
            (1, "ok", "read", json!(8)),
        ];
        assert!(matches!(
            verdict(&invented),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn an_indeterminate_cas_may_never_have_run() {
        // The cas's `from` never matches after it; it must be allowed not to have happened.
        let h = [
            (0, "invoke", "write", json!(1)),
            (0, "ok", "write", json!(1)),
            (1, "invoke", "cas", json!([9, 2])),
            (1, "info", "cas", Value::Null),
            (2, "invoke", "read", Value::Null),
            (2, "ok", "read", json!(1)),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // If it had to have run (ok), it could not have.
        let h = [
            (0, "invoke", "write", json!(1)),
            (0, "ok", "write", json!(1)),
            (1, "invoke", "cas", json!([9, 2])),
            (1, "ok", "cas", json!([9, 2])),
        ];
        assert!(matches!(verdict(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn a_read_cannot_see_a_write_invoked_after_it_returned() {
        let h = [
            (1, "invoke", "read", Value::Null),
            (1, "ok", "read", json!(4)),
            (0, "invoke", "write", json!(4)),
            (0, "ok", "write", json!(4)),
        ];
        assert!(matches!(verdict(&h), Verdict::NotLinearizable { .. }));
    }
}
