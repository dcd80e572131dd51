//! Workers as the balancer knows them: one [`Worker`] per address, shared by every target
//! group that names it and kept across reloads, so in-flight counts, health, ejections,
//! latency estimates, telemetry and pooled connections survive a config change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fulcrum_telemetry::LoadReport;
use tokio::task::JoinHandle;

pub use crate::clock::now_us;
use crate::config::TelemetrySource;
use crate::upstream::Pool;

/// Wakes requests waiting for a free in-flight slot. One per balancer: any slot freed on any
/// worker may be the one a queued request can use.
#[derive(Default)]
pub struct CapacitySignal {
    pub notify: tokio::sync::Notify,
    pub waiting: AtomicUsize,
}

impl CapacitySignal {
    pub fn freed(&self) {
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// Peak-EWMA decay constant (Finagle and Linkerd use 10 s).
const EWMA_TAU_US: f64 = 10_000_000.0;
/// Before any response: Linkerd's default RTT estimate.
const EWMA_DEFAULT_US: f64 = 30_000.0;
/// Failure-rate memory: a failing worker's penalty fades over a few seconds, so it is tried
/// again (and re-penalised if it still fails) rather than starved forever.
const ERR_TAU_US: f64 = 3_000_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Not checked yet: eligible (traffic flows before the first check completes).
    Unknown,
    Healthy,
    Unhealthy,
}

/// One telemetry source's latest reading for a worker. Fields are separate atomics: a reader
/// may see fields from two consecutive reports, which is harmless for load figures.
#[derive(Default)]
pub struct Slot {
    cpu: AtomicU64,
    rps: AtomicU64,
    eps: AtomicU64,
    at_us: AtomicU64,
    reports: AtomicU64,
}

/// A reading as policies and the status page see it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Reading {
    pub cpu_utilization: f64,
    pub rps: f64,
    pub eps: f64,
    /// How old the reading is.
    #[serde(serialize_with = "ser_ms")]
    pub age: Duration,
    pub reports: u64,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

impl Slot {
    pub fn store(&self, cpu: f64, rps: f64, eps: f64, at_us: u64) {
        self.cpu.store(cpu.to_bits(), Ordering::Relaxed);
        self.rps.store(rps.to_bits(), Ordering::Relaxed);
        self.eps.store(eps.to_bits(), Ordering::Relaxed);
        self.at_us.store(at_us, Ordering::Release);
        self.reports.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self, now: u64) -> Option<Reading> {
        let at = self.at_us.load(Ordering::Acquire);
        if at == 0 {
            return None;
        }
        Some(Reading {
            cpu_utilization: f64::from_bits(self.cpu.load(Ordering::Relaxed)),
            rps: f64::from_bits(self.rps.load(Ordering::Relaxed)),
            eps: f64::from_bits(self.eps.load(Ordering::Relaxed)),
            age: Duration::from_micros(now.saturating_sub(at)),
            reports: self.reports.load(Ordering::Relaxed),
        })
    }

    pub fn clear(&self) {
        self.at_us.store(0, Ordering::Release);
    }
}

/// Latency and failure estimates, updated per response.
struct Estimates {
    ewma_us: f64,
    ewma_at: u64,
    err: f64,
    err_at: u64,
}

impl Estimates {
    fn fresh() -> Estimates {
        Estimates {
            ewma_us: EWMA_DEFAULT_US,
            ewma_at: 0,
            err: 0.0,
            err_at: 0,
        }
    }
}

/// Outlier (passive) ejection state.
#[derive(Default)]
struct Ejection {
    consecutive_failures: u32,
    /// Ejections in a row; the n-th lasts `base × n`.
    count: u32,
    until_us: u64,
    /// After an ejection ends the worker is on probation: one failure ejects it again.
    probation: bool,
    probation_successes: u32,
}

/// The share of its weight a worker gets at the very start of its slow start: enough to be
/// picked now and then (ALB also sends a new target a trickle at once).
pub const SLOW_START_FLOOR: f64 = 0.05;

pub struct Worker {
    pub addr: SocketAddr,
    /// `ip:port`, for logs and the status page.
    pub name: String,
    /// The same, shared by metric label sets without copying.
    pub label: Arc<String>,
    /// The router generation whose background tasks run for this worker.
    task_generation: AtomicU64,
    in_flight: AtomicU32,
    max_in_flight: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    picks: AtomicU64,
    health: AtomicU8,
    draining: AtomicBool,
    /// A check whether the worker's address still accepts connections is running.
    listen_check: AtomicBool,
    /// How its connections were opened, so a reload that changes it closes the idle ones.
    reached_by: Mutex<Option<crate::transport::Transport>>,
    ejection: Mutex<Ejection>,
    ejected_until_us: AtomicU64,
    /// When it was added, last turned healthy, or its last ejection ends: slow start's origin.
    up_since_us: AtomicU64,
    estimates: Mutex<Estimates>,
    slots: [Slot; 3],
    /// CPU the worker says it may use, in cores (from any report); f64 bits, 0 = unknown.
    cores: AtomicU64,
    /// Of that, what it said it could use itself lately (less co-tenants), and when.
    available: AtomicU64,
    available_at_us: AtomicU64,
    /// The 90th percentile of its recent service times, as it last reported (ms), and when.
    service_p90_ms: AtomicU64,
    service_at_us: AtomicU64,
    /// Requests in flight at the worker from *other* balancers, as of its last in-band report
    /// (its reported in-flight count minus ours at that moment); f64 bits.
    others_in_flight: AtomicU64,
    others_at_us: AtomicU64,
    identity: Mutex<Option<Identity>>,
    pub pool: Pool,
    /// Its HTTP/2 connection, for target groups that speak HTTP/2 to it.
    pub h2: crate::h2_channel::H2Channel,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    signal: Arc<CapacitySignal>,
}

/// What a worker says it is (`x-fulcrum-instance`, `x-fulcrum-cluster`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    pub instance_id: String,
    pub cluster: Option<u32>,
}

/// How a forwarded request ended, as far as the worker's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Connect error, reset, timeout, or a 5xx.
    Failure,
    /// The connection was refused: nothing listens at the worker's address (it died or has
    /// not started), so every request would fail the same way until it is back. Ejects at
    /// once rather than after `consecutive_failures`: a policy that already avoids a failing
    /// worker (cpu-aware) would otherwise pick it too rarely for the count to ever be reached
    /// while each rare pick still costs a failed attempt.
    Refused,
}

impl Worker {
    pub fn new(addr: SocketAddr, max_in_flight: usize, signal: Arc<CapacitySignal>) -> Worker {
        Worker {
            signal,
            addr,
            name: addr.to_string(),
            label: Arc::new(addr.to_string()),
            task_generation: AtomicU64::new(u64::MAX),
            in_flight: AtomicU32::new(0),
            max_in_flight: AtomicUsize::new(max_in_flight),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            picks: AtomicU64::new(0),
            health: AtomicU8::new(Health::Unknown as u8),
            draining: AtomicBool::new(false),
            listen_check: AtomicBool::new(false),
            reached_by: Mutex::new(None),
            ejection: Mutex::new(Ejection::default()),
            ejected_until_us: AtomicU64::new(0),
            up_since_us: AtomicU64::new(now_us()),
            estimates: Mutex::new(Estimates::fresh()),
            slots: Default::default(),
            cores: AtomicU64::new(0),
            available: AtomicU64::new(0),
            available_at_us: AtomicU64::new(0),
            service_p90_ms: AtomicU64::new(0),
            service_at_us: AtomicU64::new(0),
            others_in_flight: AtomicU64::new(0),
            others_at_us: AtomicU64::new(0),
            identity: Mutex::new(None),
            pool: Pool::default(),
            h2: Default::default(),
            tasks: Mutex::new(Vec::new()),
        }
    }

    // ----- eligibility -----

    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }

    /// Sets health from the active checker; returns whether it changed. Turning healthy ends
    /// any passive ejection and clears the failure and latency history: the checker has
    /// positively seen the worker serve again.
    pub fn set_health(&self, h: Health) -> bool {
        let old = self.health.swap(h as u8, Ordering::Relaxed);
        let changed = old != h as u8;
        if changed && h == Health::Healthy {
            self.up_since_us.store(now_us(), Ordering::Relaxed);
            *self.estimates.lock().expect("never poisoned") = Estimates::fresh();
            let mut e = self.ejection.lock().expect("never poisoned");
            if e.until_us != 0 {
                e.until_us = 0;
                e.count = 0;
                e.probation = true;
                e.probation_successes = 0;
                self.ejected_until_us.store(0, Ordering::Relaxed);
            }
        }
        changed
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until_us.load(Ordering::Relaxed) > now
    }

    pub fn ejected_for(&self, now: u64) -> Duration {
        Duration::from_micros(
            self.ejected_until_us
                .load(Ordering::Relaxed)
                .saturating_sub(now),
        )
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self, d: bool) {
        self.draining.store(d, Ordering::Relaxed);
    }

    /// Healthy (or not yet checked), not ejected, not being removed.
    pub fn is_available(&self, now: u64) -> bool {
        self.health() != Health::Unhealthy && !self.is_ejected(now) && !self.is_draining()
    }

    pub fn has_capacity(&self) -> bool {
        (self.in_flight.load(Ordering::Relaxed) as usize)
            < self.max_in_flight.load(Ordering::Relaxed)
    }

    pub fn set_max_in_flight(&self, n: usize) {
        self.max_in_flight.store(n, Ordering::Relaxed);
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::Relaxed)
    }

    // ----- load -----

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight on this worker until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.picks.fetch_add(1, Ordering::Relaxed);
        InFlight {
            worker: self.clone(),
        }
    }

    pub fn picks(&self) -> u64 {
        self.picks.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Peak-EWMA latency in microseconds. Between samples it decays towards zero (as in
    /// tower's and Finagle's), so a worker that was slow long ago becomes worth trying again.
    pub fn ewma_us(&self, now: u64) -> f64 {
        let e = self.estimates(now);
        decay(e.ewma_us, e.ewma_at, now, EWMA_TAU_US)
    }

    /// Recent failure share in [0, 1], decayed to `now` so an idle failing worker is
    /// eventually tried again.
    pub fn error_rate(&self, now: u64) -> f64 {
        let e = self.estimates(now);
        decay(e.err, e.err_at, now, ERR_TAU_US)
    }

    /// The estimates, started afresh if an ejection has ended since they were last updated.
    /// The ejection was the penalty for what the worker did before it; it returns on
    /// probation (one failure ejects it again, for longer). Carrying the old failure share
    /// over as well would keep a recovered worker out long after: a failure penalty makes it
    /// lose every comparison with an idle peer, so it gets no request that could lower it,
    /// and it only fades with time (after a restart, cpu-aware sent it nothing for ~4 s).
    fn estimates(&self, now: u64) -> std::sync::MutexGuard<'_, Estimates> {
        let mut e = self.estimates.lock().expect("never poisoned");
        let ended = self.ejected_until_us.load(Ordering::Relaxed);
        if ended != 0 && ended <= now && e.err_at.max(e.ewma_at) < ended {
            *e = Estimates::fresh();
        }
        e
    }

    /// Records how a forwarded request went: latency (to response headers), failure share,
    /// and passive ejection. Returns `true` if this outcome ejected the worker.
    pub fn record(
        &self,
        outcome: Outcome,
        latency: Duration,
        now: u64,
        outlier: &OutlierSettings,
    ) -> bool {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let failed = outcome != Outcome::Success;
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut e = self.estimates(now);
            // A failure costs at least a penalty latency, so a worker that fails fast does
            // not look fast (Linkerd's load biaser does the same).
            let sample = if failed {
                (latency.as_micros() as f64).max(FAILURE_PENALTY_US)
            } else {
                latency.as_micros() as f64
            };

            if e.ewma_at == 0 || sample > e.ewma_us {
                e.ewma_us = sample;
            } else {
                let w = (-((now.saturating_sub(e.ewma_at)) as f64) / EWMA_TAU_US).exp();
                e.ewma_us = e.ewma_us * w + sample * (1.0 - w);
            }
            e.ewma_at = now;
            // Failure share: decay the old value by time, then move 10% towards this sample.
            let decayed = decay(e.err, e.err_at, now, ERR_TAU_US);
            e.err = decayed * 0.9 + if failed { 0.1 } else { 0.0 };
            e.err_at = now;
        }
        let mut ej = self.ejection.lock().expect("never poisoned");
        if !failed {
            ej.consecutive_failures = 0;
            if ej.probation {
                ej.probation_successes += 1;
                if ej.probation_successes >= outlier.consecutive_failures.max(1) {
                    ej.probation = false;
                    ej.count = 0;
                }
            }
            return false;
        }
        self.eject_after_failure(&mut ej, outcome == Outcome::Refused, now, outlier)
    }

    /// Notes that a response the worker had begun failed afterwards (its body stalled or was
    /// cut short): a failure for its estimates and ejection, the request already counted.
    /// Returns `true` if this ejected the worker.
    pub fn record_late_failure(&self, now: u64, outlier: &OutlierSettings) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        {
            let mut e = self.estimates(now);
            let decayed = decay(e.err, e.err_at, now, ERR_TAU_US);
            e.err = decayed * 0.9 + 0.1;
            e.err_at = now;
        }
        let mut ej = self.ejection.lock().expect("never poisoned");
        self.eject_after_failure(&mut ej, false, now, outlier)
    }

    /// Notes that the worker's address refused a connection made outside any request (the
    /// check after a broken connection, in `proxy.rs`): it ejects as a refused request would,
    /// without counting a request. Returns `true` if this ejected the worker.
    pub fn refused_check(&self, now: u64, outlier: &OutlierSettings) -> bool {
        let mut ej = self.ejection.lock().expect("never poisoned");
        self.eject_after_failure(&mut ej, true, now, outlier)
    }

    /// Claims the one "is anything still listening?" check a worker may have in flight.
    pub fn claim_listen_check(&self) -> bool {
        !self.listen_check.swap(true, Ordering::Relaxed)
    }

    pub fn release_listen_check(&self) {
        self.listen_check.store(false, Ordering::Relaxed);
    }

    fn eject_after_failure(
        &self,
        ej: &mut Ejection,
        refused: bool,
        now: u64,
        outlier: &OutlierSettings,
    ) -> bool {
        ej.consecutive_failures += 1;
        let trip =
            ej.probation || refused || ej.consecutive_failures >= outlier.consecutive_failures;
        if !trip || ej.until_us > now || !(outlier.may_eject)(self) {
            return false;
        }
        ej.count = (ej.count + 1).min(30);
        let dur = outlier.base_ejection.as_micros() as u64 * ej.count as u64;
        ej.until_us = now + dur;
        ej.consecutive_failures = 0;
        ej.probation = true;
        ej.probation_successes = 0;
        self.ejected_until_us.store(ej.until_us, Ordering::Relaxed);
        self.up_since_us.store(ej.until_us, Ordering::Relaxed);
        true
    }

    #[cfg(test)]
    pub fn force_up_since(&self, us: u64) {
        self.up_since_us.store(us, Ordering::Relaxed);
    }

    /// Slow start: the share of its weight a worker gets `now`, rising linearly from
    /// [`SLOW_START_FLOOR`] to 1 over `slow_start_us` after it was added, turned healthy or
    /// came back from an ejection.
    pub fn ramp(&self, now: u64, slow_start_us: u64) -> f64 {
        if slow_start_us == 0 {
            return 1.0;
        }
        let since = self.up_since_us.load(Ordering::Relaxed);
        let done = now.saturating_sub(since) as f64 / slow_start_us as f64;
        done.clamp(SLOW_START_FLOOR, 1.0)
    }

    // ----- telemetry -----

    pub fn slot(&self, source: TelemetrySource) -> &Slot {
        &self.slots[source as usize]
    }

    /// Stores a report from `source`, and the capacity it states.
    pub fn store_report(&self, source: TelemetrySource, report: &LoadReport, now: u64) {
        if let Some(cpu) = report.cpu_utilization {
            self.slot(source).store(
                cpu,
                report.rps_fractional.unwrap_or(0.0),
                report.eps.unwrap_or(0.0),
                now,
            );
        }
        if let Some(c) = report.cpu_cores.filter(|c| *c > 0.0) {
            self.cores.store(c.to_bits(), Ordering::Relaxed);
        }
        if let Some(a) = report.cpu_available.filter(|a| a.is_finite()) {
            self.available.store(a.to_bits(), Ordering::Relaxed);
            self.available_at_us.store(now, Ordering::Relaxed);
        }
        if let Some(p) = report.service_p90_ms.filter(|p| *p > 0.0) {
            self.service_p90_ms.store(p.to_bits(), Ordering::Relaxed);
            self.service_at_us.store(now, Ordering::Relaxed);
        }
        if source == TelemetrySource::Inband {
            if let Some(n) = report.inflight {
                self.note_reported_in_flight(n, now);
            }
        }
    }

    /// Notes the in-flight count a worker reported on a response this balancer is still
    /// counting as in flight: what it has beyond ours is other balancers' load.
    pub fn note_reported_in_flight(&self, reported: f64, now: u64) {
        let ours = self.in_flight() as f64;
        let others = (reported - ours).max(0.0);
        self.others_in_flight
            .store(others.to_bits(), Ordering::Relaxed);
        self.others_at_us.store(now, Ordering::Relaxed);
    }

    /// Requests other balancers have in flight on this worker, as last reported, if the
    /// report is younger than `fresh_us`.
    pub fn others_in_flight(&self, now: u64, fresh_us: u64) -> f64 {
        let at = self.others_at_us.load(Ordering::Relaxed);
        if at == 0 || now.saturating_sub(at) > fresh_us {
            return 0.0;
        }
        f64::from_bits(self.others_in_flight.load(Ordering::Relaxed))
    }

    /// The CPU the worker can put to our requests, in cores: what it last said it could use
    /// (its quota less co-tenants) while that is younger than `fresh_us`, else its quota.
    pub fn capacity(&self, now: u64, fresh_us: u64) -> Option<f64> {
        let at = self.available_at_us.load(Ordering::Relaxed);
        if at != 0 && now.saturating_sub(at) <= fresh_us {
            let a = f64::from_bits(self.available.load(Ordering::Relaxed));
            // Never nothing: a worker whose co-tenant takes it all still gets the odd request,
            // so it is seen when it recovers.
            return Some(a.max(self.cores().unwrap_or(a) * 0.05));
        }
        self.cores()
    }

    /// The 90th percentile of the worker's recent service times (ms), as it reported them,
    /// if that report is younger than `fresh_us`.
    pub fn service_p90_ms(&self, now: u64, fresh_us: u64) -> Option<f64> {
        let at = self.service_at_us.load(Ordering::Relaxed);
        (at != 0 && now.saturating_sub(at) <= fresh_us)
            .then(|| f64::from_bits(self.service_p90_ms.load(Ordering::Relaxed)))
    }

    /// CPU the worker may use, in cores, if it has said.
    pub fn cores(&self) -> Option<f64> {
        let c = f64::from_bits(self.cores.load(Ordering::Relaxed));
        (c > 0.0).then_some(c)
    }

    pub fn set_cores(&self, c: f64) {
        if c > 0.0 && c.is_finite() {
            self.cores.store(c.to_bits(), Ordering::Relaxed);
        }
    }

    pub fn identity(&self) -> Option<Identity> {
        self.identity.lock().expect("never poisoned").clone()
    }

    /// Remembers who answered; cheap when nothing changed (the common case).
    pub fn note_identity(&self, instance_id: &[u8], cluster: Option<u32>) {
        let mut id = self.identity.lock().expect("never poisoned");
        if let Some(cur) = id.as_ref() {
            if cur.instance_id.as_bytes() == instance_id && cur.cluster == cluster {
                return;
            }
        }
        *id = Some(Identity {
            instance_id: String::from_utf8_lossy(instance_id).into_owned(),
            cluster,
        });
    }

    // ----- background tasks -----

    pub fn add_task(&self, t: JoinHandle<()>) {
        self.tasks.lock().expect("never poisoned").push(t);
    }

    pub fn task_generation(&self) -> u64 {
        self.task_generation.load(Ordering::Relaxed)
    }

    pub fn set_task_generation(&self, g: u64) {
        self.task_generation.store(g, Ordering::Relaxed);
    }

    /// Notes how the worker is reached now; if that changed, its idle connections (opened the
    /// old way) are closed, so no request goes out the old way after a reload.
    pub fn set_transport(&self, transport: &crate::transport::Transport) {
        let mut held = self.reached_by.lock().expect("never poisoned");
        if held.as_ref().is_some_and(|t| t != transport) {
            self.pool.close_idle();
            self.h2.close();
        }
        *held = Some(transport.clone());
    }

    pub fn stop_tasks(&self) {
        for t in self.tasks.lock().expect("never poisoned").drain(..) {
            t.abort();
        }
    }
}

/// A failed request counts as at least this slow (1 s) in latency estimates.
const FAILURE_PENALTY_US: f64 = 1_000_000.0;

fn decay(value: f64, at: u64, now: u64, tau: f64) -> f64 {
    if at == 0 {
        return value;
    }
    value * (-((now.saturating_sub(at)) as f64) / tau).exp()
}

/// What passive ejection needs from the target group that saw the failure.
pub struct OutlierSettings<'a> {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    /// Whether the group can afford one more ejected worker.
    pub may_eject: &'a dyn Fn(&Worker) -> bool,
}

/// A request in flight on a worker; dropping it ends the request.
pub struct InFlight {
    worker: Arc<Worker>,
}

impl InFlight {
    pub fn worker(&self) -> &Arc<Worker> {
        &self.worker
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.worker.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.worker.signal.freed();
    }
}

/// Every worker the balancer knows, by address.
#[derive(Default)]
pub struct Fleet {
    workers: Mutex<HashMap<SocketAddr, Arc<Worker>>>,
    pub signal: Arc<CapacitySignal>,
}

impl Fleet {
    /// The worker at `addr`, created if new; the flag says whether it was.
    pub fn get_or_add(&self, addr: SocketAddr, max_in_flight: usize) -> (Arc<Worker>, bool) {
        let mut map = self.workers.lock().expect("never poisoned");
        if let Some(w) = map.get(&addr) {
            return (w.clone(), false);
        }
        let w = Arc::new(Worker::new(addr, max_in_flight, self.signal.clone()));
        map.insert(addr, w.clone());
        (w, true)
    }

    pub fn all(&self) -> Vec<Arc<Worker>> {
        let mut v: Vec<_> = self
            .workers
            .lock()
            .expect("never poisoned")
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|w| w.addr);
        v
    }

    /// Forgets a worker (after it drained); its background tasks stop.
    pub fn remove(&self, addr: SocketAddr) {
        if let Some(w) = self.workers.lock().expect("never poisoned").remove(&addr) {
            w.stop_tasks();
            w.pool.close_idle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(may: &dyn Fn(&Worker) -> bool) -> OutlierSettings<'_> {
        OutlierSettings {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(1),
            may_eject: may,
        }
    }

    #[test]
    fn consecutive_failures_eject_then_probation_reejects_longer() {
        let w = Worker::new("127.0.0.1:1".parse().unwrap(), 10, Default::default());
        let yes = |_: &Worker| true;
        let s = settings(&yes);
        let t0 = 1_000_000;
        assert!(!w.record(Outcome::Failure, Duration::ZERO, t0, &s));
        assert!(!w.record(Outcome::Success, Duration::ZERO, t0, &s));
        assert!(!w.record(Outcome::Failure, Duration::ZERO, t0, &s));
        assert!(!w.record(Outcome::Failure, Duration::ZERO, t0, &s));
        assert!(
            w.record(Outcome::Failure, Duration::ZERO, t0, &s),
            "3 in a row eject"
        );
        assert!(w.is_ejected(t0) && !w.is_available(t0));
        assert_eq!(w.ejected_for(t0), Duration::from_secs(1));
        let t1 = t0 + 1_000_001;
        assert!(w.is_available(t1), "ejection expires");
        assert!(
            w.record(Outcome::Failure, Duration::ZERO, t1, &s),
            "probation: one failure"
        );
        assert_eq!(
            w.ejected_for(t1),
            Duration::from_secs(2),
            "second ejection is 2 × base"
        );
        // A health checker that sees it serve again ends the ejection.
        w.set_health(Health::Unhealthy);
        w.set_health(Health::Healthy);
        assert!(w.is_available(t1));
    }

    #[test]
    fn a_refused_connection_ejects_at_once_within_the_cap() {
        let w = Worker::new("127.0.0.1:1".parse().unwrap(), 10, Default::default());
        let yes = |_: &Worker| true;
        assert!(w.record(Outcome::Refused, Duration::ZERO, 10, &settings(&yes)));
        assert!(!w.is_available(10));
        assert_eq!(w.failures(), 1);
        let checked = Worker::new("127.0.0.1:3".parse().unwrap(), 10, Default::default());
        assert!(checked.claim_listen_check() && !checked.claim_listen_check());
        assert!(checked.refused_check(10, &settings(&yes)));
        assert!(!checked.is_available(10));
        assert_eq!(
            (checked.requests(), checked.failures()),
            (0, 0),
            "a check is no request"
        );
        checked.release_listen_check();
        assert!(checked.claim_listen_check());
        let capped = Worker::new("127.0.0.1:2".parse().unwrap(), 10, Default::default());
        let no = |_: &Worker| false;
        assert!(!capped.record(Outcome::Refused, Duration::ZERO, 10, &settings(&no)));
        assert!(capped.is_available(10));
    }

    #[test]
    fn a_worker_returns_from_ejection_or_ill_health_with_a_clean_record() {
        let w = Worker::new("127.0.0.1:1".parse().unwrap(), 10, Default::default());
        let yes = |_: &Worker| true;
        let s = settings(&yes);
        let t0 = 1_000_000;
        for _ in 0..3 {
            w.record(Outcome::Failure, Duration::from_micros(100), t0, &s);
        }
        assert!(w.is_ejected(t0));
        // A request that was in flight fails after the ejection began: still forgiven.
        w.record(Outcome::Failure, Duration::ZERO, t0 + 500_000, &s);
        assert!(w.error_rate(t0 + 500_000) > 0.2);
        let back = t0 + 1_000_001;
        assert!(w.is_available(back));
        assert_eq!(w.error_rate(back), 0.0);
        assert_eq!(w.ewma_us(back), EWMA_DEFAULT_US);
        // Still on probation: the next failure ejects again.
        assert!(w.record(Outcome::Failure, Duration::ZERO, back, &s));
        assert!(w.error_rate(back) > 0.0);

        let sick = Worker::new("127.0.0.1:2".parse().unwrap(), 10, Default::default());
        let never = |_: &Worker| false;
        for i in 0..5 {
            sick.record(Outcome::Failure, Duration::ZERO, t0 + i, &settings(&never));
        }
        sick.set_health(Health::Unhealthy);
        assert!(sick.error_rate(t0 + 10) > 0.3);
        sick.set_health(Health::Healthy);
        assert_eq!(sick.error_rate(t0 + 10), 0.0);
    }

    #[test]
    fn the_group_cap_prevents_ejection() {
        let w = Worker::new("127.0.0.1:1".parse().unwrap(), 10, Default::default());
        let no = |_: &Worker| false;
        let s = settings(&no);
        for _ in 0..10 {
            assert!(!w.record(Outcome::Failure, Duration::ZERO, 5, &s));
        }
        assert!(w.is_available(5));
    }

    #[test]
    fn failures_raise_error_rate_and_latency_which_fade() {
        let w = Worker::new("127.0.0.1:1".parse().unwrap(), 10, Default::default());
        let yes = |_: &Worker| false;
        let s = settings(&yes);
        for i in 0..20 {
            w.record(Outcome::Failure, Duration::from_micros(100), 1 + i, &s);
        }
        assert!(w.error_rate(21) > 0.8);
        assert!(w.ewma_us(21) >= FAILURE_PENALTY_US * 0.99);
        assert!(w.error_rate(21 + 30_000_000) < 0.01, "fades after 30 s");
    }

    #[test]
    fn slots_report_age() {
        let s = Slot::default();
        assert!(s.read(10).is_none());
        s.store(0.5, 10.0, 0.0, 1_000);
        let r = s.read(501_000).unwrap();
        assert_eq!(r.cpu_utilization, 0.5);
        assert_eq!(r.age, Duration::from_millis(500));
    }
}
