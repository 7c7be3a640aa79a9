//! exchanges.toml: the operator's only file.
//!
//! ```toml
//! [service]                       # optional; every key has a default
//! log_level = "info"              # RUST_LOG wins when set
//! metrics_addr = "127.0.0.1:9898" # Prometheus /metrics and /health; unset = off
//!
//! [[feed]]
//! name = "binance-spot"           # unique; names the feed in logs and errors
//! connector = "binance_spot_depth"
//! symbols = ["BTCUSDT"]           # or "all"
//! sink = "files"
//! ws_url = "wss://..."            # every other key belongs to the connector
//!
//! [[sink]]
//! name = "files"
//! plugin = "file"
//! dir = "data"                    # every other key belongs to the sink (or its buffer)
//! ```
//!
//! Loading collects every error before failing (contract 7): syntax, unknown keys, wrong
//! types, unknown plugins, a feed pointing at a sink that does not exist, and each plugin's
//! own option errors, each naming the feed or sink and the key. `${VAR}` in any string is
//! replaced by the environment variable, so secrets stay out of the file.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use ds_api::buffer::BufferConfig;
use ds_api::spool::SpoolFull;
use ds_api::plugin::{find_connector, find_sink};
use ds_api::{ConfigError, FeedSpec, Listener, Sink, SinkSpec, Symbols};

/// `[service]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServiceConfig {
    /// Used when RUST_LOG is not set: `error`, `warn`, `info`, `debug`, `trace`, or a filter.
    pub log_level: String,
    /// Rolling log file directory (daily files `data-storage.log.YYYY-MM-DD`); "" disables it.
    pub log_dir: String,
    /// Seconds between two status lines; 0 disables them.
    pub status_interval_secs: u64,
    /// Each sink's on-disk spool goes to `<spool_dir>/<sink name>`: batches the sink could not
    /// take yet (down, slow, or at stop), written to it in order when it is back, kept across
    /// restarts.
    pub spool_dir: String,
    /// `host:port` of the Prometheus `/metrics` and `/health` endpoint; unset = off.
    pub metrics_addr: Option<String>,
    /// `/health`: a feed with no data for this long, or a sink with data waiting and no
    /// successful write for this long, is unhealthy. A feed may override it (a REST-polling
    /// feed needs more than its poll interval).
    pub health_stale_secs: u64,
    /// `"i/n"`: run only shard i of n of every feed's symbols (see [`crate::shard`]);
    /// `--shard` on the command line wins.
    pub shard: Option<String>,
}

/// Long enough that a quiet minute on a busy book (Binance sends depth updates every 100 ms
/// while anything changes) is not mistaken for an outage; short enough for an alert.
pub const DEFAULT_HEALTH_STALE_SECS: u64 = 60;

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            log_level: "info".into(),
            log_dir: "logs".into(),
            status_interval_secs: 10,
            spool_dir: "data/spool".into(),
            metrics_addr: None,
            health_stale_secs: DEFAULT_HEALTH_STALE_SECS,
            shard: None,
        }
    }
}

/// A validated feed, ready to run.
pub struct Feed {
    pub name: String,
    pub connector: &'static str,
    pub sink: String,
    pub listener: Box<dyn Listener>,
    /// `/health`: no data for this long = stale (`health_stale_secs`, per feed or `[service]`).
    pub health_stale: Duration,
    /// `capture_dir`: record every raw frame of this feed there (see `ds_api::capture`).
    pub capture_dir: Option<PathBuf>,
    /// The feed as its connector saw it, for `data-storage replay`.
    pub spec: FeedSpec,
    /// Everything that defines this feed (its table after `${VAR}` expansion, and its symbols
    /// after sharding): a reload restarts the feed when this changes, and only then.
    pub fingerprint: String,
}

/// A validated sink, ready to run.
pub struct SinkEntry {
    pub name: String,
    pub plugin: &'static str,
    pub sink: Box<dyn Sink>,
    pub buffer: BufferConfig,
    /// Everything that defines this sink (its table after `${VAR}` expansion, and its buffer
    /// settings including the spool directory): a reload restarts the sink when this changes.
    pub fingerprint: String,
}

/// The whole validated configuration.
pub struct Config {
    pub path: PathBuf,
    pub service: ServiceConfig,
    /// `service.metrics_addr`, parsed.
    pub metrics_addr: Option<SocketAddr>,
    pub feeds: Vec<Feed>,
    /// Only the sinks some enabled feed writes to.
    pub sinks: Vec<SinkEntry>,
    /// Feeds present but `enabled = false`.
    pub disabled_feeds: Vec<String>,
    /// This instance's part of the symbols when sharded (`--shard` / `[service] shard`).
    pub shard: Option<crate::shard::ShardPlan>,
}

/// Reads and validates a config file; every problem is in the error list.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![ConfigError::new("config", "", format!("cannot read {}: {e}", path.display()))])?;
    parse(&text, path, &|name| std::env::var(name).ok())
}

/// Parses config text; `env` looks up `${VAR}` (injected so tests need not touch the process
/// environment).
pub fn parse(text: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Vec<ConfigError>> {
    parse_sharded(text, path, env, None)
}

/// [`load`] with `--shard` from the command line (wins over `[service] shard`).
pub fn load_sharded(path: &Path, shard: Option<crate::shard::Shard>) -> Result<Config, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![ConfigError::new("config", "", format!("cannot read {}: {e}", path.display()))])?;
    parse_sharded(&text, path, &|name| std::env::var(name).ok(), shard)
}

/// [`parse`] with a shard override (see [`crate::shard`]).
pub fn parse_sharded(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    shard_override: Option<crate::shard::Shard>,
) -> Result<Config, Vec<ConfigError>> {
    let mut root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        vec![ConfigError::new("config", "", format!("{} is not valid TOML: {}", path.display(), e.to_string().trim()))]
    })?;
    let mut errors = Vec::new();

    let service_table = match root.remove("service") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t,
        Some(_) => {
            errors.push(ConfigError::new("config", "service", "must be a table ([service])"));
            toml::Table::new()
        }
    };
    let mut service_table = service_table;
    expand_env_table(&mut service_table, "", "[service]", env, &mut errors);
    let service: ServiceConfig = ds_api::parse_options("[service]", &service_table).unwrap_or_else(|e| {
        errors.extend(e);
        ServiceConfig::default()
    });
    let metrics_addr = service.metrics_addr.as_deref().and_then(|a| match a.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.push(ConfigError::new("[service]", "metrics_addr", format!("expected ip:port such as \"127.0.0.1:9898\", got {a:?}")));
            None
        }
    });
    if service.health_stale_secs == 0 {
        errors.push(ConfigError::new("[service]", "health_stale_secs", "must be at least 1"));
    }
    let shard = shard_override.or_else(|| {
        let s = service.shard.as_deref()?;
        s.parse().map_err(|e: String| errors.push(ConfigError::new("[service]", "shard", e))).ok()
    });
    let mut shard_plan = shard.map(|shard| crate::shard::ShardPlan { shard, feeds: Vec::new() });
    let mut feed_tables = take_array(&mut root, "feed", &mut errors);
    let mut sink_tables = take_array(&mut root, "sink", &mut errors);
    for (kind, tables) in [("feed", &mut feed_tables), ("sink", &mut sink_tables)] {
        for (i, t) in tables.iter_mut().enumerate() {
            let scope = match t.get("name").and_then(|v| v.as_str()) {
                Some(name) => format!("{kind} \"{name}\""),
                None => format!("{kind} #{}", i + 1),
            };
            expand_env_table(t, "", &scope, env, &mut errors);
        }
    }
    for key in root.keys() {
        errors.push(ConfigError::new("config", key.as_str(), "unknown top-level key (expected [service], [[feed]], [[sink]])"));
    }

    // Sinks first, so feeds can be checked against their names.
    let mut sink_defs: BTreeMap<String, (String, toml::Table, String)> = BTreeMap::new();
    for (i, mut t) in sink_tables.into_iter().enumerate() {
        let raw = t.to_string();
        let name = take_str(&mut t, "name", &format!("sink #{}", i + 1), &mut errors);
        let Some(name) = name else { continue };
        let scope = format!("sink \"{name}\"");
        let plugin = take_str(&mut t, "plugin", &scope, &mut errors);
        if sink_defs.contains_key(&name) {
            errors.push(ConfigError::new(&scope, "name", "defined twice"));
            continue;
        }
        if let Some(plugin) = plugin {
            sink_defs.insert(name, (plugin, t, raw));
        }
    }

    let mut feeds = Vec::new();
    let mut disabled_feeds = Vec::new();
    let mut used_sinks = HashSet::new();
    let mut feed_names = HashSet::new();
    for (i, mut t) in feed_tables.into_iter().enumerate() {
        let raw = t.to_string();
        let Some(name) = take_str(&mut t, "name", &format!("feed #{}", i + 1), &mut errors) else { continue };
        let scope = format!("feed \"{name}\"");
        if !feed_names.insert(name.clone()) {
            errors.push(ConfigError::new(&scope, "name", "defined twice"));
            continue;
        }
        let connector = take_str(&mut t, "connector", &scope, &mut errors);
        let sink = take_str(&mut t, "sink", &scope, &mut errors);
        let enabled = match t.remove("enabled") {
            None => true,
            Some(toml::Value::Boolean(b)) => b,
            Some(v) => {
                errors.push(ConfigError::new(&scope, "enabled", format!("invalid type: {}, expected true or false", v.type_str())));
                true
            }
        };
        let health_stale = match t.remove("health_stale_secs") {
            None => Duration::from_secs(service.health_stale_secs.max(1)),
            Some(toml::Value::Integer(n)) if n >= 1 => Duration::from_secs(n as u64),
            Some(v) => {
                errors.push(ConfigError::new(&scope, "health_stale_secs", format!("expected an integer >= 1, got {v}")));
                Duration::from_secs(service.health_stale_secs.max(1))
            }
        };
        let capture_dir = match t.remove("capture_dir") {
            None => None,
            Some(toml::Value::String(d)) if !d.is_empty() => Some(PathBuf::from(d)),
            Some(v) => {
                errors.push(ConfigError::new(&scope, "capture_dir", format!("expected a directory path, got {v}")));
                None
            }
        };
        let symbols = match t.remove("symbols") {
            None => {
                errors.push(ConfigError::new(&scope, "symbols", "missing (a list of symbols, or \"all\")"));
                None
            }
            Some(v) => match Symbols::deserialize(v) {
                Ok(s) => Some(s),
                Err(e) => {
                    errors.push(ConfigError::new(&scope, "symbols", e.to_string().trim()));
                    None
                }
            },
        };
        if let Some(sink) = &sink {
            if !sink_defs.contains_key(sink) {
                let known: Vec<_> = sink_defs.keys().collect();
                errors.push(ConfigError::new(&scope, "sink", format!("no [[sink]] named \"{sink}\" (defined: {known:?})")));
            }
        }
        let plugin = connector.as_deref().and_then(|c| match find_connector(c) {
            Some(p) => Some(p),
            None => {
                let known: Vec<_> = ds_api::plugin::connectors().iter().map(|p| p.name).collect();
                errors.push(ConfigError::new(&scope, "connector", format!("unknown connector \"{c}\" (registered: {known:?})")));
                None
            }
        });
        let (Some(plugin), Some(symbols), Some(sink)) = (plugin, symbols, sink) else {
            if !enabled {
                disabled_feeds.push(name);
            }
            continue;
        };
        let symbols = match (&mut shard_plan, symbols) {
            (Some(plan), symbols) if enabled => match crate::shard::apply(plan, &name, symbols) {
                Ok(Some(s)) => s,
                Ok(None) => continue, // no symbol of this feed in this shard: nothing to run
                Err(e) => {
                    errors.push(ConfigError::new(&scope, "symbols", e));
                    continue;
                }
            },
            (_, symbols) => symbols,
        };
        // A disabled feed is validated too, so enabling it later holds no surprise.
        let spec = FeedSpec { name: name.clone(), symbols, options: t };
        match (plugin.build)(&spec) {
            Ok(_) if !enabled => disabled_feeds.push(name),
            Ok(listener) => {
                used_sinks.insert(sink.clone());
                let fingerprint = format!("{raw}\n# symbols: {:?}", spec.symbols);
                feeds.push(Feed { name, connector: plugin.name, sink, listener, health_stale, capture_dir, spec: spec.clone(), fingerprint });
            }
            Err(e) => errors.extend(e),
        }
    }

    let mut sinks = Vec::new();
    for (name, (plugin_name, mut t, raw)) in sink_defs {
        let scope = format!("sink \"{name}\"");
        let buffer = buffer_config(&name, &mut t, &scope, &service, &mut errors);
        let fingerprint = format!("{raw}\n# buffer: {buffer:?}");
        let Some(plugin) = find_sink(&plugin_name) else {
            let known: Vec<_> = ds_api::plugin::sinks().iter().map(|p| p.name).collect();
            errors.push(ConfigError::new(&scope, "plugin", format!("unknown sink plugin \"{plugin_name}\" (registered: {known:?})")));
            continue;
        };
        // Every sink is validated, used or not; only used ones are kept.
        match (plugin.build)(&SinkSpec { name: name.clone(), options: t }) {
            Ok(sink) if used_sinks.contains(&name) => sinks.push(SinkEntry { name, plugin: plugin.name, sink, buffer, fingerprint }),
            Ok(_) => {}
            Err(e) => errors.extend(e),
        }
    }

    if errors.is_empty() && feeds.is_empty() {
        errors.push(ConfigError::new("config", "feed", "no enabled [[feed]]: nothing to do"));
    }
    if errors.is_empty() {
        Ok(Config { path: path.to_path_buf(), service, metrics_addr, feeds, sinks, disabled_feeds, shard: shard_plan })
    } else {
        Err(errors)
    }
}

/// The buffer keys of a `[[sink]]` (batch_points, flush_interval_ms, buffer_capacity,
/// stop_deadline_secs, memory_batches, spool_max_bytes, spool_full) belong to the host; the
/// rest of the table goes to the sink plugin.
fn buffer_config(name: &str, t: &mut toml::Table, scope: &str, service: &ServiceConfig, errors: &mut Vec<ConfigError>) -> BufferConfig {
    let spool_dir = PathBuf::from(&service.spool_dir).join(sanitize(name));
    let mut cfg = BufferConfig { spool_dir, ..BufferConfig::default() };
    match t.remove("spool_full") {
        None => {}
        Some(toml::Value::String(v)) if v == "drop_oldest" => cfg.spool_full = SpoolFull::DropOldest,
        Some(toml::Value::String(v)) if v == "drop_newest" => cfg.spool_full = SpoolFull::DropNewest,
        Some(v) => errors.push(ConfigError::new(scope, "spool_full", format!("expected \"drop_oldest\" or \"drop_newest\", got {v}"))),
    }
    let mut int = |key: &str, min: i64| -> Option<u64> {
        match t.remove(key) {
            None => None,
            Some(toml::Value::Integer(n)) if n >= min => Some(n as u64),
            Some(v) => {
                errors.push(ConfigError::new(scope, key, format!("expected an integer >= {min}, got {v}")));
                None
            }
        }
    };
    if let Some(n) = int("batch_points", 1) {
        cfg.batch_points = n as usize;
    }
    if let Some(n) = int("flush_interval_ms", 10) {
        cfg.flush_interval = Duration::from_millis(n);
    }
    if let Some(n) = int("buffer_capacity", 1) {
        cfg.capacity = n as usize;
    }
    if let Some(n) = int("stop_deadline_secs", 0) {
        cfg.stop_deadline = Duration::from_secs(n);
    }
    if let Some(n) = int("memory_batches", 1) {
        cfg.memory_batches = n as usize;
    }
    if let Some(n) = int("spool_max_bytes", 1) {
        cfg.spool_max_bytes = n;
    }
    cfg
}

/// A sink name made safe as a directory name.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

fn take_array(root: &mut toml::Table, key: &str, errors: &mut Vec<ConfigError>) -> Vec<toml::Table> {
    match root.remove(key) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| match v {
                toml::Value::Table(t) => Some(t),
                _ => {
                    errors.push(ConfigError::new("config", format!("{key}[{i}]"), format!("must be a table ([[{key}]])")));
                    None
                }
            })
            .collect(),
        Some(_) => {
            errors.push(ConfigError::new("config", key, format!("must be an array of tables ([[{key}]])")));
            Vec::new()
        }
    }
}

fn take_str(t: &mut toml::Table, key: &str, scope: &str, errors: &mut Vec<ConfigError>) -> Option<String> {
    match t.remove(key) {
        Some(toml::Value::String(s)) if !s.is_empty() => Some(s),
        Some(toml::Value::String(_)) => {
            errors.push(ConfigError::new(scope, key, "must not be empty"));
            None
        }
        Some(v) => {
            errors.push(ConfigError::new(scope, key, format!("invalid type: {}, expected a string", v.type_str())));
            None
        }
        None => {
            errors.push(ConfigError::new(scope, key, "missing"));
            None
        }
    }
}

/// Replaces `${VAR}` in every string; `$$` stands for a literal `$`.
fn expand_env_table(t: &mut toml::Table, prefix: &str, scope: &str, env: &dyn Fn(&str) -> Option<String>, errors: &mut Vec<ConfigError>) {
    for (k, v) in t.iter_mut() {
        let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        expand_env_value(v, &path, scope, env, errors);
    }
}

fn expand_env_value(v: &mut toml::Value, path: &str, scope: &str, env: &dyn Fn(&str) -> Option<String>, errors: &mut Vec<ConfigError>) {
    match v {
        toml::Value::String(s) if s.contains('$') => match expand(s, env) {
            Ok(x) => *s = x,
            Err(var) => errors.push(ConfigError::new(scope, path, format!("environment variable {var} is not set"))),
        },
        toml::Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                expand_env_value(x, &format!("{path}[{i}]"), scope, env, errors);
            }
        }
        toml::Value::Table(t) => expand_env_table(t, path, scope, env, errors),
        _ => {}
    }
}

fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let Some(end) = r.find('}') else { return Err(format!("in {s:?}: unclosed ${{")) };
            let var = &r[..end];
            out.push_str(&env(var).ok_or_else(|| var.to_string())?);
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion() {
        let env = |k: &str| (k == "TOKEN").then(|| "s3cret".to_string());
        assert_eq!(expand("Token ${TOKEN}", &env).unwrap(), "Token s3cret");
        assert_eq!(expand("cost $$5", &env).unwrap(), "cost $5");
        assert_eq!(expand("${NOPE}", &env).unwrap_err(), "NOPE");
    }
}
