//! The operator's calls on a [`MemoryStore`]: [`Store::lookup`] (a shard's `get`, with the
//! expiry), and [`Store::evict`], each under the key's shard lock.

use std::time::Duration;

use super::hasher::Digest;
use super::shard::{Shard, State};
use super::{MemoryStore, Tick};
use crate::store::{Entry, Evict, Evicted, KeyInfo, LookupOptions, StoreError, StoreKey};

impl Shard {
    /// Removes the live entry of `digest` as `how` allows.
    fn evict(&mut self, now: Tick, digest: Digest, how: Evict) -> Evicted {
        self.sweep(now);
        let Some(slot) = self.map.get(&digest) else {
            return Evicted::Nothing;
        };
        let evicted = match (&slot.state, how) {
            _ if slot.until <= now => Evicted::Nothing,
            (State::Completed(_), _) => Evicted::Record,
            (State::Claimed(_), Evict::Force) => Evicted::Claim { owner: slot.token },
            (State::Claimed(_), _) => return Evicted::Refused { owner: slot.token },
        };
        // Also wakes the claim's waiters. The eviction queues skip the stale items it leaves.
        self.remove(&digest);
        evicted
    }
}

impl MemoryStore {
    pub(super) fn lookup_key(
        &self,
        key: &StoreKey,
        options: LookupOptions,
    ) -> Result<Option<KeyInfo>, StoreError> {
        let (found, until, now) = {
            let mut shard = self.shard(key);
            let now = self.inner.now();
            match shard.get(now, Digest(*key.digest())) {
                Some((found, until)) => (found, until, now),
                None => return Ok(None),
            }
        };
        let entry = found.parse(Entry::Completed)?;
        let left = Duration::from_nanos(until.0.saturating_sub(now.0));
        Ok(Some(
            KeyInfo::from_entry(entry, options).with_expires_in(left),
        ))
    }

    pub(super) fn evict_key(&self, key: &StoreKey, how: Evict) -> Evicted {
        let mut shard = self.shard(key);
        let now = self.inner.now();
        shard.evict(now, Digest(*key.digest()), how)
    }
}
