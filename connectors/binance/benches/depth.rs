//! Binance diff-depth hot path on the real capture: parse + BookSync + line-protocol encode
//! (the code the service runs per frame), against the serde_json `IgnoredAny` floor measured
//! in the same run.
//!
//!   cargo bench -p connector-binance --bench depth
//!
//! Needs ../shared/fixtures (the recorded traffic); exits with an error when it is missing.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput};

use connector_binance::book_sync::{BookSync, HeldUpdate};
use connector_binance::parser::{parse_snapshot, DepthFrame, DepthParser, DepthSnapshot};
use ds_api::bench::paired;
use ds_api::line_protocol::LineProtocol;
use ds_api::traits::Parser;
use ds_api::{FastMap, FeedStats, Instrument};

struct Capture {
    frames: Vec<String>,
    /// Parsed once: the REST snapshots are not part of the per-frame path being measured.
    snapshots: Vec<(String, DepthSnapshot)>,
    levels: u64,
}

fn load() -> Capture {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/binance");
    let text = std::fs::read_to_string(dir.join("depth_update_combined_2021-04-04.jsonl"))
        .unwrap_or_else(|e| panic!("bench needs ../shared/fixtures/binance ({}): {e}", dir.display()));
    let frames: Vec<String> = text.lines().filter(|l| !l.is_empty()).map(String::from).collect();
    let snapshots = ["BTCUSDT", "ETHUSDT", "DOTUSDT"]
        .iter()
        .map(|s| (s.to_string(), parse_snapshot(&std::fs::read_to_string(dir.join(format!("rest_depth_snapshot_2021-04-04_{s}.json"))).unwrap()).unwrap()))
        .collect();
    let levels = frames
        .iter()
        .map(|f| match DepthParser.parse(f.as_bytes()).unwrap() {
            DepthFrame::Update(u) => (u.bids.len() + u.asks.len()) as u64,
            DepthFrame::ServerShutdown => 0,
        })
        .sum();
    Capture { frames, snapshots, levels }
}

/// The three books of the capture, synced to their REST snapshots: each pass starts from a
/// copy, so that it measures the per-frame path (the snapshot is applied once per sync, not
/// per frame; its encoding is in the `snapshot` line of the summary).
fn synced_books(c: &Capture) -> Vec<(String, BookSync)> {
    let stats = FeedStats::default();
    c.snapshots
        .iter()
        .map(|(s, snapshot)| {
            let mut b = BookSync::new(Instrument { exchange: "binance", market: "spot", symbol: Arc::from(s.as_str()) }, 100_000);
            b.on_snapshot(snapshot.clone(), &mut Vec::new(), &stats);
            (s.clone(), b)
        })
        .collect()
}

/// The service path: one pass over the capture, frame by frame: parse, sequence check,
/// line protocol.
fn service_path(c: &Capture, synced: &[(String, BookSync)], out: &mut Vec<u8>) -> usize {
    let stats = FeedStats::default();
    let mut books = synced.to_vec();
    // The book found by its symbol as `DepthSession::on_message` finds it: the same map.
    let by_symbol: FastMap<Arc<str>, usize> = books.iter().enumerate().map(|(i, (s, _))| (Arc::from(s.as_str()), i)).collect();
    let mut packets = Vec::with_capacity(4);
    let mut points = 0;
    for f in &c.frames {
        if let Ok(DepthFrame::Update(u)) = DepthParser.parse(f.as_bytes()) {
            if let Some(&i) = by_symbol.get(u.symbol) {
                books[i].1.on_update(HeldUpdate::from_update(u, 1), &mut packets, &stats);
            }
        }
        for p in packets.drain(..) {
            points += LineProtocol::encode(&p, out);
        }
        out.clear();
    }
    points
}

/// A resync's cost: the three REST snapshots applied to fresh books and encoded.
fn snapshot_path(c: &Capture, out: &mut Vec<u8>) -> usize {
    let stats = FeedStats::default();
    let mut points = 0;
    let mut packets = Vec::new();
    for (s, snapshot) in &c.snapshots {
        let mut b = BookSync::new(Instrument { exchange: "binance", market: "spot", symbol: Arc::from(s.as_str()) }, 100_000);
        b.on_snapshot(snapshot.clone(), &mut packets, &stats);
        for p in packets.drain(..) {
            points += LineProtocol::encode(&p, out);
        }
        out.clear();
    }
    points
}

/// serde into the borrowed wire struct alone.
fn wire_only(c: &Capture) -> usize {
    let mut n = 0;
    for f in &c.frames {
        if let Ok(w) = serde_json::from_str::<connector_binance::wire::CombinedFrame>(f) {
            n += w.data.bids.len() + w.data.asks.len();
        }
    }
    n
}

/// Parse only (no sync, no encoding), to see where the time goes.
fn parse_only(c: &Capture) -> usize {
    let mut n = 0;
    for f in &c.frames {
        if let Ok(DepthFrame::Update(u)) = DepthParser.parse(f.as_bytes()) {
            n += u.bids.len() + u.asks.len();
        }
    }
    n
}

/// Encoding alone: the packets of one pass, made once, encoded again and again.
fn encode_only(packets: &[ds_api::DataPacket], out: &mut Vec<u8>) -> usize {
    let mut points = 0;
    for p in packets {
        points += LineProtocol::encode(p, out);
        out.clear();
    }
    points
}

fn floor(c: &Capture) -> usize {
    c.frames.iter().filter(|f| serde_json::from_str::<serde::de::IgnoredAny>(f).is_ok()).count()
}

fn main() {
    let cap = load();
    let n = cap.frames.len() as u64;
    let synced = synced_books(&cap);
    let packets = {
        let mut all = Vec::new();
        let stats = FeedStats::default();
        let mut books = synced.clone();
        for f in &cap.frames {
            if let Ok(DepthFrame::Update(u)) = DepthParser.parse(f.as_bytes()) {
                if let Some((_, book)) = books.iter_mut().find(|(s, _)| s == u.symbol) {
                    book.on_update(HeldUpdate::from_update(u, 1), &mut all, &stats);
                }
            }
        }
        all
    };
    let mut c = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    {
        let mut g = c.benchmark_group("binance_depth_frames");
        g.throughput(Throughput::Elements(n));
        g.bench_function("serde_ignored_any_floor", |b| b.iter(|| black_box(floor(&cap))));
        let mut out = Vec::with_capacity(1 << 16);
        g.bench_function("parse_sync_encode", |b| b.iter(|| black_box(service_path(&cap, &synced, &mut out))));
        g.bench_function("parse_only", |b| b.iter(|| black_box(parse_only(&cap))));
        g.bench_function("encode_only", |b| b.iter(|| black_box(encode_only(&packets, &mut out))));
        g.finish();
    }
    {
        let mut g = c.benchmark_group("binance_depth_levels");
        g.throughput(Throughput::Elements(cap.levels));
        let mut out = Vec::with_capacity(1 << 16);
        g.bench_function("parse_sync_encode", |b| b.iter(|| black_box(service_path(&cap, &synced, &mut out))));
        g.finish();
    }
    c.final_summary();

    // The summary: floor and service path timed in alternation, 61 rounds, medians.
    let mut out = Vec::with_capacity(1 << 16);
    let pair = paired(61, || { black_box(floor(&cap)); }, || { black_box(service_path(&cap, &synced, &mut out)); });
    let parse = paired(31, || { black_box(floor(&cap)); }, || { black_box(parse_only(&cap)); });
    let wire = paired(31, || { black_box(floor(&cap)); }, || { black_box(wire_only(&cap)); });
    let encode = paired(31, || { black_box(floor(&cap)); }, || { black_box(encode_only(&packets, &mut out)); });
    let snapshot_levels = snapshot_path(&cap, &mut out) as f64;
    let t_snapshot = ds_api::bench::median_secs(|| { black_box(snapshot_path(&cap, &mut out)); }, 31);
    println!("binance depth: snapshot apply + encode {:.0} levels/s ({} levels)", snapshot_levels / t_snapshot, snapshot_levels);
    println!("binance depth: encode alone {:.0} frames/s (ratio to floor {:.2})", n as f64 / encode.path_secs, encode.ratio);
    println!("binance depth: serde wire struct alone {:.0} frames/s (ratio to floor {:.2})", n as f64 / wire.path_secs, wire.ratio);
    println!("binance depth: parse alone {:.0} frames/s (ratio to floor {:.2})", n as f64 / parse.path_secs, parse.ratio);
    println!(
        "binance depth: {} frames, {} levels | floor {:.0} frames/s | service path {:.0} frames/s, {:.0} levels/s | ratio to floor {:.2}",
        n,
        cap.levels,
        n as f64 / pair.floor_secs,
        n as f64 / pair.path_secs,
        cap.levels as f64 / pair.path_secs,
        pair.ratio
    );
}
