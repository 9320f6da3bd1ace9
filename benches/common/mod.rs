//! What every benchmark shares: the baseline application and its bodies, the runtime, the
//! request driver, and the report that turns criterion's times into ratios.
//!
//! The baseline is an axum `Router` whose `POST /orders` parses a 256-byte JSON order (serde)
//! and answers `201` with a 256-byte JSON body; `GET /orders` answers `200` with a 256-byte
//! JSON body. A layered variant is the same router with `.layer(IdempotencyLayer::new(store))`.
//! Requests go through `oneshot` from a task on a 2-worker multi-thread runtime, as a server's
//! connection task would drive them, and every response body is read to the end.

// Each benchmark binary uses a part of this module.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use criterion::Criterion;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use tower::ServiceExt;
use tower_idempotency::IdempotencyLayer;
use tower_idempotency::store::Store;

#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) mod remote;

/// The size of every request and response body of the baseline.
pub(crate) const BODY_LEN: usize = 256;

/// The key header the layer reads.
pub(crate) const KEY_HEADER: &str = "idempotency-key";

/// The criterion settings of every benchmark: short enough that `cargo bench` stays within
/// minutes, long enough for stable medians. Command-line options still override them.
pub(crate) fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args()
}

/// The runtime every benchmark drives its requests on: 2 workers, like the machine.
pub(crate) fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

#[derive(Serialize, Deserialize)]
struct Line {
    sku: String,
    quantity: u32,
    price_cents: u64,
}

#[derive(Serialize, Deserialize)]
struct NewOrder {
    seq: u64,
    customer: String,
    currency: String,
    lines: Vec<Line>,
    note: String,
}

#[derive(Serialize)]
struct Created {
    id: String,
    seq: String,
    status: &'static str,
    total_cents: u64,
    note: &'static str,
}

/// Pads `note` so that `make(note)` serializes to exactly `len` bytes.
fn padded<T: Serialize>(len: usize, make: impl Fn(String) -> T) -> Vec<u8> {
    let bare = serde_json::to_vec(&make(String::new())).expect("serializable");
    let json = serde_json::to_vec(&make("x".repeat(len - bare.len()))).expect("serializable");
    assert_eq!(json.len(), len);
    json
}

/// The 256-byte JSON order number `seq`.
pub(crate) fn order(seq: u64) -> Bytes {
    padded(BODY_LEN, |note| NewOrder {
        seq,
        customer: "cus_7d3f9a2b41".to_owned(),
        currency: "EUR".to_owned(),
        lines: vec![
            Line {
                sku: "book-0451".to_owned(),
                quantity: 2,
                price_cents: 1299,
            },
            Line {
                sku: "pen-0007".to_owned(),
                quantity: 10,
                price_cents: 149,
            },
        ],
        note,
    })
    .into()
}

/// The padding that makes every `201` body exactly 256 bytes (its other fields have fixed widths).
fn created_note() -> &'static str {
    static NOTE: OnceLock<String> = OnceLock::new();
    NOTE.get_or_init(|| {
        let bare = serde_json::to_vec(&created(0, 0, "")).expect("serializable");
        "x".repeat(BODY_LEN - bare.len())
    })
}

fn created(id: u64, seq: u64, note: &'static str) -> Created {
    Created {
        id: format!("ord_{id:016}"),
        seq: format!("{seq:020}"),
        status: "accepted",
        total_cents: 0,
        note,
    }
}

/// The baseline's state: how often the handler ran, per order number (modulo the slots).
#[derive(Clone)]
pub(crate) struct Executions {
    slots: Arc<[AtomicU32]>,
    next_id: Arc<AtomicU64>,
}

impl Executions {
    fn new(slots: usize) -> Self {
        Self {
            slots: (0..slots.max(1)).map(|_| AtomicU32::new(0)).collect(),
            next_id: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How often the handler ran for each slot.
    pub(crate) fn counts(&self) -> Vec<u32> {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect()
    }

    /// How often the handler ran in all.
    pub(crate) fn total(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| u64::from(s.load(Ordering::Relaxed)))
            .sum()
    }
}

async fn create_order(
    State(executions): State<Executions>,
    Json(order): Json<NewOrder>,
) -> (StatusCode, Json<Created>) {
    let slot = (order.seq % executions.slots.len() as u64) as usize;
    executions.slots[slot].fetch_add(1, Ordering::Relaxed);
    let id = executions.next_id.fetch_add(1, Ordering::Relaxed);
    let total: u64 = order
        .lines
        .iter()
        .map(|l| u64::from(l.quantity) * l.price_cents)
        .sum();
    let mut body = created(id, order.seq, created_note());
    body.total_cents = total % 10;
    (StatusCode::CREATED, Json(body))
}

async fn list_orders() -> ([(header::HeaderName, &'static str); 1], Bytes) {
    static BODY: OnceLock<Bytes> = OnceLock::new();
    let body = BODY.get_or_init(|| {
        serde_json::to_vec(&created(0, 0, created_note()))
            .expect("serializable")
            .into()
    });
    ([(header::CONTENT_TYPE, "application/json")], body.clone())
}

/// The baseline router, counting executions per order number modulo `slots`.
pub(crate) fn baseline(slots: usize) -> (Router, Executions) {
    let executions = Executions::new(slots);
    let router = Router::new()
        .route("/orders", post(create_order).get(list_orders))
        .with_state(executions.clone());
    (router, executions)
}

/// The baseline router behind the idempotency layer over `store`.
pub(crate) fn layered<St: Store>(store: St, slots: usize) -> (Router, Executions) {
    layered_with(IdempotencyLayer::new(store), slots)
}

/// The baseline router behind `layer` (a layer configured otherwise than the defaults).
pub(crate) fn layered_with<St: Store>(
    layer: IdempotencyLayer<St>,
    slots: usize,
) -> (Router, Executions) {
    let (router, executions) = baseline(slots);
    (router.layer(layer), executions)
}

/// What the floor of a layer does besides passing the request on or answering it.
#[derive(Clone, Copy)]
pub(crate) enum Floor {
    /// Answers every request with a stored `201`, without reading the body or calling the
    /// handler: the cheapest replay any layer can give in an axum `Router`.
    Replay,
    /// The same, after reading the body and computing the two SHA-256s that SPEC §2.4 and §5
    /// require of every protected request (the key's digest and the request's fingerprint).
    HashedReplay,
    /// Reads the body, computes the same two SHA-256s, and hands the request on to the handler
    /// with the buffered body: a first execution with nothing stored.
    HashedRun,
}

/// The baseline router behind a layer that does only what `floor` says: no store, no record,
/// no extensions. Its ratio to the baseline is the least that any idempotency layer following
/// SPEC can cost in an axum `Router`, measured in the same run as the layer itself.
pub(crate) fn floor(floor: Floor) -> Router {
    use axum::response::Response;
    use tower::Service;
    use tower_idempotency::fingerprint::Fingerprint;
    use tower_idempotency::store::StoreKey;

    let stored = order(0);
    let (bare, _) = baseline(1);
    bare.layer(tower::layer::layer_fn(
        move |inner: axum::routing::Route| {
            let stored = stored.clone();
            tower::service_fn(move |req: Request<Body>| {
                // Only the floor that runs the handler needs the inner service: a replaying
                // layer need not clone it, and the replay floors must not pay for that.
                let inner = matches!(floor, Floor::HashedRun).then(|| inner.clone());
                let stored = stored.clone();
                async move {
                    let req = match floor {
                        Floor::Replay => req,
                        Floor::HashedReplay | Floor::HashedRun => {
                            let key = req.headers()[KEY_HEADER]
                                .to_str()
                                .expect("a key")
                                .to_owned();
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.expect("a body").to_bytes();
                            std::hint::black_box(Fingerprint::of_request(&parts, &body));
                            std::hint::black_box(StoreKey::new(None, &key));
                            Request::from_parts(parts, Body::from(body))
                        }
                    };
                    if let Some(mut inner) = inner {
                        return inner.call(req).await;
                    }
                    let mut res = Response::new(Body::from(stored));
                    *res.status_mut() = StatusCode::CREATED;
                    res.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    Ok(res)
                }
            })
        },
    ))
}

/// Which `Idempotency-Key` a request of a [`Load`] carries.
#[derive(Clone)]
pub(crate) enum Key {
    /// None.
    Absent,
    /// The same key on every request.
    Fixed(HeaderValue),
    /// `{prefix}-{n}` on the `n`th request: a fresh key each time.
    Fresh(String),
}

/// One kind of request, sent again and again to one router.
#[derive(Clone)]
pub(crate) struct Load {
    pub(crate) router: Router,
    pub(crate) method: axum::http::Method,
    pub(crate) key: Key,
    pub(crate) body: Bytes,
    pub(crate) expect: StatusCode,
}

impl Load {
    /// The same requests under a prefix no store has seen: first executions again.
    pub(crate) fn fresh(&self) -> Self {
        Self {
            key: Key::Fresh(fresh_prefix()),
            ..self.clone()
        }
    }

    /// `POST /orders` with the 256-byte order 0, expecting `201`.
    pub(crate) fn post(router: Router, key: Key) -> Self {
        Self {
            router,
            method: axum::http::Method::POST,
            key,
            body: order(0),
            expect: StatusCode::CREATED,
        }
    }

    /// `GET /orders`, expecting `200`.
    pub(crate) fn get(router: Router) -> Self {
        Self {
            router,
            method: axum::http::Method::GET,
            key: Key::Absent,
            body: Bytes::new(),
            expect: StatusCode::OK,
        }
    }

    /// Sends the `n`th request and reads the whole response.
    pub(crate) async fn send(&self, n: u64) -> (StatusCode, axum::http::HeaderMap, Bytes) {
        let mut req = Request::builder()
            .method(self.method.clone())
            .uri("/orders")
            .header(header::CONTENT_TYPE, "application/json");
        match &self.key {
            Key::Absent => {}
            Key::Fixed(key) => req = req.header(KEY_HEADER, key.clone()),
            Key::Fresh(prefix) => req = req.header(KEY_HEADER, format!("{prefix}-{n}")),
        }
        let req = req
            .body(Body::from(self.body.clone()))
            .expect("a valid request");
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("a whole body").to_bytes();
        (parts.status, parts.headers, body)
    }
}

/// A key prefix no other run or sample has used.
pub(crate) fn fresh_prefix() -> String {
    static RUN: OnceLock<u64> = OnceLock::new();
    static SAMPLE: AtomicU64 = AtomicU64::new(0);
    let run = RUN.get_or_init(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    format!("{run:x}-{}", SAMPLE.fetch_add(1, Ordering::Relaxed))
}

/// Sends `iters` requests of `load` from `tasks` concurrent tasks on `rt` (each its share, one
/// after another) and returns the wall time of the whole: per request, `1 / throughput`.
pub(crate) fn drive(rt: &Runtime, load: &Load, tasks: u64, iters: u64) -> Duration {
    let load = load.clone();
    drive_fn(rt, tasks, iters, move |n| {
        let load = load.clone();
        async move {
            let (status, _, body) = load.send(n).await;
            assert_eq!(status, load.expect, "{}", String::from_utf8_lossy(&body));
            std::hint::black_box(body);
        }
    })
}

/// Runs `step(0..iters)` from `tasks` concurrent tasks on `rt` (each its share of `n`, one
/// after another) and returns the wall time of the whole.
pub(crate) fn drive_fn<F, Fut>(rt: &Runtime, tasks: u64, iters: u64, step: F) -> Duration
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let tasks = tasks.clamp(1, iters.max(1));
    rt.block_on(async move {
        // Started from a worker, as the accept loop of a server would start connections.
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for t in 0..tasks {
                let step = step.clone();
                let (from, to) = (iters * t / tasks, iters * (t + 1) / tasks);
                set.spawn(async move {
                    for n in from..to {
                        step(n).await;
                    }
                });
            }
            while let Some(done) = set.join_next().await {
                done.expect("a request task panicked");
            }
            start.elapsed()
        })
        .await
        .expect("the driver task panicked")
    })
}

/// A connection to the Redis server at `REDIS_URL` (default `redis://127.0.0.1:6379`), or
/// `None` after printing why the Redis benchmarks are skipped. With `nodelay`, `TCP_NODELAY` is
/// on, as the crate's docs advise; without, the driver's default (Nagle's algorithm on).
#[cfg(feature = "redis")]
pub(crate) fn redis_connection(
    rt: &Runtime,
    nodelay: bool,
) -> Option<redis::aio::MultiplexedConnection> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let connect = {
        let url = url.clone();
        async move {
            let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(nodelay);
            let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).ok()?;
            let client = redis::Client::open(info.set_tcp_settings(tcp)).ok()?;
            let connect = client.get_multiplexed_async_connection();
            let mut connection = tokio::time::timeout(Duration::from_secs(2), connect)
                .await
                .ok()?
                .ok()?;
            let pong: String = redis::cmd("PING").query_async(&mut connection).await.ok()?;
            (pong == "PONG").then_some(connection)
        }
    };
    let connection = on_runtime(rt, connect);
    if connection.is_none() {
        println!("redis benchmarks skipped: no server at {url}");
    }
    connection
}

/// How long the Redis benchmarks keep records: long enough for a sample, short enough that
/// the server does not fill up.
#[cfg(feature = "redis")]
pub(crate) const REDIS_TTL: Duration = Duration::from_secs(10);

/// How long the Redis benchmarks' stores remember a completed key (its tombstone `K:t`): longer
/// than [`REDIS_TTL`], so that `begin` and `complete` send what they send by default (the
/// tombstone's commands included), and short enough that the keys of a run expire within
/// minutes instead of the default 7 days.
#[cfg(feature = "redis")]
pub(crate) const REDIS_KEY_TTL: Duration = Duration::from_secs(60);

/// A Redis store under a key prefix of its own, so that the benchmarks never meet other keys.
#[cfg(feature = "redis")]
pub(crate) fn redis_store<C: Clone>(connection: &C) -> tower_idempotency::store::RedisStore<C> {
    tower_idempotency::store::RedisStore::new(connection.clone(), REDIS_TTL)
        .with_key_ttl(REDIS_KEY_TTL)
        .with_prefix(format!("bench:{}:", fresh_prefix()))
}

/// Runs `make` on a worker of `rt` (for set-up that needs the runtime).
pub(crate) fn on_runtime<T: Send + 'static>(
    rt: &Runtime,
    make: impl Future<Output = T> + Send + 'static,
) -> T {
    rt.block_on(async move { tokio::spawn(make).await.expect("set-up panicked") })
}

/// A ratio to print: one benchmark's time against another's from the same run.
pub(crate) struct Ratio {
    /// What the row tells.
    pub(crate) label: String,
    /// The criterion id (`group/function`) of the variant.
    pub(crate) variant: String,
    /// The criterion id of what it is compared with.
    pub(crate) baseline: String,
    /// Whether the ratio is of times (variant / baseline) or throughputs (baseline time /
    /// variant time).
    pub(crate) kind: Kind,
    /// The target, if any.
    pub(crate) target: Target,
    /// The same ratio measured in pairs, where the bench did that too (see [`paired`]).
    pub(crate) paired: Option<Paired>,
}

/// How a [`Ratio`] is formed.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    /// variant time / baseline time: lower is better.
    Time,
    /// variant throughput / baseline throughput: higher is better.
    Throughput,
    /// 1 + (variant time − reference time) / baseline time: what the variant adds to a request
    /// of its own kind, as a share of the baseline request.
    Added(&'static str),
}

/// What a [`Ratio`] must reach.
#[derive(Clone, Copy)]
pub(crate) enum Target {
    None,
    AtMost(f64),
    AtLeast(f64),
}

impl Ratio {
    /// Adds the paired measurement of the same ratio.
    pub(crate) fn with_paired(mut self, paired: Option<Paired>) -> Self {
        self.paired = paired;
        self
    }

    pub(crate) fn added(
        label: impl Into<String>,
        variant: &str,
        reference: &'static str,
        baseline: &str,
        target: Target,
    ) -> Self {
        Self {
            label: label.into(),
            variant: variant.to_owned(),
            baseline: baseline.to_owned(),
            kind: Kind::Added(reference),
            target,
            paired: None,
        }
    }

    pub(crate) fn time(
        label: impl Into<String>,
        variant: &str,
        baseline: &str,
        target: Target,
    ) -> Self {
        Self {
            label: label.into(),
            variant: variant.to_owned(),
            baseline: baseline.to_owned(),
            kind: Kind::Time,
            target,
            paired: None,
        }
    }

    pub(crate) fn throughput(
        label: impl Into<String>,
        variant: &str,
        baseline: &str,
        target: Target,
    ) -> Self {
        Self {
            label: label.into(),
            variant: variant.to_owned(),
            baseline: baseline.to_owned(),
            kind: Kind::Throughput,
            target,
            paired: None,
        }
    }
}

/// Where criterion writes its results, found as criterion finds it.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    // target/<profile>/deps/<bench>: three levels up is the target directory.
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// Criterion's estimate (slope, else mean) in nanoseconds for `id`, if it was measured after
/// `since`.
fn estimate(id: &str, since: SystemTime) -> Option<f64> {
    let path = criterion_dir().join(id).join("new").join("estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < since {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    let point = |name: &str| json.get(name)?.get("point_estimate")?.as_f64();
    point("slope").or_else(|| point("mean"))
}

/// The load average, as `/proc/loadavg` tells it.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Whether this process runs as `cargo bench` runs it (not `cargo test --benches`).
pub(crate) fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Prints the ratios of `bench` as a markdown table, and writes the table to
/// `<criterion dir>/ratios/<bench>.md`. Rows whose benchmarks did not run since `since` (a
/// filter left them out) say so.
pub(crate) fn report(bench: &str, since: SystemTime, ratios: &[Ratio]) {
    if !benchmarking() {
        return;
    }
    let mut out = String::new();
    let _ = writeln!(out, "\nratios: {bench} (load average {})\n", load_average());
    let _ = writeln!(
        out,
        "| question | variant | baseline | ratio | paired: median (middle half) | target | met |\n| --- | --- | --- | ---: | ---: | --- | --- |"
    );
    for r in ratios {
        let (v, b) = (estimate(&r.variant, since), estimate(&r.baseline, since));
        let ratio = match (v, b, r.kind) {
            (Some(v), Some(b), Kind::Time) => Some(v / b),
            (Some(v), Some(b), Kind::Throughput) => Some(b / v),
            (Some(v), Some(b), Kind::Added(reference)) => {
                estimate(reference, since).map(|reference| 1.0 + (v - reference) / b)
            }
            _ => None,
        };
        let target = match r.target {
            Target::None => "—".to_owned(),
            Target::AtMost(t) => format!("≤ {t:.2}"),
            Target::AtLeast(t) => format!("≥ {t:.2}"),
        };
        let (ratio, met) = match ratio {
            None => ("not measured in this run".to_owned(), "—"),
            Some(x) => {
                // Judged by the paired median where there is one: it is the steadier number.
                let judged = r.paired.as_ref().map_or(x, |p| p.median);
                let met = match r.target {
                    Target::None => "—",
                    Target::AtMost(t) if judged <= t => "yes",
                    Target::AtLeast(t) if judged >= t => "yes",
                    _ => "**no**",
                };
                (format!("{x:.3}"), met)
            }
        };
        let variant = match r.kind {
            Kind::Added(reference) => format!("`{}` − `{reference}`", r.variant),
            _ => format!("`{}`", r.variant),
        };
        let paired = r.paired.as_ref().map_or("—".to_owned(), |p| {
            format!("{:.3} ({:.3}–{:.3})", p.median, p.low, p.high)
        });
        let _ = writeln!(
            out,
            "| {} | {variant} | `{}` | {ratio} | {paired} | {target} | {met} |",
            r.label, r.baseline
        );
    }
    publish(bench, &out);
}

/// A time ratio measured in pairs: in each of [`PAIRED_ROUNDS`] rounds a batch of baseline
/// requests and a batch of variant requests are timed back to back (which goes first
/// alternates), and the ratio of the two is that round's. A slow spell of a shared machine then
/// falls on both sides of a round instead of on one benchmark, as it can when criterion measures
/// the baseline for seconds and then the variant.
pub(crate) struct Paired {
    /// The median of the rounds' ratios.
    pub(crate) median: f64,
    /// The lower and upper quartile: the middle half of the rounds lies between them.
    pub(crate) low: f64,
    pub(crate) high: f64,
}

/// Rounds of a [`paired`] measurement.
pub(crate) const PAIRED_ROUNDS: usize = 25;

/// Measures `variant() / baseline` in pairs (see [`Paired`]), one task sending one request
/// after another, each batch about 40 ms long. `variant` makes the load of each round, so that
/// a round can have keys of its own. `None` unless `cargo bench` runs this process and criterion
/// measured `id` (the variant's benchmark) in this run, so that filtered runs skip it too.
pub(crate) fn paired(
    rt: &Runtime,
    id: &str,
    since: SystemTime,
    baseline: &Load,
    variant: impl Fn() -> Load,
) -> Option<Paired> {
    paired_batches(
        id,
        since,
        Kind::Time,
        |n| drive(rt, baseline, 1, n),
        |n| drive(rt, &variant(), 1, n),
    )
}

/// [`paired`] for any two batches: `baseline(n)` and `variant(n)` send `n` requests each (with
/// as many tasks as they like) and return the wall time. With [`Kind::Throughput`] the ratio is
/// of throughputs (baseline time / variant time), else of times.
pub(crate) fn paired_batches(
    id: &str,
    since: SystemTime,
    kind: Kind,
    mut baseline: impl FnMut(u64) -> Duration,
    mut variant: impl FnMut(u64) -> Duration,
) -> Option<Paired> {
    if !benchmarking() || estimate(id, since).is_none() {
        return None;
    }
    // Batch size: what takes the baseline about 40 ms.
    let probe = baseline(500);
    let n = ((0.040 / probe.as_secs_f64()) * 500.0).clamp(200.0, 100_000.0) as u64;
    let mut ratios: Vec<f64> = (0..PAIRED_ROUNDS)
        .map(|round| {
            let (b, v) = if round % 2 == 0 {
                let b = baseline(n);
                (b, variant(n))
            } else {
                let v = variant(n);
                (baseline(n), v)
            };
            let (b, v) = (b.as_secs_f64(), v.as_secs_f64());
            match kind {
                Kind::Throughput => b / v,
                _ => v / b,
            }
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    Some(Paired {
        median: at(0.5),
        low: at(0.25),
        high: at(0.75),
    })
}

/// Prints a bench's table and keeps a copy in `<criterion dir>/ratios/<bench>.md`, where the
/// tables of one `cargo bench` run can be gathered.
pub(crate) fn publish(bench: &str, table: &str) {
    println!("{table}");
    let dir = criterion_dir().join("ratios");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join(format!("{bench}.md")), table);
    }
}

/// Profiling mode, for callgrind or perf instead of criterion: with `PROFILE_REQUESTS=n` in the
/// environment, sends `n` requests of the load named by `PROFILE_LOAD` (one after another, as
/// [`drive`] with one task does), untimed, and returns true.
///
/// Run it twice with different `n` under `valgrind --tool=callgrind`: the difference of the
/// instruction counts divided by the difference of `n` is the cost of one request, free of
/// start-up costs.
pub(crate) fn profile(rt: &Runtime, loads: &[(&str, &Load)]) -> bool {
    let Some((n, wanted)) = profiling() else {
        return false;
    };
    for (name, load) in loads {
        if *name == wanted {
            drive(rt, load, 1, n);
            println!("profiled {n} requests of {name}");
            return true;
        }
    }
    let names: Vec<_> = loads.iter().map(|(name, _)| *name).collect();
    panic!("PROFILE_LOAD must be one of {names:?}");
}

/// Profiling mode's request: `PROFILE_REQUESTS` (how many) and `PROFILE_LOAD` (which load),
/// when `PROFILE_REQUESTS` is set to a number (see [`profile`]).
pub(crate) fn profiling() -> Option<(u64, String)> {
    let n = std::env::var("PROFILE_REQUESTS").ok()?.parse().ok()?;
    Some((n, std::env::var("PROFILE_LOAD").unwrap_or_default()))
}
