//! Running a node: the Raft/scheduler core plus the gRPC server (Ordo, Admin, health,
//! reflection) on one port, until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ordo_proto::v1::admin_server::AdminServer;
use ordo_proto::v1::ordo_server::OrdoServer;
use ordo_scheduler::{keys, reads, ExecConfig};
use ordo_sequencer::{system_clock, Node, NodeConfig, SequencerConfig};
use ordo_storage::Part;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin::AdminService;
use crate::edge::OrdoService;
use crate::limits::Limits;

pub struct ServeOptions {
    pub node_id: u64,
    pub listen: SocketAddr,
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    pub partitions: u32,
    pub sequencer: SequencerConfig,
    pub snapshot_every_entries: u64,
    pub limits: Limits,
    /// Load the demo dataset if the store has no DCs yet, and print the quickstart.
    pub dev: bool,
}

async fn shutdown_signal() {
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

pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    let local = listener.local_addr()?;
    let advertise = opts.advertise.clone().unwrap_or_else(|| local.to_string());
    let node = Node::start(NodeConfig {
        node_id: opts.node_id,
        advertise_addr: advertise,
        data_dir: opts.data_dir.clone(),
        partitions: opts.partitions,
        exec: ExecConfig::default(),
        sequencer: opts.sequencer.clone(),
        snapshot_every_entries: opts.snapshot_every_entries,
        clock: system_clock(),
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
    node.wait_leader(Duration::from_secs(30))
        .await
        .context("waiting for this node to become leader")?;

    if opts.dev {
        let has_dcs = reads::count_prefix(&node.store, Part::Global, keys::DC, 1)? > 0;
        if !has_dcs {
            let started = std::time::Instant::now();
            let count = crate::demo::seed(&node, opts.sequencer.queue_txns_max).await?;
            tracing::info!(
                txns = count,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "demo data loaded"
            );
        }
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
    let admin = AdminServer::new(AdminService::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);

    println!("ordo: node {} listening on {local}", opts.node_id);
    if opts.dev {
        print_quickstart(local, &opts.data_dir);
    }
    tracing::info!(%local, node_id = opts.node_id, "serving");
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(1024)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ordo)
        .add_service(admin)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown_signal())
        .await
        .context("serving gRPC")?;
    node.shutdown().await;
    println!("ordo: node {} stopped", opts.node_id);
    Ok(())
}

fn print_quickstart(local: SocketAddr, data_dir: &std::path::Path) {
    let endpoint = if local.port() == 50051 && local.ip().is_loopback() {
        String::new()
    } else {
        format!(" --endpoint http://{local}")
    };
    println!(
        "\nOrdo dev node ready: data in {dir}, demo data: 12 DCs in 3 regions, {skus} SKUs.\n\
         Try, in another terminal:\n\
         \x20 ordo stock 1 1{endpoint}                      # stock of SKU 1 at DC 1 (Berlin)\n\
         \x20 ordo order --line 1:1:2 --line 5:3:1{endpoint}  # one order across two regions\n\
         \x20 ordo restock 1 1 10{endpoint}                 # add 10 units\n\
         \x20 ordo status{endpoint}                         # epoch and state hash\n\
         (from a checkout: cargo run --release --bin ordo -- stock 1 1)\n\
         Stop with Ctrl-C.",
        dir = data_dir.display(),
        skus = crate::demo::SKUS,
    );
}
