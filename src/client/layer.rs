//! [`IdempotentRetryLayer`]: the client layer and its settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use tower::retry::backoff::{ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use tower::retry::budget::{Budget, TpsBudget};
use tower_layer::Layer;

use super::policy::OsJitter;
use super::service::IdempotentRetry;

/// A [`Layer`] that gives outbound requests an idempotency key and retries them with it.
///
/// See the [module docs](super) for what is retried and how.
///
/// | setting | default |
/// | --- | --- |
/// | [`methods`](Self::methods) | `POST`, `PATCH` |
/// | [`header_name`](Self::header_name) | `Idempotency-Key` |
/// | [`max_attempts`](Self::max_attempts) | 3 |
/// | [`deadline`](Self::deadline) | 30 s |
/// | [`backoff`](Self::backoff) | 100 ms doubling to 5 s, plus up to 100 % jitter |
/// | [`max_retry_after`](Self::max_retry_after) | 10 s |
/// | [`budget`](Self::budget) | tower's `TpsBudget::default()`: 10 retries a second, plus 20 % of requests, over 10 s |
/// | [`max_body`](Self::max_body) | 1 MiB |
#[derive(Clone)]
#[must_use]
pub struct IdempotentRetryLayer {
    config: Arc<Config>,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) methods: Vec<Method>,
    pub(crate) header: HeaderName,
    pub(crate) max_attempts: u32,
    pub(crate) deadline: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_retry_after: Duration,
    pub(crate) budget: Arc<dyn Budget + Send + Sync>,
    pub(crate) max_body: usize,
}

impl Config {
    /// A fresh backoff for one request: exponential from `backoff_min` to `backoff_max`, each
    /// delay plus up to 100 % of it (but not over `backoff_max`) drawn at random.
    pub(crate) fn make_backoff(&self) -> Option<ExponentialBackoff<OsJitter>> {
        ExponentialBackoffMaker::new(self.backoff_min, self.backoff_max, 1.0, OsJitter)
            .ok()
            .map(|mut maker| maker.make_backoff())
    }
}

impl Default for IdempotentRetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl IdempotentRetryLayer {
    /// The layer with the defaults in the [table above](Self).
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                methods: crate::policy::default_methods(),
                header: HeaderName::from_static("idempotency-key"),
                max_attempts: 3,
                deadline: Duration::from_secs(30),
                backoff_min: Duration::from_millis(100),
                backoff_max: Duration::from_secs(5),
                max_retry_after: Duration::from_secs(10),
                budget: Arc::new(TpsBudget::default()),
                max_body: 1024 * 1024,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The methods whose requests get a key and are retried (default `POST`, `PATCH`).
    ///
    /// A request of another method that already carries a key is covered too: the caller
    /// asked for it. Other requests pass through once, untouched (use tower's `Retry` for
    /// `GET`s).
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods = methods.into_iter().collect();
        self.with(|c| c.methods = methods)
    }

    /// The key header (default `Idempotency-Key`); match the server's.
    pub fn header_name(self, name: HeaderName) -> Self {
        self.with(|c| c.header = name)
    }

    /// How many times a request is sent at most, the first included (default 3). `1` turns retries
    /// off (keys are still added); `0` counts as `1`.
    pub fn max_attempts(self, attempts: u32) -> Self {
        self.with(|c| c.max_attempts = attempts.max(1))
    }

    /// How long after the first attempt started a retry may still start (default 30 s).
    ///
    /// No retry starts, and no wait runs, past it: the last answer is handed back instead. It
    /// does not cut an attempt short: put a `tower::timeout::TimeoutLayer` *inside* this layer
    /// to bound each attempt (a timeout is then retried), or one *outside* it to bound the
    /// whole call.
    pub fn deadline(self, deadline: Duration) -> Self {
        self.with(|c| c.deadline = deadline)
    }

    /// The backoff between attempts (default 100 ms, 5 s): tower's exponential backoff from `min`,
    /// doubling each retry up to `max`, each delay plus a random jitter of up to 100 % (capped
    /// at `max`), so that clients that failed together do not retry together.
    ///
    /// `max` is raised to `min` when lower, and to 1 ms when zero.
    pub fn backoff(self, min: Duration, max: Duration) -> Self {
        let max = max.max(min).max(Duration::from_millis(1));
        self.with(|c| {
            c.backoff_min = min;
            c.backoff_max = max;
        })
    }

    /// The longest `Retry-After` the layer honours (default 10 s).
    ///
    /// An answer's `Retry-After` (delay-seconds or an HTTP date; gRPC's `retry-after`
    /// metadata) replaces a shorter backoff delay, up to this cap. A longer one waits the cap,
    /// unless that passes the [deadline](Self::deadline).
    pub fn max_retry_after(self, cap: Duration) -> Self {
        self.with(|c| c.max_retry_after = cap)
    }

    /// The retry budget, shared by every service this layer makes (default `TpsBudget::default()`).
    ///
    /// Each covered request deposits into it, each retry withdraws; when it is spent, the
    /// retryable answer is handed back instead of being retried. It keeps a failing
    /// dependency from being hit by a storm of retries. Pass any tower
    /// [`Budget`](https://docs.rs/tower/0.5/tower/retry/budget/trait.Budget.html), e.g.
    /// `TpsBudget::new(Duration::from_secs(10), 10, 0.2)`.
    pub fn budget(self, budget: impl Budget + Send + Sync + 'static) -> Self {
        let budget: Arc<dyn Budget + Send + Sync> = Arc::new(budget);
        self.with(|c| c.budget = budget)
    }

    /// The most request body bytes buffered for a re-send (default 1 MiB, the server layer's
    /// default fingerprint limit).
    ///
    /// A body over it is sent once, as it streams, and never retried: the layer cannot send
    /// the same bytes again. It logs a warning and marks the response with
    /// [`Stop::BodyNotBuffered`](super::Stop::BodyNotBuffered).
    pub fn max_body(self, limit: usize) -> Self {
        self.with(|c| c.max_body = limit)
    }
}

impl<S> Layer<S> for IdempotentRetryLayer {
    type Service = IdempotentRetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotentRetry::new(inner, Arc::clone(&self.config))
    }
}

impl fmt::Debug for IdempotentRetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotentRetryLayer")
            .field("methods", &self.methods)
            .field("header", &self.header)
            .field("max_attempts", &self.max_attempts)
            .field("deadline", &self.deadline)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("max_retry_after", &self.max_retry_after)
            .field("budget", &"<budget>")
            .field("max_body", &self.max_body)
            .finish()
    }
}
