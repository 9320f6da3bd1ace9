//! What the layer puts into extensions: the claim for the handler, the outcome for outer layers.

use std::fmt;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::store::{OwnerToken, StoreKey};

/// What the layer did with a request, in the extensions of every response it answers.
///
/// Outer layers (logging, metrics) read it with [`Outcome::of`]; [`as_str`](Self::as_str) and
/// [`reason`](Self::reason) give stable strings for labels (with the feature `metrics` the
/// layer counts them itself, see the `metrics` module).
///
/// Every response to a request the layer protects or refuses carries it. Two exceptions:
///
/// - A request the layer passes through ([`Bypassed`](Self::Bypassed): method not covered, or
///   no key) is answered by the inner service, and its response has **no** `Outcome`
///   extension: inserting one would cost the extensions map and its value, three allocations
///   on every such response, so that passing through would cost more than an identity
///   layer. [`Outcome::of`] reads a missing extension as `Bypassed`.
/// - A handler that panics has no response. The layer releases its claim (the outcome is
///   [`Released`](Self::Released), as the metrics and the request's span record it) and lets
///   the panic go on, to an outer `CatchPanicLayer` say, whose own `500` has no `Outcome`.
///
/// The first execution of a key ends in exactly one of [`Recorded`](Self::Recorded),
/// [`Released`](Self::Released) or [`NotStored`](Self::NotStored); a retry of it in one of the
/// others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Claimed and run once; the response was stored, and retries get its replay.
    Recorded,
    /// Claimed and run; the response was retryable (`5xx`, `408`, `429`, a retryable gRPC
    /// status, an inner error, a panic, or a [policy](crate::IdempotencyLayer::record_policy)
    /// said so), so the claim was released and a retry runs again.
    Released,
    /// Claimed and run once; the response was over
    /// [the cap](crate::IdempotencyLayer::max_response_body), streamed to this client without
    /// being kept, and the key completed without it. Retries get
    /// [`ReplayUnavailable`](Self::ReplayUnavailable).
    NotStored,
    /// The stored response of an earlier execution.
    Replayed,
    /// The key's request completed but its response cannot be replayed: it was not stored
    /// (the [`409` problem](crate::problem#response-not-stored)).
    ReplayUnavailable,
    /// Another request with the key is still running (`409`).
    Conflict,
    /// The key was used for a different request (`422` by default).
    Mismatch,
    /// The request was refused before anything was claimed (`400`, `403`, `413`); the reason
    /// says why.
    Rejected(RejectReason),
    /// The store failed and the layer failed closed (`503`).
    StoreUnavailable,
    /// The store failed and the layer, configured to fail open, ran the request unprotected.
    Unprotected,
    /// Not covered (method not protected, or no key and none required): passed through with no
    /// store call.
    Bypassed,
}

impl Outcome {
    /// What the layer did with the request `res` answers: its `Outcome` extension, or
    /// [`Bypassed`](Self::Bypassed) when it has none (the layer passed the request through).
    ///
    /// Read it in a layer *outside* the idempotency layer, whose responses all went through
    /// it; a response made outside the layer (another route, an outer layer's own answer)
    /// also has no extension.
    ///
    /// ```
    /// use tower_idempotency::Outcome;
    ///
    /// let res = http::Response::new(());
    /// assert_eq!(Outcome::of(&res), Outcome::Bypassed);
    /// ```
    pub fn of<B>(res: &http::Response<B>) -> Self {
        res.extensions()
            .get::<Self>()
            .copied()
            .unwrap_or(Self::Bypassed)
    }

    /// A stable, lowercase `snake_case` name, for metric labels and logs: `recorded`,
    /// `released`, `not_stored`, `replayed`, `replay_unavailable`, `conflict`, `mismatch`,
    /// `rejected`, `store_unavailable`, `unprotected`, `bypassed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recorded => "recorded",
            Self::Released => "released",
            Self::NotStored => "not_stored",
            Self::Replayed => "replayed",
            Self::ReplayUnavailable => "replay_unavailable",
            Self::Conflict => "conflict",
            Self::Mismatch => "mismatch",
            Self::Rejected(_) => "rejected",
            Self::StoreUnavailable => "store_unavailable",
            Self::Unprotected => "unprotected",
            Self::Bypassed => "bypassed",
        }
    }

    /// Why a request was [rejected](Self::Rejected); `None` for every other outcome.
    pub fn reason(self) -> Option<RejectReason> {
        match self {
            Self::Rejected(reason) => Some(reason),
            _ => None,
        }
    }

    /// Whether the inner service ran under a claim of the key (recorded, released, not stored).
    pub fn executed(self) -> bool {
        matches!(self, Self::Recorded | Self::Released | Self::NotStored)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason() {
            Some(reason) => write!(f, "rejected ({})", reason.as_str()),
            None => f.write_str(self.as_str()),
        }
    }
}

/// Why the layer [rejected](Outcome::Rejected) a request; each has a
/// [problem](crate::problem) of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// A key is [required](crate::IdempotencyLayer::require_key) and the request has none.
    MissingKey,
    /// The key header is invalid (repeated, empty, too long, malformed).
    InvalidKey,
    /// A [scope](crate::IdempotencyLayer::scope) function found no scope.
    MissingScope,
    /// The request body is over the fingerprinting limit.
    BodyTooLarge,
    /// The request body failed while the layer read it.
    UnreadableBody,
}

impl RejectReason {
    /// A stable, lowercase `snake_case` name, for metric labels and logs: `missing_key`,
    /// `invalid_key`, `missing_scope`, `body_too_large`, `unreadable_body`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingKey => "missing_key",
            Self::InvalidKey => "invalid_key",
            Self::MissingScope => "missing_scope",
            Self::BodyTooLarge => "body_too_large",
            Self::UnreadableBody => "unreadable_body",
        }
    }
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
