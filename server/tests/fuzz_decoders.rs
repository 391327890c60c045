//! Fuzzing every decoder that takes bytes from the network: the client protos (prost), the
//! internal protos, the bincode payloads inside them (forwarded transactions, Raft messages,
//! snapshot data), and the records a replica reads back (dedupe entries). Inputs are arbitrary
//! bytes and valid encodings with bytes flipped, cut or spliced. A decoder may refuse its input;
//! it may not panic, hang or allocate without bound, and whatever decodes is then run through
//! the validator execution uses (which may refuse it, never panic).
//!
//! CI runs a few hundred cases per decoder. For a long run: `PROPTEST_CASES=200000 cargo test
//! --release -p ordo-server --test fuzz_decoders` (README: "Fuzzing the decoders").

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use ordo_proto::internal::v1 as internal;
use ordo_proto::v1;
use ordo_scheduler::validate::validate;
use ordo_scheduler::{DedupeRecord, KvOp, Line, Mode, Op, Txn};
use ordo_sequencer::network::{decode, encode};
use ordo_sequencer::TypeConfig;
use proptest::prelude::*;
use prost::Message;

/// A few valid transactions of every kind, to mutate.
fn seeds() -> Vec<Vec<Txn>> {
    let order = Txn {
        request_id: "r-1".into(),
        op: Op::PlaceOrder {
            lines: vec![
                Line {
                    dc: 1,
                    sku: 2,
                    qty: 3,
                },
                Line {
                    dc: 4,
                    sku: 5,
                    qty: 6,
                },
            ],
            mode: Mode::Partial,
            user: "u".into(),
        },
    };
    let kv = Txn {
        request_id: "r-2".into(),
        op: Op::Kv(vec![
            KvOp::Append("k".into(), 1),
            KvOp::Cas {
                key: "c".into(),
                from: 1,
                to: 2,
            },
        ]),
    };
    let transfer = Txn {
        request_id: "r-3".into(),
        op: Op::Transfer {
            sku: 1,
            from_dc: 1,
            to_dc: 2,
            qty: 5,
        },
    };
    vec![
        vec![order.clone(), kv.clone()],
        vec![transfer],
        vec![order, kv],
    ]
}

/// Bytes to feed: arbitrary, or a valid encoding mutated.
fn mutated(valid: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let arbitrary = proptest::collection::vec(any::<u8>(), 0..2048).boxed();
    let n = valid.len();
    let mutation = (
        0..n,
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        any::<usize>(),
        any::<bool>(),
    )
        .prop_map(move |(which, flips, cut, do_cut)| {
            let mut bytes = valid[which].clone();
            for (at, value) in flips {
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] = value;
                }
            }
            if do_cut && !bytes.is_empty() {
                bytes.truncate(cut % bytes.len());
            }
            bytes
        })
        .boxed();
    prop_oneof![arbitrary, mutation]
}

fn forward_payloads() -> Vec<Vec<u8>> {
    seeds().iter().map(|t| encode(t).unwrap()).collect()
}

/// Every client and internal proto message decodes arbitrary bytes or refuses them.
fn decode_protos(bytes: &[u8]) {
    macro_rules! each {
        ($($t:ty),* $(,)?) => { $( let _ = <$t>::decode(bytes); )* };
    }
    each!(
        v1::PlaceOrderRequest,
        v1::PlaceOrdersRequest,
        v1::RestockRequest,
        v1::TransferStockRequest,
        v1::UpsertDcRequest,
        v1::UpsertItemRequest,
        v1::TransactRequest,
        v1::GetAvailabilityRequest,
        v1::GetStockRequest,
        v1::GetOrderRequest,
        v1::ListOrdersRequest,
        v1::StatusRequest,
        v1::GetStateHashRequest,
        v1::InitClusterRequest,
        v1::AddMemberRequest,
        v1::RemoveMemberRequest,
        v1::SetClockFaultRequest,
        internal::ForwardRequest,
        internal::RaftPayload,
        internal::ReadIndexRequest,
    );
}

/// A forwarded batch: bincode `Vec<Txn>`, then the leader's validator.
fn decode_forward(bytes: &[u8]) {
    if let Ok(txns) = decode::<Vec<Txn>>(bytes) {
        for txn in &txns {
            let _ = validate(txn);
        }
    }
}

/// Raft messages as the peer service decodes them.
fn decode_raft(bytes: &[u8]) {
    let _ = decode::<AppendEntriesRequest<TypeConfig>>(bytes);
    let _ = decode::<VoteRequest<u64>>(bytes);
    let _ = decode::<InstallSnapshotRequest<TypeConfig>>(bytes);
}

proptest! {
    #[test]
    fn client_and_internal_protos(bytes in mutated(vec![
        v1::PlaceOrderRequest {
            request_id: "r".into(),
            lines: vec![v1::OrderLine { dc_id: 1, sku: 2, qty: 3 }],
            ..Default::default()
        }.encode_to_vec(),
        v1::TransactRequest {
            request_id: "t".into(),
            ops: vec![v1::KvOp { op: Some(v1::kv_op::Op::Read("k".into())) }],
        }.encode_to_vec(),
        internal::ForwardRequest { from_node: 1, txns: forward_payloads()[0].clone() }
            .encode_to_vec(),
    ])) {
        decode_protos(&bytes);
    }

    #[test]
    fn forwarded_transactions(bytes in mutated(forward_payloads())) {
        decode_forward(&bytes);
    }

    #[test]
    fn raft_payloads(bytes in mutated(vec![
        encode(&VoteRequest::<u64>::new(openraft::Vote::new(3, 1), None)).unwrap(),
        forward_payloads()[0].clone(),
    ])) {
        decode_raft(&bytes);
    }

    #[test]
    fn dedupe_records(bytes in mutated(vec![
        ordo_scheduler::encode(&DedupeRecord::new(
            5,
            &seeds()[0][1].op,
            &ordo_scheduler::TxnResult {
                request_id: "r-2".into(),
                epoch: 9,
                outcome: ordo_scheduler::Outcome::Kv { results: vec![None, None], abort: None },
            },
        )),
    ])) {
        let _ = DedupeRecord::decode(&bytes);
    }
}

proptest! {
    // Each case opens a store: fewer of them.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Snapshot data (what InstallSnapshot chunks add up to) into a real store: refused or
    /// imported, never a panic.
    #[test]
    fn snapshot_data(bytes in mutated(vec![export_of_a_small_store()])) {
        let dir = tempfile::tempdir().unwrap();
        let store = ordo_storage::Store::open(dir.path(), 3).unwrap();
        let _ = store.import_snapshot(&bytes);
    }
}

fn export_of_a_small_store() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let store = ordo_storage::Store::open(dir.path(), 3).unwrap();
    let mut writes = std::collections::BTreeMap::new();
    writes.insert(
        ordo_storage::Part::Region(1),
        vec![(b"k".to_vec(), Some(b"v".to_vec()))],
    );
    store
        .commit(ordo_storage::EpochCommit {
            stamp: Some(ordo_storage::EpochStamp {
                epoch: 1,
                time_ms: 1,
            }),
            writes,
            raft_meta: Vec::new(),
            feed: None,
        })
        .unwrap();
    store.export_snapshot().unwrap().1
}
