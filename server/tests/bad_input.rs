//! Bad input gets a precise status and message and changes nothing.

mod common;

use common::*;
use ordo_client::{v1, Client, Error};
use tonic::Code;

fn expect_status<T: std::fmt::Debug>(result: Result<T, Error>, code: Code, fragment: &str) {
    match result {
        Err(Error::Status(status)) => {
            assert_eq!(status.code(), code, "message: {}", status.message());
            assert!(
                status.message().contains(fragment),
                "{:?} does not mention {fragment:?}",
                status.message()
            );
        }
        other => panic!("expected {code:?} ({fragment}), got {other:?}"),
    }
}

fn order(request_id: &str, lines: Vec<v1::OrderLine>) -> v1::PlaceOrderRequest {
    v1::PlaceOrderRequest {
        request_id: request_id.into(),
        lines,
        ..Default::default()
    }
}

fn ol(dc_id: u32, sku: u32, qty: i64) -> v1::OrderLine {
    v1::OrderLine { dc_id, sku, qty }
}

async fn place(c: &Client, r: v1::PlaceOrderRequest) -> Result<v1::OrderResult, Error> {
    c.place_order_request(r).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_is_refused_precisely_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let c = node.client().await;
    seed(&c, 10).await;
    let before = c.status().await.unwrap();

    eprintln!("--- phase: order lines");
    expect_status(
        place(&c, order("", vec![ol(1, 1, 0)])).await,
        Code::InvalidArgument,
        "qty must be between 1 and 1000000, not 0",
    );
    expect_status(
        place(&c, order("", vec![ol(1, 1, -3)])).await,
        Code::InvalidArgument,
        "not -3",
    );
    expect_status(
        place(&c, order("", vec![ol(1, 1, 1_000_001)])).await,
        Code::InvalidArgument,
        "qty must be between 1 and 1000000",
    );
    expect_status(
        place(&c, order("", vec![])).await,
        Code::InvalidArgument,
        "at least one line",
    );
    let many: Vec<_> = (0..101).map(|i| ol(1 + i % 4, 1 + i / 4 % 3, 1)).collect();
    expect_status(
        place(&c, order("", many)).await,
        Code::InvalidArgument,
        "101 lines, the limit is 100",
    );
    expect_status(
        place(&c, order("", vec![ol(1, 1, 1), ol(2, 1, 1), ol(1, 1, 2)])).await,
        Code::InvalidArgument,
        "lines[2]: duplicate line for dc 1 sku 1",
    );
    expect_status(
        place(&c, order("", vec![ol(1, 1, 1), ol(99, 1, 1)])).await,
        Code::NotFound,
        "lines[1]: unknown dc 99",
    );
    expect_status(
        place(&c, order("", vec![ol(1, 77, 1)])).await,
        Code::NotFound,
        "unknown sku 77",
    );
    expect_status(
        place(&c, order("", vec![ol(0, 1, 1)])).await,
        Code::InvalidArgument,
        "dc_id must be at least 1",
    );
    let mut bad_mode = order("", vec![ol(1, 1, 1)]);
    bad_mode.mode = 7;
    expect_status(
        place(&c, bad_mode).await,
        Code::InvalidArgument,
        "unknown order mode 7",
    );

    eprintln!("--- phase: ids");
    expect_status(
        place(&c, order("has space", vec![ol(1, 1, 1)])).await,
        Code::InvalidArgument,
        "printable ASCII",
    );
    expect_status(
        place(&c, order(&"x".repeat(129), vec![ol(1, 1, 1)])).await,
        Code::InvalidArgument,
        "129 bytes, the limit is 128",
    );
    expect_status(
        c.get_order(0).await,
        Code::InvalidArgument,
        "order_id must be non-zero",
    );
    expect_status(
        c.get_order(123_456).await,
        Code::NotFound,
        "order 123456 does not exist",
    );
    expect_status(
        c.get_stock(1, 0).await,
        Code::InvalidArgument,
        "sku must be at least 1",
    );

    eprintln!("--- phase: batch calls are validated whole");
    expect_status(
        c.place_orders(vec![]).await,
        Code::InvalidArgument,
        "between 1 and 1000 orders",
    );
    let too_many: Vec<_> = (0..1001)
        .map(|i| order(&format!("b{i}"), vec![ol(1, 1, 1)]))
        .collect();
    expect_status(
        c.place_orders(too_many).await,
        Code::InvalidArgument,
        "not 1001",
    );
    let one_bad = vec![
        order("good-1", vec![ol(1, 1, 1)]),
        order("bad-1", vec![ol(1, 1, 0)]),
    ];
    expect_status(
        c.place_orders(one_bad).await,
        Code::InvalidArgument,
        "orders[1].lines[0]",
    );
    let twice = vec![
        order("same", vec![ol(1, 1, 1)]),
        order("same", vec![ol(2, 1, 1)]),
    ];
    expect_status(
        c.place_orders(twice).await,
        Code::InvalidArgument,
        "appears twice",
    );

    eprintln!("--- phase: restock and upserts");
    expect_status(
        c.restock(1, 1, 0, None).await,
        Code::InvalidArgument,
        "delta must be non-zero",
    );
    expect_status(
        c.restock(9, 1, 5, None).await,
        Code::NotFound,
        "unknown dc 9",
    );
    let dc = |lat: f64| v1::Dc {
        dc_id: 9,
        name: "x".into(),
        lat,
        lon: 0.0,
        region: Some(0),
        active: true,
    };
    expect_status(
        c.upsert_dc(dc(91.0)).await,
        Code::InvalidArgument,
        "lat: must be a number between -90 and 90",
    );
    expect_status(
        c.upsert_dc(dc(f64::NAN)).await,
        Code::InvalidArgument,
        "not NaN",
    );
    expect_status(
        c.upsert_item(v1::Item {
            sku: 5,
            name: String::new(),
            price_cents: 1,
        })
        .await,
        Code::InvalidArgument,
        "name must be 1 to 256 bytes",
    );
    expect_status(
        c.upsert_item(v1::Item {
            sku: 5,
            name: "n".into(),
            price_cents: -1,
        })
        .await,
        Code::InvalidArgument,
        "price_cents",
    );
    expect_status(
        c.get_availability(vec![1, 1], vec![1]).await,
        Code::InvalidArgument,
        "must not repeat",
    );

    eprintln!("--- phase: an oversized message");
    let mut huge = order("huge", vec![ol(1, 1, 1)]);
    huge.user = "u".repeat(5 * 1024 * 1024);
    expect_status(
        place(&c, huge).await,
        Code::OutOfRange,
        "message length too large",
    );

    eprintln!("--- phase: a request id reused for another request");
    let restocked = c.restock(1, 1, 1, Some("reused-id".into())).await.unwrap();
    assert!(restocked.applied);
    expect_status(
        place(&c, order("reused-id", vec![ol(1, 1, 1)])).await,
        Code::AlreadyExists,
        "already used",
    );
    let first = place(&c, order("order-once", vec![ol(2, 1, 1)]))
        .await
        .unwrap();
    assert!(committed(&first));
    expect_status(
        place(&c, order("order-once", vec![ol(2, 1, 2)])).await,
        Code::AlreadyExists,
        "different request",
    );
    expect_status(
        place(&c, order("order-once", vec![ol(3, 1, 1)])).await,
        Code::AlreadyExists,
        "different request",
    );
    let retry = place(&c, order("order-once", vec![ol(2, 1, 1)]))
        .await
        .unwrap();
    assert_eq!(retry, first, "the real retry still gets its result");

    eprintln!("--- phase: nothing changed but one restock and one order; the node still serves");
    let after = c.status().await.unwrap();
    assert_eq!(
        after.applied_epoch,
        before.applied_epoch + 2,
        "only the restock and the order made epochs"
    );
    assert_eq!(c.get_stock(1, 1).await.unwrap().on_hand, 11);
    assert_eq!(c.get_stock(2, 1).await.unwrap().on_hand, 9);
    assert_eq!(c.get_stock(3, 1).await.unwrap().on_hand, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sequencer_queue_answers_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &["--queue-txns-max", "4"]);
    let c = node.client().await;
    seed(&c, 10).await;
    let before = c.status().await.unwrap();
    let five: Vec<_> = (0..5)
        .map(|i| order(&format!("q{i}"), vec![ol(1, 1, 1)]))
        .collect();
    expect_status(
        c.place_orders(five).await,
        Code::ResourceExhausted,
        "sequencer queue is full (4 transactions)",
    );
    let after = c.status().await.unwrap();
    assert_eq!(
        after.state_hash, before.state_hash,
        "a refused batch changes nothing"
    );
    assert_eq!(c.get_stock(1, 1).await.unwrap().on_hand, 10);
    // Within the limit, the same call goes through.
    let four: Vec<_> = (0..4)
        .map(|i| order(&format!("q{i}"), vec![ol(1, 1, 1)]))
        .collect();
    let results = c.place_orders(four).await.unwrap();
    assert!(results.iter().all(committed));
}

/// A request id seen before is answered the same way whether or not the call carries
/// `ordo-retry`: with it, from the node's dedupe table before anything is sequenced; without
/// it, by execution after an epoch. Either way the order is applied once, a retry gets the
/// first result, and another request under the same id is ALREADY_EXISTS, marked not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_request_id_is_answered_alike_with_and_without_the_retry_mark() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let c = node.client().await;
    seed(&c, 10).await;
    let mut raw = c.raw();
    let send = ordo_client::retry_marked::<v1::PlaceOrderRequest>;
    let once = order("once", vec![ol(1, 1, 2)]);
    let first = raw
        .place_order(send(once.clone(), false))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert!(committed(&first));

    let epoch = c.status().await.unwrap().applied_epoch;
    let again = raw.place_order(send(once.clone(), false)).await.unwrap();
    assert_eq!(again.into_inner().result.unwrap(), first);
    assert!(
        c.status().await.unwrap().applied_epoch > epoch,
        "an unmarked repeat is sequenced, and execution answers it"
    );

    let epoch = c.status().await.unwrap().applied_epoch;
    let retried = raw.place_order(send(once.clone(), true)).await.unwrap();
    assert_eq!(retried.into_inner().result.unwrap(), first);
    assert_eq!(
        c.status().await.unwrap().applied_epoch,
        epoch,
        "a marked retry is answered from the dedupe table, without an epoch"
    );

    for marked in [false, true] {
        let other = order("once", vec![ol(1, 1, 3)]);
        let status = raw.place_order(send(other, marked)).await.unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "marked: {marked}");
        assert!(status.message().contains("already used"), "{status:?}");
        assert_eq!(
            status
                .metadata()
                .get(ordo_proto::OUTCOME_METADATA_KEY)
                .and_then(|v| v.to_str().ok()),
            Some(ordo_proto::OUTCOME_NOT_APPLIED),
            "marked: {marked}"
        );
    }
    assert_eq!(c.get_stock(1, 1).await.unwrap().on_hand, 8);
}
