//! The `[[sink]] plugin = "file"` options, and their validation (every problem at once).

use std::path::PathBuf;
use std::time::Duration;

use ds_api::{ConfigError, SinkSpec};
use serde::Deserialize;

pub const DEFAULT_DIR: &str = "data";
/// Large enough that a busy day is a few dozen files, small enough to copy or replay one.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_FSYNC_EVERY_SECS: u64 = 1;

/// The options as written in exchanges.toml; every key has a default.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Options {
    /// Directory the files go to (created when missing).
    pub dir: PathBuf,
    /// A file is closed and a new one started before it would grow past this size (on-disk,
    /// i.e. compressed, bytes when `gzip`).
    pub max_file_bytes: u64,
    /// Start a new file when the UTC hour changes, so a file covers at most one hour and old
    /// hours can be shipped or deleted whole.
    pub rotate_hourly: bool,
    /// fsync at most this often (and always on rotation and close); 0 fsyncs every write.
    pub fsync_every_secs: u64,
    /// Write `.lp.gz` (gzip) instead of `.lp`.
    pub gzip: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dir: PathBuf::from(DEFAULT_DIR),
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            rotate_hourly: true,
            fsync_every_secs: DEFAULT_FSYNC_EVERY_SECS,
            gzip: false,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct FileConfig {
    /// The sink's name in exchanges.toml, made safe for a file name: the file prefix.
    pub prefix: String,
    pub dir: PathBuf,
    pub max_file_bytes: u64,
    pub rotate_hourly: bool,
    pub fsync_every: Duration,
    pub gzip: bool,
}

impl FileConfig {
    pub fn from_spec(spec: &SinkSpec) -> Result<Self, Vec<ConfigError>> {
        let scope = spec.scope();
        let (opts, mut errors) = ds_api::config::parse_options_lenient::<Options>(&scope, &spec.options);
        let Some(o) = opts else { return Err(errors) };
        if o.dir.as_os_str().is_empty() && !errors.iter().any(|e| e.key == "dir") {
            errors.push(ConfigError::new(&scope, "dir", "must not be empty"));
        }
        if o.max_file_bytes == 0 && !errors.iter().any(|e| e.key == "max_file_bytes") {
            errors.push(ConfigError::new(&scope, "max_file_bytes", "must be at least 1"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(FileConfig {
            prefix: spec.name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect(),
            dir: o.dir,
            max_file_bytes: o.max_file_bytes,
            rotate_hourly: o.rotate_hourly,
            fsync_every: Duration::from_secs(o.fsync_every_secs),
            gzip: o.gzip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> SinkSpec {
        SinkSpec { name: "my file".into(), options: s.parse().unwrap() }
    }

    #[test]
    fn defaults() {
        let c = FileConfig::from_spec(&spec("")).unwrap();
        assert_eq!(c.prefix, "my_file");
        assert_eq!(c.dir, PathBuf::from("data"));
        assert_eq!(c.max_file_bytes, 256 * 1024 * 1024);
        assert!(c.rotate_hourly);
        assert_eq!(c.fsync_every, Duration::from_secs(1));
        assert!(!c.gzip);
    }

    #[test]
    fn every_problem_at_once() {
        let errs = FileConfig::from_spec(&spec("max_file_bytes = 0\ngzip = 'yes'\nrotate = true")).unwrap_err();
        let mut keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["gzip", "max_file_bytes", "rotate"], "{errs:?}");
        assert!(errs.iter().all(|e| e.scope == "sink \"my file\""));
    }
}
