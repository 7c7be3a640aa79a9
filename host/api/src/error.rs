//! The error enums of the plugin API (the seed's SymbolError, ParseError, DBError, plus the
//! config and listener errors the host reports).

use std::fmt;
use std::time::Duration;

/// A frame that could not be turned into a packet. Counted, logged (rate-limited), and the
/// connection goes on (contract 7).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid number {0:?}")]
    InvalidNumber(String),
    #[error("unknown message type: {0}")]
    UnknownMessage(String),
    #[error("{0}")]
    Other(String),
}

/// Resolving the symbol list (`symbols = "all"`) failed.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    #[error("request to {url} failed: {reason}")]
    Request { url: String, reason: String },
    #[error("unexpected symbol list from {url}: {reason}")]
    Format { url: String, reason: String },
    #[error("no tradable symbols found at {0}")]
    Empty(String),
}

/// A sink write failed after the sink's own retries. The class decides what the buffer does.
#[derive(Debug, thiserror::Error)]
pub enum DBError {
    /// Worth trying again later (network, 429, 5xx); `retry_after` when the server said so.
    #[error("temporary failure: {reason}")]
    Retryable { reason: String, retry_after: Option<Duration> },
    /// The server refused some or all of the data itself (4xx). The sink has already
    /// quarantined the `quarantined` refused points; the rest of the batch is stored (InfluxDB
    /// 1.x "partial write"), so the batch must not be retried.
    #[error("rejected by the sink: {reason}")]
    Rejected { reason: String, quarantined: usize },
    /// Credentials refused (401/403): data kept, operator must act.
    #[error("authentication refused: {reason}")]
    Auth { reason: String },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// What went wrong in a listener that it could not recover from by reconnecting.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error(transparent)]
    Symbols(#[from] SymbolError),
    #[error("{0}")]
    Fatal(String),
}

/// One problem in exchanges.toml, naming where it is (`feed "binance-spot"`) and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `feed "name"`, `sink "name"` or `config` for top-level keys.
    pub scope: String,
    /// Dotted key path inside the scope, e.g. `options.ws_url`; empty for the scope itself.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(scope: impl Into<String>, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { scope: scope.into(), key: key.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.scope, self.message)
        } else {
            write!(f, "{}: key `{}`: {}", self.scope, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}
