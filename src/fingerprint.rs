//! The request fingerprint: what tells a retry from a different request under the same key.
//!
//! By default it is SHA-256 over the method, the path, the query, the `content-type` header and
//! the body, each length-prefixed so that no two different requests hash the same bytes. The
//! body is buffered to hash it (up to [`IdempotencyLayer::max_request_body`]) and then handed to
//! the inner service unchanged.
//!
//! [`IdempotencyLayer::max_request_body`]: crate::IdempotencyLayer::max_request_body

use std::fmt;

use bytes::Bytes;
use http::request::Parts;
use sha2::{Digest, Sha256};

/// A 32-byte request fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// A fingerprint from its bytes (as stored by a backend, or computed by a custom function).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The bytes in lowercase hex (64 characters), as logs and admin pages show them.
    pub fn to_hex(&self) -> String {
        crate::hex::hex(&self.0)
    }

    /// SHA-256 of `data`: a building block for custom fingerprint functions.
    pub fn sha256(data: impl AsRef<[u8]>) -> Self {
        Self(Sha256::digest(data.as_ref()).into())
    }

    /// The default fingerprint of a request: SHA-256 over method, path, query, `content-type`
    /// and body.
    pub fn of_request(parts: &Parts, body: &Bytes) -> Self {
        let mut h = Sha256::new();
        field(&mut h, Some(parts.method.as_str().as_bytes()));
        field(&mut h, Some(parts.uri.path().as_bytes()));
        // Absent and empty queries differ in a URI, and so they do here.
        field(&mut h, parts.uri.query().map(str::as_bytes));
        let content_type = parts.headers.get(http::header::CONTENT_TYPE);
        field(&mut h, content_type.map(http::HeaderValue::as_bytes));
        field(&mut h, Some(body));
        Self(h.finalize().into())
    }
}

/// Hashes an optional field: a presence byte, then the length, then the bytes.
fn field(h: &mut Sha256, bytes: Option<&[u8]>) {
    match bytes {
        None => h.update([0]),
        Some(bytes) => {
            h.update([1]);
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        }
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", crate::hex::hex(&self.0[..8]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn fp(method: &str, uri: &str, ct: Option<&str>, body: &'static [u8]) -> Fingerprint {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        Fingerprint::of_request(&parts, &Bytes::from_static(body))
    }

    #[test]
    fn same_request_same_fingerprint() {
        assert_eq!(
            fp("POST", "/a?x=1", Some("application/json"), b"{}"),
            fp("POST", "/a?x=1", Some("application/json"), b"{}")
        );
    }

    #[test]
    fn every_part_counts() {
        let base = fp("POST", "/a?x=1", Some("application/json"), b"{}");
        assert_ne!(base, fp("PATCH", "/a?x=1", Some("application/json"), b"{}"));
        assert_ne!(base, fp("POST", "/b?x=1", Some("application/json"), b"{}"));
        assert_ne!(base, fp("POST", "/a?x=2", Some("application/json"), b"{}"));
        assert_ne!(base, fp("POST", "/a", Some("application/json"), b"{}"));
        assert_ne!(base, fp("POST", "/a?x=1", Some("text/plain"), b"{}"));
        assert_ne!(base, fp("POST", "/a?x=1", None, b"{}"));
        assert_ne!(base, fp("POST", "/a?x=1", Some("application/json"), b"{ }"));
        assert_ne!(fp("POST", "/a?", None, b""), fp("POST", "/a", None, b""));
    }
}
