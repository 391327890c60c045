//! The change feed on real `ordo server` processes: a Watch stream carries every change in
//! epoch order and replays to the stored rows; a resume token continues with no gap and no
//! duplicate, on the same node or, after a kill, on another; a start before retention is
//! OUT_OF_RANGE naming the oldest kept epoch; a consumer that never reads is cut off with a
//! resume token while epochs go on; prices and their history; the CLI's JSON lines.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use ordo_client::{v1, Client, Reserve};
use tokio::time::Instant;
use v1::watch_request::Start;
use v1::watch_response::Message;

/// An event's name on every node, with the event.
type Seen = Vec<((u64, u32), v1::change_event::Event)>;

fn watch_from(start: Start) -> v1::WatchRequest {
    v1::WatchRequest {
        start: Some(start),
        progress_interval_ms: 50,
        ..Default::default()
    }
}

/// Reads `stream` until an epoch at or past `through` is covered (by events or progress),
/// appending events to `seen`; returns the last resume token.
async fn read_through(
    stream: &mut tonic::Streaming<v1::WatchResponse>,
    through: u64,
    seen: &mut Seen,
) -> Result<String, tonic::Status> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let message = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("the stream did not reach epoch {through} in 30 s"))?
            .expect("the stream ended");
        let covered = match message.message.expect("a message") {
            Message::Events(e) => {
                if let Some(last) = seen.last() {
                    assert!(
                        (e.epoch, e.events[0].index) > last.0,
                        "epoch {} index {} came after {:?}",
                        e.epoch,
                        e.events[0].index,
                        last.0
                    );
                }
                for event in e.events {
                    seen.push(((e.epoch, event.index), event.event.expect("event")));
                }
                if e.more {
                    continue;
                }
                (e.epoch, e.resume_token)
            }
            Message::Progress(p) => (p.epoch, p.resume_token),
        };
        if covered.0 >= through {
            return Ok(covered.1);
        }
    }
}

/// Stock rows as the stock events say, replayed from empty rows.
fn replay(seen: &Seen) -> BTreeMap<(u32, u32), (i64, i64)> {
    let mut rows = BTreeMap::new();
    for (id, event) in seen {
        if let v1::change_event::Event::Stock(s) = event {
            let before = s.before.unwrap_or_default();
            let after = s.after.unwrap_or_default();
            let row = rows.entry((s.dc_id, s.sku)).or_insert((0, 0));
            assert_eq!(
                *row,
                (before.on_hand, before.reserved),
                "event {id:?} does not start where the row's last one ended"
            );
            *row = (after.on_hand, after.reserved);
        }
    }
    rows
}

async fn assert_replays_to_stock(client: &Client, seen: &Seen) {
    let rows = replay(seen);
    for dc in 1..=4 {
        for sku in 1..=3 {
            let s = client.get_stock(dc, sku).await.unwrap();
            assert_eq!(
                rows.get(&(dc, sku)).copied().unwrap_or_default(),
                (s.on_hand, s.reserved),
                "dc {dc} sku {sku}: the events replay to the stored row"
            );
        }
    }
}

#[tokio::test]
async fn the_feed_carries_every_change_and_resumes_from_any_token() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    seed(&client, 100).await;

    // Phase 1: a watcher from epoch 1 while every kind of write happens.
    let mut stream = client.watch(watch_from(Start::FromEpoch(1))).await.unwrap();
    let order = client
        .place_order(&[line(1, 1, 3), line(2, 2, 1)], false, None)
        .await
        .unwrap();
    assert!(committed(&order));
    client.transfer_stock(3, 1, 3, 5, None).await.unwrap();
    let held = client
        .reserve(Reserve::new(&[line(4, 1, 2)]))
        .await
        .unwrap();
    let confirmed = client
        .confirm_reservation(held.reservation_id, &[], None)
        .await
        .unwrap();
    let cancelled = client
        .reserve(Reserve::new(&[line(4, 2, 1)]))
        .await
        .unwrap();
    client
        .cancel_reservation(cancelled.reservation_id, None)
        .await
        .unwrap();
    let priced = client.set_price(2, 149, "INR").await.unwrap();
    let last = priced.epoch;
    let mut seen = Seen::new();
    read_through(&mut stream, last, &mut seen).await.unwrap();
    seen.retain(|((epoch, _), _)| *epoch <= last);

    // Every kind is there, with its cause.
    use v1::change_event::Event as E;
    let stock_causes: Vec<(u32, u32, i32)> = seen
        .iter()
        .filter_map(|(_, e)| match e {
            E::Stock(s) => Some((s.dc_id, s.sku, s.cause)),
            _ => None,
        })
        .collect();
    for (dc, sku, cause) in [
        (1, 1, v1::StockCause::Order),
        (2, 2, v1::StockCause::Order),
        (1, 3, v1::StockCause::Transfer),
        (3, 3, v1::StockCause::Transfer),
        (4, 1, v1::StockCause::Reservation),
        (4, 1, v1::StockCause::Confirm),
        (4, 2, v1::StockCause::Cancel),
        (2, 3, v1::StockCause::Restock),
    ] {
        assert!(
            stock_causes.contains(&(dc, sku, cause as i32)),
            "no {cause:?} event on dc {dc} sku {sku}: {stock_causes:?}"
        );
    }
    let orders: Vec<u64> = seen
        .iter()
        .filter_map(|(_, e)| match e {
            E::Order(o) => Some(o.order_id),
            _ => None,
        })
        .collect();
    assert_eq!(
        orders,
        vec![order.order_id, confirmed.result.unwrap().order_id]
    );
    let steps: Vec<i32> = seen
        .iter()
        .filter_map(|(_, e)| match e {
            E::Reservation(r) => Some(r.step),
            _ => None,
        })
        .collect();
    use v1::ReservationStep as S;
    assert_eq!(
        steps,
        [S::Held, S::Confirmed, S::Held, S::Cancelled].map(|s| s as i32)
    );
    assert!(seen.iter().any(|(_, e)| matches!(e,
        E::Price(p) if p.sku == 2 && p.before_cents == 199 && p.after_cents == 149 && p.currency == "INR")));
    assert!(seen
        .iter()
        .any(|(_, e)| matches!(e, E::Dc(d) if d.dc_id == 4)));
    assert_replays_to_stock(&client, &seen).await;

    // Phase 2: from a token in the middle, exactly the rest, on a new stream.
    let middle = order.epoch;
    let mut resumed = client
        .watch(watch_from(Start::ResumeToken(format!("ordo1.{middle}"))))
        .await
        .unwrap();
    let mut rest = Seen::new();
    read_through(&mut resumed, last, &mut rest).await.unwrap();
    rest.retain(|((epoch, _), _)| *epoch <= last);
    let expected: Vec<_> = seen
        .iter()
        .filter(|((epoch, _), _)| *epoch > middle)
        .cloned()
        .collect();
    assert_eq!(
        rest, expected,
        "a resume gives exactly the events after the token"
    );

    // Phase 3: a filter; a quiet stream still moves by progress messages.
    let mut prices = client
        .watch(v1::WatchRequest {
            start: Some(Start::FromEpoch(1)),
            kinds: vec![v1::EventKind::Price as i32],
            skus: vec![2],
            progress_interval_ms: 20,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut filtered = Seen::new();
    read_through(&mut prices, last, &mut filtered)
        .await
        .unwrap();
    assert_eq!(filtered.len(), 1, "{filtered:?}");
    let later = client.restock(1, 1, 1, None).await.unwrap().epoch;
    let token = read_through(&mut prices, later, &mut filtered)
        .await
        .unwrap();
    assert_eq!(token, format!("ordo1.{later}"));
    assert_eq!(filtered.len(), 1, "the restock is not a price event");

    // Phase 4: the price history, newest first; bad input is refused.
    client.set_price(2, 99, "").await.unwrap();
    let history = client.get_price_history(2, 0, 0).await.unwrap();
    let cents: Vec<(i64, &str)> = history
        .history
        .iter()
        .map(|p| (p.price_cents, p.currency.as_str()))
        .collect();
    assert_eq!(cents, vec![(99, "INR"), (149, "INR")]);
    assert_eq!(history.item.unwrap().price_cents, 99);
    let unknown = client.set_price(77, 1, "").await.unwrap_err();
    assert_eq!(unknown.code(), Some(tonic::Code::NotFound));
    let currency = client.set_price(2, 1, "rupees").await.unwrap_err();
    assert_eq!(currency.code(), Some(tonic::Code::InvalidArgument));
    let token = client
        .watch(watch_from(Start::ResumeToken("42".into())))
        .await
        .unwrap_err();
    assert_eq!(token.code(), Some(tonic::Code::InvalidArgument));

    // Phase 5: the CLI prints one JSON object per event line.
    let (code, out, err) = ordo_cli(&[
        "watch",
        "--from-epoch",
        &priced.epoch.to_string(),
        "--kind",
        "price",
        "--limit",
        "1",
        "--endpoint",
        &node.endpoint,
    ]);
    assert_eq!(code, 0, "{err}");
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["kind"], "price");
    assert_eq!(line["after_cents"], 149);
    assert_eq!(line["resume_token"], format!("ordo1.{}", priced.epoch));
}

#[tokio::test]
async fn a_start_before_retention_is_out_of_range_and_names_the_oldest_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &["--feed-retention-epochs", "5"]);
    let client = node.client().await;
    seed(&client, 100).await;
    for _ in 0..10 {
        client.restock(1, 1, 1, None).await.unwrap();
    }
    let err = client
        .watch(watch_from(Start::FromEpoch(1)))
        .await
        .unwrap_err();
    let status = match &err {
        ordo_client::Error::Status(s) => s,
        other => panic!("{other}"),
    };
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    let start: u64 = status
        .metadata()
        .get("ordo-feed-start")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(start > 1 && status.message().contains(&format!("epoch {start}")));
    // The recipe: the state at an epoch at or after start - 1, then the feed after it.
    let stock = client.get_stock(1, 1).await.unwrap();
    assert!(stock.epoch + 1 >= start);
    let mut stream = client
        .watch(watch_from(Start::FromEpoch(stock.epoch + 1)))
        .await
        .unwrap();
    let r = client.restock(1, 1, 1, None).await.unwrap();
    let mut seen = Seen::new();
    read_through(&mut stream, r.epoch, &mut seen).await.unwrap();
    let on_hand: Vec<i64> = seen
        .iter()
        .filter_map(|(_, e)| match e {
            v1::change_event::Event::Stock(s) if s.dc_id == 1 && s.sku == 1 => {
                s.after.as_ref().map(|a| a.on_hand)
            }
            _ => None,
        })
        .collect();
    assert_eq!(on_hand, vec![stock.on_hand + 1]);

    // A start in the future waits quietly: no progress for epochs not applied yet, then the
    // events from that epoch on.
    let future = r.epoch + 3;
    let mut ahead = client
        .watch(watch_from(Start::FromEpoch(future)))
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), ahead.message()).await;
    assert!(
        early.is_err(),
        "a message before epoch {future} existed: {early:?}"
    );
    let mut last = 0;
    for _ in 0..5 {
        last = client.restock(1, 1, 1, None).await.unwrap().epoch;
    }
    let mut seen = Seen::new();
    read_through(&mut ahead, last, &mut seen).await.unwrap();
    let epochs: Vec<u64> = seen.iter().map(|((e, _), _)| *e).collect();
    assert_eq!(epochs, (future..=last).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_consumer_that_never_reads_is_cut_off_with_a_resume_token() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(
        dir.path(),
        &[
            "--watchers-max",
            "1",
            "--watch-buffer-messages",
            "4",
            "--watch-stall-ms",
            "500",
        ],
    );
    let client = node.client().await;
    seed(&client, 1_000_000).await;
    let first = client.status().await.unwrap().applied_epoch + 1;

    // Phase 1: a stream nobody reads, and a second one over the watcher limit.
    let mut stuck = client
        .watch(watch_from(Start::FromEpoch(first)))
        .await
        .unwrap();
    let over = client
        .watch(watch_from(Start::FromNow(true)))
        .await
        .unwrap_err();
    assert_eq!(over.code(), Some(tonic::Code::ResourceExhausted));

    // Phase 2: megabytes of events (more than the transport buffers) while it is stuck; the
    // writes are not slowed by it.
    let mut last = 0;
    for round in 0..12 {
        let orders = (0..400)
            .map(|i| v1::PlaceOrderRequest {
                request_id: format!("bulk-{round}-{i}"),
                lines: (1..=4)
                    .flat_map(|dc| (1..=3).map(move |sku| line(dc, sku, 1).into()))
                    .collect(),
                ..Default::default()
            })
            .collect();
        let results = client.place_orders(orders).await.unwrap();
        last = results.iter().map(|r| r.epoch).max().unwrap();
    }

    // Phase 3: the producer gives up on it, drops what waited in its buffer and frees its
    // slot; the consumer, reading at last, gets what the transport had taken, then
    // RESOURCE_EXHAUSTED with the token of the last whole epoch among those.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut second = loop {
        match client.watch(watch_from(Start::FromNow(true))).await {
            Ok(s) => break s,
            Err(e) => {
                assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted));
                assert!(Instant::now() < deadline, "the stuck stream kept its slot");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut seen = Seen::new();
    let status = read_through(&mut stuck, u64::MAX, &mut seen)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let token = status
        .metadata()
        .get("ordo-resume-token")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    // Whole epochs only up to the token (a partly sent epoch comes again after it).
    let through: u64 = token.strip_prefix("ordo1.").unwrap().parse().unwrap();
    assert!(through < last, "the consumer was cut off before the end");
    seen.retain(|((epoch, _), _)| *epoch <= through);

    // Phase 4: resumed from the token, the events continue with no gap and no duplicate.
    drop(second.message().await);
    drop(second);
    let mut resumed = open_when_free(&client, Start::ResumeToken(token)).await;
    read_through(&mut resumed, last, &mut seen).await.unwrap();
    drop(resumed);
    seen.retain(|((epoch, _), _)| *epoch <= last);
    let orders = seen
        .iter()
        .filter(|(_, e)| matches!(e, v1::change_event::Event::Order(_)))
        .count();
    assert_eq!(orders, 12 * 400, "every order once");
    let mut all = Seen::new();
    let mut fresh = open_when_free(&client, Start::FromEpoch(1)).await;
    read_through(&mut fresh, last, &mut all).await.unwrap();
    all.retain(|((epoch, _), _)| *epoch >= first && *epoch <= last);
    assert!(
        seen == all,
        "the stuck-then-resumed consumer saw what a fresh one sees"
    );
}

/// Opens a stream once the node's only watcher slot is free again (a dropped stream frees it
/// when its producer next sends).
async fn open_when_free(client: &Client, start: Start) -> tonic::Streaming<v1::WatchResponse> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.watch(watch_from(start.clone())).await {
            Ok(s) => return s,
            Err(e) if e.code() == Some(tonic::Code::ResourceExhausted) => {
                assert!(Instant::now() < deadline, "the watcher slot stayed taken");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn a_watcher_killed_with_its_node_resumes_on_another_with_no_gap() {
    let mut cluster = Cluster::start(3, 0, 1_000, &[]).await;
    let leader = cluster.leader(Duration::from_secs(30)).await;
    let watched = (1..=3).find(|&id| id != leader).unwrap();
    let other = (1..=3).find(|&id| id != leader && id != watched).unwrap();
    let writers = Writers::start(cluster.endpoints(), 4, "watch").await;
    writers.wait_acked(50, Duration::from_secs(30)).await;

    // Phase 1: follow a follower, then kill it mid-stream.
    let node_client = cluster.node(watched).client().await;
    let mut stream = node_client
        .watch(watch_from(Start::FromEpoch(1)))
        .await
        .unwrap();
    let mut seen = Seen::new();
    let applied = node_client.status().await.unwrap().applied_epoch;
    let token = read_through(&mut stream, applied, &mut seen).await.unwrap();
    cluster.node(watched).kill9();

    // Phase 2: resume on another node with the token while writes go on.
    writers
        .wait_acked(writers.acked_count() + 50, Duration::from_secs(30))
        .await;
    let other_client = cluster.node(other).client().await;
    let mut resumed = other_client
        .watch(watch_from(Start::ResumeToken(token)))
        .await
        .unwrap();
    cluster.node(watched).start();
    let client = cluster.client().await;
    cluster.settle(writers, &client, 1_000 * 12).await;
    let end = other_client.status().await.unwrap().applied_epoch;
    read_through(&mut resumed, end, &mut seen).await.unwrap();
    seen.retain(|((epoch, _), _)| *epoch <= end);

    // Phase 3: the same events, in the same order, as a fresh watcher on the leader, and
    // they replay to the stock every node agrees on.
    let leader_client = cluster.node(leader).client().await;
    let mut fresh = leader_client
        .watch(watch_from(Start::FromEpoch(1)))
        .await
        .unwrap();
    let mut all = Seen::new();
    read_through(&mut fresh, end, &mut all).await.unwrap();
    all.retain(|((epoch, _), _)| *epoch <= end);
    assert!(seen == all, "the resumed watcher missed or repeated events");
    assert_replays_to_stock(&other_client, &seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_ends_its_streams_with_a_resume_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    seed(&client, 10).await;
    let mut stream = client.watch(watch_from(Start::FromEpoch(1))).await.unwrap();
    let applied = client.status().await.unwrap().applied_epoch;
    let mut seen = Seen::new();
    read_through(&mut stream, applied, &mut seen).await.unwrap();

    // SIGTERM: the node stops promptly although a stream is open, and the stream says where
    // to resume. (The client keeps running meanwhile: a graceful HTTP/2 shutdown waits for
    // its answer to a ping.)
    let stopping = tokio::task::spawn_blocking(move || node.stop());
    let status = read_through(&mut stream, u64::MAX, &mut seen)
        .await
        .unwrap_err();
    stopping.await.unwrap();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let token = status.metadata().get("ordo-resume-token").unwrap();
    assert!(token.to_str().unwrap().starts_with("ordo1."));
}

/// Request bytes as they are, for requests no typed client would send; answers as bytes.
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Watch and WatchNotifications are served by their own codec (their producers send encoded
/// messages): it must refuse what the generated one refuses, and its bytes must decode as the
/// messages the proto names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_streams_refuse_malformed_and_oversized_requests() {
    use prost::Message as _;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    seed(&client, 10).await;
    let channel = tonic::transport::Endpoint::from_shared(node.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let call = |path: &'static str, body: Vec<u8>| {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        async move {
            grpc.ready().await.unwrap();
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
            grpc.server_streaming(tonic::Request::new(body), path, Raw)
                .await
        }
    };
    for path in ["/ordo.v1.Ordo/Watch", "/ordo.v1.Ordo/WatchNotifications"] {
        // A field 1 whose length runs past the end; then a body over the 4 MiB limit.
        let refused = call(path, vec![0x0a, 0x7f, 1, 2]).await.unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "{path}: {refused:?}"
        );
        let refused = call(path, vec![0; 5 * 1024 * 1024]).await.unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::OutOfRange,
            "{path}: {refused:?}"
        );
    }
    // Well-formed requests still stream, in the proto's encoding.
    let r = client.restock(1, 1, 5, None).await.unwrap();
    let request = watch_from(Start::FromEpoch(r.epoch)).encode_to_vec();
    let mut stream = call("/ordo.v1.Ordo/Watch", request)
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a message");
    match v1::WatchResponse::decode(first.as_slice())
        .unwrap()
        .message
        .expect("a message")
    {
        Message::Events(e) => assert_eq!(e.epoch, r.epoch),
        other => panic!("expected the restock's events, got {other:?}"),
    }
}
