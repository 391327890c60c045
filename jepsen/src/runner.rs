//! `ordo-jepsen run`: a real cluster of `ordo` processes, logical client processes recording
//! a history, a nemesis schedule, recovery, final reads and the checkers.
//!
//! With the `partition` nemesis the runner re-executes itself in a fresh network namespace
//! (root and iptables needed; refused loudly otherwise), where every node has its own loopback
//! address (127.0.0.11, .12, ...) and a partition is a set of iptables DROP rules between node
//! pairs (nodes connect to peers from their own address). Without it, nodes run on the host's
//! 127.0.0.1.
//!
//! Nemeses, one fault at a time, each 2-4 s after the last heal and lasting 2-4 s:
//! `partition` (random halves, one node isolated, the leader isolated, a majorities ring, a
//! bridge), `kill` (SIGKILL one node, a minority, the leader or all, then restart), `pause`
//! (SIGSTOP one node or the leader, then SIGCONT), `clock` (bumps and strobes of the nodes'
//! sequencer clocks through the `--fault-injection` admin call), `membership` (remove a node,
//! then add it back). Workloads: `register` and `append` over `Transact`; `inventory` (orders
//! in one DC, several DCs of a region, or across regions, and a fifth of them nearby orders
//! filled from the stores around a point: see [`crate::nearby`]; restocks; stock reads; and,
//! for 40% of its operations, reservations with TTLs of 1-5 s: see [`crate::cart`]); `watch`
//! (the inventory workload's operations and, for a fifth of its operations, price sets and
//! price-drop subscriptions (see [`crate::pricing`]), while change-feed consumers follow `Watch`
//! through the faults: see [`crate::watch`]) and `bank` (transfers between DC rows;
//! whole-snapshot reads of every row).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ordo_client::{v1, Client, Consistency, OrderStream, RetryPolicy};
use serde_json::{json, Value};

use crate::history::{Event, EventType, Process};
use crate::{cart, checks, nearby, pricing, watch};

#[derive(Clone, Debug)]
pub struct RunOpts {
    pub nodes: usize,
    pub time_limit: Duration,
    pub workload: String,
    pub nemesis: Vec<String>,
    pub rate: f64,
    pub concurrency: usize,
    pub seed: u64,
    pub out: PathBuf,
    pub ordo_bin: PathBuf,
    /// Extra arguments for every `ordo server` (e.g. `--snapshot-every 100`, so that nodes
    /// behind install snapshots and their change feeds start after them).
    pub server_args: Vec<String>,
    /// The CA (PEM) of the nodes' client-port certificates: clients then speak TLS to
    /// `https://` endpoints (the nodes need `--tls-cert`/`--tls-key` among `server_args`).
    pub ca: Option<PathBuf>,
    /// Stock rows loaded before the workload on DCs and SKUs of their own
    /// ([`load_ballast`]): snapshots and installs then carry a big state (inventory, bank).
    pub stock_rows: u64,
}

/// [`RunOpts::ca`]'s certificate, set once by [`run`]: every client of the run (processes,
/// nemeses, final reads) connects through [`connect_many`], which then speaks TLS.
static CLIENT_CA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// A client of `urls`, over TLS when the run has a CA.
pub(crate) async fn connect_many(urls: Vec<String>) -> Result<Client, ordo_client::Error> {
    let client = match CLIENT_CA.get() {
        Some(ca) => Client::connect_tls(urls, ca).await?,
        None => Client::connect_many(urls).await?,
    };
    match CLIENT_TOKEN.get() {
        Some(token) => client.with_token(token),
        None => Ok(client),
    }
}

/// The token every client of the run sends when the nodes check tokens (a run with the
/// `hostile` nemesis, which revokes tokens of its own mid-stream): every scope.
static CLIENT_TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A client of one node, over TLS when the run has a CA.
pub(crate) async fn connect(url: String) -> Result<Client, ordo_client::Error> {
    connect_many(vec![url]).await
}

pub const NEMESES: [&str; 6] = [
    "partition",
    "kill",
    "pause",
    "clock",
    "membership",
    "hostile",
];

/// Keys the register and append workloads use.
const KEYS: u64 = 5;
/// The inventory and bank dataset: (dc, region). Regions 0, 1, 2 are the three partitions,
/// so DCs 1 and 4 share one (multi-DC orders) and the others are cross-region. Where each
/// stands is [`nearby::dc_location`]'s: a few km apart, so nearby orders split over them.
const DCS: [(u32, u32); 4] = [(1, 0), (2, 1), (3, 2), (4, 0)];
const SKUS: [u32; 2] = [1, 2];
/// Initial units per (dc, sku): inventory (small, so orders run out and restocks matter)...
const INVENTORY_STOCK: i64 = 20;
/// ... and bank.
const BANK_STOCK: i64 = 100;
/// How long one client operation may take before its outcome counts as unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of one operation, all with the same request id (the client retries UNAVAILABLE
/// and unanswered attempts), within [`OP_TIMEOUT`].
const OP_ATTEMPTS: u32 = 3;
/// How long one attempt may go unanswered before the next.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);
const DAY_MS: i64 = 24 * 3600 * 1000;
/// How long recovery (restarts, final reads, agreement) may take after the nemesis stops.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Orders read per ListOrders page in the final read.
const LIST_PAGE: u32 = 1_000;

/// SplitMix64, seeded: the same seed gives the same operations and fault schedule.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The history being recorded, shared by clients and the nemesis.
struct Recorder {
    started: Instant,
    events: Vec<Event>,
}

impl Recorder {
    fn push(
        &mut self,
        process: Process,
        kind: EventType,
        f: &str,
        value: Value,
        key: Option<Value>,
    ) {
        let index = self.events.len() as u64;
        self.events.push(Event {
            index,
            time_ns: self.started.elapsed().as_nanos() as u64,
            process,
            kind,
            f: f.to_string(),
            value,
            key,
        });
    }
}

type Shared = Arc<Mutex<Recorder>>;

fn record(rec: &Shared, process: Process, kind: EventType, f: &str, value: Value) {
    rec.lock()
        .expect("recorder")
        .push(process, kind, f, value, None);
}

struct NodeProc {
    id: usize,
    /// Its client address.
    addr: String,
    /// Its peer listener (node-to-node traffic, same host as `addr`).
    peer_addr: String,
    /// The cluster secret every node shares.
    secret_file: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    peers: Vec<String>,
    fault_injection: bool,
    /// [`RunOpts::server_args`].
    extra_args: Vec<String>,
    child: Option<Child>,
    paused: bool,
}

impl NodeProc {
    fn start(&mut self, bin: &Path) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(bin);
        cmd.args([
            "server",
            "--node-id",
            &self.id.to_string(),
            "--listen",
            &self.addr,
            "--peer-listen",
            &self.peer_addr,
            "--data-dir",
        ])
        .arg(&self.data_dir)
        .arg("--cluster-secret-file")
        .arg(&self.secret_file)
        .env("RUST_LOG", "info,openraft=warn")
        .stdout(Stdio::null())
        .stderr(log);
        for p in &self.peers {
            cmd.args(["--peer", p]);
        }
        if self.fault_injection {
            cmd.arg("--fault-injection");
        }
        cmd.args(&self.extra_args);
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("starting {}", bin.display()))?,
        );
        Ok(())
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    fn pause(&mut self) {
        self.signal("-STOP");
        self.paused = self.child.is_some();
    }

    fn resume(&mut self) {
        if self.paused {
            self.signal("-CONT");
        }
        self.paused = false;
    }

    fn kill9(&mut self) {
        self.resume();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn endpoint(&self) -> String {
        let scheme = if CLIENT_CA.get().is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let ls = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ls
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

fn key_name(k: u64) -> String {
    format!("k{k}")
}

/// What a client operation does against Ordo.
enum Call {
    Transact(Vec<v1::KvOp>),
    Order {
        request_id: String,
        lines: Vec<(u32, u32, i64)>,
    },
    Restock {
        request_id: String,
        dc: u32,
        sku: u32,
        delta: i64,
    },
    /// A DC's restock: every line or none (`RestockDc`).
    RestockDc {
        request_id: String,
        dc: u32,
        lines: Vec<(u32, i64)>,
    },
    /// Every (dc, sku) row in one snapshot (GetAvailability reads one epoch).
    ReadAll,
    /// The same with what is reserved of each row (the inventory workload's reads).
    ReadStock,
    /// A reservation operation ([`cart`]).
    Hold(cart::HoldCall),
    /// An order filled from the stores near a point ([`nearby`]).
    Nearby(nearby::NearbyCall),
    /// A price set or a subscription change (the `watch` workload's own: [`pricing`]).
    Pricing(pricing::PricingCall),
    Transfer {
        request_id: String,
        sku: u32,
        from: u32,
        to: u32,
        qty: i64,
    },
}

/// One generated operation: its history fields and its call.
struct Op {
    f: &'static str,
    value: Value,
    key: Option<Value>,
    call: Call,
}

/// A logical client slot's generator state.
struct Generator {
    workload: String,
    rng: Rng,
    slot: usize,
    /// Unique per slot: appended values and request ids.
    counter: i64,
    /// The holds every slot has been granted (the inventory workload's reservations).
    holds: Arc<cart::Holds>,
}

impl Generator {
    fn request_id(&mut self) -> String {
        self.counter += 1;
        format!("j{}-{}", self.slot, self.counter)
    }

    fn next(&mut self) -> Op {
        let kv = |o| v1::KvOp { op: Some(o) };
        let rng = &mut self.rng;
        match self.workload.as_str() {
            "register" => {
                let k = rng.below(KEYS);
                let key = key_name(k);
                let (f, value, op) = match rng.below(3) {
                    0 => ("read", Value::Null, v1::kv_op::Op::Read(key)),
                    1 => {
                        let v = rng.below(5) as i64;
                        let op = v1::kv_op::Op::Write(v1::KvWrite { key, value: v });
                        ("write", json!(v), op)
                    }
                    _ => {
                        let (from, to) = (rng.below(5) as i64, rng.below(5) as i64);
                        let op = v1::kv_op::Op::Cas(v1::KvCas { key, from, to });
                        ("cas", json!([from, to]), op)
                    }
                };
                Op {
                    f,
                    value,
                    key: Some(json!(k)),
                    call: Call::Transact(vec![kv(op)]),
                }
            }
            "append" => {
                // 1-3 micro-ops over the keys; appended values unique (slot-major ranges).
                let n = 1 + rng.below(3);
                let mut mops = Vec::new();
                let mut ops = Vec::new();
                for _ in 0..n {
                    let k = rng.below(KEYS);
                    if rng.below(2) == 0 {
                        self.counter += 1;
                        let v = self.slot as i64 * 1_000_000_000 + self.counter;
                        mops.push(json!(["append", k, v]));
                        ops.push(kv(v1::kv_op::Op::Append(v1::KvAppend {
                            key: key_name(k),
                            value: v,
                        })));
                    } else {
                        mops.push(json!(["r", k, null]));
                        ops.push(kv(v1::kv_op::Op::Read(key_name(k))));
                    }
                }
                Op {
                    f: "txn",
                    value: Value::Array(mops),
                    key: None,
                    call: Call::Transact(ops),
                }
            }
            // `watch` writes what `inventory` does, and prices and subscriptions, while its
            // consumers follow the feed.
            "watch" if rng.below(5) < pricing::PRICING_OPS_FIFTHS => {
                self.counter += 1;
                let (f, value, call) = pricing::next(rng, self.slot, self.counter, &SKUS);
                Op {
                    f,
                    value,
                    key: None,
                    call: Call::Pricing(call),
                }
            }
            "inventory" | "watch" if rng.below(10) < cart::HOLD_OPS_TENTHS => {
                let request_id = self.request_id();
                let dcs: Vec<u32> = DCS.iter().map(|d| d.0).collect();
                let (f, value, call) =
                    cart::next(&mut self.rng, &self.holds, request_id, &dcs, &SKUS);
                Op {
                    f,
                    value,
                    key: None,
                    call: Call::Hold(call),
                }
            }
            "inventory" | "watch" => match rng.below(10) {
                0..=5 if rng.below(5) < nearby::NEARBY_ORDER_FIFTHS => {
                    let request_id = self.request_id();
                    let (value, call) = nearby::next(&mut self.rng, request_id, &SKUS);
                    Op {
                        f: "nearby-order",
                        value,
                        key: None,
                        call: Call::Nearby(call),
                    }
                }
                0..=5 => {
                    // One DC; two DCs of region 0 (one partition); or two regions.
                    let sku = *rng.pick(&SKUS);
                    let qty = 1 + rng.below(3) as i64;
                    let lines = match rng.below(3) {
                        0 => vec![(rng.pick(&DCS).0, sku, qty)],
                        1 => vec![(1, sku, qty), (4, *rng.pick(&SKUS), 1)],
                        _ => {
                            let a = rng.pick(&DCS).0;
                            let b = 1 + (a % 3);
                            vec![(a, sku, qty), (b, *rng.pick(&SKUS), 1)]
                        }
                    };
                    let request_id = self.request_id();
                    Op {
                        f: "order",
                        value: json!({"request_id": request_id, "lines": lines}),
                        key: None,
                        call: Call::Order { request_id, lines },
                    }
                }
                6 if rng.below(3) == 0 => {
                    // Two or three SKUs of one DC in one transaction, in ascending order.
                    let dc = rng.pick(&DCS).0;
                    let mut skus: Vec<u32> =
                        (0..2 + rng.below(2)).map(|_| *rng.pick(&SKUS)).collect();
                    skus.sort_unstable();
                    skus.dedup();
                    let lines: Vec<(u32, i64)> = skus.into_iter().map(|sku| (sku, 2)).collect();
                    Op {
                        f: "restock-dc",
                        value: json!([dc, lines]),
                        key: None,
                        call: Call::RestockDc {
                            request_id: self.request_id(),
                            dc,
                            lines,
                        },
                    }
                }
                6 => {
                    let (dc, sku, delta) = (rng.pick(&DCS).0, *rng.pick(&SKUS), 3);
                    Op {
                        f: "restock",
                        value: json!([dc, sku, delta]),
                        key: None,
                        call: Call::Restock {
                            request_id: self.request_id(),
                            dc,
                            sku,
                            delta,
                        },
                    }
                }
                _ => Op {
                    f: "read",
                    value: Value::Null,
                    key: None,
                    call: Call::ReadStock,
                },
            },
            _ => {
                // bank
                if rng.below(2) == 0 {
                    Op {
                        f: "read",
                        value: Value::Null,
                        key: None,
                        call: Call::ReadAll,
                    }
                } else {
                    let sku = *rng.pick(&SKUS);
                    let from = rng.pick(&DCS).0;
                    let to = 1 + (from + rng.below(3) as u32) % 4;
                    let qty = 1 + rng.below(20) as i64;
                    Op {
                        f: "transfer",
                        value: json!({"from": [from, sku], "to": [to, sku], "amount": qty}),
                        key: None,
                        call: Call::Transfer {
                            request_id: self.request_id(),
                            sku,
                            from,
                            to,
                            qty,
                        },
                    }
                }
            }
        }
    }
}

fn kv_value(v: &Option<v1::KvValue>) -> Value {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        None => Value::Null,
        Some(v1::kv_value::Value::Int(x)) => json!(x),
        Some(v1::kv_value::Value::List(l)) => json!(l.values),
    }
}

/// The completion value for a committed key-value transaction.
fn transact_value(f: &str, invoke: &Value, r: &v1::TransactResponse) -> Value {
    match f {
        "read" => r
            .results
            .first()
            .map(|x| kv_value(&x.value))
            .unwrap_or(Value::Null),
        "txn" => {
            let mops = invoke.as_array().cloned().unwrap_or_default();
            Value::Array(
                mops.into_iter()
                    .zip(&r.results)
                    .map(|(m, res)| {
                        if m[0] == "r" {
                            // An absent key reads as the empty list.
                            let v = kv_value(&res.value);
                            json!(["r", m[1], if v.is_null() { json!([]) } else { v }])
                        } else {
                            m
                        }
                    })
                    .collect(),
            )
        }
        _ => invoke.clone(),
    }
}

/// Every row as `[[dc, sku, on_hand], ...]`, from one snapshot.
async fn read_all(client: &Client) -> Result<Value, ordo_client::Error> {
    let dcs: Vec<u32> = DCS.iter().map(|d| d.0).collect();
    let r = client.get_availability(dcs, SKUS.to_vec()).await?;
    let mut rows = Vec::new();
    for item in &r.items {
        for d in &item.dcs {
            rows.push(json!([d.dc_id, item.sku, d.on_hand]));
        }
    }
    Ok(Value::Array(rows))
}

/// Every row as `[[dc, sku, on_hand, reserved], ...]`, from one snapshot.
async fn read_stock(client: &Client) -> Result<Value, ordo_client::Error> {
    let dcs: Vec<u32> = DCS.iter().map(|d| d.0).collect();
    cart::read_stock(client, &dcs, &SKUS).await
}

/// Runs one operation: its completion type and value. An error whose effect is unknown is
/// `info`; a write the server refused before sequencing it ([`ordo_client::Error::not_applied`])
/// and a read that failed had no effect and are `fail`.
async fn execute(client: &Client, stream: Option<&OrderStream>, op: &Op) -> (EventType, Value) {
    let failed = |e: ordo_client::Error| match e.not_applied() {
        // A register checker reads a plain `fail` of a cas as "it ran and its comparison
        // failed"; one that never ran says so in its completion value.
        true if op.f == "cas" => (EventType::Fail, json!({"error": "not-applied"})),
        true => (EventType::Fail, op.value.clone()),
        false => (EventType::Info, op.value.clone()),
    };
    let definite = |applied: bool| {
        let kind = if applied {
            EventType::Ok
        } else {
            EventType::Fail
        };
        (kind, op.value.clone())
    };
    match &op.call {
        Call::Transact(ops) => match client.transact(ops.clone(), None).await {
            // Committed, but what it read is not known (a retry answered from dedupe).
            Ok(r) if r.committed && r.results_not_kept => (EventType::Info, op.value.clone()),
            Ok(r) if r.committed => (EventType::Ok, transact_value(op.f, &op.value, &r)),
            // An aborted transaction (a failed cas) definitely did not apply.
            Ok(_) => definite(false),
            Err(e) => failed(e),
        },
        Call::Order { request_id, lines } => {
            let lines: Vec<ordo_client::Line> = lines
                .iter()
                .map(|&(dc_id, sku, qty)| ordo_client::Line { dc_id, sku, qty })
                .collect();
            let placed = match stream {
                // One attempt: a stream that breaks leaves the order's outcome unknown.
                Some(stream) => {
                    stream
                        .place_order_request(v1::PlaceOrderRequest {
                            request_id: request_id.clone(),
                            lines: lines.into_iter().map(Into::into).collect(),
                            ..Default::default()
                        })
                        .await
                }
                None => {
                    client
                        .place_order(&lines, false, Some(request_id.clone()))
                        .await
                }
            };
            match placed {
                Ok(r) => definite(r.status() == v1::OrderStatus::Committed),
                Err(e) => failed(e),
            }
        }
        Call::Restock {
            request_id,
            dc,
            sku,
            delta,
        } => match client
            .restock(*dc, *sku, *delta, Some(request_id.clone()))
            .await
        {
            Ok(r) => definite(r.applied),
            Err(e) => failed(e),
        },
        Call::RestockDc {
            request_id,
            dc,
            lines,
        } => match client
            .restock_dc(*dc, lines, Some(request_id.clone()))
            .await
        {
            Ok(r) => definite(r.applied),
            Err(e) => failed(e),
        },
        Call::Transfer {
            request_id,
            sku,
            from,
            to,
            qty,
        } => match client
            .transfer_stock(*sku, *from, *to, *qty, Some(request_id.clone()))
            .await
        {
            Ok(r) => definite(r.applied),
            Err(e) => failed(e),
        },
        Call::ReadAll => match read_all(client).await {
            Ok(rows) => (EventType::Ok, rows),
            Err(_) => (EventType::Fail, Value::Null),
        },
        Call::ReadStock => match read_stock(client).await {
            Ok(rows) => (EventType::Ok, rows),
            Err(_) => (EventType::Fail, Value::Null),
        },
        Call::Hold(call) => cart::execute(client, call, &op.value).await,
        Call::Nearby(call) => nearby::execute(client, call, &op.value).await,
        Call::Pricing(call) => pricing::execute(client, call, &op.value).await,
    }
}

/// One logical client slot until `end`: single-threaded processes, up to [`OP_ATTEMPTS`]
/// attempts per operation with the same request id; an operation with an unknown outcome
/// retires its process and a fresh one takes the slot.
/// Reads are at least as new as `setup_epoch` (the dataset the history's `init` describes),
/// wherever the slot's node is.
async fn client_slot(
    rec: Shared,
    endpoint: String,
    mut gen: Generator,
    interval: Duration,
    concurrency: usize,
    end: Instant,
    setup_epoch: u64,
) {
    let mut process = gen.slot as u64;
    let mut client: Option<Client> = None;
    // Odd slots send their orders over an OrderStream, opened when first needed and again
    // after a process retires; the others, and any order whose stream would not open, call
    // PlaceOrder.
    let streamed = gen.slot % 2 == 1;
    let mut stream: Option<OrderStream> = None;
    while Instant::now() < end {
        if client.is_none() {
            client = connect(endpoint.clone()).await.ok().map(|c| {
                c.observe_epoch(setup_epoch);
                c.with_retry(RetryPolicy {
                    attempts_max: OP_ATTEMPTS,
                    backoff_initial: Duration::from_millis(50),
                    backoff_max: Duration::from_millis(500),
                })
                .with_attempt_timeout(ATTEMPT_TIMEOUT)
            });
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let op = gen.next();
        rec.lock().expect("recorder").push(
            Process::Client(process),
            EventType::Invoke,
            op.f,
            op.value.clone(),
            op.key.clone(),
        );
        let c = client.as_ref().expect("connected");
        if streamed && stream.is_none() && matches!(op.call, Call::Order { .. }) {
            stream = tokio::time::timeout(OP_TIMEOUT, c.order_stream())
                .await
                .ok()
                .and_then(Result::ok);
        }
        let (kind, value) = tokio::time::timeout(OP_TIMEOUT, execute(c, stream.as_ref(), &op))
            .await
            .unwrap_or((EventType::Info, op.value.clone()));
        rec.lock().expect("recorder").push(
            Process::Client(process),
            kind,
            op.f,
            value,
            op.key.clone(),
        );
        if kind == EventType::Info {
            process += concurrency as u64;
            client = None;
            stream = None;
        }
        tokio::time::sleep(interval).await;
    }
}

/// The cluster under test.
struct Cluster {
    nodes: Vec<NodeProc>,
    bin: PathBuf,
    /// The nodes' tokens file, when they check tokens.
    tokens_file: Option<PathBuf>,
    /// The run's workload.
    workload: String,
    /// The cluster secret, which membership changes carry.
    secret: String,
}

impl Cluster {
    fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(NodeProc::endpoint).collect()
    }
}

/// A fault in force, to heal.
enum Fault {
    Partition,
    Killed(Vec<usize>),
    Paused(Vec<usize>),
    Clock(Vec<usize>),
    Removed(usize),
    Hostile(crate::hostile::Hostile),
    Nothing,
}

/// Starts one fault of kind `which`; returns it with a description for the history.
async fn inject(
    cluster: &mut Cluster,
    which: &str,
    rng: &mut Rng,
) -> anyhow::Result<(Fault, Value)> {
    let n = cluster.nodes.len();
    let endpoints = cluster.endpoints();
    let random_node = |rng: &mut Rng| rng.below(n as u64) as usize;
    let names = |v: &[usize]| v.iter().map(|i| format!("n{}", i + 1)).collect::<Vec<_>>();
    Ok(match which {
        "partition" => {
            let leader = leader_of(&endpoints).await;
            let (shape, cut) = partition_plan(rng, n, leader);
            for (a, b) in &cut {
                drop_between(&cluster.nodes[*a].addr, &cluster.nodes[*b].addr)?;
            }
            let pairs: Vec<[usize; 2]> = cut.iter().map(|(a, b)| [a + 1, b + 1]).collect();
            (Fault::Partition, json!({"shape": shape, "cut": pairs}))
        }
        "kill" | "pause" => {
            let modes: &[&str] = if which == "kill" {
                &["one", "minority", "leader", "all"]
            } else {
                &["one", "minority", "leader"]
            };
            let mode = *rng.pick(modes);
            let mut order: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let victims: Vec<usize> = match mode {
                "one" => vec![order[0]],
                "minority" => order[..((n - 1) / 2).max(1)].to_vec(),
                "leader" => vec![leader_of(&endpoints).await.unwrap_or(order[0])],
                _ => order,
            };
            for &v in &victims {
                if which == "kill" {
                    cluster.nodes[v].kill9();
                } else {
                    cluster.nodes[v].pause();
                }
            }
            let value = json!({"mode": mode, "nodes": names(&victims)});
            if which == "kill" {
                (Fault::Killed(victims), value)
            } else {
                (Fault::Paused(victims), value)
            }
        }
        "clock" => {
            let victims: Vec<usize> = if rng.below(3) == 0 {
                (0..n).collect()
            } else {
                vec![random_node(rng)]
            };
            let sign = if rng.below(2) == 0 { 1 } else { -1 };
            let (offset_ms, strobe_ms, period_ms) = match rng.below(3) {
                // A bump: up to ten minutes either way.
                0 => (sign * (1 + rng.below(600_000) as i64), 0, 0),
                // A leap forward by one to two days: past the 24 h dedupe time window, so a
                // request id retried across it is exactly-once only if retention does not
                // trust the clock.
                1 => (DAY_MS + rng.below(DAY_MS as u64 + 1) as i64, 0, 0),
                // A strobe: flipping by up to a minute every 1-20 ms.
                _ => (0, sign * (1 + rng.below(60_000) as i64), 1 + rng.below(20)),
            };
            let mut set = Vec::new();
            for &v in &victims {
                let r = async {
                    let c = connect(endpoints[v].clone()).await?;
                    c.set_clock_fault(offset_ms, strobe_ms, period_ms).await
                };
                let ok = matches!(
                    tokio::time::timeout(Duration::from_secs(2), r).await,
                    Ok(Ok(_))
                );
                set.push(json!({"node": format!("n{}", v + 1), "set": ok}));
            }
            (
                Fault::Clock(victims),
                json!({"offset_ms": offset_ms, "strobe_ms": strobe_ms,
                       "strobe_period_ms": period_ms, "nodes": set}),
            )
        }
        "hostile" => {
            let victim = random_node(rng);
            let tokens = cluster
                .tokens_file
                .as_ref()
                .map(|file| crate::hostile::TokensFile {
                    bin: cluster.bin.clone(),
                    file: file.clone(),
                });
            let (load, value) = crate::hostile::start(
                victim,
                &cluster.nodes[victim].addr,
                endpoints[victim].clone(),
                tokens,
                matches!(cluster.workload.as_str(), "inventory" | "watch"),
            )
            .await;
            (Fault::Hostile(load), value)
        }
        "membership" => {
            let victim = random_node(rng);
            let admin = connect_retrying(&endpoints, Duration::from_secs(5))
                .await?
                .with_cluster_secret(&cluster.secret);
            match tokio::time::timeout(
                Duration::from_secs(10),
                admin.remove_member(victim as u64 + 1),
            )
            .await
            {
                Ok(Ok(_)) => (
                    Fault::Removed(victim),
                    json!({"removed": format!("n{}", victim + 1)}),
                ),
                other => {
                    let why = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    // The change may still commit later: add the node back when healing.
                    (
                        Fault::Removed(victim),
                        json!({"removed": format!("n{}", victim + 1), "error": why}),
                    )
                }
            }
        }
        other => bail!("unknown nemesis {other:?}"),
    })
}

/// Ends a fault; returns a description of anything that went wrong.
async fn heal(cluster: &mut Cluster, fault: Fault) -> anyhow::Result<Value> {
    let endpoints = cluster.endpoints();
    Ok(match fault {
        Fault::Partition => {
            heal_partitions()?;
            Value::Null
        }
        Fault::Killed(victims) => {
            for v in victims {
                let bin = cluster.bin.clone();
                cluster.nodes[v].start(&bin)?;
            }
            Value::Null
        }
        Fault::Paused(victims) => {
            for v in victims {
                cluster.nodes[v].resume();
            }
            Value::Null
        }
        Fault::Clock(victims) => {
            let mut failed = Vec::new();
            for v in victims {
                let ep = endpoints[v].clone();
                let cleared = retry_until(Duration::from_secs(10), || {
                    let ep = ep.clone();
                    async move {
                        let c = connect(ep).await?;
                        c.set_clock_fault(0, 0, 0).await
                    }
                })
                .await;
                if cleared.is_err() {
                    failed.push(format!("n{}", v + 1));
                }
            }
            if failed.is_empty() {
                Value::Null
            } else {
                json!({"clock_not_cleared": failed})
            }
        }
        Fault::Removed(victim) => {
            let addr = cluster.nodes[victim].addr.clone();
            let peer_addr = cluster.nodes[victim].peer_addr.clone();
            let secret = cluster.secret.clone();
            let added = retry_until(RECOVERY_TIMEOUT, || {
                let endpoints = endpoints.clone();
                let addr = addr.clone();
                let peer_addr = peer_addr.clone();
                let secret = secret.clone();
                async move {
                    let admin = connect_many(endpoints).await?.with_cluster_secret(&secret);
                    admin
                        .add_member_at(victim as u64 + 1, addr, peer_addr)
                        .await
                }
            })
            .await;
            match added {
                Ok(_) => Value::Null,
                Err(e) => json!({"not_re_added": format!("n{}: {e}", victim + 1)}),
            }
        }
        Fault::Hostile(load) => load.stop().await,
        Fault::Nothing => Value::Null,
    })
}

/// The ballast's DCs and SKUs start here, past any the workloads use.
const BALLAST_ID_BASE: u32 = 1_000_000;
/// SKUs a ballast DC stocks, all in one RestockDc.
const BALLAST_SKUS: u32 = 1_000;
/// Ballast calls in flight at once.
const BALLAST_CALLS_IN_FLIGHT: usize = 8;
/// The most ballast rows a run loads (10⁷: 10,000 DCs).
pub const BALLAST_ROWS_MAX: u64 = 10_000_000;

/// Loads `rows` stock rows (rounded up to whole DCs of [`BALLAST_SKUS`]) on DCs and SKUs the
/// workload never touches, each DC's stock one RestockDc, so that the run's snapshots and
/// installs move a big state; the checkers see none of it, the replicas' state hashes all of
/// it. Returns what it loaded, for the run's output.
async fn load_ballast(client: &Client, rows: u64) -> anyhow::Result<Value> {
    anyhow::ensure!(
        rows <= BALLAST_ROWS_MAX,
        "--stock-rows is at most {BALLAST_ROWS_MAX}"
    );
    let dcs = rows.div_ceil(u64::from(BALLAST_SKUS)) as u32;
    let started = Instant::now();
    for sku in BALLAST_ID_BASE..BALLAST_ID_BASE + BALLAST_SKUS {
        client
            .upsert_item(v1::Item {
                sku,
                name: format!("ballast {sku}"),
                price_cents: 100,
            })
            .await?;
    }
    let lines: Arc<Vec<(u32, i64)>> = Arc::new(
        (BALLAST_ID_BASE..BALLAST_ID_BASE + BALLAST_SKUS)
            .map(|sku| (sku, 1_000))
            .collect(),
    );
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..dcs {
        if calls.len() >= BALLAST_CALLS_IN_FLIGHT {
            calls.join_next().await.expect("a call in flight")??;
        }
        let (client, lines) = (client.clone(), lines.clone());
        calls.spawn(async move {
            let dc = BALLAST_ID_BASE + i;
            client
                .upsert_dc(v1::Dc {
                    dc_id: dc,
                    name: format!("ballast {dc}"),
                    lat: 0.0,
                    lon: 0.0,
                    region: Some(i % 3),
                    active: true,
                })
                .await?;
            let r = client
                .restock_dc(dc, lines.as_slice(), Some(format!("ballast-{dc}")))
                .await?;
            anyhow::ensure!(r.applied, "ballast restock of dc {dc}: {}", r.reason);
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = calls.join_next().await {
        done??;
    }
    Ok(json!({
        "ballast_dcs": dcs,
        "ballast_rows": u64::from(dcs) * u64::from(BALLAST_SKUS),
        "load_ms": started.elapsed().as_millis() as u64,
    }))
}

/// Creates the inventory and bank dataset through the API; returns the setup event's value.
async fn load_dataset(client: &Client, workload: &str) -> anyhow::Result<Value> {
    let stock = if workload == "bank" {
        BANK_STOCK
    } else {
        INVENTORY_STOCK
    };
    for &(dc, region) in &DCS {
        let (lat, lon) = nearby::dc_location(dc);
        client
            .upsert_dc(v1::Dc {
                dc_id: dc,
                name: format!("DC {dc}"),
                lat,
                lon,
                region: Some(region),
                active: true,
            })
            .await?;
    }
    for &sku in &SKUS {
        client
            .upsert_item(v1::Item {
                sku,
                name: format!("item {sku}"),
                price_cents: 100,
            })
            .await?;
    }
    let mut rows = Vec::new();
    for &(dc, _) in &DCS {
        for &sku in &SKUS {
            let r = client
                .restock(dc, sku, stock, Some(format!("setup-{dc}-{sku}")))
                .await?;
            anyhow::ensure!(r.applied, "setup restock dc {dc} sku {sku}: {}", r.reason);
            rows.push(json!([dc, sku, r.on_hand]));
        }
    }
    Ok(if workload == "bank" {
        json!({"total": stock * rows.len() as i64})
    } else {
        json!({"stock": rows})
    })
}

/// After healing: the final reads the workload's checker needs, as client operations.
async fn final_reads(rec: &Shared, client: &Client, workload: &str) -> anyhow::Result<()> {
    let process = Process::Client(u64::MAX / 2);
    match workload {
        "append" => {
            let ops: Vec<v1::KvOp> = (0..KEYS)
                .map(|k| v1::KvOp {
                    op: Some(v1::kv_op::Op::Read(key_name(k))),
                })
                .collect();
            let value = Value::Array((0..KEYS).map(|k| json!(["r", k, null])).collect());
            record(
                rec,
                process.clone(),
                EventType::Invoke,
                "txn",
                value.clone(),
            );
            let r = retry_until(RECOVERY_TIMEOUT, || client.transact(ops.clone(), None)).await?;
            let v = transact_value("txn", &value, &r);
            record(rec, process, EventType::Ok, "txn", v);
        }
        "bank" => {
            record(rec, process.clone(), EventType::Invoke, "read", Value::Null);
            let rows = retry_until(RECOVERY_TIMEOUT, || read_all(client)).await?;
            record(rec, process, EventType::Ok, "read", rows);
        }
        "inventory" | "watch" => {
            record(
                rec,
                process.clone(),
                EventType::Invoke,
                "final-read",
                Value::Null,
            );
            // Every hold lapses (by epoch time) within the longest TTL of its last reserve or
            // extend: wait for that before reading what each hold came to.
            let dcs: Vec<u32> = DCS.iter().map(|d| d.0).collect();
            let settle_ms = cart::settle(client, &dcs, &SKUS).await;
            let stock = retry_until(RECOVERY_TIMEOUT, || read_stock(client)).await?;
            // Every committed order, and the lines each took: a nearby order's say which stores
            // shipped it, also when its answer was lost.
            let mut orders = Vec::new();
            let mut order_lines = serde_json::Map::new();
            let mut after = 0;
            loop {
                let page =
                    retry_until(RECOVERY_TIMEOUT, || client.list_orders(after, LIST_PAGE)).await?;
                for o in page.orders {
                    let lines: Vec<Value> = o
                        .lines
                        .iter()
                        .map(|l| json!([l.dc_id, l.sku, l.allocated]))
                        .collect();
                    order_lines
                        .entry(o.request_id.clone())
                        .or_insert(Value::Array(lines));
                    orders.push(json!(o.request_id));
                }
                if page.next_after_order_id == 0 {
                    break;
                }
                after = page.next_after_order_id;
            }
            let events = rec.lock().expect("recorder").events.clone();
            let (holds, listed) = cart::final_holds(client, &events, RECOVERY_TIMEOUT).await?;
            record(
                rec,
                process,
                EventType::Ok,
                "final-read",
                json!({"stock": stock, "orders": orders, "order_lines": order_lines,
                       "holds": holds, "listed": listed, "settle_ms": settle_ms}),
            );
        }
        _ => {}
    }
    Ok(())
}

pub async fn run(opts: RunOpts) -> anyhow::Result<u8> {
    if !checks::WORKLOADS.contains(&opts.workload.as_str()) {
        bail!(
            "unknown workload {:?}: {}",
            opts.workload,
            checks::WORKLOADS.join(", ")
        );
    }
    if let Some(ca) = &opts.ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading the CA {}", ca.display()))?;
        CLIENT_CA
            .set(pem)
            .map_err(|_| anyhow::anyhow!("one run per process"))?;
    }
    for n in &opts.nemesis {
        if !NEMESES.contains(&n.as_str()) {
            bail!("unknown nemesis {n:?}: {}", NEMESES.join(", "));
        }
    }
    if opts.nemesis.iter().any(|n| n == "membership") && opts.nodes < 3 {
        bail!("the membership nemesis needs at least 3 nodes (removing one must leave a majority)");
    }
    let partitions = opts.nemesis.iter().any(|n| n == "partition");
    if partitions && std::env::var_os(NETNS_ENV).is_none() {
        return run_in_namespace();
    }
    // <workload>-<timestamp>: Unix milliseconds, so back-to-back runs never share a directory.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let dir = opts.out.join(format!("{}-{stamp}", opts.workload));
    anyhow::ensure!(!dir.exists(), "{} exists already", dir.display());
    std::fs::create_dir_all(dir.join("nodes"))?;
    // In the fault namespace every node has its own loopback address, so iptables rules can
    // cut node pairs; on the host, 127.0.0.1 and free ports. Client ports, then peer ports.
    let (addrs, peer_addrs): (Vec<String>, Vec<String>) = if partitions {
        (0..opts.nodes)
            .map(|i| {
                let ip = format!("127.0.0.{}", 11 + i);
                (format!("{ip}:7000"), format!("{ip}:8000"))
            })
            .unzip()
    } else {
        let ports = free_ports(2 * opts.nodes)?;
        (0..opts.nodes)
            .map(|i| {
                (
                    format!("127.0.0.1:{}", ports[i]),
                    format!("127.0.0.1:{}", ports[opts.nodes + i]),
                )
            })
            .unzip()
    };
    let peers: Vec<String> = addrs
        .iter()
        .zip(&peer_addrs)
        .enumerate()
        .map(|(i, (a, p))| format!("{}={p},{a}", i + 1))
        .collect();
    let secret_file = dir.join("nodes/cluster-secret");
    let secret = format!("ordo-jepsen-{stamp}-cluster-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).context("writing the cluster secret")?;
    let fault_injection = opts.nemesis.iter().any(|n| n == "clock");
    // The hostile nemesis revokes tokens mid-stream: the nodes check tokens, and the run's own
    // clients carry one with every scope.
    let mut server_args = opts.server_args.clone();
    let tokens_file = match opts.nemesis.iter().any(|n| n == "hostile") {
        true => {
            crate::hostile::raise_open_files();
            let file = dir.join("nodes/tokens.toml");
            let scopes = ["read", "write", "catalog", "admin", "metrics"];
            let token = crate::hostile::create_token(&opts.ordo_bin, &file, "workload", &scopes)?;
            CLIENT_TOKEN
                .set(token)
                .map_err(|_| anyhow::anyhow!("one run per process"))?;
            server_args.extend(["--tokens-file".to_string(), file.display().to_string()]);
            Some(file)
        }
        false => None,
    };
    let mut cluster = Cluster {
        nodes: addrs
            .iter()
            .enumerate()
            .map(|(i, a)| NodeProc {
                id: i + 1,
                addr: a.clone(),
                peer_addr: peer_addrs[i].clone(),
                secret_file: secret_file.clone(),
                data_dir: dir.join(format!("nodes/n{}-data", i + 1)),
                log: dir.join(format!("nodes/n{}.log", i + 1)),
                peers: peers.clone(),
                fault_injection,
                extra_args: server_args.clone(),
                child: None,
                paused: false,
            })
            .collect(),
        bin: opts.ordo_bin.clone(),
        tokens_file,
        workload: opts.workload.clone(),
        secret,
    };
    for n in &mut cluster.nodes {
        n.start(&opts.ordo_bin)?;
    }
    let endpoints = cluster.endpoints();
    let admin = connect_retrying(&endpoints, Duration::from_secs(30)).await?;
    admin.init_cluster(false).await.context("cluster-init")?;

    let recorder: Shared = Arc::new(Mutex::new(Recorder {
        started: Instant::now(),
        events: Vec::new(),
    }));
    if matches!(opts.workload.as_str(), "inventory" | "bank" | "watch") {
        let value = load_dataset(&admin, &opts.workload)
            .await
            .context("loading the dataset")?;
        record(
            &recorder,
            Process::Named("setup".into()),
            EventType::Ok,
            "init",
            value,
        );
    }
    if opts.stock_rows > 0 {
        let value = load_ballast(&admin, opts.stock_rows)
            .await
            .context("loading the ballast stock rows")?;
        // Not in the history: the checkers never see the ballast.
        println!("ballast loaded: {value}");
    }
    if opts.workload == "inventory" {
        // The cluster's execution settings, changed through the log: a sweep bound of 1 to 4
        // lapsed holds per partition per epoch, so the holds that lapse under faults are
        // swept over many epochs (reads must never depend on how far), on every replica alike.
        let bound = 1 + (opts.seed % 4) as u32;
        let set = admin
            .set_execution_settings(v1::SetExecutionSettingsRequest {
                expiry_per_epoch_max: bound,
                ..Default::default()
            })
            .await
            .context("setting the sweep bound")?;
        record(
            &recorder,
            Process::Named("setup".into()),
            EventType::Ok,
            "settings",
            json!({"expiry_per_epoch_max": set.expiry_per_epoch_max, "epoch": set.epoch}),
        );
    }
    let setup_epoch = admin.highest_epoch();
    // The change-feed consumers follow the feed from epoch 1 through the whole run.
    let consumers = if opts.workload == "watch" {
        let started = recorder.lock().expect("recorder").started;
        Some(watch::Consumers::start(
            &dir,
            &endpoints,
            started,
            opts.time_limit,
        )?)
    } else {
        None
    };

    let end = Instant::now() + opts.time_limit;
    let interval = Duration::from_secs_f64(opts.concurrency as f64 / opts.rate);
    let holds = Arc::new(cart::Holds::default());
    let clients: Vec<_> = (0..opts.concurrency)
        .map(|slot| {
            let gen = Generator {
                workload: opts.workload.clone(),
                rng: Rng(opts.seed ^ (slot as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93)),
                slot,
                counter: 0,
                holds: holds.clone(),
            };
            tokio::spawn(client_slot(
                recorder.clone(),
                endpoints[slot % endpoints.len()].clone(),
                gen,
                interval,
                opts.concurrency,
                end,
                setup_epoch,
            ))
        })
        .collect();

    // The nemesis: one fault at a time, then healing.
    let mut rng = Rng(opts.seed ^ 0x5EED);
    let nemesis = Process::Named("nemesis".into());
    while !opts.nemesis.is_empty() && Instant::now() + Duration::from_secs(6) < end {
        tokio::time::sleep(Duration::from_secs(2 + rng.below(3))).await;
        let which = rng.pick(&opts.nemesis).clone();
        let (fault, value) = match inject(&mut cluster, &which, &mut rng).await {
            Ok(x) => x,
            Err(e) => (Fault::Nothing, json!({"error": e.to_string()})),
        };
        record(&recorder, nemesis.clone(), EventType::Info, &which, value);
        let mut lasts = Duration::from_secs(2 + rng.below(3));
        if which == "hostile" {
            lasts = lasts.max(crate::hostile::FAULT_MIN);
        }
        tokio::time::sleep(lasts).await;
        let healed = heal(&mut cluster, fault).await?;
        record(
            &recorder,
            nemesis.clone(),
            EventType::Info,
            &format!("heal-{which}"),
            healed,
        );
    }
    for c in clients {
        c.await?;
    }

    // Recovery: everything running, then the final reads and replica agreement.
    heal_everything(&mut cluster)?;
    let client = connect_retrying(&endpoints, RECOVERY_TIMEOUT)
        .await?
        .with_consistency(Consistency::Linearizable);
    let mut final_read = final_reads(&recorder, &client, &opts.workload).await;
    if let (Ok(()), Some(consumers)) = (&final_read, consumers) {
        let dcs: Vec<u32> = DCS.iter().map(|d| d.0).collect();
        final_read = watch::finish(consumers, &client, &dcs, &SKUS)
            .await
            .map(|value| {
                let watcher = Process::Named("watch".into());
                record(&recorder, watcher, EventType::Ok, "watch-final", value);
            });
    }
    let agreement = agreement(&endpoints).await;

    // The history, the verdict, the pictures.
    let events = recorder.lock().expect("recorder").events.clone();
    let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join("history.jsonl"))?);
    for e in &events {
        writeln!(file, "{}", serde_json::to_string(e)?)?;
    }
    file.flush()?;
    let mut verdict = match &final_read {
        Ok(()) => checks::check_run(&opts.workload, &events, &dir)?,
        Err(e) => checks::Verdict {
            valid: None,
            counts: BTreeMap::new(),
            examples: vec![format!("final reads failed: {e:#}")],
            summary: "no final reads; not checked".into(),
            stats: BTreeMap::new(),
        },
    };
    let agree = agreement.as_ref().map(|(_, a)| *a);
    match agreement {
        Some((_, false)) => {
            *verdict
                .counts
                .entry("replica-divergence".into())
                .or_default() += 1;
            verdict.valid = Some(false);
        }
        None if verdict.valid == Some(true) => verdict.valid = None,
        _ => {}
    }
    let plots = crate::plot::write(
        &dir,
        &format!("{} / {}", opts.workload, opts.nemesis.join("+")),
        &events,
    )
    .unwrap_or_else(|e| Some(format!("plots failed: {e:#}")));

    let mut op_counts: BTreeMap<String, BTreeMap<&str, usize>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| !matches!(e.process, Process::Named(_)))
    {
        let kind = match e.kind {
            EventType::Invoke => continue,
            EventType::Ok => "ok",
            EventType::Fail => "fail",
            EventType::Info => "info",
        };
        *op_counts
            .entry(e.f.clone())
            .or_default()
            .entry(kind)
            .or_default() += 1;
    }
    let faults: Vec<Value> = events
        .iter()
        .filter(|e| e.process.is_nemesis())
        .map(|e| json!({"time_s": e.time_ns as f64 / 1e9, "f": e.f, "value": e.value}))
        .collect();
    let results = json!({
        "valid": match verdict.valid { Some(v) => json!(v), None => json!("unknown") },
        "workload": opts.workload,
        "nodes": opts.nodes,
        "nemesis": opts.nemesis,
        "seed": opts.seed,
        "time_limit_s": opts.time_limit.as_secs(),
        "rate": opts.rate,
        "concurrency": opts.concurrency,
        "server_args": opts.server_args,
        "stock_rows": opts.stock_rows,
        "ca": opts.ca.as_ref().map(|p| p.display().to_string()),
        "op_counts": op_counts,
        "anomaly_counts": verdict.counts,
        "anomalies": verdict.examples,
        "checker": verdict.summary,
        "checker_stats": verdict.stats,
        "replicas_agree": agree,
        "common_epoch": agreement.map(|(e, _)| e),
        "nemesis_events": faults,
        "plots": plots.clone().unwrap_or_else(|| "latency.png, throughput.png".into()),
    });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let mut summary = format!(
        "{} on {} nodes, nemesis {}, seed {}, {} s: {}\n  ops {}\n  checker: {}\n  replicas: {}\n  faults: {}\n",
        opts.workload,
        opts.nodes,
        if opts.nemesis.is_empty() { "none".to_string() } else { opts.nemesis.join(",") },
        opts.seed,
        opts.time_limit.as_secs(),
        match verdict.valid {
            Some(true) => "VALID".to_string(),
            Some(false) => format!("ANOMALIES {:?}", verdict.counts),
            None => "UNKNOWN".to_string(),
        },
        serde_json::to_string(&op_counts)?,
        verdict.summary,
        match (agree, agreement) {
            (Some(true), Some((e, _))) => format!("agree at epoch {e}"),
            (Some(false), Some((e, _))) => format!("DISAGREE at epoch {e}"),
            _ => "could not be compared".into(),
        },
        faults.len() / 2,
    );
    for e in verdict.examples.iter().take(20) {
        summary.push_str(&format!("  {e}\n"));
    }
    if let Some(why) = plots {
        summary.push_str(&format!("  {why}\n"));
    }
    std::fs::write(dir.join("summary.txt"), &summary)?;
    print!("{summary}");
    println!("output in {}", dir.display());
    Ok(verdict.exit_code())
}

/// Every node running and resumed, partitions healed: the state recovery starts from.
fn heal_everything(cluster: &mut Cluster) -> anyhow::Result<()> {
    if std::env::var_os(NETNS_ENV).is_some() {
        heal_partitions()?;
    }
    let bin = cluster.bin.clone();
    for n in &mut cluster.nodes {
        n.resume();
        n.start(&bin)?;
    }
    Ok(())
}

async fn connect_retrying(endpoints: &[String], timeout: Duration) -> anyhow::Result<Client> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(c) = connect_many(endpoints.to_vec()).await {
            return Ok(c);
        }
        if Instant::now() > deadline {
            bail!("no node answered within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Calls `f` until it succeeds, at most `timeout` (then its last error), 300 ms apart.
pub(crate) async fn retry_until<T, F, Fut>(timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ordo_client::Error>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => bail!("still failing after {timeout:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Every node's state hash at the highest epoch all have applied: (epoch, all equal).
async fn agreement(endpoints: &[String]) -> Option<(u64, bool)> {
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    loop {
        let mut statuses = Vec::new();
        for ep in endpoints {
            if let Ok(Ok(c)) =
                tokio::time::timeout(Duration::from_secs(2), connect(ep.clone())).await
            {
                if let Ok(s) = c.status().await {
                    statuses.push((c, s));
                }
            }
        }
        if statuses.len() == endpoints.len() {
            let epoch = statuses
                .iter()
                .map(|(_, s)| s.applied_epoch)
                .min()
                .unwrap_or(0);
            let mut hashes = Vec::new();
            for (c, _) in &statuses {
                hashes.push(c.state_hash(epoch).await.ok().map(|h| h.state_hash));
            }
            if hashes.iter().all(|h| h.is_some()) {
                return Some((epoch, hashes.windows(2).all(|w| w[0] == w[1])));
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Set in the re-executed runner inside its network namespace.
const NETNS_ENV: &str = "ORDO_JEPSEN_NETNS";

/// Runs this same command again inside a fresh network namespace (root and iptables needed),
/// so partitions are iptables rules between the nodes' loopback addresses there and never
/// touch the host. Returns the inner run's exit code.
fn run_in_namespace() -> anyhow::Result<u8> {
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let has = |tool: &str| Command::new(tool).arg("--version").output().is_ok();
    if !is_root || !has("iptables") || !has("ip") {
        bail!(
            "the partition nemesis needs root, iproute2 and iptables (apt-get install iptables): \
             REFUSING to run it without them"
        );
    }
    let name = format!("ordo-jepsen-{}", std::process::id());
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    if !ok(Command::new("ip").args(["netns", "add", &name])) {
        bail!("ip netns add {name} failed");
    }
    let result = (|| {
        if !ok(Command::new("ip").args(["netns", "exec", &name, "ip", "link", "set", "lo", "up"])) {
            bail!("bringing up lo in {name} failed");
        }
        let me = std::env::current_exe()?;
        let status = Command::new("ip")
            .args(["netns", "exec", &name])
            .arg(me)
            .args(std::env::args_os().skip(1))
            .env(NETNS_ENV, &name)
            .status()?;
        Ok(status.code().unwrap_or(2) as u8)
    })();
    let _ = Command::new("ip").args(["netns", "delete", &name]).status();
    result
}

fn host(addr: &str) -> &str {
    addr.split(':').next().unwrap_or(addr)
}

/// Drops traffic between two nodes, both ways (inside the namespace).
fn drop_between(a: &str, b: &str) -> anyhow::Result<()> {
    for (src, dst) in [(host(a), host(b)), (host(b), host(a))] {
        let ok = Command::new("iptables")
            .args(["-A", "INPUT", "-s", src, "-d", dst, "-j", "DROP"])
            .status()?
            .success();
        anyhow::ensure!(ok, "iptables -A INPUT -s {src} -d {dst} -j DROP failed");
    }
    Ok(())
}

fn heal_partitions() -> anyhow::Result<()> {
    let ok = Command::new("iptables")
        .args(["-F", "INPUT"])
        .status()?
        .success();
    anyhow::ensure!(ok, "iptables -F INPUT failed");
    Ok(())
}

/// Which node pairs (0-based) a partition cuts: random halves, one node isolated, the leader
/// isolated, a majorities ring (each node sees only its ring neighbours), or a bridge (two
/// halves joined by one node that sees both).
fn partition_plan(
    rng: &mut Rng,
    n: usize,
    leader: Option<usize>,
) -> (&'static str, Vec<(usize, usize)>) {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let pos = |x: usize| {
        order
            .iter()
            .position(|&y| y == x)
            .expect("a node is in the order")
    };
    // A ring of three or fewer nodes cuts nothing (every node neighbours every other).
    let shapes: &[&'static str] = if n >= 4 {
        &["halves", "isolate", "leader", "ring", "bridge"]
    } else {
        &["halves", "isolate", "leader", "bridge"]
    };
    let shape = *rng.pick(shapes);
    let lone = match shape {
        "leader" => leader.unwrap_or(order[0]),
        _ => order[0],
    };
    // Whether a and b can still talk.
    let connected = |a: usize, b: usize| -> bool {
        match shape {
            "halves" => (pos(a) < n / 2) == (pos(b) < n / 2),
            "isolate" | "leader" => a != lone && b != lone,
            "ring" => {
                let d = pos(a).abs_diff(pos(b));
                d <= 1 || d == n - 1
            }
            // bridge: order[0] sees everyone; the others split in two halves.
            _ => {
                a == order[0]
                    || b == order[0]
                    || ((pos(a) - 1) < (n - 1) / 2) == ((pos(b) - 1) < (n - 1) / 2)
            }
        }
    };
    let mut cut = Vec::new();
    for a in 0..n {
        for b in a + 1..n {
            if !connected(a, b) {
                cut.push((a, b));
            }
        }
    }
    (shape, cut)
}

/// The current leader (0-based), if any node knows it.
async fn leader_of(endpoints: &[String]) -> Option<usize> {
    for ep in endpoints {
        let probe = async {
            let c = connect(ep.clone()).await.ok()?;
            c.status().await.ok()
        };
        if let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
            if s.leader_id > 0 {
                return Some(s.leader_id as usize - 1);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_shapes_cut_the_right_pairs_for_five_nodes() {
        let mut seen = BTreeMap::new();
        for seed in 0..200 {
            let mut rng = Rng(seed);
            let (shape, cut) = partition_plan(&mut rng, 5, Some(2));
            seen.insert(shape, cut.clone());
            let cuts = cut.len();
            match shape {
                "halves" => assert_eq!(cuts, 6, "2 x 3 pairs between the halves"),
                "isolate" | "leader" => assert_eq!(cuts, 4),
                "ring" => assert_eq!(cuts, 5, "each node keeps its two ring neighbours"),
                "bridge" => assert_eq!(cuts, 4, "two pairs of two, the bridge sees all"),
                other => panic!("unknown shape {other}"),
            }
            if shape == "leader" {
                assert!(
                    cut.iter().all(|&(a, b)| a == 2 || b == 2),
                    "only the leader is cut off"
                );
            }
        }
        assert_eq!(seen.len(), 5, "every shape comes up: {:?}", seen.keys());
        for seed in 0..50 {
            let (shape, cut) = partition_plan(&mut Rng(seed), 3, Some(0));
            assert!(!cut.is_empty(), "{shape} cuts nothing among 3 nodes");
        }
    }
}
