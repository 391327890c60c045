//! Ordo's scheduler room: deterministic execution of epoch batches.
//!
//! In: an epoch number, its sequencer time and its batch of transactions (in log order), plus
//! read access to the partition stores as of the previous epoch. Out: the epoch's writes per
//! partition (for one atomic commit) and one result per transaction. Execution is a pure
//! function of those inputs: every replica that executes the same log reaches the same state
//! and the same state hash.
//!
//! - [`model`]: transactions, results, records and key encodings.
//! - [`lock`]: the deterministic lock manager (locks granted in log order).
//! - [`exec`]: one epoch's execution: segments, the overlay of pending writes; `prologue` what
//!   runs before its transactions; `route` where each transaction runs.
//! - `partition`: per-partition executors with the multi-partition read exchange.
//! - `decide`: the pure decision every participant of a transaction computes;
//!   `decide_holds` those of reservations; `fill` which nearby stores a split order takes from.
//! - [`holds`]: reservation state behind one interface (keys, sweep order, dead holds).
//! - [`feed`]: the change events each epoch emits beside its writes, for the Watch stream.
//! - [`reads`]: point reads of applied state for the server edge.
//! - [`subs`]: price-drop and back-in-stock subscriptions behind one interface.
//! - [`validate`]: the one validator of a transaction's shape (edge, leader and execution).
//!
//! Must never depend on: a wall clock, randomness, hash-map iteration order or floating point
//! inside execution; openraft, gRPC or anything that does I/O other than the store.

mod decide;
mod decide_holds;
pub mod exec;
pub mod feed;
mod fill;
pub mod held;
pub mod holds;
pub mod lock;
pub mod model;
mod partition;
mod prologue;
pub mod reads;
mod route;
pub mod subs;
pub mod validate;

pub use exec::{epoch_time_ms, execute_epoch, EpochOutput, ExecConfig, ExecError};
pub use model::*;
