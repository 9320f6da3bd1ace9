//! One protected request's way through the layer, a step per file.
//!
//! [`Idempotency::call`](crate::Idempotency) parses the key and hands the request to
//! [`Flow::run`], which reads and fingerprints it, claims the key and either answers (a replay or
//! a problem) or hands back an execution to run. The response future drives that in an
//! [`Execution`], which also decides what a dropped response future means.
//!
//! | step | file |
//! | --- | --- |
//! | buffer the body and fingerprint the request | `read.rs` |
//! | claim the key or find who has it; read back ambiguous errors; wait; fail open | `claim.rs` |
//! | share one claim and one run among the duplicates of a key on this instance | `coalesce.rs` |
//! | answer a retry with the stored record | `replay.rs` |
//! | run the inner service, record or release | `execute.rs` |
//! | keep the lease alive while the handler runs and while its record is owed | `renew.rs` |
//! | re-send a `complete` or `release` whose effect is unknown, in the background | `settle.rs` |
//! | the timeout of every store call | `bounded.rs` |
//! | what a dropped response future means: detach, release, or nothing | `execution.rs` |

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Request, Response, header, request};
use http_body::Body;
use tower_service::Service;

use crate::body::{RequestBody, ResponseBody};
use crate::config::Config;
use crate::extensions::{IdempotencyClaim, Outcome};
use crate::observe;
use crate::problem::ProblemKind;
use crate::store::{OwnerToken, Store, StoreKey};

mod bounded;
mod claim;
pub(crate) mod coalesce;

use self::coalesce::Inflight;
mod execute;
mod execution;
mod read;
mod renew;
mod replay;
mod settle;

use self::claim::Claim;
use self::execute::Owner;
pub(crate) use self::execution::Execution;
use self::execution::{Claimed, Step};

/// One protected request's way through the layer: what every step needs.
pub(crate) struct Flow<St> {
    store: Arc<St>,
    config: Arc<Config>,
    /// The layer's in-flight keys, when duplicates are coalesced in process.
    inflight: Option<Arc<Inflight>>,
    /// Whether the request is a gRPC call, answered with gRPC statuses.
    grpc: bool,
    /// The request's own span (see [`observe::request_span`]), a child of the span the request
    /// was called in (an outer `TraceLayer`'s, say): the response future polls in it, and work
    /// that goes on after the future is gone (a detached handler, background re-sends) keeps it.
    pub(crate) span: tracing::Span,
}

impl<St> Clone for Flow<St> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            config: Arc::clone(&self.config),
            inflight: self.inflight.clone(),
            grpc: self.grpc,
            span: self.span.clone(),
        }
    }
}

impl<St: Store> Flow<St> {
    pub(crate) fn new(
        store: &Arc<St>,
        config: &Arc<Config>,
        inflight: Option<Arc<Inflight>>,
        grpc: bool,
    ) -> Self {
        Self {
            store: Arc::clone(store),
            config: Arc::clone(config),
            inflight,
            grpc,
            span: observe::request_span(),
        }
    }

    /// The protected request, from its parsed key to an answer or an execution to run.
    // Not an `async fn`: the request is taken apart before the future is made, so the future
    // keeps its parts once (an `async fn` keeps its arguments as well as what they became).
    pub(crate) fn run<S, ReqBody, ResBody>(
        self,
        mut inner: S,
        req: Request<ReqBody>,
        key: String,
    ) -> impl Future<Output = Step<ResBody, S::Error>>
    where
        S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Body + Send + 'static,
        ReqBody::Data: Send,
        ReqBody::Error: Send,
        ResBody: Body + Send + 'static,
        ResBody::Error: Send,
    {
        let (mut parts, body) = req.into_parts();
        let scope = self.scope(&parts);
        async move {
            let key = match scope {
                Ok(scope) => StoreKey::from_owned(scope.as_deref(), key),
                Err(kind) => return Step::Done(Ok(self.problem(kind))),
            };
            self.span
                .record("key", tracing::field::display(key.log_id()));
            let (body, fingerprint) = match self.read(&parts, body).await {
                Ok(read) => read,
                Err(kind) => return Step::Done(Ok(self.problem(kind))),
            };
            let token = OwnerToken::generate();
            let lead = match self.claim(&key, fingerprint.as_ref(), token).await {
                Claim::Owner(lead) => lead,
                Claim::Replay(record) => return Step::Done(Ok(self.replay(&key, &record))),
                Claim::Problem(kind) => return Step::Done(Ok(self.problem(kind))),
                Claim::Unprotected => {
                    tracing::warn!(key = %key.log_id(), "idempotency store failed; running unprotected");
                    self.outcome(Outcome::Unprotected);
                    let call = inner.call(Request::from_parts(parts, body));
                    let run = Box::pin(async move {
                        let mut res = call.await?.map(ResponseBody::new);
                        res.extensions_mut().insert(Outcome::Unprotected);
                        Ok(res)
                    });
                    return Step::Run { run, detach: None };
                }
            };
            parts
                .extensions
                .insert(IdempotencyClaim::new(key.clone(), token));
            let req = Request::from_parts(parts, body);
            let detach = self.config.detach.then(|| self.config.tasks.token());
            let owner = Owner::new(Claimed::new(self, key, token), fingerprint, lead);
            Step::Run {
                run: Box::pin(owner.execute(inner, req)),
                detach,
            }
        }
    }

    /// The request's scope: `Ok(None)` for global keys; the `missing-scope` problem when a scope
    /// function finds none and unscoped requests may not share keys.
    fn scope(&self, parts: &request::Parts) -> Result<Option<String>, ProblemKind> {
        let config = &self.config;
        let Some(scope) = &config.scope else {
            let credentials = parts.headers.contains_key(header::AUTHORIZATION)
                || parts.headers.contains_key(header::COOKIE);
            if credentials && !config.warned_unscoped.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "a protected request carries credentials but the idempotency layer has no \
                     scope: keys are global, so one user's key replays to another; set \
                     IdempotencyLayer::scope"
                );
            }
            return Ok(None);
        };
        match scope(parts) {
            Some(scope) => Ok(Some(scope)),
            None if config.unscoped_share_keys => Ok(None),
            None => Err(ProblemKind::MissingScope),
        }
    }

    /// A problem as the layer's response.
    fn problem<B: Body>(&self, kind: ProblemKind) -> Response<ResponseBody<B>> {
        self.outcome(kind.outcome());
        self.config.problems.respond(kind, self.grpc)
    }

    /// Reports the request's outcome: in its span, and to the metrics.
    fn outcome(&self, outcome: Outcome) {
        observe::outcome(outcome, Some(&self.span));
    }

    /// Adds the [expiry header](crate::IdempotencyLayer::expiry_header), when the layer has one,
    /// to a response about to be recorded: it is stored with the response, so that every replay
    /// tells the same time.
    fn expiry_header(&self, headers: &mut http::HeaderMap) {
        if let Some((name, retention)) = &self.config.expiry {
            let expires = std::time::SystemTime::now() + *retention;
            let value = httpdate::fmt_http_date(expires);
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                headers.insert(name.clone(), value);
            }
        }
    }
}
