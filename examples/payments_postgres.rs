//! Exactly-once payments over PostgreSQL: an axum service whose `POST /payments` inserts a
//! payment row and marks the request's idempotency key done in the **same transaction**, fenced
//! by the request's owner token. Whatever crashes when, a key has one payment or none, and a
//! retry never charges twice.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo run --example payments_postgres --features postgres
//! ```
//!
//! `ADDR` sets the address to listen on (default `127.0.0.1:3000`). The service creates its
//! tables (`idempotency` and `payments`) when they do not exist. It prints curl lines: the same
//! request twice gives the same payment, the second time with `idempotent-replayed: true`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use tower_idempotency::store::PostgresStore;
use tower_idempotency::{IdempotencyClaim, IdempotencyLayer};

#[derive(Clone)]
struct Payments {
    pool: PgPool,
    store: PostgresStore,
}

#[derive(Deserialize)]
struct NewPayment {
    amount: i64,
}

/// `POST /payments {"amount": 1000}` → `201 {"id": …, "amount": 1000}`.
async fn create_payment(
    State(app): State<Payments>,
    Extension(claim): Extension<IdempotencyClaim>,
    Json(payment): Json<NewPayment>,
) -> Response {
    if payment.amount <= 0 {
        let error = json!({ "error": "amount must be positive" });
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(error)).into_response();
    }
    match charge(&app, &claim, payment.amount).await {
        Ok(id) => {
            let body = json!({ "id": id, "amount": payment.amount });
            (StatusCode::CREATED, Json(body)).into_response()
        }
        // The database failed, or this request lost its key to a retry (its lease ran out):
        // nothing was committed. 503 is retryable, so the layer releases the key.
        Err(e) => {
            eprintln!("payment not committed: {e}");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// The fenced transaction: the payment row and the key's "effects committed" mark commit
/// together, or neither does.
async fn charge(
    app: &Payments,
    claim: &IdempotencyClaim,
    amount: i64,
) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
    let mut tx = app.pool.begin().await?;
    let id = sqlx::query_scalar(
        "INSERT INTO payments (idempotency_key, amount) VALUES ($1, $2) RETURNING id",
    )
    .bind(claim.key().key())
    .bind(amount)
    .fetch_one(&mut *tx)
    .await?;
    claim.commit_in(&mut tx, &app.store).await?;
    tx.commit().await?;
    Ok(id)
}

/// The service: creates the tables when missing, and layers `PostgresStore` over the router.
async fn app(
    pool: PgPool,
    lease: Duration,
) -> Result<Router, Box<dyn std::error::Error + Send + Sync>> {
    // Completed payments are replayed for 24 hours.
    let store = PostgresStore::new(pool.clone(), Duration::from_secs(24 * 60 * 60));
    store.migrate().await?;
    // No UNIQUE constraint on idempotency_key, on purpose: the fence alone keeps one payment
    // per key, and the crash test counts the rows per key to show it.
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS payments (\
           id bigserial PRIMARY KEY, \
           idempotency_key text NOT NULL, \
           amount bigint NOT NULL, \
           created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;
    let layer = IdempotencyLayer::new(store.clone()).lease(lease);
    Ok(Router::new()
        .route("/payments", post(create_payment))
        .layer(layer)
        .with_state(Payments { pool, store }))
}

/// Serves the app on `addr` until the process ends (also the app process of the crash test,
/// `tests/postgres_crash.rs`).
pub(crate) async fn serve(
    database_url: &str,
    addr: SocketAddr,
    lease: Duration,
) -> std::io::Result<()> {
    let pool = PgPool::connect(database_url)
        .await
        .map_err(std::io::Error::other)?;
    let router = app(pool, lease).await.map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router).await
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let addr: SocketAddr = std::env::var("ADDR")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| ([127, 0, 0, 1], 3000).into());
    println!("payments on http://{addr}, database {database_url}\n");
    println!("# A payment; the answer is 201 with its id:");
    println!(
        "curl -i -X POST http://{addr}/payments -H 'content-type: application/json' \
         -H 'idempotency-key: order-1001' -d '{{\"amount\": 1000}}'"
    );
    println!(
        "# The same request again: the same id, with `idempotent-replayed: true`, no new row:"
    );
    println!(
        "curl -i -X POST http://{addr}/payments -H 'content-type: application/json' \
         -H 'idempotency-key: order-1001' -d '{{\"amount\": 1000}}'"
    );
    println!("# The same key with another body: 422, the key belongs to another request:");
    println!(
        "curl -i -X POST http://{addr}/payments -H 'content-type: application/json' \
         -H 'idempotency-key: order-1001' -d '{{\"amount\": 5}}'"
    );
    println!("# The rows: one payment for order-1001:");
    println!("psql \"{database_url}\" -c 'SELECT * FROM payments'");
    serve(&database_url, addr, Duration::from_secs(30)).await
}
