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

fn bench(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let mut group = c.benchmark_group("memory_first");
    group.bench_function("baseline", |b| {
        let load = baseline();
        b.iter_custom(|iters| common::drive(rt, &load, 1, iters));
    });
    group.bench_function("hashed_floor", |b| {
        let load = hashed_floor();
        b.iter_custom(|iters| common::drive(rt, &load, 1, iters));
    });
    // Made once, outside the closure: criterion calls the closure again for every sample, and
    // the store must carry over from the warm-up to the last sample to reach its bound.
    let (load, executions) = layered();
    // Filled to its bound first, so that every sample runs with eviction.
    let mut sent = 100_000;
    common::drive(rt, &load, 1, sent);
    group.bench_function("layered", |b| {
        b.iter_custom(|iters| {
            // Keys this store has not seen.
            let load = Load {
                key: Key::Fresh(common::fresh_prefix()),
                ..load.clone()
            };
            let time = common::drive(rt, &load, 1, iters);
            sent += iters;
            assert_eq!(executions.total(), sent, "one execution per fresh key");
            time
        });
    });
    group.finish();
}

fn main() {
    let since = SystemTime::now();
    let rt = common::runtime();
    let profiled = [
        ("baseline", &baseline()),
        ("layered", &layered().0),
        ("hashed_floor", &hashed_floor()),
    ];
    if common::profile(&rt, &profiled) {
        return;
    }
    let mut c = common::criterion();
    bench(&mut c, &rt);
    // Paired: a store of its own, filled to its bound first (the steady state, as above).
    let (layered, _) = layered();
    let fill = Load {
        key: Key::Fresh(common::fresh_prefix()),
        ..layered.clone()
    };
    if common::benchmarking() {
        common::drive(&rt, &fill, 1, 100_000);
    }
    let fresh = |load: &Load| Load {
        key: Key::Fresh(common::fresh_prefix()),
        ..load.clone()
    };
    let base = baseline();
    let paired_layered = common::paired(&rt, "memory_first/layered", since, &base, || {
        fresh(&layered)
    });
    let floor = hashed_floor();
    let paired_floor = common::paired(&rt, "memory_first/hashed_floor", since, &base, || {
        fresh(&floor)
    });
    common::report(
        "memory_first",
        since,
        &[
            Ratio::time(
                "first execution, MemoryStore",
                "memory_first/layered",
                "memory_first/baseline",
                Target::AtMost(1.3),
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
