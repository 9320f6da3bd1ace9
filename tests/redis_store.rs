//! `RedisStore` against real servers: the store contract on a single node (multiplexed
//! connection), through a `ConnectionManager` and on a three-primary cluster, then what is
//! specific to Redis (value layout, expiry, hash tags, foreign values, configuration check).
//!
//! Single-node tests use the shared server at `REDIS_URL`, each under a prefix of its own; the
//! cluster and the tests that change the server's configuration start private servers.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use redis::AsyncCommands;
use tower_idempotency::record::StoredResponse;
use tower_idempotency::store::{
    Begin, BoxStore, Entry, Fingerprint, OwnerToken, Record, RedisStore, Store, StoreErrorKind,
    StoreKey,
};

use support::redis::{
    RedisCluster, RedisServer, shared_connection, shared_connection_manager, unique_prefix,
};

/// Short enough that what the tests leave on the shared server goes away soon.
const TTL: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(30);

fn record(fp: Option<Fingerprint>, body: &'static [u8]) -> Record {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.append("x-multi", HeaderValue::from_static("a"));
    headers.append("x-multi", HeaderValue::from_static("b"));
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    Record::new(
        fp,
        &StoredResponse::new(
            StatusCode::CREATED,
            headers,
            Bytes::from_static(body),
            Some(trailers),
        ),
    )
}

fn in_progress(token: OwnerToken, fingerprint: Option<Fingerprint>) -> Option<Entry> {
    Some(Entry::InProgress { fingerprint, token })
}

/// The store contract, on keys under `scope` (unique per run).
async fn contract<S: Store>(store: &S, scope: &str) {
    let key = |k: &str| StoreKey::new(Some(scope), k);
    let fp = Fingerprint::sha256(b"request a");

    // A miss is a miss, not an error.
    let k = key("claim-complete");
    assert_eq!(store.get(&k).await.unwrap(), None);

    // begin on a free key claims it; a re-sent begin by the same owner is new again.
    let owner = OwnerToken::generate();
    let other = OwnerToken::generate();
    assert_eq!(
        store.begin(&k, Some(&fp), owner, LEASE).await.unwrap(),
        Begin::New
    );
    assert_eq!(
        store.begin(&k, Some(&fp), owner, LEASE).await.unwrap(),
        Begin::New
    );
    assert_eq!(store.get(&k).await.unwrap(), in_progress(owner, Some(fp)));

    // Another owner sees the claim and its fingerprint, whatever it asks with.
    let other_fp = Fingerprint::sha256(b"request b");
    for asked in [Some(&fp), Some(&other_fp), None] {
        assert_eq!(
            store.begin(&k, asked, other, LEASE).await.unwrap(),
            Begin::InProgress {
                fingerprint: Some(fp)
            }
        );
    }

    // Owner checks: another owner can neither complete, release nor renew, and changes nothing.
    let rec = record(Some(fp), b"{\"id\":1}\0binary\xff");
    let not_owner = |r: Result<(), tower_idempotency::store::StoreError>| {
        assert_eq!(r.unwrap_err().kind(), StoreErrorKind::NotOwner);
    };
    not_owner(store.complete(&k, other, &rec).await);
    not_owner(store.release(&k, other).await);
    not_owner(store.renew(&k, other, LEASE).await);
    assert_eq!(store.get(&k).await.unwrap(), in_progress(owner, Some(fp)));

    // The owner renews and completes; a re-sent complete is harmless.
    store.renew(&k, owner, LEASE).await.unwrap();
    store.complete(&k, owner, &rec).await.unwrap();
    store.complete(&k, owner, &rec).await.unwrap();
    assert_eq!(
        store.get(&k).await.unwrap(),
        Some(Entry::Completed(rec.clone()))
    );

    // Everyone who begins now gets the record, byte for byte.
    for token in [other, owner, OwnerToken::generate()] {
        match store.begin(&k, Some(&fp), token, LEASE).await.unwrap() {
            Begin::Completed(got) => {
                assert_eq!(got, rec);
                assert_eq!(got.as_bytes(), rec.as_bytes());
                let response = got.response().unwrap().unwrap();
                assert_eq!(response.status, StatusCode::CREATED);
                assert_eq!(&response.body[..], b"{\"id\":1}\0binary\xff");
                assert_eq!(response.headers.get_all("x-multi").iter().count(), 2);
                assert_eq!(response.trailers.unwrap()["grpc-status"], "0");
            }
            other => panic!("expected the record, got {other:?}"),
        }
    }

    // A completed record is not a claim: it cannot be released, renewed or overwritten.
    not_owner(store.release(&k, owner).await);
    not_owner(store.renew(&k, owner, LEASE).await);
    not_owner(store.complete(&k, other, &record(None, b"other")).await);
    assert_eq!(store.get(&k).await.unwrap(), Some(Entry::Completed(rec)));

    // Completing, releasing or renewing a key that was never claimed writes nothing.
    let never = key("never-claimed");
    not_owner(store.complete(&never, owner, &record(None, b"x")).await);
    not_owner(store.release(&never, owner).await);
    not_owner(store.renew(&never, owner, LEASE).await);
    assert_eq!(store.get(&never).await.unwrap(), None);

    // Release frees the key for the next begin; a second release finds nothing to release.
    let k = key("claim-release");
    assert_eq!(
        store.begin(&k, None, owner, LEASE).await.unwrap(),
        Begin::New
    );
    assert_eq!(store.get(&k).await.unwrap(), in_progress(owner, None));
    assert_eq!(
        store.begin(&k, Some(&fp), other, LEASE).await.unwrap(),
        Begin::InProgress { fingerprint: None }
    );
    store.release(&k, owner).await.unwrap();
    not_owner(store.release(&k, owner).await);
    assert_eq!(store.get(&k).await.unwrap(), None);
    assert_eq!(
        store.begin(&k, Some(&fp), other, LEASE).await.unwrap(),
        Begin::New
    );
    not_owner(store.complete(&k, owner, &record(None, b"late")).await);
    assert_eq!(store.get(&k).await.unwrap(), in_progress(other, Some(fp)));

    // Scopes keep equal client keys apart.
    let a = StoreKey::new(Some(&format!("{scope}-a")), "same");
    let b = StoreKey::new(Some(&format!("{scope}-b")), "same");
    assert_eq!(
        store.begin(&a, None, owner, LEASE).await.unwrap(),
        Begin::New
    );
    assert_eq!(
        store.begin(&b, None, other, LEASE).await.unwrap(),
        Begin::New
    );

    // A renewed lease outlives the one the key was claimed with; an unrenewed one expires.
    let renewed = key("renewed");
    let expiring = key("expiring");
    let short = Duration::from_millis(200);
    assert_eq!(
        store.begin(&renewed, None, owner, short).await.unwrap(),
        Begin::New
    );
    assert_eq!(
        store.begin(&expiring, None, owner, short).await.unwrap(),
        Begin::New
    );
    store.renew(&renewed, owner, LEASE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.get(&renewed).await.unwrap(), in_progress(owner, None));
    assert_eq!(store.get(&expiring).await.unwrap(), None);
    not_owner(
        store
            .complete(&expiring, owner, &record(None, b"late"))
            .await,
    );
    assert_eq!(
        store.begin(&expiring, None, other, LEASE).await.unwrap(),
        Begin::New
    );

    // Records up to the layer's default cap (1 MiB) go through whole.
    let big: &'static [u8] = Box::leak(vec![0xa5u8; 1 << 20].into_boxed_slice());
    let k = key("big");
    let rec = record(Some(fp), big);
    assert_eq!(
        store.begin(&k, Some(&fp), owner, LEASE).await.unwrap(),
        Begin::New
    );
    store.complete(&k, owner, &rec).await.unwrap();
    assert_eq!(
        store.begin(&k, Some(&fp), other, LEASE).await.unwrap(),
        Begin::Completed(rec)
    );
    let not_stored = Record::not_stored(Some(fp));
    let k = key("not-stored");
    assert_eq!(
        store.begin(&k, Some(&fp), owner, LEASE).await.unwrap(),
        Begin::New
    );
    store.complete(&k, owner, &not_stored).await.unwrap();
    assert_eq!(
        store.begin(&k, Some(&fp), other, LEASE).await.unwrap(),
        Begin::Completed(not_stored)
    );

    // Many owners race for one key: exactly one wins.
    let k = key("race");
    let wins = futures_util::future::join_all((0..32).map(|_| {
        let k = k.clone();
        async move { store.begin(&k, None, OwnerToken::generate(), LEASE).await }
    }))
    .await
    .into_iter()
    .filter(|r| *r.as_ref().unwrap() == Begin::New)
    .count();
    assert_eq!(wins, 1);

    wait_contract(store, scope).await;
}

/// `wait` returns soon after the claim ends, and not before `timeout` while it holds.
async fn wait_contract<S: Store>(store: &S, scope: &str) {
    let key = StoreKey::new(Some(scope), "wait");
    let owner = OwnerToken::generate();

    // A free key: nothing to wait for.
    let started = Instant::now();
    store.wait(&key, Duration::from_secs(5)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));

    // Held and never finished: waits out the timeout.
    assert_eq!(
        store.begin(&key, None, owner, LEASE).await.unwrap(),
        Begin::New
    );
    let started = Instant::now();
    store.wait(&key, Duration::from_millis(300)).await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");

    // Completed by its owner while another waits: the waiter wakes up long before its timeout.
    let started = Instant::now();
    let rec = record(None, b"done");
    let (waited, completed) = tokio::join!(store.wait(&key, Duration::from_secs(10)), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        store.complete(&key, owner, &rec).await
    });
    waited.unwrap();
    completed.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));

    // Released while another waits: the same.
    let key = StoreKey::new(Some(scope), "wait-release");
    assert_eq!(
        store.begin(&key, None, owner, LEASE).await.unwrap(),
        Begin::New
    );
    let started = Instant::now();
    let (waited, released) = tokio::join!(store.wait(&key, Duration::from_secs(10)), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        store.release(&key, owner).await
    });
    waited.unwrap();
    released.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn contract_on_multiplexed_connection() {
    let store =
        RedisStore::new(shared_connection().await, TTL).with_prefix(unique_prefix("multiplexed"));
    contract(&store, "multiplexed").await;
}

#[tokio::test]
async fn contract_on_connection_manager() {
    let store = RedisStore::new(shared_connection_manager().await, TTL)
        .with_prefix(unique_prefix("manager"));
    contract(&store, "manager").await;
}

#[tokio::test]
async fn contract_on_cluster() {
    let cluster = RedisCluster::start();
    let store = RedisStore::new(cluster.connection().await, TTL);
    contract(&store, "cluster").await;

    // The keys above spread over the primaries, and each record stays in the slot of its hash
    // tag (the digest), whatever the prefix.
    let mut admin = cluster.nodes()[0].admin();
    let mut slots = std::collections::BTreeSet::new();
    for i in 0..64 {
        let key = StoreKey::new(Some("cluster"), &format!("key-{i}"));
        let mut slot = |k: &str| -> u16 {
            redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(k)
                .query(&mut admin)
                .unwrap()
        };
        let by_digest = slot(&key.to_hex());
        assert_eq!(slot(&store.redis_key(&key)), by_digest);
        assert_eq!(
            slot(&store.clone().with_prefix("other:").redis_key(&key)),
            by_digest
        );
        // `redis-cli --cluster create` splits the slots into these three ranges.
        slots.insert(match by_digest {
            0..=5460 => 0,
            5461..=10922 => 1,
            _ => 2,
        });
    }
    assert_eq!(slots.len(), 3, "64 keys should reach all three primaries");
}

#[tokio::test]
async fn contract_through_box_store() {
    let store = BoxStore::new(
        RedisStore::new(shared_connection().await, TTL).with_prefix(unique_prefix("boxed")),
    );
    contract(&store, "boxed").await;
}

/// The stored values follow the documented layout, with the lease and the TTL as expiry.
#[tokio::test]
async fn value_layout_and_expiry() {
    let prefix = unique_prefix("layout");
    let store = RedisStore::new(shared_connection().await, TTL).with_prefix(&prefix);
    let mut raw = shared_connection().await;
    let key = StoreKey::new(None, "layout");
    let redis_key = store.redis_key(&key);
    assert_eq!(redis_key, format!("{prefix}{{{}}}", key.to_hex()));
    assert_eq!(
        RedisStore::new((), TTL).redis_key(&key),
        format!("idem:{{{}}}", key.to_hex())
    );
    let fp = Fingerprint::sha256(b"fp");
    let owner = OwnerToken::generate();

    store.begin(&key, Some(&fp), owner, LEASE).await.unwrap();
    let value: Vec<u8> = raw.get(&redis_key).await.unwrap();
    let mut expected = vec![1, 1];
    expected.extend_from_slice(&owner.to_bytes());
    expected.extend_from_slice(fp.as_bytes());
    assert_eq!(value, expected);
    let pttl: i64 = raw.pttl(&redis_key).await.unwrap();
    assert!((29_000..=30_000).contains(&pttl), "{pttl}");

    let rec = record(Some(fp), b"body");
    store.complete(&key, owner, &rec).await.unwrap();
    let value: Vec<u8> = raw.get(&redis_key).await.unwrap();
    let mut expected = vec![1, 2];
    expected.extend_from_slice(&owner.to_bytes());
    expected.extend_from_slice(rec.as_bytes());
    assert_eq!(value, expected);
    let pttl: i64 = raw.pttl(&redis_key).await.unwrap();
    assert!((59_000..=60_000).contains(&pttl), "{pttl}");

    // The store writes no other key.
    let keys: Vec<String> = raw.keys(format!("{prefix}*")).await.unwrap();
    assert_eq!(keys, [redis_key]);
}

/// Values the store did not write are reported, never overwritten or handed out as records.
#[tokio::test]
async fn foreign_values_are_not_overwritten() {
    let store =
        RedisStore::new(shared_connection().await, TTL).with_prefix(unique_prefix("foreign"));
    let mut raw = shared_connection().await;
    let token = OwnerToken::generate();

    let key = StoreKey::new(None, "string");
    let () = raw
        .set_ex(store.redis_key(&key), "another application's value", 60)
        .await
        .unwrap();
    let corrupt = |e: tower_idempotency::store::StoreError| {
        assert_eq!(e.kind(), StoreErrorKind::Corrupt);
        assert!(std::error::Error::source(&e).is_some());
    };
    corrupt(store.get(&key).await.unwrap_err());
    corrupt(store.begin(&key, None, token, LEASE).await.unwrap_err());
    let not_owner = store.complete(&key, token, &record(None, b"x")).await;
    assert_eq!(not_owner.unwrap_err().kind(), StoreErrorKind::NotOwner);
    let value: String = raw.get(store.redis_key(&key)).await.unwrap();
    assert_eq!(value, "another application's value");

    // A completed value whose record does not decode.
    let key = StoreKey::new(None, "bad-record");
    let mut value = vec![1, 2];
    value.extend_from_slice(&token.to_bytes());
    value.extend_from_slice(b"TI\x09garbage");
    let () = raw.set_ex(store.redis_key(&key), value, 60).await.unwrap();
    corrupt(store.get(&key).await.unwrap_err());
    corrupt(store.begin(&key, None, token, LEASE).await.unwrap_err());

    // A key of another type: the server's WRONGTYPE error.
    let key = StoreKey::new(None, "list");
    let () = raw.rpush(store.redis_key(&key), "x").await.unwrap();
    let () = raw.expire(store.redis_key(&key), 60).await.unwrap();
    let e = store.begin(&key, None, token, LEASE).await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Other);
    assert_eq!(
        store.get(&key).await.unwrap_err().kind(),
        StoreErrorKind::Other
    );
}

#[tokio::test]
async fn prefixes_keep_stores_apart() {
    let connection = shared_connection().await;
    let prefix = unique_prefix("apart");
    let a = RedisStore::new(connection.clone(), TTL).with_prefix(format!("{prefix}svc-a:"));
    let b = RedisStore::new(connection, TTL).with_prefix(format!("{prefix}svc-b:"));
    let key = StoreKey::new(None, "shared-key");
    let ta = OwnerToken::generate();
    let tb = OwnerToken::generate();
    assert_eq!(a.begin(&key, None, ta, LEASE).await.unwrap(), Begin::New);
    assert_eq!(b.begin(&key, None, tb, LEASE).await.unwrap(), Begin::New);
    assert_eq!(a.get(&key).await.unwrap(), in_progress(ta, None));
    assert_eq!(b.get(&key).await.unwrap(), in_progress(tb, None));
    assert!(a.redis_key(&key).starts_with(&format!("{prefix}svc-a:{{")));
}

/// A `tracing` subscriber that writes into a buffer, installed for the current thread.
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    #[derive(Clone)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf(Arc::default());
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    (buf.0, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn check_config_warns_about_eviction() {
    let server = RedisServer::start();
    let store = RedisStore::new(server.connection().await, TTL);
    let mut admin = server.admin();
    let mut set = |name: &str, value: &str| {
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query(&mut admin)
            .unwrap();
    };
    let (logs, _guard) = capture_logs();
    let warned = || {
        let mut logs = logs.lock().unwrap();
        let text = String::from_utf8_lossy(&logs).into_owned();
        logs.clear();
        text.contains("WARN") && text.contains("maxmemory-policy noeviction")
    };

    // No memory limit: nothing is evicted, whatever the policy.
    set("maxmemory-policy", "allkeys-lru");
    let report = store.check_config().await.unwrap();
    assert_eq!(report.maxmemory, Some(0));
    assert_eq!(report.may_evict(), Some(false));
    assert!(!warned());

    set("maxmemory", "100mb");
    for policy in [
        "allkeys-lru",
        "volatile-lru",
        "volatile-ttl",
        "allkeys-random",
    ] {
        set("maxmemory-policy", policy);
        let report = store.check_config().await.unwrap();
        assert_eq!(report.maxmemory_policy.as_deref(), Some(policy));
        assert_eq!(report.may_evict(), Some(true), "{policy}");
        assert!(warned(), "{policy}");
    }
    set("maxmemory-policy", "noeviction");
    let report = store.check_config().await.unwrap();
    assert_eq!(report.maxmemory, Some(100 << 20));
    assert_eq!(report.may_evict(), Some(false));
    assert!(!warned());
}

#[tokio::test]
async fn check_config_tolerates_disabled_config() {
    let server = RedisServer::start_with_args(&["--rename-command", "CONFIG", ""]);
    let store = RedisStore::new(server.connection().await, TTL);
    let (logs, _guard) = capture_logs();
    let report = store.check_config().await.unwrap();
    assert_eq!(report.maxmemory_policy, None);
    assert_eq!(report.may_evict(), None);
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.contains("could not read the Redis eviction settings"),
        "{logs}"
    );

    // The store itself works without CONFIG.
    let key = StoreKey::new(None, "k");
    let token = OwnerToken::generate();
    assert_eq!(
        store.begin(&key, None, token, LEASE).await.unwrap(),
        Begin::New
    );
}

#[tokio::test]
async fn check_config_fails_when_unreachable() {
    let mut server = RedisServer::start();
    let store = RedisStore::new(server.connection().await, TTL);
    server.kill();
    let e = store.check_config().await.unwrap_err();
    assert!(e.kind().is_ambiguous(), "{e:?}");
    assert_eq!(e.kind(), StoreErrorKind::Unavailable);
}
