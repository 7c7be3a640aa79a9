//! `/metrics` and `/health` of the running service, scraped over HTTP while the Binance mock
//! replays the real capture into InfluxDB: the counters match what the mock sent (frames, a
//! lost frame -> one gap and one resync, forced reconnects), and `/health` turns 503 when the
//! exchange stalls or refuses, or InfluxDB stops, naming what is wrong, and back to 200.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ds_tests::binance::{MockBinance, MockBinanceConfig};
use ds_tests::book::binance_reference;
use ds_tests::influx::{influx_url, TestDb};
use ds_tests::influxd::InfluxServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::binance::SYMBOLS;
use crate::support::{binance_to_influx, binance_to_influx_with, eventually, Service};

const FEED: &str = "binance-e2e";

/// A port on 127.0.0.1 free right now (bound and released).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Adds `[service]` keys to a support config.
fn with_service_keys(toml: &str, keys: &str) -> String {
    assert!(toml.contains("[service]\n"), "{toml}");
    toml.replacen("[service]\n", &format!("[service]\n{keys}\n"), 1)
}

/// Adds keys to the `[[feed]]` table of a support config.
fn with_feed_keys(toml: &str, keys: &str) -> String {
    toml.replacen("[[feed]]\n", &format!("[[feed]]\n{keys}\n"), 1)
}

struct Scraper {
    base: String,
    http: reqwest::Client,
}

impl Scraper {
    fn new(addr: SocketAddr) -> Scraper {
        Scraper { base: format!("http://{addr}"), http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap() }
    }

    /// One GET; retried for a while only when nothing listens yet (the service is starting).
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        for _ in 0..50 {
            match self.http.get(format!("{}{path}", self.base)).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    return Some((status, r.text().await.ok()?));
                }
                Err(e) if e.is_connect() => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(_) => return None,
            }
        }
        None
    }

    async fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics").await.expect("/metrics answers");
        assert_eq!(status, 200, "{body}");
        Metrics(body)
    }

    async fn health(&self) -> (u16, serde_json::Value) {
        let (status, body) = self.get("/health").await.expect("/health answers");
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("/health body is not JSON ({e}): {body}")))
    }

    /// Waits until `/health` answers `status`; returns the last answer.
    async fn wait_health(&self, status: u16, timeout: Duration) -> (u16, serde_json::Value) {
        let last = Mutex::new((0, serde_json::Value::Null));
        let ok = eventually(timeout, || async {
            let h = self.health().await;
            let hit = h.0 == status;
            *lock_ignoring_poison(&last) = h;
            hit
        })
        .await;
        let last = last.into_inner().unwrap_or_else(|e| e.into_inner());
        assert!(ok, "/health did not turn {status} within {timeout:?}; last answer {} {}", last.0, last.1);
        last
    }
}

/// One scrape, with a lookup by name and labels.
struct Metrics(String);

impl Metrics {
    /// The value of the sample `name` whose labels include every pair of `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let rest = rest.strip_suffix('}')?;
            let have: HashSet<&str> = rest.split("\",").map(|p| p.trim_end_matches('"')).collect();
            labels.iter().all(|(k, v)| have.contains(format!("{k}=\"{v}").as_str())).then(|| value.parse().ok())?
        })
    }

    fn feed(&self, name: &str) -> u64 {
        self.get(name, &[("feed", FEED)]).unwrap_or_else(|| panic!("{name} missing:\n{}", self.0)) as u64
    }

    fn sink(&self, name: &str) -> u64 {
        self.get(name, &[("sink", "influx")]).unwrap_or_else(|| panic!("{name} missing:\n{}", self.0)) as u64
    }
}

fn problems(body: &serde_json::Value) -> Vec<(String, String)> {
    body["problems"]
        .as_array()
        .expect("problems list")
        .iter()
        .map(|p| {
            let who = p.get("feed").map(|f| format!("feed {}", f.as_str().unwrap())).or_else(|| p.get("sink").map(|s| format!("sink {}", s.as_str().unwrap())));
            (who.unwrap_or_default(), p["problem"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_what_the_mock_sent_and_health_follows_a_stalling_exchange() {
    let Some(url) = influx_url() else {
        eprintln!("skipping: INFLUXDB_URL not set (run through scripts/test.sh)");
        return;
    };
    let Some(cfg) = MockBinanceConfig::from_fixtures("2021-04-04") else { return };
    // Lose the 300th applied BTCUSDT update on the wire: one gap, one resync.
    let btc = binance_reference(&cfg.snapshots["BTCUSDT"], &cfg.frames, "BTCUSDT");
    let lost = btc.applied[300].index;
    // ~2,700 frames at 2 ms: a replay of several seconds, long enough to scrape during it.
    let mock = MockBinance::start(MockBinanceConfig {
        ping_interval: Duration::from_millis(300),
        frame_interval: Duration::from_millis(2),
        drop_frames: [lost].into(),
        ..cfg.clone()
    })
    .await;
    let db = TestDb::create(&url).await;
    let addr = free_addr();
    let toml = with_service_keys(
        &binance_to_influx(&mock.ws_url(), &mock.rest_url(), &SYMBOLS, &db),
        &format!("metrics_addr = \"{addr}\"\nhealth_stale_secs = 2"),
    );
    let svc = Service::start(&toml);
    let scrape = Scraper::new(addr);

    // During the replay: connected, frames counting up, healthy.
    let during = eventually(Duration::from_secs(20), || async {
        let m = scrape.metrics().await;
        m.feed("data_storage_feed_frames_total") > 100 && !mock.all_frames_sent()
    })
    .await;
    assert!(during, "scraped mid-replay");
    let m = scrape.metrics().await;
    assert_eq!(m.feed("data_storage_feed_connections"), 1);
    assert_eq!(m.feed("data_storage_feed_sessions"), 1);
    assert!(m.get("data_storage_feed_packets_total", &[("feed", FEED), ("connector", "binance_spot_depth"), ("kind", "mi")]).unwrap() > 0.0);
    scrape.wait_health(200, Duration::from_secs(10)).await;

    // After it: every frame the mock sent is counted; the lost one is one gap and one resync.
    assert!(mock.wait_all_frames_sent(Duration::from_secs(60)).await);
    let settled = eventually(Duration::from_secs(30), || async {
        let m = scrape.metrics().await;
        m.feed("data_storage_feed_frames_total") as usize == mock.frames_sent()
            && m.feed("data_storage_feed_points_total") == m.sink("data_storage_sink_points_written_total")
    })
    .await;
    let m = scrape.metrics().await;
    assert!(settled, "frames {} vs sent {}; points {} vs written {}", m.feed("data_storage_feed_frames_total"), mock.frames_sent(), m.feed("data_storage_feed_points_total"), m.sink("data_storage_sink_points_written_total"));
    let total_frames = mock.frames_sent();
    assert_eq!(mock.connections()[0].frames_dropped, 1, "the mock held back exactly the lost frame");
    assert_eq!(m.feed("data_storage_feed_gaps_total"), 1, "the lost frame");
    assert_eq!(m.feed("data_storage_feed_resyncs_total"), 3 + 1, "three initial snapshots and one resync");
    assert_eq!(m.feed("data_storage_feed_reconnects_total"), 0);
    assert_eq!(m.feed("data_storage_feed_invalid_frames_total"), 0);
    let mi = m.get("data_storage_feed_packets_total", &[("feed", FEED), ("kind", "mi")]).unwrap() as u64;
    let st = m.get("data_storage_feed_packets_total", &[("feed", FEED), ("kind", "st")]).unwrap() as u64;
    assert_eq!(st, 4, "one snapshot per sync");
    assert_eq!(
        m.feed("data_storage_feed_update_latency_seconds_count"),
        mi,
        "every book update carries Binance's event time and is observed once"
    );
    assert_eq!(m.feed("data_storage_feed_superseded_updates_total") + m.feed("data_storage_feed_out_of_sequence_updates_total") + mi, total_frames as u64);
    assert!(m.sink("data_storage_sink_batches_written_total") > 0);
    assert!(m.sink("data_storage_sink_bytes_written_total") > 0);
    assert_eq!(m.sink("data_storage_sink_write_duration_seconds_count"), m.sink("data_storage_sink_batches_written_total"), "one timed write per batch, none failed");
    assert_eq!(m.sink("data_storage_sink_points_dropped_total"), 0);
    assert_eq!(m.sink("data_storage_sink_spool_points"), 0);

    // The exchange stalls (connection open, pings only): stale after 2 s, and said so.
    let (_, body) = scrape.wait_health(503, Duration::from_secs(10)).await;
    let p = problems(&body);
    assert_eq!(p.len(), 1, "{body}");
    assert_eq!(p[0].0, format!("feed {FEED}"));
    assert!(p[0].1.starts_with("no data for "), "{body}");
    assert_eq!(body["feeds"][FEED]["connections"], 1, "still connected: stale, not disconnected");
    assert_eq!(body["sinks"]["influx"]["healthy"], true, "{body}");

    // A forced reconnect: counted, and the replay that follows makes the feed fresh again.
    mock.disconnect_all();
    scrape.wait_health(200, Duration::from_secs(20)).await;
    assert!(mock.wait_all_frames_sent(Duration::from_secs(60)).await);
    let settled = eventually(Duration::from_secs(30), || async {
        scrape.metrics().await.feed("data_storage_feed_frames_total") as usize == mock.frames_sent()
    })
    .await;
    let m = scrape.metrics().await;
    assert!(settled, "frames {} vs sent {}", m.feed("data_storage_feed_frames_total"), mock.frames_sent());
    assert_eq!(mock.frames_sent(), 2 * total_frames);
    assert_eq!(m.feed("data_storage_feed_reconnects_total"), 1);
    assert_eq!(m.feed("data_storage_feed_gaps_total"), 1 + 3, "the lost frame, and a `disconnect` marker per book");
    assert_eq!(m.feed("data_storage_feed_resyncs_total"), 4 + 3, "every book resynced after the reconnect");

    let report = svc.stop().await;
    assert!(!report.failed);
    let feed = &report.stats.feeds[0].1;
    assert_eq!(feed.frames.get() as usize, mock.frames_sent());
    db.cleanup().await;
}

/// A TCP proxy in front of the mock's websocket port that can be cut (open connections
/// dropped, new ones refused) and restored on the same port.
struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut p = Proxy { addr: listener.local_addr().unwrap(), target, task: None, conns: Arc::default() };
        p.serve(listener);
        p
    }

    fn serve(&mut self, listener: TcpListener) {
        let (target, conns) = (self.target, self.conns.clone());
        self.task = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
                lock_ignoring_poison(&conns).push(conn);
            }
        }));
    }

    fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        for c in lock_ignoring_poison(&self.conns).drain(..) {
            c.abort();
        }
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind the proxy port");
        self.serve(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

fn lock_ignoring_poison<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_a_refused_exchange_and_a_stopped_influxdb_then_recovers() {
    let Some(mut influx) = InfluxServer::start().await else { return };
    let Some(cfg) = MockBinanceConfig::from_fixtures("2021-04-04") else { return };
    let mock = MockBinance::start(MockBinanceConfig { ping_interval: Duration::from_millis(300), ..cfg }).await;
    let ws_addr: SocketAddr = mock.ws_url().trim_start_matches("ws://").parse().unwrap();
    let mut proxy = Proxy::start(ws_addr).await;
    let db = TestDb::create(&influx.url).await;
    let addr = free_addr();
    let toml = binance_to_influx_with(&format!("ws://{}", proxy.addr), &mock.rest_url(), &SYMBOLS, &db.url, &db.name, "max_retries = 0\ntimeout_secs = 2");
    // Sinks are judged over 2 s; the feed over 60 s, so that the end of the replay (a quiet
    // exchange) does not count here: this test is about connections and writes.
    let toml = with_feed_keys(&with_service_keys(&toml, &format!("metrics_addr = \"{addr}\"\nhealth_stale_secs = 2")), "health_stale_secs = 60");
    let svc = Service::start(&toml);
    let scrape = Scraper::new(addr);
    scrape.wait_health(200, Duration::from_secs(20)).await;
    assert!(mock.wait_all_frames_sent(Duration::from_secs(30)).await);

    // InfluxDB dies and the exchange becomes unreachable: both named.
    influx.stop();
    proxy.cut();
    let named_both = eventually(Duration::from_secs(20), || async {
        let (status, body) = scrape.health().await;
        let who: HashSet<String> = problems(&body).into_iter().map(|p| p.0).collect();
        status == 503 && who.contains(&format!("feed {FEED}")) && who.contains("sink influx")
    })
    .await;
    let (status, body) = scrape.health().await;
    assert!(named_both, "{status} {body}");
    let p = problems(&body);
    assert!(p.iter().any(|(who, why)| who == &format!("feed {FEED}") && why.starts_with("no open connection")), "{body}");
    assert!(p.iter().any(|(who, why)| who == "sink influx" && why.contains("writes failing")), "{body}");
    assert_eq!(body["feeds"][FEED]["connections"], 0);
    let m = scrape.metrics().await;
    assert_eq!(m.feed("data_storage_feed_connections"), 0);
    assert!(m.sink("data_storage_sink_write_retries_total") > 0);

    // The exchange is back: only the sink is left.
    proxy.restore().await;
    let feed_back = eventually(Duration::from_secs(20), || async {
        let (status, body) = scrape.health().await;
        status == 503 && problems(&body).iter().all(|p| p.0 == "sink influx")
    })
    .await;
    let (status, body) = scrape.health().await;
    assert!(feed_back, "{status} {body}");
    assert!(scrape.metrics().await.feed("data_storage_feed_reconnects_total") >= 1);
    assert!(scrape.metrics().await.sink("data_storage_sink_spool_points") > 0, "the outage's points wait in the spool");

    // InfluxDB is back: the spool drains, all healthy.
    influx.resume().await;
    scrape.wait_health(200, Duration::from_secs(30)).await;
    let drained = eventually(Duration::from_secs(30), || async { scrape.metrics().await.sink("data_storage_sink_spool_points") == 0 }).await;
    assert!(drained);
    let report = svc.stop().await;
    let sink = &report.stats.sinks[0].1;
    assert_eq!(sink.points_dropped.get(), 0);
    assert_eq!(sink.points_written.get(), report.stats.feeds[0].1.points.get(), "every point written after the outage");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_address_in_use_fails_the_start_before_any_connection() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    // The exchange endpoints point at a listener that would see any connection attempt.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.set_nonblocking(true).unwrap();
    let port = probe.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("ds-metrics-taken-{}", std::process::id()));
    let toml = format!(
        r#"
[service]
log_dir = ""
status_interval_secs = 0
metrics_addr = "{addr}"
spool_dir = "{dir}/spool"
[[feed]]
name = "f"
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
    let report = Service::start(&toml).stop().await;
    assert!(report.failed, "a taken metrics port is a failed start");
    assert!(report.stats.feeds.is_empty(), "nothing started");
    assert!(probe.accept().is_err(), "no connection was made");
    let _ = std::fs::remove_dir_all(dir);
}
