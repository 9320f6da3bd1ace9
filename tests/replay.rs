//! §4 Replay: the stored status, headers, body (byte for byte) and trailers, marked as a replay,
//! without the headers on the deny list.

mod common;

use std::convert::Infallible;

use common::{Counter, Frames, HandlerReq, app, assert_result_expired, post, send};
use http::{HeaderMap, HeaderName, Response, StatusCode};
use tower::{Service, ServiceBuilder};
use tower_idempotency::store::MemoryStore;
use tower_idempotency::{IdempotencyLayer, Outcome};

/// A body no text encoding would survive: every byte value, twice, in three chunks.
fn binary() -> Vec<u8> {
    (0..=255u8).chain(0..=255u8).collect()
}

/// A handler answering `202` with a binary body in chunks, many kinds of headers and trailers.
fn rich(
    layer: IdempotencyLayer<MemoryStore>,
    counter: &Counter,
) -> impl Service<
    http::Request<http_body_util::Full<bytes::Bytes>>,
    Response = Response<tower_idempotency::body::ResponseBody<Frames>>,
    Error = Infallible,
    Future: Send,
> + Clone {
    let counter = counter.clone();
    ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |_req: HandlerReq| {
            let n = counter.hit();
            async move {
                let body = binary();
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                trailers.insert("x-execution-trailer", n.to_string().parse().unwrap());
                let res = Response::builder()
                    .status(StatusCode::ACCEPTED)
                    .header("content-type", "application/octet-stream")
                    .header("location", "/orders/1")
                    .header("x-execution", n.to_string())
                    .header("x-multi", "a")
                    .header("x-multi", "b")
                    .header("set-cookie", "session=secret")
                    .header("date", "Tue, 01 Jan 2030 00:00:00 GMT")
                    .header("connection", "keep-alive")
                    .header("content-length", body.len().to_string())
                    .header("x-request-id", "req-1")
                    .body(Frames::new(
                        &[&body[..100], &body[100..400], &body[400..]],
                        Some(trailers),
                    ))
                    .unwrap();
                Ok::<_, Infallible>(res)
            }
        })
}

#[tokio::test]
async fn a_replay_has_the_same_status_headers_body_and_trailers() {
    let counter = Counter::new();
    let mut svc = rich(IdempotencyLayer::new(MemoryStore::new()), &counter);

    let first = send(&mut svc, post("k", "{}")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(first.outcome, Some(Outcome::Recorded));
    assert_eq!(first.body.as_ref(), binary().as_slice());
    assert!(!first.headers.contains_key("idempotent-replayed"));
    // The first client gets every header the handler set.
    assert_eq!(first.header("set-cookie"), Some("session=secret"));

    let again = send(&mut svc, post("k", "{}")).await;
    assert_eq!(again.outcome, Some(Outcome::Replayed));
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body, first.body, "byte-identical body");
    assert_eq!(again.trailers, first.trailers);
    let trailers = again.trailers.as_ref().expect("replayed trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-execution-trailer"], "1");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    for name in ["content-type", "location", "x-execution", "x-request-id"] {
        assert_eq!(again.headers.get(name), first.headers.get(name), "{name}");
    }
    let multi: Vec<_> = again.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["a", "b"]);
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn the_deny_list_is_not_replayed() {
    let counter = Counter::new();
    let mut svc = rich(IdempotencyLayer::new(MemoryStore::new()), &counter);

    send(&mut svc, post("k", "{}")).await;
    let again = send(&mut svc, post("k", "{}")).await;
    assert_eq!(again.outcome, Some(Outcome::Replayed));
    for name in ["set-cookie", "date", "connection", "content-length"] {
        assert!(!again.headers.contains_key(name), "{name} was replayed");
    }
    // Everything else is.
    let mut names: Vec<_> = again.headers.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "content-type",
            "idempotent-replayed",
            "location",
            "x-execution",
            "x-multi",
            "x-request-id"
        ]
    );
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn the_replay_marker_is_configurable() {
    let counter = Counter::new();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .replayed_header(HeaderName::from_static("x-replay"));
    let mut svc = rich(layer, &counter);

    let first = send(&mut svc, post("k", "{}")).await;
    assert!(!first.headers.contains_key("x-replay"));
    let again = send(&mut svc, post("k", "{}")).await;
    assert_eq!(again.header("x-replay"), Some("true"));
    assert!(!again.headers.contains_key("idempotent-replayed"));
    assert_eq!(again.body, first.body);
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn the_deny_list_is_configurable() {
    let counter = Counter::new();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .skipped_headers([HeaderName::from_static("x-request-id"), http::header::DATE]);
    let mut svc = rich(layer, &counter);

    send(&mut svc, post("k", "{}")).await;
    let again = send(&mut svc, post("k", "{}")).await;
    assert!(!again.headers.contains_key("x-request-id"));
    assert!(!again.headers.contains_key("date"));
    // The list replaces the default one: `Set-Cookie` is kept now.
    assert_eq!(again.header("set-cookie"), Some("session=secret"));
    assert_eq!(again.header("x-execution"), Some("1"));
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn skip_header_adds_to_the_default_deny_list() {
    let counter = Counter::new();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .skip_header(HeaderName::from_static("x-request-id"));
    let mut svc = rich(layer, &counter);

    send(&mut svc, post("k", "{}")).await;
    let again = send(&mut svc, post("k", "{}")).await;
    assert!(again.is_replay());
    assert!(!again.headers.contains_key("x-request-id"));
    // The defaults still hold.
    assert!(!again.headers.contains_key("set-cookie"));
    assert!(!again.headers.contains_key("date"));
    assert_eq!(again.header("x-execution"), Some("1"));
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn empty_and_redirect_responses_replay_too() {
    for (status, body) in [(204, ""), (303, "see /orders/7"), (200, "ok")] {
        let counter = Counter::new();
        let c = counter.clone();
        let mut svc = ServiceBuilder::new()
            .layer(IdempotencyLayer::new(MemoryStore::new()))
            .service_fn(move |_req: HandlerReq| {
                let n = c.hit();
                async move {
                    let res = Response::builder()
                        .status(status)
                        .header("location", "/orders/7")
                        .header("x-execution", n.to_string())
                        .body(http_body_util::Full::new(bytes::Bytes::from_static(
                            body.as_bytes(),
                        )))
                        .unwrap();
                    Ok::<_, Infallible>(res)
                }
            });
        let first = send(&mut svc, post("k", "{}")).await;
        let again = send(&mut svc, post("k", "{}")).await;
        assert_eq!(again.outcome, Some(Outcome::Replayed), "{status}");
        assert_eq!(again.status.as_u16(), status);
        assert_eq!(again.body, first.body, "{status}");
        assert_eq!(again.text(), body);
        assert_eq!(again.header("location"), Some("/orders/7"));
        assert_eq!(again.trailers, None, "{status}");
        assert_eq!(counter.get(), 1, "{status}");
    }
}

/// Serves `post("k")` over real HTTP/1.1 connections with hyper, from a handler that answers
/// with announced trailers (`Trailer: x-checksum`), and fetches it `times` times.
async fn over_http1(
    layer: IdempotencyLayer<MemoryStore>,
    times: usize,
) -> (Vec<common::Reply>, usize) {
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;

    let counter = Counter::new();
    let c = counter.clone();
    let svc = ServiceBuilder::new().layer(layer).service_fn(
        move |_req: http::Request<tower_idempotency::body::RequestBody<Incoming>>| {
            let n = c.hit();
            async move {
                let mut trailers = HeaderMap::new();
                trailers.insert("x-checksum", format!("sum-{n}").parse().unwrap());
                let res = Response::builder()
                    .status(StatusCode::CREATED)
                    .header("trailer", "x-checksum")
                    .body(Frames::new(&[b"streamed ", b"body"], Some(trailers)))
                    .unwrap();
                Ok::<_, Infallible>(res)
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    let mut replies = Vec::new();
    for _ in 0..times {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = post("k", "{}");
        req.headers_mut()
            .insert("host", "localhost".parse().unwrap());
        req.headers_mut().insert("te", "trailers".parse().unwrap());
        replies.push(common::read(sender.send_request(req).await.unwrap()).await);
    }
    server.abort();
    (replies, counter.get())
}

#[tokio::test]
async fn over_http1_a_replay_carries_its_trailers() {
    let (replies, executions) = over_http1(IdempotencyLayer::new(MemoryStore::new()), 2).await;
    let (first, again) = (&replies[0], &replies[1]);
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.text(), "streamed body");
    assert_eq!(first.trailers.as_ref().unwrap()["x-checksum"], "sum-1");
    assert!(again.is_replay());
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("trailer"), Some("x-checksum"));
    assert_eq!(
        again.trailers.as_ref().map(|t| &t["x-checksum"]),
        Some(&"sum-1".parse().unwrap()),
        "the replay lost its trailers on the wire"
    );
    assert_eq!(executions, 1);
}

/// A retry after the response's retention, while the store still remembers the key, gets the
/// `result-expired` problem and never runs again; a different request under the key is still a
/// mismatch; once the key's own retention ends too, the key is new.
#[tokio::test(start_paused = true)]
async fn a_retry_after_the_response_expired_gets_result_expired() {
    let store = MemoryStore::builder()
        .ttl(std::time::Duration::from_secs(60))
        .key_ttl(std::time::Duration::from_secs(3600))
        .build();
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(store), &counter);

    let first = send(&mut svc, post("k", "{\"amount\":1}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    tokio::time::advance(std::time::Duration::from_secs(61)).await;

    let late = send(&mut svc, post("k", "{\"amount\":1}")).await;
    assert_result_expired(&late);
    let other = send(&mut svc, post("k", "{\"amount\":2}")).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(counter.get(), 1);

    tokio::time::advance(std::time::Duration::from_secs(3600)).await;
    let again = send(&mut svc, post("k", "{\"amount\":1}")).await;
    assert_eq!(again.outcome, Some(Outcome::Recorded));
    assert_eq!(counter.get(), 2);
}
