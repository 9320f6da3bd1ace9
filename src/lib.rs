//! Tower middleware that makes retried HTTP and gRPC requests safe.
//!
//! [`IdempotencyLayer`] wraps any [`tower::Service`] over [`http::Request`]s. For every covered
//! request (`POST` and `PATCH` by default) that carries an `Idempotency-Key` header, it claims the
//! key in a [`store`], runs the inner service **once**, records the response, and answers
//! every retry with the recorded response instead of running again. It fits `.layer()` in axum,
//! tonic and hyper stacks.
//!
//! Its client half (feature `client`), `client::IdempotentRetryLayer`, gives outbound requests
//! a key and retries them with that same key over hyper-util's client or a tonic `Channel`; a
//! handler sends stable keys to the services it calls with [`IdempotencyClaim::derive`].
//!
//! [`tower::Service`]: https://docs.rs/tower-service/0.3/tower_service/trait.Service.html
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_idempotency::{IdempotencyLayer, body::RequestBody, store::MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let charges = Arc::new(AtomicUsize::new(0));
//! let counter = Arc::clone(&charges);
//! let svc = ServiceBuilder::new()
//!     .layer(IdempotencyLayer::new(MemoryStore::new()))
//!     .service_fn(move |_req: Request<RequestBody<Full<Bytes>>>| {
//!         let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
//!         async move {
//!             let mut res = Response::new(Full::new(Bytes::from(format!("charge {n}"))));
//!             *res.status_mut() = StatusCode::CREATED;
//!             Ok::<_, Infallible>(res)
//!         }
//!     });
//!
//! let charge = || {
//!     Request::post("/charges")
//!         .header("idempotency-key", "4b1e7d2a")
//!         .body(Full::new(Bytes::from_static(b"{\"amount\":100}")))
//!         .unwrap()
//! };
//! let first = svc.clone().oneshot(charge()).await.unwrap();
//! let retry = svc.clone().oneshot(charge()).await.unwrap();
//!
//! assert_eq!(retry.status(), StatusCode::CREATED);
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//! assert_eq!(retry.into_body().collect().await.unwrap().to_bytes(), "charge 1");
//! assert_eq!(first.into_body().collect().await.unwrap().to_bytes(), "charge 1");
//! assert_eq!(charges.load(Ordering::SeqCst), 1);
//! # }
//! ```
//!
//! # What a request gets
//!
//! | situation | answer | handler runs |
//! | --- | --- | --- |
//! | method not covered, or no key (and none [required](IdempotencyLayer::require_key)) | the handler's response | yes, unprotected |
//! | first request with a key | the handler's response, recorded before it is sent | once |
//! | retry after it completed | the recorded response, with `Idempotent-Replayed: true` | no |
//! | retry while the first still runs | `409` + `Retry-After` (or, with [`wait_for_in_flight`](IdempotencyLayer::wait_for_in_flight), the replay) | no |
//! | same key, different method/path/query/content type/body | `422` (configurable) | no |
//! | repeated, empty, too long or malformed key; key required but missing | `400` | no |
//! | request body over the fingerprint limit | `413` | no |
//! | the store fails or times out | `503` + `Retry-After` (or run unprotected with [`fail_open`](IdempotencyLayer::fail_open)) | no |
//! | handler answered `5xx`, `408`, `429`, returned `Err` or panicked | that answer; the claim is released | a retry runs again |
//! | response body over the cap | streamed; retries get a `409` ["response not stored"](problem#response-not-stored) | once |
//!
//! Problems are RFC 9457 `application/problem+json` ([`problem`]). Every response the layer
//! answers carries an [`Outcome`] extension saying which row applied; a passed-through
//! response carries none, which [`Outcome::of`] reads as [`Outcome::Bypassed`].
//!
//! # Observability
//!
//! - **Metrics** (feature `metrics`): a counter per [`Outcome`], a histogram of store-call
//!   latency, a gauge of detached handlers, counters of background re-sends and refused
//!   records, through the `metrics` facade; names and labels in the `metrics` module's table.
//!   `examples/quickstart.rs` serves them at `/metrics` for Prometheus.
//! - **Tracing**: every protected request runs in an `idempotency` span (INFO) with the fields
//!   `key` (the first 16 hex digits of the scoped key's SHA-256, never the key) and `outcome`
//!   (recorded when known). Detached handlers and background re-sends keep it, under the span
//!   the request was called in. The layer logs at `DEBUG` what is routine (a released claim),
//!   at `WARN` what an operator may want to look at (store failures, 503s, running
//!   unprotected), and at `ERROR` only what needs a human: the store refused a record (another
//!   owner claimed the key; the request may run again), a stored record is unreadable, or
//!   re-sends gave up after a whole lease.
//! - **Record policy**: [`IdempotencyLayer::record_policy`] decides record or release for every
//!   response ([`policy::RecordPolicy`], with the recipe "don't keep 4xx validation failures");
//!   [`IdempotencyLayer::expiry_header`] tells clients when their record expires.
//! - **Looking up and evicting a key**: [`store::Store::lookup`] reads a key's state,
//!   fingerprint and expiry (the stored response only when asked), and [`store::Store::evict`]
//!   removes a completed key so that its next request runs again; an in-progress claim only
//!   with [`store::Evict::Force`], whose docs say why that is dangerous.
//!   [`IdempotencyLayer::store_key`] files a client's key as the layer does.
//!   `examples/admin.rs` puts both behind an operator's token in an axum app.
//!
//! # Flow
//!
//! 1. **Key**: the `Idempotency-Key` header, as an RFC 8941 sf-string (`"abc"`) or a bare token
//!    (`abc`), 1–255 printable ASCII characters ([`key`]).
//! 2. **Scope**: an optional function of the request folds the user or tenant into the store key
//!    ([`IdempotencyLayer::scope`]).
//! 3. **Fingerprint**: SHA-256 over method, path, query, `content-type` and body; the body is
//!    buffered (up to 1 MiB) and handed on unchanged, trailers included ([`fingerprint`]).
//! 4. **Claim**: one atomic store operation ([`store::Store::begin`]). A store failure is
//!    ambiguous (the claim may have landed), so the layer reads the key back before it decides,
//!    and never lets the handler run twice.
//! 5. **Run**: the inner service runs to its end and records its result even when the client
//!    goes away: a dropped response future hands the execution to a task of its own
//!    ([`IdempotencyLayer::detach`]); the lease is renewed while it runs. The handler finds the [`IdempotencyClaim`] (key and owner token) in the request's
//!    extensions.
//! 6. **Record**: replayable responses ([`policy`]) are stored, owner-checked, *before* they are
//!    sent; retryable ones release the claim.
//!
//! # Security: scope your keys
//!
//! Keys are global unless you set a [scope](IdempotencyLayer::scope). In an API with more than one
//! user, a client who sends another user's key would get that user's stored response. **Set a
//! scope from the authenticated principal or tenant in every multi-user API.** The scope fails
//! closed: when the scope function finds no scope (an anonymous caller, or a layer placed before
//! authentication), the request gets a `403` ([`missing-scope`](problem#missing-scope)) and nothing
//! is claimed. Without a scope function, the first request that carries `Authorization` or
//! `Cookie` logs a warning.
//!
//! # What can still run a request twice
//!
//! Nothing on the client's side can: a client that gives up, or an outer timeout, at any point
//! (before the claim, while it is in flight, while the handler runs, after the response). Nor
//! can a store error whose effect is unknown, or a store outage **shorter than two thirds of the
//! lease**: the lease is renewed every third of it while the handler runs, while its record is
//! sent and while the record is re-sent in the background, and the owner's `complete` lands even
//! after its lease ran out, as long as nobody claimed the key since.
//!
//! What can: an owner that stops past its lease (a killed process, or a store unreachable from it
//! for longer than what is left of the lease), a store that loses what it acknowledged (Redis
//! without persistence, a failover to a replica that missed the record), a record evicted early
//! by a full store, and a retry after the store forgot the key (`MemoryStore`, `RedisStore`
//! and `PostgresStore` remember keys past their responses, for
//! [`key_ttl`](store::MemoryStoreBuilder::key_ttl),
//! [`with_key_ttl`](store::RedisStore::with_key_ttl) and
//! [`key_ttl`](store::PostgresStoreBuilder::key_ttl), 7 days by default).
//!
//! # Layer order
//!
//! The idempotency layer must run **after** authentication, so that the scope function finds the
//! user in the request's extensions:
//!
//! - axum's `Router::layer` wraps everything added before it, so the *last* `.layer()` runs
//!   *first*: write `.layer(idempotency).layer(auth)`. (`.layer(auth).layer(idempotency)` puts
//!   the layer outside authentication, and every request then gets the `403`.)
//! - `tower::ServiceBuilder` runs its layers top to bottom: write
//!   `ServiceBuilder::new().layer(auth).layer(idempotency)`.
//! - Timeouts (`tower::timeout`, `tower_http::timeout`) go outside the layer: a timeout drops the
//!   response future, and the handler then runs on detached and records its result
//!   ([`detach`](IdempotencyLayer::detach)), so the client's retry gets the replay.
//! - Panic catching (`tower_http::catch_panic`) may sit on either side: the layer releases the
//!   claim of a handler that panics, and a `500` made of the panic is released too.
//! - Concurrency and rate limits go inside the layer (nearer the handler), so that replays and
//!   `409`s are answered without taking a permit.
//! - tonic: interceptors run inside the service, after every tower layer of
//!   `Server::builder().layer(..)`, so an interceptor cannot feed the scope. Authenticate in a
//!   tower layer placed before the idempotency layer (it puts the principal into the request's
//!   extensions), or scope from request metadata that a trusted proxy sets.
//!
//! An axum service whose authentication middleware feeds the scope:
//!
//! ```
//! use axum::{Router, body::Body, extract::Request, middleware::{self, Next}, routing::post};
//! use http::StatusCode;
//! use tower::ServiceExt;
//! use tower_idempotency::{IdempotencyLayer, store::MemoryStore};
//!
//! #[derive(Clone)]
//! struct UserId(String);
//!
//! /// Puts the caller into the extensions; a real one checks a token.
//! async fn auth(mut req: Request, next: Next) -> Result<axum::response::Response, StatusCode> {
//!     let user = req.headers().get("x-user").and_then(|v| v.to_str().ok()).map(String::from);
//!     let user = user.ok_or(StatusCode::UNAUTHORIZED)?;
//!     req.extensions_mut().insert(UserId(user));
//!     Ok(next.run(req).await)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let idempotency = IdempotencyLayer::new(MemoryStore::new())
//!     .scope(|req| req.extensions.get::<UserId>().map(|u| u.0.clone()));
//! let app = Router::new()
//!     .route("/payments", post(|| async { (StatusCode::CREATED, "paid") }))
//!     .layer(idempotency) // runs second
//!     .layer(middleware::from_fn(auth)); // runs first
//!
//! let pay = |user: &str| {
//!     Request::post("/payments")
//!         .header("x-user", user)
//!         .header("idempotency-key", "pay-1")
//!         .body(Body::from("{}"))
//!         .unwrap()
//! };
//! let first = app.clone().oneshot(pay("alice")).await.unwrap();
//! assert_eq!(first.status(), StatusCode::CREATED);
//! let retry = app.clone().oneshot(pay("alice")).await.unwrap();
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//! // Another user with the same key is another key: it runs, no replay of Alice's payment.
//! let other = app.oneshot(pay("mallory")).await.unwrap();
//! assert!(other.headers().get("idempotent-replayed").is_none());
//! # }
//! ```
//!
//! # Body types
//!
//! The inner service receives `Request<`[`RequestBody<B>`](body::RequestBody)`>` where `B` is the
//! incoming body, and the layer answers `Response<`[`ResponseBody<R>`](body::ResponseBody)`>` where
//! `R` is the inner service's body. Both have `Data = Bytes` and keep `B`'s and `R`'s error
//! types and trailers: axum's `Router`, tonic's generated servers and hyper's `service_fn` accept
//! them as they are.
//!
//! # Features
//!
//! No feature is on by default: [`store::MemoryStore`] (the embedded, bounded, sharded store),
//! [`store::NoOpStore`] and [`store::BoxStore`] are always there.
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `redis` | no | `store::RedisStore`, for many instances over Redis or Redis Cluster |
//! | `postgres` | no | `store::PostgresStore` over sqlx, with exactly-once effects for handlers that write to the same database |
//! | `test-util` | no | `conformance`, the store-conformance suite for your own stores |
//! | `client` | no | `client`, the outbound layer that gives requests a key and retries them with it |
//! | `metrics` | no | counters, histograms and a gauge through the `metrics` facade (`metrics` module); no exporter |
//!
//! # Dependencies
//!
//! `tower-layer`/`tower-service` and `http`/`http-body` are the interfaces the layer implements;
//! `http-body-util` reads bodies; `bytes` carries them without copies; `sha2` computes
//! fingerprints and store keys; `hmac` keys the downstream keys a handler
//! [derives](IdempotencyClaim::derive); `tokio` provides timers, tasks and `Notify`; `tokio-util`'s
//! `TaskTracker` drains detached handlers; `futures-util` catches handler panics;
//! `pin-project-lite` pins the public future and bodies; `getrandom` seeds owner tokens (and the
//! client layer's keys and jitter);
//! `tracing` logs and spans; `httpdate` writes the optional expiry header (and the client layer
//! reads `Retry-After` dates with it); `redis` (optional) talks to Redis; `sqlx` (optional) talks to PostgreSQL; `metrics` (optional,
//! `metrics`) is the facade the layer reports to, whatever exporter the application installs;
//! `tower` (optional, `client`) gives the client layer its retry budget and backoff, and
//! `serde_json` (optional, `client`) reads a problem's `type`.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
mod config;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod conformance;
mod extensions;
pub mod fingerprint;
mod flow;
mod future;
mod grpc;
mod hex;
pub mod key;
mod layer;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod observe;
pub mod policy;
pub mod problem;
pub mod record;
mod service;
pub mod store;

pub use crate::extensions::{IdempotencyClaim, Outcome, RejectReason};
pub use crate::future::ResponseFuture;
pub use crate::layer::{DetachedTasks, IdempotencyLayer};
pub use crate::policy::Disposition;
pub use crate::service::Idempotency;
