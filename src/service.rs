//! [`Idempotency`], the service the layer makes: it classifies each request and hands the
//! protected ones to the [flow](crate::flow).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::{RequestBody, ResponseBody};
use crate::config::Config;
use crate::extensions::Outcome;
use crate::flow::coalesce::Inflight;
use crate::flow::{Execution, Flow, scope};
use crate::future::ResponseFuture;
use crate::grpc::is_grpc;
use crate::key::parse_key;
use crate::observe;
use crate::problem::ProblemKind;
use crate::store::{Store, StoreKey};

/// Middleware that runs each keyed request at most once and replays its response to retries.
///
/// Made by [`IdempotencyLayer`](crate::IdempotencyLayer), or by [`new`](Self::new) with the
/// default settings; see the [crate docs](crate) for the flow.
pub struct Idempotency<S, St> {
    inner: S,
    /// The store and the configuration behind one `Arc`: axum clones the service for every
    /// request, passed-through ones included, and one shared count is cheaper to move than two.
    shared: Arc<Shared<St>>,
}

struct Shared<St> {
    store: Arc<St>,
    config: Arc<Config>,
    /// The keys this layer is claiming or running, for in-process coalescing.
    inflight: Arc<Inflight>,
}

impl<S, St> Idempotency<S, St> {
    /// `inner` behind the layer over `store` with the default settings; the same as
    /// `IdempotencyLayer::new(store).layer(inner)`.
    pub fn new(inner: S, store: St) -> Self {
        let (store, config) = (Arc::new(store), Arc::new(Config::default()));
        Self::from_parts(inner, store, config, Arc::default())
    }

    pub(crate) fn from_parts(
        inner: S,
        store: Arc<St>,
        config: Arc<Config>,
        inflight: Arc<Inflight>,
    ) -> Self {
        let shared = Shared {
            store,
            config,
            inflight,
        };
        Self {
            inner,
            shared: Arc::new(shared),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, St> Clone for Idempotency<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for Idempotency<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .field("store", &std::any::type_name::<St>())
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S, St>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Send,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Send,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let Shared {
            store,
            config,
            inflight,
        } = &*self.shared;
        if !config.methods.contains(req.method()) {
            observe::outcome(Outcome::Bypassed, None);
            return ResponseFuture::bypassed(self.inner.call(req.map(RequestBody::new)));
        }
        let rejected = match parse_key(req.headers(), &config.header, config.max_key_len) {
            Ok(Some(key)) => {
                let grpc = is_grpc(req.headers());
                let (parts, body) = req.into_parts();
                let key = match scope(config, &parts) {
                    Ok(scope) => StoreKey::from_owned(scope.as_deref(), key),
                    Err(refused) => {
                        observe::outcome(refused.outcome(), None);
                        return ResponseFuture::ready(config.problems.respond(refused, grpc));
                    }
                };
                // The instance that was polled ready goes with the request.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                // Duplicates are coalesced in process where a store call crosses the network.
                let coalesce = config.coalesce.unwrap_or_else(|| store.is_remote());
                let inflight = coalesce.then(|| Arc::clone(inflight));
                let flow = Flow::new(store, config, inflight, grpc);
                let span = observe::request_span();
                // `log_id` allocates: only for a span someone listens to.
                if !span.is_disabled() {
                    span.record("key", tracing::field::display(key.log_id()));
                }
                let claim = Box::pin(flow.run(inner, parts, body, key));
                return ResponseFuture::protected(Execution::new(claim, span));
            }
            Ok(None) if !config.require_key => {
                observe::outcome(Outcome::Bypassed, None);
                return ResponseFuture::bypassed(self.inner.call(req.map(RequestBody::new)));
            }
            Ok(None) => ProblemKind::MissingKey,
            Err(e) => ProblemKind::InvalidKey(e),
        };
        observe::outcome(rejected.outcome(), None);
        ResponseFuture::ready(config.problems.respond(rejected, is_grpc(req.headers())))
    }
}
