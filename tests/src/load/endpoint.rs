//! The HTTP endpoint data-storage writes to during a load run: a null InfluxDB, or a
//! pass-through in front of a real one. Either way it counts every line and measures latency.
//!
//! - `null`: answers `/write` with 204 as soon as the body is in, `/ping` with 204 and
//!   `/query` with an empty result, stores nothing. It costs the service nothing beyond the
//!   HTTP exchange, so the service's own cost per point is what is left.
//! - `proxy`: forwards every request unchanged (body still gzip, headers that matter) to the
//!   real InfluxDB and relays its answer. A proxy, rather than a query after the run, because
//!   "acknowledged by InfluxDB" is an instant only the writer sees: InfluxDB stores the
//!   service's receive time, not its own. Loopback adds well under a millisecond.
//!
//! Latency of a frame = the instant its batch was acknowledged (null: body received; proxy:
//! InfluxDB's answer received) minus the frame's `E` (event_ts), which the generating mock
//! stamps with the wall-clock millisecond at which it wrote the frame. One sample per frame:
//! the consecutive `book_delta` lines of one symbol with one `event_ts` are one frame. Only
//! frames stamped inside the measurement window count, so the snapshot burst at start does
//! not. Bodies are decoded and counted on a thread of their own, after the answer is sent, so
//! counting never delays the service's next write.

use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::latency::Histogram;
use crate::http::{read_request, write_response, Request, Response};

/// Where the endpoint sends writes.
#[derive(Clone, Debug)]
pub enum Backend {
    Null,
    /// InfluxDB base URL (`http://127.0.0.1:8086`).
    Proxy(String),
}

/// Line counts by measurement, and write requests.
#[derive(Debug, Default)]
pub struct Counters {
    pub lines: AtomicU64,
    pub deltas: AtomicU64,
    pub snapshots: AtomicU64,
    /// `book_gap` lines whose reason is not `shutdown` (those are expected at every stop).
    pub gaps: AtomicU64,
    pub shutdown_gaps: AtomicU64,
    pub invalid: AtomicU64,
    pub other: AtomicU64,
    pub writes: AtomicU64,
    pub body_bytes: AtomicU64,
    /// Writes answered with something else than 2xx (by InfluxDB through the proxy, or bodies
    /// the endpoint could not decode).
    pub failed_writes: AtomicU64,
}

/// A copy of [`Counters`] at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub lines: u64,
    pub deltas: u64,
    pub snapshots: u64,
    pub gaps: u64,
    pub shutdown_gaps: u64,
    pub invalid: u64,
    pub other: u64,
    pub writes: u64,
    pub body_bytes: u64,
    pub failed_writes: u64,
}

/// What the counting thread shares with the endpoint.
struct Tallies {
    counters: Counters,
    latency: Mutex<Histogram>,
    /// Frames with `E` in `[window_start_ms, window_end_ms]` are latency samples.
    window_start_ms: AtomicI64,
    window_end_ms: AtomicI64,
    /// Writes handed to the counting thread and not counted yet.
    pending: AtomicU64,
}

/// One answered write, to be counted.
struct Job {
    request: Request,
    acked_ms: i64,
    ok: bool,
}

struct Shared {
    backend: Backend,
    client: reqwest::Client,
    tallies: Arc<Tallies>,
    /// To the counting thread; it ends when this is dropped with the endpoint.
    jobs: std::sync::mpsc::Sender<Job>,
}

/// The running endpoint on 127.0.0.1; stops when dropped.
pub struct Endpoint {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept_task: JoinHandle<()>,
}

impl Endpoint {
    pub async fn start(backend: Backend) -> std::io::Result<Endpoint> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            // The body is relayed as it came (gzip); never decode it on the way back.
            .no_gzip()
            .build()
            .map_err(std::io::Error::other)?;
        let tallies = Arc::new(Tallies {
            counters: Counters::default(),
            latency: Mutex::new(Histogram::default()),
            window_start_ms: AtomicI64::new(i64::MAX),
            window_end_ms: AtomicI64::new(i64::MAX),
            pending: AtomicU64::new(0),
        });
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let counting = Arc::clone(&tallies);
        std::thread::Builder::new()
            .name("ds-load-count".into())
            .spawn(move || {
                for job in queue {
                    account(&counting, &job.request, job.acked_ms, job.ok);
                    counting.pending.fetch_sub(1, Ordering::Relaxed);
                }
            })?;
        let shared = Arc::new(Shared {
            backend,
            client,
            tallies,
            jobs,
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Endpoint {
            shared,
            addr,
            accept_task,
        })
    }

    /// `http://127.0.0.1:PORT`: the sink's `url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_window_start(&self, ms: i64) {
        self.shared
            .tallies
            .window_start_ms
            .store(ms, Ordering::Relaxed);
    }

    pub fn set_window_end(&self, ms: i64) {
        self.shared
            .tallies
            .window_end_ms
            .store(ms, Ordering::Relaxed);
    }

    /// Waits (at most `timeout`) until every answered write has been counted; false if not.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        while self.shared.tallies.pending.load(Ordering::Relaxed) > 0 {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub fn counts(&self) -> Counts {
        let c = &self.shared.tallies.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            lines: l(&c.lines),
            deltas: l(&c.deltas),
            snapshots: l(&c.snapshots),
            gaps: l(&c.gaps),
            shutdown_gaps: l(&c.shutdown_gaps),
            invalid: l(&c.invalid),
            other: l(&c.other),
            writes: l(&c.writes),
            body_bytes: l(&c.body_bytes),
            failed_writes: l(&c.failed_writes),
        }
    }

    pub fn latency(&self) -> Histogram {
        crate::lock(&self.shared.tallies.latency).clone()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    crate::accept::serve_each(listener, "ds-load endpoint", |stream| serve(stream, Arc::clone(&shared))).await;
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let mut stream = BufReader::new(stream);
    loop {
        let (request, keep_alive) = match read_request(&mut stream).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => return eprintln!("ds-load endpoint: dropping connection: {e}"),
        };
        let is_write = request.method == "POST" && request.path_only().ends_with("/write");
        let response = match &shared.backend {
            Backend::Null => null_answer(&request),
            Backend::Proxy(base) => forward(&shared.client, base, &request).await,
        };
        let acked_ms = super::now_ms();
        if let Err(e) = write_response(stream.get_mut(), &response, keep_alive, false).await {
            return eprintln!("ds-load endpoint: cannot answer: {e}");
        }
        if is_write {
            let ok = (200..300).contains(&response.status);
            shared.tallies.pending.fetch_add(1, Ordering::Relaxed);
            if shared
                .jobs
                .send(Job {
                    request,
                    acked_ms,
                    ok,
                })
                .is_err()
            {
                shared.tallies.pending.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if !keep_alive {
            return;
        }
    }
}

fn null_answer(request: &Request) -> Response {
    match request.path_only() {
        "/write" | "/api/v2/write" | "/ping" => {
            Response::empty(204).with_header("X-Influxdb-Version", "ds-load-null")
        }
        "/query" => Response::json(200, r#"{"results":[{"statement_id":0}]}"#),
        _ => Response::text(404, "ds-load null endpoint: not found"),
    }
}

/// Relays one request to InfluxDB; a failure to reach it is answered 502, which the sink
/// retries like any 5xx.
async fn forward(client: &reqwest::Client, base: &str, request: &Request) -> Response {
    let url = format!("{}{}", base.trim_end_matches('/'), request.path);
    let method =
        reqwest::Method::from_bytes(request.method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut req = client.request(method, url);
    for name in ["content-type", "content-encoding", "authorization"] {
        if let Some(v) = request.header(name) {
            req = req.header(name, v);
        }
    }
    match req.body(request.body.clone()).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let mut out = Response::empty(status);
            for name in [
                "content-type",
                "retry-after",
                "x-influxdb-version",
                "x-influxdb-error",
            ] {
                if let Some(v) = resp.headers().get(name).and_then(|v| v.to_str().ok()) {
                    out = out.with_header(name, v);
                }
            }
            out.body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            out
        }
        Err(e) => Response::text(502, format!("ds-load proxy: InfluxDB unreachable: {e}")),
    }
}

/// Counts the lines of one acknowledged write and records one latency sample per frame.
fn account(shared: &Tallies, request: &Request, acked_ms: i64, ok: bool) {
    let c = &shared.counters;
    c.writes.fetch_add(1, Ordering::Relaxed);
    c.body_bytes
        .fetch_add(request.body.len() as u64, Ordering::Relaxed);
    if !ok {
        c.failed_writes.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let body = if request.is_gzip() {
        let mut out = Vec::with_capacity(request.body.len() * 6);
        match flate2::read::MultiGzDecoder::new(request.body.as_slice()).read_to_end(&mut out) {
            Ok(_) => out,
            Err(e) => {
                eprintln!("ds-load endpoint: corrupt gzip body: {e}");
                c.failed_writes.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    } else {
        request.body.clone()
    };
    let start = shared.window_start_ms.load(Ordering::Relaxed);
    let end = shared.window_end_ms.load(Ordering::Relaxed);
    let mut tally = Tally::default();
    let mut samples = Vec::new();
    let mut last_frame: Option<(&[u8], i64)> = None;
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        tally.lines += 1;
        if line.starts_with(b"book_delta,") {
            tally.deltas += 1;
            if let (Some(symbol), Some(event_ms)) = (tag(line, b",symbol="), event_ts(line)) {
                if last_frame != Some((symbol, event_ms)) {
                    last_frame = Some((symbol, event_ms));
                    if (start..=end).contains(&event_ms) {
                        samples.push(acked_ms - event_ms);
                    }
                }
            }
        } else if line.starts_with(b"book_snapshot,") {
            tally.snapshots += 1;
        } else if line.starts_with(b"book_gap,") {
            if find(line, b"reason=\"shutdown\"").is_some() {
                tally.shutdown_gaps += 1;
            } else {
                tally.gaps += 1;
            }
        } else if line.starts_with(b"invalid_frame,") {
            tally.invalid += 1;
        } else {
            tally.other += 1;
        }
    }
    c.lines.fetch_add(tally.lines, Ordering::Relaxed);
    c.deltas.fetch_add(tally.deltas, Ordering::Relaxed);
    c.snapshots.fetch_add(tally.snapshots, Ordering::Relaxed);
    c.gaps.fetch_add(tally.gaps, Ordering::Relaxed);
    c.shutdown_gaps
        .fetch_add(tally.shutdown_gaps, Ordering::Relaxed);
    c.invalid.fetch_add(tally.invalid, Ordering::Relaxed);
    c.other.fetch_add(tally.other, Ordering::Relaxed);
    if !samples.is_empty() {
        let mut h = crate::lock(&shared.latency);
        for s in samples {
            h.record(s);
        }
    }
}

#[derive(Default)]
struct Tally {
    lines: u64,
    deltas: u64,
    snapshots: u64,
    gaps: u64,
    shutdown_gaps: u64,
    invalid: u64,
    other: u64,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of tag `key` (`,symbol=`) in the series key (before the first unescaped space).
fn tag<'a>(line: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let series_end = line.iter().position(|&b| b == b' ')?;
    let series = &line[..series_end];
    let at = find(series, key)? + key.len();
    let rest = &series[at..];
    let end = rest.iter().position(|&b| b == b',').unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The `event_ts=<ms>i` field.
fn event_ts(line: &[u8]) -> Option<i64> {
    let at = find(line, b"event_ts=")? + b"event_ts=".len();
    let digits = &line[at..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_symbol_and_event_time() {
        let line = b"book_delta,exchange=binance,market=spot,side=bid,symbol=BTCUSDT price=58001.03000000,qty=1.6,first_id=10i,last_id=12i,event_ts=1617566591307i 1000";
        assert_eq!(tag(line, b",symbol="), Some(&b"BTCUSDT"[..]));
        assert_eq!(event_ts(line), Some(1_617_566_591_307));
        assert_eq!(event_ts(b"book_gap,symbol=X reason=\"x\" 1"), None);
    }
}
