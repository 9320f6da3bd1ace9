//! What a shard drops, and when: as time passes, a record whose response retention ran out
//! becomes a remembered key (its fingerprint only) until its key retention runs out too; when an
//! entry needs room, expired claims go first, then the oldest remembered keys, then the oldest
//! records. Claims whose lease runs are never dropped.

use bytes::Bytes;

use crate::record::Record;

use super::Tick;
use super::hasher::Digest;
use super::shard::{Limits, Shard, Slot, State};

impl Shard {
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
    pub(super) fn sweep(&mut self, now: Tick) {
        while let Some(&(digest, until)) = self.order.front() {
            if until > now {
                break;
            }
            self.order.pop_front();
            if self.is_current(&digest, until) {
                self.expire_response(digest, until);
            }
        }
        while let Some(&(digest, until)) = self.remembered.front() {
            if until > now {
                break;
            }
            self.remembered.pop_front();
            if self.is_current(&digest, until) {
                self.remove(&digest);
            }
        }
    }

    /// The response of the record under `digest` (current until `until`) expired: keep the key
    /// as a fingerprint-only record for the rest of its retention, or drop it.
    fn expire_response(&mut self, digest: Digest, until: Tick) {
        if self.remember.is_zero() {
            self.remove(&digest);
            return;
        }
        let Some(slot) = self.map.get_mut(&digest) else {
            return;
        };
        let State::Completed(bytes) = &slot.state else {
            return;
        };
        let small: Bytes = Record::response_expired(Record::fingerprint_of(bytes))
            .as_bytes()
            .clone();
        let old = slot.cost();
        slot.state = State::Completed(small);
        slot.until = until.after(self.remember);
        let (new, remembered_until) = (slot.cost(), slot.until);
        self.bytes = self.bytes - old + new;
        self.remembered.push_back((digest, remembered_until));
    }

    /// Frees room for one more entry that costs `bytes`, by dropping expired claims and then
    /// the oldest records. False when only unexpired claims are left and it still does not fit.
    pub(super) fn make_room(&mut self, limits: &Limits, now: Tick, bytes: usize) -> bool {
        let fits = |s: &Self| s.map.len() < limits.entries && s.bytes + bytes <= limits.bytes;
        if fits(self) {
            return true;
        }
        if self.reap_expired_claims(now) && fits(self) {
            return true;
        }
        while let Some((digest, until)) = self.remembered.pop_front() {
            if self.is_current(&digest, until) {
                self.remove(&digest);
                if fits(self) {
                    return true;
                }
            }
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

#[cfg(test)]
mod tests {
    use std::fmt;
    use std::time::Duration;

    use tokio::time::advance;

    use crate::fingerprint::Fingerprint;
    use crate::record::Record;
    use crate::store::memory::tests::{LEASE, key, record};
    use crate::store::memory::{MemoryStore, MemoryStoreBuilder};
    use crate::store::{Begin, Entry, OwnerToken, Store, StoreError, StoreErrorKind, StoreKey};

    fn kind<T: fmt::Debug>(r: Result<T, StoreError>) -> StoreErrorKind {
        r.expect_err("expected an error").kind()
    }

    /// A single shard, so that bounds are exact.
    fn one_shard() -> MemoryStoreBuilder {
        MemoryStore::builder().shards(1)
    }

    /// Claims `k` and completes it with a small record.
    async fn finish(store: &MemoryStore, k: &StoreKey) {
        let t = OwnerToken::generate();
        assert_eq!(store.begin(k, None, t, LEASE).await.unwrap(), Begin::New);
        store.complete(k, t, &record(None, b"r")).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn expired_records_are_swept_on_writes() {
        let store = one_shard()
            .ttl(Duration::from_secs(1))
            .key_ttl(Duration::from_secs(1))
            .build();
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
            .key_ttl(Duration::from_secs(10))
            .build();
        let (k0, k1, k2) = (key("again-0"), key("again-1"), key("again-2"));
        finish(&store, &k0).await;
        advance(Duration::from_secs(10)).await;
        finish(&store, &k1).await;
        advance(Duration::from_secs(1)).await;
        // k0's first record has expired; its key is completed again, after k1.
        finish(&store, &k0).await;
        advance(Duration::from_secs(1)).await;
        finish(&store, &k2).await;
        assert_eq!(store.get(&k1).await.unwrap(), None);
        assert!(store.get(&k0).await.unwrap().is_some());
        assert!(store.get(&k2).await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_remembered_after_its_response_expired() {
        let store = one_shard()
            .ttl(Duration::from_secs(60))
            .key_ttl(Duration::from_secs(180))
            .build();
        let (k, a) = (key("remembered"), OwnerToken::generate());
        let fp = Fingerprint::sha256("request");
        store.begin(&k, Some(&fp), a, LEASE).await.unwrap();
        store
            .complete(&k, a, &record(Some(fp), b"response"))
            .await
            .unwrap();
        advance(Duration::from_secs(60)).await;
        // The response is gone; the key and its fingerprint are not.
        let small = Record::response_expired(Some(fp));
        assert_eq!(
            store.get(&k).await.unwrap(),
            Some(Entry::Completed(small.clone()))
        );
        let b = OwnerToken::generate();
        assert_eq!(
            store.begin(&k, Some(&fp), b, LEASE).await.unwrap(),
            Begin::Completed(small.clone())
        );
        assert_eq!(
            store.usage(),
            (1, MemoryStore::ENTRY_OVERHEAD + small.as_bytes().len())
        );
        // Another token cannot complete over it; the key's owner re-sending can.
        assert!(store.complete(&k, b, &record(None, b"x")).await.is_err());
        // At the end of the key retention the key is free again.
        advance(Duration::from_secs(120)).await;
        assert_eq!(store.get(&k).await.unwrap(), None);
        assert_eq!(store.usage(), (0, 0));
        assert_eq!(store.begin(&k, None, b, LEASE).await.unwrap(), Begin::New);
    }

    #[tokio::test(start_paused = true)]
    async fn remembered_keys_go_before_stored_responses() {
        let store = one_shard()
            .max_entries(2)
            .ttl(Duration::from_secs(10))
            .key_ttl(Duration::from_secs(1000))
            .build();
        let (old, live, next) = (key("old"), key("live"), key("next"));
        finish(&store, &old).await;
        advance(Duration::from_secs(10)).await;
        finish(&store, &live).await;
        // `old` is remembered (its response expired), `live` holds a response: `old` goes.
        finish(&store, &next).await;
        assert_eq!(store.get(&old).await.unwrap(), None);
        assert!(matches!(
            store.get(&live).await.unwrap(),
            Some(Entry::Completed(r)) if r.is_stored()
        ));
    }
}
