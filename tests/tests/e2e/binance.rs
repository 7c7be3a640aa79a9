//! Binance spot, end to end: mock exchange replaying the 2021-04-04 capture -> the service ->
//! a real InfluxDB, then the store is read back and checked against an independent reference.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ds_tests::binance::{MockBinance, MockBinanceConfig};
use ds_tests::book::{binance_reference, Reference};
use ds_tests::influx::{influx_url, quote_str, RowExt, TestDb};

use crate::support::{binance_to_influx, eventually, rebuild, Service};

pub const SYMBOLS: [&str; 3] = ["BTCUSDT", "ETHUSDT", "DOTUSDT"];

/// (last_id, side, price, qty) of every stored delta level of `symbol`, sorted.
pub async fn stored_levels(db: &TestDb, symbol: &str, extra_where: &str) -> Vec<(u64, String, String, String)> {
    let rows = db
        .query(&format!("SELECT price, qty, side, first_id, last_id FROM book_delta WHERE symbol = {}{extra_where}", quote_str(symbol)))
        .await;
    let mut v: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.u64("last_id").unwrap(),
                r.str("side").unwrap().to_string(),
                format!("{}", r.f64("price").unwrap()),
                format!("{}", r.f64("qty").unwrap()),
            )
        })
        .collect();
    v.sort();
    v
}

/// The same, from the reference's applied updates (text parsed as InfluxDB parses it).
pub fn reference_levels(r: &Reference, upto: usize) -> Vec<(u64, String, String, String)> {
    let mut v: Vec<_> = r.applied[..upto]
        .iter()
        .flat_map(|u| {
            u.levels.iter().map(move |(side, p, q)| {
                (u.final_update_id, side.as_str().to_string(), format!("{}", p.parse::<f64>().unwrap()), format!("{}", q.parse::<f64>().unwrap()))
            })
        })
        .collect();
    v.sort();
    v
}

struct Setup {
    mock: MockBinance,
    db: TestDb,
    refs: HashMap<&'static str, Reference>,
}

async fn setup(drop_frames: impl Fn(&HashMap<&'static str, Reference>) -> HashSet<usize>) -> Option<Setup> {
    let Some(url) = influx_url() else {
        eprintln!("skipping: INFLUXDB_URL not set (run through scripts/test.sh)");
        return None;
    };
    let cfg = MockBinanceConfig::from_fixtures("2021-04-04")?;
    let refs: HashMap<_, _> = SYMBOLS.iter().map(|s| (*s, binance_reference(&cfg.snapshots[*s], &cfg.frames, s))).collect();
    for r in refs.values() {
        assert!(r.gap.is_none() && r.applied.len() > 800, "the capture chains: {:?}", r.gap);
    }
    let drop_frames = drop_frames(&refs);
    let mock = MockBinance::start(MockBinanceConfig { ping_interval: Duration::from_millis(300), drop_frames, ..cfg }).await;
    let db = TestDb::create(&url).await;
    Some(Setup { mock, db, refs })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_is_stored_exactly_once_and_books_rebuild_from_the_store() {
    let Some(Setup { mock, db, refs }) = setup(|_| HashSet::new()).await else { return };
    let svc = Service::start(&binance_to_influx(&mock.ws_url(), &mock.rest_url(), &SYMBOLS, &db));

    let expected: usize = refs.values().map(|r| r.applied_levels()).sum();
    assert!(mock.wait_all_frames_sent(Duration::from_secs(30)).await, "mock replayed every frame");
    let n = db.wait_for_count("book_delta", "", expected as u64, Duration::from_secs(60)).await;
    assert_eq!(n, expected as u64, "every level of every applied update stored");
    assert!(mock.wait_for_pongs(2, Duration::from_secs(5)).await >= 2, "pings answered");
    let report = svc.stop().await;

    for symbol in SYMBOLS {
        let r = &refs[symbol];
        // Exactly once: the multiset of stored levels equals the reference's.
        assert_eq!(stored_levels(&db, symbol, "").await, reference_levels(r, r.applied.len()), "{symbol}: stored levels");
        // Rebuildable: snapshot + later deltas from the store equal the in-memory book.
        let rebuilt = rebuild(&db, symbol).await;
        assert_eq!(rebuilt.snapshot_id, r.snapshot_last_update_id, "{symbol}: the stored snapshot is the REST one");
        assert_eq!(rebuilt.gaps_after_snapshot, 0);
        assert_eq!(rebuilt.deltas_applied, r.applied_levels());
        let diff = rebuilt.book.diff(&r.book, 10);
        assert!(diff.is_empty(), "{symbol}: book rebuilt from InfluxDB differs from the reference: {diff:#?}");
        assert_eq!(rebuilt.book, r.book);
    }
    let gaps = db.query("SELECT reason, symbol FROM book_gap").await;
    assert_eq!(gaps.len(), 3, "no gap in a chaining capture, one `shutdown` marker per book at stop: {gaps:?}");
    assert!(gaps.iter().all(|g| g.str("reason") == Some("shutdown")), "{gaps:?}");
    assert_eq!(db.count("invalid_frame", "").await, 0);

    // Accounted for: every frame is applied, superseded by the snapshot, or counted otherwise.
    let feed = &report.stats.feeds[0].1;
    let dropped: usize = refs.values().map(|r| r.dropped).sum();
    let applied: usize = refs.values().map(|r| r.applied.len()).sum();
    assert_eq!(feed.frames.get() as usize, mock.frames_sent());
    assert_eq!(feed.superseded.get() as usize, dropped, "10 + 13 + 9 frames older than the snapshots");
    assert_eq!(feed.mi.get() as usize, applied);
    assert_eq!(feed.frames.get() as usize, applied + dropped);
    assert_eq!(feed.gaps.get(), 3, "only the `shutdown` markers");
    let sink = &report.stats.sinks[0].1;
    assert_eq!(sink.points_dropped.get(), 0);
    assert_eq!(sink.points_written.get(), feed.points.get(), "every point handed over was written");
    assert!(mock.pongs().iter().all(|p| p.matched), "pong payloads echo the pings");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_frame_stores_a_gap_then_resyncs_that_symbol_only() {
    // Lose the 300th applied BTCUSDT update on the wire (the mock's truth still has it).
    let Some(Setup { mock, db, refs }) = setup(|refs| [refs["BTCUSDT"].applied[300].index].into()).await else { return };
    let btc = &refs["BTCUSDT"];
    let svc = Service::start(&binance_to_influx(&mock.ws_url(), &mock.rest_url(), &SYMBOLS, &db));
    assert!(mock.wait_all_frames_sent(Duration::from_secs(30)).await);

    let truth = mock.book("BTCUSDT");
    let resynced = eventually(Duration::from_secs(60), || {
        let db = &db;
        let truth = &truth;
        async move {
            let gaps = db.count("book_gap", "").await;
            gaps >= 1 && {
                let r = rebuild(db, "BTCUSDT").await;
                r.gaps_after_snapshot == 0 && r.book == *truth
            }
        }
    })
    .await;
    let report = svc.stop().await;
    assert!(resynced, "BTCUSDT rebuilt from the store equals the exchange's book after the resync");

    let gap = db.query("SELECT reason, last_id, next_id, symbol FROM book_gap WHERE reason != 'shutdown'").await;
    assert_eq!(gap.len(), 1, "{gap:?}");
    assert_eq!(gap[0].str("symbol"), Some("BTCUSDT"));
    assert_eq!(gap[0].str("reason"), Some("sequence_break"));
    assert_eq!(gap[0].u64("last_id"), Some(btc.applied[299].final_update_id));
    assert_eq!(gap[0].u64("next_id"), Some(btc.applied[301].first_update_id));
    let rebuilt = rebuild(&db, "BTCUSDT").await;
    assert!(rebuilt.snapshot_id > btc.snapshot_last_update_id, "a fresh snapshot was stored");
    assert!(rebuilt.snapshot_time > gap[0].i64("time").unwrap(), "the fresh snapshot follows the gap marker");
    assert!(mock.depth_requests("BTCUSDT") >= 2);

    // Before the gap: every applied level stored exactly once.
    let before = format!(" AND last_id <= {}", btc.applied[299].final_update_id);
    assert_eq!(stored_levels(&db, "BTCUSDT", &before).await, reference_levels(btc, 300));

    // The other symbols never noticed.
    for symbol in ["ETHUSDT", "DOTUSDT"] {
        let r = &refs[symbol];
        assert_eq!(mock.depth_requests(symbol), 1, "{symbol} was not resynced");
        let rebuilt = rebuild(&db, symbol).await;
        assert_eq!(rebuilt.book, r.book, "{symbol}");
        assert_eq!(stored_levels(&db, symbol, "").await, reference_levels(r, r.applied.len()));
    }
    let feed = &report.stats.feeds[0].1;
    assert_eq!(feed.gaps.get(), 1 + 3, "the lost frame, and a `shutdown` marker per book at stop");
    assert_eq!(feed.resyncs.get(), 4, "three initial snapshots and one resync");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_exchange_is_retried_with_backoff_not_in_a_loop() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("ds-unreachable-{}", std::process::id()));
    let toml = format!(
        r#"
[service]
log_dir = ""
status_interval_secs = 0
[[feed]]
name = "nowhere"
connector = "binance_spot_depth"
symbols = ["BTCUSDT"]
sink = "files"
ws_url = "ws://127.0.0.1:{port}"
rest_url = "http://127.0.0.1:{port}"
[[sink]]
name = "files"
plugin = "file"
dir = "{dir}"
"#,
        dir = dir.display()
    );
    let svc = Service::start(&toml);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let started = std::time::Instant::now();
    let report = svc.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5), "stop is prompt while backing off");
    let feed = &report.stats.feeds[0].1;
    let attempts = feed.reconnects.get() + 1;
    // Backoff starts at 0.5 s and doubles (with jitter): 4 s allow about 3-5 attempts, a
    // tight loop would make thousands.
    assert!((2..=8).contains(&attempts), "connection attempts in 4 s: {attempts}");
    assert_eq!(feed.connections.get(), 0);
    assert_eq!(feed.points.get(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2021_10_11_capture_drops_the_events_its_snapshots_already_hold() {
    let Some(url) = influx_url() else {
        eprintln!("skipping: INFLUXDB_URL not set (run through scripts/test.sh)");
        return;
    };
    let Some(cfg) = MockBinanceConfig::from_fixtures("2021-10-11") else { return };
    let symbols = ["NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR"];
    let refs: Vec<Reference> = symbols.iter().map(|s| binance_reference(&cfg.snapshots[*s], &cfg.frames, s)).collect();
    let mock = MockBinance::start(cfg).await;
    let db = TestDb::create(&url).await;
    let svc = Service::start(&binance_to_influx(&mock.ws_url(), &mock.rest_url(), &symbols, &db));
    let expected: usize = refs.iter().map(|r| r.applied_levels()).sum();
    assert!(mock.wait_all_frames_sent(Duration::from_secs(30)).await);
    let n = db.wait_for_count("book_delta", "", expected as u64, Duration::from_secs(60)).await;
    let report = svc.stop().await;
    assert_eq!(n, expected as u64);
    for (symbol, r) in symbols.iter().zip(&refs) {
        assert_eq!(stored_levels(&db, symbol, "").await, reference_levels(r, r.applied.len()), "{symbol}");
        assert_eq!(rebuild(&db, symbol).await.book, r.book, "{symbol}: book rebuilt from the store");
    }
    // NKNUSDT: the first event ends exactly at lastUpdateId 499869752, so it is dropped and
    // the first stored update starts at 499869753 (PROVENANCE.md, set B).
    let first = db.query("SELECT first(first_id) FROM book_delta WHERE symbol = 'NKNUSDT'").await;
    assert_eq!(first[0].u64("first"), Some(499_869_753));
    let feed = &report.stats.feeds[0].1;
    let dropped: usize = refs.iter().map(|r| r.dropped).sum();
    assert!(dropped >= 4, "each snapshot already holds at least one event: {dropped}");
    assert_eq!(feed.superseded.get() as usize, dropped);
    assert_eq!(feed.frames.get() as usize, mock.frames_sent());
    db.cleanup().await;
}
