//! The seed's Buffer: packets in, batches of line protocol out, one per sink, with a bounded
//! on-disk spool behind it so that neither a slow nor an absent sink loses data or stalls a
//! websocket read loop (contract 5).
//!
//! ```text
//! listeners --try_send--> channel --encoder--> memory queue --writer--> sink
//!                          (bounded)      \                  /
//!                                          +--> spool (disk) +
//! ```
//!
//! Improvements on the seed, and why:
//! - listeners hand packets over with `try_send` on a bounded channel, so a read loop never
//!   waits; the encoder drains that channel continuously whatever the sink does;
//! - a batch is cut when it is full *and* on a flush interval, so a quiet feed still reaches the
//!   store within `flush_interval`; encoding goes straight into one byte buffer;
//! - while the sink keeps up, batches pass through a small memory queue; as soon as a write
//!   fails (or the queue is full) batches go to the on-disk [`Spool`] instead, in order, and
//!   the writer drains the spool once the sink is back. The spool survives a restart (kill -9
//!   included): on a crash during an outage only the packets not yet cut into a batch (at most
//!   one `flush_interval`) and the channel's content are lost, since every spooled batch is
//!   fsynced before it counts;
//! - when the spool is full, the configured [`SpoolFull`] policy drops the oldest or the newest
//!   data, every dropped point counted (`points_dropped`) and logged;
//! - at stop, the writer keeps going until the stop deadline, then leaves what remains in the
//!   spool for the next start: nothing goes to the floor (contract 6).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::error::DBError;
use crate::line_protocol::LineProtocol;
use crate::packet::DataPacket;
use crate::plugin::Sink;
use crate::shutdown::Shutdown;
use crate::spool::{Pushed, Spool, SpoolFull};
use crate::clock::now_ns;
use crate::stats::{FeedStats, RateLimit, SinkStats};

/// Points per write: InfluxDB's own guidance is 5,000-10,000 lines per request.
pub const DEFAULT_BATCH_POINTS: usize = 5_000;
/// Longest a point waits in memory before it is cut into a batch.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Packets the channel holds while the encoder is busy (a spool fsync, say): a few seconds of
/// the whole market's frames, a few MB.
pub const DEFAULT_CAPACITY: usize = 16_384;
/// How long the stop keeps writing to the sink before leaving the rest in the spool.
pub const DEFAULT_STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Batches kept in memory while the sink keeps up: one being written, one being filled behind
/// it; more would only put more at risk on a crash (a slower sink is what the spool is for).
pub const DEFAULT_MEMORY_BATCHES: usize = 2;
/// Disk the spool of one sink may use: about an hour of the whole market at full depth.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct BufferConfig {
    pub batch_points: usize,
    pub flush_interval: Duration,
    pub capacity: usize,
    pub stop_deadline: Duration,
    pub memory_batches: usize,
    /// This sink's spool directory (the host uses `<service.spool_dir>/<sink name>`).
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub spool_full: SpoolFull,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            batch_points: DEFAULT_BATCH_POINTS,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            capacity: DEFAULT_CAPACITY,
            stop_deadline: DEFAULT_STOP_DEADLINE,
            memory_batches: DEFAULT_MEMORY_BATCHES,
            spool_dir: PathBuf::from("data/spool/default"),
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            spool_full: SpoolFull::DropOldest,
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
    /// The feed this sender was given to ([`PacketSender::for_feed`]): its exchange-to-receive
    /// latency is observed here, the one place every connector's packets pass through, so
    /// no connector has to remember it and the read loop pays one histogram add per update.
    feed: Option<Arc<FeedStats>>,
}

impl PacketSender {
    /// A sender for one feed: the same channel, observing the feed's update latency.
    pub fn for_feed(&self, feed: Arc<FeedStats>) -> PacketSender {
        PacketSender { feed: Some(feed), ..self.clone() }
    }

    /// Packets the channel can take right now (for load tools and back-pressure metrics).
    pub fn capacity_left(&self) -> usize {
        self.tx.capacity()
    }

    /// Hands a packet to the sink's buffer. Returns false (and counts the points as dropped)
    /// when the channel is full (the encoder cannot keep up, e.g. the spool disk stalls).
    pub fn send(&self, packet: DataPacket) -> bool {
        if let (Some(feed), DataPacket::MI(mi)) = (&self.feed, &packet) {
            if let Some(event_ms) = mi.event_time_ms {
                feed.latency.observe_us(mi.recv_time_ns / 1_000 - event_ms.saturating_mul(1_000));
            }
        }
        let points = packet.point_count() as u64;
        match self.tx.try_send(packet) {
            Ok(()) => true,
            Err(e) => {
                self.stats.points_dropped.add(points);
                if let Some(suppressed) = self.full_log.check() {
                    let why = match e {
                        mpsc::error::TrySendError::Full(_) => "buffer channel full (encoder or spool disk too slow)",
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
    (PacketSender { tx, sink: Arc::from(sink), stats, full_log: Arc::new(RateLimit::default()), feed: None }, rx)
}

/// A batch of line protocol.
#[derive(Debug)]
struct Batch {
    /// Shared, not copied, with the sink that sends it ([`Sink::write_shared`]).
    lines: bytes::Bytes,
    points: usize,
    /// Signals of the [`crate::packet::Lines`] packets in this batch: fired when the sink
    /// stored it, dropped unfired when it goes to the spool (the spool keeps only lines), so
    /// a bus source is never told "stored" for data still waiting.
    acks: Vec<crate::packet::Ack>,
}

impl Batch {
    /// The batch encoded so far, leaving an empty one with room for a full batch of lines.
    fn take(lines: &mut Vec<u8>, points: &mut usize, acks: &mut Vec<crate::packet::Ack>) -> Batch {
        Batch { lines: std::mem::replace(lines, Vec::with_capacity(1 << 20)).into(), points: std::mem::take(points), acks: std::mem::take(acks) }
    }

    /// A batch read back from the spool (which keeps lines and points, no acks).
    fn spooled((lines, points): (Vec<u8>, usize)) -> Batch {
        Batch { lines: lines.into(), points, acks: Vec::new() }
    }
}

/// State shared by the encoder and the writer. Invariant: every batch in `queue` is older
/// than every batch in `spool`, so the writer takes the queue first.
struct Shared {
    queue: VecDeque<Batch>,
    spool: Spool,
    /// False from a failed write until the next successful one: then new batches go to disk.
    healthy: bool,
    /// The encoder has handed over its last batch.
    closed: bool,
}

impl Shared {
    /// A new batch goes to the memory queue: the sink keeps up, nothing older waits on disk,
    /// and the queue has room. Otherwise it goes to the spool.
    fn takes_in_memory(&self, memory_batches: usize) -> bool {
        self.healthy && self.spool.is_empty() && self.queue.len() < memory_batches
    }
}

/// One sink's buffer: an encoder (this task) and a writer task.
pub struct Buffer {
    name: Arc<str>,
    sink: Box<dyn Sink>,
    cfg: BufferConfig,
    stats: Arc<SinkStats>,
    rx: mpsc::Receiver<DataPacket>,
    spool: Spool,
}

struct Handle {
    name: Arc<str>,
    shared: Arc<Mutex<Shared>>,
    wake: Arc<Notify>,
    stats: Arc<SinkStats>,
    memory_batches: usize,
    drop_log: Arc<RateLimit>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl Handle {
    /// Runs `f` on the shared state right here when that is sure to be quick: the lock is free
    /// (a holder may be in the middle of spool I/O, so this never waits for it) and `f` finds
    /// nothing on disk to do (it returns `None`, having changed nothing, when it would need
    /// the spool). Otherwise the caller goes through [`Self::with`]. While the sink keeps up
    /// every step of a batch (queued, taken, written, the queue found empty) is of the memory
    /// queue, and the blocking thread of `with` cost a wakeup and a handover back for each,
    /// four per batch: 7% of the service's CPU at 10 symbols and one write a second, 38% at
    /// ten writes a second (`ds-load`, README "Performance", seventh round).
    fn now<T>(&self, f: impl FnOnce(&mut Shared) -> Option<T>) -> Option<T> {
        let mut guard = match self.shared.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        f(&mut guard)
    }

    /// The next batch as [`Writer::run`] takes it, on a blocking thread: the memory queue, else
    /// the oldest spool file.
    async fn next_from_spool(&self) -> Next {
        self.with(|s, _, name| {
            if let Some(b) = s.queue.pop_front() {
                return Next::Batch(b, Source::Memory);
            }
            match s.spool.read_front() {
                Ok(Some(spooled)) => Next::Batch(Batch::spooled(spooled), Source::Spool),
                Ok(None) if s.closed => Next::Done,
                Ok(None) => Next::Idle,
                Err(e) => {
                    // An unreadable spool file: count it lost and move on.
                    error!(sink = name, error = %e, "cannot read the oldest spool file; skipping it");
                    let _ = s.spool.pop_front_file();
                    Next::Idle
                }
            }
        })
        .await
    }

    /// Runs `f` on the shared state on a blocking thread (spool I/O must not stall the runtime).
    async fn with<T: Send + 'static>(&self, f: impl FnOnce(&mut Shared, &SinkStats, &str) -> T + Send + 'static) -> T {
        let shared = self.shared.clone();
        let stats = self.stats.clone();
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&shared), &stats, &name)).await.expect("buffer state task panicked")
    }

    fn account(stats: &SinkStats, spool: &Spool) {
        stats.spool_points.set(spool.points() as i64);
        stats.spool_bytes.set(spool.bytes() as i64);
    }

    fn log_drop(&self, name: &str, pushed: &Pushed, policy_newest: bool) {
        if pushed.dropped_points > 0 {
            if let Some(suppressed) = self.drop_log.check() {
                let which = if policy_newest { "the newest batch" } else { "the oldest spooled batches" };
                error!(sink = name, points = pushed.dropped_points, batches = pushed.dropped_batches, suppressed, total_dropped = self.stats.points_dropped.get(), "spool full: dropped {which}");
            }
        }
    }

    /// Encoder side: a new batch goes to memory while the sink keeps up, else to the spool.
    async fn hand_off(&self, batch: Batch) {
        let memory_batches = self.memory_batches;
        let mut batch = Some(batch);
        let queued = self.now(|s| s.takes_in_memory(memory_batches).then(|| s.queue.push_back(batch.take().expect("batch present"))));
        if queued.is_some() {
            self.wake.notify_one();
            return;
        }
        let batch = batch.take().expect("batch present");
        let pushed = self
            .with(move |s, stats, name| {
                if s.takes_in_memory(memory_batches) {
                    s.queue.push_back(batch);
                    return None;
                }
                let r = spool_push(s, stats, name, batch, false);
                Handle::account(stats, &s.spool);
                r
            })
            .await;
        if let Some((pushed, newest)) = pushed {
            self.log_drop(&self.name, &pushed, newest);
        }
        self.wake.notify_one();
    }
}

/// Puts a batch into the spool (back, or front when it is older than everything there);
/// counts spooled and dropped points. Returns what the policy did and whether it refused
/// the new batch itself.
fn spool_push(s: &mut Shared, stats: &SinkStats, name: &str, batch: Batch, front: bool) -> Option<(Pushed, bool)> {
    let res = if front { s.spool.push_front(&batch.lines, batch.points) } else { s.spool.push_back(&batch.lines, batch.points) };
    match res {
        Ok(p) => {
            if p.stored {
                stats.points_spooled.add(batch.points as u64);
            }
            stats.points_dropped.add(p.dropped_points as u64);
            let newest = !p.stored;
            Some((p, newest))
        }
        Err(e) => {
            stats.points_dropped.add(batch.points as u64);
            error!(sink = name, points = batch.points, dir = %s.spool.dir().display(), error = %e, "cannot write to the spool; batch lost");
            None
        }
    }
}

/// Where the writer's current batch came from.
enum Source {
    Memory,
    Spool,
}

impl Buffer {
    /// Opens the sink's spool (taking over batches a previous run left there).
    pub fn new(name: &str, sink: Box<dyn Sink>, cfg: BufferConfig, stats: Arc<SinkStats>, rx: mpsc::Receiver<DataPacket>) -> std::io::Result<Self> {
        let spool = Spool::open(&cfg.spool_dir, cfg.spool_max_bytes, cfg.spool_full)?;
        if !spool.is_empty() {
            info!(sink = name, points = spool.points(), batches = spool.len(), dir = %cfg.spool_dir.display(), "spooled data from a previous run: writing it first");
        }
        stats.spool_points.set(spool.points() as i64);
        stats.spool_bytes.set(spool.bytes() as i64);
        Ok(Buffer { name: Arc::from(name), sink, cfg, stats, rx, spool })
    }

    /// Runs until every sender is gone (the listeners stopped) and the writer is done: all
    /// written, or the stop deadline passed and the rest is in the spool.
    pub async fn run(self, shutdown: Shutdown) {
        let Buffer { name, sink, cfg, stats, mut rx, spool } = self;
        let handle = Handle {
            name: name.clone(),
            shared: Arc::new(Mutex::new(Shared { queue: VecDeque::new(), spool, healthy: true, closed: false })),
            wake: Arc::new(Notify::new()),
            stats: stats.clone(),
            memory_batches: cfg.memory_batches.max(1),
            drop_log: Arc::new(RateLimit::default()),
        };
        let writer = Writer {
            handle: handle.clone_parts(),
            sink,
            stop_deadline: cfg.stop_deadline,
            shutdown,
        };
        let writer = tokio::spawn(writer.run());

        let mut tick = tokio::time::interval(cfg.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut packets = Vec::with_capacity(1024);
        let mut lines = Vec::with_capacity(1 << 20);
        let mut points = 0usize;
        let mut acks = Vec::new();
        loop {
            let cut = tokio::select! {
                n = rx.recv_many(&mut packets, 1024) => {
                    if n == 0 {
                        break;
                    }
                    for p in packets.drain(..) {
                        points += LineProtocol::encode(&p, &mut lines);
                        if let DataPacket::Lines(crate::packet::Lines { ack: Some(a), .. }) = p {
                            acks.push(a);
                        }
                        // Cut as soon as the batch is full, not after all the packets received
                        // at once (up to 1,024, ten thousand points): batches keep their size,
                        // and `lines` its first allocation instead of growing by copies (1.4%
                        // of the CPU at 1,000 symbols).
                        if points >= cfg.batch_points {
                            handle.hand_off(Batch::take(&mut lines, &mut points, &mut acks)).await;
                        }
                    }
                    false
                }
                _ = tick.tick() => points > 0,
            };
            if cut {
                handle.hand_off(Batch::take(&mut lines, &mut points, &mut acks)).await;
            }
        }
        if points > 0 {
            handle.hand_off(Batch { lines: lines.into(), points, acks }).await;
        }
        handle.with(|s, _, _| s.closed = true).await;
        handle.wake.notify_one();
        if let Err(e) = writer.await {
            error!(sink = %name, error = %e, "writer task failed");
        }
        info!(
            sink = %name,
            points_written = stats.points_written.get(),
            points_quarantined = stats.points_quarantined.get(),
            points_dropped = stats.points_dropped.get(),
            points_left_in_spool = stats.spool_points.get(),
            "sink stopped"
        );
    }
}

impl Handle {
    fn clone_parts(&self) -> Handle {
        Handle {
            name: self.name.clone(),
            shared: self.shared.clone(),
            wake: self.wake.clone(),
            stats: self.stats.clone(),
            memory_batches: self.memory_batches,
            drop_log: self.drop_log.clone(),
        }
    }
}

/// Takes batches (memory queue first, then the spool, oldest first) and writes them.
struct Writer {
    handle: Handle,
    sink: Box<dyn Sink>,
    stop_deadline: Duration,
    shutdown: Shutdown,
}

enum Next {
    Batch(Batch, Source),
    Idle,
    Done,
}

impl Writer {
    async fn run(mut self) {
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            if deadline.is_none() && self.shutdown.is_triggered() {
                deadline = Some(tokio::time::Instant::now() + self.stop_deadline);
            }
            // Memory first, and the idle case without a blocking thread when the spool is
            // empty; reading the spool is for `with`.
            let now = self.handle.now(|s| match s.queue.pop_front() {
                Some(b) => Some(Next::Batch(b, Source::Memory)),
                None if s.spool.is_empty() => Some(if s.closed { Next::Done } else { Next::Idle }),
                None => None,
            });
            let next = match now {
                Some(next) => next,
                None => self.handle.next_from_spool().await,
            };
            match next {
                Next::Done => return,
                Next::Idle => {
                    let mut stop = self.shutdown.clone();
                    tokio::select! {
                        _ = self.handle.wake.notified() => {}
                        _ = stop.wait(), if deadline.is_none() => {}
                    }
                }
                Next::Batch(batch, source) => {
                    if !self.write(batch, source, &mut deadline).await {
                        return;
                    }
                }
            }
        }
    }

    /// Writes one batch until it is stored or quarantined. Returns false when the stop deadline
    /// passed (the batch and everything queued are then in the spool).
    async fn write(&mut self, batch: Batch, mut source: Source, deadline: &mut Option<tokio::time::Instant>) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut batch = Some(batch);
        loop {
            if deadline.is_none() && self.shutdown.is_triggered() {
                *deadline = Some(tokio::time::Instant::now() + self.stop_deadline);
            }
            let b = match batch.as_ref() {
                Some(b) => b,
                None => return true,
            };
            let points = b.points;
            let bytes = b.lines.len() as u64;
            let started = std::time::Instant::now();
            self.handle.stats.write_started.set(now_ns());
            let attempt = match *deadline {
                Some(d) => tokio::time::timeout_at(d, self.sink.write_shared(&b.lines, points))
                    .await
                    .unwrap_or_else(|_| Err(DBError::Retryable { reason: "stop deadline reached".into(), retry_after: None })),
                None => self.sink.write_shared(&b.lines, points).await,
            };
            let stats = &self.handle.stats;
            stats.write_latency.observe(started.elapsed());
            stats.write_started.clear();
            if attempt.is_ok() || matches!(attempt, Err(DBError::Rejected { .. })) {
                stats.last_write_ok.set(now_ns());
                stats.failing_since.clear();
            } else if stats.failing_since.get().is_none() {
                stats.failing_since.set(now_ns());
            }
            let done = match attempt {
                Ok(()) => {
                    stats.points_written.add(points as u64);
                    stats.bytes_written.add(bytes);
                    true
                }
                Err(DBError::Rejected { reason, quarantined }) => {
                    let quarantined = quarantined.min(points);
                    stats.points_quarantined.add(quarantined as u64);
                    stats.points_written.add((points - quarantined) as u64);
                    warn!(sink = %self.handle.name, points, quarantined, %reason, "points refused by the sink and quarantined");
                    true
                }
                Err(e) => {
                    stats.retries.inc();
                    let delay = match &e {
                        DBError::Retryable { retry_after: Some(d), .. } => *d,
                        _ => backoff.next_delay(),
                    };
                    // Move this batch (and the memory queue behind it) to disk: during an
                    // outage only what is not cut into a batch yet stays in memory.
                    if let Source::Memory = source {
                        let b = batch.take().expect("batch present");
                        self.handle
                            .with(move |s, stats, name| {
                                s.healthy = false;
                                let queued: Vec<Batch> = s.queue.drain(..).collect();
                                for q in queued.into_iter().rev() {
                                    spool_push(s, stats, name, q, true);
                                }
                                if let Some((p, _)) = spool_push(s, stats, name, b, true) {
                                    if p.dropped_points > 0 {
                                        error!(sink = name, points = p.dropped_points, "spool full: dropped the oldest batch");
                                    }
                                }
                                Handle::account(stats, &s.spool);
                            })
                            .await;
                        source = Source::Spool;
                        batch = self.handle.with(|s, _, _| s.spool.read_front().ok().flatten().map(Batch::spooled)).await;
                    } else {
                        self.handle.with(|s, _, _| s.healthy = false).await;
                    }
                    if let Some(d) = *deadline {
                        if tokio::time::Instant::now() + delay >= d {
                            info!(sink = %self.handle.name, points_in_spool = stats.spool_points.get(), "stop deadline: the sink is not taking data; the spool keeps it for the next start");
                            return false;
                        }
                    }
                    if matches!(e, DBError::Auth { .. }) {
                        error!(sink = %self.handle.name, error = %e, "sink refuses our credentials; data kept in the spool - fix the token/password");
                    } else {
                        warn!(sink = %self.handle.name, points, error = %e, retry_in_ms = delay.as_millis() as u64, spooled = stats.spool_points.get(), "write failed; data goes to the spool, retrying");
                    }
                    let mut stop = self.shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait(), if deadline.is_none() => {}
                    }
                    false
                }
            };
            if done {
                stats.batches_written.inc();
                for a in batch.take().map(|b| b.acks).unwrap_or_default() {
                    a.fire();
                }
                if let Source::Spool = source {
                    self.handle
                        .with(|s, stats, name| {
                            if let Err(e) = s.spool.pop_front_file() {
                                error!(sink = name, error = %e, "cannot delete a written spool file; it will be sent again (harmless: same points)");
                            }
                            s.healthy = true;
                            Handle::account(stats, &s.spool);
                        })
                        .await;
                } else if self
                    .handle
                    .now(|s| {
                        s.healthy = true;
                        Some(())
                    })
                    .is_none()
                {
                    self.handle.with(|s, _, _| s.healthy = true).await;
                }
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{GapMarker, GapReason, Instrument};
    use crate::plugin::Sink;
    use crate::shutdown_pair;
    use async_trait::async_trait;

    /// Answers from a script (then Ok), records every batch it was given.
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

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ds-buffer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn cfg(dir: &std::path::Path) -> BufferConfig {
        BufferConfig { spool_dir: dir.to_path_buf(), batch_points: 2, flush_interval: Duration::from_millis(20), stop_deadline: Duration::from_millis(500), ..BufferConfig::default() }
    }

    fn busy() -> Result<(), DBError> {
        Err(DBError::Retryable { reason: "503".into(), retry_after: Some(Duration::from_millis(30)) })
    }

    /// Feeds packets with timestamps `first..first+n`, then stops; returns stats and writes.
    async fn run_with(answers: Vec<Result<(), DBError>>, first: i64, n: usize, cfg: BufferConfig) -> (Arc<SinkStats>, Vec<(usize, String)>) {
        let stats = Arc::new(SinkStats::default());
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = packet_channel("t", cfg.capacity, stats.clone());
        let buffer = Buffer::new("t", Box::new(ScriptedSink { answers, writes: writes.clone() }), cfg, stats.clone(), rx).unwrap();
        let (trigger, shutdown) = shutdown_pair();
        let task = tokio::spawn(buffer.run(shutdown));
        for i in 0..n {
            assert!(tx.send(gap(first + i as i64)));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Give the writer a moment before the stop, like a running service.
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.trigger();
        drop(tx);
        task.await.unwrap();
        let w = writes.lock().unwrap().clone();
        (stats, w)
    }

    /// Packets that arrive at once (one `recv_many`) are cut into batches of `batch_points` as
    /// they are encoded, not after all of them: no batch holds more than `batch_points` points
    /// (one-point packets here), and every point is written, in order.
    #[tokio::test]
    async fn a_burst_of_packets_is_cut_at_the_batch_size() {
        let dir = temp_dir("burst");
        let stats = Arc::new(SinkStats::default());
        let writes = Arc::new(Mutex::new(Vec::new()));
        let c = BufferConfig { batch_points: 10, flush_interval: Duration::from_secs(3600), ..cfg(&dir) };
        let (tx, rx) = packet_channel("t", c.capacity, stats.clone());
        // All sent before the buffer runs, so its first receive takes them together.
        for i in 0..95 {
            assert!(tx.send(gap(i)));
        }
        let buffer = Buffer::new("t", Box::new(ScriptedSink { answers: vec![], writes: writes.clone() }), c, stats.clone(), rx).unwrap();
        let (trigger, shutdown) = shutdown_pair();
        let task = tokio::spawn(buffer.run(shutdown));
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.trigger();
        drop(tx);
        task.await.unwrap();
        let w = writes.lock().unwrap().clone();
        let sizes: Vec<usize> = w.iter().map(|(n, _)| *n).collect();
        assert_eq!(sizes, [10, 10, 10, 10, 10, 10, 10, 10, 10, 5], "{sizes:?}");
        let stamps: Vec<i64> = w.iter().flat_map(|(_, l)| l.lines().map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap()).collect::<Vec<_>>()).collect();
        assert_eq!(stamps, (0..95).collect::<Vec<i64>>());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Lines from a bus source pass verbatim; their ack fires only after the sink stored the
    /// batch, and is dropped unfired when the batch went to the spool instead.
    #[tokio::test]
    async fn lines_are_written_verbatim_and_acked_only_once_stored() {
        use crate::packet::{Ack, Lines};
        for (answers, acked) in [(vec![], true), (vec![busy()], false)] {
            let dir = temp_dir(if acked { "lines-ok" } else { "lines-spooled" });
            let stats = Arc::new(SinkStats::default());
            let writes = Arc::new(Mutex::new(Vec::new()));
            let c = BufferConfig { batch_points: 2, ..cfg(&dir) };
            let (tx, rx) = packet_channel("t", c.capacity, stats.clone());
            let buffer = Buffer::new("t", Box::new(ScriptedSink { answers, writes: writes.clone() }), c, stats.clone(), rx).unwrap();
            let (trigger, shutdown) = shutdown_pair();
            let task = tokio::spawn(buffer.run(shutdown));
            let (ack, rx_ack) = Ack::pair();
            let lines: Arc<[u8]> = Arc::from(&b"m,exchange=x v=1 1\nm,exchange=x v=2 2\n"[..]);
            assert!(tx.send(DataPacket::Lines(Lines { lines: lines.clone(), points: 2, ack: Some(ack) })));
            let fired = tokio::time::timeout(Duration::from_secs(2), rx_ack).await;
            trigger.trigger();
            drop(tx);
            task.await.unwrap();
            let w = writes.lock().unwrap().clone();
            assert!(w.iter().any(|(n, l)| *n == 2 && l.as_bytes() == &lines[..]), "written verbatim: {w:?}");
            assert_eq!(matches!(fired, Ok(Ok(()))), acked, "ack fired: {fired:?}");
            assert_eq!(stats.points_written.get(), 2);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// The timestamps of every line written, in write order.
    fn written_times(writes: &[(usize, String)]) -> Vec<i64> {
        writes.iter().flat_map(|(_, text)| text.lines().map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap()).collect::<Vec<_>>()).collect()
    }

    #[tokio::test]
    async fn a_partial_rejection_counts_quarantined_and_written_points() {
        let dir = temp_dir("partial");
        let answers = vec![Err(DBError::Rejected { reason: "bad line".into(), quarantined: 1 })];
        let (stats, writes) = run_with(answers, 1, 2, cfg(&dir)).await;
        assert_eq!(writes.iter().map(|w| w.0).sum::<usize>(), 2, "a rejected batch is not retried");
        assert_eq!(stats.points_quarantined.get(), 1);
        assert_eq!(stats.points_written.get(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_outage_goes_through_the_spool_and_arrives_complete_and_in_order() {
        let dir = temp_dir("outage");
        let answers = (0..8).map(|_| busy()).collect();
        let (stats, writes) = run_with(answers, 1, 40, cfg(&dir)).await;
        let ok: Vec<_> = written_times(&writes[8..]);
        assert_eq!(ok, (1..=40).collect::<Vec<i64>>(), "every point once, in order, after the outage");
        assert_eq!(stats.points_written.get(), 40);
        assert!(stats.points_spooled.get() >= 2, "failed batches went to disk");
        assert_eq!(stats.spool_points.get(), 0, "spool drained");
        assert_eq!(stats.points_dropped.get(), 0);
        assert_eq!(stats.retries.get(), 8);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_sink_still_down_at_the_stop_keeps_everything_in_the_spool_for_the_next_start() {
        let dir = temp_dir("restart");
        let down = (0..10_000).map(|_| busy()).collect();
        let (stats, _) = run_with(down, 1, 10, cfg(&dir)).await;
        assert_eq!(stats.points_written.get(), 0);
        assert_eq!(stats.spool_points.get(), 10, "all ten points wait on disk");
        let spool = Spool::open(&dir, u64::MAX, SpoolFull::DropOldest).unwrap();
        assert_eq!(spool.points(), 10);

        // Next start: the spooled points go first, then the new ones, in order.
        let (stats, writes) = run_with(vec![], 11, 4, cfg(&dir)).await;
        assert_eq!(written_times(&writes), (1..=14).collect::<Vec<i64>>());
        assert_eq!(stats.points_written.get(), 14);
        assert_eq!(stats.spool_points.get(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_full_spool_applies_the_policy_and_counts_every_dropped_point() {
        for policy in [SpoolFull::DropOldest, SpoolFull::DropNewest] {
            let dir = temp_dir(&format!("full-{policy:?}"));
            // One batch of two gap points is ~150 bytes: room for about three.
            let cfg = BufferConfig { spool_max_bytes: 500, spool_full: policy, ..cfg(&dir) };
            let (down, total) = ((0..10_000).map(|_| busy()).collect(), 30);
            let (stats, _) = run_with(down, 1, total, cfg).await;
            let kept = stats.spool_points.get() as u64;
            assert!(kept > 0 && kept < total as u64, "{policy:?}: spool bounded: {kept}");
            assert_eq!(kept + stats.points_dropped.get(), total as u64, "{policy:?}: every point is either kept or counted as dropped");
            let spool = Spool::open(&dir, u64::MAX, policy).unwrap();
            let (first, _) = spool.read_front().unwrap().unwrap();
            let first_ts: i64 = String::from_utf8(first).unwrap().lines().next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
            match policy {
                SpoolFull::DropOldest => assert!(first_ts > 1, "the oldest data went"),
                SpoolFull::DropNewest => assert_eq!(first_ts, 1, "the oldest data stayed"),
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[tokio::test]
    async fn a_full_channel_drops_and_counts_instead_of_waiting() {
        let stats = Arc::new(SinkStats::default());
        let (tx, _rx) = packet_channel("t", 2, stats.clone());
        assert!(tx.send(gap(1)));
        assert!(tx.send(gap(2)));
        assert!(!tx.send(gap(3)), "third packet does not fit");
        assert_eq!(stats.points_dropped.get(), 1);
    }
}
