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
//! - [`exec`]: per-partition executors with the multi-partition read exchange.
//! - [`reads`]: point reads of applied state for the server edge.
//!
//! Must never depend on: a wall clock, randomness, hash-map iteration order or floating point
//! inside execution; openraft, gRPC or anything that does I/O other than the store.

pub mod exec;
pub mod lock;
pub mod model;
pub mod reads;

pub use exec::{execute_epoch, EpochOutput, ExecConfig, ExecError};
pub use model::*;
