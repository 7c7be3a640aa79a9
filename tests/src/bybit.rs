//! A mock of Bybit v5 public market data on 127.0.0.1, speaking the real protocol.
//!
//! The service's Bybit connectors run unchanged against it (their endpoint URLs come from
//! config): websocket paths `/v5/public/spot` and `/v5/public/linear`, and the REST endpoint
//! `/v5/market/instruments-info`.
//!
//! WebSocket behaviour, as on Bybit (protocols.md §2):
//! - nothing is pushed until the client sends `{"op":"subscribe","args":[..]}`. Each request
//!   gets one ack, in the real shape of its category (fixtures `subscribe_acks_*`): linear
//!   `{"success":true,"ret_msg":"","conn_id":..,"req_id":..,"op":"subscribe"}`, spot
//!   `{"success":true,"ret_msg":"subscribe","conn_id":..,"op":"subscribe"}` (no `req_id`);
//! - a refused request (a topic in [`MockBybitConfig::refuse_topics`], a malformed topic, more
//!   than 10 args on spot, a topic already subscribed, args beyond 21,000 characters on one
//!   connection) is answered `success:false` with a `ret_msg` naming the problem
//!   (`Invalid topic: <topic>`, the shape in nautilus_trader's fixture) and subscribes none
//!   of the request's topics. Limit breaches are also recorded ([`MockBybit::violations`]);
//! - right after the ack of an order book topic, its snapshot: the recorded one, verbatim,
//!   while nothing was replayed after it; else the mock's current book (its *truth*) with the
//!   current `u`, as the real exchange sends a fresh snapshot on every subscribe;
//! - then the recorded pushes of the subscribed topics, in capture order, each processed
//!   once by the truth whichever connection gets there first, so a new connection resumes
//!   where the exchange is (it does not replay history);
//! - `{"op":"ping"}` is answered with a pong: linear in the documented public shape
//!   (`"ret_msg":"pong","op":"ping"`), spot in the `"op":"pong"` shape, so a client is
//!   exercised on both. The first [`MockBybitConfig::silent_connections`] connections never
//!   answer a ping (a dead peer whose TCP connection still stands), and the first
//!   [`MockBybitConfig::unanswered_subscribe_connections`] never answer a subscribe.
//!
//! Faults: [`MockBybitConfig::drop_frames`] withholds a push but applies it to the truth (a
//! push lost on the way: only the broken `u` chain shows it); [`MockBybitConfig::resets`]
//! injects a `u == 1` push (a Bybit service restart) holding the truth cut to its best levels,
//! after which the topic's `u` restarts at 1 and later pushes are renumbered.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

pub use crate::binance::ConnectionFault;
use crate::book::{OrderBook, PriceKey, Side};
use crate::bybit_book::BybitPush;
use crate::http::{HttpServer, Request, Response};

/// Spot refuses more than 10 args per subscribe request.
pub const SPOT_MAX_ARGS: usize = 10;
/// A public connection's args stay within 21,000 characters.
pub const MAX_ARGS_CHARS: usize = 21_000;
/// Poll period of the `wait_*` helpers.
const POLL: Duration = Duration::from_millis(10);

/// Bybit v5 public categories the mock serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    Spot,
    Linear,
}

impl Category {
    pub const ALL: [Category; 2] = [Category::Spot, Category::Linear];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Spot => "spot",
            Category::Linear => "linear",
        }
    }

    pub fn parse(s: &str) -> Option<Category> {
        match s {
            "spot" => Some(Category::Spot),
            "linear" => Some(Category::Linear),
            _ => None,
        }
    }
}

/// A `u == 1` push injected before frame `before_frame` of `category` (an order book push;
/// the reset is for its topic).
#[derive(Clone, Debug)]
pub struct Reset {
    pub category: Category,
    pub before_frame: usize,
    /// Levels per side the restarted book keeps (the best ones).
    pub keep_levels: usize,
    /// Sent as `"type":"delta"` instead of `"snapshot"` (Bybit's docs describe both).
    pub as_delta: bool,
}

/// What the mock serves. `MockBybitConfig::default()` has no data.
#[derive(Clone, Debug, Default)]
pub struct MockBybitConfig {
    /// Recorded pushes of `/v5/public/spot`, in replay order (order book and trade topics).
    pub spot: Vec<String>,
    /// The same for `/v5/public/linear`.
    pub linear: Vec<String>,
    /// Bodies of `GET /v5/market/instruments-info?category=spot|linear`.
    pub instruments_spot: Option<String>,
    pub instruments_linear: Option<String>,
    /// Linear instruments per page (with a `nextPageCursor`); `None` serves the body verbatim.
    pub instruments_page_size: Option<usize>,
    /// (category, frame index): pushes never sent, still applied to the truth.
    pub drop_frames: HashSet<(Category, usize)>,
    pub resets: Vec<Reset>,
    /// Topics refused on subscribe with `Invalid topic: <topic>`.
    pub refuse_topics: HashSet<String>,
    /// The first this many connections (in accept order) never answer a ping.
    pub silent_connections: usize,
    /// The first this many connections record subscribe requests but never answer them (nor
    /// subscribe anything).
    pub unanswered_subscribe_connections: usize,
    /// Pause between two pushes of one connection; zero = as fast as possible (yielding).
    pub frame_interval: Duration,
    /// (category, frame index): pushes sent twice in a row (applied to the truth once).
    pub duplicate_frames: HashSet<(Category, usize)>,
    /// (category, frame index): the push is sent right *after* the next push of the same
    /// topic (the truth applies both in the original order): two updates swapped on the wire.
    pub swap_frames: HashSet<(Category, usize)>,
    /// (category, frame index, text): right after that push was processed (sent or dropped),
    /// `text` is sent as-is on the connection that processed it (a malformed frame, a frame
    /// of an unknown type, ...).
    pub inject_raw: Vec<(Category, usize, String)>,
    /// What goes wrong with each WebSocket handshake attempt, by attempt number over both
    /// categories (0 = the first valid handshake): refused (HTTP 503), dropped after N pushes,
    /// or stalled after N pushes (no more pushes and no answer to anything, socket open).
    pub connection_faults: HashMap<usize, ConnectionFault>,
}

impl MockBybitConfig {
    /// The 2026-08-09 captures: `orderbook_200_{spot,linear}` and `public_trade_{spot,linear}`
    /// merged by `ts` (each file keeps its own order), plus both instruments-info bodies.
    /// `None` (after a printed skip line) when the fixtures are absent.
    pub fn from_fixtures() -> Option<Self> {
        let mut merged = HashMap::new();
        for c in Category::ALL {
            let c_str = c.as_str();
            let book = crate::fixtures::require_lines(&format!(
                "bybit/orderbook_200_{c_str}_2026-08-09.jsonl"
            ))?;
            let trades = crate::fixtures::require_lines(&format!(
                "bybit/public_trade_{c_str}_2026-08-09.jsonl"
            ))?;
            merged.insert(c, merge_by_ts(book, trades));
        }
        Some(MockBybitConfig {
            spot: merged.remove(&Category::Spot)?,
            linear: merged.remove(&Category::Linear)?,
            instruments_spot: Some(crate::fixtures::require_string(
                "bybit/rest_instruments_info_spot_2026-08-09.json",
            )?),
            instruments_linear: Some(crate::fixtures::require_string(
                "bybit/rest_instruments_info_linear_2026-08-09.json",
            )?),
            ..Self::default()
        })
    }

    pub fn frames(&self, c: Category) -> &[String] {
        match c {
            Category::Spot => &self.spot,
            Category::Linear => &self.linear,
        }
    }

    /// Indices in `frames(c)` of the pushes of `topic`, in order.
    pub fn topic_frames(&self, c: Category, topic: &str) -> Vec<usize> {
        self.frames(c)
            .iter()
            .enumerate()
            .filter(|(_, f)| frame_topic(f).as_deref() == Some(topic))
            .map(|(i, _)| i)
            .collect()
    }
}

/// Merges two captures by their `ts`, keeping each one's internal order.
fn merge_by_ts(a: Vec<String>, b: Vec<String>) -> Vec<String> {
    let ts = |f: &String| {
        serde_json::from_str::<Value>(f)
            .ok()
            .and_then(|v| v.get("ts").and_then(Value::as_i64))
            .unwrap_or(0)
    };
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    let mut out = Vec::new();
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => ts(x) <= ts(y),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return out,
        };
        out.extend(if take_a { a.next() } else { b.next() });
    }
}

fn frame_topic(frame: &str) -> Option<String> {
    serde_json::from_str::<Value>(frame)
        .ok()?
        .get("topic")?
        .as_str()
        .map(str::to_owned)
}

/// The `Trading` symbols of an instruments-info body, in order.
pub fn trading_symbols(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).expect("instruments-info body is JSON");
    v["result"]["list"]
        .as_array()
        .expect("result.list")
        .iter()
        .filter(|i| i["status"] == "Trading")
        .map(|i| i["symbol"].as_str().expect("symbol").to_owned())
        .collect()
}

/// One accepted WebSocket connection.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// 0, 1, ... in accept order, over both categories.
    pub id: usize,
    pub category: Category,
    /// The `conn_id` the mock reports in its answers.
    pub conn_id: String,
    /// Topics subscribed now, in subscribe order.
    pub subscribed: Vec<String>,
    /// Every topic this connection ever subscribed.
    pub ever_subscribed: Vec<String>,
    /// Args of every subscribe request, refused ones included.
    pub subscribe_requests: Vec<Vec<String>>,
    pub unsubscribe_requests: Vec<Vec<String>>,
    /// Characters of the subscribed topics' names, now and at most.
    pub args_chars: usize,
    pub max_args_chars: usize,
    /// `op` answers sent: accepted, refused.
    pub acks_sent: usize,
    pub refusals_sent: usize,
    pub pings_received: usize,
    pub pongs_sent: usize,
    /// Pushes sent (snapshots on subscribe included) and withheld (`drop_frames`).
    pub pushes_sent: usize,
    pub pushes_dropped: usize,
    /// Texts sent by `inject_raw` (not counted in `pushes_sent`).
    pub extra_sent: usize,
    /// Whether the connection stalled (`ConnectionFault::StallAfter`).
    pub stalled: bool,
    pub active: bool,
    pub close_reason: Option<String>,
}

/// A push the mock sent.
#[derive(Clone, Debug)]
pub struct SentPush {
    pub connection: usize,
    pub category: Category,
    pub topic: String,
    pub text: String,
}

/// One configured push, parsed once at start.
struct Frame {
    raw: String,
    topic: String,
    ts: i64,
    book: Option<BybitPush>,
}

/// `(price, size)` as the exchange wrote them.
type TextLevels = Vec<(String, String)>;

/// The exchange's truth for one topic.
struct TopicTruth {
    /// Indices of the topic's frames.
    frames: Vec<usize>,
    /// Highest frame index processed.
    processed_up_to: Option<usize>,
    /// For order book topics: the book, `u`, `seq`, times of the last processed push.
    book: Option<BookTruth>,
}

struct BookTruth {
    symbol: String,
    bids: HashMap<PriceKey, (String, String)>,
    asks: HashMap<PriceKey, (String, String)>,
    u: u64,
    seq: Option<u64>,
    ts: i64,
    /// The recorded snapshot frame, while nothing was processed after it.
    pristine: Option<usize>,
    /// After an injected reset, `u` counts on from 1.
    renumbered: bool,
}

impl BookTruth {
    fn apply(&mut self, side: Side, price: &str, qty: &str) {
        let (Ok(p), Ok(q)) = (price.parse::<f64>(), qty.parse::<f64>()) else {
            return;
        };
        let levels = match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        };
        if q == 0.0 {
            levels.remove(&PriceKey(p));
        } else {
            levels.insert(PriceKey(p), (price.to_owned(), qty.to_owned()));
        }
    }

    fn replace(&mut self, bids: &[(String, String)], asks: &[(String, String)]) {
        self.bids.clear();
        self.asks.clear();
        for (p, q) in bids {
            self.apply(Side::Bid, p, q);
        }
        for (p, q) in asks {
            self.apply(Side::Ask, p, q);
        }
    }

    fn book(&self) -> OrderBook {
        let mut book = OrderBook::new();
        for (side, levels) in [(Side::Bid, &self.bids), (Side::Ask, &self.asks)] {
            for (price, (_, qty)) in levels {
                book.set(side, price.0, qty.parse().unwrap_or(0.0));
            }
        }
        book
    }

    /// Text levels best first, at most `keep` per side: (bids, asks).
    fn sorted(&self, keep: usize) -> (TextLevels, TextLevels) {
        let side = |levels: &HashMap<PriceKey, (String, String)>, best_high: bool| {
            let mut v: Vec<_> = levels.iter().collect();
            v.sort_by(|a, b| {
                if best_high {
                    b.0.cmp(a.0)
                } else {
                    a.0.cmp(b.0)
                }
            });
            v.into_iter()
                .take(keep)
                .map(|(_, pq)| pq.clone())
                .collect::<Vec<_>>()
        };
        (side(&self.bids, true), side(&self.asks, false))
    }
}

/// A push in the byte layout of its category (spot writes `ts` before `type`).
fn book_push_text(
    c: Category,
    topic: &str,
    kind: &str,
    ts: i64,
    t: &BookTruth,
    u: u64,
    keep: usize,
) -> String {
    let (bids, asks) = t.sorted(keep);
    let levels = |l: &[(String, String)]| {
        serde_json::to_string(&l.iter().map(|(p, q)| [p, q]).collect::<Vec<_>>())
            .expect("levels serialize")
    };
    let seq = t.seq.map_or(String::new(), |s| format!(",\"seq\":{s}"));
    let data = format!(
        r#"{{"s":{},"b":{},"a":{},"u":{u}{seq}}}"#,
        jstr(&t.symbol),
        levels(&bids),
        levels(&asks)
    );
    match c {
        Category::Spot => format!(
            r#"{{"topic":{},"ts":{ts},"type":"{kind}","data":{data},"cts":{ts}}}"#,
            jstr(topic)
        ),
        Category::Linear => format!(
            r#"{{"topic":{},"type":"{kind}","ts":{ts},"data":{data},"cts":{ts}}}"#,
            jstr(topic)
        ),
    }
}

/// Wall-clock milliseconds, as Bybit puts in a pong's `args`.
fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn jstr(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

struct Records {
    connections: Vec<ConnectionInfo>,
    sent: Vec<SentPush>,
    client_messages: Vec<(usize, String)>,
    violations: Vec<String>,
    /// Valid handshake attempts (accepted or refused) and those refused.
    handshake_attempts: usize,
    refused: usize,
}

struct State {
    truth: HashMap<(Category, String), TopicTruth>,
    resets_done: HashSet<(Category, usize)>,
    records: Records,
}

struct Shared {
    frames: HashMap<Category, Vec<Frame>>,
    drop_frames: HashSet<(Category, usize)>,
    resets: HashMap<(Category, usize), Reset>,
    refuse_topics: HashSet<String>,
    silent_connections: usize,
    unanswered_subscribe_connections: usize,
    frame_interval: Duration,
    duplicate_frames: HashSet<(Category, usize)>,
    swap_frames: HashSet<(Category, usize)>,
    inject_raw: HashMap<(Category, usize), Vec<String>>,
    connection_faults: HashMap<usize, ConnectionFault>,
    instruments: HashMap<Category, Option<String>>,
    instruments_page_size: Option<usize>,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        crate::lock(&self.state)
    }
}

/// The running mock: a WebSocket port and a REST port on 127.0.0.1. Stops when dropped.
pub struct MockBybit {
    shared: Arc<Shared>,
    ws_addr: std::net::SocketAddr,
    ws_task: JoinHandle<()>,
    rest: HttpServer,
}

impl MockBybit {
    /// Validates `config` (panics naming the bad frame: a broken test input is reported at
    /// setup, never inside a server task) and starts both servers.
    pub async fn start(config: MockBybitConfig) -> MockBybit {
        let mut frames = HashMap::new();
        let mut truth: HashMap<(Category, String), TopicTruth> = HashMap::new();
        for c in Category::ALL {
            let parsed: Vec<Frame> = config
                .frames(c)
                .iter()
                .enumerate()
                .map(|(i, raw)| {
                    let v: Value = serde_json::from_str(raw).unwrap_or_else(|e| {
                        panic!("MockBybit {c:?} frame {i} is not JSON ({e}): {raw}")
                    });
                    let topic = v
                        .get("topic")
                        .and_then(Value::as_str)
                        .unwrap_or_else(|| panic!("MockBybit {c:?} frame {i} has no topic: {raw}"))
                        .to_owned();
                    let book = BybitPush::parse(raw)
                        .unwrap_or_else(|e| panic!("MockBybit {c:?} frame {i}: {e}"));
                    if let Some(b) = &book {
                        // Renumbering rewrites `"u":N,` in place: it must be there exactly once.
                        assert_eq!(
                            raw.matches(&format!("\"u\":{},", b.u)).count(),
                            1,
                            "MockBybit {c:?} frame {i}: `\"u\":{},` not found once",
                            b.u
                        );
                    }
                    Frame {
                        raw: raw.clone(),
                        ts: v.get("ts").and_then(Value::as_i64).unwrap_or(0),
                        topic,
                        book,
                    }
                })
                .collect();
            for (i, f) in parsed.iter().enumerate() {
                let entry = truth
                    .entry((c, f.topic.clone()))
                    .or_insert_with(|| TopicTruth {
                        frames: Vec::new(),
                        processed_up_to: None,
                        book: None,
                    });
                entry.frames.push(i);
                if let Some(b) = &f.book {
                    if entry.book.is_none() {
                        assert!(b.snapshot, "MockBybit {c:?}: the first push of {} (frame {i}) must be its snapshot", f.topic);
                        let mut t = BookTruth {
                            symbol: b.symbol.clone(),
                            bids: HashMap::new(),
                            asks: HashMap::new(),
                            u: b.u,
                            seq: b.seq,
                            ts: f.ts,
                            pristine: Some(i),
                            renumbered: false,
                        };
                        t.replace(&b.bids, &b.asks);
                        entry.book = Some(t);
                        entry.processed_up_to = Some(i);
                    }
                }
            }
            frames.insert(c, parsed);
        }
        for (c, i) in &config.drop_frames {
            assert!(
                *i < frames[c].len(),
                "MockBybit: drop_frames ({c:?}, {i}) out of range"
            );
        }
        for r in &config.resets {
            let f = frames[&r.category].get(r.before_frame).unwrap_or_else(|| {
                panic!(
                    "MockBybit: reset before frame {} out of range",
                    r.before_frame
                )
            });
            assert!(
                f.book.is_some(),
                "MockBybit: reset before frame {} which is not an order book push",
                r.before_frame
            );
        }
        let shared = Arc::new(Shared {
            frames,
            drop_frames: config.drop_frames,
            resets: config
                .resets
                .into_iter()
                .map(|r| ((r.category, r.before_frame), r))
                .collect(),
            refuse_topics: config.refuse_topics,
            silent_connections: config.silent_connections,
            unanswered_subscribe_connections: config.unanswered_subscribe_connections,
            frame_interval: config.frame_interval,
            duplicate_frames: config.duplicate_frames,
            swap_frames: config.swap_frames,
            inject_raw: config.inject_raw.into_iter().fold(
                HashMap::new(),
                |mut m, (c, i, text)| {
                    m.entry((c, i)).or_insert_with(Vec::new).push(text);
                    m
                },
            ),
            connection_faults: config.connection_faults,
            instruments: HashMap::from([
                (Category::Spot, config.instruments_spot),
                (Category::Linear, config.instruments_linear),
            ]),
            instruments_page_size: config.instruments_page_size,
            state: Mutex::new(State {
                truth,
                resets_done: HashSet::new(),
                records: Records {
                    connections: Vec::new(),
                    sent: Vec::new(),
                    client_messages: Vec::new(),
                    violations: Vec::new(),
                    handshake_attempts: 0,
                    refused: 0,
                },
            }),
        });
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind 127.0.0.1:0 for the mock Bybit WebSocket");
        let ws_addr = listener
            .local_addr()
            .expect("local address of the mock Bybit WebSocket");
        let ws_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        let rest_shared = Arc::clone(&shared);
        let rest = HttpServer::start(move |req| rest_answer(&rest_shared, req)).await;
        MockBybit {
            shared,
            ws_addr,
            ws_task,
            rest,
        }
    }

    /// `ws://127.0.0.1:P` (the connector appends `/v5/public/{category}`).
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.ws_addr)
    }

    /// `http://127.0.0.1:Q` (the REST base).
    pub fn rest_url(&self) -> String {
        self.rest.url()
    }

    pub fn rest_requests(&self) -> Vec<Request> {
        self.rest.requests()
    }

    /// Every accepted connection, open or closed, in accept order.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.shared.state().records.connections.clone()
    }

    /// Text messages clients sent, as (connection id, text).
    pub fn client_messages(&self) -> Vec<(usize, String)> {
        self.shared.state().records.client_messages.clone()
    }

    /// Valid handshake attempts so far, accepted or refused.
    pub fn handshake_attempts(&self) -> usize {
        self.shared.state().records.handshake_attempts
    }

    /// Handshakes refused by [`ConnectionFault::Refuse`].
    pub fn refused_connections(&self) -> usize {
        self.shared.state().records.refused
    }

    /// Broken Bybit limits (spot args per request, args characters per connection).
    pub fn violations(&self) -> Vec<String> {
        self.shared.state().records.violations.clone()
    }

    /// Every push sent, over all connections, in send order.
    pub fn sent(&self) -> Vec<SentPush> {
        self.shared.state().records.sent.clone()
    }

    /// The texts of the pushes of `topic` sent on `category`, in send order.
    pub fn sent_frames(&self, category: Category, topic: &str) -> Vec<String> {
        self.shared
            .state()
            .records
            .sent
            .iter()
            .filter(|s| s.category == category && s.topic == topic)
            .map(|s| s.text.clone())
            .collect()
    }

    /// The exchange's truth for an order book: its snapshot plus every push processed so far
    /// (sent or dropped), resets included. Panics for a topic without recorded pushes.
    pub fn book(&self, category: Category, topic: &str) -> OrderBook {
        self.with_book(category, topic, BookTruth::book)
    }

    /// The truth's current `u` for an order book topic.
    pub fn last_u(&self, category: Category, topic: &str) -> u64 {
        self.with_book(category, topic, |b| b.u)
    }

    fn with_book<T>(&self, category: Category, topic: &str, f: impl FnOnce(&BookTruth) -> T) -> T {
        let state = self.shared.state();
        let t = state
            .truth
            .get(&(category, topic.to_owned()))
            .and_then(|t| t.book.as_ref());
        f(t.unwrap_or_else(|| {
            panic!("MockBybit: no order book pushes recorded for {category:?} {topic}")
        }))
    }

    /// Whether every recorded push of `topic` was processed (sent or dropped).
    pub fn replayed(&self, category: Category, topic: &str) -> bool {
        let state = self.shared.state();
        state
            .truth
            .get(&(category, topic.to_owned()))
            .is_some_and(|t| t.processed_up_to == t.frames.last().copied())
    }

    /// Waits until every listed topic is [`MockBybit::replayed`] or `timeout`; returns whether
    /// they all were.
    pub async fn wait_replayed(&self, topics: &[(Category, &str)], timeout: Duration) -> bool {
        self.wait_until(timeout, |m| topics.iter().all(|(c, t)| m.replayed(*c, t)))
            .await
    }

    /// Polls `cond` until it holds or `timeout` passes; returns its last value.
    pub async fn wait_until(&self, timeout: Duration, cond: impl Fn(&MockBybit) -> bool) -> bool {
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
}

impl Drop for MockBybit {
    fn drop(&mut self) {
        // The accept future owns the JoinSet of connections: aborting it ends them all.
        self.ws_task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// REST

fn rest_answer(shared: &Shared, req: &Request) -> Response {
    if req.path_only() != "/v5/market/instruments-info" {
        return Response::empty(404);
    }
    let bybit_error = |msg: &str| {
        Response::json(
            200,
            format!(
                r#"{{"retCode":10001,"retMsg":{},"result":{{}},"retExtInfo":{{}},"time":1786310817197}}"#,
                jstr(msg)
            ),
        )
    };
    let Some(category) = req.query_param("category").and_then(Category::parse) else {
        return bybit_error("params error: category invalid");
    };
    let Some(body) = shared.instruments.get(&category).cloned().flatten() else {
        return Response::empty(404);
    };
    match (category, shared.instruments_page_size) {
        (Category::Linear, Some(size)) => {
            let offset = match req.query_param("cursor") {
                None | Some("") => 0,
                Some(c) => match c
                    .strip_prefix("next=")
                    .and_then(|r| r.split('&').next())
                    .and_then(|n| n.parse::<usize>().ok())
                {
                    Some(n) => n,
                    None => return bybit_error("params error: cursor invalid"),
                },
            };
            let mut v: Value = serde_json::from_str(&body).expect("instruments-info body is JSON");
            let list = v["result"]["list"].as_array().cloned().unwrap_or_default();
            let end = (offset + size).min(list.len());
            v["result"]["list"] = Value::Array(
                list.get(offset..end)
                    .map(<[Value]>::to_vec)
                    .unwrap_or_default(),
            );
            // Opaque to the client; `=` and `&` make sure it is percent-encoded as text.
            v["result"]["nextPageCursor"] = Value::String(if end < list.len() {
                format!("next={end}&of={}", list.len())
            } else {
                String::new()
            });
            Response::json(200, v.to_string())
        }
        _ => Response::json(200, body),
    }
}

// ---------------------------------------------------------------------------------------
// WebSocket

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    crate::accept::serve_each(listener, "ds-tests mock bybit", |stream| serve_ws(stream, Arc::clone(&shared))).await;
}

fn category_of_path(target: &str) -> Result<Category, String> {
    let path = target.split('?').next().unwrap_or(target);
    path.strip_prefix("/v5/public/")
        .and_then(Category::parse)
        .ok_or_else(|| {
            format!("mock Bybit serves /v5/public/spot and /v5/public/linear, not {path}")
        })
}

/// Serves one WebSocket connection until the peer leaves, an error occurs, or the mock is
/// dropped (task aborted). Errors are logged, never panicked on.
async fn serve_ws(stream: TcpStream, shared: Arc<Shared>) {
    let mut target = String::new();
    let mut fault = None;
    // The callback's signature is tungstenite's; its large Err type is not ours to box.
    #[allow(clippy::result_large_err)]
    let callback = |req: &WsRequest, resp: WsResponse| -> Result<WsResponse, ErrorResponse> {
        target = req.uri().to_string();
        match category_of_path(&target) {
            Ok(_) => {
                let mut state = shared.state();
                let attempt = state.records.handshake_attempts;
                state.records.handshake_attempts += 1;
                fault = shared.connection_faults.get(&attempt).copied();
                if fault == Some(ConnectionFault::Refuse) {
                    state.records.refused += 1;
                    return Err(crate::accept::refusal(StatusCode::SERVICE_UNAVAILABLE, format!("mock refuses attempt {attempt}")));
                }
                Ok(resp)
            }
            Err(reason) => {
                Err(crate::accept::refusal(StatusCode::NOT_FOUND, reason))
            }
        }
    };
    let Some(ws) = crate::accept::websocket(stream, "ds-tests mock bybit", callback).await else {
        return;
    };
    let Ok(category) = category_of_path(&target) else {
        return;
    };
    let id = {
        let mut state = shared.state();
        let id = state.records.connections.len();
        state.records.connections.push(ConnectionInfo {
            id,
            category,
            conn_id: format!("mock-{}-{id}", category.as_str()),
            subscribed: Vec::new(),
            ever_subscribed: Vec::new(),
            subscribe_requests: Vec::new(),
            unsubscribe_requests: Vec::new(),
            args_chars: 0,
            max_args_chars: 0,
            acks_sent: 0,
            refusals_sent: 0,
            pings_received: 0,
            pongs_sent: 0,
            pushes_sent: 0,
            pushes_dropped: 0,
            extra_sent: 0,
            stalled: false,
            active: true,
            close_reason: None,
        });
        id
    };
    let silent = id < shared.silent_connections;
    let (mut tx, mut rx) = ws.split();
    let mut next_at = Instant::now();
    // `StallAfter`: nothing is sent any more (pushes, pongs, acks); reading goes on.
    let mut stalled = false;
    let reason = 'conn: loop {
        let next = if stalled {
            None
        } else {
            next_frame(&shared, category, id)
        };
        tokio::select! {
            biased;
            incoming = rx.next() => match incoming {
                None => break "peer closed the TCP connection".to_owned(),
                Some(Err(e)) => break format!("read error: {e}"),
                Some(Ok(Message::Text(text))) => {
                    // A stalled connection records what it gets (a ping as unanswered) and
                    // answers nothing.
                    let replies = client_message(&shared, category, id, silent || stalled, text.as_str());
                    for reply in replies.into_iter().filter(|_| !stalled) {
                        if let Err(e) = tx.send(Message::text(reply)).await {
                            break 'conn format!("write error: {e}");
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let _ = tx.flush().await;
                    break format!("peer sent Close {frame:?}");
                }
                Some(Ok(_)) => {} // protocol pings are answered by tungstenite; binary ignored
            },
            _ = tokio::time::sleep_until(next_at), if next.is_some() => {
                let index = next.unwrap_or_default();
                for text in process_frame(&shared, category, id, index) {
                    if let Err(e) = tx.send(Message::text(text)).await {
                        break 'conn format!("write error: {e}");
                    }
                }
                let sent = shared.state().records.connections[id].pushes_sent;
                match fault {
                    Some(ConnectionFault::CloseAfter(n)) if sent >= n => {
                        // Dropping both halves drops the TCP connection without a Close.
                        break format!("mock close_after {n} pushes");
                    }
                    Some(ConnectionFault::StallAfter(n)) if sent >= n => {
                        stalled = true;
                        shared.state().records.connections[id].stalled = true;
                    }
                    _ => {}
                }
                if shared.frame_interval.is_zero() {
                    tokio::task::yield_now().await;
                }
                next_at = Instant::now() + shared.frame_interval;
            }
        }
    };
    let mut state = shared.state();
    if let Some(conn) = state.records.connections.get_mut(id) {
        conn.active = false;
        conn.close_reason.get_or_insert(reason);
    }
}

/// The earliest unprocessed push among this connection's subscribed topics.
fn next_frame(shared: &Shared, category: Category, id: usize) -> Option<usize> {
    let state = shared.state();
    state.records.connections[id]
        .subscribed
        .iter()
        .filter_map(|topic| {
            let t = state.truth.get(&(category, topic.clone()))?;
            let from = t
                .processed_up_to
                .map_or(0, |p| t.frames.partition_point(|&i| i <= p));
            t.frames.get(from).copied()
        })
        .min()
}

/// [`process_one`], then the faults around it: a swapped push goes out after the next push of
/// its topic (both applied to the truth in order), injected texts follow.
fn process_frame(shared: &Shared, category: Category, id: usize, index: usize) -> Vec<String> {
    let topic = &shared.frames[&category][index].topic;
    let fresh = shared
        .state()
        .truth
        .get(&(category, topic.clone()))
        .is_some_and(|t| t.processed_up_to.is_none_or(|p| index > p));
    let mut out = process_one(shared, category, id, index);
    if shared.swap_frames.contains(&(category, index)) && !out.is_empty() {
        let next = shared
            .state()
            .truth
            .get(&(category, topic.clone()))
            .and_then(|t| {
                let at = t.frames.partition_point(|&i| i <= index);
                t.frames.get(at).copied()
            });
        if let Some(j) = next {
            let mut first = process_one(shared, category, id, j);
            // The record of what was sent follows the wire order too.
            let mut state = shared.state();
            let sent = &mut state.records.sent;
            let (n_i, n_j) = (out.len(), first.len());
            let tail = sent.len() - n_i - n_j;
            sent[tail..].rotate_left(n_i);
            drop(state);
            first.append(&mut out);
            out = first;
        }
    }
    if let Some(raw) = shared.inject_raw.get(&(category, index)).filter(|_| fresh) {
        shared.state().records.connections[id].extra_sent += raw.len();
        out.extend(raw.iter().cloned());
    }
    out
}

/// Applies frame `index` to the truth (unless another connection already did) and returns the
/// texts this connection sends for it: an injected reset first, then the push unless dropped
/// (twice when duplicated).
fn process_one(shared: &Shared, category: Category, id: usize, index: usize) -> Vec<String> {
    let frame = &shared.frames[&category][index];
    let mut guard = shared.state();
    let state = &mut *guard;
    let Some(truth) = state.truth.get_mut(&(category, frame.topic.clone())) else {
        return vec![];
    };
    if truth.processed_up_to.is_some_and(|p| index <= p) {
        return vec![];
    }
    truth.processed_up_to = Some(index);
    let mut out = Vec::new();
    let mut text = frame.raw.clone();
    if let (Some(book), Some(push)) = (truth.book.as_mut(), frame.book.as_ref()) {
        book.pristine = None;
        if let Some(reset) = shared
            .resets
            .get(&(category, index))
            .filter(|_| state.resets_done.insert((category, index)))
        {
            let (bids, asks) = book.sorted(reset.keep_levels);
            book.replace(&bids, &asks);
            book.u = 1;
            book.renumbered = true;
            let kind = if reset.as_delta { "delta" } else { "snapshot" };
            out.push(book_push_text(
                category,
                &frame.topic,
                kind,
                frame.ts,
                book,
                1,
                usize::MAX,
            ));
        }
        if push.snapshot {
            book.replace(&push.bids, &push.asks);
        } else {
            for (side, p, q) in push.levels() {
                book.apply(side, &p, &q);
            }
        }
        let u = if book.renumbered { book.u + 1 } else { push.u };
        if u != push.u {
            text = text.replacen(&format!("\"u\":{},", push.u), &format!("\"u\":{u},"), 1);
        }
        book.u = u;
        book.seq = push.seq;
        book.ts = frame.ts;
    }
    let dropped = shared.drop_frames.contains(&(category, index));
    if !dropped {
        if shared.duplicate_frames.contains(&(category, index)) {
            out.push(text.clone());
        }
        out.push(text);
    }
    let records = &mut state.records;
    let conn = &mut records.connections[id];
    conn.pushes_sent += out.len();
    conn.pushes_dropped += usize::from(dropped);
    for t in &out {
        records.sent.push(SentPush {
            connection: id,
            category,
            topic: frame.topic.clone(),
            text: t.clone(),
        });
    }
    out
}

/// Whether Bybit would know this topic's shape.
fn well_formed(topic: &str) -> bool {
    let symbol_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
    };
    match topic.split('.').collect::<Vec<_>>().as_slice() {
        ["orderbook", depth, symbol] => {
            ["1", "50", "200", "1000"].contains(depth) && symbol_ok(symbol)
        }
        ["publicTrade", symbol] => symbol_ok(symbol),
        _ => false,
    }
}

/// Handles one client text message; returns the texts to send back, in order.
fn client_message(
    shared: &Shared,
    category: Category,
    id: usize,
    silent: bool,
    text: &str,
) -> Vec<String> {
    let mut guard = shared.state();
    let state = &mut *guard;
    state.records.client_messages.push((id, text.to_owned()));
    let conn_id = state.records.connections[id].conn_id.clone();
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return vec![format!(
            r#"{{"success":false,"ret_msg":"error:invalid json","conn_id":{}}}"#,
            jstr(&conn_id)
        )];
    };
    let op = v.get("op").and_then(Value::as_str).unwrap_or("").to_owned();
    let req_id = match v.get("req_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    // The two real answer shapes: linear echoes req_id, spot does not.
    let answer = |success: bool, ret_msg: &str, op: &str| match category {
        Category::Linear => format!(
            r#"{{"success":{success},"ret_msg":{},"conn_id":{},"req_id":{},"op":{}}}"#,
            jstr(ret_msg),
            jstr(&conn_id),
            jstr(&req_id),
            jstr(op)
        ),
        Category::Spot => format!(
            r#"{{"success":{success},"ret_msg":{},"conn_id":{},"op":{}}}"#,
            jstr(ret_msg),
            jstr(&conn_id),
            jstr(op)
        ),
    };
    let args: Vec<String> = v
        .get("args")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    match op.as_str() {
        "ping" => {
            let conn = &mut state.records.connections[id];
            conn.pings_received += 1;
            if silent {
                return vec![];
            }
            conn.pongs_sent += 1;
            vec![match category {
                Category::Linear => answer(true, "pong", "ping"),
                Category::Spot => format!(
                    r#"{{"req_id":{},"op":"pong","args":["{}"],"conn_id":{}}}"#,
                    jstr(&req_id),
                    now_ms(),
                    jstr(&conn_id)
                ),
            }]
        }
        "subscribe" => {
            let records = &mut state.records;
            records.connections[id]
                .subscribe_requests
                .push(args.clone());
            if id < shared.unanswered_subscribe_connections {
                return vec![];
            }
            let new_chars: usize = args.iter().map(String::len).sum();
            let conn = &records.connections[id];
            let (refusal, violation) = if category == Category::Spot && args.len() > SPOT_MAX_ARGS {
                (
                    Some(format!("args size >{SPOT_MAX_ARGS}")),
                    Some(format!(
                        "connection {id}: spot subscribe with {} args",
                        args.len()
                    )),
                )
            } else if let Some(bad) = args
                .iter()
                .find(|a| shared.refuse_topics.contains(*a) || !well_formed(a))
            {
                (Some(format!("Invalid topic: {bad}")), None)
            } else if let Some(dup) = args.iter().find(|a| conn.subscribed.contains(a)) {
                (Some(format!("error:already subscribed,topic:{dup}")), None)
            } else if conn.args_chars + new_chars > MAX_ARGS_CHARS {
                (
                    Some(format!("error:args length exceeds {MAX_ARGS_CHARS}")),
                    Some(format!(
                        "connection {id}: args would reach {} characters",
                        conn.args_chars + new_chars
                    )),
                )
            } else {
                (None, None)
            };
            records.violations.extend(violation);
            let conn = &mut records.connections[id];
            if let Some(msg) = refusal {
                conn.refusals_sent += 1;
                return vec![answer(false, &msg, "subscribe")];
            }
            conn.acks_sent += 1;
            conn.args_chars += new_chars;
            conn.max_args_chars = conn.max_args_chars.max(conn.args_chars);
            conn.subscribed.extend(args.iter().cloned());
            for a in &args {
                if !conn.ever_subscribed.contains(a) {
                    conn.ever_subscribed.push(a.clone());
                }
            }
            let ok = match category {
                Category::Linear => "",
                Category::Spot => "subscribe",
            };
            let mut out = vec![answer(true, ok, "subscribe")];
            // Each order book topic's snapshot follows the ack.
            for topic in &args {
                let Some(book) = state
                    .truth
                    .get(&(category, topic.clone()))
                    .and_then(|t| t.book.as_ref())
                else {
                    continue;
                };
                let text = match book.pristine {
                    Some(i) => shared.frames[&category][i].raw.clone(),
                    None => book_push_text(
                        category,
                        topic,
                        "snapshot",
                        book.ts,
                        book,
                        book.u,
                        usize::MAX,
                    ),
                };
                state.records.connections[id].pushes_sent += 1;
                state.records.sent.push(SentPush {
                    connection: id,
                    category,
                    topic: topic.clone(),
                    text: text.clone(),
                });
                out.push(text);
            }
            out
        }
        "unsubscribe" => {
            let conn = &mut state.records.connections[id];
            conn.unsubscribe_requests.push(args.clone());
            for a in &args {
                if let Some(pos) = conn.subscribed.iter().position(|s| s == a) {
                    conn.subscribed.remove(pos);
                    conn.args_chars -= a.len();
                }
            }
            conn.acks_sent += 1;
            vec![answer(
                true,
                if category == Category::Spot {
                    "unsubscribe"
                } else {
                    ""
                },
                "unsubscribe",
            )]
        }
        other => vec![answer(false, &format!("error:unknown op {other:?}"), other)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bybit_book::bybit_reference;
    use futures::stream::SplitStream;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;
    const WAIT: Duration = Duration::from_secs(20);

    async fn connect(url: &str) -> Client {
        tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
            .0
    }

    async fn read_texts(rx: &mut SplitStream<Client>, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let deadline = Instant::now() + WAIT;
        while out.len() < n {
            let msg = tokio::time::timeout_at(deadline, rx.next())
                .await
                .expect("frames within the deadline")
                .expect("stream open")
                .expect("valid frame");
            if let Message::Text(t) = msg {
                out.push(t.to_string());
            }
        }
        out
    }

    fn mock_frames_of(mock: &MockBybit, c: Category, topic: &str) -> usize {
        mock.shared.state().truth[&(c, topic.to_owned())]
            .frames
            .len()
    }

    async fn send(tx: &mut futures::stream::SplitSink<Client, Message>, text: &str) {
        tx.send(Message::text(text.to_owned())).await.expect("send");
    }

    #[tokio::test]
    async fn subscribe_ack_shapes_verbatim_replay_and_limits() {
        let Some(mut config) = MockBybitConfig::from_fixtures() else {
            return;
        };
        config.refuse_topics.insert("orderbook.200.NOPEUSDT".into());
        let spot_btc: Vec<String> = config
            .topic_frames(Category::Spot, "orderbook.200.BTCUSDT")
            .iter()
            .map(|&i| config.spot[i].clone())
            .collect();
        assert_eq!(
            spot_btc.len(),
            300,
            "PROVENANCE.md: 300 BTCUSDT spot frames"
        );
        let mock = MockBybit::start(config).await;

        let (mut tx, mut rx) = connect(&format!("{}/v5/public/spot", mock.ws_url()))
            .await
            .split();
        let eleven: Vec<String> = (0..11)
            .map(|i| format!("\"publicTrade.S{i}USDT\""))
            .collect();
        send(
            &mut tx,
            &format!(
                r#"{{"req_id":"1","op":"subscribe","args":[{}]}}"#,
                eleven.join(",")
            ),
        )
        .await;
        send(&mut tx, r#"{"req_id":"2","op":"subscribe","args":["orderbook.200.NOPEUSDT","orderbook.200.BTCUSDT"]}"#).await;
        send(
            &mut tx,
            r#"{"req_id":"3","op":"subscribe","args":["orderbook.200.BTCUSDT"]}"#,
        )
        .await;
        let got = read_texts(&mut rx, 3 + spot_btc.len()).await;
        assert_eq!(
            got[0],
            r#"{"success":false,"ret_msg":"args size >10","conn_id":"mock-spot-0","op":"subscribe"}"#
        );
        assert_eq!(
            got[1],
            r#"{"success":false,"ret_msg":"Invalid topic: orderbook.200.NOPEUSDT","conn_id":"mock-spot-0","op":"subscribe"}"#
        );
        assert_eq!(
            got[2],
            r#"{"success":true,"ret_msg":"subscribe","conn_id":"mock-spot-0","op":"subscribe"}"#,
            "the spot ack shape of subscribe_acks_spot_2026-08-09.jsonl"
        );
        assert_eq!(
            got[3..],
            spot_btc[..],
            "the recorded snapshot then every delta, verbatim"
        );
        assert_eq!(mock.violations().len(), 1);
        send(&mut tx, r#"{"req_id":"4","op":"ping"}"#).await;
        let pong: Value = serde_json::from_str(&read_texts(&mut rx, 1).await[0]).unwrap();
        assert_eq!(
            (pong["op"].as_str(), pong["req_id"].as_str()),
            (Some("pong"), Some("4"))
        );

        let (mut tx, mut rx) = connect(&format!("{}/v5/public/linear", mock.ws_url()))
            .await
            .split();
        send(
            &mut tx,
            r#"{"req_id":"7","op":"subscribe","args":["publicTrade.SOLUSDT"]}"#,
        )
        .await;
        send(&mut tx, r#"{"req_id":"8","op":"ping"}"#).await;
        let sol = mock_frames_of(&mock, Category::Linear, "publicTrade.SOLUSDT");
        let got = read_texts(&mut rx, 2 + sol).await;
        assert_eq!(
            got[0],
            r#"{"success":true,"ret_msg":"","conn_id":"mock-linear-1","req_id":"7","op":"subscribe"}"#,
            "the linear ack shape"
        );
        // Trades flow at once; the pong comes among them.
        let pongs: Vec<&String> = got
            .iter()
            .filter(|t| t.contains(r#""ret_msg":"pong""#))
            .collect();
        assert_eq!(
            pongs,
            [
                r#"{"success":true,"ret_msg":"pong","conn_id":"mock-linear-1","req_id":"8","op":"ping"}"#
            ]
        );
        assert!(
            mock.wait_replayed(&[(Category::Linear, "publicTrade.SOLUSDT")], WAIT)
                .await
        );
        assert!(
            tokio_tungstenite::connect_async(format!("{}/v5/public/inverse", mock.ws_url()))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_dropped_push_breaks_the_chain_and_a_resubscribe_gets_the_truth() {
        let Some(mut config) = MockBybitConfig::from_fixtures() else {
            return;
        };
        let topic = "orderbook.200.ETHUSDT";
        let eth = config.topic_frames(Category::Linear, topic);
        config.drop_frames.insert((Category::Linear, eth[100]));
        config.resets.push(Reset {
            category: Category::Linear,
            before_frame: eth[300],
            keep_levels: 5,
            as_delta: true,
        });
        config.silent_connections = 1;
        let all = config.linear.clone();
        let mock = MockBybit::start(config).await;
        let (mut tx, mut rx) = connect(&format!("{}/v5/public/linear", mock.ws_url()))
            .await
            .split();
        send(
            &mut tx,
            r#"{"op":"subscribe","args":["orderbook.200.ETHUSDT"]}"#,
        )
        .await;
        send(&mut tx, r#"{"op":"ping"}"#).await;
        // ack + snapshot + 420 deltas - 1 dropped + 1 injected reset
        let got = read_texts(&mut rx, 1 + eth.len()).await;
        assert!(mock.wait_replayed(&[(Category::Linear, topic)], WAIT).await);
        assert_eq!(mock.connections()[0].pongs_sent, 0, "a silent connection");
        let client = bybit_reference(&got[1..], topic);
        assert_eq!(client.gaps.len(), 1, "the lost push shows as a gap");
        let reset = client
            .applied
            .iter()
            .find(|a| a.reset && a.u == 1)
            .expect("u == 1 reset");
        assert_eq!(reset.levels.len(), 10);
        assert_eq!(
            client.last_u,
            Some(mock.last_u(Category::Linear, topic)),
            "renumbered from 1"
        );
        assert_eq!(
            client.book,
            mock.book(Category::Linear, topic),
            "the reset and the deltas after it rebuild the truth"
        );

        // The truth holds the lost push; unsubscribe + subscribe answers it as a snapshot.
        send(
            &mut tx,
            r#"{"op":"unsubscribe","args":["orderbook.200.ETHUSDT"]}"#,
        )
        .await;
        send(
            &mut tx,
            r#"{"op":"subscribe","args":["orderbook.200.ETHUSDT"]}"#,
        )
        .await;
        let again = read_texts(&mut rx, 3).await;
        let fresh = bybit_reference(&again[2..], topic);
        assert_eq!(fresh.book, mock.book(Category::Linear, topic));
        let without_faults = bybit_reference(&all, topic);
        assert!(without_faults.gaps.is_empty());
        assert_ne!(
            fresh.book, without_faults.book,
            "the reset changed the book"
        );
    }

    #[tokio::test]
    async fn injected_faults_duplicate_swap_inject_refuse_stall() {
        let Some(mut config) = MockBybitConfig::from_fixtures() else {
            return;
        };
        let topic = "orderbook.200.ETHUSDT";
        let eth = config.topic_frames(Category::Linear, topic);
        config.duplicate_frames.insert((Category::Linear, eth[1]));
        config.swap_frames.insert((Category::Linear, eth[3]));
        config.inject_raw = vec![(Category::Linear, eth[5], "not json".to_owned())];
        config.connection_faults = [
            (0, ConnectionFault::Refuse),
            (1, ConnectionFault::StallAfter(8)),
        ]
        .into();
        let all = config.linear.clone();
        let mock = MockBybit::start(config).await;
        let url = format!("{}/v5/public/linear", mock.ws_url());

        let err = tokio_tungstenite::connect_async(&url)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("503"), "{err}");
        assert_eq!(
            (mock.refused_connections(), mock.handshake_attempts()),
            (1, 1)
        );

        let (mut tx, mut rx) = connect(&url).await.split();
        send(
            &mut tx,
            r#"{"op":"subscribe","args":["orderbook.200.ETHUSDT"]}"#,
        )
        .await;
        // ack, then pushes 0 (snapshot), 1, 1 (duplicate), 2, 4, 3 (swapped), 5, the injected
        // text, 6; the stall comes after 8 pushes.
        let got = read_texts(&mut rx, 1 + 9).await;
        let f = |i: usize| all[eth[i]].clone();
        assert_eq!(
            got[1..],
            [
                f(0),
                f(1),
                f(1),
                f(2),
                f(4),
                f(3),
                f(5),
                "not json".to_owned(),
                f(6)
            ]
        );
        // Stalled: nothing more, not even a pong.
        send(&mut tx, r#"{"op":"ping"}"#).await;
        let quiet = tokio::time::timeout(Duration::from_millis(400), rx.next()).await;
        assert!(quiet.is_err(), "stalled: nothing at all, got {quiet:?}");
        let conn = &mock.connections()[0];
        assert!(conn.stalled && conn.active && conn.pongs_sent == 0);
        assert_eq!((conn.pushes_sent, conn.extra_sent), (8, 1));
        // The record of what was sent follows the wire order, and the truth is the capture's
        // up to push 6, applied in the original order.
        let sent = mock.sent_frames(Category::Linear, topic);
        assert_eq!(sent, [f(0), f(1), f(1), f(2), f(4), f(3), f(5), f(6)]);
        let truth = bybit_reference(&[f(0), f(1), f(2), f(3), f(4), f(5), f(6)], topic);
        assert_eq!(mock.book(Category::Linear, topic), truth.book);
    }

    #[tokio::test]
    async fn instruments_info_pages_linear_with_a_cursor() {
        let Some(mut config) = MockBybitConfig::from_fixtures() else {
            return;
        };
        config.instruments_page_size = Some(300);
        let want = trading_symbols(config.instruments_linear.as_deref().unwrap());
        let spot_len = trading_symbols(config.instruments_spot.as_deref().unwrap()).len();
        let mock = MockBybit::start(config).await;
        let client = reqwest::Client::new();
        let mut got = Vec::new();
        let mut cursor = String::new();
        for _ in 0..10 {
            let url = reqwest::Url::parse_with_params(
                &format!("{}/v5/market/instruments-info", mock.rest_url()),
                &[
                    ("category", "linear"),
                    ("limit", "1000"),
                    ("cursor", &cursor),
                ],
            )
            .unwrap();
            let v: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            got.extend(
                v["result"]["list"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["symbol"].as_str().unwrap().to_owned()),
            );
            cursor = v["result"]["nextPageCursor"].as_str().unwrap().to_owned();
            if cursor.is_empty() {
                break;
            }
        }
        assert_eq!(got, want);
        assert_eq!(
            mock.rest_requests().len(),
            3,
            "800 instruments in pages of 300"
        );
        let v: Value = client
            .get(format!(
                "{}/v5/market/instruments-info?category=spot&cursor=x",
                mock.rest_url()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            v["result"]["list"].as_array().unwrap().len(),
            spot_len,
            "spot: no pagination"
        );
        let v: Value = client
            .get(format!(
                "{}/v5/market/instruments-info?category=option",
                mock.rest_url()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["retCode"], 10001);
    }
}
