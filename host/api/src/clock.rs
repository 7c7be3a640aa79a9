//! Unique point timestamps.
//!
//! InfluxDB merges points that share measurement, tag set and timestamp (contract 4). Many
//! levels arrive in one frame, and several frames can be read in the same nanosecond tick, so
//! receive time alone is not a unique identity. Every packet reserves a run of nanoseconds,
//! one per point, from one process-wide monotonic counter that follows the wall clock: a
//! timestamp is the receive time, nudged forward by at most a few microseconds when needed.
//! Two points of one process therefore never share a timestamp, and the order of timestamps is
//! the order in which packets were emitted, which is the order a book must be rebuilt in.
//! Across restarts the wall clock moves on, so later runs never collide with earlier ones.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static LAST_RESERVED: AtomicI64 = AtomicI64::new(0);

/// Wall-clock time in ns since the epoch.
pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Reserves `points` consecutive nanoseconds at or after `at_ns` that no other call has
/// reserved, and returns the first. `points == 0` still reserves one, so every packet has a
/// distinct time.
pub fn reserve(at_ns: i64, points: usize) -> i64 {
    let n = points.max(1) as i64;
    let mut cur = LAST_RESERVED.load(Ordering::Relaxed);
    loop {
        let base = at_ns.max(cur + 1);
        match LAST_RESERVED.compare_exchange_weak(cur, base + n - 1, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return base,
            Err(actual) => cur = actual,
        }
    }
}

/// Reserves a run starting now.
pub fn reserve_now(points: usize) -> i64 {
    reserve(now_ns(), points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_never_overlap_even_for_the_same_instant() {
        let t = now_ns();
        let a = reserve(t, 10);
        let b = reserve(t, 5);
        let c = reserve(t - 1_000, 1);
        assert!(a >= t);
        assert!(b >= a + 10);
        assert!(c >= b + 5);
    }

    #[test]
    fn concurrent_reservations_are_disjoint() {
        let handles: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..1000).map(|_| (reserve(1, 3), 3)).collect::<Vec<_>>()))
            .collect();
        let mut runs: Vec<(i64, i64)> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        runs.sort();
        for w in runs.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap {:?}", w);
        }
    }
}
