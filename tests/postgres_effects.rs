//! Exactly-once effects with `PostgresStore`: an axum service whose handler inserts a payment
//! row in its own transaction and fences it with `IdempotencyClaim::commit_in`.
//!
//! The handler counts its runs (its own side channel) and the payments table is read back: the
//! writes are committed if and only if the key is marked done; a handler whose lease was taken
//! over cannot commit; an error, a `5xx` or a panic leaves no effects and a free key;
//! duplicates get `409` (or wait) and then the replay, never a second run. An operator sees a
//! key whose effects committed as in progress, and can evict it only by force.

mod common;

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use common::postgres::{pool, sleep_past, store_with};
use common::{Counter, Gate, Reply, assert_problem, read};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;
use tower_idempotency::record::Record;
use tower_idempotency::store::{
    Begin, Entry, Evict, Evicted, KeyState, LookupOptions, OwnerToken, PostgresStore,
    PostgresStoreBuilder, Store, StoreError, StoreErrorKind, StoreKey,
};
use tower_idempotency::{IdempotencyClaim, IdempotencyLayer, Outcome};

#[derive(Clone)]
struct App {
    pool: PgPool,
    store: PostgresStore,
    payments: String,
    runs: Counter,
    gate: Gate,
    second_gate: Gate,
}

/// `POST /payments`. `x-mode`: `ok` (default), `fail` (500 after the insert, no commit),
/// `panic` (after the insert), `commit-then-fail` (500 after the commit); `x-hold: 1` (or `2`)
/// waits at the (second) gate between the insert and `commit_in`. Neither header is part of
/// the fingerprint.
async fn pay(
    State(app): State<App>,
    Extension(claim): Extension<IdempotencyClaim>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = app.runs.hit() as i32;
    let mode = headers
        .get("x-mode")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("ok")
        .to_owned();
    let amount: i64 = std::str::from_utf8(&body)
        .ok()
        .and_then(|b| b.trim().parse().ok())
        .unwrap_or(0);
    let mut tx = app.pool.begin().await.expect("begin");
    let id: i64 = sqlx::query_scalar(&format!(
        "INSERT INTO {} (key, run, amount) VALUES ($1, $2, $3) RETURNING id",
        app.payments
    ))
    .bind(claim.key().key())
    .bind(run)
    .bind(amount)
    .fetch_one(&mut *tx)
    .await
    .expect("insert");
    match headers.get("x-hold").map(|v| v.as_bytes()) {
        Some(b"1") => app.gate.pass().await,
        Some(b"2") => app.second_gate.pass().await,
        _ => {}
    }
    match mode.as_str() {
        "fail" => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "panic" => panic!("the handler panics after its insert"),
        _ => {}
    }
    if let Err(e) = claim.commit_in(&mut tx, &app.store).await {
        assert_eq!(e.kind(), StoreErrorKind::NotOwner, "{e:?}");
        return (StatusCode::SERVICE_UNAVAILABLE, "lost the key").into_response();
    }
    tx.commit().await.expect("commit");
    if mode == "commit-then-fail" {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let body = json!({ "id": id, "run": run, "amount": amount });
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

async fn app(test: &str) -> App {
    app_with(test, |b| b.ttl(Duration::from_secs(600))).await
}

/// [`app`] over a store configured by `configure`.
async fn app_with(
    test: &str,
    configure: impl FnOnce(PostgresStoreBuilder) -> PostgresStoreBuilder,
) -> App {
    let pool = pool(16).await;
    let store = store_with(pool.clone(), test, configure).await;
    let payments = format!("\"payments_{}\"", OwnerToken::generate());
    sqlx::query(&format!(
        "CREATE TABLE {payments} (id bigserial PRIMARY KEY, key text NOT NULL, run int NOT NULL, \
         amount bigint NOT NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    App {
        pool,
        store,
        payments,
        runs: Counter::new(),
        gate: Gate::new(),
        second_gate: Gate::new(),
    }
}

/// The service as users build it: the layer over the router, `CatchPanicLayer` outside it.
fn router<St: Store + Clone>(app: &App, layer: IdempotencyLayer<St>) -> Router {
    Router::new()
        .route("/payments", post(pay))
        .layer(layer)
        .layer(CatchPanicLayer::new())
        .with_state(app.clone())
}

fn payment(key: &str, mode: &str, hold: bool) -> Request<Body> {
    held(key, mode, if hold { "1" } else { "" })
}

/// A payment that waits at gate `hold` (`"1"`, `"2"`, or `""` for none).
fn held(key: &str, mode: &str, hold: &str) -> Request<Body> {
    let mut req = Request::post("/payments")
        .header("content-type", "text/plain")
        .header("idempotency-key", key)
        .header("x-mode", mode);
    if !hold.is_empty() {
        req = req.header("x-hold", hold);
    }
    req.body(Body::from("100")).unwrap()
}

async fn send(router: &Router, req: Request<Body>) -> Reply {
    read(router.clone().oneshot(req).await.unwrap()).await
}

/// The runs whose payment rows exist for `key`.
async fn payments_of(app: &App, key: &str) -> Vec<i32> {
    sqlx::query_scalar(&format!(
        "SELECT run FROM {} WHERE key = $1 ORDER BY id",
        app.payments
    ))
    .bind(key)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// The key's state column, `None` when the row is absent or expired.
async fn state_of(app: &App, key: &str) -> Option<String> {
    let digest = StoreKey::new(None, key).digest().to_vec();
    sqlx::query_scalar(&format!(
        "SELECT state FROM \"{}\" WHERE key = $1 AND expires_at > now()",
        app.store.table()
    ))
    .bind(digest)
    .fetch_optional(&app.pool)
    .await
    .unwrap()
}

/// Mixed runs (success, failure before the commit, panic, failure after the commit), each
/// retried: a key has payment rows if and only if it is marked done (`committed` or
/// `completed`), and never more than one; retries of done keys never run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_committed_if_and_only_if_the_key_is_marked_done() {
    let app = app("iff").await;
    let router = router(&app, IdempotencyLayer::new(app.store.clone()));
    let modes = ["ok", "fail", "panic", "commit-then-fail"];
    for (i, mode) in modes.iter().cycle().take(12).enumerate() {
        let key = format!("iff-{i}-{}", OwnerToken::generate());
        let first = send(&router, payment(&key, mode, false)).await;
        let done = matches!(*mode, "ok" | "commit-then-fail");
        match *mode {
            "ok" => assert_eq!(first.status, StatusCode::CREATED, "{first:?}"),
            _ => assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR, "{first:?}"),
        }
        let rows = payments_of(&app, &key).await;
        let state = state_of(&app, &key).await;
        assert_eq!(rows.len(), usize::from(done), "{mode}: rows {rows:?}");
        assert_eq!(
            state.is_some(),
            done,
            "{mode}: the key is marked {state:?} with rows {rows:?}"
        );
        // A retry: a done key is never run again; a free one runs and commits once.
        let runs = app.runs.get();
        let retry = send(&router, payment(&key, "ok", false)).await;
        match *mode {
            "ok" => {
                assert!(retry.is_replay(), "{retry:?}");
                assert_eq!(retry.body, first.body);
                assert_eq!(app.runs.get(), runs);
            }
            "commit-then-fail" => {
                assert_problem(&retry, 409, "response-not-stored");
                assert_eq!(app.runs.get(), runs);
            }
            _ => {
                assert_eq!(retry.status, StatusCode::CREATED, "{retry:?}");
                assert_eq!(app.runs.get(), runs + 1);
            }
        }
        assert_eq!(payments_of(&app, &key).await.len(), 1, "{mode}");
        assert!(state_of(&app, &key).await.is_some(), "{mode}");
    }
}

/// A fault of the app process around a real `PostgresStore`.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// The process stalls (a long GC pause, a stopped container) while its handler holds a
    /// transaction open: its leases are no longer renewed.
    Stalls,
    /// The process dies right after the handler's commit, before it records the response: its
    /// `complete` never lands.
    DiesBeforeRecording,
}

/// `PostgresStore` as a process with `fault` sees it.
#[derive(Clone)]
struct Faulty(PostgresStore, Fault);

impl Store for Faulty {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: Option<&tower_idempotency::fingerprint::Fingerprint>,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        self.0.begin(key, fingerprint, token, lease).await
    }
    async fn complete(&self, k: &StoreKey, t: OwnerToken, r: &Record) -> Result<(), StoreError> {
        if self.1 == Fault::DiesBeforeRecording {
            return Err(StoreError::new(StoreErrorKind::Other));
        }
        self.0.complete(k, t, r).await
    }
    async fn get(&self, key: &StoreKey) -> Result<Option<Entry>, StoreError> {
        self.0.get(key).await
    }
    async fn release(&self, key: &StoreKey, token: OwnerToken) -> Result<(), StoreError> {
        self.0.release(key, token).await
    }
    async fn renew(&self, k: &StoreKey, t: OwnerToken, l: Duration) -> Result<(), StoreError> {
        if self.1 == Fault::Stalls {
            return Err(StoreError::new(StoreErrorKind::Unavailable));
        }
        self.0.renew(k, t, l).await
    }
}

/// Instance A claims the key with a short lease and stalls between its insert and its commit;
/// the lease runs out, and instance B takes the key over and inserts its payment. A's
/// `commit_in` (while B still runs) fails and its transaction rolls back; B commits, and its
/// run is the only one with effects; a retry replays B's response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_whose_lease_was_taken_over_cannot_commit() {
    let app = app("takeover").await;
    let stalled = router(
        &app,
        IdempotencyLayer::new(Faulty(app.store.clone(), Fault::Stalls))
            .lease(Duration::from_millis(300)),
    );
    let healthy = router(&app, IdempotencyLayer::new(app.store.clone()));
    let key = format!("takeover-{}", OwnerToken::generate());

    let first = tokio::spawn({
        let (stalled, key) = (stalled.clone(), key.clone());
        async move { send(&stalled, held(&key, "ok", "1")).await }
    });
    app.gate.arrived().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let second = tokio::spawn({
        let (healthy, key) = (healthy.clone(), key.clone());
        async move { send(&healthy, held(&key, "ok", "2")).await }
    });
    app.second_gate.arrived().await;
    app.gate.open();
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE, "{first:?}");
    app.second_gate.open();
    let second = second.await.unwrap();
    assert_eq!(second.status, StatusCode::CREATED, "{second:?}");
    assert_eq!(second.outcome, Some(Outcome::Recorded));

    let second_json: Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(second_json["run"], 2);
    assert_eq!(
        payments_of(&app, &key).await,
        vec![2],
        "only the new owner's run"
    );
    let retry = send(&healthy, payment(&key, "ok", false)).await;
    assert!(retry.is_replay(), "{retry:?}");
    assert_eq!(retry.body, second.body);
    assert_eq!(app.runs.get(), 2);
}

/// While the first request holds the key between its insert and its commit, a duplicate gets
/// `409` (and, with `wait_for_in_flight`, waits); after it, duplicates get the replay. One run,
/// one payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_get_409_or_wait_then_the_replay() {
    for waits in [false, true] {
        let app = app("dup").await;
        let mut layer = IdempotencyLayer::new(app.store.clone());
        if waits {
            layer = layer.wait_for_in_flight(Duration::from_secs(20));
        }
        let router = router(&app, layer);
        let key = format!("dup-{}", OwnerToken::generate());
        let first = tokio::spawn({
            let (router, key) = (router.clone(), key.clone());
            async move { send(&router, payment(&key, "ok", true)).await }
        });
        app.gate.arrived().await;
        let duplicate = tokio::spawn({
            let (router, key) = (router.clone(), key.clone());
            async move { send(&router, payment(&key, "ok", false)).await }
        });
        if !waits {
            let conflict = duplicate.await.unwrap();
            assert_problem(&conflict, 409, "in-progress");
            assert!(conflict.header("retry-after").is_some());
            app.gate.open();
            let first = first.await.unwrap();
            assert_eq!(first.status, StatusCode::CREATED);
            let replay = send(&router, payment(&key, "ok", false)).await;
            assert!(replay.is_replay(), "{replay:?}");
            assert_eq!(replay.body, first.body);
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(
                !duplicate.is_finished(),
                "the duplicate waits for the owner"
            );
            app.gate.open();
            let first = first.await.unwrap();
            let replay = duplicate.await.unwrap();
            assert_eq!(first.status, StatusCode::CREATED);
            assert!(replay.is_replay(), "{replay:?}");
            assert_eq!(replay.body, first.body);
        }
        assert_eq!(app.runs.get(), 1);
        assert_eq!(payments_of(&app, &key).await, vec![1]);
    }
}

/// Effects committed, response never recorded: while the dead owner's lease lasts a retry gets
/// `409` in progress, afterwards the "response not stored" problem; it never runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_effects_without_a_record_are_never_run_again() {
    let app = app("norecord").await;
    let lease = Duration::from_millis(500);
    let dying = router(
        &app,
        IdempotencyLayer::new(Faulty(app.store.clone(), Fault::DiesBeforeRecording)).lease(lease),
    );
    let healthy = router(&app, IdempotencyLayer::new(app.store.clone()));
    let key = format!("norecord-{}", OwnerToken::generate());
    let first = send(&dying, payment(&key, "ok", false)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let early = send(&healthy, payment(&key, "ok", false)).await;
    assert_problem(&early, 409, "in-progress");
    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    let late = send(&healthy, payment(&key, "ok", false)).await;
    assert_problem(&late, 409, "response-not-stored");
    assert_eq!(app.runs.get(), 1);
    assert_eq!(payments_of(&app, &key).await, vec![1]);
    let entry = app.store.get(&StoreKey::new(None, &key)).await.unwrap();
    assert!(matches!(entry, Some(Entry::Completed(r)) if !r.is_stored()));
}

/// A key whose effects committed is remembered like any completed key: after the response
/// retention, a retry of the owner that died before recording gets `result-expired`, never a
/// second payment, until the key retention ends; then the key is new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_effects_are_remembered_for_the_key_retention() {
    let app = app_with("retained", |b| {
        b.ttl(Duration::from_millis(300))
            .key_ttl(Duration::from_secs(3))
    })
    .await;
    let dying = router(
        &app,
        IdempotencyLayer::new(Faulty(app.store.clone(), Fault::DiesBeforeRecording))
            .lease(Duration::from_millis(500)),
    );
    let healthy = router(&app, IdempotencyLayer::new(app.store.clone()));
    let key = format!("retained-{}", OwnerToken::generate());
    let store_key = StoreKey::new(None, &key);
    let first = send(&dying, payment(&key, "ok", false)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    sleep_past(&app.store, &store_key, "lease_until").await;
    sleep_past(&app.store, &store_key, "record_until").await;
    let late = send(&healthy, payment(&key, "ok", false)).await;
    assert_problem(&late, 409, "result-expired");
    assert_eq!(app.runs.get(), 1);
    assert_eq!(payments_of(&app, &key).await, vec![1]);

    sleep_past(&app.store, &store_key, "expires_at").await;
    let again = send(&healthy, payment(&key, "ok", false)).await;
    assert_eq!(again.status, StatusCode::CREATED, "{again:?}");
    assert_eq!(payments_of(&app, &key).await, vec![1, 2]);
}

/// The owner token in `key`'s row.
async fn owner_of(app: &App, key: &str) -> OwnerToken {
    let digest = StoreKey::new(None, key).digest().to_vec();
    let token: Vec<u8> = sqlx::query_scalar(&format!(
        "SELECT token FROM \"{}\" WHERE key = $1",
        app.store.table()
    ))
    .bind(digest)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    OwnerToken::from_bytes(token.try_into().expect("a 16-byte token"))
}

/// A key whose effects committed and whose owner died before recording the response: while the
/// owner's lease lasts, `lookup` reads it as in progress (with the owner, expiring with the
/// lease) and `evict` refuses it unless forced; forced, it is gone, and the retry runs the
/// payment a second time, as the docs warn. Once the lease ended, the key reads as completed
/// ("response not stored") and is evicted without force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_key_is_in_progress_and_evicted_only_by_force() {
    let app = app("evict").await;
    let lease = Duration::from_secs(30);
    let dying = |lease| {
        let store = Faulty(app.store.clone(), Fault::DiesBeforeRecording);
        router(&app, IdempotencyLayer::new(store).lease(lease))
    };
    let healthy = router(&app, IdempotencyLayer::new(app.store.clone()));
    let key = format!("evict-{}", OwnerToken::generate());
    let store_key = StoreKey::new(None, &key);
    let first = send(&dying(lease), payment(&key, "ok", false)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(state_of(&app, &key).await.as_deref(), Some("committed"));
    let owner = owner_of(&app, &key).await;

    let info = app.store.lookup(&store_key, LookupOptions::new()).await;
    let info = info.unwrap().expect("a live key");
    assert_eq!(info.state(), KeyState::InProgress { owner });
    let left = info.expires_in().expect("the lease left");
    assert!(
        left <= lease && left > lease - Duration::from_secs(5),
        "{left:?}"
    );
    assert_eq!(
        app.store
            .evict(&store_key, Evict::CompletedOnly)
            .await
            .unwrap(),
        Evicted::Refused { owner }
    );
    assert_eq!(state_of(&app, &key).await.as_deref(), Some("committed"));
    let early = send(&healthy, payment(&key, "ok", false)).await;
    assert_problem(&early, 409, "in-progress");

    assert_eq!(
        app.store.evict(&store_key, Evict::Force).await.unwrap(),
        Evicted::Claim { owner }
    );
    assert_eq!(state_of(&app, &key).await, None);
    let again = send(&healthy, payment(&key, "ok", false)).await;
    assert_eq!(again.status, StatusCode::CREATED, "{again:?}");
    assert_eq!(payments_of(&app, &key).await, vec![1, 2], "paid twice");

    let key = format!("evict-late-{}", OwnerToken::generate());
    let store_key = StoreKey::new(None, &key);
    let first = send(
        &dying(Duration::from_millis(300)),
        payment(&key, "ok", false),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    sleep_past(&app.store, &store_key, "lease_until").await;
    let info = app.store.lookup(&store_key, LookupOptions::new()).await;
    assert_eq!(
        info.unwrap().map(|i| i.state()),
        Some(KeyState::Completed),
        "response not stored"
    );
    assert_eq!(
        app.store
            .evict(&store_key, Evict::CompletedOnly)
            .await
            .unwrap(),
        Evicted::Record
    );
    assert_eq!(state_of(&app, &key).await, None);
}

/// An operator force-evicts a claim while its handler sits between its insert and its
/// `commit_in`: the handler's `commit_in` finds no claim of its own and fails, its transaction
/// rolls back, and the retry pays once. Forcing a claim (unlike a `committed` key) never
/// doubles the database effects of an exactly-once handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_claim_cannot_commit_its_effects() {
    let app = app("forceclaim").await;
    let router = router(&app, IdempotencyLayer::new(app.store.clone()));
    let key = format!("forceclaim-{}", OwnerToken::generate());
    let store_key = StoreKey::new(None, &key);
    let first = tokio::spawn({
        let (router, key) = (router.clone(), key.clone());
        async move { send(&router, held(&key, "ok", "1")).await }
    });
    app.gate.arrived().await;
    assert_eq!(state_of(&app, &key).await.as_deref(), Some("claimed"));
    let owner = owner_of(&app, &key).await;
    assert_eq!(
        app.store.evict(&store_key, Evict::Force).await.unwrap(),
        Evicted::Claim { owner }
    );
    app.gate.open();
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE, "{first:?}");
    assert_eq!(payments_of(&app, &key).await, Vec::<i32>::new());
    let retry = send(&router, payment(&key, "ok", false)).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{retry:?}");
    assert_eq!(payments_of(&app, &key).await, vec![2]);
}
