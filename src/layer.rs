use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Response, StatusCode, request};
use tokio_util::task::TaskTracker;
use tower_layer::Layer;

use crate::config::{Config, Fingerprinting};
use crate::fingerprint::Fingerprint;
use crate::flow::coalesce::Inflight;
use crate::key::KeyError;
use crate::policy::RecordPolicy;
use crate::problem::Problem;
use crate::service::Idempotency;
use crate::store::StoreKey;

/// Applies [`Idempotency`] to a service: every `POST`/`PATCH` with an `Idempotency-Key` runs at
/// most once, and retries get the first answer back.
///
/// Built with [`new`](Self::new) over a [`Store`](crate::store::Store); every other setting has a
/// default and a builder method below. Clones share the store and the configuration.
///
/// ```
/// use std::time::Duration;
/// use tower_idempotency::{IdempotencyLayer, store::MemoryStore};
///
/// let layer = IdempotencyLayer::new(MemoryStore::new())
///     .scope(|req| req.headers.get("x-tenant").and_then(|v| v.to_str().ok()).map(String::from))
///     .lease(Duration::from_secs(60))
///     .wait_for_in_flight(Duration::from_secs(5));
/// # let _ = layer;
/// ```
#[must_use]
pub struct IdempotencyLayer<St> {
    store: Arc<St>,
    config: Arc<Config>,
    /// The keys the layer's services are claiming or running, for in-process coalescing.
    inflight: Arc<Inflight>,
}

impl<St> Clone for IdempotencyLayer<St> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            config: Arc::clone(&self.config),
            inflight: Arc::clone(&self.inflight),
        }
    }
}

impl<St> fmt::Debug for IdempotencyLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("store", &std::any::type_name::<St>())
            .field("config", &self.config)
            .finish()
    }
}

impl<St> IdempotencyLayer<St> {
    /// A layer over `store` with the defaults: `POST` and `PATCH`, header `Idempotency-Key`,
    /// key optional, no scope, SHA-256 fingerprints over a body of at most 1 MiB, lease 30 s,
    /// `Retry-After: 1`, `422` on a mismatch, no waiting, detached execution, fail closed,
    /// store timeout 2 s, responses kept up to 1 MiB.
    pub fn new(store: St) -> Self {
        Self {
            store: Arc::new(store),
            config: Arc::new(Config::default()),
            inflight: Arc::default(),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The methods to protect (default `POST`, `PATCH`). Others pass through with no store call.
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.with(|c| c.methods = methods.into_iter().collect())
    }

    /// The header that carries the key (default `Idempotency-Key`).
    pub fn header_name(self, name: HeaderName) -> Self {
        self.with(|c| c.header = name)
    }

    /// The longest key accepted, in characters (default 255). Longer keys get `400`.
    pub fn max_key_len(self, max: usize) -> Self {
        self.with(|c| c.max_key_len = max)
    }

    /// Whether a covered request without a key is rejected with `400` (`true`) or passed
    /// through unprotected (`false`, the default).
    pub fn require_key(self, required: bool) -> Self {
        self.with(|c| c.require_key = required)
    }

    /// Scopes keys by a value of the request, such as the authenticated user or tenant.
    ///
    /// # Security
    ///
    /// **Multi-user APIs must set a scope.** Without one, keys are global: a client who sends
    /// another client's key (guessed, leaked or reused) gets that client's stored response. The
    /// scope is folded into the store key unambiguously, so equal keys under different scopes
    /// never meet. Without a scope function, the first protected request that carries
    /// credentials (`Authorization` or `Cookie`) logs a warning, once per layer.
    ///
    /// **It fails closed.** When the function returns `None` for a protected request, the layer
    /// answers a [`403` problem](crate::problem#missing-scope) and claims nothing: the caller is
    /// anonymous, or this layer sits *outside* the authentication that sets the scope (see
    /// [the layer order](crate#layer-order)). Such requests share one global key space only with
    /// [`unscoped_requests_share_keys`](Self::unscoped_requests_share_keys).
    ///
    /// The function sees the request head, including extensions set by an authentication layer
    /// that runs before this one:
    ///
    /// ```
    /// # use tower_idempotency::{IdempotencyLayer, store::MemoryStore};
    /// #[derive(Clone)]
    /// struct UserId(u64);
    ///
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .scope(|req| req.extensions.get::<UserId>().map(|u| u.0.to_string()));
    /// # let _ = layer;
    /// ```
    pub fn scope<F>(self, scope: F) -> Self
    where
        F: Fn(&request::Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.with(|c| c.scope = Some(Arc::new(scope)))
    }

    /// Lets requests for which the [scope](Self::scope) function finds no scope share one
    /// global key space (`true`), instead of being refused with `403` (`false`, the default).
    ///
    /// # Security
    ///
    /// Every unscoped request then sees every other unscoped request's stored responses under
    /// the same key: turn it on only when unscoped requests are truly anonymous and public, never
    /// to silence a `403` caused by a layer placed before authentication.
    pub fn unscoped_requests_share_keys(self, share: bool) -> Self {
        self.with(|c| c.unscoped_share_keys = share)
    }

    /// Replaces the default fingerprint with `f` over the request head and its buffered body.
    pub fn fingerprint<F>(self, f: F) -> Self
    where
        F: Fn(&request::Parts, &Bytes) -> Fingerprint + Send + Sync + 'static,
    {
        self.with(|c| c.fingerprint = Fingerprinting::Custom(Arc::new(f)))
    }

    /// Turns fingerprinting off: a reused key is never a mismatch, and request bodies stream
    /// to the inner service without being buffered.
    pub fn no_fingerprint(self) -> Self {
        self.with(|c| c.fingerprint = Fingerprinting::Off)
    }

    /// The largest request body buffered for the fingerprint (default 1 MiB); larger bodies get
    /// `413` and nothing is claimed.
    pub fn max_request_body(self, bytes: usize) -> Self {
        self.with(|c| c.max_request_body = bytes)
    }

    /// The largest response body kept for replay (default 1 MiB). A larger response is streamed
    /// to the client as it comes, the key is marked completed without the response, and
    /// retries get a `409` ["response not stored"](crate::problem#response-not-stored) problem.
    pub fn max_response_body(self, bytes: usize) -> Self {
        self.with(|c| c.max_response_body = bytes)
    }

    /// How long a claim lasts without renewal (default 30 s). While the handler runs, the layer
    /// renews it every third of the lease. A claim whose owner died is free again when its lease
    /// ends.
    pub fn lease(self, lease: Duration) -> Self {
        self.with(|c| c.lease = lease)
    }

    /// The `Retry-After` of `409` and `503` problems (default 1 s).
    pub fn retry_after(self, after: Duration) -> Self {
        self.with(|c| c.problems.retry_after = after)
    }

    /// The status for a key reused with a different request (default `422`).
    pub fn mismatch_status(self, status: StatusCode) -> Self {
        self.with(|c| c.problems.mismatch_status = status)
    }

    /// Lets a duplicate that arrives while the first request runs wait up to `timeout` for its
    /// result and answer with the replay instead of a `409` (off by default). If the first
    /// request's claim is released (a `5xx`, an error), the waiting duplicate claims the key and
    /// runs. Past the timeout it gets the `409`.
    pub fn wait_for_in_flight(self, timeout: Duration) -> Self {
        self.with(|c| c.wait = Some(timeout))
    }

    /// Whether the inner service runs to its end and records its result even when the client
    /// goes away (default `true`).
    ///
    /// The handler runs inside the response future, with no task spawned. When that future is
    /// dropped before the handler ends (hyper drops it when the client disconnects), the
    /// execution moves, as it is, into a task of its own and finishes there; running and moved
    /// executions alike are counted and drained by [`detached_tasks`](Self::detached_tasks).
    ///
    /// With `false`, dropping the response future (hyper does when the client disconnects)
    /// cancels the handler and releases the claim, so a retry runs it again.
    pub fn detach(self, detach: bool) -> Self {
        self.with(|c| c.detach = detach)
    }

    /// Whether duplicates of a key that this layer is already claiming or running are answered
    /// in process (`true`) instead of each asking the store (`false`) [on for stores whose calls
    /// cross the network, [`Store::is_remote`](crate::store::Store::is_remote); off for the
    /// memory store, where a store call is as cheap as the bookkeeping].
    ///
    /// Concurrent requests for one key then share one `begin` (concurrent replays cost one round
    /// trip); while this instance runs the key, duplicates get `409` or the mismatch at once, or,
    /// with [`wait_for_in_flight`](Self::wait_for_in_flight), the record the moment it is
    /// recorded, without polling the store. Across instances, the store still decides.
    pub fn coalesce(self, coalesce: bool) -> Self {
        self.with(|c| c.coalesce = Some(coalesce))
    }

    /// Whether a store failure lets the request run unprotected (`true`, with a warning logged)
    /// instead of answering `503` (`false`, the default).
    pub fn fail_open(self, fail_open: bool) -> Self {
        self.with(|c| c.fail_open = fail_open)
    }

    /// The time limit of every store call (default 2 s). A call that runs out counts as a store
    /// failure whose effect is unknown.
    pub fn store_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.store_timeout = timeout)
    }

    /// The header that marks a replay (default `Idempotent-Replayed: true`).
    pub fn replayed_header(self, name: HeaderName) -> Self {
        self.with(|c| c.replayed_header = name)
    }

    /// Adds `name` to the headers never stored for replay.
    pub fn skip_header(self, name: HeaderName) -> Self {
        self.with(|c| c.skipped_headers.push(name))
    }

    /// Replaces the headers never stored for replay (default: hop-by-hop headers, `Set-Cookie`,
    /// `Date`, `Content-Length`; see [`default_skipped_headers`](crate::policy::default_skipped_headers)).
    ///
    /// # Security
    ///
    /// This replaces the whole list: a list without `Set-Cookie` replays one client's cookies
    /// to every retry. To add a header, use [`skip_header`](Self::skip_header).
    pub fn skipped_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.with(|c| c.skipped_headers = names.into_iter().collect())
    }

    /// Records or releases each response by `policy` instead of the defaults
    /// ([`DefaultRecordPolicy`](crate::policy::DefaultRecordPolicy): `5xx`, `408`, `429` and
    /// retryable gRPC statuses release, everything else is recorded). A [`Disposition`] in a
    /// response's extensions still wins over the policy. See [`RecordPolicy`] for the recipe
    /// "don't keep 4xx validation failures".
    ///
    /// [`Disposition`]: crate::Disposition
    pub fn record_policy(self, policy: impl RecordPolicy) -> Self {
        self.with(|c| c.record_policy = Arc::new(policy))
    }

    /// Tells clients when a recorded response expires, in a response header `name` holding an
    /// HTTP-date (off by default), as the IETF idempotency-key draft asks servers to publish
    /// their expiry policy.
    ///
    /// The layer cannot ask a store how long it keeps records, so `retention` must be the
    /// retention the store was built with (the memory store's `ttl`, `RedisStore`'s TTL). The
    /// header is added to a response the layer records (and to one streamed without being kept,
    /// whose key is kept as long): the time of recording plus `retention`. It is stored with
    /// the response, so a replay tells the same time. Released responses carry none.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::HeaderName;
    /// use tower_idempotency::{IdempotencyLayer, store::MemoryStore};
    ///
    /// let day = Duration::from_secs(24 * 60 * 60);
    /// let layer = IdempotencyLayer::new(MemoryStore::builder().ttl(day).build())
    ///     .expiry_header(HeaderName::from_static("idempotency-expires"), day);
    /// # let _ = layer;
    /// ```
    pub fn expiry_header(self, name: HeaderName, retention: Duration) -> Self {
        self.with(|c| c.expiry = Some((name, retention)))
    }

    /// Replaces the layer's [problem](crate::problem) responses with `f`'s.
    ///
    /// The hook's response is sent as it is (the layer only adds the [`Outcome`](crate::Outcome)
    /// extension): add `Retry-After` from [`Problem::retry_after`] where you want it, and answer
    /// gRPC calls ([`Problem::is_grpc`]) in gRPC, e.g. with [`Problem::to_grpc_response`].
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::Response;
    /// use tower_idempotency::{IdempotencyLayer, store::MemoryStore};
    ///
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).problem_response(|problem| {
    ///     let mut res = Response::new(Bytes::from(problem.title()));
    ///     *res.status_mut() = problem.status();
    ///     res
    /// });
    /// # let _ = layer;
    /// ```
    pub fn problem_response<F>(self, f: F) -> Self
    where
        F: Fn(&Problem) -> Response<Bytes> + Send + Sync + 'static,
    {
        self.with(|c| c.problems.hook = Some(Arc::new(f)))
    }

    /// A handle on the handlers running detached, for graceful shutdown.
    pub fn detached_tasks(&self) -> DetachedTasks {
        DetachedTasks {
            tasks: self.config.tasks.clone(),
        }
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.store
    }

    /// The [`StoreKey`] this layer files a request under, for an operator's
    /// [`Store::lookup`](crate::store::Store::lookup) and
    /// [`Store::evict`](crate::store::Store::evict): `scope` as the layer's
    /// [`scope`](Self::scope) function gave it for the request (`None` without one), and
    /// `header` the key header's value as the client sent it, parsed as the layer parses it (an
    /// sf-string and the bare token that spell the same key give the same store key).
    ///
    /// ```
    /// use http::HeaderValue;
    /// use tower_idempotency::{IdempotencyLayer, store::MemoryStore};
    ///
    /// let layer = IdempotencyLayer::new(MemoryStore::new());
    /// let bare = layer.store_key(Some("user-1"), &HeaderValue::from_static("order-42"))?;
    /// let quoted = layer.store_key(Some("user-1"), &HeaderValue::from_static("\"order-42\""))?;
    /// assert_eq!(bare, quoted);
    /// assert_ne!(bare, layer.store_key(Some("user-2"), &HeaderValue::from_static("order-42"))?);
    /// # Ok::<(), tower_idempotency::key::KeyError>(())
    /// ```
    pub fn store_key(
        &self,
        scope: Option<&str>,
        header: &HeaderValue,
    ) -> Result<StoreKey, KeyError> {
        let key = crate::key::parse_value(header.as_bytes(), self.config.max_key_len)?;
        Ok(StoreKey::from_owned(scope, key))
    }
}

impl<S, St> Layer<S> for IdempotencyLayer<St> {
    type Service = Idempotency<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::from_parts(
            inner,
            Arc::clone(&self.store),
            Arc::clone(&self.config),
            Arc::clone(&self.inflight),
        )
    }
}

/// The handlers a layer runs detached (see [`IdempotencyLayer::detach`]), and the store writes
/// it still owes: a `complete` or `release` whose reply was lost is re-sent in the background
/// until it lands or the lease is over.
///
/// On graceful shutdown, stop accepting requests, then [`drain`](Self::drain) so that every
/// handler that is still running finishes and records its result. Handlers cut off by the
/// runtime's end keep their claim until the lease runs out; nothing partial is recorded.
#[derive(Debug, Clone)]
pub struct DetachedTasks {
    tasks: TaskTracker,
}

impl DetachedTasks {
    /// How many handlers and store writes run detached now.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Waits until every handler and store write running detached has finished.
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }
}
