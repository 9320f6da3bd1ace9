//! [`BoxStore`], the erased store for choosing a backend at run time, over a private
//! object-safe mirror of [`Store`]; and the forwarding of [`Store`] through an [`Arc`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::{
    Begin, Entry, Evict, Evicted, KeyInfo, LookupOptions, OwnerToken, Store, StoreError, StoreKey,
};
use crate::fingerprint::Fingerprint;
use crate::record::Record;

impl<T: Store + ?Sized> Store for Arc<T> {
    fn begin(
        &self,
        key: &StoreKey,
        fingerprint: Option<&Fingerprint>,
        token: OwnerToken,
        lease: Duration,
    ) -> impl Future<Output = Result<Begin, StoreError>> + Send {
        (**self).begin(key, fingerprint, token, lease)
    }

    fn complete(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        record: &Record,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).complete(key, token, record)
    }

    fn get(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<Entry>, StoreError>> + Send {
        (**self).get(key)
    }

    fn release(
        &self,
        key: &StoreKey,
        token: OwnerToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).release(key, token)
    }

    fn renew(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        lease: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).renew(key, token, lease)
    }

    fn wait(
        &self,
        key: &StoreKey,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).wait(key, timeout)
    }

    fn is_remote(&self) -> bool {
        (**self).is_remote()
    }

    fn lookup(
        &self,
        key: &StoreKey,
        options: LookupOptions,
    ) -> impl Future<Output = Result<Option<KeyInfo>, StoreError>> + Send {
        (**self).lookup(key, options)
    }

    fn evict(
        &self,
        key: &StoreKey,
        how: Evict,
    ) -> impl Future<Output = Result<Evicted, StoreError>> + Send {
        (**self).evict(key, how)
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe mirror of [`Store`] behind [`BoxStore`].
trait DynStore: Send + Sync + 'static {
    fn begin<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: Option<&'a Fingerprint>,
        token: OwnerToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Begin, StoreError>>;
    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: OwnerToken,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn get<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Option<Entry>, StoreError>>;
    fn release<'a>(
        &'a self,
        key: &'a StoreKey,
        token: OwnerToken,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        token: OwnerToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn wait<'a>(
        &'a self,
        key: &'a StoreKey,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn is_remote(&self) -> bool;
    fn lookup<'a>(
        &'a self,
        key: &'a StoreKey,
        options: LookupOptions,
    ) -> BoxFuture<'a, Result<Option<KeyInfo>, StoreError>>;
    fn evict<'a>(
        &'a self,
        key: &'a StoreKey,
        how: Evict,
    ) -> BoxFuture<'a, Result<Evicted, StoreError>>;
}

impl<T: Store> DynStore for T {
    fn begin<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: Option<&'a Fingerprint>,
        token: OwnerToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Begin, StoreError>> {
        Box::pin(Store::begin(self, key, fingerprint, token, lease))
    }
    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: OwnerToken,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::complete(self, key, token, record))
    }
    fn get<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        Box::pin(Store::get(self, key))
    }
    fn release<'a>(
        &'a self,
        key: &'a StoreKey,
        token: OwnerToken,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::release(self, key, token))
    }
    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        token: OwnerToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::renew(self, key, token, lease))
    }
    fn wait<'a>(
        &'a self,
        key: &'a StoreKey,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::wait(self, key, timeout))
    }
    fn is_remote(&self) -> bool {
        Store::is_remote(self)
    }
    fn lookup<'a>(
        &'a self,
        key: &'a StoreKey,
        options: LookupOptions,
    ) -> BoxFuture<'a, Result<Option<KeyInfo>, StoreError>> {
        Box::pin(Store::lookup(self, key, options))
    }
    fn evict<'a>(
        &'a self,
        key: &'a StoreKey,
        how: Evict,
    ) -> BoxFuture<'a, Result<Evicted, StoreError>> {
        Box::pin(Store::evict(self, key, how))
    }
}

/// A type-erased, cheaply clonable [`Store`], for choosing a backend at run time.
///
/// ```
/// use tower_idempotency::store::{BoxStore, MemoryStore, NoOpStore};
///
/// let store = if std::env::var_os("IDEMPOTENCY_OFF").is_some() {
///     BoxStore::new(NoOpStore::new())
/// } else {
///     BoxStore::new(MemoryStore::new())
/// };
/// let layer = tower_idempotency::IdempotencyLayer::new(store);
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct BoxStore {
    inner: Arc<dyn DynStore>,
}

impl BoxStore {
    /// Erases `store`.
    pub fn new<S: Store>(store: S) -> Self {
        Self {
            inner: Arc::new(store),
        }
    }
}

impl fmt::Debug for BoxStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxStore").finish_non_exhaustive()
    }
}

impl Store for BoxStore {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: Option<&Fingerprint>,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        self.inner.begin(key, fingerprint, token, lease).await
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        record: &Record,
    ) -> Result<(), StoreError> {
        self.inner.complete(key, token, record).await
    }

    async fn get(&self, key: &StoreKey) -> Result<Option<Entry>, StoreError> {
        self.inner.get(key).await
    }

    async fn release(&self, key: &StoreKey, token: OwnerToken) -> Result<(), StoreError> {
        self.inner.release(key, token).await
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.inner.renew(key, token, lease).await
    }

    async fn wait(&self, key: &StoreKey, timeout: Duration) -> Result<(), StoreError> {
        self.inner.wait(key, timeout).await
    }

    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }

    async fn lookup(
        &self,
        key: &StoreKey,
        options: LookupOptions,
    ) -> Result<Option<KeyInfo>, StoreError> {
        self.inner.lookup(key, options).await
    }

    async fn evict(&self, key: &StoreKey, how: Evict) -> Result<Evicted, StoreError> {
        self.inner.evict(key, how).await
    }
}

// `BoxStore` must stay object safe behind its `Arc<dyn DynStore>`; this fails to compile if not.
const _: fn() = || {
    fn assert_store<S: Store + Clone>() {}
    assert_store::<BoxStore>();
    let _: Option<Arc<dyn DynStore>> = None;
};
