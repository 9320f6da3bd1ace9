//! [`ResponseFuture`]: the answer of [`IdempotentRetry`](super::IdempotentRetry).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use http_body::Body;

use crate::body::ResponseBody;

type Answer<R, E> = Result<Response<ResponseBody<R>>, E>;

/// The response future of [`IdempotentRetry`](super::IdempotentRetry): all attempts of one
/// request, with the waits between them.
///
/// Dropping it stops at once: no further attempt is sent.
pub struct ResponseFuture<R: Body, E> {
    // Boxed: the attempts loop holds the inner service's future, a body buffer and a timer
    // across awaits; one allocation per call is small next to a network round trip.
    inner: Pin<Box<dyn Future<Output = Answer<R, E>> + Send>>,
}

impl<R: Body, E> ResponseFuture<R, E> {
    pub(crate) fn new(fut: impl Future<Output = Answer<R, E>> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(fut),
        }
    }
}

impl<R: Body, E> Future for ResponseFuture<R, E> {
    type Output = Answer<R, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<R: Body, E> fmt::Debug for ResponseFuture<R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
