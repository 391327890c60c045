//! What a watcher receives, whatever the target: [`Delivery`]s of [`Batch`]es of changes, from
//! a [`Subscriber`] (Ordo's Watch stream, a PostgreSQL decoding slot, a LISTEN connection),
//! and the loop every watcher task runs over one ([`follow`]).
//!
//! The seam is the trait: a per-subscriber notification stream can implement [`Subscriber`]
//! and be measured by the same loop, tally and report without touching them.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::check::WatcherTally;

/// After the orders stop, how long a watcher may take to receive everything committed before
/// it counts as not caught up (and the run's check fails).
pub const CATCH_UP_MAX: Duration = Duration::from_secs(180);

/// When a run's phases begin and end.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub measure_from: Instant,
    /// The orders stop here; the watchers then catch up.
    pub end: Instant,
}

/// The changes of one transaction (PostgreSQL) or one epoch (Ordo) that a watcher received.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// When the target committed them by its own clock, µs since the Unix epoch: Ordo's epoch
    /// time (the leader's stamp when it cut the batch), PostgreSQL's commit timestamp
    /// (decoding) or the trigger's `clock_timestamp()` (NOTIFY, just before the commit).
    pub commit_unix_us: i64,
    /// Where the changes sit in the target's total order, first and last: Ordo's (epoch,
    /// index); PostgreSQL decoding's (commit LSN, 0). `None` where the design gives none
    /// (NOTIFY).
    pub position: Option<((u64, u32), (u64, u32))>,
    /// Whether the positions inside the batch were strictly increasing.
    pub in_order: bool,
    /// Changes in the batch: stock rows and orders (and prices, DCs, items on Ordo).
    pub events: u64,
    /// The orders among them, by id.
    pub orders: Vec<u64>,
    /// The price changes among them: (sku, price in cents after the change).
    pub prices: Vec<(u32, i64)>,
}

/// What one read of a subscriber brought.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// When the harness had it (monotonic, comparable across tasks of this process).
    pub received: Instant,
    /// The same moment by the wall clock, µs since the Unix epoch (for the targets' stamps).
    pub received_unix_us: i64,
    pub batches: Vec<Batch>,
    /// Ordo: every change through this epoch has been delivered.
    pub through: Option<u64>,
    /// PostgreSQL: the end marker the run writes after its last order came through.
    pub end_marker: bool,
}

impl Delivery {
    /// An empty delivery stamped now.
    pub fn now() -> Self {
        Self {
            received: Instant::now(),
            received_unix_us: unix_us(),
            batches: Vec::new(),
            through: None,
            end_marker: false,
        }
    }
}

/// µs since the Unix epoch by the wall clock (0 before it).
pub fn unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// One watcher's source of changes. `next` returns at least every few hundred milliseconds
/// (an empty delivery when nothing came), so that the loop can see the end of the run; it is
/// never cancelled halfway (a decoding poll consumes what it returns).
pub trait Subscriber {
    async fn next(&mut self) -> anyhow::Result<Delivery>;
    /// Times the subscriber had to reopen its stream (Ordo: resumed from its last token).
    fn resumes(&self) -> u64 {
        0
    }
}

/// Follows `sub` until it has everything committed before the run's end: Ordo's `through`
/// reaching the goal epoch, or PostgreSQL's end marker. `goal` is `None` while the orders
/// run; it is set once they have all been answered.
pub async fn follow<S: Subscriber>(
    mut sub: S,
    window: Window,
    goal: watch::Receiver<Option<u64>>,
    prices: bool,
) -> WatcherTally {
    let mut tally = WatcherTally::new(prices);
    loop {
        let delivery = match sub.next().await {
            Ok(d) => d,
            Err(e) => {
                tally.error = Some(format!("{e:#}"));
                break;
            }
        };
        tally.deliver(&delivery, window);
        let Some(goal) = *goal.borrow() else {
            continue;
        };
        if tally.ended || tally.through.is_some_and(|t| t >= goal) {
            tally.caught_up_ms = Some(
                delivery
                    .received
                    .saturating_duration_since(window.end)
                    .as_millis() as u64,
            );
            break;
        }
        if Instant::now() > window.end + CATCH_UP_MAX {
            tally.error = Some(format!(
                "had not received every change {} s after the orders stopped",
                CATCH_UP_MAX.as_secs()
            ));
            break;
        }
    }
    tally.resumes = sub.resumes();
    tally
}
