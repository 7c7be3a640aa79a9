//! Scale-out through a 3-node JetStream cluster (stream replicas = 3), with the edges creating
//! the stream themselves (`create_stream`), both at once:
//!
//! - two edges racing to create the stream lose no acknowledged message (repeated rounds);
//! - two instances of the service (shards 0/2 and 1/2 of the same config) fed by the Binance
//!   mock publish while one NATS node is killed: every level of every applied update is in the
//!   stream exactly once (no overlap between the shards, no hole, no loss, no duplicate from a
//!   batch sent again), and the books rebuilt from the stream alone equal the reference;
//! - the whole picture into InfluxDB, with the writer crashing, the stream's leader node
//!   killed and restarted, and InfluxDB stopped: every level stored exactly once;
//! - the bus throughput quoted in the README.
//!
//! Under load (a 2-core machine shared with compilers) the cluster takes seconds to elect
//! leaders: the helpers wait for leaders and retry reads rather than sleeping a fixed time, and
//! every check that matters is on the final content, never on timing.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream;
use ds_tests::binance::{MockBinance, MockBinanceConfig};
use ds_tests::book::{binance_reference, OrderBook, Side};
use ds_tests::nats::NatsCluster;

use crate::binance::{reference_levels, SYMBOLS};
use crate::support::Service;

const STREAM: &str = "DSTEST";

/// An edge's config. `timeout_secs = 5`: a batch in flight when a node dies never gets its
/// acknowledgements and is sent again only after this long, so shorter is faster recovery,
/// while a too short one under load only costs resends (dropped by the duplicate window).
/// `stop_deadline_secs = 25`: the edges stop right after the replay, maybe still catching up
/// after the node's death; the clean stop may take that long to drain the spool to the bus
/// (the default, 10 s, is about one lost-acknowledgement timeout plus the backoff, too tight).
fn edge_config(ws_url: &str, rest_url: &str, nats_url: &str, shard: &str, spool: &std::path::Path) -> String {
    let symbols: Vec<String> = SYMBOLS.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        r#"
[service]
log_dir = ""
status_interval_secs = 1
spool_dir = "{spool}"
shard = "{shard}"

[[feed]]
name = "binance-edge"
connector = "binance_spot_depth"
symbols = [{symbols}]
sink = "bus"
ws_url = "{ws_url}"
rest_url = "{rest_url}"

[[sink]]
name = "bus"
plugin = "nats"
url = "{nats_url}"
stream = "{STREAM}"
subject_prefix = "ds"
create_stream = {{ replicas = 3 }}
timeout_secs = 5
flush_interval_ms = 100
batch_points = 500
stop_deadline_secs = 25
"#,
        spool = spool.display(),
        symbols = symbols.join(", "),
    )
}

/// One stored line, parsed as far as the checks need.
struct Point {
    measurement: String,
    tags: HashMap<String, String>,
    fields: HashMap<String, String>,
    ts: i64,
}

fn parse_line(line: &str) -> Point {
    // the test data holds no escaped spaces or commas
    let mut parts = line.splitn(3, ' ');
    let (series, fields, ts) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let mut series = series.split(',');
    let measurement = series.next().unwrap().to_string();
    let kv = |s: &str| s.split_once('=').map(|(k, v)| (k.to_string(), v.trim_end_matches('i').to_string())).unwrap();
    Point {
        measurement,
        tags: series.map(kv).collect(),
        fields: fields.split(',').map(kv).collect(),
        ts: ts.trim().parse().unwrap(),
    }
}

/// Runs `f` until it succeeds, at most 60 s: while a node is down or just came back, the
/// stream and the meta layer elect leaders and requests time out meanwhile.
async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The stream's current info, once it has a leader to answer.
async fn stream_info(js: &jetstream::Context, name: &str) -> jetstream::stream::Info {
    retry(&format!("info of stream {name}"), || async {
        let mut s = js.get_stream(name).await.map_err(|e| e.to_string())?;
        s.info().await.cloned().map_err(|e| e.to_string())
    })
    .await
}

/// Every line of every message in the stream, with the message's subject. Strict: nothing is
/// ever deleted from these streams, so every sequence from first to last must be read (a read
/// that fails is retried, never skipped: a skipped message would look like a lost one).
async fn read_stream(js: &jetstream::Context, name: &str) -> Vec<(String, Point)> {
    read_stream_lines(js, name).await.into_iter().map(|(subject, line)| (subject, parse_line(&line))).collect()
}

/// [`read_stream`] without parsing: (subject, line) in stream order.
async fn read_stream_lines(js: &jetstream::Context, name: &str) -> Vec<(String, String)> {
    let state = stream_info(js, name).await.state;
    let stream = retry("get stream", || js.get_stream(name)).await;
    let mut out = Vec::new();
    let mut read = 0u64;
    for seq in state.first_sequence..=state.last_sequence {
        let m = retry(&format!("message {seq} of {name}"), || stream.get_raw_message(seq)).await;
        read += 1;
        let text = std::str::from_utf8(&m.payload).expect("utf-8 line protocol").to_string();
        for line in text.lines().filter(|l| !l.is_empty()) {
            out.push((m.subject.to_string(), line.to_string()));
        }
    }
    assert_eq!(read, state.messages, "{name}: every message from first to last sequence read");
    out
}

/// What the edges published, seen live through a core subscription to the books' subjects
/// (every publish, resends included): for each subject, the highest `last_id` so far.
///
/// Why: the mock having *sent* its last frame does not mean the edges *read* it. Stopping them
/// at that moment (as the tests first did) lost the last updates of a book on a loaded machine,
/// before they reached the sink: the edges' own counters agreed with the sink's, and the bus
/// lacked the last levels of a book, which looked exactly like acknowledged messages lost by
/// JetStream. So the tests wait until every book's last update was published.
struct BusWatch {
    last_ids: std::sync::Arc<std::sync::Mutex<HashMap<String, u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl BusWatch {
    async fn start(client: &async_nats::Client) -> BusWatch {
        use futures::StreamExt;
        let mut sub = client.subscribe("ds.binance.spot.book_delta.*").await.expect("subscribe to the books");
        let last_ids = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
        let seen = last_ids.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let text = String::from_utf8_lossy(&m.payload).into_owned();
                let max = text.lines().filter(|l| !l.is_empty()).filter_map(|l| parse_line(l).fields.get("last_id")?.parse::<u64>().ok()).max();
                if let Some(max) = max {
                    let mut seen = seen.lock().unwrap();
                    let e = seen.entry(m.subject.to_string()).or_insert(0);
                    *e = (*e).max(max);
                }
            }
        });
        BusWatch { last_ids, task }
    }

    /// Waits until every subject of `want` was published with a `last_id` of at least the
    /// given one (0: any message at all).
    async fn wait(&self, want: &[(String, u64)], within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            {
                let seen = self.last_ids.lock().unwrap();
                if want.iter().all(|(s, id)| seen.get(s).is_some_and(|got| got >= id)) {
                    return true;
                }
            }
            if std::time::Instant::now() > deadline {
                eprintln!("published so far: {:?}, wanted {want:?}", self.last_ids.lock().unwrap());
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for BusWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// For each symbol: its book_delta subject and the last update id the reference applies.
fn last_updates(refs: &HashMap<&str, ds_tests::book::Reference>) -> Vec<(String, u64)> {
    SYMBOLS
        .iter()
        .map(|s| {
            let r = &refs[s];
            let last = reference_levels(r, r.applied.len()).last().map(|l| l.0).unwrap_or(0);
            (format!("ds.binance.spot.book_delta.{s}"), last)
        })
        .collect()
}

/// Two edges (shards 0/2 and 1/2) create the stream at once and publish through node 1, which
/// is killed mid-run: every level on the bus exactly once, the books rebuilt from it right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_publish_every_level_once_to_a_3_node_jetstream_that_loses_a_node() {
    let Some(mut cluster) = NatsCluster::start() else { return };
    let Some(cfg) = MockBinanceConfig::from_fixtures("2021-04-04") else { return };
    let refs: HashMap<_, _> = SYMBOLS.iter().map(|s| (*s, binance_reference(&cfg.snapshots[*s], &cfg.frames, s))).collect();
    // Slow enough that the node dies while both edges are publishing.
    let mock = MockBinance::start(MockBinanceConfig { ping_interval: Duration::from_millis(300), frame_interval: Duration::from_millis(2), ..cfg }).await;
    // No stream yet: both edges create it (`create_stream`), at the same moment.
    let watcher_client = async_nats::connect(cluster.nodes[0].url()).await.expect("connect to node 0");
    let published = BusWatch::start(&watcher_client).await;
    let watcher = jetstream::new(watcher_client);
    let spool = std::env::temp_dir().join(format!("ds-e2e-nats-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    // The edges are given node 1 only: killing it forces both to reconnect to the nodes they
    // learnt from the cluster (as a client whose configured server died would).
    let url = cluster.nodes[1].url();
    let edges: Vec<Service> = (0..2)
        .map(|i| Service::start(&edge_config(&mock.ws_url(), &mock.rest_url(), &url, &format!("{i}/2"), &spool.join(format!("edge{i}")))))
        .collect();

    // Kill the node once both edges are publishing through it (not at a fixed time: under
    // load an edge may not have connected yet, and an edge that never reached node 1 knows no
    // other node to try).
    let books: Vec<String> = SYMBOLS.iter().map(|s| format!("ds.binance.spot.book_delta.{s}")).collect();
    let any: Vec<(String, u64)> = books.iter().map(|b| (b.clone(), 0)).collect();
    assert!(published.wait(&any, Duration::from_secs(60)).await, "both edges publish");
    assert!(!mock.all_frames_sent(), "the replay is still running when the node dies");
    cluster.kill(1);
    assert!(mock.wait_all_frames_sent(Duration::from_secs(60)).await, "mock replayed every frame");
    assert!(published.wait(&last_updates(&refs), Duration::from_secs(60)).await, "every book's last update published");
    let mut reports = Vec::new();
    for e in edges {
        reports.push(e.stop().await);
    }
    for r in &reports {
        let sink = &r.stats.sinks[0].1;
        assert_eq!(sink.points_dropped.get(), 0, "nothing dropped");
        assert_eq!(sink.points_written.get(), r.stats.feeds[0].1.points.get(), "every point handed over was acknowledged by JetStream");
    }
    let feeds_per_edge: Vec<u64> = reports.iter().map(|r| r.stats.feeds[0].1.mi.get()).collect();
    assert!(feeds_per_edge.iter().all(|&n| n > 0), "both shards carried books: {feeds_per_edge:?}");

    let points = read_stream(&watcher, STREAM).await;

    for symbol in SYMBOLS {
        let r = &refs[symbol];
        let delta_subject = format!("ds.binance.spot.book_delta.{symbol}");
        // Exactly once: the multiset of levels on the bus equals the reference's.
        let mut levels: Vec<(u64, String, String, String)> = points
            .iter()
            .filter(|(s, p)| s == &delta_subject && p.measurement == "book_delta")
            .map(|(_, p)| {
                (
                    p.fields["last_id"].parse().unwrap(),
                    p.tags["side"].clone(),
                    format!("{}", p.fields["price"].parse::<f64>().unwrap()),
                    format!("{}", p.fields["qty"].parse::<f64>().unwrap()),
                )
            })
            .collect();
        levels.sort();
        let want = reference_levels(r, r.applied.len());
        let mut dedup = levels.clone();
        dedup.dedup();
        eprintln!("{symbol}: {} level(s) on the bus ({} distinct), {} expected", levels.len(), dedup.len(), want.len());
        if levels != want {
            // Evidence for a loss: which update ids are short, and what the nodes logged.
            let count = |v: &[(u64, String, String, String)]| v.iter().fold(BTreeMap::new(), |mut m: BTreeMap<u64, usize>, l| {
                *m.entry(l.0).or_default() += 1;
                m
            });
            let (have, need) = (count(&levels), count(&want));
            let short: Vec<_> = need.iter().filter(|(id, n)| have.get(id) != Some(n)).map(|(id, n)| (id, have.get(id).copied().unwrap_or(0), n)).collect();
            eprintln!("{symbol}: update ids with levels missing or extra (id, on the bus, expected): {short:?}");
            cluster.dump_logs();
        }
        assert_eq!(levels, want, "{symbol}: levels on the bus");

        // Rebuildable from the bus alone: the snapshot, then the deltas in timestamp order.
        let snap: Vec<&Point> = points.iter().filter(|(s, _)| s == &format!("ds.binance.spot.book_snapshot.{symbol}")).map(|(_, p)| p).collect();
        assert!(!snap.is_empty(), "{symbol}: snapshot published");
        assert!(snap.iter().all(|p| p.fields["snapshot_id"] == r.snapshot_last_update_id.to_string()));
        let mut book = OrderBook::new();
        let mut deltas: BTreeMap<i64, &Point> = BTreeMap::new();
        for p in snap {
            book.apply(Side::parse(&p.tags["side"]).unwrap(), &p.fields["price"], &p.fields["qty"]);
        }
        for (_, p) in points.iter().filter(|(s, _)| s == &delta_subject) {
            assert!(deltas.insert(p.ts, p).is_none(), "{symbol}: two points share a timestamp");
        }
        for p in deltas.values() {
            book.apply(Side::parse(&p.tags["side"]).unwrap(), &p.fields["price"], &p.fields["qty"]);
        }
        let diff = book.diff(&r.book, 10);
        assert!(diff.is_empty(), "{symbol}: book rebuilt from the stream differs: {diff:#?}");
    }
    let _ = std::fs::remove_dir_all(&spool);
}

/// The race that `create_stream` invites: two edges start at once, both find no stream, both
/// create it, and publish at once. Each edge is a real `nats` sink given one node's URL only;
/// a batch the sink refused is written again (as the spool would), so in the end every line
/// was acknowledged once. The stream must then hold every line exactly once: none lost after
/// its acknowledgement, none doubled by a resend. In every other round edge 0's node is killed
/// while the stream is being created: its sink must carry on through the nodes it learnt from
/// the cluster (a sink that dropped its client when creating timed out would know only the
/// dead node, and its batches would never be written). Several rounds on fresh clusters, as
/// the race depends on timing (`NATS_RACE_ROUNDS`, default 4, to loop longer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_creating_the_stream_at_once_lose_no_acknowledged_message() {
    let rounds: usize = std::env::var("NATS_RACE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    for round in 0..rounds {
        let Some(mut cluster) = NatsCluster::start() else { return };
        let kill = round % 2 == 1;
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let edges: Vec<_> = (0..2usize)
            .map(|e| {
                let (url, start) = (cluster.nodes[e].url(), start.clone());
                tokio::spawn(async move {
                    let spec = ds_api::SinkSpec {
                        name: format!("edge{e}"),
                        options: format!("url = \"{url}\"\nstream = \"RACE\"\ncreate_stream = {{ replicas = 3 }}\n").parse().unwrap(),
                    };
                    let mut sink = (ds_api::plugin::find_sink("nats").expect("nats sink registered").build)(&spec).unwrap_or_else(|e| panic!("{e:?}"));
                    start.wait().await;
                    let mut written = Vec::new();
                    let mut refused = 0;
                    let mut ts: i64 = 1_700_000_000_000_000_000;
                    for _ in 0..20 {
                        let batch: Vec<String> = (0..100)
                            .map(|i| {
                                ts += 1;
                                format!("book_delta,exchange=edge{e},market=spot,side=bid,symbol=S{} price=1,qty={i} {ts}", i % 10)
                            })
                            .collect();
                        let text = batch.iter().map(|l| format!("{l}\n")).collect::<String>();
                        let deadline = std::time::Instant::now() + Duration::from_secs(60);
                        while let Err(err) = sink.write(text.as_bytes(), batch.len()).await {
                            refused += 1;
                            assert!(std::time::Instant::now() < deadline, "edge{e}: the bus never took the batch: {err}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        written.extend(batch);
                    }
                    (written, refused)
                })
            })
            .collect();
        if kill {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cluster.kill(0);
        }
        let mut acknowledged = Vec::new();
        let mut refused = Vec::new();
        for e in edges {
            let (w, r) = e.await.expect("edge task");
            acknowledged.extend(w);
            refused.push(r);
        }
        let js = jetstream::new(async_nats::connect(cluster.nodes[2].url()).await.expect("connect to node 2"));
        let info = stream_info(&js, "RACE").await;
        let mut stored: Vec<String> = read_stream_lines(&js, "RACE").await.into_iter().map(|(_, l)| l).collect();
        eprintln!(
            "round {round}{}: {} line(s) acknowledged, {} stored, batches refused then sent again per edge {refused:?}, {} replicas",
            if kill { " (node 0 killed)" } else { "" },
            acknowledged.len(),
            stored.len(),
            info.config.num_replicas
        );
        acknowledged.sort();
        stored.sort();
        if stored != acknowledged {
            cluster.dump_logs();
            let missing = acknowledged.iter().filter(|l| stored.binary_search(l).is_err()).count();
            panic!("round {round}: {missing} acknowledged line(s) missing, {} stored line(s) in all vs {} acknowledged", stored.len(), acknowledged.len());
        }
        assert_eq!(info.config.num_replicas, 3);
    }
}

/// Throughput of the `nats` sink into the 3-node cluster (replicas = 3): batches of 5,000
/// Binance-shaped levels over 20 books, one `write` at a time as the buffer's writer does, each
/// waiting for every acknowledgement. Prints the figure quoted in the README.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_throughput_with_three_replicas() {
    let Some(cluster) = NatsCluster::start() else { return };
    let spec = ds_api::SinkSpec {
        name: "bus".into(),
        options: format!("url = \"{}\"\nstream = \"TPUT\"\ncreate_stream = {{ replicas = 3 }}\n", cluster.url()).parse().unwrap(),
    };
    let plugin = ds_api::plugin::find_sink("nats").expect("nats sink registered");
    let mut sink = (plugin.build)(&spec).unwrap_or_else(|e| panic!("{e:?}"));
    let batch_points = 5000;
    let mut ts: i64 = 1_700_000_000_000_000_000;
    let batch = |ts: &mut i64| {
        let mut b = String::with_capacity(batch_points * 150);
        for i in 0..batch_points {
            let side = if i % 2 == 0 { "bid" } else { "ask" };
            b.push_str(&format!(
                "book_delta,exchange=binance,market=spot,side={side},symbol=SYM{}USDT price=5{}.{:02},qty=0.{:06},first_id={}i,last_id={}i,event_ts=1617494400000i {}\n",
                i % 20, i % 97, i % 100, i * 7 % 1_000_000, i, i + 1, *ts
            ));
            *ts += 1;
        }
        b
    };
    // warm-up: connection, stream creation, leader election
    let first = batch(&mut ts);
    let mut ok = false;
    for _ in 0..50 {
        if sink.write(first.as_bytes(), batch_points).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "the sink reaches the cluster");
    let batches: Vec<String> = (0..40).map(|_| batch(&mut ts)).collect();
    let bytes: usize = batches.iter().map(|b| b.len()).sum();
    let start = std::time::Instant::now();
    for b in &batches {
        sink.write(b.as_bytes(), batch_points).await.expect("acknowledged");
    }
    let secs = start.elapsed().as_secs_f64();
    let points = batches.len() * batch_points;
    eprintln!(
        "nats sink, 3 replicas: {points} points in {secs:.2} s = {:.0} points/s, {:.1} MB/s of line protocol",
        points as f64 / secs,
        bytes as f64 / secs / 1e6
    );
    let client = async_nats::connect(cluster.nodes[0].url()).await.unwrap();
    let mut stream = jetstream::new(client).get_stream("TPUT").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
}

/// A writer instance as a crash would leave it: `abort` drops everything it held in memory
/// (no flush, no acknowledgement), as `kill -9` would; its spool directory stays.
struct Writer {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<data_storage::run::RunReport>,
}

impl Writer {
    fn start(toml: &str) -> Writer {
        data_storage::logging::init_for_tests();
        let config = data_storage::config::parse(toml, std::path::Path::new("writer.toml"), &|k| std::env::var(k).ok())
            .unwrap_or_else(|e| panic!("writer config invalid: {e:#?}"));
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        Writer { stop, handle: tokio::spawn(data_storage::run::run(config, async move { let _ = rx.await; })) }
    }

    async fn crash(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(30), self.handle).await.expect("writer stops within 30 s");
    }
}

fn writer_config(nats_url: &str, stream: &str, influx_url: &str, db: &str, spool: &std::path::Path) -> String {
    format!(
        r#"
[service]
log_dir = ""
status_interval_secs = 1
spool_dir = "{spool}"

[[feed]]
name = "from-bus"
connector = "nats_source"
symbols = "all"
sink = "influx"
url = "{nats_url}"
stream = "{stream}"
consumer = "writer"
ack_wait_secs = 2

[[sink]]
name = "influx"
plugin = "influxdb"
url = "{influx_url}"
database = "{db}"
flush_interval_ms = 100
timeout_secs = 2
max_retries = 0
quarantine_dir = "{spool}/quarantine"
"#,
        spool = spool.display(),
    )
}

/// The whole picture: two sharded edges -> JetStream (3 nodes, R3) -> a writer -> InfluxDB.
/// The edges create the stream at once; the writer crashes mid-run and starts again; the node
/// leading the stream is killed (no clean shutdown) and started again later; InfluxDB is down
/// for a while: every level is stored exactly once and the books rebuilt from InfluxDB are right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_to_jetstream_to_a_writer_that_crashes_into_influxdb_that_stops() {
    let Some(mut cluster) = NatsCluster::start() else { return };
    let Some(cfg) = MockBinanceConfig::from_fixtures("2021-04-04") else { return };
    let Some(mut influx) = ds_tests::influxd::InfluxServer::start().await else { return };
    let db = ds_tests::influx::TestDb::create(&influx.url).await;
    let refs: HashMap<_, _> = SYMBOLS.iter().map(|s| (*s, binance_reference(&cfg.snapshots[*s], &cfg.frames, s))).collect();
    let mock = MockBinance::start(MockBinanceConfig { ping_interval: Duration::from_millis(300), frame_interval: Duration::from_millis(3), ..cfg }).await;
    let dir = std::env::temp_dir().join(format!("ds-e2e-nats-writer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let stream = "DSTEST";
    // No stream yet: the edges create it, at the same moment.
    let edges: Vec<Service> = (0..2)
        .map(|i| Service::start(&edge_config(&mock.ws_url(), &mock.rest_url(), &cluster.url(), &format!("{i}/2"), &dir.join(format!("edge{i}")))))
        .collect();
    let wcfg = writer_config(&cluster.url(), stream, &influx.url, &db.name, &dir.join("writer"));
    // Every node: the one this client is on may be the one killed below.
    let client = async_nats::connect(cluster.nodes.iter().map(|n| n.url()).collect::<Vec<_>>()).await.expect("connect to the cluster");
    let published = BusWatch::start(&client).await;
    let js = jetstream::new(client);

    // The stream exists once an edge wrote to it; the writer retries until then.
    let writer = Writer::start(&wcfg);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stored_before_crash = db.count("book_delta", "").await;
    writer.crash().await;
    assert!(!mock.all_frames_sent(), "the replay is still running when the writer crashes");
    let writer = Writer::start(&wcfg);
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // Kill the node that leads the stream: the hardest one to lose (a new leader must be
    // elected before anything is acknowledged again; the edges' batches wait in their spools).
    let leader = stream_info(&js, stream).await.cluster.and_then(|c| c.leader).expect("the stream has a leader");
    let killed = cluster.index_of(&leader).expect("leader is one of the nodes");
    assert!(!mock.all_frames_sent(), "the replay is still running when the NATS node dies");
    cluster.kill(killed);
    influx.stop();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let held = stream_info(&js, stream).await.state.messages;
    influx.resume().await;
    // The node comes back with its store as it was and catches up from the others.
    cluster.restart(killed);

    assert!(mock.wait_all_frames_sent(Duration::from_secs(60)).await, "mock replayed every frame");
    assert!(published.wait(&last_updates(&refs), Duration::from_secs(60)).await, "every book's last update published");
    for e in edges {
        e.stop().await;
    }
    let expected: usize = refs.values().map(|r| r.applied_levels()).sum();
    let n = db.wait_for_count("book_delta", "", expected as u64, Duration::from_secs(60)).await;
    let info = retry("consumer info", || async {
        let s = js.get_stream(stream).await.map_err(|e| e.to_string())?;
        let mut c: jetstream::consumer::PullConsumer = s.get_consumer("writer").await.map_err(|e| e.to_string())?;
        c.info().await.cloned().map_err(|e| e.to_string())
    })
    .await;
    eprintln!(
        "writer: {stored_before_crash} level(s) stored before the crash, node {leader} (stream leader) killed and restarted, stream held {held} message(s) while InfluxDB was down, {} redelivered, {} acknowledged",
        info.num_redelivered, info.ack_floor.stream_sequence
    );
    writer.stop().await;
    if n != expected as u64 {
        // Where did it go missing: on the bus already, or between the bus and InfluxDB?
        let points = read_stream(&js, stream).await;
        for symbol in SYMBOLS {
            let on_bus = points.iter().filter(|(s, p)| s == &format!("ds.binance.spot.book_delta.{symbol}") && p.measurement == "book_delta").count();
            let stored = crate::binance::stored_levels(&db, symbol, "").await.len();
            eprintln!("{symbol}: {on_bus} level(s) on the bus, {stored} stored, {} expected", refs[symbol].applied_levels());
        }
    }
    assert_eq!(n, expected as u64, "every level of every applied update stored, none twice");
    for symbol in SYMBOLS {
        let r = &refs[symbol];
        assert_eq!(crate::binance::stored_levels(&db, symbol, "").await, reference_levels(r, r.applied.len()), "{symbol}: stored levels");
        let rebuilt = crate::support::rebuild(&db, symbol).await;
        assert_eq!(rebuilt.snapshot_id, r.snapshot_last_update_id);
        let diff = rebuilt.book.diff(&r.book, 10);
        assert!(diff.is_empty(), "{symbol}: book rebuilt from InfluxDB differs: {diff:#?}");
    }
    db.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
}

