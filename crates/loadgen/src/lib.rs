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
//! merged at the end (percentiles are never averaged). Several targets share the load evenly
//! (`spread`), and a request mix (`mix`) replaces the one request (the run's method, headers
//! and body: `RequestShape`) with weighted ones, each still serialized once; `https://` targets
//! go over rustls (`tls`). Connections speak HTTP/1.1 (`client`, one request at a time) or, with
//! `Protocol::H2`, HTTP/2 (`http2`: h2c with prior knowledge or ALPN `h2`, several streams per
//! connection, each stream running the HTTP/1.1 connection's loop, so both models keep their
//! meaning). Worker CPU and the balancer's view are
//! sampled at 4 Hz into the same timeline, and the generator measures its own CPU so a saturated
//! generator is flagged rather than trusted.
//!
//! It does not own what is measured (deployments, balancers) or how results are presented
//! (`fulcrum-report`).

mod client;
mod http2;
pub mod mix;
mod request;
pub mod results;
mod sampler;
mod spread;
mod stats;
pub mod threshold;
pub mod tls;

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;

pub use mix::{MixEntry, MixError, RequestMix};
pub use results::{Model, Run, RunKind};
pub use sampler::{CpuProbe, Sampling, WorkerProbe};
pub use tls::TlsOptions;

/// One benchmark's settings.
pub struct BenchConfig {
    pub name: String,
    pub kind: RunKind,
    /// The URLs to load, at least one. The load is spread evenly over them: connection k loads
    /// target k mod N; in the open model each target gets its own schedule at rate / N.
    pub targets: Vec<String>,
    /// Weighted requests sent to every target instead of each URL's own path (then ignored).
    pub mix: Option<RequestMix>,
    /// The method, extra headers and body of every request (a mix entry may name its own
    /// method and body).
    pub shape: RequestShape,
    /// How `https://` targets are checked.
    pub tls: TlsOptions,
    /// HTTP/1.1, or HTTP/2 (h2c with prior knowledge on `http://`, ALPN `h2` on `https://`).
    pub protocol: Protocol,
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

/// How the generator's connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// One request at a time per keep-alive connection.
    #[default]
    Http1,
    /// HTTP/2 with `streams` requests in flight per connection.
    H2 { streams: usize },
}

impl Protocol {
    /// As results.json names it (the ALPN identifier).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::H2 { .. } => "h2",
        }
    }

    /// Requests in flight per connection at most.
    pub fn streams(self) -> usize {
        match self {
            Protocol::Http1 => 1,
            Protocol::H2 { streams } => streams,
        }
    }
}

/// What every request carries besides its path.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestShape {
    pub method: String,
    /// Sent as given, after `Host` and `User-Agent` (a `User-Agent` here replaces ours).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Where the body was read from (`--body @FILE`); `None` for inline text or no body.
    pub body_file: Option<std::path::PathBuf>,
}

impl Default for RequestShape {
    fn default() -> RequestShape {
        RequestShape {
            method: "GET".into(),
            headers: Vec::new(),
            body: Bytes::new(),
            body_file: None,
        }
    }
}

impl RequestShape {
    /// `Name: value` as `-H` takes it.
    pub fn parse_header(h: &str) -> Result<(String, String), String> {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("header `{h}` is not `Name: value`"))?;
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(format!("header `{h}`: `{name}` is not a field name"));
        }
        let value = value.trim();
        if value.bytes().any(|b| b < 0x20 && b != b'\t') {
            return Err(format!("header `{h}`: the value has control characters"));
        }
        let framing = ["host", "content-length", "transfer-encoding", "connection"];
        if framing.iter().any(|f| f.eq_ignore_ascii_case(name)) {
            return Err(format!("header `{name}` is the generator's own to send"));
        }
        Ok((name.to_owned(), value.to_owned()))
    }

    /// What results.json says was sent: credentials' values redacted.
    fn sent(&self, protocol: Protocol) -> results::RequestSent {
        let secret = ["authorization", "proxy-authorization", "cookie"];
        results::RequestSent {
            protocol: protocol.name().into(),
            streams: protocol.streams(),
            method: self.method.clone(),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| {
                    let hidden = secret.iter().any(|s| s.eq_ignore_ascii_case(name));
                    results::HeaderSent {
                        name: name.clone(),
                        value: if hidden { "<redacted>" } else { value }.to_owned(),
                    }
                })
                .collect(),
            body_bytes: self.body.len() as u64,
            body_file: self.body_file.as_ref().map(|f| f.display().to_string()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("`{0}` is not an http:// or https:// URL with a host")]
    BadUrl(String),
    #[error("cannot resolve `{0}`")]
    Resolve(String),
    #[error("{0}")]
    Invalid(String),
}

/// A URL as a target: its address, and its requests serialized once — the URL's own path, or
/// with a mix every entry's path instead.
fn target(
    url: &str,
    mix: Option<&RequestMix>,
    shape: &RequestShape,
    tls: Option<&tokio_rustls::TlsConnector>,
    protocol: Protocol,
) -> Result<client::Target, BenchError> {
    let uri: Uri = url.parse().map_err(|_| BenchError::BadUrl(url.into()))?;
    let secure = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(BenchError::BadUrl(url.into())),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| BenchError::BadUrl(url.into()))?;
    let port = authority
        .port_u16()
        .unwrap_or(if secure { 443 } else { 80 });
    let addr: SocketAddr = (authority.host().trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|_| BenchError::Resolve(authority.to_string()))?
        .next()
        .ok_or_else(|| BenchError::Resolve(authority.to_string()))?;
    let requests: Vec<client::RequestParts> = match mix {
        Some(mix) => mix
            .entries
            .iter()
            .map(|e| client::RequestParts {
                method: e.method.as_deref().unwrap_or(&shape.method),
                path: &e.path,
                body: e.body.as_ref().map_or(&shape.body[..], |b| b.as_bytes()),
            })
            .collect(),
        None => vec![client::RequestParts {
            method: &shape.method,
            path: uri.path_and_query().map_or("/", |p| p.as_str()),
            body: &shape.body,
        }],
    };
    let mut target = client::Target::new(addr, authority.as_str(), &shape.headers, &requests);
    if protocol != Protocol::Http1 {
        let scheme = if secure { "https" } else { "http" };
        target.h2 = requests
            .iter()
            .map(|r| request::Template::new(scheme, authority.as_str(), &shape.headers, r))
            .collect::<Result<_, _>>()
            .map_err(|e| BenchError::Invalid(format!("--h2: {e}")))?;
    }
    if secure {
        let host = authority.host().trim_matches(['[', ']']).to_owned();
        let name = rustls::pki_types::ServerName::try_from(host)
            .map_err(|_| BenchError::BadUrl(url.into()))?;
        let connector = tls.ok_or_else(|| BenchError::Invalid("no TLS connector".into()))?;
        target.tls = Some(tls::TlsTarget {
            connector: connector.clone(),
            name,
        });
    }
    Ok(target)
}

/// Settings that cannot make a run, caught before anything starts.
fn check(cfg: &BenchConfig) -> Result<(), BenchError> {
    let invalid = |m: String| Err(BenchError::Invalid(m));
    if cfg.targets.is_empty() {
        return invalid("at least one target URL is needed".into());
    }
    // Results are kept per target URL: the same URL twice would be one target counted as two.
    let mut seen = cfg.targets.iter().enumerate();
    if let Some((_, url)) = seen.find(|(i, url)| cfg.targets[..*i].contains(url)) {
        return invalid(format!("target `{url}` is listed twice"));
    }
    if cfg.connections == 0 || cfg.threads == 0 {
        return invalid("connections and threads must be at least 1".into());
    }
    if cfg.protocol.streams() == 0 {
        return invalid("--streams must be at least 1".into());
    }
    if cfg.connections < cfg.targets.len() {
        return invalid(format!(
            "{} targets need at least as many connections (-c), not {}",
            cfg.targets.len(),
            cfg.connections
        ));
    }
    if let Some(mix) = &cfg.mix {
        mix.check()
            .map_err(|e| BenchError::Invalid(e.to_string()))?;
    }
    match cfg.model {
        Model::Open { rate, duration_s } if rate <= 0.0 || duration_s <= 0.0 => {
            invalid("--rate and --duration must be positive".into())
        }
        Model::Closed { requests: 0, .. } => invalid("-n must be at least 1".into()),
        _ => Ok(()),
    }
}

/// How one generator thread's connections draw their requests: sendable, turned into the
/// thread's own schedules once it runs.
enum Pace {
    /// One request counter for every connection of every thread.
    Closed { next: Arc<AtomicU64>, total: u64 },
    /// This thread's lane of each target's schedule (`None` for targets it does not load).
    Open {
        lanes: Vec<Option<spread::Lane>>,
        start: Instant,
        end: Instant,
    },
}

impl Pace {
    /// The schedule each target's connections on this thread share.
    fn schedules(self, targets: usize) -> Vec<Option<Rc<client::Schedule>>> {
        match self {
            Pace::Closed { next, total } => {
                vec![Some(Rc::new(client::Schedule::Closed { next, total })); targets]
            }
            Pace::Open { lanes, start, end } => lanes
                .into_iter()
                .map(|lane| {
                    lane.map(|l| {
                        Rc::new(client::Schedule::Open {
                            next: Rc::new(std::cell::Cell::new(0)),
                            start: start + l.first,
                            interval: l.interval,
                            end,
                        })
                    })
                })
                .collect(),
        }
    }
}

/// One generator thread: its connections on a single-threaded runtime, recording into its own
/// stats; returns them with the number of requests left unsent.
fn generate(
    connections: Range<usize>,
    run: client::Run,
    pace: Pace,
    stats: stats::ThreadStats,
) -> (stats::ThreadStats, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a generator runtime");
    let targets = run.targets.len();
    let schedules = pace.schedules(targets);
    let run = Rc::new(run);
    let stats = Rc::new(std::cell::RefCell::new(stats));
    let local = tokio::task::LocalSet::new();
    let unsent = local.block_on(&rt, async {
        let tasks: Vec<_> = connections
            .map(|k| {
                let target = spread::target_of(k, targets);
                let schedule = schedules[target]
                    .clone()
                    .expect("a lane for every target the thread loads");
                let (run, stats) = (run.clone(), stats.clone());
                match run.protocol {
                    Protocol::Http1 => tokio::task::spawn_local(client::connection(
                        run, schedule, stats, k, target,
                    )),
                    Protocol::H2 { streams } => tokio::task::spawn_local(http2::connection(
                        run, schedule, stats, k, target, streams,
                    )),
                }
            })
            .collect();
        let mut unsent = 0;
        for t in tasks {
            unsent += t.await.unwrap_or(0);
        }
        unsent
    });
    drop(run);
    drop(schedules);
    let mut s = Rc::try_unwrap(stats)
        .ok()
        .expect("connections are done")
        .into_inner();
    s.finish();
    (s, unsent)
}

/// Merges the timeline as threads report it and shows progress, until every thread is done.
fn follow(
    rx: mpsc::Receiver<stats::Report>,
    threads: usize,
    bar: Option<&indicatif::ProgressBar>,
    live: &stats::Live,
    measure_from: Instant,
) -> stats::Timeline {
    let mut timeline = stats::Timeline::new(threads);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(r) => timeline.absorb(r),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return timeline,
        }
        if let Some(bar) = bar {
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
}

/// The mix as used: each entry beside what was sent of it.
fn mix_usage(mix: Option<RequestMix>, sent_by_entry: &[u64]) -> Option<results::MixUsage> {
    let mix = mix?;
    Some(results::MixUsage {
        file: mix.file.unwrap_or_default(),
        entries: mix
            .entries
            .into_iter()
            .enumerate()
            .map(|(i, e)| results::MixEntryUsage {
                path: e.path,
                weight: e.weight,
                sent: sent_by_entry.get(i).copied().unwrap_or(0),
            })
            .collect(),
    })
}

/// When a run starts, measures and stops.
#[derive(Clone, Copy)]
struct Clock {
    /// The first request may go (warm-up, if any, starts here).
    start: Instant,
    measure_from: Instant,
    /// Open model: the end of the schedule.
    end: Option<Instant>,
    /// Nothing is sent after this.
    stop_at: Instant,
}

impl Clock {
    fn of(cfg: &BenchConfig) -> Clock {
        let start = Instant::now() + Duration::from_millis(20);
        let measure_from = start + cfg.warmup;
        let (end, stop_at) = match cfg.model {
            Model::Open { duration_s, .. } => {
                let end = measure_from + Duration::from_secs_f64(duration_s);
                (Some(end), end + cfg.timeout)
            }
            Model::Closed { .. } => (None, start + Duration::from_secs(24 * 3600)),
        };
        Clock {
            start,
            measure_from,
            end,
            stop_at,
        }
    }
}

/// What the generator threads measured, merged, with the generator's own cost.
struct Measured {
    merged: stats::Merged,
    unsent: u64,
    timeline: stats::Timeline,
    threads: usize,
    finished: Instant,
    cpu_seconds: f64,
}

/// Runs one benchmark to completion (blocking) and returns what it measured.
pub fn run(cfg: BenchConfig) -> Result<Run, BenchError> {
    check(&cfg)?;
    // One TLS configuration for every https:// target (and connection) of the run.
    let connector = if cfg.targets.iter().any(|t| t.starts_with("https://")) {
        let alpn = cfg.protocol.name();
        Some(tls::connector(&cfg.tls, alpn).map_err(BenchError::Invalid)?)
    } else {
        None
    };
    let targets = cfg
        .targets
        .iter()
        .map(|url| {
            let tls = connector.as_ref();
            target(url, cfg.mix.as_ref(), &cfg.shape, tls, cfg.protocol)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if cfg.protocol != Protocol::Http1 {
        let urls = cfg.targets.iter().map(String::as_str);
        let checked: Vec<_> = urls.zip(&targets).collect();
        http2::check_targets(&checked, cfg.timeout).map_err(BenchError::Invalid)?;
    }
    let clock = Clock::of(&cfg);
    let cpu_before = process_cpu();
    let sampler = sampler::start(cfg.sampling.clone(), clock.measure_from);
    let mut measured = generate_all(&cfg, targets, clock);
    measured.cpu_seconds = process_cpu().saturating_sub(cpu_before).as_secs_f64();
    let (cpu, balancer) = sampler.stop();
    Ok(into_run(cfg, clock, measured, cpu, balancer))
}

/// Starts the generator threads, follows their progress, and merges what they measured.
fn generate_all(cfg: &BenchConfig, targets: Vec<client::Target>, clock: Clock) -> Measured {
    let threads = cfg.threads.min(cfg.connections);
    let entries = targets[0].requests.len();
    let live = Arc::new(stats::Live::default());
    let (tx, rx) = mpsc::channel();
    let closed_next = Arc::new(AtomicU64::new(0));
    let shared = client::Run {
        targets,
        weights: cfg
            .mix
            .as_ref()
            .map_or_else(mix::Weights::single, RequestMix::weights),
        timeout: cfg.timeout,
        start: clock.start,
        measure_from: clock.measure_from,
        window_end: clock.end,
        stop_at: clock.stop_at,
        protocol: cfg.protocol,
    };
    let mut handles = Vec::new();
    for t in 0..threads {
        let pace = match cfg.model {
            Model::Closed { requests, .. } => Pace::Closed {
                next: closed_next.clone(),
                total: requests,
            },
            Model::Open { rate, .. } => Pace::Open {
                lanes: spread::open_lanes(rate, threads, cfg.connections, cfg.targets.len(), t),
                start: clock.start,
                end: clock.end.expect("open model has an end"),
            },
        };
        let stats =
            stats::ThreadStats::new(t, cfg.targets.len(), entries, tx.clone(), live.clone());
        let connections = spread::connections_of(t, threads, cfg.connections);
        let run = shared.clone();
        handles.push(std::thread::spawn(move || {
            generate(connections, run, pace, stats)
        }));
    }
    drop(tx);
    let bar = cfg.progress.then(|| progress_bar(cfg));
    let timeline = follow(rx, threads, bar.as_ref(), &live, clock.measure_from);
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
    Measured {
        merged: stats::merge(per_thread, &cfg.targets),
        unsent,
        timeline,
        threads,
        finished,
        cpu_seconds: 0.0,
    }
}

/// The run as results.json holds it.
fn into_run(
    cfg: BenchConfig,
    clock: Clock,
    m: Measured,
    cpu: Vec<results::CpuSample>,
    balancer: Vec<results::BalancerSample>,
) -> Run {
    let measured = match cfg.model {
        Model::Open { duration_s, .. } => duration_s,
        Model::Closed { .. } => m
            .finished
            .saturating_duration_since(clock.measure_from)
            .as_secs_f64(),
    };
    let merged = m.merged;
    // Throughput is what arrived inside the window: under overload an open-model backlog keeps
    // draining after the schedule ends, and counting that would overstate what was served.
    let achieved = merged.window_completions as f64 / measured.max(1e-9);
    let open = matches!(cfg.model, Model::Open { .. });
    Run {
        name: cfg.name,
        kind: cfg.kind,
        url: cfg.targets[0].clone(),
        targets: cfg.targets,
        policy: cfg.policy,
        telemetry: cfg.telemetry,
        target_rate: match cfg.model {
            Model::Open { rate, .. } => Some(rate),
            Model::Closed { .. } => None,
        },
        model: cfg.model,
        connections: cfg.connections,
        threads: m.threads,
        warmup_s: cfg.warmup.as_secs_f64(),
        started_s: cfg.clock_origin.map_or(0.0, |o| {
            clock
                .measure_from
                .saturating_duration_since(o)
                .as_secs_f64()
        }),
        duration_s: measured,
        responses: merged.responses,
        errors: merged.errors,
        achieved_rate: achieved,
        late_requests: merged.late,
        unsent_requests: m.unsent,
        latency: results::Hist::from_histogram(&merged.latency),
        service_time: open.then(|| results::Hist::from_histogram(&merged.service)),
        by_cluster: merged.by_cluster,
        by_instance: merged.by_instance,
        by_status_class: merged.by_status_class,
        by_target: merged.by_target,
        mix: mix_usage(cfg.mix, &merged.sent_by_entry),
        request: Some(cfg.shape.sent(cfg.protocol)),
        timeline: m.timeline.finish(),
        cpu,
        balancer,
        generator: generator_cost(m.cpu_seconds, clock.start, m.finished, m.threads),
    }
}

/// The generator's own CPU over the run; near-full use of its cores means it may have set the
/// pace itself.
fn generator_cost(
    cpu_seconds: f64,
    start: Instant,
    finished: Instant,
    threads: usize,
) -> results::Generator {
    let wall = finished
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(1e-9);
    let usable = threads.min(std::thread::available_parallelism().map_or(1, |n| n.get())) as f64;
    let utilization = cpu_seconds / (wall * usable);
    results::Generator {
        cpu_seconds,
        cpu_utilization: utilization,
        saturated: utilization > 0.9,
    }
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
        let t = target(
            "http://127.0.0.1:8080/cluster1?work_us=0",
            None,
            &RequestShape::default(),
            None,
            Protocol::Http1,
        )
        .unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            &t.requests[..],
            [
            "GET /cluster1?work_us=0 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: fulcrum-bench\r\n\r\n"
            ]
        );
        assert!(target(
            "ftp://x/",
            None,
            &RequestShape::default(),
            None,
            Protocol::Http1
        )
        .is_err());
        assert!(target(
            "nonsense",
            None,
            &RequestShape::default(),
            None,
            Protocol::Http1
        )
        .is_err());
        assert!(target(
            "http://127.0.0.1:9",
            None,
            &RequestShape::default(),
            None,
            Protocol::Http1
        )
        .unwrap()
        .requests[0]
            .starts_with(b"GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn a_mix_replaces_the_urls_path_with_each_entry() {
        let mix = RequestMix::new(vec![
            MixEntry::new("/?work_us=500", 3.0),
            MixEntry::new("/cluster1", 1.0),
        ])
        .unwrap();
        let t = target(
            "http://127.0.0.1:8080/ignored",
            Some(&mix),
            &RequestShape::default(),
            None,
            Protocol::Http1,
        )
        .unwrap();
        assert_eq!(
            &t.requests[..],
            [
                "GET /?work_us=500 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: fulcrum-bench\r\n\r\n",
                "GET /cluster1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: fulcrum-bench\r\n\r\n",
            ]
        );
    }

    #[test]
    fn settings_that_cannot_make_a_run_are_refused() {
        let cfg = |targets: &[&str], connections| BenchConfig {
            name: "t".into(),
            kind: RunKind::Bench,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            mix: None,
            shape: Default::default(),
            tls: Default::default(),
            protocol: Protocol::Http1,
            model: Model::Closed {
                requests: 10,
                concurrency: connections,
            },
            connections,
            threads: 1,
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(1),
            sampling: Sampling::default(),
            progress: false,
            policy: None,
            telemetry: None,
            clock_origin: None,
        };
        let refusal = |c: BenchConfig| check(&c).unwrap_err().to_string();
        assert_eq!(
            refusal(cfg(&["http://a/", "http://b/", "http://c/"], 2)),
            "3 targets need at least as many connections (-c), not 2"
        );
        assert_eq!(
            refusal(cfg(&["http://a/", "http://b/", "http://a/"], 3)),
            "target `http://a/` is listed twice"
        );
        assert_eq!(refusal(cfg(&[], 3)), "at least one target URL is needed");
        let mut emptied = cfg(&["http://a/"], 1);
        let mut mix = RequestMix::new(vec![MixEntry::new("/", 1.0)]).unwrap();
        mix.entries.clear();
        emptied.mix = Some(mix);
        assert_eq!(refusal(emptied), "request mix: expected at least one entry");
        assert!(check(&cfg(&["http://a/", "http://b/"], 2)).is_ok());
    }

    #[test]
    fn results_say_what_was_sent_without_credentials() {
        let shape = RequestShape {
            method: "POST".into(),
            headers: [
                ("Authorization", "Bearer t"),
                ("x-tenant", "acme"),
                ("Cookie", "s=1"),
                ("proxy-authorization", "Basic x"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .to_vec(),
            body: Bytes::from_static(b"12345"),
            body_file: Some("/tmp/body.json".into()),
        };
        let sent = shape.sent(Protocol::H2 { streams: 10 });
        assert_eq!((sent.protocol.as_str(), sent.streams), ("h2", 10));
        let values: Vec<_> = sent.headers.iter().map(|h| h.value.as_str()).collect();
        assert_eq!(values, ["<redacted>", "acme", "<redacted>", "<redacted>"]);
        assert_eq!(sent.headers[0].name, "Authorization");
        assert_eq!(
            (sent.body_bytes, sent.body_file.as_deref()),
            (5, Some("/tmp/body.json"))
        );
        let plain = RequestShape::default().sent(Protocol::Http1);
        assert_eq!((plain.protocol.as_str(), plain.streams), ("http/1.1", 1));
        assert_eq!((plain.body_bytes, plain.body_file), (0, None));
    }

    #[test]
    fn h2_targets_carry_templates_and_refuse_what_http2_cannot_send() {
        let h2 = Protocol::H2 { streams: 4 };
        let t = target(
            "http://127.0.0.1:9/x",
            None,
            &RequestShape::default(),
            None,
            h2,
        )
        .unwrap();
        assert_eq!(t.h2.len(), 1);
        let shape = RequestShape {
            headers: vec![("Upgrade".into(), "websocket".into())],
            ..RequestShape::default()
        };
        let e = target("http://127.0.0.1:9/x", None, &shape, None, h2).unwrap_err();
        assert!(e.to_string().starts_with("--h2: header `Upgrade`"), "{e}");
        // HTTP/1.1 sends it as given.
        assert!(target("http://127.0.0.1:9/x", None, &shape, None, Protocol::Http1).is_ok());
    }

    #[test]
    fn dates_are_rfc3339() {
        let d = now_rfc3339();
        assert_eq!(d.len(), 20);
        assert!(d.starts_with("20") && d.ends_with('Z'), "{d}");
    }
}
