//! The layer in a plain hyper 1 server (hyper-util `auto`, HTTP/1.1 and HTTP/2 on one port),
//! over a real socket, with hyper's own client on a fresh connection per request.

mod common;

use common::drop_probe::DropProbe;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::ServiceBuilder;
use tower_idempotency::body::RequestBody;
use tower_idempotency::store::MemoryStore;
use tower_idempotency::{DetachedTasks, IdempotencyLayer};

/// The bound on every await that could hang.
const LIMIT: Duration = Duration::from_secs(10);

async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut).await.expect("timed out")
}

#[derive(Debug, Clone, Copy)]
enum Version {
    Http1,
    Http2,
}

type Body = BoxBody<Bytes, Infallible>;

/// A body of `data`, then `trailers` if there are any.
fn body(data: impl Into<Bytes>, trailers: Option<HeaderMap>) -> Body {
    let mut frames = vec![Ok(Frame::data(data.into()))];
    frames.extend(trailers.map(|t| Ok(Frame::trailers(t))));
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

/// The handler's state: how often it ran, and a gate for requests marked `x-hold`.
#[derive(Debug, Clone, Default)]
struct App {
    runs: Arc<AtomicUsize>,
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

impl App {
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

/// Creates an order: `201` with `ord-N:<body>` and `x-order-id: ord-N`; the request's trailers
/// come back as response trailers, with `x-order-id` added.
async fn create_order(
    app: App,
    req: Request<RequestBody<Incoming>>,
) -> Result<Response<Body>, Infallible> {
    let run = app.runs.fetch_add(1, Ordering::SeqCst) + 1;
    if req.headers().contains_key("x-hold") {
        app.entered.notify_one();
        app.release.notified().await;
    }
    let collected = req.into_body().collect().await.expect("request body");
    let id = HeaderValue::from_str(&format!("ord-{run}")).unwrap();
    let trailers = collected.trailers().cloned().map(|mut t| {
        t.insert("x-order-id", id.clone());
        t
    });
    let mut data = format!("ord-{run}:").into_bytes();
    data.extend_from_slice(&collected.to_bytes());
    let mut res = Response::new(body(data, trailers));
    *res.status_mut() = StatusCode::CREATED;
    res.headers_mut().insert("x-order-id", id);
    Ok(res)
}

/// A running server.
struct Harness {
    addr: SocketAddr,
    app: App,
    /// Notified when hyper drops a call before it finished.
    dropped: Arc<Notify>,
    detached: DetachedTasks,
}

/// Serves `create_order` behind the layer as the example does: `service_fn`, the layer,
/// `TowerToHyperService`, hyper-util's `auto` connection builder.
async fn start() -> Harness {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = App::default();
    let dropped = Arc::new(Notify::new());
    let layer = IdempotencyLayer::new(MemoryStore::new());
    let detached = layer.detached_tasks();
    let probe = Arc::clone(&dropped);
    let handler = app.clone();
    let service = ServiceBuilder::new()
        .map_future(move |call| {
            let guard = DropProbe::new(Arc::clone(&probe));
            async move {
                let out = call.await;
                guard.disarm();
                out
            }
        })
        .layer(layer)
        .service_fn(move |req| create_order(handler.clone(), req));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Harness {
        addr,
        app,
        dropped,
        detached,
    }
}

/// A response as it came over the wire.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

/// `POST /orders` on a connection of its own, which ends with the call (or when the task that
/// runs it is aborted).
async fn post(
    addr: SocketAddr,
    version: Version,
    key: &str,
    extra: &[(&'static str, &'static str)],
    data: &'static str,
    trailers: Option<HeaderMap>,
) -> Answer {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let mut request = Request::post(format!("http://{addr}/orders")).header("idempotency-key", key);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let request = request.body(body(data, trailers)).unwrap();
    let (parts, collected) = match version {
        Version::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            drive(conn, async move {
                let (parts, body) = sender.send_request(request).await.unwrap().into_parts();
                (parts, body.collect().await.unwrap())
            })
            .await
        }
        Version::Http2 => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            drive(conn, async move {
                let (parts, body) = sender.send_request(request).await.unwrap().into_parts();
                (parts, body.collect().await.unwrap())
            })
            .await
        }
    };
    let trailers = collected.trailers().cloned();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// Runs `call` while driving its connection `conn`; the connection closes when `call` is done.
async fn drive<C, T>(conn: C, call: impl Future<Output = T>) -> T
where
    C: Future<Output = hyper::Result<()>>,
{
    tokio::select! {
        biased;
        out = call => out,
        res = conn => panic!("the connection ended before the response: {res:?}"),
    }
}

fn problem_type(answer: &Answer) -> String {
    assert_eq!(
        answer.headers["content-type"], "application/problem+json",
        "{answer:?}"
    );
    let problem: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    problem["type"]
        .as_str()
        .unwrap()
        .rsplit('#')
        .next()
        .unwrap()
        .to_owned()
}

async fn retry_gets_the_replay(version: Version) {
    let h = start().await;
    let first = bounded(post(h.addr, version, "k-1", &[], "book", None)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body, "ord-1:book");
    assert!(!first.headers.contains_key("idempotent-replayed"));

    let replay = bounded(post(h.addr, version, "k-1", &[], "book", None)).await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.body, first.body);
    assert_eq!(replay.headers["x-order-id"], "ord-1");
    assert_eq!(replay.headers["idempotent-replayed"], "true");

    let other = bounded(post(h.addr, version, "k-2", &[], "book", None)).await;
    assert_eq!(other.body, "ord-2:book");
    assert_eq!(h.app.runs(), 2);
}

async fn duplicate_while_running_gets_409(version: Version) {
    let h = start().await;
    let addr = h.addr;
    let first = tokio::spawn(async move {
        post(addr, version, "k-busy", &[("x-hold", "1")], "book", None).await
    });
    bounded(h.app.entered.notified()).await;

    let duplicate = bounded(post(
        addr,
        version,
        "k-busy",
        &[("x-hold", "1")],
        "book",
        None,
    ))
    .await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    assert_eq!(duplicate.headers["retry-after"], "1");
    assert_eq!(problem_type(&duplicate), "in-progress");

    h.app.release.notify_one();
    let first = bounded(first).await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    let replay = bounded(post(
        addr,
        version,
        "k-busy",
        &[("x-hold", "1")],
        "book",
        None,
    ))
    .await;
    assert_eq!(replay.body, first.body);
    assert_eq!(h.app.runs(), 1);
}

async fn changed_body_gets_422(version: Version) {
    let h = start().await;
    let first = bounded(post(h.addr, version, "k-change", &[], "book", None)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let changed = bounded(post(h.addr, version, "k-change", &[], "lamp", None)).await;
    assert_eq!(changed.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem_type(&changed), "mismatch");
    assert_eq!(h.app.runs(), 1);
}

async fn disconnect_then_retry_replays_one_execution(version: Version) {
    let h = start().await;
    let addr = h.addr;
    let gone = tokio::spawn(async move {
        post(addr, version, "k-gone", &[("x-hold", "1")], "book", None).await
    });
    bounded(h.app.entered.notified()).await;
    // The client goes away: its task and its connection end while the handler is held.
    gone.abort();
    assert!(bounded(gone).await.unwrap_err().is_cancelled());
    bounded(h.dropped.notified()).await;

    // The handler runs on, detached, and records its result.
    h.app.release.notify_one();
    bounded(h.detached.drain()).await;

    let retry = bounded(post(
        addr,
        version,
        "k-gone",
        &[("x-hold", "1")],
        "book",
        None,
    ))
    .await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.body, "ord-1:book");
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(h.app.runs(), 1);
}

macro_rules! both_versions {
    ($($name:ident),* $(,)?) => {
        mod http1 {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Version::Http1).await;
                }
            )*
        }
        mod http2 {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Version::Http2).await;
                }
            )*
        }
    };
}

both_versions!(
    retry_gets_the_replay,
    duplicate_while_running_gets_409,
    changed_body_gets_422,
    disconnect_then_retry_replays_one_execution,
);

/// Over HTTP/2, request trailers reach the handler and response trailers are replayed byte for
/// byte.
#[tokio::test]
async fn http2_trailers_are_handed_on_and_replayed() {
    let h = start().await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("sha256=abc"));
    trailers.append("x-note", HeaderValue::from_static("one"));
    trailers.append("x-note", HeaderValue::from_static("two"));

    let first = bounded(post(
        h.addr,
        Version::Http2,
        "k-t",
        &[],
        "book",
        Some(trailers.clone()),
    ))
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let mut expected = trailers.clone();
    expected.insert("x-order-id", HeaderValue::from_static("ord-1"));
    assert_eq!(first.trailers.as_ref(), Some(&expected));

    let replay = bounded(post(
        h.addr,
        Version::Http2,
        "k-t",
        &[],
        "book",
        Some(trailers),
    ))
    .await;
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.body, first.body);
    let (first_t, replay_t) = (first.trailers.unwrap(), replay.trailers.unwrap());
    assert_eq!(replay_t, first_t);
    for (name, value) in &first_t {
        let replayed: Vec<&[u8]> = replay_t
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert!(replayed.contains(&value.as_bytes()), "{name}");
    }
    assert_eq!(h.app.runs(), 1);
}
