//! Waiting: [`Store::wait`] wakes on the end of a claim and returns by its timeout.

use std::time::Duration;

use futures_util::future::join;
use tokio::time::{Instant, sleep};

use super::{Check, LEASE, fresh_key, sample_record};
use crate::store::{Begin, Entry, OwnerToken, Store};

/// A caller that waits for a held key (looking again after each [`Store::wait`], as the layer
/// does) sees the end of the claim promptly after the owner completes or releases it, well
/// before the wait's timeout.
pub(super) async fn wait_returns_after_complete_or_release<S: Store>(store: &S) {
    let c = Check::new("wait_returns_after_complete_or_release", store);
    let timeout = Duration::from_secs(2);
    for completes in [true, false] {
        let end = if completes { "complete" } else { "release" };
        let (key, a) = (fresh_key(), OwnerToken::generate());
        c.expect_eq("begin", c.begin(&key, None, a, LEASE).await, Begin::New);
        let waiter = async {
            let start = Instant::now();
            while let Some(Entry::InProgress { .. }) = c.get(&key).await {
                if start.elapsed() >= timeout / 2 {
                    c.fail(format_args!(
                        "the key was still in progress {:?} after {end}",
                        start.elapsed()
                    ));
                }
                c.ok("wait", store.wait(&key, timeout).await);
                // A store may return early; let the owner run before looking again.
                tokio::task::yield_now().await;
            }
            // A wait that sleeps its whole timeout instead of waking is too late.
            if start.elapsed() >= timeout / 2 {
                c.fail(format_args!(
                    "the waiter saw the {end} only after {:?}",
                    start.elapsed()
                ));
            }
        };
        let owner = async {
            sleep(Duration::from_millis(50)).await;
            if completes {
                c.complete(&key, a, &sample_record(None, b"done")).await;
            } else {
                c.release(&key, a).await;
            }
        };
        join(waiter, owner).await;
    }
}

/// [`Store::wait`] on a held key returns by its timeout when nothing happens, and on a key that
/// is not in progress returns well before it.
pub(super) async fn wait_returns_by_the_timeout<S: Store>(store: &S) {
    let c = Check::new("wait_returns_by_the_timeout", store);
    let (key, a) = (fresh_key(), OwnerToken::generate());
    c.expect_eq("begin", c.begin(&key, None, a, LEASE).await, Begin::New);
    let timeout = Duration::from_millis(300);
    let margin = Duration::from_millis(500);
    if tokio::time::timeout(timeout + margin, store.wait(&key, timeout))
        .await
        .is_err()
    {
        c.fail(format_args!(
            "wait on a held key with a timeout of {timeout:?} was still pending after {:?}",
            timeout + margin
        ));
    }
    let free = Duration::from_secs(5);
    if tokio::time::timeout(margin, store.wait(&fresh_key(), free))
        .await
        .is_err()
    {
        c.fail(format_args!(
            "wait on a free key with a timeout of {free:?} was still pending after {margin:?}"
        ));
    }
    c.release(&key, a).await;
}
