//! Bodies streamed through the balancer, never buffered whole.
//!
//! [`UpBody`] carries a client's request body to a worker, enforcing the route's size limit
//! and noting whether any of it has gone out (after which a non-idempotent request must not be
//! retried). [`ClientBody`] carries a worker's response body back, and when it has been read
//! to the end returns the worker connection to the pool and ends the request's in-flight count.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::fleet::InFlight;
use crate::pool::Upstream;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than the route's limit of {0} bytes")]
    TooLarge(u64),
    #[error("reading the client's request body: {0}")]
    Client(hyper::Error),
}

/// A request body on its way to a worker.
pub struct UpBody {
    stream: Option<Incoming>,
    limit: u64,
    seen: u64,
    started: Arc<AtomicBool>,
}

impl UpBody {
    pub fn empty() -> UpBody {
        UpBody {
            stream: None,
            limit: 0,
            seen: 0,
            started: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn stream(inner: Incoming, limit: u64) -> UpBody {
        UpBody {
            stream: Some(inner),
            limit,
            seen: 0,
            started: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Set once the first body byte has been handed to the worker connection.
    pub fn started_flag(&self) -> Arc<AtomicBool> {
        self.started.clone()
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.stream.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.limit))));
                    }
                    this.started.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(BodyError::Client(e)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.as_ref().is_none_or(|s| s.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.stream
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |s| s.size_hint())
    }
}

/// The worker connection a proxied response body is read from, and what to do when it ends.
pub struct Finish {
    pub upstream: Upstream,
    /// Idle connections the worker's pool may keep.
    pub pool_cap: usize,
    pub flight: InFlight,
}

impl Finish {
    fn complete(self) {
        self.flight
            .worker()
            .pool
            .checkin(self.upstream, self.pool_cap);
        // Dropping `flight` ends the request on the worker.
    }
}

/// A response body on its way to a client.
pub enum ClientBody {
    /// Answered by the balancer itself (errors, admin).
    Local(Full<Bytes>),
    Proxied {
        inner: Incoming,
        /// Boxed: it holds a whole worker connection, and the common local answers should not
        /// carry that much inline.
        finish: Option<Box<Finish>>,
    },
}

impl ClientBody {
    pub fn proxied(inner: Incoming, finish: Finish) -> ClientBody {
        ClientBody::Proxied {
            inner,
            finish: Some(Box::new(finish)),
        }
    }
}

impl From<Bytes> for ClientBody {
    fn from(b: Bytes) -> ClientBody {
        ClientBody::Local(Full::new(b))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut *self {
            ClientBody::Local(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            ClientBody::Proxied { inner, finish } => {
                // The worker connection is driven here, in the client connection's task.
                if let Some(f) = finish.as_mut() {
                    f.upstream.poll_drive(cx);
                }
                let polled = ready!(Pin::new(inner).poll_frame(cx));
                match &polled {
                    None => {
                        if let Some(f) = finish.take() {
                            f.complete();
                        }
                    }
                    Some(Err(_)) => {
                        // The worker connection broke mid-body: not reusable.
                        finish.take();
                    }
                    Some(Ok(_)) => {}
                }
                Poll::Ready(polled)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Local(full) => full.is_end_stream(),
            ClientBody::Proxied { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Local(full) => full.size_hint(),
            ClientBody::Proxied { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        if let ClientBody::Proxied { inner, finish } = self {
            if let Some(f) = finish.take() {
                // An empty body may never be polled; it is complete all the same.
                if inner.is_end_stream() {
                    f.complete();
                }
            }
        }
    }
}
