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
    assert_eq!(kinds(&r), vec!["watch-duplicate"], "{:?}", r.anomalies);
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
    assert_eq!(kinds(&r), vec!["watch-missing-order"], "{:?}", r.anomalies);
    assert_eq!(r.counts["watch-missing-order"], 2);
}

#[test]
fn an_order_event_the_final_orders_lack_is_a_phantom() {
    let r = run(&history(17, json!([[1, "r1"]])), epochs());
    assert_eq!(kinds(&r), vec!["watch-phantom-order"], "{:?}", r.anomalies);
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
    assert_eq!(
        kinds(&r),
        vec!["watch-replay-mismatch"],
        "{:?}",
        r.anomalies
    );
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
    assert_eq!(kinds(&r), vec!["watch-protocol"], "{:?}", r.anomalies);
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
