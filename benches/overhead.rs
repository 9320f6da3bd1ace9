//! What the layer costs when it does nothing: a `GET` (not a covered method) and a `POST`
//! without an `Idempotency-Key`, each against the same request to the bare router.

mod common;

use std::time::SystemTime;

use common::{Key, Load, Ratio, Target};
use criterion::Criterion;
use tower_idempotency::store::MemoryStore;

fn loads() -> [(&'static str, Load); 4] {
    let (bare, _) = common::baseline(1);
    let (layered, _) = common::layered(MemoryStore::new(), 1);
    [
        ("baseline_post", Load::post(bare.clone(), Key::Absent)),
        ("post_no_key", Load::post(layered.clone(), Key::Absent)),
        ("baseline_get", Load::get(bare)),
        ("get", Load::get(layered)),
    ]
}

fn bench(c: &mut Criterion, rt: &tokio::runtime::Runtime, loads: &[(&'static str, Load)]) {
    let mut group = c.benchmark_group("overhead");
    for (name, load) in loads {
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| common::drive(rt, load, 1, iters));
        });
    }
    group.finish();
}

fn main() {
    let since = SystemTime::now();
    let rt = common::runtime();
    let loads = loads();
    let named: Vec<_> = loads.iter().map(|(name, load)| (*name, load)).collect();
    if common::profile(&rt, &named) {
        return;
    }
    let mut c = common::criterion();
    bench(&mut c, &rt, &loads);
    common::report(
        "overhead",
        since,
        &[
            Ratio::time(
                "POST without a key",
                "overhead/post_no_key",
                "overhead/baseline_post",
                Target::AtMost(1.03),
            ),
            Ratio::time(
                "GET (not a covered method)",
                "overhead/get",
                "overhead/baseline_get",
                Target::AtMost(1.03),
            ),
        ],
    );
}
