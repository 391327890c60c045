//! SIGKILL the server during a stream of orders and restart it on the same data directory:
//! every acknowledged order is there exactly once, stock adds up, and the state hash equals
//! that of a fresh replay of the same log.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ordo_client::{v1, RetryPolicy};

const WRITERS: u32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_nine_during_orders_loses_nothing_acknowledged_and_applies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    seed(&client, 400).await;
    let initial_total = total_on_hand(&client).await;

    eprintln!("--- phase: {WRITERS} writers stream orders");
    let acked: Arc<Mutex<BTreeMap<String, v1::OrderResult>>> = Arc::default();
    let attempted: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        // Few retries: once the server is gone, writers stop quickly.
        let c = node.client().await.with_retry(RetryPolicy {
            attempts_max: 2,
            backoff_initial: Duration::from_millis(5),
            backoff_max: Duration::from_millis(10),
        });
        let acked = acked.clone();
        let attempted = attempted.clone();
        writers.push(tokio::spawn(async move {
            for i in 0u32.. {
                let dc = (w + i) % 4 + 1;
                let lines = if i % 4 == 0 {
                    vec![line(dc, i % 3 + 1, 1), line(dc % 4 + 1, i % 3 + 1, 1)]
                } else {
                    vec![line(dc, i % 3 + 1, 1 + (i % 2) as i64)]
                };
                let id = format!("crash-{w}-{i}");
                attempted.lock().unwrap().push((id.clone(), lines.clone()));
                match c.place_order(&lines, false, Some(id.clone())).await {
                    Ok(result) => {
                        acked.lock().unwrap().insert(id, result);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Let a good stream build up, then crash mid-flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 400 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "orders are not being acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = client.status().await.unwrap();

    eprintln!(
        "--- phase: SIGKILL at {} acknowledged orders",
        acked.lock().unwrap().len()
    );
    node.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let attempted = attempted.lock().unwrap().clone();
    assert!(acked.len() >= 400);

    eprintln!("--- phase: restart on the same data directory");
    let node = TestNode::start(dir.path(), &[]);
    let client = node.client().await;
    let hash = client.state_hash(before.applied_epoch).await.unwrap();
    assert_eq!(
        hash.state_hash, before.state_hash,
        "the hash at epoch {} changed across the crash",
        before.applied_epoch
    );

    eprintln!("--- phase: every acknowledged order is present, with the same result");
    for (id, result) in &acked {
        if committed(result) {
            let order = client.get_order(result.order_id).await.unwrap();
            assert_eq!(&order.request_id, id);
            assert_eq!(order.lines, result.lines);
        }
    }

    eprintln!("--- phase: re-send every attempted request with its id: acked ones are unchanged");
    let mut taken = 0;
    for (id, lines) in &attempted {
        let again = client
            .place_order(lines, false, Some(id.clone()))
            .await
            .unwrap();
        if let Some(original) = acked.get(id) {
            assert_eq!(&again, original, "{id} changed after the crash");
        }
        if committed(&again) {
            taken += again.lines.iter().map(|l| l.allocated).sum::<i64>();
        }
    }
    eprintln!("--- phase: stock = initial - committed, exactly");
    assert_eq!(total_on_hand(&client).await, initial_total - taken);

    eprintln!("--- phase: stop, and replay the log from scratch: same state hash");
    let mut node = node;
    node.stop();
    let data_dir = dir.path().to_str().unwrap();
    let (code, stdout, stderr) = ordo_cli(&["replay", "--data-dir", data_dir, "--json"]);
    assert_eq!(code, 0, "replay failed: {stdout} {stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["match"], true, "{report}");
    assert!(report["epoch"].as_u64().unwrap() > before.applied_epoch);
}
