//! Raw capture: every frame a feed receives, with its receive time, in rotating gzip JSONL
//! files, so that `data-storage replay` can re-derive the stored points after a parser fix.
//!
//! One record per line:
//!
//! ```text
//! {"t":1732900000123456789,"conn":0,"kind":"ws","data":"{\"stream\":...}"}
//! {"t":1732900000223456789,"conn":0,"kind":"ws","data":{"b64":"H4sIAAAA..."}}       binary frame
//! {"t":1732900000323456789,"conn":0,"kind":"rest","url":"https://.../api/v3/depth?symbol=BTCUSDT&limit=1000","data":"{...}"}
//! {"t":1732900000423456789,"conn":0,"kind":"close","reason":"shutdown"}
//! ```
//!
//! `ws` records are written by the shared websocket session before the connector sees the
//! frame; `rest` records by a connector at the moment it applies a REST answer (so their order
//! relative to the frames is the order the live run used); `close` records when a connection
//! ends (`reason` `shutdown` or `disconnect`), so a replay marks the same gaps at the same time.
//!
//! Capture never blocks the read loop (contract 5): records go through a bounded channel to a
//! writer thread; when the channel is full a record is dropped and counted
//! ([`Capture::dropped`]), the data path is untouched.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use crate::base64;
use crate::clock;

/// Records queued between the read loops and the writer thread before new ones are dropped.
const QUEUE_RECORDS: usize = 65_536;
/// A capture file is closed and a new one started past this many uncompressed bytes.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 30;
/// The writer flushes (gzip sync flush) at least this often, so a running capture is readable.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// First two bytes of a gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// What a record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKind {
    Ws,
    Rest,
    Close,
}

impl RecordKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            RecordKind::Ws => "ws",
            RecordKind::Rest => "rest",
            RecordKind::Close => "close",
        }
    }
}

/// A frame's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Text(String),
    Binary(Vec<u8>),
    None,
}

/// One record of a capture file (or one line of a plain JSONL file: `t` is `None` then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRecord {
    /// Receive time in ns; `None` for plain one-frame-per-line files.
    pub t: Option<i64>,
    /// Connection number within the feed (`feed#n` in logs).
    pub conn: u32,
    pub kind: RecordKind,
    /// The request URL of a `rest` record.
    pub url: Option<String>,
    /// `close` records: `shutdown` or `disconnect`.
    pub reason: Option<String>,
    pub data: Payload,
}

impl CaptureRecord {
    /// The text payload, if any.
    pub fn text(&self) -> Option<&str> {
        match &self.data {
            Payload::Text(t) => Some(t),
            _ => None,
        }
    }
}

enum Msg {
    Ws { t: i64, conn: u32, frame: Message },
    Rest { t: i64, conn: u32, url: String, body: String },
    Close { t: i64, conn: u32, reason: &'static str },
    Stop,
}

/// A running capture of one feed.
#[derive(Debug)]
pub struct Capture {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
    recorded: AtomicU64,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("capture record")
    }
}

impl Capture {
    /// Starts capturing feed `feed` into `dir` (created if missing), one file at a time named
    /// `{feed}-{YYYYMMDD-HHMMSS}.jsonl.gz`, rotated by size and by UTC hour.
    pub fn start(dir: &Path, feed: &str, max_file_bytes: u64) -> io::Result<Arc<Capture>> {
        std::fs::create_dir_all(dir)?;
        let (tx, rx) = sync_channel::<Msg>(QUEUE_RECORDS);
        let mut out = RotatingFile { dir: dir.to_path_buf(), feed: feed.to_string(), max_bytes: max_file_bytes.max(1), file: None, bytes: 0, hour: 0 };
        // Open the first file now, so a bad directory is reported at start.
        out.rotate(clock::now_ns())?;
        let handle = std::thread::Builder::new().name(format!("capture-{feed}")).spawn(move || {
            let mut line = Vec::with_capacity(4096);
            loop {
                match rx.recv_timeout(FLUSH_EVERY) {
                    Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                    Ok(msg) => {
                        line.clear();
                        let t = encode(&msg, &mut line);
                        if let Err(e) = out.write(t, &line) {
                            tracing::error!(error = %e, "capture write failed; this record is lost");
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(e) = out.flush() {
                            tracing::error!(error = %e, "capture flush failed");
                        }
                    }
                }
            }
            if let Err(e) = out.finish() {
                tracing::error!(error = %e, "capture close failed");
            }
        })?;
        Ok(Arc::new(Capture { tx, dropped: AtomicU64::new(0), recorded: AtomicU64::new(0), writer: Mutex::new(Some(handle)) }))
    }

    fn send(&self, msg: Msg) {
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.recorded.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                if self.dropped.fetch_add(1, Ordering::Relaxed) % 10_000 == 0 {
                    tracing::warn!(dropped = self.dropped.load(Ordering::Relaxed), "capture queue full: capture records dropped (stored data is not affected)");
                }
            }
        }
    }

    /// A websocket frame as received.
    pub fn ws(&self, conn: u32, t: i64, frame: &Message) {
        self.send(Msg::Ws { t, conn, frame: frame.clone() });
    }

    /// A REST answer, at the moment the connector applies it.
    pub fn rest(&self, conn: u32, t: i64, url: &str, body: &str) {
        self.send(Msg::Rest { t, conn, url: url.to_string(), body: body.to_string() });
    }

    /// A connection ended (`shutdown` or `disconnect`).
    pub fn close(&self, conn: u32, t: i64, shutdown: bool) {
        self.send(Msg::Close { t, conn, reason: if shutdown { "shutdown" } else { "disconnect" } });
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records queued for writing.
    pub fn recorded(&self) -> u64 {
        self.recorded.load(Ordering::Relaxed)
    }

    /// Writes what is queued, closes the file (gzip trailer) and stops the writer. Blocking:
    /// call it after the feed's listener returned. Idempotent.
    pub fn stop(&self) {
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            // `send` (not `try_send`): the stop marker must get in behind the last records.
            let _ = self.tx.send(Msg::Stop);
            let _ = h.join();
        }
    }
}

/// Where the shared websocket session finds a feed's capture, if the feed has one. It lives in
/// [`crate::FeedStats`] because every session and connector already holds that, so capture
/// reaches them all without changing any constructor.
#[derive(Debug, Default)]
pub struct CaptureSlot(OnceLock<Arc<Capture>>);

impl CaptureSlot {
    pub fn install(&self, capture: Arc<Capture>) {
        let _ = self.0.set(capture);
    }

    pub fn get(&self) -> Option<&Arc<Capture>> {
        self.0.get()
    }
}

/// Connection number from a session name `feed#n` (0 when there is none).
pub fn conn_number(name: &str) -> u32 {
    name.rsplit_once('#').and_then(|(_, n)| n.parse().ok()).unwrap_or(0)
}

fn encode(msg: &Msg, out: &mut Vec<u8>) -> i64 {
    let (t, conn, kind) = match msg {
        Msg::Ws { t, conn, .. } => (*t, *conn, RecordKind::Ws),
        Msg::Rest { t, conn, .. } => (*t, *conn, RecordKind::Rest),
        Msg::Close { t, conn, .. } => (*t, *conn, RecordKind::Close),
        Msg::Stop => return 0,
    };
    let _ = write!(out, "{{\"t\":{t},\"conn\":{conn},\"kind\":\"{}\"", kind.as_str());
    match msg {
        Msg::Ws { frame, .. } => match frame {
            Message::Text(s) => json_string_field(out, "data", s.as_str()),
            Message::Binary(b) => {
                out.extend_from_slice(b",\"data\":{\"b64\":\"");
                out.extend_from_slice(base64::encode(b).as_bytes());
                out.extend_from_slice(b"\"}");
            }
            _ => {}
        },
        Msg::Rest { url, body, .. } => {
            json_string_field(out, "url", url);
            json_string_field(out, "data", body);
        }
        Msg::Close { reason, .. } => json_string_field(out, "reason", reason),
        Msg::Stop => {}
    }
    out.extend_from_slice(b"}\n");
    t
}

fn json_string_field(out: &mut Vec<u8>, key: &str, value: &str) {
    let _ = write!(out, ",\"{key}\":");
    // serde_json escapes exactly as JSON requires; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

struct RotatingFile {
    dir: PathBuf,
    feed: String,
    max_bytes: u64,
    file: Option<GzEncoder<BufWriter<File>>>,
    bytes: u64,
    hour: i64,
}

const NS_PER_HOUR: i64 = 3_600_000_000_000;

impl RotatingFile {
    fn write(&mut self, t: i64, line: &[u8]) -> io::Result<()> {
        let now = clock::now_ns();
        if self.file.is_none() || self.bytes + line.len() as u64 > self.max_bytes || now.div_euclid(NS_PER_HOUR) != self.hour {
            self.rotate(now.max(t))?;
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(line)?;
            self.bytes += line.len() as u64;
        }
        Ok(())
    }

    fn rotate(&mut self, now_ns: i64) -> io::Result<()> {
        self.finish()?;
        let stamp = clock::yyyymmdd_hhmmss(now_ns.div_euclid(1_000_000_000));
        let mut path = self.dir.join(format!("{}-{stamp}.jsonl.gz", self.feed));
        // Bounded: a name is free after at most a few tries within one second.
        for n in 1..1_000 {
            if !path.exists() {
                break;
            }
            path = self.dir.join(format!("{}-{stamp}-{n}.jsonl.gz", self.feed));
        }
        let file = File::create(&path)?;
        self.file = Some(GzEncoder::new(BufWriter::new(file), Compression::fast()));
        self.bytes = 0;
        self.hour = clock::now_ns().div_euclid(NS_PER_HOUR);
        tracing::info!(file = %path.display(), "capture file started");
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        if let Some(f) = self.file.take() {
            let mut inner = f.finish()?;
            inner.flush()?;
            inner.get_ref().sync_all()?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct RecordWire {
    t: i64,
    #[serde(default)]
    conn: u32,
    kind: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

/// Parses one line: a capture record, or else (plain JSONL as in ../shared/fixtures) the
/// line itself is a text frame without a receive time.
pub fn parse_line(line: &str) -> Result<CaptureRecord, String> {
    let trimmed = line.trim_end_matches(['\r', '\n']);
    if trimmed.starts_with("{\"t\":") {
        if let Ok(w) = serde_json::from_str::<RecordWire>(trimmed) {
            let kind = match w.kind.as_str() {
                "ws" => RecordKind::Ws,
                "rest" => RecordKind::Rest,
                "close" => RecordKind::Close,
                other => return Err(format!("unknown record kind {other:?}")),
            };
            let data = match w.data {
                None => Payload::None,
                Some(serde_json::Value::String(s)) => Payload::Text(s),
                Some(serde_json::Value::Object(o)) => match o.get("b64").and_then(|v| v.as_str()) {
                    Some(b) => Payload::Binary(base64::decode(b).map_err(|e| format!("bad b64 payload: {e}"))?),
                    None => return Err("data object without b64".into()),
                },
                Some(other) => return Err(format!("unexpected data {other}")),
            };
            return Ok(CaptureRecord { t: Some(w.t), conn: w.conn, kind, url: w.url, reason: w.reason, data });
        }
    }
    Ok(CaptureRecord { t: None, conn: 0, kind: RecordKind::Ws, url: None, reason: None, data: Payload::Text(trimmed.to_string()) })
}

/// Reads a capture or plain JSONL file, gzip or not (told by the first two bytes), one
/// record per non-empty line.
pub struct RecordReader {
    lines: Box<dyn BufRead>,
    buf: String,
    line_no: u64,
    /// File bytes read so far (compressed bytes for a gzip file) and the file's size: the
    /// progress of a long replay.
    read: Arc<AtomicU64>,
    size: u64,
}

impl RecordReader {
    pub fn open(path: &Path) -> io::Result<RecordReader> {
        let mut f = File::open(path)?;
        let mut magic = [0u8; 2];
        let n = f.read(&mut magic)?;
        let f = File::open(path)?;
        let size = f.metadata()?.len();
        let read = Arc::new(AtomicU64::new(0));
        let f = CountingRead { inner: f, read: read.clone() };
        let lines: Box<dyn BufRead> = if n == 2 && magic == GZIP_MAGIC {
            Box::new(BufReader::with_capacity(1 << 20, MultiGzDecoder::new(BufReader::new(f))))
        } else {
            Box::new(BufReader::with_capacity(1 << 20, f))
        };
        Ok(RecordReader { lines, buf: String::new(), line_no: 0, read, size })
    }

    /// (file bytes read, file size): how far a replay is.
    pub fn progress(&self) -> (u64, u64) {
        (self.read.load(Ordering::Relaxed), self.size)
    }
}

/// Counts the bytes taken from the file, under any decompression.
struct CountingRead {
    inner: File,
    read: Arc<AtomicU64>,
}

impl Read for CountingRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Iterator for RecordReader {
    type Item = Result<CaptureRecord, String>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            match self.lines.read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {
                    self.line_no += 1;
                    if self.buf.trim().is_empty() {
                        continue;
                    }
                    return Some(parse_line(&self.buf).map_err(|e| format!("line {}: {e}", self.line_no)));
                }
                Err(e) => return Some(Err(format!("line {}: {e}", self.line_no + 1))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_a_gzip_file() {
        let dir = tempdir();
        let cap = Capture::start(&dir, "f", DEFAULT_MAX_FILE_BYTES).unwrap();
        cap.ws(1, 10, &Message::Text("{\"a\":\"x\\\"y\"}".into()));
        cap.ws(1, 11, &Message::Binary(vec![0u8, 255, 1, 2].into()));
        cap.rest(0, 12, "http://h/api?symbol=X", "{\"lastUpdateId\":1}");
        cap.close(1, 13, true);
        cap.stop();
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1);
        let recs: Vec<_> = RecordReader::open(&files[0]).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[0].text(), Some("{\"a\":\"x\\\"y\"}"));
        assert_eq!((recs[0].t, recs[0].conn, &recs[0].kind), (Some(10), 1, &RecordKind::Ws));
        assert_eq!(recs[1].data, Payload::Binary(vec![0, 255, 1, 2]));
        assert_eq!(recs[2].url.as_deref(), Some("http://h/api?symbol=X"));
        assert_eq!(recs[2].kind, RecordKind::Rest);
        assert_eq!(recs[3].reason.as_deref(), Some("shutdown"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_plain_line_is_a_frame_without_time() {
        let r = parse_line("{\"stream\":\"x\",\"data\":{}}\n").unwrap();
        assert_eq!(r.t, None);
        assert_eq!(r.text(), Some("{\"stream\":\"x\",\"data\":{}}"));
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ds-capture-test-{}-{}", std::process::id(), clock::now_ns()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
