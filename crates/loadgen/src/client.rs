//! One generator connection: a keep-alive HTTP/1.1 connection driven inside its own task (no
//! separate connection task, so a request costs no cross-task wake-ups), sending requests in
//! the closed or the open model and recording each outcome.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Uri};
use http_body::Body as _;
use http_body_util::Empty;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::stats::{Outcome, ThreadStats};

const CLUSTER: http::HeaderName = http::HeaderName::from_static("x-fulcrum-cluster");
const INSTANCE: http::HeaderName = http::HeaderName::from_static("x-fulcrum-instance");

fn header_text(v: &Option<HeaderValue>) -> Option<&str> {
    v.as_ref().and_then(|v| v.to_str().ok())
}

/// Where requests go.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    pub path: Uri,
}

struct Conn {
    tx: SendRequest<Empty<Bytes>>,
    conn: Connection<TokioIo<TcpStream>, Empty<Bytes>>,
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, Outcome> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return Err(Outcome::Connect),
        Err(_) => return Err(Outcome::Timeout),
    };
    let _ = stream.set_nodelay(true);
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| Outcome::Io)?;
    Ok(Conn { tx, conn })
}

/// What a response said about who answered.
#[derive(Default)]
pub struct Answer {
    pub status: u16,
    /// The headers themselves (cheap to keep: they share the response's buffer), read as text
    /// only when recorded.
    pub cluster: Option<HeaderValue>,
    pub instance: Option<HeaderValue>,
}

/// Sends one request and reads the whole response, driving the connection in place.
async fn exchange(c: &mut Conn, req: Request<Empty<Bytes>>) -> Result<Answer, Outcome> {
    let Conn { tx, conn } = c;
    // Ready: the previous exchange left the connection idle (or closed).
    std::future::poll_fn(|cx| {
        if conn.poll_without_shutdown(cx).is_ready() {
            return Poll::Ready(Err(Outcome::Io));
        }
        tx.poll_ready(cx).map_err(|_| Outcome::Io)
    })
    .await?;
    let mut response = pin!(tx.send_request(req));
    let resp = std::future::poll_fn(|cx| {
        let alive = conn.poll_without_shutdown(cx).is_pending();
        match response.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(r.map_err(|_| Outcome::Io)),
            Poll::Pending if alive => Poll::Pending,
            Poll::Pending => Poll::Ready(Err(Outcome::Io)),
        }
    })
    .await?;
    let answer = Answer {
        status: resp.status().as_u16(),
        cluster: resp.headers().get(CLUSTER).cloned(),
        instance: resp.headers().get(INSTANCE).cloned(),
    };
    let mut body = resp.into_body();
    std::future::poll_fn(|cx| loop {
        let _ = conn.poll_without_shutdown(cx);
        match std::pin::Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(Some(Ok(_))) => continue,
            Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(Outcome::Io)),
            Poll::Ready(None) => return Poll::Ready(Ok(())),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await?;
    Ok(answer)
}

/// The request schedule a connection draws from.
pub enum Schedule {
    /// Closed model: take the next of `total` requests (shared by every connection of every
    /// thread) as soon as the previous one ends.
    Closed {
        next: std::sync::Arc<std::sync::atomic::AtomicU64>,
        total: u64,
    },
    /// Open model: this thread's constant schedule, `interval` apart from `start`, until `end`;
    /// `next` is shared by the thread's connections.
    Open {
        next: Rc<Cell<u64>>,
        start: Instant,
        interval: Duration,
        end: Instant,
    },
}

/// Shared settings of one thread's connections.
pub struct Run {
    pub target: Target,
    pub timeout: Duration,
    /// When the first request may go (warm-up, if any, starts here).
    pub start: Instant,
    /// Responses completing before this are warm-up: sent, not measured.
    pub measure_from: Instant,
    /// Open model: the end of the schedule; completions inside `[measure_from, window_end)`
    /// make the achieved rate.
    pub window_end: Option<Instant>,
    /// Nothing is sent after this (open model: the schedule's end plus one timeout).
    pub stop_at: Instant,
}

/// Late requests: sent more than this after their intended time because the connection was
/// still busy when they were due.
const LATE: Duration = Duration::from_millis(1);

/// One connection's loop, until the schedule is exhausted.
pub async fn connection(
    run: Rc<Run>,
    schedule: Rc<Schedule>,
    stats: Rc<std::cell::RefCell<ThreadStats>>,
) -> u64 {
    let mut conn: Option<Conn> = None;
    let template = {
        let mut r = Request::new(Empty::<Bytes>::new());
        *r.uri_mut() = run.target.path.clone();
        r.headers_mut()
            .insert(http::header::HOST, run.target.host.clone());
        r.headers_mut().insert(
            http::header::USER_AGENT,
            HeaderValue::from_static("fulcrum-bench"),
        );
        r
    };
    let mut unsent = 0u64;
    // Nobody sends before the run's start, so warm-up and measurement begin on time.
    tokio::time::sleep_until(run.start.into()).await;
    loop {
        // When should this request have gone out?
        let intended = match &*schedule {
            Schedule::Closed { next, total } => {
                if next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= *total {
                    break;
                }
                None
            }
            Schedule::Open {
                next,
                start,
                interval,
                end,
            } => {
                let i = next.get();
                let at = *start + interval.mul_f64(i as f64);
                if at >= *end {
                    break;
                }
                next.set(i + 1);
                let picked = Instant::now();
                if picked >= run.stop_at {
                    // Still owed at the hard stop: never sent; counted, not timed.
                    if at >= run.measure_from {
                        unsent += 1;
                    }
                    continue;
                }
                if at > picked {
                    // Ahead of schedule: wait for the slot. The runtime's timer fires up to a
                    // millisecond late; that slop is the generator's, not the server's, so the
                    // request is then timed from when it really left (below).
                    tokio::time::sleep_until(at.into()).await;
                    Some((at, false))
                } else {
                    // Behind schedule: this connection was still busy with an earlier request
                    // when this one was due. That wait is exactly what coordinated omission
                    // hides, so the request is timed from its intended send time.
                    Some((at, true))
                }
            }
        };
        if Instant::now() >= run.stop_at {
            if intended.is_some_and(|(at, _)| at >= run.measure_from) {
                unsent += 1;
            }
            continue;
        }
        let sent = Instant::now();
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = template.uri().clone();
        *req.headers_mut() = template.headers().clone();
        let result = tokio::time::timeout(run.timeout, async {
            if conn.is_none() {
                conn = Some(connect(run.target.addr, run.timeout).await?);
            }
            exchange(conn.as_mut().expect("connected"), req).await
        })
        .await
        .unwrap_or(Err(Outcome::Timeout));
        let done = Instant::now();
        if result.is_ok() && done >= run.measure_from && run.window_end.is_none_or(|end| done < end)
        {
            stats.borrow_mut().window_completions += 1;
        }
        let outcome = match &result {
            Ok(a) => Outcome::Status(a.status),
            Err(o) => {
                // A failed connection is not reused.
                conn = None;
                *o
            }
        };
        let origin = match intended {
            Some((at, true)) => at,
            _ => sent,
        };
        let scheduled = intended.map_or(sent, |(at, _)| at);
        if scheduled >= run.measure_from || (intended.is_none() && done >= run.measure_from) {
            let second = done.saturating_duration_since(run.measure_from).as_secs();
            let mut s = stats.borrow_mut();
            if intended.is_some_and(|(at, behind)| behind && sent.duration_since(at) > LATE) {
                s.late += 1;
            }
            let (cluster, instance) = match &result {
                Ok(a) => (header_text(&a.cluster), header_text(&a.instance)),
                Err(_) => (None, None),
            };
            s.record(
                outcome,
                done.duration_since(origin).as_micros() as u64,
                done.duration_since(sent).as_micros() as u64,
                second,
                cluster,
                instance,
            );
        }
        if matches!(outcome, Outcome::Connect) {
            // Do not spin on a refused port: the schedule, not the error rate, sets the pace.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    unsent
}
