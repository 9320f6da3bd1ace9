//! A conformance suite for [`Store`] implementations: ours and yours.
//!
//! [`run`] checks the whole [`Store`] contract against one store instance and panics, naming
//! the check, at the first violation. Every check works on fresh random keys, so one instance can be
//! reused, checks can run in any order, and a shared backend (a Redis that other tests use) needs
//! no cleanup: the claims a check leaves behind expire with their leases.
//!
//! ```
//! use tower_idempotency::conformance;
//! use tower_idempotency::store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // In your store's tests: `#[tokio::test] async fn conforms() { ... }`
//! conformance::run(&MemoryStore::new()).await;
//! # }
//! ```
//!
//! # Time
//!
//! The lease checks use short leases (a few hundred milliseconds) and real
//! [`tokio::time::sleep`]s, because a backend's clock (Redis's) cannot be paused; the whole of
//! [`run`] takes about 1.5 s. A store that reads [`tokio::time::Instant`] passes under
//! [`tokio::time::pause`](https://docs.rs/tokio/1/tokio/time/fn.pause.html) as well, and then
//! takes no real time.
//!
//! # Stores that keep nothing
//!
//! [`NoOpStore`](crate::store::NoOpStore) keeps no state, so most checks do not apply to it.
//! [`run_stateless`] runs those that do: a new key is claimed, a re-sent `begin` by its owner
//! is new again, the owner's `complete`/`release`/`renew` succeed, `get` of an unknown key is
//! `None`, and `wait` returns by its timeout.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{join, join_all};
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::time::{Instant, sleep};

use crate::fingerprint::Fingerprint;
use crate::record::Record;
use crate::record::StoredResponse;
use crate::store::{Begin, Entry, OwnerToken, Store, StoreError, StoreErrorKind, StoreKey};

/// The lease of claims that are not meant to run out during a check.
const LEASE: Duration = Duration::from_secs(10);

/// Runs every check against `store`, panicking with the failed check's name.
pub async fn run<S: Store>(store: &S) {
    begin_claims_a_new_key(store).await;
    begin_again_by_the_owner_is_new(store).await;
    begin_by_another_token_is_in_progress(store).await;
    get_of_an_unknown_key_is_none(store).await;
    get_reflects_each_state(store).await;
    owner_operations_succeed(store).await;
    complete_then_begin_replays(store).await;
    complete_again_is_harmless(store).await;
    foreign_token_is_not_owner(store).await;
    complete_of_an_unclaimed_key_is_not_owner(store).await;
    release_frees_the_key(store).await;
    records_round_trip(store).await;
    large_record_round_trips(store).await;
    concurrent_begins_have_one_winner(store).await;
    renew_extends_the_lease(store).await;
    expired_lease_is_a_free_key(store).await;
    wait_returns_after_complete_or_release(store).await;
    wait_returns_by_the_timeout(store).await;
}

/// Runs the checks that apply to a store that keeps nothing, like
/// [`NoOpStore`](crate::store::NoOpStore): see the [module docs](self).
pub async fn run_stateless<S: Store>(store: &S) {
    begin_claims_a_new_key(store).await;
    begin_again_by_the_owner_is_new(store).await;
    owner_operations_succeed(store).await;
    get_of_an_unknown_key_is_none(store).await;
    wait_returns_by_the_timeout(store).await;
}

/// `begin` on a key nobody has used answers [`Begin::New`].
async fn begin_claims_a_new_key<S: Store>(store: &S) {
    let c = Check::new("begin_claims_a_new_key", store);
    let (key, a) = (fresh_key(), OwnerToken::generate());
    let fp = fingerprint("a");
    c.expect_eq(
        "begin",
        c.begin(&key, Some(&fp), a, LEASE).await,
        Begin::New,
    );
    c.release(&key, a).await;
}

/// `begin` by the token that holds the key answers [`Begin::New`] again (a re-sent command).
async fn begin_again_by_the_owner_is_new<S: Store>(store: &S) {
    let c = Check::new("begin_again_by_the_owner_is_new", store);
    let (key, a) = (fresh_key(), OwnerToken::generate());
    let fp = fingerprint("a");
    c.expect_eq(
        "first begin",
        c.begin(&key, Some(&fp), a, LEASE).await,
        Begin::New,
    );
    c.expect_eq(
        "second begin",
        c.begin(&key, Some(&fp), a, LEASE).await,
        Begin::New,
    );
    c.release(&key, a).await;
}

/// `begin` by another token on a held key answers [`Begin::InProgress`] with the holder's
/// fingerprint (also when the holder has none), and leaves the claim as it is.
async fn begin_by_another_token_is_in_progress<S: Store>(store: &S) {
    let c = Check::new("begin_by_another_token_is_in_progress", store);
    for held in [Some(fingerprint("holder")), None] {
        let (key, a) = (fresh_key(), OwnerToken::generate());
        c.expect_eq(
            "holder's begin",
            c.begin(&key, held.as_ref(), a, LEASE).await,
            Begin::New,
        );
        let other = fingerprint("other");
        let b = OwnerToken::generate();
        let in_progress = Begin::InProgress { fingerprint: held };
        c.expect_eq(
            "begin by another token",
            c.begin(&key, Some(&other), b, LEASE).await,
            in_progress.clone(),
        );
        c.expect_eq(
            "begin without fingerprint by a third token",
            c.begin(&key, None, OwnerToken::generate(), LEASE).await,
            in_progress,
        );
        c.expect_eq(
            "get after the other begins",
            c.get(&key).await,
            Some(Entry::InProgress {
                fingerprint: held,
                token: a,
            }),
        );
        c.release(&key, a).await;
    }
}

/// `get` of a key nobody has used is `None`.
async fn get_of_an_unknown_key_is_none<S: Store>(store: &S) {
    let c = Check::new("get_of_an_unknown_key_is_none", store);
    c.expect_eq("get", c.get(&fresh_key()).await, None);
}

/// `get` reads nothing, then the claim with its fingerprint and owner, then the record.
async fn get_reflects_each_state<S: Store>(store: &S) {
    let c = Check::new("get_reflects_each_state", store);
    let (key, a) = (fresh_key(), OwnerToken::generate());
    let fp = fingerprint("a");
    c.expect_eq("get before begin", c.get(&key).await, None);
    c.expect_eq(
        "begin",
        c.begin(&key, Some(&fp), a, LEASE).await,
        Begin::New,
    );
    c.expect_eq(
        "get after begin",
        c.get(&key).await,
        Some(Entry::InProgress {
            fingerprint: Some(fp),
            token: a,
        }),
    );
    let record = sample_record(Some(fp), b"{\"id\":1}");
    c.complete(&key, a, &record).await;
    match c.get(&key).await {
        Some(Entry::Completed(got)) => c.same_record("get after complete", &got, &record),
        other => c.fail(format_args!(
            "get after complete: expected the record, got {other:?}"
        )),
    }
}

/// The owner's own `renew`, `release`, `begin` and `complete` all succeed.
async fn owner_operations_succeed<S: Store>(store: &S) {
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
async fn complete_then_begin_replays<S: Store>(store: &S) {
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
async fn complete_again_is_harmless<S: Store>(store: &S) {
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
async fn foreign_token_is_not_owner<S: Store>(store: &S) {
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

/// `complete`, `release` and `renew` of a key that was never claimed fail with
/// [`StoreErrorKind::NotOwner`] and write nothing.
async fn complete_of_an_unclaimed_key_is_not_owner<S: Store>(store: &S) {
    let c = Check::new("complete_of_an_unclaimed_key_is_not_owner", store);
    let (key, a) = (fresh_key(), OwnerToken::generate());
    let record = sample_record(None, b"never claimed");
    c.not_owner("complete", store.complete(&key, a, &record).await);
    c.expect_eq("get after complete", c.get(&key).await, None);
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
async fn release_frees_the_key<S: Store>(store: &S) {
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

/// Records without a fingerprint, and "completed, response not stored" records with and
/// without one, come back byte for byte.
async fn records_round_trip<S: Store>(store: &S) {
    let c = Check::new("records_round_trip", store);
    let fp = fingerprint("a");
    let records = [
        (
            "a record without fingerprint",
            sample_record(None, b"no fingerprint"),
        ),
        ("a not-stored record", Record::not_stored(Some(fp))),
        (
            "a not-stored record without fingerprint",
            Record::not_stored(None),
        ),
    ];
    for (what, record) in records {
        let (key, a) = (fresh_key(), OwnerToken::generate());
        let claimed = c.begin(&key, record.fingerprint(), a, LEASE).await;
        c.expect_eq(&format!("begin for {what}"), claimed, Begin::New);
        c.complete(&key, a, &record).await;
        match c.begin(&key, None, OwnerToken::generate(), LEASE).await {
            Begin::Completed(got) => c.same_record(&format!("begin after {what}"), &got, &record),
            other => c.fail(format_args!(
                "begin after {what}: expected Completed, got {other:?}"
            )),
        }
        c.expect_record(&format!("get of {what}"), &key, &record)
            .await;
    }
}

/// A record with a 1 MiB body, repeated headers and trailers comes back byte for byte.
async fn large_record_round_trips<S: Store>(store: &S) {
    let c = Check::new("large_record_round_trips", store);
    let body: Bytes = (0..1024 * 1024)
        .map(|i: u32| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.append("x-part", HeaderValue::from_static("one"));
    headers.append("x-part", HeaderValue::from_static("two"));
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("grpc-message", HeaderValue::from_static("ok"));
    let response = StoredResponse::new(StatusCode::OK, headers, body.clone(), Some(trailers));
    let fp = fingerprint("large");
    let record = Record::new(Some(fp), &response);

    let (key, a) = (fresh_key(), OwnerToken::generate());
    c.expect_eq(
        "begin",
        c.begin(&key, Some(&fp), a, LEASE).await,
        Begin::New,
    );
    c.complete(&key, a, &record).await;
    let got = match c
        .begin(&key, Some(&fp), OwnerToken::generate(), LEASE)
        .await
    {
        Begin::Completed(got) => got,
        other => c.fail(format_args!(
            "begin after complete: expected Completed, got {other:?}"
        )),
    };
    c.same_record("begin after complete", &got, &record);
    let replay = match got.response() {
        Ok(Some(replay)) => replay,
        other => c.fail(format_args!("decoding the replay: {other:?}")),
    };
    if replay.body != body {
        c.fail(format_args!(
            "the replayed body differs from the stored one"
        ));
    }
    c.expect_eq("replayed headers", replay.headers, response.headers);
    c.expect_eq("replayed trailers", replay.trailers, response.trailers);
    c.expect_record("get after complete", &key, &record).await;
}

/// 32 `begin`s of one fresh key, all in flight at once: exactly one is [`Begin::New`], the rest
/// see the winner's fingerprint.
async fn concurrent_begins_have_one_winner<S: Store>(store: &S) {
    let c = Check::new("concurrent_begins_have_one_winner", store);
    let key = fresh_key();
    let claimants: Vec<_> = (0..32)
        .map(|i| {
            (
                OwnerToken::generate(),
                fingerprint(&format!("claimant {i}")),
            )
        })
        .collect();
    let outcomes = join_all(
        claimants
            .iter()
            .map(|(token, fp)| store.begin(&key, Some(fp), *token, LEASE)),
    )
    .await;
    let mut winners = Vec::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Ok(Begin::New) => winners.push(i),
            Ok(Begin::InProgress { .. }) => {}
            other => c.fail(format_args!(
                "begin {i}: expected New or InProgress, got {other:?}"
            )),
        }
    }
    let [winner] = winners[..] else {
        c.fail(format_args!(
            "{} of 32 begins got New: {winners:?}",
            winners.len()
        ));
    };
    let expected = Begin::InProgress {
        fingerprint: Some(claimants[winner].1),
    };
    for (i, outcome) in outcomes.into_iter().enumerate() {
        if i != winner {
            c.expect_eq(
                &format!("begin {i}"),
                c.ok("begin", outcome),
                expected.clone(),
            );
        }
    }
    c.release(&key, claimants[winner].0).await;
}

/// `renew` moves the end of the lease: a claim of 300 ms renewed after 200 ms is still held at
/// 400 ms, and free at 650 ms.
async fn renew_extends_the_lease<S: Store>(store: &S) {
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
async fn expired_lease_is_a_free_key<S: Store>(store: &S) {
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

/// A caller that waits for a held key (looking again after each [`Store::wait`], as the layer
/// does) sees the end of the claim promptly after the owner completes or releases it, well
/// before the wait's timeout.
async fn wait_returns_after_complete_or_release<S: Store>(store: &S) {
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
async fn wait_returns_by_the_timeout<S: Store>(store: &S) {
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

/// One check's context: its name for failure messages, and the store's calls unwrapped.
struct Check<'a, S> {
    name: &'static str,
    store: &'a S,
}

impl<'a, S: Store> Check<'a, S> {
    fn new(name: &'static str, store: &'a S) -> Self {
        Self { name, store }
    }

    #[track_caller]
    fn fail(&self, message: fmt::Arguments<'_>) -> ! {
        panic!("store conformance check `{}` failed: {message}", self.name)
    }

    #[track_caller]
    fn ok<T>(&self, what: &str, result: Result<T, StoreError>) -> T {
        result.unwrap_or_else(|e| self.fail(format_args!("{what}: unexpected error: {e} ({e:?})")))
    }

    #[track_caller]
    fn expect_eq<T: PartialEq + fmt::Debug>(&self, what: &str, got: T, expected: T) {
        if got != expected {
            self.fail(format_args!("{what}: expected {expected:?}, got {got:?}"));
        }
    }

    #[track_caller]
    fn not_owner<T: fmt::Debug>(&self, what: &str, result: Result<T, StoreError>) {
        match result {
            Err(e) if e.kind() == StoreErrorKind::NotOwner => {}
            other => self.fail(format_args!(
                "{what}: expected a NotOwner error, got {other:?}"
            )),
        }
    }

    #[track_caller]
    fn same_record(&self, what: &str, got: &Record, expected: &Record) {
        if got.as_bytes() != expected.as_bytes() {
            self.fail(format_args!(
                "{what}: the record's bytes differ (got {} bytes, expected {})",
                got.as_bytes().len(),
                expected.as_bytes().len()
            ));
        }
        self.expect_eq(
            &format!("{what}: fingerprint"),
            got.fingerprint(),
            expected.fingerprint(),
        );
        self.expect_eq(&format!("{what}: record"), got, expected);
    }

    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: Option<&Fingerprint>,
        token: OwnerToken,
        lease: Duration,
    ) -> Begin {
        self.ok(
            "begin",
            self.store.begin(key, fingerprint, token, lease).await,
        )
    }

    async fn get(&self, key: &StoreKey) -> Option<Entry> {
        self.ok("get", self.store.get(key).await)
    }

    async fn complete(&self, key: &StoreKey, token: OwnerToken, record: &Record) {
        self.ok(
            "complete by the owner",
            self.store.complete(key, token, record).await,
        );
    }

    async fn release(&self, key: &StoreKey, token: OwnerToken) {
        self.ok("release by the owner", self.store.release(key, token).await);
    }

    async fn expect_record(&self, what: &str, key: &StoreKey, expected: &Record) {
        match self.get(key).await {
            Some(Entry::Completed(got)) => self.same_record(what, &got, expected),
            other => self.fail(format_args!(
                "{what}: expected the completed record, got {other:?}"
            )),
        }
    }
}

/// A key no other check, test run or process has used.
fn fresh_key() -> StoreKey {
    StoreKey::new(Some("conformance"), &OwnerToken::generate().to_string())
}

/// A fingerprint unique to this call.
fn fingerprint(tag: &str) -> Fingerprint {
    Fingerprint::sha256(format!("{tag}/{}", OwnerToken::generate()))
}

fn sample_record(fingerprint: Option<Fingerprint>, body: &'static [u8]) -> Record {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let response =
        StoredResponse::new(StatusCode::CREATED, headers, Bytes::from_static(body), None);
    Record::new(fingerprint, &response)
}
