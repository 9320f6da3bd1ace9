//! A tonic gRPC server whose `CreateOrder` runs at most once per idempotency key.
//!
//! ```text
//! cargo run -p example-grpc            # listens on 127.0.0.1:50051 (PORT overrides)
//! ```
//!
//! Every call makes an order with a fresh id, so a retried call would make a second order. The
//! layer reads the key from the `idempotency-key` metadata (an HTTP/2 header) and answers a retry
//! with the first call's message and trailers. A quantity of 0 fails with `INVALID_ARGUMENT`,
//! which is recorded and replayed like a success; `UNAVAILABLE` and the other retryable codes
//! release the key instead. The layer's own answers (a duplicate in flight, a reused key, the
//! store down) reach the client as gRPC statuses: `ABORTED`, `FAILED_PRECONDITION`, `UNAVAILABLE`.
//!
//! `tests/grpc.rs` runs the same service over a real socket (`cargo test -p example-grpc`). The
//! example is a package of its own, so that tonic and prost are built only for it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use tonic::transport::Server;
use tonic::{Request, Response, Status};
use tower_idempotency::IdempotencyLayer;
use tower_idempotency::store::MemoryStore;

use example_grpc::orders::orders_server::{Orders, OrdersServer};
use example_grpc::orders::{CreateOrderRequest, Order};

/// Makes orders, each with a new id.
#[derive(Debug, Default)]
struct Shop {
    next_id: AtomicU64,
}

#[tonic::async_trait]
impl Orders for Shop {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let CreateOrderRequest { item, quantity } = request.into_inner();
        if quantity == 0 {
            return Err(Status::invalid_argument("quantity must be at least 1"));
        }
        let id = format!("ord-{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        println!("created {id}: {quantity} x {item}");
        Ok(Response::new(Order { id, item, quantity }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = match std::env::var("PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 50051,
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));

    let idempotency = IdempotencyLayer::new(MemoryStore::new());

    println!("gRPC on http://{addr}; try, twice with the same key:");
    println!(
        "  grpcurl -plaintext -import-path examples/grpc -proto orders.proto \\\n    \
         -H 'idempotency-key: order-1' -d '{{\"item\":\"book\",\"quantity\":1}}' \\\n    \
         {addr} orders.v1.Orders/CreateOrder"
    );
    println!("  (the second call answers with the same order id; \"quantity\":0 replays an error)");
    println!("tests: cargo test -p example-grpc");

    Server::builder()
        .layer(idempotency)
        .add_service(OrdersServer::new(Shop::default()))
        .serve(addr)
        .await?;
    Ok(())
}
