//! The partition executors of one segment: one per partition (a thread each when more than one
//! partition has work), each granting locks in log order, running ready transactions, and
//! exchanging local reads with the other participants of multi-partition transactions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;

use ordo_storage::{Part, Store};

use crate::decide::{decide, LocalReads};
use crate::exec::{read_dedupe, read_record, remember, ExecConfig, ExecError, Layered, Overlay};
use crate::feed::{self, Event, StockChange};
use crate::holds;
use crate::lock::{LockKey, LockManager};
use crate::model::*;
use crate::route::{route, Route, RouteCtx};
use crate::subs;

/// Shared, read-only context of one segment.
struct Segment<'a> {
    store: &'a Store,
    cfg: &'a ExecConfig,
    txns: &'a [Txn],
    routes: &'a BTreeMap<usize, Route>,
    /// Partitions with dead holds not swept yet: their rows are read net of them.
    backlog: &'a BTreeSet<Part>,
    epoch: u64,
    time_ms: u64,
}

/// A transaction's part in one partition.
struct Task {
    seq: usize,
    keys: Vec<LockKey>,
}

enum Msg {
    Reads {
        seq: usize,
        from: Part,
        reads: Box<LocalReads>,
    },
    /// A peer executor failed; stop.
    Abort(Part),
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn run_segment(
    store: &Store,
    cfg: &ExecConfig,
    global: &Overlay,
    overlays: &mut BTreeMap<Part, Overlay>,
    backlog: &BTreeSet<Part>,
    epoch: u64,
    time_ms: u64,
    txns: &[Txn],
    range: std::ops::Range<usize>,
) -> Result<Vec<(usize, TxnResult)>, ExecError> {
    let mut routes = BTreeMap::new();
    let mut tasks: BTreeMap<Part, Vec<Task>> = BTreeMap::new();
    let ctx = RouteCtx {
        store,
        global,
        regions: overlays,
        epoch,
        time_ms,
    };
    for seq in range {
        let txn = &txns[seq];
        let route = route(&ctx, seq, txn)?;
        for &part in &route.participants {
            let mut keys = Vec::new();
            if !route.decided_early() {
                for &(dc, sku, row_part) in &route.rows {
                    if row_part == part {
                        keys.push(LockKey::Stock { dc, sku });
                    }
                }
                if let Some(hold) = &route.hold {
                    keys.push(LockKey::Reservation(hold.id));
                    if let Some((cart_id, cart_part, _)) = &hold.cart {
                        if *cart_part == part {
                            keys.push(LockKey::Cart(cart_id.clone()));
                        }
                    }
                }
            }
            for (key, key_part) in &route.kv_parts {
                if *key_part == part {
                    keys.push(LockKey::Kv(key.clone()));
                }
            }
            if let Some(sub) = route.sub.as_ref().filter(|s| s.part == part) {
                if !route.decided_early() {
                    keys.push(LockKey::Subscription(
                        sub.sku,
                        sub.tag.byte(),
                        sub.user.clone(),
                    ));
                }
            }
            if part == route.home && route.dedupe {
                keys.push(LockKey::Dedupe(txn.request_id.clone()));
            }
            tasks.entry(part).or_default().push(Task { seq, keys });
        }
        routes.insert(seq, route);
    }
    let seg = Segment {
        store,
        cfg,
        txns,
        routes: &routes,
        backlog,
        epoch,
        time_ms,
    };

    let mut senders = BTreeMap::new();
    let mut receivers = BTreeMap::new();
    for &part in tasks.keys() {
        let (tx, rx) = mpsc::channel();
        senders.insert(part, tx);
        receivers.insert(part, rx);
    }
    if tasks.len() <= 1 && cfg.timing_jitter_seed.is_none() {
        // One partition: no exchange is possible, so run inline.
        let mut results = Vec::new();
        for (part, part_tasks) in tasks {
            let overlay = overlays.get_mut(&part).expect("overlay per partition");
            let inbox = receivers.remove(&part).expect("inbox");
            results.extend(run_partition(
                &seg, part, overlay, part_tasks, inbox, &senders,
            )?);
        }
        return Ok(results);
    }
    let senders = &senders;
    let seg = &seg;
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        let busy: BTreeSet<Part> = tasks.keys().copied().collect();
        for ((part, overlay), part_tasks) in overlays
            .iter_mut()
            .filter(|(p, _)| busy.contains(p))
            .zip(tasks.into_values())
        {
            let inbox = receivers.remove(part).expect("inbox");
            let part = *part;
            let handle = std::thread::Builder::new()
                .name(format!("ordo-exec-{part}"))
                .spawn_scoped(scope, move || {
                    let guard = AbortOnFailure {
                        part,
                        senders,
                        armed: true,
                    };
                    let result = run_partition(seg, part, overlay, part_tasks, inbox, senders);
                    guard.finish(result.is_ok());
                    result
                })
                .map_err(|e| ExecError::Invariant(format!("cannot start executor thread: {e}")));
            handles.push(handle);
        }
        let mut results = Vec::new();
        let mut first_error = None;
        for handle in handles {
            let outcome = match handle {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    Err(ExecError::Invariant("a partition executor panicked".into()))
                }),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(r) => results.extend(r),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(results),
        }
    })
}

/// Tells the other executors to stop when this one fails (or panics), so none waits forever
/// for reads that will never come.
struct AbortOnFailure<'a> {
    part: Part,
    senders: &'a BTreeMap<Part, mpsc::Sender<Msg>>,
    armed: bool,
}

impl AbortOnFailure<'_> {
    fn finish(mut self, ok: bool) {
        self.armed = !ok;
    }
}

impl Drop for AbortOnFailure<'_> {
    fn drop(&mut self) {
        if self.armed {
            for (&part, tx) in self.senders {
                if part != self.part {
                    let _ = tx.send(Msg::Abort(self.part));
                }
            }
        }
    }
}

/// A transaction waiting for other participants' reads.
struct Waiting {
    reads: BTreeMap<Part, LocalReads>,
}

/// xorshift64*: a tiny deterministic generator for the timing-jitter test hook.
struct Jitter(u64);

impl Jitter {
    fn pause(&mut self) {
        if self.0 == 0 {
            return;
        }
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let micros = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % 200;
        std::thread::sleep(std::time::Duration::from_micros(micros));
    }
}

fn run_partition(
    seg: &Segment<'_>,
    part: Part,
    overlay: &mut Overlay,
    tasks: Vec<Task>,
    inbox: mpsc::Receiver<Msg>,
    senders: &BTreeMap<Part, mpsc::Sender<Msg>>,
) -> Result<Vec<(usize, TxnResult)>, ExecError> {
    let mut jitter = Jitter(match (seg.cfg.timing_jitter_seed, part) {
        (Some(seed), Part::Region(n)) => seed.wrapping_add(n as u64 + 1) | 1,
        (Some(seed), Part::Global) => seed | 1,
        (None, _) => 0,
    });
    let mut locks = LockManager::default();
    let mut ready: BTreeSet<usize> = BTreeSet::new();
    let total = tasks.len();
    for task in tasks {
        if locks.request(task.seq, task.keys) {
            ready.insert(task.seq);
        }
    }
    let mut waiting: BTreeMap<usize, Waiting> = BTreeMap::new();
    // Reads that arrived before this partition granted the transaction's locks.
    let mut early: BTreeMap<usize, BTreeMap<Part, LocalReads>> = BTreeMap::new();
    let mut results = Vec::new();
    let mut done = 0;
    // Units of dead, unswept holds on the rows this partition read (backlog only): the
    // decisions see rows net of them, and they are added back when a row is written.
    let mut dead_rows: BTreeMap<(u32, u32), i64> = BTreeMap::new();

    while done < total {
        jitter.pause();
        // Take in whatever reads have arrived, without blocking.
        let mut incoming = Vec::new();
        while let Ok(msg) = inbox.try_recv() {
            incoming.push(msg);
        }
        if incoming.is_empty() && ready.is_empty() {
            // Nothing runnable here: every remaining transaction waits for a peer's reads.
            match inbox.recv() {
                Ok(msg) => incoming.push(msg),
                Err(_) => return Err(ExecError::Invariant("executor inbox closed".into())),
            }
        }
        let mut complete = Vec::new();
        for msg in incoming {
            match msg {
                Msg::Abort(peer) => return Err(ExecError::PeerFailed(peer)),
                Msg::Reads { seq, from, reads } => match waiting.get_mut(&seq) {
                    Some(w) => {
                        w.reads.insert(from, *reads);
                        if w.reads.len() == seg.routes[&seq].participants.len() {
                            complete.push(seq);
                        }
                    }
                    None => {
                        early.entry(seq).or_default().insert(from, *reads);
                    }
                },
            }
        }
        if let Some(seq) = ready.pop_first() {
            let route = &seg.routes[&seq];
            let reads = read_local(seg, part, overlay, seq, route, &mut dead_rows)?;
            let mut all = early.remove(&seq).unwrap_or_default();
            for &peer in &route.participants {
                if peer != part {
                    senders[&peer]
                        .send(Msg::Reads {
                            seq,
                            from: part,
                            reads: Box::new(reads.clone()),
                        })
                        .map_err(|_| ExecError::PeerFailed(peer))?;
                }
            }
            all.insert(part, reads);
            let is_complete = all.len() == route.participants.len();
            waiting.insert(seq, Waiting { reads: all });
            if is_complete {
                complete.push(seq);
            }
        }
        complete.sort_unstable();
        for seq in complete {
            let w = waiting
                .remove(&seq)
                .expect("complete transaction is waiting");
            let route = &seg.routes[&seq];
            let reads: Vec<LocalReads> = w.reads.into_values().collect();
            let txn = &seg.txns[seq];
            let decision = decide(seg.cfg, txn, route, seq, seg.epoch, seg.time_ms, &reads)?;
            // Each row's partition and the row as read, by (dc, sku), the first entry of each
            // as before; maps, so a transaction of 10,000 rows is not 10⁸ comparisons.
            let mut row_parts: BTreeMap<(u32, u32), Part> = BTreeMap::new();
            let mut rows_read: BTreeMap<(u32, u32), StockRecord> = BTreeMap::new();
            if !decision.stock.is_empty() {
                for &(d, s, p) in &route.rows {
                    row_parts.entry((d, s)).or_insert(p);
                }
                for &(d, s, r) in reads.iter().flat_map(|r| &r.stock) {
                    rows_read.entry((d, s)).or_insert(r);
                }
            }
            for &(dc, sku, record) in &decision.stock {
                if row_parts.get(&(dc, sku)) == Some(&part) {
                    let dead = dead_rows.get(&(dc, sku)).copied().unwrap_or(0);
                    let stored = StockRecord {
                        on_hand: record.on_hand,
                        reserved: record.reserved + dead,
                    };
                    // The row as stored before this transaction: what it read (net of dead
                    // holds) with those holds added back, as the write above does; no second
                    // read of the store on the hot path.
                    let read = rows_read.get(&(dc, sku)).copied().ok_or_else(|| {
                        ExecError::Invariant(format!(
                            "dc {dc} sku {sku} written by transaction {seq} without a read"
                        ))
                    })?;
                    let before = StockRecord {
                        on_hand: read.on_hand,
                        reserved: read.reserved + dead,
                    };
                    overlay.put(Some(seq), keys::stock(dc, sku), Some(encode(&stored)));
                    let cause =
                        feed::cause(&txn.op, &decision.result.outcome, decision.order.as_ref());
                    overlay.emit(
                        Some(seq),
                        Event::Stock(StockChange {
                            dc,
                            sku,
                            before,
                            after: stored,
                            cause,
                            request_id: txn.request_id.clone(),
                        }),
                    );
                }
            }
            for (write_part, key, value) in &decision.writes {
                if *write_part == part {
                    overlay.put(Some(seq), key.clone(), value.clone());
                }
            }
            for (key, value) in &decision.kv {
                if route.kv_parts.iter().any(|(k, p)| k == key && *p == part) {
                    overlay.put(Some(seq), keys::kv(key), Some(encode(value)));
                }
            }
            if part == route.home {
                if let Some(order) = &decision.order {
                    overlay.add_order(order.clone());
                    overlay.emit(Some(seq), Event::Order(order.clone()));
                }
                if decision.remember {
                    if let Some(change) = feed::reservation_change(&txn.op, &decision.writes) {
                        overlay.emit(Some(seq), Event::Reservation(change));
                    }
                }
                if decision.remember && route.dedupe {
                    remember(overlay, seg.time_ms, txn, &decision.result);
                }
                results.push((seq, decision.result));
            }
            ready.extend(locks.release(seq));
            done += 1;
        }
    }
    if !locks.is_empty() {
        return Err(ExecError::Invariant(format!(
            "partition {part} finished with locks still held"
        )));
    }
    Ok(results)
}

fn read_local(
    seg: &Segment<'_>,
    part: Part,
    overlay: &Overlay,
    seq: usize,
    route: &Route,
    dead_rows: &mut BTreeMap<(u32, u32), i64>,
) -> Result<LocalReads, ExecError> {
    let txn = &seg.txns[seq];
    let mut reads = LocalReads::default();
    if part == route.home && route.dedupe {
        reads.dedupe = Some(read_dedupe(seg.store, overlay, part, &txn.request_id)?);
    }
    if route.decided_early() {
        // Decided from the log and the global tables alone: it holds no lock on any row, so
        // reading one would see whatever other transactions happened to have written.
        return Ok(reads);
    }
    let view = Layered {
        store: seg.store,
        part,
        overlay,
    };
    // Rows a transaction names twice are read once (a set: a DC's restock names 10,000).
    let mut seen: BTreeSet<(u32, u32)> = BTreeSet::new();
    for &(dc, sku, row_part) in &route.rows {
        if row_part == part && seen.insert((dc, sku)) {
            let record: Option<StockRecord> =
                read_record(seg.store, overlay, part, &keys::stock(dc, sku), || {
                    format!("stock dc {dc} sku {sku}")
                })?;
            let mut record = record.unwrap_or_default();
            if seg.backlog.contains(&part) {
                // Dead holds are not added or removed by any transaction (only the prologue
                // sweeps them), so this stays right for the whole epoch.
                // Scanned once per row per partition and segment, not per transaction.
                let dead = match dead_rows.get(&(dc, sku)) {
                    Some(&dead) => dead,
                    None => {
                        let dead = holds::dead_on_row(&view, part, dc, sku, seg.time_ms)?;
                        dead_rows.insert((dc, sku), dead);
                        dead
                    }
                };
                record = holds::effective(record, dead);
            }
            reads.stock.push((dc, sku, record));
        }
    }
    if let Some(hold) = &route.hold {
        if part == hold.home {
            reads.reservation = Some(holds::reservation(&view, part, hold.id)?);
        }
        if let Some((cart_id, cart_part, _)) = &hold.cart {
            if *cart_part == part {
                reads.cart = Some(holds::cart(&view, part, cart_id)?);
            }
        }
    }
    if let Some(sub) = route.sub.as_ref().filter(|s| s.part == part) {
        let key = subs::key::subscription(sub.sku, sub.tag, &sub.user);
        reads.subscription = Some(read_record(seg.store, overlay, part, &key, || {
            format!("subscription of {:?} to sku {}", sub.user, sub.sku)
        })?);
    }
    for (key, key_part) in &route.kv_parts {
        if *key_part == part {
            let value: Option<KvValue> =
                read_record(seg.store, overlay, part, &keys::kv(key), || {
                    format!("key {key:?}")
                })?;
            reads.kv.push((key.clone(), value));
        }
    }
    Ok(reads)
}
