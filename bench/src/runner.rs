//! Running one workload against one started target: closed or open loop, warm-up excluded,
//! an hdrhistogram per client (merged), a per-second time series, and the correctness check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use crate::check::{check, Check, Tally};
use crate::servers::Server;
use crate::targets::{Session, Target};
use crate::workload::{Generator, Op, WorkloadSpec};

#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum LoopMode {
    /// N clients, each sending its next operation when the previous one answers.
    Closed,
    /// A fixed arrival rate (operations per second, over all clients); latency counts from the
    /// intended send time, so queueing cannot hide behind a slow client (coordinated omission).
    Open { rate: f64 },
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub target: Target,
    pub spec: WorkloadSpec,
    pub clients: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub seed: u64,
    pub mode: LoopMode,
    /// Orders per `PlaceOrders` call for the batched Ordo targets.
    pub batch: usize,
    pub progress: bool,
    /// The cart workload's TTL and late confirms (ignored by the order workloads).
    pub cart: crate::cart::CartKnobs,
    /// The nearby workloads' dataset and PostgreSQL design (ignored by the others).
    pub nearby: crate::nearby::NearbyKnobs,
    /// The feed workloads' watchers and PostgreSQL design (ignored by the others).
    pub feed: crate::feed::FeedKnobs,
    /// Ordo targets: `--snapshot-every` of every node, and the seconds with a snapshot
    /// marked (the order workloads).
    pub snapshot_every: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

/// One second of the measured run.
#[derive(Clone, Debug, Serialize)]
pub struct Second {
    pub second: u64,
    pub ops: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// With `--snapshot-every`: a node was building a snapshot during this second.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub target: String,
    pub workload: String,
    pub clients: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub mode: LoopMode,
    pub seed: u64,
    pub throughput_ops_s: f64,
    pub latency_us: Latency,
    /// CPU seconds the server processes used during warm-up and measurement (every node of a
    /// cluster, and their children).
    pub server_cpu_s: f64,
    /// Operations completed during warm-up and measurement (orders, in batched calls too;
    /// carts for the cart workload).
    pub ops_total: u64,
    /// `server_cpu_s` over `ops_total`, in microseconds.
    pub server_cpu_us_per_op: f64,
    pub measured_ops: u64,
    /// The plain workloads' dataset: its stock rows, how long loading them took, and the
    /// server's resident memory after the run (every node, summed); absent for the
    /// workloads with their own runner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetReport>,
    pub check: Check,
    pub timeline: Vec<Second>,
    /// The cart workload's own figures (carts per second, expiry anomalies, the release
    /// path's work); absent for the order workloads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cart: Option<crate::cart::CartReport>,
    /// The nearby workloads' figures (dataset, server CPU per operation, committed orders);
    /// absent for the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nearby: Option<crate::nearby::NearbyReport>,
    /// The feed workloads' figures (events delivered, watcher lag, price notification
    /// latency, server CPU per order, the feed check); absent for the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<crate::feed::FeedReport>,
    /// With `--snapshot-every`: latency in the seconds a snapshot was being built beside
    /// the quiet ones'.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<crate::snapshots::SnapshotReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DatasetReport {
    pub stock_rows: u64,
    pub load_s: f64,
    pub server_rss_mib: f64,
}

/// Server CPU seconds over operations, in microseconds (0 without operations).
pub(crate) fn cpu_us_per_op(cpu_s: f64, ops: u64) -> f64 {
    if ops == 0 {
        return 0.0;
    }
    cpu_s * 1e6 / ops as f64
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds are valid")
}

/// One client's latencies: all measured calls, and per second of the measured run.
pub(crate) struct Timing {
    hist: Histogram<u64>,
    seconds: Vec<(u64, Histogram<u64>)>,
    measured_ops: u64,
}

impl Timing {
    pub(crate) fn new(seconds: usize) -> Self {
        Self {
            hist: histogram(),
            seconds: (0..seconds).map(|_| (0, histogram())).collect(),
            measured_ops: 0,
        }
    }

    /// Counts a call sent at `started`, unless it was sent during the warm-up.
    pub(crate) fn record(&mut self, started: Instant, measure_from: Instant, latency: Duration) {
        if started < measure_from {
            return;
        }
        let us = (latency.as_micros() as u64).clamp(1, 60_000_000);
        self.hist.saturating_record(us);
        let second = started.duration_since(measure_from).as_secs() as usize;
        if let Some((ops, h)) = self.seconds.get_mut(second) {
            *ops += 1;
            h.saturating_record(us);
        }
        self.measured_ops += 1;
    }

    pub(crate) fn merge(&mut self, other: &Timing) {
        self.hist.add(&other.hist).expect("same bounds");
        for (mine, theirs) in self.seconds.iter_mut().zip(&other.seconds) {
            mine.0 += theirs.0;
            mine.1.add(&theirs.1).expect("same bounds");
        }
        self.measured_ops += other.measured_ops;
    }

    pub(crate) fn measured_ops(&self) -> u64 {
        self.measured_ops
    }

    pub(crate) fn latency(&self) -> Latency {
        latency_of(&self.hist)
    }

    pub(crate) fn timeline(&self) -> Vec<Second> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(s, (ops, h))| Second {
                second: s as u64,
                ops: *ops,
                p50_us: h.value_at_quantile(0.50),
                p99_us: h.value_at_quantile(0.99),
                p999_us: h.value_at_quantile(0.999),
                snapshot: false,
            })
            .collect()
    }

    /// The latencies of the seconds `marked` says false, merged, and of those it says true.
    pub(crate) fn split_seconds(&self, marked: &[bool]) -> (Histogram<u64>, Histogram<u64>) {
        let (mut quiet, mut busy) = (histogram(), histogram());
        for (i, (_, h)) in self.seconds.iter().enumerate() {
            let into = match marked.get(i) {
                Some(true) => &mut busy,
                _ => &mut quiet,
            };
            into.add(h).expect("same bounds");
        }
        (quiet, busy)
    }
}

pub(crate) fn latency_of(hist: &Histogram<u64>) -> Latency {
    Latency {
        p50: hist.value_at_quantile(0.50),
        p99: hist.value_at_quantile(0.99),
        p999: hist.value_at_quantile(0.999),
        max: hist.max(),
        mean: hist.mean(),
    }
}

struct ClientStats {
    timing: Timing,
    tally: Tally,
}

impl ClientStats {
    fn new(seconds: usize) -> Self {
        Self {
            timing: Timing::new(seconds),
            tally: Tally::default(),
        }
    }

    fn record(&mut self, started: Instant, measure_from: Instant, latency: Duration) {
        self.timing.record(started, measure_from, latency);
    }
}

/// The progress bar of a run (warm-up and measurement), with the calls answered so far.
pub(crate) struct Progress {
    bar: indicatif::ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// `None` when `cfg.progress` is off.
    pub(crate) fn start(cfg: &RunConfig, start: Instant, done_ops: Arc<AtomicU64>) -> Option<Self> {
        if !cfg.progress {
            return None;
        }
        let bar = indicatif::ProgressBar::new((cfg.warmup + cfg.duration).as_secs());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>16} [{bar:30}] {pos:>3}/{len}s {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}", cfg.target));
        let bar2 = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let elapsed = start.elapsed();
                bar2.set_position(elapsed.as_secs());
                let ops = done_ops.load(Ordering::Relaxed);
                bar2.set_message(format!(
                    "{ops} ops, {:.0}/s",
                    ops as f64 / elapsed.as_secs_f64()
                ));
            }
        });
        Some(Self { bar, ticker })
    }

    pub(crate) fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

/// CPU seconds (user + system) this process has used so far, from /proc (0 where unreadable).
pub(crate) fn harness_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12), in clock ticks (100 a second).
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Loads the dataset into the started target and runs the workload.
pub async fn run(server: &Server, cfg: &RunConfig) -> anyhow::Result<RunResult> {
    let ep = &server.endpoints;
    let mut loader = Session::open(ep, 0).await.context("opening a session")?;
    let load_started = Instant::now();
    loader
        .load(&cfg.spec.dataset)
        .await
        .context("loading the dataset")?;
    let load_s = load_started.elapsed().as_secs_f64();
    let mut sessions = Vec::with_capacity(cfg.clients);
    for i in 0..cfg.clients {
        sessions.push(
            Session::open(ep, i)
                .await
                .with_context(|| format!("opening session {i}"))?,
        );
    }
    let cpu_before = server.cpu_seconds();
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let seconds = cfg.duration.as_secs().max(1) as usize;
    let done_ops = Arc::new(AtomicU64::new(0));

    let progress = Progress::start(cfg, start, done_ops.clone());
    let sampler = crate::snapshots::Sampler::start(
        &server.snapshot_metrics,
        cfg.snapshot_every,
        server.endpoints.token.clone(),
        measure_from,
        seconds,
    );

    let mut tasks = Vec::with_capacity(cfg.clients);
    for (i, mut session) in sessions.into_iter().enumerate() {
        let cfg = cfg.clone();
        let done_ops = done_ops.clone();
        tasks.push(tokio::spawn(async move {
            let mut gen = Generator::new(&cfg.spec, cfg.seed, i as u64);
            let mut stats = ClientStats::new(seconds);
            let interval = match cfg.mode {
                LoopMode::Closed => None,
                LoopMode::Open { rate } => Some(Duration::from_secs_f64(cfg.clients as f64 / rate)),
            };
            // Open loop: clients are staggered within one interval.
            let mut intended = match interval {
                Some(iv) => start + iv.mul_f64(i as f64 / cfg.clients as f64),
                None => start,
            };
            loop {
                let now = Instant::now();
                if let Some(iv) = interval {
                    if intended >= end {
                        break;
                    }
                    if intended > now {
                        tokio::time::sleep_until(intended).await;
                    }
                    // Latency counts from the intended send time, not the actual one.
                    let sent_at = intended;
                    intended += iv;
                    let n = one_step(
                        &mut session,
                        &mut gen,
                        &cfg,
                        &mut stats,
                        sent_at,
                        measure_from,
                    )
                    .await;
                    done_ops.fetch_add(n, Ordering::Relaxed);
                } else {
                    if now >= end {
                        break;
                    }
                    let n =
                        one_step(&mut session, &mut gen, &cfg, &mut stats, now, measure_from).await;
                    done_ops.fetch_add(n, Ordering::Relaxed);
                }
            }
            stats.tally.highest_epoch = session.highest_epoch();
            stats
        }));
    }
    let mut timing = Timing::new(seconds);
    let mut tally = Tally::default();
    for task in tasks {
        let stats = task.await.context("a client task failed")?;
        timing.merge(&stats.timing);
        tally.merge(stats.tally);
    }
    let cpu = server.cpu_seconds() - cpu_before;
    if let Some(progress) = progress {
        progress.finish();
    }
    let measured_ops = timing.measured_ops();
    let ops_total = done_ops.load(Ordering::Relaxed);
    let mut timeline = timing.timeline();
    let snapshots = match sampler {
        Some(sampler) => {
            let (report, marked) = sampler.finish(&timing).await?;
            for (second, marked) in timeline.iter_mut().zip(marked) {
                second.snapshot = marked;
            }
            Some(report)
        }
        None => None,
    };

    let final_stock = loader
        .final_stock(&cfg.spec.dataset, &tally)
        .await
        .context("reading the final stock back")?;
    let check = check(&cfg.spec.dataset, &tally, &final_stock);
    let dataset = DatasetReport {
        stock_rows: cfg.spec.dataset.keys().count() as u64,
        load_s,
        server_rss_mib: server.rss_bytes() as f64 / (1024.0 * 1024.0),
    };
    Ok(RunResult {
        target: cfg.target.to_string(),
        workload: cfg.spec.kind.to_string(),
        clients: cfg.clients,
        duration_s: cfg.duration.as_secs_f64(),
        warmup_s: cfg.warmup.as_secs_f64(),
        mode: cfg.mode,
        seed: cfg.seed,
        throughput_ops_s: measured_ops as f64 / cfg.duration.as_secs_f64(),
        latency_us: timing.latency(),
        server_cpu_s: cpu,
        ops_total,
        server_cpu_us_per_op: cpu_us_per_op(cpu, ops_total),
        measured_ops,
        dataset: Some(dataset),
        check,
        timeline,
        cart: None,
        nearby: None,
        feed: None,
        snapshots,
    })
}

/// One call: an operation, or a batch of orders for the batched targets. Returns the number of
/// operations it carried.
async fn one_step(
    session: &mut Session,
    gen: &mut Generator,
    cfg: &RunConfig,
    stats: &mut ClientStats,
    sent_at: Instant,
    measure_from: Instant,
) -> u64 {
    if cfg.target.batched() {
        let mut orders = Vec::with_capacity(cfg.batch);
        while orders.len() < cfg.batch {
            match gen.next_op() {
                Op::Order(lines) => orders.push(lines),
                Op::Read(dc, sku) => {
                    let outcome = session.read(dc, sku).await;
                    stats.tally.read(&outcome);
                }
            }
        }
        let outcomes = session.order_batch(&orders).await;
        let latency = sent_at.elapsed();
        for (lines, outcome) in orders.iter().zip(&outcomes) {
            stats.tally.order(lines, outcome);
            stats.record(sent_at, measure_from, latency);
        }
        return orders.len() as u64;
    }
    match gen.next_op() {
        Op::Order(lines) => {
            let outcome = session.order(&lines).await;
            stats.tally.order(&lines, &outcome);
        }
        Op::Read(dc, sku) => {
            let outcome = session.read(dc, sku).await;
            stats.tally.read(&outcome);
        }
    }
    stats.record(sent_at, measure_from, sent_at.elapsed());
    1
}
