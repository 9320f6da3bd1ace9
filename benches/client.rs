//! What the client layer costs on a request it sends once: a `POST` of a 256-byte body
//! answered `201`, with and without `IdempotentRetryLayer`, both over hyper-util's client to a
//! plain hyper server on loopback (what a user pays) and in process against a `service_fn`
//! (the layer's own work: a key, the body buffered, the request rebuilt, a boxed future).

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::{Kind, Ratio, Target};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::runtime::Runtime;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_idempotency::client::{IdempotentRetryLayer, ReplayBody};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Res = Response<http_body_util::combinators::UnsyncBoxBody<Bytes, Error>>;
type Svc = BoxCloneSyncService<Request<Full<Bytes>>, Res, Error>;

/// The same `POST` with a 256-byte body each time.
fn order(url: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(vec![b'x'; common::BODY_LEN])))
        .expect("a request")
}

/// `201` with a 256-byte body.
async fn created<B>(_req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut res = Response::new(Full::new(Bytes::from(vec![b'y'; common::BODY_LEN])));
    *res.status_mut() = StatusCode::CREATED;
    Ok(res)
}

fn boxed<S, B>(svc: S) -> Svc
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Error>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Error>,
{
    BoxCloneSyncService::new(
        svc.map_response(|res: Response<B>| res.map(|b| b.map_err(Into::into).boxed_unsync()))
            .map_err(Into::into),
    )
}

/// The four clients: bare and layered, over loopback (to a server it starts) and in process.
fn clients(rt: &Runtime) -> [(&'static str, Svc); 4] {
    let addr = common::on_runtime(rt, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                    TokioIo::new(stream),
                    hyper::service::service_fn(created::<hyper::body::Incoming>),
                ));
            }
        });
        addr
    });
    let url: Arc<str> = format!("http://{addr}/orders").into();
    let layer = IdempotentRetryLayer::new();
    let bare_http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let layered_http =
        Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let with_url = move |svc: Svc| {
        let url = Arc::clone(&url);
        BoxCloneSyncService::new(svc.map_request(move |req: Request<Full<Bytes>>| {
            let (mut parts, body) = req.into_parts();
            parts.uri = url.parse().expect("a uri");
            Request::from_parts(parts, body)
        }))
    };
    [
        ("loopback_bare", with_url(boxed(bare_http))),
        (
            "loopback_layered",
            with_url(boxed(
                ServiceBuilder::new()
                    .layer(layer.clone())
                    .service(layered_http),
            )),
        ),
        (
            "inproc_bare",
            boxed(tower::service_fn(created::<Full<Bytes>>)),
        ),
        (
            "inproc_layered",
            boxed(
                ServiceBuilder::new()
                    .layer(layer)
                    .service_fn(created::<ReplayBody<Full<Bytes>>>),
            ),
        ),
    ]
}

/// Sends `n` requests one after another from a task of `rt`, reading every body; the wall time.
fn drive(rt: &Runtime, svc: &Svc, n: u64) -> Duration {
    let svc = svc.clone();
    rt.block_on(async move {
        tokio::spawn(async move {
            let start = Instant::now();
            for _ in 0..n {
                let res = svc
                    .clone()
                    .oneshot(order("/orders"))
                    .await
                    .expect("answered");
                assert_eq!(res.status(), StatusCode::CREATED);
                res.into_body().collect().await.expect("a body");
            }
            start.elapsed()
        })
        .await
        .expect("the driver panicked")
    })
}

fn main() {
    let since = SystemTime::now();
    let rt = common::runtime();
    let clients = clients(&rt);
    let mut c = common::criterion();
    let mut group = c.benchmark_group("client");
    for (name, svc) in &clients {
        group.bench_function(*name, |b| b.iter_custom(|n| drive(&rt, svc, n)));
    }
    group.finish();
    let svc = |name: &str| {
        &clients
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a client")
            .1
    };
    let pair = |variant: &str, baseline: &str| {
        common::paired_batches(
            &format!("client/{variant}"),
            since,
            Kind::Time,
            |n| drive(&rt, svc(baseline), n),
            |n| drive(&rt, svc(variant), n),
        )
    };
    common::report(
        "client",
        since,
        &[
            Ratio::time(
                "a POST over loopback, through the client layer",
                "client/loopback_layered",
                "client/loopback_bare",
                Target::None,
            )
            .with_paired(pair("loopback_layered", "loopback_bare")),
            Ratio::time(
                "a POST in process, through the client layer",
                "client/inproc_layered",
                "client/inproc_bare",
                Target::None,
            )
            .with_paired(pair("inproc_layered", "inproc_bare")),
        ],
    );
}
