//! The sink against a scripted server: one test per row of the status table in `sink.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ds_api::{DBError, Sink, SinkSpec};

use crate::test_server::{Reply, ScriptedServer};
use crate::{InfluxConfig, InfluxSink};

const LINES: &str = "book_delta,exchange=binance,market=spot,side=bid,symbol=BTCUSDT price=58001.03,qty=1.6,first_id=10i,last_id=12i 1000\n\
book_delta,exchange=binance,market=spot,side=ask,symbol=BTCUSDT price=58042.29,qty=0,first_id=10i,last_id=12i 1001\n\
book_delta,exchange=binance,market=spot,side=ask,symbol=BTCUSDT price=58043.1,qty=5,first_id=10i,last_id=12i 1002\n\
book_delta,exchange=binance,market=spot,side=ask,symbol=BTCUSDT price=58044.7,qty=2,first_id=10i,last_id=12i 1003\n";

fn lines() -> Vec<String> {
    LINES.lines().map(str::to_owned).collect()
}

fn spec(options: &str) -> SinkSpec {
    SinkSpec { name: "influx".into(), options: options.parse().unwrap() }
}

/// A v1 sink for `server`, without gzip (so bodies read as text) and with short backoff.
fn sink(server: &ScriptedServer, quarantine: &Path, extra: &str) -> InfluxSink {
    let gzip = if extra.contains("gzip") { "" } else { "gzip = false" };
    let opts = format!("url = '{}'\ndatabase = 'db'\nquarantine_dir = '{}'\n{gzip}\n{extra}", server.url(), quarantine.display());
    let mut cfg = InfluxConfig::from_spec(&spec(&opts)).unwrap();
    cfg.retry.min_delay = Duration::from_millis(10);
    cfg.retry.max_delay = Duration::from_millis(40);
    InfluxSink::new(cfg).unwrap()
}

/// Every line of every quarantine file, comments included.
fn quarantined(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files.iter().flat_map(|f| std::fs::read_to_string(f).unwrap().lines().map(str::to_owned).collect::<Vec<_>>()).collect()
}

fn data_lines(q: &[String]) -> Vec<String> {
    q.iter().filter(|l| !l.starts_with('#')).cloned().collect()
}

#[tokio::test]
async fn stored_on_204() {
    let server = ScriptedServer::start([Reply::status(204)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = sink(&server, dir.path(), "");
    s.write(LINES.as_bytes(), 4).await.unwrap();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].target, "/write?db=db&precision=ns");
    assert_eq!(reqs[0].lines(), lines());
    assert_eq!(reqs[0].header("authorization"), None);
    assert!(quarantined(dir.path()).is_empty());
}

#[tokio::test]
async fn a_503_is_retried() {
    let server = ScriptedServer::start([Reply::body(503, "overloaded"), Reply::status(204)]).await;
    let dir = tempfile::tempdir().unwrap();
    sink(&server, dir.path(), "").write(LINES.as_bytes(), 4).await.unwrap();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].lines(), lines(), "the retry carries the same batch");
}

#[tokio::test]
async fn a_dropped_connection_is_retried() {
    let server = ScriptedServer::start([Reply::Hangup, Reply::status(204)]).await;
    let dir = tempfile::tempdir().unwrap();
    sink(&server, dir.path(), "").write(LINES.as_bytes(), 4).await.unwrap();
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = ScriptedServer::start([Reply::body(429, "slow down").header("Retry-After", "1"), Reply::status(204)]).await;
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    sink(&server, dir.path(), "").write(LINES.as_bytes(), 4).await.unwrap();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    let waited = reqs[1].at - reqs[0].at;
    assert!(waited >= Duration::from_millis(900), "waited only {waited:?} (backoff alone is 10-40 ms)");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_retry_after_beyond_the_budget_goes_to_the_buffer() {
    let server = ScriptedServer::start([Reply::body(429, "quota").header("Retry-After", "120"), Reply::status(204)]).await;
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let err = sink(&server, dir.path(), "").write(LINES.as_bytes(), 4).await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(5), "must not sleep 120 s inside the write call");
    match err {
        DBError::Retryable { retry_after, reason } => {
            assert_eq!(retry_after, Some(Duration::from_secs(120)));
            assert!(reason.contains("HTTP 429"), "{reason}");
        }
        e => panic!("expected Retryable, got {e:?}"),
    }
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn persistent_500_becomes_retryable_after_max_retries() {
    let replies = std::iter::repeat_n(Reply::body(500, "{\"error\":\"timeout\"}"), 3).chain([Reply::status(204)]);
    let server = ScriptedServer::start(replies).await;
    let dir = tempfile::tempdir().unwrap();
    let err = sink(&server, dir.path(), "max_retries = 2").write(LINES.as_bytes(), 4).await.unwrap_err();
    assert!(matches!(&err, DBError::Retryable { retry_after: None, reason } if reason.contains("HTTP 500")), "{err:?}");
    assert_eq!(server.requests().len(), 3, "1 attempt + max_retries");
    assert_eq!(server.remaining(), 1);
    assert!(quarantined(dir.path()).is_empty(), "a 5xx never quarantines");
}

#[tokio::test]
async fn unreachable_server_is_retryable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let opts = format!("url = 'http://127.0.0.1:{port}'\ndatabase = 'db'\nmax_retries = 1\nquarantine_dir = '{}'", dir.path().display());
    let mut cfg = InfluxConfig::from_spec(&spec(&opts)).unwrap();
    cfg.retry.min_delay = Duration::from_millis(10);
    let err = InfluxSink::new(cfg).unwrap().write(LINES.as_bytes(), 4).await.unwrap_err();
    assert!(matches!(&err, DBError::Retryable { reason, .. } if reason.contains("refused")), "{err:?}");
}

#[tokio::test]
async fn plain_400_quarantines_the_whole_batch() {
    let server = ScriptedServer::start([Reply::body(400, "{\"error\":\"field type conflict\"}")]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = sink(&server, dir.path(), "");
    let err = s.write(LINES.as_bytes(), 4).await.unwrap_err();
    assert!(matches!(&err, DBError::Rejected { reason, .. } if reason.contains("4 of 4 points quarantined")), "{err:?}");
    let q = quarantined(dir.path());
    assert_eq!(q.len(), 5);
    assert!(q[0].starts_with("# ") && q[0].ends_with("HTTP 400: field type conflict"), "{}", q[0]);
    assert_eq!(data_lines(&q), lines());
    assert_eq!(s.points_quarantined(), 4);
    assert_eq!(server.requests().len(), 1, "a 4xx is not retried");
}

#[tokio::test]
async fn partial_write_quarantines_only_the_named_line() {
    let bad = lines()[1].clone();
    let body = serde_json::json!({ "error": format!("partial write: unable to parse '{bad}': invalid number dropped=0") }).to_string();
    let server = ScriptedServer::start([Reply::body(400, body), Reply::status(204)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = sink(&server, dir.path(), "");
    let err = s.write(LINES.as_bytes(), 4).await.unwrap_err();
    assert!(matches!(&err, DBError::Rejected { reason, .. } if reason.contains("1 of 4 points quarantined")), "{err:?}");
    let q = quarantined(dir.path());
    assert_eq!(data_lines(&q), [bad.as_str()]);
    assert!(q[0].contains("HTTP 400: partial write: unable to parse"), "{}", q[0]);
    // The other lines were sent once more, to confirm they are stored.
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    let mut rest = lines();
    rest.remove(1);
    assert_eq!(reqs[1].lines(), rest);
    assert_eq!(s.points_quarantined(), 1);
}

/// The batch goes out as the buffer made it (through `write_shared`, as the buffer calls it),
/// byte for byte, in one request.
#[tokio::test]
async fn a_batch_is_posted_as_it_is() {
    for gzip in ["gzip = false", "gzip = true"] {
        let server = ScriptedServer::start([Reply::status(204)]).await;
        let dir = tempfile::tempdir().unwrap();
        sink(&server, dir.path(), gzip).write_shared(&bytes::Bytes::from_static(LINES.as_bytes()), 4).await.unwrap();
        let reqs = server.requests();
        assert_eq!(reqs.len(), 1, "{gzip}");
        assert_eq!(reqs[0].text(), LINES, "{gzip}");
    }
    // Without its last newline (never from the buffer) it is sent as lines, terminated.
    let server = ScriptedServer::start([Reply::status(204)]).await;
    let dir = tempfile::tempdir().unwrap();
    sink(&server, dir.path(), "").write(LINES.trim_end().as_bytes(), 4).await.unwrap();
    assert_eq!(server.requests()[0].text(), LINES);
}

/// A refusal of a batch with a blank line numbers lines the server's way, not ours: the lines
/// are sent again, and that refusal is the one read.
#[tokio::test]
async fn a_refused_batch_with_a_blank_line_is_sent_again_as_lines() {
    let input = "m,a=1 x=\"s\" 5\n\nm,a=1 x=1.5 6\nm,a=1 x=\"t\" 7\n";
    let body = r#"{"error":"partial write: field type conflict: input field \"x\" on measurement \"m\" is type string, already exists as type float dropped=2"}"#;
    let server = ScriptedServer::start([Reply::body(400, body), Reply::body(400, body), Reply::status(204)]).await;
    let dir = tempfile::tempdir().unwrap();
    let err = sink(&server, dir.path(), "").write(input.as_bytes(), 3).await.unwrap_err();
    assert!(matches!(&err, DBError::Rejected { reason, .. } if reason.contains("2 of 3 points quarantined")), "{err:?}");
    assert_eq!(data_lines(&quarantined(dir.path())), ["m,a=1 x=\"s\" 5", "m,a=1 x=\"t\" 7"]);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].text(), input);
    assert_eq!(reqs[1].text(), "m,a=1 x=\"s\" 5\nm,a=1 x=1.5 6\nm,a=1 x=\"t\" 7\n");
    assert_eq!(reqs[2].lines(), ["m,a=1 x=1.5 6"]);
}

#[tokio::test]
async fn type_conflict_quarantines_the_conflicting_lines() {
    let input = "m,a=1 x=\"s\" 5\nm,a=1 x=1.5 6\nm,a=1 x=\"t\" 7\n";
    let body = r#"{"error":"partial write: field type conflict: input field \"x\" on measurement \"m\" is type string, already exists as type float dropped=2"}"#;
    let server = ScriptedServer::start([Reply::body(400, body), Reply::status(204)]).await;
    let dir = tempfile::tempdir().unwrap();
    let err = sink(&server, dir.path(), "").write(input.as_bytes(), 3).await.unwrap_err();
    assert!(matches!(err, DBError::Rejected { .. }));
    assert_eq!(data_lines(&quarantined(dir.path())), ["m,a=1 x=\"s\" 5", "m,a=1 x=\"t\" 7"]);
    assert_eq!(server.requests()[1].lines(), ["m,a=1 x=1.5 6"]);
}

#[tokio::test]
async fn partial_write_naming_nothing_quarantines_the_batch_once() {
    let body = r#"{"error":"partial write: points beyond retention policy dropped=1"}"#;
    let server = ScriptedServer::start([Reply::body(400, body), Reply::status(204)]).await;
    let dir = tempfile::tempdir().unwrap();
    let err = sink(&server, dir.path(), "").write(LINES.as_bytes(), 4).await.unwrap_err();
    assert!(matches!(err, DBError::Rejected { .. }));
    let q = quarantined(dir.path());
    assert_eq!(data_lines(&q), lines());
    assert!(q[0].contains("the server stored the lines it accepted"), "{}", q[0]);
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_413_splits_the_batch_in_halves() {
    let server = ScriptedServer::start([Reply::status(413), Reply::status(204), Reply::status(204)]).await;
    let dir = tempfile::tempdir().unwrap();
    sink(&server, dir.path(), "").write(LINES.as_bytes(), 4).await.unwrap();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].lines(), lines());
    assert_eq!(reqs[1].lines(), lines()[..2]);
    assert_eq!(reqs[2].lines(), lines()[2..]);
    assert!(quarantined(dir.path()).is_empty());
}

#[tokio::test]
async fn a_413_for_a_single_line_quarantines_it() {
    let server = ScriptedServer::start([Reply::status(413)]).await;
    let dir = tempfile::tempdir().unwrap();
    let one = "m x=1 1\n";
    let err = sink(&server, dir.path(), "").write(one.as_bytes(), 1).await.unwrap_err();
    assert!(matches!(err, DBError::Rejected { .. }));
    let q = quarantined(dir.path());
    assert_eq!(data_lines(&q), ["m x=1 1"]);
    assert!(q[0].contains("HTTP 413"), "{}", q[0]);
}

#[tokio::test]
async fn auth_refusals_keep_the_data() {
    for status in [401, 403] {
        let server = ScriptedServer::start([Reply::body(status, "{\"error\":\"authorization failed\"}")]).await;
        let dir = tempfile::tempdir().unwrap();
        let qdir = dir.path().join("q");
        let mut s = sink(&server, &qdir, "username = 'u'\npassword = 'hunter2'");
        let err = s.write(LINES.as_bytes(), 4).await.unwrap_err();
        assert!(matches!(&err, DBError::Auth { reason } if reason.contains(&status.to_string())), "{err:?}");
        assert!(!format!("{err} {err:?}").contains("hunter2"));
        assert!(!qdir.exists(), "nothing quarantined on HTTP {status}");
        assert_eq!(server.requests().len(), 1, "credentials are not retried within the call");
        // Basic auth header, not u=/p= query parameters.
        assert_eq!(server.requests()[0].header("authorization"), Some("Basic dTpodW50ZXIy"));
        assert_eq!(server.requests()[0].target, "/write?db=db&precision=ns");
    }
}

#[tokio::test]
async fn database_not_found_quarantines() {
    let server = ScriptedServer::start([Reply::body(404, r#"{"error":"database not found: \"db\""}"#)]).await;
    let dir = tempfile::tempdir().unwrap();
    let err = sink(&server, dir.path(), "").write(LINES.as_bytes(), 4).await.unwrap_err();
    assert!(matches!(&err, DBError::Rejected { reason, .. } if reason.contains("database not found")), "{err:?}");
    assert_eq!(data_lines(&quarantined(dir.path())), lines());
}

#[tokio::test]
async fn gzip_bodies_decode_to_the_exact_lines() {
    let server = ScriptedServer::start([Reply::status(204)]).await;
    let dir = tempfile::tempdir().unwrap();
    sink(&server, dir.path(), "gzip = true").write(LINES.as_bytes(), 4).await.unwrap();
    let req = &server.requests()[0];
    assert_eq!(req.header("content-encoding"), Some("gzip"));
    assert!(req.body.starts_with(&[0x1f, 0x8b]), "gzip magic");
    assert_eq!(req.text(), LINES);
}

#[tokio::test]
async fn v2_path_query_and_token() {
    let server = ScriptedServer::start([Reply::status(204)]).await;
    let dir = tempfile::tempdir().unwrap();
    let opts = format!(
        "api = 'v2'\nurl = '{}/prefix/'\norg = 'my org'\nbucket = 'b'\ntoken = 't0ken'\nquarantine_dir = '{}'",
        server.url(),
        dir.path().display()
    );
    let mut s = InfluxSink::new(InfluxConfig::from_spec(&spec(&opts)).unwrap()).unwrap();
    s.write(LINES.as_bytes(), 4).await.unwrap();
    let req = &server.requests()[0];
    assert_eq!(req.target, "/prefix/api/v2/write?org=my+org&bucket=b&precision=ns");
    assert_eq!(req.header("authorization"), Some("Token t0ken"));
    assert_eq!(req.text(), LINES);
}

#[tokio::test]
async fn registered_as_influxdb() {
    let plugin = ds_api::plugin::find_sink("influxdb").expect("registered");
    assert_eq!(plugin.crate_name, "sink-influxdb");
    let errs = (plugin.build)(&spec("api = 'v9'\nbogus = 1")).err().expect("invalid config");
    let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["bogus", "api"]);
    assert!((plugin.build)(&spec("database = 'x'")).is_ok());
}

#[test]
fn build_needs_no_runtime_and_no_network() {
    let plugin = ds_api::plugin::find_sink("influxdb").unwrap();
    assert!((plugin.build)(&spec("url = 'http://192.0.2.1:1'\ndatabase = 'x'")).is_ok());
}
