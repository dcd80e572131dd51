//! Graceful shutdown: once it begins, connections finish what they are doing, take no new
//! request, and the balancer waits (bounded) until every one has gone.

use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Drain {
    stopping: tokio::sync::watch::Sender<bool>,
    active: AtomicUsize,
    gone: tokio::sync::Notify,
}

impl Default for Drain {
    fn default() -> Drain {
        Drain {
            stopping: tokio::sync::watch::channel(false).0,
            active: AtomicUsize::new(0),
            gone: tokio::sync::Notify::new(),
        }
    }
}

impl Drain {
    /// No new requests from now on.
    pub fn begin(&self) {
        self.stopping.send_replace(true);
    }

    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves once shutdown has begun.
    pub async fn stopping(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Resolves when no connection is left.
    pub async fn drained(&self) {
        loop {
            let gone = self.gone.notified();
            if self.active.load(Ordering::Acquire) == 0 {
                return;
            }
            gone.await;
        }
    }

    /// Counts one more open connection, until [`Drain::leave`].
    pub fn enter(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    pub fn leave(&self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.gone.notify_waiters();
        }
    }
}
