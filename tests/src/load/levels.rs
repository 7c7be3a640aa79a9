//! How many price levels a generated Binance depthUpdate carries.
//!
//! "Realistic level counts" means the distribution real frames have, not a guess: the two
//! tables below are the histograms of `len(b) + len(a)` over every depthUpdate of the two
//! Binance captures in `../shared/fixtures/binance` (index = levels per frame, value = frames).
//! They are embedded rather than read at run time so the load tool also runs where the
//! fixtures are absent, and so two runs with the same seed generate the same traffic.

use rand::Rng;

/// `depth_update_combined_2021-04-04.jsonl`: BTCUSDT, ETHUSDT, DOTUSDT (2,688 frames, mean
/// 10.6 levels, max 139): the busiest books, the heavy case.
const MAJOR: [u32; 140] = [
    0, 129, 182, 218, 216, 199, 213, 199, 154, 140, 146, 109, 107, 72, 69, 56, 52, 38, 35, 29, 22,
    24, 30, 15, 24, 14, 16, 16, 9, 11, 11, 7, 8, 7, 7, 8, 8, 9, 6, 4, 3, 4, 1, 2, 5, 1, 4, 4, 2, 2,
    2, 1, 2, 0, 3, 0, 2, 3, 2, 2, 3, 2, 1, 1, 0, 2, 0, 0, 1, 0, 1, 3, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0,
    0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1,
];

/// `depth_update_combined_2021-10-11.jsonl`: BLZETH, LRCBTC, NKNUSDT, RUNEEUR (177 frames,
/// mean 2.4 levels): the long tail of quiet books that makes up most of the market.
const MINOR: [u32; 14] = [0, 80, 41, 18, 18, 8, 3, 5, 1, 1, 0, 1, 0, 1];

/// Which captured distribution to draw from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LevelProfile {
    /// Busy books (BTC, ETH, DOT): mean 10.6 levels per frame.
    Major,
    /// Quiet books: mean 2.4 levels per frame.
    Minor,
}

/// Draws level counts from one of the captured histograms.
#[derive(Clone, Debug)]
pub struct LevelSampler {
    /// Cumulative frame counts: `cumulative[k]` = frames with at most `k` levels.
    cumulative: Vec<u32>,
}

impl LevelSampler {
    pub fn new(profile: LevelProfile) -> Self {
        let table: &[u32] = match profile {
            LevelProfile::Major => &MAJOR,
            LevelProfile::Minor => &MINOR,
        };
        let cumulative = table
            .iter()
            .scan(0u32, |sum, &n| {
                *sum += n;
                Some(*sum)
            })
            .collect();
        LevelSampler { cumulative }
    }

    /// Mean levels per frame of the distribution (for the report).
    pub fn mean(&self) -> f64 {
        let total = *self.cumulative.last().unwrap_or(&0);
        let weighted: u64 = (1..self.cumulative.len())
            .map(|k| k as u64 * u64::from(self.cumulative[k] - self.cumulative[k - 1]))
            .sum();
        weighted as f64 / f64::from(total.max(1))
    }

    /// One level count (at least 1).
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let total = *self.cumulative.last().unwrap_or(&1);
        let x = rng.random_range(0..total);
        // First k whose cumulative count exceeds x.
        self.cumulative.partition_point(|&c| c <= x).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn samples_follow_the_captured_mean() {
        for (profile, mean) in [(LevelProfile::Major, 10.58), (LevelProfile::Minor, 2.38)] {
            let s = LevelSampler::new(profile);
            assert!((s.mean() - mean).abs() < 0.01, "{profile:?}: {}", s.mean());
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let n = 200_000;
            let got: usize = (0..n).map(|_| s.sample(&mut rng)).sum();
            let got = got as f64 / n as f64;
            assert!((got - mean).abs() < 0.1, "{profile:?}: sampled mean {got}");
        }
    }
}
