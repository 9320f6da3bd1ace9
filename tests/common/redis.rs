//! Private `redis-server` processes for tests: single nodes and a three-primary cluster.
//!
//! Every server listens on a free loopback port, keeps its files in a temporary directory, has
//! persistence off, and is killed (by pid) and cleaned up on drop. Every wait is bounded.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to answer `PING` after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cluster may take to agree that all slots are served.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a start is retried when the chosen port was taken in the meantime.
const PORT_ATTEMPTS: usize = 5;

/// A port that was free a moment ago (another process may still take it: callers retry).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "tower-idempotency-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create a temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `redis-server` child process.
pub(crate) struct RedisServer {
    port: u16,
    cluster_port: Option<u16>,
    args: Vec<String>,
    child: Option<Child>,
    dir: TempDir,
}

impl RedisServer {
    /// A standalone server.
    pub(crate) fn start() -> Self {
        Self::start_with(false, &[])
    }

    /// A standalone server with extra command-line options (`["--maxmemory", "1mb"]`).
    pub(crate) fn start_with_args(args: &[&str]) -> Self {
        Self::start_with(false, args)
    }

    fn start_with(cluster: bool, args: &[&str]) -> Self {
        let dir = TempDir::new("redis");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let cluster_port = cluster.then(free_port);
            if let Some(child) = spawn(port, cluster_port, &dir.0, &args) {
                return Self {
                    port,
                    cluster_port,
                    args,
                    child: Some(child),
                    dir,
                };
            }
            // The port was taken after we probed it: try another one.
        }
        panic!("could not start redis-server on a free port (is it installed?)");
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A new multiplexed connection with the driver's default timeouts.
    pub(crate) async fn connection(&self) -> redis::aio::MultiplexedConnection {
        client(&self.url())
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test server")
    }

    /// A new connection manager that retries reconnecting quickly and has no response timeout
    /// of its own (callers bound every call, as the layer does).
    pub(crate) async fn connection_manager(&self) -> redis::aio::ConnectionManager {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_millis(200))
            .set_response_timeout(None);
        client(&self.url())
            .get_connection_manager_with_config(config)
            .await
            .expect("connect to the test server")
    }

    /// A blocking connection for administrative commands.
    pub(crate) fn admin(&self) -> redis::Connection {
        let con = redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to the test server");
        con.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        con.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        con
    }

    /// `CLIENT PAUSE <d> ALL`: the server answers no client for `d`, then runs what queued up.
    pub(crate) fn pause(&self, d: Duration) {
        let () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(d.as_millis() as u64)
            .arg("ALL")
            .query(&mut self.admin())
            .unwrap();
    }

    /// `CLIENT KILL TYPE normal SKIPME yes`: drops every normal client connection but the one
    /// sending it. Returns how many were killed.
    pub(crate) fn kill_clients(&self) -> u64 {
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query(&mut self.admin())
            .unwrap()
    }

    /// `SCRIPT FLUSH`.
    pub(crate) fn script_flush(&self) {
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut self.admin())
            .unwrap();
    }

    /// Kills the process (SIGKILL) and waits for it; the port is left free.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, with the same (empty) data directory.
    pub(crate) fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = spawn(self.port, self.cluster_port, &self.dir.0, &self.args) {
                self.child = Some(child);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `CONFIG RESETSTAT` through `admin`.
    pub(crate) fn reset_stats(admin: &mut redis::Connection) {
        let () = redis::cmd("CONFIG").arg("RESETSTAT").query(admin).unwrap();
    }

    /// `INFO commandstats` through `admin`: calls per command (`get`, `evalsha`, `script|load`).
    pub(crate) fn command_stats(admin: &mut redis::Connection) -> BTreeMap<String, u64> {
        let info: String = redis::cmd("INFO").arg("commandstats").query(admin).unwrap();
        info.lines()
            .filter_map(|line| line.strip_prefix("cmdstat_"))
            .map(|line| {
                let (name, fields) = line.split_once(':').expect("name:fields");
                let calls = fields
                    .split(',')
                    .find_map(|f| f.strip_prefix("calls="))
                    .expect("calls=")
                    .parse()
                    .expect("a count");
                (name.to_owned(), calls)
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server binary private servers run: `TEST_REDIS_SERVER` (e.g. the `valkey-server` that
/// `.ci/services/valkey.sh` exports as `VALKEY_SERVER`), by default `redis-server`.
pub(crate) fn server_binary() -> String {
    std::env::var("TEST_REDIS_SERVER").unwrap_or_else(|_| String::from("redis-server"))
}

/// Spawns `redis-server` on `port` and waits until it answers; `None` when it exited or did not
/// answer in time (then it is killed).
fn spawn(port: u16, cluster_port: Option<u16>, dir: &Path, args: &[String]) -> Option<Child> {
    let mut cmd = Command::new(server_binary());
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join(format!("redis-{port}.log")));
    if let Some(bus) = cluster_port {
        cmd.args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-port", &bus.to_string()])
            .args(["--cluster-node-timeout", "5000"]);
    }
    cmd.args(args);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server (is it installed?)");
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if ping(port) {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Sends one `PING` over a fresh socket; true on `+PONG`.
fn ping(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Three primaries, no replicas, all 16384 slots assigned.
pub(crate) struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub(crate) fn start() -> Self {
        let nodes: Vec<_> = (0..3).map(|_| RedisServer::start_with(true, &[])).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn redis-cli");
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let status = loop {
            if let Some(status) = create.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = create.kill();
                let _ = create.wait();
                panic!("redis-cli --cluster create did not finish");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            let mut out = String::new();
            let _ = create.stdout.take().unwrap().read_to_string(&mut out);
            let _ = create.stderr.take().unwrap().read_to_string(&mut out);
            panic!("redis-cli --cluster create failed: {out}");
        }
        let cluster = Self { nodes };
        for node in &cluster.nodes {
            let mut admin = node.admin();
            loop {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut admin).unwrap();
                if info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains("cluster_known_nodes:3")
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster did not become ok: {info}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        cluster
    }

    pub(crate) fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Kills node `i` (SIGKILL); the others keep running.
    pub(crate) fn kill_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// A cluster client builder on the nodes, with `TCP_NODELAY` as the crate's docs advise.
    pub(crate) fn client_builder(&self) -> redis::cluster::ClusterClientBuilder {
        redis::cluster::ClusterClientBuilder::new(self.urls()).tcp_settings(nodelay())
    }

    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// A new cluster connection with the driver's default settings.
    pub(crate) async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        self.client_builder()
            .build()
            .unwrap()
            .get_async_connection()
            .await
            .expect("connect to the test cluster")
    }
}

/// `TCP_NODELAY` on, as the crate's docs advise: the `redis` crate leaves Nagle's algorithm on.
pub(crate) fn nodelay() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// A client for `url` (`?protocol=resp3` allowed) with [`nodelay`].
pub(crate) fn client(url: &str) -> redis::Client {
    let info = redis::IntoConnectionInfo::into_connection_info(url)
        .unwrap_or_else(|e| panic!("a valid redis URL {url}: {e}"))
        .set_tcp_settings(nodelay());
    redis::Client::open(info).expect("a client")
}

/// The shared server tests may use: `REDIS_URL`, by default `redis://127.0.0.1:6379`. Tests on it
/// keep to their own [`unique_prefix`] and never flush it.
pub(crate) fn shared_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| String::from("redis://127.0.0.1:6379"))
}

/// A new multiplexed connection to the shared server.
pub(crate) async fn shared_connection() -> redis::aio::MultiplexedConnection {
    client(&shared_url())
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connect to {} (set REDIS_URL): {e}", shared_url()))
}

/// A new connection manager on the shared server.
pub(crate) async fn shared_connection_manager() -> redis::aio::ConnectionManager {
    client(&shared_url())
        .get_connection_manager()
        .await
        .unwrap_or_else(|e| panic!("connect to {} (set REDIS_URL): {e}", shared_url()))
}

/// A prefix no other test run uses, for tests on a shared server.
pub(crate) fn unique_prefix(test: &str) -> String {
    // A fresh token: random per process, counting within it.
    format!(
        "test:{test}:{}:",
        tower_idempotency::store::OwnerToken::generate()
    )
}
