//! The store-conformance suite against `RedisStore` over each connection type it supports: a
//! multiplexed connection and a `ConnectionManager` on the shared server at `REDIS_URL` (each run
//! under a prefix of its own), and a cluster connection on a private three-primary cluster; and
//! the key-retention checks with a short response retention.

mod common;

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tower_idempotency::conformance;
use tower_idempotency::fingerprint::Fingerprint;
use tower_idempotency::record::{Record, StoredResponse};
use tower_idempotency::store::{
    BoxStore, Evict, Evicted, KeyInfo, KeyState, LookupOptions, OwnerToken, RedisStore, Store,
    StoreKey,
};

use common::redis::{RedisCluster, shared_connection, shared_connection_manager, unique_prefix};

/// Short enough that what the suite leaves on the shared server goes away soon.
const TTL: Duration = Duration::from_secs(60);

#[tokio::test]
async fn multiplexed_connection() {
    let store =
        RedisStore::new(shared_connection().await, TTL).with_prefix(unique_prefix("multiplexed"));
    conformance::run(&store).await;
}

#[tokio::test]
async fn connection_manager() {
    let store = RedisStore::new(shared_connection_manager().await, TTL)
        .with_prefix(unique_prefix("manager"));
    conformance::run(&store).await;
}

#[tokio::test]
async fn cluster_connection() {
    let cluster = RedisCluster::start();
    let store = RedisStore::new(cluster.connection().await, TTL);
    conformance::run(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boxed_on_a_multi_threaded_runtime() {
    let store =
        RedisStore::new(shared_connection_manager().await, TTL).with_prefix(unique_prefix("boxed"));
    conformance::run(&BoxStore::new(store)).await;
}

/// Responses kept for this long and keys for [`TTL`]: the retention checks sleep through it.
const SHORT_TTL: Duration = Duration::from_millis(400);

#[tokio::test]
async fn remembered_keys_on_a_multiplexed_connection() {
    let store = RedisStore::new(shared_connection().await, SHORT_TTL)
        .with_key_ttl(TTL)
        .with_prefix(unique_prefix("remembered"));
    conformance::run_retention(&store, SHORT_TTL).await;
}

#[tokio::test]
async fn remembered_keys_on_a_cluster() {
    let cluster = RedisCluster::start();
    let store = RedisStore::new(cluster.connection().await, SHORT_TTL).with_key_ttl(TTL);
    conformance::run_retention(&store, SHORT_TTL).await;
}

/// The suite accepts a store without expiries or evictions; this one has both.
#[tokio::test]
async fn lookup_tells_the_expiry_of_each_state() {
    let lease = Duration::from_secs(30);
    let store = RedisStore::new(shared_connection().await, SHORT_TTL)
        .with_key_ttl(TTL)
        .with_prefix(unique_prefix("expiry"));
    let (key, owner) = (StoreKey::new(None, "expiry"), OwnerToken::generate());
    let fp = Fingerprint::sha256(b"expiry");
    store.begin(&key, Some(&fp), owner, lease).await.unwrap();
    let expiry = |info: Option<KeyInfo>| {
        let info = info.expect("the key is there");
        (info.state(), info.expires_in().expect("an expiry"))
    };
    let (state, left) = expiry(store.lookup(&key, LookupOptions::new()).await.unwrap());
    assert_eq!(state, KeyState::InProgress { owner });
    assert!(
        left <= lease && left > lease - Duration::from_secs(5),
        "{left:?}"
    );

    let response = StoredResponse::new(StatusCode::CREATED, HeaderMap::new(), "x".into(), None);
    let record = Record::new(Some(fp), &response);
    store.complete(&key, owner, &record).await.unwrap();
    let (state, left) = expiry(store.lookup(&key, LookupOptions::new()).await.unwrap());
    assert_eq!(state, KeyState::Completed);
    assert!(left <= SHORT_TTL, "{left:?}");

    tokio::time::sleep(SHORT_TTL + Duration::from_millis(100)).await;
    let (state, left) = expiry(store.lookup(&key, LookupOptions::new()).await.unwrap());
    assert_eq!(state, KeyState::ResponseExpired);
    assert!(
        left <= TTL && left > TTL - Duration::from_secs(5),
        "{left:?}"
    );
    assert_eq!(
        store.evict(&key, Evict::CompletedOnly).await.unwrap(),
        Evicted::Record
    );
    assert_eq!(
        store.lookup(&key, LookupOptions::new()).await.unwrap(),
        None
    );
}
