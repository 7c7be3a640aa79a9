//! No data lost when InfluxDB is slow, down or hung, and the websocket read loop never
//! notices (contract 5): the real service, the Binance mock replaying the real capture, a
//! private InfluxDB that the test stops and starts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ds_api::buffer::{packet_channel, Buffer, BufferConfig};
use ds_api::{clock, shutdown_pair, DataPacket, Decimal, Instrument, Level, MarketIncremental, SinkSpec, SinkStats};
use ds_tests::binance::{MockBinance, MockBinanceConfig};
use ds_tests::book::{binance_reference, Reference};
use ds_tests::influx::TestDb;
use ds_tests::http::{HttpServer, Response};
use ds_tests::influxd::InfluxServer;

use crate::binance::{reference_levels, stored_levels, SYMBOLS};
use crate::support::{binance_to_influx_with, rebuild, Service};

fn references(cfg: &MockBinanceConfig) -> HashMap<&'static str, Reference> {
    SYMBOLS.iter().map(|s| (*s, binance_reference(&cfg.snapshots[*s], &cfg.frames, s))).collect()
}

/// A TCP server that accepts connections and never answers: the worst kind of sink.
async fn hung_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_influxdb_outage_mid_run_loses_nothing() {
    let Some(mut influx) = InfluxServer::start().await else { return };
    let Some(cfg) = MockBinanceConfig::from_fixtures("2021-04-04") else { return };
    let refs = references(&cfg);
    // About 8 s of replay, so the outage falls in the middle of it.
    let mock = MockBinance::start(MockBinanceConfig { frame_interval: Duration::from_millis(3), ..cfg }).await;
    let db = TestDb::create(&influx.url).await;
    let toml = binance_to_influx_with(&mock.ws_url(), &mock.rest_url(), &SYMBOLS, &db.url, &db.name, "max_retries = 0\ntimeout_secs = 2");
    let svc = Service::start(&toml);

    tokio::time::sleep(Duration::from_secs(2)).await;
    influx.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    influx.resume().await;

    assert!(mock.wait_all_frames_sent(Duration::from_secs(60)).await);
    let expected: usize = refs.values().map(|r| r.applied_levels()).sum();
    let n = db.wait_for_count("book_delta", "", expected as u64, Duration::from_secs(90)).await;
    let report = svc.stop().await;
    assert_eq!(n, expected as u64, "every point arrives after the outage");
    for symbol in SYMBOLS {
        let r = &refs[symbol];
        assert_eq!(stored_levels(&db, symbol, "").await, reference_levels(r, r.applied.len()), "{symbol}: exactly once, same content");
        assert_eq!(rebuild(&db, symbol).await.book, r.book, "{symbol}: book rebuilt from the store");
    }
    let sink = &report.stats.sinks[0].1;
    assert!(sink.retries.get() > 0, "the outage was noticed");
    assert!(sink.points_spooled.get() > 0, "batches went through the spool");
    assert_eq!(sink.points_dropped.get(), 0);
    assert_eq!(sink.spool_points.get(), 0, "the spool drained");
    let feed = &report.stats.feeds[0].1;
    assert_eq!(feed.gaps.get(), 3, "no gap but the `shutdown` markers: the read loop never stalled");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_influxdb_never_stalls_the_read_loop() {
    let (url, _hung) = hung_server().await;
    read_loop_unaffected_by_sink_at(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_influxdb_answering_503_never_stalls_the_read_loop() {
    let server = HttpServer::start(|_| Response::text(503, "service unavailable").with_header("Retry-After", "1")).await;
    read_loop_unaffected_by_sink_at(&server.url()).await;
    assert!(server.request_count() >= 2, "the sink kept trying");
}

/// Replays the capture with pings every 100 ms into a service whose sink is at `url` (which
/// never stores anything), and checks the read loop never noticed.
async fn read_loop_unaffected_by_sink_at(url: &str) {
    let Some(cfg) = MockBinanceConfig::from_fixtures("2021-04-04") else { return };
    // Pings every 100 ms for the ~5 s of replay.
    let mock = MockBinance::start(MockBinanceConfig { frame_interval: Duration::from_millis(2), ping_interval: Duration::from_millis(100), ..cfg }).await;
    let db_name = format!("unavailable_{}_{}", std::process::id(), url.rsplit(':').next().unwrap());
    let toml = binance_to_influx_with(&mock.ws_url(), &mock.rest_url(), &SYMBOLS, url, &db_name, "max_retries = 0\ntimeout_secs = 1\nstop_deadline_secs = 1");
    let svc = Service::start(&toml);
    assert!(mock.wait_all_frames_sent(Duration::from_secs(60)).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = svc.stop().await;

    let pongs = mock.pongs();
    assert!(pongs.len() >= 30, "pings kept being answered: {}", pongs.len());
    assert!(pongs.iter().all(|p| p.matched), "pong payloads echo the pings");
    let worst = pongs.iter().filter_map(|p| p.latency).max().unwrap();
    assert!(worst < Duration::from_secs(1), "every pong within a second (Binance allows 60 s): worst {worst:?}");
    let feed = &report.stats.feeds[0].1;
    assert_eq!(feed.frames.get() as usize, mock.frames_sent(), "every frame was read");
    let sink = &report.stats.sinks[0].1;
    assert_eq!(sink.points_written.get(), 0);
    assert_eq!(sink.points_dropped.get(), 0, "nothing dropped");
    assert_eq!(sink.spool_points.get() as u64, feed.points.get(), "everything waits in the spool for the next start");
}

/// Synthetic MI packets of `levels` levels each.
fn packet(i: u64, levels: usize) -> DataPacket {
    let lvl = |k: usize| Level { price: Decimal::parse(&format!("{}.{:02}", 50_000 + k, i % 100)).unwrap(), size: Decimal::parse("1.25000000").unwrap() };
    DataPacket::MI(MarketIncremental {
        instrument: Instrument { exchange: "binance", market: "spot", symbol: Arc::from("BTCUSDT") },
        first_update_id: i,
        last_update_id: i,
        prev_update_id: None,
        event_time_ms: Some(1_700_000_000_000),
        recv_time_ns: clock::reserve_now(levels),
        bids: (0..levels / 2).map(lvl).collect(),
        asks: (levels / 2..levels).map(lvl).collect(),
    })
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_while_the_sink_hangs() {
    let (url, _hung) = hung_server().await;
    let dir = tempfile_dir("rss");
    let plugin = ds_api::plugin::find_sink("influxdb").expect("influxdb sink linked");
    let options: toml::Table = format!("url = \"{url}\"\ndatabase = \"x\"\nmax_retries = 0\ntimeout_secs = 1").parse().unwrap();
    let sink = (plugin.build)(&SinkSpec { name: "hung".into(), options }).unwrap();
    let stats = Arc::new(SinkStats::default());
    let cfg = BufferConfig { spool_dir: dir.clone(), stop_deadline: Duration::from_secs(1), ..BufferConfig::default() };
    let (tx, rx) = packet_channel("hung", cfg.capacity, stats.clone());
    let buffer = Buffer::new("hung", sink, cfg, stats.clone(), rx).unwrap();
    let (trigger, shutdown) = shutdown_pair();
    let task = tokio::spawn(buffer.run(shutdown));

    let before = rss_kib();
    let mut peak = before;
    const PACKETS: u64 = 60_000;
    const LEVELS: usize = 10;
    for i in 0..PACKETS {
        // Pace like a feed: never overrun the channel (that would be a drop, counted).
        while tx.capacity_left() < 16 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tx.send(packet(i, LEVELS));
        if i % 5_000 == 0 {
            peak = peak.max(rss_kib());
        }
    }
    // Let the encoder cut and spool the rest.
    tokio::time::sleep(Duration::from_secs(2)).await;
    peak = peak.max(rss_kib());
    let spooled_bytes = stats.spool_bytes.get() as u64;
    trigger.trigger();
    drop(tx);
    task.await.unwrap();
    let total = PACKETS * LEVELS as u64;
    assert_eq!(stats.points_dropped.get(), 0);
    assert_eq!(stats.spool_points.get() as u64, total, "every point is in the spool");
    let growth_mib = (peak - before) as f64 / 1024.0;
    let spool_mib = spooled_bytes as f64 / (1024.0 * 1024.0);
    eprintln!("RSS before {} KiB, peak {} KiB (+{growth_mib:.1} MiB) while {spool_mib:.1} MiB went to the spool", before, peak);
    assert!(spool_mib > 60.0, "the test pushed enough data: {spool_mib:.1} MiB");
    assert!(growth_mib < spool_mib / 2.0 && growth_mib < 48.0, "memory bounded: +{growth_mib:.1} MiB for {spool_mib:.1} MiB spooled");
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ds-durability-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
