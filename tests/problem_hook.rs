//! §3 The problem hook: the layer's own answers can be replaced whole; the `Outcome` extension
//! is still set, and handler responses and replays are not touched.

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{Counter, Fault, Gate, Op, Probe, gated_app, post, read, request, send};
use http::{Method, Response, StatusCode};
use tower::ServiceExt;
use tower_idempotency::problem::{Problem, ProblemKind};
use tower_idempotency::store::{MemoryStore, StoreErrorKind};
use tower_idempotency::{IdempotencyLayer, Outcome, RejectReason};

type Layer = IdempotencyLayer<Arc<Probe<MemoryStore>>>;

/// Answers every problem as `418` with a plain-text body naming it, and remembers the problems.
fn hooked(layer: Layer) -> (Layer, Arc<Mutex<Vec<Problem>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let layer = layer.problem_response(move |problem: &Problem| {
        log.lock().unwrap().push(problem.clone());
        let body = format!(
            "{} | {} | {}",
            problem.status(),
            problem.title(),
            problem.type_uri()
        );
        Response::builder()
            .status(StatusCode::IM_A_TEAPOT)
            .header("content-type", "text/plain")
            .header("x-problem-status", problem.status().as_str())
            .body(Bytes::from(body))
            .unwrap()
    });
    (layer, seen)
}

#[tokio::test]
async fn the_hook_replaces_status_and_body_and_the_outcome_stays() {
    let store = Probe::new(MemoryStore::new());
    let (layer, seen) = hooked(IdempotencyLayer::new(store.clone()).require_key(true));
    let (counter, gate) = (Counter::new(), Gate::new());
    let svc = gated_app(layer, &counter, &gate);

    // Missing key, invalid key, in progress, mismatch, store unavailable.
    let missing = read(
        svc.clone()
            .oneshot(request(Method::POST, "/o", None, "a"))
            .await
            .unwrap(),
    )
    .await;
    let invalid = read(svc.clone().oneshot(post("", "a")).await.unwrap()).await;
    let first = tokio::spawn(svc.clone().oneshot(post("k", "a")));
    gate.arrived().await;
    let conflict = read(svc.clone().oneshot(post("k", "a")).await.unwrap()).await;
    let mismatch = read(svc.clone().oneshot(post("k", "b")).await.unwrap()).await;
    store.set(Op::Begin, Fault::Fail(StoreErrorKind::Unavailable));
    let down = read(svc.clone().oneshot(post("other", "a")).await.unwrap()).await;
    store.clear(Op::Begin);

    let cases = [
        (&missing, 400, Outcome::Rejected(RejectReason::MissingKey)),
        (&invalid, 400, Outcome::Rejected(RejectReason::InvalidKey)),
        (&conflict, 409, Outcome::Conflict),
        (&mismatch, 422, Outcome::Mismatch),
        (&down, 503, Outcome::StoreUnavailable),
    ];
    for (reply, status, outcome) in cases {
        assert_eq!(reply.status, StatusCode::IM_A_TEAPOT, "{reply:?}");
        assert_eq!(reply.header("content-type"), Some("text/plain"));
        assert_eq!(
            reply.header("x-problem-status"),
            Some(status.to_string().as_str())
        );
        assert!(
            reply.text().starts_with(&format!("{status} ")),
            "{}",
            reply.text()
        );
        assert!(
            !reply.headers.contains_key("retry-after"),
            "the hook's response is whole"
        );
        assert_eq!(reply.outcome, Some(outcome), "{reply:?}");
    }
    let kinds: Vec<ProblemKind> = seen.lock().unwrap().iter().map(Problem::kind).collect();
    assert_eq!(kinds.len(), 5);
    assert_eq!(kinds[0], ProblemKind::MissingKey);
    assert!(matches!(kinds[1], ProblemKind::InvalidKey(_)));
    assert_eq!(
        kinds[2..],
        [
            ProblemKind::InProgress,
            ProblemKind::Mismatch,
            ProblemKind::StoreUnavailable
        ]
    );
    // The hook is told when to retry, even though its response leaves it out.
    let retry_after = seen.lock().unwrap()[2].retry_after();
    assert_eq!(retry_after, Some(std::time::Duration::from_secs(1)));
    assert_eq!(counter.get(), 1);

    gate.open();
    let first = read(first.await.unwrap().unwrap()).await;
    assert_eq!(first.status, StatusCode::CREATED);
}

#[tokio::test]
async fn handler_responses_and_replays_do_not_go_through_the_hook() {
    let store = Probe::new(MemoryStore::new());
    let (layer, seen) = hooked(IdempotencyLayer::new(store));
    let (counter, gate) = (Counter::new(), Gate::new());
    gate.open();
    let mut svc = gated_app(layer, &counter, &gate);

    let first = send(&mut svc, post("k", "a")).await;
    let again = send(&mut svc, post("k", "a")).await;
    let bypassed = send(&mut svc, request(Method::GET, "/o", None, "")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.outcome, Some(Outcome::Replayed));
    assert_eq!(again.body, first.body);
    assert_eq!(bypassed.status, StatusCode::CREATED);
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(counter.get(), 2);
}
