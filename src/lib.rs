//! Tower middleware that makes retried HTTP and gRPC requests safe.
//!
//! [`IdempotencyLayer`] wraps any [`tower::Service`] over [`http::Request`]s. For every covered
//! request (`POST` and `PATCH` by default) that carries an `Idempotency-Key` header, it claims the
//! key in a [`store`], runs the inner service **once**, records the response, and answers
//! every retry with the recorded response instead of running again. It fits `.layer()` in axum,
//! tonic and hyper stacks.
//!
//! [`tower::Service`]: tower_service::Service
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
//! Problems are RFC 9457 `application/problem+json` ([`problem`]). Every response carries an
//! [`Outcome`] extension saying which row applied.
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
//! scope from the authenticated principal or tenant in every multi-user API.**
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
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `memory` | yes | [`store::MemoryStore`], the embedded, bounded, sharded store |
//! | `redis` | no | `store::RedisStore`, for many instances over Redis or Redis Cluster |
//! | `postgres` | no | `store::PostgresStore` over sqlx, with exactly-once effects for handlers that write to the same database |
//! | `test-util` | no | `conformance`, the store-conformance suite for your own stores |
//!
//! # Dependencies
//!
//! `tower-layer`/`tower-service` and `http`/`http-body` are the interfaces the layer implements;
//! `http-body-util` reads bodies; `bytes` carries them without copies; `sha2` computes
//! fingerprints and store keys; `tokio` provides timers, tasks and `Notify`; `tokio-util`'s
//! `TaskTracker` drains detached handlers; `futures-util` catches handler panics;
//! `pin-project-lite` pins the public future and bodies; `getrandom` seeds owner tokens;
//! `tracing` logs; `redis` (optional) talks to Redis; `sqlx` (optional) talks to PostgreSQL.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod conformance;
mod extensions;
pub mod fingerprint;
mod future;
pub mod key;
mod layer;
pub mod policy;
pub mod problem;
pub mod record;
mod service;
pub mod store;

pub use crate::extensions::{IdempotencyClaim, Outcome};
pub use crate::future::ResponseFuture;
pub use crate::layer::{DetachedTasks, IdempotencyLayer};
pub use crate::policy::Disposition;
pub use crate::service::Idempotency;
