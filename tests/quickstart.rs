//! The quickstart example answers as its printed curl lines say, over a real socket.

#[allow(dead_code)]
#[path = "../examples/quickstart.rs"]
mod quickstart;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tower_idempotency::store::{BoxStore, MemoryStore, OwnerToken};

struct Answer {
    status: u16,
    replayed: bool,
    retry_after: Option<String>,
    json: Value,
}

async fn post(base: &str, key: &str, body: &str) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::post(format!("{base}/orders"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let status = res.status().as_u16();
    let replayed = res
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        replayed,
        retry_after,
        json: serde_json::from_slice(&bytes).unwrap(),
    }
}

/// Serves the example's app over `store` and sends what its curl lines send, with keys of
/// this run's own (a Redis store keeps records between runs).
async fn answers_as_the_curl_lines_say(store: BoxStore) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, quickstart::app(store)).await.unwrap() });

    let lines = quickstart::curl_lines(&base);
    let curls = if cfg!(feature = "metrics") { 6 } else { 5 };
    assert_eq!(lines.matches("curl ").count(), curls, "{lines}");
    let run = OwnerToken::generate();
    let (order_1, order_2) = (format!("order-1-{run}"), format!("order-2-{run}"));

    // 1. Create.
    let book = r#"{"item":"book","quantity":1}"#;
    let first = post(&base, &order_1, book).await;
    assert_eq!(first.status, 201);
    assert!(!first.replayed);
    let id = first.json["id"].as_u64().unwrap();

    // 2. Retry: same id, marked as a replay.
    let retry = post(&base, &order_1, book).await;
    assert_eq!(retry.status, 201);
    assert!(retry.replayed);
    assert_eq!(retry.json, first.json);

    // 3. Same key, other order: 422 problem.
    let other = post(&base, &order_1, r#"{"item":"book","quantity":2}"#).await;
    assert_eq!(other.status, 422);
    assert_eq!(other.json["status"], 422);

    // 4. A duplicate while the first runs: 409 with Retry-After, then the first's 201.
    let slow = r#"{"item":"lamp","quantity":1,"delay_ms":1500}"#;
    let (b1, b2, k1) = (base.clone(), base.clone(), order_2.clone());
    let first = tokio::spawn(async move { post(&b1, &k1, slow).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dup = post(&b2, &order_2, slow).await;
    assert_eq!(dup.status, 409);
    assert_eq!(dup.retry_after.as_deref(), Some("1"));
    let first = first.await.unwrap();
    assert_eq!(first.status, 201);
    assert_eq!(
        first.json["id"].as_u64().unwrap(),
        id + 1,
        "exactly one more execution"
    );
}

#[tokio::test]
async fn on_the_memory_store() {
    answers_as_the_curl_lines_say(BoxStore::new(MemoryStore::new())).await;
}

/// With `REDIS_URL` (as `.ci/test` sets it), the same answers from Redis.
#[cfg(feature = "redis")]
#[tokio::test]
async fn on_redis() {
    use tower_idempotency::store::RedisStore;

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
        .unwrap()
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info).unwrap();
    let connection = client.get_connection_manager().await.unwrap();
    let store =
        RedisStore::new(connection, Duration::from_secs(60)).with_prefix("quickstart-test:");
    answers_as_the_curl_lines_say(BoxStore::new(store)).await;
}

/// With the feature `metrics`: the printed `/metrics` line shows `replayed` going up after the
/// printed replay line (step 2).
#[cfg(feature = "metrics")]
#[tokio::test]
async fn metrics_show_the_replay() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    quickstart::prometheus();
    let store = BoxStore::new(MemoryStore::new());
    tokio::spawn(async move { axum::serve(listener, quickstart::app(store)).await.unwrap() });
    let lines = quickstart::curl_lines(&base);
    assert!(
        lines.contains(&format!(
            "curl -s {base}/metrics | grep idempotency_requests_total"
        )),
        "{lines}"
    );

    let replayed = |page: &str| -> u64 {
        page.lines()
            .find(|l| l.starts_with("idempotency_requests_total{outcome=\"replayed\"}"))
            .map_or(0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
    };
    let key = format!("metrics-{}", OwnerToken::generate());
    let book = r#"{"item":"book","quantity":1}"#;
    assert_eq!(post(&base, &key, book).await.status, 201);
    let before = replayed(&get(&format!("{base}/metrics")).await);
    let retry = post(&base, &key, book).await;
    assert!(retry.replayed);
    let page = get(&format!("{base}/metrics")).await;
    // Other tests in this process may replay too: at least this one.
    assert!(replayed(&page) > before, "{page}");
    assert!(
        page.contains("idempotency_requests_total{outcome=\"recorded\"}"),
        "{page}"
    );
    assert!(
        page.contains("idempotency_store_duration_seconds"),
        "{page}"
    );
}

#[cfg(feature = "metrics")]
async fn get(url: &str) -> String {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let res = client.get(url.parse().unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}
