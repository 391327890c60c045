//! Ordo's sequencer room: agreeing on the order of transactions.
//!
//! In: transactions from the server edge. Out: epoch batches committed through openraft (one
//! Raft entry per batch, one fsync per batch) and applied, in log order, by the state machine,
//! which drives the scheduler and the partition stores and hands each result to the client
//! waiting for it.
//!
//! - [`types`]: the openraft type configuration.
//! - [`batcher`]: the bounded queue and the epoch batcher.
//! - [`state_machine`]: openraft's state machine over the scheduler and stores.
//! - [`snapshot_data`]: openraft's snapshot data, a file read and written by position.
//! - [`waiters`]: clients waiting for results.
//! - [`network`]: the Raft network over tonic (`ordo.internal.v1.Raft`), one lazy channel a peer.
//! - [`raft_service`]: the server side of that service: Raft messages, forwarded batches,
//!   read index.
//! - [`peers`]: member addresses (peer and client listeners) and the cluster secret.
//! - [`node`]: the wiring of one node.
//!
//! Must never depend on: the client-facing gRPC API (`ordo.v1` is the server's), nor let this
//! node's clock or thread timing reach execution (only the batch's `time_ms` does).

// openraft's `StorageError` is large, and the trait signatures that return it are openraft's.
#![allow(clippy::result_large_err)]

pub mod batcher;
pub mod network;
pub mod node;
pub mod peers;
pub mod raft_service;
pub mod snapshot_data;
pub mod state_machine;
pub mod types;
pub mod waiters;

pub use batcher::{system_clock, Clock, Sequencer, SequencerConfig, SubmitError};
pub use node::{InitOutcome, Node, NodeConfig, StartError, RESTORED_MARKER};
pub use types::*;
pub use waiters::{TxnFailure, TxnOutcome, Wait, Waiters};
