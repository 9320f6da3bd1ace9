//! What is specific to `RedisStore`, against real servers: value layout and expiry, hash tags on
//! a cluster, foreign values, prefixes, the configuration check. The store contract itself is
//! `tests/redis_conformance.rs`.
//!
//! Single-node tests use the shared server at `REDIS_URL`, each under a prefix of its own; the
//! cluster and the tests that change the server's configuration start private servers.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use redis::AsyncCommands;
use tower_idempotency::fingerprint::Fingerprint;
use tower_idempotency::record::Record;
use tower_idempotency::record::StoredResponse;
use tower_idempotency::store::{
    Begin, Entry, OwnerToken, Persistence, RedisStore, Store, StoreErrorKind, StoreKey,
};

use common::redis::{RedisCluster, RedisServer, shared_connection, unique_prefix};

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

/// Each record stays in the slot of its hash tag (the digest), whatever the prefix, and records
/// spread over all primaries.
#[tokio::test]
async fn keys_follow_their_hash_tag_on_cluster() {
    let cluster = RedisCluster::start();
    let store = RedisStore::new(cluster.connection().await, TTL);
    let mut admin = cluster.nodes()[0].admin();
    let mut slot = |k: &str| -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(k)
            .query(&mut admin)
            .unwrap()
    };
    for i in 0..64 {
        let key = StoreKey::new(Some("cluster"), &format!("key-{i}"));
        let token = OwnerToken::generate();
        assert_eq!(
            store.begin(&key, None, token, LEASE).await.unwrap(),
            Begin::New
        );
        store
            .complete(&key, token, &record(None, b"spread"))
            .await
            .unwrap();
        let by_digest = slot(&key.to_hex());
        assert_eq!(slot(&store.redis_key(&key)), by_digest);
        let other = store.clone().with_prefix("other:");
        assert_eq!(slot(&other.redis_key(&key)), by_digest);
    }
    for node in cluster.nodes() {
        let keys: u64 = redis::cmd("DBSIZE").query(&mut node.admin()).unwrap();
        assert!(keys > 0, "64 records should reach every primary");
    }
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

    // Next to the record, its tombstone: the fingerprint, no response, for the key retention.
    let tombstone_key = format!("{redis_key}:t");
    let value: Vec<u8> = raw.get(&tombstone_key).await.unwrap();
    let mut expected = vec![1, 2];
    expected.extend_from_slice(&owner.to_bytes());
    expected.extend_from_slice(Record::response_expired(Some(fp)).as_bytes());
    assert_eq!(value, expected);
    let pttl: i64 = raw.pttl(&tombstone_key).await.unwrap();
    let week = 7 * 24 * 60 * 60 * 1000;
    assert!((week - 1_000..=week).contains(&pttl), "{pttl}");

    // The store writes no other key.
    let mut keys: Vec<String> = raw.keys(format!("{prefix}*")).await.unwrap();
    keys.sort();
    assert_eq!(keys, [redis_key, tombstone_key]);
}

/// After the response's retention, the key's tombstone answers `begin` and `get` with a record
/// of the fingerprint and no response, and `begin` leaves no claim behind; at the end of the
/// key retention the key is new. With a key retention at or below `ttl` nothing else is kept.
#[tokio::test]
async fn keys_outlive_their_responses() {
    let prefix = unique_prefix("retention");
    let mut raw = shared_connection().await;
    let store = RedisStore::new(shared_connection().await, Duration::from_millis(300))
        .with_key_ttl(Duration::from_millis(1_500))
        .with_prefix(&prefix);
    let (key, fp, owner) = (
        StoreKey::new(None, "remembered"),
        Fingerprint::sha256(b"fp"),
        OwnerToken::generate(),
    );
    assert_eq!(
        store.begin(&key, Some(&fp), owner, LEASE).await.unwrap(),
        Begin::New
    );
    store
        .complete(&key, owner, &record(Some(fp), b"body"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;

    let late = OwnerToken::generate();
    let expired = |begun: Begin| match begun {
        Begin::Completed(record) => {
            assert!(record.is_response_expired(), "{record:?}");
            assert_eq!(record.fingerprint(), Some(&fp));
            assert!(record.response().unwrap().is_none());
        }
        other => panic!("expected the tombstone, got {other:?}"),
    };
    expired(store.begin(&key, Some(&fp), late, LEASE).await.unwrap());
    let claim: Option<Vec<u8>> = raw.get(store.redis_key(&key)).await.unwrap();
    assert_eq!(claim, None, "begin left its claim on a remembered key");
    match store.get(&key).await.unwrap() {
        Some(Entry::Completed(record)) => expired(Begin::Completed(record)),
        other => panic!("expected the tombstone, got {other:?}"),
    }
    // Another request under the key is told apart by the fingerprint the tombstone keeps.
    expired(store.begin(&key, None, late, LEASE).await.unwrap());

    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        store.begin(&key, Some(&fp), late, LEASE).await.unwrap(),
        Begin::New
    );

    let forgetting = store.with_key_ttl(Duration::from_millis(300));
    let key = StoreKey::new(None, "forgotten");
    assert_eq!(
        forgetting.begin(&key, None, owner, LEASE).await.unwrap(),
        Begin::New
    );
    forgetting
        .complete(&key, owner, &record(None, b"body"))
        .await
        .unwrap();
    let tombstones: Vec<String> = raw
        .keys(format!("{}:t", forgetting.redis_key(&key)))
        .await
        .unwrap();
    assert_eq!(tombstones, Vec::<String>::new());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        forgetting.begin(&key, None, late, LEASE).await.unwrap(),
        Begin::New
    );
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
    let held_by = |token| {
        Some(Entry::InProgress {
            fingerprint: None,
            token,
        })
    };
    assert_eq!(a.get(&key).await.unwrap(), held_by(ta));
    assert_eq!(b.get(&key).await.unwrap(), held_by(tb));
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
    // The store needs `SET … NX … GET` (Redis 7.0); the server the tests start has it.
    let version = report.redis_version.expect("INFO server answers");
    let major: u32 = version.split('.').next().unwrap().parse().unwrap();
    assert!(major >= 7, "{version}");

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

/// `check_config` reports the server's persistence, and what a restart of it can lose.
#[tokio::test]
async fn check_config_reports_persistence() {
    let cases: [(&[&str], Persistence); 3] = [
        (&[], Persistence::None),
        (
            &["--save", "3600 1"],
            Persistence::Snapshots {
                save: "3600 1".into(),
            },
        ),
        (
            &["--appendonly", "yes", "--appendfsync", "always"],
            Persistence::AppendOnly {
                fsync: Some("always".into()),
            },
        ),
    ];
    for (args, expected) in cases {
        let server = RedisServer::start_with_args(args);
        let store = RedisStore::new(server.connection().await, Duration::from_secs(60));
        let report = store.check_config().await.unwrap();
        assert_eq!(report.persistence.as_ref(), Some(&expected), "{args:?}");
        assert_eq!(
            expected.keeps_every_acknowledged_write(),
            args.contains(&"always")
        );
    }
}
