//! A private InfluxDB 1.x server for tests that stop and restart it (outage tests), started
//! from the `influxd` binary that scripts/test.sh installs. Bound to 127.0.0.1 on a free port,
//! data in a temp dir, killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct InfluxServer {
    pub url: String,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < 65000 && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair on 127.0.0.1");
}

impl InfluxServer {
    /// Starts a server, or returns None (printing why) when `influxd` is not installed and
    /// this is not CI; under CI=true a missing influxd is a failure.
    pub async fn start() -> Option<InfluxServer> {
        if Command::new("influxd").arg("version").output().is_err() {
            if crate::in_ci() {
                panic!("influxd not installed: run the tests through scripts/test.sh");
            }
            eprintln!("skipping: influxd not installed (run the tests through scripts/test.sh)");
            return None;
        }
        let port = free_port_pair();
        let dir = std::env::temp_dir().join(format!("ds-influxd-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n[meta]\n  dir = \"{d}/meta\"\n[data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n[http]\n  bind-address = \"127.0.0.1:{port}\"\n  log-enabled = false\n[monitor]\n  store-enabled = false\n[subscriber]\n  enabled = false\n[continuous_queries]\n  enabled = false\n",
            rpc = port + 1,
            d = dir.display()
        );
        std::fs::write(dir.join("influxdb.conf"), conf).unwrap();
        let mut s = InfluxServer { url: format!("http://127.0.0.1:{port}"), port, dir, child: None };
        s.resume().await;
        Some(s)
    }

    /// Stops the server (SIGKILL: an outage, not a maintenance window). Data on disk stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.join("influxd.log")).unwrap();
        let child = Command::new("influxd")
            .args(["-config", self.dir.join("influxdb.conf").to_str().unwrap()])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn influxd");
        self.child = Some(child);
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client.get(format!("{}/ping", self.url)).send().await {
                if r.status().as_u16() == 204 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(self.dir.join("influxd.log")).unwrap_or_default();
        panic!("influxd on port {} not ready after 10 s:\n{log}", self.port);
    }
}

impl Drop for InfluxServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
