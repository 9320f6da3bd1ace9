//! Which answers the client layer retries, and how long it waits before the next attempt.
//!
//! See the [module docs](super#what-is-retried) for the table. This file holds the HTTP
//! decisions, the reading of `Retry-After` and of a problem's `type`, and the delay;
//! [`grpc`](super::grpc) holds the gRPC ones.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Response, StatusCode, header};
use tower::util::rng::Rng;

use crate::problem::TYPE_BASE;

/// What to do with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand it to the caller.
    Final,
    /// Send the request again, not before `after` when the answer said so.
    Retry { after: Option<Duration> },
}

/// The problem `type`s of the server layer whose answers no retry can change.
const FINAL_PROBLEMS: [&str; 2] = ["response-not-stored", "result-expired"];

/// The most of a `problem+json` body read to find its `type`.
pub(crate) const MAX_PROBLEM_BODY: usize = 16 * 1024;

/// The verdict on a response's head.
pub(crate) fn classify<B>(res: &Response<B>) -> Verdict {
    if crate::grpc::is_grpc(res.headers()) && res.status() == StatusCode::OK {
        return super::grpc::classify(res.headers());
    }
    classify_status(res.status(), res.headers())
}

/// The HTTP decisions: `408`, `429`, `5xx` but `501`, and `409` with `Retry-After`.
pub(crate) fn classify_status(status: StatusCode, headers: &HeaderMap) -> Verdict {
    let after = retry_after(headers, SystemTime::now());
    let retry = match status {
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => true,
        // A plain 409 is the application's conflict; the layer's "in progress" carries
        // Retry-After.
        StatusCode::CONFLICT => after.is_some(),
        StatusCode::NOT_IMPLEMENTED => false,
        s => s.is_server_error(),
    };
    if retry {
        Verdict::Retry { after }
    } else {
        Verdict::Final
    }
}

/// Whether a response is `application/problem+json`, whose `type` is read before a retry.
pub(crate) fn is_problem(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/problem+json"))
}

/// Whether a problem body names one of the server layer's final problems.
pub(crate) fn is_final_problem(body: &[u8]) -> bool {
    let Ok(problem) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let Some(kind) = problem.get("type").and_then(serde_json::Value::as_str) else {
        return false;
    };
    kind.strip_prefix(TYPE_BASE)
        .is_some_and(|slug| FINAL_PROBLEMS.contains(&slug))
}

/// `Retry-After` (or gRPC's `retry-after` metadata, the same header): delay-seconds or an
/// HTTP date, as a duration from `now`.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or_default())
}

/// The wait before the next attempt: the backoff's, or the answer's `Retry-After` (capped)
/// when that is longer.
pub(crate) fn delay(backoff: Duration, after: Option<Duration>, cap: Duration) -> Duration {
    after.map_or(backoff, |after| backoff.max(after.min(cap)))
}

/// The jitter source for tower's exponential backoff: every draw from the OS.
///
/// tower's `HasherRng` is cloned into each backoff with its state, so every request of one
/// layer would draw the same jitter and retry in lockstep, which is what jitter is meant to
/// prevent.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OsJitter;

impl Rng for OsJitter {
    fn next_u64(&mut self) -> u64 {
        getrandom::u64().unwrap_or_else(|_| {
            // Without an OS random source: the std hasher's random keys over a counter.
            use std::hash::{BuildHasher, RandomState};
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            RandomState::new().hash_one(N.fetch_add(1, Ordering::Relaxed))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn statuses() {
        let none = HeaderMap::new();
        let after = headers(&[("retry-after", "2")]);
        let retry = |after| Verdict::Retry { after };
        for s in [408, 429, 500, 502, 503, 504] {
            let s = StatusCode::from_u16(s).unwrap();
            assert_eq!(classify_status(s, &none), retry(None), "{s}");
            assert_eq!(
                classify_status(s, &after),
                retry(Some(Duration::from_secs(2))),
                "{s}"
            );
        }
        assert_eq!(
            classify_status(StatusCode::CONFLICT, &after),
            retry(Some(Duration::from_secs(2)))
        );
        for s in [
            200, 201, 204, 301, 400, 401, 403, 404, 409, 410, 413, 422, 501,
        ] {
            let s = StatusCode::from_u16(s).unwrap();
            assert_eq!(classify_status(s, &none), Verdict::Final, "{s}");
        }
        for s in [400, 403, 413, 422] {
            let s = StatusCode::from_u16(s).unwrap();
            assert_eq!(classify_status(s, &after), Verdict::Final, "{s}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let h = |v: &'static str| headers(&[("retry-after", v)]);
        assert_eq!(retry_after(&h("7"), now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&h(" 0 "), now), Some(Duration::ZERO));
        // 2001-09-09T01:46:40Z is `now`.
        assert_eq!(
            retry_after(&h("Sun, 09 Sep 2001 01:46:50 GMT"), now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            retry_after(&h("Sun, 09 Sep 2001 01:46:30 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&h("soon"), now), None);
        assert_eq!(retry_after(&h("-1"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn delays() {
        let s = Duration::from_secs;
        assert_eq!(delay(s(1), None, s(10)), s(1));
        assert_eq!(delay(s(1), Some(s(3)), s(10)), s(3));
        assert_eq!(delay(s(1), Some(s(3600)), s(10)), s(10));
        assert_eq!(delay(s(5), Some(s(3)), s(10)), s(5));
    }

    #[test]
    fn problem_types() {
        let body = |slug: &str| format!(r#"{{"type":"{TYPE_BASE}{slug}","status":409}}"#);
        assert!(is_final_problem(body("response-not-stored").as_bytes()));
        assert!(is_final_problem(body("result-expired").as_bytes()));
        assert!(!is_final_problem(body("in-progress").as_bytes()));
        assert!(!is_final_problem(body("store-unavailable").as_bytes()));
        assert!(!is_final_problem(
            br#"{"type":"https://example.com/response-not-stored"}"#
        ));
        assert!(!is_final_problem(b"not json"));
        assert!(is_problem(&headers(&[(
            "content-type",
            "application/problem+json; charset=utf-8"
        )])));
        assert!(!is_problem(&headers(&[(
            "content-type",
            "application/json"
        )])));
    }

    #[test]
    fn jitter_differs_between_draws() {
        let mut a = OsJitter;
        let mut b = a;
        assert_ne!(a.next_u64(), b.next_u64());
    }
}
