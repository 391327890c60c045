//! Orders and holds filled from the stores near a user, and keyword search near them, on a
//! real `ordo server` process: the shipments each fill policy picks, a retry answered with the
//! first allocation after stock moved, a flash sale across two stores that never oversells,
//! holds from nearby stores, search pages, and refusals of bad input.

mod common;

use common::*;
use futures::stream::{self, StreamExt};
use ordo_client::{v1, Client};

/// The user's point, and metres to degrees of latitude.
const AT: (f64, f64) = (12.97, 77.59);
const DEG_PER_KM: f64 = 1.0 / 111.195;

/// Stores due north of the user at `km`; DC 5 is the nearest but closed, DC 4 out of reach.
const STORES: [(u32, f64, bool); 5] = [
    (1, 1.0, true),
    (2, 2.0, true),
    (3, 3.0, true),
    (4, 50.0, true),
    (5, 0.5, false),
];

async fn setup(client: &Client) {
    for (dc_id, km, active) in STORES {
        client
            .upsert_dc(v1::Dc {
                dc_id,
                name: format!("store {dc_id}"),
                lat: AT.0 + km * DEG_PER_KM,
                lon: AT.1,
                region: Some(dc_id % 3),
                active,
            })
            .await
            .unwrap();
    }
    for (sku, name) in [
        (1, "Classic Potato Chips"),
        (2, "Spicy Potato Chips"),
        (3, "Cola Zero"),
        (4, "Potato Chips Party Pack"),
    ] {
        client
            .upsert_item(v1::Item {
                sku,
                name: name.into(),
                price_cents: 100,
            })
            .await
            .unwrap();
    }
    // sku 1: a little at each store, plenty out of reach and at the closed store.
    for (dc, sku, units) in [
        (1, 1, 2),
        (2, 1, 3),
        (3, 1, 10),
        (4, 1, 100),
        (5, 1, 100),
        (2, 2, 5),
        (3, 2, 5),
        (1, 3, 5),
        (2, 3, 5),
    ] {
        client.restock(dc, sku, units, None).await.unwrap();
    }
}

fn ask(id: &str, lines: &[(u32, i64)], policy: v1::FillPolicy) -> v1::PlaceOrderNearbyRequest {
    v1::PlaceOrderNearbyRequest {
        request_id: id.into(),
        lat: AT.0,
        lon: AT.1,
        radius_m: 10_000,
        lines: lines
            .iter()
            .map(|&(sku, qty)| v1::ItemQty { sku, qty })
            .collect(),
        policy: policy as i32,
        ..Default::default()
    }
}

/// (dc, [(sku, qty)]) per shipment.
fn shipped(r: &v1::PlaceOrderNearbyResponse) -> Vec<(u32, Vec<(u32, i64)>)> {
    r.shipments
        .iter()
        .map(|s| (s.dc_id, s.lines.iter().map(|l| (l.sku, l.qty)).collect()))
        .collect()
}

async fn available(client: &Client, dc: u32, sku: u32) -> i64 {
    client.get_stock(dc, sku).await.unwrap().available
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_orders_fill_from_nearby_stores_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    setup(&client).await;

    // FEWEST_DCS: the nearest store with everything (store 3), though 1 and 2 are nearer.
    let one = client
        .place_order_nearby(ask("one", &[(1, 4), (2, 1)], v1::FillPolicy::FewestDcs))
        .await
        .unwrap();
    assert!(committed(one.result.as_ref().unwrap()));
    assert_eq!(shipped(&one), vec![(3, vec![(1, 4), (2, 1)])]);
    assert!(one.shipments[0].distance_m.abs_diff(3_000) < 5);
    assert_eq!(available(&client, 3, 1).await, 6);

    // NEAREST_FIRST: store 1's two units, then two of store 2's three.
    let first = ask("nearest", &[(1, 4)], v1::FillPolicy::NearestFirst);
    let two = client.place_order_nearby(first.clone()).await.unwrap();
    assert_eq!(shipped(&two), vec![(1, vec![(1, 2)]), (2, vec![(1, 2)])]);
    assert_eq!(available(&client, 1, 1).await, 0);

    // A retry after stock moved (store 1 restocked) gets the first allocation, changing nothing.
    client.restock(1, 1, 10, None).await.unwrap();
    let again = client.place_order_nearby(first).await.unwrap();
    assert_eq!(again.result, two.result);
    assert_eq!(shipped(&again), shipped(&two));
    assert_eq!(available(&client, 1, 1).await, 10);

    // More than the stores within reach hold: rejected as a whole (the far and the closed
    // stores do not count), nothing taken; `available` is the total within reach.
    let before: Vec<i64> = stream::iter(1..=3)
        .then(|dc| {
            let client = client.clone();
            async move { available(&client, dc, 1).await }
        })
        .collect()
        .await;
    let refused = client
        .place_order_nearby(ask("big", &[(1, 50)], v1::FillPolicy::FewestDcs))
        .await
        .unwrap();
    let result = refused.result.unwrap();
    assert_eq!(result.status(), v1::OrderStatus::Rejected);
    let rejection = result.rejection.unwrap();
    assert_eq!(
        (rejection.dc_id, rejection.sku, rejection.available),
        (0, 1, before.iter().sum::<i64>())
    );
    assert!(refused.shipments.is_empty());
    assert_eq!(available(&client, 4, 1).await, 100);

    // At most one store: refused whole, or (PARTIAL) the store giving the most.
    let mut capped = ask("capped", &[(1, 15)], v1::FillPolicy::FewestDcs);
    capped.max_dcs = 1;
    let r = client.place_order_nearby(capped.clone()).await.unwrap();
    assert_eq!(r.result.unwrap().status(), v1::OrderStatus::Rejected);
    capped.request_id = "capped-partial".into();
    capped.mode = v1::OrderMode::Partial as i32;
    let r = client.place_order_nearby(capped).await.unwrap();
    assert_eq!(shipped(&r), vec![(1, vec![(1, 10)])]);

    // Holds from nearby stores: no store has 6 of sku 2, so store 2's five (the nearer of two
    // equal offers), then one from store 3.
    let held = client
        .reserve_nearby(v1::ReserveNearbyRequest {
            request_id: "hold".into(),
            lat: AT.0,
            lon: AT.1,
            lines: vec![v1::ItemQty { sku: 2, qty: 6 }],
            ..Default::default()
        })
        .await
        .unwrap();
    let reservation = held.reservation.unwrap();
    assert_eq!(reservation.status(), v1::ReservationStatus::Live);
    let shipments: Vec<(u32, Vec<(u32, i64)>)> = held
        .shipments
        .iter()
        .map(|s| (s.dc_id, s.lines.iter().map(|l| (l.sku, l.qty)).collect()))
        .collect();
    assert_eq!(shipments, vec![(2, vec![(2, 5)]), (3, vec![(2, 1)])]);
    let row = client.get_stock(3, 2).await.unwrap();
    assert_eq!((row.reserved, row.available), (1, 3));

    // The CLI: a split order, its exit codes, JSON shipments.
    let endpoint = node.endpoint.as_str();
    let (code, out, _) = ordo_cli(&[
        "order",
        "--near",
        "12.97,77.59",
        "--item",
        "3:7",
        "--json",
        "--endpoint",
        endpoint,
    ]);
    assert_eq!(code, 0, "{out}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(json["shipments"].as_array().unwrap().len(), 2, "{json}");
    let (code, _, _) = ordo_cli(&[
        "order",
        "--near",
        "12.97,77.59",
        "--item",
        "3:7",
        "--endpoint",
        endpoint,
    ]);
    assert_eq!(code, 3, "three units are left");
    let (code, out, _) = ordo_cli(&[
        "reserve",
        "--near",
        "12.97,77.59",
        "--item",
        "2:1",
        "--json",
        "--endpoint",
        endpoint,
    ]);
    assert_eq!(code, 0, "{out}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(json["status"], "live", "{json}");
    assert_eq!(
        json["shipments"][0]["dc_id"], 3,
        "store 2's units are all held: {json}"
    );

    // Bad input is refused before anything is queued, with the field named.
    let mut bad = ask("bad", &[(1, 1)], v1::FillPolicy::FewestDcs);
    bad.lat = 91.0;
    let e = client.place_order_nearby(bad).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::InvalidArgument), "{e}");
    let mut bad = ask("bad", &[(1, 1)], v1::FillPolicy::FewestDcs);
    bad.max_dcs = 51;
    let e = client.place_order_nearby(bad).await.unwrap_err();
    assert!(e.to_string().contains("max_dcs"), "{e}");
    let e = client
        .place_order_nearby(ask("bad", &[(1, 1), (1, 2)], v1::FillPolicy::FewestDcs))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("appears twice"), "{e}");
    let e = client
        .place_order_nearby(ask("bad", &[(9, 1)], v1::FillPolicy::FewestDcs))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::NotFound), "{e}");
    // A request id bound to another request.
    let e = client
        .place_order_nearby(ask("one", &[(1, 1)], v1::FillPolicy::FewestDcs))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::AlreadyExists), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flash_sale_across_two_stores_never_oversells() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    setup(&client).await;
    // Ten units of sku 3 within reach (five at store 1, five at store 2); 60 buyers of one.
    let outcomes: Vec<v1::PlaceOrderNearbyResponse> = stream::iter(0..60)
        .map(|i| {
            let client = client.clone();
            async move {
                let policy = match i % 2 {
                    0 => v1::FillPolicy::FewestDcs,
                    _ => v1::FillPolicy::NearestFirst,
                };
                client
                    .place_order_nearby(ask(&format!("buyer-{i}"), &[(3, 1)], policy))
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(60)
        .collect()
        .await;
    let won: Vec<&v1::PlaceOrderNearbyResponse> = outcomes
        .iter()
        .filter(|r| committed(r.result.as_ref().unwrap()))
        .collect();
    assert_eq!(won.len(), 10);
    let mut per_store = [0i64; 3];
    for r in &won {
        assert_eq!(r.shipments.len(), 1);
        per_store[r.shipments[0].dc_id as usize] += r.shipments[0].lines[0].qty;
    }
    assert_eq!(per_store[1..], [5, 5]);
    assert_eq!(available(&client, 1, 3).await, 0);
    assert_eq!(available(&client, 2, 3).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_matches_words_ranks_and_pages_with_stock_nearby() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    setup(&client).await;
    let search = |query: &str, near: bool, in_stock_only: bool, page_token: String| {
        let client = client.clone();
        let request = v1::SearchItemsRequest {
            query: query.into(),
            near,
            lat: AT.0,
            lon: AT.1,
            limit: 1,
            page_token,
            in_stock_only,
            ..Default::default()
        };
        async move { client.search_items(request).await }
    };
    // Pages of one: whole-word matches of both words (shorter names first), no repeats.
    let mut skus = Vec::new();
    let mut token = String::new();
    loop {
        let page = search("potato chips", false, false, token).await.unwrap();
        skus.extend(page.items.iter().map(|i| i.sku));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(skus, vec![1, 2, 4]);
    // The last word as a prefix; case does not matter.
    let page = search("COLA z", false, false, String::new()).await.unwrap();
    assert_eq!(page.items[0].sku, 3);
    // Near the user: availability over the three active stores within reach; sku 4 is in
    // none, so in_stock_only leaves it out.
    let page = search("chips", true, false, String::new()).await.unwrap();
    assert_eq!(page.stores_nearby, 3);
    assert_eq!((page.items[0].sku, page.items[0].available_nearby), (1, 15));
    let mut found = Vec::new();
    let mut token = String::new();
    loop {
        let page = search("chips", true, true, token).await.unwrap();
        found.extend(page.items.iter().map(|i| i.sku));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(found, vec![1, 2]);
    // Refusals.
    let e = search(" ", false, false, String::new()).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::InvalidArgument), "{e}");
    let e = search("chips", false, false, "nonsense".into())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("page_token"), "{e}");
    // The CLI.
    let (code, out, _) = ordo_cli(&[
        "search",
        "potato",
        "--near",
        "12.97,77.59",
        "--json",
        "--endpoint",
        &node.endpoint,
    ]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(json["items"][0]["available_nearby"], 15, "{json}");
}
