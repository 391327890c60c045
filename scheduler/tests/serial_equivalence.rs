//! Property: the partitioned, lock-managed executor gives exactly the results and the final
//! stock of the simplest possible model, one that applies every transaction alone, in log
//! order. Random workloads (seeded, so a failure reproduces) mix single- and multi-partition
//! orders, partial orders, restocks and retries (the same request again, same request id),
//! and transactions only the internal path can deliver: inadmissible ones (zero or negative
//! quantities, a transfer to the same DC, duplicate lines), ones naming unknown DCs or SKUs,
//! and request ids reused for a different request.

use std::collections::BTreeMap;

mod common;

use common::{dataset, Rng};
use ordo_scheduler::*;
use ordo_storage::{EpochCommit, EpochStamp, Store};

const DCS: u32 = 8;
const SKUS: u32 = 4;

/// The reference: a map of stock and a map of remembered results, nothing else.
#[derive(Default)]
struct Model {
    stock: BTreeMap<(u32, u32), i64>,
    seen: BTreeMap<String, (Op, Outcome)>,
}

/// A DC and a SKU that do not exist.
const UNKNOWN: u32 = 99;

impl Model {
    fn apply(&mut self, txn: &Txn, epoch: u64, seq: usize) -> Outcome {
        // The cluster record bypasses dedupe: it is idempotent by itself.
        if let Op::ClusterConfig { .. } = txn.op {
            return Outcome::Upserted;
        }
        if let Some((op, outcome)) = self.seen.get(&txn.request_id) {
            if *op != txn.op {
                return Outcome::Refused {
                    code: RefuseCode::IdReused,
                    reason: String::new(),
                };
            }
            return outcome.clone();
        }
        if validate::validate(txn).is_err() {
            let outcome = Outcome::Refused {
                code: RefuseCode::Invalid,
                reason: String::new(),
            };
            self.seen
                .insert(txn.request_id.clone(), (txn.op.clone(), outcome.clone()));
            return outcome;
        }
        // Unknown DCs and SKUs are known from the global tables alone; nothing is read.
        let pairs: Vec<(u32, u32, i64)> = match &txn.op {
            Op::PlaceOrder { lines, .. } => lines.iter().map(|l| (l.dc, l.sku, l.qty)).collect(),
            Op::Restock { dc, sku, delta } => vec![(*dc, *sku, *delta)],
            Op::Transfer {
                sku,
                from_dc,
                to_dc,
                qty,
            } => vec![(*from_dc, *sku, *qty), (*to_dc, *sku, *qty)],
            _ => vec![],
        };
        let unknown = pairs.iter().find_map(|&(dc, sku, qty)| {
            let code = if dc == UNKNOWN {
                RejectCode::UnknownDc
            } else if sku == UNKNOWN {
                RejectCode::UnknownSku
            } else {
                return None;
            };
            Some(Rejection {
                code,
                dc,
                sku,
                available: 0,
                requested: qty,
            })
        });
        if let Some(rejection) = unknown {
            let outcome = match &txn.op {
                Op::PlaceOrder { .. } => Outcome::Order {
                    order_id: None,
                    lines: vec![],
                    rejection: Some(rejection),
                },
                Op::Restock { .. } => Outcome::Restock {
                    stock: StockRecord::default(),
                    rejection: Some(rejection),
                },
                _ => Outcome::Transfer {
                    from: StockRecord::default(),
                    to: StockRecord::default(),
                    rejection: Some(rejection),
                },
            };
            self.seen
                .insert(txn.request_id.clone(), (txn.op.clone(), outcome.clone()));
            return outcome;
        }
        let outcome = match &txn.op {
            Op::PlaceOrder { lines, mode, .. } => {
                let mut next = self.stock.clone();
                let mut allocs = Vec::new();
                let mut short = None;
                for l in lines {
                    let have = next.entry((l.dc, l.sku)).or_default();
                    let got = match mode {
                        Mode::AllOrNothing if *have < l.qty => 0,
                        Mode::AllOrNothing => l.qty,
                        Mode::Partial => l.qty.min(*have),
                    };
                    if got < l.qty && short.is_none() {
                        short = Some((l.dc, l.sku, *have, l.qty));
                    }
                    allocs.push(LineAlloc {
                        dc: l.dc,
                        sku: l.sku,
                        requested: l.qty,
                        allocated: got,
                        available: *have,
                    });
                    *have -= got;
                }
                let total: i64 = allocs.iter().map(|a| a.allocated).sum();
                let rejected = match mode {
                    Mode::AllOrNothing => short.is_some(),
                    Mode::Partial => total == 0,
                };
                if rejected {
                    let (dc, sku, available, requested) = short.unwrap();
                    allocs.iter_mut().for_each(|a| a.allocated = 0);
                    Outcome::Order {
                        order_id: None,
                        lines: allocs,
                        rejection: Some(Rejection {
                            code: RejectCode::InsufficientStock,
                            dc,
                            sku,
                            available,
                            requested,
                        }),
                    }
                } else {
                    self.stock = next;
                    Outcome::Order {
                        order_id: Some((epoch << ORDER_SEQ_BITS) | seq as u64),
                        lines: allocs,
                        rejection: None,
                    }
                }
            }
            Op::Restock { dc, sku, delta } => {
                let have = self.stock.entry((*dc, *sku)).or_default();
                if *have + delta >= 0 {
                    *have += delta;
                    Outcome::Restock {
                        stock: StockRecord {
                            on_hand: *have,
                            reserved: 0,
                        },
                        rejection: None,
                    }
                } else {
                    Outcome::Restock {
                        stock: StockRecord {
                            on_hand: *have,
                            reserved: 0,
                        },
                        rejection: Some(Rejection {
                            code: RejectCode::NegativeStock,
                            dc: *dc,
                            sku: *sku,
                            available: *have,
                            requested: -delta,
                        }),
                    }
                }
            }
            Op::Transfer {
                sku,
                from_dc,
                to_dc,
                qty,
            } => {
                let from = self.stock[&(*from_dc, *sku)];
                let to = self.stock[&(*to_dc, *sku)];
                let row = |on_hand| StockRecord {
                    on_hand,
                    reserved: 0,
                };
                if from < *qty {
                    Outcome::Transfer {
                        from: row(from),
                        to: row(to),
                        rejection: Some(Rejection {
                            code: RejectCode::InsufficientStock,
                            dc: *from_dc,
                            sku: *sku,
                            available: from,
                            requested: *qty,
                        }),
                    }
                } else {
                    self.stock.insert((*from_dc, *sku), from - qty);
                    self.stock.insert((*to_dc, *sku), to + qty);
                    Outcome::Transfer {
                        from: row(from - qty),
                        to: row(to + qty),
                        rejection: None,
                    }
                }
            }
            Op::ClusterConfig { .. } => Outcome::Upserted,
            _ => unreachable!("the workload has no other global transactions after seeding"),
        };
        self.seen
            .insert(txn.request_id.clone(), (txn.op.clone(), outcome.clone()));
        outcome
    }
}

/// Refusals are compared by code: their reasons are prose.
fn comparable(outcome: &Outcome) -> Outcome {
    match outcome {
        Outcome::Refused { code, .. } => Outcome::Refused {
            code: *code,
            reason: String::new(),
        },
        other => other.clone(),
    }
}

/// What only the internal path can deliver: inadmissible transactions and unknown DCs/SKUs.
fn hostile_txn(rng: &mut Rng, id: String) -> Txn {
    let dc = rng.below(DCS as u64) as u32 + 1;
    let sku = rng.below(SKUS as u64) as u32 + 1;
    let qty = [0, -5, i64::MIN, i64::MAX, 1_000_001][rng.below(5) as usize];
    let line = |dc, sku, qty| Line { dc, sku, qty };
    let order = |lines| Op::PlaceOrder {
        lines,
        mode: Mode::AllOrNothing,
        user: String::new(),
    };
    let op = match rng.below(8) {
        0 => order(vec![line(dc, sku, qty)]),
        1 => order(vec![line(dc, sku, 1), line(dc, sku, 1)]),
        2 => order(vec![line(dc, sku, 1), line(UNKNOWN, sku, 1)]),
        3 => order(vec![line(dc, UNKNOWN, 1)]),
        4 => Op::Restock { dc, sku, delta: 0 },
        5 => Op::Restock {
            dc: UNKNOWN,
            sku,
            delta: 1,
        },
        6 => Op::Transfer {
            sku,
            from_dc: dc,
            to_dc: dc,
            qty: 1,
        },
        _ => Op::Transfer {
            sku,
            from_dc: dc,
            to_dc: UNKNOWN,
            qty: 1,
        },
    };
    Txn { request_id: id, op }
}

fn random_txn(rng: &mut Rng, id: String) -> Txn {
    if rng.below(10) == 0 {
        return hostile_txn(rng, id);
    }
    if rng.below(60) == 0 {
        // A global transaction in the middle of an epoch splits it into segments.
        return Txn {
            request_id: id,
            op: Op::ClusterConfig { partitions: 3 },
        };
    }
    let from_dc = rng.below(DCS as u64) as u32 + 1;
    let op = if rng.below(8) == 0 {
        Op::Transfer {
            sku: rng.below(SKUS as u64) as u32 + 1,
            from_dc,
            // Any other DC, often in another partition.
            to_dc: (from_dc + rng.below(DCS as u64 - 1) as u32) % DCS + 1,
            qty: rng.below(4) as i64 + 1,
        }
    } else if rng.below(8) == 0 {
        Op::Restock {
            dc: rng.below(DCS as u64) as u32 + 1,
            sku: rng.below(SKUS as u64) as u32 + 1,
            delta: rng.below(9) as i64 - 3,
        }
    } else {
        let n = rng.below(3) + 1;
        let mut lines: Vec<Line> = Vec::new();
        while lines.len() < n as usize {
            let dc = rng.below(DCS as u64) as u32 + 1;
            let sku = rng.below(SKUS as u64) as u32 + 1;
            if !lines.iter().any(|l| l.dc == dc && l.sku == sku) {
                lines.push(Line {
                    dc,
                    sku,
                    qty: rng.below(4) as i64 + 1,
                });
            }
        }
        let mode = if rng.below(4) == 0 {
            Mode::Partial
        } else {
            Mode::AllOrNothing
        };
        Op::PlaceOrder {
            lines,
            mode,
            user: String::new(),
        }
    };
    Txn { request_id: id, op }
}

/// An epoch's transactions; about one in ten is a retry (the same request again) of an
/// earlier one, from this epoch or an earlier one, and one in thirty reuses an earlier id
/// for a new body.
fn random_epoch(rng: &mut Rng, history: &mut Vec<Txn>, epoch: u64, count: usize) -> Vec<Txn> {
    let mut txns = Vec::with_capacity(count);
    for i in 0..count {
        if !history.is_empty() && rng.below(10) == 0 {
            let earlier = history[rng.below(history.len() as u64) as usize].clone();
            txns.push(earlier);
        } else if !history.is_empty() && rng.below(30) == 0 {
            let earlier = &history[rng.below(history.len() as u64) as usize];
            txns.push(random_txn(rng, earlier.request_id.clone()));
        } else {
            let txn = random_txn(rng, format!("e{epoch}-t{i}"));
            history.push(txn.clone());
            txns.push(txn);
        }
    }
    txns
}

fn run_case(seed: u64, jitter: Option<u64>) {
    let dir = tempfile::tempdir().unwrap();
    // DCs spread over 4 regions, executed on 3 partitions.
    let store = Store::open(dir.path(), 3).unwrap();
    let cfg = ExecConfig {
        timing_jitter_seed: jitter,
        ..ExecConfig::default()
    };
    let mut model = Model::default();
    let commit = |epoch: u64, txns: &[Txn]| {
        let out = execute_epoch(&store, &cfg, epoch, 10 + epoch, txns).unwrap();
        store
            .commit(EpochCommit {
                stamp: Some(EpochStamp {
                    epoch,
                    time_ms: 10 + epoch,
                }),
                writes: out.writes,
                raft_meta: vec![],
            })
            .unwrap();
        out.results
    };
    let seed_txns = dataset(DCS, SKUS, 6);
    for (seq, t) in seed_txns.iter().enumerate() {
        if matches!(t.op, Op::Restock { .. }) {
            model.apply(t, 1, seq);
        }
    }
    commit(1, &seed_txns);

    let mut rng = Rng(seed | 1);
    let mut history = Vec::new();
    for epoch in 2..=8 {
        let txns = random_epoch(&mut rng, &mut history, epoch, 120);
        let results = commit(epoch, &txns);
        for (seq, (txn, got)) in txns.iter().zip(&results).enumerate() {
            let want = model.apply(txn, epoch, seq);
            assert_eq!(
                comparable(&got.outcome),
                want,
                "seed {seed} epoch {epoch} txn {seq} ({txn:?})"
            );
        }
    }
    for dc in 1..=DCS {
        let record = reads::dc(&store, dc).unwrap().unwrap();
        for sku in 1..=SKUS {
            let got = reads::stock(&store, &record, sku).unwrap().on_hand;
            assert_eq!(
                got,
                model.stock[&(dc, sku)],
                "seed {seed}: final stock dc {dc} sku {sku}"
            );
            assert!(got >= 0);
        }
    }
}

#[test]
fn partitioned_execution_equals_one_at_a_time_in_log_order() {
    for seed in 1..=12u64 {
        run_case(seed * 0x9E37_79B9, None);
    }
}

#[test]
fn the_same_holds_under_perturbed_thread_timing() {
    for seed in [3u64, 17, 41] {
        run_case(seed * 0x9E37_79B9, Some(seed));
    }
}
