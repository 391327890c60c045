//! Reservations executed against a real store: holds, confirms, cancels, extensions, carts,
//! and expiry that is exact at the epoch's time whatever the sweep's progress.

mod common;

use ordo_scheduler::*;
use ordo_storage::{EpochCommit, EpochStamp, Part, Store};

struct Node {
    _dir: tempfile::TempDir,
    store: Store,
    cfg: ExecConfig,
    epoch: u64,
}

const T0: u64 = 1_000_000;

impl Node {
    fn new(cfg: ExecConfig) -> Self {
        Self::with(cfg, common::dataset(8, 4, 10))
    }

    fn with(cfg: ExecConfig, dataset: Vec<Txn>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        let mut node = Self {
            _dir: dir,
            store,
            cfg,
            epoch: 0,
        };
        node.run_at(T0, dataset);
        node
    }

    fn run_at(&mut self, time_ms: u64, txns: Vec<Txn>) -> Vec<TxnResult> {
        self.epoch += 1;
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

    fn one(&mut self, time_ms: u64, txn: Txn) -> Outcome {
        self.run_at(time_ms, vec![txn]).remove(0).outcome
    }

    fn stock(&self, dc: u32, sku: u32) -> StockRecord {
        let record = reads::dc(&self.store, dc).unwrap().unwrap();
        reads::stock(&self.store, &record, sku).unwrap()
    }

    /// The row as stored, before dead holds are netted out.
    fn stored(&self, dc: u32, sku: u32) -> StockRecord {
        let record = reads::dc(&self.store, dc).unwrap().unwrap();
        let part = reads::part_of(&self.store, &record);
        self.store
            .get(part, &keys::stock(dc, sku))
            .unwrap()
            .map(|v| decode(&v).unwrap())
            .unwrap_or_default()
    }

    fn holds_left(&self) -> usize {
        (0..3)
            .map(|n| {
                self.store
                    .scan_prefix(Part::Region(n), &[keys::HOLD_DUE], usize::MAX)
                    .unwrap()
                    .len()
            })
            .sum()
    }
}

fn reserve(id: &str, cart: &str, lines: &[(u32, u32, i64)], ttl_ms: u64) -> Txn {
    Txn {
        request_id: id.into(),
        op: Op::Reserve {
            cart_id: cart.into(),
            user: "u1".into(),
            lines: lines
                .iter()
                .map(|&(dc, sku, qty)| Line { dc, sku, qty })
                .collect(),
            mode: Mode::AllOrNothing,
            ttl_ms,
            life_max_ms: 10 * ttl_ms,
        },
    }
}

fn op(id: &str, op: Op) -> Txn {
    Txn {
        request_id: id.into(),
        op,
    }
}

fn held(outcome: &Outcome) -> ReservationRecord {
    match outcome {
        Outcome::Reservation {
            reservation: Some(r),
            rejection: None,
        } => r.clone(),
        other => panic!("expected a reservation, got {other:?}"),
    }
}

fn rejected(outcome: &Outcome) -> RejectCode {
    outcome
        .rejection()
        .unwrap_or_else(|| panic!("expected a rejection, got {outcome:?}"))
        .code
}

#[test]
fn a_hold_takes_units_until_confirmed_and_the_confirm_is_an_order() {
    let mut node = Node::new(ExecConfig::default());
    let r = held(&node.one(T0 + 10, reserve("r1", "", &[(1, 1, 4), (2, 1, 3)], 60_000)));
    assert_eq!(r.expires_at_ms, T0 + 10 + 60_000);
    assert_eq!(
        node.stock(1, 1),
        StockRecord {
            on_hand: 10,
            reserved: 4
        }
    );
    // Nobody else can take the held units.
    let order = node.one(
        T0 + 20,
        op(
            "o1",
            Op::PlaceOrder {
                lines: vec![Line {
                    dc: 1,
                    sku: 1,
                    qty: 7,
                }],
                mode: Mode::AllOrNothing,
                user: String::new(),
            },
        ),
    );
    assert_eq!(rejected(&order), RejectCode::InsufficientStock);
    // Confirm part of one line: the rest of the hold is released.
    let confirm = node.one(
        T0 + 30,
        op(
            "c1",
            Op::ConfirmReservation {
                reservation_id: r.reservation_id,
                lines: vec![Line {
                    dc: 1,
                    sku: 1,
                    qty: 3,
                }],
            },
        ),
    );
    let Outcome::Order {
        order_id: Some(order_id),
        lines,
        rejection: None,
    } = &confirm
    else {
        panic!("{confirm:?}")
    };
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].allocated, 3);
    assert_eq!(
        reads::order(&node.store, *order_id).unwrap().unwrap().lines,
        *lines
    );
    assert_eq!(
        node.stock(1, 1),
        StockRecord {
            on_hand: 7,
            reserved: 0
        }
    );
    assert_eq!(node.stock(2, 1).reserved, 0);
    assert_eq!(node.stock(2, 1).on_hand, 10);
    assert_eq!(node.holds_left(), 0);
    // Once only: a second confirm, a cancel and an extend are refused.
    let again = node.one(
        T0 + 40,
        op(
            "c2",
            Op::ConfirmReservation {
                reservation_id: r.reservation_id,
                lines: vec![],
            },
        ),
    );
    assert_eq!(rejected(&again), RejectCode::ReservationConfirmed);
    let cancel = node.one(
        T0 + 50,
        op(
            "x1",
            Op::CancelReservation {
                reservation_id: r.reservation_id,
            },
        ),
    );
    assert_eq!(rejected(&cancel), RejectCode::ReservationConfirmed);
    let unknown = node.one(
        T0 + 60,
        op(
            "c3",
            Op::ConfirmReservation {
                reservation_id: 12345,
                lines: vec![],
            },
        ),
    );
    assert_eq!(rejected(&unknown), RejectCode::ReservationUnknown);
}

#[test]
fn a_hold_is_live_exactly_until_its_expiry_time() {
    let mut node = Node::new(ExecConfig::default());
    let r = held(&node.one(T0 + 1, reserve("r1", "", &[(1, 1, 10)], 100)));
    let exp = r.expires_at_ms;
    assert_eq!(exp, T0 + 101);
    node.run_at(exp - 1, vec![]);
    assert_eq!(node.stock(1, 1).available(), 0);
    let confirm = |id: &str| {
        op(
            id,
            Op::ConfirmReservation {
                reservation_id: r.reservation_id,
                lines: vec![],
            },
        )
    };
    let late = node.one(exp, confirm("c-late"));
    assert_eq!(rejected(&late), RejectCode::ReservationExpired);
    assert_eq!(node.stock(1, 1).available(), 10);
    assert_eq!(node.holds_left(), 0);
    let extend = node.one(
        exp + 1,
        op(
            "e1",
            Op::ExtendReservation {
                reservation_id: r.reservation_id,
                ttl_ms: 1000,
            },
        ),
    );
    assert_eq!(rejected(&extend), RejectCode::ReservationExpired);
    let status = reads::reservation(&node.store, r.reservation_id)
        .unwrap()
        .unwrap();
    assert_eq!(status.status_at(exp), HoldStatus::Expired);

    // A confirm one millisecond before the expiry wins, and nothing lapses afterwards.
    let r2 = held(&node.one(exp + 10, reserve("r2", "", &[(1, 1, 10)], 100)));
    let ok = node.one(
        r2.expires_at_ms - 1,
        op(
            "c-r2",
            Op::ConfirmReservation {
                reservation_id: r2.reservation_id,
                lines: vec![],
            },
        ),
    );
    assert!(
        matches!(
            ok,
            Outcome::Order {
                order_id: Some(_),
                ..
            }
        ),
        "{ok:?}"
    );
    node.run_at(r2.expires_at_ms + 5, vec![]);
    assert_eq!(
        node.stock(1, 1),
        StockRecord {
            on_hand: 0,
            reserved: 0
        }
    );
}

#[test]
fn reads_count_dead_holds_as_released_before_the_sweep_gets_to_them() {
    let mut node = Node::new(ExecConfig {
        expiry_per_epoch_max: 2,
        ..ExecConfig::default()
    });
    let holds: Vec<Txn> = (0..5)
        .map(|i| reserve(&format!("r{i}"), "", &[(1, 1, 2)], 100))
        .collect();
    node.run_at(T0 + 1, holds);
    assert_eq!(node.stock(1, 1).available(), 0);
    // All five are dead at T0 + 101; the sweep returns two per epoch.
    node.run_at(T0 + 101, vec![]);
    assert_eq!(node.stored(1, 1).reserved, 6, "two of five swept");
    assert_eq!(node.stock(1, 1).available(), 10, "reads net out the rest");
    // An order in the backlog epoch can take every unit, and the sweep still balances.
    let order = node.one(
        T0 + 102,
        op(
            "o1",
            Op::PlaceOrder {
                lines: vec![Line {
                    dc: 1,
                    sku: 1,
                    qty: 10,
                }],
                mode: Mode::AllOrNothing,
                user: String::new(),
            },
        ),
    );
    assert!(order.rejection().is_none(), "{order:?}");
    assert_eq!(node.stock(1, 1), StockRecord::default());
    node.run_at(T0 + 103, vec![]);
    assert_eq!(node.holds_left(), 0);
    assert_eq!(node.stored(1, 1), StockRecord::default());
}

#[test]
fn a_cart_adds_to_its_live_reservation_and_extend_moves_the_expiry() {
    let mut node = Node::new(ExecConfig::default());
    let first = held(&node.one(T0 + 1, reserve("r1", "cart-9", &[(1, 1, 2)], 1_000)));
    let second = held(&node.one(
        T0 + 2,
        reserve("r2", "cart-9", &[(1, 1, 1), (5, 2, 3)], 1_000),
    ));
    assert_eq!(second.reservation_id, first.reservation_id);
    assert_eq!(second.expires_at_ms, first.expires_at_ms);
    assert_eq!(second.lines.len(), 2);
    assert_eq!(second.lines[0].held, 3);
    assert_eq!(node.stock(1, 1).reserved, 3);
    assert_eq!(node.stock(5, 2).reserved, 3);

    let extended = held(&node.one(
        T0 + 500,
        op(
            "e1",
            Op::ExtendReservation {
                reservation_id: first.reservation_id,
                ttl_ms: 5_000,
            },
        ),
    ));
    assert_eq!(extended.expires_at_ms, T0 + 5_500);
    // Past the old expiry, the holds are still there.
    node.run_at(T0 + 2_000, vec![]);
    assert_eq!(node.stock(5, 2).reserved, 3);
    // The life cap (10 x ttl) bounds an extension.
    let capped = held(&node.one(
        T0 + 3_000,
        op(
            "e2",
            Op::ExtendReservation {
                reservation_id: first.reservation_id,
                ttl_ms: 1_000_000,
            },
        ),
    ));
    assert_eq!(capped.expires_at_ms, first.life_cap_ms);

    let cancelled = held(&node.one(
        T0 + 3_001,
        op(
            "x1",
            Op::CancelReservation {
                reservation_id: first.reservation_id,
            },
        ),
    ));
    assert_eq!(cancelled.status_at(T0 + 3_001), HoldStatus::Cancelled);
    assert_eq!(
        node.stock(1, 1),
        StockRecord {
            on_hand: 10,
            reserved: 0
        }
    );
    assert_eq!(node.holds_left(), 0);
    // The cart's next reserve starts a new reservation.
    let third = held(&node.one(T0 + 3_002, reserve("r3", "cart-9", &[(1, 1, 1)], 1_000)));
    assert_ne!(third.reservation_id, first.reservation_id);
    let listed =
        reads::reservations(&node.store, reads::ReservationsOf::Cart("cart-9"), 0, 10).unwrap();
    assert_eq!(
        listed.iter().map(|r| r.reservation_id).collect::<Vec<_>>(),
        vec![first.reservation_id, third.reservation_id]
    );
}

#[test]
fn a_cart_change_earlier_in_the_epoch_makes_a_confirm_run_again() {
    let mut node = Node::new(ExecConfig::default());
    let r = held(&node.one(T0 + 1, reserve("r1", "cart", &[(1, 1, 2)], 1_000)));
    let results = node.run_at(
        T0 + 2,
        vec![
            reserve("r2", "cart", &[(6, 2, 1)], 1_000),
            op(
                "c1",
                Op::ConfirmReservation {
                    reservation_id: r.reservation_id,
                    lines: vec![],
                },
            ),
        ],
    );
    assert_eq!(held(&results[0].outcome).lines.len(), 2);
    assert!(
        matches!(
            results[1].outcome,
            Outcome::Refused {
                code: RefuseCode::Conflict,
                ..
            }
        ),
        "{:?}",
        results[1].outcome
    );
    // Not remembered: the same request in the next epoch confirms both lines.
    let again = node.one(
        T0 + 3,
        op(
            "c1",
            Op::ConfirmReservation {
                reservation_id: r.reservation_id,
                lines: vec![],
            },
        ),
    );
    let Outcome::Order { lines, .. } = &again else {
        panic!("{again:?}")
    };
    assert_eq!(lines.len(), 2);
    assert_eq!(node.stock(6, 2).on_hand, 9);
}

#[test]
fn records_are_dropped_after_their_retention_with_their_indexes() {
    let mut node = Node::new(ExecConfig {
        reservation_retention_ms: 1_000,
        ..ExecConfig::default()
    });
    // Life cap = 10 x ttl = 1,000 ms; the record goes 1,000 ms after that.
    let r = held(&node.one(T0 + 1, reserve("r1", "cart-p", &[(1, 1, 1)], 100)));
    assert_eq!(r.life_cap_ms, T0 + 1_001);
    node.run_at(T0 + 2_000, vec![]);
    assert!(reads::reservation(&node.store, r.reservation_id)
        .unwrap()
        .is_some());
    node.run_at(T0 + 2_001, vec![]);
    assert!(reads::reservation(&node.store, r.reservation_id)
        .unwrap()
        .is_none());
    let listed =
        reads::reservations(&node.store, reads::ReservationsOf::Cart("cart-p"), 0, 10).unwrap();
    assert!(listed.is_empty());
    let by_user =
        reads::reservations(&node.store, reads::ReservationsOf::User("u1"), 0, 10).unwrap();
    assert!(by_user.is_empty());
    // Nothing of it is left in any partition but the stock row.
    for n in 0..3 {
        for (key, _) in node
            .store
            .scan_prefix(Part::Region(n), &[], usize::MAX)
            .unwrap()
        {
            assert!(
                ![b'r', b'x', b'e', b'y', b'C', b'K', b'u'].contains(&key[0]),
                "left over: {key:?}"
            );
        }
    }
    // A retry of the reserve is still answered from dedupe, and the cart starts afresh.
    let again = held(&node.one(T0 + 2_002, reserve("r1", "cart-p", &[(1, 1, 1)], 100)));
    assert_eq!(again.reservation_id, r.reservation_id);
    let fresh = held(&node.one(T0 + 2_003, reserve("r2", "cart-p", &[(1, 1, 1)], 100)));
    assert_ne!(fresh.reservation_id, r.reservation_id);
}

#[test]
fn a_cart_holds_at_most_as_many_lines_as_an_order() {
    let mut node = Node::with(ExecConfig::default(), common::dataset(8, 20, 10));
    let rows: Vec<(u32, u32, i64)> = (1..=8)
        .flat_map(|dc| (1..=20).map(move |sku| (dc, sku, 1)))
        .collect();
    let first = held(&node.one(T0 + 1, reserve("r1", "big", &rows[..60], 1_000)));
    assert_eq!(first.lines.len(), 60);
    let refused = node.one(T0 + 2, reserve("r2", "big", &rows[60..120], 1_000));
    assert!(
        matches!(
            &refused,
            Outcome::Refused {
                code: RefuseCode::Invalid,
                reason
            } if reason.contains("at most 100")
        ),
        "{refused:?}"
    );
    // Nothing of the refused add is held; lines the cart has already do not count twice.
    assert_eq!(node.stock(4, 1).reserved, 0);
    let again = held(&node.one(T0 + 3, reserve("r3", "big", &rows[20..100], 1_000)));
    assert_eq!(again.lines.len(), 100);
}
