//! Bybit hot paths on the real captures: order book parse + BookSync + line-protocol encode
//! (what the service runs per frame) over `orderbook_200_{spot,linear}_2026-08-09.jsonl`,
//! and trade parse + encode over `public_trade_*`, each against the serde_json `IgnoredAny`
//! floor measured in the same run.
//!
//!   cargo bench -p connector-bybit --bench orderbook
//!
//! Needs ../shared/fixtures (the recorded traffic); exits with an error when it is missing.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, Throughput};

use connector_bybit::options::Category;
use connector_bybit::parser::{BookFrame, OrderbookParser, TradeFrame, TradeParser};
use connector_bybit::session::{OrderbookTopics, TopicFeed, TradeTopics};
use ds_api::bench::paired;
use ds_api::line_protocol::LineProtocol;
use ds_api::traits::Parser;
use ds_api::FeedStats;

struct Capture {
    /// (market, frame) in capture order, spot then linear.
    books: Vec<(Category, String)>,
    /// The order books' symbols per market, in order of first appearance.
    book_symbols: [Vec<String>; 2],
    levels: u64,
    trades: Vec<(Category, String)>,
    trade_count: u64,
}

fn load() -> Capture {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/bybit");
    let read = |name: &str| -> Vec<String> {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("bench needs ../shared/fixtures/bybit ({}): {e}", dir.display()))
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    };
    let mut books = Vec::new();
    for (cat, file) in [(Category::Spot, "orderbook_200_spot_2026-08-09.jsonl"), (Category::Linear, "orderbook_200_linear_2026-08-09.jsonl")] {
        books.extend(read(file).into_iter().map(|f| (cat, f)));
    }
    let mut book_symbols: [Vec<String>; 2] = Default::default();
    let mut levels = 0;
    for (cat, f) in &books {
        if let BookFrame::Update(u) = OrderbookParser.parse(f.as_bytes()).unwrap() {
            levels += (u.bids.len() + u.asks.len()) as u64;
            let seen = &mut book_symbols[usize::from(*cat == Category::Linear)];
            if !seen.iter().any(|s| s == u.symbol) {
                seen.push(u.symbol.to_string());
            }
        }
    }
    let mut trades = Vec::new();
    for (cat, file) in [(Category::Spot, "public_trade_spot_2026-08-09.jsonl"), (Category::Linear, "public_trade_linear_2026-08-09.jsonl")] {
        trades.extend(read(file).into_iter().map(|f| (cat, f)));
    }
    let trade_count = trades
        .iter()
        .map(|(_, f)| match TradeParser.parse(f.as_bytes()).unwrap() {
            TradeFrame::Trades { trades, .. } => trades.len() as u64,
            TradeFrame::Reply(_) => 0,
        })
        .sum();
    Capture { books, book_symbols, levels, trades, trade_count }
}

/// The service path for order books: one pass over both captures with fresh books, through
/// the session's own dispatch (`OrderbookTopics`: the topic looked up, the symbol checked,
/// then the book's `BookSync`), one per market as each market has its own connections.
fn book_path(c: &Capture, out: &mut Vec<u8>) -> usize {
    let stats = FeedStats::default();
    let mut spot = OrderbookTopics::new(Category::Spot, 200, &c.book_symbols[0]);
    let mut linear = OrderbookTopics::new(Category::Linear, 200, &c.book_symbols[1]);
    let mut packets = Vec::with_capacity(4);
    let mut points = 0;
    for (cat, f) in &c.books {
        let feed = if *cat == Category::Spot { &mut spot } else { &mut linear };
        let _ = feed.on_frame(f.as_bytes(), 1, &mut packets, &stats);
        for p in packets.drain(..) {
            points += LineProtocol::encode(&p, out);
        }
        out.clear();
    }
    points
}

/// Parsing alone (typed levels, validated decimals), to show where the service path spends.
fn parse_only(c: &Capture) -> usize {
    c.books.iter().filter_map(|(_, f)| OrderbookParser.parse(f.as_bytes()).ok()).count()
}

/// The service path for trades: parse, one packet per trade, encode.
fn trade_path(c: &Capture, out: &mut Vec<u8>) -> usize {
    let stats = FeedStats::default();
    let symbols = ["BTCUSDT".to_string(), "ETHUSDT".to_string(), "SOLUSDT".to_string(), "DOGEUSDT".to_string()];
    let mut spot = TradeTopics::new(Category::Spot, &symbols);
    let mut linear = TradeTopics::new(Category::Linear, &symbols);
    let mut packets = Vec::with_capacity(64);
    let mut points = 0;
    for (cat, f) in &c.trades {
        let feed = if *cat == Category::Spot { &mut spot } else { &mut linear };
        let _ = feed.on_frame(f.as_bytes(), 1, &mut packets, &stats);
        for p in packets.drain(..) {
            points += LineProtocol::encode(&p, out);
        }
        out.clear();
    }
    points
}

fn floor<'a>(frames: impl Iterator<Item = &'a String>) -> usize {
    frames.filter(|f| serde_json::from_str::<serde::de::IgnoredAny>(f).is_ok()).count()
}

fn main() {
    let cap = load();
    let n = cap.books.len() as u64;
    let nt = cap.trades.len() as u64;
    let mut c = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    {
        let mut g = c.benchmark_group("bybit_orderbook_frames");
        g.throughput(Throughput::Elements(n));
        g.bench_function("serde_ignored_any_floor", |b| b.iter(|| black_box(floor(cap.books.iter().map(|(_, f)| f)))));
        g.bench_function("parse_only", |b| b.iter(|| black_box(parse_only(&cap))));
        let mut out = Vec::with_capacity(1 << 16);
        g.bench_function("parse_sync_encode", |b| b.iter(|| black_box(book_path(&cap, &mut out))));
        g.finish();
    }
    {
        let mut g = c.benchmark_group("bybit_orderbook_levels");
        g.throughput(Throughput::Elements(cap.levels));
        let mut out = Vec::with_capacity(1 << 16);
        g.bench_function("parse_sync_encode", |b| b.iter(|| black_box(book_path(&cap, &mut out))));
        g.finish();
    }
    {
        let mut g = c.benchmark_group("bybit_trade_frames");
        g.throughput(Throughput::Elements(nt));
        g.bench_function("serde_ignored_any_floor", |b| b.iter(|| black_box(floor(cap.trades.iter().map(|(_, f)| f)))));
        let mut out = Vec::with_capacity(1 << 16);
        g.bench_function("parse_encode", |b| b.iter(|| black_box(trade_path(&cap, &mut out))));
        g.finish();
    }
    c.final_summary();

    // Summary lines: floor and path timed in alternation (see ds_api::bench), medians.
    let mut out = Vec::with_capacity(1 << 16);
    let parse = paired(31, || { black_box(floor(cap.books.iter().map(|(_, f)| f))); }, || { black_box(parse_only(&cap)); });
    let pair = paired(61, || { black_box(floor(cap.books.iter().map(|(_, f)| f))); }, || { black_box(book_path(&cap, &mut out)); });
    println!(
        "bybit orderbook: {} frames, {} levels | floor {:.0} frames/s | parse only {:.0} frames/s (ratio {:.2}) | service path {:.0} frames/s, {:.0} levels/s | ratio to floor {:.2}",
        n,
        cap.levels,
        n as f64 / pair.floor_secs,
        n as f64 / parse.path_secs,
        parse.ratio,
        n as f64 / pair.path_secs,
        cap.levels as f64 / pair.path_secs,
        pair.ratio
    );
    let pair = paired(101, || { black_box(floor(cap.trades.iter().map(|(_, f)| f))); }, || { black_box(trade_path(&cap, &mut out)); });
    println!(
        "bybit trades: {} frames, {} trades | floor {:.0} frames/s | service path {:.0} frames/s, {:.0} trades/s | ratio to floor {:.2}",
        nt,
        cap.trade_count,
        nt as f64 / pair.floor_secs,
        nt as f64 / pair.path_secs,
        cap.trade_count as f64 / pair.path_secs,
        pair.ratio
    );
}
