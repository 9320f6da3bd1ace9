//! Duplicates that wait for their owner (`wait_for_in_flight`) on `RedisStore` with
//! `RedisPushWaits`: woken by the server's `invalidate` push when the key is completed,
//! released or expires, on a single node and on a cluster, with no `GET` while they wait.
//!
//! The stores here poll only every 30 s, so a duplicate that was not woken by a push would sit
//! until its deadline: the bounds on how long it takes are generous upper bounds that only a
//! missing push can exceed, not measurements of speed. Every server is private to its test.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tower::ServiceExt;
use tower_idempotency::IdempotencyLayer;
use tower_idempotency::store::{
    Begin, OwnerToken, RedisPushWaits, RedisStore, Store, StoreErrorKind, StoreKey,
};

use common::redis::{RedisCluster, RedisServer, client};
use common::{Counter, Gate, Reply, gated_app, post, read};

const TTL: Duration = Duration::from_secs(60);
/// Long enough that polling cannot pass for a push.
const POLL: Duration = Duration::from_secs(30);
/// How long a duplicate may wait for its owner.
const WAIT: Duration = Duration::from_secs(8);
/// The generous upper bound between the owner's answer and the woken duplicate's.
const WOKEN_WITHIN: Duration = Duration::from_secs(1);

/// Calls per command over every node, after the last `CONFIG RESETSTAT`.
fn stats(admins: &mut [redis::Connection]) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for admin in admins {
        for (name, calls) in RedisServer::command_stats(admin) {
            *all.entry(name).or_default() += calls;
        }
    }
    all
}

fn calls(stats: &BTreeMap<String, u64>, command: &str) -> u64 {
    stats.get(command).copied().unwrap_or(0)
}

/// Waits (bounded) until the waiters have read their key `n` times in all, which they do once
/// when they start waiting.
async fn until_reads(admins: &mut [redis::Connection], n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while calls(&stats(admins), "getrange") < n {
        assert!(
            Instant::now() < deadline,
            "the duplicate never started to wait: {:?}",
            stats(admins)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An owner held at a gate and a duplicate that waits for it: the duplicate gets the replay
/// soon after the owner answers, and no `GET` is sent while it waits.
/// A store on a private server with push waits, and that server.
///
/// The stores of these tests forget keys with their responses (`with_key_ttl(TTL)`): a tombstone
/// is read with a `GET` that rides with every `begin`, and would count as a poll here.
async fn store_with_push_waits() -> (RedisStore<redis::aio::ConnectionManager>, RedisServer) {
    let server = RedisServer::start();
    let waits = RedisPushWaits::connect(&client(&format!("{}?protocol=resp3", server.url())))
        .await
        .unwrap();
    let store = RedisStore::new(server.connection_manager().await, TTL)
        .with_key_ttl(TTL)
        .with_poll_interval(POLL)
        .with_push_waits(waits);
    (store, server)
}

/// A claim on `name` by a fresh token for `lease`, on a store whose stats were just reset.
async fn claimed(
    store: &RedisStore<redis::aio::ConnectionManager>,
    admin: &mut redis::Connection,
    name: &str,
    lease: Duration,
) -> (StoreKey, OwnerToken) {
    RedisServer::reset_stats(admin);
    let (key, token) = (StoreKey::new(None, name), OwnerToken::generate());
    assert_eq!(
        store.begin(&key, None, token, lease).await.unwrap(),
        Begin::New
    );
    (key, token)
}

async fn duplicate_is_woken_by_complete<St: Store>(store: St, admins: &mut [redis::Connection]) {
    let (counter, gate) = (Counter::new(), Gate::new());
    let app = gated_app(
        // Coalescing off: the duplicate waits through the store, as one on another instance
        // does (on the owner's own instance it would wait in process, with no Redis call).
        IdempotencyLayer::new(store)
            .wait_for_in_flight(WAIT)
            .coalesce(false),
        &counter,
        &gate,
    );
    let timed = |app: _| async move {
        let reply: Reply = read(ServiceExt::oneshot(app, post("k1", "{}")).await.unwrap()).await;
        (reply, Instant::now())
    };
    let owner = tokio::spawn(timed(app.clone()));
    gate.arrived().await;
    for admin in admins.iter_mut() {
        RedisServer::reset_stats(admin);
    }
    let duplicate = tokio::spawn(timed(app.clone()));
    until_reads(admins, 1).await;
    // The owner runs on for a while: a poller would have sent many GETs by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.open();
    let (owner, owner_at) = owner.await.unwrap();
    let (duplicate, duplicate_at) = duplicate.await.unwrap();

    assert_eq!(owner.status, 201, "{owner:?}");
    assert!(!owner.is_replay());
    assert_eq!(duplicate.status, 201, "{duplicate:?}");
    assert!(duplicate.is_replay(), "{duplicate:?}");
    assert_eq!(duplicate.body, owner.body);
    assert_eq!(counter.get(), 1, "one execution");
    let late = duplicate_at.saturating_duration_since(owner_at);
    assert!(
        late < WOKEN_WITHIN,
        "the duplicate answered {late:?} after its owner: not woken by the server"
    );
    let ran = stats(admins);
    assert_eq!(calls(&ran, "get"), 0, "no GET while waiting: {ran:?}");
    // One read when the wait starts, one when the push comes (a spurious one at most).
    assert!(calls(&ran, "getrange") <= 3, "{ran:?}");
}

#[tokio::test]
async fn single_node_duplicate_is_woken_by_complete() {
    let (store, server) = store_with_push_waits().await;
    duplicate_is_woken_by_complete(store, &mut [server.admin()]).await;
}

#[tokio::test]
async fn cluster_duplicate_is_woken_by_complete() {
    let cluster = RedisCluster::start();
    let waits = RedisPushWaits::connect_cluster(cluster.client_builder())
        .await
        .unwrap();
    let store = RedisStore::new(cluster.connection().await, TTL)
        .with_key_ttl(TTL)
        .with_poll_interval(POLL)
        .with_push_waits(waits);
    let mut admins: Vec<_> = cluster.nodes().iter().map(RedisServer::admin).collect();
    duplicate_is_woken_by_complete(store, &mut admins).await;
}

#[tokio::test]
async fn release_wakes_the_waiter() {
    let (store, server) = store_with_push_waits().await;
    let mut admins = [server.admin()];
    let (key, token) = claimed(&store, &mut admins[0], "released", Duration::from_secs(30)).await;
    let waiter = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move {
            store.wait(&key, WAIT).await.unwrap();
            Instant::now()
        })
    };
    until_reads(&mut admins, 1).await;
    store.release(&key, token).await.unwrap();
    let released_at = Instant::now();
    let late = waiter.await.unwrap().saturating_duration_since(released_at);
    assert!(late < WOKEN_WITHIN, "woken {late:?} after the release");
    assert_eq!(calls(&stats(&mut admins), "get"), 0);
}

#[tokio::test]
async fn lease_expiry_wakes_the_waiter() {
    let (store, server) = store_with_push_waits().await;
    let mut admins = [server.admin()];
    let lease = Duration::from_millis(300);
    let (key, _) = claimed(&store, &mut admins[0], "expiring", lease).await;
    let started = Instant::now();
    store.wait(&key, WAIT).await.unwrap();
    let waited = started.elapsed();
    // Redis expires keys in a background cycle; its push follows (tens of ms after the lease).
    assert!(
        waited < lease + WOKEN_WITHIN,
        "woken {waited:?} after a {lease:?} lease began"
    );
    assert_eq!(calls(&stats(&mut admins), "get"), 0);
    let next = OwnerToken::generate();
    assert_eq!(
        store.begin(&key, None, next, lease).await.unwrap(),
        Begin::New
    );
}

#[tokio::test]
async fn push_waits_need_resp3() {
    let server = RedisServer::start();
    let e = RedisPushWaits::connect(&client(&server.url()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Other);
    let why = std::error::Error::source(&e).unwrap().to_string();
    assert!(why.contains("protocol=resp3"), "{why}");
}
