//! The `Idempotency-Key` header: parsing, validation, and the scoped [`StoreKey`].
//!
//! Two spellings of a key are accepted and mean the same key:
//!
//! - the IETF form, an RFC 8941 sf-string: `Idempotency-Key: "8e03978e-40d5"` (with `\"` and
//!   `\\` escapes; parameters after the string are rejected);
//! - the bare token that Stripe-style clients send: `Idempotency-Key: 8e03978e-40d5`.
//!
//! A key has 1 to 255 characters (the maximum is configurable), all printable ASCII. A request
//! with two key headers, an empty key, a malformed sf-string or a key that is too long gets a
//! `400` problem and runs nothing.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

/// Why a key header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The header appears more than once.
    Repeated,
    /// The key is empty.
    Empty,
    /// The key is longer than the configured maximum.
    TooLong {
        /// The maximum length in characters.
        max: usize,
    },
    /// A character outside printable ASCII.
    InvalidCharacter,
    /// A value that starts with `"` but is not one valid sf-string.
    MalformedString,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Repeated => f.write_str("the idempotency key header is repeated"),
            Self::Empty => f.write_str("the idempotency key is empty"),
            Self::TooLong { max } => {
                write!(f, "the idempotency key is longer than {max} characters")
            }
            Self::InvalidCharacter => {
                f.write_str("the idempotency key has a character outside printable ASCII")
            }
            Self::MalformedString => {
                f.write_str("the idempotency key is not a valid structured-field string")
            }
        }
    }
}

impl std::error::Error for KeyError {}

/// Reads the key from the `name` headers of a request as the layer does: `Ok(None)` when there
/// is none, the unescaped key when there is one valid key of at most `max_len` characters.
///
/// For outer layers that want the key the layer will see (to log it, say), and for benchmarks.
///
/// ```
/// use http::{HeaderMap, HeaderName, HeaderValue};
/// use tower_idempotency::key::{KeyError, parse_key};
///
/// let name = HeaderName::from_static("idempotency-key");
/// let mut headers = HeaderMap::new();
/// headers.insert(&name, HeaderValue::from_static(r#""a\"b""#));
/// assert_eq!(parse_key(&headers, &name, 255), Ok(Some(r#"a"b"#.to_owned())));
///
/// headers.append(&name, HeaderValue::from_static("c"));
/// assert_eq!(parse_key(&headers, &name, 255), Err(KeyError::Repeated));
/// ```
pub fn parse_key(
    headers: &HeaderMap,
    name: &HeaderName,
    max_len: usize,
) -> Result<Option<String>, KeyError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyError::Repeated);
    }
    let raw = trim_ows(value.as_bytes());
    let key = if raw.first() == Some(&b'"') {
        parse_sf_string(raw)?
    } else {
        if !raw.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Err(KeyError::InvalidCharacter);
        }
        // Printable ASCII is valid UTF-8.
        String::from_utf8(raw.to_vec()).map_err(|_| KeyError::InvalidCharacter)?
    };
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > max_len {
        return Err(KeyError::TooLong { max: max_len });
    }
    Ok(Some(key))
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// RFC 8941 §4.2.5, for a value that is exactly one sf-string.
fn parse_sf_string(raw: &[u8]) -> Result<String, KeyError> {
    let mut out = String::with_capacity(raw.len());
    let mut bytes = raw[1..].iter();
    loop {
        match bytes.next() {
            None => return Err(KeyError::MalformedString),
            Some(b'\\') => match bytes.next() {
                Some(&c @ (b'"' | b'\\')) => out.push(c as char),
                _ => return Err(KeyError::MalformedString),
            },
            Some(b'"') => break,
            Some(&c) if (0x20..=0x7e).contains(&c) => out.push(c as char),
            Some(_) => return Err(KeyError::InvalidCharacter),
        }
    }
    if bytes.next().is_some() {
        return Err(KeyError::MalformedString);
    }
    Ok(out)
}

/// The key a store files a request under: the client's key, scoped.
///
/// Built from the optional scope (see [`IdempotencyLayer::scope`](crate::IdempotencyLayer::scope))
/// and the client's key. Its [`digest`](Self::digest) is a SHA-256 over both, length-prefixed so
/// that no choice of key can collide with another scope's; stores file entries under the digest,
/// so clients can neither pick a Redis Cluster slot nor smuggle separators into store keys.
///
/// The layer puts the key of a protected request, with its [`OwnerToken`], into the request's
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

    /// The digest in lowercase hex (64 characters).
    pub fn to_hex(&self) -> String {
        hex(&self.digest)
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

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// Appends `bytes` in lowercase hex.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

/// Who holds a claim: a value unique to one request's execution.
///
/// The layer draws a fresh token for every claim: 64 random bits fixed per process, then a
/// 64-bit counter, so tokens never repeat within a process and collide across processes only by
/// chance. Stores check it on `complete`, `release` and `renew`, so a stale owner whose lease ran
/// out cannot overwrite its successor. Handlers find it in the
/// [`IdempotencyClaim`](crate::IdempotencyClaim) and can pass it on to fence their own writes
/// (compare-and-set on "owner = token"). It is an identity, not a monotonic counter: compare
/// for equality only.
// Bytes, not `u128`: byte alignment keeps the stores' entries free of padding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerToken([u8; 16]);

impl OwnerToken {
    /// A token no other claim in this process has had.
    pub fn generate() -> Self {
        static PROCESS: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        /// Each thread takes blocks of this many counter values, so that threads do not fight
        /// over one cache line for every claim.
        const BLOCK: u64 = 1 << 16;
        thread_local! {
            /// The next value of this thread's block, and the end of the block.
            static NEXT: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
        }
        let process = *PROCESS.get_or_init(|| {
            // Without an OS random source, fall back to the std hasher's random keys.
            getrandom::u64().unwrap_or_else(|_| {
                use std::hash::{BuildHasher, RandomState};
                RandomState::new().hash_one(std::process::id())
            })
        });
        let n = NEXT.with(|next| {
            let (mut n, mut end) = next.get();
            if n == end {
                n = COUNTER.fetch_add(BLOCK, Ordering::Relaxed);
                end = n + BLOCK;
            }
            next.set((n + 1, end));
            n
        });
        Self::from_u128((u128::from(process) << 64) | u128::from(n))
    }

    /// A token from its numeric value (as stored by a backend).
    pub const fn from_u128(value: u128) -> Self {
        Self(value.to_be_bytes())
    }

    /// The numeric value.
    pub const fn as_u128(self) -> u128 {
        u128::from_be_bytes(self.0)
    }

    /// The 16 big-endian bytes.
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// A token from 16 big-endian bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for OwnerToken {
    /// 32 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.as_u128())
    }
}

impl fmt::Debug for OwnerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerToken({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parse(values: &[&[u8]]) -> Result<Option<String>, KeyError> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("idempotency-key", HeaderValue::from_bytes(v).unwrap());
        }
        parse_key(&h, &HeaderName::from_static("idempotency-key"), 255)
    }

    #[test]
    fn bare_and_sf_string_spell_the_same_key() {
        assert_eq!(parse(&[b"abc-123"]).unwrap().unwrap(), "abc-123");
        assert_eq!(parse(&[b"\"abc-123\""]).unwrap().unwrap(), "abc-123");
        assert_eq!(parse(&[b"  abc-123 "]).unwrap().unwrap(), "abc-123");
    }

    #[test]
    fn sf_string_escapes() {
        assert_eq!(parse(&[br#""a\"b\\c""#]).unwrap().unwrap(), r#"a"b\c"#);
        assert_eq!(parse(&[br#""a\nb""#]), Err(KeyError::MalformedString));
        assert_eq!(parse(&[br#""abc"#]), Err(KeyError::MalformedString));
        assert_eq!(parse(&[br#""abc";p=1"#]), Err(KeyError::MalformedString));
        assert_eq!(parse(&[br#""abc", "d""#]), Err(KeyError::MalformedString));
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(&[b"a", b"b"]), Err(KeyError::Repeated));
        assert_eq!(parse(&[b""]), Err(KeyError::Empty));
        assert_eq!(parse(&[b"\"\""]), Err(KeyError::Empty));
        assert_eq!(parse(&[b"caf\xc3\xa9"]), Err(KeyError::InvalidCharacter));
        assert_eq!(
            parse(&[b"\"caf\xc3\xa9\""]),
            Err(KeyError::InvalidCharacter)
        );
        let long = vec![b'k'; 256];
        assert_eq!(parse(&[&long]), Err(KeyError::TooLong { max: 255 }));
        assert!(parse(&[&long[..255]]).unwrap().is_some());
    }

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

    #[test]
    fn tokens_are_unique_and_round_trip() {
        let a = OwnerToken::generate();
        let b = OwnerToken::generate();
        assert_ne!(a, b);
        assert_eq!(OwnerToken::from_bytes(a.to_bytes()), a);
        assert_eq!(a.to_string().len(), 32);
    }
}
