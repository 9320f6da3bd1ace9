//! What the client layer did, in the extensions of the response it hands back.

/// What [`IdempotentRetry`](super::IdempotentRetry) did for a request, in the extensions of
/// every response it hands back (`response.extensions().get::<RetryReport>()`).
///
/// An answer that is an `Err` carries nothing; the attempts are in the `tracing` events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryReport {
    pub(crate) attempts: u32,
    pub(crate) key: Option<String>,
    pub(crate) stop: Stop,
}

impl RetryReport {
    /// How many times the request was sent, the answered one included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The idempotency key every attempt carried (the caller's, or the one the layer made);
    /// `None` for a request the layer does not cover.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Why this answer is the one handed back.
    pub fn stop(&self) -> Stop {
        self.stop
    }
}

/// Why [`IdempotentRetry`](super::IdempotentRetry) handed back the answer it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stop {
    /// The answer is not one to retry: a success, or an error no retry changes (`400`, `422`,
    /// the server layer's "response not stored", ...).
    Final,
    /// The answer is retryable, but the request was sent the
    /// [maximum](super::IdempotentRetryLayer::max_attempts) number of times.
    MaxAttempts,
    /// The answer is retryable, but the next attempt would start after the
    /// [deadline](super::IdempotentRetryLayer::deadline).
    Deadline,
    /// The answer is retryable, but the [retry budget](super::IdempotentRetryLayer::budget)
    /// is spent.
    Budget,
    /// The request body was over [the limit](super::IdempotentRetryLayer::max_body) the layer
    /// buffers, or failed while it was read: the request was sent once and is never retried.
    BodyNotBuffered,
    /// The request is not covered (its method is not one of the
    /// [methods](super::IdempotentRetryLayer::methods) and it has no key): passed through once.
    NotCovered,
}
