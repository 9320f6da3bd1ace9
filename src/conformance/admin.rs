//! The operator's calls: [`Store::lookup`] reads each state without the response unless asked,
//! and [`Store::evict`] removes a completed key, refuses a claim unless forced, and wakes the
//! claim's waiters when it removes one.
//!
//! A store that keeps the default [`Store::evict`] answers
//! [`StoreErrorKind::Unsupported`](crate::store::StoreErrorKind::Unsupported); the checks accept
//! that, and then check that the call changed nothing. A store that reports no expiry
//! (`KeyInfo::expires_in` is `None`, the default `lookup`) passes too; a reported expiry must be
//! right.

use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::{Check, LEASE, fingerprint, fresh_key, sample_record};
use crate::store::{
    Begin, Evict, Evicted, KeyInfo, KeyState, LookupOptions, OwnerToken, Store, StoreErrorKind,
    StoreKey,
};

impl<S: Store> Check<'_, S> {
    async fn lookup(&self, key: &StoreKey, with_response: bool) -> Option<KeyInfo> {
        let options = LookupOptions::new().with_response(with_response);
        self.ok("lookup", self.store.lookup(key, options).await)
    }

    /// `evict`, or `None` when the store does not support it.
    async fn evict(&self, key: &StoreKey, how: Evict) -> Option<Evicted> {
        match self.store.evict(key, how).await {
            Err(e) if e.kind() == StoreErrorKind::Unsupported => None,
            other => Some(self.ok("evict", other)),
        }
    }

    #[track_caller]
    fn expires_within(&self, what: &str, info: &KeyInfo, at_most: Duration) {
        if let Some(left) = info.expires_in()
            && (left.is_zero() || left > at_most)
        {
            self.fail(format_args!(
                "{what}: expires in {left:?}, expected more than zero and at most {at_most:?}"
            ));
        }
    }

    #[track_caller]
    fn expect_state(&self, what: &str, info: Option<&KeyInfo>, state: KeyState) {
        self.expect_eq(what, info.map(KeyInfo::state), Some(state));
    }
}

/// `lookup` of an unknown key is `None`; of a claim, its owner and fingerprint and at most the
/// lease left, never a record; of a completed key, its fingerprint, and its record only when
/// asked for.
pub(super) async fn lookup_reads_each_state<S: Store>(store: &S) {
    let c = Check::new("lookup_reads_each_state", store);
    let (key, a, fp) = (fresh_key(), OwnerToken::generate(), fingerprint("lookup"));
    c.expect_eq("lookup of an unknown key", c.lookup(&key, true).await, None);

    c.expect_eq(
        "begin",
        c.begin(&key, Some(&fp), a, LEASE).await,
        Begin::New,
    );
    for with_response in [false, true] {
        let what = format!("lookup of a claim (with_response: {with_response})");
        let info = c.lookup(&key, with_response).await;
        c.expect_state(&what, info.as_ref(), KeyState::InProgress { owner: a });
        let info = info.expect("checked above");
        c.expect_eq(
            &format!("{what}: fingerprint"),
            info.fingerprint(),
            Some(&fp),
        );
        c.expect_eq(&format!("{what}: record"), info.record(), None);
        c.expires_within(&what, &info, LEASE);
    }

    let record = sample_record(Some(fp), b"looked up");
    c.complete(&key, a, &record).await;
    let info = c.lookup(&key, false).await;
    c.expect_state(
        "lookup of a completed key",
        info.as_ref(),
        KeyState::Completed,
    );
    let info = info.expect("checked above");
    c.expect_eq(
        "lookup of a completed key: fingerprint",
        info.fingerprint(),
        Some(&fp),
    );
    c.expect_eq(
        "lookup of a completed key without the response: record",
        info.record(),
        None,
    );
    if info.expires_in() == Some(Duration::ZERO) {
        c.fail(format_args!("lookup of a completed key: expires in zero"));
    }
    let info = c.lookup(&key, true).await.expect("the key is completed");
    match info.record() {
        Some(got) => c.same_record("lookup with the response", got, &record),
        None => c.fail(format_args!(
            "lookup with the response of a completed key returned no record"
        )),
    }
}

/// `evict` of a completed key removes it (the next `begin` is new), and of an unknown key
/// removes nothing.
pub(super) async fn evict_removes_a_completed_key<S: Store>(store: &S) {
    let c = Check::new("evict_removes_a_completed_key", store);
    c.expect_eq(
        "evict of an unknown key",
        c.evict(&fresh_key(), Evict::Force)
            .await
            .unwrap_or(Evicted::Nothing),
        Evicted::Nothing,
    );
    for how in [Evict::CompletedOnly, Evict::Force] {
        let (key, a) = (fresh_key(), OwnerToken::generate());
        c.expect_eq("begin", c.begin(&key, None, a, LEASE).await, Begin::New);
        c.complete(&key, a, &sample_record(None, b"to evict")).await;
        let what = format!("evict ({how:?}) of a completed key");
        let Some(evicted) = c.evict(&key, how).await else {
            c.expect_state(
                &what,
                c.lookup(&key, false).await.as_ref(),
                KeyState::Completed,
            );
            continue;
        };
        c.expect_eq(&what, evicted, Evicted::Record);
        c.expect_eq(
            &format!("lookup after {what}"),
            c.lookup(&key, false).await,
            None,
        );
        let b = OwnerToken::generate();
        c.expect_eq(
            &format!("begin after {what}"),
            c.begin(&key, None, b, LEASE).await,
            Begin::New,
        );
        c.expect_eq(
            &format!("evict (CompletedOnly) after {what} and a new claim"),
            c.evict(&key, Evict::CompletedOnly).await,
            Some(Evicted::Refused { owner: b }),
        );
        c.release(&key, b).await;
    }
}

/// `evict` leaves an in-progress claim alone unless forced; forced, it removes the claim (the
/// owner loses it, the next `begin` is new) and the claim's waiters return well before their
/// timeout.
pub(super) async fn evict_refuses_a_claim_unless_forced<S: Store>(store: &S) {
    let c = Check::new("evict_refuses_a_claim_unless_forced", store);
    let (key, a, b) = (fresh_key(), OwnerToken::generate(), OwnerToken::generate());
    c.expect_eq("begin", c.begin(&key, None, a, LEASE).await, Begin::New);
    let Some(evicted) = c.evict(&key, Evict::CompletedOnly).await else {
        c.expect_state(
            "lookup after an unsupported evict of a claim",
            c.lookup(&key, false).await.as_ref(),
            KeyState::InProgress { owner: a },
        );
        c.release(&key, a).await;
        return;
    };
    c.expect_eq(
        "evict (CompletedOnly) of a claim",
        evicted,
        Evicted::Refused { owner: a },
    );
    c.expect_state(
        "lookup after a refused evict",
        c.lookup(&key, false).await.as_ref(),
        KeyState::InProgress { owner: a },
    );

    let timeout = Duration::from_secs(4);
    let waiter = async {
        let start = Instant::now();
        c.ok("wait", store.wait(&key, timeout).await);
        start.elapsed()
    };
    let evict = async {
        sleep(Duration::from_millis(50)).await;
        c.evict(&key, Evict::Force).await
    };
    let (waited, forced) = tokio::join!(waiter, evict);
    c.expect_eq(
        "evict (Force) of a claim",
        forced,
        Some(Evicted::Claim { owner: a }),
    );
    if waited >= timeout / 2 {
        c.fail(format_args!(
            "a waiter saw the forced eviction only after {waited:?}"
        ));
    }
    c.expect_eq(
        "lookup after a forced evict",
        c.lookup(&key, false).await,
        None,
    );
    c.not_owner(
        "renew by the evicted owner",
        store.renew(&key, a, LEASE).await,
    );
    c.expect_eq(
        "begin after a forced evict",
        c.begin(&key, None, b, LEASE).await,
        Begin::New,
    );
    c.release(&key, b).await;
}

/// A store built with a response retention of `ttl` and a longer key retention: once the
/// response expired, `begin` answers the key's fingerprint-only record (the layer's
/// `result-expired`), `lookup` reads the key as [`KeyState::ResponseExpired`] with its
/// fingerprint and no response, and `evict` removes it, so that the next `begin` is new.
pub(super) async fn evict_removes_a_remembered_key<S: Store>(store: &S, ttl: Duration) {
    let c = Check::new("evict_removes_a_remembered_key", store);
    let (key, a, fp) = (
        fresh_key(),
        OwnerToken::generate(),
        fingerprint("remembered"),
    );
    c.expect_eq(
        "begin",
        c.begin(&key, Some(&fp), a, LEASE).await,
        Begin::New,
    );
    c.complete(&key, a, &sample_record(Some(fp), b"expires"))
        .await;
    sleep(ttl + Duration::from_millis(100)).await;
    match c
        .begin(&key, Some(&fp), OwnerToken::generate(), LEASE)
        .await
    {
        Begin::Completed(record) if record.is_response_expired() => c.expect_eq(
            "begin after the response expired: fingerprint",
            record.fingerprint(),
            Some(&fp),
        ),
        other => c.fail(format_args!(
            "begin after the response expired: expected the response-expired record, got {other:?}"
        )),
    }
    let info = c.lookup(&key, true).await;
    c.expect_state(
        "lookup after the response expired",
        info.as_ref(),
        KeyState::ResponseExpired,
    );
    let info = info.expect("checked above");
    c.expect_eq(
        "lookup after the response expired: fingerprint",
        info.fingerprint(),
        Some(&fp),
    );
    if info.record().is_some_and(|r| !r.is_response_expired()) {
        c.fail(format_args!(
            "lookup after the response expired returned the response"
        ));
    }
    let Some(evicted) = c.evict(&key, Evict::CompletedOnly).await else {
        return;
    };
    c.expect_eq("evict of a remembered key", evicted, Evicted::Record);
    c.expect_eq(
        "begin after evicting a remembered key",
        c.begin(&key, None, OwnerToken::generate(), LEASE).await,
        Begin::New,
    );
}
