//! `/metrics`: every feed and sink counter in the Prometheus text exposition format 0.0.4.
//!
//! Written by hand: the format is a few lines per family (`# HELP`, `# TYPE`, samples), the
//! counters already exist as atomics ([`ds_api::stats`]), and a client crate would only add a
//! second registry to keep in step with them. Names follow the Prometheus conventions:
//! `data_storage_` prefix, `_total` on counters, base units (`_seconds`, `_bytes`), labels
//! `feed` and `connector` on feed metrics, `sink` on sink metrics.

use std::fmt::{Display, Write};

use ds_api::stats::{HistogramSnapshot, LATENCY_BUCKETS_SECS};
use ds_api::{FeedStats, SinkStats};

use crate::status::StatsRegistry;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(&self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family over every feed: name, help, type, and how to read it from a feed.
type FeedValue = fn(&FeedStats) -> u64;
type SinkValue = fn(&SinkStats) -> i64;

const FEED_COUNTERS: &[(&str, &str, FeedValue)] = &[
    ("data_storage_feed_frames_total", "Websocket data frames received (control frames not counted).", |s| s.frames.get()),
    ("data_storage_feed_points_total", "Points the feed's packets become.", |s| s.points.get()),
    ("data_storage_feed_invalid_frames_total", "Frames that failed to parse (stored as invalid_frame).", |s| s.invalid.get()),
    ("data_storage_feed_control_frames_total", "Frames that need no storage: acks, pongs, heartbeats.", |s| s.control.get()),
    ("data_storage_feed_superseded_updates_total", "Updates already contained in the snapshot they were synced against.", |s| s.superseded.get()),
    ("data_storage_feed_out_of_sequence_updates_total", "Updates discarded while their symbol was out of sync (its gap is stored).", |s| s.out_of_sequence.get()),
    ("data_storage_feed_gaps_total", "Gap markers stored (sequence breaks, disconnects, shutdown).", |s| s.gaps.get()),
    ("data_storage_feed_resyncs_total", "Snapshots requested to (re)sync a symbol.", |s| s.resyncs.get()),
    ("data_storage_feed_reconnects_total", "Websocket connection attempts after the first.", |s| s.reconnects.get()),
    ("data_storage_feed_rollovers_total", "Connections replaced make-before-break (age limit, serverShutdown), without a gap.", |s| s.rollovers.get()),
];

type CaptureValue = fn(&ds_api::capture::Capture) -> u64;

const CAPTURE_COUNTERS: &[(&str, &str, CaptureValue)] = &[
    ("data_storage_feed_capture_records_total", "Raw frames (and connection events) queued for the capture files.", |c| c.recorded()),
    (
        "data_storage_feed_capture_dropped_total",
        "Capture records dropped because the capture writer fell behind; the stored data is unaffected.",
        |c| c.dropped(),
    ),
];

const SINK_COUNTERS: &[(&str, &str, SinkValue)] = &[
    ("data_storage_sink_points_written_total", "Points the sink stored.", |s| s.points_written.get() as i64),
    ("data_storage_sink_batches_written_total", "Batches stored or quarantined.", |s| s.batches_written.get() as i64),
    ("data_storage_sink_bytes_written_total", "Line-protocol bytes stored (uncompressed).", |s| s.bytes_written.get() as i64),
    ("data_storage_sink_write_retries_total", "Failed writes that will be retried (5xx, 429, network, auth).", |s| s.retries.get() as i64),
    ("data_storage_sink_points_quarantined_total", "Points the sink refused, written to its quarantine file.", |s| s.points_quarantined.get() as i64),
    ("data_storage_sink_points_spooled_total", "Points written to the on-disk spool (sink down, slow or stopping).", |s| s.points_spooled.get() as i64),
    ("data_storage_sink_points_dropped_total", "Points lost: channel full, spool full (spool_full policy) or spool disk failed.", |s| s.points_dropped.get() as i64),
];

const SINK_GAUGES: &[(&str, &str, SinkValue)] = &[
    ("data_storage_sink_spool_points", "Points waiting in the on-disk spool.", |s| s.spool_points.get()),
    ("data_storage_sink_spool_bytes", "Bytes of the on-disk spool.", |s| s.spool_bytes.get()),
];

/// Renders every metric. `now_ns` is the wall clock (injected for tests).
pub fn render(reg: &StatsRegistry, now_ns: i64) -> String {
    let mut out = String::with_capacity(4096 + 2048 * (reg.feeds.len() + reg.sinks.len()));
    let feed_labels: Vec<Vec<(&str, &str)>> = reg
        .feeds
        .iter()
        .enumerate()
        .map(|(i, (name, _))| vec![("feed", name.as_str()), ("connector", reg.feed_meta.get(i).map_or("", |m| m.connector))])
        .collect();
    let sink_labels: Vec<Vec<(&str, &str)>> = reg.sinks.iter().map(|(name, _)| vec![("sink", name.as_str())]).collect();

    for (name, help, value) in FEED_COUNTERS {
        header(&mut out, name, help, Kind::Counter);
        for ((_, s), labels) in reg.feeds.iter().zip(&feed_labels) {
            sample(&mut out, name, labels, value(s));
        }
    }
    header(&mut out, "data_storage_feed_packets_total", "Packets handed to the sink, by kind (mi: book update, st: snapshot, trade).", Kind::Counter);
    for ((_, s), labels) in reg.feeds.iter().zip(&feed_labels) {
        for (kind, n) in [("mi", s.mi.get()), ("st", s.st.get()), ("trade", s.trades.get())] {
            let mut l = labels.clone();
            l.push(("kind", kind));
            sample(&mut out, "data_storage_feed_packets_total", &l, n);
        }
    }
    // Only feeds with `capture_dir`: an absent series means "not capturing", not "nothing lost".
    for (name, help, value) in CAPTURE_COUNTERS {
        header(&mut out, name, help, Kind::Counter);
        for ((_, s), labels) in reg.feeds.iter().zip(&feed_labels) {
            if let Some(c) = s.capture.get() {
                sample(&mut out, name, labels, value(c));
            }
        }
    }
    header(&mut out, "data_storage_feed_connections", "Websocket connections open now.", Kind::Gauge);
    for ((_, s), labels) in reg.feeds.iter().zip(&feed_labels) {
        sample(&mut out, "data_storage_feed_connections", labels, s.connections.get());
    }
    header(&mut out, "data_storage_feed_sessions", "Websocket connections the feed runs (each should be open); 0 for REST-polling feeds.", Kind::Gauge);
    for ((_, s), labels) in reg.feeds.iter().zip(&feed_labels) {
        sample(&mut out, "data_storage_feed_sessions", labels, s.sessions.get());
    }
    header(
        &mut out,
        "data_storage_feed_last_message_timestamp_seconds",
        "Receive time of the last data frame or REST result (Unix seconds); 0 = none yet.",
        Kind::Gauge,
    );
    for ((_, s), labels) in reg.feeds.iter().zip(&feed_labels) {
        sample(&mut out, "data_storage_feed_last_message_timestamp_seconds", labels, secs(s.last_message.get().unwrap_or(0)));
    }
    header(
        &mut out,
        "data_storage_feed_seconds_since_last_message",
        "Seconds since the last data frame or REST result (since the start when none yet).",
        Kind::Gauge,
    );
    for ((_, s), labels) in reg.feeds.iter().zip(&feed_labels) {
        let since = s.last_message.get().unwrap_or(reg.started_ns);
        sample(&mut out, "data_storage_feed_seconds_since_last_message", labels, secs((now_ns - since).max(0)));
    }
    let name = "data_storage_feed_update_latency_seconds";
    header(&mut out, name, "Exchange event time to local receive time of book updates (includes clock offset).", Kind::Histogram);
    for ((_, s), labels) in reg.feeds.iter().zip(&feed_labels) {
        histogram(&mut out, name, labels, &s.latency.snapshot());
    }

    for (name, help, value) in SINK_COUNTERS {
        header(&mut out, name, help, Kind::Counter);
        for ((_, s), labels) in reg.sinks.iter().zip(&sink_labels) {
            sample(&mut out, name, labels, value(s));
        }
    }
    for (name, help, value) in SINK_GAUGES {
        header(&mut out, name, help, Kind::Gauge);
        for ((_, s), labels) in reg.sinks.iter().zip(&sink_labels) {
            sample(&mut out, name, labels, value(s));
        }
    }
    let name = "data_storage_sink_last_write_timestamp_seconds";
    header(&mut out, name, "Time of the last successful write (Unix seconds); 0 = none yet.", Kind::Gauge);
    for ((_, s), labels) in reg.sinks.iter().zip(&sink_labels) {
        sample(&mut out, name, labels, secs(s.last_write_ok.get().unwrap_or(0)));
    }
    let name = "data_storage_sink_write_duration_seconds";
    header(&mut out, name, "Duration of one sink write call (a batch, its retries inside the sink included).", Kind::Histogram);
    for ((_, s), labels) in reg.sinks.iter().zip(&sink_labels) {
        histogram(&mut out, name, labels, &s.write_latency.snapshot());
    }
    out
}

fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

fn header(out: &mut String, name: &str, help: &str, kind: Kind) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_label(out, v);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

fn histogram(out: &mut String, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
    let bucket = format!("{name}_bucket");
    for (i, n) in h.cumulative.iter().enumerate() {
        let le = LATENCY_BUCKETS_SECS.get(i).map_or_else(|| "+Inf".to_string(), |b| b.to_string());
        let mut l = labels.to_vec();
        l.push(("le", &le));
        sample(out, &bucket, &l, n);
    }
    sample(out, &format!("{name}_sum"), labels, h.sum_secs);
    sample(out, &format!("{name}_count"), labels, h.count);
}

/// Label values escape `\`, `"` and newlines (the format's only rule for them).
fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::status::FeedMeta;

    fn registry() -> StatsRegistry {
        let feed = Arc::new(FeedStats::default());
        feed.frames.add(7);
        feed.mi.add(5);
        feed.gaps.inc();
        feed.latency.observe(Duration::from_millis(3));
        feed.last_message.set(9_000_000_000);
        let sink = Arc::new(SinkStats::default());
        sink.points_written.add(42);
        sink.spool_points.set(3);
        StatsRegistry {
            feeds: vec![("bin \"a\"".into(), feed)],
            sinks: vec![("influx".into(), sink)],
            feed_meta: vec![FeedMeta { connector: "binance_spot_depth", health_stale: Duration::from_secs(60) }],
            sink_stale: Duration::from_secs(60),
            started_ns: 1_000_000_000,
        }
    }

    #[test]
    fn exposition_has_help_type_and_escaped_labels() {
        let text = render(&registry(), 10_500_000_000);
        let l = r#"{feed="bin \"a\"",connector="binance_spot_depth"}"#;
        for line in [
            "# TYPE data_storage_feed_frames_total counter".to_string(),
            format!("data_storage_feed_frames_total{l} 7"),
            format!("data_storage_feed_gaps_total{l} 1"),
            r#"data_storage_feed_packets_total{feed="bin \"a\"",connector="binance_spot_depth",kind="mi"} 5"#.to_string(),
            format!("data_storage_feed_seconds_since_last_message{l} 1.5"),
            format!("data_storage_feed_last_message_timestamp_seconds{l} 9"),
            "# TYPE data_storage_feed_update_latency_seconds histogram".to_string(),
            r#"data_storage_feed_update_latency_seconds_bucket{feed="bin \"a\"",connector="binance_spot_depth",le="0.0025"} 0"#.to_string(),
            r#"data_storage_feed_update_latency_seconds_bucket{feed="bin \"a\"",connector="binance_spot_depth",le="0.005"} 1"#.to_string(),
            r#"data_storage_feed_update_latency_seconds_bucket{feed="bin \"a\"",connector="binance_spot_depth",le="+Inf"} 1"#.to_string(),
            format!("data_storage_feed_update_latency_seconds_count{l} 1"),
            r#"data_storage_sink_points_written_total{sink="influx"} 42"#.to_string(),
            r#"data_storage_sink_spool_points{sink="influx"} 3"#.to_string(),
            r#"data_storage_sink_write_duration_seconds_count{sink="influx"} 0"#.to_string(),
        ] {
            assert!(text.lines().any(|x| x == line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn every_family_is_declared_once_before_its_samples() {
        let text = render(&registry(), 10_000_000_000);
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(declared.insert(name.to_string()), "{name} declared twice");
                assert!(name.starts_with("data_storage_"), "{name}");
                assert!(!rest.ends_with("counter") || name.ends_with("_total"), "{name}");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f))).unwrap_or(name);
                assert!(declared.contains(family), "sample before its TYPE: {line}");
            }
        }
    }

    #[test]
    fn capture_counters_only_for_capturing_feeds() {
        let dir = tempfile::tempdir().unwrap();
        let capture = ds_api::capture::Capture::start(dir.path(), "cap", 1 << 20).unwrap();
        capture.rest(0, 1, "http://127.0.0.1/depth", "{}");
        capture.rest(0, 2, "http://127.0.0.1/depth", "{}");
        capture.stop();
        capture.rest(0, 3, "http://127.0.0.1/depth", "{}"); // after the writer stopped: dropped
        let mut reg = registry();
        let capturing = Arc::new(FeedStats::default());
        capturing.capture.install(capture);
        reg.feeds.push(("cap".into(), capturing));
        reg.feed_meta.push(FeedMeta { connector: "binance_spot_depth", health_stale: Duration::from_secs(60) });
        let text = render(&reg, 10_000_000_000);
        let l = r#"{feed="cap",connector="binance_spot_depth"}"#;
        assert!(text.lines().any(|x| x == format!("data_storage_feed_capture_records_total{l} 2")), "{text}");
        assert!(text.lines().any(|x| x == format!("data_storage_feed_capture_dropped_total{l} 1")), "{text}");
        assert_eq!(text.lines().filter(|x| x.starts_with("data_storage_feed_capture_dropped_total{")).count(), 1, "no series for a feed that does not capture");
    }
}
