//! The `watch` workload's feed records: what each change-feed consumer received and did, one
//! [`Record`] a line (JSON) in `watch/<name>.jsonl` of the run directory, as
//! [`crate::watch`]'s consumers write them and [`crate::watch_check`] reads them.
//!
//! An event is kept as its name's index, its kind, a digest of its whole wire form (equal on
//! every node that sent it) and the few fields the checker reads ([`Seen`]).

use std::io::BufRead;
use std::path::Path;

use ordo_client::v1;
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The feed records' folder in a run directory.
pub const FEED_DIR: &str = "watch";
/// The reference stream's name (and file stem).
pub const REFERENCE: &str = "reference";

/// One line of a feed record: what a consumer received or did, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "kebab-case")]
pub enum Record {
    /// A stream opened on `node` (1-based), from `from` (`epoch 1` or a resume token).
    Open {
        time_ms: u64,
        node: u64,
        from: String,
    },
    /// One epoch's events, all its messages joined (`messages` of them), as delivered once
    /// the last came (an epoch cut short by an error is dropped and comes again).
    Epoch {
        time_ms: u64,
        node: u64,
        epoch: u64,
        epoch_time_ms: u64,
        token: String,
        messages: u32,
        events: Vec<Seen>,
    },
    /// A progress message that moved what the feed covers (or went back).
    Progress {
        time_ms: u64,
        node: u64,
        epoch: u64,
        token: String,
    },
    /// A stream that failed to open or ended with a status (`what`: open, stream, ended).
    Error {
        time_ms: u64,
        node: u64,
        what: String,
        code: String,
        message: String,
        /// Events of an epoch whose last message never came, dropped.
        dropped_events: u64,
    },
    /// No message at all for `silent_ms` (the node paused, or its connection cut).
    Stall {
        time_ms: u64,
        node: u64,
        silent_ms: u64,
    },
    /// Messages came, but the covered epoch stayed at `epoch` for `stale_ms` (a node cut off
    /// from the leader, or removed).
    Stale {
        time_ms: u64,
        node: u64,
        epoch: u64,
        stale_ms: u64,
    },
    /// The node keeps no events from `from` (OUT_OF_RANGE, trailer `ordo-feed-start`): when
    /// the stream opened, or later on it, when the node installed a snapshot past `from`.
    OutOfRange {
        time_ms: u64,
        node: u64,
        from: u64,
        feed_start: Option<u64>,
    },
    /// The consumer moved to another node.
    Switch { time_ms: u64, from: u64, to: u64 },
    /// The consumer stopped reading for `for_ms` (on purpose: its stream's buffer fills).
    Dawdle {
        time_ms: u64,
        node: u64,
        for_ms: u64,
    },
    /// Something on the wire that breaks the feed's contract, as the consumer saw it.
    Violation {
        time_ms: u64,
        node: u64,
        what: String,
    },
    /// The consumer stopped: `reason` is `covered` (it reached `target`), `deadline` or
    /// `out-of-range` (every node refused its position).
    End {
        time_ms: u64,
        covered: u64,
        target: u64,
        reason: String,
    },
}

/// One change event: its name's index within the epoch, its kind, a digest of its whole wire
/// form (the same on every node) and what the checker reads of it: stock `{"dc", "sku",
/// "before": [on_hand, reserved], "after": [...], "cause", "order_id", "reservation_id",
/// "request_id"}`, order `{"order_id", "request_id", "lines": [[dc, sku, allocated]]}`,
/// reservation `{"reservation_id", "step"}`, price `{"sku", "before", "after", "currency",
/// "request_id"}` (cents), item `{"sku", "price_cents"}`, dc `{"dc"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    pub index: u32,
    pub kind: String,
    pub digest: String,
    pub body: Value,
}

/// One consumer's (or the reference's) records.
#[derive(Clone, Debug, PartialEq)]
pub struct Feed {
    pub name: String,
    pub records: Vec<Record>,
}

/// Reads one feed record (JSON lines); errors name the line.
pub fn read_feed(name: &str, reader: impl BufRead) -> anyhow::Result<Feed> {
    let mut records = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("feed {name} line {}: {e}", n + 1))?;
        records.push(record);
    }
    Ok(Feed {
        name: name.to_string(),
        records,
    })
}

/// Every feed record in `run_dir/watch/`: consumers by name, the reference last.
pub fn load_feeds(run_dir: &Path) -> anyhow::Result<Vec<Feed>> {
    let dir = run_dir.join(FEED_DIR);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".jsonl").map(str::to_string)
        })
        .collect();
    names.sort_by_key(|n| (n == REFERENCE, n.clone()));
    names
        .iter()
        .map(|name| {
            let path = dir.join(format!("{name}.jsonl"));
            let file = std::fs::File::open(&path)
                .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
            read_feed(name, std::io::BufReader::new(file))
        })
        .collect()
}

/// The lower-case tail of a protobuf enum value's name (`STOCK_CAUSE_ORDER` → `order`).
fn enum_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_lowercase()
}

/// What the checker keeps of one change event.
pub fn seen(event: &v1::ChangeEvent) -> Seen {
    use v1::change_event::Event as E;
    let (kind, body) = match &event.event {
        Some(E::Stock(s)) => {
            let level = |l: &Option<v1::StockLevel>| {
                l.as_ref()
                    .map(|l| json!([l.on_hand, l.reserved, l.available]))
                    .unwrap_or(Value::Null)
            };
            let cause = v1::StockCause::try_from(s.cause)
                .map(|c| enum_name(c.as_str_name(), "STOCK_CAUSE_"))
                .unwrap_or_else(|_| s.cause.to_string());
            let body = json!({"dc": s.dc_id, "sku": s.sku, "before": level(&s.before),
                              "after": level(&s.after), "cause": cause, "order_id": s.order_id,
                              "reservation_id": s.reservation_id, "request_id": s.request_id});
            ("stock", body)
        }
        Some(E::Order(o)) => {
            let lines: Vec<Value> = o
                .lines
                .iter()
                .map(|l| json!([l.dc_id, l.sku, l.allocated]))
                .collect();
            let body = json!({"order_id": o.order_id, "request_id": o.request_id,
                              "lines": lines});
            ("order", body)
        }
        Some(E::Reservation(r)) => {
            let step = v1::ReservationStep::try_from(r.step)
                .map(|s| enum_name(s.as_str_name(), "RESERVATION_STEP_"))
                .unwrap_or_else(|_| r.step.to_string());
            let id = r.reservation.as_ref().map_or(0, |r| r.reservation_id);
            ("reservation", json!({"reservation_id": id, "step": step}))
        }
        Some(E::Price(p)) => {
            let body = json!({"sku": p.sku, "before": p.before_cents, "after": p.after_cents,
                              "currency": p.currency, "request_id": p.request_id});
            ("price", body)
        }
        Some(E::Dc(d)) => ("dc", json!({"dc": d.dc_id})),
        Some(E::Item(i)) => ("item", json!({"sku": i.sku, "price_cents": i.price_cents})),
        None => ("none", Value::Null),
    };
    Seen {
        index: event.index,
        kind: kind.into(),
        digest: digest(&event.encode_to_vec()),
        body,
    }
}

/// 64-bit FNV-1a, hex: an event's digest (equal wire bytes, equal digests, on every node).
pub fn digest(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
