//! The `nats_source` connector: the writer side of the scale-out picture (edge instances ->
//! JetStream -> writer instances -> InfluxDB; README "Many instances").
//!
//! ```toml
//! [[feed]]
//! name = "from-bus"
//! connector = "nats_source"
//! symbols = "all"                 # the source takes what the stream holds
//! sink = "influx"
//! url = "nats://10.0.0.1:4222"    # default nats://127.0.0.1:4222; several comma-separated
//! stream = "DS"                   # default
//! consumer = "writer"             # durable; writers sharing the name share the work
//! filter_subject = "ds.>"         # default
//! ack_wait_secs = 30              # default: redelivery after this long without ack
//! max_ack_pending = 1000          # default
//! ```
#![forbid(unsafe_code)]

pub mod config;
pub mod source;

use ds_api::{ConfigError, FeedSpec, Listener};

pub use config::SourceConfig;
pub use source::NatsSource;

/// Validates the options; connects to nothing (`data-storage check`).
fn build(spec: &FeedSpec) -> Result<Box<dyn Listener>, Vec<ConfigError>> {
    Ok(Box::new(NatsSource { cfg: SourceConfig::from_spec(spec)? }))
}

ds_api::inventory::submit! {
    ds_api::ConnectorPlugin {
        name: "nats_source",
        description: "NATS JetStream durable consumer: line protocol from the `nats` sink to any sink, acknowledged once stored",
        crate_name: env!("CARGO_PKG_NAME"),
        build,
    }
}
