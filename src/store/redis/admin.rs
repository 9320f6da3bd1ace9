//! The operator's calls on a [`RedisStore`](super::RedisStore): `lookup` and `evict`, each one
//! Lua script over the key and its tombstone (`K` and `K:t` share a hash tag, so both are in
//! one slot of a cluster), so that each sees and changes the two atomically.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::aio::ConnectionLike;
use ::redis::{Script, Value};
use bytes::Bytes;

use super::RedisStore;
use super::errors::{map_error, unexpected_reply};
use super::layout::{HEADER_LEN, completed_fingerprint, corrupt, decode};
use crate::store::{Entry, Evict, Evicted, KeyInfo, KeyState, LookupOptions, StoreError, StoreKey};

/// The most of a value a lookup without the response reads: the header, and the record's head
/// up to its fingerprint (magic, version, flags, 32 bytes), which holds a whole claim too.
const HEAD_LEN: usize = HEADER_LEN + 4 + 32;

/// `lookup`. KEYS[1] the record, KEYS[2] its tombstone; ARGV[1] the last byte to read of the
/// record (`-1`: all of it). Returns `{value, pttl, length}` of the record, else of the
/// tombstone, else nil; `length` is the whole value's, so a read cut short is told from a
/// whole one. The tombstone is small and read whole.
static LOOKUP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GETRANGE', KEYS[1], 0, ARGV[1])
if v ~= '' then
  return {v, redis.call('PTTL', KEYS[1]), redis.call('STRLEN', KEYS[1])}
end
local t = redis.call('GET', KEYS[2])
if t then
  return {t, redis.call('PTTL', KEYS[2]), string.len(t)}
end
return false
",
    )
});

/// `evict`. KEYS[1] the record, KEYS[2] its tombstone; ARGV[1] `1` to remove a claim too.
/// Returns `{outcome, header}`: `nothing`, `record`, `claim` (removed) or `refused`, with the
/// record's first 18 bytes (version, state, token) for the claim's owner.
static EVICT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local head = redis.call('GETRANGE', KEYS[1], 0, 17)
if string.sub(head, 2, 2) == '\1' then
  if ARGV[1] ~= '1' then
    return {'refused', head}
  end
  redis.call('DEL', KEYS[1], KEYS[2])
  return {'claim', head}
end
if redis.call('DEL', KEYS[1], KEYS[2]) > 0 then
  return {'record', head}
end
return {'nothing', head}
",
    )
});

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    pub(super) async fn lookup_key(
        &self,
        key: &StoreKey,
        options: LookupOptions,
    ) -> Result<Option<KeyInfo>, StoreError> {
        let last: i64 = if options.with_response {
            -1
        } else {
            HEAD_LEN as i64 - 1
        };
        let mut connection = self.connection.clone();
        let reply: Value = LOOKUP
            .key(self.redis_key(key))
            .key(self.tombstone_key(key))
            .arg(last)
            .invoke_async(&mut connection)
            .await
            .map_err(map_error)?;
        if reply == Value::Nil {
            return Ok(None);
        }
        let (value, pttl, whole) = match items(reply)? {
            [
                Value::BulkString(value),
                Value::Int(pttl),
                Value::Int(length),
            ] => {
                let whole = usize::try_from(length) == Ok(value.len());
                (Bytes::from(value), pttl, whole)
            }
            other => return Err(unexpected_reply(&Value::Array(other.into()))),
        };
        let info = if whole {
            // The whole value: a claim, a tombstone, a small record, or the record asked for.
            KeyInfo::from_entry(decode(value)?, options)
        } else {
            // The head of a completed record: its fingerprint, not its response.
            KeyInfo::new(KeyState::Completed, completed_fingerprint(&value)?)
        };
        // -1: no expiry, which the store never writes.
        Ok(Some(match u64::try_from(pttl) {
            Ok(ms) => info.with_expires_in(Duration::from_millis(ms)),
            Err(_) => info,
        }))
    }

    pub(super) async fn evict_key(
        &self,
        key: &StoreKey,
        how: Evict,
    ) -> Result<Evicted, StoreError> {
        let mut connection = self.connection.clone();
        let reply: Value = EVICT
            .key(self.redis_key(key))
            .key(self.tombstone_key(key))
            .arg(u8::from(how == Evict::Force))
            .invoke_async(&mut connection)
            .await
            .map_err(map_error)?;
        let (outcome, head) = match items(reply)? {
            [Value::BulkString(outcome), Value::BulkString(head)] => (outcome, head),
            other => return Err(unexpected_reply(&Value::Array(other.into()))),
        };
        // The record's first 18 bytes, which decode as a claim without its fingerprint.
        let owner = || match decode(Bytes::from(head))? {
            Entry::InProgress { token, .. } => Ok(token),
            Entry::Completed(_) => Err(corrupt("a claim without its token")),
        };
        match outcome.as_slice() {
            b"nothing" => Ok(Evicted::Nothing),
            b"record" => Ok(Evicted::Record),
            b"claim" => Ok(Evicted::Claim { owner: owner()? }),
            b"refused" => Ok(Evicted::Refused { owner: owner()? }),
            _ => Err(unexpected_reply(&Value::BulkString(outcome))),
        }
    }
}

/// A script's array reply of exactly `N` items.
fn items<const N: usize>(reply: Value) -> Result<[Value; N], StoreError> {
    match reply {
        Value::Array(items) => {
            <[Value; N]>::try_from(items).map_err(|items| unexpected_reply(&Value::Array(items)))
        }
        other => Err(unexpected_reply(&other)),
    }
}
