//! The layer over `RedisStore` against the raw `redis` client doing the same round trips, on
//! the local server (`REDIS_URL`, default `redis://127.0.0.1:6379`), at 1, 8 and 64 concurrent
//! tasks:
//!
//! - first execution: the layered router with a fresh key per request (claim, handler, record:
//!   two round trips) against `SET NX PX` + `SET PX` of a record of the same size;
//! - replay: the layered router with a completed key (one round trip) against `GET`.
//!
//! Before timing, a counting connection checks that the layer makes exactly those round trips.
//! Every key lives under a random prefix of this run and expires by itself; nothing is flushed.
//! Without a reachable server the benchmark says so in one line and does nothing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{Key, Load, Ratio, Target};
use criterion::{BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, StatusCode};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::runtime::Runtime;
use tower_idempotency::fingerprint::Fingerprint;
use tower_idempotency::record::{Record, StoredResponse};
use tower_idempotency::store::{Begin, OwnerToken, RedisStore, Store, StoreKey};

const CONCURRENCY: [u64; 3] = [1, 8, 64];

/// A connection that counts the round trips made through it.
#[derive(Clone)]
struct Counting {
    inner: MultiplexedConnection,
    round_trips: Arc<AtomicU64>,
}

impl ConnectionLike for Counting {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.inner.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// Round trips per first execution and per replay, through the layer.
fn round_trips(rt: &Runtime, connection: &MultiplexedConnection) -> (f64, f64) {
    const N: u64 = 200;
    let counter = Arc::new(AtomicU64::new(0));
    let counting = Counting {
        inner: connection.clone(),
        round_trips: Arc::clone(&counter),
    };
    let store = RedisStore::new(counting, common::REDIS_TTL)
        .with_prefix(format!("bench:{}:", common::fresh_prefix()));
    let (router, _) = common::layered(store, 1);
    // Loads the scripts, so that the counts below are the steady state.
    common::drive(
        rt,
        &Load::post(router.clone(), Key::Fresh(common::fresh_prefix())),
        1,
        1,
    );
    counter.store(0, Ordering::Relaxed);
    common::drive(
        rt,
        &Load::post(router.clone(), Key::Fresh(common::fresh_prefix())),
        1,
        N,
    );
    let first = counter.swap(0, Ordering::Relaxed) as f64 / N as f64;
    let replay = Load::post(router, Key::Fixed(HeaderValue::from_static("replayed")));
    common::drive(rt, &replay, 1, 1);
    counter.store(0, Ordering::Relaxed);
    common::drive(rt, &replay, 1, N);
    let replays = counter.load(Ordering::Relaxed) as f64 / N as f64;
    (first, replays)
}

/// A record of the baseline's response, as the layer stores it.
fn record() -> Bytes {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let response = StoredResponse::new(StatusCode::CREATED, headers, common::order(0), None);
    Record::new(Some(Fingerprint::sha256(b"request")), &response)
        .as_bytes()
        .clone()
}

/// The raw client's first execution: claim with `SET NX PX`, then store with `SET PX`.
async fn raw_first(mut connection: MultiplexedConnection, key: String, record: Bytes) {
    let claimed: Value = redis::cmd("SET")
        .arg(&key)
        .arg(&record[..18])
        .arg("NX")
        .arg("PX")
        .arg(30_000)
        .query_async(&mut connection)
        .await
        .expect("SET NX");
    assert!(matches!(claimed, Value::Okay), "{claimed:?}");
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(&record[..])
        .arg("PX")
        .arg(common::REDIS_TTL.as_millis() as u64)
        .query_async(&mut connection)
        .await
        .expect("SET");
}

/// `n` raw first executions from `tasks` tasks, under a prefix of their own; the wall time.
fn raw_firsts(
    rt: &Runtime,
    connection: &MultiplexedConnection,
    record: &Bytes,
    tasks: u64,
    n: u64,
) -> Duration {
    let prefix = format!("bench:{}:", common::fresh_prefix());
    let (connection, record) = (connection.clone(), record.clone());
    common::drive_fn(rt, tasks, n, move |i| {
        raw_first(connection.clone(), format!("{prefix}{i}"), record.clone())
    })
}

/// Stores `record` under a key of its own for the raw client's replays; the key.
fn raw_stored(rt: &Runtime, connection: &MultiplexedConnection, record: &Bytes) -> String {
    let key = format!("bench:{}:replayed", common::fresh_prefix());
    let set_up = (connection.clone(), key.clone(), record.clone());
    common::on_runtime(rt, async move {
        let (mut connection, key, record) = set_up;
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(&record[..])
            .arg("PX")
            .arg(600_000)
            .query_async(&mut connection)
            .await
            .expect("SET");
    });
    key
}

/// `n` raw replays (`GET key`) from `tasks` tasks; the wall time.
fn raw_replays(
    rt: &Runtime,
    connection: &MultiplexedConnection,
    key: &str,
    tasks: u64,
    n: u64,
) -> Duration {
    let (connection, key) = (connection.clone(), key.to_owned());
    common::drive_fn(rt, tasks, n, move |_| {
        let (mut connection, key) = (connection.clone(), key.clone());
        async move {
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .expect("GET");
            assert!(value.is_some());
        }
    })
}

/// The store alone, as the layer drives it, without HTTP: `begin` + `complete` for a first
/// execution, `begin` on a completed key for a replay.
async fn store_calls(
    store: Arc<RedisStore<MultiplexedConnection>>,
    key: String,
    record: Record,
    replay: bool,
) {
    let key = StoreKey::new(None, &key);
    let token = OwnerToken::generate();
    let lease = Duration::from_secs(30);
    let fingerprint = record.fingerprint().copied();
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

fn bench(c: &mut Criterion, rt: &Runtime, connection: &MultiplexedConnection) {
    let record = record();
    let stored = Record::from_bytes(record.clone()).expect("a record");

    let mut group = c.benchmark_group("redis_first");
    group.throughput(Throughput::Elements(1));
    for tasks in CONCURRENCY {
        group.bench_with_input(BenchmarkId::new("layered", tasks), &tasks, |b, &tasks| {
            let (router, _) = common::layered(common::redis_store(connection), 1);
            let load = Load::post(router, Key::Fresh(common::fresh_prefix()));
            b.iter_custom(|iters| common::drive(rt, &load, tasks, iters));
        });
        group.bench_with_input(BenchmarkId::new("raw", tasks), &tasks, |b, &tasks| {
            b.iter_custom(|iters| raw_firsts(rt, connection, &record, tasks, iters));
        });
        group.bench_with_input(BenchmarkId::new("store", tasks), &tasks, |b, &tasks| {
            let store = Arc::new(common::redis_store(connection));
            let prefix = common::fresh_prefix();
            b.iter_custom(|iters| {
                let (store, prefix, stored) = (Arc::clone(&store), prefix.clone(), stored.clone());
                common::drive_fn(rt, tasks, iters, move |n| {
                    store_calls(
                        Arc::clone(&store),
                        format!("{prefix}-{n}"),
                        stored.clone(),
                        false,
                    )
                })
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("redis_replay");
    group.throughput(Throughput::Elements(1));
    for tasks in CONCURRENCY {
        group.bench_with_input(BenchmarkId::new("layered", tasks), &tasks, |b, &tasks| {
            let (router, executions) = common::layered(common::redis_store(connection), 1);
            let load = Load::post(router, Key::Fixed(HeaderValue::from_static("replayed")));
            common::drive(rt, &load, 1, 1);
            b.iter_custom(|iters| common::drive(rt, &load, tasks, iters));
            assert_eq!(executions.total(), 1, "one execution, replays since");
        });
        group.bench_with_input(BenchmarkId::new("raw", tasks), &tasks, |b, &tasks| {
            let key = raw_stored(rt, connection, &record);
            b.iter_custom(|iters| raw_replays(rt, connection, &key, tasks, iters));
        });
        group.bench_with_input(BenchmarkId::new("store", tasks), &tasks, |b, &tasks| {
            let store = Arc::new(common::redis_store(connection));
            let set_up = (Arc::clone(&store), stored.clone());
            common::on_runtime(
                rt,
                store_calls(set_up.0, "replayed".to_owned(), set_up.1, false),
            );
            b.iter_custom(|iters| {
                let (store, stored) = (Arc::clone(&store), stored.clone());
                common::drive_fn(rt, tasks, iters, move |_| {
                    store_calls(
                        Arc::clone(&store),
                        "replayed".to_owned(),
                        stored.clone(),
                        true,
                    )
                })
            });
        });
    }
    group.finish();
}

/// The layered and raw batches of one row, for [`common::paired_batches`]: fresh keys for every
/// batch of first executions, the completed key for replays.
fn paired(
    rt: &Runtime,
    connection: &MultiplexedConnection,
    since: SystemTime,
    group: &str,
    tasks: u64,
) -> Option<common::Paired> {
    let record = record();
    let id = format!("{group}/layered/{tasks}");
    let (router, _) = common::layered(common::redis_store(connection), 1);
    if group == "redis_first" {
        let load = Load::post(router, Key::Absent);
        let raw = |n| raw_firsts(rt, connection, &record, tasks, n);
        let layered = |n| common::drive(rt, &load.fresh(), tasks, n);
        return common::paired_batches(&id, since, common::Kind::Throughput, raw, layered);
    }
    let load = Load::post(router, Key::Fixed(HeaderValue::from_static("replayed")));
    common::drive(rt, &load, 1, 1);
    let key = raw_stored(rt, connection, &record);
    let raw = |n| raw_replays(rt, connection, &key, tasks, n);
    let layered = |n| common::drive(rt, &load, tasks, n);
    common::paired_batches(&id, since, common::Kind::Throughput, raw, layered)
}

/// The layer on a connection with Nagle's algorithm on (the `redis` crate's default), at 8 and 64
/// tasks: the baseline of the NODELAY rows.
fn bench_nagle(c: &mut Criterion, rt: &Runtime, nagle: &MultiplexedConnection) {
    let mut group = c.benchmark_group("redis_nagle");
    group.throughput(Throughput::Elements(1));
    for tasks in [8, 64] {
        group.bench_with_input(BenchmarkId::new("first", tasks), &tasks, |b, &tasks| {
            let (router, _) = common::layered(common::redis_store(nagle), 1);
            let load = Load::post(router, Key::Fresh(common::fresh_prefix()));
            b.iter_custom(|iters| common::drive(rt, &load, tasks, iters));
        });
        group.bench_with_input(BenchmarkId::new("replay", tasks), &tasks, |b, &tasks| {
            let (router, _) = common::layered(common::redis_store(nagle), 1);
            let load = Load::post(router, Key::Fixed(HeaderValue::from_static("replayed")));
            common::drive(rt, &load, 1, 1);
            b.iter_custom(|iters| common::drive(rt, &load, tasks, iters));
        });
    }
    group.finish();
}

/// The layer on the NODELAY connection against the layer on the Nagle one, in pairs.
fn paired_nagle(
    rt: &Runtime,
    connection: &MultiplexedConnection,
    nagle: &MultiplexedConnection,
    since: SystemTime,
    group: &str,
    tasks: u64,
) -> Option<common::Paired> {
    let id = format!("{group}/layered/{tasks}");
    let load = |connection| {
        let (router, _) = common::layered(common::redis_store(connection), 1);
        if group == "redis_first" {
            return Load::post(router, Key::Absent);
        }
        let load = Load::post(router, Key::Fixed(HeaderValue::from_static("replayed")));
        common::drive(rt, &load, 1, 1);
        load
    };
    let (fast, slow) = (load(connection), load(nagle));
    let first = group == "redis_first";
    let run = |load: &Load, n| {
        if first {
            common::drive(rt, &load.fresh(), tasks, n)
        } else {
            common::drive(rt, load, tasks, n)
        }
    };
    common::paired_batches(
        &id,
        since,
        common::Kind::Throughput,
        |n| run(&slow, n),
        |n| run(&fast, n),
    )
}

/// First executions through the store alone, as `n` requests on `tasks` tasks.
fn store_firsts(
    rt: &Runtime,
    store: &Arc<RedisStore<MultiplexedConnection>>,
    tasks: u64,
    n: u64,
) -> Duration {
    let (store, prefix) = (Arc::clone(store), common::fresh_prefix());
    let stored = Record::from_bytes(record()).expect("a record");
    common::drive_fn(rt, tasks, n, move |i| {
        store_calls(
            Arc::clone(&store),
            format!("{prefix}-{i}"),
            stored.clone(),
            false,
        )
    })
}

/// The store's first executions with `complete` as the Lua script (fenced commands off).
fn bench_scripted(c: &mut Criterion, rt: &Runtime, connection: &MultiplexedConnection) {
    let mut group = c.benchmark_group("redis_scripted");
    group.throughput(Throughput::Elements(1));
    for tasks in [8, 64] {
        group.bench_with_input(BenchmarkId::new("store", tasks), &tasks, |b, &tasks| {
            let store = Arc::new(common::redis_store(connection).with_fenced_commands(false));
            b.iter_custom(|iters| store_firsts(rt, &store, tasks, iters));
        });
    }
    group.finish();
}

/// Fenced `complete` against the script, in pairs, through the store alone.
fn paired_scripted(
    rt: &Runtime,
    connection: &MultiplexedConnection,
    since: SystemTime,
    tasks: u64,
) -> Option<common::Paired> {
    let fenced = Arc::new(common::redis_store(connection));
    let scripted = Arc::new(common::redis_store(connection).with_fenced_commands(false));
    common::paired_batches(
        &format!("redis_first/store/{tasks}"),
        since,
        common::Kind::Throughput,
        |n| store_firsts(rt, &scripted, tasks, n),
        |n| store_firsts(rt, &fenced, tasks, n),
    )
}

fn main() {
    let since = SystemTime::now();
    let rt = common::runtime();
    let Some(connection) = common::redis_connection(&rt, true) else {
        return;
    };
    let nagle = common::redis_connection(&rt, false).expect("a second connection");
    let (first_trips, replay_trips) = round_trips(&rt, &connection);
    let mut c = common::criterion();
    bench(&mut c, &rt, &connection);
    bench_nagle(&mut c, &rt, &nagle);
    // Where the server has `SET … IFEQ` (Valkey 8.1+, Redis 8.4+): the store's calls with the
    // fenced `complete` against the same calls with the Lua script.
    let fenced = common::on_runtime(&rt, {
        let store = common::redis_store(&connection);
        async move { store.check_config().await.is_ok_and(|r| r.fenced_complete) }
    });
    if fenced {
        bench_scripted(&mut c, &rt, &connection);
    }
    let mut ratios = Vec::new();
    for (question, group) in [
        ("first execution", "redis_first"),
        ("replay", "redis_replay"),
    ] {
        for tasks in CONCURRENCY {
            let label = match (question, tasks) {
                ("first execution", 1) => "first execution, Redis, 1 task (throughput vs raw)",
                ("first execution", 8) => "first execution, Redis, 8 tasks (throughput vs raw)",
                ("first execution", _) => "first execution, Redis, 64 tasks (throughput vs raw)",
                (_, 1) => "replay, Redis, 1 task (throughput vs raw)",
                (_, 8) => "replay, Redis, 8 tasks (throughput vs raw)",
                _ => "replay, Redis, 64 tasks (throughput vs raw)",
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
                .with_paired(paired(&rt, &connection, since, group, tasks)),
            );
            ratios.push(Ratio::throughput(
                "  the store's calls alone, no HTTP (throughput vs raw)",
                &format!("{group}/store/{tasks}"),
                &format!("{group}/raw/{tasks}"),
                Target::None,
            ));
        }
    }
    // TCP_NODELAY, paired: the layer on the connection the docs advise against the layer on the
    // driver's default connection, in the same run.
    for (group, tasks, label) in [
        (
            "redis_first",
            8,
            "first execution, 8 tasks: NODELAY / Nagle (throughput)",
        ),
        (
            "redis_first",
            64,
            "first execution, 64 tasks: NODELAY / Nagle (throughput)",
        ),
        (
            "redis_replay",
            8,
            "replay, 8 tasks: NODELAY / Nagle (throughput)",
        ),
        (
            "redis_replay",
            64,
            "replay, 64 tasks: NODELAY / Nagle (throughput)",
        ),
    ] {
        let what = group.trim_start_matches("redis_");
        ratios.push(
            Ratio::throughput(
                label,
                &format!("{group}/layered/{tasks}"),
                &format!("redis_nagle/{what}/{tasks}"),
                Target::None,
            )
            .with_paired(paired_nagle(&rt, &connection, &nagle, since, group, tasks)),
        );
    }
    if fenced {
        for (tasks, label) in [
            (
                8,
                "store calls, first execution, 8 tasks: fenced / scripted (throughput)",
            ),
            (
                64,
                "store calls, first execution, 64 tasks: fenced / scripted (throughput)",
            ),
        ] {
            ratios.push(
                Ratio::throughput(
                    label,
                    &format!("redis_first/store/{tasks}"),
                    &format!("redis_scripted/store/{tasks}"),
                    Target::None,
                )
                .with_paired(paired_scripted(&rt, &connection, since, tasks)),
            );
        }
    }
    common::report("redis", since, &ratios);
    if common::benchmarking() {
        let met = |n: f64, want: f64| if n == want { "yes" } else { "**no**" };
        common::publish(
            "redis_round_trips",
            &format!(
                "\nredis round trips per request (counted on the connection)\n\n| request | round trips | target | met |\n| --- | ---: | ---: | --- |\n| first execution | {first_trips:.2} | 2 | {} |\n| replay | {replay_trips:.2} | 1 | {} |\n",
                met(first_trips, 2.0),
                met(replay_trips, 1.0)
            ),
        );
    }
}
