//! Reloading exchanges.toml while the service runs (issue 7): the real service (the
//! `run_with_reload` the binary drives from SIGHUP) reads the file again on request, against
//! two Binance mocks replaying the 2021-04-04 capture into a real InfluxDB.
//!
//! One run goes through every kind of change, so each step also proves the others did not
//! disturb what kept running:
//! 1. start: `steady` (mock A, BTCUSDT) and `grown` (mock B, DOTUSDT);
//! 2. add `temp` (mock A, ETHUSDT): it starts, nothing else reconnects;
//! 3. break the file: the reload is rejected with its errors, everything keeps running;
//! 4. remove `temp` and change `grown` (`stale_after_secs`): `temp` stops and flushes,
//!    `grown` restarts (a new connection and a new snapshot), `steady` is untouched.
//!
//! Then every point is accounted for in InfluxDB: `steady` stored exactly once (the
//! independent reference), `grown` rebuilds to mock B's book across its restart, `temp`
//! stored every point it handed over before it stopped, and the sink wrote every point of
//! every feed instance, the retired ones included.

use std::path::{Path, PathBuf};
use std::time::Duration;

use data_storage::reload::ReloadOutcome;
use data_storage::run::{Reload, RunReport};
use ds_tests::binance::{MockBinance, MockBinanceConfig};
use ds_tests::book::binance_reference;
use ds_tests::http::{HttpServer, Response};
use ds_tests::influx::{influx_url, quote_str, TestDb};
use tokio::sync::{mpsc, oneshot};

use crate::binance::{reference_levels, stored_levels};
use crate::support::{eventually, feeds_into, rebuild};

/// The service with a config file and a reload button.
struct Reloadable {
    path: PathBuf,
    stop: oneshot::Sender<()>,
    reload: mpsc::Sender<()>,
    outcomes: mpsc::UnboundedReceiver<ReloadOutcome>,
    handle: tokio::task::JoinHandle<RunReport>,
}

impl Reloadable {
    fn start(path: &Path, toml: &str) -> Reloadable {
        data_storage::logging::init_for_tests();
        std::fs::write(path, toml).unwrap();
        let config = data_storage::config::load(path).unwrap_or_else(|e| panic!("test config invalid: {e:#?}"));
        let (reload, requests) = mpsc::channel(1);
        let (outcome_tx, outcomes) = mpsc::unbounded_channel();
        let file = path.to_path_buf();
        let reload_source =
            Reload { requests, load: Box::new(move || data_storage::config::load(&file)), outcomes: Some(outcome_tx) };
        let (stop, stop_rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(data_storage::run::run_with_reload(
            config,
            async move {
                let _ = stop_rx.await;
            },
            Some(reload_source),
        ));
        Reloadable { path: path.to_path_buf(), stop, reload, outcomes, handle }
    }

    /// Writes `toml` over the file, asks for a reload (what SIGHUP does), returns its outcome.
    async fn reload(&mut self, toml: &str) -> ReloadOutcome {
        std::fs::write(&self.path, toml).unwrap();
        self.reload.send(()).await.expect("service running");
        tokio::time::timeout(Duration::from_secs(30), self.outcomes.recv()).await.expect("reload ends within 30 s").expect("outcome")
    }

    async fn stop(self) -> RunReport {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.handle).await.expect("service stops within 30 s").expect("service task")
    }
}

fn feed(name: &str, mock: &MockBinance, symbol: &str, extra: &str) -> String {
    format!(
        "[[feed]]\nname = \"{name}\"\nconnector = \"binance_spot_depth\"\nsymbols = [\"{symbol}\"]\nsink = \"influx\"\nws_url = \"{}\"\nrest_url = \"{}\"\n{extra}\n",
        mock.ws_url(),
        mock.rest_url()
    )
}

fn config(feeds: &[String], db: &TestDb) -> String {
    feeds_into(&feeds.join("\n"), db, &db.url, "")
}

/// [`config`] with the sink at `url` (a broken InfluxDB, say) and extra sink keys.
fn config_into(feeds: &[String], db: &TestDb, url: &str, extra_sink: &str) -> String {
    feeds_into(&feeds.join("\n"), db, url, extra_sink)
}

/// Every point stored for `symbol`, all measurements.
async fn points_of(db: &TestDb, symbol: &str) -> u64 {
    let w = format!("symbol = {}", quote_str(symbol));
    db.count("book_delta", &w).await + db.count("book_snapshot", &w).await + db.count("book_gap", &w).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_removes_and_restarts_feeds_and_rejects_a_broken_file_losing_nothing() {
    let Some(url) = influx_url() else {
        eprintln!("skipping: INFLUXDB_URL not set (run through scripts/test.sh)");
        return;
    };
    let Some(cfg) = MockBinanceConfig::from_fixtures("2021-04-04") else { return };
    let steady_ref = binance_reference(&cfg.snapshots["BTCUSDT"], &cfg.frames, "BTCUSDT");
    // About 900 frames per symbol at 8 ms: each stream lasts ~7 s, long enough for four
    // reloads to land mid-stream. `resume`: a reconnect continues where the exchange is.
    let paced = |c: MockBinanceConfig| MockBinanceConfig { frame_interval: Duration::from_millis(8), ping_interval: Duration::from_millis(300), resume: true, ..c };
    let mock_a = MockBinance::start(paced(cfg.clone())).await;
    let mock_b = MockBinance::start(paced(cfg)).await;
    let db = TestDb::create(&url).await;
    let dir = std::env::temp_dir().join(format!("ds-e2e-reload-{}", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("exchanges.toml");

    let steady = feed("steady", &mock_a, "BTCUSDT", "");
    let grown = feed("grown", &mock_b, "DOTUSDT", "");
    let temp = feed("temp", &mock_a, "ETHUSDT", "");
    let mut svc = Reloadable::start(&path, &config(&[steady.clone(), grown.clone()], &db));
    assert!(eventually(Duration::from_secs(20), || async { points_of(&db, "BTCUSDT").await > 0 && points_of(&db, "DOTUSDT").await > 0 }).await, "both feeds store");

    // 2. Add a feed.
    let outcome = svc.reload(&config(&[steady.clone(), grown.clone(), temp.clone()], &db)).await;
    let ReloadOutcome::Applied(plan) = &outcome else { panic!("add: {outcome:?}") };
    assert_eq!(plan.start_feeds.iter().collect::<Vec<_>>(), ["temp"], "only the new feed starts: {plan:?}");
    assert!(plan.stop_feeds.is_empty() && plan.stop_sinks.is_empty() && plan.start_sinks.is_empty(), "{plan:?}");
    assert!(eventually(Duration::from_secs(20), || async { points_of(&db, "ETHUSDT").await > 0 }).await, "the added feed stores");

    // 3. A broken file: refused with its errors, nothing moves.
    let broken = config(&[steady.clone(), grown.clone(), temp.clone()], &db).replace("connector = \"binance_spot_depth\"\nsymbols = [\"ETHUSDT\"]", "connector = \"binance_spot_dept\"\nsymbols = [\"ETHUSDT\"]");
    let outcome = svc.reload(&broken).await;
    let ReloadOutcome::Rejected(errors) = &outcome else { panic!("broken: {outcome:?}") };
    assert!(errors.iter().any(|e| e.contains("temp") && e.contains("binance_spot_dept")), "the error names the feed and the bad value: {errors:?}");
    assert_eq!(mock_a.connections().len(), 2, "steady and temp still on their first connections");
    assert_eq!(mock_b.connections().len(), 1, "grown still on its first connection");

    // 4. Remove one feed and change another.
    let etc_before = points_of(&db, "ETHUSDT").await;
    let outcome = svc.reload(&config(&[steady.clone(), feed("grown", &mock_b, "DOTUSDT", "stale_after_secs = 61")], &db)).await;
    let ReloadOutcome::Applied(plan) = &outcome else { panic!("remove + change: {outcome:?}") };
    assert_eq!(plan.stop_feeds.iter().collect::<Vec<_>>(), ["grown", "temp"], "{plan:?}");
    assert_eq!(plan.start_feeds.iter().collect::<Vec<_>>(), ["grown"], "{plan:?}");
    assert!(plan.stop_sinks.is_empty(), "the sink keeps running: {plan:?}");
    let only_steady = || async { mock_a.connections().iter().filter(|c| c.active).all(|c| c.streams == ["btcusdt@depth@100ms"]) };
    assert!(eventually(Duration::from_secs(10), only_steady).await, "temp's connection closed: {:?}", mock_a.connections());
    assert!(etc_before > 0);

    assert!(mock_a.wait_all_frames_sent(Duration::from_secs(60)).await, "mock A replayed BTCUSDT");
    assert!(mock_b.wait_all_frames_sent(Duration::from_secs(60)).await, "mock B replayed DOTUSDT");
    let expected = reference_levels(&steady_ref, steady_ref.applied.len());
    let n = db.wait_for_count("book_delta", &format!("symbol = {}", quote_str("BTCUSDT")), expected.len() as u64, Duration::from_secs(60)).await;
    assert_eq!(n, expected.len() as u64, "every BTCUSDT level stored");
    let truth_b = mock_b.book("DOTUSDT");
    assert!(eventually(Duration::from_secs(30), || async { rebuild(&db, "DOTUSDT").await.book == truth_b }).await, "grown's book rebuilds to mock B's after its restart");
    let report = svc.stop().await;
    assert!(!report.failed);

    // steady: untouched by all four reloads, stored exactly once.
    assert_eq!(stored_levels(&db, "BTCUSDT", "").await, expected, "steady stored exactly once");
    assert_eq!(mock_a.depth_requests("BTCUSDT"), 1, "steady never resynced");
    let steady_conns: Vec<_> = mock_a.connections().into_iter().filter(|c| c.streams == ["btcusdt@depth@100ms"]).collect();
    assert_eq!(steady_conns.len(), 1, "steady never reconnected");
    let gaps = db.query(&format!("SELECT reason FROM book_gap WHERE symbol = {}", quote_str("BTCUSDT"))).await;
    assert_eq!(gaps.len(), 1, "steady: only the gap marker of the final stop: {gaps:?}");

    // grown: restarted once (a new connection, a new snapshot), its book whole across it.
    assert_eq!(mock_b.connections().len(), 2, "grown reconnected once, for its restart");
    assert_eq!(mock_b.depth_requests("DOTUSDT"), 2, "a new snapshot after the restart");
    let rebuilt = rebuild(&db, "DOTUSDT").await;
    assert_eq!(rebuilt.gaps_after_snapshot, 0);
    let gaps = db.query(&format!("SELECT reason FROM book_gap WHERE symbol = {}", quote_str("DOTUSDT"))).await;
    assert_eq!(gaps.len(), 2, "grown: one gap marker for the restart, one for the final stop: {gaps:?}");

    // temp: every point it handed over before it stopped is stored.
    let retired: Vec<_> = report.retired.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(retired, ["grown", "temp"], "the instances the reload stopped");
    let temp_stats = &report.retired.iter().find(|(n, _)| n == "temp").unwrap().1;
    assert!(temp_stats.points.get() > 0);
    assert_eq!(points_of(&db, "ETHUSDT").await, temp_stats.points.get(), "temp: every point handed over is stored");

    // The sink: every point of every feed instance written, nothing dropped or left over.
    let sink = &report.stats.sinks[0].1;
    let handed: u64 = report.stats.feeds.iter().chain(report.retired.iter()).map(|(_, f)| f.points.get()).sum();
    assert_eq!(sink.points_written.get(), handed, "every point written");
    assert_eq!(sink.points_dropped.get(), 0);
    assert_eq!(sink.spool_points.get(), 0);
    let stored = points_of(&db, "BTCUSDT").await + points_of(&db, "DOTUSDT").await + points_of(&db, "ETHUSDT").await;
    assert_eq!(stored, handed, "InfluxDB holds exactly the points the feeds handed over");
    db.cleanup().await;
}

/// An operator fixes a wrong InfluxDB URL by reload while data flows: the old sink (answered
/// 503 all along) spools what it holds when it stops, the new one takes the spool over and
/// writes it first. Its feed restarts with it (it holds the sink's channel): a gap marker and a
/// new snapshot, and every point either instance handed over ends up in InfluxDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_fixing_the_sink_url_hands_the_spool_over_losing_nothing() {
    let Some(url) = influx_url() else {
        eprintln!("skipping: INFLUXDB_URL not set (run through scripts/test.sh)");
        return;
    };
    let Some(cfg) = MockBinanceConfig::from_fixtures("2021-04-04") else { return };
    let mock = MockBinance::start(MockBinanceConfig { frame_interval: Duration::from_millis(5), ping_interval: Duration::from_millis(300), resume: true, ..cfg }).await;
    let broken = HttpServer::start(|_| Response::text(503, "service unavailable")).await;
    let db = TestDb::create(&url).await;
    let dir = std::env::temp_dir().join(format!("ds-e2e-reload-{}", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("exchanges.toml");
    let feeds = [feed("steady", &mock, "BTCUSDT", "")];
    let sink_keys = "max_retries = 0\ntimeout_secs = 1\nstop_deadline_secs = 1";

    let mut svc = Reloadable::start(&path, &config_into(&feeds, &db, &broken.url(), sink_keys));
    assert!(eventually(Duration::from_secs(20), || async { broken.request_count() >= 2 }).await, "the broken sink is tried");
    let outcome = svc.reload(&config_into(&feeds, &db, &db.url, sink_keys)).await;
    let ReloadOutcome::Applied(plan) = &outcome else { panic!("fix the url: {outcome:?}") };
    assert_eq!(plan.stop_sinks.iter().collect::<Vec<_>>(), ["influx"], "{plan:?}");
    assert_eq!(plan.start_sinks.iter().collect::<Vec<_>>(), ["influx"], "{plan:?}");
    assert_eq!(plan.stop_feeds.iter().collect::<Vec<_>>(), ["steady"], "the sink's feed restarts with it: {plan:?}");
    assert_eq!(plan.start_feeds.iter().collect::<Vec<_>>(), ["steady"], "{plan:?}");

    assert!(mock.wait_all_frames_sent(Duration::from_secs(60)).await, "mock replayed BTCUSDT");
    let truth = mock.book("BTCUSDT");
    assert!(eventually(Duration::from_secs(30), || async { rebuild(&db, "BTCUSDT").await.book == truth }).await, "the book rebuilds to the mock's");
    let report = svc.stop().await;
    assert!(!report.failed);

    let first = &report.retired.iter().find(|(n, _)| n == "steady").expect("the first instance retired").1;
    assert!(first.points.get() > 0, "the first instance handed points to the broken sink");
    let handed = first.points.get() + report.stats.feeds[0].1.points.get();
    assert_eq!(points_of(&db, "BTCUSDT").await, handed, "every point of both instances is in InfluxDB, the spooled ones included");
    let sink = &report.stats.sinks[0].1;
    assert_eq!(sink.points_written.get(), handed, "the new sink wrote the spool and its own");
    assert_eq!(sink.points_dropped.get(), 0);
    assert_eq!(sink.spool_points.get(), 0, "nothing left in the spool");
    assert_eq!(mock.depth_requests("BTCUSDT"), 2, "a new snapshot after the restart");
    db.cleanup().await;
}
