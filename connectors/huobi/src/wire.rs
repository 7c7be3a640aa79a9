//! Huobi (HTX) spot wire types, each beside the JSON it parses (after gunzip).
//!
//! Prices and sizes are JSON numbers, often in Java's scientific notation (`9.121E-7`,
//! `5.4329174972728E12`). They are read as [`RawValue`]s, i.e. as the exact text the exchange
//! sent, and kept as [`Decimal`]: nothing is rounded through `f64` on the way to the store.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use ds_api::{Decimal, Level};

/// Book levels `[[price, size], ...]`, typed as they are read (no intermediate `Vec` of raw
/// pairs). A size of `0.0` removes the level.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Levels(pub Vec<Level>);

impl<'de> Deserialize<'de> for Levels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LevelsVisitor;
        impl<'de> Visitor<'de> for LevelsVisitor {
            type Value = Levels;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of [price, size] number pairs")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Levels, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(8).min(1024));
                while let Some((price, size)) =
                    seq.next_element::<(&'de RawValue, &'de RawValue)>()?
                {
                    out.push(Level {
                        price: number(price)?,
                        size: number(size)?,
                    });
                }
                Ok(Levels(out))
            }
        }
        d.deserialize_seq(LevelsVisitor)
    }
}

/// The exact text of a JSON number. A quoted number (`"0.1"`) is refused: Huobi never sends
/// one, and accepting it would hide a change of format.
pub fn number<E: de::Error>(raw: &RawValue) -> Result<Decimal, E> {
    Decimal::parse(raw.get()).map_err(E::custom)
}

/// `market.$symbol.mbp.$levels` push, `mbp.refresh` push, and the `data` of an mbp `req`
/// reply share this shape.
///
/// Incremental (mbp.150, ccxt issue 18749; the 150-level channel sends `[]` for an unchanged side):
/// ```json
/// {"ch":"market.aidogeusdt.mbp.150","ts":1690948841557,"tick":{"seqNum":155247358,
///  "prevSeqNum":155247355,"bids":[],"asks":[[9.486E-11,5.4329174972728E12],[9.488E-11,0.0]]}}
/// ```
/// mbp.5 / mbp.20 leave the unchanged side's key out instead. `req` reply (protocols.md §3):
/// ```json
/// {"id":"id2","rep":"market.btcusdt.mbp.150","status":"ok","data":{"seqNum":N,"bids":[..],"asks":[..]}}
/// ```
/// `mbp.refresh.$levels` pushes the same tick without `prevSeqNum`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MbpTick {
    #[serde(rename = "seqNum")]
    pub seq_num: u64,
    #[serde(rename = "prevSeqNum", default)]
    pub prev_seq_num: Option<u64>,
    #[serde(default)]
    pub bids: Levels,
    #[serde(default)]
    pub asks: Levels,
}

/// `market.$symbol.depth.step0` push: a full book of up to 150 levels a side, about once a
/// second. `version` is an internal id, strictly increasing but not chainable with anything.
/// ```json
/// {"ch":"market.trioeth.depth.step0","ts":1618678069870,"tick":{"bids":[[9.121E-7,92730.24],...],
///  "asks":[[9.28E-7,4342.25],...],"version":100182534697,"ts":1618678069868}}
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DepthTick {
    pub version: u64,
    #[serde(default)]
    pub ts: Option<i64>,
    #[serde(default)]
    pub bids: Levels,
    #[serde(default)]
    pub asks: Levels,
}

/// `market.$symbol.trade.detail` push. `data[].id` has 24-27 digits (more than u64 holds) and is
/// deprecated; it is not read. `tradeId` is the trade's id.
/// ```json
/// {"ch":"market.trioeth.trade.detail","ts":1618678027942,"tick":{"id":100182534526,"ts":1618678027940,
///  "data":[{"id":100182534526255757567432481,"ts":1618678027940,"tradeId":100045088885,
///  "amount":20995.88,"price":9.2E-7,"direction":"buy"}]}}
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TradeTick<'a> {
    #[serde(borrow)]
    pub data: Vec<TradeWire<'a>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TradeWire<'a> {
    #[serde(rename = "tradeId")]
    pub trade_id: u64,
    pub ts: Option<i64>,
    #[serde(deserialize_with = "decimal")]
    pub amount: Decimal,
    #[serde(deserialize_with = "decimal")]
    pub price: Decimal,
    /// Taker side: `buy` or `sell`.
    #[serde(borrow)]
    pub direction: &'a str,
}

fn decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let raw: &'de RawValue = Deserialize::deserialize(d)?;
    number(raw)
}

/// `GET /v1/common/symbols`, only what symbol resolution needs (unknown fields ignored on
/// purpose; the body carries twenty more per symbol):
/// ```json
/// {"status":"ok","data":[{"base-currency":"yee","quote-currency":"btc","symbol":"yeebtc",
///  "state":"online","api-trading":"enabled",...}]}
/// ```
#[derive(Debug, Deserialize)]
pub struct CommonSymbolsWire {
    pub status: String,
    #[serde(default)]
    pub data: Vec<SymbolWire>,
}

#[derive(Debug, Deserialize)]
pub struct SymbolWire {
    pub symbol: String,
    /// `online`, `offline`, `suspend`, `pre-online`.
    pub state: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_keep_the_exchange_text() {
        let t: MbpTick = serde_json::from_str(r#"{"seqNum":155247362,"prevSeqNum":155247358,"bids":[],"asks":[[9.485E-11,3.24127967841632E12],[9.487E-11,0.0],[716.0,1]]}"#).unwrap();
        let texts: Vec<(&str, &str)> = t
            .asks
            .0
            .iter()
            .map(|l| (l.price.as_str(), l.size.as_str()))
            .collect();
        assert_eq!(
            texts,
            [
                ("9.485E-11", "3.24127967841632E12"),
                ("9.487E-11", "0.0"),
                ("716.0", "1")
            ]
        );
        assert!(t.bids.0.is_empty());
        assert_eq!((t.seq_num, t.prev_seq_num), (155247362, Some(155247358)));
    }

    #[test]
    fn absent_side_is_empty_and_strings_are_refused() {
        let t: MbpTick =
            serde_json::from_str(r#"{"seqNum":2,"prevSeqNum":1,"bids":[[1.5,2]]}"#).unwrap();
        assert!(t.asks.0.is_empty());
        assert!(serde_json::from_str::<MbpTick>(r#"{"seqNum":2,"bids":[["1.5","2"]]}"#).is_err());
        assert!(serde_json::from_str::<MbpTick>(r#"{"seqNum":2,"bids":[[1.5]]}"#).is_err());
        assert!(serde_json::from_str::<MbpTick>(r#"{"seqNum":2,"bids":[[1.5,2,3]]}"#).is_err());
    }

    #[test]
    fn trade_id_beyond_u64_is_not_read() {
        let line = r#"{"id":100182534526,"ts":1618678027940,"data":[{"id":100182534526255757567432481,"ts":1618678027940,"tradeId":100045088885,"amount":20995.88,"price":9.2E-7,"direction":"buy"}]}"#;
        let t: TradeTick = serde_json::from_str(line).unwrap();
        assert_eq!(t.data[0].trade_id, 100045088885);
        assert_eq!(
            (
                t.data[0].price.as_str(),
                t.data[0].amount.as_str(),
                t.data[0].direction
            ),
            ("9.2E-7", "20995.88", "buy")
        );
    }
}
