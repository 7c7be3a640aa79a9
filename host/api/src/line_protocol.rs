//! `LineProtocol`: DataPacket -> InfluxDB line protocol, the one storage format of every sink.
//!
//! Schema (also in the README):
//!
//! | measurement     | tags                                  | fields                                                 |
//! |-----------------|---------------------------------------|--------------------------------------------------------|
//! | `book_delta`    | exchange, market, symbol, side        | price, qty, first_id, last_id, [prev_id], [event_ts]   |
//! | `book_snapshot` | exchange, market, symbol, side        | price, qty, snapshot_id, [prev_id], [event_ts]         |
//! | `book_gap`      | exchange, market, symbol              | reason, [last_id], [next_id]                           |
//! | `trade`         | exchange, market, symbol, side        | price, qty, trade_id, [event_ts]                       |
//! | `invalid_frame` | exchange, feed                        | reason, raw                                            |
//!
//! One point per level. The timestamp is the receive time in ns, made unique per series, so
//! no point ever overwrites another (contract 4); prices and ids are fields, never tags.
//!
//! **The timestamp rule.** Every series (measurement + tag set) is stamped by exactly one
//! clock: each book's [`crate::clock::SeriesClock`] stamps its `book_delta`, `book_snapshot`
//! and `book_gap` points (Binance, Bybit, HTX MBP), each symbol's trade clock its `trade`
//! points, each feed's clock its `invalid_frame` points (tag `feed`). A timestamp then depends
//! only on that series' own receive times, so `data-storage replay` of a capture writes the
//! live run's points again, identical. Points of different series never merge (different
//! tags), and one clock never hands out a nanosecond twice.
//!
//! The exception is a feed that writes another feed's series: `binance_spot_snapshot` (and
//! HTX `depth.step0` / `mbp.refresh` snapshots) store `book_snapshot` for symbols that a depth
//! feed may also store snapshots for, into the same sink. Those keep the process-wide
//! [`crate::clock::reserve`], whose runs never overlap each other but may overlap a book's:
//! two snapshot runs of one symbol could only share a nanosecond if both were received within
//! one run's length (about 1 us for 1000 levels) of each other. Such feeds are not replayable
//! yet; write them to a database of their own when that risk matters. Prices and sizes are written as float fields in the
//! exchange's own decimal text. A snapshot with no level at all is stored as one point with
//! `side=empty`, `levels=0i` and no price, so an empty book is still a stored fact.
//!
//! Hand-written rather than `write!`-formatted: formatting dominated the cost of the naive
//! version (issue 8), and this path runs for every level.

use crate::packet::{DataPacket, Instrument, Level, Side};

/// Appends packets to a buffer as line protocol.
#[derive(Debug, Default)]
pub struct LineProtocol;

impl LineProtocol {
    /// Appends the lines of one packet to `out`; returns the number of points written.
    pub fn encode(packet: &DataPacket, out: &mut Vec<u8>) -> usize {
        match packet {
            DataPacket::MI(m) => {
                // What every level of the packet shares is formatted once: the series (per
                // side) and the id/time fields; each level adds price, qty and its timestamp.
                let mut shared = Vec::with_capacity(96);
                int_field(&mut shared, "first_id", m.first_update_id as i64);
                int_field(&mut shared, "last_id", m.last_update_id as i64);
                if let Some(p) = m.prev_update_id {
                    int_field(&mut shared, "prev_id", p as i64);
                }
                if let Some(e) = m.event_time_ms {
                    int_field(&mut shared, "event_ts", e);
                }
                let mut ts = m.recv_time_ns;
                for (side, levels) in [(Side::Bid, &m.bids), (Side::Ask, &m.asks)] {
                    if levels.is_empty() {
                        continue;
                    }
                    let mut prefix = Vec::with_capacity(96);
                    series(&mut prefix, "book_delta", &m.instrument, Some(side.as_str()));
                    for level in levels.iter() {
                        out.extend_from_slice(&prefix);
                        level_fields(out, level);
                        out.extend_from_slice(&shared);
                        timestamp(out, ts);
                        ts += 1;
                    }
                }
                m.bids.len() + m.asks.len()
            }
            DataPacket::ST(s) => {
                let mut ids = Vec::with_capacity(64);
                int_field(&mut ids, "snapshot_id", s.cur_seq as i64);
                if let Some(p) = s.prev_seq {
                    int_field(&mut ids, "prev_id", p as i64);
                }
                if let Some(e) = s.timestamp {
                    int_field(&mut ids, "event_ts", e);
                }
                let mut ts = s.recv_time_ns;
                if s.bids.is_empty() && s.asks.is_empty() {
                    series(out, "book_snapshot", &s.instrument, Some("empty"));
                    out.extend_from_slice(b" levels=0i");
                    out.extend_from_slice(&ids);
                    timestamp(out, ts);
                    return 1;
                }
                for (side, levels) in [(Side::Bid, &s.bids), (Side::Ask, &s.asks)] {
                    let mut prefix = Vec::with_capacity(96);
                    series(&mut prefix, "book_snapshot", &s.instrument, Some(side.as_str()));
                    for level in levels.iter() {
                        out.extend_from_slice(&prefix);
                        level_fields(out, level);
                        out.extend_from_slice(&ids);
                        timestamp(out, ts);
                        ts += 1;
                    }
                }
                s.bids.len() + s.asks.len()
            }
            DataPacket::Gap(g) => {
                series(out, "book_gap", &g.instrument, None);
                out.extend_from_slice(b" reason=\"");
                out.extend_from_slice(g.reason.as_str().as_bytes());
                out.push(b'"');
                if let Some(id) = g.last_id {
                    int_field(out, "last_id", id as i64);
                }
                if let Some(id) = g.next_id {
                    int_field(out, "next_id", id as i64);
                }
                timestamp(out, g.recv_time_ns);
                1
            }
            DataPacket::Trade(t) => {
                series(out, "trade", &t.instrument, Some(if t.taker_side == Side::Bid { "buy" } else { "sell" }));
                out.extend_from_slice(b" price=");
                out.extend_from_slice(t.price.as_str().as_bytes());
                out.extend_from_slice(b",qty=");
                out.extend_from_slice(t.size.as_str().as_bytes());
                out.extend_from_slice(b",trade_id=");
                string_value(out, &t.trade_id);
                if let Some(e) = t.event_time_ms {
                    int_field(out, "event_ts", e);
                }
                timestamp(out, t.recv_time_ns);
                1
            }
            DataPacket::Invalid(f) => {
                out.extend_from_slice(b"invalid_frame,exchange=");
                tag_value(out, f.exchange);
                out.extend_from_slice(b",feed=");
                tag_value(out, &f.feed);
                out.extend_from_slice(b" reason=");
                string_value(out, &f.reason);
                out.extend_from_slice(b",raw=");
                string_value(out, &f.raw);
                timestamp(out, f.recv_time_ns);
                1
            }
            DataPacket::Ping(_) => 0,
            DataPacket::Lines(l) => {
                out.extend_from_slice(&l.lines);
                if !l.lines.is_empty() && !l.lines.ends_with(b"\n") {
                    out.push(b'\n');
                }
                l.points
            }
        }
    }
}

fn series(out: &mut Vec<u8>, measurement: &str, inst: &Instrument, side: Option<&str>) {
    out.extend_from_slice(measurement.as_bytes());
    out.extend_from_slice(b",exchange=");
    tag_value(out, inst.exchange);
    out.extend_from_slice(b",market=");
    tag_value(out, inst.market);
    if let Some(side) = side {
        out.extend_from_slice(b",side=");
        tag_value(out, side);
    }
    out.extend_from_slice(b",symbol=");
    tag_value(out, &inst.symbol);
}

/// Writes ` price=<text>,qty=<text>`; the text was validated by `Decimal::parse`.
fn level_fields(out: &mut Vec<u8>, level: &Level) {
    out.extend_from_slice(b" price=");
    out.extend_from_slice(level.price.as_str().as_bytes());
    out.extend_from_slice(b",qty=");
    out.extend_from_slice(level.size.as_str().as_bytes());
}

fn int_field(out: &mut Vec<u8>, key: &str, v: i64) {
    out.push(b',');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    out.push(b'i');
}

fn timestamp(out: &mut Vec<u8>, ns: i64) {
    out.push(b' ');
    out.extend_from_slice(itoa::Buffer::new().format(ns).as_bytes());
    out.push(b'\n');
}

/// Tag keys and values (and measurement names): escape comma, equals sign and space with a
/// backslash. A newline cannot be escaped in line protocol, so it is written as `\n` text.
pub fn tag_value(out: &mut Vec<u8>, v: &str) {
    if !v.bytes().any(|b| matches!(b, b',' | b'=' | b' ' | b'\n' | b'\r')) {
        out.extend_from_slice(v.as_bytes());
        return;
    }
    for &b in v.as_bytes() {
        match b {
            b',' | b'=' | b' ' => {
                out.push(b'\\');
                out.push(b);
            }
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => {}
            _ => out.push(b),
        }
    }
}

/// String field values: quoted, with `"` and `\` escaped; newlines written as `\n` text.
pub fn string_value(out: &mut Vec<u8>, v: &str) {
    out.push(b'"');
    for &b in v.as_bytes() {
        match b {
            b'"' | b'\\' => {
                out.push(b'\\');
                out.push(b);
            }
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => {}
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::Decimal;
    use crate::packet::*;
    use std::sync::Arc;

    fn inst(symbol: &str) -> Instrument {
        Instrument { exchange: "binance", market: "spot", symbol: Arc::from(symbol) }
    }

    fn lvl(p: &str, q: &str) -> Level {
        Level { price: Decimal::parse(p).unwrap(), size: Decimal::parse(q).unwrap() }
    }

    fn encode(p: &DataPacket) -> String {
        let mut out = Vec::new();
        LineProtocol::encode(p, &mut out);
        String::from_utf8(out).unwrap()
    }

    struct Case {
        input: &'static str,
        tag: &'static str,
        string: &'static str,
    }

    #[test]
    fn escaping_table() {
        let cases = [
            Case { input: "plain", tag: "plain", string: "\"plain\"" },
            Case { input: "a b", tag: "a\\ b", string: "\"a b\"" },
            Case { input: "a,b", tag: "a\\,b", string: "\"a,b\"" },
            Case { input: "a=b", tag: "a\\=b", string: "\"a=b\"" },
            Case { input: "say \"hi\"", tag: "say\\ \"hi\"", string: "\"say \\\"hi\\\"\"" },
            Case { input: "back\\slash", tag: "back\\slash", string: "\"back\\\\slash\"" },
            Case { input: "line\nbreak", tag: "line\\nbreak", string: "\"line\\nbreak\"" },
        ];
        for (i, c) in cases.iter().enumerate() {
            let mut t = Vec::new();
            tag_value(&mut t, c.input);
            assert_eq!(String::from_utf8(t).unwrap(), c.tag, "case {i} tag");
            let mut s = Vec::new();
            string_value(&mut s, c.input);
            assert_eq!(String::from_utf8(s).unwrap(), c.string, "case {i} string");
        }
    }

    #[test]
    fn delta_levels_get_consecutive_timestamps() {
        let p = DataPacket::MI(MarketIncremental {
            instrument: inst("BTCUSDT"),
            first_update_id: 10,
            last_update_id: 12,
            prev_update_id: None,
            event_time_ms: Some(1617566591307),
            recv_time_ns: 1_000,
            bids: vec![lvl("58001.03000000", "1.60107400")],
            asks: vec![lvl("58042.29", "0.00000000"), lvl("9.121E-7", "5")],
        });
        assert_eq!(
            encode(&p),
            "book_delta,exchange=binance,market=spot,side=bid,symbol=BTCUSDT price=58001.03000000,qty=1.60107400,first_id=10i,last_id=12i,event_ts=1617566591307i 1000\n\
             book_delta,exchange=binance,market=spot,side=ask,symbol=BTCUSDT price=58042.29,qty=0.00000000,first_id=10i,last_id=12i,event_ts=1617566591307i 1001\n\
             book_delta,exchange=binance,market=spot,side=ask,symbol=BTCUSDT price=9.121E-7,qty=5,first_id=10i,last_id=12i,event_ts=1617566591307i 1002\n"
        );
        assert_eq!(p.point_count(), 3);
    }

    #[test]
    fn empty_snapshot_is_still_stored() {
        let p = DataPacket::ST(Snapshot {
            instrument: inst("X Y"),
            cur_seq: 7,
            prev_seq: None,
            timestamp: None,
            recv_time_ns: 5,
            bids: vec![],
            asks: vec![],
        });
        assert_eq!(encode(&p), "book_snapshot,exchange=binance,market=spot,side=empty,symbol=X\\ Y levels=0i,snapshot_id=7i 5\n");
        assert_eq!(p.point_count(), 1);
    }

    #[test]
    fn gap_and_invalid_frames() {
        let g = DataPacket::Gap(GapMarker {
            instrument: inst("ETHUSDT"),
            reason: GapReason::SequenceBreak,
            last_id: Some(5),
            next_id: Some(9),
            recv_time_ns: 42,
        });
        assert_eq!(encode(&g), "book_gap,exchange=binance,market=spot,symbol=ETHUSDT reason=\"sequence_break\",last_id=5i,next_id=9i 42\n");
        let f = DataPacket::Invalid(InvalidFrame::new("binance", Arc::from("my feed"), "bad \"json\"".into(), "{\"a\":\n", 43));
        assert_eq!(
            encode(&f),
            "invalid_frame,exchange=binance,feed=my\\ feed reason=\"bad \\\"json\\\"\",raw=\"{\\\"a\\\":\\n\" 43\n"
        );
    }
}
