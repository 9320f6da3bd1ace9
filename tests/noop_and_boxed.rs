//! §5 The layer over `NoOpStore` (protection off, validation on) and over a `BoxStore` chosen at
//! run time (the same behaviour as the store it erases).

mod common;

use std::time::Duration;

use common::{Counter, Gate, app, assert_problem, gated_app, post, read, send};
use http::StatusCode;
use tower::ServiceExt;
use tower_idempotency::store::{BoxStore, MemoryStore, NoOpStore};
use tower_idempotency::{IdempotencyLayer, Outcome};

#[tokio::test]
async fn noop_store_runs_every_request_but_still_validates() {
    let counter = Counter::new();
    let mut svc = app(
        IdempotencyLayer::new(NoOpStore::new()).max_request_body(8),
        &counter,
    );

    for n in 1..=3 {
        let reply = send(&mut svc, post("k", "{}")).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.outcome, Some(Outcome::Recorded));
        assert_eq!(reply.text(), format!("execution {n}: {{}}"));
        assert!(!reply.is_replay());
    }
    // Different requests under one key are no mismatch either: nothing is remembered.
    let reply = send(&mut svc, post("k", "{\"a\":1}")).await;
    assert_eq!(reply.outcome, Some(Outcome::Recorded));
    // Keys and bodies are still checked.
    assert_problem(&send(&mut svc, post("", "{}")).await, 400, "invalid-key");
    assert_problem(
        &send(&mut svc, post("k", "123456789")).await,
        413,
        "body-too-large",
    );
    assert_eq!(counter.get(), 4);
}

#[tokio::test]
async fn noop_store_never_conflicts() {
    let (counter, gate) = (Counter::new(), Gate::new());
    let svc = gated_app(IdempotencyLayer::new(NoOpStore::new()), &counter, &gate);

    let first = tokio::spawn(svc.clone().oneshot(post("k", "{}")));
    gate.arrived().await;
    let second = tokio::spawn(svc.clone().oneshot(post("k", "{}")));
    gate.arrived().await;
    assert_eq!(counter.get(), 2);
    gate.open();
    for call in [first, second] {
        let reply = read(call.await.unwrap().unwrap()).await;
        assert_eq!(reply.outcome, Some(Outcome::Recorded));
    }
}

/// A backend picked at run time; both arms give the same layer type.
fn boxed(protect: bool) -> BoxStore {
    if protect {
        BoxStore::new(MemoryStore::new())
    } else {
        BoxStore::new(NoOpStore::new())
    }
}

#[tokio::test]
async fn boxed_memory_store_behaves_like_memory_store() {
    let (counter, gate) = (Counter::new(), Gate::new());
    let layer = IdempotencyLayer::new(boxed(true));
    let svc = gated_app(layer, &counter, &gate);

    let first = tokio::spawn(svc.clone().oneshot(post("k", "a")));
    gate.arrived().await;
    let dup = read(svc.clone().oneshot(post("k", "a")).await.unwrap()).await;
    assert_problem(&dup, 409, "in-progress");
    gate.open();
    let first = read(first.await.unwrap().unwrap()).await;
    let again = read(svc.clone().oneshot(post("k", "a")).await.unwrap()).await;
    assert_eq!(again.outcome, Some(Outcome::Replayed));
    assert_eq!(again.body, first.body);
    let changed = read(svc.clone().oneshot(post("k", "b")).await.unwrap()).await;
    assert_problem(&changed, 422, "mismatch");
    assert_eq!(counter.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn boxed_store_keeps_leases_ttl_and_waiting() {
    // A store that forgets keys with their responses (see `key_ttl` for remembering them).
    let store = BoxStore::new(
        MemoryStore::builder()
            .ttl(Duration::from_secs(30))
            .key_ttl(Duration::from_secs(30))
            .build(),
    );
    let (counter, gate) = (Counter::new(), Gate::new());
    let layer = IdempotencyLayer::new(store)
        .lease(Duration::from_secs(3))
        .wait_for_in_flight(Duration::from_secs(20));
    let svc = gated_app(layer, &counter, &gate);

    let first = tokio::spawn(svc.clone().oneshot(post("k", "a")));
    gate.arrived().await;
    let waiting = tokio::spawn(svc.clone().oneshot(post("k", "a")));
    // Longer than the lease: renewed through the erased store, so the duplicate keeps waiting.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!waiting.is_finished());
    gate.open();
    let first = read(first.await.unwrap().unwrap()).await;
    let waiting = read(waiting.await.unwrap().unwrap()).await;
    assert_eq!(waiting.outcome, Some(Outcome::Replayed));
    assert_eq!(waiting.body, first.body);
    assert_eq!(counter.get(), 1);

    tokio::time::sleep(Duration::from_secs(31)).await;
    let later = read(svc.oneshot(post("k", "a")).await.unwrap()).await;
    assert_eq!(later.outcome, Some(Outcome::Recorded));
    assert_eq!(counter.get(), 2);
}

#[tokio::test]
async fn boxed_noop_store_runs_every_request() {
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(boxed(false)), &counter);
    for _ in 0..2 {
        let reply = send(&mut svc, post("k", "a")).await;
        assert_eq!(reply.outcome, Some(Outcome::Recorded));
    }
    assert_eq!(counter.get(), 2);
}
