//! The `nats` sink: line protocol published to NATS JetStream, for the scale-out picture
//! (edge instances -> JetStream -> writer instances -> InfluxDB; README "Many instances").
//!
//! ```toml
//! [[sink]]
//! name = "bus"
//! plugin = "nats"
//! url = "nats://10.0.0.1:4222,nats://10.0.0.2:4222"   # default nats://127.0.0.1:4222
//! stream = "DS"                  # default; must capture "<subject_prefix>.>"
//! subject_prefix = "ds"          # default
//! create_stream = { replicas = 3, max_bytes = 10737418240 }   # optional: create it if missing
//! timeout_secs = 10              # default: the whole batch, every acknowledgement included
//! max_message_bytes = 524288     # default: below the server's max_payload (1 MiB)
//! ```
//!
//! Subjects: `<prefix>.<exchange>.<market>.<measurement>.<symbol>` ([`subject`]). A batch
//! counts as written only when JetStream acknowledged every message of it ([`sink`]) and each
//! acknowledgement names the configured stream and a sequence ([`ack`]); otherwise the host's
//! spool keeps it. The stream is created (if asked) and verified before the first publish
//! ([`stream`]).
#![forbid(unsafe_code)]

pub mod ack;
pub mod config;
pub mod sink;
pub mod stream;
pub mod subject;

use ds_api::{ConfigError, Sink, SinkSpec};

pub use config::NatsConfig;
pub use sink::NatsSink;

/// Validates the options and builds the sink; connects to nothing (`data-storage check`).
fn build(spec: &SinkSpec) -> Result<Box<dyn Sink>, Vec<ConfigError>> {
    Ok(Box::new(NatsSink::new(NatsConfig::from_spec(spec)?)))
}

ds_api::inventory::submit! {
    ds_api::SinkPlugin {
        name: "nats",
        description: "NATS JetStream: one subject per book (<prefix>.<exchange>.<market>.<measurement>.<symbol>), a batch counts only once every publish is acknowledged",
        crate_name: env!("CARGO_PKG_NAME"),
        build,
    }
}
