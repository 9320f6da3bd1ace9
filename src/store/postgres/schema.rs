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
    /// The unqualified name, which the indexes' names extend.
    base: String,
}

impl Table {
    pub(super) fn new(name: &str) -> Result<Self, InvalidTableName> {
        let parts: Vec<&str> = name.split('.').collect();
        let valid = |p: &&str| {
            let mut chars = p.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        // 63 bytes is PostgreSQL's identifier limit; the longest index name adds `_expires_at`.
        if parts.is_empty() || parts.len() > 2 || !parts.iter().all(valid) || name.len() > 52 {
            return Err(InvalidTableName(name.to_owned()));
        }
        let quoted = parts
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(".");
        Ok(Self {
            name: name.to_owned(),
            quoted,
            base: parts[parts.len() - 1].to_owned(),
        })
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn quoted(&self) -> &str {
        &self.quoted
    }

    /// The `CREATE` statements, and the upgrade of a table of an earlier version; idempotent.
    ///
    /// The column `record_until` and the indexes are added only when they are missing:
    /// `ALTER TABLE … ADD COLUMN IF NOT EXISTS` and `CREATE INDEX IF NOT EXISTS` take a lock on
    /// the table even when they have nothing to do, which waits for every open transaction on
    /// it (a handler's, between `commit_in` and its commit) and holds up the requests behind
    /// it, at each start of each instance. The check reads the catalog and takes no lock.
    pub(super) fn create_sql(&self) -> String {
        let (t, base) = (&self.quoted, &self.base);
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n    \
                 key          bytea       PRIMARY KEY,  -- StoreKey::digest(), 32 bytes\n    \
                 state        text        NOT NULL CHECK (state IN ('claimed', 'committed', 'completed')),\n    \
                 token        bytea       NOT NULL,     -- the owner token, 16 bytes\n    \
                 fingerprint  bytea,                    -- the request's fingerprint, 32 bytes\n    \
                 lease_until  timestamptz NOT NULL,     -- end of the owner's lease\n    \
                 expires_at   timestamptz NOT NULL,     -- the row counts as absent from then on\n    \
                 record       bytea,                    -- the encoded response; NULL: not stored, or freed\n    \
                 record_until timestamptz,              -- the response counts as expired from then on\n    \
                 watched      boolean     NOT NULL DEFAULT false -- a duplicate waits: notify\n\
             );\n\
             -- The indexes, and the column a table of an earlier version lacks, each only when\n\
             -- missing: ALTER TABLE and CREATE INDEX lock the table even when they do nothing.\n\
             DO $$\n\
             DECLARE\n    \
                 t  constant regclass := '{t}'::regclass;\n    \
                 ns constant oid := (SELECT relnamespace FROM pg_class WHERE oid = t);\n\
             BEGIN\n    \
                 IF NOT EXISTS (SELECT FROM pg_attribute\n                   \
                                WHERE attrelid = t AND attname = 'record_until' AND NOT attisdropped) THEN\n        \
                     ALTER TABLE {t} ADD COLUMN record_until timestamptz;\n    \
                 END IF;\n    \
                 IF NOT EXISTS (SELECT FROM pg_class WHERE relnamespace = ns AND relname = '{base}_expires_at') THEN\n        \
                     CREATE INDEX \"{base}_expires_at\" ON {t} (expires_at);\n    \
                 END IF;\n    \
                 -- The responses the sweep frees once their retention ran out.\n    \
                 IF NOT EXISTS (SELECT FROM pg_class WHERE relnamespace = ns AND relname = '{base}_bodies') THEN\n        \
                     CREATE INDEX \"{base}_bodies\" ON {t} (record_until) WHERE record IS NOT NULL;\n    \
                 END IF;\n\
             END $$;\n"
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
    /// The SQL that creates the store's table and its indexes, and adds the `record_until`
    /// column to a table of an earlier version, for teams that run their own migrations.
    /// [`migrate`](Self::migrate) runs exactly this.
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

    /// Creates the table and its indexes when they do not exist; safe to call from every
    /// instance at startup (concurrent calls are serialised by a transaction-scoped advisory
    /// lock). On a table that is up to date it only reads the catalog: it takes no lock on
    /// the table, so it neither waits for nor holds up the requests in flight.
    ///
    /// The one change it makes to an existing table is the upgrade of a table created before
    /// the store remembered keys past their responses
    /// ([`key_ttl`](super::PostgresStoreBuilder::key_ttl)): it adds the nullable column
    /// `record_until` (a change of the catalog only, but it waits for the transactions on the
    /// table and holds up new ones meanwhile) and the index `<table>_bodies`, whose plain
    /// `CREATE INDEX` blocks writes to the table while it reads it. On a large table, add both
    /// beforehand, without blocking writes for long:
    ///
    /// ```sql
    /// ALTER TABLE idempotency ADD COLUMN record_until timestamptz;
    /// CREATE INDEX CONCURRENTLY idempotency_bodies ON idempotency (record_until)
    ///     WHERE record IS NOT NULL;
    /// ```
    ///
    /// Rows written before the upgrade keep their response until they expire, as they did.
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
        let sql = t.create_sql();
        assert!(sql.contains("\"idem_keys2_expires_at\" ON \"billing\".\"idem_keys2\""));
        assert!(sql.contains("\"idem_keys2_bodies\" ON \"billing\".\"idem_keys2\""));
        assert!(sql.contains("regclass := '\"billing\".\"idem_keys2\"'::regclass"));
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
