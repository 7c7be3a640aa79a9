//! Counters every feed and sink keeps, read by the host's status line (and, later, /metrics).
//! Plain atomics: the read loop bumps them per frame and must never wait on a lock.

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
    /// Connections currently open.
    pub connections: Gauge,
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
