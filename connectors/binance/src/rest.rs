//! Binance REST: depth snapshots and the symbol list, paced by a request-weight budget so a
//! mass resync queues instead of earning a 429/418 ban.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex as StdMutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use ds_api::http::{self, HttpError};
use ds_api::traits::SymbolHandler;
use ds_api::{async_trait, ParseError, Shutdown, SymbolError};

use crate::options::depth_weight;
use crate::parser::{parse_snapshot, DepthSnapshot};
use crate::wire::ExchangeInfoWire;

/// A per-minute request-weight allowance. Binance counts weight per IP, across every
/// connection and feed, so one budget is shared by every feed of the process that talks to the
/// same REST host ([`WeightBudget::for_host`]): a mass resync after a disconnect of several
/// feeds queues its snapshot requests instead of earning a 429 and then a 418 IP ban.
///
/// A 429/418 answer with `Retry-After` pauses the whole budget ([`WeightBudget::pause_for`]):
/// Binance bans the IP, not the request, so no feed of that host sends anything until the
/// pause is over.
#[derive(Debug)]
pub struct WeightBudget {
    per_minute: AtomicU32,
    /// Start of the current minute and the weight spent in it.
    window: Mutex<(Instant, u32)>,
    /// No request before this instant (a `Retry-After`). A plain mutex, never held across an
    /// await, so the retry loop can set it without waiting.
    paused_until: StdMutex<Option<Instant>>,
    /// Snapshot requests in flight to this host at most ([`MAX_SNAPSHOTS_IN_FLIGHT`]).
    in_flight: tokio::sync::Semaphore,
}

/// Snapshot requests in flight to one REST host at most. At Binance's weight limit this never
/// binds (about one 1,000-level snapshot a second); it bounds the start-up burst where the
/// budget allows many at once (a raised `rest_weight_per_minute`, small `snapshot_limit`s, a
/// mock): 3,500 books asking together held 3,500 bodies and then 3,500 snapshot packets in
/// memory at once, which set the process's peak RSS in `ds-load` (issue 8). Queued requests
/// cost a task each, no body.
pub const MAX_SNAPSHOTS_IN_FLIGHT: usize = 16;

/// The process-wide budgets, by REST host (see [`host_key`]). Weak, so a budget lives as long
/// as a feed uses it.
static BUDGETS: OnceLock<StdMutex<HashMap<String, Weak<WeightBudget>>>> = OnceLock::new();

/// `scheme://host:port` of a REST base URL, the unit Binance limits (per IP, which one host
/// name stands for); the URL itself when it does not parse (config validation refuses those).
pub fn host_key(rest_url: &str) -> String {
    match reqwest::Url::parse(rest_url) {
        Ok(u) => format!("{}://{}:{}", u.scheme(), u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0)),
        Err(_) => rest_url.to_string(),
    }
}

impl WeightBudget {
    /// A budget of its own (not shared); see [`WeightBudget::for_host`].
    pub fn new(per_minute: u32) -> Self {
        WeightBudget {
            per_minute: AtomicU32::new(per_minute),
            window: Mutex::new((Instant::now(), 0)),
            paused_until: StdMutex::new(None),
            in_flight: tokio::sync::Semaphore::new(MAX_SNAPSHOTS_IN_FLIGHT),
        }
    }

    /// The budget shared by every feed of this process that uses the REST host of `rest_url`
    /// (`binance_spot_depth` and `binance_spot_snapshot` feeds alike). Each feed brings its own
    /// `rest_weight_per_minute`; the smallest one configured for a host wins, so no feed can
    /// raise the allowance another feed was given.
    pub fn for_host(rest_url: &str, per_minute: u32) -> Arc<WeightBudget> {
        let key = host_key(rest_url);
        let mut budgets = BUDGETS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        budgets.retain(|_, b| b.strong_count() > 0);
        if let Some(b) = budgets.get(&key).and_then(Weak::upgrade) {
            b.per_minute.fetch_min(per_minute, Ordering::Relaxed);
            return b;
        }
        let b = Arc::new(WeightBudget::new(per_minute));
        budgets.insert(key, Arc::downgrade(&b));
        b
    }

    /// The weight a minute this budget allows now.
    pub fn per_minute(&self) -> u32 {
        self.per_minute.load(Ordering::Relaxed)
    }

    /// Waits until no pause is in force and `weight` fits in the current minute, then spends
    /// it.
    pub async fn acquire(&self, weight: u32) {
        loop {
            let paused = self.paused_until().filter(|&until| until > Instant::now());
            if let Some(until) = paused {
                tokio::time::sleep_until(until).await;
                continue;
            }
            let wait = {
                let mut w = self.window.lock().await;
                let now = Instant::now();
                if now.duration_since(w.0) >= Duration::from_secs(60) {
                    *w = (now, 0);
                }
                // A request heavier than the whole allowance still goes, alone in a minute
                // (config validation makes sure one snapshot fits, but the shared allowance may
                // have been lowered by another feed since).
                if w.1 + weight <= self.per_minute() || w.1 == 0 {
                    w.1 += weight;
                    return;
                }
                (w.0 + Duration::from_secs(60)).saturating_duration_since(now)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The host answered 429/418 with `Retry-After`: nothing goes out before `wait` has
    /// passed, from any feed sharing this budget (a shorter pause never shortens a longer one).
    pub fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut p = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        *p = Some(p.map_or(until, |old| old.max(until)));
    }

    fn paused_until(&self) -> Option<Instant> {
        *self.paused_until.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One request's view of a budget for [`http::get_text_paced`]: every attempt, retries
/// included, spends `weight`; a `Retry-After` pauses the whole budget.
struct Paced<'a> {
    budget: &'a WeightBudget,
    weight: u32,
}

#[async_trait]
impl http::Pacer for Paced<'_> {
    async fn before_attempt(&self) {
        self.budget.acquire(self.weight).await;
    }

    fn throttled(&self, retry_after: Duration) {
        tracing::warn!(retry_after_s = retry_after.as_secs(), "Binance REST asked to back off; pausing every request to this host");
        self.budget.pause_for(retry_after);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Http(HttpError),
    #[error("snapshot body: {0}")]
    Parse(ParseError),
}

/// The REST side of a feed.
#[derive(Debug, Clone)]
pub struct BinanceRest {
    base: String,
    client: reqwest::Client,
    budget: Arc<WeightBudget>,
    limit: u32,
}

impl BinanceRest {
    /// REST access to `base`, spending from the weight budget shared by every feed that uses
    /// the same host ([`WeightBudget::for_host`]).
    pub fn new(base: &str, limit: u32, weight_per_minute: u32) -> Self {
        BinanceRest {
            base: base.trim_end_matches('/').to_string(),
            client: http::client(),
            budget: WeightBudget::for_host(base, weight_per_minute),
            limit,
        }
    }

    /// `GET /api/v3/depth?symbol=..&limit=..`, within the weight budget (every attempt,
    /// retries included).
    pub async fn depth_snapshot(&self, symbol: &str, shutdown: &Shutdown) -> Result<DepthSnapshot, SnapshotError> {
        let (_url, body) = self.depth_snapshot_body(symbol, shutdown).await?;
        parse_snapshot(&body).map_err(SnapshotError::Parse)
    }

    /// [`Self::depth_snapshot`] unparsed: the URL asked and the body as received, which a raw
    /// capture records so a replay resyncs exactly like the live run.
    pub async fn depth_snapshot_body(&self, symbol: &str, shutdown: &Shutdown) -> Result<(String, String), SnapshotError> {
        let url = format!("{}/api/v3/depth?symbol={}&limit={}", self.base, symbol, self.limit);
        // Never closed, so the permit always comes; held until the body is read.
        let _permit = self.budget.in_flight.acquire().await.ok();
        let pacer = Paced { budget: &self.budget, weight: depth_weight(self.limit) };
        let body = http::get_text_paced(&self.client, &url, shutdown, &pacer).await.map_err(SnapshotError::Http)?;
        Ok((url, body))
    }
}

/// Resolves `symbols = "all"`: every symbol with status TRADING in `/api/v3/exchangeInfo`.
pub struct ExchangeInfoSymbols {
    pub rest: BinanceRest,
    pub shutdown: Shutdown,
}

#[async_trait]
impl SymbolHandler for ExchangeInfoSymbols {
    async fn get_symbols(&self) -> Result<Vec<String>, SymbolError> {
        // exchangeInfo costs weight 20.
        let url = format!("{}/api/v3/exchangeInfo", self.rest.base);
        let pacer = Paced { budget: &self.rest.budget, weight: 20 };
        let body = http::get_text_paced(&self.rest.client, &url, &self.shutdown, &pacer)
            .await
            .map_err(|e| SymbolError::Request { url: url.clone(), reason: e.to_string() })?;
        trading_symbols(&body).map_err(|reason| SymbolError::Format { url: url.clone(), reason }).and_then(|v| {
            if v.is_empty() {
                Err(SymbolError::Empty(url))
            } else {
                Ok(v)
            }
        })
    }
}

/// Symbols with `"status":"TRADING"` from an exchangeInfo body.
pub fn trading_symbols(body: &str) -> Result<Vec<String>, String> {
    let info: ExchangeInfoWire = serde_json::from_str(body).map_err(|e| e.to_string())?;
    Ok(info.symbols.into_iter().filter(|s| s.status == "TRADING").map(|s| s.symbol).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn budget_waits_for_the_next_minute() {
        let b = WeightBudget::new(100);
        let t0 = Instant::now();
        b.acquire(50).await;
        b.acquire(50).await;
        assert!(t0.elapsed() < Duration::from_secs(1));
        b.acquire(50).await;
        assert!(t0.elapsed() >= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn feeds_of_one_host_share_one_budget_and_the_smallest_allowance_wins() {
        // Two feeds on one (made-up) host: depth (3000/min) and snapshot (100/min).
        let a = BinanceRest::new("http://budget-test.invalid:1234/", 1000, 3000);
        let b = BinanceRest::new("http://budget-test.invalid:1234", 1000, 100);
        assert!(Arc::ptr_eq(&a.budget, &b.budget), "one budget per host");
        assert_eq!(a.budget.per_minute(), 100, "the smallest configured allowance wins");
        // Another host (or port) has its own budget.
        let c = BinanceRest::new("http://budget-test.invalid:1235", 1000, 3000);
        assert!(!Arc::ptr_eq(&a.budget, &c.budget));
        assert_eq!(c.budget.per_minute(), 3000);

        // Spending: two snapshots (weight 50 each) fill the shared minute, whichever feed
        // asks; the third waits for the next minute.
        let t0 = Instant::now();
        a.budget.acquire(50).await;
        b.budget.acquire(50).await;
        assert!(t0.elapsed() < Duration::from_secs(1));
        a.budget.acquire(50).await;
        assert!(t0.elapsed() >= Duration::from_secs(60), "the third snapshot waited for the next minute");
        c.budget.acquire(3000).await;
        assert!(t0.elapsed() < Duration::from_secs(61), "another host is not held back");

        // Once no feed uses a host, its budget goes; a new feed starts afresh.
        drop((a, b));
        let d = BinanceRest::new("http://budget-test.invalid:1234", 1000, 3000);
        assert_eq!(d.budget.per_minute(), 3000);
        assert_eq!(host_key("https://api.binance.com"), "https://api.binance.com:443");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_pauses_every_request_of_the_budget() {
        let b = WeightBudget::new(3000);
        let t0 = Instant::now();
        b.pause_for(Duration::from_secs(2));
        b.pause_for(Duration::from_secs(1)); // a shorter pause does not shorten it
        b.acquire(50).await;
        assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
        let t1 = Instant::now();
        b.acquire(50).await;
        assert!(t1.elapsed() < Duration::from_millis(10), "pause over");
    }

    /// A REST server on 127.0.0.1 that holds each snapshot request 50 ms and records how many
    /// it held at once: 60 books asking together never have more than
    /// [`MAX_SNAPSHOTS_IN_FLIGHT`] requests open, and every one is answered.
    #[tokio::test]
    async fn snapshot_requests_in_flight_are_capped_per_host() {
        use std::sync::atomic::AtomicUsize;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (now2, peak2) = (now.clone(), peak.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (now, peak) = (now2.clone(), peak2.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        let open = now.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(open, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        now.fetch_sub(1, Ordering::SeqCst);
                        let body = r#"{"lastUpdateId":7,"bids":[["1.0","2.0"]],"asks":[]}"#;
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
                        if conn.write_all(format!("{head}{body}").as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let rest = BinanceRest::new(&format!("http://{addr}"), 1000, 1_000_000);
        let (_trigger, shutdown) = ds_api::shutdown_pair();
        let asks = (0..60).map(|i| {
            let (rest, shutdown) = (rest.clone(), shutdown.clone());
            tokio::spawn(async move { rest.depth_snapshot(&format!("S{i}"), &shutdown).await })
        });
        for ask in asks.collect::<Vec<_>>() {
            assert_eq!(ask.await.unwrap().unwrap().last_update_id, 7);
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= MAX_SNAPSHOTS_IN_FLIGHT, "{peak} requests in flight at once");
        assert!(peak >= MAX_SNAPSHOTS_IN_FLIGHT / 2, "requests still go in parallel: peak {peak}");
    }

    #[test]
    fn trading_symbols_filters_status() {
        let body = r#"{"timezone":"UTC","symbols":[{"symbol":"ETHBTC","status":"TRADING","x":1},{"symbol":"OLD","status":"BREAK"}]}"#;
        assert_eq!(trading_symbols(body).unwrap(), ["ETHBTC"]);
    }
}
