//! The request path: accept → route → pick → forward → record.
//!
//! This file, `route.rs` (which group, which worker slot) and `policy.rs` (which worker) are
//! all of it. A request is checked against the limits, routed by longest path prefix to a
//! target group, given an in-flight slot on a worker the group's policy picks, and forwarded
//! on a pooled keep-alive connection. Failures that provably did not reach the worker, or that
//! happened before any response byte on a request that is safe to repeat, are retried on a
//! *different* worker within the group's retry budget. Every outcome feeds the worker's
//! latency and failure estimates, passive ejection, the in-band telemetry and the metrics.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use fulcrum_telemetry::{LoadReport, LOAD_REPORT_HEADER};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::body::{BodyError, ClientBody, Finish, UpBody};
use crate::config::Config;
use crate::fleet::{now_us, Fleet, Outcome, OutlierSettings, Worker};
use crate::metrics::{Metrics, RequestLabels, RetryLabels, RouteLabels};
use crate::pool::{ConnectError, Upstream};
use crate::route::{Group, PickError, RouteEntry, Router};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const LOAD_REPORT: HeaderName = HeaderName::from_static(LOAD_REPORT_HEADER);
const INSTANCE: HeaderName = HeaderName::from_static("x-fulcrum-instance");
const CLUSTER: HeaderName = HeaderName::from_static("x-fulcrum-cluster");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What every request handler shares.
pub struct Shared {
    pub router: Arc<ArcSwap<Router>>,
    pub fleet: Fleet,
    pub metrics: Metrics,
    ids: RequestIds,
    connections: AtomicUsize,
}

impl Shared {
    pub fn new(router: Arc<ArcSwap<Router>>, fleet: Fleet, metrics: Metrics) -> Shared {
        Shared {
            router,
            fleet,
            metrics,
            ids: RequestIds::new(),
            connections: AtomicUsize::new(0),
        }
    }
}

/// Request ids: a per-process random base plus a counter, in hex.
struct RequestIds {
    base: u64,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        RequestIds {
            base: fastrand::u64(..),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> HeaderValue {
        let n = self
            .base
            .wrapping_add(self.next.fetch_add(1, Ordering::Relaxed));
        HeaderValue::try_from(format!("{n:016x}")).expect("hex is a valid header value")
    }
}

/// Who is on the other end of a client connection, and the forwarding headers that follow
/// from it, rendered once per connection rather than once per request.
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// `x-forwarded-for` when the client sent none.
    xff: HeaderValue,
    /// `for=...;proto=...`, the start of this hop's `forwarded` element.
    forwarded_for: String,
    /// The last `(host, forwarded element)` pair: a connection's requests share their host.
    forwarded_cache: std::sync::Mutex<Option<(HeaderValue, HeaderValue)>>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        let ip = peer.ip();
        let proto = if tls { "https" } else { "http" };
        let for_ = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        ConnInfo {
            peer,
            tls,
            xff: HeaderValue::try_from(ip.to_string()).expect("an IP is a valid header value"),
            forwarded_for: format!("for={for_};proto={proto}"),
            forwarded_cache: std::sync::Mutex::new(None),
        }
    }

    /// This hop's `forwarded` element for a request to `host`.
    fn forwarded(&self, host: Option<&HeaderValue>) -> HeaderValue {
        let mut cache = self.forwarded_cache.lock().expect("never poisoned");
        if let Some((h, v)) = cache.as_ref() {
            if Some(h) == host {
                return v.clone();
            }
        }
        let mut element = self.forwarded_for.clone();
        if let Some(h) = host.and_then(|h| h.to_str().ok()) {
            element.push_str(";host=\"");
            element.push_str(&h.replace(['"', '\\'], ""));
            element.push('"');
        }
        let v = HeaderValue::try_from(element)
            .unwrap_or_else(|_| HeaderValue::from_static("for=unknown"));
        if let Some(h) = host {
            *cache = Some((h.clone(), v.clone()));
        }
        v
    }
}

// ───────────────────────────── accept ─────────────────────────────

/// Accepts on `listener` until `stop` resolves; every connection is watched by `graceful` so
/// shutdown can drain it.
pub async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    graceful: Arc<GracefulShutdown>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    // Rebuilt when the configuration changes (SIGHUP), so new connections get the new parser
    // limits and header timeout; connections already open keep theirs.
    let (mut generation, mut http) = {
        let router = shared.router.load();
        (router.generation, connection_builder(&router.config))
    };
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let router = shared.router.load();
        if router.generation != generation {
            generation = router.generation;
            http = connection_builder(&router.config);
        }
        let max = router.config.limits.max_connections;
        let header_timeout = router.config.timeouts.client_header;
        let idle_timeout = router.config.timeouts.client_idle;
        drop(router);
        if shared.connections.load(Ordering::Relaxed) >= max {
            shared.metrics.connections_rejected.inc();
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        shared.metrics.connections_accepted.inc();
        let guard = ConnectionCount::new(&shared);
        let (shared, http, watcher, tls) = (
            shared.clone(),
            http.clone(),
            graceful.watcher(),
            tls.clone(),
        );
        let info = Arc::new(ConnInfo::new(peer, tls.is_some()));
        // The first request head must arrive within the header timeout of the accept, TLS
        // handshake included (see `serve_client`).
        let deadline = tokio::time::Instant::now() + header_timeout;
        let activity = Arc::new(Activity::new());
        let svc = {
            let (shared, activity) = (shared.clone(), activity.clone());
            // Boxed: hyper keeps a slot for the service future on every connection for as long
            // as it lives, so an unboxed ~5 KB request future would cost that much per idle
            // connection instead of once per request in flight.
            hyper::service::service_fn(move |req| {
                let open = OpenRequest::new(&activity);
                let answer = handle(shared.clone(), info.clone(), req);
                Box::pin(async move {
                    let Ok(response) = answer.await;
                    Ok(response.map(|body| TrackedBody { body, _open: open }))
                })
                    as Pin<
                        Box<dyn Future<Output = Result<Response<TrackedBody>, Infallible>> + Send>,
                    >
            })
        };
        match tls {
            None => {
                tokio::spawn(async move {
                    let _guard = guard;
                    let conn = watcher.watch(http.serve_connection(TokioIo::new(stream), svc));
                    serve_client(&shared, peer, conn, &activity, deadline, idle_timeout).await;
                });
            }
            Some(acceptor) => {
                // The handshake lives in its own task so plain connections do not carry its
                // state; it then serves the connection in place.
                tokio::spawn(Box::pin(async move {
                    let _guard = guard;
                    let tls_stream =
                        match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                shared.metrics.client_protocol_error("tls_handshake");
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                shared.metrics.client_protocol_error("header_timeout");
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let conn = watcher.watch(http.serve_connection(TokioIo::new(tls_stream), svc));
                    serve_client(&shared, peer, conn, &activity, deadline, idle_timeout).await;
                }));
            }
        }
    }
}

/// Serves one client connection to its end, and counts how it ended if that was a protocol
/// error hyper dealt with before any request reached `handle`.
///
/// A connection that has not delivered a complete request head by `deadline` is dropped.
/// hyper's own header timeout covers HTTP/1 heads (and keep-alive idleness), but it starts
/// only once the connection is known to be HTTP/1: before that, while hyper-util reads the
/// first bytes to tell HTTP/1 from the HTTP/2 preface, nothing bounds a client that sends
/// nothing, or trickles the preface or its first HTTP/2 header block — each such connection
/// would be held forever, and enough of them exhaust `max_connections`.
///
/// After that, a connection with no request open for `idle_timeout` is closed (zero: never).
/// hyper bounds idle HTTP/1 connections by its header timeout, but has no idle timeout for
/// HTTP/2, where one request would otherwise buy a connection forever.
async fn serve_client<C>(
    shared: &Shared,
    peer: SocketAddr,
    conn: C,
    activity: &Activity,
    deadline: tokio::time::Instant,
    idle_timeout: Duration,
) where
    C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    tokio::pin!(conn);
    // The next look at the connection: the first-request deadline, and every time it could
    // have been idle for `idle_timeout`; none once a request came and there is no idle limit.
    let next_check = |now: tokio::time::Instant, idle_in: Duration| {
        let idle_at = (!idle_timeout.is_zero()).then(|| now + idle_in);
        if activity.any_request() {
            idle_at
        } else {
            Some(idle_at.map_or(deadline, |at| at.min(deadline)))
        }
    };
    let mut check_at = next_check(tokio::time::Instant::now(), idle_timeout);
    let ended = loop {
        let Some(at) = check_at else { break conn.await };
        tokio::select! {
            ended = &mut conn => break ended,
            _ = tokio::time::sleep_until(at) => {
                let now = tokio::time::Instant::now();
                if !activity.any_request() && now >= deadline {
                    shared.metrics.client_protocol_error("header_timeout");
                    tracing::debug!(%peer, "no request head within the header timeout; closing");
                    return;
                }
                let idle_in = match activity.idle_for() {
                    Some(idle) if !idle_timeout.is_zero() && idle >= idle_timeout => {
                        tracing::debug!(%peer, ?idle, "connection idle; closing");
                        return;
                    }
                    Some(idle) => idle_timeout.saturating_sub(idle),
                    None => idle_timeout,
                };
                check_at = next_check(now, idle_in);
            }
        }
    };
    let Err(e) = ended else { return };
    let code = find_in_chain::<hyper::Error>(e.as_ref()).and_then(protocol_error_code);
    match code {
        // After requests were served, hyper's header timeout is a keep-alive connection going
        // idle: its normal end, not an error.
        Some("header_timeout") if activity.any_request() => {}
        Some(code) => shared.metrics.client_protocol_error(code),
        None => {}
    }
    tracing::debug!(%peer, error = %e, "client connection ended with an error");
}

/// What one client connection is doing: requests open now, and since when none has been.
struct Activity {
    origin: Instant,
    open: AtomicUsize,
    any: AtomicBool,
    /// Milliseconds from `origin` to the end of the last request.
    last_end_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            origin: Instant::now(),
            open: AtomicUsize::new(0),
            any: AtomicBool::new(false),
            last_end_ms: AtomicU64::new(0),
        }
    }

    fn any_request(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// How long the connection has had no request open; `None` while one is.
    fn idle_for(&self) -> Option<Duration> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let end = Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed));
        Some(self.origin.elapsed().saturating_sub(end))
    }
}

/// One request of a connection, open from its head until its response body is done or
/// dropped (or its handling is abandoned).
struct OpenRequest(Arc<Activity>);

impl OpenRequest {
    fn new(activity: &Arc<Activity>) -> OpenRequest {
        activity.any.store(true, Ordering::Relaxed);
        activity.open.fetch_add(1, Ordering::AcqRel);
        OpenRequest(activity.clone())
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_end_ms
            .store(a.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
        a.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as open until hyper is done with it.
pub struct TrackedBody {
    body: ClientBody,
    _open: OpenRequest,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The error code for a connection hyper ended itself: the parse errors it answered with a
/// bare 400, 414 or 431 (`Http1Transaction::on_error`), and the header timeout.
fn protocol_error_code(e: &hyper::Error) -> Option<&'static str> {
    if e.is_timeout() {
        Some("header_timeout")
    } else if e.is_parse_too_large() {
        // One predicate covers both; only the message tells them apart.
        Some(if e.to_string().contains("URI") {
            "uri_too_long"
        } else {
            "headers_too_large"
        })
    } else if e.is_parse() {
        Some("bad_request")
    } else {
        None
    }
}

/// HTTP/1.1 and HTTP/2 (h2 by ALPN on TLS, h2c by prior knowledge on plain TCP).
fn connection_builder(config: &Config) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let limits = &config.limits;
    b.http1()
        .timer(TokioTimer::new())
        // hyper's timer runs from the moment a connection waits for a request head, so this
        // bounds both slow header senders and idle keep-alive connections.
        .header_read_timeout(config.timeouts.client_header)
        .keep_alive(true)
        // The parser's own hard limits sit above ours, so that requests between the two get
        // our JSON 431 rather than hyper's bare one.
        .max_headers(limits.max_headers * 2 + 8)
        .max_buf_size((limits.max_header_bytes + limits.max_uri_bytes) * 2 + 8192);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(((limits.max_header_bytes + limits.max_uri_bytes) * 2) as u32)
        .max_concurrent_streams(256);
    b
}

struct ConnectionCount {
    shared: Arc<Shared>,
}

impl ConnectionCount {
    fn new(shared: &Arc<Shared>) -> ConnectionCount {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        shared.metrics.connections_open.inc();
        ConnectionCount {
            shared: shared.clone(),
        }
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        self.shared.metrics.connections_open.dec();
    }
}

// ───────────────────────────── route ─────────────────────────────

/// An answer the balancer gives itself: a status, a stable error code, a message.
#[derive(Debug)]
pub struct ProxyError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u32>,
}

impl ProxyError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ProxyError {
        ProxyError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ClientBody>, Infallible> {
    let started = Instant::now();
    let router = shared.router.load_full();
    let id = request_id(req.headers()).unwrap_or_else(|| shared.ids.next());
    let result = match check_and_route(&router, &req) {
        Err(e) => Err(e),
        Ok(route) => forward(&shared, &router, route, &conn, req, &id, started).await,
    };
    Ok(match result {
        Ok(resp) => resp,
        Err(e) => {
            shared.metrics.error(e.code);
            error_response(e, id)
        }
    })
}

fn request_timeout(limit: Duration) -> ProxyError {
    ProxyError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "request_timeout",
        format!("the request took longer than {limit:?}"),
    )
}

/// A client's `x-request-id` is kept if it is plain (≤ 128 visible characters).
fn request_id(headers: &HeaderMap) -> Option<HeaderValue> {
    let v = headers.get(REQUEST_ID)?;
    let ok = (1..=128).contains(&v.len())
        && v.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b));
    ok.then(|| v.clone())
}

/// Limits on the request head, then the route.
fn check_and_route<'r>(
    router: &'r Router,
    req: &Request<Incoming>,
) -> Result<&'r RouteEntry, ProxyError> {
    let limits = &router.config.limits;
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Err(ProxyError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the request target is {uri_len} bytes; the limit is {}",
                limits.max_uri_bytes
            ),
        ));
    }
    if req.headers().len() > limits.max_headers {
        return Err(ProxyError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too_many_headers",
            format!(
                "{} header fields; the limit is {}",
                req.headers().len(),
                limits.max_headers
            ),
        ));
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(ProxyError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "{header_bytes} bytes of headers; the limit is {}",
                limits.max_header_bytes
            ),
        ));
    }
    let path = req.uri().path();
    let route = router.route(path).ok_or_else(|| {
        ProxyError::new(
            StatusCode::NOT_FOUND,
            "no_route",
            format!("no route matches `{path}`"),
        )
    })?;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared {
        if len > route.max_body_bytes {
            return Err(body_too_large(route.max_body_bytes));
        }
    }
    Ok(route)
}

fn body_too_large(limit: u64) -> ProxyError {
    ProxyError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body exceeds this route's limit of {limit} bytes"),
    )
}

// ───────────────────────────── forward ─────────────────────────────

/// The request head as it goes to workers (rebuilt for each attempt).
struct UpstreamHead {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl UpstreamHead {
    fn request(&self, body: UpBody) -> Request<UpBody> {
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// Why one attempt failed, and whether another worker may be tried.
enum AttemptFailure {
    /// The whole request ran out of time.
    Deadline,
    /// The request never reached the worker: safe to retry for any method.
    NotSent(ProxyError, Option<UpBody>),
    /// The worker's address refused the connection: not sent either, and a sure sign that
    /// nothing listens there, which ejects the worker at once.
    Refused(ProxyError, UpBody),
    /// It may have reached the worker: retry only if safe to repeat.
    Sent(ProxyError),
}

async fn forward(
    shared: &Arc<Shared>,
    router: &Router,
    route: &RouteEntry,
    conn: &ConnInfo,
    req: Request<Incoming>,
    id: &HeaderValue,
    started: Instant,
) -> Result<Response<ClientBody>, ProxyError> {
    let group = &route.group;
    let settings = &group.settings;
    let forward_load_header = router.config.telemetry.forward_load_header;
    // One deadline bounds the whole request (queueing, connecting, every attempt), so a single
    // timer is armed per attempt rather than one per stage.
    let limit = router.config.timeouts.request;
    let deadline = tokio::time::Instant::from_std(started) + limit;
    let (mut parts, incoming) = req.into_parts();
    let replayable = is_idempotent(&parts.method) && incoming.is_end_stream();
    let streamed_body = !incoming.is_end_stream();
    let head = upstream_head(&mut parts, conn, id);
    let mut body = Some(if streamed_body {
        UpBody::stream(incoming, route.max_body_bytes)
    } else {
        UpBody::empty()
    });

    group.budget.on_request();
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last_error: Option<ProxyError> = None;
    let mut retry_paid = false;
    let mut retry_reason: &'static str = "other";
    for attempt in 0..settings.retry.max_attempts {
        // No body to send means the last failure may not be repeated.
        let Some(this_body) = body.take() else { break };
        if attempt > 0 && !retry_paid && !group.budget.try_retry() {
            count_retry_denied(shared, group);
            break;
        }
        retry_paid = false;
        let flight = match group.acquire(&tried, &shared.fleet.signal, deadline).await {
            Ok(f) => f,
            Err(PickError::NoOtherWorker) => break,
            Err(PickError::Deadline) => return Err(request_timeout(limit)),
            Err(PickError::Overloaded) => {
                let mut e = ProxyError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    format!(
                        "every worker of target group `{}` is at its in-flight limit and the wait queue is full or timed out",
                        group.name
                    ),
                );
                e.retry_after = Some(1);
                return Err(e);
            }
            Err(PickError::NoHealthyWorkers) => {
                return Err(last_error.unwrap_or_else(|| no_healthy_workers(group)));
            }
        };
        // Counted once it has a worker to go to: with none left untried it is no retry.
        if attempt > 0 {
            count_retry(shared, group, retry_reason);
        }
        let worker = flight.worker().clone();
        tried.push(worker.addr);
        let t0 = Instant::now();

        let result = attempt_once(&worker, settings, &head, this_body, deadline).await;
        let latency = t0.elapsed();
        match result {
            Ok((resp, upstream)) => {
                let status = resp.status();
                let worker_error = status.is_server_error();
                // A 502/503/504 from an idempotent request is worth another worker while
                // attempts, budget and untried workers remain; the answer is then dropped
                // unread. With no other worker, the client gets this one's answer.
                let retry_wanted = matches!(status.as_u16(), 502..=504)
                    && replayable
                    && settings.retry.retry_idempotent_on_status
                    && attempt + 1 < settings.retry.max_attempts
                    && group.has_untried(&tried);
                if retry_wanted && !group.budget.try_retry() {
                    // Counted like any other refused retry: a spent budget must show.
                    count_retry_denied(shared, group);
                } else if retry_wanted {
                    record_outcome(shared, group, &worker, Outcome::Failure, latency);
                    retry_reason = "status";
                    retry_paid = true;
                    body = Some(UpBody::empty());
                    last_error = Some(ProxyError::new(
                        StatusCode::BAD_GATEWAY,
                        "worker_error",
                        format!("worker {} answered {status}", worker.addr),
                    ));
                    continue;
                }
                record_outcome(
                    shared,
                    group,
                    &worker,
                    if worker_error {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    },
                    latency,
                );
                record_response(shared, route, &worker, &resp, started);
                let finish = Finish {
                    upstream,
                    pool_cap: settings.max_in_flight_per_worker,
                    flight,
                };
                return Ok(client_response(resp, finish, id, forward_load_header));
            }
            Err(AttemptFailure::Deadline) => {
                record_outcome(shared, group, &worker, Outcome::Failure, latency);
                return Err(request_timeout(limit));
            }
            Err(AttemptFailure::NotSent(e, returned)) => {
                record_outcome(shared, group, &worker, Outcome::Failure, latency);
                if e.code == "worker_error" {
                    check_still_listening(shared, group, &worker);
                }
                tracing::debug!(worker = %worker.addr, error = %e.message, "attempt failed before sending");
                last_error = Some(e);
                body = returned;
                retry_reason = "not_sent";
            }
            Err(AttemptFailure::Refused(e, returned)) => {
                record_outcome(shared, group, &worker, Outcome::Refused, latency);
                tracing::debug!(worker = %worker.addr, error = %e.message, "connection refused");
                last_error = Some(e);
                body = Some(returned);
                retry_reason = "not_sent";
            }
            Err(AttemptFailure::Sent(e)) => {
                if e.code == "body_too_large" || e.code == "bad_request_body" {
                    // The client's fault, not the worker's: no retry, no penalty.
                    return Err(e);
                }
                record_outcome(shared, group, &worker, Outcome::Failure, latency);
                if e.code == "worker_error" {
                    check_still_listening(shared, group, &worker);
                }
                tracing::debug!(worker = %worker.addr, error = %e.message, "attempt failed after sending");
                last_error = Some(e);
                if replayable {
                    body = Some(UpBody::empty());
                    retry_reason = "reset_or_timeout";
                }
            }
        }
    }
    let e = last_error.unwrap_or_else(|| no_healthy_workers(group));
    // Every worker unreachable and none healthy: that is "no healthy workers", whatever the
    // last connect error said.
    if e.code == "worker_unreachable" && !group.any_available() {
        return Err(no_healthy_workers(group));
    }
    Err(e)
}

fn no_healthy_workers(group: &Group) -> ProxyError {
    let mut e = ProxyError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_healthy_workers",
        format!("target group `{}` has no healthy worker", group.name),
    );
    e.retry_after = Some(1);
    e
}

fn count_retry_denied(shared: &Shared, group: &Group) {
    shared
        .metrics
        .retries_denied
        .get_or_create(&crate::metrics::GroupLabels {
            target_group: group.label.clone(),
        })
        .inc();
}

fn count_retry(shared: &Shared, group: &Group, reason: &'static str) {
    shared
        .metrics
        .retries
        .get_or_create(&RetryLabels {
            target_group: group.label.clone(),
            reason,
        })
        .inc();
}

/// One try on one worker: a connection (pooled or new), the request, the response head, all
/// bounded by `deadline`.
async fn attempt_once(
    worker: &Worker,
    settings: &crate::config::TargetGroup,
    head: &UpstreamHead,
    body: UpBody,
    deadline: tokio::time::Instant,
) -> Result<(Response<Incoming>, Upstream), AttemptFailure> {
    let mut upstream = match worker.pool.checkout(settings.pool_idle_timeout).await {
        Some(u) => u,
        None => match worker
            .pool
            .connect(worker.addr, settings.connect_timeout)
            .await
        {
            Ok(u) => u,
            Err(e) => {
                let refused = matches!(&e, ConnectError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused);
                let pe = ProxyError::new(
                    StatusCode::BAD_GATEWAY,
                    "worker_unreachable",
                    format!("worker {}: {e}", worker.addr),
                );
                return Err(if refused {
                    AttemptFailure::Refused(pe, body)
                } else {
                    AttemptFailure::NotSent(pe, Some(body))
                });
            }
        },
    };
    let started_flag = body.started_flag();
    let response_deadline = deadline.min(tokio::time::Instant::now() + settings.response_timeout);
    let sent = tokio::time::timeout_at(response_deadline, upstream.send(head.request(body))).await;
    match sent {
        Ok(Ok(resp)) => Ok((resp, upstream)),
        Err(_) if response_deadline == deadline => Err(AttemptFailure::Deadline),
        Err(_) => Err(AttemptFailure::Sent(ProxyError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "worker_timeout",
            format!(
                "worker {} sent no response headers within {:?}",
                worker.addr, settings.response_timeout
            ),
        ))),
        Ok(Err(failure)) => {
            if let Some(body_err) = find_body_error(failure.error.as_ref()) {
                return Err(AttemptFailure::Sent(match body_err {
                    BodyError::TooLarge(limit) => body_too_large(*limit),
                    BodyError::Client(inner) => ProxyError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request_body",
                        format!("the request body could not be read: {inner}"),
                    ),
                }));
            }
            let pe = ProxyError::new(
                StatusCode::BAD_GATEWAY,
                "worker_error",
                format!("worker {}: {}", worker.addr, failure.error),
            );
            match failure.unsent {
                // hyper hands the request back when the connection closed before it went out.
                Some(req) if !started_flag.load(Ordering::Relaxed) => {
                    Err(AttemptFailure::NotSent(pe, Some(req.into_body())))
                }
                _ => Err(AttemptFailure::Sent(pe)),
            }
        }
    }
}

fn find_body_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyError> {
    find_in_chain::<BodyError>(err)
}

/// The first error of type `T` in `err`'s source chain.
fn find_in_chain<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<T>() {
            return Some(b);
        }
        source = s.source();
    }
    None
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names avoids nine hashed removals.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn upstream_head(parts: &mut Parts, conn: &ConnInfo, id: &HeaderValue) -> UpstreamHead {
    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut headers);
    // HTTP/2 carries the host in `:authority`; workers speak HTTP/1.1 and need `Host`.
    if !headers.contains_key(header::HOST) {
        if let Some(h) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(header::HOST, h);
        }
    }
    let host = headers.get(header::HOST);
    let forwarded = conn.forwarded(host);
    match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        None => {
            headers.insert(X_FORWARDED_FOR, conn.xff.clone());
        }
        Some(_) => append(&mut headers, X_FORWARDED_FOR, &conn.peer.ip().to_string()),
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    match headers.get(FORWARDED) {
        None => {
            headers.insert(FORWARDED, forwarded);
        }
        Some(_) => append(
            &mut headers,
            FORWARDED,
            forwarded.to_str().unwrap_or_default(),
        ),
    }
    match headers.get(header::VIA) {
        None => {
            headers.insert(header::VIA, HeaderValue::from_static(via(parts.version)));
        }
        Some(_) => append(&mut headers, header::VIA, via(parts.version)),
    }
    headers.insert(REQUEST_ID, id.clone());
    let uri = parts
        .uri
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    UpstreamHead {
        method: parts.method.clone(),
        uri,
        headers,
    }
}

fn via(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "2 fulcrum",
        Version::HTTP_10 => "1.0 fulcrum",
        _ => "1.1 fulcrum",
    }
}

/// Appends to a list-valued header, or sets it. A list may arrive over several field lines,
/// which together are one comma-separated list (RFC 9110 §5.3): every line's elements stay,
/// in order, before the new one.
fn append(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let mut joined = String::new();
    for old in headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        joined.push_str(old);
        joined.push_str(", ");
    }
    joined.push_str(value);
    if let Ok(v) = HeaderValue::try_from(joined) {
        headers.insert(name, v);
    }
}

// ───────────────────────────── record ─────────────────────────────

fn record_outcome(
    shared: &Shared,
    group: &Group,
    worker: &Worker,
    outcome: Outcome,
    latency: Duration,
) {
    passive_ejection(shared, group, worker, |now, outlier| {
        worker.record(outcome, latency, now, outlier)
    });
}

/// After a connection to `worker` broke before any answer, checks at once whether anything
/// still listens at its address. A worker that died refuses connections and is ejected now,
/// not when a policy next happens to pick it (cpu-aware, already counting the broken request
/// as a failure, may not for seconds) nor when health checks catch up. One check per worker at
/// a time; a worker that still listens (a keep-alive race, a restart) is left alone.
fn check_still_listening(shared: &Arc<Shared>, group: &Arc<Group>, worker: &Arc<Worker>) {
    if !worker.claim_listen_check() {
        return;
    }
    let (shared, group, worker) = (shared.clone(), group.clone(), worker.clone());
    tokio::spawn(async move {
        let connect = tokio::net::TcpStream::connect(worker.addr);
        let refused = matches!(
            tokio::time::timeout(group.settings.connect_timeout, connect).await,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
        );
        if refused {
            eject_refused(&shared, &group, &worker);
        }
        worker.release_listen_check();
    });
}

/// `worker`'s address refused a connection made outside any request (a health check, the
/// check above): ejected at once, within the group's cap, as a refused request would be.
pub fn eject_refused(shared: &Shared, group: &Group, worker: &Worker) {
    passive_ejection(shared, group, worker, |now, outlier| {
        worker.refused_check(now, outlier)
    });
}

/// Runs `observe` with the group's outlier settings; logs and counts an ejection it causes.
fn passive_ejection(
    shared: &Shared,
    group: &Group,
    worker: &Worker,
    observe: impl FnOnce(u64, &OutlierSettings) -> bool,
) {
    let now = now_us();
    let may_eject = |_: &Worker| group.may_eject(now);
    let outlier = OutlierSettings {
        consecutive_failures: group.settings.outlier.consecutive_failures,
        base_ejection: group.settings.outlier.base_ejection,
        may_eject: &may_eject,
    };
    if observe(now, &outlier) {
        tracing::warn!(
            worker = %worker.addr,
            target_group = %group.name,
            for_ = ?worker.ejected_for(now),
            "worker ejected"
        );
        shared
            .metrics
            .ejections
            .get_or_create(&crate::metrics::WorkerLabels {
                worker: worker.label.clone(),
            })
            .inc();
    }
}

/// In-band telemetry, identity and metrics from a worker's response head.
fn record_response(
    shared: &Shared,
    route: &RouteEntry,
    worker: &Worker,
    resp: &Response<Incoming>,
    started: Instant,
) {
    let h = resp.headers();
    let now = now_us();
    if let Some(report) = h
        .get(LOAD_REPORT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| LoadReport::parse(v).ok())
    {
        worker.store_report(crate::config::TelemetrySource::Inband, &report, now);
    }
    if let Some(instance) = h.get(INSTANCE) {
        let cluster = h
            .get(CLUSTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        worker.note_identity(instance.as_bytes(), cluster);
    }
    shared
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.label.clone(),
            target_group: route.group.label.clone(),
            worker: worker.label.clone(),
            code: resp.status().as_u16(),
        })
        .inc();
    shared
        .metrics
        .latency
        .get_or_create(&RouteLabels {
            route: route.label.clone(),
            target_group: route.group.label.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
}

fn client_response(
    resp: Response<Incoming>,
    finish: Finish,
    id: &HeaderValue,
    forward_load_header: bool,
) -> Response<ClientBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if !forward_load_header {
        parts.headers.remove(LOAD_REPORT);
    }
    match parts.headers.get(header::VIA) {
        None => {
            parts
                .headers
                .insert(header::VIA, HeaderValue::from_static("1.1 fulcrum"));
        }
        Some(_) => append(&mut parts.headers, header::VIA, "1.1 fulcrum"),
    }
    parts.headers.insert(REQUEST_ID, id.clone());
    Response::from_parts(parts, ClientBody::proxied(body, finish))
}

/// The balancer's own error answer: JSON with a stable code and the request id.
pub fn error_response(e: ProxyError, id: HeaderValue) -> Response<ClientBody> {
    let body = serde_json::json!({
        "error": e.code,
        "message": e.message,
        "request_id": id.to_str().unwrap_or_default(),
    });
    let mut r = Response::new(ClientBody::from(Bytes::from(
        serde_json::to_vec(&body).expect("JSON values serialize"),
    )));
    *r.status_mut() = e.status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(REQUEST_ID, id);
    if let Some(s) = e.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_named_by_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn forwarding_lists_keep_every_line_the_client_sent() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_static("198.51.100.7, 192.0.2.1"),
        );
        append(&mut h, X_FORWARDED_FOR, "127.0.0.1");
        let all: Vec<_> = h.get_all(X_FORWARDED_FOR).iter().collect();
        assert_eq!(all, ["203.0.113.9, 198.51.100.7, 192.0.2.1, 127.0.0.1"]);
        append(&mut h, header::VIA, "1.1 fulcrum");
        assert_eq!(h[header::VIA], "1.1 fulcrum");
    }

    #[test]
    fn request_ids_are_kept_only_when_plain() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h).unwrap(), "abc-123");
        h.insert(REQUEST_ID, HeaderValue::from_static("a b"));
        assert!(request_id(&h).is_none());
    }
}
