//! Claiming: one atomic `begin` decides whether this request runs, replays or is refused.
//!
//! A store error is ambiguous (a timed-out `SET NX` may still have landed), so a failed `begin`
//! is read back before the layer decides; a claim that may have landed unseen is released in the
//! background. With [`wait_for_in_flight`](crate::IdempotencyLayer::wait_for_in_flight), a
//! duplicate waits for the owner instead of answering `409`.

use tokio::time::Instant;

use super::Flow;
use super::bounded::bounded;
use super::coalesce::{Followed, Joined, Lead, Local, follow};
use super::execution::ClaimInFlight;
use super::settle::Settle;
use crate::fingerprint::Fingerprint;
use crate::observe::StoreOp;
use crate::problem::ProblemKind;
use crate::record::Record;
use crate::store::{
    Begin, DEFAULT_POLL_INTERVAL, OwnerToken, Store, StoreError, StoreErrorKind, StoreKey,
};

/// Where the claim left the request.
pub(super) enum Claim {
    /// This request owns the key; it leads the key's requests on this instance when coalescing.
    Owner(Option<Lead>),
    /// An earlier execution's record, to replay.
    Replay(Record),
    /// Answered with a problem, without running.
    Problem(ProblemKind),
    /// The store failed and the layer fails open.
    Unprotected,
}

impl<St: Store> Flow<St> {
    /// Claims the key, or finds out who has it.
    pub(super) async fn claim(
        &self,
        key: &StoreKey,
        fingerprint: Option<&Fingerprint>,
        token: OwnerToken,
    ) -> Claim {
        let deadline = self.config.wait.map(|wait| Instant::now() + wait);
        loop {
            let lead = match self.coalescing().map(|inflight| inflight.join(key)) {
                None => None,
                Some(Joined::Lead(lead)) => Some(lead),
                // Rare: boxed, to keep every request's future small.
                Some(Joined::Follow(news)) => {
                    match Box::pin(follow(news, fingerprint, deadline)).await {
                        Followed::Answer(claim) => return claim,
                        Followed::Retry => continue,
                    }
                }
            };
            let begin = self.store.begin(key, fingerprint, token, self.config.lease);
            let in_flight = ClaimInFlight::arm(self, key, token);
            let begun = match self.bounded(StoreOp::Begin, begin).await {
                Ok(found) => Ok(found),
                // Rare: boxed, to keep every request's future small.
                Err(e) => Box::pin(self.resolve(key, token, e)).await,
            };
            in_flight.disarm();
            let found = match begun {
                Ok(found) => found,
                Err(e) => {
                    if e.kind().is_ambiguous() {
                        // The claim may have landed unseen: free it rather than leave retries a
                        // lease of 409s.
                        self.settle_later(key, token, Settle::Release, true);
                    }
                    return self.store_failed(key, e);
                }
            };
            if let Some(lead) = &lead {
                lead.publish(match &found {
                    Begin::New => Local::Running(fingerprint.copied()),
                    Begin::Completed(record) => Local::Completed(record.clone()),
                    Begin::InProgress { fingerprint } => Local::Elsewhere(*fingerprint),
                });
            }
            let theirs = match &found {
                Begin::New => return Claim::Owner(lead),
                Begin::Completed(record) => record.fingerprint(),
                Begin::InProgress { fingerprint } => fingerprint.as_ref(),
            };
            // Followers that wait do so through the store, as this request does.
            drop(lead);
            if !same_request(theirs, fingerprint) {
                return Claim::Problem(ProblemKind::Mismatch);
            }
            if let Begin::Completed(record) = found {
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
        if let Err(e) = bounded(deadline - now, StoreOp::Wait, wait).await {
            tracing::debug!(error = %e, "waiting for the owner failed");
            let pause = deadline.min(now + DEFAULT_POLL_INTERVAL);
            tokio::time::sleep_until(pause).await;
        }
    }

    /// After a failed `begin`, whose effect may be unknown: looks whether the claim landed, and
    /// answers what the `begin` would have.
    async fn resolve(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        error: StoreError,
    ) -> Result<Begin, StoreError> {
        if !error.kind().is_ambiguous() {
            return Err(error);
        }
        tracing::debug!(error = %error, "begin failed; reading the key back");
        match self.bounded(StoreOp::Get, self.store.get(key)).await {
            Ok(Some(entry)) => Ok(entry.begin_for(token)),
            // The claim did not land, or the store cannot say: nothing ran, fail as asked.
            Ok(None) | Err(_) => Err(error),
        }
    }

    /// The layer's in-flight keys, when duplicates are coalesced in process.
    fn coalescing(&self) -> Option<&std::sync::Arc<super::coalesce::Inflight>> {
        self.inflight.as_ref()
    }

    fn store_failed(&self, key: &StoreKey, error: StoreError) -> Claim {
        if self.config.fail_open && error.kind() != StoreErrorKind::Corrupt {
            return Claim::Unprotected;
        }
        tracing::warn!(key = %key.log_id(), error = %error, "idempotency store failed; answering 503");
        Claim::Problem(ProblemKind::StoreUnavailable)
    }
}

/// Whether two fingerprints allow a replay: equal, or one side has none.
pub(super) fn same_request(stored: Option<&Fingerprint>, ours: Option<&Fingerprint>) -> bool {
    match (stored, ours) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}
