//! What the layer costs when it does nothing (passthrough): a `GET` (not a covered method) and a
//! `POST` without an `Idempotency-Key`, each against the same request to the bare router.
//!
//! The same requests also go through a layer that does nothing at all (an identity
//! `MapRequestLayer`): what any tower layer costs in an axum `Router` (a boxed service clone and
//! a boxed future per request), which no code in this crate can save. The "vs identity" rows
//! pair the layer with that identity layer directly, in the same run: the layer's own cost.
//!
//! Targets (issue 12): passthrough ≤ 1.02× the bare router, and within 0.01 of the identity
//! layer (≤ 1.01× its time).

mod common;

use std::time::SystemTime;

use axum::body::Body;
use axum::http::Request;
use common::{Key, Load, Ratio, Target};
use criterion::Criterion;
use tower::util::MapRequestLayer;
use tower_idempotency::store::MemoryStore;

fn loads() -> [(&'static str, Load); 6] {
    let (bare, _) = common::baseline(1);
    let (layered, _) = common::layered(MemoryStore::new(), 1);
    let identity = bare
        .clone()
        .layer(MapRequestLayer::new(|req: Request<Body>| req));
    [
        ("baseline_post", Load::post(bare.clone(), Key::Absent)),
        ("post_no_key", Load::post(layered.clone(), Key::Absent)),
        ("identity_post", Load::post(identity.clone(), Key::Absent)),
        ("baseline_get", Load::get(bare)),
        ("get", Load::get(layered)),
        ("identity_get", Load::get(identity)),
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
    let load = |name: &str| &loads.iter().find(|(n, _)| *n == name).expect("a load").1;
    // One row: `overhead/<variant>` against `overhead/<baseline>`, by criterion and in pairs.
    let row = |label: &str, variant: &str, baseline: &str, target| {
        let id = format!("overhead/{variant}");
        let paired = common::paired(&rt, &id, since, load(baseline), || load(variant).clone());
        Ratio::time(label, &id, &format!("overhead/{baseline}"), target).with_paired(paired)
    };
    let (bypass, own) = (Target::AtMost(1.02), Target::AtMost(1.01));
    common::report(
        "overhead",
        since,
        &[
            row("POST without a key", "post_no_key", "baseline_post", bypass),
            row(
                "  an identity layer, POST (the floor of any layer)",
                "identity_post",
                "baseline_post",
                Target::None,
            ),
            row(
                "POST without a key vs identity (the layer's own cost)",
                "post_no_key",
                "identity_post",
                own,
            ),
            Ratio::added(
                "GET (not a covered method): added to the baseline request",
                "overhead/get",
                "overhead/baseline_get",
                "overhead/baseline_post",
                Target::None,
            ),
            row("GET against the bare GET", "get", "baseline_get", bypass),
            row(
                "  an identity layer, GET (the floor of any layer)",
                "identity_get",
                "baseline_get",
                Target::None,
            ),
            row(
                "GET vs identity (the layer's own cost)",
                "get",
                "identity_get",
                own,
            ),
        ],
    );
}
