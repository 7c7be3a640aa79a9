//! data-storage, the host: reads exchanges.toml, looks up connector and sink plugins in the
//! static registry, wires each feed's listener to its sink's buffer, runs until stopped.
//!
//! The library form exists so tests run the real service in-process with an injected stop
//! (`run::run(config, stop)`), exactly as the binary does with SIGINT/SIGTERM.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod health;
pub mod http_endpoint;
pub mod logging;
pub mod metrics;
pub mod online_check;
pub mod plugins;
pub mod progress;
pub mod reload;
pub mod replay;
pub mod run;
pub mod shard;
pub mod status;
pub mod supervisor;
