//! The layer over `RedisStore` against the raw `redis` client sending the same commands, and
//! against the bare handler, on the server of `REDIS_URL` (default `redis://127.0.0.1:6379`), at
//! 1, 8 and 64 concurrent tasks.
//!
//! What the layer sends (the store as its defaults have it: keys remembered longer than their
//! responses, so with tombstones `K:t`), and what "raw" therefore sends by hand, the same
//! commands in the same round trips, with values of the same sizes:
//!
//! - first execution (a fresh key per request), two round trips:
//!   1. `begin`: the pipeline `SET K <claim> NX PX <lease> GET` + `GET K:t`;
//!   2. `complete`: on Redis 7 one `EVALSHA` of a script that runs `GETRANGE K 0 17` (the owner
//!      check), `SET K <record> PX <ttl>` and `SET K:t <tombstone> PX <key ttl>`; on servers
//!      with `SET … IFEQ` (Valkey 8.1+, Redis 8.4+) the pipeline
//!      `SET K <record> IFEQ <claim> PX <ttl> GET` + `SET K:t <tombstone> PX <key ttl>`;
//! - replay (a completed key), one round trip: `begin`'s pipeline, which answers with the
//!   record (and the tombstone).
//!
//! Raw does no HTTP, no hashing and no decoding: it is the client's share of the work alone.
//! Before timing, a counting connection checks that the layer (over the stores the rows time)
//! and raw make the same round trips, of the same commands with the same keywords and arguments
//! of the same sizes: per first execution 2 round trips, of 3 commands (script) or 4
//! (`SET … IFEQ`); per replay 1 round trip of 2 commands.
//!
//! Besides raw, every layered row is also timed against the bare handler (the same axum router
//! and requests, no layer, no Redis), and a replay row with in-process coalescing off against
//! the same row with it on. Every ratio with a target is also measured in pairs
//! ([`common::paired_batches`]). Every key lives under a random prefix of this run and expires by
//! itself (records after 10 s, tombstones after 60 s); nothing is flushed. Without a reachable
//! server the benchmark says so in one line and does nothing.
//!
//! Profiling mode (see `BENCHMARKS.md`): `PROFILE_REQUESTS=n PROFILE_LOAD=<load>` sends `n`
//! requests of one load from `PROFILE_TASKS` tasks (default 1), untimed, and exits; the loads are
//! `layered_first`, `layered_replay`, `no_coalescing_replay`, `raw_first`, `raw_replay` and
//! `bare`.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::remote::{self, Layered, Request};
use common::{Executions, Ratio, Target};
use criterion::{BenchmarkId, Criterion, Throughput};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Arg, Cmd, Pipeline, RedisFuture, Script, Value};
use tokio::runtime::Runtime;
use tower_idempotency::IdempotencyLayer;
use tower_idempotency::record::Record;
use tower_idempotency::store::{OwnerToken, RedisStore};

const CONCURRENCY: [u64; 3] = [1, 8, 64];

/// The lease the layer claims with by default (30 s), in milliseconds.
const LEASE_MS: u64 = 30_000;

/// A connection that writes down what is sent through it: how often each round trip, as the
/// [`shape`] of each of its commands, was sent.
#[derive(Clone)]
struct Counting {
    inner: MultiplexedConnection,
    sent: Arc<Mutex<BTreeMap<Vec<String>, u64>>>,
}

impl Counting {
    fn new(inner: &MultiplexedConnection) -> Self {
        Self {
            inner: inner.clone(),
            sent: Arc::default(),
        }
    }

    fn log<'a>(&self, commands: impl Iterator<Item = &'a Cmd>) {
        let round_trip = commands.map(shape).collect();
        *self
            .sent
            .lock()
            .expect("not poisoned")
            .entry(round_trip)
            .or_default() += 1;
    }

    /// What was sent since the last call, by `n` requests.
    fn take(&self, n: u64) -> Sent {
        let round_trips = std::mem::take(&mut *self.sent.lock().expect("not poisoned"));
        Sent { n, round_trips }
    }
}

impl ConnectionLike for Counting {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.log(std::iter::once(cmd));
        self.inner.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.log(pipeline.cmd_iter());
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// A command as the counting check compares it: keywords as they are, keys (every key of this
/// bench starts with `bench:`) as `K`, any other argument as its length, e.g.
/// `SET K <50> NX PX <5> GET`. Two commands of the same shape differ only in their keys and in
/// the bytes of values of the same sizes.
fn shape(cmd: &Cmd) -> String {
    let arg = |arg: Arg<&[u8]>| match arg {
        Arg::Simple(a) if a.starts_with(b"bench:") => "K".to_owned(),
        Arg::Simple(a) if !a.is_empty() && a.iter().all(u8::is_ascii_uppercase) => {
            String::from_utf8_lossy(a).into_owned()
        }
        Arg::Simple(a) => format!("<{}>", a.len()),
        // A cursor (`SCAN`), which this bench never sends.
        _ => "<cursor>".to_owned(),
    };
    cmd.args_iter().map(arg).collect::<Vec<_>>().join(" ")
}

/// What `n` requests sent: how often each round trip (its commands' shapes) was sent.
#[derive(PartialEq, Debug)]
struct Sent {
    n: u64,
    round_trips: BTreeMap<Vec<String>, u64>,
}

impl Sent {
    /// Round trips per request.
    fn round_trips(&self) -> f64 {
        self.round_trips.values().sum::<u64>() as f64 / self.n as f64
    }

    /// Commands per request.
    fn commands(&self) -> f64 {
        let commands: u64 = self
            .round_trips
            .iter()
            .map(|(round_trip, times)| round_trip.len() as u64 * times)
            .sum();
        commands as f64 / self.n as f64
    }
}

/// Raw's `complete` on servers without `SET … IFEQ`: the same server-side commands as the
/// store's script. KEYS[1] the record's key, KEYS[2] the tombstone's; ARGV[1] the token,
/// ARGV[2] the record, ARGV[3] its PX, ARGV[4] the tombstone's record, ARGV[5] its PX.
static RAW_COMPLETE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GETRANGE', KEYS[1], 0, 17) ~= '\1\1' .. ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], '\1\2' .. ARGV[1] .. ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[2], '\1\2' .. ARGV[1] .. ARGV[4], 'PX', ARGV[5])
return 1
",
    )
});

/// What the raw client writes, built once: the store's value layout (version, state, token,
/// then the fingerprint of a claim or the encoding of a record) for the baseline's response.
struct Raw {
    token: [u8; 16],
    /// `1 1 <token> <fingerprint>`: the claim, 50 bytes.
    claim: Vec<u8>,
    /// The record's encoding (the script's argument).
    record: Bytes,
    /// `1 2 <token> <record>`: the completed value (the fenced `SET`'s).
    value: Vec<u8>,
    /// The tombstone's record: the fingerprint, no response (the script's argument).
    expired: Bytes,
    /// `1 2 <token> <tombstone record>`: the tombstone's value (the fenced pipeline's).
    tombstone: Vec<u8>,
    /// Whether `complete` is `SET … IFEQ` (as the store sends it on this server) or the script.
    fenced: bool,
}

impl Raw {
    fn new(fenced: bool) -> Self {
        let record = remote::record();
        let token = OwnerToken::generate().to_bytes();
        let expired = Record::response_expired(record.fingerprint().copied());
        let layout = |state: u8, rest: &[u8]| {
            let mut v = vec![1, state];
            v.extend_from_slice(&token);
            v.extend_from_slice(rest);
            v
        };
        let fingerprint = record.fingerprint().expect("a fingerprint").as_bytes();
        Self {
            token,
            claim: layout(1, fingerprint),
            value: layout(2, record.as_bytes()),
            tombstone: layout(2, expired.as_bytes()),
            record: record.as_bytes().clone(),
            expired: expired.as_bytes().clone(),
            fenced,
        }
    }

    /// A raw key `i` under `prefix`, as long as the store's (`{prefix}{<64 hex digits>}`).
    fn key(prefix: &str, i: u64) -> String {
        format!("bench:{prefix}:{{{i:064x}}}")
    }

    /// `begin`'s round trip: `SET K <claim> NX PX <lease> GET` + `GET K:t`; the two replies.
    async fn begin<C: ConnectionLike>(&self, connection: &mut C, key: &str) -> (Value, Value) {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(key)
            .arg(&self.claim)
            .arg("NX")
            .arg("PX")
            .arg(LEASE_MS)
            .arg("GET")
            .cmd("GET")
            .arg(format!("{key}:t"));
        pipe.query_async(connection).await.expect("begin")
    }

    /// A first execution of `key`: `begin`, then `complete` as the store sends it here, with
    /// the record kept for `ttl` and the key remembered for `key_ttl`.
    async fn first<C: ConnectionLike>(
        &self,
        connection: &mut C,
        key: &str,
        ttl: Duration,
        key_ttl: Duration,
    ) {
        let (claimed, tombstone) = self.begin(connection, key).await;
        assert_eq!(
            (claimed, tombstone),
            (Value::Nil, Value::Nil),
            "a fresh key"
        );
        let tombstone_key = format!("{key}:t");
        let (ttl, key_ttl) = (ttl.as_millis() as u64, key_ttl.as_millis() as u64);
        if self.fenced {
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(key)
                .arg(&self.value)
                .arg("IFEQ")
                .arg(&self.claim)
                .arg("PX")
                .arg(ttl)
                .arg("GET")
                .cmd("SET")
                .arg(tombstone_key)
                .arg(&self.tombstone)
                .arg("PX")
                .arg(key_ttl)
                .ignore();
            let (found,): (Vec<u8>,) = pipe.query_async(connection).await.expect("SET IFEQ");
            assert_eq!(found, self.claim, "the claim was there");
        } else {
            let done: i64 = RAW_COMPLETE
                .key(key)
                .key(tombstone_key)
                .arg(&self.token[..])
                .arg(&self.record[..])
                .arg(ttl)
                .arg(&self.expired[..])
                .arg(key_ttl)
                .invoke_async(connection)
                .await
                .expect("complete");
            assert_eq!(done, 1, "the claim was there");
        }
    }

    /// A replay of the completed `key`: `begin`'s round trip, answered with the record.
    async fn replay<C: ConnectionLike>(&self, connection: &mut C, key: &str) {
        let (found, tombstone) = self.begin(connection, key).await;
        match (found, tombstone) {
            (Value::BulkString(v), Value::BulkString(_)) => assert_eq!(v, self.value),
            other => panic!("replay: unexpected {other:?}"),
        }
    }
}

/// The raw side of a row on a connection: first executions under fresh keys, or replays of a
/// raw key of its own (completed when made, kept for [`REPLAY_TTL`]).
struct RawSide<C> {
    connection: C,
    raw: Arc<Raw>,
    /// The completed key, for replays; `None` for first executions.
    replayed: Option<String>,
}

impl<C> RawSide<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn new(rt: &Runtime, connection: &C, raw: &Arc<Raw>, request: Request) -> Self {
        let replayed = (request == Request::Replay).then(|| {
            let key = Raw::key(&common::fresh_prefix(), 0);
            let (mut connection, raw, k) = (connection.clone(), Arc::clone(raw), key.clone());
            common::on_runtime(rt, async move {
                raw.first(&mut connection, &k, REPLAY_TTL, REPLAY_TTL * 2)
                    .await;
            });
            key
        });
        Self {
            connection: connection.clone(),
            raw: Arc::clone(raw),
            replayed,
        }
    }

    /// `n` requests from `tasks` tasks (first executions under a prefix of their own); the
    /// wall time.
    fn run(&self, rt: &Runtime, tasks: u64, n: u64) -> Duration {
        let (connection, raw) = (self.connection.clone(), Arc::clone(&self.raw));
        let (prefix, replayed) = (common::fresh_prefix(), self.replayed.clone());
        common::drive_fn(rt, tasks, n, move |i| {
            let (mut connection, raw) = (connection.clone(), Arc::clone(&raw));
            let (replay, key) = match &replayed {
                Some(key) => (true, key.clone()),
                None => (false, Raw::key(&prefix, i)),
            };
            async move {
                if replay {
                    raw.replay(&mut connection, &key).await;
                } else {
                    let (ttl, key_ttl) = (common::REDIS_TTL, common::REDIS_KEY_TTL);
                    raw.first(&mut connection, &key, ttl, key_ttl).await;
                }
            }
        })
    }
}

/// What a first execution and a replay send, through the layer and raw.
struct Counts {
    layered: [Sent; 2],
    raw: [Sent; 2],
}

/// Counts what the layer (over the stores the rows time) and raw send, after one request of
/// each kind (which loads the scripts and asks the server which `complete` it takes), and
/// checks that they send the same round trips, of commands of the same shapes.
fn counts(rt: &Runtime, connection: &MultiplexedConnection, raw: &Arc<Raw>) -> Counts {
    const N: u64 = 200;
    let counting = Counting::new(connection);
    let sends = |run: &dyn Fn(u64) -> Duration| {
        run(1);
        counting.take(1);
        run(N);
        counting.take(N)
    };
    let layered_sends = |request| {
        let layered = Layered::new(rt, router(&counting, true, request), request);
        sends(&|n| layered.run(rt, 1, n))
    };
    let raw_sends = |request| {
        let raw_side = RawSide::new(rt, &counting, raw, request);
        sends(&|n| raw_side.run(rt, 1, n))
    };
    let counts = Counts {
        layered: [
            layered_sends(Request::First),
            layered_sends(Request::Replay),
        ],
        raw: [raw_sends(Request::First), raw_sends(Request::Replay)],
    };
    assert_eq!(counts.layered, counts.raw, "raw sends what the layer sends");
    assert_eq!(
        counts.layered[0].round_trips(),
        2.0,
        "two round trips per first execution"
    );
    assert_eq!(
        counts.layered[1].round_trips(),
        1.0,
        "one round trip per replay"
    );
    counts
}

/// How long the records that replay rows read are kept (and their keys remembered twice as
/// long): the whole run. A replay row reads one record for many seconds (its criterion samples
/// and its pairs), and a replay of an expired record would be `result-expired` instead.
const REPLAY_TTL: Duration = Duration::from_secs(600);

/// A store under a prefix of its own on `connection`: [`common::redis_store`] for first
/// executions, with records kept for [`REPLAY_TTL`] for replays.
fn store<C: Clone>(connection: &C, request: Request) -> RedisStore<C> {
    match request {
        Request::First => common::redis_store(connection),
        Request::Replay => RedisStore::new(connection.clone(), REPLAY_TTL)
            .with_key_ttl(REPLAY_TTL * 2)
            .with_prefix(format!("bench:{}:", common::fresh_prefix())),
    }
}

/// The layered router for `request`s over a fresh store on `connection`, coalescing or not,
/// and its handler's executions.
fn router<C>(connection: &C, coalesce: bool, request: Request) -> (axum::Router, Executions)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let layer = IdempotencyLayer::new(store(connection, request)).coalesce(coalesce);
    common::layered_with(layer, 1)
}

fn bench(c: &mut Criterion, rt: &Runtime, connection: &MultiplexedConnection, raw: &Arc<Raw>) {
    for request in [Request::First, Request::Replay] {
        let mut group = c.benchmark_group(request.group("redis"));
        group.throughput(Throughput::Elements(1));
        for tasks in CONCURRENCY {
            group.bench_with_input(BenchmarkId::new("layered", tasks), &tasks, |b, &tasks| {
                let layered = Layered::new(rt, router(connection, true, request), request);
                b.iter_custom(|iters| layered.run(rt, tasks, iters));
            });
            group.bench_with_input(BenchmarkId::new("raw", tasks), &tasks, |b, &tasks| {
                let raw_side = RawSide::new(rt, connection, raw, request);
                b.iter_custom(|iters| raw_side.run(rt, tasks, iters));
            });
            group.bench_with_input(BenchmarkId::new("store", tasks), &tasks, |b, &tasks| {
                let store = Arc::new(store(connection, request));
                if request == Request::Replay {
                    remote::store_completed(rt, &store);
                }
                b.iter_custom(|iters| remote::store_batch(rt, &store, request, tasks, iters));
            });
            match request {
                Request::First => {
                    group.bench_with_input(BenchmarkId::new("bare", tasks), &tasks, |b, &tasks| {
                        b.iter_custom(|iters| remote::bare(rt, Request::First, tasks, iters));
                    });
                }
                Request::Replay => {
                    let id = BenchmarkId::new("no_coalescing", tasks);
                    group.bench_with_input(id, &tasks, |b, &tasks| {
                        let layered = Layered::new(rt, router(connection, false, request), request);
                        b.iter_custom(|iters| layered.run(rt, tasks, iters));
                    });
                }
            }
        }
        group.finish();
    }
}

/// The layer on a connection with Nagle's algorithm on (the `redis` crate's default), at 8 and 64
/// tasks: the baseline of the NODELAY rows.
fn bench_nagle(c: &mut Criterion, rt: &Runtime, nagle: &MultiplexedConnection) {
    let mut group = c.benchmark_group("redis_nagle");
    group.throughput(Throughput::Elements(1));
    for tasks in [8, 64] {
        for (name, request) in [("first", Request::First), ("replay", Request::Replay)] {
            group.bench_with_input(BenchmarkId::new(name, tasks), &tasks, |b, &tasks| {
                let layered = Layered::new(rt, router(nagle, true, request), request);
                b.iter_custom(|iters| layered.run(rt, tasks, iters));
            });
        }
    }
    group.finish();
}

/// The store's first executions with `complete` as the Lua script (fenced commands off).
fn bench_scripted(c: &mut Criterion, rt: &Runtime, connection: &MultiplexedConnection) {
    let mut group = c.benchmark_group("redis_scripted");
    group.throughput(Throughput::Elements(1));
    for tasks in [8, 64] {
        group.bench_with_input(BenchmarkId::new("store", tasks), &tasks, |b, &tasks| {
            let store = Arc::new(common::redis_store(connection).with_fenced_commands(false));
            b.iter_custom(|iters| remote::store_batch(rt, &store, Request::First, tasks, iters));
        });
    }
    group.finish();
}

/// Every ratio of the layer against raw and against the bare handler, with their pairs.
fn ratios(
    rt: &Runtime,
    connection: &MultiplexedConnection,
    raw: &Arc<Raw>,
    since: SystemTime,
) -> Vec<Ratio> {
    let mut ratios = Vec::new();
    for request in [Request::First, Request::Replay] {
        let group = request.group("redis");
        for tasks in CONCURRENCY {
            let label = request.label("Redis", tasks);
            let layered = Layered::new(rt, router(connection, true, request), request);
            let id = format!("{group}/layered/{tasks}");
            let raw_side = RawSide::new(rt, connection, raw, request);
            let against_raw = remote::paired_with_raw(rt, &id, since, &layered, tasks, |n| {
                raw_side.run(rt, tasks, n)
            });
            let (raw_target, bare_target) = match (request, tasks) {
                (_, 1) => (Target::None, Target::None),
                (Request::First, _) => (Target::AtLeast(0.9), Target::AtMost(5.0)),
                (Request::Replay, _) => (Target::AtLeast(0.9), Target::AtMost(1.5)),
            };
            ratios.push(
                Ratio::throughput(
                    format!("{label} (throughput vs raw)"),
                    &id,
                    &format!("{group}/raw/{tasks}"),
                    raw_target,
                )
                .with_paired(against_raw),
            );
            ratios.push(Ratio::throughput(
                "  the store's calls alone, no HTTP (throughput vs raw)",
                &format!("{group}/store/{tasks}"),
                &format!("{group}/raw/{tasks}"),
                Target::None,
            ));
            ratios.push(
                Ratio::time(
                    format!("{label}: time vs the bare handler"),
                    &id,
                    &format!("redis_first/bare/{tasks}"),
                    bare_target,
                )
                .with_paired(remote::paired_with_bare(rt, &id, since, &layered, tasks)),
            );
            if request == Request::Replay {
                let off = Layered::new(rt, router(connection, false, request), request);
                let off_id = format!("{group}/no_coalescing/{tasks}");
                ratios.push(
                    Ratio::time(
                        "  coalescing off: time vs the bare handler",
                        &off_id,
                        &format!("redis_first/bare/{tasks}"),
                        Target::None,
                    )
                    .with_paired(remote::paired_with_bare(rt, &off_id, since, &off, tasks)),
                );
                let on_off = remote::paired_layered(rt, &off_id, since, &off, &layered, tasks);
                ratios.push(
                    Ratio::throughput(
                        "  coalescing on / off (throughput)",
                        &id,
                        &off_id,
                        Target::None,
                    )
                    .with_paired(on_off),
                );
            }
        }
    }
    ratios
}

/// TCP_NODELAY, paired: the layer on the connection the docs advise against the layer on the
/// driver's default connection, in the same run.
fn nagle_ratios(
    rt: &Runtime,
    connection: &MultiplexedConnection,
    nagle: &MultiplexedConnection,
    since: SystemTime,
) -> Vec<Ratio> {
    let mut ratios = Vec::new();
    for (name, request) in [("first", Request::First), ("replay", Request::Replay)] {
        for tasks in [8, 64] {
            let id = format!("{}/layered/{tasks}", request.group("redis"));
            let fast = Layered::new(rt, router(connection, true, request), request);
            let slow = Layered::new(rt, router(nagle, true, request), request);
            let paired = remote::paired_layered(rt, &id, since, &slow, &fast, tasks);
            ratios.push(
                Ratio::throughput(
                    format!("{name}, {tasks} tasks: NODELAY / Nagle (throughput)"),
                    &id,
                    &format!("redis_nagle/{name}/{tasks}"),
                    Target::None,
                )
                .with_paired(paired),
            );
        }
    }
    ratios
}

/// Fenced `complete` against the script, in pairs, through the store alone.
fn scripted_ratios(
    rt: &Runtime,
    connection: &MultiplexedConnection,
    since: SystemTime,
) -> Vec<Ratio> {
    let fenced = Arc::new(common::redis_store(connection));
    let scripted = Arc::new(common::redis_store(connection).with_fenced_commands(false));
    [8, 64]
        .into_iter()
        .map(|tasks| {
            let paired = common::paired_batches(
                &format!("redis_first/store/{tasks}"),
                since,
                common::Kind::Throughput,
                |n| remote::store_batch(rt, &scripted, Request::First, tasks, n),
                |n| remote::store_batch(rt, &fenced, Request::First, tasks, n),
            );
            Ratio::throughput(
                format!(
                    "store calls, first execution, {tasks} tasks: fenced / scripted (throughput)"
                ),
                &format!("redis_first/store/{tasks}"),
                &format!("redis_scripted/store/{tasks}"),
                Target::None,
            )
            .with_paired(paired)
        })
        .collect()
}

/// Profiling mode: sends the requests `PROFILE_REQUESTS` and `PROFILE_LOAD` ask for, from
/// `PROFILE_TASKS` tasks (default 1), and returns true; false when not asked.
fn profile(rt: &Runtime, connection: &MultiplexedConnection, raw: &Arc<Raw>) -> bool {
    let Some((n, load)) = common::profiling() else {
        return false;
    };
    let tasks = std::env::var("PROFILE_TASKS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let layered =
        |coalesce, request| Layered::new(rt, router(connection, coalesce, request), request);
    match load.as_str() {
        "layered_first" => layered(true, Request::First).run(rt, tasks, n),
        "layered_replay" => layered(true, Request::Replay).run(rt, tasks, n),
        "no_coalescing_replay" => layered(false, Request::Replay).run(rt, tasks, n),
        "raw_first" => RawSide::new(rt, connection, raw, Request::First).run(rt, tasks, n),
        "raw_replay" => RawSide::new(rt, connection, raw, Request::Replay).run(rt, tasks, n),
        "bare" => remote::bare(rt, Request::First, tasks, n),
        other => panic!(
            "PROFILE_LOAD must be one of layered_first, layered_replay, no_coalescing_replay, \
             raw_first, raw_replay, bare; not {other:?}"
        ),
    };
    println!("profiled {n} requests of {load} from {tasks} tasks");
    true
}

fn main() {
    let since = SystemTime::now();
    let rt = common::runtime();
    let Some(connection) = common::redis_connection(&rt, true) else {
        return;
    };
    let nagle = common::redis_connection(&rt, false).expect("a second connection");
    // Where the server has `SET … IFEQ` (Valkey 8.1+, Redis 8.4+) the store's `complete` is that
    // fenced command, else the script; raw sends what the store sends.
    let fenced = common::on_runtime(&rt, {
        let store = common::redis_store(&connection);
        async move { store.check_config().await.is_ok_and(|r| r.fenced_complete) }
    });
    let raw = Arc::new(Raw::new(fenced));
    if profile(&rt, &connection, &raw) {
        return;
    }
    let counts = counts(&rt, &connection, &raw);
    let mut c = common::criterion();
    bench(&mut c, &rt, &connection, &raw);
    bench_nagle(&mut c, &rt, &nagle);
    if fenced {
        bench_scripted(&mut c, &rt, &connection);
    }
    let mut all = ratios(&rt, &connection, &raw, since);
    all.extend(nagle_ratios(&rt, &connection, &nagle, since));
    if fenced {
        // The store's calls with the fenced `complete` against the same calls with the script.
        all.extend(scripted_ratios(&rt, &connection, since));
    }
    common::report("redis", since, &all);
    if common::benchmarking() {
        let met = |n: f64, want: f64| if n == want { "yes" } else { "**no**" };
        let row = |name: &str, i: usize, want: f64| {
            let (layered, raw) = (&counts.layered[i], &counts.raw[i]);
            let (trips, commands) = (layered.round_trips(), layered.commands());
            let (raw_trips, raw_commands) = (raw.round_trips(), raw.commands());
            format!(
                "| {name} | {trips:.2} | {commands:.2} | {raw_trips:.2} | {raw_commands:.2} | {want} | {} |\n",
                met(trips, want)
            )
        };
        common::publish(
            "redis_round_trips",
            &format!(
                "\nredis round trips and commands per request (counted on the connection; complete: {})\n\n| request | round trips | commands | raw: round trips | raw: commands | target (round trips) | met |\n| --- | ---: | ---: | ---: | ---: | ---: | --- |\n{}{}",
                if fenced { "SET … IFEQ" } else { "script" },
                row("first execution", 0, 2.0),
                row("replay", 1, 1.0)
            ),
        );
    }
}
