//! The layer's configuration, shared by every service and request it makes.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Method, request};
use tokio_util::task::TaskTracker;

use crate::fingerprint::Fingerprint;
use crate::policy::{self, DefaultRecordPolicy, RecordPolicy};
use crate::problem::Problems;

pub(crate) type ScopeFn = Arc<dyn Fn(&request::Parts) -> Option<String> + Send + Sync>;
pub(crate) type FingerprintFn = Arc<dyn Fn(&request::Parts, &Bytes) -> Fingerprint + Send + Sync>;

/// How requests are fingerprinted.
#[derive(Clone)]
pub(crate) enum Fingerprinting {
    /// SHA-256 over method, path, query, content type and body.
    Default,
    /// A user function over the request head and the buffered body.
    Custom(FingerprintFn),
    /// No fingerprint; the body is not buffered.
    Off,
}

/// Everything the layer was configured with, shared by every service it makes.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) methods: Vec<Method>,
    pub(crate) header: HeaderName,
    pub(crate) max_key_len: usize,
    pub(crate) require_key: bool,
    pub(crate) scope: Option<ScopeFn>,
    /// Whether requests that a scope function finds no scope for share one global key space
    /// (the explicit opt-in) instead of being refused with `403`.
    pub(crate) unscoped_share_keys: bool,
    /// Set once the layer has warned that it has no scope function while requests carry
    /// credentials; shared by every service the layer makes.
    pub(crate) warned_unscoped: Arc<AtomicBool>,
    pub(crate) fingerprint: Fingerprinting,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) lease: Duration,
    pub(crate) wait: Option<Duration>,
    pub(crate) detach: bool,
    pub(crate) fail_open: bool,
    pub(crate) store_timeout: Duration,
    pub(crate) replayed_header: HeaderName,
    pub(crate) skipped_headers: Vec<HeaderName>,
    /// Records or releases the responses that carry no `Disposition` of their own.
    pub(crate) record_policy: Arc<dyn RecordPolicy>,
    /// The header that tells when a recorded response expires, and the store's retention.
    pub(crate) expiry: Option<(HeaderName, Duration)>,
    pub(crate) problems: Problems,
    pub(crate) tasks: TaskTracker,
    /// Whether duplicates are coalesced in process; `None`: when the store is remote.
    pub(crate) coalesce: Option<bool>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            methods: policy::default_methods(),
            header: HeaderName::from_static("idempotency-key"),
            max_key_len: 255,
            require_key: false,
            scope: None,
            unscoped_share_keys: false,
            warned_unscoped: Arc::new(AtomicBool::new(false)),
            fingerprint: Fingerprinting::Default,
            max_request_body: 1024 * 1024,
            max_response_body: 1024 * 1024,
            lease: Duration::from_secs(30),
            wait: None,
            detach: true,
            fail_open: false,
            store_timeout: Duration::from_secs(2),
            replayed_header: HeaderName::from_static("idempotent-replayed"),
            skipped_headers: policy::default_skipped_headers(),
            record_policy: Arc::new(DefaultRecordPolicy),
            expiry: None,
            problems: Problems::default(),
            tasks: TaskTracker::new(),
            coalesce: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fingerprint = match self.fingerprint {
            Fingerprinting::Default => "sha256",
            Fingerprinting::Custom(_) => "<fn>",
            Fingerprinting::Off => "off",
        };
        f.debug_struct("Config")
            .field("methods", &self.methods)
            .field("header", &self.header)
            .field("max_key_len", &self.max_key_len)
            .field("require_key", &self.require_key)
            .field("scope", &self.scope.as_ref().map(|_| "<fn>"))
            .field("unscoped_share_keys", &self.unscoped_share_keys)
            .field("fingerprint", &fingerprint)
            .field("max_request_body", &self.max_request_body)
            .field("max_response_body", &self.max_response_body)
            .field("lease", &self.lease)
            .field("wait", &self.wait)
            .field("detach", &self.detach)
            .field("fail_open", &self.fail_open)
            .field("store_timeout", &self.store_timeout)
            .field("replayed_header", &self.replayed_header)
            .field("skipped_headers", &self.skipped_headers)
            .field("record_policy", &"<policy>")
            .field("expiry", &self.expiry)
            .field("problems", &self.problems)
            .field("coalesce", &self.coalesce)
            .finish()
    }
}
