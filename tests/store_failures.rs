//! §2.8 Store failures: the layer fails closed with `503` and runs nothing; an ambiguous `begin`
//! that landed is recognised by reading the key back, so the handler runs exactly once; opt-in
//! fail-open; a `complete` or `release` whose effect is unknown still answers the client and is
//! re-sent until it lands (or the lease is over); a corrupt record never runs the handler.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Counter, Fault, Op, Probe, app, assert_problem, entry, post, send};
use http::StatusCode;
use tokio::time::{Instant, sleep};
use tower_idempotency::record::Record;
use tower_idempotency::store::MemoryStore;
use tower_idempotency::store::{Begin, Entry, StoreErrorKind};
use tower_idempotency::{IdempotencyLayer, Outcome};

type Probed = Arc<Probe<MemoryStore>>;

fn probed() -> Probed {
    Probe::new(MemoryStore::new())
}

#[tokio::test]
async fn a_failing_begin_is_503_and_runs_nothing() {
    for kind in [
        StoreErrorKind::Unavailable,
        StoreErrorKind::Timeout,
        StoreErrorKind::Other,
        StoreErrorKind::Full,
        StoreErrorKind::NotOwner,
    ] {
        let store = probed();
        let counter = Counter::new();
        let mut svc = app(IdempotencyLayer::new(store.clone()), &counter);
        store.set(Op::Begin, Fault::Fail(kind));

        let reply = send(&mut svc, post("k", "{}")).await;
        let json = assert_problem(&reply, 503, "store-unavailable");
        assert_eq!(json["title"], "Idempotency store unavailable", "{kind:?}");
        assert_eq!(reply.header("retry-after"), Some("1"), "{kind:?}");
        assert_eq!(reply.outcome, Some(Outcome::StoreUnavailable), "{kind:?}");
        assert_eq!(counter.get(), 0, "{kind:?}");
        assert_eq!(entry(store.inner(), "k").await, None);

        // Once the store is back, the key works.
        store.clear(Op::Begin);
        let reply = send(&mut svc, post("k", "{}")).await;
        assert_eq!(reply.outcome, Some(Outcome::Recorded), "{kind:?}");
        assert_eq!(counter.get(), 1, "{kind:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_begin_is_cut_off_by_the_store_timeout() {
    let store = probed();
    let counter = Counter::new();
    let layer = IdempotencyLayer::new(store.clone()).store_timeout(Duration::from_millis(250));
    let mut svc = app(layer, &counter);
    store.set(Op::Begin, Fault::Hang);

    let start = Instant::now();
    let reply = send(&mut svc, post("k", "{}")).await;
    let took = start.elapsed();
    assert_problem(&reply, 503, "store-unavailable");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(counter.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_default_store_timeout_is_two_seconds() {
    let store = probed();
    let counter = Counter::new();
    let mut svc = app(IdempotencyLayer::new(store.clone()), &counter);
    store.set(Op::Begin, Fault::Hang);

    let start = Instant::now();
    let reply = send(&mut svc, post("k", "{}")).await;
    assert_problem(&reply, 503, "store-unavailable");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(counter.get(), 0);
}

#[tokio::test]
async fn a_begin_that_landed_but_reported_an_error_runs_once() {
    for kind in [
        StoreErrorKind::Timeout,
        StoreErrorKind::Unavailable,
        StoreErrorKind::Other,
    ] {
        let store = probed();
        let counter = Counter::new();
        let mut svc = app(IdempotencyLayer::new(store.clone()), &counter);
        store.set(Op::Begin, Fault::Land(kind));

        let reply = send(&mut svc, post("k", "{}")).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{kind:?}: {reply:?}");
        assert_eq!(reply.outcome, Some(Outcome::Recorded), "{kind:?}");
        assert_eq!(reply.text(), "execution 1: {}");
        assert_eq!(store.calls(Op::Get), 1, "{kind:?}: the key was read back");
        assert_eq!(counter.get(), 1);
        assert!(matches!(
            entry(store.inner(), "k").await,
            Some(Entry::Completed(_))
        ));

        store.clear(Op::Begin);
        let retry = send(&mut svc, post("k", "{}")).await;
        assert_eq!(retry.outcome, Some(Outcome::Replayed), "{kind:?}");
        assert_eq!(retry.body, reply.body);
        assert_eq!(counter.get(), 1, "{kind:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_landed_begin_that_cannot_be_read_back_fails_closed_and_is_released() {
    let store = probed();
    let counter = Counter::new();
    let layer = IdempotencyLayer::new(store.clone()).lease(Duration::from_secs(10));
    let mut svc = app(layer, &counter);
    store.set(Op::Begin, Fault::Land(StoreErrorKind::Timeout));
    store.set(Op::Get, Fault::Fail(StoreErrorKind::Unavailable));

    let reply = send(&mut svc, post("k", "{}")).await;
    assert_problem(&reply, 503, "store-unavailable");
    assert_eq!(counter.get(), 0);

    // The claim did land, under a token no request holds. The layer releases it in the
    // background, so a retry runs long before the 10 s lease would have run out.
    store.clear(Op::Begin);
    store.clear(Op::Get);
    sleep(Duration::from_millis(500)).await;
    assert!(
        store.calls(Op::Release) >= 1,
        "the stray claim was released"
    );
    let reply = send(&mut svc, post("k", "{}")).await;
    assert_eq!(reply.outcome, Some(Outcome::Recorded));
    assert_eq!(counter.get(), 1);
    assert!(send(&mut svc, post("k", "{}")).await.is_replay());
}

#[tokio::test]
async fn fail_open_runs_unprotected() {
    let store = probed();
    let counter = Counter::new();
    let mut svc = app(
        IdempotencyLayer::new(store.clone()).fail_open(true),
        &counter,
    );
    store.set(Op::Begin, Fault::Fail(StoreErrorKind::Unavailable));

    for n in 1..=2 {
        let reply = send(&mut svc, post("k", "{}")).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.outcome, Some(Outcome::Unprotected));
        assert_eq!(reply.text(), format!("execution {n}: {{}}"));
        assert!(!reply.is_replay());
    }
    assert_eq!(counter.get(), 2);
    assert_eq!(store.calls(Op::Complete), 0, "nothing is recorded");
    assert_eq!(entry(store.inner(), "k").await, None);
}

#[tokio::test(start_paused = true)]
async fn a_lost_complete_is_re_sent_and_retries_get_the_replay() {
    let store = probed();
    let counter = Counter::new();
    let layer = IdempotencyLayer::new(store.clone()).lease(Duration::from_secs(6));
    let mut svc = app(layer, &counter);
    store.set(Op::Complete, Fault::Fail(StoreErrorKind::Unavailable));

    // The store fails the record: the client still gets the handler's answer.
    let first = send(&mut svc, post("k", "{}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.outcome, Some(Outcome::Recorded));
    assert_eq!(first.text(), "execution 1: {}");

    // Meanwhile the claim holds: retries get 409, never a second run.
    let retry = send(&mut svc, post("k", "{}")).await;
    assert_problem(&retry, 409, "in-progress");

    // The store comes back; the layer's re-sent `complete` lands and retries replay.
    store.clear(Op::Complete);
    sleep(Duration::from_secs(2)).await;
    assert!(store.calls(Op::Complete) >= 2, "the record was re-sent");
    for _ in 0..3 {
        let again = send(&mut svc, post("k", "{}")).await;
        assert!(again.is_replay(), "{:?}", again.outcome);
        assert_eq!(again.text(), "execution 1: {}");
    }
    sleep(Duration::from_secs(10)).await;
    assert!(send(&mut svc, post("k", "{}")).await.is_replay());
    assert_eq!(counter.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_complete_that_never_lands_lets_the_lease_run_out() {
    let store = probed();
    let counter = Counter::new();
    let layer = IdempotencyLayer::new(store.clone()).lease(Duration::from_secs(6));
    let mut svc = app(layer, &counter);
    store.set(Op::Complete, Fault::Fail(StoreErrorKind::Unavailable));

    let first = send(&mut svc, post("k", "{}")).await;
    assert_eq!(first.text(), "execution 1: {}");
    // While the lease holds, a retry never runs the handler again.
    for _ in 0..5 {
        let retry = send(&mut svc, post("k", "{}")).await;
        assert_problem(&retry, 409, "in-progress");
        assert_eq!(retry.header("retry-after"), Some("1"));
        sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(counter.get(), 1);
    let resent = store.calls(Op::Complete);
    assert!(resent > 2, "re-sent while the lease held: {resent}");
    // A store that never records is the one case the layer cannot cover: past the lease, the
    // key is free again.
    sleep(Duration::from_secs(2)).await;
    let later = send(&mut svc, post("k", "{}")).await;
    assert_eq!(later.outcome, Some(Outcome::Recorded));
    assert_eq!(later.text(), "execution 2: {}");
    assert_eq!(counter.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_complete_answers_after_the_store_timeout() {
    let store = probed();
    let counter = Counter::new();
    let layer = IdempotencyLayer::new(store.clone()).store_timeout(Duration::from_millis(300));
    let mut svc = app(layer, &counter);
    store.set(Op::Complete, Fault::Hang);

    let start = Instant::now();
    let first = send(&mut svc, post("k", "{}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.text(), "execution 1: {}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(1),
        "{took:?}"
    );
    assert_eq!(counter.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lost_release_is_re_sent_and_frees_the_key() {
    let store = probed();
    let counter = Counter::new();
    let c = counter.clone();
    let layer = IdempotencyLayer::new(store.clone()).lease(Duration::from_secs(6));
    let mut svc =
        tower::ServiceBuilder::new()
            .layer(layer)
            .service_fn(move |_req: common::HandlerReq| {
                let n = c.hit();
                async move {
                    let status = if n == 1 { 500 } else { 201 };
                    let res = http::Response::builder()
                        .status(status)
                        .body(http_body_util::Full::new(Bytes::from(format!(
                            "execution {n}"
                        ))))
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(res)
                }
            });
    store.set(Op::Release, Fault::Fail(StoreErrorKind::Unavailable));

    let first = send(&mut svc, post("k", "{}")).await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(first.text(), "execution 1");
    assert_problem(&send(&mut svc, post("k", "{}")).await, 409, "in-progress");
    store.clear(Op::Release);
    // The re-sent release lands long before the 6 s lease would have run out.
    sleep(Duration::from_millis(500)).await;
    let later = send(&mut svc, post("k", "{}")).await;
    assert_eq!(later.status, StatusCode::CREATED);
    assert_eq!(later.text(), "execution 2");
    assert_eq!(counter.get(), 2);
}

/// A record whose framing is sound but whose one header name is not a header name.
fn corrupt_record() -> Record {
    let mut bytes = b"TI\x01\x02".to_vec();
    bytes.extend_from_slice(&200u16.to_be_bytes());
    bytes.extend_from_slice(&1u16.to_be_bytes());
    bytes.extend_from_slice(&8u16.to_be_bytes());
    bytes.extend_from_slice(b"bad name");
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes.extend_from_slice(b"x");
    bytes.extend_from_slice(&0u32.to_be_bytes());
    Record::from_bytes(Bytes::from(bytes)).expect("framing is valid")
}

#[tokio::test]
async fn a_corrupt_record_never_runs_the_handler() {
    for fail_open in [false, true] {
        // The store says the record is corrupt.
        let store = probed();
        let counter = Counter::new();
        let mut svc = app(
            IdempotencyLayer::new(store.clone()).fail_open(fail_open),
            &counter,
        );
        store.set(Op::Begin, Fault::Fail(StoreErrorKind::Corrupt));
        let reply = send(&mut svc, post("k", "{}")).await;
        assert_problem(&reply, 503, "store-unavailable");
        assert_eq!(reply.outcome, Some(Outcome::StoreUnavailable));

        // The store hands back a record that does not decode.
        store.set(Op::Begin, Fault::Answer(Begin::Completed(corrupt_record())));
        let reply = send(&mut svc, post("k", "{}")).await;
        assert_problem(&reply, 503, "store-unavailable");
        assert_eq!(reply.outcome, Some(Outcome::StoreUnavailable));
        assert_eq!(counter.get(), 0, "fail_open({fail_open})");
    }
}

/// A client that gives up while its `begin` is in flight (the claim landed, the reply has not
/// come yet) leaves no claim behind: the layer releases it in the background, so the retry runs
/// at once instead of getting `409`s for the whole lease.
#[tokio::test(start_paused = true)]
async fn a_client_that_gives_up_during_the_claim_leaves_no_claim() {
    let store = probed();
    let counter = Counter::new();
    let mut svc = app(
        IdempotencyLayer::new(store.clone()).lease(Duration::from_secs(30)),
        &counter,
    );
    store.set(Op::Begin, Fault::LandThenHang);
    let gave_up = tokio::time::timeout(Duration::from_millis(200), send(&mut svc, post("k", "{}")));
    assert!(gave_up.await.is_err(), "the begin never answers");
    assert!(
        matches!(
            entry(store.inner(), "k").await,
            Some(Entry::InProgress { .. })
        ),
        "the claim landed"
    );

    store.clear(Op::Begin);
    sleep(Duration::from_millis(100)).await;
    assert_eq!(entry(store.inner(), "k").await, None, "released");
    assert_eq!(store.calls(Op::Release), 1);
    let retry = send(&mut svc, post("k", "{}")).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.outcome, Some(Outcome::Recorded));
    assert_eq!(counter.get(), 1);
}

/// While the record is owed (the store hangs on `complete`), the lease is kept alive: renewed
/// while the first `complete` waits and between the background re-sends. The store answers
/// again only after the original lease would have run out, and the record still lands: a retry
/// gets the replay, never a second execution.
#[tokio::test(start_paused = true)]
async fn the_lease_is_kept_alive_until_the_record_lands() {
    let store = probed();
    let counter = Counter::new();
    let lease = Duration::from_secs(3);
    let mut svc = app(
        IdempotencyLayer::new(store.clone())
            .lease(lease)
            .store_timeout(Duration::from_millis(2500)),
        &counter,
    );
    store.set(Op::Complete, Fault::Hang);
    let started = Instant::now();
    let first = send(&mut svc, post("k", "{}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(
        store.calls(Op::Renew) >= 2,
        "renewed while recording: {}",
        store.calls(Op::Renew)
    );

    // Well past the original lease, the key is still claimed by the owner, not free.
    sleep_until_after(started, lease * 2).await;
    assert!(matches!(
        entry(store.inner(), "k").await,
        Some(Entry::InProgress { .. })
    ));
    let meanwhile = send(&mut svc, post("k", "{}")).await;
    assert_problem(&meanwhile, 409, "in-progress");

    store.clear(Op::Complete);
    sleep(Duration::from_secs(4)).await;
    assert!(matches!(
        entry(store.inner(), "k").await,
        Some(Entry::Completed(_))
    ));
    let retry = send(&mut svc, post("k", "{}")).await;
    assert_eq!(retry.outcome, Some(Outcome::Replayed));
    assert_eq!(retry.body, first.body);
    assert_eq!(counter.get(), 1);
}

async fn sleep_until_after(start: Instant, d: Duration) {
    tokio::time::sleep_until(start + d).await;
}
