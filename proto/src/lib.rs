//! Ordo's wire protocol: package `ordo.v1`.
//!
//! The `.proto` files under `proto/ordo/v1/` (this crate's `ordo/v1/`) are the contract; they are self-contained, so
//! any standard gRPC toolchain can generate a client from them. This crate holds the Rust
//! code generated from them (messages, tonic clients and servers) and the encoded file
//! descriptor set that the server offers through gRPC reflection. It depends on nothing
//! else in Ordo, and nothing here knows about storage, Raft or scheduling.

/// Generated code for package `ordo.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("ordo.v1");
}

/// Node-to-node RPCs (package `ordo.internal.v1`): Raft transport, forwarding, read index.
pub mod internal {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic, missing_docs)]
        tonic::include_proto!("ordo.internal.v1");
    }
}

/// The encoded `FileDescriptorSet` of the public `.proto` files (`ordo.v1`), for server
/// reflection on the client port. The internal package is not in it.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ordo_descriptor.bin"));

/// The trailer (response metadata) that tells a client whether a failed write may have been
/// applied. Only [`OUTCOME_NOT_APPLIED`] is sent: a definite failure (refused before it was
/// sequenced). A failed write without it may or may not have been applied.
pub const OUTCOME_METADATA_KEY: &str = "ordo-outcome";
/// See [`OUTCOME_METADATA_KEY`].
pub const OUTCOME_NOT_APPLIED: &str = "not-applied";

/// The metadata key a client sends on a write that retries an earlier attempt (any value).
/// The node then first looks the request id up in its dedupe table and answers a write it has
/// already applied without sequencing it again. Without it the write is sequenced, and
/// execution still answers a known request id from its dedupe entry: the key only picks the
/// cheaper path for each case.
pub const RETRY_METADATA_KEY: &str = "ordo-retry";

/// Orders one OrderStream has in flight at most: the node reads no further until one is
/// answered.
pub const ORDER_STREAM_IN_FLIGHT_MAX: usize = 1_024;

/// The metadata key of the cluster secret: on every peer call, and on the Admin calls that
/// change membership.
pub const SECRET_METADATA_KEY: &str = "ordo-cluster-secret";
