//! The Raft network over tonic: one lazily connected gRPC channel per peer.
//!
//! openraft's messages travel bincode-encoded inside `ordo.internal.v1.Raft` calls. A channel
//! is made on first use and re-made by tonic when the connection drops; a call that cannot
//! reach the peer (refused, reset, timed out) is reported to openraft as `Unreachable`, and
//! openraft then backs off with [`PeerClient::backoff`] before trying again. Message sizes are
//! bounded explicitly on both sides ([`RAFT_MESSAGE_BYTES_MAX`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use ordo_proto::internal::v1::raft_client::RaftClient;
use ordo_proto::internal::v1::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::codegen::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::peers::{AttachSecret, ClusterSecret, MemberAddr};
use crate::types::{NodeId, TypeConfig};

/// The largest Raft message a node sends or accepts. AppendEntries carries at most
/// [`APPEND_ENTRIES_MAX`] batches, each bounded by `batch_bytes_max`.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Entries in one AppendEntries message (openraft's `max_payload_entries`).
pub const APPEND_ENTRIES_MAX: u64 = 32;

/// The largest `batch_bytes_max` a node accepts: [`APPEND_ENTRIES_MAX`] batches of it, with
/// room for each entry's envelope and the message's own, fit in [`RAFT_MESSAGE_BYTES_MAX`].
pub const BATCH_BYTES_LIMIT: usize =
    RAFT_MESSAGE_BYTES_MAX / APPEND_ENTRIES_MAX as usize - 64 * 1024;

/// How long to wait for a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a snapshot chunk may take to reach a follower and be written: 1 MiB, generously
/// (openraft 0.9's default of 200 ms can retry one chunk forever on a loaded node).
pub const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last chunk of a snapshot may take: the follower answers it once it has
/// imported the whole snapshot, a minute or more for 10⁸ stock rows. A shorter bound would
/// have the leader give up while the follower imports, and send the whole snapshot again.
pub const SNAPSHOT_INSTALL_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Channels kept at most. Membership changes can name new addresses over a node's life; past
/// this many the map is cleared (channels are cheap to re-make) rather than grown.
const CHANNELS_MAX: usize = 64;

/// Channels to peers, shared by the Raft network and the forwarder, keyed by address.
/// A client of a peer's `ordo.internal.v1.Raft` service, carrying the cluster secret.
pub type PeerRaftClient = RaftClient<InterceptedService<Channel, AttachSecret>>;

#[derive(Clone, Default)]
pub struct Channels {
    by_addr: Arc<Mutex<Cache>>,
    /// Put on every call to a peer's internal service.
    secret: Option<ClusterSecret>,
    /// The address outgoing connections are made from: the node's own listen address, so that
    /// traffic between nodes on one host (each on its own loopback address) can be told apart,
    /// e.g. by firewall rules in fault tests. `None`: the kernel chooses.
    local_ip: Option<std::net::IpAddr>,
    /// Mutual TLS to peers (`None`: plaintext).
    tls: Option<Arc<dyn PeerClientTls>>,
}

/// Where calls to peers get their TLS configuration (the CA they trust, the certificate they
/// present). Its generation moves whenever the node reloads its certificate files; channels
/// made under an older generation are dropped, so every new connection presents the
/// certificate in force, and calls already under way finish on theirs. Every call to a peer
/// reads the generation; only a channel being made reads the configuration.
pub trait PeerClientTls: Send + Sync {
    fn generation(&self) -> u64;
    fn config(&self) -> tonic::transport::ClientTlsConfig;
}

/// The channels made, and the TLS generation they were made under.
#[derive(Default)]
struct Cache {
    tls_generation: u64,
    map: BTreeMap<String, Channel>,
}

impl Channels {
    pub fn new(
        local_ip: Option<std::net::IpAddr>,
        secret: Option<ClusterSecret>,
        tls: Option<Arc<dyn PeerClientTls>>,
    ) -> Self {
        Self {
            by_addr: Arc::default(),
            secret,
            local_ip,
            tls,
        }
    }

    /// The channel to `addr` (`host:port`), made lazily: no connection is attempted until a
    /// call needs one, and a dropped connection is re-made on the next call.
    pub fn get(&self, addr: &str) -> Result<Channel, String> {
        let mut cache = self.by_addr.lock().expect("channels lock");
        if let Some(generation) = self.tls.as_ref().map(|tls| tls.generation()) {
            if generation != cache.tls_generation {
                cache.map.clear();
                cache.tls_generation = generation;
            }
        }
        let map = &mut cache.map;
        if let Some(channel) = map.get(addr) {
            return Ok(channel.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .local_address(self.local_ip);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.config())
                .map_err(|e| format!("TLS to peer {addr:?}: {e}"))?;
        }
        let channel = endpoint.connect_lazy();
        if map.len() >= CHANNELS_MAX {
            map.clear();
        }
        map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// A client of the internal service at a peer listener (`peer_addr`), with the secret.
    pub fn raft_client(&self, peer_addr: &str) -> Result<PeerRaftClient, String> {
        Ok(
            RaftClient::with_interceptor(self.get(peer_addr)?, AttachSecret(self.secret.clone()))
                .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX),
        )
    }
}

#[derive(Clone, Default)]
pub struct GrpcNetwork {
    pub channels: Channels,
}

pub struct PeerClient {
    target: NodeId,
    addr: String,
    channels: Channels,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient {
            target,
            addr: MemberAddr::parse(&node.addr).peer,
            channels: self.channels.clone(),
        }
    }
}

fn unreachable<E: std::error::Error>(msg: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(msg)))
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    bincode::serialize(value).map_err(|e| e.to_string())
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::deserialize(bytes).map_err(|e| e.to_string())
}

type CallFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>
            + Send,
    >,
>;

impl PeerClient {
    /// Sends one bincode-encoded request and decodes the peer's `Result<Resp, Err>`.
    async fn call<Req, Resp, Err>(
        &self,
        request: &Req,
        option: &RPCOption,
        send: impl FnOnce(PeerRaftClient, RaftPayload) -> CallFuture,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, Err>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        Err: std::error::Error + DeserializeOwned,
    {
        let data = encode(request)
            .map_err(|e| RPCError::Network(NetworkError::new(&AnyError::error(e))))?;
        let client = self
            .channels
            .raft_client(&self.addr)
            .map_err(|e| unreachable(format!("node {}: {e}", self.target)))?;
        let call = send(client, RaftPayload { data });
        let response = match tokio::time::timeout(option.hard_ttl(), call).await {
            Err(_) => {
                return Err(unreachable(format!(
                    "node {} at {} did not answer within {:?}",
                    self.target,
                    self.addr,
                    option.hard_ttl()
                )))
            }
            Ok(Err(status)) => {
                return Err(unreachable(format!(
                    "node {} at {}: {}: {}",
                    self.target,
                    self.addr,
                    status.code(),
                    status.message()
                )))
            }
            Ok(Ok(response)) => response.into_inner(),
        };
        let result: Result<Resp, Err> = decode(&response.data)
            .map_err(|e| RPCError::Network(NetworkError::new(&AnyError::error(e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(&rpc, &option, |mut c, p| {
            Box::pin(async move { c.append_entries(p).await })
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        // `option` carries SNAPSHOT_INSTALL_TIMEOUT (the node's `install_snapshot_timeout`):
        // only the last chunk may take that long.
        let chunk = RPCOption::new(SNAPSHOT_CHUNK_TIMEOUT);
        let option = if rpc.done { &option } else { &chunk };
        self.call(&rpc, option, |mut c, p| {
            Box::pin(async move { c.install_snapshot(p).await })
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(&rpc, &option, |mut c, p| {
            Box::pin(async move { c.vote(p).await })
        })
        .await
    }

    /// Exponential from 50 ms to 1 s: a restarted peer is found again quickly, a dead one is
    /// not hammered.
    fn backoff(&self) -> Backoff {
        let delays = (0..)
            .map(|i: u32| Duration::from_millis(50u64.saturating_mul(1 << i.min(5)).min(1000)));
        Backoff::new(delays)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A reloaded peer certificate reaches the channels: those made before are dropped, so the
    /// next connection to any peer presents the new one.
    #[tokio::test]
    async fn channels_are_remade_when_the_tls_generation_moves() {
        struct Counted(Arc<AtomicU64>);
        impl PeerClientTls for Counted {
            fn generation(&self) -> u64 {
                self.0.load(Ordering::SeqCst)
            }
            fn config(&self) -> tonic::transport::ClientTlsConfig {
                tonic::transport::ClientTlsConfig::new()
            }
        }
        let generation = Arc::new(AtomicU64::new(1));
        let channels = Channels::new(None, None, Some(Arc::new(Counted(generation.clone()))));
        let cached = |c: &Channels| c.by_addr.lock().unwrap().map.len();
        channels.get("127.0.0.1:1").unwrap();
        channels.get("127.0.0.1:2").unwrap();
        channels.get("127.0.0.1:1").unwrap();
        assert_eq!(cached(&channels), 2);
        generation.store(2, Ordering::SeqCst);
        channels.get("127.0.0.1:1").unwrap();
        assert_eq!(cached(&channels), 1, "channels of the old certificate kept");
        assert_eq!(channels.by_addr.lock().unwrap().tls_generation, 2);
    }
}
