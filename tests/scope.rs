//! §2.3 Scope: the same key under two scopes is two keys. Neither scope ever sees the other's
//! response (nor a mismatch or conflict caused by the other); the same scope replays.

mod common;

use common::{
    Counter, HandlerReq, Probe, app, as_tenant, assert_problem, echo, post, send, tenant_scope,
};
use http::{Request, StatusCode};
use tower::ServiceBuilder;
use tower_idempotency::store::MemoryStore;
use tower_idempotency::{IdempotencyLayer, Outcome, RejectReason};

#[tokio::test]
async fn two_scopes_with_the_same_key_both_execute() {
    let counter = Counter::new();
    let mut svc = app(
        tenant_scope(IdempotencyLayer::new(MemoryStore::new())),
        &counter,
    );

    let alice = send(&mut svc, as_tenant("alice", post("k", "{\"to\":\"bob\"}"))).await;
    let mallory = send(
        &mut svc,
        as_tenant("mallory", post("k", "{\"to\":\"bob\"}")),
    )
    .await;
    assert_eq!(alice.outcome, Some(Outcome::Recorded));
    assert_eq!(mallory.outcome, Some(Outcome::Recorded));
    assert_eq!(alice.text(), "execution 1: {\"to\":\"bob\"}");
    assert_eq!(mallory.text(), "execution 2: {\"to\":\"bob\"}");
    assert!(!mallory.is_replay());

    // Each scope replays its own response.
    let alice_again = send(&mut svc, as_tenant("alice", post("k", "{\"to\":\"bob\"}"))).await;
    let mallory_again = send(
        &mut svc,
        as_tenant("mallory", post("k", "{\"to\":\"bob\"}")),
    )
    .await;
    assert_eq!(alice_again.outcome, Some(Outcome::Replayed));
    assert_eq!(alice_again.body, alice.body);
    assert_eq!(mallory_again.outcome, Some(Outcome::Replayed));
    assert_eq!(mallory_again.body, mallory.body);
    assert_eq!(counter.get(), 2);
}

#[tokio::test]
async fn a_different_request_in_another_scope_is_no_mismatch() {
    let counter = Counter::new();
    let mut svc = app(
        tenant_scope(IdempotencyLayer::new(MemoryStore::new())),
        &counter,
    );

    let a = send(&mut svc, as_tenant("a", post("k", "one"))).await;
    let b = send(&mut svc, as_tenant("b", post("k", "two"))).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(b.status, StatusCode::CREATED);
    assert_eq!(b.outcome, Some(Outcome::Recorded));
    assert_eq!(b.text(), "execution 2: two");
    // Within one scope the same change is a mismatch.
    let a2 = send(&mut svc, as_tenant("a", post("k", "two"))).await;
    assert_eq!(a2.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(counter.get(), 2);
}

#[tokio::test]
async fn scope_and_key_are_folded_in_unambiguously() {
    let counter = Counter::new();
    let mut svc = app(
        tenant_scope(IdempotencyLayer::new(MemoryStore::new())).unscoped_requests_share_keys(true),
        &counter,
    );

    // ("ab", "c"), ("a", "bc"), no scope with "abc", and the empty scope with "abc" are four
    // different keys.
    let replies = [
        send(&mut svc, as_tenant("ab", post("c", "x"))).await,
        send(&mut svc, as_tenant("a", post("bc", "x"))).await,
        send(&mut svc, post("abc", "x")).await,
        send(&mut svc, as_tenant("", post("abc", "x"))).await,
    ];
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.outcome, Some(Outcome::Recorded), "{i}");
        assert_eq!(reply.text(), format!("execution {}: x", i + 1));
    }
    assert_eq!(counter.get(), 4);
}

#[derive(Clone)]
struct UserId(u64);

#[tokio::test]
async fn scope_from_an_extension_set_by_an_outer_layer() {
    let counter = Counter::new();
    let c = counter.clone();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .scope(|req| req.extensions.get::<UserId>().map(|u| u.0.to_string()));
    // An "authentication" layer in front puts the user into the extensions.
    let mut svc = ServiceBuilder::new()
        .map_request(|mut req: Request<_>| {
            let user = req.headers()["x-user"].to_str().unwrap().parse().unwrap();
            req.extensions_mut().insert(UserId(user));
            req
        })
        .layer(layer)
        .service_fn(move |req: HandlerReq| echo(c.clone(), req));

    let user = |id: &str| {
        let mut req = post("k", "{}");
        req.headers_mut().insert("x-user", id.parse().unwrap());
        req
    };
    let one = send(&mut svc, user("1")).await;
    let two = send(&mut svc, user("2")).await;
    let one_again = send(&mut svc, user("1")).await;
    assert_eq!(one.text(), "execution 1: {}");
    assert_eq!(two.text(), "execution 2: {}");
    assert_eq!(two.outcome, Some(Outcome::Recorded));
    assert_eq!(one_again.outcome, Some(Outcome::Replayed));
    assert_eq!(one_again.body, one.body);
    assert_eq!(counter.get(), 2);
}

/// An "authentication" layer: the user from `x-user`, when there is one, into the extensions.
fn authenticate<B>(mut req: Request<B>) -> Request<B> {
    let user = req
        .headers()
        .get("x-user")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    if let Some(user) = user {
        req.extensions_mut().insert(UserId(user));
    }
    req
}

fn user_scope(
    layer: IdempotencyLayer<std::sync::Arc<Probe<MemoryStore>>>,
) -> IdempotencyLayer<std::sync::Arc<Probe<MemoryStore>>> {
    layer.scope(|req| req.extensions.get::<UserId>().map(|u| u.0.to_string()))
}

fn as_user(
    user: &str,
    mut req: Request<http_body_util::Full<bytes::Bytes>>,
) -> Request<http_body_util::Full<bytes::Bytes>> {
    req.headers_mut().insert("x-user", user.parse().unwrap());
    req
}

#[tokio::test]
async fn a_layer_outside_authentication_fails_closed() {
    let store = Probe::new(MemoryStore::new());
    let counter = Counter::new();
    let c = counter.clone();
    // Misordered: the idempotency layer runs first, before authentication sets the user.
    let mut svc = ServiceBuilder::new()
        .layer(user_scope(IdempotencyLayer::new(store.clone())))
        .map_request(authenticate)
        .service_fn(move |req: HandlerReq| echo(c.clone(), req));

    let one = send(&mut svc, as_user("1", post("pay-1", "{}"))).await;
    let json = assert_problem(&one, 403, "missing-scope");
    assert_eq!(json["title"], "Idempotency scope missing");
    assert_eq!(
        one.outcome,
        Some(Outcome::Rejected(RejectReason::MissingScope))
    );
    // Another user with the same key, and a request with no credentials: refused the same way,
    // never served the first one's response.
    let two = send(&mut svc, as_user("2", post("pay-1", "{}"))).await;
    assert_problem(&two, 403, "missing-scope");
    let anonymous = send(&mut svc, post("pay-1", "{}")).await;
    assert_problem(&anonymous, 403, "missing-scope");
    assert_eq!(counter.get(), 0);
    assert_eq!(store.total_calls(), 0, "nothing was claimed");
}

#[tokio::test]
async fn anonymous_requests_share_keys_only_when_told() {
    let counter = Counter::new();
    let c = counter.clone();
    let mut svc = ServiceBuilder::new()
        .map_request(authenticate)
        .layer(
            user_scope(IdempotencyLayer::new(Probe::new(MemoryStore::new())))
                .unscoped_requests_share_keys(true),
        )
        .service_fn(move |req: HandlerReq| echo(c.clone(), req));

    let anonymous = send(&mut svc, post("k", "{}")).await;
    assert_eq!(anonymous.outcome, Some(Outcome::Recorded));
    let again = send(&mut svc, post("k", "{}")).await;
    assert_eq!(again.outcome, Some(Outcome::Replayed));
    // A user's request with the same key is in the user's own scope.
    let user = send(&mut svc, as_user("7", post("k", "{}"))).await;
    assert_eq!(user.outcome, Some(Outcome::Recorded));
    assert_eq!(counter.get(), 2);
}

#[tokio::test]
async fn a_missing_scope_is_permission_denied_for_grpc() {
    let counter = Counter::new();
    let mut svc = app(
        user_scope(IdempotencyLayer::new(Probe::new(MemoryStore::new()))),
        &counter,
    );
    let mut req = post("k", "");
    req.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    let reply = send(&mut svc, req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("grpc-status"), Some("7"));
    assert_eq!(counter.get(), 0);
}
