//! [`ResponseFuture`], the response future of [`Idempotency`](crate::Idempotency).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use crate::body::ResponseBody;
use crate::flow::Execution;

pin_project! {
    /// The response future of [`Idempotency`](crate::Idempotency).
    ///
    /// Requests the layer passes through poll the inner future in place, with no allocation
    /// (and no [`Outcome`](crate::Outcome) extension: see [`Outcome::of`](crate::Outcome::of));
    /// protected requests run the claim in one boxed future and, when they own the key, the
    /// execution in another. Dropping it before the answer does what the layer was configured
    /// to do with a cut-off execution (see [`IdempotencyLayer::detach`](crate::IdempotencyLayer::detach)).
    pub struct ResponseFuture<F, B, E>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E>
    where
        B: Body,
    {
        Bypassed { #[pin] fut: F },
        // Boxed: a problem response is rare, and unboxed it would make every request's future
        // (passed-through ones included) as large as a whole response.
        Ready { res: Option<Box<Response<ResponseBody<B>>>> },
        Protected { exec: Execution<B, E> },
    }
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    pub(crate) fn bypassed(fut: F) -> Self {
        Self {
            kind: Kind::Bypassed { fut },
        }
    }

    pub(crate) fn ready(res: Response<ResponseBody<B>>) -> Self {
        Self {
            kind: Kind::Ready {
                res: Some(Box::new(res)),
            },
        }
    }

    pub(crate) fn protected(exec: Execution<B, E>) -> Self {
        Self {
            kind: Kind::Protected { exec },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            // No `Outcome` extension: inserting one would allocate the extensions map and the
            // value on every passed-through response (see `Outcome::of`).
            KindProj::Bypassed { fut } => {
                Poll::Ready(Ok(ready!(fut.poll(cx))?.map(ResponseBody::new)))
            }
            KindProj::Ready { res } => Poll::Ready(Ok(*res
                .take()
                .expect("`ResponseFuture` polled after completion"))),
            KindProj::Protected { exec } => exec.poll_answer(cx),
        }
    }
}

impl<F, B: Body, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Bypassed { .. } => "Bypassed",
            Kind::Ready { .. } => "Ready",
            Kind::Protected { .. } => "Protected",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
