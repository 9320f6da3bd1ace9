//! `IdempotencyLayer` over `RedisStore`: several app instances, each with its own connection,
//! share one Redis (or one cluster) and still run every key exactly once; and what clients see
//! when the server pauses, restarts or drops connections while requests are in flight.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_idempotency::body::{RequestBody, ResponseBody};
use tower_idempotency::store::{OwnerToken, RedisStore, Store};
use tower_idempotency::{IdempotencyClaim, IdempotencyLayer, Outcome};

use common::redis::{RedisCluster, RedisServer, shared_url, unique_prefix};

const TTL: Duration = Duration::from_secs(60);

type App =
    BoxCloneSyncService<Request<Full<Bytes>>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

/// How often the handler ran, per client key.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<HashMap<String, usize>>>);

impl Runs {
    fn of(&self, key: &str) -> usize {
        self.0.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    fn all(&self) -> HashMap<String, usize> {
        self.0.lock().unwrap().clone()
    }
}

/// What the handler does besides counting, before it answers.
type Hook = Arc<dyn Fn() + Send + Sync>;

/// One app instance: `layer` over a handler that counts its runs, runs `hook`, waits `delay`,
/// and answers `201` with a body no other run produces.
fn app<St: Store>(layer: IdempotencyLayer<St>, runs: &Runs, delay: Duration, hook: Hook) -> App {
    let runs = runs.clone();
    let service = ServiceBuilder::new().layer(layer).service_fn(
        move |req: Request<RequestBody<Full<Bytes>>>| {
            let runs = runs.clone();
            let hook = Arc::clone(&hook);
            async move {
                let key = req.headers()["idempotency-key"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                // Unprotected runs (the store failed, the layer fails open) have no claim.
                let owner = req
                    .extensions()
                    .get::<IdempotencyClaim>()
                    .map_or_else(|| "nobody".to_owned(), |c| c.token().to_string());
                *runs.0.lock().unwrap().entry(key.clone()).or_default() += 1;
                hook();
                tokio::time::sleep(delay).await;
                let body = format!("{key} run by {owner} #{}", runs.of(&key));
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(StatusCode::CREATED)
                        .header("content-type", "text/plain")
                        .body(Full::new(Bytes::from(body)))
                        .unwrap(),
                )
            }
        },
    );
    BoxCloneSyncService::new(service)
}

fn no_hook() -> Hook {
    Arc::new(|| {})
}

/// What a client saw.
#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    replayed: bool,
    outcome: Option<Outcome>,
    retry_after: bool,
    body: Bytes,
}

async fn send(app: &App, key: &str) -> Answer {
    let req = Request::post("/orders")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!("{{\"order\":\"{key}\"}}"))))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let replayed = res
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let retry_after = res.headers().contains_key("retry-after");
    let status = res.status();
    let outcome = res.extensions().get::<Outcome>().copied();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        replayed,
        outcome,
        retry_after,
        body,
    }
}

/// Sends `duplicates` copies of each of `keys` keys at once, spread over `apps`, then one more
/// round after all finished; checks that every key ran exactly once and what everyone got.
async fn exactly_once(apps: &[App], runs: &Runs, keys: usize, duplicates: usize, waiting: bool) {
    let run = format!("{:x}", OwnerToken::generate().as_u128());
    let key = |k: usize| format!("{run}-{k}");
    let mut tasks = tokio::task::JoinSet::new();
    // Duplicates of one key go out next to each other, to different instances.
    for d in 0..duplicates {
        for k in 0..keys {
            let app = apps[(k + d) % apps.len()].clone();
            let key = key(k);
            tasks.spawn(async move { (key.clone(), send(&app, &key).await) });
        }
    }
    let mut answers: HashMap<String, Vec<Answer>> = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        let (key, answer) = done.unwrap();
        answers.entry(key).or_default().push(answer);
    }

    let runs_now = runs.all();
    let (mut replays, mut conflicts) = (0, 0);
    for k in 0..keys {
        let key = key(k);
        assert_eq!(
            runs_now.get(&key),
            Some(&1),
            "{key} ran {:?} times",
            runs_now.get(&key)
        );
        let answers = &answers[&key];
        assert_eq!(answers.len(), duplicates);
        let executed: Vec<_> = answers
            .iter()
            .filter(|a| a.outcome.is_some_and(Outcome::executed))
            .collect();
        assert_eq!(executed.len(), 1, "{key}: {answers:?}");
        let first = executed[0];
        assert_eq!(first.status, StatusCode::CREATED);
        assert!(!first.replayed);
        for a in answers
            .iter()
            .filter(|a| !a.outcome.is_some_and(Outcome::executed))
        {
            match a.outcome {
                Some(Outcome::Replayed) => {
                    assert_eq!(a.status, StatusCode::CREATED);
                    assert!(a.replayed);
                    assert_eq!(a.body, first.body, "a replay is byte-identical");
                    replays += 1;
                }
                Some(Outcome::Conflict) if !waiting => {
                    assert_eq!(a.status, StatusCode::CONFLICT);
                    assert!(a.retry_after);
                    conflicts += 1;
                }
                _ => panic!("{key}: unexpected answer {a:?}"),
            }
        }
        // A retry after everything settled is a replay of the one execution.
        let retry = send(&apps[k % apps.len()], &key).await;
        assert_eq!(retry.outcome, Some(Outcome::Replayed), "{key}: {retry:?}");
        assert_eq!(retry.body, first.body);
    }
    assert_eq!(replays + conflicts, keys * (duplicates - 1));
    assert_eq!(runs.all(), runs_now, "the retries ran nothing");
    if waiting {
        assert_eq!(conflicts, 0);
    }
}

/// A layer tuned for tests under load: the store calls get a generous time limit so that a busy
/// machine does not turn into 503s (what is tested is the number of executions).
fn loaded_layer<C>(store: RedisStore<C>) -> IdempotencyLayer<RedisStore<C>>
where
    RedisStore<C>: Store,
{
    IdempotencyLayer::new(store).store_timeout(Duration::from_secs(10))
}

/// A connection manager on the shared server without a response timeout of its own: the layer's
/// store timeout bounds every call (see "Timeouts" in `RedisStore`'s docs).
async fn shared_manager() -> redis::aio::ConnectionManager {
    let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(None);
    redis::Client::open(shared_url())
        .unwrap()
        .get_connection_manager_with_config(config)
        .await
        .expect("connect to REDIS_URL")
}

/// Three instances, each with its own connection to one Redis: 200 keys × 20 duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_across_instances_run_once() {
    let prefix = unique_prefix("layer");
    let runs = Runs::default();
    let mut apps = Vec::new();
    for _ in 0..3 {
        let store = RedisStore::new(shared_manager().await, TTL).with_prefix(&prefix);
        apps.push(app(
            loaded_layer(store),
            &runs,
            Duration::from_millis(20),
            no_hook(),
        ));
    }
    exactly_once(&apps, &runs, 200, 20, false).await;
}

/// The same with duplicates waiting for the owner: everyone gets the one response, nobody 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_duplicates_across_instances_get_the_replay() {
    let prefix = unique_prefix("layer-wait");
    let runs = Runs::default();
    let mut apps = Vec::new();
    for _ in 0..3 {
        let store = RedisStore::new(shared_manager().await, TTL)
            .with_prefix(&prefix)
            .with_poll_interval(Duration::from_millis(10));
        let layer = loaded_layer(store).wait_for_in_flight(Duration::from_secs(30));
        apps.push(app(layer, &runs, Duration::from_millis(50), no_hook()));
    }
    exactly_once(&apps, &runs, 200, 20, true).await;
}

/// Three instances on a three-primary cluster, each with its own cluster connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_across_instances_run_once_on_cluster() {
    let cluster = RedisCluster::start();
    let runs = Runs::default();
    let mut apps = Vec::new();
    for _ in 0..3 {
        let store = RedisStore::new(cluster.connection().await, TTL);
        apps.push(app(
            loaded_layer(store),
            &runs,
            Duration::from_millis(20),
            no_hook(),
        ));
    }
    exactly_once(&apps, &runs, 200, 20, false).await;
}

/// Sends `key` until a request runs it, while the others get `409`: a claim nobody runs must be
/// released before `deadline`.
async fn retry_until_it_runs(app: &App, key: &str, deadline: Instant, stuck: &str) -> Answer {
    loop {
        let a = send(app, key).await;
        if a.outcome == Some(Outcome::Recorded) {
            return a;
        }
        assert_eq!(a.status, StatusCode::CONFLICT, "{a:?}");
        assert!(Instant::now() < deadline, "{stuck}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type ManagedLayer = IdempotencyLayer<RedisStore<redis::aio::ConnectionManager>>;

/// A private server and one instance over a `ConnectionManager`, with short store timeouts.
async fn faulty(
    server: &RedisServer,
    configure: impl FnOnce(ManagedLayer) -> ManagedLayer,
    delay: Duration,
    hook: Hook,
) -> (App, Runs) {
    let store = RedisStore::new(server.connection_manager().await, TTL);
    let layer = configure(IdempotencyLayer::new(store).store_timeout(Duration::from_millis(200)));
    let runs = Runs::default();
    let app = app(layer, &runs, delay, hook);
    // Load the scripts, so that a paused call is the script itself.
    assert_eq!(send(&app, "warm-up").await.outcome, Some(Outcome::Recorded));
    (app, runs)
}

/// Paused during `begin`: the client gets a 503 and the handler does not run. The claim lands
/// when the pause ends (the store cannot tell); the layer releases it in the background, so a
/// retry runs it, once, well before its lease would have run out.
#[tokio::test]
async fn paused_during_begin() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(1500);
    let (app, runs) = faulty(&server, |l| l.lease(lease), Duration::ZERO, no_hook()).await;

    let paused = Instant::now();
    server.pause(Duration::from_millis(1000));
    let a = send(&app, "k").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{a:?}");
    assert_eq!(a.outcome, Some(Outcome::StoreUnavailable));
    assert!(a.retry_after);
    assert!(paused.elapsed() < Duration::from_millis(1000));
    assert_eq!(runs.of("k"), 0);

    // The timed-out claim landed when the pause ended, under a token no request holds. The
    // layer releases it in the background, so retries run well before its lease would end.
    let deadline = paused + Duration::from_millis(1000) + lease;
    tokio::time::sleep_until((paused + Duration::from_millis(1100)).into()).await;
    let a = retry_until_it_runs(&app, "k", deadline, "the stray claim was not released").await;
    assert!(Instant::now() < deadline, "freed before the lease ran out");
    assert_eq!(runs.of("k"), 1);
    let b = send(&app, "k").await;
    assert_eq!(b.outcome, Some(Outcome::Replayed));
    assert_eq!(b.body, a.body);
    assert_eq!(runs.of("k"), 1);
}

/// A client that gives up while Redis is paused and its `begin` waits in the server's queue:
/// the claim lands when the pause ends, under a token nobody runs. The layer releases it as soon
/// as the server answers, so the client's retry runs at once instead of getting `409`s for the
/// whole (here 10 s) lease.
#[tokio::test]
async fn a_client_that_gives_up_during_a_paused_begin_leaves_no_claim() {
    let server = RedisServer::start();
    let lease = Duration::from_secs(10);
    let (app, runs) = faulty(
        &server,
        |l| l.lease(lease).store_timeout(Duration::from_secs(5)),
        Duration::ZERO,
        no_hook(),
    )
    .await;

    let pause = Duration::from_millis(1000);
    let paused = Instant::now();
    server.pause(pause);
    let gave_up = tokio::time::timeout(Duration::from_millis(200), send(&app, "k")).await;
    assert!(gave_up.is_err(), "the client gives up before Redis answers");
    assert_eq!(runs.of("k"), 0);

    tokio::time::sleep_until((paused + pause + Duration::from_millis(100)).into()).await;
    let deadline = paused + pause + Duration::from_secs(2);
    let a = retry_until_it_runs(&app, "k", deadline, "the orphaned claim was not released").await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(runs.of("k"), 1);
    let b = send(&app, "k").await;
    assert_eq!(b.outcome, Some(Outcome::Replayed));
    assert_eq!(b.body, a.body);
    assert_eq!(runs.of("k"), 1);
}

/// Paused during `complete` (the handler pauses the server just before it answers): the client
/// still gets the handler's response; the record lands when the pause ends, and retries get it.
#[tokio::test]
async fn paused_during_complete() {
    let server = Arc::new(RedisServer::start());
    let pause_now = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hook: Hook = {
        let (server, pause_now) = (Arc::clone(&server), Arc::clone(&pause_now));
        Arc::new(move || {
            if pause_now.swap(false, std::sync::atomic::Ordering::SeqCst) {
                server.pause(Duration::from_millis(800));
            }
        })
    };
    let (app, runs) = faulty(&server, |l| l, Duration::ZERO, hook).await;

    pause_now.store(true, std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let a = send(&app, "k").await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert_eq!(a.outcome, Some(Outcome::Recorded));
    assert!(!a.replayed);
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "answered before the pause ended"
    );
    assert_eq!(runs.of("k"), 1);

    tokio::time::sleep_until((started + Duration::from_millis(1000)).into()).await;
    let b = send(&app, "k").await;
    assert_eq!(b.outcome, Some(Outcome::Replayed), "{b:?}");
    assert_eq!(b.body, a.body);
    assert_eq!(runs.of("k"), 1);
}

/// Server down: 503s and no run; after the restart, the next request runs once.
#[tokio::test]
async fn server_down_then_restarted() {
    let mut server = RedisServer::start();
    let (app, runs) = faulty(&server, |l| l, Duration::ZERO, no_hook()).await;

    server.kill();
    for _ in 0..3 {
        let a = send(&app, "k").await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{a:?}");
        assert_eq!(runs.of("k"), 0);
    }

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    let executed = loop {
        let a = send(&app, "k").await;
        if a.outcome == Some(Outcome::Recorded) {
            break a;
        }
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{a:?}");
        assert_eq!(runs.of("k"), 0);
        assert!(Instant::now() < deadline, "no recovery after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(runs.of("k"), 1);
    let b = send(&app, "k").await;
    assert_eq!(b.outcome, Some(Outcome::Replayed));
    assert_eq!(b.body, executed.body);
}

/// Server down with `fail_open(true)`: the handler runs unprotected, and says so.
#[tokio::test]
async fn server_down_fail_open() {
    let mut server = RedisServer::start();
    let (app, runs) = faulty(&server, |l| l.fail_open(true), Duration::ZERO, no_hook()).await;
    server.kill();
    let a = send(&app, "k").await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.outcome, Some(Outcome::Unprotected));
    assert_eq!(runs.of("k"), 1);
}

/// A handler slower than the lease keeps its key: the layer renews it in Redis, so duplicates
/// get 409 all along, and the replay afterwards.
#[tokio::test]
async fn slow_handler_keeps_its_claim() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(300);
    let (app, runs) = faulty(
        &server,
        |l| l.lease(lease),
        Duration::from_millis(1200),
        no_hook(),
    )
    .await;

    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, "slow").await }
    });
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let a = send(&app, "slow").await;
        assert_eq!(a.status, StatusCode::CONFLICT, "{a:?}");
    }
    let first = first.await.unwrap();
    assert_eq!(first.outcome, Some(Outcome::Recorded));
    let again = send(&app, "slow").await;
    assert_eq!(again.outcome, Some(Outcome::Replayed));
    assert_eq!(again.body, first.body);
    assert_eq!(runs.of("slow"), 1);
}

/// The store's connection is killed while the handler runs. A RESP3 `ConnectionManager`
/// reconnects at once, the response is recorded, and retries replay it.
#[tokio::test]
async fn connection_killed_while_handler_runs() {
    let server = Arc::new(RedisServer::start());
    let connection = redis::Client::open(format!("{}?protocol=resp3", server.url()))
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let hook: Hook = {
        let server = Arc::clone(&server);
        Arc::new(move || {
            server.kill_clients();
        })
    };
    let runs = Runs::default();
    let layer = IdempotencyLayer::new(RedisStore::new(connection, TTL));
    // The handler answers a little after the kill, so that the manager hears of it first.
    let app = app(layer, &runs, Duration::from_millis(200), hook);
    let a = send(&app, "k").await;
    assert_eq!(a.outcome, Some(Outcome::Recorded), "{a:?}");
    let b = send(&app, "k").await;
    assert_eq!(b.outcome, Some(Outcome::Replayed), "{b:?}");
    assert_eq!(b.body, a.body);
    assert_eq!(runs.of("k"), 1);
}

/// A retry after the response's retention, while Redis still remembers the key (its
/// tombstone), gets the `result-expired` problem and never runs again, on every instance; a
/// different request under the key is still a mismatch; after the key retention the key runs
/// again. With the key retention at the response's, the key runs again at once.
#[tokio::test]
async fn a_retry_after_the_response_expired_gets_result_expired() {
    let prefix = unique_prefix("layer-retention");
    let counter = common::Counter::new();
    let store = |key_ttl: Duration| {
        let prefix = prefix.clone();
        async move {
            let store = RedisStore::new(shared_manager().await, Duration::from_millis(300))
                .with_key_ttl(key_ttl)
                .with_prefix(&prefix);
            IdempotencyLayer::new(store)
        }
    };
    let mut one = common::app(store(Duration::from_millis(2_000)).await, &counter);
    let mut two = common::app(store(Duration::from_millis(2_000)).await, &counter);
    let order = |key: &str, amount: u32| common::post(key, &format!("{{\"amount\":{amount}}}"));

    let first = common::send(&mut one, order("k", 1)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for mut svc in [one.clone(), two.clone(), one.clone()] {
        let late = common::send(&mut svc, order("k", 1)).await;
        common::assert_problem(&late, 409, "result-expired");
        assert_eq!(late.outcome, Some(Outcome::ReplayUnavailable));
    }
    let other = common::send(&mut two, order("k", 2)).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(counter.get(), 1);

    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let again = common::send(&mut two, order("k", 1)).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.outcome, Some(Outcome::Recorded));
    assert_eq!(counter.get(), 2);

    let mut forgetting = common::app(store(Duration::from_millis(300)).await, &counter);
    let first = common::send(&mut forgetting, order("f", 1)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = common::send(&mut forgetting, order("f", 1)).await;
    assert_eq!(again.outcome, Some(Outcome::Recorded));
    assert_eq!(counter.get(), 4);
}
