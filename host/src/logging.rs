//! Logs to stdout and to a daily rolling file (the seed asks for a log file). The level comes
//! from RUST_LOG when set, else from `[service] log_level`.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

use crate::config::ServiceConfig;

/// Installs the global subscriber; keep the guard alive until exit so the file gets flushed.
pub fn init(service: &ServiceConfig) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&service.log_level));
    let stdout = tracing_subscriber::fmt::layer().with_target(false);
    if service.log_dir.is_empty() {
        let _ = tracing_subscriber::registry().with(filter).with(stdout).try_init();
        return None;
    }
    let appender = tracing_appender::rolling::daily(&service.log_dir, "data-storage.log");
    let (writer, guard) = tracing_appender::non_blocking(appender);
    let file = tracing_subscriber::fmt::layer().with_ansi(false).with_target(false).with_writer(writer);
    let _ = tracing_subscriber::registry().with(filter).with(stdout).with(file).try_init();
    Some(guard)
}

/// For `run` in tests: stdout only, ignoring a subscriber that is already set.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry().with(filter).with(tracing_subscriber::fmt::layer().with_test_writer()).try_init();
}
