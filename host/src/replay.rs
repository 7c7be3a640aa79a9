//! `data-storage replay`: one feed's connector parser and sequence checks over a file of raw
//! frames (a capture, gzip or plain, or one frame per line as in ../shared/fixtures), into a
//! configured sink, to stdout as line protocol, or nowhere (`--sink null`, to measure).
//!
//! Re-deriving stored data after a parser fix is one command: the capture holds every frame
//! and REST answer with its receive time, and each book's timestamps depend only on its own
//! receive times (`ds_api::clock::SeriesClock`), so the replayed points are the live run's,
//! point for point, and overwrite them in place.
//!
//! Ends with one summary line on stderr (frames, points, levels, seconds, rates); long files
//! show a progress bar (a line every few seconds when stderr is not a terminal).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use ds_api::capture::RecordReader;
use ds_api::line_protocol::LineProtocol;
use ds_api::{DBError, DataPacket, Sink};

use crate::cli::{report_config_errors, EXIT_CONFIG};
use crate::config;
use crate::progress::Progress;

/// Plain one-frame-per-line files carry no receive times: frame `i` is taken as received at
/// `SYNTHETIC_START_NS + i * SYNTHETIC_STEP_NS` (2020-09-13T12:26:40Z, one frame per ms), so
/// replays of the same file are identical.
pub const SYNTHETIC_START_NS: i64 = 1_600_000_000_000_000_000;
pub const SYNTHETIC_STEP_NS: i64 = 1_000_000;
/// Points per write when the sink's own `batch_points` is unknown (stdout).
const STDOUT_FLUSH_BYTES: usize = 1 << 20;
/// `--sink null`: parse and check, store nothing.
pub const NULL_SINK: &str = "null";

/// What `replay` was asked to do.
#[derive(Debug, Clone)]
pub struct ReplayArgs {
    pub feed: String,
    pub input: PathBuf,
    /// A `[[sink]]` name, or `null`; `None` = the feed's own sink (or stdout with `stdout`).
    pub sink: Option<String>,
    pub stdout: bool,
    /// `SYMBOL=FILE`: REST depth snapshot bodies for plain files (Binance).
    pub snapshots: Vec<String>,
}

/// What a replay did (the summary line).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplaySummary {
    pub frames: u64,
    pub records: u64,
    pub points: u64,
    pub levels: u64,
    pub gaps: u64,
    pub invalid: u64,
}

enum Output {
    Null,
    /// Kept in memory (tests).
    Memory(Vec<u8>),
    Stdout(BufWriter<std::io::Stdout>),
    Sink { sink: Box<dyn Sink>, batch_points: usize, runtime: tokio::runtime::Runtime },
}

/// Why a replay could not run: bad config or arguments (exit 2), or a failure while running.
enum Failure {
    Config(String),
    ConfigErrors(Vec<ds_api::ConfigError>),
    Run(String),
}

/// Runs the command; the exit code follows `check`: 2 for a bad config or arguments.
pub fn replay(config_path: &Path, args: &ReplayArgs) -> ExitCode {
    let result = prepare(config_path, &args.feed, &args.snapshots).and_then(|(config, feed_sink, mut replayer)| {
        let mut output = output(config, &feed_sink, args)?;
        let reader = RecordReader::open(&args.input).map_err(|e| Failure::Config(format!("{}: {e}", args.input.display())))?;
        run(reader, replayer.as_mut(), &mut output).map_err(|e| Failure::Run(format!("replay of {} failed: {e}", args.input.display())))
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(Failure::ConfigErrors(errors)) => {
            report_config_errors(config_path, &errors);
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Config(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Run(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `replay --stdout` into a string, for tests: the line protocol the command would print.
pub fn replay_to_lines(config_path: &Path, feed: &str, input: &Path, snapshots: &[String]) -> Result<String, String> {
    let describe = |f: Failure| match f {
        Failure::Config(e) | Failure::Run(e) => e,
        Failure::ConfigErrors(e) => format!("{e:?}"),
    };
    let (_, _, mut replayer) = prepare(config_path, feed, snapshots).map_err(describe)?;
    let reader = RecordReader::open(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let mut output = Output::Memory(Vec::new());
    run(reader, replayer.as_mut(), &mut output)?;
    match output {
        Output::Memory(v) => String::from_utf8(v).map_err(|e| e.to_string()),
        _ => unreachable!("built as Memory above"),
    }
}

/// Loads the config, finds the feed and its replay hook, preloads `--snapshot` bodies.
fn prepare(config_path: &Path, feed_name: &str, snapshots: &[String]) -> Result<(config::Config, String, Box<dyn ds_api::Replayer>), Failure> {
    let config = config::load(config_path).map_err(Failure::ConfigErrors)?;
    let Some(feed) = config.feeds.iter().find(|f| f.name == feed_name) else {
        let names: Vec<_> = config.feeds.iter().map(|f| f.name.as_str()).collect();
        return Err(Failure::Config(format!("no enabled feed named {feed_name:?} in {} (enabled: {names:?})", config_path.display())));
    };
    let Some(plugin) = ds_api::plugin::find_replay(feed.connector) else {
        return Err(Failure::Config(format!("connector {:?} of feed {feed_name:?} has no replay", feed.connector)));
    };
    let mut replayer = (plugin.build)(&feed.spec).map_err(Failure::ConfigErrors)?;
    for s in snapshots {
        let Some((symbol, file)) = s.split_once('=') else {
            return Err(Failure::Config(format!("--snapshot {s:?}: expected SYMBOL=FILE")));
        };
        std::fs::read_to_string(file)
            .map_err(|e| format!("{file}: {e}"))
            .and_then(|body| replayer.preload_snapshot(symbol, &body))
            .map_err(|e| Failure::Config(format!("--snapshot {s}: {e}")))?;
    }
    let sink = feed.sink.clone();
    Ok((config, sink, replayer))
}

/// Where the points go: `--stdout`, `--sink null`, `--sink NAME`, or the feed's own sink.
fn output(mut config: config::Config, feed_sink: &str, args: &ReplayArgs) -> Result<Output, Failure> {
    let name = match (&args.sink, args.stdout) {
        (Some(_), true) => return Err(Failure::Config("--sink and --stdout exclude each other".into())),
        (Some(s), false) => s.clone(),
        (None, true) => return Ok(Output::Stdout(BufWriter::new(std::io::stdout()))),
        (None, false) => feed_sink.to_string(),
    };
    if name == NULL_SINK {
        return Ok(Output::Null);
    }
    let Some(i) = config.sinks.iter().position(|s| s.name == name) else {
        let names: Vec<_> = config.sinks.iter().map(|s| s.name.as_str()).collect();
        return Err(Failure::Config(format!("no sink {name:?} in use by an enabled feed (in use: {names:?}; or --stdout, --sink null)")));
    };
    let entry = config.sinks.swap_remove(i);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Run(format!("cannot start the async runtime: {e}")))?;
    Ok(Output::Sink { sink: entry.sink, batch_points: entry.buffer.batch_points.max(1), runtime })
}

fn run(mut reader: RecordReader, replayer: &mut dyn ds_api::Replayer, output: &mut Output) -> Result<ReplaySummary, String> {
    let started = Instant::now();
    let mut progress = Progress::new();
    let mut summary = ReplaySummary::default();
    let mut packets: Vec<DataPacket> = Vec::new();
    let mut lines: Vec<u8> = Vec::with_capacity(STDOUT_FLUSH_BYTES);
    let mut pending_points = 0usize;
    let mut i = 0i64;
    while let Some(record) = reader.next() {
        let record = record.inspect_err(|_| progress.finish())?;
        summary.records += 1;
        let at_ns = record.t.unwrap_or(SYNTHETIC_START_NS + i * SYNTHETIC_STEP_NS);
        i += 1;
        replayer.feed(&record, at_ns, &mut packets);
        pending_points += encode(&mut packets, &mut lines, &mut summary);
        flush(output, &mut lines, &mut pending_points, false).inspect_err(|_| progress.finish())?;
        let (read, size) = reader.progress();
        progress.update(read, size, replayer.stats().frames.get(), summary.points);
    }
    progress.finish();
    replayer.finish(&mut packets);
    pending_points += encode(&mut packets, &mut lines, &mut summary);
    flush(output, &mut lines, &mut pending_points, true)?;
    if let Output::Sink { sink, runtime, .. } = output {
        runtime.block_on(sink.close()).map_err(|e| e.to_string())?;
    }
    let stats = replayer.stats();
    summary.frames = stats.frames.get();
    summary.gaps = stats.gaps.get();
    summary.invalid = stats.invalid.get();
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    if let Some(note) = not_stored_note(stats.out_of_sequence.get(), &replayer.never_synced()) {
        eprintln!("replay: {note}");
    }
    eprintln!(
        "replay: {} frames, {} points ({} levels), {} gaps, {} invalid in {:.3} s: {:.0} frames/s, {:.0} levels/s, {:.0} points/s",
        summary.frames,
        summary.points,
        summary.levels,
        summary.gaps,
        summary.invalid,
        secs,
        summary.frames as f64 / secs,
        summary.levels as f64 / secs,
        summary.points as f64 / secs
    );
    Ok(summary)
}

/// Why updates of the input were not stored, when some were not: a replay that stores
/// nothing and says nothing would look like a parser that reads nothing.
fn not_stored_note(out_of_sequence: u64, never_synced: &[String]) -> Option<String> {
    if out_of_sequence == 0 && never_synced.is_empty() {
        return None;
    }
    let mut note = format!("{out_of_sequence} updates not stored (out of sequence, or held for a snapshot)");
    if !never_synced.is_empty() {
        const SHOWN: usize = 10;
        let mut names = never_synced.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
        if never_synced.len() > SHOWN {
            names += &format!(" and {} more", never_synced.len() - SHOWN);
        }
        note += &format!("; never synced: {names}: no snapshot in the input synced them (a plain file needs --snapshot SYMBOL=FILE)");
    }
    Some(note)
}

/// Encodes and counts the packets; returns the points added to `lines`.
fn encode(packets: &mut Vec<DataPacket>, lines: &mut Vec<u8>, summary: &mut ReplaySummary) -> usize {
    let mut points = 0;
    for p in packets.drain(..) {
        summary.levels += match &p {
            DataPacket::MI(m) => (m.bids.len() + m.asks.len()) as u64,
            DataPacket::ST(s) => (s.bids.len() + s.asks.len()) as u64,
            _ => 0,
        };
        points += LineProtocol::encode(&p, lines);
    }
    summary.points += points as u64;
    points
}

fn flush(output: &mut Output, lines: &mut Vec<u8>, points: &mut usize, last: bool) -> Result<(), String> {
    match output {
        Output::Null => lines.clear(),
        Output::Memory(v) => {
            v.append(lines);
        }
        Output::Stdout(w) => {
            if last || lines.len() >= STDOUT_FLUSH_BYTES {
                w.write_all(lines).and_then(|_| if last { w.flush() } else { Ok(()) }).map_err(|e| format!("stdout: {e}"))?;
                lines.clear();
            }
        }
        Output::Sink { sink, batch_points, runtime } => {
            if *points > 0 && (last || *points >= *batch_points) {
                match runtime.block_on(sink.write(lines, *points)) {
                    // Refused lines are in the sink's quarantine file, as in a live run.
                    Ok(()) | Err(DBError::Rejected { .. }) => {}
                    Err(e) => return Err(format!("sink write: {e}")),
                }
                lines.clear();
            }
        }
    }
    *points = if lines.is_empty() { 0 } else { *points };
    Ok(())
}
