//! The line of requests waiting for an in-flight slot in a target group.
//!
//! When every worker of a group is at its in-flight cap, requests wait in line, first come
//! first served on each proxy thread: only the request at the front of a line waits for a slot
//! to free (on the balancer's capacity signal), the others each wait for their own turn, and a
//! new request joins the back rather than trying its luck while others wait. Waking every waiter on each freed slot, as
//! the balancer once did, let a random one win: with 1,000 connections on two workers capped at
//! 128 in flight, p99 was three times nginx's at a lower p50 (bench/proxy.sh conns1000).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Proxy threads get their own line up to this many; more threads share.
const PER_THREAD: usize = 16;

/// The requests waiting, oldest first: one line per proxy thread, so moving a line on wakes a
/// task on the same thread (one line for all threads made every hand-off a cross-thread wake,
/// and cut throughput with 1,000 connections on two threads by a quarter). Only the fronts
/// of the lines wait for slots.
#[derive(Default)]
pub struct Line {
    waiting: [Mutex<VecDeque<Arc<Notify>>>; PER_THREAD],
}

/// A request's place in line; leaving (however the wait ends) moves the line on.
pub struct Place<'a> {
    line: &'a Mutex<VecDeque<Arc<Notify>>>,
    turn: Arc<Notify>,
}

impl Line {
    /// Joins the back of this thread's line.
    pub fn join(&self) -> Place<'_> {
        let turn = Arc::new(Notify::new());
        let line = &self.waiting[crate::spread::this_thread() % PER_THREAD];
        line.lock().expect("never poisoned").push_back(turn.clone());
        Place { line, turn }
    }
}

impl Place<'_> {
    /// Waits until this request is at the front of the line.
    pub async fn front(&self) {
        // `notify_one` keeps a wake-up for a waiter not yet waiting, so none is lost between
        // the check and the wait.
        while !self.is_front() {
            self.turn.notified().await;
        }
    }

    fn is_front(&self) -> bool {
        let waiting = self.line.lock().expect("never poisoned");
        waiting.front().is_some_and(|t| Arc::ptr_eq(t, &self.turn))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut waiting = self.line.lock().expect("never poisoned");
        let Some(at) = waiting.iter().position(|t| Arc::ptr_eq(t, &self.turn)) else {
            return;
        };
        waiting.remove(at);
        if at == 0 {
            if let Some(next) = waiting.front() {
                next.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_first_to_join_is_served_first_and_leaving_moves_the_line_on() {
        let line = Line::default();
        let first = line.join();
        let second = line.join();
        let third = line.join();
        first.front().await;
        assert!(!second.is_front() && !third.is_front());
        // The middle one gives up: the order of the others holds.
        drop(second);
        assert!(!third.is_front());
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), third.front())
            .await
            .expect("the last one reaches the front once the others leave");
    }

    #[tokio::test]
    async fn a_waiter_behind_is_woken_when_the_front_leaves() {
        let line = Arc::new(Line::default());
        let front = line.join();
        let behind = {
            let line = line.clone();
            tokio::spawn(async move {
                let place = line.join();
                place.front().await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!behind.is_finished(), "it waits while another is in front");
        drop(front);
        tokio::time::timeout(Duration::from_secs(1), behind)
            .await
            .expect("woken when the front leaves")
            .unwrap();
    }
}
