//! The result of one load run: a readable report for people (stderr) and one
//! `ds-load: key=value ...` line for scripts and the smoke test (stdout), which
//! [`parse_line`] reads back.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The prefix of the summary line.
pub const PREFIX: &str = "ds-load:";

/// Figures of one run. Rates and CPU are over the measurement window only (after warm-up,
/// before the stop); the delivery check (`expected_deltas` vs `stored_deltas`) is over the
/// whole run, after the service has stopped.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub symbols: u32,
    pub rate: f64,
    pub sink: String,
    pub flush_ms: u64,
    pub load_avg_1m: Option<f64>,
    pub warmup_s: f64,
    /// Symbols whose first snapshot was served before measuring.
    pub synced: u64,
    pub window_s: f64,
    pub frames: u64,
    pub levels: u64,
    /// Scheduled pushes the mock could not make in time (it or the service fell behind).
    pub ticks_missed: u64,
    pub points: u64,
    pub writes: u64,
    pub ds_cpu_s: f64,
    pub ds_rss: u64,
    pub ds_peak_rss: u64,
    pub influxd_cpu_s: Option<f64>,
    pub tool_cpu_s: f64,
    pub latency_frames: u64,
    pub lat_p50_ms: Option<u64>,
    pub lat_p99_ms: Option<u64>,
    pub lat_max_ms: Option<u64>,
    pub expected_deltas: u64,
    pub stored_deltas: u64,
    /// `book_delta` points the service left in its spool at the stop (sink behind).
    pub spooled_deltas: u64,
    /// Points the service counted as dropped (buffer channel or spool full), from its log.
    pub ds_dropped: Option<u64>,
    pub gaps: u64,
    pub invalid: u64,
    pub failed_writes: u64,
    pub exit: String,
    /// `--floor`: the bare reader's window, before the service's.
    pub floor: Option<Floor>,
}

/// The bare reader's figures (`--floor`, see [`super::floor`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Floor {
    pub window_s: f64,
    pub frames: u64,
    pub cpu_s: f64,
    pub rss: u64,
}

impl Floor {
    pub fn us_per_frame(&self) -> Option<f64> {
        per(self.cpu_s * 1e6, self.frames as f64)
    }
    pub fn cpu_pct(&self) -> Option<f64> {
        per(self.cpu_s * 100.0, self.window_s)
    }
}

fn per(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

impl Summary {
    pub fn frames_per_s(&self) -> Option<f64> {
        per(self.frames as f64, self.window_s)
    }
    pub fn target_frames_per_s(&self) -> f64 {
        f64::from(self.symbols) * self.rate
    }
    pub fn points_per_s(&self) -> Option<f64> {
        per(self.points as f64, self.window_s)
    }
    /// CPU of the service as a percentage of one core.
    pub fn ds_cpu_pct(&self) -> Option<f64> {
        per(self.ds_cpu_s * 100.0, self.window_s)
    }
    pub fn ds_us_per_frame(&self) -> Option<f64> {
        per(self.ds_cpu_s * 1e6, self.frames as f64)
    }
    pub fn ds_us_per_point(&self) -> Option<f64> {
        per(self.ds_cpu_s * 1e6, self.points as f64)
    }
    pub fn influxd_us_per_point(&self) -> Option<f64> {
        per(self.influxd_cpu_s? * 1e6, self.points as f64)
    }
    /// The bare reader's CPU per frame (`--floor`).
    pub fn floor_us_per_frame(&self) -> Option<f64> {
        self.floor?.us_per_frame()
    }
    /// The service's CPU per frame above the floor: what its own work on a frame costs.
    pub fn ds_above_floor_us_per_frame(&self) -> Option<f64> {
        Some(self.ds_us_per_frame()? - self.floor_us_per_frame()?)
    }
    /// Resident memory per symbol (whole process, so it includes the fixed base).
    pub fn rss_kib_per_symbol(&self) -> Option<f64> {
        per(self.ds_rss as f64 / 1024.0, f64::from(self.symbols))
    }

    /// Every figure as `(key, value)`, in print order; absent values are `-`.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let f = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |v| format!("{v:.d$}"));
        let u = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        let mib = |b: u64| format!("{:.1}", b as f64 / 1048576.0);
        vec![
            ("symbols", self.symbols.to_string()),
            ("rate", format!("{}", self.rate)),
            ("sink", self.sink.clone()),
            ("flush_ms", self.flush_ms.to_string()),
            ("load_avg", f(self.load_avg_1m, 2)),
            ("warmup_s", format!("{:.1}", self.warmup_s)),
            ("synced", self.synced.to_string()),
            ("window_s", format!("{:.2}", self.window_s)),
            ("frames", self.frames.to_string()),
            ("frames_per_s", f(self.frames_per_s(), 0)),
            (
                "target_frames_per_s",
                format!("{:.0}", self.target_frames_per_s()),
            ),
            ("ticks_missed", self.ticks_missed.to_string()),
            ("levels", self.levels.to_string()),
            ("points", self.points.to_string()),
            ("points_per_s", f(self.points_per_s(), 0)),
            ("writes", self.writes.to_string()),
            ("ds_cpu_s", format!("{:.3}", self.ds_cpu_s)),
            ("ds_cpu_pct", f(self.ds_cpu_pct(), 1)),
            ("ds_us_per_frame", f(self.ds_us_per_frame(), 2)),
            ("ds_us_per_point", f(self.ds_us_per_point(), 3)),
            ("ds_rss_mib", mib(self.ds_rss)),
            ("ds_peak_rss_mib", mib(self.ds_peak_rss)),
            ("rss_kib_per_symbol", f(self.rss_kib_per_symbol(), 1)),
            ("influxd_cpu_s", f(self.influxd_cpu_s, 3)),
            ("influxd_us_per_point", f(self.influxd_us_per_point(), 3)),
            ("tool_cpu_s", format!("{:.3}", self.tool_cpu_s)),
            ("latency_frames", self.latency_frames.to_string()),
            ("lat_p50_ms", u(self.lat_p50_ms)),
            ("lat_p99_ms", u(self.lat_p99_ms)),
            ("lat_max_ms", u(self.lat_max_ms)),
            ("expected_deltas", self.expected_deltas.to_string()),
            ("stored_deltas", self.stored_deltas.to_string()),
            ("spooled_deltas", self.spooled_deltas.to_string()),
            ("ds_dropped", u(self.ds_dropped)),
            ("gaps", self.gaps.to_string()),
            ("invalid", self.invalid.to_string()),
            ("failed_writes", self.failed_writes.to_string()),
            ("exit", self.exit.clone()),
            ("floor_frames", u(self.floor.map(|f| f.frames))),
            ("floor_cpu_s", f(self.floor.map(|f| f.cpu_s), 3)),
            ("floor_us_per_frame", f(self.floor_us_per_frame(), 2)),
            ("ds_above_floor_us_per_frame", f(self.ds_above_floor_us_per_frame(), 2)),
        ]
    }

    /// The one-line summary.
    pub fn line(&self) -> String {
        let mut out = PREFIX.to_owned();
        for (k, v) in self.fields() {
            let _ = write!(out, " {k}={v}");
        }
        out
    }

    /// The report for people.
    pub fn report(&self) -> String {
        let f = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |v| format!("{v:.d$}"));
        let u = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        let mib = |b: u64| b as f64 / 1048576.0;
        let mut r = String::new();
        let _ = writeln!(
            r,
            "ds-load: {} symbols x {} frames/s, sink {}, flush {} ms, load average {}",
            self.symbols,
            self.rate,
            self.sink,
            self.flush_ms,
            f(self.load_avg_1m, 2)
        );
        let _ = writeln!(
            r,
            "  warm-up       {:.1} s ({} of {} symbols synced)",
            self.warmup_s, self.synced, self.symbols
        );
        let _ = writeln!(r, "  window        {:.2} s", self.window_s);
        let _ = writeln!(
            r,
            "  frames sent   {} = {} frames/s (target {:.0}; {} pushes missed), {} levels",
            self.frames,
            f(self.frames_per_s(), 0),
            self.target_frames_per_s(),
            self.ticks_missed,
            self.levels
        );
        let _ = writeln!(
            r,
            "  points stored {} = {} points/s in {} writes",
            self.points,
            f(self.points_per_s(), 0),
            self.writes
        );
        let _ = writeln!(
            r,
            "  data-storage  {:.3} CPU s = {}% of one core, {} us/frame, {} us/point",
            self.ds_cpu_s,
            f(self.ds_cpu_pct(), 1),
            f(self.ds_us_per_frame(), 2),
            f(self.ds_us_per_point(), 3)
        );
        let _ = writeln!(
            r,
            "                RSS {:.1} MiB (peak {:.1} MiB), {} KiB per symbol",
            mib(self.ds_rss),
            mib(self.ds_peak_rss),
            f(self.rss_kib_per_symbol(), 1)
        );
        if let Some(cpu) = self.influxd_cpu_s {
            let ratio = per(self.ds_cpu_s, cpu).map(|r| r * 100.0);
            let _ = writeln!(
                r,
                "  influxd       {:.3} CPU s, {} us/point; data-storage/influxd CPU = {}%",
                cpu,
                f(self.influxd_us_per_point(), 3),
                f(ratio, 1)
            );
        }
        if let Some(floor) = &self.floor {
            let _ = writeln!(
                r,
                "  floor         bare reader, same connections, {:.2} s before: {} frames, {:.3} CPU s = {}% of one core, {} us/frame, RSS {:.1} MiB",
                floor.window_s,
                floor.frames,
                floor.cpu_s,
                f(floor.cpu_pct(), 1),
                f(floor.us_per_frame(), 2),
                mib(floor.rss)
            );
            let _ = writeln!(
                r,
                "                data-storage above the floor: {} us/frame",
                f(self.ds_above_floor_us_per_frame(), 2)
            );
        }
        let _ = writeln!(
            r,
            "  ds-load       {:.3} CPU s (mock + endpoint, same machine)",
            self.tool_cpu_s
        );
        let _ = writeln!(r, "  latency       p50 {} ms, p99 {} ms, max {} ms over {} frames (E -> write acknowledged)", u(self.lat_p50_ms), u(self.lat_p99_ms), u(self.lat_max_ms), self.latency_frames);
        let _ = writeln!(r, "  delivery      {} of {} expected book_delta points stored, {} spooled at the stop, {} points dropped by data-storage; {} gaps (not shutdown), {} invalid frames, {} failed writes", self.stored_deltas, self.expected_deltas, self.spooled_deltas, u(self.ds_dropped), self.gaps, self.invalid, self.failed_writes);
        let _ = write!(r, "  exit          {}", self.exit);
        r
    }
}

/// Reads a summary line back into `key -> value`; `None` when it is not one.
pub fn parse_line(line: &str) -> Option<BTreeMap<String, String>> {
    let rest = line.trim().strip_prefix(PREFIX)?;
    rest.split_whitespace()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_parses_back() {
        let s = Summary {
            symbols: 10,
            rate: 10.0,
            sink: "null".into(),
            window_s: 2.0,
            frames: 200,
            exit: "clean".into(),
            ..Summary::default()
        };
        let m = parse_line(&s.line()).expect("parses");
        assert_eq!(m["frames"], "200");
        assert_eq!(m["frames_per_s"], "100");
        assert_eq!(m["lat_p99_ms"], "-");
        assert_eq!(m["floor_us_per_frame"], "-");
        let floored = Summary {
            ds_cpu_s: 0.004,
            floor: Some(Floor {
                window_s: 2.0,
                frames: 200,
                cpu_s: 0.001,
                rss: 0,
            }),
            ..s.clone()
        };
        let m = parse_line(&floored.line()).expect("parses");
        assert_eq!(m["ds_us_per_frame"], "20.00");
        assert_eq!(m["floor_us_per_frame"], "5.00");
        assert_eq!(m["ds_above_floor_us_per_frame"], "15.00");
        assert_eq!(m.len(), s.fields().len());
        assert!(parse_line("something else").is_none());
    }
}
