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
        }
    }

    /// The protected request, from its scoped key to an answer or an execution to run. The
    /// service takes the request apart and scopes its key first, so a refused request makes no
    /// future at all.
    // Not an `async fn`: an `async fn`'s future keeps its arguments as well as the locals they
    // are moved into, 320 bytes more here; this one keeps them once, and stays under glibc's
    // 1 032-byte tcache chunks (see `claim_future_fits_a_small_allocation`).
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn run<S, ReqBody, ResBody>(
        self,
        mut inner: S,
        mut parts: request::Parts,
        body: ReqBody,
        key: StoreKey,
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
        async move {
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

    /// A problem as the layer's response.
    fn problem<B: Body>(&self, kind: ProblemKind) -> Response<ResponseBody<B>> {
        self.outcome(kind.outcome());
        self.config.problems.respond(kind, self.grpc)
    }

    /// Reports the request's outcome: in its span, and to the metrics. The request's span
    /// ([`observe::request_span`]) is the current one wherever the flow runs: the `Execution`
    /// enters it while it polls, and detached runs and re-sends are instrumented with it. (It is
    /// not kept in `Flow`: every protected request's future would carry it twice.)
    fn outcome(&self, outcome: Outcome) {
        observe::outcome(outcome, Some(&tracing::Span::current()));
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

/// The request's scope: `Ok(None)` for global keys; the `missing-scope` problem when a scope
/// function finds none and unscoped requests may not share keys. The service asks before it
/// makes a protected request's future, so a refused request costs none.
pub(crate) fn scope(
    config: &Config,
    parts: &request::Parts,
) -> Result<Option<String>, ProblemKind> {
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Full;

    use super::*;
    use crate::store::MemoryStore;

    /// glibc's per-thread cache serves chunks up to 1 032 bytes, requests up to 1 024: a boxed
    /// future over that takes malloc's slow path. Every protected request boxes its claim
    /// future, and a replay is only that: when it grew to 1 128 bytes, replays on the memory
    /// store got 8 % slower (BENCHMARKS.md, "Issue 9 refactor: before and after"). The handler
    /// here is the smallest there is, so this is a floor.
    #[test]
    fn the_claim_future_fits_a_small_allocation() {
        const TCACHE_MAX_REQUEST: usize = 1024;
        let store = Arc::new(MemoryStore::new());
        let config = Arc::new(Config::default());
        let inner = tower::service_fn(|_req: Request<RequestBody<Full<Bytes>>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        });
        let (parts, body) = Request::post("/")
            .body(Full::new(Bytes::new()))
            .unwrap()
            .into_parts();
        let flow = Flow::new(&store, &config, None, false);
        let claim = flow.run(inner, parts, body, StoreKey::new(None, "k"));
        let size = std::mem::size_of_val(&claim);
        assert!(size <= TCACHE_MAX_REQUEST, "claim future: {size} bytes");
    }
}
