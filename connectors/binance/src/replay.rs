//! `data-storage replay` for `binance_spot_depth`: the same parser and [`BookSync`] the live
//! [`crate::session::DepthSession`] runs, fed from recorded frames instead of a websocket.
//!
//! - capture files: `ws` records are frames, `rest` records the depth snapshots the live run
//!   applied at that point (URL `...symbol=X...`), `close` records the connection ends (gap
//!   markers at the same time). Timestamps come out equal to the live run's, because each
//!   book's [`ds_api::clock::SeriesClock`] only sees that book's receive times.
//! - plain one-frame-per-line files have no REST answers: `--snapshot SYMBOL=FILE` preloads
//!   the body, applied when the symbol's first frame arrives (as the live run's first
//!   snapshot arrives after the stream has started). A book without one never syncs; its
//!   frames are held and counted as out of sequence.

use std::collections::HashMap;
use std::sync::Arc;

use ds_api::capture::{CaptureRecord, Payload, RecordKind};
use ds_api::traits::Parser;
use ds_api::{ConfigError, DataPacket, FastMap, FeedSpec, FeedStats, GapReason, Instrument, InvalidFrame, Replayer, Symbols};

use crate::book_sync::{BookSync, HeldUpdate};
use crate::parser::{parse_snapshot, DepthFrame, DepthParser, DepthSnapshot};

pub struct DepthReplayer {
    feed: Arc<str>,
    /// Configured symbols (upper case); `None` for `"all"`: a book per symbol seen.
    symbols: Option<Vec<String>>,
    max_held: usize,
    books: Vec<BookSync>,
    /// Connection each book was seen on: a `close` record ends only that connection's books.
    conn_of: Vec<u32>,
    by_symbol: FastMap<Arc<str>, usize>,
    /// Whether each book has been synced by a snapshot at least once.
    ever_synced: Vec<bool>,
    preloaded: HashMap<String, DepthSnapshot>,
    stats: FeedStats,
}

impl DepthReplayer {
    pub fn build(spec: &FeedSpec) -> Result<Box<dyn Replayer>, Vec<ConfigError>> {
        let options = crate::options::parse_depth(spec)?;
        let symbols = match &spec.symbols {
            Symbols::List(l) => Some(l.iter().map(|s| s.to_uppercase()).collect()),
            Symbols::All => None,
        };
        Ok(Box::new(DepthReplayer {
            feed: Arc::from(spec.name.as_str()),
            symbols,
            max_held: options.max_held_updates,
            books: Vec::new(),
            conn_of: Vec::new(),
            by_symbol: FastMap::default(),
            ever_synced: Vec::new(),
            preloaded: HashMap::new(),
            stats: FeedStats::default(),
        }))
    }

    /// The book of `symbol`, created on first sight when the feed has it.
    fn book(&mut self, symbol: &str, conn: u32) -> Option<usize> {
        if let Some(&i) = self.by_symbol.get(symbol) {
            return Some(i);
        }
        if let Some(list) = &self.symbols {
            if !list.iter().any(|s| s == symbol) {
                return None;
            }
        }
        let sym: Arc<str> = Arc::from(symbol);
        self.books.push(BookSync::new(Instrument { exchange: "binance", market: "spot", symbol: sym.clone() }, self.max_held));
        self.conn_of.push(conn);
        self.ever_synced.push(false);
        self.by_symbol.insert(sym, self.books.len() - 1);
        Some(self.books.len() - 1)
    }

    /// A snapshot for book `i`, preloaded or recorded, applied as the live session applies it.
    fn apply_snapshot(&mut self, i: usize, snap: DepthSnapshot, at_ns: i64, out: &mut Vec<DataPacket>) {
        self.stats.resyncs.inc();
        self.books[i].on_snapshot_at(snap, at_ns, out, &self.stats);
        self.ever_synced[i] |= self.books[i].is_synced();
    }

    fn invalid(&mut self, reason: String, raw: &str, at_ns: i64, out: &mut Vec<DataPacket>) {
        self.stats.invalid.inc();
        self.stats.points.inc();
        out.push(DataPacket::Invalid(InvalidFrame::new("binance", self.feed.clone(), reason, raw, self.stats.reserve_invalid(at_ns, 1))));
    }

    fn frame(&mut self, text: &str, conn: u32, at_ns: i64, out: &mut Vec<DataPacket>) {
        match DepthParser.parse(text.as_bytes()) {
            Ok(DepthFrame::Update(u)) => {
                let symbol = u.symbol.to_string();
                let Some(i) = self.book(&symbol, conn) else {
                    self.invalid(format!("update for a symbol not subscribed here: {symbol}"), text, at_ns, out);
                    return;
                };
                // A capture brings its own REST answers; the request a live session would
                // make on `NeedSnapshot` is already in the file.
                self.books[i].on_update(HeldUpdate::from_update(u, at_ns), out, &self.stats);
                if let Some(snap) = self.preloaded.remove(&symbol) {
                    self.apply_snapshot(i, snap, at_ns, out);
                }
            }
            Ok(DepthFrame::ServerShutdown) => self.stats.control.inc(),
            Err(e) => self.invalid(e.to_string(), text, at_ns, out),
        }
    }

    fn rest(&mut self, record: &CaptureRecord, at_ns: i64, out: &mut Vec<DataPacket>) {
        let (Some(url), Some(body)) = (record.url.as_deref(), record.text()) else {
            tracing::warn!("rest record without url or body; skipped");
            return;
        };
        let Some(symbol) = query_value(url, "symbol") else {
            tracing::warn!(url, "rest record for no symbol; skipped");
            return;
        };
        let Some(i) = self.book(&symbol.to_uppercase(), record.conn) else { return };
        match parse_snapshot(body) {
            Ok(snap) => self.apply_snapshot(i, snap, at_ns, out),
            // The live run logged it and asked again; so does the capture's next record.
            Err(e) => tracing::warn!(url, error = %e, "recorded snapshot does not parse; skipped"),
        }
    }
}

impl Replayer for DepthReplayer {
    fn preload_snapshot(&mut self, symbol: &str, body: &str) -> Result<(), String> {
        let snap = parse_snapshot(body).map_err(|e| format!("snapshot for {symbol}: {e}"))?;
        self.preloaded.insert(symbol.to_uppercase(), snap);
        Ok(())
    }

    fn feed(&mut self, record: &CaptureRecord, at_ns: i64, out: &mut Vec<DataPacket>) {
        match record.kind {
            RecordKind::Ws => {
                self.stats.frames.inc();
                match &record.data {
                    Payload::Text(t) => self.frame(t, record.conn, at_ns, out),
                    Payload::Binary(b) => self.invalid("unexpected binary frame".into(), &String::from_utf8_lossy(b), at_ns, out),
                    Payload::None => {}
                }
            }
            RecordKind::Rest => self.rest(record, at_ns, out),
            RecordKind::Close => {
                let reason = if record.reason.as_deref() == Some("shutdown") { GapReason::Shutdown } else { GapReason::Disconnect };
                for (b, _) in self.books.iter_mut().zip(&self.conn_of).filter(|(_, c)| **c == record.conn) {
                    b.on_disconnect_at(reason, at_ns, out, &self.stats);
                }
            }
        }
    }

    /// Updates still held for a snapshot when the input ends are not stored: they count as
    /// out of sequence, as at a disconnect, but no gap is written (the file ended, not the
    /// connection).
    fn finish(&mut self, _out: &mut Vec<DataPacket>) {
        let held: usize = self.books.iter().map(BookSync::held).sum();
        self.stats.out_of_sequence.add(held as u64);
    }

    fn never_synced(&self) -> Vec<String> {
        self.books.iter().zip(&self.ever_synced).filter(|(_, synced)| !**synced).map(|(b, _)| b.instrument().symbol.to_string()).collect()
    }

    fn stats(&self) -> &FeedStats {
        &self.stats
    }
}

/// The value of `key` in a URL's query string.
fn query_value<'a>(url: &'a str, key: &str) -> Option<&'a str> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_api::capture::parse_line;

    fn spec() -> FeedSpec {
        FeedSpec { name: "b".into(), symbols: Symbols::List(vec!["BTCUSDT".into()]), options: Default::default() }
    }

    #[test]
    fn capture_records_resync_and_close_like_the_live_session() {
        let mut r = DepthReplayer::build(&spec()).unwrap();
        let mut out = Vec::new();
        let lines = [
            r#"{"t":100,"conn":0,"kind":"ws","data":"{\"e\":\"depthUpdate\",\"E\":1,\"s\":\"BTCUSDT\",\"U\":5,\"u\":7,\"b\":[[\"1.0\",\"2\"]],\"a\":[]}"}"#,
            r#"{"t":200,"conn":0,"kind":"rest","url":"http://x/api/v3/depth?symbol=BTCUSDT&limit=5","data":"{\"lastUpdateId\":6,\"bids\":[[\"1.0\",\"1\"]],\"asks\":[]}"}"#,
            r#"{"t":300,"conn":0,"kind":"ws","data":"{\"e\":\"depthUpdate\",\"E\":2,\"s\":\"BTCUSDT\",\"U\":8,\"u\":8,\"b\":[],\"a\":[[\"2.0\",\"3\"]]}"}"#,
            r#"{"t":400,"conn":0,"kind":"close","reason":"shutdown"}"#,
        ];
        for l in lines {
            let rec = parse_line(l).unwrap();
            let t = rec.t.unwrap();
            r.feed(&rec, t, &mut out);
        }
        let kinds: Vec<(&str, i64)> = out
            .iter()
            .map(|p| match p {
                DataPacket::ST(s) => ("st", s.recv_time_ns),
                DataPacket::MI(m) => ("mi", m.recv_time_ns),
                DataPacket::Gap(g) => ("gap", g.recv_time_ns),
                _ => ("other", 0),
            })
            .collect();
        // The held update (5..7) straddles the snapshot (6) and is applied right after it.
        assert_eq!(kinds, vec![("st", 200), ("mi", 201), ("mi", 300), ("gap", 400)]);
    }

    #[test]
    fn query_values() {
        assert_eq!(query_value("http://h/api/v3/depth?symbol=ETHBTC&limit=10", "symbol"), Some("ETHBTC"));
        assert_eq!(query_value("http://h/x", "symbol"), None);
    }
}
