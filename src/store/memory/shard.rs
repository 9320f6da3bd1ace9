//! One shard: its entries (slots), their states, and the operations on them under the shard's
//! lock. What a shard drops to make room is in `eviction`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use super::hasher::{Digest, DigestState};
use super::{MemoryStore, Tick};
use crate::fingerprint::Fingerprint;
use crate::record::Record;
use crate::store::{Begin, Entry, OwnerToken, StoreError, StoreErrorKind};

/// One shard's bounds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) entries: usize,
    pub(super) bytes: usize,
    /// The whole store's byte budget: a record up to this size is always kept.
    pub(super) total_bytes: usize,
}

/// One key's entry. `until` is the end of the lease for a claim and the end of the retention
/// time for a record; `token` is the claim's owner, or the owner that completed the record.
pub(super) struct Slot {
    pub(super) until: Tick,
    pub(super) token: OwnerToken,
    pub(super) state: State,
}

// The entry's size is most of what the store spends on a record besides the record itself, so
// both states fit in the 32 bytes of a `Bytes`: a claim is boxed (claims are few and live for
// one execution, records are many and live for the retention time), and a record is kept as
// its encoding and parsed again when it is read (the replay decodes it anyway).
pub(super) enum State {
    Claimed(Box<Claim>),
    /// The encoding of the [`Record`] (see [`Record::as_bytes`]).
    Completed(Bytes),
}

pub(super) struct Claim {
    pub(super) fingerprint: Option<Fingerprint>,
    /// Created by the first `wait` on the claim, woken when the claim ends.
    pub(super) waiters: Option<Arc<Notify>>,
}

/// What `begin` and `get` read from a shard: an answer, or a stored record as its encoding,
/// parsed once the shard's lock is released (the lock is held for the lookup only).
pub(super) enum Found<T> {
    Answer(T),
    Record(Bytes),
}

impl<T> Found<T> {
    /// The answer, a record made into one by `completed`.
    pub(super) fn parse(self, completed: impl FnOnce(Record) -> T) -> Result<T, StoreError> {
        match self {
            Found::Answer(answer) => Ok(answer),
            Found::Record(bytes) => Ok(completed(Record::from_bytes(bytes)?)),
        }
    }
}

impl Slot {
    pub(super) fn cost(&self) -> usize {
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

pub(super) struct Shard {
    pub(super) map: HashMap<Digest, Slot, DigestState>,
    /// Completed records in the order they were stored, which is the order they expire in.
    /// An item whose key has since been dropped or re-completed (its `until` differs) is skipped.
    pub(super) order: VecDeque<(Digest, Tick)>,
    /// Keys whose response expired and that are remembered (a fingerprint-only record) until
    /// their key retention ends, in the order they expire in; stale items are skipped likewise.
    pub(super) remembered: VecDeque<(Digest, Tick)>,
    /// How long a key is remembered after its response expired: the key retention less the
    /// response retention (zero: forgotten with its response).
    pub(super) remember: Duration,
    /// What the entries are charged, see `Slot::cost`.
    pub(super) bytes: usize,
    /// No claim's lease ends before this, so expired claims are looked for only from then on.
    pub(super) earliest_lease: Tick,
}

impl Shard {
    pub(super) fn begin(
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

    pub(super) fn complete(
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
            // The owner's claim, or a key that is free: nothing there, or an entry whose lease
            // or retention ran out. A `complete` delayed past its lease (a store outage shorter
            // than the lease, a slow record) still lands when nobody claimed the key since, so
            // the request never runs again.
            None => {}
            Some(slot) if slot.until <= now || slot.is_held_by(token, now) => {}
            // Completed by this very owner: a re-sent `complete`. The first record stays.
            Some(slot) if slot.token == token && matches!(slot.state, State::Completed(_)) => {
                return Ok(());
            }
            // Another owner's live claim, or another owner's record.
            Some(_) => return Err(StoreError::new(StoreErrorKind::NotOwner)),
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

    /// The live entry of `digest`, and the tick its state ends at (the end of the lease, of the
    /// response retention, or of the key retention).
    pub(super) fn get(&mut self, now: Tick, digest: Digest) -> Option<(Found<Entry>, Tick)> {
        self.sweep(now);
        let slot = self.map.get(&digest)?;
        if slot.until <= now {
            self.remove(&digest);
            return None;
        }
        let found = match &slot.state {
            State::Claimed(claim) => Found::Answer(Entry::InProgress {
                fingerprint: claim.fingerprint,
                token: slot.token,
            }),
            State::Completed(record) => Found::Record(record.clone()),
        };
        Some((found, slot.until))
    }

    pub(super) fn release(
        &mut self,
        now: Tick,
        digest: Digest,
        token: OwnerToken,
    ) -> Result<(), StoreError> {
        match self.map.get(&digest) {
            Some(slot) if slot.is_held_by(token, now) => {
                self.remove(&digest);
                Ok(())
            }
            _ => Err(StoreError::new(StoreErrorKind::NotOwner)),
        }
    }

    pub(super) fn renew(
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
    pub(super) fn remove(&mut self, digest: &Digest) {
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
}

#[cfg(test)]
mod tests {
    use tokio::time::advance;

    use super::*;
    use crate::store::Store;
    use crate::store::memory::tests::{LEASE, key, record};

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
        let store = MemoryStore::builder()
            .ttl(Duration::from_secs(60))
            .key_ttl(Duration::from_secs(60))
            .build();
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
}
