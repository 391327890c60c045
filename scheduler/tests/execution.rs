//! Execution tests against a real sled store: outcomes users see, and determinism.

use ordo_scheduler::*;
use ordo_storage::{EpochCommit, EpochStamp, Part, StateHash, Store};
use std::collections::BTreeMap;

const PARTITIONS: u32 = 3;

struct Node {
    _dir: tempfile::TempDir,
    store: Store,
    cfg: ExecConfig,
    epoch: u64,
}

impl Node {
    fn new(cfg: ExecConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), PARTITIONS).unwrap();
        Self {
            _dir: dir,
            store,
            cfg,
            epoch: 0,
        }
    }

    fn run(&mut self, txns: Vec<Txn>) -> Vec<TxnResult> {
        self.epoch += 1;
        let time_ms = 1_000 + self.epoch;
        let out = execute_epoch(&self.store, &self.cfg, self.epoch, time_ms, &txns).unwrap();
        self.store
            .commit(EpochCommit {
                stamp: Some(EpochStamp {
                    epoch: self.epoch,
                    time_ms,
                }),
                writes: out.writes,
                raft_meta: Vec::new(),
                feed: None,
            })
            .unwrap();
        out.results
    }

    /// Commits `writes` to `part` as an epoch of its own, with no transaction: data as a
    /// build from before would have left it.
    fn write_epoch(&mut self, part: Part, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) {
        self.epoch += 1;
        self.store
            .commit(EpochCommit {
                stamp: Some(EpochStamp {
                    epoch: self.epoch,
                    time_ms: 1_000 + self.epoch,
                }),
                writes: BTreeMap::from([(part, writes)]),
                raft_meta: Vec::new(),
                feed: None,
            })
            .unwrap();
    }

    fn hash(&self) -> StateHash {
        self.store.applied().state_hash
    }

    fn stock(&self, dc: u32, sku: u32) -> StockRecord {
        let record = reads::dc(&self.store, dc).unwrap().unwrap();
        reads::stock(&self.store, &record, sku).unwrap()
    }
}

fn txn(id: &str, op: Op) -> Txn {
    Txn {
        request_id: id.to_string(),
        op,
    }
}

fn order(id: &str, lines: &[(u32, u32, i64)], mode: Mode) -> Txn {
    txn(
        id,
        Op::PlaceOrder {
            lines: lines
                .iter()
                .map(|&(dc, sku, qty)| Line { dc, sku, qty })
                .collect(),
            mode,
            user: "u".into(),
        },
    )
}

/// DCs 1..=6 in regions 0,1,2,0,1,2; SKUs 1..=3; every DC starts with `stock` of each SKU.
fn seed(node: &mut Node, stock: i64) {
    let mut txns = Vec::new();
    for dc in 1..=6u32 {
        txns.push(txn(
            &format!("dc-{dc}"),
            Op::UpsertDc(DcRecord {
                dc,
                name: format!("DC {dc}"),
                lat_e6: 0,
                lon_e6: 0,
                region: (dc - 1) % 3,
                active: true,
            }),
        ));
    }
    for sku in 1..=3u32 {
        txns.push(txn(
            &format!("sku-{sku}"),
            Op::UpsertItem(ItemRecord {
                sku,
                name: format!("item {sku}"),
                price_cents: 100,
            }),
        ));
    }
    for dc in 1..=6u32 {
        for sku in 1..=3u32 {
            txns.push(txn(
                &format!("restock-{dc}-{sku}"),
                Op::Restock {
                    dc,
                    sku,
                    delta: stock,
                },
            ));
        }
    }
    let results = node.run(txns);
    assert!(results.iter().all(|r| r.outcome.rejection().is_none()));
}

fn committed(r: &TxnResult) -> bool {
    matches!(
        r.outcome,
        Outcome::Order {
            order_id: Some(_),
            ..
        }
    )
}

#[test]
fn flash_sale_in_one_epoch_commits_exactly_the_stock() {
    let mut node = Node::new(ExecConfig::default());
    seed(&mut node, 50);
    let txns: Vec<Txn> = (0..200)
        .map(|i| order(&format!("buyer-{i}"), &[(1, 1, 1)], Mode::AllOrNothing))
        .collect();
    let results = node.run(txns);
    assert_eq!(results.iter().filter(|r| committed(r)).count(), 50);
    // The first fifty in log order win, the rest are rejected with the reason.
    assert!(results[..50].iter().all(committed));
    let rejection = results[50].outcome.rejection().unwrap();
    assert_eq!(rejection.code, RejectCode::InsufficientStock);
    assert_eq!(
        (
            rejection.dc,
            rejection.sku,
            rejection.available,
            rejection.requested
        ),
        (1, 1, 0, 1)
    );
    assert_eq!(node.stock(1, 1).on_hand, 0);
}

#[test]
fn multi_partition_orders_commit_or_reject_as_a_whole() {
    let mut node = Node::new(ExecConfig::default());
    seed(&mut node, 10);
    // DC 1 is region 0, DC 2 region 1, DC 3 region 2.
    let txns = vec![
        order("a", &[(1, 1, 4), (2, 1, 4), (3, 1, 4)], Mode::AllOrNothing),
        order("b", &[(1, 1, 4), (2, 1, 7)], Mode::AllOrNothing), // dc 2 has 6 left: whole order rejected
        order("c", &[(2, 2, 1), (3, 2, 1)], Mode::AllOrNothing),
        order("d", &[(1, 1, 9), (3, 1, 9)], Mode::Partial), // gets 6 + 6
    ];
    let results = node.run(txns);
    assert!(committed(&results[0]));
    assert!(!committed(&results[1]));
    assert_eq!(
        node.stock(1, 1).on_hand,
        0,
        "a took 4, b nothing, d the last 6"
    );
    assert_eq!(node.stock(2, 1).on_hand, 6, "b's dc-2 line changed nothing");
    assert!(committed(&results[2]));
    match &results[3].outcome {
        Outcome::Order {
            lines,
            order_id: Some(_),
            ..
        } => {
            assert_eq!(
                lines.iter().map(|l| l.allocated).collect::<Vec<_>>(),
                vec![6, 6]
            );
        }
        other => panic!("partial order not committed: {other:?}"),
    }
    assert_eq!(node.stock(3, 1).on_hand, 0);
    // Conservation: every committed unit left stock exactly once.
    let taken: i64 = results
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Order {
                lines,
                order_id: Some(_),
                ..
            } => Some(lines.iter().map(|l| l.allocated).sum::<i64>()),
            _ => None,
        })
        .sum();
    let left: i64 = (1..=6)
        .flat_map(|dc| (1..=3).map(move |sku| (dc, sku)))
        .map(|(dc, sku)| node.stock(dc, sku).on_hand)
        .sum();
    assert_eq!(left + taken, 6 * 3 * 10);
}

#[test]
fn repeated_request_id_decrements_once_and_returns_the_first_result() {
    let mut node = Node::new(ExecConfig::default());
    seed(&mut node, 5);
    let results = node.run(vec![
        order("same", &[(1, 1, 2)], Mode::AllOrNothing),
        order("same", &[(1, 1, 2)], Mode::AllOrNothing),
    ]);
    assert_eq!(results[0], results[1]);
    let again = node.run(vec![order("same", &[(1, 1, 2)], Mode::AllOrNothing)]);
    assert_eq!(
        again[0], results[0],
        "a later retry gets the original result, epoch included"
    );
    assert_eq!(node.stock(1, 1).on_hand, 3);
}

#[test]
fn unknown_and_negative_are_rejected_deterministically() {
    let mut node = Node::new(ExecConfig::default());
    seed(&mut node, 5);
    let results = node.run(vec![
        order("x", &[(99, 1, 1)], Mode::AllOrNothing),
        order("y", &[(1, 99, 1)], Mode::AllOrNothing),
        txn(
            "z",
            Op::Restock {
                dc: 1,
                sku: 1,
                delta: -6,
            },
        ),
    ]);
    let codes: Vec<RejectCode> = results
        .iter()
        .map(|r| r.outcome.rejection().unwrap().code)
        .collect();
    assert_eq!(
        codes,
        vec![
            RejectCode::UnknownDc,
            RejectCode::UnknownSku,
            RejectCode::NegativeStock
        ]
    );
    assert_eq!(node.stock(1, 1).on_hand, 5);
}

#[test]
fn transfers_the_edge_would_refuse_are_rejected_not_applied() {
    let mut node = Node::new(ExecConfig::default());
    seed(&mut node, 5);
    let transfer = |id: &str, from_dc, to_dc, qty| {
        txn(
            id,
            Op::Transfer {
                sku: 1,
                from_dc,
                to_dc,
                qty,
            },
        )
    };
    let results = node.run(vec![
        transfer("same-dc", 1, 1, 2),
        transfer("negative", 1, 2, -2),
        transfer("too-much", 1, 2, 6),
        transfer("fine", 1, 2, 5),
    ]);
    // What the edge would refuse is refused by execution too, with the edge's reason.
    for r in &results[..2] {
        assert!(
            matches!(
                &r.outcome,
                Outcome::Refused {
                    code: RefuseCode::Invalid,
                    ..
                }
            ),
            "{r:?}"
        );
    }
    assert_eq!(
        results[2].outcome.rejection().map(|x| x.code),
        Some(RejectCode::InsufficientStock)
    );
    assert!(results[3].outcome.rejection().is_none());
    assert_eq!(node.stock(1, 1).on_hand, 0);
    assert_eq!(node.stock(2, 1).on_hand, 10);
}

fn mixed_workload(epoch: u64) -> Vec<Txn> {
    // A deterministic mix of single- and multi-partition orders, restocks and partials.
    (0..300u64)
        .map(|i| {
            let k = i.wrapping_mul(2654435761).wrapping_add(epoch * 7919);
            let dc = (k % 6) as u32 + 1;
            let dc2 = ((k / 6) % 6) as u32 + 1;
            let sku = ((k / 36) % 3) as u32 + 1;
            let id = format!("e{epoch}-t{i}");
            match k % 10 {
                0 => txn(&id, Op::Restock { dc, sku, delta: 3 }),
                1 | 2 if dc != dc2 => {
                    order(&id, &[(dc, sku, 2), (dc2, sku, 1)], Mode::AllOrNothing)
                }
                3 if dc != dc2 => order(&id, &[(dc, sku, 5), (dc2, sku, 5)], Mode::Partial),
                _ => order(&id, &[(dc, sku, 1)], Mode::AllOrNothing),
            }
        })
        .collect()
}

fn run_log(cfg: ExecConfig) -> (Vec<StateHash>, Vec<Vec<TxnResult>>) {
    let mut node = Node::new(cfg);
    seed(&mut node, 40);
    let mut hashes = vec![node.hash()];
    let mut results = Vec::new();
    for epoch in 0..6 {
        results.push(node.run(mixed_workload(epoch)));
        hashes.push(node.hash());
    }
    (hashes, results)
}

#[test]
fn same_log_under_different_thread_timings_gives_the_same_hashes() {
    let (base_hashes, base_results) = run_log(ExecConfig::default());
    for seed in [1u64, 7, 99] {
        let cfg = ExecConfig {
            timing_jitter_seed: Some(seed),
            ..ExecConfig::default()
        };
        let (hashes, results) = run_log(cfg);
        assert_eq!(
            hashes, base_hashes,
            "jitter seed {seed} changed a state hash"
        );
        assert_eq!(results, base_results, "jitter seed {seed} changed a result");
    }
    // Hashes move every epoch.
    for pair in base_hashes.windows(2) {
        assert_ne!(pair[0], pair[1]);
    }
}

#[test]
fn dedupe_entries_expire_after_the_window() {
    let mut node = Node::new(ExecConfig {
        dedupe_window_ms: 3,
        dedupe_window_epochs_min: 2,
        ..ExecConfig::default()
    });
    seed(&mut node, 5);
    node.run(vec![order("once", &[(1, 1, 1)], Mode::AllOrNothing)]);
    assert!(reads::dedupe(&node.store, "once").unwrap().is_some());
    for _ in 0..4 {
        node.run(vec![]);
    }
    assert!(
        reads::dedupe(&node.store, "once").unwrap().is_none(),
        "expired entry pruned"
    );
}

/// Every key under `prefix` in every partition.
fn keys_under(store: &Store, prefix: u8) -> Vec<Vec<u8>> {
    let mut parts = vec![Part::Global];
    parts.extend((0..store.partitions()).map(Part::Region));
    let mut out = Vec::new();
    for part in parts {
        for (k, _) in store.scan_prefix(part, &[prefix], usize::MAX).unwrap() {
            out.push(k.to_vec());
        }
    }
    out
}

#[test]
fn an_epochs_request_ids_expire_together_under_one_key_and_a_small_limit_holds() {
    let mut node = Node::new(ExecConfig {
        dedupe_window_ms: 3,
        dedupe_window_epochs_min: 2,
        dedupe_prune_max: 1,
        ..ExecConfig::default()
    });
    seed(&mut node, 100);
    for e in 0..3 {
        let txns = (0..6)
            .map(|i| {
                order(
                    &format!("o{e}-{i}"),
                    &[(1 + i % 3, 1, 1)],
                    Mode::AllOrNothing,
                )
            })
            .collect();
        node.run(txns);
    }
    // One list per partition and epoch that remembered ids, no key per request.
    let per_epoch = keys_under(&node.store, keys::DEDUPE_LIST);
    assert!(!per_epoch.is_empty());
    assert!(per_epoch.len() <= 4 * PARTITIONS as usize, "{per_epoch:?}");
    assert!(keys_under(&node.store, keys::DEDUPE_BY_TIME).is_empty());
    assert!(keys_under(&node.store, keys::DEDUPE_BY_EPOCH).is_empty());
    assert!(keys_under(&node.store, keys::DEDUPE).is_empty());
    // A retry inside the window is answered, from its list.
    let again = node.run(vec![order("o2-0", &[(1, 1, 1)], Mode::AllOrNothing)]);
    assert_eq!(again[0].epoch, 4);
    for _ in 0..30 {
        node.run(vec![]);
    }
    for e in 0..3 {
        for i in 0..6 {
            let id = format!("o{e}-{i}");
            assert!(reads::dedupe(&node.store, &id).unwrap().is_none(), "{id}");
        }
    }
    assert!(keys_under(&node.store, keys::DEDUPE_LIST).is_empty());
}

/// Where an epoch's dedupe list for `id` is: its partition, key and the record's bytes.
fn dedupe_list_of(node: &Node, id: &str) -> (Part, Vec<u8>, Vec<u8>) {
    for part in (0..PARTITIONS).map(Part::Region).chain([Part::Global]) {
        for (key, value) in node
            .store
            .scan_prefix(part, &[keys::DEDUPE_LIST], usize::MAX)
            .unwrap()
        {
            let list = ordo_storage::records::RecordList::parse(&value).unwrap();
            if let Some(record) = list.get(id.as_bytes()) {
                return (part, key.to_vec(), record.to_vec());
            }
        }
    }
    panic!("no dedupe list holds {id}");
}

/// Data written before the lists: a key per request id (`d`) with either expiry index, the
/// per-request one (`t`) or the per-epoch one (`T`). Both are still answered, and expire.
#[test]
fn request_ids_remembered_in_the_layouts_before_the_lists_are_answered_and_expire() {
    for per_epoch in [false, true] {
        let mut node = Node::new(ExecConfig {
            dedupe_window_ms: 3,
            dedupe_window_epochs_min: 2,
            ..ExecConfig::default()
        });
        seed(&mut node, 5);
        let first = node.run(vec![order("old", &[(1, 1, 1)], Mode::AllOrNothing)]);
        let (part, list_key, record) = dedupe_list_of(&node, "old");
        let time_ms = u64::from_be_bytes(list_key[1..9].try_into().unwrap());
        let expiry = match per_epoch {
            true => (
                keys::dedupe_by_epoch(time_ms, node.epoch),
                encode(&DedupeEpoch {
                    request_ids: vec!["old".into()],
                }),
            ),
            false => (keys::dedupe_by_time(time_ms, "old"), Vec::new()),
        };
        // Rewritten as an epoch of its own, with nothing else in it.
        node.write_epoch(
            part,
            vec![
                (list_key.clone(), None),
                (keys::dedupe("old"), Some(record)),
                (expiry.0, Some(expiry.1)),
            ],
        );
        assert!(node.store.get(part, &list_key).unwrap().is_none());
        let found = reads::dedupe(&node.store, "old").unwrap().unwrap();
        assert_eq!(found.result, first[0]);
        // A retry is answered from the old key, and changes nothing.
        let stock = node.stock(1, 1);
        let again = node.run(vec![order("old", &[(1, 1, 1)], Mode::AllOrNothing)]);
        assert_eq!(again, first);
        assert_eq!(node.stock(1, 1), stock);
        for _ in 0..6 {
            node.run(vec![]);
        }
        assert!(reads::dedupe(&node.store, "old").unwrap().is_none());
        assert!(keys_under(&node.store, keys::DEDUPE_BY_TIME).is_empty());
        assert!(keys_under(&node.store, keys::DEDUPE_BY_EPOCH).is_empty());
        assert!(keys_under(&node.store, keys::DEDUPE).is_empty());
    }
}

/// An epoch's orders are one list in each home partition, found by id and listed in id
/// order; orders from before the lists (a key each) are found and listed among them.
#[test]
fn orders_are_found_in_their_epochs_lists_and_beside_orders_kept_a_key_each() {
    let mut node = Node::new(ExecConfig::default());
    seed(&mut node, 100);
    let mut placed = Vec::new();
    for e in 0..3 {
        let txns = (0..5)
            .map(|i| {
                order(
                    &format!("p{e}-{i}"),
                    &[(1 + i % 6, 1, 1)],
                    Mode::AllOrNothing,
                )
            })
            .collect();
        placed.extend(node.run(txns));
    }
    let ids: Vec<u64> = placed
        .iter()
        .map(|r| match &r.outcome {
            Outcome::Order {
                order_id: Some(id), ..
            } => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids.len(), 15);
    let lists = keys_under(&node.store, keys::ORDER_LIST);
    assert!(lists.len() <= 3 * PARTITIONS as usize, "{lists:?}");
    assert!(keys_under(&node.store, keys::ORDER).is_empty());
    // One order moved to a key of its own, as data from before the lists holds it.
    let moved = ids[7];
    let record = reads::order(&node.store, moved).unwrap().unwrap();
    let (part, list_key, list) = (0..PARTITIONS)
        .map(Part::Region)
        .find_map(|p| {
            let key = keys::order_list(moved >> ORDER_SEQ_BITS);
            let value = node.store.get(p, &key).unwrap()?;
            let list = ordo_storage::records::RecordList::parse(&value).unwrap();
            list.get(&moved.to_be_bytes())?;
            let rest: Vec<(Vec<u8>, Vec<u8>)> = list
                .iter()
                .filter(|(id, _)| *id != moved.to_be_bytes())
                .map(|(id, r)| (id.to_vec(), r.to_vec()))
                .collect();
            Some((p, key, ordo_storage::records::encode(&rest)))
        })
        .unwrap();
    node.write_epoch(
        part,
        vec![
            (list_key, Some(list)),
            (keys::order(moved), Some(encode(&record))),
        ],
    );
    assert_eq!(reads::order(&node.store, moved).unwrap(), Some(record));
    for &id in &ids {
        assert_eq!(reads::order(&node.store, id).unwrap().unwrap().order_id, id);
    }
    assert_eq!(reads::order(&node.store, ids[14] + 1).unwrap(), None);
    // Listed in id order from any point, in pages of any size.
    for after in [0, ids[0], ids[6], ids[7], ids[13]] {
        for limit in [1, 2, 5, 100] {
            let listed: Vec<u64> = reads::orders_after(&node.store, after, limit)
                .unwrap()
                .iter()
                .map(|o| o.order_id)
                .collect();
            let expected: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|&id| id > after)
                .take(limit)
                .collect();
            assert_eq!(listed, expected, "after {after}, limit {limit}");
        }
    }
}

fn kv(id: &str, ops: Vec<KvOp>) -> Txn {
    txn(id, Op::Kv(ops))
}

#[test]
fn key_value_transactions_are_atomic_across_partitions() {
    let mut node = Node::new(ExecConfig::default());
    // Keys spread over the partitions by hash; find two in different ones.
    let a = "key-a".to_string();
    let b = (0..100)
        .map(|i| format!("key-b{i}"))
        .find(|k| kv_part(k, PARTITIONS) != kv_part(&a, PARTITIONS))
        .unwrap();
    let results = node.run(vec![
        kv(
            "t1",
            vec![KvOp::Write(a.clone(), 1), KvOp::Append(b.clone(), 10)],
        ),
        kv("t2", vec![KvOp::Read(a.clone()), KvOp::Read(b.clone())]),
        // Fails its cas: nothing of it happens, not even the append before it.
        kv(
            "t3",
            vec![
                KvOp::Append(b.clone(), 11),
                KvOp::Cas {
                    key: a.clone(),
                    from: 5,
                    to: 6,
                },
            ],
        ),
        kv(
            "t4",
            vec![
                KvOp::Cas {
                    key: a.clone(),
                    from: 1,
                    to: 2,
                },
                KvOp::Append(b.clone(), 12),
                KvOp::Read(b.clone()),
            ],
        ),
        kv("t5", vec![KvOp::Append(a.clone(), 1)]),
        kv(
            "t1",
            vec![KvOp::Write(a.clone(), 1), KvOp::Append(b.clone(), 10)],
        ),
    ]);
    let outcome = |i: usize| results[i].outcome.clone();
    assert_eq!(
        outcome(1),
        Outcome::Kv {
            results: vec![Some(KvValue::Int(1)), Some(KvValue::List(vec![10]))],
            abort: None
        }
    );
    match outcome(2) {
        Outcome::Kv {
            abort: Some(reason),
            ..
        } => assert_eq!(reason, "cas on key \"key-a\" expected 5, found 1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        outcome(3),
        Outcome::Kv {
            results: vec![None, None, Some(KvValue::List(vec![10, 12]))],
            abort: None
        }
    );
    match outcome(4) {
        Outcome::Kv {
            abort: Some(reason),
            ..
        } => assert!(reason.contains("holds an integer")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        results[5], results[0],
        "a repeated request id returns the first result"
    );
    let again = node.run(vec![kv(
        "t6",
        vec![KvOp::Read(a.clone()), KvOp::Read(b.clone())],
    )]);
    assert_eq!(
        again[0].outcome,
        Outcome::Kv {
            results: vec![Some(KvValue::Int(2)), Some(KvValue::List(vec![10, 12]))],
            abort: None
        }
    );
}

/// Runs one epoch at an explicit sequencer time.
fn run_at(node: &mut Node, time_ms: u64, txns: Vec<Txn>) -> Vec<TxnResult> {
    node.epoch += 1;
    let time_ms = epoch_time_ms(node.store.applied().time_ms, time_ms);
    let out = execute_epoch(&node.store, &node.cfg, node.epoch, time_ms, &txns).unwrap();
    node.store
        .commit(EpochCommit {
            stamp: Some(EpochStamp {
                epoch: node.epoch,
                time_ms,
            }),
            writes: out.writes,
            raft_meta: Vec::new(),
            feed: None,
        })
        .unwrap();
    out.results
}

#[test]
fn a_clock_stepped_forward_by_days_does_not_expire_request_ids() {
    let day_ms = 24 * 60 * 60 * 1000;
    let mut node = Node::new(ExecConfig {
        dedupe_window_ms: day_ms,
        dedupe_window_epochs_min: 100,
        ..ExecConfig::default()
    });
    seed(&mut node, 5);
    let first = run_at(
        &mut node,
        10_000,
        vec![order("retried", &[(1, 1, 1)], Mode::AllOrNothing)],
    );
    assert!(first[0].outcome.rejection().is_none());
    // The leader's clock leaps two days ahead; the next epochs carry that time.
    for i in 0..5 {
        run_at(&mut node, 10_000 + 2 * day_ms + i, vec![]);
    }
    let retry = run_at(
        &mut node,
        10_000 + 2 * day_ms + 10,
        vec![order("retried", &[(1, 1, 1)], Mode::AllOrNothing)],
    );
    assert_eq!(
        retry[0], first[0],
        "the retry is answered, not executed again"
    );
    assert_eq!(node.stock(1, 1).on_hand, 4, "one unit taken, once");
    // Once both windows have passed, the entry goes.
    for i in 0..100 {
        run_at(&mut node, 10_000 + 3 * day_ms + i, vec![]);
    }
    assert!(reads::dedupe(&node.store, "retried").unwrap().is_none());
}

#[test]
fn epoch_time_is_monotonic_and_bounded() {
    assert_eq!(epoch_time_ms(5, 3), 6);
    assert_eq!(epoch_time_ms(5, 50), 50);
    assert_eq!(epoch_time_ms(5, u64::MAX), exec::EPOCH_TIME_MS_MAX);
    assert_eq!(epoch_time_ms(u64::MAX - 1, 0), u64::MAX);
    assert_eq!(epoch_time_ms(u64::MAX, 0), u64::MAX);
}

#[test]
fn a_request_id_names_exactly_one_request() {
    let mut node = Node::new(ExecConfig::default());
    seed(&mut node, 5);
    let first = node.run(vec![order("id-1", &[(1, 1, 1)], Mode::AllOrNothing)]);
    // The same id with other bodies, the first line in another region, in the same epoch as
    // the same request again: only the identical body gets the first answer.
    let results = node.run(vec![
        order("id-1", &[(2, 1, 1)], Mode::AllOrNothing),
        txn(
            "id-1",
            Op::Restock {
                dc: 1,
                sku: 1,
                delta: 7,
            },
        ),
        order("id-1", &[(1, 1, 1)], Mode::AllOrNothing),
        order("id-2", &[(3, 2, 1)], Mode::AllOrNothing),
        order("id-2", &[(3, 2, 2)], Mode::AllOrNothing),
    ]);
    for i in [0, 1, 4] {
        assert!(
            matches!(
                &results[i].outcome,
                Outcome::Refused {
                    code: RefuseCode::IdReused,
                    ..
                }
            ),
            "{:?}",
            results[i]
        );
    }
    assert_eq!(results[2], first[0]);
    assert!(results[3].outcome.rejection().is_none());
    assert_eq!(node.stock(1, 1).on_hand, 4);
    assert_eq!(node.stock(2, 1).on_hand, 5);
    assert_eq!(node.stock(3, 2).on_hand, 4);
}

#[test]
fn a_dc_cannot_change_region_but_can_change_anything_else() {
    let mut node = Node::new(ExecConfig::default());
    seed(&mut node, 5);
    let mut dc = reads::dc(&node.store, 1).unwrap().unwrap();
    dc.region += 1;
    let moved = node.run(vec![txn("move", Op::UpsertDc(dc.clone()))]);
    assert!(
        matches!(
            &moved[0].outcome,
            Outcome::Refused {
                code: RefuseCode::RegionChange,
                ..
            }
        ),
        "{moved:?}"
    );
    dc.region -= 1;
    dc.active = false;
    dc.name = "renamed".into();
    let changed = node.run(vec![txn("rename", Op::UpsertDc(dc.clone()))]);
    assert_eq!(changed[0].outcome, Outcome::Upserted);
    assert_eq!(reads::dc(&node.store, 1).unwrap().unwrap(), dc);
    assert_eq!(
        node.stock(1, 1).on_hand,
        5,
        "the stock stayed where it lives"
    );
}

#[test]
fn pre_rejected_transactions_report_no_rows() {
    let mut node = Node::new(ExecConfig::default());
    seed(&mut node, 5);
    let results = node.run(vec![
        txn(
            "t",
            Op::Transfer {
                sku: 1,
                from_dc: 1,
                to_dc: 99,
                qty: 1,
            },
        ),
        txn(
            "r",
            Op::Restock {
                dc: 2,
                sku: 99,
                delta: 1,
            },
        ),
    ]);
    assert_eq!(
        results[0].outcome,
        Outcome::Transfer {
            from: StockRecord::default(),
            to: StockRecord::default(),
            rejection: Some(Rejection {
                code: RejectCode::UnknownDc,
                dc: 99,
                sku: 1,
                available: 0,
                requested: 1
            }),
        }
    );
    assert!(matches!(
        results[1].outcome,
        Outcome::Restock {
            stock: StockRecord {
                on_hand: 0,
                reserved: 0
            },
            rejection: Some(_)
        }
    ));
}

#[test]
fn the_partition_count_is_recorded_once_and_checked_on_apply() {
    let config = |id: &str, partitions| txn(id, Op::ClusterConfig { partitions });
    let mut node = Node::new(ExecConfig::default());
    let first = node.run(vec![config("c1", PARTITIONS)]);
    assert_eq!(first[0].outcome, Outcome::Upserted);
    // Another count later is refused, deterministically; the record stands.
    let other = node.run(vec![config("c2", PARTITIONS + 2)]);
    assert!(
        matches!(&other[0].outcome, Outcome::Refused { code: RefuseCode::Invalid, reason } if reason.contains("never changes")),
        "{other:?}"
    );
    let again = node.run(vec![config("c3", PARTITIONS)]);
    assert_eq!(again[0].outcome, Outcome::Upserted);

    // A replica with another count cannot execute the record: it stops, saying why.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), PARTITIONS + 2).unwrap();
    let err = execute_epoch(
        &store,
        &ExecConfig::default(),
        1,
        1,
        &[config("c1", PARTITIONS)],
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("the cluster has 3 partitions") && message.contains("--partitions 5"),
        "{message}"
    );
}

#[test]
fn an_epoch_of_appends_to_one_key_writes_that_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), PARTITIONS).unwrap();
    let txns: Vec<Txn> = (0..500)
        .map(|i| kv(&format!("a{i}"), vec![KvOp::Append("hot".into(), i)]))
        .collect();
    let out = execute_epoch(&store, &ExecConfig::default(), 1, 1, &txns).unwrap();
    let hot = keys::kv("hot");
    let writes_of_hot = out
        .writes
        .values()
        .flatten()
        .filter(|(k, _)| *k == hot)
        .count();
    assert_eq!(writes_of_hot, 1, "one value per key per epoch");
    let (_, value) = out
        .writes
        .values()
        .flatten()
        .find(|(k, _)| *k == hot)
        .unwrap();
    let list: KvValue = decode(value.as_ref().unwrap()).unwrap();
    assert_eq!(list, KvValue::List((0..500).collect()));
}

#[test]
fn dedupe_keeps_a_digest_of_what_a_transaction_read() {
    let mut node = Node::new(ExecConfig::default());
    let first = node.run(vec![kv(
        "r1",
        vec![KvOp::Append("l".into(), 1), KvOp::Read("l".into())],
    )]);
    assert_eq!(
        first[0].outcome,
        Outcome::Kv {
            results: vec![None, Some(KvValue::List(vec![1]))],
            abort: None
        }
    );
    let record = reads::dedupe(&node.store, "r1").unwrap().unwrap();
    assert!(record.reads_digest.is_some());
    assert_eq!(
        record.result.outcome,
        Outcome::Kv {
            results: vec![],
            abort: None
        },
        "the values read are not kept"
    );
    let again = node.run(vec![kv(
        "r1",
        vec![KvOp::Append("l".into(), 1), KvOp::Read("l".into())],
    )]);
    assert_eq!(again[0].outcome, record.result.outcome);
}

#[test]
fn notification_shards_each_read_their_own_range_of_a_sku_s_subscribers() {
    let mut node = Node::new(ExecConfig::default());
    let items = [7, 8].map(|sku| {
        txn(
            &format!("item-{sku}"),
            Op::UpsertItem(ItemRecord {
                sku,
                name: format!("item {sku}"),
                price_cents: 100,
            }),
        )
    });
    node.run(items.to_vec());
    let price_drop = subs::SubKind::PriceDrop { below_cents: None };
    let users: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let txns = users
        .iter()
        .map(|user| {
            txn(
                &format!("sub-{user}"),
                Op::Subscribe {
                    user: user.clone(),
                    sku: 7,
                    kind: price_drop.clone(),
                },
            )
        })
        .collect();
    for r in node.run(txns) {
        assert!(
            matches!(
                r.outcome,
                Outcome::Subscription {
                    record: Some(_),
                    rejection: None
                }
            ),
            "{r:?}"
        );
    }
    let tag = subs::SubTag::PriceDrop;
    let mut seen = Vec::new();
    for shard in 0..4 {
        // Pages of 7: every later page resumes after the last user of the one before.
        let mut shard_users = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page =
                reads::subscribers(&node.store, 7, tag, (shard, 4), after.as_deref(), 7).unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.user.clone());
            shard_users.extend(page.into_iter().map(|r| r.user));
        }
        assert!(!shard_users.is_empty(), "shard {shard} of 4 has users");
        assert!(shard_users.iter().all(|u| subs::user_shard(u, 4) == shard));
        seen.extend(shard_users);
    }
    seen.sort();
    let mut all = users.clone();
    all.sort();
    assert_eq!(seen, all, "the shards hold every subscriber once");
    // One shard of one: everyone; no other SKU's or kind's subscribers.
    let everyone = reads::subscribers(&node.store, 7, tag, (0, 1), None, 1000).unwrap();
    assert_eq!(everyone.len(), users.len());
    let back_in_stock = subs::SubTag::BackInStock;
    assert!(
        reads::subscribers(&node.store, 7, back_in_stock, (0, 1), None, 10)
            .unwrap()
            .is_empty()
    );
    assert!(reads::subscribers(&node.store, 8, tag, (0, 1), None, 10)
        .unwrap()
        .is_empty());
}

#[test]
fn a_store_with_subscriptions_in_the_first_layout_is_recognised() {
    let node = Node::new(ExecConfig::default());
    assert!(!reads::has_unbucketed_subscriptions(&node.store).unwrap());
    let mut key = vec![subs::key::SUBSCRIPTION_UNBUCKETED];
    key.extend_from_slice(&7u32.to_be_bytes());
    key.push(1);
    key.extend_from_slice(b"alice");
    node.store
        .commit(EpochCommit {
            stamp: Some(EpochStamp {
                epoch: 1,
                time_ms: 1_001,
            }),
            writes: [(ordo_storage::Part::Region(2), vec![(key, Some(vec![0]))])].into(),
            raft_meta: Vec::new(),
            feed: None,
        })
        .unwrap();
    assert!(reads::has_unbucketed_subscriptions(&node.store).unwrap());
}

#[test]
fn every_price_change_is_kept_in_the_history_also_two_in_one_epoch() {
    let mut node = Node::new(ExecConfig::default());
    seed(&mut node, 10);
    let set = |id: &str, cents: i64| {
        txn(
            id,
            Op::SetPrices(vec![PriceSet {
                sku: 2,
                price_cents: cents,
                currency: "EUR".into(),
            }]),
        )
    };

    // One epoch with one change, then one with two changes of the same SKU.
    let priced = |r: &TxnResult| matches!(r.outcome, Outcome::Priced { rejection: None });
    let first = node.run(vec![set("price-1", 150)]);
    assert!(priced(&first[0]), "{first:?}");
    let both = node.run(vec![set("price-2", 140), set("price-3", 130)]);
    assert!(both.iter().all(priced), "{both:?}");
    let history = reads::price_history(&node.store, 2, 0, 10).unwrap();
    let seen: Vec<(i64, &str)> = history
        .iter()
        .map(|p| (p.price_cents, p.request_id.as_str()))
        .collect();
    assert_eq!(
        seen,
        [(130, "price-3"), (140, "price-2"), (150, "price-1")],
        "newest first, both changes of the one epoch kept"
    );

    // A page of one ends at an epoch's edge: the whole last epoch comes, so paging on from
    // its epoch misses nothing.
    let page = reads::price_history(&node.store, 2, 0, 1).unwrap();
    assert_eq!(page.len(), 2, "the last epoch comes whole: {page:?}");
    let next = reads::price_history(&node.store, 2, page[1].epoch, 1).unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].request_id, "price-1");
}
