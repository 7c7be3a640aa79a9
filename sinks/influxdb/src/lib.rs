//! The `influxdb` sink: the seed's `push_to_influx`, with the failure handling it lacked.
//!
//! ```toml
//! [[sink]]
//! name = "influx"
//! plugin = "influxdb"
//! url = "http://127.0.0.1:8086"   # default
//! api = "v1"                      # default; "v2" for InfluxDB 2.x/3.x/Cloud
//! database = "market"             # v1, required
//! # retention_policy = "autogen"  # v1, optional
//! # username = "..."              # v1, optional, with password (HTTP basic auth)
//! # password = "..."
//! # org = "..."                   # v2, required
//! # bucket = "..."                # v2, required
//! # token = "..."                 # v2, required (Authorization: Token ...)
//! # gzip = true
//! # timeout_secs = 10
//! # max_retries = 5
//! # quarantine_dir = "data/quarantine"
//! ```
//!
//! What the seed did not do, and why it matters here:
//! - transient failures (429, 5xx, network) are retried with capped exponential backoff that
//!   honours `Retry-After` ([`retry`]), then handed back to the buffer, which keeps the batch;
//! - lines the server refuses (4xx) are written to a quarantine file ([`quarantine`]), so they
//!   are neither retried forever nor lost; a 1.x `partial write` quarantines only the refused
//!   lines when the error names them ([`rejected`], [`sink`]);
//! - a 413 splits the batch instead of failing it;
//! - credentials are never logged: `Secret` redacts them and they travel in headers, not URLs.
#![forbid(unsafe_code)]

pub mod config;
mod gzip;
pub mod probe;
pub mod quarantine;
pub mod rejected;
pub mod retry;
pub mod sink;
pub mod write;

#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;

use ds_api::{ConfigError, Sink, SinkSpec};

pub use config::InfluxConfig;
pub use sink::InfluxSink;

/// Validates the options and builds the sink; never connects (`data-storage check` runs this).
fn build(spec: &SinkSpec) -> Result<Box<dyn Sink>, Vec<ConfigError>> {
    let cfg = InfluxConfig::from_spec(spec)?;
    let sink = InfluxSink::new(cfg).map_err(|e| vec![ConfigError::new(spec.scope(), "", e)])?;
    Ok(Box::new(sink))
}

ds_api::inventory::submit! {
    ds_api::SinkPlugin {
        name: "influxdb",
        description: "InfluxDB 1.x (/write) or 2.x/3.x (/api/v2/write); retries 429/5xx honouring Retry-After, quarantines refused lines",
        crate_name: env!("CARGO_PKG_NAME"),
        build,
    }
}
