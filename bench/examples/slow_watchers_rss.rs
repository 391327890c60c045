//! Issue 28's measurement: the peak RSS of a node (`ordo dev`, demo data) serving 1,000
//! watchers from epoch 1, half reading one message every 5 s and half never reading, while
//! one client places orders for 60 s. Run it against two builds to compare them:
//!
//! ```sh
//! cargo build -p ordo-bench --example slow_watchers_rss
//! target/debug/examples/slow_watchers_rss ORDO_BIN FRESH_DATA_DIR PORT [NODE ARGS...]
//! ```
//!
//! It prints the peak RSS (sampled each second, and the kernel's VmHWM), the order calls
//! answered and how the watchers' streams ended (those it was still reading when they ended;
//! the node's `ordo_watchers` gauge says how many it cut off). `WATCHERS=0` runs the same
//! orders without watchers, for the node's own growth; `RUN_S` sets the 60 s.
use std::time::{Duration, Instant};

use ordo_client::{v1, Client, Line};

mod support;
use support::DevNode;

fn rss_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (bin, data, port) = (&args[1], &args[2], &args[3]);
    // Any more arguments go to the node.
    let node = DevNode::start(bin, data, port, &args[4..]).await;
    let (pid, endpoint, client) = (node.pid(), node.endpoint.clone(), node.client.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = client.status().await.unwrap();
    eprintln!(
        "node up at epoch {}, rss {} kB",
        status.applied_epoch,
        rss_kb(pid, "VmRSS:")
    );
    // RUN_S: how long the orders and watchers run (default 60 s).
    let run = Duration::from_secs(
        std::env::var("RUN_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    // Orders in the background: more epochs for the watchers.
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut n = 0u64;
            while started.elapsed() < run {
                let orders = (0..200)
                    .map(|i| v1::PlaceOrderRequest {
                        request_id: format!("rss-{n}-{i}"),
                        lines: vec![Line {
                            dc_id: 1 + (i % 20) as u32,
                            sku: 1 + (i % 50) as u32,
                            qty: 1,
                        }
                        .into()],
                        mode: v1::OrderMode::Partial as i32,
                        ..Default::default()
                    })
                    .collect();
                let _ = client.place_orders(orders).await;
                n += 1;
            }
            n
        })
    };
    let mut watchers = Vec::new();
    // WATCHERS=0 measures the same load without them.
    let watchers_n: u32 = std::env::var("WATCHERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    for i in 0..watchers_n {
        let endpoint = endpoint.clone();
        watchers.push(tokio::spawn(async move {
            let client = Client::connect(endpoint).await.unwrap();
            let mut stream = match client
                .watch(v1::WatchRequest {
                    start: Some(v1::watch_request::Start::FromEpoch(1)),
                    ..Default::default()
                })
                .await
            {
                Ok(s) => s,
                Err(e) => return format!("refused {:?}", e.code()),
            };
            // Slow: one message every 5 s (stalled ones never read).
            loop {
                if i % 2 == 1 {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                match stream.message().await {
                    Ok(Some(_)) => tokio::time::sleep(Duration::from_secs(5)).await,
                    Ok(None) => return "ended".into(),
                    Err(s) => return format!("{:?}", s.code()),
                }
            }
        }));
    }
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < run {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = rss_kb(pid, "VmRSS:");
        peak = peak.max(rss);
        if started.elapsed().as_secs().is_multiple_of(10) {
            eprintln!("{:>3} s: rss {} kB", started.elapsed().as_secs(), rss);
        }
    }
    let calls = writer.await.unwrap();
    let hwm = rss_kb(pid, "VmHWM:");
    let mut ended = std::collections::BTreeMap::new();
    for w in watchers {
        w.abort();
        let _ = w.await.map(|r| *ended.entry(r).or_insert(0) += 1);
    }
    let status = client.status().await.map(|s| s.applied_epoch).unwrap_or(0);
    println!("bin {bin}: peak rss {} MB (VmHWM {} MB), order calls {calls}, epoch {status}, watchers ended {ended:?}", peak / 1024, hwm / 1024);
    drop(node);
}
