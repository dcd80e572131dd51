//! HTTP/2 clients (h2 over TLS, h2c with prior knowledge), served by hyper and forwarded to
//! workers over fulcrum's own HTTP/1.1 (`proxy::forward`).
//!
//! Per RFC 9113 §8.3.1 `:authority` wins over a `host` field. A request body with a declared
//! `content-length` up to [`WHOLE_BODY`] is read whole and checked against it before anything
//! goes to a worker, so a stream whose DATA disagrees with its length never reaches one; a
//! larger body is streamed, its last bytes held until the stream ends, and a mismatch (which
//! hyper detects) aborts the worker connection mid-message, so the worker never sees a
//! complete request either. A connection idle for
//! `client_idle` is closed with GOAWAY.
//!
//! Also here: the byte tunnel behind an HTTP/1.1 `101 Switching Protocols`.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request as HttpRequest, Response};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::access_log::Unfinished;
use crate::buffers::Buffer;
use crate::drain::Drain;
use crate::errors::{ErrorCode, ProxyError};
use crate::fleet::InFlight;
use crate::h2_channel::{BodySource, UpstreamBody};
use crate::http1::encode_chunk_header;
use crate::metrics::Metrics;
use crate::rewrite::OutFraming;
use crate::upstream::{BodyFailure, BodyPiece, BodyReader, WorkerConn};

/// Request bodies declared up to this size are read whole before a worker is chosen.
const WHOLE_BODY: u64 = 64 * 1024;

/// What serving an HTTP/2 connection needs from the balancer.
pub struct H2Settings {
    pub max_header_list_size: u32,
    /// A connection with no stream open this long gets GOAWAY (zero: never).
    pub idle: Duration,
    /// It must open its first stream by then: nothing else bounds a client trickling its
    /// first frames.
    pub first_deadline: tokio::time::Instant,
}

/// Serves one HTTP/2 connection until it ends, each request answered by `handle`.
pub async fn serve<I, H, F>(
    io: I,
    settings: H2Settings,
    drain: &Drain,
    metrics: &Metrics,
    handle: H,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(HttpRequest<Incoming>) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = Response<H2Response>> + Send + 'static,
{
    let open = Arc::new(Streams::default());
    let any = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let svc = {
        let (open, any) = (open.clone(), any.clone());
        hyper::service::service_fn(move |req| {
            any.store(true, Ordering::Relaxed);
            let open = OpenStream::new(&open);
            let answer = handle(req);
            Box::pin(async move {
                let response = answer.await;
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
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(settings.max_header_list_size)
        .max_concurrent_streams(256)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut idle_since = crate::clock::now_us();
    let mut closing = false;
    loop {
        let check = tokio::time::sleep(Duration::from_millis(250));
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    metrics.client_protocol_error("h2");
                    tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
                }
                return;
            }
            _ = drain.stopping(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = check, if !closing => {
                if !any.load(Ordering::Relaxed) && tokio::time::Instant::now() >= settings.first_deadline {
                    metrics.client_protocol_error("header_timeout");
                    return;
                }
                let now = crate::clock::now_us();
                if open.open.load(Ordering::Relaxed) > 0 || settings.idle.is_zero() {
                    idle_since = now;
                } else if now.saturating_sub(idle_since.max(open.last_end_us.load(Ordering::Relaxed)))
                    >= settings.idle.as_micros() as u64
                {
                    // GOAWAY first, so the client knows no stream was lost.
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A connection's open streams, and when the last one ended: its idle time runs from then,
/// not from the check that first saw it idle.
#[derive(Default)]
struct Streams {
    open: AtomicUsize,
    last_end_us: std::sync::atomic::AtomicU64,
}

/// Counts a stream as open until its response body is done.
struct OpenStream(Arc<Streams>);

impl OpenStream {
    fn new(streams: &Arc<Streams>) -> OpenStream {
        streams.open.fetch_add(1, Ordering::Relaxed);
        OpenStream(streams.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let streams = &self.0;
        streams
            .last_end_us
            .store(crate::clock::now_us(), Ordering::Relaxed);
        streams.open.fetch_sub(1, Ordering::Relaxed);
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

/// An HTTP/2 request body on its way to a worker: read whole when small and declared, else
/// streamed (chunked when its length is unknown).
pub struct H2Body {
    pub whole: Option<Bytes>,
    stream: Option<Incoming>,
    declared: Option<u64>,
    limit: u64,
    started: bool,
}

impl H2Body {
    pub async fn read(
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

    pub fn framing(&self) -> OutFraming<'static> {
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

    /// The body for an HTTP/2 worker: whole when it was read whole (and so may be sent again),
    /// else the client's stream, once.
    pub fn into_source(self) -> BodySource {
        match (self.whole, self.stream) {
            (_, Some(incoming)) => BodySource::Once(Some(UpstreamBody::Streamed {
                incoming,
                seen: 0,
                limit: self.limit,
            })),
            (whole, None) => BodySource::Whole(whole.unwrap_or_default()),
        }
    }

    pub fn streaming(&self) -> bool {
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
        let mut last = None;
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
                return Err(BodyFailure::Client(ProxyError::new(
                    ErrorCode::BodyTooLarge,
                    format!(
                        "the request body exceeds this route's limit of {} bytes",
                        self.limit
                    ),
                )));
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
            // The bytes that complete the declared length wait for the stream's end: excess
            // DATA after them makes it malformed, and the worker must not have a whole request.
            if self.declared == Some(seen) {
                last = Some(out);
                continue;
            }
            conn.write_all(&out).await.map_err(BodyFailure::Worker)?;
        }
        if let Some(out) = last {
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
        ErrorCode::BadRequestBody,
        format!("the request body could not be read: {why}"),
    )
}

/// A response body for an HTTP/2 client.
pub enum H2Response {
    Full(Option<Bytes>),
    /// From an HTTP/1.1 worker.
    Proxied(Box<WorkerBody>),
    /// From an HTTP/2 worker, trailers and all.
    Relayed(Box<RelayedBody>),
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
    /// The request's access-log line, written when the body ends or is abandoned.
    pub log: Option<Unfinished>,
}

impl WorkerBody {
    /// The body of the response whose head was just read from `conn`; `cap` idle connections
    /// the worker's pool keeps, `idle` the longest wait for more bytes.
    pub fn new(
        conn: WorkerConn,
        reader: BodyReader,
        flight: InFlight,
        cap: usize,
        idle: Duration,
    ) -> WorkerBody {
        WorkerBody {
            conn: Some(conn),
            reader,
            flight: Some(flight),
            cap,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            log: None,
        }
    }
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
                        if let Some(log) = self.log.as_mut() {
                            log.bytes_out += b.len() as u64;
                        }
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
            H2Response::Relayed(r) => r.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            H2Response::Full(b) => b.is_none(),
            H2Response::Proxied(w) => w.conn.is_none(),
            H2Response::Relayed(r) => r.is_done(),
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
            H2Response::Relayed(r) => r.size_hint(),
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
    if send(client, to_client).await.is_err() || send(worker, to_worker).await.is_err() {
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
                    Ok(n) => send(worker, &up[..n]).await.ok().map(|_| n),
                },
                r = worker.read(&mut down) => match r {
                    Ok(0) | Err(_) => None,
                    Ok(n) => send(client, &down[..n]).await.ok().map(|_| n),
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

/// Writes `bytes` and flushes: a TLS stream (client or worker) may hold records until then.
async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// An HTTP/2 worker's response body on its way to a client: frames (DATA and trailers) as
/// they come, the in-flight slot held until the end, `idle` the longest wait for the next.
pub struct RelayedBody {
    body: Incoming,
    flight: Option<InFlight>,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The request's access-log line, written when the body ends or is abandoned.
    pub log: Option<Unfinished>,
}

impl RelayedBody {
    pub fn new(body: Incoming, flight: InFlight, idle: Duration) -> RelayedBody {
        RelayedBody {
            body,
            flight: Some(flight),
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            log: None,
        }
    }

    /// Whether the body has ended (or never had anything: a gRPC trailers-only answer).
    pub fn is_done(&self) -> bool {
        self.flight.is_none() || self.body.is_end_stream()
    }

    pub fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }

    /// The next frame; `Err` when the worker broke the stream or stalled past `idle`.
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.flight.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(log), Some(data)) = (self.log.as_mut(), frame.data_ref()) {
                    log.bytes_out += data.len() as u64;
                }
                let next = tokio::time::Instant::now() + self.idle;
                self.sleep.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.flight = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.flight = None;
                Poll::Ready(Some(Err(std::io::Error::other(e))))
            }
            Poll::Pending if self.sleep.as_mut().poll(cx).is_ready() => {
                self.flight = None;
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "worker_body_idle",
                ))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
