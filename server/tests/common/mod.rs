//! Test harness: real `ordo server` processes on 127.0.0.1:0, started and killed by the test.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ordo_client::{v1, Client, Line};

pub const BIN: &str = env!("CARGO_BIN_EXE_ordo");

/// A running `ordo server` process.
pub struct TestNode {
    /// The peer listener, when the node has one (started with a cluster secret).
    pub peer_endpoint: Option<String>,
    pub child: Child,
    pub endpoint: String,
    pub data_dir: PathBuf,
    pub extra_args: Vec<String>,
}

/// `ordo server` as one node on a port the kernel picks (a data directory still to add).
pub const SINGLE_NODE_ARGS: [&str; 5] = ["server", "--node-id", "1", "--listen", "127.0.0.1:0"];

impl TestNode {
    /// Starts a node on `data_dir` and waits until it prints its address.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> TestNode {
        let mut child = Command::new(BIN)
            .args(SINGLE_NODE_ARGS)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra_args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning ordo server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut peer = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("peer port ").nth(1) {
                    peer = Some(addr.trim().to_string());
                }
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send((addr.trim().to_string(), peer.take()));
                }
            }
        });
        let (addr, peer) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("ordo server did not report its address within 60 s");
        TestNode {
            child,
            endpoint: format!("http://{addr}"),
            peer_endpoint: peer.map(|p| format!("http://{p}")),
            data_dir: data_dir.to_path_buf(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.endpoint.clone())
            .await
            .expect("connecting to the test node")
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaping");
    }

    /// SIGTERM, then wait for a graceful exit.
    pub fn stop(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exit) = self.child.try_wait().expect("try_wait") {
                assert!(
                    exit.success(),
                    "ordo server exited with {exit} after SIGTERM"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ordo server ignored SIGTERM for 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test dataset: DCs 1..=4 in regions 0, 1, 2, 0 (partitions 0, 1, 2, 0), SKUs 1..=3,
/// and `stock` units of every SKU at every DC.
pub async fn seed(client: &Client, stock: i64) {
    for dc in 1..=4u32 {
        client
            .upsert_dc(v1::Dc {
                dc_id: dc,
                name: format!("DC {dc}"),
                lat: 52.0 + dc as f64,
                lon: 13.0,
                region: Some((dc - 1) % 3),
                active: true,
            })
            .await
            .expect("upsert dc");
    }
    for sku in 1..=3u32 {
        client
            .upsert_item(v1::Item {
                sku,
                name: format!("item {sku}"),
                price_cents: 199,
            })
            .await
            .expect("upsert item");
    }
    for dc in 1..=4u32 {
        for sku in 1..=3u32 {
            let r = client.restock(dc, sku, stock, None).await.expect("restock");
            assert!(r.applied);
        }
    }
}

pub fn line(dc_id: u32, sku: u32, qty: i64) -> Line {
    Line { dc_id, sku, qty }
}

pub fn committed(r: &v1::OrderResult) -> bool {
    r.status() == v1::OrderStatus::Committed
}

pub async fn total_on_hand(client: &Client) -> i64 {
    let mut total = 0;
    for dc in 1..=4 {
        for sku in 1..=3 {
            total += client.get_stock(dc, sku).await.expect("get_stock").on_hand;
        }
    }
    total
}

pub fn ordo_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().expect("running ordo");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ordo token create`: the token it prints.
pub fn create_token(file: &Path, name: &str, scopes: &[&str]) -> String {
    let mut args = vec![
        "token",
        "create",
        "--tokens-file",
        file.to_str().unwrap(),
        "--name",
        name,
    ];
    for s in scopes {
        args.extend(["--scope", s]);
    }
    let (code, out, err) = ordo_cli(&args);
    assert_eq!(code, 0, "ordo token create: {err}");
    assert!(err.contains("shown only now"), "{err}");
    out.trim().to_string()
}

/// Free loopback ports, found by binding and releasing (all held until all are found).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The cluster secret the test clusters share.
pub const TEST_SECRET: &str = "test-cluster-secret-0123456789";

/// One `ordo server` process of a cluster.
pub struct ClusterNode {
    pub id: u64,
    /// Its client address.
    pub addr: String,
    /// Its peer listener.
    pub peer_addr: String,
    pub secret_file: PathBuf,
    /// `--peer` values: `ID=PEER,CLIENT`.
    pub data_dir: PathBuf,
    pub peers: Vec<(u64, String)>,
    pub extra: Vec<String>,
    pub child: Option<Child>,
}

impl ClusterNode {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} is already running", self.id);
        let mut cmd = Command::new(BIN);
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
        .args(&self.extra)
        .env("RUST_LOG", "warn,openraft=off")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (id, addr) in &self.peers {
            cmd.args(["--peer", &format!("{id}={addr}")]);
        }
        let mut child = cmd.spawn().expect("spawning ordo server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("node {} did not start within 60 s", self.id));
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    pub fn wipe(&mut self) {
        assert!(
            self.child.is_none(),
            "stop node {} before wiping it",
            self.id
        );
        std::fs::remove_dir_all(&self.data_dir).expect("wiping the data dir");
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.endpoint()).await.expect("connecting")
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused node must be resumed to die promptly.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill9();
    }
}

/// A cluster of `ordo server` processes on loopback.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<ClusterNode>,
    /// The token the harness's clients send (nodes started with --tokens-file).
    pub token: Option<String>,
}

impl Cluster {
    /// Starts `voters` nodes (ids 1..=voters) plus `spares` more that are configured but not
    /// started or members, initialises the voters as one cluster and seeds the test dataset.
    pub async fn start(voters: usize, spares: usize, stock: i64, extra: &[&str]) -> Cluster {
        Cluster::start_with_token(voters, spares, stock, extra, None).await
    }

    /// [`Cluster::start`] for nodes that need a token (`extra` names the tokens file): the
    /// harness's clients send `token`, which must have the admin, catalog and read scopes.
    pub async fn start_with_token(
        voters: usize,
        spares: usize,
        stock: i64,
        extra: &[&str],
        token: Option<String>,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("cluster-secret");
        std::fs::write(&secret_file, TEST_SECRET).unwrap();
        let n = voters + spares;
        let ports = free_ports(2 * n);
        let client_addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
        let peer_addr = |i: usize| format!("127.0.0.1:{}", ports[n + i]);
        let entry = |i: usize| format!("{},{}", peer_addr(i), client_addr(i));
        let peers: Vec<(u64, String)> = (0..voters).map(|i| (i as u64 + 1, entry(i))).collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = i as u64 + 1;
            nodes.push(ClusterNode {
                id,
                addr: client_addr(i),
                peer_addr: peer_addr(i),
                secret_file: secret_file.clone(),
                data_dir: dir.path().join(format!("node-{id}")),
                // A spare knows only itself until it is added.
                peers: if i < voters {
                    peers.clone()
                } else {
                    vec![(id, entry(i))]
                },
                extra: extra.iter().map(|s| s.to_string()).collect(),
                child: None,
            });
        }
        for node in nodes.iter_mut().take(voters) {
            node.start();
        }
        let cluster = Cluster { dir, nodes, token };
        let client = cluster.client().await;
        let init = client.init_cluster(false).await.expect("cluster-init");
        assert!(init.initialized, "{}", init.message);
        seed(&client, stock).await;
        cluster
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.endpoint())
            .collect()
    }

    /// A client that may fail over between all running nodes.
    pub async fn client(&self) -> Client {
        let client = Client::connect_many(self.endpoints())
            .await
            .expect("connecting to the cluster");
        match &self.token {
            Some(token) => client.with_token(token).unwrap(),
            None => client,
        }
    }

    pub fn node(&mut self, id: u64) -> &mut ClusterNode {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id")
    }

    /// The leader's id, once a majority of running nodes agree on one (bounded wait).
    pub async fn leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut votes = std::collections::BTreeMap::new();
            for node in self.nodes.iter().filter(|n| n.child.is_some()) {
                let status = async {
                    let c = Client::connect(node.endpoint()).await.ok()?;
                    c.status().await.ok()
                };
                if let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(1), status).await {
                    let leader_running = self
                        .nodes
                        .iter()
                        .any(|n| n.id == s.leader_id && n.child.is_some());
                    if leader_running && s.role != "candidate" {
                        *votes.entry(s.leader_id).or_insert(0) += 1;
                    }
                }
            }
            if let Some((&leader, &n)) = votes.iter().max_by_key(|(_, n)| **n) {
                if n * 2 > self.nodes.iter().filter(|n| n.child.is_some()).count() {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {timeout:?}: {votes:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running node agrees on the state hash at a common epoch that is at
    /// least `min_epoch` (`ordo status --all --json`), and returns that epoch.
    pub async fn wait_agreement(&self, min_epoch: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let endpoint = self.endpoints()[0].clone();
        loop {
            let (code, out, _) = ordo_cli(&["status", "--all", "--endpoint", &endpoint, "--json"]);
            let report: Option<serde_json::Value> = serde_json::from_str(out.trim()).ok();
            if let Some(report) = &report {
                let epoch = report["common_epoch"].as_u64().unwrap_or(0);
                if code == 0 && report["agree"] == true && epoch >= min_epoch {
                    return epoch;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreement at epoch >= {min_epoch} within {timeout:?}: {out}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A request id and the lines it asked for.
pub type Attempt = (String, Vec<Line>);
/// Acknowledged results by request id.
pub type Acks = std::collections::BTreeMap<String, v1::OrderResult>;

impl Cluster {
    /// Stops the writers, checks that every acknowledged order is there exactly once and stock
    /// adds up, then waits until every running node agrees on the state hash at an epoch that
    /// covers every acknowledged order.
    pub async fn settle(&self, writers: Writers, client: &Client, initial: i64) {
        let (attempted, acked) = writers.finish().await;
        verify_exactly_once(client, initial, &attempted, &acked).await;
        let max_epoch = acked.values().map(|r| r.epoch).max().unwrap_or(0);
        self.wait_agreement(max_epoch, Duration::from_secs(30))
            .await;
    }
}

/// Writers placing orders with known request ids until stopped, recording what was attempted
/// and what was acknowledged.
pub struct Writers {
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub attempted: std::sync::Arc<std::sync::Mutex<Vec<Attempt>>>,
    pub acked: std::sync::Arc<std::sync::Mutex<Acks>>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// `count` writers, each with its own client over `endpoints` (failover between them).
    pub async fn start(endpoints: Vec<String>, count: u32, prefix: &str) -> Writers {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let attempted: std::sync::Arc<std::sync::Mutex<Vec<Attempt>>> = Default::default();
        let acked: std::sync::Arc<std::sync::Mutex<Acks>> = Default::default();
        let mut tasks = Vec::new();
        for w in 0..count {
            // Each writer starts on a different node.
            let mut eps = endpoints.clone();
            eps.rotate_left(w as usize % endpoints.len());
            let client = Client::connect_many(eps)
                .await
                .expect("writer connect")
                .with_retry(ordo_client::RetryPolicy {
                    attempts_max: 3,
                    backoff_initial: Duration::from_millis(20),
                    backoff_max: Duration::from_millis(200),
                });
            let (stop, attempted, acked) = (stop.clone(), attempted.clone(), acked.clone());
            let prefix = prefix.to_string();
            tasks.push(tokio::spawn(async move {
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let dc = (w + i) % 4 + 1;
                    let sku = i % 3 + 1;
                    let lines = if i.is_multiple_of(4) {
                        vec![line(dc, sku, 1), line(dc % 4 + 1, sku, 1)]
                    } else {
                        vec![line(dc, sku, 1)]
                    };
                    let id = format!("{prefix}-{w}-{i}");
                    attempted.lock().unwrap().push((id.clone(), lines.clone()));
                    match client.place_order(&lines, false, Some(id.clone())).await {
                        Ok(result) => {
                            acked.lock().unwrap().insert(id, result);
                        }
                        // Unavailable during a fault: the outcome is unknown; checked later.
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }));
        }
        Writers {
            stop,
            attempted,
            acked,
            tasks,
        }
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    pub async fn wait_acked(&self, more_than: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.acked_count() <= more_than {
            assert!(
                Instant::now() < deadline,
                "writers stalled at {} acknowledged orders",
                self.acked_count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn finish(self) -> (Vec<Attempt>, Acks) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let attempted = self.attempted.lock().unwrap().clone();
        let acked = self.acked.lock().unwrap().clone();
        (attempted, acked)
    }
}

/// Every acknowledged order is stored with its result; re-sending every attempted request with
/// its id changes no acknowledged result; stock = initial - all committed, exactly.
pub async fn verify_exactly_once(
    client: &Client,
    initial_total: i64,
    attempted: &[Attempt],
    acked: &Acks,
) {
    // Reads must reflect everything acknowledged to any writer.
    client.observe_epoch(acked.values().map(|r| r.epoch).max().unwrap_or(0));
    for (id, result) in acked {
        if committed(result) {
            let order = client
                .get_order(result.order_id)
                .await
                .expect("acknowledged order present");
            assert_eq!(&order.request_id, id);
            assert_eq!(order.lines, result.lines);
        }
    }
    let mut taken = 0;
    for (id, lines) in attempted {
        let again = client
            .place_order(lines, false, Some(id.clone()))
            .await
            .expect("re-sending an attempted request");
        if let Some(original) = acked.get(id) {
            assert_eq!(&again, original, "{id}: result changed");
        }
        if committed(&again) {
            taken += again.lines.iter().map(|l| l.allocated).sum::<i64>();
        }
    }
    assert_eq!(
        total_on_hand(client).await,
        initial_total - taken,
        "stock is not initial - committed"
    );
}

/// A channel to `endpoint` for the generated clients (the public and the internal services).
pub async fn channel(endpoint: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// `count` holds of one unit each with a TTL of `ttl_s`, over every DC and SKU of the seed, at
/// once.
pub async fn many_holds(client: &Client, count: u32, ttl_s: u32) {
    let holds = (0..count).map(|i| {
        let client = client.clone();
        async move {
            let mut reserve = ordo_client::Reserve::new(&[line(i % 4 + 1, i % 3 + 1, 1)]);
            reserve.ttl_s = ttl_s;
            client.reserve(reserve).await
        }
    });
    for held in futures::future::join_all(holds).await {
        held.expect("a hold");
    }
}

/// One HTTP request to the metrics port: (status line, body).
pub fn http(port: u16, request: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the sample `series` (name and labels exactly as rendered).
pub fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{body}"))
        .parse()
        .unwrap()
}

/// A TCP connection to `addr` (`host:port`) from the loopback address `source`.
pub async fn socket_from(source: &str, addr: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr.parse().unwrap()).await.unwrap()
}

/// Whether the node closed `socket` within `within` (a read ends or fails).
pub async fn closed_within(
    socket: &mut tokio::net::TcpStream,
    within: std::time::Duration,
) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // Bytes the node sent first (an HTTP/2 SETTINGS frame): read on.
            Ok(Ok(_)) => continue,
        }
    }
}
