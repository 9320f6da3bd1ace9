//! [`MemoryStore`]: the embedded, sharded, bounded in-memory store. Its documentation is on the
//! type, which is exported from [`crate::store`].
//!
//! This file holds the store, its [`Store`] implementation and its clock; `builder` builds it and
//! splits the bounds over the shards, `shard` is one shard's entries and operations, `eviction`
//! what a shard drops and in which order, `hasher` the keyed hash of key digests, and `admin`
//! the operator's `lookup` and `evict`.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use self::hasher::{Digest, DigestState};
use self::shard::{Limits, Shard, State};
use super::{
    Begin, Entry, Evict, Evicted, KeyInfo, LookupOptions, OwnerToken, Store, StoreError, StoreKey,
};
use crate::fingerprint::Fingerprint;
use crate::record::Record;

mod admin;
mod builder;
mod eviction;
mod hasher;
mod shard;

pub use self::builder::MemoryStoreBuilder;

/// The embedded, sharded, bounded in-memory [`Store`].
///
/// It keeps claims and records in this process's memory, spread over shards that each sit behind
/// their own [`std::sync::Mutex`]. It is the default store: no setup, bounded in entries and
/// bytes, with lease and retention expiry. Cloning is cheap: clones share one store.
///
/// # Example
///
/// ```
/// use std::time::Duration;
///
/// use http::{HeaderMap, StatusCode};
/// use tower_idempotency::record::{Record, StoredResponse};
/// use tower_idempotency::store::{Begin, MemoryStore, OwnerToken, Store, StoreKey};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_idempotency::store::StoreError> {
/// let store = MemoryStore::builder()
///     .ttl(Duration::from_secs(60 * 60))
///     .max_entries(10_000)
///     .max_bytes(16 * 1024 * 1024)
///     .build();
///
/// let key = StoreKey::new(Some("tenant-7"), "order-42");
/// let lease = Duration::from_secs(30);
///
/// // The first request claims the key and runs.
/// let owner = OwnerToken::generate();
/// assert_eq!(store.begin(&key, None, owner, lease).await?, Begin::New);
///
/// // A duplicate that arrives meanwhile sees the claim.
/// let duplicate = OwnerToken::generate();
/// assert!(matches!(
///     store.begin(&key, None, duplicate, lease).await?,
///     Begin::InProgress { .. }
/// ));
///
/// // The owner records the response; from now on duplicates get the record to replay.
/// let response = StoredResponse::new(StatusCode::CREATED, HeaderMap::new(), "ok".into(), None);
/// let record = Record::new(None, &response);
/// store.complete(&key, owner, &record).await?;
/// assert_eq!(store.begin(&key, None, duplicate, lease).await?, Begin::Completed(record));
/// # Ok(())
/// # }
/// ```
///
/// # Semantics
///
/// Exactly the [`Store`] contract:
///
/// - `begin` on a free key, or on a key whose lease or retention time is over, claims it and
///   answers [`Begin::New`]. By the token that already holds the claim, it answers `New` again and
///   sets the lease to the new length. By another token, it answers [`Begin::InProgress`] with the
///   holder's fingerprint; on a completed key, [`Begin::Completed`] with the record.
/// - `complete`, `release` and `renew` need an unexpired claim by the same token, else they fail
///   with [`StoreErrorKind::NotOwner`](super::StoreErrorKind::NotOwner) and change nothing. An
///   expired lease belongs to nobody.
/// - A re-sent `complete` is harmless: the store remembers the token that completed a record, and
///   a `complete` by that token on the completed key answers `Ok(())` and leaves the first record
///   as it is. Any other token gets `NotOwner`.
/// - [`wait`](Store::wait) is woken by `complete` and `release`, and ends at the end of the lease
///   or at the timeout; it returns at once when the key is not in progress.
///
/// # Bounds and eviction
///
/// Every entry is charged [`MemoryStore::ENTRY_OVERHEAD`] bytes, plus the length of its record
/// ([`Record::as_bytes`]) once completed, against [`max_bytes`](MemoryStoreBuilder::max_bytes);
/// and one entry against [`max_entries`](MemoryStoreBuilder::max_entries). When a claim or a
/// completion needs room, the store drops, in this order:
///
/// 1. expired records and expired leases;
/// 2. completed records, oldest first (with one retention time for all, that is also the order
///    in which they would expire).
///
/// In-progress claims are **never** evicted: dropping one would let a duplicate run while the
/// first execution is still going. When only unexpired claims are left, `begin` of a new key fails
/// with [`StoreErrorKind::Full`](super::StoreErrorKind::Full), which the layer answers with `503`.
///
/// A `complete` needs room for its record. If the shard cannot free enough even after dropping all
/// its completed records, the record is still stored when it would fit in the whole store's byte
/// budget (the shard then runs over its share by that one record until the next eviction). A
/// record bigger than the whole budget is replaced by [`Record::not_stored`] with the same
/// fingerprint, and a warning is logged: the key is still completed, so a retry gets the layer's
/// "completed, response not stored" answer and the operation never runs twice. Failing the
/// `complete` instead would let the lease run out and a retry execute again. Keep `max_bytes`
/// well above the layer's maximum stored response size.
///
/// # Caveats
///
/// - **Per process.** Nothing is shared between processes or survives a restart. Several
///   instances of an application behind a load balancer each have their own store, so a retry
///   that lands on another instance runs again: use the Redis store (feature `redis`) there.
/// - **Bounds are per shard.** Each shard holds at most `⌈max_entries / shards⌉` entries and
///   `⌈max_bytes / shards⌉` bytes, so the store can report `Full` (or evict) in one shard while
///   another has room. Keys spread evenly over shards, so this matters only for tiny bounds: use
///   fewer shards with them.
/// - Expiry is lazy, there is no background task: expired records are dropped by the next
///   `begin` or `complete` in their shard, expired claims when their key is used again or when
///   their shard needs room (before any live record is evicted).
/// - The `ENTRY_OVERHEAD` charge covers the entry, its hash-table slot and its place in the
///   eviction queue (about 160 bytes on 64-bit targets, charged as 256). Hash tables and queues
///   grow by doubling, so right after a growth step the real overhead is up to about twice that
///   until they fill.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl MemoryStore {
    /// The bytes each entry is charged against [`max_bytes`](MemoryStoreBuilder::max_bytes) on
    /// top of its record: the entry itself, its hash-table slot and its place in the eviction
    /// queue, rounded up.
    pub const ENTRY_OVERHEAD: usize = 256;

    /// A store with the defaults: 24 h retention, 100 000 entries, 128 MiB.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder to set retention, bounds and shards.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    fn shard(&self, key: &StoreKey) -> MutexGuard<'_, Shard> {
        // Bytes 8..16: the map hashes bytes 0..8.
        let [_, _, _, _, _, _, _, _, a, b, c, d, e, f, g, h, ..] = *key.digest();
        let hash = self
            .inner
            .shard_state
            .hash_u64(u64::from_le_bytes([a, b, c, d, e, f, g, h]));
        // The shard count is a power of two; the mask keeps the low bits.
        let index = (hash as usize) & (self.inner.shards.len() - 1);
        // No operation panics while it holds a shard, so a poisoned lock still guards a
        // consistent shard.
        self.inner.shards[index]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        self.inner.shards.iter().fold((0, 0), |(n, b), s| {
            let s = s.0.lock().unwrap();
            (n + s.map.len(), b + s.bytes)
        })
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("ttl", &self.inner.ttl)
            .field("max_entries", &self.inner.max_entries)
            .field("max_bytes", &self.inner.limits.total_bytes)
            .field("shards", &self.inner.shards.len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    shards: Box<[Padded]>,
    shard_state: DigestState,
    /// Ticks count from here.
    epoch: Instant,
    ttl: Duration,
    limits: Limits,
    max_entries: usize,
}

impl Inner {
    fn now(&self) -> Tick {
        Tick::from_duration(Instant::now().saturating_duration_since(self.epoch))
    }

    fn instant(&self, tick: Tick) -> Instant {
        self.epoch
            .checked_add(Duration::from_nanos(tick.0))
            // Beyond the clock's range; about as far as tokio's own "far future".
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(30 * 365 * 24 * 60 * 60))
    }
}

/// A shard on its own cache lines, so that locking one does not slow down its neighbours.
#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// A point in time: nanoseconds since the store's epoch. Half the size of an `Instant`, which
/// keeps entries small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Tick(u64);

impl Tick {
    const NEVER: Tick = Tick(u64::MAX);

    fn from_duration(d: Duration) -> Self {
        Self(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    fn after(self, d: Duration) -> Self {
        Self(self.0.saturating_add(Self::from_duration(d).0))
    }
}

impl Store for MemoryStore {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: Option<&Fingerprint>,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        let found = {
            let mut shard = self.shard(key);
            let now = self.inner.now();
            shard.begin(
                &self.inner.limits,
                now,
                Digest(*key.digest()),
                fingerprint,
                token,
                lease,
            )?
        };
        found.parse(Begin::Completed)
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        record: &Record,
    ) -> Result<(), StoreError> {
        let mut shard = self.shard(key);
        let now = self.inner.now();
        shard.complete(
            &self.inner.limits,
            now,
            self.inner.ttl,
            Digest(*key.digest()),
            token,
            record,
        )
    }

    async fn get(&self, key: &StoreKey) -> Result<Option<Entry>, StoreError> {
        let found = {
            let mut shard = self.shard(key);
            let now = self.inner.now();
            shard.get(now, Digest(*key.digest()))
        };
        found
            .map(|(found, _)| found.parse(Entry::Completed))
            .transpose()
    }

    async fn release(&self, key: &StoreKey, token: OwnerToken) -> Result<(), StoreError> {
        let mut shard = self.shard(key);
        let now = self.inner.now();
        shard.release(now, Digest(*key.digest()), token)
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let mut shard = self.shard(key);
        let now = self.inner.now();
        shard.renew(now, Digest(*key.digest()), token, lease)
    }

    /// Resolves when the claim on `key` is completed or released, when its lease ends (as it
    /// stood when the wait began: a renewal makes the wait return early), or at `timeout`,
    /// whichever comes first; at once when `key` is not in progress.
    async fn wait(&self, key: &StoreKey, timeout: Duration) -> Result<(), StoreError> {
        let notify: Arc<Notify>;
        let notified;
        let wake;
        {
            let mut shard = self.shard(key);
            let now = self.inner.now();
            let Some(slot) = shard.map.get_mut(&Digest(*key.digest())) else {
                return Ok(());
            };
            let State::Claimed(claim) = &mut slot.state else {
                return Ok(());
            };
            if slot.until <= now {
                return Ok(());
            }
            notify = Arc::clone(claim.waiters.get_or_insert_with(Default::default));
            // Created under the shard lock, which every `notify_waiters` also holds: the wake-up
            // for the end of this claim cannot come before this `Notified` exists.
            notified = notify.notified();
            wake = slot.until.min(now.after(timeout));
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(self.inner.instant(wake)) => {}
        }
        Ok(())
    }

    async fn lookup(
        &self,
        key: &StoreKey,
        options: LookupOptions,
    ) -> Result<Option<KeyInfo>, StoreError> {
        self.lookup_key(key, options)
    }

    async fn evict(&self, key: &StoreKey, how: Evict) -> Result<Evicted, StoreError> {
        Ok(self.evict_key(key, how))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    use super::*;
    use crate::record::StoredResponse;

    pub(super) const LEASE: Duration = Duration::from_secs(30);

    pub(super) fn key(name: &str) -> StoreKey {
        StoreKey::new(Some("memory-tests"), name)
    }

    pub(super) fn record(fp: Option<Fingerprint>, body: &[u8]) -> Record {
        let response = StoredResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::copy_from_slice(body),
            None,
        );
        Record::new(fp, &response)
    }

    #[tokio::test(start_paused = true)]
    async fn wait_wakes_on_complete_and_release() {
        let store = MemoryStore::new();
        for release in [false, true] {
            let k = key(&format!("wait-{release}"));
            let a = OwnerToken::generate();
            store.begin(&k, None, a, LEASE).await.unwrap();
            let owner = {
                let (store, k) = (store.clone(), k.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    if release {
                        store.release(&k, a).await.unwrap();
                    } else {
                        store.complete(&k, a, &record(None, b"x")).await.unwrap();
                    }
                })
            };
            let start = Instant::now();
            store.wait(&k, Duration::from_secs(20)).await.unwrap();
            assert_eq!(start.elapsed(), Duration::from_secs(2));
            owner.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn wait_ends_at_the_lease_or_the_timeout() {
        let store = MemoryStore::new();
        let k = key("wait-lease");
        store
            .begin(&k, None, OwnerToken::generate(), Duration::from_secs(3))
            .await
            .unwrap();
        let start = Instant::now();
        store.wait(&k, Duration::from_secs(1)).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        store.wait(&k, Duration::from_secs(10)).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        // Not in progress (free, then completed): at once.
        store.wait(&k, Duration::from_secs(10)).await.unwrap();
        let t = OwnerToken::generate();
        store.begin(&k, None, t, LEASE).await.unwrap();
        store.complete(&k, t, &record(None, b"x")).await.unwrap();
        store.wait(&k, Duration::from_secs(10)).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn wait_never_misses_the_wake_up() {
        // The owner completes right as the waiter registers, many times over; a lost wake-up
        // would leave the waiter sleeping until its (long) timeout.
        let store = MemoryStore::new();
        for i in 0..200 {
            let k = key(&format!("race-{i}"));
            let a = OwnerToken::generate();
            store.begin(&k, None, a, LEASE).await.unwrap();
            let waiter = {
                let (store, k) = (store.clone(), k.clone());
                tokio::spawn(async move { store.wait(&k, Duration::from_secs(60)).await })
            };
            tokio::task::yield_now().await;
            store.complete(&k, a, &record(None, b"x")).await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("the waiter was not woken")
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn each_key_runs_once_under_contention() {
        // 32 tasks race over the same 16 keys, each key 32 times, on 4 worker threads and 4
        // shards: every key runs exactly once.
        let store = MemoryStore::builder().shards(4).build();
        let runs: Arc<Vec<AtomicUsize>> = Arc::new((0..16).map(|_| AtomicUsize::new(0)).collect());
        let tasks: Vec<_> = (0..32)
            .map(|t| {
                let (store, runs) = (store.clone(), runs.clone());
                tokio::spawn(async move {
                    for round in 0..16 {
                        let i = (t + round) % 16;
                        let k = key(&format!("contended-{i}"));
                        let token = OwnerToken::generate();
                        if store.begin(&k, None, token, LEASE).await.unwrap() == Begin::New {
                            runs[i].fetch_add(1, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            store
                                .complete(&k, token, &record(None, b"r"))
                                .await
                                .unwrap();
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        for run in runs.iter() {
            assert_eq!(run.load(Ordering::SeqCst), 1);
        }
    }
}
