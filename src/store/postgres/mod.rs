//! The PostgreSQL store; everything about it is documented on [`PostgresStore`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{PgConnection, Row};
use tokio::time::Instant;

use super::{
    Begin, DEFAULT_POLL_INTERVAL, Entry, Evict, Evicted, Fingerprint, KeyInfo, LookupOptions,
    OwnerToken, Record, Store, StoreError, StoreErrorKind, StoreKey,
};

mod admin;
mod effects;
mod schema;
mod statements;
mod wait;

pub use schema::InvalidTableName;

use statements::Statements;
use wait::Listener;

/// How many times `begin` sends its statement when a concurrent claim raced it (see
/// [`PostgresStore`], "Statements"). Each attempt has a new snapshot that sees every claim
/// committed before it started, so a second attempt settles all but pathological races.
const BEGIN_ATTEMPTS: usize = 8;
/// How long after its expiry a row is kept before the sweep deletes it: a `complete` whose
/// owner's lease ran out still lands while nobody has claimed the key since.
const SWEEP_GRACE: Duration = Duration::from_secs(60);
/// The longest duration the store sends (100 years): PostgreSQL refuses timestamps past 294276 AD.
const MAX_MICROS: i64 = 100 * 365 * 24 * 60 * 60 * 1_000_000;
/// How long completed responses are kept by default.
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a completed key is remembered by default, its response or not.
const DEFAULT_KEY_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// A [`Store`] in a PostgreSQL table, over an [`sqlx::PgPool`], with **exactly-once effects**
/// for handlers whose writes go to the same database.
///
/// ```no_run
/// use std::time::Duration;
///
/// use tower_idempotency::{IdempotencyLayer, store::PostgresStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
/// // Completed responses are kept for 24 hours.
/// let store = PostgresStore::new(pool, Duration::from_secs(24 * 60 * 60));
/// store.migrate().await?; // CREATE TABLE IF NOT EXISTS ...
/// let layer = IdempotencyLayer::new(store.clone());
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
///
/// # Exactly-once effects
///
/// A handler whose effects are rows in this database commits them *together with* the
/// idempotency state: it begins its own transaction, writes, and before `COMMIT` calls
/// [`IdempotencyClaim::commit_in`](crate::IdempotencyClaim::commit_in), which marks the key
/// "effects committed", fenced by the request's owner token:
///
/// ```no_run
/// # use tower_idempotency::{IdempotencyClaim, store::PostgresStore};
/// # async fn handler(pool: sqlx::PgPool, store: PostgresStore, claim: IdempotencyClaim) -> Result<i64, Box<dyn std::error::Error>> {
/// let mut tx = pool.begin().await?;
/// let id: i64 = sqlx::query_scalar("INSERT INTO payments (amount) VALUES ($1) RETURNING id")
///     .bind(100_i64)
///     .fetch_one(&mut *tx)
///     .await?;
/// claim.commit_in(&mut tx, &store).await?; // fails unless this request still owns the key
/// tx.commit().await?;
/// # Ok(id)
/// # }
/// ```
///
/// The payment row and the key's "effects committed" mark are then both there or both absent,
/// whatever crashes when. A `begin` never runs such a key again: it replays the recorded
/// response, waits (`409`) while the owner still records it, or, when the owner died before
/// recording it, answers [`Begin::Completed`] with [`Record::not_stored`], which the layer turns
/// into the ["response not stored"](crate::problem#response-not-stored) problem. A handler whose
/// lease was taken over by another request cannot commit: `commit_in` fails with
/// [`StoreErrorKind::NotOwner`] and the transaction must be rolled back (dropping it does).
///
/// This shape (the handler owns its transaction, the claim fences it) was chosen over the layer
/// opening a transaction for the handler because it keeps the layer independent of the
/// database: the handler picks its pool, isolation level and retries as sqlx users do, handlers
/// without database effects pay nothing, and no connection is held while a request body is read
/// or a response streamed.
///
/// What it does **not** cover: effects outside this database (a call to a payment provider, an
/// e-mail, a message on a queue) are still *at most once per lease*, as with every other store;
/// give them their own idempotency keys (derive them from the claim's key).
///
/// # Table
///
/// One table (default `idempotency`; [`PostgresStoreBuilder::table`]), created by
/// [`migrate`](Self::migrate) or by the SQL of [`schema_sql`](Self::schema_sql):
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS "idempotency" (
///     key          bytea       PRIMARY KEY,  -- StoreKey::digest(), 32 bytes
///     state        text        NOT NULL CHECK (state IN ('claimed', 'committed', 'completed')),
///     token        bytea       NOT NULL,     -- the owner token, 16 bytes
///     fingerprint  bytea,                    -- the request's fingerprint, 32 bytes
///     lease_until  timestamptz NOT NULL,     -- end of the owner's lease
///     expires_at   timestamptz NOT NULL,     -- the row counts as absent from then on
///     record       bytea,                    -- the encoded response; NULL: not stored, or freed
///     record_until timestamptz,              -- the response counts as expired from then on
///     watched      boolean     NOT NULL DEFAULT false -- a duplicate waits: notify
/// );
/// CREATE INDEX "idempotency_expires_at" ON "idempotency" (expires_at);
/// CREATE INDEX "idempotency_bodies" ON "idempotency" (record_until) WHERE record IS NOT NULL;
/// ```
///
/// (The SQL creates the indexes, and adds `record_until` to a table of an earlier version,
/// only when they are missing; see [`migrate`](Self::migrate).)
///
/// | state | meaning | `begin` by another request |
/// | --- | --- | --- |
/// | `claimed` | a request runs; the row expires with its lease | `InProgress`, free after `expires_at` |
/// | `committed` | its effects committed, the response is not recorded yet | `InProgress` until `lease_until`, then `Completed(not_stored)`, after `record_until` `Completed(response_expired)`, free after `expires_at` |
/// | `completed` | the response is recorded (or `record` is NULL: not stored) | `Completed`, after `record_until` `Completed(response_expired)`, free after `expires_at` |
///
/// All times are the database server's, so the app servers' clocks do not matter.
///
/// # Statements
///
/// Every operation is **one statement, one round trip** (autocommit):
///
/// | operation | statement |
/// | --- | --- |
/// | `begin` | a `SELECT` of a live record (a replay: no lock, no write); else `INSERT … ON CONFLICT (key) DO UPDATE … WHERE <free or ours> RETURNING`, and the row as it is when the claim was refused (in progress) |
/// | `complete` | `UPDATE … SET record = $3, record_until = now() + <ttl>, expires_at = now() + <key_ttl> WHERE token = $2 AND state <> 'completed'` + `pg_notify` in a CTE when a duplicate waits |
/// | `release` | `DELETE … WHERE token = $2 AND state = 'claimed' AND lease_until > now()` + `pg_notify` when a duplicate waits |
/// | `wait` | `UPDATE … SET watched = true … RETURNING <lease left>` |
/// | `renew` | `UPDATE … SET lease_until …` (owner checked) |
/// | `get` | `SELECT … WHERE key = $1 AND expires_at > now()` |
/// | `commit_in` | `UPDATE … SET state = 'committed', record_until = <ttl>, expires_at = <key_ttl> from now WHERE token = $2 AND state = 'claimed'`, in the handler's transaction |
/// | `lookup` | `SELECT … WHERE key = $1 AND expires_at > now()`, with the time left; the response only when asked |
/// | `evict` | `SELECT … FOR UPDATE` of the live row, `DELETE` unless it is in progress and not forced, `pg_notify` when a duplicate waits |
///
/// **Concurrent `begin`s at READ COMMITTED.** `ON CONFLICT DO UPDATE` locks the conflicting row
/// and judges its latest committed version, so exactly one of many concurrent claimers wins,
/// on any number of connections. A refused claim reads the row in the statement's snapshot,
/// which can be older than a claim that committed while the statement waited for the row
/// lock; it then reads as absent or free. The store recognises that and sends the statement
/// again (a new snapshot sees the claim): one round trip, two in that race.
///
/// **`complete`** lands when the row still carries the token and is not completed: the live
/// claim, a claim whose lease ran out while nobody claimed the key since (until the sweep
/// deletes that row, a minute after the lease at the earliest: a `complete` delayed by a short
/// store outage still lands), or a key whose effects the token committed. A `complete` re-sent by the same token succeeds and keeps the
/// first record. It fails with [`StoreErrorKind::NotOwner`] when another owner holds the key or
/// a record from another token is there. **`release` and `renew`** are strictly owner checked
/// (a live claim of this token). A `release` of a key whose effects are committed does not free
/// it: it turns it into "completed, response not stored" at once (so waiting duplicates get
/// their answer) and fails with `NotOwner`, which the layer takes as done.
///
/// # Retention
///
/// A completed key keeps its response for [`ttl`](PostgresStoreBuilder::ttl) (default 24 h)
/// and is remembered, without its response, until
/// [`key_ttl`](PostgresStoreBuilder::key_ttl) (default 7 days) after it completed:
///
/// | age of the key | a retry with the same request | a different request under the key |
/// | --- | --- | --- |
/// | up to `ttl` (`record_until`) | the replay | `422` mismatch |
/// | up to `key_ttl` (`expires_at`) | `409` [`result-expired`](crate::problem#result-expired), never a second execution | `422` mismatch |
/// | later | runs as a new request | runs as a new request |
///
/// Past `record_until` the statements no longer send the response, and the store answers
/// [`Record::response_expired`] built from the row's fingerprint; the sweep then frees the
/// response (`record = NULL`). A remembered key costs about 270 bytes of table and indexes
/// (measured after `VACUUM` over 200 000 keys: 167 bytes of row, 77 of primary key, 23 of
/// expiry index), and one more `UPDATE` when its response is freed. Seven days of keys at
/// 100 requests per second are about 60 million rows, 16 GB. Set `key_ttl` equal to `ttl` to
/// forget keys together with their responses: the rows are then deleted at `ttl` as before.
/// A key whose effects committed ([`commit_in`](crate::IdempotencyClaim::commit_in)) is
/// remembered for `key_ttl` from its commit, whether or not its response is recorded.
///
/// Rows written before `record_until` existed (NULL) keep their response until they expire,
/// as they did. During a rolling upgrade, an instance of an earlier version that claims a key
/// again (only possible after its `key_ttl` ran out) leaves the old `record_until` in place,
/// so a response it records would read as expired at once: a retry gets `result-expired`,
/// never a second execution.
///
/// # Expiry without a cron job
///
/// An expired row counts as absent for every statement at once (`expires_at > now()`), and a
/// `begin` reuses it in place. Rows are deleted by the store itself, in bounded batches: every
/// [`sweep_every`](PostgresStoreBuilder::sweep_every)-th `begin` of an instance (default 100,
/// the first one included) spawns one statement (unless one is still running) that
/// `DELETE`s `… WHERE key IN (SELECT key … WHERE expires_at < now() - 60 s ORDER BY expires_at
/// LIMIT <batch> FOR UPDATE SKIP LOCKED)` (default batch 1000) and, in the same statement,
/// frees up to a batch of responses past their `record_until` (`UPDATE … SET record = NULL`,
/// found by the partial index `<table>_bodies`, also `SKIP LOCKED`; 1000 responses of 1 KiB in
/// about 10 ms). An instance deletes and frees up to ten rows per request it claims, more than
/// it creates, so the table stays at about the live keys, the responses kept for `ttl` and the
/// keys remembered for `key_ttl`; `SKIP LOCKED` lets many instances sweep without waiting for
/// each other or for requests. [`sweep`](Self::sweep) runs one batch on demand. The space of
/// a freed response is reused after PostgreSQL's autovacuum has passed.
///
/// # Waiting
///
/// [`Store::wait`] uses `LISTEN`/`NOTIFY`, not polling. A waiter marks the key `watched`; a
/// `complete` or `release` of a watched key calls `pg_notify('<table name>', <hex key>)` in its
/// own statement, so the notification goes out when its change commits. Keys nobody waits for
/// send none: a transaction that notifies takes a cluster-wide lock at commit, which would
/// serialise every `complete`. The row lock orders the mark and the end of the claim: either
/// the ending statement sees the mark, or the waiter finds the key no longer in progress.
///
/// The first wait starts one listener task per store, which keeps one connection of the pool
/// in `LISTEN` and wakes the waiters of the named key. A waiter registers, then marks the key
/// and reads how much of the owner's lease is left, and sleeps until it is woken, its timeout
/// passes, or the lease runs out (a dead owner sends no notification). While the
/// listener is not connected (at start, after a broken connection) waiters look again every
/// [poll interval](PostgresStoreBuilder::poll_interval); whenever it reconnects it wakes every
/// waiter, since notifications sent meanwhile were lost.
///
/// # Operators: lookup and evict
///
/// [`Store::lookup`] reads a key in one `SELECT`, without writing or locking: its state, its
/// fingerprint and [`expires_in`](crate::store::KeyInfo::expires_in) counted by the database's
/// clock. A `claimed` row, and a `committed` row while its owner's lease lasts, are
/// [`KeyState::InProgress`](crate::store::KeyState::InProgress) with the owner, expiring with
/// the lease; a completed key (a `committed` row whose owner's lease ended reads as "response
/// not stored") expires at `record_until`; past it the key is
/// [`KeyState::ResponseExpired`](crate::store::KeyState::ResponseExpired) until `expires_at`.
/// The response is selected only with
/// [`LookupOptions::with_response`](crate::store::LookupOptions::with_response): otherwise it
/// is not read from the table, nor sent.
///
/// [`Store::evict`] is one `DELETE … RETURNING` statement. It locks the live row first, so it
/// judges the row's latest version, and it waits for a handler's transaction that holds the
/// row (from its `commit_in` to its commit). A completed key (with its response, without, or
/// past `record_until`) is always removed. A row in progress is removed only with
/// [`Evict::Force`]; otherwise the answer is [`Evicted::Refused`] with its owner. Removing a
/// row that a duplicate waits for notifies it, as `release` does.
///
/// Forcing a `claimed` row is as dangerous as on any store, with one difference for
/// exactly-once handlers: the evicted owner's [`commit_in`](crate::IdempotencyClaim::commit_in)
/// finds no claim of its own and fails, so its transaction rolls back and its database effects
/// never land; a retry's do. **Forcing a `committed` row is worse**: its effects are already
/// committed, and only its response is not recorded yet. The next request with the key runs
/// the handler again and commits the effects a second time (a second payment); the first
/// owner's `complete` then fails (its row is gone). Force a `committed` row only when a second
/// execution is what you want. Evicting a completed key of an exactly-once handler also lets
/// its effects run again: that is what eviction is for.
///
/// # Timeouts and ambiguous errors
///
/// The layer bounds every store call with its
/// [`store_timeout`](crate::IdempotencyLayer::store_timeout); a statement whose caller gave up
/// may still run, as with Redis. sqlx's pool waits up to its `acquire_timeout` (30 s by
/// default) for a free connection, longer than the layer's timeout, so the layer decides; a
/// shorter one fails busy moments earlier, as `Unavailable`. Size the pool for the requests in
/// flight plus one connection for the listener. Errors:
///
/// | sqlx error | [`StoreErrorKind`] |
/// | --- | --- |
/// | I/O, TLS, protocol errors, pool timed out or closed; SQLSTATE classes `08` (connection), `53` (resources), `57P01`–`57P03` (shutdown), `25006` (read-only: a replica after failover) | `Unavailable` |
/// | `57014` (statement timeout, cancelled) | `Timeout` |
/// | a row or record that cannot be decoded | `Corrupt` |
/// | anything else | `Other` |
///
/// All but `Corrupt` are ambiguous: the layer reads the key back, re-sends `complete` and
/// `release` (harmless with the same token), and never runs a request twice because of them.
///
/// # What the store needs from the database
///
/// - **Isolation**: every statement is correct at READ COMMITTED (the default) and above. The
///   handler's transaction may use any level; at REPEATABLE READ or SERIALIZABLE a `commit_in`
///   that meets a concurrent change of the key fails with a serialization error, and the
///   transaction rolls back: still safe.
/// - **Durability**: exactly once holds for what the database keeps after it acknowledged a
///   `COMMIT`. With `synchronous_commit = off` a crash of the database server can lose the last
///   few hundred milliseconds of commits: a lost claim or record lets a retry run again, but a
///   lost `commit_in` is lost *together with* the handler's rows, so effects stay exactly once.
/// - **Failover**: an asynchronous replica promoted after the primary failed may miss the last
///   commits: records and claims (retries run again) and, for exactly-once handlers, their rows
///   with them. Clients that saw a response whose commit was lost would see a different result
///   on retry. Use synchronous replication (`synchronous_standby_names`, `synchronous_commit =
///   on` or `remote_apply`) where that matters.
///
/// # Distributed SQL (on paper, not tested)
///
/// - **CockroachDB** runs every transaction SERIALIZABLE and supports `INSERT … ON CONFLICT
///   DO UPDATE … WHERE`, `RETURNING`, CTEs, `FOR UPDATE SKIP LOCKED` (22.2+) and `bytea`; it has
///   no `LISTEN`/`NOTIFY` (`pg_notify` fails), so `complete`/`release` would need the
///   notification dropped and waiting to poll; `clock_timestamp()` exists. Expect
///   retryable `40001` errors under contention, which the store reports as ambiguous `Other`.
/// - **YugabyteDB** (YSQL, PostgreSQL 11 semantics) runs the statements as written, including
///   READ COMMITTED when enabled (`yb_enable_read_committed_isolation`); `LISTEN`/`NOTIFY` is not
///   supported before recent versions, so the same fallback applies.
/// - **Citus**: distribute the table by `key` (`create_distributed_table('idempotency', 'key')`);
///   every statement names one key, so each is routed to one shard, and `NOTIFY` works from the
///   coordinator. `commit_in` in a transaction that also writes other distributed tables becomes
///   a two-phase commit across workers, still atomic; co-locate the handler's tables by the same
///   key where possible.
///
/// Cloning is cheap: clones share the pool, the statements, the listener and the sweep state.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    table: schema::Table,
    statements: Statements,
    ttl: Duration,
    key_ttl: Duration,
    poll_interval: Duration,
    sweep_every: u64,
    sweep_batch: i64,
    begins: AtomicU64,
    sweeping: AtomicBool,
    listener: Listener,
}

/// Builds a [`PostgresStore`]: [`PostgresStore::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct PostgresStoreBuilder {
    pool: PgPool,
    ttl: Duration,
    key_ttl: Duration,
    table: String,
    poll_interval: Duration,
    sweep_every: u64,
    sweep_batch: u32,
}

impl PostgresStoreBuilder {
    /// How long completed responses are kept and replayed (default 24 h).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a completed key is remembered in all (default 7 days), at least
    /// [`ttl`](Self::ttl).
    ///
    /// When a response's retention (`ttl`) runs out, the key's row stays, without the response,
    /// until `key_ttl` after it was completed: a retry in that time gets the layer's
    /// [`result-expired`](crate::problem#result-expired) problem (`409`) instead of running
    /// again, and a different request under the key still gets the mismatch (`422`). The sweep
    /// frees the response of such rows; a remembered key then costs about 200 bytes of table
    /// and indexes (see "Retention" on [`PostgresStore`]). A key whose effects committed
    /// ([`commit_in`](crate::IdempotencyClaim::commit_in)) is remembered as long. Set it equal
    /// to `ttl` to forget keys together with their responses; a shorter value counts as `ttl`.
    pub fn key_ttl(mut self, key_ttl: Duration) -> Self {
        self.key_ttl = key_ttl;
        self
    }

    /// The table (default `idempotency`): one or two lowercase SQL identifiers joined by a dot
    /// (`billing.idempotency`). Also the name of the `NOTIFY` channel.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// How often a waiter looks at its key while the listener is not connected (default
    /// 25 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Every how many `begin`s the store sweeps expired rows (default 100; at least 1).
    pub fn sweep_every(mut self, begins: u64) -> Self {
        self.sweep_every = begins.max(1);
        self
    }

    /// How many expired rows one sweep deletes at most (default 1000; at least 1).
    pub fn sweep_batch(mut self, rows: u32) -> Self {
        self.sweep_batch = rows.max(1);
        self
    }

    /// The store, or why the configuration is not usable: an invalid table name, or a zero
    /// TTL or poll interval.
    pub fn build(self) -> Result<PostgresStore, PostgresConfigError> {
        let table = schema::Table::new(&self.table).map_err(PostgresConfigError::Table)?;
        if self.ttl.is_zero() {
            return Err(PostgresConfigError::ZeroDuration("ttl"));
        }
        if self.poll_interval.is_zero() {
            return Err(PostgresConfigError::ZeroDuration("poll interval"));
        }
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                statements: Statements::new(&table),
                pool: self.pool,
                table,
                ttl: self.ttl,
                key_ttl: self.key_ttl.max(self.ttl),
                poll_interval: self.poll_interval,
                sweep_every: self.sweep_every,
                sweep_batch: i64::from(self.sweep_batch),
                begins: AtomicU64::new(0),
                sweeping: AtomicBool::new(false),
                listener: Listener::new(),
            }),
        })
    }
}

/// Why [`PostgresStoreBuilder::build`] refused a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PostgresConfigError {
    /// The table name is not valid.
    Table(InvalidTableName),
    /// A duration that must not be zero was zero (its name).
    ZeroDuration(&'static str),
}

impl fmt::Display for PostgresConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Table(e) => e.fmt(f),
            Self::ZeroDuration(what) => write!(f, "the {what} must not be zero"),
        }
    }
}

impl std::error::Error for PostgresConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Table(e) => Some(e),
            Self::ZeroDuration(_) => None,
        }
    }
}

impl PostgresStore {
    /// The table name [`new`](Self::new) uses.
    pub const DEFAULT_TABLE: &'static str = "idempotency";

    /// A store in the table `idempotency` of `pool`'s database that keeps completed records
    /// for `ttl`. Call [`migrate`](Self::migrate) (or run [`schema_sql`](Self::schema_sql))
    /// once before use.
    ///
    /// # Panics
    ///
    /// When `ttl` is zero: records would vanish as soon as they are written. Use
    /// [`builder`](Self::builder) to get an error instead.
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        match Self::builder(pool).ttl(ttl).build() {
            Ok(store) => store,
            Err(e) => panic!("PostgresStore: {e}"),
        }
    }

    /// A builder for a store over `pool`, with the defaults of [`new`](Self::new), a TTL of
    /// 24 hours and a key TTL of 7 days.
    pub fn builder(pool: PgPool) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            pool,
            ttl: DEFAULT_TTL,
            key_ttl: DEFAULT_KEY_TTL,
            table: Self::DEFAULT_TABLE.to_owned(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            sweep_every: 100,
            sweep_batch: 1000,
        }
    }

    /// How long completed responses are kept.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// How long completed keys are remembered, at least [`ttl`](Self::ttl); see
    /// [`PostgresStoreBuilder::key_ttl`].
    pub fn key_ttl(&self) -> Duration {
        self.inner.key_ttl
    }

    /// The table, as configured (also the `NOTIFY` channel).
    pub fn table(&self) -> &str {
        self.inner.table.name()
    }

    /// The pool the store runs its statements on.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Deletes up to one batch of rows that expired more than a minute ago and frees the
    /// responses of up to one batch of remembered keys (whose response retention ran out), and
    /// returns how many rows it changed. The store runs this by itself (see "Expiry without a
    /// cron job"); calling it is never needed for correctness.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        let row = sqlx::query(&self.inner.statements.sweep)
            .bind(self.inner.sweep_batch)
            .bind(micros(SWEEP_GRACE))
            .fetch_one(&self.inner.pool)
            .await
            .map_err(map_error)?;
        let deleted: i64 = row.try_get(0).map_err(map_error)?;
        let freed: i64 = row.try_get(1).map_err(map_error)?;
        if deleted + freed > 0 {
            tracing::debug!(deleted, freed, "swept idempotency rows");
        }
        Ok(u64::try_from(deleted + freed).unwrap_or(0))
    }

    /// Spawns a sweep on every `sweep_every`-th call, unless one is running.
    fn maybe_sweep(&self) {
        let inner = &self.inner;
        if !inner
            .begins
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(inner.sweep_every)
        {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if inner.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.clone();
        handle.spawn(async move {
            if let Err(e) = store.sweep().await {
                tracing::debug!(error = %e, "sweeping expired idempotency rows failed");
            }
            store.inner.sweeping.store(false, Ordering::Release);
        });
    }

    /// The `commit_in` statement on `conn`; see [`IdempotencyClaim::commit_in`].
    ///
    /// [`IdempotencyClaim::commit_in`]: crate::IdempotencyClaim::commit_in
    async fn commit_effects(
        &self,
        conn: &mut PgConnection,
        key: &StoreKey,
        token: OwnerToken,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(&self.inner.statements.commit_in)
            .bind(&key.digest()[..])
            .bind(&token.to_bytes()[..])
            .bind(micros(self.inner.key_ttl))
            .bind(micros(self.inner.ttl))
            .execute(conn)
            .await
            .map_err(map_error)?;
        match done.rows_affected() {
            1 => Ok(()),
            _ => Err(StoreError::new(StoreErrorKind::NotOwner)),
        }
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("PostgresStore")
            .field("table", &inner.table.name())
            .field("ttl", &inner.ttl)
            .field("key_ttl", &inner.key_ttl)
            .field("poll_interval", &inner.poll_interval)
            .field("sweep_every", &inner.sweep_every)
            .field("sweep_batch", &inner.sweep_batch)
            .finish_non_exhaustive()
    }
}

impl Store for PostgresStore {
    /// PostgreSQL is a server: the layer coalesces duplicates in process.
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
        self.maybe_sweep();
        let token_bytes = token.to_bytes();
        for _ in 0..BEGIN_ATTEMPTS {
            let row = sqlx::query(&self.inner.statements.begin)
                .bind(&key.digest()[..])
                .bind(&token_bytes[..])
                .bind(fingerprint.map(|fp| &fp.as_bytes()[..]))
                .bind(micros(lease))
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(map_error)?;
            // No row: the claim was refused for a row this statement's snapshot does not show.
            let Some(row) = row else { continue };
            if row.try_get::<bool, _>(0).map_err(map_error)? {
                return Ok(Begin::New);
            }
            let alive: bool = row.try_get(7).map_err(map_error)?;
            match decode(&row)? {
                // Free, or ours, in the snapshot, yet refused: a newer version exists.
                _ if !alive => continue,
                Entry::InProgress { token: holder, .. } if holder == token => continue,
                Entry::InProgress { fingerprint, .. } => {
                    return Ok(Begin::InProgress { fingerprint });
                }
                Entry::Completed(record) => return Ok(Begin::Completed(record)),
            }
        }
        Err(StoreError::with_source(
            StoreErrorKind::Other,
            "begin was raced by concurrent claims on every attempt",
        ))
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        record: &Record,
    ) -> Result<(), StoreError> {
        let row = sqlx::query(&self.inner.statements.complete)
            .bind(&key.digest()[..])
            .bind(&token.to_bytes()[..])
            .bind(&record.as_bytes()[..])
            .bind(micros(self.inner.key_ttl))
            .bind(self.inner.table.name())
            .bind(micros(self.inner.ttl))
            .fetch_one(&self.inner.pool)
            .await
            .map_err(map_error)?;
        let landed: i64 = row.try_get(0).map_err(map_error)?;
        let already: bool = row.try_get(1).map_err(map_error)?;
        if landed == 1 || already {
            Ok(())
        } else {
            Err(StoreError::new(StoreErrorKind::NotOwner))
        }
    }

    async fn get(&self, key: &StoreKey) -> Result<Option<Entry>, StoreError> {
        let row = sqlx::query(&self.inner.statements.get)
            .bind(&key.digest()[..])
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(map_error)?;
        row.map(|row| decode_at(&row, 0)).transpose()
    }

    async fn release(&self, key: &StoreKey, token: OwnerToken) -> Result<(), StoreError> {
        let row = sqlx::query(&self.inner.statements.release)
            .bind(&key.digest()[..])
            .bind(&token.to_bytes()[..])
            .bind(self.inner.table.name())
            .fetch_one(&self.inner.pool)
            .await
            .map_err(map_error)?;
        let freed: i64 = row.try_get(0).map_err(map_error)?;
        if freed == 1 {
            Ok(())
        } else {
            Err(StoreError::new(StoreErrorKind::NotOwner))
        }
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(&self.inner.statements.renew)
            .bind(&key.digest()[..])
            .bind(&token.to_bytes()[..])
            .bind(micros(lease))
            .execute(&self.inner.pool)
            .await
            .map_err(map_error)?;
        match done.rows_affected() {
            1 => Ok(()),
            _ => Err(StoreError::new(StoreErrorKind::NotOwner)),
        }
    }

    /// Waits for a `NOTIFY` of the key, the end of its owner's lease, or `timeout`; see
    /// "Waiting" in the [type's docs](PostgresStore).
    async fn wait(&self, key: &StoreKey, timeout: Duration) -> Result<(), StoreError> {
        let deadline = Instant::now() + timeout;
        let inner = &self.inner;
        let registration = inner
            .listener
            .register(&inner.pool, inner.table.name(), *key.digest());
        let notified = registration.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let watch = sqlx::query_scalar(&inner.statements.lease_left)
            .bind(&key.digest()[..])
            .fetch_optional(&inner.pool);
        // The mark waits for the row lock, which a handler's transaction holds from its
        // `commit_in` to its commit: the wait's own timeout bounds that too.
        let Ok(left) = tokio::time::timeout_at(deadline, watch).await else {
            return Ok(());
        };
        let left: Option<i64> = left.map_err(map_error)?;
        let Some(left) = left else {
            // Not in progress (any more).
            return Ok(());
        };
        let now = Instant::now();
        let lease_end = now + Duration::from_micros(u64::try_from(left).unwrap_or(0));
        let mut until = deadline.min(lease_end);
        if !inner.listener.is_listening() {
            until = until.min(now + inner.poll_interval);
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(until) => {}
        }
        Ok(())
    }

    /// One `SELECT` of the live row; `expires_in` is counted by the database's clock: the
    /// lease left while the key is in progress (a `committed` row too, until its owner's lease
    /// ends), the response retention left for a completed key, the key retention left once
    /// the response expired. The response is read only when `options` ask for it. See
    /// "Operators" in the [type's docs](PostgresStore).
    async fn lookup(
        &self,
        key: &StoreKey,
        options: LookupOptions,
    ) -> Result<Option<KeyInfo>, StoreError> {
        self.lookup_key(key, options).await
    }

    /// One `DELETE … RETURNING` of the live row, which notifies the key's waiters.
    ///
    /// **Forcing a `committed` row is dangerous**: that key's effects are already committed
    /// (by [`commit_in`](crate::IdempotencyClaim::commit_in)) and only its response is not
    /// recorded yet, so the next request with the key runs the handler, and its effects, a
    /// second time. See "Operators" in the [type's docs](PostgresStore).
    async fn evict(&self, key: &StoreKey, how: Evict) -> Result<Evicted, StoreError> {
        self.evict_key(key, how).await
    }
}

/// The entry of a row whose columns from 1 on are `state, token, fingerprint, live, record,
/// expired`.
fn decode(row: &PgRow) -> Result<Entry, StoreError> {
    decode_at(row, 1)
}

/// The entry of a row whose columns from `at` on are `state, token, fingerprint, live, record,
/// expired`. A completed key past its response retention (`expired`) is the small record of
/// [`Record::response_expired`], made here: the statements never send its response.
fn decode_at(row: &PgRow, at: usize) -> Result<Entry, StoreError> {
    let state: String = row.try_get(at).map_err(map_error)?;
    let token: Vec<u8> = row.try_get(at + 1).map_err(map_error)?;
    let fingerprint: Option<Vec<u8>> = row.try_get(at + 2).map_err(map_error)?;
    let live: bool = row.try_get(at + 3).map_err(map_error)?;
    let record: Option<Vec<u8>> = row.try_get(at + 4).map_err(map_error)?;
    let expired: bool = row.try_get(at + 5).map_err(map_error)?;
    let token = decode_token(token)?;
    let fingerprint = fingerprint
        .map(|fp| {
            fp.try_into()
                .map(Fingerprint::from_bytes)
                .map_err(|_| corrupt("the fingerprint is not 32 bytes"))
        })
        .transpose()?;
    let not_stored = || Entry::Completed(Record::not_stored(fingerprint));
    match (state.as_str(), record) {
        ("claimed", _) => Ok(Entry::InProgress { fingerprint, token }),
        ("committed", _) if live => Ok(Entry::InProgress { fingerprint, token }),
        ("committed" | "completed", _) if expired => {
            Ok(Entry::Completed(Record::response_expired(fingerprint)))
        }
        ("committed", _) | ("completed", None) => Ok(not_stored()),
        ("completed", Some(record)) => {
            Ok(Entry::Completed(Record::from_bytes(Bytes::from(record))?))
        }
        _ => Err(corrupt("unknown state")),
    }
}

/// The owner token of a row's `token` column.
fn decode_token(token: Vec<u8>) -> Result<OwnerToken, StoreError> {
    token
        .try_into()
        .map(OwnerToken::from_bytes)
        .map_err(|_| corrupt("the owner token is not 16 bytes"))
}

/// A duration in microseconds for `$n * interval '1 microsecond'`: rounded up, at least 1.
fn micros(d: Duration) -> i64 {
    let us = d.as_nanos().div_ceil(1_000);
    i64::try_from(us).unwrap_or(i64::MAX).clamp(1, MAX_MICROS)
}

/// Why a row could not be decoded.
#[derive(Debug)]
struct RowError(&'static str);

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid idempotency row: {}", self.0)
    }
}

impl std::error::Error for RowError {}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::with_source(StoreErrorKind::Corrupt, RowError(what))
}

/// sqlx's errors as [`StoreErrorKind`]s; the table is in the docs of [`PostgresStore`].
fn map_error(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    let kind = match &e {
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed => StoreErrorKind::Unavailable,
        E::Database(db) => match db.code().as_deref() {
            Some("57014") => StoreErrorKind::Timeout,
            Some(code)
                if code.starts_with("08")
                    || code.starts_with("53")
                    || matches!(code, "57P01" | "57P02" | "57P03" | "25006") =>
            {
                StoreErrorKind::Unavailable
            }
            _ => StoreErrorKind::Other,
        },
        E::ColumnDecode { .. }
        | E::Decode(_)
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. } => StoreErrorKind::Corrupt,
        _ => StoreErrorKind::Other,
    };
    StoreError::with_source(kind, e)
}

// The futures of every public operation are `Send`, so they run in `tokio::spawn` and in axum
// handlers; this fails to compile if one is not.
const _: fn() = || {
    fn assert_send<T: Send>(_: T) {}
    fn check(store: PostgresStore, conn: &mut PgConnection, claim: crate::IdempotencyClaim) {
        assert_send(async move {
            let _ = store.migrate().await;
            let _ = store.sweep().await;
            let _ = claim.commit_in(conn, &store).await;
        });
    }
    let _ = check;
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_rounds_up_and_clamps() {
        assert_eq!(micros(Duration::ZERO), 1);
        assert_eq!(micros(Duration::from_nanos(1500)), 2);
        assert_eq!(micros(Duration::from_secs(30)), 30_000_000);
        assert_eq!(micros(Duration::MAX), MAX_MICROS);
    }

    #[tokio::test]
    async fn the_builder_refuses_bad_configurations() {
        let pool = PgPool::connect_lazy("postgres://localhost/none").unwrap();
        let build = |b: PostgresStoreBuilder| b.build().map(|_| ()).unwrap_err();
        assert!(matches!(
            build(PostgresStore::builder(pool.clone()).table("a;b")),
            PostgresConfigError::Table(_)
        ));
        assert_eq!(
            build(PostgresStore::builder(pool.clone()).ttl(Duration::ZERO)),
            PostgresConfigError::ZeroDuration("ttl")
        );
        let store = PostgresStore::builder(pool.clone())
            .table("app.idem")
            .build()
            .unwrap();
        assert_eq!(store.table(), "app.idem");
        assert_eq!(store.key_ttl(), DEFAULT_KEY_TTL);
        let hour = Duration::from_secs(3600);
        let short = PostgresStore::builder(pool)
            .ttl(hour)
            .key_ttl(Duration::from_secs(1))
            .build()
            .unwrap();
        assert_eq!(
            short.key_ttl(),
            hour,
            "a key is kept at least with its response"
        );
    }
}
