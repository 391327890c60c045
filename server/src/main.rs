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
use ordo_sequencer::peers::{ClusterSecret, MemberAddr, PEER_PORT_OFFSET};
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
        /// The first node's client address; more nodes take the following ports.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// The first node's peer address [default: the client port + 1000]; more nodes take
        /// the following ports. The cluster secret is written to DATA_DIR/cluster-secret.
        #[arg(long)]
        peer_listen: Option<SocketAddr>,
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
        /// The client listener: ordo.v1, health, reflection.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// The peer listener: Raft, forwarding, read index; calls need the cluster secret
        /// [default: the client port + 1000 on the same host].
        #[arg(long)]
        peer_listen: Option<SocketAddr>,
        /// A file holding the cluster secret (at least 16 printable bytes), the same on every
        /// node; required with --peer. `ordo dev` writes one.
        #[arg(long)]
        cluster_secret_file: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The address clients reach this node at (default: its --peer entry's client
        /// address, else the bound address).
        #[arg(long)]
        advertise: Option<String>,
        /// A cluster member ID=PEER_HOST:PORT (its peer listener; its client port is taken
        /// to be 1000 lower), or ID=PEER_HOST:PORT,CLIENT_HOST:PORT; repeat for each member,
        /// this node included.
        #[arg(long = "peer", value_parser = cli::parse_peer)]
        peers: Vec<(u64, MemberAddr)>,
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
    /// Add a node (ID=HOST:PORT, its client address): it joins as a learner, catches up,
    /// then votes. It must run with the cluster's secret file.
    Add {
        #[arg(value_parser = cli::parse_member)]
        member: (u64, String),
        /// Its peer listener [default: its client port + 1000 on the same host].
        #[arg(long)]
        peer_addr: Option<String>,
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
    peer_listen: Option<SocketAddr>,
    cluster_secret_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    advertise: Option<String>,
    /// `[peers]` table: node id (as a string key) = "PEER_HOST:PORT" or
    /// "PEER_HOST:PORT,CLIENT_HOST:PORT", as `--peer`.
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

/// Where nodes listen and what they share.
struct Listeners {
    listen: SocketAddr,
    peer_listen: SocketAddr,
    advertise: Option<String>,
    secret: Option<ClusterSecret>,
}

/// The peer listener when none is given: the client port + 1000 on the same address (an
/// ephemeral port when the client port is).
fn default_peer_listen(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    let port = match listen.port() {
        0 => 0,
        p => p.checked_add(PEER_PORT_OFFSET).with_context(|| {
            format!("client port {p} + {PEER_PORT_OFFSET} is no port: give --peer-listen")
        })?,
    };
    Ok(SocketAddr::new(listen.ip(), port))
}

fn read_secret(path: &std::path::Path) -> anyhow::Result<ClusterSecret> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the cluster secret file {}", path.display()))?;
    ClusterSecret::new(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// `ordo dev`'s secret: DATA_DIR/cluster-secret, made (32 random bytes, hex, mode 0600) the
/// first time.
fn dev_secret(data_dir: &std::path::Path) -> anyhow::Result<ClusterSecret> {
    use std::io::Read;
    let path = data_dir.join("cluster-secret");
    if !path.exists() {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .context("reading /dev/urandom for a cluster secret")?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        use std::io::Write;
        options
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{hex}\n").as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    read_secret(&path)
}

fn serve_options(
    node_id: u64,
    listeners: Listeners,
    data_dir: PathBuf,
    peers: BTreeMap<u64, MemberAddr>,
    tuning: Tuning,
) -> serve::ServeOptions {
    let defaults = SequencerConfig::default();
    serve::ServeOptions {
        node_id,
        listen: listeners.listen,
        peer_listen: listeners.peer_listen,
        advertise: listeners.advertise,
        secret: listeners.secret,
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
    peer_listen: Option<SocketAddr>,
    cluster_secret_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    advertise: Option<String>,
    peers: Vec<(u64, MemberAddr)>,
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
        .or_else(|| peer_map.get(&node_id).map(|a| a.client.clone()));
    let peer_listen = match peer_listen.or(file.peer_listen) {
        Some(addr) => addr,
        None => default_peer_listen(listen)?,
    };
    let secret = cluster_secret_file
        .or(file.cluster_secret_file)
        .map(|path| read_secret(&path))
        .transpose()?;
    anyhow::ensure!(
        peer_map.is_empty() || secret.is_some(),
        "--cluster-secret-file is required with --peer: peer calls carry the cluster secret \
         (the same file on every node)"
    );
    let listeners = Listeners {
        listen,
        peer_listen,
        advertise,
        secret,
    };
    Ok(serve_options(
        node_id,
        listeners,
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
            peer_listen,
            nodes,
            tuning,
        } => {
            init_tracing();
            let listeners = peer_listen
                .map(Ok)
                .unwrap_or_else(|| default_peer_listen(listen))
                .and_then(|peer_listen| {
                    Ok(Listeners {
                        listen,
                        peer_listen,
                        advertise: None,
                        secret: Some(dev_secret(&data_dir)?),
                    })
                });
            let listeners = match listeners {
                Ok(l) => l,
                Err(e) => return report(Err(e)),
            };
            let opts = serve_options(1, listeners, data_dir, BTreeMap::new(), tuning);
            if nodes == 1 {
                report(serve::serve(opts, true).await)
            } else {
                report(serve::serve_dev_cluster(opts, nodes).await)
            }
        }
        Command::Server {
            node_id,
            listen,
            peer_listen,
            cluster_secret_file,
            data_dir,
            advertise,
            peers,
            config,
            tuning,
        } => {
            init_tracing();
            let options = server_options(
                node_id,
                listen,
                peer_listen,
                cluster_secret_file,
                data_dir,
                advertise,
                peers,
                config,
                tuning,
            );
            match options {
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
            MemberAction::Add {
                member,
                peer_addr,
                conn,
            } => {
                run_client(conn, |c| async move {
                    cli::member_add(&c, member.0, member.1, peer_addr).await
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
