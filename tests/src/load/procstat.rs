//! CPU time and memory of a process, read from `/proc` (Linux), and the process behind a
//! listening port (to find influxd from its URL).
//!
//! `/proc/<pid>/stat` fields 14 and 15 (utime, stime) are the process's CPU time over all its
//! threads, in clock ticks; `/proc/<pid>/status` has `VmRSS` (resident now) and `VmHWM` (peak
//! resident). Read directly rather than through a crate: a handful of lines, and these are
//! exactly the numbers `top` and `ps` show.

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
    }

    #[test]
    fn finds_the_listener_of_a_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
    }
}
