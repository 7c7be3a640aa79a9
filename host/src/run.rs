//! Runs the service: the channel graph of design.md (built by [`crate::supervisor`]), reloads
//! of exchanges.toml on request (SIGHUP), and the clean stop of contract 6 (listeners stop,
//! channels drain, every buffer flushes or spills).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{error, info};

use ds_api::{ConfigError, FeedStats};

use crate::config::Config;
use crate::http_endpoint;
use crate::reload::ReloadOutcome;
use crate::status::{self, SharedRegistry, StatsRegistry, StatusLine};
use crate::supervisor::Supervisor;

pub use crate::supervisor::LISTENER_STOP_GRACE;

/// What a run did, for the caller (and tests).
#[derive(Default)]
pub struct RunReport {
    /// The feeds and sinks running at the stop.
    pub stats: StatsRegistry,
    /// Feed instances a reload stopped (removed, or restarted with new settings), with their
    /// counters at that moment.
    pub retired: Vec<(String, Arc<FeedStats>)>,
    /// The run could not start (e.g. a spool directory could not be opened).
    pub failed: bool,
}

/// Where reloads come from: each message on `requests` (SIGHUP, or a test) makes the run call
/// `load` and apply the result; a config with errors is logged and the running one stays.
pub struct Reload {
    pub requests: mpsc::Receiver<()>,
    pub load: Box<dyn Fn() -> Result<Config, Vec<ConfigError>> + Send>,
    /// Told how each reload ended (tests wait on it); `None` = only logged.
    pub outcomes: Option<mpsc::UnboundedSender<ReloadOutcome>>,
}

/// Runs the configured feeds until `stop` resolves, then stops cleanly.
pub async fn run(config: Config, stop: impl Future<Output = ()>) -> RunReport {
    run_with_reload(config, stop, None).await
}

/// [`run`], also applying reloads from `reload`.
pub async fn run_with_reload(config: Config, stop: impl Future<Output = ()>, reload: Option<Reload>) -> RunReport {
    let registry = SharedRegistry::new(StatsRegistry {
        sink_stale: Duration::from_secs(config.service.health_stale_secs.max(1)),
        started_ns: ds_api::clock::now_ns(),
        ..StatsRegistry::default()
    });
    // Bound before anything starts: a port in use fails the start, not the first scrape.
    let metrics_listener = match config.metrics_addr {
        None => None,
        Some(addr) => match http_endpoint::bind(addr).await {
            Ok(l) => {
                info!(addr = %l.local_addr().unwrap_or(addr), "serving /metrics and /health");
                Some(l)
            }
            Err(e) => {
                error!(%addr, error = %e, "cannot listen on service.metrics_addr; not starting");
                return RunReport { stats: registry.snapshot(), failed: true, ..RunReport::default() };
            }
        },
    };

    if let Some(plan) = &config.shard {
        info!("{plan}");
    }
    let mut service = config.service.clone();
    let status_interval = config.service.status_interval_secs;
    let mut supervisor = Supervisor::new(registry.clone(), registry.snapshot().started_ns);
    if supervisor.start(config).is_err() {
        error!("not starting (see above)");
        supervisor.stop_all().await;
        return RunReport { stats: registry.snapshot(), failed: true, ..RunReport::default() };
    }

    let status_task = (status_interval > 0).then(|| tokio::spawn(status::run(registry.clone(), Duration::from_secs(status_interval))));
    // Served until the buffers are done, so a scrape during the drain sees it.
    let metrics_task = metrics_listener.map(|l| tokio::spawn(http_endpoint::serve(l, registry.clone())));

    let (mut requests, load, outcomes) = match reload {
        Some(r) => (Some(r.requests), Some(r.load), r.outcomes),
        None => (None, None, None),
    };
    tokio::pin!(stop);
    loop {
        let request = async {
            match requests.as_mut() {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => break,
            got = request => {
                let (Some(()), Some(load)) = (got, load.as_ref()) else {
                    requests = None; // the sender is gone: no more reloads
                    continue;
                };
                // Requests that piled up while the last one was applied are served by this one.
                while let Some(r) = requests.as_mut() {
                    if r.try_recv().is_err() {
                        break;
                    }
                }
                let outcome = match load() {
                    Ok(new) => {
                        let new_service = new.service.clone();
                        let outcome = supervisor.apply(new, &service).await;
                        if !matches!(outcome, ReloadOutcome::Rejected(_)) {
                            service = new_service;
                        }
                        outcome
                    }
                    Err(errors) => {
                        error!(problems = errors.len(), "reload rejected: the new configuration has errors; the running one stays");
                        for e in &errors {
                            error!("reload rejected: {e}");
                        }
                        ReloadOutcome::Rejected(errors.iter().map(|e| e.to_string()).collect())
                    }
                };
                if let Some(tx) = &outcomes {
                    let _ = tx.send(outcome);
                }
            }
        }
    }
    info!("stopping: closing connections, draining buffers");
    supervisor.stop_all().await;
    if let Some(t) = status_task {
        t.abort();
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    let stats = registry.snapshot();
    StatusLine::new(stats.clone()).log_totals();
    info!("stopped cleanly");
    RunReport { stats, retired: supervisor.retired().to_vec(), failed: false }
}
