//! The `orders.v1.Orders` service of the tonic example: the code tonic-prost-build generates
//! from `orders.proto`, checked in so that the example and its tests build without `protoc`.
//!
//! The server is `src/main.rs` (`cargo run -p example-grpc`); `tests/grpc.rs` runs it over a
//! real socket (`cargo test -p example-grpc`).

/// Messages, client and server of `orders.v1.Orders`, as generated (see the file's header).
#[allow(missing_docs)]
pub mod orders;
