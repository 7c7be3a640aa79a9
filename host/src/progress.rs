//! The progress of a long `replay`: a bar redrawn in place when stderr is a terminal, a plain
//! line every few seconds when it is a log file or a pipe (where `\r` redraws would pile up).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Redraws of the bar at most this often (a terminal cannot show more).
const BAR_EVERY: Duration = Duration::from_millis(200);
/// A progress line at most this often when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);
const BAR_WIDTH: usize = 30;

pub struct Progress {
    started: Instant,
    last: Instant,
    tty: bool,
    drawn: bool,
}

impl Progress {
    pub fn new() -> Self {
        let now = Instant::now();
        Progress { started: now, last: now, tty: std::io::stderr().is_terminal(), drawn: false }
    }

    /// `read` of `size` file bytes done, `frames` and `points` so far. Cheap when nothing is
    /// due: one clock read.
    pub fn update(&mut self, read: u64, size: u64, frames: u64, points: u64) {
        let every = if self.tty { BAR_EVERY } else { LINE_EVERY };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let line = render(read, size, frames, points, self.started.elapsed());
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
            self.drawn = true;
        } else {
            let _ = writeln!(err, "replay: {line}");
        }
        let _ = err.flush();
    }

    /// Clears the bar, so the summary line starts on a clean line.
    pub fn finish(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.drawn = false;
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

/// `[#########.....................]  31%  12.3/39.6 MB  84213 frames/s  ETA 7s`
pub fn render(read: u64, size: u64, frames: u64, points: u64, elapsed: Duration) -> String {
    let fraction = if size == 0 { 1.0 } else { (read as f64 / size as f64).clamp(0.0, 1.0) };
    let filled = (fraction * BAR_WIDTH as f64).round() as usize;
    let secs = elapsed.as_secs_f64().max(1e-3);
    let eta = if fraction > 0.0 { secs / fraction - secs } else { f64::INFINITY };
    let eta = if eta.is_finite() { format!("ETA {:.0}s", eta.max(0.0)) } else { "ETA ?".to_string() };
    format!(
        "[{}{}] {:>3.0}%  {:.1}/{:.1} MB  {} frames, {} points, {:.0} frames/s  {eta}",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        fraction * 100.0,
        read as f64 / 1e6,
        size as f64 / 1e6,
        frames,
        points,
        frames as f64 / secs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_file_and_estimates_the_rest() {
        let half = render(50_000_000, 100_000_000, 1000, 5000, Duration::from_secs(10));
        assert!(half.starts_with(&format!("[{}{}]  50%", "#".repeat(15), ".".repeat(15))), "{half}");
        assert!(half.contains("50.0/100.0 MB") && half.contains("100 frames/s") && half.ends_with("ETA 10s"), "{half}");
        let done = render(7, 7, 1, 1, Duration::from_secs(1));
        assert!(done.starts_with(&format!("[{}] 100%", "#".repeat(BAR_WIDTH))) && done.ends_with("ETA 0s"), "{done}");
        let empty = render(0, 0, 0, 0, Duration::ZERO);
        assert!(empty.contains("100%"), "an empty file is done: {empty}");
    }
}
