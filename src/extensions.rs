//! What the layer puts into extensions: the claim for the handler, the outcome for outer layers.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::store::{OwnerToken, StoreKey};

/// What the layer did with a request, in the extensions of every response it answers.
///
/// Outer layers (logging, metrics) read it with `response.extensions().get::<Outcome>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Not covered (method not protected, or no key and none required): passed through with no
    /// store call.
    Bypassed,
    /// Claimed and run once; the response was recorded, or the claim released.
    Executed,
    /// The stored response of an earlier execution.
    Replayed,
    /// Another request with the key is still running (`409`).
    Conflict,
    /// The key was used for a different request (`422` by default).
    Mismatch,
    /// The key or body was rejected (`400`, `413`).
    Rejected,
    /// The key's request completed but its response was not kept (`409`).
    NotStored,
    /// The store failed and the layer failed closed (`503`).
    StoreUnavailable,
    /// The store failed and the layer, configured to fail open, ran the request unprotected.
    Unprotected,
}

/// The claim a protected request runs under, in the request's extensions.
///
/// A handler can pass the key and token on to downstream APIs, or fence its own writes with the
/// token (write only where the row's owner still equals it).
///
/// ```
/// use axum::Extension;
/// use tower_idempotency::IdempotencyClaim;
///
/// async fn create_order(claim: Option<Extension<IdempotencyClaim>>) -> String {
///     match claim {
///         Some(Extension(claim)) => format!("key {} owned by {}", claim.key().key(), claim.token()),
///         None => "unprotected".to_owned(),
///     }
/// }
/// # let _ = create_order;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    key: StoreKey,
    token: OwnerToken,
}

impl IdempotencyClaim {
    pub(crate) fn new(key: StoreKey, token: OwnerToken) -> Self {
        Self { key, token }
    }

    /// The scoped key the request is filed under.
    pub fn key(&self) -> &StoreKey {
        &self.key
    }

    /// The owner token of this execution.
    pub fn token(&self) -> OwnerToken {
        self.token
    }

    /// An idempotency key for one of the handler's own downstream calls, named by `label`.
    ///
    /// The same scoped key and label give the same key every time, so when the request runs
    /// again (its earlier execution failed with a retryable answer, or its owner was lost and the
    /// lease ran out) the downstream service sees the same key and does not act twice. Different
    /// labels, keys or scopes give unrelated keys: use one label per downstream operation
    /// (`"charge"`, `"reserve-stock"`), and a label with an index for repeated ones
    /// (`"refund-2"`).
    ///
    /// The key is an HMAC-SHA-256 of the label keyed by the [store key's
    /// digest](StoreKey::digest), in 64 lowercase hex characters: a valid bare token and
    /// sf-string, within every common key length limit. The owner token is not part of it (it
    /// changes between runs). The downstream service cannot learn the client's key from it, nor
    /// compute the key of another label or request; the client who sent the key and knows its
    /// scope could compute it, as it could send the downstream call itself.
    ///
    /// A handler that charges through a payment API:
    ///
    /// ```
    /// use axum::Extension;
    /// use http::StatusCode;
    /// use tower_idempotency::IdempotencyClaim;
    ///
    /// async fn create_order(Extension(claim): Extension<IdempotencyClaim>) -> StatusCode {
    ///     // The same key on every run of this request, and only of this request.
    ///     let charge_key = claim.derive("charge");
    ///     let charge = http::Request::post("https://payments.example/v1/charges")
    ///         .header("idempotency-key", &charge_key)
    ///         .body(String::from("amount=1000&currency=eur"))
    ///         .unwrap();
    ///     // ... send `charge` with your HTTP client, then record the order ...
    ///     # let _ = charge;
    ///     StatusCode::CREATED
    /// }
    /// # let _ = create_order;
    /// ```
    pub fn derive(&self, label: &str) -> String {
        derive_key(self.key.digest(), label)
    }
}

/// What [`IdempotencyClaim::derive`] computes: HMAC-SHA-256 over a fixed context and the label,
/// keyed by the digest, in lowercase hex.
fn derive_key(digest: &[u8; 32], label: &str) -> String {
    // HMAC pads a key shorter than the hash's block to the block with zeros; doing it here
    // takes the infallible fixed-size constructor.
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(digest);
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&key.into());
    // The context keeps these keys apart from any other use of the digest.
    mac.update(b"tower-idempotency derive v1\0");
    mac.update(label.as_bytes());
    crate::hex::hex(&mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::parse_key;
    use http::{HeaderMap, HeaderName, HeaderValue};

    fn claim(scope: Option<&str>, key: &str) -> IdempotencyClaim {
        IdempotencyClaim::new(StoreKey::new(scope, key), OwnerToken::generate())
    }

    #[test]
    fn derive_is_stable_across_runs_and_apart_across_labels_keys_and_scopes() {
        let first = claim(Some("tenant-a"), "order-1");
        let rerun = claim(Some("tenant-a"), "order-1");
        assert_ne!(first.token(), rerun.token());
        assert_eq!(first.derive("charge"), rerun.derive("charge"));
        assert_ne!(first.derive("charge"), first.derive("refund"));
        assert_ne!(
            first.derive("charge"),
            claim(Some("tenant-a"), "order-2").derive("charge")
        );
        assert_ne!(
            first.derive("charge"),
            claim(Some("tenant-b"), "order-1").derive("charge")
        );
        assert_ne!(
            first.derive("charge"),
            claim(None, "order-1").derive("charge")
        );
        // Not the digest itself, nor the key.
        assert_ne!(first.derive(""), first.key().to_hex());
        assert!(!first.derive("charge").contains("order-1"));
    }

    #[test]
    fn derive_is_hmac_sha256_keyed_by_the_digest() {
        // The same tag from the general HMAC constructor, which takes a 32-byte key as it is,
        // in hex spelled by `format!`.
        let claim = claim(None, "k");
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(claim.key().digest()).unwrap();
        mac.update(b"tower-idempotency derive v1\0charge");
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(claim.derive("charge"), expected);
    }

    #[test]
    fn derived_keys_parse_as_bare_tokens_and_sf_strings() {
        let key = claim(None, "k").derive("charge");
        assert_eq!(key.len(), 64);
        let name = HeaderName::from_static("idempotency-key");
        for value in [key.clone(), format!("\"{key}\"")] {
            let mut headers = HeaderMap::new();
            headers.insert(&name, HeaderValue::from_str(&value).unwrap());
            assert_eq!(parse_key(&headers, &name, 255), Ok(Some(key.clone())));
        }
    }
}
