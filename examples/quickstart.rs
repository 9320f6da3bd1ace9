//! An axum order service whose `POST /orders` runs at most once per `Idempotency-Key`.
//!
//! ```sh
//! cargo run --example quickstart          # listens on 127.0.0.1:3000, PORT overrides
//! cargo run --example quickstart --features metrics   # and serves /metrics (Prometheus)
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart --features redis
//! ```
//!
//! It keeps keys in the in-memory store, or in Redis when `REDIS_URL` is set (the store is
//! chosen at run time through [`BoxStore`]), so several copies of it on different ports share
//! their keys.
//!
//! Every execution creates an order with a fresh id and answers `201` with it, so a replay is
//! visible as the same id coming back. A body with `"delay_ms"` makes the handler slow, to show
//! the `409` a duplicate gets while the first request still runs. The curl lines it prints show
//! a replay, a `409` and a `422`.
//!
//! With the feature `metrics`, `GET /metrics` shows the layer's counters in the Prometheus text
//! format (`metrics-exporter-prometheus`, without its HTTP listener: the app serves the page
//! itself); `idempotency_requests_total{outcome="replayed"}` goes up with every replay. Without
//! the feature the layer records nothing, so the example has no `/metrics`; the feature only
//! adds the small `metrics` facade to the build.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use serde::{Deserialize, Serialize};
use tower_idempotency::IdempotencyLayer;
use tower_idempotency::store::{BoxStore, MemoryStore};

#[derive(Deserialize)]
struct NewOrder {
    item: String,
    quantity: u32,
    /// How long the handler takes, to show a duplicate arriving while it runs.
    #[serde(default)]
    delay_ms: u64,
}

#[derive(Serialize)]
struct Order {
    id: u64,
    item: String,
    quantity: u32,
}

#[derive(Clone, Default)]
struct Orders {
    next_id: Arc<AtomicU64>,
}

async fn create_order(
    State(orders): State<Orders>,
    Json(new): Json<NewOrder>,
) -> (StatusCode, Json<Order>) {
    tokio::time::sleep(Duration::from_millis(new.delay_ms)).await;
    let id = orders.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    println!("executed: created order {id}");
    let order = Order {
        id,
        item: new.item,
        quantity: new.quantity,
    };
    (StatusCode::CREATED, Json(order))
}

/// The application: `POST /orders` behind the idempotency layer over `store`, and (feature
/// `metrics`) `GET /metrics` outside it.
pub(crate) fn app(store: BoxStore) -> Router {
    let app = Router::new()
        .route("/orders", post(create_order))
        .with_state(Orders::default())
        .layer(IdempotencyLayer::new(store));
    #[cfg(feature = "metrics")]
    let app = app.route("/metrics", axum::routing::get(metrics_page));
    app
}

/// The process's Prometheus recorder, installed on first use.
#[cfg(feature = "metrics")]
pub(crate) fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("no other metrics recorder is installed")
    })
}

/// `GET /metrics`: every metric in the Prometheus text format.
#[cfg(feature = "metrics")]
async fn metrics_page() -> String {
    prometheus().render()
}

/// Redis when `REDIS_URL` is set, the in-memory store otherwise; and what it is, to print.
pub(crate) async fn store_from_env() -> std::io::Result<(BoxStore, String)> {
    let Ok(url) = std::env::var("REDIS_URL") else {
        return Ok((BoxStore::new(MemoryStore::new()), "in-memory store".into()));
    };
    redis_store(&url).await
}

#[cfg(feature = "redis")]
async fn redis_store(url: &str) -> std::io::Result<(BoxStore, String)> {
    use redis::aio::ConnectionManagerConfig;
    use tower_idempotency::store::RedisStore;

    // TCP_NODELAY, which the `redis` crate 1.x leaves off: over a real network Nagle's algorithm
    // can hold commands back behind delayed ACKs.
    let info = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(std::io::Error::other)?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info).map_err(std::io::Error::other)?;
    // The layer bounds every store call itself (2 s); the driver's own 500 ms limit would cut
    // in first under load.
    let config = ConnectionManagerConfig::new().set_response_timeout(None);
    let connection = client
        .get_connection_manager_with_config(config)
        .await
        .map_err(std::io::Error::other)?;
    let store = RedisStore::new(connection, Duration::from_secs(24 * 60 * 60))
        .with_prefix("quickstart:idem:");
    store.check_config().await.map_err(std::io::Error::other)?;
    Ok((BoxStore::new(store), format!("Redis at {url}")))
}

#[cfg(not(feature = "redis"))]
async fn redis_store(_url: &str) -> std::io::Result<(BoxStore, String)> {
    Err(std::io::Error::other(
        "REDIS_URL is set: run with `--features redis` to use Redis",
    ))
}

/// The curl lines that show the layer at work against `base`.
pub(crate) fn curl_lines(base: &str) -> String {
    let post = format!(
        "curl -si -X POST {base}/orders -H 'content-type: application/json' -H 'Idempotency-Key:"
    );
    format!(
        "\
# 1. Create an order: 201 with a new id.
{post} order-1' -d '{{\"item\":\"book\",\"quantity\":1}}'
# 2. Retry it: 201 with the same id and `idempotent-replayed: true`; the handler did not run.
{post} order-1' -d '{{\"item\":\"book\",\"quantity\":1}}'
# 3. Reuse the key for another order: 422 problem; nothing ran.
{post} order-1' -d '{{\"item\":\"book\",\"quantity\":2}}'
# 4. A duplicate while the first still runs (3 s): 409 with Retry-After, then the first's 201.
{post} order-2' -d '{{\"item\":\"lamp\",\"quantity\":1,\"delay_ms\":3000}}' & sleep 0.5; \
{post} order-2' -d '{{\"item\":\"lamp\",\"quantity\":1,\"delay_ms\":3000}}'; wait
{}",
        metrics_line(base)
    )
}

/// The curl line for `/metrics`, or how to get it.
fn metrics_line(base: &str) -> String {
    if cfg!(feature = "metrics") {
        format!(
            "# 5. The layer's counters: `outcome=\"replayed\"` went up with step 2.\n\
             curl -s {base}/metrics | grep idempotency_requests_total\n"
        )
    } else {
        "# 5. For /metrics (Prometheus), run with `--features metrics`.\n".to_owned()
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| std::io::Error::other("PORT must be a port number"))?,
        Err(_) => 3000,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (store, what) = store_from_env().await?;
    #[cfg(feature = "metrics")]
    prometheus();
    println!("listening on {base} ({what})\n");
    println!("{}", curl_lines(&base));
    axum::serve(listener, app(store)).await
}
