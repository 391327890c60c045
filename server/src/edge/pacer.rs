//! The node's fan-out rate: how many subscriptions per second all WatchNotifications streams
//! together may read (`--notify-rate`).
//!
//! A fan-out runs on the lowest-priority thread ([`super::background`]), but not all of its
//! work does: the connections' HTTP/2 writes and loopback TCP run on the request runtime at
//! normal priority, and paging through a million records evicts the caches the epochs run
//! from. Unpaced, a million subscribers fan out in about a second here, and the orders placed
//! in that second see it in their tail latency. Paced, the same work is spread thin enough
//! that the epochs do not (measured by `ordo-bench notify`, BENCHMARKS.md), and a million
//! notifications still go out in seconds. A generic cell rate: each page of subscriptions
//! books its share of time, and a stream waits when the node's bookings run more than
//! [`BURST`] ahead of the clock. This is the edge's clock only: what is sent, and its
//! resume tokens, do not depend on it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How far ahead of the clock bookings may run before a stream waits.
const BURST: Duration = Duration::from_millis(20);

pub struct Pacer {
    /// Subscriptions read per second, all streams together; 0: unpaced.
    per_s: u64,
    /// When the work booked so far would be done at the rate.
    booked_until: Mutex<Option<Instant>>,
}

impl Pacer {
    pub fn new(per_s: u64) -> Self {
        Self {
            per_s,
            booked_until: Mutex::new(None),
        }
    }

    /// Books `n` subscriptions' share of time, waiting first if the node is ahead of its rate.
    pub async fn take(&self, n: usize) {
        let Some(wait_until) = self.book(n, Instant::now()) else {
            return;
        };
        tokio::time::sleep_until(wait_until).await;
    }

    /// When a reader booking `n` at `now` may go on; `None`: at once.
    fn book(&self, n: usize, now: Instant) -> Option<Instant> {
        if self.per_s == 0 || n == 0 {
            return None;
        }
        let share = Duration::from_nanos((n as u64).saturating_mul(1_000_000_000) / self.per_s);
        let mut booked = self.booked_until.lock().expect("pacer");
        let from = booked.map_or(now, |b| b.max(now));
        let until = from + share;
        *booked = Some(until);
        let go = until.checked_sub(BURST)?;
        (go > now).then_some(go)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookings_past_the_burst_wait_at_the_rate() {
        let pacer = Pacer::new(100_000);
        let now = Instant::now();
        // 1,000 at 100,000/s is 10 ms: inside the 20 ms burst, twice.
        assert_eq!(pacer.book(1_000, now), None);
        assert_eq!(pacer.book(1_000, now), None);
        // The third runs 30 ms ahead: wait 10 ms.
        assert_eq!(
            pacer.book(1_000, now),
            Some(now + Duration::from_millis(10))
        );
        // Ten more: the last waits until 130 ms of work less the burst.
        let mut last = None;
        for _ in 0..10 {
            last = pacer.book(1_000, now);
        }
        assert_eq!(last, Some(now + Duration::from_millis(110)));
        // Once the clock has passed what was booked, the rate starts again from it.
        let later = now + Duration::from_secs(1);
        assert_eq!(pacer.book(1_000, later), None);
    }

    #[test]
    fn an_unpaced_node_never_waits() {
        let pacer = Pacer::new(0);
        let now = Instant::now();
        for _ in 0..1_000 {
            assert_eq!(pacer.book(1_000_000, now), None);
        }
    }
}
