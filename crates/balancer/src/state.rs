//! What every connection of the balancer shares: the router generation in force, the fleet of
//! workers, the metrics, the drain, the access log, request ids, and the count of client
//! connections.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::drain::Drain;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::route::Router;

/// What every request handler shares.
pub struct Shared {
    pub router: Arc<arc_swap::ArcSwap<Router>>,
    pub fleet: Fleet,
    pub metrics: Metrics,
    pub drain: Drain,
    pub access_log: Arc<AccessLog>,
    pub(crate) ids: RequestIds,
    pub(crate) connections: AtomicUsize,
}

impl Shared {
    pub fn new(
        router: Arc<arc_swap::ArcSwap<Router>>,
        fleet: Fleet,
        metrics: Metrics,
        access_log: Arc<AccessLog>,
    ) -> Shared {
        Shared {
            router,
            fleet,
            metrics,
            drain: Drain::default(),
            access_log,
            ids: RequestIds::new(),
            connections: AtomicUsize::new(0),
        }
    }
}

/// Request ids: a per-process random base plus a counter, 16 hex digits.
pub(crate) struct RequestIds {
    base: u64,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        RequestIds {
            base: fastrand::u64(..),
            next: AtomicU64::new(0),
        }
    }

    pub(crate) fn next(&self) -> RequestId {
        let n = self
            .base
            .wrapping_add(self.next.fetch_add(1, Ordering::Relaxed));
        let mut id = RequestId {
            bytes: [0; 128],
            len: 16,
        };
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in id.bytes[..16].iter_mut().enumerate() {
            *b = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
        id
    }
}

/// A request's id: the client's `x-request-id` if it is plain (≤ 128 visible characters from
/// `[A-Za-z0-9-_.:]`), else one of ours. Inline, so no allocation per request.
#[derive(Clone, Copy)]
pub struct RequestId {
    bytes: [u8; 128],
    len: usize,
}

impl RequestId {
    pub(crate) fn from_client(v: &[u8]) -> Option<RequestId> {
        let ok = (1..=128).contains(&v.len())
            && v.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b));
        ok.then(|| {
            let mut id = RequestId {
                bytes: [0; 128],
                len: v.len(),
            };
            id.bytes[..v.len()].copy_from_slice(v);
            id
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// A request id for an HTTP/2 request: the client's if plain, else a new one.
pub fn next_id(shared: &Shared, client: Option<&[u8]>) -> RequestId {
    client
        .and_then(RequestId::from_client)
        .unwrap_or_else(|| shared.ids.next())
}
