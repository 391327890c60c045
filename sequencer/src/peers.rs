//! How nodes reach each other, and how they know each other: member addresses and the cluster
//! secret.
//!
//! Every node has two listeners. The client port serves `ordo.v1` (with health and
//! reflection); the peer port serves `ordo.internal.v1` (Raft, forwarding, read index) and
//! nothing else. A member's entry in the Raft membership (`BasicNode.addr`) names both:
//! `PEER_ADDR,CLIENT_ADDR`. An entry of one address was written before the split and named
//! the client port; it is read with the default peer port (client port + 1000).
//!
//! Every peer call carries the cluster secret in [`SECRET_METADATA_KEY`]; the peer listener
//! refuses a call without the right one with UNAUTHENTICATED before it reaches the service,
//! comparing digests in constant time.

use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Where a member is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberAddr {
    /// Its peer listener: Raft, forwarding, read index.
    pub peer: String,
    /// Its client listener: what clients (and leader hints, and admin proxies) use.
    pub client: String,
}

/// The peer port when only a client port is known: this many above it, on the same host.
pub const PEER_PORT_OFFSET: u16 = 1000;

impl MemberAddr {
    /// Reads a membership entry: `PEER,CLIENT`, or one address: an entry written before the
    /// peer port existed, which named the client port; its peer port is then the default one
    /// ([`PEER_PORT_OFFSET`] above), so a cluster restarted on this version finds its peers.
    pub fn parse(entry: &str) -> MemberAddr {
        match entry.split_once(',') {
            Some((peer, client)) => MemberAddr {
                peer: peer.trim().to_string(),
                client: client.trim().to_string(),
            },
            None => {
                let client = entry.trim().to_string();
                let peer = shift_port(&client, i32::from(PEER_PORT_OFFSET))
                    .unwrap_or_else(|| client.clone());
                MemberAddr { peer, client }
            }
        }
    }

    /// The membership entry for this member.
    pub fn entry(&self) -> String {
        format!("{},{}", self.peer, self.client)
    }
}

/// `host:port` with the port moved by `delta`, for the default peer address of a client
/// address (and back). `None` when the address has no port or the port would leave 1..=65535.
pub fn shift_port(addr: &str, delta: i32) -> Option<String> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let moved = i32::from(port) + delta;
    let moved = u16::try_from(moved).ok().filter(|&p| p > 0)?;
    Some(format!("{host}:{moved}"))
}

/// The metadata key of the cluster secret on peer calls.
pub const SECRET_METADATA_KEY: &str = ordo_proto::SECRET_METADATA_KEY;

/// The fewest bytes a cluster secret may have.
pub const SECRET_BYTES_MIN: usize = 16;

/// The shared secret of a cluster's nodes. Printable ASCII (it travels as metadata).
#[derive(Clone)]
pub struct ClusterSecret(Arc<str>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// A secret from a file's contents (surrounding whitespace ignored).
    pub fn new(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() < SECRET_BYTES_MIN {
            return Err(format!(
                "the cluster secret must be at least {SECRET_BYTES_MIN} bytes, not {}",
                text.len()
            ));
        }
        if let Some(bad) = text.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
            return Err(format!(
                "the cluster secret may hold only printable ASCII without spaces; found byte \
                 0x{bad:02x}"
            ));
        }
        Ok(Self(text.into()))
    }

    /// The secret as metadata (it is printable ASCII, checked in [`ClusterSecret::new`]).
    pub fn metadata_value(&self) -> MetadataValue<tonic::metadata::Ascii> {
        MetadataValue::try_from(&*self.0).expect("printable ASCII is valid metadata")
    }

    /// Puts the secret on a request.
    pub fn attach<T>(&self, mut request: Request<T>) -> Request<T> {
        request
            .metadata_mut()
            .insert(SECRET_METADATA_KEY, self.metadata_value());
        request
    }

    /// Whether `offered` is this secret. Compares BLAKE3 digests byte by byte without an early
    /// exit, so the time taken says nothing about how much of a guess was right.
    pub fn matches(&self, offered: &[u8]) -> bool {
        same_digest(
            blake3::hash(self.0.as_bytes()).as_bytes(),
            blake3::hash(offered).as_bytes(),
        )
    }
}

/// Whether two digests are equal, compared byte by byte without an early exit (the cluster
/// secret here, client tokens in the server).
pub fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Client side: puts the secret on every outgoing peer call.
#[derive(Clone, Debug)]
pub struct AttachSecret(pub Option<ClusterSecret>);

impl Interceptor for AttachSecret {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(secret) = &self.0 {
            request = secret.attach(request);
        }
        Ok(request)
    }
}

/// Server side: refuses every call that does not carry the secret.
#[derive(Clone, Debug)]
pub struct CheckSecret(pub ClusterSecret);

impl Interceptor for CheckSecret {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let offered = request
            .metadata()
            .get(SECRET_METADATA_KEY)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if self.0.matches(offered) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "peer calls need this cluster's secret (--cluster-secret-file)",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_entries_old_and_new() {
        let legacy = MemberAddr::parse("127.0.0.1:50051");
        assert_eq!(legacy.peer, "127.0.0.1:51051");
        assert_eq!(legacy.client, "127.0.0.1:50051");
        let split = MemberAddr::parse("127.0.0.1:51051,127.0.0.1:50051");
        assert_eq!(split.peer, "127.0.0.1:51051");
        assert_eq!(split.client, "127.0.0.1:50051");
        assert_eq!(MemberAddr::parse(&split.entry()), split);
    }

    #[test]
    fn ports_shift_within_range() {
        assert_eq!(
            shift_port("127.0.0.1:50051", 1000).as_deref(),
            Some("127.0.0.1:51051")
        );
        assert_eq!(
            shift_port("[::1]:2000", -1000).as_deref(),
            Some("[::1]:1000")
        );
        assert_eq!(shift_port("h:65000", 1000), None);
        assert_eq!(shift_port("h:500", -1000), None);
        assert_eq!(shift_port("no-port", 1), None);
    }

    #[test]
    fn secrets() {
        assert!(ClusterSecret::new("short").is_err());
        assert!(ClusterSecret::new("has a space in it here").is_err());
        let s = ClusterSecret::new("  0123456789abcdef0123\n").unwrap();
        assert!(s.matches(b"0123456789abcdef0123"));
        assert!(!s.matches(b"0123456789abcdef0124"));
        assert!(!s.matches(b""));
        let mut check = CheckSecret(s.clone());
        assert_eq!(
            check.call(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let attached = AttachSecret(Some(s)).call(Request::new(())).unwrap();
        assert!(check.call(attached).is_ok());
    }
}
