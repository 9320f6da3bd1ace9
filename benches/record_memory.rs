//! Memory per stored record: the bytes the `MemoryStore` holds for each completed request
//! (the encoded record, the entry, its hash-table slot and its eviction-queue item), measured
//! with a counting global allocator over N first executions through the layer, against the
//! target of body + headers + 256 bytes.
//!
//! Not a timing: it prints one table and exits.

mod common;

use std::alloc::System;

use common::{Key, Load};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower_idempotency::store::MemoryStore;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes held now, as the allocator counts them (requested sizes, not malloc's own
/// per-chunk overhead). A `realloc` is counted in the allocated or deallocated bytes already.
fn held(region: &Region<'_, System>) -> i128 {
    let c = region.change();
    c.bytes_allocated as i128 - c.bytes_deallocated as i128
}

/// Net bytes held after `n` first executions on a fresh store, per execution.
fn per_record(rt: &tokio::runtime::Runtime, n: u64) -> f64 {
    let region = Region::new(GLOBAL);
    let store = MemoryStore::builder()
        .max_entries(usize::MAX)
        .max_bytes(usize::MAX)
        .build();
    let (router, executions) = common::layered(store, 1);
    let load = Load::post(router, Key::Fresh(common::fresh_prefix()));
    let before = held(&region);
    common::drive(rt, &load, 1, n);
    let after = held(&region);
    assert_eq!(executions.total(), n);
    drop(load);
    (after - before) as f64 / n as f64
}

fn main() {
    let rt = common::runtime();
    if !common::benchmarking() {
        per_record(&rt, 100);
        return;
    }
    // What a record of the baseline's response must hold: its body and its stored headers.
    let (status, headers, body) = common::on_runtime(&rt, async {
        Load::post(common::baseline(1).0, Key::Absent).send(0).await
    });
    assert_eq!(status, 201);
    // The headers a record keeps: all but the ones never replayed (`content-length` here).
    let skipped = tower_idempotency::policy::default_skipped_headers();
    let header_bytes: usize = headers
        .iter()
        .filter(|(n, _)| !skipped.contains(n))
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    let limit = (body.len() + header_bytes + 256) as f64;
    // Warm the runtime's and the allocator's pools on a store that is then dropped.
    per_record(&rt, 10_000);
    let mut table = format!(
        "\nrecord memory (load average {})\n\n| records | bytes per record | target (body {} + headers {} + 256) | ratio | met |\n| ---: | ---: | ---: | ---: | --- |\n",
        common::load_average(),
        body.len(),
        header_bytes
    );
    for n in [1_000, 10_000, 100_000] {
        let bytes = per_record(&rt, n);
        let ratio = bytes / limit;
        let met = if ratio <= 1.0 { "yes" } else { "**no**" };
        table.push_str(&format!(
            "| {n} | {bytes:.0} | {limit:.0} | {ratio:.3} | {met} |\n"
        ));
    }
    common::publish("record_memory", &table);
}
