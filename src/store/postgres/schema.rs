//! The table: its name, its SQL, and [`PostgresStore::migrate`].

use std::fmt;

use super::{PostgresStore, map_error};
use crate::store::StoreError;

/// A validated table name, optionally schema-qualified (`idempotency`, `billing.idempotency`).
#[derive(Debug, Clone)]
pub(super) struct Table {
    /// As given, also the `LISTEN`/`NOTIFY` channel.
    name: String,
    /// Each part double-quoted, for SQL.
    quoted: String,
    /// The unqualified name, quoted and suffixed, for the expiry index.
    index: String,
}

impl Table {
    pub(super) fn new(name: &str) -> Result<Self, InvalidTableName> {
        let parts: Vec<&str> = name.split('.').collect();
        let valid = |p: &&str| {
            let mut chars = p.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        // 63 bytes is PostgreSQL's identifier limit; the index name adds `_expires_at`.
        if parts.is_empty() || parts.len() > 2 || !parts.iter().all(valid) || name.len() > 52 {
            return Err(InvalidTableName(name.to_owned()));
        }
        let quoted = parts
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(".");
        let index = format!("\"{}_expires_at\"", parts[parts.len() - 1]);
        Ok(Self {
            name: name.to_owned(),
            quoted,
            index,
        })
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn quoted(&self) -> &str {
        &self.quoted
    }

    /// The `CREATE` statements, idempotent.
    pub(super) fn create_sql(&self) -> String {
        let (t, index) = (&self.quoted, &self.index);
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n    \
                 key         bytea       PRIMARY KEY,  -- StoreKey::digest(), 32 bytes\n    \
                 state       text        NOT NULL CHECK (state IN ('claimed', 'committed', 'completed')),\n    \
                 token       bytea       NOT NULL,     -- the owner token, 16 bytes\n    \
                 fingerprint bytea,                    -- the request's fingerprint, 32 bytes\n    \
                 lease_until timestamptz NOT NULL,     -- end of the owner's lease\n    \
                 expires_at  timestamptz NOT NULL,     -- the row counts as absent from then on\n    \
                 record      bytea,                    -- the encoded response; NULL: not stored\n    \
                 watched     boolean     NOT NULL DEFAULT false -- a duplicate waits: notify\n\
             );\n\
             CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at);\n"
        )
    }
}

/// A table name that is not one or two lowercase SQL identifiers joined by a dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTableName(String);

impl fmt::Display for InvalidTableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid table name {:?}: expected `name` or `schema.name`, lowercase letters, \
             digits and `_`, at most 52 bytes",
            self.0
        )
    }
}

impl std::error::Error for InvalidTableName {}

impl PostgresStore {
    /// The SQL that creates the store's table and its index, for teams that run their own
    /// migrations. [`migrate`](Self::migrate) runs exactly this.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # let pool = sqlx::PgPool::connect_lazy("postgres://localhost/app").unwrap();
    /// use std::time::Duration;
    /// use tower_idempotency::store::PostgresStore;
    ///
    /// let store = PostgresStore::new(pool, Duration::from_secs(24 * 60 * 60));
    /// assert!(store.schema_sql().starts_with("CREATE TABLE IF NOT EXISTS \"idempotency\" ("));
    /// # });
    /// ```
    pub fn schema_sql(&self) -> String {
        self.inner.table.create_sql()
    }

    /// Creates the table and its index when they do not exist; safe to call from every
    /// instance at startup (concurrent calls are serialised by a transaction-scoped advisory
    /// lock). It never alters an existing table.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        // One simple-query message: PostgreSQL runs it as one implicit transaction, so the
        // advisory lock is held until the tables exist. The name is a validated identifier.
        let sql = format!(
            "SELECT pg_advisory_xact_lock(hashtext('tower-idempotency:{}'));\n{}",
            self.inner.table.name(),
            self.inner.table.create_sql()
        );
        sqlx::raw_sql(&sql)
            .execute(&self.inner.pool)
            .await
            .map_err(map_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_qualified_names() {
        assert_eq!(
            Table::new("idempotency").unwrap().quoted(),
            "\"idempotency\""
        );
        let t = Table::new("billing.idem_keys2").unwrap();
        assert_eq!(t.quoted(), "\"billing\".\"idem_keys2\"");
        assert!(
            t.create_sql()
                .contains("\"idem_keys2_expires_at\" ON \"billing\".\"idem_keys2\"")
        );
    }

    #[test]
    fn refuses_what_could_inject_or_be_misread() {
        for bad in [
            "",
            "Idempotency",
            "1table",
            "a.b.c",
            "a.",
            "t; DROP TABLE users",
            "t\"x",
            &"x".repeat(53),
        ] {
            assert!(Table::new(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
