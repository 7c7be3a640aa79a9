//! `DepthParser`: one websocket frame -> [`DepthFrame`]. Pure and per frame, so it is what the
//! benchmark measures together with the sync step and the line-protocol encoding.

use ds_api::scan::{Decline, Scan, Scanned};
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
        if let Ok(update) = scan_layout(frame).or_else(|_| scan_frame(frame)) {
            return Ok(DepthFrame::Update(update));
        }
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

/// The fastest path: a `depthUpdate` in the one layout Binance writes (keys `e E s U u b a` in
/// that order, no whitespace), combined or raw, read as fixed texts and values with no key
/// lookup. The keys and scalars cost a fifth of the service path when read member by member;
/// here each separator-and-key run is one compare. Any other layout declines at the first
/// difference, and [`scan_frame`] reads the frame member by member.
fn scan_layout(frame: &[u8]) -> Scanned<DepthUpdate<'_>> {
    let mut s = Scan::from_bytes(frame);
    let combined = s.try_literal(br#"{"stream":"#);
    if combined {
        // Checked though unused, as in `scan_frame`.
        s.str()?;
        s.literal(br#","data":{"e":"depthUpdate","E":"#)?;
    } else {
        s.literal(br#"{"e":"depthUpdate","E":"#)?;
    }
    let event_time_ms = Some(s.i64()?);
    s.literal(br#","s":"#)?;
    let symbol = s.str()?;
    s.literal(br#","U":"#)?;
    let first_update_id = s.u64()?;
    s.literal(br#","u":"#)?;
    let final_update_id = s.u64()?;
    s.literal(br#","b":"#)?;
    let bids = s.levels_exact_to_end()?;
    s.literal(br#","a":"#)?;
    let asks = s.levels_exact_to_end()?;
    s.literal(if combined { b"}}" } else { b"}" })?;
    s.end()?;
    Ok(DepthUpdate { symbol, event_time_ms, first_update_id, final_update_id, bids, asks })
}

/// The fast path ([`ds_api::scan`]): a `depthUpdate` exactly as Binance writes it, combined
/// (`{"stream":..,"data":{..}}`) or raw, keys `e E s U u b a` each at most once, in any order.
/// Anything else declines, and [`DepthParser::parse`] reads the frame with serde instead,
/// which also gives the error for a bad one.
fn scan_frame(frame: &[u8]) -> Scanned<DepthUpdate<'_>> {
    let mut s = Scan::from_bytes(frame);
    let update = if s.peek_is(br#"{"stream""#) {
        s.byte(b'{')?;
        s.key()?;
        // Checked though unused: serde refuses a frame that is not UTF-8 anywhere, so the fast
        // path must too.
        s.str()?;
        s.byte(b',')?;
        if s.key()? != b"data" {
            return Err(Decline);
        }
        let update = scan_event(&mut s)?;
        s.byte(b'}')?;
        update
    } else {
        scan_event(&mut s)?
    };
    s.end()?;
    Ok(update)
}

fn scan_event<'a>(s: &mut Scan<'a>) -> Scanned<DepthUpdate<'a>> {
    let (mut depth_update, mut symbol, mut first, mut last) = (false, None, None, None);
    let mut u = DepthUpdate { symbol: "", event_time_ms: None, first_update_id: 0, final_update_id: 0, bids: Vec::new(), asks: Vec::new() };
    s.object(|s, key| {
        Ok(match key {
            b"e" => {
                // Any other event (`serverShutdown`) is serde's to read.
                if !s.is_str(b"depthUpdate") {
                    return Err(Decline);
                }
                depth_update = true;
                0
            }
            b"E" => {
                u.event_time_ms = Some(s.i64()?);
                1
            }
            b"s" => {
                symbol = Some(s.str()?);
                2
            }
            b"U" => {
                first = Some(s.u64()?);
                3
            }
            b"u" => {
                last = Some(s.u64()?);
                4
            }
            b"b" => {
                u.bids = s.levels_exact_to_end()?;
                5
            }
            b"a" => {
                u.asks = s.levels_exact_to_end()?;
                6
            }
            _ => return Err(Decline),
        })
    })?;
    match (depth_update, symbol, first, last) {
        (true, Some(symbol), Some(first), Some(last)) => {
            u.symbol = symbol;
            u.first_update_id = first;
            u.final_update_id = last;
            Ok(u)
        }
        _ => Err(Decline),
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

    /// The serde reading of a frame, bypassing the fast path.
    fn serde_path(text: &str) -> Result<DepthFrame<'_>, ParseError> {
        let event: EventWire<'_> = if text.starts_with(r#"{"stream""#) { serde_json::from_str::<CombinedFrame<'_>>(text)?.data } else { serde_json::from_str(text)? };
        match event.event {
            "depthUpdate" => Ok(DepthFrame::Update(DepthUpdate {
                symbol: event.symbol.ok_or(ParseError::Other("s".into()))?,
                event_time_ms: event.event_time,
                first_update_id: event.first_update_id.ok_or(ParseError::Other("U".into()))?,
                final_update_id: event.final_update_id.ok_or(ParseError::Other("u".into()))?,
                bids: event.bids,
                asks: event.asks,
            })),
            _ => Err(ParseError::Other("not an update".into())),
        }
    }

    /// The fast path takes every recorded frame, and wherever it takes a frame (recorded or
    /// corrupted) it reads exactly what serde reads; where serde refuses, it declines.
    #[test]
    fn fast_path_agrees_with_serde_on_recorded_and_corrupted_frames() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/binance");
        let mut frames = Vec::new();
        for name in ["depth_update_combined_2021-04-04.jsonl", "depth_update_combined_2021-10-11.jsonl"] {
            let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("needs ../shared/fixtures ({}): {e}", dir.display()));
            frames.extend(text.lines().filter(|l| l.contains("depthUpdate")).map(String::from));
        }
        assert!(frames.len() > 2000, "{} frames", frames.len());
        // Both fast paths: the layout one and the member-by-member one it falls back to.
        type FastPath = fn(&[u8]) -> Scanned<DepthUpdate<'_>>;
        let paths: [(&str, FastPath); 2] = [("scan_layout", scan_layout), ("scan_frame", scan_frame)];
        for (name, path) in paths {
            for f in &frames {
                let fast = path(f.as_bytes()).unwrap_or_else(|_| panic!("{name} declined a recorded frame: {f}"));
                assert_eq!(Some(DepthFrame::Update(fast)), serde_path(f).ok(), "{name}: {f}");
            }
            // A byte that is not UTF-8, in each string of a frame: declined, and refused by serde.
            for at in [12, 40, 57, 60, 100] {
                let mut bad = frames[0].clone().into_bytes();
                bad[at] = 0xFF;
                assert_eq!(path(&bad).err(), Some(Decline), "{name} at {at}");
                assert!(DepthParser.parse(&bad).is_err(), "at {at}");
            }
            // Corrupt: every cut, and each byte replaced by characters that matter to JSON.
            let (mut taken, mut declined) = (0, 0);
            for f in frames.iter().take(40) {
                let mut variants = ds_api::scan::corrupted_copies(f);
                variants.push(f.replace(r#""E":"#, r#""s":"X","E":"#));
                for v in &variants {
                    match path(v.as_bytes()) {
                        Ok(fast) => {
                            taken += 1;
                            assert_eq!(Some(DepthFrame::Update(fast)), serde_path(v).ok(), "{name} read {v}");
                        }
                        Err(Decline) => declined += 1,
                    }
                }
            }
            assert!(taken > 1000 && declined > 1000, "{name}: taken {taken}, declined {declined}");
        }
    }

    /// The layout path takes Binance's own layout, raw or combined, and nothing else: another
    /// key order or whitespace declines there, and the member-by-member path reads it the same.
    #[test]
    fn only_the_exchange_layout_takes_the_layout_path() {
        let combined = r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1617566591307,"s":"BTCUSDT","U":9893032989,"u":9893032991,"b":[["55000.00000000","135.66466600"]],"a":[["58042.29000000","0.09700000"]]}}"#;
        let raw = r#"{"e":"depthUpdate","E":1617566591307,"s":"BTCUSDT","U":9893032989,"u":9893032991,"b":[["55000.00000000","135.66466600"]],"a":[["58042.29000000","0.09700000"]]}"#;
        for f in [combined, raw] {
            let u = scan_layout(f.as_bytes()).unwrap_or_else(|_| panic!("declined {f}"));
            assert_eq!((u.symbol, u.first_update_id, u.final_update_id, u.bids.len(), u.asks.len()), ("BTCUSDT", 9893032989, 9893032991, 1, 1));
            assert_eq!(u.event_time_ms, Some(1617566591307));
            assert_eq!(scan_frame(f.as_bytes()), Ok(u));
        }
        let other_layouts = [
            raw.replace(r#""U":9893032989,"u":9893032991"#, r#""u":9893032991,"U":9893032989"#),
            raw.replace(r#","s":"#, r#", "s":"#),
            combined.replace(r#"}}"#, r#"} }"#),
            // A raw frame closed twice, or a combined one closed once: not JSON of that shape.
            format!("{raw}}}"),
            combined[..combined.len() - 1].to_string(),
        ];
        for f in &other_layouts {
            assert_eq!(scan_layout(f.as_bytes()).err(), Some(Decline), "{f}");
            assert_eq!(DepthParser.parse(f.as_bytes()).ok(), serde_path(f).ok(), "{f}");
        }
        assert!(matches!(DepthParser.parse(other_layouts[0].as_bytes()), Ok(DepthFrame::Update(u)) if u.first_update_id == 9893032989));
    }

    #[test]
    fn server_shutdown_is_recognised() {
        assert_eq!(DepthParser.parse(br#"{"e":"serverShutdown","E":1}"#).unwrap(), DepthFrame::ServerShutdown);
    }
}
