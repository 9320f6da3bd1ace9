//! The store-call timeout: every store call the layer makes is bounded by
//! [`store_timeout`](crate::IdempotencyLayer::store_timeout), and timed here for the store
//! latency histogram (feature `metrics`; without it, nothing is timed).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

use super::Flow;
use crate::observe::{Started, StoreOp};
use crate::store::{StoreError, StoreErrorKind};

impl<St> Flow<St> {
    /// Runs the store call `kind` under the layer's store timeout.
    pub(super) fn bounded<F: Future>(&self, kind: StoreOp, op: F) -> Bounded<F> {
        bounded(self.config.store_timeout, kind, op)
    }
}

/// Runs the store call `kind` under `limit`: past it, the call fails with
/// [`StoreErrorKind::Timeout`].
pub(crate) fn bounded<F: Future>(limit: Duration, kind: StoreOp, op: F) -> Bounded<F> {
    Bounded {
        op,
        limit,
        timer: None,
        kind,
        started: None,
    }
}

pin_project! {
    /// A store call under a time limit.
    ///
    /// Like [`tokio::time::timeout`], but the timer is made only when the call is still pending
    /// after its first poll: an in-process store (the memory store) answers at once and then no
    /// timer is made at all. The limit counts from that first poll, which only sends the
    /// command. Small, unlike a `Timeout`, because it lives in every request's future.
    pub(crate) struct Bounded<F> {
        #[pin]
        op: F,
        limit: Duration,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        kind: StoreOp,
        // Set at the first poll (zero-sized without the feature `metrics`).
        started: Option<Started>,
    }
}

impl<F, T> Future for Bounded<F>
where
    F: Future<Output = Result<T, StoreError>>,
{
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let started = *this.started.get_or_insert_with(Started::now);
        if let Poll::Ready(result) = this.op.poll(cx) {
            started.finished(*this.kind, &result);
            return Poll::Ready(result);
        }
        let limit = *this.limit;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let result = Err(StoreError::new(StoreErrorKind::Timeout));
                started.finished(*this.kind, &result);
                Poll::Ready(result)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_store_call_past_its_limit_times_out() {
        let never = std::future::pending::<Result<(), StoreError>>();
        let err = bounded(Duration::from_millis(10), StoreOp::Get, never)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Timeout);
        let ready = async { Ok::<_, StoreError>(7) };
        assert_eq!(
            bounded(Duration::ZERO, StoreOp::Get, ready).await.unwrap(),
            7
        );
    }
}
