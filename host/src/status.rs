//! The status line: per feed and per sink, what moved since the last line, so an operator sees
//! at a glance that data flows (and where it stops).

use std::sync::Arc;
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

/// A feed's static facts, for labels and health.
#[derive(Debug, Clone)]
pub struct FeedMeta {
    pub connector: &'static str,
    /// No data for this long = stale.
    pub health_stale: Duration,
}

/// Remembers the last reading to turn counters into rates.
pub struct StatusLine {
    registry: StatsRegistry,
    last: Instant,
    feed_prev: Vec<(u64, u64)>,
    sink_prev: Vec<u64>,
}

impl StatusLine {
    pub fn new(registry: StatsRegistry) -> Self {
        let feed_prev = registry.feeds.iter().map(|(_, s)| (s.frames.get(), s.points.get())).collect();
        let sink_prev = registry.sinks.iter().map(|(_, s)| s.points_written.get()).collect();
        StatusLine { registry, last: Instant::now(), feed_prev, sink_prev }
    }

    /// Logs one line per feed and per sink.
    pub fn log(&mut self) {
        let secs = self.last.elapsed().as_secs_f64().max(1e-3);
        self.last = Instant::now();
        for ((name, s), prev) in self.registry.feeds.iter().zip(self.feed_prev.iter_mut()) {
            let (frames, points) = (s.frames.get(), s.points.get());
            info!(
                "status feed {name}: {:.1} frames/s, {:.1} points/s, connections {}, gaps {}, resyncs {}, invalid {}, reconnects {}",
                (frames - prev.0) as f64 / secs,
                (points - prev.1) as f64 / secs,
                s.connections.get(),
                s.gaps.get(),
                s.resyncs.get(),
                s.invalid.get(),
                s.reconnects.get(),
            );
            *prev = (frames, points);
        }
        for ((name, s), prev) in self.registry.sinks.iter().zip(self.sink_prev.iter_mut()) {
            let written = s.points_written.get();
            info!(
                "status sink {name}: {:.1} points/s written, total {}, retries {}, quarantined {}, dropped {}, in spool {} points / {} bytes",
                (written - *prev) as f64 / secs,
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
            info!(
                "totals feed {name}: frames {}, MI {}, ST {}, trades {}, points {}, gaps {}, resyncs {}, invalid {}, superseded {}, out of sequence {}, control {}, reconnects {}",
                s.frames.get(), s.mi.get(), s.st.get(), s.trades.get(), s.points.get(), s.gaps.get(), s.resyncs.get(),
                s.invalid.get(), s.superseded.get(), s.out_of_sequence.get(), s.control.get(), s.reconnects.get(),
            );
        }
        for (name, s) in &self.registry.sinks {
            info!(
                "totals sink {name}: points written {}, batches {}, retries {}, quarantined {}, dropped {}, spooled {}, left in spool {}",
                s.points_written.get(), s.batches_written.get(), s.retries.get(),
                s.points_quarantined.get(), s.points_dropped.get(), s.points_spooled.get(), s.spool_points.get(),
            );
        }
    }
}

/// Logs the status line every `every` until the task is aborted.
pub async fn run(registry: StatsRegistry, every: Duration) {
    let mut line = StatusLine::new(registry);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        line.log();
    }
}
