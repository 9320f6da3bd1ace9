//! Looking up and evicting a key, behind the operator's own authentication.
//!
//! ```sh
//! cargo run --example admin        # listens on 127.0.0.1:3000, PORT overrides
//! ```
//!
//! `POST /payments` is protected per user: customers authenticate with `Authorization: Bearer
//! <user>-token` (the demo's users are `alice` and `bob`), and the authentication middleware
//! feeds the layer's scope, so Alice's key `pay-1` and Bob's `pay-1` are different keys.
//!
//! `/admin/keys/{user}` is for support engineers, outside the idempotency layer, behind a token
//! of its own (`ADMIN_TOKEN`, or a random one printed at start). The request carries the key
//! exactly as the customer sent it, in the same `Idempotency-Key` header, and
//! [`IdempotencyLayer::store_key`] files it as the layer did:
//!
//! - `GET` answers the key's state, fingerprint and expiry as JSON; `?response=true` adds the
//!   stored status and body (left out by default: they may hold a customer's data);
//! - `DELETE` evicts a completed key, so that the customer's next retry runs again (for a key
//!   that holds a stored error from a bug fixed since). A request still running is refused with
//!   `409` unless `?force=true`: forcing lets a retry run while the first execution may still be
//!   going. [`Evict::Force`] explains when that is acceptable.
//!
//! The curl lines it prints go through it once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower_idempotency::IdempotencyLayer;
use tower_idempotency::store::{
    Evict, Evicted, KeyState, LookupOptions, MemoryStore, OwnerToken, Store, StoreError, StoreKey,
};

/// The authenticated customer, put into the request by [`authenticate`].
#[derive(Clone)]
struct User(String);

#[derive(Deserialize)]
struct Payment {
    amount: u64,
    /// How long the handler takes, to look at a key while its request runs.
    #[serde(default)]
    delay_ms: u64,
}

/// The payments made: what the handler did, whatever the client saw.
#[derive(Clone, Default)]
pub(crate) struct Payments {
    pub(crate) made: Arc<AtomicU64>,
}

async fn pay(
    State(payments): State<Payments>,
    Extension(User(user)): Extension<User>,
    Json(payment): Json<Payment>,
) -> (StatusCode, Json<serde_json::Value>) {
    tokio::time::sleep(Duration::from_millis(payment.delay_ms)).await;
    let id = payments.made.fetch_add(1, Ordering::SeqCst) + 1;
    println!("executed: payment {id} of {} for {user}", payment.amount);
    let body = json!({ "id": id, "user": user, "amount": payment.amount });
    (StatusCode::CREATED, Json(body))
}

/// Customers: `Authorization: Bearer <user>-token`, for the demo's two users.
async fn authenticate(mut req: Request, next: Next) -> Response {
    let user = bearer(req.headers())
        .and_then(|token| token.strip_suffix("-token"))
        .filter(|user| ["alice", "bob"].contains(user))
        .map(str::to_owned);
    match user {
        Some(user) => {
            req.extensions_mut().insert(User(user));
            next.run(req).await
        }
        None => unauthenticated("send a user's bearer token"),
    }
}

/// Operators: `Authorization: Bearer <ADMIN_TOKEN>`.
async fn require_admin(State(admin): State<Admin>, req: Request, next: Next) -> Response {
    if bearer(req.headers()) == Some(admin.token.as_str()) {
        next.run(req).await
    } else {
        unauthenticated("send the admin token")
    }
}

fn unauthenticated(detail: &str) -> Response {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail.into()).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// What the admin routes need: the payments' layer (for its store and its key parsing) and the
/// operators' token.
#[derive(Clone)]
struct Admin {
    layer: IdempotencyLayer<MemoryStore>,
    token: Arc<String>,
}

#[derive(Deserialize)]
struct LookupQuery {
    #[serde(default)]
    response: bool,
}

#[derive(Deserialize)]
struct EvictQuery {
    #[serde(default)]
    force: bool,
}

#[derive(Serialize)]
struct KeyView {
    state: &'static str,
    /// The owner of a claim: the execution that holds the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in_ms: Option<u128>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<serde_json::Value>,
}

/// The customer's key, as the layer filed it: the `{user}` of the path is the scope, and the
/// request carries the customer's `Idempotency-Key` exactly as it was sent, parsed as the layer
/// parses it.
struct CustomerKey(StoreKey);

impl FromRequestParts<Admin> for CustomerKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, admin: &Admin) -> Result<Self, Problem> {
        let invalid = |kind, detail: String| Problem::new(StatusCode::BAD_REQUEST, kind, detail);
        let Path(user) = Path::<String>::from_request_parts(parts, admin)
            .await
            .map_err(|e| invalid("invalid-path", e.to_string()))?;
        let header = parts
            .headers
            .get("idempotency-key")
            .ok_or_else(|| invalid("missing-key", "send the customer's Idempotency-Key".into()))?;
        let key = admin
            .layer
            .store_key(Some(&user), header)
            .map_err(|e| invalid("invalid-key", e.to_string()))?;
        Ok(Self(key))
    }
}

/// A store error, for an operator.
fn unavailable(e: StoreError) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store-error",
        e.to_string(),
    )
}

/// `GET /admin/keys/{user}` with the customer's `Idempotency-Key`.
async fn lookup(
    State(admin): State<Admin>,
    CustomerKey(key): CustomerKey,
    Query(query): Query<LookupQuery>,
) -> Result<Json<KeyView>, Problem> {
    let options = LookupOptions::new().with_response(query.response);
    let info = admin
        .layer
        .store()
        .lookup(&key, options)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "unknown-key",
                "no such key (or expired)".into(),
            )
        })?;
    let owner = match info.state() {
        KeyState::InProgress { owner } => Some(owner.to_string()),
        _ => None,
    };
    let response = info.record().and_then(|record| {
        let stored = record.response().ok()??;
        Some(json!({
            "status": stored.status.as_u16(),
            "body": String::from_utf8_lossy(&stored.body),
        }))
    });
    Ok(Json(KeyView {
        state: info.state().as_str(),
        owner,
        fingerprint: info.fingerprint().map(|fp| fp.to_hex()),
        expires_in_ms: info.expires_in().map(|d| d.as_millis()),
        response,
    }))
}

/// `DELETE /admin/keys/{user}` with the customer's `Idempotency-Key`; `?force=true` for a claim.
async fn evict(
    State(admin): State<Admin>,
    CustomerKey(key): CustomerKey,
    Query(query): Query<EvictQuery>,
) -> Result<Response, Problem> {
    let how = if query.force {
        Evict::Force
    } else {
        Evict::CompletedOnly
    };
    let evicted = admin
        .layer
        .store()
        .evict(&key, how)
        .await
        .map_err(unavailable)?;
    let (status, owner) = match evicted {
        Evicted::Nothing => (StatusCode::NOT_FOUND, None),
        Evicted::Refused { owner } => (StatusCode::CONFLICT, Some(owner.to_string())),
        Evicted::Claim { owner } => (StatusCode::OK, Some(owner.to_string())),
        _ => (StatusCode::OK, None),
    };
    let body = json!({ "evicted": evicted.as_str(), "owner": owner });
    Ok((status, Json(body)).into_response())
}

/// An error answered as `application/problem+json`.
struct Problem {
    status: StatusCode,
    kind: &'static str,
    detail: String,
}

impl Problem {
    fn new(status: StatusCode, kind: &'static str, detail: String) -> Self {
        Self {
            status,
            kind,
            detail,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": self.kind,
            "title": self.status.canonical_reason(),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = (self.status, Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

/// The application: payments behind authentication and the idempotency layer, and the admin
/// routes behind `admin_token`, outside the layer.
pub(crate) fn app(store: MemoryStore, payments: Payments, admin_token: String) -> Router {
    let layer = IdempotencyLayer::new(store)
        .scope(|req| req.extensions.get::<User>().map(|User(user)| user.clone()));
    let admin = Admin {
        layer: layer.clone(),
        token: Arc::new(admin_token),
    };
    let payments = Router::new()
        .route("/payments", post(pay))
        .with_state(payments)
        // The last layer runs first: authentication, then idempotency (README, "Layer order").
        .layer(layer)
        .layer(middleware::from_fn(authenticate));
    let admin_routes = Router::new()
        .route("/admin/keys/{user}", get(lookup).delete(evict))
        .route_layer(middleware::from_fn_with_state(admin.clone(), require_admin))
        .with_state(admin);
    payments.merge(admin_routes)
}

/// The curl lines that show the admin routes at work against `base`.
pub(crate) fn curl_lines(base: &str, admin_token: &str) -> String {
    let pay = format!(
        "curl -si -X POST {base}/payments -H 'authorization: Bearer alice-token' \
         -H 'content-type: application/json' -H 'Idempotency-Key: pay-1' -d '{{\"amount\":30}}'"
    );
    let admin = format!(
        "{base}/admin/keys/alice -H 'authorization: Bearer {admin_token}' -H 'Idempotency-Key: pay-1'"
    );
    format!(
        "\
# 1. Alice pays: 201 with a new id. Again: the same id, `idempotent-replayed: true`.
{pay}
{pay}
# 2. Look the key up: completed, its fingerprint and expiry (add ?response=true for the body).
curl -s {admin}
# 3. Evict it: the customer's next retry runs again (a new id).
curl -s -X DELETE {admin}
{pay}
"
    )
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let admin_token =
        std::env::var("ADMIN_TOKEN").unwrap_or_else(|_| OwnerToken::generate().to_string());
    println!("payments and admin on {base}, in-memory store\n");
    println!("{}", curl_lines(&base, &admin_token));
    let app = app(MemoryStore::new(), Payments::default(), admin_token);
    axum::serve(listener, app).await
}
