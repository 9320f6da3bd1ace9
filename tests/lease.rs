//! §2.6 Leases and retention, in paused time: a running handler keeps its key because the layer
//! renews the lease; a claim whose owner vanished is free when its lease ends; a record expires
//! with the store's TTL.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Counter, HandlerReq, Op, Probe, app, assert_problem, entry, post, read, send};
use http::StatusCode;
use tokio::time::{Instant, sleep};
use tower::{ServiceBuilder, ServiceExt};
use tower_idempotency::store::MemoryStore;
use tower_idempotency::store::{Entry, OwnerToken, Store, StoreKey};
use tower_idempotency::{IdempotencyLayer, Outcome};

#[tokio::test(start_paused = true)]
async fn a_handler_longer_than_the_lease_keeps_its_key() {
    let store = Probe::new(MemoryStore::new());
    let counter = Counter::new();
    let c = counter.clone();
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(store.clone()).lease(Duration::from_secs(3)))
        .service_fn(move |req: HandlerReq| {
            let c = c.clone();
            async move {
                sleep(Duration::from_secs(10)).await;
                common::echo(c, req).await
            }
        });

    let start = Instant::now();
    let first = tokio::spawn(svc.clone().oneshot(post("k", "slow")));
    // Every half second for the whole run, well past three leases: the key stays taken.
    sleep(Duration::from_millis(500)).await;
    while !first.is_finished() {
        let dup = read(svc.clone().oneshot(post("k", "slow")).await.unwrap()).await;
        assert_problem(&dup, 409, "in-progress");
        assert_eq!(
            dup.outcome,
            Some(Outcome::Conflict),
            "{:?}",
            start.elapsed()
        );
        sleep(Duration::from_millis(500)).await;
    }
    assert!(start.elapsed() >= Duration::from_secs(10));
    let first = read(first.await.unwrap().unwrap()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.outcome, Some(Outcome::Recorded));
    assert_eq!(counter.get(), 1);
    // Renewed every third of the lease: about 10 / 1 times.
    let renewals = store.calls(Op::Renew);
    assert!((9..=11).contains(&renewals), "{renewals} renewals");

    let retry = read(svc.oneshot(post("k", "slow")).await.unwrap()).await;
    assert_eq!(retry.outcome, Some(Outcome::Replayed));
    assert_eq!(retry.body, first.body);
    assert_eq!(counter.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_record_expires_with_the_store_ttl() {
    // A store that forgets keys with their responses (see `key_ttl` for remembering them).
    let store = MemoryStore::builder()
        .ttl(Duration::from_secs(60))
        .key_ttl(Duration::from_secs(60))
        .build();
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(store), &counter);

    let first = send(&mut svc, post("k", "{}")).await;
    assert_eq!(first.text(), "execution 1: {}");
    sleep(Duration::from_secs(59)).await;
    let retry = send(&mut svc, post("k", "{}")).await;
    assert_eq!(retry.outcome, Some(Outcome::Replayed));
    assert_eq!(retry.body, first.body);

    sleep(Duration::from_secs(2)).await;
    let later = send(&mut svc, post("k", "{}")).await;
    assert_eq!(later.outcome, Some(Outcome::Recorded));
    assert_eq!(later.text(), "execution 2: {}");
    assert_eq!(counter.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_claim_whose_owner_vanished_is_free_after_its_lease() {
    let store = Arc::new(MemoryStore::new());
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(store.clone()), &counter);

    // Another instance claimed the key and died without completing or releasing it.
    let key = StoreKey::new(None, "k");
    let foreign = OwnerToken::generate();
    store
        .begin(&key, None, foreign, Duration::from_secs(5))
        .await
        .unwrap();

    let dup = send(&mut svc, post("k", "{}")).await;
    assert_problem(&dup, 409, "in-progress");
    sleep(Duration::from_secs(4)).await;
    let dup = send(&mut svc, post("k", "{}")).await;
    assert_problem(&dup, 409, "in-progress");
    assert_eq!(counter.get(), 0);
    assert!(matches!(
        entry(&*store, "k").await,
        Some(Entry::InProgress { token, .. }) if token == foreign
    ));

    sleep(Duration::from_secs(2)).await;
    let reply = send(&mut svc, post("k", "{}")).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.outcome, Some(Outcome::Recorded));
    assert_eq!(reply.text(), "execution 1: {}");
    assert_eq!(counter.get(), 1);
    // The vanished owner cannot overwrite the new record.
    assert!(store.release(&key, foreign).await.is_err());
    let again = send(&mut svc, post("k", "{}")).await;
    assert_eq!(again.outcome, Some(Outcome::Replayed));
    assert_eq!(counter.get(), 1);
}
