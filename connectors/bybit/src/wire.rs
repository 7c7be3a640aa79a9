//! Bybit v5 public wire types, each beside the real JSON it parses (samples from
//! ../shared/fixtures/bybit, see PROVENANCE.md there).
//!
//! Every frame on a public socket is either a topic push or an answer to one of our `op`
//! requests, so one struct with optional fields reads both in a single pass. Fields are
//! matched by key: spot writes `ts` before `type`, linear the other way round.

use std::borrow::Cow;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use ds_api::{Decimal, Level};

/// Any frame. A topic push (spot `orderbook_200_spot_2026-08-09.jsonl`, levels cut):
///
/// ```json
/// {"topic":"orderbook.200.BTCUSDT","ts":1786310816516,"type":"snapshot","data":{"s":"BTCUSDT",
///  "b":[["65140.4","0.885797"],["65140","0.014"]],"a":[["65140.5","0.532"]],"u":7461296,
///  "seq":112488544036},"cts":1786310816513}
/// ```
///
/// An `op` answer: subscribe acks on linear and spot (`subscribe_acks_*_2026-08-09.jsonl`), a
/// refusal (nautilus_trader `ws_subscription_failure.json`), and a pong:
///
/// ```json
/// {"success":true,"ret_msg":"","conn_id":"d8bu1olkndm7crnfs1e0-j6akw","req_id":"","op":"subscribe"}
/// {"success":true,"ret_msg":"subscribe","conn_id":"d9avt8shteepr00gfc1g-4zd1x","op":"subscribe"}
/// {"success":false,"ret_msg":"Invalid topic: invalid.topic.BTCUSDT","conn_id":"cejreaspqfm9se7usbrg-2xh","op":"subscribe"}
/// {"success":true,"ret_msg":"pong","conn_id":"0970e817-426e-429a-a679-ff7f55e0b16a","op":"ping"}
/// ```
///
/// `D` is the topic's `data`: [`BookData`] for order books, `Vec<TradeWire>` for trades.
#[derive(Debug, Deserialize)]
pub struct FrameWire<'a, D> {
    #[serde(borrow, default)]
    pub topic: Option<&'a str>,
    /// `snapshot` or `delta` (trades are always `snapshot`).
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<&'a str>,
    /// When Bybit's system produced the push, ms.
    #[serde(default)]
    pub ts: Option<i64>,
    /// Matching-engine time of an order book push, ms; comparable with a trade's `T`.
    #[serde(default)]
    pub cts: Option<i64>,
    #[serde(default = "Option::default")]
    pub data: Option<D>,
    /// Present on `op` answers only.
    #[serde(borrow, default)]
    pub op: Option<Cow<'a, str>>,
    #[serde(default)]
    pub success: Option<bool>,
    #[serde(borrow, default)]
    pub ret_msg: Option<Cow<'a, str>>,
    /// Echoed by linear (empty when we sent none); spot acks leave it out.
    #[serde(borrow, default)]
    pub req_id: Option<Cow<'a, str>>,
}

/// `data` of an `orderbook.{depth}.{symbol}` push. Sizes are absolute; `"0"` deletes a level.
/// `u` is the book's update id (+1 per push; `1` after a Bybit service restart); `seq` is the
/// matching engine's cross sequence, increasing but not contiguous.
///
/// Levels are read straight into typed [`Level`]s (no intermediate list of text pairs): this
/// is the hot path, and the saved pass and allocation show in the benchmark.
#[derive(Debug, Deserialize)]
pub struct BookData<'a> {
    #[serde(rename = "s", borrow)]
    pub symbol: &'a str,
    #[serde(rename = "b", default, deserialize_with = "levels")]
    pub bids: Vec<Level>,
    #[serde(rename = "a", default, deserialize_with = "levels")]
    pub asks: Vec<Level>,
    pub u: u64,
    #[serde(default)]
    pub seq: Option<u64>,
}

/// `[["price","size"], ...]` -> validated levels; a bad number fails the frame.
fn levels<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Level>, D::Error> {
    struct Levels;
    impl<'de> Visitor<'de> for Levels {
        type Value = Vec<Level>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of [price, size] text pairs")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Level>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(8));
            while let Some([price, size]) = seq.next_element::<[&'de str; 2]>()? {
                let price = Decimal::parse(price).map_err(de::Error::custom)?;
                let size = Decimal::parse(size).map_err(de::Error::custom)?;
                out.push(Level { price, size });
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Levels)
}

/// One trade of a `publicTrade.{symbol}` push, whose `data` is an array (linear
/// `public_trade_linear_2026-08-09.jsonl`; spot has no `L` and a numeric-string `i`):
///
/// ```json
/// {"topic":"publicTrade.ETHUSDT","type":"snapshot","ts":1786310820347,"data":[{"T":1786310820346,
///  "s":"ETHUSDT","S":"Buy","v":"0.01","p":"1922.50","L":"PlusTick",
///  "i":"19d7df56-4f10-5290-a969-d9d9f2c74cc3","BT":false,"RPI":false,"seq":430879434439}]}
/// ```
#[derive(Debug, Deserialize)]
pub struct TradeWire<'a> {
    /// Trade time, ms.
    #[serde(rename = "T")]
    pub time: i64,
    #[serde(rename = "s", borrow)]
    pub symbol: &'a str,
    /// Taker side: `Buy` or `Sell`.
    #[serde(rename = "S", borrow)]
    pub side: &'a str,
    #[serde(rename = "v", borrow)]
    pub size: &'a str,
    #[serde(rename = "p", borrow)]
    pub price: &'a str,
    /// Trade id: a UUID on linear, a numeric string on spot.
    #[serde(rename = "i", borrow)]
    pub id: Cow<'a, str>,
}

/// `GET /v5/market/instruments-info?category=linear&limit=1000` (only what symbol resolution
/// needs; the instrument schema grows over time, unknown fields are ignored on purpose):
///
/// ```json
/// {"retCode":0,"retMsg":"OK","result":{"category":"linear","list":[{"symbol":"0GUSDT",
///  "contractType":"LinearPerpetual","status":"Trading","baseCoin":"0G",...}],
///  "nextPageCursor":""},"retExtInfo":{},"time":1786310817197}
/// ```
///
/// Spot answers the same shape without `nextPageCursor` (no pagination).
#[derive(Debug, Deserialize)]
pub struct InstrumentsInfoWire {
    #[serde(rename = "retCode")]
    pub ret_code: i64,
    #[serde(rename = "retMsg", default)]
    pub ret_msg: String,
    #[serde(default)]
    pub result: Option<InstrumentsResultWire>,
}

#[derive(Debug, Deserialize)]
pub struct InstrumentsResultWire {
    #[serde(default)]
    pub list: Vec<InstrumentWire>,
    #[serde(rename = "nextPageCursor", default)]
    pub next_page_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct InstrumentWire {
    pub symbol: String,
    /// `PreLaunch`, `Trading`, `Settling`, `Delivering`, `Closed`.
    pub status: String,
}
