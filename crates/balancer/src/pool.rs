//! Keep-alive HTTP/1 connections to one worker.
//!
//! Connections are checked out for exactly one request and checked back in only when that
//! request's response body has been read to the end, so a pooled connection is always idle.
//! The number of connections to a worker is bounded by its in-flight cap: a connection is
//! opened only for a request holding one of the worker's in-flight slots, and only when no
//! idle one is left.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::body::UpBody;
use crate::fleet::now_us;

pub type Sender = SendRequest<UpBody>;

struct Idle {
    tx: Sender,
    since_us: u64,
}

#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
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
    /// The most recently used idle connection that is still open and not older than
    /// `idle_timeout`. Most-recent-first keeps a few connections warm instead of many lukewarm.
    pub async fn checkout(&self, idle_timeout: Duration) -> Option<Sender> {
        let max_age = idle_timeout.as_micros() as u64;
        loop {
            let idle = self.idle.lock().expect("never poisoned").pop()?;
            if idle.tx.is_closed() || now_us().saturating_sub(idle.since_us) > max_age {
                continue; // dropping the sender closes the connection
            }
            let mut tx = idle.tx;
            // An idle connection is ready at once; one that is not is broken.
            match tokio::time::timeout(Duration::from_millis(50), tx.ready()).await {
                Ok(Ok(())) => return Some(tx),
                _ => continue,
            }
        }
    }

    /// Returns a connection whose last response was read to the end.
    pub fn checkin(&self, tx: Sender, cap: usize) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("never poisoned");
        if idle.len() < cap {
            idle.push(Idle {
                tx,
                since_us: now_us(),
            });
        }
    }

    /// Opens a new connection to `addr`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Sender, ConnectError> {
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))??;
        let _ = stream.set_nodelay(true);
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        let open = self.open.clone();
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(worker = %addr, error = %e, "worker connection ended with an error");
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(tx)
    }

    /// Connections open now (idle or busy).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn idle(&self) -> usize {
        self.idle.lock().expect("never poisoned").len()
    }

    pub fn close_idle(&self) {
        self.idle.lock().expect("never poisoned").clear();
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
    ) -> Result<(http::StatusCode, bytes::Bytes), String> {
        let result = tokio::time::timeout(timeout, self.get_inner(path)).await;
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.tx = None;
                Err(e)
            }
            Err(_) => {
                self.tx = None;
                Err(format!("no answer within {timeout:?}"))
            }
        }
    }

    async fn get_inner(&mut self, path: &str) -> Result<(http::StatusCode, bytes::Bytes), String> {
        use http_body_util::BodyExt as _;
        if self.tx.as_ref().is_none_or(|t| t.is_closed()) {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
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
