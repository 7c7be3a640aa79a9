//! The `[[sink]] plugin = "nats"` options, and their validation (offline, every problem at once).

use std::time::Duration;

use ds_api::{ConfigError, SinkSpec};
use serde::Deserialize;

pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_STREAM: &str = "DS";
pub const DEFAULT_SUBJECT_PREFIX: &str = "ds";
pub const DEFAULT_TIMEOUT_SECS: u64 = 10;
/// Below the server's default `max_payload` (1 MiB), with room for headers.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 512 * 1024;

/// The options as written in exchanges.toml.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Options {
    /// One server URL or several separated by commas (`nats://a:4222,nats://b:4222`): the
    /// client connects to any and reconnects to the others when one dies.
    pub url: String,
    /// The JetStream stream that must capture `<subject_prefix>.>`.
    pub stream: String,
    /// First subject token (see [`crate::subject`]).
    pub subject_prefix: String,
    /// When set, the sink creates the stream (if it does not exist) with these settings at its
    /// first connection; when absent the stream must already exist (a publish to a subject no
    /// stream captures fails, and the batch stays in the spool).
    pub create_stream: Option<CreateStream>,
    /// How long one batch may take, connection, publishes and every acknowledgement included.
    pub timeout_secs: u64,
    /// Largest message payload; a series with more lines in one batch becomes several messages.
    pub max_message_bytes: usize,
}

/// `create_stream = { replicas = 3, max_bytes = 10737418240 }`.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CreateStream {
    /// Copies of every message in the cluster (1..=5; 3 survives one node down).
    pub replicas: usize,
    /// Size limit of the stream; -1 = none. Past it JetStream discards the oldest messages,
    /// so size it for the longest writer outage to ride out.
    pub max_bytes: i64,
}

impl Default for CreateStream {
    fn default() -> Self {
        CreateStream { replicas: 1, max_bytes: -1 }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            url: DEFAULT_URL.into(),
            stream: DEFAULT_STREAM.into(),
            subject_prefix: DEFAULT_SUBJECT_PREFIX.into(),
            create_stream: None,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub name: String,
    pub url: String,
    pub stream: String,
    pub subject_prefix: String,
    pub create_stream: Option<CreateStream>,
    pub timeout: Duration,
    pub max_message_bytes: usize,
}

impl NatsConfig {
    /// The servers of `url`, one per comma-separated entry.
    pub fn servers(&self) -> Vec<String> {
        self.url.split(',').map(|u| u.trim().to_owned()).collect()
    }

    pub fn from_spec(spec: &SinkSpec) -> Result<Self, Vec<ConfigError>> {
        let scope = spec.scope();
        let (opts, mut errors) = ds_api::config::parse_options_lenient::<Options>(&scope, &spec.options);
        let Some(o) = opts else { return Err(errors) };
        let mut bad = |key: &str, msg: String| {
            if !errors.iter().any(|e| e.key == key) {
                errors.push(ConfigError::new(&scope, key, msg));
            }
        };
        for u in o.url.split(',').map(str::trim) {
            match u.parse::<async_nats::ServerAddr>() {
                Ok(_) if u.contains("://") && !(u.starts_with("nats://") || u.starts_with("tls://")) => {
                    bad("url", format!("{u:?}: scheme must be nats:// or tls://"))
                }
                Ok(_) => {}
                Err(e) => bad("url", format!("{u:?} is not a server address (nats://host:port, several separated by commas): {e}")),
            }
        }
        if o.stream.is_empty() || o.stream.contains(|c: char| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace()) {
            bad("stream", format!("{:?} is not a stream name (no '.', '*', '>', '/', '\\' or spaces)", o.stream));
        }
        if o.subject_prefix.is_empty()
            || o.subject_prefix.split('.').any(|t| t.is_empty() || t.contains(['*', '>']) || t.contains(char::is_whitespace))
        {
            bad("subject_prefix", format!("{:?} is not a subject prefix (dot-separated tokens, no wildcards)", o.subject_prefix));
        }
        if let Some(c) = &o.create_stream {
            if !(1..=5).contains(&c.replicas) {
                bad("create_stream.replicas", format!("{} is out of range 1..=5", c.replicas));
            }
            if c.max_bytes == 0 || c.max_bytes < -1 {
                bad("create_stream.max_bytes", format!("{} must be positive, or -1 for no limit", c.max_bytes));
            }
        }
        if o.timeout_secs == 0 {
            bad("timeout_secs", "must be at least 1".into());
        }
        if o.max_message_bytes < 1024 {
            bad("max_message_bytes", "must be at least 1024".into());
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(NatsConfig {
            name: spec.name.clone(),
            url: o.url,
            stream: o.stream,
            subject_prefix: o.subject_prefix,
            create_stream: o.create_stream,
            timeout: Duration::from_secs(o.timeout_secs),
            max_message_bytes: o.max_message_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> SinkSpec {
        SinkSpec { name: "bus".into(), options: s.parse().unwrap() }
    }

    #[test]
    fn defaults() {
        let c = NatsConfig::from_spec(&spec("")).unwrap();
        assert_eq!(c.url, "nats://127.0.0.1:4222");
        assert_eq!(c.stream, "DS");
        assert_eq!(c.subject_prefix, "ds");
        assert_eq!(c.create_stream, None);
        assert_eq!(c.timeout, Duration::from_secs(10));
    }

    #[test]
    fn create_stream_table() {
        let c = NatsConfig::from_spec(&spec("create_stream = { replicas = 3, max_bytes = 1000000 }")).unwrap();
        assert_eq!(c.create_stream, Some(CreateStream { replicas: 3, max_bytes: 1_000_000 }));
    }

    #[test]
    fn every_problem_at_once() {
        let errs = NatsConfig::from_spec(&spec(
            "url = 'http://x:1'\nstream = 'a.b'\nsubject_prefix = 'ds.>'\ntimeout_secs = 0\ncreate_stream = { replicas = 7 }\ncolour = 1",
        ))
        .unwrap_err();
        let mut keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["colour", "create_stream.replicas", "stream", "subject_prefix", "timeout_secs", "url"], "{errs:?}");
    }
}
