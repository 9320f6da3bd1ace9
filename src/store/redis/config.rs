//! `check_config`: what the server's settings mean for this store, read once at startup.

use std::collections::HashMap;

use ::redis::RedisError;
use ::redis::aio::ConnectionLike;

use super::RedisStore;
use super::errors::{NEEDS_REDIS_7, is_transport_error, map_error};
use super::fenced::Commands;
use crate::store::{StoreError, StoreErrorKind};

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
    /// and on an older server the call fails with [`StoreErrorKind::Other`] saying so. The same
    /// reply tells whether `complete` can be the fenced `SET … IFEQ`
    /// ([`ConfigReport::fenced_complete`]); without this call the store asks on its first
    /// `complete`.
    ///
    /// And it reads the server's persistence (`INFO persistence`, and `CONFIG GET save
    /// appendfsync` where allowed), since persistence decides what a restart can lose
    /// ([`Persistence`]); without persistence, or with snapshots only, it logs a warning.
    ///
    /// Call it once at startup; it is not on any request's path. Fails only when the server
    /// cannot be reached or is too old.
    pub async fn check_config(&self) -> Result<ConfigReport, StoreError> {
        let mut connection = self.connection.clone();
        let info: Result<String, RedisError> = ::redis::cmd("INFO")
            .arg("server")
            .query_async(&mut connection)
            .await;
        let (redis_version, fenced_complete) = match info {
            Ok(info) => (
                server_version(&info),
                self.commands().await? == Commands::SetIfEq,
            ),
            Err(e) if is_transport_error(&e) => return Err(map_error(e)),
            Err(_) => (None, false),
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
        let persistence = self.persistence().await?;
        if let Some(persistence) = &persistence
            && !persistence.keeps_every_acknowledged_write()
        {
            tracing::warn!(
                persistence = ?persistence,
                "{}",
                persistence.what_a_restart_loses()
            );
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
                fenced_complete,
                persistence,
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
                    fenced_complete,
                    persistence,
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

    /// The server's persistence: whether the append-only file is on (`INFO persistence`, which
    /// managed servers allow), and its `appendfsync` and the snapshot `save` rules where
    /// `CONFIG GET` is allowed. `None` when the server does not say.
    async fn persistence(&self) -> Result<Option<Persistence>, StoreError> {
        let mut connection = self.connection.clone();
        let info: Result<String, RedisError> = ::redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut connection)
            .await;
        let aof = match info {
            Ok(info) => info
                .lines()
                .find_map(|line| line.strip_prefix("aof_enabled:"))
                .map(|v| v.trim() == "1"),
            Err(e) if is_transport_error(&e) => return Err(map_error(e)),
            Err(_) => None,
        };
        let config: Result<HashMap<String, String>, RedisError> = ::redis::cmd("CONFIG")
            .arg("GET")
            .arg("save")
            .arg("appendfsync")
            .query_async(&mut connection)
            .await;
        let config = match config {
            Ok(config) => Some(config),
            Err(e) if is_transport_error(&e) => return Err(map_error(e)),
            Err(_) => None,
        };
        Ok(Persistence::from_settings(aof, config.as_ref()))
    }
}

/// How a Redis server keeps what it acknowledged, and so what a restart (or a failover to a
/// replica that had not caught up) can lose; from [`RedisStore::check_config`].
///
/// A lost claim lets a duplicate run while the first request still runs; a lost record lets a
/// retry run the request again. The layer can promise at most once only for what the server
/// keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Persistence {
    /// Neither snapshots nor the append-only file: a restart loses every claim and record.
    None,
    /// Snapshots only (`save` rules, the RDB file): a restart loses what was written since the
    /// last snapshot, up to the longest `save` interval.
    Snapshots {
        /// The `save` rules, as `CONFIG GET save` reports them.
        save: String,
    },
    /// The append-only file (AOF), with or without snapshots: a restart loses what was not yet
    /// synced to disk.
    AppendOnly {
        /// `appendfsync`: `always` loses nothing acknowledged, `everysec` up to about a second
        /// of writes, `no` what the OS had not flushed (up to about 30 s); `None` when unknown.
        fsync: Option<String>,
    },
}

impl Persistence {
    fn from_settings(aof: Option<bool>, config: Option<&HashMap<String, String>>) -> Option<Self> {
        let fsync = config.and_then(|c| c.get("appendfsync")).cloned();
        match aof {
            Some(true) => Some(Self::AppendOnly { fsync }),
            Some(false) => {
                let save = config?.get("save")?.trim().to_owned();
                Some(if save.is_empty() {
                    Self::None
                } else {
                    Self::Snapshots { save }
                })
            }
            None => None,
        }
    }

    /// Whether a restart keeps every write the server acknowledged (`appendfsync always`).
    pub fn keeps_every_acknowledged_write(&self) -> bool {
        matches!(self, Self::AppendOnly { fsync: Some(f) } if f == "always")
    }

    /// What a restart of the server loses, in a sentence for logs and dashboards.
    pub fn what_a_restart_loses(&self) -> &'static str {
        match self {
            Self::None => {
                "Redis has no persistence: a restart loses every idempotency claim and record, \
                 and retries after it run their requests again"
            }
            Self::Snapshots { .. } => {
                "Redis keeps snapshots only: a restart loses the idempotency records written \
                 since the last snapshot, and their retries run again"
            }
            Self::AppendOnly { fsync: Some(f) } if f == "always" => {
                "Redis syncs every write to its append-only file: a restart loses nothing it \
                 acknowledged"
            }
            Self::AppendOnly { fsync: Some(f) } if f == "everysec" => {
                "Redis syncs its append-only file every second: a crash of the server loses up \
                 to about a second of idempotency records, and their retries run again"
            }
            Self::AppendOnly { .. } => {
                "Redis leaves syncing its append-only file to the OS: a crash of the machine \
                 loses the idempotency records not yet flushed, and their retries run again"
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
    /// Whether `complete` and `renew` are sent as the fenced `SET … IFEQ` (Valkey 8.1+, Redis
    /// 8.4+, unless [turned off](RedisStore::with_fenced_commands)); otherwise they are Lua
    /// scripts.
    pub fenced_complete: bool,
    /// The server's persistence, and so what a restart loses; `None` when unknown.
    pub persistence: Option<Persistence>,
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn persistence_from_the_settings() {
        let config = |save: &str, fsync: &str| {
            HashMap::from([
                ("save".to_owned(), save.to_owned()),
                ("appendfsync".to_owned(), fsync.to_owned()),
            ])
        };
        let none = config("", "everysec");
        assert_eq!(
            Persistence::from_settings(Some(false), Some(&none)),
            Some(Persistence::None)
        );
        let rdb = config("3600 1 300 100", "everysec");
        assert_eq!(
            Persistence::from_settings(Some(false), Some(&rdb)),
            Some(Persistence::Snapshots {
                save: "3600 1 300 100".into()
            })
        );
        let aof = Persistence::from_settings(Some(true), Some(&config("", "always"))).unwrap();
        assert!(aof.keeps_every_acknowledged_write());
        let everysec = Persistence::from_settings(Some(true), Some(&rdb)).unwrap();
        assert!(!everysec.keeps_every_acknowledged_write());
        assert!(everysec.what_a_restart_loses().contains("about a second"));
        // CONFIG disabled: the append-only file still shows in INFO; snapshots cannot.
        assert_eq!(
            Persistence::from_settings(Some(true), None),
            Some(Persistence::AppendOnly { fsync: None })
        );
        assert_eq!(Persistence::from_settings(Some(false), None), None);
        assert_eq!(Persistence::from_settings(None, Some(&rdb)), None);
    }

    #[test]
    fn config_report() {
        let report = |maxmemory, policy: Option<&str>| ConfigReport {
            maxmemory,
            maxmemory_policy: policy.map(String::from),
            redis_version: None,
            fenced_complete: false,
            persistence: None,
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
