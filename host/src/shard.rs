//! Sharding: `--shard i/n` (or `[service] shard = "i/n"`) runs only instance `i`'s part of
//! the symbols of every enabled feed, so n instances with the same exchanges.toml cover each
//! (feed, symbol) exactly once: no overlap, no hole.
//!
//! The rule, per feed: order the feed's symbols by a stable hash of `feed name + symbol`
//! (FNV-1a 64, the same on every machine and build), then deal them out in that order:
//! rank r goes to shard `r mod n`. Every instance computes the same order from the same list,
//! so the parts are disjoint and their union is the list; the parts differ in size by at most
//! one (plain `hash mod n` can leave an instance with nothing on a short list). The hash, not
//! the written order, decides, so reordering the list in the file moves nothing; adding or
//! removing a symbol may move others (each moved book resyncs from a fresh snapshot on its
//! new instance: a gap marker, no loss of consistency).
//!
//! `symbols = "all"` is resolved by the connector at start, from the exchange's symbol list,
//! after the configuration is loaded; two instances could resolve different lists (a listing
//! between their starts) and split them differently, leaving a hole or an overlap. So a
//! sharded configuration refuses `"all"` with a config error: list the symbols (e.g. from
//! `GET /api/v3/exchangeInfo`) when sharding.

use std::fmt;
use std::str::FromStr;

/// Instance `index` of `count` (`0 <= index < count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected \"i/n\" with 0 <= i < n (e.g. \"0/2\"), got {s:?}");
        let (i, n) = s.trim().split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What one feed runs on this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedShare {
    pub feed: String,
    /// Symbols of the feed across all shards.
    pub total: usize,
    /// This instance's symbols, in the order of the configuration.
    pub symbols: Vec<String>,
}

/// The split of this instance, for the start log and `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    pub shard: Shard,
    pub feeds: Vec<FeedShare>,
}

impl fmt::Display for ShardPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {}:", self.shard)?;
        for s in &self.feeds {
            write!(f, "\n  feed {}: {} of {} symbol(s): {}", s.feed, s.symbols.len(), s.total, s.symbols.join(" "))?;
        }
        Ok(())
    }
}

/// FNV-1a 64 of `feed`, a zero byte, `symbol`: stable across machines and Rust versions
/// (std's hasher promises neither).
pub fn symbol_hash(feed: &str, symbol: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in feed.as_bytes().iter().chain([0u8].iter()).chain(symbol.as_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The shard each symbol of `symbols` belongs to (same order as `symbols`). Duplicates in the
/// list keep the shard of their first occurrence.
pub fn assign(feed: &str, symbols: &[String], count: u32) -> Vec<u32> {
    let mut order: Vec<usize> = (0..symbols.len()).collect();
    // ties (equal hashes) broken by the symbol text, so the order is total and the same everywhere
    order.sort_by(|&a, &b| (symbol_hash(feed, &symbols[a]), &symbols[a]).cmp(&(symbol_hash(feed, &symbols[b]), &symbols[b])));
    let mut out = vec![0; symbols.len()];
    let mut rank = 0u32;
    let mut last: Option<(&String, u32)> = None;
    for &i in &order {
        match last {
            Some((sym, shard)) if sym == &symbols[i] => out[i] = shard,
            _ => {
                out[i] = rank % count;
                rank += 1;
                last = Some((&symbols[i], out[i]));
            }
        }
    }
    out
}

/// This shard's symbols of one feed, in the order of the list.
pub fn select(feed: &str, symbols: &[String], shard: Shard) -> Vec<String> {
    assign(feed, symbols, shard.count)
        .into_iter()
        .zip(symbols)
        .filter(|(s, _)| *s == shard.index)
        .map(|(_, sym)| sym.clone())
        .collect()
}

/// Applies the plan's shard to one enabled feed's symbols while the configuration is loaded:
/// `Ok(Some(symbols))` to run, `Ok(None)` when none of the feed's symbols is in this shard
/// (the feed does not run here; the split says so), `Err` for `"all"` (see the module doc).
pub fn apply(plan: &mut ShardPlan, feed: &str, symbols: ds_api::Symbols) -> Result<Option<ds_api::Symbols>, String> {
    match symbols {
        ds_api::Symbols::All if plan.shard.count > 1 => Err(format!(
            "\"all\" cannot be sharded (shard {}): each instance would resolve the exchange's list on its own; list the symbols",
            plan.shard
        )),
        ds_api::Symbols::All => {
            plan.feeds.push(FeedShare { feed: feed.to_owned(), total: 0, symbols: vec!["all".into()] });
            Ok(Some(ds_api::Symbols::All))
        }
        ds_api::Symbols::List(list) => {
            let mine = select(feed, &list, plan.shard);
            plan.feeds.push(FeedShare { feed: feed.to_owned(), total: list.len(), symbols: mine.clone() });
            Ok((!mine.is_empty()).then_some(ds_api::Symbols::List(mine)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syms(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("SYM{i}USDT")).collect()
    }

    #[test]
    fn parses_and_refuses() {
        assert_eq!("1/3".parse::<Shard>(), Ok(Shard { index: 1, count: 3 }));
        assert_eq!(" 0 / 1 ".parse::<Shard>(), Ok(Shard { index: 0, count: 1 }));
        for bad in ["3/3", "0/0", "1", "a/b", "-1/2", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert_eq!(Shard { index: 1, count: 2 }.to_string(), "1/2");
    }

    #[test]
    fn no_overlap_no_hole_balanced() {
        for n in 1..=7u32 {
            for len in [0usize, 1, 2, 5, 40, 333] {
                let list = syms(len);
                let mut seen = std::collections::HashMap::new();
                let mut sizes = Vec::new();
                for i in 0..n {
                    let part = select("binance-spot-depth", &list, Shard { index: i, count: n });
                    sizes.push(part.len());
                    for s in part {
                        assert!(seen.insert(s, i).is_none(), "overlap n={n} len={len}");
                    }
                }
                assert_eq!(seen.len(), len, "hole n={n} len={len}");
                let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(max - min <= 1, "unbalanced {sizes:?}");
            }
        }
    }

    #[test]
    fn deterministic_and_independent_of_list_order() {
        let list = syms(50);
        let mut rev = list.clone();
        rev.reverse();
        let s = Shard { index: 1, count: 3 };
        let mut a = select("f", &list, s);
        let mut b = select("f", &rev, s);
        a.sort();
        b.sort();
        assert_eq!(a, b);
        // pinned: the hash must never change between releases, or a rolling upgrade of a
        // sharded fleet would leave holes and overlaps
        assert_eq!(symbol_hash("", ""), 0xaf63_bd4c_8601_b7df);
    }

    #[test]
    fn duplicates_stay_together() {
        let list: Vec<String> = ["A", "B", "A", "C"].iter().map(|s| s.to_string()).collect();
        let a = assign("f", &list, 2);
        assert_eq!(a[0], a[2]);
    }
}
