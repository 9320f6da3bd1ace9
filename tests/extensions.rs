//! §2.9 and §3 Extensions: every response the layer answers carries the `Outcome` of what it
//! did (a passed-through response carries none, which `Outcome::of` reads as `Bypassed`); the
//! handler finds its `IdempotencyClaim` (scoped key and owner token) in the request.

mod common;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use common::{Counter, Fault, Gate, HandlerReq, Op, Probe, gated_app, post, read, request, send};
use http::{Method, Response};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_idempotency::store::{Entry, MemoryStore, Store, StoreErrorKind, StoreKey};
use tower_idempotency::{IdempotencyClaim, IdempotencyLayer, Outcome, RejectReason};

#[tokio::test]
async fn every_response_says_what_the_layer_did() {
    let store = Probe::new(MemoryStore::new());
    let (counter, gate) = (Counter::new(), Gate::new());
    gate.open();
    let layer = IdempotencyLayer::new(store.clone())
        .max_request_body(128)
        .max_response_body(64);
    let mut svc = gated_app(layer, &counter, &gate);
    let outcome = |reply: common::Reply| reply.outcome;

    let get = request(Method::GET, "/o", Some("k"), "");
    let res = svc.ready().await.unwrap().call(get).await.unwrap();
    assert_eq!(
        res.extensions().get::<Outcome>(),
        None,
        "no allocation for it"
    );
    assert_eq!(Outcome::of(&res), Outcome::Bypassed);
    let get = request(Method::GET, "/o", Some("k"), "");
    assert_eq!(outcome(send(&mut svc, get).await), None);
    let unkeyed = request(Method::POST, "/o", None, "");
    assert_eq!(outcome(send(&mut svc, unkeyed).await), None);
    assert_eq!(
        outcome(send(&mut svc, post("k", "a")).await),
        Some(Outcome::Recorded)
    );
    assert_eq!(
        outcome(send(&mut svc, post("k", "a")).await),
        Some(Outcome::Replayed)
    );
    assert_eq!(
        outcome(send(&mut svc, post("k", "b")).await),
        Some(Outcome::Mismatch)
    );
    assert_eq!(
        outcome(send(&mut svc, post("", "a")).await),
        Some(Outcome::Rejected(RejectReason::InvalidKey))
    );
    let big = "x".repeat(129);
    assert_eq!(
        outcome(send(&mut svc, post("big", &big)).await),
        Some(Outcome::Rejected(RejectReason::BodyTooLarge))
    );
    // `execution 1: ` and 100 bytes: over the response cap.
    let long = "y".repeat(100);
    assert_eq!(
        outcome(send(&mut svc, post("long", &long)).await),
        Some(Outcome::NotStored)
    );
    assert_eq!(
        outcome(send(&mut svc, post("long", &long)).await),
        Some(Outcome::ReplayUnavailable)
    );
    store.set(Op::Begin, Fault::Fail(StoreErrorKind::Unavailable));
    assert_eq!(
        outcome(send(&mut svc, post("down", "a")).await),
        Some(Outcome::StoreUnavailable)
    );
    store.clear(Op::Begin);
    assert_eq!(counter.get(), 5);

    // In progress.
    let (counter, gate) = (Counter::new(), Gate::new());
    let svc = gated_app(IdempotencyLayer::new(MemoryStore::new()), &counter, &gate);
    let first = tokio::spawn(svc.clone().oneshot(post("k", "a")));
    gate.arrived().await;
    let dup = read(svc.clone().oneshot(post("k", "a")).await.unwrap()).await;
    assert_eq!(dup.outcome, Some(Outcome::Conflict));
    gate.open();
    first.await.unwrap().unwrap();

    // Unprotected.
    let store = Probe::new(MemoryStore::new());
    store.set(Op::Begin, Fault::Fail(StoreErrorKind::Unavailable));
    let (counter, gate) = (Counter::new(), Gate::new());
    gate.open();
    let mut svc = gated_app(
        IdempotencyLayer::new(store).fail_open(true),
        &counter,
        &gate,
    );
    let reply = send(&mut svc, post("k", "a")).await;
    assert_eq!(reply.outcome, Some(Outcome::Unprotected));
    assert_eq!(counter.get(), 1);
}

/// Answers with what the handler saw of its claim, and checks it against the store meanwhile.
fn claim_reporter(
    layer: IdempotencyLayer<Arc<MemoryStore>>,
    store: Arc<MemoryStore>,
    counter: &Counter,
) -> impl tower::Service<
    http::Request<Full<Bytes>>,
    Response = common::Res,
    Error = Infallible,
    Future: Send + 'static,
> + Clone {
    let counter = counter.clone();
    ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: HandlerReq| {
            let (store, counter) = (store.clone(), counter.clone());
            async move {
                counter.hit();
                let Some(claim) = req.extensions().get::<IdempotencyClaim>().cloned() else {
                    return Ok(Response::new(Full::new(Bytes::from("no claim"))));
                };
                // The token is the one the store holds for the key, right now.
                let held = match store.get(claim.key()).await.unwrap() {
                    Some(Entry::InProgress { token, .. }) => token == claim.token(),
                    _ => false,
                };
                let text = format!(
                    "{:?}|{}|{}|{held}",
                    claim.key().scope(),
                    claim.key().key(),
                    claim.token()
                );
                Ok(Response::new(Full::new(Bytes::from(text))))
            }
        })
}

#[tokio::test]
async fn the_handler_sees_its_scoped_key_and_the_token_the_store_holds() {
    let store = Arc::new(MemoryStore::new());
    let counter = Counter::new();
    let layer = IdempotencyLayer::new(store.clone()).scope(|req| {
        req.headers
            .get("x-tenant")
            .map(|v| v.to_str().unwrap().to_owned())
    });
    let mut svc = claim_reporter(layer, store.clone(), &counter);

    let mut req = post("\"order-7\"", "{}");
    req.headers_mut()
        .insert("x-tenant", "acme".parse().unwrap());
    let reply = send(&mut svc, req).await;
    let seen: Vec<&str> = reply.text().split('|').collect();
    assert_eq!(seen[0], "Some(\"acme\")");
    assert_eq!(seen[1], "order-7", "the key unescaped");
    assert_eq!(seen[2].len(), 32);
    assert_eq!(seen[3], "true", "the store holds the handler's token");

    // After completion the store has the record under that scoped key.
    let key = StoreKey::new(Some("acme"), "order-7");
    assert!(matches!(
        store.get(&key).await.unwrap(),
        Some(Entry::Completed(_))
    ));

    // Another execution gets another token.
    let mut req = post("order-8", "{}");
    req.headers_mut()
        .insert("x-tenant", "acme".parse().unwrap());
    let other = send(&mut svc, req).await;
    let other: Vec<&str> = other.text().split('|').collect();
    assert_eq!(other[3], "true");
    assert_ne!(other[2], seen[2]);

    // An unprotected request has no claim.
    let reply = send(&mut svc, request(Method::POST, "/o", None, "")).await;
    assert_eq!(reply.text(), "no claim");
    assert_eq!(counter.get(), 3);
}
