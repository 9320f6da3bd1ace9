//! The Lua scripts of the owner-checked operations, for servers without fenced commands.

use std::sync::LazyLock;

use ::redis::aio::ConnectionLike;
use ::redis::{Script, ScriptInvocation, Value};
use bytes::Bytes;

use super::RedisStore;
use super::errors::{map_error, unexpected_reply};
use super::layout::millis;
use crate::store::{OwnerToken, Record, StoreError, StoreErrorKind, StoreKey};

/// `complete`. KEYS[1] the record, KEYS[2] its tombstone; ARGV[1] token, ARGV[2] record,
/// ARGV[3] retention ms, ARGV[4] the tombstone's record (empty: none), ARGV[5] key retention ms.
/// Stores the record (and the tombstone) when the token holds the claim or the key is free (its
/// claim expired and nobody claimed it since). Returns 1 when the record is stored (now or by an
/// earlier call of the same token), else 0.
pub(super) static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local head = redis.call('GETRANGE', KEYS[1], 0, 17)
if head == '\1\1' .. ARGV[1] or head == '' then
  redis.call('SET', KEYS[1], '\1\2' .. ARGV[1] .. ARGV[2], 'PX', ARGV[3])
  if ARGV[4] ~= '' then
    redis.call('SET', KEYS[2], '\1\2' .. ARGV[1] .. ARGV[4], 'PX', ARGV[5])
  end
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
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
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
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| {
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

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Runs `script` on `key` with `token` and `args`: `1` is done, `0` is not the owner.
    pub(super) async fn owner_checked(
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
        self.run_owner_checked(&invocation).await
    }

    /// [`COMPLETE`]: the record and, where keys outlive their responses, its tombstone.
    pub(super) async fn complete_scripted(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        record: &Record,
    ) -> Result<(), StoreError> {
        let tombstone = if self.remembers_keys() {
            Record::response_expired(record.fingerprint().copied())
                .as_bytes()
                .clone()
        } else {
            Bytes::new()
        };
        let mut invocation = COMPLETE.key(self.redis_key(key));
        invocation
            .key(self.tombstone_key(key))
            .arg(&token.to_bytes()[..])
            .arg(&record.as_bytes()[..])
            .arg(millis(self.ttl))
            .arg(&tombstone[..])
            .arg(self.tombstone_px());
        self.run_owner_checked(&invocation).await
    }

    /// Runs an owner-checked script: `1` is done, `0` is not the owner.
    async fn run_owner_checked(&self, invocation: &ScriptInvocation<'_>) -> Result<(), StoreError> {
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
