//! Starting and stopping the real servers: Ordo (1 or 3 nodes), PostgreSQL, Redis and a
//! 3-member etcd cluster, each in a temporary directory on loopback, from the machine's own
//! binaries (Debian's packages for the baselines). Also: CPU seconds the servers used, from
//! /proc.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::targets::{Endpoints, Target};

/// A started target. Stopped (and its directory removed) on drop.
pub struct Server {
    pub endpoints: Endpoints,
    children: Vec<Child>,
    /// Processes whose whole tree counts as the server's CPU.
    roots: Vec<u32>,
    /// PostgreSQL runs as a daemon, stopped with pg_ctl.
    pg_stop: Option<Command>,
    /// Ordo: how each node was started (program, arguments), to start it again.
    ordo_nodes: Vec<(PathBuf, Vec<std::ffi::OsString>)>,
    /// Ordo with `--snapshot-every`: each node's metrics address (`host:port`), which
    /// [`crate::snapshots`] polls for the seconds a snapshot was being built.
    pub snapshot_metrics: Vec<String>,
    _dir: tempfile::TempDir,
}

/// How long a server may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

fn is_root() -> bool {
    // The owner of /proc/self is the effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn find_binary(name: &str, extra_dirs: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain(extra_dirs.iter().cloned()) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{name} not found on PATH or in {extra_dirs:?}; install it (see BENCHMARKS.md)")
}

fn postgres_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.reverse();
    dirs
}

/// How long a restarted Ordo node may take to start listening (it reloads its resident rows).
const RESTART_TIMEOUT: Duration = Duration::from_secs(600);

/// Waits for a line containing `needle` on the child's stdout.
fn wait_for_line(child: &mut Child, needle: &str, what: &str) -> anyhow::Result<()> {
    wait_for_line_within(child, needle, what, START_TIMEOUT)
}

fn wait_for_line_within(
    child: &mut Child,
    needle: &str,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let needle = needle.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(&needle) {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(timeout)
        .map_err(|_| anyhow::anyhow!("{what} did not start within {timeout:?}"))
}

async fn wait_until<F, Fut>(what: &str, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + START_TIMEOUT;
    while !probe().await {
        if Instant::now() > deadline {
            bail!("{what} did not answer within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// How an Ordo target is started beyond its defaults: TLS on every port (certificates from
/// `ordo certs generate`) and tokens (`ordo token create`), so that their cost can be
/// measured, and a metrics port per node.
#[derive(Clone, Copy, Debug, Default)]
pub struct OrdoOptions {
    pub tls: bool,
    pub auth: bool,
    /// Node i serves Prometheus metrics on 127.0.0.1 at this port + i - 1.
    pub metrics_port: Option<u16>,
    /// Every node snapshots every this many Raft entries (`--snapshot-every`), and serves
    /// its metrics (on free ports unless `metrics_port` says where) so the run can tell
    /// which seconds had a snapshot being built.
    pub snapshot_every: Option<u64>,
}

impl Server {
    /// Starts `target`. `pg_settings` are extra `-c name=value` settings for PostgreSQL (the
    /// feed workloads' logical decoding needs `wal_level=logical` and replication slots);
    /// the other targets ignore them.
    pub async fn start(
        target: Target,
        ordo_bin: &Path,
        partitions: u32,
        pg_settings: &[(String, String)],
        ordo: OrdoOptions,
    ) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new().prefix("ordo-bench-").tempdir()?;
        let nodes = match target {
            Target::Ordo1 | Target::Ordo1Batch | Target::Ordo1Stream => 1,
            _ => 3,
        };
        match target {
            Target::Ordo1
            | Target::Ordo1Batch
            | Target::Ordo1Stream
            | Target::Ordo3
            | Target::Ordo3Batch
            | Target::Ordo3Stream => {
                start_ordo(dir, target, ordo_bin, nodes, partitions, &[], ordo).await
            }
            Target::Postgres | Target::PostgresCond => {
                start_postgres(dir, target, pg_settings).await
            }
            Target::Redis => start_redis(dir, target, "always").await,
            Target::RedisEverysec => start_redis(dir, target, "everysec").await,
            #[cfg(feature = "etcd")]
            Target::Etcd => start_etcd(dir).await,
            #[cfg(not(feature = "etcd"))]
            Target::Etcd => bail!("{}", crate::targets::ETCD_MISSING),
        }
    }

    /// Starts one Ordo node with `flags` added to `ordo server`'s.
    pub async fn start_ordo_1(
        ordo_bin: &Path,
        partitions: u32,
        flags: &[String],
    ) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new().prefix("ordo-bench-").tempdir()?;
        start_ordo(
            dir,
            Target::Ordo1,
            ordo_bin,
            1,
            partitions,
            flags,
            OrdoOptions::default(),
        )
        .await
    }

    /// CPU seconds (user + system) used so far by the server processes and their children.
    pub fn cpu_seconds(&self) -> f64 {
        let ticks_per_s = 100.0;
        let stats = proc_stats();
        let total: u64 = self
            .process_tree(&stats)
            .iter()
            .filter_map(|pid| stats.iter().find(|s| s.pid == *pid))
            .map(|s| s.cpu_ticks)
            .sum();
        total as f64 / ticks_per_s
    }

    /// Resident memory of the server processes and their children now, in bytes (the sum
    /// of their VmRSS: shared pages count once per process).
    pub fn rss_bytes(&self) -> u64 {
        let stats = proc_stats();
        self.process_tree(&stats)
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|status| {
                let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib * 1024)
            })
            .sum()
    }

    /// Kills Ordo node `i` (0-based) with SIGKILL, as a crash would, and reaps it.
    pub fn kill_node(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(i < self.ordo_nodes.len(), "no Ordo node {i} to kill");
        self.children[i]
            .kill()
            .context("kill -9 of the Ordo node")?;
        self.children[i].wait()?;
        Ok(())
    }

    /// Starts Ordo node `i` again as it was started first (same data directory and ports)
    /// and returns once it listens.
    pub fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        let (program, args) = self.ordo_nodes.get(i).context("no Ordo node to restart")?;
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "warn,openraft=off")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} again", program.display()))?;
        wait_for_line_within(
            &mut child,
            "listening on",
            "the restarted ordo",
            RESTART_TIMEOUT,
        )?;
        self.roots[i] = child.id();
        self.children[i] = child;
        Ok(())
    }

    /// The server processes and their descendants.
    fn process_tree(&self, stats: &[ProcStat]) -> Vec<u32> {
        let mut frontier: Vec<u32> = self.roots.clone();
        let mut seen = std::collections::BTreeSet::new();
        while let Some(pid) = frontier.pop() {
            if !seen.insert(pid) {
                continue;
            }
            frontier.extend(stats.iter().filter(|s| s.ppid == pid).map(|s| s.pid));
        }
        seen.into_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(cmd) = &mut self.pg_stop {
            let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        for child in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct ProcStat {
    pid: u32,
    ppid: u32,
    /// utime + stime + cutime + cstime.
    cpu_ticks: u64,
}

fn proc_stats() -> Vec<ProcStat> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name is in parentheses and may hold spaces: split after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
        let num = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.push(ProcStat {
            pid,
            ppid: num(1) as u32,
            cpu_ticks: num(11) + num(12) + num(13) + num(14),
        });
    }
    out
}

async fn start_ordo(
    dir: tempfile::TempDir,
    target: Target,
    ordo_bin: &Path,
    nodes: usize,
    partitions: u32,
    flags: &[String],
    options: OrdoOptions,
) -> anyhow::Result<Server> {
    // Certificates and a token, made with the `ordo` under test.
    let run_ordo = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(ordo_bin).args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "ordo {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let certs = dir.path().join("certs");
    let certs_s = certs.display().to_string();
    let ca_pem = match options.tls {
        true => {
            run_ordo(&[
                "certs",
                "generate",
                "--out",
                &certs_s,
                "--nodes",
                &nodes.to_string(),
            ])?;
            Some(std::fs::read(certs.join("ca.pem"))?)
        }
        false => None,
    };
    let tokens_file = dir.path().join("tokens.toml").display().to_string();
    let token = match options.auth {
        true => Some(run_ordo(&[
            "token",
            "create",
            "--tokens-file",
            &tokens_file,
            "--name",
            "bench",
            "--scope",
            "read",
            "--scope",
            "write",
            "--scope",
            "catalog",
            "--scope",
            "admin",
        ])?),
        false => None,
    };
    let secure_flags = |i: usize| -> Vec<String> {
        let mut f = Vec::new();
        if options.tls {
            let (cert, key) = (
                format!("{certs_s}/node-{}.pem", i + 1),
                format!("{certs_s}/node-{}-key.pem", i + 1),
            );
            f.extend([
                "--tls-cert".into(),
                cert.clone(),
                "--tls-key".into(),
                key.clone(),
            ]);
            if nodes > 1 {
                f.extend([
                    "--peer-tls-cert".into(),
                    cert,
                    "--peer-tls-key".into(),
                    key,
                    "--peer-ca".into(),
                    format!("{certs_s}/ca.pem"),
                ]);
            }
        }
        if options.auth {
            f.extend(["--tokens-file".into(), tokens_file.clone()]);
        }
        f
    };
    // Client ports, then peer ports, then (for --snapshot-every without a metrics port)
    // metrics ports.
    let metrics_free = options.snapshot_every.is_some() && options.metrics_port.is_none();
    let ports = free_ports(if metrics_free { 3 } else { 2 } * nodes)?;
    let metrics_addrs: Vec<String> = (0..nodes)
        .filter_map(|i| match (options.metrics_port, metrics_free) {
            (Some(port), _) => Some(format!("127.0.0.1:{}", usize::from(port) + i)),
            (None, true) => Some(format!("127.0.0.1:{}", ports[2 * nodes + i])),
            (None, false) => None,
        })
        .collect();
    let addrs: Vec<String> = ports[..nodes]
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let peer_addrs: Vec<String> = ports[nodes..]
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let secret_file = dir.path().join("cluster-secret");
    std::fs::write(&secret_file, "ordo-bench-cluster-secret-0123456789")
        .context("writing the cluster secret")?;
    let mut children = Vec::new();
    let mut ordo_nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = (i + 1).to_string();
        let mut args: Vec<std::ffi::OsString> = ["server", "--node-id", &id, "--listen", addr]
            .into_iter()
            .map(Into::into)
            .collect();
        args.push("--data-dir".into());
        args.push(dir.path().join(format!("ordo-{id}")).into());
        args.push("--partitions".into());
        args.push(partitions.to_string().into());
        args.extend(flags.iter().map(Into::into));
        if let Some(addr) = metrics_addrs.get(i) {
            args.push("--metrics-listen".into());
            args.push(addr.into());
        }
        if let Some(every) = options.snapshot_every {
            args.push("--snapshot-every".into());
            args.push(every.to_string().into());
        }
        args.extend(secure_flags(i).into_iter().map(Into::into));
        if nodes > 1 {
            args.push("--peer-listen".into());
            args.push((&peer_addrs[i]).into());
            args.push("--cluster-secret-file".into());
            args.push((&secret_file).into());
            for (j, peer) in peer_addrs.iter().enumerate() {
                args.push("--peer".into());
                args.push(format!("{}={peer},{}", j + 1, addrs[j]).into());
            }
        }
        let mut cmd = Command::new(ordo_bin);
        cmd.args(&args)
            .env("RUST_LOG", "warn,openraft=off")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        ordo_nodes.push((ordo_bin.to_path_buf(), args));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", ordo_bin.display()))?;
        wait_for_line(&mut child, "listening on", "ordo")?;
        children.push(child);
    }
    let scheme = if options.tls { "https" } else { "http" };
    let urls: Vec<String> = addrs.iter().map(|a| format!("{scheme}://{a}")).collect();
    let endpoints = Endpoints {
        target,
        urls: urls.clone(),
        ca_pem,
        token,
    };
    if nodes > 1 {
        let client = endpoints.ordo_client(vec![urls[0].clone()]).await?;
        client
            .init_cluster(false)
            .await
            .context("initialising the Ordo cluster")?;
    }
    let roots = children.iter().map(|c| c.id()).collect();
    Ok(Server {
        endpoints,
        children,
        roots,
        pg_stop: None,
        ordo_nodes,
        snapshot_metrics: match options.snapshot_every {
            Some(_) => metrics_addrs,
            None => Vec::new(),
        },
        _dir: dir,
    })
}

async fn start_postgres(
    dir: tempfile::TempDir,
    target: Target,
    settings: &[(String, String)],
) -> anyhow::Result<Server> {
    let bins = postgres_bin_dirs();
    let initdb = find_binary("initdb", &bins)?;
    let pg_ctl = find_binary("pg_ctl", &bins)?;
    let data = dir.path().join("pgdata");
    let port = free_ports(1)?[0];
    let root = is_root();
    // PostgreSQL refuses to run as root: run it as the postgres user, which must own the
    // directory.
    let as_postgres = |program: &Path| -> Command {
        if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    };
    if root {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()?
            .success();
        anyhow::ensure!(ok, "chown of {} to postgres failed", dir.path().display());
    }
    let out = as_postgres(&initdb)
        .arg("-D")
        .arg(&data)
        .args(["-U", "bench", "-A", "trust", "--no-sync"])
        .output()
        .context("running initdb")?;
    anyhow::ensure!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server's defaults stay: fsync = on, synchronous_commit = on.
    let mut options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=600 -c shared_buffers=256MB",
        dir.path().display()
    );
    for (name, value) in settings {
        options.push_str(&format!(" -c {name}={value}"));
    }
    let out = as_postgres(&pg_ctl)
        .arg("-D")
        .arg(&data)
        .args(["-w", "-t", "60", "-o", &options, "-l"])
        .arg(dir.path().join("postgres.log"))
        .arg("start")
        .output()
        .context("running pg_ctl start")?;
    anyhow::ensure!(
        out.status.success(),
        "pg_ctl start failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: u32 = std::fs::read_to_string(data.join("postmaster.pid"))?
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .context("reading postmaster.pid")?;
    let mut stop = as_postgres(&pg_ctl);
    stop.arg("-D").arg(&data).args(["-m", "fast", "-w", "stop"]);
    let url = format!("host=127.0.0.1 port={port} user=bench dbname=postgres");
    Ok(Server {
        endpoints: Endpoints::plain(target, vec![url]),
        children: Vec::new(),
        roots: vec![pid],
        pg_stop: Some(stop),
        ordo_nodes: Vec::new(),
        snapshot_metrics: Vec::new(),
        _dir: dir,
    })
}

async fn start_redis(
    dir: tempfile::TempDir,
    target: Target,
    fsync: &str,
) -> anyhow::Result<Server> {
    let bin = find_binary("redis-server", &[])?;
    let port = free_ports(1)?[0];
    let child = Command::new(bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
        .arg(dir.path())
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            fsync,
            "--save",
            "",
            "--protected-mode",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    let url = format!("redis://127.0.0.1:{port}/");
    let probe_url = url.clone();
    wait_until("redis-server", || {
        let url = probe_url.clone();
        async move {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return false;
            };
            client.get_multiplexed_async_connection().await.is_ok()
        }
    })
    .await?;
    let roots = vec![child.id()];
    Ok(Server {
        endpoints: Endpoints::plain(target, vec![url]),
        children: vec![child],
        roots,
        pg_stop: None,
        ordo_nodes: Vec::new(),
        snapshot_metrics: Vec::new(),
        _dir: dir,
    })
}

#[cfg(feature = "etcd")]
async fn start_etcd(dir: tempfile::TempDir) -> anyhow::Result<Server> {
    let bin = find_binary("etcd", &[])?;
    let ports = free_ports(6)?;
    let peer = |i: usize| format!("http://127.0.0.1:{}", ports[3 + i]);
    let client_url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let cluster: Vec<String> = (0..3).map(|i| format!("e{i}={}", peer(i))).collect();
    let mut children = Vec::new();
    for i in 0..3 {
        let child = Command::new(&bin)
            .args(["--name", &format!("e{i}"), "--data-dir"])
            .arg(dir.path().join(format!("e{i}")))
            .args([
                "--listen-client-urls",
                &client_url(i),
                "--advertise-client-urls",
                &client_url(i),
            ])
            .args([
                "--listen-peer-urls",
                &peer(i),
                "--initial-advertise-peer-urls",
                &peer(i),
            ])
            .args(["--initial-cluster", &cluster.join(",")])
            .args([
                "--initial-cluster-token",
                "ordo-bench",
                "--initial-cluster-state",
                "new",
            ])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcd")?;
        children.push(child);
    }
    let urls: Vec<String> = (0..3).map(client_url).collect();
    let probe_urls = urls.clone();
    wait_until("etcd", || {
        let urls = probe_urls.clone();
        async move {
            let Ok(mut client) = etcd_client::Client::connect(urls, None).await else {
                return false;
            };
            client.put("/ordo-bench/ready", "1", None).await.is_ok()
        }
    })
    .await?;
    let roots = children.iter().map(|c| c.id()).collect();
    Ok(Server {
        endpoints: Endpoints::plain(Target::Etcd, urls),
        children,
        roots,
        pg_stop: None,
        ordo_nodes: Vec::new(),
        snapshot_metrics: Vec::new(),
        _dir: dir,
    })
}
