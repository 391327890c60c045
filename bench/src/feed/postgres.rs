//! The PostgreSQL designs for a change feed, beside the same orders as transactions.
//!
//! Tables: `stock(dc, sku, qty)` (the order workloads' table, loaded the same way),
//! `orders(id bigserial, lines text)` and `prices(sku, cents)`. An order is one transaction:
//! one `UPDATE … FROM unnest(…)` of its rows (each `qty >= wanted`; lines in (dc, sku) order,
//! retried on a deadlock) and the order's `INSERT` in the same statement, then `COMMIT`
//! (fsync), or `ROLLBACK` when a row had too little. A price change is one `UPDATE`.
//!
//! Two ways to follow the changes ([`PgFeed`]):
//! - *logical decoding*: a `test_decoding` slot per watcher, polled with
//!   `pg_logical_slot_get_changes` (durable and in commit order; each poll decodes the WAL
//!   from the slot's restart point again);
//! - *LISTEN/NOTIFY*: `AFTER` row triggers calling `pg_notify` (stock and orders for the feed
//!   workload, prices only for price-latency), one `LISTEN` connection per watcher (delivered
//!   after commit, in commit order, lost if the listener is not connected).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, Statement};

use super::subscriber::{unix_us, Batch, Delivery, Subscriber};
use super::PgFeed;
use crate::targets::postgres_connect;
use crate::workload::Line;

/// Attempts of an order that lost to a deadlock or a serialization failure.
const ORDER_ATTEMPTS_MAX: u32 = 20;
/// Rows one decoding poll returns, at most (`upto_nchanges`; whole transactions only).
const POLL_ROWS_MAX: i32 = 10_000;
/// Notifications the listener's connection task holds for its watcher, at most; past it the
/// task waits and PostgreSQL's own queue holds the rest.
const NOTIFICATIONS_BUFFERED_MAX: usize = 100_000;
/// A LISTEN watcher with nothing to read returns an empty delivery this often.
const LISTEN_WAIT: Duration = Duration::from_millis(100);
/// The prefix of the logical message that ends a decoding run.
const END_PREFIX: &str = "ordo-bench-end";
const CHANNEL_FEED: &str = "ordo_feed";
const CHANNEL_PRICES: &str = "ordo_prices";

const SCHEMA: &str = "
CREATE TABLE orders (id bigserial PRIMARY KEY, lines text NOT NULL);
CREATE TABLE prices (sku int PRIMARY KEY, cents bigint NOT NULL);
";

/// `pg_notify` from a row trigger: the payload names the change and carries the trigger's
/// `clock_timestamp()` (µs since the Unix epoch), the commit-side time of this design.
fn notify_trigger(table: &str, when: &str, channel: &str, payload: &str) -> String {
    format!(
        "CREATE FUNCTION notify_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           PERFORM pg_notify('{channel}', {payload} || ',' ||
             (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
           RETURN NULL;
         END $$;
         CREATE TRIGGER {table}_notify AFTER {when} ON {table}
           FOR EACH ROW EXECUTE FUNCTION notify_{table}();"
    )
}

/// The slot of decoding watcher `i`.
fn slot(i: usize) -> String {
    format!("ordo_feed_{i}")
}

/// Makes the feed's tables (after the stock is loaded), the design's triggers or slots, and
/// `skus` prices.
pub async fn prepare(
    url: &str,
    design: PgFeed,
    prices: bool,
    watchers: usize,
    skus: u32,
) -> anyhow::Result<()> {
    let client = postgres_connect(url).await?;
    client.batch_execute(SCHEMA).await?;
    client
        .execute(
            "INSERT INTO prices SELECT s, 100 FROM generate_series(1, $1::int4) s",
            &[&(skus as i32)],
        )
        .await?;
    match (design, prices) {
        (PgFeed::Notify, false) => {
            client
                .batch_execute(&notify_trigger(
                    "stock",
                    "UPDATE",
                    CHANNEL_FEED,
                    "'s,' || NEW.dc || ',' || NEW.sku || ',' || NEW.qty",
                ))
                .await?;
            client
                .batch_execute(&notify_trigger(
                    "orders",
                    "INSERT",
                    CHANNEL_FEED,
                    "'o,' || NEW.id",
                ))
                .await?;
        }
        (PgFeed::Notify, true) => {
            client
                .batch_execute(&notify_trigger(
                    "prices",
                    "UPDATE",
                    CHANNEL_PRICES,
                    "'p,' || NEW.sku || ',' || NEW.cents",
                ))
                .await?;
        }
        (PgFeed::Decoding, _) => {
            for i in 0..watchers {
                client
                    .execute(
                        "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
                        &[&slot(i)],
                    )
                    .await?;
            }
        }
    }
    client.batch_execute("ANALYZE").await?;
    Ok(())
}

/// After the last order was answered: the marker that tells each watcher it has everything.
pub async fn mark_end(url: &str, design: PgFeed, prices: bool) -> anyhow::Result<()> {
    let client = postgres_connect(url).await?;
    match design {
        PgFeed::Decoding => {
            client
                .execute(
                    "SELECT pg_logical_emit_message(true, $1, 'end')::text",
                    &[&END_PREFIX],
                )
                .await?;
        }
        PgFeed::Notify => {
            let channel = if prices { CHANNEL_PRICES } else { CHANNEL_FEED };
            client
                .execute("SELECT pg_notify($1, 'end')", &[&channel])
                .await?;
        }
    }
    Ok(())
}

/// One order client.
pub struct PgOrders {
    client: Client,
    order: Statement,
}

impl PgOrders {
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let client = postgres_connect(url).await?;
        let order = client
            .prepare(
                "WITH taken AS (
                   UPDATE stock s SET qty = s.qty - u.qty
                   FROM (SELECT unnest($1::int4[]) AS dc, unnest($2::int4[]) AS sku,
                                unnest($3::int8[]) AS qty) u
                   WHERE s.dc = u.dc AND s.sku = u.sku AND s.qty >= u.qty
                   RETURNING 1)
                 INSERT INTO orders (lines) SELECT $4 WHERE (SELECT count(*) FROM taken) = $5
                 RETURNING id",
            )
            .await?;
        Ok(Self { client, order })
    }

    pub async fn order(&mut self, lines: &[Line]) -> super::orders::OrderOutcome {
        use super::orders::OrderOutcome;
        for _ in 0..ORDER_ATTEMPTS_MAX {
            match self.try_order(lines).await {
                Ok(Some(order_id)) => {
                    return OrderOutcome::Committed { order_id, epoch: 0 };
                }
                Ok(None) => return OrderOutcome::Rejected("insufficient-stock"),
                Err(e) => {
                    let code = e.code();
                    if code == Some(&SqlState::T_R_DEADLOCK_DETECTED)
                        || code == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
                    {
                        continue;
                    }
                    return OrderOutcome::Error(e.to_string());
                }
            }
        }
        OrderOutcome::Error(format!(
            "postgres: lost to a deadlock or serialization failure {ORDER_ATTEMPTS_MAX} times"
        ))
    }

    async fn try_order(&mut self, lines: &[Line]) -> Result<Option<u64>, tokio_postgres::Error> {
        let dcs: Vec<i32> = lines.iter().map(|l| l.0 as i32).collect();
        let skus: Vec<i32> = lines.iter().map(|l| l.1 as i32).collect();
        let qtys: Vec<i64> = lines.iter().map(|l| l.2).collect();
        let text = lines
            .iter()
            .map(|(dc, sku, qty)| format!("{dc}:{sku}:{qty}"))
            .collect::<Vec<_>>()
            .join(",");
        let count = lines.len() as i64;
        let tx = self.client.transaction().await?;
        let row = tx
            .query_opt(&self.order, &[&dcs, &skus, &qtys, &text, &count])
            .await?;
        match row {
            Some(row) => {
                let id: i64 = row.get(0);
                tx.commit().await?;
                Ok(Some(id as u64))
            }
            None => {
                tx.rollback().await?;
                Ok(None)
            }
        }
    }
}

/// The price-latency writer.
pub struct PgPrices {
    client: Client,
    set: Statement,
}

impl PgPrices {
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let client = postgres_connect(url).await?;
        let set = client
            .prepare("UPDATE prices SET cents = $2 WHERE sku = $1")
            .await?;
        Ok(Self { client, set })
    }

    pub async fn set(&mut self, sku: u32, cents: i64) -> Result<(), String> {
        match self
            .client
            .execute(&self.set, &[&(sku as i32), &cents])
            .await
        {
            Ok(1) => Ok(()),
            Ok(n) => Err(format!("postgres: the price update changed {n} rows")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A watcher on its own replication slot.
pub struct PgDecoding {
    client: Client,
    poll: Statement,
    slot: String,
    idle: Duration,
}

impl PgDecoding {
    pub async fn open(url: &str, watcher: usize, idle: Duration) -> anyhow::Result<Self> {
        let client = postgres_connect(url).await?;
        // Commit timestamps print in the session's time zone.
        client
            .batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO'")
            .await?;
        let poll = client
            .prepare(
                "SELECT lsn::text, data FROM pg_logical_slot_get_changes($1, NULL, $2,
                   'include-xids', '0', 'include-timestamp', '1', 'skip-empty-xacts', '1')",
            )
            .await?;
        Ok(Self {
            client,
            poll,
            slot: slot(watcher),
            idle,
        })
    }
}

impl Subscriber for PgDecoding {
    async fn next(&mut self) -> anyhow::Result<Delivery> {
        let rows = self
            .client
            .query(&self.poll, &[&self.slot, &POLL_ROWS_MAX])
            .await?;
        let mut d = Delivery::now();
        let mut open: Option<Batch> = None;
        for row in &rows {
            let lsn: &str = row.get(0);
            let data: &str = row.get(1);
            decoded(&mut d, &mut open, lsn, data)?;
        }
        anyhow::ensure!(
            open.is_none(),
            "a poll of {} ended inside a transaction",
            self.slot
        );
        if rows.len() < POLL_ROWS_MAX as usize {
            tokio::time::sleep(self.idle).await;
        }
        Ok(d)
    }
}

/// One row of test_decoding's output into `d`: BEGIN opens a batch, a change counts in it,
/// COMMIT (with its LSN and timestamp) closes it.
fn decoded(
    d: &mut Delivery,
    open: &mut Option<Batch>,
    lsn: &str,
    data: &str,
) -> anyhow::Result<()> {
    if data.starts_with("BEGIN") {
        *open = Some(Batch {
            in_order: true,
            ..Default::default()
        });
    } else if let Some(rest) = data.strip_prefix("COMMIT") {
        let mut b = open.take().unwrap_or_default();
        let position = parse_lsn(lsn).ok_or_else(|| anyhow::anyhow!("bad LSN {lsn:?}"))?;
        b.position = Some(((position, 0), (position, 0)));
        b.commit_unix_us = rest
            .split_once("(at ")
            .and_then(|(_, at)| parse_timestamp_us(at.trim_end_matches(')')))
            .ok_or_else(|| anyhow::anyhow!("no commit timestamp in {data:?}"))?;
        if b.events > 0 {
            d.batches.push(b);
        }
    } else if data.starts_with("message:") {
        if data.contains(&format!("prefix: {END_PREFIX},")) {
            d.end_marker = true;
        }
    } else if let Some(change) = data.strip_prefix("table ") {
        let b = open.get_or_insert_with(Batch::default);
        b.events += 1;
        if change.starts_with("public.orders: INSERT:") {
            let id = field(change, "id[bigint]:")
                .ok_or_else(|| anyhow::anyhow!("no order id in {data:?}"))?;
            b.orders.push(id as u64);
        } else if change.starts_with("public.prices: UPDATE:") {
            let sku = field(change, "sku[integer]:");
            let cents = field(change, "cents[bigint]:");
            if let (Some(sku), Some(cents)) = (sku, cents) {
                b.prices.push((sku as u32, cents));
            }
        }
    }
    Ok(())
}

/// The integer after `name` in a test_decoding change line.
fn field(change: &str, name: &str) -> Option<i64> {
    let (_, rest) = change.split_once(name)?;
    rest.split(' ').next()?.parse().ok()
}

/// `16/B374D848` as a number.
fn parse_lsn(lsn: &str) -> Option<u64> {
    let (hi, lo) = lsn.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// An ISO timestamp as PostgreSQL prints it (`2026-11-24 10:00:00.123456+00`, optionally with
/// minutes in the offset) as µs since the Unix epoch.
pub fn parse_timestamp_us(s: &str) -> Option<i64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>());
    let (y, m, d) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let zone_at = time.rfind(['+', '-'])?;
    let (clock, zone) = time.split_at(zone_at);
    let mut hms = clock.splitn(3, ':');
    let h: i64 = hms.next()?.parse().ok()?;
    let min: i64 = hms.next()?.parse().ok()?;
    let sec = hms.next()?;
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let whole: i64 = whole.parse().ok()?;
    let frac_us: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}")[..6].parse().ok()?
    };
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let mut zone_parts = zone[1..].splitn(2, ':');
    let zone_h: i64 = zone_parts.next()?.parse().ok()?;
    let zone_m: i64 = zone_parts.next().map_or(Some(0), |z| z.parse().ok())?;
    let days = days_from_civil(y, m, d);
    let local_s = days * 86_400 + h * 3_600 + min * 60 + whole;
    let utc_s = local_s - sign * (zone_h * 3_600 + zone_m * 60);
    Some(utc_s * 1_000_000 + frac_us)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A watcher on its own LISTEN connection.
pub struct PgListen {
    /// Kept so the connection stays open.
    _client: Client,
    notifications: mpsc::Receiver<(Instant, i64, String)>,
}

impl PgListen {
    pub async fn open(url: &str, prices: bool) -> anyhow::Result<Self> {
        let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let (tx, rx) = mpsc::channel(NOTIFICATIONS_BUFFERED_MAX);
        // The connection's task stamps each notification as it comes off the socket.
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        let stamped = (Instant::now(), unix_us(), n.payload().to_string());
                        if tx.send(stamped).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "a LISTEN connection ended");
                        break;
                    }
                    None => break,
                }
            }
        });
        let channel = if prices { CHANNEL_PRICES } else { CHANNEL_FEED };
        client.batch_execute(&format!("LISTEN {channel}")).await?;
        Ok(Self {
            _client: client,
            notifications: rx,
        })
    }
}

impl Subscriber for PgListen {
    async fn next(&mut self) -> anyhow::Result<Delivery> {
        let (received, received_unix_us, payload) =
            match tokio::time::timeout(LISTEN_WAIT, self.notifications.recv()).await {
                Err(_) => return Ok(Delivery::now()),
                Ok(None) => anyhow::bail!("the LISTEN connection closed"),
                Ok(Some(n)) => n,
            };
        let mut d = Delivery {
            received,
            received_unix_us,
            batches: Vec::new(),
            through: None,
            end_marker: false,
        };
        if payload == "end" {
            d.end_marker = true;
            return Ok(d);
        }
        d.batches.push(
            notified(&payload)
                .ok_or_else(|| anyhow::anyhow!("an unexpected notification {payload:?}"))?,
        );
        Ok(d)
    }
}

/// A trigger's payload: `s,dc,sku,qty,at`, `o,id,at` or `p,sku,cents,at`.
fn notified(payload: &str) -> Option<Batch> {
    let parts: Vec<&str> = payload.split(',').collect();
    let at: i64 = parts.last()?.parse().ok()?;
    let mut b = Batch {
        commit_unix_us: at,
        in_order: true,
        events: 1,
        ..Default::default()
    };
    match parts.as_slice() {
        ["s", _, _, _, _] => {}
        ["o", id, _] => b.orders.push(id.parse().ok()?),
        ["p", sku, cents, _] => b.prices.push((sku.parse().ok()?, cents.parse().ok()?)),
        _ => return None,
    }
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_lsns_parse() {
        assert_eq!(parse_timestamp_us("1970-01-01 00:00:00+00"), Some(0));
        assert_eq!(
            parse_timestamp_us("2026-11-24 10:00:00.123456+00"),
            Some(1_795_514_400_123_456)
        );
        assert_eq!(
            parse_timestamp_us("2026-11-24 15:30:00.5+05:30"),
            Some(1_795_514_400_500_000)
        );
        assert_eq!(
            parse_timestamp_us("2000-02-29 23:59:59-01"),
            Some(951_872_399_000_000)
        );
        assert_eq!(parse_timestamp_us("not a time"), None);
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
    }

    #[test]
    fn test_decoding_rows_become_batches() {
        let mut d = Delivery::now();
        let mut open = None;
        for (lsn, data) in [
            ("0/10", "BEGIN"),
            (
                "0/11",
                "table public.stock: UPDATE: dc[integer]:1 sku[integer]:7 qty[bigint]:99",
            ),
            (
                "0/12",
                "table public.orders: INSERT: id[bigint]:42 lines[text]:'1:7:1'",
            ),
            ("0/20", "COMMIT (at 2026-11-24 10:00:00.000001+00)"),
            ("0/21", "BEGIN"),
            (
                "0/22",
                "table public.prices: UPDATE: sku[integer]:3 cents[bigint]:100005",
            ),
            ("0/30", "COMMIT (at 2026-11-24 10:00:01+00)"),
            ("0/31", "BEGIN"),
            (
                "0/32",
                "message: transactional: 1 prefix: ordo-bench-end, sz: 3 content:end",
            ),
            ("0/33", "COMMIT (at 2026-11-24 10:00:02+00)"),
        ] {
            decoded(&mut d, &mut open, lsn, data).unwrap();
        }
        assert!(open.is_none() && d.end_marker);
        assert_eq!(d.batches.len(), 2, "the marker's transaction has no change");
        assert_eq!(d.batches[0].events, 2);
        assert_eq!(d.batches[0].orders, vec![42]);
        assert_eq!(d.batches[0].position, Some(((0x20, 0), (0x20, 0))));
        assert_eq!(d.batches[0].commit_unix_us, 1_795_514_400_000_001);
        assert_eq!(d.batches[1].prices, vec![(3, 100_005)]);
    }

    #[test]
    fn trigger_payloads_become_batches() {
        assert_eq!(notified("o,17,1000").unwrap().orders, vec![17]);
        assert_eq!(
            notified("p,3,100005,1000").unwrap().prices,
            vec![(3, 100_005)]
        );
        let s = notified("s,1,2,3,1000").unwrap();
        assert_eq!((s.events, s.commit_unix_us), (1, 1000));
        assert!(notified("x,1").is_none());
    }
}
