//! The store trait, its outcomes and errors, and the erased [`BoxStore`].
//!
//! A store keeps one entry per [`StoreKey`]: either an *in-progress claim*, held by one owner
//! ([`OwnerToken`]) under a lease, or a *completed* [`Record`] kept for the store's retention
//! time. The layer drives it through five operations, each of which must be atomic on its own:
//!
//! | operation | what it does |
//! | --- | --- |
//! | [`begin`](Store::begin) | claim a free key for an owner, or report who has it ([`Begin`]) |
//! | [`complete`](Store::complete) | turn the owner's claim into a completed record |
//! | [`release`](Store::release) | drop the owner's claim so that a retry runs again |
//! | [`renew`](Store::renew) | extend the owner's lease while the handler still runs |
//! | [`get`](Store::get) | read the entry as it is ([`Entry`]) |
//!
//! `complete`, `release` and `renew` are *owner checked*: when the key is not claimed, or is
//! claimed by another owner, they fail with [`StoreErrorKind::NotOwner`] and change nothing.
//! A `begin` for a key that the same owner already claims answers [`Begin::New`] again, so a
//! command that a driver re-sends after a lost reply is harmless.
//!
//! Stores expire entries by themselves: a claim at the end of its lease, a record at the end of
//! the retention time. The layer never deletes an entry.
//!
//! Two more operations are for operators, never called by the layer:
//! [`lookup`](Store::lookup) reads a key's state, fingerprint and expiry ([`KeyInfo`]), and
//! [`evict`](Store::evict) removes a completed key so that its next request runs again
//! ([`Evict`]). Both have defaults, so a store written before them keeps compiling:
//! `lookup` reads through `get` (without the expiry), `evict` answers
//! [`StoreErrorKind::Unsupported`].
//!
//! # Writing a store
//!
//! Implement [`Store`] with `async fn`s and run the
//! [conformance suite](crate::conformance) (feature `test-util`) against it.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::fingerprint::Fingerprint;
use crate::record::{DecodeError, Record};

mod admin;
mod boxed;
mod memory;
mod noop;
mod owner_token;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
mod store_key;

pub use self::admin::{Evict, Evicted, KeyInfo, KeyState, LookupOptions};
pub use self::boxed::BoxStore;
pub use self::memory::{MemoryStore, MemoryStoreBuilder};
pub use self::noop::NoOpStore;
pub use self::owner_token::OwnerToken;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use self::postgres::{
    InvalidTableName, PostgresConfigError, PostgresStore, PostgresStoreBuilder,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{ConfigReport, Persistence, RedisPushWaits, RedisStore};
pub use self::store_key::StoreKey;

/// What [`Store::begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Begin {
    /// The key was free (or already claimed by this very owner): the caller owns it now, under
    /// the lease it asked for, and runs the request.
    New,
    /// Another owner holds the key. The fingerprint is the one that owner claimed it with.
    InProgress {
        /// The fingerprint of the request that holds the claim.
        fingerprint: Option<Fingerprint>,
    },
    /// The key has a completed record.
    Completed(Record),
}

/// An entry as [`Store::get`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Entry {
    /// An unexpired claim.
    InProgress {
        /// The fingerprint the key was claimed with.
        fingerprint: Option<Fingerprint>,
        /// The owner that holds the claim.
        token: OwnerToken,
    },
    /// A completed record.
    Completed(Record),
}

impl Entry {
    /// What [`Store::begin`] by `token` answers when it finds this entry: [`Begin::New`] when
    /// `token` holds the claim (a re-sent `begin`), else the holder's fingerprint or the record.
    pub(crate) fn begin_for(self, token: OwnerToken) -> Begin {
        match self {
            Self::InProgress { token: holder, .. } if holder == token => Begin::New,
            Self::InProgress { fingerprint, .. } => Begin::InProgress { fingerprint },
            Self::Completed(record) => Begin::Completed(record),
        }
    }
}

/// A pluggable backend for the idempotency layer.
///
/// Every method is one atomic operation; see the [module docs](self) for the contract. All
/// methods may be called concurrently from many tasks (and, for shared backends, from many
/// processes). The layer bounds each call with its own timeout, so implementations need not.
pub trait Store: Send + Sync + 'static {
    /// Claims `key` for `token` under `lease`, or reports the entry that is already there.
    ///
    /// The claim records `fingerprint`, which is handed back to later callers in
    /// [`Begin::InProgress`] so that the layer can tell a retry from a different request.
    fn begin(
        &self,
        key: &StoreKey,
        fingerprint: Option<&Fingerprint>,
        token: OwnerToken,
        lease: Duration,
    ) -> impl Future<Output = Result<Begin, StoreError>> + Send;

    /// Replaces `token`'s claim on `key` with `record`, kept for the store's retention time.
    ///
    /// Fails with [`StoreErrorKind::NotOwner`] when `token` does not hold the key, and then
    /// writes nothing. A `complete` re-sent by the token that already completed the key (a
    /// driver's retry after a lost reply) succeeds and keeps the first record: stores remember
    /// the completing token with the record.
    ///
    /// A store should not fail `complete` for lack of room: a failed `complete` leaves the claim
    /// to expire, after which a retry runs the request again. A record that cannot be kept
    /// whole is better kept as [`Record::not_stored`] with the same fingerprint.
    fn complete(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        record: &Record,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reads the entry for `key`; a missing or expired entry is `Ok(None)`.
    fn get(&self, key: &StoreKey)
    -> impl Future<Output = Result<Option<Entry>, StoreError>> + Send;

    /// Drops `token`'s claim on `key`, so that the next `begin` gets [`Begin::New`].
    ///
    /// Fails with [`StoreErrorKind::NotOwner`] when `token` does not hold the key, which is also
    /// what a re-sent `release` gets; the layer treats that as done.
    fn release(
        &self,
        key: &StoreKey,
        token: OwnerToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Sets the lease of `token`'s claim on `key` to `lease` from now.
    ///
    /// Fails with [`StoreErrorKind::NotOwner`] when `token` does not hold the key.
    fn renew(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        lease: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether this store's calls cross the network (a server, a database) rather than stay in
    /// this process. The layer then coalesces duplicates in process by default
    /// ([`IdempotencyLayer::coalesce`](crate::IdempotencyLayer::coalesce)). The default is
    /// `false`.
    fn is_remote(&self) -> bool {
        false
    }

    /// Waits, at most `timeout`, until the claim on `key` may have ended (completed, released or
    /// expired). Returning early is allowed: the caller looks again with [`begin`](Store::begin).
    ///
    /// The default sleeps for a short poll interval. Stores that can be notified override it.
    fn wait(
        &self,
        key: &StoreKey,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = key;
        async move {
            tokio::time::sleep(timeout.min(DEFAULT_POLL_INTERVAL)).await;
            Ok(())
        }
    }

    /// Reads what an operator wants to know of `key`: its state, fingerprint and expiry, and the
    /// stored record only when `options` ask for it. A missing or expired entry is `Ok(None)`.
    ///
    /// Not called by the layer. The default reads through [`get`](Store::get) and knows no
    /// expiry; stores that can tell the expiry override it.
    fn lookup(
        &self,
        key: &StoreKey,
        options: LookupOptions,
    ) -> impl Future<Output = Result<Option<KeyInfo>, StoreError>> + Send {
        async move {
            Ok(self
                .get(key)
                .await?
                .map(|entry| KeyInfo::from_entry(entry, options)))
        }
    }

    /// Removes `key`'s entry as `how` allows, in one atomic step, and says what it removed.
    ///
    /// With [`Evict::CompletedOnly`] a completed key (or a remembered key whose response
    /// expired) is removed and an in-progress claim is left alone ([`Evicted::Refused`]); with
    /// [`Evict::Force`] a claim is removed too, which wakes its waiters (read the warning on
    /// [`Evict::Force`]). After an eviction, the next `begin` of the key gets [`Begin::New`].
    ///
    /// Not called by the layer. The default fails with [`StoreErrorKind::Unsupported`].
    fn evict(
        &self,
        key: &StoreKey,
        how: Evict,
    ) -> impl Future<Output = Result<Evicted, StoreError>> + Send {
        let _ = (key, how);
        async { Err(StoreError::new(StoreErrorKind::Unsupported)) }
    }
}

/// How long the default [`Store::wait`] sleeps between looks.
pub(crate) const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(25);

/// How long stores remember a completed key by default, after its response too: 7 days.
pub(crate) const DEFAULT_KEY_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The kinds of [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The operation did not finish in time. Its effect is unknown: it may still have landed.
    Timeout,
    /// The backend could not be reached, or the connection broke. The effect is unknown.
    Unavailable,
    /// The owner token does not hold the key (never claimed, expired, or claimed by another).
    NotOwner,
    /// The store is full of claims that it may not evict.
    Full,
    /// A stored value could not be decoded.
    Corrupt,
    /// The store does not implement this operation (the default [`Store::evict`]).
    Unsupported,
    /// Anything else the backend reported.
    Other,
}

impl StoreErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "store operation timed out",
            Self::Unavailable => "store unavailable",
            Self::NotOwner => "key is not held by this owner",
            Self::Full => "store is full",
            Self::Corrupt => "stored record is corrupt",
            Self::Unsupported => "operation not supported by this store",
            Self::Other => "store error",
        }
    }

    /// Whether an operation that failed this way may still have taken effect.
    pub fn is_ambiguous(self) -> bool {
        matches!(self, Self::Timeout | Self::Unavailable | Self::Other)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error every [`Store`] operation returns.
///
/// Opaque on purpose: match on [`kind`](Self::kind), follow [`source`](std::error::Error::source)
/// for the backend's own error.
pub struct StoreError {
    kind: StoreErrorKind,
    source: Option<BoxError>,
}

impl StoreError {
    /// An error of `kind` with no underlying cause.
    pub fn new(kind: StoreErrorKind) -> Self {
        Self { kind, source: None }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(kind: StoreErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<DecodeError> for StoreError {
    fn from(e: DecodeError) -> Self {
        Self::with_source(StoreErrorKind::Corrupt, e)
    }
}
