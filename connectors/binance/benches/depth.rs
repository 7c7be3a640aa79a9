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
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};

use connector_binance::book_sync::{BookSync, HeldUpdate};
use connector_binance::parser::{parse_snapshot, DepthFrame, DepthParser, DepthSnapshot};
use ds_api::line_protocol::LineProtocol;
use ds_api::traits::Parser;
use ds_api::{FeedStats, Instrument};

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

/// The service path: one pass over the capture with freshly synced books.
fn service_path(c: &Capture, out: &mut Vec<u8>) -> usize {
    let stats = FeedStats::default();
    let mut books: Vec<(String, BookSync)> = c
        .snapshots
        .iter()
        .map(|(s, snapshot)| {
            let mut b = BookSync::new(Instrument { exchange: "binance", market: "spot", symbol: Arc::from(s.as_str()) }, 100_000);
            let mut packets = Vec::new();
            b.on_snapshot(snapshot.clone(), &mut packets, &stats);
            (s.clone(), b)
        })
        .collect();
    let mut packets = Vec::with_capacity(4);
    let mut points = 0;
    for f in &c.frames {
        if let Ok(DepthFrame::Update(u)) = DepthParser.parse(f.as_bytes()) {
            if let Some((_, book)) = books.iter_mut().find(|(s, _)| s == u.symbol) {
                book.on_update(HeldUpdate::from_update(u, 1), &mut packets, &stats);
            }
        }
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

fn floor(c: &Capture) -> usize {
    c.frames.iter().filter(|f| serde_json::from_str::<serde::de::IgnoredAny>(f).is_ok()).count()
}

fn median_secs(mut f: impl FnMut(), runs: usize) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[runs / 2]
}

fn main() {
    let cap = load();
    let n = cap.frames.len() as u64;
    let mut c = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    {
        let mut g = c.benchmark_group("binance_depth_frames");
        g.throughput(Throughput::Elements(n));
        g.bench_function("serde_ignored_any_floor", |b| b.iter(|| black_box(floor(&cap))));
        let mut out = Vec::with_capacity(1 << 16);
        g.bench_function("parse_sync_encode", |b| b.iter(|| black_box(service_path(&cap, &mut out))));
        g.finish();
    }
    {
        let mut g = c.benchmark_group("binance_depth_levels");
        g.throughput(Throughput::Elements(cap.levels));
        let mut out = Vec::with_capacity(1 << 16);
        g.bench_function("parse_sync_encode", |b| b.iter(|| black_box(service_path(&cap, &mut out))));
        g.finish();
    }
    c.final_summary();

    // One summary line with the ratio, medians of 31 passes each.
    let mut out = Vec::with_capacity(1 << 16);
    let t_floor = median_secs(|| { black_box(floor(&cap)); }, 31);
    let t_path = median_secs(|| { black_box(service_path(&cap, &mut out)); }, 31);
    let t_parse = median_secs(|| { black_box(parse_only(&cap)); }, 31);
    let t_wire = median_secs(|| { black_box(wire_only(&cap)); }, 31);
    println!("binance depth: serde wire struct alone {:.0} frames/s (ratio to floor {:.2})", n as f64 / t_wire, t_floor / t_wire);
    println!("binance depth: parse alone {:.0} frames/s (ratio to floor {:.2})", n as f64 / t_parse, t_floor / t_parse);
    println!(
        "binance depth: {} frames, {} levels | floor {:.0} frames/s | service path {:.0} frames/s, {:.0} levels/s | ratio to floor {:.2}",
        n,
        cap.levels,
        n as f64 / t_floor,
        n as f64 / t_path,
        cap.levels as f64 / t_path,
        t_floor / t_path
    );
}
