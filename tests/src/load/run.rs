//! One load run, start to finish: mock and endpoint up, the service started against them,
//! warm-up until every symbol has its first snapshot, a measurement window of fixed length,
//! then stop generating, let the last batches drain, SIGTERM, and tally.
//!
//! Every wait is bounded (warm-up, window, drain, stop), so a run ends by itself within
//! `warmup_max + settle + seconds + flush + 30 s (stop deadline) + a few seconds` (with
//! `--floor`, before that at most 30 s to connect, `settle + seconds`, 30 s to stop and 10 s
//! for the mock to let go), whatever the service does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::args::{LoadArgs, STOP_DEADLINE};
use super::endpoint::{Backend, Endpoint};
use super::exchange::LoadExchange;
use super::levels::LevelSampler;
use super::procstat;
use super::service::{Service, ServiceConfig};
use super::summary::{Floor, Summary};

const POLL: Duration = Duration::from_millis(100);

/// What a run produced: the figures, and why it failed, if it did.
pub struct Outcome {
    pub summary: Summary,
    pub failure: Option<String>,
    /// The run directory (config, service log), kept when the run failed or when asked.
    pub dir: Option<PathBuf>,
}

/// Runs the load test. `Err` only when it could not start at all (bad arguments, no binary,
/// no InfluxDB); a run that started always yields an [`Outcome`].
pub async fn run(args: &LoadArgs) -> Result<Outcome, String> {
    args.validate()?;
    let binary = args.binary();
    if !binary.is_file() {
        return Err(format!(
            "data-storage binary not found at {} (build it: cargo build --release -p data-storage; or pass --data-storage)",
            binary.display()
        ));
    }
    let dir = std::env::temp_dir().join(format!(
        "ds-load-{}-{}",
        std::process::id(),
        super::now_ms()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

    let (backend, influxd_pid) = match &args.influx {
        Some(url) => {
            create_database(url, &args.database).await?;
            let port = reqwest::Url::parse(url)
                .ok()
                .and_then(|u| u.port_or_known_default());
            let pid = args
                .influxd_pid
                .or_else(|| port.and_then(procstat::pid_listening_on));
            if pid.is_none() {
                eprintln!("ds-load: influxd's pid not found (pass --influxd-pid): its CPU is not reported");
            }
            (Backend::Proxy(url.clone()), pid)
        }
        None => (Backend::Null, None),
    };
    let ticks = procstat::clock_ticks();
    let exchange = LoadExchange::start(
        args.symbols as usize,
        args.rate,
        args.book_depth as usize,
        LevelSampler::new(args.levels),
        args.seed,
    )
    .await
    .map_err(|e| format!("cannot start the mock exchange: {e}"))?;
    let endpoint = Endpoint::start(backend)
        .await
        .map_err(|e| format!("cannot start the endpoint: {e}"))?;
    let symbols = exchange.symbols();
    let sink_url = endpoint.url();
    let rest_url = exchange.rest_url();
    let config = ServiceConfig {
        ws_url: exchange.ws_url(),
        rest_url: &rest_url,
        symbols: &symbols,
        sink_url: &sink_url,
        database: &args.database,
        flush_interval_ms: args.flush_ms,
        batch_points: args.batch_points,
        gzip: !args.no_gzip,
        snapshot_limit: args.snapshot_limit,
        dir: &dir,
    };
    let floor = if args.floor {
        Some(measure_floor(&args.floor_binary(), &config, args, &exchange, ticks).await?)
    } else {
        None
    };
    let mut service = Service::start(&binary, &config).map_err(|e| e.to_string())?;
    let pid = service.pid();
    let mut summary = Summary {
        symbols: args.symbols,
        rate: args.rate,
        sink: if args.influx.is_some() {
            "influxdb".into()
        } else {
            "null".into()
        },
        flush_ms: args.flush_ms,
        floor,
        ..Summary::default()
    };
    let mut failure = None;

    // Warm-up: every symbol has had its snapshot served and every snapshot level has reached
    // the store (the start-up burst is over, so the window measures the steady state), then
    // `settle` more seconds.
    let started = Instant::now();
    let warmup_max = Duration::from_secs(args.warmup_max);
    let warming = || {
        exchange.synced() < u64::from(args.symbols)
            || endpoint.counts().snapshots < exchange.snapshot_levels_served()
    };
    while warming() && started.elapsed() < warmup_max {
        if let Some(status) = service.exited() {
            failure = Some(format!("data-storage exited during warm-up ({status})"));
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    if failure.is_none() {
        failure = sleep_watching(&mut service, Duration::from_secs(args.settle)).await;
    }
    summary.warmup_s = started.elapsed().as_secs_f64();
    summary.synced = exchange.synced();
    if failure.is_none() && warming() {
        eprintln!(
            "ds-load: after {} s, {} of {} symbols synced and {} of {} snapshot points stored; measuring anyway",
            args.warmup_max,
            summary.synced,
            args.symbols,
            endpoint.counts().snapshots,
            exchange.snapshot_levels_served()
        );
    }

    // The measurement window.
    summary.load_avg_1m = load_average();
    let me = std::process::id();
    let cpu = |p: u32| procstat::cpu_sample(p, ticks);
    let used = |a: Option<procstat::CpuSample>, b: Option<procstat::CpuSample>| a.zip(b).map(|(a, b)| procstat::cpu_between(a, b, ticks));
    let (x0, e0) = (exchange.counts(), endpoint.counts());
    let (ds0, tool0) = (cpu(pid), cpu(me));
    let influx0 = influxd_pid.and_then(cpu);
    endpoint.set_window_start(super::now_ms());
    let window_start = Instant::now();
    if failure.is_none() {
        failure = sleep_watching(&mut service, Duration::from_secs(args.seconds)).await;
    }
    endpoint.set_window_end(super::now_ms());
    summary.window_s = window_start.elapsed().as_secs_f64();
    let (x1, e1) = (exchange.counts(), endpoint.counts());
    summary.ds_cpu_s = used(ds0, cpu(pid)).unwrap_or(0.0);
    summary.tool_cpu_s = used(tool0, cpu(me)).unwrap_or(0.0);
    summary.influxd_cpu_s = used(influx0, influxd_pid.and_then(cpu));
    if let Some(m) = procstat::memory(pid) {
        summary.ds_rss = m.rss;
        summary.ds_peak_rss = m.peak;
    }
    summary.frames = x1.frames_sent - x0.frames_sent;
    summary.levels = x1.levels_sent - x0.levels_sent;
    summary.ticks_missed = x1.ticks_missed - x0.ticks_missed;
    summary.points = e1.lines - e0.lines;
    summary.writes = e1.writes - e0.writes;

    // Stop generating, let the last frames reach the store, then stop the service.
    exchange.stop();
    if failure.is_none() {
        failure = sleep_watching(&mut service, Duration::from_millis(args.flush_ms + 1500)).await;
    }
    match service.stop(STOP_DEADLINE).await {
        Ok(status) if status.success() => summary.exit = "clean".into(),
        Ok(status) => {
            summary.exit = format!(
                "failed({})",
                status.code().map_or("signal".into(), |c| c.to_string())
            );
            failure
                .get_or_insert_with(|| format!("data-storage exited with {status} after SIGTERM"));
        }
        Err(e) => {
            summary.exit = "hung".into();
            failure.get_or_insert(e);
        }
    }
    // The endpoint counts writes after answering them: let it finish.
    if !endpoint.settle(Duration::from_secs(30)).await {
        failure
            .get_or_insert_with(|| "the endpoint could not count every write within 30 s".into());
    }
    let end = endpoint.counts();
    let latency = endpoint.latency();
    summary.latency_frames = latency.count();
    summary.lat_p50_ms = latency.quantile(0.50);
    summary.lat_p99_ms = latency.quantile(0.99);
    summary.lat_max_ms = latency.max();
    summary.expected_deltas = exchange.levels_after_snapshot();
    summary.stored_deltas = end.deltas;
    summary.spooled_deltas = spooled_deltas(&dir.join("spool"));
    summary.ds_dropped = service.points_dropped();
    summary.gaps = end.gaps;
    summary.invalid = end.invalid;
    summary.failed_writes = end.failed_writes;

    if failure.is_none() {
        if summary.frames == 0 {
            failure = Some("the mock sent no frame in the window".into());
        } else if summary.points == 0 {
            failure = Some("nothing was written to the endpoint in the window".into());
        } else if end.failed_writes > 0 {
            failure = Some(format!("{} writes were refused", end.failed_writes));
        }
    }
    if let Some(why) = &failure {
        eprintln!(
            "ds-load: FAILED: {why}\n--- last lines of {} ---\n{}",
            service.log.display(),
            service.log_tail(30)
        );
    }
    let keep = failure.is_some() || args.keep_dir;
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else if !args.keep_dir {
        // A failed run keeps its config and log for the post-mortem, not its spool: an
        // overloaded run can leave gigabytes there.
        let _ = std::fs::remove_dir_all(dir.join("spool"));
    }
    Ok(Outcome {
        summary,
        failure,
        dir: keep.then_some(dir),
    })
}

/// Sleeps `d`, returning early with a failure if the service exits meanwhile.
async fn sleep_watching(service: &mut Service, d: Duration) -> Option<String> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if let Some(status) = service.exited() {
            return Some(format!("{} exited during the run ({status})", service.name));
        }
        tokio::time::sleep(POLL.min(until.saturating_duration_since(Instant::now()))).await;
    }
    None
}

/// `--floor`: `ds-floor` in the service's place, on the same mock with the same config, for a
/// window as long as the service's once its connections are open and `settle` seconds have
/// passed; then stopped as the service is. It runs before the service, so its frames precede
/// every snapshot and count in none of the service's figures.
async fn measure_floor(
    binary: &Path,
    config: &ServiceConfig<'_>,
    args: &LoadArgs,
    exchange: &LoadExchange,
    ticks: f64,
) -> Result<Floor, String> {
    if !binary.is_file() {
        return Err(format!(
            "ds-floor not found at {} (build it: cargo build --release -p ds-tests --bin ds-floor)",
            binary.display()
        ));
    }
    let opened_before = exchange.connections();
    let mut reader = Service::start(binary, config).map_err(|e| e.to_string())?;
    let connections = super::floor::connection_urls(&config.dir.join("exchanges.toml"))?.len() as u64;
    let failed = |reader: &Service, why: String| format!("floor: {why}\n{}", reader.log_tail(10));
    let until = Instant::now() + Duration::from_secs(30);
    while exchange.connections() < opened_before + connections {
        if let Some(status) = reader.exited() {
            return Err(failed(&reader, format!("ds-floor exited before connecting ({status})")));
        }
        if Instant::now() > until {
            return Err(failed(&reader, "ds-floor did not open its connections within 30 s".into()));
        }
        tokio::time::sleep(POLL).await;
    }
    if let Some(why) = sleep_watching(&mut reader, Duration::from_secs(args.settle)).await {
        return Err(failed(&reader, why));
    }
    let pid = reader.pid();
    let (x0, cpu0) = (exchange.counts(), procstat::cpu_sample(pid, ticks));
    let window_start = Instant::now();
    if let Some(why) = sleep_watching(&mut reader, Duration::from_secs(args.seconds)).await {
        return Err(failed(&reader, why));
    }
    let (x1, cpu1) = (exchange.counts(), procstat::cpu_sample(pid, ticks));
    let window_s = window_start.elapsed().as_secs_f64();
    let rss = procstat::memory(pid).map_or(0, |m| m.rss);
    match reader.stop(STOP_DEADLINE).await {
        Ok(status) if status.success() => {}
        Ok(status) => return Err(failed(&reader, format!("ds-floor exited with {status} after SIGTERM"))),
        Err(e) => return Err(failed(&reader, e)),
    }
    // A connection's task generates frames until it notices its peer has gone: wait for that,
    // so that no frame of the floor's advances a book after the service's snapshot of it.
    let until = Instant::now() + Duration::from_secs(10);
    while exchange.open_connections() > 0 {
        if Instant::now() > until {
            return Err("floor: the mock still serves ds-floor's connections 10 s after its stop".into());
        }
        tokio::time::sleep(POLL).await;
    }
    let cpu_s = cpu0
        .zip(cpu1)
        .map(|(a, b)| procstat::cpu_between(a, b, ticks))
        .ok_or_else(|| failed(&reader, "ds-floor's CPU time could not be read".into()))?;
    Ok(Floor {
        window_s,
        frames: x1.frames_sent - x0.frames_sent,
        cpu_s,
        rss,
    })
}

/// `book_delta` lines left in the service's spool (`*.lp` files under `dir`): points it kept
/// on disk at the stop because the sink was behind; stored at its next start, not lost.
fn spooled_deltas(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            n += spooled_deltas(&path);
        } else if path.extension().is_some_and(|e| e == "lp") {
            let text = std::fs::read(&path).unwrap_or_default();
            n += text
                .split(|&b| b == b'\n')
                .filter(|l| l.starts_with(b"book_delta,"))
                .count() as u64;
        }
    }
    n
}

/// `CREATE DATABASE` (idempotent in InfluxDB 1.x).
async fn create_database(url: &str, db: &str) -> Result<(), String> {
    if db.is_empty() || !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "--database must be letters, digits and _, got {db:?}"
        ));
    }
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/query?q=CREATE+DATABASE+{db}",
            url.trim_end_matches('/')
        ))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("InfluxDB at {url} unreachable: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "CREATE DATABASE {db} at {url}: HTTP {}",
            resp.status()
        ))
    }
}

/// The 1-minute load average, to say how busy the machine was.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
