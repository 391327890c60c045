//! The gRPC edge: the `Ordo` service.
//!
//! Every request is validated here, before anything is queued: a malformed request gets a
//! precise status (INVALID_ARGUMENT, NOT_FOUND, ...) and changes nothing. A valid write is
//! answered from this replica's execution of it; a request id seen before is answered from the
//! dedupe table without queueing anything.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ordo_proto::v1;
use ordo_proto::v1::ordo_server::Ordo;
use ordo_scheduler::{
    model, reads, validate, Line, Mode, Op, Outcome, Txn, TxnResult, ORDER_SEQ_BITS,
};
use ordo_sequencer::{Node, SubmitError, TxnFailure, Wait};
use tonic::{Request, Response, Status};

use crate::limits::Limits;

mod background;
mod encoded;
mod holds;
mod indexes;
mod nearby;
mod notifications;
mod order_stream;
mod outbox;
mod pacer;
mod prices;
mod read;
mod search;
mod split;
mod subscriptions;
mod watch;
mod writes;

pub use encoded::ClientPort;

pub struct OrdoService {
    node: Arc<Node>,
    limits: Limits,
    /// This node's execution settings: where the log records none yet, its values.
    exec: ordo_scheduler::ExecConfig,
    /// Key of server-generated request ids: 32 random bytes drawn at start-up. An id is the
    /// keyed BLAKE3 of a counter, so no caller can tell from ids it was given which ids
    /// other callers' writes will get (and claim them first with another body).
    generated_id_key: [u8; 32],
    generated_id_counter: AtomicU64,
    /// The nearby index of the DC table, rebuilt when the store's global version moves.
    nearby: std::sync::RwLock<Option<Arc<crate::geo::NearbyIndex>>>,
    /// The catalogue's keyword index, rebuilt like `nearby` (`indexes.rs`).
    search: std::sync::RwLock<Option<Arc<crate::search::SearchIndex>>>,
    /// Held while an index is rebuilt: one rebuild at a time, and readers that find the index
    /// stale wait for it rather than each building one.
    index_builds: tokio::sync::Mutex<()>,
    /// One permit per Watch stream (`Limits::watchers_max`).
    watchers: Arc<tokio::sync::Semaphore>,
    /// One permit per byte every feed stream's buffer may hold together
    /// (`Limits::streams_buffer_bytes_max`).
    stream_bytes: Arc<tokio::sync::Semaphore>,
    /// The node's fan-out rate, shared by every WatchNotifications stream
    /// (`Limits::notify_per_s`).
    fan_out: Arc<pacer::Pacer>,
    /// Becomes true when the node stops: Watch streams end so the server can.
    closing: tokio::sync::watch::Receiver<bool>,
    /// One permit per OrderStream ([`order_stream::ORDER_STREAMS_MAX`]).
    order_streams: Arc<tokio::sync::Semaphore>,
    /// This service, once it is shared ([`ClientPort::new`]): an OrderStream's task holds it.
    me: std::sync::OnceLock<std::sync::Weak<OrdoService>>,
}

/// How many times `run` queues a transaction that conflicted in its epoch (see
/// `RefuseCode::Conflict`) before it answers UNAVAILABLE.
const CONFLICT_ROUNDS_MAX: usize = 8;

pub(super) fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

impl OrdoService {
    /// What a new feed stream may buffer, and its largest message.
    fn stream_limits(&self) -> outbox::StreamLimits {
        outbox::StreamLimits::new(&self.limits, self.stream_bytes.clone())
    }

    /// Bytes the feed streams' buffers hold now, all together.
    pub fn stream_buffer_bytes(&self) -> usize {
        self.limits
            .streams_buffer_bytes_max
            .saturating_sub(self.stream_bytes.available_permits())
    }

    /// Watch and WatchNotifications streams open now.
    pub fn watchers_open(&self) -> usize {
        self.limits
            .watchers_max
            .saturating_sub(self.watchers.available_permits())
    }

    pub fn new(
        node: Arc<Node>,
        limits: Limits,
        exec: ordo_scheduler::ExecConfig,
        closing: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            exec,
            generated_id_key: crate::random::bytes("the key of request ids the node makes")?,
            node,
            watchers: Arc::new(tokio::sync::Semaphore::new(limits.watchers_max)),
            stream_bytes: Arc::new(tokio::sync::Semaphore::new(limits.streams_buffer_bytes_max)),
            fan_out: Arc::new(pacer::Pacer::new(limits.notify_per_s)),
            closing,
            limits,
            generated_id_counter: AtomicU64::new(0),
            nearby: std::sync::RwLock::new(None),
            search: std::sync::RwLock::new(None),
            index_builds: tokio::sync::Mutex::new(()),
            order_streams: Arc::new(tokio::sync::Semaphore::new(order_stream::ORDER_STREAMS_MAX)),
            me: std::sync::OnceLock::new(),
        })
    }

    fn request_id(&self, given: String, field: &str) -> Result<String, Status> {
        if given.is_empty() {
            let n = self.generated_id_counter.fetch_add(1, Ordering::Relaxed);
            let id = blake3::keyed_hash(&self.generated_id_key, &n.to_le_bytes());
            // 128 bits: `srv-` and 32 hex digits.
            return Ok(format!("srv-{}", crate::random::hex(&id.as_bytes()[..16])));
        }
        if given.len() > self.limits.request_id_bytes_max {
            return Err(Status::invalid_argument(format!(
                "{field}: request_id is {} bytes, the limit is {}",
                given.len(),
                self.limits.request_id_bytes_max
            )));
        }
        if let Some(bad) = given.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
            return Err(Status::invalid_argument(format!(
                "{field}: request_id may hold only printable ASCII without spaces; found byte 0x{bad:02x}"
            )));
        }
        Ok(given)
    }

    fn known_dc(&self, dc_id: u32, field: &str) -> Result<model::DcRecord, Status> {
        if dc_id == 0 {
            return Err(Status::invalid_argument(format!(
                "{field}: dc_id must be at least 1"
            )));
        }
        reads::dc(&self.node.store, dc_id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("{field}: unknown dc {dc_id}")))
    }

    fn known_sku(&self, sku: u32, field: &str) -> Result<(), Status> {
        if sku == 0 {
            return Err(Status::invalid_argument(format!(
                "{field}: sku must be at least 1"
            )));
        }
        reads::item(&self.node.store, sku)
            .map_err(internal)?
            .map(|_| ())
            .ok_or_else(|| Status::not_found(format!("{field}: unknown sku {sku}")))
    }

    /// Validates one order and turns it into a transaction.
    fn order_txn(&self, request: v1::PlaceOrderRequest, field: &str) -> Result<Txn, Status> {
        let request_id = self.request_id(request.request_id, field)?;
        self.user(&request.user, field)?;
        let mode = order_mode(request.mode, field)?;
        let lines = self.lines(&request.lines, field, false)?;
        Ok(Txn {
            request_id,
            op: Op::PlaceOrder {
                lines,
                mode,
                user: request.user,
            },
        })
    }

    fn user(&self, user: &str, field: &str) -> Result<(), Status> {
        if user.len() > self.limits.user_bytes_max {
            return Err(Status::invalid_argument(format!(
                "{field}: user is {} bytes, the limit is {}",
                user.len(),
                self.limits.user_bytes_max
            )));
        }
        Ok(())
    }

    /// Validates the lines of an order, a reservation or a confirm (`may_be_empty`: a
    /// confirm's, where none means every held unit).
    fn lines(
        &self,
        lines: &[v1::OrderLine],
        field: &str,
        may_be_empty: bool,
    ) -> Result<Vec<Line>, Status> {
        let limits = &self.limits;
        if lines.is_empty() && !may_be_empty {
            return Err(Status::invalid_argument(format!(
                "{field}: an order needs at least one line"
            )));
        }
        if lines.len() > limits.lines_per_order_max {
            return Err(Status::invalid_argument(format!(
                "{field}: {} lines, the limit is {} per order",
                lines.len(),
                limits.lines_per_order_max
            )));
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let at = format!("{field}.lines[{i}]");
            if line.qty <= 0 || line.qty > limits.qty_per_line_max {
                return Err(Status::invalid_argument(format!(
                    "{at}: qty must be between 1 and {}, not {}",
                    limits.qty_per_line_max, line.qty
                )));
            }
            if !seen.insert((line.dc_id, line.sku)) {
                return Err(Status::invalid_argument(format!(
                    "{at}: duplicate line for dc {} sku {}; merge the quantities into one line",
                    line.dc_id, line.sku
                )));
            }
            self.known_dc(line.dc_id, &at)?;
            self.known_sku(line.sku, &at)?;
            out.push(Line {
                dc: line.dc_id,
                sku: line.sku,
                qty: line.qty,
            });
        }
        Ok(out)
    }

    /// Answers transactions by queueing them (all or none) and waiting for this replica to
    /// execute them. Every transaction passes the validator execution uses before anything is
    /// queued. Execution answers a request id it has seen from its dedupe entry, and refuses
    /// one bound to another request (ALREADY_EXISTS). A `retry` (the caller sent
    /// [`ordo_proto::RETRY_METADATA_KEY`]) is first looked up in this replica's dedupe table,
    /// so a write already applied is answered without being sequenced again; a first attempt
    /// skips that read, which for a new request id finds nothing.
    async fn run(&self, txns: Vec<Txn>, retry: bool) -> Result<Vec<TxnResult>, Status> {
        let mut results: Vec<Option<TxnResult>> = Vec::with_capacity(txns.len());
        // Transactions to queue, with their place in `results`.
        let mut fresh: Vec<(usize, Txn)> = Vec::new();
        for (slot, txn) in txns.into_iter().enumerate() {
            validate::validate(&txn).map_err(|e| not_applied(Status::invalid_argument(e)))?;
            let known = if retry {
                reads::dedupe(&self.node.store, &txn.request_id).map_err(internal)?
            } else {
                None
            };
            match known {
                Some(record) if !record.same_body(&model::body_digest(&txn.op)) => {
                    return Err(not_applied(Status::already_exists(format!(
                        "request_id {:?} was already used for a different request (epoch {}); \
                         use a new request_id",
                        txn.request_id, record.result.epoch
                    ))));
                }
                Some(record) => results.push(Some(record.result)),
                None => {
                    fresh.push((slot, txn));
                    results.push(None);
                }
            }
        }
        // A reservation transaction whose cart or reservation changed in its epoch after it
        // was routed did nothing and was not remembered: it is queued again, a few times.
        // One deadline for every round: a write waits at most `request_timeout` in all.
        let deadline = tokio::time::Instant::now() + self.limits.request_timeout;
        let mut rounds = 0;
        while !fresh.is_empty() {
            rounds += 1;
            let txns: Vec<Txn> = fresh.iter().map(|(_, t)| t.clone()).collect();
            let waits = self.node.sequencer.submit(txns).map_err(|e| match e {
                SubmitError::QueueFull { .. } => {
                    not_applied(Status::resource_exhausted(e.to_string()))
                }
                SubmitError::ShuttingDown => not_applied(self.unavailable(e.to_string())),
            })?;
            let executed = self.wait_all(waits, deadline).await?;
            let mut again = Vec::new();
            for ((slot, txn), result) in fresh.into_iter().zip(executed) {
                let conflict = matches!(
                    result.outcome,
                    Outcome::Refused {
                        code: model::RefuseCode::Conflict,
                        ..
                    }
                );
                if conflict && rounds < CONFLICT_ROUNDS_MAX {
                    again.push((slot, txn));
                }
                results[slot] = Some(result);
            }
            fresh = again;
        }
        results
            .into_iter()
            .map(|r| {
                let r = r.ok_or_else(|| Status::internal("a transaction produced no result"))?;
                match refused(&r) {
                    Some(status) => Err(status),
                    None => Ok(r),
                }
            })
            .collect()
    }

    /// Waits for every result, until `deadline` at the latest.
    async fn wait_all(
        &self,
        waits: Vec<Wait>,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<TxnResult>, Status> {
        let waiters = self.node.sequencer.waiters().clone();
        let mut out = Vec::with_capacity(waits.len());
        let mut pending = waits.into_iter();
        while let Some(wait) = pending.next() {
            let outcome = tokio::time::timeout_at(deadline, wait.rx).await;
            let failure = match outcome {
                Ok(Ok(Ok(result))) => {
                    out.push(result);
                    continue;
                }
                Ok(Ok(Err(TxnFailure::Unavailable(why)))) => self.unavailable(format!(
                    "{why}; the request may or may not be applied: retry with the same request_id"
                )),
                Ok(Ok(Err(TxnFailure::Overloaded(why)))) => {
                    not_applied(Status::resource_exhausted(format!(
                        "{why}; retry later with the same request_id"
                    )))
                }
                Ok(Ok(Err(TxnFailure::NotApplied(why)))) => not_applied(self.unavailable(format!(
                    "{why}; the request was not applied: retry with the same request_id"
                ))),
                Ok(Ok(Err(TxnFailure::Invalid(why)))) => not_applied(Status::invalid_argument(why)),
                Ok(Err(_)) => {
                    self.unavailable("the node is shutting down; retry with the same request_id")
                }
                Err(_) => {
                    waiters.cancel(&wait.request_id, wait.id);
                    Status::deadline_exceeded(format!(
                        "no result within {} ms; the request may still be applied: retry with the same request_id",
                        self.limits.request_timeout.as_millis()
                    ))
                }
            };
            for rest in pending {
                waiters.cancel(&rest.request_id, rest.id);
            }
            return Err(failure);
        }
        Ok(out)
    }

    fn applied_epoch(&self) -> u64 {
        self.node.store.applied_epoch()
    }

    /// UNAVAILABLE, with the leader's address in `ordo-leader-addr` when this node knows a
    /// leader other than itself, so a client can go there instead.
    fn unavailable(&self, message: impl Into<String>) -> Status {
        let mut status = Status::unavailable(message);
        if let Some(addr) = self.leader_addr() {
            if let Ok(value) = addr.parse() {
                status.metadata_mut().insert("ordo-leader-addr", value);
            }
        }
        status
    }

    /// The client address of the leader when it is another node.
    fn leader_addr(&self) -> Option<String> {
        self.node.remote_leader().map(|(_, addr)| addr.client)
    }

    /// Makes a read wait until this node's state is as fresh as the request asks.
    async fn read_barrier(&self, consistency: i32, at_least_epoch: u64) -> Result<(), Status> {
        use v1::ReadConsistency as C;
        let mode = C::try_from(consistency).map_err(|_| {
            Status::invalid_argument(format!("unknown read consistency {consistency}"))
        })?;
        let mode = match mode {
            C::Unspecified if at_least_epoch > 0 => C::AtLeast,
            C::Unspecified => C::Local,
            other => other,
        };
        match mode {
            C::Local | C::Unspecified => Ok(()),
            C::AtLeast => self.wait_for_epoch(at_least_epoch).await,
            C::Linearizable => self.wait_for_read_index().await,
        }
    }

    /// An order or reservation id names its epoch: a replica that has not applied it yet but
    /// holds it in its log waits for it, so the record is found on any node right after it
    /// commits.
    async fn wait_for_id_epoch(&self, id: u64) -> Result<(), Status> {
        let epoch = id >> ORDER_SEQ_BITS;
        let last_log_index = self
            .node
            .raft
            .metrics()
            .borrow()
            .last_log_index
            .unwrap_or(0);
        if epoch > self.applied_epoch() && epoch <= last_log_index {
            self.wait_for_epoch(epoch).await?;
        }
        Ok(())
    }

    async fn wait_for_epoch(&self, epoch: u64) -> Result<(), Status> {
        let mut applied = self.node.applied_epoch.clone();
        let timeout = self.limits.request_timeout;
        let reached = tokio::time::timeout(timeout, applied.wait_for(|&e| e >= epoch))
            .await
            .is_ok_and(|r| r.is_ok());
        match reached {
            true => Ok(()),
            false => Err(self.unavailable(format!(
                "node {} has applied epoch {}, not yet {epoch}; retry, or read from another node",
                self.node.node_id,
                self.applied_epoch()
            ))),
        }
    }

    /// LINEARIZABLE: the leader confirms its leadership and names the log index to wait for
    /// (`ensure_linearizable` on the leader, the ReadIndex RPC from a follower); then this
    /// node waits until it has applied that far.
    async fn wait_for_read_index(&self) -> Result<(), Status> {
        let timeout = self.limits.request_timeout;
        let Some((_, leader)) = self.node.remote_leader() else {
            // This node leads (or thinks so: ensure_linearizable confirms it with a quorum and
            // waits until this node has applied the read index).
            tokio::time::timeout(timeout, self.node.raft.ensure_linearizable())
                .await
                .map_err(|_| self.unavailable("leadership not confirmed in time"))?
                .map_err(|e| self.unavailable(format!("cannot serve a linearizable read: {e}")))?;
            return Ok(());
        };
        let mut client = self
            .node
            .channels
            .raft_client(&leader.peer)
            .map_err(Status::unavailable)?;
        let call = client.read_index(ordo_proto::internal::v1::ReadIndexRequest {});
        let read_index = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| self.unavailable("the leader did not answer the read index in time"))?
            .map_err(|s| self.unavailable(format!("read index from the leader: {}", s.message())))?
            .into_inner()
            .read_index;
        self.node
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(read_index), "linearizable read")
            .await
            .map_err(|_| {
                self.unavailable(format!(
                    "node {} did not apply up to the read index {read_index} in time",
                    self.node.node_id
                ))
            })?;
        Ok(())
    }
}

/// An order's or a reservation's mode.
fn order_mode(mode: i32, field: &str) -> Result<Mode, Status> {
    match v1::OrderMode::try_from(mode) {
        Ok(v1::OrderMode::Unspecified | v1::OrderMode::AllOrNothing) => Ok(Mode::AllOrNothing),
        Ok(v1::OrderMode::Partial) => Ok(Mode::Partial),
        Err(_) => Err(Status::invalid_argument(format!(
            "{field}: unknown order mode {mode}"
        ))),
    }
}

/// Whether the caller says this call retries an earlier attempt
/// ([`ordo_proto::RETRY_METADATA_KEY`]). Any value counts; a client that lies only moves its
/// own request between the dedupe read at the edge and the one in execution.
pub(super) fn is_retry<T>(request: &Request<T>) -> bool {
    request
        .metadata()
        .contains_key(ordo_proto::RETRY_METADATA_KEY)
}

/// Marks a failure as definite: the request was refused before it could be sequenced, so it
/// will never be applied (trailer `ordo-outcome: not-applied`). Any other failure of a write
/// may or may not have been applied.
fn not_applied(mut status: Status) -> Status {
    status.metadata_mut().insert(
        ordo_proto::OUTCOME_METADATA_KEY,
        tonic::metadata::MetadataValue::from_static(ordo_proto::OUTCOME_NOT_APPLIED),
    );
    status
}

/// Marks a write's failure as definite when its code says the request itself was refused
/// (nothing of it was queued); other failures keep whatever trailer they carry.
fn mark_definite(status: Status) -> Status {
    match status.code() {
        tonic::Code::InvalidArgument
        | tonic::Code::NotFound
        | tonic::Code::AlreadyExists
        | tonic::Code::FailedPrecondition
        | tonic::Code::OutOfRange => not_applied(status),
        _ => status,
    }
}

/// The status of a transaction that execution refused outright; `None` for any other result.
/// Such a transaction changed nothing, on any replica.
fn refused(result: &TxnResult) -> Option<Status> {
    let Outcome::Refused { code, reason } = &result.outcome else {
        return None;
    };
    let status = match code {
        model::RefuseCode::Invalid => Status::invalid_argument(reason.clone()),
        model::RefuseCode::IdReused => Status::already_exists(reason.clone()),
        model::RefuseCode::RegionChange => Status::failed_precondition(reason.clone()),
        // Only after `run` resubmitted it several times: nothing was applied.
        model::RefuseCode::Conflict => Status::unavailable(format!(
            "{reason} (it kept conflicting); retry with the same request_id"
        )),
    };
    Some(not_applied(status))
}

#[tonic::async_trait]
impl Ordo for OrdoService {
    async fn place_order(
        &self,
        request: Request<v1::PlaceOrderRequest>,
    ) -> Result<Response<v1::PlaceOrderResponse>, Status> {
        self.place_order_unmarked(request)
            .await
            .map_err(mark_definite)
    }

    async fn place_orders(
        &self,
        request: Request<v1::PlaceOrdersRequest>,
    ) -> Result<Response<v1::PlaceOrdersResponse>, Status> {
        self.place_orders_unmarked(request)
            .await
            .map_err(mark_definite)
    }

    async fn restock(
        &self,
        request: Request<v1::RestockRequest>,
    ) -> Result<Response<v1::RestockResponse>, Status> {
        self.restock_unmarked(request).await.map_err(mark_definite)
    }

    async fn restocks(
        &self,
        request: Request<v1::RestocksRequest>,
    ) -> Result<Response<v1::RestocksResponse>, Status> {
        self.restocks_unmarked(request).await.map_err(mark_definite)
    }

    async fn restock_dc(
        &self,
        request: Request<v1::RestockDcRequest>,
    ) -> Result<Response<v1::RestockDcResponse>, Status> {
        self.restock_dc_unmarked(request)
            .await
            .map_err(mark_definite)
    }

    async fn transfer_stock(
        &self,
        request: Request<v1::TransferStockRequest>,
    ) -> Result<Response<v1::TransferStockResponse>, Status> {
        self.transfer_stock_unmarked(request)
            .await
            .map_err(mark_definite)
    }

    async fn upsert_dc(
        &self,
        request: Request<v1::UpsertDcRequest>,
    ) -> Result<Response<v1::UpsertDcResponse>, Status> {
        self.upsert_dc_unmarked(request)
            .await
            .map_err(mark_definite)
    }

    async fn upsert_item(
        &self,
        request: Request<v1::UpsertItemRequest>,
    ) -> Result<Response<v1::UpsertItemResponse>, Status> {
        self.upsert_item_unmarked(request)
            .await
            .map_err(mark_definite)
    }

    async fn transact(
        &self,
        request: Request<v1::TransactRequest>,
    ) -> Result<Response<v1::TransactResponse>, Status> {
        self.transact_unmarked(request).await.map_err(mark_definite)
    }

    async fn reserve(
        &self,
        request: Request<v1::ReserveRequest>,
    ) -> Result<Response<v1::ReserveResponse>, Status> {
        self.reserve_unmarked(request).await.map_err(mark_definite)
    }

    async fn confirm_reservation(
        &self,
        request: Request<v1::ConfirmReservationRequest>,
    ) -> Result<Response<v1::ConfirmReservationResponse>, Status> {
        self.confirm_reservation_unmarked(request)
            .await
            .map_err(mark_definite)
    }

    async fn cancel_reservation(
        &self,
        request: Request<v1::CancelReservationRequest>,
    ) -> Result<Response<v1::CancelReservationResponse>, Status> {
        self.cancel_reservation_unmarked(request)
            .await
            .map_err(mark_definite)
    }

    async fn extend_reservation(
        &self,
        request: Request<v1::ExtendReservationRequest>,
    ) -> Result<Response<v1::ExtendReservationResponse>, Status> {
        self.extend_reservation_unmarked(request)
            .await
            .map_err(mark_definite)
    }

    async fn get_reservation(
        &self,
        request: Request<v1::GetReservationRequest>,
    ) -> Result<Response<v1::GetReservationResponse>, Status> {
        self.get_reservation_inner(request).await
    }

    async fn list_reservations(
        &self,
        request: Request<v1::ListReservationsRequest>,
    ) -> Result<Response<v1::ListReservationsResponse>, Status> {
        self.list_reservations_inner(request).await
    }

    async fn find_nearby_dcs(
        &self,
        request: Request<v1::FindNearbyDcsRequest>,
    ) -> Result<Response<v1::FindNearbyDcsResponse>, Status> {
        self.find_nearby_dcs_inner(request).await
    }

    async fn get_nearby_availability(
        &self,
        request: Request<v1::GetNearbyAvailabilityRequest>,
    ) -> Result<Response<v1::GetNearbyAvailabilityResponse>, Status> {
        self.get_nearby_availability_inner(request).await
    }

    async fn place_order_nearby(
        &self,
        request: Request<v1::PlaceOrderNearbyRequest>,
    ) -> Result<Response<v1::PlaceOrderNearbyResponse>, Status> {
        self.place_order_nearby_unmarked(request)
            .await
            .map_err(mark_definite)
    }

    async fn reserve_nearby(
        &self,
        request: Request<v1::ReserveNearbyRequest>,
    ) -> Result<Response<v1::ReserveNearbyResponse>, Status> {
        self.reserve_nearby_unmarked(request)
            .await
            .map_err(mark_definite)
    }

    async fn search_items(
        &self,
        request: Request<v1::SearchItemsRequest>,
    ) -> Result<Response<v1::SearchItemsResponse>, Status> {
        self.search_items_inner(request).await
    }

    async fn list_orders(
        &self,
        request: Request<v1::ListOrdersRequest>,
    ) -> Result<Response<v1::ListOrdersResponse>, Status> {
        self.list_orders_inner(request).await
    }

    async fn get_stock(
        &self,
        request: Request<v1::GetStockRequest>,
    ) -> Result<Response<v1::GetStockResponse>, Status> {
        self.get_stock_inner(request).await
    }

    async fn get_order(
        &self,
        request: Request<v1::GetOrderRequest>,
    ) -> Result<Response<v1::GetOrderResponse>, Status> {
        self.get_order_inner(request).await
    }

    async fn get_availability(
        &self,
        request: Request<v1::GetAvailabilityRequest>,
    ) -> Result<Response<v1::GetAvailabilityResponse>, Status> {
        self.get_availability_inner(request).await
    }

    async fn set_price(
        &self,
        request: Request<v1::SetPriceRequest>,
    ) -> Result<Response<v1::SetPriceResponse>, Status> {
        self.set_price_unmarked(request)
            .await
            .map_err(mark_definite)
    }

    async fn set_prices(
        &self,
        request: Request<v1::SetPricesRequest>,
    ) -> Result<Response<v1::SetPricesResponse>, Status> {
        self.set_prices_unmarked(request)
            .await
            .map_err(mark_definite)
    }

    async fn get_price_history(
        &self,
        request: Request<v1::GetPriceHistoryRequest>,
    ) -> Result<Response<v1::GetPriceHistoryResponse>, Status> {
        self.get_price_history_inner(request).await
    }

    type OrderStreamStream = order_stream::OrderReplies;

    async fn order_stream(
        &self,
        request: Request<tonic::Streaming<v1::PlaceOrderRequest>>,
    ) -> Result<Response<Self::OrderStreamStream>, Status> {
        self.order_stream_inner(request)
    }

    type WatchStream = watch::WatchStream;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let response = self.watch_inner(request).await?;
        Ok(response.map(encoded::decoded))
    }

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<v1::SubscribeResponse>, Status> {
        self.subscribe_unmarked(request)
            .await
            .map_err(mark_definite)
    }

    async fn unsubscribe(
        &self,
        request: Request<v1::UnsubscribeRequest>,
    ) -> Result<Response<v1::UnsubscribeResponse>, Status> {
        self.unsubscribe_unmarked(request)
            .await
            .map_err(mark_definite)
    }

    async fn list_subscriptions(
        &self,
        request: Request<v1::ListSubscriptionsRequest>,
    ) -> Result<Response<v1::ListSubscriptionsResponse>, Status> {
        self.list_subscriptions_inner(request).await
    }

    type WatchNotificationsStream = notifications::NotificationStream;

    async fn watch_notifications(
        &self,
        request: Request<v1::WatchNotificationsRequest>,
    ) -> Result<Response<Self::WatchNotificationsStream>, Status> {
        let response = self.watch_notifications_inner(request).await?;
        Ok(response.map(encoded::decoded))
    }
}
