//! The generated market: one book per symbol that is the exchange's truth, from which both the
//! diff-depth frames and the REST snapshots are cut, so the two always agree.
//!
//! Binance's rule (what the connector checks) is that each frame's `U` is the previous frame's
//! `u + 1` and that a snapshot's `lastUpdateId` is the `u` of the last frame it contains.
//! Frames are generated and applied under the same lock that serves snapshots, so a snapshot
//! contains exactly the frames generated before it: the chain is protocol-true by construction,
//! and the number of levels the service must store (those of frames generated after the
//! symbol's first snapshot) is known exactly ([`SymbolBook::levels_after_snapshot`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rand::Rng;

use super::levels::LevelSampler;

/// Binance prints every price and quantity with 8 decimals.
const DECIMALS: u32 = 8;
/// Share of generated levels that remove a price (quantity "0.00000000"); about what the
/// 2021-04-04 capture shows for BTCUSDT/ETHUSDT.
const REMOVE_SHARE: f64 = 0.3;

/// One symbol's book and update-id chain.
#[derive(Debug)]
pub struct SymbolBook {
    pub symbol: String,
    /// `<symbol lowercase>@depth@100ms`.
    pub stream: String,
    /// Price step of this symbol, in units of 1e-8.
    tick: u64,
    /// Middle of the book in ticks; bids stay below it and asks above it, so it never crosses.
    mid: u64,
    /// Levels kept per side (the book is trimmed to this many after each frame).
    depth: u64,
    /// Ticks from the mid -> quantity in 1e-8 units.
    bids: BTreeMap<u64, u64>,
    asks: BTreeMap<u64, u64>,
    /// `u` of the last generated frame (the snapshot's `lastUpdateId`).
    pub last_update_id: u64,
    /// Whether a snapshot was served yet.
    pub snapshot_served: bool,
    /// Levels in frames generated after the first snapshot was served: what the service must
    /// store as `book_delta` points (earlier frames are in that snapshot, and dropped).
    pub levels_after_snapshot: u64,
    pub frames_generated: u64,
    pub levels_generated: u64,
    /// Levels in every snapshot served: the `book_snapshot` points the service will store.
    pub snapshot_levels_served: u64,
}

impl SymbolBook {
    /// A book of `depth` levels per side for symbol number `i`, its prices in a range that
    /// depends on `i` (from 1e-5 to 1e4 quote units, as across Binance's list).
    pub fn new(i: usize, depth: usize, rng: &mut impl Rng) -> Self {
        let symbol = symbol_name(i);
        let decimals = 2 + (i % 7) as u32; // 2..=8 decimals
        let tick = 10u64.pow(DECIMALS - decimals);
        let mid = rng.random_range(10_000..1_000_000u64);
        let mut book = SymbolBook {
            stream: format!("{}@depth@100ms", symbol.to_lowercase()),
            symbol,
            tick,
            mid,
            depth: depth as u64,
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            last_update_id: rng.random_range(1_000_000..1_000_000_000u64),
            snapshot_served: false,
            levels_after_snapshot: 0,
            frames_generated: 0,
            levels_generated: 0,
            snapshot_levels_served: 0,
        };
        for d in 1..=book.depth {
            book.bids.insert(d, random_qty(rng));
            book.asks.insert(d, random_qty(rng));
        }
        book
    }

    /// Generates the next combined-stream frame with event time `event_ms`, applies it to the
    /// truth, and returns the JSON text and its level count.
    pub fn next_frame(
        &mut self,
        event_ms: i64,
        levels: &LevelSampler,
        rng: &mut impl Rng,
    ) -> (String, usize) {
        let n = levels.sample(rng);
        let mut bids: Vec<(u64, u64)> = Vec::with_capacity(n);
        let mut asks: Vec<(u64, u64)> = Vec::with_capacity(n);
        // A price appears once per frame, as Binance sends; a drawn price already in the
        // frame is drawn again (bounded), so the frame keeps the sampled level count.
        let mut attempts = 0;
        while bids.len() + asks.len() < n && attempts < 8 * n {
            attempts += 1;
            let bid = rng.random_bool(0.5);
            // Mostly near the top of the book, as on a real exchange; now and then deeper.
            let reach = if rng.random_bool(0.9) {
                20
            } else {
                self.depth * 2
            };
            let distance = rng.random_range(1..=reach.max(1));
            let qty = if rng.random_bool(REMOVE_SHARE) {
                0
            } else {
                random_qty(rng)
            };
            let side = if bid { &mut bids } else { &mut asks };
            if !side.iter().any(|&(d, _)| d == distance) {
                side.push((distance, qty));
            }
        }
        // Bids best (highest price = smallest distance) first, asks too: Binance's order.
        bids.sort_unstable_by_key(|&(d, _)| d);
        asks.sort_unstable_by_key(|&(d, _)| d);
        let count = bids.len() + asks.len();

        let first = self.last_update_id + 1;
        // Several changes of one level within 100 ms consume several ids: span >= levels.
        let last = self.last_update_id + count as u64 + rng.random_range(0..=count as u64);
        self.last_update_id = last;

        let mut text = String::with_capacity(120 + count * 40);
        let _ = write!(
            text,
            r#"{{"stream":"{}","data":{{"e":"depthUpdate","E":{event_ms},"s":"{}","U":{first},"u":{last},"b":["#,
            self.stream, self.symbol
        );
        self.push_levels(&mut text, &bids, true);
        text.push_str(r#"],"a":["#);
        self.push_levels(&mut text, &asks, false);
        text.push_str("]}}");

        for (d, q) in bids {
            apply(&mut self.bids, d, q);
        }
        for (d, q) in asks {
            apply(&mut self.asks, d, q);
        }
        trim(&mut self.bids, self.depth);
        trim(&mut self.asks, self.depth);
        self.frames_generated += 1;
        self.levels_generated += count as u64;
        if self.snapshot_served {
            self.levels_after_snapshot += count as u64;
        }
        (text, count)
    }

    /// The body of `GET /api/v3/depth?symbol=..&limit=..`: the truth now, best first.
    pub fn snapshot_body(&mut self, limit: usize) -> String {
        self.snapshot_served = true;
        let bids: Vec<(u64, u64)> = self
            .bids
            .iter()
            .take(limit)
            .map(|(&d, &q)| (d, q))
            .collect();
        let asks: Vec<(u64, u64)> = self
            .asks
            .iter()
            .take(limit)
            .map(|(&d, &q)| (d, q))
            .collect();
        self.snapshot_levels_served += (bids.len() + asks.len()) as u64;
        let mut text = String::with_capacity(64 + (bids.len() + asks.len()) * 40);
        let _ = write!(text, r#"{{"lastUpdateId":{},"bids":["#, self.last_update_id);
        self.push_levels(&mut text, &bids, true);
        text.push_str(r#"],"asks":["#);
        self.push_levels(&mut text, &asks, false);
        text.push_str("]}");
        text
    }

    fn price(&self, distance: u64, bid: bool) -> u64 {
        let ticks = if bid {
            self.mid - distance
        } else {
            self.mid + distance
        };
        ticks * self.tick
    }

    fn push_levels(&self, out: &mut String, levels: &[(u64, u64)], bid: bool) {
        for (k, &(d, q)) in levels.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            out.push_str("[\"");
            push_decimal(out, self.price(d, bid));
            out.push_str("\",\"");
            push_decimal(out, q);
            out.push_str("\"]");
        }
    }
}

/// `SYM00042USDT`-style names: letters and digits only (what the connector accepts), unique.
pub fn symbol_name(i: usize) -> String {
    format!("SYM{i:05}USDT")
}

/// A quantity in 1e-8 units, from 0.00000001 to about 100 units, never zero.
fn random_qty(rng: &mut impl Rng) -> u64 {
    let magnitude = rng.random_range(2..=10u32);
    rng.random_range(1..10u64.pow(magnitude))
}

fn apply(side: &mut BTreeMap<u64, u64>, distance: u64, qty: u64) {
    if qty == 0 {
        side.remove(&distance);
    } else {
        side.insert(distance, qty);
    }
}

/// Keeps the `depth` best levels of a side.
fn trim(side: &mut BTreeMap<u64, u64>, depth: u64) {
    while side.len() as u64 > depth {
        side.pop_last();
    }
}

/// `v` in 1e-8 units as Binance prints it: `58042.29000000`.
fn push_decimal(out: &mut String, v: u64) {
    let unit = 10u64.pow(DECIMALS);
    let _ = write!(out, "{}.{:08}", v / unit, v % unit);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::levels::LevelProfile;
    use rand::SeedableRng;

    #[test]
    fn frames_chain_and_the_snapshot_matches_them() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let levels = LevelSampler::new(LevelProfile::Major);
        let mut book = SymbolBook::new(3, 50, &mut rng);
        let mut prev_u = book.last_update_id;
        for i in 0..200 {
            let (text, count) = book.next_frame(1_700_000_000_000 + i, &levels, &mut rng);
            let v: serde_json::Value = serde_json::from_str(&text).expect("json");
            let data = &v["data"];
            assert_eq!(v["stream"], "sym00003usdt@depth@100ms");
            assert_eq!(data["U"].as_u64(), Some(prev_u + 1));
            let u = data["u"].as_u64().expect("u");
            assert!(u >= prev_u + count as u64);
            prev_u = u;
            let n = data["b"].as_array().expect("b").len() + data["a"].as_array().expect("a").len();
            assert_eq!(n, count);
            // Best bid below best ask.
            if let (Some(b), Some(a)) = (data["b"][0][0].as_str(), data["a"][0][0].as_str()) {
                assert!(b.parse::<f64>().expect("bid") < a.parse::<f64>().expect("ask"));
            }
        }
        let snap: serde_json::Value =
            serde_json::from_str(&book.snapshot_body(1000)).expect("json");
        assert_eq!(snap["lastUpdateId"].as_u64(), Some(prev_u));
        assert!(snap["bids"].as_array().expect("bids").len() <= 50);
        assert_eq!(book.levels_after_snapshot, 0);
        let (_, count) = book.next_frame(0, &levels, &mut rng);
        assert_eq!(book.levels_after_snapshot, count as u64);
    }

    #[test]
    fn decimals_print_like_binance() {
        let mut s = String::new();
        push_decimal(&mut s, 5_804_229_000_000);
        assert_eq!(s, "58042.29000000");
        s.clear();
        push_decimal(&mut s, 7);
        assert_eq!(s, "0.00000007");
    }
}
