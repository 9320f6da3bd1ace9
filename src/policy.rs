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
//! A handler overrides the default for one response by putting a [`Disposition`] into the
//! response's extensions:
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

use http::{HeaderName, Method, StatusCode, header};

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

    /// The `grpc-status` in `headers` (the head of a trailers-only response, or the trailers),
    /// classified; `None` when there is none.
    pub(crate) fn from_grpc_headers(headers: &http::HeaderMap) -> Option<Self> {
        crate::grpc::status(headers).map(Self::for_grpc_status)
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
        assert_eq!(Disposition::from_grpc_headers(&h), None);
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(
            Disposition::from_grpc_headers(&h),
            Some(Disposition::Release)
        );
        h.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(Disposition::from_grpc_headers(&h), None);
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
