use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use http::{HeaderValue, Request, Response, request};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::body::{Buffered, RequestBody, ResponseBody, buffer};
use crate::extensions::{IdempotencyClaim, Outcome};
use crate::fingerprint::Fingerprint;
use crate::future::{Answer, BoxRun, ResponseFuture, Run, Step};
use crate::key::{OwnerToken, StoreKey, parse_key};
use crate::layer::{Config, Fingerprinting, IdempotencyLayer};
use crate::policy::Disposition;
use crate::problem::{Problem, ProblemKind, is_grpc};
use crate::record::Record;
use crate::store::{Begin, DEFAULT_POLL_INTERVAL, Entry, Store, StoreError, StoreErrorKind};

/// Middleware that runs each keyed request at most once and replays its response to retries.
///
/// Made by [`IdempotencyLayer`]; see the [crate docs](crate) for the flow.
pub struct Idempotency<S, St> {
    inner: S,
    store: Arc<St>,
    config: Arc<Config>,
}

impl<S, St> Idempotency<S, St> {
    pub(crate) fn from_parts(inner: S, store: Arc<St>, config: Arc<Config>) -> Self {
        Self {
            inner,
            store,
            config,
        }
    }

    /// A layer over `store`, as [`IdempotencyLayer::new`].
    pub fn layer(store: St) -> IdempotencyLayer<St> {
        IdempotencyLayer::new(store)
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
            store: Arc::clone(&self.store),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for Idempotency<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .field("store", &std::any::type_name::<St>())
            .field("config", &self.config)
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
        let config = &self.config;
        if !config.methods.contains(req.method()) {
            return ResponseFuture::bypassed(self.inner.call(req.map(RequestBody::new)));
        }
        let rejected = match parse_key(req.headers(), &config.header, config.max_key_len) {
            Ok(Some(key)) => {
                // The instance that was polled ready goes with the request.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let flow = Flow {
                    store: Arc::clone(&self.store),
                    config: Arc::clone(config),
                    grpc: is_grpc(req.headers()),
                };
                return ResponseFuture::protected(Box::pin(flow.run(inner, req, key)));
            }
            Ok(None) if !config.require_key => {
                return ResponseFuture::bypassed(self.inner.call(req.map(RequestBody::new)));
            }
            Ok(None) => ProblemKind::MissingKey,
            Err(e) => ProblemKind::InvalidKey(e),
        };
        ResponseFuture::ready(problem(config, rejected, is_grpc(req.headers())))
    }
}

/// One protected request's way through the layer.
struct Flow<St> {
    store: Arc<St>,
    config: Arc<Config>,
    /// Whether the request is a gRPC call, answered with gRPC statuses.
    grpc: bool,
}

impl<St> Clone for Flow<St> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            config: Arc::clone(&self.config),
            grpc: self.grpc,
        }
    }
}

/// Where the claim left the request.
enum Claim {
    /// This request owns the key.
    Owner,
    /// An earlier execution's record, to replay.
    Replay(Record),
    /// Answered with a problem, without running.
    Problem(ProblemKind),
    /// The store failed and the layer fails open.
    Unprotected,
}

/// Someone else's entry for the key.
enum Found {
    Completed(Record),
    InProgress(Option<Fingerprint>),
}

impl<St: Store> Flow<St> {
    // Not an `async fn`: the request is taken apart before the future is made, so the future
    // keeps its parts once (an `async fn` keeps its arguments as well as what they became).
    fn run<S, ReqBody, ResBody>(
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
        let scope = self.config.scope.as_ref().and_then(|f| f(&parts));
        let key = StoreKey::from_owned(scope.as_deref(), key);
        async move {
            let (body, fingerprint) = match self.fingerprint(&parts, body).await {
                Ok(read) => read,
                Err(kind) => return Step::Done(Ok(problem(&self.config, kind, self.grpc))),
            };
            let token = OwnerToken::generate();
            match self.claim(&key, fingerprint.as_ref(), token).await {
                Claim::Owner => {}
                Claim::Replay(record) => return Step::Done(Ok(self.replay(&key, &record))),
                Claim::Problem(kind) => {
                    return Step::Done(Ok(problem(&self.config, kind, self.grpc)));
                }
                Claim::Unprotected => {
                    tracing::warn!(key = %key.key(), "idempotency store failed; running unprotected");
                    let call = inner.call(Request::from_parts(parts, body));
                    return Step::Run(Run::attached(Box::pin(async move {
                        let mut res = call.await?.map(ResponseBody::new);
                        res.extensions_mut().insert(Outcome::Unprotected);
                        Ok(res)
                    })));
                }
            }
            parts
                .extensions
                .insert(IdempotencyClaim::new(key.clone(), token));
            let req = Request::from_parts(parts, body);
            let owner = Owner {
                flow: self.clone(),
                key,
                token,
                fingerprint,
                armed: true,
            };
            let run = Box::pin(owner.execute(inner, req));
            Step::Run(if self.config.detach {
                Run::detached(run, &self.config.tasks, detach::<ResBody, S::Error>)
            } else {
                Run::attached(run)
            })
        }
    }

    /// Buffers the body and fingerprints the request, unless fingerprints are off.
    async fn fingerprint<B: Body>(
        &self,
        parts: &request::Parts,
        body: B,
    ) -> Result<(RequestBody<B>, Option<Fingerprint>), ProblemKind> {
        let limit = self.config.max_request_body;
        let custom = match &self.config.fingerprint {
            Fingerprinting::Off => return Ok((RequestBody::new(body), None)),
            Fingerprinting::Default => None,
            Fingerprinting::Custom(f) => Some(f),
        };
        // Pinned in this future, not boxed: after an overflow the rest is not read.
        match buffer(std::pin::pin!(body), limit).await {
            Buffered::Complete { data, trailers } => {
                let fingerprint = match custom {
                    Some(f) => f(parts, &data),
                    None => Fingerprint::of_request(parts, &data),
                };
                Ok((RequestBody::buffered(data, trailers), Some(fingerprint)))
            }
            Buffered::Overflow { .. } => Err(ProblemKind::BodyTooLarge { limit }),
            Buffered::Failed { .. } => Err(ProblemKind::UnreadableBody),
        }
    }

    /// Claims the key, or finds out who has it.
    async fn claim(
        &self,
        key: &StoreKey,
        fingerprint: Option<&Fingerprint>,
        token: OwnerToken,
    ) -> Claim {
        let deadline = self.config.wait.map(|wait| Instant::now() + wait);
        loop {
            let begin = self.store.begin(key, fingerprint, token, self.config.lease);
            let found = match self.bounded(begin).await {
                Ok(Begin::New) => return Claim::Owner,
                Ok(Begin::Completed(record)) => Found::Completed(record),
                Ok(Begin::InProgress { fingerprint }) => Found::InProgress(fingerprint),
                // Rare: boxed, to keep every request's future small.
                Err(e) => match Box::pin(self.resolve(key, token, e)).await {
                    Ok(Some(found)) => found,
                    Ok(None) => return Claim::Owner,
                    Err(e) => {
                        if e.kind().is_ambiguous() {
                            // The claim may have landed unseen: free it rather than leave
                            // retries a lease of 409s.
                            self.settle_later(key, token, Settle::Release, true);
                        }
                        return self.store_failed(key, e);
                    }
                },
            };
            let theirs = match &found {
                Found::Completed(record) => record.fingerprint(),
                Found::InProgress(theirs) => theirs.as_ref(),
            };
            if !same_request(theirs, fingerprint) {
                return Claim::Problem(ProblemKind::Mismatch);
            }
            if let Found::Completed(record) = found {
                return Claim::Replay(record);
            }
            let now = Instant::now();
            match deadline {
                Some(deadline) if now < deadline => {
                    // Boxed, as it is rare and holds timers.
                    Box::pin(self.wait_for_owner(key, deadline, now)).await;
                }
                _ => return Claim::Problem(ProblemKind::InProgress),
            }
        }
    }

    /// Waits until the owner of `key` may be done, or a short pause when the store cannot say.
    async fn wait_for_owner(&self, key: &StoreKey, deadline: Instant, now: Instant) {
        let wait = self.store.wait(key, deadline - now);
        if let Err(e) = bounded(deadline - now, wait).await {
            tracing::debug!(error = %e, "waiting for the owner failed");
            let pause = deadline.min(now + DEFAULT_POLL_INTERVAL);
            tokio::time::sleep_until(pause).await;
        }
    }

    /// After a failed `begin`, whose effect may be unknown: looks whether the claim landed.
    ///
    /// `Ok(None)` means the claim is ours; `Ok(Some(found))` is someone else's entry.
    async fn resolve(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        error: StoreError,
    ) -> Result<Option<Found>, StoreError> {
        if !error.kind().is_ambiguous() {
            return Err(error);
        }
        tracing::debug!(error = %error, "begin failed; reading the key back");
        match self.bounded(self.store.get(key)).await {
            Ok(Some(Entry::InProgress { token: t, .. })) if t == token => Ok(None),
            Ok(Some(Entry::InProgress { fingerprint, .. })) => {
                Ok(Some(Found::InProgress(fingerprint)))
            }
            Ok(Some(Entry::Completed(record))) => Ok(Some(Found::Completed(record))),
            // The claim did not land, or the store cannot say: nothing ran, fail as asked.
            Ok(None) | Err(_) => Err(error),
        }
    }

    fn store_failed(&self, key: &StoreKey, error: StoreError) -> Claim {
        if self.config.fail_open && error.kind() != StoreErrorKind::Corrupt {
            return Claim::Unprotected;
        }
        tracing::warn!(key = %key.key(), error = %error, "idempotency store failed; answering 503");
        Claim::Problem(ProblemKind::StoreUnavailable)
    }

    /// The stored response, marked as a replay.
    fn replay<B: Body>(&self, key: &StoreKey, record: &Record) -> Response<ResponseBody<B>> {
        let stored = match record.response() {
            Ok(Some(stored)) => stored,
            Ok(None) => return problem(&self.config, ProblemKind::ResponseNotStored, self.grpc),
            Err(e) => {
                tracing::error!(key = %key.key(), error = %e, "stored record is unreadable");
                return problem(&self.config, ProblemKind::StoreUnavailable, self.grpc);
            }
        };
        let mut res = Response::new(ResponseBody::full(stored.body, stored.trailers));
        *res.status_mut() = stored.status;
        *res.headers_mut() = stored.headers;
        res.headers_mut().insert(
            self.config.replayed_header.clone(),
            HeaderValue::from_static("true"),
        );
        res.extensions_mut().insert(Outcome::Replayed);
        res
    }

    /// Re-sends a `complete` or `release` whose effect is unknown, in a task of its own, until
    /// it lands, the store refuses it, or the lease is surely over (a re-send by the same token
    /// is harmless). Without it a lost `complete` would let a retry run the request again once
    /// the lease ran out. The task is tracked, so [`DetachedTasks::drain`] waits for it.
    ///
    /// [`DetachedTasks::drain`]: crate::DetachedTasks::drain
    fn settle_later(&self, key: &StoreKey, token: OwnerToken, settle: Settle, pause_first: bool) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, key) = (Arc::clone(&self.store), key.clone());
        let config = &self.config;
        let (limit, deadline) = (config.store_timeout, Instant::now() + config.lease);
        let task = async move {
            let mut pause = Duration::from_millis(50);
            if pause_first {
                tokio::time::sleep(pause).await;
            }
            loop {
                let result = match &settle {
                    Settle::Complete(record) => {
                        bounded(limit, store.complete(&key, token, record)).await
                    }
                    Settle::Release => bounded(limit, store.release(&key, token)).await,
                };
                match result {
                    Ok(()) => return,
                    Err(e) if !e.kind().is_ambiguous() => return,
                    Err(_) => {}
                }
                if Instant::now() + pause >= deadline {
                    tracing::error!(key = %key.key(), "the store did not answer before the lease ran out");
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        };
        handle.spawn(config.tasks.track_future(task));
    }

    /// Runs a store call under the store timeout.
    fn bounded<F: Future>(&self, op: F) -> Bounded<F> {
        bounded(self.config.store_timeout, op)
    }
}

/// Runs a store call under `limit`: past it, the call fails with [`StoreErrorKind::Timeout`].
fn bounded<F: Future>(limit: Duration, op: F) -> Bounded<F> {
    Bounded {
        op,
        limit,
        timer: None,
    }
}

pin_project! {
    /// A store call under a time limit.
    ///
    /// Like [`tokio::time::timeout`], but the timer is made only when the call is still pending
    /// after its first poll: an in-process store (the memory store) answers at once and then no
    /// timer is made at all. The limit counts from that first poll, which only sends the
    /// command. Small, unlike a `Timeout`, because it lives in every request's future.
    struct Bounded<F> {
        #[pin]
        op: F,
        limit: Duration,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F, T> Future for Bounded<F>
where
    F: Future<Output = Result<T, StoreError>>,
{
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.op.poll(cx) {
            return Poll::Ready(result);
        }
        let limit = *this.limit;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(StoreError::new(StoreErrorKind::Timeout))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The request owns the key: runs it and settles the claim.
struct Owner<St: Store> {
    flow: Flow<St>,
    key: StoreKey,
    token: OwnerToken,
    fingerprint: Option<Fingerprint>,
    /// Whether dropping `self` must release the claim (the run was cut off).
    armed: bool,
}

impl<St: Store> Owner<St> {
    // Not an `async fn`, for the reason given at `Flow::run`.
    fn execute<S, ReqBody, ResBody>(
        mut self,
        mut inner: S,
        req: Request<RequestBody<ReqBody>>,
    ) -> impl Future<Output = Answer<ResBody, S::Error>>
    where
        S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
        ResBody: Body,
    {
        // Boxed on its own: captured by the block below, the request would be kept twice in
        // one large future (an upvar stays reserved after it is moved); two small boxes are
        // cheaper to allocate and to move than one large one.
        let call = Box::pin(AssertUnwindSafe(async move { inner.call(req).await }).catch_unwind());
        async move {
            let res = match self.renewing(call).await {
                Err(panic) => {
                    self.release("the handler panicked").await;
                    std::panic::resume_unwind(panic)
                }
                Ok(Err(e)) => {
                    self.release("the handler failed").await;
                    return Err(e);
                }
                Ok(Ok(res)) => res,
            };
            let (mut parts, body) = res.into_parts();
            // The handler's own word first, then a gRPC status in the head, then the HTTP status.
            let chosen = parts.extensions.get::<Disposition>().copied();
            let disposition = chosen
                .or_else(|| Disposition::from_grpc_headers(&parts.headers))
                .unwrap_or_else(|| Disposition::for_status(parts.status));
            parts.extensions.insert(Outcome::Executed);
            if disposition == Disposition::Release {
                self.release("the response is retryable").await;
                return Ok(Response::from_parts(parts, ResponseBody::new(body)));
            }
            let limit = self.flow.config.max_response_body;
            // Boxed: after an overflow, the rest is streamed on behind what was read.
            let mut pinned = Box::pin(body);
            let body = match self.renewing(buffer(pinned.as_mut(), limit)).await {
                Buffered::Complete { data, trailers }
                    if chosen.is_none()
                        && trailers.as_ref().and_then(Disposition::from_grpc_headers)
                            == Some(Disposition::Release) =>
                {
                    self.release("the gRPC status is retryable").await;
                    ResponseBody::full(data, trailers)
                }
                Buffered::Complete { data, trailers } => {
                    let skipped = &self.flow.config.skipped_headers;
                    let skip = |name: &http::HeaderName| !skipped.contains(name);
                    let record = Record::filtered(
                        self.fingerprint,
                        parts.status,
                        &parts.headers,
                        &skip,
                        &data,
                        trailers.as_ref(),
                    );
                    self.complete(&record).await;
                    ResponseBody::full(data, trailers)
                }
                Buffered::Overflow { prefix } => {
                    self.complete(&Record::not_stored(self.fingerprint)).await;
                    ResponseBody::chained(prefix, pinned)
                }
                Buffered::Failed { prefix, error } => {
                    self.release("the response body failed").await;
                    ResponseBody::failed(prefix, error)
                }
            };
            Ok(Response::from_parts(parts, body))
        }
    }

    /// Runs `fut` while renewing the lease every third of it.
    async fn renewing<F: Future>(&self, fut: F) -> F::Output {
        let config = &self.flow.config;
        let period = (config.lease / 3).max(Duration::from_millis(1));
        let renew = async {
            let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
            loop {
                ticks.tick().await;
                let renew = self.flow.store.renew(&self.key, self.token, config.lease);
                if let Err(e) = self.flow.bounded(renew).await {
                    tracing::warn!(key = %self.key.key(), error = %e, "renewing the lease failed");
                }
            }
        };
        tokio::select! {
            biased;
            out = fut => out,
            () = renew => unreachable!("renewal never ends"),
        }
    }

    /// Records the result. The response goes out whatever happens here.
    async fn complete(&mut self, record: &Record) {
        self.armed = false;
        let flow = &self.flow;
        match flow
            .bounded(flow.store.complete(&self.key, self.token, record))
            .await
        {
            Ok(()) => {}
            Err(e) if e.kind().is_ambiguous() => {
                tracing::warn!(key = %self.key.key(), error = %e, "recording the response may have failed; re-sending it");
                self.flow.settle_later(
                    &self.key,
                    self.token,
                    Settle::Complete(record.clone()),
                    true,
                );
            }
            Err(e) => {
                tracing::error!(key = %self.key.key(), error = %e, "the store refused the record (the lease was lost?)");
            }
        }
    }

    async fn release(&mut self, why: &'static str) {
        self.armed = false;
        tracing::debug!(key = %self.key.key(), why, "releasing the claim");
        let flow = &self.flow;
        match flow
            .bounded(flow.store.release(&self.key, self.token))
            .await
        {
            // Not ours any more: released already, or the lease ran out. Either way it is free.
            Ok(()) => {}
            Err(e) if e.kind().is_ambiguous() => {
                tracing::warn!(key = %self.key.key(), error = %e, "releasing the claim may have failed; re-sending it");
                self.flow
                    .settle_later(&self.key, self.token, Settle::Release, true);
            }
            Err(_) => {}
        }
    }
}

/// What [`Flow::settle_later`] re-sends.
enum Settle {
    Complete(Record),
    Release,
}

impl<St: Store> Drop for Owner<St> {
    /// A run cut off before it settled (the response future dropped with `detach(false)`):
    /// release the claim so that a retry runs again.
    fn drop(&mut self) {
        if self.armed && !std::thread::panicking() {
            self.flow
                .settle_later(&self.key, self.token, Settle::Release, false);
        }
    }
}

/// Moves an execution whose response future was dropped into a task of `tasks`, where it
/// runs to its end and records its result.
fn detach<B, E>(run: BoxRun<B, E>, tasks: &TaskTracker)
where
    B: Body + Send + 'static,
    B::Error: Send,
    E: Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            tasks.spawn_on(run, &handle);
        }
        // Nowhere to run it: the claim is left to its lease, as when the runtime shuts down.
        Err(_) => tracing::warn!(
            "a response future was dropped outside a tokio runtime; its execution is cut off"
        ),
    }
}

/// Whether two fingerprints allow a replay: equal, or one side has none.
fn same_request(stored: Option<&Fingerprint>, ours: Option<&Fingerprint>) -> bool {
    match (stored, ours) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// A problem as the layer's response.
pub(crate) fn problem<B: Body>(
    config: &Config,
    kind: ProblemKind,
    grpc: bool,
) -> Response<ResponseBody<B>> {
    let problem = Problem::new(kind, config.mismatch_status, config.retry_after, grpc);
    let outcome = match kind {
        ProblemKind::InProgress => Outcome::Conflict,
        ProblemKind::Mismatch => Outcome::Mismatch,
        ProblemKind::ResponseNotStored => Outcome::NotStored,
        ProblemKind::StoreUnavailable => Outcome::StoreUnavailable,
        _ => Outcome::Rejected,
    };
    let mut res = config
        .problem_response(&problem)
        .map(|b| ResponseBody::full(b, None));
    res.extensions_mut().insert(outcome);
    res
}
