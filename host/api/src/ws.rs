//! The websocket session every connector reuses: connect (TLS by rustls), let the connector
//! subscribe, answer protocol pings, watch liveness, reconnect with capped backoff and jitter,
//! resubscribe. Each connection runs in its own task, so one slow or dead connection never
//! stalls another.
//!
//! A connector supplies a [`SessionHandler`]: the URL, what to send on open, what to do with a
//! frame, and what to do with events it started itself (REST snapshots) which arrive on the
//! session's own channel so that the handler's state is only ever touched by this one task.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::clock::now_ns;
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

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub connect_timeout: Duration,
    pub stale_after: Duration,
    /// Client heartbeat (Bybit's `{"op":"ping"}`); `None` when the server drives pings.
    pub heartbeat_every: Option<Duration>,
    pub backoff: Backoff,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            stale_after: DEFAULT_STALE_AFTER,
            heartbeat_every: None,
            backoff: Backoff::default(),
        }
    }
}

/// What the handler wants after a frame or event.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Drop this connection and connect again (e.g. Binance `serverShutdown`).
    Reconnect(String),
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

/// Runs one connection (and its reconnects) until shutdown.
pub struct WsSession<H: SessionHandler> {
    name: String,
    handler: H,
    cfg: SessionConfig,
    events_rx: mpsc::Receiver<H::Event>,
    stats: Arc<FeedStats>,
    /// The `n` of `feed#n`: which connection a capture record came from.
    conn: u32,
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
        WsSession { name, handler, cfg, events_rx, stats, conn }
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
                r = tokio::time::timeout(self.cfg.connect_timeout, tokio_tungstenite::connect_async(url.as_str())) => r,
            };
            let mut ws = match connected {
                Ok(Ok((ws, _resp))) => ws,
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
            let ended = self.read_loop(&mut ws, &mut shutdown).await;
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

    async fn read_loop(&mut self, ws: &mut WsStream, shutdown: &mut Shutdown) -> Ended {
        let mut last_seen = Instant::now();
        let mut outbox: Vec<Message> = Vec::new();
        let heartbeat_every = self.cfg.heartbeat_every.unwrap_or(Duration::from_secs(3600));
        let mut heartbeat = tokio::time::interval_at(Instant::now() + heartbeat_every, heartbeat_every);
        loop {
            let flow = tokio::select! {
                biased;
                _ = shutdown.wait() => return Ended::Shutdown,
                msg = ws.next() => {
                    let recv_ns = now_ns();
                    last_seen = Instant::now();
                    match msg {
                        None => return Ended::Lost("connection closed".into()),
                        Some(Err(e)) => return Ended::Lost(format!("read error: {e}")),
                        Some(Ok(Message::Close(frame))) => {
                            return Ended::Lost(match frame {
                                Some(f) => format!("server closed: {} {}", f.code, f.reason),
                                None => "server closed".into(),
                            })
                        }
                        // tungstenite queues the pong; flush now so it leaves at once.
                        Some(Ok(Message::Ping(_))) => {
                            if let Err(e) = ws.flush().await {
                                return Ended::Lost(format!("pong failed: {e}"));
                            }
                            Flow::Continue
                        }
                        Some(Ok(Message::Pong(_))) | Some(Ok(Message::Frame(_))) => Flow::Continue,
                        Some(Ok(m)) => {
                            self.stats.frames.inc();
                            self.stats.last_message.set(recv_ns);
                            if let Some(c) = self.stats.capture.get() {
                                c.ws(self.conn, recv_ns, &m);
                            }
                            self.handler.on_frame(m, recv_ns, &mut outbox)
                        }
                    }
                }
                Some(ev) = self.events_rx.recv() => self.handler.on_event(ev, &mut outbox),
                _ = heartbeat.tick(), if self.cfg.heartbeat_every.is_some() => self.handler.on_heartbeat(&mut outbox),
                _ = tokio::time::sleep_until(last_seen + self.cfg.stale_after) => {
                    return Ended::Lost(format!("no frame for {}s", self.cfg.stale_after.as_secs()));
                }
            };
            for m in outbox.drain(..) {
                if let Err(e) = ws.send(m).await {
                    return Ended::Lost(format!("send failed: {e}"));
                }
            }
            if let Flow::Reconnect(reason) = flow {
                return Ended::Lost(reason);
            }
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
