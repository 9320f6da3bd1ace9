//! `PostgresStore` under faults, on real servers: backends terminated under the store (and
//! its listener), the server stopped in the middle of a request and started again, and a
//! statement timeout. The answers are the layer's usual ones (`503`, the handler's response,
//! the replay), and no request runs twice.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::postgres::{PgServer, database_url, pool_for, store_in};
use common::{Counter, Gate, assert_problem, read};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tower::{ServiceBuilder, ServiceExt};
use tower_idempotency::record::Record;
use tower_idempotency::store::{
    Begin, Entry, OwnerToken, PostgresStore, Store, StoreErrorKind, StoreKey,
};
use tower_idempotency::{IdempotencyLayer, Outcome, body::RequestBody};

fn key() -> StoreKey {
    StoreKey::new(Some("pg-faults"), &OwnerToken::generate().to_string())
}

/// Terminates every other client backend of the server.
async fn terminate_backends(url: &str) -> i64 {
    let mut admin = url
        .parse::<PgConnectOptions>()
        .unwrap()
        .connect()
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap()
}

/// After `pg_terminate_backend` kills every connection of the store (its listener's too), the
/// claim is still there, an operation either succeeds or fails ambiguously (never as a
/// refusal), the next ones succeed, and a waiter is woken by `NOTIFY` again once the listener
/// has reconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backends_are_survived() {
    let server = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let url = server.url();
    let pool = pool_for(&url, 4).await;
    let store = PostgresStore::builder(pool)
        .poll_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    let (k, owner) = (key(), OwnerToken::generate());
    assert_eq!(
        store
            .begin(&k, None, owner, Duration::from_secs(30))
            .await
            .unwrap(),
        Begin::New
    );
    // Start the listener.
    store.wait(&k, Duration::from_millis(200)).await.unwrap();

    assert!(
        terminate_backends(&url).await >= 2,
        "the pool's and the listener's"
    );
    match store.renew(&k, owner, Duration::from_secs(30)).await {
        Ok(()) => {}
        Err(e) => assert!(e.kind().is_ambiguous(), "{e:?}"),
    }
    store
        .renew(&k, owner, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(matches!(
        store.get(&k).await.unwrap(),
        Some(Entry::InProgress { token, .. }) if token == owner
    ));

    // A waiter is woken by the complete, not by its 60 s poll or its 20 s timeout.
    let waiter = tokio::spawn({
        let (store, k) = (store.clone(), k.clone());
        async move {
            let start = tokio::time::Instant::now();
            while matches!(store.get(&k).await.unwrap(), Some(Entry::InProgress { .. })) {
                store.wait(&k, Duration::from_secs(20)).await.unwrap();
            }
            start.elapsed()
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    store
        .complete(&k, owner, &Record::not_stored(None))
        .await
        .unwrap();
    let waited = waiter.await.unwrap();
    assert!(waited < Duration::from_secs(5), "woken after {waited:?}");
}

/// The server stops (immediate shutdown) while the handler runs: the handler's response still
/// goes out, a request meanwhile gets `503` without running, and once the server is back the
/// layer's background re-send records the response, so a retry gets the replay. One run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_mid_request_never_runs_it_twice() {
    let mut server = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let url = server.url();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_millis(500))
        .connect(&url)
        .await
        .unwrap();
    let store = store_in(pool, "stop", Duration::from_secs(600)).await;
    let (runs, gate) = (Counter::new(), Gate::new());
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(store.clone()).store_timeout(Duration::from_secs(1)))
        .service_fn({
            let (runs, gate) = (runs.clone(), gate.clone());
            move |_: Request<RequestBody<Full<Bytes>>>| {
                let (runs, gate) = (runs.clone(), gate.clone());
                async move {
                    let n = runs.hit();
                    gate.pass().await;
                    let mut res = Response::new(Full::new(Bytes::from(format!("run {n}"))));
                    *res.status_mut() = StatusCode::CREATED;
                    Ok::<_, std::convert::Infallible>(res)
                }
            }
        });
    let request = || common::post("stop-1", "{}");
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { read(svc.oneshot(request()).await.unwrap()).await }
    });
    gate.arrived().await;
    let mut server = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();
    gate.open();
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.text(), "run 1");

    let during = read(svc.clone().oneshot(request()).await.unwrap()).await;
    assert_problem(&during, 503, "store-unavailable");
    assert_eq!(during.outcome, Some(Outcome::StoreUnavailable));

    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    // The layer re-sends the record in the background until it lands (or the lease is over).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let replay = loop {
        let reply = read(svc.clone().oneshot(request()).await.unwrap()).await;
        if reply.is_replay() || tokio::time::Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(replay.is_replay(), "{replay:?}");
    assert_eq!(replay.text(), "run 1");
    assert_eq!(runs.get(), 1);
    drop(server);
}

/// A statement that runs into `statement_timeout` (here: blocked by a row lock another
/// transaction holds) fails as a `Timeout`. The layer's `begin` that times out so reads the key
/// back (a read does not wait for the lock), finds the other owner's claim and answers `409`;
/// the handler does not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_is_a_timeout() {
    let options = database_url()
        .parse::<PgConnectOptions>()
        .unwrap()
        .options([("statement_timeout", "200")]);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let store = store_in(pool.clone(), "timeout", Duration::from_secs(600)).await;
    // Unscoped, as the layer below files it.
    let k = StoreKey::new(None, &format!("timeout-{}", OwnerToken::generate()));
    let owner = OwnerToken::generate();
    assert_eq!(
        store
            .begin(&k, None, owner, Duration::from_secs(30))
            .await
            .unwrap(),
        Begin::New
    );
    let mut blocker = pool_for(&database_url(), 1).await.begin().await.unwrap();
    sqlx::query(&format!(
        "SELECT 1 FROM \"{}\" WHERE key = $1 FOR UPDATE",
        store.table()
    ))
    .bind(&k.digest()[..])
    .execute(&mut *blocker)
    .await
    .unwrap();
    let e = store
        .renew(&k, owner, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Timeout, "{e:?}");

    let runs = Counter::new();
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(store.clone()))
        .service_fn({
            let runs = runs.clone();
            move |_: Request<RequestBody<Full<Bytes>>>| {
                runs.hit();
                async { Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new()))) }
            }
        });
    // The same key, claimed by `owner` and locked: the layer's begin waits for the lock, times
    // out, and the read-back finds `owner`'s claim.
    let req = Request::post("/orders")
        .header("idempotency-key", k.key())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = read(svc.oneshot(req).await.unwrap()).await;
    assert_problem(&reply, 409, "in-progress");
    assert_eq!(runs.get(), 0);
    blocker.rollback().await.unwrap();
    store
        .renew(&k, owner, Duration::from_secs(30))
        .await
        .unwrap();
}
