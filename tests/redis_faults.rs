//! `RedisStore` under faults, on private servers: paused servers, killed connections, restarts,
//! flushed scripts, expired leases, and how many commands each operation costs.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Value};
use tower_idempotency::fingerprint::Fingerprint;
use tower_idempotency::record::Record;
use tower_idempotency::record::StoredResponse;
use tower_idempotency::store::{
    Begin, Entry, OwnerToken, RedisStore, Store, StoreError, StoreErrorKind, StoreKey,
};

use common::redis::{RedisCluster, RedisServer};

const TTL: Duration = Duration::from_secs(3600);
const LEASE: Duration = Duration::from_secs(30);

fn record(body: &'static [u8]) -> Record {
    Record::new(
        None,
        &StoredResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(body),
            None,
        ),
    )
}

/// Runs every script once, so that a paused call is the script itself and not the `SCRIPT LOAD`
/// that a cold `EVALSHA` leads to (a caller that gives up after `NOSCRIPT` never runs it).
async fn load_scripts<S: Store>(store: &S) {
    let key = StoreKey::new(None, "warm-up");
    let token = OwnerToken::generate();
    store.begin(&key, None, token, LEASE).await.unwrap();
    store.renew(&key, token, LEASE).await.unwrap();
    store.release(&key, token).await.unwrap();
    store.begin(&key, None, token, LEASE).await.unwrap();
    store.complete(&key, token, &record(b"warm")).await.unwrap();
}

/// What the layer does around every store call: an explicit timeout, reported as a `Timeout`.
async fn bounded<T>(
    limit: Duration,
    op: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, op)
        .await
        .unwrap_or_else(|_| Err(StoreError::new(StoreErrorKind::Timeout)))
}

/// Retries `op` until it succeeds, for at most `limit`.
async fn eventually<T, F: Future<Output = Result<T, StoreError>>>(
    limit: Duration,
    mut op: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match bounded(Duration::from_secs(1), op()).await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                assert!(e.kind().is_ambiguous(), "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("still failing after {limit:?}: {e:?}"),
        }
    }
}

/// A begin that the caller gave up on while the server was paused may still land: the error is
/// ambiguous, and once the server runs again the claim is there, owned by the caller's token.
#[tokio::test]
async fn paused_begin_is_ambiguous_and_lands_later() {
    let server = RedisServer::start();
    let store = RedisStore::new(server.connection().await, TTL);
    let key = StoreKey::new(None, "paused-begin");
    let token = OwnerToken::generate();
    load_scripts(&store).await;

    server.pause(Duration::from_millis(600));
    let started = Instant::now();
    let e = bounded(
        Duration::from_millis(150),
        store.begin(&key, None, token, LEASE),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(e.kind().is_ambiguous());

    // After the pause, the server ran the queued command: the key is claimed by that token, so a
    // retry with a new token is a conflict, not a second execution.
    let entry = eventually(Duration::from_secs(3), || store.get(&key)).await;
    assert_eq!(
        entry,
        Some(Entry::InProgress {
            fingerprint: None,
            token
        })
    );
    let retry = store
        .begin(&key, None, OwnerToken::generate(), LEASE)
        .await
        .unwrap();
    assert_eq!(retry, Begin::InProgress { fingerprint: None });
}

/// The same with the driver's own response timeout: the store reports `Timeout` itself.
#[tokio::test]
async fn driver_timeout_maps_to_timeout() {
    let server = RedisServer::start();
    let config =
        AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_millis(150)));
    let connection = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let store = RedisStore::new(connection, TTL);
    let key = StoreKey::new(None, "driver-timeout");
    let token = OwnerToken::generate();
    load_scripts(&store).await;

    server.pause(Duration::from_millis(600));
    let e = store.begin(&key, None, token, LEASE).await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Timeout, "{e:?}");
    assert!(e.kind().is_ambiguous());
    assert!(std::error::Error::source(&e).is_some());

    let entry = eventually(Duration::from_secs(3), || store.get(&key)).await;
    assert_eq!(
        entry,
        Some(Entry::InProgress {
            fingerprint: None,
            token
        })
    );
}

/// A complete that timed out may have stored the record: it is there after the pause.
#[tokio::test]
async fn paused_complete_is_ambiguous_and_lands_later() {
    let server = RedisServer::start();
    let store = RedisStore::new(server.connection().await, TTL);
    let key = StoreKey::new(None, "paused-complete");
    let token = OwnerToken::generate();
    load_scripts(&store).await;
    assert_eq!(
        store.begin(&key, None, token, LEASE).await.unwrap(),
        Begin::New
    );

    server.pause(Duration::from_millis(600));
    let rec = record(b"the handler's response");
    let e = bounded(
        Duration::from_millis(150),
        store.complete(&key, token, &rec),
    )
    .await
    .unwrap_err();
    assert!(e.kind().is_ambiguous());

    let entry = eventually(Duration::from_secs(3), || store.get(&key)).await;
    assert_eq!(entry, Some(Entry::Completed(rec.clone())));
    // A re-sent complete (what a caller does after an ambiguous error) is harmless.
    store.complete(&key, token, &rec).await.unwrap();
}

/// `CLIENT KILL` drops the store's connection. A `ConnectionManager` on RESP2 reports the
/// broken connection once (ambiguously) and reconnects; the operation after that succeeds.
#[tokio::test]
async fn connection_manager_recovers_from_client_kill() {
    let server = RedisServer::start();
    let store = RedisStore::new(server.connection_manager().await, TTL);
    let key = StoreKey::new(None, "killed");
    let token = OwnerToken::generate();
    assert_eq!(
        store.begin(&key, None, token, LEASE).await.unwrap(),
        Begin::New
    );

    assert!(server.kill_clients() >= 1);
    let first = store.renew(&key, token, LEASE).await.unwrap_err();
    assert_eq!(first.kind(), StoreErrorKind::Unavailable, "{first:?}");
    store.renew(&key, token, LEASE).await.unwrap();
    store.complete(&key, token, &record(b"ok")).await.unwrap();
    assert!(matches!(
        store.get(&key).await.unwrap(),
        Some(Entry::Completed(_))
    ));
}

/// On RESP3 the manager hears the disconnect and reconnects before the next command.
#[tokio::test]
async fn connection_manager_on_resp3_reconnects_eagerly() {
    let server = RedisServer::start();
    let connection = redis::Client::open(format!("{}?protocol=resp3", server.url()))
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let store = RedisStore::new(connection, TTL);
    let key = StoreKey::new(None, "killed-resp3");
    let token = OwnerToken::generate();
    assert_eq!(
        store.begin(&key, None, token, LEASE).await.unwrap(),
        Begin::New
    );

    assert!(server.kill_clients() >= 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.renew(&key, token, LEASE).await.unwrap();
    let rec = record(b"resp3");
    store.complete(&key, token, &rec).await.unwrap();
    assert_eq!(
        store
            .begin(&key, None, OwnerToken::generate(), LEASE)
            .await
            .unwrap(),
        Begin::Completed(rec)
    );
}

/// A plain multiplexed connection does not reconnect: every later operation fails, as
/// `Unavailable` (which is why the docs recommend a `ConnectionManager` for single nodes).
#[tokio::test]
async fn multiplexed_connection_reports_killed_connection() {
    let server = RedisServer::start();
    let store = RedisStore::new(server.connection().await, TTL);
    let key = StoreKey::new(None, "killed-multiplexed");
    assert_eq!(store.get(&key).await.unwrap(), None);
    assert!(server.kill_clients() >= 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..2 {
        let e = store.get(&key).await.unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Unavailable, "{e:?}");
    }
}

/// While the server is down every operation fails ambiguously and promptly; after a restart on
/// the same port the store works again (and, without persistence, has forgotten everything).
#[tokio::test]
async fn server_restart() {
    let mut server = RedisServer::start();
    let store = RedisStore::new(server.connection_manager().await, TTL);
    let key = StoreKey::new(None, "restart");
    let token = OwnerToken::generate();
    assert_eq!(
        store.begin(&key, None, token, LEASE).await.unwrap(),
        Begin::New
    );

    server.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let e = bounded(
            Duration::from_secs(2),
            store.begin(&key, None, token, LEASE),
        )
        .await
        .unwrap_err();
        assert!(e.kind().is_ambiguous(), "{e:?}");
        assert!(started.elapsed() <= Duration::from_millis(2100));
    }

    server.restart();
    // The manager reconnects in the background; the scripts are loaded again on first use.
    let fresh = OwnerToken::generate();
    let begun = eventually(Duration::from_secs(5), || {
        store.begin(&key, None, fresh, LEASE)
    })
    .await;
    // No persistence: the old claim is gone, which is the risk the durability docs describe.
    assert_eq!(begun, Begin::New);
    store
        .complete(&key, fresh, &record(b"after"))
        .await
        .unwrap();
    assert!(matches!(
        store.get(&key).await.unwrap(),
        Some(Entry::Completed(_))
    ));
}

/// After `SCRIPT FLUSH` the scripts are loaded again on the next call of each.
#[tokio::test]
async fn script_flush_on_single_node() {
    let server = RedisServer::start();
    let store = RedisStore::new(server.connection().await, TTL);
    script_flush_survives(&store, || server.script_flush()).await;
}

/// The same on a cluster, where `SCRIPT LOAD` has to reach the node that owns the key.
#[tokio::test]
async fn script_flush_on_cluster() {
    let cluster = RedisCluster::start();
    let store = RedisStore::new(cluster.connection().await, TTL);
    script_flush_survives(&store, || {
        for node in cluster.nodes() {
            node.script_flush();
        }
    })
    .await;
}

async fn script_flush_survives<S: Store>(store: &S, flush: impl Fn()) {
    for i in 0..12 {
        let key = StoreKey::new(None, &format!("flush-{i}"));
        let token = OwnerToken::generate();
        assert_eq!(
            store.begin(&key, None, token, LEASE).await.unwrap(),
            Begin::New
        );
        flush();
        store.renew(&key, token, LEASE).await.unwrap();
        flush();
        let rec = record(b"flushed");
        store.complete(&key, token, &rec).await.unwrap();
        flush();
        assert_eq!(
            store
                .begin(&key, None, OwnerToken::generate(), LEASE)
                .await
                .unwrap(),
            Begin::Completed(rec)
        );
        let key = StoreKey::new(None, &format!("flush-release-{i}"));
        assert_eq!(
            store.begin(&key, None, token, LEASE).await.unwrap(),
            Begin::New
        );
        flush();
        store.release(&key, token).await.unwrap();
    }
}

/// An owner that stalls past its lease loses the key: the next request claims it, and the stale
/// owner can neither complete, renew nor release over its successor.
#[tokio::test]
async fn stale_owner_cannot_overwrite_its_successor() {
    let server = RedisServer::start();
    let store = RedisStore::new(server.connection().await, TTL);
    let key = StoreKey::new(None, "stale");
    let stale = OwnerToken::generate();
    assert_eq!(
        store
            .begin(&key, None, stale, Duration::from_millis(150))
            .await
            .unwrap(),
        Begin::New
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let successor = OwnerToken::generate();
    assert_eq!(
        store.begin(&key, None, successor, LEASE).await.unwrap(),
        Begin::New
    );
    let kind = |r: Result<(), StoreError>| r.unwrap_err().kind();
    assert_eq!(
        kind(store.complete(&key, stale, &record(b"stale")).await),
        StoreErrorKind::NotOwner
    );
    assert_eq!(
        kind(store.renew(&key, stale, LEASE).await),
        StoreErrorKind::NotOwner
    );
    let rec = record(b"successor");
    store.complete(&key, successor, &rec).await.unwrap();
    assert_eq!(
        kind(store.complete(&key, stale, &record(b"stale")).await),
        StoreErrorKind::NotOwner
    );
    assert_eq!(
        kind(store.release(&key, stale).await),
        StoreErrorKind::NotOwner
    );
    assert_eq!(store.get(&key).await.unwrap(), Some(Entry::Completed(rec)));
}

/// A connection that records the name of every command it sends: client-side round trips.
#[derive(Clone)]
struct Counting {
    inner: MultiplexedConnection,
    sent: Arc<Mutex<Vec<String>>>,
}

impl Counting {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.sent.lock().unwrap())
    }
}

impl ConnectionLike for Counting {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let name = match cmd.args_iter().next() {
            Some(redis::Arg::Simple(name)) => String::from_utf8_lossy(name).to_lowercase(),
            _ => String::from("?"),
        };
        self.sent.lock().unwrap().push(name);
        self.inner.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.sent.lock().unwrap().push(String::from("<pipeline>"));
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// Runs `op` and returns the commands the client sent and those the server ran meanwhile.
async fn measure(
    connection: &Counting,
    admin: &mut redis::Connection,
    op: impl Future<Output = ()>,
) -> (Vec<String>, BTreeMap<String, u64>) {
    connection.take();
    RedisServer::reset_stats(admin);
    op.await;
    let mut ran = RedisServer::command_stats(admin);
    // The admin connection's own command.
    ran.remove("config|resetstat");
    (connection.take(), ran)
}

/// One command per operation, counted twice: what the client sent, and what the server ran
/// (`INFO commandstats` after `CONFIG RESETSTAT`, where the commands a script calls are counted
/// too, but are not round trips).
#[tokio::test]
async fn one_command_per_operation() {
    let server = RedisServer::start();
    let connection = Counting {
        inner: server.connection().await,
        sent: Arc::default(),
    };
    // Keys forgotten with their responses (no tombstone): one command per operation. The
    // tombstone's commands are counted at the end.
    let store = RedisStore::new(connection.clone(), TTL).with_key_ttl(TTL);
    // Valkey 8.1 and Redis 8.4 have `SET … IFEQ`: then `complete` is that command.
    let fenced = store.check_config().await.unwrap().fenced_complete;
    assert_eq!(fenced, common::redis::server_binary().contains("valkey"));
    let mut admin = server.admin();
    let key = StoreKey::new(None, "counted");
    let owner = OwnerToken::generate();
    let other = OwnerToken::generate();

    let stats = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    let rec = record(b"counted");

    // `begin` is a plain command: no script to load, even the first time.
    let (sent, ran) = measure(&connection, &mut admin, async {
        assert_eq!(
            store.begin(&key, None, owner, LEASE).await.unwrap(),
            Begin::New
        );
    })
    .await;
    assert_eq!(sent, ["set"]);
    assert_eq!(ran, stats(&[("set", 1)]));

    // The scripts: the first call finds none on the server (EVALSHA, SCRIPT LOAD, EVALSHA).
    let (sent, ran) = measure(&connection, &mut admin, async {
        store.release(&key, other).await.unwrap_err();
    })
    .await;
    assert_eq!(sent, ["evalsha", "script", "evalsha"]);
    assert_eq!(
        ran,
        stats(&[("evalsha", 2), ("script|load", 1), ("getrange", 1)])
    );

    // Load the other scripts, then measure every operation warm.
    store.complete(&key, other, &rec).await.unwrap_err();
    store.renew(&key, other, LEASE).await.unwrap_err();

    let (sent, ran) = measure(&connection, &mut admin, async {
        let b = store.begin(&key, None, other, LEASE).await.unwrap();
        assert_eq!(b, Begin::InProgress { fingerprint: None });
    })
    .await;
    assert_eq!(sent, ["set"]);
    assert_eq!(ran, stats(&[("set", 1)]));

    let (sent, ran) = measure(&connection, &mut admin, async {
        store.renew(&key, owner, LEASE).await.unwrap()
    })
    .await;
    if fenced {
        // `SET <claim> IFEQ <claim> PX <lease>`: the store remembers the claim it made.
        assert_eq!(sent, ["set"]);
        assert_eq!(ran, stats(&[("set", 1)]));
    } else {
        assert_eq!(sent, ["evalsha"]);
        assert_eq!(
            ran,
            stats(&[("evalsha", 1), ("getrange", 1), ("pexpire", 1)])
        );
    }

    let (sent, ran) = measure(&connection, &mut admin, async {
        store.complete(&key, owner, &rec).await.unwrap()
    })
    .await;
    if fenced {
        assert_eq!(sent, ["set"]);
        assert_eq!(ran, stats(&[("set", 1)]));
    } else {
        assert_eq!(sent, ["evalsha"]);
        assert_eq!(ran, stats(&[("evalsha", 1), ("getrange", 1), ("set", 1)]));
    }

    // A replay: the record comes back with the begin, in one round trip.
    let (sent, ran) = measure(&connection, &mut admin, async {
        let b = store.begin(&key, None, other, LEASE).await.unwrap();
        assert_eq!(b, Begin::Completed(rec.clone()));
    })
    .await;
    assert_eq!(sent, ["set"]);
    assert_eq!(ran, stats(&[("set", 1)]));

    let (sent, ran) = measure(&connection, &mut admin, async {
        assert!(store.get(&key).await.unwrap().is_some());
    })
    .await;
    assert_eq!(sent, ["get"]);
    assert_eq!(ran, stats(&[("get", 1)]));

    let released = StoreKey::new(None, "counted-release");
    store.begin(&released, None, owner, LEASE).await.unwrap();
    let (sent, ran) = measure(&connection, &mut admin, async {
        store.release(&released, owner).await.unwrap()
    })
    .await;
    assert_eq!(sent, ["evalsha"]);
    assert_eq!(ran, stats(&[("evalsha", 1), ("getrange", 1), ("del", 1)]));

    // A refused owner check writes nothing.
    let (sent, ran) = measure(&connection, &mut admin, async {
        let e = store.complete(&key, other, &rec).await.unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::NotOwner);
    })
    .await;
    if fenced {
        // `IFEQ` did not match: nothing written, the reply was the record found.
        assert_eq!(sent, ["set"]);
        assert_eq!(ran, stats(&[("set", 1)]));
        assert_eq!(
            store.get(&key).await.unwrap(),
            Some(Entry::Completed(rec.clone()))
        );
    } else {
        assert_eq!(sent, ["evalsha"]);
        assert_eq!(ran, stats(&[("evalsha", 1), ("getrange", 1)]));
    }

    // A claim made with a fingerprint that the record does not carry: the fenced `complete`
    // finds this token's claim and sends the command once more against it.
    let fp = Fingerprint::sha256(b"claimed with");
    let other_fp = StoreKey::new(None, "counted-fingerprint");
    store
        .begin(&other_fp, Some(&fp), owner, LEASE)
        .await
        .unwrap();
    // Renewed through the store that made it: one command, though the fingerprint is not given.
    let (sent, _) = measure(&connection, &mut admin, async {
        store.renew(&other_fp, owner, LEASE).await.unwrap()
    })
    .await;
    assert_eq!(sent, if fenced { ["set"] } else { ["evalsha"] });
    // The same claim renewed through a store that did not make it (it has the same token, as
    // after a restart of the store but not of the claim): the fenced `renew` guesses the value,
    // finds this token's claim, and sends the command once more against it.
    let stranger = RedisStore::new(connection.clone(), TTL).with_key_ttl(TTL);
    stranger.check_config().await.unwrap();
    let (sent, _) = measure(&connection, &mut admin, async {
        stranger.renew(&other_fp, owner, LEASE).await.unwrap()
    })
    .await;
    let twice = if fenced {
        &["set", "set"][..]
    } else {
        &["evalsha"][..]
    };
    assert_eq!(sent, twice);
    let (sent, _) = measure(&connection, &mut admin, async {
        store.complete(&other_fp, owner, &rec).await.unwrap()
    })
    .await;
    assert_eq!(sent, twice);
    assert_eq!(
        store.get(&other_fp).await.unwrap(),
        Some(Entry::Completed(rec.clone()))
    );
    // Re-sent after a lost reply: still done, the record unchanged.
    store.complete(&other_fp, owner, &rec).await.unwrap();

    // Turned off, `complete` is the script on every server.
    let scripted = RedisStore::new(connection.clone(), TTL)
        .with_key_ttl(TTL)
        .with_fenced_commands(false);
    let off = StoreKey::new(None, "counted-scripted");
    scripted.begin(&off, None, owner, LEASE).await.unwrap();
    let (sent, _) = measure(&connection, &mut admin, async {
        scripted.complete(&off, owner, &rec).await.unwrap()
    })
    .await;
    // (Where the fenced store never loaded the script, it is loaded now.)
    let loaded = if fenced {
        &["evalsha", "script", "evalsha"][..]
    } else {
        &["evalsha"][..]
    };
    assert_eq!(sent, loaded);

    // Keys that outlive their responses (the default): `begin` reads the tombstone and
    // `complete` writes it, each in the same round trip as before.
    let remembering = RedisStore::new(connection.clone(), TTL);
    remembering.check_config().await.unwrap();
    let kept = StoreKey::new(None, "counted-tombstone");
    for replay in [false, true] {
        let (sent, ran) = measure(&connection, &mut admin, async {
            remembering.begin(&kept, None, owner, LEASE).await.unwrap();
        })
        .await;
        assert_eq!(sent, ["<pipeline>"], "replay: {replay}");
        assert_eq!(ran, stats(&[("set", 1), ("get", 1)]), "replay: {replay}");
        if replay {
            break;
        }
        let (sent, ran) = measure(&connection, &mut admin, async {
            remembering.complete(&kept, owner, &rec).await.unwrap()
        })
        .await;
        if fenced {
            assert_eq!(sent, ["<pipeline>"]);
            assert_eq!(ran, stats(&[("set", 2)]));
        } else {
            assert_eq!(sent, ["evalsha"]);
            assert_eq!(ran, stats(&[("evalsha", 1), ("getrange", 1), ("set", 2)]));
        }
    }
}

/// On a cluster, a dead primary takes only its own slots down: keys on the other primaries keep
/// working, and operations on its keys fail ambiguously within the caller's timeout.
#[tokio::test]
async fn cluster_node_down_affects_only_its_slots() {
    let mut cluster = RedisCluster::start();
    let store = RedisStore::new(cluster.connection().await, TTL);
    let mut admin = cluster.nodes()[1].admin();
    let (mut on_dead, mut on_live) = (None, None);
    for i in 0.. {
        let key = StoreKey::new(None, &format!("node-down-{i}"));
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key.to_hex())
            .query(&mut admin)
            .unwrap();
        // The first node serves 0..=5460.
        match slot {
            0..=5460 => on_dead = on_dead.or(Some(key)),
            _ => on_live = on_live.or(Some(key)),
        }
        if on_dead.is_some() && on_live.is_some() {
            break;
        }
    }
    let (on_dead, on_live) = (on_dead.unwrap(), on_live.unwrap());
    let token = OwnerToken::generate();
    assert_eq!(
        store.begin(&on_dead, None, token, LEASE).await.unwrap(),
        Begin::New
    );

    cluster.kill_node(0);
    let e = bounded(Duration::from_secs(2), store.renew(&on_dead, token, LEASE))
        .await
        .unwrap_err();
    assert!(e.kind().is_ambiguous(), "{e:?}");
    let live = eventually(Duration::from_secs(5), || {
        store.begin(&on_live, None, token, LEASE)
    })
    .await;
    assert_eq!(live, Begin::New);
}
