//! Running nodes: the Raft/scheduler core plus two gRPC servers, until SIGINT or SIGTERM. The
//! client port serves `ordo.v1` (Ordo, Admin), health and reflection (v1 and v1alpha, public
//! files only); the peer port serves `ordo.internal.v1` (Raft, forwarding, read index) and
//! refuses every call without the cluster secret.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ordo_proto::internal::v1::raft_server::RaftServer;
use ordo_proto::v1::admin_server::AdminServer;
use ordo_proto::v1::ordo_server::OrdoServer;
use ordo_scheduler::{
    keys, reads, ExecConfig, ExecSettings, Op, Outcome, Txn, CLUSTER_CONFIG_REQUEST_ID,
};
use ordo_sequencer::network::{Channels, RAFT_MESSAGE_BYTES_MAX};
use ordo_sequencer::peers::{CheckSecret, ClusterSecret, MemberAddr};
use ordo_sequencer::{Node, NodeConfig, SequencerConfig};
use ordo_storage::Part;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::codegen::InterceptedService;

use crate::admin::AdminService;
use crate::auth::{Authorized, Tokens};
use crate::conns::{Admission, ConnLimits};
use crate::edge::{ClientPort, OrdoService};
use crate::fault::FaultClock;
use crate::limits::Limits;
use crate::metrics_http::Metered;

#[derive(Clone)]
pub struct ServeOptions {
    pub node_id: u64,
    /// The client port's bounds on connections (the peer port has its own, fixed ones).
    pub conn_limits: ConnLimits,
    /// The client listener.
    pub listen: SocketAddr,
    /// The peer listener; opened only with a cluster secret.
    pub peer_listen: SocketAddr,
    /// The client address others are told (default: the bound one).
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// Every voter, this node included; empty for a single self-initialising node.
    pub peers: BTreeMap<u64, MemberAddr>,
    /// What every peer call must carry. Required with peers; a single node without one takes
    /// no peer traffic at all (no peer listener) and cannot add members.
    pub secret: Option<ClusterSecret>,
    pub partitions: u32,
    /// sled's page cache, in bytes.
    pub store_cache_bytes: u64,
    pub sequencer: SequencerConfig,
    pub snapshot_every_entries: u64,
    /// Execution settings; every replica must use the same (`--expiry-per-epoch-max`).
    pub exec: ExecConfig,
    pub limits: Limits,
    /// Whether the Admin service accepts fault injection (clock skew).
    pub fault_injection: bool,
    /// How much of the change feed this node keeps (its own choice, not the cluster's).
    pub feed_retention: ordo_storage::FeedRetention,
    /// TLS on the client port (`--tls-cert`, `--tls-key`).
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Mutual TLS on the peer port and calls to peers (`--peer-tls-*`, `--peer-ca`).
    pub peer_tls: Option<crate::tls::PeerTls>,
    /// The client tokens calls must carry (`--tokens-file`); `None`: no check.
    pub tokens: Option<Arc<Tokens>>,
    /// Where Prometheus metrics are served (`--metrics-listen`); `None`: nowhere, and calls
    /// are not metered.
    pub metrics_listen: Option<SocketAddr>,
}

type ServerTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// A node with its gRPC servers running.
pub struct Running {
    pub node: Arc<Node>,
    pub local: SocketAddr,
    /// The bound peer listener, if any.
    pub peer_local: Option<SocketAddr>,
    /// The bound metrics listener, if any.
    pub metrics_local: Option<SocketAddr>,
    stop: Vec<oneshot::Sender<()>>,
    servers: Vec<ServerTask>,
    /// Set when the node stops: every Watch stream ends (UNAVAILABLE, with a resume token).
    closing: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// Stops taking requests, lets those in flight finish, then stops Raft and flushes.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.closing.send_replace(true);
        for stop in self.stop {
            let _ = stop.send(());
        }
        for server in self.servers {
            server.await.context("joining a gRPC server")??;
        }
        self.node.shutdown().await;
        Ok(())
    }
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

/// Starts a node and its gRPC servers. A single node (no peers) is leader when this returns.
pub async fn start(opts: &ServeOptions) -> anyhow::Result<Running> {
    if !opts.peers.is_empty() && opts.secret.is_none() {
        anyhow::bail!(
            "a node with peers needs the cluster secret: --cluster-secret-file PATH (the same \
             file on every node; `ordo dev` writes one)"
        );
    }
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding the client port {}", opts.listen))?;
    let local = listener.local_addr()?;
    let peer_listener = match &opts.secret {
        Some(_) => Some(TcpListener::bind(opts.peer_listen).await.with_context(|| {
            format!(
                "binding the peer port {} (--peer-listen; default: the client port + 1000)",
                opts.peer_listen
            )
        })?),
        None => None,
    };
    let peer_local = peer_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let metrics_listener = match opts.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics port {addr} (--metrics-listen)"))?,
        ),
        None => None,
    };
    let metrics_local = metrics_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let advertise = opts.advertise.clone().unwrap_or_else(|| local.to_string());
    // Peers reach this node at the peer port, on the host clients are told.
    let peer_advertise = match (peer_local, advertise.rsplit_once(':')) {
        (Some(peer), Some((host, _))) => format!("{host}:{}", peer.port()),
        (Some(peer), None) => peer.to_string(),
        (None, _) => advertise.clone(),
    };
    let fault_clock = Arc::new(FaultClock::default());
    let node = Node::start(NodeConfig {
        node_id: opts.node_id,
        advertise: MemberAddr {
            peer: peer_advertise,
            client: advertise,
        },
        secret: opts.secret.clone(),
        data_dir: opts.data_dir.clone(),
        partitions: opts.partitions,
        store_cache_bytes: opts.store_cache_bytes,
        exec: opts.exec.clone(),
        sequencer: opts.sequencer.clone(),
        snapshot_every_entries: opts.snapshot_every_entries,
        clock: fault_clock.clock(),
        peers: opts.peers.clone(),
        forward_timeout: opts.limits.request_timeout,
        // Peers see this node's connections come from its own address.
        bind_ip: Some(local.ip()).filter(|ip| !ip.is_unspecified()),
        peer_tls: opts.peer_tls.as_ref().map(|t| t.client_source()),
        heartbeat_ms: 100,
        election_timeout_ms: (500, 1000),
    })
    .await
    .with_context(|| {
        format!(
            "starting node {} in {}",
            opts.node_id,
            opts.data_dir.display()
        )
    })?;
    let node = Arc::new(node);
    node.store.set_feed_retention(opts.feed_retention);
    if ordo_scheduler::reads::has_unbucketed_subscriptions(&node.store)? {
        anyhow::bail!(
            "{} holds subscriptions in the index layout of Ordo before 2026-11-24 (keys `n`), \
             which this Ordo does not read: start it on a new data directory (or re-subscribe \
             the users there)",
            opts.data_dir.display()
        );
    }
    // Stock rows were packed as the node started (`Node::start`, `Store::keep_packed`).
    // Request ids in use are known in memory, so a new id's dedupe lookup (every order's)
    // never reaches sled (`Store::keep_known`).
    let started = std::time::Instant::now();
    let ids = node
        .store
        .keep_known(&[keys::DEDUPE])
        .context("loading the request ids in use")?;
    tracing::info!(
        ids,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request ids known"
    );
    if opts.peers.is_empty() {
        node.wait_leader(Duration::from_secs(30))
            .await
            .context("waiting for this node to become leader")?;
        record_cluster_config(&node, &opts.exec).await?;
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<OrdoServer<OrdoService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    // Reflection offers the public files only, in both protocol versions (grpcurl and most
    // tools speak v1; Python's grpcio-reflection still speaks v1alpha).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ordo_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building the reflection service (v1alpha)")?;
    let max = opts.limits.message_bytes_max;
    // Watch streams never end by themselves: they are told to when the node stops, so the
    // graceful shutdown of the gRPC server does not wait for them forever.
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let ordo = ClientPort::new(
        OrdoService::new(
            node.clone(),
            opts.limits.clone(),
            opts.exec.clone(),
            closing_rx,
        )?,
        max,
    );
    // A follower proxies membership changes to the leader's client port, in its scheme: over
    // TLS it trusts the peer CA and presents its peer certificate.
    let bind_ip = Some(local.ip()).filter(|ip| !ip.is_unspecified());
    let leader_channels = match (&opts.tls, &opts.peer_tls) {
        // Both plaintext: the node's own peer channels are the same.
        (None, None) => Ok(node.channels.clone()),
        (None, Some(_)) => Ok(Channels::new(bind_ip, opts.secret.clone(), None)),
        (Some(_), Some(peer_tls)) => Ok(Channels::new(
            bind_ip,
            opts.secret.clone(),
            Some(peer_tls.client_source()),
        )),
        (Some(_), None) => Err(
            "reaches the leader's TLS client port only with a CA to trust (--peer-ca)".to_string(),
        ),
    };
    let admin = AdminServer::new(AdminService::new(
        node.clone(),
        opts.sequencer.queue_txns_max,
        opts.fault_injection.then_some(fault_clock),
        leader_channels,
        closing.subscribe(),
        crate::admin::About {
            started: std::time::Instant::now(),
            cluster_settings: crate::admin::cluster_settings(
                node.store.partitions(),
                opts.peer_tls.is_some(),
            ),
            exec: opts.exec.clone(),
            message_bytes_max: max,
        },
    ))
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    if let Some(tokens) = &opts.tokens {
        tokens.watch();
    }
    let mut stop = Vec::new();
    let mut servers = Vec::new();
    if let Some(listener) = metrics_listener {
        let (stop_metrics, stopped) = oneshot::channel::<()>();
        stop.push(stop_metrics);
        let (node, port, tokens) = (node.clone(), ordo.clone(), opts.tokens.clone());
        servers.push(tokio::spawn(async move {
            crate::metrics_http::serve(listener, node, port, tokens, async {
                let _ = stopped.await;
            })
            .await;
            Ok::<(), tonic::transport::Error>(())
        }));
    }
    // Every service of the client port is metered (with --metrics-listen), and all but health
    // are behind the token check (with --tokens-file).
    let metered = opts.metrics_listen.is_some();
    let tokens = opts.tokens.clone();
    let (stop_client, stopped) = oneshot::channel::<()>();
    stop.push(stop_client);
    let router = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(1024)
        .add_service(Metered::new(health_service, metered))
        .add_service(Metered::new(
            Authorized::new(reflection_v1, tokens.clone()),
            metered,
        ))
        .add_service(Metered::new(
            Authorized::new(reflection_v1alpha, tokens.clone()),
            metered,
        ))
        .add_service(Metered::new(Authorized::new(ordo, tokens.clone()), metered))
        .add_service(Metered::new(Authorized::new(admin, tokens), metered));
    let stopped = async {
        let _ = stopped.await;
    };
    // Each port admits its own connections (`conns.rs`): clients cannot take the peers'.
    // Both under the open-file limit, with room for the files.
    let (client_limits, peer_limits) = crate::conns::fit_open_files(
        opts.conn_limits,
        ConnLimits {
            max: crate::conns::PEER_CONNECTIONS_MAX,
            per_source_max: crate::conns::PEER_CONNECTIONS_PER_SOURCE_MAX,
            idle: opts.conn_limits.idle,
        },
    );
    let clients = Admission::new(
        "client",
        client_limits,
        Some(&ordo_metrics::CLIENT_CONNECTIONS),
    );
    servers.push(match &opts.tls {
        Some(tls) => {
            tls.watch();
            let incoming = crate::tls::incoming(listener, tls.clone(), clients);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
        }
        None => tokio::spawn(
            router.serve_with_incoming_shutdown(crate::conns::incoming(listener, clients), stopped),
        ),
    });
    if let (Some(peer_listener), Some(secret)) = (peer_listener, &opts.secret) {
        let raft = RaftServer::new(node.raft_service())
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        let raft = InterceptedService::new(raft, CheckSecret(secret.clone()));
        let (stop_peer, stopped) = oneshot::channel::<()>();
        stop.push(stop_peer);
        let router = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(1024)
            .add_service(raft);
        let stopped = async {
            let _ = stopped.await;
        };
        let peers = Admission::new("peer", peer_limits, None);
        servers.push(match &opts.peer_tls {
            Some(peer_tls) => {
                peer_tls.server.watch();
                peer_tls.client.watch();
                let incoming = crate::tls::incoming(peer_listener, peer_tls.server.clone(), peers);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
            }
            None => tokio::spawn(router.serve_with_incoming_shutdown(
                crate::conns::incoming(peer_listener, peers),
                stopped,
            )),
        });
    }
    tracing::info!(%local, peer = ?peer_local, node_id = opts.node_id, "serving");
    Ok(Running {
        node,
        local,
        peer_local,
        metrics_local,
        stop,
        servers,
        closing,
    })
}

/// Prints the lines that say a node is up: the peer port first, then `listening on ADDR`,
/// the line scripts wait for.
fn announce(running: &Running) {
    if let Some(peer) = running.peer_local {
        println!("ordo: node {} peer port {peer}", running.node.node_id);
    }
    if let Some(metrics) = running.metrics_local {
        println!(
            "ordo: node {} metrics on http://{metrics}/metrics",
            running.node.node_id
        );
    }
    println!(
        "ordo: node {} listening on {}",
        running.node.node_id, running.local
    );
}

/// Records the cluster's facts in the log: at cluster-init, and at every start of a single
/// node (a repeat is answered from dedupe, or finds the same record). The partition count:
/// from then on a replica with another count stops instead of diverging. The execution
/// settings (`exec`'s, as `initial`): recorded only if none are, so the first node's flags
/// stand and a node started later with other flags changes nothing (`ordo settings set`
/// changes them, through the log).
pub async fn record_cluster_config(node: &Node, exec: &ExecConfig) -> anyhow::Result<()> {
    let settings = exec.initial_settings();
    let txns = vec![
        Txn {
            request_id: CLUSTER_CONFIG_REQUEST_ID.to_string(),
            op: Op::ClusterConfig {
                partitions: node.store.partitions(),
            },
        },
        Txn {
            // Named by its body: a node restarted with other flags sends another request,
            // never the same id with another body.
            request_id: initial_settings_request_id(&settings),
            op: Op::ExecSettings(settings),
        },
    ];
    let waits = node
        .sequencer
        .submit(txns)
        .context("recording the cluster configuration")?;
    for wait in waits {
        let result = tokio::time::timeout(Duration::from_secs(30), wait.rx)
            .await
            .context("recording the cluster configuration: no result within 30 s")?
            .context("recording the cluster configuration: the node is shutting down")?
            .map_err(|e| anyhow::anyhow!("recording the cluster configuration: {e}"))?;
        if let Outcome::Refused { reason, .. } = result.outcome {
            anyhow::bail!("recording the cluster configuration: {reason}");
        }
    }
    if let Ok(Some(recorded)) = ordo_scheduler::reads::exec_settings(&node.store) {
        let mine = ExecSettings {
            initial: false,
            ..settings
        };
        if recorded.settings != mine {
            tracing::warn!(
                recorded = ?recorded.settings,
                epoch = recorded.epoch,
                "the cluster's execution settings, recorded in the log, differ from this \
                 node's flags; the recorded ones decide (change them with `ordo settings set`)"
            );
        }
    }
    Ok(())
}

/// The request id of a node's initial execution settings: `ordo-exec-settings-` and a digest
/// of them.
fn initial_settings_request_id(settings: &ExecSettings) -> String {
    let digest = blake3::hash(&ordo_scheduler::encode(settings));
    format!(
        "ordo-exec-settings-{}",
        crate::random::hex(&digest.as_bytes()[..8])
    )
}

/// Resolves when Raft stops on a fatal error (a storage error, or a replica that cannot
/// execute the log as the cluster does), with what it said.
pub async fn fatal(node: &Node) -> String {
    let mut metrics = node.raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow().running_state {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            return "raft stopped".into();
        }
    }
}

async fn seed_if_empty(
    node: &Node,
    queue_txns_max: usize,
    spec: &crate::demo::Spec,
) -> anyhow::Result<()> {
    let has_dcs = reads::count_prefix(&node.store, Part::Global, keys::DC, 1)? > 0;
    if !has_dcs {
        let started = std::time::Instant::now();
        let (count, rows) = crate::demo::seed(node, queue_txns_max, spec).await?;
        tracing::info!(
            txns = count,
            stock_rows = rows,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "demo data loaded"
        );
    }
    Ok(())
}

/// `ordo server` and `ordo dev` (one node, with its demo dataset): serve until
/// SIGINT/SIGTERM.
pub async fn serve(opts: ServeOptions, demo: Option<crate::demo::Spec>) -> anyhow::Result<()> {
    let running = start(&opts).await?;
    if let Some(spec) = &demo {
        seed_if_empty(&running.node, opts.sequencer.queue_txns_max, spec).await?;
    }
    announce(&running);
    if demo.is_some() {
        print_quickstart(
            running.local,
            &opts.data_dir,
            1,
            opts.tls.is_some(),
            opts.tokens.is_some(),
        );
    }
    let stopped = tokio::select! {
        _ = shutdown_signal() => None,
        why = fatal(&running.node) => Some(why),
    };
    if let Some(why) = stopped {
        anyhow::bail!("node {} stopped applying the log: {why}", opts.node_id);
    }
    running.stop().await?;
    println!("ordo: node {} stopped", opts.node_id);
    Ok(())
}

/// `ordo dev --nodes N`: N nodes in this process on consecutive ports, one data directory
/// each under the given one, initialised as one cluster with the demo data.
pub async fn serve_dev_cluster(
    base: ServeOptions,
    nodes: u64,
    demo: crate::demo::Spec,
) -> anyhow::Result<()> {
    let port = base.listen.port();
    let peer_port = base.peer_listen.port();
    let addr_of = |i: u64| SocketAddr::new(base.listen.ip(), port + (i - 1) as u16);
    let peer_of = |i: u64| SocketAddr::new(base.peer_listen.ip(), peer_port + (i - 1) as u16);
    let peers: BTreeMap<u64, MemberAddr> = (1..=nodes)
        .map(|i| {
            let addr = MemberAddr {
                peer: peer_of(i).to_string(),
                client: addr_of(i).to_string(),
            };
            (i, addr)
        })
        .collect();
    let mut running = Vec::new();
    for i in 1..=nodes {
        let opts = ServeOptions {
            node_id: i,
            listen: addr_of(i),
            peer_listen: peer_of(i),
            advertise: Some(addr_of(i).to_string()),
            data_dir: base.data_dir.join(format!("node-{i}")),
            // Each node's metrics on the next port, as its client and peer ports.
            metrics_listen: base.metrics_listen.map(|a| match a.port() {
                0 => a,
                port => SocketAddr::new(a.ip(), port.saturating_add((i - 1) as u16)),
            }),
            peers: peers.clone(),
            ..base.clone()
        };
        running.push(start(&opts).await?);
    }
    let first = &running[0].node;
    first
        .init_cluster()
        .await
        .map_err(|e| anyhow::anyhow!("initialising the cluster: {e}"))?;
    first.wait_for_leader(Duration::from_secs(30)).await?;
    record_cluster_config(first, &base.exec).await?;
    seed_if_empty(first, base.sequencer.queue_txns_max, &demo).await?;
    for r in &running {
        announce(r);
    }
    print_quickstart(
        running[0].local,
        &base.data_dir,
        nodes,
        base.tls.is_some(),
        base.tokens.is_some(),
    );
    shutdown_signal().await;
    for r in running {
        let id = r.node.node_id;
        r.stop().await?;
        println!("ordo: node {id} stopped");
    }
    Ok(())
}

fn print_quickstart(
    local: SocketAddr,
    data_dir: &std::path::Path,
    nodes: u64,
    tls: bool,
    tokens: bool,
) {
    let endpoint = if tls {
        format!(" --endpoint https://{local} --ca CA.pem")
    } else if local.port() == 50051 && local.ip().is_loopback() {
        String::new()
    } else {
        format!(" --endpoint http://{local}")
    };
    let cluster = if nodes > 1 {
        format!(
            "{nodes}-node cluster on ports {}-{}",
            local.port(),
            local.port() + nodes as u16 - 1
        )
    } else {
        "dev node".to_string()
    };
    println!(
        "\nOrdo {cluster} ready: data in {dir}, demo data: a hub (DCs 1-12) and 15-25 dark \
         stores in each of 12 cities, 3 regions.\n\
         Try, in another terminal:\n\
         \x20 ordo stock 1 1{endpoint}                      # stock of SKU 1 at DC 1 (Berlin)\n\
         \x20 ordo order --line 1:1:2 --line 5:3:1{endpoint}  # one order across two regions\n\
         \x20 ordo nearby 12.97 77.59 --sku 1{endpoint}     # stores near central Bengaluru\n\
         \x20 ordo search \"chips\" --near 12.97,77.59{endpoint}\n\
         \x20 ordo order --near 12.97,77.59 --item 1:3 --item 30:2{endpoint}  # split fill\n\
         \x20 ordo restock 1 1 10{endpoint}                 # add 10 units\n\
         \x20 ordo status --all{endpoint}                   # every node: epoch and state hash\n\
         (from a checkout: cargo run --release --bin ordo -- stock 1 1)\n\
         {token}Stop with Ctrl-C.",
        dir = data_dir.display(),
        token = if tokens {
            "Calls need a token from the --tokens-file: export ORDO_TOKEN=... (or --token; \
             `status` needs the admin scope).\n"
        } else {
            ""
        },
    );
}
