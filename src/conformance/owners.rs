//! Owner checks: what the owner's `complete`, `release` and `renew` do, and that no other token's do anything.

use super::{Check, LEASE, fingerprint, fresh_key, sample_record};
use crate::store::{Begin, Entry, OwnerToken, Store, StoreErrorKind};

/// The owner's own `renew`, `release`, `begin` and `complete` all succeed.
pub(super) async fn owner_operations_succeed<S: Store>(store: &S) {
    let c = Check::new("owner_operations_succeed", store);
    let (key, a) = (fresh_key(), OwnerToken::generate());
    let fp = fingerprint("a");
    c.expect_eq(
        "begin",
        c.begin(&key, Some(&fp), a, LEASE).await,
        Begin::New,
    );
    c.ok("renew", store.renew(&key, a, LEASE).await);
    c.ok("release", store.release(&key, a).await);
    let b = OwnerToken::generate();
    c.expect_eq(
        "begin after release",
        c.begin(&key, Some(&fp), b, LEASE).await,
        Begin::New,
    );
    c.complete(&key, b, &sample_record(Some(fp), b"done")).await;
}

/// After the owner completes, every `begin` (the owner's too) answers [`Begin::Completed`] with
/// a record of identical bytes and fingerprint.
pub(super) async fn complete_then_begin_replays<S: Store>(store: &S) {
    let c = Check::new("complete_then_begin_replays", store);
    let (key, a) = (fresh_key(), OwnerToken::generate());
    let fp = fingerprint("a");
    c.expect_eq(
        "begin",
        c.begin(&key, Some(&fp), a, LEASE).await,
        Begin::New,
    );
    let record = sample_record(Some(fp), b"{\"id\":2}");
    c.complete(&key, a, &record).await;
    for (who, token) in [("another token", OwnerToken::generate()), ("the owner", a)] {
        match c.begin(&key, Some(&fp), token, LEASE).await {
            Begin::Completed(got) => c.same_record(&format!("begin by {who}"), &got, &record),
            other => c.fail(format_args!(
                "begin by {who} after complete: expected Completed, got {other:?}"
            )),
        }
    }
}

/// A `complete` that the owner sends again with the same record succeeds; another record by
/// the same owner may succeed or fail with `NotOwner`, but never replaces the first.
pub(super) async fn complete_again_is_harmless<S: Store>(store: &S) {
    let c = Check::new("complete_again_is_harmless", store);
    let (key, a) = (fresh_key(), OwnerToken::generate());
    c.expect_eq("begin", c.begin(&key, None, a, LEASE).await, Begin::New);
    let record = sample_record(None, b"first");
    c.complete(&key, a, &record).await;
    c.ok(
        "complete sent again",
        store.complete(&key, a, &record).await,
    );
    match store
        .complete(&key, a, &sample_record(None, b"second"))
        .await
    {
        Ok(()) => {}
        Err(e) if e.kind() == StoreErrorKind::NotOwner => {}
        Err(e) => c.fail(format_args!("complete with another record: {e} ({e:?})")),
    }
    c.expect_record("get after the complete calls", &key, &record)
        .await;
}

/// `complete`, `release` and `renew` by a token that does not hold the key fail with
/// [`StoreErrorKind::NotOwner`] and change nothing, while the key is claimed and once it is
/// completed (when the claim is over for its owner too).
pub(super) async fn foreign_token_is_not_owner<S: Store>(store: &S) {
    let c = Check::new("foreign_token_is_not_owner", store);
    let (key, a, b) = (fresh_key(), OwnerToken::generate(), OwnerToken::generate());
    let fp = fingerprint("a");
    c.expect_eq(
        "begin",
        c.begin(&key, Some(&fp), a, LEASE).await,
        Begin::New,
    );
    let intruder = sample_record(None, b"intruder");
    c.not_owner(
        "complete by a foreign token",
        store.complete(&key, b, &intruder).await,
    );
    c.not_owner("release by a foreign token", store.release(&key, b).await);
    c.not_owner(
        "renew by a foreign token",
        store.renew(&key, b, LEASE).await,
    );
    c.expect_eq(
        "get after the foreign calls",
        c.get(&key).await,
        Some(Entry::InProgress {
            fingerprint: Some(fp),
            token: a,
        }),
    );
    c.ok("renew by the owner", store.renew(&key, a, LEASE).await);
    let record = sample_record(Some(fp), b"owner");
    c.complete(&key, a, &record).await;
    c.not_owner(
        "complete of a completed key by a foreign token",
        store.complete(&key, b, &intruder).await,
    );
    c.not_owner(
        "release of a completed key by a foreign token",
        store.release(&key, b).await,
    );
    c.not_owner(
        "renew of a completed key by a foreign token",
        store.renew(&key, b, LEASE).await,
    );
    c.not_owner(
        "release of a completed key by its owner",
        store.release(&key, a).await,
    );
    c.not_owner(
        "renew of a completed key by its owner",
        store.renew(&key, a, LEASE).await,
    );
    c.expect_record("get after the calls on the completed key", &key, &record)
        .await;
}

/// `release` and `renew` of a key that was never claimed fail with
/// [`StoreErrorKind::NotOwner`] and write nothing.
pub(super) async fn release_and_renew_of_an_unclaimed_key_are_not_owner<S: Store>(store: &S) {
    let c = Check::new("release_and_renew_of_an_unclaimed_key_are_not_owner", store);
    let (key, a) = (fresh_key(), OwnerToken::generate());
    c.not_owner("release", store.release(&key, a).await);
    c.not_owner("renew", store.renew(&key, a, LEASE).await);
    c.expect_eq("get after release and renew", c.get(&key).await, None);
    let b = OwnerToken::generate();
    c.expect_eq(
        "begin afterwards",
        c.begin(&key, None, b, LEASE).await,
        Begin::New,
    );
    c.release(&key, b).await;
}

/// After the owner's `release`, the key reads as missing and the next `begin` by anyone is
/// [`Begin::New`]; a second `release` is `NotOwner`.
pub(super) async fn release_frees_the_key<S: Store>(store: &S) {
    let c = Check::new("release_frees_the_key", store);
    let (key, a, b) = (fresh_key(), OwnerToken::generate(), OwnerToken::generate());
    c.expect_eq(
        "begin",
        c.begin(&key, Some(&fingerprint("a")), a, LEASE).await,
        Begin::New,
    );
    c.release(&key, a).await;
    c.expect_eq("get after release", c.get(&key).await, None);
    c.not_owner("release sent again", store.release(&key, a).await);
    let fp = fingerprint("b");
    c.expect_eq(
        "begin by another token",
        c.begin(&key, Some(&fp), b, LEASE).await,
        Begin::New,
    );
    c.expect_eq(
        "get after the new begin",
        c.get(&key).await,
        Some(Entry::InProgress {
            fingerprint: Some(fp),
            token: b,
        }),
    );
    c.release(&key, b).await;
}
