//! A client that posts an order through a flaky network and still creates exactly one order.
//!
//! ```sh
//! cargo run --example client_retry --features client
//! ```
//!
//! In one process, on loopback: the quickstart's order server (`examples/quickstart.rs`, behind
//! `IdempotencyLayer`), a flaky proxy in front of it that loses the first two answers of each
//! idempotency key (it forwards the request, the server runs it, then the proxy drops the
//! connection), and a hyper-util client behind `IdempotentRetryLayer`. The client layer gives
//! the `POST` a key and retries it with that key: the third attempt gets the first execution's
//! order, replayed. It prints each attempt, and how many times the handler ran.

#[allow(dead_code)]
#[path = "quickstart.rs"]
mod quickstart;

#[allow(dead_code)]
#[path = "support/flaky_proxy.rs"]
mod flaky_proxy;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyper_util::service::TowerToHyperService;
use tower::util::MapResponseLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_idempotency::Outcome;
use tower_idempotency::client::{IdempotentRetryLayer, ReplayBody, RetryReport};
use tower_idempotency::store::{BoxStore, MemoryStore};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    // The server: the quickstart's app, counting the executions its layer reports.
    let executions = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&executions);
    let app = quickstart::app(BoxStore::new(MemoryStore::new())).layer(MapResponseLayer::new(
        move |res: Response| {
            if res
                .extensions()
                .get::<Outcome>()
                .is_some_and(|o| o.executed())
            {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            res
        },
    ));
    let server = flaky_proxy::serve(TowerToHyperService::new(app)).await?;
    let (proxy, _) =
        flaky_proxy::flaky_proxy(server.addr(), 2, flaky_proxy::Fault::AfterResponse).await?;
    println!(
        "server on {}, flaky proxy on {}\n",
        server.addr(),
        proxy.addr()
    );

    // The client: the retry layer over hyper-util's client. The two layers inside it print
    // each attempt and its answer.
    let attempt = Arc::new(AtomicUsize::new(0));
    let http = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let client = ServiceBuilder::new()
        .layer(IdempotentRetryLayer::new())
        .map_request(move |req: http::Request<ReplayBody<Full<Bytes>>>| {
            let n = attempt.fetch_add(1, Ordering::SeqCst) + 1;
            println!(
                "attempt {n}: {} {} idempotency-key: {:?}",
                req.method(),
                req.uri(),
                req.headers()["idempotency-key"]
            );
            req
        })
        .map_result(|result: Result<http::Response<_>, _>| {
            match &result {
                Ok(res) => println!("  answered {}", res.status()),
                Err(e) => println!("  failed: {e}"),
            }
            result
        })
        .service(http);

    let order = http::Request::post(format!("http://{}/orders", proxy.addr()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"item":"book","quantity":1}"#,
        )))?;
    let res = client.oneshot(order).await?;
    let report = res.extensions().get::<RetryReport>().cloned();
    let replayed = res.headers().contains_key("idempotent-replayed");
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();

    println!(
        "\nclient got {status} {} (replayed: {replayed})",
        String::from_utf8_lossy(&body)
    );
    if let Some(report) = report {
        println!("after {} attempts with one key", report.attempts());
    }
    let ran = executions.load(Ordering::SeqCst);
    println!("the handler ran {ran} time(s)");
    proxy.stop().await;
    server.stop().await;
    if ran == 1 {
        Ok(())
    } else {
        Err(format!("the handler ran {ran} times").into())
    }
}
