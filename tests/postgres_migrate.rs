//! `PostgresStore::migrate`: it upgrades a table of an earlier version in place (the rows it
//! holds keep their responses), and on an up-to-date table it takes no lock, so instances that
//! start while requests run neither wait for nor hold up their transactions.

mod common;

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use common::postgres::{database_url, pool, store_in, unique_table};
use http::{HeaderMap, StatusCode};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tower_idempotency::fingerprint::Fingerprint;
use tower_idempotency::record::{Record, StoredResponse};
use tower_idempotency::store::{Entry, PostgresStore, Store, StoreKey};

/// The table as versions before `key_ttl` created it.
const EARLIER_TABLE: &str = "
    key         bytea       PRIMARY KEY,
    state       text        NOT NULL CHECK (state IN ('claimed', 'committed', 'completed')),
    token       bytea       NOT NULL,
    fingerprint bytea,
    lease_until timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    record      bytea,
    watched     boolean     NOT NULL DEFAULT false";

/// A pool whose statements give up on a lock after a second (`lock_timeout`), where waiting
/// for one would otherwise block until the holder's transaction ends.
async fn impatient_pool() -> PgPool {
    let options = PgConnectOptions::from_str(&database_url())
        .unwrap()
        .options([("lock_timeout", "1s")]);
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap()
}

/// The indexes of `table`, by name.
async fn indexes(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT indexname::text FROM pg_indexes WHERE tablename = $1 ORDER BY 1")
        .bind(table)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_an_earlier_version_is_upgraded_in_place() {
    let pool = pool(4).await;
    let table = unique_table("earlier");
    sqlx::raw_sql(&format!(
        "CREATE TABLE \"{table}\" ({EARLIER_TABLE});
         CREATE INDEX \"{table}_expires_at\" ON \"{table}\" (expires_at);"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let (key, fp) = (
        StoreKey::new(None, "old"),
        Fingerprint::sha256("old request"),
    );
    let response = StoredResponse::new(
        StatusCode::CREATED,
        HeaderMap::new(),
        Bytes::from_static(b"kept"),
        None,
    );
    let record = Record::new(Some(fp), &response);
    sqlx::query(&format!(
        "INSERT INTO \"{table}\" (key, state, token, fingerprint, lease_until, expires_at, record) \
         VALUES ($1, 'completed', $2, $3, now(), now() + interval '1 hour', $4)"
    ))
    .bind(&key.digest()[..])
    .bind(&[0_u8; 16][..])
    .bind(&fp.as_bytes()[..])
    .bind(&record.as_bytes()[..])
    .execute(&pool)
    .await
    .unwrap();

    // A tiny response retention: were the old row's retention read from `record_until`, its
    // response would be gone.
    let store = PostgresStore::builder(pool.clone())
        .table(&table)
        .ttl(Duration::from_millis(1))
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(
        indexes(&pool, &table).await,
        [
            format!("{table}_bodies"),
            format!("{table}_expires_at"),
            format!("{table}_pkey")
        ]
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        store.sweep().await.unwrap(),
        0,
        "no response of its rows is due"
    );
    match store.get(&key).await.unwrap() {
        Some(Entry::Completed(got)) => assert_eq!(got, record),
        other => panic!("the old row reads as {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_on_an_up_to_date_table_waits_for_no_transaction() {
    let pool = pool(2).await;
    let store = store_in(pool.clone(), "nolock", Duration::from_secs(60)).await;
    // A handler's transaction that wrote to the table and has not committed yet.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO \"{}\" (key, state, token, lease_until, expires_at) \
         VALUES ('\\x01', 'claimed', '\\x00', now(), now() + interval '1 minute')",
        store.table()
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    let starting = PostgresStore::builder(impatient_pool().await)
        .table(store.table())
        .build()
        .unwrap();
    let migrated = starting.migrate().await;
    tx.rollback().await.unwrap();
    migrated.expect("migrate waited for a lock the open transaction holds");
}
