//! The Redis store; everything about it is documented on [`RedisStore`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::aio::ConnectionLike;
use ::redis::{ErrorKind, RedisError, Script, ServerErrorKind, Value};
use bytes::Bytes;

use super::{
    Begin, DEFAULT_POLL_INTERVAL, Entry, Fingerprint, OwnerToken, Record, Store, StoreError,
    StoreErrorKind, StoreKey,
};

/// Layout version, first byte of every value.
const VERSION: u8 = 1;
/// State byte of a claim.
const CLAIMED: u8 = 1;
/// State byte of a completed record.
const COMPLETED: u8 = 2;
/// Version, state and token.
const HEADER_LEN: usize = 18;
/// What a server older than Redis 7.0 is told, by `check_config` and by a refused `begin`.
const NEEDS_REDIS_7: &str = "RedisStore needs Redis 7.0 or newer (`SET … NX … GET`)";
/// The longest `PX` the store sends (about 2 200 years); Redis rejects expiry times that
/// overflow when added to its clock.
const MAX_PX: u64 = 1 << 46;

/// `complete`. KEYS[1] the record; ARGV[1] token, ARGV[2] record, ARGV[3] retention ms.
/// Stores the record when the token holds the claim or the key is free (its claim expired and
/// nobody claimed it since). Returns 1 when the record is stored (now or by an earlier call of
/// the same token), else 0.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local head = redis.call('GETRANGE', KEYS[1], 0, 17)
if head == '\1\1' .. ARGV[1] or head == '' then
  redis.call('SET', KEYS[1], '\1\2' .. ARGV[1] .. ARGV[2], 'PX', ARGV[3])
  return 1
end
if head == '\1\2' .. ARGV[1] then
  return 1
end
return 0
",
    )
});

/// `release`. KEYS[1] the record; ARGV[1] token. Returns 1 when the claim was dropped, else 0.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GETRANGE', KEYS[1], 0, 17) == '\1\1' .. ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
",
    )
});

/// `renew`. KEYS[1] the record; ARGV[1] token, ARGV[2] lease ms. Returns 1 when renewed, else 0.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GETRANGE', KEYS[1], 0, 17) == '\1\1' .. ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
",
    )
});

/// A [`Store`] in Redis or Redis Cluster, generic over the connection type: claims and records
/// shared by many app instances.
///
/// The store works over any async connection of the [`redis`](::redis) crate that implements
/// [`ConnectionLike`] and is cheap to clone:
///
/// - [`MultiplexedConnection`](::redis::aio::MultiplexedConnection): one pipelined connection to
///   one node; it does not reconnect by itself;
/// - [`ConnectionManager`](::redis::aio::ConnectionManager): the same, reconnecting in the
///   background after the connection breaks (what most single-node deployments want). On RESP2
///   it notices a broken connection only when a command fails, so one operation per break fails
///   (ambiguously; the layer answers `503`); on RESP3 (`redis://host/?protocol=resp3`) it hears
///   the disconnect and reconnects before the next command;
/// - [`ClusterConnection`](::redis::cluster_async::ClusterConnection): Redis Cluster; every key
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
/// use tower_idempotency::store::RedisStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let connection = client.get_connection_manager().await?;
/// // Completed responses are kept for 24 hours.
/// let store = RedisStore::new(connection, Duration::from_secs(24 * 60 * 60))
///     .with_prefix("billing:idem:");
/// // Once at startup: warns when the server may evict claims or records.
/// store.check_config().await?;
/// let layer = tower_idempotency::IdempotencyLayer::new(store);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
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
/// bytes, or inject separators. The store uses no other key.
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
/// [`StoreErrorKind::Corrupt`] and is never overwritten by `begin`.
///
/// # Commands
///
/// Each operation is **one command, one round trip**:
///
/// | operation | command | what runs on the server |
/// | --- | --- | --- |
/// | `begin` | `SET <claim> NX PX <lease> GET` | writes the claim where the key is free; answers with the value it found otherwise |
/// | `complete` | `EVALSHA` | `GETRANGE 0 17` (owner check); `SET … PX <ttl>` |
/// | `release` | `EVALSHA` | `GETRANGE 0 17`; `DEL` |
/// | `renew` | `EVALSHA` | `GETRANGE 0 17`; `PEXPIRE` |
/// | `get` | `GET` | |
///
/// A `begin` on a completed key returns the record in the same reply, so a replay costs one
/// round trip, and costs the server about what a plain `GET` does: `begin`, the one command of
/// every request, is no script. The owner-checked operations are: scripts run by SHA
/// ([`Script`]); after `SCRIPT FLUSH` or a restart, the first call gets `NOSCRIPT`, loads the
/// script and runs it again (three round trips, once per script and node). Owner checks compare
/// the stored token inside the script, so they are atomic.
///
/// `begin` by a token that already holds the claim answers [`Begin::New`] again, and `complete`
/// by the token that already completed the key succeeds: a command re-sent after a lost reply is
/// harmless. A re-sent `release` that already took effect fails with
/// [`StoreErrorKind::NotOwner`] (the claim is gone), which the layer only logs.
///
/// # Waiting
///
/// [`Store::wait`] polls with `GET` every [poll interval](RedisStore::with_poll_interval)
/// (default 25 ms) until the claim has ended or the timeout has passed. It
/// does not use pub/sub: subscribing through the connection types above needs RESP3 and a push
/// sender configured when the user builds the connection, and sharded pub/sub on a cluster needs
/// a subscription on the node that owns the slot. Polling works the same on all three, survives
/// reconnects without losing a notification, and costs one `GET` per waiter and interval.
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
///   command ran ([`StoreErrorKind::is_ambiguous`]): a timed-out `begin` may have claimed the key.
///   The layer reads the key back; when it cannot tell, it answers `503` and releases the claim
///   its token may hold in the background, so retries are not held off for a whole lease.
///
/// # Errors
///
/// | redis error | [`StoreErrorKind`] |
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
    poll_interval: Duration,
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
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
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

    /// How often [`Store::wait`] looks at a claimed key (default 25 ms).
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

    /// How long completed records are kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
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
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Reads the server's eviction settings and warns (with [`tracing::warn!`]) when they may
    /// evict this store's keys.
    ///
    /// Every key of this store has a TTL, so with a `maxmemory` limit any policy but
    /// `noeviction` may evict claims and records, `volatile-*` included (they only spare keys
    /// *without* a TTL). An evicted claim lets a duplicate run while the first request still
    /// runs; an evicted record lets a retry run again. Under `noeviction` a full server refuses
    /// writes instead, and the layer answers `503`.
    ///
    /// Servers where `CONFIG` is disabled or renamed (managed offerings often do this) answer
    /// with an error; then the report is unknown, a warning says so, and the call still succeeds.
    /// On a cluster the command goes to one node: keep the nodes configured alike.
    ///
    /// It also reads the server's version (`INFO server`): the store needs Redis 7.0 or newer,
    /// and on an older server the call fails with [`StoreErrorKind::Other`] saying so.
    ///
    /// Call it once at startup; it is not on any request's path. Fails only when the server
    /// cannot be reached or is too old.
    pub async fn check_config(&self) -> Result<ConfigReport, StoreError> {
        let mut connection = self.connection.clone();
        let info: Result<String, RedisError> = ::redis::cmd("INFO")
            .arg("server")
            .query_async(&mut connection)
            .await;
        let redis_version = match info {
            Ok(info) => server_version(&info),
            Err(e) if is_transport_error(&e) => return Err(map_error(e)),
            Err(_) => None,
        };
        if let Some(version) = &redis_version {
            let major = version
                .split('.')
                .next()
                .and_then(|m| m.parse::<u32>().ok());
            if major.is_some_and(|major| major < 7) {
                let why = format!("{NEEDS_REDIS_7}; the server is {version}");
                return Err(StoreError::with_source(StoreErrorKind::Other, why));
            }
        }
        let reply: Result<HashMap<String, String>, RedisError> = ::redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory*")
            .query_async(&mut connection)
            .await;
        let report = match reply {
            Ok(config) => ConfigReport {
                maxmemory: config.get("maxmemory").and_then(|v| v.parse().ok()),
                maxmemory_policy: config.get("maxmemory-policy").cloned(),
                redis_version,
            },
            Err(e) if is_transport_error(&e) => return Err(map_error(e)),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "could not read the Redis eviction settings (CONFIG GET is not allowed); \
                     make sure `maxmemory-policy` is `noeviction`, or that `maxmemory` is 0, or \
                     idempotency claims and records may be evicted"
                );
                return Ok(ConfigReport {
                    maxmemory: None,
                    maxmemory_policy: None,
                    redis_version,
                });
            }
        };
        if report.may_evict() == Some(true) {
            tracing::warn!(
                maxmemory = report.maxmemory,
                maxmemory_policy = report.maxmemory_policy.as_deref(),
                "Redis may evict idempotency claims and records (they all have a TTL) when \
                 memory runs out, and then run a request twice; set `maxmemory-policy noeviction`"
            );
        }
        Ok(report)
    }

    async fn owner_checked(
        &self,
        script: &Script,
        key: &StoreKey,
        token: OwnerToken,
        args: &[&[u8]],
    ) -> Result<(), StoreError> {
        let mut invocation = script.key(self.redis_key(key));
        invocation.arg(&token.to_bytes()[..]);
        for arg in args {
            invocation.arg(*arg);
        }
        let mut connection = self.connection.clone();
        let reply: Value = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(map_error)?;
        match reply {
            Value::Int(1) => Ok(()),
            Value::Int(0) => Err(StoreError::new(StoreErrorKind::NotOwner)),
            other => Err(unexpected_reply(&other)),
        }
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
        // answers with what the key held otherwise: claim or replay in one plain command.
        let mut claim = [0; HEADER_LEN + 32];
        claim[0] = VERSION;
        claim[1] = CLAIMED;
        claim[2..HEADER_LEN].copy_from_slice(&token.to_bytes());
        let len = match fingerprint {
            Some(fp) => {
                claim[HEADER_LEN..].copy_from_slice(fp.as_bytes());
                claim.len()
            }
            None => HEADER_LEN,
        };
        let mut connection = self.connection.clone();
        let reply: Value = ::redis::cmd("SET")
            .arg(self.redis_key(key))
            .arg(&claim[..len])
            .arg("NX")
            .arg("PX")
            .arg(millis(lease))
            .arg("GET")
            .query_async(&mut connection)
            .await
            .map_err(map_begin_error)?;
        match reply {
            Value::Nil => Ok(Begin::New),
            Value::BulkString(value) => match decode(Bytes::from(value))? {
                // Held by this very token: a re-sent `begin` whose first reply was lost.
                Entry::InProgress { token: holder, .. } if holder == token => Ok(Begin::New),
                Entry::InProgress { fingerprint, .. } => Ok(Begin::InProgress { fingerprint }),
                Entry::Completed(record) => Ok(Begin::Completed(record)),
            },
            other => Err(unexpected_reply(&other)),
        }
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        record: &Record,
    ) -> Result<(), StoreError> {
        let ttl = millis(self.ttl).to_string();
        self.owner_checked(
            &COMPLETE,
            key,
            token,
            &[&record.as_bytes()[..], ttl.as_bytes()],
        )
        .await
    }

    async fn get(&self, key: &StoreKey) -> Result<Option<Entry>, StoreError> {
        let mut connection = self.connection.clone();
        let reply: Value = ::redis::cmd("GET")
            .arg(self.redis_key(key))
            .query_async(&mut connection)
            .await
            .map_err(map_error)?;
        match reply {
            Value::Nil => Ok(None),
            Value::BulkString(value) => decode(Bytes::from(value)).map(Some),
            other => Err(unexpected_reply(&other)),
        }
    }

    async fn release(&self, key: &StoreKey, token: OwnerToken) -> Result<(), StoreError> {
        self.owner_checked(&RELEASE, key, token, &[]).await
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let lease = millis(lease).to_string();
        self.owner_checked(&RENEW, key, token, &[lease.as_bytes()])
            .await
    }

    /// Polls with `GET` until the key is no longer claimed, or `timeout` has passed.
    async fn wait(&self, key: &StoreKey, timeout: Duration) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
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

/// What [`RedisStore::check_config`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigReport {
    /// `maxmemory` in bytes (`0`: no limit); `None` when it could not be read.
    pub maxmemory: Option<u64>,
    /// `maxmemory-policy`; `None` when it could not be read.
    pub maxmemory_policy: Option<String>,
    /// The server's `redis_version` from `INFO server`; `None` when it could not be read.
    pub redis_version: Option<String>,
}

impl ConfigReport {
    /// Whether the server may evict this store's keys: `Some(false)` without a memory limit or
    /// under `noeviction`, `Some(true)` under any other policy, `None` when unknown.
    pub fn may_evict(&self) -> Option<bool> {
        if self.maxmemory == Some(0) || self.maxmemory_policy.as_deref() == Some("noeviction") {
            return Some(false);
        }
        self.maxmemory_policy.as_ref().map(|_| true)
    }
}

/// The `redis_version` field of an `INFO server` reply.
fn server_version(info: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned())
}

/// Milliseconds for `PX`/`PEXPIRE`: rounded up (a lease is never shorter than asked), at least 1.
fn millis(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).clamp(1, MAX_PX)
}

/// Decodes a stored value (see the layout in the docs of [`RedisStore`]).
fn decode(value: Bytes) -> Result<Entry, StoreError> {
    if value.len() < HEADER_LEN {
        return Err(corrupt("shorter than its header"));
    }
    if value[0] != VERSION {
        return Err(corrupt("unknown layout version"));
    }
    let token = OwnerToken::from_bytes(value[2..HEADER_LEN].try_into().expect("16 bytes"));
    match value[1] {
        CLAIMED => {
            let fingerprint = match &value[HEADER_LEN..] {
                [] => None,
                fp => Some(Fingerprint::from_bytes(
                    fp.try_into()
                        .map_err(|_| corrupt("bad fingerprint length"))?,
                )),
            };
            Ok(Entry::InProgress { fingerprint, token })
        }
        COMPLETED => Ok(Entry::Completed(Record::from_bytes(
            value.slice(HEADER_LEN..),
        )?)),
        _ => Err(corrupt("unknown state")),
    }
}

/// Why a stored value could not be decoded.
#[derive(Debug)]
struct LayoutError(&'static str);

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid redis store value: {}", self.0)
    }
}

impl std::error::Error for LayoutError {}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::with_source(StoreErrorKind::Corrupt, LayoutError(what))
}

fn unexpected_reply(reply: &Value) -> StoreError {
    StoreError::with_source(
        StoreErrorKind::Other,
        format!("unexpected reply from redis: {reply:?}"),
    )
}

/// Errors that say the command may not have reached the server, or its reply did not come back.
fn is_transport_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        )
}

fn map_error(e: RedisError) -> StoreError {
    let kind = if e.is_timeout() {
        StoreErrorKind::Timeout
    } else if is_transport_error(&e) {
        StoreErrorKind::Unavailable
    } else {
        StoreErrorKind::Other
    };
    StoreError::with_source(kind, e)
}

/// `begin`'s errors. A server older than Redis 7.0 refuses `NX` together with `GET` with a bare
/// "syntax error"; that error is made to say what it means.
fn map_begin_error(e: RedisError) -> StoreError {
    let old_server = e.code() == Some("ERR") && e.detail().is_some_and(|d| d.contains("syntax"));
    if old_server {
        let why = format!("{NEEDS_REDIS_7}; the server answered: {e}");
        return StoreError::with_source(StoreErrorKind::Other, why);
    }
    map_error(e)
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

    fn claim(token: OwnerToken, fp: Option<&Fingerprint>) -> Bytes {
        let mut v = vec![VERSION, CLAIMED];
        v.extend_from_slice(&token.to_bytes());
        if let Some(fp) = fp {
            v.extend_from_slice(fp.as_bytes());
        }
        Bytes::from(v)
    }

    /// The error a server answers with, as the driver hands it to the store.
    fn server_error(reply: &[u8]) -> RedisError {
        ::redis::parse_redis_value(reply)
            .and_then(Value::extract_error)
            .expect_err("an error reply")
    }

    /// What the store's error says through its source, where the cause is.
    fn cause(e: &StoreError) -> String {
        std::error::Error::source(e)
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    #[test]
    fn an_old_servers_refusal_of_begin_names_the_version() {
        // What Redis 6.2 answers to `SET k v NX PX 1 GET`.
        let e = map_begin_error(server_error(b"-ERR syntax error\r\n"));
        assert_eq!(e.kind(), StoreErrorKind::Other);
        assert!(cause(&e).contains("needs Redis 7.0"), "{}", cause(&e));
        // Other errors keep their own meaning.
        let e = map_begin_error(server_error(b"-LOADING Redis is loading\r\n"));
        assert_eq!(e.kind(), StoreErrorKind::Unavailable);
        let e = map_begin_error(server_error(b"-WRONGTYPE Operation against a key\r\n"));
        assert_eq!(e.kind(), StoreErrorKind::Other);
        assert!(!cause(&e).contains("needs Redis 7.0"), "{}", cause(&e));
    }

    #[test]
    fn reads_the_server_version() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(server_version(info).as_deref(), Some("7.0.15"));
        assert_eq!(
            server_version("# Server\r\nredis_mode:standalone\r\n"),
            None
        );
    }

    #[test]
    fn decodes_claims() {
        let token = OwnerToken::generate();
        let fp = Fingerprint::sha256(b"request");
        assert_eq!(
            decode(claim(token, Some(&fp))).unwrap(),
            Entry::InProgress {
                fingerprint: Some(fp),
                token
            }
        );
        assert_eq!(
            decode(claim(token, None)).unwrap(),
            Entry::InProgress {
                fingerprint: None,
                token
            }
        );
    }

    #[test]
    fn decodes_records() {
        let token = OwnerToken::generate();
        let record = Record::not_stored(Some(Fingerprint::sha256(b"r")));
        let mut v = vec![VERSION, COMPLETED];
        v.extend_from_slice(&token.to_bytes());
        v.extend_from_slice(record.as_bytes());
        assert_eq!(decode(Bytes::from(v)).unwrap(), Entry::Completed(record));
    }

    #[test]
    fn rejects_foreign_values() {
        let token = OwnerToken::generate();
        let bad = |v: &[u8]| decode(Bytes::copy_from_slice(v)).unwrap_err().kind();
        assert_eq!(bad(b""), StoreErrorKind::Corrupt);
        assert_eq!(
            bad(b"some other application's value"),
            StoreErrorKind::Corrupt
        );
        let mut v = claim(token, None).to_vec();
        v[1] = 9;
        assert_eq!(bad(&v), StoreErrorKind::Corrupt);
        let mut v = claim(token, None).to_vec();
        v.push(0);
        assert_eq!(bad(&v), StoreErrorKind::Corrupt);
        let mut v = claim(token, None).to_vec();
        v[1] = COMPLETED;
        v.extend_from_slice(b"not a record");
        assert_eq!(bad(&v), StoreErrorKind::Corrupt);
    }

    #[test]
    fn millis_rounds_up_and_clamps() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::from_secs(30)), 30_000);
        assert_eq!(millis(Duration::MAX), MAX_PX);
    }

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

    #[test]
    fn config_report() {
        let report = |maxmemory, policy: Option<&str>| ConfigReport {
            maxmemory,
            maxmemory_policy: policy.map(String::from),
            redis_version: None,
        };
        assert_eq!(report(Some(1), Some("noeviction")).may_evict(), Some(false));
        assert_eq!(
            report(Some(0), Some("allkeys-lru")).may_evict(),
            Some(false)
        );
        assert_eq!(
            report(Some(1), Some("volatile-lru")).may_evict(),
            Some(true)
        );
        assert_eq!(report(Some(1), Some("allkeys-lfu")).may_evict(), Some(true));
        assert_eq!(report(None, None).may_evict(), None);
    }
}
