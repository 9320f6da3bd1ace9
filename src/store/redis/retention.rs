//! Key retention: what the store remembers of a completed key after its response expired.
//!
//! `complete` writes, next to the record (`K`, kept for the store's `ttl`), a *tombstone*
//! `K:t` kept for the key retention (`key_ttl`): the same layout as a completed value, holding
//! [`Record::response_expired`] with the request's fingerprint and no response. `K:t` shares
//! `K`'s hash tag, so both live in one slot of a cluster.
//!
//! `begin` sends `GET K:t` in the same round trip as its `SET … NX … GET`. A key whose record is
//! gone but whose tombstone is there was claimed by that `SET`; the store drops that claim again
//! (owner-checked) and answers with the tombstone, so the layer answers `result-expired` and the
//! request does not run a second time.

use ::redis::Value;
use ::redis::aio::ConnectionLike;
use bytes::Bytes;

use super::RedisStore;
use super::errors::unexpected_reply;
use super::layout::{COMPLETED, HEADER_LEN, VERSION, decode, millis};
use super::scripts::RELEASE;
use crate::store::{Begin, Entry, OwnerToken, Record, StoreError, StoreKey};

/// The suffix of a tombstone's key: `{prefix}{<digest>}:t`.
const SUFFIX: &str = ":t";

impl<C> RedisStore<C> {
    /// Whether `complete` writes tombstones: only when keys outlive their responses.
    pub(super) fn remembers_keys(&self) -> bool {
        self.key_ttl > self.ttl
    }

    /// The Redis key of `key`'s tombstone, `{prefix}{<hex digest>}:t`.
    pub(super) fn tombstone_key(&self, key: &StoreKey) -> String {
        let mut out = self.redis_key(key);
        out.push_str(SUFFIX);
        out
    }

    /// The tombstone's expiry, counted from `complete` like the record's: `key_ttl`.
    pub(super) fn tombstone_px(&self) -> u64 {
        millis(self.key_ttl)
    }
}

/// The tombstone's value for `record` completed by `token`: the fingerprint, no response.
pub(super) fn tombstone(token: OwnerToken, record: &Record) -> Vec<u8> {
    let expired = Record::response_expired(record.fingerprint().copied());
    let mut value = Vec::with_capacity(HEADER_LEN + expired.as_bytes().len());
    value.extend_from_slice(&[VERSION, COMPLETED]);
    value.extend_from_slice(&token.to_bytes());
    value.extend_from_slice(expired.as_bytes());
    value
}

/// A tombstone's reply (`GET K:t`): the record it holds, when there is one.
pub(super) fn read_tombstone(reply: Value) -> Result<Option<Record>, StoreError> {
    match reply {
        Value::Nil => Ok(None),
        Value::BulkString(value) => match decode(Bytes::from(value))? {
            Entry::Completed(record) => Ok(Some(record)),
            Entry::InProgress { .. } => Err(super::layout::corrupt("a claim in a tombstone")),
        },
        other => Err(unexpected_reply(&other)),
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// `begin` claimed a key whose response expired while the key is remembered: drops that
    /// claim again and answers with the tombstone. When the drop fails, the claim expires with
    /// its lease (duplicates meanwhile see it in progress); the answer is the same.
    pub(super) async fn refuse_expired(
        &self,
        key: &StoreKey,
        token: OwnerToken,
        tombstone: Record,
    ) -> Begin {
        if let Err(e) = self.owner_checked(&RELEASE, key, token, &[]).await {
            tracing::debug!(error = %e, "dropping the claim of a key whose response expired failed; it ends with its lease");
        }
        Begin::Completed(tombstone)
    }
}
