//! Tower middleware that makes retried HTTP and gRPC requests safe.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod fingerprint;
pub mod key;
pub mod record;
pub mod store;
