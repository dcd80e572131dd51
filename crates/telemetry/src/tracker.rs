//! The load tracker: request counters updated on the request path, and a sampler thread that
//! turns them and the CPU meter into windowed rates off the request path.
//!
//! Requests only touch atomics; the sampler (a plain OS thread, so a busy async runtime can
//! never delay it) wakes every `sample_every`, keeps a ring of samples covering `window`, and
//! publishes the rates over that window. Readers get the last published figures at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::cpu::CpuMeter;
use crate::report::LoadReport;

/// Shared, cheap-to-clone handle on a process's load.
#[derive(Clone)]
pub struct LoadTracker {
    inner: Arc<Inner>,
}

struct Inner {
    meter: CpuMeter,
    window: Duration,
    started: Instant,
    in_flight: AtomicU64,
    served: AtomicU64,
    errors: AtomicU64,
    // Published by the sampler as f64 bits.
    cpu_utilization: AtomicU64,
    rps: AtomicU64,
    eps: AtomicU64,
    cpu_seconds: AtomicU64,
    /// Service times of the last requests (µs, queueing and throttling included), a ring.
    recent: [AtomicU32; RECENT],
    recent_next: AtomicUsize,
    /// Their 90th percentile as of the last sample, in ms; f64 bits.
    service_p90_ms: AtomicU64,
    /// CPU this process could use over the last few samples, in cores: the quota less what
    /// other processes in its cgroup took (a co-tenant); f64 bits.
    cpu_available: AtomicU64,
    sampled_window_us: AtomicU64,
    /// The report's fields that only change per sample, rendered once per sample.
    rendered: Mutex<Arc<str>>,
}

/// A consistent view of the tracker for `/load` and metrics; what tools read back from
/// `/load` too.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoadSnapshot {
    /// CPU used over the window as a fraction of `cpu_cores`.
    pub cpu_utilization: f64,
    /// CPU this process may use, in cores.
    pub cpu_cores: f64,
    /// Where `cpu_cores` comes from.
    pub cpu_capacity_origin: crate::cpu::CapacityOrigin,
    /// Cumulative CPU seconds used (monotonic; lets pollers average over any window).
    pub cpu_seconds_total: f64,
    /// Of `cpu_cores`, what this process could use lately: less what other processes in its
    /// cgroup took.
    pub cpu_available: f64,
    pub requests_per_second: f64,
    pub errors_per_second: f64,
    pub in_flight: u64,
    pub requests_served: u64,
    pub errors_served: u64,
    /// The window the rates cover, in seconds (shorter than configured until it fills).
    pub window_seconds: f64,
    pub uptime_seconds: f64,
}

/// Decrements the in-flight count when the request ends, however it ends.
pub struct InFlight {
    inner: Arc<Inner>,
    started: Instant,
    done: bool,
}

/// Requests whose service times make the reported percentile: at the demo's rates, the last
/// half second or so.
const RECENT: usize = 64;

impl InFlight {
    /// Marks the request finished with its outcome.
    pub fn finish(mut self, is_error: bool) {
        self.done = true;
        let us = self.started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        let slot = self.inner.recent_next.fetch_add(1, Ordering::Relaxed) % RECENT;
        self.inner.recent[slot].store(us, Ordering::Relaxed);
        self.inner.served.fetch_add(1, Ordering::Relaxed);
        if is_error {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            // Cancelled (client went away): not served, but no longer in flight.
            self.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

struct Sample {
    at: Instant,
    cpu: Duration,
    /// This process's own CPU; `cpu` less this is what others in the cgroup used.
    own: Duration,
    served: u64,
    errors: u64,
}

impl LoadTracker {
    /// Starts tracking with a sampler thread that lives as long as any handle does.
    pub fn start(meter: CpuMeter, sample_every: Duration, window: Duration) -> LoadTracker {
        let cores = meter.cores();
        let inner = Arc::new(Inner {
            meter,
            window,
            started: Instant::now(),
            in_flight: AtomicU64::new(0),
            served: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            cpu_utilization: AtomicU64::new(0f64.to_bits()),
            rps: AtomicU64::new(0f64.to_bits()),
            eps: AtomicU64::new(0f64.to_bits()),
            cpu_seconds: AtomicU64::new(0f64.to_bits()),
            cpu_available: AtomicU64::new(cores.to_bits()),
            recent: std::array::from_fn(|_| AtomicU32::new(0)),
            recent_next: AtomicUsize::new(0),
            service_p90_ms: AtomicU64::new(0f64.to_bits()),
            sampled_window_us: AtomicU64::new(0),
            rendered: Mutex::new(Arc::from("TEXT")),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("load-sampler".into())
            .spawn(move || sample_loop(weak, sample_every))
            .expect("spawn load sampler thread");
        LoadTracker { inner }
    }

    /// Counts a request as in flight until the returned guard is finished or dropped.
    pub fn begin(&self) -> InFlight {
        self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            inner: self.inner.clone(),
            started: Instant::now(),
            done: false,
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    pub fn cpu_utilization(&self) -> f64 {
        load_f64(&self.inner.cpu_utilization)
    }

    pub fn cpu_cores(&self) -> f64 {
        self.inner.meter.cores()
    }

    /// The in-band report for a response being sent now, as the header value: the sampled
    /// fields rendered by the sampler, plus the in-flight count of this instant.
    pub fn report_header(&self) -> String {
        let sampled = self.inner.rendered.lock().expect("never poisoned").clone();
        let mut out = String::with_capacity(sampled.len() + 32);
        out.push_str(&sampled);
        out.push_str(", named_metrics.inflight=");
        out.push_str(itoa::Buffer::new().format(self.in_flight()));
        out
    }

    /// The in-band report for a response being sent now.
    pub fn report(&self) -> LoadReport {
        sampled_report(&self.inner, Some(self.in_flight()))
    }

    pub fn snapshot(&self) -> LoadSnapshot {
        let i = &self.inner;
        LoadSnapshot {
            cpu_utilization: load_f64(&i.cpu_utilization),
            cpu_cores: i.meter.cores(),
            cpu_capacity_origin: i.meter.origin(),
            cpu_seconds_total: load_f64(&i.cpu_seconds),
            cpu_available: load_f64(&i.cpu_available),
            requests_per_second: load_f64(&i.rps),
            errors_per_second: load_f64(&i.eps),
            in_flight: i.in_flight.load(Ordering::Relaxed),
            requests_served: i.served.load(Ordering::Relaxed),
            errors_served: i.errors.load(Ordering::Relaxed),
            window_seconds: i.sampled_window_us.load(Ordering::Relaxed) as f64 / 1e6,
            uptime_seconds: i.started.elapsed().as_secs_f64(),
        }
    }

    /// The configured rate window.
    pub fn window(&self) -> Duration {
        self.inner.window
    }
}

fn sampled_report(inner: &Inner, in_flight: Option<u64>) -> LoadReport {
    LoadReport {
        cpu_utilization: Some(load_f64(&inner.cpu_utilization)),
        rps_fractional: Some(load_f64(&inner.rps)),
        eps: Some(load_f64(&inner.eps)),
        inflight: in_flight.map(|n| n as f64),
        cpu_cores: Some(inner.meter.cores()),
        cpu_available: Some(load_f64(&inner.cpu_available)),
        service_p90_ms: Some(load_f64(&inner.service_p90_ms)),
    }
}

fn load_f64(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

fn store_f64(a: &AtomicU64, v: f64) {
    a.store(v.to_bits(), Ordering::Relaxed);
}

fn take_sample(inner: &Inner) -> Option<Sample> {
    Some(Sample {
        at: Instant::now(),
        cpu: inner.meter.used().ok()?,
        own: crate::cpu::process_cpu_time().ok()?,
        served: inner.served.load(Ordering::Relaxed),
        errors: inner.errors.load(Ordering::Relaxed),
    })
}

/// Samples the available CPU's recovery is measured over.
const AVAILABLE_SAMPLES: usize = 3;

/// The cores this process could use between two samples: its allowance less what other
/// processes in its cgroup used.
fn available(meter: &CpuMeter, old: &Sample, now: &Sample) -> f64 {
    let span = now.at.duration_since(old.at).as_secs_f64();
    if span <= 0.0 {
        return meter.cores();
    }
    let all = now.cpu.saturating_sub(old.cpu).as_secs_f64();
    let own = now.own.saturating_sub(old.own).as_secs_f64();
    let others = ((all - own) / span).max(0.0);
    (meter.cores() - others).clamp(0.0, meter.cores())
}

/// The 90th percentile of the recent service times, in milliseconds (0 before any request).
fn service_p90_ms(inner: &Inner) -> f64 {
    let n = inner.recent_next.load(Ordering::Relaxed).min(RECENT);
    let mut v: Vec<u32> = inner.recent[..n]
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    v[(v.len() * 9).div_ceil(10) - 1] as f64 / 1000.0
}

fn sample_loop(weak: Weak<Inner>, every: Duration) {
    let mut ring: VecDeque<Sample> = VecDeque::new();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if let Some(now) = take_sample(&inner) {
            store_f64(&inner.cpu_seconds, now.cpu.as_secs_f64());
            // Keep just enough history to span the window.
            while ring.len() >= 2 && now.at.duration_since(ring[1].at) >= inner.window {
                ring.pop_front();
            }
            if let Some(old) = ring.front() {
                let span = now.at.duration_since(old.at).as_secs_f64();
                if span > 0.0 {
                    let cpu = now.cpu.saturating_sub(old.cpu).as_secs_f64();
                    store_f64(&inner.cpu_utilization, cpu / (span * inner.meter.cores()));
                    store_f64(&inner.rps, (now.served - old.served) as f64 / span);
                    store_f64(&inner.eps, (now.errors - old.errors) as f64 / span);
                    inner
                        .sampled_window_us
                        .store((span * 1e6) as u64, Ordering::Relaxed);
                }
            }
            // Quick to fall (the last sample alone), slower to recover (the last few): a
            // co-tenant switching on shows within one sample, one pausing must stay paused.
            let last = ring.back().map(|s| available(&inner.meter, s, &now));
            let recent = ring
                .iter()
                .rev()
                .nth(AVAILABLE_SAMPLES - 1)
                .map(|s| available(&inner.meter, s, &now));
            if let Some(a) = last.into_iter().chain(recent).reduce(f64::min) {
                store_f64(&inner.cpu_available, a);
            }
            store_f64(&inner.service_p90_ms, service_p90_ms(&inner));
            let sampled = Arc::from(sampled_report(&inner, None).to_header_value());
            *inner.rendered.lock().expect("never poisoned") = sampled;
            ring.push_back(now);
        }
        drop(inner);
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_and_rates_over_the_window() {
        let t = LoadTracker::start(
            CpuMeter::process(),
            Duration::from_millis(20),
            Duration::from_millis(200),
        );
        // Let the sampler take its baseline before any request is counted.
        std::thread::sleep(Duration::from_millis(50));
        let a = t.begin();
        let b = t.begin();
        assert_eq!(t.in_flight(), 2);
        a.finish(false);
        b.finish(true);
        drop(t.begin()); // cancelled: not counted as served
        assert_eq!(t.in_flight(), 0);
        for _ in 0..50 {
            t.begin().finish(false);
        }
        std::thread::sleep(Duration::from_millis(120));
        let s = t.snapshot();
        assert_eq!(s.requests_served, 52);
        assert_eq!(s.errors_served, 1);
        assert!(s.requests_per_second > 0.0, "{s:?}");
        assert!(s.window_seconds > 0.0 && s.window_seconds <= 0.25, "{s:?}");
        let r = t.report();
        assert_eq!(r.inflight, Some(0.0));
        assert!(r.cpu_cores.unwrap() >= 1.0);
        let _busy = t.begin();
        let header = LoadReport::parse(&t.report_header()).unwrap();
        assert_eq!(header.inflight, Some(1.0));
        assert_eq!(header.cpu_cores, r.cpu_cores);
        assert!(header.rps_fractional.unwrap() > 0.0);
    }
}
