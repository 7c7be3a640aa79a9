//! Where the recorded exchange traffic lives, and how a test asks for it.
//!
//! The recordings stay outside the project's git history, in `../shared/fixtures` next to the
//! workspace (see `PROVENANCE.md` there). A developer without them still gets a green run with
//! "skipping" lines; CI has them, so there a missing file is a failure, never a silent skip.

use std::path::{Path, PathBuf};

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `<workspace root>/../shared/fixtures`, or `None` when that folder does not exist.
pub fn fixtures_dir() -> Option<PathBuf> {
    let dir = workspace_root().join("..").join("shared").join("fixtures");
    dir.is_dir().then_some(dir)
}

/// The path of fixture `rel` (relative to the fixtures folder, e.g.
/// `"binance/rest_depth_snapshot_2021-04-04_BTCUSDT.json"`).
///
/// Missing file: panics when `CI=true` (CI must have every fixture, a skip there would hide a
/// broken setup); otherwise prints `skipping: fixture <rel> not found` to stderr and returns
/// `None`, so the caller can `return` early:
///
/// ```no_run
/// let Some(path) = ds_tests::fixtures::require("binance/depth_update_combined_2021-04-04.jsonl") else {
///     return;
/// };
/// ```
pub fn require(rel: &str) -> Option<PathBuf> {
    let found = fixtures_dir()
        .map(|dir| dir.join(rel))
        .filter(|path| path.is_file());
    if found.is_none() {
        let looked_in = workspace_root().join("..").join("shared").join("fixtures");
        if crate::in_ci() {
            panic!(
                "fixture {rel} not found under {} (CI=true: fixtures must be present)",
                looked_in.display()
            );
        }
        eprintln!(
            "skipping: fixture {rel} not found under {}",
            looked_in.display()
        );
    }
    found
}

/// The non-empty lines of a text file, without line endings.
///
/// Panics when the file cannot be read: the path came from [`require`], so a read error is a
/// broken machine, not a missing fixture.
pub fn read_lines(path: impl AsRef<Path>) -> Vec<String> {
    read_string(path)
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// The whole content of a text file; panics with the path when it cannot be read.
pub fn read_string(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

/// [`require`] then [`read_lines`]: the lines of fixture `rel`, or `None` (skip) when absent.
pub fn require_lines(rel: &str) -> Option<Vec<String>> {
    require(rel).map(read_lines)
}

/// [`require`] then [`read_string`]: the content of fixture `rel`, or `None` (skip) when absent.
pub fn require_string(rel: &str) -> Option<String> {
    require(rel).map(read_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_binance_fixtures() {
        let Some(path) = require("binance/depth_update_combined_2021-04-04.jsonl") else {
            return;
        };
        let lines = read_lines(path);
        // PROVENANCE.md: 2688 frames (BTCUSDT 899, ETHUSDT 909, DOTUSDT 880).
        assert_eq!(lines.len(), 2688);
        assert!(lines.iter().all(|l| l.starts_with("{\"stream\":")));
    }

    #[test]
    fn missing_fixture_skips_outside_ci() {
        if crate::in_ci() {
            return; // would panic by design
        }
        assert!(require("binance/no_such_file.jsonl").is_none());
    }
}
