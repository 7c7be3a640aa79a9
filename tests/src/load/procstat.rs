//! CPU time and memory of a process, read from `/proc` (Linux), and the process behind a
//! listening port (to find influxd from its URL).
//!
//! `/proc/<pid>/stat` fields 14 and 15 (utime, stime) are the process's CPU time over all its
//! threads, in clock ticks; `/proc/<pid>/task/<tid>/schedstat` has each live thread's in
//! nanoseconds ([`CpuSample`] uses both); `/proc/<pid>/status` has `VmRSS` (resident now) and
//! `VmHWM` (peak resident). Read directly rather than through a crate: a handful of lines,
//! and these are exactly the numbers `top` and `ps` show.

use std::path::Path;

/// Clock ticks per second for `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on Linux).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) a process has used so far; `None` when it is gone.
pub fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// A process's CPU time at one instant, as `/proc` tells it two ways: the process total in
/// clock ticks (10 ms: a quiet service's 30 s window is a dozen ticks, so one tick is 8% of it)
/// and the sum of its live threads' nanoseconds (exact, but blind to a thread that has exited).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuSample {
    /// `utime + stime`, in seconds (whole ticks).
    pub total_s: f64,
    /// Sum over `/proc/<pid>/task/*/schedstat` of the first field, run time in ns.
    pub threads_ns: u64,
}

/// Both readings of a process's CPU time; `None` when it is gone.
pub fn cpu_sample(pid: u32, ticks: f64) -> Option<CpuSample> {
    let total_s = cpu_seconds(pid, ticks)?;
    let mut threads_ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        // A thread can exit between the listing and the read: it then counts in `total_s` only.
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        threads_ns += text.split_whitespace().next().and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    }
    Some(CpuSample { total_s, threads_ns })
}

/// CPU seconds from `a` to `b`: the threads' exact sum, unless the process total grew by more
/// than two ticks beyond it, which means a thread that ran in between has exited (its time
/// stays only in the total); then the total.
pub fn cpu_between(a: CpuSample, b: CpuSample, ticks: f64) -> f64 {
    let exact = b.threads_ns.saturating_sub(a.threads_ns) as f64 / 1e9;
    let coarse = b.total_s - a.total_s;
    if coarse > exact + 2.0 / ticks {
        coarse
    } else {
        exact
    }
}

/// Resident memory now and at its peak, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss: u64,
    pub peak: u64,
}

pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    Some(Memory {
        rss: kib("VmRSS:")?,
        peak: kib("VmHWM:")?,
    })
}

/// The pid of the process listening on 127.0.0.1:`port` (or any address), among the processes
/// this user may inspect; `None` when not found.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let inode = listening_inode(port)?;
    let needle = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t == Path::new(&needle)) {
                return Some(pid);
            }
        }
    }
    None
}

/// The socket inode of a listening TCP socket on `port`, from `/proc/net/tcp` and `tcp6`.
fn listening_inode(port: u16) -> Option<String> {
    let port_hex = format!(":{port:04X}");
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A = LISTEN), inode.
            if f.len() > 9 && f[1].ends_with(&port_hex) && f[3] == "0A" {
                return Some(f[9].to_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let ticks = clock_ticks();
        let busy: u64 = (0..20_000_000u64).fold(0, |a, x| a.wrapping_add(x * x));
        assert!(busy > 0);
        assert!(cpu_seconds(me, ticks).expect("cpu") >= 0.0);
        let m = memory(me).expect("memory");
        assert!(m.rss > 0 && m.peak >= m.rss);
        assert_eq!(cpu_seconds(u32::MAX, ticks), None);
        assert_eq!(cpu_sample(u32::MAX, ticks), None);
    }

    /// Burns `ns` of this thread's own CPU time (by its own schedstat), whatever else runs.
    fn burn(ns: u64) {
        let own = || -> u64 {
            let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
            text.split_whitespace().next().unwrap().parse().unwrap()
        };
        let start = own();
        let mut x = 0u64;
        while own() < start + ns {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
    }

    /// 300 ms burnt by a thread that outlives both samples: the exact reading has all of it,
    /// and the tick total agrees to two ticks. Burnt by a thread that exits between them: only
    /// the tick total keeps it, and `cpu_between` falls back to that.
    #[test]
    fn thread_time_is_exact_and_the_ticks_catch_exited_threads() {
        const BURN_NS: u64 = 300_000_000;
        let me = std::process::id();
        let ticks = clock_ticks();
        let tick = 1.0 / ticks;

        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            go_rx.recv().unwrap();
            burn(BURN_NS);
            done_tx.send(()).unwrap();
            // Alive until the second sample is taken.
            let _ = go_rx.recv();
        });
        let threads = || -> Vec<String> {
            let mut t: Vec<String> = std::fs::read_dir("/proc/self/task").unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            t.sort();
            t
        };
        let before = threads();
        let a = cpu_sample(me, ticks).unwrap();
        go_tx.send(()).unwrap();
        done_rx.recv().unwrap();
        let b = cpu_sample(me, ticks).unwrap();
        let after = threads();
        drop(go_tx);
        worker.join().unwrap();
        let exact = (b.threads_ns as f64 - a.threads_ns as f64) / 1e9;
        assert!(b.total_s - a.total_s >= 0.29 - 2.0 * tick, "{a:?} {b:?}");
        assert!(cpu_between(a, b, ticks) >= exact);
        // Exact when no thread came or went meanwhile (always so under nextest, one test per
        // process; `cargo test` runs other tests' threads alongside). A running thread's
        // schedstat lags by up to a scheduler tick, hence 0.29 for 0.3.
        if before == after {
            assert!((0.29..0.39).contains(&exact), "{a:?} {b:?}");
            assert_eq!(cpu_between(a, b, ticks), exact);
        }

        let a = cpu_sample(me, ticks).unwrap();
        std::thread::spawn(|| burn(BURN_NS)).join().unwrap();
        let b = cpu_sample(me, ticks).unwrap();
        let exact = (b.threads_ns as f64 - a.threads_ns as f64) / 1e9;
        let coarse = b.total_s - a.total_s;
        assert!(exact < 0.3, "the exited thread is not among the live ones: {a:?} {b:?}");
        assert!(coarse >= 0.29 - 2.0 * tick, "{a:?} {b:?}");
        assert_eq!(cpu_between(a, b, ticks), coarse);
    }

    #[test]
    fn finds_the_listener_of_a_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
    }
}
