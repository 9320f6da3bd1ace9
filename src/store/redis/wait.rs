//! Waiting for the owner of a claimed key to finish.

use std::time::Duration;

use ::redis::aio::ConnectionLike;

use super::RedisStore;
use crate::store::{Entry, Store, StoreError, StoreKey};

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Polls with `GET` until the key is no longer claimed, or `timeout` has passed.
    pub(super) async fn poll(&self, key: &StoreKey, timeout: Duration) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(());
            }
            tokio::time::sleep(self.poll_interval.min(deadline - now)).await;
            if !matches!(self.get(key).await?, Some(Entry::InProgress { .. })) {
                return Ok(());
            }
        }
    }
}
