//! [`MemoryStoreBuilder`], and how the bounds are split over the shards.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::hasher::DigestState;
use super::shard::{Limits, Shard};
use super::{Inner, MemoryStore, Padded, Tick};
use crate::store::DEFAULT_KEY_TTL;

const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
const DEFAULT_MAX_ENTRIES: usize = 100_000;
const DEFAULT_MAX_BYTES: usize = 128 * 1024 * 1024;
const MAX_SHARDS: usize = 1 << 16;

/// Builds a [`MemoryStore`]; from [`MemoryStore::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryStoreBuilder {
    ttl: Duration,
    key_ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    shards: Option<usize>,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            key_ttl: DEFAULT_KEY_TTL,
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

    /// How long a completed key is remembered in all [7 days], at least [`ttl`](Self::ttl).
    ///
    /// When a response's retention (`ttl`) runs out, the store keeps a small record of the key
    /// (its fingerprint, no response: [`Record::response_expired`](crate::record::Record::response_expired))
    /// until `key_ttl` after it was completed. A retry in that time gets the layer's
    /// [`result-expired`](crate::problem#result-expired) problem instead of running again, and
    /// a different request under the key still gets the mismatch. Each remembered key costs
    /// [`MemoryStore::ENTRY_OVERHEAD`] plus about 40 bytes and counts against both bounds; when
    /// room is needed, remembered keys go before stored responses (oldest first). Set it equal to
    /// `ttl` to forget keys together with their responses.
    pub fn key_ttl(mut self, key_ttl: Duration) -> Self {
        self.key_ttl = key_ttl;
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
                            remembered: VecDeque::new(),
                            remember: self.key_ttl.saturating_sub(self.ttl),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
