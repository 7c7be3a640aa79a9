//! The seed's Buffer: packets in, batches of line protocol out, one per sink.
//!
//! Improvements on the seed, and why:
//! - listeners hand packets over with `try_send` on a bounded channel, so a slow or absent
//!   sink can never stall a websocket read loop (contract 5). When the channel is full the
//!   packet is dropped and counted (`points_dropped`) with a rate-limited error line: that is
//!   the documented policy until the on-disk spool (issue 5) takes this role;
//! - a batch is written when it is full *and* on a flush interval, so a quiet feed still
//!   reaches the store within `flush_interval`;
//! - encoding happens here, off the read loop, straight into one byte buffer (no String per
//!   line);
//! - a batch the sink cannot take now is kept and retried with backoff; at stop, what still
//!   cannot be written goes to a spill file next to the data, not to the floor (contract 6).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::error::DBError;
use crate::line_protocol::LineProtocol;
use crate::packet::DataPacket;
use crate::plugin::Sink;
use crate::shutdown::Shutdown;
use crate::stats::{RateLimit, SinkStats};

/// Points per write: InfluxDB's own guidance is 5,000-10,000 lines per request.
pub const DEFAULT_BATCH_POINTS: usize = 5_000;
/// Longest a point waits in memory before a write is attempted.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Packets the channel holds: about a minute of a busy feed's frames at 100 ms per symbol for
/// ~100 symbols, while the sink retries.
pub const DEFAULT_CAPACITY: usize = 65_536;
/// How long the stop waits for a failing sink before spilling to disk.
pub const DEFAULT_STOP_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct BufferConfig {
    pub batch_points: usize,
    pub flush_interval: Duration,
    pub capacity: usize,
    pub stop_deadline: Duration,
    /// Where a batch goes when the sink cannot take it before the stop deadline.
    pub spill_dir: PathBuf,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            batch_points: DEFAULT_BATCH_POINTS,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            capacity: DEFAULT_CAPACITY,
            stop_deadline: DEFAULT_STOP_DEADLINE,
            spill_dir: PathBuf::from("data/spill"),
        }
    }
}

/// The sending half given to listeners. Cloning is cheap; `send` never waits.
#[derive(Clone)]
pub struct PacketSender {
    tx: mpsc::Sender<DataPacket>,
    sink: Arc<str>,
    stats: Arc<SinkStats>,
    full_log: Arc<RateLimit>,
}

impl PacketSender {
    /// Hands a packet to the sink's buffer. Returns false (and counts the points as dropped)
    /// when the buffer is full or gone.
    pub fn send(&self, packet: DataPacket) -> bool {
        let points = packet.point_count() as u64;
        match self.tx.try_send(packet) {
            Ok(()) => true,
            Err(e) => {
                self.stats.points_dropped.add(points);
                if let Some(suppressed) = self.full_log.check() {
                    let why = match e {
                        mpsc::error::TrySendError::Full(_) => "buffer full (sink too slow or down)",
                        mpsc::error::TrySendError::Closed(_) => "buffer closed",
                    };
                    error!(sink = %self.sink, points, suppressed, total_dropped = self.stats.points_dropped.get(), "dropped packet: {why}");
                }
                false
            }
        }
    }
}

/// Creates the channel between the listeners of a sink and its buffer.
pub fn packet_channel(sink: &str, capacity: usize, stats: Arc<SinkStats>) -> (PacketSender, mpsc::Receiver<DataPacket>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (PacketSender { tx, sink: Arc::from(sink), stats, full_log: Arc::new(RateLimit::default()) }, rx)
}

/// One sink's batching loop.
pub struct Buffer {
    name: Arc<str>,
    sink: Box<dyn Sink>,
    cfg: BufferConfig,
    stats: Arc<SinkStats>,
    rx: mpsc::Receiver<DataPacket>,
    lines: Vec<u8>,
    points: usize,
}

impl Buffer {
    pub fn new(name: &str, sink: Box<dyn Sink>, cfg: BufferConfig, stats: Arc<SinkStats>, rx: mpsc::Receiver<DataPacket>) -> Self {
        Buffer { name: Arc::from(name), sink, cfg, stats, rx, lines: Vec::with_capacity(1 << 20), points: 0 }
    }

    /// Encodes one packet into the pending batch.
    pub fn ingest(&mut self, packet: &DataPacket) {
        self.points += LineProtocol::encode(packet, &mut self.lines);
    }

    /// Runs until every sender is gone (the listeners stopped), then writes what is left and
    /// closes the sink. `shutdown` only shortens retries: after it fires, a batch that still
    /// fails past the stop deadline is spilled to disk.
    pub async fn run(mut self, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.cfg.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(1024);
        loop {
            tokio::select! {
                n = self.rx.recv_many(&mut batch, 1024) => {
                    if n == 0 {
                        break;
                    }
                    for p in batch.drain(..) {
                        self.ingest(&p);
                    }
                    if self.points >= self.cfg.batch_points {
                        self.push_and_flush(&shutdown).await;
                    }
                }
                _ = tick.tick() => {
                    if self.points > 0 {
                        self.push_and_flush(&shutdown).await;
                    }
                }
            }
        }
        if self.points > 0 {
            self.push_and_flush(&shutdown).await;
        }
        if let Err(e) = self.sink.close().await {
            error!(sink = %self.name, error = %e, "closing sink failed");
        }
        info!(sink = %self.name, points_written = self.stats.points_written.get(), points_dropped = self.stats.points_dropped.get(), points_spilled = self.stats.points_spilled.get(), "sink stopped");
    }

    /// Writes the pending batch, retrying what the sink says is temporary. Before a stop it
    /// retries for as long as it takes (the channel absorbs, then counts drops); once the
    /// stop fired it tries until the stop deadline, then spills the batch to a file.
    pub async fn push_and_flush(&mut self, shutdown: &Shutdown) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut stop_deadline: Option<tokio::time::Instant> = None;
        let points = self.points;
        loop {
            if shutdown.is_triggered() && stop_deadline.is_none() {
                stop_deadline = Some(tokio::time::Instant::now() + self.cfg.stop_deadline);
            }
            let attempt = match stop_deadline {
                Some(d) => tokio::time::timeout_at(d, self.sink.write(&self.lines, points)).await.unwrap_or_else(|_| {
                    Err(DBError::Retryable { reason: "stop deadline reached".into(), retry_after: None })
                }),
                None => self.sink.write(&self.lines, points).await,
            };
            match attempt {
                Ok(()) => {
                    self.stats.points_written.add(points as u64);
                    self.stats.batches_written.inc();
                    self.stats.bytes_written.add(self.lines.len() as u64);
                    break;
                }
                Err(DBError::Rejected { reason, quarantined }) => {
                    // The refused points are in the sink's quarantine file, the others stored.
                    let quarantined = quarantined.min(points);
                    self.stats.points_quarantined.add(quarantined as u64);
                    self.stats.points_written.add((points - quarantined) as u64);
                    self.stats.batches_written.inc();
                    self.stats.bytes_written.add(self.lines.len() as u64);
                    warn!(sink = %self.name, points, quarantined, %reason, "points refused by the sink and quarantined");
                    break;
                }
                Err(e) => {
                    self.stats.retries.inc();
                    let delay = match &e {
                        DBError::Retryable { retry_after: Some(d), .. } => *d,
                        _ => backoff.next_delay(),
                    };
                    if let Some(d) = stop_deadline {
                        if tokio::time::Instant::now() + delay >= d {
                            self.spill(points, &e).await;
                            break;
                        }
                    }
                    if matches!(e, DBError::Auth { .. }) {
                        error!(sink = %self.name, error = %e, "sink refuses our credentials; keeping the batch and retrying - fix the token/password");
                    } else {
                        warn!(sink = %self.name, points, error = %e, retry_in_ms = delay.as_millis() as u64, "write failed; will retry");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
        self.lines.clear();
        self.points = 0;
    }

    /// Writes the pending batch to `<spill_dir>/<sink>-<unix ns>.lp` so no point is lost at stop.
    async fn spill(&mut self, points: usize, cause: &DBError) {
        let path = self.cfg.spill_dir.join(format!("{}-{}.lp", sanitize(&self.name), crate::clock::now_ns()));
        let res = async {
            tokio::fs::create_dir_all(&self.cfg.spill_dir).await?;
            let mut f = tokio::fs::File::create(&path).await?;
            f.write_all(&self.lines).await?;
            f.sync_all().await
        }
        .await;
        match res {
            Ok(()) => {
                self.stats.points_spilled.add(points as u64);
                error!(sink = %self.name, points, path = %path.display(), cause = %cause, "sink unavailable at stop; batch spilled to file (replay it with curl or the influx CLI)");
            }
            Err(e) => {
                self.stats.points_dropped.add(points as u64);
                error!(sink = %self.name, points, path = %path.display(), error = %e, "could not spill batch at stop; points lost");
            }
        }
    }
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{GapMarker, GapReason, Instrument};
    use crate::plugin::Sink;
    use crate::shutdown_pair;
    use async_trait::async_trait;
    use std::sync::Mutex;

    /// Answers from a script, records what it was given.
    struct ScriptedSink {
        answers: Vec<Result<(), DBError>>,
        writes: Arc<Mutex<Vec<(usize, String)>>>,
    }

    #[async_trait]
    impl Sink for ScriptedSink {
        async fn write(&mut self, lines: &[u8], points: usize) -> Result<(), DBError> {
            self.writes.lock().unwrap().push((points, String::from_utf8_lossy(lines).into_owned()));
            if self.answers.is_empty() {
                Ok(())
            } else {
                self.answers.remove(0)
            }
        }
    }

    fn gap(n: i64) -> DataPacket {
        DataPacket::Gap(GapMarker {
            instrument: Instrument { exchange: "x", market: "spot", symbol: Arc::from("S") },
            reason: GapReason::SequenceBreak,
            last_id: None,
            next_id: None,
            recv_time_ns: n,
        })
    }

    async fn run_with(answers: Vec<Result<(), DBError>>, packets: usize, cfg: BufferConfig) -> (Arc<SinkStats>, Vec<(usize, String)>) {
        let stats = Arc::new(SinkStats::default());
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = packet_channel("t", cfg.capacity, stats.clone());
        let buffer = Buffer::new("t", Box::new(ScriptedSink { answers, writes: writes.clone() }), cfg, stats.clone(), rx);
        let (trigger, shutdown) = shutdown_pair();
        let task = tokio::spawn(buffer.run(shutdown));
        for i in 0..packets {
            assert!(tx.send(gap(i as i64 + 1)));
        }
        trigger.trigger();
        drop(tx);
        task.await.unwrap();
        let w = writes.lock().unwrap().clone();
        (stats, w)
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_rejection_counts_quarantined_and_written_points() {
        let (stats, writes) = run_with(vec![Err(DBError::Rejected { reason: "bad line".into(), quarantined: 1 })], 3, BufferConfig::default()).await;
        assert_eq!(writes.len(), 1, "a rejected batch is not retried");
        assert_eq!(stats.points_quarantined.get(), 1);
        assert_eq!(stats.points_written.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn temporary_failures_are_retried_until_written() {
        let busy = || Err(DBError::Retryable { reason: "503".into(), retry_after: None });
        let (stats, writes) = run_with(vec![busy(), busy()], 4, BufferConfig::default()).await;
        assert_eq!(writes.len(), 3);
        assert_eq!(writes[2].0, 4);
        assert_eq!(stats.points_written.get(), 4);
        assert_eq!(stats.retries.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sink_still_down_at_the_stop_deadline_spills_to_a_file() {
        let dir = std::env::temp_dir().join(format!("ds-spill-test-{}", std::process::id()));
        let down = (0..1000).map(|_| Err(DBError::Retryable { reason: "down".into(), retry_after: None })).collect();
        let cfg = BufferConfig { spill_dir: dir.clone(), stop_deadline: Duration::from_secs(5), ..BufferConfig::default() };
        let (stats, _) = run_with(down, 5, cfg).await;
        assert_eq!(stats.points_spilled.get(), 5);
        assert_eq!(stats.points_written.get(), 0);
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(files.len(), 1);
        let text = std::fs::read_to_string(files[0].path()).unwrap();
        assert_eq!(text.lines().filter(|l| l.starts_with("book_gap,")).count(), 5);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_full_buffer_drops_and_counts_instead_of_waiting() {
        let stats = Arc::new(SinkStats::default());
        let (tx, _rx) = packet_channel("t", 2, stats.clone());
        assert!(tx.send(gap(1)));
        assert!(tx.send(gap(2)));
        assert!(!tx.send(gap(3)), "third packet does not fit");
        assert_eq!(stats.points_dropped.get(), 1);
    }
}
