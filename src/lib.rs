//! Tower middleware that makes retried HTTP and gRPC requests safe.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
mod extensions;
pub mod fingerprint;
mod future;
pub mod key;
mod layer;
pub mod policy;
pub mod problem;
pub mod record;
mod service;
pub mod store;

pub use crate::extensions::{IdempotencyClaim, Outcome};
pub use crate::future::ResponseFuture;
pub use crate::layer::{DetachedTasks, IdempotencyLayer};
pub use crate::policy::Disposition;
pub use crate::service::Idempotency;
