//! Orders against a real `ordo server` process: the flash sale, multi-partition orders,
//! idempotency. Each test logs its phases and asserts what a client sees.

mod common;

use common::*;
use futures::future::join_all;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flash_sale_two_hundred_buyers_fifty_units() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let admin = node.client().await;
    seed(&admin, 10).await;

    eprintln!("--- phase: set DC 1 SKU 1 to exactly 50 units");
    let r = admin.restock(1, 1, 40, None).await.unwrap();
    assert_eq!(r.on_hand, 50);

    eprintln!("--- phase: 200 clients, each on its own connection, order 1 unit at once");
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(node.client().await);
    }
    let calls = clients
        .into_iter()
        .map(|c| tokio::spawn(async move { c.place_order(&[line(1, 1, 1)], false, None).await }));
    let results: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().expect("order call"))
        .collect();

    eprintln!("--- phase: exactly 50 commit, 150 are rejected as insufficient stock");
    let wins = results.iter().filter(|r| committed(r)).count();
    assert_eq!(wins, 50);
    for r in results.iter().filter(|r| !committed(r)) {
        let rejection = r.rejection.as_ref().expect("a rejection says why");
        assert_eq!(
            rejection.code(),
            ordo_client::v1::RejectCode::InsufficientStock
        );
        assert_eq!(
            (
                rejection.dc_id,
                rejection.sku,
                rejection.available,
                rejection.requested
            ),
            (1, 1, 0, 1)
        );
        assert_eq!(
            r.reason,
            "insufficient stock: dc 1 sku 1 available 0 requested 1"
        );
    }
    let stock = admin.get_stock(1, 1).await.unwrap();
    assert_eq!((stock.on_hand, stock.available), (0, 0));

    eprintln!("--- phase: every winner's order is stored; ids are distinct");
    let mut ids: Vec<u64> = results
        .iter()
        .filter(|r| committed(r))
        .map(|r| r.order_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 50);
    for id in ids {
        let order = admin.get_order(id).await.unwrap();
        assert_eq!(order.lines[0].allocated, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_partition_orders_are_all_or_nothing_and_conserve_stock() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    seed(&client, 30).await;
    let before = total_on_hand(&client).await;

    eprintln!("--- phase: 120 concurrent orders, each spanning two or three regions");
    // DC 1 is region 0, DC 2 region 1, DC 3 region 2, DC 4 region 0.
    let shapes: Vec<Vec<ordo_client::Line>> = (0..120u32)
        .map(|i| {
            let sku = i % 3 + 1;
            match i % 3 {
                0 => vec![line(1, sku, 2), line(2, sku, 1)],
                1 => vec![line(2, sku, 1), line(3, sku, 2), line(4, sku, 1)],
                _ => vec![line(3, sku, 3), line(1, sku, 1)],
            }
        })
        .collect();
    let results = join_all(
        shapes
            .iter()
            .map(|lines| client.place_order(lines, false, None)),
    )
    .await;
    let results: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("order call"))
        .collect();

    eprintln!("--- phase: each order committed whole or rejected whole");
    let mut taken = 0;
    for (lines, r) in shapes.iter().zip(&results) {
        assert_eq!(r.lines.len(), lines.len());
        if committed(r) {
            for (l, a) in lines.iter().zip(&r.lines) {
                assert_eq!(
                    a.allocated, l.qty,
                    "a committed all-or-nothing order got every line"
                );
            }
            taken += lines.iter().map(|l| l.qty).sum::<i64>();
        } else {
            assert!(
                r.lines.iter().all(|a| a.allocated == 0),
                "a rejected order took nothing"
            );
        }
    }
    assert!(results.iter().any(committed));
    assert!(
        results.iter().any(|r| !committed(r)),
        "demand exceeds stock: some must be rejected"
    );

    eprintln!("--- phase: stock conserved, never negative");
    let after = total_on_hand(&client).await;
    assert_eq!(before - taken, after);
    for dc in 1..=4 {
        for sku in 1..=3 {
            assert!(client.get_stock(dc, sku).await.unwrap().on_hand >= 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_id_sent_twice_and_concurrently_decrements_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    seed(&client, 10).await;

    eprintln!("--- phase: the same request id twice in a row");
    let first = client
        .place_order(&[line(1, 2, 3)], false, Some("order-42".into()))
        .await
        .unwrap();
    let second = client
        .place_order(&[line(1, 2, 3)], false, Some("order-42".into()))
        .await
        .unwrap();
    assert!(committed(&first));
    assert_eq!(first, second, "a retry returns the original result");
    assert_eq!(client.get_stock(1, 2).await.unwrap().on_hand, 7);

    eprintln!("--- phase: one new request id sent 20 times at once, over separate connections");
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(node.client().await);
    }
    let calls = clients.into_iter().map(|c| {
        tokio::spawn(async move {
            c.place_order(&[line(2, 2, 4)], false, Some("burst-1".into()))
                .await
        })
    });
    let results: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().expect("order call"))
        .collect();
    assert!(
        results.iter().all(|r| *r == results[0]),
        "every copy gets the one result"
    );
    assert!(committed(&results[0]));
    assert_eq!(
        client.get_stock(2, 2).await.unwrap().on_hand,
        6,
        "decremented once"
    );

    eprintln!("--- phase: a batch call with a known id answers from dedupe");
    let batch = client
        .place_orders(vec![
            ordo_client::v1::PlaceOrderRequest {
                request_id: "order-42".into(),
                lines: vec![line(1, 2, 3).into()],
                ..Default::default()
            },
            ordo_client::v1::PlaceOrderRequest {
                request_id: "order-43".into(),
                lines: vec![line(1, 2, 1).into()],
                ..Default::default()
            },
        ])
        .await
        .unwrap();
    assert_eq!(batch[0], first);
    assert!(committed(&batch[1]));
    assert_eq!(client.get_stock(1, 2).await.unwrap().on_hand, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restocks_in_one_call_apply_each_on_its_own_and_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    seed(&client, 10).await;
    let restock = |id: &str, dc_id, sku, delta| ordo_client::v1::RestockRequest {
        request_id: id.into(),
        dc_id,
        sku,
        delta,
    };

    eprintln!("--- phase: three restocks in one call; the one below zero is rejected alone");
    let call = vec![
        restock("sync-1", 1, 1, 5),
        restock("sync-2", 2, 2, -11),
        restock("sync-3", 4, 3, -4),
    ];
    let results = client.restocks(call.clone()).await.unwrap();
    let seen: Vec<_> = results
        .iter()
        .map(|r| (r.request_id.as_str(), r.applied, r.on_hand))
        .collect();
    assert_eq!(
        seen,
        [
            ("sync-1", true, 15),
            ("sync-2", false, 10),
            ("sync-3", true, 6)
        ]
    );
    assert!(!results[1].reason.is_empty(), "a rejection says why");

    eprintln!("--- phase: the same call again is answered from dedupe and changes nothing");
    assert_eq!(client.restocks(call).await.unwrap(), results);
    assert_eq!(client.get_stock(1, 1).await.unwrap().on_hand, 15);
    assert_eq!(client.get_stock(2, 2).await.unwrap().on_hand, 10);
    assert_eq!(client.get_stock(4, 3).await.unwrap().on_hand, 6);

    eprintln!("--- phase: one malformed restock fails the call and none is applied");
    let status = client
        .restocks(vec![restock("sync-4", 1, 1, 1), restock("sync-5", 9, 1, 1)])
        .await
        .unwrap_err();
    assert!(
        status.to_string().contains("restocks[1]: unknown dc 9"),
        "{status}"
    );
    let status = client
        .restocks(vec![restock("sync-6", 1, 1, 1), restock("sync-6", 1, 2, 1)])
        .await
        .unwrap_err();
    assert!(status.to_string().contains("appears twice"), "{status}");
    assert_eq!(client.get_stock(1, 1).await.unwrap().on_hand, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dcs_restock_applies_every_line_or_none_and_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    seed(&client, 10).await;
    async fn on_hand(client: &ordo_client::Client, dc: u32, sku: u32) -> i64 {
        client.get_stock(dc, sku).await.unwrap().on_hand
    }

    eprintln!("--- phase: three SKUs of DC 2 in one transaction");
    let lines = [(1, 5), (2, -3), (3, 7)];
    let applied = client
        .restock_dc(2, &lines, Some("dc-sync-1".into()))
        .await
        .unwrap();
    assert!(applied.applied, "{applied:?}");
    assert_eq!(applied.rows, 3);
    assert_eq!(on_hand(&client, 2, 1).await, 15);
    assert_eq!(on_hand(&client, 2, 2).await, 7);
    assert_eq!(on_hand(&client, 2, 3).await, 17);

    eprintln!("--- phase: the same request again is answered from dedupe and changes nothing");
    let again = client
        .restock_dc(2, &lines, Some("dc-sync-1".into()))
        .await
        .unwrap();
    assert_eq!(again, applied);
    assert_eq!(on_hand(&client, 2, 1).await, 15);

    eprintln!("--- phase: one line below zero rejects them all");
    let rejected = client
        .restock_dc(3, &[(1, 4), (2, -11), (3, 1)], None)
        .await
        .unwrap();
    assert!(!rejected.applied);
    assert_eq!((rejected.rows, rejected.rejected_sku), (0, 2));
    assert_eq!(rejected.available, 10);
    assert!(!rejected.reason.is_empty(), "a rejection says why");
    assert_eq!(on_hand(&client, 3, 1).await, 10);
    assert_eq!(on_hand(&client, 3, 3).await, 10);

    eprintln!("--- phase: malformed calls are refused before the log");
    for (dc, lines, says) in [
        (3, vec![(2, 1), (1, 1)], "ascending SKU order"),
        (3, vec![(1, 1), (1, 1)], "ascending SKU order"),
        (3, vec![(1, 0)], "non-zero"),
        (9, vec![(1, 1)], "unknown dc 9"),
        (3, vec![(1, 1), (8, 1)], "lines[1]: unknown sku 8"),
        (3, vec![], "between 1 and 10000 lines"),
    ] {
        let status = client.restock_dc(dc, &lines, None).await.unwrap_err();
        assert!(status.to_string().contains(says), "{says}: {status}");
    }
    let too_many: Vec<(u32, i64)> = (1..=10_001).map(|sku| (sku, 1)).collect();
    let status = client.restock_dc(3, &too_many, None).await.unwrap_err();
    assert!(status.to_string().contains("10001"), "{status}");
    assert_eq!(on_hand(&client, 3, 1).await, 10);
}
