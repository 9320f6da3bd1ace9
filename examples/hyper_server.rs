//! A plain hyper 1 server (HTTP/1.1 and HTTP/2 on one port) whose `POST /orders` runs at most
//! once per `Idempotency-Key`.
//!
//! ```text
//! cargo run --example hyper_server            # listens on 127.0.0.1:3001 (PORT overrides)
//! ```
//!
//! The layer wraps a `tower::service_fn`, and hyper-util's `TowerToHyperService` hands the
//! layered service to hyper. `tests/hyper.rs` runs the same stack over a real socket.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_idempotency::IdempotencyLayer;
use tower_idempotency::body::RequestBody;
use tower_idempotency::store::MemoryStore;

/// `POST /orders` with the item as the body makes an order with a fresh id.
async fn handle(
    next_id: Arc<AtomicU64>,
    req: Request<RequestBody<Incoming>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let respond = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    };
    if req.method() != Method::POST || req.uri().path() != "/orders" {
        return Ok(respond(
            StatusCode::NOT_FOUND,
            "{\"error\":\"not found\"}".into(),
        ));
    }
    let item = match req.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(_) => {
            return Ok(respond(
                StatusCode::BAD_REQUEST,
                "{\"error\":\"bad body\"}".into(),
            ));
        }
    };
    let id = next_id.fetch_add(1, Ordering::Relaxed) + 1;
    println!("created ord-{id}: {item}");
    Ok(respond(
        StatusCode::CREATED,
        format!("{{\"id\":\"ord-{id}\",\"item\":{item:?}}}"),
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = match std::env::var("PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 3001,
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));

    let next_id = Arc::new(AtomicU64::new(0));
    let service = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .service_fn(move |req| handle(Arc::clone(&next_id), req));

    let listener = TcpListener::bind(addr).await?;
    println!("HTTP/1.1 and HTTP/2 on http://{addr}; try, twice with the same key:");
    println!("  curl -i http://{addr}/orders -H 'Idempotency-Key: order-1' -d book");
    println!(
        "  curl -i --http2-prior-knowledge http://{addr}/orders -H 'Idempotency-Key: order-1' -d book"
    );
    println!("  (the second answer is the first one replayed, with `idempotent-replayed: true`;");
    println!("   the same key with another body gets 422)");
    println!("tests: cargo test --test hyper");

    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let conn = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = conn.serve_connection(TokioIo::new(stream), service).await {
                eprintln!("connection failed: {e}");
            }
        });
    }
}
