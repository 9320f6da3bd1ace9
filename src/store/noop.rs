use std::time::Duration;

use super::{Begin, Entry, Evict, Evicted, OwnerToken, Store, StoreError, StoreKey};
use crate::fingerprint::Fingerprint;
use crate::record::Record;

/// A store that keeps nothing: every `begin` is new, `complete` stores nothing, `get` misses.
///
/// With it the layer still parses and validates keys and fingerprints, but never replays and
/// never answers `409`: every request runs. Use it to switch protection off without changing the
/// stack's types, and in tests of the surrounding code. [`lookup`](Store::lookup) finds
/// nothing and [`evict`](Store::evict) removes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoOpStore {
    _private: (),
}

impl NoOpStore {
    /// A new no-op store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for NoOpStore {
    async fn begin(
        &self,
        _key: &StoreKey,
        _fingerprint: Option<&Fingerprint>,
        _token: OwnerToken,
        _lease: Duration,
    ) -> Result<Begin, StoreError> {
        Ok(Begin::New)
    }

    async fn complete(
        &self,
        _key: &StoreKey,
        _token: OwnerToken,
        _record: &Record,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    async fn get(&self, _key: &StoreKey) -> Result<Option<Entry>, StoreError> {
        Ok(None)
    }

    async fn release(&self, _key: &StoreKey, _token: OwnerToken) -> Result<(), StoreError> {
        Ok(())
    }

    async fn renew(
        &self,
        _key: &StoreKey,
        _token: OwnerToken,
        _lease: Duration,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    async fn wait(&self, _key: &StoreKey, _timeout: Duration) -> Result<(), StoreError> {
        Ok(())
    }

    async fn evict(&self, _key: &StoreKey, _how: Evict) -> Result<Evicted, StoreError> {
        Ok(Evicted::Nothing)
    }
}
