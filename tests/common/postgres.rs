//! PostgreSQL for tests: the shared server of `DATABASE_URL` (started by `.ci/test`), and
//! private servers for fault and crash tests, started on a free loopback port in a temporary
//! directory (as the `postgres` user when running as root: PostgreSQL refuses root) and stopped
//! by pid on drop. Every wait is bounded.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tower_idempotency::store::{OwnerToken, PostgresStore, PostgresStoreBuilder, StoreKey};

/// The shared server's URL; `.ci/test` sets it (or starts a private server and sets it).
pub(crate) fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!("set DATABASE_URL to a PostgreSQL database (.ci/test starts one and sets it)")
    })
}

/// A pool of up to `max` connections to `url`.
pub(crate) async fn pool_for(url: &str, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// A pool of up to `max` connections to the shared server.
pub(crate) async fn pool(max: u32) -> PgPool {
    pool_for(&database_url(), max).await
}

/// A table name no other test or run uses.
pub(crate) fn unique_table(test: &str) -> String {
    format!("{test}_{}", OwnerToken::generate())
}

/// A store in a table of its own, migrated.
pub(crate) async fn store_in(pool: PgPool, test: &str, ttl: Duration) -> PostgresStore {
    store_with(pool, test, |b| b.ttl(ttl)).await
}

/// A store in a table of its own, configured by `configure`, migrated.
pub(crate) async fn store_with(
    pool: PgPool,
    test: &str,
    configure: impl FnOnce(PostgresStoreBuilder) -> PostgresStoreBuilder,
) -> PostgresStore {
    let store = configure(PostgresStore::builder(pool).table(unique_table(test)))
        .build()
        .expect("a valid store configuration");
    store.migrate().await.expect("migrate");
    store
}

/// Sleeps until the database's clock, by which the store judges every time, has passed the
/// time in `column` (`lease_until`, `record_until`, `expires_at`) of `key`'s row; panics
/// instead when that is more than a minute away.
pub(crate) async fn sleep_past(store: &PostgresStore, key: &StoreKey, column: &str) {
    let left: Option<f64> = sqlx::query_scalar(&format!(
        "SELECT extract(epoch FROM {column} - now())::float8 FROM \"{}\" WHERE key = $1",
        store.table()
    ))
    .bind(&key.digest()[..])
    .fetch_optional(store.pool())
    .await
    .expect("read the key's row")
    .flatten();
    let left = left.unwrap_or_else(|| panic!("no {column} for the key"));
    assert!(left < 60.0, "{column} of the key is {left} s away");
    tokio::time::sleep(Duration::from_secs_f64(left.max(0.0)) + Duration::from_millis(10)).await;
}

/// The directory of PostgreSQL's programs: `PG_BIN`, else the newest Debian install.
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return dir.into();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| d.ok().map(|d| d.path().join("bin")))
                .filter(|bin| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .expect("PostgreSQL is not installed (.ci/services/postgres.sh installs it)")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// A PostgreSQL program, run as `postgres` when we are root.
fn program(name: &str) -> Command {
    let path = pg_bin().join(name);
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(path);
        cmd
    } else {
        Command::new(path)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// A private PostgreSQL server of one test.
pub(crate) struct PgServer {
    dir: PathBuf,
    port: u16,
    pid: Option<u32>,
}

impl PgServer {
    /// Creates a cluster in a fresh temporary directory and starts it.
    pub(crate) fn start() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tower-idempotency-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown the data dir to postgres");
        }
        let out = program("initdb")
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = Self {
            dir,
            port: 0,
            pid: None,
        };
        server.restart();
        server
    }

    /// Starts the server (again), on its port when it had one (so that pools reconnect to it),
    /// else on a free port; waits until it accepts connections.
    pub(crate) fn restart(&mut self) {
        assert!(self.pid.is_none(), "the server is running");
        for attempt in 0..5 {
            let port = if self.port != 0 && attempt < 3 {
                self.port
            } else {
                free_port()
            };
            let options = format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {} -c max_connections=200 -c fsync=off",
                self.dir.display()
            );
            let status = program("pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "30", "start", "-o", &options])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run pg_ctl");
            if status.success() {
                self.port = port;
                self.pid = Some(read_pid(&self.dir.join("data")));
                return;
            }
        }
        panic!(
            "PostgreSQL did not start; see {}",
            self.dir.join("server.log").display()
        );
    }

    /// The server's URL.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (`SIGQUIT`: immediate shutdown, like a crash) and waits until
    /// its postmaster is gone.
    pub(crate) fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            signal(pid, "QUIT");
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(pid) {
                signal(pid, "KILL");
            }
            // The lock file of an immediate shutdown is left behind; pg_ctl copes with it.
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_pid(data: &Path) -> u32 {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).expect("postmaster.pid");
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("a pid in postmaster.pid")
}

/// Sends `signal` to `pid` (and to nobody else).
pub(crate) fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// Whether a process `pid` exists and is not a zombie.
pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}
