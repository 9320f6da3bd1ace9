//! [`IdempotentRetry`]: the client service, and the attempts of one request.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower::ServiceExt;
use tower::retry::backoff::Backoff;
use tower_service::Service;

use super::body::{Prepared, ReplayBody, prepare};
use super::future::ResponseFuture;
use super::layer::Config;
use super::policy::{self, Verdict};
use super::report::{RetryReport, Stop};
use crate::body::{Buffered, ResponseBody, buffer};

/// A client service that gives each covered request an idempotency key and retries it with
/// the same key and bytes. Made by [`IdempotentRetryLayer`](super::IdempotentRetryLayer).
#[derive(Clone)]
pub struct IdempotentRetry<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> IdempotentRetry<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the layer's.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for IdempotentRetry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotentRetry")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, B, R> Service<Request<B>> for IdempotentRetry<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send,
    R: Body<Data = Bytes> + Send + 'static,
    R::Error: Send,
{
    type Response = Response<ResponseBody<R>>;
    type Error = S::Error;
    type Future = ResponseFuture<R, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The instance that was polled ready sends the first attempt.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(attempts(inner, Arc::clone(&self.config), req))
    }
}

/// Every attempt of one request.
async fn attempts<S, B, R>(
    mut svc: S,
    config: Arc<Config>,
    req: Request<B>,
) -> Result<Response<ResponseBody<R>>, S::Error>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<R>>,
    B: Body<Data = Bytes>,
    R: Body<Data = Bytes>,
{
    let (mut parts, body) = req.into_parts();
    let has_key = parts.headers.contains_key(&config.header);
    if !has_key && !config.methods.contains(&parts.method) {
        let res = svc
            .call(Request::from_parts(parts, ReplayBody::new(body)))
            .await?;
        return Ok(reported(
            res.map(ResponseBody::new),
            1,
            None,
            Stop::NotCovered,
        ));
    }
    if !has_key {
        parts.headers.insert(config.header.clone(), fresh_key());
    }
    let key = parts
        .headers
        .get(&config.header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let started = Instant::now();
    config.budget.deposit();

    let (data, trailers) = match prepare(body, config.max_body).await {
        Prepared::Replayable { data, trailers } => (data, trailers),
        Prepared::Once(body) => {
            tracing::warn!(
                limit = config.max_body,
                "idempotent retry: the request body is over the replay limit or failed while \
                 read; sent once, not retried"
            );
            let res = svc.call(Request::from_parts(parts, body)).await?;
            return Ok(reported(
                res.map(ResponseBody::new),
                1,
                key,
                Stop::BodyNotBuffered,
            ));
        }
    };

    let mut backoff = config.make_backoff();
    let mut attempt = 1;
    loop {
        let result = svc.call(replay(&parts, &data, &trailers)).await;
        let (verdict, result) = decide(result).await;
        let after = match verdict {
            Verdict::Final => {
                tracing::debug!(attempt, "idempotent retry: final answer");
                return result.map(|res| reported(res, attempt, key, Stop::Final));
            }
            Verdict::Retry { after } => after,
        };
        let backoff_delay = backoff.as_mut().map_or(config.backoff_min, |b| {
            let sleep = b.next_backoff();
            sleep.deadline().saturating_duration_since(Instant::now())
        });
        let delay = policy::delay(backoff_delay, after, config.max_retry_after);
        let stop = if attempt >= config.max_attempts {
            Some(Stop::MaxAttempts)
        } else if started.elapsed() + delay > config.deadline {
            Some(Stop::Deadline)
        } else if !config.budget.withdraw() {
            Some(Stop::Budget)
        } else {
            None
        };
        if let Some(stop) = stop {
            tracing::debug!(
                attempt,
                ?stop,
                "idempotent retry: retryable answer handed back"
            );
            return result.map(|res| reported(res, attempt, key, stop));
        }
        tracing::debug!(
            attempt,
            delay_ms = delay.as_millis() as u64,
            error = result.is_err(),
            status = result.as_ref().ok().map(|r| r.status().as_u16()),
            "idempotent retry: retrying with the same key"
        );
        drop(result);
        tokio::time::sleep(delay).await;
        svc.ready().await?;
        attempt += 1;
    }
}

/// The verdict on one attempt's answer. A retryable `problem+json` is read (up to a bound) to
/// tell the server layer's final problems from the others.
async fn decide<R: Body, E>(
    result: Result<Response<R>, E>,
) -> (Verdict, Result<Response<ResponseBody<R>>, E>) {
    let res = match result {
        // Transport errors and timeouts: the same key makes a re-send safe.
        Err(e) => return (Verdict::Retry { after: None }, Err(e)),
        Ok(res) => res,
    };
    let verdict = policy::classify(&res);
    if verdict == Verdict::Final || !policy::is_problem(res.headers()) {
        return (verdict, Ok(res.map(ResponseBody::new)));
    }
    let (parts, body) = res.into_parts();
    let mut body = Box::pin(body);
    let (verdict, body) = match buffer(body.as_mut(), policy::MAX_PROBLEM_BODY).await {
        Buffered::Complete { data, trailers } => {
            let verdict = if policy::is_final_problem(&data) {
                Verdict::Final
            } else {
                verdict
            };
            (verdict, ResponseBody::full(data, trailers))
        }
        Buffered::Overflow { prefix } => (verdict, ResponseBody::chained(prefix, body)),
        Buffered::Failed { prefix, error } => (verdict, ResponseBody::failed(prefix, error)),
    };
    (verdict, Ok(Response::from_parts(parts, body)))
}

/// The request for one attempt: the same head, extensions and bytes.
fn replay<B: Body>(
    parts: &Parts,
    data: &Bytes,
    trailers: &Option<HeaderMap>,
) -> Request<ReplayBody<B>> {
    let mut req = Request::new(ReplayBody::replay(data, trailers));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    *req.extensions_mut() = parts.extensions.clone();
    req
}

fn reported<R>(
    mut res: Response<R>,
    attempts: u32,
    key: Option<String>,
    stop: Stop,
) -> Response<R> {
    res.extensions_mut().insert(RetryReport {
        attempts,
        key,
        stop,
    });
    res
}

/// A fresh key: 128 random bits in 32 lowercase hex characters, a valid bare token and
/// sf-string.
fn fresh_key() -> HeaderValue {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // Without an OS random source: the std hasher's random keys over a counter.
        use std::hash::{BuildHasher, RandomState};
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let s = RandomState::new();
        bytes[..8].copy_from_slice(&s.hash_one((n, 0u8)).to_be_bytes());
        bytes[8..].copy_from_slice(&s.hash_one((n, 1u8)).to_be_bytes());
    }
    HeaderValue::try_from(crate::hex::hex(&bytes)).expect("lowercase hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_keys_are_distinct_tokens() {
        let a = fresh_key();
        let b = fresh_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }
}
