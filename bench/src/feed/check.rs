//! What each watcher received, and the check after the run: every watcher received every
//! committed order (or, for price-latency, every price change) exactly once, in the target's
//! order; and the figures drawn from it (events per second, lag, price notification latency).

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use super::subscriber::{Delivery, Window};
use crate::check::PROBLEMS_MAX;
use crate::runner::{histogram, latency_of, Latency};

/// Price changes are to `PRICE_CENTS_BASE + seq`, so every change has its own price and a
/// watcher's price event names the change it reports.
pub const PRICE_CENTS_BASE: i64 = 100_000;

/// A price event a watcher received.
#[derive(Clone, Copy, Debug)]
pub struct Heard {
    pub sku: u32,
    pub cents: i64,
    pub received: Instant,
    /// Received by the wall clock minus the target's commit-side stamp, µs.
    pub commit_lag_us: i64,
}

/// One watcher's run.
#[derive(Debug)]
pub struct WatcherTally {
    /// Changes received while measuring, and in all.
    pub events_measured: u64,
    pub events_total: u64,
    /// The target's commit-side stamp → received, µs, one count per change received while
    /// measuring.
    pub lag_us: Histogram<u64>,
    /// Order ids, in the order received.
    pub orders: Vec<u64>,
    /// Price events (price-latency only; the feed workload leaves them out).
    pub prices: Vec<Heard>,
    keep_prices: bool,
    /// Ordo: the epoch through which every change was delivered.
    pub through: Option<u64>,
    /// PostgreSQL: the run's end marker came through (every order before it did too).
    pub ended: bool,
    last_position: Option<(u64, u32)>,
    /// Batches that did not come strictly after the one before (or were not in order inside).
    pub out_of_order: u64,
    /// When it had everything committed before the end, ms after the orders stopped.
    pub caught_up_ms: Option<u64>,
    pub resumes: u64,
    /// Why it stopped early.
    pub error: Option<String>,
}

impl WatcherTally {
    pub fn new(keep_prices: bool) -> Self {
        Self {
            events_measured: 0,
            events_total: 0,
            lag_us: histogram(),
            orders: Vec::new(),
            prices: Vec::new(),
            keep_prices,
            through: None,
            ended: false,
            last_position: None,
            out_of_order: 0,
            caught_up_ms: None,
            resumes: 0,
            error: None,
        }
    }

    pub fn deliver(&mut self, d: &Delivery, window: Window) {
        let measured = d.received >= window.measure_from && d.received < window.end;
        for b in &d.batches {
            self.events_total += b.events;
            let lag_us = d.received_unix_us - b.commit_unix_us;
            if measured && b.events > 0 {
                self.events_measured += b.events;
                self.lag_us
                    .saturating_record_n(lag_us.clamp(1, 60_000_000) as u64, b.events);
            }
            if let Some((first, last)) = b.position {
                if !b.in_order || self.last_position.is_some_and(|p| first <= p) {
                    self.out_of_order += 1;
                }
                self.last_position = Some(self.last_position.map_or(last, |p| p.max(last)));
            }
            self.orders.extend_from_slice(&b.orders);
            if self.keep_prices {
                for &(sku, cents) in &b.prices {
                    self.prices.push(Heard {
                        sku,
                        cents,
                        received: d.received,
                        commit_lag_us: lag_us,
                    });
                }
            }
        }
        if let Some(t) = d.through {
            self.through = Some(self.through.map_or(t, |x| x.max(t)));
        }
        self.ended |= d.end_marker;
    }
}

/// One price change the writer made.
#[derive(Clone, Debug)]
pub struct PriceSet {
    pub sku: u32,
    pub cents: i64,
    pub sent: Instant,
    /// When the writer had the answer (the change committed), if it committed.
    pub committed: Option<Instant>,
}

/// The feed check's counts, summed over the watchers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FeedCheck {
    /// What the watchers must each have received once: committed orders (feed) or price
    /// changes (price-latency).
    pub expected_per_watcher: u64,
    /// Orders or price changes whose outcome the client never learned (each may appear once).
    pub unknown: u64,
    pub watchers_caught_up: usize,
    pub missing: u64,
    pub duplicated: u64,
    /// Received but never acknowledged to a client (allowed up to `unknown` per watcher).
    pub unexpected: u64,
    pub out_of_order: u64,
}

/// Checks that each watcher received each of `expected` (sorted ids) exactly once and
/// nothing else, but for at most `unknown` ids (writes whose outcome the client never learned,
/// so whose ids it does not know).
pub fn check_watchers(
    tallies: &[WatcherTally],
    expected: &[u64],
    unknown: u64,
    ids_of: impl Fn(&WatcherTally) -> Vec<u64>,
    what: &str,
) -> (FeedCheck, Vec<String>) {
    let mut problems = Vec::new();
    let mut c = FeedCheck {
        expected_per_watcher: expected.len() as u64,
        unknown,
        ..Default::default()
    };
    for (w, t) in tallies.iter().enumerate() {
        if let Some(e) = &t.error {
            problems.push(format!("watcher {w}: {e}"));
        }
        if t.caught_up_ms.is_some() {
            c.watchers_caught_up += 1;
        }
        let mut ids = ids_of(t);
        ids.sort_unstable();
        let received = ids.len();
        ids.dedup();
        let duplicated = (received - ids.len()) as u64;
        let (mut missing, mut unexpected) = (0u64, 0u64);
        let (mut i, mut j) = (0, 0);
        while i < expected.len() || j < ids.len() {
            match (expected.get(i), ids.get(j)) {
                (Some(a), Some(b)) if a == b => {
                    i += 1;
                    j += 1;
                }
                (Some(a), Some(b)) if a < b => {
                    missing += 1;
                    i += 1;
                }
                (Some(_), None) => {
                    missing += 1;
                    i += 1;
                }
                (_, Some(_)) => {
                    unexpected += 1;
                    j += 1;
                }
                (None, None) => unreachable!("the loop runs while one side has more"),
            }
        }
        let unexplained = unexpected.saturating_sub(unknown);
        if missing + duplicated + unexplained + t.out_of_order > 0 {
            problems.push(format!(
                "watcher {w}: {missing} {what} missing, {duplicated} received twice, \
                 {unexpected} never committed, {} batches out of order",
                t.out_of_order
            ));
        }
        c.missing += missing;
        c.duplicated += duplicated;
        c.unexpected += unexpected;
        c.out_of_order += t.out_of_order;
    }
    problems.truncate(PROBLEMS_MAX);
    (c, problems)
}

/// Price changes as the watchers heard them, by change: the change's index in the writer's
/// log, from the price a watcher saw.
pub fn price_change_of(h: &Heard) -> Option<u64> {
    u64::try_from(h.cents - PRICE_CENTS_BASE - 1).ok()
}

/// Price change → notification, over the changes sent while measuring that committed.
#[derive(Clone, Debug, Serialize)]
pub struct PriceFigures {
    /// Changes sent while measuring that committed.
    pub changes: u64,
    /// The writer's call: sent → answered.
    pub set_latency_us: Latency,
    /// The writer had its answer → a watcher received the event, µs (0 when the event came
    /// first; those are counted in `heard_before_answer`).
    pub answer_to_heard_us: Latency,
    pub heard_before_answer: u64,
    /// The writer sent the change → a watcher received the event.
    pub send_to_heard_us: Latency,
    /// The target's commit-side stamp → received, by the wall clock.
    pub commit_to_heard_us: Latency,
    /// Notifications counted (changes × watchers that heard them).
    pub notifications: u64,
}

pub fn price_figures(tallies: &[WatcherTally], log: &[PriceSet], window: Window) -> PriceFigures {
    let mut set = histogram();
    let mut answer = histogram();
    let mut send = histogram();
    let mut commit = histogram();
    let mut early = 0;
    let mut notifications = 0;
    let measured = |p: &PriceSet| p.sent >= window.measure_from && p.sent < window.end;
    let mut changes = 0;
    for p in log {
        if let (true, Some(done)) = (measured(p), p.committed) {
            changes += 1;
            set.saturating_record(clamp_us(done.saturating_duration_since(p.sent).as_micros()));
        }
    }
    for t in tallies {
        for h in &t.prices {
            let Some(p) = price_change_of(h).and_then(|i| log.get(i as usize)) else {
                continue;
            };
            let Some(done) = p.committed else { continue };
            if !measured(p) || (p.sku, p.cents) != (h.sku, h.cents) {
                continue;
            }
            notifications += 1;
            if h.received < done {
                early += 1;
            }
            answer.saturating_record(clamp_us(
                h.received.saturating_duration_since(done).as_micros(),
            ));
            send.saturating_record(clamp_us(
                h.received.saturating_duration_since(p.sent).as_micros(),
            ));
            commit.saturating_record(h.commit_lag_us.clamp(1, 60_000_000) as u64);
        }
    }
    PriceFigures {
        changes,
        set_latency_us: latency_of(&set),
        answer_to_heard_us: latency_of(&answer),
        heard_before_answer: early,
        send_to_heard_us: latency_of(&send),
        commit_to_heard_us: latency_of(&commit),
        notifications,
    }
}

fn clamp_us(us: u128) -> u64 {
    (us as u64).clamp(1, 60_000_000)
}

/// Events per second per watcher while measuring: (min, mean, max).
pub fn per_watcher_rates(tallies: &[WatcherTally], duration_s: f64) -> (f64, f64, f64) {
    if tallies.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let rates: Vec<f64> = tallies
        .iter()
        .map(|t| t.events_measured as f64 / duration_s)
        .collect();
    let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rates.iter().copied().fold(0.0, f64::max);
    (min, rates.iter().sum::<f64>() / rates.len() as f64, max)
}

/// The watchers' lag histograms merged.
pub fn merged_lag(tallies: &[WatcherTally]) -> Histogram<u64> {
    let mut all = histogram();
    for t in tallies {
        all.add(&t.lag_us).expect("same bounds");
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::subscriber::Batch;

    fn window() -> Window {
        let now = Instant::now();
        Window {
            measure_from: now,
            end: now + std::time::Duration::from_secs(60),
        }
    }

    fn delivery(batches: Vec<Batch>) -> Delivery {
        let mut d = Delivery::now();
        d.batches = batches;
        d
    }

    fn batch(epoch: u64, orders: &[u64]) -> Batch {
        Batch {
            commit_unix_us: 0,
            position: Some(((epoch, 0), (epoch, orders.len() as u32))),
            in_order: true,
            events: orders.len() as u64 * 2,
            orders: orders.to_vec(),
            prices: Vec::new(),
        }
    }

    #[test]
    fn every_order_once_in_order_passes() {
        let mut t = WatcherTally::new(false);
        t.deliver(&delivery(vec![batch(5, &[1, 2]), batch(6, &[3])]), window());
        t.caught_up_ms = Some(3);
        let (c, problems) = check_watchers(&[t], &[1, 2, 3], 0, |t| t.orders.clone(), "orders");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((c.missing, c.duplicated, c.unexpected), (0, 0, 0));
        assert_eq!(c.watchers_caught_up, 1);
    }

    #[test]
    fn missing_repeated_unknown_and_reordered_changes_are_caught() {
        let mut t = WatcherTally::new(false);
        // Epoch 6 again after 6 (a resume that repeated it), and order 2 never delivered.
        t.deliver(
            &delivery(vec![batch(5, &[1]), batch(6, &[3]), batch(6, &[3, 9])]),
            window(),
        );
        let (c, problems) = check_watchers(&[t], &[1, 2, 3], 1, |t| t.orders.clone(), "orders");
        assert_eq!((c.missing, c.duplicated, c.unexpected), (1, 1, 1));
        assert_eq!(c.out_of_order, 1);
        assert_eq!(problems.len(), 1, "{problems:?}");
        // 9 is allowed only while one order's outcome was unknown.
        let ok = |unknown| {
            let mut t = WatcherTally::new(false);
            t.deliver(&delivery(vec![batch(5, &[1, 2, 3, 9])]), window());
            t.caught_up_ms = Some(0);
            check_watchers(&[t], &[1, 2, 3], unknown, |t| t.orders.clone(), "orders")
                .1
                .is_empty()
        };
        assert!(ok(1));
        assert!(!ok(0));
    }

    #[test]
    fn a_price_event_names_its_change_and_is_timed_from_the_answer() {
        let w = window();
        let sent = w.measure_from + std::time::Duration::from_millis(10);
        let done = sent + std::time::Duration::from_millis(4);
        let log = vec![PriceSet {
            sku: 3,
            cents: PRICE_CENTS_BASE + 1,
            sent,
            committed: Some(done),
        }];
        let mut t = WatcherTally::new(true);
        t.prices.push(Heard {
            sku: 3,
            cents: PRICE_CENTS_BASE + 1,
            received: done + std::time::Duration::from_millis(2),
            commit_lag_us: 5_000,
        });
        assert_eq!(price_change_of(&t.prices[0]), Some(0));
        let f = price_figures(&[t], &log, w);
        assert_eq!(
            (f.changes, f.notifications, f.heard_before_answer),
            (1, 1, 0)
        );
        let near = |v: u64, us: u64| v.abs_diff(us) <= us / 100 + 1;
        assert!(
            near(f.answer_to_heard_us.p50, 2_000),
            "{:?}",
            f.answer_to_heard_us
        );
        assert!(
            near(f.send_to_heard_us.p50, 6_000),
            "{:?}",
            f.send_to_heard_us
        );
        assert!(near(f.set_latency_us.p50, 4_000), "{:?}", f.set_latency_us);
    }
}
