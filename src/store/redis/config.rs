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
    fn config_report() {
        let report = |maxmemory, policy: Option<&str>| ConfigReport {
            maxmemory,
            maxmemory_policy: policy.map(String::from),
            redis_version: None,
            fenced_complete: false,
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
