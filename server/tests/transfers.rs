//! Stock transfers, whole-epoch multi-row reads, order listing and the clock fault, against a
//! real server process.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use ordo_client::{Consistency, Error};
use tonic::Code;

fn code(e: &Error) -> Option<Code> {
    e.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_conserve_stock_and_reads_never_see_half_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let c = node.client().await;
    seed(&c, 10).await;

    eprintln!("--- phase: concurrent transfers across partitions, reads of all four rows");
    let mut movers = Vec::new();
    for m in 0..6u32 {
        let c = node.client().await;
        movers.push(tokio::spawn(async move {
            let mut applied = 0;
            for i in 0..40u32 {
                let from = 1 + (m + i) % 4;
                let to = 1 + (m + 2 * i + 1) % 4;
                if from == to {
                    continue;
                }
                let r = c
                    .transfer_stock(1, from, to, 1 + (i % 4) as i64, None)
                    .await
                    .expect("transfer");
                if r.applied {
                    applied += 1;
                } else {
                    assert!(r.reason.contains("insufficient stock"), "{}", r.reason);
                }
            }
            applied
        }));
    }
    let reader = {
        let c = node.client().await;
        tokio::spawn(async move {
            let mut reads = 0;
            let mut last_epoch = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while reads < 300 && tokio::time::Instant::now() < deadline {
                let r = c.get_availability(vec![1, 2, 3, 4], vec![1]).await.unwrap();
                let rows = &r.items[0].dcs;
                let total: i64 = rows.iter().map(|d| d.on_hand).sum();
                assert_eq!(total, 40, "epoch {}: {rows:?}", r.epoch);
                assert!(rows.iter().all(|d| d.on_hand >= 0), "{rows:?}");
                assert!(r.epoch >= last_epoch);
                last_epoch = r.epoch;
                reads += 1;
            }
            reads
        })
    };
    let mut applied = 0;
    for m in movers {
        applied += m.await.unwrap();
    }
    assert!(reader.await.unwrap() > 0);
    assert!(applied > 0, "no transfer applied");
    assert_eq!(total_on_hand(&c).await, 12 * 10);

    eprintln!("--- phase: a transfer larger than the source's stock is rejected, changes nothing");
    let before = c.get_stock(2, 2).await.unwrap().on_hand;
    let r = c.transfer_stock(2, 2, 3, before + 1, None).await.unwrap();
    assert!(!r.applied);
    assert!(
        r.reason
            .contains(&format!("dc 2 sku 2 available {before} requested")),
        "{}",
        r.reason
    );
    assert_eq!(c.get_stock(2, 2).await.unwrap().on_hand, before);

    eprintln!("--- phase: the same request id twice applies once");
    let first = c
        .transfer_stock(3, 1, 2, 2, Some("move-1".into()))
        .await
        .unwrap();
    let again = c
        .transfer_stock(3, 1, 2, 2, Some("move-1".into()))
        .await
        .unwrap();
    assert!(first.applied);
    assert_eq!(first, again);
    assert_eq!(c.get_stock(1, 3).await.unwrap().on_hand, 8);
    assert_eq!(c.get_stock(2, 3).await.unwrap().on_hand, 12);

    eprintln!("--- phase: bad input is refused precisely");
    let cases = [
        ((1, 1, 1, 1), Code::InvalidArgument, "both 1"),
        ((1, 1, 2, 0), Code::InvalidArgument, "qty must be 1 to"),
        ((1, 1, 2, -3), Code::InvalidArgument, "qty must be 1 to"),
        ((1, 1, 99, 1), Code::NotFound, "unknown dc 99"),
        ((77, 1, 2, 1), Code::NotFound, "unknown sku 77"),
    ];
    for ((sku, from, to, qty), want, text) in cases {
        let e = c
            .transfer_stock(sku, from, to, qty, None)
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(want), "{e}");
        assert!(e.to_string().contains(text), "{e}");
    }
    assert_eq!(total_on_hand(&c).await, 12 * 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_orders_pages_through_every_committed_order_in_commit_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let c = node.client().await;
    seed(&c, 3).await;
    let mut committed_ids = Vec::new();
    for i in 0..30u32 {
        // DCs in every partition; SKU 1 runs out at each DC after three orders.
        let r = c
            .place_order(&[line(1 + i % 4, 1, 1)], false, Some(format!("o-{i}")))
            .await
            .unwrap();
        if committed(&r) {
            committed_ids.push((r.order_id, r.request_id));
        }
    }
    assert_eq!(committed_ids.len(), 12);
    let mut listed = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let page = c.list_orders(after, 5).await.unwrap();
        assert!(page.orders.len() <= 5);
        listed.extend(
            page.orders
                .iter()
                .map(|o| (o.order_id, o.request_id.clone())),
        );
        pages += 1;
        if page.next_after_order_id == 0 {
            break;
        }
        after = page.next_after_order_id;
    }
    assert_eq!(pages, 3);
    assert_eq!(
        listed, committed_ids,
        "every committed order, in commit order"
    );
    assert!(c.list_orders(u64::MAX, 0).await.unwrap().orders.is_empty());
    let e = c.list_orders(0, 1_001).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::InvalidArgument), "{e}");
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_faults_need_the_flag_and_never_turn_time_back() {
    let dir = tempfile::tempdir().unwrap();
    let plain = TestNode::start(dir.path(), &[]);
    let c = plain.client().await;
    let e = c.set_clock_fault(1_000, 0, 0).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("--fault-injection"), "{e}");
    drop(plain);

    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &["--fault-injection"]);
    let c = node
        .client()
        .await
        .with_consistency(Consistency::Linearizable);
    seed(&c, 100).await;
    let order_time = |r: ordo_client::v1::OrderResult| {
        let c = c.clone();
        async move { c.get_order(r.order_id).await.unwrap().time_ms }
    };

    eprintln!("--- phase: an hour ahead: epochs carry the skewed time");
    let r = c.set_clock_fault(3_600_000, 0, 0).await.unwrap();
    assert!(r.clock_ms >= now_ms() + 3_590_000);
    let ahead = order_time(c.place_order(&[line(1, 1, 1)], false, None).await.unwrap()).await;
    assert!(ahead >= now_ms() + 3_590_000, "{ahead}");

    eprintln!("--- phase: two hours behind, then strobing: time still only moves forward");
    c.set_clock_fault(-7_200_000, 0, 0).await.unwrap();
    let behind = order_time(c.place_order(&[line(1, 1, 1)], false, None).await.unwrap()).await;
    assert!(
        behind > ahead,
        "epoch time went back: {behind} after {ahead}"
    );
    c.set_clock_fault(0, -600_000, 3).await.unwrap();
    let mut last = behind;
    for _ in 0..10 {
        let t = order_time(c.place_order(&[line(2, 1, 1)], false, None).await.unwrap()).await;
        assert!(t > last);
        last = t;
    }
    c.set_clock_fault(0, 0, 0).await.unwrap();
    assert_eq!(total_on_hand(&c).await, 12 * 100 - 12);

    eprintln!("--- phase: out-of-range faults are refused");
    let e = c.set_clock_fault(i64::MAX, 0, 0).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::InvalidArgument), "{e}");
    let e = c.set_clock_fault(0, 5, 0).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::InvalidArgument), "{e}");
}
