//! The cart workload: each client reserves 1-3 zipf-hot lines with a short TTL, then confirms
//! (70%), cancels (10%) or leaves the hold to lapse (20%); a share of the confirms is sent
//! right at the hold's expiry, where a design's expiry races show. Ordo runs it with its
//! reservation API; the baselines run the designs people build instead: PostgreSQL hold rows
//! with a sweeper (`postgres.rs`), Redis DECRBY with an expiring marker and a keyspace
//! listener (`redis.rs`).
//!
//! In: a started target and a [`RunConfig`]. Out: a [`RunResult`] whose `cart` carries carts
//! per second, server CPU per cart and the check's counts (holds confirmed after expiry,
//! units lost, units oversold), after waiting for every unconfirmed hold to lapse.

mod check;
mod mix;
mod postgres;
mod redis;
mod session;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use crate::runner::{
    histogram, latency_of, Latency, LoopMode, Progress, RunConfig, RunResult, Timing,
};
use crate::servers::Server;
use crate::targets::{Endpoints, Target};
use check::{CartCheck, CartTally, HoldEnd, HoldRecord};
use mix::{Fate, Mix};
use session::{CancelOutcome, CartSession, ConfirmOutcome, Hold, ReserveOutcome};

pub use mix::CartKnobs;
pub use session::supported;

/// Late confirms one client keeps waiting, at most; past it a late confirm is sent at once.
const LATE_PENDING_MAX: usize = 1_024;
/// After the last hold's expiry, how long the target has to give the units back before the
/// stock is first read (PostgreSQL's sweeper runs every 100 ms; Redis expires lazily and in
/// sampled cycles; an idle Ordo leader cuts an epoch when a hold is due). What is still held
/// then is the release path's lag, reported as such.
const SETTLE: Duration = Duration::from_secs(1);
/// Past `SETTLE`, the stock is read again every interval while units are still coming back;
/// the check counts what is held once a read shows no progress, or at the bound.
const SETTLE_POLL_MAX: Duration = Duration::from_secs(60);
const SETTLE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How lapsed holds got their units back.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum ReleasePath {
    /// Ordo: a hold is dead at its epoch time in every read and decision; no task involved.
    EpochTime,
    /// PostgreSQL: the benchmark's sweeper task.
    Sweeper(postgres::SweepStats),
    /// Redis: the keyspace-notification listener task.
    Listener(redis::ListenStats),
}

/// The cart workload's figures for one target (`RunResult::cart`).
#[derive(Clone, Debug, Serialize)]
pub struct CartReport {
    pub ttl_s: u32,
    pub late_confirm_share: f64,
    /// Carts whose reserve was sent in the measured window.
    pub carts: u64,
    pub carts_s: f64,
    /// A cart from its reserve to its confirm or cancel (reserve alone for the carts left to
    /// expire or confirmed late), measured carts only.
    pub cart_latency_us: Latency,
    /// Server CPU over warm-up and measurement divided by the carts reserved in that time.
    pub server_cpu_ms_per_cart: f64,
    /// What the clients meant to do with each hold, all carts.
    pub fates: BTreeMap<String, u64>,
    pub holds: u64,
    pub confirmed: u64,
    pub cancelled: u64,
    pub left_to_expire: u64,
    pub reserve_refused: BTreeMap<String, u64>,
    pub confirm_refused: BTreeMap<String, u64>,
    pub cancel_refused: BTreeMap<String, u64>,
    pub release: ReleasePath,
    /// How long after the run ended the final stock was read.
    pub settle_ms: u64,
    /// Units still held one `SETTLE` (1 s) after the last hold's expiry: the release path's
    /// lag (they may come back later; what never does is `check.units_lost`).
    pub units_held_after_last_expiry: i64,
    /// When every lapsed hold's units were back, ms after the last hold's expiry (to within
    /// the poll interval); absent when they never were.
    pub released_after_last_expiry_ms: Option<u64>,
    pub check: CartCheck,
}

fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The target's release path, running beside the clients.
enum Releaser {
    None,
    Sweeper(postgres::Sweeper),
    Listener(redis::Listener),
}

impl Releaser {
    async fn start(ep: &Endpoints) -> anyhow::Result<Self> {
        Ok(match ep.target {
            Target::Postgres => Releaser::Sweeper(postgres::Sweeper::start(&ep.urls[0]).await?),
            Target::Redis | Target::RedisEverysec => {
                Releaser::Listener(redis::Listener::start(&ep.urls[0]).await?)
            }
            _ => Releaser::None,
        })
    }

    async fn stop(self) -> ReleasePath {
        match self {
            Releaser::None => ReleasePath::EpochTime,
            Releaser::Sweeper(s) => ReleasePath::Sweeper(s.stop().await),
            Releaser::Listener(l) => ReleasePath::Listener(l.stop().await),
        }
    }
}

/// When a run's phases begin and end.
#[derive(Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
}

/// What one client measured and saw.
struct ClientRun {
    timing: Timing,
    carts_hist: Histogram<u64>,
    tally: CartTally,
    fates: BTreeMap<&'static str, u64>,
    carts_measured: u64,
    carts_total: u64,
}

/// Loads the dataset into the started target, runs the carts, waits for every hold left
/// open to lapse, and checks.
pub async fn run(server: &Server, cfg: &RunConfig) -> anyhow::Result<RunResult> {
    anyhow::ensure!(
        matches!(cfg.mode, LoopMode::Closed),
        "the cart workload runs a closed loop only (drop --rate)"
    );
    supported(cfg.target).map_err(anyhow::Error::msg)?;
    let ep = &server.endpoints;
    let dataset = cfg.spec.dataset;
    let mut loader = CartSession::open(ep, 0)
        .await
        .context("opening a session")?;
    loader
        .load(ep, &dataset)
        .await
        .context("loading the dataset")?;
    let releaser = Releaser::start(ep)
        .await
        .context("starting the release of lapsed holds")?;
    let mut sessions = Vec::with_capacity(cfg.clients);
    for i in 0..cfg.clients {
        sessions.push(
            CartSession::open(ep, i + 1)
                .await
                .with_context(|| format!("opening session {i}"))?,
        );
    }

    let cpu_before = server.cpu_seconds();
    let start = Instant::now();
    let window = Window {
        measure_from: start + cfg.warmup,
        end: start + cfg.warmup + cfg.duration,
    };
    let done_ops = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(cfg, start, done_ops.clone());
    let mut tasks = Vec::with_capacity(cfg.clients);
    for (i, session) in sessions.into_iter().enumerate() {
        let mix = Mix::new(&cfg.spec, cfg.cart, cfg.seed, i as u64);
        let seconds = cfg.duration.as_secs().max(1) as usize;
        let done_ops = done_ops.clone();
        let ttl_s = cfg.cart.ttl_s;
        tasks.push(tokio::spawn(client(
            session, mix, ttl_s, window, seconds, done_ops,
        )));
    }
    tokio::time::sleep_until(window.end).await;
    let cpu = server.cpu_seconds() - cpu_before;
    let mut timing = Timing::new(cfg.duration.as_secs().max(1) as usize);
    let mut carts_hist = histogram();
    let mut tally = CartTally::default();
    let mut fates = BTreeMap::new();
    let (mut carts, mut carts_total) = (0, 0);
    for task in tasks {
        let run = task.await.context("a client task failed")?;
        timing.merge(&run.timing);
        carts_hist.add(&run.carts_hist).expect("same bounds");
        tally.merge(run.tally);
        for (fate, n) in run.fates {
            *fates.entry(fate.to_string()).or_default() += n;
        }
        carts += run.carts_measured;
        carts_total += run.carts_total;
    }
    if let Some(progress) = progress {
        progress.finish();
    }

    // Every hold not confirmed or cancelled must lapse and come back before the stock is read.
    let wait_us = tally.latest_expiry_us + SETTLE.as_micros() as i64 - unix_us();
    if wait_us > 0 {
        tokio::time::sleep(Duration::from_micros(wait_us as u64)).await;
    }
    let settled = |s: &check::FinalState| s.reserved() == 0 && s.holds_unreleased == 0;
    let since_last_expiry_ms = || ((unix_us() - tally.latest_expiry_us).max(0) / 1_000) as u64;
    let mut last = loader
        .final_state(&dataset)
        .await
        .context("reading the final stock back")?;
    let units_held_after_last_expiry = last.reserved();
    let poll_until = Instant::now() + SETTLE_POLL_MAX;
    while !settled(&last) && Instant::now() < poll_until {
        tokio::time::sleep(SETTLE_POLL_INTERVAL).await;
        let next = loader
            .final_state(&dataset)
            .await
            .context("reading the final stock back")?;
        let progress =
            (next.reserved(), next.holds_unreleased) != (last.reserved(), last.holds_unreleased);
        last = next;
        if !progress {
            break;
        }
    }
    let released_after_last_expiry_ms = settled(&last).then(since_last_expiry_ms);
    let settle_ms = window.end.elapsed().as_millis() as u64;
    let release = releaser.stop().await;
    // Ordo and PostgreSQL (expiry checked inside the confirming transaction, release in the
    // sweeping one) must show none; Redis's design predicts them, so they are reported.
    let anomalies_fail = cfg.target.is_ordo() || cfg.target == Target::Postgres;
    let (check, cart_check) = check::check(&dataset, &tally, &last, anomalies_fail);

    let duration_s = cfg.duration.as_secs_f64();
    let measured_ops = timing.measured_ops();
    Ok(RunResult {
        target: cfg.target.to_string(),
        workload: cfg.spec.kind.to_string(),
        clients: cfg.clients,
        duration_s,
        warmup_s: cfg.warmup.as_secs_f64(),
        mode: cfg.mode,
        seed: cfg.seed,
        throughput_ops_s: measured_ops as f64 / duration_s,
        latency_us: timing.latency(),
        server_cpu_s: cpu,
        ops_total: carts_total,
        server_cpu_us_per_op: crate::runner::cpu_us_per_op(cpu, carts_total),
        measured_ops,
        dataset: None,
        check,
        timeline: timing.timeline(),
        nearby: None,
        feed: None,
        snapshots: None,
        cart: Some(CartReport {
            ttl_s: cfg.cart.ttl_s,
            late_confirm_share: cfg.cart.late_confirm_share,
            carts,
            carts_s: carts as f64 / duration_s,
            cart_latency_us: latency_of(&carts_hist),
            server_cpu_ms_per_cart: if carts_total > 0 {
                cpu * 1_000.0 / carts_total as f64
            } else {
                0.0
            },
            fates,
            holds: tally.holds,
            confirmed: tally.confirmed,
            cancelled: tally.cancelled,
            left_to_expire: tally.left_to_expire,
            reserve_refused: tally.reserve_refused.clone(),
            confirm_refused: tally.confirm_refused.clone(),
            cancel_refused: tally.cancel_refused.clone(),
            release,
            settle_ms,
            units_held_after_last_expiry,
            released_after_last_expiry_ms,
            check: cart_check,
        }),
    })
}

/// A late confirm waiting for its time.
struct Late {
    due: Instant,
    hold: Hold,
}

/// One client's closed loop: a late confirm whose time has come goes first; otherwise a new
/// cart. After the run's end, the late confirms still waiting are sent at their time
/// (outside the measurement) so every hold's end is known.
async fn client(
    mut session: CartSession,
    mut mix: Mix,
    ttl_s: u32,
    window: Window,
    seconds: usize,
    done_ops: Arc<AtomicU64>,
) -> ClientRun {
    let mut run = ClientRun {
        timing: Timing::new(seconds),
        carts_hist: histogram(),
        tally: CartTally::default(),
        fates: BTreeMap::new(),
        carts_measured: 0,
        carts_total: 0,
    };
    // Keyed by (due, sequence): the earliest first.
    let mut late: BTreeMap<(Instant, u64), Late> = BTreeMap::new();
    let mut late_seq = 0u64;
    loop {
        let now = Instant::now();
        if let Some(entry) = late.first_entry() {
            if entry.key().0 <= now {
                let Late { hold, .. } = entry.remove();
                let end = confirm(&mut session, &hold).await;
                run.timing.record(now, window.measure_from, now.elapsed());
                done_ops.fetch_add(1, Ordering::Relaxed);
                run.tally.hold(&record(hold, end));
                continue;
            }
        }
        if now >= window.end {
            break;
        }
        let plan = mix.next_cart();
        let measured = now >= window.measure_from;
        run.carts_total += 1;
        run.carts_measured += measured as u64;
        *run.fates.entry(plan.fate.name()).or_default() += 1;
        let reserved = session.reserve(&plan.lines, ttl_s).await;
        run.timing.record(now, window.measure_from, now.elapsed());
        done_ops.fetch_add(1, Ordering::Relaxed);
        let hold = match reserved {
            ReserveOutcome::Held(hold) => hold,
            ReserveOutcome::Refused(reason) => {
                run.tally.reserve_refused(reason);
                continue;
            }
            ReserveOutcome::Error(e) => {
                // A hold may exist; it lapses within the TTL from now.
                run.tally
                    .reserve_error(&e, unix_us() + ttl_s as i64 * 1_000_000);
                continue;
            }
        };
        let end = match plan.fate {
            Fate::ConfirmLate { offset_ms } if late.len() < LATE_PENDING_MAX => {
                let delta_us = hold.expires_at_us + offset_ms * 1_000 - unix_us();
                let due = Instant::now() + Duration::from_micros(delta_us.max(0) as u64);
                late_seq += 1;
                late.insert((due, late_seq), Late { due, hold });
                if measured {
                    run.carts_hist.saturating_record(elapsed_us(now));
                }
                continue;
            }
            Fate::Confirm | Fate::ConfirmLate { .. } => {
                let sent = Instant::now();
                let end = confirm(&mut session, &hold).await;
                run.timing.record(sent, window.measure_from, sent.elapsed());
                done_ops.fetch_add(1, Ordering::Relaxed);
                end
            }
            Fate::Cancel => {
                let sent = Instant::now();
                let end = match session.cancel(&hold).await {
                    CancelOutcome::Cancelled => HoldEnd::Cancelled,
                    CancelOutcome::Refused(reason) => HoldEnd::CancelRefused(reason),
                    CancelOutcome::Error(e) => HoldEnd::CancelUnknown(e),
                };
                run.timing.record(sent, window.measure_from, sent.elapsed());
                done_ops.fetch_add(1, Ordering::Relaxed);
                end
            }
            Fate::Expire => HoldEnd::LeftToExpire,
        };
        if measured {
            run.carts_hist.saturating_record(elapsed_us(now));
        }
        run.tally.hold(&record(hold, end));
    }
    while let Some((_, Late { due, hold })) = late.pop_first() {
        tokio::time::sleep_until(due).await;
        let end = confirm(&mut session, &hold).await;
        run.tally.hold(&record(hold, end));
    }
    run
}

fn elapsed_us(since: Instant) -> u64 {
    (since.elapsed().as_micros() as u64).clamp(1, 60_000_000)
}

async fn confirm(session: &mut CartSession, hold: &Hold) -> HoldEnd {
    match session.confirm(hold).await {
        ConfirmOutcome::Committed { commit_us } => HoldEnd::Confirmed { commit_us },
        ConfirmOutcome::Refused(reason) => HoldEnd::ConfirmRefused(reason),
        ConfirmOutcome::Error(e) => HoldEnd::ConfirmUnknown(e),
    }
}

fn record(hold: Hold, end: HoldEnd) -> HoldRecord {
    HoldRecord {
        lines: hold.lines,
        expires_at_us: hold.expires_at_us,
        end,
    }
}
