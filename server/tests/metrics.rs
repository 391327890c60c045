//! `--metrics-listen`: what a Prometheus scrape of a working node shows.

mod common;

use std::time::Duration;

use common::*;
use ordo_client::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_calls_by_method_and_code_and_the_nodes_work() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let listen = format!("127.0.0.1:{port}");
    let node = TestNode::start(dir.path(), &["--metrics-listen", &listen]);
    let client = node.client().await;
    seed(&client, 5).await;
    for _ in 0..3 {
        let r = client
            .place_order(&[line(1, 1, 1)], false, None)
            .await
            .unwrap();
        assert!(committed(&r));
    }
    let rejected = client
        .place_order(&[line(1, 2, 50)], false, None)
        .await
        .unwrap();
    assert!(!committed(&rejected));
    let invalid = client.place_order(&[line(1, 1, 0)], false, None).await;
    assert_eq!(
        invalid.unwrap_err().code(),
        Some(tonic::Code::InvalidArgument)
    );
    // Two held rows (DCs 2 and 3), one released again by a cancel, one still live.
    let held = client
        .reserve(ordo_client::Reserve::new(&[line(2, 1, 1), line(3, 1, 1)]))
        .await
        .unwrap();
    client
        .reserve(ordo_client::Reserve::new(&[line(2, 2, 1)]))
        .await
        .unwrap();
    client
        .cancel_reservation(held.reservation_id, None)
        .await
        .unwrap();
    let mut watch = client
        .raw()
        .watch(v1::WatchRequest {
            start: Some(v1::watch_request::Start::FromNow(true)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let _ = tokio::time::timeout(Duration::from_millis(200), watch.message()).await;

    let (status, body) = http(port, "GET /metrics HTTP/1.1\r\nHost: ordo\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let place = "method=\"ordo.v1.Ordo/PlaceOrder\"";
    assert_eq!(
        sample(
            &body,
            &format!("ordo_rpc_requests_total{{{place},code=\"OK\"}}")
        ),
        4.0,
        "three orders and one rejected by stock are answered OK"
    );
    assert_eq!(
        sample(
            &body,
            &format!("ordo_rpc_requests_total{{{place},code=\"INVALID_ARGUMENT\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &body,
            &format!("ordo_rpc_duration_seconds_count{{{place},code=\"OK\"}}")
        ),
        4.0
    );
    assert_eq!(
        sample(
            &body,
            &format!("ordo_rpc_duration_seconds_bucket{{{place},code=\"OK\",le=\"+Inf\"}}")
        ),
        4.0
    );
    assert!(sample(&body, "ordo_rejects_total{reason=\"insufficient_stock\"}") >= 1.0);
    assert!(sample(&body, "ordo_epoch_txns_count") >= 4.0);
    assert!(sample(&body, "ordo_epoch_interval_seconds_count") >= 4.0);
    assert!(sample(&body, "ordo_raft_commit_seconds_count") >= 4.0);
    assert!(sample(&body, "ordo_raft_log_fsync_seconds_count") >= 1.0);
    assert!(sample(&body, "ordo_applied_epoch") >= 4.0);
    assert_eq!(sample(&body, "ordo_is_leader"), 1.0);
    assert_eq!(sample(&body, "ordo_watchers"), 1.0);
    assert_eq!(sample(&body, "ordo_reservations_live"), 1.0);
    assert_eq!(sample(&body, "ordo_queue_txns"), 0.0);
    // Every request id above is remembered for dedupe, in the index of the epochs' lists.
    assert!(sample(&body, "ordo_dedupe_ids") >= 6.0);
    assert!(body.contains("# TYPE ordo_rpc_duration_seconds histogram\n"));

    let (status, _) = http(port, "GET /other HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = http(port, "POST /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    drop(watch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_a_scrape_needs_a_metrics_or_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let scraper = create_token(&file, "prometheus", &["metrics"]);
    let ops = create_token(&file, "ops", &["admin"]);
    let shop = create_token(&file, "shop", &["read", "write"]);
    let port = free_ports(1)[0];
    let listen = format!("127.0.0.1:{port}");
    let _node = TestNode::start(
        &dir.path().join("data"),
        &[
            "--metrics-listen",
            &listen,
            "--tokens-file",
            file.to_str().unwrap(),
        ],
    );
    let get = |token: Option<&str>| {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        http(port, &format!("GET /metrics HTTP/1.1\r\n{auth}\r\n"))
    };

    eprintln!("--- phase: no token, an unknown one, one without the scope: refused");
    for token in [None, Some("ordo_not-a-token"), Some(shop.as_str())] {
        let (status, body) = get(token);
        assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{token:?}: {body}");
        assert!(!body.contains("ordo_"), "{body}");
    }

    eprintln!("--- phase: the metrics scope and the admin scope scrape");
    for token in [&scraper, &ops] {
        let (status, body) = get(Some(token));
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains("ordo_applied_epoch"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_hold_is_not_live_even_before_its_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let listen = format!("127.0.0.1:{port}");
    let node = TestNode::start(dir.path(), &["--metrics-listen", &listen]);
    let client = node.client().await;
    seed(&client, 1_000).await;
    // One lapsed hold swept per partition per epoch: hundreds take many epochs to sweep.
    let (code, out, err) = ordo_cli(&[
        "settings",
        "set",
        "--expiry-per-epoch-max",
        "1",
        "--endpoint",
        &node.endpoint,
    ]);
    assert_eq!(code, 0, "{out}{err}");

    eprintln!("--- phase: 600 one-second holds");
    many_holds(&client, 600, 1).await;
    let (_, body) = http(port, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(sample(&body, "ordo_reservations_live"), 600.0);

    eprintln!("--- phase: they lapse; the gauge says none is live while the sweep goes on");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    client.restock(1, 1, 1, None).await.unwrap();
    let (_, body) = http(port, "GET /metrics HTTP/1.1\r\n\r\n");
    let swept = sample(&body, "ordo_reservations_expired_total");
    assert!(
        swept < 600.0,
        "the sweep was done already ({swept}): this proves nothing"
    );
    assert_eq!(
        sample(&body, "ordo_reservations_live"),
        0.0,
        "swept {swept}"
    );
}
