//! [`StoreKey`]: the scoped key a store files an entry under, and its digest.

use std::fmt;

use sha2::{Digest, Sha256};

/// The key a store files a request under: the client's key, scoped.
///
/// Built from the optional scope (see [`IdempotencyLayer::scope`](crate::IdempotencyLayer::scope))
/// and the client's key. Its [`digest`](Self::digest) is a SHA-256 over both, length-prefixed so
/// that no choice of key can collide with another scope's; stores file entries under the digest,
/// so clients can neither pick a Redis Cluster slot nor smuggle separators into store keys.
///
/// The layer puts the key of a protected request, with its [`OwnerToken`](crate::store::OwnerToken), into the request's
/// extensions as an [`IdempotencyClaim`](crate::IdempotencyClaim).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StoreKey {
    scope: Option<Box<str>>,
    key: Box<str>,
    digest: [u8; 32],
}

impl StoreKey {
    /// Scopes `key` under `scope`.
    pub fn new(scope: Option<&str>, key: &str) -> Self {
        Self {
            scope: scope.map(Into::into),
            key: key.into(),
            digest: Self::hash(scope, key),
        }
    }

    /// [`new`](Self::new) for a key the caller already owns, without copying it.
    pub(crate) fn from_owned(scope: Option<&str>, key: String) -> Self {
        let digest = Self::hash(scope, &key);
        Self {
            scope: scope.map(Into::into),
            key: key.into_boxed_str(),
            digest,
        }
    }

    fn hash(scope: Option<&str>, key: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        match scope {
            None => h.update([0u8]),
            Some(s) => {
                h.update([1u8]);
                h.update((s.len() as u64).to_be_bytes());
                h.update(s.as_bytes());
            }
        }
        h.update((key.len() as u64).to_be_bytes());
        h.update(key.as_bytes());
        h.finalize().into()
    }

    /// The client's key, unescaped.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The scope, when one was set.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// SHA-256 over scope and key: what stores file the entry under.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// What logs name the key by: the first 8 bytes of the digest in hex. Never the client's
    /// key itself, which may be guessable and is the client's secret.
    pub(crate) fn log_id(&self) -> String {
        crate::hex::hex(&self.digest[..8])
    }

    /// The digest in lowercase hex (64 characters).
    pub fn to_hex(&self) -> String {
        crate::hex::hex(&self.digest)
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreKey")
            .field("scope", &self.scope)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_is_folded_in_unambiguously() {
        let a = StoreKey::new(Some("ab"), "c");
        let b = StoreKey::new(Some("a"), "bc");
        let c = StoreKey::new(None, "abc");
        let d = StoreKey::new(Some(""), "abc");
        let digests = [a.digest(), b.digest(), c.digest(), d.digest()];
        for i in 0..digests.len() {
            for j in i + 1..digests.len() {
                assert_ne!(digests[i], digests[j]);
            }
        }
        assert_eq!(StoreKey::new(Some("t"), "k"), StoreKey::new(Some("t"), "k"));
        assert_eq!(a.to_hex().len(), 64);
    }
}
