//! Sampling, at 4 Hz on its own thread, of what the generator cannot see in its responses: each
//! worker's CPU (from a CPU counter such as its cgroup's when one is given, which measures every
//! 250 ms slice exactly, else from the worker's own `/load`) and the balancer's view of each
//! worker (its `/status`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fulcrum_telemetry::probe;

use crate::results::{BalancerSample, CpuSample};

/// How to read one worker's CPU.
#[derive(Clone)]
pub enum CpuProbe {
    /// The worker's own `GET /load` (utilization over its sampling window).
    Load(SocketAddr),
    /// A cumulative CPU-time counter (e.g. the worker's cgroup) and the cores it may use.
    Counter {
        read: Arc<dyn Fn() -> Option<Duration> + Send + Sync>,
        cores: f64,
    },
}

#[derive(Clone)]
pub struct WorkerProbe {
    pub instance_id: String,
    pub cluster: String,
    pub cpu: CpuProbe,
}

/// What to sample during a run.
#[derive(Clone, Default)]
pub struct Sampling {
    /// The balancer's admin address, for `/status`.
    pub admin: Option<SocketAddr>,
    pub workers: Vec<WorkerProbe>,
}

impl Sampling {
    /// Workers as the balancer's `/status` lists them, each read through its `/load`.
    pub fn from_balancer(admin: SocketAddr) -> Sampling {
        let workers = probe::get(admin, "/status", Duration::from_secs(2))
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|s| s["workers"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|w| {
                Some(WorkerProbe {
                    instance_id: w["instance_id"].as_str()?.to_owned(),
                    cluster: w["cluster"].as_u64().map_or("?".into(), |c| c.to_string()),
                    cpu: CpuProbe::Load(w["address"].as_str()?.parse().ok()?),
                })
            })
            .collect();
        Sampling {
            admin: Some(admin),
            workers,
        }
    }
}

const EVERY: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(Vec<CpuSample>, Vec<BalancerSample>)>>,
}

/// Starts sampling; `t0` is the measurement start (earlier samples get negative times).
pub fn start(s: Sampling, t0: Instant) -> Sampler {
    let stop = Arc::new(AtomicBool::new(false));
    if s.admin.is_none() && s.workers.is_empty() {
        return Sampler { stop, handle: None };
    }
    let flag = stop.clone();
    let handle = std::thread::Builder::new()
        .name("fulcrum-sampler".into())
        .spawn(move || sample_loop(s, t0, &flag))
        .expect("start the sampler thread");
    Sampler {
        stop,
        handle: Some(handle),
    }
}

impl Sampler {
    pub fn stop(self) -> (Vec<CpuSample>, Vec<BalancerSample>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

fn rel(t0: Instant, at: Instant) -> f64 {
    if at >= t0 {
        at.duration_since(t0).as_secs_f64()
    } else {
        -(t0.duration_since(at).as_secs_f64())
    }
}

fn sample_loop(
    s: Sampling,
    t0: Instant,
    stop: &AtomicBool,
) -> (Vec<CpuSample>, Vec<BalancerSample>) {
    let mut cpu = Vec::new();
    let mut balancer = Vec::new();
    let mut last: Vec<Option<(Instant, Duration)>> = vec![None; s.workers.len()];
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for (i, w) in s.workers.iter().enumerate() {
            let now = Instant::now();
            let reading = match &w.cpu {
                CpuProbe::Load(addr) => probe::get(*addr, "/load", PROBE_TIMEOUT)
                    .ok()
                    .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
                    .map(|l| {
                        (
                            l["cpu_utilization"].as_f64().unwrap_or(0.0),
                            l["in_flight"].as_u64().unwrap_or(0),
                        )
                    }),
                CpuProbe::Counter { read, cores } => read().and_then(|used| {
                    let prev = last[i].replace((now, used));
                    prev.map(|(t, u)| {
                        let dt = now.duration_since(t).as_secs_f64().max(1e-6);
                        (used.saturating_sub(u).as_secs_f64() / (dt * cores), 0)
                    })
                }),
            };
            if let Some((u, in_flight)) = reading {
                cpu.push(CpuSample {
                    t: rel(t0, now),
                    instance_id: w.instance_id.clone(),
                    cluster: w.cluster.clone(),
                    cpu_utilization: u,
                    in_flight,
                });
            }
        }
        if let Some(admin) = s.admin {
            let now = Instant::now();
            let status = probe::get(admin, "/status", PROBE_TIMEOUT)
                .ok()
                .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok());
            for w in status
                .as_ref()
                .and_then(|s| s["workers"].as_array())
                .into_iter()
                .flatten()
            {
                balancer.push(BalancerSample {
                    t: rel(t0, now),
                    worker: w["address"].as_str().unwrap_or_default().to_owned(),
                    instance_id: w["instance_id"].as_str().map(str::to_owned),
                    in_flight: w["in_flight"].as_u64().unwrap_or(0),
                    picks: w["picks"].as_u64().unwrap_or(0),
                    healthy: w["available"].as_bool().unwrap_or(false),
                });
            }
        }
        next += EVERY;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    (cpu, balancer)
}
