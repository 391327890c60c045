//! Hostile clients against a real node: what a caller holding an ordinary token can learn or
//! claim through the client port, and that it cannot wedge, starve or split the node.

mod common;

use common::*;
use ordo_client::v1;

/// The longest common prefix of two strings, in bytes.
fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_the_node_makes_cannot_be_guessed() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    seed(&client, 100).await;
    let mut raw = v1::ordo_client::OrdoClient::new(channel(&node.endpoint).await);

    eprintln!("--- phase: orders without a request id get ids the node makes");
    let mut ids = Vec::new();
    for _ in 0..8 {
        let answer = raw
            .place_order(v1::PlaceOrderRequest {
                lines: vec![line(1, 1, 1).into()],
                ..Default::default()
            })
            .await
            .expect("an order without a request id")
            .into_inner();
        ids.push(answer.result.expect("a result").request_id);
    }
    eprintln!("ids: {ids:?}");

    eprintln!("--- phase: the ids share nothing a caller could extrapolate from");
    for id in &ids {
        let digits = id
            .strip_prefix("srv-")
            .expect("a server-made id starts with srv-");
        assert!(
            digits.len() >= 32 && digits.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}: 128 bits or more, in hex"
        );
    }
    for pair in ids.windows(2) {
        // "srv-" and at most a few digits in common by chance, never a shared node, start
        // time or counter prefix.
        assert!(
            common_prefix(&pair[0], &pair[1]) < "srv-".len() + 6,
            "consecutive ids {pair:?} share a prefix"
        );
        assert_ne!(pair[0], pair[1]);
    }
}

/// `rounds` of four concurrent calls of `orders` orders of 12 lines each (every DC and SKU
/// of the seed): epochs of thousands of events. Returns the last epoch written.
async fn large_epochs(
    client: &ordo_client::Client,
    prefix: &str,
    rounds: usize,
    orders: usize,
) -> u64 {
    let mut last = 0;
    for round in 0..rounds {
        let calls = (0..4).map(|call| {
            let orders = (0..orders)
                .map(|i| v1::PlaceOrderRequest {
                    request_id: format!("{prefix}-{round}-{call}-{i}"),
                    lines: (1..=4)
                        .flat_map(|dc| (1..=3).map(move |sku| line(dc, sku, 1).into()))
                        .collect(),
                    ..Default::default()
                })
                .collect();
            client.place_orders(orders)
        });
        for results in futures::future::join_all(calls).await {
            let results = results.unwrap();
            last = last.max(results.iter().map(|r| r.epoch).max().unwrap());
        }
    }
    last
}

/// Every event from `first` through `last`, as (epoch, index), read by a consumer that keeps
/// up; asserts each message is within `message_bytes_max`.
async fn events_through(
    client: &ordo_client::Client,
    first: u64,
    last: u64,
    message_bytes_max: usize,
    kinds: Vec<i32>,
) -> Vec<(u64, u32)> {
    use prost::Message as _;
    let mut stream = client
        .watch(v1::WatchRequest {
            start: Some(v1::watch_request::Start::FromEpoch(first)),
            progress_interval_ms: 50,
            kinds,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let message = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("the stream reached the last epoch within 60 s")
            .expect("the stream goes on")
            .expect("the stream does not end");
        assert!(
            message.encoded_len() <= message_bytes_max,
            "a message of {} bytes, over {message_bytes_max}",
            message.encoded_len()
        );
        let covered = match message.message.unwrap() {
            v1::watch_response::Message::Events(e) => {
                seen.extend(e.events.iter().map(|event| (e.epoch, event.index)));
                if e.more {
                    continue;
                }
                e.epoch
            }
            v1::watch_response::Message::Progress(p) => p.epoch,
        };
        if covered >= last {
            return seen.into_iter().filter(|(e, _)| *e <= last).collect();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordo_watch_cut_inside_a_large_epoch_prints_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    // A small message limit (each epoch takes many messages) and a small buffer with a short
    // stall window, so a consumer that stops reading is cut off inside an epoch.
    let node = TestNode::start(
        dir.path(),
        &[
            "--message-bytes-max",
            "65536",
            "--watch-buffer-messages",
            "1",
            "--watch-stall-ms",
            "300",
            // Long epochs: four calls' orders in each, so every epoch takes many messages
            // and a cut almost always falls inside one.
            "--epoch-ms",
            "50",
        ],
    );
    let client = node.client().await;
    seed(&client, 1_000_000).await;
    let first = client.status().await.unwrap().applied_epoch + 1;

    eprintln!("--- phase: epochs of thousands of events, each in many messages under 64 KiB");
    // 200 orders a call: a call of 400 would itself be over the 64 KiB limit.
    let last = large_epochs(&client, "big", 8, 200).await;
    let expected = events_through(&client, first, last, 65536, Vec::new()).await;
    eprintln!("{} events in epochs {first}..={last}", expected.len());
    // Order events alone are large (12 lines each): a thousand of them are far over 64 KiB,
    // so the node must cut by bytes, not by count.
    let orders = events_through(
        &client,
        first,
        last,
        65536,
        vec![v1::EventKind::Order as i32],
    )
    .await;
    assert_eq!(orders.len(), 8 * 4 * 200);

    eprintln!("--- phase: ordo watch, its output unread for a while (the node cuts it off)");
    let mut watch = std::process::Command::new(BIN)
        .args([
            "watch",
            "--from-epoch",
            &first.to_string(),
            "--limit",
            &expected.len().to_string(),
            "--endpoint",
            &node.endpoint,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let stderr = watch.stderr.take().unwrap();
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap());
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(stdout);
        let mut lines = Vec::new();
        // Three times, stop reading for a while: the pipe fills, `ordo watch` blocks writing
        // and stops reading its stream, and the node's stall rule ends the stream, almost
        // surely inside an epoch.
        for _ in 0..3 {
            for _ in 0..2_000 {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    return lines;
                }
                lines.push(line);
            }
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
        lines.extend(reader.lines().map_while(Result::ok));
        lines
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let status = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ordo watch did not print every event"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let lines = lines.join().unwrap();
    let errors = errors.join().unwrap();
    assert!(status.success(), "{errors}");
    assert!(
        errors.contains("resuming from the last token"),
        "the stream was never cut, so this proves nothing: {errors}"
    );

    eprintln!("--- phase: every event printed once, in order");
    let printed: Vec<(u64, u32)> = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["epoch"].as_u64().unwrap(),
                v["index"].as_u64().unwrap() as u32,
            )
        })
        .collect();
    assert_eq!(printed.len(), expected.len(), "{errors}");
    assert!(
        printed == expected,
        "the printed events are not the feed's, each once: {} of {} differ",
        printed
            .iter()
            .zip(&expected)
            .filter(|(a, b)| a != b)
            .count(),
        expected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_taking_a_message_now_and_then_is_cut_off_with_a_resume_token() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(
        dir.path(),
        &["--watch-buffer-messages", "16", "--watch-stall-ms", "1000"],
    );
    let client = node.client().await;
    seed(&client, 1_000_000).await;
    let first = client.status().await.unwrap().applied_epoch + 1;
    let last = large_epochs(&client, "slow", 20, 400).await;

    eprintln!("--- phase: a consumer taking one message every 700 ms (never a whole stall)");
    let mut stream = client
        .watch(v1::WatchRequest {
            start: Some(v1::watch_request::Start::FromEpoch(first)),
            ..Default::default()
        })
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut delivered = 0;
    let ended = loop {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "the slow consumer was never cut off"
        );
        match stream.message().await {
            Ok(Some(message)) => {
                if let Some(v1::watch_response::Message::Events(e)) = message.message {
                    if !e.more {
                        delivered = e.epoch;
                    }
                    assert!(
                        e.epoch < last || e.more,
                        "it read everything: nothing to cut"
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(700)).await;
            }
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    eprintln!("ended after {:?}: {ended:?}", started.elapsed());

    eprintln!("--- phase: RESOURCE_EXHAUSTED, marked slow-consumer, with a token that resumes");
    assert_eq!(ended.code(), tonic::Code::ResourceExhausted, "{ended:?}");
    assert_eq!(
        ended.metadata().get("ordo-stream-end").unwrap(),
        "slow-consumer"
    );
    let token = ended
        .metadata()
        .get("ordo-resume-token")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let through: u64 = token.strip_prefix("ordo1.").unwrap().parse().unwrap();
    assert!(through < last, "cut before the end");
    let _ = delivered;
    let mut resumed = client
        .watch(v1::WatchRequest {
            start: Some(v1::watch_request::Start::ResumeToken(token)),
            ..Default::default()
        })
        .await
        .unwrap();
    let next = resumed.message().await.unwrap().unwrap();
    match next.message.unwrap() {
        v1::watch_response::Message::Events(e) => assert!(e.epoch > through),
        v1::watch_response::Message::Progress(p) => assert!(p.epoch >= through),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_cut_off_unread_give_their_buffers_back_to_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let listen = format!("127.0.0.1:{port}");
    // Room in the node's budget for two streams' buffers; three watchers that never read.
    let node = TestNode::start(
        dir.path(),
        &[
            "--watch-buffer-bytes",
            "1048576",
            "--streams-buffer-bytes-max",
            "2097152",
            "--watch-stall-ms",
            "500",
            "--metrics-listen",
            &listen,
        ],
    );
    let client = node.client().await;
    seed(&client, 1_000_000).await;
    let first = client.status().await.unwrap().applied_epoch + 1;
    // Tens of MB of events: past what the transport's windows hold for a watcher.
    let last = large_epochs(&client, "unread", 20, 400).await;

    eprintln!("--- phase: three watchers on connections of their own, never reading");
    let mut unread = Vec::new();
    for _ in 0..3 {
        let watcher = node.client().await;
        let stream = watcher
            .watch(v1::WatchRequest {
                start: Some(v1::watch_request::Start::FromEpoch(first)),
                ..Default::default()
            })
            .await
            .unwrap();
        unread.push((watcher, stream));
    }
    let started = std::time::Instant::now();
    while scraped(port, "ordo_watchers") > 0.0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the unread watchers were never cut off"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    eprintln!("--- phase: cut off, though the status never reached them, they hold no bytes");
    // Their streams are still open: the consumers read nothing, not even the status.
    assert_eq!(scraped(port, "ordo_stream_buffer_bytes"), 0.0);

    eprintln!("--- phase: a watcher that reads gets every event, the budget free for it");
    let events = events_through(&client, first, last, 1024 * 1024, Vec::new()).await;
    assert!(events.len() > 100_000, "{} events", events.len());
    drop(unread);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restock_of_hundreds_of_dcs_notifies_the_nearest_hundred_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &["--message-bytes-max", "65536"]);
    let client = node.client().await;
    const DCS: u32 = 250;

    eprintln!("--- phase: {DCS} DCs on a line north of a shopper, an item none of them has");
    let upserts = (1..=DCS).map(|dc| {
        let client = client.clone();
        async move {
            client
                .upsert_dc(v1::Dc {
                    dc_id: dc,
                    name: format!("DC {dc}"),
                    // 1.1 km apart: DC n is the n-th nearest to (10.0, 13.0).
                    lat: 10.0 + f64::from(dc) * 0.01,
                    lon: 13.0,
                    region: Some(0),
                    active: true,
                })
                .await
        }
    });
    for done in futures::future::join_all(upserts).await {
        done.expect("upsert dc");
    }
    client
        .upsert_item(v1::Item {
            sku: 1,
            name: "chips".into(),
            price_cents: 100,
        })
        .await
        .unwrap();
    let mut sub = ordo_client::Subscription::back_in_stock("shopper", 1);
    sub.near = Some((10.0, 13.0, 1_000_000));
    client.subscribe(sub).await.unwrap();
    let from = client.status().await.unwrap().applied_epoch + 1;

    eprintln!("--- phase: every DC restocked in one call");
    let restocks = (1..=DCS)
        .map(|dc| v1::RestockRequest {
            request_id: format!("restock-{dc}"),
            dc_id: dc,
            sku: 1,
            delta: 5,
        })
        .collect();
    let results = client.restocks(restocks).await.unwrap();
    let through = results.iter().map(|r| r.epoch).max().unwrap();

    eprintln!("--- phase: the notifications list at most 100 DCs each, nearest first");
    let mut stream = client
        .watch_notifications(v1::WatchNotificationsRequest {
            start: Some(v1::watch_notifications_request::Start::FromEpoch(from)),
            progress_interval_ms: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut notifications = Vec::new();
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(30), stream.message())
            .await
            .expect("notifications within 30 s")
            .unwrap()
            .expect("the stream goes on");
        let progress = message.notifications.is_empty();
        notifications.extend(message.notifications);
        if progress && message.epoch >= through {
            break;
        }
    }
    let mut counted = 0;
    for n in &notifications {
        let listed: Vec<u32> = n.back_in_stock.iter().map(|d| d.dc_id).collect();
        eprintln!(
            "epoch {}: {} DCs listed ({:?}..), {} more",
            n.epoch,
            listed.len(),
            listed.first(),
            n.back_in_stock_more
        );
        assert!(
            listed.len() <= 100,
            "{} DCs in one notification",
            listed.len()
        );
        assert!(
            listed.windows(2).all(|w| w[0] < w[1]),
            "nearest first: {listed:?}"
        );
        if n.back_in_stock_more > 0 {
            assert_eq!(listed.len(), 100);
        }
        counted += listed.len() + n.back_in_stock_more as usize;
    }
    assert_eq!(
        counted, DCS as usize,
        "every restocked DC listed or counted"
    );
    assert!(
        notifications.iter().any(|n| n.back_in_stock_more > 0),
        "some epoch restocked over 100 of the DCs"
    );
}

/// The tokens file without the entry named `name`.
fn without_token(file: &std::path::Path, name: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    let kept: String = text
        .split("\n[[token]]")
        .filter(|entry| !entry.contains(&format!("\"{name}\"")))
        .collect::<Vec<_>>()
        .join("\n[[token]]");
    std::fs::write(file, kept).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_ends_the_streams_it_opened_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let ops = create_token(&file, "ops", &["catalog", "admin", "read"]);
    let shop = create_token(&file, "shop", &["write", "read"]);
    let node = TestNode::start(
        &dir.path().join("data"),
        &["--tokens-file", file.to_str().unwrap()],
    );
    let admin = node.client().await.with_token(&ops).unwrap();
    seed(&admin, 1_000).await;
    let shop = node.client().await.with_token(&shop).unwrap();

    eprintln!("--- phase: the shop's token opens an order stream and a watch");
    let orders = shop.order_stream().await.unwrap();
    let first = orders.place_order(&[line(1, 1, 1)], false).await.unwrap();
    assert!(committed(&first));
    let mut watch = shop
        .watch(v1::WatchRequest {
            start: Some(v1::watch_request::Start::FromNow(true)),
            progress_interval_ms: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    watch.message().await.unwrap().expect("a progress message");

    eprintln!("--- phase: the token is taken out of the file");
    without_token(&file, "shop");
    let revoked_at = std::time::Instant::now();

    eprintln!("--- phase: the watch ends with UNAUTHENTICATED");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let ended = loop {
        match tokio::time::timeout_at(deadline, watch.message())
            .await
            .expect("the watch went on for 10 s after its token was revoked")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the watch ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
    eprintln!(
        "the watch ended {:?} after the revocation",
        revoked_at.elapsed()
    );

    eprintln!("--- phase: the order stream commits nothing more");
    let before = admin.get_stock(1, 2).await.unwrap().on_hand;
    let late = orders.place_order(&[line(1, 2, 1)], false).await;
    assert!(late.is_err(), "an order on a revoked stream: {late:?}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        admin.get_stock(1, 2).await.unwrap().on_hand,
        before,
        "an order on a revoked stream was committed"
    );
    let fresh = shop.order_stream().await;
    assert_eq!(
        fresh.err().and_then(|e| e.code()),
        Some(tonic::Code::Unauthenticated)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_retried_on_a_node_with_other_hold_flags_gets_its_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    seed(&client, 10).await;

    eprintln!("--- phase: a reserve with the default TTL");
    let mut reserve = ordo_client::Reserve::new(&[line(1, 1, 2)]);
    reserve.request_id = Some("cart-7-hold".into());
    let first = client.reserve(reserve.clone()).await.unwrap();
    assert_eq!(first.expires_at_ms - first.created_ms, 600_000);

    eprintln!("--- phase: the node restarts with other hold flags; the caller retries");
    node.stop();
    let node = TestNode::start(
        dir.path(),
        &[
            "--reservation-ttl-s",
            "60",
            "--reservation-ttl-max-s",
            "3600",
        ],
    );
    let client = node.client().await;
    let again = client
        .reserve(reserve)
        .await
        .expect("the retry gets the first answer, not ALREADY_EXISTS");
    assert_eq!(again.reservation_id, first.reservation_id);
    assert_eq!(again.expires_at_ms, first.expires_at_ms);
    assert_eq!(
        client.get_stock(1, 1).await.unwrap().reserved,
        2,
        "held once"
    );

    eprintln!("--- phase: the cluster's settings, not the node's new flags, decide new holds");
    let fresh = client
        .reserve(ordo_client::Reserve::new(&[line(2, 1, 1)]))
        .await
        .unwrap();
    assert_eq!(fresh.expires_at_ms - fresh.created_ms, 600_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_socket_floods_take_neither_other_clients_slots_nor_the_peers() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "hostile-clients-secret-0123456789").unwrap();
    let node = TestNode::start(
        &dir.path().join("data"),
        &[
            "--cluster-secret-file",
            secret_file.to_str().unwrap(),
            "--connections-max",
            "40",
            "--connections-per-source-max",
            "10",
            "--connection-idle-ms",
            "1500",
        ],
    );
    let client_addr = node.endpoint.trim_start_matches("http://").to_string();
    let peer = node.peer_endpoint.clone().expect("a peer port");
    let client = node.client().await;
    seed(&client, 10).await;

    eprintln!("--- phase: one source opens 15 silent sockets: it keeps 10");
    let mut flood = Vec::new();
    for _ in 0..15 {
        flood.push(socket_from("127.0.0.2", &client_addr).await);
    }
    // All at once: the ones kept are closed too once silent for the idle time (1.5 s).
    let shut = futures::future::join_all(
        flood
            .iter_mut()
            .map(|s| closed_within(s, std::time::Duration::from_millis(300))),
    )
    .await
    .into_iter()
    .filter(|&closed| closed)
    .count();
    assert_eq!(
        shut, 5,
        "the node closes what is past a source's share at once"
    );
    assert!(client.status().await.is_ok(), "other sources are served");

    eprintln!("--- phase: more sources fill the client port: the peer port still serves");
    let mut more = Vec::new();
    for source in ["127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        for _ in 0..10 {
            more.push(socket_from(source, &client_addr).await);
        }
    }
    let mut late = socket_from("127.0.0.6", &client_addr).await;
    assert!(
        closed_within(&mut late, std::time::Duration::from_millis(500)).await,
        "a connection past the port's cap is closed at once"
    );
    let mut raft = ordo_proto::internal::v1::raft_client::RaftClient::new(channel(&peer).await);
    let refused = raft
        .append_entries(ordo_proto::internal::v1::RaftPayload { data: vec![1] })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::Unauthenticated,
        "the peer port answered (its secret check), untouched by the client flood"
    );

    eprintln!("--- phase: silent sockets are closed after the idle time; clients come back");
    flood.append(&mut more);
    let started = std::time::Instant::now();
    for socket in &mut flood {
        assert!(
            closed_within(socket, std::time::Duration::from_secs(5)).await,
            "a silent socket was kept"
        );
    }
    eprintln!("all closed after {:?}", started.elapsed());
    let fresh = node.client().await;
    assert!(fresh.status().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_closed_after_the_first_bytes_wait_not_the_idle_time() {
    let dir = tempfile::tempdir().unwrap();
    // The default idle time (5 min); plaintext, where the node speaks first (HTTP/2's server
    // preface), which must not count as the client's first bytes.
    let node = TestNode::start(dir.path(), &[]);
    let client_addr = node.endpoint.trim_start_matches("http://").to_string();
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(socket_from("127.0.0.2", &client_addr).await);
    }
    let started = std::time::Instant::now();
    for socket in &mut silent {
        // FIRST_BYTES_TIMEOUT (10 s), and a margin for a loaded machine.
        assert!(
            closed_within(socket, std::time::Duration::from_secs(20)).await,
            "a socket that never sent a byte was kept past the first bytes' wait"
        );
    }
    eprintln!("all closed after {:?}", started.elapsed());
    // A client that speaks is kept as before.
    let client = node.client().await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(client.status().await.is_ok());
}

/// `series`'s value in a scrape of the metrics port.
fn scraped(port: u16, series: &str) -> f64 {
    let (_, body) = http(port, "GET /metrics HTTP/1.1\r\n\r\n");
    sample(&body, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_churn_rebuilds_neither_the_dc_index_nor_the_search_index() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let listen = format!("127.0.0.1:{port}");
    let node = TestNode::start(dir.path(), &["--metrics-listen", &listen]);
    let client = node.client().await;
    seed(&client, 10).await;
    let search = |query: &str| v1::SearchItemsRequest {
        query: query.into(),
        near: true,
        lat: 53.0,
        lon: 13.0,
        radius_m: 500_000,
        ..Default::default()
    };
    let nearby = "ordo_index_rebuilds_total{index=\"nearby\"}";
    let names = "ordo_index_rebuilds_total{index=\"search\"}";

    eprintln!("--- phase: a search near a point builds both indexes");
    let hits = client.search_items(search("item")).await.unwrap();
    assert_eq!(hits.items.len(), 3);
    client
        .get_nearby_availability(53.0, 13.0, 500_000, vec![1])
        .await
        .unwrap();
    let (dcs_before, names_before) = (scraped(port, nearby), scraped(port, names));
    assert!(dcs_before >= 1.0 && names_before >= 1.0);

    eprintln!("--- phase: fifty price changes; searches show the new prices, nothing rebuilt");
    for cents in 0..50 {
        client.set_price(2, 300 + cents, "").await.unwrap();
        let hits = client.search_items(search("item 2")).await.unwrap();
        assert_eq!(
            hits.items[0].price_cents,
            300 + cents,
            "the price as of the read"
        );
        client
            .get_nearby_availability(53.0, 13.0, 500_000, vec![2])
            .await
            .unwrap();
    }
    assert_eq!(
        scraped(port, nearby),
        dcs_before,
        "the DC index was rebuilt"
    );
    assert_eq!(
        scraped(port, names),
        names_before,
        "the search index was rebuilt"
    );

    eprintln!("--- phase: a new name, and a new DC, are found at once");
    client
        .upsert_item(v1::Item {
            sku: 3,
            name: "salted crisps".into(),
            price_cents: 199,
        })
        .await
        .unwrap();
    let hits = client.search_items(search("crisps")).await.unwrap();
    assert_eq!(hits.items.len(), 1);
    assert_eq!(hits.items[0].sku, 3);
    assert_eq!(scraped(port, names), names_before + 1.0);
    client
        .upsert_dc(v1::Dc {
            dc_id: 9,
            name: "DC 9".into(),
            lat: 53.0,
            lon: 13.0,
            region: Some(0),
            active: true,
        })
        .await
        .unwrap();
    let found = client
        .get_nearby_availability(53.0, 13.0, 1_000, vec![1])
        .await
        .unwrap();
    assert!(found.dcs.iter().any(|d| d.dc_id == 9), "{found:?}");
    assert!(scraped(port, nearby) > dcs_before);
}
