//! Forwarding a request to a worker and recording how it went: pick a worker (`route.rs`,
//! `policy.rs`), send the head and stream the body on a pooled connection (`upstream.rs`), read
//! the response head; retry on another worker when that is safe and the budget allows; feed
//! every outcome to the worker's estimates, its ejection, the in-band telemetry and the metrics.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum_telemetry::LoadReport;
use http::Method;
use tokio::net::TcpStream;

use crate::access_log::Trace;
use crate::buffers::Fields;
use crate::client::{ClientFault, H1Client};
use crate::errors::{ErrorCode, ProxyError};
use crate::fleet::{now_us, InFlight, Outcome, OutlierSettings, Worker};
use crate::http1::{self, BodyLength, ChunkedDecoder, ResponseHead};
use crate::metrics::{RequestLabels, RetryLabels, RouteLabels};
use crate::rewrite;
use crate::route::{Group, PickError, RouteEntry, Router};
use crate::state::Shared;
use crate::upstream::{BodyFailure, HeadError, WorkerConn};

/// A request on its way to a worker: the head workers get, and where its body comes from.
pub struct Request<'a, 'c> {
    pub method: &'a Method,
    pub head: &'a [u8],
    pub body: RequestBody<'c>,
    /// Safe to send again after a failure that may have reached the worker.
    pub replayable: bool,
    /// How the attempts went, for the access log.
    pub trace: Trace,
    /// What the request brings to the pick (its consistent-hash key).
    pub affinity: crate::policy::Affinity,
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
        /// An HTTP/1.1 client: interim (1xx) responses are relayed to it.
        takes_interim: bool,
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

    /// Relays a worker's interim (1xx) head to a client that takes them. HTTP/1.0 clients
    /// must not get one (RFC 9110 §15.2); hyper's server side cannot send one on HTTP/2, so
    /// there it is dropped.
    async fn relay_interim(&mut self, interim: &[u8]) -> Result<(), ProxyError> {
        match self {
            RequestBody::H1 {
                client,
                takes_interim: true,
                idle,
                ..
            } => client
                .write(interim, *idle)
                .await
                .map_err(client_fault_error),
            _ => Ok(()),
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
                ..
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

/// Where an HTTP/1.1 request body goes: an HTTP/1.1 worker takes the bytes as received (a
/// chunked body's framing too), an HTTP/2 worker only the data.
pub(crate) trait BodySink {
    /// `raw` is what the client sent; `data` the payload within it.
    async fn put(&mut self, raw: &[u8], data: &[u8]) -> io::Result<()>;
}

impl BodySink for WorkerConn {
    async fn put(&mut self, raw: &[u8], _data: &[u8]) -> io::Result<()> {
        self.write_all(raw).await
    }
}

/// Copies an HTTP/1.1 request body from the client to `sink` (a chunked body is validated on
/// the way, so both ends agree where it ends).
pub(crate) async fn pump_h1_body(
    client: &mut H1Client,
    length: BodyLength,
    limit: u64,
    idle: Duration,
    decoder: &mut Option<ChunkedDecoder>,
    sink: &mut impl BodySink,
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
        let pending = client.pending();
        let (take, data, done) = match decoder.as_mut() {
            None => {
                let take = (left.min(pending.len() as u64)) as usize;
                (take, &pending[..take], false)
            }
            Some(d) => {
                let step = d
                    .feed(pending)
                    .map_err(|e| BodyFailure::Client(chunk_error(e)))?;
                let data = step.data.map_or(&b""[..], |span| span.of(pending));
                (step.consumed, data, step.done)
            }
        };
        sink.put(&pending[..take], data)
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

pub fn client_fault_error(f: ClientFault) -> ProxyError {
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

/// One way of putting a request to a worker and reading the head of its answer: HTTP/1.1 on
/// fulcrum's own codec ([`Request`]) or HTTP/2 through hyper (`upstream_h2::H2Exchange`).
/// [`forward_with`] picks, retries and records the same way for both.
pub(crate) trait Exchange {
    /// A worker's answer whose head has been read.
    type Answer;
    fn status(answer: &Self::Answer) -> u16;
    fn trace(&mut self) -> &mut Trace;
    fn affinity(&self) -> crate::policy::Affinity;
    /// Safe to send again after a failure that may have reached the worker.
    fn replayable(&self) -> bool;
    /// Some of the body has gone to a worker, so it cannot be sent again.
    fn body_started(&self) -> bool;
    /// One try on `worker`, bounded by `deadline`.
    async fn attempt(
        &mut self,
        worker: &Worker,
        group: &Group,
        deadline: tokio::time::Instant,
    ) -> Result<Self::Answer, AttemptFailure>;
}

impl Exchange for Request<'_, '_> {
    type Answer = (WorkerConn, ResponseHead, Fields);

    fn status(answer: &Self::Answer) -> u16 {
        answer.1.status
    }

    fn trace(&mut self) -> &mut Trace {
        &mut self.trace
    }

    fn affinity(&self) -> crate::policy::Affinity {
        self.affinity
    }

    fn replayable(&self) -> bool {
        self.replayable
    }

    fn body_started(&self) -> bool {
        self.body.started()
    }

    async fn attempt(
        &mut self,
        worker: &Worker,
        group: &Group,
        deadline: tokio::time::Instant,
    ) -> Result<Self::Answer, AttemptFailure> {
        attempt_once(worker, group, self, deadline).await
    }
}

/// Why one attempt failed, and whether another worker may be tried.
pub(crate) enum AttemptFailure {
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

/// Picks a worker and forwards over HTTP/1.1, retrying on another worker within the budget
/// when safe.
pub async fn forward(
    shared: &Arc<Shared>,
    router: &Router,
    route: &RouteEntry,
    req: &mut Request<'_, '_>,
    started: Instant,
) -> Result<Forwarded, ProxyError> {
    let ((conn, head, fields), flight) = forward_with(shared, router, route, req, started).await?;
    Ok(Forwarded {
        conn,
        head,
        fields,
        flight,
        group: route.group.clone(),
    })
}

/// Picks a worker and puts `req` to it, retrying on another worker within the budget when
/// safe; the answer comes with the in-flight slot it holds until its body is done.
pub(crate) async fn forward_with<E: Exchange>(
    shared: &Arc<Shared>,
    router: &Router,
    route: &RouteEntry,
    req: &mut E,
    started: Instant,
) -> Result<(E::Answer, InFlight), ProxyError> {
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
            .acquire(&state.tried, req.affinity(), &shared.fleet.signal, deadline)
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
        req.trace().begin(attempt, worker.addr, t0 - started);
        let result = req.attempt(&worker, group, deadline).await;
        let latency = t0.elapsed();
        req.trace().worker_time = Some(latency);
        match result {
            Ok(answer) => {
                let status = E::status(&answer);
                req.trace().worker_status = Some(status);
                if wants_status_retry(req, group, status, attempt, &state.tried) {
                    if group.budget.try_retry() {
                        record_outcome(shared, group, &worker, Outcome::Failure, latency);
                        state.failed(
                            worker_error(group, &format!("it answered {status}")),
                            "status",
                        );
                        state.paid = true;
                        continue;
                    }
                    // Counted like any other refused retry: a spent budget must show.
                    count_retry_denied(shared, group);
                }
                let outcome = if status >= 500 {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                record_outcome(shared, group, &worker, outcome, latency);
                return Ok((answer, flight));
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
    req: &impl Exchange,
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
            req.replayable() && !req.body_started()
        }
        AttemptFailure::Deadline | AttemptFailure::Client(_) => false,
    }
}

/// A 502/503/504 to a request that is safe to repeat is worth another worker while attempts
/// and untried workers remain; with none, the client gets this worker's own answer.
fn wants_status_retry(
    req: &impl Exchange,
    group: &Group,
    status: u16,
    attempt: u32,
    tried: &[SocketAddr],
) -> bool {
    let retry = &group.settings.retry;
    matches!(status, 502..=504)
        && req.replayable()
        && !req.body_started()
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
            _ => {
                let t0 = Instant::now();
                let c = connect(worker, group, deadline).await?;
                req.trace.connect = Some(t0.elapsed());
                c
            }
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
        let read = final_head(&mut conn, req, &mut fields, head_deadline)
            .await
            .map_err(AttemptFailure::Client)?;
        match read {
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

/// Reads the worker's final response head (101 counts: the connection switches), relaying
/// interim 1xx heads to the client on the way (RFC 9110 §15.2: a proxy forwards the 1xx it
/// did not ask for). The outer error is the client's, failing to take an interim head.
async fn final_head(
    conn: &mut WorkerConn,
    req: &mut Request<'_, '_>,
    fields: &mut Vec<http1::Field>,
    deadline: tokio::time::Instant,
) -> Result<Result<ResponseHead, HeadError>, ProxyError> {
    loop {
        let head = match conn.read_head(req.method, fields, deadline).await {
            Ok(head) if (100..200).contains(&head.status) && head.status != 101 => head,
            read => return Ok(read),
        };
        let mut interim = Vec::new();
        rewrite::interim_head(
            &mut interim,
            head.status,
            rewrite::pairs(fields, conn.pending()),
        );
        conn.consume(head.head_len);
        req.body.relay_interim(&interim).await?;
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
    let connect = worker
        .pool
        .connect(worker.addr, timeout, &group.settings.transport);
    match tokio::time::timeout_at(deadline, connect).await {
        Err(_) => Err(AttemptFailure::Deadline),
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => {
            let refused = e.refused();
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

pub(crate) fn request_timeout(limit: Duration) -> ProxyError {
    ProxyError::new(
        ErrorCode::RequestTimeout,
        format!("the request took longer than {limit:?}"),
    )
}

pub(crate) fn overloaded(group: &Group) -> ProxyError {
    ProxyError::new(
        ErrorCode::Overloaded,
        format!(
            "every worker of target group `{}` is at its in-flight limit and the wait queue is full or timed out",
            group.name
        ),
    )
    .retry_after(1)
}

pub(crate) fn worker_error(group: &Group, what: &str) -> ProxyError {
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

pub(crate) fn no_healthy_workers(group: &Group) -> ProxyError {
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
pub fn passive_ejection(
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
    let find = |name: &[u8]| rewrite::find(fields, buf, name);
    record_answer(shared, route, worker, head.status, find, started);
}

/// The same for any answer: `status`, and `find` to look up a response field by its
/// lower-case name.
pub fn record_answer<'f>(
    shared: &Shared,
    route: &RouteEntry,
    worker: &Worker,
    status: u16,
    find: impl Fn(&[u8]) -> Option<&'f [u8]>,
    started: Instant,
) {
    let now = now_us();
    if let Some(report) = find(b"endpoint-load-metrics")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| LoadReport::parse(v).ok())
    {
        worker.store_report(crate::config::TelemetrySource::Inband, &report, now);
    }
    if let Some(instance) = find(b"x-fulcrum-instance") {
        let cluster = find(b"x-fulcrum-cluster")
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
            code: status,
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
