//! Which measured seconds had a snapshot being built (`--snapshot-every`): a task scrapes
//! every Ordo node's metrics each [`POLL`] and marks a second when a node's
//! `ordo_snapshot_building` gauge was 1 in it. The run then sets the order latency of those
//! seconds beside the quiet ones' (issue 29's goal: a snapshot does not show in p99).

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::runner::Timing;

/// How often each node's metrics are read.
pub(crate) const POLL: Duration = Duration::from_millis(100);
/// The longest a scrape may take before it counts as failed.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The most bytes of a scrape's answer read.
const SCRAPE_BYTES_MAX: u64 = 4 << 20;

/// What a run with `--snapshot-every` adds to its result.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotReport {
    /// Each node's `--snapshot-every` (Raft entries between snapshots).
    pub every_entries: u64,
    /// Snapshots the nodes finished building from the start of the warm-up to the end
    /// (`ordo_snapshot_build_seconds_count`, all nodes).
    pub builds: u64,
    /// Exports that overflowed their capture and ran again with commits held
    /// (`ordo_snapshot_export_restarts_total`, all nodes).
    pub export_restarts: u64,
    /// Measured seconds in which some node was building a snapshot.
    pub seconds_building: usize,
    pub seconds_quiet: usize,
    /// Latency of the operations started in the quiet seconds, and in the building ones.
    pub p99_us_quiet: u64,
    pub p99_us_building: u64,
    /// `p99_us_building / p99_us_quiet` (0 when either set of seconds is empty).
    pub p99_ratio: f64,
    pub p50_us_quiet: u64,
    pub p50_us_building: u64,
}

/// The running sampler.
pub(crate) struct Sampler {
    every_entries: u64,
    task: JoinHandle<anyhow::Result<Sampled>>,
}

struct Sampled {
    building: Vec<bool>,
    builds: u64,
    export_restarts: u64,
}

impl Sampler {
    /// Starts polling `addrs` (each `host:port`) until `measure_from + seconds`; `None`
    /// without addresses (not an Ordo target, or no `--snapshot-every`).
    pub(crate) fn start(
        addrs: &[String],
        every_entries: Option<u64>,
        token: Option<String>,
        measure_from: Instant,
        seconds: usize,
    ) -> Option<Sampler> {
        let every_entries = every_entries?;
        if addrs.is_empty() {
            return None;
        }
        let addrs = addrs.to_vec();
        let end = measure_from + Duration::from_secs(seconds as u64);
        let task = tokio::spawn(async move {
            let first = totals(&addrs, token.as_deref()).await?;
            let mut building = vec![false; seconds];
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let sample = totals(&addrs, token.as_deref()).await?;
                if sample.building > 0 && now >= measure_from {
                    let second = now.duration_since(measure_from).as_secs() as usize;
                    if let Some(b) = building.get_mut(second) {
                        *b = true;
                    }
                }
            }
            let last = totals(&addrs, token.as_deref()).await?;
            Ok(Sampled {
                building,
                builds: last.builds.saturating_sub(first.builds),
                export_restarts: last.export_restarts.saturating_sub(first.export_restarts),
            })
        });
        Some(Sampler {
            every_entries,
            task,
        })
    }

    /// Waits for the sampler's end and compares the two kinds of seconds in `timing`;
    /// also returns which measured seconds had a snapshot being built.
    pub(crate) async fn finish(
        self,
        timing: &Timing,
    ) -> anyhow::Result<(SnapshotReport, Vec<bool>)> {
        let sampled = self.task.await.context("the snapshot sampler failed")??;
        let (quiet, busy) = timing.split_seconds(&sampled.building);
        let ratio = match (quiet.len(), busy.len()) {
            (0, _) | (_, 0) => 0.0,
            _ => busy.value_at_quantile(0.99) as f64 / quiet.value_at_quantile(0.99).max(1) as f64,
        };
        let seconds_building = sampled.building.iter().filter(|b| **b).count();
        let report = SnapshotReport {
            every_entries: self.every_entries,
            builds: sampled.builds,
            export_restarts: sampled.export_restarts,
            seconds_building,
            seconds_quiet: sampled.building.len() - seconds_building,
            p99_us_quiet: quiet.value_at_quantile(0.99),
            p99_us_building: busy.value_at_quantile(0.99),
            p99_ratio: ratio,
            p50_us_quiet: quiet.value_at_quantile(0.50),
            p50_us_building: busy.value_at_quantile(0.50),
        };
        Ok((report, sampled.building))
    }
}

/// The snapshot metrics of every node, summed.
#[derive(Default)]
struct Totals {
    building: i64,
    builds: u64,
    export_restarts: u64,
}

async fn totals(addrs: &[String], token: Option<&str>) -> anyhow::Result<Totals> {
    let mut sum = Totals::default();
    for addr in addrs {
        let text = tokio::time::timeout(SCRAPE_TIMEOUT, scrape(addr, token))
            .await
            .with_context(|| format!("scraping {addr} took over {SCRAPE_TIMEOUT:?}"))??;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(name), Some(value)) = (words.next(), words.next()) else {
                continue;
            };
            let value: f64 = match value.parse() {
                Ok(v) => v,
                Err(_) => continue,
            };
            match name {
                "ordo_snapshot_building" => sum.building += value as i64,
                "ordo_snapshot_build_seconds_count" => sum.builds += value as u64,
                "ordo_snapshot_export_restarts_total" => sum.export_restarts += value as u64,
                _ => {}
            }
        }
    }
    Ok(sum)
}

/// One `GET /metrics` over HTTP/1.1, the body as text.
async fn scrape(addr: &str, token: Option<&str>) -> anyhow::Result<String> {
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the metrics endpoint {addr}"))?;
    let auth = match token {
        Some(t) => format!("authorization: Bearer {t}\r\n"),
        None => String::new(),
    };
    let request =
        format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\n{auth}connection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    conn.take(SCRAPE_BYTES_MAX).read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr} answered no HTTP response"))?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "{addr} answered {}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_string())
}
