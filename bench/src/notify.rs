//! `ordo-bench notify`: a hot item with many subscribers changes price while orders run.
//!
//! One Ordo node (release binary) gets a small catalogue and `--subscribers` PRICE_DROP
//! subscriptions to the hot SKU (loaded through the API, as users would). `--workers`
//! notification workers follow WatchNotifications, one shard each; `--clients` closed-loop
//! writers place one-line orders on the other SKUs the whole time. After a baseline window the
//! hot SKU's price drops once. The run measures how long the fan-out takes (commit → first,
//! median, p99 and last notification received), the notification rate, and the orders'
//! latency before, during and after the fan-out (the epochs must not notice it; the window
//! after, as long as the one before, shows the run's noise), with the server's CPU; and it
//! checks that every subscriber got exactly one notification for that change.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use ordo_client::{v1, Client, Line, Subscription};
use serde_json::json;

use crate::servers::Server;
use crate::targets::Target;

/// The hot SKU every subscriber follows; orders use the others.
const HOT_SKU: u32 = 1;
const ORDER_SKUS: u32 = 20;
const DCS: u32 = 4;

#[derive(clap::Args, Clone)]
pub struct NotifyArgs {
    /// Subscribers of the hot SKU.
    #[arg(long, default_value_t = 1_000_000)]
    pub subscribers: u32,
    /// Notification workers (shards).
    #[arg(long, default_value_t = 4)]
    pub workers: u32,
    /// Closed-loop order writers.
    #[arg(long, default_value_t = 16)]
    pub clients: u32,
    /// Seconds of orders before the price change (the baseline), and again after the fan-out
    /// (the control).
    #[arg(long, default_value_t = 10)]
    pub baseline_s: u64,
    /// Seconds to wait for every notification after the change.
    #[arg(long, default_value_t = 300)]
    pub fan_out_timeout_s: u64,
    /// How the notification workers' threads are scheduled: `idle` (Linux SCHED_IDLE) or
    /// `normal`. They stand in for workers on other machines; on a shared machine `idle` keeps
    /// their decoding out of the orders' latency, so what is measured is the node's.
    #[arg(long, value_enum, default_value_t = ConsumerSched::Idle)]
    pub consumer_sched: ConsumerSched,
    /// Seconds to wait, after loading, for the node to settle (its CPU under a tenth of a core
    /// for two seconds) before the baseline starts.
    #[arg(long, default_value_t = 120)]
    pub settle_timeout_s: u64,
    /// Concurrent subscribes while loading.
    #[arg(long, default_value_t = 256)]
    pub load_concurrency: u32,
    /// The `ordo` binary.
    #[arg(long, default_value = "target/release/ordo")]
    pub ordo_bin: std::path::PathBuf,
    /// Where to write results.json.
    #[arg(long, default_value = "bench-results/notify")]
    pub out: std::path::PathBuf,
}

fn user(i: u32) -> String {
    format!("u{i:07}")
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerSched {
    Idle,
    Normal,
}

/// A runtime inside the harness's own: dropped from async code, it must not wait for its
/// threads (tokio panics if it would), so it is shut down in the background, also when the run
/// ends early with an error.
struct Inner(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for Inner {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("a runtime until dropped")
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The notification workers' runtime, its threads scheduled as `sched` says.
fn consumer_runtime(sched: ConsumerSched) -> anyhow::Result<Inner> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("notify-workers")
        .on_thread_start(move || {
            if sched == ConsumerSched::Idle {
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: sched_setscheduler reads `param`, which outlives the call; pid 0
                // names the calling thread.
                if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
                    eprintln!("could not put the notification workers under SCHED_IDLE");
                }
            }
        })
        .enable_all()
        .build()
        .context("starting the notification workers' runtime")?;
    Ok(Inner(Some(runtime)))
}

/// Waits until the node's CPU stays under a tenth of a core for two seconds (sled writes back
/// what the load left), at most `timeout`; returns the seconds waited.
async fn settle(server: &Server, timeout: Duration) -> f64 {
    let started = Instant::now();
    let mut quiet = 0;
    let mut cpu = server.cpu_seconds();
    while quiet < 4 && started.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = server.cpu_seconds();
        quiet = if now - cpu < 0.05 { quiet + 1 } else { 0 };
        cpu = now;
    }
    started.elapsed().as_secs_f64()
}

pub async fn run(args: NotifyArgs) -> anyhow::Result<bool> {
    let server = Server::start(Target::Ordo1, &args.ordo_bin, 3, &[])
        .await
        .context("starting ordo-1")?;
    let url = server.endpoints.urls[0].clone();
    let client = Client::connect(url.clone()).await?;
    for dc in 1..=DCS {
        client
            .upsert_dc(v1::Dc {
                dc_id: dc,
                name: format!("DC {dc}"),
                lat: 12.9 + f64::from(dc) / 100.0,
                lon: 77.6,
                region: Some(dc % 3),
                active: true,
            })
            .await?;
    }
    for sku in 1..=ORDER_SKUS {
        client
            .upsert_item(v1::Item {
                sku,
                name: format!("item {sku}"),
                price_cents: 1_000,
            })
            .await?;
        for dc in 1..=DCS {
            client.restock(dc, sku, 1_000_000_000, None).await?;
        }
    }

    // Phase 1: the subscribers, through the API.
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut loaders = Vec::new();
    for _ in 0..args.load_concurrency {
        let next = next.clone();
        let c = Client::connect(url.clone()).await?;
        let n = u64::from(args.subscribers);
        loaders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                c.subscribe(Subscription::price_drop(&user(i as u32), HOT_SKU))
                    .await?;
            }
        }));
    }
    for l in loaders {
        l.await??;
    }
    let load_s = started.elapsed().as_secs_f64();
    eprintln!(
        "{} subscriptions in {load_s:.1} s ({:.0}/s)",
        args.subscribers,
        f64::from(args.subscribers) / load_s
    );

    let settle_s = settle(&server, Duration::from_secs(args.settle_timeout_s)).await;
    eprintln!("the node settled in {settle_s:.1} s");

    // Phase 2: workers following the notifications from now, writers placing orders.
    let from = client.status().await?.applied_epoch + 1;
    let seen: Arc<Vec<AtomicU8>> = Arc::new(
        (0..args.subscribers)
            .map(|_| AtomicU8::new(0))
            .collect::<Vec<_>>(),
    );
    let change: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let arrivals = Arc::new(Mutex::new(histogram()));
    let received = Arc::new(AtomicU64::new(0));
    let first_last = Arc::new(Mutex::new((None::<Instant>, None::<Instant>)));
    let stop = Arc::new(AtomicBool::new(false));
    let consumers = consumer_runtime(args.consumer_sched)?;
    let mut workers = Vec::new();
    for shard in 0..args.workers {
        let url = url.clone();
        let (seen, change, arrivals, received, first_last, stop) = (
            seen.clone(),
            change.clone(),
            arrivals.clone(),
            received.clone(),
            first_last.clone(),
            stop.clone(),
        );
        let shards = args.workers;
        // Connected from the workers' runtime, so the connection's tasks run there too.
        workers.push(consumers.spawn(async move {
            let c = Client::connect(url).await?;
            let request = v1::WatchNotificationsRequest {
                start: Some(v1::watch_notifications_request::Start::FromEpoch(from)),
                shard,
                shards,
                progress_interval_ms: 200,
            };
            let mut stream = c.watch_notifications(request).await?;
            // Kept per worker and merged at the end: the harness must cost little per
            // notification, or it competes with the server it measures.
            let mut local = histogram();
            let mut local_first_last = (None::<Instant>, None::<Instant>);
            while !stop.load(Ordering::Relaxed) {
                let Ok(message) =
                    tokio::time::timeout(Duration::from_millis(500), stream.message()).await
                else {
                    continue;
                };
                let Some(message) = message? else { break };
                let now = Instant::now();
                // The hot SKU's only price change: set before the request goes out, so it is
                // there before any notification of it can be.
                let Some(at) = *change.lock().expect("change") else {
                    continue;
                };
                let mut counted = 0u64;
                for n in message.notifications {
                    if n.sku != HOT_SKU {
                        continue;
                    }
                    let Some(i) = n
                        .user
                        .strip_prefix('u')
                        .and_then(|u| u.parse::<usize>().ok())
                    else {
                        continue;
                    };
                    if let Some(slot) = seen.get(i) {
                        slot.fetch_add(1, Ordering::Relaxed);
                    }
                    counted += 1;
                }
                if counted > 0 {
                    let us = now.saturating_duration_since(at).as_micros() as u64;
                    let _ = local.record_n(us.max(1), counted);
                    local_first_last.0.get_or_insert(now);
                    local_first_last.1 = Some(now);
                    received.fetch_add(counted, Ordering::Relaxed);
                }
            }
            let _ = arrivals.lock().expect("arrivals").add(&local);
            let mut fl = first_last.lock().expect("first/last");
            if let Some(f) = local_first_last.0 {
                fl.0 = Some(fl.0.map_or(f, |g: Instant| g.min(f)));
            }
            if let Some(l) = local_first_last.1 {
                fl.1 = Some(fl.1.map_or(l, |g: Instant| g.max(l)));
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    // Order latencies: before the price change, during the fan-out, (a gap,) after it.
    let windows: Arc<Mutex<[Histogram<u64>; 4]>> = Arc::new(Mutex::new([
        histogram(),
        histogram(),
        histogram(),
        histogram(),
    ]));
    let window = Arc::new(AtomicU8::new(0));
    let orders = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..args.clients {
        let c = Client::connect(url.clone()).await?;
        let (windows, window, orders, stop) = (
            windows.clone(),
            window.clone(),
            orders.clone(),
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut n = u64::from(w);
            while !stop.load(Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let line = Line {
                    dc_id: (n >> 33) as u32 % DCS + 1,
                    sku: (n >> 40) as u32 % (ORDER_SKUS - 1) + 2,
                    qty: 1,
                };
                let t = Instant::now();
                c.place_order(&[line], false, None).await?;
                let us = t.elapsed().as_micros() as u64;
                let slot = window.load(Ordering::Relaxed) as usize;
                if slot != 2 {
                    let _ = windows.lock().expect("windows")[slot].record(us.max(1));
                }
                orders.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }

    let cpu0 = server.cpu_seconds();
    let orders0 = orders.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.baseline_s)).await;
    let cpu1 = server.cpu_seconds();
    let orders1 = orders.load(Ordering::Relaxed);

    // Phase 3: the price drops once; the fan-out runs while the orders go on.
    window.store(1, Ordering::Relaxed);
    let t_change = Instant::now();
    *change.lock().expect("change") = Some(t_change);
    client.set_price(HOT_SKU, 900, "INR").await?;
    let commit_ms = t_change.elapsed().as_secs_f64() * 1000.0;
    let deadline = Instant::now() + Duration::from_secs(args.fan_out_timeout_s);
    while received.load(Ordering::Relaxed) < u64::from(args.subscribers)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fan_out_s = t_change.elapsed().as_secs_f64();
    window.store(2, Ordering::Relaxed);
    let cpu2 = server.cpu_seconds();
    let orders2 = orders.load(Ordering::Relaxed);
    // A little longer, so duplicates would show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The control: as long as the baseline again, with the fan-out over. How far the two
    // windows without a fan-out differ is the run's noise.
    let cpu3 = server.cpu_seconds();
    let orders3 = orders.load(Ordering::Relaxed);
    window.store(3, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.baseline_s)).await;
    window.store(2, Ordering::Relaxed);
    let cpu4 = server.cpu_seconds();
    let orders4 = orders.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    for w in workers {
        w.await??;
    }
    drop(consumers);

    let missing = seen
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) == 0)
        .count();
    let duplicated = seen
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) > 1)
        .count();
    let arrivals = arrivals.lock().expect("arrivals").clone();
    let (first, last) = *first_last.lock().expect("first/last");
    let [before, during, _, after] = windows.lock().expect("windows").clone();
    let base_s = args.baseline_s as f64;
    let report = json!({
        "subscribers": args.subscribers,
        "workers": args.workers,
        "clients": args.clients,
        "consumer_sched": format!("{:?}", args.consumer_sched).to_lowercase(),
        "settle_s": settle_s,
        "load_s": load_s,
        "subscribes_per_s": f64::from(args.subscribers) / load_s,
        "price_change_commit_ms": commit_ms,
        "fan_out_s": fan_out_s,
        "notifications_received": received.load(Ordering::Relaxed),
        "notifications_per_s": received.load(Ordering::Relaxed) as f64 / fan_out_s,
        "first_notification_ms": first.map(|f| (f - t_change).as_secs_f64() * 1000.0),
        "last_notification_ms": last.map(|l| (l - t_change).as_secs_f64() * 1000.0),
        "notification_latency_ms": {"p50": ms(&arrivals, 0.5), "p99": ms(&arrivals, 0.99)},
        "missing": missing,
        "duplicated": duplicated,
        "orders_before": {
            "per_s": (orders1 - orders0) as f64 / base_s,
            "p50_ms": ms(&before, 0.5), "p99_ms": ms(&before, 0.99),
            "server_cpu_ms_per_order": (cpu1 - cpu0) * 1000.0 / (orders1 - orders0).max(1) as f64,
        },
        "orders_during_fan_out": {
            "per_s": (orders2 - orders1) as f64 / fan_out_s,
            "p50_ms": ms(&during, 0.5), "p99_ms": ms(&during, 0.99),
            "server_cpu_s": cpu2 - cpu1,
        },
        "orders_after": {
            "per_s": (orders4 - orders3) as f64 / base_s,
            "p50_ms": ms(&after, 0.5), "p99_ms": ms(&after, 0.99),
            "server_cpu_ms_per_order": (cpu4 - cpu3) * 1000.0 / (orders4 - orders3).max(1) as f64,
        },
    });
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    let ok = missing == 0 && duplicated == 0;
    if !ok {
        eprintln!("FAILED: {missing} subscribers got no notification, {duplicated} got several");
    }
    Ok(ok)
}
