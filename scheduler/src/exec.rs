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

use ordo_storage::{records, Part, Store, StoreError, Write};

use crate::feed::{Event, PriceChange};
use crate::holds::{self, HoldError, View};
use crate::model::*;
use crate::partition::run_segment;
use crate::prologue::{prune_dedupe, prune_reservations, sweep_holds, DedupeCutoff};
use crate::validate;

/// Execution settings. They are part of the replicated configuration: every replica must run
/// with the same values, or the replicas diverge.
#[derive(Clone, Debug)]
pub struct ExecConfig {
    /// How long a request id is remembered for dedupe, in sequencer milliseconds.
    pub dedupe_window_ms: u64,
    /// ... and in epochs: an entry is dropped only once *both* windows have passed. Sequencer
    /// time comes from the leader's clock and may leap forward (a clock stepped by days); the
    /// epoch count cannot, so a retry within this many epochs is exactly-once whatever any
    /// clock did. (At one epoch per 5 ms that is over 80 minutes of continuous load.)
    pub dedupe_window_epochs_min: u64,
    /// At least this many expired dedupe entries are dropped per partition per epoch (and at
    /// least twice the epoch's transactions, so pruning keeps up with the largest batch), so a
    /// burst of expiries never makes one epoch large.
    pub dedupe_prune_max: usize,
    /// At most this many holds are swept (their units returned) per partition per epoch, the
    /// earliest first; the rest in later epochs. Reads and decisions count a dead hold as
    /// released whether or not it was swept, so the bound changes when the writes happen,
    /// never what anyone sees. The same bound applies to dropping old reservation records.
    pub expiry_per_epoch_max: usize,
    /// How long a reservation's record is kept after its life cap (for `GetReservation`),
    /// in sequencer milliseconds.
    pub reservation_retention_ms: u64,
    /// How long an item's price history keeps an entry, in sequencer milliseconds after it
    /// was set. Old entries are dropped when the item's price is set again.
    pub price_history_ms: u64,
    /// A hold's TTL when a reserve or extend asks for none, in sequencer milliseconds.
    pub reservation_ttl_default_ms: u64,
    /// The longest a reservation lives with its extensions, in sequencer milliseconds.
    pub reservation_life_max_ms: u64,
    /// Test hook: when set, partition executors sleep for pseudo-random microseconds (seeded by
    /// this value) between steps. It changes thread timing only, never results or writes.
    pub timing_jitter_seed: Option<u64>,
}

impl ExecConfig {
    /// The settings a node records at its first start: its own values (`initial`).
    pub fn initial_settings(&self) -> ExecSettings {
        ExecSettings {
            reservation_ttl_default_ms: self.reservation_ttl_default_ms,
            reservation_life_max_ms: self.reservation_life_max_ms,
            expiry_per_epoch_max: self.expiry_per_epoch_max as u64,
            initial: true,
        }
    }

    /// This configuration under the settings recorded in the log: they, not the node's own
    /// values, decide (the node's are used only where nothing is recorded, as in a log from
    /// before the record existed).
    pub fn under(&self, recorded: Option<&ExecSettings>) -> ExecConfig {
        match recorded {
            None => self.clone(),
            Some(r) => ExecConfig {
                reservation_ttl_default_ms: r.reservation_ttl_default_ms,
                reservation_life_max_ms: r.reservation_life_max_ms,
                expiry_per_epoch_max: usize::try_from(r.expiry_per_epoch_max).unwrap_or(usize::MAX),
                ..self.clone()
            },
        }
    }
}

impl Default for ExecConfig {
    fn default() -> Self {
        Self {
            dedupe_window_ms: 24 * 60 * 60 * 1000,
            dedupe_window_epochs_min: 1_000_000,
            dedupe_prune_max: 1024,
            expiry_per_epoch_max: 10_000,
            reservation_retention_ms: 24 * 60 * 60 * 1000,
            price_history_ms: 90 * 24 * 60 * 60 * 1000,
            reservation_ttl_default_ms: 600 * 1000,
            reservation_life_max_ms: 24 * 60 * 60 * 1000,
            timing_jitter_seed: None,
        }
    }
}

/// The latest epoch time execution accepts from a proposer (the year 9999): a leader clock
/// gone wild cannot push epoch time towards overflow.
pub const EPOCH_TIME_MS_MAX: u64 = 253_402_300_799_999;

/// The time of the next epoch: after the previous one, and the proposed time unless that is
/// earlier or absurd. A pure function of the log, the same on every replica.
pub fn epoch_time_ms(previous_ms: u64, proposed_ms: u64) -> u64 {
    proposed_ms
        .min(EPOCH_TIME_MS_MAX)
        .max(previous_ms.saturating_add(1))
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
    /// This replica cannot execute the log as the cluster does (its partition count is not
    /// the cluster's): it must stop rather than diverge.
    #[error("misconfigured node: {0}")]
    Misconfigured(String),
}

/// What executing one epoch produced.
#[derive(Debug, Default)]
pub struct EpochOutput {
    /// Writes per partition, in log order of the transactions that made them.
    pub writes: BTreeMap<Part, Vec<Write>>,
    /// One result per transaction, in batch order.
    pub results: Vec<TxnResult>,
    /// The epoch's change events, in order (see [`crate::feed`]).
    pub events: Vec<Event>,
}

/// Executes one epoch against `store` (which holds the state after the previous epoch).
pub fn execute_epoch(
    store: &Store,
    cfg: &ExecConfig,
    epoch: u64,
    time_ms: u64,
    txns: &[Txn],
) -> Result<EpochOutput, ExecError> {
    // A batch longer than the order-id space cannot come from an Ordo leader; whatever wrote
    // it, the excess is refused on every replica rather than stopping them.
    let (txns, excess) = txns.split_at(txns.len().min(BATCH_TXNS_LIMIT));
    // Dedupe entries are found through the store's index of their lists: loaded once, by the
    // first epoch a store executes (a node loads it as it starts).
    store.keep_members(&[keys::DEDUPE_LIST])?;
    // The execution settings recorded in the log before this epoch decide it.
    let recorded: Option<ExecSettingsRecord> = read_record(
        store,
        &Overlay::default(),
        Part::Global,
        keys::EXEC_SETTINGS,
        || "execution settings".into(),
    )?;
    let cfg = &cfg.under(recorded.as_ref().map(|r| &r.settings));
    let partitions = store.partitions();
    let mut overlays: BTreeMap<Part, Overlay> = BTreeMap::new();
    overlays.insert(Part::Global, Overlay::default());
    for n in 0..partitions {
        overlays.insert(Part::Region(n), Overlay::default());
    }
    // Expire old dedupe entries first: deterministic, bounded, and before any transaction.
    let cutoff = DedupeCutoff {
        time_ms: time_ms.saturating_sub(cfg.dedupe_window_ms),
        epoch: epoch.saturating_sub(cfg.dedupe_window_epochs_min),
    };
    let prune_max = cfg.dedupe_prune_max.max(txns.len().saturating_mul(2));
    for (part, overlay) in overlays.iter_mut() {
        prune_dedupe(store, *part, overlay, cutoff, prune_max)?;
    }
    // Then return the units of dead holds, earliest first, and drop old reservation records.
    // A partition with dead holds left over is in backlog: its rows are read net of them.
    let mut backlog = BTreeSet::new();
    for (part, overlay) in overlays.iter_mut() {
        if *part != Part::Global && sweep_holds(store, *part, overlay, time_ms, cfg)? {
            backlog.insert(*part);
        }
    }
    prune_reservations(store, &mut overlays, time_ms, cfg.expiry_per_epoch_max)?;

    let mut results: Vec<Option<TxnResult>> = vec![None; txns.len()];
    let mut start = 0;
    while start < txns.len() {
        if txns[start].op.is_global() {
            let result = run_global(
                store,
                cfg,
                &mut overlays,
                epoch,
                time_ms,
                start,
                &txns[start],
            )?;
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
            &backlog,
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
        events: Vec::new(),
    };
    for (seq, result) in results.into_iter().enumerate() {
        let result = result.ok_or_else(|| {
            ExecError::Invariant(format!(
                "transaction {seq} of epoch {epoch} produced no result"
            ))
        })?;
        output.results.push(result);
    }
    // Counted per reason, then added once each: a flash sale rejects most of an epoch.
    let mut rejects: BTreeMap<&'static str, u64> = BTreeMap::new();
    for result in &output.results {
        if let Some(reason) = reject_reason(&result.outcome) {
            *rejects.entry(reason).or_default() += 1;
        }
    }
    for (reason, n) in rejects {
        ordo_metrics::REJECTS.add(&[reason], n);
    }
    for txn in excess {
        ordo_metrics::REJECTS.add(&["too_many_in_batch"], 1);
        output.results.push(TxnResult {
            request_id: txn.request_id.clone(),
            epoch,
            outcome: Outcome::Refused {
                code: RefuseCode::Invalid,
                reason: format!("the epoch batch holds more than {BATCH_TXNS_LIMIT} transactions"),
            },
        });
    }
    let mut events: Vec<(Option<usize>, Event)> = Vec::new();
    for overlay in overlays.values_mut() {
        events.append(&mut overlay.events);
    }
    // Stable: partitions in order, then each partition's events in the order they were made.
    events.sort_by_key(|(seq, _)| *seq);
    output.events = events.into_iter().map(|(_, event)| event).collect();
    for (part, mut overlay) in overlays {
        overlay.seal_lists(epoch, time_ms);
        let writes = overlay.into_writes();
        if !writes.is_empty() {
            output.writes.insert(part, writes);
        }
    }
    Ok(output)
}

/// The reason a result counts under in `ordo_rejects_total` (this node's metrics, outside the
/// replicated state), if it was refused or rejected.
fn reject_reason(outcome: &Outcome) -> Option<&'static str> {
    if let Outcome::Refused { code, .. } = outcome {
        return Some(match code {
            RefuseCode::Invalid => "invalid",
            RefuseCode::IdReused => "id_reused",
            RefuseCode::RegionChange => "region_change",
            RefuseCode::Conflict => "conflict",
        });
    }
    Some(match outcome.rejection()?.code {
        RejectCode::InsufficientStock => "insufficient_stock",
        RejectCode::UnknownDc => "unknown_dc",
        RejectCode::UnknownSku => "unknown_sku",
        RejectCode::DcInactive => "dc_inactive",
        RejectCode::NegativeStock => "negative_stock",
        RejectCode::StockOverflow => "stock_overflow",
        RejectCode::ReservationExpired => "reservation_expired",
        RejectCode::ReservationConfirmed => "reservation_confirmed",
        RejectCode::ReservationCancelled => "reservation_cancelled",
        RejectCode::ReservationUnknown => "reservation_unknown",
        RejectCode::NotHeld => "not_held",
    })
}

/// One partition's pending writes for the epoch: readable by later transactions, emitted at
/// the end. It holds one value per key, however many transactions wrote it (a hot list that
/// every transaction of an epoch appends to costs one list, not one per transaction).
#[derive(Default)]
pub(crate) struct Overlay {
    /// Each written key's latest value and the transaction that wrote it last.
    current: BTreeMap<Vec<u8>, Pending>,
    /// The change events made in this partition, with the log position of the transaction
    /// that made each (`None`: the prologue), in the order they were made.
    events: Vec<(Option<usize>, Event)>,
    /// The results remembered in this partition this epoch, by request id: sealed into one
    /// record list at the end ([`Overlay::seal_lists`]), read from here until then.
    remembered: BTreeMap<String, DedupeRecord>,
    /// The orders this partition is the home of this epoch, sealed the same way.
    orders: Vec<OrderRecord>,
}

/// A key's pending value in an overlay.
struct Pending {
    /// The log position of the transaction that wrote it last (`None`: the prologue, before
    /// any transaction).
    seq: Option<usize>,
    /// `None`: deleted.
    value: Option<Vec<u8>>,
}

impl Overlay {
    pub(crate) fn get(
        &self,
        store: &Store,
        part: Part,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, ExecError> {
        match self.current.get(key) {
            Some(pending) => Ok(pending.value.clone()),
            None => Ok(store.get(part, key)?.map(|v| v.to_vec())),
        }
    }

    /// Pairs with `start <= key < end` under the pending writes, in key order, at most `limit`.
    pub(crate) fn range(
        &self,
        store: &Store,
        part: Part,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<holds::Pairs, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let pending: Vec<(&Vec<u8>, &Pending)> =
            self.current.range(start.to_vec()..end.to_vec()).collect();
        // Each pending write can hide at most one stored key: fetch that many more.
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = store
            .range(part, start, end, limit.saturating_add(pending.len()))?
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        for (key, p) in pending {
            match &p.value {
                Some(v) => merged.insert(key.clone(), v.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    pub(crate) fn put(&mut self, seq: Option<usize>, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.current.insert(key, Pending { seq, value });
    }

    pub(crate) fn emit(&mut self, seq: Option<usize>, event: Event) {
        self.events.push((seq, event));
    }

    /// Writes the epoch's dedupe entries and orders in this partition, each kind as one
    /// record list (none: no key), after every other write.
    fn seal_lists(&mut self, epoch: u64, time_ms: u64) {
        let remembered = std::mem::take(&mut self.remembered);
        if !remembered.is_empty() {
            // In id order (a map), whatever order the partition's executors remembered them in.
            let entries: Vec<(&[u8], Vec<u8>)> = remembered
                .iter()
                .map(|(id, record)| (id.as_bytes(), encode(record)))
                .collect();
            self.put(
                Some(usize::MAX),
                keys::dedupe_list(time_ms, epoch),
                Some(records::encode(&entries)),
            );
        }
        let mut orders = std::mem::take(&mut self.orders);
        if !orders.is_empty() {
            orders.sort_by_key(|o| o.order_id);
            // An order id is its transaction's log position: one order each. Should two
            // share one, the later stands, as a key written twice would.
            orders.reverse();
            orders.dedup_by_key(|o| o.order_id);
            orders.reverse();
            let entries: Vec<([u8; 8], Vec<u8>)> = orders
                .iter()
                .map(|order| (order.order_id.to_be_bytes(), encode(order)))
                .collect();
            self.put(
                Some(usize::MAX),
                keys::order_list(epoch),
                Some(records::encode(&entries)),
            );
        }
    }

    /// Keeps `order` for this partition's order list of the epoch.
    pub(crate) fn add_order(&mut self, order: OrderRecord) {
        self.orders.push(order);
    }

    /// The epoch's writes: the prologue's first, then by the log position of the transaction
    /// that wrote each key last, keys in order within one transaction. A function of the log
    /// alone, whatever order the executors ran in.
    fn into_writes(self) -> Vec<Write> {
        let mut writes: Vec<(Vec<u8>, Pending)> = self.current.into_iter().collect();
        // Stable: keys stay in order within one writer.
        writes.sort_by_key(|(_, pending)| pending.seq);
        writes
            .into_iter()
            .map(|(key, pending)| (key, pending.value))
            .collect()
    }
}

/// One partition's state under an executing epoch's pending writes.
pub(crate) struct Layered<'a> {
    pub(crate) store: &'a Store,
    pub(crate) part: Part,
    pub(crate) overlay: &'a Overlay,
}

impl Layered<'_> {
    fn check(&self, part: Part) -> Result<(), StoreError> {
        if part != self.part {
            return Err(StoreError::Invariant(format!(
                "partition {part} read through the overlay of {}",
                self.part
            )));
        }
        Ok(())
    }
}

impl View for Layered<'_> {
    fn get(&self, part: Part, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.check(part)?;
        match self.overlay.current.get(key) {
            Some(pending) => Ok(pending.value.clone()),
            None => Ok(self.store.get(part, key)?.map(|v| v.to_vec())),
        }
    }

    fn range(
        &self,
        part: Part,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<holds::Pairs, StoreError> {
        self.check(part)?;
        self.overlay.range(self.store, part, start, end, limit)
    }
}

impl From<HoldError> for ExecError {
    fn from(e: HoldError) -> Self {
        match e {
            HoldError::Store(e) => ExecError::Store(e),
            HoldError::Corrupt { what, detail } => ExecError::Corrupt { what, detail },
        }
    }
}

pub(crate) fn corrupt(what: String, e: bincode::Error) -> ExecError {
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

pub(crate) fn remember(overlay: &mut Overlay, time_ms: u64, txn: &Txn, result: &TxnResult) {
    let record = DedupeRecord::new(time_ms, &txn.op, result);
    overlay.remembered.insert(result.request_id.clone(), record);
}

/// The result remembered under `request_id` in `part`: from this epoch's own (the overlay),
/// else from the record lists the store's index names (`keys::DEDUPE_LIST`), else from a key
/// of its own (`keys::DEDUPE`, data from before the lists).
pub(crate) fn read_dedupe(
    store: &Store,
    overlay: &Overlay,
    part: Part,
    request_id: &str,
) -> Result<Option<DedupeRecord>, ExecError> {
    if let Some(record) = overlay.remembered.get(request_id) {
        return Ok(Some(record.clone()));
    }
    let what = || format!("dedupe {request_id:?} in {part}");
    for key in store.lists_holding(part, request_id.as_bytes())? {
        // Gone if this epoch's prologue pruned it.
        let Some(value) = overlay.get(store, part, &key)? else {
            continue;
        };
        let list = records::RecordList::parse(&value).map_err(|e| ExecError::Corrupt {
            what: what(),
            detail: e.to_string(),
        })?;
        if let Some(bytes) = list.get(request_id.as_bytes()) {
            return DedupeRecord::decode(bytes)
                .map(Some)
                .map_err(|e| corrupt(what(), e));
        }
    }
    match overlay.get(store, part, &keys::dedupe(request_id))? {
        Some(bytes) => DedupeRecord::decode(&bytes)
            .map(Some)
            .map_err(|e| corrupt(what(), e)),
        None => Ok(None),
    }
}

/// What a request id's earlier use means for this transaction: its result when the body is
/// the same, a refusal when the id names another request.
pub(crate) fn dedupe_answer(txn: &Txn, record: DedupeRecord, epoch: u64) -> TxnResult {
    ordo_metrics::DEDUPE_HITS.inc();
    if record.same_body(&body_digest(&txn.op)) {
        return record.result;
    }
    TxnResult {
        request_id: txn.request_id.clone(),
        epoch,
        outcome: Outcome::Refused {
            code: RefuseCode::IdReused,
            reason: format!(
                "request_id {:?} was already used for a different request (epoch {}); use a \
                 new request_id",
                txn.request_id, record.result.epoch
            ),
        },
    }
}

/// A DC or catalogue change: runs alone, between the partitioned segments of an epoch, so it
/// may touch any partition: its data goes to the global partition, its dedupe entry to its
/// request id's home like every other transaction's (one namespace of request ids).
fn run_global(
    store: &Store,
    cfg: &ExecConfig,
    overlays: &mut BTreeMap<Part, Overlay>,
    epoch: u64,
    time_ms: u64,
    seq: usize,
    txn: &Txn,
) -> Result<TxnResult, ExecError> {
    let refused = |code, reason| TxnResult {
        request_id: txn.request_id.clone(),
        epoch,
        outcome: Outcome::Refused { code, reason },
    };
    let home = request_part(&txn.request_id, store.partitions());
    // The cluster record needs no dedupe: comparing with the record is idempotent, and no
    // entry under its id can then be made to stand in its way.
    let dedupe = validate::request_id_ok(&txn.request_id).is_ok()
        && !matches!(txn.op, Op::ClusterConfig { .. });
    if dedupe {
        // Entries written before request ids had one home kept global ones in the global
        // partition.
        for part in [home, Part::Global] {
            let overlay = overlays.get(&part).expect("overlay per partition");
            if let Some(record) = read_dedupe(store, overlay, part, &txn.request_id)? {
                return Ok(dedupe_answer(txn, record, epoch));
            }
        }
    }
    let overlay = overlays.get_mut(&Part::Global).expect("global overlay");
    let price_ctx = PriceCtx {
        store,
        cfg,
        epoch,
        time_ms,
        seq,
        request_id: &txn.request_id,
    };
    let result = match validate::validate(txn) {
        Err(reason) => refused(RefuseCode::Invalid, reason),
        Ok(()) => match &txn.op {
            Op::UpsertDc(dc) => {
                let existing: Option<DcRecord> =
                    read_record(store, overlay, Part::Global, &keys::dc(dc.dc), || {
                        format!("dc {}", dc.dc)
                    })?;
                match existing {
                    Some(old) if old.region != dc.region => refused(
                        RefuseCode::RegionChange,
                        format!(
                            "dc {} is in region {}; its stock and orders live there, so it \
                             cannot move to region {} (create a new DC instead)",
                            dc.dc, old.region, dc.region
                        ),
                    ),
                    _ => {
                        overlay.put(Some(seq), keys::dc(dc.dc), Some(encode(dc)));
                        overlay.emit(Some(seq), Event::Dc(dc.clone()));
                        upserted(txn, epoch)
                    }
                }
            }
            Op::UpsertItem(item) => {
                let existing: Option<ItemRecord> =
                    read_record(store, overlay, Part::Global, &keys::item(item.sku), || {
                        format!("item {}", item.sku)
                    })?;
                overlay.put(Some(seq), keys::item(item.sku), Some(encode(item)));
                overlay.emit(Some(seq), Event::Item(item.clone()));
                // A new item or a new name moves the catalogue's names: the edge's search
                // index follows that key alone, not every price change.
                if existing.as_ref().is_none_or(|old| old.name != item.name) {
                    overlay.put(Some(seq), keys::ITEM_NAMES.to_vec(), Some(encode(&epoch)));
                }
                if let Some(old) = existing.filter(|old| old.price_cents != item.price_cents) {
                    let set = PriceSet {
                        sku: item.sku,
                        price_cents: item.price_cents,
                        currency: String::new(),
                    };
                    set_price(&price_ctx, overlay, &set, old.price_cents)?;
                }
                upserted(txn, epoch)
            }
            Op::SetPrices(prices) => {
                let mut items = Vec::with_capacity(prices.len());
                let mut unknown = None;
                for set in prices {
                    let item: Option<ItemRecord> =
                        read_record(store, overlay, Part::Global, &keys::item(set.sku), || {
                            format!("item {}", set.sku)
                        })?;
                    match item {
                        Some(item) => items.push((set, item)),
                        None => {
                            unknown = Some(set.sku);
                            break;
                        }
                    }
                }
                let rejection = unknown.map(|sku| Rejection {
                    code: RejectCode::UnknownSku,
                    dc: 0,
                    sku,
                    available: 0,
                    requested: 0,
                });
                if rejection.is_none() {
                    for (set, item) in items {
                        set_price(&price_ctx, overlay, set, item.price_cents)?;
                        let item = ItemRecord {
                            price_cents: set.price_cents,
                            ..item
                        };
                        overlay.put(Some(seq), keys::item(set.sku), Some(encode(&item)));
                    }
                }
                TxnResult {
                    request_id: txn.request_id.clone(),
                    epoch,
                    outcome: Outcome::Priced { rejection },
                }
            }
            Op::ClusterConfig { partitions } => {
                let recorded: Option<ClusterRecord> =
                    read_record(store, overlay, Part::Global, keys::CLUSTER_CONFIG, || {
                        "cluster configuration".into()
                    })?;
                let record = recorded.unwrap_or(ClusterRecord {
                    partitions: *partitions,
                    epoch,
                });
                check_partitions(&record, store.partitions())?;
                match recorded {
                    None => {
                        overlay.put(
                            Some(seq),
                            keys::CLUSTER_CONFIG.to_vec(),
                            Some(encode(&record)),
                        );
                        upserted(txn, epoch)
                    }
                    Some(r) if r.partitions == *partitions => upserted(txn, epoch),
                    Some(r) => refused(
                        RefuseCode::Invalid,
                        format!(
                            "the cluster has {} partitions, recorded at epoch {}; the count \
                             never changes",
                            r.partitions, r.epoch
                        ),
                    ),
                }
            }
            Op::ExecSettings(settings) => {
                let recorded: Option<ExecSettingsRecord> =
                    read_record(store, overlay, Part::Global, keys::EXEC_SETTINGS, || {
                        "execution settings".into()
                    })?;
                if !(settings.initial && recorded.is_some()) {
                    let record = ExecSettingsRecord {
                        settings: ExecSettings {
                            initial: false,
                            ..*settings
                        },
                        epoch,
                    };
                    overlay.put(
                        Some(seq),
                        keys::EXEC_SETTINGS.to_vec(),
                        Some(encode(&record)),
                    );
                }
                upserted(txn, epoch)
            }
            other => {
                return Err(ExecError::Invariant(format!(
                    "non-global transaction {other:?} routed to the global partition"
                )))
            }
        },
    };
    if dedupe {
        let overlay = overlays.get_mut(&home).expect("overlay per partition");
        remember(overlay, time_ms, txn, &result);
    }
    Ok(result)
}

/// What a price change needs besides the price.
struct PriceCtx<'a> {
    store: &'a Store,
    cfg: &'a ExecConfig,
    epoch: u64,
    time_ms: u64,
    seq: usize,
    request_id: &'a str,
}

/// At most this many expired entries of an item's price history are dropped each time its
/// price is set (each set adds one, so the history never grows by more than its window holds).
const PRICE_HISTORY_PRUNE_MAX: usize = 4;

/// Records `set` as the item's current price and in its history (dropping history entries
/// past the window), and emits the price event. The item record itself is the caller's.
fn set_price(
    ctx: &PriceCtx<'_>,
    overlay: &mut Overlay,
    set: &PriceSet,
    before_cents: i64,
) -> Result<(), ExecError> {
    let sku = set.sku;
    let previous: Option<PriceRecord> =
        read_record(ctx.store, overlay, Part::Global, &keys::price(sku), || {
            format!("price of sku {sku}")
        })?;
    let currency = match (set.currency.is_empty(), previous) {
        (false, _) => set.currency.clone(),
        (true, Some(previous)) => previous.currency,
        (true, None) => String::new(),
    };
    let record = PriceRecord {
        sku,
        price_cents: set.price_cents,
        currency: currency.clone(),
        epoch: ctx.epoch,
        time_ms: ctx.time_ms,
        request_id: ctx.request_id.to_string(),
    };
    let cutoff_ms = ctx.time_ms.saturating_sub(ctx.cfg.price_history_ms);
    let start = keys::price_history(sku, 0);
    let end = keys::price_history(sku, ctx.epoch);
    for (key, value) in overlay.range(
        ctx.store,
        Part::Global,
        &start,
        &end,
        PRICE_HISTORY_PRUNE_MAX,
    )? {
        let old: PriceRecord =
            decode(&value).map_err(|e| corrupt(format!("price history of sku {sku}"), e))?;
        if old.time_ms >= cutoff_ms {
            break;
        }
        overlay.put(Some(ctx.seq), key, None);
    }
    overlay.put(Some(ctx.seq), keys::price(sku), Some(encode(&record)));
    // Keyed by the transaction's position too: every acknowledged change is kept, also
    // two of one SKU in one epoch (an epoch holds far fewer than 2^32 transactions).
    overlay.put(
        Some(ctx.seq),
        keys::price_history_entry(sku, ctx.epoch, ctx.seq as u32),
        Some(encode(&record)),
    );
    overlay.emit(
        Some(ctx.seq),
        Event::Price(PriceChange {
            sku,
            before_cents,
            after_cents: set.price_cents,
            currency,
            request_id: ctx.request_id.to_string(),
        }),
    );
    Ok(())
}

/// Whether this replica's partition count is the cluster's.
pub fn check_partitions(record: &ClusterRecord, mine: u32) -> Result<(), ExecError> {
    if record.partitions == mine {
        return Ok(());
    }
    Err(ExecError::Misconfigured(format!(
        "the cluster has {} partitions (recorded in the log at epoch {}), this node was started \
         with --partitions {mine}: restart it with --partitions {} on an empty data directory",
        record.partitions, record.epoch, record.partitions
    )))
}

fn upserted(txn: &Txn, epoch: u64) -> TxnResult {
    TxnResult {
        request_id: txn.request_id.clone(),
        epoch,
        outcome: Outcome::Upserted,
    }
}
