//! `BybitSession`: one websocket connection to `/v5/public/{category}` carrying a group of
//! topics. It subscribes (acks checked under a timeout), keeps the client heartbeat, turns
//! frames into packets through a [`TopicFeed`] (order books or trades), resubscribes a topic
//! whose book lost its chain, and marks gaps when the connection ends.
//!
//! The read loop never waits: packets go to the sink's buffer with a non-blocking send, and
//! every request Bybit must answer is tracked in [`Subscriptions`] and checked on each
//! heartbeat tick, so a missing answer turns into a reconnect, not a hang.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use ds_api::buffer::PacketSender;
use ds_api::stats::RateLimit;
use ds_api::traits::Parser;
use ds_api::ws::{Disconnect, Flow, SessionHandler, WsMessage, WsStream};
use ds_api::clock::{self, SeriesClock};
use ds_api::{async_trait, DataPacket, FastMap, FeedStats, GapReason, Instrument, InvalidFrame, Trade};

use crate::book_sync::{BookMessage, BookSync, SyncOutcome};
use crate::options::{Category, SessionOptions};
use crate::parser::{BookFrame, OpKind, OpReply, OrderbookParser, TradeFrame, TradeParser};
use crate::subscription::{orderbook_topic, ping_request, trade_topic, AckOutcome, Beat, Heartbeat, Subscriptions};

/// What one frame turned out to be, as far as the session is concerned.
#[derive(Debug)]
pub enum Handled {
    /// Data, stored (or counted) by the feed.
    Data,
    /// An answer to one of our requests.
    Reply(OpReply),
    /// The topic at this index lost its chain: resubscribe it.
    Resubscribe(usize),
}

/// What a kind of Bybit feed does with the data of its topics.
pub trait TopicFeed: Send + 'static {
    /// Whether subscribing a topic brings a snapshot, i.e. (re)syncs a book.
    const SNAPSHOT_ON_SUBSCRIBE: bool;

    /// The connection's topics, one per symbol, in symbol order.
    fn topics(&self) -> Vec<String>;

    /// Parses one text frame; packets to store go to `out`. `Err` is the reason the frame is
    /// invalid (it is then stored as such).
    fn on_frame(&mut self, frame: &[u8], recv_ns: i64, out: &mut Vec<DataPacket>, stats: &FeedStats) -> Result<Handled, String>;

    /// The connection ended at `at_ns`: nothing is known until each topic's next snapshot.
    fn on_disconnect(&mut self, reason: GapReason, at_ns: i64, out: &mut Vec<DataPacket>, stats: &FeedStats);
}

/// Topic name -> index, for a cheap lookup by the frame's borrowed `topic`.
fn topic_index(topics: &[String]) -> FastMap<Box<str>, usize> {
    topics.iter().enumerate().map(|(i, t)| (Box::from(t.as_str()), i)).collect()
}

fn instrument(category: Category, symbol: &str) -> Instrument {
    Instrument { exchange: "bybit", market: category.as_str(), symbol: Arc::from(symbol) }
}

/// `orderbook.{depth}.{symbol}` topics, each with its [`BookSync`].
pub struct OrderbookTopics {
    topics: Vec<String>,
    by_topic: FastMap<Box<str>, usize>,
    books: Vec<BookSync>,
}

impl OrderbookTopics {
    pub fn new(category: Category, depth: u32, symbols: &[String]) -> Self {
        let topics: Vec<String> = symbols.iter().map(|s| orderbook_topic(depth, s)).collect();
        let books = symbols.iter().map(|s| BookSync::new(instrument(category, s))).collect();
        OrderbookTopics { by_topic: topic_index(&topics), topics, books }
    }

    pub fn book(&self, i: usize) -> &BookSync {
        &self.books[i]
    }
}

impl TopicFeed for OrderbookTopics {
    const SNAPSHOT_ON_SUBSCRIBE: bool = true;

    fn topics(&self) -> Vec<String> {
        self.topics.clone()
    }

    fn on_frame(&mut self, frame: &[u8], recv_ns: i64, out: &mut Vec<DataPacket>, stats: &FeedStats) -> Result<Handled, String> {
        match OrderbookParser.parse(frame).map_err(|e| e.to_string())? {
            BookFrame::Reply(r) => Ok(Handled::Reply(r)),
            BookFrame::Update(u) => {
                let Some(&i) = self.by_topic.get(u.topic) else {
                    return Err(format!("push for a topic not subscribed here: {}", u.topic));
                };
                let book = &mut self.books[i];
                if u.symbol != &*book.instrument().symbol {
                    return Err(format!("{} push carries symbol {:?}", u.topic, u.symbol));
                }
                Ok(match book.on_message(BookMessage::from_update(u, recv_ns), out, stats) {
                    SyncOutcome::Ok => Handled::Data,
                    SyncOutcome::Resubscribe => Handled::Resubscribe(i),
                })
            }
        }
    }

    fn on_disconnect(&mut self, reason: GapReason, at_ns: i64, out: &mut Vec<DataPacket>, stats: &FeedStats) {
        for b in &mut self.books {
            b.on_disconnect_at(reason, at_ns, out, stats);
        }
    }
}

/// `publicTrade.{symbol}` topics. Trades carry no chain to check (their `seq` is the
/// matching engine's cross sequence, not contiguous per symbol), so there is no gap to mark;
/// trades made while disconnected are not re-sent by Bybit, and the `reconnects` counter is
/// where that shows.
pub struct TradeTopics {
    topics: Vec<String>,
    by_topic: FastMap<Box<str>, usize>,
    instruments: Vec<Instrument>,
    /// One clock per symbol's trade series (see `ds_api::clock::SeriesClock`).
    clocks: Vec<SeriesClock>,
}

impl TradeTopics {
    pub fn new(category: Category, symbols: &[String]) -> Self {
        let topics: Vec<String> = symbols.iter().map(|s| trade_topic(s)).collect();
        let instruments = symbols.iter().map(|s| instrument(category, s)).collect();
        let clocks = vec![SeriesClock::new(); symbols.len()];
        TradeTopics { by_topic: topic_index(&topics), topics, instruments, clocks }
    }
}

impl TopicFeed for TradeTopics {
    const SNAPSHOT_ON_SUBSCRIBE: bool = false;

    fn topics(&self) -> Vec<String> {
        self.topics.clone()
    }

    fn on_frame(&mut self, frame: &[u8], recv_ns: i64, out: &mut Vec<DataPacket>, stats: &FeedStats) -> Result<Handled, String> {
        match TradeParser.parse(frame).map_err(|e| e.to_string())? {
            TradeFrame::Reply(r) => Ok(Handled::Reply(r)),
            TradeFrame::Trades { topic, trades } => {
                let Some(&i) = self.by_topic.get(topic) else {
                    return Err(format!("push for a topic not subscribed here: {topic}"));
                };
                let inst = &self.instruments[i];
                if let Some(t) = trades.iter().find(|t| t.symbol != &*inst.symbol) {
                    return Err(format!("{topic} push carries a trade of {:?}", t.symbol));
                }
                // Many trades share a frame and a millisecond: one run of unique timestamps,
                // in Bybit's order, so none overwrites another (contract 4).
                let first_ns = self.clocks[i].reserve(recv_ns, trades.len());
                stats.trades.add(trades.len() as u64);
                stats.points.add(trades.len() as u64);
                for (k, t) in trades.into_iter().enumerate() {
                    out.push(DataPacket::Trade(Trade {
                        instrument: inst.clone(),
                        trade_id: t.trade_id.as_ref().into(),
                        price: t.price,
                        size: t.size,
                        taker_side: t.taker_side,
                        event_time_ms: Some(t.time_ms),
                        recv_time_ns: first_ns + k as i64,
                    }));
                }
                Ok(Handled::Data)
            }
        }
    }

    fn on_disconnect(&mut self, _reason: GapReason, _at_ns: i64, _out: &mut Vec<DataPacket>, _stats: &FeedStats) {}
}

/// One Bybit connection.
pub struct BybitSession<F: TopicFeed> {
    feed_name: Arc<str>,
    conn: String,
    url: String,
    feed: F,
    subs: Subscriptions,
    heartbeat: Heartbeat,
    ack_timeout: Duration,
    out: PacketSender,
    stats: Arc<FeedStats>,
    invalid_log: RateLimit,
    packets: Vec<DataPacket>,
    /// Keeps the session's event channel open; Bybit sessions start no background work.
    _events: mpsc::Sender<Infallible>,
}

impl<F: TopicFeed> BybitSession<F> {
    /// `conn` names the connection in logs (`bybit-spot-books#0`).
    pub fn new(feed_name: Arc<str>, conn: String, o: &SessionOptions, feed: F, out: PacketSender, stats: Arc<FeedStats>, events: mpsc::Sender<Infallible>) -> Self {
        let subs = Subscriptions::new(feed.topics(), o.args_per_request);
        BybitSession {
            feed_name,
            conn,
            url: o.stream_url(),
            feed,
            subs,
            heartbeat: Heartbeat::new(o.ping_interval, o.pong_timeout),
            ack_timeout: o.ack_timeout,
            out,
            stats,
            invalid_log: RateLimit::default(),
            packets: Vec::new(),
            _events: events,
        }
    }

    /// How often [`SessionHandler::on_heartbeat`] must run.
    pub fn tick_every(&self) -> Duration {
        self.heartbeat.tick_every(self.ack_timeout)
    }

    pub fn feed(&self) -> &F {
        &self.feed
    }

    fn flush_packets(&mut self) {
        for p in self.packets.drain(..) {
            self.out.send(p);
        }
    }

    fn invalid(&mut self, reason: String, raw: &str, recv_ns: i64) {
        self.stats.invalid.inc();
        if let Some(suppressed) = self.invalid_log.check() {
            warn!(feed = %self.feed_name, conn = %self.conn, suppressed, "invalid frame: {reason}");
        }
        self.stats.points.inc();
        self.out.send(DataPacket::Invalid(InvalidFrame::new("bybit", self.feed_name.clone(), reason, raw, self.stats.reserve_invalid(recv_ns, 1))));
    }

    fn on_reply(&mut self, reply: OpReply, raw: &str, recv_ns: i64, outbox: &mut Vec<WsMessage>) {
        match &reply.op {
            OpKind::Pong => {
                self.stats.control.inc();
                if let Some(rtt) = self.heartbeat.on_pong(Instant::now()) {
                    debug!(conn = %self.conn, rtt_ms = rtt.as_millis() as u64, "pong");
                }
            }
            OpKind::Subscribe | OpKind::Unsubscribe => match self.subs.on_answer(&reply, Instant::now()) {
                AckOutcome::Confirmed { op, topics } => {
                    self.stats.control.inc();
                    debug!(conn = %self.conn, %op, topics = topics.len(), "acknowledged");
                }
                AckOutcome::Refused { refused, retry } => {
                    if refused.is_empty() {
                        self.stats.control.inc();
                        info!(conn = %self.conn, ret_msg = %reply.ret_msg, retries = retry.len(), "subscribe refused without naming a topic; asking for each topic alone");
                    } else {
                        // Stored as an invalid frame whose reason names the topics, so the
                        // refusal is in the store and the `invalid` counter, not only the log.
                        let names: Vec<&str> = refused.iter().map(|&i| self.subs.topic(i)).collect();
                        let reason = format!("subscription refused for {}: {}", names.join(", "), reply.ret_msg);
                        error!(feed = %self.feed_name, conn = %self.conn, topics = %names.join(", "), ret_msg = %reply.ret_msg, "Bybit refused the subscription; skipping these topics, the others continue");
                        self.invalid(reason, raw, recv_ns);
                        if self.subs.wanted() == 0 {
                            error!(feed = %self.feed_name, conn = %self.conn, "every topic of this connection was refused; it stays open with nothing to receive");
                        }
                    }
                    outbox.extend(retry.into_iter().map(WsMessage::text));
                }
                AckOutcome::Unexpected => {
                    self.stats.control.inc();
                    debug!(conn = %self.conn, ?reply, "answer to no open request");
                }
            },
            OpKind::Other(op) => {
                self.stats.control.inc();
                debug!(conn = %self.conn, op = %op, success = reply.success, ret_msg = %reply.ret_msg, "answer to an op we did not send");
            }
        }
    }
}

#[async_trait]
impl<F: TopicFeed> SessionHandler for BybitSession<F> {
    type Event = Infallible;

    fn url(&self) -> String {
        self.url.clone()
    }

    /// Sends every subscribe request, then reads until each is answered or the ack timeout
    /// passes. Pushes that arrive meanwhile (Bybit sends a topic's snapshot right after its
    /// ack) are handled as usual, never dropped. A refused topic does not fail the attempt;
    /// a missing answer does (the session reconnects with backoff).
    async fn on_open(&mut self, ws: &mut WsStream) -> Result<(), String> {
        let now = Instant::now();
        self.heartbeat.reset(now);
        let requests = self.subs.subscribe_all(now);
        if F::SNAPSHOT_ON_SUBSCRIBE {
            self.stats.resyncs.add(self.subs.wanted() as u64);
        }
        for r in requests {
            ws.send(WsMessage::text(r)).await.map_err(|e| format!("sending subscribe: {e}"))?;
        }
        let deadline = now + self.ack_timeout;
        let mut outbox = Vec::new();
        while !self.subs.all_answered() {
            let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return Err(format!("no answer within {} ms to {}", self.ack_timeout.as_millis(), self.subs.describe_pending())),
                Ok(None) => return Err("connection closed while subscribing".into()),
                Ok(Some(Err(e))) => return Err(format!("read error while subscribing: {e}")),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                WsMessage::Text(_) | WsMessage::Binary(_) => {
                    self.stats.frames.inc();
                    let recv_ns = clock::now_ns();
                    // Read here, not by the shared session's loop: captured here too.
                    if let Some(c) = self.stats.capture.get() {
                        c.ws(ds_api::capture::conn_number(&self.conn), recv_ns, &msg);
                    }
                    if let Flow::Reconnect(why) = self.on_frame(msg, recv_ns, &mut outbox) {
                        return Err(why);
                    }
                }
                WsMessage::Ping(_) => ws.flush().await.map_err(|e| format!("pong failed: {e}"))?,
                WsMessage::Close(f) => return Err(format!("server closed while subscribing: {f:?}")),
                _ => {}
            }
            for m in outbox.drain(..) {
                ws.send(m).await.map_err(|e| format!("sending subscribe: {e}"))?;
            }
        }
        Ok(())
    }

    fn on_frame(&mut self, frame: WsMessage, recv_ns: i64, outbox: &mut Vec<WsMessage>) -> Flow {
        let text = match &frame {
            WsMessage::Text(t) => t.as_str(),
            WsMessage::Binary(b) => {
                self.invalid("unexpected binary frame".into(), &String::from_utf8_lossy(b), recv_ns);
                return Flow::Continue;
            }
            _ => return Flow::Continue,
        };
        match self.feed.on_frame(text.as_bytes(), recv_ns, &mut self.packets, &self.stats) {
            Ok(Handled::Data) => {}
            Ok(Handled::Reply(r)) => self.on_reply(r, text, recv_ns, outbox),
            Ok(Handled::Resubscribe(i)) => {
                // Only this topic: the connection and its other topics keep flowing.
                if !self.subs.is_refused(i) {
                    self.stats.resyncs.inc();
                    outbox.extend(self.subs.resubscribe(i, Instant::now()).into_iter().map(WsMessage::text));
                }
            }
            Err(reason) => self.invalid(reason, text, recv_ns),
        }
        self.flush_packets();
        Flow::Continue
    }

    fn on_heartbeat(&mut self, outbox: &mut Vec<WsMessage>) -> Flow {
        let now = Instant::now();
        if let Some(p) = self.subs.overdue(now, self.ack_timeout) {
            return Flow::Reconnect(format!("no answer within {} ms to {} (req_id {})", self.ack_timeout.as_millis(), p.op, p.req_id));
        }
        match self.heartbeat.on_tick(now) {
            Beat::Idle => Flow::Continue,
            Beat::SendPing => {
                let id = self.subs.next_req_id();
                outbox.push(WsMessage::text(ping_request(&id)));
                Flow::Continue
            }
            Beat::Dead(waited) => Flow::Reconnect(format!("no pong for {} ms", waited.as_millis())),
        }
    }

    fn on_disconnect(&mut self, why: &Disconnect) {
        self.on_disconnect_at(why, clock::now_ns());
    }

    fn on_disconnect_at(&mut self, why: &Disconnect, at_ns: i64) {
        let reason = if *why == Disconnect::Shutdown { GapReason::Shutdown } else { GapReason::Disconnect };
        self.feed.on_disconnect(reason, at_ns, &mut self.packets, &self.stats);
        self.flush_packets();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_api::buffer::packet_channel;
    use ds_api::SinkStats;

    fn opts() -> SessionOptions {
        SessionOptions {
            category: Category::Spot,
            ws_url: "ws://127.0.0.1:1".into(),
            rest_url: "http://127.0.0.1:1".into(),
            topics_per_connection: 100,
            args_per_request: 10,
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(10),
            stale_after: Duration::from_secs(60),
        }
    }

    fn text(s: &str) -> WsMessage {
        WsMessage::text(s.to_string())
    }

    fn snapshot(symbol: &str, u: u64) -> String {
        format!(r#"{{"topic":"orderbook.50.{symbol}","ts":1,"type":"snapshot","data":{{"s":"{symbol}","b":[["1","2"]],"a":[["3","4"]],"u":{u},"seq":9}},"cts":1}}"#)
    }

    fn delta(symbol: &str, u: u64) -> String {
        format!(r#"{{"topic":"orderbook.50.{symbol}","ts":1,"type":"delta","data":{{"s":"{symbol}","b":[["1","0"]],"a":[],"u":{u},"seq":10}},"cts":1}}"#)
    }

    #[tokio::test(start_paused = true)]
    async fn a_break_resubscribes_one_topic_and_a_refusal_is_stored_by_name() {
        let sink_stats = Arc::new(SinkStats::default());
        let (out, mut rx) = packet_channel("t", 1024, sink_stats);
        let stats = Arc::new(FeedStats::default());
        let symbols = vec!["BTCUSDT".to_string(), "NOPEUSDT".to_string(), "ETHUSDT".to_string()];
        let (events, _rx) = ds_api::ws::event_channel();
        let mut s = BybitSession::new(Arc::from("f"), "f#0".into(), &opts(), OrderbookTopics::new(Category::Spot, 50, &symbols), out, stats.clone(), events);
        assert_eq!(s.url(), "ws://127.0.0.1:1/v5/public/spot");
        let mut outbox = Vec::new();
        // What on_open sends: one request, three args.
        let reqs = s.subs.subscribe_all(Instant::now());
        assert_eq!(reqs.len(), 1);
        s.on_frame(text(r#"{"success":false,"ret_msg":"Invalid topic: orderbook.50.NOPEUSDT","conn_id":"c","op":"subscribe"}"#), 1, &mut outbox);
        assert_eq!(outbox.len(), 1, "the other two topics asked again");
        assert!(outbox[0].to_text().unwrap().contains(r#"["orderbook.50.BTCUSDT","orderbook.50.ETHUSDT"]"#));
        outbox.clear();
        s.on_frame(text(r#"{"success":true,"ret_msg":"subscribe","conn_id":"c","op":"subscribe"}"#), 2, &mut outbox);
        assert!(s.subs.all_answered());
        for f in [snapshot("BTCUSDT", 10), snapshot("ETHUSDT", 5), delta("BTCUSDT", 11), delta("ETHUSDT", 7)] {
            s.on_frame(text(&f), 3, &mut outbox);
        }
        let sent: Vec<String> = outbox.iter().map(|m| m.to_text().unwrap().to_string()).collect();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(sent[0].contains(r#""op":"unsubscribe""#) && sent[0].contains("orderbook.50.ETHUSDT"));
        assert!(sent[1].contains(r#""op":"subscribe""#) && sent[1].contains("orderbook.50.ETHUSDT"));
        assert!(s.feed().book(0).is_synced(), "BTCUSDT untouched");
        // Unanswered, the resubscribe turns into a reconnect once the ack timeout passes.
        outbox.clear();
        assert_eq!(s.on_heartbeat(&mut outbox), Flow::Continue);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(s.on_heartbeat(&mut outbox), Flow::Reconnect(r) if r.contains("unsubscribe")));
        s.on_disconnect(&Disconnect::Lost("test".into()));

        let mut kinds = Vec::new();
        while let Ok(p) = rx.try_recv() {
            kinds.push(match p {
                DataPacket::Invalid(f) => format!("invalid:{}", f.reason),
                DataPacket::Gap(g) => format!("gap:{}:{}", g.instrument.symbol, g.reason.as_str()),
                other => format!("{}:{}", other.kind(), match &other { DataPacket::ST(s) => s.instrument.symbol.to_string(), DataPacket::MI(m) => m.instrument.symbol.to_string(), _ => String::new() }),
            });
        }
        assert_eq!(
            kinds,
            [
                "invalid:subscription refused for orderbook.50.NOPEUSDT: Invalid topic: orderbook.50.NOPEUSDT",
                "ST:BTCUSDT",
                "ST:ETHUSDT",
                "MI:BTCUSDT",
                "gap:ETHUSDT:sequence_break",
                "gap:BTCUSDT:disconnect",
            ]
        );
        assert_eq!((stats.invalid.get(), stats.control.get(), stats.resyncs.get(), stats.out_of_sequence.get()), (1, 1, 1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_pings_and_a_missing_pong_reconnects() {
        let (out, _rx) = packet_channel("t", 16, Arc::new(SinkStats::default()));
        let stats = Arc::new(FeedStats::default());
        let (events, _erx) = ds_api::ws::event_channel();
        let mut s = BybitSession::new(Arc::from("f"), "f#0".into(), &opts(), TradeTopics::new(Category::Spot, &["BTCUSDT".into()]), out, stats.clone(), events);
        assert_eq!(s.tick_every(), Duration::from_secs(5));
        s.heartbeat.reset(Instant::now());
        let mut outbox = Vec::new();
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(s.on_heartbeat(&mut outbox), Flow::Continue);
        assert_eq!(outbox.len(), 1);
        assert!(outbox[0].to_text().unwrap().contains(r#""op":"ping""#));
        // Answered in the public shape: all is well.
        s.on_frame(text(r#"{"success":true,"ret_msg":"pong","conn_id":"c","op":"ping"}"#), 1, &mut outbox);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(s.on_heartbeat(&mut outbox), Flow::Continue);
        assert_eq!(outbox.len(), 2);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(s.on_heartbeat(&mut outbox), Flow::Continue);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(s.on_heartbeat(&mut outbox), Flow::Reconnect(r) if r.contains("no pong")));
        assert_eq!(stats.control.get(), 1);
    }
}
