//! Leases: renewal, expiry, and the owner's `complete` after an outage shorter than the lease.

use std::time::Duration;

use tokio::time::sleep;

use super::{Check, LEASE, fingerprint, fresh_key, sample_record};
use crate::store::{Begin, Entry, OwnerToken, Store};

/// `renew` moves the end of the lease: a claim of 300 ms renewed after 200 ms is still held at
/// 400 ms, and free at 650 ms.
pub(super) async fn renew_extends_the_lease<S: Store>(store: &S) {
    let c = Check::new("renew_extends_the_lease", store);
    let lease = Duration::from_millis(300);
    let (key, a, b) = (fresh_key(), OwnerToken::generate(), OwnerToken::generate());
    let fp = fingerprint("a");
    c.expect_eq(
        "begin",
        c.begin(&key, Some(&fp), a, lease).await,
        Begin::New,
    );
    sleep(Duration::from_millis(200)).await;
    c.ok("renew by the owner", store.renew(&key, a, lease).await);
    sleep(Duration::from_millis(200)).await;
    c.expect_eq(
        "begin by another token after the first lease would have ended",
        c.begin(&key, None, b, lease).await,
        Begin::InProgress {
            fingerprint: Some(fp),
        },
    );
    sleep(Duration::from_millis(250)).await;
    c.expect_eq(
        "begin by another token after the renewed lease ended",
        c.begin(&key, None, b, LEASE).await,
        Begin::New,
    );
    c.release(&key, b).await;
}

/// When a lease ends, the key reads as missing and another token can claim it; the stale
/// owner's `complete`, `renew` and `release` are refused and never overwrite the new owner.
pub(super) async fn expired_lease_is_a_free_key<S: Store>(store: &S) {
    let c = Check::new("expired_lease_is_a_free_key", store);
    let (key, stale, next) = (fresh_key(), OwnerToken::generate(), OwnerToken::generate());
    c.expect_eq(
        "begin",
        c.begin(
            &key,
            Some(&fingerprint("stale")),
            stale,
            Duration::from_millis(200),
        )
        .await,
        Begin::New,
    );
    sleep(Duration::from_millis(300)).await;
    c.expect_eq("get after the lease ended", c.get(&key).await, None);
    let fp = fingerprint("next");
    c.expect_eq(
        "begin by the next owner",
        c.begin(&key, Some(&fp), next, LEASE).await,
        Begin::New,
    );
    let stale_record = sample_record(None, b"stale");
    c.not_owner(
        "complete by the stale owner",
        store.complete(&key, stale, &stale_record).await,
    );
    c.not_owner(
        "renew by the stale owner",
        store.renew(&key, stale, LEASE).await,
    );
    c.not_owner(
        "release by the stale owner",
        store.release(&key, stale).await,
    );
    c.expect_eq(
        "get after the stale owner's calls",
        c.get(&key).await,
        Some(Entry::InProgress {
            fingerprint: Some(fp),
            token: next,
        }),
    );
    let record = sample_record(Some(fp), b"next");
    c.complete(&key, next, &record).await;
    c.not_owner(
        "complete by the stale owner after the next owner's",
        store.complete(&key, stale, &stale_record).await,
    );
    c.expect_record("get at the end", &key, &record).await;
}

/// The owner's `complete` lands when its lease ran out and nobody claimed the key since (a
/// store outage shorter than the lease delayed it): the key is free, so the record is kept and
/// the request never runs again. A re-send keeps the first record.
pub(super) async fn complete_after_the_lease_ran_out_lands<S: Store>(store: &S) {
    let c = Check::new("complete_after_the_lease_ran_out_lands", store);
    let (key, a) = (fresh_key(), OwnerToken::generate());
    let fp = fingerprint("late");
    c.expect_eq(
        "begin",
        c.begin(&key, Some(&fp), a, Duration::from_millis(200))
            .await,
        Begin::New,
    );
    sleep(Duration::from_millis(300)).await;
    let record = sample_record(Some(fp), b"late");
    c.ok(
        "complete after the lease ran out, the key unclaimed since",
        store.complete(&key, a, &record).await,
    );
    c.expect_record("get after the late complete", &key, &record)
        .await;
    match c
        .begin(&key, Some(&fp), OwnerToken::generate(), LEASE)
        .await
    {
        Begin::Completed(got) => c.same_record("begin after the late complete", &got, &record),
        other => c.fail(format_args!(
            "begin after the late complete: expected Completed, got {other:?}"
        )),
    }
    c.ok(
        "a re-sent late complete",
        store
            .complete(&key, a, &sample_record(Some(fp), b"again"))
            .await,
    );
    c.expect_record("get after the re-send", &key, &record)
        .await;
}
