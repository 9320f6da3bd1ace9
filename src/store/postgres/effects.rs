//! Exactly-once effects: the handler's transaction commits the key's "effects committed" mark.

use sqlx::PgConnection;

use super::PostgresStore;
use crate::extensions::IdempotencyClaim;
use crate::store::StoreError;

#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
impl IdempotencyClaim {
    /// Marks this claim's key "effects committed" inside the handler's own transaction `tx`,
    /// fenced by the owner token: call it as the last statement before `tx.commit()`.
    ///
    /// It succeeds only while the key's row still carries this request's token in the
    /// `claimed` state (the lease may have run out, as long as nobody claimed the key since).
    /// It locks the key's row until the transaction ends, so no other request can take the key
    /// over between this statement and the commit. After the commit, the key is never run
    /// again within the store's [`key_ttl`](crate::store::PostgresStoreBuilder::key_ttl),
    /// whether or not the layer gets to record the response (see "Exactly-once effects" and
    /// "Retention" on [`PostgresStore`]).
    ///
    /// `tx` is a `&mut Transaction<'_, Postgres>` (or any `&mut PgConnection` inside an open
    /// transaction). Without a transaction the mark commits on its own, and the guarantee is
    /// gone.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::NotOwner`](crate::store::StoreErrorKind::NotOwner) when another
    /// request owns the key (this one's lease ran out and was taken over) or the key is no
    /// longer claimed; any other error of the statement as the store maps it. After an error,
    /// roll the transaction back (drop it) and answer with a retryable status (`503`), so that
    /// the layer releases what this request may still hold.
    ///
    /// ```no_run
    /// # use tower_idempotency::{IdempotencyClaim, store::PostgresStore};
    /// # async fn charge(pool: &sqlx::PgPool, store: &PostgresStore, claim: &IdempotencyClaim)
    /// #     -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("INSERT INTO payments (amount) VALUES (100)")
    ///     .execute(&mut *tx)
    ///     .await?;
    /// claim.commit_in(&mut tx, store).await?;
    /// tx.commit().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn commit_in(
        &self,
        tx: &mut PgConnection,
        store: &PostgresStore,
    ) -> Result<(), StoreError> {
        store.commit_effects(tx, self.key(), self.token()).await
    }
}
