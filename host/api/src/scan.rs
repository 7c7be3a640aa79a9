//! `Scan`: a strict, allocation-free reader for the few JSON shapes on the hot path (a depth
//! frame of each exchange), used as a fast path in front of serde.
//!
//! Why: serde_json reads a frame through a generic visitor per string and per array element;
//! for a Binance depth frame (about 10 levels, 460 bytes) that was two thirds of the parse
//! (issue 8). A frame has one fixed shape, so a reader that knows it can go straight through.
//!
//! How it stays correct (contract 7): `Scan` accepts a *strict subset* of JSON. Anything it
//! does not expect (an escape in a string, an unknown key, a duplicate key, a number with a
//! leading zero or out of range, a level that is not a decimal, trailing bytes) makes it
//! [`Decline`], and the caller parses the whole frame again with serde, which either reads it
//! or says exactly what is wrong. So the fast path can only make a frame faster, never make a
//! bad frame pass or a good one fail; `tests` check that both paths agree on every recorded
//! frame and on corrupted copies of them.

use crate::decimal::{self, Decimal};
use crate::packet::Level;

/// The fast path does not take this frame; parse it with serde instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decline;

pub type Scanned<T> = Result<T, Decline>;

/// A cursor over one frame's bytes.
#[derive(Debug)]
pub struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    pub fn new(text: &'a str) -> Self {
        Scan::from_bytes(text.as_bytes())
    }

    /// A frame not yet known to be UTF-8: the fast path never needs the whole frame checked.
    /// Keys are compared as bytes with ASCII names, numbers are ASCII by their check, and the
    /// few strings handed out ([`Self::str`]) are checked on their own.
    pub fn from_bytes(frame: &'a [u8]) -> Self {
        Scan { b: frame, i: 0 }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    /// True when the rest of the frame (after whitespace) starts with `prefix`; consumes nothing.
    pub fn peek_is(&mut self, prefix: &[u8]) -> bool {
        self.ws();
        self.b[self.i..].starts_with(prefix)
    }

    /// Exactly `text` at the cursor, no whitespace before it: the separators and keys of a
    /// frame whose layout is known (Binance writes every `depthUpdate` with the same keys in the
    /// same order), matched as one compare instead of key by key. A frame laid out any other
    /// way declines here and is read member by member ([`Self::object`]).
    #[inline(always)]
    pub fn literal(&mut self, text: &[u8]) -> Scanned<()> {
        if self.try_literal(text) {
            Ok(())
        } else {
            Err(Decline)
        }
    }

    /// [`Self::literal`] as a question: true (and consumed) when `text` is at the cursor.
    #[inline(always)]
    pub fn try_literal(&mut self, text: &[u8]) -> bool {
        let end = self.i + text.len();
        let matched = self.b.get(self.i..end) == Some(text);
        if matched {
            self.i = end;
        }
        matched
    }

    /// Whitespace, then exactly `c`.
    #[inline]
    pub fn byte(&mut self, c: u8) -> Scanned<()> {
        self.ws();
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Decline)
        }
    }

    /// After a member of an object (or an element of an array) closed by `close`: `true` when
    /// a `,` follows (another member), `false` at `close`.
    #[inline]
    pub fn more(&mut self, close: u8) -> Scanned<bool> {
        self.ws();
        match self.b.get(self.i) {
            Some(b',') => {
                self.i += 1;
                Ok(true)
            }
            Some(&c) if c == close => {
                self.i += 1;
                Ok(false)
            }
            _ => Err(Decline),
        }
    }

    /// `{"k": v, ...}` of a fixed shape: `member` gets each key with the cursor at its value,
    /// reads the value and returns the key's number in the shape (0 to 31), or declines for a
    /// key the shape does not have. A key that comes twice declines too: serde calls that a
    /// duplicate field, and the fast path must not silently take the last one.
    ///
    /// `member` returns [`Self::IGNORED`] for a key the shape ignores (after reading its value
    /// with [`Self::skip_plain_value`]): such a key may come any number of times, as serde
    /// allows for a field it does not know.
    #[inline(always)]
    pub fn object(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Scanned<u32>) -> Scanned<()> {
        let mut seen = 0u32;
        self.byte(b'{')?;
        loop {
            let key = self.key()?;
            let n = member(self, key)?;
            if n != Self::IGNORED {
                let bit = 1u32.checked_shl(n).ok_or(Decline)?;
                if seen & bit != 0 {
                    return Err(Decline);
                }
                seen |= bit;
            }
            if !self.more(b'}')? {
                return Ok(());
            }
        }
    }

    /// What an [`Self::object`] member returns for a key the shape ignores.
    pub const IGNORED: u32 = u32::MAX;

    /// The value of a key the shape ignores, and the key itself checked to be UTF-8 (serde
    /// refuses a frame that is not UTF-8 anywhere): a plain string, a number, `true`, `false`
    /// or `null`. An object, an array or a string with an escape declines; serde reads those.
    pub fn skip_ignored(&mut self, key: &[u8]) -> Scanned<u32> {
        std::str::from_utf8(key).map_err(|_| Decline)?;
        self.skip_plain_value()?;
        Ok(Self::IGNORED)
    }

    /// Skips one value of the plain kinds [`Self::skip_ignored`] takes.
    pub fn skip_plain_value(&mut self) -> Scanned<()> {
        self.ws();
        let rest = &self.b[self.i..];
        let literal = [&b"true"[..], b"false", b"null"].into_iter().find(|l| rest.starts_with(l));
        match (rest.first(), literal) {
            (_, Some(l)) => self.i += l.len(),
            (Some(b'"'), _) => {
                self.str()?;
            }
            (Some(b'-' | b'0'..=b'9'), _) => {
                self.number_at()?;
            }
            _ => return Err(Decline),
        }
        Ok(())
    }

    /// Only whitespace is left.
    pub fn end(&mut self) -> Scanned<()> {
        self.ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            Err(Decline)
        }
    }

    /// A string without escapes or control characters, as a slice of the frame.
    #[inline]
    pub fn str(&mut self) -> Scanned<&'a str> {
        std::str::from_utf8(self.raw_str()?).map_err(|_| Decline)
    }

    /// The bytes between the quotes of a string without escapes or control characters, not
    /// checked to be UTF-8: only for a value compared with an ASCII name (`b"delta"`), which
    /// cannot match bytes that are not UTF-8. A skipped value must be read with [`Self::str`]:
    /// serde refuses a frame that is not UTF-8 anywhere, and the fast path must too.
    #[inline]
    pub fn raw_str(&mut self) -> Scanned<&'a [u8]> {
        self.byte(b'"')?;
        let start = self.i;
        let len = plain_str_len(&self.b[start..]).ok_or(Decline)?;
        self.i = start + len + 1;
        Ok(&self.b[start..start + len])
    }

    /// True (and consumed) when the next value is the string `"<text>"` exactly, for a value
    /// that must be one known name (Binance's `"depthUpdate"`): one compare instead of a
    /// string scan. `text` is plain ASCII (no quote, backslash or control character), so the
    /// match means exactly what [`Self::raw_str`] would have read. False consumes nothing; the
    /// caller then reads the value the general way.
    #[inline]
    pub fn is_str(&mut self, text: &[u8]) -> bool {
        debug_assert!(text.iter().all(|&c| (0x20..0x80).contains(&c) && c != b'"' && c != b'\\'));
        self.ws();
        let at = self.i;
        let matched = self.b.get(at) == Some(&b'"') && self.b.get(at + 1..at + 1 + text.len()) == Some(text) && self.b.get(at + 1 + text.len()) == Some(&b'"');
        if matched {
            self.i = at + text.len() + 2;
        }
        matched
    }

    /// An object key and its `:`, as bytes to match against the names of a shape (`b"u"`);
    /// a key that is not valid UTF-8 matches none of them and so declines.
    #[inline]
    pub fn key(&mut self) -> Scanned<&'a [u8]> {
        // Keys on the hot path are short names (`"e":`, `"topic":`). One of up to 7 bytes is
        // found in one 8-byte word (its closing quote before any backslash or control
        // character, a `:` right after); a longer one of letters, digits and `_` byte by byte.
        // The general string scan (16 bytes at a time) cost as much as a whole level per key,
        // and the byte loop's exit a mispredicted branch per key, keys being of every length.
        // Anything else (whitespace, an escape) goes the general way.
        let (b, start) = (self.b, self.i);
        if b.get(start) == Some(&b'"') {
            if let Some(len) = b.get(start + 1..start + 9).and_then(short_str_len) {
                if b.get(start + len + 2) == Some(&b':') {
                    self.i = start + len + 3;
                    return Ok(&b[start + 1..start + 1 + len]);
                }
            }
            let mut end = start + 1;
            while b.get(end).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') {
                end += 1;
            }
            if b.get(end) == Some(&b'"') && b.get(end + 1) == Some(&b':') {
                self.i = end + 2;
                return Ok(&b[start + 1..end]);
            }
        }
        let k = self.raw_str()?;
        self.byte(b':')?;
        Ok(k)
    }

    /// A JSON integer that fits a `u64` (no sign, no fraction, no leading zero).
    #[inline]
    pub fn u64(&mut self) -> Scanned<u64> {
        self.ws();
        let b = self.b;
        let start = self.i;
        let (mut i, mut v) = (start, 0u64);
        // Digits and value in one pass; wrapping is harmless up to 19 digits (< 2^64), and a
        // 20-digit number is checked again below.
        while let Some(d) = b.get(i).map(|c| c.wrapping_sub(b'0')).filter(|d| *d <= 9) {
            v = v.wrapping_mul(10).wrapping_add(u64::from(d));
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || (digits > 1 && b[start] == b'0') || digits > 20 {
            return Err(Decline);
        }
        if matches!(b.get(i), Some(b'.' | b'e' | b'E')) {
            return Err(Decline);
        }
        if digits == 20 {
            v = b[start..i].iter().try_fold(0u64, |v, &c| v.checked_mul(10)?.checked_add(u64::from(c - b'0'))).ok_or(Decline)?;
        }
        self.i = i;
        Ok(v)
    }

    /// A non-negative JSON integer that fits an `i64` (times in ms are never negative here;
    /// a negative one goes to serde).
    #[inline]
    pub fn i64(&mut self) -> Scanned<i64> {
        i64::try_from(self.u64()?).map_err(|_| Decline)
    }

    /// A JSON number (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`) kept as its text.
    pub fn number(&mut self) -> Scanned<Decimal> {
        let (start, len) = self.number_at()?;
        Ok(Decimal::from_checked_in(self.b, start, len))
    }

    /// [`Self::number`] as the position and length of its text in the frame. The levels loop
    /// builds both decimals of a level only once both are read, right where they are stored:
    /// holding the first one while reading the second cost a store-forwarding stall per level.
    #[inline(always)]
    fn number_at(&mut self) -> Scanned<(usize, usize)> {
        self.ws();
        let b = self.b;
        let start = self.i;
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let int = digits(b, i);
        if int == 0 || (int > 1 && b[i] == b'0') {
            return Err(Decline);
        }
        i += int;
        if b.get(i) == Some(&b'.') {
            let frac = digits(b, i + 1);
            if frac == 0 {
                return Err(Decline);
            }
            i += 1 + frac;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let exp = digits(b, i);
            if exp == 0 {
                return Err(Decline);
            }
            i += exp;
        }
        self.i = i;
        Ok((start, i - start))
    }

    /// A string holding a decimal number (`"58001.03000000"`), validated as
    /// [`Decimal::parse`] does.
    pub fn decimal_str(&mut self) -> Scanned<Decimal> {
        let (start, len) = self.decimal_str_at()?;
        Ok(Decimal::from_checked_in(self.b, start, len))
    }

    /// [`Self::decimal_str`] as the position and length of the text inside the quotes.
    #[inline(always)]
    fn decimal_str_at(&mut self) -> Scanned<(usize, usize)> {
        self.byte(b'"')?;
        let b = self.b;
        let start = self.i;
        // The common form, digits with at most one dot ending at the quote, checked 16 bytes
        // at a time.
        if let Some(len) = full_window16(b, start).and_then(plain_decimal_len) {
            self.i = start + len + 1;
            return Ok((start, len));
        }
        // Anything else (an exponent, a sign, or not a number): the general rule decides.
        self.i = start - 1;
        let text = self.raw_str()?;
        if decimal::is_decimal(text) {
            Ok((start, text.len()))
        } else {
            Err(Decline)
        }
    }

    /// `[[p, s], ...]` appended to `out` by the general loop alone: the reference the tests
    /// hold [`Self::levels_exact`] (what the connectors call) to.
    #[cfg(test)]
    fn levels<const NUMBERS: bool>(&mut self, out: &mut Vec<Level>) -> Scanned<()> {
        self.byte(b'[')?;
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(());
        }
        self.levels_from::<NUMBERS>(out)
    }

    /// The general level loop, from the `[` of a level inside the array to the array's `]`.
    #[inline(always)]
    fn levels_from<const NUMBERS: bool>(&mut self, out: &mut Vec<Level>) -> Scanned<()> {
        loop {
            self.byte(b'[')?;
            let (p, p_len) = if NUMBERS { self.number_at()? } else { self.decimal_str_at()? };
            self.byte(b',')?;
            let (s, s_len) = if NUMBERS { self.number_at()? } else { self.decimal_str_at()? };
            self.byte(b']')?;
            // Built in the vector's slot, not on the stack and then copied: the copy read back
            // bytes just written in pieces, a store-forwarding stall per level.
            out.push(Level { price: Decimal::ZERO, size: Decimal::ZERO });
            if let Some(level) = out.last_mut() {
                level.price.set_checked_in(self.b, p, p_len);
                level.size.set_checked_in(self.b, s, s_len);
            }
            if !self.more(b']')? {
                return Ok(());
            }
        }
    }

    /// The levels as Binance and Bybit write them, `["p","s"],["p","s"]]` with no whitespace
    /// and plain decimals: each level is matched as one pattern (three fixed separators and
    /// two 16-byte decimal checks) instead of token by token, and only its position is kept.
    /// True when the array is read to its `]`; false where the pattern stops matching, with the
    /// cursor at the start of that level, so the general loop goes on from there (and decides
    /// what the bytes are). With `FILL`, a text less than 16 bytes before the frame's end is
    /// read from a zero-filled window ([`Scan::levels_exact_to_end`]).
    #[inline(always)]
    fn compact_str_levels<const FILL: bool>(&mut self, found: &mut Vec<LevelAt>) -> bool {
        let b = self.b;
        let mut i = self.i;
        let window = |b: &[u8], at: usize| if FILL { window16(b, at) } else { full_window16(b, at) };
        while let Some((at, next, last)) = compact_level(b, i, window) {
            found.push(at);
            i = next;
            if last {
                self.i = i;
                return true;
            }
        }
        self.i = i;
        false
    }

    /// `[[p, s], ...]`, where `p` and `s` are decimal strings (Binance, Bybit) or, with
    /// `NUMBERS`, bare JSON numbers (HTX), into a vector of exactly their number; `[]` is an
    /// empty one.
    ///
    /// JSON gives no count up front, and growing a vector level by level costs a malloc and
    /// reallocs with copies per side. So the compact form is read in two passes: the first
    /// checks every level and keeps where its two texts are ([`LevelAt`], in a per-thread
    /// vector that keeps its capacity), the second builds the levels into one exact
    /// allocation, with no capacity check per level. Pushing each level into a growing
    /// scratch vector instead built it on the stack first (the push may have to grow before
    /// the write), and reading those bytes back stalled store forwarding on every level (a
    /// fifth of the level loop in a profile). Levels the pattern does not take go through the
    /// general loop into a per-thread scratch vector, moved into the exact allocation at the
    /// end.
    #[inline]
    pub fn levels_exact<const NUMBERS: bool>(&mut self) -> Scanned<Vec<Level>> {
        self.levels_exact_with::<NUMBERS, false>()
    }

    /// [`Self::levels_exact`] of decimal strings for an array that may close less than 16
    /// bytes before the frame's end, as Binance's asks do (`"0.75000000"]]}}`): there the
    /// compact pattern has no full 16-byte window for the last size, and without a
    /// zero-filled one that level went through the general loop and its side through a
    /// second vector (Binance path +0.02 to +0.03 of the floor in paired runs). A variant of
    /// its own, as the fill's branch in the level loop cost Bybit, whose frames end with other
    /// keys, 1% to 2%.
    #[inline]
    pub fn levels_exact_to_end(&mut self) -> Scanned<Vec<Level>> {
        self.levels_exact_with::<false, true>()
    }

    #[inline(always)]
    fn levels_exact_with<const NUMBERS: bool, const FILL: bool>(&mut self) -> Scanned<Vec<Level>> {
        use std::cell::RefCell;
        thread_local! {
            static SCRATCH: RefCell<(Vec<LevelAt>, Vec<Level>)> = const { RefCell::new((Vec::new(), Vec::new())) };
        }
        self.byte(b'[')?;
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(Vec::new());
        }
        SCRATCH.with(|cell| {
            let Ok(mut scratch) = cell.try_borrow_mut() else {
                // Re-entered (cannot happen: nothing here calls back); just do without.
                let mut out = Vec::new();
                self.levels_from::<NUMBERS>(&mut out)?;
                return Ok(out);
            };
            let (found, rest) = &mut *scratch;
            found.clear();
            let b = self.b;
            if !NUMBERS && self.compact_str_levels::<FILL>(found) {
                let out: Vec<Level> = found.iter().map(|at| at.level(b)).collect();
                // A 5,000-level snapshot should not pin its scratch for the thread's life.
                if found.capacity() > 1024 {
                    *found = Vec::new();
                }
                return Ok(out);
            }
            rest.clear();
            rest.extend(found.iter().map(|at| at.level(b)));
            let read = self.levels_from::<NUMBERS>(rest);
            let out: Vec<Level> = if rest.capacity() > 1024 {
                let mut all = std::mem::take(rest);
                all.shrink_to_fit();
                all
            } else {
                // One bulk copy (a `collect` from `drain` moved the levels one by one).
                let mut exact = Vec::with_capacity(rest.len());
                exact.append(rest);
                exact
            };
            if found.capacity() > 1024 {
                *found = Vec::new();
            }
            read.map(|()| out)
        })
    }
}

/// One level `["p","s"]` of [`Scan::compact_str_levels`] at `i`, its texts checked with
/// 16-byte windows from `window`: where its texts are, the index after its `,` or `]`, and
/// whether that was the array's `]`.
#[inline(always)]
fn compact_level(b: &[u8], i: usize, window: impl Fn(&[u8], usize) -> Option<u128>) -> Option<(LevelAt, usize, bool)> {
    let p = pattern_at(b, i, b"[\"")?;
    let p_len = window(b, p).and_then(plain_decimal_len)?;
    let s = pattern_at(b, p + p_len, b"\",\"")?;
    let s_len = window(b, s).and_then(plain_decimal_len)?;
    let after = pattern_at(b, s + s_len, b"\"]")?;
    let last = match b.get(after) {
        Some(b',') => false,
        Some(b']') => true,
        _ => return None,
    };
    Some((LevelAt { price: p, price_len: p_len, size: s, size_len: s_len }, after + 1, last))
}

/// Where a level's two texts are in the frame, both already checked to be decimals.
#[derive(Debug, Clone, Copy)]
struct LevelAt {
    price: usize,
    price_len: usize,
    size: usize,
    size_len: usize,
}

impl LevelAt {
    #[inline(always)]
    fn level(self, frame: &[u8]) -> Level {
        Level { price: Decimal::from_checked_in(frame, self.price, self.price_len), size: Decimal::from_checked_in(frame, self.size, self.size_len) }
    }
}

/// The 16 bytes of `b` from `at` (little-endian), when the frame has them.
#[inline(always)]
fn full_window16(b: &[u8], at: usize) -> Option<u128> {
    b.get(at..at + 16)?.try_into().ok().map(u128::from_le_bytes)
}

/// The 16 bytes of `b` from `at`, zero-filled past its end. A zero byte is a control
/// character, which no window check takes for a quote, a digit or a dot, so a text that ends
/// inside the frame reads as it would from a full window and one that does not is refused.
#[inline(always)]
fn window16(b: &[u8], at: usize) -> Option<u128> {
    match b.get(at..at + 16) {
        Some(w) => w.try_into().ok().map(u128::from_le_bytes),
        None => {
            let rest = b.get(at..)?;
            let mut w = [0u8; 16];
            w[..rest.len()].copy_from_slice(rest);
            Some(u128::from_le_bytes(w))
        }
    }
}

/// The index after `pattern` when the frame holds it at `at`.
#[inline(always)]
fn pattern_at(b: &[u8], at: usize, pattern: &[u8]) -> Option<usize> {
    (b.get(at..at + pattern.len())? == pattern).then_some(at + pattern.len())
}

/// Corrupted copies of a frame, for a connector's test that its fast path reads exactly what
/// serde reads or declines: every prefix (a cut frame), and every character replaced in turn
/// by each of the characters that matter to JSON and to numbers.
pub fn corrupted_copies(frame: &str) -> Vec<String> {
    let mut out: Vec<String> = (0..frame.len()).filter(|&i| frame.is_char_boundary(i)).map(|i| frame[..i].to_string()).collect();
    for (i, ch) in frame.char_indices() {
        for c in ['"', ',', ':', '[', ']', '{', '}', '0', '1', '-', '+', '.', 'e', 'E', ' ', '\\', 'x'] {
            let mut v = frame.to_string();
            v.replace_range(i..i + ch.len_utf8(), c.encode_utf8(&mut [0; 4]));
            out.push(v);
        }
    }
    out.push(format!("{frame} x"));
    out
}

const ONES: u128 = u128::MAX / 255;
const HIGH: u128 = ONES * 0x80;

/// The high bit of each byte of `x` that equals `c`, exactly (no carry between bytes).
#[inline(always)]
fn bytes_equal(x: u128, c: u8) -> u128 {
    let m = x ^ (ONES * u128::from(c));
    !(((m & !HIGH) + !HIGH) | m) & HIGH
}

/// High bits of the bytes before the first byte flagged in `flags` (a mask of high bits, not
/// zero). Bit arithmetic instead of a shift by the byte count: a 128-bit variable shift is a
/// chain of dependent instructions, and was a tenth of the level loop.
#[inline(always)]
fn bytes_before_first(flags: u128) -> u128 {
    // Subtracting one clears the lowest flag and sets every bit below it; masking with the
    // complement drops the flags above it.
    flags.wrapping_sub(1) & !flags & HIGH
}

/// The length of the string that starts at `rest` (right after its opening quote) when its
/// closing quote comes before any backslash or control character; 16 bytes at a time.
#[inline(always)]
fn plain_str_len(rest: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(window) = rest.get(at..at + 16) {
        let x = u128::from_le_bytes(window.try_into().ok()?);
        // High bit set where a byte is below 0x20 (no carry: at most 0x7f + 0x60).
        let control = !((((x & !HIGH) + ONES * 0x60) | x) & HIGH) & HIGH;
        let stop = bytes_equal(x, b'"') | bytes_equal(x, b'\\') | control;
        if stop != 0 {
            let k = at + (stop.trailing_zeros() / 8) as usize;
            return (rest[k] == b'"').then_some(k);
        }
        at += 16;
    }
    let k = at + rest[at..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    (rest[k] == b'"').then_some(k)
}

/// [`plain_str_len`] for a string of at most 7 bytes, from the 8 bytes right after its opening
/// quote: the position of the closing quote when it comes before any backslash or control
/// character; `None` otherwise (a longer string, an escape).
#[inline(always)]
fn short_str_len(window: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES * 0x80;
    let x = u64::from_le_bytes(window.try_into().ok()?);
    let equal = |c: u8| {
        let m = x ^ (ONES * u64::from(c));
        !(((m & !HIGH) + !HIGH) | m) & HIGH
    };
    // High bit set where a byte is below 0x20 (no carry: at most 0x7f + 0x60).
    let control = !((((x & !HIGH) + ONES * 0x60) | x) & HIGH) & HIGH;
    let stop = equal(b'"') | equal(b'\\') | control;
    let k = (stop.trailing_zeros() / 8) as usize;
    (window.get(k) == Some(&b'"')).then_some(k)
}

/// SWAR over a 16-byte window (little-endian) starting right after an opening quote: when it
/// holds a closing quote and every byte before it is a digit or a dot (at most one dot, at
/// least one digit), the text's length; `None` sends the string to the general check.
#[inline(always)]
fn plain_decimal_len(x: u128) -> Option<usize> {
    let quotes = bytes_equal(x, b'"');
    if quotes == 0 {
        return None;
    }
    let len = (quotes.trailing_zeros() / 8) as usize;
    let before = bytes_before_first(quotes);
    let y = x ^ (ONES * u128::from(b'0'));
    // High bit set where a byte is not an ASCII digit.
    let not_digit = ((((y & !HIGH) + ONES * 0x76) | y) & HIGH) & before;
    let dots = bytes_equal(x, b'.') & before;
    // At most one dot (one bit at most: no popcount, which the baseline x86-64 target lacks),
    // and at least one digit.
    let one_dot_at_most = dots & dots.wrapping_sub(1) == 0;
    (not_digit & !dots == 0 && one_dot_at_most && len > usize::from(dots != 0)).then_some(len)
}

fn digits(b: &[u8], from: usize) -> usize {
    b.get(from..).map_or(0, |rest| rest.iter().take_while(|c| c.is_ascii_digit()).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> Scanned<String> {
        let mut sc = Scan::new(s);
        let d = sc.number()?;
        sc.end()?;
        Ok(d.as_str().to_owned())
    }

    #[test]
    fn numbers_follow_json_grammar() {
        for ok in ["0", "0.0", "9.486E-11", "5.4329174972728E12", "-2.5", "1e+3", "58001.03"] {
            assert_eq!(num(ok).as_deref(), Ok(ok), "{ok}");
            // serde_json agrees that these are numbers.
            assert!(serde_json::from_str::<serde_json::Number>(ok).is_ok(), "{ok}");
        }
        for bad in ["", "01", "-", ".5", "1.", "1e", "+1", "1.e3", "NaN", "0x1", "--1"] {
            assert_eq!(num(bad), Err(Decline), "{bad:?}");
        }
    }

    #[test]
    fn decimal_strings() {
        let one = |s: &str| {
            let mut sc = Scan::new(s);
            sc.decimal_str().map(|d| d.as_str().to_owned())
        };
        assert_eq!(one(r#""58001.03000000""#).as_deref(), Ok("58001.03000000"));
        assert_eq!(one(r#""1E-8""#).as_deref(), Ok("1E-8"));
        for bad in [r#""""#, r#"".""#, r#""1.2.3""#, r#""NaN""#, r#""1\u0030""#, r#""1"#, "1"] {
            assert_eq!(one(bad), Err(Decline), "{bad}");
        }
    }

    /// Every word of up to 5 letters of `alphabet`, placed in a 16-byte window of `fill` at
    /// each of `offsets` and at the window's end.
    fn windows(alphabet: &[u8], fill: u8, offsets: &[usize]) -> Vec<[u8; 16]> {
        let mut out = Vec::new();
        for n in 1..=5u32 {
            for code in 0..alphabet.len().pow(n) {
                let mut word = Vec::new();
                let mut c = code;
                for _ in 0..n {
                    word.push(alphabet[c % alphabet.len()]);
                    c /= alphabet.len();
                }
                for &offset in offsets.iter().chain([16 - n as usize].iter()) {
                    let mut w = [fill; 16];
                    w[offset..offset + word.len()].copy_from_slice(&word);
                    out.push(w);
                }
            }
        }
        out
    }

    /// The 16-byte check against the plain per-byte rule, on every string of a small alphabet
    /// up to 5 characters placed at each offset of the window.
    #[test]
    fn swar_window_matches_the_byte_rule() {
        let alphabet = [b'0', b'9', b'.', b'"', b'e', b'-', b'/', b':', 0x80, b' '];
        let rule = |w: &[u8]| {
            let len = w.iter().position(|&c| c == b'"')?;
            let body = &w[..len];
            let dots = body.iter().filter(|&&c| c == b'.').count();
            (body.iter().all(|c| c.is_ascii_digit() || *c == b'.') && dots <= 1 && len > dots).then_some(len)
        };
        let mut checked = 0;
        for w in windows(&alphabet, b'7', &[0, 3, 11]) {
            assert_eq!(plain_decimal_len(u128::from_le_bytes(w.as_slice().try_into().unwrap())), rule(&w), "{:?}", String::from_utf8_lossy(&w));
            checked += 1;
        }
        assert!(checked > 400_000);
    }

    #[test]
    fn long_strings_are_read_16_bytes_at_a_time_and_in_the_tail() {
        for len in 0..70 {
            let body = "x".repeat(len);
            assert_eq!(Scan::new(&format!("\"{body}\"")).str(), Ok(body.as_str()), "{len}");
            assert_eq!(Scan::new(&format!("\"{body}\\n\"")).str(), Err(Decline), "{len}");
            assert_eq!(Scan::new(&format!("\"{body}")).str(), Err(Decline), "{len}");
        }
    }

    #[test]
    fn swar_string_window_matches_the_byte_rule() {
        let alphabet = [b'a', b'"', b'\\', 0x1f, 0x20, 0x7f, 0x80, 0xff, b'0'];
        let rule = |w: &[u8]| {
            let len = w.iter().position(|&c| c == b'"')?;
            w[..len].iter().all(|&c| c != b'\\' && c >= 0x20).then_some(len)
        };
        for w in windows(&alphabet, b'x', &[0, 7]) {
            assert_eq!(plain_str_len(&w), rule(&w), "{w:?}");
        }
    }

    #[test]
    fn integers() {
        let one = |s: &str| Scan::new(s).u64();
        assert_eq!(one("18446744073709551615"), Ok(u64::MAX));
        for v in [0u64, 7, 12345678, 123456789, 1234567812345678, 12345678123456789, 1786310816516, 10_000_000_000_000_000_000] {
            assert_eq!(one(&v.to_string()), Ok(v), "{v}");
            assert_eq!(Scan::new(&format!("{v},")).u64(), Ok(v), "{v} before a comma");
        }
        for bad in ["18446744073709551616", "99999999999999999999", "100000000000000000000", "-1", "01", "00000000", "1.0", "12345678.5", "123456789e3", "", "x"] {
            assert_eq!(one(bad), Err(Decline), "{bad}");
        }
        assert_eq!(Scan::new("9223372036854775808").i64(), Err(Decline));
    }

    #[test]
    fn strings_with_escapes_decline() {
        assert_eq!(Scan::new(r#""ab""#).str(), Ok("ab"));
        for bad in [r#""a\"b""#, "\"a\nb\"", r#""abc"#] {
            assert_eq!(Scan::new(bad).str(), Err(Decline), "{bad}");
        }
    }

    #[test]
    fn levels_read_pairs_and_empty() {
        let mut out = Vec::new();
        let mut sc = Scan::new(r#" [ ["1.5" , "2"],["3","0.00"] ] "#);
        sc.levels::<false>(&mut out).unwrap();
        sc.end().unwrap();
        assert_eq!(out.iter().map(|l| (l.price.as_str(), l.size.as_str())).collect::<Vec<_>>(), [("1.5", "2"), ("3", "0.00")]);
        out.clear();
        Scan::new("[]").levels::<true>(&mut out).unwrap();
        assert!(out.is_empty());
        for bad in ["[[1,2,3]]", "[[1]]", "[[1,2],]", "[[1,2]", r#"[["1","2"]]"#] {
            assert_eq!(Scan::new(bad).levels::<true>(&mut out), Err(Decline), "{bad}");
        }
    }

    #[test]
    fn compact_levels_hand_over_to_the_general_loop_mid_array() {
        // Level 2 has a space, level 3 an exponent: the compact pattern stops there and the
        // general loop reads the rest; the result is the same as reading it all generally.
        let text = r#"[["1.5","2"],["3", "4"],["5","1E-8"],["6","7"]]"#;
        let mut out = Vec::new();
        let mut sc = Scan::new(text);
        sc.levels::<false>(&mut out).unwrap();
        sc.end().unwrap();
        let mut sc = Scan::new(text);
        let exact = sc.levels_exact::<false>().unwrap();
        sc.end().unwrap();
        assert_eq!(exact, out);
        assert_eq!(exact.capacity(), 4);
        let got: Vec<_> = out.iter().map(|l| (l.price.as_str(), l.size.as_str())).collect();
        assert_eq!(got, [("1.5", "2"), ("3", "4"), ("5", "1E-8"), ("6", "7")]);
        // All compact: the two-pass path alone, ending right at the frame's end.
        let mut sc = Scan::new(r#"[["1.5","2"],["3","4"]]"#);
        let exact = sc.levels_exact::<false>().unwrap();
        sc.end().unwrap();
        assert_eq!(exact.iter().map(|l| (l.price.as_str(), l.size.as_str())).collect::<Vec<_>>(), [("1.5", "2"), ("3", "4")]);
        for bad in [r#"[["1","2"],]"#, r#"[["1","2"]"#, r#"[["1","2"],["x","1"]]"#, r#"[["1","2""#, r#"[["1","2"],["3","4"]"#] {
            assert_eq!(Scan::new(bad).levels::<false>(&mut out), Err(Decline), "{bad}");
            assert_eq!(Scan::new(bad).levels_exact::<false>(), Err(Decline), "{bad}");
        }
    }

    #[test]
    fn the_compact_pattern_reads_up_to_the_last_byte_of_the_frame() {
        // Binance's asks end the frame: fewer than 16 bytes follow the last size. The
        // pattern must still take every level (a zero-filled window), at any distance from
        // the end, and refuse a level cut by the end as the general loop does.
        for tail in ["", "}", "}}", "}}}}}}}}}}}}}}}}"] {
            let text = format!(r#"[["58055.02000000","0.75000000"],["1","2"]]{tail}"#);
            let mut sc = Scan::new(&text);
            sc.byte(b'[').unwrap();
            let mut found = Vec::new();
            assert!(sc.compact_str_levels::<true>(&mut found), "{text}");
            let b = text.as_bytes();
            let got: Vec<_> = found.iter().map(|at| at.level(b)).map(|l| (l.price.as_str().to_owned(), l.size.as_str().to_owned())).collect();
            assert_eq!(got, [("58055.02000000".into(), "0.75000000".into()), ("1".into(), "2".into())], "{text}");
            assert_eq!(&b[sc.i..], tail.as_bytes());
            // Both variants read the same levels; only the path differs.
            assert_eq!(Scan::new(&text).levels_exact_to_end(), Scan::new(&text).levels_exact::<false>(), "{text}");
        }
        for cut in [r#"[["1","2"],["3","4"#, r#"[["1","2"],["3","4""#, r#"[["1","2"],["3","4"]"#, r#"[["1","2"],["3"#] {
            let mut sc = Scan::new(cut);
            sc.byte(b'[').unwrap();
            let mut found = Vec::new();
            assert!(!sc.compact_str_levels::<true>(&mut found), "{cut}");
            assert_eq!(found.len(), 1, "{cut}");
            assert_eq!(Scan::new(cut).levels_exact_to_end(), Err(Decline), "{cut}");
        }
    }

    #[test]
    fn windows_are_zero_filled_past_the_frame_end() {
        for len in 0..40u8 {
            let b: Vec<u8> = (1..=len).collect();
            for at in 0..=usize::from(len) + 1 {
                let mut want = [0u8; 16];
                let got = window16(&b, at);
                if at > b.len() {
                    assert_eq!(got, None, "{len} {at}");
                    continue;
                }
                let n = (b.len() - at).min(16);
                want[..n].copy_from_slice(&b[at..at + n]);
                assert_eq!(got, Some(u128::from_le_bytes(want)), "{len} {at}");
                assert_eq!(full_window16(&b, at), (n == 16).then(|| u128::from_le_bytes(want)), "{len} {at}");
            }
        }
    }

    #[test]
    fn one_letter_keys_and_known_strings_read_as_the_general_way_does() {
        let key = |text: &str| Scan::new(text).key().map(|k| k.to_vec());
        assert_eq!(key(r#""e":1"#), Ok(b"e".to_vec()));
        assert_eq!(key(r#" "e" : 1"#), Ok(b"e".to_vec()));
        assert_eq!(key(r#""ee":1"#), Ok(b"ee".to_vec()));
        assert_eq!(key(r#""":1"#), Ok(b"".to_vec()));
        // Not a plain one-letter key: the general scan decides (and declines).
        for bad in [r#""\":1"#, "\"\u{1}\":1", r#""e"1"#, r#""e""#] {
            assert_eq!(key(bad), Err(Decline), "{bad:?}");
        }
        let mut s = Scan::new(r#" "depthUpdate","depthUpdat","depthUpdatex""#);
        assert!(s.is_str(b"depthUpdate"));
        s.byte(b',').unwrap();
        assert!(!s.is_str(b"depthUpdate"));
        assert_eq!(s.raw_str(), Ok(&b"depthUpdat"[..]));
        s.byte(b',').unwrap();
        assert!(!s.is_str(b"depthUpdate"));
        assert_eq!(s.raw_str(), Ok(&b"depthUpdatex"[..]));
    }

    /// `key` reads what the general way (`raw_str`, then `:`) reads, and declines where it
    /// declines: keys of 0 to 10 bytes (across the 8-byte word of the short-key read), each
    /// position in turn holding a quote, a backslash, a control character, a non-ASCII byte or
    /// a space, and with or without the `:` and a tail after it.
    #[test]
    fn keys_of_every_length_read_as_the_general_way_does() {
        let general = |text: &[u8]| {
            let mut s = Scan::from_bytes(text);
            let k = s.raw_str().and_then(|k| s.byte(b':').map(|()| k.to_vec()));
            k.map(|k| (k, s.i))
        };
        let fast = |text: &[u8]| {
            let mut s = Scan::from_bytes(text);
            s.key().map(|k| (k.to_vec(), s.i))
        };
        let mut checked = 0;
        for len in 0..=10 {
            for odd_at in (0..len).map(Some).chain([None]) {
                for odd in [b'"', b'\\', 0x01, 0x1f, 0xc3, 0xff, b' ', b'_', b'~'] {
                    let mut name = vec![b'k'; len];
                    if let Some(i) = odd_at {
                        name[i] = odd;
                    }
                    for after in [&b":1}"[..], b":", b"", b" :1", b"x"] {
                        let mut text = vec![b'"'];
                        text.extend_from_slice(&name);
                        text.push(b'"');
                        text.extend_from_slice(after);
                        assert_eq!(fast(&text), general(&text), "{:?}", String::from_utf8_lossy(&text));
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 2_000);
    }

    #[test]
    fn objects_decline_unknown_and_repeated_keys() {
        let read = |text: &str| {
            let (mut a, mut b) = (None, None);
            let mut s = Scan::new(text);
            s.object(|s, key| match key {
                b"a" => s.u64().map(|v| a = Some(v)).map(|()| 0),
                b"b" => s.str().map(|v| b = Some(v.to_owned())).map(|()| 1),
                _ => Err(Decline),
            })?;
            s.end()?;
            Ok((a, b))
        };
        assert_eq!(read(r#"{"b":"x","a":1}"#), Ok((Some(1), Some("x".to_owned()))));
        assert_eq!(read(r#" { "a" : 2 } "#), Ok((Some(2), None)));
        for bad in [r#"{"a":1,"a":2}"#, r#"{"a":1,"c":2}"#, "{}", r#"{"a":1,}"#, r#"{"a":1"#, r#"{"a":1} x"#] {
            assert_eq!(read(bad), Err(Decline), "{bad}");
        }
    }
}
