//! What the layer logs, and in which spans. Each test here has a binary of its own: `tracing`
//! caches per call site whether anyone listens, across threads, so a test that captures logs
//! with a thread-local subscriber can miss events while other tests' threads reach the same
//! call sites without one.

mod common;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use common::logs::Logs;
use common::{Gate, HandlerReq, post};
use http::Response;
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_idempotency::IdempotencyLayer;
use tower_idempotency::store::{MemoryStore, StoreKey};

/// Polls `fut` until the handler is at the gate, then drops it, as hyper does when the client
/// disconnects.
async fn drop_mid_handler<F: Future>(fut: F, gate: &Gate) {
    let mut fut = std::pin::pin!(fut);
    tokio::select! {
        _ = &mut fut => panic!("the request finished before the handler started"),
        () = gate.arrived() => {}
    }
}

/// A handler that finishes after its client went away still logs inside the span the request
/// was called in, and inside the layer's own span for the request (`idempotency`, with the
/// key's digest, never the key).
#[tokio::test(flavor = "current_thread")]
async fn a_detached_handler_keeps_the_request_span() {
    use tracing::Instrument;

    let (logs, _guard) = Logs::capture();

    let layer = IdempotencyLayer::new(Arc::new(MemoryStore::new()));
    let gate = Gate::new();
    let g = gate.clone();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(move |_req: HandlerReq| {
            let gate = g.clone();
            async move {
                gate.pass().await;
                tracing::info!("charging the card");
                let body = Full::new(Bytes::from_static(b"charged"));
                Ok::<_, Infallible>(Response::builder().status(201).body(body).unwrap())
            }
        });
    let span = tracing::info_span!("request", id = 7);
    drop_mid_handler(svc.oneshot(post("k", "{}")).instrument(span), &gate).await;
    gate.open();
    layer.detached_tasks().drain().await;

    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("charging the card"))
        .unwrap_or_else(|| panic!("the handler logged: {text}"));
    assert!(line.contains("request{id=7}"), "{line}");
    let digest = StoreKey::new(None, "k").to_hex();
    assert!(
        line.contains(&format!(
            "request{{id=7}}:idempotency{{key={}}}",
            &digest[..16]
        )),
        "{line}"
    );
}
