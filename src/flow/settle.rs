//! Background settling: a `complete` or `release` whose effect is unknown (the store timed out or
//! the connection dropped after the command was sent) is re-sent in a task of its own.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::Flow;
use super::bounded::bounded;
use super::renew::Renewal;
use crate::observe::{self, StoreOp};
use crate::record::Record;
use crate::store::{OwnerToken, Store, StoreKey};

/// What [`Flow::settle_later`] re-sends.
pub(super) enum Settle {
    /// The owner's record.
    Complete(Record),
    /// The release of the owner's claim.
    Release,
}

impl<St: Store> Flow<St> {
    /// Re-sends a `complete` or `release` whose effect is unknown, in a task of its own, until
    /// it lands, the store refuses it, or the store has not answered for a whole lease (a
    /// re-send by the same token is harmless). While a record is owed, the lease is renewed
    /// between re-sends, so that no retry claims the key before the record lands; and a record
    /// that lands after the lease ran out still counts, as long as nobody claimed the key since.
    /// Re-sends back off exponentially with jitter, so that many of them after one outage do not
    /// hit the store in lockstep. The task keeps the request's span, and is tracked, so
    /// [`DetachedTasks::drain`] waits for it.
    ///
    /// [`DetachedTasks::drain`]: crate::DetachedTasks::drain
    pub(super) fn settle_later(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        settle: Settle,
        pause_first: bool,
    ) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, key) = (Arc::clone(&self.store), key.clone());
        let config = &self.config;
        let (limit, lease) = (config.store_timeout, config.lease);
        let task = async move {
            let mut deadline = Instant::now() + lease;
            let mut pause = FIRST_PAUSE;
            if pause_first {
                tokio::time::sleep(jittered(pause)).await;
            }
            let renewal = Renewal {
                store: &*store,
                key: &key,
                token,
                lease,
                limit,
            };
            loop {
                let result = match &settle {
                    Settle::Complete(record) => {
                        observe::resend(StoreOp::Complete);
                        // The lease is kept alive while the record is owed.
                        let complete = bounded(
                            limit,
                            StoreOp::Complete,
                            store.complete(&key, token, record),
                        );
                        let (result, renewed) = renewal.around(complete).await;
                        if renewed {
                            deadline = Instant::now() + lease;
                        }
                        result
                    }
                    Settle::Release => {
                        observe::resend(StoreOp::Release);
                        bounded(limit, StoreOp::Release, store.release(&key, token)).await
                    }
                };
                match (result, &settle) {
                    (Ok(()), _) => return,
                    (Err(e), Settle::Complete(_)) if !e.kind().is_ambiguous() => {
                        observe::refused_record();
                        tracing::error!(
                            key = %key.log_id(),
                            error = %e,
                            "the store refused the re-sent record: another owner claimed the \
                             key after this lease ran out; a retry may run the request again"
                        );
                        return;
                    }
                    // Released already, or not ours: either way the key is free of this claim.
                    (Err(e), Settle::Release) if !e.kind().is_ambiguous() => return,
                    (Err(_), _) => {}
                }
                if Instant::now() + pause >= deadline {
                    tracing::error!(
                        key = %key.log_id(),
                        "the store did not answer for a whole lease; giving up on the re-sends"
                    );
                    return;
                }
                tokio::time::sleep(jittered(pause)).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        };
        let task = config
            .tasks
            .track_future(task.instrument(tracing::Span::current()));
        handle.spawn(task);
    }
}

/// The pause before the first re-send, doubled after each one up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// `pause` with "equal jitter": uniformly between half of it and all of it.
fn jittered(pause: Duration) -> Duration {
    let half = pause / 2;
    let random = getrandom::u32().unwrap_or(u32::MAX / 2);
    half + half.mul_f64(f64::from(random) / f64::from(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_all_of_the_pause() {
        let pause = Duration::from_millis(400);
        let pauses: Vec<Duration> = (0..64).map(|_| jittered(pause)).collect();
        assert!(pauses.iter().all(|p| *p >= pause / 2 && *p <= pause));
        // Not in lockstep: 64 draws are not all the same.
        assert!(pauses.iter().any(|p| *p != pauses[0]));
    }
}
