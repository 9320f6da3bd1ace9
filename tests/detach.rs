//! §2.6 and §2.10 Detached execution: a client that goes away (hyper drops the response future)
//! does not stop the handler, which records its result for the retry; `detach(false)` cancels
//! and releases instead; shutdown drains running handlers and never records a partial result.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Counter, Gate, HandlerReq, entry, gated_app, post, read};
use http::{Response, StatusCode};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_idempotency::store::Entry;
use tower_idempotency::store::MemoryStore;
use tower_idempotency::{IdempotencyLayer, Outcome};

/// Counts executions that start and executions that finish; each waits at the gate between.
fn tracked(
    layer: IdempotencyLayer<Arc<MemoryStore>>,
    counter: &Counter,
    finished: &Arc<AtomicUsize>,
    gate: &Gate,
) -> impl Service<
    http::Request<Full<Bytes>>,
    Response = common::Res,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    let (counter, finished, gate) = (counter.clone(), finished.clone(), gate.clone());
    ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |_req: HandlerReq| {
            let (counter, finished, gate) = (counter.clone(), finished.clone(), gate.clone());
            async move {
                let n = counter.hit();
                gate.pass().await;
                finished.fetch_add(1, Ordering::SeqCst);
                let body = Full::new(Bytes::from(format!("execution {n}")));
                Ok::<_, Infallible>(Response::builder().status(201).body(body).unwrap())
            }
        })
}

/// Polls `fut` until the handler is at the gate, then drops it, as hyper does when the client
/// disconnects.
async fn drop_mid_handler<F: Future>(fut: F, gate: &Gate) {
    let mut fut = std::pin::pin!(fut);
    tokio::select! {
        _ = &mut fut => panic!("the request finished before the handler started"),
        () = gate.arrived() => {}
    }
}

#[tokio::test]
async fn a_dropped_client_does_not_stop_the_handler_and_the_retry_replays() {
    let store = Arc::new(MemoryStore::new());
    let (counter, finished, gate) = (Counter::new(), Arc::new(AtomicUsize::new(0)), Gate::new());
    let layer = IdempotencyLayer::new(store.clone());
    let tasks = layer.detached_tasks();
    let svc = tracked(layer, &counter, &finished, &gate);

    drop_mid_handler(svc.clone().oneshot(post("k", "{}")), &gate).await;
    assert_eq!(tasks.len(), 1, "the handler runs on without its client");

    gate.open();
    tasks.drain().await;
    assert_eq!(finished.load(Ordering::SeqCst), 1);
    assert!(matches!(
        entry(&*store, "k").await,
        Some(Entry::Completed(_))
    ));

    let retry = read(svc.oneshot(post("k", "{}")).await.unwrap()).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.outcome, Some(Outcome::Replayed));
    assert_eq!(retry.text(), "execution 1");
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn without_detach_a_dropped_client_cancels_and_releases() {
    let store = Arc::new(MemoryStore::new());
    let (counter, finished, gate) = (Counter::new(), Arc::new(AtomicUsize::new(0)), Gate::new());
    let layer = IdempotencyLayer::new(store.clone()).detach(false);
    let tasks = layer.detached_tasks();
    let svc = tracked(layer, &counter, &finished, &gate);

    drop_mid_handler(svc.clone().oneshot(post("k", "{}")), &gate).await;
    // The release is sent on its way when the future is dropped; draining waits for it.
    tasks.drain().await;
    assert_eq!(entry(&*store, "k").await, None, "the claim was released");

    gate.open();
    let retry = read(svc.oneshot(post("k", "{}")).await.unwrap()).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.outcome, Some(Outcome::Recorded));
    assert_eq!(retry.text(), "execution 2");
    assert_eq!(counter.get(), 2);
    // The first execution never got past the gate.
    assert_eq!(finished.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_running_detached_handlers() {
    let store = Arc::new(MemoryStore::new());
    let (counter, gate) = (Counter::new(), Gate::new());
    let layer = IdempotencyLayer::new(store.clone());
    let tasks = layer.detached_tasks();
    let svc = gated_app(layer, &counter, &gate);

    let client = tokio::spawn(svc.clone().oneshot(post("a", "{}")));
    gate.arrived().await;
    drop_mid_handler(svc.clone().oneshot(post("b", "{}")), &gate).await;
    assert_eq!(tasks.len(), 2);

    let drain = tokio::spawn({
        let tasks = tasks.clone();
        async move { tasks.drain().await }
    });
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!drain.is_finished(), "drain returned while handlers run");
    assert!(matches!(
        entry(&*store, "a").await,
        Some(Entry::InProgress { .. })
    ));

    gate.open();
    drain.await.unwrap();
    assert!(tasks.is_empty());
    for key in ["a", "b"] {
        assert!(
            matches!(entry(&*store, key).await, Some(Entry::Completed(_))),
            "{key}"
        );
    }
    let client = read(client.await.unwrap().unwrap()).await;
    assert_eq!(client.outcome, Some(Outcome::Recorded));
    assert_eq!(counter.get(), 2);

    // The layer keeps working after a drain.
    let mut svc = svc;
    let reply = common::send(&mut svc, post("c", "{}")).await;
    assert_eq!(reply.outcome, Some(Outcome::Recorded));
    assert_eq!(counter.get(), 3);
}

#[test]
fn a_handler_cut_off_by_shutdown_keeps_its_claim_and_records_nothing() {
    let store = Arc::new(MemoryStore::new());
    let (counter, finished, gate) = (Counter::new(), Arc::new(AtomicUsize::new(0)), Gate::new());
    let svc = tracked(
        IdempotencyLayer::new(store.clone()),
        &counter,
        &finished,
        &gate,
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::spawn(svc.clone().oneshot(post("k", "{}")));
        gate.arrived().await;
    });
    drop(runtime);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert!(
            matches!(entry(&*store, "k").await, Some(Entry::InProgress { .. })),
            "the claim stays until its lease ends"
        );
        assert_eq!(finished.load(Ordering::SeqCst), 0);
        assert_eq!(counter.get(), 1);
    });
}
