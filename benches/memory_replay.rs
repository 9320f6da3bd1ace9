//! A replay on the `MemoryStore`: the key was completed once, every request after that gets the
//! stored response back without running the handler.

mod common;

use std::time::SystemTime;

use common::{Key, Load, Ratio, Target};
use criterion::Criterion;
use http::HeaderValue;
use tower_idempotency::store::MemoryStore;

/// The bare and the layered router, the layered one with the key completed.
fn loads(rt: &tokio::runtime::Runtime) -> (Load, Load, common::Executions) {
    let key = Key::Fixed(HeaderValue::from_static(
        "8e03978e-40d5-43e8-bc93-6894a57f9324",
    ));
    let (bare, _) = common::baseline(1);
    let (layered, executions) = common::layered(MemoryStore::new(), 1);
    let bare = Load::post(bare, key.clone());
    let layered = Load::post(layered, key);
    // The first request runs and is recorded; from then on, replays.
    common::on_runtime(rt, {
        let layered = layered.clone();
        async move {
            let (_, headers, _) = layered.send(0).await;
            assert!(headers.get("idempotent-replayed").is_none());
            let (_, headers, _) = layered.send(0).await;
            assert_eq!(headers["idempotent-replayed"], "true");
        }
    });
    (bare, layered, executions)
}

fn bench(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let (bare, layered, executions) = loads(rt);
    let mut group = c.benchmark_group("memory_replay");
    group.bench_function("baseline", |b| {
        b.iter_custom(|iters| common::drive(rt, &bare, 1, iters));
    });
    group.bench_function("layered", |b| {
        b.iter_custom(|iters| common::drive(rt, &layered, 1, iters));
    });
    group.finish();
    assert_eq!(executions.total(), 1, "the handler ran once, replays since");
}

fn main() {
    let since = SystemTime::now();
    let rt = common::runtime();
    let (bare, layered, _) = loads(&rt);
    if common::profile(&rt, &[("baseline", &bare), ("layered", &layered)]) {
        return;
    }
    let mut c = common::criterion();
    bench(&mut c, &rt);
    common::report(
        "memory_replay",
        since,
        &[Ratio::time(
            "replay, MemoryStore",
            "memory_replay/layered",
            "memory_replay/baseline",
            Target::AtMost(0.4),
        )],
    );
}
