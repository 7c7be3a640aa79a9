//! Raw capture and `data-storage replay`, end to end (issue 7): a session recorded from the
//! Binance mock through the service into InfluxDB database A, then its capture replayed into
//! database B: both hold the same points, timestamps included. And a replay of the plain
//! fixture file to stdout yields exactly the reference's levels.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use data_storage::replay::{ReplayArgs, NULL_SINK};
use ds_tests::binance::{MockBinance, MockBinanceConfig};
use ds_tests::book::binance_reference;
use ds_tests::influx::{influx_url, RowExt, TestDb};

use crate::binance::SYMBOLS;
use crate::support::{eventually, Service};

/// Every measurement a feed writes.
const MEASUREMENTS: [&str; 5] = ["book_delta", "book_snapshot", "book_gap", "trade", "invalid_frame"];

/// One feed into InfluxDB database `db`, capturing to `capture_dir` when given.
fn config(ws_url: &str, rest_url: &str, db: &TestDb, capture_dir: Option<&Path>, spill: &Path) -> String {
    let symbols: Vec<String> = SYMBOLS.iter().map(|s| format!("\"{s}\"")).collect();
    let capture = capture_dir.map(|d| format!("capture_dir = \"{}\"", d.display())).unwrap_or_default();
    format!(
        r#"
[service]
log_dir = ""
status_interval_secs = 1
spool_dir = "{spill}/spool"

[[feed]]
name = "binance-replay"
connector = "binance_spot_depth"
symbols = [{symbols}]
sink = "influx"
ws_url = "{ws_url}"
rest_url = "{rest_url}"
{capture}

[[sink]]
name = "influx"
plugin = "influxdb"
url = "{url}"
database = "{name}"
flush_interval_ms = 100
quarantine_dir = "{spill}/quarantine"
"#,
        spill = spill.display(),
        symbols = symbols.join(", "),
        url = db.url,
        name = db.name,
    )
}

/// Every point of `measurement`, each as its sorted columns (time, tags, fields), sorted.
async fn points(db: &TestDb, measurement: &str) -> Vec<String> {
    let rows = db.query(&format!("SELECT * FROM {measurement} GROUP BY *")).await;
    let mut v: Vec<String> = rows
        .into_iter()
        .map(|r| serde_json::to_string(&r.into_iter().filter(|(_, v)| !v.is_null()).collect::<BTreeMap<_, _>>()).unwrap())
        .collect();
    v.sort();
    v
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ds-e2e-replay-{tag}-{}-{:x}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// The capture files of feed `feed` joined into one (gzip members concatenate), in name (=
/// time) order.
fn joined_capture(dir: &Path, feed: &str, into: &Path) -> usize {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(&format!("{feed}-")) && name.ends_with(".jsonl.gz")
        })
        .collect();
    files.sort();
    let mut all = Vec::new();
    for f in &files {
        all.extend(std::fs::read(f).unwrap());
    }
    std::fs::write(into, all).unwrap();
    files.len()
}

/// Runs the `replay` command in-process (it has its own runtime, hence a blocking thread).
/// Both databases hold the same points, measurement by measurement, and they are all the
/// `live_points` the live run handed over.
async fn assert_same_points(live: &TestDb, replayed: &TestDb, live_points: u64) {
    let mut total = 0;
    for m in MEASUREMENTS {
        let (a, b) = (points(live, m).await, points(replayed, m).await);
        assert_eq!(a.len(), b.len(), "{m}: as many points replayed as stored live");
        if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
            panic!("{m}: first differing point:\n live   {}\n replay {}", a[i], b[i]);
        }
        total += a.len();
    }
    assert_eq!(total as u64, live_points, "the comparison covered every live point");
}

async fn replay(config_path: &Path, args: ReplayArgs) -> std::process::ExitCode {
    let config_path = config_path.to_path_buf();
    tokio::task::spawn_blocking(move || data_storage::replay::replay(&config_path, &args)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_capture_stores_the_same_points_as_the_live_run() {
    record_then_replay(false).await;
}

/// A frame lost on the wire: the live run stores a gap and resyncs that book from a new REST
/// snapshot; the replay does the same at the same instants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_capture_with_a_gap_and_a_resync_stores_the_same_points() {
    record_then_replay(true).await;
}

async fn record_then_replay(lose_a_frame: bool) {
    let Some(url) = influx_url() else {
        eprintln!("skipping: INFLUXDB_URL not set (run through scripts/test.sh)");
        return;
    };
    let Some(cfg) = MockBinanceConfig::from_fixtures("2021-04-04") else { return };
    let drop_frames: HashSet<usize> = if lose_a_frame {
        let btc = binance_reference(&cfg.snapshots["BTCUSDT"], &cfg.frames, "BTCUSDT");
        [btc.applied[300].index].into()
    } else {
        HashSet::new()
    };
    let mock = MockBinance::start(MockBinanceConfig { ping_interval: Duration::from_millis(300), drop_frames, ..cfg }).await;
    let (live, replayed) = (TestDb::create(&url).await, TestDb::create(&url).await);
    let work = temp_dir("capture");
    let capture_dir = work.join("capture");

    let svc = Service::start(&config(&mock.ws_url(), &mock.rest_url(), &live, Some(&capture_dir), &work.join("live")));
    assert!(mock.wait_all_frames_sent(Duration::from_secs(30)).await, "mock replayed every frame");
    if lose_a_frame {
        let resynced = eventually(Duration::from_secs(60), || {
            let live = &live;
            async move { live.query("SELECT count(distinct(snapshot_id)) FROM book_snapshot WHERE symbol = 'BTCUSDT'").await.first().and_then(|r| r.u64("count")).unwrap_or(0) >= 2 }
        })
        .await;
        assert!(resynced, "BTCUSDT resynced after the lost frame");
    }
    let report = svc.stop().await;
    let feed = &report.stats.feeds[0].1;
    let sink = &report.stats.sinks[0].1;
    assert_eq!(sink.points_written.get(), feed.points.get(), "every live point written");
    assert!(feed.mi.get() > 2_000 && feed.st.get() >= 3, "the live run stored updates and snapshots");

    let input = work.join("session.jsonl.gz");
    assert!(joined_capture(&capture_dir, "binance-replay", &input) >= 1, "a capture file was written");
    let replay_config = work.join("replay.toml");
    std::fs::write(&replay_config, config(&mock.ws_url(), &mock.rest_url(), &replayed, None, &work.join("replayed"))).unwrap();
    let args = ReplayArgs { feed: "binance-replay".into(), input: input.clone(), sink: Some("influx".into()), stdout: false, snapshots: vec![] };
    assert_eq!(replay(&replay_config, args).await, std::process::ExitCode::SUCCESS);

    assert_same_points(&live, &replayed, feed.points.get()).await;
    let gaps = if lose_a_frame { 4 } else { 3 };
    assert_eq!(points(&live, "book_gap").await.len(), gaps, "one shutdown marker per book (and the lost frame's gap)");
    if lose_a_frame {
        assert!(feed.st.get() >= 4, "the live run resynced BTCUSDT from a second snapshot");
    }

    // The null sink replays the same file, storing nothing, and succeeds.
    let args = ReplayArgs { feed: "binance-replay".into(), input, sink: Some(NULL_SINK.into()), stdout: false, snapshots: vec![] };
    assert_eq!(replay(&replay_config, args).await, std::process::ExitCode::SUCCESS);
    live.cleanup().await;
    replayed.cleanup().await;
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test]
async fn a_replay_of_the_fixture_file_yields_the_reference_levels() {
    let Some(cfg) = MockBinanceConfig::from_fixtures("2021-04-04") else { return };
    let Some(dir) = ds_tests::fixtures::fixtures_dir() else { return };
    let frames_file = dir.join("binance/depth_update_combined_2021-04-04.jsonl");
    let work = temp_dir("stdout");
    let config_path = work.join("c.toml");
    std::fs::write(
        &config_path,
        format!(
            "[[feed]]\nname = \"b\"\nconnector = \"binance_spot_depth\"\nsymbols = [\"BTCUSDT\", \"ETHUSDT\", \"DOTUSDT\"]\nsink = \"files\"\n\n[[sink]]\nname = \"files\"\nplugin = \"file\"\ndir = \"{}\"\n",
            work.join("data").display()
        ),
    )
    .unwrap();
    let lp = data_storage::replay::replay_to_lines(&config_path, "b", &frames_file, &SYMBOLS.iter().map(|s| format!("{s}={}", dir.join(format!("binance/rest_depth_snapshot_2021-04-04_{s}.json")).display())).collect::<Vec<_>>())
        .expect("replay");
    for symbol in SYMBOLS {
        let r = binance_reference(&cfg.snapshots[symbol], &cfg.frames, symbol);
        let mut want: Vec<(u64, String, String, String)> =
            r.applied.iter().flat_map(|u| u.levels.iter().map(move |(side, p, q)| (u.final_update_id, side.as_str().to_string(), p.clone(), q.clone()))).collect();
        want.sort();
        let mut got: Vec<(u64, String, String, String)> = lp
            .lines()
            .filter(|l| l.starts_with("book_delta,") && l.contains(&format!(",symbol={symbol} ")))
            .map(|l| {
                let field = |k: &str| l.split([' ', ',']).find_map(|kv| kv.strip_prefix(&format!("{k}="))).unwrap().to_string();
                (field("last_id").trim_end_matches('i').parse().unwrap(), field("side"), field("price"), field("qty"))
            })
            .collect();
        got.sort();
        assert!(!want.is_empty());
        assert_eq!(got, want, "{symbol}: replayed levels equal the reference's");
        let snap_id = format!("snapshot_id={}i", r.snapshot_last_update_id);
        assert!(lp.lines().any(|l| l.starts_with("book_snapshot,") && l.contains(&format!(",symbol={symbol} ")) && l.contains(&snap_id)), "{symbol}: snapshot stored");
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// Bybit linear order books and trades (in-band snapshots, several connections' worth of
/// topics on one), recorded and replayed feed by feed into a second database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bybit_captures_replay_to_the_same_points() {
    use ds_tests::bybit::{Category, MockBybit, MockBybitConfig};
    const LINEAR: [&str; 4] = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT"];
    let Some(url) = influx_url() else {
        eprintln!("skipping: INFLUXDB_URL not set (run through scripts/test.sh)");
        return;
    };
    let Some(cfg) = MockBybitConfig::from_fixtures() else { return };
    let mock = MockBybit::start(cfg).await;
    let (live, replayed) = (TestDb::create(&url).await, TestDb::create(&url).await);
    let work = temp_dir("bybit");
    let capture_dir = work.join("capture");
    let capture = format!("capture_dir = \"{}\"", capture_dir.display());
    let feeds = |extra: &str| {
        [
            crate::bybit::feed("bb-books", "bybit_orderbook", Category::Linear, &LINEAR, &mock, extra),
            crate::bybit::feed("bb-trades", "bybit_trades", Category::Linear, &LINEAR, &mock, extra),
        ]
        .concat()
    };
    let svc = Service::start(&crate::support::feeds_to_influx(&feeds(&capture), &live));
    let topics: Vec<(Category, String)> = LINEAR.iter().flat_map(|s| [(Category::Linear, crate::bybit::book_topic(s)), (Category::Linear, format!("publicTrade.{s}"))]).collect();
    let topic_refs: Vec<(Category, &str)> = topics.iter().map(|(c, t)| (*c, t.as_str())).collect();
    assert!(mock.wait_replayed(&topic_refs, Duration::from_secs(60)).await, "mock replayed every recorded push");
    let report = svc.stop().await;
    let live_points: u64 = report.stats.feeds.iter().map(|(_, f)| f.points.get()).sum();
    assert!(live_points > 1_000, "the live run stored points: {live_points}");

    let replay_config = work.join("replay.toml");
    std::fs::write(&replay_config, crate::support::feeds_to_influx(&feeds(""), &replayed)).unwrap();
    for feed in ["bb-books", "bb-trades"] {
        let input = work.join(format!("{feed}.jsonl.gz"));
        assert!(joined_capture(&capture_dir, feed, &input) >= 1, "{feed}: a capture file was written");
        let args = ReplayArgs { feed: feed.into(), input, sink: Some("influx".into()), stdout: false, snapshots: vec![] };
        assert_eq!(replay(&replay_config, args).await, std::process::ExitCode::SUCCESS, "{feed}");
    }
    assert_same_points(&live, &replayed, live_points).await;
    live.cleanup().await;
    replayed.cleanup().await;
    let _ = std::fs::remove_dir_all(&work);
}

/// HTX: MBP books on two `/feed` connections (one closed mid-stream by the mock, so the
/// capture holds a `close`, the gap markers and a fresh `req` snapshot) and trades on `/ws`,
/// recorded and replayed feed by feed into a second database: the same points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huobi_captures_replay_to_the_same_points() {
    use ds_tests::huobi::{ConnectionFault, HuobiCapture, MbpStreamConfig, MockHuobi, MockHuobiConfig};
    let Some(url) = influx_url() else {
        eprintln!("skipping: INFLUXDB_URL not set (run through scripts/test.sh)");
        return;
    };
    let Some(cap) = HuobiCapture::load() else { return };
    let books = ["trioeth", "yfihusd", "fil3susdt"];
    let trade_symbols: Vec<&str> = cap.symbols.iter().map(String::as_str).collect();
    // Books and trades on mocks of their own: the fault below is by handshake attempt, and with
    // one mock for both feeds the first handshake was the trade connection's whenever it won
    // the race (then nothing was cut; CI saw it once).
    let mock = MockHuobi::start(MockHuobiConfig {
        books: crate::huobi::seeds(&cap, &books),
        stream: MbpStreamConfig { levels: 150, updates: 600, interval: std::time::Duration::from_millis(3), req_lag: 5, max_seq_step: 5, ..MbpStreamConfig::default() },
        ping_interval: Duration::from_millis(300),
        start_delay: Duration::from_millis(20),
        // The first `/feed` connection is cut after 200 frames; the client reconnects.
        connection_faults: [(0, ConnectionFault::CloseAfter(200))].into(),
        ..MockHuobiConfig::default()
    })
    .await;
    let trades_mock = MockHuobi::start(MockHuobiConfig {
        replay: cap.pushes.iter().filter(|p| p.topic.ends_with("trade.detail")).cloned().collect(),
        ping_interval: Duration::from_millis(300),
        start_delay: Duration::from_millis(20),
        ..MockHuobiConfig::default()
    })
    .await;
    let (live, replayed) = (TestDb::create(&url).await, TestDb::create(&url).await);
    let work = temp_dir("huobi");
    let capture_dir = work.join("capture");
    let capture = format!("capture_dir = \"{}\"", capture_dir.display());
    let feeds = |extra: &str| {
        crate::huobi::feed("htx-books", "huobi_mbp", &books, &mock, &format!("symbols_per_connection = 2\n{extra}"))
            + &crate::huobi::feed("htx-trades", "huobi_trades", &trade_symbols, &trades_mock, extra)
    };
    let svc = Service::start(&crate::support::feeds_to_influx(&feeds(&capture), &live));
    assert!(mock.wait_stream_done(Duration::from_secs(60)).await, "the MBP streams ran to their end");
    assert!(trades_mock.wait_until(Duration::from_secs(60), |m| m.replayed() >= 44).await, "every recorded trade push replayed: {}", trades_mock.replayed());
    // The capture must hold the reconnection and its fresh `req` snapshots: the third `/feed`
    // connection (two at the start, one after the cut) has answered a `req`.
    assert!(
        mock.wait_until(Duration::from_secs(30), |m| m.connections().iter().filter(|c| c.path == "/feed").nth(2).is_some_and(|c| c.reqs_answered >= 1)).await,
        "the cut connection reconnected and resynced: {:?}",
        mock.connections()
    );
    for b in books {
        let truth = mock.book(b);
        assert!(
            crate::support::eventually(Duration::from_secs(30), || async { crate::support::rebuild_where(&live, &crate::huobi::series(b)).await.book == truth }).await,
            "{b}: the live store rebuilds to the mock's book"
        );
    }
    let report = svc.stop().await;
    let live_points: u64 = report.stats.feeds.iter().map(|(_, f)| f.points.get()).sum();
    let books_feed = &report.stats.feeds.iter().find(|(n, _)| n == "htx-books").unwrap().1;
    assert!(books_feed.reconnects.get() >= 1, "the cut connection reconnected");
    assert!(live_points > 1_000, "the live run stored points: {live_points}");

    let replay_config = work.join("replay.toml");
    std::fs::write(&replay_config, crate::support::feeds_to_influx(&feeds(""), &replayed)).unwrap();
    for feed in ["htx-books", "htx-trades"] {
        let input = work.join(format!("{feed}.jsonl.gz"));
        assert!(joined_capture(&capture_dir, feed, &input) >= 1, "{feed}: a capture file was written");
        let args = ReplayArgs { feed: feed.into(), input, sink: Some("influx".into()), stdout: false, snapshots: vec![] };
        assert_eq!(replay(&replay_config, args).await, std::process::ExitCode::SUCCESS, "{feed}");
    }
    assert!(points(&live, "book_gap").await.iter().any(|p| p.contains("disconnect")), "the cut connection's gap markers are among them");
    assert_same_points(&live, &replayed, live_points).await;
    live.cleanup().await;
    replayed.cleanup().await;
    let _ = std::fs::remove_dir_all(&work);
}
