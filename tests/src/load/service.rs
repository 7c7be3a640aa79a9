//! The real `data-storage` binary as a child process: its exchanges.toml for a load run, its
//! start, and its stop by SIGTERM (what an operator's stop does), with deadlines.
//!
//! A separate process, not the service run in-process as the e2e tests do, because the
//! figures asked for are per process (CPU seconds, RSS) and must not include the mock's and
//! the endpoint's work.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What goes into the generated exchanges.toml.
pub struct ServiceConfig<'a> {
    pub ws_url: &'a str,
    pub rest_url: &'a str,
    pub symbols: &'a [String],
    pub sink_url: &'a str,
    pub database: &'a str,
    pub flush_interval_ms: u64,
    pub batch_points: u64,
    pub gzip: bool,
    pub snapshot_limit: u32,
    /// Where the spool, quarantine and log go.
    pub dir: &'a Path,
}

impl ServiceConfig<'_> {
    /// The config text. REST weight is raised far above Binance's limit because the mock does
    /// not limit and a run must not spend its minutes waiting for 3,500 snapshots (at the
    /// default 3,000 weight a minute and weight 50 per 1,000-level snapshot, that would take
    /// over an hour: a real deployment of the whole market must plan for that, see README).
    pub fn toml(&self) -> String {
        let symbols: Vec<String> = self.symbols.iter().map(|s| format!("\"{s}\"")).collect();
        format!(
            r#"# Written by ds-load for one load run.
[service]
log_level = "info"
log_dir = ""
status_interval_secs = 10
spool_dir = "{dir}/spool"

[[feed]]
name = "load-binance"
connector = "binance_spot_depth"
symbols = [{symbols}]
sink = "load"
ws_url = "{ws}"
rest_url = "{rest}"
snapshot_limit = {limit}
rest_weight_per_minute = 100000000

[[sink]]
name = "load"
plugin = "influxdb"
url = "{sink}"
database = "{db}"
flush_interval_ms = {flush}
batch_points = {batch}
gzip = {gzip}
quarantine_dir = "{dir}/quarantine"
"#,
            dir = self.dir.display(),
            symbols = symbols.join(", "),
            ws = self.ws_url,
            rest = self.rest_url,
            limit = self.snapshot_limit,
            sink = self.sink_url,
            db = self.database,
            flush = self.flush_interval_ms,
            batch = self.batch_points,
            gzip = self.gzip,
        )
    }
}

/// The running service (or, for `--floor`, the bare reader started the same way).
pub struct Service {
    child: Child,
    pub log: PathBuf,
    /// The binary's file name, for messages.
    pub name: String,
}

impl Service {
    /// Writes the config into `dir` and starts `binary --config <it> run`, output to a log file.
    pub fn start(binary: &Path, config: &ServiceConfig<'_>) -> std::io::Result<Service> {
        let path = config.dir.join("exchanges.toml");
        std::fs::write(&path, config.toml())?;
        let name = binary
            .file_name()
            .map_or_else(|| "data-storage".into(), |n| n.to_string_lossy().into_owned());
        let log = config.dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&path)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot start {}: {e}", binary.display()))
            })?;
        Ok(Service { child, log, name })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then waits up to `deadline` for the exit; past it, SIGKILL. `Err` says what
    /// went wrong (no clean exit in time).
    pub async fn stop(&mut self, deadline: Duration) -> Result<ExitStatus, String> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        // std has no SIGTERM and the workspace forbids unsafe code: `kill` does it.
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        if !sent.is_ok_and(|s| s.success()) {
            return Err("could not send SIGTERM".into());
        }
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(format!(
            "no exit within {} s of SIGTERM; killed",
            deadline.as_secs()
        ))
    }

    /// Points the service itself counted as dropped (its final `sink stopped ...
    /// points_dropped=N` log line): what a full buffer channel or spool gave up, by its
    /// documented policy. `None` when the line is absent (it did not stop cleanly).
    pub fn points_dropped(&self) -> Option<u64> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        let line = text.lines().rev().find(|l| l.contains("sink stopped"))?;
        let plain = strip_ansi(line);
        let at = plain.find("points_dropped=")? + "points_dropped=".len();
        let digits: String = plain[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }

    /// The last `n` lines of its log (for a failure report).
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Service {
    /// Never leave a service running behind (a failed or interrupted run).
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Removes terminal colour sequences (`ESC [ ... m`): the service colours its stdout log.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colours() {
        let line = "\u{1b}[2m2026\u{1b}[0m INFO sink stopped \u{1b}[3mpoints_dropped\u{1b}[0m\u{1b}[2m=\u{1b}[0m389771";
        assert_eq!(
            strip_ansi(line),
            "2026 INFO sink stopped points_dropped=389771"
        );
    }
}
