//! Waiting for the owner of a claimed key to finish: woken by the server where a RESP3
//! connection of [`RedisPushWaits`] is set, polling with `GET` otherwise.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use ::redis::{ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::Notify;

use super::RedisStore;
use super::errors::{map_error, unexpected_reply};
use super::layout::{CLAIMED, VERSION};
use crate::store::{Entry, Store, StoreError, StoreErrorKind, StoreKey};

/// A connection of its own on which Redis tells a [`RedisStore`] that a claimed key changed, so
/// that duplicates waiting for their owner ([`wait_for_in_flight`]) are woken by the server
/// instead of polling.
///
/// Set it with [`RedisStore::with_push_waits`]. It needs a **RESP3** connection (Redis 6 or
/// newer; `?protocol=resp3` in the URL, or [`use_protocol`] for a cluster), because the
/// server's messages arrive as RESP3 pushes.
///
/// # How it works
///
/// A waiting duplicate sends, in one round trip on this connection, `CLIENT TRACKING ON` and
/// `GETRANGE <key> 0 1` (the two state bytes of the value, never the record). The read makes the
/// server track the key for this connection ([client-side caching]); when the key is next
/// written, deleted **or expires**, the server sends an `invalidate` push, which wakes every
/// duplicate waiting for that key. So the owner's `complete`, its `release`, and a lease that
/// runs out all wake the waiters, with no publisher, and a lease renewal wakes them too (they
/// read the two bytes again and go back to waiting). No `GET` is sent while waiting.
///
/// Pub/sub would need the owner to publish: a claim whose owner died, or whose lease ran out,
/// would publish nothing, and waiters would sit until their deadline. Keyspace notifications
/// would cover expiry but need `notify-keyspace-events` set on the server. Tracking needs
/// neither.
///
/// On Redis Cluster, the read goes to the node that owns the key's slot, and that node sends
/// the push on the same connection.
///
/// When the connection breaks, every waiter is woken and reads its key again (tracking is set
/// up anew on the new connection with that read). A push that is lost anyway leaves a waiter
/// waiting until its deadline, after which the layer looks at the key itself; it never makes a
/// request run twice.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
///
/// use tower_idempotency::store::{RedisPushWaits, RedisStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1:6379/?protocol=resp3")?;
/// let connection = client.get_connection_manager().await?;
/// let store = RedisStore::new(connection, Duration::from_secs(24 * 60 * 60))
///     .with_push_waits(RedisPushWaits::connect(&client).await?);
/// let layer = tower_idempotency::IdempotencyLayer::new(store)
///     .wait_for_in_flight(Duration::from_secs(5));
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
///
/// [`wait_for_in_flight`]: crate::IdempotencyLayer::wait_for_in_flight
/// [`use_protocol`]: https://docs.rs/redis/1/redis/cluster/struct.ClusterClientBuilder.html#method.use_protocol
/// [client-side caching]: https://redis.io/docs/latest/develop/reference/client-side-caching/
#[derive(Clone)]
pub struct RedisPushWaits {
    connection: Watcher,
    waiters: Arc<Waiters>,
}

/// The connection the waits read on.
#[derive(Clone)]
enum Watcher {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisPushWaits {
    /// Opens a connection of its own to the server of `client`, which must speak RESP3
    /// (`redis://host/?protocol=resp3`); it reconnects by itself (a
    /// [`ConnectionManager`]), with no response timeout of its own: every wait has a deadline.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Other`] when `client` speaks RESP2; the driver's error, mapped as the
    /// store's, when the server cannot be reached.
    pub async fn connect(client: &::redis::Client) -> Result<Self, StoreError> {
        let protocol = client.get_connection_info().redis_settings().protocol();
        if !protocol.supports_resp3() {
            return Err(needs_resp3());
        }
        let waiters = Arc::new(Waiters::default());
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(None)
            .set_push_sender(Waiters::sender(&waiters));
        let connection = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(map_error)?;
        Ok(Self {
            connection: Watcher::Node(connection),
            waiters,
        })
    }

    /// Opens a cluster connection of its own from `builder` (the nodes and settings of the
    /// store's own cluster client), switched to RESP3.
    ///
    /// # Errors
    ///
    /// The driver's error, mapped as the store's, when the cluster cannot be reached.
    pub async fn connect_cluster(builder: ClusterClientBuilder) -> Result<Self, StoreError> {
        let waiters = Arc::new(Waiters::default());
        let connection = builder
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(Waiters::sender(&waiters))
            .build()
            .map_err(map_error)?
            .get_async_connection()
            .await
            .map_err(map_error)?;
        Ok(Self {
            connection: Watcher::Cluster(connection),
            waiters,
        })
    }

    /// Waits until `key` (a Redis key) is no longer claimed, or until `deadline`.
    async fn wait(&self, key: String, deadline: tokio::time::Instant) -> Result<(), StoreError> {
        let waiting = self.waiters.register(&key);
        let read = Read::new(&key);
        loop {
            // Listening before the read: a push sent after it cannot be missed.
            let woken = waiting.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if !self.claimed(&read).await? {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Ok(());
            }
        }
    }

    /// Whether the key is claimed, read so that the server tracks it for this connection.
    async fn claimed(&self, read: &Read) -> Result<bool, StoreError> {
        let reply: Vec<Value> = match &self.connection {
            Watcher::Node(c) => read.pipeline.query_async(&mut c.clone()).await,
            // A cluster connection would route `CLIENT TRACKING ON` by its argument, as if it
            // were a key: the pair goes, as one pipeline, to the node of the key's slot.
            Watcher::Cluster(c) => {
                c.clone()
                    .route_pipeline(read.pipeline.clone(), 0, 2, read.route.clone())
                    .await
            }
        }
        .map_err(map_error)?;
        match reply.as_slice() {
            [_, Value::BulkString(state)] => Ok(state[..] == [VERSION, CLAIMED]),
            [_, other] => Err(unexpected_reply(other)),
            _ => Err(unexpected_reply(&Value::Array(reply))),
        }
    }
}

/// `CLIENT TRACKING ON` and `GETRANGE <key> 0 1` in one round trip, and where they go on a
/// cluster.
struct Read {
    pipeline: ::redis::Pipeline,
    route: SingleNodeRoutingInfo,
}

impl Read {
    fn new(key: &str) -> Self {
        let mut getrange = ::redis::cmd("GETRANGE");
        getrange.arg(key).arg(0).arg(1);
        let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master));
        let mut pipeline = ::redis::pipe();
        pipeline.cmd("CLIENT").arg("TRACKING").arg("ON");
        pipeline.add_command(getrange);
        Self { pipeline, route }
    }
}

impl fmt::Debug for RedisPushWaits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connection = match self.connection {
            Watcher::Node(_) => "ConnectionManager",
            Watcher::Cluster(_) => "ClusterConnection",
        };
        f.debug_struct("RedisPushWaits")
            .field("connection", &connection)
            .field("keys_waited_for", &self.waiters.len())
            .finish()
    }
}

fn needs_resp3() -> StoreError {
    StoreError::with_source(
        StoreErrorKind::Other,
        "RedisPushWaits needs a RESP3 connection: open the client with `?protocol=resp3`",
    )
}

/// The keys waited for, each with the waiters' wake-up.
#[derive(Default)]
struct Waiters {
    keys: Mutex<HashMap<Vec<u8>, Slot>>,
}

struct Slot {
    notify: Arc<Notify>,
    waiters: usize,
}

/// One waiter's interest in a key; dropping it forgets the key when nobody else waits for it.
struct Waiting {
    waiters: Arc<Waiters>,
    key: Vec<u8>,
    notify: Arc<Notify>,
}

impl Waiters {
    /// What the connection hands its pushes to: it runs on the connection's task and only
    /// wakes tasks, so it never blocks the connection.
    fn sender(
        this: &Arc<Self>,
    ) -> impl Fn(PushInfo) -> Result<(), Infallible> + Send + Sync + use<> {
        let waiters = Arc::downgrade(this);
        move |push| {
            if let Some(waiters) = waiters.upgrade() {
                waiters.on_push(&push);
            }
            Ok(())
        }
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Slot>> {
        // The map is consistent after every statement; a panic elsewhere cannot break it.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.keys().len()
    }

    fn register(self: &Arc<Self>, key: &str) -> Waiting {
        let key = key.as_bytes().to_vec();
        let notify = match self.keys().entry(key.clone()) {
            MapEntry::Occupied(mut slot) => {
                slot.get_mut().waiters += 1;
                Arc::clone(&slot.get().notify)
            }
            MapEntry::Vacant(slot) => {
                let notify = Arc::new(Notify::new());
                slot.insert(Slot {
                    notify: Arc::clone(&notify),
                    waiters: 1,
                });
                notify
            }
        };
        Waiting {
            waiters: Arc::clone(self),
            key,
            notify,
        }
    }

    /// `invalidate` with keys wakes their waiters; `invalidate` with null (a flush, or the
    /// server's tracking table was reset) and a lost connection wake everyone.
    fn on_push(&self, push: &PushInfo) {
        match (&push.kind, push.data.as_slice()) {
            (PushKind::Invalidate, [Value::Array(keys)]) => {
                let map = self.keys();
                for key in keys {
                    if let Value::BulkString(key) = key
                        && let Some(slot) = map.get(key)
                    {
                        slot.notify.notify_waiters();
                    }
                }
            }
            (PushKind::Invalidate, _) | (PushKind::Disconnection, _) => {
                for slot in self.keys().values() {
                    slot.notify.notify_waiters();
                }
            }
            _ => {}
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut map = self.waiters.keys();
        if let MapEntry::Occupied(mut slot) = map.entry(std::mem::take(&mut self.key)) {
            slot.get_mut().waiters -= 1;
            if slot.get().waiters == 0 {
                slot.remove();
            }
        }
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Waits until the key is no longer claimed, or `timeout` has passed: woken by the server
    /// with [`RedisPushWaits`], polling otherwise.
    pub(super) async fn wait_for(
        &self,
        key: &StoreKey,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        match &self.push_waits {
            Some(waits) => waits.wait(self.redis_key(key), deadline).await,
            None => self.poll(key, deadline).await,
        }
    }

    /// Polls with `GET` until the key is no longer claimed, or `deadline`.
    async fn poll(&self, key: &StoreKey, deadline: tokio::time::Instant) -> Result<(), StoreError> {
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(());
            }
            tokio::time::sleep(self.poll_interval.min(deadline - now)).await;
            if !matches!(self.get(key).await?, Some(Entry::InProgress { .. })) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalidate(keys: &[&str]) -> PushInfo {
        let keys = keys
            .iter()
            .map(|k| Value::BulkString(k.as_bytes().to_vec()))
            .collect();
        PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Array(keys)],
        }
    }

    /// Whether `waiting` was woken (a `Notified` made before the push).
    async fn woken(waiting: &Waiting, push: PushInfo, waiters: &Waiters) -> bool {
        let woken = waiting.notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        waiters.on_push(&push);
        tokio::time::timeout(Duration::from_millis(10), woken)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn pushes_wake_the_waiters_of_their_keys() {
        let waiters = Arc::new(Waiters::default());
        let a = waiters.register("idem:{a}");
        let b = waiters.register("idem:{b}");
        assert!(woken(&a, invalidate(&["idem:{a}"]), &waiters).await);
        assert!(!woken(&b, invalidate(&["idem:{a}"]), &waiters).await);
        assert!(woken(&b, invalidate(&["idem:{x}", "idem:{b}"]), &waiters).await);
        let flush = PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Nil],
        };
        assert!(woken(&a, flush, &waiters).await);
        let gone = PushInfo {
            kind: PushKind::Disconnection,
            data: vec![],
        };
        assert!(woken(&b, gone, &waiters).await);
        let other = PushInfo {
            kind: PushKind::Message,
            data: vec![Value::BulkString(b"idem:{a}".to_vec())],
        };
        assert!(!woken(&a, other, &waiters).await);
    }

    #[test]
    fn keys_are_forgotten_with_their_last_waiter() {
        let waiters = Arc::new(Waiters::default());
        let first = waiters.register("k");
        let second = waiters.register("k");
        assert!(Arc::ptr_eq(&first.notify, &second.notify));
        drop(first);
        assert_eq!(waiters.len(), 1);
        drop(second);
        assert_eq!(waiters.len(), 0);
    }
}
