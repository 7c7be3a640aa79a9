//! Binance spot wire types, each beside the JSON it parses.

use ds_api::Level;
use serde::Deserialize;

/// A combined-stream frame (`/stream?streams=...`):
///
/// ```json
/// {"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1617566591307,"s":"BTCUSDT",
///  "U":9893032989,"u":9893032991,"b":[["55000.00000000","135.66466600"]],
///  "a":[["58042.29000000","0.09700000"],["58055.02000000","0.75000000"]]}}
/// ```
///
/// A raw stream (`/ws/<stream>`) sends `data` alone; both are accepted.
#[derive(Debug, Deserialize)]
pub struct CombinedFrame<'a> {
    #[serde(borrow)]
    pub data: EventWire<'a>,
}

/// Any market event. Only `depthUpdate` carries book data; `serverShutdown` asks us to
/// reconnect; anything else is unexpected on a depth stream.
#[derive(Debug, Deserialize)]
pub struct EventWire<'a> {
    /// Event type.
    #[serde(rename = "e", borrow)]
    pub event: &'a str,
    /// Event time, ms.
    #[serde(rename = "E", default)]
    pub event_time: Option<i64>,
    #[serde(rename = "s", default, borrow)]
    pub symbol: Option<&'a str>,
    /// First update id in event.
    #[serde(rename = "U", default)]
    pub first_update_id: Option<u64>,
    /// Final update id in event.
    #[serde(rename = "u", default)]
    pub final_update_id: Option<u64>,
    /// Bids: `[price, absolute quantity]`, quantity "0.00000000" removes the level. Parsed and
    /// validated straight into typed levels.
    #[serde(rename = "b", default, deserialize_with = "ds_api::packet::levels_exact")]
    pub bids: Vec<Level>,
    #[serde(rename = "a", default, deserialize_with = "ds_api::packet::levels_exact")]
    pub asks: Vec<Level>,
}

/// `GET /api/v3/depth?symbol=BTCUSDT&limit=1000`:
///
/// ```json
/// {"lastUpdateId":9893033066,"bids":[["58001.03000000","1.60107400"],...],"asks":[...]}
/// ```
#[derive(Debug, Deserialize)]
pub struct DepthSnapshotWire {
    #[serde(rename = "lastUpdateId")]
    pub last_update_id: u64,
    #[serde(deserialize_with = "ds_api::packet::levels_exact")]
    pub bids: Vec<Level>,
    #[serde(deserialize_with = "ds_api::packet::levels_exact")]
    pub asks: Vec<Level>,
}

/// `GET /api/v3/exchangeInfo`, only what symbol resolution needs (the schema drifts; unknown
/// fields are ignored on purpose):
///
/// ```json
/// {"timezone":"UTC","symbols":[{"symbol":"ETHBTC","status":"TRADING","baseAsset":"ETH",...}]}
/// ```
#[derive(Debug, Deserialize)]
pub struct ExchangeInfoWire {
    pub symbols: Vec<SymbolWire>,
}

#[derive(Debug, Deserialize)]
pub struct SymbolWire {
    pub symbol: String,
    pub status: String,
}
