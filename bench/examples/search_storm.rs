//! Issue 28's second measurement: order latency on a node (`ordo dev`, 1,200 dark stores,
//! 10,000 SKUs) while 8 clients search near Berlin (100 stores, 100 items a page, in stock
//! only) and one client changes a price every 5 ms. One client places single-line orders
//! back to back throughout. First 15 s without the searchers (the price changes and orders
//! only), then 30 s with them. Run it against two builds to compare them:
//!
//! ```sh
//! cargo build --release -p ordo-bench --example search_storm
//! target/release/examples/search_storm ORDO_BIN FRESH_DATA_DIR PORT
//! ```
//!
//! It prints, for each phase, the orders placed and their p50/p99/max latency, the searches
//! and price changes answered, and the node's CPU per order.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ordo_client::{v1, Client, Line};

mod support;
use support::DevNode;

/// The node's user + system CPU time so far, in clock ticks (100 a second).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

const SEARCHERS: usize = 8;
const CALM: Duration = Duration::from_secs(15);
const STORM: Duration = Duration::from_secs(30);
const BERLIN: (f64, f64) = (52.52, 13.405);
/// Price changes waiting for their answers at once, at most.
const PRICES_IN_FLIGHT_MAX: usize = 256;
/// The wait after the demo data is loaded, before the first phase.
const SETTLE: Duration = Duration::from_secs(20);

/// Places single-line orders back to back for `run`, recording each one's latency.
async fn orders(client: &Client, run: Duration, phase: &str) -> Histogram<u64> {
    let mut latency = Histogram::<u64>::new(3).expect("histogram");
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < run {
        let request = v1::PlaceOrderRequest {
            request_id: format!("storm-{phase}-{n}"),
            lines: vec![Line {
                // Dark stores 13 to 112 are Berlin's; SKUs every store stocks some of.
                dc_id: 13 + (n % 100) as u32,
                sku: 1 + (n % 250) as u32,
                qty: 1,
            }
            .into()],
            mode: v1::OrderMode::Partial as i32,
            ..Default::default()
        };
        let at = Instant::now();
        if client.place_order_request(request).await.is_ok() {
            latency
                .record(at.elapsed().as_micros() as u64)
                .expect("record");
        }
        n += 1;
    }
    latency
}

fn search_request() -> v1::SearchItemsRequest {
    v1::SearchItemsRequest {
        query: "c".into(),
        near: true,
        lat: BERLIN.0,
        lon: BERLIN.1,
        radius_m: 10_000,
        limit: 100,
        in_stock_only: true,
        ..Default::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (bin, data, port) = (&args[1], &args[2], &args[3]);
    // 250 SKUs a dark store, as the section in BENCHMARKS.md measured.
    let demo = [
        "--demo-dcs",
        "1200",
        "--demo-skus",
        "10000",
        "--demo-skus-per-store",
        "250",
    ]
    .map(String::from);
    let node = DevNode::start(bin, data, port, &demo).await;
    let (pid, endpoint, client) = (node.pid(), node.endpoint.clone(), node.client.clone());
    // Loaded once a search finds its page.
    loop {
        match client.search_items(search_request()).await {
            Ok(r) if r.items.len() == 100 => break,
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    // sled writes the demo data behind the epochs for a while: let it settle first.
    tokio::time::sleep(SETTLE).await;
    eprintln!("node up, demo data loaded");
    let stop = Arc::new(AtomicBool::new(false));
    let prices = Arc::new(AtomicU64::new(0));
    let pricer = {
        let (client, stop, prices) = (client.clone(), stop.clone(), prices.clone());
        tokio::spawn(async move {
            // One change every 5 ms whatever each takes: each is a task of its own.
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let in_flight = Arc::new(tokio::sync::Semaphore::new(PRICES_IN_FLIGHT_MAX));
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let sku = 1 + (n % 10_000) as u32;
                let permit = in_flight.clone().acquire_owned().await.expect("semaphore");
                let (client, prices) = (client.clone(), prices.clone());
                tokio::spawn(async move {
                    if client.set_price(sku, 100 + n % 900, "").await.is_ok() {
                        prices.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(permit);
                });
            }
        })
    };
    let mut report = Vec::new();
    for (phase, run, searchers) in [("calm", CALM, 0), ("storm", STORM, SEARCHERS)] {
        let searching = Arc::new(AtomicBool::new(true));
        let searches = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..searchers {
            let (endpoint, searching, searches) =
                (endpoint.clone(), searching.clone(), searches.clone());
            tasks.push(tokio::spawn(async move {
                let client = Client::connect(endpoint).await.expect("connect");
                while searching.load(Ordering::Relaxed) {
                    if client.search_items(search_request()).await.is_ok() {
                        searches.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        let (cpu, prices_before) = (cpu_ticks(pid), prices.load(Ordering::Relaxed));
        let latency = orders(&client, run, phase).await;
        let cpu_ms = (cpu_ticks(pid) - cpu) * 10;
        searching.store(false, Ordering::Relaxed);
        for task in tasks {
            let _ = task.await;
        }
        report.push(format!(
            "{phase}: {} orders, p50 {} us, p99 {} us, max {} us; {} searches, {} price changes; \
             node CPU {:.2} ms an order",
            latency.len(),
            latency.value_at_quantile(0.5),
            latency.value_at_quantile(0.99),
            latency.max(),
            searches.load(Ordering::Relaxed),
            prices.load(Ordering::Relaxed) - prices_before,
            cpu_ms as f64 / latency.len().max(1) as f64,
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = pricer.await;
    println!("bin {bin}");
    for line in report {
        println!("  {line}");
    }
    drop(node);
}
