//! [`MemoryStore`]: the embedded, sharded, bounded in-memory store. Its documentation is on the
//! type, which is exported from [`crate::store`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    Begin, Entry, Fingerprint, OwnerToken, Record, Store, StoreError, StoreErrorKind, StoreKey,
};

const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
const DEFAULT_MAX_ENTRIES: usize = 100_000;
const DEFAULT_MAX_BYTES: usize = 128 * 1024 * 1024;
const MAX_SHARDS: usize = 1 << 16;

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
///   with [`StoreErrorKind::NotOwner`] and change nothing. An expired lease belongs to nobody.
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
/// with [`StoreErrorKind::Full`], which the layer answers with `503`.
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

/// Builds a [`MemoryStore`]; from [`MemoryStore::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryStoreBuilder {
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    shards: Option<usize>,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_bytes: DEFAULT_MAX_BYTES,
            shards: None,
        }
    }
}

impl MemoryStoreBuilder {
    /// How long a completed record is kept [24 h].
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The most entries (claims and records) the store holds [100 000].
    ///
    /// Split evenly over the shards.
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// The most bytes the store charges for its entries [128 MiB]: each entry's record plus
    /// [`MemoryStore::ENTRY_OVERHEAD`].
    ///
    /// Split evenly over the shards. Set it well above the largest response the layer stores.
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The number of shards, rounded up to a power of two, at most 65 536 [4 × the available
    /// parallelism, at least 4].
    ///
    /// More shards mean less lock contention; each shard gets an equal share of the bounds.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        let shards = self
            .shards
            .unwrap_or_else(|| {
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                cpus.saturating_mul(4).max(4)
            })
            .clamp(1, MAX_SHARDS)
            .next_power_of_two();
        let limits = Limits {
            entries: self.max_entries.div_ceil(shards),
            bytes: self.max_bytes.div_ceil(shards),
            total_bytes: self.max_bytes,
        };
        let map_state = DigestState::random();
        MemoryStore {
            inner: Arc::new(Inner {
                shards: (0..shards)
                    .map(|_| {
                        Padded(Mutex::new(Shard {
                            map: HashMap::with_hasher(map_state.clone()),
                            order: VecDeque::new(),
                            bytes: 0,
                            earliest_lease: Tick::NEVER,
                        }))
                    })
                    .collect(),
                shard_state: DigestState::random(),
                epoch: Instant::now(),
                ttl: self.ttl,
                limits,
                max_entries: self.max_entries,
            }),
        }
    }
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

/// One shard's bounds.
#[derive(Debug, Clone, Copy)]
struct Limits {
    entries: usize,
    bytes: usize,
    /// The whole store's byte budget: a record up to this size is always kept.
    total_bytes: usize,
}

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

/// A key's SHA-256 digest, as the maps file it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Digest([u8; 32]);

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        state.write_u64(u64::from_le_bytes([a, b, c, d, e, f, g, h]));
    }
}

/// A keyed, one-multiply hash for digests.
///
/// SipHash (the std default) protects a table from keys that an attacker picks to collide. Here
/// the table keys are SHA-256 digests of (scope, client key): uniformly distributed, and a client
/// cannot pick a digest, only grind keys until some bits of the digest match, at the cost of one
/// SHA-256 per try. The digest's 8 bytes are mixed with two random per-store secrets (a folded
/// 64 × 64 → 128-bit multiply, as in foldhash), so the bucket bits cannot be predicted and such
/// grinding gains nothing. The map and the shard choice use different bytes of the digest and
/// different secrets, so keys in one shard still spread over its whole table.
#[derive(Clone)]
struct DigestState {
    xor: u64,
    mul: u64,
}

impl DigestState {
    fn random() -> Self {
        Self {
            xor: random_u64(),
            // An odd multiplier with its top bit set is never a weak one (0 or 1).
            mul: random_u64() | (1 << 63) | 1,
        }
    }

    fn hash_u64(&self, n: u64) -> u64 {
        let product = u128::from(n ^ self.xor) * u128::from(self.mul);
        (product as u64) ^ ((product >> 64) as u64)
    }
}

impl BuildHasher for DigestState {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher {
            state: self.clone(),
            hash: 0,
        }
    }
}

struct DigestHasher {
    state: DigestState,
    hash: u64,
}

impl Hasher for DigestHasher {
    fn write_u64(&mut self, n: u64) {
        self.hash = self.state.hash_u64(self.hash ^ n);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `Digest` is hashed here, through `write_u64`; this keeps other input correct.
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| std::hash::RandomState::new().hash_one(0u64))
}

/// One key's entry. `until` is the end of the lease for a claim and the end of the retention
/// time for a record; `token` is the claim's owner, or the owner that completed the record.
struct Slot {
    until: Tick,
    token: OwnerToken,
    state: State,
}

// The entry's size is most of what the store spends on a record besides the record itself, so
// both states fit in the 32 bytes of a `Bytes`: a claim is boxed (claims are few and live for
// one execution, records are many and live for the retention time), and a record is kept as
// its encoding and parsed again when it is read (the replay decodes it anyway).
enum State {
    Claimed(Box<Claim>),
    /// The encoding of the [`Record`] (see [`Record::as_bytes`]).
    Completed(Bytes),
}

struct Claim {
    fingerprint: Option<Fingerprint>,
    /// Created by the first `wait` on the claim, woken when the claim ends.
    waiters: Option<Arc<Notify>>,
}

/// What `begin` and `get` read from a shard: an answer, or a stored record as its encoding,
/// parsed once the shard's lock is released (the lock is held for the lookup only).
enum Found<T> {
    Answer(T),
    Record(Bytes),
}

impl<T> Found<T> {
    /// The answer, a record made into one by `completed`.
    fn parse(self, completed: impl FnOnce(Record) -> T) -> Result<T, StoreError> {
        match self {
            Found::Answer(answer) => Ok(answer),
            Found::Record(bytes) => Ok(completed(Record::from_bytes(bytes)?)),
        }
    }
}

impl Slot {
    fn cost(&self) -> usize {
        MemoryStore::ENTRY_OVERHEAD
            + match &self.state {
                State::Claimed(_) => 0,
                State::Completed(record) => record.len(),
            }
    }

    /// Whether the slot is a claim held by `token` whose lease has not ended.
    fn is_held_by(&self, token: OwnerToken, now: Tick) -> bool {
        self.until > now && self.token == token && matches!(self.state, State::Claimed(_))
    }
}

struct Shard {
    map: HashMap<Digest, Slot, DigestState>,
    /// Completed records in the order they were stored, which is the order they expire in.
    /// An item whose key has since been dropped or re-completed (its `until` differs) is skipped.
    order: VecDeque<(Digest, Tick)>,
    /// What the entries are charged, see `Slot::cost`.
    bytes: usize,
    /// No claim's lease ends before this, so expired claims are looked for only from then on.
    earliest_lease: Tick,
}

impl Shard {
    fn begin(
        &mut self,
        limits: &Limits,
        now: Tick,
        digest: Digest,
        fingerprint: Option<&Fingerprint>,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<Found<Begin>, StoreError> {
        self.sweep(now);
        if let Some(slot) = self.map.get_mut(&digest) {
            if slot.until > now {
                return Ok(match &mut slot.state {
                    State::Claimed(claim) if slot.token == token => {
                        // The same owner again (a re-sent command): it keeps the key.
                        claim.fingerprint = fingerprint.copied();
                        slot.until = now.after(lease);
                        self.earliest_lease = self.earliest_lease.min(slot.until);
                        Found::Answer(Begin::New)
                    }
                    State::Claimed(claim) => Found::Answer(Begin::InProgress {
                        fingerprint: claim.fingerprint,
                    }),
                    State::Completed(record) => Found::Record(record.clone()),
                });
            }
            self.remove(&digest);
        }
        if !self.make_room(limits, now, MemoryStore::ENTRY_OVERHEAD) {
            return Err(StoreError::new(StoreErrorKind::Full));
        }
        let until = now.after(lease);
        self.insert(
            digest,
            Slot {
                until,
                token,
                state: State::Claimed(Box::new(Claim {
                    fingerprint: fingerprint.copied(),
                    waiters: None,
                })),
            },
        );
        self.earliest_lease = self.earliest_lease.min(until);
        Ok(Found::Answer(Begin::New))
    }

    fn complete(
        &mut self,
        limits: &Limits,
        now: Tick,
        ttl: Duration,
        digest: Digest,
        token: OwnerToken,
        record: &Record,
    ) -> Result<(), StoreError> {
        self.sweep(now);
        match self.map.get(&digest) {
            Some(slot) if slot.is_held_by(token, now) => {}
            // Completed by this very owner: a re-sent `complete`. The first record stays.
            Some(slot)
                if slot.until > now
                    && slot.token == token
                    && matches!(slot.state, State::Completed(_)) =>
            {
                return Ok(());
            }
            _ => return Err(StoreError::new(StoreErrorKind::NotOwner)),
        }
        // Take the claim out (waking its waiters, who queue on this shard's lock and so see the
        // record), then make room for the record and put it in.
        self.remove(&digest);
        let cost = MemoryStore::ENTRY_OVERHEAD + record.as_bytes().len();
        let record = if self.make_room(limits, now, cost) || cost <= limits.total_bytes {
            record.as_bytes().clone()
        } else {
            tracing::warn!(
                record_bytes = record.as_bytes().len(),
                max_bytes = limits.total_bytes,
                "record is larger than the memory store; the key is completed without its response"
            );
            Record::not_stored(record.fingerprint().copied())
                .as_bytes()
                .clone()
        };
        let until = now.after(ttl);
        self.insert(
            digest,
            Slot {
                until,
                token,
                state: State::Completed(record),
            },
        );
        self.order.push_back((digest, until));
        Ok(())
    }

    fn get(&mut self, now: Tick, digest: Digest) -> Option<Found<Entry>> {
        let slot = self.map.get(&digest)?;
        if slot.until <= now {
            self.remove(&digest);
            return None;
        }
        Some(match &slot.state {
            State::Claimed(claim) => Found::Answer(Entry::InProgress {
                fingerprint: claim.fingerprint,
                token: slot.token,
            }),
            State::Completed(record) => Found::Record(record.clone()),
        })
    }

    fn release(&mut self, now: Tick, digest: Digest, token: OwnerToken) -> Result<(), StoreError> {
        match self.map.get(&digest) {
            Some(slot) if slot.is_held_by(token, now) => {
                self.remove(&digest);
                Ok(())
            }
            _ => Err(StoreError::new(StoreErrorKind::NotOwner)),
        }
    }

    fn renew(
        &mut self,
        now: Tick,
        digest: Digest,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        match self.map.get_mut(&digest) {
            Some(slot) if slot.is_held_by(token, now) => {
                slot.until = now.after(lease);
                self.earliest_lease = self.earliest_lease.min(slot.until);
                Ok(())
            }
            _ => Err(StoreError::new(StoreErrorKind::NotOwner)),
        }
    }

    fn insert(&mut self, digest: Digest, slot: Slot) {
        self.bytes += slot.cost();
        self.map.insert(digest, slot);
    }

    /// Drops `digest`'s entry, waking whoever waits for its claim to end.
    fn remove(&mut self, digest: &Digest) {
        if let Some(slot) = self.map.remove(digest) {
            self.bytes -= slot.cost();
            if let State::Claimed(claim) = slot.state
                && let Some(waiters) = claim.waiters
            {
                // Wakers only schedule their tasks, so this is fine under the shard lock; and
                // under the lock, no `Notified` created by `wait` can miss it.
                waiters.notify_waiters();
            }
        }
    }

    /// Whether the queue item `(digest, until)` still stands for a stored record.
    fn is_current(&self, digest: &Digest, until: Tick) -> bool {
        matches!(
            self.map.get(digest),
            Some(Slot { until: u, state: State::Completed(_), .. }) if *u == until
        )
    }

    /// Drops expired records from the front of the queue, and the stale queue items among them.
    ///
    /// Runs on every `begin` and `complete`, so it looks at the map only once the front item
    /// has expired: the front's entry is the oldest record, rarely in the cache. A stale item
    /// that has not expired yet stays until it has; its key was dropped or released already.
    fn sweep(&mut self, now: Tick) {
        while let Some(&(digest, until)) = self.order.front() {
            if until > now {
                break;
            }
            self.order.pop_front();
            if self.is_current(&digest, until) {
                self.remove(&digest);
            }
        }
    }

    /// Frees room for one more entry that costs `bytes`, by dropping expired claims and then
    /// the oldest records. False when only unexpired claims are left and it still does not fit.
    fn make_room(&mut self, limits: &Limits, now: Tick, bytes: usize) -> bool {
        let fits = |s: &Self| s.map.len() < limits.entries && s.bytes + bytes <= limits.bytes;
        if fits(self) {
            return true;
        }
        if self.reap_expired_claims(now) && fits(self) {
            return true;
        }
        while let Some((digest, until)) = self.order.pop_front() {
            if self.is_current(&digest, until) {
                self.remove(&digest);
                if fits(self) {
                    return true;
                }
            }
        }
        false
    }

    /// Drops every claim whose lease has ended. Scans the shard, but only once the earliest
    /// lease may have ended; returns whether it dropped any.
    fn reap_expired_claims(&mut self, now: Tick) -> bool {
        if self.earliest_lease > now {
            return false;
        }
        let expired: Vec<Digest> = self
            .map
            .iter()
            .filter(|(_, s)| s.until <= now && matches!(s.state, State::Claimed { .. }))
            .map(|(d, _)| *d)
            .collect();
        for digest in &expired {
            self.remove(digest);
        }
        self.earliest_lease = self
            .map
            .values()
            .filter(|s| matches!(s.state, State::Claimed { .. }))
            .map(|s| s.until)
            .min()
            .unwrap_or(Tick::NEVER);
        !expired.is_empty()
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
        found.map(|found| found.parse(Entry::Completed)).transpose()
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
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};
    use tokio::time::advance;

    use super::*;
    use crate::record::StoredResponse;

    const LEASE: Duration = Duration::from_secs(30);

    fn key(name: &str) -> StoreKey {
        StoreKey::new(Some("memory-tests"), name)
    }

    fn record(fp: Option<Fingerprint>, body: &[u8]) -> Record {
        let response = StoredResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::copy_from_slice(body),
            None,
        );
        Record::new(fp, &response)
    }

    fn kind<T: fmt::Debug>(r: Result<T, StoreError>) -> StoreErrorKind {
        r.expect_err("expected an error").kind()
    }

    /// A single shard, so that bounds are exact.
    fn one_shard() -> MemoryStoreBuilder {
        MemoryStore::builder().shards(1)
    }

    #[tokio::test(start_paused = true)]
    async fn begin_claims_and_reports_the_holder() {
        let store = MemoryStore::new();
        let k = key("begin");
        let fp = Fingerprint::sha256(b"a");
        let (a, b) = (OwnerToken::generate(), OwnerToken::generate());
        assert_eq!(
            store.begin(&k, Some(&fp), a, LEASE).await.unwrap(),
            Begin::New
        );
        assert_eq!(
            store.begin(&k, Some(&fp), a, LEASE).await.unwrap(),
            Begin::New
        );
        assert_eq!(
            store.begin(&k, None, b, LEASE).await.unwrap(),
            Begin::InProgress {
                fingerprint: Some(fp)
            }
        );
        assert_eq!(
            store.get(&k).await.unwrap(),
            Some(Entry::InProgress {
                fingerprint: Some(fp),
                token: a
            })
        );
        let rec = record(Some(fp), b"done");
        store.complete(&k, a, &rec).await.unwrap();
        assert_eq!(
            store.begin(&k, None, b, LEASE).await.unwrap(),
            Begin::Completed(rec.clone())
        );
        assert_eq!(store.get(&k).await.unwrap(), Some(Entry::Completed(rec)));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_lease_is_a_free_key() {
        let store = MemoryStore::new();
        let k = key("lease");
        let (stale, next) = (OwnerToken::generate(), OwnerToken::generate());
        let lease = Duration::from_secs(5);
        store.begin(&k, None, stale, lease).await.unwrap();
        advance(Duration::from_millis(4_999)).await;
        assert!(matches!(
            store.begin(&k, None, next, lease).await.unwrap(),
            Begin::InProgress { .. }
        ));
        advance(Duration::from_millis(1)).await;
        assert_eq!(store.get(&k).await.unwrap(), None);
        // The stale owner can do nothing with its ended lease, not even renew it.
        assert_eq!(
            kind(store.renew(&k, stale, lease).await),
            StoreErrorKind::NotOwner
        );
        assert_eq!(
            store.begin(&k, None, next, lease).await.unwrap(),
            Begin::New
        );
        let stale_rec = record(None, b"stale");
        assert_eq!(
            kind(store.complete(&k, stale, &stale_rec).await),
            StoreErrorKind::NotOwner
        );
        assert_eq!(
            kind(store.release(&k, stale).await),
            StoreErrorKind::NotOwner
        );
        let rec = record(None, b"next");
        store.complete(&k, next, &rec).await.unwrap();
        assert_eq!(
            kind(store.complete(&k, stale, &stale_rec).await),
            StoreErrorKind::NotOwner
        );
        assert_eq!(store.get(&k).await.unwrap(), Some(Entry::Completed(rec)));
    }

    #[tokio::test(start_paused = true)]
    async fn renew_moves_the_end_of_the_lease() {
        let store = MemoryStore::new();
        let k = key("renew");
        let (a, b) = (OwnerToken::generate(), OwnerToken::generate());
        let lease = Duration::from_secs(10);
        store.begin(&k, None, a, lease).await.unwrap();
        advance(Duration::from_secs(8)).await;
        store.renew(&k, a, lease).await.unwrap();
        advance(Duration::from_secs(8)).await;
        assert!(matches!(
            store.begin(&k, None, b, lease).await.unwrap(),
            Begin::InProgress { .. }
        ));
        // A shorter renewal shortens it, too: the lease is "`lease` from now".
        store.renew(&k, a, Duration::from_secs(1)).await.unwrap();
        advance(Duration::from_secs(1)).await;
        assert_eq!(store.begin(&k, None, b, lease).await.unwrap(), Begin::New);
    }

    #[tokio::test(start_paused = true)]
    async fn records_expire_after_the_ttl() {
        let store = MemoryStore::builder().ttl(Duration::from_secs(60)).build();
        let k = key("ttl");
        let a = OwnerToken::generate();
        store.begin(&k, None, a, LEASE).await.unwrap();
        // The retention time counts from completion, not from the claim.
        advance(Duration::from_secs(20)).await;
        let rec = record(None, b"x");
        store.complete(&k, a, &rec).await.unwrap();
        advance(Duration::from_millis(59_999)).await;
        assert_eq!(store.get(&k).await.unwrap(), Some(Entry::Completed(rec)));
        advance(Duration::from_millis(1)).await;
        assert_eq!(store.get(&k).await.unwrap(), None);
        assert_eq!(store.usage(), (0, 0));
        let b = OwnerToken::generate();
        assert_eq!(store.begin(&k, None, b, LEASE).await.unwrap(), Begin::New);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_records_are_swept_on_writes() {
        let store = one_shard().ttl(Duration::from_secs(1)).build();
        for i in 0..10 {
            let (k, t) = (key(&format!("sweep-{i}")), OwnerToken::generate());
            store.begin(&k, None, t, LEASE).await.unwrap();
            store.complete(&k, t, &record(None, b"x")).await.unwrap();
        }
        assert_eq!(store.usage().0, 10);
        advance(Duration::from_secs(1)).await;
        let k = key("sweep-new");
        store
            .begin(&k, None, OwnerToken::generate(), LEASE)
            .await
            .unwrap();
        assert_eq!(store.usage(), (1, MemoryStore::ENTRY_OVERHEAD));
    }

    #[tokio::test(start_paused = true)]
    async fn owner_checks() {
        let store = MemoryStore::new();
        let k = key("owner");
        let (a, b) = (OwnerToken::generate(), OwnerToken::generate());
        let rec = record(None, b"a");
        let not_owner = StoreErrorKind::NotOwner;
        // Never claimed.
        assert_eq!(kind(store.complete(&k, a, &rec).await), not_owner);
        assert_eq!(kind(store.release(&k, a).await), not_owner);
        assert_eq!(kind(store.renew(&k, a, LEASE).await), not_owner);
        assert_eq!(store.get(&k).await.unwrap(), None);
        // Claimed by another.
        store.begin(&k, None, a, LEASE).await.unwrap();
        assert_eq!(kind(store.complete(&k, b, &rec).await), not_owner);
        assert_eq!(kind(store.release(&k, b).await), not_owner);
        assert_eq!(kind(store.renew(&k, b, LEASE).await), not_owner);
        assert_eq!(
            store.get(&k).await.unwrap(),
            Some(Entry::InProgress {
                fingerprint: None,
                token: a
            })
        );
        // Completed: the claim is over for everyone.
        store.complete(&k, a, &rec).await.unwrap();
        assert_eq!(kind(store.release(&k, a).await), not_owner);
        assert_eq!(kind(store.renew(&k, a, LEASE).await), not_owner);
        assert_eq!(kind(store.complete(&k, b, &rec).await), not_owner);
        assert_eq!(store.get(&k).await.unwrap(), Some(Entry::Completed(rec)));
        // Released: the key is free again.
        let k2 = key("owner-release");
        store.begin(&k2, None, a, LEASE).await.unwrap();
        store.release(&k2, a).await.unwrap();
        assert_eq!(kind(store.release(&k2, a).await), not_owner);
        assert_eq!(store.get(&k2).await.unwrap(), None);
        assert_eq!(store.begin(&k2, None, b, LEASE).await.unwrap(), Begin::New);
    }

    #[tokio::test(start_paused = true)]
    async fn resent_complete_is_harmless_and_keeps_the_first_record() {
        let store = MemoryStore::new();
        let k = key("resent");
        let a = OwnerToken::generate();
        store.begin(&k, None, a, LEASE).await.unwrap();
        let first = record(None, b"first");
        store.complete(&k, a, &first).await.unwrap();
        store.complete(&k, a, &first).await.unwrap();
        store
            .complete(&k, a, &record(None, b"other"))
            .await
            .unwrap();
        assert_eq!(store.get(&k).await.unwrap(), Some(Entry::Completed(first)));
        assert_eq!(store.usage().0, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn evicts_the_oldest_records_first() {
        let store = one_shard().max_entries(3).build();
        let keys: Vec<_> = (0..5).map(|i| key(&format!("evict-{i}"))).collect();
        for k in &keys[..3] {
            let t = OwnerToken::generate();
            store.begin(k, None, t, LEASE).await.unwrap();
            store.complete(k, t, &record(None, b"r")).await.unwrap();
            advance(Duration::from_secs(1)).await;
        }
        // Completing refreshes nothing: a read does not change the order either.
        store.get(&keys[0]).await.unwrap().unwrap();
        store
            .begin(&keys[3], None, OwnerToken::generate(), LEASE)
            .await
            .unwrap();
        assert_eq!(store.get(&keys[0]).await.unwrap(), None);
        assert!(store.get(&keys[1]).await.unwrap().is_some());
        assert!(store.get(&keys[2]).await.unwrap().is_some());
        store
            .begin(&keys[4], None, OwnerToken::generate(), LEASE)
            .await
            .unwrap();
        assert_eq!(store.get(&keys[1]).await.unwrap(), None);
        assert!(store.get(&keys[2]).await.unwrap().is_some());
        assert_eq!(store.usage().0, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn evicts_by_bytes() {
        let body = vec![7u8; 1000];
        let size = record(None, &body).as_bytes().len();
        let per = MemoryStore::ENTRY_OVERHEAD + size;
        // Room for three records.
        let store = one_shard().max_bytes(3 * per + 10).build();
        let keys: Vec<_> = (0..4).map(|i| key(&format!("bytes-{i}"))).collect();
        for k in &keys {
            let t = OwnerToken::generate();
            store.begin(k, None, t, LEASE).await.unwrap();
            store.complete(k, t, &record(None, &body)).await.unwrap();
        }
        assert_eq!(store.get(&keys[0]).await.unwrap(), None);
        for k in &keys[1..] {
            assert!(store.get(k).await.unwrap().is_some());
        }
        assert_eq!(store.usage(), (3, 3 * per));
    }

    #[tokio::test(start_paused = true)]
    async fn claims_are_never_evicted() {
        let store = one_shard().max_entries(2).build();
        let (k1, k2, k3) = (key("full-1"), key("full-2"), key("full-3"));
        let (a, b) = (OwnerToken::generate(), OwnerToken::generate());
        store
            .begin(&k1, None, a, Duration::from_secs(5))
            .await
            .unwrap();
        store
            .begin(&k2, None, b, Duration::from_secs(60))
            .await
            .unwrap();
        let c = OwnerToken::generate();
        assert_eq!(
            kind(store.begin(&k3, None, c, LEASE).await),
            StoreErrorKind::Full
        );
        // Still both held; a re-sent begin of a held key still works while full.
        assert!(matches!(
            store.get(&k1).await.unwrap(),
            Some(Entry::InProgress { .. })
        ));
        assert_eq!(
            store
                .begin(&k2, None, b, Duration::from_secs(60))
                .await
                .unwrap(),
            Begin::New
        );
        // Once k1's lease ends, its place is free.
        advance(Duration::from_secs(5)).await;
        assert_eq!(store.begin(&k3, None, c, LEASE).await.unwrap(), Begin::New);
        assert_eq!(store.get(&k1).await.unwrap(), None);
        // A completed record makes room for a claim.
        store.complete(&k2, b, &record(None, b"r")).await.unwrap();
        let k4 = key("full-4");
        assert_eq!(
            store
                .begin(&k4, None, OwnerToken::generate(), LEASE)
                .await
                .unwrap(),
            Begin::New
        );
        assert_eq!(store.get(&k2).await.unwrap(), None);
        assert!(matches!(
            store.get(&k3).await.unwrap(),
            Some(Entry::InProgress { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_claims_go_before_live_records() {
        let store = one_shard().max_entries(2).build();
        let (done, abandoned, next) =
            (key("order-done"), key("order-abandoned"), key("order-next"));
        let a = OwnerToken::generate();
        store.begin(&done, None, a, LEASE).await.unwrap();
        let rec = record(None, b"kept");
        store.complete(&done, a, &rec).await.unwrap();
        let b = OwnerToken::generate();
        store
            .begin(&abandoned, None, b, Duration::from_secs(1))
            .await
            .unwrap();
        advance(Duration::from_secs(1)).await;
        let c = OwnerToken::generate();
        assert_eq!(
            store.begin(&next, None, c, LEASE).await.unwrap(),
            Begin::New
        );
        assert_eq!(store.get(&done).await.unwrap(), Some(Entry::Completed(rec)));
        assert_eq!(store.get(&abandoned).await.unwrap(), None);
        assert_eq!(store.usage().0, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_completed_again_key_counts_as_newest() {
        let store = one_shard()
            .max_entries(2)
            .ttl(Duration::from_secs(10))
            .build();
        let (k0, k1, k2) = (key("again-0"), key("again-1"), key("again-2"));
        let finish = |k: StoreKey| {
            let store = store.clone();
            async move {
                let t = OwnerToken::generate();
                assert_eq!(store.begin(&k, None, t, LEASE).await.unwrap(), Begin::New);
                store.complete(&k, t, &record(None, b"r")).await.unwrap();
            }
        };
        finish(k0.clone()).await;
        advance(Duration::from_secs(10)).await;
        finish(k1.clone()).await;
        advance(Duration::from_secs(1)).await;
        // k0's first record has expired; its key is completed again, after k1.
        finish(k0.clone()).await;
        advance(Duration::from_secs(1)).await;
        finish(k2.clone()).await;
        assert_eq!(store.get(&k1).await.unwrap(), None);
        assert!(store.get(&k0).await.unwrap().is_some());
        assert!(store.get(&k2).await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn oversized_records_keep_the_key_completed() {
        // Two shards of 4 KiB each: a 6 KiB record is over a shard's share but fits the total.
        let store = MemoryStore::builder().shards(2).max_bytes(8 * 1024).build();
        let fp = Fingerprint::sha256(b"big");
        let k = key("big");
        let a = OwnerToken::generate();
        store.begin(&k, Some(&fp), a, LEASE).await.unwrap();
        let big = record(Some(fp), &[1; 6 * 1024]);
        store.complete(&k, a, &big).await.unwrap();
        assert_eq!(store.get(&k).await.unwrap(), Some(Entry::Completed(big)));

        // Over the whole budget: completed, response not stored, fingerprint kept.
        let k = key("huge");
        let a = OwnerToken::generate();
        store.begin(&k, Some(&fp), a, LEASE).await.unwrap();
        let huge = record(Some(fp), &[1; 9 * 1024]);
        store.complete(&k, a, &huge).await.unwrap();
        let Some(Begin::Completed(kept)) = store
            .begin(&k, Some(&fp), OwnerToken::generate(), LEASE)
            .await
            .ok()
        else {
            panic!("the key must be completed");
        };
        assert!(!kept.is_stored());
        assert_eq!(kept.fingerprint(), Some(&fp));
        // A re-sent complete of the original record is still harmless.
        store.complete(&k, a, &huge).await.unwrap();
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
    async fn one_of_64_concurrent_claims_wins() {
        let store = MemoryStore::new();
        let k = key("concurrent");
        let barrier = Arc::new(tokio::sync::Barrier::new(64));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (store, k, barrier) = (store.clone(), k.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.begin(&k, None, OwnerToken::generate(), LEASE).await
                })
            })
            .collect();
        let mut new = 0;
        for task in tasks {
            match task.await.unwrap().unwrap() {
                Begin::New => new += 1,
                Begin::InProgress { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(new, 1);
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

    #[test]
    fn builder_rounds_shards_and_splits_bounds() {
        let store = MemoryStore::builder()
            .shards(5)
            .max_entries(100)
            .max_bytes(1000)
            .build();
        assert_eq!(store.inner.shards.len(), 8);
        assert_eq!(store.inner.limits.entries, 13);
        assert_eq!(store.inner.limits.bytes, 125);
        assert_eq!(
            MemoryStore::builder().shards(0).build().inner.shards.len(),
            1
        );
        let most = MemoryStore::builder().shards(usize::MAX).build();
        assert_eq!(most.inner.shards.len(), MAX_SHARDS);
        let default = MemoryStore::default();
        let n = default.inner.shards.len();
        assert!(n >= 4 && n.is_power_of_two());
        assert_eq!(default.inner.ttl, DEFAULT_TTL);
        let debug = format!("{default:?}");
        assert!(debug.contains("max_entries: 100000"), "{debug}");
        assert!(debug.contains("max_bytes: 134217728"), "{debug}");
    }

    #[test]
    fn entries_fit_their_overhead() {
        // Hash-table slot (key and entry) plus eviction-queue item plus the `Bytes` header that
        // sharing a record's buffer allocates; see ENTRY_OVERHEAD.
        // A claim is boxed and a record kept as its `Bytes`, so an entry is its key, two
        // words of times and token, and one `Bytes`.
        assert_eq!(size_of::<(Digest, Slot)>(), 88);
        let table = size_of::<(Digest, Slot)>() + 1;
        let queue = size_of::<(Digest, Tick)>();
        let shared_bytes_header = 32;
        let total = table + queue + shared_bytes_header;
        println!("table {table} + queue {queue} + bytes header {shared_bytes_header} = {total}");
        assert!(
            total <= MemoryStore::ENTRY_OVERHEAD,
            "{table} + {queue} + {shared_bytes_header} bytes"
        );
    }

    #[test]
    fn digest_hash_uses_the_whole_word() {
        let state = DigestState {
            xor: 0x9e37_79b9_7f4a_7c15,
            mul: 0xa076_1d64_78bd_642f,
        };
        let hash = |d: [u8; 32]| state.hash_one(Digest(d));
        let base = [0u8; 32];
        let mut flipped = base;
        flipped[7] ^= 0x80;
        // A change in the top byte of the word reaches the low bits the table indexes with.
        assert_ne!(hash(base) & 0xffff, hash(flipped) & 0xffff);
        // Bytes past the first eight are not hashed (equality still compares all 32).
        let mut tail = base;
        tail[31] = 1;
        assert_eq!(hash(base), hash(tail));
    }
}
