//! Unique point timestamps: [`SeriesClock`] per book or series (what connectors use, so a
//! replay reproduces them), and the older process-wide [`reserve`], kept for feeds that write
//! another feed's series (see the rule in [`crate::line_protocol`]).
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

/// The timestamps of one series (one book, one feed's invalid frames): `reserve(at_ns, n)`
/// returns `max(at_ns, last + 1)` and remembers the run's last nanosecond.
///
/// Why per series instead of the process-wide [`reserve`]: a timestamp then depends only on
/// that series' own receive times and point counts, never on how other feeds interleaved,
/// so `data-storage replay` of a capture reproduces the live run's timestamps exactly.
/// Contract 4 still holds by construction as long as each series is stamped by exactly one
/// `SeriesClock` (the rule is in [`crate::line_protocol`]): points of different series
/// differ in measurement or tags, and one clock never hands out a nanosecond twice.
#[derive(Debug, Clone, Default)]
pub struct SeriesClock {
    last: i64,
}

impl SeriesClock {
    pub fn new() -> Self {
        SeriesClock::default()
    }

    /// Reserves `points` consecutive nanoseconds at or after `at_ns` (at least one, so every
    /// packet has a distinct time) and returns the first.
    pub fn reserve(&mut self, at_ns: i64, points: usize) -> i64 {
        let n = points.max(1) as i64;
        let base = at_ns.max(self.last + 1);
        self.last = base + n - 1;
        base
    }

    /// The last nanosecond handed out (0 before the first reservation).
    pub fn last(&self) -> i64 {
        self.last
    }
}

/// Reserves a run starting now.
pub fn reserve_now(points: usize) -> i64 {
    reserve(now_ns(), points)
}

/// Year, month, day of a day count since the Unix epoch, UTC, proleptic Gregorian (Howard
/// Hinnant's days-to-civil), so file names need no calendar crate.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYYMMDD` of a Unix time in seconds, UTC.
pub fn yyyymmdd(unix_secs: i64) -> String {
    let (y, m, d) = civil_from_days(unix_secs.div_euclid(86_400));
    format!("{y:04}{m:02}{d:02}")
}

/// `YYYYMMDD-HHMMSS` of a Unix time in seconds, UTC.
pub fn yyyymmdd_hhmmss(unix_secs: i64) -> String {
    let sod = unix_secs.rem_euclid(86_400);
    format!("{}-{:02}{:02}{:02}", yyyymmdd(unix_secs), sod / 3600, sod % 3600 / 60, sod % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_calendar_names() {
        assert_eq!(yyyymmdd(0), "19700101");
        assert_eq!(yyyymmdd(951_782_400), "20000229");
        assert_eq!(yyyymmdd(1_709_251_199), "20240229");
        assert_eq!(yyyymmdd(-1), "19691231");
        assert_eq!(yyyymmdd_hhmmss(1_709_251_200 + 3_723), "20240301-010203");
    }

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
    fn series_clock_is_deterministic_and_never_reuses_a_nanosecond() {
        let run = || {
            let mut c = SeriesClock::new();
            vec![c.reserve(100, 3), c.reserve(101, 2), c.reserve(50, 0), c.reserve(1_000, 1)]
        };
        assert_eq!(run(), vec![100, 103, 105, 1_000]);
        assert_eq!(run(), run());
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
