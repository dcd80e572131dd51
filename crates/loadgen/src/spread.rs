//! How a run's load is spread over generator threads and targets.
//!
//! Connections are numbered `0..connections`. Each thread runs a contiguous block of them (block
//! sizes differ by at most one), and connection `k` loads target `k mod N`, so every target gets
//! `connections / N` of them (±1) and a thread with at least N connections loads every target.
//!
//! In the open model each target has its own constant schedule at `rate / N`, the N schedules
//! offset so they interleave. A target's schedule is split further over the threads that hold
//! its connections (its *lanes*), each lane offset so they interleave too: together the lanes
//! send exactly one request every `1 / rate` seconds, request `n` to target `n mod N`.

use std::ops::Range;
use std::time::Duration;

/// The connections thread `thread` runs.
pub fn connections_of(thread: usize, threads: usize, connections: usize) -> Range<usize> {
    let (each, extra) = (connections / threads, connections % threads);
    let start = thread * each + thread.min(extra);
    start..start + each + usize::from(thread < extra)
}

/// The target connection `connection` loads.
pub fn target_of(connection: usize, targets: usize) -> usize {
    connection % targets
}

/// One thread's part of one target's open-model schedule: its first request `first` after the
/// run's start, then one every `interval`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lane {
    pub first: Duration,
    pub interval: Duration,
}

/// Thread `thread`'s lane of target `target`, or `None` when the thread holds none of the
/// target's connections.
pub fn open_lane(
    rate: f64,
    threads: usize,
    connections: usize,
    targets: usize,
    thread: usize,
    target: usize,
) -> Option<Lane> {
    let holds = |t: usize| {
        let block = connections_of(t, threads, connections);
        // The block's first connection that loads `target`, if the block reaches it.
        let first = block.start + (target + targets - block.start % targets) % targets;
        block.contains(&first)
    };
    if !holds(thread) {
        return None;
    }
    let lanes = (0..threads).filter(|&t| holds(t)).count();
    let lane = (0..thread).filter(|&t| holds(t)).count();
    // The target's requests are the global slots n = target + N·m; lane l takes m ≡ l (mod lanes).
    Some(Lane {
        first: Duration::from_secs_f64((target + targets * lane) as f64 / rate),
        interval: Duration::from_secs_f64((targets * lanes) as f64 / rate),
    })
}

/// Thread `thread`'s lane of every target, by target.
pub fn open_lanes(
    rate: f64,
    threads: usize,
    connections: usize,
    targets: usize,
    thread: usize,
) -> Vec<Option<Lane>> {
    (0..targets)
        .map(|target| open_lane(rate, threads, connections, targets, thread, target))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_every_connection_once_and_targets_share_them_evenly() {
        for (connections, threads, targets) in [(1, 1, 1), (7, 3, 2), (12, 2, 5), (3, 3, 3)] {
            let mut seen = Vec::new();
            let mut per_target = vec![0; targets];
            for t in 0..threads {
                for k in connections_of(t, threads, connections) {
                    seen.push(k);
                    per_target[target_of(k, targets)] += 1;
                }
            }
            assert_eq!(seen, (0..connections).collect::<Vec<_>>());
            let (min, max) = (per_target.iter().min(), per_target.iter().max());
            assert!(max.unwrap() - min.unwrap() <= 1, "{per_target:?}");
        }
    }

    /// Every lane of every target together sends exactly one request per 1/rate, request n to
    /// target n mod N, whichever way connections fall on threads.
    #[test]
    fn lanes_interleave_into_the_global_schedule() {
        let rate = 1000.0;
        for (connections, threads, targets) in
            [(1, 1, 1), (4, 4, 1), (2, 2, 2), (7, 3, 2), (5, 2, 5)]
        {
            let mut sends = Vec::new();
            for thread in 0..threads {
                for target in 0..targets {
                    if let Some(lane) =
                        open_lane(rate, threads, connections, targets, thread, target)
                    {
                        for i in 0..100u32 {
                            let at = lane.first + lane.interval * i;
                            sends.push(((at.as_secs_f64() * rate).round() as usize, target));
                        }
                    }
                }
            }
            sends.sort();
            let horizon = 100 * targets;
            let first: Vec<_> = sends.into_iter().take_while(|s| s.0 < horizon).collect();
            let want: Vec<_> = (0..horizon).map(|n| (n, n % targets)).collect();
            assert_eq!(
                first, want,
                "{connections} connections, {threads} threads, {targets} targets"
            );
        }
    }

    #[test]
    fn one_target_keeps_the_per_thread_split() {
        // Thread t: first request t/rate after the start, then every threads/rate.
        let lane = open_lane(100.0, 4, 8, 1, 3, 0).unwrap();
        assert_eq!(lane.first, Duration::from_secs_f64(0.03));
        assert_eq!(lane.interval, Duration::from_secs_f64(0.04));
        assert_eq!(open_lane(100.0, 2, 2, 2, 0, 1), None);
    }
}
