//! Keeps the load rig from rotting: `ds-load --floor` runs for a few seconds with three symbols
//! against the null endpoint, and its summary line must parse and show frames sent, points
//! stored, every expected update stored, no gap, latency samples, a clean stop, and the bare
//! reader's floor (whose frames, sent before the service's snapshots, must cause no gap).
//!
//! It runs the debug `data-storage` next to the debug `ds-load` (a workspace test run builds
//! both); when that binary is missing it skips with a line, and fails in CI.

use std::process::Command;

use ds_tests::load::summary::parse_line;

#[test]
fn ds_load_runs_and_reports() {
    let tool = env!("CARGO_BIN_EXE_ds-load");
    let service = std::path::Path::new(tool)
        .with_file_name(format!("data-storage{}", std::env::consts::EXE_SUFFIX));
    if !service.is_file() {
        assert!(
            !ds_tests::in_ci(),
            "{} missing: build the workspace",
            service.display()
        );
        println!(
            "skipped: {} not built (cargo build -p data-storage)",
            service.display()
        );
        return;
    }
    let out = Command::new(tool)
        .args([
            "--symbols",
            "3",
            "--seconds",
            "3",
            "--settle",
            "1",
            "--warmup-max",
            "60",
            "--flush-ms",
            "200",
            "--book-depth",
            "20",
            "--floor",
        ])
        .arg("--data-storage")
        .arg(&service)
        .output()
        .expect("ds-load runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ds-load failed: {}\n{stderr}\n{stdout}",
        out.status
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("ds-load:"))
        .unwrap_or_else(|| panic!("no summary line:\n{stdout}\n{stderr}"));
    let s = parse_line(line).unwrap_or_else(|| panic!("summary does not parse: {line}"));
    let num = |k: &str| -> f64 {
        s.get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} missing or not a number in {line}"))
    };
    assert_eq!(s["exit"], "clean", "{line}");
    assert_eq!(num("synced"), 3.0, "{line}");
    assert!(num("frames") > 0.0 && num("points") > 0.0, "{line}");
    assert!(num("ds_cpu_s") > 0.0 && num("ds_rss_mib") > 0.0, "{line}");
    assert!(
        num("latency_frames") > 0.0 && num("lat_p99_ms") >= num("lat_p50_ms"),
        "{line}"
    );
    assert_eq!(num("gaps"), 0.0, "{line}");
    assert_eq!(num("invalid"), 0.0, "{line}");
    assert!(num("expected_deltas") > 0.0, "{line}");
    assert_eq!(
        s["stored_deltas"], s["expected_deltas"],
        "every update after the snapshot stored: {line}"
    );
    assert!(
        num("floor_frames") > 0.0 && num("floor_cpu_s") > 0.0,
        "the bare reader received and was measured: {line}"
    );
    assert!(
        (num("ds_us_per_frame") - num("floor_us_per_frame") - num("ds_above_floor_us_per_frame")).abs() < 0.02,
        "{line}"
    );
}
