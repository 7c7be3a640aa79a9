//! `data-storage replay` as an operator runs it: a capture file to stdout with the live
//! timestamps, the fixture file into the null sink with its summary line, and bad arguments
//! refused with exit code 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ds_tests::book::binance_reference;

const BIN: &str = env!("CARGO_BIN_EXE_data-storage");

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let d = std::env::temp_dir().join(format!("ds-replay-cli-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A config with one Binance depth feed `b` for `symbols` into a file sink under `dir`.
fn write_config(dir: &Path, symbols: &[&str]) -> PathBuf {
    let symbols: Vec<String> = symbols.iter().map(|s| format!("\"{s}\"")).collect();
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[[feed]]\nname = \"b\"\nconnector = \"binance_spot_depth\"\nsymbols = [{}]\nsink = \"files\"\n\n[[sink]]\nname = \"files\"\nplugin = \"file\"\ndir = \"{}\"\n",
            symbols.join(", "),
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

fn replay(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN).arg("replay").arg("--config").arg(config).arg("--feed").arg("b").args(args).output().expect("run data-storage")
}

/// The summary line's figure before `word` (`2688 frames` -> 2688).
fn figure(summary: &str, word: &str) -> u64 {
    let line = summary.lines().rev().find(|l| l.starts_with("replay: ")).unwrap_or_else(|| panic!("no summary line in {summary}"));
    let words: Vec<&str> = line.split([' ', ',', '(', ')']).filter(|w| !w.is_empty()).collect();
    let i = words.iter().position(|w| *w == word).unwrap_or_else(|| panic!("no {word} in {line}"));
    words[i - 1].parse().unwrap()
}

#[test]
fn a_capture_replays_to_stdout_with_its_recorded_times() {
    let dir = temp_dir("capture");
    let config = write_config(&dir, &["BTCUSDT"]);
    let input = dir.join("capture.jsonl");
    // Plain (not gzip) capture text: an update held, the REST snapshot that syncs it, one more
    // update, and the stop.
    let capture = [
        r#"{"t":1000,"conn":0,"kind":"ws","data":"{\"stream\":\"btcusdt@depth@100ms\",\"data\":{\"e\":\"depthUpdate\",\"E\":7,\"s\":\"BTCUSDT\",\"U\":5,\"u\":7,\"b\":[[\"1.5\",\"2\"]],\"a\":[]}}"}"#,
        r#"{"t":2000,"conn":0,"kind":"rest","url":"http://127.0.0.1:1/api/v3/depth?symbol=BTCUSDT&limit=5","data":"{\"lastUpdateId\":6,\"bids\":[[\"1.5\",\"1\"]],\"asks\":[[\"2.5\",\"4\"]]}"}"#,
        r#"{"t":2001,"conn":0,"kind":"ws","data":"{\"stream\":\"btcusdt@depth@100ms\",\"data\":{\"e\":\"depthUpdate\",\"E\":8,\"s\":\"BTCUSDT\",\"U\":8,\"u\":8,\"b\":[],\"a\":[[\"2.5\",\"0\"]]}}"}"#,
        r#"{"t":3000,"conn":0,"kind":"close","reason":"shutdown"}"#,
    ];
    std::fs::write(&input, capture.join("\n") + "\n").unwrap();
    let out = replay(&config, &["--input", input.to_str().unwrap(), "--stdout"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let expected = "\
book_snapshot,exchange=binance,market=spot,side=bid,symbol=BTCUSDT price=1.5,qty=1,snapshot_id=6i 2000
book_snapshot,exchange=binance,market=spot,side=ask,symbol=BTCUSDT price=2.5,qty=4,snapshot_id=6i 2001
book_delta,exchange=binance,market=spot,side=bid,symbol=BTCUSDT price=1.5,qty=2,first_id=5i,last_id=7i,event_ts=7i 2002
book_delta,exchange=binance,market=spot,side=ask,symbol=BTCUSDT price=2.5,qty=0,first_id=8i,last_id=8i,event_ts=8i 2003
book_gap,exchange=binance,market=spot,symbol=BTCUSDT reason=\"shutdown\",last_id=8i 3000
";
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "stderr: {stderr}");
    assert_eq!((figure(&stderr, "frames"), figure(&stderr, "points"), figure(&stderr, "gaps")), (2, 5, 1), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_fixture_file_replays_into_the_null_sink_with_a_summary() {
    let Some(fixtures) = ds_tests::fixtures::fixtures_dir() else { return };
    let symbols = ["BTCUSDT", "ETHUSDT", "DOTUSDT"];
    let dir = temp_dir("fixture");
    let config = write_config(&dir, &symbols);
    let frames_file = fixtures.join("binance/depth_update_combined_2021-04-04.jsonl");
    let frames: Vec<String> = std::fs::read_to_string(&frames_file).unwrap().lines().filter(|l| !l.trim().is_empty()).map(String::from).collect();
    let mut args = vec!["--input".to_string(), frames_file.display().to_string(), "--sink".into(), "null".into()];
    let mut expected_points = 0;
    for s in symbols {
        let snap = fixtures.join(format!("binance/rest_depth_snapshot_2021-04-04_{s}.json"));
        let body = std::fs::read_to_string(&snap).unwrap();
        let r = binance_reference(&body, &frames, s);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        expected_points += r.applied_levels() + v["bids"].as_array().unwrap().len() + v["asks"].as_array().unwrap().len();
        args.push("--snapshot".into());
        args.push(format!("{s}={}", snap.display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = replay(&config, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "the null sink prints nothing");
    assert_eq!(figure(&stderr, "frames"), frames.len() as u64, "{stderr}");
    assert_eq!(figure(&stderr, "points"), expected_points as u64, "{stderr}");
    assert_eq!(figure(&stderr, "gaps"), 0, "{stderr}");
    assert!(stderr.contains("frames/s") && stderr.contains("levels/s") && stderr.contains("points/s"), "{stderr}");
    assert!(!stderr.contains("not stored"), "every book synced: {stderr}");
    assert!(!dir.join("data").exists() || std::fs::read_dir(dir.join("data")).unwrap().next().is_none(), "nothing written to the file sink");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_plain_file_without_snapshots_says_which_books_never_synced() {
    let Some(fixtures) = ds_tests::fixtures::fixtures_dir() else { return };
    let dir = temp_dir("unsynced");
    let config = write_config(&dir, &["BTCUSDT", "ETHUSDT", "DOTUSDT"]);
    let frames_file = fixtures.join("binance/depth_update_combined_2021-04-04.jsonl");
    let text = std::fs::read_to_string(&frames_file).unwrap();
    let count = |symbol: &str| text.lines().filter(|l| l.contains(&format!("\"s\":\"{symbol}\""))).count() as u64;
    // Only DOTUSDT gets its snapshot: the other two books hold every update to the end.
    let snap = fixtures.join("binance/rest_depth_snapshot_2021-04-04_DOTUSDT.json");
    let out = replay(&config, &["--input", frames_file.to_str().unwrap(), "--sink", "null", "--snapshot", &format!("DOTUSDT={}", snap.display())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let note = stderr.lines().find(|l| l.contains("not stored")).unwrap_or_else(|| panic!("no note on what was not stored: {stderr}"));
    assert!(note.contains("never synced: BTCUSDT, ETHUSDT:") && note.contains("--snapshot SYMBOL=FILE"), "{note}");
    let held = figure(&format!("replay: {}", note.trim_start_matches("replay: ")), "updates");
    assert!(held >= count("BTCUSDT") + count("ETHUSDT"), "{held} < the two books' frames: {note}");
    // The summary line still comes last.
    assert!(stderr.lines().last().unwrap_or("").contains(" frames, "), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_arguments_are_refused_with_exit_code_2() {
    let dir = temp_dir("bad");
    let config = write_config(&dir, &["BTCUSDT"]);
    let input = dir.join("empty.jsonl");
    std::fs::write(&input, "").unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--input", "/nonexistent/capture.jsonl.gz", "--sink", "null"], "/nonexistent/capture.jsonl.gz"),
        (&["--input", input.to_str().unwrap(), "--sink", "nowhere"], "no sink \"nowhere\""),
        (&["--input", input.to_str().unwrap(), "--stdout", "--snapshot", "BTCUSDT"], "expected SYMBOL=FILE"),
        (&["--input", input.to_str().unwrap(), "--stdout", "--sink", "null"], "exclude each other"),
    ];
    for (args, want) in cases {
        let out = replay(&config, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    let out = Command::new(BIN).args(["replay", "--config"]).arg(&config).args(["--feed", "nope", "--input"]).arg(&input).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no enabled feed named \"nope\""));
    let _ = std::fs::remove_dir_all(&dir);
}
