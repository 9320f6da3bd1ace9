//! The answers the layer gives itself: RFC 9457 `application/problem+json` responses.
//!
//! Each problem has a stable `type` URI pointing at its section below. A gRPC request (its
//! `content-type` is `application/grpc` or `application/grpc+…`) gets the same problem as a
//! trailers-only gRPC status instead, which gRPC clients understand: `200 OK`, `grpc-status`,
//! `grpc-message` (the detail, percent-encoded) and `retry-after` where it applies, readable as
//! status metadata. The whole response can be
//! replaced with [`IdempotencyLayer::problem_response`](crate::IdempotencyLayer::problem_response);
//! either way the response carries the [`Outcome`] extension.
//!
//! ```json
//! {"type":"https://docs.rs/tower-idempotency/latest/tower_idempotency/problem/index.html#in-progress",
//!  "title":"Request in progress","status":409,
//!  "detail":"a request with this idempotency key is still being processed; retry later"}
//! ```
//!
//! | problem | HTTP | gRPC |
//! | --- | --- | --- |
//! | missing or invalid key, unreadable body | `400` | `INVALID_ARGUMENT` |
//! | body too large | `413` | `RESOURCE_EXHAUSTED` |
//! | in progress | `409` + `Retry-After` | `ABORTED` + `retry-after` |
//! | mismatch | `422` (configurable) | `FAILED_PRECONDITION` |
//! | response not stored | `409` | `ALREADY_EXISTS` |
//! | store unavailable | `503` + `Retry-After` | `UNAVAILABLE` + `retry-after` |
//! | missing scope | `403` | `PERMISSION_DENIED` |
//! | result expired | `409` | `ALREADY_EXISTS` |
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
//! # Missing scope
//! `403`: the layer has a [scope](crate::IdempotencyLayer::scope) function and it found no scope
//! in this request: the caller is anonymous, or the layer sits outside the authentication that
//! would set the scope. Nothing was claimed and nothing ran. Keys are never shared between
//! unscoped requests unless the layer is told so with
//! [`unscoped_requests_share_keys`](crate::IdempotencyLayer::unscoped_requests_share_keys).
//!
//! # Result expired
//! `409`: the request with this key completed long ago; its response's retention ran out, but
//! the store still remembers the key (its key retention is longer, see
//! [`MemoryStoreBuilder::key_ttl`](crate::store::MemoryStoreBuilder::key_ttl),
//! `RedisStore::with_key_ttl` and `PostgresStoreBuilder::key_ttl`). The operation is done and
//! will not run again, and its response is gone. No `Retry-After`: retrying cannot change the
//! answer. Send a new key for a new operation.
//!
//! # Store unavailable
//! `503` with `Retry-After`: the store failed or timed out, so the layer cannot tell whether the
//! request already ran. It fails closed and runs nothing (see
//! [`fail_open`](crate::IdempotencyLayer::fail_open)).

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::Body;

use crate::body::ResponseBody;
use crate::extensions::{Outcome, RejectReason};
use crate::grpc;
use crate::key::KeyError;

/// The `Retry-After` of `409` and `503` problems unless the layer sets another
/// ([`IdempotencyLayer::retry_after`](crate::IdempotencyLayer::retry_after)).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A user's replacement for the problem responses.
pub(crate) type ProblemHook = Arc<dyn Fn(&Problem) -> Response<Bytes> + Send + Sync>;

/// How a layer answers its problems: the settings it was built with and the user's hook.
#[derive(Clone)]
pub(crate) struct Problems {
    pub(crate) mismatch_status: StatusCode,
    pub(crate) retry_after: Duration,
    pub(crate) hook: Option<ProblemHook>,
}

impl Default for Problems {
    fn default() -> Self {
        Self {
            mismatch_status: StatusCode::UNPROCESSABLE_ENTITY,
            retry_after: DEFAULT_RETRY_AFTER,
            hook: None,
        }
    }
}

impl fmt::Debug for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Problems")
            .field("mismatch_status", &self.mismatch_status)
            .field("retry_after", &self.retry_after)
            .field("hook", &self.hook.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

impl Problems {
    /// The layer's response for a problem of `kind`, with its [`Outcome`].
    pub(crate) fn respond<B: Body>(
        &self,
        kind: ProblemKind,
        grpc: bool,
    ) -> Response<ResponseBody<B>> {
        let problem = Problem::configured(kind, self.mismatch_status, self.retry_after, grpc);
        let res = match &self.hook {
            Some(hook) => hook(&problem),
            None => problem.to_response(),
        };
        let mut res = res.map(|b| ResponseBody::full(b, None));
        res.extensions_mut().insert(kind.outcome());
        res
    }
}

pub(crate) const TYPE_BASE: &str =
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
    /// The layer has a scope function and it found no scope in the request.
    MissingScope,
    /// The key's request completed, and its response's retention ran out.
    ResultExpired,
}

impl ProblemKind {
    /// What the layer did, as the [`Outcome`] extension says.
    pub(crate) fn outcome(self) -> Outcome {
        match self {
            Self::InProgress => Outcome::Conflict,
            Self::Mismatch => Outcome::Mismatch,
            Self::ResponseNotStored | Self::ResultExpired => Outcome::ReplayUnavailable,
            Self::StoreUnavailable => Outcome::StoreUnavailable,
            Self::MissingScope => Outcome::Rejected(RejectReason::MissingScope),
            Self::MissingKey => Outcome::Rejected(RejectReason::MissingKey),
            Self::InvalidKey(_) => Outcome::Rejected(RejectReason::InvalidKey),
            Self::BodyTooLarge { .. } => Outcome::Rejected(RejectReason::BodyTooLarge),
            Self::UnreadableBody => Outcome::Rejected(RejectReason::UnreadableBody),
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::MissingKey => "missing-key",
            Self::InvalidKey(_) => "invalid-key",
            Self::BodyTooLarge { .. } => "body-too-large",
            Self::UnreadableBody => "unreadable-body",
            Self::InProgress => "in-progress",
            Self::MissingScope => "missing-scope",
            Self::ResultExpired => "result-expired",
            Self::Mismatch => "mismatch",
            Self::ResponseNotStored => "response-not-stored",
            Self::StoreUnavailable => "store-unavailable",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::MissingKey => "Idempotency key required",
            Self::InvalidKey(_) => "Invalid idempotency key",
            Self::BodyTooLarge { .. } => "Request body too large",
            Self::UnreadableBody => "Request body could not be read",
            Self::InProgress => "Request in progress",
            Self::MissingScope => "Idempotency scope missing",
            Self::ResultExpired => "Result expired",
            Self::Mismatch => "Idempotency key reused for a different request",
            Self::ResponseNotStored => "Response not stored",
            Self::StoreUnavailable => "Idempotency store unavailable",
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
    grpc: bool,
}

impl Problem {
    /// The problem of `kind` as a layer with the default settings answers it to an HTTP request:
    /// the status of the table above (`422` for a mismatch), `Retry-After: 1` where one applies.
    ///
    /// For unit tests of a [problem hook](crate::IdempotencyLayer::problem_response):
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_idempotency::problem::{Problem, ProblemKind};
    ///
    /// let problem = Problem::new(ProblemKind::InProgress);
    /// assert_eq!(problem.status(), StatusCode::CONFLICT);
    /// assert_eq!(problem.to_response().headers()["retry-after"], "1");
    /// assert_eq!(Problem::new(ProblemKind::InProgress).with_grpc(true).grpc_code(), 10);
    /// ```
    pub fn new(kind: ProblemKind) -> Self {
        Self::configured(
            kind,
            StatusCode::UNPROCESSABLE_ENTITY,
            DEFAULT_RETRY_AFTER,
            false,
        )
    }

    /// The same problem answered to a gRPC call (`true`) or an HTTP request (`false`).
    pub fn with_grpc(mut self, grpc: bool) -> Self {
        self.grpc = grpc;
        self
    }

    /// The same problem with another HTTP status, as
    /// [`mismatch_status`](crate::IdempotencyLayer::mismatch_status) sets for a mismatch.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The problem as a layer with these settings answers it.
    pub(crate) fn configured(
        kind: ProblemKind,
        mismatch: StatusCode,
        retry_after: Duration,
        grpc: bool,
    ) -> Self {
        let (status, retry_after) = match kind {
            ProblemKind::MissingKey | ProblemKind::InvalidKey(_) | ProblemKind::UnreadableBody => {
                (StatusCode::BAD_REQUEST, None)
            }
            ProblemKind::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, None),
            ProblemKind::InProgress => (StatusCode::CONFLICT, Some(retry_after)),
            ProblemKind::MissingScope => (StatusCode::FORBIDDEN, None),
            ProblemKind::ResultExpired => (StatusCode::CONFLICT, None),
            ProblemKind::Mismatch => (mismatch, None),
            ProblemKind::ResponseNotStored => (StatusCode::CONFLICT, None),
            ProblemKind::StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, Some(retry_after)),
        };
        Self {
            kind,
            status,
            retry_after,
            grpc,
        }
    }

    /// What happened.
    pub fn kind(&self) -> ProblemKind {
        self.kind
    }

    /// Whether the request was a gRPC call, which [`to_response`](Self::to_response) answers
    /// with a gRPC status.
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// The gRPC status code for the problem (see the [module docs](self)).
    pub fn grpc_code(&self) -> i32 {
        match self.kind {
            ProblemKind::MissingKey | ProblemKind::InvalidKey(_) | ProblemKind::UnreadableBody => 3,
            ProblemKind::BodyTooLarge { .. } => 8,
            ProblemKind::InProgress => 10,
            ProblemKind::MissingScope => 7,
            ProblemKind::ResultExpired => 6,
            ProblemKind::Mismatch => 9,
            ProblemKind::ResponseNotStored => 6,
            ProblemKind::StoreUnavailable => 14,
        }
    }

    /// The HTTP status of the problem+json answer.
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
            ProblemKind::ResultExpired => {
                "the request with this idempotency key completed, and its stored response has \
                 expired; it will not run again"
                    .into()
            }
            ProblemKind::MissingScope => {
                "this request carries no scope (no authenticated caller) for its idempotency key"
                    .into()
            }
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
        }
    }

    /// When the client may retry, for the `Retry-After` header.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The default response: a gRPC status for a gRPC request, problem+json otherwise.
    pub fn to_response(&self) -> Response<Bytes> {
        if self.grpc {
            self.to_grpc_response()
        } else {
            self.to_json_response()
        }
    }

    /// A trailers-only gRPC response: `200 OK`, `content-type: application/grpc`,
    /// `grpc-status`, the percent-encoded detail as `grpc-message`, and `retry-after` in whole
    /// seconds where it applies. The body is empty.
    pub fn to_grpc_response(&self) -> Response<Bytes> {
        grpc::trailers_only(self.grpc_code(), &self.detail(), self.retry_after_secs())
    }

    fn retry_after_secs(&self) -> Option<u64> {
        let after = self.retry_after?;
        Some((after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1))
    }

    /// An `application/problem+json` response with `type`, `title`, `status` and `detail`, and
    /// `Retry-After` in whole seconds (rounded up) where it applies.
    pub fn to_json_response(&self) -> Response<Bytes> {
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
        if let Some(secs) = self.retry_after_secs() {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
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
        Problem::configured(
            kind,
            StatusCode::UNPROCESSABLE_ENTITY,
            Duration::from_millis(1500),
            false,
        )
    }

    #[test]
    fn grpc_requests_get_trailers_only_statuses() {
        let p = Problem::configured(
            ProblemKind::InProgress,
            StatusCode::UNPROCESSABLE_ENTITY,
            Duration::from_secs(1),
            true,
        );
        let res = p.to_response();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "application/grpc");
        assert_eq!(res.headers()["grpc-status"], "10");
        assert_eq!(res.headers()["retry-after"], "1");
        assert!(
            res.headers()["grpc-message"]
                .to_str()
                .unwrap()
                .contains("still being processed")
        );
        assert!(res.body().is_empty());
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
