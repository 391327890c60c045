//! `ordo-bench`: load Ordo and the systems people would use instead with the same seeded
//! workload, measure throughput and latency (hdrhistogram), and check every run's correctness.
//!
//! `ordo-bench run` runs one target; `ordo-bench compare` starts each target in turn (real
//! servers from the machine's packages, in temporary directories on loopback), runs them with
//! the same seed, prints one table and writes `results.json`, `results.md` and PNG plots.
//! `--workload cart` runs reservations (hold, then confirm, cancel or let lapse) against Ordo
//! and the PostgreSQL and Redis hold designs, with its own check (`cart/`).

mod cart;
mod check;
mod report;
mod runner;
mod servers;
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
use workload::{WorkloadKind, WorkloadSpec};

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
        /// Comma-separated targets: ordo-1, ordo-3, ordo-1-batch, ordo-3-batch, postgres,
        /// postgres-cond, etcd, redis, redis-everysec.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "ordo-1,ordo-3,postgres,etcd,redis"
        )]
        targets: Vec<Target>,
        #[command(flatten)]
        knobs: Knobs,
    },
}

#[derive(Args, Clone)]
struct Knobs {
    /// flash-sale, hot-items, uniform, multi-dc, browse or cart.
    #[arg(long)]
    workload: WorkloadKind,
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
    /// Initial stock of every (dc, sku) [default: 10000 for flash-sale, 1000000 otherwise]
    #[arg(long)]
    stock: Option<i64>,
    /// Zipf exponent for hot-items (0 < theta < 1).
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
        if self.workload == WorkloadKind::Cart {
            anyhow::ensure!(
                self.rate.is_none(),
                "the cart workload runs a closed loop only (drop --rate)"
            );
        }
        Ok(())
    }

    fn config(&self, target: Target) -> RunConfig {
        RunConfig {
            target,
            spec: WorkloadSpec::new(
                self.workload,
                self.stock,
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

async fn run_one(knobs: &Knobs, target: Target) -> anyhow::Result<RunResult> {
    let cfg = knobs.config(target);
    let ordo_bin = if target.is_ordo() {
        knobs.ordo_bin()?
    } else {
        PathBuf::new()
    };
    if knobs.workload == WorkloadKind::Cart {
        cart::supported(target)
            .map_err(|why| anyhow::anyhow!("{target} cannot run the cart workload: {why}"))?;
    }
    let server = Server::start(target, &ordo_bin, knobs.partitions)
        .await
        .with_context(|| format!("starting {target}"))?;
    let run = if knobs.workload == WorkloadKind::Cart {
        cart::run(&server, &cfg).await
    } else {
        runner::run(&server, &cfg).await
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
        Command::Run { target, knobs } => {
            knobs.validate()?;
            let result = run_one(&knobs, target).await?;
            finish(&knobs.out, &[result])
        }
        Command::Compare { targets, knobs } => {
            knobs.validate()?;
            anyhow::ensure!(!targets.is_empty(), "--targets is empty");
            let targets = if knobs.workload == WorkloadKind::Cart {
                // Targets without a cart design are skipped, each with the reason; the
                // others still run.
                let (runnable, skipped) = cart::split_targets(&targets);
                for (target, why) in &skipped {
                    eprintln!("skipping {target}: {why}");
                }
                anyhow::ensure!(
                    !runnable.is_empty(),
                    "none of --targets can run the cart workload (ordo-1, ordo-3, postgres, redis, redis-everysec can)"
                );
                runnable
            } else {
                targets
            };
            let mut runs = Vec::new();
            for target in targets {
                let result = run_one(&knobs, target).await?;
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
                eprintln!(
                    "{target}: {:.0} ops/s, p99 {:.2} ms{carts}, check {}",
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
