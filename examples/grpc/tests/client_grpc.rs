//! The client layer under a tonic `Channel`, end to end over real loopback sockets (HTTP/2):
//! tonic client → client layer → `Channel` → flaky proxy → server layer → tonic server.
//!
//! The server counts its executions itself, per `idempotency-key`, and answers what each one
//! produced.

// The flaky proxy the client example and the hyper tests use too.
#[allow(dead_code)]
#[path = "../../support/flaky_proxy.rs"]
mod flaky_proxy;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use example_grpc::orders::orders_client::OrdersClient;
use example_grpc::orders::orders_server::{Orders, OrdersServer};
use example_grpc::orders::{CreateOrderRequest, Order};
use flaky_proxy::{Counts, Fault, Served, flaky_proxy, serve};
use hyper_util::service::TowerToHyperService;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use tower::ServiceBuilder;
use tower::util::MapRequest;
use tower_idempotency::IdempotencyLayer;
use tower_idempotency::client::{
    IdempotentRetry, IdempotentRetryLayer, ReplayBody, RetryReport, Stop,
};
use tower_idempotency::store::MemoryStore;

/// The bound on every await that could hang.
const LIMIT: Duration = Duration::from_secs(30);

async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut).await.expect("timed out")
}

/// The orders service, counting its executions per key. Item `flaky` fails with `UNAVAILABLE`
/// on its first execution; quantity 0 fails with `INVALID_ARGUMENT`.
#[derive(Clone, Default)]
struct Shop {
    next: Arc<AtomicU64>,
    runs: Arc<Mutex<HashMap<String, Vec<String>>>>,
}

impl Shop {
    fn runs(&self, key: &str) -> Vec<String> {
        self.runs
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    fn total(&self) -> usize {
        self.runs.lock().unwrap().values().map(Vec::len).sum()
    }
}

#[tonic::async_trait]
impl Orders for Shop {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let key = request
            .metadata()
            .get("idempotency-key")
            .and_then(|k| k.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let CreateOrderRequest { item, quantity } = request.into_inner();
        let id = format!("order-{}", self.next.fetch_add(1, Ordering::SeqCst) + 1);
        let run = {
            let mut runs = self.runs.lock().unwrap();
            let runs = runs.entry(key).or_default();
            runs.push(id.clone());
            runs.len()
        };
        if quantity == 0 {
            return Err(Status::invalid_argument("quantity must be positive"));
        }
        if item == "flaky" && run == 1 {
            return Err(Status::unavailable("warming up"));
        }
        Ok(Response::new(Order { id, item, quantity }))
    }
}

/// The tonic server behind the server layer, on a loopback port.
async fn server(shop: &Shop) -> Served {
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .service(OrdersServer::new(shop.clone()));
    serve(TowerToHyperService::new(svc)).await.unwrap()
}

/// tonic's body on the way into the channel.
fn into_tonic(req: http::Request<ReplayBody<Body>>) -> http::Request<Body> {
    req.map(Body::new)
}

type Stack = IdempotentRetry<
    MapRequest<Channel, fn(http::Request<ReplayBody<Body>>) -> http::Request<Body>>,
>;

/// A flaky proxy to a fresh server, and a tonic client through the client layer to it.
async fn setup(shop: &Shop, drops: usize) -> (Served, Served, Arc<Counts>, OrdersClient<Stack>) {
    let server = server(shop).await;
    let (proxy, counts) = flaky_proxy(server.addr(), drops, Fault::AfterResponse)
        .await
        .unwrap();
    let channel = Endpoint::from_shared(format!("http://{}", proxy.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // The stack of the README: the layer, then tonic's body on the way into the channel.
    let channel = ServiceBuilder::new()
        .layer(
            IdempotentRetryLayer::new()
                .backoff(Duration::from_millis(5), Duration::from_millis(50)),
        )
        .map_request(into_tonic as fn(_) -> _)
        .service(channel);
    (server, proxy, counts, OrdersClient::new(channel))
}

fn order(item: &str, quantity: u32) -> CreateOrderRequest {
    CreateOrderRequest {
        item: item.into(),
        quantity,
    }
}

/// Concurrent calls whose first answers the proxy loses: each runs once, and its caller gets
/// that execution's order, replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_are_replayed_under_a_channel() {
    const CALLS: usize = 16;
    let shop = Shop::default();
    let (server, proxy, counts, client) = setup(&shop, 1).await;
    let answers = futures_util::future::join_all((0..CALLS).map(|_| {
        let mut client = client.clone();
        async move { bounded(client.create_order(order("tea", 1))).await }
    }))
    .await;

    for answer in answers {
        let answer = answer.expect("every call answered");
        let report = answer.extensions().get::<RetryReport>().unwrap().clone();
        let key = report.key().unwrap();
        assert_eq!(
            answer
                .metadata()
                .get("idempotency-key")
                .map(|v| v.to_str().unwrap()),
            None,
            "the key is a request header, not echoed"
        );
        assert_eq!(
            answer.metadata().get("idempotent-replayed").unwrap(),
            "true"
        );
        let runs = shop.runs(key);
        assert_eq!(runs.len(), 1, "key {key} ran {} times", runs.len());
        assert_eq!(answer.get_ref().id, runs[0]);
        assert_eq!((report.attempts(), report.stop()), (2, Stop::Final));
    }
    assert_eq!(shop.total(), CALLS);
    assert_eq!(counts.dropped.load(Ordering::SeqCst), CALLS);
    proxy.stop().await;
    server.stop().await;
}

/// `UNAVAILABLE` is retried (the server released the key; the retry runs again);
/// `INVALID_ARGUMENT` is not.
#[tokio::test]
async fn grpc_status_decides_the_retry() {
    let shop = Shop::default();
    let (server, proxy, counts, mut client) = setup(&shop, 0).await;

    let flaky = bounded(client.create_order(order("flaky", 1)))
        .await
        .expect("retried to success");
    let report = flaky.extensions().get::<RetryReport>().unwrap().clone();
    let runs = shop.runs(report.key().unwrap());
    assert_eq!(runs.len(), 2);
    assert_eq!(flaky.get_ref().id, runs[1]);
    assert_eq!(report.attempts(), 2);

    let invalid = bounded(client.create_order(order("tea", 0)))
        .await
        .expect_err("invalid argument");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(shop.total(), 3);
    assert_eq!(counts.forwarded.load(Ordering::SeqCst), 3);
    proxy.stop().await;
    server.stop().await;
}
