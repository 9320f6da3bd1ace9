//! §2.4 Fingerprint: a key reused for a different request is a mismatch, in progress and after
//! completion; the body limit; custom and disabled fingerprints; the body reaches the handler
//! unchanged, trailers included.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::{
    Counter, Gate, Pipe, Probe, app, assert_problem, echo, gated_app, post, request, send,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_idempotency::body::RequestBody;
use tower_idempotency::fingerprint::Fingerprint;
use tower_idempotency::store::MemoryStore;
use tower_idempotency::{IdempotencyLayer, Outcome, RejectReason};

/// The same key as `post("k", "{\"amount\":1}")` on `/orders`, with one part changed.
fn variants() -> Vec<(&'static str, Request<Full<Bytes>>)> {
    let body = "{\"amount\":1}";
    let mut ct = request(Method::POST, "/orders", Some("k"), body);
    ct.headers_mut()
        .insert("content-type", "text/plain".parse().unwrap());
    vec![
        (
            "body",
            request(Method::POST, "/orders", Some("k"), "{\"amount\":2}"),
        ),
        ("path", request(Method::POST, "/refunds", Some("k"), body)),
        (
            "query",
            request(Method::POST, "/orders?dry=1", Some("k"), body),
        ),
        ("method", request(Method::PATCH, "/orders", Some("k"), body)),
        ("content-type", ct),
    ]
}

#[tokio::test]
async fn a_changed_request_after_completion_is_422() {
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(MemoryStore::new()), &counter);

    let first = send(&mut svc, post("k", "{\"amount\":1}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    for (what, req) in variants() {
        let reply = send(&mut svc, req).await;
        let json = assert_problem(&reply, 422, "mismatch");
        assert_eq!(
            json["title"], "Idempotency key reused for a different request",
            "{what}"
        );
        assert_eq!(reply.outcome, Some(Outcome::Mismatch), "{what}");
        assert!(!reply.headers.contains_key("retry-after"), "{what}");
    }
    assert_eq!(counter.get(), 1);
    // The original request still replays: mismatches changed nothing.
    let again = send(&mut svc, post("k", "{\"amount\":1}")).await;
    assert_eq!(again.outcome, Some(Outcome::Replayed));
    assert_eq!(again.body, first.body);
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn a_changed_request_while_in_progress_is_422_not_409() {
    let counter = Counter::new();
    let gate = Gate::new();
    let svc = gated_app(IdempotencyLayer::new(MemoryStore::new()), &counter, &gate);

    let first = tokio::spawn(svc.clone().oneshot(post("k", "{\"amount\":1}")));
    gate.arrived().await;
    for (what, req) in variants() {
        let reply = send(&mut svc.clone(), req).await;
        assert_problem(&reply, 422, "mismatch");
        assert_eq!(reply.outcome, Some(Outcome::Mismatch), "{what}");
    }
    // The same request meanwhile is a conflict.
    let dup = send(&mut svc.clone(), post("k", "{\"amount\":1}")).await;
    assert_problem(&dup, 409, "in-progress");
    gate.open();
    let first = common::read(first.await.unwrap().unwrap()).await;
    assert_eq!(first.text(), "execution 1: {\"amount\":1}");
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn mismatch_status_is_configurable() {
    let counter = Counter::new();
    let layer = IdempotencyLayer::new(MemoryStore::new()).mismatch_status(StatusCode::CONFLICT);
    let mut svc = app(layer, &counter);

    send(&mut svc, post("k", "a")).await;
    let reply = send(&mut svc, post("k", "b")).await;
    let json = assert_problem(&reply, 409, "mismatch");
    assert_eq!(json["status"], 409);
    assert_eq!(reply.outcome, Some(Outcome::Mismatch));
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn a_custom_fingerprint_decides_what_a_retry_is() {
    let counter = Counter::new();
    // Only the body counts: the same body on another path is a retry.
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .fingerprint(|_parts, body| Fingerprint::sha256(body));
    let mut svc = app(layer, &counter);

    let first = send(&mut svc, request(Method::POST, "/a", Some("k"), "same")).await;
    let moved = send(&mut svc, request(Method::POST, "/b?x=1", Some("k"), "same")).await;
    assert_eq!(moved.outcome, Some(Outcome::Replayed));
    assert_eq!(moved.body, first.body);
    let changed = send(&mut svc, request(Method::POST, "/a", Some("k"), "other")).await;
    assert_problem(&changed, 422, "mismatch");
    assert_eq!(counter.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn without_fingerprint_the_body_streams_and_never_mismatches() {
    let counter = Counter::new();
    let (got_first, mut first_seen) = tokio::sync::mpsc::unbounded_channel();
    let c = counter.clone();
    let mut svc = ServiceBuilder::new()
        .layer(
            IdempotencyLayer::new(MemoryStore::new())
                .no_fingerprint()
                .max_request_body(4),
        )
        .service_fn(move |req: Request<RequestBody<Pipe>>| {
            let (c, got_first) = (c.clone(), got_first.clone());
            async move {
                let n = c.hit();
                let mut body = req.into_body();
                let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
                got_first.send(first.clone()).unwrap();
                let rest = body.collect().await.unwrap().to_bytes();
                let text = format!("execution {n}: {}", [first, rest].concat().len());
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
            }
        });

    let keyed = |body: Pipe| {
        Request::post("/orders")
            .header("idempotency-key", "k")
            .body(body)
            .unwrap()
    };
    let (tx, body) = common::pipe();
    let call = tokio::spawn(svc.ready().await.unwrap().call(keyed(body)));
    tx.data("first chunk").await;
    // The handler sees the first chunk while the client has not sent the rest: nothing buffers.
    let seen = tokio::time::timeout(Duration::from_secs(5), first_seen.recv())
        .await
        .expect("the handler got the first chunk before the body ended");
    assert_eq!(seen.unwrap(), "first chunk");
    tx.data("+more").await;
    drop(tx);
    let first = common::read(call.await.unwrap().unwrap()).await;
    // Over `max_request_body`, yet accepted: the limit is for fingerprinting only.
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.text(), "execution 1: 16");
    assert_eq!(first.outcome, Some(Outcome::Recorded));

    // A different body under the same key is not a mismatch: it gets the replay.
    let (tx, body) = common::pipe();
    tx.data("x").await;
    drop(tx);
    let again = send(&mut svc, keyed(body)).await;
    assert_eq!(again.outcome, Some(Outcome::Replayed));
    assert_eq!(again.body, first.body);
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_claims_nothing() {
    let store = Probe::new(MemoryStore::new());
    let counter = Counter::new();
    let mut svc = app(
        IdempotencyLayer::new(store.clone()).max_request_body(16),
        &counter,
    );

    let reply = send(&mut svc, post("k", "01234567890123456")).await;
    let json = assert_problem(&reply, 413, "body-too-large");
    assert!(
        json["detail"].as_str().unwrap().contains("16 bytes"),
        "{json}"
    );
    assert_eq!(
        reply.outcome,
        Some(Outcome::Rejected(RejectReason::BodyTooLarge))
    );
    assert_eq!(counter.get(), 0);
    assert_eq!(store.total_calls(), 0);

    // The key is untouched: the same key with a body at the limit runs.
    let reply = send(&mut svc, post("k", "0123456789012345")).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.text(), "execution 1: 0123456789012345");
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_413() {
    let store = Probe::new(MemoryStore::new());
    let counter = Counter::new();
    let c = counter.clone();
    let mut svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(store.clone()).max_request_body(8))
        .service_fn(move |req: Request<RequestBody<Pipe>>| echo(c.clone(), req));

    // No length known in advance: the layer finds out while reading.
    let (tx, body) = common::pipe();
    for chunk in ["abcd", "efgh", "i"] {
        tx.data(chunk).await;
    }
    drop(tx);
    let req = Request::post("/o")
        .header("idempotency-key", "k")
        .body(body)
        .unwrap();
    let reply = send(&mut svc, req).await;
    assert_problem(&reply, 413, "body-too-large");
    assert_eq!(counter.get(), 0);
    assert_eq!(store.total_calls(), 0);
}

/// A body that announces its length (as hyper does from `Content-Length`) and records whether
/// anyone read it.
struct Announced {
    len: u64,
    read: Arc<AtomicBool>,
}

impl Body for Announced {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.read.store(true, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![
            b'x';
            self.len as usize
        ])))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

#[tokio::test]
async fn a_content_length_over_the_limit_is_rejected_without_reading() {
    let store = Probe::new(MemoryStore::new());
    let counter = Counter::new();
    let c = counter.clone();
    let mut svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(store.clone()).max_request_body(1024))
        .service_fn(move |req: Request<RequestBody<Announced>>| echo(c.clone(), req));

    let read = Arc::new(AtomicBool::new(false));
    let body = Announced {
        len: 1025,
        read: read.clone(),
    };
    let req = Request::post("/o")
        .header("idempotency-key", "k")
        .header("content-length", "1025")
        .body(body)
        .unwrap();
    let reply = send(&mut svc, req).await;
    assert_problem(&reply, 413, "body-too-large");
    assert!(!read.load(Ordering::SeqCst), "the body was read");
    assert_eq!(counter.get(), 0);
    assert_eq!(store.total_calls(), 0);
}

#[derive(Debug)]
struct Broken;

#[tokio::test]
async fn a_body_that_fails_while_read_is_400_and_claims_nothing() {
    let store = Probe::new(MemoryStore::new());
    let counter = Counter::new();
    let c = counter.clone();
    let mut svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(store.clone()))
        .service_fn(move |req: Request<RequestBody<Pipe<Broken>>>| echo(c.clone(), req));

    let (tx, body) = common::pipe();
    tx.data("part").await;
    tx.fail(Broken).await;
    let req = Request::post("/o")
        .header("idempotency-key", "k")
        .body(body)
        .unwrap();
    let reply = send(&mut svc, req).await;
    assert_problem(&reply, 400, "unreadable-body");
    assert_eq!(
        reply.outcome,
        Some(Outcome::Rejected(RejectReason::UnreadableBody))
    );
    assert_eq!(counter.get(), 0);
    assert_eq!(store.total_calls(), 0);
}

#[tokio::test]
async fn the_handler_gets_the_body_and_its_trailers_unchanged() {
    let counter = Counter::new();
    let c = counter.clone();
    let mut svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .service_fn(move |req: Request<RequestBody<Pipe>>| {
            let n = c.hit();
            async move {
                let collected = req.into_body().collect().await.unwrap();
                let trailers = collected.trailers().cloned().unwrap_or_default();
                let checksum = trailers.get("x-checksum").cloned();
                let mut res = Response::new(Full::new(collected.to_bytes()));
                if let Some(checksum) = checksum {
                    res.headers_mut().insert("x-got-checksum", checksum);
                }
                res.headers_mut()
                    .insert("x-execution", n.to_string().parse().unwrap());
                Ok::<_, Infallible>(res)
            }
        });

    let keyed = || async {
        let (tx, body) = common::pipe();
        for chunk in ["chunk-1 ", "chunk-2 ", "chunk-3"] {
            tx.data(chunk).await;
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "c0ffee".parse().unwrap());
        tx.trailers(trailers).await;
        drop(tx);
        Request::post("/o")
            .header("idempotency-key", "k")
            .body(body)
            .unwrap()
    };
    let first = send(&mut svc, keyed().await).await;
    assert_eq!(first.text(), "chunk-1 chunk-2 chunk-3");
    assert_eq!(first.header("x-got-checksum"), Some("c0ffee"));
    // Same bytes, same trailers: the retry is recognised and replayed.
    let again = send(&mut svc, keyed().await).await;
    assert_eq!(again.outcome, Some(Outcome::Replayed));
    assert_eq!(again.body, first.body);
    assert_eq!(counter.get(), 1);
}
