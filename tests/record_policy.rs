//! §2.7 Record or release: which results are kept for replay and which free the key for a
//! retry; the layer-wide record policy and the `Disposition` override above it; panics;
//! responses over the size cap.

mod common;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use common::{Counter, Frames, HandlerReq, Pipe, Reply, assert_problem, pipe, post, read, send};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::catch_panic::CatchPanicLayer;
use tower_idempotency::body::ResponseBody;
use tower_idempotency::policy::{DefaultRecordPolicy, RecordPolicy, ResponseHead};
use tower_idempotency::store::{MemoryStore, Store};
use tower_idempotency::{Disposition, IdempotencyLayer, Outcome};

/// Execution `n` answers `script[n - 1]` (`201` past its end) with the body `execution n`, and
/// the given disposition override, if any.
fn scripted(
    layer: IdempotencyLayer<MemoryStore>,
    counter: &Counter,
    script: Vec<(u16, Option<Disposition>)>,
) -> impl Service<
    http::Request<Full<Bytes>>,
    Response = Response<ResponseBody<Full<Bytes>>>,
    Error = Infallible,
    Future: Send,
> + Clone {
    let (counter, script) = (counter.clone(), Arc::new(script));
    ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |_req: HandlerReq| {
            let n = counter.hit();
            let (status, disposition) = script.get(n - 1).copied().unwrap_or((201, None));
            async move {
                let mut res = Response::builder()
                    .status(status)
                    .header("x-execution", n.to_string())
                    .body(Full::new(Bytes::from(format!("execution {n}"))))
                    .unwrap();
                if let Some(disposition) = disposition {
                    res.extensions_mut().insert(disposition);
                }
                Ok::<_, Infallible>(res)
            }
        })
}

#[tokio::test]
async fn retryable_statuses_release_the_key() {
    for status in [500, 502, 503, 504, 408, 429] {
        let counter = Counter::new();
        let layer = IdempotencyLayer::new(MemoryStore::new());
        let mut svc = scripted(layer, &counter, vec![(status, None)]);

        let first = send(&mut svc, post("k", "{}")).await;
        assert_eq!(first.status.as_u16(), status);
        assert_eq!(first.text(), "execution 1");
        assert_eq!(first.outcome, Some(Outcome::Released));
        let retry = send(&mut svc, post("k", "{}")).await;
        assert_eq!(retry.status, StatusCode::CREATED, "{status}");
        assert_eq!(retry.text(), "execution 2", "{status}");
        assert_eq!(retry.outcome, Some(Outcome::Recorded));
        // The success is kept.
        let again = send(&mut svc, post("k", "{}")).await;
        assert_eq!(again.outcome, Some(Outcome::Replayed), "{status}");
        assert_eq!(again.text(), "execution 2");
        assert_eq!(counter.get(), 2, "{status}");
    }
}

#[tokio::test]
async fn client_errors_are_recorded_and_replayed() {
    for status in [400, 404, 409, 422, 302] {
        let counter = Counter::new();
        let layer = IdempotencyLayer::new(MemoryStore::new());
        let mut svc = scripted(layer, &counter, vec![(status, None)]);

        let first = send(&mut svc, post("k", "{}")).await;
        assert_eq!(first.status.as_u16(), status);
        let retry = send(&mut svc, post("k", "{}")).await;
        assert_eq!(retry.status.as_u16(), status);
        assert_eq!(retry.outcome, Some(Outcome::Replayed), "{status}");
        assert_eq!(retry.text(), "execution 1");
        assert!(retry.is_replay());
        assert_eq!(counter.get(), 1, "{status}");
    }
}

#[tokio::test]
async fn disposition_overrides_the_default() {
    // A 503 that must not run twice.
    let counter = Counter::new();
    let layer = IdempotencyLayer::new(MemoryStore::new());
    let mut svc = scripted(layer, &counter, vec![(503, Some(Disposition::Record))]);
    let first = send(&mut svc, post("k", "{}")).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    let retry = send(&mut svc, post("k", "{}")).await;
    assert_eq!(retry.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry.outcome, Some(Outcome::Replayed));
    assert_eq!(retry.text(), "execution 1");
    assert_eq!(counter.get(), 1);

    // A 201 whose result must not be kept.
    let counter = Counter::new();
    let layer = IdempotencyLayer::new(MemoryStore::new());
    let mut svc = scripted(layer, &counter, vec![(201, Some(Disposition::Release))]);
    let first = send(&mut svc, post("k", "{}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.outcome, Some(Outcome::Released));
    let retry = send(&mut svc, post("k", "{}")).await;
    assert_eq!(retry.outcome, Some(Outcome::Recorded));
    assert_eq!(retry.text(), "execution 2");
    assert_eq!(counter.get(), 2);
}

#[derive(Debug)]
struct HandlerFailed;

#[tokio::test]
async fn an_inner_error_is_passed_on_and_releases_the_key() {
    let counter = Counter::new();
    let c = counter.clone();
    let mut svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .service_fn(move |_req: HandlerReq| {
            let n = c.hit();
            async move {
                if n == 1 {
                    return Err(HandlerFailed);
                }
                Ok(Response::new(Full::new(Bytes::from(format!(
                    "execution {n}"
                )))))
            }
        });

    let err = svc.ready().await.unwrap().call(post("k", "{}")).await;
    assert!(matches!(err, Err(HandlerFailed)));
    let retry = send(&mut svc, post("k", "{}")).await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.text(), "execution 2");
    assert_eq!(retry.outcome, Some(Outcome::Recorded));
    let again = send(&mut svc, post("k", "{}")).await;
    assert_eq!(again.outcome, Some(Outcome::Replayed));
    assert_eq!(counter.get(), 2);
}

/// A handler that panics on its first execution.
fn panicking(
    layer: IdempotencyLayer<MemoryStore>,
    counter: &Counter,
) -> impl Service<http::Request<Full<Bytes>>, Response = common::Res, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    let counter = counter.clone();
    ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: HandlerReq| {
            let counter = counter.clone();
            async move {
                if counter.get() == 0 {
                    counter.hit();
                    panic!("handler bug");
                }
                common::echo(counter, req).await
            }
        })
}

#[tokio::test]
async fn a_panic_propagates_and_frees_the_key_at_once() {
    for detach in [true, false] {
        let counter = Counter::new();
        let svc = panicking(
            IdempotencyLayer::new(MemoryStore::new()).detach(detach),
            &counter,
        );

        let call = tokio::spawn(svc.clone().oneshot(post("k", "{}")));
        let err = call.await.expect_err("the panic reaches the caller");
        assert!(err.is_panic(), "detach({detach})");
        assert_eq!(
            err.into_panic().downcast_ref::<&str>(),
            Some(&"handler bug"),
            "detach({detach}): the handler's own panic"
        );

        let retry = read(svc.clone().oneshot(post("k", "{}")).await.unwrap()).await;
        assert_eq!(retry.status, StatusCode::CREATED, "detach({detach})");
        assert_eq!(retry.outcome, Some(Outcome::Recorded));
        assert_eq!(retry.text(), "execution 2: {}");
        assert_eq!(counter.get(), 2);
    }
}

#[tokio::test]
async fn a_panic_caught_outside_is_a_500_and_the_retry_runs() {
    let counter = Counter::new();
    let c = counter.clone();
    let mut svc = ServiceBuilder::new()
        .layer(CatchPanicLayer::new())
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .service_fn(move |req: HandlerReq| {
            let c = c.clone();
            async move {
                if c.get() == 0 {
                    c.hit();
                    panic!("handler bug");
                }
                common::echo(c, req).await
            }
        });

    let first = send(&mut svc, post("k", "{}")).await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    let retry = send(&mut svc, post("k", "{}")).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.text(), "execution 2: {}");
    let again = send(&mut svc, post("k", "{}")).await;
    assert_eq!(again.outcome, Some(Outcome::Replayed));
    assert_eq!(again.body, retry.body);
    assert_eq!(counter.get(), 2);
}

#[tokio::test]
async fn a_response_over_the_cap_streams_whole_and_is_not_replayed() {
    let counter = Counter::new();
    let c = counter.clone();
    let big: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let body = big.clone();
    let mut svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()).max_response_body(1024))
        .service_fn(move |_req: HandlerReq| {
            c.hit();
            let chunks: Vec<&[u8]> = body.chunks(700).collect();
            let res = Response::builder()
                .status(StatusCode::CREATED)
                .body(Frames::new(&chunks, None))
                .unwrap();
            async move { Ok::<_, Infallible>(res) }
        });

    let first = send(&mut svc, post("k", "{}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.outcome, Some(Outcome::NotStored));
    assert_eq!(
        first.body.as_ref(),
        big.as_slice(),
        "the whole body, in order"
    );

    for _ in 0..2 {
        let retry = send(&mut svc, post("k", "{}")).await;
        let json = assert_problem(&retry, 409, "response-not-stored");
        assert_eq!(json["title"], "Response not stored");
        assert!(!retry.headers.contains_key("retry-after"));
        assert_eq!(retry.outcome, Some(Outcome::ReplayUnavailable));
    }
    // A different request under the key is still a mismatch.
    assert_problem(&send(&mut svc, post("k", "other")).await, 422, "mismatch");
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn a_response_announced_over_the_cap_is_not_buffered() {
    let counter = Counter::new();
    let c = counter.clone();
    let big = Bytes::from(vec![7u8; 4096]);
    let body = big.clone();
    let mut svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()).max_response_body(1024))
        .service_fn(move |_req: HandlerReq| {
            c.hit();
            let res = Response::new(Full::new(body.clone()));
            async move { Ok::<_, Infallible>(res) }
        });

    let first = send(&mut svc, post("k", "{}")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, big);
    let retry = send(&mut svc, post("k", "{}")).await;
    assert_problem(&retry, 409, "response-not-stored");
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn a_response_over_the_cap_is_not_held_back() {
    let counter = Counter::new();
    let c = counter.clone();
    let (tx, body) = pipe::<Infallible>();
    let body = Arc::new(std::sync::Mutex::new(Some(body)));
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()).max_response_body(8))
        .service_fn(move |_req: HandlerReq| {
            c.hit();
            let body: Pipe = body.lock().unwrap().take().unwrap();
            async move { Ok::<_, Infallible>(Response::new(body)) }
        });

    tx.data("01234").await;
    tx.data("56789").await;
    // The head arrives while the handler's body is still open.
    let res = svc.clone().oneshot(post("k", "{}")).await.unwrap();
    assert_eq!(res.extensions().get::<Outcome>(), Some(&Outcome::NotStored));
    let mut body = res.into_body();
    let head = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(head, "0123456789");
    // Meanwhile a retry learns that the operation is done.
    let retry = read(svc.clone().oneshot(post("k", "{}")).await.unwrap()).await;
    assert_problem(&retry, 409, "response-not-stored");
    tx.data("abc").await;
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "abc");
    assert_eq!(counter.get(), 1);
}

#[derive(Debug)]
struct Broken;

#[tokio::test]
async fn a_response_body_that_fails_releases_the_key() {
    let counter = Counter::new();
    let c = counter.clone();
    let mut svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .service_fn(move |_req: HandlerReq| {
            let n = c.hit();
            async move {
                let (tx, body) = pipe::<Broken>();
                if n == 1 {
                    tx.data("partial").await;
                    tx.fail(Broken).await;
                } else {
                    tx.data("whole").await;
                }
                Ok::<_, Infallible>(Response::new(body))
            }
        });

    let res = svc
        .ready()
        .await
        .unwrap()
        .call(post("k", "{}"))
        .await
        .unwrap();
    let mut body = res.into_body();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "partial"
    );
    assert!(matches!(body.frame().await, Some(Err(Broken))));

    let retry: Reply = send(&mut svc, post("k", "{}")).await;
    assert_eq!(retry.outcome, Some(Outcome::Recorded));
    assert_eq!(retry.text(), "whole");
    assert_eq!(counter.get(), 2);
}

/// A gRPC status in the trailers decides like one in the head: a retryable code (`UNAVAILABLE`)
/// releases the key even though the HTTP status is `200`; `OK` is recorded; and the handler's
/// `Disposition` still wins over both.
#[tokio::test]
async fn a_retryable_grpc_status_in_the_trailers_releases_the_key() {
    let counter = Counter::new();
    let hits = counter.clone();
    let mut svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .service_fn(move |req: HandlerReq| {
            let n = hits.hit();
            let keep = req.headers().contains_key("x-keep");
            async move {
                // Execution 1 fails retryably after a message; later ones succeed.
                let code = if n == 1 || keep { "14" } else { "0" };
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", code.parse().unwrap());
                let mut res = Response::new(Frames::new(&[b"message"], Some(trailers)));
                if keep {
                    res.extensions_mut().insert(Disposition::Record);
                }
                Ok::<_, Infallible>(res)
            }
        });

    let first = send(&mut svc, post("g", "{}")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "message");
    assert_eq!(first.trailers.as_ref().unwrap()["grpc-status"], "14");

    let retry = send(&mut svc, post("g", "{}")).await;
    assert_eq!(
        retry.outcome,
        Some(Outcome::Recorded),
        "the key was released"
    );
    assert_eq!(retry.trailers.as_ref().unwrap()["grpc-status"], "0");

    let replay = send(&mut svc, post("g", "{}")).await;
    assert_eq!(replay.outcome, Some(Outcome::Replayed));
    assert_eq!(replay.trailers.as_ref().unwrap()["grpc-status"], "0");
    assert_eq!(counter.get(), 2);

    // With `Disposition::Record`, the same retryable status is kept and replayed.
    let mut keep = post("h", "{}");
    keep.headers_mut().insert("x-keep", "1".parse().unwrap());
    let kept = send(&mut svc, keep).await;
    assert_eq!(kept.trailers.as_ref().unwrap()["grpc-status"], "14");
    let mut keep = post("h", "{}");
    keep.headers_mut().insert("x-keep", "1".parse().unwrap());
    let replayed = send(&mut svc, keep).await;
    assert_eq!(replayed.outcome, Some(Outcome::Replayed));
    assert_eq!(replayed.trailers.as_ref().unwrap()["grpc-status"], "14");
    assert_eq!(counter.get(), 3);
}

/// An axum app whose handler takes `Json`, counting the executions the handler itself sees.
fn json_app<St: Store>(layer: IdempotencyLayer<St>, counter: &Counter) -> axum::Router {
    #[derive(serde::Deserialize)]
    struct Order {
        #[allow(dead_code)]
        item: String,
    }
    let counter = counter.clone();
    axum::Router::new()
        .route(
            "/orders",
            axum::routing::post(move |axum::Json(_order): axum::Json<Order>| {
                let n = counter.hit();
                async move { (StatusCode::CREATED, format!("order {n}")) }
            }),
        )
        .layer(layer)
}

fn json_order(key: &str, body: &'static str) -> http::Request<axum::body::Body> {
    http::Request::post("/orders")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .unwrap()
}

/// The recipe of `RecordPolicy`'s docs: axum's JSON rejections are released, not kept.
fn no_validation_failures(head: &ResponseHead<'_>) -> Disposition {
    match head.status() {
        StatusCode::BAD_REQUEST
        | StatusCode::UNSUPPORTED_MEDIA_TYPE
        | StatusCode::UNPROCESSABLE_ENTITY => Disposition::Release,
        _ => DefaultRecordPolicy.disposition(head),
    }
}

#[tokio::test]
async fn by_default_a_json_rejection_is_kept_and_the_fixed_body_is_a_mismatch() {
    let counter = Counter::new();
    let app = json_app(IdempotencyLayer::new(MemoryStore::new()), &counter);
    let bad = read(
        app.clone()
            .oneshot(json_order("k", "{\"item\":"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.outcome, Some(Outcome::Recorded));
    let fixed = read(
        app.oneshot(json_order("k", "{\"item\":\"tea\"}"))
            .await
            .unwrap(),
    )
    .await;
    assert_problem(&fixed, 422, "mismatch");
    assert_eq!(counter.get(), 0);
}

#[tokio::test]
async fn a_policy_that_releases_validation_failures_lets_the_fixed_body_run() {
    policy_releases_validation_failures(MemoryStore::new()).await;
}

/// The policy decides `complete` or `release` on the store: the same on the shared stores.
#[cfg(feature = "redis")]
#[tokio::test]
async fn the_policy_holds_on_redis() {
    use common::redis::{shared_connection, unique_prefix};
    let store = tower_idempotency::store::RedisStore::new(
        shared_connection().await,
        std::time::Duration::from_secs(60),
    )
    .with_prefix(unique_prefix("policy"));
    policy_releases_validation_failures(store).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn the_policy_holds_on_postgres() {
    use common::postgres::{pool, store_in};
    let store = store_in(pool(4).await, "policy", std::time::Duration::from_secs(60)).await;
    policy_releases_validation_failures(store).await;
}

/// Two validation failures are released, the fixed body runs once and is replayed.
async fn policy_releases_validation_failures<St: Store>(store: St) {
    let counter = Counter::new();
    let layer = IdempotencyLayer::new(store).record_policy(no_validation_failures);
    let app = json_app(layer, &counter);
    for (bad, status) in [
        ("{\"item\":", StatusCode::BAD_REQUEST),
        ("{\"qty\":1}", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let reply = read(app.clone().oneshot(json_order("k", bad)).await.unwrap()).await;
        assert_eq!(reply.status, status);
        assert_eq!(reply.outcome, Some(Outcome::Released));
    }
    let fixed = read(
        app.clone()
            .oneshot(json_order("k", "{\"item\":\"tea\"}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(fixed.status, StatusCode::CREATED);
    assert_eq!(fixed.outcome, Some(Outcome::Recorded));
    let again = read(
        app.oneshot(json_order("k", "{\"item\":\"tea\"}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(again.outcome, Some(Outcome::Replayed));
    assert_eq!(again.text(), "order 1");
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn a_responses_disposition_wins_over_the_policy() {
    let counter = Counter::new();
    // A policy that keeps nothing, and a handler that wants its 201 kept.
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .record_policy(|_: &ResponseHead<'_>| Disposition::Release);
    let mut svc = scripted(
        layer.clone(),
        &counter,
        vec![(201, Some(Disposition::Record)), (201, None)],
    );
    let first = send(&mut svc, post("k", "{}")).await;
    assert_eq!(first.outcome, Some(Outcome::Recorded));
    let retry = send(&mut svc, post("k", "{}")).await;
    assert_eq!(retry.outcome, Some(Outcome::Replayed));
    let other = send(&mut svc, post("j", "{}")).await;
    assert_eq!(other.outcome, Some(Outcome::Released), "the policy decides");
    assert_eq!(counter.get(), 2);
}

#[tokio::test]
async fn the_policy_sees_a_grpc_status_in_the_trailers() {
    // A policy that keeps UNAVAILABLE (14), which the default releases.
    let policy = |head: &ResponseHead<'_>| match head.grpc_status() {
        Some(14) => Disposition::Record,
        _ => DefaultRecordPolicy.disposition(head),
    };
    let counter = Counter::new();
    let c = counter.clone();
    let mut svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()).record_policy(policy))
        .service_fn(move |_req: HandlerReq| {
            c.hit();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "14".parse().unwrap());
            let body = Frames::new(&[b"msg"], Some(trailers));
            async move { Ok::<_, Infallible>(Response::new(body)) }
        });
    let first = send(&mut svc, post("k", "{}")).await;
    assert_eq!(first.outcome, Some(Outcome::Recorded));
    let retry = send(&mut svc, post("k", "{}")).await;
    assert_eq!(retry.outcome, Some(Outcome::Replayed));
    assert_eq!(retry.trailers.as_ref().unwrap()["grpc-status"], "14");
    assert_eq!(counter.get(), 1);
}
