//! The warning about credentials without a scope, once per layer. A binary of its own: see
//! `tests/span_of_a_detached_handler.rs` for why tests that capture logs run alone.

mod common;

use common::logs::Logs;
use common::{Counter, app, as_tenant, post, send, tenant_scope};
use tower_idempotency::IdempotencyLayer;
use tower_idempotency::store::MemoryStore;

#[tokio::test(flavor = "current_thread")]
async fn credentials_without_a_scope_warn_once_per_layer() {
    let (logs, _guard) = Logs::capture();

    let counter = Counter::new();
    let layer = IdempotencyLayer::new(MemoryStore::new());
    let mut svc = app(layer.clone(), &counter);
    let with_auth = |key: &str| {
        let mut req = post(key, "{}");
        req.headers_mut()
            .insert("authorization", "Bearer t".parse().unwrap());
        req
    };
    for key in ["a", "b", "c"] {
        send(&mut svc, with_auth(key)).await;
    }
    // A second service of the same layer shares its warning.
    let mut other = app(layer, &counter);
    send(&mut other, with_auth("d")).await;
    assert_eq!(logs.count("has no scope"), 1);

    // A layer with a scope never warns.
    let mut scoped = app(
        tenant_scope(IdempotencyLayer::new(MemoryStore::new())),
        &counter,
    );
    send(&mut scoped, as_tenant("t", with_auth("e"))).await;
    assert_eq!(logs.count("has no scope"), 1);
    assert_eq!(counter.get(), 5);
}
