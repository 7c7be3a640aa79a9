//! Helpers for a real InfluxDB 1.x on 127.0.0.1 (the project's scripts start it and export
//! `INFLUXDB_URL`).
//!
//! Each test gets its own database ([`TestDb::create`], a random name) so tests can run in
//! parallel against one server and never see each other's points; [`TestDb::cleanup`] drops
//! it. Queries ask for `epoch=ns`, so times come back as integers, and rows keep InfluxDB's
//! JSON numbers as `serde_json::Value` (integers stay exact `i64`/`u64`, never via `f64`).

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// One row: column name -> value, plus the series' tags when the query groups by tags.
pub type Row = HashMap<String, Value>;

/// How often [`TestDb::wait_for_count`] polls.
const POLL: Duration = Duration::from_millis(100);
/// Per-request timeout: a local InfluxDB answers in milliseconds; a hang is a broken setup.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The InfluxDB base URL from `INFLUXDB_URL` (e.g. `http://127.0.0.1:8086`).
///
/// Unset: panics when `CI=true` (CI must run the InfluxDB tests); otherwise prints a
/// `skipping:` line and returns `None`, so the caller can `return` early.
pub fn influx_url() -> Option<String> {
    match std::env::var("INFLUXDB_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().trim_end_matches('/').to_owned()),
        _ if crate::in_ci() => {
            panic!("INFLUXDB_URL not set: run the tests through scripts/test.sh")
        }
        _ => {
            eprintln!("skipping: INFLUXDB_URL not set (run the tests through scripts/test.sh)");
            None
        }
    }
}

/// Quotes an InfluxQL identifier (`"name"`, with `\` and `"` escaped).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Quotes an InfluxQL string literal (`'text'`, with `\` and `'` escaped), for where clauses.
pub fn quote_str(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A database created for one test on a real InfluxDB 1.x.
#[derive(Clone, Debug)]
pub struct TestDb {
    /// Base URL of the server, no trailing slash.
    pub url: String,
    /// Database name, `t_<pid>_<random>`.
    pub name: String,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct QueryResponse {
    #[serde(default)]
    results: Vec<StatementResult>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct StatementResult {
    #[serde(default)]
    series: Vec<Series>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Series {
    #[serde(default)]
    tags: HashMap<String, Value>,
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    values: Vec<Vec<Value>>,
}

impl TestDb {
    /// Creates `t_<pid>_<random>` on the server at `url`. Panics when the server does not
    /// answer or refuses (a broken test setup).
    pub async fn create(url: &str) -> TestDb {
        let name = format!("t_{}_{:016x}", std::process::id(), rand::random::<u64>());
        let db = TestDb {
            url: url.trim_end_matches('/').to_owned(),
            name,
            client: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .expect("reqwest client"),
        };
        db.execute(&format!("CREATE DATABASE {}", quote_ident(&db.name)))
            .await;
        db
    }

    /// `<url>/write?db=<name>&precision=ns`, for a client writing line protocol by hand.
    pub fn write_url(&self) -> String {
        format!("{}/write?db={}&precision=ns", self.url, self.name)
    }

    /// Writes line protocol (ns timestamps). Panics on a non-2xx answer, with its body.
    pub async fn write(&self, lines: &str) {
        let resp = self
            .client
            .post(self.write_url())
            .body(lines.to_owned())
            .send()
            .await
            .unwrap_or_else(|e| panic!("InfluxDB write to {}: {e}", self.url));
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            panic!("InfluxDB write to {} answered {status}: {body}", self.name);
        }
    }

    /// Runs one or more InfluxQL statements against this database; returns the raw response.
    /// Panics on a transport error, a non-2xx status, or an error in any statement.
    async fn execute(&self, q: &str) -> QueryResponse {
        let resp = self
            .client
            .post(format!("{}/query", self.url))
            .query(&[("db", self.name.as_str()), ("epoch", "ns")])
            .form(&[("q", q)])
            .send()
            .await
            .unwrap_or_else(|e| panic!("InfluxDB query at {} ({q}): {e}", self.url));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_else(|e| {
            panic!(
                "InfluxDB query at {} ({q}): reading the body: {e}",
                self.url
            )
        });
        if !status.is_success() {
            panic!("InfluxDB query ({q}) answered {status}: {text}");
        }
        let parsed: QueryResponse = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("InfluxDB query ({q}): unexpected body ({e}): {text}"));
        if let Some(err) = &parsed.error {
            panic!("InfluxDB query ({q}) failed: {err}");
        }
        if let Some(err) = parsed.results.iter().find_map(|r| r.error.as_ref()) {
            panic!("InfluxDB query ({q}) failed: {err}");
        }
        parsed
    }

    /// Runs `q` (times as ns integers) and returns one [`Row`] per value row of every series
    /// of every statement, with the series' tags merged in (when grouped by tags). Panics on
    /// an error, naming the query.
    pub async fn query(&self, q: &str) -> Vec<Row> {
        let mut rows = Vec::new();
        for result in self.execute(q).await.results {
            for series in result.series {
                for values in series.values {
                    let mut row: Row = series.tags.clone();
                    row.extend(series.columns.iter().cloned().zip(values));
                    rows.push(row);
                }
            }
        }
        rows
    }

    /// Number of points of `measurement` matching `where_clause` (InfluxQL condition without
    /// the `WHERE`; empty for all points).
    ///
    /// Computed as the largest `COUNT(*)` column, which is the point count when at least one
    /// field is present in every point (true for any schema that always writes a given
    /// field). Use [`TestDb::count_field`] to count the points carrying one field.
    pub async fn count(&self, measurement: &str, where_clause: &str) -> u64 {
        let q = format!(
            "SELECT COUNT(*) FROM {}{}",
            quote_ident(measurement),
            where_sql(where_clause)
        );
        self.query(&q)
            .await
            .iter()
            .flat_map(|row| {
                row.iter()
                    .filter(|(k, _)| k.starts_with("count_"))
                    .filter_map(|(_, v)| v.as_u64())
            })
            .max()
            .unwrap_or(0)
    }

    /// Number of points of `measurement` matching `where_clause` that carry `field`.
    pub async fn count_field(&self, measurement: &str, field: &str, where_clause: &str) -> u64 {
        let q = format!(
            "SELECT COUNT({}) FROM {}{}",
            quote_ident(field),
            quote_ident(measurement),
            where_sql(where_clause)
        );
        self.query(&q)
            .await
            .iter()
            .filter_map(|row| row.get("count").and_then(Value::as_u64))
            .sum()
    }

    /// Polls [`TestDb::count`] until it reaches `expected` or `timeout` passes; returns the
    /// last count (the caller asserts on it, so a shortfall shows the number reached).
    pub async fn wait_for_count(
        &self,
        measurement: &str,
        where_clause: &str,
        expected: u64,
        timeout: Duration,
    ) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let count = self.count(measurement, where_clause).await;
            if count >= expected || tokio::time::Instant::now() >= deadline {
                return count;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Drops the database. Errors are printed, not raised: cleanup must not mask the test's
    /// own outcome.
    pub async fn cleanup(self) {
        let result = self
            .client
            .post(format!("{}/query", self.url))
            .form(&[("q", format!("DROP DATABASE {}", quote_ident(&self.name)))])
            .send()
            .await;
        match result {
            Ok(resp) if resp.status().is_success() => {}
            Ok(resp) => eprintln!(
                "ds-tests influx: DROP DATABASE {} answered {}",
                self.name,
                resp.status()
            ),
            Err(e) => eprintln!("ds-tests influx: DROP DATABASE {}: {e}", self.name),
        }
    }
}

fn where_sql(where_clause: &str) -> String {
    let clause = where_clause.trim();
    if clause.is_empty() {
        String::new()
    } else {
        format!(" WHERE {clause}")
    }
}

/// Typed access to [`Row`] values.
pub trait RowExt {
    /// An integer column (InfluxDB integers and `time` with `epoch=ns`), exact.
    fn i64(&self, column: &str) -> Option<i64>;
    /// A non-negative integer column, exact.
    fn u64(&self, column: &str) -> Option<u64>;
    /// A float column (integers converted).
    fn f64(&self, column: &str) -> Option<f64>;
    /// A string column or tag.
    fn str(&self, column: &str) -> Option<&str>;
}

impl RowExt for Row {
    fn i64(&self, column: &str) -> Option<i64> {
        self.get(column).and_then(Value::as_i64)
    }

    fn u64(&self, column: &str) -> Option<u64> {
        self.get(column).and_then(Value::as_u64)
    }

    fn f64(&self, column: &str) -> Option<f64> {
        self.get(column).and_then(Value::as_f64)
    }

    fn str(&self, column: &str) -> Option<&str> {
        self.get(column).and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("depth"), "\"depth\"");
        assert_eq!(quote_ident("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quote_str("it's"), "'it\\'s'");
        assert_eq!(where_sql("  "), "");
        assert_eq!(where_sql("symbol = 'X'"), " WHERE symbol = 'X'");
    }

    #[tokio::test]
    async fn roundtrip_on_a_real_influxdb() {
        let Some(url) = influx_url() else {
            return;
        };
        let db = TestDb::create(&url).await;
        assert!(db.name.starts_with(&format!("t_{}_", std::process::id())));
        // Exact integers beyond 2^53, floats that must equal the parsed text, tags and strings.
        let big: i64 = 1_617_566_591_307_000_123;
        db.write(&format!(
            "depth,exchange=binance,symbol=BTCUSDT price=58001.03,qty=1.601074,seq={big}i,side=\"bid\" {big}\n\
             depth,exchange=binance,symbol=ETHUSDT price=2094.1,qty=3.5,seq=9007199254740993i,side=\"ask\" {}\n\
             depth,exchange=binance,symbol=ETHUSDT qty=0.5 {}\n",
            big + 1,
            big + 2
        ))
        .await;

        assert_eq!(db.count("depth", "").await, 3);
        assert_eq!(db.count("depth", "symbol = 'ETHUSDT'").await, 2);
        assert_eq!(db.count_field("depth", "price", "").await, 2);
        assert_eq!(db.count("missing", "").await, 0);
        assert_eq!(
            db.wait_for_count("depth", "", 3, Duration::from_secs(5))
                .await,
            3
        );

        let rows = db
            .query("SELECT * FROM depth WHERE symbol = 'BTCUSDT'")
            .await;
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.i64("time"), Some(big));
        assert_eq!(row.i64("seq"), Some(big));
        assert_eq!(row.f64("price"), Some("58001.03".parse().expect("f64")));
        assert_eq!(row.str("side"), Some("bid"));
        assert_eq!(row.str("symbol"), Some("BTCUSDT"));

        let grouped = db
            .query("SELECT LAST(seq) FROM depth GROUP BY symbol")
            .await;
        let eth = grouped
            .iter()
            .find(|r| r.str("symbol") == Some("ETHUSDT"))
            .expect("ETHUSDT series with its tag");
        assert_eq!(eth.i64("last"), Some(9_007_199_254_740_993));

        let name = db.name.clone();
        let probe = db.clone();
        db.cleanup().await;
        // InfluxDB 1.6 may list a just-dropped database for a moment: poll briefly.
        let mut dbs = Vec::new();
        for _ in 0..50 {
            dbs = probe.query("SHOW DATABASES").await;
            if dbs.iter().all(|r| r.str("name") != Some(name.as_str())) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            dbs.iter().all(|r| r.str("name") != Some(name.as_str())),
            "database {name} not dropped: {dbs:?}"
        );
    }
}
