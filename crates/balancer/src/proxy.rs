//! The request path: accept → route → pick → forward → record.
//!
//! This file (accept, route, relay), `forward.rs` (forward and record), `route.rs` (which
//! group, which worker slot) and `policy.rs` (which worker) are all of it. A client connection
//! is accepted and, unless it speaks HTTP/2 (served by hyper through `h2.rs`, its requests
//! handled in `proxy_h2.rs`), served here on fulcrum's own HTTP/1.1 codec (`http1`): a request
//! head is parsed and checked, routed by longest path prefix to a target group, rewritten
//! (`rewrite.rs`) and forwarded (`forward.rs`); the response head is relayed and its body
//! streamed back, or a `101` tunnelled. A target group that speaks HTTP/2 to its workers gets
//! the request through `upstream_h2.rs`, its body fed while the answer is awaited.
//!
//! Each phase has its own timeout, blamed on whoever stalls: the client's head
//! (`client_header`), its body (`client_body_idle`), its reading of the response
//! (`client_write_idle`); the worker's connect, response head (`response_timeout`, from the
//! end of the request body) and response body (`worker_body_idle`). Only the worker's count
//! towards its ejection.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::access_log::{text_of, Record, Served, Trace};
use crate::buffers::{Buffer, Fields};
use crate::client::{ClientFault, ClientStream, ConnInfo, ConnectionGuard, H1Client};
use crate::config::rules::HeaderEdits;
use crate::config::Config;
use crate::errors::{ErrorCode, ProxyError};
use crate::fleet::{InFlight, Worker};
use crate::forward::{
    body_too_large, forward, forward_with, is_idempotent, passive_ejection, record_answer,
    record_response, BodySent, Forwarded, Request, RequestBody,
};
use crate::h2_channel::BodySource;
use crate::http1::{self, BodyLength, RequestHead, ResponseBody, TargetForm, Version};
use crate::policy::Affinity;
use crate::proxy_h2::serve_h2;
use crate::rewrite::{self, header_pairs, OutFraming, RequestParts, ResponseParts};
use crate::route::{sticky_edits, Decision, Group, RouteEntry, Router};
use crate::rules::{HeaderSource, RedirectFrom, RequestView};
use crate::spread::{Inbox, Seat};
use crate::state::{RequestId, Shared};
use crate::transport::WorkerProtocol;
use crate::upstream::{BodyFailure, BodyFault, BodyPiece, BodyReader, WorkerConn};
use crate::upstream_h2::H2Exchange;

// ───────────────────────────── accept ─────────────────────────────

/// A connection accepted on one proxy thread, for another to serve.
pub struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    guard: ConnectionGuard,
}

/// Accepts on `listener` until shutdown begins, and serves each connection on this thread or
/// hands it to one with fewer (`spread.rs`).
pub async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    seat: Seat<Handoff>,
) {
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
        let guard = ConnectionGuard::new(&shared, seat.place());
        let _ = stream.set_nodelay(true);
        if guard.thread() == seat.index {
            tokio::spawn(serve_connection(
                shared.clone(),
                stream,
                peer,
                tls.clone(),
                guard,
            ));
            continue;
        }
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let handoff = Handoff {
            stream,
            peer,
            tls: tls.clone(),
            guard,
        };
        if let Err(h) = seat.hand_over(handoff.guard.thread(), handoff) {
            // That thread is shutting down; this one still serves what it accepted.
            serve_handed_over(&shared, h);
        }
    }
}

/// Serves the connections other threads hand to this one, until shutdown begins; meanwhile
/// hands this thread's access-log lines to the writer at least every 100 ms.
pub async fn take_handoffs(shared: Arc<Shared>, mut inbox: Inbox<Handoff>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shared.drain.stopping() => return,
            handoff = inbox.recv() => match handoff {
                Some(h) => serve_handed_over(&shared, h),
                None => return,
            },
            _ = tick.tick() => shared.access_log.flush_local(),
        }
    }
}

fn serve_handed_over(shared: &Arc<Shared>, h: Handoff) {
    // Registers the socket with this thread's reactor.
    if let Ok(stream) = TcpStream::from_std(h.stream) {
        tokio::spawn(serve_connection(
            shared.clone(),
            stream,
            h.peer,
            h.tls,
            h.guard,
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
    let listener = stream.local_addr().ok();
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
                    ConnInfo::new(peer, listener, None),
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
                    let version = crate::client::tls_version(s.get_ref().1);
                    let h2 = serve_h2(
                        shared,
                        s,
                        ConnInfo::new(peer, listener, Some(version)),
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
    let tls = match &stream {
        ClientStream::Tls(s) => Some(crate::client::tls_version(s.get_ref().1)),
        ClientStream::Plain(_) => None,
    };
    let mut client = H1Client::new(stream, ConnInfo::new(peer, listener, tls));
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

// ───────────────────────────── HTTP/1.1 clients ─────────────────────────────

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
                let (id, written) = (shared.ids.next(), client.bytes_out);
                let _ = answer_error(client, &e, id, false, &config).await;
                if config.access_log.enabled {
                    log_rejected_head(shared, client, &e, id, written, &config);
                }
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

/// The access-log line of a head refused before it could be read as a request.
fn log_rejected_head(
    shared: &Shared,
    client: &H1Client,
    e: &ProxyError,
    id: RequestId,
    written_before: u64,
    config: &Config,
) {
    let record = Record {
        time: Some(SystemTime::now()),
        client: Some(client.info.peer),
        listener: client.info.listener,
        protocol: "HTTP/1.1",
        tls: client.info.tls,
        method: "-".into(),
        target: "-".into(),
        status: e.status().as_u16(),
        bytes_in: client.pending().len() as u64,
        bytes_out: client.bytes_out - written_before,
        request_id: id.as_str().to_owned(),
        error: Some(e.code.as_str()),
        ..Record::default()
    };
    shared.access_log.write(record, config.access_log.format);
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

/// One request on an HTTP/1.1 connection, from its parsed head to the end of its response,
/// then its access-log line. Returns whether the connection may serve another.
async fn exchange(
    shared: &Arc<Shared>,
    client: &mut H1Client,
    head: RequestHead,
    fields: &mut Fields,
    config: &Arc<Config>,
) -> bool {
    let started = Instant::now();
    let router = shared.router.load_full();
    let id = rewrite::find(fields, client.pending(), b"x-request-id")
        .and_then(RequestId::from_client)
        .unwrap_or_else(|| shared.ids.next());
    let record = config
        .access_log
        .enabled
        .then(|| h1_record(client, &head, fields, &id));
    let served = serve_request(shared, &router, client, head, fields, id, started).await;
    let keep = served.keep;
    if let Some(mut r) = record {
        r.bytes_in = client.bytes_in - r.bytes_in;
        r.bytes_out = client.bytes_out - r.bytes_out;
        served.fill(&mut r, started);
        shared.access_log.write(r, config.access_log.format);
    }
    keep
}

/// A rule's redirect or fixed response to an HTTP/1.1 request, head and body.
fn rule_answer(
    decision: &Decision<'_>,
    head: &RequestHead,
    client: &H1Client,
    id: &RequestId,
    edits: Option<&HeaderEdits>,
    close: bool,
) -> Vec<u8> {
    let buf = client.pending();
    let from = RedirectFrom {
        protocol: client.info.hop.proto,
        host: head.host.map_or(&b""[..], |h| h.of(buf)),
        port: client.info.listener.map_or(80, |l| l.port()),
        path: path_of(head, buf),
        query: query_of(head, buf),
    };
    match decision.answer() {
        Some(a) => crate::rules::answer(a, &from, id.as_bytes(), close, edits),
        None => Vec::new(),
    }
}

/// The access-log record of an HTTP/1.1 request as far as its head tells, with the
/// connection's byte counts so far (the request's own are the difference at its end).
fn h1_record(client: &H1Client, head: &RequestHead, fields: &Fields, id: &RequestId) -> Record {
    let buf = client.pending();
    Record {
        time: Some(SystemTime::now()),
        client: Some(client.info.peer),
        listener: client.info.listener,
        protocol: if head.version == Version::Http10 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        },
        tls: client.info.tls,
        method: head.method.as_str().to_owned(),
        target: text_of(head.target.of(buf)),
        host: head.host.map(|h| text_of(h.of(buf))),
        user_agent: rewrite::find(fields, buf, b"user-agent").map(text_of),
        request_id: id.as_str().to_owned(),
        bytes_in: client.bytes_in,
        bytes_out: client.bytes_out,
        ..Record::default()
    }
}

/// Routes, forwards and relays one HTTP/1.1 request (or answers it with an error).
async fn serve_request<'r>(
    shared: &Arc<Shared>,
    router: &'r Router,
    client: &mut H1Client,
    head: RequestHead,
    fields: &mut Fields,
    id: RequestId,
    started: Instant,
) -> Served<'r> {
    let config = &router.config;
    let head_len = head.head_len;
    let wants_close =
        head.connection.close || (head.version == Version::Http10 && !head.connection.keep_alive);
    let from = (client.info.peer, client.info.hop.proto);
    let decision = check_and_decide(router, &head, fields, client.pending(), from);
    let (decision, affinity) = match decision {
        Ok(d) => d,
        Err(e) => {
            shared.metrics.error(e.code.as_str());
            client.consume(head_len);
            // Unread body bytes would be taken for the next request: close instead.
            let close = wants_close || head.body != BodyLength::None;
            let keep = answer_error(client, &e, id, close, config).await && !close;
            return Served::refused(keep, &e, None, Trace::default());
        }
    };
    if let Some(rule) = decision.rule() {
        shared.metrics.rule_matched(&rule.label);
    }
    let (request_edits, response_edits) = decision.edits();
    let route = match decision {
        Decision::Forward { route, .. } => route,
        answered => {
            let close = wants_close || head.body != BodyLength::None;
            let made = rule_answer(&answered, &head, client, &id, response_edits, close);
            client.consume(head_len);
            let written = client.write(&made, config.timeouts.client_write_idle).await;
            return Served::answered(written.is_ok() && !close, &answered);
        }
    };
    let out = outgoing(&head, fields, client, &id, request_edits);
    if route.group.settings.transport.protocol == WorkerProtocol::H2 {
        let call = ViaH2 {
            route,
            id,
            started,
            affinity,
            edits: response_edits,
            close: wants_close,
        };
        // Boxed: its state (an HTTP/2 exchange, a body feed) would otherwise make every
        // request's future, boxed per request, several times larger.
        return Box::pin(serve_via_h2(shared, router, client, &head, &out, call)).await;
    }
    let upgrade_asked = upgrade_of(&head, client.pending()).is_some();
    client.consume(head_len);
    let body = RequestBody::H1 {
        client,
        length: head.body,
        expect_continue: head.expect_continue,
        takes_interim: head.version == Version::Http11,
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
        trace: Trace::default(),
        affinity,
    };
    let result = forward(shared, router, route, &mut request, started).await;
    let trace = std::mem::take(&mut request.trace);
    let RequestBody::H1 { client, sent, .. } = request.body else {
        unreachable!("an HTTP/1.1 request keeps its HTTP/1.1 body");
    };
    let body_done = sent_all(head.body, sent);
    match result {
        Ok(fwd) => {
            let fields = rewrite::pairs(&fwd.fields, fwd.conn.pending());
            let merged = sticky_edits(route, fwd.flight.worker().addr, fields, response_edits);
            let ctx = Relay {
                shared,
                route,
                id: &id,
                config,
                edits: merged.as_ref().or(response_edits),
                method: &head.method,
                client_http10: head.version == Version::Http10,
                upgrade_asked,
                close: wants_close || !body_done,
                started,
            };
            let (keep, status, error) = relay_h1(client, fwd, &ctx).await;
            Served {
                keep,
                error,
                ..Served::forwarded(status, route, trace)
            }
        }
        Err(e) => {
            let close = wants_close || !body_done;
            refuse_forwarded(shared, client, e, (id, close), route, trace, config).await
        }
    }
}

/// What serving an HTTP/1.1 request through an HTTP/2 worker needs besides the request.
struct ViaH2<'a, 'r> {
    route: &'r RouteEntry,
    id: RequestId,
    started: Instant,
    affinity: Affinity,
    /// A rule's changes to the response's fields.
    edits: Option<&'a HeaderEdits>,
    /// The client asked to close after this request.
    close: bool,
}

/// An HTTP/1.1 request for a target group that speaks HTTP/2 to its workers: the head an
/// HTTP/1.1 worker would get, as HTTP/2 (an `Upgrade` is dropped, as a server that does not
/// switch would ignore it); the body fed to the worker's stream while its answer is awaited.
async fn serve_via_h2<'r>(
    shared: &Arc<Shared>,
    router: &'r Router,
    client: &mut H1Client,
    head: &RequestHead,
    out: &[u8],
    call: ViaH2<'_, 'r>,
) -> Served<'r> {
    let config = &router.config;
    let route = call.route;
    let buf = client.pending();
    let target = match head.target_form {
        TargetForm::Absolute { path_and_query, .. } => path_and_query.of(buf),
        _ => head.target.of(buf),
    };
    let parts = crate::upstream_h2::upstream_parts(
        &head.method,
        head.host.map(|h| h.of(buf)),
        target,
        out,
        false,
        &route.group.settings.transport,
    );
    client.consume(head.head_len);
    let has_body = head.body != BodyLength::None;
    let parts = match parts {
        Ok(p) => p,
        Err(e) => {
            let answer = (call.id, call.close || has_body);
            return refuse_forwarded(shared, client, e, answer, route, Trace::default(), config)
                .await;
        }
    };
    let (feeder, fed) = crate::upstream_h2::fed_body();
    let mut exchange = H2Exchange {
        parts,
        body: if has_body {
            BodySource::Once(Some(fed))
        } else {
            BodySource::Whole(Bytes::new())
        },
        replayable: is_idempotent(&head.method) && !has_body,
        trace: Trace::default(),
        affinity: call.affinity,
    };
    let (answer, body_done) = {
        let feeding = feed_h2(client, head, route.max_body_bytes, config, feeder);
        let forwarding = forward_with(shared, router, route, &mut exchange, call.started);
        forward_while_feeding(forwarding, feeding).await
    };
    let trace = std::mem::take(&mut exchange.trace);
    let close = call.close || !body_done;
    match answer {
        Ok((response, flight)) => {
            let fields = header_pairs(response.headers());
            let fields = fields.iter().copied();
            let merged = sticky_edits(route, flight.worker().addr, fields, call.edits);
            let ctx = Relay {
                shared,
                route,
                id: &call.id,
                config,
                edits: merged.as_ref().or(call.edits),
                method: &head.method,
                client_http10: head.version == Version::Http10,
                upgrade_asked: false,
                close,
                started: call.started,
            };
            let (keep, status, error) = relay_h2_to_h1(client, response, flight, &ctx).await;
            Served {
                keep,
                error,
                ..Served::forwarded(status, route, trace)
            }
        }
        Err(e) => refuse_forwarded(shared, client, e, (call.id, close), route, trace, config).await,
    }
}

/// Feeds an HTTP/1.1 request body to an HTTP/2 worker's stream; `Err` with the client's
/// error when the body could not be read whole (the stream is then reset, not ended).
async fn feed_h2(
    client: &mut H1Client,
    head: &RequestHead,
    limit: u64,
    config: &Config,
    mut feeder: crate::upstream_h2::FedBody,
) -> Result<(), ProxyError> {
    let idle = config.timeouts.client_body_idle;
    if head.body == BodyLength::None {
        return Ok(());
    }
    if head.expect_continue && client.pending().is_empty() {
        let asked = client.write(b"HTTP/1.1 100 Continue\r\n\r\n", idle).await;
        asked.map_err(crate::forward::client_fault_error)?;
    }
    let mut decoder = None;
    let pumped =
        crate::forward::pump_h1_body(client, head.body, limit, idle, &mut decoder, &mut feeder)
            .await;
    match pumped {
        Ok(()) => Ok(()),
        Err(BodyFailure::Client(e)) => {
            feeder.abort(&e.message).await;
            Err(e)
        }
        // The worker's side: its stream ended or was reset; the forward reports it.
        Err(BodyFailure::Worker(_)) => Ok(()),
    }
}

/// Runs the forward and the body feed together, until the forward has an answer: a worker
/// may answer before the body ends. The client's own error wins over what it caused at the
/// worker; the flag says whether the body was read whole.
async fn forward_while_feeding<A>(
    forwarding: impl std::future::Future<Output = Result<A, ProxyError>>,
    feeding: impl std::future::Future<Output = Result<(), ProxyError>>,
) -> (Result<A, ProxyError>, bool) {
    tokio::pin!(forwarding, feeding);
    let mut fed = None;
    let answer = loop {
        tokio::select! {
            answer = &mut forwarding => break answer,
            result = &mut feeding, if fed.is_none() => fed = Some(result),
        }
    };
    match (answer, fed) {
        (Err(_), Some(Err(client))) => (Err(client), false),
        (answer, fed) => (answer, matches!(fed, Some(Ok(())))),
    }
}

/// Relays an HTTP/2 worker's answer to an HTTP/1.1 client: the head as for any worker, the
/// body chunked when its length is unknown (its trailers in the last chunk), or ended by the
/// close for an HTTP/1.0 client. Returns what [`relay_h1`] does.
async fn relay_h2_to_h1(
    client: &mut H1Client,
    response: Response<Incoming>,
    flight: InFlight,
    ctx: &Relay<'_>,
) -> (bool, u16, Option<&'static str>) {
    let (head, mut body) = response.into_parts();
    let status = head.status.as_u16();
    let find = |name: &[u8]| {
        let name = std::str::from_utf8(name).ok()?;
        head.headers.get(name).map(|v| v.as_bytes())
    };
    record_answer(
        ctx.shared,
        ctx.route,
        flight.worker(),
        status,
        find,
        ctx.started,
    );
    let length = find(b"content-length").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
    let bodiless = *ctx.method == Method::HEAD || matches!(status, 100..=199 | 204 | 304);
    let (framing, chunked, close) = match length {
        _ if bodiless => (OutFraming::AsSent, false, ctx.close),
        Some(n) => (OutFraming::Length(n), false, ctx.close),
        None if ctx.client_http10 => (OutFraming::Close, false, true),
        None => (OutFraming::Chunked(b"chunked"), true, ctx.close),
    };
    let mut out = Buffer::take();
    let fields = header_pairs(&head.headers);
    rewrite::response_head(
        &mut out,
        &ctx.response_parts(status, framing, close),
        fields.iter().copied(),
    );
    let write_idle = ctx.config.timeouts.client_write_idle;
    let body_idle = ctx.route.group.settings.worker_body_idle;
    let relayed = async {
        client
            .write(&out, write_idle)
            .await
            .map_err(ClientFault::code)?;
        if bodiless {
            return Ok(());
        }
        relay_frames(client, &mut body, chunked, body_idle, write_idle).await
    }
    .await;
    match relayed {
        Ok(()) => (!close, status, None),
        Err(fault) => {
            abandoned(ctx, &ctx.route.group, flight.worker(), fault);
            (false, status, Some(fault))
        }
    }
}

/// Writes an HTTP/2 response body's frames to an HTTP/1.1 client, chunk-framed if `chunked`.
async fn relay_frames(
    client: &mut H1Client,
    body: &mut Incoming,
    chunked: bool,
    body_idle: Duration,
    write_idle: Duration,
) -> Result<(), &'static str> {
    use http_body_util::BodyExt as _;
    let mut out = Buffer::take();
    loop {
        let frame = match tokio::time::timeout(body_idle, body.frame()).await {
            Err(_) => return Err("worker_body_idle"),
            Ok(Some(Err(_))) => return Err("worker_body_error"),
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => {
                if chunked {
                    out.extend_from_slice(http1::LAST_CHUNK);
                }
                break;
            }
        };
        match frame.into_data() {
            Ok(data) if chunked => {
                http1::encode_chunk_header(data.len(), &mut out);
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
            Ok(data) => out.extend_from_slice(&data),
            Err(frame) => {
                if let (Ok(trailers), true) = (frame.into_trailers(), chunked) {
                    out.extend_from_slice(b"0\r\n");
                    for (name, value) in &trailers {
                        out.extend_from_slice(name.as_str().as_bytes());
                        out.extend_from_slice(b": ");
                        out.extend_from_slice(value.as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"\r\n");
                }
                break;
            }
        }
        client
            .write(&out, write_idle)
            .await
            .map_err(ClientFault::code)?;
        out.clear();
    }
    client
        .write(&out, write_idle)
        .await
        .map_err(ClientFault::code)
}

/// Answers a routed request that could not be forwarded with its error (`answer`: the request
/// id, and whether the connection closes after it), counted.
async fn refuse_forwarded<'r>(
    shared: &Shared,
    client: &mut H1Client,
    e: ProxyError,
    (id, close): (RequestId, bool),
    route: &'r RouteEntry,
    trace: Trace,
    config: &Config,
) -> Served<'r> {
    shared.metrics.error(e.code.as_str());
    let keep = answer_error(client, &e, id, close, config).await && !close;
    Served::refused(keep, &e, Some(route), trace)
}

/// Whether a request body was sent whole (so the connection is at the next request).
fn sent_all(length: BodyLength, sent: BodySent) -> bool {
    match length {
        BodyLength::None => true,
        _ => sent == BodySent::Whole,
    }
}

/// Limits on the request head, then what the rules and routes decide.
fn check_and_decide<'r>(
    router: &'r Router,
    head: &RequestHead,
    fields: &Fields,
    buf: &[u8],
    (peer, protocol): (SocketAddr, &str),
) -> Result<(Decision<'r>, Affinity), ProxyError> {
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
    let view = RequestView {
        host: head.host.map(|h| h.of(buf)),
        path,
        query: query_of(head, buf),
        method: head.method.as_str(),
        source: peer.ip(),
        protocol,
        headers: &H1Headers { fields, buf },
    };
    let decision = router.decide(&view)?;
    let mut affinity = Affinity::default();
    if let Decision::Forward { route, .. } = &decision {
        if let BodyLength::Length(len) = head.body {
            if len > route.max_body_bytes {
                return Err(body_too_large(route.max_body_bytes));
            }
        }
        affinity = route.group.affinity(&view);
    }
    Ok((decision, affinity))
}

/// An HTTP/1.1 request's fields, for rule conditions.
struct H1Headers<'a> {
    fields: &'a Fields,
    buf: &'a [u8],
}

impl HeaderSource for H1Headers<'_> {
    fn any_value(&self, name: &str, check: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.fields.iter().any(|f| {
            f.name.of(self.buf).eq_ignore_ascii_case(name.as_bytes()) && check(f.value.of(self.buf))
        })
    }
}

/// The query of the target, without its `?`.
fn query_of<'b>(head: &RequestHead, buf: &'b [u8]) -> &'b [u8] {
    let target = head.target.of(buf);
    target
        .iter()
        .position(|b| *b == b'?')
        .map_or(&b""[..], |i| &target[i + 1..])
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

/// The protocol a request asks to switch to, when the worker is asked too: HTTP/2 by upgrade
/// (`h2c`) is a hop's business and stops here.
fn upgrade_of<'b>(head: &RequestHead, buf: &'b [u8]) -> Option<&'b [u8]> {
    head.upgrade
        .map(|u| u.of(buf))
        .filter(|u| !u.eq_ignore_ascii_case(b"h2c"))
}

/// The head workers get for this request, as bytes.
fn outgoing(
    head: &RequestHead,
    fields: &Fields,
    client: &H1Client,
    id: &RequestId,
    edits: Option<&HeaderEdits>,
) -> Buffer {
    let buf = client.pending();
    let target = match head.target_form {
        TargetForm::Absolute { path_and_query, .. } => path_and_query.of(buf),
        _ => head.target.of(buf),
    };
    // An absolute-form target with an empty path (`http://h?x=1`) has the path `/`.
    let rooted;
    let target: &[u8] = match target.first() {
        None => b"/",
        Some(b'?') => {
            rooted = [b"/", target].concat();
            &rooted
        }
        Some(_) => target,
    };
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
            edits,
        },
        fields_iter,
        &client.info.hop,
    );
    out
}

// ───────────────────────────── relay ─────────────────────────────

/// What relaying a response needs besides the response.
struct Relay<'a> {
    shared: &'a Arc<Shared>,
    route: &'a RouteEntry,
    id: &'a RequestId,
    config: &'a Config,
    /// A rule's changes to the response's fields.
    edits: Option<&'a HeaderEdits>,
    method: &'a Method,
    client_http10: bool,
    /// The request asked to switch protocols, and the ask went to the worker.
    upgrade_asked: bool,
    /// The client connection closes after this response.
    close: bool,
    started: Instant,
}

impl Relay<'_> {
    /// How the head of a response to an HTTP/1.1 client is written: the worker's `status`,
    /// the `framing` the body goes out with, and whether the connection closes after it.
    fn response_parts<'s>(
        &'s self,
        status: u16,
        framing: OutFraming<'s>,
        close: bool,
    ) -> ResponseParts<'s> {
        ResponseParts {
            status,
            reason: reason(status),
            request_id: self.id.as_bytes(),
            framing,
            forward_load_header: self.config.telemetry.forward_load_header,
            close,
            upgrade: false,
            edits: self.edits,
        }
    }
}

/// Relays a worker's response to an HTTP/1.1 client: head, then body as it comes, then the
/// worker connection back to its pool. Returns whether the client connection may go on, the
/// status the client got, and what cut the response short, if anything.
async fn relay_h1(
    client: &mut H1Client,
    mut fwd: Forwarded,
    ctx: &Relay<'_>,
) -> (bool, u16, Option<&'static str>) {
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
    if head.status == 101 && ctx.upgrade_asked {
        return (tunnel(client, fwd, ctx).await, 101, None);
    }
    if head.status == 101 {
        // RFC 9110 §15.2.2: a server must not switch to a protocol nobody asked for.
        let e = crate::forward::worker_error(&fwd.group, "it switched protocols unasked");
        ctx.shared.metrics.error(e.code.as_str());
        let _ = answer_error(client, &e, *ctx.id, true, ctx.config).await;
        return (false, e.status().as_u16(), Some(e.code.as_str()));
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
        ResponseBody::UntilClose => match codings.as_deref() {
            Some(c) => OutFraming::CodedUntilClose(c),
            None => OutFraming::Close,
        },
    };
    let mut out = Buffer::take();
    let pending = fwd.conn.pending();
    rewrite::response_head(
        &mut out,
        &ctx.response_parts(head.status, framing, close),
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
            (!close, head.status, None)
        }
        Err(fault) => {
            abandoned(ctx, &fwd.group, fwd.flight.worker(), fault);
            (false, head.status, Some(fault))
        }
    }
}

/// A response cut short by `fault`: counted, and held against the worker if it was the
/// worker's doing (a client that went away is not).
fn abandoned(ctx: &Relay<'_>, group: &Group, worker: &Worker, fault: &'static str) {
    ctx.shared
        .metrics
        .abandoned
        .get_or_create(&crate::metrics::ErrorLabels { error: fault })
        .inc();
    if fault.starts_with("worker_") {
        passive_ejection(ctx.shared, group, worker, |now, outlier| {
            worker.record_late_failure(now, outlier)
        });
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
            Some(BodyPiece::Bytes { len, .. }) if out.is_empty() && !dechunk => {
                // Past the head, bytes go to the client straight from the worker's buffer, not
                // copied into `out` first.
                client
                    .write(&conn.pending()[..len], write_idle)
                    .await
                    .map_err(ClientFault::code)?;
                conn.consume(len);
            }
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
            edits: ctx.edits,
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
