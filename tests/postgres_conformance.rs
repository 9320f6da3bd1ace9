//! `PostgresStore` against the store-conformance suite, and what the suite cannot show of it:
//! one winner among many concurrent claimers on many connections at READ COMMITTED, waiting by
//! `LISTEN/NOTIFY` (and by the lease when nobody notifies), and expiry by bounded sweeps. The
//! retention checks run on a store that remembers keys past their responses.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::postgres::{pool, store_in, store_with};
use tokio::sync::Barrier;
use tokio::time::Instant;
use tower_idempotency::conformance;
use tower_idempotency::fingerprint::Fingerprint;
use tower_idempotency::record::Record;
use tower_idempotency::store::{
    Begin, Entry, Evict, Evicted, OwnerToken, PostgresStore, Store, StoreErrorKind, StoreKey,
};

const LEASE: Duration = Duration::from_secs(30);

fn key() -> StoreKey {
    StoreKey::new(Some("pg-tests"), &OwnerToken::generate().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms() {
    let store = store_in(pool(16).await, "conf", Duration::from_secs(60)).await;
    conformance::run(&store).await;
}

/// A store that keeps responses for 300 ms and keys for a minute passes the retention checks:
/// a key whose response expired reads as such and can be evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms_with_keys_remembered_past_their_responses() {
    let ttl = Duration::from_millis(300);
    let store = store_with(pool(4).await, "confret", |b| {
        b.ttl(ttl).key_ttl(Duration::from_secs(60))
    })
    .await;
    conformance::run_retention(&store, ttl).await;
}

/// 48 claimers on 48 connections, released together by a barrier, claim one key per round:
/// fresh keys, keys whose claim just expired, and keys whose record just expired. Exactly one
/// wins each round, and every other sees the winner's fingerprint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_claimers_on_many_connections_have_one_winner() {
    const CLAIMERS: usize = 48;
    let store = store_in(pool(CLAIMERS as u32).await, "race", Duration::from_secs(60)).await;
    // Every connection opened before the races, so that they all run at once.
    let warm: Vec<_> =
        futures_util::future::join_all((0..CLAIMERS).map(|_| store.pool().acquire())).await;
    drop(warm);
    for round in 0..30 {
        let key = key();
        match round % 3 {
            0 => {}
            1 => {
                let t = OwnerToken::generate();
                let claimed = store.begin(&key, None, t, Duration::from_millis(1)).await;
                assert_eq!(claimed.unwrap(), Begin::New);
            }
            _ => {
                let short = store_in_same_table(&store, Duration::from_millis(1));
                let t = OwnerToken::generate();
                assert_eq!(short.begin(&key, None, t, LEASE).await.unwrap(), Begin::New);
                short
                    .complete(&key, t, &Record::not_stored(None))
                    .await
                    .unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let barrier = Arc::new(Barrier::new(CLAIMERS));
        let tasks: Vec<_> = (0..CLAIMERS)
            .map(|i| {
                let (store, key, barrier) = (store.clone(), key.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    let fp = Fingerprint::sha256(format!("claimer {i}"));
                    barrier.wait().await;
                    (
                        fp,
                        store
                            .begin(&key, Some(&fp), OwnerToken::generate(), LEASE)
                            .await,
                    )
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        let winners: Vec<_> = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Ok(Begin::New)))
            .map(|(fp, _)| *fp)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {} winners", winners.len());
        for (_, outcome) in &outcomes {
            match outcome {
                Ok(Begin::New) => {}
                Ok(Begin::InProgress { fingerprint }) => {
                    assert_eq!(*fingerprint, Some(winners[0]), "round {round}")
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
    }
}

/// An operator's `evict` racing the owner's `complete` of a claim, 100 rounds of each kind, on
/// two connections: each answer matches what happened to the row. Forced, the evict removed
/// either the claim (and the `complete` then finds no claim: `NotOwner`) or the record that
/// landed first; not forced, it either refused the claim (and the record stays) or removed
/// the record that landed first. Returns no other answer, and never leaves a removed key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evict_racing_complete_answers_what_it_did() {
    let store = store_in(pool(4).await, "evictrace", Duration::from_secs(60)).await;
    let mut seen = std::collections::BTreeMap::<(&str, &str), usize>::new();
    for round in 0..200 {
        let how = if round % 2 == 0 {
            Evict::Force
        } else {
            Evict::CompletedOnly
        };
        let (key, owner) = (key(), OwnerToken::generate());
        assert_eq!(
            store.begin(&key, None, owner, LEASE).await.unwrap(),
            Begin::New
        );
        let barrier = Arc::new(Barrier::new(2));
        let completing = {
            let (store, key, barrier) = (store.clone(), key.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                store.complete(&key, owner, &Record::not_stored(None)).await
            })
        };
        let evicting = {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.evict(&key, how).await.unwrap()
            })
        };
        let (completed, evicted) = (completing.await.unwrap(), evicting.await.unwrap());
        let left = store.get(&key).await.unwrap();
        let what = format!("round {round}, {how:?}: {evicted:?}, {completed:?}, left {left:?}");
        match evicted {
            Evicted::Claim { owner: o } => {
                assert!(how == Evict::Force && o == owner, "{what}");
                assert_eq!(
                    completed.map_err(|e| e.kind()),
                    Err(StoreErrorKind::NotOwner),
                    "{what}"
                );
                assert_eq!(left, None, "{what}");
            }
            Evicted::Record => {
                assert!(completed.is_ok(), "{what}");
                assert_eq!(left, None, "{what}");
            }
            Evicted::Refused { owner: o } => {
                assert!(how == Evict::CompletedOnly && o == owner, "{what}");
                assert!(completed.is_ok(), "{what}");
                assert!(matches!(left, Some(Entry::Completed(_))), "{what}");
            }
            other => panic!("{what}: unexpected {other:?}"),
        }
        let how = if how == Evict::Force {
            "force"
        } else {
            "completed_only"
        };
        *seen.entry((how, evicted.as_str())).or_default() += 1;
    }
    println!("evict racing complete: {seen:?}");
}

/// A store on the same table as `store` that keeps records for `ttl` and then forgets their
/// keys.
fn store_in_same_table(store: &PostgresStore, ttl: Duration) -> PostgresStore {
    PostgresStore::builder(store.pool().clone())
        .table(store.table())
        .ttl(ttl)
        .key_ttl(ttl)
        .build()
        .unwrap()
}

/// A waiter is woken by the owner's `complete` and `release` and by an operator's forced
/// `evict` through `NOTIFY` (its poll interval is far longer than the test), and by the end of
/// the owner's lease when the owner dies and nobody notifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_wake_on_notify_and_on_the_end_of_the_lease() {
    let pool = pool(8).await;
    let table = store_in(pool.clone(), "wait", Duration::from_secs(60)).await;
    let store = PostgresStore::builder(pool)
        .table(table.table())
        .poll_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    // Start the listener, and wait until it listens (it then wakes every waiter).
    let warm = key();
    let t = OwnerToken::generate();
    store.begin(&warm, None, t, LEASE).await.unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        store.wait(&warm, Duration::from_millis(100)).await.unwrap();
        if listening(&store).await {
            break;
        }
    }
    for ends in ["complete", "release", "evict", "lease"] {
        let (key, owner) = (key(), OwnerToken::generate());
        let lease = if ends == "lease" {
            Duration::from_millis(400)
        } else {
            LEASE
        };
        assert_eq!(
            store.begin(&key, None, owner, lease).await.unwrap(),
            Begin::New
        );
        let waiter = {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                store.wait(&key, Duration::from_secs(20)).await.unwrap();
                start.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        match ends {
            "complete" => store
                .complete(&key, owner, &Record::not_stored(None))
                .await
                .unwrap(),
            "release" => store.release(&key, owner).await.unwrap(),
            "evict" => assert_eq!(
                store.evict(&key, Evict::Force).await.unwrap(),
                Evicted::Claim { owner }
            ),
            _ => {}
        }
        let waited = waiter.await.unwrap();
        assert!(
            waited < Duration::from_secs(5),
            "the wait ended by {ends} took {waited:?}"
        );
    }
}

/// Whether the store's listener connection has run its `LISTEN` (the last query of a backend
/// is in `pg_stat_activity`).
async fn listening(store: &PostgresStore) -> bool {
    let listen = format!("LISTEN \"{}\"", store.table());
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query = $1)")
        .bind(listen)
        .fetch_one(store.pool())
        .await
        .unwrap_or(false)
}

/// Expired rows are deleted by bounded batches, on demand and every n-th `begin`, and a row
/// that expired less than a minute ago is kept (a late `complete` of its owner may land).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_rows_are_swept_in_bounded_batches() {
    let pool = pool(4).await;
    let table = store_in(pool.clone(), "sweep", Duration::from_secs(60)).await;
    let store = PostgresStore::builder(pool.clone())
        .table(table.table())
        .sweep_batch(4)
        .sweep_every(2)
        .build()
        .unwrap();
    let quoted = format!("\"{}\"", store.table());
    sqlx::query(&format!(
        "INSERT INTO {quoted} (key, state, token, lease_until, expires_at) \
         SELECT sha256(i::text::bytea), 'completed', '\\x00'::bytea, now(), now() - interval '2 minutes' \
         FROM generate_series(1, 10) AS i \
         UNION ALL \
         SELECT sha256(('recent' || i)::bytea), 'claimed', '\\x00'::bytea, now(), now() - interval '1 second' \
         FROM generate_series(1, 3) AS i"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let count = || async {
        sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {quoted}"))
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(store.sweep().await.unwrap(), 4);
    assert_eq!(count().await, 9);
    // The first begin sweeps (in the background), the second does not, the third does.
    for _ in 0..3 {
        let (k, t) = (key(), OwnerToken::generate());
        assert_eq!(store.begin(&k, None, t, LEASE).await.unwrap(), Begin::New);
        store.release(&k, t).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        count().await,
        3,
        "two more batches of at most 4 swept the 6 old rows"
    );
    assert_eq!(
        store.sweep().await.unwrap(),
        0,
        "recently expired rows stay"
    );
}
