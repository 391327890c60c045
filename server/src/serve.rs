//! Running nodes: the Raft/scheduler core plus the gRPC server (Ordo, Admin, the internal Raft
//! service, health, reflection) on one port, until SIGINT or SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ordo_proto::internal::v1::raft_server::RaftServer;
use ordo_proto::v1::admin_server::AdminServer;
use ordo_proto::v1::ordo_server::OrdoServer;
use ordo_scheduler::{keys, reads, ExecConfig};
use ordo_sequencer::network::RAFT_MESSAGE_BYTES_MAX;
use ordo_sequencer::{Node, NodeConfig, SequencerConfig};
use ordo_storage::Part;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin::AdminService;
use crate::edge::OrdoService;
use crate::fault::FaultClock;
use crate::limits::Limits;

#[derive(Clone)]
pub struct ServeOptions {
    pub node_id: u64,
    pub listen: SocketAddr,
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// Every voter, this node included; empty for a single self-initialising node.
    pub peers: BTreeMap<u64, String>,
    pub partitions: u32,
    pub sequencer: SequencerConfig,
    pub snapshot_every_entries: u64,
    pub limits: Limits,
    /// Whether the Admin service accepts fault injection (clock skew).
    pub fault_injection: bool,
}

/// A node with its gRPC server running.
pub struct Running {
    pub node: Arc<Node>,
    pub local: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Running {
    /// Stops taking requests, lets those in flight finish, then stops Raft and flushes.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server.await.context("joining the gRPC server")??;
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

/// Starts a node and its gRPC server. A single node (no peers) is leader when this returns.
pub async fn start(opts: &ServeOptions) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    let local = listener.local_addr()?;
    let advertise = opts.advertise.clone().unwrap_or_else(|| local.to_string());
    let fault_clock = Arc::new(FaultClock::default());
    let node = Node::start(NodeConfig {
        node_id: opts.node_id,
        advertise_addr: advertise,
        data_dir: opts.data_dir.clone(),
        partitions: opts.partitions,
        exec: ExecConfig::default(),
        sequencer: opts.sequencer.clone(),
        snapshot_every_entries: opts.snapshot_every_entries,
        clock: fault_clock.clock(),
        peers: opts.peers.clone(),
        forward_timeout: opts.limits.request_timeout,
        // Peers see this node's connections come from its own address.
        bind_ip: Some(local.ip()).filter(|ip| !ip.is_unspecified()),
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
    if opts.peers.is_empty() {
        node.wait_leader(Duration::from_secs(30))
            .await
            .context("waiting for this node to become leader")?;
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<OrdoServer<OrdoService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ordo_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let max = opts.limits.message_bytes_max;
    let ordo = OrdoServer::new(OrdoService::new(node.clone(), opts.limits.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let admin = AdminServer::new(AdminService::new(
        node.clone(),
        opts.sequencer.queue_txns_max,
        opts.fault_injection.then_some(fault_clock),
    ))
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let raft = RaftServer::new(node.raft_service())
        .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .concurrency_limit_per_connection(1024)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(ordo)
            .add_service(admin)
            .add_service(raft)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    tracing::info!(%local, node_id = opts.node_id, "serving");
    Ok(Running {
        node,
        local,
        stop,
        server,
    })
}

async fn seed_if_empty(node: &Node, queue_txns_max: usize) -> anyhow::Result<()> {
    let has_dcs = reads::count_prefix(&node.store, Part::Global, keys::DC, 1)? > 0;
    if !has_dcs {
        let started = std::time::Instant::now();
        let count = crate::demo::seed(node, queue_txns_max).await?;
        tracing::info!(
            txns = count,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "demo data loaded"
        );
    }
    Ok(())
}

/// `ordo server` and `ordo dev` (one node): serve until SIGINT/SIGTERM.
pub async fn serve(opts: ServeOptions, dev: bool) -> anyhow::Result<()> {
    let running = start(&opts).await?;
    if dev {
        seed_if_empty(&running.node, opts.sequencer.queue_txns_max).await?;
    }
    println!("ordo: node {} listening on {}", opts.node_id, running.local);
    if dev {
        print_quickstart(running.local, &opts.data_dir, 1);
    }
    shutdown_signal().await;
    running.stop().await?;
    println!("ordo: node {} stopped", opts.node_id);
    Ok(())
}

/// `ordo dev --nodes N`: N nodes in this process on consecutive ports, one data directory
/// each under the given one, initialised as one cluster with the demo data.
pub async fn serve_dev_cluster(base: ServeOptions, nodes: u64) -> anyhow::Result<()> {
    let port = base.listen.port();
    let addr_of = |i: u64| SocketAddr::new(base.listen.ip(), port + (i - 1) as u16);
    let peers: BTreeMap<u64, String> = (1..=nodes).map(|i| (i, addr_of(i).to_string())).collect();
    let mut running = Vec::new();
    for i in 1..=nodes {
        let opts = ServeOptions {
            node_id: i,
            listen: addr_of(i),
            advertise: Some(addr_of(i).to_string()),
            data_dir: base.data_dir.join(format!("node-{i}")),
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
    seed_if_empty(first, base.sequencer.queue_txns_max).await?;
    for r in &running {
        println!("ordo: node {} listening on {}", r.node.node_id, r.local);
    }
    print_quickstart(running[0].local, &base.data_dir, nodes);
    shutdown_signal().await;
    for r in running {
        let id = r.node.node_id;
        r.stop().await?;
        println!("ordo: node {id} stopped");
    }
    Ok(())
}

fn print_quickstart(local: SocketAddr, data_dir: &std::path::Path, nodes: u64) {
    let endpoint = if local.port() == 50051 && local.ip().is_loopback() {
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
        "\nOrdo {cluster} ready: data in {dir}, demo data: 12 DCs in 3 regions, {skus} SKUs.\n\
         Try, in another terminal:\n\
         \x20 ordo stock 1 1{endpoint}                      # stock of SKU 1 at DC 1 (Berlin)\n\
         \x20 ordo order --line 1:1:2 --line 5:3:1{endpoint}  # one order across two regions\n\
         \x20 ordo restock 1 1 10{endpoint}                 # add 10 units\n\
         \x20 ordo status --all{endpoint}                   # every node: epoch and state hash\n\
         (from a checkout: cargo run --release --bin ordo -- stock 1 1)\n\
         Stop with Ctrl-C.",
        dir = data_dir.display(),
        skus = crate::demo::SKUS,
    );
}
