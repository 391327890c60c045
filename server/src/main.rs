//! The `ordo` binary: run a node (`dev`, `server`), talk to one (`order`, `stock`, `restock`,
//! `get-order`, `status`), or check a stopped node's log (`replay`).

mod admin;
mod cli;
mod convert;
mod demo;
mod edge;
mod limits;
mod replay;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ordo_client::Client;
use ordo_sequencer::SequencerConfig;

#[derive(Parser)]
#[command(
    name = "ordo",
    version,
    about = "Ordo: a deterministic transaction database for inventory and orders"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a single dev node with demo data (12 DCs, 1,000 SKUs) in a local data directory.
    Dev {
        #[arg(long, default_value = "./ordo-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Run a node.
    Server {
        #[arg(long)]
        node_id: u64,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        data_dir: PathBuf,
        /// The address clients and peers reach this node at (default: the bound address).
        #[arg(long)]
        advertise: Option<String>,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Place an order.
    Order {
        /// An order line DC:SKU:QTY; repeat for more lines.
        #[arg(long = "line", required = true, value_parser = cli::parse_line)]
        lines: Vec<ordo_client::Line>,
        /// Allocate what is available instead of all-or-nothing.
        #[arg(long)]
        partial: bool,
        /// Idempotency key: the same id again returns the first result and changes nothing.
        #[arg(long)]
        request_id: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show the stock of a SKU at a DC.
    Stock {
        dc: u32,
        sku: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Add a signed delta to a DC's on-hand stock (negative to adjust down).
    #[command(allow_negative_numbers = true)]
    Restock {
        dc: u32,
        sku: u32,
        delta: i64,
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a committed order.
    GetOrder {
        order_id: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a node's status: role, leader, applied epoch, state hash.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
    /// Re-execute a stopped node's log in a scratch store and compare state hashes.
    Replay {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct Conn {
    #[arg(long, default_value = "http://127.0.0.1:50051", env = "ORDO_ENDPOINT")]
    endpoint: String,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct Tuning {
    /// Region partitions (fixed when the data directory is created).
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// Epoch length in milliseconds.
    #[arg(long, default_value_t = 5)]
    epoch_ms: u64,
    /// Most transactions in one epoch batch.
    #[arg(long, default_value_t = 10_000)]
    batch_txns_max: usize,
    /// Most transactions waiting in the sequencer queue; more get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 100_000)]
    queue_txns_max: usize,
    /// Most batches proposed but not yet committed.
    #[arg(long, default_value_t = 64)]
    proposals_in_flight_max: usize,
    /// How long a write waits for its result, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// Raft entries (epochs) between snapshots.
    #[arg(long, default_value_t = 20_000)]
    snapshot_every: u64,
    /// Largest gRPC message accepted, in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    message_bytes_max: usize,
}

fn serve_options(
    node_id: u64,
    listen: SocketAddr,
    advertise: Option<String>,
    data_dir: PathBuf,
    tuning: Tuning,
    dev: bool,
) -> serve::ServeOptions {
    serve::ServeOptions {
        node_id,
        listen,
        advertise,
        data_dir,
        partitions: tuning.partitions,
        sequencer: SequencerConfig {
            epoch_ms: tuning.epoch_ms,
            batch_txns_max: tuning.batch_txns_max,
            queue_txns_max: tuning.queue_txns_max,
            proposals_in_flight_max: tuning.proposals_in_flight_max,
        },
        snapshot_every_entries: tuning.snapshot_every.max(100),
        limits: limits::Limits {
            request_timeout: Duration::from_millis(tuning.request_timeout_ms),
            message_bytes_max: tuning.message_bytes_max,
            ..limits::Limits::default()
        },
        dev,
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run_client<F, Fut>(conn: Conn, f: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<cli::Output, ordo_client::Error>>,
{
    let output = match Client::connect(conn.endpoint.clone()).await {
        Ok(client) => match f(client).await {
            Ok(out) => out,
            Err(e) => cli::error_output(&e),
        },
        Err(e) => cli::error_output(&e),
    };
    if conn.json {
        println!("{}", output.json);
    } else if output.exit == cli::EXIT_ERROR {
        eprintln!("{}", output.human);
    } else {
        println!("{}", output.human);
    }
    ExitCode::from(output.exit)
}

#[tokio::main]
async fn main() -> ExitCode {
    // Usage errors exit 1 like every other error (clap's own default is 2); help exits 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { cli::EXIT_ERROR } else { 0 });
        }
    };
    match cli.command {
        Command::Dev {
            data_dir,
            listen,
            tuning,
        } => {
            init_tracing();
            let opts = serve_options(1, listen, None, data_dir, tuning, true);
            report(serve::serve(opts).await)
        }
        Command::Server {
            node_id,
            listen,
            data_dir,
            advertise,
            tuning,
        } => {
            init_tracing();
            if node_id == 0 {
                eprintln!("error: --node-id must be at least 1");
                return ExitCode::from(cli::EXIT_ERROR);
            }
            let opts = serve_options(node_id, listen, advertise, data_dir, tuning, false);
            report(serve::serve(opts).await)
        }
        Command::Order {
            lines,
            partial,
            request_id,
            user,
            conn,
        } => {
            run_client(conn, |c| async move {
                cli::order(&c, lines, partial, request_id, user).await
            })
            .await
        }
        Command::Stock { dc, sku, conn } => {
            run_client(conn, |c| async move { cli::stock(&c, dc, sku).await }).await
        }
        Command::Restock {
            dc,
            sku,
            delta,
            request_id,
            conn,
        } => {
            run_client(conn, |c| async move {
                cli::restock(&c, dc, sku, delta, request_id).await
            })
            .await
        }
        Command::GetOrder { order_id, conn } => {
            run_client(conn, |c| async move { cli::get_order(&c, order_id).await }).await
        }
        Command::Status { conn } => {
            run_client(conn, |c| async move { cli::status(&c).await }).await
        }
        Command::Replay { data_dir, json } => match replay::replay(&data_dir).await {
            Ok(report) => {
                if json {
                    println!("{}", report.json());
                } else {
                    println!(
                        "replayed {} log entries to epoch {}: state hash {} ({})",
                        report.entries,
                        report.epoch,
                        ordo_storage::hex(&report.replayed_hash),
                        if report.matches() {
                            "matches the node's"
                        } else {
                            "DIFFERS from the node's"
                        }
                    );
                }
                ExitCode::from(if report.matches() { 0 } else { 1 })
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(cli::EXIT_ERROR)
            }
        },
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}
