//! Records: every kind of record comes back byte for byte.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::{Check, LEASE, fingerprint, fresh_key, sample_record};
use crate::record::{Record, StoredResponse};
use crate::store::{Begin, OwnerToken, Store};

/// Records without a fingerprint, "completed, response not stored" records with and without
/// one, and the small record of a key whose response expired come back byte for byte.
pub(super) async fn records_round_trip<S: Store>(store: &S) {
    let c = Check::new("records_round_trip", store);
    let fp = fingerprint("a");
    let records = [
        (
            "a record without fingerprint",
            sample_record(None, b"no fingerprint"),
        ),
        ("a not-stored record", Record::not_stored(Some(fp))),
        (
            "a not-stored record without fingerprint",
            Record::not_stored(None),
        ),
        (
            "a response-expired record",
            Record::response_expired(Some(fp)),
        ),
    ];
    for (what, record) in records {
        let (key, a) = (fresh_key(), OwnerToken::generate());
        let claimed = c.begin(&key, record.fingerprint(), a, LEASE).await;
        c.expect_eq(&format!("begin for {what}"), claimed, Begin::New);
        c.complete(&key, a, &record).await;
        match c.begin(&key, None, OwnerToken::generate(), LEASE).await {
            Begin::Completed(got) => c.same_record(&format!("begin after {what}"), &got, &record),
            other => c.fail(format_args!(
                "begin after {what}: expected Completed, got {other:?}"
            )),
        }
        c.expect_record(&format!("get of {what}"), &key, &record)
            .await;
    }
}

/// A record with a 1 MiB body, repeated headers and trailers comes back byte for byte.
pub(super) async fn large_record_round_trips<S: Store>(store: &S) {
    let c = Check::new("large_record_round_trips", store);
    let body: Bytes = (0..1024 * 1024)
        .map(|i: u32| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.append("x-part", HeaderValue::from_static("one"));
    headers.append("x-part", HeaderValue::from_static("two"));
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("grpc-message", HeaderValue::from_static("ok"));
    let response = StoredResponse::new(StatusCode::OK, headers, body.clone(), Some(trailers));
    let fp = fingerprint("large");
    let record = Record::new(Some(fp), &response);

    let (key, a) = (fresh_key(), OwnerToken::generate());
    c.expect_eq(
        "begin",
        c.begin(&key, Some(&fp), a, LEASE).await,
        Begin::New,
    );
    c.complete(&key, a, &record).await;
    let got = match c
        .begin(&key, Some(&fp), OwnerToken::generate(), LEASE)
        .await
    {
        Begin::Completed(got) => got,
        other => c.fail(format_args!(
            "begin after complete: expected Completed, got {other:?}"
        )),
    };
    c.same_record("begin after complete", &got, &record);
    let replay = match got.response() {
        Ok(Some(replay)) => replay,
        other => c.fail(format_args!("decoding the replay: {other:?}")),
    };
    if replay.body != body {
        c.fail(format_args!(
            "the replayed body differs from the stored one"
        ));
    }
    c.expect_eq("replayed headers", replay.headers, response.headers);
    c.expect_eq("replayed trailers", replay.trailers, response.trailers);
    c.expect_record("get after complete", &key, &record).await;
}
