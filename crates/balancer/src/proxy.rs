//! The request path: accept → route → pick → forward → record.
//!
//! This file, `route.rs` (which group, which worker slot) and `policy.rs` (which worker) are
//! all of it. A client connection is accepted and, unless it speaks HTTP/2 (`h2.rs`), served
//! here on fulcrum's own HTTP/1.1 codec (`http1`): a request head is parsed and checked,
//! routed by longest path prefix to a target group, given an in-flight slot on a worker the
//! group's policy picks, rewritten (`rewrite.rs`) and forwarded on a pooled keep-alive
//! connection (`upstream.rs`), its body streamed after it; the response head is relayed and
//! its body streamed back. Failures that provably did not reach the worker, or that happened
//! before any response byte on a request that is safe to repeat, are retried on a *different*
//! worker within the group's retry budget. Every outcome feeds the worker's latency and failure
//! estimates, passive ejection, the in-band telemetry and the metrics.
//!
//! Each phase has its own timeout, blamed on whoever stalls: the client's head
//! (`client_header`), its body (`client_body_idle`), its reading of the response
//! (`client_write_idle`); the worker's connect, response head (`response_timeout`, from the
//! end of the request body) and response body (`worker_body_idle`). Only the worker's count
//! towards its ejection.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum_telemetry::LoadReport;
use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, Method, Request as HttpRequest, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::buffers::{Buffer, Fields};
use crate::config::Config;
use crate::drain::Drain;
use crate::errors::{ErrorCode, ProxyError};
use crate::fleet::{now_us, Fleet, InFlight, Outcome, OutlierSettings, Worker};
use crate::h2::{H2Body, H2Response, H2Settings, WorkerBody};
use crate::http1::{
    self, BodyLength, ChunkedDecoder, RequestHead, ResponseBody, ResponseHead, TargetForm, Version,
};
use crate::metrics::{Metrics, RequestLabels, RetryLabels, RouteLabels};
use crate::rewrite::{self, Hop, OutFraming, RequestParts, ResponseParts};
use crate::route::{Group, PickError, RouteEntry, Router};
use crate::upstream::{
    BodyFailure, BodyFault, BodyPiece, BodyReader, ConnectError, HeadError, WorkerConn,
};

/// What every request handler shares.
pub struct Shared {
    pub router: Arc<arc_swap::ArcSwap<Router>>,
    pub fleet: Fleet,
    pub metrics: Metrics,
    pub drain: Drain,
    ids: RequestIds,
    connections: AtomicUsize,
}

impl Shared {
    pub fn new(router: Arc<arc_swap::ArcSwap<Router>>, fleet: Fleet, metrics: Metrics) -> Shared {
        Shared {
            router,
            fleet,
            metrics,
            drain: Drain::default(),
            ids: RequestIds::new(),
            connections: AtomicUsize::new(0),
        }
    }
}

/// Request ids: a per-process random base plus a counter, 16 hex digits.
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

    fn next(&self) -> RequestId {
        let n = self
            .base
            .wrapping_add(self.next.fetch_add(1, Ordering::Relaxed));
        let mut id = RequestId {
            bytes: [0; 128],
            len: 16,
        };
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in id.bytes[..16].iter_mut().enumerate() {
            *b = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
        id
    }
}

/// A request's id: the client's `x-request-id` if it is plain (≤ 128 visible characters from
/// `[A-Za-z0-9-_.:]`), else one of ours. Inline, so no allocation per request.
#[derive(Clone, Copy)]
pub struct RequestId {
    bytes: [u8; 128],
    len: usize,
}

impl RequestId {
    fn from_client(v: &[u8]) -> Option<RequestId> {
        let ok = (1..=128).contains(&v.len())
            && v.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b));
        ok.then(|| {
            let mut id = RequestId {
                bytes: [0; 128],
                len: v.len(),
            };
            id.bytes[..v.len()].copy_from_slice(v);
            id
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// One open client connection, as the drain and `max_connections` count it.
pub struct ConnectionGuard(Arc<Shared>);

impl ConnectionGuard {
    fn new(shared: &Arc<Shared>) -> ConnectionGuard {
        shared.drain.enter();
        ConnectionGuard(shared.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let s = &self.0;
        s.connections.fetch_sub(1, Ordering::Relaxed);
        s.metrics.connections_open.dec();
        s.drain.leave();
    }
}

/// Who is on the other end of a client connection.
pub struct ConnInfo {
    pub hop: Hop,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        ConnInfo {
            hop: Hop::new(peer, tls),
        }
    }
}

// ───────────────────────────── accept ─────────────────────────────

/// Accepts on `listener` until shutdown begins.
pub async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = shared.drain.stopping() => return,
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
        let max = shared.router.load().config.limits.max_connections;
        if shared.connections.fetch_add(1, Ordering::Relaxed) >= max {
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            shared.metrics.connections_rejected.inc();
            continue;
        }
        shared.metrics.connections_open.inc();
        shared.metrics.connections_accepted.inc();
        let guard = ConnectionGuard::new(&shared);
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            shared.clone(),
            stream,
            peer,
            tls.clone(),
            guard,
        ));
    }
}

/// Tells HTTP/2 (ALPN `h2`, or the h2c preface) from HTTP/1.1 and serves the connection.
async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    _guard: ConnectionGuard,
) {
    let config = shared.router.load().config.clone();
    // The first request head must arrive within the header timeout of the accept, TLS
    // handshake and protocol sniffing included.
    let first_deadline = tokio::time::Instant::now() + config.timeouts.client_header;
    let stream = match tls {
        None => match sniff_h2c(&stream, first_deadline).await {
            Ok(true) => {
                // Boxed, like every protocol's future here: a connection's task is as large
                // as the largest state it can be in, and most connections are HTTP/1.1.
                let h2 = serve_h2(
                    shared,
                    stream,
                    ConnInfo::new(peer, false),
                    &config,
                    first_deadline,
                );
                return Box::pin(h2).await;
            }
            Ok(false) => ClientStream::Plain(stream),
            Err(_) => {
                shared.metrics.client_protocol_error("header_timeout");
                return;
            }
        },
        Some(acceptor) => {
            let handshake = Box::pin(acceptor.accept(stream));
            match tokio::time::timeout_at(first_deadline, handshake).await {
                Ok(Ok(s)) if s.get_ref().1.alpn_protocol() == Some(b"h2") => {
                    let h2 = serve_h2(
                        shared,
                        s,
                        ConnInfo::new(peer, true),
                        &config,
                        first_deadline,
                    );
                    return Box::pin(h2).await;
                }
                Ok(Ok(s)) => ClientStream::Tls(Box::new(s)),
                Ok(Err(e)) => {
                    shared.metrics.client_protocol_error("tls_handshake");
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    shared.metrics.client_protocol_error("header_timeout");
                    return;
                }
            }
        }
    };
    let tls = matches!(stream, ClientStream::Tls(_));
    let mut client = H1Client {
        stream,
        buf: None,
        info: ConnInfo::new(peer, tls),
        served: 0,
    };
    serve_h1(&shared, &mut client, first_deadline).await;
}

/// The HTTP/2 connection preface a client speaking h2c with prior knowledge starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client starts with the HTTP/2 preface; peeks, so nothing is consumed.
async fn sniff_h2c(stream: &TcpStream, deadline: tokio::time::Instant) -> io::Result<bool> {
    let mut peek = [0u8; 24];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut peek))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        if n == 0 || peek[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A prefix of the preface so far: wait for the rest (bounded by the deadline).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A client's byte stream, plain or TLS.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ClientStream {
    /// Waits until reading would not block, without holding a buffer (plain TCP); a TLS
    /// stream has its own buffering, so it reads straight away.
    async fn ready_to_read(&self) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.readable().await,
            ClientStream::Tls(_) => Ok(()),
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

// ───────────────────────────── HTTP/1.1 clients ─────────────────────────────

/// One HTTP/1.1 client connection. Between requests it holds no buffer.
pub struct H1Client {
    stream: ClientStream,
    /// Bytes read and not yet used (a head being read, a body's start, pipelined requests).
    buf: Option<Buffer>,
    info: ConnInfo,
    served: u64,
}

impl H1Client {
    fn pending(&self) -> &[u8] {
        self.buf.as_deref().map_or(&[], |b| &b[..])
    }

    fn consume(&mut self, n: usize) {
        if let Some(b) = self.buf.as_mut() {
            b.consume(n);
        }
    }

    /// Reads more bytes; `Ok(0)` at the end of the stream.
    async fn read_more(&mut self) -> io::Result<usize> {
        self.stream.ready_to_read().await?;
        let buf = self.buf.get_or_insert_with(Buffer::take);
        if buf.spare() < 1024 {
            buf.reserve(crate::buffers::SIZE);
        }
        self.stream.read_buf(&mut **buf).await
    }

    /// Gives the buffer back while idle, unless a pipelined request waits in it.
    fn release_buffer(&mut self) {
        if self.buf.as_ref().is_some_and(|b| b.is_empty()) {
            self.buf = None;
        }
    }

    async fn write(&mut self, bytes: &[u8], idle: Duration) -> Result<(), ClientFault> {
        // Most writes fit the socket's buffer at once: a timer only for one that does not.
        let written = match &self.stream {
            ClientStream::Plain(s) => {
                crate::upstream::write_now(s, bytes).map_err(|_| ClientFault::Gone)?
            }
            ClientStream::Tls(_) => 0,
        };
        let rest = &bytes[written..];
        if rest.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(idle, self.stream.write_all(rest)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ClientFault::Gone),
            Err(_) => Err(ClientFault::WriteIdle),
        }
    }
}

/// Why a client connection cannot go on; never the worker's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// The client closed or reset the connection.
    Gone,
    /// It stopped taking the response for `client_write_idle`.
    WriteIdle,
    /// It stopped sending its request body for `client_body_idle`.
    BodyIdle,
}

impl ClientFault {
    fn code(self) -> &'static str {
        match self {
            ClientFault::Gone => "client_gone",
            ClientFault::WriteIdle => "client_write_idle",
            ClientFault::BodyIdle => "client_body_idle",
        }
    }
}

/// Serves requests on one HTTP/1.1 connection until either side closes it.
async fn serve_h1(
    shared: &Arc<Shared>,
    client: &mut H1Client,
    first_deadline: tokio::time::Instant,
) {
    let mut deadline = first_deadline;
    loop {
        let config = shared.router.load().config.clone();
        let mut fields = None;
        let head = match next_head(shared, client, &mut fields, deadline, &config).await {
            NextHead::Head(h) => h,
            NextHead::Closed => return,
            NextHead::Reject(e) => {
                let _ = answer_error(client, &e, shared.ids.next(), false, &config).await;
                return;
            }
        };
        let mut fields = fields.expect("a parsed head has its fields");
        // Boxed: the connection's own future stays small while it waits for the next request.
        let keep = Box::pin(exchange(shared, client, head, &mut fields, &config)).await;
        // Pooled again while the connection is idle.
        drop(fields);
        client.served += 1;
        if !keep || shared.drain.is_stopping() {
            let _ = client.stream.shutdown().await;
            return;
        }
        client.release_buffer();
        let now = tokio::time::Instant::now();
        deadline = now + config.timeouts.client_header;
        if !config.timeouts.client_idle.is_zero() {
            deadline = deadline.min(now + config.timeouts.client_idle);
        }
    }
}

/// What waiting for a request head gave.
enum NextHead {
    Head(RequestHead),
    /// The connection ended (closed, idle too long, shutting down) with nothing to answer.
    Closed,
    /// A head that must be refused, and the connection closed after the answer.
    Reject(ProxyError),
}

async fn next_head(
    shared: &Shared,
    client: &mut H1Client,
    fields: &mut Option<Fields>,
    deadline: tokio::time::Instant,
    config: &Config,
) -> NextHead {
    let limits = codec_limits(config);
    loop {
        if !client.pending().is_empty() {
            let fields = fields.get_or_insert_with(Fields::take);
            match http1::parse_request(client.pending(), &limits, fields) {
                Ok(Some(head)) => return NextHead::Head(head),
                Ok(None) => {}
                Err(e) => {
                    shared.metrics.client_protocol_error(e.code);
                    return NextHead::Reject(ProxyError::new(
                        ErrorCode::from_codec(e.code),
                        e.message,
                    ));
                }
            }
        }
        let idle = client.pending().is_empty();
        let read = tokio::select! {
            biased;
            r = tokio::time::timeout_at(deadline, client.read_more()) => r,
            _ = shared.drain.stopping(), if idle => return NextHead::Closed,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return NextHead::Closed,
            Ok(Ok(_)) => {}
            Err(_) => {
                // A keep-alive connection going quiet is its normal end; a head that never
                // completed (or a first one that never came) is slowloris or a dead client.
                if client.served == 0 || !idle {
                    shared.metrics.client_protocol_error("header_timeout");
                }
                return NextHead::Closed;
            }
        }
    }
}

/// The codec's hard limits sit above the configured ones, which are checked after parsing with
/// exact figures in the answer; beyond these the codec refuses what it would not even read.
fn codec_limits(config: &Config) -> http1::Limits {
    let l = &config.limits;
    http1::Limits {
        max_head_bytes: (l.max_header_bytes + l.max_uri_bytes) * 2 + 8192,
        max_headers: (l.max_headers * 2 + 8).min(http1::MAX_FIELDS),
        max_uri_bytes: l.max_uri_bytes * 4,
    }
}

/// One request on an HTTP/1.1 connection, from its parsed head to the end of its response.
/// Returns whether the connection may serve another.
async fn exchange(
    shared: &Arc<Shared>,
    client: &mut H1Client,
    head: RequestHead,
    fields: &mut Fields,
    config: &Arc<Config>,
) -> bool {
    let started = Instant::now();
    let router = shared.router.load_full();
    let head_len = head.head_len;
    let id = rewrite::find(fields, client.pending(), b"x-request-id")
        .and_then(RequestId::from_client)
        .unwrap_or_else(|| shared.ids.next());
    let wants_close =
        head.connection.close || (head.version == Version::Http10 && !head.connection.keep_alive);
    let routed = check_and_route(&router, &head, fields, client.pending());
    let route = match routed {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.error(e.code.as_str());
            client.consume(head_len);
            // Unread body bytes would be taken for the next request: close instead.
            let close = wants_close || head.body != BodyLength::None;
            return answer_error(client, &e, id, close, config).await && !close;
        }
    };
    let out = outgoing(&head, fields, client, &id, config);
    client.consume(head_len);
    let body = RequestBody::H1 {
        client,
        length: head.body,
        expect_continue: head.expect_continue,
        limit: route.max_body_bytes,
        idle: config.timeouts.client_body_idle,
        sent: BodySent::Nothing,
        decoder: None,
    };
    let mut request = Request {
        method: &head.method,
        head: &out,
        body,
        replayable: is_idempotent(&head.method) && head.body == BodyLength::None,
    };
    let result = forward(shared, &router, route, &mut request, started).await;
    let RequestBody::H1 { client, sent, .. } = request.body else {
        unreachable!("an HTTP/1.1 request keeps its HTTP/1.1 body");
    };
    let body_done = sent_all(head.body, sent);
    match result {
        Ok(fwd) => {
            let ctx = Relay {
                shared,
                route,
                id: &id,
                config,
                method: &head.method,
                client_http10: head.version == Version::Http10,
                close: wants_close || !body_done,
                started,
            };
            relay_h1(client, fwd, &ctx).await
        }
        Err(e) => {
            shared.metrics.error(e.code.as_str());
            let close = wants_close || !body_done;
            answer_error(client, &e, id, close, config).await && !close
        }
    }
}

/// Whether a request body was sent whole (so the connection is at the next request).
fn sent_all(length: BodyLength, sent: BodySent) -> bool {
    match length {
        BodyLength::None => true,
        _ => sent == BodySent::Whole,
    }
}

/// Limits on the request head, then the route.
fn check_and_route<'r>(
    router: &'r Router,
    head: &RequestHead,
    fields: &Fields,
    buf: &[u8],
) -> Result<&'r RouteEntry, ProxyError> {
    let limits = &router.config.limits;
    let target = head.target.of(buf);
    if target.len() > limits.max_uri_bytes {
        return Err(ProxyError::new(
            ErrorCode::UriTooLong,
            format!(
                "the request target is {} bytes; the limit is {}",
                target.len(),
                limits.max_uri_bytes
            ),
        ));
    }
    if fields.len() > limits.max_headers {
        return Err(ProxyError::new(
            ErrorCode::TooManyHeaders,
            format!(
                "{} header fields; the limit is {}",
                fields.len(),
                limits.max_headers
            ),
        ));
    }
    let header_bytes: usize = fields
        .iter()
        .map(|f| f.name.of(buf).len() + f.value.of(buf).len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(ProxyError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "{header_bytes} bytes of headers; the limit is {}",
                limits.max_header_bytes
            ),
        ));
    }
    let path = path_of(head, buf);
    let route = router
        .route(path)
        .ok_or_else(|| ProxyError::new(ErrorCode::NoRoute, format!("no route matches `{path}`")))?;
    if let BodyLength::Length(len) = head.body {
        if len > route.max_body_bytes {
            return Err(body_too_large(route.max_body_bytes));
        }
    }
    Ok(route)
}

/// The path a request is routed by: the target's, without its query.
fn path_of<'b>(head: &RequestHead, buf: &'b [u8]) -> &'b str {
    let target = match head.target_form {
        TargetForm::Absolute { path_and_query, .. } => path_and_query.of(buf),
        TargetForm::Origin => head.target.of(buf),
        _ => b"/",
    };
    let path = target.split(|b| *b == b'?').next().unwrap_or(b"/");
    let path = std::str::from_utf8(path).unwrap_or("/");
    if path.is_empty() {
        "/"
    } else {
        path
    }
}

/// The head workers get for this request, as bytes.
fn outgoing(
    head: &RequestHead,
    fields: &Fields,
    client: &H1Client,
    id: &RequestId,
    _config: &Config,
) -> Buffer {
    let buf = client.pending();
    let target = match head.target_form {
        TargetForm::Absolute { path_and_query, .. } => path_and_query.of(buf),
        _ => head.target.of(buf),
    };
    let target: &[u8] = if target.is_empty() { b"/" } else { target };
    let framing = match head.body {
        BodyLength::None => OutFraming::None,
        BodyLength::Length(n) => OutFraming::Length(n),
        BodyLength::Chunked => {
            OutFraming::Chunked(head.transfer_codings.map_or(&b"chunked"[..], |s| s.of(buf)))
        }
    };
    let mut out = Buffer::take();
    // `Expect: 100-continue` is answered here, when the body is wanted: the worker gets the
    // body either way.
    let fields_iter =
        rewrite::pairs(fields, buf).filter(|(n, _)| !n.eq_ignore_ascii_case(b"expect"));
    rewrite::request_head(
        &mut out,
        &RequestParts {
            method: head.method.as_str().as_bytes(),
            target,
            host: head.host.map(|h| h.of(buf)),
            version: if head.version == Version::Http10 {
                "1.0"
            } else {
                "1.1"
            },
            request_id: id.as_bytes(),
            framing,
            upgrade: head
                .upgrade
                .map(|u| u.of(buf))
                .filter(|u| !u.eq_ignore_ascii_case(b"h2c")),
        },
        fields_iter,
        &client.info.hop,
    );
    out
}

// ───────────────────────────── forward ─────────────────────────────

/// A request on its way to a worker: the head workers get, and where its body comes from.
pub struct Request<'a, 'c> {
    pub method: &'a Method,
    pub head: &'a [u8],
    pub body: RequestBody<'c>,
    /// Safe to send again after a failure that may have reached the worker.
    pub replayable: bool,
}

/// How far a request body got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySent {
    Nothing,
    Part,
    Whole,
}

/// Where a request body comes from.
pub enum RequestBody<'c> {
    H1 {
        client: &'c mut H1Client,
        length: BodyLength,
        expect_continue: bool,
        limit: u64,
        idle: Duration,
        sent: BodySent,
        decoder: Option<ChunkedDecoder>,
    },
    H2(crate::h2::H2Body),
}

impl RequestBody<'_> {
    fn started(&self) -> bool {
        match self {
            RequestBody::H1 { sent, length, .. } => {
                *length != BodyLength::None && *sent != BodySent::Nothing
            }
            RequestBody::H2(b) => b.started(),
        }
    }

    /// Sends the body after the head, both on `conn`.
    async fn send(&mut self, head: &[u8], conn: &mut WorkerConn) -> Result<(), BodyFailure> {
        match self {
            RequestBody::H2(b) => b.send(head, conn).await,
            RequestBody::H1 {
                client,
                length,
                expect_continue,
                limit,
                idle,
                sent,
                decoder,
            } => {
                if std::mem::take(expect_continue) && client.pending().is_empty() {
                    client
                        .write(b"HTTP/1.1 100 Continue\r\n\r\n", *idle)
                        .await
                        .map_err(|f| BodyFailure::Client(client_fault_error(f)))?;
                }
                conn.write_all(head).await.map_err(BodyFailure::Worker)?;
                let r = pump_h1_body(client, *length, *limit, *idle, decoder, conn).await;
                *sent = match &r {
                    Ok(()) => BodySent::Whole,
                    Err(_) => BodySent::Part,
                };
                r
            }
        }
    }
}

/// Copies an HTTP/1.1 request body from the client to the worker, bytes as received (a
/// chunked body is validated on the way, so both ends agree where it ends).
async fn pump_h1_body(
    client: &mut H1Client,
    length: BodyLength,
    limit: u64,
    idle: Duration,
    decoder: &mut Option<ChunkedDecoder>,
    conn: &mut WorkerConn,
) -> Result<(), BodyFailure> {
    let mut left = match length {
        BodyLength::None => return Ok(()),
        BodyLength::Length(n) => n,
        BodyLength::Chunked => {
            *decoder = Some(ChunkedDecoder::new(limit));
            u64::MAX
        }
    };
    while left > 0 {
        if client.pending().is_empty() {
            match tokio::time::timeout(idle, client.read_more()).await {
                Err(_) => {
                    return Err(BodyFailure::Client(client_fault_error(
                        ClientFault::BodyIdle,
                    )))
                }
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return Err(BodyFailure::Client(client_fault_error(ClientFault::Gone)))
                }
                Ok(Ok(_)) => {}
            }
        }
        let (take, done) = match decoder.as_mut() {
            None => ((left.min(client.pending().len() as u64)) as usize, false),
            Some(d) => {
                let step = d
                    .feed(client.pending())
                    .map_err(|e| BodyFailure::Client(chunk_error(e)))?;
                (step.consumed, step.done)
            }
        };
        conn.write_all(&client.pending()[..take])
            .await
            .map_err(BodyFailure::Worker)?;
        client.consume(take);
        left = if decoder.is_some() {
            if done {
                0
            } else {
                u64::MAX
            }
        } else {
            left - take as u64
        };
    }
    Ok(())
}

fn chunk_error(e: http1::ChunkError) -> ProxyError {
    if e.is_too_large() {
        ProxyError::new(
            ErrorCode::BodyTooLarge,
            "the request body exceeds this route's limit",
        )
    } else {
        ProxyError::new(
            ErrorCode::BadRequestBody,
            format!(
                "the request body's chunked framing is invalid: {}",
                e.message()
            ),
        )
    }
}

fn client_fault_error(f: ClientFault) -> ProxyError {
    match f {
        ClientFault::BodyIdle => ProxyError::new(
            ErrorCode::ClientBodyIdle,
            "the request body stopped arriving",
        ),
        _ => ProxyError::new(
            ErrorCode::BadRequestBody,
            "the client closed the connection before its request body ended",
        ),
    }
}

/// A worker's answer, ready to be relayed: its head (parsed, in the connection's buffer), the
/// connection to read its body from, and the in-flight slot it holds.
pub struct Forwarded {
    pub conn: WorkerConn,
    pub head: ResponseHead,
    pub fields: Fields,
    pub flight: InFlight,
    pub group: Arc<Group>,
}

/// Why one attempt failed, and whether another worker may be tried.
enum AttemptFailure {
    /// The whole request ran out of time.
    Deadline,
    /// The request never reached the worker: safe to retry for any method.
    NotSent(ProxyError),
    /// The worker's address refused the connection: not sent either, and a sure sign that
    /// nothing listens there, which ejects the worker at once.
    Refused(ProxyError),
    /// It may have reached the worker: retry only if safe to repeat.
    Sent(ProxyError),
    /// The client's side failed: no retry, and not the worker's fault.
    Client(ProxyError),
}

/// Picks a worker and forwards, retrying on another worker within the budget when safe.
pub async fn forward(
    shared: &Arc<Shared>,
    router: &Router,
    route: &RouteEntry,
    req: &mut Request<'_, '_>,
    started: Instant,
) -> Result<Forwarded, ProxyError> {
    let group = &route.group;
    // One deadline bounds the whole request (queueing, connecting, every attempt).
    let limit = router.config.timeouts.request;
    let deadline = tokio::time::Instant::from_std(started) + limit;
    group.budget.on_request();
    let mut state = Attempts {
        tried: Vec::new(),
        last_error: None,
        reason: "other",
        paid: false,
    };
    for attempt in 0..group.settings.retry.max_attempts {
        if attempt > 0 && !std::mem::take(&mut state.paid) && !group.budget.try_retry() {
            count_retry_denied(shared, group);
            break;
        }
        let flight = match group
            .acquire(&state.tried, &shared.fleet.signal, deadline)
            .await
        {
            Ok(f) => f,
            Err(PickError::NoOtherWorker) => break,
            Err(PickError::Deadline) => return Err(request_timeout(limit)),
            Err(PickError::Overloaded) => return Err(overloaded(group)),
            Err(PickError::NoHealthyWorkers) => {
                return Err(state
                    .last_error
                    .unwrap_or_else(|| no_healthy_workers(group)));
            }
        };
        if attempt > 0 {
            count_retry(shared, group, state.reason);
        }
        let worker = flight.worker().clone();
        state.tried.push(worker.addr);
        let t0 = Instant::now();
        let result = attempt_once(&worker, group, req, deadline).await;
        let latency = t0.elapsed();
        match result {
            Ok((conn, head, fields)) => {
                if wants_status_retry(req, group, &head, attempt, &state.tried) {
                    if group.budget.try_retry() {
                        record_outcome(shared, group, &worker, Outcome::Failure, latency);
                        state.failed(
                            worker_error(group, &format!("it answered {}", head.status)),
                            "status",
                        );
                        state.paid = true;
                        continue;
                    }
                    // Counted like any other refused retry: a spent budget must show.
                    count_retry_denied(shared, group);
                }
                let outcome = if head.status >= 500 {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                record_outcome(shared, group, &worker, outcome, latency);
                return Ok(Forwarded {
                    conn,
                    head,
                    fields,
                    flight,
                    group: group.clone(),
                });
            }
            Err(AttemptFailure::Deadline) => {
                record_outcome(shared, group, &worker, Outcome::Failure, latency);
                return Err(request_timeout(limit));
            }
            Err(AttemptFailure::Client(e)) => return Err(e),
            Err(failure) => {
                if !after_failure(shared, group, &worker, failure, latency, req, &mut state) {
                    break;
                }
            }
        }
    }
    let e = state
        .last_error
        .unwrap_or_else(|| no_healthy_workers(group));
    // Every worker unreachable and none healthy: that is "no healthy workers".
    if e.code == ErrorCode::WorkerUnreachable && !group.any_available() {
        return Err(no_healthy_workers(group));
    }
    Err(e)
}

/// What the attempts of one request have learnt so far.
struct Attempts {
    tried: Vec<SocketAddr>,
    last_error: Option<ProxyError>,
    /// Why the next attempt would be a retry (for the metric).
    reason: &'static str,
    /// The next retry was already taken from the budget.
    paid: bool,
}

impl Attempts {
    fn failed(&mut self, e: ProxyError, reason: &'static str) {
        self.last_error = Some(e);
        self.reason = reason;
    }
}

/// Records a failed attempt; `true` if another worker may be tried.
fn after_failure(
    shared: &Arc<Shared>,
    group: &Arc<Group>,
    worker: &Arc<Worker>,
    failure: AttemptFailure,
    latency: Duration,
    req: &Request<'_, '_>,
    state: &mut Attempts,
) -> bool {
    match failure {
        AttemptFailure::Refused(e) => {
            record_outcome(shared, group, worker, Outcome::Refused, latency);
            state.failed(e, "not_sent");
            true
        }
        AttemptFailure::NotSent(e) => {
            record_outcome(shared, group, worker, Outcome::Failure, latency);
            check_still_listening(shared, group, worker);
            state.failed(e, "not_sent");
            true
        }
        AttemptFailure::Sent(e) => {
            record_outcome(shared, group, worker, Outcome::Failure, latency);
            if e.code == ErrorCode::WorkerError {
                check_still_listening(shared, group, worker);
            }
            tracing::debug!(worker = %worker.addr, error = %e.message, "attempt failed after sending");
            state.failed(e, "reset_or_timeout");
            req.replayable && !req.body.started()
        }
        AttemptFailure::Deadline | AttemptFailure::Client(_) => false,
    }
}

/// A 502/503/504 to a request that is safe to repeat is worth another worker while attempts
/// and untried workers remain; with none, the client gets this worker's own answer.
fn wants_status_retry(
    req: &Request<'_, '_>,
    group: &Group,
    head: &ResponseHead,
    attempt: u32,
    tried: &[SocketAddr],
) -> bool {
    let retry = &group.settings.retry;
    matches!(head.status, 502..=504)
        && req.replayable
        && !req.body.started()
        && retry.retry_idempotent_on_status
        && attempt + 1 < retry.max_attempts
        && group.has_untried(tried)
}

/// One try on one worker: a connection (pooled or new), the request, the response head, all
/// bounded by `deadline`. A pooled connection the worker closed while it sat idle (the
/// keep-alive race) is replaced by a new one once, when nothing of the request went out.
async fn attempt_once(
    worker: &Worker,
    group: &Group,
    req: &mut Request<'_, '_>,
    deadline: tokio::time::Instant,
) -> Result<(WorkerConn, ResponseHead, Fields), AttemptFailure> {
    let settings = &group.settings;
    let mut fresh_tried = false;
    loop {
        let mut conn = match worker.pool.checkout(settings.pool_idle_timeout) {
            Some(c) if !fresh_tried => c,
            _ => connect(worker, group, deadline).await?,
        };
        let reused = conn.reused;
        let sending = tokio::time::timeout_at(deadline, req.body.send(req.head, &mut conn)).await;
        match sending {
            Err(_) => return Err(AttemptFailure::Deadline),
            Ok(Err(BodyFailure::Client(e))) => return Err(AttemptFailure::Client(e)),
            Ok(Err(BodyFailure::Worker(_))) if reused && !req.body.started() && !fresh_tried => {
                fresh_tried = true;
                continue;
            }
            Ok(Err(BodyFailure::Worker(e))) => {
                return Err(sent_or_not(
                    req,
                    worker_error(group, &format!("sending the request: {e}")),
                ))
            }
            Ok(Ok(())) => {}
        }
        // The response timeout runs from the end of the request body: a slow upload is the
        // client's time, not the worker's.
        let head_deadline = deadline.min(tokio::time::Instant::now() + settings.response_timeout);
        let mut fields = Fields::take();
        match conn.read_head(req.method, &mut fields, head_deadline).await {
            Ok(head) => return Ok((conn, head, fields)),
            Err(HeadError::ClosedBeforeAnswer) if reused && req.replayable && !fresh_tried => {
                fresh_tried = true;
                continue;
            }
            Err(HeadError::Timeout) if head_deadline == deadline => {
                return Err(AttemptFailure::Deadline)
            }
            Err(HeadError::Timeout) => {
                return Err(AttemptFailure::Sent(ProxyError::new(
                    ErrorCode::WorkerTimeout,
                    format!(
                        "a worker of target group `{}` sent no response head within {:?}",
                        group.name, settings.response_timeout
                    ),
                )))
            }
            Err(e) => return Err(AttemptFailure::Sent(worker_error(group, &e.to_string()))),
        }
    }
}

/// A failure while sending: retryable as "not sent" only if no body byte went out and the
/// request is safe to repeat.
fn sent_or_not(req: &Request<'_, '_>, e: ProxyError) -> AttemptFailure {
    if !req.body.started() && req.replayable {
        AttemptFailure::NotSent(e)
    } else {
        AttemptFailure::Sent(e)
    }
}

async fn connect(
    worker: &Worker,
    group: &Group,
    deadline: tokio::time::Instant,
) -> Result<WorkerConn, AttemptFailure> {
    let timeout = group.settings.connect_timeout;
    let connect = worker.pool.connect(worker.addr, timeout);
    match tokio::time::timeout_at(deadline, connect).await {
        Err(_) => Err(AttemptFailure::Deadline),
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => {
            let refused =
                matches!(&e, ConnectError::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused);
            tracing::debug!(worker = %worker.addr, error = %e, "connect failed");
            let pe = ProxyError::new(
                ErrorCode::WorkerUnreachable,
                format!(
                    "a worker of target group `{}` could not be reached: {e}",
                    group.name
                ),
            );
            Err(if refused {
                AttemptFailure::Refused(pe)
            } else {
                AttemptFailure::NotSent(pe)
            })
        }
    }
}

// ───────────────────────────── relay ─────────────────────────────

/// What relaying a response needs besides the response.
struct Relay<'a> {
    shared: &'a Arc<Shared>,
    route: &'a RouteEntry,
    id: &'a RequestId,
    config: &'a Config,
    method: &'a Method,
    client_http10: bool,
    /// The client connection closes after this response.
    close: bool,
    started: Instant,
}

/// Relays a worker's response to an HTTP/1.1 client: head, then body as it comes, then the
/// worker connection back to its pool. Returns whether the client connection may go on.
async fn relay_h1(client: &mut H1Client, mut fwd: Forwarded, ctx: &Relay<'_>) -> bool {
    let head = fwd.head;
    record_response(
        ctx.shared,
        ctx.route,
        fwd.flight.worker(),
        &head,
        &fwd.fields,
        fwd.conn.pending(),
        ctx.started,
    );
    if head.status == 101 {
        return tunnel(client, fwd, ctx).await;
    }
    // A chunked body reaches an HTTP/1.0 client de-chunked, ended by the close.
    let dechunk = ctx.client_http10 && head.body == ResponseBody::Chunked;
    let close = ctx.close || dechunk || head.body == ResponseBody::UntilClose;
    let codings = head
        .transfer_codings
        .map(|s| s.of(fwd.conn.pending()).to_vec());
    let framing = match head.body {
        _ if dechunk => OutFraming::Close,
        ResponseBody::None if *ctx.method == Method::HEAD => OutFraming::AsSent,
        ResponseBody::None => OutFraming::None,
        ResponseBody::Length(n) => OutFraming::Length(n),
        ResponseBody::Chunked => OutFraming::Chunked(codings.as_deref().unwrap_or(b"chunked")),
        ResponseBody::UntilClose => OutFraming::Close,
    };
    let mut out = Buffer::take();
    let pending = fwd.conn.pending();
    rewrite::response_head(
        &mut out,
        &ResponseParts {
            status: head.status,
            reason: reason(head.status),
            request_id: ctx.id.as_bytes(),
            framing,
            forward_load_header: ctx.config.telemetry.forward_load_header,
            close,
            upgrade: false,
        },
        rewrite::pairs(&fwd.fields, pending),
    );
    if ctx.client_http10 && !close {
        // An HTTP/1.0 client keeps the connection only when told so.
        let end = out.len() - 2;
        out.truncate(end);
        out.extend_from_slice(b"connection: keep-alive\r\n\r\n");
    }
    fwd.conn.consume(head.head_len);
    drop(fwd.fields);
    let mut reader = BodyReader::for_response(head.body);
    let written = relay_body(
        client,
        &mut fwd.conn,
        &mut reader,
        out,
        dechunk,
        ctx,
        &fwd.group,
    )
    .await;
    match written {
        Ok(reusable) => {
            if reusable && !head.connection.close {
                fwd.conn.release_buffer();
                fwd.flight
                    .worker()
                    .pool
                    .checkin(fwd.conn, fwd.group.settings.max_in_flight_per_worker);
            }
            !close
        }
        Err(fault) => {
            ctx.shared
                .metrics
                .abandoned
                .get_or_create(&crate::metrics::ErrorLabels { error: fault })
                .inc();
            // Only what the worker did counts against it; a client that went away does not.
            if fault.starts_with("worker_") {
                let worker = fwd.flight.worker();
                passive_ejection(ctx.shared, &fwd.group, worker, |now, outlier| {
                    worker.record_late_failure(now, outlier)
                });
            }
            false
        }
    }
}

/// Streams the body (after the head in `out`) from the worker to the client. `Ok(reusable)`
/// when the response ended; `Err(code)` names whoever stalled or broke it.
async fn relay_body(
    client: &mut H1Client,
    conn: &mut WorkerConn,
    reader: &mut BodyReader,
    mut out: Buffer,
    dechunk: bool,
    ctx: &Relay<'_>,
    group: &Group,
) -> Result<bool, &'static str> {
    let write_idle = ctx.config.timeouts.client_write_idle;
    let body_idle = group.settings.worker_body_idle;
    loop {
        // Whatever the worker sent along with its head goes out in the same write.
        let piece = if out.len() < crate::buffers::SIZE {
            match reader
                .next(
                    conn,
                    if out.is_empty() {
                        body_idle
                    } else {
                        Duration::ZERO
                    },
                )
                .await
            {
                Ok(p) => Some(p),
                Err(BodyFault::Idle) if !out.is_empty() => None,
                Err(BodyFault::Idle) => return Err("worker_body_idle"),
                Err(_) => return Err("worker_body_error"),
            }
        } else {
            None
        };
        match piece {
            Some(BodyPiece::Bytes { len, data }) => {
                let pending = conn.pending();
                match (dechunk, data) {
                    (false, _) => out.extend_from_slice(&pending[..len]),
                    (true, Some(d)) => out.extend_from_slice(d.of(pending)),
                    (true, None) => {}
                }
                conn.consume(len);
            }
            Some(BodyPiece::End { reusable }) => {
                if !out.is_empty() {
                    client
                        .write(&out, write_idle)
                        .await
                        .map_err(ClientFault::code)?;
                }
                return Ok(reusable);
            }
            None => {
                client
                    .write(&out, write_idle)
                    .await
                    .map_err(ClientFault::code)?;
                out.clear();
            }
        }
    }
}

/// After a `101 Switching Protocols`: bytes both ways until either side closes or nothing
/// moves for `tunnel_idle`. The worker connection is not reused.
async fn tunnel(client: &mut H1Client, mut fwd: Forwarded, ctx: &Relay<'_>) -> bool {
    let mut out = Buffer::take();
    let pending = fwd.conn.pending();
    rewrite::response_head(
        &mut out,
        &ResponseParts {
            status: 101,
            reason: b"Switching Protocols",
            request_id: ctx.id.as_bytes(),
            framing: OutFraming::None,
            forward_load_header: false,
            close: false,
            upgrade: true,
        },
        rewrite::pairs(&fwd.fields, pending),
    );
    let head_len = fwd.head.head_len;
    out.extend_from_slice(&fwd.conn.pending()[head_len..]);
    fwd.conn.consume(fwd.conn.pending().len());
    let metrics = &ctx.shared.metrics;
    metrics.tunnels_opened.inc();
    metrics.tunnels_open.inc();
    let idle = ctx.config.timeouts.tunnel_idle;
    let to_worker: Vec<u8> = client.pending().to_vec();
    client.consume(to_worker.len());
    let carried = crate::h2::tunnel_streams(
        &mut client.stream,
        &mut fwd.conn.stream,
        &out,
        &to_worker,
        idle,
    )
    .await;
    metrics.tunnel_bytes.inc_by(carried);
    metrics.tunnels_open.dec();
    drop(fwd.flight);
    false
}

fn reason(status: u16) -> &'static [u8] {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
        .as_bytes()
}

// ───────────────────────────── errors ─────────────────────────────

/// Writes a JSON error answer; `false` if the client is gone.
async fn answer_error(
    client: &mut H1Client,
    e: &ProxyError,
    id: RequestId,
    close: bool,
    config: &Config,
) -> bool {
    let body = e.body(id.as_str());
    let mut out = Buffer::take();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(e.status().as_u16()).as_bytes());
    out.push(b' ');
    out.extend_from_slice(e.status().canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(id.as_bytes());
    if let Some(s) = e.retry_after {
        out.extend_from_slice(b"\r\nretry-after: ");
        out.extend_from_slice(itoa::Buffer::new().format(s).as_bytes());
    }
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
    client
        .write(&out, config.timeouts.client_write_idle)
        .await
        .is_ok()
}

fn request_timeout(limit: Duration) -> ProxyError {
    ProxyError::new(
        ErrorCode::RequestTimeout,
        format!("the request took longer than {limit:?}"),
    )
}

fn overloaded(group: &Group) -> ProxyError {
    ProxyError::new(
        ErrorCode::Overloaded,
        format!(
            "every worker of target group `{}` is at its in-flight limit and the wait queue is full or timed out",
            group.name
        ),
    )
    .retry_after(1)
}

fn worker_error(group: &Group, what: &str) -> ProxyError {
    ProxyError::new(
        ErrorCode::WorkerError,
        format!("a worker of target group `{}` failed: {what}", group.name),
    )
}

pub fn body_too_large(limit: u64) -> ProxyError {
    ProxyError::new(
        ErrorCode::BodyTooLarge,
        format!("the request body exceeds this route's limit of {limit} bytes"),
    )
}

fn no_healthy_workers(group: &Group) -> ProxyError {
    ProxyError::new(
        ErrorCode::NoHealthyWorkers,
        format!("target group `{}` has no healthy worker", group.name),
    )
    .retry_after(1)
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

pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

// ───────────────────────────── HTTP/2 requests ─────────────────────────────

/// Serves an HTTP/2 connection (hyper's), its requests forwarded like HTTP/1.1 ones.
async fn serve_h2<I>(
    shared: Arc<Shared>,
    io: I,
    info: ConnInfo,
    config: &Config,
    first_deadline: tokio::time::Instant,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = &config.limits;
    let settings = H2Settings {
        max_header_list_size: ((limits.max_header_bytes + limits.max_uri_bytes) * 2) as u32,
        idle: config.timeouts.client_idle,
        first_deadline,
    };
    let info = Arc::new(info);
    let handler = {
        let shared = shared.clone();
        move |req| {
            let (shared, info) = (shared.clone(), info.clone());
            async move {
                let Ok(response) = handle_h2(shared, info, req).await;
                response
            }
        }
    };
    crate::h2::serve(io, settings, &shared.drain, &shared.metrics, handler).await;
}

async fn handle_h2(
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    req: HttpRequest<Incoming>,
) -> Result<Response<H2Response>, Infallible> {
    let started = Instant::now();
    let router = shared.router.load_full();
    let id = next_id(
        &shared,
        req.headers().get("x-request-id").map(|v| v.as_bytes()),
    );
    let result = async {
        let declared = declared_length(req.headers())?;
        let route = check_route_path(&router, req.uri().path(), declared)?;
        let (parts, incoming) = req.into_parts();
        let body = H2Body::read(incoming, declared, route.max_body_bytes).await?;
        let head = h2_outgoing(&parts, &info, &id, body.framing());
        let mut request = Request {
            method: &parts.method,
            head: &head,
            body: RequestBody::H2(body),
            replayable: is_idempotent(&parts.method),
        };
        request.replayable &= !request.body_may_stream();
        let fwd = forward(&shared, &router, route, &mut request, started).await?;
        Ok::<_, ProxyError>((route, fwd, parts.method))
    }
    .await;
    Ok(match result {
        Ok((route, fwd, method)) => {
            respond_h2(&shared, route, fwd, &id, &router.config, started, &method)
        }
        Err(e) => {
            shared.metrics.error(e.code.as_str());
            h2_error_response(&e, &id)
        }
    })
}

impl Request<'_, '_> {
    /// Whether the body streams from the client (and so cannot be sent twice).
    fn body_may_stream(&self) -> bool {
        matches!(&self.body, RequestBody::H2(b) if b.streaming())
    }
}

/// The `content-length` a request declares, if any; several or a malformed one is an error.
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, ProxyError> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let bad = || {
        ProxyError::new(
            ErrorCode::BadContentLength,
            "the content-length is not one non-negative integer",
        )
    };
    if values.next().is_some() {
        return Err(bad());
    }
    let text = first.to_str().map_err(|_| bad())?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse().map(Some).map_err(|_| bad())
}

/// The HTTP/1.1 head a worker gets for an HTTP/2 request.
fn h2_outgoing(
    parts: &http::request::Parts,
    info: &ConnInfo,
    id: &RequestId,
    framing: OutFraming<'_>,
) -> Buffer {
    // `:authority` wins; a `host` field is used only when there is none.
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes().to_vec());
    let host = authority.or_else(|| {
        parts
            .headers
            .get(http::header::HOST)
            .map(|h| h.as_bytes().to_vec())
    });
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let fields = parts
        .headers
        .iter()
        .filter(|(n, _)| *n != http::header::HOST && *n != http::header::EXPECT)
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
    let mut out = Buffer::take();
    rewrite::request_head(
        &mut out,
        &RequestParts {
            method: parts.method.as_str().as_bytes(),
            target: target.as_bytes(),
            host: host.as_deref(),
            version: "2",
            request_id: id.as_bytes(),
            framing,
            upgrade: None,
        },
        fields.collect::<Vec<_>>().into_iter(),
        &info.hop,
    );
    out
}

/// The response an HTTP/2 client gets for a worker's answer.
fn respond_h2(
    shared: &Arc<Shared>,
    route: &crate::route::RouteEntry,
    fwd: Forwarded,
    id: &RequestId,
    config: &Config,
    started: Instant,
    method: &http::Method,
) -> Response<H2Response> {
    let Forwarded {
        mut conn,
        head,
        fields,
        flight,
        group,
        ..
    } = fwd;
    let buf = conn.pending();
    record_response(shared, route, flight.worker(), &head, &fields, buf, started);
    let mut response = Response::builder().status(head.status);
    let forward_load = config.telemetry.forward_load_header;
    let mut out = Buffer::take();
    // The same rules as for HTTP/1.1 clients, then parsed back into a map for hyper.
    rewrite::response_head(
        &mut out,
        &rewrite::ResponseParts {
            status: head.status,
            reason: b"",
            request_id: id.as_bytes(),
            framing: OutFraming::None,
            forward_load_header: forward_load,
            close: false,
            upgrade: false,
        },
        rewrite::pairs(&fields, buf),
    );
    for line in out.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        // HTTP/2 forbids connection-specific fields.
        if name.eq_ignore_ascii_case(b"connection") {
            continue;
        }
        response = response.header(name, value);
    }
    if let (ResponseBody::Length(n), false) = (head.body, *method == http::Method::HEAD) {
        response = response.header(http::header::CONTENT_LENGTH, n);
    }
    conn.consume(head.head_len);
    drop(fields);
    let reader = BodyReader::for_response(if *method == http::Method::HEAD {
        ResponseBody::None
    } else {
        head.body
    });
    let body = H2Response::Proxied(Box::new(WorkerBody::new(
        conn,
        reader,
        flight,
        group.settings.max_in_flight_per_worker,
        group.settings.worker_body_idle,
    )));
    response.body(body).unwrap_or_else(|_| {
        h2_error_response(
            &ProxyError::new(
                ErrorCode::WorkerError,
                "the worker's response head cannot be relayed over HTTP/2",
            ),
            id,
        )
    })
}

fn h2_error_response(e: &ProxyError, id: &RequestId) -> Response<H2Response> {
    let mut r = Response::new(H2Response::Full(Some(Bytes::from(e.body(id.as_str())))));
    *r.status_mut() = e.status();
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = http::HeaderValue::from_bytes(id.as_bytes()) {
        h.insert("x-request-id", v);
    }
    if let Some(s) = e.retry_after {
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from(s));
    }
    r
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
/// not when a policy next happens to pick it nor when health checks catch up. One check per
/// worker at a time; a worker that still listens (a keep-alive race, a restart) is left alone.
fn check_still_listening(shared: &Arc<Shared>, group: &Arc<Group>, worker: &Arc<Worker>) {
    if !worker.claim_listen_check() {
        return;
    }
    let (shared, group, worker) = (shared.clone(), group.clone(), worker.clone());
    tokio::spawn(async move {
        let connect = TcpStream::connect(worker.addr);
        let refused = matches!(
            tokio::time::timeout(group.settings.connect_timeout, connect).await,
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused
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
    let may_eject = |w: &Worker| group.may_eject(w, now);
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
pub fn record_response(
    shared: &Shared,
    route: &RouteEntry,
    worker: &Worker,
    head: &ResponseHead,
    fields: &[http1::Field],
    buf: &[u8],
    started: Instant,
) {
    let now = now_us();
    if let Some(report) = rewrite::find(fields, buf, b"endpoint-load-metrics")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| LoadReport::parse(v).ok())
    {
        worker.store_report(crate::config::TelemetrySource::Inband, &report, now);
    }
    if let Some(instance) = rewrite::find(fields, buf, b"x-fulcrum-instance") {
        let cluster = rewrite::find(fields, buf, b"x-fulcrum-cluster")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok());
        worker.note_identity(instance, cluster);
    }
    shared
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.label.clone(),
            target_group: route.group.label.clone(),
            worker: worker.label.clone(),
            code: head.status,
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

/// Routes an HTTP/2 request's path, checking the route's body limit against a declared length.
pub fn check_route_path<'r>(
    router: &'r Router,
    path: &str,
    declared: Option<u64>,
) -> Result<&'r RouteEntry, ProxyError> {
    let route = router
        .route(path)
        .ok_or_else(|| ProxyError::new(ErrorCode::NoRoute, format!("no route matches `{path}`")))?;
    if declared.is_some_and(|len| len > route.max_body_bytes) {
        return Err(body_too_large(route.max_body_bytes));
    }
    Ok(route)
}

/// A request id for an HTTP/2 request: the client's if plain, else a new one.
pub fn next_id(shared: &Shared, client: Option<&[u8]>) -> RequestId {
    client
        .and_then(RequestId::from_client)
        .unwrap_or_else(|| shared.ids.next())
}
