//! gRPC: detecting a gRPC call, reading a `grpc-status`, and answering with a trailers-only
//! status, so that the layer answers gRPC calls in gRPC.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, header};

/// The `grpc-status` header (or trailer).
pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Whether a request is a gRPC call: `content-type: application/grpc`, bare or with a `+format`
/// or parameters (not `application/grpc-web`).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
        .and_then(|ct| ct.strip_prefix(b"application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
}

/// The numeric `grpc-status` in `headers` (a response head or its trailers), if any.
pub(crate) fn status(headers: &HeaderMap) -> Option<i32> {
    headers.get(&GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

/// A trailers-only gRPC response: HTTP 200, `grpc-status`, `grpc-message` (percent-encoded) and
/// an optional `retry-after` in seconds, all in the head, and no body.
pub(crate) fn trailers_only(code: i32, message: &str, retry_after: Option<u64>) -> Response<Bytes> {
    let mut res = Response::new(Bytes::new());
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(GRPC_STATUS, HeaderValue::from(code));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", message);
    }
    if let Some(secs) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

/// The gRPC spec's percent-encoding of `grpc-message`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_grpc() {
        let ct = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("content-type", HeaderValue::from_static(v));
            is_grpc(&h)
        };
        assert!(ct("application/grpc"));
        assert!(ct("application/grpc+proto"));
        assert!(!ct("application/grpc-web"));
        assert!(!ct("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn reads_status() {
        let mut h = HeaderMap::new();
        assert_eq!(status(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(status(&h), Some(14));
        h.insert("grpc-status", HeaderValue::from_static("x"));
        assert_eq!(status(&h), None);
    }

    #[test]
    fn trailers_only_answers() {
        let res = trailers_only(10, "50% done", Some(2));
        assert_eq!(res.status(), http::StatusCode::OK);
        assert_eq!(res.headers()["grpc-status"], "10");
        assert_eq!(res.headers()["grpc-message"], "50%25 done");
        assert_eq!(res.headers()["retry-after"], "2");
        assert!(res.body().is_empty());
        assert_eq!(percent_encode("50% \u{e9}"), "50%25 %C3%A9");
    }
}
