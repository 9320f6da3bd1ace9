//! The store-conformance suite against every store this crate ships without a server.

use std::sync::Arc;

use tower_idempotency::conformance;
use tower_idempotency::store::{BoxStore, MemoryStore, NoOpStore};

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
