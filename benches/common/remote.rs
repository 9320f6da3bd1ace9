//! What the benchmarks of the remote stores (`redis`, `postgres`) share: the record they store,
//! the store's own calls without HTTP, the layered side of a row, and the pairing of that side
//! with the raw client's batches.
//!
//! Every remote row is a first execution (a fresh key per request: claim, handler, record) or a
//! replay (the key `replayed`, completed once before timing), at some number of concurrent tasks.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use tokio::runtime::Runtime;
use tower_idempotency::fingerprint::Fingerprint;
use tower_idempotency::record::{Record, StoredResponse};
use tower_idempotency::store::{Begin, OwnerToken, Store, StoreKey};

use super::{Executions, Key, Kind, Load, Paired};

/// The key every replay row asks for (client key, no scope).
pub(crate) const REPLAYED: &str = "replayed";

/// Which request a remote row times.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Request {
    /// A fresh key per request: `begin` claims, the handler runs, `complete` records.
    First,
    /// The completed key [`REPLAYED`]: `begin` answers with the record.
    Replay,
}

impl Request {
    /// The criterion group of this request in the bench `store` (`redis`, `postgres`).
    pub(crate) fn group(self, store: &str) -> String {
        match self {
            Self::First => format!("{store}_first"),
            Self::Replay => format!("{store}_replay"),
        }
    }

    /// The start of a row's label: `first execution, <store>, 8 tasks`.
    pub(crate) fn label(self, store: &str, tasks: u64) -> String {
        let what = match self {
            Self::First => "first execution",
            Self::Replay => "replay",
        };
        let s = if tasks == 1 { "" } else { "s" };
        format!("{what}, {store}, {tasks} task{s}")
    }

    /// The `Idempotency-Key` of this request's load: a fresh one per request (`{prefix}-{n}`),
    /// or [`REPLAYED`].
    fn key(self) -> Key {
        match self {
            Self::First => Key::Fresh(super::fresh_prefix()),
            Self::Replay => Key::Fixed(HeaderValue::from_static(REPLAYED)),
        }
    }
}

/// A record of the baseline's response (`201`, `Content-Type`, the 256-byte body), as the layer
/// stores it.
pub(crate) fn record() -> Record {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let response = StoredResponse::new(StatusCode::CREATED, headers, super::order(0), None);
    Record::new(Some(Fingerprint::sha256(b"request")), &response)
}

/// The store alone, as the layer drives it, without HTTP: `begin` + `complete` for a first
/// execution, `begin` on a completed key for a replay. Panics on any other outcome.
pub(crate) async fn store_calls<S: Store>(store: &S, key: &str, record: &Record, request: Request) {
    let key = StoreKey::new(None, key);
    let token = OwnerToken::generate();
    let fingerprint = record.fingerprint().copied();
    let lease = Duration::from_secs(30);
    match store
        .begin(&key, fingerprint.as_ref(), token, lease)
        .await
        .expect("begin")
    {
        Begin::New if request == Request::First => {
            store.complete(&key, token, record).await.expect("complete")
        }
        Begin::Completed(_) if request == Request::Replay => {}
        other => panic!("{request:?}: unexpected {other:?}"),
    }
}

/// `n` requests of `request` through the store alone from `tasks` tasks (first executions under
/// a prefix of their own); the wall time.
pub(crate) fn store_batch<S: Store + Send + Sync + 'static>(
    rt: &Runtime,
    store: &Arc<S>,
    request: Request,
    tasks: u64,
    n: u64,
) -> Duration {
    let (store, prefix, record) = (Arc::clone(store), super::fresh_prefix(), record());
    super::drive_fn(rt, tasks, n, move |i| {
        let (store, record) = (Arc::clone(&store), record.clone());
        let key = match request {
            Request::First => format!("store-{prefix}-{i}"),
            Request::Replay => REPLAYED.to_owned(),
        };
        async move { store_calls(&*store, &key, &record, request).await }
    })
}

/// Completes [`REPLAYED`] in `store` through its own calls, for the store's replay rows.
pub(crate) fn store_completed<S: Store + Send + Sync + 'static>(rt: &Runtime, store: &Arc<S>) {
    let store = Arc::clone(store);
    super::on_runtime(rt, async move {
        store_calls(&*store, REPLAYED, &record(), Request::First).await;
    });
}

/// The layered side of a row: a router behind the layer, sending first executions under fresh
/// keys for every batch, or replays of [`REPLAYED`] (completed through the router when made).
/// After every batch it checks that the handler ran once per first execution and never for a
/// replay.
#[derive(Clone)]
pub(crate) struct Layered {
    load: Load,
    request: Request,
    executions: Executions,
}

impl Layered {
    /// `router` (layered over a remote store, counting its handler's `executions`, as
    /// [`super::layered`] makes it) sending `request`s.
    pub(crate) fn new(
        rt: &Runtime,
        (router, executions): (Router, Executions),
        request: Request,
    ) -> Self {
        let load = Load::post(router, request.key());
        if request == Request::Replay {
            super::drive(rt, &load, 1, 1);
        }
        Self {
            load,
            request,
            executions,
        }
    }

    /// `n` requests from `tasks` tasks (fresh keys for each batch of first executions); the
    /// wall time.
    pub(crate) fn run(&self, rt: &Runtime, tasks: u64, n: u64) -> Duration {
        let before = self.executions.total();
        let (took, ran) = match self.request {
            Request::First => (super::drive(rt, &self.load.fresh(), tasks, n), n),
            Request::Replay => (super::drive(rt, &self.load, tasks, n), 0),
        };
        assert_eq!(
            self.executions.total() - before,
            ran,
            "{:?}: handler executions in a batch of {n}",
            self.request
        );
        took
    }
}

/// The bare handler: the same router and requests of `request` (with the same key header,
/// which it ignores) with no layer and no store, the baseline of the "against the bare handler"
/// rows.
pub(crate) fn bare(rt: &Runtime, request: Request, tasks: u64, n: u64) -> Duration {
    let (router, _) = super::baseline(1);
    super::drive(rt, &Load::post(router, request.key()), tasks, n)
}

/// `layered` against `raw`, in pairs, as throughputs (layered / raw), at `tasks` tasks; `id` is
/// the layered row's criterion id (see [`super::paired_batches`]).
pub(crate) fn paired_with_raw(
    rt: &Runtime,
    id: &str,
    since: SystemTime,
    layered: &Layered,
    tasks: u64,
    raw: impl FnMut(u64) -> Duration,
) -> Option<Paired> {
    super::paired_batches(id, since, Kind::Throughput, raw, |n| {
        layered.run(rt, tasks, n)
    })
}

/// `layered` against the bare handler sending the same requests, in pairs, as times (layered /
/// bare), at `tasks` tasks.
pub(crate) fn paired_with_bare(
    rt: &Runtime,
    id: &str,
    since: SystemTime,
    layered: &Layered,
    tasks: u64,
) -> Option<Paired> {
    super::paired_batches(
        id,
        since,
        Kind::Time,
        |n| bare(rt, layered.request, tasks, n),
        |n| layered.run(rt, tasks, n),
    )
}

/// `variant` against `baseline`, two layered sides, in pairs, as throughputs (variant /
/// baseline), at `tasks` tasks; `id` is the variant's criterion id.
pub(crate) fn paired_layered(
    rt: &Runtime,
    id: &str,
    since: SystemTime,
    baseline: &Layered,
    variant: &Layered,
    tasks: u64,
) -> Option<Paired> {
    super::paired_batches(
        id,
        since,
        Kind::Throughput,
        |n| baseline.run(rt, tasks, n),
        |n| variant.run(rt, tasks, n),
    )
}
