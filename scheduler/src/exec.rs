//! Epoch execution: a pure function from (store state, epoch batch) to (writes, results).
//!
//! An epoch's transactions are split into segments at global transactions (DC and catalogue
//! changes), which run alone. Within a segment every region partition runs its own executor:
//! it requests locks in log order, runs a transaction once all its local locks are granted,
//! and lets transactions with disjoint keys run in any order. A transaction that spans
//! partitions (an order with lines in several regions) reads its local keys in each
//! participant, sends those reads to the other participants and waits for theirs; then every
//! participant evaluates the same pure decision and writes its own keys. No two-phase commit,
//! no deadlock (locks are taken in log order everywhere), no retries on contention.
//!
//! Determinism: a partition's writes are emitted in log order of the transactions that made
//! them, whatever order they happened to run in, so the state hash does not depend on thread
//! timing. No wall clock (the epoch's `time_ms` is an input), no randomness, no hash-map order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;

use ordo_storage::{Part, Store, StoreError, Write};

use crate::lock::{LockKey, LockManager};
use crate::model::*;

/// Execution settings. They are part of the replicated configuration: every replica must run
/// with the same values, or the replicas diverge.
#[derive(Clone, Debug)]
pub struct ExecConfig {
    /// How long a request id is remembered for dedupe, in sequencer milliseconds.
    pub dedupe_window_ms: u64,
    /// At most this many expired dedupe entries are dropped per partition per epoch, so a
    /// burst of expiries never makes one epoch large.
    pub dedupe_prune_max: usize,
    /// Test hook: when set, partition executors sleep for pseudo-random microseconds (seeded by
    /// this value) between steps. It changes thread timing only, never results or writes.
    pub timing_jitter_seed: Option<u64>,
}

impl Default for ExecConfig {
    fn default() -> Self {
        Self {
            dedupe_window_ms: 24 * 60 * 60 * 1000,
            dedupe_prune_max: 1024,
            timing_jitter_seed: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt record {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("invariant broken: {0}")]
    Invariant(String),
    #[error("partition executor {0} failed")]
    PeerFailed(Part),
}

/// What executing one epoch produced.
#[derive(Debug, Default)]
pub struct EpochOutput {
    /// Writes per partition, in log order of the transactions that made them.
    pub writes: BTreeMap<Part, Vec<Write>>,
    /// One result per transaction, in batch order.
    pub results: Vec<TxnResult>,
}

/// Executes one epoch against `store` (which holds the state after the previous epoch).
pub fn execute_epoch(
    store: &Store,
    cfg: &ExecConfig,
    epoch: u64,
    time_ms: u64,
    txns: &[Txn],
) -> Result<EpochOutput, ExecError> {
    if txns.len() > BATCH_TXNS_LIMIT {
        return Err(ExecError::Invariant(format!(
            "epoch {epoch} has {} transactions, more than the limit {BATCH_TXNS_LIMIT}",
            txns.len()
        )));
    }
    let partitions = store.partitions();
    let mut overlays: BTreeMap<Part, Overlay> = BTreeMap::new();
    overlays.insert(Part::Global, Overlay::default());
    for n in 0..partitions {
        overlays.insert(Part::Region(n), Overlay::default());
    }
    // Expire old dedupe entries first: deterministic, bounded, and before any transaction.
    let cutoff = time_ms.saturating_sub(cfg.dedupe_window_ms);
    for (part, overlay) in overlays.iter_mut() {
        prune_dedupe(store, *part, overlay, cutoff, cfg.dedupe_prune_max)?;
    }

    let mut results: Vec<Option<TxnResult>> = vec![None; txns.len()];
    let mut start = 0;
    while start < txns.len() {
        if txns[start].op.is_global() {
            let overlay = overlays.get_mut(&Part::Global).expect("global overlay");
            let result = run_global(store, overlay, epoch, time_ms, start, &txns[start])?;
            results[start] = Some(result);
            start += 1;
            continue;
        }
        let end = (start..txns.len())
            .find(|&i| txns[i].op.is_global())
            .unwrap_or(txns.len());
        let global = overlays.remove(&Part::Global).expect("global overlay");
        let segment = run_segment(
            store,
            cfg,
            &global,
            &mut overlays,
            epoch,
            time_ms,
            txns,
            start..end,
        );
        overlays.insert(Part::Global, global);
        for (seq, result) in segment? {
            results[seq] = Some(result);
        }
        start = end;
    }

    let mut output = EpochOutput {
        writes: BTreeMap::new(),
        results: Vec::with_capacity(txns.len()),
    };
    for (seq, result) in results.into_iter().enumerate() {
        let result = result.ok_or_else(|| {
            ExecError::Invariant(format!(
                "transaction {seq} of epoch {epoch} produced no result"
            ))
        })?;
        output.results.push(result);
    }
    for (part, overlay) in overlays {
        let writes = overlay.into_writes();
        if !writes.is_empty() {
            output.writes.insert(part, writes);
        }
    }
    Ok(output)
}

/// One partition's pending writes for the epoch: readable by later transactions, emitted in
/// log order at the end.
#[derive(Default)]
struct Overlay {
    current: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Writes made before any transaction (dedupe expiry).
    prologue: Vec<Write>,
    /// Writes per transaction sequence number.
    by_txn: BTreeMap<usize, Vec<Write>>,
}

impl Overlay {
    fn get(&self, store: &Store, part: Part, key: &[u8]) -> Result<Option<Vec<u8>>, ExecError> {
        match self.current.get(key) {
            Some(value) => Ok(value.clone()),
            None => Ok(store.get(part, key)?.map(|v| v.to_vec())),
        }
    }

    fn put(&mut self, seq: Option<usize>, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.current.insert(key.clone(), value.clone());
        match seq {
            Some(seq) => self.by_txn.entry(seq).or_default().push((key, value)),
            None => self.prologue.push((key, value)),
        }
    }

    fn into_writes(self) -> Vec<Write> {
        let mut writes = self.prologue;
        for (_, w) in self.by_txn {
            writes.extend(w);
        }
        writes
    }
}

fn corrupt(what: String, e: bincode::Error) -> ExecError {
    ExecError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

fn read_record<T: for<'de> serde::Deserialize<'de>>(
    store: &Store,
    overlay: &Overlay,
    part: Part,
    key: &[u8],
    what: impl Fn() -> String,
) -> Result<Option<T>, ExecError> {
    match overlay.get(store, part, key)? {
        Some(bytes) => decode(&bytes).map(Some).map_err(|e| corrupt(what(), e)),
        None => Ok(None),
    }
}

fn prune_dedupe(
    store: &Store,
    part: Part,
    overlay: &mut Overlay,
    cutoff_ms: u64,
    limit: usize,
) -> Result<(), ExecError> {
    if cutoff_ms == 0 {
        return Ok(());
    }
    let start = [keys::DEDUPE_BY_TIME];
    let end = keys::dedupe_by_time(cutoff_ms, "");
    for (key, _) in store.range(part, &start, &end, limit)? {
        let request_id = keys::request_id_of_time_key(&key).unwrap_or_default();
        let mut dedupe_key = vec![keys::DEDUPE];
        dedupe_key.extend_from_slice(request_id);
        overlay.put(None, dedupe_key, None);
        overlay.put(None, key.to_vec(), None);
    }
    Ok(())
}

fn remember(overlay: &mut Overlay, seq: usize, time_ms: u64, result: &TxnResult) {
    let record = DedupeRecord {
        time_ms,
        result: result.clone(),
    };
    overlay.put(
        Some(seq),
        keys::dedupe(&result.request_id),
        Some(encode(&record)),
    );
    overlay.put(
        Some(seq),
        keys::dedupe_by_time(time_ms, &result.request_id),
        Some(Vec::new()),
    );
}

fn read_dedupe(
    store: &Store,
    overlay: &Overlay,
    part: Part,
    request_id: &str,
) -> Result<Option<TxnResult>, ExecError> {
    let record: Option<DedupeRecord> =
        read_record(store, overlay, part, &keys::dedupe(request_id), || {
            format!("dedupe {request_id:?} in {part}")
        })?;
    Ok(record.map(|r| r.result))
}

/// A DC or catalogue change: runs alone against the global partition.
fn run_global(
    store: &Store,
    overlay: &mut Overlay,
    epoch: u64,
    time_ms: u64,
    seq: usize,
    txn: &Txn,
) -> Result<TxnResult, ExecError> {
    if let Some(original) = read_dedupe(store, overlay, Part::Global, &txn.request_id)? {
        return Ok(original);
    }
    match &txn.op {
        Op::UpsertDc(dc) => overlay.put(Some(seq), keys::dc(dc.dc), Some(encode(dc))),
        Op::UpsertItem(item) => overlay.put(Some(seq), keys::item(item.sku), Some(encode(item))),
        other => {
            return Err(ExecError::Invariant(format!(
                "non-global transaction {other:?} routed to the global partition"
            )))
        }
    }
    let result = TxnResult {
        request_id: txn.request_id.clone(),
        epoch,
        outcome: Outcome::Upserted,
    };
    remember(overlay, seq, time_ms, &result);
    Ok(result)
}

/// Where a transaction runs: its home partition (dedupe, order record) and every participant.
#[derive(Clone, Debug)]
struct Route {
    home: Part,
    participants: Vec<Part>,
    /// The partition of each order line (or the restock's DC).
    line_parts: Vec<Part>,
    /// A rejection known from the global tables alone (unknown DC or SKU, inactive DC).
    pre_rejection: Option<Rejection>,
}

fn dc_part(dc: &DcRecord, partitions: u32) -> Part {
    Part::Region(dc.region % partitions)
}

fn route(store: &Store, global: &Overlay, txn: &Txn, partitions: u32) -> Result<Route, ExecError> {
    let dc_lookup = |dc: u32| -> Result<Option<DcRecord>, ExecError> {
        read_record(store, global, Part::Global, &keys::dc(dc), || {
            format!("dc {dc}")
        })
    };
    let item_known = |sku: u32| -> Result<bool, ExecError> {
        Ok(global.get(store, Part::Global, &keys::item(sku))?.is_some())
    };
    let pairs: Vec<(u32, u32, i64)> = match &txn.op {
        Op::PlaceOrder { lines, .. } => lines.iter().map(|l| (l.dc, l.sku, l.qty)).collect(),
        Op::Restock { dc, sku, delta } => vec![(*dc, *sku, *delta)],
        Op::UpsertDc(_) | Op::UpsertItem(_) => {
            return Err(ExecError::Invariant(
                "global transaction routed to a region partition".into(),
            ))
        }
    };
    let mut line_parts = Vec::with_capacity(pairs.len());
    let mut pre_rejection = None;
    for &(dc, sku, qty) in &pairs {
        let reject = |code| Rejection {
            code,
            dc,
            sku,
            available: 0,
            requested: qty,
        };
        match dc_lookup(dc)? {
            None => {
                pre_rejection.get_or_insert(reject(RejectCode::UnknownDc));
                line_parts.push(Part::Region(0));
            }
            Some(record) => {
                if !record.active && matches!(txn.op, Op::PlaceOrder { .. }) {
                    pre_rejection.get_or_insert(reject(RejectCode::DcInactive));
                }
                if !item_known(sku)? {
                    pre_rejection.get_or_insert(reject(RejectCode::UnknownSku));
                }
                line_parts.push(dc_part(&record, partitions));
            }
        }
    }
    let home = line_parts.first().copied().unwrap_or(Part::Region(0));
    let participants = if pre_rejection.is_some() {
        vec![home]
    } else {
        line_parts
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    Ok(Route {
        home,
        participants,
        line_parts,
        pre_rejection,
    })
}

/// One participant's reads for a transaction.
#[derive(Clone, Debug, Default)]
struct LocalReads {
    stock: Vec<(u32, u32, StockRecord)>,
    /// Only the home partition reads the dedupe entry: `Some(found)`.
    dedupe: Option<Option<TxnResult>>,
}

/// The decision every participant computes identically from all participants' reads.
struct Decision {
    result: TxnResult,
    /// New stock values, for every participant to write those in its partition.
    stock: Vec<(u32, u32, StockRecord)>,
    order: Option<OrderRecord>,
    /// Whether the home partition records the result for dedupe (false for a dedupe hit).
    remember: bool,
}

fn decide(
    txn: &Txn,
    route: &Route,
    seq: usize,
    epoch: u64,
    time_ms: u64,
    reads: &[LocalReads],
) -> Result<Decision, ExecError> {
    if let Some(Some(original)) = reads.iter().find_map(|r| r.dedupe.clone()) {
        return Ok(Decision {
            result: original,
            stock: Vec::new(),
            order: None,
            remember: false,
        });
    }
    let mut stock: BTreeMap<(u32, u32), StockRecord> = BTreeMap::new();
    for r in reads {
        for &(dc, sku, record) in &r.stock {
            stock.insert((dc, sku), record);
        }
    }
    let result = |outcome| TxnResult {
        request_id: txn.request_id.clone(),
        epoch,
        outcome,
    };
    let rejected = |outcome| Decision {
        result: result(outcome),
        stock: Vec::new(),
        order: None,
        remember: true,
    };
    match &txn.op {
        Op::PlaceOrder { lines, mode, user } => {
            if let Some(rejection) = route.pre_rejection {
                return Ok(rejected(Outcome::Order {
                    order_id: None,
                    lines: Vec::new(),
                    rejection: Some(rejection),
                }));
            }
            let mut allocs = Vec::with_capacity(lines.len());
            let mut first_short: Option<Rejection> = None;
            for line in lines {
                let record = stock.entry((line.dc, line.sku)).or_default();
                let available = record.available();
                let allocated = match mode {
                    Mode::AllOrNothing if available < line.qty => 0,
                    Mode::AllOrNothing => line.qty,
                    Mode::Partial => line.qty.min(available),
                };
                if allocated < line.qty && first_short.is_none() {
                    first_short = Some(Rejection {
                        code: RejectCode::InsufficientStock,
                        dc: line.dc,
                        sku: line.sku,
                        available,
                        requested: line.qty,
                    });
                }
                record.on_hand -= allocated;
                allocs.push(LineAlloc {
                    dc: line.dc,
                    sku: line.sku,
                    requested: line.qty,
                    allocated,
                    available,
                });
            }
            let total: i64 = allocs.iter().map(|a| a.allocated).sum();
            let reject = match mode {
                Mode::AllOrNothing => first_short,
                Mode::Partial if total == 0 => first_short,
                Mode::Partial => None,
            };
            if let Some(rejection) = reject {
                for a in &mut allocs {
                    a.allocated = 0;
                }
                return Ok(rejected(Outcome::Order {
                    order_id: None,
                    lines: allocs,
                    rejection: Some(rejection),
                }));
            }
            for ((dc, sku), record) in &stock {
                if record.on_hand < 0 || record.on_hand < record.reserved {
                    return Err(ExecError::Invariant(format!(
                        "order {} would leave dc {dc} sku {sku} at on_hand {} reserved {}",
                        txn.request_id, record.on_hand, record.reserved
                    )));
                }
            }
            let order_id = (epoch << ORDER_SEQ_BITS) | seq as u64;
            let order = OrderRecord {
                order_id,
                request_id: txn.request_id.clone(),
                user: user.clone(),
                epoch,
                time_ms,
                lines: allocs.clone(),
            };
            Ok(Decision {
                result: result(Outcome::Order {
                    order_id: Some(order_id),
                    lines: allocs,
                    rejection: None,
                }),
                stock: stock.into_iter().map(|((d, s), r)| (d, s, r)).collect(),
                order: Some(order),
                remember: true,
            })
        }
        Op::Restock { dc, sku, delta } => {
            let current = stock.get(&(*dc, *sku)).copied().unwrap_or_default();
            if let Some(rejection) = route.pre_rejection {
                return Ok(rejected(Outcome::Restock {
                    stock: current,
                    rejection: Some(rejection),
                }));
            }
            let on_hand = current.on_hand.checked_add(*delta);
            match on_hand {
                Some(on_hand) if on_hand >= current.reserved && on_hand >= 0 => {
                    let next = StockRecord {
                        on_hand,
                        reserved: current.reserved,
                    };
                    Ok(Decision {
                        result: result(Outcome::Restock {
                            stock: next,
                            rejection: None,
                        }),
                        stock: vec![(*dc, *sku, next)],
                        order: None,
                        remember: true,
                    })
                }
                _ => Ok(rejected(Outcome::Restock {
                    stock: current,
                    rejection: Some(Rejection {
                        code: RejectCode::NegativeStock,
                        dc: *dc,
                        sku: *sku,
                        available: current.available(),
                        requested: delta.saturating_neg(),
                    }),
                })),
            }
        }
        Op::UpsertDc(_) | Op::UpsertItem(_) => Err(ExecError::Invariant(
            "global transaction in a partition executor".into(),
        )),
    }
}

/// Shared, read-only context of one segment.
struct Segment<'a> {
    store: &'a Store,
    cfg: &'a ExecConfig,
    txns: &'a [Txn],
    routes: &'a BTreeMap<usize, Route>,
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
        reads: LocalReads,
    },
    /// A peer executor failed; stop.
    Abort(Part),
}

#[allow(clippy::too_many_arguments)]
fn run_segment(
    store: &Store,
    cfg: &ExecConfig,
    global: &Overlay,
    overlays: &mut BTreeMap<Part, Overlay>,
    epoch: u64,
    time_ms: u64,
    txns: &[Txn],
    range: std::ops::Range<usize>,
) -> Result<Vec<(usize, TxnResult)>, ExecError> {
    let partitions = store.partitions();
    let mut routes = BTreeMap::new();
    let mut tasks: BTreeMap<Part, Vec<Task>> = BTreeMap::new();
    for seq in range {
        let txn = &txns[seq];
        let route = route(store, global, txn, partitions)?;
        for &part in &route.participants {
            let mut keys = Vec::new();
            if route.pre_rejection.is_none() {
                for (line, line_part) in lines_of(txn).iter().zip(&route.line_parts) {
                    if *line_part == part {
                        keys.push(LockKey::Stock {
                            dc: line.0,
                            sku: line.1,
                        });
                    }
                }
            }
            if part == route.home {
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

fn lines_of(txn: &Txn) -> Vec<(u32, u32)> {
    match &txn.op {
        Op::PlaceOrder { lines, .. } => lines.iter().map(|l| (l.dc, l.sku)).collect(),
        Op::Restock { dc, sku, .. } => vec![(*dc, *sku)],
        Op::UpsertDc(_) | Op::UpsertItem(_) => Vec::new(),
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
                        w.reads.insert(from, reads);
                        if w.reads.len() == seg.routes[&seq].participants.len() {
                            complete.push(seq);
                        }
                    }
                    None => {
                        early.entry(seq).or_default().insert(from, reads);
                    }
                },
            }
        }
        if let Some(seq) = ready.pop_first() {
            let route = &seg.routes[&seq];
            let reads = read_local(seg, part, overlay, seq, route)?;
            let mut all = early.remove(&seq).unwrap_or_default();
            for &peer in &route.participants {
                if peer != part {
                    senders[&peer]
                        .send(Msg::Reads {
                            seq,
                            from: part,
                            reads: reads.clone(),
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
            let decision = decide(txn, route, seq, seg.epoch, seg.time_ms, &reads)?;
            for &(dc, sku, record) in &decision.stock {
                let line_part = lines_of(txn)
                    .iter()
                    .zip(&route.line_parts)
                    .find(|((d, s), _)| *d == dc && *s == sku)
                    .map(|(_, p)| *p);
                if line_part == Some(part) {
                    overlay.put(Some(seq), keys::stock(dc, sku), Some(encode(&record)));
                }
            }
            if part == route.home {
                if let Some(order) = &decision.order {
                    overlay.put(Some(seq), keys::order(order.order_id), Some(encode(order)));
                }
                if decision.remember {
                    remember(overlay, seq, seg.time_ms, &decision.result);
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
) -> Result<LocalReads, ExecError> {
    let txn = &seg.txns[seq];
    let mut reads = LocalReads::default();
    for ((dc, sku), line_part) in lines_of(txn).into_iter().zip(&route.line_parts) {
        if *line_part == part && !reads.stock.iter().any(|&(d, s, _)| d == dc && s == sku) {
            let record: Option<StockRecord> =
                read_record(seg.store, overlay, part, &keys::stock(dc, sku), || {
                    format!("stock dc {dc} sku {sku}")
                })?;
            reads.stock.push((dc, sku, record.unwrap_or_default()));
        }
    }
    if part == route.home {
        reads.dedupe = Some(read_dedupe(seg.store, overlay, part, &txn.request_id)?);
    }
    Ok(reads)
}
