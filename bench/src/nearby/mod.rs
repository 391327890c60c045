//! The "near me" workloads (issue 11). browse-nearby: each operation is a user somewhere in
//! one of twelve cities asking the availability of 20 SKUs over the dark stores within
//! [`dataset::RADIUS_M`]. order-nearby: each operation is an all-or-nothing order of 1-3
//! zipf-hot SKUs filled FEWEST_DCS from at most 3 of those stores, so clients race for the
//! last units of the hot SKUs. Ordo answers with GetNearbyAvailability and PlaceOrderNearby;
//! the baselines run the designs people build instead: PostgreSQL (PostGIS or a bounding box
//! and the haversine, row locks for orders; `postgres.rs`) and Redis (GEOSEARCH, hashes, a
//! Lua fill; `redis.rs`).
//!
//! In: a started target and a [`RunConfig`]. Out: a [`RunResult`] whose `nearby` carries the
//! dataset, server CPU per operation, committed and rejected orders and the check's figures.

mod check;
mod dataset;
mod fill;
mod mix;
mod postgres;
mod redis;
mod session;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use tokio::time::Instant;

use crate::runner::{harness_cpu_seconds, LoopMode, Progress, RunConfig, RunResult, Timing};
use crate::servers::Server;
use crate::targets::Target;
use crate::workload::WorkloadKind;
use check::{NearbyTally, VERIFY_EVERY};
use dataset::{DatasetSummary, NearbyDataset};
use mix::{NearbyMix, NearbyOp};
use session::{NearbySession, OrderOutcome};

pub use session::supported;

/// How PostgreSQL finds the stores near a point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgGeo {
    /// PostGIS where the extension is installed, else plain.
    Auto,
    /// `geography` points, a GiST index, `ST_DWithin` and `ST_Distance` on the sphere.
    Postgis,
    /// A btree on (lat, lon), a bounding box and the haversine in SQL.
    Plain,
}

impl FromStr for PgGeo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(PgGeo::Auto),
            "postgis" => Ok(PgGeo::Postgis),
            "plain" => Ok(PgGeo::Plain),
            other => Err(format!(
                "unknown --pg-geo {other:?}: auto, postgis or plain"
            )),
        }
    }
}

/// The nearby workloads' knobs beyond the common ones.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct NearbyKnobs {
    /// Dark stores over the twelve cities.
    pub dcs: u32,
    pub skus: u32,
    /// A stocked row starts with 1..=stock_max units; `None`: the workload's default.
    pub stock_max: Option<i64>,
    pub pg_geo: PgGeo,
}

impl Default for NearbyKnobs {
    fn default() -> Self {
        Self {
            dcs: 10_000,
            skus: 100,
            stock_max: None,
            pg_geo: PgGeo::Auto,
        }
    }
}

/// A stocked row's most units when `--stock` is not given: browse reads never change it;
/// orders run the hot SKUs out so that clients race for the last units.
fn stock_max_default(kind: WorkloadKind) -> i64 {
    if kind == WorkloadKind::OrderNearby {
        10
    } else {
        100
    }
}

/// The nearby workloads' figures for one target (`RunResult::nearby`).
#[derive(Clone, Debug, Serialize)]
pub struct NearbyReport {
    pub dataset: DatasetSummary,
    /// PostgreSQL only: how it found the stores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_geo: Option<PgGeo>,
    /// Operations answered over warm-up and measurement.
    pub ops_total: u64,
    /// Server CPU over warm-up and measurement divided by `ops_total`.
    pub server_cpu_us_per_op: f64,
    /// The harness's own CPU (its clients, their decoding and the sampled checks) per
    /// operation: it shares the machine with the servers, so this is CPU they could not use.
    pub harness_cpu_us_per_op: f64,
    /// browse-nearby: stores counted per answer, on average.
    pub dcs_per_answer_mean: f64,
    pub answers_verified: u64,
    /// order-nearby, all operations (warm-up included).
    pub committed: u64,
    pub rejected: u64,
    /// Committed orders sent in the measured window, per second.
    pub committed_s: f64,
    /// Committed orders by how many stores they shipped from.
    pub shipments: BTreeMap<usize, u64>,
    pub units_sold: i64,
    pub units_decremented: i64,
    pub rows_negative: u64,
}

/// Loads the dataset into the started target, runs the clients (closed loop) and checks.
pub async fn run(server: &Server, cfg: &RunConfig) -> anyhow::Result<RunResult> {
    anyhow::ensure!(
        matches!(cfg.mode, LoopMode::Closed),
        "the nearby workloads run a closed loop only (drop --rate)"
    );
    supported(cfg.target).map_err(anyhow::Error::msg)?;
    let kind = cfg.spec.kind;
    let orders = kind == WorkloadKind::OrderNearby;
    let knobs = cfg.nearby;
    let stock_max = knobs.stock_max.unwrap_or_else(|| stock_max_default(kind));
    let data = Arc::new(NearbyDataset::new(
        knobs.dcs, knobs.skus, stock_max, cfg.seed,
    ));
    let ep = &server.endpoints;
    let pg_geo = match cfg.target {
        Target::Postgres => Some(postgres::resolve_geo(&ep.urls[0], knobs.pg_geo).await?),
        _ => None,
    };
    let geo = pg_geo.unwrap_or(PgGeo::Plain);
    let loaded = Instant::now();
    let mut loader = NearbySession::open(ep, 0, geo)
        .await
        .context("opening a session")?;
    loader
        .load(ep, &data)
        .await
        .context("loading the dataset")?;
    eprintln!(
        "{}: loaded {} DCs and {} stock rows in {:.1} s",
        cfg.target,
        data.dcs(),
        data.summary().stock_rows,
        loaded.elapsed().as_secs_f64()
    );
    let mut sessions = Vec::with_capacity(cfg.clients);
    for i in 0..cfg.clients {
        sessions.push(
            NearbySession::open(ep, i, geo)
                .await
                .with_context(|| format!("opening session {i}"))?,
        );
    }

    let cpu_before = server.cpu_seconds();
    let harness_cpu_before = harness_cpu_seconds();
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let seconds = cfg.duration.as_secs().max(1) as usize;
    let done_ops = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(cfg, start, done_ops.clone());
    let mut tasks = Vec::with_capacity(cfg.clients);
    for (i, mut session) in sessions.into_iter().enumerate() {
        let data = data.clone();
        let done_ops = done_ops.clone();
        let mut mix = NearbyMix::new(orders, knobs.skus, cfg.spec.theta, cfg.seed, i as u64);
        tasks.push(tokio::spawn(async move {
            let mut timing = Timing::new(seconds);
            let mut tally = NearbyTally::default();
            let mut committed_measured = 0u64;
            let mut n = 0u64;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                match mix.next_op() {
                    NearbyOp::Browse { lat, lon, skus } => {
                        let answer = session.browse(lat, lon, &skus).await;
                        timing.record(now, measure_from, now.elapsed());
                        match answer {
                            Ok(a) => {
                                let verify = n.is_multiple_of(VERIFY_EVERY);
                                tally.answer(&data, (lat, lon), &skus, &a, verify);
                            }
                            Err(e) => tally.error(&format!("{e:#}")),
                        }
                    }
                    NearbyOp::Order { lat, lon, lines } => {
                        let outcome = session.order(lat, lon, &lines).await;
                        timing.record(now, measure_from, now.elapsed());
                        match outcome {
                            OrderOutcome::Committed(taken) => {
                                committed_measured += u64::from(now >= measure_from);
                                tally.order_committed(&data, (lat, lon), &lines, &taken);
                            }
                            OrderOutcome::Rejected(reason) => tally.order_rejected(reason),
                            OrderOutcome::Error(e) => tally.order_unknown(&lines, &e),
                        }
                    }
                }
                n += 1;
                done_ops.fetch_add(1, Ordering::Relaxed);
            }
            (timing, tally, committed_measured, n)
        }));
    }
    let mut timing = Timing::new(seconds);
    let mut tally = NearbyTally::default();
    let (mut committed_measured, mut ops_total) = (0, 0);
    for task in tasks {
        let (t, k, c, n) = task.await.context("a client task failed")?;
        timing.merge(&t);
        tally.merge(k);
        committed_measured += c;
        ops_total += n;
    }
    let cpu = server.cpu_seconds() - cpu_before;
    let harness_cpu = harness_cpu_seconds() - harness_cpu_before;
    if let Some(progress) = progress {
        progress.finish();
    }

    let figures = if orders {
        let final_stock = loader
            .final_stock(&data)
            .await
            .context("reading the final stock back")?;
        check::check_final(&data, &tally, &final_stock)
    } else {
        check::FinalFigures {
            units_sold: 0,
            units_decremented: 0,
            rows_negative: 0,
            problems: Vec::new(),
        }
    };
    let duration_s = cfg.duration.as_secs_f64();
    let measured_ops = timing.measured_ops();
    let per_op_us = |cpu_s: f64| {
        if ops_total > 0 {
            cpu_s * 1e6 / ops_total as f64
        } else {
            0.0
        }
    };
    let report = NearbyReport {
        dataset: data.summary(),
        postgres_geo: pg_geo,
        ops_total,
        server_cpu_us_per_op: per_op_us(cpu),
        harness_cpu_us_per_op: per_op_us(harness_cpu),
        dcs_per_answer_mean: if tally.answers > 0 {
            tally.dcs_counted as f64 / tally.answers as f64
        } else {
            0.0
        },
        answers_verified: tally.answers_verified,
        committed: tally.committed,
        rejected: tally.rejected.values().sum(),
        committed_s: committed_measured as f64 / duration_s,
        shipments: tally.shipments.clone(),
        units_sold: figures.units_sold,
        units_decremented: figures.units_decremented,
        rows_negative: figures.rows_negative,
    };
    let check = check::verdict(&tally, figures.problems);
    Ok(RunResult {
        target: cfg.target.to_string(),
        workload: kind.to_string(),
        clients: cfg.clients,
        duration_s,
        warmup_s: cfg.warmup.as_secs_f64(),
        mode: cfg.mode,
        seed: cfg.seed,
        throughput_ops_s: measured_ops as f64 / duration_s,
        latency_us: timing.latency(),
        server_cpu_s: cpu,
        ops_total,
        server_cpu_us_per_op: crate::runner::cpu_us_per_op(cpu, ops_total),
        measured_ops,
        dataset: None,
        check,
        timeline: timing.timeline(),
        cart: None,
        nearby: Some(report),
        feed: None,
        snapshots: None,
    })
}
