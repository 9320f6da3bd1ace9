//! Tower middleware that makes retried HTTP and gRPC requests safe.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod conformance;
pub mod fingerprint;
pub mod key;
pub mod record;
pub mod store;
