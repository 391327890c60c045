//! Which connections a port keeps: at most so many at once, at most so many from one source
//! address, none that stays silent.
//!
//! Every listener of a node (the client port and the peer port, with TLS or without) accepts
//! TCP itself and admits each connection here ([`Admission::admit`]) before anything else
//! happens on it. A connection past the port's cap, or past its source's share of it, is
//! closed at once: the kernel's backlog never fills, and one source (a client holding
//! thousands of idle sockets) cannot take the slots of others, nor the client port's those of
//! the peers, which have their own. An admitted connection ([`Admitted`]) holds its slots until
//! it closes, and closes itself when no byte has gone either way for the port's idle time, or
//! when its first bytes (the TLS handshake or the HTTP/2 preface) do not come within
//! [`FIRST_BYTES_TIMEOUT`]: a socket that says nothing holds a slot for seconds, not for good.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;

/// How long a new connection may stay silent before its first bytes.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// One port's bounds on connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections at once (`--connections-max`; the peer port: [`PEER_CONNECTIONS_MAX`]).
    pub max: usize,
    /// ... from one source address (`--connections-per-source-max`).
    pub per_source_max: usize,
    /// Closed after this long without a byte either way (`--connection-idle-ms`).
    pub idle: Duration,
}

/// The peer port's bounds: a cluster has at most a few dozen nodes, each with a few channels.
pub const PEER_CONNECTIONS_MAX: usize = 1_024;
pub const PEER_CONNECTIONS_PER_SOURCE_MAX: usize = 128;

/// File descriptors a node keeps for what is not a connection of its two ports: sled's files,
/// log segments, snapshot files, the tokens file, the metrics port, outgoing peer channels.
pub const FILES_RESERVE: usize = 256;

/// Fits both ports' caps under the process's open-file limit, so that connections can never
/// take the descriptors the log and the store need: raises the soft limit toward what the caps
/// and [`FILES_RESERVE`] need (as far as the hard limit lets it), and where that is not enough
/// lowers both caps in proportion, with a warning. Returns the client and peer port's limits.
pub fn fit_open_files(client: ConnLimits, peer: ConnLimits) -> (ConnLimits, ConnLimits) {
    let want = client.max + peer.max + FILES_RESERVE;
    let Some(have) = raise_open_files(want) else {
        return (client, peer);
    };
    if have >= want {
        return (client, peer);
    }
    let room = have.saturating_sub(FILES_RESERVE).max(2);
    let client_max = (room * client.max / (client.max + peer.max)).clamp(1, room - 1);
    let peer_max = room - client_max;
    let fit = |limits: ConnLimits, max: usize| ConnLimits {
        max,
        per_source_max: limits.per_source_max.min(max),
        idle: limits.idle,
    };
    tracing::warn!(
        open_files = have,
        client_connections_max = client_max,
        peer_connections_max = peer_max,
        "the open-file limit ({have}) cannot hold --connections-max ({}), the peer port's {} and \
         {FILES_RESERVE} files: the ports keep fewer connections (raise `ulimit -n` to {want})",
        client.max,
        peer.max
    );
    (fit(client, client_max), fit(peer, peer_max))
}

/// Raises the soft open-file limit toward `want` (at most to the hard limit); the limit after.
/// `None` where there is no such limit to read.
fn raise_open_files(want: usize) -> Option<usize> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given, which outlives the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        let want = want as libc::rlim_t;
        if limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: match limit.rlim_max {
                    libc::RLIM_INFINITY => want,
                    max => max.min(want),
                },
                rlim_max: limit.rlim_max,
            };
            // SAFETY: setrlimit reads the struct it is given, which outlives the call.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit.rlim_cur = raised.rlim_cur;
            }
        }
        Some(match limit.rlim_cur {
            libc::RLIM_INFINITY => usize::MAX,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        })
    }
    #[cfg(not(unix))]
    {
        let _ = want;
        None
    }
}

impl Default for ConnLimits {
    fn default() -> Self {
        // A source's share is large: clients behind one address (a NAT, a load balancer, a
        // service opening a stream per user) must fit; it stops one client taking every slot.
        Self {
            max: 8_192,
            per_source_max: 2_048,
            idle: Duration::from_secs(300),
        }
    }
}

/// One port's connections: the slots, and the count per source address.
pub struct Admission {
    limits: ConnLimits,
    /// Which port, for logs and metrics.
    port: &'static str,
    /// Kept at the number of connections open, where the port has one.
    gauge: Option<&'static ordo_metrics::Gauge>,
    slots: Arc<Semaphore>,
    per_source: Arc<Mutex<BTreeMap<IpAddr, usize>>>,
}

impl Admission {
    pub fn new(
        port: &'static str,
        limits: ConnLimits,
        gauge: Option<&'static ordo_metrics::Gauge>,
    ) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(limits.max)),
            per_source: Arc::new(Mutex::new(BTreeMap::new())),
            limits,
            port,
            gauge,
        })
    }

    /// Connections open on this port now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.limits.max - self.slots.available_permits()
    }

    /// A slot for a connection from `source`, or `None` past the port's or the source's cap.
    fn slot(&self, source: IpAddr) -> Option<Slot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        let mut counts = self.per_source.lock().expect("per-source counts");
        let count = counts.entry(source).or_default();
        if *count >= self.limits.per_source_max {
            return None;
        }
        *count += 1;
        if let Some(gauge) = self.gauge {
            gauge.add(1);
        }
        Some(Slot {
            _permit: permit,
            source,
            per_source: self.per_source.clone(),
            gauge: self.gauge,
        })
    }

    /// Admits `tcp` from `source`, or closes it (dropping it) past a cap.
    pub fn admit<IO>(&self, io: IO, source: IpAddr) -> Option<Admitted<IO>> {
        let Some(slot) = self.slot(source) else {
            ordo_metrics::CONNECTIONS_REFUSED.add(&[self.port], 1);
            tracing::debug!(port = self.port, %source, "connection refused: at the cap");
            return None;
        };
        Some(Admitted {
            inner: io,
            slot,
            idle: self.limits.idle,
            first_bytes: true,
            deadline: Box::pin(tokio::time::sleep(
                FIRST_BYTES_TIMEOUT.min(self.limits.idle),
            )),
        })
    }
}

/// A connection's place: one of the port's slots, and one of its source's.
struct Slot {
    _permit: OwnedSemaphorePermit,
    source: IpAddr,
    per_source: Arc<Mutex<BTreeMap<IpAddr, usize>>>,
    gauge: Option<&'static ordo_metrics::Gauge>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(gauge) = self.gauge {
            gauge.add(-1);
        }
        let mut counts = self.per_source.lock().expect("per-source counts");
        if let Some(count) = counts.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

/// An admitted connection: its slots are freed when it is dropped; it fails (and so closes)
/// once silent past its deadline.
pub struct Admitted<IO> {
    inner: IO,
    slot: Slot,
    idle: Duration,
    /// No byte came yet: the deadline is the first bytes' ([`FIRST_BYTES_TIMEOUT`]).
    first_bytes: bool,
    deadline: Pin<Box<Sleep>>,
}

impl<IO> Admitted<IO> {
    /// The address the connection came from.
    pub fn source(&self) -> IpAddr {
        self.slot.source
    }

    /// Bytes went one way or the other: the connection is not idle.
    fn active(&mut self) {
        self.first_bytes = false;
        let next = Instant::now() + self.idle;
        // Resetting a timer costs; once a millisecond is close enough.
        if next.saturating_duration_since(self.deadline.deadline()) >= Duration::from_millis(1) {
            self.deadline.as_mut().reset(next);
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.deadline.as_mut().poll(cx).is_ready().then(|| {
            let what = match self.first_bytes {
                true => "sent nothing",
                false => "idle",
            };
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connection closed: {what}"),
            )
        })
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // A read is always pending on a live connection: the place to notice silence.
            Poll::Pending => match self.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        // What the node writes first (HTTP/2's server preface goes out at once, before the
        // client says anything) is not the client's first bytes: only its own end the wait.
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) && !self.first_bytes {
            self.active();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<IO> tonic::transport::server::Connected for Admitted<IO> {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// The plaintext connections `listener` accepts and `admission` admits, with Nagle's
/// algorithm off (an answer larger than a segment must not wait for the client's delayed
/// acknowledgement); ends when the server stops taking them.
pub fn incoming(
    listener: TcpListener,
    admission: Arc<Admission>,
) -> ReceiverStream<Result<Admitted<TcpStream>, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(admitted) = accept_admitted(&listener, &admission, tx.closed()).await {
            if tx.send(Ok(admitted)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// The next connection `listener` accepts that `admission` admits, with Nagle's algorithm off;
/// `None` once `stop` resolves. An accept that fails (out of file descriptors, say) is logged
/// and tried again after a pause; a connection past a cap is closed and the next awaited.
pub async fn accept_admitted(
    listener: &TcpListener,
    admission: &Admission,
    stop: impl Future<Output = ()>,
) -> Option<Admitted<TcpStream>> {
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return None,
            accepted = listener.accept() => accepted,
        };
        let (tcp, from) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        if let Some(admitted) = admission.admit(tcp, from.ip()) {
            return Some(admitted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_share_and_a_port_its_cap() {
        let admission = Admission::new(
            "test",
            ConnLimits {
                max: 5,
                per_source_max: 3,
                idle: Duration::from_secs(1),
            },
            None,
        );
        let (a, b) = (
            "127.0.0.2".parse::<IpAddr>().unwrap(),
            "127.0.0.3".parse::<IpAddr>().unwrap(),
        );
        let held: Vec<_> = (0..4).filter_map(|_| admission.slot(a)).collect();
        assert_eq!(held.len(), 3, "a source gets its share, no more");
        let others: Vec<_> = (0..4).filter_map(|_| admission.slot(b)).collect();
        assert_eq!(others.len(), 2, "the port's cap holds across sources");
        assert_eq!(admission.open(), 5);
        drop(held);
        assert_eq!(admission.open(), 2);
        assert!(admission.per_source.lock().unwrap().get(&a).is_none());
        assert!(
            admission.slot(a).is_some(),
            "a closed connection frees its slots"
        );
    }
}
