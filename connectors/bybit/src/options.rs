//! Options of the Bybit connectors, as written in a `[[feed]]` of exchanges.toml.
//!
//! Both connectors share the connection options ([`SessionOptions`]); `bybit_orderbook` adds
//! `depth`. Every problem is reported at once, naming the key (contract 7).

use std::time::Duration;

use serde::Deserialize;

use ds_api::{ConfigError, FeedSpec, Symbols};

/// Bybit's public mainnet websocket host; `/v5/public/{category}` is appended.
pub const DEFAULT_WS_URL: &str = "wss://stream.bybit.com";
pub const DEFAULT_REST_URL: &str = "https://api.bybit.com";
/// Bybit recommends a client ping every 20 s; without ping or data it cuts a connection
/// after some minutes (protocols.md §2).
pub const DEFAULT_PING_INTERVAL_MS: u64 = 20_000;
/// A pong normally comes back in milliseconds; half the ping interval leaves room for a
/// congested link without keeping a dead socket for long.
pub const DEFAULT_PONG_TIMEOUT_MS: u64 = 10_000;
/// Time for Bybit to answer every subscribe request of a connection.
pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 10_000;
/// No frame at all for this long: the connection is dead. Pongs arrive every ping interval,
/// so a healthy connection is never this quiet.
pub const DEFAULT_STALE_AFTER_SECS: u64 = 60;
/// Topics (= symbols) per connection. A reconnect resubscribes, and so resyncs, every book on
/// the connection; 100 keeps that burst small while using few connections (Bybit allows
/// 500 new connections per 5 minutes per IP).
pub const DEFAULT_TOPICS_PER_CONNECTION: usize = 100;
/// Spot refuses more than 10 args in one subscribe request; linear has no such limit, but
/// smaller requests make a rejected topic cheaper to isolate.
pub const SPOT_MAX_ARGS_PER_REQUEST: usize = 10;
pub const DEFAULT_ARGS_PER_REQUEST: usize = SPOT_MAX_ARGS_PER_REQUEST;
/// Bybit: the args of one public connection must stay within 21,000 characters in total.
pub const MAX_ARGS_CHARS_PER_CONNECTION: usize = 21_000;
/// The order book depths Bybit publishes for spot and linear.
pub const DEPTHS: [u32; 4] = [1, 50, 200, 1000];

/// Which Bybit v5 public market: spot and linear are separate sockets with separate books
/// (`BTCUSDT` exists on both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Spot,
    Linear,
}

impl Category {
    /// The path segment, the REST `category` value and the stored `market` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Spot => "spot",
            Category::Linear => "linear",
        }
    }

    /// Most args one subscribe request may carry.
    pub fn max_args_per_request(self) -> usize {
        match self {
            Category::Spot => SPOT_MAX_ARGS_PER_REQUEST,
            // No documented limit; the 21,000-character budget bounds it anyway.
            Category::Linear => 1_000,
        }
    }
}

/// `connector = "bybit_orderbook"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct OrderbookOptions {
    /// `"spot"` or `"linear"`; required (the two books of a symbol differ).
    pub category: Option<Category>,
    /// 1, 50, 200 or 1000 levels: `orderbook.{depth}.{symbol}`.
    pub depth: u32,
    pub ws_url: String,
    pub rest_url: String,
    pub topics_per_connection: usize,
    pub args_per_request: usize,
    pub ping_interval_ms: u64,
    pub pong_timeout_ms: u64,
    pub ack_timeout_ms: u64,
    pub stale_after_secs: u64,
}

impl Default for OrderbookOptions {
    fn default() -> Self {
        OrderbookOptions {
            category: None,
            depth: 200,
            ws_url: DEFAULT_WS_URL.into(),
            rest_url: DEFAULT_REST_URL.into(),
            topics_per_connection: DEFAULT_TOPICS_PER_CONNECTION,
            args_per_request: DEFAULT_ARGS_PER_REQUEST,
            ping_interval_ms: DEFAULT_PING_INTERVAL_MS,
            pong_timeout_ms: DEFAULT_PONG_TIMEOUT_MS,
            ack_timeout_ms: DEFAULT_ACK_TIMEOUT_MS,
            stale_after_secs: DEFAULT_STALE_AFTER_SECS,
        }
    }
}

/// `connector = "bybit_trades"`: the same connection options, no depth.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TradeOptions {
    pub category: Option<Category>,
    pub ws_url: String,
    pub rest_url: String,
    pub topics_per_connection: usize,
    pub args_per_request: usize,
    pub ping_interval_ms: u64,
    pub pong_timeout_ms: u64,
    pub ack_timeout_ms: u64,
    pub stale_after_secs: u64,
}

impl Default for TradeOptions {
    fn default() -> Self {
        let o = OrderbookOptions::default();
        TradeOptions {
            category: None,
            ws_url: o.ws_url,
            rest_url: o.rest_url,
            topics_per_connection: o.topics_per_connection,
            args_per_request: o.args_per_request,
            ping_interval_ms: o.ping_interval_ms,
            pong_timeout_ms: o.pong_timeout_ms,
            ack_timeout_ms: o.ack_timeout_ms,
            stale_after_secs: o.stale_after_secs,
        }
    }
}

/// What every Bybit connection needs, validated.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub category: Category,
    pub ws_url: String,
    pub rest_url: String,
    pub topics_per_connection: usize,
    pub args_per_request: usize,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub ack_timeout: Duration,
    pub stale_after: Duration,
}

impl SessionOptions {
    /// `wss://stream.bybit.com/v5/public/spot`.
    pub fn stream_url(&self) -> String {
        format!("{}/v5/public/{}", self.ws_url.trim_end_matches('/'), self.category.as_str())
    }
}

/// A validated `bybit_orderbook` feed.
#[derive(Debug, Clone)]
pub struct ValidOrderbook {
    pub session: SessionOptions,
    pub depth: u32,
}

pub fn parse_orderbook(spec: &FeedSpec) -> Result<ValidOrderbook, Vec<ConfigError>> {
    let scope = spec.scope();
    let o: OrderbookOptions = ds_api::parse_options(&scope, &spec.options)?;
    let mut errors = Vec::new();
    if !DEPTHS.contains(&o.depth) {
        errors.push(ConfigError::new(&scope, "depth", format!("must be one of 1, 50, 200, 1000 (Bybit's order book depths), got {}", o.depth)));
    }
    let common = Common {
        category: o.category,
        ws_url: o.ws_url,
        rest_url: o.rest_url,
        topics_per_connection: o.topics_per_connection,
        args_per_request: o.args_per_request,
        ping_interval_ms: o.ping_interval_ms,
        pong_timeout_ms: o.pong_timeout_ms,
        ack_timeout_ms: o.ack_timeout_ms,
        stale_after_secs: o.stale_after_secs,
    };
    let session = common.validate(spec, &mut errors);
    match session {
        Some(session) if errors.is_empty() => Ok(ValidOrderbook { session, depth: o.depth }),
        _ => Err(errors),
    }
}

pub fn parse_trades(spec: &FeedSpec) -> Result<SessionOptions, Vec<ConfigError>> {
    let scope = spec.scope();
    let o: TradeOptions = ds_api::parse_options(&scope, &spec.options)?;
    let mut errors = Vec::new();
    let common = Common {
        category: o.category,
        ws_url: o.ws_url,
        rest_url: o.rest_url,
        topics_per_connection: o.topics_per_connection,
        args_per_request: o.args_per_request,
        ping_interval_ms: o.ping_interval_ms,
        pong_timeout_ms: o.pong_timeout_ms,
        ack_timeout_ms: o.ack_timeout_ms,
        stale_after_secs: o.stale_after_secs,
    };
    match common.validate(spec, &mut errors) {
        Some(session) if errors.is_empty() => Ok(session),
        _ => Err(errors),
    }
}

/// The shared keys, before validation.
struct Common {
    category: Option<Category>,
    ws_url: String,
    rest_url: String,
    topics_per_connection: usize,
    args_per_request: usize,
    ping_interval_ms: u64,
    pong_timeout_ms: u64,
    ack_timeout_ms: u64,
    stale_after_secs: u64,
}

/// Shortest timer accepted: below this a loaded machine would see false timeouts.
const MIN_TIMER_MS: u64 = 100;

impl Common {
    fn validate(self, spec: &FeedSpec, errors: &mut Vec<ConfigError>) -> Option<SessionOptions> {
        let scope = spec.scope();
        check_url(&scope, "ws_url", &self.ws_url, &["ws", "wss"], errors);
        check_url(&scope, "rest_url", &self.rest_url, &["http", "https"], errors);
        if self.category.is_none() {
            errors.push(ConfigError::new(&scope, "category", "missing: \"spot\" or \"linear\""));
        }
        if self.topics_per_connection == 0 {
            errors.push(ConfigError::new(&scope, "topics_per_connection", "must be at least 1"));
        }
        let max_args = self.category.map_or(SPOT_MAX_ARGS_PER_REQUEST, Category::max_args_per_request);
        if !(1..=max_args).contains(&self.args_per_request) {
            let why = if self.category == Some(Category::Spot) { " (Bybit spot refuses more than 10 args per subscribe)" } else { "" };
            errors.push(ConfigError::new(&scope, "args_per_request", format!("must be between 1 and {max_args}{why}, got {}", self.args_per_request)));
        }
        if !(MIN_TIMER_MS..=300_000).contains(&self.ping_interval_ms) {
            errors.push(ConfigError::new(&scope, "ping_interval_ms", "must be between 100 and 300000 (Bybit recommends 20000; it cuts idle connections after minutes)"));
        }
        for (key, v) in [("pong_timeout_ms", self.pong_timeout_ms), ("ack_timeout_ms", self.ack_timeout_ms)] {
            if v < MIN_TIMER_MS {
                errors.push(ConfigError::new(&scope, key, "must be at least 100"));
            }
        }
        if self.stale_after_secs.saturating_mul(1000) <= self.ping_interval_ms {
            errors.push(ConfigError::new(&scope, "stale_after_secs", format!("must exceed ping_interval_ms ({} ms): pongs are what keep a quiet connection alive", self.ping_interval_ms)));
        }
        check_symbols(spec, errors);
        Some(SessionOptions {
            category: self.category?,
            ws_url: self.ws_url,
            rest_url: self.rest_url,
            topics_per_connection: self.topics_per_connection,
            args_per_request: self.args_per_request,
            ping_interval: Duration::from_millis(self.ping_interval_ms),
            pong_timeout: Duration::from_millis(self.pong_timeout_ms),
            ack_timeout: Duration::from_millis(self.ack_timeout_ms),
            stale_after: Duration::from_secs(self.stale_after_secs),
        })
    }
}

fn check_url(scope: &str, key: &str, url: &str, schemes: &[&str], errors: &mut Vec<ConfigError>) {
    match reqwest::Url::parse(url) {
        Ok(u) if schemes.contains(&u.scheme()) && u.host_str().is_some() => {}
        Ok(u) => errors.push(ConfigError::new(scope, key, format!("scheme must be one of {schemes:?}, got {:?}", u.scheme()))),
        Err(e) => errors.push(ConfigError::new(scope, key, format!("not a URL: {e}"))),
    }
}

/// Bybit symbols are upper-case letters and digits, dated futures add `-` (`BTCUSDT-25DEC26`).
fn check_symbols(spec: &FeedSpec, errors: &mut Vec<ConfigError>) {
    if let Symbols::List(list) = &spec.symbols {
        if list.is_empty() {
            errors.push(ConfigError::new(spec.scope(), "symbols", "empty list (use \"all\" or name at least one symbol)"));
        }
        for s in list {
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                errors.push(ConfigError::new(spec.scope(), "symbols", format!("{s:?} is not a Bybit symbol (letters, digits and '-', e.g. \"BTCUSDT\")")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(symbols: Symbols, options: &str) -> FeedSpec {
        FeedSpec { name: "bb".into(), symbols, options: options.parse().unwrap() }
    }

    fn list(s: &[&str]) -> Symbols {
        Symbols::List(s.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn defaults_point_at_the_real_exchange() {
        let o = parse_orderbook(&spec(list(&["BTCUSDT"]), "category = 'linear'")).unwrap();
        assert_eq!(o.depth, 200);
        assert_eq!(o.session.stream_url(), "wss://stream.bybit.com/v5/public/linear");
        assert_eq!(o.session.rest_url, DEFAULT_REST_URL);
        assert_eq!(o.session.ping_interval, Duration::from_secs(20));
        let t = parse_trades(&spec(Symbols::All, "category = 'spot'\nws_url = 'ws://127.0.0.1:9/'")).unwrap();
        assert_eq!(t.stream_url(), "ws://127.0.0.1:9/v5/public/spot");
    }

    struct Case {
        options: &'static str,
        symbols: Symbols,
        /// `key: message fragment`, each must match one error.
        expect: &'static [&'static str],
    }

    #[test]
    fn every_error_is_named() {
        let cases = [
            // 0: nothing wrong
            Case { options: "category = 'spot'\ndepth = 1000", symbols: list(&["BTCUSDT", "BTCUSDT-25DEC26"]), expect: &[] },
            // 1: category missing, bad depth, bad URL scheme, bad symbol: all at once
            Case {
                options: "depth = 25\nws_url = 'https://x'",
                symbols: list(&["BTC/USDT"]),
                expect: &["category: missing", "depth: must be one of 1, 50, 200, 1000", "ws_url: scheme must be", "symbols: \"BTC/USDT\""],
            },
            // 2: spot args limit, timers, stale vs ping
            Case {
                options: "category = 'spot'\nargs_per_request = 11\npong_timeout_ms = 5\nack_timeout_ms = 0\nping_interval_ms = 90000\nstale_after_secs = 60",
                symbols: Symbols::All,
                expect: &["args_per_request: must be between 1 and 10 (Bybit spot", "pong_timeout_ms: must be at least 100", "ack_timeout_ms: must be at least 100", "stale_after_secs: must exceed"],
            },
            // 3: unknown category value and unknown key
            Case { options: "category = 'inverse'\ndeph = 50", symbols: Symbols::All, expect: &["category: unknown variant `inverse`", "deph: unknown key"] },
            // 4: linear takes large requests; empty symbol list refused
            Case { options: "category = 'linear'\nargs_per_request = 200\ntopics_per_connection = 0", symbols: list(&[]), expect: &["topics_per_connection: must be at least 1", "symbols: empty list"] },
        ];
        for (i, c) in cases.iter().enumerate() {
            let got: Vec<String> = match parse_orderbook(&spec(c.symbols.clone(), c.options)) {
                Ok(_) => vec![],
                Err(errs) => errs.iter().map(|e| format!("{}: {}", e.key, e.message)).collect(),
            };
            assert_eq!(got.len(), c.expect.len(), "case {i}: {got:#?}");
            for want in c.expect {
                assert_eq!(got.iter().filter(|g| g.contains(want)).count(), 1, "case {i}: {want:?} in {got:#?}");
            }
        }
    }

    #[test]
    fn trades_refuse_depth() {
        let errs = parse_trades(&spec(Symbols::All, "category = 'linear'\ndepth = 50")).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].to_string(), "feed \"bb\": key `depth`: unknown key");
    }
}
