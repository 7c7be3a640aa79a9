//! The quarantine: where lines the server refuses go, so that a refusal is neither retried
//! forever nor dropped silently (contract 7).
//!
//! Files are `{quarantine_dir}/{sink}-{YYYYMMDD}.lp` (UTC day), appended to. Each refused
//! request adds a comment line `# <unix ns> HTTP <status>: <reason>` and then its lines. Line
//! protocol skips `#` lines, so after fixing the cause (a schema conflict, a missing database)
//! a file replays as is: `curl --data-binary @file 'http://host:8086/write?db=..&precision=ns'`
//! or `influx -import`. Re-sending a line that was in fact stored is harmless: the point has
//! the same identity and values (contract 4).

use std::io::Write;
use std::path::{Path, PathBuf};

use tracing::error;

/// Appends refused lines to the day's quarantine file and counts them.
#[derive(Debug)]
pub struct Quarantine {
    dir: PathBuf,
    /// The sink name, made safe for a file name.
    prefix: String,
    points: u64,
}

impl Quarantine {
    pub fn new(dir: impl Into<PathBuf>, sink: &str) -> Self {
        let prefix = sink.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        Quarantine { dir: dir.into(), prefix, points: 0 }
    }

    /// Points quarantined since start. The sink has no handle on `SinkStats`, so this count is
    /// logged with every quarantine instead.
    pub fn points(&self) -> u64 {
        self.points
    }

    /// Appends `lines` under a comment naming the status and the reason, and fsyncs before
    /// returning: once the sink reports a batch as rejected, the buffer forgets it, so the file
    /// must already be on disk. Returns the file's path.
    pub async fn put(&mut self, status: u16, reason: &str, lines: &[&[u8]]) -> std::io::Result<PathBuf> {
        let now = ds_api::clock::now_ns();
        let path = self.dir.join(format!("{}-{}.lp", self.prefix, yyyymmdd(now.div_euclid(1_000_000_000))));
        let reason = crate::rejected::one_line(reason, 2_000);
        let mut text = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum::<usize>() + reason.len() + 48);
        writeln!(text, "# {now} HTTP {status}: {reason}")?;
        for line in lines {
            text.extend_from_slice(line);
            text.push(b'\n');
        }
        let (dir, file) = (self.dir.clone(), path.clone());
        tokio::task::spawn_blocking(move || append_durably(&dir, &file, &text))
            .await
            .map_err(|e| std::io::Error::other(format!("quarantine writer stopped: {e}")))??;
        self.points += lines.len() as u64;
        error!(
            path = %path.display(),
            points = lines.len(),
            status,
            %reason,
            points_quarantined_total = self.points,
            "InfluxDB refused points; they are in the quarantine file (fix the cause, then replay the file)"
        );
        Ok(path)
    }
}

fn append_durably(dir: &Path, path: &Path, text: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let created = !path.exists();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(text)?;
    f.sync_all()?;
    if created {
        // A new file's directory entry is only durable once the directory is synced. Not
        // possible on every platform (Windows cannot open a directory); the data itself is.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// `YYYYMMDD` of a unix time in seconds, UTC.
pub fn yyyymmdd(unix_secs: i64) -> String {
    ds_api::clock::yyyymmdd(unix_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(yyyymmdd(0), "19700101");
        assert_eq!(yyyymmdd(951_782_400), "20000229");
        assert_eq!(yyyymmdd(1_709_251_199), "20240229");
        assert_eq!(yyyymmdd(1_709_251_200), "20240301");
        assert_eq!(yyyymmdd(-1), "19691231");
    }

    #[tokio::test]
    async fn appends_comment_and_lines_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Quarantine::new(dir.path().join("q"), "my sink");
        let p1 = q.put(400, "bad\nthing", &[b"m x=1 1", b"m x=2 2"]).await.unwrap();
        let p2 = q.put(404, "database not found", &[b"m x=3 3"]).await.unwrap();
        assert_eq!(p1, p2);
        let name = p1.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("my_sink-") && name.ends_with(".lp") && name.len() == "my_sink-YYYYMMDD.lp".len(), "{name}");
        let text = std::fs::read_to_string(&p1).unwrap();
        let l: Vec<_> = text.lines().collect();
        assert_eq!(l.len(), 5, "{text}");
        assert!(l[0].starts_with("# ") && l[0].ends_with(" HTTP 400: bad thing"), "{}", l[0]);
        assert_eq!(&l[1..3], ["m x=1 1", "m x=2 2"]);
        assert!(l[3].ends_with(" HTTP 404: database not found"));
        assert_eq!(l[4], "m x=3 3");
        assert_eq!(q.points(), 3);
    }
}
