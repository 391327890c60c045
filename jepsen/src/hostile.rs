//! The `hostile` nemesis: clients that hold a node's resources without using them, as an
//! attacker with a read token would (issue 28). For the length of the fault, against one node:
//!
//! - [`IDLE_SOCKETS`] TCP connections to its client port that never send a byte (the node
//!   must close them, keep serving other clients, and keep its peer port to the peers);
//! - [`SLOW_WATCHERS`] Watch streams from epoch 1 that take one message every
//!   [`SLOW_READ_INTERVAL`] (the node must bound what it buffers for them, and cut them off
//!   with a resume token rather than slow anything);
//! - [`STALLED_WATCHERS`] Watch streams that never read at all;
//! - with a token of its own (the run's nodes then check tokens: the runner gives them a
//!   tokens file, and its own clients a token with every scope), [`REVOKED_WATCHERS`] Watch
//!   streams that read and an OrderStream that sends an order for an unknown DC every
//!   [`REVOKED_ORDER_EVERY`] (answered with an error, never committed: the workload's state is
//!   untouched). [`REVOKE_AFTER`] into the fault the token is taken out of the tokens file;
//!   every stream it opened must end within [`REVOKE_GRACE`] (the node reloads the file and
//!   checks open streams each second). A message or order reply the node sends later is a
//!   violation ([`check`]: `hostile-revoked-token-served`);
//! - in the inventory and watch workloads, an oversize epoch: a DC of the fault's own, far from
//!   the workload's points, and [`BURST_RESTOCKS`] restocks of one row of it in one call,
//!   whose STOCK events (about 90 KB) land in one or two epochs: past a 64 KiB
//!   `--message-bytes-max`, so Watch must cut them into several messages, and the watch
//!   workload's consumers must still see every event once, as the reference does. The
//!   workload's own rows are untouched.
//!
//! None of them records operations: the workload's clients and checkers judge the run as under
//! any other fault. The nemesis's history event says what the node did to them when it healed
//! (sockets it closed, streams it cut and with which code, how long after the revocation the
//! revoked token's streams ended, and any violation).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use ordo_client::v1;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::history::Event;

/// Silent connections one fault opens.
pub const IDLE_SOCKETS: usize = 2_000;
/// Watch streams that read slowly, and how slowly.
pub const SLOW_WATCHERS: usize = 8;
pub const SLOW_READ_INTERVAL: Duration = Duration::from_secs(2);
/// Watch streams that never read.
pub const STALLED_WATCHERS: usize = 8;
/// Watch streams opened with the token the fault revokes.
pub const REVOKED_WATCHERS: usize = 2;
/// How often the revoked token's OrderStream sends an order.
pub const REVOKED_ORDER_EVERY: Duration = Duration::from_millis(200);
/// When the fault revokes its token, after its streams opened.
pub const REVOKE_AFTER: Duration = Duration::from_secs(2);
/// How soon after the revocation the token's streams must have ended: the nodes reload the
/// tokens file each second and check open streams each second, on a loaded machine.
pub const REVOKE_GRACE: Duration = Duration::from_secs(5);
/// How long the node may take to accept a token just added (it reloads the file each second).
const TOKEN_LOAD_WAIT: Duration = Duration::from_secs(5);
/// The least a hostile fault lasts, so that its token is revoked and the grace has passed
/// before it heals: the wait for the token, [`REVOKE_AFTER`], [`REVOKE_GRACE`] and a margin.
pub const FAULT_MIN: Duration = Duration::from_secs(14);
/// An order for this DC is refused at the edge (no such DC): it never enters the log.
const UNKNOWN_DC: u32 = 999_999;

/// Restocks of the oversize epoch, in one `Restocks` call (the default batch limit).
pub const BURST_RESTOCKS: usize = 1_000;
/// The burst DCs' ids: this plus the fault's number.
const BURST_DC_BASE: u32 = 900_000;
/// Numbers the bursts.
static BURSTS: AtomicU64 = AtomicU64::new(0);

/// The oversize epoch: a DC of its own, then [`BURST_RESTOCKS`] restocks of one of its rows in
/// one call. What it did, for the history.
async fn burst(endpoint: String) -> Value {
    let n = BURSTS.fetch_add(1, Ordering::Relaxed);
    let dc_id = BURST_DC_BASE + n as u32;
    let done = async {
        let client = crate::runner::connect(endpoint).await?;
        client
            .upsert_dc(v1::Dc {
                dc_id,
                name: format!("hostile burst {n}"),
                // The South Pacific: far from every point the workloads order near.
                lat: -45.0,
                lon: -170.0,
                region: Some(0),
                active: true,
            })
            .await?;
        let restocks = (0..BURST_RESTOCKS)
            .map(|_| v1::RestockRequest {
                dc_id,
                sku: 1,
                delta: 1,
                ..Default::default()
            })
            .collect();
        let results = client.restocks(restocks).await?;
        let epochs: std::collections::BTreeSet<u64> = results.iter().map(|r| r.epoch).collect();
        let applied = results.iter().filter(|r| r.applied).count();
        Ok::<_, ordo_client::Error>((applied, epochs.len()))
    };
    match tokio::time::timeout(Duration::from_secs(10), done).await {
        Ok(Ok((applied, epochs))) => {
            json!({"dc": dc_id, "restocks_applied": applied, "epochs": epochs})
        }
        Ok(Err(e)) => json!({"dc": dc_id, "error": e.to_string()}),
        Err(_) => json!({"dc": dc_id, "error": "no answer in 10 s"}),
    }
}

/// The nodes' tokens file and the binary that adds to it.
pub struct TokensFile {
    pub bin: PathBuf,
    pub file: PathBuf,
}

/// Adds a token named `name` with `scopes` to `file` (`ordo token create`); returns it.
pub fn create_token(
    bin: &Path,
    file: &Path,
    name: &str,
    scopes: &[&str],
) -> anyhow::Result<String> {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["token", "create", "--name", name, "--tokens-file"])
        .arg(file);
    for scope in scopes {
        cmd.args(["--scope", scope]);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "ordo token create: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Takes the token named `name` out of `file`, as an operator deleting its entry would (the
/// file replaced whole, as `ordo token create` does).
fn revoke_token(file: &Path, name: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)?;
    let head = format!("[[token]]\nname = {name:?}\n");
    let start = text
        .find(&head)
        .with_context(|| format!("no token {name:?} in {}", file.display()))?;
    let end = text[start + head.len()..]
        .find("[[token]]")
        .map_or(text.len(), |n| start + head.len() + n);
    let kept = format!("{}{}", &text[..start], &text[end..]);
    let staged = file.with_extension("toml.revoke");
    std::fs::write(&staged, kept)?;
    std::fs::rename(&staged, file)?;
    Ok(())
}

/// Numbers the tokens the faults create.
static TOKENS_MADE: AtomicU64 = AtomicU64::new(0);

/// What the node did to the hostile clients.
#[derive(Debug, Default)]
struct Seen {
    /// Watch streams that could not be opened, by code.
    refused: Vec<String>,
    /// Watch streams the node ended, by code (and `ordo-stream-end`).
    ended: Vec<String>,
    /// How each stream of the revoked token ended: code, and when after the revocation.
    revoked: Vec<String>,
    /// Served past [`REVOKE_GRACE`] after the revocation, or could not be tried.
    violations: Vec<String>,
    /// Why the revocation part did not run, if it did not.
    revocation_skipped: Option<String>,
    /// When the token was revoked.
    revoked_at: Option<Instant>,
}

/// A hostile load in force.
pub struct Hostile {
    node: usize,
    sockets: Vec<tokio::net::TcpStream>,
    tasks: Vec<JoinHandle<()>>,
    seen: Arc<Mutex<Seen>>,
}

/// Raises this process's soft open-file limit to its hard limit: a hostile fault holds
/// [`IDLE_SOCKETS`] sockets beside the run's clients, past the usual soft limit of 1,024.
pub fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes, and setrlimit reads, the struct given, which outlives both.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Starts the load against node `node` (client address `addr`, endpoint `endpoint`); with
/// `tokens`, the revoked token's streams too.
pub async fn start(
    node: usize,
    addr: &str,
    endpoint: String,
    tokens: Option<TokensFile>,
    oversize_epoch: bool,
) -> (Hostile, Value) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tasks = Vec::new();
    let burst = match oversize_epoch {
        true => burst(endpoint.clone()).await,
        false => Value::Null,
    };
    if let Some(tokens) = tokens {
        let (endpoint, seen) = (endpoint.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = revoked(endpoint, tokens, seen.clone()).await {
                seen.lock().expect("seen").revocation_skipped = Some(format!("{e:#}"));
            }
        }));
    }
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
        "oversize_epoch": burst,
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
        let mut seen = self.seen.lock().expect("seen");
        // A stream of the revoked token that neither ended nor was caught serving is still
        // open: a violation too, once the grace has passed.
        let settled = seen.revoked.len() + seen.violations.len();
        let open = (REVOKED_WATCHERS + 1).saturating_sub(settled);
        if let Some(after) = seen.revoked_at.map(|at| at.elapsed()) {
            if open > 0 && after > REVOKE_GRACE {
                seen.violations.push(format!(
                    "{open} of its streams still open {} ms after its token was revoked",
                    after.as_millis()
                ));
            }
        }
        json!({
            "node": format!("n{}", self.node + 1),
            "idle_sockets_closed_by_node": closed,
            "idle_sockets": self.sockets.len(),
            "watchers_refused": seen.refused,
            "watchers_ended_by_node": seen.ended,
            "revoked_token_streams": seen.revoked,
            "revocation_skipped": seen.revocation_skipped,
            "violations": seen.violations,
        })
    }
}

/// The revoked token's streams: opens them with a new token, revokes it [`REVOKE_AFTER`]
/// later, and notes how each ended and anything served past [`REVOKE_GRACE`].
async fn revoked(
    endpoint: String,
    tokens: TokensFile,
    seen: Arc<Mutex<Seen>>,
) -> anyhow::Result<()> {
    let name = format!("hostile-{}", TOKENS_MADE.fetch_add(1, Ordering::Relaxed));
    let token = {
        let (bin, file, name) = (tokens.bin.clone(), tokens.file.clone(), name.clone());
        tokio::task::spawn_blocking(move || create_token(&bin, &file, &name, &["read", "write"]))
            .await??
    };
    let client = crate::runner::connect(endpoint).await?.with_token(&token)?;
    let revoked_at: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    // Dropped (so aborted) with this task when the fault heals.
    let mut streams = tokio::task::JoinSet::new();
    let request = v1::WatchRequest {
        start: Some(v1::watch_request::Start::FromNow(true)),
        progress_interval_ms: 100,
        ..Default::default()
    };
    // The node takes up to a second to load the new token.
    let loading = Instant::now();
    while let Err(e) = client.watch(request.clone()).await {
        anyhow::ensure!(
            loading.elapsed() < TOKEN_LOAD_WAIT,
            "the node did not take the new token: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..REVOKED_WATCHERS {
        let mut stream = client
            .watch(request.clone())
            .await
            .context("a watch with the token")?;
        let (seen, revoked_at) = (seen.clone(), revoked_at.clone());
        streams.spawn(async move {
            loop {
                let got = stream.message().await;
                let after = revoked_at.get().map(|at| at.elapsed());
                let ended = match got {
                    Ok(Some(_)) => {
                        if let Some(after) = after.filter(|a| *a > REVOKE_GRACE) {
                            let mut seen = seen.lock().expect("seen");
                            seen.violations.push(format!(
                                "watch {i}: a message {} ms after its token was revoked",
                                after.as_millis()
                            ));
                            return;
                        }
                        continue;
                    }
                    Ok(None) => "ended".to_string(),
                    Err(status) => format!("{:?}", status.code()),
                };
                note_end(&seen, &format!("watch {i}"), &ended, after);
                return;
            }
        });
    }
    let orders = client
        .order_stream()
        .await
        .context("an order stream with the token")?;
    {
        let (seen, revoked_at) = (seen.clone(), revoked_at.clone());
        streams.spawn(async move {
            for n in 0u64.. {
                tokio::time::sleep(REVOKED_ORDER_EVERY).await;
                let sent = revoked_at.get().map(|at| at.elapsed());
                let request = v1::PlaceOrderRequest {
                    request_id: format!("hostile-revoked-{n}"),
                    lines: vec![ordo_client::Line {
                        dc_id: UNKNOWN_DC,
                        sku: 1,
                        qty: 1,
                    }
                    .into()],
                    mode: v1::OrderMode::Partial as i32,
                    ..Default::default()
                };
                // Answered (refused for its DC) while the token is good; the stream ends once
                // the node sees the revocation.
                let reply = orders.place_order_request(request).await;
                let ended = match &reply {
                    Err(ordo_client::Error::Status(s)) => match s.code() {
                        tonic::Code::InvalidArgument | tonic::Code::NotFound => None,
                        code => Some(format!("{code:?}")),
                    },
                    Err(e) => Some(format!("{e}")),
                    Ok(_) => None,
                };
                match (ended, sent) {
                    (Some(ended), _) => {
                        note_end(&seen, "order stream", &ended, sent);
                        return;
                    }
                    (None, Some(after)) if after > REVOKE_GRACE => {
                        seen.lock().expect("seen").violations.push(format!(
                            "order stream: an order sent {} ms after its token was revoked was \
                             answered",
                            after.as_millis()
                        ));
                        return;
                    }
                    (None, _) => {}
                }
            }
        });
    }
    tokio::time::sleep(REVOKE_AFTER).await;
    {
        let (file, name) = (tokens.file.clone(), name.clone());
        tokio::task::spawn_blocking(move || revoke_token(&file, &name)).await??;
    }
    let now = Instant::now();
    let _ = revoked_at.set(now);
    seen.lock().expect("seen").revoked_at = Some(now);
    // The streams run until they end or the fault heals (this task is aborted with them).
    while streams.join_next().await.is_some() {}
    Ok(())
}

/// Notes how a stream of the revoked token ended, and when (`after` the revocation, if it
/// had happened).
fn note_end(seen: &Mutex<Seen>, stream: &str, how: &str, after: Option<Duration>) {
    let when = after.map_or("before the revocation".into(), |a| {
        format!("{} ms after the revocation", a.as_millis())
    });
    seen.lock()
        .expect("seen")
        .revoked
        .push(format!("{stream}: {how} {when}"));
}

/// The hostile faults' violations in a history: a stream of a revoked token served past
/// [`REVOKE_GRACE`]. Anomaly counts by kind, and the violations.
pub fn check(events: &[Event]) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut counts = BTreeMap::new();
    let mut examples = Vec::new();
    for event in events.iter().filter(|e| e.process.is_nemesis()) {
        let Some(violations) = event.value.get("violations").and_then(Value::as_array) else {
            continue;
        };
        for v in violations {
            *counts
                .entry("hostile-revoked-token-served".to_string())
                .or_insert(0) += 1;
            examples.push(format!("hostile: {}", v.as_str().unwrap_or_default()));
        }
    }
    (counts, examples)
}
