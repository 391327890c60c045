//! `ordo-bench`: load Ordo and the systems people would use instead with the same seeded
//! workload, measure throughput and latency (hdrhistogram), and check every run's correctness.
//!
//! `ordo-bench run` runs one target; `ordo-bench compare` starts each target in turn (real
//! servers from the machine's packages, in temporary directories on loopback), runs them with
//! the same seed, prints one table and writes `results.json`, `results.md` and PNG plots.
//! `--workload cart` runs reservations (hold, then confirm, cancel or let lapse) against Ordo
//! and the PostgreSQL and Redis hold designs, with its own check (`cart/`).
//! `--workload browse-nearby` and `order-nearby` run "near me" (availability over the dark
//! stores around a user, orders filled from them) against Ordo's nearby API and the PostgreSQL
//! and Redis geo designs, with their own checks (`nearby/`).
//! `--workload feed` runs orders while `--watchers` follow the change feed (Ordo's Watch,
//! PostgreSQL's logical decoding or LISTEN/NOTIFY) and `price-latency` times a price change to
//! its notification, with their own checks (`feed/`).
//! `ordo-bench notify` gives a hot item a million subscribers and drops its price while
//! orders run: the fan-out's time, every subscriber notified once, the orders' latency
//! before and during it (`notify.rs`).

/// The node's allocator (server/src/main.rs): the harness's low-priority notification
/// workers would otherwise hold glibc arena locks its writers wait on.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cart;
mod check;
mod feed;
mod nearby;
mod notify;
mod recovery;
mod report;
mod runner;
mod servers;
mod snapshots;
mod targets;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use runner::{LoopMode, RunConfig, RunResult};
use servers::Server;
use targets::Target;
use workload::{WorkloadKind, WorkloadSpec, SKUS_PER_DC};

/// (DC, SKU) pairs of a nearby dataset, at most (160 MB of initial units in the harness).
const NEARBY_PAIRS_MAX: u64 = 20_000_000;
/// The most stock rows of the plain workloads' dataset (`--stock-rows`): issue 29's 10⁸.
const STOCK_ROWS_MAX: u64 = 100_000_000;

#[derive(Parser)]
#[command(
    name = "ordo-bench",
    version,
    about = "Ordo's benchmark harness, with the alternatives side by side"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one workload against one target.
    Run {
        #[arg(long)]
        target: Target,
        #[command(flatten)]
        knobs: Knobs,
    },
    /// Run one workload against several targets in turn, with the same seed.
    Compare {
        /// Comma-separated targets: ordo-1, ordo-3, ordo-1-batch, ordo-3-batch, ordo-1-stream,
        /// ordo-3-stream (each client's orders over one OrderStream), postgres, postgres-cond,
        /// etcd, redis, redis-everysec.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "ordo-1,ordo-3,postgres,etcd,redis"
        )]
        targets: Vec<Target>,
        #[command(flatten)]
        knobs: Knobs,
    },
    /// A hot item with many subscribers (1,000,000 by default) drops its price while orders
    /// run, on one Ordo node: fan-out time, every subscriber notified exactly once, order
    /// latency before and during the fan-out. Exit 1 if a subscriber missed or repeated.
    Notify(notify::NotifyArgs),
    /// One Ordo node loaded with --stock-rows (10⁷ by default) is killed with SIGKILL while
    /// orders run, then started again: load time, memory per million rows, time until it
    /// listens and until it serves, and every acknowledged order present. Exit 1 if one is
    /// missing or applied twice.
    Recovery(recovery::RecoveryArgs),
}

#[derive(Args, Clone)]
struct Knobs {
    /// flash-sale, hot-items, uniform, multi-dc, browse, cart, browse-nearby (availability of
    /// 20 SKUs over the dark stores within 5 km of a user), order-nearby (orders of 1-3
    /// zipf-hot SKUs filled FEWEST_DCS from at most 3 of those stores), feed (orders while
    /// watchers follow the change feed) or price-latency (a price change every
    /// --price-interval-ms, timed to the watchers' notification, while orders run).
    #[arg(long)]
    workload: WorkloadKind,
    /// Ordo targets: TLS on every port (certificates made with `ordo certs generate`), the
    /// clients trusting their CA. The order workloads only (not cart, nearby, feed).
    #[arg(long)]
    tls: bool,
    /// Ordo targets: nodes with a tokens file (`ordo token create`), every client sending the
    /// token. The order workloads only.
    #[arg(long)]
    auth: bool,
    /// Ordo targets: node i serves Prometheus metrics on 127.0.0.1:PORT+i-1 (its
    /// --metrics-listen), so a Prometheus server can scrape the run (deploy/prometheus.yml).
    /// With --auth a scrape needs a token with the metrics or admin scope.
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Ordo targets, the order workloads (flash-sale, hot-items, uniform, multi-dc, browse):
    /// every node takes a snapshot every N Raft entries (its --snapshot-every, at least 100)
    /// and serves metrics, which the run reads every 100 ms; the result marks the seconds in
    /// which a node was building a snapshot and sets their latency beside the quiet seconds'.
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Closed loop: concurrent clients. Open loop: clients sharing the rate.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds before measuring starts.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Open loop at this many operations per second (all clients together).
    #[arg(long)]
    rate: Option<f64>,
    /// Orders per PlaceOrders call for the -batch targets.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Initial stock of every (dc, sku) [default: 10000 for flash-sale, 1000000 otherwise];
    /// browse-nearby, order-nearby: the most units of a stocked (dc, sku), each drawn from
    /// 1..=stock [default: 100 for browse-nearby, 10 for order-nearby]
    #[arg(long)]
    stock: Option<i64>,
    /// uniform, hot-items, multi-dc, browse: stock rows (DC x SKU pairs) in the dataset, 1,000
    /// SKUs per DC, so --stock-rows 10000000 is 10,000 DCs [default: 12,000, 12 DCs]. Past
    /// 100,000 rows the final check reads back every row an operation touched and a sample
    /// of 10,000 others, not every row.
    #[arg(long)]
    stock_rows: Option<u64>,
    /// browse-nearby, order-nearby: dark stores, dealt in turn to 12 cities and spread within
    /// 10 km of each centre.
    #[arg(long, default_value_t = nearby::NearbyKnobs::default().dcs)]
    dcs: u32,
    /// browse-nearby, order-nearby: SKUs in the catalogue; each store stocks a random 20%.
    #[arg(long, default_value_t = nearby::NearbyKnobs::default().skus)]
    skus: u32,
    /// browse-nearby, order-nearby: how PostgreSQL finds the stores: auto (PostGIS when the
    /// extension is installed), postgis, or plain (a btree on (lat, lon), a bounding box and
    /// the haversine in SQL).
    #[arg(long, default_value = "auto")]
    pg_geo: nearby::PgGeo,
    /// Zipf exponent for hot-items, cart and order-nearby (0 < theta < 1).
    #[arg(long, default_value_t = 0.99)]
    theta: f64,
    /// multi-dc: the fraction of orders whose DCs span regions.
    #[arg(long, default_value_t = 0.2)]
    cross_region: f64,
    /// browse: availability reads per order.
    #[arg(long, default_value_t = 100)]
    reads_per_order: u32,
    /// cart: every hold's TTL in whole seconds (at least 1).
    #[arg(long, default_value_t = cart::CartKnobs::default().ttl_s)]
    ttl_s: u32,
    /// cart: the share of confirms sent at the hold's expiry (± 100 ms) instead of at once.
    #[arg(long, default_value_t = cart::CartKnobs::default().late_confirm_share)]
    late_confirms: f64,
    /// feed, price-latency: watchers following the feed; a comma-separated list runs each count
    /// in turn (a fresh server each), e.g. 0,1,10,100.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    watchers: Vec<usize>,
    /// feed, price-latency: PostgreSQL's feed design(s), comma-separated: decoding (a
    /// test_decoding slot per watcher, polled with pg_logical_slot_get_changes) and/or notify
    /// (triggers calling pg_notify, a LISTEN connection per watcher) [default: decoding for
    /// feed, notify,decoding for price-latency].
    #[arg(long, value_delimiter = ',')]
    pg_feed: Option<Vec<feed::PgFeed>>,
    /// price-latency: milliseconds between price changes.
    #[arg(long, default_value_t = feed::FeedKnobs::default().price_interval_ms)]
    price_interval_ms: u64,
    /// feed, price-latency: how long a PostgreSQL decoding watcher waits before polling again
    /// after a poll that was not full.
    #[arg(long, default_value_t = feed::FeedKnobs::default().pg_poll_ms)]
    pg_poll_ms: u64,
    /// Ordo's region partitions.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// Where results go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// The `ordo` binary to start [default: next to this binary].
    #[arg(long)]
    ordo_bin: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl Knobs {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.clients >= 1 && self.clients <= 4096,
            "--clients must be 1..=4096"
        );
        anyhow::ensure!(self.duration >= 1, "--duration must be at least 1 second");
        anyhow::ensure!(
            self.batch >= 1 && self.batch <= 1000,
            "--batch must be 1..=1000"
        );
        anyhow::ensure!(
            self.theta > 0.0 && self.theta < 1.0,
            "--theta must be in (0, 1)"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.cross_region),
            "--cross-region must be in [0, 1]"
        );
        if let Some(rate) = self.rate {
            anyhow::ensure!(rate > 0.0, "--rate must be positive");
        }
        anyhow::ensure!(
            self.ttl_s >= 1 && self.ttl_s <= 3_600,
            "--ttl-s must be 1..=3600"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.late_confirms),
            "--late-confirms must be in [0, 1]"
        );
        if self.workload == WorkloadKind::Cart || self.workload.is_nearby() {
            anyhow::ensure!(
                self.rate.is_none(),
                "the {} workload runs a closed loop only (drop --rate)",
                self.workload
            );
        }
        anyhow::ensure!(
            self.dcs >= 1 && self.dcs <= 1_000_000,
            "--dcs must be 1..=1000000"
        );
        // The harness keeps every (dc, sku) pair's initial units in memory, 8 bytes each.
        anyhow::ensure!(
            u64::from(self.dcs) * u64::from(self.skus) <= NEARBY_PAIRS_MAX,
            "--dcs times --skus must be at most {NEARBY_PAIRS_MAX}"
        );
        anyhow::ensure!(
            self.skus >= 20 && self.skus <= 1_000,
            "--skus must be 20..=1000 (a browse asks 20 distinct SKUs; Ordo reads 1,000 at most)"
        );
        if let Some(rows) = self.stock_rows {
            anyhow::ensure!(
                matches!(
                    self.workload,
                    WorkloadKind::Uniform
                        | WorkloadKind::HotItems
                        | WorkloadKind::MultiDc
                        | WorkloadKind::Browse
                ),
                "--stock-rows is for uniform, hot-items, multi-dc and browse"
            );
            anyhow::ensure!(
                rows.is_multiple_of(SKUS_PER_DC)
                    && (3 * SKUS_PER_DC..=STOCK_ROWS_MAX).contains(&rows),
                "--stock-rows must be a multiple of {SKUS_PER_DC} from {} to {STOCK_ROWS_MAX}",
                3 * SKUS_PER_DC
            );
        }
        if let (true, Some(stock)) = (self.workload.is_nearby(), self.stock) {
            anyhow::ensure!(stock >= 1, "--stock must be at least 1");
        }
        if self.workload.is_feed() {
            anyhow::ensure!(
                self.rate.is_none(),
                "the {} workload runs a closed loop only (drop --rate)",
                self.workload
            );
            anyhow::ensure!(!self.watchers.is_empty(), "--watchers is empty");
            for &w in &self.watchers {
                anyhow::ensure!(
                    w <= feed::WATCHERS_MAX,
                    "--watchers must be 0..={}",
                    feed::WATCHERS_MAX
                );
            }
            anyhow::ensure!(
                (1..=60_000).contains(&self.price_interval_ms),
                "--price-interval-ms must be 1..=60000"
            );
            anyhow::ensure!(
                (1..=10_000).contains(&self.pg_poll_ms),
                "--pg-poll-ms must be 1..=10000"
            );
            if let Some(designs) = &self.pg_feed {
                anyhow::ensure!(!designs.is_empty(), "--pg-feed is empty");
            }
        }
        Ok(())
    }

    /// The runs a target makes: one, or for the feed workloads one per watcher count (and per
    /// PostgreSQL design), in order.
    fn configs(&self, target: Target) -> Vec<RunConfig> {
        if !self.workload.is_feed() {
            return vec![self.config(target, feed::FeedKnobs::default())];
        }
        let designs = match (target, &self.pg_feed) {
            (Target::Postgres, Some(designs)) => designs.clone(),
            (Target::Postgres, None) => feed::PgFeed::defaults(self.workload),
            _ => vec![feed::PgFeed::default()],
        };
        let mut configs = Vec::new();
        for pg_feed in designs {
            for &watchers in &self.watchers {
                let knobs = feed::FeedKnobs {
                    watchers,
                    pg_feed,
                    price_interval_ms: self.price_interval_ms,
                    pg_poll_ms: self.pg_poll_ms,
                };
                configs.push(self.config(target, knobs));
            }
        }
        configs
    }

    fn config(&self, target: Target, feed: feed::FeedKnobs) -> RunConfig {
        RunConfig {
            target,
            spec: WorkloadSpec::new(
                self.workload,
                self.stock,
                self.stock_rows,
                self.theta,
                self.cross_region,
                self.reads_per_order,
            ),
            clients: self.clients,
            duration: Duration::from_secs(self.duration),
            warmup: Duration::from_secs(self.warmup),
            seed: self.seed,
            mode: match self.rate {
                Some(rate) => LoopMode::Open { rate },
                None => LoopMode::Closed,
            },
            batch: self.batch,
            progress: !self.quiet,
            cart: cart::CartKnobs {
                ttl_s: self.ttl_s,
                late_confirm_share: self.late_confirms,
            },
            nearby: nearby::NearbyKnobs {
                dcs: self.dcs,
                skus: self.skus,
                stock_max: self.stock,
                pg_geo: self.pg_geo,
            },
            feed,
            snapshot_every: self.snapshot_every,
        }
    }

    fn ordo_bin(&self) -> anyhow::Result<PathBuf> {
        if let Some(bin) = &self.ordo_bin {
            return Ok(bin.clone());
        }
        let me = std::env::current_exe()?;
        let bin = me.with_file_name("ordo");
        anyhow::ensure!(
            bin.is_file(),
            "no ordo binary next to {} (build it: cargo build --release --bin ordo, or pass --ordo-bin)",
            me.display()
        );
        Ok(bin)
    }
}

/// Which targets a workload with its own adapters can run (`None`: every target).
fn own_targets(workload: WorkloadKind) -> Option<fn(Target) -> Result<(), String>> {
    match workload {
        WorkloadKind::Cart => Some(cart::supported),
        w if w.is_nearby() => Some(nearby::supported),
        w if w.is_feed() => Some(feed::supported),
        _ => None,
    }
}

async fn run_one(knobs: &Knobs, cfg: &RunConfig) -> anyhow::Result<RunResult> {
    let target = cfg.target;
    let ordo_bin = if target.is_ordo() {
        knobs.ordo_bin()?
    } else {
        PathBuf::new()
    };
    if (knobs.tls || knobs.auth) && own_targets(knobs.workload).is_some() {
        anyhow::bail!(
            "--tls and --auth are for the order workloads (flash-sale, hot-items, uniform, \
             multi-dc, browse), not {}",
            knobs.workload
        );
    }
    if knobs.snapshot_every.is_some() && own_targets(knobs.workload).is_some() {
        anyhow::bail!(
            "--snapshot-every is for the order workloads (flash-sale, hot-items, uniform, \
             multi-dc, browse), not {}",
            knobs.workload
        );
    }
    if let Some(supported) = own_targets(knobs.workload) {
        supported(target).map_err(|why| {
            anyhow::anyhow!("{target} cannot run the {} workload: {why}", knobs.workload)
        })?;
    }
    let pg_settings = if knobs.workload.is_feed() {
        feed::pg_settings(&cfg.feed)
    } else {
        Vec::new()
    };
    let server = Server::start(
        target,
        &ordo_bin,
        knobs.partitions,
        &pg_settings,
        servers::OrdoOptions {
            tls: knobs.tls,
            auth: knobs.auth,
            metrics_port: knobs.metrics_port,
            snapshot_every: knobs.snapshot_every,
        },
    )
    .await
    .with_context(|| format!("starting {target}"))?;
    let run = if knobs.workload == WorkloadKind::Cart {
        cart::run(&server, cfg).await
    } else if knobs.workload.is_nearby() {
        nearby::run(&server, cfg).await
    } else if knobs.workload.is_feed() {
        feed::run(&server, cfg).await
    } else {
        runner::run(&server, cfg).await
    };
    run.with_context(|| format!("running {target}"))
}

fn finish(out: &Path, runs: &[RunResult]) -> anyhow::Result<bool> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    report::write_json(out, runs)?;
    let table = report::table(runs);
    std::fs::write(out.join("results.md"), &table)?;
    for run in runs {
        if let Some(why) = report::write_plots(out, run)? {
            eprintln!("{why}");
            break;
        }
    }
    println!("{table}");
    let mut ok = true;
    for run in runs {
        if !run.check.ok {
            ok = false;
            eprintln!("CHECK FAILED for {}:", run.target);
            for p in &run.check.problems {
                eprintln!("  {p}");
            }
        }
    }
    println!("results in {}", out.display());
    Ok(ok)
}

async fn main_inner(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Notify(args) => notify::run(args).await,
        Command::Recovery(args) => recovery::run(args).await,
        Command::Run { target, knobs } => {
            knobs.validate()?;
            let mut runs = Vec::new();
            for cfg in knobs.configs(target) {
                runs.push(run_one(&knobs, &cfg).await?);
            }
            finish(&knobs.out, &runs)
        }
        Command::Compare { targets, knobs } => {
            knobs.validate()?;
            anyhow::ensure!(!targets.is_empty(), "--targets is empty");
            let targets = if let Some(supported) = own_targets(knobs.workload) {
                // Targets without a design for the workload are skipped, each with the
                // reason; the others still run.
                let (runnable, skipped) = targets::split_targets(&targets, supported);
                for (target, why) in &skipped {
                    eprintln!("skipping {target}: {why}");
                }
                anyhow::ensure!(
                    !runnable.is_empty(),
                    "none of --targets can run the {} workload (the reasons are above)",
                    knobs.workload
                );
                runnable
            } else {
                targets
            };
            let mut runs = Vec::new();
            for cfg in targets.into_iter().flat_map(|t| knobs.configs(t)) {
                let target = cfg.target;
                let result = run_one(&knobs, &cfg).await?;
                let carts = result
                    .cart
                    .as_ref()
                    .map(|c| {
                        format!(
                            ", {:.0} carts/s, {} confirmed after expiry, {} units lost, {} oversold",
                            c.carts_s,
                            c.check.holds_confirmed_after_expiry,
                            c.check.units_lost,
                            c.check.units_oversold
                        )
                    })
                    .unwrap_or_default();
                let nearby = result
                    .nearby
                    .as_ref()
                    .map(|n| {
                        format!(
                            ", {:.0} µs server CPU/op, {} committed, {} rejected",
                            n.server_cpu_us_per_op, n.committed, n.rejected
                        )
                    })
                    .unwrap_or_default();
                let feed = result
                    .feed
                    .as_ref()
                    .map(|f| {
                        format!(
                            ", {} with {} watchers: {:.0} events/s delivered, {:.0} µs server CPU/order",
                            f.design, f.watchers, f.events_s_total, f.server_cpu_us_per_order
                        )
                    })
                    .unwrap_or_default();
                eprintln!(
                    "{target}: {:.0} ops/s, p99 {:.2} ms{carts}{nearby}{feed}, check {}",
                    result.throughput_ops_s,
                    result.latency_us.p99 as f64 / 1000.0,
                    if result.check.ok { "ok" } else { "FAILED" }
                );
                runs.push(result);
            }
            finish(&knobs.out, &runs)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // The one crypto provider of the process, for --tls (rustls with ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match main_inner(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
