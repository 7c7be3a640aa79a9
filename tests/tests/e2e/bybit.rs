//! Bybit v5, end to end: the mock exchange replaying the 2026-08-09 captures (spot and linear,
//! order books and trades) -> the service -> a real InfluxDB, then the store is read back and
//! checked against an independent reference (`ds_tests::bybit_book`) built from the very
//! frames the mock sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use data_storage::run::RunReport;
use ds_api::FeedStats;
use ds_tests::bybit::{trading_symbols, Category, MockBybit, MockBybitConfig, Reset};
use ds_tests::bybit_book::{bybit_reference, bybit_trades, BybitReference};
use ds_tests::influx::{influx_url, quote_str, RowExt, TestDb};

use crate::support::{eventually, feeds_to_influx, rebuild_where, Service};

const SPOT: [&str; 2] = ["BTCUSDT", "ETHUSDT"];
const LINEAR: [&str; 4] = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT"];
const WAIT: Duration = Duration::from_secs(60);

pub fn book_topic(symbol: &str) -> String {
    format!("orderbook.200.{symbol}")
}

fn symbols_of(c: Category) -> &'static [&'static str] {
    match c {
        Category::Spot => &SPOT,
        Category::Linear => &LINEAR,
    }
}

/// `market = 'spot' AND symbol = 'BTCUSDT'`.
pub fn series(c: Category, symbol: &str) -> String {
    format!("market = {} AND symbol = {}", quote_str(c.as_str()), quote_str(symbol))
}

/// One `[[feed]]` table. `extra` holds more option lines. Pings every 200 ms, so the
/// heartbeat runs during every test.
pub fn feed(name: &str, connector: &str, c: Category, symbols: &[&str], mock: &MockBybit, extra: &str) -> String {
    let symbols: Vec<String> = symbols.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "\n[[feed]]\nname = \"{name}\"\nconnector = \"{connector}\"\ncategory = \"{}\"\nsymbols = [{}]\nsink = \"influx\"\nws_url = \"{}\"\nrest_url = \"{}\"\nping_interval_ms = 200\n{extra}\n",
        c.as_str(),
        symbols.join(", "),
        mock.ws_url(),
        mock.rest_url()
    )
}

pub fn feed_stats<'a>(report: &'a RunReport, name: &str) -> &'a Arc<FeedStats> {
    &report.stats.feeds.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no feed {name}")).1
}

/// Every frame a feed received is a snapshot, a delta, a discarded delta, an answer to our
/// requests, or an invalid frame (contract 1).
pub fn assert_book_frames_accounted(name: &str, f: &FeedStats) {
    assert_eq!(f.frames.get(), f.st.get() + f.mi.get() + f.out_of_sequence.get() + f.control.get() + f.invalid.get(), "{name}: frames accounted for");
}

/// (kind, id, side, price, qty) of every stored level of one book, sorted; `kind` is `S` for
/// snapshot levels (id = snapshot_id) and `D` for delta levels (id = last_id).
pub async fn stored_levels(db: &TestDb, c: Category, symbol: &str) -> Vec<(char, u64, String, String, String)> {
    let w = series(c, symbol);
    let mut v = Vec::new();
    for (kind, m, id) in [('S', "book_snapshot", "snapshot_id"), ('D', "book_delta", "last_id")] {
        for r in db.query(&format!("SELECT price, qty, side, {id} FROM {m} WHERE {w}")).await {
            v.push((kind, r.u64(id).unwrap(), r.str("side").unwrap().to_string(), format!("{}", r.f64("price").unwrap()), format!("{}", r.f64("qty").unwrap())));
        }
    }
    v.sort();
    v
}

/// The same, from a reference (text parsed as InfluxDB parses it).
pub fn reference_levels(r: &BybitReference) -> Vec<(char, u64, String, String, String)> {
    let mut v: Vec<_> = r
        .applied
        .iter()
        .flat_map(|a| {
            a.levels.iter().map(move |(side, p, q)| {
                (if a.reset { 'S' } else { 'D' }, a.u, side.as_str().to_string(), format!("{}", p.parse::<f64>().unwrap()), format!("{}", q.parse::<f64>().unwrap()))
            })
        })
        .collect();
    v.sort();
    v
}

/// The Bybit rule applied to what the mock sent on `topic` (the client's view).
pub fn sent_reference(mock: &MockBybit, c: Category, symbol: &str) -> BybitReference {
    let topic = book_topic(symbol);
    bybit_reference(&mock.sent_frames(c, &topic), &topic)
}

/// Checks one book: stored levels equal the reference's exactly once, and the book rebuilt
/// from the store equals both the reference and the exchange's truth.
pub async fn assert_book_stored(db: &TestDb, mock: &MockBybit, c: Category, symbol: &str, r: &BybitReference) {
    assert_eq!(stored_levels(db, c, symbol).await, reference_levels(r), "{c:?} {symbol}: stored levels");
    let rebuilt = rebuild_where(db, &series(c, symbol)).await;
    let last_snapshot = r.snapshots().last().expect("a snapshot");
    assert_eq!(rebuilt.snapshot_id, last_snapshot.u, "{c:?} {symbol}: latest stored snapshot");
    assert_eq!(rebuilt.gaps_after_snapshot, 0);
    let after: usize = r.applied.iter().filter(|a| !a.reset && a.index > last_snapshot.index).map(|a| a.levels.len()).sum();
    assert_eq!(rebuilt.deltas_applied, after, "{c:?} {symbol}: deltas after the snapshot");
    let diff = rebuilt.book.diff(&r.book, 10);
    assert!(diff.is_empty(), "{c:?} {symbol}: book rebuilt from InfluxDB differs from the reference: {diff:#?}");
    assert_eq!(rebuilt.book, mock.book(c, &book_topic(symbol)), "{c:?} {symbol}: rebuilt book equals the exchange's");
}

async fn setup(configure: impl FnOnce(&mut MockBybitConfig)) -> Option<(MockBybit, MockBybitConfig, TestDb)> {
    let Some(url) = influx_url() else {
        eprintln!("skipping: INFLUXDB_URL not set (run through scripts/test.sh)");
        return None;
    };
    let mut cfg = MockBybitConfig::from_fixtures()?;
    configure(&mut cfg);
    let mock = MockBybit::start(cfg.clone()).await;
    Some((mock, cfg, TestDb::create(&url).await))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_are_stored_exactly_once_and_books_rebuild_from_the_store() {
    let Some((mock, cfg, db)) = setup(|_| {}).await else { return };
    let feeds = [
        feed("bb-spot-books", "bybit_orderbook", Category::Spot, &SPOT, &mock, ""),
        feed("bb-linear-books", "bybit_orderbook", Category::Linear, &LINEAR, &mock, ""),
        feed("bb-spot-trades", "bybit_trades", Category::Spot, &SPOT, &mock, ""),
        feed("bb-linear-trades", "bybit_trades", Category::Linear, &LINEAR, &mock, ""),
    ];
    let svc = Service::start(&feeds_to_influx(&feeds.concat(), &db));

    // References from the captures themselves: nothing is dropped, so the client's view and
    // the recording are the same frames.
    let mut refs: HashMap<(Category, &str), BybitReference> = HashMap::new();
    let mut topics = Vec::new();
    for c in Category::ALL {
        for s in symbols_of(c) {
            refs.insert((c, s), bybit_reference(cfg.frames(c), &book_topic(s)));
            topics.push((c, book_topic(s)));
            topics.push((c, format!("publicTrade.{s}")));
        }
    }
    let trades: HashMap<Category, _> = Category::ALL.iter().map(|&c| (c, bybit_trades(cfg.frames(c)))).collect();
    let (n_spot, n_linear) = (trades[&Category::Spot].len(), trades[&Category::Linear].len());
    assert_eq!((n_spot, n_linear), (20, 327), "PROVENANCE.md trade counts");
    let topic_refs: Vec<(Category, &str)> = topics.iter().map(|(c, t)| (*c, t.as_str())).collect();
    assert!(mock.wait_replayed(&topic_refs, WAIT).await, "mock replayed every recorded push");
    let deltas: usize = refs.values().map(BybitReference::delta_levels).sum();
    assert_eq!(db.wait_for_count("book_delta", "", deltas as u64, WAIT).await, deltas as u64, "every delta level stored");
    assert_eq!(db.wait_for_count("trade", "", (n_spot + n_linear) as u64, WAIT).await, (n_spot + n_linear) as u64, "every trade stored, none overwritten");
    // Let every connection finish a ping round trip before the stop.
    assert!(mock.wait_until(WAIT, |m| m.connections().iter().all(|c| c.pongs_sent >= 1)).await, "every connection pings");
    let report = svc.stop().await;

    for ((c, s), r) in &refs {
        assert_eq!(r.snapshots().count(), 1);
        assert!(r.gaps.is_empty() && r.discarded == 0, "the captures chain");
        assert_book_stored(&db, &mock, *c, s, r).await;
    }

    // Trades: exactly the recorded ones, each once, with both times; many share a millisecond.
    let shared_ms = trades[&Category::Linear].windows(2).filter(|w| w[0].symbol == w[1].symbol && w[0].time == w[1].time).count();
    assert!(shared_ms > 100, "the capture has trades sharing a millisecond: {shared_ms}");
    for c in Category::ALL {
        let rows = db.query(&format!("SELECT price, qty, trade_id, event_ts, side, symbol FROM trade WHERE market = {}", quote_str(c.as_str()))).await;
        let mut stored: Vec<_> = rows
            .iter()
            .map(|r| (r.str("symbol").unwrap().to_string(), r.str("trade_id").unwrap().to_string(), r.f64("price").unwrap().to_string(), r.f64("qty").unwrap().to_string(), r.str("side").unwrap().to_string(), r.i64("event_ts").unwrap()))
            .collect();
        stored.sort();
        let mut want: Vec<_> = trades[&c]
            .iter()
            .map(|t| (t.symbol.clone(), t.trade_id.clone(), t.price.parse::<f64>().unwrap().to_string(), t.size.parse::<f64>().unwrap().to_string(), if t.side == ds_tests::book::Side::Bid { "buy" } else { "sell" }.to_string(), t.time))
            .collect();
        want.sort();
        assert_eq!(stored, want, "{c:?}: stored trades");
        let recv_times: std::collections::HashSet<i64> = rows.iter().map(|r| r.i64("time").unwrap()).collect();
        assert_eq!(recv_times.len(), rows.len(), "{c:?}: every trade has its own timestamp");
    }

    let gaps = db.query("SELECT reason, symbol FROM book_gap").await;
    assert_eq!(gaps.len(), SPOT.len() + LINEAR.len(), "no gap in chaining captures, one `shutdown` marker per book at stop: {gaps:?}");
    assert!(gaps.iter().all(|g| g.str("reason") == Some("shutdown")), "{gaps:?}");
    assert_eq!(db.count("invalid_frame", "").await, 0);

    // Accounted for, per feed.
    for (name, c) in [("bb-spot-books", Category::Spot), ("bb-linear-books", Category::Linear)] {
        let f = feed_stats(&report, name);
        let rs: Vec<&BybitReference> = symbols_of(c).iter().map(|s| &refs[&(c, *s)]).collect();
        let n = symbols_of(c).len() as u64;
        assert_eq!(f.st.get(), n, "{name}: one snapshot per book");
        assert_eq!(f.mi.get(), rs.iter().map(|r| r.deltas().count() as u64).sum::<u64>(), "{name}: every delta");
        assert_eq!((f.out_of_sequence.get(), f.invalid.get(), f.reconnects.get()), (0, 0, 0), "{name}");
        assert_eq!((f.gaps.get(), f.resyncs.get()), (n, n), "{name}: shutdown markers; one subscribe per book");
        assert_book_frames_accounted(name, f);
    }
    for (name, c, n) in [("bb-spot-trades", Category::Spot, n_spot), ("bb-linear-trades", Category::Linear, n_linear)] {
        let f = feed_stats(&report, name);
        assert_eq!(f.trades.get(), n as u64, "{name}");
        let pushes = mock.sent().iter().filter(|p| p.category == c && p.topic.starts_with("publicTrade.")).count() as u64;
        assert_eq!(f.frames.get(), pushes + f.control.get(), "{name}: every frame a trade push or an answer");
        assert_eq!((f.invalid.get(), f.gaps.get(), f.reconnects.get()), (0, 0, 0), "{name}");
    }
    for conn in mock.connections() {
        assert!(conn.subscribe_requests.iter().all(|r| r.len() <= 10), "at most 10 args per request: {conn:?}");
        assert_eq!(conn.refusals_sent, 0);
    }
    assert!(mock.violations().is_empty(), "{:?}", mock.violations());
    let sink = &report.stats.sinks[0].1;
    assert_eq!(sink.points_dropped.get(), 0);
    let points: u64 = report.stats.feeds.iter().map(|(_, f)| f.points.get()).sum();
    assert_eq!(sink.points_written.get(), points, "every point handed over was written");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_delta_stores_a_gap_and_resubscribes_that_topic_only() {
    let lost_at = 150;
    let mut eth = Vec::new();
    let Some((mock, cfg, db)) = setup(|cfg| {
        eth = cfg.topic_frames(Category::Linear, &book_topic("ETHUSDT"));
        cfg.drop_frames.insert((Category::Linear, eth[lost_at]));
    })
    .await
    else {
        return;
    };
    let svc = Service::start(&feeds_to_influx(&feed("bb-linear-books", "bybit_orderbook", Category::Linear, &LINEAR, &mock, ""), &db));
    let topics: Vec<String> = LINEAR.iter().map(|s| book_topic(s)).collect();
    let topic_refs: Vec<(Category, &str)> = topics.iter().map(|t| (Category::Linear, t.as_str())).collect();
    assert!(mock.wait_replayed(&topic_refs, WAIT).await);
    let truth = mock.book(Category::Linear, &book_topic("ETHUSDT"));
    let resynced = eventually(WAIT, || {
        let (db, truth) = (&db, &truth);
        async move {
            db.count("book_gap", "").await >= 1 && {
                let r = rebuild_where(db, &series(Category::Linear, "ETHUSDT")).await;
                r.gaps_after_snapshot == 0 && r.book == *truth
            }
        }
    })
    .await;
    let report = svc.stop().await;
    assert!(resynced, "ETHUSDT rebuilt from the store equals the exchange's book after the resync");

    // The recording's u chain, to name the hole.
    let recorded = bybit_reference(cfg.frames(Category::Linear), &book_topic("ETHUSDT"));
    let u_at = |i: usize| recorded.applied.iter().find(|a| a.index == eth[i]).unwrap().u;
    let gap = db.query("SELECT reason, last_id, next_id, symbol, market FROM book_gap WHERE reason != 'shutdown'").await;
    assert_eq!(gap.len(), 1, "{gap:?}");
    assert_eq!((gap[0].str("market"), gap[0].str("symbol"), gap[0].str("reason")), (Some("linear"), Some("ETHUSDT"), Some("sequence_break")));
    assert_eq!((gap[0].u64("last_id"), gap[0].u64("next_id")), (Some(u_at(lost_at - 1)), Some(u_at(lost_at + 1))));

    // One connection throughout: only that topic was unsubscribed and subscribed again.
    let conns = mock.connections();
    assert_eq!(conns.len(), 1, "no reconnect");
    assert_eq!(conns[0].unsubscribe_requests, [vec![book_topic("ETHUSDT")]]);
    assert_eq!(conns[0].subscribe_requests.last().unwrap(), &vec![book_topic("ETHUSDT")]);
    let client = sent_reference(&mock, Category::Linear, "ETHUSDT");
    assert_eq!(client.gaps, [(u_at(lost_at - 1), u_at(lost_at + 1))]);
    assert_eq!(client.snapshots().count(), 2, "the recorded snapshot and the fresh one");
    let rebuilt = rebuild_where(&db, &series(Category::Linear, "ETHUSDT")).await;
    assert!(rebuilt.snapshot_id >= u_at(lost_at + 1), "a fresh snapshot, at least as new as the delta that broke the chain");
    assert!(rebuilt.snapshot_time > gap[0].i64("time").unwrap(), "the fresh snapshot follows the gap marker");
    // Every level the client could apply, stored exactly once: before the gap, the fresh
    // snapshot, and after it.
    assert_book_stored(&db, &mock, Category::Linear, "ETHUSDT", &client).await;
    let before = db.count("book_delta", &format!("{} AND last_id <= {}", series(Category::Linear, "ETHUSDT"), u_at(lost_at - 1))).await;
    assert_eq!(before as usize, recorded.applied[1..lost_at].iter().map(|a| a.levels.len()).sum::<usize>());

    // The other symbols never noticed.
    for s in ["BTCUSDT", "SOLUSDT", "DOGEUSDT"] {
        let r = sent_reference(&mock, Category::Linear, s);
        let recorded = bybit_reference(cfg.frames(Category::Linear), &book_topic(s));
        let pushes = |r: &BybitReference| r.applied.iter().map(|a| (a.u, a.reset, a.levels.clone())).collect::<Vec<_>>();
        assert!(pushes(&r) == pushes(&recorded) && r.book == recorded.book, "{s}: the client saw exactly the recording");
        assert_book_stored(&db, &mock, Category::Linear, s, &r).await;
    }
    let f = feed_stats(&report, "bb-linear-books");
    assert_eq!(f.gaps.get(), 1 + 4, "the lost push, and a `shutdown` marker per book at stop");
    assert_eq!(f.resyncs.get(), 4 + 1, "four initial subscribes and one resubscribe");
    assert_eq!(f.out_of_sequence.get() as usize, client.discarded, "deltas between the break and the fresh snapshot, counted");
    assert_eq!(f.st.get(), 4 + 1);
    assert_eq!(f.reconnects.get(), 0);
    assert_book_frames_accounted("bb-linear-books", f);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_u1_push_resets_the_book() {
    // Spot BTCUSDT gets a `u == 1` snapshot, linear SOLUSDT a `u == 1` delta (both forms the
    // docs describe after a Bybit restart); each holds the exchange's book cut to its best levels.
    let (mut btc_at, mut sol_at) = (0, 0);
    let Some((mock, _cfg, db)) = setup(|cfg| {
        btc_at = cfg.topic_frames(Category::Spot, &book_topic("BTCUSDT"))[200];
        sol_at = cfg.topic_frames(Category::Linear, &book_topic("SOLUSDT"))[100];
        cfg.resets.push(Reset { category: Category::Spot, before_frame: btc_at, keep_levels: 25, as_delta: false });
        cfg.resets.push(Reset { category: Category::Linear, before_frame: sol_at, keep_levels: 10, as_delta: true });
    })
    .await
    else {
        return;
    };
    let feeds = [
        feed("bb-spot-books", "bybit_orderbook", Category::Spot, &SPOT, &mock, ""),
        feed("bb-linear-books", "bybit_orderbook", Category::Linear, &LINEAR, &mock, ""),
    ];
    let svc = Service::start(&feeds_to_influx(&feeds.concat(), &db));
    let mut topics = Vec::new();
    for c in Category::ALL {
        for s in symbols_of(c) {
            topics.push((c, book_topic(s)));
        }
    }
    let topic_refs: Vec<(Category, &str)> = topics.iter().map(|(c, t)| (*c, t.as_str())).collect();
    assert!(mock.wait_replayed(&topic_refs, WAIT).await);
    let refs: Vec<(Category, &str, BybitReference)> = topics.iter().map(|(c, t)| (*c, &t["orderbook.200.".len()..], sent_reference(&mock, *c, &t["orderbook.200.".len()..]))).collect();
    let deltas: usize = refs.iter().map(|(_, _, r)| r.delta_levels()).sum();
    assert_eq!(db.wait_for_count("book_delta", "", deltas as u64, WAIT).await, deltas as u64);
    let report = svc.stop().await;

    for (c, s, r) in &refs {
        let reset = matches!((c, *s), (Category::Spot, "BTCUSDT") | (Category::Linear, "SOLUSDT"));
        assert!(r.gaps.is_empty() && r.discarded == 0, "{c:?} {s}: a reset is not a gap");
        assert_eq!(r.snapshots().count(), if reset { 2 } else { 1 }, "{c:?} {s}");
        assert_book_stored(&db, &mock, *c, s, r).await;
        if reset {
            let rebuilt = rebuild_where(&db, &series(*c, s)).await;
            assert_eq!(rebuilt.snapshot_id, 1, "{c:?} {s}: the book now starts from the u == 1 push");
            let levels = db.count("book_snapshot", &format!("{} AND snapshot_id = 1", series(*c, s))).await;
            assert_eq!(levels, if *c == Category::Spot { 50 } else { 20 }, "{c:?} {s}: the restarted book's levels");
            // After the reset, u counts on from 2 without a hole.
            let ids = db.query(&format!("SELECT last_id, qty FROM book_delta WHERE {} AND time > {}", series(*c, s), rebuilt.snapshot_time)).await;
            let mut ids: Vec<u64> = ids.iter().map(|r| r.u64("last_id").unwrap()).collect();
            ids.dedup();
            assert_eq!(ids, (2..2 + ids.len() as u64).collect::<Vec<_>>(), "{c:?} {s}");
            assert!(!ids.is_empty());
        }
    }
    assert!(db.query("SELECT reason FROM book_gap WHERE reason != 'shutdown'").await.is_empty());
    for name in ["bb-spot-books", "bb-linear-books"] {
        let f = feed_stats(&report, name);
        let n = if name.contains("spot") { SPOT.len() } else { LINEAR.len() } as u64;
        assert_eq!(f.st.get(), n + 1, "{name}: one snapshot per book and the reset");
        assert_eq!((f.out_of_sequence.get(), f.resyncs.get(), f.gaps.get()), (0, n, n), "{name}");
        assert_book_frames_accounted(name, f);
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_pongs_reconnect_and_resubscribe() {
    let Some((mock, _cfg, db)) = setup(|cfg| {
        cfg.silent_connections = 1;
        // Spread the replay (550 pushes) over about 1.5 s so it spans the reconnect.
        cfg.frame_interval = Duration::from_millis(3);
    })
    .await
    else {
        return;
    };
    let svc = Service::start(&feeds_to_influx(&feed("bb-spot-books", "bybit_orderbook", Category::Spot, &SPOT, &mock, "pong_timeout_ms = 300"), &db));
    assert!(mock.wait_until(WAIT, |m| m.connections().len() >= 2 && m.connections()[1].pongs_sent >= 1).await, "a second connection that answers pings");
    let topics: Vec<String> = SPOT.iter().map(|s| book_topic(s)).collect();
    let topic_refs: Vec<(Category, &str)> = topics.iter().map(|t| (Category::Spot, t.as_str())).collect();
    assert!(mock.wait_replayed(&topic_refs, WAIT).await);
    let truths: Vec<_> = SPOT.iter().map(|s| mock.book(Category::Spot, &book_topic(s))).collect();
    let caught_up = eventually(WAIT, || {
        let (db, truths) = (&db, &truths);
        async move {
            let mut all = true;
            for (s, truth) in SPOT.iter().zip(truths) {
                let r = rebuild_where(db, &series(Category::Spot, s)).await;
                all &= r.gaps_after_snapshot == 0 && r.book == *truth;
            }
            all
        }
    })
    .await;
    let report = svc.stop().await;
    assert!(caught_up, "books rebuilt from the store equal the exchange's after the reconnect");

    let conns = mock.connections();
    assert!(conns[0].pings_received >= 1 && conns[0].pongs_sent == 0, "the silent connection: {:?}", conns[0]);
    assert!(!conns[0].active, "the client dropped it");
    assert_eq!(conns[1].ever_subscribed, topics, "the new connection subscribed every topic again");
    let f = feed_stats(&report, "bb-spot-books");
    assert!(f.reconnects.get() >= 1);
    for s in SPOT {
        let w = series(Category::Spot, s);
        let gaps = db.query(&format!("SELECT reason FROM book_gap WHERE {w} AND reason = 'disconnect'")).await;
        assert!(!gaps.is_empty(), "{s}: the dead connection is a stored gap");
        let gap_time = gaps[0].i64("time").unwrap();
        let rebuilt = rebuild_where(&db, &w).await;
        assert!(rebuilt.snapshot_time > gap_time, "{s}: a fresh snapshot after the gap");
        assert!(db.count_field("book_snapshot", "snapshot_id", &format!("{w} AND time > {gap_time}")).await >= 1);
        // Whatever the client applied on the second connection is stored exactly once.
        let on_second: Vec<String> = mock.sent().into_iter().filter(|p| p.connection == conns[1].id && p.topic == book_topic(s)).map(|p| p.text).collect();
        let r = bybit_reference(&on_second, &book_topic(s));
        let stored_after = db.count("book_delta", &format!("{w} AND time > {}", rebuilt.snapshot_time)).await;
        let after_last: usize = r.applied.iter().filter(|a| !a.reset && a.index > r.snapshots().last().unwrap().index).map(|a| a.levels.len()).sum();
        assert_eq!(stored_after as usize, after_last, "{s}");
    }
    assert_eq!(f.invalid.get(), 0);
    assert!(f.resyncs.get() >= 4, "two subscribes per connection");
    assert_book_frames_accounted("bb-spot-books", f);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_subscribe_times_out_and_the_next_connection_subscribes() {
    let Some((mock, cfg, db)) = setup(|cfg| cfg.unanswered_subscribe_connections = 1).await else { return };
    let svc = Service::start(&feeds_to_influx(&feed("bb-spot-books", "bybit_orderbook", Category::Spot, &SPOT, &mock, "ack_timeout_ms = 300"), &db));
    let topics: Vec<String> = SPOT.iter().map(|s| book_topic(s)).collect();
    let topic_refs: Vec<(Category, &str)> = topics.iter().map(|t| (Category::Spot, t.as_str())).collect();
    assert!(mock.wait_replayed(&topic_refs, WAIT).await);
    let refs: Vec<BybitReference> = SPOT.iter().map(|s| bybit_reference(cfg.frames(Category::Spot), &book_topic(s))).collect();
    let deltas: usize = refs.iter().map(BybitReference::delta_levels).sum();
    assert_eq!(db.wait_for_count("book_delta", "", deltas as u64, WAIT).await, deltas as u64);
    let report = svc.stop().await;

    let conns = mock.connections();
    assert_eq!(conns.len(), 2);
    assert_eq!((conns[0].subscribe_requests.len(), conns[0].acks_sent, conns[0].active), (1, 0, false), "asked, never answered, dropped by the client");
    assert_eq!(conns[1].ever_subscribed, topics);
    // Nothing was received on the first connection, so the second one's data is all there is.
    for (s, r) in SPOT.iter().zip(&refs) {
        assert_book_stored(&db, &mock, Category::Spot, s, r).await;
    }
    let f = feed_stats(&report, "bb-spot-books");
    assert_eq!((f.reconnects.get(), f.connections.get(), f.invalid.get()), (1, 0, 0));
    assert_eq!(f.gaps.get(), 2, "only the `shutdown` markers: nothing was in sync when the first attempt failed");
    assert_book_frames_accounted("bb-spot-books", f);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_topic_is_named_and_the_others_keep_flowing() {
    let Some((mock, cfg, db)) = setup(|cfg| {
        cfg.refuse_topics.insert(book_topic("NOPEUSDT"));
    })
    .await
    else {
        return;
    };
    let svc = Service::start(&feeds_to_influx(&feed("bb-spot-books", "bybit_orderbook", Category::Spot, &["BTCUSDT", "NOPEUSDT", "ETHUSDT"], &mock, ""), &db));
    let topics: Vec<String> = SPOT.iter().map(|s| book_topic(s)).collect();
    let topic_refs: Vec<(Category, &str)> = topics.iter().map(|t| (Category::Spot, t.as_str())).collect();
    assert!(mock.wait_replayed(&topic_refs, WAIT).await, "the other topics flow");
    let refs: Vec<BybitReference> = SPOT.iter().map(|s| bybit_reference(cfg.frames(Category::Spot), &book_topic(s))).collect();
    let deltas: usize = refs.iter().map(BybitReference::delta_levels).sum();
    assert_eq!(db.wait_for_count("book_delta", "", deltas as u64, WAIT).await, deltas as u64);
    assert_eq!(db.wait_for_count("invalid_frame", "", 1, WAIT).await, 1);
    let report = svc.stop().await;

    let invalid = db.query("SELECT reason, raw FROM invalid_frame").await;
    let reason = invalid[0].str("reason").unwrap();
    assert!(reason.contains("orderbook.200.NOPEUSDT"), "the stored error names the topic: {reason}");
    assert!(invalid[0].str("raw").unwrap().contains(r#""success":false"#));
    let conns = mock.connections();
    assert_eq!(conns.len(), 1, "the refusal did not cost the connection");
    assert_eq!(
        conns[0].subscribe_requests,
        [vec![book_topic("BTCUSDT"), book_topic("NOPEUSDT"), book_topic("ETHUSDT")], vec![book_topic("BTCUSDT"), book_topic("ETHUSDT")]],
        "the other topics asked again without the refused one"
    );
    for (s, r) in SPOT.iter().zip(&refs) {
        assert_book_stored(&db, &mock, Category::Spot, s, r).await;
    }
    assert_eq!(db.count("book_snapshot", "symbol = 'NOPEUSDT'").await, 0);
    let f = feed_stats(&report, "bb-spot-books");
    assert_eq!((f.invalid.get(), f.reconnects.get(), f.gaps.get()), (1, 0, 2), "one refusal; shutdown markers for the two live books");
    assert_book_frames_accounted("bb-spot-books", f);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symbols_all_resolve_through_instruments_info_and_split_connections() {
    let Some((mock, cfg, db)) = setup(|cfg| cfg.instruments_page_size = Some(300)).await else { return };
    let linear = trading_symbols(cfg.instruments_linear.as_deref().unwrap());
    let spot = trading_symbols(cfg.instruments_spot.as_deref().unwrap());
    assert_eq!((linear.len(), spot.len()), (800, 557), "PROVENANCE.md instrument counts");
    // Depth 1000 makes the 800 linear topics 21,102 characters: over Bybit's 21,000, so the
    // character budget, not the topic count, splits them.
    let feeds = [
        feed("bb-linear-all", "bybit_orderbook", Category::Linear, &[], &mock, "depth = 1000\ntopics_per_connection = 1000").replace("symbols = []", "symbols = \"all\""),
        feed("bb-spot-trades-all", "bybit_trades", Category::Spot, &[], &mock, "").replace("symbols = []", "symbols = \"all\""),
    ];
    let svc = Service::start(&feeds_to_influx(&feeds.concat(), &db));
    let spot_trades = bybit_trades(cfg.frames(Category::Spot)).len() as u64;
    assert_eq!(db.wait_for_count("trade", "", spot_trades, WAIT).await, spot_trades, "trades flow on the resolved symbols");
    assert!(mock.wait_until(WAIT, |m| m.connections().iter().filter(|c| c.category == Category::Linear).map(|c| c.subscribed.len()).sum::<usize>() == 800).await);
    let report = svc.stop().await;

    let requests: Vec<(String, Option<String>)> = mock
        .rest_requests()
        .iter()
        .map(|r| (r.query_param("category").unwrap_or("").to_string(), r.query_param("cursor").map(String::from)))
        .collect();
    assert_eq!(
        requests.iter().filter(|(c, _)| c == "linear").map(|(_, cur)| cur.clone()).collect::<Vec<_>>(),
        [None, Some("next=300&of=800".to_string()), Some("next=600&of=800".to_string())],
        "linear pages with the cursor, sent back as text"
    );
    assert_eq!(requests.iter().filter(|(c, _)| c == "spot").collect::<Vec<_>>(), [&("spot".to_string(), None)], "spot: one request, no cursor");

    let conns = mock.connections();
    let linear_conns: Vec<_> = conns.iter().filter(|c| c.category == Category::Linear).collect();
    assert_eq!(linear_conns.len(), 2, "split by the character budget");
    assert!(linear_conns.iter().all(|c| c.ever_subscribed.len() == 400), "evenly: {:?}", linear_conns.iter().map(|c| c.ever_subscribed.len()).collect::<Vec<_>>());
    let mut subscribed: Vec<String> = linear_conns.iter().flat_map(|c| c.ever_subscribed.clone()).collect();
    subscribed.sort();
    let mut want: Vec<String> = linear.iter().map(|s| format!("orderbook.1000.{s}")).collect();
    want.sort();
    assert_eq!(subscribed, want);
    for c in &linear_conns {
        assert!(c.max_args_chars < 21_000, "{} characters on connection {}", c.max_args_chars, c.id);
    }
    let spot_conns: Vec<_> = conns.iter().filter(|c| c.category == Category::Spot).collect();
    let mut subscribed: Vec<String> = spot_conns.iter().flat_map(|c| c.ever_subscribed.clone()).collect();
    subscribed.sort();
    let mut want: Vec<String> = spot.iter().map(|s| format!("publicTrade.{s}")).collect();
    want.sort();
    assert_eq!(subscribed, want);
    assert!(spot_conns.iter().flat_map(|c| &c.subscribe_requests).all(|r| r.len() <= 10), "spot: at most 10 args per request");
    assert!(mock.violations().is_empty(), "{:?}", mock.violations());
    assert!(conns.iter().all(|c| c.refusals_sent == 0));
    let f = feed_stats(&report, "bb-linear-all");
    assert_eq!((f.resyncs.get(), f.invalid.get(), f.reconnects.get()), (800, 0, 0));
    assert_eq!(feed_stats(&report, "bb-spot-trades-all").trades.get(), spot_trades);
    db.cleanup().await;
}
