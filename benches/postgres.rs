//! The layer over `PostgresStore` against raw sqlx doing the same round trips on the same
//! table, on the server of `DATABASE_URL`, at 1 and 8 concurrent tasks (a pool of 8
//! connections):
//!
//! - first execution: the layered router with a fresh key per request (claim, handler, record:
//!   two statements) against a plain `INSERT` of the claim and an `UPDATE` that stores a record
//!   of the same size;
//! - replay: the layered router with a completed key (one statement) against a `SELECT` of the
//!   record.
//!
//! The `store` rows are the store's own calls without HTTP. The tables live in a schema-less
//! table of this run (`bench_<random>`), dropped at the end. Without `DATABASE_URL` (or a
//! reachable server) the benchmark says so in one line and does nothing.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::remote::{self, Layered, Request};
use common::{Ratio, Target};
use criterion::{BenchmarkId, Criterion, Throughput};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::runtime::Runtime;
use tower_idempotency::store::{OwnerToken, PostgresStore, StoreKey};

const CONCURRENCY: [u64; 2] = [1, 8];
const TTL: Duration = Duration::from_secs(600);
const LEASE_US: i64 = 30_000_000;

/// A pool of 8 connections to `DATABASE_URL`, or `None` after printing why the benchmarks are
/// skipped.
fn connect(rt: &Runtime) -> Option<PgPool> {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        println!("postgres benchmarks skipped: DATABASE_URL is not set");
        return None;
    };
    let connect = async move {
        let options = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(8)
            .acquire_timeout(Duration::from_secs(5));
        tokio::time::timeout(Duration::from_secs(5), options.connect(&url))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())
    };
    match common::on_runtime(rt, connect) {
        Ok(pool) => Some(pool),
        Err(e) => {
            println!("postgres benchmarks skipped: cannot connect to DATABASE_URL: {e}");
            None
        }
    }
}

/// A store in `table` (created by the first call).
fn store(rt: &Runtime, pool: &PgPool, table: &str) -> PostgresStore {
    let store = PostgresStore::builder(pool.clone())
        .table(table)
        .ttl(TTL)
        .build()
        .expect("a valid configuration");
    let migrate = store.clone();
    common::on_runtime(rt, async move { migrate.migrate().await.expect("migrate") });
    store
}

/// The raw statements: what a hand-written idempotency table does with sqlx.
struct Raw {
    claim: String,
    complete: String,
    replay: String,
}

impl Raw {
    fn new(table: &str) -> Self {
        Self {
            claim: format!(
                "INSERT INTO \"{table}\" (key, state, token, fingerprint, lease_until, expires_at) \
                 VALUES ($1, 'claimed', $2, $3, now() + $4 * interval '1 microsecond', \
                 now() + $4 * interval '1 microsecond')"
            ),
            complete: format!(
                "UPDATE \"{table}\" SET state = 'completed', record = $3, \
                 expires_at = now() + $4 * interval '1 microsecond' \
                 WHERE key = $1 AND token = $2"
            ),
            replay: format!("SELECT record FROM \"{table}\" WHERE key = $1 AND expires_at > now()"),
        }
    }
}

/// The raw first execution of key `key`: claim, then store the record.
async fn raw_first(pool: PgPool, raw: Arc<Raw>, key: String, record: Bytes) {
    let key = StoreKey::new(None, &key);
    let token = OwnerToken::generate().to_bytes();
    sqlx::query(&raw.claim)
        .bind(&key.digest()[..])
        .bind(&token[..])
        .bind(&[7u8; 32][..])
        .bind(LEASE_US)
        .execute(&pool)
        .await
        .expect("claim");
    let done = sqlx::query(&raw.complete)
        .bind(&key.digest()[..])
        .bind(&token[..])
        .bind(&record[..])
        .bind(TTL.as_micros() as i64)
        .execute(&pool)
        .await
        .expect("complete");
    assert_eq!(done.rows_affected(), 1);
}

fn raw_firsts(
    rt: &Runtime,
    pool: &PgPool,
    raw: &Arc<Raw>,
    record: &Bytes,
    tasks: u64,
    n: u64,
) -> Duration {
    let prefix = common::fresh_prefix();
    let (pool, raw, record) = (pool.clone(), Arc::clone(raw), record.clone());
    common::drive_fn(rt, tasks, n, move |i| {
        raw_first(
            pool.clone(),
            Arc::clone(&raw),
            format!("raw-{prefix}-{i}"),
            record.clone(),
        )
    })
}

fn raw_replays(
    rt: &Runtime,
    pool: &PgPool,
    raw: &Arc<Raw>,
    key: &str,
    tasks: u64,
    n: u64,
) -> Duration {
    let digest = StoreKey::new(None, key).digest().to_vec();
    let (pool, raw) = (pool.clone(), Arc::clone(raw));
    common::drive_fn(rt, tasks, n, move |_| {
        let (pool, raw, digest) = (pool.clone(), Arc::clone(&raw), digest.clone());
        async move {
            let record: Option<Vec<u8>> = sqlx::query_scalar(&raw.replay)
                .bind(&digest[..])
                .fetch_one(&pool)
                .await
                .expect("replay");
            assert!(record.is_some());
        }
    })
}

fn bench(c: &mut Criterion, rt: &Runtime, pool: &PgPool, store: &PostgresStore, raw: &Arc<Raw>) {
    let record = remote::record().as_bytes().clone();
    let shared = Arc::new(store.clone());
    for request in [Request::First, Request::Replay] {
        let mut group = c.benchmark_group(request.group("postgres"));
        group.throughput(Throughput::Elements(1));
        for tasks in CONCURRENCY {
            group.bench_with_input(BenchmarkId::new("layered", tasks), &tasks, |b, &tasks| {
                let layered = Layered::new(rt, common::layered(store.clone(), 1), request);
                b.iter_custom(|iters| layered.run(rt, tasks, iters));
            });
            group.bench_with_input(BenchmarkId::new("raw", tasks), &tasks, |b, &tasks| {
                b.iter_custom(|iters| raw_batch(rt, pool, raw, &record, request, tasks, iters));
            });
            group.bench_with_input(BenchmarkId::new("store", tasks), &tasks, |b, &tasks| {
                b.iter_custom(|iters| remote::store_batch(rt, &shared, request, tasks, iters));
            });
        }
        group.finish();
    }
}

/// `n` raw requests of `request` from `tasks` tasks; the wall time.
fn raw_batch(
    rt: &Runtime,
    pool: &PgPool,
    raw: &Arc<Raw>,
    record: &Bytes,
    request: Request,
    tasks: u64,
    n: u64,
) -> Duration {
    match request {
        Request::First => raw_firsts(rt, pool, raw, record, tasks, n),
        Request::Replay => raw_replays(rt, pool, raw, remote::REPLAYED, tasks, n),
    }
}

fn main() {
    let since = SystemTime::now();
    let rt = common::runtime();
    let Some(pool) = connect(&rt) else {
        return;
    };
    let table = format!("bench_{}", OwnerToken::generate());
    let store = store(&rt, &pool, &table);
    let raw = Arc::new(Raw::new(&table));
    // The completed key every replay reads (the layer's, the store's and raw's): the layer's,
    // with the baseline's response.
    Layered::new(&rt, common::layered(store.clone(), 1), Request::Replay);
    let mut c = common::criterion();
    bench(&mut c, &rt, &pool, &store, &raw);
    let record = remote::record().as_bytes().clone();
    let mut ratios = Vec::new();
    for request in [Request::First, Request::Replay] {
        let group = request.group("postgres");
        for tasks in CONCURRENCY {
            let target = if tasks == 1 {
                Target::None
            } else {
                Target::AtLeast(0.85)
            };
            let id = format!("{group}/layered/{tasks}");
            let layered = Layered::new(&rt, common::layered(store.clone(), 1), request);
            let paired = remote::paired_with_raw(&rt, &id, since, &layered, tasks, |n| {
                raw_batch(&rt, &pool, &raw, &record, request, tasks, n)
            });
            ratios.push(
                Ratio::throughput(
                    format!("{} (throughput vs raw)", request.label("PostgreSQL", tasks)),
                    &id,
                    &format!("{group}/raw/{tasks}"),
                    target,
                )
                .with_paired(paired),
            );
            ratios.push(Ratio::throughput(
                "  the store's calls alone, no HTTP (throughput vs raw)",
                &format!("{group}/store/{tasks}"),
                &format!("{group}/raw/{tasks}"),
                Target::None,
            ));
        }
    }
    common::report("postgres", since, &ratios);
    let drop_table = format!("DROP TABLE IF EXISTS \"{table}\"");
    common::on_runtime(&rt, async move {
        let _ = sqlx::query(&drop_table).execute(&pool).await;
    });
}
