//! `DepthParser`: one websocket frame -> [`DepthFrame`]. Pure and per frame, so it is what the
//! benchmark measures together with the sync step and the line-protocol encoding.

use ds_api::traits::Parser;
use ds_api::{Level, ParseError};

use crate::wire::{CombinedFrame, DepthSnapshotWire, EventWire};

/// A parsed diff-depth event, before sequence checking.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthUpdate<'a> {
    pub symbol: &'a str,
    pub event_time_ms: Option<i64>,
    /// `U`
    pub first_update_id: u64,
    /// `u`
    pub final_update_id: u64,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

/// What a frame on a depth connection can be.
#[derive(Debug, PartialEq)]
pub enum DepthFrame<'a> {
    Update(DepthUpdate<'a>),
    /// Binance announces a server shutdown: reconnect at once.
    ServerShutdown,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct DepthParser;

impl Parser for DepthParser {
    type Output<'a> = DepthFrame<'a>;

    fn parse<'a>(&self, frame: &'a [u8]) -> Result<DepthFrame<'a>, ParseError> {
        // Combined streams wrap the event; raw streams send it bare. The wrapper starts with
        // `{"stream":`, which is cheaper to test than to parse twice.
        // One UTF-8 check up front lets serde borrow strings without checking each again.
        let text = std::str::from_utf8(frame).map_err(|e| ParseError::Other(format!("frame is not UTF-8: {e}")))?;
        let event: EventWire<'a> = if text.starts_with(r#"{"stream""#) {
            serde_json::from_str::<CombinedFrame<'a>>(text)?.data
        } else {
            serde_json::from_str(text)?
        };
        match event.event {
            "depthUpdate" => {
                let missing = |k: &str| ParseError::Other(format!("depthUpdate without `{k}`"));
                Ok(DepthFrame::Update(DepthUpdate {
                    symbol: event.symbol.ok_or_else(|| missing("s"))?,
                    event_time_ms: event.event_time,
                    first_update_id: event.first_update_id.ok_or_else(|| missing("U"))?,
                    final_update_id: event.final_update_id.ok_or_else(|| missing("u"))?,
                    bids: event.bids,
                    asks: event.asks,
                }))
            }
            "serverShutdown" => Ok(DepthFrame::ServerShutdown),
            other => Err(ParseError::UnknownMessage(format!("event type {other:?}"))),
        }
    }
}

/// A parsed REST depth snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthSnapshot {
    pub last_update_id: u64,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

pub fn parse_snapshot(body: &str) -> Result<DepthSnapshot, ParseError> {
    let w: DepthSnapshotWire = serde_json::from_str(body)?;
    Ok(DepthSnapshot { last_update_id: w.last_update_id, bids: w.bids, asks: w.asks })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        input: &'static str,
        expect: Result<(&'static str, u64, u64, usize, usize), &'static str>,
    }

    #[test]
    fn frames_table() {
        let cases = [
            // 0: real combined frame (depth_update_combined_2021-04-04.jsonl line 2)
            Case {
                input: r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1617566591307,"s":"BTCUSDT","U":9893032989,"u":9893032991,"b":[["55000.00000000","135.66466600"]],"a":[["58042.29000000","0.09700000"],["58055.02000000","0.75000000"]]}}"#,
                expect: Ok(("BTCUSDT", 9893032989, 9893032991, 1, 2)),
            },
            // 1: raw stream, empty sides
            Case { input: r#"{"e":"depthUpdate","E":1,"s":"ETHBTC","U":5,"u":5,"b":[],"a":[]}"#, expect: Ok(("ETHBTC", 5, 5, 0, 0)) },
            // 2: not JSON
            Case { input: "{\"stream\":", expect: Err("invalid JSON") },
            // 3: unknown event type
            Case { input: r#"{"e":"kline","E":1}"#, expect: Err("unknown message type") },
            // 4: missing final update id
            Case { input: r#"{"e":"depthUpdate","E":1,"s":"X","U":1,"b":[],"a":[]}"#, expect: Err("without `u`") },
            // 5: a price that is not a number
            Case { input: r#"{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[["NaN","1"]],"a":[]}"#, expect: Err("invalid number \"NaN\"") },
        ];
        for (i, c) in cases.iter().enumerate() {
            let got = DepthParser.parse(c.input.as_bytes());
            match (&c.expect, got) {
                (Ok((s, first, last, nb, na)), Ok(DepthFrame::Update(u))) => {
                    assert_eq!((u.symbol, u.first_update_id, u.final_update_id, u.bids.len(), u.asks.len()), (*s, *first, *last, *nb, *na), "case {i}");
                }
                (Err(want), Err(e)) => assert!(e.to_string().contains(want), "case {i}: {e}"),
                (want, got) => panic!("case {i}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn server_shutdown_is_recognised() {
        assert_eq!(DepthParser.parse(br#"{"e":"serverShutdown","E":1}"#).unwrap(), DepthFrame::ServerShutdown);
    }
}
