//! Which responses are kept for replay, and which headers a replay leaves out.
//!
//! After the inner service answers, the layer decides:
//!
//! - **record** (the default for every status below 500 except `408` and `429`): the response
//!   is stored, checked against the owner token, and only then sent, so that any retry from
//!   then on gets the replay;
//! - **release** (`5xx`, `408`, `429`, an inner `Err`, a panic): the claim is dropped so that a
//!   retry runs the request again.
//!
//! gRPC answers errors with `200 OK` and a `grpc-status`, in the trailers or, for an error
//! without a message body, in the headers. Where a response has one, it decides instead of the
//! HTTP status: codes a client should retry (`CANCELLED`, `UNKNOWN`, `DEADLINE_EXCEEDED`,
//! `RESOURCE_EXHAUSTED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`, the ones whose
//! HTTP counterparts are `5xx`, `408` and `429`) release the claim; every other code, `OK`
//! included, is recorded and replayed with its `grpc-message`.
//!
//! A layer-wide [`RecordPolicy`] (set with
//! [`IdempotencyLayer::record_policy`](crate::IdempotencyLayer::record_policy)) replaces these
//! defaults ([`DefaultRecordPolicy`]) for every response; a handler overrides the policy for one
//! response by putting a [`Disposition`] into the response's extensions:
//!
//! ```
//! use http::{Response, StatusCode};
//! use tower_idempotency::Disposition;
//!
//! // A 503 that must not run twice: the payment went through, the receipt service did not.
//! let mut res = Response::new(String::from("charged; receipt pending"));
//! *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
//! res.extensions_mut().insert(Disposition::Record);
//! ```

use http::{HeaderMap, HeaderName, Method, StatusCode, header};

/// What the layer does with a response; put it in the response's extensions to override the
/// default for that response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Disposition {
    /// Store the response and replay it to every retry.
    Record,
    /// Release the claim: the next retry runs the request again.
    Release,
}

impl Disposition {
    /// The default for a gRPC status code: release the codes a client should retry, record
    /// the others (see the [module docs](self)).
    pub fn for_grpc_status(code: i32) -> Self {
        match code {
            // CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNIMPLEMENTED,
            // INTERNAL, UNAVAILABLE, DATA_LOSS.
            1 | 2 | 4 | 8 | 12 | 13 | 14 | 15 => Self::Release,
            _ => Self::Record,
        }
    }

    /// The default for a status: release `5xx`, `408` and `429`, record everything else.
    pub fn for_status(status: StatusCode) -> Self {
        if status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            Self::Release
        } else {
            Self::Record
        }
    }
}

/// What a [`RecordPolicy`] sees of a response: its status, its headers and its gRPC status.
///
/// A gRPC status may come in the head (a trailers-only answer) or in the trailers. The policy
/// is asked when the head arrives, with the head's `grpc-status`; when it says
/// [`Record`](Disposition::Record) and the trailers then carry a `grpc-status`, it is asked
/// again with that one, before anything is stored.
#[derive(Debug, Clone, Copy)]
pub struct ResponseHead<'a> {
    status: StatusCode,
    headers: &'a HeaderMap,
    grpc_status: Option<i32>,
}

impl<'a> ResponseHead<'a> {
    /// A response head with `status` and `headers`, and the gRPC status found in `headers`.
    ///
    /// For unit tests of a policy; the layer makes these itself.
    pub fn new(status: StatusCode, headers: &'a HeaderMap) -> Self {
        Self {
            status,
            headers,
            grpc_status: crate::grpc::status(headers),
        }
    }

    /// The same head with the gRPC status of the trailers.
    pub(crate) fn with_grpc_status(mut self, code: i32) -> Self {
        self.grpc_status = Some(code);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The `grpc-status` of the response (from its head, or from its trailers when the policy
    /// is asked the second time); `None` for a plain HTTP response.
    pub fn grpc_status(&self) -> Option<i32> {
        self.grpc_status
    }
}

/// Chooses, for every response of the inner service, whether it is recorded for replay or its
/// claim released, unless the response carries its own [`Disposition`].
///
/// Implemented for closures `Fn(&ResponseHead<'_>) -> Disposition`. A policy that refines the
/// default calls [`DefaultRecordPolicy`] for what it does not decide itself.
///
/// # Recipe: don't keep 4xx validation failures
///
/// axum's extractors answer a malformed body with `400` (bad JSON syntax), `415` (no JSON
/// content type) or `422` (JSON of the wrong shape), before the handler runs. By default these
/// are recorded, so a client that fixes its body and retries with the same key gets a `422`
/// mismatch problem. Stripe does not keep such failures; to do the same, release them:
///
/// ```
/// use http::StatusCode;
/// use tower_idempotency::policy::{DefaultRecordPolicy, RecordPolicy, ResponseHead};
/// use tower_idempotency::{Disposition, IdempotencyLayer, store::MemoryStore};
///
/// let layer = IdempotencyLayer::new(MemoryStore::new()).record_policy(|head: &ResponseHead<'_>| {
///     match head.status() {
///         StatusCode::BAD_REQUEST
///         | StatusCode::UNSUPPORTED_MEDIA_TYPE
///         | StatusCode::UNPROCESSABLE_ENTITY => Disposition::Release,
///         _ => DefaultRecordPolicy.disposition(head),
///     }
/// });
/// # let _ = layer;
/// ```
///
/// Only do this for answers that had no effect: a `400` the handler gives after it wrote
/// something must stay recorded (the handler can say so with a [`Disposition`]).
pub trait RecordPolicy: Send + Sync + 'static {
    /// Record or release the response with this head.
    fn disposition(&self, head: &ResponseHead<'_>) -> Disposition;
}

impl<F> RecordPolicy for F
where
    F: Fn(&ResponseHead<'_>) -> Disposition + Send + Sync + 'static,
{
    fn disposition(&self, head: &ResponseHead<'_>) -> Disposition {
        self(head)
    }
}

/// The default [`RecordPolicy`]: the gRPC status where there is one
/// ([`Disposition::for_grpc_status`]), else the HTTP status ([`Disposition::for_status`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultRecordPolicy;

impl RecordPolicy for DefaultRecordPolicy {
    fn disposition(&self, head: &ResponseHead<'_>) -> Disposition {
        match head.grpc_status() {
            Some(code) => Disposition::for_grpc_status(code),
            None => Disposition::for_status(head.status()),
        }
    }
}

/// The methods the layer protects by default: `POST` and `PATCH`.
///
/// `PUT` and `DELETE` are idempotent by definition in HTTP; add them with
/// [`IdempotencyLayer::methods`](crate::IdempotencyLayer::methods) when your handlers are not.
pub fn default_methods() -> Vec<Method> {
    vec![Method::POST, Method::PATCH]
}

/// The headers a replay never carries: hop-by-hop headers, `Set-Cookie` (a replay must not hand
/// one client's session to another request), `Date` (the replay's own is added by the server)
/// and `Content-Length` (recomputed from the stored body).
///
/// `Trailer` is kept: it is end-to-end (RFC 9110 §6.6.2), and hyper's HTTP/1.1 server sends
/// only the trailer fields it names, so a replay without it would lose its trailers.
pub fn default_skipped_headers() -> Vec<HeaderName> {
    vec![
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::SET_COOKIE,
        header::DATE,
        header::CONTENT_LENGTH,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_dispositions() {
        for code in [1, 2, 4, 8, 12, 13, 14, 15] {
            assert_eq!(
                Disposition::for_grpc_status(code),
                Disposition::Release,
                "{code}"
            );
        }
        for code in [0, 3, 5, 6, 7, 9, 10, 11, 16, 99] {
            assert_eq!(
                Disposition::for_grpc_status(code),
                Disposition::Record,
                "{code}"
            );
        }
        let mut h = http::HeaderMap::new();
        let policy = DefaultRecordPolicy;
        h.insert("grpc-status", "14".parse().unwrap());
        let head = ResponseHead::new(StatusCode::OK, &h);
        assert_eq!(policy.disposition(&head), Disposition::Release);
        h.insert("grpc-status", "x".parse().unwrap());
        let head = ResponseHead::new(StatusCode::OK, &h);
        assert_eq!(head.grpc_status(), None);
        assert_eq!(policy.disposition(&head), Disposition::Record);
    }

    #[test]
    fn the_default_policy_reads_the_grpc_status_first() {
        let mut headers = HeaderMap::new();
        let policy = DefaultRecordPolicy;
        let head = ResponseHead::new(StatusCode::OK, &headers);
        assert_eq!(policy.disposition(&head), Disposition::Record);
        assert_eq!(
            policy.disposition(&head.with_grpc_status(14)),
            Disposition::Release
        );
        let head = ResponseHead::new(StatusCode::INTERNAL_SERVER_ERROR, &headers);
        assert_eq!(policy.disposition(&head), Disposition::Release);
        headers.insert("grpc-status", "5".parse().unwrap());
        let head = ResponseHead::new(StatusCode::OK, &headers);
        assert_eq!(head.grpc_status(), Some(5));
        assert_eq!(policy.disposition(&head), Disposition::Record);
    }

    #[test]
    fn default_dispositions() {
        for (status, d) in [
            (200, Disposition::Record),
            (201, Disposition::Record),
            (302, Disposition::Record),
            (400, Disposition::Record),
            (404, Disposition::Record),
            (409, Disposition::Record),
            (422, Disposition::Record),
            (408, Disposition::Release),
            (429, Disposition::Release),
            (500, Disposition::Release),
            (503, Disposition::Release),
        ] {
            assert_eq!(
                Disposition::for_status(StatusCode::from_u16(status).unwrap()),
                d,
                "{status}"
            );
        }
    }
}
