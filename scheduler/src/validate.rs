//! The one validator of a transaction's shape, shared by the edge (before anything is queued),
//! the leader (for transactions forwarded by followers) and execution (for whatever reaches the
//! log anyway: forwarded, replayed, written by an older version, or crafted).
//!
//! It checks what can be decided from the transaction alone: sizes, ranges, duplicates. What
//! depends on state (unknown or inactive DCs, unknown SKUs, stock levels) is decided during
//! execution against the global tables, deterministically. Execution turns a violation into a
//! [`Outcome::Refused`] with [`RefuseCode::Invalid`] and the reason below, the same on every
//! replica, and never into a stop.
//!
//! The limits are part of execution semantics: every replica must use the same values, so
//! they are constants here, not configuration.

use std::collections::BTreeSet;

use crate::model::*;

/// Bytes in a request id (printable ASCII, no spaces).
pub const REQUEST_ID_BYTES_MAX: usize = 128;
/// Lines in one order.
pub const LINES_PER_ORDER_MAX: usize = 100;
/// Units in one order line.
pub const QTY_PER_LINE_MAX: i64 = 1_000_000;
/// Bytes in an order's user.
pub const USER_BYTES_MAX: usize = 128;
/// Bytes in a DC or item name.
pub const NAME_BYTES_MAX: usize = 256;
/// Magnitude of one restock delta, and the most units one transfer moves.
pub const RESTOCK_DELTA_MAX: i64 = 1_000_000_000;
/// An item's price.
pub const PRICE_CENTS_MAX: i64 = 1_000_000_000_000;
/// Operations in one key-value transaction.
pub const KV_OPS_PER_TXN_MAX: usize = 64;
/// Bytes in a user key (printable ASCII, no spaces).
pub const KV_KEY_BYTES_MAX: usize = 128;
/// The longest hold, and the longest a reservation may live with its extensions (30 days).
pub const RESERVATION_TTL_MS_MAX: u64 = 30 * 24 * 60 * 60 * 1000;
/// Bytes in a cart id (printable ASCII, no spaces; empty: no cart).
pub const CART_ID_BYTES_MAX: usize = 128;
/// Lines (distinct SKUs) in one nearby order or reservation.
pub const NEARBY_LINES_MAX: usize = 50;
/// Candidate stores of one nearby order or reservation (the nearest ones).
pub const NEARBY_CANDIDATES_MAX: usize = 50;
/// The radius of a nearby request, in metres.
pub const NEARBY_RADIUS_M_MAX: u32 = 1_000_000;
/// DCs one back-in-stock subscription may name.
pub const SUBSCRIPTION_DCS_MAX: usize = 100;
/// Prices in one [`Op::SetPrices`].
pub const PRICES_PER_TXN_MAX: usize = 1000;
/// Lines of one [`Op::RestockDc`]: a DC's whole catalogue of 10,000 SKUs in one transaction
/// (about 120 KB in the log).
pub const RESTOCK_DC_LINES_MAX: usize = 10_000;
/// Latitude and longitude bounds, in micro-degrees.
pub const LAT_E6_MAX: i32 = 90_000_000;
pub const LON_E6_MAX: i32 = 180_000_000;

/// Why a transaction is not admissible; a sentence a person can act on.
pub type Invalid = String;

/// Whether `id` is an admissible request id. A transaction with an inadmissible id is refused
/// and, having no usable id, is neither looked up in nor recorded for dedupe.
pub fn request_id_ok(id: &str) -> Result<(), Invalid> {
    if id.is_empty() || id.len() > REQUEST_ID_BYTES_MAX {
        return Err(format!(
            "request_id must be 1 to {REQUEST_ID_BYTES_MAX} bytes, not {}",
            id.len()
        ));
    }
    printable("request_id", id)
}

fn printable(what: &str, s: &str) -> Result<(), Invalid> {
    match s.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
        Some(bad) => Err(format!(
            "{what} may hold only printable ASCII without spaces; found byte 0x{bad:02x}"
        )),
        None => Ok(()),
    }
}

fn id_at_least_one(what: &str, id: u32) -> Result<(), Invalid> {
    match id {
        0 => Err(format!("{what} must be at least 1")),
        _ => Ok(()),
    }
}

fn name_ok(name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(format!(
            "name must be 1 to {NAME_BYTES_MAX} bytes, not {}",
            name.len()
        ));
    }
    Ok(())
}

/// Checks a key-value operation's key.
pub fn kv_key_ok(key: &str) -> Result<(), Invalid> {
    if key.is_empty() || key.len() > KV_KEY_BYTES_MAX {
        return Err(format!(
            "key must be 1 to {KV_KEY_BYTES_MAX} bytes, not {}",
            key.len()
        ));
    }
    printable("key", key)
}

/// Request ids Ordo uses for its own transactions start with this; clients' may not.
pub const RESERVED_REQUEST_ID_PREFIX: &str = "ordo-";

/// Checks everything about `txn` that does not depend on state.
pub fn validate(txn: &Txn) -> Result<(), Invalid> {
    request_id_ok(&txn.request_id)?;
    let ours = matches!(txn.op, Op::ClusterConfig { .. } | Op::ExecSettings(_));
    if !ours && txn.request_id.starts_with(RESERVED_REQUEST_ID_PREFIX) {
        return Err(format!(
            "request ids starting with {RESERVED_REQUEST_ID_PREFIX:?} are reserved for Ordo itself"
        ));
    }
    validate_op(&txn.op)
}

fn reservation_id_ok(id: u64) -> Result<(), Invalid> {
    match id {
        0 => Err("reservation_id must be at least 1".into()),
        _ => Ok(()),
    }
}

fn user_ok(user: &str) -> Result<(), Invalid> {
    if user.len() > USER_BYTES_MAX {
        return Err(format!(
            "user is {} bytes, the limit is {USER_BYTES_MAX}",
            user.len()
        ));
    }
    Ok(())
}

/// An order's or a reservation's lines (`may_be_empty`: a confirm's, where none means all).
fn lines_ok(lines: &[Line], may_be_empty: bool) -> Result<(), Invalid> {
    if (lines.is_empty() && !may_be_empty) || lines.len() > LINES_PER_ORDER_MAX {
        return Err(format!(
            "an order has 1 to {LINES_PER_ORDER_MAX} lines, not {}",
            lines.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        id_at_least_one(&format!("lines[{i}].dc_id"), line.dc)?;
        id_at_least_one(&format!("lines[{i}].sku"), line.sku)?;
        if !(1..=QTY_PER_LINE_MAX).contains(&line.qty) {
            return Err(format!(
                "lines[{i}]: qty must be between 1 and {QTY_PER_LINE_MAX}, not {}",
                line.qty
            ));
        }
        if !seen.insert((line.dc, line.sku)) {
            return Err(format!(
                "lines[{i}]: duplicate line for dc {} sku {}; merge the quantities into one \
                 line",
                line.dc, line.sku
            ));
        }
    }
    Ok(())
}

fn cart_id_ok(cart_id: &str) -> Result<(), Invalid> {
    if cart_id.len() > CART_ID_BYTES_MAX {
        return Err(format!(
            "cart_id is {} bytes, the limit is {CART_ID_BYTES_MAX}",
            cart_id.len()
        ));
    }
    printable("cart_id", cart_id)
}

/// A reserve's TTL and life cap: each 0 (the cluster's recorded setting) or 1 ms to the most
/// a hold may live.
fn hold_times_ok(ttl_ms: u64, life_max_ms: u64) -> Result<(), Invalid> {
    for (what, ms) in [("ttl", ttl_ms), ("life cap", life_max_ms)] {
        if ms > RESERVATION_TTL_MS_MAX {
            return Err(format!(
                "the {what} must be 0 (the cluster's) or 1 ms to {} s, not {ms} ms",
                RESERVATION_TTL_MS_MAX / 1000
            ));
        }
    }
    Ok(())
}

/// The most lapsed holds a partition may sweep in one epoch.
pub const EXPIRY_PER_EPOCH_MAX_LIMIT: u64 = 1_000_000;

fn exec_settings_ok(s: &ExecSettings) -> Result<(), Invalid> {
    for (what, ms) in [
        ("reservation_ttl_default_ms", s.reservation_ttl_default_ms),
        ("reservation_life_max_ms", s.reservation_life_max_ms),
    ] {
        if !(1..=RESERVATION_TTL_MS_MAX).contains(&ms) {
            return Err(format!(
                "{what} must be 1 ms to {} s, not {ms} ms",
                RESERVATION_TTL_MS_MAX / 1000
            ));
        }
    }
    if s.reservation_ttl_default_ms > s.reservation_life_max_ms {
        return Err(format!(
            "the default TTL ({} ms) is longer than the life cap ({} ms)",
            s.reservation_ttl_default_ms, s.reservation_life_max_ms
        ));
    }
    if !(1..=EXPIRY_PER_EPOCH_MAX_LIMIT).contains(&s.expiry_per_epoch_max) {
        return Err(format!(
            "expiry_per_epoch_max must be 1 to {EXPIRY_PER_EPOCH_MAX_LIMIT}, not {}",
            s.expiry_per_epoch_max
        ));
    }
    Ok(())
}

fn point_ok(lat_e6: i32, lon_e6: i32) -> Result<(), Invalid> {
    if lat_e6.unsigned_abs() > LAT_E6_MAX as u32 {
        return Err(format!(
            "lat must be between -90 and 90 degrees, not {lat_e6} micro-degrees"
        ));
    }
    if lon_e6.unsigned_abs() > LON_E6_MAX as u32 {
        return Err(format!(
            "lon must be between -180 and 180 degrees, not {lon_e6} micro-degrees"
        ));
    }
    Ok(())
}

/// A nearby order's lines, point, candidates and shipment limit.
fn nearby_ok(nearby: &Nearby) -> Result<(), Invalid> {
    let lines = &nearby.lines;
    if lines.is_empty() || lines.len() > NEARBY_LINES_MAX {
        return Err(format!(
            "a nearby order has 1 to {NEARBY_LINES_MAX} lines, not {}",
            lines.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        id_at_least_one(&format!("lines[{i}].sku"), line.sku)?;
        if !(1..=QTY_PER_LINE_MAX).contains(&line.qty) {
            return Err(format!(
                "lines[{i}]: qty must be between 1 and {QTY_PER_LINE_MAX}, not {}",
                line.qty
            ));
        }
        if !seen.insert(line.sku) {
            return Err(format!(
                "lines[{i}]: sku {} appears twice; merge the quantities into one line",
                line.sku
            ));
        }
    }
    point_ok(nearby.lat_e6, nearby.lon_e6)?;
    if nearby.radius_m == 0 || nearby.radius_m > NEARBY_RADIUS_M_MAX {
        return Err(format!(
            "radius_m must be 1 to {NEARBY_RADIUS_M_MAX}, not {}",
            nearby.radius_m
        ));
    }
    if nearby.candidates.len() > NEARBY_CANDIDATES_MAX {
        return Err(format!(
            "a nearby order names at most {NEARBY_CANDIDATES_MAX} candidate stores, not {}",
            nearby.candidates.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, &dc) in nearby.candidates.iter().enumerate() {
        id_at_least_one(&format!("candidates[{i}]"), dc)?;
        if !seen.insert(dc) {
            return Err(format!("candidates[{i}]: dc {dc} appears twice"));
        }
    }
    if nearby.max_dcs == 0 || nearby.max_dcs as usize > NEARBY_CANDIDATES_MAX {
        return Err(format!(
            "max_dcs must be 1 to {NEARBY_CANDIDATES_MAX}, not {}",
            nearby.max_dcs
        ));
    }
    Ok(())
}

/// Checks everything about `op` that does not depend on state.
pub fn validate_op(op: &Op) -> Result<(), Invalid> {
    match op {
        Op::PlaceOrderNearby { user, nearby, .. } => {
            nearby_ok(nearby)?;
            user_ok(user)
        }
        Op::ReserveNearby {
            cart_id,
            user,
            nearby,
            ttl_ms,
            life_max_ms,
            ..
        } => {
            nearby_ok(nearby)?;
            user_ok(user)?;
            cart_id_ok(cart_id)?;
            hold_times_ok(*ttl_ms, *life_max_ms)
        }
        Op::PlaceOrder { lines, user, .. } => {
            lines_ok(lines, false)?;
            user_ok(user)
        }
        Op::Reserve {
            cart_id,
            user,
            lines,
            ttl_ms,
            life_max_ms,
            ..
        } => {
            lines_ok(lines, false)?;
            user_ok(user)?;
            cart_id_ok(cart_id)?;
            hold_times_ok(*ttl_ms, *life_max_ms)
        }
        Op::ConfirmReservation {
            reservation_id,
            lines,
        } => {
            reservation_id_ok(*reservation_id)?;
            lines_ok(lines, true)
        }
        Op::CancelReservation { reservation_id } => reservation_id_ok(*reservation_id),
        Op::ExtendReservation {
            reservation_id,
            ttl_ms,
        } => {
            reservation_id_ok(*reservation_id)?;
            if *ttl_ms > RESERVATION_TTL_MS_MAX {
                return Err(format!(
                    "the ttl must be 0 (the cluster's default) or 1 ms to {} s, not {ttl_ms} ms",
                    RESERVATION_TTL_MS_MAX / 1000
                ));
            }
            Ok(())
        }
        Op::Restock { dc, sku, delta } => {
            id_at_least_one("dc_id", *dc)?;
            id_at_least_one("sku", *sku)?;
            if *delta == 0 || delta.unsigned_abs() > RESTOCK_DELTA_MAX as u64 {
                return Err(format!(
                    "delta must be non-zero and at most {RESTOCK_DELTA_MAX} in magnitude, not \
                     {delta}"
                ));
            }
            Ok(())
        }
        Op::RestockDc { dc, lines } => {
            id_at_least_one("dc_id", *dc)?;
            if lines.is_empty() || lines.len() > RESTOCK_DC_LINES_MAX {
                return Err(format!(
                    "a DC's restock has 1 to {RESTOCK_DC_LINES_MAX} lines, not {}",
                    lines.len()
                ));
            }
            let mut last = 0;
            for (i, line) in lines.iter().enumerate() {
                id_at_least_one("sku", line.sku).map_err(|e| format!("lines[{i}]: {e}"))?;
                if line.sku <= last {
                    return Err(format!(
                        "lines[{i}]: sku {} after sku {last}: lines go in ascending SKU order, \
                         each SKU once",
                        line.sku
                    ));
                }
                last = line.sku;
                if line.delta == 0 || line.delta.unsigned_abs() > RESTOCK_DELTA_MAX as u64 {
                    return Err(format!(
                        "lines[{i}]: delta must be non-zero and at most {RESTOCK_DELTA_MAX} in \
                         magnitude, not {}",
                        line.delta
                    ));
                }
            }
            Ok(())
        }
        Op::Transfer {
            sku,
            from_dc,
            to_dc,
            qty,
        } => {
            id_at_least_one("from_dc_id", *from_dc)?;
            id_at_least_one("to_dc_id", *to_dc)?;
            id_at_least_one("sku", *sku)?;
            if !(1..=RESTOCK_DELTA_MAX).contains(qty) {
                return Err(format!("qty must be 1 to {RESTOCK_DELTA_MAX}, not {qty}"));
            }
            if from_dc == to_dc {
                return Err(format!(
                    "from_dc_id and to_dc_id are both {from_dc}; a transfer moves stock between \
                     two DCs"
                ));
            }
            Ok(())
        }
        Op::UpsertDc(dc) => {
            id_at_least_one("dc_id", dc.dc)?;
            name_ok(&dc.name)?;
            point_ok(dc.lat_e6, dc.lon_e6)
        }
        Op::UpsertItem(item) => {
            id_at_least_one("sku", item.sku)?;
            name_ok(&item.name)?;
            if !(0..=PRICE_CENTS_MAX).contains(&item.price_cents) {
                return Err(format!(
                    "price_cents must be between 0 and {PRICE_CENTS_MAX}, not {}",
                    item.price_cents
                ));
            }
            Ok(())
        }
        Op::SetPrices(prices) => {
            if prices.is_empty() || prices.len() > PRICES_PER_TXN_MAX {
                return Err(format!(
                    "a price change sets 1 to {PRICES_PER_TXN_MAX} prices, not {}",
                    prices.len()
                ));
            }
            let mut seen = BTreeSet::new();
            for (i, p) in prices.iter().enumerate() {
                id_at_least_one("sku", p.sku).map_err(|e| format!("prices[{i}]: {e}"))?;
                if !seen.insert(p.sku) {
                    return Err(format!("prices[{i}]: sku {} appears twice", p.sku));
                }
                if !(0..=PRICE_CENTS_MAX).contains(&p.price_cents) {
                    return Err(format!(
                        "prices[{i}]: price_cents must be between 0 and {PRICE_CENTS_MAX}, not {}",
                        p.price_cents
                    ));
                }
                currency_ok(&p.currency).map_err(|e| format!("prices[{i}]: {e}"))?;
            }
            Ok(())
        }
        Op::Subscribe { user, sku, kind } => {
            subscriber_ok(user)?;
            id_at_least_one("sku", *sku)?;
            match kind {
                crate::subs::SubKind::PriceDrop { below_cents } => match below_cents {
                    Some(c) if !(1..=PRICE_CENTS_MAX).contains(c) => Err(format!(
                        "price_below_cents must be 1 to {PRICE_CENTS_MAX}, not {c}"
                    )),
                    _ => Ok(()),
                },
                crate::subs::SubKind::BackInStock { near, dcs } => {
                    if dcs.len() > SUBSCRIPTION_DCS_MAX {
                        return Err(format!(
                            "a subscription names at most {SUBSCRIPTION_DCS_MAX} dc_ids, not {}",
                            dcs.len()
                        ));
                    }
                    let mut seen = BTreeSet::new();
                    for &dc in dcs {
                        id_at_least_one("dc_id", dc)?;
                        if !seen.insert(dc) {
                            return Err(format!("dc_id {dc} appears twice"));
                        }
                    }
                    if let Some(near) = near {
                        point_ok(near.lat_e6, near.lon_e6)?;
                        if !(1..=NEARBY_RADIUS_M_MAX).contains(&near.radius_m) {
                            return Err(format!(
                                "radius_m must be 1 to {NEARBY_RADIUS_M_MAX}, not {}",
                                near.radius_m
                            ));
                        }
                    }
                    Ok(())
                }
            }
        }
        Op::Unsubscribe { user, sku, .. } => {
            subscriber_ok(user)?;
            id_at_least_one("sku", *sku)
        }
        Op::ClusterConfig { partitions } => match partitions {
            0 => Err("partitions must be at least 1".into()),
            _ => Ok(()),
        },
        Op::ExecSettings(settings) => exec_settings_ok(settings),
        Op::Kv(ops) => {
            if ops.is_empty() || ops.len() > KV_OPS_PER_TXN_MAX {
                return Err(format!(
                    "a transaction has 1 to {KV_OPS_PER_TXN_MAX} operations, not {}",
                    ops.len()
                ));
            }
            for (i, op) in ops.iter().enumerate() {
                kv_key_ok(op.key()).map_err(|e| format!("ops[{i}]: {e}"))?;
            }
            Ok(())
        }
    }
}

/// A subscriber: a user of 1 to [`USER_BYTES_MAX`] printable ASCII bytes without spaces.
fn subscriber_ok(user: &str) -> Result<(), Invalid> {
    if user.is_empty() || user.len() > USER_BYTES_MAX {
        return Err(format!(
            "user must be 1 to {USER_BYTES_MAX} bytes, not {}",
            user.len()
        ));
    }
    if let Some(bad) = user.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
        return Err(format!(
            "user may hold only printable ASCII without spaces; found byte 0x{bad:02x}"
        ));
    }
    Ok(())
}

/// A currency is empty (the item's current one) or three capital ASCII letters (ISO 4217).
pub fn currency_ok(currency: &str) -> Result<(), Invalid> {
    if currency.is_empty()
        || (currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()))
    {
        return Ok(());
    }
    Err(format!(
        "currency must be three capital letters (ISO 4217, such as INR or USD), not {currency:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(lines: Vec<Line>) -> Txn {
        Txn {
            request_id: "r1".into(),
            op: Op::PlaceOrder {
                lines,
                mode: Mode::AllOrNothing,
                user: String::new(),
            },
        }
    }

    fn line(dc: u32, sku: u32, qty: i64) -> Line {
        Line { dc, sku, qty }
    }

    #[test]
    fn orders() {
        assert!(validate(&order(vec![line(1, 1, 1)])).is_ok());
        assert!(validate(&order(vec![line(1, 1, QTY_PER_LINE_MAX)])).is_ok());
        for bad in [0, -5, i64::MIN, QTY_PER_LINE_MAX + 1, i64::MAX] {
            let e = validate(&order(vec![line(1, 1, bad)])).unwrap_err();
            assert!(e.contains("qty must be between 1"), "{e}");
        }
        assert!(validate(&order(vec![])).is_err());
        assert!(validate(&order(vec![line(0, 1, 1)])).is_err());
        assert!(validate(&order(vec![line(1, 0, 1)])).is_err());
        let dup = validate(&order(vec![line(1, 1, 1), line(1, 1, 2)])).unwrap_err();
        assert!(dup.contains("duplicate line"), "{dup}");
        let many = (1..=101).map(|sku| line(1, sku, 1)).collect();
        assert!(validate(&order(many)).is_err());
    }

    #[test]
    fn the_reserved_prefix_is_ordo_s_own() {
        let mut txn = order(vec![line(1, 1, 1)]);
        txn.request_id = "ordo-cluster-config".into();
        assert!(validate(&txn).unwrap_err().contains("reserved"));
        txn.op = Op::ClusterConfig { partitions: 3 };
        assert!(validate(&txn).is_ok());
    }

    #[test]
    fn prices() {
        let set = |sku, price_cents, currency: &str| PriceSet {
            sku,
            price_cents,
            currency: currency.into(),
        };
        assert!(validate_op(&Op::SetPrices(vec![set(1, 100, "INR"), set(2, 0, "")])).is_ok());
        assert!(validate_op(&Op::SetPrices(vec![])).is_err());
        assert!(validate_op(&Op::SetPrices(vec![set(0, 100, "")])).is_err());
        assert!(validate_op(&Op::SetPrices(vec![set(1, -1, "")])).is_err());
        assert!(validate_op(&Op::SetPrices(vec![set(1, PRICE_CENTS_MAX + 1, "")])).is_err());
        for bad in ["inr", "RUPEE", "I", "IN\u{c9}"] {
            assert!(
                validate_op(&Op::SetPrices(vec![set(1, 1, bad)])).is_err(),
                "{bad}"
            );
        }
        let twice = validate_op(&Op::SetPrices(vec![set(3, 1, ""), set(3, 2, "")])).unwrap_err();
        assert!(twice.contains("twice"), "{twice}");
        let many = (1..=PRICES_PER_TXN_MAX as u32 + 1)
            .map(|sku| set(sku, 1, ""))
            .collect();
        assert!(validate_op(&Op::SetPrices(many)).is_err());
    }

    #[test]
    fn request_ids() {
        let mut txn = order(vec![line(1, 1, 1)]);
        for bad in [
            "",
            "has space",
            "\u{e9}",
            &"x".repeat(REQUEST_ID_BYTES_MAX + 1),
        ] {
            txn.request_id = bad.to_string();
            assert!(validate(&txn).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn transfers_restocks_kv() {
        let transfer = |from_dc, to_dc, qty| Op::Transfer {
            sku: 1,
            from_dc,
            to_dc,
            qty,
        };
        assert!(validate_op(&transfer(1, 2, 1)).is_ok());
        assert!(validate_op(&transfer(1, 1, 1)).is_err());
        assert!(validate_op(&transfer(1, 2, 0)).is_err());
        assert!(validate_op(&transfer(1, 2, i64::MIN)).is_err());
        let restock = |delta| Op::Restock {
            dc: 1,
            sku: 1,
            delta,
        };
        assert!(validate_op(&restock(-3)).is_ok());
        assert!(validate_op(&restock(0)).is_err());
        assert!(validate_op(&restock(i64::MIN)).is_err());
        let restock_dc = |dc, lines: &[(u32, i64)]| Op::RestockDc {
            dc,
            lines: lines
                .iter()
                .map(|&(sku, delta)| SkuDelta { sku, delta })
                .collect(),
        };
        assert!(validate_op(&restock_dc(1, &[(1, 5), (2, -3), (9, 1)])).is_ok());
        assert!(validate_op(&restock_dc(0, &[(1, 5)])).is_err(), "dc 0");
        assert!(validate_op(&restock_dc(1, &[])).is_err(), "no lines");
        assert!(
            validate_op(&restock_dc(1, &[(2, 1), (1, 1)])).is_err(),
            "descending"
        );
        assert!(
            validate_op(&restock_dc(1, &[(2, 1), (2, 1)])).is_err(),
            "twice"
        );
        assert!(validate_op(&restock_dc(1, &[(0, 1)])).is_err(), "sku 0");
        assert!(validate_op(&restock_dc(1, &[(1, 0)])).is_err(), "delta 0");
        assert!(validate_op(&restock_dc(1, &[(1, i64::MIN)])).is_err());
        let full: Vec<(u32, i64)> = (1..=RESTOCK_DC_LINES_MAX as u32).map(|s| (s, 1)).collect();
        assert!(validate_op(&restock_dc(1, &full)).is_ok());
        let over: Vec<(u32, i64)> = (1..=RESTOCK_DC_LINES_MAX as u32 + 1)
            .map(|s| (s, 1))
            .collect();
        assert!(
            validate_op(&restock_dc(1, &over)).is_err(),
            "too many lines"
        );
        assert!(validate_op(&Op::Kv(vec![])).is_err());
        assert!(validate_op(&Op::Kv(vec![KvOp::Read(String::new())])).is_err());
        assert!(validate_op(&Op::Kv(vec![KvOp::Write("k".into(), i64::MIN)])).is_ok());
    }
}
