//! The status line: per feed and per sink, what moved since the last line, so an operator sees
//! at a glance that data flows (and where it stops).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tracing::info;

use ds_api::{FeedStats, SinkStats};

/// Counters of every running feed and sink, by name.
#[derive(Default, Clone)]
pub struct StatsRegistry {
    pub feeds: Vec<(String, Arc<FeedStats>)>,
    pub sinks: Vec<(String, Arc<SinkStats>)>,
    /// What `/metrics` and `/health` need besides the counters; same order as `feeds`.
    pub feed_meta: Vec<FeedMeta>,
    /// `/health`: a sink with data waiting and no successful write for this long is unhealthy.
    pub sink_stale: Duration,
    /// When the run started (ns since the epoch): the age of a feed that never got a message.
    pub started_ns: i64,
}

/// The registry as the running service sees it: a reload swaps feeds and sinks in and out, and
/// the status line and `/metrics` read the current set at each use.
#[derive(Default, Clone)]
pub struct SharedRegistry(Arc<RwLock<StatsRegistry>>);

impl SharedRegistry {
    pub fn new(registry: StatsRegistry) -> Self {
        SharedRegistry(Arc::new(RwLock::new(registry)))
    }

    /// The current set (cheap: names and `Arc`s).
    pub fn snapshot(&self) -> StatsRegistry {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, registry: StatsRegistry) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = registry;
    }
}

/// A feed's static facts, for labels and health.
#[derive(Debug, Clone)]
pub struct FeedMeta {
    pub connector: &'static str,
    /// No data for this long = stale.
    pub health_stale: Duration,
}

/// Remembers the last reading to turn counters into rates, by name, so a reload that adds or
/// removes feeds keeps the rates of the others.
pub struct StatusLine {
    registry: StatsRegistry,
    last: Instant,
    feed_prev: HashMap<String, (u64, u64)>,
    sink_prev: HashMap<String, u64>,
}

impl StatusLine {
    pub fn new(registry: StatsRegistry) -> Self {
        let mut line = StatusLine { registry: StatsRegistry::default(), last: Instant::now(), feed_prev: HashMap::new(), sink_prev: HashMap::new() };
        line.set_registry(registry);
        line
    }

    /// Follows a reload: new feeds and sinks start from their current counters; a restarted
    /// feed (new counters) is read from zero.
    pub fn set_registry(&mut self, registry: StatsRegistry) {
        self.feed_prev.retain(|name, _| registry.feeds.iter().any(|(n, _)| n == name));
        self.sink_prev.retain(|name, _| registry.sinks.iter().any(|(n, _)| n == name));
        for (name, s) in &registry.feeds {
            self.feed_prev.entry(name.clone()).or_insert((s.frames.get(), s.points.get()));
        }
        for (name, s) in &registry.sinks {
            self.sink_prev.entry(name.clone()).or_insert(s.points_written.get());
        }
        self.registry = registry;
    }

    /// Logs one line per feed and per sink.
    pub fn log(&mut self) {
        let secs = self.last.elapsed().as_secs_f64().max(1e-3);
        self.last = Instant::now();
        for (name, s) in &self.registry.feeds {
            let prev = self.feed_prev.entry(name.clone()).or_default();
            let (frames, points) = (s.frames.get(), s.points.get());
            info!(
                "status feed {name}: {:.1} frames/s, {:.1} points/s, connections {}, gaps {}, resyncs {}, invalid {}, reconnects {}",
                frames.saturating_sub(prev.0) as f64 / secs,
                points.saturating_sub(prev.1) as f64 / secs,
                s.connections.get(),
                s.gaps.get(),
                s.resyncs.get(),
                s.invalid.get(),
                s.reconnects.get(),
            );
            *prev = (frames, points);
        }
        for (name, s) in &self.registry.sinks {
            let prev = self.sink_prev.entry(name.clone()).or_default();
            let written = s.points_written.get();
            info!(
                "status sink {name}: {:.1} points/s written, total {}, retries {}, quarantined {}, dropped {}, in spool {} points / {} bytes",
                written.saturating_sub(*prev) as f64 / secs,
                written,
                s.retries.get(),
                s.points_quarantined.get(),
                s.points_dropped.get(),
                s.spool_points.get(),
                s.spool_bytes.get(),
            );
            *prev = written;
        }
    }
}

impl StatusLine {
    /// Totals since start, logged once at stop: what was received, stored, counted.
    pub fn log_totals(&self) {
        for (name, s) in &self.registry.feeds {
            log_feed_totals(name, s);
        }
        for (name, s) in &self.registry.sinks {
            log_sink_totals(name, s);
        }
    }
}

/// A feed's totals since it started: logged at stop, and when a reload stops or restarts it.
pub fn log_feed_totals(name: &str, s: &FeedStats) {
            info!(
                "totals feed {name}: frames {}, MI {}, ST {}, trades {}, points {}, gaps {}, resyncs {}, invalid {}, superseded {}, out of sequence {}, control {}, reconnects {}",
                s.frames.get(), s.mi.get(), s.st.get(), s.trades.get(), s.points.get(), s.gaps.get(), s.resyncs.get(),
                s.invalid.get(), s.superseded.get(), s.out_of_sequence.get(), s.control.get(), s.reconnects.get(),
            );
}

/// A sink's totals since it started: logged at stop, and when a reload stops or restarts it.
pub fn log_sink_totals(name: &str, s: &SinkStats) {
            info!(
                "totals sink {name}: points written {}, batches {}, retries {}, quarantined {}, dropped {}, spooled {}, left in spool {}",
                s.points_written.get(), s.batches_written.get(), s.retries.get(),
                s.points_quarantined.get(), s.points_dropped.get(), s.points_spooled.get(), s.spool_points.get(),
            );
}

/// Logs the status line every `every` until the task is aborted.
pub async fn run(registry: SharedRegistry, every: Duration) {
    let mut line = StatusLine::new(registry.snapshot());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        line.set_registry(registry.snapshot());
        line.log();
    }
}
