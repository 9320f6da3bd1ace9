//! Issue 13 item 6: the optional header that tells a client when its recorded response expires.

mod common;

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{Counter, HandlerReq, post, send};
use http::{HeaderName, Response, StatusCode};
use http_body_util::Full;
use tower::ServiceBuilder;
use tower_idempotency::store::MemoryStore;
use tower_idempotency::{IdempotencyLayer, Outcome};

const HEADER: &str = "idempotency-expires";

/// A handler that answers the status in `x-status` (default 201).
fn app(
    layer: IdempotencyLayer<MemoryStore>,
    counter: &Counter,
) -> impl tower::Service<
    http::Request<Full<Bytes>>,
    Response = common::Res,
    Error = Infallible,
    Future: Send + 'static,
> + Clone {
    let counter = counter.clone();
    ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: HandlerReq| {
            let n = counter.hit();
            let status = req
                .headers()
                .get("x-status")
                .map_or(201, |v| v.to_str().unwrap().parse::<u16>().unwrap());
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from(format!("execution {n}"))))
                        .unwrap(),
                )
            }
        })
}

#[tokio::test]
async fn the_recorded_response_and_its_replays_tell_when_the_record_expires() {
    let retention = Duration::from_secs(3600);
    let store = MemoryStore::builder().ttl(retention).build();
    let layer =
        IdempotencyLayer::new(store).expiry_header(HeaderName::from_static(HEADER), retention);
    let counter = Counter::new();
    let mut svc = app(layer, &counter);

    let before = SystemTime::now();
    let first = send(&mut svc, post("k", "{}")).await;
    let after = SystemTime::now();
    assert_eq!(first.outcome, Some(Outcome::Recorded));
    let expires = httpdate::parse_http_date(first.header(HEADER).expect("the header")).unwrap();
    // An HTTP-date has whole seconds.
    assert!(
        expires + Duration::from_secs(1) >= before + retention,
        "{expires:?}"
    );
    assert!(expires <= after + retention, "{expires:?}");

    let replay = send(&mut svc, post("k", "{}")).await;
    assert!(replay.is_replay());
    assert_eq!(replay.header(HEADER), first.header(HEADER), "the same time");

    // A released response keeps nothing, so it tells no expiry.
    let mut failing = post("j", "{}");
    failing
        .headers_mut()
        .insert("x-status", "503".parse().unwrap());
    let released = send(&mut svc, failing).await;
    assert_eq!(released.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(released.outcome, Some(Outcome::Released));
    assert_eq!(released.header(HEADER), None);
    assert_eq!(counter.get(), 2);
}

#[tokio::test]
async fn off_by_default() {
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(MemoryStore::new()), &counter);
    let first = send(&mut svc, post("k", "{}")).await;
    assert_eq!(first.outcome, Some(Outcome::Recorded));
    assert!(
        first
            .headers
            .keys()
            .all(|name| !name.as_str().contains("expire")),
        "{:?}",
        first.headers
    );
}
