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

/// Price drops in one run, at most.
const ROUNDS_MAX: u32 = 100;
/// Order-latency windows not recorded (between a fan-out and its control).
const GAP: u8 = u8::MAX;

/// The hot SKU's price after round `r`'s drop (it starts at 1,000).
fn round_price(r: u32) -> i64 {
    900 - 5 * i64::from(r)
}

/// The round whose drop set the price to `cents`, if one of the first `rounds` did.
fn round_of(cents: i64, rounds: u32) -> Option<u32> {
    let steps = 900i64.checked_sub(cents)?;
    let r = u32::try_from(steps / 5).ok()?;
    (steps % 5 == 0 && r < rounds).then_some(r)
}

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
    /// Price drops, one after another: each is followed by its fan-out and a control window
    /// (at most 100). Several rounds in one run compare fan-out and quiet windows on the same
    /// loaded node.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
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
    /// The node's fan-out rate (`ordo server --notify-rate`: subscriptions read per second by
    /// all notification streams together; 0: unpaced). Unset: the server's default.
    #[arg(long)]
    pub notify_rate: Option<u64>,
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
    let flags: Vec<String> = match args.notify_rate {
        Some(rate) => vec!["--notify-rate".into(), rate.to_string()],
        None => Vec::new(),
    };
    let server = Server::start_ordo_1(&args.ordo_bin, 3, &flags)
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
    let rounds = args.rounds.clamp(1, ROUNDS_MAX);
    let seen: Arc<Vec<AtomicU8>> = Arc::new(
        (0..args.subscribers)
            .map(|_| AtomicU8::new(0))
            .collect::<Vec<_>>(),
    );
    // When each round's price change was sent (set before the request goes out, so it is
    // there before any notification of it can be).
    let changes: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let arrivals = Arc::new(Mutex::new(histogram()));
    let received = Arc::new(AtomicU64::new(0));
    // (first, last) notification of each round.
    let first_last = Arc::new(Mutex::new(vec![
        (None::<Instant>, None::<Instant>);
        rounds as usize
    ]));
    let stop = Arc::new(AtomicBool::new(false));
    let consumers = consumer_runtime(args.consumer_sched)?;
    let mut workers = Vec::new();
    for shard in 0..args.workers {
        let url = url.clone();
        let (seen, changes, arrivals, received, first_last, stop) = (
            seen.clone(),
            changes.clone(),
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
            let mut local_first_last = vec![(None::<Instant>, None::<Instant>); rounds as usize];
            while !stop.load(Ordering::Relaxed) {
                let Ok(message) =
                    tokio::time::timeout(Duration::from_millis(500), stream.message()).await
                else {
                    continue;
                };
                let Some(message) = message? else { break };
                let now = Instant::now();
                let mut counted = 0u64;
                let mut round = None;
                for n in message.notifications {
                    if n.sku != HOT_SKU {
                        continue;
                    }
                    let Some(r) = round_of(n.after_cents, rounds) else {
                        continue;
                    };
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
                    round = Some(r);
                }
                let Some(r) = round else { continue };
                let Some(at) = changes.lock().expect("changes").get(r as usize).copied() else {
                    continue;
                };
                let us = now.saturating_duration_since(at).as_micros() as u64;
                let _ = local.record_n(us.max(1), counted);
                let fl = &mut local_first_last[r as usize];
                fl.0.get_or_insert(now);
                fl.1 = Some(now);
                received.fetch_add(counted, Ordering::Relaxed);
            }
            let _ = arrivals.lock().expect("arrivals").add(&local);
            let mut all = first_last.lock().expect("first/last");
            for (fl, mine) in all.iter_mut().zip(local_first_last) {
                if let Some(f) = mine.0 {
                    fl.0 = Some(fl.0.map_or(f, |g: Instant| g.min(f)));
                }
                if let Some(l) = mine.1 {
                    fl.1 = Some(fl.1.map_or(l, |g: Instant| g.max(l)));
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    // Order latencies per window: 0 before the first change; then, for round r, 2r + 1 during
    // its fan-out and 2r + 2 the control after it. `GAP`: not recorded.
    let windows: Arc<Mutex<Vec<Histogram<u64>>>> = Arc::new(Mutex::new(
        (0..1 + 2 * rounds).map(|_| histogram()).collect(),
    ));
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
                let slot = window.load(Ordering::Relaxed);
                if slot != GAP {
                    if let Some(h) = windows.lock().expect("windows").get_mut(slot as usize) {
                        let _ = h.record(us.max(1));
                    }
                }
                orders.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }

    // A window of orders: (seconds, orders, server CPU seconds) from `at`.
    let mark = || {
        (
            Instant::now(),
            orders.load(Ordering::Relaxed),
            server.cpu_seconds(),
        )
    };
    let span = |from: (Instant, u64, f64)| {
        let to = mark();
        ((to.0 - from.0).as_secs_f64(), to.1 - from.1, to.2 - from.2)
    };
    let start = mark();
    tokio::time::sleep(Duration::from_secs(args.baseline_s)).await;
    let before_span = span(start);

    // Phase 3, each round: the price drops once; the fan-out runs while the orders go on; then
    // a control window as long as the baseline with the fan-out over. How far the windows
    // without a fan-out differ from each other is the run's noise.
    let mut round_spans = Vec::new();
    for r in 0..rounds {
        let expected = u64::from(args.subscribers) * u64::from(r + 1);
        window.store(1 + 2 * r as u8, Ordering::Relaxed);
        let during_start = mark();
        changes.lock().expect("changes").push(during_start.0);
        client.set_price(HOT_SKU, round_price(r), "INR").await?;
        let commit_ms = during_start.0.elapsed().as_secs_f64() * 1000.0;
        let deadline = Instant::now() + Duration::from_secs(args.fan_out_timeout_s);
        while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let during = span(during_start);
        window.store(GAP, Ordering::Relaxed);
        // A little longer, so duplicates would show.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after_start = mark();
        window.store(2 + 2 * r as u8, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(args.baseline_s)).await;
        window.store(GAP, Ordering::Relaxed);
        let after = span(after_start);
        round_spans.push((commit_ms, during, after));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    for w in workers {
        w.await??;
    }
    drop(consumers);

    let rounds_u8 = rounds as u8;
    let missing = seen
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) < rounds_u8)
        .count();
    let duplicated = seen
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) > rounds_u8)
        .count();
    let arrivals = arrivals.lock().expect("arrivals").clone();
    let first_last = first_last.lock().expect("first/last").clone();
    let windows = windows.lock().expect("windows").clone();
    let changes = changes.lock().expect("changes").clone();
    let orders_json = |h: &Histogram<u64>, (secs, n, cpu): (f64, u64, f64)| {
        json!({
            "per_s": n as f64 / secs.max(1e-9),
            "p50_ms": ms(h, 0.5), "p99_ms": ms(h, 0.99),
            "server_cpu_ms_per_order": cpu * 1000.0 / n.max(1) as f64,
            "server_cpu_s": cpu,
        })
    };
    let mut rounds_json = Vec::new();
    // Every window of a kind merged: the figures the first round's fields give for one.
    let (mut during_all, mut after_all) = (histogram(), histogram());
    let (mut during_sum, mut after_sum) = ((0.0, 0, 0.0), (0.0, 0, 0.0));
    let add = |sum: &mut (f64, u64, f64), s: (f64, u64, f64)| {
        sum.0 += s.0;
        sum.1 += s.1;
        sum.2 += s.2;
    };
    for (r, (commit_ms, during, after)) in round_spans.iter().enumerate() {
        let (d, a) = (&windows[1 + 2 * r], &windows[2 + 2 * r]);
        let _ = during_all.add(d);
        let _ = after_all.add(a);
        add(&mut during_sum, *during);
        add(&mut after_sum, *after);
        let (first, last) = first_last[r];
        let at = changes[r];
        rounds_json.push(json!({
            "price_cents": round_price(r as u32),
            "price_change_commit_ms": commit_ms,
            "fan_out_s": during.0,
            "notifications_per_s": f64::from(args.subscribers) / during.0,
            "first_notification_ms": first.map(|f| (f - at).as_secs_f64() * 1000.0),
            "last_notification_ms": last.map(|l| (l - at).as_secs_f64() * 1000.0),
            "orders_during_fan_out": orders_json(d, *during),
            "orders_after": orders_json(a, *after),
        }));
    }
    let first_round = &rounds_json[0];
    let report = json!({
        "subscribers": args.subscribers,
        "workers": args.workers,
        "clients": args.clients,
        "rounds": rounds,
        "notify_rate": args.notify_rate,
        "consumer_sched": format!("{:?}", args.consumer_sched).to_lowercase(),
        "settle_s": settle_s,
        "load_s": load_s,
        "subscribes_per_s": f64::from(args.subscribers) / load_s,
        "price_change_commit_ms": first_round["price_change_commit_ms"],
        "fan_out_s": first_round["fan_out_s"],
        "notifications_received": received.load(Ordering::Relaxed),
        "notifications_per_s": first_round["notifications_per_s"],
        "first_notification_ms": first_round["first_notification_ms"],
        "last_notification_ms": first_round["last_notification_ms"],
        "notification_latency_ms": {"p50": ms(&arrivals, 0.5), "p99": ms(&arrivals, 0.99)},
        "missing": missing,
        "duplicated": duplicated,
        "orders_before": orders_json(&windows[0], before_span),
        "orders_during_fan_out": orders_json(&during_all, during_sum),
        "orders_after": orders_json(&after_all, after_sum),
        "per_round": rounds_json,
    });
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    let ok = missing == 0 && duplicated == 0;
    if !ok {
        eprintln!(
            "FAILED: {missing} subscribers got fewer than {rounds} notifications, {duplicated} more"
        );
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_is_told_by_its_price() {
        for r in 0..ROUNDS_MAX {
            assert_eq!(round_of(round_price(r), ROUNDS_MAX), Some(r));
            assert_eq!(round_of(round_price(r), r), None, "round {r} of {r} rounds");
        }
        for cents in [1_000, 901, 899, 0, -5] {
            assert_eq!(round_of(cents, ROUNDS_MAX), None, "{cents}");
        }
    }
}
