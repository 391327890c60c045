//! The trust boundary, tried as a hostile client would: the internal service is not on the
//! client port, the peer port wants the cluster secret, and a crafted transaction that gets
//! past both is a deterministic refusal, never a stop (also after a restart).

mod common;

use std::time::Duration;

use common::*;
use ordo_client::v1;
use ordo_proto::internal::v1::raft_client::RaftClient;
use ordo_proto::internal::v1::{ForwardRequest, RaftPayload};
use ordo_scheduler::{encode, Line, Mode, Op, Txn};
use tonic::metadata::MetadataValue;
use tonic::Code;

const SECRET: &str = "trust-test-secret-0123456789";

fn forward_request(txns: &[Txn]) -> tonic::Request<ForwardRequest> {
    tonic::Request::new(ForwardRequest {
        from_node: 7,
        txns: encode(&txns.to_vec()),
    })
}

fn with_secret<T>(mut request: tonic::Request<T>, secret: &str) -> tonic::Request<T> {
    request.metadata_mut().insert(
        ordo_sequencer::peers::SECRET_METADATA_KEY,
        MetadataValue::try_from(secret).unwrap(),
    );
    request
}

fn order(request_id: &str, dc: u32, sku: u32, qty: i64) -> Txn {
    Txn {
        request_id: request_id.into(),
        op: Op::PlaceOrder {
            lines: vec![Line { dc, sku, qty }],
            mode: Mode::AllOrNothing,
            user: String::new(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_peer_messages_cannot_stop_or_corrupt_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let data = dir.path().join("data");
    let secret_arg = secret_file.to_str().unwrap();
    let mut node = TestNode::start(&data, &["--cluster-secret-file", secret_arg]);
    let client = node.client().await;
    seed(&client, 10).await;
    let peer = node
        .peer_endpoint
        .clone()
        .expect("a node with a secret has a peer port");

    eprintln!("--- phase: the client port does not serve the internal service");
    let mut on_client_port = RaftClient::new(channel(&node.endpoint).await);
    let refused = on_client_port
        .forward(forward_request(&[order("h1", 1, 1, -5)]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");

    eprintln!("--- phase: the peer port wants the secret");
    let mut on_peer_port = RaftClient::new(channel(&peer).await);
    for request in [
        forward_request(&[order("h2", 1, 1, -5)]),
        with_secret(
            forward_request(&[order("h3", 1, 1, -5)]),
            "wrong-secret-0123456789",
        ),
    ] {
        let refused = on_peer_port.forward(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    let refused = on_peer_port
        .append_entries(RaftPayload {
            data: vec![1, 2, 3],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(client.get_stock(1, 1).await.unwrap().on_hand, 10);

    eprintln!("--- phase: with the secret, inadmissible transactions are refused unsequenced");
    let hostile = [
        order("h4", 1, 1, -5),
        order("h5", 1, 1, i64::MIN),
        order("h6", 1, 1, 0),
    ];
    let answer = on_peer_port
        .forward(with_secret(forward_request(&hostile), SECRET))
        .await
        .unwrap()
        .into_inner();
    let refused: Vec<&str> = answer
        .refused
        .iter()
        .map(|r| r.request_id.as_str())
        .collect();
    assert_eq!(refused, ["h4", "h5", "h6"], "{answer:?}");
    assert!(answer.refused[0].reason.contains("qty must be between 1"));
    let garbage = on_peer_port
        .append_entries(with_secret(
            tonic::Request::new(RaftPayload {
                data: vec![0xff; 64],
            }),
            SECRET,
        ))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument);

    eprintln!("--- phase: the node still applies the log, and does after a restart");
    assert_eq!(client.get_stock(1, 1).await.unwrap().on_hand, 10);
    let placed = client
        .place_order(&[line(1, 1, 3)], false, None)
        .await
        .unwrap();
    assert!(committed(&placed));
    node.kill9();
    let node = TestNode::start(&data, &["--cluster-secret-file", secret_arg]);
    let client = node.client().await;
    assert_eq!(client.get_stock(1, 1).await.unwrap().on_hand, 7);
    let placed = client
        .place_order(&[line(1, 1, 1)], false, None)
        .await
        .unwrap();
    assert!(committed(&placed), "the restarted node applies new epochs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_secret_has_no_peer_port_and_takes_no_members() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    assert!(node.peer_endpoint.is_none());
    let client = node.client().await;
    let refused = client
        .add_member(2, "127.0.0.1:1".into())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::FailedPrecondition), "{refused}");
    assert!(refused.not_applied());
}

#[test]
fn peers_without_a_secret_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["server", "--node-id", "1", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--peer", "1=127.0.0.1:51999", "--peer", "2=127.0.0.1:51998"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--cluster-secret-file"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_speaks_v1_and_v1alpha_and_hides_the_internal_service() {
    use tonic_reflection::pb::v1 as r1;
    use tonic_reflection::pb::v1alpha as r0;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let channel = channel(&node.endpoint).await;

    let mut v1 = r1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = v1
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1: no service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "ordo.v1.Ordo"), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("internal")), "{names:?}");

    let mut v0 = r0::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = r0::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r0::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = v0
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(r0::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha: no service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "ordo.v1.Admin"), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("internal")), "{names:?}");

    eprintln!("--- phase: the internal file is not offered by name either");
    let request = r0::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            r0::server_reflection_request::MessageRequest::FileContainingSymbol(
                "ordo.internal.v1.Raft".into(),
            ),
        ),
    };
    let mut stream = v0
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match stream.message().await {
        Err(status) => assert_eq!(status.code(), Code::NotFound, "{status:?}"),
        Ok(response) => {
            let response = response.and_then(|r| r.message_response);
            assert!(
                matches!(
                    response,
                    Some(r0::server_reflection_response::MessageResponse::ErrorResponse(_))
                ),
                "{response:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_names_one_request_at_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    seed(&client, 10).await;
    let id = Some("one-request".to_string());
    // Lines in different regions (DC 1: region 0, DC 2: region 1).
    let first = client
        .place_order(&[line(1, 1, 1)], false, id.clone())
        .await
        .unwrap();
    assert!(committed(&first));
    let other = client
        .place_order(&[line(2, 1, 1)], false, id.clone())
        .await
        .unwrap_err();
    assert_eq!(other.code(), Some(Code::AlreadyExists), "{other}");
    assert!(other.not_applied());
    let restock = client.restock(1, 1, 5, id.clone()).await.unwrap_err();
    assert_eq!(restock.code(), Some(Code::AlreadyExists));
    let again = client
        .place_order(&[line(1, 1, 1)], false, id)
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(client.get_stock(1, 1).await.unwrap().on_hand, 9);
    assert_eq!(client.get_stock(2, 1).await.unwrap().on_hand, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dc_keeps_its_region() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    seed(&client, 10).await;
    let dc = |region: Option<u32>, active: bool| v1::Dc {
        dc_id: 1,
        name: "Renamed".into(),
        lat: 52.5,
        lon: 13.4,
        region,
        active,
    };
    let moved = client.upsert_dc(dc(Some(2), true)).await.unwrap_err();
    assert_eq!(moved.code(), Some(Code::FailedPrecondition), "{moved}");
    assert!(moved.to_string().contains("is in region 0"), "{moved}");
    // Renaming or deactivating never needs the region.
    client.upsert_dc(dc(None, false)).await.unwrap();
    client.upsert_dc(dc(Some(0), true)).await.unwrap();
    assert_eq!(client.get_stock(1, 1).await.unwrap().on_hand, 10);
    let new = client
        .upsert_dc(v1::Dc {
            dc_id: 77,
            ..dc(None, true)
        })
        .await
        .unwrap_err();
    assert_eq!(new.code(), Some(Code::InvalidArgument), "{new}");
}

#[test]
fn a_replica_with_another_partition_count_stops_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let ports = free_ports(4);
    let client = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let peer = |i: usize| format!("127.0.0.1:{}", ports[2 + i]);
    let start = |i: usize, partitions: &str| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["server", "--node-id", &(i + 1).to_string()])
            .args(["--listen", &client(i), "--peer-listen", &peer(i)])
            .arg("--data-dir")
            .arg(dir.path().join(format!("n{i}")))
            .arg("--cluster-secret-file")
            .arg(&secret_file)
            .args(["--partitions", partitions])
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for j in 0..2 {
            cmd.args(["--peer", &format!("{}={},{}", j + 1, peer(j), client(j))]);
        }
        cmd.spawn().unwrap()
    };
    let mut good = start(0, "3");
    let bad = start(1, "5");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            // cluster-init may fail while node 2 stops: what matters is what node 2 says.
            if let Ok(c) = ordo_client::Client::connect(format!("http://{}", client(0))).await {
                if c.init_cluster(false).await.is_ok() {
                    break;
                }
            }
            if std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    // Bounded: a node that never stops fails the test instead of hanging it.
    let mut bad = bad;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while bad.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            bad.kill().unwrap();
            good.kill().unwrap();
            panic!("the misconfigured node did not stop within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = bad.wait_with_output().unwrap();
    good.kill().unwrap();
    let _ = good.wait();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the cluster has 3 partitions") && stderr.contains("--partitions 5"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_across_a_two_day_clock_leap_is_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &["--fault-injection"]);
    let client = node.client().await;
    seed(&client, 10).await;
    let id = Some("before-the-leap".to_string());
    let first = client
        .place_order(&[line(1, 1, 2)], false, id.clone())
        .await
        .unwrap();
    assert!(committed(&first));

    eprintln!("--- phase: the leader's clock leaps two days ahead; epochs go on");
    let two_days_ms = 2 * 24 * 3600 * 1000;
    client.set_clock_fault(two_days_ms, 0, 0).await.unwrap();
    for _ in 0..8 {
        let placed = client
            .place_order(&[line(2, 1, 1)], false, None)
            .await
            .unwrap();
        assert!(committed(&placed));
    }

    eprintln!("--- phase: the retry gets the first answer; nothing is applied twice");
    let retry = client
        .place_order(&[line(1, 1, 2)], false, id)
        .await
        .unwrap();
    assert_eq!(retry, first);
    assert_eq!(client.get_stock(1, 1).await.unwrap().on_hand, 8);
    client.set_clock_fault(0, 0, 0).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_traffic_on_every_port_of_a_cluster_changes_nothing() {
    let cluster = Cluster::start(3, 0, 10, &[]).await;
    let client = cluster.client().await;

    eprintln!("--- phase: orders through every node");
    let mut committed_ids = Vec::new();
    for node in &cluster.nodes {
        let c = node.client().await;
        let r = c.place_order(&[line(1, 1, 1)], false, None).await.unwrap();
        assert!(committed(&r));
        committed_ids.push(r.order_id);
    }

    eprintln!("--- phase: hostile calls on every client port and every peer port");
    for node in &cluster.nodes {
        let mut on_client = RaftClient::new(channel(&node.endpoint()).await);
        let refused = on_client
            .forward(forward_request(&[order("x1", 1, 1, i64::MIN)]))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unimplemented);

        let mut on_peer = RaftClient::new(channel(&format!("http://{}", node.peer_addr)).await);
        let refused = on_peer
            .forward(forward_request(&[order("x2", 1, 1, -5)]))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        // With the secret: inadmissible transactions come back refused (from the leader), or
        // the whole call is refused (a follower is not the leader); nothing is sequenced.
        let answer = on_peer
            .forward(with_secret(
                forward_request(&[order("x3", 1, 1, -5), order("x4", 1, 1, i64::MIN)]),
                TEST_SECRET,
            ))
            .await;
        match answer {
            Ok(a) => assert_eq!(a.into_inner().refused.len(), 2),
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition),
        }
        for data in [vec![], vec![0xff; 1000], vec![1; 7]] {
            for call in 0..3 {
                let request = with_secret(
                    tonic::Request::new(RaftPayload { data: data.clone() }),
                    TEST_SECRET,
                );
                let refused = match call {
                    0 => on_peer.append_entries(request).await,
                    1 => on_peer.vote(request).await,
                    _ => on_peer.install_snapshot(request).await,
                }
                .unwrap_err();
                assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
            }
        }
        // Oversized and malformed client messages.
        let mut ordo =
            ordo_proto::v1::ordo_client::OrdoClient::new(channel(&node.endpoint()).await)
                .max_encoding_message_size(64 * 1024 * 1024);
        let huge = v1::PlaceOrderRequest {
            request_id: "huge".into(),
            user: "u".repeat(8 * 1024 * 1024),
            lines: vec![v1::OrderLine {
                dc_id: 1,
                sku: 1,
                qty: 1,
            }],
            ..Default::default()
        };
        let refused = ordo.place_order(huge).await.unwrap_err();
        assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
        let bad = ordo
            .place_order(v1::PlaceOrderRequest {
                request_id: "bad qty".into(),
                lines: vec![v1::OrderLine {
                    dc_id: 1,
                    sku: 1,
                    qty: i64::MIN,
                }],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
    }

    eprintln!("--- phase: membership changes need the secret (they pick who receives the log)");
    let refused = client
        .add_member_at(9, "127.0.0.1:1".into(), "127.0.0.1:2".into())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unauthenticated), "{refused}");
    let refused = client.remove_member(2).await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unauthenticated), "{refused}");
    let wrong = client
        .clone()
        .with_cluster_secret("not-the-cluster-secret-0123");
    let refused = wrong.remove_member(2).await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unauthenticated), "{refused}");
    assert_eq!(client.status().await.unwrap().members.len(), 3);

    eprintln!("--- phase: one request id, other bodies, sent to different nodes at once");
    let mut calls = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let c = node.client().await;
        calls.push(tokio::spawn(async move {
            c.place_order(&[line(i as u32 + 1, 2, 1)], false, Some("shared-id".into()))
                .await
        }));
    }
    let mut winners = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(r) => {
                assert!(committed(&r));
                committed_ids.push(r.order_id);
                winners += 1;
            }
            Err(e) => assert_eq!(e.code(), Some(Code::AlreadyExists), "{e}"),
        }
    }
    assert_eq!(
        winners, 1,
        "the first of them commits, the others are refused"
    );
    let sku2: i64 = {
        let mut total = 0;
        for dc in 1..=3 {
            total += client.get_stock(dc, 2).await.unwrap().on_hand;
        }
        total
    };
    assert_eq!(sku2, 30 - 1, "one body under the id was applied, once");

    eprintln!("--- phase: one request id, two restocks (+5 and -3), at once via two nodes");
    let before = client.get_stock(4, 3).await.unwrap().on_hand;
    let mut calls = Vec::new();
    for (node, delta) in [(0usize, 5i64), (1, -3)] {
        let c = cluster.nodes[node].client().await;
        calls.push(tokio::spawn(async move {
            (
                delta,
                c.restock(4, 3, delta, Some("shared-restock".into())).await,
            )
        }));
    }
    let mut applied = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            (delta, Ok(r)) => {
                assert!(r.applied);
                applied.push((delta, r.on_hand));
            }
            (_, Err(e)) => assert_eq!(e.code(), Some(Code::AlreadyExists), "{e}"),
        }
    }
    assert_eq!(applied.len(), 1, "one body applied: {applied:?}");
    let (delta, on_hand) = applied[0];
    assert_eq!(on_hand, before + delta, "its answer is its own");
    let now = client.get_stock(4, 3).await.unwrap();
    assert_eq!(now.on_hand, before + delta);

    eprintln!("--- phase: the cluster still works, agrees, and lost nothing");
    let r = client
        .place_order(&[line(2, 1, 1)], false, None)
        .await
        .unwrap();
    assert!(committed(&r));
    committed_ids.push(r.order_id);
    let epoch = client.status().await.unwrap().applied_epoch;
    cluster.wait_agreement(epoch, Duration::from_secs(30)).await;
    let listed = client.list_orders(0, 1000).await.unwrap();
    for id in committed_ids {
        assert!(
            listed.orders.iter().any(|o| o.order_id == id),
            "order {id} is missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_the_write_was_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]);
    seed(&node.client().await, 10).await;
    let mut ordo = ordo_proto::v1::ordo_client::OrdoClient::new(channel(&node.endpoint).await);
    let order = |dc_id, qty| v1::PlaceOrderRequest {
        lines: vec![v1::OrderLine { dc_id, sku: 1, qty }],
        ..Default::default()
    };
    for (request, code) in [
        (order(1, 0), Code::InvalidArgument),
        (order(99, 1), Code::NotFound),
    ] {
        let status = ordo.place_order(request).await.unwrap_err();
        assert_eq!(status.code(), code);
        assert_eq!(
            status
                .metadata()
                .get(ordo_proto::OUTCOME_METADATA_KEY)
                .map(|v| v.to_str().unwrap()),
            Some(ordo_proto::OUTCOME_NOT_APPLIED),
            "{status:?}"
        );
    }
}
