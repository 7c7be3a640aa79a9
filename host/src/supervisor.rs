//! The running feeds and sinks: started at launch, changed by a reload, stopped at the end.
//!
//! Each feed and each sink has its own stop trigger, so a reload can stop one feed (its
//! listener hands over its last packets, its capture closes) or one sink (its buffer writes
//! what it holds, or spools it, then ends) while everything else keeps running. A stopped
//! feed's packets are already in its sink's channel, and a sink is only stopped after every
//! feed writing to it has stopped: a reload loses nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use ds_api::buffer::{packet_channel, Buffer, PacketSender};
use ds_api::capture::Capture;
use ds_api::{shutdown_pair, FeedContext, FeedStats, ShutdownTrigger, SinkStats};

use crate::config::{Config, Feed, SinkEntry};
use crate::reload::{ReloadOutcome, ReloadPlan, Running};
use crate::status::{self, FeedMeta, SharedRegistry, StatsRegistry};

/// Listeners get this long to hand over their last packets after their stop signal.
pub const LISTENER_STOP_GRACE: Duration = Duration::from_secs(10);

struct RunningFeed {
    name: String,
    sink: String,
    fingerprint: String,
    meta: FeedMeta,
    stats: Arc<FeedStats>,
    trigger: ShutdownTrigger,
    task: JoinHandle<()>,
    capture: Option<Arc<Capture>>,
}

struct RunningSink {
    name: String,
    fingerprint: String,
    stats: Arc<SinkStats>,
    /// The supervisor's own sender: feeds get clones; the buffer ends once all are dropped.
    tx: PacketSender,
    trigger: ShutdownTrigger,
    task: JoinHandle<()>,
}

/// A start-up failure: what could not be opened, already logged.
#[derive(Debug)]
pub struct StartFailed;

pub struct Supervisor {
    registry: SharedRegistry,
    feeds: Vec<RunningFeed>,
    sinks: Vec<RunningSink>,
    /// Counters of feed instances stopped by a reload (a restarted feed gets new counters).
    retired: Vec<(String, Arc<FeedStats>)>,
    sink_stale: Duration,
    started_ns: i64,
}

impl Supervisor {
    pub fn new(registry: SharedRegistry, started_ns: i64) -> Self {
        Supervisor { registry, feeds: Vec::new(), sinks: Vec::new(), retired: Vec::new(), sink_stale: Duration::from_secs(60), started_ns }
    }

    /// Starts everything in `config` (the launch). Nothing is started when a capture or spool
    /// directory cannot be opened.
    pub fn start(&mut self, config: Config) -> Result<(), StartFailed> {
        self.sink_stale = Duration::from_secs(config.service.health_stale_secs.max(1));
        let mut captures = open_captures(config.feeds.iter())?;
        for entry in config.sinks {
            self.start_sink(entry)?;
        }
        for feed in config.feeds {
            let capture = captures.remove(&feed.name);
            self.start_feed(feed, capture);
        }
        for name in &config.disabled_feeds {
            info!(feed = %name, "feed disabled in config");
        }
        self.publish();
        Ok(())
    }

    /// Moves the running set to `new`: stops what was removed or changed, starts what was
    /// added or changed, leaves the rest alone.
    pub async fn apply(&mut self, new: Config, old_service: &crate::config::ServiceConfig) -> ReloadOutcome {
        let running_feeds: Vec<Running> =
            self.feeds.iter().map(|f| Running { name: f.name.clone(), fingerprint: f.fingerprint.clone(), sink: f.sink.clone() }).collect();
        let running_sinks: Vec<Running> =
            self.sinks.iter().map(|s| Running { name: s.name.clone(), fingerprint: s.fingerprint.clone(), sink: String::new() }).collect();
        let plan = ReloadPlan::between(&running_feeds, &running_sinks, &new);
        let restart_keys = crate::reload::service_changes_needing_restart(old_service, &new.service);
        if !restart_keys.is_empty() {
            warn!(keys = ?restart_keys, "reload: these [service] settings take effect at the next restart");
        }
        // Captures first: a directory that cannot be written rejects the reload before anything
        // changed.
        let mut captures = match open_captures(new.feeds.iter().filter(|f| plan.start_feeds.contains(&f.name))) {
            Ok(c) => c,
            Err(StartFailed) => {
                error!("reload rejected: a capture directory cannot be opened; the running configuration stays");
                return ReloadOutcome::Rejected(vec!["a capture directory cannot be opened (see the log)".into()]);
            }
        };
        // Health thresholds apply at once, to the feeds that keep running too.
        self.sink_stale = Duration::from_secs(new.service.health_stale_secs.max(1));
        for f in &mut self.feeds {
            if let Some(n) = new.feeds.iter().find(|n| n.name == f.name) {
                f.meta.health_stale = n.health_stale;
            }
        }
        if plan.is_empty() {
            info!("reload: no feed or sink changed");
            self.publish();
            return ReloadOutcome::Unchanged;
        }
        info!(
            stop_feeds = ?plan.stop_feeds, stop_sinks = ?plan.stop_sinks, start_sinks = ?plan.start_sinks, start_feeds = ?plan.start_feeds,
            "reload: applying"
        );

        let stopping: Vec<RunningFeed> = take_where(&mut self.feeds, |f| plan.stop_feeds.contains(&f.name));
        self.stop_feeds(stopping).await;
        let stopping: Vec<RunningSink> = take_where(&mut self.sinks, |s| plan.stop_sinks.contains(&s.name));
        for s in &stopping {
            info!(sink = %s.name, "reload: stopping sink (writing or spooling what it holds)");
        }
        for (name, stats) in stop_sinks(stopping).await {
            status::log_sink_totals(&name, &stats);
        }

        let order: Vec<String> = new.feeds.iter().map(|f| f.name.clone()).collect();
        let mut failed_sinks = Vec::new();
        for entry in new.sinks.into_iter().filter(|s| plan.start_sinks.contains(&s.name)) {
            let name = entry.name.clone();
            if self.start_sink(entry).is_err() {
                failed_sinks.push(name);
            }
        }
        for feed in new.feeds.into_iter().filter(|f| plan.start_feeds.contains(&f.name)) {
            if failed_sinks.contains(&feed.sink) {
                error!(feed = %feed.name, sink = %feed.sink, "feed not started: its sink could not start (see above)");
                continue;
            }
            let capture = captures.remove(&feed.name);
            self.start_feed(feed, capture);
        }
        // The config's order, for the status line and /metrics.
        self.feeds.sort_by_key(|f| order.iter().position(|n| *n == f.name));
        self.publish();
        info!(feeds = self.feeds.len(), sinks = self.sinks.len(), "reload: done");
        ReloadOutcome::Applied(plan)
    }

    /// Stops everything (the end of the run): every listener and every buffer is told at
    /// once, listeners get [`LISTENER_STOP_GRACE`], buffers drain (or spool) and end.
    pub async fn stop_all(&mut self) {
        for f in &self.feeds {
            f.trigger.trigger();
        }
        for s in &self.sinks {
            s.trigger.trigger();
        }
        let feeds = std::mem::take(&mut self.feeds);
        let names: Vec<(String, Arc<FeedStats>)> = feeds.iter().map(|f| (f.name.clone(), f.stats.clone())).collect();
        close_feeds(feeds).await;
        let sink_names = stop_sinks(std::mem::take(&mut self.sinks)).await;
        // The registry keeps the last set, for the report and the final totals.
        let mut reg = self.registry.snapshot();
        reg.feeds = names;
        reg.sinks = sink_names;
        self.registry.replace(reg);
    }

    /// Feed instances a reload stopped, with their final counters.
    pub fn retired(&self) -> &[(String, Arc<FeedStats>)] {
        &self.retired
    }

    fn start_sink(&mut self, entry: SinkEntry) -> Result<(), StartFailed> {
        let stats = Arc::new(SinkStats::default());
        let (tx, rx) = packet_channel(&entry.name, entry.buffer.capacity, stats.clone());
        let buffer = match Buffer::new(&entry.name, entry.sink, entry.buffer.clone(), stats.clone(), rx) {
            Ok(b) => b,
            Err(e) => {
                error!(sink = %entry.name, dir = %entry.buffer.spool_dir.display(), error = %e, "cannot open the spool directory; sink not started");
                return Err(StartFailed);
            }
        };
        info!(sink = %entry.name, plugin = entry.plugin, spool = %entry.buffer.spool_dir.display(), "sink ready");
        let (trigger, shutdown) = shutdown_pair();
        let task = tokio::spawn(buffer.run(shutdown));
        self.sinks.push(RunningSink { name: entry.name, fingerprint: entry.fingerprint, stats, tx, trigger, task });
        Ok(())
    }

    fn start_feed(&mut self, feed: Feed, capture: Option<Arc<Capture>>) {
        let stats = Arc::new(FeedStats::default());
        if let Some(c) = &capture {
            stats.capture.install(c.clone());
        }
        let sink = self.sinks.iter().find(|s| s.name == feed.sink).expect("the feed's sink was started first");
        let out = sink.tx.clone().for_feed(stats.clone());
        let (trigger, shutdown) = shutdown_pair();
        let ctx = FeedContext { feed: Arc::from(feed.name.as_str()), out, stats: stats.clone(), shutdown };
        info!(feed = %feed.name, connector = feed.connector, sink = %feed.sink, "feed starting");
        let name = feed.name.clone();
        let listener = feed.listener;
        let task = tokio::spawn(async move {
            if let Err(e) = listener.listen(ctx).await {
                error!(feed = %name, error = %e, "feed stopped with an error");
            }
        });
        self.feeds.push(RunningFeed {
            name: feed.name,
            sink: feed.sink,
            fingerprint: feed.fingerprint,
            meta: FeedMeta { connector: feed.connector, health_stale: feed.health_stale },
            stats,
            trigger,
            task,
            capture,
        });
    }

    async fn stop_feeds(&mut self, feeds: Vec<RunningFeed>) {
        if feeds.is_empty() {
            return;
        }
        for f in &feeds {
            info!(feed = %f.name, "reload: stopping feed");
            f.trigger.trigger();
        }
        let stats: Vec<(String, Arc<FeedStats>)> = feeds.iter().map(|f| (f.name.clone(), f.stats.clone())).collect();
        close_feeds(feeds).await;
        for (name, s) in stats {
            status::log_feed_totals(&name, &s);
            self.retired.push((name, s));
        }
    }

    /// Makes the running set visible to the status line, `/metrics` and `/health`.
    fn publish(&self) {
        let feeds = self.feeds.iter().map(|f| (f.name.clone(), f.stats.clone())).collect();
        let feed_meta = self.feeds.iter().map(|f| f.meta.clone()).collect();
        let sinks = self.sinks.iter().map(|s| (s.name.clone(), s.stats.clone())).collect();
        self.registry.replace(StatsRegistry { feeds, sinks, feed_meta, sink_stale: self.sink_stale, started_ns: self.started_ns });
    }
}

/// Opens the capture of every feed that asks for one.
fn open_captures<'a>(feeds: impl Iterator<Item = &'a Feed>) -> Result<HashMap<String, Arc<Capture>>, StartFailed> {
    let mut captures = HashMap::new();
    for feed in feeds {
        let Some(dir) = &feed.capture_dir else { continue };
        match Capture::start(dir, &feed.name, ds_api::capture::DEFAULT_MAX_FILE_BYTES) {
            Ok(c) => {
                info!(feed = %feed.name, dir = %dir.display(), "capturing raw frames");
                captures.insert(feed.name.clone(), c);
            }
            Err(e) => {
                error!(feed = %feed.name, dir = %dir.display(), error = %e, "cannot open the capture directory");
                // Close what was opened, so no empty capture file is left half-written.
                for (_, c) in captures {
                    c.stop();
                }
                return Err(StartFailed);
            }
        }
    }
    Ok(captures)
}

/// Waits for already-triggered listeners (aborting the late ones after the grace), then
/// closes their captures so the files get their last records and gzip trailers.
async fn close_feeds(feeds: Vec<RunningFeed>) {
    let deadline = tokio::time::Instant::now() + LISTENER_STOP_GRACE;
    let mut captures = Vec::new();
    for f in feeds {
        let mut task = f.task;
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            warn!(feed = %f.name, "listener did not stop in time; aborting it");
            task.abort();
            let _ = task.await;
        }
        if let Some(c) = f.capture {
            captures.push((f.name, c));
        }
    }
    for (feed, c) in captures {
        let (recorded, dropped) = (c.recorded(), c.dropped());
        let _ = tokio::task::spawn_blocking(move || c.stop()).await;
        info!(%feed, recorded, dropped, "capture closed");
    }
}

/// Drops the supervisor's senders (the feeds' are gone already), tells each buffer to stop and
/// waits until it wrote or spooled everything. Returns the sinks' counters.
async fn stop_sinks(sinks: Vec<RunningSink>) -> Vec<(String, Arc<SinkStats>)> {
    let mut tasks = Vec::new();
    for s in sinks {
        s.trigger.trigger();
        drop(s.tx);
        tasks.push((s.name, s.stats, s.task));
    }
    let mut done = Vec::new();
    for (name, stats, task) in tasks {
        if let Err(e) = task.await {
            error!(sink = %name, error = %e, "buffer task failed");
        }
        done.push((name, stats));
    }
    done
}

fn take_where<T>(v: &mut Vec<T>, pred: impl Fn(&T) -> bool) -> Vec<T> {
    let (taken, kept): (Vec<T>, Vec<T>) = std::mem::take(v).into_iter().partition(|x| pred(x));
    *v = kept;
    taken
}
