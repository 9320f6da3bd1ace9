//! A first execution on the `MemoryStore`: a fresh key each request, so every request claims,
//! runs the handler, records the response and answers (256-byte JSON in, 256-byte JSON out).

mod common;

use std::time::SystemTime;

use common::{Key, Load, Ratio, Target};
use criterion::Criterion;
use tower_idempotency::store::MemoryStore;

/// A layered router over a store of its own, big enough that nothing is evicted.
fn layered() -> (Load, common::Executions) {
    let store = MemoryStore::builder()
        .max_entries(usize::MAX)
        .max_bytes(usize::MAX)
        .build();
    let (layered, executions) = common::layered(store, 1);
    let load = Load::post(layered, Key::Fresh(common::fresh_prefix()));
    (load, executions)
}

/// The same requests, keys included, to the bare router, which ignores the keys.
fn baseline() -> Load {
    Load::post(common::baseline(1).0, Key::Fresh(common::fresh_prefix()))
}

fn bench(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let mut group = c.benchmark_group("memory_first");
    group.bench_function("baseline", |b| {
        let load = baseline();
        b.iter_custom(|iters| common::drive(rt, &load, 1, iters));
    });
    group.bench_function("layered", |b| {
        b.iter_custom(|iters| {
            // A fresh store per sample.
            let (load, executions) = layered();
            let time = common::drive(rt, &load, 1, iters);
            assert_eq!(executions.total(), iters, "one execution per fresh key");
            time
        });
    });
    group.finish();
}

fn main() {
    let since = SystemTime::now();
    let rt = common::runtime();
    if common::profile(&rt, &[("baseline", &baseline()), ("layered", &layered().0)]) {
        return;
    }
    let mut c = common::criterion();
    bench(&mut c, &rt);
    common::report(
        "memory_first",
        since,
        &[Ratio::time(
            "first execution, MemoryStore",
            "memory_first/layered",
            "memory_first/baseline",
            Target::AtMost(1.3),
        )],
    );
}
