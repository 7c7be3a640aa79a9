//! A generating Binance spot mock for load runs, on 127.0.0.1.
//!
//! The replaying mock ([`crate::binance::MockBinance`]) serves a fixed list of recorded
//! frames; a load run needs an endless stream for thousands of symbols at a fixed rate, so
//! this one generates frames from [`SymbolBook`]s instead, speaking the same protocol:
//! `GET /stream?streams=a@depth@100ms/b@depth@100ms` (one task per connection, pushing a frame
//! for every stream each `1 / rate` seconds, in one burst like Binance's 100 ms pushes, with
//! the connections' phases spread over the period), a protocol Ping every 20 s, and
//! `/api/v3/depth` and `/api/v3/exchangeInfo` on the REST port (the scripted
//! [`crate::http::HttpServer`]).
//!
//! A frame's event time `E` is the wall-clock millisecond at which it is generated, right
//! before it is written to the socket: it is the "frame left the mock" time of the latency
//! measurement ([`super::endpoint`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

use super::levels::LevelSampler;
use super::market::SymbolBook;
use crate::http::{HttpServer, Request, Response};

/// Binance's server ping period.
const PING_INTERVAL: Duration = Duration::from_secs(20);

/// What the generator does, and what it counts.
struct Shared {
    books: Vec<Mutex<SymbolBook>>,
    by_stream: HashMap<String, usize>,
    by_symbol: HashMap<String, usize>,
    levels: LevelSampler,
    period: Duration,
    seed: u64,
    frames_sent: AtomicU64,
    levels_sent: AtomicU64,
    /// Ticks a connection could not keep (it was still writing the previous burst): the mock
    /// or the reader fell behind the asked rate.
    ticks_missed: AtomicU64,
    /// Symbols whose first snapshot was served.
    synced: AtomicU64,
    connections: AtomicU64,
    /// Connections being served now (a connection's task ends within a period of its peer
    /// leaving: it notices at its next push).
    open: AtomicU64,
}

/// Counts a connection in [`Shared::open`] while its task lives.
struct OpenGuard<'a>(&'a AtomicU64);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counters of the generator at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExchangeCounts {
    pub frames_sent: u64,
    pub levels_sent: u64,
    pub ticks_missed: u64,
}

/// The running mock; stops generating on [`LoadExchange::stop`], and entirely when dropped.
pub struct LoadExchange {
    shared: Arc<Shared>,
    ws_url: String,
    rest: HttpServer,
    stop: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
}

impl LoadExchange {
    /// Builds `symbols` books of `depth` levels per side and starts serving.
    pub async fn start(
        symbols: usize,
        rate: f64,
        depth: usize,
        levels: LevelSampler,
        seed: u64,
    ) -> std::io::Result<LoadExchange> {
        let mut rng = StdRng::seed_from_u64(seed);
        let books: Vec<SymbolBook> = (0..symbols)
            .map(|i| SymbolBook::new(i, depth, &mut rng))
            .collect();
        let by_stream = books
            .iter()
            .enumerate()
            .map(|(i, b)| (b.stream.clone(), i))
            .collect();
        let by_symbol = books
            .iter()
            .enumerate()
            .map(|(i, b)| (b.symbol.clone(), i))
            .collect();
        let shared = Arc::new(Shared {
            books: books.into_iter().map(Mutex::new).collect(),
            by_stream,
            by_symbol,
            levels,
            period: Duration::from_secs_f64(1.0 / rate),
            seed,
            frames_sent: AtomicU64::new(0),
            levels_sent: AtomicU64::new(0),
            ticks_missed: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            open: AtomicU64::new(0),
        });
        let rest_shared = Arc::clone(&shared);
        let rest = HttpServer::start(move |req| rest_answer(&rest_shared, req)).await;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let ws_url = format!("ws://{}", listener.local_addr()?);
        let (stop, stop_rx) = watch::channel(false);
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop_rx));
        Ok(LoadExchange {
            shared,
            ws_url,
            rest,
            stop,
            accept_task,
        })
    }

    /// `ws://127.0.0.1:PORT` (the connector appends `/stream?streams=...`).
    pub fn ws_url(&self) -> &str {
        &self.ws_url
    }

    /// `http://127.0.0.1:PORT` for `/api/v3/...`.
    pub fn rest_url(&self) -> String {
        self.rest.url()
    }

    /// The symbol names, in order.
    pub fn symbols(&self) -> Vec<String> {
        self.shared
            .books
            .iter()
            .map(|b| crate::lock(b).symbol.clone())
            .collect()
    }

    /// Symbols whose first REST snapshot was served (the service is syncing or in sync).
    pub fn synced(&self) -> u64 {
        self.shared.synced.load(Ordering::Relaxed)
    }

    /// Levels of every snapshot served so far: the `book_snapshot` points the service has to
    /// store before it is in its steady state.
    pub fn snapshot_levels_served(&self) -> u64 {
        self.shared
            .books
            .iter()
            .map(|b| crate::lock(b).snapshot_levels_served)
            .sum()
    }

    /// WebSocket connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// WebSocket connections being served now.
    pub fn open_connections(&self) -> u64 {
        self.shared.open.load(Ordering::Relaxed)
    }

    pub fn counts(&self) -> ExchangeCounts {
        ExchangeCounts {
            frames_sent: self.shared.frames_sent.load(Ordering::Relaxed),
            levels_sent: self.shared.levels_sent.load(Ordering::Relaxed),
            ticks_missed: self.shared.ticks_missed.load(Ordering::Relaxed),
        }
    }

    /// Levels the service must store as `book_delta` points: those of frames generated after
    /// each symbol's first snapshot. Exact once generation has stopped.
    pub fn levels_after_snapshot(&self) -> u64 {
        self.shared
            .books
            .iter()
            .map(|b| crate::lock(b).levels_after_snapshot)
            .sum()
    }

    /// Stops generating frames; connections stay open (pings continue) until dropped.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for LoadExchange {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

fn rest_answer(shared: &Shared, req: &Request) -> Response {
    match req.path_only() {
        "/api/v3/depth" => {
            let Some(symbol) = req.query_param("symbol") else {
                return Response::json(
                    400,
                    r#"{"code":-1102,"msg":"Mandatory parameter 'symbol' was not sent."}"#,
                );
            };
            let limit = req
                .query_param("limit")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(100)
                .clamp(1, 5000);
            let Some(&i) = shared.by_symbol.get(symbol) else {
                return Response::json(400, r#"{"code":-1121,"msg":"Invalid symbol."}"#);
            };
            let mut book = crate::lock(&shared.books[i]);
            if !book.snapshot_served {
                shared.synced.fetch_add(1, Ordering::Relaxed);
            }
            Response::json(200, book.snapshot_body(limit))
        }
        "/api/v3/exchangeInfo" => {
            let symbols: Vec<String> = shared
                .books
                .iter()
                .map(|b| {
                    format!(
                        r#"{{"symbol":"{}","status":"TRADING"}}"#,
                        crate::lock(b).symbol
                    )
                })
                .collect();
            Response::json(
                200,
                format!(r#"{{"timezone":"UTC","symbols":[{}]}}"#, symbols.join(",")),
            )
        }
        _ => Response::json(404, r#"{"code":-1,"msg":"not found"}"#),
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    crate::accept::serve_each(listener, "ds-load mock", |stream| {
        let _ = stream.set_nodelay(true);
        serve(stream, Arc::clone(&shared), stop.clone())
    })
    .await;
}

/// Maps `/stream?streams=a/b` to book indices; unknown names are ignored (served nothing).
fn requested(shared: &Shared, target: &str) -> Result<Vec<usize>, String> {
    let query = target
        .strip_prefix("/stream?streams=")
        .ok_or_else(|| format!("only /stream?streams=... is served, not {target}"))?;
    let streams: Vec<usize> = query
        .split('/')
        .filter_map(|s| shared.by_stream.get(s).copied())
        .collect();
    Ok(streams)
}

/// One connection: pushes a frame per stream every period until stopped or the peer leaves.
async fn serve(stream: TcpStream, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut target = String::new();
    // The callback's signature is tungstenite's; its large Err type is not ours to box.
    #[allow(clippy::result_large_err)]
    let callback = |req: &WsRequest, resp: WsResponse| -> Result<WsResponse, ErrorResponse> {
        target = req.uri().to_string();
        match requested(&shared, &target) {
            Ok(_) => Ok(resp),
            Err(reason) => {
                Err(crate::accept::refusal(StatusCode::BAD_REQUEST, reason))
            }
        }
    };
    let Some(ws) = crate::accept::websocket(stream, "ds-load mock", callback).await else {
        return;
    };
    let Ok(books) = requested(&shared, &target) else {
        return;
    };
    let id = shared.connections.fetch_add(1, Ordering::Relaxed);
    shared.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(&shared.open);
    let (mut tx, mut rx) = ws.split();
    // Read (and drop) what the client sends, so its Pongs never fill the socket.
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });

    let mut rng = StdRng::seed_from_u64(shared.seed ^ (id + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    // Spread connections over the period: connection k starts k/8 of a period later.
    let phase = shared.period.mul_f64((id % 8) as f64 / 8.0);
    let mut tick = tokio::time::interval_at(Instant::now() + phase, shared.period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    let mut generating = !*stop.borrow();
    let mut pings = 0u64;
    loop {
        tokio::select! {
            at = tick.tick(), if generating => {
                let late = at.elapsed();
                if late > shared.period {
                    shared.ticks_missed.fetch_add((late.as_nanos() / shared.period.as_nanos().max(1)) as u64, Ordering::Relaxed);
                }
                let (mut frames, mut levels) = (0u64, 0u64);
                for &i in &books {
                    let now_ms = crate::load::now_ms();
                    let (text, n) = crate::lock(&shared.books[i]).next_frame(now_ms, &shared.levels, &mut rng);
                    if tx.feed(Message::text(text)).await.is_err() {
                        reader.abort();
                        return;
                    }
                    frames += 1;
                    levels += n as u64;
                }
                if tx.flush().await.is_err() {
                    reader.abort();
                    return;
                }
                shared.frames_sent.fetch_add(frames, Ordering::Relaxed);
                shared.levels_sent.fetch_add(levels, Ordering::Relaxed);
            }
            _ = ping.tick() => {
                pings += 1;
                let payload = format!("ds-load-ping-{id}-{pings}");
                if tx.send(Message::Ping(payload.into_bytes().into())).await.is_err() {
                    break;
                }
            }
            changed = stop.changed(), if generating => {
                if changed.is_err() || *stop.borrow() {
                    generating = false;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(3600)), if !generating => {}
        }
        if reader.is_finished() {
            break;
        }
    }
    reader.abort();
}
