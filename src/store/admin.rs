//! What operators ask of a key: [`Store::lookup`](super::Store::lookup) answers with a
//! [`KeyInfo`], [`Store::evict`](super::Store::evict) takes an [`Evict`] and answers with an
//! [`Evicted`].
//!
//! These are not on the request path: the layer never calls them. They exist for the day a key
//! holds a stored error from a bug that is fixed since, and the customer must be let to retry;
//! or for a support engineer asking "why did this request get a 409".

use std::time::Duration;

use super::{Entry, OwnerToken};
use crate::fingerprint::Fingerprint;
use crate::record::Record;

/// What [`Store::lookup`](super::Store::lookup) reads besides the key's state.
///
/// By default a lookup never returns the stored response (it may hold a customer's personal
/// data); ask for it with [`with_response`](Self::with_response).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LookupOptions {
    /// Whether [`KeyInfo::record`] carries the stored record.
    pub with_response: bool,
}

impl LookupOptions {
    /// The default: state, fingerprint and expiry, no response.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also read the stored record (status, headers, body) of a completed key.
    pub fn with_response(mut self, with_response: bool) -> Self {
        self.with_response = with_response;
        self
    }
}

/// The state of a key, as [`Store::lookup`](super::Store::lookup) found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyState {
    /// An owner holds the key under a lease: its request is running (or its instance died and
    /// the lease has not run out yet).
    InProgress {
        /// The owner that holds the claim.
        owner: OwnerToken,
    },
    /// The key is completed: a retry replays its record (which may be "completed, response not
    /// stored").
    Completed,
    /// The key's response expired, but the key is still remembered: a retry gets
    /// `409 result-expired`, never a second execution.
    ResponseExpired,
}

impl KeyState {
    /// A stable lowercase name: `in_progress`, `completed`, `response_expired`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::InProgress { .. } => "in_progress",
            Self::Completed => "completed",
            Self::ResponseExpired => "response_expired",
        }
    }
}

/// What [`Store::lookup`](super::Store::lookup) found for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    state: KeyState,
    fingerprint: Option<Fingerprint>,
    expires_in: Option<Duration>,
    record: Option<Record>,
}

impl KeyInfo {
    /// A key in `state`, claimed or completed by a request with `fingerprint`; no expiry and no
    /// record until they are added with [`with_expires_in`](Self::with_expires_in) and
    /// [`with_record`](Self::with_record).
    pub fn new(state: KeyState, fingerprint: Option<Fingerprint>) -> Self {
        Self {
            state,
            fingerprint,
            expires_in: None,
            record: None,
        }
    }

    /// The information in `entry`, as [`Store::get`](super::Store::get) returns it; the record
    /// only when `options` ask for it. No expiry: add it with
    /// [`with_expires_in`](Self::with_expires_in) when the store knows it.
    pub fn from_entry(entry: Entry, options: LookupOptions) -> Self {
        match entry {
            Entry::InProgress { fingerprint, token } => Self {
                state: KeyState::InProgress { owner: token },
                fingerprint,
                expires_in: None,
                record: None,
            },
            Entry::Completed(record) => Self {
                state: if record.is_response_expired() {
                    KeyState::ResponseExpired
                } else {
                    KeyState::Completed
                },
                fingerprint: record.fingerprint().copied(),
                expires_in: None,
                record: options.with_response.then_some(record),
            },
        }
    }

    /// Sets how long the current state lasts from now (see [`expires_in`](Self::expires_in)).
    pub fn with_expires_in(mut self, expires_in: Duration) -> Self {
        self.expires_in = Some(expires_in);
        self
    }

    /// Adds the stored record, for a lookup whose [`LookupOptions::with_response`] asked for it.
    pub fn with_record(mut self, record: Record) -> Self {
        self.record = Some(record);
        self
    }

    /// The key's state.
    pub fn state(&self) -> KeyState {
        self.state
    }

    /// The fingerprint of the request that claimed or completed the key, when it had one.
    pub fn fingerprint(&self) -> Option<&Fingerprint> {
        self.fingerprint.as_ref()
    }

    /// How long the current state lasts from now, as the store counts it: the rest of the lease
    /// of a claim, of the response retention of a completed key, of the key retention of a key
    /// whose response expired. `None` when the store cannot tell (the default
    /// [`Store::lookup`](super::Store::lookup)).
    ///
    /// A completed key whose store remembers keys longer than responses turns into
    /// [`KeyState::ResponseExpired`] when this runs out; otherwise the key is free then.
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_in
    }

    /// The stored record of a completed key, when [`LookupOptions::with_response`] asked for
    /// it. Its [`response`](Record::response) decodes status, headers, body and trailers.
    pub fn record(&self) -> Option<&Record> {
        self.record.as_ref()
    }
}

/// What [`Store::evict`](super::Store::evict) may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Evict {
    /// Only a completed key (with or without its response): the next request with the key
    /// runs again. An in-progress claim is left alone and reported as
    /// [`Evicted::Refused`].
    CompletedOnly,
    /// Whatever is there, an in-progress claim included.
    ///
    /// **Dangerous.** The claim's owner may still be running: a retry that comes now runs the
    /// request a second time, concurrently with the first. When the first one finishes, its
    /// record lands if nobody claimed the key since (`MemoryStore` and `RedisStore` accept a
    /// `complete` on a free key, so that short outages do not re-run requests) and is refused
    /// otherwise; `PostgresStore` refuses it always (its `complete` needs the owner's row), and
    /// a forced `committed` row there has its effects committed already. Use it only for a
    /// claim whose owner is known to be gone and whose lease is too long to wait out;
    /// [`KeyState::InProgress`] names the owner.
    Force,
}

/// What [`Store::evict`](super::Store::evict) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Evicted {
    /// There was no entry (never used, or expired).
    Nothing,
    /// A completed key (or a remembered key whose response expired) was removed.
    Record,
    /// An in-progress claim was removed ([`Evict::Force`]).
    Claim {
        /// The owner that held it.
        owner: OwnerToken,
    },
    /// An in-progress claim was left in place ([`Evict::CompletedOnly`]).
    Refused {
        /// The owner that holds it.
        owner: OwnerToken,
    },
}

impl Evicted {
    /// A stable lowercase name: `nothing`, `record`, `claim`, `refused`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Nothing => "nothing",
            Self::Record => "record",
            Self::Claim { .. } => "claim",
            Self::Refused { .. } => "refused",
        }
    }
}
