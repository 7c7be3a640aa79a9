//! `Gunzip`: every Huobi server frame is a gzip member (pings and acks too). Inflating a frame
//! is the one place where a few bytes from the network decide how much memory we take: a
//! 250 KiB frame of zeros inflates to 256 MiB. So the decoder never holds more than `cap`
//! bytes of output, and grows its buffer in steps it chose, not in the doublings `Vec` would
//! pick (which could reach twice the cap).

use std::io::{Cursor, Read};

use flate2::bufread::GzDecoder;

/// Default cap of one inflated frame. The largest legitimate frame is a `req` reply of the
/// 400-level MBP book (about 800 levels, ~40 KiB); 4 MiB leaves two orders of magnitude of room.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Bytes read from the inflater per step: small enough that overshooting the cap by one step
/// costs nothing, large enough that a normal frame takes a handful of steps.
const STEP: usize = 16 * 1024;

/// After a frame bigger than this (inflated or not), its buffer is released instead of kept,
/// so one large reply or bomb does not pin megabytes per connection for the rest of its life.
const KEEP_CAPACITY: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GunzipError {
    /// The frame inflates past the cap (a broken server or a gzip bomb).
    #[error("frame inflates past the {cap}-byte cap ({compressed} bytes compressed)")]
    TooLarge { cap: usize, compressed: usize },
    /// Not a gzip member, truncated, or a bad checksum.
    #[error("corrupt gzip frame ({compressed} bytes): {reason}")]
    Corrupt { compressed: usize, reason: String },
}

/// A reusable, capped gzip decoder. One per connection (the read loop is single-threaded).
///
/// The inflater's state (tens of KiB of tables and window) is kept and reset between frames
/// rather than built anew: for the typical frame of a few hundred bytes, setting that state
/// up costs more than inflating the frame.
pub struct Gunzip {
    cap: usize,
    buf: Vec<u8>,
    /// Largest buffer capacity ever held, for tests and the bomb check.
    peak_capacity: usize,
    /// Reads from a copy of the frame (a few hundred bytes), which lets the decoder own its
    /// input and so live across frames.
    decoder: GzDecoder<Cursor<Vec<u8>>>,
}

impl std::fmt::Debug for Gunzip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gunzip")
            .field("cap", &self.cap)
            .field("peak_capacity", &self.peak_capacity)
            .finish_non_exhaustive()
    }
}

impl Gunzip {
    pub fn new(cap: usize) -> Self {
        Gunzip {
            cap: cap.max(STEP),
            buf: Vec::new(),
            peak_capacity: 0,
            decoder: GzDecoder::new(Cursor::new(Vec::new())),
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// The largest capacity the output buffer ever reached: never more than the cap.
    pub fn peak_capacity(&self) -> usize {
        self.peak_capacity
    }

    /// Inflates one frame. The returned slice lives until the next call.
    pub fn inflate(&mut self, compressed: &[u8]) -> Result<&[u8], GunzipError> {
        if self.buf.len() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
        let n = compressed.len();
        // Reading at most cap + 1 bytes tells "exactly at the cap" from "past it" while the
        // inflater never produces more than that. `buf` stays initialised up to its length, so
        // only growth costs a fill; `len` is what this frame wrote.
        let mut input = self.decoder.reset(Cursor::new(Vec::new())).into_inner();
        if input.capacity() > KEEP_CAPACITY {
            input = Vec::new();
        }
        input.clear();
        input.extend_from_slice(compressed);
        self.decoder.reset(Cursor::new(input));
        let mut reader = (&mut self.decoder).take(self.cap as u64 + 1);
        let mut len = 0;
        loop {
            if len == self.buf.len() {
                let room = (self.cap + 1).saturating_sub(len).min(len.max(STEP));
                if room == 0 {
                    return Err(GunzipError::TooLarge {
                        cap: self.cap,
                        compressed: n,
                    });
                }
                self.buf.reserve_exact(room);
                self.buf.resize(len + room, 0);
                self.peak_capacity = self.peak_capacity.max(self.buf.capacity());
            }
            match reader.read(&mut self.buf[len..]) {
                Ok(0) => break,
                Ok(read) => len += read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(GunzipError::Corrupt {
                        compressed: n,
                        reason: e.to_string(),
                    })
                }
            }
            if len > self.cap {
                return Err(GunzipError::TooLarge {
                    cap: self.cap,
                    compressed: n,
                });
            }
        }
        if len == 0 && !compressed.starts_with(&[0x1f, 0x8b]) {
            return Err(GunzipError::Corrupt {
                compressed: n,
                reason: "not a gzip member".into(),
            });
        }
        Ok(&self.buf[..len])
    }
}

/// Standard base64 of `bytes`, so a frame that could not be inflated is stored as the exact
/// wire bytes (truncated) and can be examined later.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 decoding, for tests that read the capture's base64 wire bytes.
#[cfg(test)]
pub(crate) fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let clean: Vec<u32> = s
        .bytes()
        .filter(|c| *c != b'=')
        .map(|c| ALPHABET.iter().position(|a| *a == c).expect("base64") as u32)
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let v = chunk
            .iter()
            .enumerate()
            .fold(0u32, |v, (i, c)| v | (c << (18 - 6 * i)));
        out.extend_from_slice(&[(v >> 16) as u8, (v >> 8) as u8, v as u8][..chunk.len() - 1]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn inflates_a_real_frame() {
        // ws_raw_gzip_frames_2021-04-17.jsonl line 1: the ack of id 1, exact wire bytes.
        let wire = [
            0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0d, 0x8a, 0x41, 0x0a,
            0xc0, 0x20, 0x10, 0xc4, 0xfe, 0xb2, 0xe7, 0x22, 0x4a, 0xe9, 0x2a, 0xfe, 0x46, 0x71,
            0xa1, 0x22, 0x45, 0xd1, 0xf1, 0x54, 0xfa, 0xf7, 0xee, 0x25, 0x10, 0x92, 0x97, 0x6a,
            0xa1, 0xe8, 0x0e, 0x5a, 0x48, 0xd8, 0x8b, 0x22, 0xf5, 0x46, 0x6a, 0x3b, 0x67, 0xd1,
            0x40, 0x4f, 0x9a, 0x4d, 0x60, 0x30, 0x6b, 0x17, 0xdc, 0xa6, 0xc8, 0x50, 0x2e, 0xc8,
            0xb0, 0x7a, 0x41, 0x7f, 0xc7, 0x2e, 0xb0, 0x0f, 0xd6, 0x5b, 0xbe, 0xce, 0xef, 0x07,
            0xb3, 0xfe, 0x79, 0x43, 0x4f, 0x00, 0x00, 0x00,
        ];
        let mut g = Gunzip::new(DEFAULT_MAX_FRAME_BYTES);
        assert_eq!(
            std::str::from_utf8(g.inflate(&wire).unwrap()).unwrap(),
            r#"{"id":1,"status":"ok","subbed":"market.trioeth.depth.step0","ts":1618678070653}"#
        );
    }

    #[test]
    fn a_bomb_stops_at_the_cap_without_growing_past_it() {
        let bomb = gz(&vec![b' '; 64 * 1024 * 1024]);
        assert!(bomb.len() < 200 * 1024, "{}", bomb.len());
        let cap = 1024 * 1024;
        let mut g = Gunzip::new(cap);
        assert_eq!(
            g.inflate(&bomb),
            Err(GunzipError::TooLarge {
                cap,
                compressed: bomb.len()
            })
        );
        assert!(g.peak_capacity() <= cap + 1, "peak {}", g.peak_capacity());
        // The decoder is usable afterwards, and gives its big buffer back.
        assert_eq!(g.inflate(&gz(b"{\"ping\":1}")).unwrap(), b"{\"ping\":1}");
        assert!(g.buf.len() <= KEEP_CAPACITY);
    }

    #[test]
    fn exactly_the_cap_is_accepted() {
        let cap = 100_000;
        let mut g = Gunzip::new(cap);
        assert_eq!(g.inflate(&gz(&vec![b'x'; cap])).unwrap().len(), cap);
        assert!(matches!(
            g.inflate(&gz(&vec![b'x'; cap + 1])),
            Err(GunzipError::TooLarge { .. })
        ));
    }

    #[test]
    fn corrupt_frames_are_errors() {
        let mut g = Gunzip::new(DEFAULT_MAX_FRAME_BYTES);
        let good = gz(b"{\"ping\":1618678073643}");
        for (i, bad) in [
            b"{\"ping\":1}".to_vec(),
            good[..good.len() / 2].to_vec(),
            vec![],
            vec![0x1f, 0x8b, 0x08],
        ]
        .iter()
        .enumerate()
        {
            assert!(
                matches!(g.inflate(bad), Err(GunzipError::Corrupt { .. })),
                "case {i}: {:?}",
                g.inflate(bad)
            );
        }
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        for (input, want) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (&[0x1f, 0x8b, 0x08][..], "H4sI"),
        ] {
            assert_eq!(base64(input), want);
            assert_eq!(base64_decode(want), input);
        }
    }
}
