//! A millisecond histogram of frame latencies: fixed memory however long the run, exact
//! percentiles at the resolution the measurement has (Binance's `E` is in milliseconds).

/// Latencies above this land in the last bucket (reported as ">= this").
pub const MAX_MS: usize = 120_000;

#[derive(Clone, Debug)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    /// Samples that were negative (clock step, or a frame stamped after its ack).
    negative: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; MAX_MS + 1],
            count: 0,
            negative: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, ms: i64) {
        if ms < 0 {
            self.negative += 1;
            return;
        }
        let i = (ms as usize).min(MAX_MS);
        self.buckets[i] += 1;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn negative(&self) -> u64 {
        self.negative
    }

    /// The smallest latency that `q` (0..=1) of the samples do not exceed; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (ms, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(ms as u64);
            }
        }
        Some(MAX_MS as u64)
    }

    /// The largest sample.
    pub fn max(&self) -> Option<u64> {
        self.buckets.iter().rposition(|&n| n > 0).map(|i| i as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=100 {
            h.record(ms);
        }
        h.record(-3);
        assert_eq!(h.quantile(0.5), Some(50));
        assert_eq!(h.quantile(0.99), Some(99));
        assert_eq!(h.quantile(1.0), Some(100));
        assert_eq!(h.max(), Some(100));
        assert_eq!((h.count(), h.negative()), (100, 1));
    }
}
