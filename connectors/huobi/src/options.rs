//! Options of the Huobi connectors, as written in a `[[feed]]` of exchanges.toml.

use serde::Deserialize;

use ds_api::{ConfigError, FeedSpec, Symbols};

use crate::gzip::DEFAULT_MAX_FRAME_BYTES;

/// Huobi's market-data host; the connector appends `/feed` (MBP) or `/ws` (everything else).
/// `wss://api-aws.huobi.pro` is the documented alternative.
pub const DEFAULT_WS_URL: &str = "wss://api.huobi.pro";
pub const DEFAULT_REST_URL: &str = "https://api.huobi.pro";
/// Huobi states no per-connection topic limit. 50 keeps one connection's initial sync short:
/// `req`s go out 150 ms apart, so the last book of a connection is synced after about 8 s.
pub const DEFAULT_SYMBOLS_PER_CONNECTION: usize = 50;
/// Huobi's documented minimum gap between two `req` on one connection.
pub const MIN_REQ_INTERVAL_MS: u64 = 100;
/// The gap we keep: Huobi measures on arrival, and two `req`s sent 100 ms apart can arrive
/// closer than that after any hiccup on the way; half as much again keeps clear of the limit
/// (a refused `req` is asked again, but costs a round trip).
pub const DEFAULT_REQ_INTERVAL_MS: u64 = 150;
/// Huobi pings every 5 s; four missed pings is a dead connection, not a slow one.
pub const DEFAULT_PING_TIMEOUT_MS: u64 = 20_000;
/// Subscriptions are acknowledged within milliseconds; ten seconds means they never will be.
pub const DEFAULT_ACK_TIMEOUT_SECS: u64 = 10;
/// A `req` reply that has not come after this long is asked for again.
pub const DEFAULT_REQ_TIMEOUT_SECS: u64 = 10;
/// Incrementals held per symbol while its snapshot is on its way: mbp.150 pushes every
/// 100 ms, so this is over 15 minutes of waiting, far past any sane reply time.
pub const DEFAULT_MAX_HELD_UPDATES: usize = 10_000;

/// Periodic full snapshots next to the MBP stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PeriodicSnapshots {
    /// Only the `req` snapshots taken to (re)sync a book.
    #[serde(rename = "none")]
    None,
    /// `market.$symbol.mbp.refresh.$refresh_levels` (top 5/10/20, about every 100 ms).
    #[serde(rename = "mbp.refresh")]
    MbpRefresh,
    /// `market.$symbol.depth.step0` (150 levels, about once a second).
    #[serde(rename = "depth.step0")]
    DepthStep0,
}

/// `connector = "huobi_mbp"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MbpOptions {
    /// Host only (`wss://api.huobi.pro`); `/feed` and `/ws` are appended.
    pub ws_url: String,
    pub rest_url: String,
    /// `mbp.$levels`: 5, 20, 150 or 400.
    pub levels: u16,
    pub periodic_snapshots: PeriodicSnapshots,
    /// Levels of `mbp.refresh` (5, 10 or 20); only with `periodic_snapshots = "mbp.refresh"`.
    pub refresh_levels: Option<u16>,
    pub symbols_per_connection: usize,
    /// Gap between two `req` on one connection, at least 100 (Huobi's limit); 150 by default.
    pub req_interval_ms: u64,
    pub req_timeout_secs: u64,
    pub ack_timeout_secs: u64,
    /// No frame for this long (Huobi pings every 5 s): the connection is dead, reconnect.
    pub ping_timeout_ms: u64,
    /// Largest inflated frame accepted; a bigger one is refused as invalid (gzip bomb guard).
    pub max_frame_bytes: usize,
    pub max_held_updates: usize,
}

impl Default for MbpOptions {
    fn default() -> Self {
        MbpOptions {
            ws_url: DEFAULT_WS_URL.into(),
            rest_url: DEFAULT_REST_URL.into(),
            levels: 150,
            periodic_snapshots: PeriodicSnapshots::None,
            refresh_levels: None,
            symbols_per_connection: DEFAULT_SYMBOLS_PER_CONNECTION,
            req_interval_ms: DEFAULT_REQ_INTERVAL_MS,
            req_timeout_secs: DEFAULT_REQ_TIMEOUT_SECS,
            ack_timeout_secs: DEFAULT_ACK_TIMEOUT_SECS,
            ping_timeout_ms: DEFAULT_PING_TIMEOUT_MS,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_held_updates: DEFAULT_MAX_HELD_UPDATES,
        }
    }
}

impl MbpOptions {
    /// The `mbp.refresh` level count in effect.
    pub fn refresh_levels(&self) -> u16 {
        self.refresh_levels.unwrap_or(20)
    }
}

/// `connector = "huobi_trades"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TradeOptions {
    pub ws_url: String,
    pub rest_url: String,
    pub symbols_per_connection: usize,
    pub ack_timeout_secs: u64,
    pub ping_timeout_ms: u64,
    pub max_frame_bytes: usize,
}

impl Default for TradeOptions {
    fn default() -> Self {
        TradeOptions {
            ws_url: DEFAULT_WS_URL.into(),
            rest_url: DEFAULT_REST_URL.into(),
            symbols_per_connection: DEFAULT_SYMBOLS_PER_CONNECTION,
            ack_timeout_secs: DEFAULT_ACK_TIMEOUT_SECS,
            ping_timeout_ms: DEFAULT_PING_TIMEOUT_MS,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

pub fn parse_mbp(spec: &FeedSpec) -> Result<MbpOptions, Vec<ConfigError>> {
    let scope = spec.scope();
    let (o, mut errors) = parse_all::<MbpOptions>(&scope, &spec.options);
    check_common(
        spec,
        &o.ws_url,
        &o.rest_url,
        o.symbols_per_connection,
        o.ack_timeout_secs,
        o.ping_timeout_ms,
        o.max_frame_bytes,
        &mut errors,
    );
    if ![5, 20, 150, 400].contains(&o.levels) {
        errors.push(ConfigError::new(
            &scope,
            "levels",
            format!("must be 5, 20, 150 or 400 (mbp.$levels), got {}", o.levels),
        ));
    }
    match (o.periodic_snapshots, o.refresh_levels) {
        (PeriodicSnapshots::MbpRefresh, Some(n)) if ![5, 10, 20].contains(&n) => {
            errors.push(ConfigError::new(
                &scope,
                "refresh_levels",
                format!("must be 5, 10 or 20 (mbp.refresh.$levels), got {n}"),
            ));
        }
        (PeriodicSnapshots::MbpRefresh, _) | (_, None) => {}
        (_, Some(_)) => errors.push(ConfigError::new(
            &scope,
            "refresh_levels",
            "only used with periodic_snapshots = \"mbp.refresh\"",
        )),
    }
    if o.req_interval_ms < MIN_REQ_INTERVAL_MS {
        errors.push(ConfigError::new(&scope, "req_interval_ms", format!("must be at least {MIN_REQ_INTERVAL_MS} (Huobi allows one req per 100 ms per connection)")));
    }
    if o.req_timeout_secs == 0 {
        errors.push(ConfigError::new(
            &scope,
            "req_timeout_secs",
            "must be at least 1",
        ));
    }
    if o.max_held_updates == 0 {
        errors.push(ConfigError::new(
            &scope,
            "max_held_updates",
            "must be at least 1",
        ));
    }
    if errors.is_empty() {
        Ok(o)
    } else {
        Err(errors)
    }
}

pub fn parse_trades(spec: &FeedSpec) -> Result<TradeOptions, Vec<ConfigError>> {
    let scope = spec.scope();
    let (o, mut errors) = parse_all::<TradeOptions>(&scope, &spec.options);
    check_common(
        spec,
        &o.ws_url,
        &o.rest_url,
        o.symbols_per_connection,
        o.ack_timeout_secs,
        o.ping_timeout_ms,
        o.max_frame_bytes,
        &mut errors,
    );
    if errors.is_empty() {
        Ok(o)
    } else {
        Err(errors)
    }
}

/// The options, even when some keys are bad (those read as defaults and are already
/// reported), so the value checks below run too and every problem is listed in one go.
fn parse_all<T: serde::de::DeserializeOwned + Default>(
    scope: &str,
    options: &toml::Table,
) -> (T, Vec<ConfigError>) {
    let (o, errors) = ds_api::config::parse_options_lenient::<T>(scope, options);
    (o.unwrap_or_default(), errors)
}

#[allow(clippy::too_many_arguments)] // one call per connector, each argument a checked option
fn check_common(
    spec: &FeedSpec,
    ws_url: &str,
    rest_url: &str,
    per_connection: usize,
    ack_timeout_secs: u64,
    ping_timeout_ms: u64,
    max_frame_bytes: usize,
    errors: &mut Vec<ConfigError>,
) {
    let scope = spec.scope();
    match reqwest::Url::parse(ws_url) {
        Ok(u) if !["ws", "wss"].contains(&u.scheme()) || u.host_str().is_none() => {
            errors.push(ConfigError::new(&scope, "ws_url", format!("must be a ws:// or wss:// URL with a host, got {ws_url:?}")));
        }
        Ok(u) if u.path() != "/" && !u.path().is_empty() => errors.push(ConfigError::new(
            &scope,
            "ws_url",
            format!("give the host only (e.g. \"{DEFAULT_WS_URL}\"): the connector appends /feed and /ws itself, found path {:?}", u.path()),
        )),
        Ok(_) => {}
        Err(e) => errors.push(ConfigError::new(&scope, "ws_url", format!("not a URL: {e}"))),
    }
    match reqwest::Url::parse(rest_url) {
        Ok(u) if ["http", "https"].contains(&u.scheme()) && u.host_str().is_some() => {}
        Ok(_) => errors.push(ConfigError::new(
            &scope,
            "rest_url",
            format!("must be an http:// or https:// URL, got {rest_url:?}"),
        )),
        Err(e) => errors.push(ConfigError::new(
            &scope,
            "rest_url",
            format!("not a URL: {e}"),
        )),
    }
    if per_connection == 0 {
        errors.push(ConfigError::new(
            &scope,
            "symbols_per_connection",
            "must be at least 1",
        ));
    }
    if ack_timeout_secs == 0 {
        errors.push(ConfigError::new(
            &scope,
            "ack_timeout_secs",
            "must be at least 1",
        ));
    }
    if ping_timeout_ms < 1_000 {
        errors.push(ConfigError::new(
            &scope,
            "ping_timeout_ms",
            "must be at least 1000 (Huobi pings every 5 s; 20000 is the default)",
        ));
    }
    if !(16 * 1024..=256 * 1024 * 1024).contains(&max_frame_bytes) {
        errors.push(ConfigError::new(
            &scope,
            "max_frame_bytes",
            "must be between 16 KiB and 256 MiB (a 400-level req reply is about 40 KiB)",
        ));
    }
    if let Symbols::List(list) = &spec.symbols {
        if list.is_empty() {
            errors.push(ConfigError::new(
                &scope,
                "symbols",
                "empty list (use \"all\" or name at least one symbol)",
            ));
        }
        for s in list {
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric()) {
                errors.push(ConfigError::new(
                    &scope,
                    "symbols",
                    format!("{s:?} is not a Huobi symbol (letters and digits, e.g. \"btcusdt\")"),
                ));
            }
        }
    }
}

/// Huobi writes symbols in lower case in topics; the store keeps them upper case like every
/// other exchange's (`BTCUSDT`), so one query finds a pair on every exchange.
pub fn topic_symbol(s: &str) -> String {
    s.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(options: &str, symbols: Symbols) -> FeedSpec {
        FeedSpec {
            name: "h".into(),
            symbols,
            options: options.parse().unwrap(),
        }
    }

    fn keys(errs: &[ConfigError]) -> Vec<&str> {
        let mut k: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        k.sort();
        k
    }

    #[test]
    fn defaults_are_valid() {
        let o = parse_mbp(&spec(
            "",
            Symbols::List(vec!["btcusdt".into(), "ETHUSDT".into()]),
        ))
        .unwrap();
        assert_eq!(
            (
                o.ws_url.as_str(),
                o.levels,
                o.periodic_snapshots,
                o.req_interval_ms
            ),
            (DEFAULT_WS_URL, 150, PeriodicSnapshots::None, 150)
        );
        assert_eq!(o.max_frame_bytes, 4 * 1024 * 1024);
        parse_trades(&spec("", Symbols::All)).unwrap();
        let o = parse_mbp(&spec(
            "periodic_snapshots = 'mbp.refresh'\nrefresh_levels = 5\nlevels = 5",
            Symbols::All,
        ))
        .unwrap();
        assert_eq!(
            (o.periodic_snapshots, o.refresh_levels()),
            (PeriodicSnapshots::MbpRefresh, 5)
        );
        assert_eq!(
            parse_mbp(&spec("periodic_snapshots = 'depth.step0'", Symbols::All))
                .unwrap()
                .periodic_snapshots,
            PeriodicSnapshots::DepthStep0
        );
    }

    #[test]
    fn every_error_is_reported_with_its_key() {
        let errs = parse_mbp(&spec(
            "ws_url = 'wss://api.huobi.pro/ws'\nrest_url = 'ftp://x'\nlevels = 10\nreq_interval_ms = 50\nping_timeout_ms = 10\nmax_frame_bytes = 10\nrefresh_levels = 5\nperiod = 1",
            Symbols::List(vec!["btc-usdt".into()]),
        ))
        .unwrap_err();
        assert_eq!(
            keys(&errs),
            [
                "levels",
                "max_frame_bytes",
                "period",
                "ping_timeout_ms",
                "refresh_levels",
                "req_interval_ms",
                "rest_url",
                "symbols",
                "ws_url"
            ],
            "{errs:#?}"
        );
        assert!(errs.iter().all(|e| e.scope == "feed \"h\""));
        let errs = parse_mbp(&spec("periodic_snapshots = 'bbo'", Symbols::All)).unwrap_err();
        assert_eq!(keys(&errs), ["periodic_snapshots"]);
        let errs = parse_mbp(&spec(
            "periodic_snapshots = 'mbp.refresh'\nrefresh_levels = 150",
            Symbols::All,
        ))
        .unwrap_err();
        assert_eq!(keys(&errs), ["refresh_levels"]);
        let errs = parse_trades(&spec("levels = 150", Symbols::List(vec![]))).unwrap_err();
        assert_eq!(keys(&errs), ["levels", "symbols"]);
    }
}
