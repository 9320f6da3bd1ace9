//! A first execution on the `MemoryStore`: a fresh key each request, so every request claims,
//! runs the handler, records the response and answers (256-byte JSON in, 256-byte JSON out).
//!
//! One default store (`MemoryStore::new()`: 100 000 entries, 128 MiB) serves the whole
//! benchmark, as in a server: it is filled to its bound before the warm-up, and from then on
//! every new record evicts the oldest, so the numbers are the steady state, eviction included,
//! not the growth of an empty heap.

mod common;

use std::time::SystemTime;

use common::{Floor, Key, Load, Ratio, Target};
use criterion::Criterion;
use tower_idempotency::store::MemoryStore;

/// The layered router over a default store.
fn layered() -> (Load, common::Executions) {
    let (layered, executions) = common::layered(MemoryStore::new(), 1);
    let load = Load::post(layered, Key::Fresh(common::fresh_prefix()));
    (load, executions)
}

/// The same requests, keys included, to the bare router, which ignores the keys.
fn baseline() -> Load {
    Load::post(common::baseline(1).0, Key::Fresh(common::fresh_prefix()))
}

/// The same requests through a layer that only reads the body and hashes what SPEC requires.
fn hashed_floor() -> Load {
    Load::post(
        common::floor(Floor::HashedRun),
        Key::Fresh(common::fresh_prefix()),
    )
}

/// `layered` is the store's load, filled to the store's bound before (see [`main`]).
fn bench(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    layered: &Load,
    executions: &common::Executions,
) {
    let mut group = c.benchmark_group("memory_first");
    group.bench_function("baseline", |b| {
        let load = baseline();
        b.iter_custom(|iters| common::drive(rt, &load, 1, iters));
    });
    group.bench_function("hashed_floor", |b| {
        let load = hashed_floor();
        b.iter_custom(|iters| common::drive(rt, &load, 1, iters));
    });
    // The load is made outside the closure, which criterion calls again for every sample: the
    // store carries over from the warm-up to the last sample.
    group.bench_function("layered", |b| {
        b.iter_custom(|iters| {
            let sent = executions.total() + iters;
            let time = common::drive(rt, &layered.fresh(), 1, iters);
            assert_eq!(executions.total(), sent, "one execution per fresh key");
            time
        });
    });
    group.finish();
}

fn main() {
    let since = SystemTime::now();
    let rt = common::runtime();
    let (layered, executions) = layered();
    let profiled = [
        ("baseline", &baseline()),
        ("layered", &layered),
        ("hashed_floor", &hashed_floor()),
    ];
    if common::profile(&rt, &profiled) {
        return;
    }
    if common::benchmarking() {
        // Filled to its bound first, so that every sample, and every paired round, evicts.
        common::drive(&rt, &layered.fresh(), 1, 100_000);
    }
    let mut c = common::criterion();
    bench(&mut c, &rt, &layered, &executions);
    let base = baseline();
    let paired_layered = common::paired(&rt, "memory_first/layered", since, &base, || {
        layered.fresh()
    });
    let floor = hashed_floor();
    let paired_floor = common::paired(&rt, "memory_first/hashed_floor", since, &base, || {
        floor.clone()
    });
    common::report(
        "memory_first",
        since,
        &[
            Ratio::time(
                "first execution, MemoryStore",
                "memory_first/layered",
                "memory_first/baseline",
                Target::AtMost(1.25),
            )
            .with_paired(paired_layered),
            Ratio::time(
                "  floor: a layer that reads the body and computes the SHA-256s of SPEC §2.4 and §5",
                "memory_first/hashed_floor",
                "memory_first/baseline",
                Target::None,
            )
            .with_paired(paired_floor),
        ],
    );
}
