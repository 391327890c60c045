//! The Redis cart design, as the seeds build it: the stock counter `s:{dc}:{sku}` is what is
//! available; a reserve DECRBYs each line (and INCRBYs them back if any went negative), then
//! writes the hold's lines under `holdlines:{id}` and a marker `hold:{id}` with EXPIRE ttl. A
//! listener subscribed to keyspace notifications (`notify-keyspace-events Ex`) hears
//! `hold:{id}` expire and INCRBYs the lines back. A confirm checks that `hold:{id}` exists,
//! then DELs it and its lines (check-then-act, three round trips, no Lua); a cancel DELs the
//! marker and, if it was there, gives the units back.
//!
//! What the design allows, and the check counts: a confirm whose EXISTS saw the marker just
//! before it lapsed succeeds after expiry (and if the listener read the lines before the
//! confirm deleted them, the units are sold and released: oversold); an expiry event is
//! fire-and-forget, so one the listener misses (disconnect, a full queue) leaks the hold's
//! units for good.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use serde::Serialize;

use super::check::{FinalState, StockRow};
use super::session::{CancelOutcome, ConfirmOutcome, Hold, ReserveOutcome};
use crate::targets::redis_key;
use crate::workload::{Dataset, Line};

/// Expiry events waiting for the listener, at most; past it an event is dropped and its
/// hold's units leak (Redis itself drops a subscriber whose output buffer passes its limit).
const LISTENER_QUEUE_MAX: usize = 100_000;
/// The channel Redis publishes expired keys on (database 0).
const EXPIRED_CHANNEL: &str = "__keyevent@0__:expired";
/// Keys per SCAN or MGET call at the end.
const SCAN_COUNT: usize = 1_000;

fn hold_key(id: u64) -> String {
    format!("hold:{id}")
}

fn lines_key(id: u64) -> String {
    format!("holdlines:{id}")
}

fn encode_lines(lines: &[Line]) -> String {
    let parts: Vec<String> = lines
        .iter()
        .map(|(dc, sku, qty)| format!("{dc}:{sku}:{qty}"))
        .collect();
    parts.join(",")
}

fn decode_lines(value: &str) -> anyhow::Result<Vec<Line>> {
    value
        .split(',')
        .map(|part| {
            let mut it = part.split(':').map(str::parse::<i64>);
            match (it.next(), it.next(), it.next()) {
                (Some(Ok(dc)), Some(Ok(sku)), Some(Ok(qty))) => Ok((dc as u32, sku as u32, qty)),
                _ => anyhow::bail!("bad hold lines {value:?}"),
            }
        })
        .collect()
}

pub struct RedisCart {
    conn: MultiplexedConnection,
    /// Hold ids are made by the client: its index in the high bits, a counter below.
    id_prefix: u64,
    next_id: u64,
}

impl RedisCart {
    pub async fn open(url: &str, index: usize) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        Ok(Self {
            conn: client.get_multiplexed_async_connection().await?,
            id_prefix: (index as u64 + 1) << 40,
            next_id: 0,
        })
    }

    pub async fn enable_expiry_events(&mut self) -> anyhow::Result<()> {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg("Ex")
            .query_async::<()>(&mut self.conn)
            .await
            .context("enabling keyspace notifications")
    }

    pub async fn reserve(&mut self, lines: &[Line], ttl_s: u32) -> ReserveOutcome {
        match self.try_reserve(lines, ttl_s).await {
            Ok(outcome) => outcome,
            Err(e) => ReserveOutcome::Error(e.to_string()),
        }
    }

    async fn try_reserve(&mut self, lines: &[Line], ttl_s: u32) -> anyhow::Result<ReserveOutcome> {
        let mut take = redis::pipe();
        for &(dc, sku, qty) in lines {
            take.cmd("DECRBY").arg(redis_key(dc, sku)).arg(qty);
        }
        let left: Vec<i64> = take.query_async(&mut self.conn).await?;
        if left.iter().any(|&n| n < 0) {
            let mut give_back = redis::pipe();
            for &(dc, sku, qty) in lines {
                give_back
                    .cmd("INCRBY")
                    .arg(redis_key(dc, sku))
                    .arg(qty)
                    .ignore();
            }
            give_back.query_async::<()>(&mut self.conn).await?;
            return Ok(ReserveOutcome::Refused("insufficient-stock"));
        }
        self.next_id += 1;
        let id = self.id_prefix | self.next_id;
        let (expires_at_ms,): (i64,) = redis::pipe()
            .cmd("SET")
            .arg(lines_key(id))
            .arg(encode_lines(lines))
            .ignore()
            .cmd("SET")
            .arg(hold_key(id))
            .arg(1)
            .arg("EX")
            .arg(ttl_s)
            .ignore()
            .cmd("PEXPIRETIME")
            .arg(hold_key(id))
            .query_async(&mut self.conn)
            .await?;
        Ok(ReserveOutcome::Held(Hold {
            id,
            lines: lines.to_vec(),
            // Redis keeps a key through the whole millisecond of its expire time (it lapses
            // when now > when).
            expires_at_us: (expires_at_ms + 1) * 1_000,
        }))
    }

    pub async fn confirm(&mut self, hold: &Hold) -> ConfirmOutcome {
        match self.try_confirm(hold).await {
            Ok(outcome) => outcome,
            Err(e) => ConfirmOutcome::Error(e.to_string()),
        }
    }

    async fn try_confirm(&mut self, hold: &Hold) -> anyhow::Result<ConfirmOutcome> {
        let exists: bool = redis::cmd("EXISTS")
            .arg(hold_key(hold.id))
            .query_async(&mut self.conn)
            .await?;
        if !exists {
            return Ok(ConfirmOutcome::Refused("expired"));
        }
        // The seeds' check-then-act: DEL's answer is not looked at. TIME right after the DEL
        // is the confirm's commit time.
        let ((seconds, micros),): ((i64, i64),) = redis::pipe()
            .cmd("DEL")
            .arg(hold_key(hold.id))
            .ignore()
            .cmd("TIME")
            .query_async(&mut self.conn)
            .await?;
        redis::cmd("DEL")
            .arg(lines_key(hold.id))
            .query_async::<()>(&mut self.conn)
            .await?;
        Ok(ConfirmOutcome::Committed {
            commit_us: Some(seconds * 1_000_000 + micros),
        })
    }

    pub async fn cancel(&mut self, hold: &Hold) -> CancelOutcome {
        let deleted: redis::RedisResult<i64> = redis::cmd("DEL")
            .arg(hold_key(hold.id))
            .query_async(&mut self.conn)
            .await;
        match deleted {
            Ok(0) => CancelOutcome::Refused("expired"),
            Ok(_) => match release(&mut self.conn, hold.id, &hold.lines).await {
                Ok(()) => CancelOutcome::Cancelled,
                Err(e) => CancelOutcome::Error(e.to_string()),
            },
            Err(e) => CancelOutcome::Error(e.to_string()),
        }
    }

    /// The counters, and the holds whose lines are still there although their marker is gone
    /// (their release never happened): their units count as reserved.
    pub async fn final_state(&mut self, dataset: &Dataset) -> anyhow::Result<FinalState> {
        let mut leaked: BTreeMap<(u32, u32), i64> = BTreeMap::new();
        let mut holds_unreleased = 0;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("holdlines:*")
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut self.conn)
                .await?;
            for key in keys {
                let marker = key.replacen("holdlines:", "hold:", 1);
                let (live, lines): (bool, Option<String>) = redis::pipe()
                    .cmd("EXISTS")
                    .arg(&marker)
                    .cmd("GET")
                    .arg(&key)
                    .query_async(&mut self.conn)
                    .await?;
                let Some(lines) = lines.filter(|_| !live) else {
                    continue;
                };
                holds_unreleased += 1;
                for (dc, sku, qty) in decode_lines(&lines)? {
                    *leaked.entry((dc, sku)).or_default() += qty;
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let keys: Vec<(u32, u32)> = dataset.keys().collect();
        let mut rows = BTreeMap::new();
        for chunk in keys.chunks(SCAN_COUNT) {
            let mut get = redis::cmd("MGET");
            for &(dc, sku) in chunk {
                get.arg(redis_key(dc, sku));
            }
            let values: Vec<Option<i64>> = get.query_async(&mut self.conn).await?;
            for (&key, value) in chunk.iter().zip(values) {
                let available = value.context("a stock key is missing in Redis")?;
                let reserved = leaked.get(&key).copied().unwrap_or(0);
                rows.insert(
                    key,
                    StockRow {
                        on_hand: available + reserved,
                        reserved,
                        available,
                    },
                );
            }
        }
        Ok(FinalState {
            rows,
            holds_unreleased,
        })
    }
}

/// Gives a hold's units back and drops its lines (not atomic, like the seeds').
async fn release(conn: &mut MultiplexedConnection, id: u64, lines: &[Line]) -> anyhow::Result<()> {
    let mut pipe = redis::pipe();
    for &(dc, sku, qty) in lines {
        pipe.cmd("INCRBY").arg(redis_key(dc, sku)).arg(qty).ignore();
    }
    pipe.cmd("DEL").arg(lines_key(id)).ignore();
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

/// What the expiry listener did over the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ListenStats {
    /// `expired` events for hold markers received.
    pub events: u64,
    /// Events dropped because the listener's queue was full.
    pub events_dropped: u64,
    pub holds_released: u64,
    pub units_released: i64,
    /// Events whose hold had no lines left (a confirm or cancel got there first).
    pub holds_already_closed: u64,
    pub errors: u64,
}

/// The expiry listener: a RESP3 connection subscribed to expired-key events, feeding a
/// bounded queue, and one task releasing each expired hold's units.
pub struct Listener {
    stop: tokio::sync::watch::Sender<bool>,
    dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<ListenStats>,
    /// Kept open: dropping it ends the subscription.
    _subscription: MultiplexedConnection,
}

impl Listener {
    pub async fn start(url: &str) -> anyhow::Result<Self> {
        let resp3 = format!("{url}?protocol=resp3");
        let client = redis::Client::open(resp3.as_str())?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(LISTENER_QUEUE_MAX);
        let dropped = Arc::new(AtomicU64::new(0));
        let dropped_by_sender = dropped.clone();
        let sender = move |info: PushInfo| -> Result<(), ()> {
            if info.kind != PushKind::Message && info.kind != PushKind::PMessage {
                return Ok(());
            }
            if let Some(Value::BulkString(key)) = info.data.last() {
                let key = String::from_utf8_lossy(key).into_owned();
                if tx.try_send(key).is_err() {
                    dropped_by_sender.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        };
        let config = AsyncConnectionConfig::new().set_push_sender(sender);
        let mut subscription = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .context("connecting the expiry listener (RESP3)")?;
        subscription
            .subscribe(EXPIRED_CHANNEL)
            .await
            .context("subscribing to expired keys")?;
        let mut conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut stats = ListenStats::default();
            // Once stopping, the events already queued are still handled, then it ends.
            let mut stopping = false;
            loop {
                let key = if stopping {
                    match rx.try_recv() {
                        Ok(key) => key,
                        Err(_) => break,
                    }
                } else {
                    tokio::select! {
                        biased;
                        key = rx.recv() => match key {
                            Some(key) => key,
                            None => break,
                        },
                        _ = stopped.changed() => {
                            stopping = true;
                            continue;
                        }
                    }
                };
                let Some(id) = key
                    .strip_prefix("hold:")
                    .and_then(|s| s.parse::<u64>().ok())
                else {
                    continue;
                };
                stats.events += 1;
                if let Err(e) = release_expired(&mut conn, id, &mut stats).await {
                    tracing::warn!(error = %e, "expiry listener failed to release hold {id}");
                    stats.errors += 1;
                }
            }
            stats
        });
        Ok(Self {
            stop,
            dropped,
            task,
            _subscription: subscription,
        })
    }

    /// Stops after the events already queued have been handled.
    pub async fn stop(self) -> ListenStats {
        let _ = self.stop.send(true);
        let mut stats = self.task.await.unwrap_or_default();
        stats.events_dropped = self.dropped.load(Ordering::Relaxed);
        stats
    }
}

/// The listener's release: read the hold's lines, give them back, drop the lines.
async fn release_expired(
    conn: &mut MultiplexedConnection,
    id: u64,
    stats: &mut ListenStats,
) -> anyhow::Result<()> {
    let lines: Option<String> = redis::cmd("GET")
        .arg(lines_key(id))
        .query_async(conn)
        .await?;
    let Some(lines) = lines else {
        stats.holds_already_closed += 1;
        return Ok(());
    };
    let lines = decode_lines(&lines)?;
    release(conn, id, &lines).await?;
    stats.holds_released += 1;
    stats.units_released += lines.iter().map(|l| l.2).sum::<i64>();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_lines_round_trip() {
        let lines = vec![(1, 2, 3), (6, 1000, 1)];
        assert_eq!(decode_lines(&encode_lines(&lines)).unwrap(), lines);
        assert!(decode_lines("1:2").is_err());
    }
}
