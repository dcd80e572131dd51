//! HTTP/2 to workers, for target groups with `protocol = "h2"` (gRPC services, HTTP/2-only
//! backends): a request put to a worker's multiplexed connection (`h2_channel.rs`), over plain
//! TCP (h2c with prior knowledge) or TLS with ALPN `h2`.
//!
//! A request goes out with the same header policy as an HTTP/1.1 one (`rewrite.rs`: X-Forwarded-*,
//! Forwarded, Via, the request id, a rule's edits), its body streamed frame by frame; the
//! worker's response comes back as hyper's body, DATA and trailers alike, so gRPC's
//! `grpc-status` trailers reach the client. The request's in-flight slot is held by the
//! response body until it ends (`h2::RelayedBody`).
//!
//! What may be retried follows [`crate::forward::Exchange`]: a request the connection never
//! took (hyper reports it cancelled) is not sent and goes to another worker; one that may have
//! reached the worker is retried only if it is idempotent and its body was read whole.

use bytes::Bytes;
use http::Response;
use http_body::Frame;
use hyper::body::Incoming;

use crate::access_log::Trace;
use crate::errors::{ErrorCode, ProxyError};
use crate::fleet::Worker;
use crate::forward::{worker_error, AttemptFailure, BodySink, Exchange};
use crate::h2_channel::{BodySource, BoxError, TooLarge, UpstreamBody};
use crate::policy::Affinity;
use crate::route::Group;
use crate::transport::{ConnectError, Transport};

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
        let (mut sender, opened) = match tokio::time::timeout_at(deadline, connecting).await {
            Err(_) => return Err(AttemptFailure::Deadline),
            Ok(Err(e)) => return Err(unreachable(group, &e)),
            Ok(Ok(s)) => s,
        };
        if opened.0 {
            self.trace.connect = Some(t0.elapsed());
        }
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
