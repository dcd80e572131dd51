//! Spreading client connections over the proxy threads.
//!
//! Every proxy thread accepts on the same listening sockets, and the thread the kernel wakes
//! first would take a whole burst of new connections: with two threads and wrk's 64
//! connections, one thread got three quarters of them, and their latency with them. So the
//! thread that accepts a connection serves it only if no other thread has at least two fewer
//! open; otherwise it hands the socket to that thread, as HAProxy gives each accepted
//! connection to its least loaded thread. A connection counts against its thread from the
//! moment it is placed there, so a burst spreads even before the first one is served.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

thread_local! {
    static THIS_THREAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Names the calling OS thread proxy thread `index` (the main runtime's is 0), for what is
/// kept per thread: idle worker connections, lines of waiting requests.
pub fn set_this_thread(index: usize) {
    THIS_THREAD.with(|t| t.set(index));
}

/// The calling thread's index.
pub fn this_thread() -> usize {
    THIS_THREAD.with(|t| t.get())
}

/// The proxy threads' open client connections, and a way to hand each one a new one (a `T`:
/// the accepted socket and what goes with it).
pub struct Spread<T> {
    open: Arc<[AtomicUsize]>,
    inboxes: Box<[UnboundedSender<T>]>,
}

/// Where a thread receives the connections handed to it.
pub type Inbox<T> = UnboundedReceiver<T>;

/// One proxy thread's place among the others.
pub struct Seat<T> {
    spread: Arc<Spread<T>>,
    pub index: usize,
}

impl<T> Clone for Seat<T> {
    fn clone(&self) -> Self {
        Seat {
            spread: self.spread.clone(),
            index: self.index,
        }
    }
}

/// One open connection, counted against the thread serving it until dropped.
pub struct Placed {
    open: Arc<[AtomicUsize]>,
    pub thread: usize,
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.open[self.thread].fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T> Spread<T> {
    /// A seat and an inbox for each of `threads` threads, in order.
    pub fn over(threads: usize) -> (Vec<Seat<T>>, Vec<Inbox<T>>) {
        let (senders, inboxes): (Vec<_>, Vec<_>) =
            (0..threads.max(1)).map(|_| unbounded_channel()).unzip();
        let spread = Arc::new(Spread {
            open: senders.iter().map(|_| AtomicUsize::new(0)).collect(),
            inboxes: senders.into_boxed_slice(),
        });
        let seats = (0..spread.open.len())
            .map(|index| Seat {
                spread: spread.clone(),
                index,
            })
            .collect();
        (seats, inboxes)
    }
}

impl<T> Seat<T> {
    /// The thread to serve a connection accepted here: this one, unless another has at least
    /// two fewer open (one fewer is not worth waking another thread for).
    pub fn place(&self) -> Placed {
        let open = &self.spread.open;
        let mine = open[self.index].load(Ordering::Relaxed);
        let (fewest, least) = open
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, n)| n)
            .expect("at least one thread");
        let thread = if least + 2 <= mine {
            fewest
        } else {
            self.index
        };
        open[thread].fetch_add(1, Ordering::Relaxed);
        Placed {
            open: self.spread.open.clone(),
            thread,
        }
    }

    /// Gives `handoff` to `thread`; back if that thread has stopped taking connections.
    pub fn hand_over(&self, thread: usize, handoff: T) -> Result<(), T> {
        self.spread.inboxes[thread]
            .send(handoff)
            .map_err(|refused| refused.0)
    }

    /// Open connections per thread, for tests.
    #[cfg(test)]
    fn open(&self) -> Vec<usize> {
        let open = self.spread.open.iter();
        open.map(|n| n.load(Ordering::Relaxed)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_accepted_on_one_thread_spreads_evenly() {
        let (seats, _inboxes) = Spread::<()>::over(2);
        let placed: Vec<Placed> = (0..64).map(|_| seats[0].place()).collect();
        let open = seats[0].open();
        assert!(open[0].abs_diff(open[1]) <= 2, "{open:?}");
        let here = placed.iter().filter(|p| p.thread == 0).count();
        assert_eq!(here, open[0]);
        drop(placed);
        assert_eq!(seats[1].open(), vec![0, 0]);
    }

    #[test]
    fn one_fewer_elsewhere_is_not_worth_a_handoff() {
        let (seats, _inboxes) = Spread::<()>::over(3);
        let _a = seats[1].place();
        let _b = seats[2].place();
        let c = seats[0].place();
        assert_eq!(c.thread, 0);
        let d = seats[0].place();
        assert_eq!(d.thread, 0, "threads held 1, 1, 1");
        let e = seats[0].place();
        assert_eq!(e.thread, 0, "threads held 2, 1, 1: one fewer is not enough");
        let f = seats[0].place();
        assert_ne!(f.thread, 0, "threads held 3, 1, 1: the burst moves on");
    }

    #[test]
    fn one_thread_keeps_everything() {
        let (seats, _inboxes) = Spread::<()>::over(1);
        let placed: Vec<Placed> = (0..5).map(|_| seats[0].place()).collect();
        assert!(placed.iter().all(|p| p.thread == 0));
        assert_eq!(seats[0].open(), vec![5]);
    }
}
