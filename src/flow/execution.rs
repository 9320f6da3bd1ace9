//! What a protected request's response future drives, and what dropping it means.
//!
//! [`Execution`] owns the request's work after its key was parsed: first the claim, then (when
//! the request owns the key) the run of the inner service with the recording of its result.
//! Hyper drops a response future when its client goes away, and outer timeouts drop it too, so
//! dropping the response future is an everyday event; this file alone decides what it means:
//!
//! | dropped | what happens |
//! | --- | --- |
//! | before the first poll | nothing was sent to the store: nothing to do |
//! | while claiming | the claim step is dropped; a `begin` that was sent and not yet answered may have claimed the key, so its [`ClaimInFlight`] releases that claim, owner-checked, in the background |
//! | while running, detached (the default) | the run moves, as it is, into a task of the layer's [`TaskTracker`] and records its result there |
//! | while running, attached ([`detach(false)`](crate::IdempotencyLayer::detach)) | the run is cancelled and its [`Claimed`] releases the claim, owner-checked, in the background |
//! | after the response | nothing |
//! | while a poll panics | nothing is resumed; the claim is left to its lease |

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use http_body::Body;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{Instrument, Span};

use super::Flow;
use super::settle::Settle;
use crate::body::ResponseBody;
use crate::store::{OwnerToken, Store, StoreKey};

/// What a protected request answers.
pub(crate) type Answer<B, E> = Result<Response<ResponseBody<B>>, E>;

/// The claim: read, fingerprint, `begin`; ends with an answer or an execution to run.
pub(crate) type BoxClaim<B, E> = Pin<Box<dyn Future<Output = Step<B, E>> + Send>>;

/// An execution of the inner service, with the recording of its result.
pub(crate) type BoxRun<B, E> = Pin<Box<dyn Run<B, E>>>;

/// A run that can be moved into a task of its own.
///
/// Spawning needs `'static` bounds that a response future's drop cannot name; this trait is
/// implemented where the run is made, so the boxed run carries the way to detach itself.
pub(crate) trait Run<B: Body, E>: Future<Output = Answer<B, E>> + Send {
    /// Runs `self` to its end in a task of `tasks`, in `span`, its answer dropped.
    fn detach(self: Pin<Box<Self>>, tasks: &TaskTracker, span: Span);
}

impl<T, B, E> Run<B, E> for T
where
    T: Future<Output = Answer<B, E>> + Send + 'static,
    B: Body,
{
    fn detach(self: Pin<Box<Self>>, tasks: &TaskTracker, span: Span) {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let detached = crate::observe::Detached::start();
                let run = async move {
                    let _answer = self.await;
                    drop(detached);
                };
                tasks.spawn_on(run.instrument(span), &handle);
            }
            // Nowhere to run it: the claim is left to its lease, as when the runtime shuts down.
            Err(_) => tracing::warn!(
                "a response future was dropped outside a tokio runtime; its execution is cut off"
            ),
        }
    }
}

/// Where the claim left a protected request.
// Made once and moved once per request: boxing the answer would cost an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Step<B: Body, E> {
    /// Answered without running anything (a replay, a problem).
    Done(Answer<B, E>),
    /// The inner service runs.
    Run {
        /// The execution.
        run: BoxRun<B, E>,
        /// A token of the layer's tracker when a dropped response future detaches the run:
        /// held while the run is polled in place, so that `DetachedTasks` counts and drains it
        /// like a task (the detached run keeps the request's span). `None` when dropping
        /// cancels it.
        detach: Option<TaskTrackerToken>,
    },
}

/// A protected request's work, driven by its response future; dropping it abandons the work as
/// the [module docs](self) say.
///
/// Running the execution in place, instead of in a task of its own, saves a spawn and the
/// hand-offs between tasks on every request; it moves to a task only when it is abandoned.
pub(crate) struct Execution<B: Body, E> {
    stage: Stage<B, E>,
    /// The request's span, entered while the work is polled in place.
    span: Span,
    /// Set while a stage is polled: a poll that panicked leaves it set, and then nothing is
    /// resumed.
    polling: bool,
}

enum Stage<B: Body, E> {
    Claiming(BoxClaim<B, E>),
    Running {
        run: BoxRun<B, E>,
        detach: Option<TaskTrackerToken>,
    },
    Finished,
}

impl<B: Body, E> Execution<B, E> {
    pub(crate) fn new(claim: BoxClaim<B, E>, span: Span) -> Self {
        Self {
            stage: Stage::Claiming(claim),
            span,
            polling: false,
        }
    }

    /// Drives the claim, then the run; ready with the answer.
    pub(crate) fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Answer<B, E>> {
        let _entered = self.span.enter();
        loop {
            self.polling = true;
            let polled = match &mut self.stage {
                Stage::Claiming(claim) => match claim.as_mut().poll(cx) {
                    Poll::Ready(Step::Run { run, detach }) => {
                        self.stage = Stage::Running { run, detach };
                        continue;
                    }
                    Poll::Ready(Step::Done(answer)) => Poll::Ready(answer),
                    Poll::Pending => Poll::Pending,
                },
                Stage::Running { run, .. } => run.as_mut().poll(cx),
                Stage::Finished => panic!("`ResponseFuture` polled after completion"),
            };
            self.polling = false;
            if polled.is_ready() {
                // Done: the tracker's token goes with the run.
                self.stage = Stage::Finished;
            }
            return polled;
        }
    }

    /// The response future is gone before the answer: see the [module docs](self).
    fn abandon(&mut self) {
        if self.polling {
            // A poll panicked: nothing is resumed.
            return;
        }
        match std::mem::replace(&mut self.stage, Stage::Finished) {
            Stage::Running {
                run,
                detach: Some(token),
            } => run.detach(token.task_tracker(), self.span.clone()),
            // Dropped: a run's `Claimed` releases its claim.
            Stage::Running { detach: None, .. } | Stage::Claiming(_) | Stage::Finished => {}
        }
    }
}

impl<B: Body, E> Drop for Execution<B, E> {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// A `begin` by this request's token that was sent and whose answer is not known yet. Dropped
/// while armed (the client went away, or an outer timeout fired, before the store answered), it
/// releases the claim the token may hold, owner-checked, in the background: a claim nobody runs
/// would otherwise hold retries off with `409`s for a whole lease. The release waits a moment
/// first, so that it reaches the store after the `begin` it cleans up after.
pub(super) struct ClaimInFlight<'a, St: Store> {
    flow: &'a Flow<St>,
    key: &'a StoreKey,
    token: OwnerToken,
    armed: bool,
}

impl<'a, St: Store> ClaimInFlight<'a, St> {
    /// Armed: about to send a `begin` for `token`.
    pub(super) fn arm(flow: &'a Flow<St>, key: &'a StoreKey, token: OwnerToken) -> Self {
        Self {
            flow,
            key,
            token,
            armed: true,
        }
    }

    /// The store answered (or the layer settles the claim itself).
    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl<St: Store> Drop for ClaimInFlight<'_, St> {
    fn drop(&mut self) {
        if self.armed && !std::thread::panicking() {
            self.flow
                .settle_later(self.key, self.token, Settle::Release, true);
        }
    }
}

/// The claim a running request holds. Dropped while armed (the run was cut off before it
/// settled the claim), it releases the claim, owner-checked, in the background, so that a retry
/// runs again at once instead of after the lease.
pub(super) struct Claimed<St: Store> {
    pub(super) flow: Flow<St>,
    pub(super) key: StoreKey,
    pub(super) token: OwnerToken,
    armed: bool,
}

impl<St: Store> Claimed<St> {
    pub(super) fn new(flow: Flow<St>, key: StoreKey, token: OwnerToken) -> Self {
        Self {
            flow,
            key,
            token,
            armed: true,
        }
    }

    /// The run settles the claim itself (records or releases it): nothing left to do on drop.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl<St: Store> Drop for Claimed<St> {
    fn drop(&mut self) {
        // A panic that unwinds through the layer leaves the claim to its lease.
        if self.armed && !std::thread::panicking() {
            self.flow
                .settle_later(&self.key, self.token, Settle::Release, false);
        }
    }
}

#[cfg(test)]
mod tests {
    //! One test per way a response future can be dropped, each asserting what the handler did
    //! (its own counters) and what the store holds afterwards.

    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::Full;
    use tokio::sync::Notify;
    use tower::{Service, ServiceBuilder, ServiceExt};

    use crate::IdempotencyLayer;
    use crate::body::RequestBody;
    use crate::store::{Entry, MemoryStore, Store, StoreKey};

    /// What the handler did: calls that started, calls that finished; and the gate it waits at.
    #[derive(Default)]
    struct Handler {
        started: AtomicUsize,
        finished: AtomicUsize,
        entered: Notify,
        gate: Notify,
    }

    fn request(key: &str) -> Request<Full<Bytes>> {
        Request::post("/orders")
            .header("idempotency-key", key)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    }

    /// A service over a gated handler: each call enters, waits for the gate, then answers 201.
    fn service(
        layer: IdempotencyLayer<MemoryStore>,
        handler: &Arc<Handler>,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<crate::body::ResponseBody<Full<Bytes>>>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + use<> {
        let handler = Arc::clone(handler);
        ServiceBuilder::new().layer(layer).service_fn(
            move |_req: Request<RequestBody<Full<Bytes>>>| {
                let handler = Arc::clone(&handler);
                async move {
                    handler.started.fetch_add(1, Ordering::SeqCst);
                    handler.entered.notify_one();
                    handler.gate.notified().await;
                    handler.finished.fetch_add(1, Ordering::SeqCst);
                    let mut res = Response::new(Full::new(Bytes::from_static(b"created")));
                    *res.status_mut() = StatusCode::CREATED;
                    Ok::<_, Infallible>(res)
                }
            },
        )
    }

    async fn entry(store: &MemoryStore, key: &str) -> Option<Entry> {
        store.get(&StoreKey::new(None, key)).await.unwrap()
    }

    /// Lets background tasks (re-sends, detached runs) take their turn.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_before_the_first_poll_leaves_nothing() {
        let store = MemoryStore::new();
        let layer = IdempotencyLayer::new(store.clone());
        let handler = Arc::new(Handler::default());
        let mut svc = service(layer, &handler);
        let fut = svc.ready().await.unwrap().call(request("k1"));
        drop(fut);
        settle().await;
        assert_eq!(handler.started.load(Ordering::SeqCst), 0);
        assert_eq!(entry(&store, "k1").await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_while_claiming_leaves_the_owner_alone() {
        let store = MemoryStore::new();
        let layer = IdempotencyLayer::new(store.clone()).wait_for_in_flight(Duration::from_secs(5));
        let handler = Arc::new(Handler::default());
        let svc = service(layer, &handler);
        let owner = tokio::spawn(svc.clone().oneshot(request("k2")));
        handler.entered.notified().await;
        // The duplicate waits for the owner inside its claim step; then its client goes away.
        let mut duplicate = Box::pin(svc.clone().oneshot(request("k2")));
        assert!(futures_util::poll!(duplicate.as_mut()).is_pending());
        drop(duplicate);
        handler.gate.notify_one();
        let res = owner.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        settle().await;
        assert!(matches!(
            entry(&store, "k2").await,
            Some(Entry::Completed(_))
        ));
        let retry = svc.oneshot(request("k2")).await.unwrap();
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        assert_eq!(handler.started.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_while_running_attached_cancels_and_releases() {
        let store = MemoryStore::new();
        let layer = IdempotencyLayer::new(store.clone()).detach(false);
        let handler = Arc::new(Handler::default());
        let svc = service(layer.clone(), &handler);
        let mut fut = Box::pin(svc.clone().oneshot(request("k3")));
        tokio::select! {
            _ = &mut fut => panic!("the handler is gated"),
            () = handler.entered.notified() => {}
        }
        assert!(matches!(
            entry(&store, "k3").await,
            Some(Entry::InProgress { .. })
        ));
        drop(fut);
        settle().await;
        assert_eq!(handler.finished.load(Ordering::SeqCst), 0, "cancelled");
        assert_eq!(entry(&store, "k3").await, None, "released");
        assert!(layer.detached_tasks().is_empty());
        // A retry runs at once instead of waiting out the lease.
        let mut retry = Box::pin(svc.oneshot(request("k3")));
        tokio::select! {
            _ = &mut retry => panic!("the handler is gated"),
            () = handler.entered.notified() => {}
        }
        handler.gate.notify_one();
        assert_eq!(retry.await.unwrap().status(), StatusCode::CREATED);
        assert_eq!(handler.started.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_while_running_detached_finishes_in_a_task() {
        let store = MemoryStore::new();
        let layer = IdempotencyLayer::new(store.clone());
        let handler = Arc::new(Handler::default());
        let svc = service(layer.clone(), &handler);
        let mut fut = Box::pin(svc.clone().oneshot(request("k4")));
        tokio::select! {
            _ = &mut fut => panic!("the handler is gated"),
            () = handler.entered.notified() => {}
        }
        assert_eq!(
            layer.detached_tasks().len(),
            1,
            "counted while polled in place"
        );
        drop(fut);
        assert_eq!(layer.detached_tasks().len(), 1, "moved into a task");
        handler.gate.notify_one();
        layer.detached_tasks().drain().await;
        assert_eq!(handler.finished.load(Ordering::SeqCst), 1);
        assert!(matches!(
            entry(&store, "k4").await,
            Some(Entry::Completed(_))
        ));
        let retry = svc.oneshot(request("k4")).await.unwrap();
        assert_eq!(retry.status(), StatusCode::CREATED);
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        assert_eq!(handler.started.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_after_the_response_does_nothing() {
        let store = MemoryStore::new();
        let layer = IdempotencyLayer::new(store.clone());
        let handler = Arc::new(Handler::default());
        let svc = service(layer.clone(), &handler);
        handler.gate.notify_one();
        let mut fut = Box::pin(svc.clone().oneshot(request("k5")));
        let res = (&mut fut).await.unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        assert!(
            layer.detached_tasks().is_empty(),
            "the tracker's token went with the run"
        );
        drop(fut);
        assert!(
            layer.detached_tasks().is_empty(),
            "nothing moved into a task"
        );
        settle().await;
        assert!(matches!(
            entry(&store, "k5").await,
            Some(Entry::Completed(_))
        ));
        let retry = svc.oneshot(request("k5")).await.unwrap();
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        assert_eq!(handler.started.load(Ordering::SeqCst), 1);
    }
}
