//! Tokens and scopes on the client port (`--tokens-file`), as a user meets them: tokens made
//! with `ordo token create`, calls from the Rust client and the CLI, a file changed while the
//! node runs, and a node on a public address that refuses to start without tokens.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ordo_client::{v1, Client};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn client_with(node: &TestNode, token: &str) -> Client {
    node.client().await.with_token(token).unwrap()
}

fn code_of<T: std::fmt::Debug>(r: Result<T, ordo_client::Error>) -> Code {
    r.unwrap_err().code().expect("a status from the node")
}

/// Polls `f` until it holds, for at most 10 s (the node looks at its file every second).
async fn eventually<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_who_may_call_what_and_a_changed_file_takes_effect() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let ops = create_token(&file, "ops", &["catalog", "admin"]);
    let reader = create_token(&file, "shop-read", &["read"]);
    let writer = create_token(&file, "orders", &["write", "read"]);
    let text = std::fs::read_to_string(&file).unwrap();
    for token in [&ops, &reader, &writer] {
        assert!(!text.contains(&token[5..]), "the file holds a token");
    }
    let node = TestNode::start(
        &dir.path().join("data"),
        &["--tokens-file", file.to_str().unwrap()],
    );

    eprintln!("--- phase: health is open, everything else needs a token");
    let channel = tonic::transport::Endpoint::from_shared(node.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "ordo.v1.Ordo".into(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");
    let anonymous = node.client().await;
    assert_eq!(
        code_of(anonymous.get_stock(1, 1).await),
        Code::Unauthenticated
    );
    assert_eq!(code_of(anonymous.status().await), Code::Unauthenticated);
    let forged = client_with(&node, "ordo_0123456789abcdef").await;
    let refused = forged.get_stock(1, 1).await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unauthenticated));

    eprintln!("--- phase: each scope allows its calls only");
    let ops = client_with(&node, &ops).await;
    seed(&ops, 10).await;
    assert!(ops.status().await.is_ok());
    assert_eq!(code_of(ops.get_stock(1, 1).await), Code::PermissionDenied);
    let reader = client_with(&node, &reader).await;
    assert_eq!(reader.get_stock(1, 1).await.unwrap().on_hand, 10);
    let denied = reader
        .place_order(&[line(1, 1, 2)], false, None)
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Some(Code::PermissionDenied));
    assert!(denied.not_applied());
    assert!(denied.to_string().contains("write"), "{denied}");
    let mut stream = reader.raw();
    let streamed = stream
        .order_stream(tokio_stream::iter(Vec::<v1::PlaceOrderRequest>::new()))
        .await;
    assert_eq!(streamed.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(code_of(reader.status().await), Code::PermissionDenied);
    assert_eq!(
        code_of(reader.restock(1, 1, 5, None).await),
        Code::PermissionDenied
    );
    let writer_client = client_with(&node, &writer).await;
    let order = writer_client
        .place_order(&[line(1, 1, 2)], false, None)
        .await
        .unwrap();
    assert!(committed(&order));
    assert_eq!(
        reader.get_stock(1, 1).await.unwrap().on_hand,
        8,
        "only the writer's order was applied"
    );

    eprintln!("--- phase: the CLI sends --token and $ORDO_TOKEN");
    let endpoint = node.endpoint.as_str();
    let (code, _, err) = ordo_cli(&["stock", "1", "1", "--endpoint", endpoint]);
    assert_ne!(code, 0);
    assert!(err.contains("token"), "{err}");
    let (code, out, err) = ordo_cli(&[
        "stock",
        "1",
        "1",
        "--endpoint",
        endpoint,
        "--token",
        &writer,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains('8'), "{out}");
    let env = Command::new(BIN)
        .args(["order", "--line", "1:1:1", "--endpoint", endpoint])
        .env("ORDO_TOKEN", &writer)
        .output()
        .unwrap();
    assert!(
        env.status.success(),
        "{}",
        String::from_utf8_lossy(&env.stderr)
    );

    eprintln!("--- phase: a token added later works, a token removed stops working");
    let late = create_token(&file, "late", &["read"]);
    let late = client_with(&node, &late).await;
    eventually("the added token is accepted", || async {
        late.get_stock(1, 1).await.is_ok()
    })
    .await;
    let text = std::fs::read_to_string(&file).unwrap();
    let without_reader: String = text
        .split("\n[[token]]")
        .filter(|entry| !entry.contains("\"shop-read\""))
        .collect::<Vec<_>>()
        .join("\n[[token]]");
    std::fs::write(&file, without_reader).unwrap();
    eventually("the removed token is refused", || async {
        reader.get_stock(1, 1).await.err().and_then(|e| e.code()) == Some(Code::Unauthenticated)
    })
    .await;
    assert!(writer_client.get_stock(1, 1).await.is_ok());

    eprintln!("--- phase: a broken file keeps the tokens in force");
    std::fs::write(&file, "[[token]]\nname = 1\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(writer_client.get_stock(1, 1).await.is_ok());
    assert_eq!(code_of(reader.get_stock(1, 1).await), Code::Unauthenticated);
}

#[test]
fn a_node_on_a_public_address_needs_tokens_or_insecure_no_auth() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let base = [
        "server",
        "--node-id",
        "1",
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        data,
    ];
    let (code, _, err) = ordo_cli(&base);
    assert_eq!(code, 1);
    assert!(
        err.contains("refusing to serve clients on 0.0.0.0:0 without authentication"),
        "{err}"
    );
    assert!(
        err.contains("--tokens-file") && err.contains("--insecure-no-auth"),
        "{err}"
    );

    let (code, _, err) =
        ordo_cli(&[&base[..], &["--tokens-file", "/nonexistent/tokens.toml"]].concat());
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/tokens.toml"), "{err}");

    let mut child = Command::new(BIN)
        .args(base)
        .arg("--insecure-no-auth")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.is_ok(),
        "the node did not start with --insecure-no-auth"
    );
}
