//! The crash test: `examples/payments_postgres.rs` runs in a process of its own (this test
//! binary, started again as the app) over a private PostgreSQL cluster, a driver sends many
//! keyed payments with retries, and the app is killed with `SIGKILL` at random moments and
//! restarted. At the end, from the database: no key has more than one payment row; a key has a
//! payment exactly when its idempotency row says its effects committed; every key with a
//! payment answers with the replay of that payment or the "response not stored" problem; no key
//! without a payment is stuck once its lease is over. It prints its figures.

mod common;

#[path = "../examples/payments_postgres.rs"]
#[allow(dead_code)]
mod example;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::postgres::{PgServer, pool_for};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower_idempotency::store::{OwnerToken, StoreKey};

/// The app's lease: short, so that the keys of killed requests come free soon.
const LEASE: Duration = Duration::from_secs(1);
/// How many clients send payments at once.
const WORKERS: usize = 16;
/// How long the app is being killed; the driver then finishes its keys against a live app.
const KILLING: Duration = Duration::from_secs(20);
/// The bound of the whole test.
const DEADLINE: Duration = Duration::from_secs(100);

/// The app process: serves the example until it is killed. Run by `payments_survive_kill_9`.
#[test]
#[ignore = "the app process of `payments_survive_kill_9`, which starts it"]
fn app_process() {
    let (Ok(url), Ok(addr)) = (
        std::env::var("CRASH_DATABASE_URL"),
        std::env::var("CRASH_ADDR"),
    ) else {
        return;
    };
    let addr: SocketAddr = addr.parse().expect("CRASH_ADDR");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(example::serve(&url, addr, LEASE))
        .expect("serve");
}

/// The app, restarted as often as it is killed.
struct App {
    url: String,
    addr: SocketAddr,
    child: Option<Child>,
}

impl App {
    fn start(&mut self) {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["app_process", "--exact", "--ignored", "--nocapture"])
            .env("CRASH_DATABASE_URL", &self.url)
            .env("CRASH_ADDR", self.addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the app process");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the app did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `SIGKILL`, by pid, and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What one request got.
enum Answer {
    /// `201`, executed now (`false`) or replayed (`true`), with the payment's id.
    Paid { id: i64, replayed: bool },
    /// `409` "response not stored": the payment committed, its response was lost.
    NotStored,
    /// Anything to retry: no connection, `409` in progress, `5xx`.
    Retry,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn pay(client: &HttpClient, addr: SocketAddr, key: &str) -> Answer {
    let req = Request::post(format!("http://{addr}/payments"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(b"{\"amount\": 1000}")))
        .unwrap();
    let exchange = async {
        let res = client.request(req).await.ok()?;
        let status = res.status();
        let replayed = res.headers().contains_key("idempotent-replayed");
        let body = res.into_body().collect().await.ok()?.to_bytes();
        Some((status, replayed, body))
    };
    let Ok(Some((status, replayed, body))) =
        tokio::time::timeout(Duration::from_secs(5), exchange).await
    else {
        return Answer::Retry;
    };
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match status {
        StatusCode::CREATED => Answer::Paid {
            id: json["id"].as_i64().expect("a payment id"),
            replayed,
        },
        StatusCode::CONFLICT
            if json["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("#response-not-stored")) =>
        {
            Answer::NotStored
        }
        StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE => Answer::Retry,
        s if s.is_server_error() => Answer::Retry,
        other => panic!("key {key}: unexpected answer {other}: {json}"),
    }
}

/// Sends the payment of `key` until it gets a final answer (or the test's deadline nears).
async fn pay_until_answered(client: &HttpClient, addr: SocketAddr, key: &str, f: &Figures) {
    let started = Instant::now();
    while started.elapsed() < DEADLINE / 2 {
        f.requests.fetch_add(1, Ordering::Relaxed);
        match pay(client, addr, key).await {
            Answer::Paid { replayed, .. } => {
                let counter = if replayed { &f.replayed } else { &f.executed };
                counter.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Answer::NotStored => {
                f.not_stored.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Answer::Retry => {
                f.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[derive(Default)]
struct Figures {
    requests: AtomicUsize,
    retries: AtomicUsize,
    executed: AtomicUsize,
    replayed: AtomicUsize,
    not_stored: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_survive_kill_9() {
    let started = Instant::now();
    let server = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let addr: SocketAddr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let app = Arc::new(std::sync::Mutex::new(App {
        url: server.url(),
        addr,
        child: None,
    }));
    app.lock().unwrap().start();

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let figures = Arc::new(Figures::default());
    let keys = Arc::new(std::sync::Mutex::new(Vec::new()));
    let run = OwnerToken::generate();
    // Workers pay one new key after another while the app is being killed, each key retried
    // until it gets its final answer.
    let driver = {
        let tasks: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let (client, figures, keys) =
                    (client.clone(), Arc::clone(&figures), Arc::clone(&keys));
                tokio::spawn(async move {
                    let mut n = 0;
                    while started.elapsed() < KILLING {
                        let key = format!("crash-{run}-{worker}-{n}");
                        n += 1;
                        keys.lock().unwrap().push(key.clone());
                        pay_until_answered(&client, addr, &key, &figures).await;
                    }
                })
            })
            .collect();
        futures_util::future::join_all(tasks)
    };
    let driving = Arc::new(AtomicBool::new(true));
    let killer = {
        let (app, driving) = (Arc::clone(&app), Arc::clone(&driving));
        tokio::task::spawn_blocking(move || {
            let mut rng = OwnerToken::generate().as_u128() as u64 | 1;
            let mut kills = 0;
            let start = std::time::Instant::now();
            while driving.load(Ordering::Relaxed) && start.elapsed() < KILLING {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                std::thread::sleep(Duration::from_millis(100 + rng % 500));
                let mut app = app.lock().unwrap();
                app.kill();
                kills += 1;
                app.start();
            }
            kills
        })
    };
    for result in driver.await {
        result.unwrap();
    }
    driving.store(false, Ordering::Relaxed);
    let kills = killer.await.unwrap();

    // Every key whose owner was killed has its lease over by now.
    tokio::time::sleep(LEASE + Duration::from_millis(200)).await;
    let pool = pool_for(&server.url(), 4).await;
    let duplicates: Vec<(String, i64)> = sqlx::query_as(
        "SELECT idempotency_key, count(*) FROM payments GROUP BY 1 HAVING count(*) > 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        duplicates.is_empty(),
        "{} keys paid twice, e.g. {:?}",
        duplicates.len(),
        &duplicates[..duplicates.len().min(5)]
    );
    let paid: HashMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT idempotency_key, id FROM payments")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let keys = std::mem::take(&mut *keys.lock().unwrap());
    let (mut replays, mut not_stored, mut ran_late) = (0, 0, 0);
    for key in &keys {
        let digest = StoreKey::new(None, key).digest().to_vec();
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM idempotency WHERE key = $1 AND expires_at > now()",
        )
        .bind(digest)
        .fetch_optional(&pool)
        .await
        .unwrap();
        let marked = matches!(state.as_deref(), Some("committed" | "completed"));
        assert_eq!(
            paid.contains_key(key),
            marked,
            "key {key}: payment {:?}, idempotency state {state:?}",
            paid.get(key)
        );
        // A retryable answer (a `409` in progress, a `503`) is asked again for up to twice the
        // lease: a key still in progress after that is stuck.
        let mut answer = pay(&client, addr, key).await;
        for _ in 0..20 {
            if !matches!(answer, Answer::Retry) {
                break;
            }
            tokio::time::sleep(LEASE / 10).await;
            answer = pay(&client, addr, key).await;
        }
        match (paid.get(key), answer) {
            (Some(id), Answer::Paid { id: got, replayed }) => {
                assert!(replayed, "key {key} ran again");
                assert_eq!(got, *id, "key {key}: the replay names another payment");
                replays += 1;
            }
            (Some(_), Answer::NotStored) => not_stored += 1,
            // No payment, lease over: the key is free and runs now.
            (
                None,
                Answer::Paid {
                    replayed: false, ..
                },
            ) => ran_late += 1,
            (Some(_), _) => panic!("key {key}: no replay for its payment"),
            (None, _) => panic!("key {key}: stuck without a payment past its lease"),
        }
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total as usize, keys.len(), "one payment per key");
    let f = &figures;
    let _ = writeln!(
        std::io::stderr(),
        "crash test: {} keys, {kills} kills (SIGKILL) and restarts; driver: {} requests, \
         {} retried, {} executed, {} replayed, {} response-not-stored; at the end: {} payments, \
         0 keys paid twice, {replays} replays, {not_stored} response-not-stored, {ran_late} keys \
         without payment ran after their lease; {:.1} s",
        keys.len(),
        f.requests.load(Ordering::Relaxed),
        f.retries.load(Ordering::Relaxed),
        f.executed.load(Ordering::Relaxed),
        f.replayed.load(Ordering::Relaxed),
        f.not_stored.load(Ordering::Relaxed),
        paid.len(),
        started.elapsed().as_secs_f64()
    );
    drop(app);
    drop(server);
}
