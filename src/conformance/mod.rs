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
//! [`run`] takes about 1.5 s. [`run_retention`] sleeps for the response retention it is given. A store that reads [`tokio::time::Instant`] passes under
//! [`tokio::time::pause`](https://docs.rs/tokio/1/tokio/time/fn.pause.html) as well, and then
//! takes no real time.
//!
//! # Stores that keep nothing
//!
//! [`NoOpStore`](crate::store::NoOpStore) keeps no state, so most checks do not apply to it.
//! [`run_stateless`] runs those that do: a new key is claimed, a re-sent `begin` by its owner
//! is new again, the owner's `complete`/`release`/`renew` succeed, `get` of an unknown key is
//! `None`, and `wait` returns by its timeout.
//!
//! # Admin calls
//!
//! [`run`] also checks [`Store::lookup`] and [`Store::evict`]. A store that keeps their defaults
//! passes: the default `lookup` reports no expiry, and an `evict` that answers
//! [`Unsupported`](crate::store::StoreErrorKind::Unsupported) must only leave the key as it was.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::fingerprint::Fingerprint;
use crate::record::{Record, StoredResponse};
use crate::store::{Begin, Entry, OwnerToken, Store, StoreError, StoreErrorKind, StoreKey};

mod admin;
mod claims;
mod leases;
mod owners;
mod records;
mod waits;

use self::admin::*;
use self::claims::*;
use self::leases::*;
use self::owners::*;
use self::records::*;
use self::waits::*;

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
    release_and_renew_of_an_unclaimed_key_are_not_owner(store).await;
    release_frees_the_key(store).await;
    records_round_trip(store).await;
    large_record_round_trips(store).await;
    concurrent_begins_have_one_winner(store).await;
    renew_extends_the_lease(store).await;
    expired_lease_is_a_free_key(store).await;
    complete_after_the_lease_ran_out_lands(store).await;
    wait_returns_after_complete_or_release(store).await;
    wait_returns_by_the_timeout(store).await;
    lookup_reads_each_state(store).await;
    evict_removes_a_completed_key(store).await;
    evict_refuses_a_claim_unless_forced(store).await;
}

/// Runs the checks of key retention against a store built to keep responses for `ttl` (keep it
/// short: the check sleeps for it) and to remember keys longer than that: a retry after the
/// response expired gets the fingerprint-only record, never a new claim; [`Store::lookup`] reads
/// the key as [`ResponseExpired`](crate::store::KeyState::ResponseExpired), and
/// [`Store::evict`] frees it.
pub async fn run_retention<S: Store>(store: &S, ttl: Duration) {
    evict_removes_a_remembered_key(store, ttl).await;
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
