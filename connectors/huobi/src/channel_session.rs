//! `ChannelSession`: one `/ws` connection carrying a push channel that needs no sequencing, for
//! a group of symbols: `trade.detail` (trades), or the periodic snapshot channels
//! `depth.step0` / `mbp.refresh.$levels` that a `huobi_mbp` feed may add.
//!
//! Periodic snapshots are stored as ST under their own `market` tag (`spot.depth.step0`,
//! `spot.mbp.refresh.<n>`), not as snapshots of the MBP book (`spot`): `depth.step0` carries
//! `version`, an id that cannot be chained with MBP `seqNum`s, and `mbp.refresh` has no
//! `prevSeqNum` to prove where it sits in the MBP chain. Stored in the MBP series, a rebuild
//! would start from them and apply incrementals they may or may not already contain. In
//! their own series each point set is a complete book at its instant, which is exactly what
//! a rebuild of that series needs (contract 3).

use std::sync::Arc;

use ds_api::buffer::PacketSender;
use ds_api::traits::Parser;
use ds_api::ws::{Disconnect, Flow, SessionHandler, WsMessage, WsStream};
use ds_api::clock::{self, SeriesClock};
use ds_api::{async_trait, DataPacket, FastMap, FeedStats, Instrument, Side, Snapshot, Trade};
use tracing::warn;

use crate::gzip::Gunzip;
use crate::link::Link;
use crate::parser::{Channel, HuobiFrame, HuobiParser, Tick, Topic};

/// The `market` tag of a channel's points.
pub fn market_of(channel: Channel) -> &'static str {
    match channel {
        Channel::DepthStep0 => "spot.depth.step0",
        Channel::MbpRefresh(5) => "spot.mbp.refresh.5",
        Channel::MbpRefresh(10) => "spot.mbp.refresh.10",
        Channel::MbpRefresh(_) => "spot.mbp.refresh.20",
        Channel::Mbp(_) | Channel::TradeDetail | Channel::Other => "spot",
    }
}

struct ChannelState {
    link: Link,
    channel: Channel,
    instruments: FastMap<Box<str>, Instrument>,
    /// One clock per symbol's trade series (see `ds_api::clock::SeriesClock`). Periodic
    /// snapshots (`depth.step0`, `mbp.refresh`) keep the process-wide clock: they write the
    /// same `book_snapshot` series as an MBP feed of the same symbol would.
    trade_clocks: FastMap<Box<str>, SeriesClock>,
    packets: Vec<DataPacket>,
}

pub struct ChannelSession {
    url: String,
    gunzip: Gunzip,
    state: ChannelState,
}

impl ChannelSession {
    /// `ws_base` is the host URL (`wss://api.huobi.pro`); `symbols` lower case as in topics.
    #[allow(clippy::too_many_arguments)] // the session's whole configuration, spelled out at its one call site
    pub fn new(
        feed: Arc<str>,
        ws_base: &str,
        channel: Channel,
        symbols: &[String],
        ack_timeout: std::time::Duration,
        max_frame_bytes: usize,
        out: PacketSender,
        stats: Arc<FeedStats>,
    ) -> Self {
        let topics = symbols.iter().map(|s| Topic::format(s, channel)).collect();
        let market = market_of(channel);
        let instruments = symbols
            .iter()
            .map(|s| {
                (
                    Box::from(s.as_str()),
                    Instrument {
                        exchange: "huobi",
                        market,
                        symbol: Arc::from(s.to_ascii_uppercase()),
                    },
                )
            })
            .collect();
        ChannelSession {
            url: format!("{}/ws", ws_base.trim_end_matches('/')),
            gunzip: Gunzip::new(max_frame_bytes),
            state: ChannelState {
                link: Link::new(feed, topics, ack_timeout, out, stats),
                channel,
                instruments,
                trade_clocks: FastMap::default(),
                packets: Vec::new(),
            },
        }
    }

    /// The same session fed from a capture by [`crate::replay`]: a refused `sub` is
    /// recognised by the topic its message names.
    pub fn for_replay(mut self) -> Self {
        self.state.link.set_replay();
        self
    }
}

impl ChannelState {
    fn on_text(&mut self, text: &[u8], recv_ns: i64, outbox: &mut Vec<WsMessage>) {
        let stats = self.link.stats.clone();
        match HuobiParser.parse(text) {
            Ok(HuobiFrame::Ping(n)) => self.link.pong(n, outbox),
            Ok(HuobiFrame::Pong(_)) | Ok(HuobiFrame::Unsubscribed { .. }) => stats.control.inc(),
            Ok(HuobiFrame::Subscribed { id, topic }) => {
                self.link.on_ack(id, topic);
            }
            Ok(HuobiFrame::Error { id, code, message }) => {
                // A refused `sub` is counted (and stored) as invalid by the link.
                if !self.link.on_sub_error(id, &code, &message, text, recv_ns) {
                    stats.control.inc();
                    warn!(feed = %self.link.feed(), ?id, %code, %message, "error from Huobi");
                }
            }
            Ok(HuobiFrame::Push { topic, ts, tick }) if topic.channel == self.channel => {
                let Some(instrument) = self.instruments.get(topic.symbol) else {
                    self.link.invalid(
                        format!("push for a symbol not subscribed here: {}", topic.symbol),
                        text,
                        recv_ns,
                    );
                    return;
                };
                match tick {
                    Tick::Trades(t) => {
                        let mut trades = Vec::with_capacity(t.data.len());
                        for w in t.data {
                            let taker_side = match w.direction {
                                "buy" => Side::Bid,
                                "sell" => Side::Ask,
                                other => {
                                    self.link.invalid(
                                        format!("trade direction {other:?}"),
                                        text,
                                        recv_ns,
                                    );
                                    return;
                                }
                            };
                            trades.push((w, taker_side));
                        }
                        if trades.is_empty() {
                            stats.control.inc();
                        }
                        stats.trades.add(trades.len() as u64);
                        stats.points.add(trades.len() as u64);
                        let first_ns = match self.trade_clocks.get_mut(topic.symbol) {
                            Some(c) => c.reserve(recv_ns, trades.len()),
                            None => self.trade_clocks.entry(topic.symbol.into()).or_default().reserve(recv_ns, trades.len()),
                        };
                        for (k, (w, taker_side)) in trades.into_iter().enumerate() {
                            self.packets.push(DataPacket::Trade(Trade {
                                instrument: instrument.clone(),
                                trade_id: compact_str::format_compact!("{}", w.trade_id),
                                price: w.price,
                                size: w.amount,
                                taker_side,
                                event_time_ms: w.ts,
                                recv_time_ns: first_ns + k as i64,
                            }));
                        }
                    }
                    Tick::Depth(t) => self.snapshot(
                        instrument.clone(),
                        t.version,
                        t.ts.or(ts),
                        recv_ns,
                        t.bids.0,
                        t.asks.0,
                    ),
                    Tick::Mbp(t) => self.snapshot(
                        instrument.clone(),
                        t.seq_num,
                        ts,
                        recv_ns,
                        t.bids.0,
                        t.asks.0,
                    ),
                    Tick::Skipped => self.link.invalid(
                        "push of a channel this connector does not read".into(),
                        text,
                        recv_ns,
                    ),
                }
            }
            Ok(HuobiFrame::Push { topic, .. }) | Ok(HuobiFrame::Reply { topic, .. }) => {
                self.link.invalid(
                    format!(
                        "unexpected topic on a {} connection: {}",
                        self.channel.topic_suffix(),
                        topic.raw
                    ),
                    text,
                    recv_ns,
                );
            }
            Err(e) => self.link.invalid(e.to_string(), text, recv_ns),
        }
    }

    fn snapshot(
        &mut self,
        instrument: Instrument,
        id: u64,
        ts: Option<i64>,
        recv_ns: i64,
        bids: Vec<ds_api::Level>,
        asks: Vec<ds_api::Level>,
    ) {
        let points = (bids.len() + asks.len()).max(1);
        self.link.stats.st.inc();
        self.link.stats.points.add(points as u64);
        self.packets.push(DataPacket::ST(Snapshot {
            instrument,
            cur_seq: id,
            prev_seq: None,
            timestamp: ts,
            recv_time_ns: clock::reserve(recv_ns, points),
            bids,
            asks,
        }));
    }

    fn flush_packets(&mut self) {
        for p in self.packets.drain(..) {
            self.link.out.send(p);
        }
    }
}

#[async_trait]
impl SessionHandler for ChannelSession {
    type Event = ();

    fn url(&self) -> String {
        self.url.clone()
    }

    async fn on_open(&mut self, ws: &mut WsStream) -> Result<(), String> {
        self.state.link.subscribe_all(ws).await
    }

    fn on_frame(&mut self, frame: WsMessage, recv_ns: i64, outbox: &mut Vec<WsMessage>) -> Flow {
        match &frame {
            WsMessage::Binary(wire) => match self.gunzip.inflate(wire) {
                Ok(text) => self.state.on_text(text, recv_ns, outbox),
                Err(e) => self.state.link.invalid_gzip(&e, wire, recv_ns),
            },
            WsMessage::Text(t) => self.state.link.invalid(
                "text frame (Huobi sends every frame gzip-compressed)".into(),
                t.as_bytes(),
                recv_ns,
            ),
            _ => {}
        }
        self.state.flush_packets();
        Flow::Continue
    }

    fn on_heartbeat(&mut self, _outbox: &mut Vec<WsMessage>) -> Flow {
        match self.state.link.overdue() {
            Some(reason) => Flow::Reconnect(reason),
            None => Flow::Continue,
        }
    }

    /// Nothing to mark: trades and periodic snapshots do not chain, so a reconnect loses
    /// pushes (seen in the status line's reconnect count) but leaves nothing inconsistent.
    fn on_disconnect(&mut self, _why: &Disconnect) {}
}

impl crate::replay::InflatedText for ChannelSession {
    fn on_inflated(&mut self, text: &[u8], recv_ns: i64) {
        self.state.on_text(text, recv_ns, &mut Vec::new());
        self.state.flush_packets();
    }
}
