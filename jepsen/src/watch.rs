//! The `watch` workload's change-feed consumers: they follow `Watch` from epoch 1 while the
//! inventory workload's writers and the nemeses run, and record what they receive for
//! [`crate::watch_check`].
//!
//! Each consumer ([`CONSUMERS`] of them, beside the workload's client processes, which they are
//! not counted among) starts on a node of its own and reads one stream with a progress message every
//! [`PROGRESS_INTERVAL_MS`]. It leaves the node for the next one (`Client::next_endpoint`) when
//! the stream fails to open or ends with any status, when no message at all comes for
//! [`SILENCE_MAX`] (a paused node), or when the epoch it covers stays put for [`STALE_MAX`] (a
//! node cut off from the leader, or removed), and resumes there from the last resume token it
//! received: the token of an epoch's last message or of a progress message. An epoch is recorded
//! only when its last message came; one cut short is dropped and comes again after the token.
//! A node that answers OUT_OF_RANGE (it installed a snapshot past the consumer's position) is
//! passed over; if every node does, the consumer stops and says so. The second consumer stops
//! reading for [`DAWDLE_FOR`] every [`DAWDLE_EVERY`] and then catches up on what the stream
//! held for it (at this workload's few KB of events a second, the transport's flow-control
//! windows hold it all: the node's RESOURCE_EXHAUSTED cut-off, which `server/tests/watch.rs`
//! covers, is not reached); the third starts half way through the run, from epoch 1: it reads
//! history while the writes go on, and meets nodes whose feed starts after a snapshot.
//!
//! After the run, [`finish`] reads the final state the checker needs (every stock row at one
//! epoch, every committed order, each SKU's price and each test user's subscriptions: see
//! [`crate::pricing`]), has each consumer read on until it covers that epoch, and
//! reads a reference stream from epoch 1 the same way; last, it asks every node where its feed
//! starts (after the snapshot it installed, if it did). Every record goes to
//! `watch/<name>.jsonl` in the run directory as it happens.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use ordo_client::{v1, Client};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::feed_record::{seen, Record, Seen, FEED_DIR, REFERENCE};
use crate::pricing;

/// Consumers following the feed during the run.
pub const CONSUMERS: usize = 3;
/// How often a quiet stream sends a Progress message.
pub const PROGRESS_INTERVAL_MS: u32 = 200;
/// How long a stream may take to open (a paused node accepts the connection, then nothing).
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a stream may stay silent, with progress due every [`PROGRESS_INTERVAL_MS`].
pub const SILENCE_MAX: Duration = Duration::from_secs(3);
/// How long the covered epoch may stay put before the consumer tries another node: under
/// load, a node that applies nothing for this long is cut off from the leader (a partition,
/// or removed); an election takes about a second.
pub const STALE_MAX: Duration = Duration::from_secs(2);
/// After the run, how long a consumer may take to cover the final epoch.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
/// The pause after trying every node in a row without a stream that moved.
const ROUND_PAUSE: Duration = Duration::from_millis(500);
/// Orders read per ListOrders page in the final state.
const LIST_PAGE: u32 = 1_000;
/// How often the dawdling consumer stops reading, and for how long: it falls behind while the
/// node goes on, then reads what the stream held for it. (Were it cut off, RESOURCE_EXHAUSTED,
/// it would resume elsewhere like after any error.)
const DAWDLE_EVERY: Duration = Duration::from_secs(10);
const DAWDLE_FOR: Duration = Duration::from_secs(3);

/// How a consumer differs from the plain one.
#[derive(Clone, Copy, Default)]
struct Habits {
    /// Starts this long after the others (from epoch 1 all the same): it reads history while
    /// the writes go on, from nodes that may have installed a snapshot past it (OUT_OF_RANGE).
    start_after: Duration,
    /// Stops reading for [`DAWDLE_FOR`] every [`DAWDLE_EVERY`] while the run goes on.
    dawdles: bool,
}

/// The consumers following the feed, started before the workload.
pub struct Consumers {
    /// The epoch to cover before stopping: `None` while the run goes on.
    target: watch::Sender<Option<u64>>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    /// Shared with the reference, read after the run.
    dir: std::path::PathBuf,
    endpoints: Vec<String>,
    started: Instant,
}

impl Consumers {
    /// Starts [`CONSUMERS`] consumers spread over the nodes (with 5: nodes 1, 2 and 4; with 3:
    /// one each), recording into `run_dir/watch/`; `started` is the history's time zero. The
    /// first follows plainly, the second dawdles, the third starts half way through `run_for`.
    pub fn start(
        run_dir: &Path,
        endpoints: &[String],
        started: Instant,
        run_for: Duration,
    ) -> anyhow::Result<Self> {
        let dir = run_dir.join(FEED_DIR);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (target, rx) = watch::channel(None);
        let tasks = (0..CONSUMERS)
            .map(|i| {
                let name = format!("consumer-{}", i + 1);
                let (dir, endpoints, rx) = (dir.clone(), endpoints.to_vec(), rx.clone());
                let first = i * endpoints.len() / CONSUMERS;
                let habits = match i {
                    0 => Habits::default(),
                    1 => Habits {
                        dawdles: true,
                        ..Habits::default()
                    },
                    _ => Habits {
                        start_after: run_for / 2,
                        ..Habits::default()
                    },
                };
                tokio::spawn(async move {
                    tokio::time::sleep(habits.start_after).await;
                    let consumer = Consumer::new(&dir, &name, &endpoints, first, started, rx);
                    consumer.await?.run(habits).await
                })
            })
            .collect();
        Ok(Consumers {
            target,
            tasks,
            dir,
            endpoints: endpoints.to_vec(),
            started,
        })
    }
}

/// After the final reads: the final state for the checker (the history's `watch-final` value),
/// every consumer reading on until it covers it, then the reference stream from epoch 1.
/// `client` reads linearizably.
pub async fn finish(
    consumers: Consumers,
    client: &Client,
    dcs: &[u32],
    skus: &[u32],
) -> anyhow::Result<Value> {
    let (value, through) = final_state(client, dcs, skus).await?;
    let _ = consumers.target.send(Some(through));
    for task in consumers.tasks {
        task.await.context("a consumer panicked")??;
    }
    let (_tx, rx) = watch::channel(Some(through));
    let reference = Consumer::new(
        &consumers.dir,
        REFERENCE,
        &consumers.endpoints,
        0,
        consumers.started,
        rx,
    )
    .await?;
    reference.run(Habits::default()).await?;
    let mut value = value;
    value["feed_starts"] = feed_starts(&consumers.endpoints).await;
    Ok(value)
}

/// Where each node's feed starts, `[[node, epoch], ...]`: 1, or past the snapshot it installed
/// (OUT_OF_RANGE's `ordo-feed-start`); `null` for a node that did not answer.
async fn feed_starts(endpoints: &[String]) -> Value {
    let mut starts = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let probe = async {
            let client = crate::runner::connect(endpoint.clone()).await?;
            let request = v1::WatchRequest {
                start: Some(v1::watch_request::Start::FromEpoch(1)),
                ..Default::default()
            };
            client.watch(request).await.map(|_| ())
        };
        let start = match tokio::time::timeout(OPEN_TIMEOUT, probe).await {
            Ok(Ok(())) => json!(1),
            Ok(Err(ordo_client::Error::Status(s))) if s.code() == tonic::Code::OutOfRange => s
                .metadata()
                .get("ordo-feed-start")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(Value::Null, |e| json!(e)),
            _ => Value::Null,
        };
        starts.push(json!([i + 1, start]));
    }
    Value::Array(starts)
}

/// Every stock row at one epoch, every committed order, each SKU's price and each test user's
/// subscriptions; returns the `watch-final` value and the epoch that covers the reads the feed
/// is checked against (stock, orders, prices: subscriptions are not in the feed).
async fn final_state(client: &Client, dcs: &[u32], skus: &[u32]) -> anyhow::Result<(Value, u64)> {
    let deadline = Instant::now() + FINISH_TIMEOUT;
    let stock = loop {
        match client.get_availability(dcs.to_vec(), skus.to_vec()).await {
            Ok(r) => break r,
            Err(e) if Instant::now() > deadline => anyhow::bail!("final stock: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    let rows: Vec<Value> = stock
        .items
        .iter()
        .flat_map(|item| {
            item.dcs
                .iter()
                .map(|d| json!([d.dc_id, item.sku, d.on_hand, d.reserved]))
        })
        .collect();
    let (mut orders, mut orders_epoch, mut after) = (Vec::new(), 0, 0);
    loop {
        let page = match client.list_orders(after, LIST_PAGE).await {
            Ok(page) => page,
            Err(e) if Instant::now() > deadline => anyhow::bail!("final orders: {e}"),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        orders_epoch = orders_epoch.max(page.epoch);
        orders.extend(
            page.orders
                .iter()
                .map(|o| json!([o.order_id, o.request_id])),
        );
        if page.next_after_order_id == 0 {
            break;
        }
        after = page.next_after_order_id;
    }
    let (prices, prices_epoch) = pricing::final_prices(client, skus).await?;
    let subscriptions = pricing::final_subscriptions(client).await?;
    let value = json!({"stock_epoch": stock.epoch, "stock": rows,
                       "orders_epoch": orders_epoch, "orders": orders,
                       "prices": prices, "subscriptions": subscriptions});
    Ok((value, stock.epoch.max(orders_epoch).max(prices_epoch)))
}

/// How one stream ended, from the consumer's side.
enum Left {
    /// It covered the target epoch.
    Done,
    /// Try the next node.
    Switch,
    /// The node keeps no events from the consumer's position (OUT_OF_RANGE, when the stream
    /// opened or later, after it installed a snapshot): try the next one.
    Refused,
}

/// One epoch's messages so far (its last not yet come).
struct Pending {
    epoch: u64,
    epoch_time_ms: u64,
    messages: u32,
    events: Vec<Seen>,
}

struct Consumer {
    client: Client,
    /// Node addresses in node order: node *k* is `endpoints[k - 1]`.
    endpoints: Vec<String>,
    out: std::io::BufWriter<std::fs::File>,
    started: Instant,
    target: watch::Receiver<Option<u64>>,
    /// The last resume token received; `None`: from epoch 1.
    token: Option<String>,
    /// The highest epoch covered (by the token's epoch, or an epoch's last message).
    covered: u64,
    /// When it last stopped reading (ms of the run), if it dawdles.
    dawdled_ms: u64,
}

impl Consumer {
    async fn new(
        dir: &Path,
        name: &str,
        endpoints: &[String],
        first: usize,
        started: Instant,
        target: watch::Receiver<Option<u64>>,
    ) -> anyhow::Result<Self> {
        let path = dir.join(format!("{name}.jsonl"));
        let file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        // Its own endpoint list, starting at its node (or the first after it that answers).
        let n = endpoints.len();
        let rotated: Vec<String> = (0..n).map(|i| endpoints[(first + i) % n].clone()).collect();
        let deadline = Instant::now() + FINISH_TIMEOUT;
        let client = loop {
            match crate::runner::connect_many(rotated.clone()).await {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => anyhow::bail!("{name}: {e}"),
                Err(_) => tokio::time::sleep(ROUND_PAUSE).await,
            }
        };
        Ok(Consumer {
            client,
            endpoints: endpoints.to_vec(),
            out: std::io::BufWriter::new(file),
            started,
            target,
            token: None,
            covered: 0,
            dawdled_ms: 0,
        })
    }

    fn time_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The node (1-based) calls go to now.
    fn node(&self) -> u64 {
        let current = self.client.current_endpoint();
        self.endpoints
            .iter()
            .position(|e| *e == current)
            .map_or(0, |i| i as u64 + 1)
    }

    fn write(&mut self, record: &Record) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    fn target_reached(&self) -> bool {
        self.target.borrow().is_some_and(|t| self.covered >= t)
    }

    async fn switch(&mut self) -> anyhow::Result<()> {
        let from = self.node();
        self.client.next_endpoint();
        let record = Record::Switch {
            time_ms: self.time_ms(),
            from,
            to: self.node(),
        };
        self.write(&record)
    }

    /// Follows the feed until the target is covered, the deadline after the target was set
    /// passes, or every node refuses the consumer's position.
    async fn run(mut self, habits: Habits) -> anyhow::Result<()> {
        let n = self.endpoints.len();
        // Nodes that answered OUT_OF_RANGE for the current position.
        let mut refused: BTreeSet<u64> = BTreeSet::new();
        // Nodes tried in a row without a stream that moved the covered epoch.
        let mut fruitless = 0;
        let mut deadline: Option<Instant> = None;
        let reason = loop {
            if let Some(target) = *self.target.borrow() {
                deadline.get_or_insert(Instant::now() + FINISH_TIMEOUT);
                if self.covered >= target {
                    break "covered";
                }
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                break "deadline";
            }
            if refused.len() >= n {
                break "out-of-range";
            }
            if fruitless >= n {
                tokio::time::sleep(ROUND_PAUSE).await;
                fruitless = 0;
            }
            let node = self.node();
            let before = self.covered;
            let start = match &self.token {
                Some(t) => v1::watch_request::Start::ResumeToken(t.clone()),
                None => v1::watch_request::Start::FromEpoch(1),
            };
            let request = v1::WatchRequest {
                start: Some(start),
                progress_interval_ms: PROGRESS_INTERVAL_MS,
                ..Default::default()
            };
            let opened = tokio::time::timeout(OPEN_TIMEOUT, self.client.watch(request)).await;
            let left = match opened {
                Err(_) => {
                    let message = format!("no answer in {OPEN_TIMEOUT:?}");
                    self.error(node, "open", "Timeout", message, 0)?;
                    Left::Switch
                }
                Ok(Err(ordo_client::Error::Status(s))) if s.code() == tonic::Code::OutOfRange => {
                    self.out_of_range(node, &s)?
                }
                Ok(Err(e)) => {
                    let code = e.code().map_or("Connect".into(), |c| format!("{c:?}"));
                    self.error(node, "open", &code, e.to_string(), 0)?;
                    Left::Switch
                }
                Ok(Ok(stream)) => {
                    let from = match &self.token {
                        Some(t) => t.clone(),
                        None => "epoch 1".into(),
                    };
                    let time_ms = self.time_ms();
                    self.write(&Record::Open {
                        time_ms,
                        node,
                        from,
                    })?;
                    self.follow(node, stream, habits).await?
                }
            };
            if self.covered > before {
                refused.clear();
                fruitless = 0;
            } else {
                fruitless += 1;
            }
            match left {
                Left::Done => break "covered",
                Left::Switch => self.switch().await?,
                Left::Refused => {
                    refused.insert(node);
                    self.switch().await?
                }
            }
        };
        let record = Record::End {
            time_ms: self.time_ms(),
            covered: self.covered,
            target: self.target.borrow().unwrap_or(0),
            reason: reason.into(),
        };
        self.write(&record)?;
        self.out.flush()?;
        Ok(())
    }

    fn error(
        &mut self,
        node: u64,
        what: &str,
        code: &str,
        message: String,
        dropped_events: u64,
    ) -> anyhow::Result<()> {
        let record = Record::Error {
            time_ms: self.time_ms(),
            node,
            what: what.into(),
            code: code.into(),
            message,
            dropped_events,
        };
        self.write(&record)
    }

    /// Records an OUT_OF_RANGE answer (with the node's `ordo-feed-start`).
    fn out_of_range(&mut self, node: u64, status: &tonic::Status) -> anyhow::Result<Left> {
        let feed_start = status
            .metadata()
            .get("ordo-feed-start")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let record = Record::OutOfRange {
            time_ms: self.time_ms(),
            node,
            from: self.covered + 1,
            feed_start,
        };
        self.write(&record)?;
        Ok(Left::Refused)
    }

    fn violation(&mut self, node: u64, what: String) -> anyhow::Result<()> {
        let record = Record::Violation {
            time_ms: self.time_ms(),
            node,
            what,
        };
        self.write(&record)
    }

    /// Reads one stream until it ends, stalls, goes stale or covers the target.
    async fn follow(
        &mut self,
        node: u64,
        mut stream: tonic::Streaming<v1::WatchResponse>,
        habits: Habits,
    ) -> anyhow::Result<Left> {
        use v1::watch_response::Message as M;
        let mut pending: Option<Pending> = None;
        let mut moved = Instant::now();
        loop {
            if self.target_reached() {
                return Ok(Left::Done);
            }
            let run_ms = self.time_ms();
            if habits.dawdles
                && self.target.borrow().is_none()
                && run_ms / DAWDLE_EVERY.as_millis() as u64
                    > self.dawdled_ms / DAWDLE_EVERY.as_millis() as u64
            {
                self.dawdled_ms = run_ms;
                let record = Record::Dawdle {
                    time_ms: run_ms,
                    node,
                    for_ms: DAWDLE_FOR.as_millis() as u64,
                };
                self.write(&record)?;
                tokio::time::sleep(DAWDLE_FOR).await;
                moved = Instant::now();
            }
            if moved.elapsed() > STALE_MAX {
                let record = Record::Stale {
                    time_ms: self.time_ms(),
                    node,
                    epoch: self.covered,
                    stale_ms: moved.elapsed().as_millis() as u64,
                };
                self.write(&record)?;
                return Ok(Left::Switch);
            }
            let dropped = pending.as_ref().map_or(0, |p| p.events.len() as u64);
            let message = match tokio::time::timeout(SILENCE_MAX, stream.message()).await {
                Err(_) => {
                    let record = Record::Stall {
                        time_ms: self.time_ms(),
                        node,
                        silent_ms: SILENCE_MAX.as_millis() as u64,
                    };
                    self.write(&record)?;
                    return Ok(Left::Switch);
                }
                Ok(Err(status)) if status.code() == tonic::Code::OutOfRange => {
                    return self.out_of_range(node, &status);
                }
                Ok(Err(status)) => {
                    let mut message = status.message().to_string();
                    if let Some(t) = status.metadata().get("ordo-resume-token") {
                        message.push_str(&format!(" (ordo-resume-token {t:?})"));
                    }
                    let code = format!("{:?}", status.code());
                    self.error(node, "stream", &code, message, dropped)?;
                    return Ok(Left::Switch);
                }
                Ok(Ok(None)) => {
                    let message = "the stream ended without a status".into();
                    self.error(node, "ended", "Ok", message, dropped)?;
                    return Ok(Left::Switch);
                }
                Ok(Ok(Some(m))) => m,
            };
            match message.message {
                Some(M::Events(e)) => {
                    let mut p = match pending.take() {
                        Some(p) if p.epoch == e.epoch => p,
                        other => {
                            if let Some(p) = other {
                                self.violation(
                                    node,
                                    format!(
                                        "epoch {} began before epoch {}'s last message ({} events \
                                         dropped)",
                                        e.epoch,
                                        p.epoch,
                                        p.events.len()
                                    ),
                                )?;
                            }
                            Pending {
                                epoch: e.epoch,
                                epoch_time_ms: e.epoch_time_ms,
                                messages: 0,
                                events: Vec::new(),
                            }
                        }
                    };
                    p.messages += 1;
                    p.events.extend(e.events.iter().map(seen));
                    if e.more {
                        if !e.resume_token.is_empty() {
                            let what = format!("epoch {}: a token on a message with more", e.epoch);
                            self.violation(node, what)?;
                        }
                        pending = Some(p);
                        continue;
                    }
                    let record = Record::Epoch {
                        time_ms: self.time_ms(),
                        node,
                        epoch: p.epoch,
                        epoch_time_ms: p.epoch_time_ms,
                        token: e.resume_token.clone(),
                        messages: p.messages,
                        events: p.events,
                    };
                    self.write(&record)?;
                    if e.epoch > self.covered {
                        self.covered = e.epoch;
                        self.token = Some(e.resume_token);
                        moved = Instant::now();
                    }
                }
                Some(M::Progress(p)) => {
                    if let Some(open) = pending.take() {
                        let what = format!(
                            "progress to epoch {} inside epoch {} ({} events dropped)",
                            p.epoch,
                            open.epoch,
                            open.events.len()
                        );
                        self.violation(node, what)?;
                    }
                    if p.epoch != self.covered {
                        let record = Record::Progress {
                            time_ms: self.time_ms(),
                            node,
                            epoch: p.epoch,
                            token: p.resume_token.clone(),
                        };
                        self.write(&record)?;
                    }
                    if p.epoch > self.covered {
                        self.covered = p.epoch;
                        self.token = Some(p.resume_token);
                        moved = Instant::now();
                    }
                }
                None => self.violation(node, "a message with nothing in it".into())?,
            }
        }
    }
}
