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
use common::{Key, Load, Ratio, Target};
use criterion::{BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, StatusCode};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::runtime::Runtime;
use tower_idempotency::fingerprint::Fingerprint;
use tower_idempotency::record::Record;
use tower_idempotency::record::StoredResponse;
use tower_idempotency::store::{Begin, OwnerToken, PostgresStore, Store, StoreKey};

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

/// A record of the baseline's response, as the layer stores it.
fn record() -> Record {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let response = StoredResponse::new(StatusCode::CREATED, headers, common::order(0), None);
    Record::new(Some(Fingerprint::sha256(b"request")), &response)
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

/// The store alone, as the layer drives it: `begin` + `complete` for a first execution,
/// `begin` on a completed key for a replay.
async fn store_calls(store: PostgresStore, key: String, record: Record, replay: bool) {
    let key = StoreKey::new(None, &key);
    let token = OwnerToken::generate();
    let fingerprint = record.fingerprint().copied();
    let lease = Duration::from_secs(30);
    match store
        .begin(&key, fingerprint.as_ref(), token, lease)
        .await
        .expect("begin")
    {
        Begin::New if !replay => store
            .complete(&key, token, &record)
            .await
            .expect("complete"),
        Begin::Completed(_) if replay => {}
        other => panic!("unexpected {other:?}"),
    }
}

fn bench(c: &mut Criterion, rt: &Runtime, pool: &PgPool, store: &PostgresStore, raw: &Arc<Raw>) {
    let stored = record();
    let record = stored.as_bytes().clone();

    let mut group = c.benchmark_group("postgres_first");
    group.throughput(Throughput::Elements(1));
    for tasks in CONCURRENCY {
        group.bench_with_input(BenchmarkId::new("layered", tasks), &tasks, |b, &tasks| {
            let (router, _) = common::layered(store.clone(), 1);
            let load = Load::post(router, Key::Fresh(common::fresh_prefix()));
            b.iter_custom(|iters| common::drive(rt, &load.fresh(), tasks, iters));
        });
        group.bench_with_input(BenchmarkId::new("raw", tasks), &tasks, |b, &tasks| {
            b.iter_custom(|iters| raw_firsts(rt, pool, raw, &record, tasks, iters));
        });
        group.bench_with_input(BenchmarkId::new("store", tasks), &tasks, |b, &tasks| {
            b.iter_custom(|iters| {
                let (store, prefix, stored) =
                    (store.clone(), common::fresh_prefix(), stored.clone());
                common::drive_fn(rt, tasks, iters, move |n| {
                    store_calls(
                        store.clone(),
                        format!("store-{prefix}-{n}"),
                        stored.clone(),
                        false,
                    )
                })
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("postgres_replay");
    group.throughput(Throughput::Elements(1));
    for tasks in CONCURRENCY {
        group.bench_with_input(BenchmarkId::new("layered", tasks), &tasks, |b, &tasks| {
            let (router, executions) = common::layered(store.clone(), 1);
            let load = Load::post(router, Key::Fixed(HeaderValue::from_static("replayed")));
            common::drive(rt, &load, 1, 1);
            b.iter_custom(|iters| common::drive(rt, &load, tasks, iters));
            assert!(executions.total() <= 1, "one execution, replays since");
        });
        group.bench_with_input(BenchmarkId::new("raw", tasks), &tasks, |b, &tasks| {
            b.iter_custom(|iters| raw_replays(rt, pool, raw, "replayed", tasks, iters));
        });
        group.bench_with_input(BenchmarkId::new("store", tasks), &tasks, |b, &tasks| {
            b.iter_custom(|iters| {
                let (store, stored) = (store.clone(), stored.clone());
                common::drive_fn(rt, tasks, iters, move |_| {
                    store_calls(store.clone(), "replayed".to_owned(), stored.clone(), true)
                })
            });
        });
    }
    group.finish();
}

/// The layered and raw batches of one row, measured in pairs.
fn paired(
    rt: &Runtime,
    pool: &PgPool,
    store: &PostgresStore,
    raw: &Arc<Raw>,
    since: SystemTime,
    group: &str,
    tasks: u64,
) -> Option<common::Paired> {
    let record = record().as_bytes().clone();
    let id = format!("{group}/layered/{tasks}");
    let (router, _) = common::layered(store.clone(), 1);
    if group == "postgres_first" {
        let load = Load::post(router, Key::Absent);
        let raw = |n| raw_firsts(rt, pool, raw, &record, tasks, n);
        let layered = |n| common::drive(rt, &load.fresh(), tasks, n);
        return common::paired_batches(&id, since, common::Kind::Throughput, raw, layered);
    }
    let load = Load::post(router, Key::Fixed(HeaderValue::from_static("replayed")));
    let raw = |n| raw_replays(rt, pool, raw, "replayed", tasks, n);
    let layered = |n| common::drive(rt, &load, tasks, n);
    common::paired_batches(&id, since, common::Kind::Throughput, raw, layered)
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
    // The completed key both replays read: the layer's, with the baseline's response.
    let (router, _) = common::layered(store.clone(), 1);
    common::drive(
        &rt,
        &Load::post(router, Key::Fixed(HeaderValue::from_static("replayed"))),
        1,
        1,
    );
    let mut c = common::criterion();
    bench(&mut c, &rt, &pool, &store, &raw);
    let mut ratios = Vec::new();
    for group in ["postgres_first", "postgres_replay"] {
        for tasks in CONCURRENCY {
            let label = match (group, tasks) {
                ("postgres_first", 1) => "first execution, PostgreSQL, 1 task (throughput vs raw)",
                ("postgres_first", _) => "first execution, PostgreSQL, 8 tasks (throughput vs raw)",
                (_, 1) => "replay, PostgreSQL, 1 task (throughput vs raw)",
                _ => "replay, PostgreSQL, 8 tasks (throughput vs raw)",
            };
            let target = if tasks == 1 {
                Target::None
            } else {
                Target::AtLeast(0.85)
            };
            ratios.push(
                Ratio::throughput(
                    label,
                    &format!("{group}/layered/{tasks}"),
                    &format!("{group}/raw/{tasks}"),
                    target,
                )
                .with_paired(paired(&rt, &pool, &store, &raw, since, group, tasks)),
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
