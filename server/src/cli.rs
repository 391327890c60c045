//! The client subcommands: `order`, `stock`, `restock`, `get-order`, `status`.
//!
//! Human-readable output by default; with `--json`, exactly one JSON object on stdout.
//! Exit codes: 0 success or committed order, 3 rejected order (or rejected adjustment),
//! 1 any error.

use ordo_client::{v1, Client, Line};
use ordo_sequencer::peers::{shift_port, MemberAddr, PEER_PORT_OFFSET};
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
    /// Whether the human text is an error message (stderr) rather than a result (stdout).
    pub is_error: bool,
}

/// The wire mode of `--partial`.
pub fn mode(partial: bool) -> i32 {
    match partial {
        true => v1::OrderMode::Partial as i32,
        false => v1::OrderMode::AllOrNothing as i32,
    }
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

pub fn lines_json(lines: &[v1::LineAllocation]) -> Value {
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
        is_error: false,
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
        mode: mode(partial),
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
        is_error: false,
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
        is_error: false,
    })
}

pub async fn transfer(
    client: &Client,
    sku: u32,
    from_dc: u32,
    to_dc: u32,
    qty: i64,
    request_id: Option<String>,
) -> Result<Output, ordo_client::Error> {
    let r = client
        .transfer_stock(sku, from_dc, to_dc, qty, request_id)
        .await?;
    let (from, to) = (r.from.unwrap_or_default(), r.to.unwrap_or_default());
    let mut json = json!({
        "applied": r.applied,
        "request_id": r.request_id,
        "sku": sku,
        "qty": qty,
        "from": {"dc_id": from_dc, "on_hand": from.on_hand, "available": from.available},
        "to": {"dc_id": to_dc, "on_hand": to.on_hand, "available": to.available},
        "epoch": r.epoch,
    });
    let human = if r.applied {
        format!(
            "moved {qty} of sku {sku}: dc {from_dc} now {} on hand, dc {to_dc} now {} (epoch {})",
            from.on_hand, to.on_hand, r.epoch
        )
    } else {
        json["reason"] = json!(r.reason);
        format!("transfer rejected in epoch {}: {}", r.epoch, r.reason)
    };
    Ok(Output {
        json,
        human,
        exit: if r.applied { EXIT_OK } else { EXIT_REJECTED },
        is_error: false,
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
        is_error: false,
    })
}

/// `status`: the node's view; with `hash_at`, also its state hash at that epoch.
/// `ordo settings set`: the settings recorded, and the epoch that recorded them.
pub async fn set_settings(
    client: &Client,
    request: ordo_client::v1::SetExecutionSettingsRequest,
) -> Result<Output, ordo_client::Error> {
    let r = client.set_execution_settings(request).await?;
    Ok(Output {
        json: json!({
            "reservation_ttl_s": r.reservation_ttl_s,
            "reservation_ttl_max_s": r.reservation_ttl_max_s,
            "expiry_per_epoch_max": r.expiry_per_epoch_max,
            "epoch": r.epoch,
        }),
        human: format!(
            "recorded at epoch {}: reservation_ttl_s {}, reservation_ttl_max_s {}, \
             expiry_per_epoch_max {} (every node, from the next epoch)",
            r.epoch, r.reservation_ttl_s, r.reservation_ttl_max_s, r.expiry_per_epoch_max
        ),
        exit: EXIT_OK,
        is_error: false,
    })
}

pub async fn status(client: &Client, hash_at: Option<u64>) -> Result<Output, ordo_client::Error> {
    let s = client.status().await?;
    let hash = hex(&s.state_hash);
    let mut json = json!({
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
        "version": s.version,
        "uptime_ms": s.uptime_ms,
        "cluster_settings": settings_json(&s.cluster_settings),
    });
    let mut human = format!(
        "node {} ({}), leader {}, term {}\napplied epoch {} (log index {} of {} committed)\nstate hash {}\n{} partitions, {} transactions queued\nOrdo {}, up {}\ncluster settings: {}",
        s.node_id, s.role, s.leader_id, s.term, s.applied_epoch, s.applied_index,
        s.commit_index, hash, s.partitions, s.queued_txns, s.version,
        uptime(s.uptime_ms), settings_human(&s.cluster_settings)
    );
    if let Some(epoch) = hash_at {
        let at = hex(&client.state_hash(epoch).await?.state_hash);
        human.push_str(&format!("\nstate hash at epoch {epoch}: {at}"));
        json["hash_at"] = json!({"epoch": epoch, "state_hash": at});
    }
    Ok(Output {
        json,
        human,
        exit: EXIT_OK,
        is_error: false,
    })
}

fn settings_json(settings: &[v1::Setting]) -> Value {
    settings
        .iter()
        .map(|s| (s.name.clone(), Value::from(s.value.clone())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn settings_human(settings: &[v1::Setting]) -> String {
    settings
        .iter()
        .map(|s| format!("{}={}", s.name, s.value))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `3d 4h`, `2h 5m`, `4m 7s`, `12s`.
fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m {}s", s % 60),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
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
        is_error: true,
    }
}

/// `--peer ID=PEER_ADDR[,CLIENT_ADDR]`: a member by its peer listener, and its client listener
/// when that is not the peer port − 1000 on the same host.
pub fn parse_peer(s: &str) -> Result<(u64, MemberAddr), String> {
    let (id, addrs) = parse_member(s)?;
    let (peer, client) = match addrs.split_once(',') {
        Some((peer, client)) => (peer.trim().to_string(), client.trim().to_string()),
        None => {
            let client = shift_port(&addrs, -i32::from(PEER_PORT_OFFSET)).ok_or_else(|| {
                format!(
                    "{s:?}: {addrs:?} names a peer port; its client port would be \
                     {PEER_PORT_OFFSET} lower, which is no port: give ID=PEER_ADDR,CLIENT_ADDR"
                )
            })?;
            (addrs, client)
        }
    };
    for addr in [&peer, &client] {
        host_port(s, addr)?;
    }
    Ok((id, MemberAddr { peer, client }))
}

/// `ID=HOST:PORT` (for `ordo member add`, the node's client address).
pub fn parse_member(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ID=HOST:PORT, e.g. 2=127.0.0.1:51052"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: node id {id:?} is not a number"))?;
    if id == 0 {
        return Err(format!("{s:?}: node ids start at 1"));
    }
    let addr = addr.trim();
    if !addr.contains(',') {
        host_port(s, addr)?;
    }
    Ok((id, addr.to_string()))
}

fn host_port(s: &str, addr: &str) -> Result<(), String> {
    if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
        return Err(format!("{s:?}: {addr:?} is not HOST:PORT"));
    }
    Ok(())
}

fn members_json(members: &[v1::Member]) -> Value {
    members
        .iter()
        .map(|m| {
            json!({"node_id": m.node_id, "addr": m.addr, "peer_addr": m.peer_addr, "voter": m.voter})
        })
        .collect()
}

fn members_human(members: &[v1::Member]) -> String {
    members
        .iter()
        .map(|m| {
            format!(
                "  node {} at {}{}",
                m.node_id,
                m.addr,
                if m.voter { "" } else { " (learner)" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn cluster_init(client: &Client, demo_data: bool) -> Result<Output, ordo_client::Error> {
    let r = client.init_cluster(demo_data).await?;
    Ok(Output {
        json: json!({
            "initialized": r.initialized,
            "message": r.message,
            "leader_id": r.leader_id,
            "members": members_json(&r.members),
            "demo_txns": r.demo_txns,
        }),
        human: format!("{}\n{}", r.message, members_human(&r.members)),
        exit: EXIT_OK,
        is_error: false,
    })
}

pub async fn member_add(
    client: &Client,
    id: u64,
    addr: String,
    peer_addr: Option<String>,
) -> Result<Output, ordo_client::Error> {
    let r = client
        .add_member_at(id, addr, peer_addr.unwrap_or_default())
        .await?;
    Ok(Output {
        json: json!({"leader_id": r.leader_id, "members": members_json(&r.members)}),
        human: format!(
            "node {id} added; members now:\n{}",
            members_human(&r.members)
        ),
        exit: EXIT_OK,
        is_error: false,
    })
}

pub async fn member_remove(client: &Client, id: u64) -> Result<Output, ordo_client::Error> {
    let r = client.remove_member(id).await?;
    Ok(Output {
        json: json!({"leader_id": r.leader_id, "members": members_json(&r.members)}),
        human: format!(
            "node {id} removed; members now:\n{}",
            members_human(&r.members)
        ),
        exit: EXIT_OK,
        is_error: false,
    })
}

/// One node's row in `status --all`.
struct NodeRow {
    node_id: u64,
    addr: String,
    status: Option<v1::StatusResponse>,
    error: String,
    /// The node's state hash at the common epoch.
    common_hash: Option<Vec<u8>>,
}

/// `status --all`: every member's status, whether they agree on the state hash at the
/// highest epoch all reachable nodes have applied, and whether they share the cluster
/// settings. Exit 0 only if all are reachable and agree on both.
pub async fn status_all(client: &Client) -> Result<Output, ordo_client::Error> {
    let first = client.status().await?;
    let mut rows = Vec::new();
    for member in &first.members {
        let url = format!("{}://{}", client.scheme(), member.addr);
        let probe = async {
            let c = client
                .connect_alike(url.clone())
                .await?
                .with_retry(ordo_client::RetryPolicy {
                    attempts_max: 1,
                    ..Default::default()
                });
            let s = c.status().await?;
            Ok::<_, ordo_client::Error>((c, s))
        };
        match tokio::time::timeout(std::time::Duration::from_secs(3), probe).await {
            Ok(Ok((c, s))) => rows.push((
                Some(c),
                NodeRow {
                    node_id: member.node_id,
                    addr: member.addr.clone(),
                    status: Some(s),
                    error: String::new(),
                    common_hash: None,
                },
            )),
            Ok(Err(e)) => rows.push((
                None,
                NodeRow {
                    node_id: member.node_id,
                    addr: member.addr.clone(),
                    status: None,
                    error: e.to_string(),
                    common_hash: None,
                },
            )),
            Err(_) => rows.push((
                None,
                NodeRow {
                    node_id: member.node_id,
                    addr: member.addr.clone(),
                    status: None,
                    error: "no answer within 3 s".into(),
                    common_hash: None,
                },
            )),
        }
    }
    let common_epoch = rows
        .iter()
        .filter_map(|(_, r)| r.status.as_ref().map(|s| s.applied_epoch))
        .min()
        .unwrap_or(0);
    for (c, row) in rows.iter_mut() {
        if let Some(c) = c {
            row.common_hash = if common_epoch == 0 {
                Some(Vec::new())
            } else {
                c.state_hash(common_epoch).await.ok().map(|h| h.state_hash)
            };
        }
    }
    let reachable: Vec<&NodeRow> = rows
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r.status.is_some())
        .collect();
    let all_reachable = reachable.len() == rows.len() && !rows.is_empty();
    let agree = !reachable.is_empty()
        && reachable
            .iter()
            .all(|r| r.common_hash.is_some() && r.common_hash == reachable[0].common_hash);
    // Each cluster setting's values across the reachable nodes, and which nodes hold each.
    let mut settings: std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<String, Vec<u64>>,
    > = Default::default();
    for r in &reachable {
        for setting in &r.status.as_ref().expect("reachable").cluster_settings {
            settings
                .entry(setting.name.clone())
                .or_default()
                .entry(setting.value.clone())
                .or_default()
                .push(r.node_id);
        }
    }
    let differing: Vec<(&String, &std::collections::BTreeMap<String, Vec<u64>>)> = settings
        .iter()
        .filter(|(_, values)| values.len() > 1)
        .collect();
    let settings_agree = differing.is_empty();

    let mut nodes = Vec::new();
    let mut human = format!(
        "{:<6} {:<22} {:<10} {:<7} {:>12}  {}\n",
        "node", "addr", "role", "leader", "applied", "state hash at applied epoch"
    );
    for (_, r) in &rows {
        match &r.status {
            Some(s) => {
                nodes.push(json!({
                    "node_id": r.node_id,
                    "addr": r.addr,
                    "reachable": true,
                    "role": s.role,
                    "leader_id": s.leader_id,
                    "term": s.term,
                    "applied_epoch": s.applied_epoch,
                    "commit_index": s.commit_index,
                    "state_hash": hex(&s.state_hash),
                    "state_hash_at_common_epoch": r.common_hash.as_ref().map(|h| hex(h)),
                    "version": s.version,
                    "uptime_ms": s.uptime_ms,
                    "cluster_settings": settings_json(&s.cluster_settings),
                }));
                human.push_str(&format!(
                    "{:<6} {:<22} {:<10} {:<7} {:>12}  {}\n",
                    r.node_id,
                    r.addr,
                    s.role,
                    s.leader_id,
                    s.applied_epoch,
                    hex(&s.state_hash)
                ));
            }
            None => {
                nodes.push(json!({
                    "node_id": r.node_id,
                    "addr": r.addr,
                    "reachable": false,
                    "role": Value::Null,
                    "leader_id": Value::Null,
                    "applied_epoch": Value::Null,
                    "state_hash": Value::Null,
                    "error": r.error,
                }));
                human.push_str(&format!(
                    "{:<6} {:<22} UNREACHABLE: {}\n",
                    r.node_id, r.addr, r.error
                ));
            }
        }
    }
    if agree {
        human.push_str(&format!(
            "all {} reachable nodes agree at epoch {common_epoch}",
            reachable.len()
        ));
    } else {
        human.push_str(&format!("DISAGREEMENT at epoch {common_epoch}:"));
        for r in &reachable {
            human.push_str(&format!(
                "\n  node {}: {}",
                r.node_id,
                r.common_hash
                    .as_ref()
                    .map(|h| hex(h))
                    .unwrap_or_else(|| "no hash kept".into())
            ));
        }
    }
    if settings_agree {
        if let Some(first) = reachable.first().and_then(|r| r.status.as_ref()) {
            human.push_str(&format!(
                "\ncluster settings agree: {}",
                settings_human(&first.cluster_settings)
            ));
        }
    } else {
        for (name, values) in &differing {
            let by_value: Vec<String> = values
                .iter()
                .map(|(value, nodes)| format!("{value} on nodes {nodes:?}"))
                .collect();
            human.push_str(&format!(
                "\nSETTING DIFFERS: {name}: {}",
                by_value.join(", ")
            ));
        }
    }
    if !all_reachable {
        human.push_str(&format!(
            "\n{} of {} nodes unreachable",
            rows.len() - reachable.len(),
            rows.len()
        ));
    }
    let differing_json: serde_json::Map<String, Value> = differing
        .iter()
        .map(|(name, values)| {
            (
                name.to_string(),
                values
                    .iter()
                    .map(|(value, nodes)| (value.clone(), json!(nodes)))
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
            )
        })
        .collect();
    Ok(Output {
        json: json!({
            "nodes": nodes,
            "common_epoch": common_epoch,
            "agree": agree,
            "settings_agree": settings_agree,
            "settings_differing": differing_json,
        }),
        human,
        exit: if all_reachable && agree && settings_agree {
            EXIT_OK
        } else {
            EXIT_ERROR
        },
        is_error: false,
    })
}
