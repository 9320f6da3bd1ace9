//! The Redis store; everything about it is documented on [`RedisStore`].
//!
//! One file per concern: the store and its builder here, the value layout in `layout.rs`, the
//! owner-checked Lua scripts in `scripts.rs`, waiting in `wait.rs`, `check_config` in
//! `config.rs`, the mapping of the driver's errors in `errors.rs`, and the operator's `lookup`
//! and `evict` in `admin.rs`.

mod admin;
mod config;
mod errors;
mod fenced;
mod layout;
mod retention;
mod scripts;
mod wait;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::Value;
use ::redis::aio::ConnectionLike;
use bytes::Bytes;

pub use self::config::{ConfigReport, Persistence};
use self::errors::{map_begin_error, map_error, unexpected_reply};
use self::fenced::{Commands, Held};
use self::layout::{Claim, decode, millis};
use self::retention::read_tombstone;
use self::scripts::RELEASE;
pub use self::wait::RedisPushWaits;
use super::{
    Begin, DEFAULT_KEY_TTL, DEFAULT_POLL_INTERVAL, Entry, Evict, Evicted, Fingerprint, KeyInfo,
    LookupOptions, OwnerToken, Record, Store, StoreError, StoreKey,
};

/// A [`Store`] in Redis or Redis Cluster, generic over the connection type: claims and records
/// shared by many app instances.
///
/// The store works over any async connection of the [`redis`](https://docs.rs/redis/1/redis/index.html) crate that implements
/// [`ConnectionLike`] and is cheap to clone:
///
/// - [`MultiplexedConnection`](https://docs.rs/redis/1/redis/aio/struct.MultiplexedConnection.html): one pipelined connection to
///   one node; it does not reconnect by itself;
/// - [`ConnectionManager`](https://docs.rs/redis/1/redis/aio/struct.ConnectionManager.html): the same, reconnecting in the
///   background after the connection breaks (what most single-node deployments want). On RESP2
///   it notices a broken connection only when a command fails, so one operation per break fails
///   (ambiguously; the layer answers `503`); on RESP3 (`redis://host/?protocol=resp3`) it hears
///   the disconnect and reconnects before the next command;
/// - [`ClusterConnection`](https://docs.rs/redis/1/redis/cluster_async/struct.ClusterConnection.html): Redis Cluster; every key
///   of one record lives in one hash slot, so every operation is a single-slot command.
///
/// It needs **Redis 7.0 or newer** (or a server that speaks its commands): `begin` is a plain
/// `SET` with `NX` and `GET` together, which older servers refuse; [`check_config`] checks the
/// version at startup, and on an older server every `begin` fails with an error that says so.
///
/// [`check_config`]: RedisStore::check_config
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
///
/// use redis::IntoConnectionInfo;
/// use redis::aio::ConnectionManagerConfig;
/// use redis::io::tcp::TcpSettings;
/// use tower_idempotency::store::{RedisPushWaits, RedisStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // RESP3, so that waiting duplicates can be woken by the server (`RedisPushWaits`), and
/// // TCP_NODELAY, which the `redis` crate leaves off (see "Connections" below).
/// let info = "redis://127.0.0.1:6379/?protocol=resp3"
///     .into_connection_info()?
///     .set_tcp_settings(TcpSettings::default().set_nodelay(true));
/// let client = redis::Client::open(info)?;
/// // The layer bounds every store call (2 s); the driver's own 500 ms would cut in first.
/// let config = ConnectionManagerConfig::new().set_response_timeout(None);
/// let connection = client.get_connection_manager_with_config(config).await?;
/// // Completed responses are kept for 24 hours.
/// let store = RedisStore::new(connection, Duration::from_secs(24 * 60 * 60))
///     .with_prefix("billing:idem:")
///     .with_push_waits(RedisPushWaits::connect(&client).await?);
/// // Once at startup: warns when the server may evict claims or records.
/// store.check_config().await?;
/// let layer = tower_idempotency::IdempotencyLayer::new(store)
///     .wait_for_in_flight(Duration::from_secs(5));
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
///
/// # Connections
///
/// Build the client with **`TCP_NODELAY` on**, as above (for a cluster,
/// `ClusterClientBuilder::tcp_settings`). The `redis` crate 1.x leaves it off (2.0 turns it on),
/// so Nagle's algorithm may hold a small write back until the previous one is acknowledged; over
/// a real network, where that acknowledgement can itself be delayed, commands of a multiplexed
/// connection wait behind each other. The store cannot set it: it gets the connection already
/// made. On loopback, with client and server on two busy cores, the benchmarks measured no gain
/// from it (paired, the layer on a NODELAY connection did 0.85–0.97 of the throughput on the
/// default one: Nagle batched writes there); see `BENCHMARKS.md`.
///
/// # Keys
///
/// Every record is one Redis string under
///
/// ```text
/// {prefix}{<64 hex digits of StoreKey::digest()>}
/// ```
///
/// for example `idem:{9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}`. The
/// prefix defaults to `idem:` ([`RedisStore::with_prefix`]). The braces are a Redis Cluster *hash
/// tag*: the slot is computed from the digest alone. The digest is SHA-256 over the scope and the
/// client's key ([`StoreKey`]), so clients cannot choose the slot, make keys longer than 64 + prefix
/// bytes, or inject separators. The only other key is the record's tombstone,
/// `{prefix}{<digest>}:t` (see *Key retention*), in the same slot.
///
/// # Value layout, version 1
///
/// | bytes | field |
/// | --- | --- |
/// | 1 | layout version, `1` |
/// | 1 | state: `1` claimed (in progress), `2` completed |
/// | 16 | owner token ([`OwnerToken::to_bytes`], big-endian) |
/// | 0 or 32 | claimed: the fingerprint, when the claim has one |
/// | … | completed: the [`Record`] encoding (see [`crate::record`]) |
///
/// A claim is 18 or 50 bytes and expires with its lease (`PX`). A completed value keeps the
/// owner's token, so that a `complete` the driver sends twice is recognised, and expires after the
/// store's retention time. A value that does not follow this layout reads as
/// [`StoreErrorKind::Corrupt`](crate::store::StoreErrorKind::Corrupt) and is never overwritten by `begin`.
///
/// # Commands
///
/// Each operation is **one round trip**, of one command (or two pipelined, for the tombstone;
/// `get` of a free key reads the tombstone in a second one):
///
/// | operation | command | what runs on the server |
/// | --- | --- | --- |
/// | `begin` | `SET <claim> NX PX <lease> GET`, and `GET <tombstone>` in the same round trip where keys outlive their responses | writes the claim where the key is free; answers with the value it found otherwise |
/// | `complete` on Valkey ≥ 8.1, Redis ≥ 8.4 | `SET <record> IFEQ <claim> PX <ttl> GET`, and `SET <tombstone> PX <key_ttl>` in the same round trip | writes only over this token's claim (a fenced compare-and-set); answers with the value it found |
/// | `complete` on Redis 7.x | `EVALSHA` | `GETRANGE 0 17` (owner check); `SET … PX <ttl>`; the tombstone's `SET … PX <key_ttl>` |
/// | `release` | `EVALSHA` | `GETRANGE 0 17`; `DEL` |
/// | `renew` on Valkey ≥ 8.1, Redis ≥ 8.4 | `SET <claim> IFEQ <claim> PX <lease> GET` | the same value with a new expiry, only where the claim is there |
/// | `renew` on Redis 7.x | `EVALSHA` | `GETRANGE 0 17`; `PEXPIRE` |
/// | `get` | `GET`; where the key is free and keys outlive their responses, `GET <tombstone>` | |
///
/// A `begin` on a completed key returns the record in the same reply, so a replay costs one
/// round trip, and costs the server about what a plain `GET` does: `begin`, the one command of
/// every request, is no script. The owner-checked operations are: scripts run by SHA
/// ([`Script`](https://docs.rs/redis/1/redis/struct.Script.html)); after `SCRIPT FLUSH` or a restart, the first call gets `NOSCRIPT`, loads the
/// script and runs it again (three round trips, once per script and node). Owner checks compare
/// the stored token inside the script, so they are atomic.
///
/// Where the server has `SET … IFEQ` (found once per store, from `INFO server`, by
/// [`check_config`](RedisStore::check_config) or the first `complete` or `renew`), those two
/// are that one plain command, which the server runs several times cheaper than a script; turn
/// it off with [`with_fenced_commands(false)`](RedisStore::with_fenced_commands). `IFEQ`
/// compares whole values, and a claim holds the request's fingerprint: at `complete` the record
/// carries the fingerprint it was claimed with; for `renew`, which gets only the token, the
/// store remembers the claims it made (in memory, bounded, forgotten at `complete`, `release`
/// and the end of the lease). Where the guess is wrong (a claim made through another store
/// instance), the reply shows this token's claim and the command is sent once more against it.
///
/// `release` stays a script on every server. Valkey 8.1 has no conditional delete; Valkey 9
/// (`DELIFEQ`) and Redis 8.4 (`DELEX … IFEQ`) have one, but no server of either is in this
/// crate's tests, and `release` is off the hot path (it runs after a failed handler).
///
/// `begin` by a token that already holds the claim answers [`Begin::New`] again, and `complete`
/// by the token that already completed the key succeeds: a command re-sent after a lost reply is
/// harmless. A re-sent `release` that already took effect fails with
/// [`StoreErrorKind::NotOwner`](crate::store::StoreErrorKind::NotOwner) (the claim is gone), which the layer only logs.
///
/// # Key retention
///
/// A key outlives its response: `complete` writes, next to the record, a *tombstone*
/// `{prefix}{<digest>}:t` that expires after the key retention ([`with_key_ttl`], 7 days by
/// default, counted from `complete` like the record's `ttl`). It has the layout of a completed
/// value holding [`Record::response_expired`]: the token and the fingerprint, no response, about
/// 40 bytes of value plus Redis's own per-key overhead (roughly 100 bytes with the key).
///
/// `begin` reads the tombstone in the same round trip as its `SET … NX … GET`. When the record
/// has expired and the tombstone is there, that `SET` has just claimed the key: the store drops
/// the claim again (the owner-checked `release`) and answers with the tombstone, so the layer
/// answers [`result-expired`](crate::problem#result-expired) (`409`), or the mismatch for another
/// request under the key, and nothing runs a second time. Should that drop fail, the claim ends
/// with its lease; duplicates meanwhile get `409` as for a key in progress.
///
/// On the fenced path the tombstone is written in the same round trip as the record whether or
/// not the record lands, since no command fences a second key; where the record is refused (the
/// owner's lease ran out and another owner holds the key), the tombstone stands for the execution
/// that ran and could not be recorded, until the other owner's record replaces it.
///
/// A key retention at or below `ttl` turns tombstones off: keys are forgotten with their
/// responses, and `begin` is one command.
///
/// [`with_key_ttl`]: RedisStore::with_key_ttl
///
/// # Waiting
///
/// A duplicate that waits for its owner ([`wait_for_in_flight`]) is told by the server when the
/// claim ends, or polls for it, depending on how the store is built:
///
/// | set up | how waits learn that the claim ended |
/// | --- | --- |
/// | [`with_push_waits`](RedisStore::with_push_waits) with [`RedisPushWaits`] (RESP3, single node or cluster) | the server's `invalidate` push when the key is completed, released or expires; no polling |
/// | without it (any connection, RESP2 or RESP3) | `GET` every [poll interval](RedisStore::with_poll_interval) (default 25 ms) |
///
/// The push needs a connection of its own, made with a push sender, which is why it is not
/// read from the store's command connection: see [`RedisPushWaits`] for how it works and why
/// it is client-side tracking rather than pub/sub.
///
/// [`wait_for_in_flight`]: crate::IdempotencyLayer::wait_for_in_flight
///
/// # Timeouts
///
/// The layer bounds every store call with its own
/// [`store_timeout`](crate::IdempotencyLayer::store_timeout) (2 s by default). The `redis`
/// crate's single-node connections have a response timeout of their own, 500 ms by default,
/// which then cuts in first under load and turns slow replies into `Timeout` errors. Let the
/// layer decide: build the connection with `response_timeout` set to `None` (or above the
/// layer's timeout), e.g. `ConnectionManagerConfig::new().set_response_timeout(None)`.
///
/// Either way, a command whose caller gave up is ambiguous: the `redis` crate does not write a
/// command whose caller has already gone, but one that was written still runs. Re-sending
/// `complete` or `release` with the same token is harmless, and the layer does: it re-sends one
/// whose effect is unknown in the background until it lands or the lease is over.
///
/// # Durability
///
/// Exactly one execution per key holds as long as Redis keeps what it acknowledged. Where it does
/// not, a retry can run the request a second time:
///
/// - **No persistence.** A restart of a server without AOF/RDB forgets every claim and record:
///   requests in flight and completed ones can run again. Use `appendonly yes` (with
///   `appendfsync everysec` up to one second of acknowledged writes can still be lost on a
///   crash of the host, `always` closes that gap at a cost).
/// - **Failover.** Replication is asynchronous. A primary that acknowledged a claim or a record
///   and failed before the replica received it is replaced by a replica that never saw it. This
///   store does not issue `WAIT` (it would add a round trip to every operation and still not make
///   failover safe: `WAIT` does not roll back a write that was acknowledged by fewer replicas).
///   Expect a small window of duplicates around a failover.
/// - **Eviction.** Every key of this store has a TTL, so both `allkeys-*` and `volatile-*`
///   policies may evict claims and records when memory runs out; an evicted record is a second
///   execution waiting to happen. Only `maxmemory-policy noeviction` (or no `maxmemory`) is safe:
///   then a full server refuses writes, `begin` fails, and the layer answers `503` instead of
///   running the request unprotected. [`RedisStore::check_config`] checks this at startup.
///   A full server refuses a `complete` as well (Redis checks memory before it runs a script
///   that writes, so the store cannot fall back to a smaller record): the claim then expires and
///   a retry may run again. Leave `maxmemory` headroom for records in flight.
/// - **Ambiguous errors.** A timeout or a broken connection says nothing about whether the
///   command ran ([`StoreErrorKind::is_ambiguous`](crate::store::StoreErrorKind::is_ambiguous)): a timed-out `begin` may have claimed the key.
///   The layer reads the key back; when it cannot tell, it answers `503` and releases the claim
///   its token may hold in the background, so retries are not held off for a whole lease.
///
/// # Errors
///
/// | redis error | [`StoreErrorKind`](crate::store::StoreErrorKind) |
/// | --- | --- |
/// | I/O timeout (the connection's response timeout) | `Timeout` |
/// | other I/O errors, dropped or refused connections, `LOADING`, `CLUSTERDOWN`, `TRYAGAIN`, `MASTERDOWN`, `READONLY`, redirections, no connection to the slot's node | `Unavailable` |
/// | script errors, `WRONGTYPE`, `OOM`, authentication, anything else | `Other` |
/// | a value that is not in the layout above | `Corrupt` |
///
/// Cloning is cheap: the clone shares the connection (as the connection types' own `Clone` does).
#[derive(Clone)]
pub struct RedisStore<C> {
    connection: C,
    prefix: Arc<str>,
    ttl: Duration,
    /// How long a completed key is remembered (its tombstone), from `complete`.
    key_ttl: Duration,
    poll_interval: Duration,
    push_waits: Option<RedisPushWaits>,
    /// Whether `complete` may be a fenced command where the server has one.
    fenced: bool,
    /// How `complete` and `renew` are sent, once the server was asked (shared by clones).
    commands: Arc<tokio::sync::OnceCell<Commands>>,
    /// The claims this store holds, for the fenced commands (shared by clones).
    held: Arc<Held>,
}

impl<C> RedisStore<C> {
    /// The prefix keys get unless [`with_prefix`](Self::with_prefix) sets another.
    pub const DEFAULT_PREFIX: &'static str = "idem:";

    /// A store on `connection` that keeps completed records for `ttl`.
    ///
    /// # Panics
    ///
    /// When `ttl` is zero: records would vanish as soon as they are written, and every retry
    /// would run again.
    pub fn new(connection: C, ttl: Duration) -> Self {
        assert!(
            !ttl.is_zero(),
            "RedisStore: the record TTL must not be zero"
        );
        Self {
            connection,
            prefix: Arc::from(Self::DEFAULT_PREFIX),
            ttl,
            key_ttl: DEFAULT_KEY_TTL,
            poll_interval: DEFAULT_POLL_INTERVAL,
            push_waits: None,
            fenced: true,
            commands: Arc::new(tokio::sync::OnceCell::new()),
            held: Arc::default(),
        }
    }

    /// How long a completed key is remembered in all [7 days], counted from its `complete`
    /// like the response's retention (`ttl`).
    ///
    /// When the response expires, the key's tombstone stays (see *Key retention* above): a retry
    /// in that time gets the layer's [`result-expired`](crate::problem#result-expired) problem
    /// instead of running again, and a different request under the key still gets the mismatch.
    /// A value at or below `ttl` turns tombstones off: the key is forgotten with its response,
    /// and `begin` is one command again.
    pub fn with_key_ttl(mut self, key_ttl: Duration) -> Self {
        self.key_ttl = key_ttl;
        self
    }

    /// Puts every key under `prefix` (default `idem:`), e.g. to share one Redis between services
    /// or to keep test runs apart.
    ///
    /// # Panics
    ///
    /// When `prefix` contains `{` or `}`: the store's own braces are the hash tag that places
    /// each record in its slot, and braces in the prefix would change which part Redis Cluster
    /// hashes (possibly putting every record in one slot).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        assert!(
            !prefix.contains(['{', '}']),
            "RedisStore: the key prefix must not contain `{{` or `}}`"
        );
        self.prefix = Arc::from(prefix);
        self
    }

    /// How often [`Store::wait`] looks at a claimed key (default 25 ms) when
    /// no [`RedisPushWaits`] is set.
    /// Shorter intervals answer waiting duplicates sooner and cost one `GET` per waiter each.
    ///
    /// # Panics
    ///
    /// When `interval` is zero.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        assert!(
            !interval.is_zero(),
            "RedisStore: the poll interval must not be zero"
        );
        self.poll_interval = interval;
        self
    }

    /// Wakes duplicates that wait for their owner ([`Store::wait`]) by the server's push when the
    /// key is completed, released or expires, instead of polling with `GET`; see
    /// [`RedisPushWaits`] (RESP3 only). Without it the store polls every
    /// [poll interval](Self::with_poll_interval).
    pub fn with_push_waits(mut self, waits: RedisPushWaits) -> Self {
        self.push_waits = Some(waits);
        self
    }

    /// Whether `complete` and `renew` are sent as the server's fenced `SET … IFEQ` where it has
    /// one (Valkey 8.1+, Redis 8.4+; detected once, default `true`), or always as Lua scripts,
    /// e.g. behind a proxy that does not know `IFEQ`. See *Commands* above.
    pub fn with_fenced_commands(mut self, enabled: bool) -> Self {
        self.fenced = enabled;
        self
    }

    /// How long completed records are kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long a completed key is remembered ([`with_key_ttl`](Self::with_key_ttl)).
    pub fn key_ttl(&self) -> Duration {
        self.key_ttl.max(self.ttl)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key the entry for `key` is stored under, `{prefix}{<hex digest>}`.
    pub fn redis_key(&self, key: &StoreKey) -> String {
        // Built in one allocation: it is made for every command.
        let mut out = String::with_capacity(self.prefix.len() + 66);
        out.push_str(&self.prefix);
        out.push('{');
        crate::hex::push_hex(&mut out, key.digest());
        out.push('}');
        out
    }

    /// The connection the store sends its commands through.
    pub fn connection(&self) -> &C {
        &self.connection
    }
}

impl<C> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("connection", &std::any::type_name::<C>())
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("key_ttl", &self.key_ttl)
            .field("poll_interval", &self.poll_interval)
            .field("push_waits", &self.push_waits)
            .field("fenced", &self.fenced)
            .field("commands", &self.commands.get())
            .finish()
    }
}
impl<C> Store for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Redis is a server: the layer coalesces duplicates in process.
    fn is_remote(&self) -> bool {
        true
    }

    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: Option<&Fingerprint>,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        // The claim's value; `SET … NX … GET` writes it only where the key is free, and
        // answers with what the key held otherwise: claim or replay in one plain command. Where
        // keys outlive their responses, the key's tombstone comes back in the same round trip.
        let claim = Claim::new(token, fingerprint);
        let mut set = ::redis::cmd("SET");
        set.arg(self.redis_key(key))
            .arg(claim.as_bytes())
            .arg("NX")
            .arg("PX")
            .arg(millis(lease))
            .arg("GET");
        let mut connection = self.connection.clone();
        let (reply, tombstone) = if self.remembers_keys() {
            let mut pipe = ::redis::pipe();
            pipe.add_command(set)
                .cmd("GET")
                .arg(self.tombstone_key(key));
            let (reply, tombstone): (Value, Value) = pipe
                .query_async(&mut connection)
                .await
                .map_err(map_begin_error)?;
            (reply, tombstone)
        } else {
            let reply = set
                .query_async(&mut connection)
                .await
                .map_err(map_begin_error)?;
            (reply, Value::Nil)
        };
        let begun = match reply {
            Value::Nil => Begin::New,
            // Held by this very token: a re-sent `begin` whose first reply was lost, so `New`.
            Value::BulkString(value) => decode(Bytes::from(value))?.begin_for(token),
            other => return Err(unexpected_reply(&other)),
        };
        if begun == Begin::New
            && let Some(tombstone) = read_tombstone(tombstone)?
        {
            // The response expired, the key is remembered: no second execution.
            return Ok(self.refuse_expired(key, token, tombstone).await);
        }
        if begun == Begin::New && self.commands.get() == Some(&Commands::SetIfEq) {
            // For a fenced `renew`, which must name the claim's whole value.
            self.held.insert(key, token, fingerprint, lease);
        }
        Ok(begun)
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        record: &Record,
    ) -> Result<(), StoreError> {
        self.complete_with(key, token, record).await
    }

    /// The record or the claim; where neither is there, the key's tombstone (a second `GET`).
    async fn get(&self, key: &StoreKey) -> Result<Option<Entry>, StoreError> {
        let mut connection = self.connection.clone();
        let reply: Value = ::redis::cmd("GET")
            .arg(self.redis_key(key))
            .query_async(&mut connection)
            .await
            .map_err(map_error)?;
        match reply {
            Value::Nil if self.remembers_keys() => {
                let tombstone: Value = ::redis::cmd("GET")
                    .arg(self.tombstone_key(key))
                    .query_async(&mut connection)
                    .await
                    .map_err(map_error)?;
                Ok(read_tombstone(tombstone)?.map(Entry::Completed))
            }
            Value::Nil => Ok(None),
            Value::BulkString(value) => decode(Bytes::from(value)).map(Some),
            other => Err(unexpected_reply(&other)),
        }
    }

    async fn release(&self, key: &StoreKey, token: OwnerToken) -> Result<(), StoreError> {
        let done = self.owner_checked(&RELEASE, key, token, &[]).await;
        if done.as_ref().err().is_none_or(|e| !e.kind().is_ambiguous()) {
            self.held.forget(key, token);
        }
        done
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.renew_with(key, token, lease).await
    }

    /// Waits until the key is no longer claimed, or `timeout` has passed: woken by the server
    /// with [`RedisPushWaits`], polling with `GET` otherwise.
    async fn wait(&self, key: &StoreKey, timeout: Duration) -> Result<(), StoreError> {
        self.wait_for(key, timeout).await
    }

    /// One script: the record's head (or all of it, when asked for) and its `PTTL`, else the
    /// tombstone's.
    async fn lookup(
        &self,
        key: &StoreKey,
        options: LookupOptions,
    ) -> Result<Option<KeyInfo>, StoreError> {
        self.lookup_key(key, options).await
    }

    /// One script: deletes the record and its tombstone; a claim only when forced.
    async fn evict(&self, key: &StoreKey, how: Evict) -> Result<Evicted, StoreError> {
        self.evict_key(key, how).await
    }
}

// The store works over the three connection types its docs name.
const _: fn() = || {
    fn assert_store<S: Store + Clone + fmt::Debug>() {}
    assert_store::<RedisStore<::redis::aio::MultiplexedConnection>>();
    assert_store::<RedisStore<::redis::aio::ConnectionManager>>();
    assert_store::<RedisStore<::redis::cluster_async::ClusterConnection>>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let store = RedisStore::new((), Duration::from_secs(1)).with_prefix("t:");
        let key = StoreKey::new(Some("tenant"), "k");
        assert_eq!(store.redis_key(&key), format!("t:{{{}}}", key.to_hex()));
    }

    #[test]
    #[should_panic(expected = "prefix")]
    fn prefix_cannot_move_the_hash_tag() {
        let _ = RedisStore::new((), Duration::from_secs(1)).with_prefix("app{x}:");
    }
}
