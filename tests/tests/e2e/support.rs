//! Running the service in-process and reading books back from InfluxDB.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use data_storage::run::RunReport;
use ds_tests::book::{OrderBook, Side};
use ds_tests::influx::{quote_str, RowExt, TestDb};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The service, running until `stop` is called.
pub struct Service {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<RunReport>,
}

impl Service {
    /// Validates `toml` exactly as `data-storage run` does and starts it.
    pub fn start(toml: &str) -> Service {
        data_storage::logging::init_for_tests();
        let config = data_storage::config::parse(toml, Path::new("e2e.toml"), &|k| std::env::var(k).ok())
            .unwrap_or_else(|e| panic!("test config invalid: {e:#?}\n{toml}"));
        let (tx, rx) = oneshot::channel::<()>();
        let stop = async move {
            let _ = rx.await;
        };
        Service { stop: Some(tx), handle: tokio::spawn(data_storage::run::run(config, stop)) }
    }

    /// Sends the stop (what SIGTERM does) and waits for the clean stop.
    pub async fn stop(mut self) -> RunReport {
        let _ = self.stop.take().expect("stopped once").send(());
        tokio::time::timeout(Duration::from_secs(30), self.handle).await.expect("service stops within 30 s").expect("service task")
    }
}

/// A config with one Binance depth feed into InfluxDB database `db`.
pub fn binance_to_influx(ws_url: &str, rest_url: &str, symbols: &[&str], db: &TestDb) -> String {
    binance_to_influx_with(ws_url, rest_url, symbols, &db.url, &db.name, "")
}

/// The same with any InfluxDB URL (a hung one, say) and extra `[[sink]]` keys.
pub fn binance_to_influx_with(ws_url: &str, rest_url: &str, symbols: &[&str], url: &str, db: &str, extra_sink: &str) -> String {
    let symbols: Vec<String> = symbols.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        r#"
[service]
log_dir = ""
status_interval_secs = 1
spool_dir = "{spill}/spool"

[[feed]]
name = "binance-e2e"
connector = "binance_spot_depth"
symbols = [{symbols}]
sink = "influx"
ws_url = "{ws_url}"
rest_url = "{rest_url}"

[[sink]]
name = "influx"
plugin = "influxdb"
url = "{url}"
database = "{db}"
flush_interval_ms = 100
quarantine_dir = "{spill}/quarantine"
{extra_sink}
"#,
        spill = std::env::temp_dir().join(format!("ds-e2e-{db}")).display(),
        symbols = symbols.join(", "),
    )
}

/// A config running the given `[[feed]]` tables (each with `sink = "influx"`) into InfluxDB
/// database `db`, with the same service and sink settings as [`binance_to_influx`].
pub fn feeds_to_influx(feeds: &str, db: &TestDb) -> String {
    feeds_into(feeds, db, &db.url, "")
}

/// [`feeds_to_influx`] with the sink at `url` (a broken InfluxDB, say) and extra sink keys.
pub fn feeds_into(feeds: &str, db: &TestDb, url: &str, extra_sink: &str) -> String {
    format!(
        r#"
[service]
log_dir = ""
status_interval_secs = 1
spool_dir = "{spill}/spool"
{feeds}
[[sink]]
name = "influx"
plugin = "influxdb"
url = "{url}"
database = "{db}"
flush_interval_ms = 100
quarantine_dir = "{spill}/quarantine"
{extra_sink}
"#,
        spill = std::env::temp_dir().join(format!("ds-e2e-{}", db.name)).display(),
        db = db.name,
    )
}

/// Polls until `cond` holds or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A book rebuilt from the store alone (contract 3): the latest stored snapshot, then every
/// stored delta after it in time order. Also returns the snapshot's id and the number of gap
/// markers between it and the last delta (a rebuild across a gap is not valid).
pub struct Rebuilt {
    pub book: OrderBook,
    pub snapshot_id: u64,
    pub snapshot_time: i64,
    pub deltas_applied: usize,
    pub gaps_after_snapshot: usize,
}

pub async fn rebuild(db: &TestDb, symbol: &str) -> Rebuilt {
    rebuild_where(db, &format!("symbol = {}", quote_str(symbol))).await
}

/// [`rebuild`] for the book selected by an InfluxQL condition on tags, e.g.
/// `market = 'spot' AND symbol = 'BTCUSDT'` where one symbol trades in several markets.
pub async fn rebuild_where(db: &TestDb, series: &str) -> Rebuilt {
    // InfluxDB 1.x applies a write field by field: a query that runs while a batch is being
    // applied can see a point's `price` before its `qty`. Such a read is retried (bounded), so
    // a half-applied write is never taken for a stored point without a quantity.
    for _ in 0..50 {
        if let Some(r) = try_rebuild_where(db, series).await {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{series}: stored levels still lack price, qty or side after 5 s of retries");
}

/// One read of [`rebuild_where`]; `None` when a row lacks one of its fields.
async fn try_rebuild_where(db: &TestDb, series: &str) -> Option<Rebuilt> {
    let last = db.query(&format!("SELECT last(snapshot_id) FROM book_snapshot WHERE {series}")).await;
    let row = last.first().unwrap_or_else(|| panic!("no snapshot stored for {series}"));
    let snapshot_id = row.u64("last").expect("snapshot_id");
    let snapshot_time = row.i64("time").expect("time");
    let mut book = OrderBook::new();
    let levels = db
        .query(&format!(
            "SELECT price, qty, side FROM book_snapshot WHERE ({series}) AND snapshot_id = {snapshot_id} AND time <= {snapshot_time}"
        ))
        .await;
    assert!(!levels.is_empty(), "snapshot {snapshot_id} of {series} has no levels");
    for r in &levels {
        book.set(Side::parse(r.str("side")?).unwrap(), r.f64("price")?, r.f64("qty")?);
    }
    let deltas = db.query(&format!("SELECT price, qty, side FROM book_delta WHERE ({series}) AND time > {snapshot_time}")).await;
    let mut last_time = snapshot_time;
    for r in &deltas {
        book.set(Side::parse(r.str("side")?).unwrap(), r.f64("price")?, r.f64("qty")?);
        last_time = r.i64("time").unwrap();
    }
    // The book is valid up to the last delta only if no gap marker lies in between.
    let gaps = db
        .query(&format!("SELECT reason FROM book_gap WHERE ({series}) AND time > {snapshot_time} AND time <= {last_time}"))
        .await;
    Some(Rebuilt { book, snapshot_id, snapshot_time, deltas_applied: deltas.len(), gaps_after_snapshot: gaps.len() })
}
