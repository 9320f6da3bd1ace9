use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::body::ResponseBody;
use crate::extensions::Outcome;

/// What a protected request answers.
pub(crate) type Answer<B, E> = Result<Response<ResponseBody<B>>, E>;

/// The claim: parse, fingerprint, `begin`; ends with an answer or an execution to run.
pub(crate) type BoxClaim<B, E> = Pin<Box<dyn Future<Output = Step<B, E>> + Send>>;

/// An execution of the inner service, with the recording of its result.
pub(crate) type BoxRun<B, E> = Pin<Box<dyn Future<Output = Answer<B, E>> + Send>>;

/// Hands an execution whose response future was dropped to a task of its own, tracked by the
/// tracker. A function pointer, made where the `Send + 'static` bounds that spawning needs are
/// known, so that `Drop` needs none.
pub(crate) type Detach<B, E> = fn(BoxRun<B, E>, &TaskTracker);

/// Where the claim left a protected request.
// Made once and moved once per request: boxing the answer would cost an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Step<B: Body, E> {
    /// Answered without running anything (a replay, a problem).
    Done(Answer<B, E>),
    /// The inner service runs.
    Run(Run<B, E>),
}

/// An execution, run inside the response future.
///
/// Running it in place, instead of in a task of its own, saves a spawn and the hand-offs
/// between tasks on every execution. When the response future is dropped before the execution
/// ends (hyper drops it when the client goes away), the execution is moved, as it is, into a
/// task of the layer's [`TaskTracker`] and runs to its end there: the guarantee of detached
/// execution holds. While it runs in place it holds a token of the tracker, so that
/// [`DetachedTasks`](crate::DetachedTasks) counts and drains it like a task.
pub(crate) struct Run<B: Body, E> {
    fut: BoxRun<B, E>,
    /// `None` when the execution is not detached (`detach(false)`, or a store failure run
    /// unprotected): dropping the response future then cancels it.
    detach: Option<(TaskTrackerToken, Detach<B, E>)>,
}

impl<B: Body, E> Run<B, E> {
    /// An execution that a dropped response future cancels.
    pub(crate) fn attached(fut: BoxRun<B, E>) -> Self {
        Self { fut, detach: None }
    }

    /// An execution that a dropped response future hands to a task of `tasks`.
    pub(crate) fn detached(fut: BoxRun<B, E>, tasks: &TaskTracker, detach: Detach<B, E>) -> Self {
        Self {
            fut,
            detach: Some((tasks.token(), detach)),
        }
    }

    /// The response future is gone: finish in a task of its own, or be cancelled.
    fn abandon(self) {
        if let Some((token, detach)) = self.detach {
            detach(self.fut, token.task_tracker());
        }
    }
}

pin_project! {
    /// The response future of [`Idempotency`](crate::Idempotency).
    ///
    /// Requests the layer passes through poll the inner future in place, with no allocation;
    /// protected requests run the claim in one boxed future and, when they own the key, the
    /// execution in another.
    pub struct ResponseFuture<F, B, E>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<F, B, E>,
    }

    impl<F, B, E> PinnedDrop for ResponseFuture<F, B, E>
    where
        B: Body,
    {
        fn drop(this: Pin<&mut Self>) {
            if let KindProj::Running { run, polling } = this.project().kind.project() {
                // An execution whose poll panicked is not resumed.
                if let (Some(run), false) = (run.take(), *polling) {
                    run.abandon();
                }
            }
        }
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E>
    where
        B: Body,
    {
        Bypassed { #[pin] fut: F },
        Ready { res: Option<Response<ResponseBody<B>>> },
        Claiming { fut: BoxClaim<B, E> },
        Running { run: Option<Run<B, E>>, polling: bool },
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
            kind: Kind::Ready { res: Some(res) },
        }
    }

    pub(crate) fn protected(fut: BoxClaim<B, E>) -> Self {
        Self {
            kind: Kind::Claiming { fut },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().kind.project() {
                KindProj::Bypassed { fut } => {
                    let mut res = ready!(fut.poll(cx))?.map(ResponseBody::new);
                    res.extensions_mut().insert(Outcome::Bypassed);
                    return Poll::Ready(Ok(res));
                }
                KindProj::Ready { res } => {
                    return Poll::Ready(Ok(res.take().expect("polled after completion")));
                }
                KindProj::Claiming { fut } => match ready!(fut.as_mut().poll(cx)) {
                    Step::Done(answer) => return Poll::Ready(answer),
                    Step::Run(run) => self.as_mut().project().kind.set(Kind::Running {
                        run: Some(run),
                        polling: false,
                    }),
                },
                KindProj::Running { run, polling } => {
                    let fut = &mut run.as_mut().expect("polled after completion").fut;
                    *polling = true;
                    let answer = fut.as_mut().poll(cx);
                    *polling = false;
                    let answer = ready!(answer);
                    // Done: the tracker's token goes with it.
                    *run = None;
                    return Poll::Ready(answer);
                }
            }
        }
    }
}

impl<F, B: Body, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Bypassed { .. } => "Bypassed",
            Kind::Ready { .. } => "Ready",
            Kind::Claiming { .. } => "Claiming",
            Kind::Running { .. } => "Running",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
