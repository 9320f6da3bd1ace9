//! The fault test ("nemesis"): several app instances over one private `redis-server`, clients that
//! give up at random points and retry, and a nemesis that pauses Redis (for less than the lease)
//! and kills the layer's connections. What it checks is what SPEC §2.5, §2.7 and §6 promise:
//!
//! - no key's handler ran twice (every answer here is a replayable `201`), counted by the handler
//!   itself;
//! - every `201` a client got for a key is the same response (a replay is byte-identical);
//! - no `409` without a claim somebody runs: each `409` is explained by an execution of its key
//!   that was running or recording (up to the longest pause + the lease + a margin after the
//!   handler ended), or by a request of the same key that the client gave up on or that failed
//!   moments before (its claim is released as soon as the store answers again, at the end of the
//!   pause it was caught in, plus a margin);
//! - every key got its `201` before the deadline.
//!
//! It runs for about 60 s and stops by itself: keys arrive over [`LOAD`], the nemesis acts during
//! [`LOAD`], and everything stops at [`DEADLINE`]. The seed is printed; `NEMESIS_SEED=<n>` replays
//! the same choices (the timing of a real server still differs from run to run).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;
use tower_idempotency::store::RedisStore;
use tower_idempotency::{DetachedTasks, IdempotencyLayer};

use common::redis::RedisServer;

/// App instances, each with its own connection to the one server.
const INSTANCES: usize = 3;
/// Keys, each sent by one client until it gets its `201`.
const KEYS: usize = 400;
/// The layer's lease: short, so that pauses come close to it.
const LEASE: Duration = Duration::from_millis(2500);
/// The layer's store timeout: shorter than the lease and than most pauses.
const STORE_TIMEOUT: Duration = Duration::from_millis(500);
/// Record retention: longer than the test.
const TTL: Duration = Duration::from_secs(600);
/// Keys start, and the nemesis acts, within this time from the start.
const LOAD: Duration = Duration::from_secs(55);
/// Everything stops at this time from the start.
const DEADLINE: Duration = Duration::from_secs(80);
/// Slack for scheduling on a busy machine, added to every bound below.
const MARGIN: Duration = Duration::from_millis(750);
/// The longest pause the nemesis may choose, as a fraction of the lease: under two thirds of it,
/// the outage the crate promises to survive without a second execution (README, "Outages").
///
/// A lease renewed every third of itself has at least two thirds left at any moment. A pause
/// longer than what is left lets the lease run out *during* the pause; when it ends, the owner's
/// queued `complete` and a retry's `begin` queued on another connection race, and Redis may serve
/// the retry first: it claims the free key and runs again. No recording path closes that race,
/// so the promise (and this test) stop at two thirds. With pauses up to 0.95 of the lease the
/// test fails in about half of the runs on that race; at `0.6` it still catches orphaned claims
/// on the code before issue 10 in every run.
const MAX_PAUSE_OF_LEASE: f64 = 0.6;
/// The shortest pause, as a fraction of the lease.
const MIN_PAUSE_OF_LEASE: f64 = 0.3;
/// At most this many nemesis actions.
const MAX_FAULTS: usize = 40;

/// A small seeded generator of choices.
fn rng(seed: u64) -> fastrand::Rng {
    fastrand::Rng::with_seed(seed)
}

fn between(rng: &mut fastrand::Rng, lo: Duration, hi: Duration) -> Duration {
    let (lo, hi) = (lo.as_micros() as u64, hi.as_micros() as u64);
    Duration::from_micros(rng.u64(lo..=hi))
}

// ---------------------------------------------------------------------------------------------
// The handler and its side channel.

/// One run of the handler, as the handler saw it.
#[derive(Debug, Clone)]
struct Run {
    instance: usize,
    start: Instant,
    /// `None` while it runs.
    end: Option<Instant>,
}

/// Every run of the handler, per key: the handler's own record, independent of the layer.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<HashMap<String, Vec<Run>>>>);

impl Runs {
    /// Notes a run's start; the returned guard notes its end, also when the run is dropped.
    fn start(&self, key: &str, instance: usize) -> (usize, RunGuard) {
        let mut runs = self.0.lock().unwrap();
        let list = runs.entry(key.to_owned()).or_default();
        list.push(Run {
            instance,
            start: Instant::now(),
            end: None,
        });
        let n = list.len();
        let guard = RunGuard {
            runs: self.clone(),
            key: key.to_owned(),
            index: n - 1,
        };
        (n, guard)
    }

    fn all(&self) -> HashMap<String, Vec<Run>> {
        self.0.lock().unwrap().clone()
    }
}

struct RunGuard {
    runs: Runs,
    key: String,
    index: usize,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if let Some(run) = self
            .runs
            .0
            .lock()
            .unwrap()
            .get_mut(&self.key)
            .and_then(|l| l.get_mut(self.index))
        {
            run.end = Some(Instant::now());
        }
    }
}

#[derive(Clone)]
struct Handler {
    instance: usize,
    runs: Runs,
}

/// Counts its run, works for the time the request asks (`<key> work <ms>`), answers `201` with a
/// body naming the run.
async fn create_order(
    State(h): State<Handler>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let key = headers["idempotency-key"].to_str().unwrap().to_owned();
    let work: u64 = body
        .rsplit(' ')
        .next()
        .and_then(|ms| ms.parse().ok())
        .expect("the body ends with the work in ms");
    let (n, _guard) = h.runs.start(&key, h.instance);
    tokio::time::sleep(Duration::from_millis(work)).await;
    (
        StatusCode::CREATED,
        format!("{key}: run {n} on instance {}", h.instance),
    )
}

/// One app instance served over loopback, and how to stop it.
struct Instance {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    tasks: DetachedTasks,
}

async fn start_instance(server: &RedisServer, instance: usize, runs: &Runs) -> Instance {
    let store = RedisStore::new(server.connection_manager().await, TTL);
    let layer = IdempotencyLayer::new(store)
        .lease(LEASE)
        .store_timeout(STORE_TIMEOUT);
    let tasks = layer.detached_tasks();
    let router = Router::new()
        .route("/orders", post(create_order))
        .layer(layer)
        .with_state(Handler {
            instance,
            runs: runs.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Instance {
        addr,
        stop,
        served,
        tasks,
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// What one request got.
#[derive(Debug, Clone)]
enum Got {
    Status {
        status: StatusCode,
        replayed: bool,
        body: Bytes,
    },
    /// The client gave up: the request future (and its connection) was dropped.
    GaveUp,
    /// The connection failed.
    Failed(String),
}

#[derive(Debug, Clone)]
struct Answer {
    sent: Instant,
    received: Instant,
    got: Got,
}

impl Answer {
    fn status(&self) -> Option<StatusCode> {
        match self.got {
            Got::Status { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// One request over a fresh loopback connection (so that giving up closes it, as a client that
/// goes away does).
async fn post_once(addr: SocketAddr, key: &str, body: &str) -> Got {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let req = Request::post("/orders")
            .header("host", addr.to_string())
            .header("idempotency-key", key)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let send = async {
            let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = res.status();
            let replayed = res
                .headers()
                .get("idempotent-replayed")
                .is_some_and(|v| v == "true");
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>(Got::Status {
                status,
                replayed,
                body,
            })
        };
        tokio::select! {
            got = send => got,
            ended = conn => Err(format!("connection ended first: {ended:?}")),
        }
    };
    exchange.await.unwrap_or_else(Got::Failed)
}

/// Sends `key` to random instances until it gets a `201` or a final problem, or the deadline.
async fn client(
    addrs: Arc<Vec<SocketAddr>>,
    key: String,
    seed: u64,
    start: Instant,
    deadline: Instant,
) -> Vec<Answer> {
    let mut rng = rng(seed);
    let at = start + between(&mut rng, Duration::ZERO, LOAD);
    // The handler's work: often short, often over the store timeout, often over a lease third.
    let work = match rng.u8(0..100) {
        0..55 => between(
            &mut rng,
            Duration::from_millis(5),
            Duration::from_millis(200),
        ),
        55..75 => between(
            &mut rng,
            Duration::from_millis(500),
            Duration::from_millis(800),
        ),
        _ => between(
            &mut rng,
            Duration::from_millis(850),
            Duration::from_millis(1600),
        ),
    };
    let body = format!("order {key} work {}", work.as_millis());
    tokio::time::sleep_until(at.into()).await;
    let mut answers = Vec::new();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return answers;
        }
        let addr = addrs[rng.usize(..addrs.len())];
        // Giving up: before the store answers in a pause, before the handler ends, or not at all.
        let patience = match rng.u8(0..100) {
            0..30 => between(
                &mut rng,
                Duration::from_millis(5),
                Duration::from_millis(450),
            ),
            30..45 => between(
                &mut rng,
                Duration::from_millis(450),
                Duration::from_millis(2000),
            ),
            _ => Duration::from_secs(10),
        };
        let got = tokio::time::timeout(patience.min(deadline - now), post_once(addr, &key, &body))
            .await
            .unwrap_or(Got::GaveUp);
        let answer = Answer {
            sent: now,
            received: Instant::now(),
            got,
        };
        let pause = match answer.status() {
            Some(StatusCode::CREATED) => None,
            Some(StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE) => Some(between(
                &mut rng,
                Duration::from_millis(50),
                Duration::from_millis(300),
            )),
            // Anything else is final, and the checks below call it wrong.
            Some(_) => None,
            None => Some(between(
                &mut rng,
                Duration::ZERO,
                Duration::from_millis(100),
            )),
        };
        answers.push(answer);
        match pause {
            Some(pause) => tokio::time::sleep(pause).await,
            None => return answers,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The nemesis.

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `CLIENT PAUSE <for> ALL`, sent at `at`.
    Pause { at: Instant, for_: Duration },
    /// `CLIENT KILL TYPE normal SKIPME yes`, which killed `killed` connections.
    Kill { at: Instant, killed: u64 },
}

/// Pauses the server (for less than the lease) and kills the layer's connections, at random,
/// until `until` or [`MAX_FAULTS`]; one fault at a time.
async fn nemesis(server: Arc<RedisServer>, seed: u64, until: Instant) -> Vec<Fault> {
    let mut rng = rng(seed);
    let mut faults = Vec::new();
    while faults.len() < MAX_FAULTS {
        let gap = between(
            &mut rng,
            Duration::from_millis(500),
            Duration::from_millis(2500),
        );
        if Instant::now() + gap >= until {
            break;
        }
        tokio::time::sleep(gap).await;
        let server = Arc::clone(&server);
        if rng.u8(0..100) < 65 {
            let for_ = LEASE.mul_f64(
                MIN_PAUSE_OF_LEASE + rng.f64() * (MAX_PAUSE_OF_LEASE - MIN_PAUSE_OF_LEASE),
            );
            let at = Instant::now();
            tokio::task::spawn_blocking(move || server.pause(for_))
                .await
                .unwrap();
            faults.push(Fault::Pause { at, for_ });
            // Wait it out: the nemesis's next command would be paused too.
            tokio::time::sleep_until((at + for_).into()).await;
        } else {
            let at = Instant::now();
            let killed = tokio::task::spawn_blocking(move || server.kill_clients())
                .await
                .unwrap();
            faults.push(Fault::Kill { at, killed });
        }
    }
    faults
}

// ---------------------------------------------------------------------------------------------
// The test.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_pauses_and_kills_under_load() {
    let seed = std::env::var("NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("NEMESIS_SEED={seed}");
    let mut seeds = rng(seed);

    let server = Arc::new(RedisServer::start());
    let runs = Runs::default();
    let mut instances = Vec::new();
    for i in 0..INSTANCES {
        instances.push(start_instance(&server, i, &runs).await);
    }
    let addrs = Arc::new(instances.iter().map(|i| i.addr).collect::<Vec<_>>());

    let start = Instant::now();
    let deadline = start + DEADLINE;
    let run_id = format!("{:x}", seeds.u32(..));
    let mut clients = JoinSet::new();
    for k in 0..KEYS {
        let key = format!("{run_id}-{k}");
        let (addrs, seed) = (Arc::clone(&addrs), seeds.u64(..));
        clients.spawn(async move {
            let answers = client(addrs, key.clone(), seed, start, deadline).await;
            (key, answers)
        });
    }
    let faults = tokio::spawn(nemesis(Arc::clone(&server), seeds.u64(..), start + LOAD));

    let mut answers: BTreeMap<String, Vec<Answer>> = BTreeMap::new();
    while let Some(done) = clients.join_next().await {
        let (key, a) = done.unwrap();
        answers.insert(key, a);
    }
    let faults = faults.await.unwrap();
    let finished = start.elapsed();

    // Stop the instances, then let their detached runs and background re-sends end.
    for instance in instances {
        let _ = instance.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), instance.served)
            .await
            .expect("an instance did not stop")
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), instance.tasks.drain())
            .await
            .expect("an instance's detached tasks did not end");
    }
    let runs = runs.all();
    // Every task has ended: the server is ours alone, stopped by its pid on drop.
    drop(Arc::into_inner(server).expect("the nemesis has ended"));

    let report = Report::new(&answers, &runs, &faults);
    report.print(finished);
    report.check();
}

// ---------------------------------------------------------------------------------------------
// The checks.

struct Report<'a> {
    answers: &'a BTreeMap<String, Vec<Answer>>,
    runs: &'a HashMap<String, Vec<Run>>,
    faults: &'a [Fault],
    /// Each pause as (start, end).
    pauses: Vec<(Instant, Instant)>,
    longest_pause: Duration,
}

fn runs_of<'r>(runs: &'r HashMap<String, Vec<Run>>, key: &str) -> &'r [Run] {
    runs.get(key).map(Vec::as_slice).unwrap_or_default()
}

/// Whether a request may have left a claim behind that nobody runs: it went away, failed, or was
/// answered `503` (its `begin` may land later). A `201` or a `409` leaves none.
fn may_leave_claim(a: &Answer) -> bool {
    !matches!(a.status(), Some(StatusCode::CONFLICT | StatusCode::CREATED))
}

/// A `409` no claim somebody runs can explain.
#[derive(Debug)]
struct Unexplained<'a> {
    key: &'a str,
    sent_s: f64,
    /// How long after the last moment something held the key (a run's end, or the store
    /// answering again after a request of the key went away) the `409` was answered.
    held_for: Duration,
}

impl<'a> Report<'a> {
    fn new(
        answers: &'a BTreeMap<String, Vec<Answer>>,
        runs: &'a HashMap<String, Vec<Run>>,
        faults: &'a [Fault],
    ) -> Self {
        let pauses: Vec<_> = faults
            .iter()
            .filter_map(|f| match *f {
                Fault::Pause { at, for_ } => Some((at, at + for_)),
                Fault::Kill { .. } => None,
            })
            .collect();
        let longest_pause = pauses
            .iter()
            .map(|(a, b)| *b - *a)
            .max()
            .unwrap_or_default();
        Self {
            answers,
            runs,
            faults,
            pauses,
            longest_pause,
        }
    }

    /// When a claim that a request may have left behind, sent at `sent` and given up (or
    /// failed) at `left`, is surely gone: when the store answers again (the end of the last
    /// pause that overlapped it, else `left`), plus the margin.
    fn stray_gone_by(&self, sent: Instant, left: Instant) -> Instant {
        let store_back = self
            .pauses
            .iter()
            .filter(|(from, to)| *from <= left && *to >= sent)
            .map(|(_, to)| *to)
            .max()
            .unwrap_or(left)
            .max(left);
        store_back + MARGIN
    }

    /// The `409`s that nothing explains.
    fn unexplained(&self) -> Vec<Unexplained<'a>> {
        let mut out = Vec::new();
        let start = self.start();
        let after_run = self.longest_pause + LEASE + MARGIN;
        for (key, answers) in self.answers {
            let runs = self.runs.get(key).map(Vec::as_slice).unwrap_or_default();
            for (i, a) in answers.iter().enumerate() {
                if a.status() != Some(StatusCode::CONFLICT) {
                    continue;
                }
                // A run of this key started (less the margin) before the answer, and ended
                // less than a pause + the lease + the margin before it was sent.
                let by_run = runs.iter().any(|r| {
                    r.start <= a.received + MARGIN
                        && r.end.is_none_or(|end| a.sent <= end + after_run)
                });
                // An earlier request of this key that went away or failed without an answer
                // from the layer, whose claim is released as soon as the store answers.
                let by_stray = answers[..i].iter().any(|b| {
                    may_leave_claim(b) && a.sent <= self.stray_gone_by(b.sent, b.received)
                });
                if by_run || by_stray {
                    continue;
                }
                // The last moment something held the key: a run's end, or the store answering
                // again after a request went away.
                let held_since = runs
                    .iter()
                    .filter_map(|r| r.end)
                    .chain(
                        answers[..i]
                            .iter()
                            .filter(|b| may_leave_claim(b))
                            .map(|b| self.stray_gone_by(b.sent, b.received) - MARGIN),
                    )
                    .filter(|t| *t <= a.received)
                    .max()
                    .unwrap_or(start);
                out.push(Unexplained {
                    key,
                    sent_s: (a.sent - start).as_secs_f64(),
                    held_for: a.received - held_since,
                });
            }
        }
        out
    }

    fn start(&self) -> Instant {
        self.answers
            .values()
            .flatten()
            .map(|a| a.sent)
            .chain(self.faults.iter().map(|f| match *f {
                Fault::Pause { at, .. } | Fault::Kill { at, .. } => at,
            }))
            .min()
            .unwrap_or_else(Instant::now)
    }

    /// `409`s sent after the key's first run ended, and the longest time from that end to one.
    fn conflicts_after_owner(&self) -> (usize, Duration) {
        let (mut n, mut longest) = (0, Duration::ZERO);
        for (key, answers) in self.answers {
            let Some(end) = self
                .runs
                .get(key)
                .and_then(|r| r.first())
                .and_then(|r| r.end)
            else {
                continue;
            };
            for a in answers {
                if a.status() == Some(StatusCode::CONFLICT) && a.sent > end {
                    n += 1;
                    longest = longest.max(a.received - end);
                }
            }
        }
        (n, longest)
    }

    /// Keys whose handler ran more than once: (key, runs, whether a later run started after an
    /// earlier one had ended, i.e. a completed request ran again).
    fn ran_twice(&self) -> Vec<(&str, Vec<Run>, bool)> {
        let mut out: Vec<_> = self
            .runs
            .iter()
            .filter(|(_, r)| r.len() > 1)
            .map(|(k, r)| {
                let rerun = r
                    .windows(2)
                    .any(|w| w[0].end.is_some_and(|end| w[1].start >= end));
                (k.as_str(), r.clone(), rerun)
            })
            .collect();
        out.sort_by_key(|(k, ..)| *k);
        out
    }

    /// A key's story, in seconds from the start: its requests, its runs, and the faults near them.
    fn timeline(&self, key: &str) -> String {
        let start = self.start();
        let t = |i: Instant| (i - start).as_secs_f64();
        let mut lines = Vec::new();
        for a in self.answers.get(key).into_iter().flatten() {
            let got = match &a.got {
                Got::Status {
                    status, replayed, ..
                } => format!(
                    "{}{}",
                    status.as_u16(),
                    if *replayed { " replay" } else { "" }
                ),
                Got::GaveUp => "gave up".to_owned(),
                Got::Failed(e) => format!("failed: {e}"),
            };
            lines.push((
                a.sent,
                format!("  request {:.2}..{:.2} {got}", t(a.sent), t(a.received)),
            ));
        }
        for r in self.runs.get(key).into_iter().flatten() {
            let end = r
                .end
                .map_or("running".to_owned(), |e| format!("{:.2}", t(e)));
            lines.push((
                r.start,
                format!("  run {:.2}..{end} on instance {}", t(r.start), r.instance),
            ));
        }
        let (first, last) = (
            lines.iter().map(|l| l.0).min().unwrap_or(start),
            lines.iter().map(|l| l.0).max().unwrap_or(start),
        );
        for f in self.faults {
            match *f {
                Fault::Pause { at, for_ } if at + for_ + LEASE >= first && at <= last => {
                    lines.push((at, format!("  pause {:.2}..{:.2}", t(at), t(at + for_))))
                }
                Fault::Kill { at, killed } if at + LEASE >= first && at <= last => {
                    lines.push((at, format!("  kill {:.2} ({killed} connections)", t(at))))
                }
                _ => {}
            }
        }
        lines.sort_by_key(|l| l.0);
        let lines: Vec<String> = lines.into_iter().map(|l| l.1).collect();
        format!("{key}:\n{}", lines.join("\n"))
    }

    fn print(&self, finished: Duration) {
        let all: Vec<&Answer> = self.answers.values().flatten().collect();
        let count = |s: StatusCode| all.iter().filter(|a| a.status() == Some(s)).count();
        let replays = all
            .iter()
            .filter(|a| matches!(a.got, Got::Status { replayed: true, .. }))
            .count();
        let gave_up = all.iter().filter(|a| matches!(a.got, Got::GaveUp)).count();
        let failures: Vec<&str> = all
            .iter()
            .filter_map(|a| match &a.got {
                Got::Failed(e) => Some(e.as_str()),
                _ => None,
            })
            .collect();
        let failed = failures.len();
        let executions: usize = self.runs.values().map(Vec::len).sum();
        let kills: Vec<u64> = self
            .faults
            .iter()
            .filter_map(|f| match f {
                Fault::Kill { killed, .. } => Some(*killed),
                Fault::Pause { .. } => None,
            })
            .collect();
        let (after_owner, longest_after_owner) = self.conflicts_after_owner();
        let unexplained = self.unexplained();
        let longest_held = unexplained
            .iter()
            .map(|u| u.held_for)
            .max()
            .unwrap_or_default();
        let unexplained_keys = {
            let mut keys: Vec<_> = unexplained.iter().map(|u| u.key).collect();
            keys.dedup();
            keys.len()
        };
        println!(
            "nemesis: {finished:.1?} of load, {} keys, {INSTANCES} instances, lease {LEASE:?}, store timeout {STORE_TIMEOUT:?}",
            self.answers.len()
        );
        println!(
            "  requests sent {}, gave up {gave_up}, connection failures {failed} {:?}",
            all.len(),
            failures.first()
        );
        println!(
            "  201 {} (replays {replays}), 409 {}, 503 {}, other {}",
            count(StatusCode::CREATED),
            count(StatusCode::CONFLICT),
            count(StatusCode::SERVICE_UNAVAILABLE),
            all.iter()
                .filter(|a| a.status().is_some_and(|s| ![
                    StatusCode::CREATED,
                    StatusCode::CONFLICT,
                    StatusCode::SERVICE_UNAVAILABLE
                ]
                .contains(&s)))
                .count()
        );
        println!(
            "  executions {executions} over {} keys; keys run twice {}",
            self.runs.len(),
            self.ran_twice().len()
        );
        println!(
            "  409s after the owner's run ended {after_owner}, longest {longest_after_owner:.2?} after it"
        );
        println!(
            "  409s no claim explains {} over {unexplained_keys} keys, longest held {longest_held:.2?}",
            unexplained.len()
        );
        println!(
            "  pauses {} (longest {:.2?}), kills {} ({} connections)",
            self.pauses.len(),
            self.longest_pause,
            kills.len(),
            kills.iter().sum::<u64>()
        );
    }

    fn check(&self) {
        let mut failures = Vec::new();
        let twice = self.ran_twice();
        if !twice.is_empty() {
            let start = self.start();
            let shown: Vec<String> = twice
                .iter()
                .take(5)
                .map(|(k, runs, rerun)| {
                    let runs: Vec<String> = runs
                        .iter()
                        .map(|r| {
                            format!(
                                "instance {} {:.2}s..{}",
                                r.instance,
                                (r.start - start).as_secs_f64(),
                                r.end.map_or("running".into(), |e| format!(
                                    "{:.2}s",
                                    (e - start).as_secs_f64()
                                ))
                            )
                        })
                        .collect();
                    let what = if *rerun {
                        "ran again after it completed"
                    } else {
                        "ran concurrently"
                    };
                    // A later run that started as a pause ended: its `begin` was queued in the
                    // pause and served when the lease had run out.
                    let after_pause: Vec<String> = runs_of(self.runs, k)
                        .iter()
                        .skip(1)
                        .filter_map(|r| {
                            self.pauses
                                .iter()
                                .find(|(_, to)| *to <= r.start && r.start <= *to + MARGIN)
                                .map(|(from, to)| {
                                    format!(
                                        "{:.2}s..{:.2}s",
                                        (*from - start).as_secs_f64(),
                                        (*to - start).as_secs_f64()
                                    )
                                })
                        })
                        .collect();
                    format!(
                        "{k} {what}: {runs:?}; later runs right after the pauses {after_pause:?}"
                    )
                })
                .collect();
            failures.push(format!(
                "{} keys ran more than once ({} after completing); first: {shown:#?}",
                twice.len(),
                twice.iter().filter(|t| t.2).count()
            ));
        }
        for (key, answers) in self.answers {
            let created: Vec<&Bytes> = answers
                .iter()
                .filter_map(|a| match &a.got {
                    Got::Status {
                        status: StatusCode::CREATED,
                        body,
                        ..
                    } => Some(body),
                    _ => None,
                })
                .collect();
            if created.is_empty() {
                failures.push(format!(
                    "{key} got no 201 before the deadline: {:?}",
                    answers.last()
                ));
            } else if created.iter().any(|b| *b != created[0]) {
                failures.push(format!("{key} got different 201 bodies: {created:?}"));
            }
            if !created.is_empty() && !created[0].starts_with(format!("{key}: run ").as_bytes()) {
                failures.push(format!("{key}: a 201 no run of this key made: {created:?}"));
            }
            for a in answers {
                if let Some(s) = a.status().filter(|s| {
                    ![
                        StatusCode::CREATED,
                        StatusCode::CONFLICT,
                        StatusCode::SERVICE_UNAVAILABLE,
                    ]
                    .contains(s)
                }) {
                    failures.push(format!("{key}: unexpected {s}: {a:?}"));
                }
            }
        }
        let unexplained = self.unexplained();
        if !unexplained.is_empty() {
            let mut worst: Vec<_> = unexplained.iter().collect();
            worst.sort_by_key(|u| std::cmp::Reverse(u.held_for));
            let shown: Vec<String> = worst
                .iter()
                .take(5)
                .map(|u| {
                    format!(
                        "{} sent at {:.2}s, {:.2?} after the last holder stopped",
                        u.key, u.sent_s, u.held_for
                    )
                })
                .collect();
            failures.push(format!(
                "{} 409s that no claim explains (held by a claim nobody runs); longest: {shown:#?}",
                unexplained.len(),
            ));
        }
        if !failures.is_empty() {
            let mut keys: Vec<&str> = twice.iter().take(2).map(|t| t.0).collect();
            keys.extend(unexplained.iter().map(|u| u.key).take(1));
            for key in keys {
                println!("{}", self.timeline(key));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
