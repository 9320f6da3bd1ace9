//! Where the layer reports what it does: the request's span and, with the feature `metrics`,
//! the [metrics](crate::metrics). Without the feature, the metric calls compile to nothing.

use tracing::Span;

use crate::extensions::Outcome;
use crate::store::StoreError;
#[cfg(feature = "metrics")]
use crate::store::StoreErrorKind;

/// The span of a protected request: the key digest is recorded once the key is scoped, the
/// outcome once it is known.
pub(crate) fn request_span() -> Span {
    tracing::info_span!(
        "idempotency",
        key = tracing::field::Empty,
        outcome = tracing::field::Empty
    )
}

/// Reports a request's outcome: recorded in `span` (when it is the request's) and counted.
pub(crate) fn outcome(outcome: Outcome, span: Option<&Span>) {
    if let Some(span) = span {
        span.record("outcome", outcome.as_str());
    }
    #[cfg(feature = "metrics")]
    match outcome.reason() {
        Some(reason) => metrics::counter!(
            crate::metrics::REQUESTS,
            "outcome" => outcome.as_str(),
            "reason" => reason.as_str()
        )
        .increment(1),
        None => {
            metrics::counter!(crate::metrics::REQUESTS, "outcome" => outcome.as_str()).increment(1)
        }
    }
}

/// A store operation, as the store-latency histogram labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreOp {
    Begin,
    Get,
    Complete,
    Release,
    Renew,
    Wait,
}

impl StoreOp {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Begin => "begin",
            Self::Get => "get",
            Self::Complete => "complete",
            Self::Release => "release",
            Self::Renew => "renew",
            Self::Wait => "wait",
        }
    }
}

/// When a store call started; a zero-sized nothing without the feature `metrics`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started {
    #[cfg(feature = "metrics")]
    at: std::time::Instant,
}

impl Started {
    #[inline]
    pub(crate) fn now() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            at: std::time::Instant::now(),
        }
    }

    /// Reports the store call `op` that started at `self` and ended with `result`.
    #[inline]
    pub(crate) fn finished<T>(self, op: StoreOp, result: &Result<T, StoreError>) {
        #[cfg(feature = "metrics")]
        {
            let result = match result {
                Ok(_) => "ok",
                Err(e) => error_label(e.kind()),
            };
            metrics::histogram!(
                crate::metrics::STORE_DURATION,
                "operation" => op.as_str(),
                "result" => result
            )
            .record(self.at.elapsed());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (op, result);
    }
}

#[cfg(feature = "metrics")]
fn error_label(kind: StoreErrorKind) -> &'static str {
    match kind {
        StoreErrorKind::Timeout => "timeout",
        StoreErrorKind::Unavailable => "unavailable",
        StoreErrorKind::NotOwner => "not_owner",
        StoreErrorKind::Full => "full",
        StoreErrorKind::Corrupt => "corrupt",
        _ => "other",
    }
}

/// A handler running detached: counted in the gauge while this lives.
#[derive(Debug)]
pub(crate) struct Detached(());

impl Detached {
    pub(crate) fn start() -> Self {
        #[cfg(feature = "metrics")]
        metrics::gauge!(crate::metrics::DETACHED).increment(1.0);
        Self(())
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        metrics::gauge!(crate::metrics::DETACHED).decrement(1.0);
    }
}

/// A background re-send of `op` (`complete` or `release`).
pub(crate) fn resend(op: StoreOp) {
    #[cfg(feature = "metrics")]
    metrics::counter!(crate::metrics::RESENDS, "operation" => op.as_str()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = op;
}

/// The store refused a record: another owner holds the key.
pub(crate) fn refused_record() {
    #[cfg(feature = "metrics")]
    metrics::counter!(crate::metrics::REFUSED_RECORDS).increment(1);
}
