//! Property: the partitioned, lock-managed executor gives exactly the results and the final
//! stock of the simplest possible model, one that applies every transaction alone, in log
//! order. Random workloads (seeded, so a failure reproduces) mix single- and multi-partition
//! orders, partial orders, restocks and retries (the same request again, same request id).

use std::collections::BTreeMap;

use ordo_scheduler::*;
use ordo_storage::{EpochCommit, EpochStamp, Store};

const DCS: u32 = 8;
const SKUS: u32 = 4;

/// The reference: a map of stock and a map of remembered results, nothing else.
#[derive(Default)]
struct Model {
    stock: BTreeMap<(u32, u32), i64>,
    seen: BTreeMap<String, Outcome>,
}

impl Model {
    fn apply(&mut self, txn: &Txn, epoch: u64, seq: usize) -> Outcome {
        if let Some(outcome) = self.seen.get(&txn.request_id) {
            return outcome.clone();
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
            _ => unreachable!("the workload has no global transactions after seeding"),
        };
        self.seen.insert(txn.request_id.clone(), outcome.clone());
        outcome
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_txn(rng: &mut Rng, id: String) -> Txn {
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
/// earlier one, from this epoch or an earlier one.
fn random_epoch(rng: &mut Rng, history: &mut Vec<Txn>, epoch: u64, count: usize) -> Vec<Txn> {
    let mut txns = Vec::with_capacity(count);
    for i in 0..count {
        if !history.is_empty() && rng.below(10) == 0 {
            let earlier = history[rng.below(history.len() as u64) as usize].clone();
            txns.push(earlier);
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
    let mut seed_txns = Vec::new();
    for dc in 1..=DCS {
        seed_txns.push(Txn {
            request_id: format!("dc{dc}"),
            op: Op::UpsertDc(DcRecord {
                dc,
                name: "d".into(),
                lat_e6: 0,
                lon_e6: 0,
                region: dc % 4,
                active: true,
            }),
        });
    }
    for sku in 1..=SKUS {
        seed_txns.push(Txn {
            request_id: format!("sku{sku}"),
            op: Op::UpsertItem(ItemRecord {
                sku,
                name: "i".into(),
                price_cents: 1,
            }),
        });
    }
    for dc in 1..=DCS {
        for sku in 1..=SKUS {
            let t = Txn {
                request_id: format!("s{dc}-{sku}"),
                op: Op::Restock { dc, sku, delta: 6 },
            };
            model.apply(&t, 1, 0);
            seed_txns.push(t);
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
                got.outcome, want,
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
