//! The websocket session every connector reuses: connect (TLS by rustls), let the connector
//! subscribe, answer protocol pings, watch liveness, reconnect with capped backoff and jitter,
//! resubscribe. Each connection runs in its own task, so one slow or dead connection never
//! stalls another.
//!
//! A connection whose end is known in advance (Binance: 24 h, `serverShutdown`) is replaced
//! make-before-break instead: a *rollover* (see [`crate::rollover`] for when,
//! [`SessionHandler::on_replacement_open`] for the handler's part). The replacement is connected
//! and subscribed by this same task while the old connection keeps reading, frames of both go
//! to the one handler in arrival order, and the old connection is closed (with a close
//! handshake, read until the server's reply so nothing it sent goes uncounted) once the handler
//! says [`Flow::Handover`] or [`SessionConfig::max_overlap`] has passed. One task, one
//! handler: the handler's state is never shared, and no lock is needed.
//!
//! A connector supplies a [`SessionHandler`]: the URL, what to send on open, what to do with a
//! frame, and what to do with events it started itself (REST snapshots) which arrive on the
//! session's own channel so that the handler's state is only ever touched by this one task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::clock::now_ns;
use crate::rollover::RolloverSchedule;
use crate::shutdown::Shutdown;
use crate::stats::FeedStats;

pub use tokio_tungstenite::tungstenite::Message as WsMessage;

pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A TCP + TLS + websocket handshake that takes longer than this is treated as failed.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// No frame at all (data or ping) for this long means the connection is dead. Binance pings
/// every 20 s and Huobi every 5 s, so a quiet symbol is never mistaken for a dead connection.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(60);
/// A connection that stayed up this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Longest overlap of a rollover: a book that stays quiet never shows that the replacement
/// carries it, and two connections per session must not last.
pub const DEFAULT_MAX_OVERLAP: Duration = Duration::from_secs(10);
/// At a handover the old connection is closed with a close handshake and read until the
/// server's reply, so the frames it had already sent are received and accounted for; a server
/// that does not reply within this is cut off.
const OLD_CLOSE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub connect_timeout: Duration,
    pub stale_after: Duration,
    /// Client heartbeat (Bybit's `{"op":"ping"}`); `None` when the server drives pings.
    pub heartbeat_every: Option<Duration>,
    pub backoff: Backoff,
    /// Replace a connection make-before-break once it is this old (Binance closes every
    /// connection after 24 h); `None`: only when the handler asks ([`Flow::Rollover`]). See
    /// [`crate::rollover`].
    pub max_connection_age: Option<Duration>,
    /// During a rollover, the old connection is closed after this long even if the handler
    /// has not said [`Flow::Handover`] yet.
    pub max_overlap: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            stale_after: DEFAULT_STALE_AFTER,
            heartbeat_every: None,
            backoff: Backoff::default(),
            max_connection_age: None,
            max_overlap: DEFAULT_MAX_OVERLAP,
        }
    }
}

/// What the handler wants after a frame or event.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Drop this connection and connect again.
    Reconnect(String),
    /// Open a replacement connection and subscribe it while this one keeps reading, then
    /// hand over (make-before-break; e.g. Binance `serverShutdown`). Ignored while a rollover
    /// is already in progress.
    Rollover(String),
    /// During a rollover: the replacement now carries everything this connection carried, so
    /// the old connection can be closed.
    Handover,
}

/// The exchange-specific part of a websocket session.
#[async_trait]
pub trait SessionHandler: Send {
    /// Events the handler sends itself through [`WsSession::events`] (e.g. REST results).
    type Event: Send + 'static;

    /// Where to connect for this attempt.
    fn url(&self) -> String;

    /// Right after the handshake: send subscriptions and check acks. An error ends this
    /// attempt (logged) and the session reconnects with backoff.
    async fn on_open(&mut self, _ws: &mut WsStream) -> Result<(), String> {
        Ok(())
    }

    /// One text or binary frame; replies go to `outbox`.
    fn on_frame(&mut self, frame: Message, recv_ns: i64, outbox: &mut Vec<Message>) -> Flow;

    /// An event from the session's channel.
    fn on_event(&mut self, _event: Self::Event, _outbox: &mut Vec<Message>) -> Flow {
        Flow::Continue
    }

    /// Client heartbeat tick, when `heartbeat_every` is set.
    fn on_heartbeat(&mut self, _outbox: &mut Vec<Message>) -> Flow {
        Flow::Continue
    }

    /// A replacement connection for a rollover is open: subscribe it (as [`Self::on_open`]
    /// does) without resetting any book, since the current connection still reads. An error
    /// closes the replacement; the current connection carries on. The default refuses: a
    /// handler that does not override this never rolls over, it reconnects when its
    /// connection ends.
    async fn on_replacement_open(&mut self, _ws: &mut WsStream) -> Result<(), String> {
        Err("this feed does not replace connections make-before-break".into())
    }

    /// A frame of the replacement connection, while the old one still reads (frames of both
    /// arrive here and in [`Self::on_frame`] in arrival order); replies go to the replacement.
    fn on_replacement_frame(&mut self, frame: Message, recv_ns: i64, outbox: &mut Vec<Message>) -> Flow {
        self.on_frame(frame, recv_ns, outbox)
    }

    /// The replacement died before the handover; the old connection still reads. Whatever
    /// the handler kept of the replacement's frames is of no use now.
    fn on_replacement_lost(&mut self) {}

    /// The old connection is closed; from now on the replacement is the connection and its
    /// frames arrive in [`Self::on_frame`].
    fn on_handover(&mut self) {}

    /// The connection ended; the handler marks gaps and plans its resync here.
    fn on_disconnect(&mut self, why: &Disconnect);

    /// The connection ended at `at_ns` (the time a capture records for it). A handler whose
    /// gap markers must replay to the same timestamps overrides this one; the default ignores
    /// the time.
    fn on_disconnect_at(&mut self, why: &Disconnect, _at_ns: i64) {
        self.on_disconnect(why);
    }
}

/// Why a connection ended, as told to [`SessionHandler::on_disconnect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// The service is stopping.
    Shutdown,
    /// Subscribing failed on a fresh connection.
    SubscribeFailed(String),
    /// Closed, errored, went stale, or the handler asked to reconnect.
    Lost(String),
}

/// Why a connection ended.
enum Ended {
    Shutdown,
    Lost(String),
}

/// A websocket handshake in flight (a rollover's replacement), polled by the read loop so the
/// old connection keeps reading meanwhile.
type Connecting = Pin<Box<dyn Future<Output = Result<WsStream, String>> + Send>>;

/// Bytes tungstenite asks the socket for per read. Its default, 128 KiB, is zeroed before every
/// read (`BytesMut::resize`), including the last one of each wakeup, which finds the socket
/// empty: at one symbol (`ds-load --symbols 1`, perf) that memset was 4.2% of the service's CPU,
/// 0.5% at 16 KiB. The recorded frames are at most 9 KiB (a Bybit 200-level snapshot); a longer
/// one is still read whole, in more reads, as tungstenite reserves a frame's length from its
/// header. Each connection also holds 112 KiB less.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// The websocket handshake with this crate's settings. Public for `ds-load --floor`, whose
/// bare reader measures what receiving costs on a socket set up exactly like the sessions'.
pub async fn open(url: &str) -> Result<WsStream, tokio_tungstenite::tungstenite::Error> {
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let (ws, _response) = tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
    Ok(ws)
}

fn connect(url: String, timeout: Duration) -> Connecting {
    Box::pin(async move {
        match tokio::time::timeout(timeout, open(&url)).await {
            Ok(Ok(ws)) => Ok(ws),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".into()),
        }
    })
}

/// The replacement connection while both read.
struct Overlap {
    ws: Box<WsStream>,
    /// The old connection is closed at this instant at the latest (then, while
    /// `closing_old`, cut off).
    until: Instant,
    last_seen: Instant,
    /// Our Close went out on the old connection; it is read until the server's reply.
    closing_old: bool,
}

/// What one read of a connection gave.
enum Read {
    Frame(Message),
    /// A protocol ping: tungstenite queued the pong, which must be flushed.
    Ping,
    Nothing,
    Ended(String),
}

fn classify(msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Read {
    match msg {
        None => Read::Ended("connection closed".into()),
        Some(Err(e)) => Read::Ended(format!("read error: {e}")),
        Some(Ok(Message::Close(frame))) => Read::Ended(match frame {
            Some(f) => format!("server closed: {} {}", f.code, f.reason),
            None => "server closed".into(),
        }),
        Some(Ok(Message::Ping(_))) => Read::Ping,
        Some(Ok(Message::Pong(_))) | Some(Ok(Message::Frame(_))) => Read::Nothing,
        Some(Ok(m)) => Read::Frame(m),
    }
}

/// The rollover's timers.
#[derive(Clone, Copy)]
enum Timer {
    Rollover,
    OverlapOver,
    ReplacementSilent,
}

/// One turn of the read loop.
enum Step {
    Flow(Flow),
    /// The current connection ended (closed, errored, stale).
    OldEnded(String),
    /// A replacement frame was handled; its replies are in the replacement's outbox.
    NewFlow(Flow),
    NewEnded(String),
    /// The replacement's handshake finished (boxed: a stream is large, the other steps small).
    Connected(Result<Box<WsStream>, String>),
    StartRollover,
    OverlapOver,
}

/// Runs one connection (and its reconnects) until shutdown.
pub struct WsSession<H: SessionHandler> {
    name: String,
    handler: H,
    cfg: SessionConfig,
    events_rx: mpsc::Receiver<H::Event>,
    stats: Arc<FeedStats>,
    /// The `n` of `feed#n`: which connection a capture record came from.
    conn: u32,
    rollover: RolloverSchedule,
}

/// The channel a handler uses to send events (REST results) back into its own session: create
/// it first, give the sender to the handler, the receiver to [`WsSession::new`].
pub fn event_channel<E>() -> (mpsc::Sender<E>, mpsc::Receiver<E>) {
    mpsc::channel(1024)
}

impl<H: SessionHandler> WsSession<H> {
    /// `name` identifies the connection in logs (`binance-spot#0`).
    pub fn new(name: String, handler: H, cfg: SessionConfig, events_rx: mpsc::Receiver<H::Event>, stats: Arc<FeedStats>) -> Self {
        let conn = crate::capture::conn_number(&name);
        let rollover = RolloverSchedule::new(cfg.max_connection_age);
        WsSession { name, handler, cfg, events_rx, stats, conn, rollover }
    }

    /// Connects, reads, reconnects, until `shutdown` fires. Returns the handler so the caller
    /// can inspect its final state.
    pub async fn run(mut self, mut shutdown: Shutdown) -> H {
        // Counted while this task runs, whichever way it returns: `/health` wants every
        // session connected.
        let _session = SessionCount::start(self.stats.clone());
        let mut first = true;
        loop {
            if shutdown.is_triggered() {
                return self.handler;
            }
            if !first {
                self.stats.reconnects.inc();
            }
            first = false;
            let url = self.handler.url();
            let connected = tokio::select! {
                _ = shutdown.wait() => return self.handler,
                r = tokio::time::timeout(self.cfg.connect_timeout, open(&url)) => r,
            };
            let mut ws = match connected {
                Ok(Ok(ws)) => ws,
                Ok(Err(e)) => {
                    self.wait_backoff(&mut shutdown, &url, &e.to_string()).await;
                    continue;
                }
                Err(_) => {
                    self.wait_backoff(&mut shutdown, &url, "connect timed out").await;
                    continue;
                }
            };
            if let Err(e) = self.handler.on_open(&mut ws).await {
                let _ = ws.close(None).await;
                self.disconnected(&Disconnect::SubscribeFailed(e.clone()));
                self.wait_backoff(&mut shutdown, &url, &format!("subscribe failed: {e}")).await;
                continue;
            }
            info!(conn = %self.name, url = %redact(&url), "connected");
            self.stats.connections.inc();
            let opened = Instant::now();
            self.rollover.opened(opened);
            let ended = self.read_loop(&mut ws, &mut shutdown).await;
            self.rollover.closed();
            self.stats.connections.dec();
            match ended {
                Ended::Shutdown => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    self.disconnected(&Disconnect::Shutdown);
                    return self.handler;
                }
                Ended::Lost(reason) => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    self.disconnected(&Disconnect::Lost(reason.clone()));
                    if opened.elapsed() >= STABLE_AFTER {
                        self.cfg.backoff.reset();
                    }
                    self.wait_backoff(&mut shutdown, &url, &reason).await;
                }
            }
        }
    }

    /// Tells the handler, and the capture first, that the connection ended, with one time.
    fn disconnected(&mut self, why: &Disconnect) {
        let at_ns = now_ns();
        if let Some(c) = self.stats.capture.get() {
            c.close(self.conn, at_ns, *why == Disconnect::Shutdown);
        }
        self.handler.on_disconnect_at(why, at_ns);
    }

    async fn wait_backoff(&mut self, shutdown: &mut Shutdown, url: &str, reason: &str) {
        let delay = self.cfg.backoff.next_delay();
        warn!(conn = %self.name, url = %redact(url), attempt = self.cfg.backoff.attempts(), retry_in_ms = delay.as_millis() as u64, "connection lost or refused: {reason}");
        tokio::select! {
            _ = shutdown.wait() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }

    /// Reads the connection until it ends. A rollover replaces `ws` in place: the
    /// replacement is connected and subscribed while `ws` keeps reading, both are read in
    /// arrival order, and at the handover the old one is closed and the replacement takes its
    /// place. Events and heartbeats reply on the current (old) connection until then.
    async fn read_loop(&mut self, ws: &mut WsStream, shutdown: &mut Shutdown) -> Ended {
        let mut last_seen = Instant::now();
        let mut outbox: Vec<Message> = Vec::new();
        let mut new_outbox: Vec<Message> = Vec::new();
        let heartbeat_every = self.cfg.heartbeat_every.unwrap_or(Duration::from_secs(3600));
        let mut heartbeat = tokio::time::interval_at(Instant::now() + heartbeat_every, heartbeat_every);
        let mut connecting: Option<Connecting> = None;
        let mut overlap: Option<Overlap> = None;
        let stale_after = self.cfg.stale_after;
        // The loop runs once per frame, so what it waits on lives across iterations: built
        // anew in each, the stop signal's waiter and the two timers were registered and
        // unregistered (a lock each) for every frame. The silence timer is pushed back only
        // when it fires early (frames came since); the other timer is reset only when its
        // deadline changes.
        let mut stop = std::pin::pin!(shutdown.wait());
        let mut silence = std::pin::pin!(tokio::time::sleep_until(last_seen + stale_after));
        let mut timer_sleep = std::pin::pin!(tokio::time::sleep_until(last_seen + stale_after));
        loop {
            // The rollover's timers share one sleep: the next rollover, the end of the
            // overlap, the replacement going silent.
            let timer = [
                self.rollover.due_at().map(|at| (at, Timer::Rollover)),
                overlap.as_ref().map(|o| (o.until, Timer::OverlapOver)),
                overlap.as_ref().map(|o| (o.last_seen + stale_after, Timer::ReplacementSilent)),
            ]
            .into_iter()
            .flatten()
            .min_by_key(|(at, _)| *at);
            if let Some((at, _)) = timer {
                if timer_sleep.deadline() != at {
                    timer_sleep.as_mut().reset(at);
                }
            }
            // A handover can move `last_seen` back (to the replacement's last frame).
            if last_seen + stale_after < silence.deadline() {
                silence.as_mut().reset(last_seen + stale_after);
            }
            let step = tokio::select! {
                biased;
                _ = &mut stop => {
                    self.drop_replacement(overlap.take()).await;
                    return Ended::Shutdown;
                }
                msg = ws.next() => {
                    last_seen = Instant::now();
                    match classify(msg) {
                        Read::Ended(why) => Step::OldEnded(why),
                        Read::Ping => match ws.flush().await {
                            Ok(()) => Step::Flow(Flow::Continue),
                            Err(e) => Step::OldEnded(format!("pong failed: {e}")),
                        },
                        Read::Nothing => Step::Flow(Flow::Continue),
                        Read::Frame(m) => {
                            let recv_ns = self.received(&m);
                            Step::Flow(self.handler.on_frame(m, recv_ns, &mut outbox))
                        }
                    }
                }
                msg = async { overlap.as_mut().map(|o| o.ws.next()).expect("guarded").await }, if overlap.is_some() => {
                    let o = overlap.as_mut().expect("guarded");
                    o.last_seen = Instant::now();
                    match classify(msg) {
                        Read::Ended(why) => Step::NewEnded(why),
                        Read::Ping => match o.ws.flush().await {
                            Ok(()) => Step::NewFlow(Flow::Continue),
                            Err(e) => Step::NewEnded(format!("pong failed: {e}")),
                        },
                        Read::Nothing => Step::NewFlow(Flow::Continue),
                        Read::Frame(m) => {
                            let recv_ns = self.received(&m);
                            Step::NewFlow(self.handler.on_replacement_frame(m, recv_ns, &mut new_outbox))
                        }
                    }
                }
                r = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => Step::Connected(r.map(Box::new)),
                Some(ev) = self.events_rx.recv() => Step::Flow(self.handler.on_event(ev, &mut outbox)),
                _ = heartbeat.tick(), if self.cfg.heartbeat_every.is_some() => Step::Flow(self.handler.on_heartbeat(&mut outbox)),
                _ = &mut timer_sleep, if timer.is_some() => {
                    match timer.map(|(_, t)| t) {
                        Some(Timer::Rollover) => Step::StartRollover,
                        Some(Timer::OverlapOver) => Step::OverlapOver,
                        Some(Timer::ReplacementSilent) => Step::NewEnded(format!("no frame for {}s", stale_after.as_secs())),
                        None => Step::Flow(Flow::Continue),
                    }
                }
                _ = &mut silence => {
                    if Instant::now() >= last_seen + stale_after {
                        Step::OldEnded(format!("no frame for {}s", stale_after.as_secs()))
                    } else {
                        silence.as_mut().reset(last_seen + stale_after);
                        Step::Flow(Flow::Continue)
                    }
                }
            };
            let flow = match step {
                Step::Flow(flow) => flow,
                Step::NewFlow(flow) => {
                    if let Some(o) = overlap.as_mut() {
                        if let Err(why) = send_all(&mut o.ws, &mut new_outbox).await {
                            self.replacement_lost(overlap.take(), why).await;
                            continue;
                        }
                    }
                    flow
                }
                Step::OldEnded(why) => {
                    if overlap.is_none() {
                        // No replacement yet (a handshake in flight is dropped): the plain
                        // reconnect, with its gap markers and resync.
                        self.drop_replacement(None).await;
                        return Ended::Lost(why);
                    }
                    if overlap.as_ref().is_some_and(|o| o.closing_old) {
                        info!(conn = %self.name, "old connection closed; the replacement carries on");
                    } else {
                        info!(conn = %self.name, "old connection ended during the rollover ({why}); the replacement carries on");
                    }
                    last_seen = self.hand_over(ws, overlap.take());
                    Flow::Continue
                }
                Step::NewEnded(why) => {
                    self.replacement_lost(overlap.take(), why).await;
                    Flow::Continue
                }
                Step::Connected(Ok(mut new_ws)) => {
                    connecting = None;
                    match self.handler.on_replacement_open(&mut new_ws).await {
                        Ok(()) => {
                            self.stats.connections.inc();
                            info!(conn = %self.name, "replacement connected; both connections read until the handover");
                            let now = Instant::now();
                            overlap = Some(Overlap { ws: new_ws, until: now + self.cfg.max_overlap, last_seen: now, closing_old: false });
                        }
                        Err(e) => {
                            let _ = tokio::time::timeout(Duration::from_secs(2), WebSocketStream::close(&mut *new_ws, None)).await;
                            self.replacement_failed(format!("subscribing the replacement failed: {e}"));
                        }
                    }
                    Flow::Continue
                }
                Step::Connected(Err(e)) => {
                    connecting = None;
                    self.replacement_failed(e);
                    Flow::Continue
                }
                Step::StartRollover => {
                    let why = self.rollover.start();
                    info!(conn = %self.name, reason = %why, "rolling over: opening the replacement connection while this one keeps reading");
                    connecting = Some(connect(self.handler.url(), self.cfg.connect_timeout));
                    Flow::Continue
                }
                Step::OverlapOver => {
                    if overlap.as_ref().is_some_and(|o| o.closing_old) {
                        warn!(conn = %self.name, "the old connection did not answer our close; cut off");
                        last_seen = self.hand_over(ws, overlap.take());
                    } else {
                        info!(conn = %self.name, overlap_s = self.cfg.max_overlap.as_secs_f64(), "rollover overlap over; closing the old connection");
                        last_seen = self.close_old(ws, &mut overlap).await.unwrap_or(last_seen);
                    }
                    Flow::Continue
                }
            };
            // Replies go to the old connection unless it is being closed.
            match overlap.as_mut().filter(|o| o.closing_old) {
                Some(o) => {
                    if let Err(why) = send_all(&mut o.ws, &mut outbox).await {
                        self.replacement_lost(overlap.take(), why).await;
                        return Ended::Lost("the replacement failed while the old connection was closing".into());
                    }
                }
                None => {
                    if let Err(why) = send_all(ws, &mut outbox).await {
                        self.drop_replacement(overlap.take()).await;
                        return Ended::Lost(why);
                    }
                }
            }
            match flow {
                Flow::Continue => {}
                Flow::Reconnect(reason) => {
                    self.drop_replacement(overlap.take()).await;
                    return Ended::Lost(reason);
                }
                Flow::Rollover(reason) => self.rollover.request(Instant::now(), reason),
                Flow::Handover => {
                    if overlap.as_ref().is_some_and(|o| !o.closing_old) {
                        info!(conn = %self.name, "the replacement carries every stream; closing the old connection");
                        last_seen = self.close_old(ws, &mut overlap).await.unwrap_or(last_seen);
                    }
                }
            }
        }
    }

    /// Counts and captures a data frame received on either connection; its receive time.
    fn received(&self, m: &Message) -> i64 {
        let recv_ns = now_ns();
        self.stats.frames.inc();
        self.stats.last_message.set(recv_ns);
        if let Some(c) = self.stats.capture.get() {
            c.ws(self.conn, recv_ns, m);
        }
        recv_ns
    }

    /// Sends our Close on the old connection; it is read on (its frames still count) until
    /// the server's reply ends it ([`Step::OldEnded`] hands over) or [`OLD_CLOSE_WAIT`] has
    /// passed. If the Close cannot be sent, hands over at once: the replacement's last-seen
    /// time then.
    async fn close_old(&mut self, ws: &mut WsStream, overlap: &mut Option<Overlap>) -> Option<Instant> {
        let o = overlap.as_mut()?;
        o.closing_old = true;
        o.until = Instant::now() + OLD_CLOSE_WAIT;
        match tokio::time::timeout(OLD_CLOSE_WAIT, ws.close(None)).await {
            Ok(Ok(())) => None,
            _ => Some(self.hand_over(ws, overlap.take())),
        }
    }

    /// The replacement becomes the connection; the old one, if still open, is closed in the
    /// background (that must not hold up reading). Returns the replacement's last-seen time.
    fn hand_over(&mut self, ws: &mut WsStream, overlap: Option<Overlap>) -> Instant {
        let Some(o) = overlap else {
            return Instant::now();
        };
        let mut old = std::mem::replace(ws, *o.ws);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), old.close(None)).await;
        });
        self.stats.connections.dec();
        self.stats.rollovers.inc();
        self.handler.on_handover();
        self.rollover.handed_over(Instant::now());
        o.last_seen
    }

    /// The replacement could not be opened; the old connection keeps reading and the rollover
    /// is tried again after a delay (if the old one dies first, the plain reconnect follows).
    fn replacement_failed(&mut self, why: String) {
        let delay = self.rollover.failed(Instant::now(), why.clone());
        warn!(conn = %self.name, retry_in_ms = delay.as_millis() as u64, "replacement connection failed: {why}; the current connection keeps reading");
    }

    /// The replacement died during the overlap: closed, the handler forgets it, retried later.
    async fn replacement_lost(&mut self, overlap: Option<Overlap>, why: String) {
        self.drop_replacement(overlap).await;
        self.handler.on_replacement_lost();
        self.replacement_failed(format!("replacement lost: {why}"));
    }

    async fn drop_replacement(&mut self, overlap: Option<Overlap>) {
        if let Some(mut o) = overlap {
            self.stats.connections.dec();
            let _ = tokio::time::timeout(Duration::from_secs(2), WebSocketStream::close(&mut *o.ws, None)).await;
        }
    }
}

/// Keeps [`FeedStats::sessions`] right on every return path of [`WsSession::run`].
struct SessionCount(Arc<FeedStats>);

impl SessionCount {
    fn start(stats: Arc<FeedStats>) -> Self {
        stats.sessions.inc();
        SessionCount(stats)
    }
}

impl Drop for SessionCount {
    fn drop(&mut self) {
        self.0.sessions.dec();
    }
}

/// URLs in logs keep scheme, host and path; a query string may carry stream lists thousands of
/// characters long, so it is cut.
pub fn redact(url: &str) -> String {
    match url.find('?') {
        Some(i) if url.len() - i > 80 => format!("{}?{}...", &url[..i], &url[i + 1..i + 60]),
        _ => url.to_string(),
    }
}

/// Sends a handler's replies in order; the first failure stops (the rest would go to a broken
/// connection) and says why.
async fn send_all(ws: &mut WsStream, outbox: &mut Vec<Message>) -> Result<(), String> {
    for m in outbox.drain(..) {
        ws.send(m).await.map_err(|e| format!("send failed: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::shutdown_pair;

    /// Keeps every data frame it is handed, and (when asked) why each connection ended.
    struct Recorder {
        url: String,
        frames: mpsc::UnboundedSender<Message>,
        ended: Option<mpsc::UnboundedSender<String>>,
    }

    #[async_trait]
    impl SessionHandler for Recorder {
        type Event = ();
        fn url(&self) -> String {
            self.url.clone()
        }
        fn on_frame(&mut self, frame: Message, _recv_ns: i64, _outbox: &mut Vec<Message>) -> Flow {
            let _ = self.frames.send(frame);
            Flow::Continue
        }
        fn on_disconnect(&mut self, why: &Disconnect) {
            if let (Some(ended), Disconnect::Lost(why)) = (&self.ended, why) {
                let _ = ended.send(why.clone());
            }
        }
    }

    /// The silence timer lives across frames and is pushed back lazily: frames 200 ms apart
    /// for 2 s keep a connection with `stale_after` 700 ms open (one connection, no end), and
    /// 700 ms of silence after them ends it as stale. A rollover timer is set too, and must
    /// not fire or disturb it.
    #[tokio::test]
    async fn steady_frames_keep_a_connection_and_silence_ends_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let server = tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let first = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                tokio::spawn(async move {
                    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                    if first {
                        for i in 0..10 {
                            ws.send(Message::text(format!("f{i}"))).await.unwrap();
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    // Silent from here, held open until the client goes.
                    while let Some(Ok(_)) = ws.next().await {}
                });
            }
        });
        let (tx, mut frames) = mpsc::unbounded_channel();
        let (ended_tx, mut ended) = mpsc::unbounded_channel();
        let (trigger, shutdown) = shutdown_pair();
        let (_events_tx, events_rx) = event_channel();
        let cfg = SessionConfig { stale_after: Duration::from_millis(700), max_connection_age: Some(Duration::from_secs(3600)), ..SessionConfig::default() };
        let session = WsSession::new("test#0".into(), Recorder { url, frames: tx, ended: Some(ended_tx) }, cfg, events_rx, Arc::new(FeedStats::default()));
        let run = tokio::spawn(session.run(shutdown));
        for i in 0..10 {
            let m = tokio::time::timeout(Duration::from_secs(10), frames.recv()).await.expect("frames within 10 s").expect("session alive");
            assert_eq!(m, Message::text(format!("f{i}")));
        }
        let last_frame = Instant::now();
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one connection for the steady frames");
        assert!(ended.try_recv().is_err(), "no connection ended while frames came");
        let why = tokio::time::timeout(Duration::from_secs(10), ended.recv()).await.expect("stale within 10 s").unwrap();
        assert!(why.contains("no frame for"), "{why}");
        assert!(last_frame.elapsed() >= Duration::from_millis(500), "ended {:?} after the last frame", last_frame.elapsed());
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(10), run).await.expect("session stops").unwrap();
        server.abort();
    }

    /// The read buffer is smaller than a frame can be: a frame 20 times its size, sent between
    /// two small ones, arrives whole and in order.
    #[tokio::test]
    async fn frames_longer_than_the_read_buffer_arrive_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let big: String = (0..READ_BUFFER_BYTES * 20).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let sent = vec![Message::text("first"), Message::text(big.clone()), Message::binary(vec![7u8; 3 * READ_BUFFER_BYTES + 1]), Message::text("last")];
        let to_send = sent.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            for m in to_send {
                ws.send(m).await.unwrap();
            }
            // Held open until the client goes, so the session sees no disconnect meanwhile.
            while let Some(Ok(_)) = ws.next().await {}
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (trigger, shutdown) = shutdown_pair();
        let (_events_tx, events_rx) = event_channel();
        let session = WsSession::new("test#0".into(), Recorder { url, frames: tx, ended: None }, SessionConfig::default(), events_rx, Arc::new(FeedStats::default()));
        let run = tokio::spawn(session.run(shutdown));
        let mut got = Vec::new();
        while got.len() < sent.len() {
            let m = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("frames within 20 s").expect("session alive");
            got.push(m);
        }
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(10), run).await.expect("session stops").unwrap();
        server.abort();
        assert_eq!(got, sent);
    }
}
