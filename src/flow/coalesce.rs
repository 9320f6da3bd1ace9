//! In-process coalescing: a duplicate of a key that this instance is already claiming or running
//! waits on (or is answered from) that request instead of asking the store again.
//!
//! The first request for a key on an instance *leads*: it registers the key, asks the store,
//! and publishes what it learns: the store's answer to its `begin`, then, when it owns the key,
//! the end of its run. Requests for the same key that arrive meanwhile *follow*: they share the
//! lead's `begin` (concurrent replays of one key cost one store call), get `409` or the
//! mismatch at once while the lead runs, or, with
//! [`wait_for_in_flight`](crate::IdempotencyLayer::wait_for_in_flight), the lead's record the
//! moment it is recorded. When the lead ends without an answer for them (it released the key,
//! failed, or was dropped), each follower asks the store itself, as a retry would. Exactly one
//! execution across instances stays the store's job; this only saves round trips.
//!
//! On by default for stores whose calls cross the network ([`Store::is_remote`]); see
//! [`IdempotencyLayer::coalesce`](crate::IdempotencyLayer::coalesce).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;
use tokio::time::Instant;

use super::claim::{Claim, same_request};
use crate::fingerprint::Fingerprint;
use crate::problem::ProblemKind;
use crate::record::Record;
use crate::store::StoreKey;

/// The keys one layer is claiming or running, by store-key digest.
#[derive(Debug, Default)]
pub(crate) struct Inflight {
    keys: Mutex<HashMap<[u8; 32], watch::Sender<Local>>>,
}

/// What the lead has learnt about its key.
#[derive(Debug, Clone)]
pub(super) enum Local {
    /// The lead's `begin` is in flight.
    Claiming,
    /// The lead owns the key and runs it, for a request with this fingerprint.
    Running(Option<Fingerprint>),
    /// The key is completed with this record: found by the lead's `begin`, or recorded by it.
    Completed(Record),
    /// Another instance holds the key, for a request with this fingerprint.
    Elsewhere(Option<Fingerprint>),
    /// The lead ended without an answer for the others: each asks the store itself.
    Over,
}

/// How a request joined the requests for its key.
pub(super) enum Joined {
    /// It is the first: it asks the store and publishes.
    Lead(Lead),
    /// Another request leads; this one follows it.
    Follow(watch::Receiver<Local>),
}

/// What a follower makes of the lead's news.
pub(super) enum Followed {
    /// Its answer, without a store call.
    Answer(Claim),
    /// The lead has no answer for it: it asks the store itself.
    Retry,
}

/// The leading request of a key on this instance. Dropped, it unregisters the key; followers
/// still waiting then ask the store themselves, unless it published a final answer.
///
/// Boxed: every protected request's claim future holds an `Option<Lead>`, which is then one
/// word, so that coalescing costs nothing in size where it is off (the memory store).
pub(super) struct Lead(Box<Registered>);

/// A key this instance leads: where it is registered, and the channel of its news.
struct Registered {
    inflight: Arc<Inflight>,
    digest: [u8; 32],
    news: watch::Sender<Local>,
}

impl Inflight {
    /// Leads `key`, or follows the request that does.
    pub(super) fn join(self: &Arc<Self>, key: &StoreKey) -> Joined {
        let mut keys = self.keys();
        if let Some(news) = keys.get(key.digest()) {
            return Joined::Follow(news.subscribe());
        }
        let (news, _) = watch::channel(Local::Claiming);
        keys.insert(*key.digest(), news.clone());
        Joined::Lead(Lead(Box::new(Registered {
            inflight: Arc::clone(self),
            digest: *key.digest(),
            news,
        })))
    }

    fn keys(&self) -> MutexGuard<'_, HashMap<[u8; 32], watch::Sender<Local>>> {
        // The map stays consistent whatever panicked while it was held.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Lead {
    /// Tells the followers.
    pub(super) fn publish(&self, news: Local) {
        self.0.news.send_replace(news);
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        let Registered {
            inflight,
            digest,
            news: sender,
        } = &*self.0;
        sender.send_if_modified(|news| {
            let open = matches!(news, Local::Claiming | Local::Running(_));
            if open {
                *news = Local::Over;
            }
            open
        });
        let mut keys = inflight.keys();
        if keys
            .get(digest)
            .is_some_and(|news| news.same_channel(sender))
        {
            keys.remove(digest);
        }
    }
}

/// Follows the lead of a key until it has an answer for a request with fingerprint `ours`, or
/// until `deadline` (the wait for in-flight duplicates; `None`: do not wait for a run).
pub(super) async fn follow(
    mut news: watch::Receiver<Local>,
    ours: Option<&Fingerprint>,
    deadline: Option<Instant>,
) -> Followed {
    loop {
        let now = news.borrow_and_update().clone();
        match now {
            Local::Claiming => {
                // The lead's `begin` is bounded by the store timeout.
                if news.changed().await.is_err() {
                    return Followed::Retry;
                }
                continue;
            }
            Local::Completed(record) => {
                return Followed::Answer(if same_request(record.fingerprint(), ours) {
                    Claim::Replay(record)
                } else {
                    Claim::Problem(ProblemKind::Mismatch)
                });
            }
            Local::Over => return Followed::Retry,
            Local::Running(theirs) | Local::Elsewhere(theirs)
                if !same_request(theirs.as_ref(), ours) =>
            {
                return Followed::Answer(Claim::Problem(ProblemKind::Mismatch));
            }
            // Held by another instance: a waiting request waits through the store.
            Local::Elsewhere(_) if deadline.is_some() => return Followed::Retry,
            Local::Running(_) | Local::Elsewhere(_) => {}
        }
        let Some(deadline) = deadline.filter(|d| Instant::now() < *d) else {
            return Followed::Answer(Claim::Problem(ProblemKind::InProgress));
        };
        match tokio::time::timeout_at(deadline, news.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Followed::Retry,
            Err(_) => return Followed::Answer(Claim::Problem(ProblemKind::InProgress)),
        }
    }
}
