//! Huobi hot path, frame by frame exactly as the service runs it: gunzip (capped) + parse +
//! book sync + packet + line-protocol encode, through the real session handlers
//! (`SessionHandler::on_frame`), against a floor of gunzip + serde_json `IgnoredAny` over the
//! same frames, measured in the same run.
//!
//!   cargo bench -p connector-huobi --bench mbp
//!
//! Two sets of frames:
//! - `mbp150`: a synthetic `market.$symbol.mbp.150` stream (only two real incrementals exist),
//!   shaped like the real ones: chained `prevSeqNum`, seqNum steps of 1-5, 1-8 levels in Java
//!   number style (`9.486E-11`, `5.4329174972728E12`), `[]` for an unchanged side;
//! - `capture`: the 362 real wire frames of `ws_raw_gzip_frames_2021-04-17.jsonl`
//!   (depth.step0 books of up to 150 levels a side, trades, acks, pings), when
//!   ../shared/fixtures is present.

use std::hint::black_box;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use flate2::write::GzEncoder;
use flate2::Compression;
use tokio::sync::mpsc;

use connector_huobi::channel_session::ChannelSession;
use connector_huobi::gzip::DEFAULT_MAX_FRAME_BYTES;
use connector_huobi::parser::Channel;
use connector_huobi::session::{MbpSession, MbpSessionConfig};
use ds_api::bench::paired;
use ds_api::buffer::packet_channel;
use ds_api::line_protocol::LineProtocol;
use ds_api::ws::{SessionHandler, WsMessage};
use ds_api::{DataPacket, FeedStats, SinkStats};

const SYMBOLS: [&str; 3] = ["btcusdt", "aidogeusdt", "trioeth"];
const UPDATES_PER_SYMBOL: u64 = 1000;

fn gzip(text: &str) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

/// A tiny deterministic generator (xorshift), so the bench needs no test crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Java's `Double.toString` style for `digits * 10^exp`: plain between 1e-3 and 1e7, else
/// scientific (`9.486E-11`).
fn java(digits: u64, exp: i32) -> String {
    let s = digits.to_string();
    let e = s.len() as i32 - 1 + exp;
    if (-3..7).contains(&e) {
        if exp >= 0 {
            return format!("{s}{}.0", "0".repeat(exp as usize));
        }
        let scale = (-exp) as usize;
        let padded = if s.len() <= scale {
            format!("{}{s}", "0".repeat(scale + 1 - s.len()))
        } else {
            s
        };
        let (int, frac) = padded.split_at(padded.len() - scale);
        let frac = frac.trim_end_matches('0');
        format!("{int}.{}", if frac.is_empty() { "0" } else { frac })
    } else {
        let m = s.trim_end_matches('0');
        format!(
            "{}.{}E{e}",
            &m[..1],
            if m.len() > 1 { &m[1..] } else { "0" }
        )
    }
}

struct Frames {
    /// Per symbol: the req reply that syncs it, then its updates; all interleaved.
    replies: Vec<Vec<u8>>,
    first_updates: Vec<Vec<u8>>,
    updates: Vec<Vec<u8>>,
    levels: u64,
}

/// Frames of a synthetic mbp.150 stream; every update chains on the previous one.
fn synthetic() -> Frames {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut seq: Vec<u64> = vec![155_247_355; SYMBOLS.len()];
    let (mut replies, mut first_updates, mut updates) = (Vec::new(), Vec::new(), Vec::new());
    let mut levels = 0;
    let level = |rng: &mut Rng, base: u64, exp: i32| {
        format!(
            "[{},{}]",
            java(base + rng.next(300), exp),
            if rng.next(5) == 0 {
                "0.0".into()
            } else {
                java(1 + rng.next(1_000_000_000_000), -2)
            }
        )
    };
    for (i, s) in SYMBOLS.iter().enumerate() {
        let exp = [-2, -15, -10][i];
        let base = [5_800_103, 9_485, 9_121][i];
        let bids: Vec<String> = (0..150).map(|_| level(&mut rng, base - 400, exp)).collect();
        let asks: Vec<String> = (0..150).map(|_| level(&mut rng, base + 100, exp)).collect();
        replies.push(gzip(&format!(r#"{{"id":{},"rep":"market.{s}.mbp.150","status":"ok","data":{{"seqNum":{},"bids":[{}],"asks":[{}]}}}}"#, 1, seq[i], bids.join(","), asks.join(","))));
    }
    for n in 0..=UPDATES_PER_SYMBOL {
        for (i, s) in SYMBOLS.iter().enumerate() {
            let exp = [-2, -15, -10][i];
            let base = [5_800_103, 9_485, 9_121][i];
            let prev = seq[i];
            seq[i] += 1 + rng.next(5);
            let side = |rng: &mut Rng, base: u64| -> Vec<String> {
                (0..rng.next(5)).map(|_| level(rng, base, exp)).collect()
            };
            let (b, a) = (side(&mut rng, base - 400), side(&mut rng, base + 100));
            let frame = gzip(&format!(
                r#"{{"ch":"market.{s}.mbp.150","ts":{},"tick":{{"seqNum":{},"prevSeqNum":{prev},"bids":[{}],"asks":[{}]}}}}"#,
                1_690_948_841_557 + n,
                seq[i],
                b.join(","),
                a.join(",")
            ));
            if n == 0 {
                first_updates.push(frame);
            } else {
                levels += (b.len() + a.len()) as u64;
                updates.push(frame);
            }
        }
    }
    Frames {
        replies,
        first_updates,
        updates,
        levels,
    }
}

fn session_config() -> MbpSessionConfig {
    MbpSessionConfig {
        levels: 150,
        req_interval: Duration::ZERO,
        req_timeout: Duration::from_secs(60),
        ack_timeout: Duration::from_secs(60),
        max_held: 100_000,
        max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
    }
}

/// Feeds one frame and encodes the packets it produced, as the sink's buffer would.
fn feed<H: SessionHandler>(
    h: &mut H,
    rx: &mut mpsc::Receiver<DataPacket>,
    frame: &[u8],
    out: &mut Vec<u8>,
    outbox: &mut Vec<WsMessage>,
) -> usize {
    h.on_frame(WsMessage::binary(frame.to_vec()), 1, outbox);
    outbox.clear();
    let mut points = 0;
    while let Ok(p) = rx.try_recv() {
        points += LineProtocol::encode(&p, out);
    }
    out.clear();
    points
}

/// The service path over the synthetic stream, books synced first (not measured apart: a
/// resync per pass is part of what a long stream costs, and it is small against 3000 frames).
fn mbp_service_path(f: &Frames, out: &mut Vec<u8>) -> usize {
    let (tx, mut rx) = packet_channel("bench", 1 << 16, Arc::new(SinkStats::default()));
    let syms: Vec<String> = SYMBOLS.iter().map(|s| s.to_string()).collect();
    let mut session = MbpSession::new(
        Arc::from("bench"),
        "ws://127.0.0.1",
        &syms,
        &session_config(),
        tx,
        Arc::new(FeedStats::default()),
    );
    let mut outbox = Vec::new();
    let mut points = 0;
    // First update held -> req (ids 1, 2, 3 in symbol order) -> reply aligns the book.
    for (i, first) in f.first_updates.iter().enumerate() {
        feed(&mut session, &mut rx, first, out, &mut outbox);
        let reply = connector_huobi_reply_with_id(&f.replies[i], i as u64 + 1);
        points += feed(&mut session, &mut rx, &reply, out, &mut outbox);
    }
    for frame in &f.updates {
        points += feed(&mut session, &mut rx, frame, out, &mut outbox);
    }
    points
}

/// The reply frames are built with id 1; each book's `req` has its own id.
fn connector_huobi_reply_with_id(reply: &[u8], id: u64) -> Vec<u8> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(reply)
        .read_to_string(&mut text)
        .unwrap();
    gzip(&text.replacen(r#"{"id":1,"#, &format!(r#"{{"id":{id},"#), 1))
}

/// The floor: the same frames inflated (by a reused decoder, the cheapest way flate2 offers)
/// and skimmed by serde_json without building anything.
fn floor(frames: &[Vec<u8>], buf: &mut Vec<u8>) -> usize {
    let mut decoder = flate2::bufread::GzDecoder::new(std::io::Cursor::new(Vec::new()));
    frames
        .iter()
        .filter(|f| {
            buf.clear();
            let mut input = decoder.reset(std::io::Cursor::new(Vec::new())).into_inner();
            input.clear();
            input.extend_from_slice(f);
            decoder.reset(std::io::Cursor::new(input));
            decoder.read_to_end(buf).unwrap();
            serde_json::from_slice::<serde::de::IgnoredAny>(buf).is_ok()
        })
        .count()
}

struct Capture {
    frames: Vec<(Channel, Vec<u8>)>,
    symbols: Vec<String>,
}

fn load_capture() -> Option<Capture> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/huobi");
    let text = std::fs::read_to_string(dir.join("ws_raw_gzip_frames_2021-04-17.jsonl")).ok()?;
    let mut frames = Vec::new();
    let mut symbols = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let wire = base64_decode(v["b64"].as_str().unwrap());
        let mut inflated = String::new();
        flate2::read::GzDecoder::new(wire.as_slice())
            .read_to_string(&mut inflated)
            .unwrap();
        let channel =
            if inflated.contains("trade.detail\",\"ts\"") && inflated.starts_with("{\"ch\"") {
                Channel::TradeDetail
            } else {
                Channel::DepthStep0
            };
        if let Some(sym) = inflated
            .strip_prefix("{\"ch\":\"market.")
            .and_then(|r| r.split('.').next())
        {
            if !symbols.iter().any(|s| s == sym) {
                symbols.push(sym.to_string());
            }
        }
        frames.push((channel, wire));
    }
    Some(Capture { frames, symbols })
}

fn base64_decode(s: &str) -> Vec<u8> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let c: Vec<u32> = s
        .bytes()
        .filter(|b| *b != b'=')
        .map(|b| A.iter().position(|a| *a == b).unwrap() as u32)
        .collect();
    let mut out = Vec::new();
    for ch in c.chunks(4) {
        let v = ch
            .iter()
            .enumerate()
            .fold(0u32, |v, (i, x)| v | (x << (18 - 6 * i)));
        out.extend_from_slice(&[(v >> 16) as u8, (v >> 8) as u8, v as u8][..ch.len() - 1]);
    }
    out
}

/// The capture through the `/ws` sessions: depth.step0 books (and the acks and pings) to one,
/// trades to the other.
fn capture_service_path(c: &Capture, out: &mut Vec<u8>) -> usize {
    let (tx, mut rx) = packet_channel("bench", 1 << 16, Arc::new(SinkStats::default()));
    let stats = Arc::new(FeedStats::default());
    let mk = |ch| {
        ChannelSession::new(
            Arc::from("bench"),
            "ws://127.0.0.1",
            ch,
            &c.symbols,
            Duration::from_secs(60),
            DEFAULT_MAX_FRAME_BYTES,
            tx.clone(),
            stats.clone(),
        )
    };
    let (mut books, mut trades) = (mk(Channel::DepthStep0), mk(Channel::TradeDetail));
    let mut outbox = Vec::new();
    let mut points = 0;
    for (ch, wire) in &c.frames {
        let h = if *ch == Channel::TradeDetail {
            &mut trades
        } else {
            &mut books
        };
        points += feed(h, &mut rx, wire, out, &mut outbox);
    }
    assert_eq!(stats.invalid.get(), 0);
    points
}

fn main() {
    let mbp = synthetic();
    let mbp_all: Vec<Vec<u8>> = mbp
        .first_updates
        .iter()
        .chain(&mbp.replies)
        .chain(&mbp.updates)
        .cloned()
        .collect();
    let n_mbp = mbp_all.len() as u64;
    let capture = load_capture();
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    let mut out = Vec::with_capacity(1 << 16);
    let mut buf = Vec::with_capacity(1 << 16);
    {
        let mut g = c.benchmark_group("huobi_mbp150_frames");
        g.throughput(Throughput::Elements(n_mbp));
        g.bench_function("gunzip_serde_ignored_any_floor", |b| {
            b.iter(|| black_box(floor(&mbp_all, &mut buf)))
        });
        g.bench_function("gunzip_parse_sync_encode", |b| {
            b.iter(|| black_box(mbp_service_path(&mbp, &mut out)))
        });
        g.finish();
    }
    if let Some(cap) = &capture {
        let wires: Vec<Vec<u8>> = cap.frames.iter().map(|(_, w)| w.clone()).collect();
        let mut g = c.benchmark_group("huobi_capture_frames");
        g.throughput(Throughput::Elements(wires.len() as u64));
        g.bench_function("gunzip_serde_ignored_any_floor", |b| {
            b.iter(|| black_box(floor(&wires, &mut buf)))
        });
        g.bench_function("gunzip_parse_encode", |b| {
            b.iter(|| black_box(capture_service_path(cap, &mut out)))
        });
        g.finish();
    } else {
        eprintln!("capture group skipped: ../shared/fixtures/huobi not found");
    }
    c.final_summary();

    // Summary lines: floor and path timed in alternation (see ds_api::bench), medians.
    let pair = paired(
        61,
        || {
            black_box(floor(&mbp_all, &mut buf));
        },
        || {
            black_box(mbp_service_path(&mbp, &mut out));
        },
    );
    println!(
        "huobi mbp.150: {} frames, {} levels | floor (gunzip + IgnoredAny) {:.0} frames/s | service path {:.0} frames/s, {:.0} levels/s | ratio to floor {:.2}",
        n_mbp,
        mbp.levels,
        n_mbp as f64 / pair.floor_secs,
        n_mbp as f64 / pair.path_secs,
        mbp.levels as f64 / pair.path_secs,
        pair.ratio
    );
    if let Some(cap) = &capture {
        let wires: Vec<Vec<u8>> = cap.frames.iter().map(|(_, w)| w.clone()).collect();
        let n = wires.len() as u64;
        let points = capture_service_path(cap, &mut out);
        let pair = paired(
            31,
            || {
                black_box(floor(&wires, &mut buf));
            },
            || {
                black_box(capture_service_path(cap, &mut out));
            },
        );
        println!(
            "huobi capture: {n} real frames, {points} points | floor (gunzip + IgnoredAny) {:.0} frames/s | service path {:.0} frames/s, {:.0} points/s | ratio to floor {:.2}",
            n as f64 / pair.floor_secs,
            n as f64 / pair.path_secs,
            points as f64 / pair.path_secs,
            pair.ratio
        );
    }
}
