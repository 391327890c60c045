//! The change-feed workloads (issue 12). feed: clients place orders in a closed loop (1-3
//! lines of one unit at uniform (dc, sku) over the order workloads' dataset) while
//! `--watchers` watchers follow every change; the run measures the orders (throughput,
//! latency, server CPU per order) and what the watchers got (changes per second each and in
//! all, lag from the target's commit stamp to receipt, how long they took to catch up after
//! the orders stopped). price-latency: the same orders, and one writer changing a price every
//! `--price-interval-ms`; the watchers follow price changes, and the run times each change from
//! the writer's answer (and from its send, and from the commit stamp) to each watcher's
//! receipt. Ordo follows with Watch streams (`ordo.rs`); PostgreSQL with logical decoding or
//! LISTEN/NOTIFY (`postgres.rs`).
//!
//! The check: each watcher received every committed order (feed) or price change
//! (price-latency) exactly once, in the target's order (Ordo's (epoch, index), PostgreSQL's
//! commit LSN), and the final stock is the initial stock less the acknowledged orders.
//!
//! In: a started target and a [`RunConfig`]. Out: a [`RunResult`] whose `feed` carries those
//! figures ([`FeedReport`]).

mod check;
mod orders;
mod ordo;
mod postgres;
mod subscriber;

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ordo_client::{v1, Client, Consistency};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::check::Tally;
use crate::runner::{
    harness_cpu_seconds, latency_of, Latency, LoopMode, Progress, RunConfig, RunResult, Timing,
};
use crate::servers::Server;
use crate::targets::{Endpoints, Session, Target};
use crate::workload::WorkloadKind;
pub use check::PriceFigures;
use check::{FeedCheck, PriceSet, WatcherTally, PRICE_CENTS_BASE};
use orders::{OrderMix, OrderOutcome, OrderSession, PriceWriter, PRICE_SKUS};
use subscriber::{follow, Window};

/// Watchers one run may have, at most (Ordo's default `--watchers-max` is 1,024).
pub const WATCHERS_MAX: usize = 1_000;
/// PostgreSQL's `max_connections` in the harness (`servers.rs`), less the loader and spares.
const PG_CONNECTIONS_MAX: usize = 590;

/// How PostgreSQL's watchers follow the changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgFeed {
    /// A test_decoding slot per watcher, polled with pg_logical_slot_get_changes.
    #[default]
    Decoding,
    /// Row triggers calling pg_notify, a LISTEN connection per watcher.
    Notify,
}

impl PgFeed {
    /// The designs a workload runs when `--pg-feed` is not given: decoding (durable, ordered)
    /// for the feed's throughput; both for price latency.
    pub fn defaults(kind: WorkloadKind) -> Vec<PgFeed> {
        match kind {
            WorkloadKind::PriceLatency => vec![PgFeed::Notify, PgFeed::Decoding],
            _ => vec![PgFeed::Decoding],
        }
    }

    fn name(self) -> &'static str {
        match self {
            PgFeed::Decoding => "decoding",
            PgFeed::Notify => "notify",
        }
    }
}

impl FromStr for PgFeed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "decoding" => Ok(PgFeed::Decoding),
            "notify" => Ok(PgFeed::Notify),
            other => Err(format!("unknown --pg-feed {other:?}: decoding or notify")),
        }
    }
}

/// The feed workloads' knobs for one run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct FeedKnobs {
    pub watchers: usize,
    /// PostgreSQL only.
    pub pg_feed: PgFeed,
    pub price_interval_ms: u64,
    /// PostgreSQL decoding: the pause after a poll that was not full.
    pub pg_poll_ms: u64,
}

impl Default for FeedKnobs {
    fn default() -> Self {
        Self {
            watchers: 10,
            pg_feed: PgFeed::Decoding,
            price_interval_ms: 50,
            pg_poll_ms: 10,
        }
    }
}

/// PostgreSQL settings a run needs: logical decoding needs `wal_level=logical` and a slot per
/// watcher (set for its 0-watcher run too, so that runs of one design compare).
pub fn pg_settings(knobs: &FeedKnobs) -> Vec<(String, String)> {
    match knobs.pg_feed {
        PgFeed::Decoding => vec![
            ("wal_level".into(), "logical".into()),
            (
                "max_replication_slots".into(),
                (knobs.watchers + 8).to_string(),
            ),
        ],
        PgFeed::Notify => Vec::new(),
    }
}

/// Why a target cannot run the feed workloads; `Ok` for those that can.
pub fn supported(target: Target) -> Result<(), String> {
    match target {
        Target::Ordo1 | Target::Ordo3 | Target::Postgres => Ok(()),
        Target::Ordo1Batch | Target::Ordo3Batch | Target::Ordo1Stream | Target::Ordo3Stream => {
            Err(target.orders_only("the feed workloads"))
        }
        Target::PostgresCond => Err(
            "postgres-cond is an order design; the feed workloads' PostgreSQL designs run as \
             `postgres` (--pg-feed decoding,notify)"
                .into(),
        ),
        Target::Redis | Target::RedisEverysec | Target::Etcd => Err(format!(
            "there is no {target} adapter for the feed workloads"
        )),
    }
}

/// The feed workloads' figures for one run (`RunResult::feed`).
#[derive(Clone, Debug, Serialize)]
pub struct FeedReport {
    /// watch (Ordo), decoding or notify (PostgreSQL).
    pub design: String,
    pub watchers: usize,
    /// Orders answered over warm-up and measurement, and those committed.
    pub orders_total: u64,
    pub orders_committed: u64,
    /// Committed orders sent while measuring, per second.
    pub committed_s: f64,
    /// Server CPU over warm-up and measurement divided by `orders_total`.
    pub server_cpu_us_per_order: f64,
    /// The harness's own CPU (order clients and watchers) per order: CPU the servers could not
    /// use on this machine.
    pub harness_cpu_us_per_order: f64,
    /// Server CPU after the orders stopped, while the watchers caught up.
    pub server_cpu_catch_up_s: f64,
    /// Changes the watchers received while measuring, per second, all together and per watcher.
    pub events_s_total: f64,
    pub events_s_per_watcher_min: f64,
    pub events_s_per_watcher_mean: f64,
    pub events_s_per_watcher_max: f64,
    /// Every change received, warm-up and catch-up included.
    pub events_total: u64,
    /// The target's commit stamp → received (µs), per change received while measuring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_us: Option<Latency>,
    /// The slowest watcher's catch-up after the orders stopped (to within Ordo's 50 ms
    /// progress interval or PostgreSQL's poll).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up_ms_max: Option<u64>,
    /// Streams reopened from a resume token (Ordo).
    pub resumes: u64,
    /// price-latency only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<PriceFigures>,
    pub check: FeedCheck,
}

/// A watcher of one of the designs, before it runs.
enum Watcher {
    Ordo(Box<ordo::OrdoWatch>),
    Decoding(postgres::PgDecoding),
    Listen(postgres::PgListen),
}

impl Watcher {
    /// Watcher `i`: Ordo's are spread over the nodes, each on its own connection.
    async fn open(
        ep: &Endpoints,
        knobs: FeedKnobs,
        prices: bool,
        i: usize,
    ) -> anyhow::Result<Self> {
        let url = &ep.urls[i % ep.urls.len()];
        Ok(match ep.target {
            Target::Postgres => match knobs.pg_feed {
                PgFeed::Decoding => Watcher::Decoding(
                    postgres::PgDecoding::open(url, i, Duration::from_millis(knobs.pg_poll_ms))
                        .await?,
                ),
                PgFeed::Notify => Watcher::Listen(postgres::PgListen::open(url, prices).await?),
            },
            _ => {
                let kinds = if prices {
                    vec![v1::EventKind::Price as i32]
                } else {
                    Vec::new()
                };
                Watcher::Ordo(Box::new(ordo::OrdoWatch::open(url, kinds).await?))
            }
        })
    }

    fn spawn(
        self,
        window: Window,
        goal: watch::Receiver<Option<u64>>,
        prices: bool,
    ) -> JoinHandle<WatcherTally> {
        match self {
            Watcher::Ordo(s) => tokio::spawn(follow(*s, window, goal, prices)),
            Watcher::Decoding(s) => tokio::spawn(follow(s, window, goal, prices)),
            Watcher::Listen(s) => tokio::spawn(follow(s, window, goal, prices)),
        }
    }
}

/// The design's short name in reports.
fn design(target: Target, knobs: &FeedKnobs) -> String {
    if target == Target::Postgres {
        knobs.pg_feed.name().into()
    } else {
        "watch".into()
    }
}

/// What one order client did.
struct ClientRun {
    timing: Timing,
    tally: Tally,
    committed: Vec<u64>,
    committed_measured: u64,
    /// Ordo: the highest epoch of an acknowledged order.
    epoch_max: u64,
    orders: u64,
}

/// Loads the dataset, opens the watchers, runs the orders (and the price writer), lets the
/// watchers catch up, and checks.
pub async fn run(server: &Server, cfg: &RunConfig) -> anyhow::Result<RunResult> {
    anyhow::ensure!(
        matches!(cfg.mode, LoopMode::Closed),
        "the feed workloads run a closed loop only (drop --rate)"
    );
    supported(cfg.target).map_err(anyhow::Error::msg)?;
    let target = cfg.target;
    let prices = cfg.spec.kind == WorkloadKind::PriceLatency;
    let knobs = cfg.feed;
    let ep = &server.endpoints;
    let dataset = cfg.spec.dataset;
    if target == Target::Postgres {
        anyhow::ensure!(
            knobs.watchers + cfg.clients <= PG_CONNECTIONS_MAX,
            "postgres: --watchers plus --clients must be at most {PG_CONNECTIONS_MAX}"
        );
    }

    let loaded = Instant::now();
    let mut loader = Session::open(ep, 0).await.context("opening a session")?;
    loader.load(&dataset).await.context("loading the dataset")?;
    if target == Target::Postgres {
        postgres::prepare(
            &ep.urls[0],
            knobs.pg_feed,
            prices,
            knobs.watchers,
            dataset.skus,
        )
        .await
        .context("preparing PostgreSQL's feed")?;
    } else {
        // Every node has applied the load before its watchers start "from now".
        for url in &ep.urls {
            Client::connect(url.clone())
                .await?
                .with_consistency(Consistency::Linearizable)
                .get_stock(1, 1)
                .await
                .with_context(|| format!("waiting for {url} to apply the load"))?;
        }
    }
    let mut opening = Vec::with_capacity(knobs.watchers);
    for i in 0..knobs.watchers {
        let ep = ep.clone();
        opening.push(tokio::spawn(async move {
            Watcher::open(&ep, knobs, prices, i).await
        }));
    }
    let mut watchers = Vec::with_capacity(knobs.watchers);
    for (i, w) in opening.into_iter().enumerate() {
        watchers.push(
            w.await
                .context("a watcher's task failed")?
                .with_context(|| format!("opening watcher {i}"))?,
        );
    }
    let mut sessions = Vec::with_capacity(cfg.clients);
    for i in 0..cfg.clients {
        sessions.push(
            OrderSession::open(ep, i)
                .await
                .with_context(|| format!("opening order session {i}"))?,
        );
    }
    let writer = if prices {
        Some(
            PriceWriter::open(ep)
                .await
                .context("opening the price writer")?,
        )
    } else {
        None
    };
    eprintln!(
        "{target}: loaded and opened {} {} watchers in {:.1} s",
        knobs.watchers,
        design(target, &knobs),
        loaded.elapsed().as_secs_f64()
    );

    let cpu_before = server.cpu_seconds();
    let harness_cpu_before = harness_cpu_seconds();
    let start = Instant::now();
    let window = Window {
        measure_from: start + cfg.warmup,
        end: start + cfg.warmup + cfg.duration,
    };
    let seconds = cfg.duration.as_secs().max(1) as usize;
    let (goal_tx, goal_rx) = watch::channel(None);
    let watcher_tasks: Vec<JoinHandle<WatcherTally>> = watchers
        .into_iter()
        .map(|w| w.spawn(window, goal_rx.clone(), prices))
        .collect();
    let interval = Duration::from_millis(knobs.price_interval_ms);
    let writer_task = writer.map(|w| tokio::spawn(write_prices(w, window, interval)));
    let done_ops = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(cfg, start, done_ops.clone());
    let mut tasks = Vec::with_capacity(cfg.clients);
    for (i, mut session) in sessions.into_iter().enumerate() {
        let mut mix = OrderMix::new(dataset, cfg.seed, i as u64);
        let done_ops = done_ops.clone();
        tasks.push(tokio::spawn(async move {
            let mut run = ClientRun {
                timing: Timing::new(seconds),
                tally: Tally::default(),
                committed: Vec::new(),
                committed_measured: 0,
                epoch_max: 0,
                orders: 0,
            };
            loop {
                let now = Instant::now();
                if now >= window.end {
                    break;
                }
                let lines = mix.next_order();
                let outcome = session.order(&lines).await;
                run.timing.record(now, window.measure_from, now.elapsed());
                run.tally.order(&lines, &outcome.outcome());
                if let OrderOutcome::Committed { order_id, epoch } = outcome {
                    run.committed.push(order_id);
                    run.committed_measured += u64::from(now >= window.measure_from);
                    run.epoch_max = run.epoch_max.max(epoch);
                }
                run.orders += 1;
                done_ops.fetch_add(1, Ordering::Relaxed);
            }
            (run, session)
        }));
    }
    let mut timing = Timing::new(seconds);
    let mut tally = Tally::default();
    let mut committed = Vec::new();
    let (mut committed_measured, mut epoch_max, mut orders_total) = (0, 0, 0);
    // The sessions stay open until the CPU is read: a PostgreSQL backend that exits leaves the
    // process tree, and its CPU reaches the postmaster's count only once it is reaped.
    let mut idle_sessions = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (run, session) = task.await.context("an order client failed")?;
        idle_sessions.push(session);
        timing.merge(&run.timing);
        tally.merge(run.tally);
        committed.extend(run.committed);
        committed_measured += run.committed_measured;
        epoch_max = epoch_max.max(run.epoch_max);
        orders_total += run.orders;
    }
    let cpu = server.cpu_seconds() - cpu_before;
    let harness_cpu = harness_cpu_seconds() - harness_cpu_before;
    let (price_log, price_epoch_max) = match writer_task {
        Some(task) => task.await.context("the price writer failed")?,
        None => (Vec::new(), 0),
    };

    // Everything is answered: tell the watchers what "caught up" is (Ordo: the last epoch
    // acknowledged; PostgreSQL: the marker written now, after every order), and wait for them.
    let _ = goal_tx.send(Some(epoch_max.max(price_epoch_max)));
    if target == Target::Postgres {
        postgres::mark_end(&ep.urls[0], knobs.pg_feed, prices)
            .await
            .context("writing the end marker")?;
    }
    let mut tallies = Vec::with_capacity(watcher_tasks.len());
    for task in watcher_tasks {
        tallies.push(task.await.context("a watcher failed")?);
    }
    let cpu_catch_up = (server.cpu_seconds() - cpu_before - cpu).max(0.0);
    drop(idle_sessions);
    if let Some(progress) = progress {
        progress.finish();
    }

    // Confirmed with the leader, so a follower's lag cannot pass for a lost order.
    if let Session::Ordo(client, _) = &mut loader {
        *client = client.clone().with_consistency(Consistency::Linearizable);
    }
    let final_stock = loader
        .final_stock(&dataset, &tally)
        .await
        .context("reading the final stock back")?;
    let mut run_check = crate::check::check(&dataset, &tally, &final_stock);
    let unknown_orders: u64 = tally.errors.values().sum();
    let (feed_check, problems) = if prices {
        let expected: Vec<u64> = (0..price_log.len() as u64)
            .filter(|&i| price_log[i as usize].committed.is_some())
            .collect();
        let unknown = price_log.len() as u64 - expected.len() as u64;
        check::check_watchers(
            &tallies,
            &expected,
            unknown,
            |t| t.prices.iter().filter_map(check::price_change_of).collect(),
            "price changes",
        )
    } else {
        committed.sort_unstable();
        check::check_watchers(
            &tallies,
            &committed,
            unknown_orders,
            |t| t.orders.clone(),
            "orders",
        )
    };
    run_check.problems.extend(problems);
    run_check.problems.truncate(crate::check::PROBLEMS_MAX);
    run_check.ok = run_check.problems.is_empty();

    let duration_s = cfg.duration.as_secs_f64();
    let per_order_us = |cpu_s: f64| {
        if orders_total > 0 {
            cpu_s * 1e6 / orders_total as f64
        } else {
            0.0
        }
    };
    let (rate_min, rate_mean, rate_max) = check::per_watcher_rates(&tallies, duration_s);
    let lag = check::merged_lag(&tallies);
    let report = FeedReport {
        design: design(target, &knobs),
        watchers: knobs.watchers,
        orders_total,
        orders_committed: committed.len() as u64,
        committed_s: committed_measured as f64 / duration_s,
        server_cpu_us_per_order: per_order_us(cpu),
        harness_cpu_us_per_order: per_order_us(harness_cpu),
        server_cpu_catch_up_s: cpu_catch_up,
        events_s_total: tallies.iter().map(|t| t.events_measured).sum::<u64>() as f64 / duration_s,
        events_s_per_watcher_min: rate_min,
        events_s_per_watcher_mean: rate_mean,
        events_s_per_watcher_max: rate_max,
        events_total: tallies.iter().map(|t| t.events_total).sum(),
        lag_us: (!lag.is_empty()).then(|| latency_of(&lag)),
        catch_up_ms_max: tallies.iter().filter_map(|t| t.caught_up_ms).max(),
        resumes: tallies.iter().map(|t| t.resumes).sum(),
        price_interval_ms: prices.then_some(knobs.price_interval_ms),
        price: prices.then(|| check::price_figures(&tallies, &price_log, window)),
        check: feed_check,
    };
    let measured_ops = timing.measured_ops();
    Ok(RunResult {
        target: target.to_string(),
        workload: cfg.spec.kind.to_string(),
        clients: cfg.clients,
        duration_s,
        warmup_s: cfg.warmup.as_secs_f64(),
        mode: cfg.mode,
        seed: cfg.seed,
        throughput_ops_s: measured_ops as f64 / duration_s,
        latency_us: timing.latency(),
        server_cpu_s: cpu,
        ops_total: orders_total,
        server_cpu_us_per_op: crate::runner::cpu_us_per_op(cpu, orders_total),
        measured_ops,
        dataset: None,
        check: run_check,
        timeline: timing.timeline(),
        cart: None,
        nearby: None,
        feed: Some(report),
        snapshots: None,
    })
}

/// The price-latency writer: one change every `interval` (later when a change takes longer),
/// each to its own price, round `PRICE_SKUS` SKUs, until the run's end. Returns the log and
/// Ordo's highest epoch of a change.
async fn write_prices(
    mut writer: PriceWriter,
    window: Window,
    interval: Duration,
) -> (Vec<PriceSet>, u64) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut log = Vec::new();
    let mut epoch_max = 0;
    loop {
        ticker.tick().await;
        let sent = Instant::now();
        if sent >= window.end {
            break;
        }
        let seq = log.len() as u64;
        let sku = 1 + (seq % PRICE_SKUS) as u32;
        let cents = PRICE_CENTS_BASE + seq as i64 + 1;
        let committed = match writer.set(sku, cents).await {
            Ok(epoch) => {
                epoch_max = epoch_max.max(epoch);
                Some(Instant::now())
            }
            Err(e) => {
                tracing::debug!(error = %e, "a price change failed");
                None
            }
        };
        log.push(PriceSet {
            sku,
            cents,
            sent,
            committed,
        });
    }
    (log, epoch_max)
}
