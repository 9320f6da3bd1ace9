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
    /// The unqualified name, quoted and suffixed, for the index of stored responses.
    bodies: String,
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
        let last = parts[parts.len() - 1];
        Ok(Self {
            name: name.to_owned(),
            quoted,
            index: format!("\"{last}_expires_at\""),
            bodies: format!("\"{last}_bodies\""),
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
    /// `record_until` is added only when it is missing: `ALTER TABLE … ADD COLUMN IF NOT
    /// EXISTS` would take the table's exclusive lock even when it has nothing to do, and wait
    /// for (and hold up) every transaction on the table at each start of each instance.
    pub(super) fn create_sql(&self) -> String {
        let (t, index, bodies) = (&self.quoted, &self.index, &self.bodies);
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
             CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at);\n\
             -- A table of an earlier version gets record_until (a change of the catalog only).\n\
             DO $$ BEGIN\n    \
                 IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{t}'::regclass\n                   \
                                AND attname = 'record_until' AND NOT attisdropped) THEN\n        \
                     ALTER TABLE {t} ADD COLUMN record_until timestamptz;\n    \
                 END IF;\n\
             END $$;\n\
             CREATE INDEX IF NOT EXISTS {bodies} ON {t} (record_until) WHERE record IS NOT NULL;\n"
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
    /// lock).
    ///
    /// The one change it makes to an existing table is the upgrade of a table created before
    /// the store remembered keys past their responses ([`key_ttl`](super::PostgresStoreBuilder::key_ttl)):
    /// it adds the nullable column `record_until` (a change of the catalog only, but it waits
    /// for the transactions on the table, and holds up new ones meanwhile) and the index
    /// `<table>_bodies`. That index is built by a plain `CREATE INDEX`, which blocks writes to
    /// the table while it reads the table: on a large table, add both beforehand with
    /// `ALTER TABLE idempotency ADD COLUMN record_until timestamptz` and
    /// `CREATE INDEX CONCURRENTLY idempotency_bodies ON idempotency (record_until) WHERE record
    /// IS NOT NULL`. Rows written before the upgrade keep their response until they expire, as
    /// they did.
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
        assert!(sql.contains("attrelid = '\"billing\".\"idem_keys2\"'::regclass"));
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
