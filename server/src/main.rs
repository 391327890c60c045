//! The `ordo` binary: run a node (`dev`, `server`), talk to one (`order`, `stock`, `restock`,
//! `get-order`, `status`), or check a stopped node's log (`replay`).

mod admin;
mod cli;
mod convert;
mod demo;
mod edge;
mod fault;
mod limits;
mod replay;
mod serve;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
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
    /// Run a dev node (or a local cluster with --nodes) with demo data (12 DCs, 1,000 SKUs).
    Dev {
        #[arg(long, default_value = "./ordo-data")]
        data_dir: PathBuf,
        /// The first node's address; more nodes take the following ports.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// Nodes in the local cluster (each with its own data directory under --data-dir).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=7))]
        nodes: u64,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Run a node. With --peer (every voter, this node included) it is one node of a cluster
    /// that `ordo cluster-init` initialises; without, a single node that initialises itself.
    Server {
        #[arg(long)]
        node_id: Option<u64>,
        #[arg(long)]
        listen: Option<SocketAddr>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The address clients and peers reach this node at (default: the bound address).
        #[arg(long)]
        advertise: Option<String>,
        /// A cluster member ID=HOST:PORT; repeat for each, this node included.
        #[arg(long = "peer", value_parser = cli::parse_peer)]
        peers: Vec<(u64, String)>,
        /// A TOML file with any of the settings above (flags given here win).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Initialise a cluster's membership from the node's peer list (once; again is a no-op).
    ClusterInit {
        /// Then load the demo dataset through the log, on every replica.
        #[arg(long)]
        demo_data: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Change the cluster's membership.
    Member {
        #[command(subcommand)]
        action: MemberAction,
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
        /// Confirm with the leader before reading (read index).
        #[arg(long)]
        linearizable: bool,
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
    /// Move stock of a SKU from one DC to another, all or nothing (exit 3 when rejected).
    Transfer {
        sku: u32,
        from_dc: u32,
        to_dc: u32,
        qty: i64,
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
    /// Show a node's status: role, leader, applied epoch, state hash. With --all, every
    /// member's, and whether they agree on the state hash.
    Status {
        #[arg(long)]
        all: bool,
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

#[derive(Subcommand)]
enum MemberAction {
    /// Add a node (ID=HOST:PORT): it joins as a learner, catches up, then votes.
    Add {
        #[arg(value_parser = cli::parse_peer)]
        member: (u64, String),
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a node by id.
    Remove {
        node_id: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Args)]
struct Conn {
    /// A node to talk to; repeat (or separate with commas) for failover between nodes.
    #[arg(
        long,
        default_value = "http://127.0.0.1:50051",
        env = "ORDO_ENDPOINT",
        value_delimiter = ','
    )]
    endpoint: Vec<String>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Node tuning. Unset flags fall back to the config file, then to the defaults.
#[derive(Args, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Tuning {
    /// Region partitions (fixed when the data directory is created) [default: 3]
    #[arg(long)]
    partitions: Option<u32>,
    /// Epoch length in milliseconds [default: 5]
    #[arg(long)]
    epoch_ms: Option<u64>,
    /// Most transactions in one epoch batch [default: 10000]
    #[arg(long)]
    batch_txns_max: Option<usize>,
    /// Most bytes in one epoch batch [default: 4194304]
    #[arg(long)]
    batch_bytes_max: Option<usize>,
    /// Most transactions waiting in the sequencer queue; more get RESOURCE_EXHAUSTED [default: 100000]
    #[arg(long)]
    queue_txns_max: Option<usize>,
    /// Most batches proposed (or forwarded) but not yet committed [default: 64]
    #[arg(long)]
    proposals_in_flight_max: Option<usize>,
    /// How long a write waits for its result, in milliseconds [default: 10000]
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    /// Raft entries (epochs) between snapshots [default: 20000]
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Largest gRPC message accepted, in bytes [default: 4194304]
    #[arg(long)]
    message_bytes_max: Option<usize>,
    /// Accept fault-injection admin calls (SetClockFault: skew this node's sequencer clock).
    /// For fault tests such as ordo-jepsen; never on a production node.
    #[arg(long)]
    #[serde(default)]
    fault_injection: bool,
}

impl Tuning {
    /// This, with unset fields taken from `other`.
    fn or(self, other: Tuning) -> Tuning {
        Tuning {
            partitions: self.partitions.or(other.partitions),
            epoch_ms: self.epoch_ms.or(other.epoch_ms),
            batch_txns_max: self.batch_txns_max.or(other.batch_txns_max),
            batch_bytes_max: self.batch_bytes_max.or(other.batch_bytes_max),
            queue_txns_max: self.queue_txns_max.or(other.queue_txns_max),
            proposals_in_flight_max: self
                .proposals_in_flight_max
                .or(other.proposals_in_flight_max),
            request_timeout_ms: self.request_timeout_ms.or(other.request_timeout_ms),
            snapshot_every: self.snapshot_every.or(other.snapshot_every),
            message_bytes_max: self.message_bytes_max.or(other.message_bytes_max),
            fault_injection: self.fault_injection || other.fault_injection,
        }
    }
}

/// `ordo server --config FILE`.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    node_id: Option<u64>,
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    advertise: Option<String>,
    /// `[peers]` table: node id (as a string key) = "HOST:PORT".
    #[serde(default)]
    peers: BTreeMap<String, String>,
    #[serde(default)]
    tuning: Tuning,
}

fn read_config(path: &std::path::Path) -> anyhow::Result<ConfigFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn serve_options(
    node_id: u64,
    listen: SocketAddr,
    advertise: Option<String>,
    data_dir: PathBuf,
    peers: BTreeMap<u64, String>,
    tuning: Tuning,
) -> serve::ServeOptions {
    let defaults = SequencerConfig::default();
    serve::ServeOptions {
        node_id,
        listen,
        advertise,
        data_dir,
        peers,
        partitions: tuning.partitions.unwrap_or(3),
        sequencer: SequencerConfig {
            epoch_ms: tuning.epoch_ms.unwrap_or(defaults.epoch_ms),
            batch_txns_max: tuning.batch_txns_max.unwrap_or(defaults.batch_txns_max),
            batch_bytes_max: tuning.batch_bytes_max.unwrap_or(defaults.batch_bytes_max),
            queue_txns_max: tuning.queue_txns_max.unwrap_or(defaults.queue_txns_max),
            proposals_in_flight_max: tuning
                .proposals_in_flight_max
                .unwrap_or(defaults.proposals_in_flight_max),
        },
        snapshot_every_entries: tuning.snapshot_every.unwrap_or(20_000).max(100),
        fault_injection: tuning.fault_injection,
        limits: limits::Limits {
            request_timeout: Duration::from_millis(tuning.request_timeout_ms.unwrap_or(10_000)),
            message_bytes_max: tuning.message_bytes_max.unwrap_or(4 * 1024 * 1024),
            ..limits::Limits::default()
        },
    }
}

/// Resolves `ordo server`'s settings: flags, then the config file.
#[allow(clippy::too_many_arguments)]
fn server_options(
    node_id: Option<u64>,
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    advertise: Option<String>,
    peers: Vec<(u64, String)>,
    config: Option<PathBuf>,
    tuning: Tuning,
) -> anyhow::Result<serve::ServeOptions> {
    let file = match &config {
        Some(path) => read_config(path)?,
        None => ConfigFile::default(),
    };
    let node_id = node_id.or(file.node_id).context("--node-id is required")?;
    anyhow::ensure!(node_id >= 1, "--node-id must be at least 1");
    let listen = listen.or(file.listen).context("--listen is required")?;
    let data_dir = data_dir
        .or(file.data_dir)
        .context("--data-dir is required")?;
    let mut peer_map = BTreeMap::new();
    if peers.is_empty() {
        for (id, addr) in file.peers {
            let (id, addr) = cli::parse_peer(&format!("{id}={addr}"))
                .map_err(|e| anyhow::anyhow!("config peers: {e}"))?;
            peer_map.insert(id, addr);
        }
    } else {
        for (id, addr) in peers {
            anyhow::ensure!(
                peer_map.insert(id, addr).is_none(),
                "--peer {id} is given twice"
            );
        }
    }
    if !peer_map.is_empty() {
        anyhow::ensure!(
            peer_map.contains_key(&node_id),
            "the peer list must include this node ({node_id}=HOST:PORT)"
        );
    }
    let advertise = advertise
        .or(file.advertise)
        .or_else(|| peer_map.get(&node_id).cloned());
    Ok(serve_options(
        node_id,
        listen,
        advertise,
        data_dir,
        peer_map,
        tuning.or(file.tuning),
    ))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error,sled=warn"));
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
    let output = match Client::connect_many(conn.endpoint.clone()).await {
        Ok(client) => match f(client).await {
            Ok(out) => out,
            Err(e) => cli::error_output(&e),
        },
        Err(e) => cli::error_output(&e),
    };
    if conn.json {
        println!("{}", output.json);
    } else if output.is_error {
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
            nodes,
            tuning,
        } => {
            init_tracing();
            let opts = serve_options(1, listen, None, data_dir, BTreeMap::new(), tuning);
            if nodes == 1 {
                report(serve::serve(opts, true).await)
            } else {
                report(serve::serve_dev_cluster(opts, nodes).await)
            }
        }
        Command::Server {
            node_id,
            listen,
            data_dir,
            advertise,
            peers,
            config,
            tuning,
        } => {
            init_tracing();
            match server_options(node_id, listen, data_dir, advertise, peers, config, tuning) {
                Ok(opts) => report(serve::serve(opts, false).await),
                Err(e) => report(Err(e)),
            }
        }
        Command::ClusterInit { demo_data, conn } => {
            run_client(
                conn,
                |c| async move { cli::cluster_init(&c, demo_data).await },
            )
            .await
        }
        Command::Member { action } => match action {
            MemberAction::Add { member, conn } => {
                run_client(conn, |c| async move {
                    cli::member_add(&c, member.0, member.1).await
                })
                .await
            }
            MemberAction::Remove { node_id, conn } => {
                run_client(
                    conn,
                    |c| async move { cli::member_remove(&c, node_id).await },
                )
                .await
            }
        },
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
        Command::Stock {
            dc,
            sku,
            linearizable,
            conn,
        } => {
            run_client(conn, |c| async move {
                let c = if linearizable {
                    c.with_consistency(ordo_client::Consistency::Linearizable)
                } else {
                    c
                };
                cli::stock(&c, dc, sku).await
            })
            .await
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
        Command::Transfer {
            sku,
            from_dc,
            to_dc,
            qty,
            request_id,
            conn,
        } => {
            run_client(conn, |c| async move {
                cli::transfer(&c, sku, from_dc, to_dc, qty, request_id).await
            })
            .await
        }
        Command::GetOrder { order_id, conn } => {
            run_client(conn, |c| async move { cli::get_order(&c, order_id).await }).await
        }
        Command::Status { all, conn } => {
            run_client(conn, |c| async move {
                if all {
                    cli::status_all(&c).await
                } else {
                    cli::status(&c).await
                }
            })
            .await
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
