//! Change events: what each epoch changed, in log order, for the Watch stream.
//!
//! Execution emits them beside its writes: a stock row's every change with the row before and
//! after and its cause, each order, each reservation change, each price, DC and catalogue
//! change. They are a pure function of the log, so every replica produces the same events for
//! the same epoch, and a consumer may resume on any node from the epoch it reached. The node
//! keeps them in its feed (`ordo_storage::Store::feed_read`), outside the state hash: how long
//! events are kept is each node's own choice.
//!
//! Order within an epoch: the prologue's (returned units of lapsed holds) first, then by the
//! log position of the transaction that caused them; one transaction's events by partition,
//! then in the order it wrote them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::model::*;

/// One change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Stock(StockChange),
    Price(PriceChange),
    /// A committed order (placed, or confirmed from a reservation).
    Order(OrderRecord),
    Reservation(ReservationChange),
    Dc(DcRecord),
    Item(ItemRecord),
}

/// A stock row's change. The rows are as stored: while a partition sweeps a backlog of lapsed
/// holds (more than the configured number in one epoch) a row's `reserved` still counts the
/// holds not swept yet, and their units come back in the epoch that sweeps them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockChange {
    pub dc: u32,
    pub sku: u32,
    pub before: StockRecord,
    pub after: StockRecord,
    pub cause: Cause,
    /// The request that changed it; empty for a lapsed hold's return.
    pub request_id: String,
}

/// Why a stock row changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cause {
    Order {
        order_id: u64,
    },
    /// A restock or an adjustment.
    Restock,
    Transfer,
    /// Units held (or, with a cart, added to its reservation).
    Hold {
        reservation_id: u64,
    },
    /// A reservation turned into an order (and what it did not confirm released).
    Confirm {
        reservation_id: u64,
        order_id: u64,
    },
    Cancel {
        reservation_id: u64,
    },
    /// A hold lapsed and its units came back.
    Expiry {
        reservation_id: u64,
    },
}

/// A price set, by [`Op::SetPrices`] or by an item upsert that changed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceChange {
    pub sku: u32,
    pub before_cents: i64,
    pub after_cents: i64,
    pub currency: String,
    pub request_id: String,
}

/// What happened to a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReservationStep {
    /// Created, or lines added through its cart.
    Held,
    Confirmed,
    Cancelled,
    Extended,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationChange {
    pub step: ReservationStep,
    /// The reservation as the transaction left it.
    pub reservation: ReservationRecord,
}

/// The kinds a watcher may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventKind {
    Stock,
    Price,
    Order,
    Reservation,
    Dc,
    Item,
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Stock(_) => EventKind::Stock,
            Event::Price(_) => EventKind::Price,
            Event::Order(_) => EventKind::Order,
            Event::Reservation(_) => EventKind::Reservation,
            Event::Dc(_) => EventKind::Dc,
            Event::Item(_) => EventKind::Item,
        }
    }

    /// Whether the event concerns a SKU in `skus`; events about no SKU (DCs) never do.
    fn any_sku(&self, skus: &BTreeSet<u32>) -> bool {
        match self {
            Event::Stock(s) => skus.contains(&s.sku),
            Event::Price(p) => skus.contains(&p.sku),
            Event::Order(o) => o.lines.iter().any(|l| skus.contains(&l.sku)),
            Event::Reservation(r) => r.reservation.lines.iter().any(|l| skus.contains(&l.sku)),
            Event::Item(i) => skus.contains(&i.sku),
            Event::Dc(_) => false,
        }
    }

    /// Whether the event concerns a DC in `dcs`; events about no DC (prices, items) never do.
    fn any_dc(&self, dcs: &BTreeSet<u32>) -> bool {
        match self {
            Event::Stock(s) => dcs.contains(&s.dc),
            Event::Order(o) => o.lines.iter().any(|l| dcs.contains(&l.dc)),
            Event::Reservation(r) => r.reservation.lines.iter().any(|l| dcs.contains(&l.dc)),
            Event::Dc(d) => dcs.contains(&d.dc),
            Event::Price(_) | Event::Item(_) => false,
        }
    }
}

/// Which events a watcher wants; an empty set does not filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub skus: BTreeSet<u32>,
    pub dcs: BTreeSet<u32>,
    pub kinds: BTreeSet<EventKind>,
}

impl Filter {
    /// An event passes when its kind is asked for and, for each of `skus` and `dcs` that is
    /// given, it concerns one of them.
    pub fn matches(&self, event: &Event) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&event.kind()))
            && (self.skus.is_empty() || event.any_sku(&self.skus))
            && (self.dcs.is_empty() || event.any_dc(&self.dcs))
    }
}

/// One epoch's events as the feed keeps them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochEvents {
    pub time_ms: u64,
    pub events: Vec<Event>,
}

impl EpochEvents {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, bincode::Error> {
        decode(bytes)
    }
}

/// Why stock changed, from the transaction and what it decided (`order`: the order it made).
pub(crate) fn cause(op: &Op, outcome: &Outcome, order: Option<&OrderRecord>) -> Cause {
    let order_id = order.map(|o| o.order_id).unwrap_or_default();
    let held = match outcome {
        Outcome::Reservation {
            reservation: Some(r),
            ..
        } => r.reservation_id,
        _ => 0,
    };
    match op {
        Op::Restock { .. } | Op::RestockDc { .. } => Cause::Restock,
        Op::Transfer { .. } => Cause::Transfer,
        Op::Reserve { .. } | Op::ReserveNearby { .. } | Op::ExtendReservation { .. } => {
            Cause::Hold {
                reservation_id: held,
            }
        }
        Op::ConfirmReservation { reservation_id, .. } => Cause::Confirm {
            reservation_id: *reservation_id,
            order_id,
        },
        Op::CancelReservation { reservation_id } => Cause::Cancel {
            reservation_id: *reservation_id,
        },
        Op::PlaceOrder { .. }
        | Op::PlaceOrderNearby { .. }
        | Op::UpsertDc(_)
        | Op::UpsertItem(_)
        | Op::Kv(_)
        | Op::ClusterConfig { .. }
        | Op::ExecSettings(_)
        | Op::SetPrices(_)
        | Op::Subscribe { .. }
        | Op::Unsubscribe { .. } => Cause::Order { order_id },
    }
}

/// The reservation change a transaction made, if it made one: the reservation record it wrote
/// (`writes`: its decision's writes, every participant's).
pub(crate) fn reservation_change(
    op: &Op,
    writes: &[crate::decide::PartWrite],
) -> Option<ReservationChange> {
    let step = match op {
        Op::Reserve { .. } | Op::ReserveNearby { .. } => ReservationStep::Held,
        Op::ConfirmReservation { .. } => ReservationStep::Confirmed,
        Op::CancelReservation { .. } => ReservationStep::Cancelled,
        Op::ExtendReservation { .. } => ReservationStep::Extended,
        _ => return None,
    };
    let reservation = writes.iter().find_map(|(_, key, value)| {
        if key.first() != Some(&keys::RESERVATION) {
            return None;
        }
        decode::<ReservationRecord>(value.as_deref()?).ok()
    })?;
    Some(ReservationChange { step, reservation })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock(dc: u32, sku: u32) -> Event {
        Event::Stock(StockChange {
            dc,
            sku,
            before: StockRecord::default(),
            after: StockRecord {
                on_hand: 5,
                reserved: 0,
            },
            cause: Cause::Restock,
            request_id: "r".into(),
        })
    }

    #[test]
    fn filters_apply_to_the_fields_an_event_has() {
        let price = Event::Price(PriceChange {
            sku: 7,
            before_cents: 10,
            after_cents: 9,
            currency: "INR".into(),
            request_id: "p".into(),
        });
        let all = Filter::default();
        assert!(all.matches(&stock(1, 7)) && all.matches(&price));
        let sku7 = Filter {
            skus: [7].into(),
            ..Filter::default()
        };
        assert!(sku7.matches(&stock(1, 7)) && sku7.matches(&price));
        assert!(!sku7.matches(&stock(1, 8)));
        let dc1 = Filter {
            dcs: [1].into(),
            ..Filter::default()
        };
        assert!(dc1.matches(&stock(1, 8)) && !dc1.matches(&stock(2, 8)));
        // A price concerns no DC: asking for a DC leaves prices out.
        assert!(!dc1.matches(&price));
        let prices = Filter {
            kinds: [EventKind::Price].into(),
            ..Filter::default()
        };
        assert!(prices.matches(&price) && !prices.matches(&stock(1, 7)));
    }

    #[test]
    fn epoch_events_round_trip() {
        let epoch = EpochEvents {
            time_ms: 42,
            events: vec![stock(1, 2), stock(3, 4)],
        };
        assert_eq!(EpochEvents::decode(&epoch.encode()).unwrap(), epoch);
    }
}
