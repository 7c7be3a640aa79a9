//! Wires listeners to buffers and runs them: the channel graph of design.md, and the clean
//! stop of contract 6 (listeners stop, channels drain, every buffer flushes or spills).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{error, info, warn};

use ds_api::buffer::{packet_channel, Buffer, PacketSender};
use ds_api::{shutdown_pair, FeedContext, FeedStats, SinkStats};

use crate::config::Config;
use crate::http_endpoint;
use crate::status::{self, FeedMeta, StatsRegistry, StatusLine};

/// Listeners get this long to hand over their last packets after the stop signal.
const LISTENER_STOP_GRACE: Duration = Duration::from_secs(10);

/// What a run did, for the caller (and tests).
#[derive(Default)]
pub struct RunReport {
    pub stats: StatsRegistry,
    /// The run could not start (e.g. a spool directory could not be opened).
    pub failed: bool,
}

/// Runs the configured feeds until `stop` resolves, then stops cleanly.
pub async fn run(config: Config, stop: impl Future<Output = ()>) -> RunReport {
    let (trigger, shutdown) = shutdown_pair();
    let mut registry = StatsRegistry {
        sink_stale: Duration::from_secs(config.service.health_stale_secs.max(1)),
        started_ns: ds_api::clock::now_ns(),
        ..StatsRegistry::default()
    };
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
                return RunReport { stats: registry, failed: true };
            }
        },
    };

    if let Some(plan) = &config.shard {
        info!("{plan}");
    }
    // Captures open before anything runs: a capture_dir that cannot be written fails the start.
    let mut captures: HashMap<String, Arc<ds_api::capture::Capture>> = HashMap::new();
    for feed in &config.feeds {
        let Some(dir) = &feed.capture_dir else { continue };
        match ds_api::capture::Capture::start(dir, &feed.name, ds_api::capture::DEFAULT_MAX_FILE_BYTES) {
            Ok(c) => {
                info!(feed = %feed.name, dir = %dir.display(), "capturing raw frames");
                captures.insert(feed.name.clone(), c);
            }
            Err(e) => {
                error!(feed = %feed.name, dir = %dir.display(), error = %e, "cannot open the capture directory; not starting");
                return RunReport { stats: registry, failed: true };
            }
        }
    }
    let mut senders: HashMap<String, PacketSender> = HashMap::new();
    let mut buffers = JoinSet::new();
    for entry in config.sinks {
        let stats = Arc::new(SinkStats::default());
        let (tx, rx) = packet_channel(&entry.name, entry.buffer.capacity, stats.clone());
        let buffer = match Buffer::new(&entry.name, entry.sink, entry.buffer.clone(), stats.clone(), rx) {
            Ok(b) => b,
            Err(e) => {
                error!(sink = %entry.name, dir = %entry.buffer.spool_dir.display(), error = %e, "cannot open the spool directory; not starting");
                return RunReport { stats: registry, failed: true };
            }
        };
        info!(sink = %entry.name, plugin = entry.plugin, spool = %entry.buffer.spool_dir.display(), "sink ready");
        buffers.spawn(buffer.run(shutdown.clone()));
        senders.insert(entry.name.clone(), tx);
        registry.sinks.push((entry.name, stats));
    }

    let mut listeners = JoinSet::new();
    for feed in config.feeds {
        let stats = Arc::new(FeedStats::default());
        if let Some(c) = captures.get(&feed.name) {
            stats.capture.install(c.clone());
        }
        let out = senders.get(&feed.sink).expect("config checked that the sink exists").clone();
        let out = out.for_feed(stats.clone());
        let ctx = FeedContext { feed: Arc::from(feed.name.as_str()), out, stats: stats.clone(), shutdown: shutdown.clone() };
        info!(feed = %feed.name, connector = feed.connector, sink = %feed.sink, "feed starting");
        let name = feed.name.clone();
        let listener = feed.listener;
        listeners.spawn(async move {
            if let Err(e) = listener.listen(ctx).await {
                error!(feed = %name, error = %e, "feed stopped with an error");
            }
        });
        registry.feeds.push((feed.name, stats));
        registry.feed_meta.push(FeedMeta { connector: feed.connector, health_stale: feed.health_stale });
    }
    for name in &config.disabled_feeds {
        info!(feed = %name, "feed disabled in config");
    }
    // Only listeners hold senders now: each buffer ends when its last listener does.
    drop(senders);

    let status_task = (config.service.status_interval_secs > 0)
        .then(|| tokio::spawn(status::run(registry.clone(), Duration::from_secs(config.service.status_interval_secs))));
    // Served until the buffers are done, so a scrape during the drain sees it.
    let metrics_task = metrics_listener.map(|l| tokio::spawn(http_endpoint::serve(l, registry.clone())));

    stop.await;
    info!("stopping: closing connections, draining buffers");
    trigger.trigger();

    let grace = tokio::time::sleep(LISTENER_STOP_GRACE);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            r = listeners.join_next() => if r.is_none() { break },
            _ = &mut grace => {
                warn!(remaining = listeners.len(), "listeners did not stop in time; aborting them");
                listeners.abort_all();
                while listeners.join_next().await.is_some() {}
                break;
            }
        }
    }
    // Listeners are done: the capture files get their last records and gzip trailers.
    for (feed, c) in captures {
        let (recorded, dropped) = (c.recorded(), c.dropped());
        let _ = tokio::task::spawn_blocking(move || c.stop()).await;
        info!(%feed, recorded, dropped, "capture closed");
    }
    while buffers.join_next().await.is_some() {}
    if let Some(t) = status_task {
        t.abort();
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    StatusLine::new(registry.clone()).log_totals();
    info!("stopped cleanly");
    RunReport { stats: registry, failed: false }
}
