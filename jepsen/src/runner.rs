//! `ordo-jepsen run`: a real cluster of `ordo` processes, logical client processes recording
//! a history, a nemesis schedule, recovery, final reads and the checkers.
//!
//! With the `partition` nemesis the runner re-executes itself in a fresh network namespace
//! (root and iptables needed; refused loudly otherwise), where every node has its own loopback
//! address (127.0.0.11, .12, ...) and a partition is a set of iptables DROP rules between node
//! pairs (nodes connect to peers from their own address). Without it, nodes run on the host's
//! 127.0.0.1. Nemeses: `partition` (random halves, one node isolated, the leader isolated, a
//! majorities ring, a bridge), `kill` (SIGKILL, restart), `pause` (SIGSTOP, SIGCONT).
//! Workloads: `register` and `append`, over Ordo's `Transact` API. The clock and membership
//! nemeses and the `inventory` and `bank` workloads are refused until they exist.

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
            "kill" | "pause" | "partition" => {}
            "clock" | "membership" => bail!(
                "nemesis {n:?} is not built yet (partition, kill and pause are); refusing to run without it rather than pretend"
            ),
            other => bail!("unknown nemesis {other:?}: partition, kill, pause, clock, membership"),
        }
    }
    let partitions = opts.nemesis.iter().any(|n| n == "partition");
    if partitions && std::env::var_os(NETNS_ENV).is_none() {
        return run_in_namespace();
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
    // In the fault namespace every node has its own loopback address, so iptables rules can
    // cut node pairs; on the host, 127.0.0.1 and a free port each.
    let addrs: Vec<String> = if partitions {
        (0..opts.nodes)
            .map(|i| format!("127.0.0.{}:7000", 11 + i))
            .collect()
    } else {
        free_ports(opts.nodes)?
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    };
    let peers: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    let mut nodes: Vec<NodeProc> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| NodeProc {
            id: i + 1,
            addr: a.clone(),
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
        let name = if which == "partition" {
            let leader = leader_of(&endpoints).await;
            let (shape, cut) = partition_plan(&mut rng, nodes.len(), leader);
            for (a, b) in &cut {
                drop_between(&nodes[*a].addr, &nodes[*b].addr)?;
            }
            json!({"shape": shape, "cut": cut.iter().map(|(a, b)| [a + 1, b + 1]).collect::<Vec<_>>()})
        } else {
            json!(format!("n{}", victim + 1))
        };
        recorder.lock().unwrap().push(
            Process::Named("nemesis".into()),
            EventType::Info,
            &which,
            name.clone(),
            None,
        );
        match which.as_str() {
            "kill" => nodes[victim].kill9(),
            "pause" => {
                nodes[victim].signal("-STOP");
                nodes[victim].paused = true;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(2 + rng.below(3))).await;
        match which.as_str() {
            "kill" => nodes[victim].start(&opts.ordo_bin)?,
            "pause" => {
                nodes[victim].signal("-CONT");
                nodes[victim].paused = false;
            }
            _ => heal_partitions()?,
        }
        recorder.lock().unwrap().push(
            Process::Named("nemesis".into()),
            EventType::Info,
            &format!("heal-{which}"),
            name,
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
    let shapes = ["halves", "isolate", "leader", "ring", "bridge"];
    let shape = shapes[rng.below(shapes.len() as u64) as usize];
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
            let c = Client::connect(ep.clone()).await.ok()?;
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
    }
}
