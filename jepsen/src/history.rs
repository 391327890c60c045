//! Histories: what the clients saw, one event per line (JSONL).
//!
//! `{"index": 7, "time_ns": 1234, "process": 3, "type": "invoke"|"ok"|"fail"|"info",
//!   "f": F, "value": V}` plus an optional `"key"`. Nemesis events use process `"nemesis"`.
//! An `invoke` is completed by the next `ok`, `fail` or `info` of the same process; `info`
//! means the outcome is unknown (the operation may or may not have taken effect), and an
//! invocation with no completion at all counts as `info`.

use std::io::BufRead;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// A logical process: a number, or the nemesis.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Process {
    Client(u64),
    Named(String),
}

impl Process {
    pub fn is_nemesis(&self) -> bool {
        matches!(self, Process::Named(n) if n == "nemesis")
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub index: u64,
    pub time_ns: u64,
    pub process: Process,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub f: String,
    #[serde(default)]
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Value>,
}

/// An invocation and its completion, paired.
#[derive(Clone, Debug, PartialEq)]
pub struct Operation {
    pub process: Process,
    pub f: String,
    pub key: Option<Value>,
    /// The value at invocation.
    pub invoke_value: Value,
    /// `None`: no completion (unknown outcome, like `info`).
    pub completion: Option<EventType>,
    /// The value at completion (reads return their value here).
    pub complete_value: Value,
    /// Positions in the history (event indexes), for real-time order.
    pub invoke_index: u64,
    /// `u64::MAX` when the outcome is unknown: the operation may take effect any time later.
    pub complete_index: u64,
}

impl Operation {
    pub fn is_ok(&self) -> bool {
        self.completion == Some(EventType::Ok)
    }

    /// Unknown outcome: `info`, or never completed.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self.completion, None | Some(EventType::Info))
    }
}

/// Reads a JSONL history; blank lines are skipped. Errors name the line.
pub fn read_jsonl(reader: impl BufRead) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("history line {}: {e}", n + 1))?;
        events.push(event);
    }
    Ok(events)
}

/// Pairs invocations with completions, per process, in history order. Events of named
/// processes (the nemesis, setup) are not client operations and are skipped. A completion
/// without an invocation is an error (a malformed history).
pub fn pair(events: &[Event]) -> anyhow::Result<Vec<Operation>> {
    let mut open: std::collections::BTreeMap<Process, usize> = Default::default();
    let mut ops: Vec<Operation> = Vec::new();
    for e in events {
        if matches!(e.process, Process::Named(_)) {
            continue;
        }
        match e.kind {
            EventType::Invoke => {
                if let Some(&prev) = open.get(&e.process) {
                    anyhow::bail!(
                        "event {}: process {:?} invokes again while operation at event {} is open",
                        e.index,
                        e.process,
                        ops[prev].invoke_index
                    );
                }
                open.insert(e.process.clone(), ops.len());
                ops.push(Operation {
                    process: e.process.clone(),
                    f: e.f.clone(),
                    key: e.key.clone(),
                    invoke_value: e.value.clone(),
                    completion: None,
                    complete_value: Value::Null,
                    invoke_index: e.index,
                    complete_index: u64::MAX,
                });
            }
            kind => {
                let Some(i) = open.remove(&e.process) else {
                    anyhow::bail!(
                        "event {}: completion for process {:?} with nothing open",
                        e.index,
                        e.process
                    );
                };
                let op = &mut ops[i];
                op.completion = Some(kind);
                op.complete_value = e.value.clone();
                if kind != EventType::Info {
                    op.complete_index = e.index;
                }
            }
        }
    }
    Ok(ops)
}
