//! Bybit v5 reference: the order book rule and the trade list, written independently of the
//! connector (same reasoning as [`crate::book`]: a bug in the connector's sync logic must not
//! hide by being repeated in the expectation).
//!
//! The rule, from Bybit's documentation (protocols.md §2): a snapshot, or any push with
//! `u == 1`, replaces the book; a delta applies when its `u` is the previous `u` + 1; anything
//! else means pushes were lost, and nothing applies until the next snapshot. Sizes are
//! absolute, `"0"` removes a level.

use serde_json::Value;

use crate::book::{OrderBook, Side};

/// One `orderbook.{depth}.{symbol}` push with its levels as text.
///
/// ```json
/// {"topic":"orderbook.200.BTCUSDT","ts":1786310816516,"type":"snapshot","data":{"s":"BTCUSDT",
///  "b":[["65140.4","0.885797"]],"a":[["65140.5","0.532"]],"u":7461296,"seq":112488544036},
///  "cts":1786310816513}
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BybitPush {
    pub topic: String,
    /// `type == "snapshot"`.
    pub snapshot: bool,
    /// `data.s`.
    pub symbol: String,
    pub u: u64,
    pub seq: Option<u64>,
    pub ts: Option<i64>,
    pub cts: Option<i64>,
    pub bids: Vec<(String, String)>,
    pub asks: Vec<(String, String)>,
}

impl BybitPush {
    /// `Ok(None)` for valid JSON that is not an order book push (trades, acks, pongs).
    pub fn parse(frame: &str) -> Result<Option<BybitPush>, String> {
        let v: Value = serde_json::from_str(frame).map_err(|e| format!("not JSON: {e}"))?;
        let Some(topic) = v.get("topic").and_then(Value::as_str) else {
            return Ok(None);
        };
        if !topic.starts_with("orderbook.") {
            return Ok(None);
        }
        let data = v.get("data").ok_or("orderbook push without data")?;
        let snapshot = match v.get("type").and_then(Value::as_str) {
            Some("snapshot") => true,
            Some("delta") => false,
            other => return Err(format!("orderbook push of type {other:?}")),
        };
        Ok(Some(BybitPush {
            topic: topic.to_owned(),
            snapshot,
            symbol: data
                .get("s")
                .and_then(Value::as_str)
                .ok_or("no data.s")?
                .to_owned(),
            u: data
                .get("u")
                .and_then(Value::as_u64)
                .ok_or("no integer data.u")?,
            seq: data.get("seq").and_then(Value::as_u64),
            ts: v.get("ts").and_then(Value::as_i64),
            cts: v.get("cts").and_then(Value::as_i64),
            bids: text_levels(data.get("b")).map_err(|e| format!("b: {e}"))?,
            asks: text_levels(data.get("a")).map_err(|e| format!("a: {e}"))?,
        }))
    }

    /// Every level as `(side, price, size)`, bids first, in push order.
    pub fn levels(&self) -> Vec<(Side, String, String)> {
        let mut all: Vec<_> = self
            .bids
            .iter()
            .map(|(p, q)| (Side::Bid, p.clone(), q.clone()))
            .collect();
        all.extend(
            self.asks
                .iter()
                .map(|(p, q)| (Side::Ask, p.clone(), q.clone())),
        );
        all
    }
}

/// `[["price","size"], ...]`.
pub fn text_levels(levels: Option<&Value>) -> Result<Vec<(String, String)>, String> {
    let levels = levels
        .and_then(Value::as_array)
        .ok_or("missing or not an array")?;
    levels
        .iter()
        .map(|l| {
            match (
                l.get(0).and_then(Value::as_str),
                l.get(1).and_then(Value::as_str),
            ) {
                (Some(p), Some(q)) => Ok((p.to_owned(), q.to_owned())),
                _ => Err(format!("level {l} is not [\"price\",\"size\"]")),
            }
        })
        .collect()
}

/// A push the reference applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedPush {
    /// Index of the frame in the slice given to [`bybit_reference`].
    pub index: usize,
    pub u: u64,
    /// Whether it replaced the book (snapshot, or `u == 1`).
    pub reset: bool,
    pub levels: Vec<(Side, String, String)>,
}

/// What a correct Bybit client ends with after the given frames of one topic.
#[derive(Clone, Debug, PartialEq)]
pub struct BybitReference {
    pub topic: String,
    /// The book after the last applied push (empty while no snapshot was applied).
    pub book: OrderBook,
    /// `u` of the last applied push, `None` while out of sync.
    pub last_u: Option<u64>,
    /// Applied pushes in order: resets (stored as snapshots) and deltas.
    pub applied: Vec<AppliedPush>,
    /// Chain breaks: (last applied u, u of the delta that did not chain).
    pub gaps: Vec<(u64, u64)>,
    /// Deltas not applied: before the first snapshot, after a break, or a repeated `u`.
    pub discarded: usize,
}

impl BybitReference {
    pub fn snapshots(&self) -> impl Iterator<Item = &AppliedPush> {
        self.applied.iter().filter(|a| a.reset)
    }

    pub fn deltas(&self) -> impl Iterator<Item = &AppliedPush> {
        self.applied.iter().filter(|a| !a.reset)
    }

    /// Levels of every applied delta.
    pub fn delta_levels(&self) -> usize {
        self.deltas().map(|d| d.levels.len()).sum()
    }
}

/// Applies Bybit's rule to the pushes of `topic` in `frames` (other frames are skipped).
/// Panics on a frame that is not valid JSON of the expected shape.
pub fn bybit_reference(frames: &[String], topic: &str) -> BybitReference {
    let mut r = BybitReference {
        topic: topic.to_owned(),
        book: OrderBook::new(),
        last_u: None,
        applied: Vec::new(),
        gaps: Vec::new(),
        discarded: 0,
    };
    for (index, frame) in frames.iter().enumerate() {
        let push = match BybitPush::parse(frame) {
            Ok(Some(p)) if p.topic == topic => p,
            Ok(_) => continue,
            Err(e) => panic!("bybit_reference: frame {index}: {e}: {frame}"),
        };
        let reset = push.snapshot || push.u == 1;
        if reset {
            r.book = OrderBook::new();
        } else {
            match r.last_u {
                Some(last) if push.u == last + 1 => {}
                Some(last) if push.u == last => {
                    r.discarded += 1;
                    continue;
                }
                Some(last) => {
                    r.gaps.push((last, push.u));
                    r.last_u = None;
                    r.discarded += 1;
                    continue;
                }
                None => {
                    r.discarded += 1;
                    continue;
                }
            }
        }
        let levels = push.levels();
        for (side, p, q) in &levels {
            r.book.apply(*side, p, q);
        }
        r.last_u = Some(push.u);
        r.applied.push(AppliedPush {
            index,
            u: push.u,
            reset,
            levels,
        });
    }
    r
}

/// One public trade with its numbers as text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BybitTrade {
    pub symbol: String,
    pub trade_id: String,
    pub price: String,
    pub size: String,
    /// Taker side.
    pub side: Side,
    /// `T`, ms.
    pub time: i64,
}

/// Every trade of the `publicTrade.*` frames in `frames`, in order. Panics on a trade push of
/// an unexpected shape.
pub fn bybit_trades(frames: &[String]) -> Vec<BybitTrade> {
    let mut out = Vec::new();
    for frame in frames {
        let v: Value = serde_json::from_str(frame)
            .unwrap_or_else(|e| panic!("bybit_trades: not JSON ({e}): {frame}"));
        if !v
            .get("topic")
            .and_then(Value::as_str)
            .is_some_and(|t| t.starts_with("publicTrade."))
        {
            continue;
        }
        for t in v["data"]
            .as_array()
            .unwrap_or_else(|| panic!("trade push without a data array: {frame}"))
        {
            let text = |k: &str| {
                t.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("trade without {k}: {t}"))
                    .to_owned()
            };
            out.push(BybitTrade {
                symbol: text("s"),
                trade_id: text("i"),
                price: text("p"),
                size: text("v"),
                side: Side::parse(&text("S")).unwrap_or_else(|| panic!("trade side {t}")),
                time: t
                    .get("T")
                    .and_then(Value::as_i64)
                    .unwrap_or_else(|| panic!("trade without T: {t}")),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn push(kind: &str, u: u64, bids: &str) -> String {
        format!(
            r#"{{"topic":"orderbook.50.X","type":"{kind}","ts":1,"data":{{"s":"X","b":{bids},"a":[],"u":{u},"seq":1}},"cts":1}}"#
        )
    }

    #[test]
    fn rule_resets_applies_and_breaks() {
        let frames = vec![
            push("delta", 4, "[]"), // before any snapshot: discarded
            push("snapshot", 5, r#"[["10","1"],["9","2"]]"#),
            push("delta", 6, r#"[["10","0"]]"#),
            push("delta", 6, r#"[["10","5"]]"#), // repeated u: discarded
            push("delta", 8, r#"[["8","1"]]"#),  // break
            push("delta", 9, r#"[["7","1"]]"#),  // out of sync: discarded
            push("snapshot", 9, r#"[["9","3"]]"#),
            push("delta", 1, r#"[["1","1"]]"#), // u == 1: reset
            push("delta", 2, r#"[["2","1"]]"#),
        ];
        let r = bybit_reference(&frames, "orderbook.50.X");
        assert_eq!(
            r.applied.iter().map(|a| (a.u, a.reset)).collect::<Vec<_>>(),
            [(5, true), (6, false), (9, true), (1, true), (2, false)]
        );
        assert_eq!(r.gaps, [(6, 8)]);
        assert_eq!(r.discarded, 4, "u 4, the repeated 6, the breaking 8, and 9");
        assert_eq!(r.book.bids_best_first(), [(2.0, 1.0), (1.0, 1.0)]);
        assert_eq!(r.last_u, Some(2));
    }

    #[test]
    fn the_2026_captures_chain_on_u() {
        for (file, topics) in [
            (
                "bybit/orderbook_200_spot_2026-08-09.jsonl",
                &["BTCUSDT", "ETHUSDT"][..],
            ),
            (
                "bybit/orderbook_200_linear_2026-08-09.jsonl",
                &["BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT"][..],
            ),
        ] {
            let Some(frames) = fixtures::require_lines(file) else {
                return;
            };
            let mut deltas = 0;
            for s in topics {
                let r = bybit_reference(&frames, &format!("orderbook.200.{s}"));
                assert!(
                    r.gaps.is_empty() && r.discarded == 0,
                    "{file} {s}: {:?}",
                    r.gaps
                );
                assert_eq!(r.snapshots().count(), 1);
                assert!(!r.book.is_crossed(), "{file} {s}");
                deltas += r.deltas().count();
            }
            // PROVENANCE.md: 548/548 spot and 1594/1594 linear deltas chain.
            assert_eq!(deltas, if file.contains("spot") { 548 } else { 1594 });
        }
        let Some(spot) = fixtures::require_lines("bybit/public_trade_spot_2026-08-09.jsonl") else {
            return;
        };
        let Some(linear) = fixtures::require_lines("bybit/public_trade_linear_2026-08-09.jsonl")
        else {
            return;
        };
        assert_eq!(
            (bybit_trades(&spot).len(), bybit_trades(&linear).len()),
            (20, 327)
        );
    }
}
