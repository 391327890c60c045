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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            lines_per_order_max: 100,
            qty_per_line_max: 1_000_000,
            orders_per_call_max: 1_000,
            request_id_bytes_max: 128,
            user_bytes_max: 128,
            name_bytes_max: 256,
            restock_delta_max: 1_000_000_000,
            price_cents_max: 1_000_000_000_000,
            availability_dcs_max: 100,
            availability_skus_max: 1_000,
            kv_ops_per_txn_max: 64,
            kv_key_bytes_max: 128,
            list_orders_max: 1_000,
            message_bytes_max: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
        }
    }
}
