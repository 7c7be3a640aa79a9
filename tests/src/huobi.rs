//! A mock of Huobi (HTX) spot market data on 127.0.0.1, speaking the real protocol.
//!
//! The service's Huobi connectors run unchanged against it (their URLs come from config):
//!
//! - WebSocket on the paths `/feed` and `/ws` (any other path gets a 400 handshake reply).
//!   Every server message is a **gzip-compressed binary frame** (acks, pings, replies, pushes);
//!   client messages are JSON text.
//! - `{"sub": topic, "id": id}` is acknowledged like the real server
//!   (`{"id":1,"status":"ok","subbed":"market.trioeth.depth.step0","ts":..}`) or refused with
//!   its error shape (`invalid topic`, `invalid symbol`). `market.$symbol.mbp.$levels` is
//!   served on `/feed` only, `depth.step0`, `trade.detail` and `mbp.refresh.$n` on `/ws` only,
//!   as on Huobi. `unsub` is acknowledged.
//! - `{"req": "market.$symbol.mbp.$levels", "id": id}` on `/feed` answers
//!   `{"id":..,"rep":..,"status":"ok","data":{"seqNum":N,"bids":..,"asks":..}}` with the
//!   book as it was [`MbpStreamConfig::req_lag`] updates ago (a real reply lags the stream by
//!   10-14 updates), and refuses a second `req` within 100 ms on one connection
//!   (`429 too many request`, counted in [`MockHuobi::req_violations`]).
//! - Heartbeat: `{"ping": n}` every [`MockHuobiConfig::ping_interval`]; a matching
//!   `{"pong": n}` clears it; with two pings unanswered the next tick closes the connection,
//!   as Huobi does. [`MockHuobi::set_ignore_pongs`] makes the server deaf to pongs (so it
//!   closes), [`MockHuobi::go_silent`] makes the open connections send nothing at all any
//!   more (a dead connection; new connections are served normally).
//!
//! Data:
//! - **Replay** of real captures: the data pushes of `ws_raw_gzip_frames_2021-04-17.jsonl`
//!   (`depth.step0`, `trade.detail`) are sent as their exact recorded wire bytes, in recorded
//!   order, to each `/ws` connection subscribed to their topic.
//! - **Generated MBP streams**: only two real mbp incrementals exist, so the mock keeps a
//!   truth book per symbol (seeded, e.g. from a real `depth.step0` book) and generates
//!   incrementals that follow the documented rule: `prevSeqNum` = the previous `seqNum`,
//!   `seqNum` steps of 1 to [`MbpStreamConfig::max_seq_step`], absolute sizes, `0.0` removes,
//!   the 150/400-level channels send `[]` for an unchanged side (and both empty when nothing
//!   changed), 5/20 leave the key out; prices in Huobi's Java number style (`9.121E-7`).
//!   One update per symbol can be dropped (applied to the truth, never sent) or sent after
//!   its successor. [`MockHuobi::book`] is the truth, [`MockHuobi::updates`] every update.
//! - `mbp.refresh.$n` pushes of the top-n truth book (with its `seqNum`) every
//!   [`MockHuobiConfig::refresh_every`] updates, to `/ws` subscribers ([`MockHuobi::refreshes`]).
//! - [`gzip_bomb`] and [`MockHuobi::send_binary`] push hostile frames.
//! - Faults for the fault matrix (tests/FAULTS.md): per update, `duplicate` (sent twice) and
//!   `inject` (raw bytes right after it: corrupt gzip, gzip of a non-JSON text, a push of an
//!   unknown channel); [`MockHuobiConfig::connection_faults`] per handshake attempt (`Refuse`
//!   with HTTP 503, `CloseAfter(n)` pushes without a Close, `StallAfter(n)` pushes: silent,
//!   no pings, socket open); [`MockHuobiConfig::reject_subs`] (`invalid topic` for one `sub`
//!   on one connection); [`MockHuobiConfig::fail_reqs`] (the first `req`s answered with
//!   errors); [`MbpStreamConfig::tail`] keeps the stream running until a live connection has
//!   heard enough of it after an outage.
//! - REST: `GET /v1/common/symbols` answers [`MockHuobiConfig::symbols_body`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;
use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

pub use crate::binance::ConnectionFault;
use crate::book::{OrderBook, PriceKey, Side};
use crate::http::{HttpServer, Request, Response};

/// Huobi's documented server ping period.
pub const HUOBI_PING_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered pings after which Huobi closes the connection.
pub const MISSED_PONGS_BEFORE_CLOSE: usize = 2;
/// Huobi's minimum gap between two `req` on one connection.
pub const MIN_REQ_GAP: Duration = Duration::from_millis(100);
/// Poll period of the `wait_for_*` helpers.
const POLL: Duration = Duration::from_millis(10);
/// New levels land within this many ticks of the best price (or improve it by up to two):
/// wide enough that adds (40 % of changes) outpace removals (15 %) and the book keeps a real
/// depth of well over a hundred levels a side.
const ADD_DEPTH: i64 = 250;
/// The size text Huobi sends for a removed level.
const REMOVED: &str = "0.0";

// ---------------------------------------------------------------------------------------
// gzip and number helpers

/// Gzip-compresses one server message, as Huobi does with every frame.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::with_capacity(data.len() / 4 + 32), Compression::fast());
    e.write_all(data).expect("gzip into memory");
    e.finish().expect("gzip into memory")
}

/// Inflates a gzip frame (test side; panics on corrupt input).
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("a valid gzip frame");
    out
}

/// A small gzip frame that inflates to `inflated` bytes (spaces after a JSON-looking
/// prefix): the classic decompression bomb. 256 MiB compress to about 250 KiB.
pub fn gzip_bomb(inflated: usize) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    let prefix = br#"{"ch":"market.bomb.mbp.150","tick":{"bids":["#;
    e.write_all(prefix).expect("gzip into memory");
    let chunk = vec![b' '; 1 << 20];
    let mut left = inflated.saturating_sub(prefix.len());
    while left > 0 {
        let n = left.min(chunk.len());
        e.write_all(&chunk[..n]).expect("gzip into memory");
        left -= n;
    }
    e.finish().expect("gzip into memory")
}

/// `ticks / 10^scale` written as Java's `Double.toString` writes it, which is how Huobi
/// prints numbers: plain between 1e-3 and 1e7 with at least one decimal (`716.0`,
/// `0.051598`), scientific outside (`9.121E-7`, `5.4329174972728E12`).
pub fn java_decimal(ticks: u64, scale: u32) -> String {
    if ticks == 0 {
        return "0.0".into();
    }
    let digits = ticks.to_string();
    let exp = digits.len() as i64 - 1 - i64::from(scale);
    if (-3..7).contains(&exp) {
        let scale = scale as usize;
        let padded = if digits.len() <= scale {
            format!("{}{digits}", "0".repeat(scale + 1 - digits.len()))
        } else {
            digits
        };
        let (int, frac) = padded.split_at(padded.len() - scale);
        let frac = frac.trim_end_matches('0');
        format!("{int}.{}", if frac.is_empty() { "0" } else { frac })
    } else {
        let mantissa = digits.trim_end_matches('0');
        let rest = if mantissa.len() > 1 {
            &mantissa[1..]
        } else {
            "0"
        };
        format!("{}.{rest}E{exp}", &mantissa[..1])
    }
}

/// `(digits, decimal exponent)` of a JSON number text: `9.121E-7` -> (9121, -10).
fn decimal_parts(text: &str) -> Option<(u64, i64)> {
    let (mantissa, exp) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], text[i + 1..].parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: u64 = format!("{int}{frac}").parse().ok()?;
    Some((digits, exp - frac.len() as i64))
}

/// Decimal places needed to write `text` as an integer number of ticks.
fn scale_of(text: &str) -> u32 {
    decimal_parts(text).map_or(0, |(_, e)| (-e).max(0) as u32)
}

/// `text` as ticks of `10^-scale` (the text must not need more places than `scale`).
fn ticks_of(text: &str, scale: u32) -> i64 {
    let (digits, exp) = decimal_parts(text).unwrap_or((0, 0));
    let shift = i64::from(scale) + exp;
    if shift >= 0 {
        digits as i64 * 10i64.pow(shift.min(18) as u32)
    } else {
        // Trailing zeros past the scale (`716.0` at scale 0).
        digits as i64 / 10i64.pow((-shift).min(18) as u32)
    }
}

/// The `[number, number]` pairs of array `key` in a JSON text, as text: serde_json without
/// `arbitrary_precision` would turn them into floats, and the mock must serve the exact
/// recorded text.
pub fn number_pairs(json: &str, key: &str) -> Vec<(String, String)> {
    let Some(start) = json.find(&format!("\"{key}\":[")) else {
        return Vec::new();
    };
    let bytes = json.as_bytes();
    let mut i = start + key.len() + 4;
    let mut out = Vec::new();
    let mut numbers: Vec<String> = Vec::new();
    let mut depth = 1;
    while i < bytes.len() && depth > 0 {
        match bytes[i] {
            b'[' => depth += 1,
            b']' => {
                depth -= 1;
                if numbers.len() == 2 {
                    let q = numbers.pop().unwrap_or_default();
                    let p = numbers.pop().unwrap_or_default();
                    out.push((p, q));
                }
                numbers.clear();
            }
            b'0'..=b'9' | b'-' => {
                let s = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                numbers.push(json[s..i].to_owned());
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// configuration

/// The starting book of a generated MBP stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedBook {
    /// Lower case, as in topics (`trioeth`).
    pub symbol: String,
    /// The book's `seqNum` before the first generated update.
    pub seq_num: u64,
    /// `(price, size)` texts, any order.
    pub bids: Vec<(String, String)>,
    pub asks: Vec<(String, String)>,
}

impl SeedBook {
    /// The book of a gunzipped `depth.step0` push (its exact level texts), at `seq_num`.
    pub fn from_depth_step0(push: &str, seq_num: u64) -> SeedBook {
        let v: Value = serde_json::from_str(push).expect("a depth.step0 push is JSON");
        let ch = v["ch"].as_str().expect("depth.step0 push with ch");
        let symbol = ch
            .split('.')
            .nth(1)
            .expect("market.<symbol>.depth.step0")
            .to_owned();
        SeedBook {
            symbol,
            seq_num,
            bids: number_pairs(push, "bids"),
            asks: number_pairs(push, "asks"),
        }
    }
}

/// How the generated MBP streams run.
#[derive(Clone, Debug)]
pub struct MbpStreamConfig {
    /// The only `mbp.$levels` served (5, 20, 150 or 400); the truth book keeps at most this
    /// many levels a side (levels pushed out are removed with a `0.0` update, as Huobi does).
    pub levels: usize,
    /// Updates generated per symbol, then the stream goes quiet (pings go on).
    pub updates: usize,
    /// Between two updates of the streams (every symbol gets one per tick).
    pub interval: Duration,
    pub seed: u64,
    /// `seqNum` grows by 1..=this per update.
    pub max_seq_step: u64,
    /// `(symbol, update index)`: applied to the truth, never sent (lost on the wire).
    pub drop: Vec<(String, usize)>,
    /// `(symbol, update index)`: sent right after update `index + 1` instead of before it.
    pub reorder: Vec<(String, usize)>,
    /// A `req` reply is the book as it was this many updates ago.
    pub req_lag: usize,
    /// `(symbol, update index)`: sent twice in a row (applied once to the truth).
    pub duplicate: Vec<(String, usize)>,
    /// `(symbol, update index, wire bytes)`: one binary frame sent as-is right after that
    /// update, to the subscribers of its topic (a corrupt gzip frame, gzip of a non-JSON text,
    /// a push of a channel nobody subscribed, ...).
    pub inject: Vec<(String, usize, Vec<u8>)>,
    /// With `tail > 0` the stream does not end at `updates`: it goes on until a connection
    /// that still hears it (open, not stalled) has been subscribed for `tail` updates. So
    /// after faults that cost the client a reconnect, the stream still runs when it is back.
    pub tail: usize,
}

impl Default for MbpStreamConfig {
    fn default() -> Self {
        MbpStreamConfig {
            levels: 150,
            updates: 0,
            interval: Duration::from_millis(5),
            seed: 1,
            max_seq_step: 5,
            drop: Vec::new(),
            reorder: Vec::new(),
            req_lag: 3,
            duplicate: Vec::new(),
            inject: Vec::new(),
            tail: 0,
        }
    }
}

/// One recorded server frame replayed verbatim.
#[derive(Clone, Debug)]
pub struct ReplayFrame {
    /// The exact recorded gzip bytes.
    pub wire: Vec<u8>,
    /// Its `ch`.
    pub topic: String,
    /// Its inflated text.
    pub text: String,
}

/// What the mock serves. `MockHuobiConfig::default()` has Huobi's timings and no data.
#[derive(Clone, Debug)]
pub struct MockHuobiConfig {
    /// Truth books of the generated MBP streams.
    pub books: Vec<SeedBook>,
    pub stream: MbpStreamConfig,
    /// Recorded pushes, replayed to `/ws` subscribers.
    pub replay: Vec<ReplayFrame>,
    /// Pause between two replayed frames of one connection.
    pub replay_interval: Duration,
    /// Period of the server's `{"ping": n}`.
    pub ping_interval: Duration,
    /// Pause between the first `sub` and the first generated or replayed frame, so that every
    /// `sub` of a connection is in before data flows.
    pub start_delay: Duration,
    /// Generated updates between two `mbp.refresh.$n` pushes (the top-n truth book, with its
    /// `seqNum`) to the `/ws` connections subscribed to them.
    pub refresh_every: usize,
    /// Body of `GET /v1/common/symbols` (404 when `None`). Its symbols are also subscribable.
    pub symbols_body: Option<String>,
    /// What goes wrong with each WebSocket handshake attempt, by attempt number (0 = the first
    /// handshake on `/feed` or `/ws`; bad paths are not counted): `Refuse` (HTTP 503),
    /// `CloseAfter(n)` (TCP dropped without a Close after n pushes on that connection),
    /// `StallAfter(n)` (after n pushes nothing more at all, no pings, socket kept open).
    pub connection_faults: HashMap<usize, ConnectionFault>,
    /// `(handshake attempt, topic)`: that `sub` is refused on that connection with Huobi's
    /// `{"status":"error","err-code":"bad-request","err-msg":"invalid topic <topic>"}`.
    pub reject_subs: Vec<(usize, String)>,
    /// `(err-code, err-msg)`: the first `req`s (of any symbol, in order of arrival) are
    /// answered with these errors; later ones are served.
    pub fail_reqs: Vec<(String, String)>,
}

impl Default for MockHuobiConfig {
    fn default() -> Self {
        MockHuobiConfig {
            books: Vec::new(),
            stream: MbpStreamConfig::default(),
            replay: Vec::new(),
            replay_interval: Duration::from_millis(2),
            ping_interval: HUOBI_PING_INTERVAL,
            start_delay: Duration::from_millis(200),
            refresh_every: 10,
            symbols_body: None,
            connection_faults: HashMap::new(),
            reject_subs: Vec::new(),
            fail_reqs: Vec::new(),
        }
    }
}

/// The recorded 2021-04-17 session, from `../shared/fixtures/huobi`.
pub struct HuobiCapture {
    /// Every data push of the raw capture (292 `depth.step0`, 44 `trade.detail`), wire bytes.
    pub pushes: Vec<ReplayFrame>,
    /// The 10 symbols of the capture, in subscription order.
    pub symbols: Vec<String>,
    /// The first `depth.step0` push of each symbol, as a seed book at `seqNum` 1000.
    pub seeds: Vec<SeedBook>,
    /// `rest_v1_common_symbols_2021-04-17.json`.
    pub symbols_body: String,
}

impl HuobiCapture {
    /// Loads the capture; `None` (after a printed skip line) when the fixtures are absent.
    pub fn load() -> Option<HuobiCapture> {
        let lines = crate::fixtures::require_lines("huobi/ws_raw_gzip_frames_2021-04-17.jsonl")?;
        let symbols_body =
            crate::fixtures::require_string("huobi/rest_v1_common_symbols_2021-04-17.json")?;
        let requests = crate::fixtures::require_lines("huobi/subscribe_requests_2021-04-17.jsonl")?;
        let mut pushes = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("raw frame {i}: {e}"));
            let wire = base64_decode(v["b64"].as_str().expect("b64"));
            let text = String::from_utf8(gunzip(&wire)).expect("utf-8 frame");
            let inner: Value = serde_json::from_str(&text).expect("JSON frame");
            if let Some(ch) = inner.get("ch").and_then(Value::as_str) {
                pushes.push(ReplayFrame {
                    wire,
                    topic: ch.to_owned(),
                    text,
                });
            }
        }
        let mut symbols: Vec<String> = Vec::new();
        for r in &requests {
            let v: Value = serde_json::from_str(r).expect("JSON request");
            let sym = v["sub"]
                .as_str()
                .and_then(|t| t.split('.').nth(1))
                .expect("market.<sym>.x")
                .to_owned();
            if !symbols.contains(&sym) {
                symbols.push(sym);
            }
        }
        let seeds = symbols
            .iter()
            .map(|s| {
                let topic = format!("market.{s}.depth.step0");
                let first = pushes
                    .iter()
                    .find(|p| p.topic == topic)
                    .expect("a depth.step0 push per symbol");
                SeedBook::from_depth_step0(&first.text, 1000)
            })
            .collect();
        Some(HuobiCapture {
            pushes,
            symbols,
            seeds,
            symbols_body,
        })
    }
}

/// Standard base64 decoding (the capture stores wire bytes as base64).
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {:?}", c as char),
        }
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut v = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            v |= val(*c) << (18 - 6 * i);
        }
        let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

// ---------------------------------------------------------------------------------------
// records

/// What became of a generated update on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// Never sent (`drop`).
    Dropped,
    /// Sent after its successor (`reorder`).
    Late,
}

/// One generated MBP incremental.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedUpdate {
    /// 0, 1, ... per symbol.
    pub index: usize,
    pub seq_num: u64,
    pub prev_seq_num: u64,
    /// `(side, price, size)` texts as sent, bids first.
    pub levels: Vec<(Side, String, String)>,
    pub delivery: Delivery,
}

/// One accepted WebSocket connection.
#[derive(Clone, Debug)]
pub struct HuobiConnection {
    pub id: usize,
    /// `/feed` or `/ws`.
    pub path: String,
    /// Topics subscribed (acknowledged), in order.
    pub topics: Vec<String>,
    pub connected_at: Instant,
    /// Binary frames written (everything the server sent).
    pub frames_sent: usize,
    pub pings_sent: usize,
    /// Recorded frames replayed on this connection.
    pub replayed: usize,
    /// `req`s answered with a snapshot.
    pub reqs_answered: usize,
    pub active: bool,
    pub silent: bool,
    pub close_reason: Option<String>,
    /// Handshake attempt number ([`MockHuobiConfig::connection_faults`]).
    pub attempt: usize,
    /// Pushes (generated, injected or [`MockHuobi::send_binary`] frames) written.
    pub pushes_sent: usize,
    /// Stopped by `ConnectionFault::StallAfter` (also `silent`).
    pub stalled: bool,
    pub closed_at: Option<Instant>,
    /// Topics whose `sub` was refused on this connection.
    pub refused_topics: Vec<String>,
}

/// An `mbp.refresh.$n` push the mock sent.
#[derive(Clone, Debug, PartialEq)]
pub struct RefreshPush {
    pub seq_num: u64,
    pub levels: usize,
    /// The top-n book it carried.
    pub book: OrderBook,
}

/// A `{"pong": n}` received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HuobiPong {
    pub connection: usize,
    pub value: i64,
    /// Whether it answered a ping of this connection that was still outstanding.
    pub matched: bool,
}

// ---------------------------------------------------------------------------------------
// truth books

type Levels = BTreeMap<PriceKey, (String, String)>;

#[derive(Clone, Default)]
struct Book {
    bids: Levels,
    asks: Levels,
}

impl Book {
    fn side(&mut self, side: Side) -> &mut Levels {
        match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        }
    }

    fn set(&mut self, side: Side, price: &str, size: &str) {
        let key = PriceKey(price.parse().expect("numeric price"));
        let zero = size.parse::<f64>().map_or(true, |q| q == 0.0);
        if zero {
            self.side(side).remove(&key);
        } else {
            self.side(side)
                .insert(key, (price.to_owned(), size.to_owned()));
        }
    }

    fn to_order_book(&self) -> OrderBook {
        let mut book = OrderBook::new();
        for (side, levels) in [(Side::Bid, &self.bids), (Side::Ask, &self.asks)] {
            for (p, (_, q)) in levels {
                book.set(side, p.0, q.parse().expect("numeric size"));
            }
        }
        book
    }
}

/// A level as it was before an update touched it (`None`: absent).
type OldLevel = (Side, PriceKey, Option<(String, String)>);

/// What one update changed, to take it back for a lagging `req` reply.
struct Undo {
    prev_seq: u64,
    old: Vec<OldLevel>,
}

struct Truth {
    symbol: String,
    seq: u64,
    book: Book,
    history: VecDeque<Undo>,
    scale: u32,
    rng: StdRng,
    updates: Vec<GeneratedUpdate>,
    /// An update held back by `reorder`: (index, frame).
    late: Option<Vec<u8>>,
    reqs: usize,
    served: Vec<u64>,
    refreshes: Vec<RefreshPush>,
}

impl Truth {
    fn new(seed: &SeedBook, rng_seed: u64) -> Truth {
        let mut book = Book::default();
        for (p, q) in &seed.bids {
            book.set(Side::Bid, p, q);
        }
        for (p, q) in &seed.asks {
            book.set(Side::Ask, p, q);
        }
        let scale = seed
            .bids
            .iter()
            .chain(&seed.asks)
            .map(|(p, _)| scale_of(p))
            .max()
            .unwrap_or(2)
            .max(2);
        let mut h: u64 = rng_seed;
        for b in seed.symbol.bytes() {
            h = h.wrapping_mul(31).wrapping_add(u64::from(b));
        }
        Truth {
            symbol: seed.symbol.clone(),
            seq: seed.seq_num,
            book,
            history: VecDeque::new(),
            scale,
            rng: StdRng::seed_from_u64(h),
            updates: Vec::new(),
            late: None,
            reqs: 0,
            served: Vec::new(),
            refreshes: Vec::new(),
        }
    }

    fn best_ticks(&self, side: Side) -> Option<i64> {
        let levels = match side {
            Side::Bid => self.book.bids.iter().next_back(),
            Side::Ask => self.book.asks.iter().next(),
        };
        levels.map(|(_, (p, _))| ticks_of(p, self.scale))
    }

    fn random_size(&mut self) -> String {
        let magnitude = self.rng.random_range(1..=14u32);
        let ticks = self.rng.random_range(1..=10u64.pow(magnitude));
        java_decimal(ticks, 4)
    }

    /// One update following the documented rule; applies it and returns it with its frame.
    fn next_update(&mut self, cfg: &MbpStreamConfig) -> (GeneratedUpdate, String) {
        let prev = self.seq;
        let seq = prev + self.rng.random_range(1..=cfg.max_seq_step.max(1));
        let tick_by_tick = cfg.levels <= 20;
        let (mut do_bids, do_asks) = match self.rng.random_range(0..100) {
            0..5 if !tick_by_tick => (false, false),
            0..40 => (true, false),
            40..75 => (false, true),
            _ => (true, true),
        };
        if tick_by_tick && !do_asks {
            do_bids = true;
        }
        let mut undo = Undo {
            prev_seq: prev,
            old: Vec::new(),
        };
        let mut changed: [Vec<(String, String)>; 2] = [Vec::new(), Vec::new()];
        for (n, side) in [Side::Bid, Side::Ask].into_iter().enumerate() {
            if !(if side == Side::Bid { do_bids } else { do_asks }) {
                continue;
            }
            let mut touched: HashMap<PriceKey, usize> = HashMap::new();
            let mut set = |truth: &mut Truth,
                           price: String,
                           size: String,
                           changes: &mut Vec<(String, String)>| {
                let key = PriceKey(price.parse().expect("numeric"));
                match touched.get(&key) {
                    Some(&i) => changes[i] = (price.clone(), size.clone()),
                    None => {
                        undo.old
                            .push((side, key, truth.book.side(side).get(&key).cloned()));
                        touched.insert(key, changes.len());
                        changes.push((price.clone(), size.clone()));
                    }
                }
                truth.book.set(side, &price, &size);
            };
            let k = self.rng.random_range(1..=4);
            for _ in 0..k {
                let len = self.book.side(side).len();
                let op = self.rng.random_range(0..100);
                if op < 45 && len > 0 {
                    let i = self.rng.random_range(0..len);
                    let price = self
                        .book
                        .side(side)
                        .values()
                        .nth(i)
                        .map(|(p, _)| p.clone())
                        .expect("level");
                    let size = self.random_size();
                    set(self, price, size, &mut changed[n]);
                } else if op < 60 && len > 1 {
                    let i = self.rng.random_range(0..len);
                    let price = self
                        .book
                        .side(side)
                        .values()
                        .nth(i)
                        .map(|(p, _)| p.clone())
                        .expect("level");
                    set(self, price, REMOVED.into(), &mut changed[n]);
                } else {
                    let (bid, ask) = (self.best_ticks(Side::Bid), self.best_ticks(Side::Ask));
                    let ticks = match side {
                        Side::Bid => {
                            let base = bid.or(ask.map(|a| a - 1)).unwrap_or(1000);
                            let p = base + self.rng.random_range(-ADD_DEPTH..=2);
                            ask.map_or(p, |a| p.min(a - 1)).max(1)
                        }
                        Side::Ask => {
                            let base = ask.or(bid.map(|b| b + 1)).unwrap_or(1001);
                            let p = base + self.rng.random_range(-2..=ADD_DEPTH);
                            bid.map_or(p, |b| p.max(b + 1)).max(1)
                        }
                    };
                    let size = self.random_size();
                    set(
                        self,
                        java_decimal(ticks as u64, self.scale),
                        size,
                        &mut changed[n],
                    );
                }
            }
            // Keep the top `levels`: a level pushed out is removed in the same update.
            while self.book.side(side).len() > cfg.levels {
                let worst = match side {
                    Side::Bid => self.book.bids.values().next(),
                    Side::Ask => self.book.asks.values().next_back(),
                }
                .map(|(p, _)| p.clone())
                .expect("level");
                set(self, worst, REMOVED.into(), &mut changed[n]);
            }
        }
        self.seq = seq;
        self.history.push_back(undo);
        while self.history.len() > cfg.req_lag {
            self.history.pop_front();
        }
        let side_json = |key: &str, levels: &[(String, String)], changed: bool| -> Option<String> {
            if !changed && tick_by_tick {
                return None;
            }
            Some(format!("\"{key}\":{}", levels_json(levels)))
        };
        let mut tick = vec![
            format!("\"seqNum\":{seq}"),
            format!("\"prevSeqNum\":{prev}"),
        ];
        tick.extend(side_json("bids", &changed[0], do_bids));
        tick.extend(side_json("asks", &changed[1], do_asks));
        let frame = format!(
            "{{\"ch\":\"market.{}.mbp.{}\",\"ts\":{},\"tick\":{{{}}}}}",
            self.symbol,
            cfg.levels,
            now_ms(),
            tick.join(",")
        );
        let mut levels: Vec<(Side, String, String)> = changed[0]
            .iter()
            .map(|(p, q)| (Side::Bid, p.clone(), q.clone()))
            .collect();
        levels.extend(
            changed[1]
                .iter()
                .map(|(p, q)| (Side::Ask, p.clone(), q.clone())),
        );
        let update = GeneratedUpdate {
            index: self.updates.len(),
            seq_num: seq,
            prev_seq_num: prev,
            levels,
            delivery: Delivery::Sent,
        };
        (update, frame)
    }

    /// An `mbp.refresh.$n` push of the current top-n book, and that book.
    fn refresh(&self, n: usize) -> (String, OrderBook) {
        let bids: Vec<(String, String)> = self.book.bids.values().rev().take(n).cloned().collect();
        let asks: Vec<(String, String)> = self.book.asks.values().take(n).cloned().collect();
        let mut book = OrderBook::new();
        for (side, levels) in [(Side::Bid, &bids), (Side::Ask, &asks)] {
            for (p, q) in levels {
                book.apply(side, p, q);
            }
        }
        let text = format!(
            "{{\"ch\":\"market.{}.mbp.refresh.{n}\",\"ts\":{},\"tick\":{{\"seqNum\":{},\"bids\":{},\"asks\":{}}}}}",
            self.symbol,
            now_ms(),
            self.seq,
            levels_json(&bids),
            levels_json(&asks)
        );
        (text, book)
    }

    /// The `data` of a `req` reply: the book `req_lag` updates ago, best first.
    fn snapshot_data(&self) -> (u64, String) {
        let mut book = self.book.clone();
        let mut seq = self.seq;
        for u in self.history.iter().rev() {
            for (side, key, old) in u.old.iter().rev() {
                match old {
                    Some(level) => {
                        book.side(*side).insert(*key, level.clone());
                    }
                    None => {
                        book.side(*side).remove(key);
                    }
                }
            }
            seq = u.prev_seq;
        }
        let bids: Vec<(String, String)> = book.bids.values().rev().cloned().collect();
        let asks: Vec<(String, String)> = book.asks.values().cloned().collect();
        (
            seq,
            format!(
                "{{\"seqNum\":{seq},\"bids\":{},\"asks\":{}}}",
                levels_json(&bids),
                levels_json(&asks)
            ),
        )
    }
}

/// `[[p,q],...]` with the texts as JSON numbers.
fn levels_json(levels: &[(String, String)]) -> String {
    let parts: Vec<String> = levels.iter().map(|(p, q)| format!("[{p},{q}]")).collect();
    format!("[{}]", parts.join(","))
}

// ---------------------------------------------------------------------------------------
// shared state

enum Out {
    Frame(Vec<u8>),
}

struct Conn {
    info: HuobiConnection,
    tx: mpsc::UnboundedSender<Out>,
    outstanding_pings: Vec<i64>,
    last_req_at: Option<Instant>,
    first_sub_at: Option<Instant>,
}

struct State {
    truths: BTreeMap<String, Truth>,
    /// Symbols that may be subscribed.
    known: HashSet<String>,
    conns: Vec<Conn>,
    pongs: Vec<HuobiPong>,
    client_messages: Vec<(usize, String)>,
    req_violations: usize,
    ignore_pongs: bool,
    stream_start: Option<Instant>,
    stream_done: bool,
    last_ping: i64,
    /// Updates generated per symbol so far, and that count at the last acknowledged mbp `sub`.
    generated: usize,
    generated_at_last_sub: usize,
    handshake_attempts: usize,
    refused: usize,
    reqs_failed: usize,
}

struct Shared {
    cfg: MockHuobiConfig,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        crate::lock(&self.state)
    }
}

/// The running mock: a WebSocket port (`/feed`, `/ws`) and a REST port on 127.0.0.1. Stops
/// when dropped.
pub struct MockHuobi {
    shared: Arc<Shared>,
    ws_addr: std::net::SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    rest: HttpServer,
}

impl MockHuobi {
    /// Validates `config` (panics naming what is wrong: a broken test input is reported at
    /// setup, never inside a server task) and starts the servers and the stream generator.
    pub async fn start(config: MockHuobiConfig) -> MockHuobi {
        assert!(
            [5, 20, 150, 400].contains(&config.stream.levels),
            "MockHuobi: levels {}",
            config.stream.levels
        );
        let mut truths = BTreeMap::new();
        for seed in &config.books {
            assert!(
                !seed.bids.is_empty() && !seed.asks.is_empty(),
                "MockHuobi: seed book of {} needs both sides",
                seed.symbol
            );
            let prev = truths.insert(seed.symbol.clone(), Truth::new(seed, config.stream.seed));
            assert!(
                prev.is_none(),
                "MockHuobi: two seed books for {}",
                seed.symbol
            );
        }
        let injected = config.stream.inject.iter().map(|(s, i, _)| (s, i));
        for (sym, _) in config
            .stream
            .drop
            .iter()
            .chain(&config.stream.reorder)
            .chain(&config.stream.duplicate)
            .map(|(s, i)| (s, i))
            .chain(injected)
        {
            assert!(
                truths.contains_key(sym),
                "MockHuobi: drop/reorder/duplicate/inject for {sym}, which has no seed book"
            );
        }
        let mut known: HashSet<String> = truths.keys().cloned().collect();
        for r in &config.replay {
            if let Some(sym) = r.topic.split('.').nth(1) {
                known.insert(sym.to_owned());
            }
        }
        if let Some(body) = &config.symbols_body {
            let v: Value = serde_json::from_str(body).expect("MockHuobi: symbols_body is JSON");
            for s in v["data"].as_array().into_iter().flatten() {
                if let Some(sym) = s["symbol"].as_str() {
                    known.insert(sym.to_owned());
                }
            }
        }
        let shared = Arc::new(Shared {
            cfg: config,
            state: Mutex::new(State {
                truths,
                known,
                conns: Vec::new(),
                pongs: Vec::new(),
                client_messages: Vec::new(),
                req_violations: 0,
                ignore_pongs: false,
                stream_start: None,
                stream_done: false,
                last_ping: 0,
                generated: 0,
                generated_at_last_sub: 0,
                handshake_attempts: 0,
                refused: 0,
                reqs_failed: 0,
            }),
        });
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind 127.0.0.1:0 for the mock Huobi WebSocket");
        let ws_addr = listener
            .local_addr()
            .expect("local address of the mock Huobi WebSocket");
        let tasks = vec![
            tokio::spawn(accept_loop(listener, Arc::clone(&shared))),
            tokio::spawn(generate(Arc::clone(&shared))),
        ];
        let rest_shared = Arc::clone(&shared);
        let rest = HttpServer::start(move |req| rest_answer(&rest_shared, req)).await;
        MockHuobi {
            shared,
            ws_addr,
            tasks,
            rest,
        }
    }

    /// `ws://127.0.0.1:P`: the host part; the connector appends `/feed` or `/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.ws_addr)
    }

    /// `http://127.0.0.1:Q` (the REST base: `/v1/common/symbols`).
    pub fn rest_url(&self) -> String {
        self.rest.url()
    }

    pub fn rest_requests(&self) -> Vec<Request> {
        self.rest.requests()
    }

    /// The truth book of a generated stream (every update applied, sent or not).
    pub fn book(&self, symbol: &str) -> OrderBook {
        self.shared
            .state()
            .truths
            .get(symbol)
            .unwrap_or_else(|| panic!("MockHuobi::book: no seed book for {symbol}"))
            .book
            .to_order_book()
    }

    /// The truth's current `seqNum`.
    pub fn seq_num(&self, symbol: &str) -> u64 {
        self.shared.state().truths[symbol].seq
    }

    /// Every update generated for `symbol`, in order.
    pub fn updates(&self, symbol: &str) -> Vec<GeneratedUpdate> {
        self.shared.state().truths[symbol].updates.clone()
    }

    /// `req`s received for `symbol` (answered or refused).
    pub fn req_count(&self, symbol: &str) -> usize {
        self.shared.state().truths.get(symbol).map_or(0, |t| t.reqs)
    }

    /// The `seqNum`s of the snapshots answered to `req`s for `symbol`, in order.
    pub fn snapshots_served(&self, symbol: &str) -> Vec<u64> {
        self.shared
            .state()
            .truths
            .get(symbol)
            .map_or_else(Vec::new, |t| t.served.clone())
    }

    /// The `mbp.refresh` pushes sent for `symbol`, in order.
    pub fn refreshes(&self, symbol: &str) -> Vec<RefreshPush> {
        self.shared
            .state()
            .truths
            .get(symbol)
            .map_or_else(Vec::new, |t| t.refreshes.clone())
    }

    /// `req`s refused because they came within 100 ms of the previous one on a connection.
    pub fn req_violations(&self) -> usize {
        self.shared.state().req_violations
    }

    /// `req`s answered with an error from [`MockHuobiConfig::fail_reqs`].
    pub fn reqs_failed(&self) -> usize {
        self.shared.state().reqs_failed
    }

    /// WebSocket handshakes on `/feed` or `/ws` (refused ones included).
    pub fn handshake_attempts(&self) -> usize {
        self.shared.state().handshake_attempts
    }

    /// Handshakes refused by [`ConnectionFault::Refuse`].
    pub fn refused_connections(&self) -> usize {
        self.shared.state().refused
    }

    pub fn connections(&self) -> Vec<HuobiConnection> {
        self.shared
            .state()
            .conns
            .iter()
            .map(|c| c.info.clone())
            .collect()
    }

    pub fn active_connections(&self) -> Vec<HuobiConnection> {
        self.connections()
            .into_iter()
            .filter(|c| c.active)
            .collect()
    }

    pub fn pongs(&self) -> Vec<HuobiPong> {
        self.shared.state().pongs.clone()
    }

    pub fn client_messages(&self) -> Vec<(usize, String)> {
        self.shared.state().client_messages.clone()
    }

    /// Binary frames written over all connections.
    pub fn frames_sent(&self) -> usize {
        self.shared
            .state()
            .conns
            .iter()
            .map(|c| c.info.frames_sent)
            .sum()
    }

    /// Recorded frames replayed over all connections.
    pub fn replayed(&self) -> usize {
        self.shared
            .state()
            .conns
            .iter()
            .map(|c| c.info.replayed)
            .sum()
    }

    /// Whether every generated stream has produced all its updates.
    pub fn stream_done(&self) -> bool {
        self.shared.state().stream_done
    }

    /// Waits until [`MockHuobi::stream_done`] or `timeout`; returns its last value.
    pub async fn wait_stream_done(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |m| m.stream_done()).await
    }

    /// Waits until at least `n` connections were accepted; returns how many were.
    pub async fn wait_for_connections(&self, n: usize, timeout: Duration) -> usize {
        self.wait_until(timeout, |m| m.connections().len() >= n)
            .await;
        self.connections().len()
    }

    /// Waits until at least `n` pongs arrived; returns how many did.
    pub async fn wait_for_pongs(&self, n: usize, timeout: Duration) -> usize {
        self.wait_until(timeout, |m| m.pongs().len() >= n).await;
        self.pongs().len()
    }

    /// Polls `cond` until it holds or `timeout` passes; returns its last value.
    pub async fn wait_until(&self, timeout: Duration, cond: impl Fn(&MockHuobi) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// From now on the open connections send nothing (no ping, no data, no reply) but stay
    /// open: a dead connection as the client sees it. New connections are served normally.
    pub fn go_silent(&self) {
        for c in self
            .shared
            .state()
            .conns
            .iter_mut()
            .filter(|c| c.info.active)
        {
            c.info.silent = true;
        }
    }

    /// While true, pongs are recorded but do not count: the server closes every connection
    /// after two pings, as Huobi does with a client that stopped answering.
    pub fn set_ignore_pongs(&self, ignore: bool) {
        self.shared.state().ignore_pongs = ignore;
    }

    /// Sends `frame` as one binary frame on every open, non-silent connection on `path`
    /// (`/feed` or `/ws`); returns on how many.
    pub fn send_binary(&self, path: &str, frame: Vec<u8>) -> usize {
        let state = self.shared.state();
        let mut n = 0;
        for c in state
            .conns
            .iter()
            .filter(|c| c.info.active && !c.info.silent && c.info.path == path)
        {
            if c.tx.send(Out::Frame(frame.clone())).is_ok() {
                n += 1;
            }
        }
        n
    }
}

impl Drop for MockHuobi {
    fn drop(&mut self) {
        // The accept future owns the connection tasks: aborting it ends them all.
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn rest_answer(shared: &Shared, req: &Request) -> Response {
    match (req.method.as_str(), req.path_only()) {
        ("GET", "/v1/common/symbols") => match &shared.cfg.symbols_body {
            Some(body) => Response::json(200, body.clone()),
            None => Response::empty(404),
        },
        _ => Response::empty(404),
    }
}

// ---------------------------------------------------------------------------------------
// the stream generator

async fn generate(shared: Arc<Shared>) {
    // Wait for the first mbp subscription (the task is aborted with the mock).
    let start = loop {
        if let Some(at) = shared.state().stream_start {
            break at;
        }
        tokio::time::sleep(POLL).await;
    };
    tokio::time::sleep_until(start + shared.cfg.start_delay).await;
    let cfg = &shared.cfg.stream;
    let mut tick = tokio::time::interval(cfg.interval.max(Duration::from_micros(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mbp_topic = format!(".mbp.{}", cfg.levels);
    loop {
        {
            let state = shared.state();
            if state.generated >= cfg.updates {
                let heard = state.conns.iter().any(|c| {
                    c.info.active
                        && !c.info.silent
                        && c.info.topics.iter().any(|t| t.ends_with(&mbp_topic))
                });
                if cfg.tail == 0
                    || (heard && state.generated >= state.generated_at_last_sub + cfg.tail)
                {
                    break;
                }
            }
        }
        tick.tick().await;
        let mut guard = shared.state();
        let state = &mut *guard;
        state.generated += 1;
        for truth in state.truths.values_mut() {
            let (mut update, text) = truth.next_update(cfg);
            let topic = format!("market.{}.mbp.{}", truth.symbol, cfg.levels);
            let frame = gzip(text.as_bytes());
            let is = |list: &[(String, usize)]| {
                list.iter()
                    .any(|(s, i)| *s == truth.symbol && *i == update.index)
            };
            if is(&cfg.drop) {
                update.delivery = Delivery::Dropped;
            } else if is(&cfg.reorder) {
                update.delivery = Delivery::Late;
                truth.late = Some(frame);
            } else {
                if is(&cfg.duplicate) {
                    deliver(&state.conns, &topic, frame.clone());
                }
                deliver(&state.conns, &topic, frame);
                if let Some(late) = truth.late.take() {
                    deliver(&state.conns, &topic, late);
                }
            }
            for (_, _, wire) in cfg
                .inject
                .iter()
                .filter(|(s, i, _)| *s == truth.symbol && *i == update.index)
            {
                deliver(&state.conns, &topic, wire.clone());
            }
            truth.updates.push(update);
            if truth.updates.len() % shared.cfg.refresh_every.max(1) == 0 {
                for n in [5, 10, 20] {
                    let topic = format!("market.{}.mbp.refresh.{n}", truth.symbol);
                    if state
                        .conns
                        .iter()
                        .any(|c| c.info.active && c.info.topics.contains(&topic))
                    {
                        let (text, book) = truth.refresh(n);
                        deliver(&state.conns, &topic, gzip(text.as_bytes()));
                        truth.refreshes.push(RefreshPush {
                            seq_num: truth.seq,
                            levels: n,
                            book,
                        });
                    }
                }
            }
        }
    }
    shared.state().stream_done = true;
}

fn deliver(conns: &[Conn], topic: &str, frame: Vec<u8>) {
    for c in conns
        .iter()
        .filter(|c| c.info.active && !c.info.silent && c.info.topics.iter().any(|t| t == topic))
    {
        let _ = c.tx.send(Out::Frame(frame.clone()));
    }
}

// ---------------------------------------------------------------------------------------
// WebSocket

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    crate::accept::serve_each(listener, "ds-tests mock huobi", |stream| serve_ws(stream, Arc::clone(&shared))).await;
}

/// The answer to one client message (already a JSON text), or `None` for a pong.
fn client_message(shared: &Shared, conn: usize, text: &str) -> Option<String> {
    let mut state = shared.state();
    let state = &mut *state;
    state.client_messages.push((conn, text.to_owned()));
    let error = |id: &Value, msg: &str| {
        Some(format!(
            r#"{{"status":"error","ts":{},"id":{id},"err-code":"bad-request","err-msg":"{msg}"}}"#,
            now_ms()
        ))
    };
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return error(&Value::Null, "not json string");
    };
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    if let Some(n) = v.get("pong").and_then(Value::as_i64) {
        let ignore = state.ignore_pongs;
        let c = &mut state.conns[conn];
        let matched = !ignore && c.outstanding_pings.contains(&n);
        if matched {
            c.outstanding_pings.retain(|p| *p > n);
        }
        state.pongs.push(HuobiPong {
            connection: conn,
            value: n,
            matched,
        });
        return None;
    }
    if let Some(n) = v.get("ping").and_then(Value::as_i64) {
        return Some(format!(r#"{{"pong":{n}}}"#));
    }
    let path = state.conns[conn].info.path.clone();
    let levels = shared.cfg.stream.levels;
    // Which topics this path serves, and whether the symbol exists.
    let check = |topic: &str, state: &State| -> Result<(String, bool), String> {
        let mut parts = topic.splitn(3, '.');
        let (Some("market"), Some(sym), Some(channel)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("invalid topic {topic}"));
        };
        let mbp = channel == format!("mbp.{levels}");
        let ws_channel = channel == "depth.step0"
            || channel == "trade.detail"
            || ["5", "10", "20"]
                .iter()
                .any(|n| channel == format!("mbp.refresh.{n}"));
        let served = if path == "/feed" { mbp } else { ws_channel };
        if !served {
            return Err(format!("invalid topic {topic}"));
        }
        if !state.known.contains(sym) {
            return Err(format!("invalid symbol {sym}"));
        }
        Ok((sym.to_owned(), mbp))
    };
    if let Some(topic) = v.get("sub").and_then(Value::as_str) {
        let attempt = state.conns[conn].info.attempt;
        if shared
            .cfg
            .reject_subs
            .iter()
            .any(|(a, t)| *a == attempt && t == topic)
        {
            state.conns[conn].info.refused_topics.push(topic.to_owned());
            return error(&id, &format!("invalid topic {topic}"));
        }
        return match check(topic, state) {
            Ok((_, mbp)) => {
                let now = Instant::now();
                let c = &mut state.conns[conn];
                if !c.info.topics.iter().any(|t| t == topic) {
                    c.info.topics.push(topic.to_owned());
                }
                c.first_sub_at.get_or_insert(now);
                if mbp {
                    state.stream_start.get_or_insert(now);
                    state.generated_at_last_sub = state.generated;
                }
                Some(format!(
                    r#"{{"id":{id},"status":"ok","subbed":"{topic}","ts":{}}}"#,
                    now_ms()
                ))
            }
            Err(msg) => error(&id, &msg),
        };
    }
    if let Some(topic) = v.get("unsub").and_then(Value::as_str) {
        state.conns[conn].info.topics.retain(|t| t != topic);
        return Some(format!(
            r#"{{"id":{id},"status":"ok","unsubbed":"{topic}","ts":{}}}"#,
            now_ms()
        ));
    }
    if let Some(topic) = v.get("req").and_then(Value::as_str) {
        let sym = match check(topic, state) {
            Ok((sym, true)) => sym,
            Ok(_) => return error(&id, &format!("invalid topic {topic}")),
            Err(msg) => return error(&id, &msg),
        };
        let now = Instant::now();
        let too_soon = state.conns[conn]
            .last_req_at
            .is_some_and(|at| now.duration_since(at) < MIN_REQ_GAP);
        state.conns[conn].last_req_at = Some(now);
        let Some(truth) = state.truths.get_mut(&sym) else {
            return error(&id, &format!("invalid symbol {sym}"));
        };
        truth.reqs += 1;
        if too_soon {
            state.req_violations += 1;
            return error(&id, "429 too many request");
        }
        if let Some((code, msg)) = shared.cfg.fail_reqs.get(state.reqs_failed) {
            state.reqs_failed += 1;
            return Some(format!(
                r#"{{"status":"error","ts":{},"id":{id},"err-code":"{code}","err-msg":"{msg}"}}"#,
                now_ms()
            ));
        }
        let (seq, data) = truth.snapshot_data();
        truth.served.push(seq);
        state.conns[conn].info.reqs_answered += 1;
        return Some(format!(
            r#"{{"id":{id},"rep":"{topic}","status":"ok","ts":{},"data":{data}}}"#,
            now_ms()
        ));
    }
    error(&id, "invalid request")
}

fn close_conn(shared: &Shared, id: usize, reason: String) {
    let mut state = shared.state();
    let c = &mut state.conns[id];
    c.info.active = false;
    c.info.closed_at.get_or_insert_with(Instant::now);
    c.info.close_reason.get_or_insert(reason);
}

async fn serve_ws(stream: TcpStream, shared: Arc<Shared>) {
    let mut target = String::new();
    let mut attempt = 0;
    let mut fault = None;
    // The callback's signature is tungstenite's; its large Err type is not ours to box.
    #[allow(clippy::result_large_err)]
    let callback = |req: &WsRequest, resp: WsResponse| -> Result<WsResponse, ErrorResponse> {
        target = req.uri().path().to_owned();
        if target == "/ws" || target == "/feed" {
            let mut state = shared.state();
            attempt = state.handshake_attempts;
            state.handshake_attempts += 1;
            fault = shared.cfg.connection_faults.get(&attempt).copied();
            if fault == Some(ConnectionFault::Refuse) {
                state.refused += 1;
                return Err(crate::accept::refusal(StatusCode::SERVICE_UNAVAILABLE, format!("mock refuses attempt {attempt}")));
            }
            Ok(resp)
        } else {
            Err(crate::accept::refusal(StatusCode::BAD_REQUEST, format!(
                "mock Huobi serves /ws and /feed, not {target}"
            )))
        }
    };
    let Some(ws) = crate::accept::websocket(stream, "ds-tests mock huobi", callback).await else {
        return;
    };
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let connected_at = Instant::now();
    let id = {
        let mut state = shared.state();
        let id = state.conns.len();
        state.conns.push(Conn {
            info: HuobiConnection {
                id,
                path: target.clone(),
                topics: Vec::new(),
                connected_at,
                frames_sent: 0,
                pings_sent: 0,
                replayed: 0,
                reqs_answered: 0,
                active: true,
                silent: false,
                close_reason: None,
                attempt,
                pushes_sent: 0,
                stalled: false,
                closed_at: None,
                refused_topics: Vec::new(),
            },
            tx: out_tx,
            outstanding_pings: Vec::new(),
            last_req_at: None,
            first_sub_at: None,
        });
        id
    };
    let (mut tx, mut rx) = ws.split();
    let cfg = &shared.cfg;
    let mut ping = tokio::time::interval_at(
        connected_at + cfg.ping_interval,
        cfg.ping_interval.max(Duration::from_millis(1)),
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut replay_pos = 0;
    let mut replay_at: Option<Instant> = None;
    let silent = |shared: &Shared| shared.state().conns[id].info.silent;

    let reason = loop {
        let replay_due = replay_at.filter(|_| replay_pos < cfg.replay.len());
        let frame: Option<Vec<u8>> = tokio::select! {
            incoming = rx.next() => match incoming {
                None => break "peer closed the TCP connection".to_owned(),
                Some(Err(e)) => break format!("read error: {e}"),
                Some(Ok(Message::Text(text))) => {
                    let reply = client_message(&shared, id, text.as_str());
                    if replay_at.is_none() {
                        replay_at = shared.state().conns[id].first_sub_at.map(|at| at + cfg.start_delay);
                    }
                    match reply {
                        Some(r) if !silent(&shared) => Some(gzip(r.as_bytes())),
                        _ => None,
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let _ = tx.flush().await;
                    break format!("peer sent Close {frame:?}");
                }
                Some(Ok(_)) => None, // binary and protocol frames: Huobi clients send JSON text
            },
            Some(Out::Frame(frame)) = out_rx.recv() => {
                if silent(&shared) {
                    None
                } else {
                    if let Err(e) = tx.send(Message::binary(frame)).await {
                        break format!("write error: {e}");
                    }
                    let sent = {
                        let mut state = shared.state();
                        let c = &mut state.conns[id].info;
                        c.frames_sent += 1;
                        c.pushes_sent += 1;
                        c.pushes_sent
                    };
                    match fault {
                        Some(ConnectionFault::CloseAfter(n)) if sent >= n => {
                            // Dropping both halves drops the TCP connection without a Close.
                            break format!("mock close_after {n} pushes");
                        }
                        Some(ConnectionFault::StallAfter(n)) if sent >= n => {
                            let mut state = shared.state();
                            let c = &mut state.conns[id].info;
                            c.stalled = true;
                            c.silent = true;
                        }
                        _ => {}
                    }
                    None
                }
            }
            _ = ping.tick() => {
                // Decided under the lock, acted on after it (a guard must not live across an await).
                let ping = {
                    let mut state = shared.state();
                    let st = &mut *state;
                    let c = &mut st.conns[id];
                    if c.info.silent {
                        Ok(None)
                    } else if c.outstanding_pings.len() >= MISSED_PONGS_BEFORE_CLOSE {
                        Err(())
                    } else {
                        let n = now_ms().max(st.last_ping + 1);
                        st.last_ping = n;
                        let c = &mut st.conns[id];
                        c.outstanding_pings.push(n);
                        c.info.pings_sent += 1;
                        Ok(Some(gzip(format!(r#"{{"ping":{n}}}"#).as_bytes())))
                    }
                };
                match ping {
                    Ok(frame) => frame,
                    Err(()) => {
                        let close = CloseFrame { code: CloseCode::Normal, reason: "heartbeat timeout".into() };
                        let _ = tx.send(Message::Close(Some(close))).await;
                        break "two pings without a pong".to_owned();
                    }
                }
            }
            _ = tokio::time::sleep_until(replay_due.unwrap_or_else(Instant::now)), if replay_due.is_some() => {
                let r = &cfg.replay[replay_pos];
                replay_pos += 1;
                replay_at = Some(Instant::now() + cfg.replay_interval);
                let mut state = shared.state();
                let c = &mut state.conns[id];
                if !c.info.silent && c.info.topics.contains(&r.topic) {
                    c.info.replayed += 1;
                    Some(r.wire.clone())
                } else {
                    None
                }
            }
        };
        if let Some(bytes) = frame {
            if let Err(e) = tx.send(Message::binary(bytes)).await {
                break format!("write error: {e}");
            }
            shared.state().conns[id].info.frames_sent += 1;
        }
    };
    close_conn(&shared, id, reason);
}

// ---------------------------------------------------------------------------------------
// reference

/// What a correct client ends with after a `req` snapshot and the updates it received.
#[derive(Clone, Debug, PartialEq)]
pub struct HuobiReference {
    /// The updates applied after the snapshot (`seqNum` > the snapshot's), in order.
    pub applied: Vec<GeneratedUpdate>,
    pub book: OrderBook,
    /// `seqNum` of the first update that did not chain, if any (nothing after it applied).
    pub gap_at: Option<u64>,
}

impl HuobiReference {
    pub fn applied_levels(&self) -> usize {
        self.applied.iter().map(|u| u.levels.len()).sum()
    }
}

/// Applies Huobi's rule, written independently of the connector: start from `book` at
/// `snapshot_seq`, skip updates with `seqNum <= snapshot_seq`, the first applied must have
/// `prevSeqNum <= snapshot_seq`, every later one `prevSeqNum ==` the previous `seqNum`.
pub fn huobi_reference(
    snapshot_seq: u64,
    mut book: OrderBook,
    updates: &[GeneratedUpdate],
) -> HuobiReference {
    let mut applied: Vec<GeneratedUpdate> = Vec::new();
    let mut last = snapshot_seq;
    for u in updates {
        if u.seq_num <= last {
            continue;
        }
        let chains = if applied.is_empty() {
            u.prev_seq_num <= last
        } else {
            u.prev_seq_num == last
        };
        if !chains {
            return HuobiReference {
                applied,
                book,
                gap_at: Some(u.seq_num),
            };
        }
        for (side, p, q) in &u.levels {
            book.apply(*side, p, q);
        }
        last = u.seq_num;
        applied.push(u.clone());
    }
    HuobiReference {
        applied,
        book,
        gap_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream::{SplitSink, SplitStream};
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;
    const WAIT: Duration = Duration::from_secs(20);

    async fn connect(url: &str) -> Client {
        tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
            .0
    }

    /// Reads frames until `n` JSON messages satisfying `keep` were received, answering pings
    /// like a well-behaved client; every frame must be binary gzip. Returns the kept texts and
    /// every text seen.
    async fn read_until(
        tx: &mut SplitSink<Client, Message>,
        rx: &mut SplitStream<Client>,
        n: usize,
        keep: impl Fn(&Value) -> bool,
    ) -> (Vec<String>, Vec<String>) {
        let (mut kept, mut all) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + WAIT;
        while kept.len() < n {
            let msg = tokio::time::timeout_at(deadline, rx.next())
                .await
                .expect("frames in time")
                .expect("open")
                .expect("frame");
            let Message::Binary(bytes) = msg else {
                panic!("Huobi frames are binary: {msg:?}")
            };
            assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip");
            let text = String::from_utf8(gunzip(&bytes)).expect("utf-8");
            let v: Value = serde_json::from_str(&text).expect("JSON");
            if let Some(n) = v.get("ping") {
                tx.send(Message::text(format!(r#"{{"pong":{n}}}"#)))
                    .await
                    .expect("pong");
            }
            if keep(&v) {
                kept.push(text.clone());
            }
            all.push(text);
        }
        (kept, all)
    }

    fn seed(symbol: &str, seq: u64) -> SeedBook {
        let lvl = |p: &str, q: &str| (p.to_owned(), q.to_owned());
        SeedBook {
            symbol: symbol.into(),
            seq_num: seq,
            bids: vec![lvl("9.121E-7", "92730.24"), lvl("9.12E-7", "66053.68")],
            asks: vec![lvl("9.28E-7", "4342.25")],
        }
    }

    #[test]
    fn numbers_are_written_like_java() {
        for (ticks, scale, want) in [
            (9121, 10, "9.121E-7"),
            (5017125, 2, "50171.25"),
            (716, 0, "716.0"),
            (1, 10, "1.0E-10"),
            (51598, 6, "0.051598"),
            (54329174972728, 0, "5.4329174972728E13"),
            (10, 4, "0.001"),
            (1, 4, "1.0E-4"),
            (0, 3, "0.0"),
        ] {
            assert_eq!(java_decimal(ticks, scale), want, "{ticks} / 10^{scale}");
            if ticks > 0 {
                assert_eq!(ticks_of(want, scale), ticks as i64, "{want}");
            }
        }
        assert_eq!(scale_of("9.121E-7"), 10);
        assert_eq!(scale_of("716.0"), 1);
        assert_eq!(
            number_pairs(
                r#"{"bids":[[9.121E-7,92730.24],[1.0E-10,2.2E8]],"asks":[]}"#,
                "bids"
            ),
            [
                ("9.121E-7".to_owned(), "92730.24".to_owned()),
                ("1.0E-10".into(), "2.2E8".into())
            ]
        );
        assert_eq!(base64_decode("H4sI"), [0x1f, 0x8b, 0x08]);
    }

    #[test]
    fn a_bomb_is_small_and_inflates_to_its_size() {
        let bomb = gzip_bomb(8 << 20);
        assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
        assert_eq!(gunzip(&bomb).len(), 8 << 20);
    }

    #[tokio::test]
    async fn replays_the_capture_verbatim_with_acks_and_pings() {
        let Some(cap) = HuobiCapture::load() else {
            return;
        };
        assert_eq!((cap.pushes.len(), cap.symbols.len()), (292 + 44, 10));
        let trio: Vec<ReplayFrame> = cap
            .pushes
            .iter()
            .filter(|p| p.topic.starts_with("market.trioeth."))
            .cloned()
            .collect();
        let mock = MockHuobi::start(MockHuobiConfig {
            replay: cap.pushes.clone(),
            ping_interval: Duration::from_millis(100),
            ..Default::default()
        })
        .await;
        let (mut tx, mut rx) = connect(&format!("{}/ws", mock.ws_url())).await.split();
        for (i, t) in ["market.trioeth.depth.step0", "market.trioeth.trade.detail"]
            .iter()
            .enumerate()
        {
            tx.send(Message::text(format!(r#"{{"sub":"{t}","id":{}}}"#, i + 1)))
                .await
                .unwrap();
        }
        let (pushes, all) =
            read_until(&mut tx, &mut rx, trio.len(), |v| v.get("ch").is_some()).await;
        let want: Vec<&str> = trio.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(pushes, want, "recorded order, only the subscribed topics");
        let ack: Value =
            serde_json::from_str(all.iter().find(|t| t.contains("subbed")).expect("an ack"))
                .unwrap();
        assert_eq!(
            (
                ack["id"].as_i64(),
                ack["status"].as_str(),
                ack["subbed"].as_str()
            ),
            (Some(1), Some("ok"), Some("market.trioeth.depth.step0"))
        );
        assert_eq!(mock.replayed(), trio.len());
        // Pings were answered while reading (the replay takes longer than two ping periods,
        // so the connection would have been closed otherwise); the mock matched every pong.
        read_until(&mut tx, &mut rx, 2, |v| v.get("ping").is_some()).await;
        assert!(mock.wait_for_pongs(2, WAIT).await >= 2);
        assert!(mock.pongs().iter().all(|p| p.matched), "{:?}", mock.pongs());
        // A /ws connection may not take mbp; unknown symbols are refused.
        tx.send(Message::text(
            r#"{"sub":"market.trioeth.mbp.150","id":"x"}"#,
        ))
        .await
        .unwrap();
        tx.send(Message::text(
            r#"{"sub":"market.nope.trade.detail","id":4}"#,
        ))
        .await
        .unwrap();
        let (errors, _) = read_until(&mut tx, &mut rx, 2, |v| v["status"] == "error").await;
        assert!(
            errors[0].contains(r#""id":"x""#) && errors[0].contains("invalid topic"),
            "{}",
            errors[0]
        );
        assert!(errors[1].contains("invalid symbol nope"), "{}", errors[1]);
    }

    #[tokio::test]
    async fn generated_stream_chains_and_req_answers_the_lagged_truth() {
        let stream = MbpStreamConfig {
            updates: 300,
            interval: Duration::from_millis(1),
            req_lag: 4,
            ..Default::default()
        };
        let mock = MockHuobi::start(MockHuobiConfig {
            books: vec![seed("trioeth", 1000)],
            stream,
            ping_interval: Duration::from_secs(60),
            start_delay: Duration::from_millis(50),
            ..Default::default()
        })
        .await;
        let (mut tx, mut rx) = connect(&format!("{}/feed", mock.ws_url())).await.split();
        tx.send(Message::text(r#"{"sub":"market.trioeth.mbp.150","id":1}"#))
            .await
            .unwrap();
        let (updates, _) = read_until(&mut tx, &mut rx, 300, |v| v.get("ch").is_some()).await;
        assert!(mock.wait_stream_done(WAIT).await);
        let generated = mock.updates("trioeth");
        assert_eq!(generated.len(), 300);
        let mut prev = 1000;
        let mut steps_above_one = 0;
        let mut empty = 0;
        for (u, text) in generated.iter().zip(&updates) {
            assert_eq!(u.prev_seq_num, prev, "prevSeqNum chains");
            steps_above_one += usize::from(u.seq_num - u.prev_seq_num > 1);
            empty += usize::from(u.levels.is_empty());
            prev = u.seq_num;
            assert!(
                text.contains(&format!(
                    "\"seqNum\":{},\"prevSeqNum\":{}",
                    u.seq_num, u.prev_seq_num
                )),
                "{text}"
            );
            assert!(
                text.contains("\"bids\":[") && text.contains("\"asks\":["),
                "150 levels: both keys, [] when unchanged: {text}"
            );
        }
        assert!(
            steps_above_one > 100 && empty > 0,
            "{steps_above_one} {empty}"
        );
        // The truth equals the reference over every update; it never crosses.
        let start = {
            let mut b = OrderBook::new();
            b.apply(Side::Bid, "9.121E-7", "92730.24");
            b.apply(Side::Bid, "9.12E-7", "66053.68");
            b.apply(Side::Ask, "9.28E-7", "4342.25");
            b
        };
        let reference = huobi_reference(1000, start, &generated);
        assert_eq!((reference.applied.len(), reference.gap_at), (300, None));
        assert_eq!(mock.book("trioeth"), reference.book);
        assert!(!reference.book.is_crossed());
        // req: the book 4 updates ago, best first; a second req within 100 ms is refused.
        tx.send(Message::text(r#"{"req":"market.trioeth.mbp.150","id":7}"#))
            .await
            .unwrap();
        tx.send(Message::text(r#"{"req":"market.trioeth.mbp.150","id":8}"#))
            .await
            .unwrap();
        let (replies, _) = read_until(&mut tx, &mut rx, 2, |v| v.get("id").is_some()).await;
        let rep: Value = serde_json::from_str(&replies[0]).unwrap();
        assert_eq!(
            (rep["id"].as_i64(), rep["rep"].as_str()),
            (Some(7), Some("market.trioeth.mbp.150"))
        );
        let s = rep["data"]["seqNum"].as_u64().unwrap();
        assert_eq!(s, generated[295].seq_num);
        let mut from_rep = OrderBook::new();
        for (side, key) in [(Side::Bid, "bids"), (Side::Ask, "asks")] {
            for (p, q) in number_pairs(&replies[0], key) {
                from_rep.apply(side, &p, &q);
            }
        }
        let lagged = huobi_reference(s, from_rep, &generated);
        assert_eq!(lagged.applied.len(), 4);
        assert_eq!(
            lagged.book,
            mock.book("trioeth"),
            "lagged snapshot + the last 4 updates = the truth"
        );
        assert!(
            replies[1].contains("429 too many request"),
            "{}",
            replies[1]
        );
        assert_eq!(
            (
                mock.req_violations(),
                mock.req_count("trioeth"),
                mock.snapshots_served("trioeth")
            ),
            (1, 2, vec![s])
        );
        // /feed does not serve the /ws channels.
        tx.send(Message::text(
            r#"{"sub":"market.trioeth.depth.step0","id":9}"#,
        ))
        .await
        .unwrap();
        let (err, _) = read_until(&mut tx, &mut rx, 1, |v| v["status"] == "error").await;
        assert!(err[0].contains("invalid topic"), "{}", err[0]);
    }

    #[tokio::test]
    async fn drop_and_reorder_break_the_chain_on_the_wire_only() {
        let stream = MbpStreamConfig {
            levels: 20,
            updates: 40,
            interval: Duration::from_millis(1),
            drop: vec![("aaa".into(), 10)],
            reorder: vec![("bbb".into(), 20)],
            ..Default::default()
        };
        let mock = MockHuobi::start(MockHuobiConfig {
            books: vec![seed("aaa", 1), seed("bbb", 1)],
            stream,
            start_delay: Duration::from_millis(50),
            ..Default::default()
        })
        .await;
        let (mut tx, mut rx) = connect(&format!("{}/feed", mock.ws_url())).await.split();
        tx.send(Message::text(r#"{"sub":"market.aaa.mbp.20","id":1}"#))
            .await
            .unwrap();
        tx.send(Message::text(r#"{"sub":"market.bbb.mbp.20","id":2}"#))
            .await
            .unwrap();
        let (got, _) = read_until(&mut tx, &mut rx, 79, |v| v.get("ch").is_some()).await;
        let seqs = |sym: &str| -> Vec<u64> {
            got.iter()
                .filter(|t| t.contains(&format!("market.{sym}.")))
                .map(|t| {
                    serde_json::from_str::<Value>(t).unwrap()["tick"]["seqNum"]
                        .as_u64()
                        .unwrap()
                })
                .collect()
        };
        let (a, b) = (mock.updates("aaa"), mock.updates("bbb"));
        assert_eq!(a[10].delivery, Delivery::Dropped);
        assert_eq!(
            seqs("aaa"),
            a.iter()
                .filter(|u| u.index != 10)
                .map(|u| u.seq_num)
                .collect::<Vec<_>>()
        );
        let mut expected_b: Vec<u64> = b.iter().map(|u| u.seq_num).collect();
        expected_b.swap(20, 21);
        assert_eq!(seqs("bbb"), expected_b);
        // 5/20-level channels leave the unchanged side out.
        assert!(
            got.iter().any(|t| !t.contains("\"bids\""))
                && got.iter().any(|t| !t.contains("\"asks\""))
        );
        assert!(got
            .iter()
            .all(|t| t.contains("\"bids\"") || t.contains("\"asks\"")));
    }

    #[tokio::test]
    async fn fault_injection_for_the_matrix() {
        let stream = MbpStreamConfig {
            levels: 20,
            updates: 30,
            interval: Duration::from_millis(1),
            duplicate: vec![("aaa".into(), 5)],
            inject: vec![("aaa".into(), 6, b"not gzip".to_vec())],
            tail: 40,
            ..Default::default()
        };
        let mock = MockHuobi::start(MockHuobiConfig {
            books: vec![seed("aaa", 1)],
            stream,
            start_delay: Duration::from_millis(50),
            connection_faults: [
                (0, ConnectionFault::Refuse),
                (1, ConnectionFault::CloseAfter(10)),
                (2, ConnectionFault::StallAfter(3)),
            ]
            .into(),
            reject_subs: vec![(3, "market.aaa.mbp.20".into())],
            fail_reqs: vec![("bad-request".into(), "429 too many request".into())],
            ..Default::default()
        })
        .await;
        let url = format!("{}/feed", mock.ws_url());
        let refused = tokio_tungstenite::connect_async(&url)
            .await
            .expect_err("refused");
        assert!(refused.to_string().contains("503"), "{refused}");
        // Attempt 1: ten pushes (update 5 twice, then the injected frame), then TCP dropped.
        let (mut tx, mut rx) = connect(&url).await.split();
        tx.send(Message::text(r#"{"sub":"market.aaa.mbp.20","id":1}"#))
            .await
            .unwrap();
        let mut pushes = Vec::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(WAIT, rx.next()).await {
            if let Message::Binary(b) = m {
                pushes.push(b.to_vec());
            }
        }
        assert_eq!(pushes.len(), 1 + 10, "the ack and ten pushes");
        assert_eq!(pushes[6], pushes[7], "update 5 sent twice");
        assert_eq!(pushes[9], b"not gzip", "injected after update 6");
        assert!(mock.wait_until(WAIT, |m| !m.connections()[0].active).await);
        assert!(mock.connections()[0]
            .close_reason
            .as_deref()
            .unwrap()
            .contains("close_after 10"));
        // Attempt 2: the first req is refused, the next served; then it stalls.
        let (mut tx, mut rx) = connect(&url).await.split();
        tx.send(Message::text(r#"{"req":"market.aaa.mbp.20","id":2}"#))
            .await
            .unwrap();
        let (errors, _) = read_until(&mut tx, &mut rx, 1, |v| v["status"] == "error").await;
        assert!(
            errors[0].contains(r#""err-msg":"429 too many request""#),
            "{}",
            errors[0]
        );
        tokio::time::sleep(MIN_REQ_GAP).await;
        tx.send(Message::text(r#"{"req":"market.aaa.mbp.20","id":3}"#))
            .await
            .unwrap();
        read_until(&mut tx, &mut rx, 1, |v| v.get("rep").is_some()).await;
        tx.send(Message::text(r#"{"sub":"market.aaa.mbp.20","id":4}"#))
            .await
            .unwrap();
        assert!(mock.wait_until(WAIT, |m| m.connections()[1].stalled).await);
        assert_eq!(
            (mock.reqs_failed(), mock.connections()[1].pushes_sent),
            (1, 3)
        );
        // Attempt 3: the sub is refused as an invalid topic.
        let (mut tx3, mut rx3) = connect(&url).await.split();
        tx3.send(Message::text(r#"{"sub":"market.aaa.mbp.20","id":5}"#))
            .await
            .unwrap();
        let (errors, _) = read_until(&mut tx3, &mut rx3, 1, |v| v["status"] == "error").await;
        assert!(
            errors[0].contains(
                r#""err-code":"bad-request","err-msg":"invalid topic market.aaa.mbp.20""#
            ),
            "{}",
            errors[0]
        );
        assert_eq!(mock.connections()[2].refused_topics, ["market.aaa.mbp.20"]);
        assert_eq!(
            (mock.handshake_attempts(), mock.refused_connections()),
            (4, 1)
        );
        // `tail`: nobody hears the stream (one stalled, one refused), so it goes on past 30.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!mock.stream_done() && mock.updates("aaa").len() > 30);
        let (mut tx4, mut rx4) = connect(&url).await.split();
        tx4.send(Message::text(r#"{"sub":"market.aaa.mbp.20","id":6}"#))
            .await
            .unwrap();
        read_until(&mut tx4, &mut rx4, 40, |v| v.get("ch").is_some()).await;
        assert!(mock.wait_stream_done(WAIT).await);
    }

    #[tokio::test]
    async fn two_missed_pongs_close_and_silence_stops_everything() {
        let mock = MockHuobi::start(MockHuobiConfig {
            ping_interval: Duration::from_millis(50),
            ..Default::default()
        })
        .await;
        let (_tx, mut rx) = connect(&format!("{}/ws", mock.ws_url())).await.split();
        // Never answer: after two pings the third tick closes.
        let mut pings = 0;
        let closed = tokio::time::timeout(WAIT, async {
            while let Some(Ok(m)) = rx.next().await {
                match m {
                    Message::Binary(_) => pings += 1,
                    Message::Close(f) => return f.map(|f| f.reason.to_string()),
                    _ => {}
                }
            }
            None
        })
        .await
        .expect("closed in time");
        assert_eq!((pings, closed.as_deref()), (2, Some("heartbeat timeout")));
        assert!(mock.wait_until(WAIT, |m| !m.connections()[0].active).await);

        let (_tx2, mut rx2) = connect(&format!("{}/ws", mock.ws_url())).await.split();
        assert!(mock.wait_until(WAIT, |m| m.connections().len() == 2).await);
        mock.go_silent();
        // Whatever was already on its way is drained first.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(150), rx2.next()).await {
        }
        let quiet = tokio::time::timeout(Duration::from_millis(400), rx2.next()).await;
        assert!(
            quiet.is_err(),
            "a silent connection sends nothing: {quiet:?}"
        );
        assert!(mock.connections()[1].active);
        let refused = tokio_tungstenite::connect_async(format!("{}/stream", mock.ws_url()))
            .await
            .expect_err("refused");
        assert!(refused.to_string().contains("400"), "{refused}");
    }
}
