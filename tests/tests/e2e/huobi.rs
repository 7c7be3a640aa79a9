//! Huobi (HTX), end to end: the mock exchange (gzip frames, server pings, sub/req/rep on
//! `/feed` and `/ws`, generated MBP streams from real seed books, the real 2021-04-17 capture
//! replayed byte for byte) -> the service -> a real InfluxDB. The store is read back and
//! compared with the mock's truth and with `ds_tests::huobi::huobi_reference`, neither of which
//! shares code with the connector.

use std::sync::Arc;
use std::time::Duration;

use data_storage::run::RunReport;
use ds_api::FeedStats;
use ds_tests::book::OrderBook;
use ds_tests::huobi::{
    gzip_bomb, huobi_reference, Delivery, GeneratedUpdate, HuobiCapture, MbpStreamConfig,
    MockHuobi, MockHuobiConfig, RefreshPush, SeedBook,
};
use ds_tests::influx::{influx_url, quote_str, RowExt, TestDb};
use serde_json::Value;

use crate::support::{eventually, feeds_to_influx, rebuild_where, Service};

const WAIT: Duration = Duration::from_secs(60);
/// Symbols of the capture with very different price styles: `9.121E-7`, `50171.25`, `36.9`.
const THREE: [&str; 3] = ["trioeth", "yfihusd", "fil3susdt"];

/// The MBP book's series: `exchange = 'huobi' AND market = 'spot' AND symbol = 'TRIOETH'`.
pub(crate) fn series(symbol: &str) -> String {
    format!(
        "exchange = 'huobi' AND market = 'spot' AND symbol = {}",
        quote_str(&symbol.to_ascii_uppercase())
    )
}

/// One `[[feed]]` table on the mock; `extra` holds more option lines.
pub(crate) fn feed(name: &str, connector: &str, symbols: &[&str], mock: &MockHuobi, extra: &str) -> String {
    let symbols: Vec<String> = symbols.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "\n[[feed]]\nname = \"{name}\"\nconnector = \"{connector}\"\nsymbols = [{}]\nsink = \"influx\"\nws_url = \"{}\"\nrest_url = \"{}\"\n{extra}\n",
        symbols.join(", "),
        mock.ws_url(),
        mock.rest_url()
    )
}

pub(crate) fn feed_stats<'a>(report: &'a RunReport, name: &str) -> &'a Arc<FeedStats> {
    &report
        .stats
        .feeds
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no feed {name}"))
        .1
}

/// Contract 1 for an MBP feed: every frame is an applied update, a snapshot, one the
/// snapshot already held, one discarded while out of sync, a control frame (ack, ping) or
/// an invalid frame.
pub(crate) fn assert_mbp_frames_accounted(f: &FeedStats) {
    assert_eq!(
        f.frames.get(),
        f.mi.get()
            + f.st.get()
            + f.superseded.get()
            + f.out_of_sequence.get()
            + f.control.get()
            + f.invalid.get(),
        "frames accounted for: mi {} st {} superseded {} oos {} control {} invalid {}",
        f.mi.get(),
        f.st.get(),
        f.superseded.get(),
        f.out_of_sequence.get(),
        f.control.get(),
        f.invalid.get()
    );
}

/// Seeds of the capture's symbols (their first real `depth.step0` book).
pub(crate) fn seeds(cap: &HuobiCapture, symbols: &[&str]) -> Vec<SeedBook> {
    symbols
        .iter()
        .map(|s| {
            cap.seeds
                .iter()
                .find(|b| b.symbol == *s)
                .expect("seed")
                .clone()
        })
        .collect()
}

struct Setup {
    mock: MockHuobi,
    db: TestDb,
    cap: HuobiCapture,
}

async fn setup(
    symbols: &[&str],
    stream: MbpStreamConfig,
    tweak: impl FnOnce(&mut MockHuobiConfig),
) -> Option<Setup> {
    let url = influx_url()?;
    let cap = HuobiCapture::load()?;
    let mut cfg = MockHuobiConfig {
        books: seeds(&cap, symbols),
        stream,
        ping_interval: Duration::from_millis(300),
        // Short, so the stream is running when the `req`s go out (100 ms apart): the
        // snapshots then lag behind incrementals the connector already holds.
        start_delay: Duration::from_millis(20),
        ..MockHuobiConfig::default()
    };
    tweak(&mut cfg);
    let mock = MockHuobi::start(cfg).await;
    let db = TestDb::create(&url).await;
    Some(Setup { mock, db, cap })
}

fn stream(updates: usize) -> MbpStreamConfig {
    MbpStreamConfig {
        levels: 150,
        updates,
        interval: Duration::from_millis(3),
        req_lag: 5,
        max_seq_step: 5,
        ..MbpStreamConfig::default()
    }
}

/// (seqNum, prevSeqNum, side, price, qty) of every stored delta level of a book, sorted;
/// numbers as InfluxDB returns them.
pub(crate) async fn stored_deltas(
    db: &TestDb,
    symbol: &str,
    extra_where: &str,
) -> Vec<(u64, u64, String, String, String)> {
    let rows = db
        .query(&format!(
            "SELECT price, qty, side, last_id, prev_id FROM book_delta WHERE {}{extra_where}",
            series(symbol)
        ))
        .await;
    let mut v: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.u64("last_id").unwrap(),
                r.u64("prev_id").unwrap(),
                r.str("side").unwrap().to_string(),
                format!("{}", r.f64("price").unwrap()),
                format!("{}", r.f64("qty").unwrap()),
            )
        })
        .collect();
    v.sort();
    v
}

/// The same from generated updates (text parsed as InfluxDB parses it).
pub(crate) fn expected_deltas<'a>(
    updates: impl IntoIterator<Item = &'a GeneratedUpdate>,
) -> Vec<(u64, u64, String, String, String)> {
    let mut v: Vec<_> = updates
        .into_iter()
        .flat_map(|u| {
            u.levels.iter().map(move |(side, p, q)| {
                (
                    u.seq_num,
                    u.prev_seq_num,
                    side.as_str().to_string(),
                    format!("{}", p.parse::<f64>().unwrap()),
                    format!("{}", q.parse::<f64>().unwrap()),
                )
            })
        })
        .collect();
    v.sort();
    v
}

/// Distinct `snapshot_id`s stored for a series, in time order.
pub(crate) async fn snapshot_ids(db: &TestDb, where_clause: &str) -> Vec<u64> {
    let rows = db
        .query(&format!(
            "SELECT snapshot_id FROM book_snapshot WHERE {where_clause}"
        ))
        .await;
    let mut ids: Vec<u64> = Vec::new();
    for r in rows {
        let id = r.u64("snapshot_id").unwrap();
        if ids.last() != Some(&id) {
            ids.push(id);
        }
    }
    ids
}

/// Whether the book rebuilt from the store equals the mock's truth, with no gap after its
/// snapshot.
pub(crate) async fn rebuilt_equals_truth(db: &TestDb, mock: &MockHuobi, symbol: &str) -> bool {
    let r = rebuild_where(db, &series(symbol)).await;
    r.gaps_after_snapshot == 0 && r.book == mock.book(symbol)
}

/// Peak resident set size of this process (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbp_streams_are_stored_exactly_once_and_books_rebuild_from_the_store() {
    let Some(Setup { mock, db, .. }) = setup(&THREE, stream(1500), |_| {}).await else {
        return;
    };
    // One symbol in the exchange's spelling, one upper case: both name the same book.
    let toml = feeds_to_influx(
        &feed(
            "huobi-mbp",
            "huobi_mbp",
            &["trioeth", "YFIHUSD", "fil3susdt"],
            &mock,
            "",
        ),
        &db,
    );
    let svc = Service::start(&toml);

    assert!(
        mock.wait_stream_done(WAIT).await,
        "the mock generated every update"
    );
    let mut expected_points = 0;
    let mut synced = Vec::new();
    for symbol in THREE {
        let served = mock.snapshots_served(symbol);
        assert_eq!(served.len(), 1, "{symbol}: one req snapshot");
        let s0 = served[0];
        let updates = mock.updates(symbol);
        assert!(updates.iter().all(|u| u.delivery == Delivery::Sent));
        let applied: Vec<&GeneratedUpdate> = updates.iter().filter(|u| u.seq_num > s0).collect();
        expected_points += applied.iter().map(|u| u.levels.len()).sum::<usize>();
        synced.push((
            symbol,
            s0,
            updates.iter().filter(|u| u.seq_num <= s0).count(),
            applied.len(),
        ));
    }
    let n = db
        .wait_for_count(
            "book_delta",
            "exchange = 'huobi'",
            expected_points as u64,
            WAIT,
        )
        .await;
    assert_eq!(
        n, expected_points as u64,
        "every level of every applied update stored"
    );
    assert!(
        mock.wait_for_pongs(2, Duration::from_secs(5)).await >= 2,
        "pings answered"
    );
    let report = svc.stop().await;

    for &(symbol, s0, _, _) in &synced {
        let updates = mock.updates(symbol);
        assert_eq!(
            snapshot_ids(&db, &series(symbol)).await,
            [s0],
            "{symbol}: the stored snapshot is the req reply"
        );
        // Exactly once: the multiset of stored levels equals the updates after the snapshot.
        assert_eq!(
            stored_deltas(&db, symbol, "").await,
            expected_deltas(updates.iter().filter(|u| u.seq_num > s0)),
            "{symbol}: stored levels"
        );
        // Rebuildable: the snapshot and later deltas from the store equal the mock's truth
        // and the independent reference.
        let rebuilt = rebuild_where(&db, &series(symbol)).await;
        assert_eq!(rebuilt.gaps_after_snapshot, 0);
        let truth = mock.book(symbol);
        let diff = rebuilt.book.diff(&truth, 10);
        assert!(
            diff.is_empty(),
            "{symbol}: book rebuilt from InfluxDB differs from the truth: {diff:#?}"
        );
        let snapshot_book = {
            let rows = db
                .query(&format!(
                    "SELECT price, qty, side FROM book_snapshot WHERE {}",
                    series(symbol)
                ))
                .await;
            let mut b = OrderBook::new();
            for r in rows {
                b.set(
                    ds_tests::book::Side::parse(r.str("side").unwrap()).unwrap(),
                    r.f64("price").unwrap(),
                    r.f64("qty").unwrap(),
                );
            }
            b
        };
        let reference = huobi_reference(s0, snapshot_book, &updates);
        assert_eq!(reference.gap_at, None);
        assert_eq!(rebuilt.book, reference.book, "{symbol}: store vs reference");
        assert!(
            !truth.is_crossed() && truth.len() > 50,
            "{symbol}: a real-looking book ({} levels)",
            truth.len()
        );
    }
    let gaps = db.query("SELECT reason, symbol FROM book_gap").await;
    assert_eq!(
        gaps.len(),
        3,
        "no gap, one `shutdown` marker per book at stop: {gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| g.str("reason") == Some("shutdown")),
        "{gaps:?}"
    );
    assert_eq!(db.count("invalid_frame", "").await, 0);

    let f = feed_stats(&report, "huobi-mbp");
    assert_mbp_frames_accounted(f);
    let superseded: usize = synced.iter().map(|s| s.2).sum();
    let applied: usize = synced.iter().map(|s| s.3).sum();
    assert!(
        superseded > 0,
        "the snapshots lagged behind held incrementals (the rule's hard case)"
    );
    assert_eq!(
        f.superseded.get() as usize,
        superseded,
        "held incrementals the snapshot already contained"
    );
    assert_eq!(
        f.mi.get() as usize,
        applied,
        "every later incremental applied (empty ones too)"
    );
    assert_eq!(
        (
            f.st.get(),
            f.resyncs.get(),
            f.out_of_sequence.get(),
            f.invalid.get(),
            f.gaps.get()
        ),
        (3, 3, 0, 0, 3)
    );
    assert!(f.control.get() >= 3 + 2, "three acks and the pings");
    assert!(
        f.frames.get() as usize >= mock.frames_sent() - 3,
        "the service read what the mock sent (bar pings in flight at stop)"
    );
    assert_eq!(mock.req_violations(), 0, "at least 100 ms between two req");
    assert!(
        mock.pongs().iter().all(|p| p.matched),
        "every pong echoed a ping: {:?}",
        mock.pongs()
    );
    let conns = mock.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].path, "/feed");
    assert_eq!(
        conns[0].topics,
        [
            "market.trioeth.mbp.150",
            "market.yfihusd.mbp.150",
            "market.fil3susdt.mbp.150"
        ]
    );
    let sink = &report.stats.sinks[0].1;
    assert_eq!(sink.points_dropped.get(), 0);
    assert_eq!(
        sink.points_written.get(),
        f.points.get(),
        "every point handed over was written"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_or_reordered_update_stores_a_gap_and_a_fresh_req_snapshot() {
    let mut s = stream(1200);
    s.drop = vec![("trioeth".into(), 600)];
    s.reorder = vec![("yfihusd".into(), 700)];
    let Some(Setup { mock, db, .. }) = setup(&THREE, s, |_| {}).await else {
        return;
    };
    let svc = Service::start(&feeds_to_influx(
        &feed("huobi-mbp", "huobi_mbp", &THREE, &mock, ""),
        &db,
    ));
    assert!(mock.wait_stream_done(WAIT).await);
    let resynced = eventually(WAIT, || {
        let (db, mock) = (&db, &mock);
        async move {
            db.count("book_gap", "").await >= 2
                && rebuilt_equals_truth(db, mock, "trioeth").await
                && rebuilt_equals_truth(db, mock, "yfihusd").await
        }
    })
    .await;
    let report = svc.stop().await;
    assert!(
        resynced,
        "both books rebuilt from the store equal the exchange's after their resync"
    );

    let gaps = db
        .query("SELECT reason, last_id, next_id, symbol FROM book_gap WHERE reason != 'shutdown'")
        .await;
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    for (symbol, lost) in [("trioeth", 600), ("yfihusd", 700)] {
        let u = mock.updates(symbol);
        let g = gaps
            .iter()
            .find(|g| g.str("symbol") == Some(&*symbol.to_ascii_uppercase()))
            .unwrap_or_else(|| panic!("{symbol}: no gap in {gaps:?}"));
        assert_eq!(g.str("reason"), Some("sequence_break"));
        assert_eq!(
            g.u64("last_id"),
            Some(u[lost - 1].seq_num),
            "{symbol}: last applied before the gap"
        );
        assert_eq!(
            g.u64("next_id"),
            Some(u[lost + 1].seq_num),
            "{symbol}: the update that did not chain"
        );
        let ids = snapshot_ids(&db, &series(symbol)).await;
        let served = mock.snapshots_served(symbol);
        assert!(
            ids.len() >= 2 && mock.req_count(symbol) >= 2,
            "{symbol}: a fresh req snapshot: {ids:?}"
        );
        assert_eq!(ids[0], served[0]);
        assert!(
            ids[1] >= u[lost].seq_num,
            "{symbol}: the new snapshot covers the lost update"
        );
        let rebuilt = rebuild_where(&db, &series(symbol)).await;
        assert!(
            rebuilt.snapshot_time > g.i64("time").unwrap(),
            "{symbol}: the fresh snapshot follows the gap marker"
        );
        // Before the gap, every applied level stored exactly once.
        let before = format!(" AND last_id <= {}", u[lost - 1].seq_num);
        let applied_before = u[..lost].iter().filter(|x| x.seq_num > served[0]);
        assert_eq!(
            stored_deltas(&db, symbol, &before).await,
            expected_deltas(applied_before),
            "{symbol}"
        );
    }
    // The third book never noticed.
    let u = mock.updates("fil3susdt");
    let s0 = mock.snapshots_served("fil3susdt");
    assert_eq!(s0.len(), 1, "fil3susdt was not resynced");
    assert_eq!(
        stored_deltas(&db, "fil3susdt", "").await,
        expected_deltas(u.iter().filter(|x| x.seq_num > s0[0]))
    );
    assert!(rebuilt_equals_truth(&db, &mock, "fil3susdt").await);

    let f = feed_stats(&report, "huobi-mbp");
    assert_mbp_frames_accounted(f);
    assert_eq!(
        f.gaps.get(),
        2 + 3,
        "the two breaks, and a `shutdown` marker per book at stop"
    );
    assert!(
        f.resyncs.get() >= 5,
        "three initial snapshots and two resyncs: {}",
        f.resyncs.get()
    );
    assert_eq!(mock.req_violations(), 0);
    assert_eq!(
        mock.connections().len(),
        1,
        "a gap resyncs one symbol; the connection stays"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stops_pinging_or_is_closed_for_missed_pongs_is_replaced() {
    let symbols = ["trioeth", "yfihusd"];
    let mut s = stream(4000);
    s.interval = Duration::from_millis(3);
    let Some(Setup { mock, db, .. }) = setup(&symbols, s, |c| {
        c.ping_interval = Duration::from_millis(200)
    })
    .await
    else {
        return;
    };
    let svc = Service::start(&feeds_to_influx(
        &feed(
            "huobi-mbp",
            "huobi_mbp",
            &symbols,
            &mock,
            "ping_timeout_ms = 1000",
        ),
        &db,
    ));

    // Phase 1: the connection goes dead (no ping, no data). No frame for 1 s: replaced.
    assert!(
        eventually(WAIT, || async {
            db.count("book_snapshot", "").await > 0 && mock.updates("yfihusd").len() > 400
        })
        .await
    );
    mock.go_silent();
    assert!(
        mock.wait_until(WAIT, |m| m.connections().len() == 2
            && !m.connections()[0].active)
            .await,
        "a new connection replaced the silent one"
    );
    let dead = &mock.connections()[0];
    assert!(dead.silent);
    assert!(
        eventually(WAIT, || async {
            db.count("book_gap", "reason = 'disconnect'").await == 2
        })
        .await
    );
    assert!(
        eventually(WAIT, || async {
            snapshot_ids(&db, &series("trioeth")).await.len() >= 2
                && snapshot_ids(&db, &series("yfihusd")).await.len() >= 2
        })
        .await
    );

    // Phase 2: the server stops hearing our pongs and closes after two pings: replaced too.
    mock.set_ignore_pongs(true);
    assert!(
        mock.wait_until(WAIT, |m| m.connections().len() >= 2
            && !m.connections()[1].active)
            .await
    );
    mock.set_ignore_pongs(false);
    assert_eq!(
        mock.connections()[1].close_reason.as_deref(),
        Some("two pings without a pong")
    );
    assert!(
        mock.wait_until(WAIT, |m| m.active_connections().len() == 1
            && m.connections().len() >= 3)
            .await
    );

    assert!(mock.wait_stream_done(WAIT).await);
    let caught_up = eventually(WAIT, || async {
        rebuilt_equals_truth(&db, &mock, "trioeth").await
            && rebuilt_equals_truth(&db, &mock, "yfihusd").await
    })
    .await;
    let report = svc.stop().await;
    assert!(
        caught_up,
        "after two replaced connections, the books rebuilt from the store equal the truth"
    );

    for symbol in symbols {
        let gaps = db
            .query(&format!(
                "SELECT reason FROM book_gap WHERE {} AND reason = 'disconnect'",
                series(symbol)
            ))
            .await;
        assert_eq!(
            gaps.len(),
            2,
            "{symbol}: one disconnect marker per lost connection"
        );
        assert!(
            snapshot_ids(&db, &series(symbol)).await.len() >= 3,
            "{symbol}: a fresh snapshot on every connection"
        );
    }
    let f = feed_stats(&report, "huobi-mbp");
    assert_mbp_frames_accounted(f);
    assert_eq!(f.reconnects.get(), 2);
    assert_eq!(f.connections.get(), 0);
    assert_eq!(f.invalid.get(), 0);
    assert_eq!(mock.req_violations(), 0);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capture_replays_into_trades_and_depth_step0_snapshots_exactly() {
    let Some(cap) = HuobiCapture::load() else {
        return;
    };
    let symbols: Vec<&str> = cap.symbols.iter().map(String::as_str).collect();
    let pushes = cap.pushes.clone();
    let Some(Setup { mock, db, cap }) = setup(&symbols, stream(200), |c| c.replay = pushes).await
    else {
        return;
    };
    let toml = feeds_to_influx(
        &(feed("huobi-trades", "huobi_trades", &symbols, &mock, "")
            + &feed(
                "huobi-mbp",
                "huobi_mbp",
                &symbols,
                &mock,
                "periodic_snapshots = \"depth.step0\"",
            )),
        &db,
    );
    let svc = Service::start(&toml);
    assert!(
        mock.wait_until(WAIT, |m| m.replayed() == 292 + 44).await,
        "every recorded push replayed: {}",
        mock.replayed()
    );
    assert!(mock.wait_stream_done(WAIT).await);
    let step0_levels: usize = cap
        .pushes
        .iter()
        .filter(|p| p.topic.ends_with("depth.step0"))
        .map(|p| {
            let v: Value = serde_json::from_str(&p.text).unwrap();
            v["tick"]["bids"].as_array().unwrap().len()
                + v["tick"]["asks"].as_array().unwrap().len()
        })
        .sum();
    assert_eq!(
        db.wait_for_count("trade", "", 73, WAIT).await,
        73,
        "73 trades in 44 frames"
    );
    assert_eq!(
        db.wait_for_count(
            "book_snapshot",
            "market = 'spot.depth.step0'",
            step0_levels as u64,
            WAIT
        )
        .await,
        step0_levels as u64
    );
    let all_synced = eventually(WAIT, || async {
        for s in &symbols {
            if !rebuilt_equals_truth(&db, &mock, s).await {
                return false;
            }
        }
        true
    })
    .await;
    let report = svc.stop().await;
    assert!(
        all_synced,
        "the MBP books, in their own series, rebuild to the truth"
    );

    // Trades: every recorded trade, its id the tradeId, its numbers exact.
    let rows = db
        .query("SELECT price, qty, trade_id, side, event_ts, symbol, market FROM trade")
        .await;
    let mut stored: Vec<(String, String, String, String, String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.str("symbol").unwrap().to_owned(),
                r.str("trade_id").unwrap().to_owned(),
                format!("{}", r.f64("price").unwrap()),
                format!("{}", r.f64("qty").unwrap()),
                r.str("side").unwrap().to_owned(),
                r.i64("event_ts").unwrap(),
            )
        })
        .collect();
    assert!(rows.iter().all(|r| r.str("market") == Some("spot")));
    let mut expected = Vec::new();
    for p in cap
        .pushes
        .iter()
        .filter(|p| p.topic.ends_with("trade.detail"))
    {
        let v: Value = serde_json::from_str(&p.text).unwrap();
        let symbol = p.topic.split('.').nth(1).unwrap().to_ascii_uppercase();
        for t in v["tick"]["data"].as_array().unwrap() {
            expected.push((
                symbol.clone(),
                t["tradeId"].as_u64().unwrap().to_string(),
                format!("{}", t["price"].as_f64().unwrap()),
                format!("{}", t["amount"].as_f64().unwrap()),
                t["direction"].as_str().unwrap().to_owned(),
                t["ts"].as_i64().unwrap(),
            ));
        }
    }
    stored.sort();
    expected.sort();
    assert_eq!(stored, expected);

    // depth.step0: every push stored as a whole book under its version, in its own series.
    for p in cap
        .pushes
        .iter()
        .filter(|p| p.topic.ends_with("depth.step0"))
        .step_by(7)
    {
        let v: Value = serde_json::from_str(&p.text).unwrap();
        let symbol = p.topic.split('.').nth(1).unwrap().to_ascii_uppercase();
        let version = v["tick"]["version"].as_u64().unwrap();
        let rows = db
            .query(&format!("SELECT price, qty, side, event_ts FROM book_snapshot WHERE market = 'spot.depth.step0' AND symbol = {} AND snapshot_id = {version}", quote_str(&symbol)))
            .await;
        let mut from_store = OrderBook::new();
        for r in &rows {
            from_store.set(
                ds_tests::book::Side::parse(r.str("side").unwrap()).unwrap(),
                r.f64("price").unwrap(),
                r.f64("qty").unwrap(),
            );
            assert_eq!(r.i64("event_ts"), v["tick"]["ts"].as_i64());
        }
        let mut from_capture = OrderBook::new();
        for (side, key) in [
            (ds_tests::book::Side::Bid, "bids"),
            (ds_tests::book::Side::Ask, "asks"),
        ] {
            for (price, qty) in ds_tests::huobi::number_pairs(&p.text, key) {
                from_capture.apply(side, &price, &qty);
            }
        }
        assert_eq!(from_store, from_capture, "{symbol} version {version}");
    }
    let step0_ids = db.query("SELECT count(price) FROM book_snapshot WHERE market = 'spot.depth.step0' GROUP BY symbol").await;
    assert_eq!(step0_ids.len(), 10);

    let trades = feed_stats(&report, "huobi-trades");
    assert_eq!((trades.trades.get(), trades.invalid.get()), (73, 0));
    assert_eq!(
        trades.frames.get(),
        trades.control.get() + 44,
        "44 trade frames, the rest acks and pings"
    );
    let mbp = feed_stats(&report, "huobi-mbp");
    assert_mbp_frames_accounted(mbp);
    assert_eq!(
        mbp.st.get(),
        292 + 10,
        "every depth.step0 push and one req snapshot per book"
    );
    assert_eq!(db.count("invalid_frame", "").await, 0);
    let paths: Vec<String> = mock.connections().iter().map(|c| c.path.clone()).collect();
    assert_eq!(
        paths.iter().filter(|p| *p == "/ws").count(),
        2,
        "trades and step0 on /ws: {paths:?}"
    );
    assert_eq!(
        paths.iter().filter(|p| *p == "/feed").count(),
        1,
        "mbp on /feed: {paths:?}"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_refused_without_the_process_growing() {
    // 256 MiB once inflated, about a quarter of a MiB on the wire; built before measuring.
    const INFLATED: usize = 256 << 20;
    let bomb = gzip_bomb(INFLATED);
    assert!(bomb.len() < 512 << 10, "{}", bomb.len());
    let Some(Setup { mock, db, .. }) = setup(&["trioeth"], stream(2000), |_| {}).await else {
        return;
    };
    let svc = Service::start(&feeds_to_influx(
        &feed("huobi-mbp", "huobi_mbp", &["trioeth"], &mock, ""),
        &db,
    ));
    assert!(
        eventually(WAIT, || async {
            db.count("book_snapshot", "").await > 0 && mock.updates("trioeth").len() > 300
        })
        .await
    );

    let before = peak_rss_kib();
    assert_eq!(mock.send_binary("/feed", bomb.clone()), 1);
    // And a frame that is not gzip at all, and one cut short.
    assert_eq!(mock.send_binary("/feed", b"{\"ping\":1}".to_vec()), 1);
    let ping = ds_tests::huobi::gzip(b"{\"ping\":1618678073643}");
    assert_eq!(
        mock.send_binary("/feed", ping[..ping.len() / 2].to_vec()),
        1
    );
    assert_eq!(db.wait_for_count("invalid_frame", "", 3, WAIT).await, 3);
    let grew_kib = peak_rss_kib().saturating_sub(before);
    assert!(
        grew_kib < 64 * 1024,
        "the process peak grew by {grew_kib} KiB for a {} MiB bomb",
        INFLATED >> 20
    );

    assert!(mock.wait_stream_done(WAIT).await);
    let caught_up = eventually(WAIT, || rebuilt_equals_truth(&db, &mock, "trioeth")).await;
    let report = svc.stop().await;
    assert!(
        caught_up,
        "the stream went on past the bad frames, nothing lost"
    );

    let rows = db.query("SELECT reason, raw FROM invalid_frame").await;
    let reasons: Vec<&str> = rows.iter().map(|r| r.str("reason").unwrap()).collect();
    assert!(
        reasons[0].contains("inflates past the 4194304-byte cap"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("corrupt gzip") && reasons[2].contains("corrupt gzip"),
        "{reasons:?}"
    );
    assert!(
        rows.iter()
            .all(|r| r.str("raw").unwrap().starts_with("b64:")),
        "the wire bytes are kept"
    );
    assert!(
        rows[0].str("raw").unwrap().starts_with("b64:H4sI"),
        "a gzip member"
    );
    let f = feed_stats(&report, "huobi-mbp");
    assert_mbp_frames_accounted(f);
    assert_eq!(
        (f.invalid.get(), f.reconnects.get(), f.gaps.get()),
        (3, 0, 1),
        "counted; the connection went on; only the `shutdown` marker"
    );
    assert_eq!(mock.connections().len(), 1);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symbols_all_resolves_online_symbols_through_common_symbols() {
    let body = r#"{"status":"ok","data":[
        {"base-currency":"trio","quote-currency":"eth","symbol":"trioeth","state":"online","api-trading":"enabled"},
        {"base-currency":"yfi","quote-currency":"husd","symbol":"yfihusd","state":"offline","api-trading":"disabled"},
        {"base-currency":"fil3s","quote-currency":"usdt","symbol":"fil3susdt","state":"online","api-trading":"enabled"}]}"#;
    let Some(Setup { mock, db, .. }) =
        setup(&THREE, stream(300), |c| c.symbols_body = Some(body.into())).await
    else {
        return;
    };
    let toml = feeds_to_influx(
        &feed("huobi-mbp", "huobi_mbp", &[], &mock, "")
            .replace("symbols = []", "symbols = \"all\""),
        &db,
    );
    let svc = Service::start(&toml);
    assert!(mock.wait_stream_done(WAIT).await);
    let synced = eventually(WAIT, || async {
        rebuilt_equals_truth(&db, &mock, "trioeth").await
            && rebuilt_equals_truth(&db, &mock, "fil3susdt").await
    })
    .await;
    let report = svc.stop().await;
    assert!(synced);
    assert_eq!(
        mock.rest_requests()
            .iter()
            .map(|r| r.path.as_str())
            .collect::<Vec<_>>(),
        ["/v1/common/symbols"]
    );
    assert_eq!(
        mock.connections()[0].topics,
        ["market.trioeth.mbp.150", "market.fil3susdt.mbp.150"],
        "online symbols only"
    );
    assert_eq!(db.count("book_delta", "symbol = 'YFIHUSD'").await, 0);
    assert_mbp_frames_accounted(feed_stats(&report, "huobi-mbp"));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbp_refresh_periodic_snapshots_are_stored_in_their_own_series() {
    let symbols = ["trioeth", "yfihusd"];
    let Some(Setup { mock, db, .. }) = setup(&symbols, stream(600), |c| c.refresh_every = 20).await
    else {
        return;
    };
    let extra = "periodic_snapshots = \"mbp.refresh\"\nrefresh_levels = 10";
    let svc = Service::start(&feeds_to_influx(
        &feed("huobi-mbp", "huobi_mbp", &symbols, &mock, extra),
        &db,
    ));
    assert!(mock.wait_stream_done(WAIT).await);
    let pushes: Vec<(&str, RefreshPush)> = symbols
        .iter()
        .flat_map(|s| mock.refreshes(s).into_iter().map(move |r| (*s, r)))
        .collect();
    let points: usize = pushes.iter().map(|(_, r)| r.book.len()).sum();
    assert!(pushes.len() >= 40, "refresh pushes sent: {}", pushes.len());
    assert_eq!(
        db.wait_for_count(
            "book_snapshot",
            "market = 'spot.mbp.refresh.10'",
            points as u64,
            WAIT
        )
        .await,
        points as u64
    );
    let synced = eventually(WAIT, || async {
        rebuilt_equals_truth(&db, &mock, "trioeth").await
            && rebuilt_equals_truth(&db, &mock, "yfihusd").await
    })
    .await;
    let report = svc.stop().await;
    assert!(
        synced,
        "the MBP books are untouched by the periodic snapshots"
    );

    for (symbol, push) in &pushes {
        assert_eq!(push.levels, 10);
        let rows = db
            .query(&format!(
                "SELECT price, qty, side FROM book_snapshot WHERE market = 'spot.mbp.refresh.10' AND symbol = {} AND snapshot_id = {}",
                quote_str(&symbol.to_ascii_uppercase()),
                push.seq_num
            ))
            .await;
        let mut stored = OrderBook::new();
        for r in &rows {
            stored.set(
                ds_tests::book::Side::parse(r.str("side").unwrap()).unwrap(),
                r.f64("price").unwrap(),
                r.f64("qty").unwrap(),
            );
        }
        assert_eq!(
            stored, push.book,
            "{symbol} refresh at seqNum {}",
            push.seq_num
        );
    }
    for symbol in symbols {
        assert_eq!(
            snapshot_ids(&db, &series(symbol)).await,
            mock.snapshots_served(symbol),
            "{symbol}: only req snapshots in the MBP series"
        );
    }
    let f = feed_stats(&report, "huobi-mbp");
    assert_mbp_frames_accounted(f);
    assert_eq!(
        f.st.get() as usize,
        pushes.len() + 2,
        "every refresh push, and one req snapshot per book"
    );
    let paths: Vec<String> = mock.connections().iter().map(|c| c.path.clone()).collect();
    assert_eq!(
        paths.len(),
        2,
        "one /feed and one /ws connection: {paths:?}"
    );
    db.cleanup().await;
}
