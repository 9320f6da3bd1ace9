//! The layer's per-request parsing alone, next to the baseline request for scale: reading the
//! `Idempotency-Key` header (bare token and sf-string), scoping it into a `StoreKey` (SHA-256),
//! and the request fingerprint (SHA-256 over method, path, query, content type and body) for
//! bodies of 256 B, 64 KiB and 1 MiB.

mod common;

use std::hint::black_box;
use std::time::SystemTime;

use bytes::Bytes;
use common::{Key, Load, Ratio, Target};
use criterion::{BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tower_idempotency::fingerprint::Fingerprint;
use tower_idempotency::key::parse_key;
use tower_idempotency::store::StoreKey;

const SIZES: [(&str, usize); 3] = [("256B", 256), ("64KiB", 64 * 1024), ("1MiB", 1024 * 1024)];

fn bench(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let mut group = c.benchmark_group("parsing");
    let baseline = Load::post(common::baseline(1).0, Key::Absent);
    group.bench_function("baseline", |b| {
        b.iter_custom(|iters| common::drive(rt, &baseline, 1, iters));
    });

    let name = HeaderName::from_static(common::KEY_HEADER);
    for (id, value) in [
        ("key_bare", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ("key_sf_string", "\"8e03978e-40d5-43e8-bc93-6894a57f9324\""),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(&name, HeaderValue::from_static(value));
        group.bench_function(id, |b| {
            b.iter(|| parse_key(black_box(&headers), &name, 255));
        });
    }
    group.bench_function("store_key", |b| {
        b.iter(|| StoreKey::new(black_box(Some("tenant-7")), black_box("8e03978e-40d5")));
    });

    let (parts, ()) = Request::post("/orders?dry_run=false")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(())
        .expect("a valid request")
        .into_parts();
    for (id, len) in SIZES {
        let body = Bytes::from(vec![b'x'; len]);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("fingerprint", id), &body, |b, body| {
            b.iter(|| Fingerprint::of_request(black_box(&parts), black_box(body)));
        });
    }
    group.finish();
}

fn main() {
    let since = SystemTime::now();
    let rt = common::runtime();
    let mut c = common::criterion();
    bench(&mut c, &rt);
    let of_baseline = |label, id: &str| {
        Ratio::time(
            label,
            &format!("parsing/{id}"),
            "parsing/baseline",
            Target::None,
        )
    };
    common::report(
        "parsing",
        since,
        &[
            of_baseline("key header, bare token", "key_bare"),
            of_baseline("key header, sf-string", "key_sf_string"),
            of_baseline("scoped store key (SHA-256)", "store_key"),
            of_baseline("fingerprint, 256 B body", "fingerprint/256B"),
            of_baseline("fingerprint, 64 KiB body", "fingerprint/64KiB"),
            of_baseline("fingerprint, 1 MiB body", "fingerprint/1MiB"),
        ],
    );
}
