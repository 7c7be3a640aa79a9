//! `MbpSession`: one `/feed` connection carrying `market.$symbol.mbp.$levels` for a group of
//! symbols, each with its [`MbpSync`]. Snapshots are `req`s on the same connection, and their
//! replies arrive in the same read loop as the incrementals, so no other task ever touches a
//! book and nothing waits on anything.
//!
//! Order of events per symbol: `sub` (incrementals are held from now) -> ack -> first
//! incremental held -> `req` queued -> `req` sent when the connection's pacing allows (one per
//! `req_interval_ms`; Huobi's limit is 100 ms) -> reply -> aligned by [`MbpSync`]. A break in
//! a chain queues a new `req` for that one symbol; the others carry on.
//!
//! Why wait for the first incremental: replies lag the stream, so a reply that arrives while
//! nothing is held cannot be checked against anything, and the first push then often starts
//! after it (a stored snapshot followed at once by a `snapshot_mismatch` gap, on every
//! connect). With at least one update held, a reply older than the held run is recognised and
//! asked again, and a usable one is aligned before anything is stored. A symbol that stays
//! quiet (possible on the tick-by-tick mbp.5 / mbp.20) is asked for anyway after
//! [`QUIET_SYMBOL_REQ_AFTER`]: with nothing moving, the reply is the current book.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use ds_api::buffer::PacketSender;
use ds_api::traits::Parser;
use ds_api::ws::{Disconnect, Flow, SessionHandler, WsMessage, WsStream};
use ds_api::{async_trait, DataPacket, FastMap, FeedStats, GapReason, Instrument};

use crate::book_sync::{MbpSnapshot, MbpSync, MbpUpdate, SyncOutcome};
use crate::gzip::Gunzip;
use crate::link::Link;
use crate::parser::{Channel, HuobiFrame, HuobiParser, Tick, Topic};

/// How often the session looks at its timers (req pacing, req and ack timeouts). A quarter
/// of Huobi's 100 ms req spacing keeps the pacing tight for the price of a few wake-ups.
pub const TICK: Duration = Duration::from_millis(25);
/// A subscribed symbol that has pushed nothing for this long gets its snapshot `req` anyway.
pub const QUIET_SYMBOL_REQ_AFTER: Duration = Duration::from_secs(1);

/// The `req` schedule of one connection: symbols waiting for a snapshot, in order, sent one
/// per interval; one outstanding `req` per symbol.
#[derive(Debug)]
struct ReqPacer {
    queue: VecDeque<usize>,
    queued: Vec<bool>,
    /// Outstanding `req` id -> (book, sent at).
    in_flight: HashMap<u64, (usize, Instant)>,
    next_at: Instant,
    interval: Duration,
    timeout: Duration,
}

impl ReqPacer {
    fn new(books: usize, interval: Duration, timeout: Duration) -> Self {
        ReqPacer {
            queue: VecDeque::new(),
            queued: vec![false; books],
            in_flight: HashMap::new(),
            next_at: Instant::now(),
            interval,
            timeout,
        }
    }

    /// Queues a snapshot request for `book` unless one is queued or outstanding.
    fn want(&mut self, book: usize) {
        if !self.queued[book] && !self.in_flight.values().any(|(b, _)| *b == book) {
            self.queued[book] = true;
            self.queue.push_back(book);
        }
    }

    /// The next book to `req` now, if the pacing allows.
    fn due(&mut self, now: Instant) -> Option<usize> {
        if now < self.next_at {
            return None;
        }
        let book = self.queue.pop_front()?;
        self.queued[book] = false;
        self.next_at = now + self.interval;
        Some(book)
    }

    fn sent(&mut self, id: u64, book: usize, now: Instant) {
        self.in_flight.insert(id, (book, now));
    }

    /// Requests unanswered past the timeout: forgotten, to be asked again.
    fn expired(&mut self, now: Instant) -> Vec<usize> {
        let timeout = self.timeout;
        let expired: Vec<(u64, usize)> = self
            .in_flight
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= timeout)
            .map(|(id, (b, _))| (*id, *b))
            .collect();
        expired
            .into_iter()
            .map(|(id, b)| {
                self.in_flight.remove(&id);
                b
            })
            .collect()
    }

    fn reset(&mut self) {
        self.queue.clear();
        self.queued.iter_mut().for_each(|q| *q = false);
        self.in_flight.clear();
    }
}

pub struct MbpSessionConfig {
    pub levels: u16,
    pub req_interval: Duration,
    pub req_timeout: Duration,
    pub ack_timeout: Duration,
    pub max_held: usize,
    pub max_frame_bytes: usize,
}

impl MbpSessionConfig {
    pub fn from_options(o: &crate::options::MbpOptions) -> Self {
        MbpSessionConfig {
            levels: o.levels,
            req_interval: Duration::from_millis(o.req_interval_ms),
            req_timeout: Duration::from_secs(o.req_timeout_secs),
            ack_timeout: Duration::from_secs(o.ack_timeout_secs),
            max_held: o.max_held_updates,
            max_frame_bytes: o.max_frame_bytes,
        }
    }
}

/// The state [`MbpSession::on_frame`] works on, apart from the inflater (whose output it
/// borrows while this is updated).
struct MbpBooks {
    link: Link,
    channel: Channel,
    books: Vec<MbpSync>,
    by_symbol: FastMap<Box<str>, usize>,
    /// When each book's subscription was acknowledged on this connection.
    acked_at: Vec<Option<Instant>>,
    reqs: ReqPacer,
    packets: Vec<DataPacket>,
    /// `data-storage replay`: no request is sent, so a `req` reply is matched to its book by
    /// topic (the live run's request ids are not in the capture).
    replay: bool,
}

pub struct MbpSession {
    url: String,
    gunzip: Gunzip,
    state: MbpBooks,
}

impl MbpSession {
    /// `ws_base` is the host URL (`wss://api.huobi.pro`); `symbols` as Huobi writes them in
    /// topics (lower case).
    pub fn new(
        feed: Arc<str>,
        ws_base: &str,
        symbols: &[String],
        cfg: &MbpSessionConfig,
        out: PacketSender,
        stats: Arc<FeedStats>,
    ) -> Self {
        let channel = Channel::Mbp(cfg.levels);
        let topics: Vec<String> = symbols.iter().map(|s| Topic::format(s, channel)).collect();
        let books: Vec<MbpSync> = symbols
            .iter()
            .map(|s| {
                MbpSync::new(
                    Instrument {
                        exchange: "huobi",
                        market: "spot",
                        symbol: Arc::from(s.to_ascii_uppercase()),
                    },
                    cfg.max_held,
                )
            })
            .collect();
        let by_symbol = symbols
            .iter()
            .enumerate()
            .map(|(i, s)| (Box::from(s.as_str()), i))
            .collect();
        MbpSession {
            url: format!("{}/feed", ws_base.trim_end_matches('/')),
            gunzip: Gunzip::new(cfg.max_frame_bytes),
            state: MbpBooks {
                link: Link::new(feed, topics, cfg.ack_timeout, out, stats),
                channel,
                reqs: ReqPacer::new(books.len(), cfg.req_interval, cfg.req_timeout),
                acked_at: vec![None; books.len()],
                books,
                by_symbol,
                packets: Vec::new(),
                replay: false,
            },
        }
    }

    /// The same session fed from a capture by [`crate::replay`]: it sends nothing, and
    /// matches each `req` reply to its book by topic.
    pub fn for_replay(mut self) -> Self {
        self.state.replay = true;
        self.state.link.set_replay();
        self
    }
}

impl MbpSession {

    /// The largest buffer the inflater ever held (tests: it never passes the cap).
    pub fn gunzip_peak_capacity(&self) -> usize {
        self.gunzip.peak_capacity()
    }
}

impl MbpBooks {
    fn on_text(&mut self, text: &[u8], recv_ns: i64, outbox: &mut Vec<WsMessage>) -> Flow {
        let stats = self.link.stats.clone();
        match HuobiParser.parse(text) {
            Ok(HuobiFrame::Ping(n)) => self.link.pong(n, outbox),
            Ok(HuobiFrame::Pong(_)) | Ok(HuobiFrame::Unsubscribed { .. }) => stats.control.inc(),
            Ok(HuobiFrame::Subscribed { id, topic }) => {
                if let Some(i) = self.link.on_ack(id, topic) {
                    // Incrementals are held from the `sub`; the `req` follows the first one.
                    self.acked_at[i] = Some(Instant::now());
                }
            }
            Ok(HuobiFrame::Error { id, code, message }) => {
                if let Some((book, _)) = id.and_then(|id| self.reqs.in_flight.remove(&id)) {
                    // `429 too many request` and the like: ask again after the pacing interval.
                    stats.control.inc();
                    warn!(feed = %self.link.feed(), symbol = %self.books[book].instrument().symbol, %code, %message, "req refused; asking again");
                    self.reqs.want(book);
                } else if !self.link.on_sub_error(id, &code, &message, text, recv_ns) {
                    // A refused `sub` is counted (and stored) as invalid by the link.
                    stats.control.inc();
                    warn!(feed = %self.link.feed(), ?id, %code, %message, "error from Huobi");
                }
            }
            Ok(HuobiFrame::Push {
                topic,
                ts,
                tick: Tick::Mbp(t),
            }) if topic.channel == self.channel => {
                let Some(&i) = self.by_symbol.get(topic.symbol) else {
                    self.link.invalid(
                        format!("update for a symbol not subscribed here: {}", topic.symbol),
                        text,
                        recv_ns,
                    );
                    return Flow::Continue;
                };
                let Some(prev_seq_num) = t.prev_seq_num else {
                    self.link
                        .invalid("mbp update without prevSeqNum".into(), text, recv_ns);
                    return Flow::Continue;
                };
                let upd = MbpUpdate {
                    seq_num: t.seq_num,
                    prev_seq_num,
                    ts,
                    recv_ns,
                    bids: t.bids.0,
                    asks: t.asks.0,
                };
                let outcome = self.books[i].on_update(upd, &mut self.packets, &stats);
                if outcome == SyncOutcome::NeedSnapshot || !self.books[i].is_synced() {
                    self.reqs.want(i);
                }
            }
            Ok(HuobiFrame::Reply {
                id,
                topic,
                ts,
                data: Tick::Mbp(t),
            }) if topic.channel == self.channel => {
                let book = if self.replay {
                    self.link.topics().iter().position(|t| t == topic.raw)
                } else {
                    id.and_then(|id| self.reqs.in_flight.remove(&id)).map(|(i, _)| i)
                };
                let Some(i) = book else {
                    // An answer to a request that timed out and was asked again: the newer one counts.
                    stats.superseded.inc();
                    return Flow::Continue;
                };
                if self.link.topics()[i] != topic.raw {
                    self.link.invalid(
                        format!(
                            "reply to req for {} names {}",
                            self.link.topics()[i],
                            topic.raw
                        ),
                        text,
                        recv_ns,
                    );
                    self.reqs.want(i);
                    return Flow::Continue;
                }
                let snap = MbpSnapshot {
                    seq_num: t.seq_num,
                    ts,
                    recv_ns,
                    bids: t.bids.0,
                    asks: t.asks.0,
                };
                let (_, next) = self.books[i].on_snapshot(snap, &mut self.packets, &stats);
                if next == SyncOutcome::NeedSnapshot {
                    self.reqs.want(i);
                }
            }
            Ok(HuobiFrame::Push { topic, .. }) | Ok(HuobiFrame::Reply { topic, .. }) => {
                self.link.invalid(
                    format!("unexpected topic on an mbp connection: {}", topic.raw),
                    text,
                    recv_ns,
                );
            }
            Err(e) => self.link.invalid(e.to_string(), text, recv_ns),
        }
        Flow::Continue
    }

    /// Sends the next `req` if one is due.
    fn send_due_req(&mut self, outbox: &mut Vec<WsMessage>) {
        if self.replay {
            return;
        }
        let now = Instant::now();
        if let Some(book) = self.reqs.due(now) {
            let id = self.link.next_id();
            let topic = &self.link.topics()[book];
            outbox.push(WsMessage::text(format!(r#"{{"req":"{topic}","id":{id}}}"#)));
            self.reqs.sent(id, book, now);
            self.link.stats.resyncs.inc();
        }
    }

    fn flush_packets(&mut self) {
        for p in self.packets.drain(..) {
            self.link.out.send(p);
        }
    }
}

#[async_trait]
impl SessionHandler for MbpSession {
    type Event = ();

    fn url(&self) -> String {
        self.url.clone()
    }

    async fn on_open(&mut self, ws: &mut WsStream) -> Result<(), String> {
        self.state.link.subscribe_all(ws).await
    }

    fn on_frame(&mut self, frame: WsMessage, recv_ns: i64, outbox: &mut Vec<WsMessage>) -> Flow {
        let flow = match &frame {
            WsMessage::Binary(wire) => match self.gunzip.inflate(wire) {
                Ok(text) => self.state.on_text(text, recv_ns, outbox),
                Err(e) => {
                    self.state.link.invalid_gzip(&e, wire, recv_ns);
                    Flow::Continue
                }
            },
            WsMessage::Text(t) => {
                self.state.link.invalid(
                    "text frame (Huobi sends every frame gzip-compressed)".into(),
                    t.as_bytes(),
                    recv_ns,
                );
                Flow::Continue
            }
            _ => Flow::Continue,
        };
        self.state.flush_packets();
        self.state.send_due_req(outbox);
        flow
    }

    fn on_heartbeat(&mut self, outbox: &mut Vec<WsMessage>) -> Flow {
        let s = &mut self.state;
        let now = Instant::now();
        for book in s.reqs.expired(now) {
            warn!(feed = %s.link.feed(), symbol = %s.books[book].instrument().symbol, "no answer to req; asking again");
            s.reqs.want(book);
        }
        for (i, acked) in s.acked_at.iter().enumerate() {
            if acked.is_some_and(|at| now.duration_since(at) >= QUIET_SYMBOL_REQ_AFTER)
                && !s.books[i].is_synced()
            {
                s.reqs.want(i);
            }
        }
        s.send_due_req(outbox);
        match s.link.overdue() {
            Some(reason) => Flow::Reconnect(reason),
            None => Flow::Continue,
        }
    }

    fn on_disconnect(&mut self, why: &Disconnect) {
        self.on_disconnect_at(why, ds_api::clock::now_ns());
    }

    fn on_disconnect_at(&mut self, why: &Disconnect, at_ns: i64) {
        let s = &mut self.state;
        s.reqs.reset();
        s.acked_at.iter_mut().for_each(|a| *a = None);
        let reason = if *why == Disconnect::Shutdown {
            GapReason::Shutdown
        } else {
            GapReason::Disconnect
        };
        let stats = s.link.stats.clone();
        for b in &mut s.books {
            b.on_disconnect(reason, at_ns, &mut s.packets, &stats);
        }
        s.flush_packets();
    }
}

impl crate::replay::InflatedText for MbpSession {
    fn on_inflated(&mut self, text: &[u8], recv_ns: i64) {
        self.state.on_text(text, recv_ns, &mut Vec::new());
        self.state.flush_packets();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_api::buffer::packet_channel;
    use ds_api::SinkStats;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gz(text: &[u8]) -> WsMessage {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text).unwrap();
        WsMessage::binary(e.finish().unwrap())
    }

    /// The whole per-frame path on the real aidogeusdt frames of ccxt issue 18749: pong, held
    /// update, paced `req`, aligned reply, chained update, and a bomb refused at the cap.
    #[test]
    fn a_session_answers_pings_syncs_on_its_req_and_refuses_a_bomb() {
        let (tx, mut rx) = packet_channel("t", 1024, Arc::new(SinkStats::default()));
        let stats = Arc::new(FeedStats::default());
        let cfg = MbpSessionConfig {
            levels: 150,
            req_interval: Duration::from_millis(100),
            req_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(10),
            max_held: 100,
            max_frame_bytes: 64 * 1024,
        };
        let mut s = MbpSession::new(
            Arc::from("f"),
            "wss://api.huobi.pro/",
            &["aidogeusdt".to_string()],
            &cfg,
            tx,
            stats.clone(),
        );
        assert_eq!(s.url(), "wss://api.huobi.pro/feed");
        let mut outbox = Vec::new();
        let texts = |outbox: &mut Vec<WsMessage>| -> Vec<String> {
            outbox
                .drain(..)
                .map(|m| m.into_text().unwrap().to_string())
                .collect()
        };

        s.on_frame(gz(br#"{"ping":1690948843215}"#), 1, &mut outbox);
        assert_eq!(texts(&mut outbox), [r#"{"pong":1690948843215}"#]);
        s.on_frame(gz(br#"{"ch":"market.aidogeusdt.mbp.150","ts":1690948841557,"tick":{"seqNum":155247358,"prevSeqNum":155247355,"bids":[],"asks":[[9.486E-11,5.4329174972728E12],[9.488E-11,0.0]]}}"#), 2, &mut outbox);
        assert_eq!(
            texts(&mut outbox),
            [r#"{"req":"market.aidogeusdt.mbp.150","id":1}"#],
            "the req follows the first held update"
        );
        s.on_frame(gz(br#"{"id":1,"rep":"market.aidogeusdt.mbp.150","status":"ok","data":{"seqNum":155247355,"bids":[[9.484E-11,1.0E10]],"asks":[[9.486E-11,1.0]]}}"#), 3, &mut outbox);
        s.on_frame(gz(br#"{"ch":"market.aidogeusdt.mbp.150","ts":1690948843169,"tick":{"seqNum":155247362,"prevSeqNum":155247358,"bids":[],"asks":[[9.485E-11,3.24127967841632E12],[9.486E-11,5.106999E12],[9.487E-11,0.0],[9.505E-11,1.7748248823836E11],[2.5083E-10,0.0]]}}"#), 4, &mut outbox);
        let mut bomb = GzEncoder::new(Vec::new(), flate2::Compression::best());
        bomb.write_all(&vec![b' '; 8 << 20]).unwrap();
        let bomb = bomb.finish().unwrap();
        let bomb_len = bomb.len();
        s.on_frame(WsMessage::binary(bomb), 5, &mut outbox);
        assert!(
            s.gunzip_peak_capacity() <= 64 * 1024 + 1,
            "{}",
            s.gunzip_peak_capacity()
        );

        let mut kinds = Vec::new();
        while let Ok(p) = rx.try_recv() {
            kinds.push(match p {
                DataPacket::ST(st) => format!("ST{} {}", st.cur_seq, st.bids[0].price),
                DataPacket::MI(m) => format!(
                    "MI{}<-{} {}",
                    m.last_update_id,
                    m.prev_update_id.unwrap(),
                    m.asks[0].size
                ),
                DataPacket::Invalid(f) => format!("invalid: {}", f.reason),
                other => other.kind().to_string(),
            });
        }
        assert_eq!(
            kinds,
            [
                "ST155247355 9.484E-11".to_string(),
                "MI155247358<-155247355 5.4329174972728E12".into(),
                "MI155247362<-155247358 3.24127967841632E12".into(),
                format!(
                    "invalid: frame inflates past the 65536-byte cap ({bomb_len} bytes compressed)"
                ),
            ]
        );
        assert_eq!(
            (
                stats.control.get(),
                stats.mi.get(),
                stats.st.get(),
                stats.invalid.get(),
                stats.resyncs.get()
            ),
            (1, 2, 1, 1, 1)
        );
    }

    #[test]
    fn req_pacing_keeps_the_interval_and_one_request_per_book() {
        let mut p = ReqPacer::new(3, Duration::from_millis(100), Duration::from_secs(10));
        let t0 = Instant::now();
        p.want(0);
        p.want(1);
        p.want(0);
        assert_eq!(p.due(t0), Some(0));
        p.sent(1, 0, t0);
        p.want(0); // outstanding: not queued twice
        assert_eq!(
            p.due(t0 + Duration::from_millis(50)),
            None,
            "100 ms between two req"
        );
        assert_eq!(p.due(t0 + Duration::from_millis(100)), Some(1));
        assert_eq!(
            p.due(t0 + Duration::from_millis(300)),
            None,
            "nothing queued"
        );
        assert_eq!(p.expired(t0 + Duration::from_secs(11)), vec![0]);
        p.want(0);
        assert_eq!(p.due(t0 + Duration::from_secs(11)), Some(0));
    }
}
