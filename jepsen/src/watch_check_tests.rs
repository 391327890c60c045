//! The feed checker on small hand-made records: a valid one passes; each anomaly is flagged.

use serde_json::json;

use super::*;
use crate::feed_record::{digest, read_feed};
use crate::history::{self, EventType};

fn stock(index: u32, before: (i64, i64), after: (i64, i64), cause: &str) -> Seen {
    let body = json!({"dc": 1, "sku": 1, "before": [before.0, before.1], "after": [after.0, after.1],
                      "cause": cause, "order_id": 0, "reservation_id": 0, "request_id": ""});
    Seen {
        index,
        kind: "stock".into(),
        digest: digest(body.to_string().as_bytes()),
        body,
    }
}

fn order(index: u32, order_id: u64, request_id: &str) -> Seen {
    let body = json!({"order_id": order_id, "request_id": request_id, "lines": [[1, 1, 1]]});
    Seen {
        index,
        kind: "order".into(),
        digest: digest(body.to_string().as_bytes()),
        body,
    }
}

fn epoch(epoch: u64, events: Vec<Seen>) -> Record {
    Record::Epoch {
        time_ms: epoch * 10,
        node: 1,
        epoch,
        epoch_time_ms: 1_000 + epoch,
        token: format!("ordo1.{epoch}"),
        messages: 1,
        events,
    }
}

fn progress(epoch: u64) -> Record {
    Record::Progress {
        time_ms: epoch * 10,
        node: 1,
        epoch,
        token: format!("ordo1.{epoch}"),
    }
}

/// Epoch 1 restocks dc 1 sku 1 to 20; epochs 2 and 3 commit orders r1 (2 units) and r2 (1).
fn epochs() -> Vec<Record> {
    vec![
        epoch(1, vec![stock(0, (0, 0), (20, 0), "restock")]),
        epoch(
            2,
            vec![stock(0, (20, 0), (18, 0), "order"), order(1, 1, "r1")],
        ),
        epoch(
            3,
            vec![stock(0, (18, 0), (17, 0), "order"), order(1, 2, "r2")],
        ),
        progress(4),
    ]
}

fn feed(name: &str, records: Vec<Record>) -> Feed {
    Feed {
        name: name.into(),
        records,
    }
}

fn ev(index: u64, process: Process, kind: EventType, f: &str, value: Value) -> Event {
    Event {
        index,
        time_ns: index,
        process,
        kind,
        f: f.into(),
        value,
        key: None,
    }
}

/// r1 and r2 acknowledged, r3 rejected; the final state after epoch 3.
fn history(stock: i64, orders: Value) -> Vec<Event> {
    let p = Process::Client;
    let mut events = Vec::new();
    for (i, (id, kind)) in [
        ("r1", EventType::Ok),
        ("r2", EventType::Ok),
        ("r3", EventType::Fail),
    ]
    .into_iter()
    .enumerate()
    {
        let value = json!({"request_id": id, "lines": [[1, 1, 1]]});
        let n = events.len() as u64;
        events.push(ev(
            n,
            p(i as u64),
            EventType::Invoke,
            "order",
            value.clone(),
        ));
        events.push(ev(n + 1, p(i as u64), kind, "order", value));
    }
    let n = events.len() as u64;
    events.push(ev(
        n,
        Process::Named("watch".into()),
        EventType::Ok,
        "watch-final",
        json!({"stock_epoch": 3, "stock": [[1, 1, stock, 0]], "orders_epoch": 3, "orders": orders}),
    ));
    events
}

fn run(events: &[Event], consumer: Vec<Record>) -> Report {
    let ops = history::pair(events).unwrap();
    let feeds = [feed("consumer-1", consumer), feed(REFERENCE, epochs())];
    check(events, &ops, &feeds).unwrap()
}

fn good() -> Vec<Event> {
    history(17, json!([[1, "r1"], [2, "r2"]]))
}

fn kinds(r: &Report) -> Vec<&'static str> {
    r.counts.keys().copied().collect()
}

/// The report flags anomalies of `kind` and no other.
fn assert_only(r: &Report, kind: &str) {
    assert_eq!(kinds(r), vec![kind], "{:?}", r.anomalies);
}

/// The report's first anomaly mentions `what`.
fn assert_first_names(r: &Report, what: &str) {
    assert!(r.anomalies[0].contains(what), "{:?}", r.anomalies);
}

#[test]
fn a_complete_feed_in_order_checks_out() {
    let r = run(&good(), epochs());
    assert!(r.counts.is_empty(), "{:?}", r.anomalies);
    assert!(r.unchecked.is_empty(), "{:?}", r.unchecked);
    assert_eq!(r.consumers, 1);
    assert_eq!(r.stats["watch-events"], 5);
    assert_eq!(r.stats["watch-consumer-1-covered"], 4);
}

#[test]
fn a_missing_epoch_is_a_gap_and_breaks_the_replay() {
    let mut records = epochs();
    records.remove(1);
    let r = run(&good(), records);
    assert_eq!(r.counts["watch-gap"], 2, "{:?}", r.anomalies);
    assert!(
        r.counts.contains_key("watch-stock-chain"),
        "{:?}",
        kinds(&r)
    );
    assert!(
        r.counts.contains_key("watch-missing-order"),
        "{:?}",
        kinds(&r)
    );
    assert!(r.counts.contains_key("watch-lost-order"), "{:?}", kinds(&r));
}

#[test]
fn a_hole_in_an_epochs_indexes_is_a_gap() {
    let mut records = epochs();
    records[1] = epoch(2, vec![order(1, 1, "r1")]);
    let r = run(&good(), records);
    assert!(
        r.anomalies
            .iter()
            .any(|a| a.starts_with("watch-gap: consumer-1: epoch 2: indexes 0..0")),
        "{:?}",
        r.anomalies
    );
}

#[test]
fn an_epoch_received_twice_is_a_duplicate() {
    let mut records = epochs();
    records.insert(2, records[1].clone());
    let r = run(&good(), records);
    assert_only(&r, "watch-duplicate");
    assert_eq!(r.counts["watch-duplicate"], 2);
}

#[test]
fn an_earlier_epoch_after_a_later_one_is_out_of_order() {
    let mut records = epochs();
    records.swap(1, 2);
    let r = run(&good(), records);
    assert_eq!(r.counts["watch-out-of-order"], 2, "{:?}", r.anomalies);
    // An epoch delivered after a progress passed it is out of order too.
    let mut records = epochs();
    let late = records.remove(2);
    records.insert(2, progress(3));
    records.insert(3, late);
    let r = run(&good(), records);
    assert!(
        r.counts.contains_key("watch-out-of-order"),
        "{:?}",
        kinds(&r)
    );
}

#[test]
fn a_committed_order_with_no_event_is_missing() {
    let r = run(
        &history(17, json!([[1, "r1"], [2, "r2"], [3, "r9"]])),
        epochs(),
    );
    // Every feed, the reference too, lacks it.
    assert_only(&r, "watch-missing-order");
    assert_eq!(r.counts["watch-missing-order"], 2);
}

#[test]
fn an_order_event_the_final_orders_lack_is_a_phantom() {
    let r = run(&history(17, json!([[1, "r1"]])), epochs());
    assert_only(&r, "watch-phantom-order");
    // And a definitely failed order's event is flagged as such.
    let mut records = epochs();
    records[2] = epoch(
        3,
        vec![stock(0, (18, 0), (17, 0), "order"), order(1, 2, "r3")],
    );
    let r = run(&history(17, json!([[1, "r1"], [2, "r3"]])), records);
    assert!(
        r.counts.contains_key("watch-failed-order-present"),
        "{:?}",
        kinds(&r)
    );
}

#[test]
fn a_replay_that_misses_the_final_stock_is_flagged() {
    let r = run(&history(16, json!([[1, "r1"], [2, "r2"]])), epochs());
    assert_only(&r, "watch-replay-mismatch");
    // A stock event that does not start where the row ended breaks the chain.
    let mut records = epochs();
    records[2] = epoch(
        3,
        vec![stock(0, (19, 0), (17, 0), "order"), order(1, 2, "r2")],
    );
    let r = run(&good(), records);
    assert!(
        r.counts.contains_key("watch-stock-chain"),
        "{:?}",
        kinds(&r)
    );
}

#[test]
fn contents_and_tokens_must_match() {
    let mut records = epochs();
    records[1] = epoch(
        2,
        vec![stock(0, (20, 0), (18, 0), "order"), order(1, 1, "r1-other")],
    );
    let r = run(&good(), records);
    assert!(
        r.counts.contains_key("watch-content-mismatch"),
        "{:?}",
        kinds(&r)
    );
    let mut records = epochs();
    if let Record::Epoch { token, .. } = &mut records[0] {
        *token = "ordo1.7".into();
    }
    let r = run(&good(), records);
    assert_only(&r, "watch-protocol");
}

#[test]
fn a_feed_short_of_the_final_epoch_is_unchecked_not_valid() {
    let mut records = epochs();
    records.truncate(2);
    let r = run(&good(), records);
    assert!(r.counts.is_empty(), "{:?}", r.anomalies);
    assert_eq!(r.unchecked.len(), 1, "{:?}", r.unchecked);
    assert!(r.unchecked[0].contains("consumer-1 covered only through epoch 2"));
}

#[test]
fn records_round_trip_through_json_lines() {
    let mut text = String::new();
    let mut records = epochs();
    records.push(Record::OutOfRange {
        time_ms: 5,
        node: 2,
        from: 1,
        feed_start: Some(40),
    });
    records.push(Record::End {
        time_ms: 6,
        covered: 4,
        target: 4,
        reason: "covered".into(),
    });
    for r in &records {
        text.push_str(&serde_json::to_string(r).unwrap());
        text.push('\n');
    }
    assert!(text.contains(r#""t":"out-of-range""#), "{text}");
    let feed = read_feed("c", text.as_bytes()).unwrap();
    assert_eq!(feed.records, records);
}

// Prices and subscriptions ([`crate::pricing_check`]).

fn item(index: u32, sku: u64, price_cents: i64) -> Seen {
    let body = json!({"sku": sku, "price_cents": price_cents});
    Seen {
        index,
        kind: "item".into(),
        digest: digest(body.to_string().as_bytes()),
        body,
    }
}

fn price(index: u32, sku: u64, before: i64, after: i64, request_id: &str) -> Seen {
    let body = json!({"sku": sku, "before": before, "after": after, "currency": "USD",
                      "request_id": request_id});
    Seen {
        index,
        kind: "price".into(),
        digest: digest(body.to_string().as_bytes()),
        body,
    }
}

/// Epoch 1 creates items 1 and 2 at 100 cents; epoch 2 sets sku 1 to 5,001 (request p1);
/// epoch 3 sets both in one transaction, to 7,002 and 7,003 (p2).
fn price_epochs() -> Vec<Record> {
    vec![
        epoch(1, vec![item(0, 1, 100), item(1, 2, 100)]),
        epoch(2, vec![price(0, 1, 100, 5_001, "p1")]),
        epoch(
            3,
            vec![
                price(0, 1, 5_001, 7_002, "p2"),
                price(1, 2, 100, 7_003, "p2"),
            ],
        ),
        progress(4),
    ]
}

fn push(events: &mut Vec<Event>, p: u64, kind: EventType, f: &str, value: Value) {
    let n = events.len() as u64;
    events.push(ev(n, Process::Client(p), kind, f, value));
}

/// An operation invoked and completed at once; `extra` is added to the completion's value.
fn op(events: &mut Vec<Event>, p: u64, f: &str, value: Value, kind: EventType, extra: Value) {
    push(events, p, EventType::Invoke, f, value.clone());
    let mut done = value;
    if let (Some(done), Value::Object(extra)) = (done.as_object_mut(), extra) {
        done.extend(extra);
    }
    push(events, p, kind, f, done);
}

/// The operations behind [`price_epochs`]: sets p1 and p2 acknowledged, one of sku 2 to 9,999
/// definitely failed, one to 8,888 of unknown outcome; watcher-1 subscribed to sku 1 below 11
/// (s1), and to sku 2 below 12 (s2) and then unsubscribed from it (acknowledged); watcher-2
/// subscribed to sku 1 below 13 (s3) while an unsubscribe that ends with `concurrent` ran;
/// watcher-3's subscribe to sku 1 below 14 definitely failed.
fn priced_ops(concurrent: EventType) -> Vec<Event> {
    use EventType::{Fail, Info, Invoke, Ok};
    let mut e = Vec::new();
    let set = |prices: Value| json!({"prices": prices, "currency": "USD"});
    let ack = |id: &str, epoch: u64| json!({"request_id": id, "epoch": epoch});
    let refused = || json!({"error": "not-applied"});
    op(
        &mut e,
        0,
        "set-price",
        set(json!([[1, 5_001]])),
        Ok,
        ack("p1", 2),
    );
    let both = set(json!([[1, 7_002], [2, 7_003]]));
    op(&mut e, 1, "set-prices", both, Ok, ack("p2", 3));
    op(
        &mut e,
        2,
        "set-price",
        set(json!([[2, 9_999]])),
        Fail,
        refused(),
    );
    op(
        &mut e,
        3,
        "set-price",
        set(json!([[2, 8_888]])),
        Info,
        json!({}),
    );
    let sub = |user: &str, sku: u64, below: i64| json!({"user": user, "sku": sku, "below": below});
    op(
        &mut e,
        4,
        "subscribe",
        sub("watcher-1", 1, 11),
        Ok,
        ack("s1", 2),
    );
    op(
        &mut e,
        4,
        "subscribe",
        sub("watcher-1", 2, 12),
        Ok,
        ack("s2", 2),
    );
    let unsub = |user: &str, sku: u64| json!({"user": user, "sku": sku});
    op(
        &mut e,
        4,
        "unsubscribe",
        unsub("watcher-1", 2),
        Ok,
        ack("u1", 3),
    );
    push(&mut e, 5, Invoke, "unsubscribe", unsub("watcher-2", 1));
    op(
        &mut e,
        6,
        "subscribe",
        sub("watcher-2", 1, 13),
        Ok,
        ack("s3", 3),
    );
    push(&mut e, 5, concurrent, "unsubscribe", unsub("watcher-2", 1));
    op(
        &mut e,
        6,
        "subscribe",
        sub("watcher-3", 1, 14),
        Fail,
        refused(),
    );
    e
}

/// `events` with a final state after epoch `at` (no stock, no orders) of these prices and
/// subscriptions.
fn with_final(mut events: Vec<Event>, at: u64, prices: Value, subscriptions: Value) -> Vec<Event> {
    let n = events.len() as u64;
    let value = json!({"stock_epoch": at, "stock": [], "orders_epoch": at, "orders": [],
                       "prices": prices, "subscriptions": subscriptions});
    events.push(ev(
        n,
        Process::Named("watch".into()),
        EventType::Ok,
        "watch-final",
        value,
    ));
    events
}

fn final_prices(sku_1: i64, sku_2: i64, at: u64) -> Value {
    json!([[1, sku_1, "USD", at], [2, sku_2, "USD", at]])
}

fn final_subscriptions(watcher_1: Value, watcher_2: Value) -> Value {
    json!([
        ["watcher-1", 3, watcher_1],
        ["watcher-2", 3, watcher_2],
        ["watcher-3", 3, []]
    ])
}

/// What [`priced_ops`] and [`price_epochs`] end in: watcher-1 on sku 1 only, watcher-2 on none
/// (the unsubscribe of unknown outcome may have come last).
fn priced() -> Vec<Event> {
    with_final(
        priced_ops(EventType::Info),
        3,
        final_prices(7_002, 7_003, 3),
        final_subscriptions(json!([[1, 11, "s1"]]), json!([])),
    )
}

fn run_priced(events: &[Event], consumer: Vec<Record>, reference: Vec<Record>) -> Report {
    let ops = history::pair(events).unwrap();
    let feeds = [feed("consumer-1", consumer), feed(REFERENCE, reference)];
    check(events, &ops, &feeds).unwrap()
}

/// The same records for the consumer and the reference.
fn run_both(events: &[Event], records: Vec<Record>) -> Report {
    run_priced(events, records.clone(), records)
}

#[test]
fn price_sets_and_subscriptions_that_agree_check_out() {
    let r = run_both(&priced(), price_epochs());
    assert!(r.counts.is_empty(), "{:?}", r.anomalies);
    assert!(r.unchecked.is_empty(), "{:?}", r.unchecked);
    assert_eq!(r.stats["watch-consumer-1-price-events"], 3);
    assert_eq!(r.stats["watch-final-subscriptions"], 1);
    // The unsubscribe of unknown outcome may as well not have applied, and the set of unknown
    // outcome may have applied, later.
    let mut records = price_epochs();
    records.pop();
    records.push(epoch(4, vec![price(0, 2, 7_003, 8_888, "late")]));
    let events = with_final(
        priced_ops(EventType::Info),
        4,
        final_prices(7_002, 8_888, 4),
        final_subscriptions(json!([[1, 11, "s1"]]), json!([[1, 13, "s3"]])),
    );
    let r = run_both(&events, records);
    assert!(r.counts.is_empty(), "{:?}", r.anomalies);
}

#[test]
fn an_acknowledged_price_set_without_its_event_is_lost() {
    let mut records = price_epochs();
    records[1] = epoch(2, vec![]);
    let r = run_both(&priced(), records);
    // In both feeds; and the next event no longer starts where sku 1 was.
    assert_eq!(r.counts["watch-lost-price"], 2, "{:?}", r.anomalies);
    assert_eq!(
        kinds(&r),
        vec!["watch-lost-price", "watch-price-chain"],
        "{:?}",
        r.anomalies
    );
}

#[test]
fn a_price_set_applied_twice_is_a_duplicate() {
    let mut records = price_epochs();
    records.pop();
    records.push(epoch(4, vec![price(0, 1, 7_002, 5_001, "p1")]));
    let events = with_final(
        priced_ops(EventType::Info),
        4,
        final_prices(5_001, 7_003, 4),
        final_subscriptions(json!([[1, 11, "s1"]]), json!([])),
    );
    let r = run_both(&events, records);
    assert_only(&r, "watch-duplicate-price");
}

#[test]
fn a_price_no_set_asked_for_is_a_phantom() {
    let at_4 = |event: Seen, sku_2: i64| {
        let mut records = price_epochs();
        records.pop();
        records.push(epoch(4, vec![event]));
        let events = with_final(
            priced_ops(EventType::Info),
            4,
            final_prices(7_002, sku_2, 4),
            final_subscriptions(json!([[1, 11, "s1"]]), json!([])),
        );
        run_both(&events, records)
    };
    let r = at_4(price(0, 2, 7_003, 4_242, "nobody"), 4_242);
    assert_only(&r, "watch-phantom-price");
    // The price of a set that definitely failed.
    let r = at_4(price(0, 2, 7_003, 9_999, "refused"), 9_999);
    assert_only(&r, "watch-failed-price-present");
    // An acknowledged set's price under another request id.
    let mut records = price_epochs();
    records[1] = epoch(2, vec![price(0, 1, 100, 5_001, "p9")]);
    let r = run_both(&priced(), records);
    assert_only(&r, "watch-phantom-price");
}

#[test]
fn a_set_of_several_prices_split_over_epochs_is_torn() {
    let mut records = price_epochs();
    records[2] = epoch(3, vec![price(0, 1, 5_001, 7_002, "p2")]);
    records[3] = epoch(4, vec![price(0, 2, 100, 7_003, "p2")]);
    records.push(progress(5));
    let events = with_final(
        priced_ops(EventType::Info),
        4,
        final_prices(7_002, 7_003, 4),
        final_subscriptions(json!([[1, 11, "s1"]]), json!([])),
    );
    let r = run_both(&events, records);
    assert_only(&r, "watch-torn-prices");
    // Half of it, never the rest.
    let mut records = price_epochs();
    records[2] = epoch(3, vec![price(0, 1, 5_001, 7_002, "p2")]);
    let r = run_both(&priced(), records);
    assert!(
        r.counts.contains_key("watch-torn-prices") && r.counts.contains_key("watch-lost-price"),
        "{:?}",
        r.anomalies
    );
}

#[test]
fn the_final_price_is_the_last_price_events() {
    let final_with = |prices: Value| {
        let subscriptions = final_subscriptions(json!([[1, 11, "s1"]]), json!([]));
        with_final(priced_ops(EventType::Info), 3, prices, subscriptions)
    };
    let r = run_both(&final_with(final_prices(5_001, 7_003, 3)), price_epochs());
    assert_only(&r, "watch-price-mismatch");
    let eur = json!([[1, 7_002, "EUR", 3], [2, 7_003, "USD", 3]]);
    let r = run_both(&final_with(eur), price_epochs());
    assert_only(&r, "watch-price-mismatch");
    // With no price set, the price the item was created with, and no currency.
    let mut records = price_epochs();
    records[2] = epoch(3, vec![]);
    records[1] = epoch(2, vec![]);
    let events = with_final(
        Vec::new(),
        3,
        json!([[1, 100, "", 3], [2, 100, "", 3]]),
        final_subscriptions(json!([]), json!([])),
    );
    let r = run_both(&events, records);
    assert!(r.counts.is_empty(), "{:?}", r.anomalies);
    // A PRICE event that does not start at the SKU's last price breaks the chain.
    let mut records = price_epochs();
    records[2] = epoch(
        3,
        vec![
            price(0, 1, 4_000, 7_002, "p2"),
            price(1, 2, 100, 7_003, "p2"),
        ],
    );
    let r = run_both(&priced(), records);
    assert_only(&r, "watch-price-chain");
}

#[test]
fn an_acknowledged_subscribe_missing_at_the_end_is_lost() {
    let lost = |ops: Vec<Event>, watcher_1: Value, watcher_2: Value| {
        let events = with_final(
            ops,
            3,
            final_prices(7_002, 7_003, 3),
            final_subscriptions(watcher_1, watcher_2),
        );
        run_both(&events, price_epochs())
    };
    let r = lost(priced_ops(EventType::Info), json!([]), json!([]));
    assert_only(&r, "watch-lost-subscription");
    assert_first_names(&r, "watcher-1 to sku 1");
    // watcher-2's is lost too once the unsubscribe beside it definitely failed.
    let r = lost(
        priced_ops(EventType::Fail),
        json!([[1, 11, "s1"]]),
        json!([]),
    );
    assert_only(&r, "watch-lost-subscription");
    assert_first_names(&r, "watcher-2 to sku 1");
}

#[test]
fn a_subscription_no_subscribe_made_is_a_phantom() {
    let phantom = |watcher_1: Value, watcher_3: Value| {
        let subscriptions = json!([
            ["watcher-1", 3, watcher_1],
            ["watcher-2", 3, []],
            ["watcher-3", 3, watcher_3]
        ]);
        let events = with_final(
            priced_ops(EventType::Info),
            3,
            final_prices(7_002, 7_003, 3),
            subscriptions,
        );
        run_both(&events, price_epochs())
    };
    // A threshold nobody asked for.
    let r = phantom(json!([[1, 99, "x"]]), json!([]));
    assert_only(&r, "watch-phantom-subscription");
    // s1's threshold under another request id.
    let r = phantom(json!([[1, 11, "x"]]), json!([]));
    assert_only(&r, "watch-phantom-subscription");
    // The threshold of a subscribe that definitely failed.
    let r = phantom(json!([[1, 11, "s1"]]), json!([[1, 14, "f"]]));
    assert_only(&r, "watch-phantom-subscription");
}

#[test]
fn a_subscription_an_acknowledged_later_unsubscribe_ended_is_stale() {
    let events = with_final(
        priced_ops(EventType::Info),
        3,
        final_prices(7_002, 7_003, 3),
        final_subscriptions(json!([[1, 11, "s1"], [2, 12, "s2"]]), json!([])),
    );
    let r = run_both(&events, price_epochs());
    assert_only(&r, "watch-stale-subscription");
}
