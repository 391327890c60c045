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

use ordo_storage::{Part, Store, StoreError, Write};

use crate::model::*;
use crate::partition::run_segment;

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
pub(crate) struct Overlay {
    current: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Writes made before any transaction (dedupe expiry).
    prologue: Vec<Write>,
    /// Writes per transaction sequence number.
    by_txn: BTreeMap<usize, Vec<Write>>,
}

impl Overlay {
    pub(crate) fn get(
        &self,
        store: &Store,
        part: Part,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, ExecError> {
        match self.current.get(key) {
            Some(value) => Ok(value.clone()),
            None => Ok(store.get(part, key)?.map(|v| v.to_vec())),
        }
    }

    pub(crate) fn put(&mut self, seq: Option<usize>, key: Vec<u8>, value: Option<Vec<u8>>) {
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

pub(crate) fn read_record<T: for<'de> serde::Deserialize<'de>>(
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

pub(crate) fn remember(overlay: &mut Overlay, seq: usize, time_ms: u64, result: &TxnResult) {
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

pub(crate) fn read_dedupe(
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
pub(crate) struct Route {
    pub(crate) home: Part,
    pub(crate) participants: Vec<Part>,
    /// The partition of each order line (or the restock's DC).
    pub(crate) line_parts: Vec<Part>,
    /// The partition of each user key of a key-value transaction, keys in first-use order.
    pub(crate) kv_parts: Vec<(String, Part)>,
    /// A rejection known from the global tables alone (unknown DC or SKU, inactive DC).
    pub(crate) pre_rejection: Option<Rejection>,
}

fn dc_part(dc: &DcRecord, partitions: u32) -> Part {
    Part::Region(dc.region % partitions)
}

pub(crate) fn route(
    store: &Store,
    global: &Overlay,
    txn: &Txn,
    partitions: u32,
) -> Result<Route, ExecError> {
    let dc_lookup = |dc: u32| -> Result<Option<DcRecord>, ExecError> {
        read_record(store, global, Part::Global, &keys::dc(dc), || {
            format!("dc {dc}")
        })
    };
    let item_known = |sku: u32| -> Result<bool, ExecError> {
        Ok(global.get(store, Part::Global, &keys::item(sku))?.is_some())
    };
    if let Op::Kv(ops) = &txn.op {
        let mut kv_parts: Vec<(String, Part)> = Vec::new();
        for op in ops {
            if !kv_parts.iter().any(|(k, _)| k == op.key()) {
                kv_parts.push((op.key().to_string(), kv_part(op.key(), partitions)));
            }
        }
        let home = kv_parts.first().map(|(_, p)| *p).unwrap_or(Part::Region(0));
        let mut participants: Vec<Part> = kv_parts
            .iter()
            .map(|(_, p)| *p)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if participants.is_empty() {
            participants.push(home);
        }
        return Ok(Route {
            home,
            participants,
            line_parts: Vec::new(),
            kv_parts,
            pre_rejection: None,
        });
    }
    let pairs: Vec<(u32, u32, i64)> = match &txn.op {
        Op::PlaceOrder { lines, .. } => lines.iter().map(|l| (l.dc, l.sku, l.qty)).collect(),
        Op::Restock { dc, sku, delta } => vec![(*dc, *sku, *delta)],
        Op::Transfer {
            sku,
            from_dc,
            to_dc,
            qty,
        } => vec![(*from_dc, *sku, *qty), (*to_dc, *sku, *qty)],
        Op::UpsertDc(_) | Op::UpsertItem(_) | Op::Kv(_) => {
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
        kv_parts: Vec::new(),
        pre_rejection,
    })
}
