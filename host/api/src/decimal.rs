//! `Decimal`: a price or size exactly as the exchange wrote it.
//!
//! The seed kept levels as untyped `Vec<Value>`. Prices and sizes are decimals; parsing them
//! to `f64` on the way in would round them, and re-formatting them costs more than the parse
//! (see issue 8). So a level keeps the exchange's text, checked once to be a plain decimal
//! number (optionally with an exponent, as Huobi writes `9.121E-7`). The check is what makes
//! the text safe to paste into line protocol as a float field.

use compact_str::CompactString;
use std::fmt;

use crate::error::ParseError;

/// A validated decimal number in the exchange's own text (no rounding, no re-formatting).
///
/// Stored inline for up to 24 bytes (every price and size seen on the three exchanges), so a
/// level costs no heap allocation.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Decimal(CompactString);

impl Decimal {
    /// Accepts `-?digits[.digits][(e|E)[+-]digits]` and `.5`-style leading dots; rejects
    /// everything else (empty, `NaN`, `inf`, spaces, commas), so the text can never break a
    /// line-protocol line.
    pub fn parse(text: &str) -> Result<Decimal, ParseError> {
        if is_decimal(text.as_bytes()) {
            Ok(Decimal(CompactString::new(text)))
        } else {
            Err(ParseError::InvalidNumber(text.chars().take(40).collect()))
        }
    }

    /// The exchange's text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// True when the value is zero (`"0"`, `"0.00000000"`, `0E-8`): a size of zero removes a level.
    pub fn is_zero(&self) -> bool {
        let b = self.0.as_bytes();
        let mantissa_end = b.iter().position(|c| *c == b'e' || *c == b'E').unwrap_or(b.len());
        b[..mantissa_end].iter().all(|c| matches!(c, b'0' | b'.' | b'-' | b'+'))
    }

    /// The nearest `f64`, for tests and statistics; never used on the storage path.
    pub fn to_f64(&self) -> f64 {
        self.0.parse().unwrap_or(f64::NAN)
    }
}

fn is_decimal(b: &[u8]) -> bool {
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
        f.write_str(&self.0)
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_exchange_number_forms() {
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
    fn zero_detection() {
        for zero in ["0", "0.00000000", "0E-8", "-0.0"] {
            assert!(Decimal::parse(zero).unwrap().is_zero(), "{zero}");
        }
        for nonzero in ["0.00000001", "1E-8", "10"] {
            assert!(!Decimal::parse(nonzero).unwrap().is_zero(), "{nonzero}");
        }
    }
}
