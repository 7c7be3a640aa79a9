//! Subjects: a batch of line protocol split by series, one subject per book.
//!
//! Scheme: `<prefix>.<exchange>.<market>.<measurement>.<symbol>`, e.g.
//! `ds.binance.spot.book_delta.BTCUSDT`. A missing tag (`book_gap` has no side, which is not
//! in the subject anyway; `invalid_frame` has no market and no symbol) is written `_`.
//!
//! Why per series and not per batch: a consumer can then take one exchange, one kind or one
//! book (`ds.binance.*.book_*.BTCUSDT`) without reading the rest, the stream can keep per-
//! subject limits, and the order that matters (the updates of one book) is the order within
//! one subject, which JetStream keeps. `side` is left out so that both sides of a book stay in
//! one subject, in the order they were written.
//!
//! The tags are parsed from each line rather than passed along with it: the `Sink` API hands
//! over line protocol (what is spooled on disk is line protocol too), and the schema
//! (ds_api::line_protocol) fixes where the tags are: `measurement,exchange=..,market=..,
//! side=..,symbol=.. fields ts`.

use std::collections::HashMap;

/// One message to publish: its subject, its lines (each ending in `\n`) and their count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub subject: String,
    pub lines: Vec<u8>,
    pub points: usize,
}

/// Splits `lines` into messages per subject, keeping the order of lines within a subject and
/// cutting a subject's lines into several messages so none exceeds `max_bytes` (NATS refuses
/// payloads above the server's `max_payload`, 1 MiB by default). A single line longer than
/// `max_bytes` still goes alone in one message. Blank lines are skipped.
pub fn split(prefix: &str, lines: &[u8], max_bytes: usize) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    // subject -> index in `out` of its message being filled
    let mut open: HashMap<String, usize> = HashMap::new();
    for line in lines.split_inclusive(|&b| b == b'\n') {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let subject = subject_of(prefix, line);
        let idx = match open.get(&subject) {
            Some(&i) if out[i].lines.len() + line.len() < max_bytes || out[i].points == 0 => i,
            _ => {
                out.push(Message { subject: subject.clone(), lines: Vec::new(), points: 0 });
                open.insert(subject, out.len() - 1);
                out.len() - 1
            }
        };
        let m = &mut out[idx];
        m.lines.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            m.lines.push(b'\n');
        }
        m.points += 1;
    }
    out
}

/// The subject of one line (see the module doc).
pub fn subject_of(prefix: &str, line: &[u8]) -> String {
    let key = series_key(line);
    let (measurement, tags) = parse_series(key);
    let tag = |name: &str| tags.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("_");
    let mut s = String::with_capacity(prefix.len() + 48);
    s.push_str(prefix);
    for part in [tag("exchange"), tag("market"), measurement.as_str(), tag("symbol")] {
        s.push('.');
        push_token(&mut s, part);
    }
    s
}

/// The part of a line before the first unescaped space: measurement and tags.
fn series_key(line: &[u8]) -> &[u8] {
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b'\\' => i += 2,
            b' ' | b'\n' => return &line[..i],
            _ => i += 1,
        }
    }
    line
}

/// Measurement and (key, value) tags of a series key, escapes removed.
fn parse_series(key: &[u8]) -> (String, Vec<(String, String)>) {
    let mut parts = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < key.len() {
        match key[i] {
            b'\\' if i + 1 < key.len() => {
                cur.push(key[i + 1]);
                i += 2;
            }
            b',' => {
                parts.push(std::mem::take(&mut cur));
                i += 1;
            }
            b => {
                cur.push(b);
                i += 1;
            }
        }
    }
    parts.push(cur);
    let mut it = parts.into_iter().map(|p| String::from_utf8_lossy(&p).into_owned());
    let measurement = it.next().unwrap_or_default();
    // A tag's `=` is its first one: keys never hold `=` in this schema, values may (escaped,
    // and the escape is already gone here, so split at the first).
    let tags = it.filter_map(|t| t.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))).collect();
    (measurement, tags)
}

/// A subject token must not be empty nor hold `.`, `*`, `>` or whitespace: such characters
/// become `_` (exchange symbols never hold them; a feed name in `invalid_frame` might).
fn push_token(s: &mut String, v: &str) {
    if v.is_empty() {
        s.push('_');
        return;
    }
    for c in v.chars() {
        s.push(if matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control() { '_' } else { c });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: &str = "\
book_delta,exchange=binance,market=spot,side=bid,symbol=BTCUSDT price=1,qty=2,first_id=1i,last_id=2i 10
book_delta,exchange=binance,market=spot,side=ask,symbol=ETHUSDT price=1,qty=2,first_id=1i,last_id=2i 11
book_delta,exchange=binance,market=spot,side=ask,symbol=BTCUSDT price=3,qty=0,first_id=1i,last_id=2i 12
book_gap,exchange=binance,market=spot,symbol=BTCUSDT reason=\"disconnect\",last_id=2i 13
invalid_frame,exchange=binance,feed=my\\ feed.one reason=\"x y\",raw=\"a b\" 14
book_snapshot,exchange=binance,market=spot,side=empty,symbol=SOLUSDT levels=0i,snapshot_id=5i 15
";

    #[test]
    fn subjects_follow_the_scheme() {
        let lines: Vec<&[u8]> = BATCH.as_bytes().split_inclusive(|&b| b == b'\n').collect();
        let subjects: Vec<String> = lines.iter().map(|l| subject_of("ds", l)).collect();
        assert_eq!(
            subjects,
            [
                "ds.binance.spot.book_delta.BTCUSDT",
                "ds.binance.spot.book_delta.ETHUSDT",
                "ds.binance.spot.book_delta.BTCUSDT",
                "ds.binance.spot.book_gap.BTCUSDT",
                "ds.binance._.invalid_frame._",
                "ds.binance.spot.book_snapshot.SOLUSDT",
            ]
        );
    }

    #[test]
    fn split_keeps_order_within_a_subject_and_every_line_once() {
        let msgs = split("ds", BATCH.as_bytes(), 1 << 20);
        assert_eq!(msgs.len(), 5);
        assert_eq!(msgs[0].subject, "ds.binance.spot.book_delta.BTCUSDT");
        assert_eq!(msgs[0].points, 2);
        assert!(std::str::from_utf8(&msgs[0].lines).unwrap().ends_with(" 12\n"));
        let total: usize = msgs.iter().map(|m| m.points).sum();
        assert_eq!(total, 6);
        let mut all: Vec<&[u8]> = msgs.iter().flat_map(|m| m.lines.split_inclusive(|&b| b == b'\n')).collect();
        let mut want: Vec<&[u8]> = BATCH.as_bytes().split_inclusive(|&b| b == b'\n').collect();
        all.sort();
        want.sort();
        assert_eq!(all, want);
    }

    #[test]
    fn split_cuts_large_subjects() {
        let line = "book_delta,exchange=binance,market=spot,side=bid,symbol=BTCUSDT price=1,qty=2 10\n";
        let batch = line.repeat(100);
        let msgs = split("p", batch.as_bytes(), line.len() * 30 + 1);
        assert_eq!(msgs.iter().map(|m| m.points).collect::<Vec<_>>(), [30, 30, 30, 10]);
        assert!(msgs.iter().all(|m| m.lines.len() <= line.len() * 30 + 1));
        // one line larger than the limit still goes, alone
        let msgs = split("p", batch.as_bytes(), 10);
        assert_eq!(msgs.len(), 100);
    }

    #[test]
    fn a_last_line_without_newline_gets_one() {
        let msgs = split("ds", b"trade,exchange=bybit,market=linear,side=buy,symbol=X price=1 5", 1024);
        assert_eq!(msgs[0].subject, "ds.bybit.linear.trade.X");
        assert_eq!(msgs[0].lines, b"trade,exchange=bybit,market=linear,side=buy,symbol=X price=1 5\n");
    }
}
