//! A worker's HTTP/2 connection (for target groups with `protocol = "h2"`) and the request
//! bodies it carries: one multiplexed hyper connection per worker, opened on first use over
//! the group's [`Transport`] and again after it closes. What goes on it is `upstream_h2.rs`'s.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::transport::{ConnectError, Transport};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether getting a connection's handle opened the connection (for the access log's
/// connect time).
pub struct Opened(pub bool);

/// A worker's HTTP/2 connection, opened on first use and again after it closes.
#[derive(Default)]
pub struct H2Channel {
    sender: tokio::sync::Mutex<Option<SendRequest<UpstreamBody>>>,
}

impl H2Channel {
    /// A handle on the worker's connection; concurrent first requests wait for one connect.
    pub async fn sender(
        &self,
        addr: std::net::SocketAddr,
        transport: &Transport,
        timeout: Duration,
    ) -> Result<(SendRequest<UpstreamBody>, Opened), ConnectError> {
        let mut held = self.sender.lock().await;
        if let Some(s) = held.as_ref().filter(|s| !s.is_closed()) {
            return Ok((s.clone(), Opened(false)));
        }
        *held = None;
        let stream = transport.connect(addr, timeout).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // A dead connection is noticed while idle, not by the next request.
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::H2(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(worker = %addr, error = %e, "HTTP/2 connection to a worker ended");
            }
        });
        *held = Some(sender.clone());
        Ok((sender, Opened(true)))
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

/// Where an HTTP/2 request's body comes from, as far as sending it again goes.
pub enum BodySource {
    Whole(Bytes),
    /// Taken by the first attempt; none after it.
    Once(Option<UpstreamBody>),
}
