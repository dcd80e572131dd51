//! HTTP/2 clients' requests (hyper serves the connection, `h2.rs`): decided by the same rules
//! and routes as HTTP/1.1 ones, forwarded by `forward.rs` to HTTP/1.1 workers (the head
//! written as bytes by `rewrite.rs`, the body from `h2::H2Body`) or to HTTP/2 workers
//! (`upstream_h2.rs`), and answered with the worker's response rewritten the same way.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request as HttpRequest, Response};
use hyper::body::Incoming;

use crate::access_log::{text_of, Record, Served, Trace, Unfinished};
use crate::buffers::Buffer;
use crate::client::ConnInfo;
use crate::config::rules::HeaderEdits;
use crate::config::Config;
use crate::errors::{ErrorCode, ProxyError};
use crate::fleet::InFlight;
use crate::forward::{
    body_too_large, forward, forward_with, is_idempotent, record_answer, record_response,
    Forwarded, Request, RequestBody,
};
use crate::h2::{H2Body, H2Response, H2Settings, RelayedBody, WorkerBody};
use crate::http1::ResponseBody;
use crate::policy::Affinity;
use crate::rewrite::{self, header_pairs, OutFraming, RequestParts};
use crate::route::{sticky_edits, Decision, RouteEntry, Router};
use crate::rules::{RedirectFrom, RequestView};
use crate::state::{next_id, RequestId, Shared};
use crate::transport::WorkerProtocol;
use crate::upstream::BodyReader;
use crate::upstream_h2::H2Exchange;

/// Serves an HTTP/2 connection (hyper's), its requests forwarded like HTTP/1.1 ones.
pub async fn serve_h2<I>(
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
    let config = router.config.clone();
    let record = config
        .access_log
        .enabled
        .then(|| h2_record(&req, &info, &id));
    let (response, served) = serve_h2_request(&shared, &router, &info, req, &id, started).await;
    Ok(match record {
        Some(r) => log_h2(&shared, response, served, r, started, &config),
        None => response,
    })
}

/// Decides, forwards and answers one HTTP/2 request.
async fn serve_h2_request<'r>(
    shared: &Arc<Shared>,
    router: &'r Router,
    info: &ConnInfo,
    req: HttpRequest<Incoming>,
    id: &RequestId,
    started: Instant,
) -> (Response<H2Response>, Served<'r>) {
    let refuse = |e: ProxyError, route, trace| {
        shared.metrics.error(e.code.as_str());
        (
            h2_error_response(&e, id),
            Served::refused(true, &e, route, trace),
        )
    };
    let decided = declared_length(req.headers())
        .and_then(|declared| Ok((decide_h2(router, &req, info, declared)?, declared)));
    let ((decision, affinity), declared) = match decided {
        Ok(d) => d,
        Err(e) => return refuse(e, None, Trace::default()),
    };
    if let Some(rule) = decision.rule() {
        shared.metrics.rule_matched(&rule.label);
    }
    let (request_edits, response_edits) = decision.edits();
    let route = match decision {
        Decision::Forward { route, .. } => route,
        answered => {
            let response = h2_rule_answer(&answered, &req, info, id, response_edits);
            return (response, Served::answered(true, &answered));
        }
    };
    let (parts, incoming) = req.into_parts();
    let mut trace = Trace::default();
    let speaks_h2 = route.group.settings.transport.protocol == WorkerProtocol::H2;
    let result = async {
        let body = H2Body::read(incoming, declared, route.max_body_bytes).await?;
        if speaks_h2 {
            let mut exchange = H2Exchange {
                replayable: is_idempotent(&parts.method) && !body.streaming(),
                parts: h2_upstream_parts(&parts, info, id, declared, request_edits, route)?,
                body: body.into_source(),
                trace: Trace::default(),
                affinity,
            };
            let answer = forward_with(shared, router, route, &mut exchange, started).await;
            trace = std::mem::take(&mut exchange.trace);
            return answer.map(|(response, flight)| H2Answer::Http2(response, flight));
        }
        let head = h2_outgoing(&parts, info, id, body.framing(), request_edits);
        let mut request = Request {
            method: &parts.method,
            head: &head,
            body: RequestBody::H2(body),
            replayable: is_idempotent(&parts.method),
            trace: Trace::default(),
            affinity,
        };
        request.replayable &= !request.body_may_stream();
        let forwarded = forward(shared, router, route, &mut request, started).await;
        trace = std::mem::take(&mut request.trace);
        forwarded.map(H2Answer::Http1)
    }
    .await;
    let reply = |edits| H2Reply {
        route,
        id,
        config: &router.config,
        started,
        method: &parts.method,
        edits,
    };
    match result {
        Ok(H2Answer::Http1(fwd)) => {
            let status = fwd.head.status;
            let pending = fwd.conn.pending();
            let fields = rewrite::pairs(&fwd.fields, pending);
            let merged = sticky_edits(route, fwd.flight.worker().addr, fields, response_edits);
            let reply = reply(merged.as_ref().or(response_edits));
            (
                respond_h2(shared, fwd, &reply),
                Served::forwarded(status, route, trace),
            )
        }
        Ok(H2Answer::Http2(response, flight)) => {
            let status = response.status().as_u16();
            let fields = header_pairs(response.headers());
            let fields = fields.iter().copied();
            let merged = sticky_edits(route, flight.worker().addr, fields, response_edits);
            let reply = reply(merged.as_ref().or(response_edits));
            (
                relay_h2_response(shared, response, flight, &reply),
                Served::forwarded(status, route, trace),
            )
        }
        Err(e) => refuse(e, Some(route), trace),
    }
}

/// A worker's answer to an HTTP/2 request, by the protocol the worker spoke.
enum H2Answer {
    Http1(Forwarded),
    Http2(Response<Incoming>, InFlight),
}

/// What the rules and routes decide for an HTTP/2 request.
fn decide_h2<'r>(
    router: &'r Router,
    req: &HttpRequest<Incoming>,
    info: &ConnInfo,
    declared: Option<u64>,
) -> Result<(Decision<'r>, Affinity), ProxyError> {
    let path = req.uri().path();
    let view = RequestView {
        host: h2_host(req),
        path,
        query: req.uri().query().unwrap_or_default().as_bytes(),
        method: req.method().as_str(),
        source: info.peer.ip(),
        protocol: info.hop.proto,
        headers: req.headers(),
    };
    let decision = router.decide(&view)?;
    let mut affinity = Affinity::default();
    if let Decision::Forward { route, .. } = &decision {
        if declared.is_some_and(|len| len > route.max_body_bytes) {
            return Err(body_too_large(route.max_body_bytes));
        }
        affinity = route.group.affinity(&view);
    }
    Ok((decision, affinity))
}

/// `:authority`, else the `host` field.
fn h2_host<B>(req: &HttpRequest<B>) -> Option<&[u8]> {
    req.uri()
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| req.headers().get(http::header::HOST).map(|h| h.as_bytes()))
}

/// A rule's redirect or fixed response to an HTTP/2 request.
fn h2_rule_answer(
    decision: &Decision<'_>,
    req: &HttpRequest<Incoming>,
    info: &ConnInfo,
    id: &RequestId,
    edits: Option<&HeaderEdits>,
) -> Response<H2Response> {
    let from = RedirectFrom {
        protocol: info.hop.proto,
        host: h2_host(req).unwrap_or_default(),
        port: info.listener.map_or(80, |l| l.port()),
        path: req.uri().path(),
        query: req.uri().query().unwrap_or_default().as_bytes(),
    };
    let message = match decision.answer() {
        Some(a) => crate::rules::answer(a, &from, id.as_bytes(), false, edits),
        None => Vec::new(),
    };
    let split = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |i| i + 4);
    let (head, body) = message.split_at(split);
    let builder = h2_fields(Response::builder().status(decision.answer_status()), head);
    let body = H2Response::Full(Some(Bytes::copy_from_slice(body)));
    builder.body(body).unwrap_or_else(|_| {
        let e = ProxyError::new(ErrorCode::WorkerError, "a rule's answer cannot be sent");
        h2_error_response(&e, id)
    })
}

/// The access-log record of an HTTP/2 request as far as its head tells.
fn h2_record(req: &HttpRequest<Incoming>, info: &ConnInfo, id: &RequestId) -> Record {
    let header = |name| req.headers().get(name).map(|v| text_of(v.as_bytes()));
    Record {
        time: Some(SystemTime::now()),
        client: Some(info.peer),
        listener: info.listener,
        protocol: "HTTP/2.0",
        tls: info.tls,
        method: req.method().as_str().to_owned(),
        target: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        host: req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| header(http::header::HOST)),
        user_agent: header(http::header::USER_AGENT),
        request_id: id.as_str().to_owned(),
        // HPACK makes header bytes a connection's, not a request's: the body's length only.
        bytes_in: req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0),
        ..Record::default()
    }
}

/// Writes an HTTP/2 request's access-log line: now for an answer of the balancer's own, when
/// the body ends for a worker's streamed one.
fn log_h2(
    shared: &Arc<Shared>,
    mut response: Response<H2Response>,
    served: Served<'_>,
    mut record: Record,
    started: Instant,
    config: &Config,
) -> Response<H2Response> {
    served.fill(&mut record, started);
    let format = config.access_log.format;
    match response.body_mut() {
        H2Response::Proxied(body) => {
            let log = shared.access_log.clone();
            body.log = Some(Unfinished::new(record, started, format, log));
        }
        H2Response::Relayed(body) => {
            let log = shared.access_log.clone();
            body.log = Some(Unfinished::new(record, started, format, log));
        }
        H2Response::Full(bytes) => {
            record.bytes_out = bytes.as_ref().map_or(0, |b| b.len() as u64);
            shared.access_log.write(record, format);
        }
    }
    response
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

/// The fields of an HTTP/1.1 response head (status line first) on an HTTP/2 response, less
/// those HTTP/2 forbids.
fn h2_fields(mut response: http::response::Builder, head: &[u8]) -> http::response::Builder {
    for (name, value) in rewrite::head_fields(head) {
        if name.eq_ignore_ascii_case(b"connection")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
        {
            continue;
        }
        response = response.header(name, value);
    }
    response
}

/// The head an HTTP/2 worker gets for an HTTP/2 request: what an HTTP/1.1 worker would get,
/// as HTTP/2.
fn h2_upstream_parts(
    parts: &http::request::Parts,
    info: &ConnInfo,
    id: &RequestId,
    declared: Option<u64>,
    edits: Option<&HeaderEdits>,
    route: &RouteEntry,
) -> Result<http::request::Parts, ProxyError> {
    let framing = declared.map_or(OutFraming::None, OutFraming::Length);
    let head = h2_outgoing(parts, info, id, framing, edits);
    let authority = parts.uri.authority().map(|a| a.as_str().as_bytes());
    let authority = authority.or_else(|| {
        let host = parts.headers.get(http::header::HOST);
        host.map(|h| h.as_bytes())
    });
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let trailers = parts
        .headers
        .get(http::header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    crate::upstream_h2::upstream_parts(
        &parts.method,
        authority,
        target.as_bytes(),
        &head,
        trailers,
        &route.group.settings.transport,
    )
}

/// The HTTP/1.1 head a worker gets for an HTTP/2 request.
fn h2_outgoing(
    parts: &http::request::Parts,
    info: &ConnInfo,
    id: &RequestId,
    framing: OutFraming<'_>,
    edits: Option<&HeaderEdits>,
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
            edits,
        },
        fields.collect::<Vec<_>>().into_iter(),
        &info.hop,
    );
    out
}

/// The response an HTTP/2 client gets for a worker's answer.
/// What answering an HTTP/2 request with a worker's response needs besides the response.
struct H2Reply<'a> {
    route: &'a RouteEntry,
    id: &'a RequestId,
    config: &'a Config,
    started: Instant,
    method: &'a http::Method,
    /// A rule's changes to the response's fields.
    edits: Option<&'a HeaderEdits>,
}

fn respond_h2(shared: &Arc<Shared>, fwd: Forwarded, reply: &H2Reply<'_>) -> Response<H2Response> {
    let Forwarded {
        mut conn,
        head,
        fields,
        flight,
        group,
        ..
    } = fwd;
    let buf = conn.pending();
    record_response(
        shared,
        reply.route,
        flight.worker(),
        &head,
        &fields,
        buf,
        reply.started,
    );
    let head_request = *reply.method == http::Method::HEAD;
    let length = match head.body {
        ResponseBody::Length(n) => Some(n),
        _ => None,
    };
    let response = h2_response_head(head.status, rewrite::pairs(&fields, buf), length, reply);
    conn.consume(head.head_len);
    drop(fields);
    let reader = BodyReader::for_response(if head_request {
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
    h2_response_with(response, body, reply.id)
}

/// An HTTP/2 worker's answer to an HTTP/2 client: the head rewritten as any, the body's
/// frames (trailers too) relayed as they come.
fn relay_h2_response(
    shared: &Arc<Shared>,
    response: Response<Incoming>,
    flight: InFlight,
    reply: &H2Reply<'_>,
) -> Response<H2Response> {
    let (head, incoming) = response.into_parts();
    let find = |name: &[u8]| {
        let name = std::str::from_utf8(name).ok()?;
        head.headers.get(name).map(|v| v.as_bytes())
    };
    let status = head.status.as_u16();
    record_answer(
        shared,
        reply.route,
        flight.worker(),
        status,
        find,
        reply.started,
    );
    let length = find(b"content-length").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
    let fields = header_pairs(&head.headers);
    let response = h2_response_head(status, fields.iter().copied(), length, reply);
    let idle = reply.route.group.settings.worker_body_idle;
    let body = H2Response::Relayed(Box::new(RelayedBody::new(incoming, flight, idle)));
    h2_response_with(response, body, reply.id)
}

/// The head an HTTP/2 client gets for a worker's answer: the same rules as for HTTP/1.1
/// clients (`rewrite.rs`), then parsed back into a map for hyper.
fn h2_response_head<'f>(
    status: u16,
    fields: impl Iterator<Item = (&'f [u8], &'f [u8])> + Clone,
    length: Option<u64>,
    reply: &H2Reply<'_>,
) -> http::response::Builder {
    let head_request = *reply.method == http::Method::HEAD;
    let mut out = Buffer::take();
    rewrite::response_head(
        &mut out,
        &rewrite::ResponseParts {
            status,
            reason: b"",
            request_id: reply.id.as_bytes(),
            // A response to HEAD keeps the Content-Length a GET would have had (RFC 9110 §9.3.2).
            framing: if head_request {
                OutFraming::AsSent
            } else {
                OutFraming::None
            },
            forward_load_header: reply.config.telemetry.forward_load_header,
            close: false,
            upgrade: false,
            edits: reply.edits,
        },
        fields,
    );
    let mut response = h2_fields(Response::builder().status(status), &out);
    if let (Some(n), false) = (length, head_request) {
        response = response.header(http::header::CONTENT_LENGTH, n);
    }
    response
}

fn h2_response_with(
    response: http::response::Builder,
    body: H2Response,
    id: &RequestId,
) -> Response<H2Response> {
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
