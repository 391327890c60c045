//! The edge's limits on what one request may ask for. Each has a name and a default; a request
//! over a limit is refused with INVALID_ARGUMENT (or OUT_OF_RANGE for message size) and
//! changes nothing.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Limits {
    pub lines_per_order_max: usize,
    pub qty_per_line_max: i64,
    pub orders_per_call_max: usize,
    pub request_id_bytes_max: usize,
    pub user_bytes_max: usize,
    pub name_bytes_max: usize,
    pub restock_delta_max: i64,
    pub price_cents_max: i64,
    pub availability_dcs_max: usize,
    pub availability_skus_max: usize,
    pub kv_ops_per_txn_max: usize,
    pub kv_key_bytes_max: usize,
    /// Orders in one ListOrders page (at 100 lines an order, 1,000 orders stay under 4 MiB).
    pub list_orders_max: usize,
    /// The largest gRPC message the server accepts or sends.
    pub message_bytes_max: usize,
    /// How long a write waits for its result before DEADLINE_EXCEEDED.
    pub request_timeout: Duration,
    /// Reservations in one ListReservations page.
    pub list_reservations_max: usize,
    /// Watch streams one node serves at once (`--watchers-max`); more get RESOURCE_EXHAUSTED.
    pub watchers_max: usize,
    /// Messages one Watch or WatchNotifications stream buffers (`--watch-buffer-messages`).
    pub watch_buffer_messages: usize,
    /// Bytes one such stream buffers (`--watch-buffer-bytes`): at least the largest message a
    /// stream sends (`edge::outbox::STREAM_MESSAGE_BYTES_MAX`).
    pub watch_buffer_bytes: usize,
    /// Bytes every stream of the node buffers together (`--streams-buffer-bytes-max`).
    pub streams_buffer_bytes_max: usize,
    /// The stall window (`--watch-stall-ms`): while a stream is backed up, its consumer must
    /// take a quarter of what waits for it in every window, or the stream ends with
    /// RESOURCE_EXHAUSTED and a resume token.
    pub watch_stall: Duration,
    /// Subscriptions per second this node's WatchNotifications streams read, all together
    /// (`--notify-rate`; 0: unpaced). See `edge::pacer`.
    pub notify_per_s: u64,
}

impl Default for Limits {
    /// The limits on a transaction's shape are execution's ([`ordo_scheduler::validate`]): the
    /// edge refuses with field-precise messages what execution would refuse anyway.
    fn default() -> Self {
        use ordo_scheduler::validate as v;
        Self {
            lines_per_order_max: v::LINES_PER_ORDER_MAX,
            qty_per_line_max: v::QTY_PER_LINE_MAX,
            orders_per_call_max: 1_000,
            request_id_bytes_max: v::REQUEST_ID_BYTES_MAX,
            user_bytes_max: v::USER_BYTES_MAX,
            name_bytes_max: v::NAME_BYTES_MAX,
            restock_delta_max: v::RESTOCK_DELTA_MAX,
            price_cents_max: v::PRICE_CENTS_MAX,
            availability_dcs_max: 100,
            availability_skus_max: 1_000,
            kv_ops_per_txn_max: v::KV_OPS_PER_TXN_MAX,
            kv_key_bytes_max: v::KV_KEY_BYTES_MAX,
            list_orders_max: 1_000,
            message_bytes_max: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            list_reservations_max: 1_000,
            watchers_max: 1_024,
            watch_buffer_messages: 256,
            watch_buffer_bytes: 4 * 1024 * 1024,
            streams_buffer_bytes_max: 256 * 1024 * 1024,
            watch_stall: Duration::from_secs(10),
            notify_per_s: 250_000,
        }
    }
}
