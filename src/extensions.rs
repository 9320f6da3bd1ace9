//! What the layer puts into extensions: the claim for the handler, the outcome for outer layers.

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
}
