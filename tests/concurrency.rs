//! §2.5 Concurrent duplicates: while the first request runs, duplicates get `409` with
//! `Retry-After` (or wait for its result when configured), and the handler runs once.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::{Counter, Gate, HandlerReq, Reply, assert_problem, gated_app, post, read};
use http::{Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_idempotency::store::MemoryStore;
use tower_idempotency::{IdempotencyLayer, Outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_duplicates_in_flight_get_409_and_the_handler_runs_once() {
    let counter = Counter::new();
    let gate = Gate::new();
    let svc = gated_app(IdempotencyLayer::new(MemoryStore::new()), &counter, &gate);

    let first = tokio::spawn(svc.clone().oneshot(post("pay-1", "{\"amount\":100}")));
    gate.arrived().await;

    let duplicates: Vec<_> = (0..50)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                read(
                    svc.oneshot(post("pay-1", "{\"amount\":100}"))
                        .await
                        .unwrap(),
                )
                .await
            })
        })
        .collect();
    for duplicate in duplicates {
        let reply = duplicate.await.unwrap();
        let json = assert_problem(&reply, 409, "in-progress");
        assert_eq!(json["title"], "Request in progress");
        assert_eq!(reply.header("retry-after"), Some("1"));
        assert_eq!(reply.outcome, Some(Outcome::Conflict));
    }
    assert_eq!(counter.get(), 1);

    gate.open();
    let first = read(first.await.unwrap().unwrap()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.text(), "execution 1: {\"amount\":100}");
    assert_eq!(first.outcome, Some(Outcome::Recorded));

    let retries: Vec<_> = (0..10)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                read(
                    svc.oneshot(post("pay-1", "{\"amount\":100}"))
                        .await
                        .unwrap(),
                )
                .await
            })
        })
        .collect();
    for retry in retries {
        let reply = retry.await.unwrap();
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.outcome, Some(Outcome::Replayed));
        assert_eq!(reply.body, first.body);
        assert_eq!(reply.header("x-execution"), Some("1"));
    }
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn retry_after_is_configurable_and_rounded_up() {
    let counter = Counter::new();
    let gate = Gate::new();
    let layer = IdempotencyLayer::new(MemoryStore::new()).retry_after(Duration::from_millis(2500));
    let svc = gated_app(layer, &counter, &gate);

    let first = tokio::spawn(svc.clone().oneshot(post("k", "")));
    gate.arrived().await;
    let dup = read(svc.clone().oneshot(post("k", "")).await.unwrap()).await;
    assert_problem(&dup, 409, "in-progress");
    assert_eq!(dup.header("retry-after"), Some("3"));
    gate.open();
    first.await.unwrap().unwrap();
    assert_eq!(counter.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn waiting_duplicates_get_the_replay() {
    let counter = Counter::new();
    let gate = Gate::new();
    let layer =
        IdempotencyLayer::new(MemoryStore::new()).wait_for_in_flight(Duration::from_secs(5));
    let svc = gated_app(layer, &counter, &gate);

    let start = Instant::now();
    let first = tokio::spawn(svc.clone().oneshot(post("k", "x")));
    gate.arrived().await;
    let duplicates: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(post("k", "x"))))
        .collect();
    // The duplicates are waiting, not answered.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(duplicates.iter().all(|d| !d.is_finished()));
    gate.open();

    let first = read(first.await.unwrap().unwrap()).await;
    assert_eq!(first.outcome, Some(Outcome::Recorded));
    for duplicate in duplicates {
        let reply = read(duplicate.await.unwrap().unwrap()).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.outcome, Some(Outcome::Replayed));
        assert!(reply.is_replay());
        assert_eq!(reply.body, first.body);
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(counter.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn waiting_is_bounded_by_the_deadline() {
    let counter = Counter::new();
    let gate = Gate::new();
    let layer =
        IdempotencyLayer::new(MemoryStore::new()).wait_for_in_flight(Duration::from_secs(2));
    let svc = gated_app(layer, &counter, &gate);

    let first = tokio::spawn(svc.clone().oneshot(post("k", "x")));
    gate.arrived().await;
    let start = Instant::now();
    let dup = read(svc.clone().oneshot(post("k", "x")).await.unwrap()).await;
    let waited = start.elapsed();
    assert_problem(&dup, 409, "in-progress");
    assert_eq!(dup.header("retry-after"), Some("1"));
    assert_eq!(dup.outcome, Some(Outcome::Conflict));
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(counter.get(), 1);

    gate.open();
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::CREATED);
    assert_eq!(counter.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_duplicate_runs_when_the_owner_releases() {
    let counter = Counter::new();
    let gate = Gate::new();
    let (c, g) = (counter.clone(), gate.clone());
    // The first execution fails with a 503 (released); the second succeeds.
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()).wait_for_in_flight(Duration::from_secs(5)))
        .service_fn(move |_req: HandlerReq| {
            let (c, g) = (c.clone(), g.clone());
            async move {
                let n = c.hit();
                g.pass().await;
                let status = if n == 1 { 503 } else { 201 };
                let res = Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from(format!("execution {n}"))))
                    .unwrap();
                Ok::<_, Infallible>(res)
            }
        });

    let first = tokio::spawn(svc.clone().oneshot(post("k", "x")));
    gate.arrived().await;
    let waiting: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(post("k", "x"))))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(waiting.iter().all(|w| !w.is_finished()));
    gate.open();

    let first: Reply = read(first.await.unwrap().unwrap()).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.text(), "execution 1");
    assert_eq!(first.outcome, Some(Outcome::Released));
    // Exactly one waiting duplicate claims the key and runs; the others get its replay.
    let mut replies = Vec::new();
    for w in waiting {
        replies.push(read(w.await.unwrap().unwrap()).await);
    }
    let executed: Vec<_> = replies
        .iter()
        .filter(|r| r.outcome == Some(Outcome::Recorded))
        .collect();
    assert_eq!(executed.len(), 1, "{replies:?}");
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.text(), "execution 2");
    }
    assert_eq!(
        replies.iter().filter(|r| r.is_replay()).count(),
        2,
        "{replies:?}"
    );
    assert_eq!(counter.get(), 2);
}

#[tokio::test]
async fn the_inner_service_that_was_polled_ready_gets_the_call() {
    let counter = Counter::new();
    let c = counter.clone();
    // `ConcurrencyLimit` panics when called on an instance that was not polled ready, so the
    // layer must hand the request to the very instance it polled.
    let mut svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .concurrency_limit(1)
        .service_fn(move |req: HandlerReq| common::echo(c.clone(), req));

    for key in ["a", "b", "a"] {
        let reply = common::send(&mut svc, post(key, "x")).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{key}");
    }
    let reply = common::send(&mut svc, common::request(http::Method::GET, "/", None, "")).await;
    assert_eq!(reply.outcome, None);
    assert_eq!(counter.get(), 3);
}
