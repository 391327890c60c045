//! `ordo-jepsen run`: a real cluster of `ordo` processes, logical client processes recording
//! a history, a nemesis schedule, recovery, final reads and the checkers.
//!
//! This first cut runs on loopback (one address per node, its own port) with the `kill` and
//! `pause` nemeses and the `register` and `append` workloads, which use Ordo's `Transact` API.
//! The network-namespace partitions, the clock and membership nemeses and the `inventory` and
//! `bank` workloads are refused with a message until they exist.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ordo_client::{v1, Client, RetryPolicy};
use serde_json::{json, Value};

use crate::history::{Event, EventType, Process};

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
}

/// Keys the register and append workloads use.
const KEYS: u64 = 5;
/// How long recovery (restarts, agreement) may take after the nemesis stops.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// SplitMix64, seeded: the same seed gives the same operations and fault schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
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

struct NodeProc {
    id: usize,
    addr: String,
    data_dir: PathBuf,
    log: PathBuf,
    peers: Vec<String>,
    child: Option<Child>,
    paused: bool,
}

impl NodeProc {
    fn start(&mut self, bin: &Path) -> anyhow::Result<()> {
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
            "--data-dir",
        ])
        .arg(&self.data_dir)
        .env("RUST_LOG", "info,openraft=warn")
        .stdout(Stdio::null())
        .stderr(log);
        for p in &self.peers {
            cmd.args(["--peer", p]);
        }
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

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.paused {
                self.signal("-CONT");
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
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

/// One operation of the workload: (f, invoke value, key, the Transact ops).
fn next_op(
    workload: &str,
    rng: &mut Rng,
    counter: &mut i64,
) -> (String, Value, Option<Value>, Vec<v1::KvOp>) {
    let k = rng.below(KEYS);
    let key = key_name(k);
    let op = |o| v1::KvOp { op: Some(o) };
    if workload == "register" {
        match rng.below(3) {
            0 => (
                "read".into(),
                Value::Null,
                Some(json!(k)),
                vec![op(v1::kv_op::Op::Read(key))],
            ),
            1 => {
                let v = rng.below(5) as i64;
                (
                    "write".into(),
                    json!(v),
                    Some(json!(k)),
                    vec![op(v1::kv_op::Op::Write(v1::KvWrite { key, value: v }))],
                )
            }
            _ => {
                let (from, to) = (rng.below(5) as i64, rng.below(5) as i64);
                (
                    "cas".into(),
                    json!([from, to]),
                    Some(json!(k)),
                    vec![op(v1::kv_op::Op::Cas(v1::KvCas { key, from, to }))],
                )
            }
        }
    } else {
        // append: 1-3 micro-ops over the keys, appends of unique values.
        let n = 1 + rng.below(3);
        let mut mops = Vec::new();
        let mut ops = Vec::new();
        for _ in 0..n {
            let k = rng.below(KEYS);
            if rng.below(2) == 0 {
                *counter += 1;
                mops.push(json!(["append", k, *counter]));
                ops.push(op(v1::kv_op::Op::Append(v1::KvAppend {
                    key: key_name(k),
                    value: *counter,
                })));
            } else {
                mops.push(json!(["r", k, null]));
                ops.push(op(v1::kv_op::Op::Read(key_name(k))));
            }
        }
        ("txn".into(), Value::Array(mops), None, ops)
    }
}

fn kv_value(v: &Option<v1::KvValue>) -> Value {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        None => Value::Null,
        Some(v1::kv_value::Value::Int(x)) => json!(x),
        Some(v1::kv_value::Value::List(l)) => json!(l.values),
    }
}

/// The completion value for a committed transaction.
fn completion_value(f: &str, invoke: &Value, r: &v1::TransactResponse) -> Value {
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

pub async fn run(opts: RunOpts) -> anyhow::Result<u8> {
    for n in &opts.nemesis {
        match n.as_str() {
            "kill" | "pause" => {}
            "partition" | "clock" | "membership" => bail!(
                "nemesis {n:?} is not built yet (kill and pause are); refusing to run without it rather than pretend"
            ),
            other => bail!("unknown nemesis {other:?}: partition, kill, pause, clock, membership"),
        }
    }
    if !matches!(opts.workload.as_str(), "register" | "append") {
        bail!(
            "workload {:?} is not built into the runner yet (register and append are)",
            opts.workload
        );
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let dir = opts.out.join(format!("{}-{stamp}", opts.workload));
    std::fs::create_dir_all(dir.join("nodes"))?;
    let ports = free_ports(opts.nodes)?;
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect();
    let mut nodes: Vec<NodeProc> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| NodeProc {
            id: i + 1,
            addr: format!("127.0.0.1:{p}"),
            data_dir: dir.join(format!("nodes/n{}-data", i + 1)),
            log: dir.join(format!("nodes/n{}.log", i + 1)),
            peers: peers.clone(),
            child: None,
            paused: false,
        })
        .collect();
    for n in &mut nodes {
        n.start(&opts.ordo_bin)?;
    }
    let endpoints: Vec<String> = nodes.iter().map(|n| format!("http://{}", n.addr)).collect();
    let admin = connect_retrying(&endpoints, Duration::from_secs(30)).await?;
    admin.init_cluster(false).await.context("cluster-init")?;

    let recorder = Arc::new(Mutex::new(Recorder {
        started: Instant::now(),
        events: Vec::new(),
    }));
    let end = Instant::now() + opts.time_limit;
    let mut clients = Vec::new();
    for slot in 0..opts.concurrency {
        let rec = recorder.clone();
        let endpoints = endpoints.clone();
        let workload = opts.workload.clone();
        let interval = Duration::from_secs_f64(opts.concurrency as f64 / opts.rate);
        let seed = opts.seed;
        let concurrency = opts.concurrency;
        clients.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ (slot as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93));
            // Unique append values per slot: slot-major ranges.
            let mut counter: i64 = slot as i64 * 1_000_000_000;
            let mut process = slot as u64;
            let node = endpoints[slot % endpoints.len()].clone();
            let mut client: Option<Client> = None;
            while Instant::now() < end {
                if client.is_none() {
                    client = Client::connect(node.clone()).await.ok().map(|c| {
                        // One attempt: a logical process is single-threaded and never retries
                        // on its own; an unknown outcome retires it.
                        c.with_retry(RetryPolicy {
                            attempts_max: 1,
                            ..Default::default()
                        })
                    });
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
                let (f, value, key, ops) = next_op(&workload, &mut rng, &mut counter);
                rec.lock().unwrap().push(
                    Process::Client(process),
                    EventType::Invoke,
                    &f,
                    value.clone(),
                    key.clone(),
                );
                let call = client.as_ref().unwrap().transact(ops, None);
                let outcome = tokio::time::timeout(Duration::from_secs(5), call).await;
                let completion = match outcome {
                    Ok(Ok(r)) if r.committed => (EventType::Ok, completion_value(&f, &value, &r)),
                    // An aborted transaction (a failed cas) definitely did not apply.
                    Ok(Ok(_)) => (EventType::Fail, value),
                    // Unknown outcome: the process retires; a fresh one takes its slot.
                    _ => (EventType::Info, value),
                };
                rec.lock().unwrap().push(
                    Process::Client(process),
                    completion.0,
                    &f,
                    completion.1,
                    key,
                );
                if completion.0 == EventType::Info {
                    process += concurrency as u64;
                    client = None;
                }
                tokio::time::sleep(interval).await;
            }
        }));
    }

    // The nemesis: every few seconds, a fault on a random node, then healing.
    let mut rng = Rng(opts.seed ^ 0x5EED);
    let nemeses = opts.nemesis.clone();
    while !nemeses.is_empty() && Instant::now() + Duration::from_secs(6) < end {
        tokio::time::sleep(Duration::from_secs(2 + rng.below(3))).await;
        let which = nemeses[rng.below(nemeses.len() as u64) as usize].clone();
        let victim = rng.below(nodes.len() as u64) as usize;
        let name = format!("n{}", victim + 1);
        recorder.lock().unwrap().push(
            Process::Named("nemesis".into()),
            EventType::Info,
            &which,
            json!(name),
            None,
        );
        match which.as_str() {
            "kill" => nodes[victim].kill9(),
            _ => {
                nodes[victim].signal("-STOP");
                nodes[victim].paused = true;
            }
        }
        tokio::time::sleep(Duration::from_secs(2 + rng.below(3))).await;
        match which.as_str() {
            "kill" => nodes[victim].start(&opts.ordo_bin)?,
            _ => {
                nodes[victim].signal("-CONT");
                nodes[victim].paused = false;
            }
        }
        recorder.lock().unwrap().push(
            Process::Named("nemesis".into()),
            EventType::Info,
            &format!("heal-{which}"),
            json!(name),
            None,
        );
    }
    for c in clients {
        c.await?;
    }

    // Recovery, then final reads (append) and replica agreement.
    let client = connect_retrying(&endpoints, RECOVERY_TIMEOUT).await?;
    if opts.workload == "append" {
        let ops: Vec<v1::KvOp> = (0..KEYS)
            .map(|k| v1::KvOp {
                op: Some(v1::kv_op::Op::Read(key_name(k))),
            })
            .collect();
        let mops: Vec<Value> = (0..KEYS).map(|k| json!(["r", k, null])).collect();
        let value = Value::Array(mops);
        let process = Process::Client(u64::MAX / 2);
        recorder.lock().unwrap().push(
            process.clone(),
            EventType::Invoke,
            "txn",
            value.clone(),
            None,
        );
        let r = retry_until(RECOVERY_TIMEOUT, || client.transact(ops.clone(), None)).await?;
        let v = completion_value("txn", &value, &r);
        recorder
            .lock()
            .unwrap()
            .push(process, EventType::Ok, "txn", v, None);
    }
    let agreement = agreement(&endpoints).await;

    // The history and the verdict.
    let events = recorder.lock().unwrap().events.clone();
    let mut file = std::fs::File::create(dir.join("history.jsonl"))?;
    for e in &events {
        writeln!(file, "{}", serde_json::to_string(e)?)?;
    }
    let ops = crate::history::pair(&events)?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for o in &ops {
        let t = match o.completion {
            Some(EventType::Ok) => "ok",
            Some(EventType::Fail) => "fail",
            _ => "info",
        };
        *counts.entry(t.to_string()).or_default() += 1;
    }
    let (valid, anomalies): (bool, Vec<String>) = if opts.workload == "register" {
        let verdicts = crate::register::check(&ops).map_err(|e| anyhow::anyhow!(e))?;
        let bad: Vec<String> = verdicts
            .iter()
            .filter(|v| v.verdict != crate::register::Verdict::Linearizable)
            .map(|v| format!("key {:?}: {:?}", v.key, v.verdict))
            .collect();
        (bad.is_empty(), bad)
    } else {
        let report = crate::append::check(&ops).map_err(|e| anyhow::anyhow!(e))?;
        (
            report.counts.is_empty(),
            report
                .anomalies
                .iter()
                .map(|a| format!("{}: {}", a.kind, a.explanation))
                .collect(),
        )
    };
    let agree = agreement.as_ref().map(|(_, a)| *a).unwrap_or(false);
    let results = json!({
        "valid": valid && agree,
        "workload": opts.workload,
        "nodes": opts.nodes,
        "nemesis": opts.nemesis,
        "seed": opts.seed,
        "op_counts": counts,
        "anomalies": anomalies,
        "replicas_agree": agree,
        "common_epoch": agreement.as_ref().map(|(e, _)| *e),
    });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let summary = format!(
        "{} on {} nodes, nemesis {:?}, seed {}: {} ops ({:?}); {}; replicas {}\n",
        opts.workload,
        opts.nodes,
        opts.nemesis,
        opts.seed,
        ops.len(),
        counts,
        if valid {
            "no anomalies".to_string()
        } else {
            format!("{} anomalies", anomalies.len())
        },
        match &agreement {
            Some((e, true)) => format!("agree at epoch {e}"),
            Some((e, false)) => format!("DISAGREE at epoch {e}"),
            None => "could not be compared".into(),
        }
    );
    std::fs::write(dir.join("summary.txt"), &summary)?;
    print!("{summary}");
    for a in &anomalies {
        println!("  {a}");
    }
    println!("output in {}", dir.display());
    Ok(if valid && agree {
        0
    } else if agreement.is_none() {
        2
    } else {
        1
    })
}

async fn connect_retrying(endpoints: &[String], timeout: Duration) -> anyhow::Result<Client> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(c) = Client::connect_many(endpoints.to_vec()).await {
            return Ok(c);
        }
        if Instant::now() > deadline {
            bail!("no node answered within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn retry_until<T, F, Fut>(timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ordo_client::Error>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => bail!("final read failed: {e}"),
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
                tokio::time::timeout(Duration::from_secs(2), Client::connect(ep.clone())).await
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
