//! `PostgresStore` remembers a completed key past its response (`key_ttl`): through the layer,
//! over a tower service whose handler counts its executions, a retry after the response's
//! retention gets `409 result-expired` and never runs again, until the key's own retention ends;
//! the sweep frees the response of such rows and later deletes them (checked with SQL).
//! `lookup` tells each of these states and how long it has left.

mod common;

use std::time::Duration;

use common::postgres::{pool, sleep_past, store_with};
use common::{Counter, app, assert_problem, assert_result_expired, post, send};
use http::StatusCode;
use tower_idempotency::store::{
    Begin, KeyState, LookupOptions, OwnerToken, PostgresStore, Store, StoreErrorKind, StoreKey,
};
use tower_idempotency::{IdempotencyLayer, Outcome};

const TTL: Duration = Duration::from_millis(300);
const KEY_TTL: Duration = Duration::from_secs(3);

/// A store that keeps responses for `ttl` and keys for `key_ttl`, sweeping batches of `batch`
/// rows.
async fn store(test: &str, ttl: Duration, key_ttl: Duration, batch: u32) -> PostgresStore {
    store_with(pool(4).await, test, |b| {
        b.ttl(ttl).key_ttl(key_ttl).sweep_batch(batch)
    })
    .await
}

/// The store key the layer uses for `key` (no scope).
fn store_key(key: &str) -> StoreKey {
    StoreKey::new(None, key)
}

/// `(rows, rows with a response, rows with a fingerprint)` of the store's table.
async fn rows(store: &PostgresStore) -> (i64, i64, i64) {
    sqlx::query_as(&format!(
        "SELECT count(*), count(record), count(fingerprint) FROM \"{}\"",
        store.table()
    ))
    .fetch_one(store.pool())
    .await
    .unwrap()
}

/// What each sweep changed, until one changes nothing (at most ten sweeps).
async fn sweeps(store: &PostgresStore) -> Vec<u64> {
    let mut counts = Vec::new();
    for _ in 0..10 {
        match store.sweep().await.unwrap() {
            0 => break,
            n => counts.push(n),
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_response_expired_gets_result_expired_until_the_key_expires() {
    let store = store("retain", TTL, KEY_TTL, 1000).await;
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(store.clone()), &counter);

    let first = send(&mut svc, post("k", "{\"amount\":1}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let replay = send(&mut svc, post("k", "{\"amount\":1}")).await;
    assert!(replay.is_replay(), "{replay:?}");
    assert_eq!(replay.body, first.body);

    sleep_past(&store, &store_key("k"), "record_until").await;
    let late = send(&mut svc, post("k", "{\"amount\":1}")).await;
    assert_result_expired(&late);
    let other = send(&mut svc, post("k", "{\"amount\":2}")).await;
    assert_problem(&other, 422, "mismatch");
    assert_eq!(counter.get(), 1);
    assert_eq!(
        rows(&store).await,
        (1, 1, 1),
        "the response is hidden by the statements before any sweep frees it"
    );

    sleep_past(&store, &store_key("k"), "expires_at").await;
    let again = send(&mut svc, post("k", "{\"amount\":1}")).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.header("x-execution"), Some("2"));
    assert_eq!(again.outcome, Some(Outcome::Recorded));
    assert_eq!(counter.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_key_ttl_equal_to_ttl_the_key_is_forgotten_with_its_response() {
    let store = store("forget", TTL, TTL, 1000).await;
    assert_eq!(store.key_ttl(), TTL);
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(store.clone()), &counter);

    let first = send(&mut svc, post("k", "{\"amount\":1}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    sleep_past(&store, &store_key("k"), "record_until").await;
    let again = send(&mut svc, post("k", "{\"amount\":1}")).await;
    assert_eq!(again.status, StatusCode::CREATED, "{again:?}");
    assert_eq!(again.header("x-execution"), Some("2"));
    assert_eq!(counter.get(), 2);
}

/// The sweep frees, in batches, the responses whose retention ran out (not those of younger
/// keys), keeping each row's fingerprint: retries still get `result-expired` and the mismatch.
/// Once the key's retention ended (moved back in SQL by the sweep's minute of grace), the sweep
/// deletes the rows, and the key runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_frees_expired_responses_then_deletes_their_rows() {
    // Each instance sweeps in the background at its first `begin`: a long response retention
    // keeps those sweeps (of a table with nothing due yet) out of the counts below.
    let ttl = Duration::from_secs(1);
    let store = store("free", ttl, Duration::from_secs(600), 2).await;
    // A younger key, in a store on the same table that keeps responses for 24 hours.
    let young = PostgresStore::builder(store.pool().clone())
        .table(store.table())
        .build()
        .unwrap();
    let young_counter = Counter::new();
    let mut young_svc = app(IdempotencyLayer::new(young), &young_counter);
    let fresh = send(&mut young_svc, post("d", "{\"amount\":1}")).await;
    assert_eq!(fresh.status, StatusCode::CREATED);
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(store.clone()), &counter);
    for key in ["a", "b", "c"] {
        let first = send(&mut svc, post(key, "{\"amount\":1}")).await;
        assert_eq!(first.status, StatusCode::CREATED);
    }
    sleep_past(&store, &store_key("c"), "record_until").await;

    assert_eq!(sweeps(&store).await, [2, 1], "batches of two");
    assert_eq!(
        rows(&store).await,
        (4, 1, 4),
        "three responses freed, rows and fingerprints kept"
    );
    let late = send(&mut svc, post("a", "{\"amount\":1}")).await;
    assert_result_expired(&late);
    let other = send(&mut svc, post("b", "{\"amount\":2}")).await;
    assert_problem(&other, 422, "mismatch");
    let replay = send(&mut young_svc, post("d", "{\"amount\":1}")).await;
    assert!(replay.is_replay(), "{replay:?}");
    assert_eq!(counter.get() + young_counter.get(), 4);

    sqlx::query(&format!(
        "UPDATE \"{}\" SET expires_at = now() - interval '61 seconds' WHERE record IS NULL",
        store.table()
    ))
    .execute(store.pool())
    .await
    .unwrap();
    assert_eq!(sweeps(&store).await, [2, 1]);
    assert_eq!(
        rows(&store).await,
        (1, 1, 1),
        "only the younger key is left"
    );
    let again = send(&mut svc, post("a", "{\"amount\":1}")).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(counter.get(), 4);
}

/// How long the database's clock gives `column` (`lease_until`, `record_until`, `expires_at`)
/// of `key`'s row from now.
async fn left_of(store: &PostgresStore, key: &StoreKey, column: &str) -> Duration {
    let left: f64 = sqlx::query_scalar(&format!(
        "SELECT extract(epoch FROM {column} - now())::float8 FROM \"{}\" WHERE key = $1",
        store.table()
    ))
    .bind(&key.digest()[..])
    .fetch_one(store.pool())
    .await
    .unwrap();
    Duration::from_secs_f64(left.max(0.0))
}

/// Asserts that `lookup` of `key` (read before this call) expires with `column` of its row,
/// read now: no earlier, and at most 250 ms later (the time between the two reads).
async fn assert_expires_with(
    store: &PostgresStore,
    key: &StoreKey,
    expires_in: Option<Duration>,
    column: &str,
) -> Duration {
    let left = expires_in.unwrap_or_else(|| panic!("no expiry where {column} was expected"));
    let now_left = left_of(store, key, column).await;
    assert!(
        left >= now_left && left - now_left < Duration::from_millis(250),
        "lookup says {left:?} left, {column} is {now_left:?} away"
    );
    left
}

/// `lookup` reads each state of a key with the time left by the database's clock: the lease of
/// a claim, the response retention (`ttl`) of a completed key, the key retention (`key_ttl`)
/// once the response expired. The response is selected only when asked for: a row whose
/// stored response is not a valid record (written here in SQL) reads fine without it, and
/// fails as corrupt with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_reports_each_state_and_its_time_left() {
    let store = store("lookup", TTL, KEY_TTL, 1000).await;
    let (claimed, owner, lease) = (
        store_key("claimed"),
        OwnerToken::generate(),
        Duration::from_secs(30),
    );
    assert_eq!(
        store.begin(&claimed, None, owner, lease).await.unwrap(),
        Begin::New
    );
    let info = store
        .lookup(&claimed, LookupOptions::new())
        .await
        .unwrap()
        .expect("a live claim");
    assert_eq!(info.state(), KeyState::InProgress { owner });
    let left = assert_expires_with(&store, &claimed, info.expires_in(), "lease_until").await;
    assert!(
        left <= lease && left > lease - Duration::from_secs(5),
        "{left:?}"
    );

    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(store.clone()), &counter);
    let first = send(&mut svc, post("k", "{\"amount\":1}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let key = store_key("k");
    let info = store
        .lookup(&key, LookupOptions::new())
        .await
        .unwrap()
        .expect("a completed key");
    assert_eq!(info.state(), KeyState::Completed);
    assert!(info.fingerprint().is_some());
    assert_eq!(info.record(), None);
    let left = assert_expires_with(&store, &key, info.expires_in(), "record_until").await;
    assert!(left <= TTL, "{left:?}");
    let with = LookupOptions::new().with_response(true);
    let info = store.lookup(&key, with).await.unwrap().expect("completed");
    let stored = info.record().expect("asked for").response().unwrap();
    assert_eq!(stored.expect("a stored response").body, first.body);

    sleep_past(&store, &key, "record_until").await;
    let info = store.lookup(&key, with).await.unwrap().expect("remembered");
    assert_eq!(info.state(), KeyState::ResponseExpired);
    assert!(
        info.record()
            .expect("the small record")
            .is_response_expired()
    );
    let left = assert_expires_with(&store, &key, info.expires_in(), "expires_at").await;
    assert!(
        left <= KEY_TTL - TTL && left > KEY_TTL - TTL * 4,
        "{left:?}"
    );

    let second = send(&mut svc, post("j", "{\"amount\":2}")).await;
    assert_eq!(second.status, StatusCode::CREATED);
    let key = store_key("j");
    sqlx::query(&format!(
        "UPDATE \"{}\" SET record = '\\xdeadbeef' WHERE key = $1",
        store.table()
    ))
    .bind(&key.digest()[..])
    .execute(store.pool())
    .await
    .unwrap();
    let info = store.lookup(&key, LookupOptions::new()).await;
    assert_eq!(info.unwrap().map(|i| i.state()), Some(KeyState::Completed));
    let corrupt = store.lookup(&key, with).await.unwrap_err();
    assert_eq!(corrupt.kind(), StoreErrorKind::Corrupt, "{corrupt:?}");
    store.release(&claimed, owner).await.unwrap();
}
