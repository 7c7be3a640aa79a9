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

/// How long a node may take to answer `/healthz`, and the cluster to agree on a meta leader.
/// Generous: on a 2-core machine shared with compilers, a node's start and the first raft
/// election take seconds, not the milliseconds they take on an idle one.
const READY_WITHIN: Duration = Duration::from_secs(60);

impl NatsCluster {
    /// Starts three nodes and waits until each answers `/healthz` and all three name the same
    /// JetStream meta leader (before that, creating a stream fails or times out). A node that
    /// exits at start (its port, picked free a moment before, was taken meanwhile by another
    /// process's connection) makes the whole cluster start again on new ports, three times at
    /// most. `None` (skip) when nats-server is not installed and CI is not set.
    pub fn start() -> Option<NatsCluster> {
        let Some(bin) = server_binary() else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("nats-server is not installed and CI=true: install Debian's nats-server (scripts/test.sh does)");
            }
            eprintln!("skipping: nats-server not installed (apt-get install nats-server, or run through scripts/test.sh)");
            return None;
        };
        for attempt in 1..=3 {
            let mut cluster = NatsCluster::spawn(&bin);
            match cluster.wait_ready() {
                Ok(()) => return Some(cluster),
                Err(e) => {
                    eprintln!("nats cluster start, attempt {attempt} of 3: {e}");
                    cluster.dump_logs();
                }
            }
        }
        panic!("the 3-node nats cluster did not start (logs above)");
    }

    fn spawn(bin: &PathBuf) -> NatsCluster {
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
            node.spawn(bin);
            nodes.push(node);
        }
        NatsCluster { nodes, _dir: dir }
    }

    /// Every running node healthy and agreeing on one meta leader, within [`READY_WITHIN`].
    pub fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        for n in self.nodes.iter_mut().filter(|n| n.child.is_some()) {
            n.wait_healthy(deadline)?;
        }
        loop {
            let leaders: Vec<Option<String>> =
                self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.meta_leader()).collect();
            if leaders[0].is_some() && leaders.iter().all(|l| l == &leaders[0]) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no agreed JetStream meta leader within {READY_WITHIN:?}: {leaders:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the node called `name` (`n0`, `n1`, `n2`), as JetStream names leaders.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Every node's client URL, comma-separated (what the `url` option takes).
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }

    /// Prints every node's log (stderr of nats-server) to stderr: evidence when a test fails.
    pub fn dump_logs(&self) {
        for n in &self.nodes {
            let log = std::fs::read_to_string(n.store.with_extension("log")).unwrap_or_default();
            eprintln!("----- nats node {} log -----\n{log}", n.name);
        }
    }

    /// Kills node `i` (SIGKILL: no clean shutdown, as a crashed machine).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its ports and store; it rejoins and catches up. Waits until
    /// the cluster agrees on a meta leader again.
    pub fn restart(&mut self, i: usize) {
        let bin = server_binary().expect("nats-server");
        self.nodes[i].spawn(&bin);
        if let Err(e) = self.wait_ready() {
            self.dump_logs();
            panic!("nats node {} did not come back: {e}", self.nodes[i].name);
        }
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

    /// `GET /healthz` on the monitoring port answers 200 once the server (and JetStream) is
    /// up. Fails at once if the process exited (e.g. its port was taken).
    fn wait_healthy(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            if http_get(self.monitor_port, "/healthz").is_some_and(|(status, _)| status == 200) {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("nats node {} exited at start ({status})", self.name));
            }
            if Instant::now() > deadline {
                return Err(format!("nats node {} not healthy within {READY_WITHIN:?}", self.name));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The JetStream meta leader this node knows of (`/jsz`), if any.
    fn meta_leader(&self) -> Option<String> {
        let (status, body) = http_get(self.monitor_port, "/jsz")?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["meta_cluster"]["leader"].as_str().filter(|l| !l.is_empty()).map(str::to_owned)
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Status code and body of a plain HTTP/1.0 GET on 127.0.0.1 (std only; no client needed).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
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
