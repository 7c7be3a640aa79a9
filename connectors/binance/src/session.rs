//! `DepthSession`: one websocket connection carrying the diff-depth streams of a group of
//! symbols, with each symbol's [`BookSync`]. REST snapshots are fetched by spawned tasks and
//! come back as session events, so the read loop never waits on REST (or on the sink).
//!
//! Binance closes every connection after 24 hours and warns of maintenance with a
//! `serverShutdown` event. Both are met make-before-break ([`ds_api::rollover`]): the session
//! opens a replacement (same URL, same streams) while the old connection keeps reading, the
//! events of both go through one [`Overlap`] in arrival order, and the old connection is
//! closed once the replacement carries every book. No gap, no resync: the chain of update ids
//! does not care which connection delivered an event.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use ds_api::buffer::PacketSender;
use ds_api::stats::RateLimit;
use ds_api::traits::Parser;
use ds_api::ws::{Disconnect, Flow, SessionHandler, WsMessage};
use ds_api::{async_trait, clock, DataPacket, FastMap, FeedStats, GapReason, Instrument, InvalidFrame, Shutdown};

use crate::book_sync::{BookSync, HeldUpdate, SyncOutcome};
use crate::overlap::{Origin, Overlap};
use crate::parser::{parse_snapshot, DepthFrame, DepthParser};
use crate::rest::BinanceRest;

/// Pause before asking again for a snapshot that did not line up or failed: the REST
/// snapshot may lag the stream by a few updates, and hammering does not help.
const RESNAPSHOT_DELAY: Duration = Duration::from_millis(500);

/// A snapshot answer, tagged with the connection generation that asked for it.
pub struct SnapshotReady {
    book: usize,
    generation: u64,
    /// The URL asked and the body received, parsed on the session's task when applied.
    result: Result<(String, String), String>,
}

pub struct DepthSession {
    feed: Arc<str>,
    url: String,
    books: Vec<BookSync>,
    by_symbol: FastMap<Arc<str>, usize>,
    pending: Vec<bool>,
    /// Bumped on every disconnect: answers to requests of an older connection are ignored.
    generation: u64,
    out: PacketSender,
    stats: Arc<FeedStats>,
    rest: BinanceRest,
    events: mpsc::Sender<SnapshotReady>,
    shutdown: Shutdown,
    invalid_log: RateLimit,
    packets: Vec<DataPacket>,
    /// While a rollover has two connections open.
    overlap: Option<Overlap>,
    /// The `n` of `feed#n`, for capture records.
    pub(crate) conn: u32,
}

/// The combined-stream URL of one connection: `<ws_url>/stream?streams=<symbol>@depth@100ms/...`
/// (`@depth` alone at 1000 ms). Public for `ds-load --floor`, whose bare reader must open
/// exactly the connections a feed opens.
pub fn stream_url(ws_url: &str, symbols: &[String], update_speed_ms: u32) -> String {
    let suffix = if update_speed_ms == 100 { "@depth@100ms" } else { "@depth" };
    let streams: Vec<String> = symbols.iter().map(|s| format!("{}{}", s.to_lowercase(), suffix)).collect();
    format!("{}/stream?streams={}", ws_url.trim_end_matches('/'), streams.join("/"))
}

impl DepthSession {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        feed: Arc<str>,
        ws_url: &str,
        symbols: &[String],
        update_speed_ms: u32,
        max_held: usize,
        out: PacketSender,
        stats: Arc<FeedStats>,
        rest: BinanceRest,
        shutdown: Shutdown,
        events: mpsc::Sender<SnapshotReady>,
    ) -> Self {
        let url = stream_url(ws_url, symbols, update_speed_ms);
        let books: Vec<BookSync> = symbols
            .iter()
            .map(|s| BookSync::new(Instrument { exchange: "binance", market: "spot", symbol: Arc::from(s.to_uppercase()) }, max_held))
            .collect();
        let by_symbol = books.iter().enumerate().map(|(i, b)| (b.instrument().symbol.clone(), i)).collect();
        let pending = vec![false; books.len()];
        DepthSession {
            feed,
            url,
            books,
            by_symbol,
            pending,
            generation: 0,
            out,
            stats,
            rest,
            events,
            shutdown,
            invalid_log: RateLimit::default(),
            packets: Vec::new(),
            overlap: None,
            conn: 0,
        }
    }

    fn request_snapshot(&mut self, book: usize, delay: Duration) {
        if self.pending[book] {
            return;
        }
        let tx = self.events.clone();
        self.pending[book] = true;
        self.stats.resyncs.inc();
        let rest = self.rest.clone();
        let symbol = self.books[book].instrument().symbol.clone();
        let generation = self.generation;
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let result = rest.depth_snapshot_body(&symbol, &shutdown).await.map_err(|e| e.to_string());
            let _ = tx.send(SnapshotReady { book, generation, result }).await;
        });
    }

    fn flush_packets(&mut self) {
        for p in self.packets.drain(..) {
            self.out.send(p);
        }
    }

    fn invalid(&mut self, reason: String, raw: &str, recv_ns: i64) {
        self.stats.invalid.inc();
        if let Some(suppressed) = self.invalid_log.check() {
            warn!(feed = %self.feed, suppressed, "invalid frame: {reason}");
        }
        self.stats.points.inc();
        self.out.send(DataPacket::Invalid(InvalidFrame::new("binance", self.feed.clone(), reason, raw, self.stats.reserve_invalid(recv_ns, 1))));
    }
}

impl DepthSession {
    /// One frame of the connection, or of the replacement during a rollover (`origin`).
    fn on_message(&mut self, frame: WsMessage, recv_ns: i64, origin: Origin) -> Flow {
        let text = match &frame {
            WsMessage::Text(t) => t.as_str(),
            WsMessage::Binary(b) => {
                self.invalid("unexpected binary frame".into(), &String::from_utf8_lossy(b), recv_ns);
                return Flow::Continue;
            }
            _ => return Flow::Continue,
        };
        let flow = match DepthParser.parse(text.as_bytes()) {
            Ok(DepthFrame::Update(u)) => match self.by_symbol.get(u.symbol).copied() {
                Some(i) => {
                    let held = HeldUpdate::from_update(u, recv_ns);
                    let outcome = match self.overlap.as_mut() {
                        Some(o) => o.on_update(&mut self.books[i], i, held, origin, &mut self.packets, &self.stats),
                        None => self.books[i].on_update(held, &mut self.packets, &self.stats),
                    };
                    if outcome == SyncOutcome::NeedSnapshot {
                        self.request_snapshot(i, Duration::ZERO);
                    }
                    match &self.overlap {
                        Some(o) if o.done() => {
                            self.overlap = None;
                            Flow::Continue
                        }
                        Some(o) if o.old_open() && o.all_carried() => Flow::Handover,
                        _ => Flow::Continue,
                    }
                }
                None => {
                    let reason = format!("update for a symbol not subscribed here: {}", u.symbol);
                    self.invalid(reason, text, recv_ns);
                    Flow::Continue
                }
            },
            Ok(DepthFrame::ServerShutdown) => {
                // Binance is about to close this connection: replace it before it does. (On
                // a replacement, or during a rollover, the session ignores it.)
                self.stats.control.inc();
                Flow::Rollover("serverShutdown event".into())
            }
            Err(e) => {
                self.invalid(e.to_string(), text, recv_ns);
                Flow::Continue
            }
        };
        self.flush_packets();
        flow
    }
}

#[async_trait]
impl SessionHandler for DepthSession {
    type Event = SnapshotReady;

    fn url(&self) -> String {
        self.url.clone()
    }

    async fn on_open(&mut self, _ws: &mut ds_api::ws::WsStream) -> Result<(), String> {
        // Streams are in the URL, so there is nothing to send; with the stream now open and
        // buffering, each book fetches its snapshot (step 2 of the procedure).
        for i in 0..self.books.len() {
            self.request_snapshot(i, Duration::ZERO);
        }
        Ok(())
    }

    async fn on_replacement_open(&mut self, _ws: &mut ds_api::ws::WsStream) -> Result<(), String> {
        // Same URL, same streams: nothing to send, and no snapshot to ask for, since the books
        // go on with the events of both connections.
        self.overlap = Some(Overlap::new(self.books.len()));
        Ok(())
    }

    fn on_frame(&mut self, frame: WsMessage, recv_ns: i64, _outbox: &mut Vec<WsMessage>) -> Flow {
        self.on_message(frame, recv_ns, Origin::Old)
    }

    fn on_replacement_frame(&mut self, frame: WsMessage, recv_ns: i64, _outbox: &mut Vec<WsMessage>) -> Flow {
        self.on_message(frame, recv_ns, Origin::Replacement)
    }

    fn on_replacement_lost(&mut self) {
        if let Some(o) = self.overlap.take() {
            o.discard(&self.stats);
        }
    }

    fn on_handover(&mut self) {
        // Kept after the handover until the replacement has left the old connection's copies
        // behind (see `Overlap::done`).
        if let Some(o) = self.overlap.as_mut() {
            for book in o.close_old(&mut self.books, &mut self.packets, &self.stats) {
                self.request_snapshot(book, Duration::ZERO);
            }
            self.flush_packets();
        }
    }

    fn on_event(&mut self, ev: SnapshotReady, _outbox: &mut Vec<WsMessage>) -> Flow {
        if ev.generation != self.generation {
            return Flow::Continue;
        }
        self.pending[ev.book] = false;
        let result = ev.result.and_then(|(url, body)| {
            // The time it is applied is its receive time: the capture records this moment, so
            // a replay applies it between the same frames, with the same timestamp.
            let recv_ns = clock::now_ns();
            if let Some(c) = self.stats.capture.get() {
                c.rest(self.conn, recv_ns, &url, &body);
            }
            parse_snapshot(&body).map(|snap| (snap, recv_ns)).map_err(|e| format!("snapshot from {url}: {e}"))
        });
        match result {
            Ok((snap, recv_ns)) => {
                if self.books[ev.book].on_snapshot_at(snap, recv_ns, &mut self.packets, &self.stats) == SyncOutcome::NeedSnapshot {
                    self.request_snapshot(ev.book, RESNAPSHOT_DELAY);
                }
                self.flush_packets();
            }
            Err(e) => {
                warn!(feed = %self.feed, symbol = %self.books[ev.book].instrument().symbol, error = %e, "snapshot request failed; will retry");
                self.request_snapshot(ev.book, RESNAPSHOT_DELAY * 10);
            }
        }
        Flow::Continue
    }

    fn on_disconnect(&mut self, why: &Disconnect) {
        self.on_disconnect_at(why, clock::now_ns());
    }

    fn on_disconnect_at(&mut self, why: &Disconnect, at_ns: i64) {
        if let Some(o) = self.overlap.take() {
            o.discard(&self.stats);
        }
        self.generation += 1;
        self.pending.iter_mut().for_each(|p| *p = false);
        let reason = if *why == Disconnect::Shutdown { GapReason::Shutdown } else { GapReason::Disconnect };
        for b in &mut self.books {
            b.on_disconnect_at(reason, at_ns, &mut self.packets, &self.stats);
        }
        self.flush_packets();
    }
}
