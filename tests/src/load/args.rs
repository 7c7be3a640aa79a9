//! The command line of `ds-load`, with the bounds that keep every run finite.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::levels::LevelProfile;

/// Longest measurement window accepted.
pub const MAX_SECONDS: u64 = 600;
/// Longest wait for every symbol's first snapshot to be served and stored.
pub const MAX_WARMUP_SECONDS: u64 = 300;
/// How long the service gets to stop after SIGTERM before it is killed (and the run fails).
pub const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// Load test of data-storage: a generating Binance mock -> data-storage (release binary) ->
/// a null InfluxDB endpoint or a real InfluxDB, all on 127.0.0.1. Prints a report on stderr
/// and one `ds-load: key=value ...` summary line on stdout; exits 0, 2 when it could not start,
/// or 1 when the run failed (service died or did not stop cleanly, nothing stored). Ends within
/// warmup-max + seconds + about 40 s (with --floor, another settle + seconds + at most 70 s).
#[derive(Debug, Clone, Parser)]
#[command(name = "ds-load", version)]
pub struct LoadArgs {
    /// Symbols (books) the mock serves and the service subscribes to.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub symbols: u32,
    /// Frames per second per symbol (Binance's @depth@100ms pushes at most 10).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Length of the measurement window, after warm-up (at most 600).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=MAX_SECONDS))]
    pub seconds: u64,
    /// Longest wait for every symbol's first snapshot to be served and stored before measuring
    /// anyway (at most 300).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=MAX_WARMUP_SECONDS))]
    pub warmup_max: u64,
    /// Seconds to wait after warm-up (every snapshot stored) before the window opens.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub settle: u64,
    /// A real InfluxDB 1.x base URL on 127.0.0.1: writes go through a counting proxy to it.
    /// Without it, a null endpoint answers every write with 204.
    #[arg(long, value_name = "URL")]
    pub influx: Option<String>,
    /// Database for --influx (created if missing).
    #[arg(long, default_value = "ds_load")]
    pub database: String,
    /// Pid of influxd for its CPU figures (default: the process listening on the --influx port).
    #[arg(long)]
    pub influxd_pid: Option<u32>,
    /// The sink's flush_interval_ms.
    #[arg(long, default_value_t = 1000)]
    pub flush_ms: u64,
    /// The sink's batch_points.
    #[arg(long, default_value_t = 5000)]
    pub batch_points: u64,
    /// Send write bodies uncompressed. ds-load asks for gzip unless told not to, as the sink
    /// does by default for a remote InfluxDB (for a loopback one its default is off).
    #[arg(long)]
    pub no_gzip: bool,
    /// Levels per frame: the distribution of busy (major) or quiet (minor) captured books.
    #[arg(long, value_enum, default_value_t = LevelProfile::Major)]
    pub levels: LevelProfile,
    /// Levels per side in each mock book (what a snapshot can return).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub book_depth: u32,
    /// The feed's snapshot_limit.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub snapshot_limit: u32,
    /// The data-storage binary (default: `data-storage` next to this executable).
    #[arg(long, value_name = "PATH")]
    pub data_storage: Option<PathBuf>,
    /// Seed of the generated market (same seed, same frames).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the run directory (config, service log, spool) after a successful run.
    #[arg(long)]
    pub keep_dir: bool,
    /// Before data-storage, run `ds-floor` (next to this executable) in its place for a window
    /// of the same length: a bare reader of the same connections that drops every frame. Its
    /// CPU per frame is the cost of receiving alone; the report gives data-storage's above it.
    #[arg(long)]
    pub floor: bool,
}

impl LoadArgs {
    /// Checks what clap cannot: the rate's range and loopback-only URLs.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rate > 0.0 && self.rate <= 100.0) {
            return Err(format!(
                "--rate must be in (0, 100] frames/s per symbol, got {}",
                self.rate
            ));
        }
        if let Some(url) = &self.influx {
            let u = reqwest::Url::parse(url).map_err(|e| format!("--influx {url}: {e}"))?;
            let host = u.host_str().unwrap_or_default();
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::Ipv4Addr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback || u.scheme() != "http" {
                return Err(format!("--influx must be http:// on 127.0.0.0/8 (load runs stay on this machine), got {url}"));
            }
        }
        if self.flush_ms == 0 || self.batch_points == 0 {
            return Err("--flush-ms and --batch-points must be at least 1".into());
        }
        Ok(())
    }

    /// The data-storage binary to run.
    pub fn binary(&self) -> PathBuf {
        self.data_storage
            .clone()
            .unwrap_or_else(|| beside_this_executable("data-storage"))
    }

    /// The bare reader of `--floor`.
    pub fn floor_binary(&self) -> PathBuf {
        beside_this_executable("ds-floor")
    }
}

fn beside_this_executable(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}
