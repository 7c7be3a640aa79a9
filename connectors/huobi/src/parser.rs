//! `HuobiParser`: one inflated frame -> [`HuobiFrame`]. Pure and per frame (no state), so it is
//! what the benchmark measures together with gunzip and the line-protocol encoding.
//!
//! One pass: Huobi writes `ch` (or `rep`) before `tick` (or `data`), so when the payload comes
//! the channel is already known and the payload is parsed straight into its typed form. A
//! frame with the keys the other way round still parses; its payload is read once as raw text
//! and parsed afterwards.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use ds_api::scan::{Decline, Scan, Scanned};
use ds_api::traits::Parser;
use ds_api::ParseError;

use crate::wire::{DepthTick, Levels, MbpTick, TradeTick};

/// The channel part of a topic `market.$symbol.<channel>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// `mbp.$levels`: incrementals, sequenced by `prevSeqNum` -> `seqNum`.
    Mbp(u16),
    /// `mbp.refresh.$levels`: the top-N book about every 100 ms.
    MbpRefresh(u16),
    /// `depth.step0`: the full 150-level book about once a second.
    DepthStep0,
    /// `trade.detail`: public trades.
    TradeDetail,
    /// Anything else (kline, bbo, ...): not what this connector subscribes to.
    Other,
}

impl Channel {
    /// The channel as written in a topic.
    pub fn topic_suffix(self) -> String {
        match self {
            Channel::Mbp(n) => format!("mbp.{n}"),
            Channel::MbpRefresh(n) => format!("mbp.refresh.{n}"),
            Channel::DepthStep0 => "depth.step0".into(),
            Channel::TradeDetail => "trade.detail".into(),
            Channel::Other => "other".into(),
        }
    }
}

/// `market.btcusdt.mbp.150` split into symbol and channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic<'a> {
    pub raw: &'a str,
    /// As Huobi writes it: lower case (`btcusdt`).
    pub symbol: &'a str,
    pub channel: Channel,
}

impl<'a> Topic<'a> {
    pub fn parse(raw: &'a str) -> Option<Topic<'a>> {
        let rest = raw.strip_prefix("market.")?;
        let (symbol, channel) = rest.split_once('.')?;
        let channel = match channel {
            "depth.step0" => Channel::DepthStep0,
            "trade.detail" => Channel::TradeDetail,
            c => match c.strip_prefix("mbp.") {
                Some(n) => match n.strip_prefix("refresh.") {
                    Some(r) => Channel::MbpRefresh(r.parse().ok()?),
                    None => Channel::Mbp(n.parse().ok()?),
                },
                None => Channel::Other,
            },
        };
        Some(Topic {
            raw,
            symbol,
            channel,
        })
    }

    /// The topic string for a symbol and channel.
    pub fn format(symbol: &str, channel: Channel) -> String {
        format!("market.{}.{}", symbol, channel.topic_suffix())
    }
}

/// A typed channel payload (`tick` of a push, `data` of a `req` reply).
#[derive(Debug, Clone, PartialEq)]
pub enum Tick<'a> {
    Mbp(MbpTick),
    Depth(DepthTick),
    Trades(TradeTick<'a>),
    /// A channel this connector does not read; skipped.
    Skipped,
}

/// What one server frame is.
#[derive(Debug, Clone, PartialEq)]
pub enum HuobiFrame<'a> {
    /// `{"ping":1618678073643}`: answer `{"pong":1618678073643}`.
    Ping(i64),
    /// `{"pong":n}`: the answer to a client ping.
    Pong(i64),
    /// `{"id":1,"status":"ok","subbed":"market.trioeth.depth.step0","ts":1618678070653}`
    Subscribed { id: Option<u64>, topic: &'a str },
    /// `{"id":3,"status":"ok","unsubbed":"market.btcusdt.mbp.150","ts":..}`
    Unsubscribed { id: Option<u64>, topic: &'a str },
    /// `{"status":"error","ts":..,"id":2,"err-code":"bad-request","err-msg":"invalid topic market.x"}`
    Error {
        id: Option<u64>,
        code: Cow<'a, str>,
        message: Cow<'a, str>,
    },
    /// A channel push: `{"ch":..,"ts":..,"tick":{..}}`.
    Push {
        topic: Topic<'a>,
        ts: Option<i64>,
        tick: Tick<'a>,
    },
    /// The answer to a `req`: `{"id":..,"rep":..,"status":"ok","data":{..}}`.
    Reply {
        id: Option<u64>,
        topic: Topic<'a>,
        ts: Option<i64>,
        data: Tick<'a>,
    },
}

#[derive(Debug, Default, Clone, Copy)]
pub struct HuobiParser;

impl Parser for HuobiParser {
    type Output<'a> = HuobiFrame<'a>;

    fn parse<'a>(&self, frame: &'a [u8]) -> Result<HuobiFrame<'a>, ParseError> {
        if let Ok(push) = scan_mbp(frame) {
            return Ok(push);
        }
        parse_serde(frame)
    }
}

/// Every frame the fast path declines: pings, acks, errors, replies, pushes of other channels.
fn parse_serde(frame: &[u8]) -> Result<HuobiFrame<'_>, ParseError> {
    let w: FrameWire<'_> = serde_json::from_slice(frame)?;
    if let Some(n) = w.ping {
        return Ok(HuobiFrame::Ping(n));
    }
    if let Some(n) = w.pong {
        return Ok(HuobiFrame::Pong(n));
    }
    let id = w.id.and_then(request_id);
    if w.status == Some("error") {
        return Ok(HuobiFrame::Error {
            id,
            code: w.err_code.unwrap_or(Cow::Borrowed("")),
            message: w.err_msg.unwrap_or(Cow::Borrowed("")),
        });
    }
    if let Some(topic) = w.subbed {
        return Ok(HuobiFrame::Subscribed { id, topic });
    }
    if let Some(topic) = w.unsubbed {
        return Ok(HuobiFrame::Unsubscribed { id, topic });
    }
    if let Some(rep) = w.rep {
        let topic = Topic::parse(rep)
            .ok_or_else(|| ParseError::UnknownMessage(format!("reply to topic {rep:?}")))?;
        let data = w
            .payload
            .ok_or_else(|| ParseError::Other(format!("reply to {rep} without data")))?;
        return Ok(HuobiFrame::Reply {
            id,
            topic,
            ts: w.ts,
            data,
        });
    }
    if let Some(ch) = w.ch {
        let topic = Topic::parse(ch)
            .ok_or_else(|| ParseError::UnknownMessage(format!("channel {ch:?}")))?;
        let tick = w
            .payload
            .ok_or_else(|| ParseError::Other(format!("push on {ch} without tick")))?;
        return Ok(HuobiFrame::Push {
            topic,
            ts: w.ts,
            tick,
        });
    }
    Err(ParseError::UnknownMessage(
        "neither ping, ack, error, reply nor channel push".into(),
    ))
}

/// The fast path ([`ds_api::scan`]): a book push exactly as HTX writes it,
/// `{"ch":"market.$symbol.mbp[.refresh].$n","ts":..,"tick":{"seqNum":..,"prevSeqNum":..,
/// "bids":[[p,s],..],"asks":[..]}}` or a `depth.step0` one (tick keys `bids asks version ts`),
/// `ch` before `tick`, each key at most once. Anything else
/// (pings, acks, replies, other channels, a new key) declines, and [`HuobiParser::parse`]
/// reads the frame with serde, which also gives the error.
fn scan_mbp(frame: &[u8]) -> Scanned<HuobiFrame<'_>> {
    let mut s = Scan::from_bytes(frame);
    let (mut topic, mut ts, mut tick) = (None, None, None);
    s.object(|s, key| {
        Ok(match key {
            b"ch" => {
                let t = Topic::parse(s.str()?).ok_or(Decline)?;
                if !matches!(t.channel, Channel::Mbp(_) | Channel::MbpRefresh(_) | Channel::DepthStep0) {
                    return Err(Decline);
                }
                topic = Some(t);
                0
            }
            b"ts" => {
                ts = Some(s.i64()?);
                1
            }
            // The channel must be known when the payload comes.
            b"tick" => {
                let channel = topic.as_ref().map(|t: &Topic<'_>| t.channel).ok_or(Decline)?;
                tick = Some(scan_book_tick(s, channel == Channel::DepthStep0)?);
                2
            }
            _ => return Err(Decline),
        })
    })?;
    s.end()?;
    match (topic, tick) {
        (Some(topic), Some(tick)) => Ok(HuobiFrame::Push { topic, ts, tick }),
        _ => Err(Decline),
    }
}

/// An mbp tick (`seqNum prevSeqNum bids asks`) or, `depth`, a depth.step0 one
/// (`bids asks version ts`).
fn scan_book_tick(s: &mut Scan<'_>, depth: bool) -> Scanned<Tick<'static>> {
    let (mut id, mut prev_or_ts) = (None, None);
    let (mut bids, mut asks) = (Levels::default(), Levels::default());
    s.object(|s, key| {
        Ok(match (key, depth) {
            (b"seqNum", false) | (b"version", true) => {
                id = Some(s.u64()?);
                0
            }
            (b"prevSeqNum", false) | (b"ts", true) => {
                prev_or_ts = Some(s.u64()?);
                1
            }
            (b"bids", _) => {
                bids = Levels(s.levels_exact::<true>()?);
                2
            }
            (b"asks", _) => {
                asks = Levels(s.levels_exact::<true>()?);
                3
            }
            _ => return Err(Decline),
        })
    })?;
    let id = id.ok_or(Decline)?;
    Ok(if depth {
        Tick::Depth(DepthTick { version: id, ts: prev_or_ts.map(i64::try_from).transpose().map_err(|_| Decline)?, bids, asks })
    } else {
        Tick::Mbp(MbpTick { seq_num: id, prev_seq_num: prev_or_ts, bids, asks })
    })
}

/// Our request ids are numbers; Huobi echoes them as sent (a number, or a string if a client
/// sent one). Anything else is not ours.
fn request_id(raw: &RawValue) -> Option<u64> {
    raw.get().trim_matches('"').parse().ok()
}

/// Every key a server frame may carry, in one flat struct (Huobi's frames are small objects of
/// a few known keys; a flat visitor beats trying a sequence of untagged shapes). Strings that
/// Huobi writes without escapes are borrowed; error texts may hold escapes and are owned.
#[derive(Default)]
struct FrameWire<'a> {
    ping: Option<i64>,
    pong: Option<i64>,
    id: Option<&'a RawValue>,
    status: Option<&'a str>,
    subbed: Option<&'a str>,
    unsubbed: Option<&'a str>,
    ts: Option<i64>,
    err_code: Option<Cow<'a, str>>,
    err_msg: Option<Cow<'a, str>>,
    ch: Option<&'a str>,
    rep: Option<&'a str>,
    payload: Option<Tick<'a>>,
}

#[derive(Deserialize)]
#[serde(field_identifier)]
enum Key {
    #[serde(rename = "ping")]
    Ping,
    #[serde(rename = "pong")]
    Pong,
    #[serde(rename = "id")]
    Id,
    #[serde(rename = "status")]
    Status,
    #[serde(rename = "subbed")]
    Subbed,
    #[serde(rename = "unsubbed")]
    Unsubbed,
    #[serde(rename = "ts")]
    Ts,
    #[serde(rename = "err-code")]
    ErrCode,
    #[serde(rename = "err-msg")]
    ErrMsg,
    #[serde(rename = "ch")]
    Ch,
    #[serde(rename = "rep")]
    Rep,
    /// `tick` of a push or `data` of a reply.
    #[serde(rename = "tick", alias = "data")]
    Payload,
    #[serde(other)]
    Other,
}

fn channel_of(topic: Option<&str>) -> Option<Channel> {
    topic.map(|t| Topic::parse(t).map_or(Channel::Other, |t| t.channel))
}

fn typed_payload<'de, A: MapAccess<'de>>(
    map: &mut A,
    channel: Channel,
) -> Result<Tick<'de>, A::Error> {
    Ok(match channel {
        Channel::Mbp(_) | Channel::MbpRefresh(_) => Tick::Mbp(map.next_value()?),
        Channel::DepthStep0 => Tick::Depth(map.next_value()?),
        Channel::TradeDetail => Tick::Trades(map.next_value()?),
        Channel::Other => {
            map.next_value::<IgnoredAny>()?;
            Tick::Skipped
        }
    })
}

fn typed_payload_from_raw<'de, E: de::Error>(
    raw: &'de RawValue,
    channel: Channel,
) -> Result<Tick<'de>, E> {
    let text = raw.get();
    let r = match channel {
        Channel::Mbp(_) | Channel::MbpRefresh(_) => serde_json::from_str(text).map(Tick::Mbp),
        Channel::DepthStep0 => serde_json::from_str(text).map(Tick::Depth),
        Channel::TradeDetail => serde_json::from_str(text).map(Tick::Trades),
        Channel::Other => Ok(Tick::Skipped),
    };
    r.map_err(E::custom)
}

impl<'de> Deserialize<'de> for FrameWire<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FrameVisitor;
        impl<'de> Visitor<'de> for FrameVisitor {
            type Value = FrameWire<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Huobi frame (a JSON object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FrameWire<'de>, A::Error> {
                let mut w = FrameWire::default();
                let mut deferred: Option<&'de RawValue> = None;
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Ping => w.ping = Some(map.next_value()?),
                        Key::Pong => w.pong = Some(map.next_value()?),
                        Key::Id => w.id = Some(map.next_value()?),
                        Key::Status => w.status = Some(map.next_value()?),
                        Key::Subbed => w.subbed = Some(map.next_value()?),
                        Key::Unsubbed => w.unsubbed = Some(map.next_value()?),
                        Key::Ts => w.ts = map.next_value()?,
                        Key::ErrCode => w.err_code = map.next_value::<Option<Cow<'de, str>>>()?,
                        Key::ErrMsg => w.err_msg = map.next_value::<Option<Cow<'de, str>>>()?,
                        Key::Ch => w.ch = Some(map.next_value()?),
                        Key::Rep => w.rep = Some(map.next_value()?),
                        Key::Payload => match channel_of(w.ch.or(w.rep)) {
                            Some(channel) => w.payload = Some(typed_payload(&mut map, channel)?),
                            None => deferred = Some(map.next_value()?),
                        },
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                if let (Some(raw), Some(channel)) = (deferred, channel_of(w.ch.or(w.rep))) {
                    w.payload = Some(typed_payload_from_raw(raw, channel)?);
                }
                Ok(w)
            }
        }
        d.deserialize_map(FrameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<HuobiFrame<'_>, ParseError> {
        HuobiParser.parse(s.as_bytes())
    }

    struct Case {
        input: &'static str,
        expect: &'static str,
    }

    /// A compact description of a parsed frame, for the table.
    fn describe(f: &HuobiFrame) -> String {
        match f {
            HuobiFrame::Ping(n) => format!("ping {n}"),
            HuobiFrame::Pong(n) => format!("pong {n}"),
            HuobiFrame::Subscribed { id, topic } => format!("subbed {id:?} {topic}"),
            HuobiFrame::Unsubscribed { id, topic } => format!("unsubbed {id:?} {topic}"),
            HuobiFrame::Error { id, code, message } => format!("error {id:?} {code}: {message}"),
            HuobiFrame::Push { topic, ts, tick }
            | HuobiFrame::Reply {
                topic,
                ts,
                data: tick,
                ..
            } => {
                let kind = if matches!(f, HuobiFrame::Push { .. }) {
                    "push"
                } else {
                    "reply"
                };
                let body = match tick {
                    Tick::Mbp(t) => format!(
                        "mbp {}<-{:?} {}/{}",
                        t.seq_num,
                        t.prev_seq_num,
                        t.bids.0.len(),
                        t.asks.0.len()
                    ),
                    Tick::Depth(t) => {
                        format!("depth v{} {}/{}", t.version, t.bids.0.len(), t.asks.0.len())
                    }
                    Tick::Trades(t) => format!(
                        "trades {}",
                        t.data
                            .iter()
                            .map(|d| d.trade_id.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                    Tick::Skipped => "skipped".into(),
                };
                format!("{kind} {} {:?} {ts:?} {body}", topic.symbol, topic.channel)
            }
        }
    }

    #[test]
    fn frames_table() {
        let cases = [
            // 0: server ping (server_ping_2021-04-17.jsonl line 1)
            Case { input: r#"{"ping":1618678073643}"#, expect: "ping 1618678073643" },
            // 1: ack (subscribe_acks_2021-04-17.jsonl line 1)
            Case {
                input: r#"{"id":1,"status":"ok","subbed":"market.trioeth.depth.step0","ts":1618678070653}"#,
                expect: "subbed Some(1) market.trioeth.depth.step0",
            },
            // 2: ack with a string id
            Case { input: r#"{"id":"7","status":"ok","subbed":"market.btcusdt.mbp.150","ts":1}"#, expect: "subbed Some(7) market.btcusdt.mbp.150" },
            // 3: error reply (protocols.md §3)
            Case {
                input: r#"{"status":"error","ts":1,"id":2,"err-code":"bad-request","err-msg":"invalid topic market.x.mbp.7"}"#,
                expect: "error Some(2) bad-request: invalid topic market.x.mbp.7",
            },
            // 4: real mbp.150 incremental, empty bid side (ccxt issue 18749)
            Case {
                input: r#"{"ch":"market.aidogeusdt.mbp.150","ts":1690948841557,"tick":{"seqNum":155247358,"prevSeqNum":155247355,"bids":[],"asks":[[9.486E-11,5.4329174972728E12],[9.488E-11,0.0]]}}"#,
                expect: "push aidogeusdt Mbp(150) Some(1690948841557) mbp 155247358<-Some(155247355) 0/2",
            },
            // 5: mbp.20 leaves the unchanged side out
            Case {
                input: r#"{"ch":"market.btcusdt.mbp.20","ts":5,"tick":{"seqNum":10,"prevSeqNum":7,"asks":[[58001.03,0.1]]}}"#,
                expect: "push btcusdt Mbp(20) Some(5) mbp 10<-Some(7) 0/1",
            },
            // 6: req reply
            Case {
                input: r#"{"id":9,"rep":"market.btcusdt.mbp.150","status":"ok","data":{"seqNum":100,"bids":[[1.0,2.0]],"asks":[[1.5,1E3]]}}"#,
                expect: "reply btcusdt Mbp(150) None mbp 100<-None 1/1",
            },
            // 7: keys in the other order still parse
            Case {
                input: r#"{"tick":{"seqNum":3,"prevSeqNum":1,"bids":[],"asks":[]},"ts":5,"ch":"market.btcusdt.mbp.150"}"#,
                expect: "push btcusdt Mbp(150) Some(5) mbp 3<-Some(1) 0/0",
            },
            // 8: real trade.detail (trade_detail_2021-04-17.jsonl line 1), `id` beyond u64
            Case {
                input: r#"{"ch":"market.trioeth.trade.detail","ts":1618678027942,"tick":{"id":100182534526,"ts":1618678027940,"data":[{"id":100182534526255757567432481,"ts":1618678027940,"tradeId":100045088885,"amount":20995.88,"price":9.2E-7,"direction":"buy"}]}}"#,
                expect: "push trioeth TradeDetail Some(1618678027942) trades 100045088885",
            },
            // 9: mbp.refresh push
            Case {
                input: r#"{"ch":"market.btcusdt.mbp.refresh.5","ts":7,"tick":{"seqNum":11,"bids":[[1,1]],"asks":[[2,2]]}}"#,
                expect: "push btcusdt MbpRefresh(5) Some(7) mbp 11<-None 1/1",
            },
            // 10: a channel we do not read is skipped, not an error
            Case { input: r#"{"ch":"market.btcusdt.kline.1min","ts":7,"tick":{"open":1}}"#, expect: "push btcusdt Other Some(7) skipped" },
            // 11-15: errors
            Case { input: r#"{"ch":"market.btcusdt.mbp.150","tick":{"seqNum":1,"bids":[["1","2"]]}}"#, expect: "ERR invalid JSON" },
            Case { input: r#"{"ch":"market.btcusdt.mbp.150","tick":{"seqNum":1,"bids":[[NaN,2]]}}"#, expect: "ERR invalid JSON" },
            Case { input: r#"{"hello":1}"#, expect: "ERR unknown message" },
            Case { input: r#"{"ch":"nonsense","tick":{}}"#, expect: "ERR unknown message" },
            Case { input: r#"[1,2]"#, expect: "ERR invalid JSON" },
        ];
        for (i, c) in cases.iter().enumerate() {
            match parse(c.input) {
                Ok(f) => assert_eq!(describe(&f), c.expect, "case {i}"),
                Err(e) => {
                    let want = c
                        .expect
                        .strip_prefix("ERR ")
                        .unwrap_or_else(|| panic!("case {i}: unexpected error {e}"));
                    assert!(e.to_string().contains(want), "case {i}: {e}");
                }
            }
        }
    }

    /// Every frame of the real session (`ws_raw_gzip_frames_2021-04-17.jsonl`, exact wire bytes):
    /// inflated and parsed, nothing refused, the counts of PROVENANCE.md.
    #[test]
    fn every_frame_of_the_raw_capture_inflates_and_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/huobi/ws_raw_gzip_frames_2021-04-17.jsonl");
        let capture = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("needs ../shared/fixtures ({}): {e}", path.display()));
        let mut gunzip = crate::gzip::Gunzip::new(crate::gzip::DEFAULT_MAX_FRAME_BYTES);
        let (mut pings, mut acks, mut books, mut trade_frames, mut trades) = (0, 0, 0, 0, 0);
        let mut first_bid = None;
        for (i, line) in capture.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let wire = crate::gzip::base64_decode(v["b64"].as_str().unwrap());
            let text = gunzip
                .inflate(&wire)
                .unwrap_or_else(|e| panic!("line {i}: {e}"));
            match HuobiParser
                .parse(text)
                .unwrap_or_else(|e| panic!("line {i}: {e}"))
            {
                HuobiFrame::Ping(_) => pings += 1,
                HuobiFrame::Subscribed { .. } => acks += 1,
                HuobiFrame::Push {
                    topic,
                    tick: Tick::Depth(d),
                    ..
                } => {
                    assert_eq!(topic.channel, Channel::DepthStep0);
                    assert!(d.bids.0.len() <= 150 && d.asks.0.len() <= 150);
                    first_bid.get_or_insert_with(|| d.bids.0[0].price.as_str().to_owned());
                    books += 1;
                }
                HuobiFrame::Push {
                    tick: Tick::Trades(t),
                    ..
                } => {
                    trade_frames += 1;
                    trades += t.data.len();
                }
                other => panic!("line {i}: unexpected {other:?}"),
            }
        }
        assert_eq!(
            (pings, acks, books, trade_frames, trades),
            (6, 20, 292, 44, 73)
        );
        assert_eq!(
            first_bid.as_deref(),
            Some("9.121E-7"),
            "the exchange's text, not a float's"
        );
    }

    /// The fast path takes every recorded mbp and depth.step0 push, and wherever it takes a frame (recorded or
    /// corrupted) it reads exactly what serde reads; where serde refuses, it declines.
    #[test]
    fn fast_path_agrees_with_serde_on_recorded_and_corrupted_frames() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/huobi");
        let text = std::fs::read_to_string(dir.join("mbp_150_incremental_ccxt_issue_18749.jsonl"))
            .unwrap_or_else(|e| panic!("needs ../shared/fixtures ({}): {e}", dir.display()));
        let frames: Vec<String> = text.lines().filter(|l| l.contains("\"ch\"")).map(String::from).collect();
        assert_eq!(frames.len(), 2, "the two real incrementals");
        // Only two real incrementals exist; the real depth.step0 books carry the same number
        // text in 150 levels a side, so they are reshaped into mbp pushes as well.
        let books = std::fs::read_to_string(dir.join("depth_step0_2021-04-17.jsonl")).unwrap();
        let reshaped: Vec<String> = books
            .lines()
            .filter_map(|l| {
                let cut = l.rfind(r#","ts":"#)?;
                Some(format!("{},\"prevSeqNum\":7}}}}", &l[..cut]).replace("depth.step0", "mbp.150").replace(r#""version":"#, r#""seqNum":"#))
            })
            .collect();
        assert!(reshaped.len() > 250, "{} books", reshaped.len());
        let step0: Vec<String> = books.lines().map(String::from).collect();
        for f in frames.iter().chain(&reshaped).chain(&step0) {
            let fast = scan_mbp(f.as_bytes()).unwrap_or_else(|_| panic!("fast path declined a recorded frame: {f}"));
            assert_eq!(Some(fast), parse_serde(f.as_bytes()).ok(), "{f}");
        }
        // Declined, not misread: the other kinds of frame.
        for other in [r#"{"ping":1690948843215}"#, r#"{"id":"1","status":"ok","subbed":"market.btcusdt.mbp.150","ts":1}"#, r#"{"ch":"market.x.trade.detail","ts":1,"tick":{"id":1,"ts":1,"data":[]}}"#] {
            assert_eq!(scan_mbp(other.as_bytes()).err(), Some(Decline), "{other}");
        }
        let (mut taken, mut declined) = (0, 0);
        for f in frames.iter().chain(step0.iter().filter(|f| f.len() < 1500).take(3)) {
            let mut variants = ds_api::scan::corrupted_copies(f);
            variants.push(f.replace(r#""seqNum":"#, r#""seqNum":1,"seqNum":"#));
            for v in &variants {
                match scan_mbp(v.as_bytes()) {
                    Ok(fast) => {
                        taken += 1;
                        assert_eq!(Some(fast), parse_serde(v.as_bytes()).ok(), "fast path read {v}");
                    }
                    Err(Decline) => declined += 1,
                }
            }
        }
        assert!(taken > 300 && declined > 1000, "taken {taken}, declined {declined}");
    }

    #[test]
    fn topics() {
        assert_eq!(
            Topic::parse("market.btcusdt.mbp.400").unwrap().channel,
            Channel::Mbp(400)
        );
        assert_eq!(
            Topic::parse("market.btcusdt.mbp.refresh.10")
                .unwrap()
                .channel,
            Channel::MbpRefresh(10)
        );
        assert_eq!(
            Topic::parse("market.fil3susdt.depth.step0").unwrap().symbol,
            "fil3susdt"
        );
        assert!(Topic::parse("market.btcusdt.mbp.x").is_none());
        assert!(Topic::parse("btcusdt.mbp.150").is_none());
        for c in [
            Channel::Mbp(150),
            Channel::MbpRefresh(20),
            Channel::DepthStep0,
            Channel::TradeDetail,
        ] {
            let t = Topic::format("btcusdt", c);
            assert_eq!(Topic::parse(&t).unwrap().channel, c, "{t}");
        }
    }
}
