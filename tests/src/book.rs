//! A reference order book and the Binance sync rule, written independently of the service.
//!
//! Tests compare the book the service stored (read back from InfluxDB) with a book computed
//! here from the same recorded frames. Keeping this code separate from the connector means a
//! bug in the connector's sync logic cannot hide by being repeated in the expectation.
//!
//! InfluxDB returns prices and quantities as JSON floats, so the book is keyed and valued by
//! `f64`. Text from the exchange is parsed with `str::parse::<f64>()`, which rounds correctly,
//! as InfluxDB's (Go `strconv.ParseFloat`) line-protocol parser does: the same decimal text
//! gives the same `f64` on both paths, so books compare exactly, without tolerance.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// A price as a map key: an `f64` ordered by [`f64::total_cmp`] (prices are finite and
/// positive, where that order is the numeric order).
#[derive(Clone, Copy, Debug)]
pub struct PriceKey(pub f64);

impl PriceKey {
    /// The price.
    pub fn value(self) -> f64 {
        self.0
    }
}

impl PartialEq for PriceKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for PriceKey {}

impl PartialOrd for PriceKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PriceKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl std::hash::Hash for PriceKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

impl fmt::Display for PriceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Side of the book.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// Buy orders (`b` / `bids`), best = highest price.
    Bid,
    /// Sell orders (`a` / `asks`), best = lowest price.
    Ask,
}

impl Side {
    /// Parses the spellings found in exchange frames and in stored data: `b`, `bid`, `bids`,
    /// `buy`, `a`, `ask`, `asks`, `sell` (any case).
    pub fn parse(s: &str) -> Option<Side> {
        match s.to_ascii_lowercase().as_str() {
            "b" | "bid" | "bids" | "buy" => Some(Side::Bid),
            "a" | "ask" | "asks" | "sell" => Some(Side::Ask),
            _ => None,
        }
    }

    /// `"bid"` or `"ask"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Bid => "bid",
            Side::Ask => "ask",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An L2 book: price -> absolute quantity, per side. Levels with quantity 0 are never stored.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OrderBook {
    /// Bids by price (ascending map order; best bid is the last entry).
    pub bids: BTreeMap<PriceKey, f64>,
    /// Asks by price (ascending map order; best ask is the first entry).
    pub asks: BTreeMap<PriceKey, f64>,
}

/// Parses a decimal string as InfluxDB would; panics naming the text when it is not a number
/// (reference data is trusted; a bad number is a broken fixture or test).
fn parse_number(what: &str, text: &str) -> f64 {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => v,
        _ => panic!("reference book: {what} {text:?} is not a finite number"),
    }
}

impl OrderBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// The map of one side.
    pub fn side(&self, side: Side) -> &BTreeMap<PriceKey, f64> {
        match side {
            Side::Bid => &self.bids,
            Side::Ask => &self.asks,
        }
    }

    fn side_mut(&mut self, side: Side) -> &mut BTreeMap<PriceKey, f64> {
        match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        }
    }

    /// Applies one level as the exchange sends it (decimal text, absolute quantity): a
    /// quantity that parses to zero removes the level (removing an unknown level is normal),
    /// anything else sets it. Panics on text that is not a finite number.
    pub fn apply(&mut self, side: Side, price: &str, qty: &str) {
        let price = parse_number("price", price);
        let qty = parse_number("quantity", qty);
        self.set(side, price, qty);
    }

    /// [`OrderBook::apply`] for values already parsed (e.g. read back from InfluxDB).
    pub fn set(&mut self, side: Side, price: f64, qty: f64) {
        let levels = self.side_mut(side);
        if qty == 0.0 {
            levels.remove(&PriceKey(price));
        } else {
            levels.insert(PriceKey(price), qty);
        }
    }

    /// Parses a Binance REST depth body (`{"lastUpdateId":N,"bids":[["p","q"],...],"asks":...}`)
    /// into its `lastUpdateId` and book. Panics on a body of another shape.
    pub fn from_binance_snapshot(json: &str) -> (u64, OrderBook) {
        let snapshot = BinanceSnapshot::parse(json)
            .unwrap_or_else(|e| panic!("reference book: bad Binance depth snapshot: {e}"));
        (snapshot.last_update_id, snapshot.to_book())
    }

    /// Best bid `(price, qty)`.
    pub fn best_bid(&self) -> Option<(f64, f64)> {
        self.bids.iter().next_back().map(|(p, q)| (p.0, *q))
    }

    /// Best ask `(price, qty)`.
    pub fn best_ask(&self) -> Option<(f64, f64)> {
        self.asks.iter().next().map(|(p, q)| (p.0, *q))
    }

    /// Whether best bid >= best ask, which a correctly synced book never is.
    pub fn is_crossed(&self) -> bool {
        matches!((self.best_bid(), self.best_ask()), (Some((b, _)), Some((a, _))) if b >= a)
    }

    /// Bids `(price, qty)`, best (highest) first.
    pub fn bids_best_first(&self) -> Vec<(f64, f64)> {
        self.bids.iter().rev().map(|(p, q)| (p.0, *q)).collect()
    }

    /// Asks `(price, qty)`, best (lowest) first.
    pub fn asks_best_first(&self) -> Vec<(f64, f64)> {
        self.asks.iter().map(|(p, q)| (p.0, *q)).collect()
    }

    /// Number of levels on both sides.
    pub fn len(&self) -> usize {
        self.bids.len() + self.asks.len()
    }

    /// Whether both sides are empty.
    pub fn is_empty(&self) -> bool {
        self.bids.is_empty() && self.asks.is_empty()
    }

    /// Human-readable differences (`self` = actual, `expected`), at most `max` lines; empty
    /// when the books are equal. Meant for assertion messages:
    /// `assert!(d.is_empty(), "{}", d.join("\n"))`.
    pub fn diff(&self, expected: &OrderBook, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        for side in [Side::Bid, Side::Ask] {
            let (actual, wanted) = (self.side(side), expected.side(side));
            for (price, qty) in wanted {
                match actual.get(price) {
                    None => out.push(format!("{side} {price}: missing (expected qty {qty})")),
                    Some(got) if got != qty => {
                        out.push(format!("{side} {price}: qty {got}, expected {qty}"))
                    }
                    Some(_) => {}
                }
            }
            for (price, qty) in actual {
                if !wanted.contains_key(price) {
                    out.push(format!("{side} {price}: unexpected level (qty {qty})"));
                }
            }
        }
        if out.len() > max {
            let more = out.len() - max;
            out.truncate(max);
            out.push(format!("... and {more} more differences"));
        }
        out
    }
}

/// A Binance REST depth snapshot with its levels kept as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinanceSnapshot {
    /// `lastUpdateId`.
    pub last_update_id: u64,
    /// `bids` as `(price, qty)` text, best first as sent.
    pub bids: Vec<(String, String)>,
    /// `asks` as `(price, qty)` text, best first as sent.
    pub asks: Vec<(String, String)>,
}

impl BinanceSnapshot {
    /// Parses a `/api/v3/depth` body.
    pub fn parse(json: &str) -> Result<BinanceSnapshot, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
        let last_update_id = v
            .get("lastUpdateId")
            .and_then(Value::as_u64)
            .ok_or("no integer lastUpdateId")?;
        Ok(BinanceSnapshot {
            last_update_id,
            bids: parse_levels(v.get("bids")).map_err(|e| format!("bids: {e}"))?,
            asks: parse_levels(v.get("asks")).map_err(|e| format!("asks: {e}"))?,
        })
    }

    /// The snapshot as a book.
    pub fn to_book(&self) -> OrderBook {
        let mut book = OrderBook::new();
        for (side, levels) in [(Side::Bid, &self.bids), (Side::Ask, &self.asks)] {
            for (price, qty) in levels {
                book.apply(side, price, qty);
            }
        }
        book
    }
}

/// `[["price","qty"], ...]` (extra elements per level, as in the old v1 API, are ignored).
fn parse_levels(levels: Option<&Value>) -> Result<Vec<(String, String)>, String> {
    let levels = levels
        .and_then(Value::as_array)
        .ok_or("missing or not an array")?;
    levels
        .iter()
        .map(|level| {
            let text = |i: usize| {
                level
                    .get(i)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| format!("level {level} is not [\"price\",\"qty\"]"))
            };
            Ok((text(0)?, text(1)?))
        })
        .collect()
}

/// A Binance spot diff-depth event (`depthUpdate`), levels kept as text.
///
/// ```json
/// {"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1617566591307,"s":"BTCUSDT",
///  "U":9893032989,"u":9893032991,"b":[["55000.00000000","135.66466600"]],
///  "a":[["58042.29000000","0.09700000"]]}}
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepthUpdate {
    /// `stream` of the combined-stream wrapper (`btcusdt@depth@100ms`); `None` for a raw event.
    pub stream: Option<String>,
    /// `s`, uppercase (`BTCUSDT`).
    pub symbol: String,
    /// `E`, event time in ms.
    pub event_time: u64,
    /// `U`, first update id in the event.
    pub first_update_id: u64,
    /// `u`, final update id in the event.
    pub final_update_id: u64,
    /// `b` as `(price, qty)` text.
    pub bids: Vec<(String, String)>,
    /// `a` as `(price, qty)` text.
    pub asks: Vec<(String, String)>,
}

impl DepthUpdate {
    /// Parses a combined-stream frame (`{"stream":..,"data":{..}}`) or a raw event.
    /// `Ok(None)` for valid JSON that is not a `depthUpdate` (e.g. an aggTrade frame).
    pub fn parse(frame: &str) -> Result<Option<DepthUpdate>, String> {
        let v: Value = serde_json::from_str(frame).map_err(|e| format!("not JSON: {e}"))?;
        let stream = v.get("stream").and_then(Value::as_str).map(str::to_owned);
        let data = v.get("data").unwrap_or(&v);
        if data.get("e").and_then(Value::as_str) != Some("depthUpdate") {
            return Ok(None);
        }
        let int = |key: &str| {
            data.get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("depthUpdate without integer {key:?}"))
        };
        Ok(Some(DepthUpdate {
            stream,
            symbol: data
                .get("s")
                .and_then(Value::as_str)
                .ok_or("depthUpdate without \"s\"")?
                .to_owned(),
            event_time: int("E")?,
            first_update_id: int("U")?,
            final_update_id: int("u")?,
            bids: parse_levels(data.get("b")).map_err(|e| format!("b: {e}"))?,
            asks: parse_levels(data.get("a")).map_err(|e| format!("a: {e}"))?,
        }))
    }

    /// Every level as `(side, price, qty)`, bids first, in frame order.
    pub fn levels(&self) -> Vec<(Side, String, String)> {
        let side = |s: Side, levels: &[(String, String)]| {
            levels
                .iter()
                .map(move |(p, q)| (s, p.clone(), q.clone()))
                .collect::<Vec<_>>()
        };
        let mut all = side(Side::Bid, &self.bids);
        all.extend(side(Side::Ask, &self.asks));
        all
    }
}

/// One diff-depth event the reference applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedUpdate {
    /// Index of the frame in the slice given to [`binance_reference`].
    pub index: usize,
    /// `U`.
    pub first_update_id: u64,
    /// `u`.
    pub final_update_id: u64,
    /// `E` (ms).
    pub event_time: u64,
    /// Every level of the event as `(side, price, qty)` text, bids first.
    pub levels: Vec<(Side, String, String)>,
}

/// Where the chain broke: `U` was not `previous u + 1` (or the first event after the snapshot
/// did not straddle `lastUpdateId + 1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// Index of the offending frame.
    pub index: usize,
    /// The `U` the rule required (`previous u + 1`, or `lastUpdateId + 1` for the first).
    pub expected_first_update_id: u64,
    /// The frame's `U`.
    pub first_update_id: u64,
}

/// What a correct Binance client ends with after snapshot + diff stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    /// The symbol (uppercase).
    pub symbol: String,
    /// `lastUpdateId` of the snapshot.
    pub snapshot_last_update_id: u64,
    /// The book after every applied event.
    pub book: OrderBook,
    /// The applied events, in order.
    pub applied: Vec<AppliedUpdate>,
    /// Events of the symbol dropped because `u <= lastUpdateId`.
    pub dropped: usize,
    /// Index of the first applied event.
    pub first_applied_index: Option<usize>,
    /// `u` of the last applied event, or the snapshot's `lastUpdateId` when none applied.
    pub last_update_id: u64,
    /// The first break of the chain; nothing after it is applied (a real client would
    /// resync from a new snapshot, which a reference built from one snapshot cannot do).
    pub gap: Option<Gap>,
}

impl Reference {
    /// Total number of levels in the applied events.
    pub fn applied_levels(&self) -> usize {
        self.applied.iter().map(|u| u.levels.len()).sum()
    }
}

/// Applies the documented Binance spot sync rule to `frames` (combined-stream or raw
/// `depthUpdate` frames; other frames and other symbols are skipped) on top of `snapshot_json`
/// (a REST depth body) for `symbol` (any case):
///
/// 1. drop every event with `u <= lastUpdateId`;
/// 2. the first applied event must satisfy `U <= lastUpdateId + 1 <= u`;
/// 3. every later event must have `U == previous u + 1`;
/// 4. quantities are absolute; 0 removes the level.
///
/// Panics on a snapshot or frame that is not valid JSON of the expected shape.
pub fn binance_reference(snapshot_json: &str, frames: &[String], symbol: &str) -> Reference {
    let symbol = symbol.to_ascii_uppercase();
    let (snapshot_last_update_id, mut book) = OrderBook::from_binance_snapshot(snapshot_json);
    let mut reference = Reference {
        symbol: symbol.clone(),
        snapshot_last_update_id,
        book: OrderBook::new(),
        applied: Vec::new(),
        dropped: 0,
        first_applied_index: None,
        last_update_id: snapshot_last_update_id,
        gap: None,
    };
    for (index, frame) in frames.iter().enumerate() {
        let update = match DepthUpdate::parse(frame) {
            Ok(Some(update)) if update.symbol == symbol => update,
            Ok(_) => continue,
            Err(e) => panic!("binance_reference: frame {index}: {e}: {frame}"),
        };
        let (first, last) = (update.first_update_id, update.final_update_id);
        let expected = reference.last_update_id + 1;
        if reference.applied.is_empty() {
            if last <= snapshot_last_update_id {
                reference.dropped += 1;
                continue;
            }
            if first > expected {
                reference.gap = Some(Gap {
                    index,
                    expected_first_update_id: expected,
                    first_update_id: first,
                });
                break;
            }
            reference.first_applied_index = Some(index);
        } else if first != expected {
            reference.gap = Some(Gap {
                index,
                expected_first_update_id: expected,
                first_update_id: first,
            });
            break;
        }
        let levels = update.levels();
        for (side, price, qty) in &levels {
            book.apply(*side, price, qty);
        }
        reference.last_update_id = last;
        reference.applied.push(AppliedUpdate {
            index,
            first_update_id: first,
            final_update_id: last,
            event_time: update.event_time,
            levels,
        });
    }
    reference.book = book;
    reference
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn price_key_orders_numerically() {
        let mut book = OrderBook::new();
        book.apply(Side::Bid, "9.5", "1");
        book.apply(Side::Bid, "10.00000000", "2");
        book.apply(Side::Bid, "10.0", "3"); // same price, other text: overwrites
        book.apply(Side::Ask, "11", "1");
        book.apply(Side::Ask, "11.00000000", "0.00000000"); // removes
        book.apply(Side::Ask, "12", "0"); // removing an unknown level is fine
        assert_eq!(book.best_bid(), Some((10.0, 3.0)));
        assert_eq!(book.bids_best_first(), vec![(10.0, 3.0), (9.5, 1.0)]);
        assert!(book.asks.is_empty());
        assert!(!book.is_crossed());
        book.set(Side::Ask, 10.0, 1.0);
        assert!(book.is_crossed());
    }

    #[test]
    fn text_and_float_paths_agree() {
        // A price parsed from exchange text equals the float InfluxDB hands back as JSON.
        let mut from_text = OrderBook::new();
        from_text.apply(Side::Bid, "58001.03000000", "1.60107400");
        let mut from_json = OrderBook::new();
        let v: Value = serde_json::from_str("[58001.03, 1.601074]").expect("json");
        from_json.set(
            Side::Bid,
            v[0].as_f64().expect("f64"),
            v[1].as_f64().expect("f64"),
        );
        assert_eq!(from_text, from_json);
        assert!(from_text.diff(&from_json, 10).is_empty());
        from_json.set(Side::Ask, 1.0, 1.0);
        assert_eq!(from_text.diff(&from_json, 10).len(), 1);
    }

    #[test]
    fn parses_depth_frames() {
        let frame = r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1617566591307,"s":"BTCUSDT","U":9893032989,"u":9893032991,"b":[["55000.00000000","135.66466600"]],"a":[["58042.29000000","0.09700000"],["58055.02000000","0.75000000"]]}}"#;
        let update = DepthUpdate::parse(frame).expect("valid").expect("depth");
        assert_eq!(update.stream.as_deref(), Some("btcusdt@depth@100ms"));
        assert_eq!(update.symbol, "BTCUSDT");
        assert_eq!(
            (update.first_update_id, update.final_update_id),
            (9893032989, 9893032991)
        );
        assert_eq!(update.levels().len(), 3);
        assert_eq!(update.levels()[0].0, Side::Bid);
        let trade = r#"{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1,"s":"BTCUSDT"}}"#;
        assert_eq!(DepthUpdate::parse(trade), Ok(None));
        assert!(DepthUpdate::parse("{").is_err());
    }

    struct Case {
        date: &'static str,
        symbol: &'static str,
        dropped: usize,
        first_applied_index: usize,
    }

    /// PROVENANCE.md sync checks. The indices there are line indices in the combined file.
    const CASES: &[Case] = &[
        Case {
            date: "2021-04-04",
            symbol: "BTCUSDT",
            dropped: 10,
            first_applied_index: 31,
        },
        Case {
            date: "2021-04-04",
            symbol: "ETHUSDT",
            dropped: 13,
            first_applied_index: 41,
        },
        Case {
            date: "2021-04-04",
            symbol: "DOTUSDT",
            dropped: 9,
            first_applied_index: 27,
        },
        Case {
            date: "2021-10-11",
            symbol: "NKNUSDT",
            dropped: 1,
            first_applied_index: 1,
        },
        Case {
            date: "2021-10-11",
            symbol: "BLZETH",
            dropped: 1,
            first_applied_index: 51,
        },
        Case {
            date: "2021-10-11",
            symbol: "LRCBTC",
            dropped: 2,
            first_applied_index: 30,
        },
        Case {
            date: "2021-10-11",
            symbol: "RUNEEUR",
            dropped: 1,
            first_applied_index: usize::MAX,
        },
    ];

    #[test]
    fn reference_matches_provenance_sync_checks() {
        for (i, case) in CASES.iter().enumerate() {
            let frames_rel = format!("binance/depth_update_combined_{}.jsonl", case.date);
            let snapshot_rel = format!(
                "binance/rest_depth_snapshot_{}_{}.json",
                case.date, case.symbol
            );
            let (Some(frames), Some(snapshot)) = (
                fixtures::require_lines(&frames_rel),
                fixtures::require_string(&snapshot_rel),
            ) else {
                return;
            };
            let r = binance_reference(&snapshot, &frames, case.symbol);
            let what = format!("case {i} {} {}", case.date, case.symbol);
            assert_eq!(r.gap, None, "{what}");
            assert_eq!(r.dropped, case.dropped, "{what}");
            if case.first_applied_index != usize::MAX {
                assert_eq!(
                    r.first_applied_index,
                    Some(case.first_applied_index),
                    "{what}"
                );
            }
            let total = frames
                .iter()
                .filter_map(|f| DepthUpdate::parse(f).ok().flatten())
                .filter(|u| u.symbol == case.symbol)
                .count();
            assert_eq!(
                r.dropped + r.applied.len(),
                total,
                "{what}: every frame accounted"
            );
            assert!(!r.book.is_crossed(), "{what}: final book crossed");
            assert!(!r.book.bids.is_empty() && !r.book.asks.is_empty(), "{what}");
            // The first applied event straddles lastUpdateId + 1.
            let first = &r.applied[0];
            assert!(
                first.first_update_id <= r.snapshot_last_update_id + 1,
                "{what}"
            );
            assert!(first.final_update_id > r.snapshot_last_update_id, "{what}");
            assert_eq!(
                r.last_update_id,
                r.applied.last().map_or(0, |u| u.final_update_id)
            );
        }
    }

    #[test]
    fn nknusdt_first_frame_is_dropped() {
        let (Some(frames), Some(snapshot)) = (
            fixtures::require_lines("binance/depth_update_combined_2021-10-11.jsonl"),
            fixtures::require_string("binance/rest_depth_snapshot_2021-10-11_NKNUSDT.json"),
        ) else {
            return;
        };
        let r = binance_reference(&snapshot, &frames, "nknusdt");
        assert_eq!(r.snapshot_last_update_id, 499869752);
        let first = DepthUpdate::parse(&frames[0])
            .expect("valid")
            .expect("depth");
        assert_eq!(first.final_update_id, 499869752, "u == lastUpdateId");
        assert_eq!(r.dropped, 1);
        assert_eq!(r.applied[0].index, 1);
        assert_eq!(r.applied[0].first_update_id, 499869753);
    }

    #[test]
    fn missing_frame_is_reported_as_gap() {
        let (Some(mut frames), Some(snapshot)) = (
            fixtures::require_lines("binance/depth_update_combined_2021-04-04.jsonl"),
            fixtures::require_string("binance/rest_depth_snapshot_2021-04-04_BTCUSDT.json"),
        ) else {
            return;
        };
        let full = binance_reference(&snapshot, &frames, "BTCUSDT");
        let lost = full.applied[5].index;
        frames.remove(lost);
        let r = binance_reference(&snapshot, &frames, "BTCUSDT");
        let gap = r.gap.expect("gap detected");
        // The next BTCUSDT frame, shifted down by the removal.
        assert_eq!(gap.index, full.applied[6].index - 1);
        assert_eq!(gap.first_update_id, full.applied[6].first_update_id);
        assert_eq!(
            gap.expected_first_update_id,
            full.applied[4].final_update_id + 1
        );
        assert_eq!(r.applied.len(), 5);
    }
}
