//! The client layer over hyper-util's client, end to end over real loopback sockets:
//! client layer → flaky proxy → server layer (axum, `MemoryStore`, and Redis with the `redis`
//! feature).
//!
//! The server counts its executions itself, per key, and answers what each one produced, so
//! the tests see both sides: how often the handler ran, and what the client got.

#[cfg(feature = "redis")]
mod common;
#[path = "../examples/support/flaky_proxy.rs"]
mod flaky_proxy;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use flaky_proxy::{Fault, Served, flaky_proxy, serve};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use hyper_util::service::TowerToHyperService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_idempotency::body::ResponseBody;
use tower_idempotency::client::{
    IdempotentRetry, IdempotentRetryLayer, ReplayBody, RetryReport, Stop,
};
use tower_idempotency::store::{BoxStore, MemoryStore};
use tower_idempotency::{IdempotencyClaim, IdempotencyLayer};

/// The bound on every await that could hang.
const LIMIT: Duration = Duration::from_secs(30);

async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut).await.expect("timed out")
}

/// One execution: the body it answered, and when it ran.
type Run = (String, tokio::time::Instant);

/// What the handler did: per key, each execution.
#[derive(Clone, Default)]
struct Runs {
    next: Arc<AtomicU64>,
    by_key: Arc<Mutex<HashMap<String, Vec<Run>>>>,
}

impl Runs {
    fn record(&self, headers: &HeaderMap) -> (usize, String) {
        let key = headers
            .get("idempotency-key")
            .and_then(|k| k.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let body = format!("order {id}");
        let mut by_key = self.by_key.lock().unwrap();
        let runs = by_key.entry(key).or_default();
        runs.push((body.clone(), tokio::time::Instant::now()));
        (runs.len(), body)
    }

    fn of(&self, key: &str) -> Vec<Run> {
        self.by_key
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    fn total(&self) -> usize {
        self.by_key.lock().unwrap().values().map(Vec::len).sum()
    }
}

/// `POST /orders`: `201` with a fresh order, after `x-delay-ms`.
async fn create_order(State(runs): State<Runs>, headers: HeaderMap, _body: Bytes) -> Response {
    if let Some(ms) = headers.get("x-delay-ms").and_then(|v| v.to_str().ok()) {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    let (_, body) = runs.record(&headers);
    (StatusCode::CREATED, body).into_response()
}

/// `POST /busy`: the first execution of a key answers `503` with `Retry-After` from
/// `x-retry-after`; later ones create the order.
async fn busy(State(runs): State<Runs>, headers: HeaderMap, _body: Bytes) -> Response {
    let (n, body) = runs.record(&headers);
    if n == 1 {
        let after = headers["x-retry-after"].clone();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", after)],
            body,
        )
            .into_response();
    }
    (StatusCode::CREATED, body).into_response()
}

/// `POST /big`: a 4 KiB answer, over the server layer's 1 KiB response cap.
async fn big(State(runs): State<Runs>, headers: HeaderMap, _body: Bytes) -> Response {
    let (_, body) = runs.record(&headers);
    (StatusCode::CREATED, format!("{body:<4096}")).into_response()
}

/// The quickstart-style server behind the server layer, on a loopback port.
async fn server(store: BoxStore, runs: &Runs) -> Served {
    let app = Router::new()
        .route("/orders", post(create_order))
        .route("/busy", post(busy))
        .route("/big", post(big))
        .with_state(runs.clone())
        .layer(IdempotencyLayer::new(store).max_response_body(1024));
    serve(TowerToHyperService::new(app)).await.unwrap()
}

type HttpClient = IdempotentRetry<Client<HttpConnector, ReplayBody<Full<Bytes>>>>;

/// The client stack of the README: the layer over hyper-util's client.
fn client(layer: IdempotentRetryLayer) -> HttpClient {
    let http = Client::builder(TokioExecutor::new()).build_http();
    ServiceBuilder::new().layer(layer).service(http)
}

/// Fast retries, so the tests do not wait on the default backoff.
fn layer() -> IdempotentRetryLayer {
    IdempotentRetryLayer::new().backoff(Duration::from_millis(5), Duration::from_millis(50))
}

struct Answer {
    status: StatusCode,
    replayed: bool,
    report: RetryReport,
    body: String,
}

async fn post_to<S>(
    client: &S,
    url: String,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Answer, S::Error>
where
    S: Service<
            http::Request<Full<Bytes>>,
            Response = http::Response<ResponseBody<hyper::body::Incoming>>,
        > + Clone,
{
    let mut req = http::Request::post(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    let res = bounded(client.clone().oneshot(req)).await?;
    let status = res.status();
    let replayed = res.headers().get("idempotent-replayed").is_some();
    let report = res.extensions().get::<RetryReport>().unwrap().clone();
    let body = bounded(res.into_body().collect()).await.unwrap().to_bytes();
    Ok(Answer {
        status,
        replayed,
        report,
        body: String::from_utf8(body.to_vec()).unwrap(),
    })
}

/// Many logical requests at once; the proxy loses the first answer of each. Each one runs
/// once, and its client gets that execution's response, replayed.
async fn each_request_runs_once(store: BoxStore) {
    const REQUESTS: usize = 64;
    let runs = Runs::default();
    let server = server(store, &runs).await;
    let (proxy, counts) = flaky_proxy(server.addr(), 1, Fault::AfterResponse)
        .await
        .unwrap();
    let client = client(layer());
    let url = format!("http://{}/orders", proxy.addr());
    let answers = futures_util::future::join_all((0..REQUESTS).map(|i| {
        let client = client.clone();
        let url = url.clone();
        async move { post_to(&client, url, &[], format!("{{\"n\":{i}}}")).await }
    }))
    .await;

    let mut keys = std::collections::HashSet::new();
    for answer in answers {
        let answer = answer.expect("every request answered");
        let key = answer.report.key().unwrap().to_owned();
        let runs = runs.of(&key);
        assert_eq!(runs.len(), 1, "key {key} ran {} times", runs.len());
        assert_eq!(answer.status, StatusCode::CREATED);
        assert!(
            answer.replayed,
            "the first answer was lost: this is the replay"
        );
        assert_eq!(answer.body, runs[0].0, "the first execution's response");
        assert_eq!(
            (answer.report.attempts(), answer.report.stop()),
            (2, Stop::Final)
        );
        assert!(keys.insert(key), "a fresh key per logical request");
    }
    assert_eq!(runs.total(), REQUESTS);
    assert_eq!(counts.dropped.load(Ordering::SeqCst), REQUESTS);
    assert_eq!(counts.forwarded.load(Ordering::SeqCst), 2 * REQUESTS);
    proxy.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_runs_once_over_memory() {
    each_request_runs_once(BoxStore::new(MemoryStore::new())).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_runs_once_over_redis() {
    use tower_idempotency::store::RedisStore;
    let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(None);
    let connection = redis::Client::open(common::redis::shared_url())
        .unwrap()
        .get_connection_manager_with_config(config)
        .await
        .expect("connect to REDIS_URL");
    let store = RedisStore::new(connection, Duration::from_secs(60))
        .with_prefix(common::redis::unique_prefix("client"));
    each_request_runs_once(BoxStore::new(store)).await;
}

/// The proxy drops the connection while the handler still runs: the retry gets the server's
/// `409` with `Retry-After`, waits, and gets the one execution's response.
#[tokio::test]
async fn a_retry_while_the_first_runs_waits_for_it() {
    let runs = Runs::default();
    let server = server(BoxStore::new(MemoryStore::new()), &runs).await;
    let (proxy, counts) = flaky_proxy(
        server.addr(),
        1,
        Fault::BeforeResponse(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let client = client(layer().max_attempts(5));
    let answer = post_to(
        &client,
        format!("http://{}/orders", proxy.addr()),
        &[("x-delay-ms", "1000")],
        "{}",
    )
    .await
    .unwrap();

    let key = answer.report.key().unwrap();
    let runs = runs.of(key);
    assert_eq!(runs.len(), 1, "ran {} times", runs.len());
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.body, runs[0].0);
    assert!(answer.report.attempts() >= 2);
    assert_eq!(counts.dropped.load(Ordering::SeqCst), 1);
    proxy.stop().await;
    server.stop().await;
}

/// A timeout layer inside the client layer cuts a slow attempt short; the timeout is retried
/// with the same key, and the retry gets the one execution's response.
#[tokio::test]
async fn a_timeout_inside_is_retried() {
    let runs = Runs::default();
    let server = server(BoxStore::new(MemoryStore::new()), &runs).await;
    let http = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let client = ServiceBuilder::new()
        .layer(layer().max_attempts(5))
        .timeout(Duration::from_millis(300))
        .service(http);
    let answer = post_to(
        &client,
        format!("http://{}/orders", server.addr()),
        &[("x-delay-ms", "600")],
        "{}",
    )
    .await
    .unwrap();

    let runs = runs.of(answer.report.key().unwrap());
    assert_eq!(runs.len(), 1, "ran {} times", runs.len());
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.body, runs[0].0);
    assert!(answer.report.attempts() >= 2);
    server.stop().await;
}

/// `422` (a key reused for another body) and `400` (a malformed key) are sent once.
#[tokio::test]
async fn a_422_and_a_400_are_not_retried() {
    let runs = Runs::default();
    let server = server(BoxStore::new(MemoryStore::new()), &runs).await;
    let (proxy, counts) = flaky_proxy(server.addr(), 0, Fault::AfterResponse)
        .await
        .unwrap();
    let client = client(layer());
    let url = format!("http://{}/orders", proxy.addr());

    let first = post_to(&client, url.clone(), &[("idempotency-key", "k-422")], "a")
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(
        first.report.key(),
        Some("k-422"),
        "the caller's key is kept"
    );

    let reused = post_to(&client, url.clone(), &[("idempotency-key", "k-422")], "b")
        .await
        .unwrap();
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        (reused.report.attempts(), reused.report.stop()),
        (1, Stop::Final)
    );

    let malformed = post_to(&client, url, &[("idempotency-key", "\"open")], "c")
        .await
        .unwrap();
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.report.attempts(), 1);

    assert_eq!(counts.forwarded.load(Ordering::SeqCst), 3);
    assert_eq!(runs.total(), 1);
    proxy.stop().await;
    server.stop().await;
}

/// The first answer was too large for the server to keep, and was lost: the retry gets the
/// server's "response not stored" problem, which no retry changes.
#[tokio::test]
async fn response_not_stored_is_not_retried() {
    let runs = Runs::default();
    let server = server(BoxStore::new(MemoryStore::new()), &runs).await;
    let (proxy, counts) = flaky_proxy(server.addr(), 1, Fault::AfterResponse)
        .await
        .unwrap();
    let client = client(layer().max_attempts(5));
    let answer = post_to(&client, format!("http://{}/big", proxy.addr()), &[], "{}")
        .await
        .unwrap();

    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert!(
        answer.body.contains("#response-not-stored"),
        "{}",
        answer.body
    );
    assert_eq!(
        (answer.report.attempts(), answer.report.stop()),
        (2, Stop::Final)
    );
    assert_eq!(runs.total(), 1);
    assert_eq!(counts.forwarded.load(Ordering::SeqCst), 2);
    proxy.stop().await;
    server.stop().await;
}

/// `Retry-After` replaces the shorter backoff, up to the cap. Time is paused: the runtime
/// jumps over the waits, and the handler's clock shows them.
#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_up_to_the_cap() {
    let runs = Runs::default();
    let server = server(BoxStore::new(MemoryStore::new()), &runs).await;
    let (proxy, _counts) = flaky_proxy(server.addr(), 0, Fault::AfterResponse)
        .await
        .unwrap();
    let client = client(layer().max_retry_after(Duration::from_secs(7)));
    let url = format!("http://{}/busy", proxy.addr());

    for (retry_after, at_least) in [("5", 5), ("3600", 7)] {
        let answer = post_to(
            &client,
            url.clone(),
            &[("x-retry-after", retry_after)],
            "{}",
        )
        .await
        .unwrap();
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "retry-after {retry_after}"
        );
        assert_eq!(answer.report.attempts(), 2);
        let runs = runs.of(answer.report.key().unwrap());
        assert_eq!(runs.len(), 2, "the 503 released the key; the retry ran");
        assert_eq!(answer.body, runs[1].0);
        let waited = runs[1].1 - runs[0].1;
        assert!(
            waited >= Duration::from_secs(at_least) && waited < Duration::from_secs(600),
            "retry-after {retry_after}: waited {waited:?}"
        );
    }
    proxy.stop().await;
    server.stop().await;
}

/// A body over the client's buffer limit is sent once: a retryable `503` is handed back, and a
/// lost answer is an error, each after one execution.
#[tokio::test]
async fn a_body_over_the_limit_is_not_retried() {
    let runs = Runs::default();
    let server = server(BoxStore::new(MemoryStore::new()), &runs).await;
    let client = client(layer().max_body(1024));
    let big = vec![b'x'; 4096];

    let (steady, _) = flaky_proxy(server.addr(), 0, Fault::AfterResponse)
        .await
        .unwrap();
    let answer = post_to(
        &client,
        format!("http://{}/busy", steady.addr()),
        &[("x-retry-after", "0")],
        big.clone(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (answer.report.attempts(), answer.report.stop()),
        (1, Stop::BodyNotBuffered)
    );
    assert_eq!(runs.of(answer.report.key().unwrap()).len(), 1);

    let (flaky, counts) = flaky_proxy(server.addr(), 1, Fault::AfterResponse)
        .await
        .unwrap();
    let lost = post_to(&client, format!("http://{}/orders", flaky.addr()), &[], big).await;
    assert!(lost.is_err(), "the lost answer is not retried");
    assert_eq!(counts.forwarded.load(Ordering::SeqCst), 1);
    assert_eq!(runs.total(), 2);
    steady.stop().await;
    flaky.stop().await;
    server.stop().await;
}

/// A handler that charges through another API with `derive("charge")`, then fails with a
/// retryable `503` on its first run (the order could not be saved): the server layer releases
/// the key, the client retries, the handler runs again and charges with the same derived key,
/// which the payment API answers with its replay. One charge.
#[tokio::test]
async fn a_rerun_handler_sends_the_same_key_downstream() {
    let charges = Runs::default();
    let payments = {
        let app = Router::new()
            .route("/charges", post(create_order))
            .with_state(charges.clone())
            .layer(IdempotencyLayer::new(MemoryStore::new()));
        serve(TowerToHyperService::new(app)).await.unwrap()
    };

    #[derive(Clone)]
    struct Shop {
        payments: String,
        client: HttpClient,
        runs: Arc<AtomicU64>,
        downstream_keys: Arc<Mutex<Vec<String>>>,
    }
    async fn order(
        State(shop): State<Shop>,
        axum::Extension(claim): axum::Extension<IdempotencyClaim>,
        _body: Bytes,
    ) -> Response {
        let run = shop.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let key = claim.derive("charge");
        shop.downstream_keys.lock().unwrap().push(key.clone());
        let charge = post_to(
            &shop.client,
            shop.payments.clone(),
            &[("idempotency-key", &key)],
            "amount=1000",
        )
        .await
        .unwrap();
        if run == 1 {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        (StatusCode::CREATED, format!("paid with {}", charge.body)).into_response()
    }
    let shop = Shop {
        payments: format!("http://{}/charges", payments.addr()),
        client: client(layer()),
        runs: Arc::default(),
        downstream_keys: Arc::default(),
    };
    let orders = {
        let app = Router::new()
            .route("/orders", post(order))
            .with_state(shop.clone())
            .layer(IdempotencyLayer::new(MemoryStore::new()));
        serve(TowerToHyperService::new(app)).await.unwrap()
    };

    let answer = post_to(
        &client(layer()),
        format!("http://{}/orders", orders.addr()),
        &[],
        "{}",
    )
    .await
    .unwrap();

    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.report.attempts(), 2);
    assert_eq!(shop.runs.load(Ordering::SeqCst), 2, "the handler ran again");
    let keys = shop.downstream_keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "both runs sent the same downstream key");
    assert_ne!(Some(keys[0].as_str()), answer.report.key());
    let charged = charges.of(&keys[0]);
    assert_eq!(charged.len(), 1, "charged once");
    assert_eq!(answer.body, format!("paid with {}", charged[0].0));
    assert_eq!(charges.total(), 1);
    orders.stop().await;
    payments.stop().await;
}
