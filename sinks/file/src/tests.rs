use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ds_api::{DBError, Sink, SinkSpec};

use crate::rotate::Rotator;
use crate::{FileConfig, FileSink};

fn cfg(dir: &Path, extra: &str) -> FileConfig {
    let opts = format!("dir = '{}'\n{extra}", dir.display());
    FileConfig::from_spec(&SinkSpec { name: "test".into(), options: opts.parse().unwrap() }).unwrap()
}

/// Files in `dir`, in name order.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

fn read(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap();
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).expect("a complete gzip stream");
        out
    } else {
        raw
    }
}

/// A batch of `n` lines of equal length, numbered from `first`.
fn batch(first: usize, n: usize) -> Vec<u8> {
    (first..first + n).map(|i| format!("book_delta,exchange=binance,symbol=BTCUSDT price={i:06},qty=1 {:019}\n", 1_700_000_000_000_000_000u64 + i as u64)).collect::<String>().into_bytes()
}

fn assert_name(path: &Path, ext: &str) {
    let name = path.file_name().unwrap().to_str().unwrap();
    let rest = name.strip_prefix("test-").and_then(|r| r.strip_suffix(ext)).unwrap_or_else(|| panic!("{name}"));
    let (time, seq) = rest.split_at(15);
    let b = time.as_bytes();
    assert!(b[..8].iter().chain(&b[9..]).all(u8::is_ascii_digit) && b[8] == b'-', "{name}");
    assert!(seq.is_empty() || (seq.len() == 4 && seq.starts_with('_')), "{name}");
}

#[tokio::test]
async fn files_hold_exactly_the_lines_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = FileSink::new(cfg(dir.path(), ""));
    let mut all = Vec::new();
    for i in 0..5 {
        let b = batch(i * 3, 3);
        sink.write(&b, 3).await.unwrap();
        all.extend_from_slice(&b);
    }
    sink.close().await.unwrap();
    let f = files(dir.path());
    assert_eq!(f.len(), 1);
    assert_name(&f[0], ".lp");
    assert_eq!(read(&f[0]), all);
}

#[tokio::test]
async fn close_without_writes_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = FileSink::new(cfg(&dir.path().join("sub"), ""));
    sink.write(b"", 0).await.unwrap();
    sink.close().await.unwrap();
    assert!(!dir.path().join("sub").exists());
}

#[tokio::test]
async fn rotates_by_size_without_splitting_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let line_len = batch(0, 1).len() as u64;
    // Room for 5 lines: batches of 2 lines fill a file with 2 batches (4 lines).
    let mut sink = FileSink::new(cfg(dir.path(), &format!("max_file_bytes = {}", line_len * 5)));
    let mut all = Vec::new();
    for i in 0..10 {
        let b = batch(i * 2, 2);
        sink.write(&b, 2).await.unwrap();
        all.extend_from_slice(&b);
    }
    // One batch larger than the limit goes whole into a file of its own.
    let big = batch(100, 7);
    sink.write(&big, 7).await.unwrap();
    all.extend_from_slice(&big);
    sink.close().await.unwrap();

    let f = files(dir.path());
    assert_eq!(f.len(), 6, "{f:?}");
    let sizes: Vec<u64> = f.iter().map(|p| std::fs::metadata(p).unwrap().len()).collect();
    assert_eq!(sizes, [4, 4, 4, 4, 4, 7].map(|n| n * line_len));
    for p in &f {
        assert_name(p, ".lp");
    }
    // Name order is write order, even for files opened within one second.
    assert_eq!(f.iter().flat_map(|p| read(p)).collect::<Vec<u8>>(), all);
}

#[tokio::test]
async fn gzip_files_are_complete_streams_after_rotation_and_close() {
    let dir = tempfile::tempdir().unwrap();
    // Compressed bytes are only known after they are written: rotation comes once a file
    // reached the limit.
    let mut sink = FileSink::new(cfg(dir.path(), "gzip = true\nmax_file_bytes = 200\nfsync_every_secs = 0"));
    let mut all = Vec::new();
    for i in 0..30 {
        let b = batch(i * 10, 10);
        sink.write(&b, 10).await.unwrap();
        all.extend_from_slice(&b);
    }
    sink.close().await.unwrap();
    let f = files(dir.path());
    assert!(f.len() > 1, "{f:?}");
    for p in &f {
        assert_name(p, ".lp.gz");
    }
    assert_eq!(f.iter().flat_map(|p| read(p)).collect::<Vec<u8>>(), all);
}

#[tokio::test]
async fn an_unfinished_gzip_file_is_readable_up_to_the_last_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = FileSink::new(cfg(dir.path(), "gzip = true\nfsync_every_secs = 0"));
    let b = batch(0, 20);
    sink.write(&b, 20).await.unwrap();
    // No close: as after a crash. The stream has no trailer, but every synced byte decodes.
    let raw = std::fs::read(&files(dir.path())[0]).unwrap();
    let mut out = Vec::new();
    let _ = flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out);
    assert_eq!(out, b);
    sink.close().await.unwrap();
    assert_eq!(read(&files(dir.path())[0]), b);
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn rotates_when_the_utc_hour_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rotator::new(cfg(dir.path(), ""));
    // 2024-03-01 12:59:59 and 13:00:00 UTC.
    let t = 1_709_297_999;
    r.write(&batch(0, 1), at(t)).unwrap();
    r.write(&batch(1, 1), at(t)).unwrap();
    r.write(&batch(2, 1), at(t + 1)).unwrap();
    r.close().unwrap();
    let f = files(dir.path());
    let names: Vec<_> = f.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["test-20240301-125959.lp", "test-20240301-130000.lp"]);
    assert_eq!(read(&f[0]), batch(0, 2));
    assert_eq!(read(&f[1]), batch(2, 1));

    let dir = tempfile::tempdir().unwrap();
    let mut r = Rotator::new(cfg(dir.path(), "rotate_hourly = false"));
    r.write(&batch(0, 1), at(t)).unwrap();
    r.write(&batch(1, 1), at(t + 7200)).unwrap();
    r.close().unwrap();
    assert_eq!(files(dir.path()).len(), 1);
}

#[test]
fn fsync_is_throttled_and_done_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rotator::new(cfg(dir.path(), "fsync_every_secs = 0"));
    for i in 0..5 {
        r.write(&batch(i, 1), SystemTime::now()).unwrap();
    }
    assert_eq!(r.syncs, 5, "fsync_every_secs = 0 syncs every write");
    r.close().unwrap();
    assert_eq!(r.syncs, 5, "nothing left to sync at close");

    let mut r = Rotator::new(cfg(dir.path(), "fsync_every_secs = 3600"));
    for i in 0..5 {
        r.write(&batch(i, 1), SystemTime::now()).unwrap();
    }
    assert_eq!(r.syncs, 0, "at most once an hour");
    assert!(r.current_path().is_some());
    r.close().unwrap();
    assert_eq!(r.syncs, 1, "close syncs");
    assert!(r.current_path().is_none());
}

#[tokio::test]
async fn io_errors_go_back_to_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let mut sink = FileSink::new(cfg(&not_a_dir, ""));
    assert!(matches!(sink.write(&batch(0, 1), 1).await, Err(DBError::Io(_))));
}

#[test]
fn registered_as_file() {
    let plugin = ds_api::plugin::find_sink("file").expect("registered");
    assert_eq!(plugin.crate_name, "sink-file");
    assert!((plugin.build)(&SinkSpec { name: "f".into(), options: toml::Table::new() }).is_ok());
    let errs = (plugin.build)(&SinkSpec { name: "f".into(), options: "max_file_bytes = -1".parse().unwrap() }).err().unwrap();
    assert_eq!(errs[0].key, "max_file_bytes");
}

/// The real `Buffer` in front of the sink: packets in, the encoded lines out in a file, the file
/// finished when the senders are gone.
#[tokio::test]
async fn behind_the_real_buffer() {
    use std::sync::Arc;

    use ds_api::buffer::{packet_channel, Buffer, BufferConfig};
    use ds_api::line_protocol::LineProtocol;
    use ds_api::{DataPacket, Decimal, Instrument, Level, MarketIncremental, SinkStats};

    let dir = tempfile::tempdir().unwrap();
    let stats = Arc::new(SinkStats::default());
    let (tx, rx) = packet_channel("test", 1024, stats.clone());
    let buffer_cfg = BufferConfig { batch_points: 7, spool_dir: dir.path().join("spool"), ..BufferConfig::default() };
    let buffer = Buffer::new("test", Box::new(FileSink::new(cfg(&dir.path().join("out"), "gzip = true"))), buffer_cfg, stats.clone(), rx).unwrap();
    let (_trigger, shutdown) = ds_api::shutdown_pair();
    let task = tokio::spawn(buffer.run(shutdown));

    let mut expected = Vec::new();
    for i in 0..20u64 {
        let p = DataPacket::MI(MarketIncremental {
            instrument: Instrument { exchange: "binance", market: "spot", symbol: Arc::from("BTCUSDT") },
            first_update_id: i,
            last_update_id: i,
            prev_update_id: None,
            event_time_ms: Some(1_700_000_000_000),
            recv_time_ns: ds_api::clock::reserve_now(2),
            bids: vec![Level { price: Decimal::parse("100.5").unwrap(), size: Decimal::parse("1").unwrap() }],
            asks: vec![Level { price: Decimal::parse("101").unwrap(), size: Decimal::parse("0").unwrap() }],
        });
        LineProtocol::encode(&p, &mut expected);
        assert!(tx.send(p));
    }
    drop(tx);
    task.await.unwrap();

    let f = files(&dir.path().join("out"));
    assert_eq!(f.len(), 1);
    assert_eq!(read(&f[0]), expected, "close finished the gzip stream");
    assert_eq!(stats.points_written.get(), 40);
    assert_eq!(stats.points_dropped.get(), 0);
}
