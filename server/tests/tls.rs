//! TLS as an operator tries it: certificates from `ordo certs generate`, a node serving its
//! client port over TLS (the Rust client and the CLI with `--ca`), certificates replaced while
//! it runs, and a cluster whose peers talk mutual TLS and refuse a caller without a
//! certificate from their CA.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use ordo_client::Client;
use ordo_proto::internal::v1::raft_client::RaftClient;
use ordo_proto::internal::v1::RaftPayload;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn generate(dir: &Path, nodes: &str) {
    let (code, out, err) = ordo_cli(&[
        "certs",
        "generate",
        "--out",
        dir.to_str().unwrap(),
        "--nodes",
        nodes,
    ]);
    assert_eq!(code, 0, "ordo certs generate: {err}");
    assert!(out.contains("ca.pem") && out.contains("node-1-key.pem") && out.contains("client.pem"));
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).to_str().unwrap().to_string()
}

fn https(node: &TestNode) -> String {
    node.endpoint.replace("http://", "https://")
}

async fn tls_client(endpoint: &str, ca_dir: &Path) -> Result<Client, ordo_client::Error> {
    let ca = std::fs::read(ca_dir.join("ca.pem")).unwrap();
    Client::connect_tls(vec![endpoint.to_string()], &ca).await
}

/// Whether a client trusting `ca_dir`'s CA can read from the node.
async fn reads_with(endpoint: &str, ca_dir: &Path) -> bool {
    match tls_client(endpoint, ca_dir).await {
        Ok(c) => c.get_stock(1, 1).await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_port_serves_tls_and_takes_new_certificates_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, other) = (dir.path().join("certs"), dir.path().join("other"));
    generate(&certs, "1");
    generate(&other, "1");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| {
            std::fs::metadata(certs.join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("ca-key.pem"), 0o600);
        assert_eq!(mode("node-1-key.pem"), 0o600);
    }
    // The node reads its files from here; the test swaps them later.
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    for f in ["node-1.pem", "node-1-key.pem"] {
        std::fs::copy(certs.join(f), live.join(f)).unwrap();
    }
    let node = TestNode::start(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            &path(&live, "node-1.pem"),
            "--tls-key",
            &path(&live, "node-1-key.pem"),
        ],
    );
    let endpoint = https(&node);

    eprintln!("--- phase: a client trusting the CA works over TLS");
    let client = tls_client(&endpoint, &certs).await.unwrap();
    seed(&client, 10).await;
    let order = client
        .place_order(&[line(1, 1, 2)], false, None)
        .await
        .unwrap();
    assert!(committed(&order));
    assert_eq!(client.get_stock(1, 1).await.unwrap().on_hand, 8);

    eprintln!("--- phase: the CLI with --ca, and without");
    let (code, out, err) = ordo_cli(&[
        "stock",
        "1",
        "1",
        "--endpoint",
        &endpoint,
        "--ca",
        &path(&certs, "ca.pem"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains('8'), "{out}");
    let (code, _, err) = ordo_cli(&["stock", "1", "1", "--endpoint", &endpoint]);
    assert_ne!(code, 0);
    assert!(err.contains("needs the CA"), "{err}");

    eprintln!("--- phase: another CA, and plaintext, are refused");
    assert!(
        !reads_with(&endpoint, &other).await,
        "a certificate from another CA was trusted"
    );
    let plain = Client::connect(node.endpoint.clone()).await;
    let plain_read = match plain {
        Ok(c) => c
            .with_retry(ordo_client::RetryPolicy {
                attempts_max: 1,
                ..Default::default()
            })
            .get_stock(1, 1)
            .await
            .is_ok(),
        Err(_) => false,
    };
    assert!(!plain_read, "plaintext was served on the TLS port");

    eprintln!("--- phase: new certificates are taken within seconds");
    for f in ["node-1.pem", "node-1-key.pem"] {
        std::fs::copy(other.join(f), live.join(f)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reads_with(&endpoint, &other).await {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !reads_with(&endpoint, &certs).await,
        "the old certificate is still served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_talk_mutual_tls_and_refuse_a_caller_without_a_certificate_from_their_ca() {
    let certs = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    generate(certs.path(), "3");
    generate(other.path(), "1");
    let peer_tls = [
        "--peer-tls-cert".to_string(),
        path(certs.path(), "node-1.pem"),
        "--peer-tls-key".to_string(),
        path(certs.path(), "node-1-key.pem"),
        "--peer-ca".to_string(),
        path(certs.path(), "ca.pem"),
    ];
    let extra: Vec<&str> = peer_tls.iter().map(String::as_str).collect();
    let cluster = Cluster::start(3, 0, 10, &extra).await;

    eprintln!("--- phase: the cluster replicates over mutual TLS");
    let client = cluster.client().await;
    for _ in 0..5 {
        let r = client
            .place_order(&[line(1, 1, 1)], false, None)
            .await
            .unwrap();
        assert!(committed(&r));
    }
    let epoch = client.highest_epoch();
    cluster.wait_agreement(epoch, Duration::from_secs(30)).await;

    eprintln!("--- phase: callers of a peer port without the CA's certificate are refused");
    let ca = std::fs::read(certs.path().join("ca.pem")).unwrap();
    let identity = |dir: &Path| {
        Identity::from_pem(
            std::fs::read(dir.join("node-1.pem")).unwrap(),
            std::fs::read(dir.join("node-1-key.pem")).unwrap(),
        )
    };
    let peer = format!("https://{}", cluster.nodes[0].peer_addr);
    let attempts = [
        (
            "no certificate",
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca)),
        ),
        (
            "a certificate from another CA",
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca))
                .identity(identity(other.path())),
        ),
        (
            "this CA's certificate",
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca))
                .identity(identity(certs.path())),
        ),
    ];
    for (what, tls) in attempts {
        let channel = Endpoint::from_shared(peer.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await;
        let answered = match channel {
            Ok(channel) => {
                let mut request = tonic::Request::new(RaftPayload { data: vec![1; 7] });
                request.metadata_mut().insert(
                    ordo_sequencer::peers::SECRET_METADATA_KEY,
                    MetadataValue::try_from(TEST_SECRET).unwrap(),
                );
                // A served call is refused for its bad payload; a refused connection never
                // reaches the service (a transport error, UNAVAILABLE or UNKNOWN).
                match RaftClient::new(channel).vote(request).await {
                    Ok(_) => true,
                    Err(status) => status.code() == tonic::Code::InvalidArgument,
                }
            }
            Err(_) => false,
        };
        assert_eq!(answered, what == "this CA's certificate", "{what}");
    }
    let plain = Endpoint::from_shared(format!("http://{}", cluster.nodes[0].peer_addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let refused = RaftClient::new(channel)
            .vote(tonic::Request::new(RaftPayload { data: vec![] }))
            .await;
        assert!(refused.is_err(), "plaintext was served on the peer port");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_through_a_follower_reaches_the_leader_with_the_callers_token() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    generate(&certs, "1");
    let tokens = dir.path().join("tokens.toml");
    let ops = create_token(&tokens, "ops", &["admin", "catalog", "read", "write"]);
    let reader = create_token(&tokens, "reader", &["read"]);
    let flags = [
        "--tokens-file".to_string(),
        tokens.to_str().unwrap().to_string(),
        "--peer-tls-cert".to_string(),
        path(&certs, "node-1.pem"),
        "--peer-tls-key".to_string(),
        path(&certs, "node-1-key.pem"),
        "--peer-ca".to_string(),
        path(&certs, "ca.pem"),
    ];
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with_token(2, 1, 10, &extra, Some(ops.clone())).await;
    let leader = cluster.client().await.status().await.unwrap().leader_id;
    let follower = if leader == 1 { 2 } else { 1 };
    cluster.node(3).start();
    let (addr, peer) = (
        cluster.node(3).addr.clone(),
        cluster.node(3).peer_addr.clone(),
    );
    let via_follower = |token: String| {
        let endpoint = cluster.nodes[follower as usize - 1].endpoint();
        async move {
            Client::connect(endpoint)
                .await
                .unwrap()
                .with_token(&token)
                .unwrap()
                .with_cluster_secret(TEST_SECRET)
        }
    };
    let refused = via_follower(reader)
        .await
        .add_member_at(3, addr.clone(), peer.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(tonic::Code::PermissionDenied));
    let members = via_follower(ops)
        .await
        .add_member_at(3, addr, peer)
        .await
        .expect("the follower proxies the change, token and all, to the leader");
    assert!(members.members.iter().any(|m| m.node_id == 3 && m.voter));
}

#[test]
fn tls_flags_come_in_their_sets() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let base = [
        "server",
        "--node-id",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
    ];
    for (extra, says) in [
        (
            vec!["--tls-cert", "/x/cert.pem"],
            "--tls-cert and --tls-key go together",
        ),
        (
            vec!["--peer-tls-cert", "/x/cert.pem", "--peer-ca", "/x/ca.pem"],
            "--peer-tls-cert, --peer-tls-key and --peer-ca go together",
        ),
        (
            vec!["--tls-cert", "/x/cert.pem", "--tls-key", "/x/key.pem"],
            "/x/cert.pem",
        ),
    ] {
        let (code, _, err) = ordo_cli(&[&base[..], &extra[..]].concat());
        assert_eq!(code, 1, "{extra:?}");
        assert!(err.contains(says), "{extra:?}: {err}");
    }
}

/// Writes `bytes` to `to` through a temporary file and a rename, as a deploy tool would.
fn replace(to: &Path, bytes: &[u8]) {
    let tmp = to.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_ca_rotates_on_a_running_cluster_without_restarts() {
    let old = tempfile::tempdir().unwrap();
    let new = tempfile::tempdir().unwrap();
    let live = tempfile::tempdir().unwrap();
    generate(old.path(), "1");
    generate(new.path(), "1");
    let read = |dir: &Path, file: &str| std::fs::read(dir.join(file)).unwrap();
    let (cert, key, ca) = (
        live.path().join("node.pem"),
        live.path().join("node-key.pem"),
        live.path().join("ca.pem"),
    );
    replace(&cert, &read(old.path(), "node-1.pem"));
    replace(&key, &read(old.path(), "node-1-key.pem"));
    replace(&ca, &read(old.path(), "ca.pem"));
    let extra = [
        "--peer-tls-cert",
        cert.to_str().unwrap(),
        "--peer-tls-key",
        key.to_str().unwrap(),
        "--peer-ca",
        ca.to_str().unwrap(),
    ];
    let mut cluster = Cluster::start(3, 0, 1_000, &extra).await;
    let client = cluster.client().await;
    let order = |client: Client| async move {
        let r = client
            .place_order(&[line(1, 1, 1)], false, None)
            .await
            .unwrap();
        assert!(committed(&r));
        client.highest_epoch()
    };
    order(client.clone()).await;

    eprintln!(
        "--- phase: trust both CAs, then present the new CA's certificate, then trust it alone"
    );
    let both = [read(old.path(), "ca.pem"), read(new.path(), "ca.pem")].concat();
    replace(&ca, &both);
    tokio::time::sleep(Duration::from_secs(3)).await;
    replace(&key, &read(new.path(), "node-1-key.pem"));
    replace(&cert, &read(new.path(), "node-1.pem"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    replace(&ca, &read(new.path(), "ca.pem"));
    tokio::time::sleep(Duration::from_secs(3)).await;

    eprintln!("--- phase: a follower restarts: the leader's new connections to it must present the new certificate");
    let leader = cluster.leader(Duration::from_secs(30)).await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap().id;
    cluster.node(follower).kill9();
    let client = cluster.client().await;
    order(client.clone()).await;
    cluster.node(follower).start();
    let epoch = order(cluster.client().await).await;
    cluster.wait_agreement(epoch, Duration::from_secs(30)).await;
}
