//! The client side: a tower layer for outbound requests that gives each one an idempotency
//! key and retries it, with the **same** key and the same bytes, on the answers a retry can
//! change.
//!
//! A retry without the key it was first sent with is a second request; one on the wrong
//! answer (`422`, `400`) or that ignores `Retry-After` makes things worse.
//! [`IdempotentRetryLayer`] makes "retry with the same key" the only way its requests are
//! retried, over any `Service<http::Request<_>>` that answers `http::Response<_>`:
//! hyper-util's `Client`, a tonic `Channel`, or a stack around them. It is the client half of
//! [`IdempotencyLayer`](crate::IdempotencyLayer), and follows tower's `Retry` middleware
//! where that fits: tower's [retry budget](https://docs.rs/tower/0.5/tower/retry/budget/index.html) and [exponential
//! backoff](https://docs.rs/tower/0.5/tower/retry/backoff/index.html), `Error = S::Error`, the inner service cloned for each
//! attempt.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_idempotency::client::{IdempotentRetryLayer, ReplayBody, RetryReport, Stop};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // A server that is unavailable once, then creates the order.
//! let calls = Arc::new(AtomicUsize::new(0));
//! let seen = Arc::clone(&calls);
//! let server = tower::service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
//!     let n = seen.fetch_add(1, Ordering::SeqCst);
//!     let key = req.headers()["idempotency-key"].clone();
//!     async move {
//!         let mut res = Response::new(Full::new(Bytes::from("order 1")));
//!         *res.status_mut() = if n == 0 {
//!             StatusCode::SERVICE_UNAVAILABLE
//!         } else {
//!             StatusCode::CREATED
//!         };
//!         res.headers_mut().insert("x-key-seen", key);
//!         Ok::<_, Infallible>(res)
//!     }
//! });
//!
//! let client = ServiceBuilder::new()
//!     .layer(IdempotentRetryLayer::new().backoff(Duration::from_millis(1), Duration::from_millis(10)))
//!     .service(server);
//! let res = client
//!     .oneshot(Request::post("/orders").body(Full::new(Bytes::from("{\"item\":\"tea\"}"))).unwrap())
//!     .await
//!     .unwrap();
//!
//! assert_eq!(res.status(), StatusCode::CREATED);
//! let report = res.extensions().get::<RetryReport>().unwrap();
//! assert_eq!((report.attempts(), report.stop()), (2, Stop::Final));
//! // Both attempts carried the key the layer made.
//! assert_eq!(res.headers()["x-key-seen"], report.key().unwrap());
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # }
//! ```
//!
//! # The stack
//!
//! Over hyper-util's client, with a timeout for each attempt *inside* the layer (so a timeout
//! is retried) and one for the whole call outside it:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::ServiceBuilder;
//! use tower_idempotency::client::{IdempotentRetryLayer, ReplayBody};
//!
//! let http = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
//! let client = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(30)) // the whole call, retries included
//!     .layer(IdempotentRetryLayer::new())
//!     .timeout(Duration::from_secs(5)) // each attempt
//!     .service(http);
//! # let _ = client;
//! ```
//!
//! ## Under a tonic `Channel`
//!
//! tonic's `Channel` takes `http::Request<tonic::body::Body>`; wrap the layer's body on the
//! way in. (tonic is not a dependency of this crate, so this block is not compiled here; the
//! same stack is built and run over real sockets by the gRPC example package's
//! `tests/client_grpc.rs`.)
//!
//! ```rust,ignore
//! use tonic::body::Body;
//! use tonic::transport::Channel;
//! use tower::ServiceBuilder;
//! use tower_idempotency::client::{IdempotentRetryLayer, ReplayBody};
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = Channel::from_static("http://127.0.0.1:50051").connect().await?;
//! let channel = ServiceBuilder::new()
//!     .layer(IdempotentRetryLayer::new())
//!     .map_request(|req: http::Request<ReplayBody<Body>>| req.map(Body::new))
//!     .service(channel);
//! // let mut orders = OrdersClient::new(channel);
//! # let _ = channel;
//! # Ok(()) }
//! ```
//!
//! Every gRPC call is a `POST`, so every call gets a key in `idempotency-key` metadata (keep
//! one you set with `request.metadata_mut()`).
//!
//! # Keys
//!
//! A request of a covered method ([`methods`](IdempotentRetryLayer::methods), `POST` and
//! `PATCH` by default) without a key gets a fresh one: 128 random bits from the OS in 32
//! lowercase hex characters. A request that already has one keeps it, whatever its method:
//! that is how a handler passes on a key it
//! [derived](crate::IdempotencyClaim::derive) for a downstream call. Every attempt of a
//! request carries the same key, head, extensions, body bytes and trailers. Other requests pass
//! through once, untouched.
//!
//! # What is retried
//!
//! | answer | retried |
//! | --- | --- |
//! | an `Err` from the inner service: connection refused or reset, a dropped connection, a timeout of a timeout layer inside | yes |
//! | `408`, `429`, `500`, `502`, `503`, `504` and other `5xx` | yes, after `Retry-After` when given |
//! | `409` with `Retry-After` (the server layer's "in progress") | yes, after `Retry-After` |
//! | `409` without `Retry-After`, `501`, every `1xx`–`4xx` but `408` and `429` (so never `400`, `403`, `413`, `422`) | no |
//! | a retryable status whose `application/problem+json` body has the server layer's type [`response-not-stored`](crate::problem#response-not-stored) or `result-expired` | no: the request ran, and no retry can get its response |
//! | gRPC (`application/grpc`): decided from `grpc-status`, see [below](#grpc) | |
//!
//! The problem `type` is read from a body of at most 16 KiB; a larger body is handed on
//! whole, and the status decides.
//!
//! ## gRPC
//!
//! | `grpc-status` | retried |
//! | --- | --- |
//! | `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN` | yes, after `retry-after` when given |
//! | `ABORTED`, `RESOURCE_EXHAUSTED` | only with `retry-after` (the server layer's "in progress"; a rate limit) |
//! | `ALREADY_EXISTS` (the server layer's "response not stored"), `INVALID_ARGUMENT`, `FAILED_PRECONDITION`, every other code | no |
//! | no `grpc-status` in the headers (it comes in the trailers, after messages) | no: the response has begun |
//!
//! # How long it tries
//!
//! A retry waits the backoff's delay (exponential, with jitter), or the answer's `Retry-After`
//! when that is longer, capped at [`max_retry_after`](IdempotentRetryLayer::max_retry_after).
//! It stops, and hands back the last answer (an `Err` as it is, a response with a
//! [`RetryReport`]), when the next attempt would be past
//! [`max_attempts`](IdempotentRetryLayer::max_attempts), start after the
//! [`deadline`](IdempotentRetryLayer::deadline), or overdraw the
//! [`budget`](IdempotentRetryLayer::budget). When the inner service is not ready for a retry
//! and fails in `poll_ready`, that error is the answer. Dropping the response future stops
//! the attempts.
//!
//! # Caveats
//!
//! - **The body is buffered before the first attempt**, up to
//!   [`max_body`](IdempotentRetryLayer::max_body) (1 MiB). A body over it is sent once, as it
//!   streams, never retried, logged as a warning and marked [`Stop::BodyNotBuffered`]; so is
//!   a body that fails while it is read (the inner client then reports its error). Streaming
//!   gRPC calls: a client stream is sent when it ends, so a bidirectional call that waits for
//!   replies before it finishes its stream must not go through this layer.
//! - **A response is decided by its head**: a gRPC status in the trailers, or an HTTP body
//!   that fails midway, is handed on as it is. Only a retryable `problem+json` answer has its
//!   body read first (up to 16 KiB), to find its `type`; a server that stalls in that body
//!   stalls the call, which a timeout layer outside this one bounds.
//! - **Retries are only as safe as the server.** The server must deduplicate by the key
//!   ([`IdempotencyLayer`](crate::IdempotencyLayer), or an API such as Stripe's). Against a
//!   server that ignores the key, a retried `POST` after a lost response runs twice.
//!
//! # Tracing
//!
//! Each attempt that is retried is a `debug` event (attempt, delay, status or error); a body
//! not buffered is a `warn` event.

mod body;
mod future;
mod grpc;
mod layer;
mod policy;
mod report;
mod service;

pub use body::ReplayBody;
pub use future::ResponseFuture;
pub use layer::IdempotentRetryLayer;
pub use report::{RetryReport, Stop};
pub use service::IdempotentRetry;
