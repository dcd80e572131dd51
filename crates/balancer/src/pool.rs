//! Keep-alive HTTP/1 connections to one worker.
//!
//! An [`Upstream`] owns both halves of a hyper client connection and is driven *inside the task
//! of the request using it*: sending the request, waiting for the response head and streaming
//! the response body all poll the connection in place. There is no spawned connection task, so
//! a proxied request costs no cross-task wake-ups; an idle pooled connection is not polled at
//! all (a close by the worker is noticed when the connection is next taken).
//!
//! Connections are checked out for exactly one request and checked back in only when that
//! request's response body has been read to the end, so a pooled connection is always idle.
//! The number of connections to a worker is bounded by its in-flight cap: a connection is
//! opened only for a request holding one of the worker's in-flight slots, and only when no
//! idle one is left.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::UpBody;
use crate::fleet::now_us;

/// One HTTP/1 connection to a worker, both halves.
pub struct Upstream {
    tx: SendRequest<UpBody>,
    conn: Connection<TokioIo<TcpStream>, UpBody>,
    open: Arc<AtomicUsize>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A send that failed; `unsent` holds the request if it never reached the connection.
pub struct SendFailure {
    pub error: Box<dyn std::error::Error + Send + Sync>,
    pub unsent: Option<Request<UpBody>>,
}

impl SendFailure {
    fn from_hyper(mut e: hyper::client::conn::TrySendError<Request<UpBody>>) -> SendFailure {
        SendFailure {
            unsent: e.take_message(),
            error: Box::new(e.into_error()),
        }
    }
}

/// Polls the connection; `false` once it has finished (closed or broken).
fn drive(conn: &mut Connection<TokioIo<TcpStream>, UpBody>, cx: &mut Context<'_>) -> bool {
    conn.poll_without_shutdown(cx).is_pending()
}

impl Upstream {
    /// Drives the connection until it can take a request; `false` if it cannot any more.
    async fn ready(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            if !drive(&mut self.conn, cx) {
                return Poll::Ready(false);
            }
            self.tx.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }

    /// Sends `req` and drives the connection until the response head arrives.
    pub async fn send(&mut self, req: Request<UpBody>) -> Result<Response<Incoming>, SendFailure> {
        let mut response = pin!(self.tx.try_send_request(req));
        let conn = &mut self.conn;
        std::future::poll_fn(|cx| {
            let alive = drive(conn, cx);
            if let Poll::Ready(r) = response.as_mut().poll(cx) {
                return Poll::Ready(r.map_err(SendFailure::from_hyper));
            }
            if alive {
                return Poll::Pending;
            }
            // The connection ended; hyper fails every pending request when it does, so one
            // more poll settles it. If it somehow does not, give up rather than hang.
            match response.as_mut().poll(cx) {
                Poll::Ready(r) => Poll::Ready(r.map_err(SendFailure::from_hyper)),
                Poll::Pending => Poll::Ready(Err(SendFailure {
                    error: "the worker connection closed before a response".into(),
                    unsent: None,
                })),
            }
        })
        .await
    }

    /// Drives the connection while its response body is read (called from the body's poll).
    pub fn poll_drive(&mut self, cx: &mut Context<'_>) {
        let _ = drive(&mut self.conn, cx);
    }
}

/// Runtime threads get their own idle lists up to this many; more threads share.
const SHARDS: usize = 16;

thread_local! {
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Names the calling thread's runtime, for the pools' per-runtime idle lists.
pub fn set_runtime_index(i: usize) {
    SHARD.with(|s| s.set(i % SHARDS));
}

struct Idle {
    upstream: Upstream,
    since_us: u64,
}

#[derive(Default)]
pub struct Pool {
    /// One idle list per runtime thread: a connection is registered with the reactor of the
    /// runtime that opened it, and only that runtime drives it well.
    idle: [Mutex<Vec<Idle>>; SHARDS],
    open: Arc<AtomicUsize>,
}

/// Why a connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

impl Pool {
    fn shard(&self) -> &Mutex<Vec<Idle>> {
        &self.idle[SHARD.with(|s| s.get())]
    }

    /// The most recently used idle connection that is still open and not older than
    /// `idle_timeout`. Most-recent-first keeps a few connections warm instead of many lukewarm.
    pub async fn checkout(&self, idle_timeout: Duration) -> Option<Upstream> {
        let max_age = idle_timeout.as_micros() as u64;
        loop {
            let idle = self.shard().lock().expect("never poisoned").pop()?;
            if now_us().saturating_sub(idle.since_us) > max_age {
                continue; // dropping it closes the connection
            }
            let mut upstream = idle.upstream;
            if upstream.ready().await {
                return Some(upstream);
            }
        }
    }

    /// Returns a connection whose last response was read to the end.
    pub fn checkin(&self, upstream: Upstream, cap: usize) {
        if upstream.tx.is_closed() {
            return;
        }
        let mut idle = self.shard().lock().expect("never poisoned");
        if idle.len() < cap {
            idle.push(Idle {
                upstream,
                since_us: now_us(),
            });
        }
    }

    /// Opens a new connection to `addr`, giving up at `timeout`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Upstream, ConnectError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))??;
        let _ = stream.set_nodelay(true);
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Upstream {
            tx,
            conn,
            open: self.open.clone(),
        })
    }

    /// Connections open now (idle or busy).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn idle(&self) -> usize {
        self.idle
            .iter()
            .map(|s| s.lock().expect("never poisoned").len())
            .sum::<usize>()
    }

    pub fn close_idle(&self) {
        for s in &self.idle {
            s.lock().expect("never poisoned").clear();
        }
    }
}

/// Why a probe got no answer.
#[derive(Debug)]
pub struct ProbeError {
    pub message: String,
    /// The worker's address refused the connection: nothing listens there.
    pub refused: bool,
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for ProbeError {
    fn from(message: String) -> ProbeError {
        ProbeError {
            message,
            refused: false,
        }
    }
}

/// A small client for the balancer's own requests to a worker (health checks, `/load` polls):
/// one keep-alive connection, reopened after any failure, every call bounded by a timeout.
pub struct Probe {
    addr: SocketAddr,
    tx: Option<SendRequest<http_body_util::Empty<bytes::Bytes>>>,
}

impl Probe {
    pub fn new(addr: SocketAddr) -> Probe {
        Probe { addr, tx: None }
    }

    /// `GET path`: the status and up to 64 KiB of body.
    pub async fn get(
        &mut self,
        path: &str,
        timeout: Duration,
    ) -> Result<(http::StatusCode, bytes::Bytes), ProbeError> {
        let result = tokio::time::timeout(timeout, self.get_inner(path)).await;
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.tx = None;
                Err(e)
            }
            Err(_) => {
                self.tx = None;
                Err(format!("no answer within {timeout:?}").into())
            }
        }
    }

    async fn get_inner(
        &mut self,
        path: &str,
    ) -> Result<(http::StatusCode, bytes::Bytes), ProbeError> {
        use http_body_util::BodyExt as _;
        if self.tx.as_ref().is_none_or(|t| t.is_closed()) {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| ProbeError {
                    message: format!("connect: {e}"),
                    refused: e.kind() == std::io::ErrorKind::ConnectionRefused,
                })?;
            let _ = stream.set_nodelay(true);
            let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.tx = Some(tx);
        }
        let tx = self.tx.as_mut().expect("connected above");
        tx.ready().await.map_err(|e| e.to_string())?;
        let req = http::Request::get(path)
            .header(http::header::HOST, self.addr.to_string())
            .header(http::header::USER_AGENT, "fulcrum-balancer")
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}
