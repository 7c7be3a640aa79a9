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
                // What every level of the packet shares is formatted once (the id and time
                // fields, the series per side); each level adds price, qty and its timestamp.
                let tail = Tail::delta(m.first_update_id, m.last_update_id, m.prev_update_id, m.event_time_ms, m.recv_time_ns);
                levels(out, "book_delta", &m.instrument, &m.bids, &m.asks, tail)
            }
            DataPacket::ST(s) => {
                let tail = Tail::snapshot(s.cur_seq, s.prev_seq, s.timestamp, s.recv_time_ns);
                if s.bids.is_empty() && s.asks.is_empty() {
                    series(out, "book_snapshot", &s.instrument, Some("empty"));
                    out.extend_from_slice(b" levels=0i");
                    tail.append_to(out);
                    return 1;
                }
                levels(out, "book_snapshot", &s.instrument, &s.bids, &s.asks, tail)
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
                out.extend_from_slice(t.price.as_bytes());
                out.extend_from_slice(b",qty=");
                out.extend_from_slice(t.size.as_bytes());
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

fn series(out: &mut impl Put, measurement: &str, inst: &Instrument, side: Option<&str>) {
    out.put(measurement.as_bytes());
    out.put(b",exchange=");
    escaped_tag(out, inst.exchange);
    out.put(b",market=");
    escaped_tag(out, inst.market);
    if let Some(side) = side {
        out.put(b",side=");
        escaped_tag(out, side);
    }
    out.put(b",symbol=");
    escaped_tag(out, &inst.symbol);
}

/// Where line parts go: the output itself, or a [`Block`] that is copied once per level.
trait Put {
    fn put(&mut self, bytes: &[u8]);
}

impl Put for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl<const N: usize> Put for Block<N> {
    fn put(&mut self, bytes: &[u8]) {
        self.push(bytes);
    }
}

/// One point per level, bids then asks, timestamps `ts`, `ts + 1`, ...:
/// `<measurement>,<tags>,side=<side> price=<p>,qty=<q><shared> <ts>\n`.
///
/// The hot loop of the whole service (every stored level passes here), so it formats nothing
/// per level. A line is five copies: the head (series and ` price=`, once per side), the
/// price, `,qty=`, the size, and the tail (the shared fields and the timestamp, whose digits
/// are counted up in place). Each is copied as a fixed-size [`Block`], which the compiler
/// turns into a few vector moves instead of a `memcpy` call per part.
fn levels(out: &mut Vec<u8>, measurement: &'static str, inst: &Instrument, bids: &[Level], asks: &[Level], mut tail: Tail) -> usize {
    for (side, levels) in [(Side::Bid, bids), (Side::Ask, asks)] {
        if levels.is_empty() {
            continue;
        }
        with_head(measurement, inst, side, |head| {
            // About the exact size: one reservation per side instead of growth per line.
            out.reserve(levels.len() * (head.len() + tail.len + 2 * INLINE_TEXT + 8));
            for level in levels {
                head.append_to(out);
                level.price.append_to(out);
                out.extend_from_slice(b",qty=");
                level.size.append_to(out);
                tail.append_to(out);
                tail.advance();
            }
        });
    }
    bids.len() + asks.len()
}

/// The head of a book's lines, `<measurement>,<tags>,side=<side> price=`, from a small
/// per-thread cache: it is the same for every packet of a book side, and formatting it (tags
/// escaped) cost as much as a few lines. Two-way set-associative, indexed by the symbol's
/// allocation; an entry holds a clone of the symbol's `Arc`, so an address cannot be reused
/// for another symbol while it is cached, and every field is compared on a hit anyway.
fn with_head<R>(measurement: &'static str, inst: &Instrument, side: Side, f: impl FnOnce(&Block<128>) -> R) -> R {
    use std::cell::RefCell;
    thread_local! {
        static HEADS: RefCell<HeadCache> = RefCell::new(HeadCache::new(HeadCache::SETS));
    }
    HEADS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut cache) => f(cache.get(measurement, inst, side)),
        Err(_) => f(&head_block(measurement, inst, side)),
    })
}

/// `<measurement>,<tags>,side=<side> price=`, formatted.
fn head_block(measurement: &str, inst: &Instrument, side: Side) -> Block<128> {
    let mut head = Block::<128>::default();
    series(&mut head, measurement, inst, Some(side.as_str()));
    head.push(b" price=");
    head
}

/// Sets of two ways each. One way per set (direct-mapped) thrashed whenever two hot book sides
/// hashed to one slot: in the Binance bench, 2 of its 6 book sides did, and 30% of packets
/// formatted their head again (4,408 misses in 14,835 lookups). With two ways, three sides
/// must share a set for that to happen.
struct HeadCache {
    sets: Vec<HeadSet>,
}

/// Two ways and which of them was used last: a miss replaces the other one (LRU).
#[derive(Default)]
struct HeadSet {
    ways: [Option<Head>; 2],
    last_used: usize,
}

struct Head {
    measurement: &'static str,
    exchange: &'static str,
    market: &'static str,
    symbol: std::sync::Arc<str>,
    side: Side,
    head: Block<128>,
}

impl Head {
    #[inline]
    fn is(&self, measurement: &str, inst: &Instrument, side: Side) -> bool {
        std::sync::Arc::ptr_eq(&self.symbol, &inst.symbol)
            && self.side == side
            && same_str(self.measurement, measurement)
            && same_str(self.exchange, inst.exchange)
            && same_str(self.market, inst.market)
    }
}

impl HeadCache {
    /// 512 heads of about 220 bytes: 110 KiB per thread that encodes.
    const SETS: usize = 256;

    /// `sets` is a power of two.
    fn new(sets: usize) -> Self {
        debug_assert!(sets.is_power_of_two());
        HeadCache { sets: (0..sets).map(|_| HeadSet::default()).collect() }
    }

    /// The way that holds this head, or else the least recently used one, formatted afresh.
    fn get(&mut self, measurement: &'static str, inst: &Instrument, side: Side) -> &Block<128> {
        let addr = std::sync::Arc::as_ptr(&inst.symbol).cast::<u8>() as usize as u64;
        // Fibonacci hashing of the address (its high bits after a multiply), not the address
        // bits themselves: symbols allocated a multiple of 4 KiB apart shared every set.
        let key = addr ^ side as u64 ^ ((measurement.len() as u64) << 1);
        let mask = self.sets.len() - 1;
        let set = &mut self.sets[(key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize & mask];
        let hit = |way: &Option<Head>| way.as_ref().is_some_and(|h| h.is(measurement, inst, side));
        let way = if hit(&set.ways[0]) {
            0
        } else if hit(&set.ways[1]) {
            1
        } else {
            let lru = 1 - set.last_used;
            set.ways[lru] = None;
            lru
        };
        set.last_used = way;
        let entry = set.ways[way].get_or_insert_with(|| Head {
            measurement,
            exchange: inst.exchange,
            market: inst.market,
            symbol: inst.symbol.clone(),
            side,
            head: head_block(measurement, inst, side),
        });
        &entry.head
    }
}

/// Equal names, told by address first: the names are constants, almost always the very same
/// one, and a `memcmp` call per field was a tenth of the cache lookup.
#[inline(always)]
fn same_str(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// The longest price or size text copied as a fixed block ([`crate::decimal::INLINE`]).
const INLINE_TEXT: usize = crate::decimal::INLINE;

/// Up to `N` bytes of a line part kept in a fixed-size array, so that appending them is one
/// fixed-size copy (the whole array, then the line cut back to the part's length). A part
/// that does not fit (a very long symbol) spills to the heap and is copied as it is.
struct Block<const N: usize> {
    buf: [u8; N],
    len: usize,
    spill: Vec<u8>,
}

impl<const N: usize> Default for Block<N> {
    fn default() -> Self {
        Block { buf: [0; N], len: 0, spill: Vec::new() }
    }
}

impl<const N: usize> Block<N> {
    fn push(&mut self, bytes: &[u8]) {
        if self.spill.is_empty() && self.len + bytes.len() <= N {
            self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        } else {
            if self.spill.is_empty() {
                self.spill.extend_from_slice(&self.buf[..self.len]);
            }
            self.spill.extend_from_slice(bytes);
        }
        self.len += bytes.len();
    }

    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn append_to(&self, out: &mut Vec<u8>) {
        if self.spill.is_empty() {
            let end = out.len() + self.len;
            out.extend_from_slice(&self.buf);
            out.truncate(end);
        } else {
            out.extend_from_slice(&self.spill);
        }
    }
}

/// The end of every line of a packet: the integer fields all its levels share, then ` <ns>\n`,
/// where `ns` goes up by one per line. Fields and digits are written once, in place, and then
/// the last digits are counted up. The fields are written straight into this buffer: built in
/// a buffer of their own and copied over, they cost a `memcpy` call per packet.
struct Tail {
    buf: [u8; TAIL_ROOM],
    len: usize,
    /// Length of the shared fields; the timestamp starts after them.
    shared: usize,
    ns: i64,
}

/// Room for the longest tail: four fields of at most 10 + 20 + 1 bytes (`,first_id=`, an
/// `i64`'s 20 characters, `i`), or a snapshot's three, then [`TIME_TEXT`]. Writing never runs
/// out of it.
const TAIL_ROOM: usize = 160;

/// ` <ns>\n`: a space, at most 20 characters of an `i64`, a newline.
const TIME_TEXT: usize = 22;

/// The longest fields (`,first_id=`, the longest of the keys, four times) and the time fit.
const _: () = assert!(4 * (10 + 20 + 1) + TIME_TEXT <= TAIL_ROOM);

impl Tail {
    fn delta(first: u64, last: u64, prev: Option<u64>, event_ms: Option<i64>, ns: i64) -> Self {
        let mut t = Tail::at(ns);
        t.int(b",first_id=", first as i64);
        t.int(b",last_id=", last as i64);
        t.finish(prev, event_ms)
    }

    fn snapshot(id: u64, prev: Option<u64>, event_ms: Option<i64>, ns: i64) -> Self {
        let mut t = Tail::at(ns);
        t.int(b",snapshot_id=", id as i64);
        t.finish(prev, event_ms)
    }

    fn at(ns: i64) -> Self {
        Tail { buf: [0; TAIL_ROOM], len: 0, shared: 0, ns }
    }

    /// `,<key>=<v>i`, `key` given with its comma and equals sign. Inlined, so the key is a
    /// copy of a known length and the digits go straight into place: the copies of variable
    /// length these were made of were a `memcpy` call each, fifteen per packet.
    #[inline(always)]
    fn int(&mut self, key: &'static [u8], v: i64) {
        let at = self.len + key.len();
        self.buf[self.len..at].copy_from_slice(key);
        let end = put_int(&mut self.buf, at, v);
        self.buf[end] = b'i';
        self.len = end + 1;
    }

    /// The optional fields both kinds end with; then the first line's timestamp follows the
    /// shared fields.
    fn finish(mut self, prev: Option<u64>, event_ms: Option<i64>) -> Self {
        if let Some(p) = prev {
            self.int(b",prev_id=", p as i64);
        }
        if let Some(e) = event_ms {
            self.int(b",event_ts=", e);
        }
        self.shared = self.len;
        self.format();
        self
    }

    fn format(&mut self) {
        let at = self.shared;
        self.buf[at] = b' ';
        let end = put_int(&mut self.buf, at + 1, self.ns);
        self.buf[end] = b'\n';
        self.len = end + 1;
    }

    /// `ns + 1`: the last digit goes up, nines roll over; a carry past the first digit (or a
    /// negative time, never seen) formats afresh.
    #[inline]
    fn advance(&mut self) {
        self.ns += 1;
        if self.ns <= 0 {
            self.format();
            return;
        }
        let first_digit = self.shared + 1;
        let bytes = &mut self.buf[..self.len];
        // The last digit sits before the newline.
        let mut i = bytes.len() - 2;
        loop {
            match bytes[i] {
                b'9' if i > first_digit => {
                    bytes[i] = b'0';
                    i -= 1;
                }
                b'0'..=b'8' => {
                    bytes[i] += 1;
                    return;
                }
                _ => break,
            }
        }
        self.format();
    }

    /// Appends the tail as one fixed-size block (a few vector moves, no `memcpy` call), then
    /// cuts the line back to its length.
    #[inline(always)]
    fn append_to(&self, out: &mut Vec<u8>) {
        let end = out.len() + self.len;
        if self.len <= 128 {
            out.extend_from_slice(&self.buf[..128]);
        } else {
            out.extend_from_slice(&self.buf);
        }
        out.truncate(end);
    }

    #[cfg(test)]
    fn shared_fields(&self) -> &[u8] {
        &self.buf[..self.shared]
    }

    #[cfg(test)]
    fn line_end(&self) -> &[u8] {
        &self.buf[self.shared..self.len]
    }

    #[cfg(test)]
    fn raw(shared: &[u8], ns: i64) -> Self {
        let mut t = Tail::at(ns);
        t.buf[..shared.len()].copy_from_slice(shared);
        t.len = shared.len();
        t.finish(None, None)
    }
}

/// Two-digit groups, for [`put_int`].
const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// The decimal text of `v` written into `buf` at `at` (which must leave room for 20 bytes);
/// returns the position after it. Two digits at a time, right into place.
#[inline]
fn put_int(buf: &mut [u8], mut at: usize, v: i64) -> usize {
    if v < 0 {
        buf[at] = b'-';
        at += 1;
    }
    let mut n = v.unsigned_abs();
    let end = at + n.checked_ilog10().map_or(1, |d| d as usize + 1);
    let mut i = end;
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        buf[i - 2..i].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        buf[i - 1] = b'0' + n as u8;
    }
    end
}

fn int_field(out: &mut Vec<u8>, key: &str, v: i64) {
    out.push(b',');
    out.extend_from_slice(key.as_bytes());
    let mut buf = [0u8; 24];
    buf[0] = b'=';
    let end = put_int(&mut buf, 1, v);
    buf[end] = b'i';
    out.extend_from_slice(&buf[..=end]);
}

fn timestamp(out: &mut Vec<u8>, ns: i64) {
    let mut buf = [0u8; 24];
    buf[0] = b' ';
    let end = put_int(&mut buf, 1, ns);
    buf[end] = b'\n';
    out.extend_from_slice(&buf[..=end]);
}

/// Tag keys and values (and measurement names): escape comma, equals sign and space with a
/// backslash. A newline cannot be escaped in line protocol, so it is written as `\n` text.
pub fn tag_value(out: &mut Vec<u8>, v: &str) {
    escaped_tag(out, v);
}

fn escaped_tag(out: &mut impl Put, v: &str) {
    if !v.bytes().any(|b| matches!(b, b',' | b'=' | b' ' | b'\n' | b'\r')) {
        out.put(v.as_bytes());
        return;
    }
    for &b in v.as_bytes() {
        match b {
            b',' | b'=' | b' ' => out.put(&[b'\\', b]),
            b'\n' => out.put(b"\\n"),
            b'\r' => {}
            _ => out.put(&[b]),
        }
    }
}

/// String field values: quoted, with `"` and `\` escaped; newlines written as `\n` text.
pub fn string_value(out: &mut Vec<u8>, v: &str) {
    out.push(b'"');
    // Almost every value (a trade id, a gap reason) has nothing to escape: one copy, not a
    // push per byte.
    if !v.bytes().any(|b| matches!(b, b'"' | b'\\' | b'\n' | b'\r')) {
        out.extend_from_slice(v.as_bytes());
        out.push(b'"');
        return;
    }
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
    fn integers_are_written_as_itoa_writes_them() {
        let mut values = vec![0i64, 1, -1, 9, 10, 99, 100, i64::MAX, i64::MIN, i64::MIN + 1];
        for p in 0..19 {
            let t = 10i64.pow(p);
            values.extend([t - 1, t, t + 1, -t, -(t - 1), t * 3 + 7]);
        }
        for v in values {
            let mut buf = [b'#'; 64];
            let end = put_int(&mut buf, 3, v);
            assert_eq!(&buf[3..end], itoa::Buffer::new().format(v).as_bytes(), "{v}");
            assert_eq!(buf[end], b'#', "{v}: nothing written past the end");
        }
        // The longest fields a packet can have still fit the buffer.
        let widest = u64::MAX / 2 + 1;
        let m = i64::MIN;
        let t = Tail::delta(widest, widest, Some(widest), Some(m), m);
        assert_eq!(t.shared_fields(), format!(",first_id={m}i,last_id={m}i,prev_id={m}i,event_ts={m}i").as_bytes());
        assert_eq!(t.line_end(), format!(" {m}\n").as_bytes());
        let t = Tail::snapshot(widest, Some(widest), Some(m), m);
        assert_eq!(t.line_end(), format!(" {m}\n").as_bytes());
        assert_eq!(Tail::delta(u64::MAX, 7, None, None, 0).shared_fields(), b",first_id=-1i,last_id=7i");
    }

    #[test]
    fn timestamps_count_up_across_digit_rollovers() {
        for start in [0i64, 7, 98, 999, 1_999_999_999_999_999_998, -3] {
            for shared in [&b",a=1i"[..], &[b'x'; 126][..]] {
                let mut tail = Tail::raw(shared, start);
                for k in 0..1_500 {
                    assert_eq!(tail.line_end(), format!(" {}\n", start + k).as_bytes(), "from {start}, +{k}");
                    tail.advance();
                }
            }
        }
    }

    #[test]
    fn snapshot_levels_share_ids_and_count_up() {
        let p = DataPacket::ST(Snapshot {
            instrument: inst("BTCUSDT"),
            cur_seq: 77,
            prev_seq: Some(76),
            timestamp: Some(5),
            recv_time_ns: 9,
            bids: vec![lvl("1", "2"), lvl("0.5", "3")],
            asks: vec![lvl("4", "1E-8")],
        });
        assert_eq!(
            encode(&p),
            "book_snapshot,exchange=binance,market=spot,side=bid,symbol=BTCUSDT price=1,qty=2,snapshot_id=77i,prev_id=76i,event_ts=5i 9\n\
             book_snapshot,exchange=binance,market=spot,side=bid,symbol=BTCUSDT price=0.5,qty=3,snapshot_id=77i,prev_id=76i,event_ts=5i 10\n\
             book_snapshot,exchange=binance,market=spot,side=ask,symbol=BTCUSDT price=4,qty=1E-8,snapshot_id=77i,prev_id=76i,event_ts=5i 11\n"
        );
        assert_eq!(p.point_count(), 3);
    }

    /// More books than the head cache has slots, in turns, with sides and both measurements:
    /// every line still names its own series.
    #[test]
    fn cached_heads_never_mix_books() {
        let books: Vec<Instrument> = (0..600).map(|i| Instrument { exchange: if i % 2 == 0 { "binance" } else { "bybit" }, market: "spot", symbol: Arc::from(format!("S{i}")) }).collect();
        for round in 0..3 {
            for (i, inst) in books.iter().enumerate() {
                let mi = DataPacket::MI(MarketIncremental {
                    instrument: inst.clone(),
                    first_update_id: 1,
                    last_update_id: 1,
                    prev_update_id: None,
                    event_time_ms: None,
                    recv_time_ns: 7,
                    bids: vec![lvl("1", "2")],
                    asks: vec![lvl("3", "4")],
                });
                let want = format!(
                    "book_delta,exchange={e},market=spot,side=bid,symbol=S{i} price=1,qty=2,first_id=1i,last_id=1i 7\n\
                     book_delta,exchange={e},market=spot,side=ask,symbol=S{i} price=3,qty=4,first_id=1i,last_id=1i 8\n",
                    e = inst.exchange
                );
                assert_eq!(encode(&mi), want, "round {round}, book {i}");
                if i % 7 == 0 {
                    let st = DataPacket::ST(Snapshot { instrument: inst.clone(), cur_seq: 2, prev_seq: None, timestamp: None, recv_time_ns: 9, bids: vec![lvl("5", "6")], asks: vec![] });
                    assert_eq!(encode(&st), format!("book_snapshot,exchange={},market=spot,side=bid,symbol=S{i} price=5,qty=6,snapshot_id=2i 9\n", inst.exchange));
                }
            }
        }
    }

    /// Two book sides that share a set both stay cached (the direct-mapped cache rebuilt
    /// both on every packet); a third evicts the least recently used, and a cached entry is
    /// the formatted head. One set, so every key collides; a cached entry holds a clone of the symbol's
    /// `Arc`, which is what the strong counts show.
    #[test]
    fn two_heads_sharing_a_set_both_stay_cached() {
        let (a, b, c) = (inst("A"), inst("B"), inst("C"));
        let mut cache = HeadCache::new(1);
        let head = |cache: &mut HeadCache, i: &Instrument, side| {
            let mut out = Vec::new();
            cache.get("book_delta", i, side).append_to(&mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(head(&mut cache, &a, Side::Bid), "book_delta,exchange=binance,market=spot,side=bid,symbol=A price=");
        assert_eq!(head(&mut cache, &b, Side::Ask), "book_delta,exchange=binance,market=spot,side=ask,symbol=B price=");
        for _ in 0..3 {
            assert_eq!(head(&mut cache, &a, Side::Bid), "book_delta,exchange=binance,market=spot,side=bid,symbol=A price=");
            assert_eq!(head(&mut cache, &b, Side::Ask), "book_delta,exchange=binance,market=spot,side=ask,symbol=B price=");
        }
        assert_eq!((Arc::strong_count(&a.symbol), Arc::strong_count(&b.symbol)), (2, 2), "both cached, each once");
        // Same symbol, other side: a key of its own.
        assert_eq!(head(&mut cache, &a, Side::Ask), "book_delta,exchange=binance,market=spot,side=ask,symbol=A price=");
        assert_eq!(Arc::strong_count(&b.symbol), 2, "B was used last: A's bid side was evicted");
        assert_eq!(Arc::strong_count(&a.symbol), 2, "A's ask side replaced its bid side");
        assert_eq!(head(&mut cache, &b, Side::Ask), "book_delta,exchange=binance,market=spot,side=ask,symbol=B price=");
        assert_eq!(head(&mut cache, &c, Side::Bid), "book_delta,exchange=binance,market=spot,side=bid,symbol=C price=");
        assert_eq!((Arc::strong_count(&a.symbol), Arc::strong_count(&b.symbol), Arc::strong_count(&c.symbol)), (1, 2, 2), "A's ask side, the least recently used, made way for C");
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
