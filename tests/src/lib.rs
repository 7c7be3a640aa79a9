//! Test support for the data-storage workspace.
//!
//! The service is tested against real parts wherever that is possible on one machine: a real
//! InfluxDB 1.x ([`influx`]), and a mock exchange that speaks the real wire protocol on
//! 127.0.0.1 and replays recorded real traffic ([`binance`], built on [`http`]). The recorded
//! traffic lives outside the repository in `../shared/fixtures` ([`fixtures`]); tests that need
//! it skip with a printed line when it is absent, and fail in CI (`CI=true`), where it must be
//! present. [`book`] is a reference order book written independently of the service code, so
//! a test compares the service's stored book against something the service did not compute.
//!
//! Everything here binds 127.0.0.1 only, and every background task ends when the value that
//! started it is dropped.

#![forbid(unsafe_code)]

pub mod accept;
pub mod binance;
pub mod bybit;
pub mod bybit_book;
pub mod book;
pub mod fixtures;
pub mod http;
pub mod huobi;
pub mod influx;
pub mod influxd;
pub mod load;
pub mod nats;

/// Whether we run in CI (`CI=true`), where a missing fixture or service is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Locks a std mutex, ignoring poisoning: a panicking test thread must not turn every later
/// access of a mock's records into a second, confusing panic.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
