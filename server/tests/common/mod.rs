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
    pub child: Child,
    pub endpoint: String,
    pub data_dir: PathBuf,
    pub extra_args: Vec<String>,
}

impl TestNode {
    /// Starts a node on `data_dir` and waits until it prints its address.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> TestNode {
        let mut child = Command::new(BIN)
            .args([
                "server",
                "--node-id",
                "1",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
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
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("ordo server did not report its address within 60 s");
        TestNode {
            child,
            endpoint: format!("http://{addr}"),
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
                region: (dc - 1) % 3,
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
