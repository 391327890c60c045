//! `ordo-bench recovery`: a node killed with SIGKILL under load, then how long it takes to come
//! back and whether every acknowledged order is still there.
//!
//! One Ordo node (release binary) is loaded with the uniform workload's dataset at
//! `--stock-rows` (10⁷ by default, a RestockDc call per DC), `--clients` closed-loop clients
//! place one-line orders for `--orders-s` seconds, and the node is killed with SIGKILL while
//! they do. It is started again on the same data directory: the run times how long until it
//! listens and until it answers a linearizable read (its Raft log replayed and its leader
//! elected), then checks the final stock: every row an acknowledged order touched holds at most
//! its initial stock less what was acknowledged (no acknowledged order lost), and no less than
//! that less the orders whose outcome the clients never learned (nothing applied twice), and a
//! sample of untouched rows still holds its initial stock. Exit 1 if the check fails.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ordo_client::{Client, Consistency};
use serde_json::json;

use crate::check::{check, Tally};
use crate::servers::Server;
use crate::targets::{Outcome, Session, Target};
use crate::workload::{Generator, Op, WorkloadKind, WorkloadSpec, SKUS_PER_DC};

#[derive(clap::Args, Clone)]
pub struct RecoveryArgs {
    /// Stock rows in the dataset (1,000 SKUs per DC).
    #[arg(long, default_value_t = 10_000_000)]
    pub stock_rows: u64,
    /// Closed-loop clients placing orders.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Seconds of orders before the kill.
    #[arg(long, default_value_t = 20)]
    pub orders_s: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Ordo's region partitions.
    #[arg(long, default_value_t = 3)]
    pub partitions: u32,
    /// The `ordo` binary.
    #[arg(long, default_value = "target/release/ordo")]
    pub ordo_bin: std::path::PathBuf,
    /// Where to write results.json.
    #[arg(long, default_value = "bench-results/recovery")]
    pub out: std::path::PathBuf,
}

/// How long the restarted node may take to answer a linearizable read.
const SERVE_TIMEOUT: Duration = Duration::from_secs(600);

pub async fn run(args: RecoveryArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(
        args.stock_rows.is_multiple_of(SKUS_PER_DC) && args.stock_rows >= 3 * SKUS_PER_DC,
        "--stock-rows must be a multiple of {SKUS_PER_DC}, at least {}",
        3 * SKUS_PER_DC
    );
    anyhow::ensure!(
        (1..=4096).contains(&args.clients),
        "--clients must be 1..=4096"
    );
    anyhow::ensure!(args.orders_s >= 1, "--orders-s must be at least 1");
    let spec = WorkloadSpec::new(
        WorkloadKind::Uniform,
        None,
        Some(args.stock_rows),
        0.99,
        0.0,
        0,
    );
    let dataset = spec.dataset;
    let mut server = Server::start(
        Target::Ordo1,
        &args.ordo_bin,
        args.partitions,
        &[],
        Default::default(),
    )
    .await
    .context("starting ordo")?;
    let ep = server.endpoints.clone();

    eprintln!("loading {} stock rows", args.stock_rows);
    let started = Instant::now();
    Session::open(&ep, 0)
        .await?
        .load(&dataset)
        .await
        .context("loading the dataset")?;
    let load_s = started.elapsed().as_secs_f64();
    let rss_loaded_mib = server.rss_bytes() as f64 / (1024.0 * 1024.0);
    eprintln!("loaded in {load_s:.1} s; the node holds {rss_loaded_mib:.0} MiB");

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let mut session = Session::open(&ep, i).await?;
        let mut gen = Generator::new(&spec, args.seed, i as u64);
        let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
        clients.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let Op::Order(lines) = gen.next_op() else {
                    continue;
                };
                let outcome = session.order(&lines).await;
                if matches!(outcome, Outcome::Ok) {
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                }
                tally.order(&lines, &outcome);
            }
            tally
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.orders_s)).await;
    let acknowledged_before_kill = acknowledged.load(Ordering::Relaxed);
    eprintln!("{acknowledged_before_kill} orders acknowledged; kill -9");
    server.kill_node(0)?;
    stop.store(true, Ordering::Relaxed);

    let restarted = Instant::now();
    server.restart_node(0)?;
    let listening_s = restarted.elapsed().as_secs_f64();
    let probe = Client::connect(ep.urls[0].clone())
        .await?
        .with_consistency(Consistency::Linearizable);
    loop {
        if probe.get_stock(1, 1).await.is_ok() {
            break;
        }
        anyhow::ensure!(
            restarted.elapsed() < SERVE_TIMEOUT,
            "the restarted node did not answer within {SERVE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let serving_s = restarted.elapsed().as_secs_f64();
    let rss_restarted_mib = server.rss_bytes() as f64 / (1024.0 * 1024.0);
    eprintln!("listening {listening_s:.2} s and serving {serving_s:.2} s after the restart");

    let mut tally = Tally::default();
    for client in clients {
        tally.merge(client.await.context("a client task failed")?);
    }
    let final_stock = Session::open(&ep, 0)
        .await?
        .final_stock(&dataset, &tally)
        .await
        .context("reading the final stock back")?;
    let result = check(&dataset, &tally, &final_stock);
    let report = json!({
        "stock_rows": args.stock_rows,
        "clients": args.clients,
        "load_s": load_s,
        "server_rss_mib_loaded": rss_loaded_mib,
        "server_rss_mib_per_million_rows": rss_loaded_mib * 1e6 / args.stock_rows as f64,
        "orders_acknowledged_before_kill": acknowledged_before_kill,
        "orders_per_s_before_kill": acknowledged_before_kill as f64 / args.orders_s as f64,
        "restart_to_listening_s": listening_s,
        "restart_to_serving_s": serving_s,
        "server_rss_mib_restarted": rss_restarted_mib,
        "check": result,
    });
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!(
        "| stock rows | load s | RSS MiB loaded | MiB per million rows | orders acknowledged before kill -9 | restart to listening s | restart to serving s | RSS MiB after restart | check |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    println!(
        "| {} | {:.0} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {:.0} | {} |",
        args.stock_rows,
        load_s,
        rss_loaded_mib,
        rss_loaded_mib * 1e6 / args.stock_rows as f64,
        acknowledged_before_kill,
        listening_s,
        serving_s,
        rss_restarted_mib,
        if result.ok {
            format!(
                "ok ({} acknowledged orders all present, {} rows read back)",
                result.orders_ok,
                final_stock.len()
            )
        } else {
            format!("FAILED: {}", result.problems.join("; "))
        }
    );
    println!("results in {}", args.out.display());
    Ok(result.ok)
}
