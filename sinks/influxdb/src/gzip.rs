//! gzip request bodies from one deflate state per thread, reset between bodies.
//!
//! A fresh `GzEncoder` per write allocates zlib-rs's deflate state (about 300 KiB of window
//! and hash tables, above glibc's mmap threshold, so new pages every time) and zero-fills it:
//! at 10 symbols that was nearly every page fault data-storage took (465 in 20 s; 163 with
//! the state kept). The state is kept per thread instead (the runtime's two workers: about
//! 600 KiB for the process's life) and reset for each body, which clears only the hash
//! heads. The gzip frame around the raw deflate stream (RFC 1952: a 10-byte header, then the
//! CRC-32 and length of the input) is written here.

use std::cell::Cell;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// ID1 ID2, CM = deflate, no flags, no modification time, XFL 4 (fastest), OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];

/// Room added to the output whenever the encoder runs short of it.
const GROW: usize = 64 * 1024;

thread_local! {
    /// The thread's deflate state between bodies: taken by a [`GzipBody`], put back by its
    /// `finish`.
    static DEFLATE: Cell<Option<Compress>> = const { Cell::new(None) };
}

/// One gzip file being written: [`Self::write`] the input in pieces, then [`Self::finish`].
pub struct GzipBody {
    z: Compress,
    crc: Crc,
    out: Vec<u8>,
}

impl GzipBody {
    /// `input_len` is the total input to come, to size the output (line protocol compresses
    /// several times at the fastest level).
    pub fn new(input_len: usize) -> Self {
        let z = match DEFLATE.with(Cell::take) {
            Some(mut z) => {
                z.reset();
                z
            }
            None => new_state(),
        };
        let mut out = Vec::with_capacity(input_len / 4 + 64);
        out.extend_from_slice(&HEADER);
        GzipBody { z, crc: Crc::new(), out }
    }

    pub fn write(&mut self, input: &[u8]) {
        self.crc.update(input);
        deflate(&mut self.z, input, &mut self.out, FlushCompress::None);
    }

    /// The whole file; the state goes back to the thread for the next body.
    pub fn finish(mut self) -> Vec<u8> {
        deflate(&mut self.z, &[], &mut self.out, FlushCompress::Finish);
        self.out.extend_from_slice(&self.crc.sum().to_le_bytes());
        self.out.extend_from_slice(&self.crc.amount().to_le_bytes());
        DEFLATE.with(|cell| cell.set(Some(self.z)));
        self.out
    }
}

/// Raw deflate (no zlib header: gzip has its own), level "fast".
fn new_state() -> Compress {
    Compress::new(Compression::fast(), false)
}

/// Feeds `input` to the encoder, growing `out` as it fills; with `Finish`, until the stream
/// is ended.
fn deflate(z: &mut Compress, mut input: &[u8], out: &mut Vec<u8>, flush: FlushCompress) {
    loop {
        if out.capacity() - out.len() < GROW / 4 {
            out.reserve(GROW);
        }
        let before = z.total_in();
        let status = z.compress_vec(input, out, flush);
        input = &input[(z.total_in() - before) as usize..];
        match status {
            Ok(Status::StreamEnd) => return,
            Ok(_) if flush == FlushCompress::None && input.is_empty() => return,
            Ok(_) => {}
            // Deflate into memory has no failure mode but a misuse of the state. A body cut
            // short by one is refused by InfluxDB, and refused lines go to the quarantine
            // with their reason (`crate::quarantine`), not to the floor.
            Err(e) => {
                tracing::error!(error = %e, "gzip of a write body failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(z: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(z).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn bodies_one_after_another_each_decode_to_their_input() {
        // The state is reused: each body must be a complete gzip file of its own input only,
        // whatever came before it (sizes across the 64 KiB growth step, empty included).
        let text = |n: usize, seed: usize| -> Vec<u8> {
            (0..n).flat_map(|i| format!("book_delta,symbol=S{} price=1.{},qty=2 {}\n", (i + seed) % 7, i * seed, i).into_bytes()).collect()
        };
        for (n, seed) in [(0, 1), (1, 2), (3_000, 3), (0, 4), (40_000, 5), (2, 6)] {
            let input = text(n, seed);
            let mut body = GzipBody::new(input.len());
            for chunk in input.chunks(50_000) {
                body.write(chunk);
            }
            let z = body.finish();
            assert_eq!(gunzip(&z), input, "{n} lines");
            assert_eq!(&z[..3], &[0x1f, 0x8b, 8]);
            if n > 1000 {
                assert!(z.len() * 3 < input.len(), "{n} lines: {} bytes of {}", z.len(), input.len());
            }
        }
    }

    #[test]
    fn the_trailer_holds_the_crc_and_length_of_the_input() {
        let input = b"m x=1 1\n".repeat(1000);
        let mut body = GzipBody::new(input.len());
        body.write(&input);
        let z = body.finish();
        let mut crc = Crc::new();
        crc.update(&input);
        let n = z.len();
        assert_eq!(z[n - 8..n - 4], crc.sum().to_le_bytes());
        assert_eq!(z[n - 4..], (input.len() as u32).to_le_bytes());
    }
}
