//! §6 In an axum `Router`: `.layer(IdempotencyLayer::new(MemoryStore::new()))` compiles with the
//! layer's body types as they are, and JSON handlers get replays, conflicts and mismatches.

mod common;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::{Counter, Gate, read};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_idempotency::store::MemoryStore;
use tower_idempotency::{IdempotencyLayer, Outcome};

#[derive(Clone)]
struct App {
    counter: Counter,
    gate: Gate,
}

#[derive(Deserialize)]
struct NewOrder {
    item: String,
    quantity: u32,
}

async fn create_order(
    State(app): State<App>,
    Json(order): Json<NewOrder>,
) -> (StatusCode, Json<Value>) {
    let n = app.counter.hit();
    app.gate.pass().await;
    let body = json!({ "id": n, "item": order.item, "quantity": order.quantity });
    (StatusCode::CREATED, Json(body))
}

async fn list_orders(State(app): State<App>) -> Json<Value> {
    Json(json!({ "executions": app.counter.get() }))
}

fn router(app: App) -> Router {
    Router::new()
        .route("/orders", post(create_order).get(list_orders))
        .route("/health", get(|| async { "ok" }))
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .with_state(app)
}

fn order(key: &str, body: &Value) -> Request<Body> {
    Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn json_handler_replays() {
    let app = App {
        counter: Counter::new(),
        gate: Gate::new(),
    };
    app.gate.open();
    let router = router(app.clone());
    let body = json!({ "item": "book", "quantity": 2 });

    let first = read(router.clone().oneshot(order("o-1", &body)).await.unwrap()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.outcome, Some(Outcome::Recorded));
    let json: Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(json, json!({ "id": 1, "item": "book", "quantity": 2 }));

    let again = read(router.clone().oneshot(order("o-1", &body)).await.unwrap()).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.outcome, Some(Outcome::Replayed));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.header("content-type"), Some("application/json"));
    assert_eq!(again.body, first.body);
    assert_eq!(app.counter.get(), 1);

    // GET is not covered.
    let list = Request::get("/orders")
        .header("idempotency-key", "o-1")
        .body(Body::empty())
        .unwrap();
    let list = read(router.clone().oneshot(list).await.unwrap()).await;
    assert_eq!(list.outcome, None);
    assert_eq!(list.text(), "{\"executions\":1}");
}

#[tokio::test]
async fn conflict_and_mismatch() {
    let app = App {
        counter: Counter::new(),
        gate: Gate::new(),
    };
    let router = router(app.clone());
    let body = json!({ "item": "book", "quantity": 2 });

    let first = tokio::spawn(router.clone().oneshot(order("o-1", &body)));
    app.gate.arrived().await;
    let dup = read(router.clone().oneshot(order("o-1", &body)).await.unwrap()).await;
    let problem = common::assert_problem(&dup, 409, "in-progress");
    assert_eq!(problem["status"], 409);
    assert_eq!(dup.header("retry-after"), Some("1"));

    let changed = json!({ "item": "book", "quantity": 3 });
    let mismatch = read(
        router
            .clone()
            .oneshot(order("o-1", &changed))
            .await
            .unwrap(),
    )
    .await;
    common::assert_problem(&mismatch, 422, "mismatch");

    app.gate.open();
    let first = read(first.await.unwrap().unwrap()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let mismatch = read(
        router
            .clone()
            .oneshot(order("o-1", &changed))
            .await
            .unwrap(),
    )
    .await;
    common::assert_problem(&mismatch, 422, "mismatch");
    assert_eq!(app.counter.get(), 1);
}

#[tokio::test]
async fn an_extractor_rejection_is_recorded_like_any_4xx() {
    let app = App {
        counter: Counter::new(),
        gate: Gate::new(),
    };
    app.gate.open();
    let router = router(app.clone());
    let bad = || {
        Request::post("/orders")
            .header("content-type", "application/json")
            .header("idempotency-key", "o-bad")
            .body(Body::from("{\"item\":"))
            .unwrap()
    };
    let first = read(router.clone().oneshot(bad()).await.unwrap()).await;
    assert_eq!(first.status, StatusCode::BAD_REQUEST);
    assert_eq!(first.outcome, Some(Outcome::Recorded));
    let again = read(router.clone().oneshot(bad()).await.unwrap()).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(again.outcome, Some(Outcome::Replayed));
    assert_eq!(again.body, first.body);
    assert_eq!(app.counter.get(), 0, "the handler never ran");
}
