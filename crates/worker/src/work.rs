//! Real CPU work per request: a SipHash chain, measured against the thread CPU clock.
//!
//! Measuring CPU time rather than wall time makes `work_us` mean the same thing inside a
//! throttled cgroup as outside it: a 1 ms request costs 1 ms of CPU whether the worker is
//! allowed a full core or a tenth of one (it just takes ten times longer on the wall clock).
//! A start-up calibration sizes batches of about 50 µs; a request then runs batches until its
//! thread has spent the CPU time asked. Checking the clock, rather than trusting a round count
//! fixed at start-up, keeps the cost right when the machine's speed drifts (shared hosts,
//! frequency scaling, a busy hyperthread sibling).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use fulcrum_telemetry::cpu::thread_cpu_time;
use tokio::sync::Semaphore;

/// CPU time between two looks at the thread clock (a look costs a system call).
const BATCH_US: f64 = 50.0;

/// Calibrated CPU work, executed on the blocking pool so it never stalls the async runtime.
#[derive(Clone)]
pub struct CpuWork {
    rounds_per_us: f64,
    /// At most this many requests compute at once; the rest wait their turn, as they would
    /// for a core. Sized to the CPU the worker is allowed, rounded up.
    slots: Arc<Semaphore>,
}

impl CpuWork {
    /// Measures how many hash rounds cost one microsecond of CPU on this machine.
    pub fn calibrate(parallel: usize) -> CpuWork {
        // Best of a few short rounds: preemption never counts as thread CPU time, but cache and
        // frequency effects do, and the fastest round is the least disturbed.
        let probe: u64 = 20_000;
        let mut best = f64::MIN;
        for _ in 0..4 {
            let start = thread_cpu_time();
            std::hint::black_box(chain(probe, 0x5eed));
            let spent = thread_cpu_time().saturating_sub(start).as_secs_f64() * 1e6;
            if spent > 0.0 {
                best = best.max(probe as f64 / spent);
            }
        }
        if best <= 0.0 {
            best = 50.0; // a clock too coarse to measure anything: assume ~20 ns per round
        }
        CpuWork {
            rounds_per_us: best,
            slots: Arc::new(Semaphore::new(parallel.max(1))),
        }
    }

    /// Hash rounds per microsecond of CPU, as calibrated.
    pub fn rounds_per_us(&self) -> f64 {
        self.rounds_per_us
    }

    /// Burns `micros` of CPU on the blocking pool and returns the digest (so it is not elided).
    pub async fn run(&self, micros: u64) -> u64 {
        if micros == 0 {
            return 0;
        }
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("work semaphore never closes");
        let batch = self.batch_rounds();
        tokio::task::spawn_blocking(move || burn(micros, batch))
            .await
            .unwrap_or(0)
    }

    /// Burns `micros` of CPU on the calling thread.
    pub fn run_here(&self, micros: u64) -> u64 {
        burn(micros, self.batch_rounds())
    }

    /// Rounds in one batch between clock checks: about `BATCH_US` of CPU.
    fn batch_rounds(&self) -> u64 {
        (self.rounds_per_us * BATCH_US).max(1.0) as u64
    }
}

/// Hashes in batches of `batch` rounds until the calling thread has used `micros` of CPU.
fn burn(micros: u64, batch: u64) -> u64 {
    let target = Duration::from_micros(micros);
    let start = thread_cpu_time();
    let mut digest = micros;
    loop {
        let spent = thread_cpu_time().saturating_sub(start);
        if spent >= target {
            return digest;
        }
        // The last batch is trimmed to what is left, at the calibrated rate.
        let left_us = (target - spent).as_secs_f64() * 1e6;
        let rounds = (batch as f64 * (left_us / BATCH_US).min(1.0)).max(1.0) as u64;
        digest = chain(rounds, digest);
    }
}

fn chain(rounds: u64, seed: u64) -> u64 {
    let mut h = seed;
    for _ in 0..rounds {
        let mut s = std::hash::DefaultHasher::new();
        h.hash(&mut s);
        h = s.finish();
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measure(work: &CpuWork, micros: u64) -> Duration {
        let start = thread_cpu_time();
        std::hint::black_box(work.run_here(micros));
        thread_cpu_time().saturating_sub(start)
    }

    #[test]
    fn work_costs_what_was_asked_even_if_calibration_was_off() {
        let work = CpuWork::calibrate(1);
        let spent = measure(&work, 20_000).as_secs_f64();
        assert!(
            (0.020..0.030).contains(&spent),
            "20 ms of work took {spent:.4}s of CPU"
        );
        // A calibration 4x too optimistic or too pessimistic must not change the cost much.
        for factor in [0.25, 4.0] {
            let skewed = CpuWork {
                rounds_per_us: work.rounds_per_us() * factor,
                slots: work.slots.clone(),
            };
            let spent = measure(&skewed, 20_000).as_secs_f64();
            assert!(
                (0.020..0.035).contains(&spent),
                "x{factor}: 20 ms took {spent:.4}s"
            );
        }
    }
}
