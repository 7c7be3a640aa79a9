//! The `data-storage` binary as an operator uses it: `plugins`, `check`, `run` with SIGTERM
//! and SIGINT, against the mock exchange on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ds_tests::binance::{MockBinance, MockBinanceConfig};
use ds_tests::book::binance_reference;

const BIN: &str = env!("CARGO_BIN_EXE_data-storage");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).current_dir(workspace()).output().expect("run data-storage")
}

/// Package names of every crate under `dir` (connectors/ or sinks/).
fn crates_under(dir: &str) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(workspace().join(dir)).unwrap().flatten() {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else { continue };
        let table: toml::Table = text.parse().unwrap();
        names.push(table["package"]["name"].as_str().unwrap().to_string());
    }
    assert!(!names.is_empty(), "no crate under {dir}");
    names
}

#[test]
fn every_plugin_crate_is_registered() {
    let out = run(&["plugins"]);
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).unwrap();
    let (connectors, sinks) = listing.split_once("sinks:").expect("two sections");
    for name in crates_under("connectors") {
        assert!(connectors.contains(&format!(" {name} ")), "connector crate {name} registers nothing:\n{listing}");
    }
    for name in crates_under("sinks") {
        assert!(sinks.contains(&format!(" {name} ")), "sink crate {name} registers nothing:\n{listing}");
    }
    assert!(connectors.contains("binance_spot_depth"));
    assert!(sinks.contains("influxdb") && sinks.contains("file"));
}

#[test]
fn check_accepts_the_shipped_config() {
    let out = run(&["check", "--config", "exchanges.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

#[test]
fn check_reports_every_error_with_exit_code_2_and_connects_nowhere() {
    // Endpoints point at a listener that records any connection attempt.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.set_nonblocking(true).unwrap();
    let port = probe.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[feed]]
name = "good-but-points-at-probe"
connector = "binance_spot_depth"
symbols = "all"
sink = "files"
ws_url = "ws://127.0.0.1:{port}"
rest_url = "http://127.0.0.1:{port}"

[[feed]]
name = "typo"
connector = "binance_spot_depht"
symbols = ["BTCUSDT"]
sink = "missing"

[[feed]]
name = "bad-keys"
connector = "binance_spot_depth"
symbols = ["BTCUSDT"]
sink = "files"
snapshot_limit = "lots"
colour = "blue"

[[sink]]
name = "files"
plugin = "file"
dir = "{dir}"

[[sink]]
name = "db"
plugin = "influxdb"
api = "v3"
"#,
            dir = dir.path().display()
        ),
    )
    .unwrap();
    let out = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    for want in [
        "feed \"typo\": key `connector`: unknown connector \"binance_spot_depht\"",
        "feed \"typo\": key `sink`: no [[sink]] named \"missing\"",
        "feed \"bad-keys\": key `snapshot_limit`: invalid type",
        "feed \"bad-keys\": key `colour`: unknown key",
        "sink \"db\": key `api`",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
    assert!(probe.accept().is_err(), "check must not connect anywhere");
    // `run` rejects the same file the same way, before any connection.
    let out = run(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(probe.accept().is_err(), "run must not connect with an invalid config");
}

/// Starts the binary with `config` (written to a temp dir), stdout captured.
fn spawn(dir: &Path, config: &str) -> Child {
    let path = dir.join("exchanges.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn data-storage")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig}");
}

/// Waits for exit (bounded), returning the output.
fn wait_exit(mut child: Child, within: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("data-storage did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn read_data_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in walk(dir) {
        if entry.extension().is_some_and(|e| e == "lp") {
            lines.extend(std::fs::read_to_string(&entry).unwrap().lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(String::from));
        }
    }
    lines
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_flushes_everything_then_exits_0() {
    let Some(cfg) = MockBinanceConfig::from_fixtures("2021-04-04") else { return };
    let symbols = ["BTCUSDT", "ETHUSDT", "DOTUSDT"];
    let expected: usize = symbols.iter().map(|s| binance_reference(&cfg.snapshots[*s], &cfg.frames, s).applied_levels()).sum();
    let mock = MockBinance::start(cfg).await;
    let dir = tempfile::tempdir().unwrap();
    // A flush interval far beyond the test: the data can only reach the files through the
    // drain and flush at stop.
    let config = format!(
        r#"
[service]
log_dir = "logs"
status_interval_secs = 1
[[feed]]
name = "binance"
connector = "binance_spot_depth"
symbols = ["BTCUSDT", "ETHUSDT", "DOTUSDT"]
sink = "files"
ws_url = "{ws}"
rest_url = "{rest}"
[[sink]]
name = "files"
plugin = "file"
dir = "data"
flush_interval_ms = 600000
batch_points = 1000000
"#,
        ws = mock.ws_url(),
        rest = mock.rest_url()
    );
    let child = spawn(dir.path(), &config);
    assert!(mock.wait_all_frames_sent(Duration::from_secs(30)).await, "replay finished");
    // Let the service read what is on the wire (2,688 frames take milliseconds).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(read_data_lines(&dir.path().join("data")).iter().all(|l| !l.starts_with("book_delta")), "nothing flushed before the stop");
    signal(&child, "-TERM");
    let out = wait_exit(child, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "exit code; stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("SIGTERM received") && stdout.contains("stopped cleanly"), "{stdout}");
    assert!(stdout.contains("status feed binance:"), "status line shows the feed: {stdout}");
    assert!(stdout.contains(&format!("totals feed binance: frames {}", mock.frames_sent())), "every frame sent was received: {stdout}");

    let lines = read_data_lines(&dir.path().join("data"));
    let deltas = lines.iter().filter(|l| l.starts_with("book_delta,")).count();
    let snapshots = lines.iter().filter(|l| l.starts_with("book_snapshot,")).count();
    assert_eq!(deltas, expected, "every applied level flushed at stop");
    assert!(snapshots >= 3 * 2000, "three 1000-level snapshots per side: {snapshots}");
    // The log file was written too.
    let logs = walk(&dir.path().join("logs"));
    assert!(logs.iter().any(|p| std::fs::read_to_string(p).unwrap_or_default().contains("data-storage starting")), "log file: {logs:?}");
}

#[test]
fn unreachable_exchange_logs_clearly_and_sigint_stops_with_0() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[service]
log_dir = ""
[[feed]]
name = "binance"
connector = "binance_spot_depth"
symbols = ["BTCUSDT"]
sink = "files"
ws_url = "ws://127.0.0.1:{port}"
rest_url = "http://127.0.0.1:{port}"
[[sink]]
name = "files"
plugin = "file"
dir = "data"
"#
    );
    let child = spawn(dir.path(), &config);
    std::thread::sleep(Duration::from_secs(3));
    signal(&child, "-INT");
    let out = wait_exit(child, Duration::from_secs(15));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let refused = stdout.lines().filter(|l| l.contains("connection lost or refused")).count();
    assert!((2..=8).contains(&refused), "one clear line per backed-off attempt, not a storm: {refused}\n{stdout}");
    assert!(stdout.contains(&format!("ws://127.0.0.1:{port}/stream")), "the log names the endpoint: {stdout}");
}

/// Line-protocol lines of one measurement in every spool file under `dir`.
fn spooled_lines(dir: &Path, measurement: &str) -> usize {
    walk(dir)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "lp"))
        .map(|p| std::fs::read_to_string(p).unwrap().lines().filter(|l| l.starts_with(measurement)).count())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_influxdb_outage_loses_nothing_spooled() {
    let Some(cfg) = MockBinanceConfig::from_fixtures("2021-04-04") else { return };
    let symbols = ["BTCUSDT", "ETHUSDT", "DOTUSDT"];
    let expected: usize = symbols.iter().map(|s| binance_reference(&cfg.snapshots[*s], &cfg.frames, s).applied_levels()).sum();
    let mock = MockBinance::start(cfg).await;
    let dir = tempfile::tempdir().unwrap();
    // InfluxDB is down: its port refuses connections.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = |ws: &str, rest: &str, influx: &str, db: &str| {
        format!(
            r#"
[service]
log_dir = ""
spool_dir = "spool"
[[feed]]
name = "binance"
connector = "binance_spot_depth"
symbols = ["BTCUSDT", "ETHUSDT", "DOTUSDT"]
sink = "influx"
ws_url = "{ws}"
rest_url = "{rest}"
[[sink]]
name = "influx"
plugin = "influxdb"
url = "{influx}"
database = "{db}"
max_retries = 0
flush_interval_ms = 200
"#
        )
    };
    let mut child = spawn(dir.path(), &config(&mock.ws_url(), &mock.rest_url(), &format!("http://127.0.0.1:{down}"), "market"));
    assert!(mock.wait_all_frames_sent(Duration::from_secs(30)).await);
    // Longer than the flush interval: every received point is in a batch, and on disk.
    tokio::time::sleep(Duration::from_secs(2)).await;
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let spooled = spooled_lines(&dir.path().join("spool"), "book_delta,");
    assert_eq!(spooled, expected, "after kill -9 every applied level is in the spool");

    // InfluxDB is back; start again with an exchange that is gone, so only the spool flows.
    let Some(influx) = ds_tests::influxd::InfluxServer::start().await else { return };
    let db = ds_tests::influx::TestDb::create(&influx.url).await;
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gone = format!("127.0.0.1:{gone}");
    let child = spawn(dir.path(), &config(&format!("ws://{gone}"), &format!("http://{gone}"), &influx.url, &db.name));
    let n = db.wait_for_count("book_delta", "", expected as u64, Duration::from_secs(60)).await;
    signal(&child, "-TERM");
    let out = wait_exit(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(n, expected as u64, "the spooled points arrived after the restart");
    assert!(String::from_utf8_lossy(&out.stdout).contains("spooled data from a previous run"));
    assert_eq!(spooled_lines(&dir.path().join("spool"), "book_delta,"), 0, "spool emptied");
    db.cleanup().await;
}

/// Polls the log files under `dir` until one contains `text` (bounded).
fn wait_log(dir: &Path, text: &str, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if walk(dir).iter().any(|p| std::fs::read_to_string(p).unwrap_or_default().contains(text)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// SIGHUP reloads exchanges.toml: a broken file is refused with its errors and the service
/// keeps running; a valid one adds a feed without touching the running one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_refusing_a_broken_file_and_adding_a_feed() {
    let Some(cfg) = MockBinanceConfig::from_fixtures("2021-04-04") else { return };
    let btc = binance_reference(&cfg.snapshots["BTCUSDT"], &cfg.frames, "BTCUSDT").applied_levels();
    let mock = MockBinance::start(MockBinanceConfig { frame_interval: Duration::from_millis(4), resume: true, ..cfg }).await;
    let dir = tempfile::tempdir().unwrap();
    let feed = |name: &str, symbol: &str| {
        format!(
            "[[feed]]\nname = \"{name}\"\nconnector = \"binance_spot_depth\"\nsymbols = [\"{symbol}\"]\nsink = \"files\"\nws_url = \"{}\"\nrest_url = \"{}\"\n",
            mock.ws_url(),
            mock.rest_url()
        )
    };
    let config = |feeds: &str| format!("[service]\nlog_dir = \"logs\"\nstatus_interval_secs = 1\n{feeds}\n[[sink]]\nname = \"files\"\nplugin = \"file\"\ndir = \"data\"\n");
    let child = spawn(dir.path(), &config(&feed("btc", "BTCUSDT")));
    let logs = dir.path().join("logs");
    assert!(wait_log(&logs, "feed starting", Duration::from_secs(20)), "started");

    std::fs::write(dir.path().join("exchanges.toml"), config(&feed("btc", "BTCUSDT")).replace("plugin = \"file\"", "plugin = \"fiel\"")).unwrap();
    signal(&child, "-HUP");
    assert!(wait_log(&logs, "reload rejected", Duration::from_secs(20)), "the broken file is refused");

    std::fs::write(dir.path().join("exchanges.toml"), config(&(feed("btc", "BTCUSDT") + &feed("eth", "ETHUSDT")))).unwrap();
    signal(&child, "-HUP");
    assert!(wait_log(&logs, "reload: done", Duration::from_secs(20)), "the valid file is applied");
    assert!(mock.wait_all_frames_sent(Duration::from_secs(60)).await, "replay finished");
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(&child, "-TERM");
    let out = wait_exit(child, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "still running after the refused reload, then stopped cleanly: {stdout}");
    assert_eq!(stdout.matches("SIGHUP received").count(), 2, "{stdout}");
    assert!(stdout.contains("reload rejected: sink \"files\": key `plugin`: unknown sink plugin \"fiel\""), "the error names the sink, the key and the value: {stdout}");
    assert_eq!(stdout.matches("feed starting").count(), 2, "btc started once (never restarted), eth once: {stdout}");

    let lines = read_data_lines(&dir.path().join("data"));
    let deltas = |symbol: &str| lines.iter().filter(|l| l.starts_with("book_delta,") && l.contains(&format!("symbol={symbol}"))).count();
    assert_eq!(deltas("BTCUSDT"), btc, "btc stored every applied level once, across both reloads");
    assert!(deltas("ETHUSDT") > 0, "the added feed stored");
    assert_eq!(mock.depth_requests("BTCUSDT"), 1, "btc never resynced");
}
