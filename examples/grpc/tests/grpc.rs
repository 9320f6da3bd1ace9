//! The layer in a tonic server, over a real socket: a tonic client and a raw HTTP/2 client (to
//! see the trailers byte for byte) against `orders.v1.Orders/CreateOrder`.
//!
//! The layer answers gRPC calls in gRPC: its problems arrive as trailers-only statuses
//! (`ABORTED` with `retry-after` for a call in progress, `FAILED_PRECONDITION` for a reused key,
//! `UNAVAILABLE` when the store is down), and retryable codes release the key, with no glue in
//! the server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use example_grpc::orders::orders_client::OrdersClient;
use example_grpc::orders::orders_server::{Orders, OrdersServer};
use example_grpc::orders::{CreateOrderRequest, Order};
use http::{HeaderMap, Request as HttpRequest, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status};
use tower::ServiceBuilder;
use tower_idempotency::fingerprint::Fingerprint;
use tower_idempotency::record::Record;
use tower_idempotency::store::MemoryStore;
use tower_idempotency::store::{
    Begin, Entry, OwnerToken, Store, StoreError, StoreErrorKind, StoreKey,
};
use tower_idempotency::{DetachedTasks, Disposition, IdempotencyLayer};

/// The bound on every await that could hang.
const LIMIT: Duration = Duration::from_secs(10);

async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut).await.expect("timed out")
}

/// The example's orders service, counting its executions.
///
/// Item `hold` signals `entered` and waits for `release`; item `flaky` fails with `UNAVAILABLE`
/// on the first execution; item `draft` succeeds with [`Disposition::Release`]; quantity 0 fails
/// with `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Default)]
struct Shop {
    runs: Arc<AtomicUsize>,
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

impl Shop {
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl Orders for Shop {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let CreateOrderRequest { item, quantity } = request.into_inner();
        if item == "hold" {
            self.entered.notify_one();
            self.release.notified().await;
        }
        if item == "flaky" && run == 1 {
            return Err(Status::unavailable("inventory is down"));
        }
        if quantity == 0 {
            return Err(Status::invalid_argument("quantity must be at least 1"));
        }
        let release = item == "draft";
        let mut response = Response::new(Order {
            id: format!("ord-{run}"),
            item,
            quantity,
        });
        if release {
            // A success that must not be replayed: the handler tells the layer itself.
            response.extensions_mut().insert(Disposition::Release);
        }
        Ok(response)
    }
}

/// A running server.
struct Harness {
    addr: SocketAddr,
    shop: Shop,
    /// Cancelled when the server drops a call before it finished.
    dropped: CancellationToken,
    detached: DetachedTasks,
}

/// Serves [`Shop`] on 127.0.0.1 behind `layer`, as the example does.
async fn start<St: Store>(layer: IdempotencyLayer<St>) -> Harness {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shop = Shop::default();
    let dropped = CancellationToken::new();
    let detached = layer.detached_tasks();
    let probe = dropped.clone();
    let layers = ServiceBuilder::new()
        .map_future(move |call| {
            // Cancels `dropped` if the call is dropped before it finished.
            let guard = probe.clone().drop_guard();
            async move {
                let out = call.await;
                guard.disarm();
                out
            }
        })
        .layer(layer);
    let server = Server::builder()
        .layer(layers)
        .add_service(OrdersServer::new(shop.clone()))
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(server);
    Harness {
        addr,
        shop,
        dropped,
        detached,
    }
}

fn grpc_layer() -> IdempotencyLayer<MemoryStore> {
    IdempotencyLayer::new(MemoryStore::new())
}

async fn connect(addr: SocketAddr) -> OrdersClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    OrdersClient::new(channel)
}

fn order(item: &str, quantity: u32) -> CreateOrderRequest {
    CreateOrderRequest {
        item: item.into(),
        quantity,
    }
}

fn keyed(key: &str, message: CreateOrderRequest) -> Request<CreateOrderRequest> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("idempotency-key", key.parse().unwrap());
    request
}

/// One call as it went over the wire.
#[derive(Debug)]
struct Raw {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

/// `CreateOrder` over a plain HTTP/2 connection, framed by hand, nothing decoded.
async fn raw_call(addr: SocketAddr, key: &str, message: &CreateOrderRequest) -> Raw {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let encoded = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(encoded.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&encoded);
    let request = HttpRequest::post(format!("http://{addr}/orders.v1.Orders/CreateOrder"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from(frame)))
        .unwrap();
    let (parts, body) = sender.send_request(request).await.unwrap().into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Raw {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// The header's value as bytes, to compare replays byte for byte.
fn value<'a>(map: &'a HeaderMap, name: &str) -> &'a [u8] {
    map.get(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .as_bytes()
}

#[tokio::test]
async fn retry_replays_the_message_and_trailers_byte_for_byte() {
    let h = start(grpc_layer()).await;
    let message = order("book", 2);

    let first = bounded(raw_call(h.addr, "k-1", &message)).await;
    assert_eq!(first.status, StatusCode::OK);
    let trailers = first.trailers.as_ref().expect("trailers");
    assert_eq!(value(trailers, "grpc-status"), b"0");
    let decoded = Order::decode(&first.body[5..]).unwrap();
    assert_eq!(decoded.id, "ord-1");

    let replay = bounded(raw_call(h.addr, "k-1", &message)).await;
    assert_eq!(replay.status, first.status);
    assert_eq!(replay.body, first.body);
    assert_eq!(replay.trailers, first.trailers);
    assert_eq!(
        value(&replay.headers, "content-type"),
        value(&first.headers, "content-type")
    );
    assert_eq!(value(&replay.headers, "idempotent-replayed"), b"true");

    // The tonic client reads the replay as the same message; the marker is in the metadata.
    let mut client = bounded(connect(h.addr)).await;
    let again = bounded(client.create_order(keyed("k-1", message.clone())))
        .await
        .unwrap();
    assert_eq!(again.metadata().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.into_inner(), decoded);

    // Another key runs again.
    let other = bounded(client.create_order(keyed("k-2", message)))
        .await
        .unwrap();
    assert_eq!(other.into_inner().id, "ord-2");
    assert_eq!(h.shop.runs(), 2);
}

#[tokio::test]
async fn recorded_error_status_replays_with_the_same_code_and_message() {
    let h = start(grpc_layer()).await;
    let message = order("book", 0);

    let mut client = bounded(connect(h.addr)).await;
    let first = bounded(client.create_order(keyed("k-err", message.clone())))
        .await
        .unwrap_err();
    assert_eq!(first.code(), Code::InvalidArgument);
    assert_eq!(first.message(), "quantity must be at least 1");

    let replay = bounded(client.create_order(keyed("k-err", message.clone())))
        .await
        .unwrap_err();
    assert_eq!(replay.code(), first.code());
    assert_eq!(replay.message(), first.message());
    assert_eq!(
        replay.metadata().get("idempotent-replayed").unwrap(),
        "true"
    );

    // On the wire: a trailers-only response, `grpc-status` and `grpc-message` in the headers,
    // replayed as they were.
    let raw = bounded(raw_call(h.addr, "k-raw-err", &message)).await;
    let raw_replay = bounded(raw_call(h.addr, "k-raw-err", &message)).await;
    assert_eq!(raw.status, StatusCode::OK);
    assert_eq!(value(&raw.headers, "grpc-status"), b"3");
    for name in ["grpc-status", "grpc-message", "content-type"] {
        assert_eq!(value(&raw_replay.headers, name), value(&raw.headers, name));
    }
    assert!(raw_replay.body.is_empty() && raw_replay.trailers.is_none());
    assert_eq!(h.shop.runs(), 2);
}

#[tokio::test]
async fn retryable_status_releases_the_key_and_runs_again() {
    let h = start(grpc_layer()).await;
    let mut client = bounded(connect(h.addr)).await;
    let message = order("flaky", 1);

    let first = bounded(client.create_order(keyed("k-flaky", message.clone())))
        .await
        .unwrap_err();
    assert_eq!(first.code(), Code::Unavailable);

    let second = bounded(client.create_order(keyed("k-flaky", message.clone())))
        .await
        .unwrap();
    assert!(second.metadata().get("idempotent-replayed").is_none());
    let created = second.into_inner();
    assert_eq!(created.id, "ord-2");

    let third = bounded(client.create_order(keyed("k-flaky", message)))
        .await
        .unwrap();
    assert_eq!(third.into_inner(), created);
    assert_eq!(h.shop.runs(), 2);
}

#[tokio::test]
async fn handler_disposition_extension_reaches_the_layer() {
    let h = start(grpc_layer()).await;
    let mut client = bounded(connect(h.addr)).await;
    for run in 1..=2 {
        let created = bounded(client.create_order(keyed("k-draft", order("draft", 1))))
            .await
            .unwrap();
        assert!(created.metadata().get("idempotent-replayed").is_none());
        assert_eq!(created.into_inner().id, format!("ord-{run}"));
    }
    assert_eq!(h.shop.runs(), 2);
}

#[tokio::test]
async fn duplicate_while_running_gets_aborted_then_the_replay() {
    let h = start(grpc_layer()).await;
    let message = order("hold", 1);

    let mut first_client = bounded(connect(h.addr)).await;
    let first_message = message.clone();
    let first = tokio::spawn(async move {
        first_client
            .create_order(keyed("k-busy", first_message))
            .await
    });
    bounded(h.shop.entered.notified()).await;

    let mut client = bounded(connect(h.addr)).await;
    let duplicate = bounded(client.create_order(keyed("k-busy", message.clone())))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::Aborted);
    assert_eq!(
        duplicate.message(),
        "a request with this idempotency key is still being processed; retry later"
    );
    assert_eq!(duplicate.metadata().get("retry-after").unwrap(), "1");

    h.shop.release.notify_one();
    let created = bounded(first).await.unwrap().unwrap().into_inner();
    let replay = bounded(client.create_order(keyed("k-busy", message)))
        .await
        .unwrap();
    assert_eq!(replay.into_inner(), created);
    assert_eq!(h.shop.runs(), 1);
}

#[tokio::test]
async fn changed_message_gets_failed_precondition() {
    let h = start(grpc_layer()).await;
    let mut client = bounded(connect(h.addr)).await;

    bounded(client.create_order(keyed("k-change", order("book", 1))))
        .await
        .unwrap();
    let changed = bounded(client.create_order(keyed("k-change", order("book", 5))))
        .await
        .unwrap_err();
    assert_eq!(changed.code(), Code::FailedPrecondition);
    assert_eq!(
        changed.message(),
        "this idempotency key was used for a different request; use a new key"
    );
    assert_eq!(h.shop.runs(), 1);
}

#[tokio::test]
async fn client_disconnect_then_retry_replays_one_execution() {
    let h = start(grpc_layer()).await;
    let message = order("hold", 1);

    // The first client goes away while its call runs: its task, channel and connection end.
    let mut gone = bounded(connect(h.addr)).await;
    let gone_message = message.clone();
    let call = tokio::spawn(async move { gone.create_order(keyed("k-gone", gone_message)).await });
    bounded(h.shop.entered.notified()).await;
    call.abort();
    assert!(bounded(call).await.unwrap_err().is_cancelled());
    bounded(h.dropped.cancelled()).await;

    // The handler runs on and records its result.
    h.shop.release.notify_one();
    bounded(h.detached.drain()).await;

    let mut client = bounded(connect(h.addr)).await;
    let retry = bounded(client.create_order(keyed("k-gone", message)))
        .await
        .unwrap();
    assert_eq!(retry.metadata().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(retry.into_inner().id, "ord-1");
    assert_eq!(h.shop.runs(), 1);
}

/// A store that is down: every call fails.
#[derive(Debug)]
struct DownStore;

impl Store for DownStore {
    async fn begin(
        &self,
        _: &StoreKey,
        _: Option<&Fingerprint>,
        _: OwnerToken,
        _: Duration,
    ) -> Result<Begin, StoreError> {
        Err(StoreError::new(StoreErrorKind::Unavailable))
    }

    async fn complete(&self, _: &StoreKey, _: OwnerToken, _: &Record) -> Result<(), StoreError> {
        Err(StoreError::new(StoreErrorKind::Unavailable))
    }

    async fn get(&self, _: &StoreKey) -> Result<Option<Entry>, StoreError> {
        Err(StoreError::new(StoreErrorKind::Unavailable))
    }

    async fn release(&self, _: &StoreKey, _: OwnerToken) -> Result<(), StoreError> {
        Err(StoreError::new(StoreErrorKind::Unavailable))
    }

    async fn renew(&self, _: &StoreKey, _: OwnerToken, _: Duration) -> Result<(), StoreError> {
        Err(StoreError::new(StoreErrorKind::Unavailable))
    }
}

#[tokio::test]
async fn store_down_gets_unavailable() {
    let h = start(IdempotencyLayer::new(DownStore)).await;
    let mut client = bounded(connect(h.addr)).await;
    let down = bounded(client.create_order(keyed("k-down", order("book", 1))))
        .await
        .unwrap_err();
    assert_eq!(down.code(), Code::Unavailable);
    assert_eq!(down.metadata().get("retry-after").unwrap(), "1");
    assert_eq!(h.shop.runs(), 0);
}
