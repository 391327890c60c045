//! Subscriptions and notifications on a real `ordo server`: exactly the subscribers who stood
//! when a change's epoch began and whose parameters match get one notification each, with a
//! stable id; shards split users without overlap; a fan-out larger than one message resumes
//! from a token in its middle with no gap and no duplicate; the CLI.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use futures::stream::{self, StreamExt};
use ordo_client::{v1, Client, Subscription};
use tokio::time::Instant;
use v1::watch_notifications_request::Start;

fn from(start: Start, shard: u32, shards: u32) -> v1::WatchNotificationsRequest {
    v1::WatchNotificationsRequest {
        start: Some(start),
        shard,
        shards,
        progress_interval_ms: 50,
    }
}

/// Reads notifications until everything before epoch `through` + 1 is covered; returns them
/// and the token of every message read.
async fn read_through(
    client: &Client,
    request: v1::WatchNotificationsRequest,
    through: u64,
) -> (Vec<v1::Notification>, Vec<String>) {
    let mut stream = client.watch_notifications(request).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    let mut tokens = Vec::new();
    loop {
        let message = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("notifications did not reach the epoch in 30 s")
            .unwrap()
            .expect("the stream ended");
        tokens.push(message.resume_token.clone());
        let progress = message.notifications.is_empty();
        out.extend(message.notifications);
        if progress && message.epoch >= through {
            return (out, tokens);
        }
    }
}

fn ids(notifications: &[v1::Notification]) -> Vec<String> {
    notifications.iter().map(|n| n.id.clone()).collect()
}

#[tokio::test]
async fn each_standing_matching_subscriber_is_notified_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    seed(&client, 10).await;

    // Phase 1: subscriptions of every shape.
    let mut bob = Subscription::price_drop("bob", 1);
    bob.price_below_cents = 150;
    let mut erin = Subscription::back_in_stock("erin", 2);
    erin.dc_ids = vec![2];
    for s in [
        Subscription::price_drop("alice", 1),
        bob,
        Subscription::price_drop("carol", 1),
        erin,
        Subscription::back_in_stock("frank", 2),
    ] {
        client.subscribe(s).await.unwrap();
    }
    let ended = client
        .unsubscribe("carol", 1, v1::SubscriptionKind::PriceDrop)
        .await
        .unwrap();
    assert!(ended.removed);
    let again = client
        .unsubscribe("carol", 1, v1::SubscriptionKind::PriceDrop)
        .await
        .unwrap();
    assert!(!again.removed);
    let listed = client.list_subscriptions("carol", true).await.unwrap();
    assert_eq!(listed.subscriptions.len(), 1);
    assert!(!listed.subscriptions[0].active);
    assert!(client
        .list_subscriptions("carol", false)
        .await
        .unwrap()
        .subscriptions
        .is_empty());

    // Phase 2: changes.
    let first = client.set_price(1, 160, "INR").await.unwrap().epoch; // alice
    let second = client.set_price(1, 120, "").await.unwrap().epoch; // alice, bob
    client
        .subscribe(Subscription::price_drop("dave", 1))
        .await
        .unwrap();
    client.set_price(1, 130, "").await.unwrap(); // a rise: nobody
    client.restock(2, 2, -10, None).await.unwrap();
    let dc2 = client.restock(2, 2, 5, None).await.unwrap().epoch; // erin, frank
    client.restock(1, 2, -10, None).await.unwrap();
    let dc1 = client.restock(1, 2, 3, None).await.unwrap().epoch; // frank
    let dave = client.set_price(1, 100, "").await.unwrap().epoch; // alice, bob, dave

    let (all, _) = read_through(&client, from(Start::FromEpoch(1), 0, 1), dave).await;
    let got: BTreeSet<(u64, String, i32)> = all
        .iter()
        .map(|n| (n.epoch, n.user.clone(), n.kind))
        .collect();
    let price = v1::SubscriptionKind::PriceDrop as i32;
    let stock = v1::SubscriptionKind::BackInStock as i32;
    let want: BTreeSet<(u64, String, i32)> = [
        (first, "alice", price),
        (second, "alice", price),
        (second, "bob", price),
        (dc2, "erin", stock),
        (dc2, "frank", stock),
        (dc1, "frank", stock),
        (dave, "alice", price),
        (dave, "bob", price),
        (dave, "dave", price),
    ]
    .into_iter()
    .map(|(e, u, k)| (e, u.to_string(), k))
    .collect();
    assert_eq!(got, want);
    assert_eq!(all.len(), want.len(), "one notification each");
    let first_alice = all.iter().find(|n| n.epoch == first).unwrap();
    assert_eq!(
        (
            first_alice.before_cents,
            first_alice.after_cents,
            first_alice.currency.as_str()
        ),
        (199, 160, "INR")
    );
    assert_eq!(first_alice.id, format!("{first}-1-{price}-alice"));
    let erin = all.iter().find(|n| n.user == "erin").unwrap();
    assert_eq!(
        erin.back_in_stock,
        vec![v1::DcUnits {
            dc_id: 2,
            available: 5
        }]
    );

    // Phase 3: two shards split the users, the same notifications in all.
    let (zero, _) = read_through(&client, from(Start::FromEpoch(1), 0, 2), dave).await;
    let (one, _) = read_through(&client, from(Start::FromEpoch(1), 1, 2), dave).await;
    let mut split: Vec<String> = ids(&zero).into_iter().chain(ids(&one)).collect();
    split.sort();
    let mut whole = ids(&all);
    whole.sort();
    assert_eq!(split, whole);
    assert!(!zero.is_empty() && !one.is_empty());

    // Phase 4: the CLI prints one JSON object per notification.
    let (code, out, err) = ordo_cli(&[
        "notifications",
        "--from-epoch",
        &first.to_string(),
        "--limit",
        "1",
        "--endpoint",
        &node.endpoint,
    ]);
    assert_eq!(code, 0, "{err}");
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["user"], "alice");
    assert_eq!(line["kind"], "price_drop");
    assert_eq!(line["after_cents"], 160);
}

#[tokio::test]
async fn a_fan_out_over_several_messages_resumes_in_its_middle() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    seed(&client, 10).await;
    let users = 1_300;
    stream::iter(0..users)
        .for_each_concurrent(64, |i| {
            let client = client.clone();
            async move {
                client
                    .subscribe(Subscription::price_drop(&format!("user-{i:05}"), 3))
                    .await
                    .unwrap();
            }
        })
        .await;
    let epoch = client.set_price(3, 1, "").await.unwrap().epoch;

    let (all, tokens) = read_through(&client, from(Start::FromEpoch(epoch), 0, 1), epoch).await;
    assert_eq!(all.len(), users, "every subscriber once");
    let distinct: BTreeSet<String> = ids(&all).into_iter().collect();
    assert_eq!(distinct.len(), users);
    // The first message holds at most 500; resuming from its token gives exactly the rest.
    let token = tokens[0].clone();
    let (rest, _) = read_through(&client, from(Start::ResumeToken(token), 0, 1), epoch).await;
    let first_message = all.len() - rest.len();
    assert!(first_message > 0 && first_message <= 500, "{first_message}");
    assert_eq!(ids(&rest), ids(&all)[first_message..].to_vec());
}

/// A caller that chooses its request ids (one that may itself restart and send again) gets
/// each price change, subscribe and unsubscribe applied once: a repeat answers with the first
/// result and changes nothing, even after later writes.
#[tokio::test]
async fn a_callers_request_ids_make_prices_and_subscriptions_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    seed(&client, 10).await;

    let price = |id: &str, cents: i64| v1::SetPriceRequest {
        request_id: id.into(),
        sku: 1,
        price_cents: cents,
        currency: String::new(),
    };
    let first = client
        .set_price_request(price("price-a", 150))
        .await
        .unwrap();
    assert_eq!(first.request_id, "price-a");
    let second = client
        .set_price_request(price("price-b", 120))
        .await
        .unwrap();
    assert!(second.epoch > first.epoch);
    // "price-a" again, as a restarted caller would send it: the first answer, and the price
    // stays the later one.
    let again = client
        .set_price_request(price("price-a", 150))
        .await
        .unwrap();
    assert_eq!(again.epoch, first.epoch);
    let history = client.get_price_history(1, 0, 0).await.unwrap();
    assert_eq!(history.item.unwrap().price_cents, 120);
    let cents: Vec<i64> = history.history.iter().map(|p| p.price_cents).collect();
    assert_eq!(cents.iter().filter(|&&c| c == 150).count(), 1, "{cents:?}");

    let subscribed = client
        .subscribe_request(Subscription::price_drop("dora", 1).request("sub-dora"))
        .await
        .unwrap();
    assert_eq!(subscribed.request_id, "sub-dora");
    let ended = client
        .unsubscribe_request(v1::UnsubscribeRequest {
            request_id: "unsub-dora".into(),
            user: "dora".into(),
            sku: 1,
            kind: v1::SubscriptionKind::PriceDrop as i32,
        })
        .await
        .unwrap();
    // The subscribe sent again does not open it again.
    let again = client
        .subscribe_request(Subscription::price_drop("dora", 1).request("sub-dora"))
        .await
        .unwrap();
    assert_eq!(again.epoch, subscribed.epoch);
    let open = client.list_subscriptions("dora", false).await.unwrap();
    assert!(open.subscriptions.is_empty(), "{:?}", open.subscriptions);
    let all = client.list_subscriptions("dora", true).await.unwrap();
    assert_eq!(all.subscriptions.len(), 1);
    assert_eq!(all.subscriptions[0].until_epoch, ended.epoch);
}
