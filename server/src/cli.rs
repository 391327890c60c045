//! The client subcommands: `order`, `stock`, `restock`, `get-order`, `status`.
//!
//! Human-readable output by default; with `--json`, exactly one JSON object on stdout.
//! Exit codes: 0 success or committed order, 3 rejected order (or rejected adjustment),
//! 1 any error.

use ordo_client::{v1, Client, Line};
use ordo_storage::hex;
use serde_json::{json, Value};

pub const EXIT_OK: u8 = 0;
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_REJECTED: u8 = 3;

/// What a command prints and how it exits.
pub struct Output {
    pub json: Value,
    pub human: String,
    pub exit: u8,
}

pub fn parse_line(s: &str) -> Result<Line, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [dc, sku, qty] = parts.as_slice() else {
        return Err(format!("--line {s:?}: expected DC:SKU:QTY, e.g. 1:42:2"));
    };
    let num = |what: &str, v: &str| -> Result<i64, String> {
        v.trim()
            .parse::<i64>()
            .map_err(|_| format!("--line {s:?}: {what} {v:?} is not a number"))
    };
    let dc = u32::try_from(num("DC", dc)?).map_err(|_| format!("--line {s:?}: DC out of range"))?;
    let sku =
        u32::try_from(num("SKU", sku)?).map_err(|_| format!("--line {s:?}: SKU out of range"))?;
    Ok(Line {
        dc_id: dc,
        sku,
        qty: num("QTY", qty)?,
    })
}

fn lines_json(lines: &[v1::LineAllocation]) -> Value {
    lines
        .iter()
        .map(|l| {
            json!({
                "dc_id": l.dc_id,
                "sku": l.sku,
                "requested": l.requested,
                "allocated": l.allocated,
                "available": l.available,
            })
        })
        .collect()
}

pub fn order_output(r: &v1::OrderResult) -> Output {
    let committed = r.status() == v1::OrderStatus::Committed;
    let mut json = json!({
        "status": if committed { "committed" } else { "rejected" },
        "order_id": r.order_id,
        "request_id": r.request_id,
        "epoch": r.epoch,
        "lines": lines_json(&r.lines),
    });
    let mut human = if committed {
        format!("order {} committed in epoch {}\n", r.order_id, r.epoch)
    } else {
        format!("order rejected in epoch {}: {}\n", r.epoch, r.reason)
    };
    for l in &r.lines {
        human.push_str(&format!(
            "  dc {} sku {}: {} of {} allocated (available before: {})\n",
            l.dc_id, l.sku, l.allocated, l.requested, l.available
        ));
    }
    human.push_str(&format!("  request id: {}", r.request_id));
    if !committed {
        json["reason"] = json!(r.reason);
    }
    Output {
        json,
        human,
        exit: if committed { EXIT_OK } else { EXIT_REJECTED },
    }
}

pub async fn order(
    client: &Client,
    lines: Vec<Line>,
    partial: bool,
    request_id: Option<String>,
    user: Option<String>,
) -> Result<Output, ordo_client::Error> {
    let request = v1::PlaceOrderRequest {
        request_id: request_id.unwrap_or_default(),
        lines: lines.into_iter().map(Into::into).collect(),
        mode: if partial {
            v1::OrderMode::Partial
        } else {
            v1::OrderMode::AllOrNothing
        } as i32,
        user: user.unwrap_or_default(),
    };
    Ok(order_output(&client.place_order_request(request).await?))
}

pub async fn stock(client: &Client, dc: u32, sku: u32) -> Result<Output, ordo_client::Error> {
    let s = client.get_stock(dc, sku).await?;
    Ok(Output {
        json: json!({
            "dc_id": s.dc_id,
            "sku": s.sku,
            "on_hand": s.on_hand,
            "reserved": s.reserved,
            "available": s.available,
            "epoch": s.epoch,
        }),
        human: format!(
            "dc {} sku {}: {} available ({} on hand, {} reserved) as of epoch {}",
            s.dc_id, s.sku, s.available, s.on_hand, s.reserved, s.epoch
        ),
        exit: EXIT_OK,
    })
}

pub async fn restock(
    client: &Client,
    dc: u32,
    sku: u32,
    delta: i64,
    request_id: Option<String>,
) -> Result<Output, ordo_client::Error> {
    let r = client.restock(dc, sku, delta, request_id).await?;
    let mut json = json!({
        "applied": r.applied,
        "request_id": r.request_id,
        "dc_id": dc,
        "sku": sku,
        "on_hand": r.on_hand,
        "reserved": r.reserved,
        "available": r.available,
        "epoch": r.epoch,
    });
    let human = if r.applied {
        format!(
            "dc {dc} sku {sku}: now {} on hand, {} available (epoch {})",
            r.on_hand, r.available, r.epoch
        )
    } else {
        json["reason"] = json!(r.reason);
        format!("adjustment rejected in epoch {}: {}", r.epoch, r.reason)
    };
    Ok(Output {
        json,
        human,
        exit: if r.applied { EXIT_OK } else { EXIT_REJECTED },
    })
}

pub async fn get_order(client: &Client, order_id: u64) -> Result<Output, ordo_client::Error> {
    let o = client.get_order(order_id).await?;
    let mut human = format!(
        "order {} (request id {}) committed in epoch {} at {} ms\n",
        o.order_id, o.request_id, o.epoch, o.time_ms
    );
    for l in &o.lines {
        human.push_str(&format!(
            "  dc {} sku {}: {} of {}\n",
            l.dc_id, l.sku, l.allocated, l.requested
        ));
    }
    Ok(Output {
        json: json!({
            "order_id": o.order_id,
            "request_id": o.request_id,
            "user": o.user,
            "status": "committed",
            "epoch": o.epoch,
            "time_ms": o.time_ms,
            "lines": lines_json(&o.lines),
        }),
        human: human.trim_end().to_string(),
        exit: EXIT_OK,
    })
}

pub async fn status(client: &Client) -> Result<Output, ordo_client::Error> {
    let s = client.status().await?;
    let hash = hex(&s.state_hash);
    Ok(Output {
        json: json!({
            "node_id": s.node_id,
            "role": s.role,
            "leader_id": s.leader_id,
            "term": s.term,
            "applied_epoch": s.applied_epoch,
            "commit_index": s.commit_index,
            "applied_index": s.applied_index,
            "state_hash": hash,
            "partitions": s.partitions,
            "queued_txns": s.queued_txns,
        }),
        human: format!(
            "node {} ({}), leader {}, term {}\napplied epoch {} (log index {} of {} committed)\nstate hash {}\n{} partitions, {} transactions queued",
            s.node_id, s.role, s.leader_id, s.term, s.applied_epoch, s.applied_index,
            s.commit_index, hash, s.partitions, s.queued_txns
        ),
        exit: EXIT_OK,
    })
}

/// The canonical gRPC name of a status code, as other gRPC tools print it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

pub fn error_output(e: &ordo_client::Error) -> Output {
    // A connection failure has no status; it is what UNAVAILABLE means.
    let code = e.code().map(code_name).unwrap_or("UNAVAILABLE");
    let message = match e {
        ordo_client::Error::Status(s) => s.message().to_string(),
        other => other.to_string(),
    };
    Output {
        json: json!({ "error": { "code": code, "message": message } }),
        human: format!("error: {code}: {message}"),
        exit: EXIT_ERROR,
    }
}
