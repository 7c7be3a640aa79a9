//! The `file` sink, the embedded default: line protocol appended to local files, for running
//! without an InfluxDB, and as a durable record that can be replayed into one later
//! (`influx -import`, or `curl --data-binary @file .../write?db=..&precision=ns`).
//!
//! ```toml
//! [[sink]]
//! name = "local"
//! plugin = "file"
//! dir = "data"                    # default
//! max_file_bytes = 268435456      # default 256 MiB
//! rotate_hourly = true            # default: a new file each UTC hour
//! fsync_every_secs = 1            # default: fsync at most once a second, and on close
//! gzip = false                    # default; true writes .lp.gz
//! ```
//!
//! Files are `{dir}/{sink name}-{YYYYMMDD-HHMMSS}.lp` (UTC); see [`rotate`] for the rotation
//! rules. The files hold exactly the lines the buffer wrote, in order.
#![forbid(unsafe_code)]

pub mod config;
pub mod rotate;
pub mod sink;

#[cfg(test)]
mod tests;

use ds_api::{ConfigError, Sink, SinkSpec};

pub use config::FileConfig;
pub use sink::FileSink;

/// Validates the options and builds the sink; touches no file (`data-storage check` runs this).
fn build(spec: &SinkSpec) -> Result<Box<dyn Sink>, Vec<ConfigError>> {
    Ok(Box::new(FileSink::new(FileConfig::from_spec(spec)?)))
}

ds_api::inventory::submit! {
    ds_api::SinkPlugin {
        name: "file",
        description: "line protocol to local files (the default): rotated by size and UTC hour, fsynced, optional gzip",
        crate_name: env!("CARGO_PKG_NAME"),
        build,
    }
}
