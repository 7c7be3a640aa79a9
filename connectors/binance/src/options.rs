//! Options of the Binance connectors, as written in a `[[feed]]` of exchanges.toml.

use serde::Deserialize;

use ds_api::{ConfigError, FeedSpec, Symbols};

/// Binance's market-data websocket; `wss://data-stream.binance.vision` also works.
pub const DEFAULT_WS_URL: &str = "wss://stream.binance.com:9443";
pub const DEFAULT_REST_URL: &str = "https://api.binance.com";
/// Binance allows 1024 streams per connection; 200 keeps a reconnect (and the resync of
/// every symbol on it) small.
pub const DEFAULT_STREAMS_PER_CONNECTION: usize = 200;
/// Half of Binance's 6,000 request weight a minute per IP, leaving room for other clients on
/// the same address.
pub const DEFAULT_REST_WEIGHT_PER_MINUTE: u32 = 3_000;
/// The smallest `stale_after_secs` accepted. Against Binance, keep the default (60) or at
/// least 25: Binance pings every 20 s, so anything shorter tears down healthy quiet
/// connections. The floor is this low only so that tests against a mock that pings faster
/// can detect a stalled connection in seconds.
pub const MIN_STALE_AFTER_SECS: u64 = 2;
/// Binance closes every websocket connection after 24 hours.
pub const BINANCE_CONNECTION_LIFETIME_SECS: u64 = 24 * 3600;
/// A connection is replaced (make-before-break) after 23 h 30 m: half an hour before Binance
/// would close it, so a failed replacement has time to be tried again.
pub const DEFAULT_MAX_CONNECTION_AGE_SECS: u64 = 23 * 3600 + 30 * 60;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DepthOptions {
    pub ws_url: String,
    pub rest_url: String,
    /// 100 or 1000 (ms): `<symbol>@depth@100ms` or `<symbol>@depth`.
    pub update_speed_ms: u32,
    /// Levels per side in the REST snapshot (1..=5000; 1000 costs weight 50, 5000 costs 250).
    pub snapshot_limit: u32,
    pub streams_per_connection: usize,
    /// No frame (data or ping) for this long: the connection is dead. Binance pings every 20 s,
    /// so use 25 or more against Binance (default 60); the minimum accepted is
    /// [`MIN_STALE_AFTER_SECS`], for tests against a faster-pinging mock.
    pub stale_after_secs: u64,
    /// REST weight a minute for snapshots. Binance limits weight per IP, so every feed of
    /// the process that uses the same REST host (scheme, host, port) spends from one shared
    /// budget, and the smallest `rest_weight_per_minute` among them is that budget's size
    /// ([`crate::rest::WeightBudget::for_host`]).
    pub rest_weight_per_minute: u32,
    /// Events held per symbol while its snapshot is fetched.
    pub max_held_updates: usize,
    /// Replace each connection make-before-break once it is this old, before Binance closes it
    /// at 24 h (a replacement opened while the old one still reads: no gap, no resync). 0 = only
    /// on `serverShutdown`, and a gap at Binance's 24 h close.
    pub max_connection_age_secs: u64,
}

impl Default for DepthOptions {
    fn default() -> Self {
        DepthOptions {
            ws_url: DEFAULT_WS_URL.into(),
            rest_url: DEFAULT_REST_URL.into(),
            update_speed_ms: 100,
            snapshot_limit: 1000,
            streams_per_connection: DEFAULT_STREAMS_PER_CONNECTION,
            stale_after_secs: 60,
            rest_weight_per_minute: DEFAULT_REST_WEIGHT_PER_MINUTE,
            max_held_updates: 10_000,
            max_connection_age_secs: DEFAULT_MAX_CONNECTION_AGE_SECS,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SnapshotOptions {
    pub rest_url: String,
    pub snapshot_limit: u32,
    /// Seconds between two snapshots of the same symbol.
    pub interval_secs: u64,
    pub rest_weight_per_minute: u32,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            rest_url: DEFAULT_REST_URL.into(),
            snapshot_limit: 1000,
            interval_secs: 60,
            rest_weight_per_minute: DEFAULT_REST_WEIGHT_PER_MINUTE,
        }
    }
}

/// REST weight of `/api/v3/depth` by `limit` (protocols.md §1).
pub fn depth_weight(limit: u32) -> u32 {
    match limit {
        0..=100 => 5,
        101..=500 => 25,
        501..=1000 => 50,
        _ => 250,
    }
}

pub fn parse_depth(spec: &FeedSpec) -> Result<DepthOptions, Vec<ConfigError>> {
    let scope = spec.scope();
    let o: DepthOptions = ds_api::parse_options(&scope, &spec.options)?;
    let mut errors = Vec::new();
    check_url(&scope, "ws_url", &o.ws_url, &["ws", "wss"], &mut errors);
    check_url(&scope, "rest_url", &o.rest_url, &["http", "https"], &mut errors);
    if o.update_speed_ms != 100 && o.update_speed_ms != 1000 {
        errors.push(ConfigError::new(&scope, "update_speed_ms", format!("must be 100 or 1000, got {}", o.update_speed_ms)));
    }
    check_limit(&scope, o.snapshot_limit, &mut errors);
    if !(1..=1024).contains(&o.streams_per_connection) {
        errors.push(ConfigError::new(&scope, "streams_per_connection", "must be between 1 and 1024 (Binance's limit per connection)"));
    }
    if o.stale_after_secs < MIN_STALE_AFTER_SECS {
        errors.push(ConfigError::new(
            &scope,
            "stale_after_secs",
            format!("must be at least {MIN_STALE_AFTER_SECS} (and 25 or more against Binance, which pings every 20 s)"),
        ));
    } else if o.stale_after_secs < 25 {
        tracing::warn!(feed = %spec.name, stale_after_secs = o.stale_after_secs, "stale_after_secs below 25: Binance pings every 20 s, so quiet healthy connections will be dropped");
    }
    check_weight(&scope, o.rest_weight_per_minute, o.snapshot_limit, &mut errors);
    if o.max_connection_age_secs >= BINANCE_CONNECTION_LIFETIME_SECS {
        errors.push(ConfigError::new(
            &scope,
            "max_connection_age_secs",
            format!("must be below {BINANCE_CONNECTION_LIFETIME_SECS} (Binance closes connections after 24 h; 0 = never roll over)"),
        ));
    }
    check_symbols(spec, &mut errors);
    if errors.is_empty() {
        Ok(o)
    } else {
        Err(errors)
    }
}

pub fn parse_snapshot(spec: &FeedSpec) -> Result<SnapshotOptions, Vec<ConfigError>> {
    let scope = spec.scope();
    let o: SnapshotOptions = ds_api::parse_options(&scope, &spec.options)?;
    let mut errors = Vec::new();
    check_url(&scope, "rest_url", &o.rest_url, &["http", "https"], &mut errors);
    check_limit(&scope, o.snapshot_limit, &mut errors);
    if o.interval_secs == 0 {
        errors.push(ConfigError::new(&scope, "interval_secs", "must be at least 1"));
    }
    check_weight(&scope, o.rest_weight_per_minute, o.snapshot_limit, &mut errors);
    check_symbols(spec, &mut errors);
    if errors.is_empty() {
        Ok(o)
    } else {
        Err(errors)
    }
}

fn check_url(scope: &str, key: &str, url: &str, schemes: &[&str], errors: &mut Vec<ConfigError>) {
    match reqwest::Url::parse(url) {
        Ok(u) if schemes.contains(&u.scheme()) && u.host_str().is_some() => {}
        Ok(u) => errors.push(ConfigError::new(scope, key, format!("scheme must be one of {schemes:?}, got {:?}", u.scheme()))),
        Err(e) => errors.push(ConfigError::new(scope, key, format!("not a URL: {e}"))),
    }
}

fn check_limit(scope: &str, limit: u32, errors: &mut Vec<ConfigError>) {
    if !(1..=5000).contains(&limit) {
        errors.push(ConfigError::new(scope, "snapshot_limit", "must be between 1 and 5000"));
    }
}

fn check_weight(scope: &str, per_minute: u32, limit: u32, errors: &mut Vec<ConfigError>) {
    if per_minute < depth_weight(limit) {
        errors.push(ConfigError::new(scope, "rest_weight_per_minute", format!("must allow at least one snapshot ({} for snapshot_limit {limit})", depth_weight(limit))));
    }
}

fn check_symbols(spec: &FeedSpec, errors: &mut Vec<ConfigError>) {
    if let Symbols::List(list) = &spec.symbols {
        if list.is_empty() {
            errors.push(ConfigError::new(spec.scope(), "symbols", "empty list (use \"all\" or name at least one symbol)"));
        }
        for s in list {
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric()) {
                errors.push(ConfigError::new(spec.scope(), "symbols", format!("{s:?} is not a Binance symbol (letters and digits, e.g. \"BTCUSDT\")")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(options: &str) -> FeedSpec {
        FeedSpec { name: "b".into(), symbols: Symbols::List(vec!["BTCUSDT".into()]), options: options.parse().unwrap() }
    }

    #[test]
    fn the_connection_age_limit_defaults_below_binances_24_hours() {
        let o = parse_depth(&spec("")).unwrap();
        assert_eq!(o.max_connection_age_secs, 23 * 3600 + 30 * 60);
        assert_eq!(parse_depth(&spec("max_connection_age_secs = 0")).unwrap().max_connection_age_secs, 0, "0 = never by age");
        assert_eq!(parse_depth(&spec("max_connection_age_secs = 1")).unwrap().max_connection_age_secs, 1);
        let errs = parse_depth(&spec("max_connection_age_secs = 86400")).unwrap_err();
        assert_eq!(errs.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["max_connection_age_secs"]);
    }
}
