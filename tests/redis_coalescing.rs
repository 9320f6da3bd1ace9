//! In-process coalescing over `RedisStore` (issue 12 item 4): duplicates of a key that this
//! instance is already claiming or running are answered without Redis round trips, counted on a
//! private server with `INFO commandstats`.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::Notify;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_idempotency::body::{RequestBody, ResponseBody};
use tower_idempotency::store::RedisStore;
use tower_idempotency::{IdempotencyLayer, Outcome};

use common::redis::RedisServer;

type App =
    BoxCloneSyncService<Request<Full<Bytes>>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

/// The handler's side channel: how often it ran, and the gate it waits at when closed.
#[derive(Default)]
struct Handler {
    runs: AtomicUsize,
    entered: Notify,
    gate: Notify,
    gated: std::sync::atomic::AtomicBool,
}

async fn app(
    server: &RedisServer,
    configure: impl FnOnce(
        IdempotencyLayer<RedisStore<redis::aio::MultiplexedConnection>>,
    ) -> IdempotencyLayer<RedisStore<redis::aio::MultiplexedConnection>>,
    handler: &Arc<Handler>,
) -> App {
    let store = RedisStore::new(server.connection().await, Duration::from_secs(60));
    let layer = configure(IdempotencyLayer::new(store));
    let handler = Arc::clone(handler);
    BoxCloneSyncService::new(ServiceBuilder::new().layer(layer).service_fn(
        move |_req: Request<RequestBody<Full<Bytes>>>| {
            let handler = Arc::clone(&handler);
            async move {
                let n = handler.runs.fetch_add(1, Ordering::SeqCst) + 1;
                handler.entered.notify_one();
                if handler.gated.load(Ordering::SeqCst) {
                    handler.gate.notified().await;
                }
                let body = Full::new(Bytes::from(format!("order {n}")));
                Ok::<_, Infallible>(Response::builder().status(201).body(body).unwrap())
            }
        },
    ))
}

struct Answer {
    status: StatusCode,
    outcome: Option<Outcome>,
    body: Bytes,
}

async fn send(app: &App, key: &str) -> Answer {
    let req = Request::post("/orders")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let (status, outcome) = (res.status(), res.extensions().get::<Outcome>().copied());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        outcome,
        body,
    }
}

/// Calls of the commands the store sends for a key (`begin` is `set`, a read-back `get`).
fn key_commands(server: &RedisServer) -> (u64, u64) {
    let stats = RedisServer::command_stats(&mut server.admin());
    let of = |name: &str| stats.get(name).copied().unwrap_or(0);
    (of("set"), of("get"))
}

fn reset(server: &RedisServer) {
    RedisServer::reset_stats(&mut server.admin());
}

#[tokio::test]
async fn duplicates_while_the_owner_runs_here_never_reach_redis() {
    let server = RedisServer::start();
    let handler = Arc::new(Handler::default());
    handler.gated.store(true, Ordering::SeqCst);
    let app = app(&server, |l| l, &handler).await;

    let owner = tokio::spawn({
        let app = app.clone();
        async move { send(&app, "k").await }
    });
    handler.entered.notified().await;
    reset(&server);
    let duplicates = join_all((0..20).map(|_| send(&app, "k"))).await;
    for d in &duplicates {
        assert_eq!(d.status, StatusCode::CONFLICT);
        assert_eq!(d.outcome, Some(Outcome::Conflict));
    }
    assert_eq!(
        key_commands(&server),
        (0, 0),
        "no round trip for the duplicates"
    );

    handler.gate.notify_one();
    let owner = owner.await.unwrap();
    assert_eq!(owner.status, StatusCode::CREATED);
    assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn waiting_duplicates_get_the_owners_record_without_polling() {
    let server = RedisServer::start();
    let handler = Arc::new(Handler::default());
    handler.gated.store(true, Ordering::SeqCst);
    let app = app(
        &server,
        |l| l.wait_for_in_flight(Duration::from_secs(10)),
        &handler,
    )
    .await;

    let owner = tokio::spawn({
        let app = app.clone();
        async move { send(&app, "k").await }
    });
    handler.entered.notified().await;
    reset(&server);
    let waiting: Vec<_> = (0..10)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { send(&app, "k").await })
        })
        .collect();
    // Long enough for a polling wait to have sent several `GET`s.
    tokio::time::sleep(Duration::from_millis(300)).await;
    handler.gate.notify_one();
    let owner = owner.await.unwrap();
    for w in waiting {
        let w = w.await.unwrap();
        assert_eq!(w.outcome, Some(Outcome::Replayed));
        assert_eq!(w.body, owner.body);
    }
    // Two `SET`s: the owner's record and its tombstone (Redis counts the commands its scripts
    // run). No duplicate sent a `begin` (`SET`) or polled (`GET`).
    assert_eq!(
        key_commands(&server),
        (2, 0),
        "no begin, no poll while waiting"
    );
    assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_replays_share_one_begin_unless_coalescing_is_off() {
    let server = RedisServer::start();
    for (coalesce, begins) in [(true, 1), (false, 20)] {
        let handler = Arc::new(Handler::default());
        let app = app(&server, |l| l.coalesce(coalesce), &handler).await;
        let key = format!("replayed-{coalesce}");
        let first = send(&app, &key).await;
        assert_eq!(first.status, StatusCode::CREATED);

        reset(&server);
        // Polled together from one task: every request joins before the first `begin` answers.
        let replays = join_all((0..20).map(|_| send(&app, &key))).await;
        for r in &replays {
            assert_eq!(r.outcome, Some(Outcome::Replayed));
            assert_eq!(r.body, first.body);
        }
        assert_eq!(key_commands(&server).0, begins, "coalesce({coalesce})");
        assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
    }
}
