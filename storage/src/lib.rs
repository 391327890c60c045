//! Ordo's storage room: where bytes become durable.
//!
//! In: an epoch's writes per partition (from the scheduler, via the sequencer's state
//! machine) and Raft log entries (from openraft). Out: point reads and prefix scans of the
//! partition stores, the applied-epoch watermark, the chained BLAKE3 state hash, snapshot
//! exports, and a Raft log store that passes `openraft::testing::Suite`.
//!
//! - [`store::Store`]: sled, a keyspace per partition in one tree; each epoch's writes go to an
//!   overlay in memory at once and to sled behind it, many epochs per atomic batch (`behind.rs`).
//! - [`raft_log::LogStore`]: the segmented, checksummed, fsynced Raft log.
//! - [`hash`]: the state hash chain.
//! - [`records`]: record lists, many records in one value (an epoch's orders, its dedupe
//!   entries), found by their own keys; [`Store::keep_members`] indexes them.
//!
//! This crate deals in bytes: it must never depend on the scheduler's transaction model, on
//! the gRPC protocol or on the sequencer. It knows openraft only through the log-store traits.

// openraft's `StorageError` is large, and the trait signatures that return it are openraft's.
#![allow(clippy::result_large_err)]

mod behind;
pub mod hash;
mod packed;
pub mod raft_log;
pub mod records;
pub mod release;
mod space;
pub mod store;
mod view;

pub use behind::{APPLY_KEYS_MAX, PENDING_KEYS_MAX};
pub use hash::{hex, HashChain, StateHash};
pub use packed::{PackSpec, BLOCK_BITS};
pub use raft_log::LogStore;
pub use store::{
    Applied, EpochCommit, EpochStamp, ExportSink, FeedPage, FeedRetention, PacedFile, Part, Reader,
    SnapshotSource, Store, Write, DEFAULT_CACHE_BYTES, HASH_WINDOW_EPOCHS, PARTITIONS_MAX,
    SNAPSHOT_FORMAT, SNAPSHOT_ITEM_BYTES_MAX,
};
pub use view::{VIEWS_MAX, VIEW_KEYS_MAX};

/// Errors from the partition stores. Any of them stops the node: a replica must never handle
/// a storage failure differently from its peers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt store: {0}")]
    Corrupt(String),
    #[error("invariant broken: {0}")]
    Invariant(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
