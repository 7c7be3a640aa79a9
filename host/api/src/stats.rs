//! Counters every feed and sink keeps, read by the host's status line, `/metrics` and
//! `/health`. Plain atomics: the read loop bumps them per frame and must never wait on a lock.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (open connections).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A wall-clock instant in ns since the epoch, 0 = never. One relaxed store to update, so the
/// read loop can stamp every frame.
#[derive(Debug, Default)]
pub struct Timestamp(AtomicI64);

impl Timestamp {
    pub fn set(&self, ns: i64) {
        self.0.store(ns, Ordering::Relaxed);
    }
    pub fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
    /// `None` when never set (or cleared).
    pub fn get(&self) -> Option<i64> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(ns),
        }
    }
}

/// Upper bounds (seconds) of the latency histogram buckets: 1 ms to 30 s, roughly x2.5 per
/// step, the Prometheus client default extended to 30 s because an InfluxDB write under load
/// (or an exchange lagging in a volatile minute) takes seconds, and "how many seconds" is what
/// an operator needs to know then. `+Inf` is implied.
pub const LATENCY_BUCKETS_SECS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const BUCKETS: usize = LATENCY_BUCKETS_SECS.len();
/// Bucket bounds in µs, the unit observations are counted in (integer, so atomics suffice).
const BUCKET_BOUNDS_US: [u64; BUCKETS] = {
    let mut b = [0u64; BUCKETS];
    let mut i = 0;
    while i < BUCKETS {
        b[i] = (LATENCY_BUCKETS_SECS[i] * 1e6) as u64;
        i += 1;
    }
    b
};
/// Observations above this are clamped into the sum (they still count in `+Inf`): a clock a
/// day off is a configuration problem, and unclamped years (a replayed 2021 capture) would
/// overflow the µs sum after a few thousand observations.
const MAX_OBSERVATION_US: u64 = 86_400 * 1_000_000;

/// A fixed-bucket latency histogram, lock-free: an observation is a short scan of 14 bounds and
/// three relaxed atomic adds, cheap enough for the read loop. Buckets are stored
/// non-cumulative and summed when read, so an observation touches one bucket only.
#[derive(Debug, Default)]
pub struct Histogram {
    /// `buckets[i]`: observations in `(bound[i-1], bound[i]]`; the last one is `+Inf`.
    buckets: [AtomicU64; BUCKETS + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// A consistent-enough reading of a [`Histogram`] (each field read once; a concurrent
/// observation may land between reads, which Prometheus tolerates).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts per bound of [`LATENCY_BUCKETS_SECS`], then `+Inf` (= count).
    pub cumulative: Vec<u64>,
    pub sum_secs: f64,
    pub count: u64,
}

impl Histogram {
    /// Records one latency in µs; negative values (a clock ahead of ours) count as 0.
    pub fn observe_us(&self, us: i64) {
        let us = us.max(0) as u64;
        let i = BUCKET_BOUNDS_US.iter().position(|&b| us <= b).unwrap_or(BUCKETS);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us.min(MAX_OBSERVATION_US), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe(&self, d: Duration) {
        self.observe_us(d.as_micros().min(i64::MAX as u128) as i64);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        HistogramSnapshot { cumulative, sum_secs: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6, count: acc }
    }
}

/// Per-feed counters (contract 1: every frame is stored or counted).
#[derive(Debug, Default)]
pub struct FeedStats {
    /// Data frames received (text or binary; control frames not counted).
    pub frames: Counter,
    /// Packets handed to the sink, by kind.
    pub mi: Counter,
    pub st: Counter,
    pub trades: Counter,
    /// Points those packets become.
    pub points: Counter,
    /// Frames that failed to parse (stored as `invalid_frame`).
    pub invalid: Counter,
    /// Non-data frames that need no storage: acks, pongs, heartbeats.
    pub control: Counter,
    /// Updates older than the snapshot they were synced against (Binance `u <= lastUpdateId`):
    /// already contained in the stored snapshot.
    pub superseded: Counter,
    /// Updates received while a symbol was out of sync and discarded (its gap is stored).
    pub out_of_sequence: Counter,
    /// Gap markers stored.
    pub gaps: Counter,
    /// Snapshots requested to (re)sync a symbol.
    pub resyncs: Counter,
    /// Connection attempts after the first.
    pub reconnects: Counter,
    /// Connections replaced make-before-break (Binance's 24 h limit, `serverShutdown`):
    /// handovers to a replacement that was open before the old connection closed.
    pub rollovers: Counter,
    /// Connections currently open.
    pub connections: Gauge,
    /// Websocket sessions running (each wants one open connection); 0 for REST-only feeds.
    /// `/health` compares it with `connections`.
    pub sessions: Gauge,
    /// Receive time of the last data frame (websocket) or REST result (polling feeds): how
    /// fresh the feed is. Pings do not count: a connection that only pings stores nothing.
    pub last_message: Timestamp,
    /// Exchange event time to local receive time of every book update that carries an event
    /// time (observed by the feed's packet sender, so every connector gets it).
    pub latency: Histogram,
    /// The feed's raw capture, when `capture_dir` is set (see [`crate::capture`]).
    pub capture: crate::capture::CaptureSlot,
    /// Timestamps of the feed's `invalid_frame` series (tags exchange, feed): one clock per
    /// feed, shared by its connections, so that series is stamped by exactly one clock.
    pub invalid_clock: Mutex<crate::clock::SeriesClock>,
}

impl FeedStats {
    /// A timestamp run for `points` invalid-frame points received at `at_ns`.
    pub fn reserve_invalid(&self, at_ns: i64, points: usize) -> i64 {
        match self.invalid_clock.lock() {
            Ok(mut c) => c.reserve(at_ns, points),
            Err(p) => p.into_inner().reserve(at_ns, points),
        }
    }
}

/// Per-sink counters.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub points_written: Counter,
    pub batches_written: Counter,
    pub bytes_written: Counter,
    pub retries: Counter,
    /// Points the sink refused and wrote to its quarantine file.
    pub points_quarantined: Counter,
    /// Points lost: the channel was full (encoder stalled), the spool was full (policy
    /// `spool_full`), or the spool disk failed. Each is logged.
    pub points_dropped: Counter,
    /// Points written to the on-disk spool (because the sink was down, slow or at stop).
    pub points_spooled: Counter,
    /// Points and bytes in the spool now.
    pub spool_points: Gauge,
    pub spool_bytes: Gauge,
    /// Duration of every `Sink::write` call, success or not.
    pub write_latency: Histogram,
    /// When the last write succeeded (stored or quarantined).
    pub last_write_ok: Timestamp,
    /// When the write now in progress started; unset when no write is in progress.
    pub write_started: Timestamp,
    /// Since when writes have been failing; unset after a successful one.
    pub failing_since: Timestamp,
}

/// Lets one log line through per interval and counts the ones held back, so a flood of bad
/// frames neither floods the log nor goes unseen.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimit {
    pub fn new(every: Duration) -> Self {
        RateLimit { every, state: Mutex::new((None, 0)) }
    }

    /// `Some(suppressed_since_last)` when a line may be logged now.
    pub fn check(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match s.0 {
            Some(last) if now.duration_since(last) < self.every => {
                s.1 += 1;
                None
            }
            _ => {
                let suppressed = s.1;
                *s = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::default();
        h.observe_us(-5); // clock skew: counts as 0
        h.observe_us(1_000); // exactly 1 ms: first bucket (le is inclusive)
        h.observe_us(1_001);
        h.observe(Duration::from_secs(40)); // above every bound: +Inf only
        let s = h.snapshot();
        assert_eq!(s.cumulative.len(), LATENCY_BUCKETS_SECS.len() + 1);
        assert_eq!(s.cumulative[0], 2);
        assert_eq!(s.cumulative[1], 3);
        assert_eq!(s.cumulative[BUCKETS - 1], 3, "30 s bucket");
        assert_eq!(s.cumulative[BUCKETS], 4, "+Inf");
        assert_eq!(s.count, 4);
        assert!((s.sum_secs - 40.002001).abs() < 1e-9, "{}", s.sum_secs);
    }

    #[test]
    fn histogram_sum_clamps_absurd_observations() {
        let h = Histogram::default();
        h.observe(Duration::from_secs(5 * 365 * 86_400));
        assert_eq!(h.snapshot().sum_secs, 86_400.0);
        assert_eq!(h.count(), 1);
    }

    #[test]
    fn timestamps_start_unset() {
        let t = Timestamp::default();
        assert_eq!(t.get(), None);
        t.set(7);
        assert_eq!(t.get(), Some(7));
        t.clear();
        assert_eq!(t.get(), None);
    }
}
