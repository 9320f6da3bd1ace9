//! Background settling: a `complete` or `release` whose effect is unknown (the store timed out or
//! the connection dropped after the command was sent) is re-sent in a task of its own.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Flow;
use super::bounded::bounded;
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
    /// it lands, the store refuses it, or the lease is surely over (a re-send by the same token
    /// is harmless). Without it a lost `complete` would let a retry run the request again once
    /// the lease ran out. The task is tracked, so [`DetachedTasks::drain`] waits for it.
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
        let (limit, deadline) = (config.store_timeout, Instant::now() + config.lease);
        let task = async move {
            let mut pause = Duration::from_millis(50);
            if pause_first {
                tokio::time::sleep(pause).await;
            }
            loop {
                let result = match &settle {
                    Settle::Complete(record) => {
                        bounded(limit, store.complete(&key, token, record)).await
                    }
                    Settle::Release => bounded(limit, store.release(&key, token)).await,
                };
                match result {
                    Ok(()) => return,
                    Err(e) if !e.kind().is_ambiguous() => return,
                    Err(_) => {}
                }
                if Instant::now() + pause >= deadline {
                    tracing::error!(key = %key.key(), "the store did not answer before the lease ran out");
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        };
        handle.spawn(config.tasks.track_future(task));
    }
}
