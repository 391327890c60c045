//! The `ordo` binary: run a node (`dev`, `server`), talk to one (`order`, `stock`, `restock`,
//! `get-order`, `status`), or check a stopped node's log (`replay`).

mod admin;
mod auth;
mod backup;
mod cli;
mod cli_feed;
mod cli_geo;
mod cli_holds;
mod config;
mod conns;
mod convert;
mod demo;
mod edge;
mod fault;
mod geo;
mod limits;
mod metrics_http;
mod random;
mod reload;
mod replay;
mod revoke;
mod search;
mod serve;
mod tls;

/// mimalloc rather than glibc's malloc: per-thread heaps whose frees from other threads never
/// take a lock the allocating thread may hold. Under glibc a buffer allocated by a
/// low-priority feed producer and freed after sending, on a request thread, waited on the
/// producer's arena lock while the producer was preempted holding it. Built without
/// transparent huge pages (`no_thp`): with them, every first touch of memory mimalloc had
/// returned to the kernel, or of a new thread's heap, zeroed 2 MiB (18% of the node's CPU
/// under hot-items; BENCHMARKS.md, issue 13).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ordo_client::Client;

use crate::config::{
    default_peer_listen, dev_secret, serve_options, server_options, Listeners, ServerArgs, Tuning,
};

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
    /// Run a dev node (or a local cluster with --nodes) with demo data: in each of 12 cities a
    /// hub DC and 15 to 25 dark stores, 1,000 SKUs.
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
        /// Demo data with this many dark stores (up to 10,000) spread over the 12 cities
        /// [default: 15 to 25 per city]. Loaded on first start only.
        #[arg(long)]
        demo_dcs: Option<u32>,
        /// Demo data with this many SKUs (up to 100,000) [default: 1000]; each dark store
        /// stocks about a fifth of them, at most 250, or with --demo-dcs every one of them, at
        /// most 10,000 (--demo-dcs 10000 --demo-skus 10000: 10⁸ stock rows).
        #[arg(long)]
        demo_skus: Option<u32>,
        /// SKUs each dark store stocks (1 to 10,000, at most --demo-skus) [default: as above].
        #[arg(long)]
        demo_skus_per_store: Option<u32>,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Run a node. With --peer (every voter, this node included) it is one node of a cluster
    /// that `ordo cluster-init` initialises; without, a single node that initialises itself.
    Server(ServerArgs),
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
    /// Place an order: from named DCs (--line), or from the stores near a point (--near with
    /// --item), split across them when no one store has everything.
    Order {
        /// An order line DC:SKU:QTY; repeat for more lines.
        #[arg(long = "line", required_unless_present = "near", conflicts_with = "near", value_parser = cli::parse_line)]
        lines: Vec<ordo_client::Line>,
        /// LAT,LON: fill the order from the stores near this point.
        #[arg(long, value_parser = cli_geo::parse_point, allow_hyphen_values = true, requires = "items")]
        near: Option<(f64, f64)>,
        /// With --near: SKU:QTY from any nearby store; repeat for more.
        #[arg(long = "item", value_parser = cli_geo::parse_item, requires = "near")]
        items: Vec<ordo_client::v1::ItemQty>,
        /// With --near: the radius in metres [default: 10000].
        #[arg(long, default_value_t = 10_000, requires = "near")]
        radius_m: u32,
        /// With --near: fewest-dcs (one store with everything, else fewest shipments) or
        /// nearest-first.
        #[arg(long, default_value = "fewest-dcs", value_parser = ["fewest-dcs", "nearest-first"], requires = "near")]
        policy: String,
        /// With --near: at most this many stores (1 to 50) [default: 50].
        #[arg(long, default_value_t = 0, requires = "near")]
        max_dcs: u32,
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
    #[command(flatten)]
    Holds(cli_holds::HoldCommand),
    #[command(flatten)]
    Geo(cli_geo::GeoCommand),
    #[command(flatten)]
    Feed(cli_feed::FeedCommand),
    /// Show a committed order.
    GetOrder {
        order_id: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a node's status: role, leader, applied epoch, state hash, version, uptime and the
    /// settings every node must share. With --all, every member's, and whether they agree on
    /// the state hash and those settings (exit 1 if not, or if one is unreachable).
    Status {
        #[arg(long, conflicts_with = "hash_at")]
        all: bool,
        /// Also show the node's state hash at this epoch (kept for the last 10,000 epochs):
        /// compare a restored node with its backup's header.
        #[arg(long)]
        hash_at: Option<u64>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stream a consistent backup of a node's whole state at its applied epoch into a file,
    /// while the node goes on serving (needs the `admin` scope).
    Backup {
        /// The backup file (written as FILE.partial, then renamed when whole and checked).
        #[arg(long)]
        out: PathBuf,
        /// Replace --out if it exists.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Make a new node's data directory from a backup file: started alone (`ordo server`
    /// without --peer), it is a new single-node cluster at the backup's epoch and state hash,
    /// which can grow with `ordo member add`.
    Restore {
        /// The backup file (`ordo backup --out`).
        #[arg(long)]
        from: PathBuf,
        /// The new data directory; must be absent or empty.
        #[arg(long)]
        data_dir: PathBuf,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Configuration files.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Certificates for trying TLS.
    Certs {
        #[command(subcommand)]
        action: CertsAction,
    },
    /// Client tokens, for nodes started with --tokens-file.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// The execution settings every replica shares, recorded in the log (`ordo status` shows
    /// them).
    Settings {
        #[command(subcommand)]
        action: SettingsAction,
    },
    /// Re-execute a stopped node's log in a scratch store and compare state hashes.
    Replay {
        #[arg(long)]
        data_dir: PathBuf,
        /// The node's --expiry-per-epoch-max, if it ran with another than the default.
        #[arg(long, default_value_t = ordo_scheduler::ExecConfig::default().expiry_per_epoch_max)]
        expiry_per_epoch_max: usize,
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
        secret: SecretArg,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a node by id.
    Remove {
        node_id: u64,
        #[command(flatten)]
        secret: SecretArg,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Check a config file as `ordo server --config FILE` would take it (unknown keys and bad
    /// values are errors; token and certificate files must load) and print every setting in
    /// effect with its source: file, default, or flag (node_id, listen, data_dir left to
    /// flags). Exit 0 when valid, 1 when not.
    Check {
        file: PathBuf,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CertsAction {
    /// Make a CA (ca.pem, ca-key.pem), a certificate per node (node-N.pem, node-N-key.pem:
    /// for its client port, its peer port and its calls to peers) and one for clients
    /// (client.pem), valid for localhost, 127.0.0.1, ::1 and each --host.
    Generate {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Another name or address the nodes' certificates are valid for; repeat for more.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Add a token to a tokens file (made, mode 0600, if missing) and print it on stdout. It
    /// is shown only now: the file keeps its BLAKE3 digest. Nodes reload the file by
    /// themselves.
    Create {
        #[arg(long)]
        tokens_file: PathBuf,
        /// Letters, digits, '.', '_' and '-': named in PERMISSION_DENIED messages and logs.
        #[arg(long)]
        name: String,
        /// read, write, catalog, admin or metrics (the metrics endpoint alone); repeat for more.
        #[arg(long = "scope", required = true, value_parser = auth::Scope::parse)]
        scopes: Vec<auth::Scope>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SettingsAction {
    /// Change them through the log (needs the `admin` scope): every node applies the change
    /// from the same epoch on, whatever its own flags. Settings not given keep their values.
    Set {
        /// A hold's TTL in seconds when a reserve or extend asks for none.
        #[arg(long)]
        reservation_ttl_s: Option<u32>,
        /// The longest a reservation lives with its extensions, and the longest TTL one may
        /// ask for, in seconds.
        #[arg(long)]
        reservation_ttl_max_s: Option<u32>,
        /// Lapsed holds swept per partition per epoch (reads never depend on it).
        #[arg(long)]
        expiry_per_epoch_max: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Membership changes carry the cluster secret.
#[derive(Args)]
struct SecretArg {
    /// The nodes' cluster secret file; membership changes without it get UNAUTHENTICATED.
    #[arg(long, env = "ORDO_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
}

impl SecretArg {
    /// The client, carrying the secret when there is one.
    fn apply(client: Client, secret: Option<&str>) -> Client {
        match secret {
            Some(s) => client.with_cluster_secret(s),
            None => client,
        }
    }

    /// The secret's text, when a file is given.
    fn read(&self) -> Result<Option<String>, ExitCode> {
        let Some(path) = &self.cluster_secret_file else {
            return Ok(None);
        };
        std::fs::read_to_string(path).map(Some).map_err(|e| {
            eprintln!("error: reading {}: {e}", path.display());
            ExitCode::from(cli::EXIT_ERROR)
        })
    }
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
    /// The token to send (`authorization: Bearer TOKEN`), for a node with --tokens-file.
    #[arg(long, env = "ORDO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The CA (PEM) that issued the nodes' certificates, for https:// endpoints.
    #[arg(long, env = "ORDO_CA")]
    ca: Option<PathBuf>,
}

impl Conn {
    /// A client of the endpoints, over TLS with --ca, sending the token if one is given.
    async fn connect(&self) -> Result<Client, ordo_client::Error> {
        let client = match &self.ca {
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| ordo_client::Error::Connect {
                    endpoint: self.endpoint.join(","),
                    detail: format!("reading the CA {}: {e}", ca.display()),
                })?;
                Client::connect_tls(self.endpoint.clone(), &pem).await?
            }
            None => Client::connect_many(self.endpoint.clone()).await?,
        };
        match &self.token {
            Some(token) => client.with_token(token),
            None => Ok(client),
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG`: text, or one JSON object per line (`--log-format
/// json`: `timestamp`, `level`, `target`, `fields` with `message`, and the `span`s).
fn init_tracing(format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error,sled=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder.json().init(),
    }
}

async fn run_client<F, Fut>(conn: Conn, f: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<cli::Output, ordo_client::Error>>,
{
    let output = match conn.connect().await {
        Ok(client) => match f(client).await {
            Ok(out) => out,
            Err(e) => cli::error_output(&e),
        },
        Err(e) => cli::error_output(&e),
    };
    print_output(output, conn.json)
}

fn print_output(output: cli::Output, json: bool) -> ExitCode {
    use std::io::Write as _;
    // A reader that stops early (`ordo status | head -3`) is not an error of the command's:
    // what it did stands, and so does its exit code.
    let _ = if json {
        writeln!(std::io::stdout(), "{}", output.json)
    } else if output.is_error {
        writeln!(std::io::stderr(), "{}", output.human)
    } else {
        writeln!(std::io::stdout(), "{}", output.human)
    };
    ExitCode::from(output.exit)
}

#[tokio::main]
async fn main() -> ExitCode {
    tls::install_crypto_provider();
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
            demo_dcs,
            demo_skus,
            demo_skus_per_store,
            tuning,
        } => {
            init_tracing(tuning.log_format.unwrap_or_default());
            let spec = match demo::Spec::new(demo_dcs, demo_skus, demo_skus_per_store) {
                Ok(spec) => spec,
                Err(e) => return report(Err(e)),
            };
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
            let opts = match serve_options(1, listeners, data_dir, BTreeMap::new(), tuning) {
                Ok(opts) => opts,
                Err(e) => return report(Err(e)),
            };
            if nodes == 1 {
                report(serve::serve(opts, Some(spec)).await)
            } else {
                report(serve::serve_dev_cluster(opts, nodes, spec).await)
            }
        }
        Command::Server(args) => {
            // The flag, else the config file's (read again by `server_options`; a file that
            // does not parse is reported there).
            let format = args.tuning.log_format.or_else(|| {
                let file = args
                    .config
                    .as_deref()
                    .and_then(|p| config::read_config(p).ok());
                file.and_then(|f| f.tuning.log_format)
            });
            init_tracing(format.unwrap_or_default());
            let options = server_options(args);
            match options {
                Ok(opts) => report(serve::serve(opts, None).await),
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
                secret,
                conn,
            } => {
                let secret = match secret.read() {
                    Ok(s) => s,
                    Err(code) => return code,
                };
                run_client(conn, |c| async move {
                    let c = SecretArg::apply(c, secret.as_deref());
                    cli::member_add(&c, member.0, member.1, peer_addr).await
                })
                .await
            }
            MemberAction::Remove {
                node_id,
                secret,
                conn,
            } => {
                let secret = match secret.read() {
                    Ok(s) => s,
                    Err(code) => return code,
                };
                run_client(conn, |c| async move {
                    let c = SecretArg::apply(c, secret.as_deref());
                    cli::member_remove(&c, node_id).await
                })
                .await
            }
        },
        Command::Order {
            lines,
            near,
            items,
            radius_m,
            policy,
            max_dcs,
            partial,
            request_id,
            user,
            conn,
        } => match near {
            None => {
                run_client(conn, |c| async move {
                    cli::order(&c, lines, partial, request_id, user).await
                })
                .await
            }
            Some((lat, lon)) => {
                let request = ordo_client::v1::PlaceOrderNearbyRequest {
                    request_id: request_id.unwrap_or_default(),
                    user: user.unwrap_or_default(),
                    lat,
                    lon,
                    radius_m,
                    lines: items,
                    policy: match policy.as_str() {
                        "nearest-first" => ordo_client::v1::FillPolicy::NearestFirst,
                        _ => ordo_client::v1::FillPolicy::FewestDcs,
                    } as i32,
                    max_dcs,
                    mode: cli::mode(partial),
                };
                run_client(conn, |c| async move {
                    Ok(cli_geo::nearby_order_output(
                        &c.place_order_nearby(request).await?,
                    ))
                })
                .await
            }
        },
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
        Command::Holds(command) => cli_holds::run(command).await,
        Command::Geo(command) => cli_geo::run(command).await,
        Command::Feed(command) => cli_feed::run(command).await,
        Command::GetOrder { order_id, conn } => {
            run_client(conn, |c| async move { cli::get_order(&c, order_id).await }).await
        }
        Command::Settings {
            action:
                SettingsAction::Set {
                    reservation_ttl_s,
                    reservation_ttl_max_s,
                    expiry_per_epoch_max,
                    conn,
                },
        } => {
            let request = ordo_client::v1::SetExecutionSettingsRequest {
                reservation_ttl_s: reservation_ttl_s.unwrap_or(0),
                reservation_ttl_max_s: reservation_ttl_max_s.unwrap_or(0),
                expiry_per_epoch_max: expiry_per_epoch_max.unwrap_or(0),
            };
            run_client(
                conn,
                |c| async move { cli::set_settings(&c, request).await },
            )
            .await
        }
        Command::Status { all, hash_at, conn } => {
            run_client(conn, |c| async move {
                if all {
                    cli::status_all(&c).await
                } else {
                    cli::status(&c, hash_at).await
                }
            })
            .await
        }
        Command::Backup { out, force, conn } => {
            let json = conn.json;
            let client = match conn.connect().await {
                Ok(c) => c,
                Err(e) => return print_output(cli::error_output(&e), json),
            };
            match backup::backup(&client, &out, force).await {
                Ok(header) => {
                    if json {
                        let mut value = header.json();
                        value["file"] = out.display().to_string().into();
                        println!("{value}");
                    } else {
                        println!(
                            "backup of node {} at epoch {} (state hash {}) written to {} ({:.1} MiB)",
                            header.node_id,
                            header.epoch,
                            header.state_hash,
                            out.display(),
                            header.bytes as f64 / (1024.0 * 1024.0)
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => match e.downcast_ref::<ordo_client::Error>() {
                    Some(e) => print_output(cli::error_output(e), json),
                    None => report(Err(e)),
                },
            }
        }
        Command::Restore {
            from,
            data_dir,
            json,
        } => match backup::restore(&from, &data_dir) {
            Ok(header) => {
                if json {
                    let mut value = header.json();
                    value["data_dir"] = data_dir.display().to_string().into();
                    println!("{value}");
                } else {
                    println!(
                        "restored epoch {} (state hash {}) from {} into {}\n\
                         start it as a new single-node cluster:\n  \
                         ordo server --node-id 1 --listen 127.0.0.1:50051 --data-dir {} \
                         --partitions {}\n\
                         (with --cluster-secret-file FILE it can then grow with `ordo member add`)",
                        header.epoch,
                        header.state_hash,
                        from.display(),
                        data_dir.display(),
                        data_dir.display(),
                        header.partitions
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => report(Err(e)),
        },
        Command::Config {
            action: ConfigAction::Check { file, json },
        } => match config::check(&file) {
            Ok(settings) => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "file": file.display().to_string(),
                            "valid": true,
                            "settings": settings,
                        })
                    );
                } else {
                    println!("{}: valid", file.display());
                    for s in &settings {
                        let value = match &s.value {
                            serde_json::Value::Null if s.source == "flag" => {
                                format!("(give --{})", s.key.replace('_', "-"))
                            }
                            serde_json::Value::Null => "none".to_string(),
                            serde_json::Value::String(text) => text.clone(),
                            other => other.to_string(),
                        };
                        println!("{:<32} {:<40} {}", s.key, value, s.source);
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) if json => {
                println!(
                    "{}",
                    serde_json::json!({
                        "file": file.display().to_string(),
                        "valid": false,
                        "error": format!("{e:#}"),
                    })
                );
                ExitCode::from(cli::EXIT_ERROR)
            }
            Err(e) => report(Err(e)),
        },
        Command::Certs {
            action: CertsAction::Generate { out, nodes, hosts },
        } => match tls::generate(&out, nodes, &hosts) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => report(Err(e)),
        },
        Command::Token {
            action:
                TokenAction::Create {
                    tokens_file,
                    name,
                    scopes,
                    json,
                },
        } => match auth::create(&tokens_file, &name, &scopes) {
            Ok(token) => {
                let scopes: Vec<&str> = scopes.iter().map(|s| s.name()).collect();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "name": name,
                            "token": token,
                            "scopes": scopes,
                            "tokens_file": tokens_file.display().to_string(),
                        })
                    );
                } else {
                    println!("{token}");
                    eprintln!(
                        "token {name:?} ({}) added to {}; it is shown only now",
                        scopes.join(", "),
                        tokens_file.display()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => report(Err(e)),
        },
        Command::Replay {
            data_dir,
            expiry_per_epoch_max,
            json,
        } => match replay::replay(&data_dir, expiry_per_epoch_max).await {
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
