//! The transaction model and the records it reads and writes, with their key encodings.
//!
//! Everything here travels in the Raft log or lands in the partition stores, so it is encoded
//! with bincode and must only ever change in backward-compatible ways.

use serde::{Deserialize, Serialize};

/// Orders in one epoch are numbered below this; `order_id = epoch << ORDER_SEQ_BITS | index`.
pub const ORDER_SEQ_BITS: u32 = 20;
/// The most transactions one epoch batch may carry (order ids must stay unique).
pub const BATCH_TXNS_LIMIT: usize = (1 << ORDER_SEQ_BITS) - 1;

/// One epoch's input, as the sequencer proposes it: one Raft entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The proposer's monotonic clock reading (ms since the Unix epoch). Execution uses
    /// `max(previous epoch's time + 1, time_ms)`, never a wall clock of its own.
    pub time_ms: u64,
    pub txns: Vec<Txn>,
}

/// A deterministic stored procedure with its idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub request_id: String,
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    PlaceOrder {
        lines: Vec<Line>,
        mode: Mode,
        user: String,
    },
    /// Adds a signed delta to on-hand stock.
    Restock {
        dc: u32,
        sku: u32,
        delta: i64,
    },
    UpsertDc(DcRecord),
    UpsertItem(ItemRecord),
    /// A transaction over user keys: reads, writes, compare-and-sets and list appends, applied
    /// in order, all or nothing (a failed cas aborts the whole transaction).
    Kv(Vec<KvOp>),
    /// Moves `qty` units of on-hand stock of `sku` from one DC to another, all or nothing:
    /// rejected when the source has fewer than `qty` available. Total stock is unchanged.
    Transfer {
        sku: u32,
        from_dc: u32,
        to_dc: u32,
        qty: i64,
    },
    /// Records the cluster's partition count in the log, once, at cluster-init. The first
    /// record stands; a later one with another count is refused. A replica whose own
    /// partition count differs from the record stops: routing would diverge.
    ClusterConfig {
        partitions: u32,
    },
    /// Holds units for a cart: they move from available to reserved until the hold is
    /// confirmed, cancelled or reaches `expires_at = epoch time + ttl_ms`. With a `cart_id`
    /// whose reservation is live, the lines are added to that reservation (and lapse with
    /// it). `ttl_ms` 0 is the cluster's default TTL and `life_max_ms` 0 its life cap (the
    /// recorded [`ExecSettings`], resolved in execution): the edge sends what the caller asked
    /// for, so a retry has the same body on any node, whatever its flags. (Entries written
    /// before the settings were recorded carry both resolved by the edge.)
    Reserve {
        cart_id: String,
        user: String,
        lines: Vec<Line>,
        mode: Mode,
        ttl_ms: u64,
        /// The longest the reservation may live, extensions included.
        life_max_ms: u64,
    },
    /// Turns a live reservation into an order. `lines` empty: every held unit; otherwise
    /// those quantities (at most what is held per line), and the rest is released.
    ConfirmReservation {
        reservation_id: u64,
        lines: Vec<Line>,
    },
    CancelReservation {
        reservation_id: u64,
    },
    /// Moves a live reservation's expiry to `epoch time + ttl_ms` (0: the cluster's default
    /// TTL), never earlier than it was and never past its life cap.
    ExtendReservation {
        reservation_id: u64,
        ttl_ms: u64,
    },
    /// An order filled from the stores near the user ([`Nearby`]): execution picks the DCs
    /// from the candidates the edge resolved, by the policy, from the stock as it stands.
    PlaceOrderNearby {
        user: String,
        nearby: Nearby,
        mode: Mode,
    },
    /// A reservation filled from nearby stores like [`Op::PlaceOrderNearby`], held like
    /// [`Op::Reserve`] (with a cart whose reservation is live, added to it).
    ReserveNearby {
        cart_id: String,
        user: String,
        nearby: Nearby,
        mode: Mode,
        ttl_ms: u64,
        life_max_ms: u64,
    },
    /// Sets the prices of SKUs, all or nothing (an unknown SKU refuses the whole batch): each
    /// item's current price changes and its price history gains an entry.
    SetPrices(Vec<PriceSet>),
    /// Subscribes `user` to price drops or restocks of `sku` (one subscription per user, SKU
    /// and kind: subscribing again changes its parameters).
    Subscribe {
        user: String,
        sku: u32,
        kind: crate::subs::SubKind,
    },
    Unsubscribe {
        user: String,
        sku: u32,
        tag: crate::subs::SubTag,
    },
    /// Records the execution settings every replica must share ([`ExecSettings`]). Added
    /// last: bincode numbers variants by position, so the log's older entries keep theirs.
    ExecSettings(ExecSettings),
    /// Adds signed deltas to many SKUs' on-hand stock at one DC, all or nothing: a line that
    /// would take its row below zero or below what is reserved rejects the whole
    /// transaction. A store's stock sync, and the bulk loader's path: one request id, one
    /// dedupe entry and one log record for thousands of rows. Lines in ascending SKU order,
    /// no SKU twice (`validate`). Added last (bincode).
    RestockDc {
        dc: u32,
        lines: Vec<SkuDelta>,
    },
}

/// One line of an [`Op::RestockDc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuDelta {
    pub sku: u32,
    pub delta: i64,
}

/// Execution settings that decide replicated state, so they are cluster facts: recorded in
/// the log (global partition, [`keys::EXEC_SETTINGS`]), never taken from a node's flags once
/// recorded. A node records its flags' values at its first start (`initial`: only if nothing
/// is recorded yet); an admin call changes them through the log. A change recorded in epoch
/// E governs epochs after E, from their prologue on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSettings {
    /// A hold's TTL when its reserve or extend asks for none (a TTL of 0).
    pub reservation_ttl_default_ms: u64,
    /// The longest a reservation lives with its extensions, and the longest TTL one may ask
    /// for.
    pub reservation_life_max_ms: u64,
    /// Lapsed holds swept per partition per epoch (and old reservation records dropped).
    pub expiry_per_epoch_max: u64,
    /// Record only if none is recorded yet (a node's start); otherwise a change.
    pub initial: bool,
}

/// The recorded execution settings (`initial` false) and the epoch that recorded them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSettingsRecord {
    pub settings: ExecSettings,
    pub epoch: u64,
}

/// One price a [`Op::SetPrices`] sets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceSet {
    pub sku: u32,
    pub price_cents: i64,
    /// An ISO 4217 code (three capital letters), or empty: the item's current currency.
    pub currency: String,
}

/// A price as set at an epoch: an item's current price ([`keys::price`]) and each entry of its
/// history ([`keys::price_history`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceRecord {
    pub sku: u32,
    pub price_cents: i64,
    /// Empty when no currency was ever given.
    pub currency: String,
    pub epoch: u64,
    pub time_ms: u64,
    /// The request that set it.
    pub request_id: String,
}

/// Units of a SKU from whichever nearby store has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuQty {
    pub sku: u32,
    pub qty: i64,
}

/// How a nearby order is split across stores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FillPolicy {
    /// The nearest store that has every line in full; when none does, greedily the store that
    /// fills the most remaining units (ties: the nearer), until filled: fewest shipments.
    #[default]
    FewestDcs,
    /// Stores nearest first, each giving what it has of what is still missing.
    NearestFirst,
}

/// What a nearby order asks for and where it may come from. Integers only: the edge turned
/// the user's point into the ordered candidate list; execution never computes a distance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nearby {
    /// Distinct SKUs.
    pub lines: Vec<SkuQty>,
    /// The user's point (micro-degrees) and radius (metres), as the request gave them. Part
    /// of the request's identity; execution never reads them.
    pub lat_e6: i32,
    pub lon_e6: i32,
    pub radius_m: u32,
    /// The stores the edge found within the radius, nearest first (ties by dc id). Not part
    /// of the request's identity: a retry resolved against a changed DC table is still the
    /// same request and gets the first answer.
    pub candidates: Vec<u32>,
    pub policy: FillPolicy,
    /// At most this many stores (shipments).
    pub max_dcs: u32,
}

/// The request id under which nodes record the cluster configuration.
pub const CLUSTER_CONFIG_REQUEST_ID: &str = "ordo-cluster-config";

/// One operation of a key-value transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    Read(String),
    Write(String, i64),
    /// Sets the key to `to` if it holds the integer `from`; otherwise the transaction aborts.
    Cas {
        key: String,
        from: i64,
        to: i64,
    },
    /// Appends to the key's list (an absent key is an empty list).
    Append(String, i64),
}

impl KvOp {
    pub fn key(&self) -> &str {
        match self {
            KvOp::Read(k) | KvOp::Write(k, _) | KvOp::Append(k, _) => k,
            KvOp::Cas { key, .. } => key,
        }
    }
}

/// What a user key holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvValue {
    Int(i64),
    List(Vec<i64>),
}

/// A list never grows past this many elements; an append beyond it aborts its transaction.
pub const KV_LIST_LEN_MAX: usize = 100_000;

/// The partition a user key lives in: a hash of the key, the same on every replica.
pub fn kv_part(key: &str, partitions: u32) -> ordo_storage::Part {
    let hash = blake3::hash(key.as_bytes());
    let n = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
    ordo_storage::Part::Region((n % partitions as u64) as u32)
}

impl Op {
    /// The existing reservation a confirm, cancel or extend names.
    pub fn reservation_id(&self) -> Option<u64> {
        match self {
            Op::ConfirmReservation { reservation_id, .. }
            | Op::CancelReservation { reservation_id }
            | Op::ExtendReservation { reservation_id, .. } => Some(*reservation_id),
            _ => None,
        }
    }

    /// Whether the transaction changes the global tables (DCs, catalogue). Such transactions
    /// run alone, between the partitioned parts of an epoch.
    pub fn is_global(&self) -> bool {
        matches!(
            self,
            Op::UpsertDc(_)
                | Op::UpsertItem(_)
                | Op::ClusterConfig { .. }
                | Op::SetPrices(_)
                | Op::ExecSettings(_)
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub dc: u32,
    pub sku: u32,
    pub qty: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    #[default]
    AllOrNothing,
    Partial,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DcRecord {
    pub dc: u32,
    pub name: String,
    /// Micro-degrees: no floating point reaches execution.
    pub lat_e6: i32,
    pub lon_e6: i32,
    pub region: u32,
    pub active: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecord {
    pub sku: u32,
    pub name: String,
    pub price_cents: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockRecord {
    pub on_hand: i64,
    pub reserved: i64,
}

impl StockRecord {
    pub fn available(&self) -> i64 {
        (self.on_hand - self.reserved).max(0)
    }
}

/// What one order line got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineAlloc {
    pub dc: u32,
    pub sku: u32,
    pub requested: i64,
    pub allocated: i64,
    /// Available before this order.
    pub available: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectCode {
    InsufficientStock,
    UnknownDc,
    UnknownSku,
    DcInactive,
    NegativeStock,
    StockOverflow,
    /// The reservation's hold lapsed: the epoch's time reached its `expires_at`.
    ReservationExpired,
    ReservationConfirmed,
    ReservationCancelled,
    ReservationUnknown,
    /// A confirm line names a row the reservation does not hold, or more than it holds.
    NotHeld,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub code: RejectCode,
    pub dc: u32,
    pub sku: u32,
    pub available: i64,
    pub requested: i64,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Rejection {
            dc,
            sku,
            available,
            requested,
            ..
        } = self;
        match self.code {
            RejectCode::InsufficientStock if *dc == 0 => write!(
                f,
                "insufficient stock nearby: sku {sku} available {available} in the stores \
                 within reach, requested {requested}"
            ),
            RejectCode::InsufficientStock => write!(
                f,
                "insufficient stock: dc {dc} sku {sku} available {available} requested {requested}"
            ),
            RejectCode::UnknownDc => write!(f, "unknown dc {dc}"),
            RejectCode::UnknownSku => write!(f, "unknown sku {sku}"),
            RejectCode::DcInactive => write!(f, "dc {dc} is not active"),
            RejectCode::NegativeStock => write!(
                f,
                "adjustment would make stock negative: dc {dc} sku {sku} available {available} \
                 delta -{requested}"
            ),
            RejectCode::StockOverflow => write!(
                f,
                "dc {dc} sku {sku} would hold more than {} units",
                i64::MAX
            ),
            RejectCode::ReservationExpired => write!(f, "the reservation expired"),
            RejectCode::ReservationConfirmed => write!(f, "the reservation is already confirmed"),
            RejectCode::ReservationCancelled => write!(f, "the reservation is cancelled"),
            RejectCode::ReservationUnknown => write!(f, "unknown reservation"),
            RejectCode::NotHeld => write!(
                f,
                "the reservation holds {available} of dc {dc} sku {sku}, not {requested}"
            ),
        }
    }
}

/// The outcome of one transaction, as stored for dedupe and returned to the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    pub request_id: String,
    /// The epoch in which the transaction was decided.
    pub epoch: u64,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Order {
        /// Set when committed.
        order_id: Option<u64>,
        lines: Vec<LineAlloc>,
        rejection: Option<Rejection>,
    },
    Restock {
        stock: StockRecord,
        rejection: Option<Rejection>,
    },
    Upserted,
    /// A key-value transaction: on commit, one entry per op (the value a read saw; `None`
    /// for other ops and for reads of absent keys); on abort, why.
    Kv {
        results: Vec<Option<KvValue>>,
        abort: Option<String>,
    },
    /// A stock transfer: both rows after it (unchanged when rejected).
    Transfer {
        from: StockRecord,
        to: StockRecord,
        rejection: Option<Rejection>,
    },
    /// Refused before it could do anything, whatever its kind: an inadmissible transaction
    /// that reached the log anyway, a request id already used for another request, a DC
    /// moved to another region. Deterministic on every replica, never a stop.
    Refused {
        code: RefuseCode,
        reason: String,
    },
    /// A reservation as this transaction left it (`None` when none was made or it is unknown),
    /// and why the transaction changed nothing.
    Reservation {
        reservation: Option<ReservationRecord>,
        rejection: Option<Rejection>,
    },
    /// Prices set (every one), or why none was.
    Priced {
        rejection: Option<Rejection>,
    },
    /// A subscription as the transaction left it (`None`: an unsubscribe with nothing to
    /// remove, or a rejection).
    Subscription {
        record: Option<crate::subs::SubscriptionRecord>,
        rejection: Option<Rejection>,
    },
    /// An [`Op::RestockDc`]: the rows it changed (all its lines), or why it changed none.
    /// Added last (bincode: dedupe entries keep older outcomes).
    RestockedDc {
        rows: u32,
        rejection: Option<Rejection>,
    },
}

/// Why a transaction was refused outright.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseCode {
    /// It breaks a limit of [`crate::validate`] (the edge's INVALID_ARGUMENT).
    Invalid,
    /// Its request id names an earlier, different request (ALREADY_EXISTS).
    IdReused,
    /// It would move an existing DC to another region (FAILED_PRECONDITION).
    RegionChange,
    /// The reservation or cart it names changed earlier in the same epoch segment, after the
    /// transaction was routed: nothing was done and nothing is remembered, so the same request
    /// runs again in a later epoch (the edge resubmits it).
    Conflict,
}

impl Outcome {
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Outcome::Order { rejection, .. }
            | Outcome::Restock { rejection, .. }
            | Outcome::Transfer { rejection, .. }
            | Outcome::Reservation { rejection, .. }
            | Outcome::Priced { rejection }
            | Outcome::Subscription { rejection, .. }
            | Outcome::RestockedDc { rejection, .. } => rejection.as_ref(),
            Outcome::Upserted | Outcome::Kv { .. } | Outcome::Refused { .. } => None,
        }
    }
}

/// A committed order as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub order_id: u64,
    pub request_id: String,
    pub user: String,
    pub epoch: u64,
    pub time_ms: u64,
    pub lines: Vec<LineAlloc>,
}

/// One line of a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldLine {
    pub dc: u32,
    pub sku: u32,
    pub requested: i64,
    pub held: i64,
}

/// Where a reservation stands, as stored. An expired hold is stored as `Live`: it is dead
/// whenever the epoch's time is at or past `expires_at` ([`ReservationRecord::status_at`]), so
/// no write is needed at the moment it lapses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldState {
    Live,
    Confirmed { order_id: u64, epoch: u64 },
    Cancelled { epoch: u64 },
}

/// A reservation's status as seen at some epoch time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldStatus {
    Live,
    Expired,
    Confirmed,
    Cancelled,
}

/// A reservation (a cart's holds), kept in its home partition ([`reservation_part`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRecord {
    pub reservation_id: u64,
    /// The request that created it.
    pub request_id: String,
    pub cart_id: String,
    pub user: String,
    pub lines: Vec<HoldLine>,
    pub created_epoch: u64,
    pub created_ms: u64,
    /// Live while the epoch's time is before this.
    pub expires_at_ms: u64,
    /// No extension goes past this.
    pub life_cap_ms: u64,
    pub state: HoldState,
}

impl ReservationRecord {
    /// The status at epoch time `now_ms`: a live hold whose time has come is expired.
    pub fn status_at(&self, now_ms: u64) -> HoldStatus {
        match self.state {
            HoldState::Live if now_ms >= self.expires_at_ms => HoldStatus::Expired,
            HoldState::Live => HoldStatus::Live,
            HoldState::Confirmed { .. } => HoldStatus::Confirmed,
            HoldState::Cancelled { .. } => HoldStatus::Cancelled,
        }
    }

    /// The rows it holds units of.
    pub fn rows(&self) -> Vec<(u32, u32)> {
        self.lines
            .iter()
            .filter(|l| l.held > 0)
            .map(|l| (l.dc, l.sku))
            .collect()
    }
}

/// The partition a reservation lives in: a hash of its id.
pub fn reservation_part(reservation_id: u64, partitions: u32) -> ordo_storage::Part {
    kv_part(&format!("reservation/{reservation_id}"), partitions)
}

/// The partition that knows a cart's latest reservation: a hash of the cart id.
pub fn cart_part(cart_id: &str, partitions: u32) -> ordo_storage::Part {
    kv_part(&format!("cart/{cart_id}"), partitions)
}

/// The cluster configuration as recorded in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub partitions: u32,
    /// The epoch that recorded it.
    pub epoch: u64,
}

/// The request ids one epoch remembered in one partition, in id order: what expires them
/// together (`keys::dedupe_by_epoch`). One key per epoch instead of one per request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupeEpoch {
    pub request_ids: Vec<String>,
}

/// A remembered result, for `request_id` dedupe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupeRecord {
    pub time_ms: u64,
    pub result: TxnResult,
    /// [`body_digest`] of the request that produced the result, so a later request with the
    /// same id and another body is told apart (`None` in records written before it existed).
    pub body_digest: Option<[u8; 32]>,
    /// For a key-value transaction that read values: the BLAKE3 digest of what it read. The
    /// values themselves are not kept (a list may hold 100,000 elements; one epoch may hold
    /// thousands of such reads), so `result` holds no results, and a retry learns that the
    /// transaction committed, not what it read.
    pub reads_digest: Option<[u8; 32]>,
}

/// The record layout before `body_digest`, still readable.
#[derive(Deserialize)]
struct DedupeRecordV0 {
    time_ms: u64,
    result: TxnResult,
}

impl DedupeRecord {
    /// Decodes either layout. bincode records carry no schema, so the current layout is tried
    /// first; an older record is too short for it.
    pub fn decode(bytes: &[u8]) -> Result<Self, bincode::Error> {
        match decode::<DedupeRecord>(bytes) {
            Ok(record) => Ok(record),
            Err(current) => match decode::<DedupeRecordV0>(bytes) {
                Ok(v0) => Ok(DedupeRecord {
                    time_ms: v0.time_ms,
                    result: v0.result,
                    body_digest: None,
                    reads_digest: None,
                }),
                Err(_) => Err(current),
            },
        }
    }

    /// The record to keep for `result` of the request `op`: read values are replaced by their
    /// digest.
    pub fn new(time_ms: u64, op: &Op, result: &TxnResult) -> Self {
        let mut kept = result.clone();
        let mut reads_digest = None;
        if let Outcome::Kv { results, .. } = &mut kept.outcome {
            if results.iter().any(Option::is_some) {
                reads_digest = Some(blake3::hash(&encode(results)).into());
                results.clear();
            }
        }
        DedupeRecord {
            time_ms,
            result: kept,
            body_digest: Some(body_digest(op)),
            reads_digest,
        }
    }

    /// Whether this record belongs to a request with this body. Records without a digest
    /// cannot tell and say yes; the edge then compares the result's shape.
    pub fn same_body(&self, digest: &[u8; 32]) -> bool {
        self.body_digest.is_none_or(|d| &d == digest)
    }
}

/// What a request id is bound to: the BLAKE3 hash of the request's operation.
pub fn body_digest(op: &Op) -> [u8; 32] {
    match op {
        Op::PlaceOrderNearby { nearby, .. } | Op::ReserveNearby { nearby, .. }
            if !nearby.candidates.is_empty() =>
        {
            // The request as the client sent it, without what the edge resolved.
            let mut op = op.clone();
            if let Op::PlaceOrderNearby { nearby, .. } | Op::ReserveNearby { nearby, .. } = &mut op
            {
                nearby.candidates.clear();
            }
            blake3::hash(&encode(&op)).into()
        }
        _ => blake3::hash(&encode(op)).into(),
    }
}

/// The partition that remembers a request id (its dedupe home, where an order's record also
/// lives): a hash of the id, so every request with that id meets the same entry, whatever
/// DCs its body names.
pub fn request_part(request_id: &str, partitions: u32) -> ordo_storage::Part {
    kv_part(request_id, partitions)
}

/// Key encodings. Big-endian integers keep keys in numeric order.
pub mod keys {
    pub const DC: u8 = b'c';
    pub const ITEM: u8 = b'i';
    /// The epoch of the last new item or new item name (global partition), the only key
    /// starting with `#`: its version (`Store::global_version_of`) moves with the names alone.
    pub const ITEM_NAMES: &[u8] = b"#item-names";
    pub const STOCK: u8 = b's';
    pub const ORDER: u8 = b'o';
    pub const DEDUPE: u8 = b'd';
    /// Dedupe expiry index of data written before `T`: `t` + time_ms + request_id → empty.
    /// Still pruned; no longer written.
    pub const DEDUPE_BY_TIME: u8 = b't';
    /// Dedupe expiry index, one key per partition and epoch: `T` + time_ms + epoch → the
    /// request ids the epoch remembered in that partition ([`super::DedupeEpoch`]).
    pub const DEDUPE_BY_EPOCH: u8 = b'T';
    /// An epoch's dedupe entries in one partition, one value for all of them: `U` + time_ms +
    /// epoch → a record list ([`ordo_storage::records`]) of request id → [`super::DedupeRecord`],
    /// which the store indexes by request id (`Store::keep_members`). Replaces the key per
    /// request (`d`) and the per-epoch expiry key (`T`), which older data still holds.
    pub const DEDUPE_LIST: u8 = b'U';
    /// An epoch's orders in one partition (the home partition of each order's request id):
    /// `O` + epoch → a record list of order id (8 bytes, big-endian) →
    /// [`super::OrderRecord`]. An order id names its epoch (`ORDER_SEQ_BITS`), so an order is
    /// found without an index. Replaces the key per order (`o`), which older data still holds.
    pub const ORDER_LIST: u8 = b'O';
    pub const KV: u8 = b'k';
    /// The cluster configuration record (global partition): [`super::ClusterRecord`].
    pub const CLUSTER_CONFIG: &[u8] = b"Pcluster";
    /// The recorded execution settings (global partition): [`super::ExecSettingsRecord`].
    pub const EXEC_SETTINGS: &[u8] = b"Pexec-settings";
    /// Reservation state: see `crate::holds` for the layout.
    pub const RESERVATION: u8 = b'r';
    pub const HOLD_DUE: u8 = b'x';
    pub const HOLD_ROW: u8 = b'e';
    pub const RESERVATION_PRUNE: u8 = b'y';
    pub const CART: u8 = b'C';
    pub const RESERVATION_BY_CART: u8 = b'K';
    pub const RESERVATION_BY_USER: u8 = b'u';
    /// An item's current price (global partition): [`super::PriceRecord`].
    pub const PRICE: u8 = b'p';
    /// An item's price history (global partition): `h` + sku + epoch + the change's position
    /// in the epoch → [`super::PriceRecord`], so two changes of one SKU in one epoch are two
    /// entries. (Entries written before the position was added are `h` + sku + epoch: they
    /// sort before the epoch's positioned ones, and every range here covers both.)
    pub const PRICE_HISTORY: u8 = b'h';

    pub fn price(sku: u32) -> Vec<u8> {
        let mut k = vec![PRICE];
        k.extend_from_slice(&sku.to_be_bytes());
        k
    }

    /// The start of an item's price history at `epoch`: a range bound, and the key of
    /// entries written before positions were added.
    pub fn price_history(sku: u32, epoch: u64) -> Vec<u8> {
        let mut k = vec![PRICE_HISTORY];
        k.extend_from_slice(&sku.to_be_bytes());
        k.extend_from_slice(&epoch.to_be_bytes());
        k
    }

    /// The price history entry of the change at position `seq` of `epoch`.
    pub fn price_history_entry(sku: u32, epoch: u64, seq: u32) -> Vec<u8> {
        let mut k = price_history(sku, epoch);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    pub fn kv(key: &str) -> Vec<u8> {
        let mut k = vec![KV];
        k.extend_from_slice(key.as_bytes());
        k
    }

    pub fn dc(dc: u32) -> Vec<u8> {
        let mut k = vec![DC];
        k.extend_from_slice(&dc.to_be_bytes());
        k
    }

    pub fn item(sku: u32) -> Vec<u8> {
        let mut k = vec![ITEM];
        k.extend_from_slice(&sku.to_be_bytes());
        k
    }

    /// A stock key's first bytes name its DC: the rows of one DC, grouped in memory.
    pub const STOCK_GROUP_BYTES: usize = 5;

    /// Bytes of a stock key: `s`, DC, SKU.
    pub const STOCK_KEY_BYTES: usize = 9;
    /// Bytes of a stored [`super::StockRecord`] (two `i64`s in bincode).
    pub const STOCK_VALUE_BYTES: usize = 16;

    /// The stock rows' shape, which the store packs (`Store::keep_packed`): a compact table
    /// in memory, chunks of rows in sled.
    pub fn stock_packing() -> ordo_storage::PackSpec {
        ordo_storage::PackSpec {
            prefix: vec![STOCK],
            group: STOCK_GROUP_BYTES,
            key_len: STOCK_KEY_BYTES,
            value_len: STOCK_VALUE_BYTES,
        }
    }

    pub fn stock(dc: u32, sku: u32) -> Vec<u8> {
        let mut k = vec![STOCK];
        k.extend_from_slice(&dc.to_be_bytes());
        k.extend_from_slice(&sku.to_be_bytes());
        k
    }

    pub fn order(order_id: u64) -> Vec<u8> {
        let mut k = vec![ORDER];
        k.extend_from_slice(&order_id.to_be_bytes());
        k
    }

    pub fn dedupe(request_id: &str) -> Vec<u8> {
        let mut k = vec![DEDUPE];
        k.extend_from_slice(request_id.as_bytes());
        k
    }

    pub fn dedupe_by_time(time_ms: u64, request_id: &str) -> Vec<u8> {
        let mut k = vec![DEDUPE_BY_TIME];
        k.extend_from_slice(&time_ms.to_be_bytes());
        k.extend_from_slice(request_id.as_bytes());
        k
    }

    pub fn dedupe_list(time_ms: u64, epoch: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(17);
        k.push(DEDUPE_LIST);
        k.extend_from_slice(&time_ms.to_be_bytes());
        k.extend_from_slice(&epoch.to_be_bytes());
        k
    }

    pub fn order_list(epoch: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(9);
        k.push(ORDER_LIST);
        k.extend_from_slice(&epoch.to_be_bytes());
        k
    }

    /// The request id in a dedupe expiry key.
    pub fn request_id_of_time_key(key: &[u8]) -> Option<&[u8]> {
        key.get(9..)
    }

    pub fn dedupe_by_epoch(time_ms: u64, epoch: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(17);
        k.push(DEDUPE_BY_EPOCH);
        k.extend_from_slice(&time_ms.to_be_bytes());
        k.extend_from_slice(&epoch.to_be_bytes());
        k
    }

    /// The epoch in a per-epoch dedupe expiry key.
    pub fn epoch_of_dedupe_epoch_key(key: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(key.get(9..17)?.try_into().ok()?))
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("in-memory values always encode")
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store packs stock rows by these lengths: a write of another length would stop
    /// the node, so every key and record must have them.
    #[test]
    fn stock_keys_and_records_have_the_packed_lengths() {
        for (dc, sku) in [(0, 0), (1, 2), (u32::MAX, u32::MAX)] {
            assert_eq!(keys::stock(dc, sku).len(), keys::STOCK_KEY_BYTES);
        }
        for (on_hand, reserved) in [(0, 0), (i64::MAX, i64::MIN), (-1, 1)] {
            let record = StockRecord { on_hand, reserved };
            assert_eq!(encode(&record).len(), keys::STOCK_VALUE_BYTES);
        }
        let spec = keys::stock_packing();
        assert_eq!(spec.prefix, [keys::STOCK]);
        assert_eq!(spec.group, keys::STOCK_GROUP_BYTES);
    }
}
