//! A throwaway NATS JetStream cluster on 127.0.0.1: three `nats-server` processes joined by
//! cluster routes, each with its own temp store, killed on drop.
//!
//! `nats-server` comes from Debian's package of that name (scripts/test.sh installs it).
//! Without it, [`NatsCluster::start`] prints a skip line and returns `None`, except under
//! `CI=true`, where a missing server is a failure: CI must run these tests.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One node of the cluster.
pub struct NatsNode {
    pub name: String,
    pub client_port: u16,
    pub cluster_port: u16,
    pub monitor_port: u16,
    store: PathBuf,
    routes: String,
    child: Option<Child>,
}

/// Three nodes; a stream created with `num_replicas = 3` survives one of them dying.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    _dir: TempDir,
}

/// The binary, from `NATS_SERVER` or the PATH (`/usr/sbin` is not on every user's PATH).
fn server_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin"].iter().map(PathBuf::from))
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port on 127.0.0.1")
}

impl NatsCluster {
    /// Starts three nodes and waits until each answers `/healthz` (JetStream ready), at most
    /// 30 s. `None` (skip) when nats-server is not installed and CI is not set.
    pub fn start() -> Option<NatsCluster> {
        let Some(bin) = server_binary() else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("nats-server is not installed and CI=true: install Debian's nats-server (scripts/test.sh does)");
            }
            eprintln!("skipping: nats-server not installed (apt-get install nats-server, or run through scripts/test.sh)");
            return None;
        };
        let dir = TempDir::new("ds-nats");
        let ports: Vec<(u16, u16, u16)> = (0..3).map(|_| (free_port(), free_port(), free_port())).collect();
        let routes: Vec<String> = ports.iter().map(|p| format!("nats://127.0.0.1:{}", p.1)).collect();
        let mut nodes = Vec::new();
        for (i, &(client_port, cluster_port, monitor_port)) in ports.iter().enumerate() {
            let store = dir.0.join(format!("n{i}"));
            std::fs::create_dir_all(&store).expect("node store dir");
            let others: Vec<&str> = routes.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, r)| r.as_str()).collect();
            let mut node = NatsNode {
                name: format!("n{i}"),
                client_port,
                cluster_port,
                monitor_port,
                store,
                routes: others.join(","),
                child: None,
            };
            node.spawn(&bin);
            nodes.push(node);
        }
        let cluster = NatsCluster { nodes, _dir: dir };
        for n in &cluster.nodes {
            assert!(n.wait_healthy(Duration::from_secs(30)), "nats node {} did not become healthy", n.name);
        }
        Some(cluster)
    }

    /// Every node's client URL, comma-separated (what the `url` option takes).
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }

    /// Kills node `i` (SIGKILL: no clean shutdown, as a crashed machine).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its ports and store; it rejoins and catches up.
    pub fn restart(&mut self, i: usize) {
        let bin = server_binary().expect("nats-server");
        self.nodes[i].spawn(&bin);
        assert!(self.nodes[i].wait_healthy(Duration::from_secs(30)), "nats node {} did not come back", self.nodes[i].name);
    }
}

impl NatsNode {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self, bin: &PathBuf) {
        let log = std::fs::File::create(self.store.with_extension("log")).expect("node log file");
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &self.client_port.to_string(), "-n", &self.name, "-js", "-sd"])
            .arg(&self.store)
            .args(["-m", &self.monitor_port.to_string(), "--cluster_name", "ds-test"])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", self.cluster_port), "--routes", &self.routes])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `GET /healthz` on the monitoring port answers 200 once the server (and JetStream) is up.
    fn wait_healthy(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if http_status(self.monitor_port, "/healthz") == Some(200) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The status code of a plain HTTP/1.0 GET on 127.0.0.1 (std only; no client needed).
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.split_whitespace().nth(1)?.parse().ok()
}

/// A directory removed on drop (the crate has no tempfile dependency outside dev).
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let p = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
