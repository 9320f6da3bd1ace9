//! §2.1 The method filter: only the configured methods are protected; every other method passes
//! through with no store call at all.

mod common;

use common::{Counter, Op, Probe, app, request, send};
use http::{Method, StatusCode};
use tower_idempotency::store::MemoryStore;
use tower_idempotency::{IdempotencyLayer, Outcome};

#[tokio::test]
async fn get_and_put_pass_through_without_touching_the_store() {
    let store = Probe::new(MemoryStore::new());
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(store.clone()), &counter);

    for (i, method) in [Method::GET, Method::PUT, Method::DELETE, Method::GET]
        .into_iter()
        .enumerate()
    {
        let reply = send(
            &mut svc,
            request(method.clone(), "/orders", Some("k"), "{}"),
        )
        .await;
        let n = i + 1;
        assert_eq!(reply.status, StatusCode::CREATED, "{method}");
        assert_eq!(reply.text(), format!("execution {n}: {{}}"), "{method}");
        assert!(!reply.is_replay(), "{method}");
        assert_eq!(reply.outcome, None, "{method}");
        assert_eq!(counter.get(), n, "{method}");
    }
    assert_eq!(store.total_calls(), 0);
}

#[tokio::test]
async fn post_and_patch_are_protected_by_default() {
    let store = Probe::new(MemoryStore::new());
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(store.clone()), &counter);

    for method in [Method::POST, Method::PATCH] {
        let key = format!("key-{method}");
        let first = send(&mut svc, request(method.clone(), "/o", Some(&key), "a")).await;
        let again = send(&mut svc, request(method.clone(), "/o", Some(&key), "a")).await;
        assert_eq!(first.outcome, Some(Outcome::Recorded), "{method}");
        assert_eq!(again.outcome, Some(Outcome::Replayed), "{method}");
        assert_eq!(again.status, StatusCode::CREATED);
        assert_eq!(again.body, first.body, "{method}");
        assert!(again.is_replay());
    }
    assert_eq!(counter.get(), 2);
    assert_eq!(store.calls(Op::Begin), 4);
    assert_eq!(store.calls(Op::Complete), 2);
}

#[tokio::test]
async fn custom_methods_replace_the_default_list() {
    let store = Probe::new(MemoryStore::new());
    let counter = Counter::new();
    let layer = IdempotencyLayer::new(store.clone()).methods([Method::PUT, Method::DELETE]);
    let mut svc = app(layer, &counter);

    // POST is no longer covered: two sends, two executions, no store call.
    let a = send(&mut svc, request(Method::POST, "/o", Some("p"), "")).await;
    let b = send(&mut svc, request(Method::POST, "/o", Some("p"), "")).await;
    assert_eq!((a.outcome, b.outcome), (None, None));
    assert_eq!((a.text(), b.text()), ("execution 1: ", "execution 2: "));
    assert_eq!(store.total_calls(), 0);

    // PUT and DELETE are: the second send of each is a replay.
    for method in [Method::PUT, Method::DELETE] {
        let key = format!("key-{method}");
        let first = send(&mut svc, request(method.clone(), "/o", Some(&key), "")).await;
        let again = send(&mut svc, request(method.clone(), "/o", Some(&key), "")).await;
        assert_eq!(first.outcome, Some(Outcome::Recorded), "{method}");
        assert_eq!(again.outcome, Some(Outcome::Replayed), "{method}");
        assert_eq!(again.body, first.body);
    }
    assert_eq!(counter.get(), 4);
    assert_eq!(store.calls(Op::Begin), 4);
}

#[tokio::test]
async fn a_bad_key_on_an_uncovered_method_is_not_looked_at() {
    let store = Probe::new(MemoryStore::new());
    let counter = Counter::new();
    let mut svc = app(
        IdempotencyLayer::new(store.clone()).require_key(true),
        &counter,
    );

    let mut req = request(Method::GET, "/o", None, "");
    req.headers_mut()
        .append("idempotency-key", "a".parse().unwrap());
    req.headers_mut()
        .append("idempotency-key", "b".parse().unwrap());
    let reply = send(&mut svc, req).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.outcome, None);

    // Nor is a missing one, even when keys are required.
    let reply = send(&mut svc, request(Method::GET, "/o", None, "")).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(counter.get(), 2);
    assert_eq!(store.total_calls(), 0);
}
