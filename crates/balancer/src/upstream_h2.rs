//! HTTP/2 to workers, for target groups with `protocol = "h2"` (gRPC services, HTTP/2-only
//! backends): one multiplexed connection per worker through hyper's client, over plain TCP
//! (h2c with prior knowledge) or TLS with ALPN `h2`.
//!
//! A request goes out with the same header policy as an HTTP/1.1 one (`rewrite.rs`: X-Forwarded-*,
//! Forwarded, Via, the request id, a rule's edits), its body streamed frame by frame; the
//! worker's response comes back as hyper's body, DATA and trailers alike, so gRPC's
//! `grpc-status` trailers reach the client. The request's in-flight slot is held by the
//! response body until it ends ([`RelayedBody`]).
//!
//! What may be retried follows [`crate::forward::Exchange`]: a request the connection never
//! took (hyper reports it cancelled) is not sent and goes to another worker; one that may have
//! reached the worker is retried only if it is idempotent and its body was read whole.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future as _;

use crate::access_log::{Trace, Unfinished};
use crate::errors::{ErrorCode, ProxyError};
use crate::fleet::{InFlight, Worker};
use crate::forward::{worker_error, AttemptFailure, BodySink, Exchange};
use crate::policy::Affinity;
use crate::route::Group;
use crate::transport::{ConnectError, Transport};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A worker's HTTP/2 connection, opened on first use and again after it closes.
#[derive(Default)]
pub struct H2Channel {
    sender: tokio::sync::Mutex<Option<SendRequest<UpstreamBody>>>,
}

impl H2Channel {
    /// A handle on the worker's connection; concurrent first requests wait for one connect.
    async fn sender(
        &self,
        addr: std::net::SocketAddr,
        transport: &Transport,
        timeout: Duration,
    ) -> Result<SendRequest<UpstreamBody>, ConnectError> {
        let mut held = self.sender.lock().await;
        if let Some(s) = held.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        *held = None;
        let stream = transport.connect(addr, timeout).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // A dead connection is noticed while idle, not by the next request.
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Tls(std::io::Error::other(format!("HTTP/2: {e}"))))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(worker = %addr, error = %e, "HTTP/2 connection to a worker ended");
            }
        });
        *held = Some(sender.clone());
        Ok(sender)
    }

    /// Lets the connection go: requests under way finish on it, new ones open another.
    pub fn close(&self) {
        if let Ok(mut held) = self.sender.try_lock() {
            *held = None;
        }
    }

    /// Whether a connection is open now.
    pub fn is_open(&self) -> bool {
        self.sender
            .try_lock()
            .is_ok_and(|s| s.as_ref().is_some_and(|s| !s.is_closed()))
    }
}

/// A request body on its way to an HTTP/2 worker.
pub enum UpstreamBody {
    /// Read whole before the worker was picked; sent again as is on a retry.
    Whole(Option<Bytes>),
    /// Streamed from an HTTP/2 client, at most `limit` bytes.
    Streamed {
        incoming: Incoming,
        seen: u64,
        limit: u64,
    },
    /// Fed by an HTTP/1.1 client's connection, frame by frame.
    Fed(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Whole(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpstreamBody::Fed(rx) => rx.poll_recv(cx),
            UpstreamBody::Streamed {
                incoming,
                seen,
                limit,
            } => {
                let frame = std::task::ready!(Pin::new(incoming).poll_frame(cx));
                if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                    *seen += data.map_or(0, |d| d.len() as u64);
                    if *seen > *limit {
                        return Poll::Ready(Some(Err(Box::new(TooLarge(*limit)))));
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Whole(b) => b.is_none(),
            UpstreamBody::Streamed { incoming, .. } => incoming.is_end_stream(),
            UpstreamBody::Fed(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Whole(Some(b)) => SizeHint::with_exact(b.len() as u64),
            UpstreamBody::Whole(None) => SizeHint::with_exact(0),
            UpstreamBody::Streamed { incoming, .. } => incoming.size_hint(),
            UpstreamBody::Fed(_) => SizeHint::default(),
        }
    }
}

/// The sending end of an [`UpstreamBody::Fed`] body: an HTTP/1.1 client's body, data only.
pub struct FedBody(tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>);

/// A body fed from this side, and its feeder.
pub fn fed_body() -> (FedBody, UpstreamBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    (FedBody(tx), UpstreamBody::Fed(rx))
}

impl FedBody {
    /// Ends the body with an error, so the worker's stream is reset rather than ended: a
    /// request cut short must not reach the worker as a complete one.
    pub async fn abort(self, why: &str) {
        let _ = self.0.send(Err(why.to_owned().into())).await;
    }
}

impl BodySink for FedBody {
    async fn put(&mut self, _raw: &[u8], data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let frame = Frame::data(Bytes::copy_from_slice(data));
        self.0.send(Ok(frame)).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the worker stopped taking the body",
            )
        })
    }
}

/// A streamed request body went over the route's limit.
#[derive(Debug)]
pub struct TooLarge(pub u64);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body exceeds this route's limit of {} bytes",
            self.0
        )
    }
}

impl std::error::Error for TooLarge {}

/// A request failed because of its own body (the client's stream broke, or went over the
/// limit): the client's error, not the worker's.
fn body_error(e: &hyper::Error) -> ProxyError {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(TooLarge(limit)) = s.downcast_ref::<TooLarge>() {
            return crate::forward::body_too_large(*limit);
        }
        source = s.source();
    }
    ProxyError::new(
        ErrorCode::BadRequestBody,
        format!("the request body could not be read: {e}"),
    )
}

/// Where an [`H2Exchange`]'s body comes from, as far as sending it again goes.
pub enum BodySource {
    Whole(Bytes),
    /// Taken by the first attempt; none after it.
    Once(Option<UpstreamBody>),
}

/// A request for an HTTP/2 worker: its head (fields already rewritten) and its body.
pub struct H2Exchange {
    pub parts: http::request::Parts,
    pub body: BodySource,
    pub replayable: bool,
    pub trace: Trace,
    pub affinity: Affinity,
}

impl Exchange for H2Exchange {
    type Answer = Response<Incoming>;

    fn status(answer: &Response<Incoming>) -> u16 {
        answer.status().as_u16()
    }

    fn trace(&mut self) -> &mut Trace {
        &mut self.trace
    }

    fn affinity(&self) -> Affinity {
        self.affinity
    }

    fn replayable(&self) -> bool {
        self.replayable
    }

    fn body_started(&self) -> bool {
        matches!(self.body, BodySource::Once(None))
    }

    async fn attempt(
        &mut self,
        worker: &Worker,
        group: &Group,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Incoming>, AttemptFailure> {
        let settings = &group.settings;
        let t0 = std::time::Instant::now();
        let connecting =
            worker
                .h2
                .sender(worker.addr, &settings.transport, settings.connect_timeout);
        let mut sender = match tokio::time::timeout_at(deadline, connecting).await {
            Err(_) => return Err(AttemptFailure::Deadline),
            Ok(Err(e)) => return Err(unreachable(group, &e)),
            Ok(Ok(s)) => s,
        };
        self.trace.connect = Some(t0.elapsed());
        let body = match &mut self.body {
            BodySource::Whole(b) => UpstreamBody::Whole(Some(b.clone())),
            BodySource::Once(b) => b.take().unwrap_or(UpstreamBody::Whole(None)),
        };
        let mut parts = self.parts.clone();
        with_authority(&mut parts, worker.addr, settings.transport.scheme());
        let request = http::Request::from_parts(parts, body);
        // A streamed body may take the client its time: only the request's deadline bounds it.
        let head_deadline = match self.body {
            BodySource::Whole(_) => {
                deadline.min(tokio::time::Instant::now() + settings.response_timeout)
            }
            BodySource::Once(_) => deadline,
        };
        match tokio::time::timeout_at(head_deadline, sender.send_request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Err(_) if head_deadline == deadline => Err(AttemptFailure::Deadline),
            Err(_) => Err(AttemptFailure::Sent(ProxyError::new(
                ErrorCode::WorkerTimeout,
                format!(
                    "a worker of target group `{}` sent no response head within {:?}",
                    group.name, settings.response_timeout
                ),
            ))),
            // The client's body broke: its fault, not the worker's.
            Ok(Err(e)) if e.is_user() => Err(AttemptFailure::Client(body_error(&e))),
            // The connection never took the request (it was closing): another worker may.
            Ok(Err(e)) if e.is_canceled() && !self.body_started() => {
                Err(AttemptFailure::NotSent(worker_error(group, &e.to_string())))
            }
            Ok(Err(e)) => Err(AttemptFailure::Sent(worker_error(group, &e.to_string()))),
        }
    }
}

/// The head of a request for an HTTP/2 worker, from the HTTP/1.1 head an HTTP/1.1 worker
/// would get (`head`, as `rewrite::request_head` wrote it): the same fields less those
/// HTTP/2 forbids or carries as pseudo-fields; `te: trailers` when the client said it would
/// take trailers (gRPC does).
pub fn upstream_parts(
    method: &http::Method,
    authority: Option<&[u8]>,
    target: &[u8],
    head: &[u8],
    trailers: bool,
    transport: &Transport,
) -> Result<http::request::Parts, ProxyError> {
    let bad = |what: &str| {
        ProxyError::new(
            ErrorCode::BadRequest,
            format!("the request cannot go to an HTTP/2 worker: {what}"),
        )
    };
    let uri = match authority {
        Some(a) => {
            let mut uri = Vec::with_capacity(a.len() + target.len() + 8);
            uri.extend_from_slice(transport.scheme().as_bytes());
            uri.extend_from_slice(b"://");
            uri.extend_from_slice(a);
            uri.extend_from_slice(target);
            http::Uri::try_from(uri)
        }
        None => http::Uri::try_from(target),
    }
    .map_err(|e| bad(&format!("its target or authority ({e})")))?;
    let mut request = http::Request::builder()
        .method(method.clone())
        .uri(uri)
        .version(http::Version::HTTP_2);
    for (name, value) in crate::rewrite::head_fields(head) {
        if FORBIDDEN.iter().any(|f| name.eq_ignore_ascii_case(f)) {
            continue;
        }
        request = request.header(name, value);
    }
    if trailers {
        request = request.header(http::header::TE, "trailers");
    }
    let (parts, ()) = request
        .body(())
        .map_err(|e| bad(&e.to_string()))?
        .into_parts();
    Ok(parts)
}

/// Fields an HTTP/1.1 head has and an HTTP/2 one must not (RFC 9113 §8.2.2), or carries as
/// `:authority`.
const FORBIDDEN: [&[u8]; 7] = [
    b"host",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"upgrade",
    b"te",
];

/// A request with no authority (an HTTP/1.0 client without Host) goes to the worker's address.
fn with_authority(parts: &mut http::request::Parts, worker: std::net::SocketAddr, scheme: &str) {
    if parts.uri.authority().is_some() {
        return;
    }
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if let Ok(uri) = format!("{scheme}://{worker}{target}").parse() {
        parts.uri = uri;
    }
}

fn unreachable(group: &Group, e: &ConnectError) -> AttemptFailure {
    let error = ProxyError::new(
        ErrorCode::WorkerUnreachable,
        format!(
            "a worker of target group `{}` could not be reached: {e}",
            group.name
        ),
    );
    if e.refused() {
        AttemptFailure::Refused(error)
    } else {
        AttemptFailure::NotSent(error)
    }
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
