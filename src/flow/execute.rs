//! Executing: the request owns the key. The inner service runs once while the lease is renewed;
//! then its response is recorded (replayable) or its claim released (retryable), and only then
//! is the response sent on.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::coalesce::{Lead, Local};
use super::execution::{Answer, Claimed};
use super::renew::Renewal;
use super::settle::Settle;
use crate::body::{Buffered, RequestBody, ResponseBody, buffer};
use crate::extensions::Outcome;
use crate::fingerprint::Fingerprint;
use crate::observe::{self, StoreOp};
use crate::policy::{Disposition, ResponseHead};
use crate::record::Record;
use crate::store::Store;

/// The request owns the key: runs it and settles the claim.
pub(super) struct Owner<St: Store> {
    claim: Claimed<St>,
    fingerprint: Option<Fingerprint>,
    /// This request's lead of its key on this instance, when coalescing: the record goes to
    /// the duplicates that wait here; dropped (a release, a cut-off run), they ask the store.
    local: Option<Lead>,
}

impl<St: Store> Owner<St> {
    pub(super) fn new(
        claim: Claimed<St>,
        fingerprint: Option<Fingerprint>,
        local: Option<Lead>,
    ) -> Self {
        Self {
            claim,
            fingerprint,
            local,
        }
    }

    // Not an `async fn`, for the reason given at `Flow::run`.
    pub(super) fn execute<S, ReqBody, ResBody>(
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
                    self.claim.flow.outcome(Outcome::Released);
                    std::panic::resume_unwind(panic)
                }
                Ok(Err(e)) => {
                    self.release("the handler failed").await;
                    self.claim.flow.outcome(Outcome::Released);
                    return Err(e);
                }
                Ok(Ok(res)) => res,
            };
            let (mut parts, body) = res.into_parts();
            // The handler's own word first, then the layer's policy.
            let chosen = parts.extensions.get::<Disposition>().copied();
            let policy = &*self.claim.flow.config.record_policy;
            let disposition = chosen.unwrap_or_else(|| {
                policy.disposition(&ResponseHead::new(parts.status, &parts.headers))
            });
            if disposition == Disposition::Release {
                self.release("the response is retryable").await;
                return Ok(self.answer(parts, ResponseBody::new(body), Outcome::Released));
            }
            let limit = self.claim.flow.config.max_response_body;
            // Boxed: after an overflow, the rest is streamed on behind what was read.
            let mut pinned = Box::pin(body);
            let (body, outcome) = match self.renewing(buffer(pinned.as_mut(), limit)).await {
                Buffered::Complete { data, trailers }
                    if chosen.is_none()
                        && trailers.as_ref().and_then(crate::grpc::status).map(|code| {
                            let head = ResponseHead::new(parts.status, &parts.headers);
                            policy.disposition(&head.with_grpc_status(code))
                        }) == Some(Disposition::Release) =>
                {
                    self.release("the gRPC status is retryable").await;
                    (ResponseBody::full(data, trailers), Outcome::Released)
                }
                Buffered::Complete { data, trailers } => {
                    self.claim.flow.expiry_header(&mut parts.headers);
                    let skipped = &self.claim.flow.config.skipped_headers;
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
                    (ResponseBody::full(data, trailers), Outcome::Recorded)
                }
                Buffered::Overflow { prefix } => {
                    self.claim.flow.expiry_header(&mut parts.headers);
                    self.complete(&Record::not_stored(self.fingerprint)).await;
                    (ResponseBody::chained(prefix, pinned), Outcome::NotStored)
                }
                Buffered::Failed { prefix, error } => {
                    self.release("the response body failed").await;
                    (ResponseBody::failed(prefix, error), Outcome::Released)
                }
            };
            Ok(self.answer(parts, body, outcome))
        }
    }

    /// The response with its outcome, reported.
    fn answer<B>(
        &self,
        mut parts: http::response::Parts,
        body: B,
        outcome: Outcome,
    ) -> Response<B> {
        self.claim.flow.outcome(outcome);
        parts.extensions.insert(outcome);
        Response::from_parts(parts, body)
    }

    /// Runs `fut` while renewing the lease.
    async fn renewing<F: Future>(&self, fut: F) -> F::Output {
        let Claimed {
            flow, key, token, ..
        } = &self.claim;
        let renewal = Renewal {
            store: &*flow.store,
            key,
            token: *token,
            lease: flow.config.lease,
            limit: flow.config.store_timeout,
        };
        renewal.around(fut).await.0
    }

    /// Records the result, renewing the lease while the store takes its time. The response goes
    /// out whatever happens here.
    async fn complete(&mut self, record: &Record) {
        self.claim.disarm();
        let local = self.local.take();
        let Claimed {
            flow, key, token, ..
        } = &self.claim;
        let stored = flow.bounded(StoreOp::Complete, flow.store.complete(key, *token, record));
        match self.renewing(stored).await {
            Ok(()) => {}
            Err(e) if e.kind().is_ambiguous() => {
                tracing::warn!(key = %key.log_id(), error = %e, "recording the response may have failed; re-sending it");
                flow.settle_later(key, *token, Settle::Complete(record.clone()), true);
            }
            Err(e) => {
                observe::refused_record();
                tracing::error!(
                    key = %key.log_id(),
                    error = %e,
                    "the store refused the record: another owner claimed the key after this \
                     lease ran out; a retry may run the request again"
                );
            }
        }
        // The duplicates that wait on this instance get what this execution answered.
        if let Some(local) = local {
            local.publish(Local::Completed(record.clone()));
        }
    }

    /// Releases the claim, so that a retry runs again.
    async fn release(&mut self, why: &'static str) {
        self.claim.disarm();
        self.local = None;
        let Claimed {
            flow, key, token, ..
        } = &self.claim;
        tracing::debug!(key = %key.log_id(), why, "releasing the claim");
        match flow
            .bounded(StoreOp::Release, flow.store.release(key, *token))
            .await
        {
            // Not ours any more: released already, or the lease ran out. Either way it is free.
            Ok(()) => {}
            Err(e) if e.kind().is_ambiguous() => {
                tracing::warn!(key = %key.log_id(), error = %e, "releasing the claim may have failed; re-sending it");
                flow.settle_later(key, *token, Settle::Release, true);
            }
            Err(_) => {}
        }
    }
}
