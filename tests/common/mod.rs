//! Helpers shared by the integration tests: a counting handler, request builders, a reader that
//! collects a whole response, problem assertions, and a store wrapper that counts calls and
//! injects faults.
#![allow(dead_code)]

pub(crate) mod drop_probe;
pub(crate) mod logs;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Debug;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::sync::{Semaphore, mpsc, watch};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_idempotency::body::{RequestBody, ResponseBody};
use tower_idempotency::fingerprint::Fingerprint;
use tower_idempotency::record::Record;
use tower_idempotency::store::{
    Begin, Entry, OwnerToken, Store, StoreError, StoreErrorKind, StoreKey,
};
use tower_idempotency::{IdempotencyLayer, Outcome};

/// The response of a layered service whose handler answers with `Full<Bytes>`.
pub(crate) type Res = Response<ResponseBody<Full<Bytes>>>;

/// The request the handler of a layered service sees when clients send `Full<Bytes>`.
pub(crate) type HandlerReq = Request<RequestBody<Full<Bytes>>>;

/// The `type` URI prefix of the layer's problems.
pub(crate) const PROBLEM_BASE: &str =
    "https://docs.rs/tower-idempotency/latest/tower_idempotency/problem/index.html#";

/// Counts handler executions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counter(Arc<AtomicUsize>);

impl Counter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Counts one execution and returns its number, starting at 1.
    pub(crate) fn hit(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// The standard handler: counts the execution, reads the whole body and answers `201` with
/// `x-execution: n` and the body `execution n: <request body>`, so a replay is recognisable.
pub(crate) async fn echo<B>(
    counter: Counter,
    req: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible>
where
    B: Body,
    B::Error: Debug,
{
    let n = counter.hit();
    respond(n, req).await
}

/// [`echo`] that waits at `gate` after counting the execution.
pub(crate) async fn gated_echo<B>(
    counter: Counter,
    gate: Gate,
    req: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible>
where
    B: Body,
    B::Error: Debug,
{
    let n = counter.hit();
    gate.pass().await;
    respond(n, req).await
}

async fn respond<B>(n: usize, req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible>
where
    B: Body,
    B::Error: Debug,
{
    let body = req.into_body().collect().await.expect("request body");
    let text = format!(
        "execution {n}: {}",
        String::from_utf8_lossy(&body.to_bytes())
    );
    Ok(Response::builder()
        .status(StatusCode::CREATED)
        .header("content-type", "text/plain")
        .header("x-execution", n.to_string())
        .body(Full::new(Bytes::from(text)))
        .unwrap())
}

/// `layer` over the [`echo`] handler, built as users build services.
pub(crate) fn app<St>(
    layer: IdempotencyLayer<St>,
    counter: &Counter,
) -> impl Service<Request<Full<Bytes>>, Response = Res, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ 'static
where
    St: Store,
{
    let counter = counter.clone();
    ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: HandlerReq| echo(counter.clone(), req))
}

/// `layer` over [`gated_echo`]: every execution waits for `gate` to open.
pub(crate) fn gated_app<St>(
    layer: IdempotencyLayer<St>,
    counter: &Counter,
    gate: &Gate,
) -> impl Service<Request<Full<Bytes>>, Response = Res, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ 'static
where
    St: Store,
{
    let (counter, gate) = (counter.clone(), gate.clone());
    ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req: HandlerReq| gated_echo(counter.clone(), gate.clone(), req))
}

/// Holds handlers until it is opened, and tells the test when one arrives.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    open: Arc<watch::Sender<bool>>,
    arrived: Arc<Semaphore>,
}

impl Gate {
    pub(crate) fn new() -> Self {
        Self {
            open: Arc::new(watch::channel(false).0),
            arrived: Arc::new(Semaphore::new(0)),
        }
    }

    /// Waits here until the gate opens (at once when it is open).
    pub(crate) async fn pass(&self) {
        self.arrived.add_permits(1);
        let mut open = self.open.subscribe();
        open.wait_for(|open| *open).await.unwrap();
    }

    /// Waits until one more handler has arrived at the gate.
    pub(crate) async fn arrived(&self) {
        self.arrived.acquire().await.unwrap().forget();
    }

    /// Lets every waiting and later handler through.
    pub(crate) fn open(&self) {
        self.open.send_replace(true);
    }
}

/// `POST /orders` with a JSON body and `Idempotency-Key: key`.
pub(crate) fn post(key: &str, body: &str) -> Request<Full<Bytes>> {
    request(Method::POST, "/orders", Some(key), body)
}

/// A request with a JSON content type and, when given, an `Idempotency-Key`.
pub(crate) fn request(
    method: Method,
    uri: &str,
    key: Option<&str>,
    body: &str,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

/// A whole response, read.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
    pub(crate) outcome: Option<Outcome>,
}

impl Reply {
    pub(crate) fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Whether this is a replay, by the default marker header.
    pub(crate) fn is_replay(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }
}

/// Reads a whole response: head, body, trailers and the [`Outcome`] extension.
pub(crate) async fn read<B>(res: Response<B>) -> Reply
where
    B: Body,
    B::Error: Debug,
{
    let (parts, body) = res.into_parts();
    let collected = body.collect().await.expect("response body");
    let trailers = collected.trailers().cloned();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
        outcome: parts.extensions.get::<Outcome>().copied(),
    }
}

/// Drives one request through `svc` (`ready().call()`) and reads the response.
pub(crate) async fn send<S, R, B>(svc: &mut S, req: Request<R>) -> Reply
where
    S: Service<Request<R>, Response = Response<B>>,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    read(res).await
}

/// Asserts that `reply` is the layer's `application/problem+json` of kind `slug` with `status`,
/// and returns its JSON.
#[track_caller]
pub(crate) fn assert_problem(reply: &Reply, status: u16, slug: &str) -> serde_json::Value {
    assert_eq!(reply.status.as_u16(), status, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "{reply:?}"
    );
    let json: serde_json::Value = serde_json::from_slice(&reply.body).expect("problem JSON");
    assert_eq!(json["type"], format!("{PROBLEM_BASE}{slug}"), "{json}");
    assert_eq!(json["status"], status, "{json}");
    assert!(
        json["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{json}"
    );
    assert!(
        json["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{json}"
    );
    json
}

/// Asserts that `reply` is the `result-expired` problem of a key whose response expired: no
/// `Retry-After` (retrying cannot change the answer), outcome `ReplayUnavailable`.
pub(crate) fn assert_result_expired(reply: &Reply) {
    let json = assert_problem(reply, 409, "result-expired");
    assert_eq!(json["title"], "Result expired");
    assert!(!reply.headers.contains_key("retry-after"), "{reply:?}");
    assert_eq!(reply.outcome, Some(Outcome::ReplayUnavailable));
}

/// The store operations a [`Probe`] counts and can break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    Begin,
    Complete,
    Get,
    Release,
    Renew,
    Wait,
}

/// What a [`Probe`] does to an operation instead of forwarding it.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// Fails with this kind; the inner store is not called.
    Fail(StoreErrorKind),
    /// Never answers; the inner store is not called.
    Hang,
    /// Calls the inner store, then reports this error anyway (a write that landed but whose
    /// reply was lost).
    Land(StoreErrorKind),
    /// `begin` only: answers this without calling the inner store.
    Answer(Begin),
    /// Calls the inner store, then never answers (the write landed, its reply never comes).
    LandThenHang,
}

/// A store wrapper that counts calls per operation and injects [`Fault`]s.
#[derive(Debug, Default)]
pub(crate) struct Probe<St> {
    inner: St,
    calls: Mutex<HashMap<Op, usize>>,
    faults: Mutex<HashMap<Op, Fault>>,
}

impl<St> Probe<St> {
    pub(crate) fn new(inner: St) -> Arc<Self> {
        Arc::new(Self {
            inner,
            calls: Mutex::default(),
            faults: Mutex::default(),
        })
    }

    pub(crate) fn inner(&self) -> &St {
        &self.inner
    }

    pub(crate) fn calls(&self, op: Op) -> usize {
        self.calls.lock().unwrap().get(&op).copied().unwrap_or(0)
    }

    pub(crate) fn total_calls(&self) -> usize {
        self.calls.lock().unwrap().values().sum()
    }

    pub(crate) fn set(&self, op: Op, fault: Fault) {
        self.faults.lock().unwrap().insert(op, fault);
    }

    pub(crate) fn clear(&self, op: Op) {
        self.faults.lock().unwrap().remove(&op);
    }

    fn enter(&self, op: Op) -> Option<Fault> {
        *self.calls.lock().unwrap().entry(op).or_default() += 1;
        self.faults.lock().unwrap().get(&op).cloned()
    }

    async fn run<T>(
        &self,
        op: Op,
        forward: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.enter(op) {
            None | Some(Fault::Answer(_)) => forward.await,
            Some(Fault::Fail(kind)) => Err(StoreError::new(kind)),
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::Land(kind)) => {
                let _ = forward.await;
                Err(StoreError::new(kind))
            }
            Some(Fault::LandThenHang) => {
                let _ = forward.await;
                std::future::pending().await
            }
        }
    }
}

impl<St: Store> Store for Probe<St> {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: Option<&Fingerprint>,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        if let Some(Fault::Answer(begin)) = self.faults.lock().unwrap().get(&Op::Begin).cloned() {
            *self.calls.lock().unwrap().entry(Op::Begin).or_default() += 1;
            return Ok(begin);
        }
        let forward = self.inner.begin(key, fingerprint, token, lease);
        self.run(Op::Begin, forward).await
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        record: &Record,
    ) -> Result<(), StoreError> {
        let forward = self.inner.complete(key, token, record);
        self.run(Op::Complete, forward).await
    }

    async fn get(&self, key: &StoreKey) -> Result<Option<Entry>, StoreError> {
        let forward = self.inner.get(key);
        self.run(Op::Get, forward).await
    }

    async fn release(&self, key: &StoreKey, token: OwnerToken) -> Result<(), StoreError> {
        let forward = self.inner.release(key, token);
        self.run(Op::Release, forward).await
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let forward = self.inner.renew(key, token, lease);
        self.run(Op::Renew, forward).await
    }

    async fn wait(&self, key: &StoreKey, timeout: Duration) -> Result<(), StoreError> {
        let forward = self.inner.wait(key, timeout);
        self.run(Op::Wait, forward).await
    }
}

/// The entry the store holds for an unscoped `key`.
pub(crate) async fn entry<St: Store>(store: &St, key: &str) -> Option<Entry> {
    store.get(&StoreKey::new(None, key)).await.unwrap()
}

/// A request body the test feeds frame by frame; its length is unknown in advance.
#[derive(Debug)]
pub(crate) struct Pipe<E = Infallible> {
    rx: mpsc::Receiver<Result<Frame<Bytes>, E>>,
}

/// The sending half of a [`Pipe`]; dropping it ends the body.
#[derive(Debug)]
pub(crate) struct PipeSender<E = Infallible> {
    tx: mpsc::Sender<Result<Frame<Bytes>, E>>,
}

pub(crate) fn pipe<E>() -> (PipeSender<E>, Pipe<E>) {
    let (tx, rx) = mpsc::channel(16);
    (PipeSender { tx }, Pipe { rx })
}

impl<E> PipeSender<E> {
    pub(crate) async fn data(&self, data: &'static str) {
        let frame = Frame::data(Bytes::from_static(data.as_bytes()));
        assert!(self.tx.send(Ok(frame)).await.is_ok(), "body dropped");
    }

    pub(crate) async fn trailers(&self, trailers: HeaderMap) {
        let frame = Frame::trailers(trailers);
        assert!(self.tx.send(Ok(frame)).await.is_ok(), "body dropped");
    }

    pub(crate) async fn fail(self, error: E) {
        assert!(self.tx.send(Err(error)).await.is_ok(), "body dropped");
    }
}

impl<E> Body for Pipe<E> {
    type Data = Bytes;
    type Error = E;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        self.rx.poll_recv(cx)
    }
}

/// A response body of ready frames: data chunks, then trailers.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    frames: std::collections::VecDeque<Frame<Bytes>>,
}

impl Frames {
    pub(crate) fn new(chunks: &[&[u8]], trailers: Option<HeaderMap>) -> Self {
        let mut frames: std::collections::VecDeque<_> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::copy_from_slice(c)))
            .collect();
        frames.extend(trailers.map(Frame::trailers));
        Self { frames }
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.frames.pop_front().map(Ok))
    }
}

/// Scopes keys by the `x-tenant` header.
pub(crate) fn tenant_scope<St>(layer: IdempotencyLayer<St>) -> IdempotencyLayer<St> {
    layer.scope(|req| {
        req.headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    })
}

/// `req` sent by `tenant`.
pub(crate) fn as_tenant<B>(tenant: &str, mut req: Request<B>) -> Request<B> {
    req.headers_mut()
        .insert("x-tenant", tenant.parse().unwrap());
    req
}
