//! OrderStream against a real `ordo server` process: many orders over one stream, each
//! answered once and exactly as PlaceOrder would answer it, bad orders answered without
//! ending the stream, and more orders at once than one stream keeps in flight.

mod common;

use std::sync::Arc;

use common::*;
use futures::future::join_all;
use ordo_client::{v1, Error};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_orders_on_one_stream_sell_exactly_the_stock() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let c = node.client().await;
    seed(&c, 1_000).await;
    let stream = Arc::new(c.order_stream().await.unwrap());

    eprintln!("--- phase: 2,000 one-unit orders of DC 1 SKU 2 (1,000 in stock) at once");
    let calls = (0..2_000).map(|_| {
        let stream = stream.clone();
        tokio::spawn(async move { stream.place_order(&[line(1, 2, 1)], false).await })
    });
    let results: Vec<v1::OrderResult> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().expect("an order's reply"))
        .collect();

    eprintln!("--- phase: exactly the stock commits, each order has its own reply");
    assert_eq!(results.iter().filter(|r| committed(r)).count(), 1_000);
    let mut ids: Vec<&str> = results.iter().map(|r| r.request_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 2_000, "one reply per order, none given twice");
    let mut order_ids: Vec<u64> = results
        .iter()
        .filter(|r| committed(r))
        .map(|r| r.order_id)
        .collect();
    order_ids.sort_unstable();
    order_ids.dedup();
    assert_eq!(order_ids.len(), 1_000);
    for r in results.iter().filter(|r| !committed(r)) {
        assert_eq!(
            r.rejection.as_ref().expect("a rejection says why").code(),
            v1::RejectCode::InsufficientStock
        );
    }
    assert_eq!(c.get_stock(1, 2).await.unwrap().on_hand, 0);
    assert_eq!(total_on_hand(&c).await, 11 * 1_000);
}

/// An order of `qty` units of DC 1 SKU 1 under the request id `streamed-once`.
fn streamed_once(qty: i64) -> v1::PlaceOrderRequest {
    v1::PlaceOrderRequest {
        request_id: "streamed-once".into(),
        lines: vec![line(1, 1, qty).into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_order_gets_its_error_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let c = node.client().await;
    seed(&c, 10).await;
    let stream = c.order_stream().await.unwrap();
    let expect = |result: Result<v1::OrderResult, Error>, code: Code, fragment: &str| {
        let e = result.expect_err("a refusal");
        assert_eq!(e.code(), Some(code), "{e}");
        assert!(
            e.to_string().contains(fragment),
            "{e} does not mention {fragment:?}"
        );
        assert!(e.not_applied(), "{e} is a definite refusal");
    };

    expect(
        stream.place_order(&[line(1, 1, 0)], false).await,
        Code::InvalidArgument,
        "qty must be between 1",
    );
    expect(
        stream.place_order(&[line(1, 99, 1)], false).await,
        Code::NotFound,
        "unknown sku 99",
    );
    let first = stream.place_order_request(streamed_once(3)).await.unwrap();
    assert!(committed(&first));

    eprintln!("--- phase: the same request again on the stream gets the first result");
    let again = stream.place_order_request(streamed_once(3)).await.unwrap();
    assert_eq!(again, first);
    expect(
        stream.place_order_request(streamed_once(4)).await,
        Code::AlreadyExists,
        "already used",
    );
    let unary = c
        .place_order(&[line(1, 1, 3)], false, Some("streamed-once".into()))
        .await
        .unwrap();
    assert_eq!(unary, first, "PlaceOrder sees the streamed order too");
    assert_eq!(c.get_stock(1, 1).await.unwrap().on_hand, 7);
}

/// A stream whose node dies fails the orders sent on it afterwards with an unknown outcome,
/// and an order it answered before stays answered: after the restart, PlaceOrder with the same
/// request id gets the same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_leaves_outcomes_unknown_and_a_retry_learns_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(dir.path(), &[]);
    let c = node.client().await;
    seed(&c, 10).await;
    let stream = c.order_stream().await.unwrap();
    let order = v1::PlaceOrderRequest {
        request_id: "before-the-crash".into(),
        lines: vec![line(2, 3, 4).into()],
        ..Default::default()
    };
    let first = stream.place_order_request(order.clone()).await.unwrap();
    assert!(committed(&first));

    eprintln!("--- phase: kill -9 the node; the stream's next order has an unknown outcome");
    node.kill9();
    let e = stream
        .place_order(&[line(2, 3, 1)], false)
        .await
        .expect_err("the node is gone");
    assert_eq!(e.code(), Some(Code::Unavailable), "{e}");
    assert!(
        !e.not_applied(),
        "{e}: a broken stream cannot say the order was not applied"
    );
    assert!(e.to_string().contains("same request id"), "{e}");

    eprintln!("--- phase: restart; the answered order is there once");
    let node = TestNode::start(dir.path(), &[]);
    let c = node.client().await;
    let again = c.place_order_request(order).await.unwrap();
    assert_eq!(again.order_id, first.order_id);
    assert_eq!(again.epoch, first.epoch);
    assert_eq!(c.get_stock(2, 3).await.unwrap().on_hand, 6);
}
