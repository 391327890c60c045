//! The PostgreSQL cart design, as a team would build it on one database: holds are rows with
//! an `expires_at`; a reserve moves units from available to `reserved` with a conditional
//! UPDATE and inserts the hold in the same transaction; a confirm checks `expires_at > now()`
//! in the transaction that sells the units; a sweeper gives lapsed holds' units back every
//! [`SWEEP_INTERVAL`], marking them expired in the same transaction.
//!
//! Tables: `stock(dc, sku, on_hand, reserved)`, `holds(id, expires_at, state)` and
//! `hold_lines(hold_id, dc, sku, qty)` (a cart's lines in their own table, so a hold is one
//! row to lock: a confirm and the sweeper serialise on it). Stock rows are always locked in
//! (dc, sku) order, so reserves, confirms, cancels and the sweeper cannot deadlock.
//! `available` is `on_hand - reserved`: a lapsed hold keeps its units reserved until the
//! sweeper's next pass (at most one interval plus the pass).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::{Client, Statement};

use super::check::{FinalState, StockRow};
use super::session::{CancelOutcome, ConfirmOutcome, Hold, ReserveOutcome};
use crate::targets::postgres_connect;
use crate::workload::{Dataset, Line};

/// How often the sweeper looks for lapsed holds.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// Holds one sweeper pass releases, at most (the rest wait for the next pass).
const SWEEP_HOLDS_MAX: i64 = 10_000;

const SCHEMA: &str = "
CREATE TABLE stock (dc int NOT NULL, sku int NOT NULL, on_hand bigint NOT NULL,
    reserved bigint NOT NULL, PRIMARY KEY (dc, sku),
    CHECK (reserved >= 0 AND on_hand >= reserved));
CREATE TABLE holds (id bigserial PRIMARY KEY, expires_at timestamptz NOT NULL,
    state text NOT NULL);
CREATE INDEX holds_live_by_expiry ON holds (expires_at) WHERE state = 'live';
CREATE TABLE hold_lines (hold_id bigint NOT NULL, dc int NOT NULL, sku int NOT NULL,
    qty bigint NOT NULL, PRIMARY KEY (hold_id, dc, sku));
";

/// µs since the Unix epoch of a timestamptz expression.
macro_rules! micros {
    ($e:literal) => {
        concat!("(extract(epoch from ", $e, ") * 1000000)::bigint")
    };
}

pub struct PgCart {
    client: Client,
    take: Statement,
    insert_hold: Statement,
    insert_lines: Statement,
    close_hold: Statement,
    hold_state: Statement,
    lines: Statement,
    sell: Statement,
    release: Statement,
}

impl PgCart {
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let client = postgres_connect(url).await?;
        // A fresh server per run: the schema is made by the loader, before any session.
        let exists: bool = client
            .query_one("SELECT to_regclass('hold_lines') IS NOT NULL", &[])
            .await?
            .get(0);
        if !exists {
            client.batch_execute(SCHEMA).await?;
        }
        let take = client
            .prepare(
                "UPDATE stock SET reserved = reserved + $3
                 WHERE dc = $1 AND sku = $2 AND on_hand - reserved >= $3",
            )
            .await?;
        let insert_hold = client
            .prepare(concat!(
                "INSERT INTO holds (expires_at, state)
                 VALUES (now() + $1::int4 * interval '1 second', 'live') RETURNING id, ",
                micros!("expires_at")
            ))
            .await?;
        let insert_lines = client
            .prepare(
                "INSERT INTO hold_lines (hold_id, dc, sku, qty)
                 SELECT $1, unnest($2::int4[]), unnest($3::int4[]), unnest($4::int8[])",
            )
            .await?;
        // $2: the state a confirm or a cancel leaves. Only a live hold before its expiry, at
        // the transaction's time, changes.
        let close_hold = client
            .prepare(concat!(
                "UPDATE holds SET state = $2 WHERE id = $1 AND state = 'live' AND expires_at > now()
                 RETURNING ",
                micros!("now()")
            ))
            .await?;
        let hold_state = client
            .prepare("SELECT state, expires_at <= now() FROM holds WHERE id = $1")
            .await?;
        let lines = client
            .prepare("SELECT dc, sku, qty FROM hold_lines WHERE hold_id = $1 ORDER BY dc, sku")
            .await?;
        let sell = client
            .prepare(
                "UPDATE stock SET on_hand = on_hand - $3, reserved = reserved - $3
                 WHERE dc = $1 AND sku = $2",
            )
            .await?;
        let release = client
            .prepare("UPDATE stock SET reserved = reserved - $3 WHERE dc = $1 AND sku = $2")
            .await?;
        Ok(Self {
            client,
            take,
            insert_hold,
            insert_lines,
            close_hold,
            hold_state,
            lines,
            sell,
            release,
        })
    }

    pub async fn load(&mut self, dataset: &Dataset) -> anyhow::Result<()> {
        self.client
            .batch_execute("TRUNCATE stock, holds, hold_lines")
            .await?;
        let keys: Vec<(u32, u32)> = dataset.keys().collect();
        for chunk in keys.chunks(1_000) {
            let values: Vec<String> = chunk
                .iter()
                .map(|(dc, sku)| format!("({dc},{sku},{},0)", dataset.stock))
                .collect();
            self.client
                .batch_execute(&format!("INSERT INTO stock VALUES {}", values.join(",")))
                .await?;
        }
        self.client.batch_execute("ANALYZE stock").await?;
        Ok(())
    }

    pub async fn reserve(&mut self, lines: &[Line], ttl_s: u32) -> ReserveOutcome {
        match self.try_reserve(lines, ttl_s).await {
            Ok(outcome) => outcome,
            Err(e) => ReserveOutcome::Error(e.to_string()),
        }
    }

    async fn try_reserve(&mut self, lines: &[Line], ttl_s: u32) -> anyhow::Result<ReserveOutcome> {
        let mut sorted = lines.to_vec();
        sorted.sort_unstable();
        let tx = self.client.transaction().await?;
        for &(dc, sku, qty) in &sorted {
            if tx
                .execute(&self.take, &[&(dc as i32), &(sku as i32), &qty])
                .await?
                != 1
            {
                tx.rollback().await?;
                return Ok(ReserveOutcome::Refused("insufficient-stock"));
            }
        }
        let row = tx.query_one(&self.insert_hold, &[&(ttl_s as i32)]).await?;
        let id: i64 = row.get(0);
        let expires_at_us: i64 = row.get(1);
        let dcs: Vec<i32> = sorted.iter().map(|l| l.0 as i32).collect();
        let skus: Vec<i32> = sorted.iter().map(|l| l.1 as i32).collect();
        let qtys: Vec<i64> = sorted.iter().map(|l| l.2).collect();
        tx.execute(&self.insert_lines, &[&id, &dcs, &skus, &qtys])
            .await?;
        tx.commit().await?;
        Ok(ReserveOutcome::Held(Hold {
            id: id as u64,
            lines: sorted,
            expires_at_us,
        }))
    }

    pub async fn confirm(&mut self, hold: &Hold) -> ConfirmOutcome {
        match self.close(hold, "confirmed").await {
            Ok(Ok(commit_us)) => ConfirmOutcome::Committed {
                commit_us: Some(commit_us),
            },
            Ok(Err(reason)) => ConfirmOutcome::Refused(reason),
            Err(e) => ConfirmOutcome::Error(e.to_string()),
        }
    }

    pub async fn cancel(&mut self, hold: &Hold) -> CancelOutcome {
        match self.close(hold, "cancelled").await {
            Ok(Ok(_)) => CancelOutcome::Cancelled,
            Ok(Err(reason)) => CancelOutcome::Refused(reason),
            Err(e) => CancelOutcome::Error(e.to_string()),
        }
    }

    /// Confirms (sells the units) or cancels (releases them) a live hold in one transaction.
    /// `Ok(Ok(now))`: done at the transaction's `now()`, µs; `Ok(Err(reason))`: not live.
    async fn close(
        &mut self,
        hold: &Hold,
        state: &str,
    ) -> anyhow::Result<Result<i64, &'static str>> {
        let id = hold.id as i64;
        let tx = self.client.transaction().await?;
        let Some(row) = tx.query_opt(&self.close_hold, &[&id, &state]).await? else {
            let reason = match tx.query_opt(&self.hold_state, &[&id]).await? {
                None => "unknown-reservation",
                Some(row) => match (row.get::<_, String>(0).as_str(), row.get::<_, bool>(1)) {
                    ("live", true) | ("expired", _) => "expired",
                    ("confirmed", _) => "already-confirmed",
                    ("cancelled", _) => "already-cancelled",
                    _ => "not-live",
                },
            };
            tx.rollback().await?;
            return Ok(Err(reason));
        };
        let now_us: i64 = row.get(0);
        let statement = if state == "confirmed" {
            &self.sell
        } else {
            &self.release
        };
        for line in tx.query(&self.lines, &[&id]).await? {
            let (dc, sku, qty): (i32, i32, i64) = (line.get(0), line.get(1), line.get(2));
            tx.execute(statement, &[&dc, &sku, &qty]).await?;
        }
        tx.commit().await?;
        Ok(Ok(now_us))
    }

    pub async fn final_state(&mut self) -> anyhow::Result<FinalState> {
        let mut rows = BTreeMap::new();
        for row in self
            .client
            .query("SELECT dc, sku, on_hand, reserved FROM stock", &[])
            .await?
        {
            let (dc, sku, on_hand, reserved): (i32, i32, i64, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            rows.insert(
                (dc as u32, sku as u32),
                StockRow {
                    on_hand,
                    reserved,
                    available: on_hand - reserved,
                },
            );
        }
        let unreleased: i64 = self
            .client
            .query_one(
                "SELECT count(*) FROM holds WHERE state = 'live' AND expires_at <= now()",
                &[],
            )
            .await?
            .get(0);
        Ok(FinalState {
            rows,
            holds_unreleased: unreleased as u64,
        })
    }
}

/// What the sweeper did over the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepStats {
    pub passes: u64,
    pub holds_released: u64,
    pub units_released: i64,
    /// The longest a released hold had been past its expiry, ms.
    pub release_lag_ms_max: i64,
    pub errors: u64,
}

/// The background sweeper: one connection, one pass every [`SWEEP_INTERVAL`].
pub struct Sweeper {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<SweepStats>,
}

impl Sweeper {
    pub async fn start(url: &str) -> anyhow::Result<Self> {
        let mut client = postgres_connect(url).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut stats = SweepStats::default();
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            while !stopping.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Err(e) = sweep(&mut client, &mut stats).await {
                    tracing::warn!(error = %e, "sweeper pass failed");
                    stats.errors += 1;
                }
                stats.passes += 1;
            }
            stats
        });
        Ok(Self { stop, task })
    }

    pub async fn stop(self) -> SweepStats {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// One pass: mark lapsed live holds expired and give their units back, in one transaction.
/// Holds a confirm or cancel has locked are skipped (that transaction decides them).
async fn sweep(client: &mut Client, stats: &mut SweepStats) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    let expired = tx
        .query(
            "UPDATE holds SET state = 'expired' WHERE id IN (
                 SELECT id FROM holds WHERE state = 'live' AND expires_at <= now()
                 ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, (extract(epoch from now() - expires_at) * 1000)::bigint",
            &[&SWEEP_HOLDS_MAX],
        )
        .await?;
    if expired.is_empty() {
        tx.commit().await?;
        return Ok(());
    }
    let ids: Vec<i64> = expired.iter().map(|r| r.get(0)).collect();
    let lag_ms_max = expired
        .iter()
        .map(|r| r.get::<_, i64>(1))
        .max()
        .unwrap_or(0);
    let sums = tx
        .query(
            "SELECT dc, sku, sum(qty)::bigint FROM hold_lines WHERE hold_id = ANY($1)
             GROUP BY dc, sku ORDER BY dc, sku",
            &[&ids],
        )
        .await?;
    let dcs: Vec<i32> = sums.iter().map(|r| r.get(0)).collect();
    let skus: Vec<i32> = sums.iter().map(|r| r.get(1)).collect();
    let qtys: Vec<i64> = sums.iter().map(|r| r.get(2)).collect();
    // Lock the stock rows in key order first, as every other transaction does.
    tx.execute(
        "SELECT 1 FROM stock WHERE (dc, sku) IN (SELECT unnest($1::int4[]), unnest($2::int4[]))
         ORDER BY dc, sku FOR UPDATE",
        &[&dcs, &skus],
    )
    .await?;
    tx.execute(
        "UPDATE stock s SET reserved = s.reserved - r.qty
         FROM (SELECT unnest($1::int4[]) AS dc, unnest($2::int4[]) AS sku,
                      unnest($3::int8[]) AS qty) r
         WHERE s.dc = r.dc AND s.sku = r.sku",
        &[&dcs, &skus, &qtys],
    )
    .await?;
    tx.commit().await?;
    stats.holds_released += ids.len() as u64;
    stats.units_released += qtys.iter().sum::<i64>();
    stats.release_lag_ms_max = stats.release_lag_ms_max.max(lag_ms_max);
    Ok(())
}
