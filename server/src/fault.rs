//! Fault injection for fault tests (`ordo server --fault-injection`): a skewable application
//! clock. The sequencer stamps epochs with this clock; Raft's timers and everything else keep
//! the real monotonic time (faking the process clock, as libfaketime does, hangs tokio's
//! timers instead of testing Ordo).
//!
//! A fault is an offset added to the system clock, optionally strobing: every `period` the
//! clock flips between `offset` and `offset + strobe`, so it jumps back and forth.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ordo_sequencer::Clock;

/// The largest skew (offset, and offset plus strobe) accepted: a week either way.
pub const CLOCK_SKEW_MAX_MS: i64 = 7 * 24 * 3600 * 1000;
/// The longest strobe period accepted.
pub const STROBE_PERIOD_MAX_MS: u64 = 60_000;

pub struct FaultClock {
    offset_ms: AtomicI64,
    strobe_ms: AtomicI64,
    period_ms: AtomicU64,
    started: Instant,
}

impl Default for FaultClock {
    fn default() -> Self {
        Self {
            offset_ms: AtomicI64::new(0),
            strobe_ms: AtomicI64::new(0),
            period_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

fn system_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl FaultClock {
    /// Sets the fault; `(0, 0, 0)` clears it. Refuses skews past [`CLOCK_SKEW_MAX_MS`], a
    /// strobe without a period (or a period past [`STROBE_PERIOD_MAX_MS`]).
    pub fn set(&self, offset_ms: i64, strobe_ms: i64, period_ms: u64) -> Result<(), String> {
        let within = |x: i64| x.checked_abs().is_some_and(|a| a <= CLOCK_SKEW_MAX_MS);
        if !within(offset_ms) || !within(strobe_ms) || !within(offset_ms + strobe_ms) {
            return Err(format!(
                "offset_ms {offset_ms} and offset_ms + strobe_ms must each be within \
                 ±{CLOCK_SKEW_MAX_MS} ms"
            ));
        }
        if strobe_ms != 0 && (period_ms == 0 || period_ms > STROBE_PERIOD_MAX_MS) {
            return Err(format!(
                "a strobe needs strobe_period_ms between 1 and {STROBE_PERIOD_MAX_MS}, not \
                 {period_ms}"
            ));
        }
        // Period first, offset last: a reader may see a mix for one reading, never a panic.
        self.period_ms.store(period_ms, Ordering::Relaxed);
        self.strobe_ms.store(strobe_ms, Ordering::Relaxed);
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
        Ok(())
    }

    /// The faulty clock's reading, in ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        let mut skew = self.offset_ms.load(Ordering::Relaxed);
        let period = self.period_ms.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_millis() as u64;
        if elapsed
            .checked_div(period)
            .is_some_and(|phase| phase % 2 == 1)
        {
            skew += self.strobe_ms.load(Ordering::Relaxed);
        }
        system_ms().saturating_add(skew).max(0) as u64
    }

    /// The clock for the sequencer.
    pub fn clock(self: &Arc<Self>) -> Clock {
        let me = self.clone();
        Arc::new(move || me.now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_strobes_move_the_clock_and_clear() {
        let c = FaultClock::default();
        let real = system_ms() as u64;
        assert!(c.now_ms().abs_diff(real) < 1_000);
        c.set(-3_600_000, 0, 0).unwrap();
        assert!(c.now_ms().abs_diff(real - 3_600_000) < 1_000);
        // A strobe of +2 h every 1 ms: within 100 readings both phases show up.
        c.set(0, 7_200_000, 1).unwrap();
        let mut seen = (false, false);
        for _ in 0..100 {
            let skew = c.now_ms() as i64 - system_ms();
            seen.0 |= skew.abs() < 1_000;
            seen.1 |= (skew - 7_200_000).abs() < 1_000;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(seen, (true, true));
        c.set(0, 0, 0).unwrap();
        assert!(c.now_ms().abs_diff(system_ms() as u64) < 1_000);
    }

    #[test]
    fn out_of_range_faults_are_refused_and_change_nothing() {
        let c = FaultClock::default();
        assert!(c.set(CLOCK_SKEW_MAX_MS + 1, 0, 0).is_err());
        assert!(c.set(i64::MIN, 0, 0).is_err());
        assert!(c.set(CLOCK_SKEW_MAX_MS, 1, 10).is_err());
        assert!(c.set(0, 10, 0).is_err());
        assert!(c.set(0, 10, STROBE_PERIOD_MAX_MS + 1).is_err());
        assert!(c.now_ms().abs_diff(system_ms() as u64) < 1_000);
    }
}
