//! `OrderbookParser` and `TradeParser`: one websocket frame -> a typed push or an `op` answer.
//! Pure and per frame, so the benchmark measures them together with the sync step and the
//! line-protocol encoding.

use ds_api::scan::{Decline, Scan, Scanned};
use ds_api::traits::Parser;
use ds_api::{Decimal, Level, ParseError, Side};

use crate::wire::{BookData, FrameWire, TradeWire};

/// What an order book push is. A snapshot replaces the book; a delta changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    Snapshot,
    Delta,
}

/// A parsed `orderbook.{depth}.{symbol}` push, before sequence checking.
#[derive(Debug, Clone, PartialEq)]
pub struct BookUpdate<'a> {
    pub topic: &'a str,
    /// `data.s`.
    pub symbol: &'a str,
    pub kind: UpdateKind,
    /// `data.u`.
    pub update_id: u64,
    /// `data.seq`, the cross sequence.
    pub cross_seq: Option<u64>,
    /// `cts` (matching-engine time) when present, else `ts`: the instant the book state
    /// describes, comparable with trade times.
    pub event_time_ms: Option<i64>,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

/// One public trade, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedTrade<'a> {
    pub symbol: &'a str,
    pub trade_id: std::borrow::Cow<'a, str>,
    pub price: Decimal,
    pub size: Decimal,
    pub taker_side: Side,
    /// `T`, ms.
    pub time_ms: i64,
}

/// What an `op` answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    Subscribe,
    Unsubscribe,
    /// The answer to our `{"op":"ping"}`: `op` is `ping` (public shape) or `pong` (the
    /// private shape, which some public sockets also send).
    Pong,
    Other(String),
}

/// An answer to one of our requests. Owned: these are rare, and the session keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpReply {
    pub op: OpKind,
    /// Absent means success (pongs in the private shape carry no `success`).
    pub success: bool,
    pub ret_msg: String,
    /// Non-empty `req_id` when Bybit echoed it (linear does, spot acks do not).
    pub req_id: Option<String>,
}

/// A frame on an order book connection.
#[derive(Debug, PartialEq)]
pub enum BookFrame<'a> {
    Update(BookUpdate<'a>),
    Reply(OpReply),
}

/// A frame on a trade connection.
#[derive(Debug, PartialEq)]
pub enum TradeFrame<'a> {
    Trades { topic: &'a str, trades: Vec<ParsedTrade<'a>> },
    Reply(OpReply),
}

/// One UTF-8 check of the whole frame up front, so serde borrows every string without checking
/// each again (`from_slice` validates string by string: 13% of the hot path in `perf`).
fn utf8(frame: &[u8]) -> Result<&str, ParseError> {
    std::str::from_utf8(frame).map_err(|e| ParseError::Other(format!("frame is not UTF-8: {e}")))
}

#[derive(Debug, Default, Clone, Copy)]
pub struct OrderbookParser;

impl Parser for OrderbookParser {
    type Output<'a> = BookFrame<'a>;

    fn parse<'a>(&self, frame: &'a [u8]) -> Result<BookFrame<'a>, ParseError> {
        if let Ok(update) = scan_book_layout(frame).or_else(|_| scan_book(frame)) {
            return Ok(BookFrame::Update(update));
        }
        let text = utf8(frame)?;
        let w: FrameWire<'a, BookData<'a>> = serde_json::from_str(text)?;
        if let Some(reply) = op_reply(&w) {
            return Ok(BookFrame::Reply(reply));
        }
        let topic = w.topic.ok_or_else(|| ParseError::UnknownMessage("neither `topic` nor `op`".into()))?;
        let data = w.data.ok_or_else(|| ParseError::Other(format!("{topic} push without `data`")))?;
        let kind = match w.kind {
            Some("snapshot") => UpdateKind::Snapshot,
            Some("delta") => UpdateKind::Delta,
            other => return Err(ParseError::UnknownMessage(format!("{topic} push of type {other:?}"))),
        };
        Ok(BookFrame::Update(BookUpdate {
            topic,
            symbol: data.symbol,
            kind,
            update_id: data.u,
            cross_seq: data.seq,
            event_time_ms: w.cts.or(w.ts),
            bids: data.bids,
            asks: data.asks,
        }))
    }
}

/// The fastest path: an order book push in one of the two layouts Bybit writes (`topic ts type
/// data cts` on spot, `topic type ts data cts` on linear; `data` as `s b a u seq`), with no
/// whitespace, read as fixed texts and values with no key lookup: each separator-and-key run
/// is one compare instead of a key read, a match and a duplicate check. Any other layout
/// declines at its first difference, and [`scan_book`] reads the frame member by member.
fn scan_book_layout(frame: &[u8]) -> Scanned<BookUpdate<'_>> {
    let mut s = Scan::from_bytes(frame);
    s.literal(br#"{"topic":"#)?;
    let topic = s.str()?;
    let read_type = |s: &mut Scan<'_>| {
        s.literal(br#","type":"#)?;
        if s.is_str(b"delta") {
            Ok(UpdateKind::Delta)
        } else if s.is_str(b"snapshot") {
            Ok(UpdateKind::Snapshot)
        } else {
            Err(Decline)
        }
    };
    // Spot writes `ts` first, linear `type`.
    let kind = if s.try_literal(br#","ts":"#) {
        s.i64()?;
        read_type(&mut s)?
    } else {
        let kind = read_type(&mut s)?;
        s.literal(br#","ts":"#)?;
        s.i64()?;
        kind
    };
    s.literal(br#","data":{"s":"#)?;
    let symbol = s.str()?;
    s.literal(br#","b":"#)?;
    let bids = s.levels_exact::<false>()?;
    s.literal(br#","a":"#)?;
    let asks = s.levels_exact::<false>()?;
    s.literal(br#","u":"#)?;
    let update_id = s.u64()?;
    s.literal(br#","seq":"#)?;
    let cross_seq = Some(s.u64()?);
    s.literal(br#"},"cts":"#)?;
    // `cts` is present, so it is the event time (`ts` only stands in for a missing one).
    let event_time_ms = Some(s.i64()?);
    s.literal(b"}")?;
    s.end()?;
    Ok(BookUpdate { topic, symbol, kind, update_id, cross_seq, event_time_ms, bids, asks })
}

/// The fast path ([`ds_api::scan`]): an order book push exactly as Bybit writes it, top-level
/// keys `topic type ts data cts` and `data` keys `s b a u seq`, each at most once, in any
/// order. Anything else (an `op` answer, a new key, an unknown `type`) declines, and
/// [`OrderbookParser::parse`] reads the frame with serde, which also gives the error.
fn scan_book(frame: &[u8]) -> Scanned<BookUpdate<'_>> {
    let mut s = Scan::from_bytes(frame);
    let (mut topic, mut kind, mut ts, mut cts) = (None, None, None, None);
    let mut data = None;
    s.object(|s, key| {
        Ok(match key {
            b"topic" => {
                topic = Some(s.str()?);
                0
            }
            b"type" => {
                kind = Some(if s.is_str(b"delta") {
                    UpdateKind::Delta
                } else if s.is_str(b"snapshot") {
                    UpdateKind::Snapshot
                } else {
                    return Err(Decline);
                });
                1
            }
            b"ts" => {
                ts = Some(s.i64()?);
                2
            }
            b"cts" => {
                cts = Some(s.i64()?);
                3
            }
            b"data" => {
                data = Some(scan_book_data(s)?);
                4
            }
            _ => return Err(Decline),
        })
    })?;
    s.end()?;
    let (Some(topic), Some(kind), Some((symbol, update_id, cross_seq, bids, asks))) = (topic, kind, data) else {
        return Err(Decline);
    };
    Ok(BookUpdate { topic, symbol, kind, update_id, cross_seq, event_time_ms: cts.or(ts), bids, asks })
}

type ScannedData<'a> = (&'a str, u64, Option<u64>, Vec<Level>, Vec<Level>);

fn scan_book_data<'a>(s: &mut Scan<'a>) -> Scanned<ScannedData<'a>> {
    let (mut symbol, mut u, mut seq) = (None, None, None);
    let (mut bids, mut asks) = (Vec::new(), Vec::new());
    s.object(|s, key| {
        Ok(match key {
            b"s" => {
                symbol = Some(s.str()?);
                0
            }
            b"b" => {
                bids = s.levels_exact::<false>()?;
                1
            }
            b"a" => {
                asks = s.levels_exact::<false>()?;
                2
            }
            b"u" => {
                u = Some(s.u64()?);
                3
            }
            b"seq" => {
                seq = Some(s.u64()?);
                4
            }
            _ => return Err(Decline),
        })
    })?;
    match (symbol, u) {
        (Some(symbol), Some(u)) => Ok((symbol, u, seq, bids, asks)),
        _ => Err(Decline),
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct TradeParser;

impl Parser for TradeParser {
    type Output<'a> = TradeFrame<'a>;

    fn parse<'a>(&self, frame: &'a [u8]) -> Result<TradeFrame<'a>, ParseError> {
        if let Ok((topic, trades)) = scan_trades(frame) {
            return Ok(TradeFrame::Trades { topic, trades });
        }
        let w: FrameWire<'a, Vec<TradeWire<'a>>> = serde_json::from_str(utf8(frame)?)?;
        if let Some(reply) = op_reply(&w) {
            return Ok(TradeFrame::Reply(reply));
        }
        let topic = w.topic.ok_or_else(|| ParseError::UnknownMessage("neither `topic` nor `op`".into()))?;
        let data = w.data.ok_or_else(|| ParseError::Other(format!("{topic} push without `data`")))?;
        let trades = data
            .into_iter()
            .map(|t| {
                Ok(ParsedTrade {
                    symbol: t.symbol,
                    trade_id: t.id,
                    price: Decimal::parse(t.price)?,
                    size: Decimal::parse(t.size)?,
                    taker_side: match t.side {
                        "Buy" => Side::Bid,
                        "Sell" => Side::Ask,
                        other => return Err(ParseError::Other(format!("trade side {other:?} is neither Buy nor Sell"))),
                    },
                    time_ms: t.time,
                })
            })
            .collect::<Result<Vec<_>, ParseError>>()?;
        Ok(TradeFrame::Trades { topic, trades })
    }
}

/// The fast path ([`ds_api::scan`]) for a `publicTrade` push: top-level keys `topic type ts
/// cts data`, each trade's keys `T s S v p i` at most once, and any other key with a plain
/// value (`L`, `BT`, `RPI`, `seq` today), which serde ignores too. An `op` answer, a side
/// other than `Buy`/`Sell`, a nested unknown value or anything else unexpected declines, and
/// [`TradeParser::parse`] reads the frame with serde, which also gives the error.
fn scan_trades(frame: &[u8]) -> Scanned<(&str, Vec<ParsedTrade<'_>>)> {
    let mut s = Scan::from_bytes(frame);
    let (mut topic, mut data) = (None, None);
    s.object(|s, key| {
        Ok(match key {
            b"topic" => {
                topic = Some(s.str()?);
                0
            }
            b"type" => {
                s.str()?;
                1
            }
            b"ts" => {
                s.i64()?;
                2
            }
            b"cts" => {
                s.i64()?;
                3
            }
            b"data" => {
                data = Some(scan_trade_list(s)?);
                4
            }
            // An answer to an op: serde's reading tells it apart.
            b"op" | b"success" | b"ret_msg" | b"req_id" => return Err(Decline),
            other => s.skip_ignored(other)?,
        })
    })?;
    s.end()?;
    match (topic, data) {
        (Some(topic), Some(trades)) => Ok((topic, trades)),
        _ => Err(Decline),
    }
}

fn scan_trade_list<'a>(s: &mut Scan<'a>) -> Scanned<Vec<ParsedTrade<'a>>> {
    let mut trades = Vec::new();
    s.byte(b'[')?;
    if s.peek_is(b"]") {
        s.byte(b']')?;
        return Ok(trades);
    }
    loop {
        trades.push(scan_trade(s)?);
        if !s.more(b']')? {
            return Ok(trades);
        }
    }
}

fn scan_trade<'a>(s: &mut Scan<'a>) -> Scanned<ParsedTrade<'a>> {
    let (mut time, mut symbol, mut side, mut size, mut price, mut id) = (None, None, None, None, None, None);
    s.object(|s, key| {
        Ok(match key {
            b"T" => {
                time = Some(s.i64()?);
                0
            }
            b"s" => {
                symbol = Some(s.str()?);
                1
            }
            b"S" => {
                side = Some(if s.is_str(b"Buy") {
                    Side::Bid
                } else if s.is_str(b"Sell") {
                    Side::Ask
                } else {
                    return Err(Decline);
                });
                2
            }
            b"v" => {
                size = Some(s.decimal_str()?);
                3
            }
            b"p" => {
                price = Some(s.decimal_str()?);
                4
            }
            b"i" => {
                id = Some(s.str()?);
                5
            }
            other => s.skip_ignored(other)?,
        })
    })?;
    match (time, symbol, side, size, price, id) {
        (Some(time_ms), Some(symbol), Some(taker_side), Some(size), Some(price), Some(id)) => {
            Ok(ParsedTrade { symbol, trade_id: std::borrow::Cow::Borrowed(id), price, size, taker_side, time_ms })
        }
        _ => Err(Decline),
    }
}

fn op_reply<D>(w: &FrameWire<'_, D>) -> Option<OpReply> {
    let op = w.op.as_deref()?;
    let ret_msg = w.ret_msg.as_deref().unwrap_or("");
    let kind = match op {
        "subscribe" => OpKind::Subscribe,
        "unsubscribe" => OpKind::Unsubscribe,
        "ping" | "pong" => OpKind::Pong,
        other => OpKind::Other(other.to_string()),
    };
    Some(OpReply {
        op: kind,
        success: w.success.unwrap_or(true),
        ret_msg: ret_msg.to_string(),
        req_id: w.req_id.as_deref().filter(|r| !r.is_empty()).map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The serde reading of an order book push, bypassing the fast path.
    fn serde_book(text: &str) -> Option<BookUpdate<'_>> {
        let w: FrameWire<'_, BookData<'_>> = serde_json::from_str(text).ok()?;
        if w.op.is_some() {
            return None;
        }
        let data = w.data?;
        Some(BookUpdate {
            topic: w.topic?,
            symbol: data.symbol,
            kind: match w.kind? {
                "snapshot" => UpdateKind::Snapshot,
                "delta" => UpdateKind::Delta,
                _ => return None,
            },
            update_id: data.u,
            cross_seq: data.seq,
            event_time_ms: w.cts.or(w.ts),
            bids: data.bids,
            asks: data.asks,
        })
    }

    /// The serde reading of a trade push, bypassing the fast path.
    fn serde_trades(text: &str) -> Option<(&str, Vec<ParsedTrade<'_>>)> {
        let w: FrameWire<'_, Vec<TradeWire<'_>>> = serde_json::from_str(text).ok()?;
        if w.op.is_some() {
            return None;
        }
        let trades = w
            .data?
            .into_iter()
            .map(|t| {
                Some(ParsedTrade {
                    symbol: t.symbol,
                    trade_id: t.id,
                    price: Decimal::parse(t.price).ok()?,
                    size: Decimal::parse(t.size).ok()?,
                    taker_side: match t.side {
                        "Buy" => Side::Bid,
                        "Sell" => Side::Ask,
                        _ => return None,
                    },
                    time_ms: t.time,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some((w.topic?, trades))
    }

    /// The trade fast path takes every recorded trade push and reads what serde reads, and on
    /// every cut and single-character corruption of them (and on keys it ignores, repeated
    /// or nested) it reads what serde reads or declines.
    #[test]
    fn trade_fast_path_agrees_with_serde_on_recorded_and_corrupted_frames() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/bybit");
        let mut frames = Vec::new();
        for name in ["public_trade_linear_2026-08-09.jsonl", "public_trade_spot_2026-08-09.jsonl"] {
            let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("needs ../shared/fixtures ({}): {e}", dir.display()));
            frames.extend(text.lines().filter(|l| l.contains("\"topic\"")).map(String::from));
        }
        assert!(frames.len() >= 100, "{} frames", frames.len());
        for f in &frames {
            let fast = scan_trades(f.as_bytes()).unwrap_or_else(|_| panic!("fast path declined a recorded frame: {}", &f[..f.len().min(300)]));
            assert_eq!(Some(fast), serde_trades(f));
        }
        let (mut taken, mut declined) = (0, 0);
        for f in frames.iter().filter(|f| f.len() < 700).take(12) {
            let mut variants = ds_api::scan::corrupted_copies(f);
            variants.push(f.replace(r#""ts":"#, r#""op":"subscribe","ts":"#));
            variants.push(f.replace(r#""T":"#, r#""T":1,"T":"#));
            variants.push(f.replace(r#""BT":"#, r#""BT":true,"BT":"#));
            variants.push(f.replace(r#""BT":false"#, r#""BT":{"x":[1]}"#));
            variants.push(f.replace(r#""BT":false"#, r#""BT":"a\u0062""#));
            variants.push(f.replace(r#""BT":false"#, r#""BT":-1.5e3,"extra":null"#));
            variants.push(f.replace(r#""S":"Buy""#, r#""S":"buy""#));
            for v in &variants {
                match scan_trades(v.as_bytes()) {
                    Ok(fast) => {
                        taken += 1;
                        assert_eq!(Some(fast), serde_trades(v), "fast path read {v}");
                    }
                    Err(Decline) => declined += 1,
                }
            }
            // Non-UTF-8 bytes in an ignored key or value: serde refuses the frame, so the fast
            // path must decline it.
            for (from, to) in [(&b"\"BT\""[..], &b"\"B\xff\""[..]), (b"\"MinusTick\"", b"\"Minus\xffick\""), (b"\"PlusTick\"", b"\"Plus\xffick\"")] {
                let bytes = f.as_bytes();
                if let Some(at) = bytes.windows(from.len()).position(|w| w == from) {
                    let mut bad = bytes.to_vec();
                    bad.splice(at..at + from.len(), to.iter().copied());
                    assert_eq!(scan_trades(&bad).map(|_| ()), Err(Decline), "took a frame that is not UTF-8");
                }
            }
        }
        assert!(taken > 1000 && declined > 1000, "taken {taken}, declined {declined}");
    }

    /// The fast path takes every recorded order book push, and wherever it takes a frame
    /// (recorded or corrupted) it reads exactly what serde reads; where serde refuses, it
    /// declines.
    #[test]
    fn fast_path_agrees_with_serde_on_recorded_and_corrupted_frames() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/bybit");
        let mut frames = Vec::new();
        for name in ["orderbook_200_linear_2026-08-09.jsonl", "orderbook_200_spot_2026-08-09.jsonl", "orderbook_1_linear_2025-06-13.jsonl", "orderbook_1_spot_2025-06-13.jsonl"] {
            let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("needs ../shared/fixtures ({}): {e}", dir.display()));
            frames.extend(text.lines().filter(|l| l.contains("\"topic\"")).map(String::from));
        }
        assert!(frames.len() > 2000, "{} frames", frames.len());
        // Both fast paths: the layout one and the member-by-member one it falls back to.
        type FastPath = fn(&[u8]) -> Scanned<BookUpdate<'_>>;
        let paths: [(&str, FastPath); 2] = [("scan_book_layout", scan_book_layout), ("scan_book", scan_book)];
        for (name, path) in paths {
            for f in &frames {
                let fast = path(f.as_bytes()).unwrap_or_else(|_| panic!("{name} declined a recorded frame: {}", &f[..f.len().min(300)]));
                assert_eq!(Some(fast), serde_book(f), "{name}");
            }
            let (mut taken, mut declined) = (0, 0);
            // The shorter pushes (deltas), so that every cut and substitution is tried.
            for f in frames.iter().filter(|f| f.len() < 600).take(30) {
                let mut variants = ds_api::scan::corrupted_copies(f);
                variants.push(f.replace(r#""cts":"#, r#""op":"subscribe","cts":"#));
                variants.push(f.replace(r#""u":"#, r#""u":1,"u":"#));
                for v in &variants {
                    match path(v.as_bytes()) {
                        Ok(fast) => {
                            taken += 1;
                            assert_eq!(Some(fast), serde_book(v), "{name} read {v}");
                        }
                        Err(Decline) => declined += 1,
                    }
                }
            }
            assert!(taken > 1000 && declined > 1000, "{name}: taken {taken}, declined {declined}");
        }
    }

    /// The layout path takes both of Bybit's layouts and nothing else: another key order,
    /// whitespace or a missing `cts` declines there, and the member-by-member path reads it.
    #[test]
    fn only_the_exchange_layouts_take_the_layout_path() {
        let spot = r#"{"topic":"orderbook.200.BTCUSDT","ts":1786310816516,"type":"delta","data":{"s":"BTCUSDT","b":[["65140.4","0.885797"]],"a":[],"u":7461296,"seq":112488544036},"cts":1786310816513}"#;
        let linear = r#"{"topic":"orderbook.200.BTCUSDT","type":"snapshot","ts":1786310816516,"data":{"s":"BTCUSDT","b":[],"a":[["65140.5","0.532"]],"u":7461296,"seq":112488544036},"cts":1786310816513}"#;
        for (f, kind) in [(spot, UpdateKind::Delta), (linear, UpdateKind::Snapshot)] {
            let u = scan_book_layout(f.as_bytes()).unwrap_or_else(|_| panic!("declined {f}"));
            assert_eq!((u.topic, u.symbol, u.kind, u.update_id, u.cross_seq, u.event_time_ms), ("orderbook.200.BTCUSDT", "BTCUSDT", kind, 7461296, Some(112488544036), Some(1786310816513)));
            assert_eq!(u.bids.len() + u.asks.len(), 1);
            assert_eq!(scan_book(f.as_bytes()), Ok(u));
        }
        let other_layouts = [
            spot.replace(r#","u":7461296,"seq":112488544036"#, r#","seq":112488544036,"u":7461296"#),
            spot.replace(r#","cts":1786310816513"#, ""),
            linear.replace(r#","ts":"#, r#", "ts":"#),
            spot.replace(r#""type":"delta""#, r#""type":"Delta""#),
            format!("{linear}}}"),
        ];
        for f in &other_layouts {
            assert_eq!(scan_book_layout(f.as_bytes()).err(), Some(Decline), "{f}");
            assert_eq!(OrderbookParser.parse(f.as_bytes()).ok().map(|b| format!("{b:?}")), serde_book(f).map(|u| format!("{:?}", BookFrame::Update(u))), "{f}");
        }
        // Without `cts`, `ts` is the event time.
        assert!(matches!(OrderbookParser.parse(other_layouts[1].as_bytes()), Ok(BookFrame::Update(u)) if u.event_time_ms == Some(1786310816516)));
    }

    /// (topic, kind, u, bids, asks, event time) or an error fragment.
    type BookExpect = Result<(&'static str, UpdateKind, u64, usize, usize, i64), &'static str>;

    struct Case {
        input: &'static str,
        expect: BookExpect,
    }

    #[test]
    fn book_frames_table() {
        let cases = [
            // 0: spot snapshot, `ts` before `type` (orderbook_200_spot_2026-08-09.jsonl, cut)
            Case {
                input: r#"{"topic":"orderbook.200.BTCUSDT","ts":1786310816516,"type":"snapshot","data":{"s":"BTCUSDT","b":[["65140.4","0.885797"],["65140","0.014"]],"a":[["65140.5","0.532"]],"u":7461296,"seq":112488544036},"cts":1786310816513}"#,
                expect: Ok(("orderbook.200.BTCUSDT", UpdateKind::Snapshot, 7461296, 2, 1, 1786310816513)),
            },
            // 1: linear delta, `type` before `ts`, one side empty
            Case {
                input: r#"{"topic":"orderbook.200.ETHUSDT","type":"delta","ts":1786310818200,"data":{"s":"ETHUSDT","b":[],"a":[["1922.51","0"]],"u":35124470,"seq":430879430000},"cts":1786310818198}"#,
                expect: Ok(("orderbook.200.ETHUSDT", UpdateKind::Delta, 35124470, 0, 1, 1786310818198)),
            },
            // 2: no `cts`: the push time stands in
            Case {
                input: r#"{"topic":"orderbook.1.X","type":"snapshot","ts":5,"data":{"s":"X","b":[],"a":[],"u":1}}"#,
                expect: Ok(("orderbook.1.X", UpdateKind::Snapshot, 1, 0, 0, 5)),
            },
            // 3: unknown push type
            Case { input: r#"{"topic":"orderbook.1.X","type":"partial","ts":5,"data":{"s":"X","b":[],"a":[],"u":1}}"#, expect: Err("type Some(\"partial\")") },
            // 4: missing u
            Case { input: r#"{"topic":"orderbook.1.X","type":"delta","ts":5,"data":{"s":"X","b":[],"a":[]}}"#, expect: Err("missing field `u`") },
            // 5: a size that is not a number
            Case { input: r#"{"topic":"orderbook.1.X","type":"delta","data":{"s":"X","b":[["1","inf"]],"a":[],"u":2}}"#, expect: Err("invalid number") },
            // 6: neither a push nor an answer
            Case { input: r#"{"hello":1}"#, expect: Err("neither `topic` nor `op`") },
            // 7: not JSON
            Case { input: r#"{"topic":"#, expect: Err("invalid JSON") },
        ];
        for (i, c) in cases.iter().enumerate() {
            match (&c.expect, OrderbookParser.parse(c.input.as_bytes())) {
                (Ok((topic, kind, u, nb, na, t)), Ok(BookFrame::Update(b))) => {
                    assert_eq!((b.topic, b.kind, b.update_id, b.bids.len(), b.asks.len(), b.event_time_ms), (*topic, *kind, *u, *nb, *na, Some(*t)), "case {i}")
                }
                (Err(want), Err(e)) => assert!(e.to_string().contains(want), "case {i}: {e}"),
                (want, got) => panic!("case {i}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn both_ack_shapes_a_refusal_and_both_pong_shapes() {
        let reply = |s: &str| match OrderbookParser.parse(s.as_bytes()).unwrap() {
            BookFrame::Reply(r) => r,
            other => panic!("{other:?}"),
        };
        let linear = reply(r#"{"success":true,"ret_msg":"","conn_id":"d8bu1olkndm7crnfs1e0-j6akw","req_id":"","op":"subscribe"}"#);
        assert_eq!(linear, OpReply { op: OpKind::Subscribe, success: true, ret_msg: String::new(), req_id: None });
        let spot = reply(r#"{"success":true,"ret_msg":"subscribe","conn_id":"d9avt8shteepr00gfc1g-4zd1x","op":"subscribe"}"#);
        assert_eq!((spot.op, spot.success, spot.req_id), (OpKind::Subscribe, true, None));
        let echoed = reply(r#"{"success":true,"ret_msg":"","conn_id":"c","req_id":"7","op":"unsubscribe"}"#);
        assert_eq!((echoed.op, echoed.req_id.as_deref()), (OpKind::Unsubscribe, Some("7")));
        let refused = reply(r#"{"success":false,"ret_msg":"Invalid topic: invalid.topic.BTCUSDT","conn_id":"cejreaspqfm9se7usbrg-2xh","op":"subscribe"}"#);
        assert!(!refused.success);
        assert_eq!(refused.ret_msg, "Invalid topic: invalid.topic.BTCUSDT");
        let pong = reply(r#"{"success":true,"ret_msg":"pong","conn_id":"0970e817-426e-429a-a679-ff7f55e0b16a","op":"ping"}"#);
        assert_eq!(pong.op, OpKind::Pong);
        let private_shape = reply(r#"{"req_id":"p1","op":"pong","args":["1675418560633"],"conn_id":"cfcb4ocsvfriu23r3er0-1b"}"#);
        assert_eq!((private_shape.op, private_shape.success), (OpKind::Pong, true));
        // Trade connections see the same answers.
        assert!(matches!(TradeParser.parse(br#"{"success":true,"ret_msg":"pong","conn_id":"x","op":"ping"}"#).unwrap(), TradeFrame::Reply(OpReply { op: OpKind::Pong, .. })));
    }

    #[test]
    fn trades_of_both_categories() {
        // public_trade_linear_2026-08-09.jsonl line 2 (cut to two trades sharing a millisecond)
        let linear = r#"{"topic":"publicTrade.ETHUSDT","type":"snapshot","ts":1786310820347,"data":[{"T":1786310820346,"s":"ETHUSDT","S":"Buy","v":"0.01","p":"1922.50","L":"PlusTick","i":"19d7df56-4f10-5290-a969-d9d9f2c74cc3","BT":false,"RPI":false,"seq":430879434439},{"T":1786310820346,"s":"ETHUSDT","S":"Sell","v":"1.30","p":"1922.50","L":"ZeroPlusTick","i":"4d4ad26c-901f-5146-adc0-1db29b6b9ab6","BT":false,"RPI":false,"seq":430879434439}]}"#;
        let TradeFrame::Trades { topic, trades } = TradeParser.parse(linear.as_bytes()).unwrap() else { panic!() };
        assert_eq!(topic, "publicTrade.ETHUSDT");
        assert_eq!(trades.len(), 2);
        assert_eq!((trades[0].trade_id.as_ref(), trades[0].taker_side, trades[0].time_ms), ("19d7df56-4f10-5290-a969-d9d9f2c74cc3", Side::Bid, 1786310820346));
        assert_eq!((trades[1].price.as_str(), trades[1].size.as_str(), trades[1].taker_side), ("1922.50", "1.30", Side::Ask));
        // public_trade_spot_2026-08-09.jsonl line 1: no `L`, numeric-string id, `ts` first
        let spot = r#"{"topic":"publicTrade.ETHUSDT","ts":1786310821917,"type":"snapshot","data":[{"i":"2280000001739247417","T":1786310821917,"p":"1923.28","v":"0.04537","S":"Sell","seq":178477362706,"s":"ETHUSDT","BT":false,"RPI":false}]}"#;
        let TradeFrame::Trades { trades, .. } = TradeParser.parse(spot.as_bytes()).unwrap() else { panic!() };
        assert_eq!((trades[0].trade_id.as_ref(), trades[0].symbol), ("2280000001739247417", "ETHUSDT"));
        let bad = r#"{"topic":"publicTrade.X","type":"snapshot","ts":1,"data":[{"i":"1","T":1,"p":"1","v":"1","S":"Hold","s":"X"}]}"#;
        assert!(TradeParser.parse(bad.as_bytes()).unwrap_err().to_string().contains("\"Hold\""));
    }
}
