//! §7 Metrics (feature `metrics`): each outcome moves its counter exactly once, the store-call
//! histogram and the detached-executions gauge move; read through a recorder that captures
//! values (`metrics-util`'s `DebuggingRecorder`), installed for this thread only.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use common::{Counter, Fault, Gate, HandlerReq, Op, Probe, gated_app, post, read, send};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_idempotency::metrics::{DETACHED, REQUESTS, RESENDS, STORE_DURATION};
use tower_idempotency::store::{MemoryStore, StoreErrorKind};
use tower_idempotency::{IdempotencyLayer, Outcome, RejectReason};

/// Runs `test` on a current-thread runtime with a capturing recorder installed for it.
fn with_recorder<F: Future<Output = ()>>(test: impl FnOnce(Totals) -> F) {
    let recorder = DebuggingRecorder::new();
    let totals = Totals {
        snapshotter: recorder.snapshotter(),
        totals: RefCell::default(),
    };
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test(totals));
    });
}

/// Every counter's and gauge's value, and every histogram's number of samples, by name and
/// labels (`name{k=v,...}`), since the test began. (A snapshot of the debugging recorder
/// returns what changed since the last one.)
struct Totals {
    snapshotter: Snapshotter,
    totals: RefCell<HashMap<String, f64>>,
}

impl Totals {
    fn values(&self) -> HashMap<String, f64> {
        let mut totals = self.totals.borrow_mut();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            let change = match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(samples) => samples.len() as f64,
            };
            *totals.entry(name).or_default() += change;
        }
        totals.clone()
    }
}

fn requests(outcome: Outcome) -> String {
    match outcome.reason() {
        Some(reason) => format!(
            "{REQUESTS}{{outcome={},reason={}}}",
            outcome.as_str(),
            reason.as_str()
        ),
        None => format!("{REQUESTS}{{outcome={}}}", outcome.as_str()),
    }
}

/// Takes the request counters before and after `f`, and checks that exactly one request was
/// counted, under `outcome`.
async fn counts_once<T>(snapshotter: &Totals, outcome: Outcome, f: impl AsyncFnOnce() -> T) -> T {
    let before = snapshotter.values();
    let out = f().await;
    // Detached work and background writes take their turn.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    let after = snapshotter.values();
    let moved: Vec<(String, f64)> = after
        .iter()
        .filter(|(name, _)| name.starts_with(REQUESTS))
        .map(|(name, v)| (name.clone(), v - before.get(name).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect();
    assert_eq!(moved, vec![(requests(outcome), 1.0)], "{outcome:?}");
    out
}

/// A handler that answers the status in `x-status` (default 201) with a body of `x-size`
/// bytes (default a few).
fn app(
    layer: IdempotencyLayer<Arc<Probe<MemoryStore>>>,
    counter: &Counter,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = common::Res,
    Error = Infallible,
    Future: Send + 'static,
> + Clone {
    let counter = counter.clone();
    ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: HandlerReq| {
            let n = counter.hit();
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<usize>().ok())
            };
            let status = header("x-status").unwrap_or(201);
            let body = match header("x-size") {
                Some(size) => Bytes::from(vec![b'x'; size]),
                None => Bytes::from(format!("execution {n}")),
            };
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status as u16)
                        .body(Full::new(body))
                        .unwrap(),
                )
            }
        })
}

fn with_header(
    mut req: Request<Full<Bytes>>,
    name: &'static str,
    value: &str,
) -> Request<Full<Bytes>> {
    req.headers_mut().insert(name, value.parse().unwrap());
    req
}

#[test]
fn each_outcome_moves_its_counter_exactly_once() {
    with_recorder(|snap| async move {
        let store = Probe::new(MemoryStore::new());
        let counter = Counter::new();
        let layer = IdempotencyLayer::new(store.clone())
            .max_request_body(64)
            .max_response_body(64);
        let mut svc = app(layer.clone(), &counter);
        let snap = &snap;

        let reply = counts_once(snap, Outcome::Recorded, async || {
            send(&mut svc, post("a", "{}")).await
        })
        .await;
        assert_eq!(reply.outcome, Some(Outcome::Recorded));
        let reply = counts_once(snap, Outcome::Replayed, async || {
            send(&mut svc, post("a", "{}")).await
        })
        .await;
        assert_eq!(reply.outcome, Some(Outcome::Replayed));
        let reply = counts_once(snap, Outcome::Mismatch, async || {
            send(&mut svc, post("a", "other")).await
        })
        .await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
        let reply = counts_once(snap, Outcome::Released, async || {
            send(&mut svc, with_header(post("b", "{}"), "x-status", "503")).await
        })
        .await;
        assert_eq!(reply.outcome, Some(Outcome::Released));
        let reply = counts_once(snap, Outcome::NotStored, async || {
            send(&mut svc, with_header(post("c", "{}"), "x-size", "100")).await
        })
        .await;
        assert_eq!(reply.outcome, Some(Outcome::NotStored));
        assert_eq!(reply.body.len(), 100);
        let reply = counts_once(snap, Outcome::ReplayUnavailable, async || {
            send(&mut svc, post("c", "{}")).await
        })
        .await;
        assert_eq!(reply.status, StatusCode::CONFLICT);
        let reply = counts_once(snap, Outcome::Bypassed, async || {
            send(
                &mut svc,
                Request::get("/orders").body(Full::default()).unwrap(),
            )
            .await
        })
        .await;
        assert_eq!(reply.status, StatusCode::CREATED);
        counts_once(snap, Outcome::Bypassed, async || {
            send(
                &mut svc,
                Request::post("/orders").body(Full::default()).unwrap(),
            )
            .await
        })
        .await;
        let reply = counts_once(
            snap,
            Outcome::Rejected(RejectReason::InvalidKey),
            async || send(&mut svc, post("", "{}")).await,
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let reply = counts_once(
            snap,
            Outcome::Rejected(RejectReason::BodyTooLarge),
            async || send(&mut svc, post("d", &"x".repeat(100))).await,
        )
        .await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
        let mut strict = app(layer.clone().require_key(true), &counter);
        counts_once(
            snap,
            Outcome::Rejected(RejectReason::MissingKey),
            async || {
                send(
                    &mut strict,
                    Request::post("/orders").body(Full::default()).unwrap(),
                )
                .await
            },
        )
        .await;
        let mut scoped = app(layer.clone().scope(|_| None), &counter);
        let reply = counts_once(
            snap,
            Outcome::Rejected(RejectReason::MissingScope),
            async || send(&mut scoped, post("e", "{}")).await,
        )
        .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);

        store.set(Op::Begin, Fault::Fail(StoreErrorKind::Unavailable));
        let reply = counts_once(snap, Outcome::StoreUnavailable, async || {
            send(&mut svc, post("f", "{}")).await
        })
        .await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        let mut open = app(layer.clone().fail_open(true), &counter);
        let reply = counts_once(snap, Outcome::Unprotected, async || {
            send(&mut open, post("f", "{}")).await
        })
        .await;
        assert_eq!(reply.outcome, Some(Outcome::Unprotected));
        store.clear(Op::Begin);
        // Recorded, released, not stored, the two bypassed requests, unprotected.
        assert_eq!(counter.get(), 6);

        // The store calls were timed, by operation and result.
        let v = snap.values();
        for series in [
            "operation=begin,result=ok",
            "operation=begin,result=unavailable",
            "operation=complete,result=ok",
            "operation=release,result=ok",
        ] {
            let name = format!("{STORE_DURATION}{{{series}}}");
            assert!(v.get(&name).copied().unwrap_or(0.0) >= 1.0, "{name}: {v:?}");
        }
    });
}

#[test]
fn a_conflict_moves_its_counter_once() {
    with_recorder(|snap| async move {
        let store = Probe::new(MemoryStore::new());
        let (counter, gate) = (Counter::new(), Gate::new());
        let svc = gated_app(IdempotencyLayer::new(store), &counter, &gate);
        let first = tokio::spawn(svc.clone().oneshot(post("k", "{}")));
        gate.arrived().await;
        let reply = counts_once(&snap, Outcome::Conflict, async || {
            read(svc.clone().oneshot(post("k", "{}")).await.unwrap()).await
        })
        .await;
        assert_eq!(reply.status, StatusCode::CONFLICT);
        gate.open();
        first.await.unwrap().unwrap();
        assert_eq!(counter.get(), 1);
    });
}

#[test]
fn the_gauge_counts_detached_handlers_and_resends_are_counted() {
    with_recorder(|snap| async move {
        let store = Probe::new(MemoryStore::new());
        let (counter, gate) = (Counter::new(), Gate::new());
        let layer = IdempotencyLayer::new(store.clone());
        let tasks = layer.detached_tasks();
        let svc = gated_app(layer, &counter, &gate);
        {
            let mut fut = std::pin::pin!(svc.clone().oneshot(post("k", "{}")));
            tokio::select! {
                _ = &mut fut => panic!("the handler is gated"),
                () = gate.arrived() => {}
            }
        }
        assert_eq!(snap.values().get(&format!("{DETACHED}{{}}")), Some(&1.0));
        // The record's reply is lost: re-sent in the background.
        store.set(Op::Complete, Fault::Land(StoreErrorKind::Timeout));
        gate.open();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        store.clear(Op::Complete);
        tasks.drain().await;
        let v = snap.values();
        assert_eq!(v.get(&format!("{DETACHED}{{}}")), Some(&0.0));
        // Counted once, when the detached handler finished.
        assert_eq!(v.get(&requests(Outcome::Recorded)), Some(&1.0));
        assert!(
            v.get(&format!("{RESENDS}{{operation=complete}}"))
                .copied()
                .unwrap_or(0.0)
                >= 1.0,
            "{v:?}"
        );
        assert_eq!(counter.get(), 1);
    });
}
