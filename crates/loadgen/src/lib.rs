//! # fulcrum-loadgen
//!
//! Owns `fulcrum bench` and the `results.json` schema every measurement is written in.
//!
//! Two models. Closed (`-n/-c`, the seed's "1000 requests, 100 at a time"): each connection sends
//! its next request when the last one ends. Open (`--rate/--duration`): requests follow a constant
//! schedule and latency is measured from each request's *intended* send time, so a stalled
//! server shows up as latency instead of as fewer requests (coordinated omission, corrected as
//! wrk2 does); the service time from the actual send is kept beside it, with late and unsent
//! requests counted. Exactly the configured connections are used, spread over generator threads
//! that each run their own single-threaded runtime and record into their own HDR histograms,
//! merged at the end (percentiles are never averaged). Worker CPU and the balancer's view are
//! sampled at 4 Hz into the same timeline, and the generator measures its own CPU so a saturated
//! generator is flagged rather than trusted.
//!
//! It does not own what is measured (deployments, balancers) or how results are presented
//! (`fulcrum-report`).

mod client;
pub mod results;
mod sampler;
mod stats;
pub mod threshold;

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use http::Uri;

pub use results::{Model, Run, RunKind};
pub use sampler::{CpuProbe, Sampling, WorkerProbe};

/// One benchmark's settings.
pub struct BenchConfig {
    pub name: String,
    pub kind: RunKind,
    pub url: String,
    pub model: Model,
    pub connections: usize,
    pub threads: usize,
    pub warmup: Duration,
    pub timeout: Duration,
    pub sampling: Sampling,
    /// Show live progress on stderr.
    pub progress: bool,
    /// The policy and telemetry in force, when the caller knows them (recorded, not applied).
    pub policy: Option<String>,
    pub telemetry: Option<String>,
    /// Seconds since the enclosing results file started (for `Run::started_s`).
    pub clock_origin: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("`{0}` is not an http:// URL with a host")]
    BadUrl(String),
    #[error("cannot resolve `{0}`")]
    Resolve(String),
    #[error("{0}")]
    Invalid(String),
}

fn target(url: &str) -> Result<client::Target, BenchError> {
    let uri: Uri = url.parse().map_err(|_| BenchError::BadUrl(url.into()))?;
    if uri.scheme_str() != Some("http") {
        return Err(BenchError::BadUrl(url.into()));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| BenchError::BadUrl(url.into()))?;
    let port = authority.port_u16().unwrap_or(80);
    let addr: SocketAddr = (authority.host().trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|_| BenchError::Resolve(authority.to_string()))?
        .next()
        .ok_or_else(|| BenchError::Resolve(authority.to_string()))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Ok(client::Target::new(addr, authority.as_str(), path))
}

/// Runs one benchmark to completion (blocking) and returns what it measured.
pub fn run(cfg: BenchConfig) -> Result<Run, BenchError> {
    let target = target(&cfg.url)?;
    if cfg.connections == 0 || cfg.threads == 0 {
        return Err(BenchError::Invalid(
            "connections and threads must be at least 1".into(),
        ));
    }
    let threads = cfg.threads.min(cfg.connections);
    if let Model::Open { rate, duration_s } = cfg.model {
        if rate <= 0.0 || duration_s <= 0.0 {
            return Err(BenchError::Invalid(
                "--rate and --duration must be positive".into(),
            ));
        }
    }
    if let Model::Closed { requests, .. } = cfg.model {
        if requests == 0 {
            return Err(BenchError::Invalid("-n must be at least 1".into()));
        }
    }

    let live = Arc::new(stats::Live::default());
    let (tx, rx) = mpsc::channel();
    let closed_next = Arc::new(AtomicU64::new(0));
    let cpu_before = process_cpu();
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + cfg.warmup;
    let (end, stop_at) = match cfg.model {
        Model::Open { duration_s, .. } => {
            let end = measure_from + Duration::from_secs_f64(duration_s);
            (Some(end), end + cfg.timeout)
        }
        Model::Closed { .. } => (None, start + Duration::from_secs(24 * 3600)),
    };
    let sampler = sampler::start(cfg.sampling.clone(), measure_from);

    let mut handles = Vec::new();
    for t in 0..threads {
        let conns = cfg.connections / threads + usize::from(t < cfg.connections % threads);
        let (tx, live, closed_next, target) = (
            tx.clone(),
            live.clone(),
            closed_next.clone(),
            target.clone(),
        );
        let model = cfg.model.clone();
        let timeout = cfg.timeout;
        handles.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a generator runtime");
            let stats = Rc::new(std::cell::RefCell::new(stats::ThreadStats::new(
                t, tx, live,
            )));
            let schedule = Rc::new(match model {
                Model::Closed { requests, .. } => client::Schedule::Closed {
                    next: closed_next,
                    total: requests,
                },
                Model::Open { rate, .. } => {
                    // Each thread runs its share of the rate, offset so threads interleave.
                    let interval = Duration::from_secs_f64(threads as f64 / rate);
                    client::Schedule::Open {
                        next: Rc::new(std::cell::Cell::new(0)),
                        start: start + interval.mul_f64(t as f64 / threads as f64),
                        interval,
                        end: end.expect("open model has an end"),
                    }
                }
            });
            let run = Rc::new(client::Run {
                target,
                timeout,
                start,
                measure_from,
                window_end: end,
                stop_at,
            });
            let local = tokio::task::LocalSet::new();
            let unsent = local.block_on(&rt, async {
                let mut tasks = Vec::new();
                for _ in 0..conns {
                    tasks.push(tokio::task::spawn_local(client::connection(
                        run.clone(),
                        schedule.clone(),
                        stats.clone(),
                    )));
                }
                let mut unsent = 0;
                for t in tasks {
                    unsent += t.await.unwrap_or(0);
                }
                unsent
            });
            drop(run);
            drop(schedule);
            let mut s = Rc::try_unwrap(stats)
                .ok()
                .expect("connections are done")
                .into_inner();
            s.finish();
            (s, unsent)
        }));
    }
    drop(tx);

    // Coordinate: merge the timeline as it comes, show progress, wait for the threads.
    let bar = cfg.progress.then(|| progress_bar(&cfg));
    let mut timeline = stats::Timeline::new(threads);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(r) => timeline.absorb(r),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Some(bar) = &bar {
            let elapsed = Instant::now()
                .saturating_duration_since(measure_from)
                .as_secs_f64();
            let last = timeline.last();
            bar.set_message(format!(
                "{elapsed:5.1}s  {} responses  {} rps  p99 {}  {} errors",
                live.responses.load(Ordering::Relaxed),
                last.map_or("-".into(), |s| s.responses.to_string()),
                last.map_or("-".into(), |s| format!("{:.1}ms", s.p99_ms)),
                live.errors.load(Ordering::Relaxed),
            ));
        }
    }
    let mut per_thread = Vec::new();
    let mut unsent = 0;
    for h in handles {
        let (s, u) = h.join().expect("a generator thread panicked");
        per_thread.push(s);
        unsent += u;
    }
    let finished = Instant::now();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let (cpu, balancer) = sampler.stop();
    let measured = match cfg.model {
        Model::Open { duration_s, .. } => duration_s,
        Model::Closed { .. } => finished
            .saturating_duration_since(measure_from)
            .as_secs_f64(),
    };
    let cpu_seconds = process_cpu().saturating_sub(cpu_before).as_secs_f64();
    let wall = finished
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(1e-9);
    let usable = threads.min(std::thread::available_parallelism().map_or(1, |n| n.get())) as f64;
    let gen_util = cpu_seconds / (wall * usable);

    let merged = stats::merge(per_thread);
    // Throughput is what arrived inside the window: under overload an open-model backlog keeps
    // draining after the schedule ends, and counting that would overstate what was served.
    let achieved = merged.window_completions as f64 / measured.max(1e-9);
    let open = matches!(cfg.model, Model::Open { .. });
    Ok(Run {
        name: cfg.name,
        kind: cfg.kind,
        url: cfg.url,
        policy: cfg.policy,
        telemetry: cfg.telemetry,
        target_rate: match cfg.model {
            Model::Open { rate, .. } => Some(rate),
            Model::Closed { .. } => None,
        },
        model: cfg.model,
        connections: cfg.connections,
        threads,
        warmup_s: cfg.warmup.as_secs_f64(),
        started_s: cfg.clock_origin.map_or(0.0, |o| {
            measure_from.saturating_duration_since(o).as_secs_f64()
        }),
        duration_s: measured,
        responses: merged.responses,
        errors: merged.errors,
        achieved_rate: achieved,
        late_requests: merged.late,
        unsent_requests: unsent,
        latency: results::Hist::from_histogram(&merged.latency),
        service_time: open.then(|| results::Hist::from_histogram(&merged.service)),
        by_cluster: merged.by_cluster,
        by_instance: merged.by_instance,
        by_status_class: merged.by_status_class,
        timeline: timeline.finish(),
        cpu,
        balancer,
        generator: results::Generator {
            cpu_seconds,
            cpu_utilization: gen_util,
            // Near-full use of its cores means the generator itself may have set the pace.
            saturated: gen_util > 0.9,
        },
    })
}

fn progress_bar(cfg: &BenchConfig) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {prefix} {msg}")
            .expect("a valid template"),
    );
    bar.set_prefix(cfg.name.clone());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// CPU time used by this whole process (all threads).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The machine the results were measured on.
pub fn machine() -> results::Machine {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    results::Machine {
        hostname: read("/etc/hostname"),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        kernel: read("/proc/sys/kernel/osrelease"),
    }
}

/// Now, RFC 3339 in UTC, without a date library: seconds since the epoch broken down by hand.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_targets() {
        let t = target("http://127.0.0.1:8080/cluster1?work_us=0").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            t.request,
            "GET /cluster1?work_us=0 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: fulcrum-bench\r\n\r\n"
        );
        assert!(target("https://x/").is_err());
        assert!(target("nonsense").is_err());
        assert!(target("http://127.0.0.1:9")
            .unwrap()
            .request
            .starts_with(b"GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn dates_are_rfc3339() {
        let d = now_rfc3339();
        assert_eq!(d.len(), 20);
        assert!(d.starts_with("20") && d.ends_with('Z'), "{d}");
    }
}
