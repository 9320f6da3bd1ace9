//! A replay on the `MemoryStore`: the key was completed once, every request after that gets the
//! stored response back without running the handler.

mod common;

use std::time::SystemTime;

use common::{Floor, Key, Load, Ratio, Target};
use criterion::Criterion;
use http::HeaderValue;
use tower_idempotency::store::MemoryStore;

/// The bare and the layered router, the layered one with the key completed, and the floors.
fn loads(rt: &tokio::runtime::Runtime) -> (Load, Load, common::Executions, [Load; 2]) {
    let key = Key::Fixed(HeaderValue::from_static(
        "8e03978e-40d5-43e8-bc93-6894a57f9324",
    ));
    let (bare, _) = common::baseline(1);
    let (layered, executions) = common::layered(MemoryStore::new(), 1);
    let bare = Load::post(bare, key.clone());
    let layered = Load::post(layered, key.clone());
    let floors = [
        Load::post(common::floor(Floor::Replay), key.clone()),
        Load::post(common::floor(Floor::HashedReplay), key),
    ];
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
    (bare, layered, executions, floors)
}

fn bench(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let (bare, layered, executions, [floor, hashed_floor]) = loads(rt);
    let mut group = c.benchmark_group("memory_replay");
    group.bench_function("baseline", |b| {
        b.iter_custom(|iters| common::drive(rt, &bare, 1, iters));
    });
    group.bench_function("layered", |b| {
        b.iter_custom(|iters| common::drive(rt, &layered, 1, iters));
    });
    group.bench_function("floor", |b| {
        b.iter_custom(|iters| common::drive(rt, &floor, 1, iters));
    });
    group.bench_function("hashed_floor", |b| {
        b.iter_custom(|iters| common::drive(rt, &hashed_floor, 1, iters));
    });
    group.finish();
    assert_eq!(executions.total(), 1, "the handler ran once, replays since");
}

fn main() {
    let since = SystemTime::now();
    let rt = common::runtime();
    let (bare, layered, _, [floor, hashed_floor]) = loads(&rt);
    let profiled = [
        ("baseline", &bare),
        ("layered", &layered),
        ("floor", &floor),
        ("hashed_floor", &hashed_floor),
    ];
    if common::profile(&rt, &profiled) {
        return;
    }
    let mut c = common::criterion();
    bench(&mut c, &rt);
    let pair = |id: &str, load: &Load| common::paired(&rt, id, since, &bare, || load.clone());
    common::report(
        "memory_replay",
        since,
        &[
            Ratio::time(
                "replay, MemoryStore",
                "memory_replay/layered",
                "memory_replay/baseline",
                Target::AtMost(0.25),
            )
            .with_paired(pair("memory_replay/layered", &layered)),
            Ratio::time(
                "  floor: a layer answering from memory, no hashing, no store",
                "memory_replay/floor",
                "memory_replay/baseline",
                Target::None,
            )
            .with_paired(pair("memory_replay/floor", &floor)),
            Ratio::time(
                "  floor with the SHA-256s of SPEC §2.4 and §5 (body read, key and fingerprint)",
                "memory_replay/hashed_floor",
                "memory_replay/baseline",
                Target::None,
            )
            .with_paired(pair("memory_replay/hashed_floor", &hashed_floor)),
        ],
    );
}
