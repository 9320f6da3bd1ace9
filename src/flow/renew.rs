//! Renewing: the owner's lease is renewed every third of it while the handler runs, while its
//! record is sent, and while a record whose effect is unknown is re-sent in the background, so
//! that no duplicate claims the key before the record lands.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::bounded::bounded;
use crate::observe::StoreOp;
use crate::store::{OwnerToken, Store, StoreKey};

/// The lease an owner keeps alive.
pub(super) struct Renewal<'a, St> {
    pub(super) store: &'a St,
    pub(super) key: &'a StoreKey,
    pub(super) token: OwnerToken,
    pub(super) lease: Duration,
    /// The store timeout, for each `renew`.
    pub(super) limit: Duration,
}

impl<St: Store> Renewal<'_, St> {
    /// Runs `fut` while renewing the lease every third of it; also tells whether a renewal
    /// succeeded meanwhile. The renewals run beside `fut`, never in its way.
    pub(super) async fn around<F: Future>(&self, fut: F) -> (F::Output, bool) {
        let period = (self.lease / 3).max(Duration::from_millis(1));
        let renewed = AtomicBool::new(false);
        let renew = async {
            let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
            loop {
                ticks.tick().await;
                let renew = self.store.renew(self.key, self.token, self.lease);
                match bounded(self.limit, StoreOp::Renew, renew).await {
                    Ok(()) => renewed.store(true, Ordering::Relaxed),
                    Err(e) => {
                        tracing::warn!(key = %self.key.log_id(), error = %e, "renewing the lease failed");
                    }
                }
            }
        };
        let out = tokio::select! {
            biased;
            out = fut => out,
            () = renew => unreachable!("renewal never ends"),
        };
        (out, renewed.load(Ordering::Relaxed))
    }
}
