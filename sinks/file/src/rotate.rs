//! Files and rotation: which file a batch goes to, when a new one starts, when bytes reach the
//! disk. Synchronous on purpose: the async sink runs it on the blocking pool.
//!
//! Names are `{dir}/{sink}-{YYYYMMDD-HHMMSS}.lp` (`.lp.gz` with gzip), UTC, the time the file
//! was opened. Files are always created new, never appended to: a file from an earlier run is
//! never touched, and a gzip file is always one complete stream. A second file opened in the
//! same second gets `_001`, `_002`, ... before the extension, so `ls` order is write order.
//!
//! Rotation happens before a batch is written, so a batch is never split across files:
//! - plain files: when the batch would take the file past `max_file_bytes` (a file exceeds it
//!   only when one batch alone is larger);
//! - gzip files: when the compressed size already reached `max_file_bytes` (the compressed size
//!   of the next batch is not known in advance);
//! - with `rotate_hourly`, when the UTC hour differs from the file's.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flate2::write::GzEncoder;
use flate2::Compression;
use tracing::info;

use crate::config::FileConfig;

/// A file that counts the bytes that reach it (the on-disk size of a gzip stream).
struct Counted {
    file: File,
    bytes: u64,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

enum Output {
    /// Written straight to the file: batches arrive as one large slice, a `BufWriter` would
    /// only add a copy.
    Plain(Counted),
    /// Boxed: the zlib-rs encoder state is kilobytes, the plain file a few words.
    Gzip(Box<GzEncoder<Counted>>),
}

struct OpenFile {
    path: PathBuf,
    out: Output,
    /// UTC hour (unix seconds / 3600) the file was opened in.
    hour: i64,
    /// Bytes written since the last fsync.
    unsynced: bool,
}

impl OpenFile {
    fn bytes(&self) -> u64 {
        match &self.out {
            Output::Plain(c) => c.bytes,
            Output::Gzip(z) => z.get_ref().bytes,
        }
    }

    /// Pushes everything written so far to the disk. A gzip stream is sync-flushed first, so
    /// the file decodes up to this point even if the process dies before the trailer.
    fn sync(&mut self) -> io::Result<()> {
        let file = match &mut self.out {
            Output::Plain(c) => &c.file,
            Output::Gzip(z) => {
                z.flush()?;
                &z.get_ref().file
            }
        };
        file.sync_data()?;
        self.unsynced = false;
        Ok(())
    }

    /// Ends the file: finishes the gzip stream (trailer included) and fsyncs.
    fn finish(self) -> io::Result<(PathBuf, u64)> {
        let counted = match self.out {
            Output::Plain(c) => c,
            Output::Gzip(z) => z.finish()?,
        };
        counted.file.sync_all()?;
        Ok((self.path, counted.bytes))
    }
}

/// The current file and the policy around it.
pub struct Rotator {
    cfg: FileConfig,
    current: Option<OpenFile>,
    last_sync: Instant,
    /// fsyncs done (for tests of the fsync throttle).
    pub(crate) syncs: u64,
}

impl Rotator {
    pub fn new(cfg: FileConfig) -> Self {
        Rotator { cfg, current: None, last_sync: Instant::now(), syncs: 0 }
    }

    /// The file being written, if any.
    pub fn current_path(&self) -> Option<&Path> {
        self.current.as_ref().map(|f| f.path.as_path())
    }

    /// Appends one batch at wall-clock time `now`, rotating first when needed. On an error the
    /// current file is abandoned (its last line may be partial), so the buffer's retry of the
    /// batch starts a fresh file instead of appending to a torn line.
    pub fn write(&mut self, lines: &[u8], now: SystemTime) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let result = self.write_inner(lines, now);
        if result.is_err() {
            if let Some(f) = self.current.take() {
                let path = f.path.clone();
                let _ = f.finish();
                tracing::error!(path = %path.display(), "write failed; the file is closed and the next write starts a new one");
            }
        }
        result
    }

    fn write_inner(&mut self, lines: &[u8], now: SystemTime) -> io::Result<()> {
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs() as i64;
        let hour = secs.div_euclid(3600);
        if let Some(f) = &self.current {
            let bytes = f.bytes();
            let full = match f.out {
                Output::Plain(_) => bytes > 0 && bytes + lines.len() as u64 > self.cfg.max_file_bytes,
                Output::Gzip(_) => bytes >= self.cfg.max_file_bytes,
            };
            let new_hour = self.cfg.rotate_hourly && f.hour != hour;
            if full || new_hour {
                self.close_current(if full { "size" } else { "hour" })?;
            }
        }
        if self.current.is_none() {
            self.current = Some(self.open(secs, hour)?);
        }
        let f = self.current.as_mut().expect("opened above");
        match &mut f.out {
            Output::Plain(c) => c.write_all(lines)?,
            Output::Gzip(z) => z.write_all(lines)?,
        }
        f.unsynced = true;
        if self.last_sync.elapsed() >= self.cfg.fsync_every {
            f.sync()?;
            self.syncs += 1;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    /// Finishes the current file (gzip trailer, fsync). Called on rotation and at stop.
    pub fn close(&mut self) -> io::Result<()> {
        self.close_current("close")
    }

    fn close_current(&mut self, why: &str) -> io::Result<()> {
        if let Some(f) = self.current.take() {
            let unsynced = f.unsynced;
            let (path, bytes) = f.finish()?;
            if unsynced {
                self.syncs += 1;
            }
            self.last_sync = Instant::now();
            info!(path = %path.display(), bytes, reason = why, "file closed");
        }
        Ok(())
    }

    fn open(&mut self, secs: i64, hour: i64) -> io::Result<OpenFile> {
        std::fs::create_dir_all(&self.cfg.dir)?;
        let stem = format!("{}-{}", self.cfg.prefix, timestamp_name(secs));
        let ext = if self.cfg.gzip { "lp.gz" } else { "lp" };
        let mut n = 0u32;
        let (path, file) = loop {
            let name = if n == 0 { format!("{stem}.{ext}") } else { format!("{stem}_{n:03}.{ext}") };
            let path = self.cfg.dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100_000 => n += 1,
                Err(e) => return Err(e),
            }
        };
        // The new directory entry survives a crash only once the directory is synced; not
        // possible everywhere (Windows cannot open a directory), the data itself still is.
        if let Ok(d) = File::open(&self.cfg.dir) {
            let _ = d.sync_all();
        }
        info!(path = %path.display(), "writing line protocol to a new file");
        let counted = Counted { file, bytes: 0 };
        let out = if self.cfg.gzip { Output::Gzip(Box::new(GzEncoder::new(counted, Compression::default()))) } else { Output::Plain(counted) };
        Ok(OpenFile { path, out, hour, unsynced: false })
    }
}

/// `YYYYMMDD-HHMMSS` of a unix time, UTC.
pub fn timestamp_name(unix_secs: i64) -> String {
    ds_api::clock::yyyymmdd_hhmmss(unix_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_names() {
        assert_eq!(timestamp_name(0), "19700101-000000");
        assert_eq!(timestamp_name(1_709_251_199), "20240229-235959");
        assert_eq!(timestamp_name(1_709_251_200 + 3_723), "20240301-010203");
    }
}
