//! The `hostile` nemesis: clients that hold a node's resources without using them, as an
//! attacker with a read token would (issue 28). For the length of the fault, against one node:
//!
//! - [`IDLE_SOCKETS`] TCP connections to its client port that never send a byte (the node
//!   must close them, keep serving other clients, and keep its peer port to the peers);
//! - [`SLOW_WATCHERS`] Watch streams from epoch 1 that take one message every
//!   [`SLOW_READ_INTERVAL`] (the node must bound what it buffers for them, and cut them off
//!   with a resume token rather than slow anything);
//! - [`STALLED_WATCHERS`] Watch streams that never read at all.
//!
//! None of them records operations: the workload's clients and checkers judge the run as under
//! any other fault. The nemesis's history event says what the node did to them when it healed
//! (sockets it closed, streams it cut and with which code).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ordo_client::v1;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// Silent connections one fault opens.
pub const IDLE_SOCKETS: usize = 300;
/// Watch streams that read slowly, and how slowly.
pub const SLOW_WATCHERS: usize = 8;
pub const SLOW_READ_INTERVAL: Duration = Duration::from_secs(2);
/// Watch streams that never read.
pub const STALLED_WATCHERS: usize = 8;

/// What the node did to the hostile clients.
#[derive(Debug, Default)]
struct Seen {
    /// Watch streams that could not be opened, by code.
    refused: Vec<String>,
    /// Watch streams the node ended, by code (and `ordo-stream-end`).
    ended: Vec<String>,
}

/// A hostile load in force.
pub struct Hostile {
    node: usize,
    sockets: Vec<tokio::net::TcpStream>,
    tasks: Vec<JoinHandle<()>>,
    seen: Arc<Mutex<Seen>>,
}

/// Starts the load against node `node` (client address `addr`, endpoint `endpoint`).
pub async fn start(node: usize, addr: &str, endpoint: String) -> (Hostile, Value) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tasks = Vec::new();
    for i in 0..SLOW_WATCHERS + STALLED_WATCHERS {
        let (endpoint, seen) = (endpoint.clone(), seen.clone());
        let reads = i < SLOW_WATCHERS;
        tasks.push(tokio::spawn(async move {
            watcher(endpoint, reads, seen).await;
        }));
    }
    // The watchers open their streams first: the sockets may take the source's share of the
    // node's connections, and then no new connection from it is admitted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sockets = Vec::new();
    let mut connect_errors = 0;
    for _ in 0..IDLE_SOCKETS {
        match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(socket)) => sockets.push(socket),
            _ => connect_errors += 1,
        }
    }
    let value = json!({
        "node": format!("n{}", node + 1),
        "idle_sockets": sockets.len(),
        "idle_socket_connect_errors": connect_errors,
        "slow_watchers": SLOW_WATCHERS,
        "stalled_watchers": STALLED_WATCHERS,
    });
    (
        Hostile {
            node,
            sockets,
            tasks,
            seen,
        },
        value,
    )
}

/// One hostile watcher: from epoch 1, reading a message every [`SLOW_READ_INTERVAL`] (or
/// never), until the node ends the stream or the fault heals.
async fn watcher(endpoint: String, reads: bool, seen: Arc<Mutex<Seen>>) {
    let client = match crate::runner::connect(endpoint).await {
        Ok(client) => client,
        Err(e) => {
            seen.lock()
                .expect("seen")
                .refused
                .push(format!("connect: {e}"));
            return;
        }
    };
    let request = v1::WatchRequest {
        start: Some(v1::watch_request::Start::FromEpoch(1)),
        ..Default::default()
    };
    let mut stream = match client.watch(request).await {
        Ok(stream) => stream,
        Err(e) => {
            let code = e.code().map_or("none".into(), |c| format!("{c:?}"));
            seen.lock().expect("seen").refused.push(code);
            return;
        }
    };
    if !reads {
        // Holds the stream, reading nothing, until the fault heals (the task is aborted).
        std::future::pending::<()>().await;
    }
    loop {
        match stream.message().await {
            Ok(Some(_)) => tokio::time::sleep(SLOW_READ_INTERVAL).await,
            Ok(None) => {
                seen.lock().expect("seen").ended.push("ended".into());
                return;
            }
            Err(status) => {
                let end = status
                    .metadata()
                    .get("ordo-stream-end")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| format!(" ({v})"))
                    .unwrap_or_default();
                seen.lock()
                    .expect("seen")
                    .ended
                    .push(format!("{:?}{end}", status.code()));
                return;
            }
        }
    }
}

impl Hostile {
    /// Ends the load: what the node did to it, for the history.
    pub async fn stop(mut self) -> Value {
        use tokio::io::AsyncReadExt;
        // A socket the node closed reads its end at once.
        let mut closed = 0;
        for socket in &mut self.sockets {
            let mut buf = [0u8; 256];
            let read = tokio::time::timeout(Duration::from_millis(1), async {
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return true,
                        Ok(_) => continue,
                    }
                }
            })
            .await;
            closed += usize::from(read.unwrap_or(false));
        }
        for task in &self.tasks {
            task.abort();
        }
        let seen = self.seen.lock().expect("seen");
        json!({
            "node": format!("n{}", self.node + 1),
            "idle_sockets_closed_by_node": closed,
            "idle_sockets": self.sockets.len(),
            "watchers_refused": seen.refused,
            "watchers_ended_by_node": seen.ended,
        })
    }
}
