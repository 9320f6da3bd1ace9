//! Duplicates racing: 8 tasks send the same 2000 keys (each key once per task, so 8 duplicates
//! per key, 16 000 requests), in the same order, so duplicates of a key arrive together. The
//! layered router must run the handler exactly once per key (checked after every batch);
//! the others get a replay or a `409`. The bare router runs all 16 000. Throughput is compared
//! with the bare router's; the Redis variant runs with `--all-features` when a server answers
//! at `REDIS_URL`.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use common::{Executions, Ratio, Target};
use criterion::{Criterion, Throughput};
use http_body_util::BodyExt;
use tokio::runtime::Runtime;
use tower::ServiceExt;
use tower_idempotency::store::MemoryStore;

const TASKS: u64 = 8;
const KEYS: u64 = 2000;

/// Sends the batch: every task sends every key once, with the order of that key. Returns the
/// wall time and whether every answer was one the layer may give.
fn batch(rt: &Runtime, router: &Router, orders: &Arc<[Bytes]>, prefix: &str) -> Duration {
    let (router, orders, prefix) = (router.clone(), Arc::clone(orders), prefix.to_owned());
    common::on_runtime(rt, async move {
        let start = tokio::time::Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..TASKS {
            let (router, orders, prefix) = (router.clone(), Arc::clone(&orders), prefix.clone());
            set.spawn(async move {
                for k in 0..KEYS {
                    let req = Request::post("/orders")
                        .header(header::CONTENT_TYPE, "application/json")
                        .header(common::KEY_HEADER, format!("{prefix}-{k}"))
                        .body(Body::from(orders[k as usize].clone()))
                        .expect("a valid request");
                    let res = router.clone().oneshot(req).await.expect("infallible");
                    let status = res.status();
                    let body = res.into_body().collect().await.expect("a body").to_bytes();
                    assert!(
                        matches!(status, StatusCode::CREATED | StatusCode::CONFLICT),
                        "{status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
            });
        }
        while let Some(done) = set.join_next().await {
            done.expect("a request task panicked");
        }
        start.elapsed()
    })
}

/// Times batches on fresh state from `make`, checking the executions after each.
fn batches(
    rt: &Runtime,
    iters: u64,
    orders: &Arc<[Bytes]>,
    make: &dyn Fn() -> (Router, Executions),
    per_key: u32,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let (router, executions) = make();
        total += batch(rt, &router, orders, &common::fresh_prefix());
        let counts = executions.counts();
        assert!(
            counts.iter().all(|&n| n == per_key),
            "expected {per_key} execution(s) per key, got {:?}",
            counts
                .iter()
                .filter(|&&n| n != per_key)
                .take(5)
                .collect::<Vec<_>>()
        );
    }
    total
}

fn bench(c: &mut Criterion, rt: &Runtime) {
    let orders: Arc<[Bytes]> = (0..KEYS).map(common::order).collect();
    let mut group = c.benchmark_group("contention");
    group.throughput(Throughput::Elements(TASKS * KEYS));
    group.sample_size(10);
    group.bench_function("baseline", |b| {
        let make = || common::baseline(KEYS as usize);
        b.iter_custom(|iters| batches(rt, iters, &orders, &make, TASKS as u32));
    });
    group.bench_function("memory", |b| {
        let make = || common::layered(MemoryStore::new(), KEYS as usize);
        b.iter_custom(|iters| batches(rt, iters, &orders, &make, 1));
    });
    #[cfg(feature = "redis")]
    if let Some(connection) = common::redis_connection(rt, true) {
        group.bench_function("redis", |b| {
            let make = || common::layered(common::redis_store(&connection), KEYS as usize);
            b.iter_custom(|iters| batches(rt, iters, &orders, &make, 1));
        });
    }
    group.finish();
}

fn main() {
    let since = SystemTime::now();
    let rt = common::runtime();
    let mut c = common::criterion();
    bench(&mut c, &rt);
    common::report(
        "contention",
        since,
        &[
            Ratio::throughput(
                "8 tasks × 2000 keys × 8 duplicates, MemoryStore (throughput)",
                "contention/memory",
                "contention/baseline",
                Target::AtLeast(1.0),
            ),
            Ratio::throughput(
                "8 tasks × 2000 keys × 8 duplicates, RedisStore (throughput)",
                "contention/redis",
                "contention/baseline",
                Target::None,
            ),
        ],
    );
}
