//! §2.2 The key header: both spellings, validation, the missing-key policy, a custom header
//! name. Every rejection is a `400` problem, runs nothing and claims nothing.

mod common;

use common::{Counter, Probe, app, assert_problem, post, request, send};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use tower_idempotency::store::MemoryStore;
use tower_idempotency::{IdempotencyLayer, Outcome, RejectReason};

fn with_key(value: &[u8]) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = request(Method::POST, "/orders", None, "{}");
    req.headers_mut()
        .insert("idempotency-key", HeaderValue::from_bytes(value).unwrap());
    req
}

#[tokio::test]
async fn bare_token_and_sf_string_spell_the_same_key() {
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(MemoryStore::new()), &counter);

    let first = send(&mut svc, with_key(b"8e03978e-40d5")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.outcome, Some(Outcome::Recorded));
    for spelling in [
        &b"\"8e03978e-40d5\""[..],
        b"  8e03978e-40d5\t",
        b" \"8e03978e-40d5\" ",
    ] {
        let again = send(&mut svc, with_key(spelling)).await;
        assert_eq!(again.outcome, Some(Outcome::Replayed), "{spelling:?}");
        assert_eq!(again.status, StatusCode::CREATED);
        assert_eq!(again.body, first.body);
    }
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn sf_string_escapes_are_unescaped() {
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(MemoryStore::new()), &counter);

    let first = send(&mut svc, with_key(br#""a\"b\\c""#)).await;
    assert_eq!(first.outcome, Some(Outcome::Recorded));
    // The unescaped key, sent bare, is the same key.
    let bare = send(&mut svc, with_key(br#"a"b\c"#)).await;
    assert_eq!(bare.outcome, Some(Outcome::Replayed));
    assert_eq!(bare.body, first.body);
    // The escaped text sent bare is a different key.
    let other = send(&mut svc, with_key(br#"a\"b\\c"#)).await;
    assert_eq!(other.outcome, Some(Outcome::Recorded));
    assert_eq!(other.text(), "execution 2: {}");
    assert_eq!(counter.get(), 2);
}

#[tokio::test]
async fn invalid_keys_are_400_and_run_nothing() {
    let store = Probe::new(MemoryStore::new());
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(store.clone()), &counter);

    let long = vec![b'k'; 256];
    let cases: [(&str, &[u8], &str); 12] = [
        ("empty", b"", "empty"),
        ("blank", b"   ", "empty"),
        ("empty sf-string", b"\"\"", "empty"),
        ("too long", &long, "longer than 255"),
        ("non-ASCII", "café".as_bytes(), "printable ASCII"),
        ("tab inside", b"a\tb", "printable ASCII"),
        ("unterminated sf-string", b"\"abc", "structured-field"),
        (
            "sf-string with parameters",
            b"\"abc\";p=1",
            "structured-field",
        ),
        ("bad escape", br#""a\nb""#, "structured-field"),
        ("two key lines folded by a proxy", b"k1, k2", "list"),
        ("a bare list", b"k1,k2", "list"),
        ("a bare key with parameters", b"k;a=1", "parameters"),
    ];
    for (what, value, detail) in cases {
        let reply = send(&mut svc, with_key(value)).await;
        let json = assert_problem(&reply, 400, "invalid-key");
        assert_eq!(json["title"], "Invalid idempotency key", "{what}");
        assert!(
            json["detail"].as_str().unwrap().contains(detail),
            "{what}: {json}"
        );
        assert_eq!(
            reply.outcome,
            Some(Outcome::Rejected(RejectReason::InvalidKey)),
            "{what}"
        );
        assert!(!reply.headers.contains_key("retry-after"), "{what}");
    }
    assert_eq!(counter.get(), 0);
    assert_eq!(store.total_calls(), 0);
}

#[tokio::test]
async fn a_repeated_key_header_is_400() {
    let store = Probe::new(MemoryStore::new());
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(store.clone()), &counter);

    let mut req = post("a", "{}");
    req.headers_mut()
        .append("idempotency-key", HeaderValue::from_static("a"));
    let reply = send(&mut svc, req).await;
    let json = assert_problem(&reply, 400, "invalid-key");
    assert!(
        json["detail"].as_str().unwrap().contains("repeated"),
        "{json}"
    );
    assert_eq!(
        reply.outcome,
        Some(Outcome::Rejected(RejectReason::InvalidKey))
    );
    assert_eq!(counter.get(), 0);
    assert_eq!(store.total_calls(), 0);
}

#[tokio::test]
async fn a_comma_or_semicolon_inside_an_sf_string_is_part_of_the_key() {
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(MemoryStore::new()), &counter);

    let first = send(&mut svc, with_key(b"\"k1, k2;a=1\"")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = send(&mut svc, with_key(b"\"k1, k2;a=1\"")).await;
    assert_eq!(again.outcome, Some(Outcome::Replayed));
    assert_eq!(again.body, first.body);
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn the_longest_key_is_accepted_and_the_maximum_is_configurable() {
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(MemoryStore::new()), &counter);
    let reply = send(&mut svc, with_key(&[b'k'; 255])).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.outcome, Some(Outcome::Recorded));
    assert_eq!(counter.get(), 1);

    let counter = Counter::new();
    let layer = IdempotencyLayer::new(MemoryStore::new()).max_key_len(8);
    let mut svc = app(layer, &counter);
    let reply = send(&mut svc, with_key(b"123456789")).await;
    let json = assert_problem(&reply, 400, "invalid-key");
    assert!(
        json["detail"].as_str().unwrap().contains("longer than 8"),
        "{json}"
    );
    // The limit counts the key, not the quotes around it.
    let reply = send(&mut svc, with_key(b"\"12345678\"")).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.outcome, Some(Outcome::Recorded));
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn a_missing_key_passes_through_unprotected_by_default() {
    let store = Probe::new(MemoryStore::new());
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(store.clone()), &counter);

    for n in 1..=2 {
        let reply = send(&mut svc, request(Method::POST, "/orders", None, "{}")).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.text(), format!("execution {n}: {{}}"));
        assert_eq!(reply.outcome, None);
        assert!(!reply.is_replay());
    }
    assert_eq!(counter.get(), 2);
    assert_eq!(store.total_calls(), 0);
}

#[tokio::test]
async fn a_missing_key_is_400_when_required() {
    let store = Probe::new(MemoryStore::new());
    let counter = Counter::new();
    let mut svc = app(
        IdempotencyLayer::new(store.clone()).require_key(true),
        &counter,
    );

    let reply = send(&mut svc, request(Method::POST, "/orders", None, "{}")).await;
    let json = assert_problem(&reply, 400, "missing-key");
    assert_eq!(json["title"], "Idempotency key required");
    assert_eq!(
        reply.outcome,
        Some(Outcome::Rejected(RejectReason::MissingKey))
    );
    assert_eq!(counter.get(), 0);
    assert_eq!(store.total_calls(), 0);

    // With a key the same layer runs the request.
    let reply = send(&mut svc, post("k", "{}")).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn a_custom_header_name_carries_the_key() {
    let counter = Counter::new();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .header_name(HeaderName::from_static("x-request-key"));
    let mut svc = app(layer, &counter);

    let keyed = || {
        let mut req = request(Method::POST, "/orders", None, "{}");
        req.headers_mut()
            .insert("x-request-key", HeaderValue::from_static("\"k1\""));
        req
    };
    let first = send(&mut svc, keyed()).await;
    let again = send(&mut svc, keyed()).await;
    assert_eq!(first.outcome, Some(Outcome::Recorded));
    assert_eq!(again.outcome, Some(Outcome::Replayed));
    assert_eq!(again.body, first.body);
    assert_eq!(counter.get(), 1);

    // `Idempotency-Key` is now an ordinary header: the request is not protected.
    let reply = send(&mut svc, post("k1", "{}")).await;
    assert_eq!(reply.outcome, None);
    assert_eq!(reply.text(), "execution 2: {}");
    // And the custom header is validated like the default one.
    let mut req = request(Method::POST, "/orders", None, "{}");
    req.headers_mut()
        .insert("x-request-key", HeaderValue::from_static(""));
    assert_problem(&send(&mut svc, req).await, 400, "invalid-key");
    assert_eq!(counter.get(), 2);
}
