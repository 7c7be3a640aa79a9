//! `Spool`: the size-bounded on-disk queue between a buffer and a sink that cannot keep up.
//!
//! One file per batch, `{seq:020}-{points}.lp` in the sink's spool directory: line protocol
//! exactly as it would have been sent, so an operator can also load a file by hand. A batch is
//! written to `.tmp`, fsynced, then renamed, so a file that exists is complete (a crash leaves
//! at most a `.tmp`, removed at the next start). Files are read oldest first; a file is deleted
//! only after the sink stored it, so a crash between the two re-sends a batch, which is
//! harmless: every point has a unique, deterministic identity (contract 4).
//!
//! Sequence numbers start in the middle of the u64 range so a batch can also be put *in front*
//! of the queue (the batch a failing sink was working on is older than everything spooled).
//!
//! When the next batch would take the spool past `max_bytes`, the [`SpoolFull`] policy decides
//! which data goes; every dropped point is counted and logged by the caller.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// What to give up when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolFull {
    /// Delete the oldest spooled batches to make room: the store keeps the most recent data.
    DropOldest,
    /// Refuse the new batch: the store keeps a contiguous history up to the outage.
    DropNewest,
}

/// First sequence number of an empty spool.
const SEQ_BASE: u64 = 1 << 40;

#[derive(Debug, Clone)]
pub struct SpoolFile {
    pub seq: u64,
    pub points: usize,
    pub bytes: u64,
}

/// The on-disk queue. Not thread-safe by itself: the buffer keeps it behind a mutex.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    policy: SpoolFull,
    files: VecDeque<SpoolFile>,
    bytes: u64,
    points: usize,
}

/// Result of adding a batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// The new batch is on disk.
    pub stored: bool,
    /// Points dropped by the full-spool policy (the new batch's or older ones).
    pub dropped_points: usize,
    pub dropped_batches: usize,
}

impl Spool {
    /// Opens (creating) the spool directory and takes over what a previous run left there.
    pub fn open(dir: &Path, max_bytes: u64, policy: SpoolFull) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut files = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // Never acknowledged: the batch was still in memory when the process died.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(stem) = name.strip_suffix(".lp") else { continue };
            let Some((seq, points)) = stem.split_once('-') else { continue };
            let (Ok(seq), Ok(points)) = (seq.parse::<u64>(), points.parse::<usize>()) else { continue };
            files.push(SpoolFile { seq, points, bytes: entry.metadata()?.len() });
        }
        files.sort_by_key(|f| f.seq);
        let bytes = files.iter().map(|f| f.bytes).sum();
        let points = files.iter().map(|f| f.points).sum();
        Ok(Spool { dir: dir.to_path_buf(), max_bytes, policy, files: files.into(), bytes, points })
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
    pub fn len(&self) -> usize {
        self.files.len()
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    pub fn points(&self) -> usize {
        self.points
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, f: &SpoolFile) -> PathBuf {
        self.dir.join(format!("{:020}-{}.lp", f.seq, f.points))
    }

    /// Appends a batch (newest). Applies the full-spool policy first.
    pub fn push_back(&mut self, lines: &[u8], points: usize) -> io::Result<Pushed> {
        let seq = self.files.back().map(|f| f.seq + 1).unwrap_or(SEQ_BASE);
        self.push(seq, lines, points, false)
    }

    /// Puts a batch in front of everything spooled (it is older).
    pub fn push_front(&mut self, lines: &[u8], points: usize) -> io::Result<Pushed> {
        let seq = self.files.front().map(|f| f.seq - 1).unwrap_or(SEQ_BASE);
        self.push(seq, lines, points, true)
    }

    fn push(&mut self, seq: u64, lines: &[u8], points: usize, front: bool) -> io::Result<Pushed> {
        let size = lines.len() as u64;
        let mut out = Pushed { stored: true, ..Pushed::default() };
        if self.bytes + size > self.max_bytes {
            match self.policy {
                SpoolFull::DropNewest => {
                    return Ok(Pushed { stored: false, dropped_points: points, dropped_batches: 1 });
                }
                SpoolFull::DropOldest => {
                    while self.bytes + size > self.max_bytes {
                        // The batch itself is the oldest when it goes in front.
                        if front || self.files.is_empty() {
                            out.stored = false;
                            out.dropped_points += points;
                            out.dropped_batches += 1;
                            return Ok(out);
                        }
                        let (p, _) = self.pop_front_file()?;
                        out.dropped_points += p;
                        out.dropped_batches += 1;
                    }
                }
            }
        }
        let file = SpoolFile { seq, points, bytes: size };
        let path = self.path(&file);
        let tmp = path.with_extension("lp.tmp");
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(lines)?;
            f.sync_data()?;
        }
        fs::rename(&tmp, &path)?;
        self.bytes += size;
        self.points += points;
        if front {
            self.files.push_front(file);
        } else {
            self.files.push_back(file);
        }
        Ok(out)
    }

    /// Reads the oldest batch without removing it.
    pub fn read_front(&self) -> io::Result<Option<(Vec<u8>, usize)>> {
        match self.files.front() {
            None => Ok(None),
            Some(f) => Ok(Some((fs::read(self.path(f))?, f.points))),
        }
    }

    /// Deletes the oldest batch (after the sink stored it); returns its points and bytes.
    pub fn pop_front_file(&mut self) -> io::Result<(usize, u64)> {
        let Some(f) = self.files.pop_front() else { return Ok((0, 0)) };
        match fs::remove_file(self.path(&f)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                self.files.push_front(f);
                return Err(e);
            }
        }
        self.bytes -= f.bytes;
        self.points -= f.points;
        Ok((f.points, f.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ds-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn fifo_with_front_insertion_survives_reopen() {
        let d = dir("fifo");
        let mut s = Spool::open(&d, 1 << 20, SpoolFull::DropOldest).unwrap();
        s.push_back(b"b\n", 1).unwrap();
        s.push_back(b"c\nc\n", 2).unwrap();
        s.push_front(b"a\n", 1).unwrap();
        fs::write(d.join("junk.lp.tmp"), b"partial").unwrap();
        drop(s);
        let mut s = Spool::open(&d, 1 << 20, SpoolFull::DropOldest).unwrap();
        assert_eq!((s.len(), s.points(), s.bytes()), (3, 4, 8));
        let mut got = Vec::new();
        while let Some((lines, _)) = s.read_front().unwrap() {
            got.push(String::from_utf8(lines).unwrap());
            s.pop_front_file().unwrap();
        }
        assert_eq!(got, ["a\n", "b\n", "c\nc\n"]);
        assert!(!d.join("junk.lp.tmp").exists(), "partial files are removed");
        let _ = fs::remove_dir_all(d);
    }

    #[test]
    fn full_spool_policies() {
        let d = dir("oldest");
        let mut s = Spool::open(&d, 10, SpoolFull::DropOldest).unwrap();
        let ok = Pushed { stored: true, dropped_points: 0, dropped_batches: 0 };
        assert_eq!(s.push_back(b"1111\n", 1).unwrap(), ok);
        assert_eq!(s.push_back(b"2222\n", 1).unwrap(), ok);
        assert_eq!(s.push_back(b"3333\n", 3).unwrap(), Pushed { stored: true, dropped_points: 1, dropped_batches: 1 });
        assert_eq!(String::from_utf8(s.read_front().unwrap().unwrap().0).unwrap(), "2222\n");
        assert_eq!(s.points(), 4);
        let _ = fs::remove_dir_all(d);

        let d = dir("newest");
        let mut s = Spool::open(&d, 10, SpoolFull::DropNewest).unwrap();
        s.push_back(b"1111\n", 1).unwrap();
        s.push_back(b"2222\n", 1).unwrap();
        assert_eq!(s.push_back(b"3333\n", 3).unwrap(), Pushed { stored: false, dropped_points: 3, dropped_batches: 1 });
        assert_eq!(String::from_utf8(s.read_front().unwrap().unwrap().0).unwrap(), "1111\n");
        assert_eq!(s.points(), 2);
        let _ = fs::remove_dir_all(d);
    }
}
