//! A mock of Binance spot market data on 127.0.0.1, speaking the real protocol.
//!
//! The service's Binance connector runs unchanged against it (its endpoint URLs come from
//! config): a combined-stream WebSocket that replays recorded frames and sends protocol
//! pings like Binance, and a REST port with `/api/v3/depth` and `/api/v3/exchangeInfo`.
//!
//! The mock keeps the exchange's *truth* per symbol: the recorded snapshot plus every frame it
//! processed, including frames it was told not to send ([`MockBinanceConfig::drop_frames`],
//! a frame lost on the way). A later depth request answers that truth, so a connector that
//! detects the gap and resyncs ends with exactly [`MockBinance::book`], which a test can
//! compare with what the service stored.
//!
//! WebSocket behaviour, as on Binance:
//! - `GET /stream?streams=a/b` only (other paths and an empty list get a 400 handshake
//!   reply); stream names are matched exactly (Binance names are lowercase), and
//!   `<sym>@depth` (the 1000 ms variant) is served the recorded `<sym>@depth@100ms` frames
//!   with the `stream` field renamed;
//! - every connection replays, from the start of `frames` and in order, the frames of the
//!   streams it asked for (or, with [`MockBinanceConfig::resume`], only frames the truth has
//!   not processed yet, as a real exchange would after a reconnect), then stays open;
//! - a protocol Ping with a payload every `ping_interval`; Pongs are recorded and matched;
//! - JSON control messages (`SUBSCRIBE`, ...) are recorded and answered with an error: the
//!   mock serves the streams of the URL only.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::book::{BinanceSnapshot, DepthUpdate, OrderBook, PriceKey, Side};
use crate::http::{HttpServer, Request, Response};

/// Binance's documented server ping period.
pub const BINANCE_PING_INTERVAL: Duration = Duration::from_secs(20);
/// Poll period of the `wait_for_*` helpers.
const POLL: Duration = Duration::from_millis(10);

/// What the mock serves. `MockBinanceConfig::default()` has Binance's timings and no data.
#[derive(Clone, Debug)]
pub struct MockBinanceConfig {
    /// Raw combined-stream frames, `{"stream":"btcusdt@depth@100ms","data":{...}}`, in
    /// replay order (e.g. the lines of `depth_update_combined_2021-04-04.jsonl`). Non-depth
    /// frames (aggTrade) are replayed too, but do not touch the books.
    pub frames: Vec<String>,
    /// SYMBOL (uppercase) -> REST depth body answered verbatim to the first depth request
    /// for that symbol; it also seeds the mock's truth book for the symbol.
    pub snapshots: HashMap<String, String>,
    /// Body of `GET /api/v3/exchangeInfo` (404 when `None`).
    pub exchange_info: Option<String>,
    /// Indices into `frames` that are never sent, but still applied to the truth book: a frame
    /// lost on the way, which the client can only notice through the broken `U`/`u` chain.
    pub drop_frames: HashSet<usize>,
    /// Period of the server's protocol Ping (Binance: 20 s).
    pub ping_interval: Duration,
    /// Pause between two frames of one connection; zero = as fast as possible (yielding).
    pub frame_interval: Duration,
    /// Pause between the handshake and the first frame of a connection.
    pub start_delay: Duration,
    /// Answers for the next depth requests, consumed in order before normal service: HTTP
    /// status and optional `Retry-After` seconds. For retry/back-off tests.
    pub fail_depth: Vec<(u16, Option<u64>)>,
    /// When true, a new connection skips depth frames the truth had already processed when it
    /// connected (what a real exchange does after a reconnect), and every connection open at
    /// the same time gets every later frame (two overlapping connections carry the same
    /// events); when false (default) every connection replays its streams from the first
    /// frame.
    pub resume: bool,
    /// Indices into `frames` sent twice in a row (applied to the truth once): a duplicated
    /// update.
    pub duplicate_frames: HashSet<usize>,
    /// Indices into `frames` whose frame is sent *after* the next frame of the same stream on
    /// that connection (the truth still applies them in the original order): two updates of
    /// one symbol swapped on the wire.
    pub swap_frames: HashSet<usize>,
    /// `(i, text)`: right after frame `i` was processed (sent or dropped) on a connection,
    /// `text` is sent as-is (a malformed frame, a frame of an unknown type, ...). With
    /// `resume`, each is sent once; without, on every connection that replays frame `i`.
    pub inject_raw: Vec<(usize, String)>,
    /// What goes wrong with each WebSocket handshake attempt, by attempt number (0 = the first
    /// valid `/stream` handshake; attempts with a bad path are not counted). Attempts without
    /// an entry are served normally.
    pub connection_faults: HashMap<usize, ConnectionFault>,
    /// Binance's maintenance notice on one connection (see [`ServerShutdown`]).
    pub server_shutdown: Option<ServerShutdown>,
}

/// `{"e":"serverShutdown","E":<ms>}` sent on the connection of handshake attempt `attempt`
/// after it sent `after_frames` frames; that connection keeps being served for `close_after`,
/// then gets a Close (1001) unless the client closed it first. With `refuse_replacement`, every
/// handshake while it is open is refused (HTTP 503): a replacement that cannot connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerShutdown {
    pub attempt: usize,
    pub after_frames: usize,
    pub close_after: Duration,
    pub refuse_replacement: bool,
}

/// The text of Binance's maintenance notice.
pub fn server_shutdown_text() -> String {
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!(r#"{{"e":"serverShutdown","E":{now_ms}}}"#)
}

/// A fault of one WebSocket connection attempt ([`MockBinanceConfig::connection_faults`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionFault {
    /// The handshake is refused (HTTP 503): a reconnect the exchange does not accept.
    Refuse,
    /// After this many frames were sent, the TCP connection is dropped without a close
    /// handshake (network loss mid-stream).
    CloseAfter(usize),
    /// After this many frames were sent, no more frames *and no more pings* are sent, but the
    /// socket stays open and the mock keeps reading (a half-dead connection that only the
    /// client's liveness check can detect).
    StallAfter(usize),
}

impl Default for MockBinanceConfig {
    fn default() -> Self {
        Self {
            frames: Vec::new(),
            snapshots: HashMap::new(),
            exchange_info: None,
            drop_frames: HashSet::new(),
            ping_interval: BINANCE_PING_INTERVAL,
            frame_interval: Duration::ZERO,
            start_delay: Duration::ZERO,
            fail_depth: Vec::new(),
            resume: false,
            duplicate_frames: HashSet::new(),
            swap_frames: HashSet::new(),
            inject_raw: Vec::new(),
            connection_faults: HashMap::new(),
            server_shutdown: None,
        }
    }
}

impl MockBinanceConfig {
    /// A config holding one recorded Binance set from the shared fixtures: the frames of
    /// `binance/depth_update_combined_<date>.jsonl`, every
    /// `binance/rest_depth_snapshot_<date>_<SYMBOL>.json`, and
    /// `binance/rest_exchange_info_<date>.json` when it exists. `date` is `"2021-04-04"` or
    /// `"2021-10-11"`. `None` (after a printed skip line) when the fixtures are absent.
    pub fn from_fixtures(date: &str) -> Option<Self> {
        let frames =
            crate::fixtures::require_lines(&format!("binance/depth_update_combined_{date}.jsonl"))?;
        let dir = crate::fixtures::fixtures_dir()?.join("binance");
        let prefix = format!("rest_depth_snapshot_{date}_");
        let mut snapshots = HashMap::new();
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(symbol) = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".json"))
            {
                snapshots.insert(
                    symbol.to_owned(),
                    crate::fixtures::read_string(entry.path()),
                );
            }
        }
        let info = dir.join(format!("rest_exchange_info_{date}.json"));
        Some(Self {
            frames,
            snapshots,
            exchange_info: info.is_file().then(|| crate::fixtures::read_string(info)),
            ..Self::default()
        })
    }

    /// The lowercase `<sym>@depth@100ms` names of every depth stream in `frames`, in order of
    /// first appearance: what a connector config would subscribe to.
    pub fn depth_streams(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for frame in &self.frames {
            if let Ok(Some(update)) = DepthUpdate::parse(frame) {
                if let Some(stream) = update.stream {
                    if !seen.contains(&stream) {
                        seen.push(stream);
                    }
                }
            }
        }
        seen
    }
}

/// One accepted WebSocket connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// 0, 1, ... in accept order.
    pub id: usize,
    /// The request target of the handshake (`/stream?streams=...`).
    pub path: String,
    /// The requested stream names, url-decoded, in request order.
    pub streams: Vec<String>,
    /// When the handshake completed.
    pub connected_at: Instant,
    /// Frames sent on this connection.
    pub frames_sent: usize,
    /// Frames of this connection's streams withheld because of `drop_frames`.
    pub frames_dropped: usize,
    /// Extra texts sent on this connection: second copies of `duplicate_frames` and
    /// `inject_raw` texts (not counted in `frames_sent`).
    pub extra_sent: usize,
    /// Whether the connection stalled (`ConnectionFault::StallAfter`).
    pub stalled: bool,
    /// Frames this connection will send or withhold in total (fixed at connect; with
    /// `resume`, frames skipped as already processed are not counted).
    pub frames_planned: usize,
    /// Whether every planned frame was processed.
    pub replay_done: bool,
    /// Protocol Pings the mock sent.
    pub pings_sent: usize,
    /// Whether the connection is still open.
    pub active: bool,
    /// When it ended, if it did.
    pub closed_at: Option<Instant>,
    /// Why it ended (peer close, error text, forced disconnect).
    pub close_reason: Option<String>,
}

/// A Pong received from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PongInfo {
    /// The connection it came on.
    pub connection: usize,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Whether the payload equals that of a Ping the mock sent on this connection and that
    /// was not answered yet (Binance requires the echo).
    pub matched: bool,
    /// Time since that Ping was sent, when matched.
    pub latency: Option<Duration>,
    /// When it arrived.
    pub received_at: Instant,
}

/// One `/api/v3/depth` request and the status it was answered with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepthRequest {
    /// The `symbol` parameter as sent.
    pub symbol: String,
    pub status: u16,
    pub at: Instant,
}

/// How [`MockBinance`] ends connections on request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Disconnect {
    /// Drop the TCP connection without a close handshake (network loss, server crash).
    Abrupt,
    /// Send a Close frame (1001 going away), as before a server restart.
    Close,
}

/// The exchange's truth for one symbol.
struct SymbolTruth {
    /// The recorded snapshot, answered verbatim to the first depth request.
    fixture: String,
    fixture_served: bool,
    /// price -> (price text, qty text) per side, as received.
    bids: HashMap<PriceKey, (String, String)>,
    asks: HashMap<PriceKey, (String, String)>,
    last_update_id: u64,
    /// Highest frame index applied (each frame is applied once, whichever connection
    /// processed it first).
    processed_up_to: Option<usize>,
}

impl SymbolTruth {
    fn new(fixture: String, snapshot: &BinanceSnapshot) -> Self {
        let mut truth = SymbolTruth {
            fixture,
            fixture_served: false,
            bids: HashMap::new(),
            asks: HashMap::new(),
            last_update_id: snapshot.last_update_id,
            processed_up_to: None,
        };
        for (side, levels) in [(Side::Bid, &snapshot.bids), (Side::Ask, &snapshot.asks)] {
            for (price, qty) in levels {
                truth.apply(side, price, qty);
            }
        }
        truth
    }

    /// Binance rule: absolute quantity, zero removes. Texts were validated at start.
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

    fn book(&self) -> OrderBook {
        let mut book = OrderBook::new();
        for (side, levels) in [(Side::Bid, &self.bids), (Side::Ask, &self.asks)] {
            for (price, (_, qty)) in levels {
                book.set(side, price.0, qty.parse().unwrap_or(0.0));
            }
        }
        book
    }

    /// The current book as a `/api/v3/depth` body, every level, best first.
    fn depth_body(&self) -> String {
        let sorted = |levels: &HashMap<PriceKey, (String, String)>, best_high: bool| {
            let mut v: Vec<_> = levels.iter().collect();
            v.sort_by(|a, b| {
                if best_high {
                    b.0.cmp(a.0)
                } else {
                    a.0.cmp(b.0)
                }
            });
            let parts: Vec<String> = v
                .into_iter()
                .map(|(_, (p, q))| serde_json::json!([p, q]).to_string())
                .collect();
            parts.join(",")
        };
        format!(
            "{{\"lastUpdateId\":{},\"bids\":[{}],\"asks\":[{}]}}",
            self.last_update_id,
            sorted(&self.bids, true),
            sorted(&self.asks, false)
        )
    }
}

/// One configured frame, parsed once at start.
struct Frame {
    raw: String,
    stream: String,
    depth: Option<DepthUpdate>,
}

struct Records {
    connections: Vec<ConnectionInfo>,
    /// Pings sent and not yet answered: (connection, payload, sent at).
    outstanding_pings: Vec<(usize, Vec<u8>, Instant)>,
    pongs: Vec<PongInfo>,
    /// Text messages clients sent: (connection, text).
    client_messages: Vec<(usize, String)>,
    /// Protocol Pings clients sent (answered automatically).
    client_pings: usize,
    /// Valid `/stream` handshake attempts so far (accepted or refused).
    handshake_attempts: usize,
    /// Handshake attempts refused by `ConnectionFault::Refuse` or during a `ServerShutdown`
    /// with `refuse_replacement`.
    refused: usize,
    /// A connection announced `serverShutdown` and is still open.
    shutting_down: bool,
}

struct State {
    truth: HashMap<String, SymbolTruth>,
    fail_depth: VecDeque<(u16, Option<u64>)>,
    depth_requests: HashMap<String, usize>,
    depth_log: Vec<DepthRequest>,
    records: Records,
}

struct Shared {
    frames: Vec<Frame>,
    drop_frames: HashSet<usize>,
    duplicate_frames: HashSet<usize>,
    swap_frames: HashSet<usize>,
    inject_raw: HashMap<usize, Vec<String>>,
    connection_faults: HashMap<usize, ConnectionFault>,
    server_shutdown: Option<ServerShutdown>,
    ping_interval: Duration,
    frame_interval: Duration,
    start_delay: Duration,
    resume: bool,
    exchange_info: Option<String>,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        crate::lock(&self.state)
    }
}

/// The running mock: a WebSocket port and a REST port on 127.0.0.1. Stops when dropped.
pub struct MockBinance {
    shared: Arc<Shared>,
    ws_addr: std::net::SocketAddr,
    ws_task: JoinHandle<()>,
    rest: HttpServer,
    disconnect: watch::Sender<(u64, Disconnect)>,
}

impl MockBinance {
    /// Validates `config` (panics naming the bad frame or snapshot: a broken test input is
    /// reported at setup, never inside a server task) and starts both servers.
    pub async fn start(config: MockBinanceConfig) -> MockBinance {
        let frames: Vec<Frame> = config
            .frames
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                let value: serde_json::Value = serde_json::from_str(&raw)
                    .unwrap_or_else(|e| panic!("MockBinance: frame {i} is not JSON ({e}): {raw}"));
                let stream = value
                    .get("stream")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_else(|| {
                        panic!("MockBinance: frame {i} is not a combined-stream frame: {raw}")
                    })
                    .to_owned();
                let depth = DepthUpdate::parse(&raw)
                    .unwrap_or_else(|e| panic!("MockBinance: frame {i}: {e}: {raw}"));
                for (_, price, qty) in depth.iter().flat_map(DepthUpdate::levels) {
                    if price.parse::<f64>().is_err() || qty.parse::<f64>().is_err() {
                        panic!("MockBinance: frame {i} has a non-numeric level: {raw}");
                    }
                }
                Frame { raw, stream, depth }
            })
            .collect();
        if let Some(bad) = config.drop_frames.iter().find(|&&i| i >= frames.len()) {
            panic!(
                "MockBinance: drop_frames index {bad} >= {} frames",
                frames.len()
            );
        }
        let truth = config
            .snapshots
            .into_iter()
            .map(|(symbol, body)| {
                let snapshot = BinanceSnapshot::parse(&body)
                    .unwrap_or_else(|e| panic!("MockBinance: snapshot of {symbol}: {e}"));
                let truth = SymbolTruth::new(body, &snapshot);
                (symbol.to_ascii_uppercase(), truth)
            })
            .collect();
        for (name, set) in [
            ("duplicate_frames", &config.duplicate_frames),
            ("swap_frames", &config.swap_frames),
        ] {
            if let Some(bad) = set.iter().find(|&&i| i >= frames.len()) {
                panic!("MockBinance: {name} index {bad} >= {} frames", frames.len());
            }
        }
        let mut inject_raw: HashMap<usize, Vec<String>> = HashMap::new();
        for (i, text) in config.inject_raw {
            assert!(
                i < frames.len(),
                "MockBinance: inject_raw index {i} >= {} frames",
                frames.len()
            );
            inject_raw.entry(i).or_default().push(text);
        }
        let shared = Arc::new(Shared {
            frames,
            drop_frames: config.drop_frames,
            duplicate_frames: config.duplicate_frames,
            swap_frames: config.swap_frames,
            inject_raw,
            connection_faults: config.connection_faults,
            server_shutdown: config.server_shutdown,
            ping_interval: config.ping_interval,
            frame_interval: config.frame_interval,
            start_delay: config.start_delay,
            resume: config.resume,
            exchange_info: config.exchange_info,
            state: Mutex::new(State {
                truth,
                fail_depth: config.fail_depth.into(),
                depth_requests: HashMap::new(),
                depth_log: Vec::new(),
                records: Records {
                    connections: Vec::new(),
                    outstanding_pings: Vec::new(),
                    pongs: Vec::new(),
                    client_messages: Vec::new(),
                    client_pings: 0,
                    handshake_attempts: 0,
                    refused: 0,
                    shutting_down: false,
                },
            }),
        });

        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind 127.0.0.1:0 for the mock Binance WebSocket");
        let ws_addr = listener
            .local_addr()
            .expect("local address of the mock Binance WebSocket");
        let (disconnect, disconnect_rx) = watch::channel((0, Disconnect::Abrupt));
        let ws_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), disconnect_rx));

        let rest_shared = Arc::clone(&shared);
        let rest = HttpServer::start(move |req| rest_answer(&rest_shared, req)).await;

        MockBinance {
            shared,
            ws_addr,
            ws_task,
            rest,
            disconnect,
        }
    }

    /// `ws://127.0.0.1:P` (append `/stream?streams=...`).
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.ws_addr)
    }

    /// `ws://127.0.0.1:P/stream?streams=<streams joined by />`.
    pub fn stream_url(&self, streams: &[impl AsRef<str>]) -> String {
        let joined: Vec<&str> = streams.iter().map(AsRef::as_ref).collect();
        format!("{}/stream?streams={}", self.ws_url(), joined.join("/"))
    }

    /// `http://127.0.0.1:Q` (the REST base: `/api/v3/depth`, `/api/v3/exchangeInfo`).
    pub fn rest_url(&self) -> String {
        self.rest.url()
    }

    /// Every REST request received, in order.
    pub fn rest_requests(&self) -> Vec<Request> {
        self.rest.requests()
    }

    /// Every accepted WebSocket connection, open or closed, in accept order.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.shared.state().records.connections.clone()
    }

    /// The connections still open.
    pub fn active_connections(&self) -> Vec<ConnectionInfo> {
        self.connections()
            .into_iter()
            .filter(|c| c.active)
            .collect()
    }

    /// Every Pong received, in order.
    pub fn pongs(&self) -> Vec<PongInfo> {
        self.shared.state().records.pongs.clone()
    }

    /// Protocol Pings sent by the mock, over all connections.
    pub fn pings_sent(&self) -> usize {
        self.shared
            .state()
            .records
            .connections
            .iter()
            .map(|c| c.pings_sent)
            .sum()
    }

    /// Protocol Pings sent by clients (the mock answers them; Binance counts them against the
    /// 5 messages/s limit).
    pub fn client_pings(&self) -> usize {
        self.shared.state().records.client_pings
    }

    /// Text messages clients sent, as (connection id, text).
    pub fn client_messages(&self) -> Vec<(usize, String)> {
        self.shared.state().records.client_messages.clone()
    }

    /// Frames sent, over all connections.
    pub fn frames_sent(&self) -> usize {
        self.shared
            .state()
            .records
            .connections
            .iter()
            .map(|c| c.frames_sent)
            .sum()
    }

    /// Every text the connections sent: frames, duplicates and injected texts. What a client
    /// counts as data frames.
    pub fn texts_sent(&self) -> usize {
        self.shared
            .state()
            .records
            .connections
            .iter()
            .map(|c| c.frames_sent + c.extra_sent)
            .sum()
    }

    /// Valid `/stream` handshake attempts so far, accepted or refused.
    pub fn handshake_attempts(&self) -> usize {
        self.shared.state().records.handshake_attempts
    }

    /// Handshakes refused by [`ConnectionFault::Refuse`].
    pub fn refused_connections(&self) -> usize {
        self.shared.state().records.refused
    }

    /// Every depth request with a `symbol`, in order, with its answer's status.
    pub fn depth_log(&self) -> Vec<DepthRequest> {
        self.shared.state().depth_log.clone()
    }

    /// Depth requests for `symbol` (uppercase, as sent) so far, including those answered
    /// with a `fail_depth` error.
    pub fn depth_requests(&self, symbol: &str) -> usize {
        self.shared
            .state()
            .depth_requests
            .get(symbol)
            .copied()
            .unwrap_or(0)
    }

    /// The exchange's truth for `symbol`: its snapshot plus every frame processed so far (sent
    /// or dropped). Panics for a symbol without a configured snapshot.
    pub fn book(&self, symbol: &str) -> OrderBook {
        let state = self.shared.state();
        state
            .truth
            .get(&symbol.to_ascii_uppercase())
            .unwrap_or_else(|| panic!("MockBinance::book: no snapshot configured for {symbol}"))
            .book()
    }

    /// The truth's `lastUpdateId` for `symbol` (`u` of the last processed frame, or the
    /// snapshot's), `None` without a configured snapshot.
    pub fn last_update_id(&self, symbol: &str) -> Option<u64> {
        self.shared
            .state()
            .truth
            .get(&symbol.to_ascii_uppercase())
            .map(|t| t.last_update_id)
    }

    /// Whether at least one connection is open and every open connection has processed all
    /// its frames. False with no open connection, so a test waiting for it does not pass
    /// while the client is between a disconnect and its reconnect.
    pub fn all_frames_sent(&self) -> bool {
        let state = self.shared.state();
        let active: Vec<bool> = state
            .records
            .connections
            .iter()
            .filter(|c| c.active)
            .map(|c| c.replay_done)
            .collect();
        !active.is_empty() && active.iter().all(|&done| done)
    }

    /// Waits until [`MockBinance::all_frames_sent`] or `timeout`; returns its last value.
    pub async fn wait_all_frames_sent(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.all_frames_sent() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until at least `n` connections were accepted in total or `timeout`; returns the
    /// number accepted.
    pub async fn wait_for_connections(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.shared.state().records.connections.len();
            if count >= n || Instant::now() >= deadline {
                return count;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until at least `n` Pongs were received or `timeout`; returns the count.
    pub async fn wait_for_pongs(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.shared.state().records.pongs.len();
            if count >= n || Instant::now() >= deadline {
                return count;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Ends every open connection abruptly: the TCP connection is dropped without a close
    /// handshake, as on network loss. Later connections are served normally.
    pub fn disconnect_all(&self) {
        self.disconnect
            .send_modify(|state| *state = (state.0 + 1, Disconnect::Abrupt));
    }

    /// Ends every open connection with a Close frame (1001 going away), as Binance does
    /// before a restart or at the 24 h mark.
    pub fn close_all(&self) {
        self.disconnect
            .send_modify(|state| *state = (state.0 + 1, Disconnect::Close));
    }
}

impl Drop for MockBinance {
    fn drop(&mut self) {
        // The accept future owns the JoinSet of connections: aborting it ends them all.
        self.ws_task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// REST

fn binance_error(status: u16, code: i64, msg: &str) -> Response {
    Response::json(
        status,
        serde_json::json!({ "code": code, "msg": msg }).to_string(),
    )
}

fn rest_answer(shared: &Shared, req: &Request) -> Response {
    if !req.method.eq_ignore_ascii_case("GET") {
        return binance_error(405, -1000, "Method not allowed in the mock.");
    }
    match req.path_only() {
        "/api/v3/depth" => depth_answer(shared, req),
        "/api/v3/exchangeInfo" => match &shared.exchange_info {
            Some(body) => Response::json(200, body.clone()),
            None => Response::empty(404),
        },
        "/api/v3/ping" => Response::json(200, "{}"),
        _ => Response::empty(404),
    }
}

fn depth_answer(shared: &Shared, req: &Request) -> Response {
    let Some(symbol) = req.query_param("symbol").filter(|s| !s.is_empty()) else {
        return binance_error(
            400,
            -1102,
            "Mandatory parameter 'symbol' was not sent, was empty/malformed.",
        );
    };
    // One lock for the answer and its log entry, so the log is in answer order.
    let mut state = shared.state();
    let response = depth_response(&mut state, symbol);
    state.depth_log.push(DepthRequest {
        symbol: symbol.to_owned(),
        status: response.status,
        at: Instant::now(),
    });
    response
}

fn depth_response(state: &mut State, symbol: &str) -> Response {
    *state.depth_requests.entry(symbol.to_owned()).or_default() += 1;
    if let Some((status, retry_after)) = state.fail_depth.pop_front() {
        let response = binance_error(status, -1003, "Too many requests (mock fail_depth).");
        return match retry_after {
            Some(secs) => response.with_header("Retry-After", secs.to_string()),
            None => response,
        };
    }
    if !symbol
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"-_.".contains(&b))
    {
        return binance_error(
            400,
            -1100,
            "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'.",
        );
    }
    let Some(truth) = state.truth.get_mut(symbol) else {
        return binance_error(400, -1121, "Invalid symbol.");
    };
    if truth.fixture_served {
        Response::json(200, truth.depth_body())
    } else {
        truth.fixture_served = true;
        Response::json(200, truth.fixture.clone())
    }
}

// ---------------------------------------------------------------------------------------
// WebSocket

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    disconnect: watch::Receiver<(u64, Disconnect)>,
) {
    crate::accept::serve_each(listener, "ds-tests mock binance", |stream| {
        // Only disconnects requested from now on concern this connection.
        let mut disconnect = disconnect.clone();
        disconnect.mark_unchanged();
        serve_ws(stream, Arc::clone(&shared), disconnect)
    })
    .await;
}

/// Parses `/stream?streams=a/b`; `Err` is the 400 reason.
fn requested_streams(target: &str) -> Result<Vec<String>, String> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/stream" {
        return Err(format!(
            "mock Binance serves /stream?streams=... only, not {path}"
        ));
    }
    let streams: Vec<String> = crate::http::parse_query(query)
        .into_iter()
        .filter(|(k, _)| k == "streams")
        .flat_map(|(_, v)| {
            v.split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    if streams.is_empty() {
        return Err("no streams requested".to_owned());
    }
    Ok(streams)
}

/// The name under which a frame of `frame_stream` is sent to a client that asked for
/// `requested`, if it asked for it at all.
fn serves_as<'a>(requested: &'a [String], frame_stream: &str) -> Option<&'a str> {
    requested.iter().map(String::as_str).find(|&want| {
        want == frame_stream
            || frame_stream
                .strip_suffix("@100ms")
                .is_some_and(|base| base == want && want.ends_with("@depth"))
    })
}

fn close_connection(shared: &Shared, id: usize, reason: String) {
    let mut state = shared.state();
    if let Some(conn) = state.records.connections.get_mut(id) {
        conn.active = false;
        conn.closed_at = Some(Instant::now());
        conn.close_reason.get_or_insert(reason);
    }
    state.records.outstanding_pings.retain(|(c, _, _)| *c != id);
}

/// Serves one WebSocket connection until the peer leaves, an error occurs, a forced
/// disconnect, or the mock is dropped (task aborted). Errors are logged, never panicked on.
async fn serve_ws(
    stream: TcpStream,
    shared: Arc<Shared>,
    mut disconnect: watch::Receiver<(u64, Disconnect)>,
) {
    let mut target = String::new();
    let mut fault = None;
    let mut attempt_no = usize::MAX;
    // The callback's signature is tungstenite's; its large Err type is not ours to box.
    #[allow(clippy::result_large_err)]
    let callback = |req: &WsRequest, resp: WsResponse| -> Result<WsResponse, ErrorResponse> {
        target = req.uri().to_string();
        match requested_streams(&target) {
            Ok(_) => {
                let mut state = shared.state();
                let attempt = state.records.handshake_attempts;
                state.records.handshake_attempts += 1;
                attempt_no = attempt;
                fault = shared.connection_faults.get(&attempt).copied();
                let shutting_down = state.records.shutting_down
                    && shared.server_shutdown.is_some_and(|s| s.refuse_replacement);
                if fault == Some(ConnectionFault::Refuse) || shutting_down {
                    state.records.refused += 1;
                    return Err(crate::accept::refusal(StatusCode::SERVICE_UNAVAILABLE, format!("mock refuses attempt {attempt}")));
                }
                Ok(resp)
            }
            Err(reason) => {
                Err(crate::accept::refusal(StatusCode::BAD_REQUEST, reason))
            }
        }
    };
    let Some(ws) = crate::accept::websocket(stream, "ds-tests mock binance", callback).await else {
        return;
    };
    let Ok(streams) = requested_streams(&target) else {
        return; // refused in the callback already
    };

    // The frames this connection serves, with the name to send them under.
    let plan: Vec<(usize, &str)> = shared
        .frames
        .iter()
        .enumerate()
        .filter_map(|(i, f)| serves_as(&streams, &f.stream).map(|name| (i, name)))
        .collect();
    let connected_at = Instant::now();
    let (id, resume_from) = {
        let mut state = shared.state();
        // What the truth had processed when this connection opened: with `resume`, frames up
        // to there are not this connection's business; later ones are, whoever sent them.
        let resume_from: HashMap<String, usize> = state
            .truth
            .iter()
            .filter_map(|(symbol, t)| t.processed_up_to.map(|p| (symbol.clone(), p)))
            .collect();
        let id = state.records.connections.len();
        state.records.connections.push(ConnectionInfo {
            id,
            path: target.clone(),
            streams: streams.clone(),
            connected_at,
            frames_sent: 0,
            frames_dropped: 0,
            extra_sent: 0,
            stalled: false,
            frames_planned: plan.len(),
            replay_done: plan.is_empty(),
            pings_sent: 0,
            active: true,
            closed_at: None,
            close_reason: None,
        });
        (id, resume_from)
    };
    let notice = shared.server_shutdown.filter(|s| s.attempt == attempt_no);
    // When the connection that announced `serverShutdown` is closed by the mock.
    let mut shutdown_close_at: Option<Instant> = None;

    let (mut tx, mut rx) = ws.split();
    let mut ping = tokio::time::interval_at(
        connected_at + shared.ping_interval,
        shared.ping_interval.max(Duration::from_millis(1)),
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_frame_at = connected_at + shared.start_delay;
    let mut pos = 0;
    let mut pings = 0u64;
    // `StallAfter`: no frames and no pings any more, reading goes on.
    let mut stalled = false;
    // Plan positions already sent ahead of their place by a swap.
    let mut consumed: HashSet<usize> = HashSet::new();

    let reason = loop {
        tokio::select! {
            biased;
            changed = disconnect.changed() => {
                if changed.is_err() {
                    break "mock dropped".to_owned(); // this task is being aborted anyway
                }
                let kind = disconnect.borrow_and_update().1;
                if kind == Disconnect::Close {
                    let frame = CloseFrame { code: CloseCode::Away, reason: "mock close_all".into() };
                    let _ = tx.send(Message::Close(Some(frame))).await;
                }
                break format!("forced disconnect ({kind:?})");
            }
            _ = tokio::time::sleep_until(shutdown_close_at.unwrap_or(connected_at)), if shutdown_close_at.is_some() => {
                let frame = CloseFrame { code: CloseCode::Away, reason: "server shutdown".into() };
                let _ = tx.send(Message::Close(Some(frame))).await;
                break "mock serverShutdown close".to_owned();
            }
            incoming = rx.next() => match incoming {
                None => break "peer closed the TCP connection".to_owned(),
                Some(Err(e)) => break format!("read error: {e}"),
                Some(Ok(Message::Pong(payload))) => record_pong(&shared, id, payload.to_vec()),
                Some(Ok(Message::Ping(_))) => shared.state().records.client_pings += 1,
                Some(Ok(Message::Text(text))) => {
                    let text = text.to_string();
                    let reply = control_reply(&text);
                    shared.state().records.client_messages.push((id, text));
                    if let Err(e) = tx.send(Message::text(reply)).await {
                        break format!("write error: {e}");
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    // tungstenite queues the close reply; flush it, then stop.
                    let _ = tx.flush().await;
                    break format!("peer sent Close {frame:?}");
                }
                Some(Ok(_)) => {} // binary / raw frames: ignored, as Binance would
            },
            _ = ping.tick(), if !stalled => {
                pings += 1;
                let payload = format!("mock-ping-{id}-{pings}").into_bytes();
                {
                    let mut state = shared.state();
                    state.records.outstanding_pings.push((id, payload.clone(), Instant::now()));
                    state.records.connections[id].pings_sent += 1;
                }
                if let Err(e) = tx.send(Message::Ping(payload.into())).await {
                    break format!("write error: {e}");
                }
            }
            _ = tokio::time::sleep_until(next_frame_at), if pos < plan.len() && !stalled => {
                let here = pos;
                pos += 1;
                if consumed.remove(&here) {
                    // Already sent, ahead of its place, by a swap.
                    if pos == plan.len() {
                        shared.state().records.connections[id].replay_done = true;
                    }
                    continue;
                }
                let (index, name) = plan[here];
                let (outcome, mut texts) = frame_texts(&shared, id, index, name, &resume_from);
                // Swaps, like duplicates and injections, apply to a frame's first sending, not
                // to a second connection's copy.
                if matches!(outcome, FrameOutcome::Send | FrameOutcome::Drop) && shared.swap_frames.contains(&index) {
                    // Send the next frame of the same stream first; the truth has already
                    // applied this one, so it keeps the real order.
                    let stream = &shared.frames[index].stream;
                    if let Some(q) = (pos..plan.len())
                        .find(|&q| !consumed.contains(&q) && shared.frames[plan[q].0].stream == *stream)
                    {
                        consumed.insert(q);
                        let (_, mut first) = frame_texts(&shared, id, plan[q].0, plan[q].1, &resume_from);
                        first.append(&mut texts);
                        texts = first;
                    }
                }
                let mut write_error = None;
                for (text, is_frame) in texts {
                    if let Err(e) = tx.send(Message::text(text)).await {
                        write_error = Some(format!("write error: {e}"));
                        break;
                    }
                    let mut state = shared.state();
                    let conn = &mut state.records.connections[id];
                    if is_frame {
                        conn.frames_sent += 1;
                    } else {
                        conn.extra_sent += 1;
                    }
                }
                if let Some(e) = write_error {
                    break e;
                }
                if pos == plan.len() {
                    shared.state().records.connections[id].replay_done = true;
                }
                let sent = shared.state().records.connections[id].frames_sent;
                if let Some(n) = notice.filter(|n| shutdown_close_at.is_none() && sent >= n.after_frames) {
                    if let Err(e) = tx.send(Message::text(server_shutdown_text())).await {
                        break format!("write error: {e}");
                    }
                    let mut state = shared.state();
                    state.records.connections[id].extra_sent += 1;
                    state.records.shutting_down = true;
                    shutdown_close_at = Some(Instant::now() + n.close_after);
                }
                match fault {
                    Some(ConnectionFault::CloseAfter(n)) if sent >= n => {
                        // Dropping both halves drops the TCP connection without a Close.
                        break format!("mock close_after {n} frames");
                    }
                    Some(ConnectionFault::StallAfter(n)) if sent >= n => {
                        stalled = true;
                        shared.state().records.connections[id].stalled = true;
                    }
                    _ => {}
                }
                if outcome != FrameOutcome::Skip {
                    if shared.frame_interval.is_zero() {
                        tokio::task::yield_now().await;
                    }
                    next_frame_at = Instant::now() + shared.frame_interval;
                }
            }
        }
    };
    if shutdown_close_at.is_some() {
        shared.state().records.shutting_down = false;
    }
    close_connection(&shared, id, reason);
}

/// Processes frame `index` (see [`process_frame`]) and returns the texts this connection
/// sends for it, each with whether it counts as a frame (`false`: a duplicate copy or an
/// injected text).
fn frame_texts(
    shared: &Shared,
    connection: usize,
    index: usize,
    name: &str,
    resume_from: &HashMap<String, usize>,
) -> (FrameOutcome, Vec<(String, bool)>) {
    let outcome = process_frame(shared, connection, index, resume_from);
    let mut texts = Vec::new();
    if outcome == FrameOutcome::Send || outcome == FrameOutcome::Copy {
        let frame = &shared.frames[index];
        let text = if name == frame.stream {
            frame.raw.clone()
        } else {
            frame.raw.replacen(
                &format!("\"stream\":\"{}\"", frame.stream),
                &format!("\"stream\":\"{name}\""),
                1,
            )
        };
        if outcome == FrameOutcome::Send && shared.duplicate_frames.contains(&index) {
            texts.push((text.clone(), false));
        }
        texts.insert(0, (text, true));
    }
    if outcome == FrameOutcome::Send || outcome == FrameOutcome::Drop {
        for raw in shared.inject_raw.get(&index).into_iter().flatten() {
            texts.push((raw.clone(), false));
        }
    }
    (outcome, texts)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FrameOutcome {
    Send,
    /// Withheld (`drop_frames`); applied to the truth.
    Drop,
    /// Already processed by the truth when this connection opened, and `resume` is on: not
    /// this connection's business.
    Skip,
    /// With `resume`: already processed (and sent) by another connection open at the same
    /// time; this one sends its own plain copy, as every connection gets every event.
    Copy,
}

/// Applies frame `index` to the truth (once, whichever connection gets there first) and says
/// what this connection does with it.
fn process_frame(
    shared: &Shared,
    connection: usize,
    index: usize,
    resume_from: &HashMap<String, usize>,
) -> FrameOutcome {
    let frame = &shared.frames[index];
    let mut guard = shared.state();
    let state = &mut *guard;
    let mut copy = false;
    if let Some(update) = &frame.depth {
        if let Some(truth) = state.truth.get_mut(&update.symbol) {
            let already = truth.processed_up_to.is_some_and(|p| index <= p);
            if already && shared.resume {
                if resume_from.get(&update.symbol).is_some_and(|&p| index <= p) {
                    let conn = &mut state.records.connections[connection];
                    conn.frames_planned -= 1;
                    return FrameOutcome::Skip;
                }
                copy = true;
            }
            if !already {
                truth.processed_up_to = Some(index);
                if update.final_update_id > truth.last_update_id {
                    for (side, price, qty) in update.levels() {
                        truth.apply(side, &price, &qty);
                    }
                    truth.last_update_id = update.final_update_id;
                }
            }
        }
    }
    if shared.drop_frames.contains(&index) {
        state.records.connections[connection].frames_dropped += 1;
        if copy {
            FrameOutcome::Skip
        } else {
            FrameOutcome::Drop
        }
    } else if copy {
        FrameOutcome::Copy
    } else {
        FrameOutcome::Send
    }
}

fn record_pong(shared: &Shared, connection: usize, payload: Vec<u8>) {
    let now = Instant::now();
    let mut state = shared.state();
    let records = &mut state.records;
    let matched = records
        .outstanding_pings
        .iter()
        .position(|(c, p, _)| *c == connection && *p == payload)
        .map(|i| records.outstanding_pings.remove(i));
    records.pongs.push(PongInfo {
        connection,
        payload,
        matched: matched.is_some(),
        latency: matched.map(|(_, _, sent)| now - sent),
        received_at: now,
    });
}

/// Binance's answer to a JSON control message the mock does not implement.
fn control_reply(text: &str) -> String {
    let id = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "code": 2,
        "msg": "Invalid request: the mock serves the streams of the URL only",
        "id": id,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::binance_reference;
    use futures::stream::SplitStream;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

    const SET_A: &str = "2021-04-04";
    const SET_B: &str = "2021-10-11";
    const WAIT: Duration = Duration::from_secs(20);

    async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        ws
    }

    /// Reads text frames until `n` were received (auto-answering pings), within `WAIT`.
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

    async fn get(url: String) -> (u16, String, reqwest::header::HeaderMap) {
        let resp = reqwest::get(&url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, resp.text().await.expect("body"), headers)
    }

    fn frames_of(frames: &[String], stream: &str) -> Vec<String> {
        frames
            .iter()
            .filter(|f| f.starts_with(&format!("{{\"stream\":\"{stream}\"")))
            .cloned()
            .collect()
    }

    #[tokio::test]
    async fn replays_filtered_frames_and_serves_fixture_snapshot() {
        let Some(config) = MockBinanceConfig::from_fixtures(SET_A) else {
            return;
        };
        let all = config.frames.clone();
        let btc_snapshot = config.snapshots["BTCUSDT"].clone();
        assert_eq!(
            config.depth_streams(),
            [
                "dotusdt@depth@100ms",
                "btcusdt@depth@100ms",
                "ethusdt@depth@100ms"
            ]
        );
        let mock = MockBinance::start(config).await;

        let ws = connect(&mock.stream_url(&["btcusdt@depth@100ms", "ethusdt@depth@100ms"])).await;
        let (_tx, mut rx) = ws.split();
        let expected: Vec<String> = all
            .iter()
            .filter(|f| !f.contains("\"dotusdt@depth@100ms\""))
            .cloned()
            .collect();
        assert_eq!(expected.len(), 899 + 909);
        let got = read_texts(&mut rx, expected.len()).await;
        assert_eq!(
            got, expected,
            "verbatim, in order, only the requested streams"
        );
        assert!(mock.wait_all_frames_sent(WAIT).await);
        assert_eq!(mock.frames_sent(), expected.len());
        let conns = mock.connections();
        assert_eq!(conns.len(), 1);
        assert_eq!(
            conns[0].streams,
            ["btcusdt@depth@100ms", "ethusdt@depth@100ms"]
        );
        assert!(conns[0].active && conns[0].replay_done);

        // First depth request: the fixture, verbatim.
        let url = format!("{}/api/v3/depth?symbol=BTCUSDT&limit=1000", mock.rest_url());
        let (status, body, headers) = get(url.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(body, btc_snapshot);
        assert!(headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/json"));

        // Later: the truth, which equals the reference over every frame.
        let reference = binance_reference(&btc_snapshot, &all, "BTCUSDT");
        assert_eq!(mock.book("BTCUSDT"), reference.book);
        assert_eq!(
            mock.last_update_id("BTCUSDT"),
            Some(reference.last_update_id)
        );
        let (status, body, _) = get(url).await;
        assert_eq!(status, 200);
        let (lid, book) = OrderBook::from_binance_snapshot(&body);
        assert_eq!(lid, reference.last_update_id);
        assert_eq!(book, reference.book);
        // Best first, text as received.
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let best_bid = v["bids"][0][0].as_str().expect("price text");
        assert_eq!(
            best_bid.parse::<f64>().ok(),
            reference.book.best_bid().map(|b| b.0)
        );
        assert!(
            best_bid.ends_with("000"),
            "text kept as received: {best_bid}"
        );
        assert_eq!(
            v["asks"].as_array().expect("asks").len(),
            reference.book.asks.len()
        );
        assert_eq!(mock.depth_requests("BTCUSDT"), 2);

        // The DOT truth was never processed (no connection asked for it).
        let (lid, _) = OrderBook::from_binance_snapshot(&depth_body_of(&mock, "DOTUSDT").await);
        assert_eq!(Some(lid), mock.last_update_id("DOTUSDT"));
    }

    async fn depth_body_of(mock: &MockBinance, symbol: &str) -> String {
        get(format!(
            "{}/api/v3/depth?symbol={symbol}&limit=1000",
            mock.rest_url()
        ))
        .await
        .1
    }

    #[tokio::test]
    async fn dropped_frame_breaks_the_chain_and_resync_matches_truth() {
        let Some(mut config) = MockBinanceConfig::from_fixtures(SET_B) else {
            return;
        };
        let all = config.frames.clone();
        let snapshot = config.snapshots["NKNUSDT"].clone();
        let nkn: Vec<usize> = (0..all.len())
            .filter(|&i| all[i].contains("\"nknusdt@depth@100ms\""))
            .collect();
        let lost = nkn[40];
        config.drop_frames.insert(lost);
        let mock = MockBinance::start(config).await;

        // A client following the Binance rule: snapshot, then the stream; it must see the gap.
        let (status, first_snapshot, _) = get(format!(
            "{}/api/v3/depth?symbol=NKNUSDT&limit=1000",
            mock.rest_url()
        ))
        .await;
        assert_eq!(status, 200);
        assert_eq!(first_snapshot, snapshot);
        let ws = connect(&mock.stream_url(&["nknusdt@depth@100ms"])).await;
        let (_tx, mut rx) = ws.split();
        let got = read_texts(&mut rx, nkn.len() - 1).await;
        let expected: Vec<String> = nkn
            .iter()
            .filter(|&&i| i != lost)
            .map(|&i| all[i].clone())
            .collect();
        assert_eq!(got, expected);
        let client_view = binance_reference(&snapshot, &got, "NKNUSDT");
        assert!(client_view.gap.is_some(), "the lost frame shows as a gap");

        // The truth still contains the lost frame; the resync snapshot carries it.
        assert!(mock.wait_all_frames_sent(WAIT).await);
        let truth = binance_reference(&snapshot, &all, "NKNUSDT");
        assert_eq!(truth.gap, None);
        assert_eq!(mock.book("NKNUSDT"), truth.book);
        let (lid, book) = OrderBook::from_binance_snapshot(&depth_body_of(&mock, "NKNUSDT").await);
        assert_eq!(lid, truth.last_update_id);
        assert_eq!(book, truth.book);
        let conn = &mock.connections()[0];
        assert_eq!((conn.frames_sent, conn.frames_dropped), (nkn.len() - 1, 1));
    }

    #[tokio::test]
    async fn depth_errors_fail_depth_and_exchange_info() {
        let Some(mut config) = MockBinanceConfig::from_fixtures(SET_B) else {
            return;
        };
        config.fail_depth = vec![(429, Some(3)), (503, None)];
        let info = config.exchange_info.clone();
        let mock = MockBinance::start(config).await;
        let depth = |q: &str| format!("{}/api/v3/depth?{q}", mock.rest_url());

        let (status, body, headers) = get(depth("symbol=BLZETH&limit=1000")).await;
        assert_eq!(
            (status, headers["retry-after"].to_str().ok()),
            (429, Some("3"))
        );
        assert!(body.contains("-1003"));
        let (status, _, headers) = get(depth("symbol=BLZETH&limit=1000")).await;
        assert_eq!(status, 503);
        assert!(headers.get("retry-after").is_none());
        let (status, body, _) = get(depth("symbol=BLZETH&limit=1000")).await;
        assert_eq!(status, 200);
        assert_eq!(body, mock.shared.state().truth["BLZETH"].fixture);
        assert_eq!(mock.depth_requests("BLZETH"), 3);

        let (status, body, _) = get(depth("symbol=NOPEUSDT")).await;
        assert_eq!(
            (status, body.as_str()),
            (400, r#"{"code":-1121,"msg":"Invalid symbol."}"#)
        );
        let (status, body, _) = get(depth("symbol=blzeth")).await;
        assert_eq!(status, 400);
        assert!(body.contains("-1100"));
        let (status, _, _) = get(depth("limit=5")).await;
        assert_eq!(status, 400);

        let (status, body, _) = get(format!("{}/api/v3/exchangeInfo", mock.rest_url())).await;
        if let Some(info) = info {
            assert_eq!(status, 200);
            assert_eq!(body.len(), info.len());
        }
    }

    #[tokio::test]
    async fn pings_pongs_and_the_1000ms_stream_name() {
        let Some(mut config) = MockBinanceConfig::from_fixtures(SET_B) else {
            return;
        };
        config.ping_interval = Duration::from_millis(50);
        config.frame_interval = Duration::from_millis(1);
        let rune = frames_of(&config.frames, "runeeur@depth@100ms");
        let mock = MockBinance::start(config).await;

        let ws = connect(&mock.stream_url(&["runeeur@depth"])).await;
        let (mut tx, mut rx) = ws.split();
        let got = read_texts(&mut rx, rune.len()).await;
        let renamed: Vec<String> = rune
            .iter()
            .map(|f| f.replacen("runeeur@depth@100ms", "runeeur@depth", 1))
            .collect();
        assert_eq!(got, renamed);

        // Keep reading: tungstenite answers each Ping with a Pong echoing its payload.
        let reader = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
        assert!(mock.wait_for_pongs(3, WAIT).await >= 3);
        let pongs = mock.pongs();
        assert!(
            pongs.iter().all(|p| p.matched && p.latency.is_some()),
            "{pongs:?}"
        );
        assert!(pongs[0].payload.starts_with(b"mock-ping-0-"));
        assert!(mock.pings_sent() >= 3);
        assert!(mock.all_frames_sent(), "replay done, connection kept open");

        // An unsolicited SUBSCRIBE is recorded and refused with Binance's error shape.
        tx.send(Message::text(
            r#"{"method":"SUBSCRIBE","params":["x@depth"],"id":7}"#,
        ))
        .await
        .expect("send");
        let deadline = Instant::now() + WAIT;
        while mock.client_messages().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        assert_eq!(mock.client_messages().len(), 1);
        reader.abort();
    }

    #[tokio::test]
    async fn disjoint_connections_disconnect_and_resume() {
        let Some(mut config) = MockBinanceConfig::from_fixtures(SET_A) else {
            return;
        };
        config.resume = true;
        config.frame_interval = Duration::from_millis(2);
        let all = config.frames.clone();
        let btc = frames_of(&all, "btcusdt@depth@100ms");
        let dot = frames_of(&all, "dotusdt@depth@100ms");
        let mock = MockBinance::start(config).await;

        let (_btc_tx, mut btc_rx) = connect(&mock.stream_url(&["btcusdt@depth@100ms"]))
            .await
            .split();
        let (_dot_tx, mut dot_rx) = connect(&mock.stream_url(&["dotusdt@depth@100ms"]))
            .await
            .split();
        assert_eq!(read_texts(&mut dot_rx, 5).await, dot[..5]);
        let first = read_texts(&mut btc_rx, 20).await;
        assert_eq!(first, btc[..20]);

        mock.disconnect_all();
        let deadline = Instant::now() + WAIT;
        while !mock.active_connections().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        assert!(mock.active_connections().is_empty());
        assert!(!mock.all_frames_sent(), "no open connection");
        // The client sees the connection end (error or end of stream), never a hang.
        let ended = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = btc_rx.next().await {}
        })
        .await;
        assert!(ended.is_ok());

        // Reconnect: with `resume`, the new connection continues after what the truth has
        // processed; client frames 0..19 plus everything after the reconnect point chain.
        let sent_before = mock.connections()[0].frames_sent;
        let (_tx, mut rx) = connect(&mock.stream_url(&["btcusdt@depth@100ms"]))
            .await
            .split();
        assert!(mock.wait_all_frames_sent(WAIT).await);
        let conn = mock.connections()[2].clone();
        assert!(conn.frames_planned < btc.len());
        let rest = read_texts(&mut rx, conn.frames_sent).await;
        assert_eq!(rest, btc[btc.len() - conn.frames_sent..]);
        assert!(sent_before + conn.frames_sent >= btc.len() - 1);
        let reference = binance_reference(
            &mock.shared.state().truth["BTCUSDT"].fixture,
            &all,
            "BTCUSDT",
        );
        assert_eq!(mock.book("BTCUSDT"), reference.book);
    }

    #[tokio::test]
    async fn server_shutdown_notice_overlapping_copies_and_refused_replacements() {
        let Some(mut config) = MockBinanceConfig::from_fixtures(SET_A) else {
            return;
        };
        config.resume = true;
        config.frame_interval = Duration::from_millis(2);
        config.server_shutdown = Some(ServerShutdown {
            attempt: 0,
            after_frames: 10,
            close_after: Duration::from_millis(600),
            refuse_replacement: true,
        });
        let btc = frames_of(&config.frames, "btcusdt@depth@100ms");
        let mock = MockBinance::start(config).await;
        let url = mock.stream_url(&["btcusdt@depth@100ms"]);
        let (_tx, mut rx) = connect(&url).await.split();
        let first = read_texts(&mut rx, 11).await;
        assert_eq!(first[..10], btc[..10]);
        assert!(first[10].starts_with(r#"{"e":"serverShutdown","E":"#), "{}", first[10]);
        // While the announcing connection is open, a replacement is refused...
        assert!(tokio_tungstenite::connect_async(&url).await.is_err());
        assert_eq!(mock.refused_connections(), 1);
        // ...the old one is served on, then closed with 1001.
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match rx.next().await {
                    Some(Ok(Message::Close(f))) => break f.map(|f| f.code),
                    Some(Ok(_)) => {}
                    _ => break None,
                }
            }
        })
        .await
        .expect("closed within the deadline");
        assert_eq!(closed, Some(CloseCode::Away));
        assert!(mock.connections()[0].frames_sent > 10);

        // Two connections open at the same time each get every frame after the later one
        // opened (a rollover's overlap), the earlier one sends its own copies.
        let (_a_tx, mut a_rx) = connect(&url).await.split();
        let (_b_tx, mut b_rx) = connect(&url).await.split();
        let a = read_texts(&mut a_rx, 30).await;
        let b = read_texts(&mut b_rx, 20).await;
        let start = a.iter().position(|f| *f == b[0]).expect("the later connection's first frame reached the earlier one too");
        let n = (a.len() - start).min(b.len());
        assert!(n >= 10, "overlap of {n} frames");
        assert_eq!(a[start..start + n], b[..n], "same frames, same order");
    }

    #[tokio::test]
    async fn refuses_other_paths() {
        let mock = MockBinance::start(MockBinanceConfig::default()).await;
        for path in ["/ws/btcusdt@depth", "/stream", "/stream?streams="] {
            let url = format!("{}{path}", mock.ws_url());
            let err = tokio_tungstenite::connect_async(&url)
                .await
                .expect_err("refused");
            assert!(err.to_string().contains("400"), "{path}: {err}");
        }
        assert!(mock.connections().is_empty());
        // Streams that match nothing: accepted, nothing sent, replay trivially done.
        let _ws = connect(&mock.stream_url(&["btcusdt@depth@100ms"])).await;
        assert!(mock.wait_all_frames_sent(WAIT).await);
        assert_eq!(mock.frames_sent(), 0);
    }

    #[tokio::test]
    async fn injected_faults_duplicate_swap_inject_refuse_stall_and_close() {
        let Some(mut config) = MockBinanceConfig::from_fixtures(SET_A) else {
            return;
        };
        let all = config.frames.clone();
        let btc: Vec<usize> = (0..all.len())
            .filter(|&i| all[i].starts_with("{\"stream\":\"btcusdt@depth@100ms\""))
            .collect();
        config.ping_interval = Duration::from_millis(50);
        config.resume = true;
        config.duplicate_frames = [btc[1]].into();
        config.swap_frames = [btc[3]].into();
        config.inject_raw = vec![(btc[5], "not json".to_owned())];
        config.connection_faults = [
            (0, ConnectionFault::Refuse),
            (1, ConnectionFault::StallAfter(8)),
            (2, ConnectionFault::CloseAfter(2)),
        ]
        .into();
        let reference = binance_reference(&config.snapshots["BTCUSDT"], &all, "BTCUSDT");
        let mock = MockBinance::start(config).await;
        let url = mock.stream_url(&["btcusdt@depth@100ms"]);

        let err = tokio_tungstenite::connect_async(&url)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("503"), "{err}");
        assert_eq!(
            (mock.refused_connections(), mock.handshake_attempts()),
            (1, 1)
        );

        // Attempt 1: 0, 1, 1 (duplicate), 2, 4, 3 (swapped), the injected text after 5... and
        // it stalls after 8 frames: no more frames, no more pings.
        let (_tx, mut rx) = connect(&url).await.split();
        let got = read_texts(&mut rx, 10).await;
        let f = |i: usize| all[btc[i]].clone();
        assert_eq!(
            got,
            [
                f(0),
                f(1),
                f(1),
                f(2),
                f(4),
                f(3),
                f(5),
                "not json".to_owned(),
                f(6),
                f(7)
            ]
        );
        let quiet = tokio::time::timeout(Duration::from_millis(400), rx.next()).await;
        assert!(quiet.is_err(), "stalled: nothing at all, got {quiet:?}");
        let conn = &mock.connections()[0];
        assert!(conn.stalled && conn.active);
        assert_eq!((conn.frames_sent, conn.extra_sent), (8, 2));
        assert_eq!(mock.texts_sent(), 10);
        // The truth applied every processed frame once, in the original order.
        let expected_lid = reference
            .applied
            .iter()
            .rfind(|u| u.index <= btc[7])
            .map_or(reference.snapshot_last_update_id, |u| u.final_update_id);
        assert_eq!(mock.last_update_id("BTCUSDT"), Some(expected_lid));
        drop((_tx, rx));

        // Attempt 2 resumes after frame 7, then is dropped after two frames.
        let (_tx2, mut rx2) = connect(&url).await.split();
        assert_eq!(read_texts(&mut rx2, 2).await, [f(8), f(9)]);
        let ended =
            tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = rx2.next().await {} }).await;
        assert!(ended.is_ok(), "dropped after two frames");
        assert!(mock.connections()[1]
            .close_reason
            .as_deref()
            .unwrap_or("")
            .contains("close_after"));

        // Attempt 3 is normal and serves the rest; the truth is the whole capture.
        let (_tx3, _rx3) = connect(&url).await.split();
        assert!(mock.wait_all_frames_sent(WAIT).await);
        assert_eq!(mock.book("BTCUSDT"), reference.book);
    }

    #[tokio::test]
    async fn close_all_sends_close_frame() {
        let mock = MockBinance::start(MockBinanceConfig::default()).await;
        let (_tx, mut rx) = connect(&mock.stream_url(&["x@depth"])).await.split();
        assert_eq!(mock.wait_for_connections(1, WAIT).await, 1);
        mock.close_all();
        let msg = tokio::time::timeout(WAIT, rx.next())
            .await
            .expect("close within the deadline");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected a Close frame, got {other:?}"),
        }
    }
}
