//! A flaky HTTP proxy on loopback, and a loopback server to put behind it.
//!
//! The proxy forwards every request (HTTP/1.1 or HTTP/2, so gRPC too) to its upstream. For the
//! first `drops` requests of each `idempotency-key` it then drops the connection instead of
//! sending the answer back: the server has run the request, the client sees a broken
//! connection. That is the failure an idempotency key exists for.
//!
//! Everything it starts lives in tasks that stop when the proxy (or server) is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// When the proxy drops a connection it was told to drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Once the server has answered: the request ran to its end, the answer is lost.
    AfterResponse,
    /// At most `Duration` after the request was forwarded, whether or not the server has
    /// answered: a slow request is still running when its client retries.
    BeforeResponse(Duration),
}

/// A server (or proxy) on a loopback port; its tasks stop when it is dropped.
pub(crate) struct Served {
    addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl Served {
    /// The address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes every connection.
    pub(crate) async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Serves `service` on a free loopback port, HTTP/1.1 and HTTP/2 (prior knowledge).
pub(crate) async fn serve<S, B>(service: S) -> std::io::Result<Served>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        // The connections live in the accept loop's set: stopping the loop closes them.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let service = service.clone();
                    connections.spawn(async move {
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Some(_) = connections.join_next() => {}
            }
        }
    });
    Ok(Served { addr, tasks })
}

/// The proxy's counters.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// Requests forwarded upstream.
    pub(crate) forwarded: AtomicUsize,
    /// Connections dropped on purpose.
    pub(crate) dropped: AtomicUsize,
}

struct Proxy {
    upstream: SocketAddr,
    drops: usize,
    fault: Fault,
    seen: Mutex<HashMap<String, usize>>,
    counts: Arc<Counts>,
    http1: Client<HttpConnector, Incoming>,
    http2: Client<HttpConnector, Incoming>,
}

/// The proxy dropped the connection.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the flaky proxy")
    }
}

impl std::error::Error for Dropped {}

/// A flaky proxy to `upstream` that drops the first `drops` answers of each key.
pub(crate) async fn flaky_proxy(
    upstream: SocketAddr,
    drops: usize,
    fault: Fault,
) -> std::io::Result<(Served, Arc<Counts>)> {
    let counts = Arc::new(Counts::default());
    let proxy = Arc::new(Proxy {
        upstream,
        drops,
        fault,
        seen: Mutex::new(HashMap::new()),
        counts: Arc::clone(&counts),
        http1: Client::builder(TokioExecutor::new()).build_http(),
        http2: Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http(),
    });
    let service = hyper::service::service_fn(move |req| Arc::clone(&proxy).forward(req));
    Ok((serve(service).await?, counts))
}

impl Proxy {
    async fn forward(
        self: Arc<Self>,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, Dropped> {
        let drop = req
            .headers()
            .get("idempotency-key")
            .and_then(|k| k.to_str().ok())
            .is_some_and(|key| {
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                let n = seen.entry(key.to_owned()).or_default();
                *n += 1;
                *n <= self.drops
            });
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        *req.uri_mut() = format!("http://{}{path}", self.upstream)
            .parse()
            .map_err(|_| Dropped)?;
        let client = if req.version() == Version::HTTP_2 {
            &self.http2
        } else {
            &self.http1
        };
        self.counts.forwarded.fetch_add(1, Ordering::SeqCst);
        let answer = client.request(req);
        let res = match (drop, self.fault) {
            (true, Fault::BeforeResponse(after)) => {
                // Whatever comes first, the client gets a dropped connection; a server still
                // running sees its client go away.
                let _ = tokio::time::timeout(after, answer).await;
                None
            }
            (true, Fault::AfterResponse) => {
                let _ = answer.await;
                None
            }
            (false, _) => Some(answer.await.map_err(|_| Dropped)?),
        };
        match res {
            Some(res) => Ok(res),
            None => {
                self.counts.dropped.fetch_add(1, Ordering::SeqCst);
                Err(Dropped)
            }
        }
    }
}
