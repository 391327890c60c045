//! Ordo's metrics: one catalogue of counters, gauges and histograms that the crates record
//! into, rendered in Prometheus' text exposition format (0.0.4) by a node's `--metrics-listen`
//! endpoint (`server/src/metrics_http.rs`).
//!
//! Recording is a relaxed atomic add (a histogram's: three), never a lock, except the first
//! time a labelled family sees a label set. Every family has a bound on its series
//! ([`SERIES_MAX`]); label sets past it are recorded under `other`. Histograms count integer
//! observations (microseconds, bytes, transactions) in fixed buckets and are rendered in the
//! unit their name says (seconds for `_seconds`). Nothing here is read by execution: a node's
//! metrics are its own, outside the replicated state.
//!
//! The catalogue is this file's statics; [`render`] writes every one of them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The most series one labelled family holds; later label sets are recorded as `other`.
pub const SERIES_MAX: usize = 2_048;

/// The most buckets a histogram has, `+Inf` included.
const BUCKETS_MAX: usize = 24;

/// A count that only goes up.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    pub const fn new(name: &'static str, help: &'static str) -> Counter {
        Counter {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Relaxed)
    }
}

/// A value that goes up and down (often set when a scrape asks).
pub struct Gauge {
    name: &'static str,
    help: &'static str,
    value: AtomicI64,
}

impl Gauge {
    pub const fn new(name: &'static str, help: &'static str) -> Gauge {
        Gauge {
            name,
            help,
            value: AtomicI64::new(0),
        }
    }

    pub fn set(&self, value: i64) {
        self.value.store(value, Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.value.load(Relaxed)
    }

    /// Moves the value by `delta` (a gauge kept up to date where things change, not counted
    /// at each scrape).
    pub fn add(&self, delta: i64) {
        self.value.fetch_add(delta, Relaxed);
    }
}

/// Bucket bounds and how observations are shown: an observation `v` is `v / scale` in the
/// metric's unit (microseconds with scale 1,000,000 are seconds).
pub struct Buckets {
    /// Upper bounds, increasing, in observation units; `+Inf` follows them.
    pub bounds: &'static [u64],
    pub scale: u64,
}

/// Latencies from 50 µs to 30 s, observed in microseconds, shown in seconds.
pub const LATENCY: Buckets = Buckets {
    bounds: &[
        50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
        1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
    ],
    scale: 1_000_000,
};

/// Counts (transactions in a batch) from 1 to 100,000.
pub const COUNT: Buckets = Buckets {
    bounds: &[
        1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
    ],
    scale: 1,
};

/// One histogram's counts.
struct Cells {
    /// Per bucket, not cumulative; the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS_MAX],
    sum: AtomicU64,
    count: AtomicU64,
}

impl Cells {
    const fn new() -> Cells {
        Cells {
            buckets: [const { AtomicU64::new(0) }; BUCKETS_MAX],
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, buckets: &Buckets, value: u64) {
        let at = buckets.bounds.partition_point(|&b| b < value);
        self.buckets[at.min(BUCKETS_MAX - 1)].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }
}

/// A distribution of observations in fixed buckets.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    buckets: Buckets,
    cells: Cells,
}

impl Histogram {
    pub const fn new(name: &'static str, help: &'static str, buckets: Buckets) -> Histogram {
        assert!(buckets.bounds.len() < BUCKETS_MAX);
        Histogram {
            name,
            help,
            buckets,
            cells: Cells::new(),
        }
    }

    pub fn observe(&self, value: u64) {
        self.cells.observe(&self.buckets, value);
    }

    /// Observes a duration in microseconds (for `LATENCY` histograms).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    pub fn count(&self) -> u64 {
        self.cells.count.load(Relaxed)
    }
}

/// Series of one metric by label values, at most [`SERIES_MAX`]. Label values are static
/// strings: every label's values come from a fixed set (method names, status codes, reasons),
/// so a caller can never make a series of its own.
struct Series<T> {
    map: RwLock<BTreeMap<Vec<&'static str>, Arc<T>>>,
}

impl<T> Series<T> {
    const fn new() -> Series<T> {
        Series {
            map: RwLock::new(BTreeMap::new()),
        }
    }

    fn get(&self, values: &[&'static str], make: impl Fn() -> T) -> Arc<T> {
        if let Some(series) = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(values)
        {
            return series.clone();
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let key: Vec<&'static str> = if map.len() < SERIES_MAX {
            values.to_vec()
        } else {
            vec!["other"; values.len()]
        };
        map.entry(key).or_insert_with(|| Arc::new(make())).clone()
    }

    fn snapshot(&self) -> Vec<(Vec<&'static str>, Arc<T>)> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Counters by label values.
pub struct CounterFamily {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Series<AtomicU64>,
}

impl CounterFamily {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> CounterFamily {
        CounterFamily {
            name,
            help,
            labels,
            series: Series::new(),
        }
    }

    /// Adds `n` to the series of `values` (one per label, in order).
    pub fn add(&self, values: &[&'static str], n: u64) {
        self.series
            .get(values, || AtomicU64::new(0))
            .fetch_add(n, Relaxed);
    }

    pub fn get(&self, values: &[&'static str]) -> u64 {
        self.series.get(values, || AtomicU64::new(0)).load(Relaxed)
    }
}

/// Histograms by label values.
pub struct HistogramFamily {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: Buckets,
    series: Series<Cells>,
}

impl HistogramFamily {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: Buckets,
    ) -> HistogramFamily {
        assert!(buckets.bounds.len() < BUCKETS_MAX);
        HistogramFamily {
            name,
            help,
            labels,
            buckets,
            series: Series::new(),
        }
    }

    pub fn observe(&self, values: &[&'static str], value: u64) {
        self.series
            .get(values, Cells::new)
            .observe(&self.buckets, value);
    }

    pub fn observe_duration(&self, values: &[&'static str], d: Duration) {
        self.observe(values, d.as_micros().min(u128::from(u64::MAX)) as u64);
    }
}

// The catalogue. Names follow Prometheus' conventions: `_total` counters, base units.

/// Calls on the client port, by method and gRPC status code (the code from the trailers, or
/// from the headers of a trailers-only answer).
pub static RPC_REQUESTS: CounterFamily = CounterFamily::new(
    "ordo_rpc_requests_total",
    "Calls on the client port by method and gRPC status code.",
    &["method", "code"],
);
/// ... and how long each took, to its last byte (a stream: its whole life).
pub static RPC_DURATION: HistogramFamily = HistogramFamily::new(
    "ordo_rpc_duration_seconds",
    "Call latency on the client port, to the end of the answer, by method and code.",
    &["method", "code"],
    LATENCY,
);
/// Calls refused by the token check, by reason.
pub static AUTH_REFUSED: CounterFamily = CounterFamily::new(
    "ordo_auth_refused_total",
    "Calls refused by the token check: unauthenticated or permission_denied.",
    &["reason"],
);
/// Rebuilds of the edge's indexes of the global tables.
pub static INDEX_REBUILDS: CounterFamily = CounterFamily::new(
    "ordo_index_rebuilds_total",
    "Rebuilds of the edge's indexes: nearby (the DC table changed) and search (an item was added or renamed).",
    &["index"],
);
/// Connections a port closed at once: past its cap, or past the source's share.
pub static CONNECTIONS_REFUSED: CounterFamily = CounterFamily::new(
    "ordo_connections_refused_total",
    "Connections closed at once because the port (client or peer) was at its cap, or the source address at its share.",
    &["port"],
);
/// Connections open on the client port.
pub static CLIENT_CONNECTIONS: Gauge = Gauge::new(
    "ordo_client_connections",
    "Connections open on the client port (at most --connections-max).",
);
/// Time between two batches this node cut (as leader).
pub static EPOCH_INTERVAL: Histogram = Histogram::new(
    "ordo_epoch_interval_seconds",
    "Time between two epoch batches cut by this node as leader.",
    LATENCY,
);
/// Transactions in each batch this node cut.
pub static EPOCH_TXNS: Histogram = Histogram::new(
    "ordo_epoch_txns",
    "Transactions in each epoch batch cut by this node as leader.",
    COUNT,
);
/// From proposing a batch to its result (committed by a quorum and applied here).
pub static RAFT_COMMIT: Histogram = Histogram::new(
    "ordo_raft_commit_seconds",
    "From proposing an epoch batch to Raft until it is committed and applied on this node.",
    LATENCY,
);
/// Batches a follower forwarded to the leader.
pub static FORWARDED_BATCHES: Counter = Counter::new(
    "ordo_forwarded_batches_total",
    "Batches of transactions this node forwarded to the leader as a follower.",
);
/// Transactions this node took that wait in its sequencer queue.
pub static QUEUE_TXNS: Gauge = Gauge::new(
    "ordo_queue_txns",
    "Transactions waiting in this node's sequencer queue.",
);
/// Log entries this node holds that it has not applied yet.
pub static APPLY_LAG: Gauge = Gauge::new(
    "ordo_apply_lag_entries",
    "Raft log entries on this node not yet applied (last log index - last applied index).",
);
pub static APPLIED_EPOCH: Gauge =
    Gauge::new("ordo_applied_epoch", "The last epoch this node applied.");
pub static IS_LEADER: Gauge = Gauge::new(
    "ordo_is_leader",
    "1 while this node is the Raft leader, else 0.",
);
/// Each fsync of the Raft log.
pub static FSYNC: Histogram = Histogram::new(
    "ordo_raft_log_fsync_seconds",
    "Duration of each fsync of the Raft log (one covers every append that waited for it).",
    LATENCY,
);
/// Transactions answered from the dedupe table during execution.
pub static DEDUPE_HITS: Counter = Counter::new(
    "ordo_dedupe_hits_total",
    "Transactions answered from the dedupe table (a retried request id) during execution.",
);
/// Request ids remembered for dedupe in the record lists' index in memory.
pub static DEDUPE_IDS: Gauge = Gauge::new(
    "ordo_dedupe_ids",
    "Request ids this node remembers for dedupe in its in-memory index of the epochs' dedupe lists (about 28 bytes each), as of its last commit or import.",
);
/// Transactions execution refused or rejected, by reason.
pub static REJECTS: CounterFamily = CounterFamily::new(
    "ordo_rejects_total",
    "Transactions refused or rejected in execution on this node, by reason.",
    &["reason"],
);
/// Lapsed holds whose units execution returned, one per held stock row.
pub static HOLDS_EXPIRED: Counter = Counter::new(
    "ordo_reservations_expired_total",
    "Lapsed holds swept during execution on this node, one per held stock row (units returned).",
);
/// Held stock rows of live reservations, kept by the state machine at each epoch.
pub static HOLDS_LIVE: Gauge = Gauge::new(
    "ordo_reservations_live",
    "Held stock rows of live reservations on this node at its last applied epoch: neither confirmed, cancelled nor lapsed (a lapsed hold is not counted, swept yet or not); kept up to date by each epoch, not counted at scrapes.",
);
/// Watch and WatchNotifications streams open now.
pub static WATCHERS: Gauge = Gauge::new(
    "ordo_watchers",
    "Watch and WatchNotifications streams this node serves now.",
);
/// Bytes the feed streams' buffers hold now, all together.
pub static STREAM_BUFFER_BYTES: Gauge = Gauge::new(
    "ordo_stream_buffer_bytes",
    "Bytes the Watch and WatchNotifications streams of this node buffer now, all together (at most --streams-buffer-bytes-max).",
);
/// Snapshots this node built, and how long each took.
pub static SNAPSHOT_BUILD: Histogram = Histogram::new(
    "ordo_snapshot_build_seconds",
    "Duration of each snapshot this node built.",
    LATENCY,
);
/// Snapshots this node installed from a leader, and how long each took.
pub static SNAPSHOT_INSTALL: Histogram = Histogram::new(
    "ordo_snapshot_install_seconds",
    "Duration of each snapshot this node installed from the leader.",
    LATENCY,
);
/// Snapshots being built now (0 or 1): what a benchmark marks its seconds by.
pub static SNAPSHOT_BUILDING: Gauge = Gauge::new(
    "ordo_snapshot_building",
    "1 while this node builds a snapshot (exports its state into a file), else 0.",
);
/// Exports whose capture of before-images overflowed, so that they ran again with commits
/// held.
pub static SNAPSHOT_EXPORT_RESTARTS: Counter = Counter::new(
    "ordo_snapshot_export_restarts_total",
    "Snapshot and backup exports that recorded more before-images than their bound while commits went on, and so ran again with commits held.",
);
/// The size of the last snapshot built or installed.
pub static SNAPSHOT_BYTES: Gauge = Gauge::new(
    "ordo_snapshot_bytes",
    "Size of the last snapshot this node built or installed.",
);

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(names: &[&str], values: &[&str], extra: Option<(&str, &str)>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some((n, v)) = extra {
        pairs.push(format!("{n}=\"{v}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

/// `value / scale` as the text format writes a float.
fn scaled(value: u64, scale: u64) -> String {
    if scale == 1 {
        value.to_string()
    } else {
        format!("{}", value as f64 / scale as f64)
    }
}

fn write_cells(
    out: &mut String,
    name: &str,
    buckets: &Buckets,
    names: &[&str],
    values: &[&str],
    cells: &Cells,
) {
    let mut cumulative = 0;
    for (i, bucket) in cells
        .buckets
        .iter()
        .enumerate()
        .take(buckets.bounds.len() + 1)
    {
        cumulative += bucket.load(Relaxed);
        let le = match buckets.bounds.get(i) {
            Some(&b) => scaled(b, buckets.scale),
            None => "+Inf".to_string(),
        };
        let _ = writeln!(
            out,
            "{name}_bucket{} {cumulative}",
            labels(names, values, Some(("le", &le)))
        );
    }
    let l = labels(names, values, None);
    let _ = writeln!(
        out,
        "{name}_sum{l} {}",
        scaled(cells.sum.load(Relaxed), buckets.scale)
    );
    let _ = writeln!(out, "{name}_count{l} {}", cells.count.load(Relaxed));
}

fn render_counter(out: &mut String, c: &Counter) {
    header(out, c.name, c.help, "counter");
    let _ = writeln!(out, "{} {}", c.name, c.get());
}

fn render_gauge(out: &mut String, g: &Gauge) {
    header(out, g.name, g.help, "gauge");
    let _ = writeln!(out, "{} {}", g.name, g.get());
}

fn render_histogram(out: &mut String, h: &Histogram) {
    header(out, h.name, h.help, "histogram");
    write_cells(out, h.name, &h.buckets, &[], &[], &h.cells);
}

fn render_counter_family(out: &mut String, f: &CounterFamily) {
    header(out, f.name, f.help, "counter");
    for (values, value) in f.series.snapshot() {
        let _ = writeln!(
            out,
            "{}{} {}",
            f.name,
            labels(f.labels, &values, None),
            value.load(Relaxed)
        );
    }
}

fn render_histogram_family(out: &mut String, f: &HistogramFamily) {
    header(out, f.name, f.help, "histogram");
    for (values, cells) in f.series.snapshot() {
        write_cells(out, f.name, &f.buckets, f.labels, &values, &cells);
    }
}

/// Every metric of the catalogue in the text exposition format.
pub fn render() -> String {
    let mut out = String::with_capacity(16 * 1024);
    render_counter_family(&mut out, &RPC_REQUESTS);
    render_histogram_family(&mut out, &RPC_DURATION);
    render_counter_family(&mut out, &AUTH_REFUSED);
    render_counter_family(&mut out, &CONNECTIONS_REFUSED);
    render_counter_family(&mut out, &INDEX_REBUILDS);
    render_gauge(&mut out, &CLIENT_CONNECTIONS);
    render_histogram(&mut out, &EPOCH_INTERVAL);
    render_histogram(&mut out, &EPOCH_TXNS);
    render_histogram(&mut out, &RAFT_COMMIT);
    render_counter(&mut out, &FORWARDED_BATCHES);
    render_gauge(&mut out, &QUEUE_TXNS);
    render_gauge(&mut out, &APPLY_LAG);
    render_gauge(&mut out, &APPLIED_EPOCH);
    render_gauge(&mut out, &IS_LEADER);
    render_histogram(&mut out, &FSYNC);
    render_counter(&mut out, &DEDUPE_HITS);
    render_gauge(&mut out, &DEDUPE_IDS);
    render_counter_family(&mut out, &REJECTS);
    render_counter(&mut out, &HOLDS_EXPIRED);
    render_gauge(&mut out, &HOLDS_LIVE);
    render_gauge(&mut out, &WATCHERS);
    render_gauge(&mut out, &STREAM_BUFFER_BYTES);
    render_histogram(&mut out, &SNAPSHOT_BUILD);
    render_histogram(&mut out, &SNAPSHOT_INSTALL);
    render_gauge(&mut out, &SNAPSHOT_BUILDING);
    render_counter(&mut out, &SNAPSHOT_EXPORT_RESTARTS);
    render_gauge(&mut out, &SNAPSHOT_BYTES);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets_in_its_unit() {
        static H: Histogram = Histogram::new("t_seconds", "test", LATENCY);
        H.observe(40);
        H.observe(50);
        H.observe(51);
        H.observe(60_000_000);
        let mut out = String::new();
        render_histogram(&mut out, &H);
        assert!(out.contains("# TYPE t_seconds histogram\n"), "{out}");
        assert!(
            out.contains("t_seconds_bucket{le=\"0.00005\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("t_seconds_bucket{le=\"0.0001\"} 3\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"30\"} 3\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("t_seconds_sum 60.000141\n"), "{out}");
        assert!(out.contains("t_seconds_count 4\n"), "{out}");
    }

    #[test]
    fn families_escape_labels_and_stop_growing_at_their_bound() {
        static F: CounterFamily = CounterFamily::new("t_total", "test", &["method", "code"]);
        F.add(&["Place\"Order", "OK"], 2);
        F.add(&["Place\"Order", "OK"], 1);
        for n in 0..SERIES_MAX + 10 {
            let method: &'static str = Box::leak(n.to_string().into_boxed_str());
            F.add(&[method, "OK"], 1);
        }
        let mut out = String::new();
        render_counter_family(&mut out, &F);
        assert!(
            out.contains("t_total{method=\"Place\\\"Order\",code=\"OK\"} 3\n"),
            "{out}"
        );
        assert!(out.lines().filter(|l| l.starts_with("t_total{")).count() <= SERIES_MAX + 1);
        assert!(
            out.contains("t_total{method=\"other\",code=\"other\"} "),
            "{out}"
        );
    }

    #[test]
    fn the_catalogue_renders_every_metric_once() {
        let out = render();
        for name in [
            "ordo_rpc_requests_total",
            "ordo_rpc_duration_seconds",
            "ordo_epoch_interval_seconds",
            "ordo_raft_commit_seconds",
            "ordo_raft_log_fsync_seconds",
            "ordo_apply_lag_entries",
            "ordo_snapshot_bytes",
            "ordo_snapshot_building",
            "ordo_snapshot_export_restarts_total",
            "ordo_dedupe_ids",
        ] {
            assert_eq!(
                out.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name} in {out}"
            );
        }
    }
}
