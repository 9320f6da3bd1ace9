//! The answers the layer gives itself: RFC 9457 `application/problem+json` responses.
//!
//! Each problem has a stable `type` URI pointing at its section below. The whole response can be
//! replaced with [`IdempotencyLayer::problem_response`](crate::IdempotencyLayer::problem_response);
//! either way the response carries the [`Outcome`](crate::Outcome) extension.
//!
//! ```json
//! {"type":"https://docs.rs/tower-idempotency/latest/tower_idempotency/problem/index.html#in-progress",
//!  "title":"Request in progress","status":409,
//!  "detail":"a request with this idempotency key is still being processed; retry later"}
//! ```
//!
//! # Missing key
//! `400`: the layer is configured to [require](crate::IdempotencyLayer::require_key) a key and
//! the request has none. Nothing ran.
//!
//! # Invalid key
//! `400`: the key header is repeated, empty, too long, not printable ASCII, or a malformed
//! sf-string. Nothing ran.
//!
//! # Body too large
//! `413`: the request body is over [the limit](crate::IdempotencyLayer::max_request_body) the
//! layer buffers to fingerprint it. Nothing was claimed and nothing ran.
//!
//! # Unreadable body
//! `400`: the request body failed while the layer read it. Nothing was claimed and nothing ran.
//!
//! # In progress
//! `409` with `Retry-After`: another request with the same key (and the same fingerprint) is
//! still running. Retry after the given time to get its response.
//!
//! # Mismatch
//! `422` (configurable with [`mismatch_status`](crate::IdempotencyLayer::mismatch_status)): the
//! key was used before for a different request (method, path, query, content type or body).
//! Nothing ran. Use a new key for a new request.
//!
//! # Response not stored
//! `409`: the request with this key completed, but its response was over
//! [the cap](crate::IdempotencyLayer::max_response_body) and was streamed to the first client
//! without being kept. The operation is done and will not run again; its response cannot be
//! replayed. No `Retry-After`: retrying cannot change the answer.
//!
//! # Store unavailable
//! `503` with `Retry-After`: the store failed or timed out, so the layer cannot tell whether the
//! request already ran. It fails closed and runs nothing (see
//! [`fail_open`](crate::IdempotencyLayer::fail_open)).
//!
//! # Shutting down
//! `503` with `Retry-After`: the runtime shut down while the request ran detached. It keeps its
//! claim until the lease runs out; nothing partial is recorded.

use std::fmt::{self, Write as _};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::key::KeyError;

const TYPE_BASE: &str =
    "https://docs.rs/tower-idempotency/latest/tower_idempotency/problem/index.html#";

/// What the layer is answering for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// A key is required and the request has none.
    MissingKey,
    /// The key header is invalid.
    InvalidKey(KeyError),
    /// The request body is over the fingerprinting limit.
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request body failed while it was read.
    UnreadableBody,
    /// Another request with the key is still running.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
    /// The key's request completed but its response was not kept.
    ResponseNotStored,
    /// The store failed; the layer failed closed.
    StoreUnavailable,
    /// The runtime shut down while the request ran.
    ShuttingDown,
}

impl ProblemKind {
    fn slug(self) -> &'static str {
        match self {
            Self::MissingKey => "missing-key",
            Self::InvalidKey(_) => "invalid-key",
            Self::BodyTooLarge { .. } => "body-too-large",
            Self::UnreadableBody => "unreadable-body",
            Self::InProgress => "in-progress",
            Self::Mismatch => "mismatch",
            Self::ResponseNotStored => "response-not-stored",
            Self::StoreUnavailable => "store-unavailable",
            Self::ShuttingDown => "shutting-down",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::MissingKey => "Idempotency key required",
            Self::InvalidKey(_) => "Invalid idempotency key",
            Self::BodyTooLarge { .. } => "Request body too large",
            Self::UnreadableBody => "Request body could not be read",
            Self::InProgress => "Request in progress",
            Self::Mismatch => "Idempotency key reused for a different request",
            Self::ResponseNotStored => "Response not stored",
            Self::StoreUnavailable => "Idempotency store unavailable",
            Self::ShuttingDown => "Shutting down",
        }
    }
}

/// A problem the layer answers, before it becomes a response.
///
/// Hand it to [`to_response`](Self::to_response) for the default RFC 9457 response, or build
/// your own in a hook set with
/// [`IdempotencyLayer::problem_response`](crate::IdempotencyLayer::problem_response).
#[derive(Debug, Clone)]
pub struct Problem {
    kind: ProblemKind,
    status: StatusCode,
    retry_after: Option<Duration>,
}

impl Problem {
    pub(crate) fn new(kind: ProblemKind, mismatch: StatusCode, retry_after: Duration) -> Self {
        let (status, retry_after) = match kind {
            ProblemKind::MissingKey | ProblemKind::InvalidKey(_) | ProblemKind::UnreadableBody => {
                (StatusCode::BAD_REQUEST, None)
            }
            ProblemKind::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, None),
            ProblemKind::InProgress => (StatusCode::CONFLICT, Some(retry_after)),
            ProblemKind::Mismatch => (mismatch, None),
            ProblemKind::ResponseNotStored => (StatusCode::CONFLICT, None),
            ProblemKind::StoreUnavailable | ProblemKind::ShuttingDown => {
                (StatusCode::SERVICE_UNAVAILABLE, Some(retry_after))
            }
        };
        Self {
            kind,
            status,
            retry_after,
        }
    }

    /// What happened.
    pub fn kind(&self) -> ProblemKind {
        self.kind
    }

    /// The status the layer answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable `type` URI.
    pub fn type_uri(&self) -> String {
        format!("{TYPE_BASE}{}", self.kind.slug())
    }

    /// A short, human-readable summary that does not change between occurrences.
    pub fn title(&self) -> &'static str {
        self.kind.title()
    }

    /// What happened in this occurrence.
    pub fn detail(&self) -> String {
        match self.kind {
            ProblemKind::MissingKey => "this operation requires an Idempotency-Key header".into(),
            ProblemKind::InvalidKey(e) => e.to_string(),
            ProblemKind::BodyTooLarge { limit } => {
                format!("the request body is larger than {limit} bytes")
            }
            ProblemKind::UnreadableBody => "the request body could not be read".into(),
            ProblemKind::InProgress => {
                "a request with this idempotency key is still being processed; retry later".into()
            }
            ProblemKind::Mismatch => {
                "this idempotency key was used for a different request; use a new key".into()
            }
            ProblemKind::ResponseNotStored => {
                "the request with this idempotency key completed, but its response was too large \
                 to keep and cannot be replayed"
                    .into()
            }
            ProblemKind::StoreUnavailable => {
                "the idempotency store is unavailable; the request was not processed".into()
            }
            ProblemKind::ShuttingDown => {
                "the server is shutting down; the request's outcome is unknown".into()
            }
        }
    }

    /// When the client may retry, for the `Retry-After` header.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The default response: `application/problem+json` with `type`, `title`, `status` and
    /// `detail`, and `Retry-After` in whole seconds (rounded up) where it applies.
    pub fn to_response(&self) -> Response<Bytes> {
        let mut body = String::with_capacity(256);
        body.push_str("{\"type\":");
        push_json_string(&mut body, &self.type_uri());
        body.push_str(",\"title\":");
        push_json_string(&mut body, self.title());
        let _ = write!(body, ",\"status\":{},\"detail\":", self.status.as_u16());
        push_json_string(&mut body, &self.detail());
        body.push('}');
        let mut res = Response::new(Bytes::from(body));
        *res.status_mut() = self.status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        res
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.title(), self.status)
    }
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kind: ProblemKind) -> Problem {
        Problem::new(
            kind,
            StatusCode::UNPROCESSABLE_ENTITY,
            Duration::from_millis(1500),
        )
    }

    #[test]
    fn in_progress_is_409_with_retry_after() {
        let res = problem(ProblemKind::InProgress).to_response();
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert_eq!(res.headers()["retry-after"], "2");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let body = std::str::from_utf8(res.body()).unwrap();
        assert!(body.contains("\"status\":409"), "{body}");
        assert!(body.contains("#in-progress\""), "{body}");
    }

    #[test]
    fn statuses() {
        let cases = [
            (ProblemKind::MissingKey, 400),
            (ProblemKind::InvalidKey(KeyError::Empty), 400),
            (ProblemKind::BodyTooLarge { limit: 1 }, 413),
            (ProblemKind::UnreadableBody, 400),
            (ProblemKind::Mismatch, 422),
            (ProblemKind::ResponseNotStored, 409),
            (ProblemKind::StoreUnavailable, 503),
            (ProblemKind::ShuttingDown, 503),
        ];
        for (kind, status) in cases {
            let res = problem(kind).to_response();
            assert_eq!(res.status().as_u16(), status, "{kind:?}");
            assert_eq!(res.headers().contains_key("retry-after"), status == 503);
        }
    }

    #[test]
    fn json_escapes() {
        let mut s = String::new();
        push_json_string(&mut s, "a\"b\\c\n");
        assert_eq!(s, r#""a\"b\\c\u000a""#);
    }
}
