//! The store-conformance suite against every store this crate ships without a server.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tower_idempotency::conformance;
use tower_idempotency::fingerprint::Fingerprint;
use tower_idempotency::record::{Record, StoredResponse};
use tower_idempotency::store::{
    Begin, BoxStore, Entry, Evict, KeyState, LookupOptions, MemoryStore, NoOpStore, OwnerToken,
    Store, StoreError, StoreErrorKind, StoreKey,
};

#[tokio::test]
async fn memory_store_with_defaults() {
    conformance::run(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_tiny_and_sharded() {
    // 4 shards of 8 entries and 1 MiB each: the suite's 1 MiB record is over a shard's share,
    // and a pass leaves about 20 records behind, so later checks evict earlier checks' records.
    let store = MemoryStore::builder()
        .shards(4)
        .max_entries(32)
        .max_bytes(4 * 1024 * 1024)
        .build();
    conformance::run(&store).await;
    // A second pass over the same, by now fuller, instance.
    conformance::run(&store).await;
}

#[tokio::test(start_paused = true)]
async fn memory_store_under_paused_time() {
    conformance::run(&MemoryStore::new()).await;
}

#[tokio::test]
async fn boxed_memory_store() {
    conformance::run(&BoxStore::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn shared_memory_store() {
    conformance::run(&Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn noop_store_passes_the_stateless_checks() {
    conformance::run_stateless(&NoOpStore::new()).await;
    conformance::run_stateless(&BoxStore::new(NoOpStore::new())).await;
}

#[tokio::test]
#[should_panic(expected = "store conformance check `begin_by_another_token_is_in_progress` failed")]
async fn noop_store_fails_the_full_suite_by_name() {
    conformance::run(&NoOpStore::new()).await;
}

#[tokio::test]
async fn memory_store_remembers_keys_and_evicts_them() {
    let ttl = Duration::from_millis(300);
    let store = MemoryStore::builder()
        .ttl(ttl)
        .key_ttl(Duration::from_secs(60))
        .build();
    conformance::run_retention(&store, ttl).await;
}

#[tokio::test(start_paused = true)]
async fn memory_store_lookup_tells_the_expiry() {
    let store = MemoryStore::builder()
        .ttl(Duration::from_secs(60))
        .key_ttl(Duration::from_secs(600))
        .build();
    let (key, owner) = (StoreKey::new(None, "expiry"), OwnerToken::generate());
    store
        .begin(&key, None, owner, Duration::from_secs(30))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    let looked_up = async |store: &MemoryStore| {
        let info = store.lookup(&key, LookupOptions::new()).await.unwrap();
        info.map(|info| (info.state(), info.expires_in().unwrap()))
    };
    let secs = Duration::from_secs;
    assert_eq!(
        looked_up(&store).await,
        Some((KeyState::InProgress { owner }, secs(20)))
    );

    let response = StoredResponse::new(StatusCode::CREATED, HeaderMap::new(), "x".into(), None);
    store
        .complete(&key, owner, &Record::new(None, &response))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(15)).await;
    assert_eq!(
        looked_up(&store).await,
        Some((KeyState::Completed, secs(45)))
    );
    // Past the response retention: remembered until the key retention, counted from `complete`.
    tokio::time::advance(Duration::from_secs(50)).await;
    assert_eq!(
        looked_up(&store).await,
        Some((KeyState::ResponseExpired, secs(535)))
    );
}

/// A store written before `lookup` and `evict` existed: only the required methods.
struct Minimal(MemoryStore);

impl Store for Minimal {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: Option<&Fingerprint>,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        self.0.begin(key, fingerprint, token, lease).await
    }
    async fn complete(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        record: &Record,
    ) -> Result<(), StoreError> {
        self.0.complete(key, token, record).await
    }
    async fn get(&self, key: &StoreKey) -> Result<Option<Entry>, StoreError> {
        self.0.get(key).await
    }
    async fn release(&self, key: &StoreKey, token: OwnerToken) -> Result<(), StoreError> {
        self.0.release(key, token).await
    }
    async fn renew(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.0.renew(key, token, lease).await
    }
}

#[tokio::test]
async fn a_store_with_the_default_admin_calls_conforms() {
    let store = Minimal(MemoryStore::new());
    conformance::run(&store).await;
    let (key, owner) = (StoreKey::new(None, "default"), OwnerToken::generate());
    store
        .begin(&key, None, owner, Duration::from_secs(30))
        .await
        .unwrap();
    let info = store
        .lookup(&key, LookupOptions::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.state(), KeyState::InProgress { owner });
    assert_eq!(info.expires_in(), None);
    let err = store.evict(&key, Evict::Force).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unsupported);
}
