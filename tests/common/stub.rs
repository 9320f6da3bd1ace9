//! Stepping stone until `MemoryStore` lands: the same API, the simplest semantics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower_idempotency::store::{
    Begin, Entry, Fingerprint, OwnerToken, Record, Store, StoreError, StoreErrorKind, StoreKey,
};

enum Slot {
    Claim(Option<Fingerprint>, OwnerToken, Instant),
    Done(Record, Instant),
}

#[derive(Clone, Default)]
pub(crate) struct MemoryStore {
    map: Arc<Mutex<HashMap<[u8; 32], Slot>>>,
    ttl: Option<Duration>,
}

pub(crate) struct MemoryStoreBuilder {
    ttl: Option<Duration>,
}

#[allow(dead_code)]
impl MemoryStoreBuilder {
    pub(crate) fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    pub(crate) fn max_entries(self, _: usize) -> Self {
        self
    }
    pub(crate) fn max_bytes(self, _: usize) -> Self {
        self
    }
    pub(crate) fn shards(self, _: usize) -> Self {
        self
    }
    pub(crate) fn build(self) -> MemoryStore {
        MemoryStore {
            map: Arc::default(),
            ttl: self.ttl,
        }
    }
}

#[allow(dead_code)]
impl MemoryStore {
    pub(crate) fn new() -> Self {
        Self::default()
    }
    pub(crate) fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder { ttl: None }
    }
    fn live(&self, key: &StoreKey) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Slot>> {
        let mut map = self.map.lock().unwrap();
        let now = Instant::now();
        let dead = match map.get(key.digest()) {
            Some(Slot::Claim(_, _, until) | Slot::Done(_, until)) => *until <= now,
            None => false,
        };
        if dead {
            map.remove(key.digest());
        }
        map
    }
    fn owned(&self, key: &StoreKey, token: OwnerToken) -> Result<(), StoreError> {
        match self.live(key).get(key.digest()) {
            Some(Slot::Claim(_, t, _)) if *t == token => Ok(()),
            _ => Err(StoreError::new(StoreErrorKind::NotOwner)),
        }
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
        let mut map = self.live(key);
        match map.get(key.digest()) {
            Some(Slot::Claim(fp, t, _)) if *t != token => {
                return Ok(Begin::InProgress { fingerprint: *fp });
            }
            Some(Slot::Done(record, _)) => return Ok(Begin::Completed(record.clone())),
            _ => {}
        }
        let slot = Slot::Claim(fingerprint.copied(), token, Instant::now() + lease);
        map.insert(*key.digest(), slot);
        Ok(Begin::New)
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        record: &Record,
    ) -> Result<(), StoreError> {
        self.owned(key, token)?;
        let until = Instant::now() + self.ttl.unwrap_or(Duration::from_secs(86_400));
        let slot = Slot::Done(record.clone(), until);
        self.map.lock().unwrap().insert(*key.digest(), slot);
        Ok(())
    }

    async fn get(&self, key: &StoreKey) -> Result<Option<Entry>, StoreError> {
        Ok(match self.live(key).get(key.digest()) {
            Some(Slot::Claim(fp, t, _)) => Some(Entry::InProgress {
                fingerprint: *fp,
                token: *t,
            }),
            Some(Slot::Done(r, _)) => Some(Entry::Completed(r.clone())),
            None => None,
        })
    }

    async fn release(&self, key: &StoreKey, token: OwnerToken) -> Result<(), StoreError> {
        self.owned(key, token)?;
        self.map.lock().unwrap().remove(key.digest());
        Ok(())
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.owned(key, token)?;
        if let Some(Slot::Claim(_, _, until)) = self.map.lock().unwrap().get_mut(key.digest()) {
            *until = Instant::now() + lease;
        }
        Ok(())
    }
}
