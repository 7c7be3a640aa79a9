//! `ds-load`, the load rig of issue 8: a generating Binance mock ([`exchange`]) for N symbols
//! at a given rate, the real release `data-storage` binary against it ([`service`]), and a
//! null or pass-through InfluxDB endpoint behind it ([`endpoint`]) that counts points and
//! measures latency. [`run`] drives one bounded run and [`summary`] reports frames/s,
//! points/s, CPU seconds and RSS per process ([`procstat`]) and latency percentiles
//! ([`latency`]). With `--floor` it first runs a bare websocket reader ([`floor`], binary
//! `ds-floor`) in the service's place, for the cost of receiving alone. The binary is
//! `tests/src/bin/ds-load.rs`; README "Performance" says how to run it and what it measured.

pub mod args;
pub mod endpoint;
pub mod exchange;
pub mod floor;
pub mod latency;
pub mod levels;
pub mod market;
pub mod procstat;
pub mod run;
pub mod service;
pub mod summary;

/// Wall-clock milliseconds since the Unix epoch: the unit of Binance's `E` and of the service's
/// `event_ts`, so a frame's stamp and its acknowledgement compare directly.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
