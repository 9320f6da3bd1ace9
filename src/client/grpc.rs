//! The client layer's decisions for gRPC calls, from `grpc-status`.
//!
//! A gRPC server answers `200 OK` and puts the status in `grpc-status`: in the headers of a
//! trailers-only response (every error without a message, which is how tonic answers a
//! handler's `Err(Status)`, and how the server layer answers its problems), or in the trailers
//! after the messages. The layer decides from the headers:
//!
//! | `grpc-status` | retried |
//! | --- | --- |
//! | `UNAVAILABLE` (14), `DEADLINE_EXCEEDED` (4), `INTERNAL` (13), `UNKNOWN` (2) | yes, after `retry-after` when given |
//! | `ABORTED` (10), `RESOURCE_EXHAUSTED` (8) | only with `retry-after` (the server layer's "in progress"; a rate limit) |
//! | `ALREADY_EXISTS` (6: the server layer's "response not stored"), `INVALID_ARGUMENT`, `FAILED_PRECONDITION`, every other code | no |
//! | none in the headers (it comes in the trailers, after messages) | no: the response has begun |
//!
//! A gRPC response whose HTTP status is not `200` (a proxy's `503`, say) is decided by its
//! HTTP status, as gRPC maps them.

use http::HeaderMap;
use std::time::SystemTime;

use super::policy::{Verdict, retry_after};
use crate::grpc::GRPC_STATUS;

/// The verdict on the head of a `200 OK` gRPC response.
pub(crate) fn classify(headers: &HeaderMap) -> Verdict {
    let Some(code) = headers
        .get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
    else {
        return Verdict::Final;
    };
    let after = retry_after(headers, SystemTime::now());
    let retry = match code {
        // UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE.
        2 | 4 | 13 | 14 => true,
        // RESOURCE_EXHAUSTED, ABORTED.
        8 | 10 => after.is_some(),
        _ => false,
    };
    if retry {
        Verdict::Retry { after }
    } else {
        Verdict::Final
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::Duration;

    fn status(code: u32, after: Option<u64>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(&GRPC_STATUS, HeaderValue::from(code));
        if let Some(secs) = after {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        h
    }

    #[test]
    fn codes() {
        for code in [2, 4, 13, 14] {
            assert_eq!(
                classify(&status(code, None)),
                Verdict::Retry { after: None },
                "{code}"
            );
        }
        for code in [8, 10, 14] {
            assert_eq!(
                classify(&status(code, Some(1))),
                Verdict::Retry {
                    after: Some(Duration::from_secs(1))
                },
                "{code}"
            );
        }
        for code in [0, 1, 3, 5, 6, 7, 8, 9, 10, 11, 12, 15, 16] {
            assert_eq!(classify(&status(code, None)), Verdict::Final, "{code}");
        }
        for code in [0, 3, 6, 9] {
            assert_eq!(classify(&status(code, Some(1))), Verdict::Final, "{code}");
        }
        assert_eq!(classify(&HeaderMap::new()), Verdict::Final);
    }
}
