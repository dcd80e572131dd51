//! Real CPU work per request: a SipHash chain, calibrated against the thread CPU clock.
//!
//! Calibrating on CPU time rather than wall time makes `work_us` mean the same thing inside a
//! throttled cgroup as outside it: a 1 ms request costs 1 ms of CPU whether the worker is
//! allowed a full core or a tenth of one (it just takes ten times longer on the wall clock).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use fulcrum_telemetry::cpu::thread_cpu_time;
use tokio::sync::Semaphore;

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
        let rounds = (micros as f64 * self.rounds_per_us).max(1.0) as u64;
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("work semaphore never closes");
        tokio::task::spawn_blocking(move || chain(rounds, micros))
            .await
            .unwrap_or(0)
    }

    /// Burns CPU on the calling thread; for calibration checks.
    pub fn run_here(&self, micros: u64) -> u64 {
        chain((micros as f64 * self.rounds_per_us) as u64, micros)
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
    use std::time::Duration;

    fn measure(work: &CpuWork, micros: u64) -> Duration {
        let start = thread_cpu_time();
        std::hint::black_box(work.run_here(micros));
        thread_cpu_time().saturating_sub(start)
    }

    #[test]
    fn calibrated_work_costs_about_what_was_asked() {
        let work = CpuWork::calibrate(1);
        // Best of three: the test shares the machine with other tests.
        let best = (0..3)
            .map(|_| measure(&work, 20_000))
            .min()
            .unwrap()
            .as_secs_f64();
        assert!(
            (0.010..0.040).contains(&best),
            "20 ms of work took {best:.4}s of CPU (rounds/us {})",
            work.rounds_per_us()
        );
    }
}
