//! `complete` as one fenced command, `SET … IFEQ … GET`, on servers that have it (Valkey 8.1 and
//! newer, Redis 8.4 and newer); the script otherwise. Detected once per store.

use ::redis::Value;
use ::redis::aio::ConnectionLike;

use super::RedisStore;
use super::errors::{is_transport_error, map_error, unexpected_reply};
use super::layout::{CLAIMED, COMPLETED, Claim, HEADER_LEN, VERSION, millis};
use super::scripts::COMPLETE;
use crate::store::{OwnerToken, Record, StoreError, StoreErrorKind, StoreKey};

/// How the store sends `complete`, once it knows the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Commands {
    /// The Lua script (Redis 7.x, or fenced commands turned off).
    Scripts,
    /// `SET … IFEQ <claim> … GET`.
    SetIfEq,
}

impl Commands {
    /// What `INFO server` says the server has: `SET … IFEQ` from Valkey 8.1 and Redis 8.4.
    pub(super) fn of(info: &str) -> Self {
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|v| version(v.trim()))
        };
        let fenced = match field("valkey_version:") {
            Some(valkey) => valkey >= (8, 1),
            None => field("redis_version:").is_some_and(|redis| redis >= (8, 4)),
        };
        if fenced { Self::SetIfEq } else { Self::Scripts }
    }
}

/// `major.minor` of a version string; unreadable parts count as 0.
fn version(v: &str) -> (u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// How to send `complete`: asked once (`INFO server`), then remembered by every clone.
    /// A server that cannot be asked now gets the script this time and is asked again later.
    pub(super) async fn commands(&self) -> Commands {
        if !self.fenced {
            return Commands::Scripts;
        }
        if let Some(commands) = self.commands.get() {
            return *commands;
        }
        let mut connection = self.connection.clone();
        let info: Result<String, _> = ::redis::cmd("INFO")
            .arg("server")
            .query_async(&mut connection)
            .await;
        let commands = match info {
            Ok(info) => Commands::of(&info),
            Err(e) if is_transport_error(&e) => return Commands::Scripts,
            // `INFO` refused (renamed by a managed offering): keep to what every server has.
            Err(_) => Commands::Scripts,
        };
        *self.commands.get_or_init(|| async { commands }).await
    }

    pub(super) async fn complete_with(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        record: &Record,
    ) -> Result<(), StoreError> {
        match self.commands().await {
            Commands::SetIfEq => self.complete_fenced(key, token, record).await,
            Commands::Scripts => {
                let ttl = millis(self.ttl).to_string();
                self.owner_checked(
                    &COMPLETE,
                    key,
                    token,
                    &[&record.as_bytes()[..], ttl.as_bytes()],
                )
                .await
            }
        }
    }

    /// `SET <key> <record> IFEQ <claim> PX <ttl> GET`: written only over this token's claim,
    /// and the reply is the value that was there, which tells what happened.
    ///
    /// `IFEQ` compares whole values, and a claim holds the request's fingerprint: the store
    /// expects the record's own (the layer records the fingerprint it claimed with). When the
    /// key holds this token's claim with another fingerprint, the command is sent once more
    /// with that claim; nobody else writes a claim with this token.
    async fn complete_fenced(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        record: &Record,
    ) -> Result<(), StoreError> {
        let redis_key = self.redis_key(key);
        let mut value = Vec::with_capacity(HEADER_LEN + record.as_bytes().len());
        value.extend_from_slice(&[VERSION, COMPLETED]);
        value.extend_from_slice(&token.to_bytes());
        value.extend_from_slice(record.as_bytes());
        let ttl = millis(self.ttl);
        let mut expected = Claim::new(token, record.fingerprint()).as_bytes().to_vec();
        for _ in 0..2 {
            let mut connection = self.connection.clone();
            let reply: Value = ::redis::cmd("SET")
                .arg(&redis_key)
                .arg(&value)
                .arg("IFEQ")
                .arg(&expected)
                .arg("PX")
                .arg(ttl)
                .arg("GET")
                .query_async(&mut connection)
                .await
                .map_err(map_error)?;
            let found = match reply {
                Value::BulkString(found) => found,
                Value::Nil => break,
                other => return Err(unexpected_reply(&other)),
            };
            if found == expected {
                return Ok(());
            }
            let ours = found.len() >= HEADER_LEN
                && found[0] == VERSION
                && found[2..HEADER_LEN] == token.to_bytes();
            match found.get(1) {
                // Completed by this token already: a `complete` re-sent after a lost reply.
                Some(&COMPLETED) if ours => return Ok(()),
                Some(&CLAIMED) if ours => expected = found,
                _ => break,
            }
        }
        Err(StoreError::new(StoreErrorKind::NotOwner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_servers_with_set_ifeq() {
        let info = |lines: &str| format!("# Server\r\n{lines}\r\nredis_mode:standalone\r\n");
        let of = |lines: &str| Commands::of(&info(lines));
        assert_eq!(of("redis_version:7.0.15"), Commands::Scripts);
        assert_eq!(of("redis_version:8.2.1"), Commands::Scripts);
        assert_eq!(of("redis_version:8.4.0"), Commands::SetIfEq);
        assert_eq!(of("redis_version:10.0.0"), Commands::SetIfEq);
        // Valkey answers with a Redis-compatible `redis_version` of 7.2.4: its own decides.
        let valkey = |v: &str| of(&format!("redis_version:7.2.4\r\nvalkey_version:{v}"));
        assert_eq!(valkey("8.0.2"), Commands::Scripts);
        assert_eq!(valkey("8.1.8"), Commands::SetIfEq);
        assert_eq!(valkey("9.0.0"), Commands::SetIfEq);
        assert_eq!(of("server_name:unknown"), Commands::Scripts);
    }
}
