//! The metrics the layer reports through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`).
//!
//! The layer only records; the application installs the recorder it wants (for Prometheus,
//! `metrics-exporter-prometheus`'s `PrometheusBuilder`, as `examples/quickstart.rs` does). With
//! no recorder installed, every call is a no-op. Without the feature, the code that records is
//! not compiled in at all.
//!
//! # Names and labels
//!
//! Every name starts with `idempotency_`; counters end in `_total`, durations are in seconds
//! (`_seconds`), as the Prometheus conventions ask. Labels take a handful of fixed values each,
//! so the number of series stays bounded: never the key, the path or the tenant.
//!
//! | name | kind | labels | what it counts |
//! | --- | --- | --- | --- |
//! | `idempotency_requests_total` | counter | `outcome`, and `reason` when `outcome="rejected"` | one per request the layer sees, by its [`Outcome`](crate::Outcome) ([`as_str`](crate::Outcome::as_str), [`RejectReason::as_str`](crate::RejectReason::as_str)) |
//! | `idempotency_store_duration_seconds` | histogram | `operation`, `result` | the latency of each store call the layer makes, its timeout included |
//! | `idempotency_detached_executions` | gauge | | handlers running on after their client went away ([`detach`](crate::IdempotencyLayer::detach)) |
//! | `idempotency_resends_total` | counter | `operation` | store writes sent in the background, one per attempt: re-sends of a `complete` or `release` whose answer was lost, and releases of claims whose request was dropped |
//! | `idempotency_refused_records_total` | counter | | records the store refused because another owner claimed the key after this lease ran out (the request may run again: look at these) |
//!
//! Label values:
//!
//! - `outcome`: `recorded`, `released`, `not_stored`, `replayed`, `replay_unavailable`,
//!   `conflict`, `mismatch`, `rejected`, `store_unavailable`, `unprotected`, `bypassed`;
//! - `reason`: `missing_key`, `invalid_key`, `missing_scope`, `body_too_large`,
//!   `unreadable_body`;
//! - `operation`: `begin`, `get`, `complete`, `release`, `renew`, `wait` (a duplicate waiting
//!   for its owner with [`wait_for_in_flight`](crate::IdempotencyLayer::wait_for_in_flight):
//!   its duration is the wait); for re-sends `complete` or `release`;
//! - `result`: `ok`, or the [`StoreErrorKind`](crate::store::StoreErrorKind): `timeout`,
//!   `unavailable`, `not_owner`, `full`, `corrupt`, `other`.
//!
//! A request moves `idempotency_requests_total` exactly once, also when its handler runs on
//! detached (the outcome is counted when it is known, in the detached task) and when it panics
//! (`released`).
//!
//! # Example
//!
//! ```
//! use metrics_util::debugging::DebuggingRecorder;
//! # use tower_idempotency::metrics::REQUESTS;
//! // Any recorder: Prometheus, StatsD, OpenTelemetry, or this one from `metrics-util`.
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! recorder.install().unwrap();
//! // ... serve requests through an `IdempotencyLayer` ...
//! # let _ = (snapshotter, REQUESTS);
//! ```

/// `idempotency_requests_total`: a counter per [`Outcome`](crate::Outcome).
pub const REQUESTS: &str = "idempotency_requests_total";
/// `idempotency_store_duration_seconds`: a histogram of store-call latency.
pub const STORE_DURATION: &str = "idempotency_store_duration_seconds";
/// `idempotency_detached_executions`: a gauge of handlers running detached.
pub const DETACHED: &str = "idempotency_detached_executions";
/// `idempotency_resends_total`: a counter of background re-sends.
pub const RESENDS: &str = "idempotency_resends_total";
/// `idempotency_refused_records_total`: a counter of records the store refused.
pub const REFUSED_RECORDS: &str = "idempotency_refused_records_total";
