//! The writes that run beside the watchers: orders (closed loop, one task per client) and the
//! price changes of price-latency (one writer), per target.

use ordo_client::{v1, Client, Consistency, Line as OrdoLine};

use super::postgres::{PgOrders, PgPrices};
use crate::targets::{Endpoints, Outcome, Target};
use crate::workload::{Dataset, Line, Rng};

/// An order has 1 to this many lines, each at its own (dc, sku).
const ORDER_LINES_MAX: u64 = 3;
/// Price changes go round this many SKUs (1..=PRICE_SKUS).
pub const PRICE_SKUS: u64 = 10;

/// One client's orders: 1-3 lines of one unit each at distinct (dc, sku) drawn uniformly, so
/// orders rarely contend and the feed, not a hot row, is what the run measures.
pub struct OrderMix {
    rng: Rng,
    dataset: Dataset,
}

impl OrderMix {
    pub fn new(dataset: Dataset, seed: u64, client: u64) -> Self {
        Self {
            rng: Rng::new(seed ^ 0xFEED_0000 ^ client.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            dataset,
        }
    }

    /// Lines sorted by (dc, sku): the order PostgreSQL locks them in.
    pub fn next_order(&mut self) -> Vec<Line> {
        let d = self.dataset;
        let count = 1 + self.rng.below(ORDER_LINES_MAX) as usize;
        let mut lines: Vec<Line> = Vec::with_capacity(count);
        while lines.len() < count.min((d.dcs * d.skus) as usize) {
            let dc = self.rng.below(u64::from(d.dcs)) as u32 + 1;
            let sku = self.rng.below(u64::from(d.skus)) as u32 + 1;
            if !lines.iter().any(|l| (l.0, l.1) == (dc, sku)) {
                lines.push((dc, sku, 1));
            }
        }
        lines.sort_unstable();
        lines
    }
}

pub enum OrderOutcome {
    /// `epoch`: Ordo's epoch of the order (0 elsewhere).
    Committed {
        order_id: u64,
        epoch: u64,
    },
    Rejected(&'static str),
    Error(String),
}

impl OrderOutcome {
    /// As the order workloads' check counts it.
    pub fn outcome(&self) -> Outcome {
        match self {
            OrderOutcome::Committed { .. } => Outcome::Ok,
            OrderOutcome::Rejected(reason) => Outcome::Rejected(reason),
            OrderOutcome::Error(e) => Outcome::Error(e.clone()),
        }
    }
}

/// Opens an Ordo client the way the order workloads do: client `index` starts at node
/// `index % nodes` and fails over to the others.
async fn ordo_client(ep: &Endpoints, index: usize) -> anyhow::Result<Client> {
    let mut urls = ep.urls.clone();
    let first = index % urls.len();
    urls.rotate_left(first);
    Ok(Client::connect_many(urls)
        .await?
        .with_consistency(Consistency::Local))
}

pub enum OrderSession {
    Ordo(Client),
    Postgres(Box<PgOrders>),
}

impl OrderSession {
    pub async fn open(ep: &Endpoints, index: usize) -> anyhow::Result<Self> {
        Ok(match ep.target {
            Target::Postgres => {
                OrderSession::Postgres(Box::new(PgOrders::open(&ep.urls[0]).await?))
            }
            t if t.is_ordo() => OrderSession::Ordo(ordo_client(ep, index).await?),
            t => anyhow::bail!("{t} has no feed adapter"),
        })
    }

    pub async fn order(&mut self, lines: &[Line]) -> OrderOutcome {
        match self {
            OrderSession::Ordo(client) => {
                let lines: Vec<OrdoLine> = lines
                    .iter()
                    .map(|&(dc_id, sku, qty)| OrdoLine { dc_id, sku, qty })
                    .collect();
                match client.place_order(&lines, false, None).await {
                    Ok(r) if r.status() == v1::OrderStatus::Committed => OrderOutcome::Committed {
                        order_id: r.order_id,
                        epoch: r.epoch,
                    },
                    Ok(r) => match r.rejection.as_ref().map(|x| x.code()) {
                        Some(v1::RejectCode::InsufficientStock) => {
                            OrderOutcome::Rejected("insufficient-stock")
                        }
                        _ => OrderOutcome::Rejected("other-rejection"),
                    },
                    Err(e) => OrderOutcome::Error(e.to_string()),
                }
            }
            OrderSession::Postgres(pg) => pg.order(lines).await,
        }
    }
}

/// The price-latency writer.
pub enum PriceWriter {
    Ordo(Client),
    Postgres(PgPrices),
}

impl PriceWriter {
    pub async fn open(ep: &Endpoints) -> anyhow::Result<Self> {
        Ok(match ep.target {
            Target::Postgres => PriceWriter::Postgres(PgPrices::open(&ep.urls[0]).await?),
            t if t.is_ordo() => PriceWriter::Ordo(ordo_client(ep, 0).await?),
            t => anyhow::bail!("{t} has no feed adapter"),
        })
    }

    /// Sets `sku`'s price; once it returns `Ok` the change is committed. `Ok(epoch)`: Ordo's
    /// epoch of the change (0 elsewhere).
    pub async fn set(&mut self, sku: u32, cents: i64) -> Result<u64, String> {
        match self {
            PriceWriter::Ordo(client) => client
                .set_price(sku, cents, "")
                .await
                .map(|r| r.epoch)
                .map_err(|e| e.to_string()),
            PriceWriter::Postgres(pg) => pg.set(sku, cents).await.map(|()| 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_have_one_to_three_distinct_sorted_lines_and_repeat_with_the_seed() {
        let dataset = Dataset {
            dcs: 12,
            skus: 1_000,
            stock: 1_000_000,
            regions: 3,
        };
        let mut a = OrderMix::new(dataset, 42, 3);
        let mut b = OrderMix::new(dataset, 42, 3);
        let mut sizes = [0; 4];
        for _ in 0..3_000 {
            let lines = a.next_order();
            assert_eq!(lines, b.next_order());
            assert!((1..=3).contains(&lines.len()));
            assert!(lines
                .windows(2)
                .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)));
            sizes[lines.len()] += 1;
        }
        assert!(sizes[1..].iter().all(|&n| n > 800), "{sizes:?}");
    }
}
