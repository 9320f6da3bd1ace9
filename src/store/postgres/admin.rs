//! The operator's calls on a [`PostgresStore`]: [`Store::lookup`](crate::store::Store::lookup)
//! and [`Store::evict`](crate::store::Store::evict), one statement each (see "Operators" on
//! [`PostgresStore`]).

use std::time::Duration;

use sqlx::Row;

use super::{PostgresStore, decode_at, decode_token, map_error};
use crate::store::{Evict, Evicted, KeyInfo, LookupOptions, StoreError, StoreKey};

impl PostgresStore {
    /// The `lookup` statement: the live row decoded as `get` decodes it (the response only when
    /// `options` ask for it), with the time its state has left by the database's clock.
    pub(super) async fn lookup_key(
        &self,
        key: &StoreKey,
        options: LookupOptions,
    ) -> Result<Option<KeyInfo>, StoreError> {
        let row = sqlx::query(&self.inner.statements.lookup)
            .bind(&key.digest()[..])
            .bind(options.with_response)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(map_error)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let entry = decode_at(&row, 0)?;
        let left: i64 = row.try_get(6).map_err(map_error)?;
        let left = Duration::from_micros(u64::try_from(left).unwrap_or(0));
        Ok(Some(
            KeyInfo::from_entry(entry, options).with_expires_in(left),
        ))
    }

    /// The `evict` statement: removes the live row unless it is in progress and `how` does not
    /// force, and notifies the row's waiters when it removes it.
    pub(super) async fn evict_key(
        &self,
        key: &StoreKey,
        how: Evict,
    ) -> Result<Evicted, StoreError> {
        let row = sqlx::query(&self.inner.statements.evict)
            .bind(&key.digest()[..])
            .bind(how == Evict::Force)
            .bind(self.inner.table.name())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(map_error)?;
        let Some(row) = row else {
            return Ok(Evicted::Nothing);
        };
        let token: Vec<u8> = row.try_get(0).map_err(map_error)?;
        let in_progress: bool = row.try_get(1).map_err(map_error)?;
        let owner = decode_token(token)?;
        // The statement removed the row it locked unless it was in progress and not forced.
        Ok(match (in_progress, how) {
            (false, _) => Evicted::Record,
            (true, Evict::Force) => Evicted::Claim { owner },
            (true, _) => Evicted::Refused { owner },
        })
    }
}
