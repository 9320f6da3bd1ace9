//! Waiting for a key by `LISTEN`/`NOTIFY`: one listener connection per store, fanned out to the
//! tasks that wait.
//!
//! `complete` and `release` call `pg_notify(<table name>, <hex key>)` in their own statement,
//! so the notification is sent exactly when their change commits. The store's listener task
//! holds one connection of the pool in `LISTEN` and wakes the waiters of the key it names.
//! Notifications are not queued for a listener that is not connected: whenever the listener
//! (re)connects, it wakes every waiter, and each looks at its key again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How long the listener pauses after it failed to connect, before it tries again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

/// How many waiters wait for one key, and what wakes them.
type Slot = (usize, Arc<Notify>);

/// The waiters of each key, and whether the listener is listening.
#[derive(Debug, Default)]
struct Waiters {
    keys: Mutex<HashMap<[u8; 32], Slot>>,
    listening: AtomicBool,
}

impl Waiters {
    fn wake(&self, payload: &str) {
        let Some(key) = parse_hex(payload) else {
            return;
        };
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, notify)) = keys.get(&key) {
            notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, notify) in keys.values() {
            notify.notify_waiters();
        }
    }
}

/// A store's listener: started by the first wait, stopped when the store is dropped.
#[derive(Debug)]
pub(super) struct Listener {
    waiters: Arc<Waiters>,
    task: OnceLock<JoinHandle<()>>,
}

impl Listener {
    pub(super) fn new() -> Self {
        Self {
            waiters: Arc::default(),
            task: OnceLock::new(),
        }
    }

    /// Whether notifications are being received now; when not, waiters poll.
    pub(super) fn is_listening(&self) -> bool {
        self.waiters.listening.load(Ordering::Acquire)
    }

    /// Registers interest in `key` and starts the listener if it is not running.
    ///
    /// The returned registration wakes on a notification for `key` from the moment this
    /// returns: look at the key *after* registering, then wait, and nothing is missed.
    pub(super) fn register(&self, pool: &PgPool, channel: &str, key: [u8; 32]) -> Registration {
        self.task.get_or_init(|| {
            tokio::spawn(listen(
                pool.clone(),
                channel.to_owned(),
                Arc::clone(&self.waiters),
            ))
        });
        let notify = {
            let mut keys = self
                .waiters
                .keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let slot = keys.entry(key).or_default();
            slot.0 += 1;
            Arc::clone(&slot.1)
        };
        Registration {
            waiters: Arc::clone(&self.waiters),
            key,
            notify,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

/// One waiter's interest in one key; dropping it unregisters.
pub(super) struct Registration {
    waiters: Arc<Waiters>,
    key: [u8; 32],
    notify: Arc<Notify>,
}

impl Registration {
    /// The handle to wait on; create the `Notified` future and `enable` it before looking at
    /// the key.
    pub(super) fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut keys = self
            .waiters
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = keys.get_mut(&self.key) {
            slot.0 -= 1;
            if slot.0 == 0 {
                keys.remove(&self.key);
            }
        }
    }
}

/// The listener task: listens on `channel` and wakes waiters, reconnecting as needed, until
/// the pool is closed or the task is aborted.
async fn listen(pool: PgPool, channel: String, waiters: Arc<Waiters>) {
    while !pool.is_closed() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::debug!(error = %e, "idempotency listener cannot connect");
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(&channel).await {
            tracing::debug!(error = %e, "idempotency listener cannot LISTEN");
            tokio::time::sleep(RECONNECT_PAUSE).await;
            continue;
        }
        waiters.listening.store(true, Ordering::Release);
        // What ended before the LISTEN took effect was not heard: everyone looks again.
        waiters.wake_all();
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => waiters.wake(notification.payload()),
                // The connection broke and was made again: notifications may have been lost.
                Ok(None) => waiters.wake_all(),
                Err(e) => {
                    tracing::debug!(error = %e, "idempotency listener lost its connection");
                    break;
                }
            }
        }
        waiters.listening.store(false, Ordering::Release);
        waiters.wake_all();
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// 64 hex digits as 32 bytes.
fn parse_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = digit(s[2 * i])? << 4 | digit(s[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_payload_that_encode_hex_makes() {
        let key = crate::store::StoreKey::new(Some("s"), "k");
        assert_eq!(parse_hex(&key.to_hex()), Some(*key.digest()));
        assert_eq!(parse_hex("00"), None);
        assert_eq!(parse_hex(&"g".repeat(64)), None);
    }

    #[tokio::test]
    async fn registrations_are_counted_and_removed() {
        let listener = Listener::new();
        let waiters = Arc::clone(&listener.waiters);
        let key = [7; 32];
        let notify = || {
            let keys = waiters.keys.lock().unwrap();
            keys.get(&key).map(|slot| slot.0)
        };
        let make = || Registration {
            waiters: Arc::clone(&waiters),
            key,
            notify: {
                let mut keys = waiters.keys.lock().unwrap();
                let slot = keys.entry(key).or_default();
                slot.0 += 1;
                Arc::clone(&slot.1)
            },
        };
        let (a, b) = (make(), make());
        assert_eq!(notify(), Some(2));
        {
            let woken = a.notify().notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            waiters.wake(&hex32(&key));
            woken.await;
        }
        drop(a);
        assert_eq!(notify(), Some(1));
        drop(b);
        assert_eq!(notify(), None);
    }

    fn hex32(key: &[u8; 32]) -> String {
        crate::hex::hex(key)
    }
}
