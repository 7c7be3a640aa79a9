//! `Decimal`: a price or size exactly as the exchange wrote it.
//!
//! The seed kept levels as untyped `Vec<Value>`. Prices and sizes are decimals; parsing them
//! to `f64` on the way in would round them, and re-formatting them costs more than the parse
//! (see issue 8). So a level keeps the exchange's text, checked once to be a plain decimal
//! number (optionally with an exponent, as Huobi writes `9.121E-7`). The check is what makes
//! the text safe to paste into line protocol as a float field.

use std::fmt;

use crate::error::ParseError;

/// A validated decimal number in the exchange's own text (no rounding, no re-formatting).
///
/// Stored inline up to [`INLINE`] bytes (every price and size seen on the three exchanges), so
/// a level costs no heap allocation; longer text goes to the heap. 24 bytes, so a [`Level`]
/// is 48: levels are most of what waits in the buffer channel.
///
/// [`Level`]: crate::Level
#[derive(Clone)]
pub struct Decimal(Repr);

/// Longest text kept inline: Binance writes 8 decimals (`58001.03000000`, 14 bytes), Huobi's
/// scientific forms stay under 20 (`3.24127967841632E12`).
pub const INLINE: usize = 22;

/// Inline bytes past `len` are unspecified (the fast path copies a fixed-size window of the
/// frame), so equality and hashing look at the text only.
#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<str>),
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Decimal {}

impl std::hash::Hash for Decimal {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_bytes().hash(h);
    }
}

impl Decimal {
    /// Accepts `-?digits[.digits][(e|E)[+-]digits]` and `.5`-style leading dots; rejects
    /// everything else (empty, `NaN`, `inf`, spaces, commas), so the text can never break a
    /// line-protocol line.
    pub fn parse(text: &str) -> Result<Decimal, ParseError> {
        if is_decimal(text.as_bytes()) {
            Ok(Decimal::from_checked(text.as_bytes()))
        } else {
            Err(ParseError::InvalidNumber(text.chars().take(40).collect()))
        }
    }

    /// Text already checked to be a decimal number (by [`crate::scan::Scan`], which validates
    /// while it reads).
    #[inline]
    pub(crate) fn from_checked(bytes: &[u8]) -> Decimal {
        debug_assert!(is_decimal(bytes), "{bytes:?}");
        if bytes.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..bytes.len()].copy_from_slice(bytes);
            Decimal(Repr::Inline { len: bytes.len() as u8, buf })
        } else {
            // Only ASCII digits, dots, signs and exponents pass the check.
            Decimal(Repr::Heap(String::from_utf8_lossy(bytes).into()))
        }
    }

    /// `frame[start..start + len]`, already checked to be a decimal number. When the frame has
    /// [`INLINE`] bytes from `start`, they are copied as one fixed-size block (two vector moves,
    /// no `memcpy` call, no zeroing): this runs for every price and size of every frame.
    #[inline(always)]
    pub(crate) fn from_checked_in(frame: &[u8], start: usize, len: usize) -> Decimal {
        let mut d = Decimal::ZERO;
        d.set_checked_in(frame, start, len);
        d
    }

    /// `0`, a placeholder for a slot about to be written by [`Self::set_checked_in`].
    pub(crate) const ZERO: Decimal = Decimal(Repr::Inline { len: 1, buf: [b'0'; INLINE] });

    /// [`Self::from_checked_in`], written in place.
    #[inline(always)]
    pub(crate) fn set_checked_in(&mut self, frame: &[u8], start: usize, len: usize) {
        match (&mut self.0, frame.get(start..start + INLINE)) {
            (Repr::Inline { len: l, buf }, Some(window)) if len <= INLINE => {
                buf.copy_from_slice(window);
                *l = len as u8;
            }
            _ => *self = Decimal::from_checked(&frame[start..start + len]),
        }
    }

    /// The exchange's text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Only ASCII that passed `is_decimal` is ever stored.
            Repr::Inline { len, buf } => std::str::from_utf8(&buf[..*len as usize]).unwrap_or(""),
            Repr::Heap(s) => s,
        }
    }

    /// Appends the text to a line: an inline text as one fixed-size block of [`INLINE`] bytes
    /// (a few vector moves, then the line is cut back to the text's length), which is cheaper
    /// than a `memcpy` call of the exact length for every price and size.
    #[inline(always)]
    pub fn append_to(&self, out: &mut Vec<u8>) {
        match &self.0 {
            Repr::Inline { len, buf } => {
                let end = out.len() + *len as usize;
                out.extend_from_slice(buf);
                out.truncate(end);
            }
            Repr::Heap(s) => out.extend_from_slice(s.as_bytes()),
        }
    }

    /// The text's bytes, without the UTF-8 check of [`Self::as_str`]: what the line-protocol
    /// encoder copies for every level.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => &buf[..*len as usize],
            Repr::Heap(s) => s.as_bytes(),
        }
    }

    /// True when the value is zero (`"0"`, `"0.00000000"`, `0E-8`): a size of zero removes a level.
    pub fn is_zero(&self) -> bool {
        let b = self.as_bytes();
        let mantissa_end = b.iter().position(|c| *c == b'e' || *c == b'E').unwrap_or(b.len());
        b[..mantissa_end].iter().all(|c| matches!(c, b'0' | b'.' | b'-' | b'+'))
    }

    /// The nearest `f64`, for tests and statistics; never used on the storage path.
    pub fn to_f64(&self) -> f64 {
        self.as_str().parse().unwrap_or(f64::NAN)
    }
}

/// Deserializes from a JSON string holding the decimal (`"58001.03000000"`), validated as
/// [`Decimal::parse`] does, without an intermediate `String`.
impl<'de> serde::Deserialize<'de> for Decimal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Decimal;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal number as a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Decimal, E> {
                Decimal::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

pub(crate) fn is_decimal(b: &[u8]) -> bool {
    // Fast path, the common form: digits and at most one dot.
    let (mut digits, mut dots) = (0usize, 0usize);
    let mut plain = true;
    for &c in b {
        if c.is_ascii_digit() {
            digits += 1;
        } else if c == b'.' {
            dots += 1;
        } else {
            plain = false;
            break;
        }
    }
    if plain {
        return digits > 0 && dots <= 1;
    }
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - frac_start;
    }
    if digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        let exp_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == b.len()
}

impl fmt::Debug for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_exchange_number_forms() {
        let long = "1234567890.12345678901234567890123";
        assert_eq!(Decimal::parse(long).unwrap().as_str(), long, "longer than INLINE goes to the heap");
        assert_eq!(std::mem::size_of::<Decimal>(), 24);
        for ok in ["58001.03000000", "0.00000000", "9.121E-7", "5.4329174972728E12", "1", "-2.5", ".5", "1e+3"] {
            assert!(Decimal::parse(ok).is_ok(), "{ok} should parse");
        }
    }

    #[test]
    fn rejects_what_would_break_line_protocol() {
        for bad in ["", "NaN", "inf", "1,5", "1 5", "1e", "-", ".", "1.2.3", "0x10", "1\n2", "\"1\""] {
            assert!(Decimal::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn equality_and_hash_ignore_the_bytes_past_the_text() {
        use std::hash::{BuildHasher, RandomState};
        let frame = b"12.5\"xxxxxxxxxxxxxxxxxxxxxxxxxxx";
        let windowed = Decimal::from_checked_in(frame, 0, 4);
        let plain = Decimal::parse("12.5").unwrap();
        assert_eq!(windowed.as_str(), "12.5");
        assert_eq!(windowed, plain);
        let h = RandomState::new();
        assert_eq!(h.hash_one(&windowed), h.hash_one(&plain));
        assert_ne!(windowed, Decimal::parse("12.50").unwrap());
    }

    #[test]
    fn zero_detection() {
        for zero in ["0", "0.00000000", "0E-8", "-0.0"] {
            assert!(Decimal::parse(zero).unwrap().is_zero(), "{zero}");
        }
        for nonzero in ["0.00000001", "1E-8", "10"] {
            assert!(!Decimal::parse(nonzero).unwrap().is_zero(), "{nonzero}");
        }
    }
}

