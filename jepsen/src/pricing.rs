//! The `watch` workload's own writes, beside the inventory workload's: price sets
//! (`SetPrice` of one SKU, `SetPrices` of every SKU in one transaction) and price-drop
//! subscriptions (`Subscribe`, `Unsubscribe`) of [`USERS`] test users to the workload's SKUs;
//! and, after the run, the final prices and subscriptions. [`crate::pricing_check`] judges
//! what they record against the change feed's PRICE events and the final reads.
//!
//! Every price a set asks for, and every subscription's `price_below_cents`, is unique in the
//! run ([`unique_cents`]: the slot and its counter in the low digits), so a PRICE event, a final
//! price and a final subscription each name the one operation that could have made them,
//! whatever its outcome. Each operation is one client call, whose attempts all carry one
//! request id (the server applies it once); these calls choose the id themselves, so the
//! history records it from the answer, on `ok` only.
//!
//! History shape (added to [`crate::inventory`]'s):
//! - `f = "set-price"` (one SKU) or `"set-prices"` (every SKU, all or none): invoke
//!   `{"prices": [[sku, cents], ...], "currency"}`; `ok` adds `{"request_id", "epoch"}`;
//! - `f = "subscribe"`: invoke `{"user", "sku", "below"}` (a price drop below `below`); `ok`
//!   adds `{"request_id", "epoch"}`;
//! - `f = "unsubscribe"`: invoke `{"user", "sku"}`; `ok` adds `{"request_id", "epoch",
//!   "removed"}`;
//! - `fail` (refused before it was sequenced) adds `{"error": "not-applied"}`; `info` carries
//!   the invocation's value.
//!
//! The final reads (in the history's `watch-final`, see [`crate::watch_check`]): `"prices":
//! [[sku, cents, currency, epoch], ...]` (the item's price and currency, `GetPriceHistory`) and
//! `"subscriptions": [[user, epoch, [[sku, below, request_id], ...]], ...]` (each test user's
//! open price-drop subscriptions, `ListSubscriptions`), each read linearizably at `epoch`.

use std::time::Duration;

use ordo_client::{v1, Client, Subscription};
use serde_json::{json, Value};

use crate::history::EventType;
use crate::nearby::with;
use crate::runner::{retry_until, Rng};

/// Fifths of the `watch` workload's operations that are its own (the rest are the inventory
/// workload's): half price sets, half subscribes and unsubscribes.
pub const PRICING_OPS_FIFTHS: u64 = 1;
/// Test users who subscribe: `watcher-1` to `watcher-20`.
pub const USERS: u32 = 20;
/// Every price set names it (the items start with none).
const CURRENCY: &str = "USD";
/// [`unique_cents`]: the slot and the slot's counter below this...
const UNIQUE_SPAN: i64 = 1_000_000_000;
/// ... the counter below this (operations a slot generates in one run, at most) ...
const PER_SLOT_MAX: i64 = 1_000_000;
/// ... and a level from 1 to this above them, so prices go down as well as up (at most
/// 99 × [`UNIQUE_SPAN`] + [`UNIQUE_SPAN`], far below the server's 10^12 cents).
const LEVELS: u64 = 99;
/// How long a final read may keep failing.
const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The name of test user `n` (1-based).
pub fn user_name(n: u32) -> String {
    format!("watcher-{n}")
}

/// A price or threshold no other operation of the run asks for: slot `slot`'s `n`th, at a
/// random level. Panics past the bounds (a slot past 999, or a million operations in a slot),
/// where uniqueness would no longer hold.
pub(crate) fn unique_cents(rng: &mut Rng, slot: usize, n: i64) -> i64 {
    let slot = slot as i64;
    assert!(
        slot < UNIQUE_SPAN / PER_SLOT_MAX && (0..PER_SLOT_MAX).contains(&n),
        "unique prices: slot {slot} or operation {n} out of bounds"
    );
    (1 + rng.below(LEVELS)) as i64 * UNIQUE_SPAN + slot * PER_SLOT_MAX + n
}

/// What a pricing operation does against Ordo.
pub(crate) enum PricingCall {
    SetPrice { sku: u32, cents: i64 },
    SetPrices(Vec<(u32, i64)>),
    Subscribe { user: String, sku: u32, below: i64 },
    Unsubscribe { user: String, sku: u32 },
}

/// One pricing operation of slot `slot`, `n` its counter: `(f, invoke value, call)`. Of ten,
/// three set one price, two set every SKU's, three subscribe and two unsubscribe.
pub(crate) fn next(
    rng: &mut Rng,
    slot: usize,
    n: i64,
    skus: &[u32],
) -> (&'static str, Value, PricingCall) {
    let sku = *rng.pick(skus);
    let user = user_name(1 + rng.below(u64::from(USERS)) as u32);
    match rng.below(10) {
        0..=2 => {
            let cents = unique_cents(rng, slot, n);
            let value = json!({"prices": [[sku, cents]], "currency": CURRENCY});
            ("set-price", value, PricingCall::SetPrice { sku, cents })
        }
        3..=4 => {
            // One counter value for the operation: the SKU tells its prices apart.
            let prices: Vec<(u32, i64)> = skus
                .iter()
                .map(|&sku| (sku, unique_cents(rng, slot, n)))
                .collect();
            let value = json!({"prices": prices, "currency": CURRENCY});
            ("set-prices", value, PricingCall::SetPrices(prices))
        }
        5..=7 => {
            let below = unique_cents(rng, slot, n);
            let value = json!({"user": user, "sku": sku, "below": below});
            (
                "subscribe",
                value,
                PricingCall::Subscribe { user, sku, below },
            )
        }
        _ => {
            let value = json!({"user": user, "sku": sku});
            ("unsubscribe", value, PricingCall::Unsubscribe { user, sku })
        }
    }
}

/// Runs one pricing operation: its completion type and value (see the module's history
/// shape). A refusal before sequencing is `fail`; any other error is `info`.
pub(crate) async fn execute(
    client: &Client,
    call: &PricingCall,
    invoke: &Value,
) -> (EventType, Value) {
    let acknowledged =
        |request_id: String, epoch: u64| json!({"request_id": request_id, "epoch": epoch});
    let answer = match call {
        PricingCall::SetPrice { sku, cents } => client
            .set_price(*sku, *cents, CURRENCY)
            .await
            .map(|r| acknowledged(r.request_id, r.epoch)),
        PricingCall::SetPrices(prices) => {
            let prices = prices
                .iter()
                .map(|&(sku, price_cents)| v1::PriceSet {
                    sku,
                    price_cents,
                    currency: CURRENCY.into(),
                })
                .collect();
            client
                .set_prices(prices)
                .await
                .map(|r| acknowledged(r.request_id, r.epoch))
        }
        PricingCall::Subscribe { user, sku, below } => {
            let subscription = Subscription {
                price_below_cents: *below,
                ..Subscription::price_drop(user, *sku)
            };
            client
                .subscribe(subscription)
                .await
                .map(|r| acknowledged(r.request_id, r.epoch))
        }
        PricingCall::Unsubscribe { user, sku } => client
            .unsubscribe(user, *sku, v1::SubscriptionKind::PriceDrop)
            .await
            .map(|r| {
                with(
                    &acknowledged(r.request_id, r.epoch),
                    json!({"removed": r.removed}),
                )
            }),
    };
    match answer {
        Ok(extra) => (EventType::Ok, with(invoke, extra)),
        Err(e) if e.not_applied() => (
            EventType::Fail,
            with(invoke, json!({"error": "not-applied"})),
        ),
        Err(_) => (EventType::Info, invoke.clone()),
    }
}

/// Each SKU's final price, `[[sku, cents, currency, epoch], ...]` (see the module's doc), and
/// the highest epoch read. `client` reads linearizably, after every write stopped.
pub(crate) async fn final_prices(client: &Client, skus: &[u32]) -> anyhow::Result<(Value, u64)> {
    let (mut prices, mut through) = (Vec::new(), 0);
    for &sku in skus {
        let r = retry_until(FINAL_READ_TIMEOUT, || client.get_price_history(sku, 0, 1))
            .await
            .map_err(|e| anyhow::anyhow!("final price of sku {sku}: {e:#}"))?;
        let Some(item) = r.item else {
            anyhow::bail!("final price of sku {sku}: an answer without the item");
        };
        prices.push(json!([sku, item.price_cents, r.currency, r.epoch]));
        through = through.max(r.epoch);
    }
    Ok((Value::Array(prices), through))
}

/// Each test user's open price-drop subscriptions, `[[user, epoch, [[sku, below, request_id],
/// ...]], ...]` (see the module's doc). `client` reads linearizably, after every write stopped.
pub(crate) async fn final_subscriptions(client: &Client) -> anyhow::Result<Value> {
    let mut users = Vec::new();
    for n in 1..=USERS {
        let user = user_name(n);
        let r = retry_until(FINAL_READ_TIMEOUT, || {
            client.list_subscriptions(&user, false)
        })
        .await
        .map_err(|e| anyhow::anyhow!("final subscriptions of {user}: {e:#}"))?;
        let subscriptions: Vec<Value> = r
            .subscriptions
            .iter()
            .filter(|s| s.active && s.kind() == v1::SubscriptionKind::PriceDrop)
            .map(|s| json!([s.sku, s.price_below_cents, s.request_id]))
            .collect();
        users.push(json!([user, r.epoch, subscriptions]));
    }
    Ok(Value::Array(users))
}
