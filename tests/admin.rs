//! The admin example: an operator looks up and evicts a customer's key, behind the example's
//! own authentication, and the customer's next retry runs again.

#[allow(dead_code)]
#[path = "../examples/admin.rs"]
mod admin;

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tower_idempotency::store::MemoryStore;

const ADMIN: &str = "admin-secret";

struct Answer {
    status: StatusCode,
    replayed: bool,
    json: Value,
}

async fn send(app: &Router, req: Request<Body>) -> Answer {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let replayed = res
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        replayed,
        json,
    }
}

fn pay(user: &str, key: &str, body: &str) -> Request<Body> {
    Request::post("/payments")
        .header("authorization", format!("Bearer {user}-token"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn admin(method: Method, path: &str, token: &str, key: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("idempotency-key", key)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn an_evicted_key_runs_again() {
    let payments = admin::Payments::default();
    let app = admin::app(MemoryStore::new(), payments.clone(), ADMIN.into());
    let made = || payments.made.load(Ordering::SeqCst);

    let first = send(&app, pay("alice", "pay-1", r#"{"amount":30}"#)).await;
    assert_eq!((first.status, first.replayed), (StatusCode::CREATED, false));
    let replay = send(&app, pay("alice", "pay-1", r#"{"amount":30}"#)).await;
    assert_eq!(
        (replay.status, replay.replayed),
        (StatusCode::CREATED, true)
    );
    assert_eq!(replay.json["id"], first.json["id"]);
    assert_eq!(made(), 1);

    // Without the admin token: nothing.
    let denied = send(
        &app,
        admin(Method::GET, "/admin/keys/alice", "alice-token", "pay-1"),
    )
    .await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);

    // The key as Alice sent it, bare or as an sf-string: completed, no body unless asked.
    for key in ["pay-1", r#""pay-1""#] {
        let found = send(&app, admin(Method::GET, "/admin/keys/alice", ADMIN, key)).await;
        assert_eq!(found.status, StatusCode::OK, "{}", found.json);
        assert_eq!(found.json["state"], "completed");
        assert_eq!(found.json["fingerprint"].as_str().unwrap().len(), 64);
        let left = found.json["expires_in_ms"].as_u64().unwrap();
        assert!(left > 0 && left <= 24 * 60 * 60 * 1000, "{left}");
        assert!(found.json.get("response").is_none(), "{}", found.json);
    }
    let full = send(
        &app,
        admin(
            Method::GET,
            "/admin/keys/alice?response=true",
            ADMIN,
            "pay-1",
        ),
    )
    .await;
    assert_eq!(full.json["response"]["status"], 201);
    let body: Value =
        serde_json::from_str(full.json["response"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["id"], first.json["id"]);

    // Keys are scoped: Bob's `pay-1` is another key, and bad keys get a 400.
    let bob = send(&app, admin(Method::GET, "/admin/keys/bob", ADMIN, "pay-1")).await;
    assert_eq!(bob.status, StatusCode::NOT_FOUND);
    let bad = send(
        &app,
        admin(Method::GET, "/admin/keys/alice", ADMIN, "k1, k2"),
    )
    .await;
    assert_eq!(
        (bad.status, bad.json["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid-key"))
    );

    // Evicted: gone, and Alice's retry runs again with a new id.
    let evicted = send(
        &app,
        admin(Method::DELETE, "/admin/keys/alice", ADMIN, "pay-1"),
    )
    .await;
    assert_eq!(
        (evicted.status, evicted.json["evicted"].as_str()),
        (StatusCode::OK, Some("record"))
    );
    let gone = send(
        &app,
        admin(Method::GET, "/admin/keys/alice", ADMIN, "pay-1"),
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let again = send(&app, pay("alice", "pay-1", r#"{"amount":30}"#)).await;
    assert_eq!((again.status, again.replayed), (StatusCode::CREATED, false));
    assert_ne!(again.json["id"], first.json["id"]);
    assert_eq!(made(), 2);
}

#[tokio::test]
async fn a_running_request_is_evicted_only_by_force() {
    let payments = admin::Payments::default();
    let app = admin::app(MemoryStore::new(), payments.clone(), ADMIN.into());
    let slow = tokio::spawn({
        let app = app.clone();
        async move { send(&app, pay("alice", "slow", r#"{"amount":5,"delay_ms":600}"#)).await }
    });
    let running = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let found = send(&app, admin(Method::GET, "/admin/keys/alice", ADMIN, "slow")).await;
            if found.status == StatusCode::OK {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the running request's key was not found");
    assert_eq!(running.json["state"], "in_progress");
    let owner = running.json["owner"].as_str().unwrap().to_owned();

    let refused = send(
        &app,
        admin(Method::DELETE, "/admin/keys/alice", ADMIN, "slow"),
    )
    .await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(
        (
            refused.json["evicted"].as_str(),
            refused.json["owner"].as_str()
        ),
        (Some("refused"), Some(owner.as_str()))
    );
    let forced = send(
        &app,
        admin(
            Method::DELETE,
            "/admin/keys/alice?force=true",
            ADMIN,
            "slow",
        ),
    )
    .await;
    assert_eq!(
        (forced.status, forced.json["evicted"].as_str()),
        (StatusCode::OK, Some("claim"))
    );

    // The first request still finishes and answers its client.
    let first = slow.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(payments.made.load(Ordering::SeqCst), 1);
}

#[test]
fn the_curl_lines_use_the_admin_routes() {
    let lines = admin::curl_lines("http://127.0.0.1:3000", ADMIN);
    assert!(lines.contains("-X DELETE http://127.0.0.1:3000/admin/keys/alice"));
    assert!(lines.contains(&format!("Bearer {ADMIN}")));
    assert_eq!(lines.matches("/payments").count(), 3);
}
