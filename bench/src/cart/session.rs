//! One client's connection for the cart workload, per target: reserve, confirm, cancel, the
//! initial load and the final stock. Ordo's adapter is here (its API has holds); PostgreSQL's
//! and Redis's designs are in their own files, each with the background task that releases
//! lapsed holds (Ordo needs none: a hold lapses at its epoch time on every replica).

use std::collections::BTreeMap;

use anyhow::Context;
use ordo_client::{v1, Client, Consistency, Line as OrdoLine, Reserve};

use super::check::{FinalState, StockRow};
use super::{postgres, redis};
use crate::targets::{Endpoints, Session, Target};
use crate::workload::{Dataset, Line};

/// A hold the target made.
#[derive(Clone, Debug)]
pub struct Hold {
    pub id: u64,
    /// Units held per key.
    pub lines: Vec<Line>,
    /// The first µs (since the Unix epoch) at which the target treats the hold as expired.
    pub expires_at_us: i64,
}

pub enum ReserveOutcome {
    Held(Hold),
    Refused(&'static str),
    Error(String),
}

pub enum ConfirmOutcome {
    /// Committed at `commit_us` (µs since the Unix epoch) by the target's own clock; `None`
    /// when the target did not say.
    Committed {
        commit_us: Option<i64>,
    },
    Refused(&'static str),
    Error(String),
}

pub enum CancelOutcome {
    Cancelled,
    Refused(&'static str),
    Error(String),
}

/// Why a target cannot run the cart workload; `Ok` for those that can.
pub fn supported(target: Target) -> Result<(), String> {
    match target {
        Target::Ordo1
        | Target::Ordo3
        | Target::Postgres
        | Target::Redis
        | Target::RedisEverysec => Ok(()),
        Target::Ordo1Batch | Target::Ordo3Batch | Target::Ordo1Stream | Target::Ordo3Stream => {
            Err(target.orders_only("carts"))
        }
        Target::PostgresCond => Err(
            "postgres-cond is an order design (one conditional UPDATE); the cart workload's \
             PostgreSQL design (hold rows, a sweeper) runs as `postgres`"
                .into(),
        ),
        Target::Etcd => Err("there is no etcd adapter for the cart workload".into()),
    }
}

pub enum CartSession {
    Ordo(Client),
    Postgres(postgres::PgCart),
    Redis(redis::RedisCart),
}

impl CartSession {
    /// Client number `index`'s session (clients are spread over a cluster's nodes).
    pub async fn open(ep: &Endpoints, index: usize) -> anyhow::Result<Self> {
        Ok(match ep.target {
            t if t.is_ordo() => {
                let mut urls = ep.urls.clone();
                urls.rotate_left(index % ep.urls.len());
                CartSession::Ordo(
                    Client::connect_many(urls)
                        .await?
                        .with_consistency(Consistency::Local),
                )
            }
            Target::Postgres => CartSession::Postgres(postgres::PgCart::open(&ep.urls[0]).await?),
            Target::Redis | Target::RedisEverysec => {
                CartSession::Redis(redis::RedisCart::open(&ep.urls[0], index).await?)
            }
            other => anyhow::bail!("{}", supported(other).err().unwrap_or_default()),
        })
    }

    /// Loads the dataset (every key at `dataset.stock` on hand, nothing held) and readies the
    /// target's hold machinery.
    pub async fn load(&mut self, ep: &Endpoints, dataset: &Dataset) -> anyhow::Result<()> {
        match self {
            CartSession::Ordo(_) => Session::open(ep, 0).await?.load(dataset).await,
            CartSession::Postgres(pg) => pg.load(dataset).await,
            CartSession::Redis(r) => {
                Session::open(ep, 0).await?.load(dataset).await?;
                r.enable_expiry_events().await
            }
        }
    }

    pub async fn reserve(&mut self, lines: &[Line], ttl_s: u32) -> ReserveOutcome {
        match self {
            CartSession::Ordo(client) => ordo_reserve(client, lines, ttl_s).await,
            CartSession::Postgres(pg) => pg.reserve(lines, ttl_s).await,
            CartSession::Redis(r) => r.reserve(lines, ttl_s).await,
        }
    }

    pub async fn confirm(&mut self, hold: &Hold) -> ConfirmOutcome {
        match self {
            CartSession::Ordo(client) => match client.confirm_reservation(hold.id, &[], None).await
            {
                Ok(r) => match &r.result {
                    Some(result) if result.status() == v1::OrderStatus::Committed => {
                        ConfirmOutcome::Committed {
                            // 0: the server could not read the order's epoch time back.
                            commit_us: (r.epoch_time_ms != 0)
                                .then_some(r.epoch_time_ms as i64 * 1_000),
                        }
                    }
                    Some(result) => ConfirmOutcome::Refused(ordo_reason(result.rejection.as_ref())),
                    None => ConfirmOutcome::Error("confirm answered without a result".into()),
                },
                Err(e) => ConfirmOutcome::Error(e.to_string()),
            },
            CartSession::Postgres(pg) => pg.confirm(hold).await,
            CartSession::Redis(r) => r.confirm(hold).await,
        }
    }

    pub async fn cancel(&mut self, hold: &Hold) -> CancelOutcome {
        match self {
            CartSession::Ordo(client) => match client.cancel_reservation(hold.id, None).await {
                Ok(r) if r.status() == v1::ReservationStatus::Cancelled => CancelOutcome::Cancelled,
                Ok(r) => CancelOutcome::Refused(status_name(r.status())),
                Err(e) => CancelOutcome::Error(e.to_string()),
            },
            CartSession::Postgres(pg) => pg.cancel(hold).await,
            CartSession::Redis(r) => r.cancel(hold).await,
        }
    }

    /// Every key's stock, and the holds past expiry the target never released.
    pub async fn final_state(&mut self, dataset: &Dataset) -> anyhow::Result<FinalState> {
        match self {
            CartSession::Ordo(client) => ordo_final_state(client, dataset).await,
            CartSession::Postgres(pg) => pg.final_state().await,
            CartSession::Redis(r) => r.final_state(dataset).await,
        }
    }
}

async fn ordo_reserve(client: &Client, lines: &[Line], ttl_s: u32) -> ReserveOutcome {
    let lines: Vec<OrdoLine> = lines
        .iter()
        .map(|&(dc_id, sku, qty)| OrdoLine { dc_id, sku, qty })
        .collect();
    let mut request = Reserve::new(&lines);
    request.ttl_s = ttl_s;
    match client.reserve(request).await {
        Ok(r) if r.status() == v1::ReservationStatus::Live => ReserveOutcome::Held(Hold {
            id: r.reservation_id,
            lines: r.lines.iter().map(|l| (l.dc_id, l.sku, l.held)).collect(),
            // Live exactly while the epoch's time is before expires_at_ms.
            expires_at_us: r.expires_at_ms as i64 * 1_000,
        }),
        Ok(r) => ReserveOutcome::Refused(ordo_reason(r.rejection.as_ref())),
        Err(e) => ReserveOutcome::Error(e.to_string()),
    }
}

fn ordo_reason(rejection: Option<&v1::Rejection>) -> &'static str {
    match rejection.map(|r| r.code()) {
        Some(v1::RejectCode::InsufficientStock) => "insufficient-stock",
        Some(v1::RejectCode::ReservationExpired) => "expired",
        Some(v1::RejectCode::ReservationConfirmed) => "already-confirmed",
        Some(v1::RejectCode::ReservationCancelled) => "already-cancelled",
        Some(v1::RejectCode::ReservationUnknown) => "unknown-reservation",
        Some(v1::RejectCode::NotHeld) => "not-held",
        _ => "other-rejection",
    }
}

fn status_name(status: v1::ReservationStatus) -> &'static str {
    match status {
        v1::ReservationStatus::Expired => "expired",
        v1::ReservationStatus::Confirmed => "already-confirmed",
        v1::ReservationStatus::Cancelled => "already-cancelled",
        v1::ReservationStatus::Rejected => "rejected",
        _ => "not-live",
    }
}

/// SKUs per availability read (the API's limit per call).
const AVAILABILITY_SKUS_MAX: usize = 1_000;

async fn ordo_final_state(client: &Client, dataset: &Dataset) -> anyhow::Result<FinalState> {
    // Confirmed with the leader, so a follower's lag cannot pass for lost units; each call is
    // one snapshot of every DC for its SKUs.
    let client = client.clone().with_consistency(Consistency::Linearizable);
    let dcs: Vec<u32> = (1..=dataset.dcs).collect();
    let skus: Vec<u32> = (1..=dataset.skus).collect();
    let mut rows = BTreeMap::new();
    for chunk in skus.chunks(AVAILABILITY_SKUS_MAX) {
        let answer = client
            .get_availability(dcs.clone(), chunk.to_vec())
            .await
            .context("reading availability")?;
        for sku in answer.items {
            for dc in sku.dcs {
                rows.insert(
                    (dc.dc_id, sku.sku),
                    StockRow {
                        on_hand: dc.on_hand,
                        reserved: dc.reserved,
                        available: dc.available,
                    },
                );
            }
        }
    }
    Ok(FinalState {
        rows,
        holds_unreleased: 0,
    })
}
