//! The store-conformance suite against `RedisStore` over each connection type it supports: a
//! multiplexed connection and a `ConnectionManager` on the shared server at `REDIS_URL` (each run
//! under a prefix of its own), and a cluster connection on a private three-primary cluster.

mod common;

use std::time::Duration;

use tower_idempotency::conformance;
use tower_idempotency::store::{BoxStore, RedisStore};

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
