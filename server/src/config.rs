//! Node configuration, resolved in one place: command-line flags, then the config file, then
//! the defaults. `ordo dev` and `ordo server` both end in [`serve::ServeOptions`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ordo_scheduler::{validate, ExecConfig};
use ordo_sequencer::peers::{ClusterSecret, MemberAddr, PEER_PORT_OFFSET};
use ordo_sequencer::SequencerConfig;

use crate::{cli, limits, serve};

/// Node settings `ordo dev` and `ordo server` share. Unset flags fall back to the config file,
/// then to the defaults.
#[derive(Args, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    /// Region partitions (fixed when the data directory is created) [default: 3]
    #[arg(long)]
    pub partitions: Option<u32>,
    /// sled's page cache in MiB: rows beyond it are read back from disk and decoded again
    /// when touched (the process uses a multiple of it) [default: 1024]
    #[arg(long)]
    pub store_cache_mb: Option<u64>,
    /// Epoch length in milliseconds [default: 5]
    #[arg(long)]
    pub epoch_ms: Option<u64>,
    /// Most transactions in one epoch batch [default: 10000]
    #[arg(long)]
    pub batch_txns_max: Option<usize>,
    /// Most bytes in one epoch batch [default: 4194304]
    #[arg(long)]
    pub batch_bytes_max: Option<usize>,
    /// Most transactions waiting in the sequencer queue; more get RESOURCE_EXHAUSTED [default: 100000]
    #[arg(long)]
    pub queue_txns_max: Option<usize>,
    /// Most batches proposed (or forwarded) but not yet committed [default: 64]
    #[arg(long)]
    pub proposals_in_flight_max: Option<usize>,
    /// How long a write waits for its result, in milliseconds [default: 10000]
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// Raft entries (epochs) between snapshots [default: 20000]
    #[arg(long)]
    pub snapshot_every: Option<u64>,
    /// Largest gRPC message accepted, in bytes [default: 4194304]
    #[arg(long)]
    pub message_bytes_max: Option<usize>,
    /// A hold's TTL in seconds when a reserve asks for none [default: 600]
    #[arg(long)]
    pub reservation_ttl_s: Option<u32>,
    /// The longest TTL a reserve or extend may ask for, and the longest a reservation lives
    /// with its extensions, in seconds [default: 86400]
    #[arg(long)]
    pub reservation_ttl_max_s: Option<u32>,
    /// Most lapsed holds swept per partition per epoch; the rest in the next epochs (reads
    /// never depend on it). Must be the same on every node [default: 10000]
    #[arg(long)]
    pub expiry_per_epoch_max: Option<usize>,
    /// Change-feed events kept for Watch, in epochs back from the newest [default: 1000000]
    #[arg(long)]
    pub feed_retention_epochs: Option<u64>,
    /// ... and in bytes: the oldest epochs' events go first past it [default: 268435456]
    #[arg(long)]
    pub feed_retention_bytes: Option<u64>,
    /// Watch streams this node serves at once; more get RESOURCE_EXHAUSTED [default: 1024]
    #[arg(long)]
    pub watchers_max: Option<usize>,
    /// Messages one Watch or WatchNotifications stream buffers [default: 256]
    #[arg(long)]
    pub watch_buffer_messages: Option<usize>,
    /// Bytes one Watch or WatchNotifications stream buffers, 1 MiB or more [default: 4194304]
    #[arg(long)]
    pub watch_buffer_bytes: Option<usize>,
    /// Bytes all streams of this node buffer together; a stream waits for room, and its
    /// consumer is held to the stall rule meanwhile [default: 268435456]
    #[arg(long)]
    pub streams_buffer_bytes_max: Option<usize>,
    /// The stall window, in milliseconds: while a stream is backed up, its consumer must take
    /// a quarter of what waits for it in every window, or the stream ends with
    /// RESOURCE_EXHAUSTED and a resume token [default: 10000]
    #[arg(long)]
    pub watch_stall_ms: Option<u64>,
    /// Connections the client port keeps at once; more are closed at once [default: 8192]
    #[arg(long)]
    pub connections_max: Option<usize>,
    /// ... from one source address [default: 2048]
    #[arg(long)]
    pub connections_per_source_max: Option<usize>,
    /// A connection (either port) with no byte either way for this long is closed, in
    /// milliseconds; one that sends nothing at all, after at most 10 s [default: 300000]
    #[arg(long)]
    pub connection_idle_ms: Option<u64>,
    /// Subscriptions per second all WatchNotifications streams together may read, so that a
    /// fan-out to a million subscribers leaves the epochs' latency alone; 0: unpaced
    /// [default: 250000]
    #[arg(long)]
    pub notify_rate: Option<u64>,
    /// Accept fault-injection admin calls (SetClockFault: skew this node's sequencer clock).
    /// For fault tests such as ordo-jepsen; never on a production node.
    #[arg(long)]
    #[serde(default)]
    pub fault_injection: bool,
    /// Client tokens and their scopes (`ordo token create` makes and adds to one); every call
    /// but health checks then needs `authorization: Bearer TOKEN`. Reloaded when it changes.
    #[arg(long)]
    pub tokens_file: Option<PathBuf>,
    /// TLS on the client port: this certificate (PEM, with its chain) ...
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// ... and its private key (PEM). Clients then use https:// and --ca.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS on the peer port and on calls to peers: this node's certificate ...
    #[arg(long)]
    pub peer_tls_cert: Option<PathBuf>,
    /// ... its private key ...
    #[arg(long)]
    pub peer_tls_key: Option<PathBuf>,
    /// ... and the CA that issued every node's certificate: a peer without one is refused.
    #[arg(long)]
    pub peer_ca: Option<PathBuf>,
    /// Serve Prometheus metrics (text format, GET /metrics) on this address. With
    /// --tokens-file a scrape needs a token with the `metrics` (or `admin`) scope; without,
    /// it is open, so keep it on a private address.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve clients without tokens on an address other than loopback (without it such a
    /// node refuses to start unless --tokens-file is given).
    #[arg(long)]
    #[serde(default)]
    pub insecure_no_auth: bool,
    /// Log lines as text or as one JSON object each (to stderr; RUST_LOG filters) [default: text]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl Tuning {
    /// This, with unset fields taken from `other`.
    fn or(self, other: Tuning) -> Tuning {
        Tuning {
            partitions: self.partitions.or(other.partitions),
            store_cache_mb: self.store_cache_mb.or(other.store_cache_mb),
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
            reservation_ttl_s: self.reservation_ttl_s.or(other.reservation_ttl_s),
            reservation_ttl_max_s: self.reservation_ttl_max_s.or(other.reservation_ttl_max_s),
            expiry_per_epoch_max: self.expiry_per_epoch_max.or(other.expiry_per_epoch_max),
            feed_retention_epochs: self.feed_retention_epochs.or(other.feed_retention_epochs),
            feed_retention_bytes: self.feed_retention_bytes.or(other.feed_retention_bytes),
            watchers_max: self.watchers_max.or(other.watchers_max),
            watch_buffer_messages: self.watch_buffer_messages.or(other.watch_buffer_messages),
            watch_buffer_bytes: self.watch_buffer_bytes.or(other.watch_buffer_bytes),
            streams_buffer_bytes_max: self
                .streams_buffer_bytes_max
                .or(other.streams_buffer_bytes_max),
            watch_stall_ms: self.watch_stall_ms.or(other.watch_stall_ms),
            connections_max: self.connections_max.or(other.connections_max),
            connections_per_source_max: self
                .connections_per_source_max
                .or(other.connections_per_source_max),
            connection_idle_ms: self.connection_idle_ms.or(other.connection_idle_ms),
            notify_rate: self.notify_rate.or(other.notify_rate),
            fault_injection: self.fault_injection || other.fault_injection,
            tokens_file: self.tokens_file.or(other.tokens_file),
            tls_cert: self.tls_cert.or(other.tls_cert),
            tls_key: self.tls_key.or(other.tls_key),
            peer_tls_cert: self.peer_tls_cert.or(other.peer_tls_cert),
            peer_tls_key: self.peer_tls_key.or(other.peer_tls_key),
            peer_ca: self.peer_ca.or(other.peer_ca),
            metrics_listen: self.metrics_listen.or(other.metrics_listen),
            insecure_no_auth: self.insecure_no_auth || other.insecure_no_auth,
            log_format: self.log_format.or(other.log_format),
        }
    }
}

/// `ordo server --config FILE`.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub node_id: Option<u64>,
    pub listen: Option<SocketAddr>,
    pub peer_listen: Option<SocketAddr>,
    pub cluster_secret_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub advertise: Option<String>,
    /// `[peers]` table: node id (as a string key) = "PEER_HOST:PORT" or
    /// "PEER_HOST:PORT,CLIENT_HOST:PORT", as `--peer`.
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
    #[serde(default)]
    pub tuning: Tuning,
}

pub fn read_config(path: &std::path::Path) -> anyhow::Result<ConfigFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Where nodes listen and what they share.
pub struct Listeners {
    pub listen: SocketAddr,
    pub peer_listen: SocketAddr,
    pub advertise: Option<String>,
    pub secret: Option<ClusterSecret>,
}

/// The peer listener when none is given: the client port + 1000 on the same address (an
/// ephemeral port when the client port is).
pub fn default_peer_listen(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    let port = match listen.port() {
        0 => 0,
        p => p.checked_add(PEER_PORT_OFFSET).with_context(|| {
            format!("client port {p} + {PEER_PORT_OFFSET} is no port: give --peer-listen")
        })?,
    };
    Ok(SocketAddr::new(listen.ip(), port))
}

pub fn read_secret(path: &std::path::Path) -> anyhow::Result<ClusterSecret> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the cluster secret file {}", path.display()))?;
    ClusterSecret::new(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// `ordo dev`'s secret: DATA_DIR/cluster-secret, made (32 random bytes, hex, mode 0600) the
/// first time.
pub fn dev_secret(data_dir: &std::path::Path) -> anyhow::Result<ClusterSecret> {
    let path = data_dir.join("cluster-secret");
    if !path.exists() {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let bytes: [u8; 32] = crate::random::bytes("a cluster secret")?;
        let hex = crate::random::hex(&bytes);
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

pub fn serve_options(
    node_id: u64,
    listeners: Listeners,
    data_dir: PathBuf,
    peers: BTreeMap<u64, MemberAddr>,
    tuning: Tuning,
) -> anyhow::Result<serve::ServeOptions> {
    let defaults = SequencerConfig::default();
    let limits = limits::Limits::default();
    let exec = ExecConfig::default();
    let ttl_max_s = tuning
        .reservation_ttl_max_s
        .unwrap_or((exec.reservation_life_max_ms / 1000) as u32);
    let ttl_s = tuning
        .reservation_ttl_s
        .unwrap_or(((exec.reservation_ttl_default_ms / 1000) as u32).min(ttl_max_s));
    let ttl_limit_s = validate::RESERVATION_TTL_MS_MAX / 1000;
    anyhow::ensure!(
        (1..=ttl_limit_s).contains(&u64::from(ttl_max_s)),
        "--reservation-ttl-max-s must be 1 to {ttl_limit_s}, not {ttl_max_s}"
    );
    anyhow::ensure!(
        (1..=ttl_max_s).contains(&ttl_s),
        "--reservation-ttl-s must be 1 to --reservation-ttl-max-s ({ttl_max_s}), not {ttl_s}"
    );
    let expiry_per_epoch_max = tuning
        .expiry_per_epoch_max
        .unwrap_or(exec.expiry_per_epoch_max);
    anyhow::ensure!(
        (1..=1_000_000).contains(&expiry_per_epoch_max),
        "--expiry-per-epoch-max must be 1 to 1000000, not {expiry_per_epoch_max}"
    );
    let feed_defaults = ordo_storage::FeedRetention::default();
    let feed_retention = ordo_storage::FeedRetention {
        epochs: tuning.feed_retention_epochs.unwrap_or(feed_defaults.epochs),
        bytes: tuning.feed_retention_bytes.unwrap_or(feed_defaults.bytes),
    };
    anyhow::ensure!(
        feed_retention.epochs >= 1,
        "--feed-retention-epochs must be at least 1"
    );
    let partitions = tuning.partitions.unwrap_or(3);
    anyhow::ensure!(
        (1..=ordo_storage::PARTITIONS_MAX).contains(&partitions),
        "--partitions must be 1 to {}, not {partitions}",
        ordo_storage::PARTITIONS_MAX
    );
    let message_bytes_max = tuning.message_bytes_max.unwrap_or(4 * 1024 * 1024);
    anyhow::ensure!(
        (64 * 1024..=ordo_sequencer::network::RAFT_MESSAGE_BYTES_MAX).contains(&message_bytes_max),
        "--message-bytes-max must be 65536 to {}, not {message_bytes_max}",
        ordo_sequencer::network::RAFT_MESSAGE_BYTES_MAX
    );
    let store_cache_mb = tuning
        .store_cache_mb
        .unwrap_or(ordo_storage::DEFAULT_CACHE_BYTES / (1024 * 1024));
    anyhow::ensure!(
        (16..=1024 * 1024).contains(&store_cache_mb),
        "--store-cache-mb must be 16 to 1048576, not {store_cache_mb}"
    );
    let watchers_max = tuning.watchers_max.unwrap_or(limits.watchers_max);
    let watch_buffer_messages = tuning
        .watch_buffer_messages
        .unwrap_or(limits.watch_buffer_messages);
    anyhow::ensure!(
        (1..=1_000_000).contains(&watchers_max),
        "--watchers-max must be 1 to 1000000, not {watchers_max}"
    );
    anyhow::ensure!(
        (1..=100_000).contains(&watch_buffer_messages),
        "--watch-buffer-messages must be 1 to 100000, not {watch_buffer_messages}"
    );
    let watch_buffer_bytes = tuning
        .watch_buffer_bytes
        .unwrap_or(limits.watch_buffer_bytes);
    anyhow::ensure!(
        (1024 * 1024..=1024 * 1024 * 1024).contains(&watch_buffer_bytes),
        "--watch-buffer-bytes must be 1048576 (a stream's largest message) to 1073741824, not \
         {watch_buffer_bytes}"
    );
    let streams_buffer_bytes_max = tuning
        .streams_buffer_bytes_max
        .unwrap_or(limits.streams_buffer_bytes_max);
    anyhow::ensure!(
        (watch_buffer_bytes..=1 << 40).contains(&streams_buffer_bytes_max),
        "--streams-buffer-bytes-max must be at least --watch-buffer-bytes ({watch_buffer_bytes}) \
         and at most 2^40, not {streams_buffer_bytes_max}"
    );
    let watch_stall = Duration::from_millis(
        tuning
            .watch_stall_ms
            .unwrap_or(limits.watch_stall.as_millis() as u64)
            .max(1),
    );
    let conn_defaults = crate::conns::ConnLimits::default();
    let conn_limits = crate::conns::ConnLimits {
        max: tuning.connections_max.unwrap_or(conn_defaults.max),
        per_source_max: tuning
            .connections_per_source_max
            .unwrap_or(conn_defaults.per_source_max),
        idle: tuning
            .connection_idle_ms
            .map_or(conn_defaults.idle, Duration::from_millis),
    };
    anyhow::ensure!(
        (1..=1_000_000).contains(&conn_limits.max),
        "--connections-max must be 1 to 1000000, not {}",
        conn_limits.max
    );
    anyhow::ensure!(
        (1..=conn_limits.max).contains(&conn_limits.per_source_max),
        "--connections-per-source-max must be 1 to --connections-max ({}), not {}",
        conn_limits.max,
        conn_limits.per_source_max
    );
    anyhow::ensure!(
        conn_limits.idle >= Duration::from_millis(100),
        "--connection-idle-ms must be at least 100"
    );
    let tokens = tuning
        .tokens_file
        .as_deref()
        .map(crate::auth::open_tokens)
        .transpose()?;
    anyhow::ensure!(
        tokens.is_some() || tuning.insecure_no_auth || listeners.listen.ip().is_loopback(),
        "refusing to serve clients on {} without authentication: give --tokens-file FILE \
         (`ordo token create --tokens-file FILE --name NAME --scope read` makes one), or \
         --insecure-no-auth to serve every caller",
        listeners.listen
    );
    let tls = match (tuning.tls_cert, tuning.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::load(crate::tls::TlsFiles {
            cert,
            key,
            client_ca: None,
        })?),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    let peer_tls = match (tuning.peer_tls_cert, tuning.peer_tls_key, tuning.peer_ca) {
        (Some(cert), Some(key), Some(ca)) => {
            anyhow::ensure!(
                listeners.secret.is_some(),
                "peer TLS is for the peer port, which a node opens only with \
                 --cluster-secret-file"
            );
            Some(crate::tls::PeerTls::load(cert, key, ca)?)
        }
        (None, None, None) => None,
        _ => anyhow::bail!("--peer-tls-cert, --peer-tls-key and --peer-ca go together"),
    };
    Ok(serve::ServeOptions {
        conn_limits,
        tls,
        peer_tls,
        tokens,
        metrics_listen: tuning.metrics_listen,
        feed_retention,
        node_id,
        listen: listeners.listen,
        peer_listen: listeners.peer_listen,
        advertise: listeners.advertise,
        secret: listeners.secret,
        data_dir,
        peers,
        partitions,
        store_cache_bytes: store_cache_mb * 1024 * 1024,
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
        exec: ExecConfig {
            expiry_per_epoch_max,
            reservation_ttl_default_ms: u64::from(ttl_s) * 1000,
            reservation_life_max_ms: u64::from(ttl_max_s) * 1000,
            ..exec
        },
        limits: limits::Limits {
            request_timeout: Duration::from_millis(tuning.request_timeout_ms.unwrap_or(10_000)),
            message_bytes_max,
            watchers_max,
            watch_buffer_messages,
            watch_buffer_bytes,
            streams_buffer_bytes_max,
            watch_stall,
            notify_per_s: tuning.notify_rate.unwrap_or(limits.notify_per_s),
            ..limits
        },
    })
}

/// `ordo server`'s flags. Unset ones fall back to the config file, then to the defaults.
#[derive(Args)]
pub struct ServerArgs {
    #[arg(long)]
    pub node_id: Option<u64>,
    /// The client listener: ordo.v1, health, reflection.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The peer listener: Raft, forwarding, read index; calls need the cluster secret
    /// [default: the client port + 1000 on the same host].
    #[arg(long)]
    pub peer_listen: Option<SocketAddr>,
    /// A file holding the cluster secret (at least 16 printable bytes), the same on every
    /// node; required with --peer. `ordo dev` writes one.
    #[arg(long)]
    pub cluster_secret_file: Option<PathBuf>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The address clients reach this node at (default: its --peer entry's client
    /// address, else the bound address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// A cluster member ID=PEER_HOST:PORT (its peer listener; its client port is taken
    /// to be 1000 lower), or ID=PEER_HOST:PORT,CLIENT_HOST:PORT; repeat for each member,
    /// this node included.
    #[arg(long = "peer", value_parser = cli::parse_peer)]
    pub peers: Vec<(u64, MemberAddr)>,
    /// A TOML file with any of the settings above (flags given here win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// Resolves `ordo server`'s settings: flags, then the config file.
pub fn server_options(args: ServerArgs) -> anyhow::Result<serve::ServeOptions> {
    let ServerArgs {
        node_id,
        listen,
        peer_listen,
        cluster_secret_file,
        data_dir,
        advertise,
        peers,
        config,
        tuning,
    } = args;
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
    serve_options(
        node_id,
        listeners,
        data_dir,
        peer_map,
        tuning.or(file.tuning),
    )
}

/// One effective setting of `ordo config check`.
#[derive(Debug, serde::Serialize)]
pub struct Setting {
    /// As in the file: `listen`, `tuning.epoch_ms`, ...
    pub key: String,
    pub value: serde_json::Value,
    /// `file`, `default`, or `flag` for what the file leaves to a command-line flag.
    pub source: &'static str,
}

/// `ordo config check FILE`: the file as `ordo server --config FILE` would take it (unknown
/// keys, bad values, token and certificate files that do not load are errors), and every
/// setting in effect with where it comes from. `node_id`, `listen` and `data_dir` may be left
/// to flags; they are then checked with stand-ins and reported with source `flag`.
pub fn check(path: &std::path::Path) -> anyhow::Result<Vec<Setting>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: ConfigFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let tuning_table = table.get("tuning").and_then(|t| t.as_table());
    let opts = server_options(ServerArgs {
        node_id: file.node_id.is_none().then_some(1),
        listen: file
            .listen
            .is_none()
            .then(|| SocketAddr::from(([127, 0, 0, 1], 50051))),
        peer_listen: None,
        cluster_secret_file: None,
        data_dir: file.data_dir.is_none().then(|| PathBuf::from("ordo-data")),
        advertise: None,
        peers: Vec::new(),
        config: Some(path.to_path_buf()),
        tuning: Tuning::default(),
    })
    .with_context(|| format!("{}", path.display()))?;

    let mut settings = Vec::new();
    let mut top = |key: &str, value: serde_json::Value, required: bool| {
        let source = if table.contains_key(key) {
            "file"
        } else if required {
            "flag"
        } else {
            "default"
        };
        let value = if source == "flag" {
            serde_json::Value::Null
        } else {
            value
        };
        settings.push(Setting {
            key: key.to_string(),
            value,
            source,
        });
    };
    top("node_id", json(&opts.node_id), true);
    top("listen", json(&opts.listen.to_string()), true);
    top("peer_listen", json(&opts.peer_listen.to_string()), false);
    top("advertise", json(&opts.advertise), false);
    top("data_dir", json(&opts.data_dir.display().to_string()), true);
    top(
        "cluster_secret_file",
        json(
            &file
                .cluster_secret_file
                .as_ref()
                .map(|p| p.display().to_string()),
        ),
        false,
    );
    let peers: serde_json::Map<String, serde_json::Value> = opts
        .peers
        .iter()
        .map(|(id, addr)| (id.to_string(), addr.entry().into()))
        .collect();
    top("peers", peers.into(), false);

    // Every tuning key, in the order of `Tuning`, with the value the node would use.
    let file_tuning = serde_json::to_value(&file.tuning).expect("tuning is JSON");
    let limits = &opts.limits;
    let effective: Vec<(&str, serde_json::Value)> = vec![
        ("partitions", opts.partitions.into()),
        (
            "store_cache_mb",
            (opts.store_cache_bytes / (1024 * 1024)).into(),
        ),
        ("epoch_ms", opts.sequencer.epoch_ms.into()),
        ("batch_txns_max", opts.sequencer.batch_txns_max.into()),
        ("batch_bytes_max", opts.sequencer.batch_bytes_max.into()),
        ("queue_txns_max", opts.sequencer.queue_txns_max.into()),
        (
            "proposals_in_flight_max",
            opts.sequencer.proposals_in_flight_max.into(),
        ),
        (
            "request_timeout_ms",
            (limits.request_timeout.as_millis() as u64).into(),
        ),
        ("snapshot_every", opts.snapshot_every_entries.into()),
        ("message_bytes_max", limits.message_bytes_max.into()),
        (
            "reservation_ttl_s",
            (opts.exec.reservation_ttl_default_ms / 1000).into(),
        ),
        (
            "reservation_ttl_max_s",
            (opts.exec.reservation_life_max_ms / 1000).into(),
        ),
        (
            "expiry_per_epoch_max",
            opts.exec.expiry_per_epoch_max.into(),
        ),
        ("feed_retention_epochs", opts.feed_retention.epochs.into()),
        ("feed_retention_bytes", opts.feed_retention.bytes.into()),
        ("watchers_max", limits.watchers_max.into()),
        ("watch_buffer_messages", limits.watch_buffer_messages.into()),
        ("watch_buffer_bytes", limits.watch_buffer_bytes.into()),
        (
            "streams_buffer_bytes_max",
            limits.streams_buffer_bytes_max.into(),
        ),
        (
            "watch_stall_ms",
            (limits.watch_stall.as_millis() as u64).into(),
        ),
        ("connections_max", opts.conn_limits.max.into()),
        (
            "connections_per_source_max",
            opts.conn_limits.per_source_max.into(),
        ),
        (
            "connection_idle_ms",
            (opts.conn_limits.idle.as_millis() as u64).into(),
        ),
        ("notify_rate", limits.notify_per_s.into()),
        ("fault_injection", opts.fault_injection.into()),
        ("tokens_file", file_tuning["tokens_file"].clone()),
        ("tls_cert", file_tuning["tls_cert"].clone()),
        ("tls_key", file_tuning["tls_key"].clone()),
        ("peer_tls_cert", file_tuning["peer_tls_cert"].clone()),
        ("peer_tls_key", file_tuning["peer_tls_key"].clone()),
        ("peer_ca", file_tuning["peer_ca"].clone()),
        (
            "metrics_listen",
            json(&opts.metrics_listen.map(|a| a.to_string())),
        ),
        ("insecure_no_auth", file.tuning.insecure_no_auth.into()),
        (
            "log_format",
            file.tuning.log_format.unwrap_or_default().name().into(),
        ),
    ];
    for (key, value) in effective {
        let in_file = tuning_table.is_some_and(|t| t.contains_key(key));
        settings.push(Setting {
            key: format!("tuning.{key}"),
            value,
            source: if in_file { "file" } else { "default" },
        });
    }
    Ok(settings)
}

/// A setting's value as JSON.
fn json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `config check` names every tuning key: a key added to `Tuning` and not to the listing
    /// fails here.
    #[test]
    fn check_lists_every_tuning_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "node_id = 2\n[tuning]\nepoch_ms = 7\n").unwrap();
        let settings = check(&path).unwrap();
        let listed: Vec<String> = settings
            .iter()
            .filter_map(|s| s.key.strip_prefix("tuning.").map(str::to_string))
            .collect();
        let fields: Vec<String> = match serde_json::to_value(Tuning::default()).unwrap() {
            serde_json::Value::Object(map) => map.keys().cloned().collect(),
            _ => unreachable!(),
        };
        let mut sorted = listed.clone();
        sorted.sort();
        assert_eq!(sorted, fields);
        let get = |key: &str| settings.iter().find(|s| s.key == key).unwrap();
        assert_eq!(
            (get("node_id").source, &get("node_id").value),
            ("file", &2.into())
        );
        assert_eq!(get("listen").source, "flag");
        assert_eq!(
            (get("tuning.epoch_ms").source, &get("tuning.epoch_ms").value),
            ("file", &7.into())
        );
        assert_eq!(
            (
                get("tuning.partitions").source,
                &get("tuning.partitions").value
            ),
            ("default", &3.into())
        );
    }

    #[test]
    fn check_refuses_unknown_keys_and_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        for (text, says) in [
            (
                "node_id = 1\nlisten_addr = \"127.0.0.1:1\"\n",
                "unknown field `listen_addr`",
            ),
            ("[tuning]\nepochms = 5\n", "unknown field `epochms`"),
            (
                "[tuning]\nexpiry_per_epoch_max = 0\n",
                "--expiry-per-epoch-max must be 1",
            ),
            ("[tuning]\nlog_format = \"xml\"\n", "unknown variant `xml`"),
            (
                "[tuning]\ntls_cert = \"/nonexistent.pem\"\n",
                "--tls-cert and --tls-key go together",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = format!("{:#}", check(&path).unwrap_err());
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }
}
