//! The `[[feed]] connector = "nats_source"` options, validated offline (every problem at once).

use std::time::Duration;

use ds_api::{ConfigError, FeedSpec, Symbols};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Options {
    /// Servers, comma-separated, as for the `nats` sink.
    pub url: String,
    /// The stream the edge instances publish to.
    pub stream: String,
    /// Durable consumer name. Writers that share it share the work (a pull consumer hands each
    /// message to one of them); writers with different names each get everything.
    pub consumer: String,
    /// Subjects to take; default every subject of the `nats` sink's default prefix.
    pub filter_subject: String,
    /// A message not acknowledged within this long is delivered again: it must exceed the
    /// time the sink takes to store a batch (flush interval + write).
    pub ack_wait_secs: u64,
    /// Messages delivered and not yet acknowledged, at most: bounds what the writer holds.
    pub max_ack_pending: i64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            url: "nats://127.0.0.1:4222".into(),
            stream: "DS".into(),
            consumer: "writer".into(),
            filter_subject: "ds.>".into(),
            ack_wait_secs: 30,
            max_ack_pending: 1000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub servers: Vec<String>,
    pub stream: String,
    pub consumer: String,
    pub filter_subject: String,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
}

impl SourceConfig {
    pub fn from_spec(spec: &FeedSpec) -> Result<Self, Vec<ConfigError>> {
        let scope = spec.scope();
        let (opts, mut errors) = ds_api::config::parse_options_lenient::<Options>(&scope, &spec.options);
        let Some(o) = opts else { return Err(errors) };
        let mut bad = |key: &str, msg: String| {
            if !errors.iter().any(|e| e.key == key) {
                errors.push(ConfigError::new(&scope, key, msg));
            }
        };
        if spec.symbols != Symbols::All {
            bad("symbols", "must be \"all\": the source takes what the stream holds (narrow it with filter_subject)".into());
        }
        for u in o.url.split(',').map(str::trim) {
            if let Err(e) = u.parse::<async_nats::ServerAddr>() {
                bad("url", format!("{u:?} is not a server address: {e}"));
            }
        }
        if o.stream.is_empty() || o.stream.contains(['.', '*', '>', ' ']) {
            bad("stream", format!("{:?} is not a stream name", o.stream));
        }
        if o.consumer.is_empty() || o.consumer.contains(['.', '*', '>', ' ']) {
            bad("consumer", format!("{:?} is not a consumer name", o.consumer));
        }
        if o.filter_subject.is_empty() || o.filter_subject.contains(' ') {
            bad("filter_subject", format!("{:?} is not a subject", o.filter_subject));
        }
        if o.ack_wait_secs == 0 {
            bad("ack_wait_secs", "must be at least 1".into());
        }
        if o.max_ack_pending < 1 {
            bad("max_ack_pending", "must be at least 1".into());
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(SourceConfig {
            servers: o.url.split(',').map(|u| u.trim().to_owned()).collect(),
            stream: o.stream,
            consumer: o.consumer,
            filter_subject: o.filter_subject,
            ack_wait: Duration::from_secs(o.ack_wait_secs),
            max_ack_pending: o.max_ack_pending,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(symbols: Symbols, s: &str) -> FeedSpec {
        FeedSpec { name: "bus".into(), symbols, options: s.parse().unwrap() }
    }

    #[test]
    fn defaults_and_servers() {
        let c = SourceConfig::from_spec(&spec(Symbols::All, "url = 'nats://a:1, nats://b:2'")).unwrap();
        assert_eq!(c.servers, ["nats://a:1", "nats://b:2"]);
        assert_eq!((c.stream.as_str(), c.consumer.as_str(), c.filter_subject.as_str()), ("DS", "writer", "ds.>"));
        assert_eq!(c.ack_wait, Duration::from_secs(30));
    }

    #[test]
    fn every_problem_at_once() {
        let errs = SourceConfig::from_spec(&spec(
            Symbols::List(vec!["BTCUSDT".into()]),
            "stream = 'a.b'\nconsumer = ''\nack_wait_secs = 0\nmax_ack_pending = 0\ncolour = 1",
        ))
        .unwrap_err();
        let mut keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["ack_wait_secs", "colour", "consumer", "max_ack_pending", "stream", "symbols"], "{errs:?}");
    }
}
