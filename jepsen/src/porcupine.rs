//! Reader for Jepsen's plain-text etcd histories, as shipped with porcupine: lines
//! `INFO  jepsen.util - PROCESS  :TYPE  :F  VALUE`, with `nil` for no value and `[a b]` for a
//! cas. Used to verify the register checker on real histories with known verdicts.

use serde_json::{json, Value};

use crate::history::{Event, EventType, Process};

fn value(text: &str) -> Result<Value, String> {
    let text = text.trim();
    if text == "nil" || text.starts_with(':') || text.is_empty() {
        // `nil`, or a keyword like `:timed-out`: no value.
        return Ok(Value::Null);
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        let parts: Vec<Value> = inner
            .split_whitespace()
            .map(value)
            .collect::<Result<_, _>>()?;
        return Ok(Value::Array(parts));
    }
    text.parse::<i64>()
        .map(|n| json!(n))
        .map_err(|_| format!("unreadable value {text:?}"))
}

/// Parses one history; event indexes are line numbers.
pub fn parse(text: &str) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let Some(rest) = line.split(" - ").nth(1) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (Some(process), Some(kind), Some(f)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(format!("line {}: expected PROCESS :TYPE :F VALUE", n + 1));
        };
        let process: u64 = process
            .parse()
            .map_err(|_| format!("line {}: process {process:?} is not a number", n + 1))?;
        let kind = match kind {
            ":invoke" => EventType::Invoke,
            ":ok" => EventType::Ok,
            ":fail" => EventType::Fail,
            ":info" => EventType::Info,
            other => return Err(format!("line {}: unknown type {other}", n + 1)),
        };
        let rest: Vec<&str> = fields.collect();
        events.push(Event {
            index: n as u64,
            time_ns: n as u64,
            process: Process::Client(process),
            kind,
            f: f.trim_start_matches(':').to_string(),
            value: value(&rest.join(" ")).map_err(|e| format!("line {}: {e}", n + 1))?,
            key: None,
        });
    }
    Ok(events)
}
