//! HTTP/2 clients (h2 over TLS, h2c with prior knowledge), served by hyper and forwarded to
//! workers over fulcrum's own HTTP/1.1 (`proxy::forward`).
//!
//! Per RFC 9113 §8.3.1 `:authority` wins over a `host` field. A request body with a declared
//! `content-length` up to [`WHOLE_BODY`] is read whole and checked against it before anything
//! goes to a worker, so a stream whose DATA disagrees with its length never reaches one; a
//! larger body is streamed, and a mismatch (which hyper detects) aborts the worker connection
//! mid-message, so the worker never sees a complete request either. A connection idle for
//! `client_idle` is closed with GOAWAY.
//!
//! Also here: the byte tunnel behind an HTTP/1.1 `101 Switching Protocols`.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request as HttpRequest, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::buffers::Buffer;
use crate::config::Config;
use crate::fleet::InFlight;
use crate::http1::{encode_chunk_header, ResponseBody};
use crate::proxy::{
    self, check_route_path, error_body, forward, next_id, BodyFailure, ConnInfo, Forwarded,
    ProxyError, Request, RequestBody, RequestId, Shared,
};
use crate::rewrite::{self, OutFraming, RequestParts};
use crate::upstream::{BodyPiece, BodyReader, WorkerConn};

/// Request bodies declared up to this size are read whole before a worker is chosen.
const WHOLE_BODY: u64 = 64 * 1024;

/// Serves one HTTP/2 connection until it ends. It must open its first stream by
/// `first_deadline`: nothing else bounds a client trickling its first frames.
pub async fn serve<I>(
    shared: Arc<Shared>,
    io: I,
    info: ConnInfo,
    config: &Config,
    first_deadline: tokio::time::Instant,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let open = Arc::new(AtomicUsize::new(0));
    let any = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let svc = {
        let (shared, info, open, any) = (shared.clone(), info.clone(), open.clone(), any.clone());
        hyper::service::service_fn(move |req| {
            any.store(true, Ordering::Relaxed);
            let open = OpenStream::new(&open);
            let answer = handle(shared.clone(), info.clone(), req);
            Box::pin(async move {
                let Ok(response) = answer.await;
                Ok::<_, Infallible>(response.map(|b| Tracked {
                    body: b,
                    _open: open,
                }))
            })
                as Pin<
                    Box<
                        dyn std::future::Future<Output = Result<Response<Tracked>, Infallible>>
                            + Send,
                    >,
                >
        })
    };
    let limits = &config.limits;
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(((limits.max_header_bytes + limits.max_uri_bytes) * 2) as u32)
        .max_concurrent_streams(256)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let idle_limit = config.timeouts.client_idle;
    let mut idle_since = Instant::now();
    let mut closing = false;
    loop {
        let check = tokio::time::sleep(Duration::from_millis(250));
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    shared.metrics.client_protocol_error("h2");
                    tracing::debug!(peer = %info.peer, error = %e, "HTTP/2 connection ended with an error");
                }
                return;
            }
            _ = shared.drain.stopping(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = check, if !closing => {
                if !any.load(Ordering::Relaxed) && tokio::time::Instant::now() >= first_deadline {
                    shared.metrics.client_protocol_error("header_timeout");
                    return;
                }
                if idle_limit.is_zero() {
                    continue;
                }
                if open.load(Ordering::Relaxed) > 0 {
                    idle_since = Instant::now();
                } else if idle_since.elapsed() >= idle_limit {
                    // GOAWAY first, so the client knows no stream was lost.
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Counts a stream as open until its response body is done.
struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    fn new(open: &Arc<AtomicUsize>) -> OpenStream {
        open.fetch_add(1, Ordering::Relaxed);
        OpenStream(open.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its stream counted as open until hyper is done with it.
pub struct Tracked {
    body: H2Response,
    _open: OpenStream,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

async fn handle(
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
        let head = outgoing(&parts, &info, &id, body.framing());
        let mut request = Request {
            method: &parts.method,
            head: &head,
            body: RequestBody::H2(body),
            replayable: proxy::is_idempotent(&parts.method),
        };
        request.replayable &= !request.body_may_stream();
        let fwd = forward(&shared, &router, route, &mut request, started).await?;
        Ok::<_, ProxyError>((route, fwd, parts.method))
    }
    .await;
    Ok(match result {
        Ok((route, fwd, method)) => {
            respond(&shared, route, fwd, &id, &router.config, started, &method)
        }
        Err(e) => {
            shared.metrics.error(e.code);
            error_response(&e, &id)
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
            StatusCode::BAD_REQUEST,
            "bad_content_length",
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
fn outgoing(
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

/// An HTTP/2 request body on its way to a worker: read whole when small and declared, else
/// streamed (chunked when its length is unknown).
pub struct H2Body {
    whole: Option<Bytes>,
    stream: Option<Incoming>,
    declared: Option<u64>,
    limit: u64,
    started: bool,
}

impl H2Body {
    async fn read(
        mut incoming: Incoming,
        declared: Option<u64>,
        limit: u64,
    ) -> Result<H2Body, ProxyError> {
        let empty = incoming.is_end_stream();
        if empty || declared.is_some_and(|n| n <= WHOLE_BODY) {
            let bytes = if empty {
                Bytes::new()
            } else {
                (&mut incoming)
                    .collect()
                    .await
                    .map_err(|e| bad_body(&e.to_string()))?
                    .to_bytes()
            };
            if declared.is_some_and(|n| n != bytes.len() as u64) {
                return Err(bad_body(
                    "the DATA frames do not add up to the declared content-length",
                ));
            }
            return Ok(H2Body {
                whole: Some(bytes),
                stream: None,
                declared,
                limit,
                started: false,
            });
        }
        Ok(H2Body {
            whole: None,
            stream: Some(incoming),
            declared,
            limit,
            started: false,
        })
    }

    fn framing(&self) -> OutFraming<'static> {
        match (&self.whole, self.declared) {
            (Some(b), _) if b.is_empty() && self.declared.is_none() => OutFraming::None,
            (Some(b), _) => OutFraming::Length(b.len() as u64),
            (None, Some(n)) => OutFraming::Length(n),
            (None, None) => OutFraming::Chunked(b"chunked"),
        }
    }

    pub fn started(&self) -> bool {
        self.started
    }

    fn streaming(&self) -> bool {
        self.stream.is_some()
    }

    /// Sends the head and the body on `conn`.
    pub async fn send(&mut self, head: &[u8], conn: &mut WorkerConn) -> Result<(), BodyFailure> {
        if let Some(whole) = &self.whole {
            let mut out = Buffer::take();
            out.extend_from_slice(head);
            out.extend_from_slice(whole);
            return conn.write_all(&out).await.map_err(BodyFailure::Worker);
        }
        conn.write_all(head).await.map_err(BodyFailure::Worker)?;
        let chunked = self.declared.is_none();
        let mut seen = 0u64;
        let stream = self
            .stream
            .as_mut()
            .expect("a streamed body has its stream");
        while let Some(frame) = stream.frame().await {
            // hyper checks DATA against content-length and fails the stream on a mismatch;
            // the worker connection is then dropped mid-message.
            let frame = frame.map_err(|e| BodyFailure::Client(bad_body(&e.to_string())))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen += data.len() as u64;
            if seen > self.limit {
                return Err(BodyFailure::Client(proxy::body_too_large(self.limit)));
            }
            self.started = true;
            let mut out = Buffer::take();
            if chunked {
                encode_chunk_header(data.len(), &mut out);
            }
            out.extend_from_slice(&data);
            if chunked {
                out.extend_from_slice(b"\r\n");
            }
            conn.write_all(&out).await.map_err(BodyFailure::Worker)?;
        }
        if chunked {
            conn.write_all(crate::http1::LAST_CHUNK)
                .await
                .map_err(BodyFailure::Worker)?;
        }
        Ok(())
    }
}

fn bad_body(why: &str) -> ProxyError {
    ProxyError::new(
        StatusCode::BAD_REQUEST,
        "bad_request_body",
        format!("the request body could not be read: {why}"),
    )
}

/// The response an HTTP/2 client gets for a worker's answer.
fn respond(
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
    proxy::record_response(shared, route, flight.worker(), &head, &fields, buf, started);
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
    let body = H2Response::Proxied(Box::new(WorkerBody {
        conn: Some(conn),
        reader,
        flight: Some(flight),
        cap: group.settings.max_in_flight_per_worker,
        idle: group.settings.worker_body_idle,
        sleep: Box::pin(tokio::time::sleep(group.settings.worker_body_idle)),
    }));
    response.body(body).unwrap_or_else(|_| {
        error_response(
            &ProxyError::new(
                StatusCode::BAD_GATEWAY,
                "worker_error",
                "the worker's response head cannot be relayed over HTTP/2",
            ),
            id,
        )
    })
}

fn error_response(e: &ProxyError, id: &RequestId) -> Response<H2Response> {
    let mut r = Response::new(H2Response::Full(Some(Bytes::from(error_body(e, id)))));
    *r.status_mut() = e.status;
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

/// A response body for an HTTP/2 client.
pub enum H2Response {
    Full(Option<Bytes>),
    Proxied(Box<WorkerBody>),
}

/// A worker's response body, read as hyper asks for it; the connection goes back to the pool
/// (and the request's in-flight slot ends) once the body has been read to its end.
pub struct WorkerBody {
    conn: Option<WorkerConn>,
    reader: BodyReader,
    flight: Option<InFlight>,
    cap: usize,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerBody {
    fn finish(&mut self, reusable: bool) {
        if let (Some(conn), Some(flight)) = (self.conn.take(), self.flight.take()) {
            if reusable {
                flight.worker().pool.checkin(conn, self.cap);
            }
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.reader.buffered(conn).map_err(fault)? {
                Some(BodyPiece::Bytes { len, data }) => {
                    let bytes = data.map(|d| Bytes::copy_from_slice(d.of(conn.pending())));
                    conn.consume(len);
                    if let Some(b) = bytes.filter(|b| !b.is_empty()) {
                        self.sleep
                            .as_mut()
                            .reset(tokio::time::Instant::now() + self.idle);
                        return Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                    continue;
                }
                Some(BodyPiece::End { reusable }) => {
                    self.finish(reusable);
                    return Poll::Ready(None);
                }
                None => {}
            }
            if self.sleep.as_mut().poll(cx).is_ready() {
                self.conn = None;
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "worker_body_idle",
                ))));
            }
            match std::task::ready!(conn.poll_read_more(cx)) {
                Ok(0) => match self.reader.at_eof().map_err(fault)? {
                    BodyPiece::End { reusable } => {
                        self.finish(reusable);
                        return Poll::Ready(None);
                    }
                    BodyPiece::Bytes { .. } => {
                        unreachable!("the end of the stream carries no bytes")
                    }
                },
                Ok(_) => continue,
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

fn fault(e: crate::upstream::BodyFault) -> io::Error {
    io::Error::other(e.to_string())
}

use std::future::Future as _;

impl http_body::Body for H2Response {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            H2Response::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            H2Response::Proxied(w) => w.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            H2Response::Full(b) => b.is_none(),
            H2Response::Proxied(w) => w.conn.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            H2Response::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            H2Response::Full(None) => SizeHint::with_exact(0),
            H2Response::Proxied(w) => match w.reader {
                BodyReader::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
        }
    }
}

/// Carries bytes both ways between an upgraded client connection and its worker connection,
/// first `to_client` and `to_worker` (what each side sent along with the handshake), until
/// either closes or nothing moves for `idle`. Returns the bytes carried.
pub async fn tunnel_streams<C, W>(
    client: &mut C,
    worker: &mut W,
    to_client: &[u8],
    to_worker: &[u8],
    idle: Duration,
) -> u64
where
    C: AsyncRead + AsyncWrite + Unpin,
    W: AsyncRead + AsyncWrite + Unpin,
{
    if client.write_all(to_client).await.is_err() || worker.write_all(to_worker).await.is_err() {
        return 0;
    }
    let mut carried = (to_client.len() + to_worker.len()) as u64;
    let mut up = vec![0u8; 8 * 1024];
    let mut down = vec![0u8; 8 * 1024];
    loop {
        let step = tokio::time::timeout(idle, async {
            tokio::select! {
                r = client.read(&mut up) => match r {
                    Ok(0) | Err(_) => None,
                    Ok(n) => worker.write_all(&up[..n]).await.ok().map(|_| n),
                },
                r = worker.read(&mut down) => match r {
                    Ok(0) | Err(_) => None,
                    Ok(n) => client.write_all(&down[..n]).await.ok().map(|_| n),
                },
            }
        })
        .await;
        match step {
            Ok(Some(n)) => carried += n as u64,
            _ => break,
        }
    }
    let _ = client.shutdown().await;
    let _ = worker.shutdown().await;
    carried
}
