//! `results.json`: everything a benchmark or an experiment measured, in a versioned schema.
//!
//! Latency is kept as raw HDR histograms (V2 deflate serialization, base64) beside their
//! summaries, so a report can merge, re-slice or re-plot without the generator, and nobody ever
//! averages percentiles. Times are in milliseconds unless a field says otherwise.

use std::collections::BTreeMap;

use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Bumped on any change a reader must know about.
pub const SCHEMA_VERSION: u32 = 2;

/// Histograms record microseconds from 1 µs to 1 hour with 3 significant digits.
pub const HIST_MAX_US: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// Records `us`, clamped into the histogram's range (the crate panics beyond its bound).
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, HIST_MAX_US));
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Results {
    pub schema: u32,
    pub fulcrum_version: String,
    /// The exact command line that produced the file.
    pub command: Vec<String>,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub machine: Machine,
    pub deployment: Option<Deployment>,
    pub runs: Vec<Run>,
    /// Present when `fulcrum experiment` produced the file.
    pub experiment: Option<Experiment>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub hostname: String,
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Deployment {
    pub name: String,
    /// `local` or `aws`.
    pub provider: String,
    pub balancer_url: String,
    pub admin_url: Option<String>,
    /// Local provider only: how instance types were emulated.
    pub emulation: Option<Emulation>,
    pub clusters: Vec<ClusterInfo>,
    pub instances: Vec<InstanceInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Emulation {
    /// Real cores per emulated vCPU.
    pub scale: f64,
    /// CFS period chosen for the quotas, in microseconds.
    pub period_us: u64,
    /// Burstable CPU credits emulated (off by default).
    pub credits: bool,
    pub memory_limits: bool,
    /// cgroup v1 or v2.
    pub cgroup: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterInfo {
    pub id: u32,
    pub route: String,
    pub instance_type: String,
    pub count: u32,
    pub vcpus_per_instance: u32,
    /// Cores each instance may use here (its quota), or its vCPUs on AWS.
    pub cores_per_instance: f64,
    pub work_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceInfo {
    pub cluster: u32,
    pub instance_id: String,
    pub address: String,
    pub instance_type: String,
    pub cores: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RunKind {
    /// A plain `fulcrum bench`.
    Bench,
    /// The seed's benchmark: 1000 requests, 100 at a time.
    Seed,
    /// One step of an open-loop capacity ramp.
    Capacity,
    /// One round of the policy shoot-out.
    Shootout,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "model", rename_all = "kebab-case")]
pub enum Model {
    /// `-n requests -c concurrency`: each connection sends its next request when the last ends.
    Closed { requests: u64, concurrency: usize },
    /// `--rate R --duration D`: requests on a constant schedule, latency from the intended send
    /// time (coordinated-omission corrected).
    Open { rate: f64, duration_s: f64 },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Run {
    pub name: String,
    pub kind: RunKind,
    /// The first target (what a single-target run loaded; kept for readers of older files).
    pub url: String,
    /// Every target, in the order given; the load was spread evenly over them. Empty in files
    /// written before runs had several targets.
    #[serde(default)]
    pub targets: Vec<String>,
    /// The policy and telemetry in force at the balancer, when known.
    pub policy: Option<String>,
    pub telemetry: Option<String>,
    pub model: Model,
    pub connections: usize,
    pub threads: usize,
    pub warmup_s: f64,
    /// Seconds from the start of the results file to the start of measurement.
    pub started_s: f64,
    /// Length of the measured part.
    pub duration_s: f64,
    /// Responses received in the measured part (any status).
    pub responses: u64,
    pub errors: Errors,
    /// Open model: the target rate; achieved is measured either way.
    pub target_rate: Option<f64>,
    /// Responses that arrived inside the measured window, per second of it.
    pub achieved_rate: f64,
    /// Open model: requests sent more than 1 ms after their intended time because every
    /// connection was still busy when they were due (the generator fell behind the server).
    pub late_requests: u64,
    /// Open model: requests never sent because the run ended with them still queued.
    pub unsent_requests: u64,
    /// Latency as clients see it. Open model: from the intended send time whenever the request
    /// was due while its connection was still busy (coordinated omission corrected), else from
    /// when it left (the runtime timer's sub-millisecond slop is not the server's).
    pub latency: Hist,
    /// Open model only: from the actual send time (what a closed-loop tool would report).
    pub service_time: Option<Hist>,
    pub by_cluster: BTreeMap<String, Group>,
    pub by_instance: BTreeMap<String, InstanceGroup>,
    pub by_status_class: BTreeMap<String, Group>,
    /// Per target URL: every outcome of the requests sent to it.
    #[serde(default)]
    pub by_target: BTreeMap<String, Group>,
    /// The request mix, when one was used, with what was sent of each entry.
    #[serde(default)]
    pub mix: Option<MixUsage>,
    /// How requests went out and what they carried (a mix entry may name its own method and
    /// body). Absent in files written before runs recorded it: those were HTTP/1.1.
    #[serde(default)]
    pub request: Option<RequestSent>,
    pub timeline: Vec<Second>,
    pub cpu: Vec<CpuSample>,
    pub balancer: Vec<BalancerSample>,
    pub generator: Generator,
}

/// What a run's requests were, as sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestSent {
    /// `http/1.1` or `h2`.
    pub protocol: String,
    /// Requests in flight per connection at most (HTTP/2 streams; 1 over HTTP/1.1).
    pub streams: usize,
    pub method: String,
    /// The extra header fields, in order; the values of `authorization`,
    /// `proxy-authorization` and `cookie` are `<redacted>`.
    pub headers: Vec<HeaderSent>,
    pub body_bytes: u64,
    /// The file the body was read from; absent for an inline body (or none).
    pub body_file: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeaderSent {
    pub name: String,
    pub value: String,
}

/// A request mix as used in a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MixUsage {
    /// The mix file as given; empty for a mix built in code.
    pub file: String,
    pub entries: Vec<MixEntryUsage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MixEntryUsage {
    pub path: String,
    pub weight: f64,
    /// Requests of this entry sent in the measured part (warm-up excluded): every outcome but a
    /// refused connection, so with no connect errors they add up to the run's latency count.
    pub sent: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Errors {
    pub connect: u64,
    pub timeout: u64,
    /// Connection reset, protocol error, and the like.
    pub io: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.io + self.status_4xx + self.status_5xx
    }
}

/// A latency histogram and its summary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hist {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// HdrHistogram V2 deflate serialization, base64, values in microseconds.
    pub hdr: String,
}

impl Hist {
    pub fn from_histogram(h: &Histogram<u64>) -> Hist {
        let ms = |us: u64| us as f64 / 1000.0;
        let mut buf = Vec::new();
        V2DeflateSerializer::new()
            .serialize(h, &mut buf)
            .expect("serializing to memory cannot fail");
        let empty = h.is_empty();
        Hist {
            count: h.len(),
            min_ms: if empty { 0.0 } else { ms(h.min()) },
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: if empty { 0.0 } else { ms(h.max()) },
            hdr: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, buf),
        }
    }

    /// The raw histogram back.
    pub fn histogram(&self) -> Result<Histogram<u64>, String> {
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &self.hdr)
            .map_err(|e| e.to_string())?;
        Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| format!("{e:?}"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Group {
    pub responses: u64,
    pub errors: u64,
    pub latency: Hist,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceGroup {
    pub cluster: String,
    pub responses: u64,
    pub errors: u64,
    pub latency: Hist,
}

/// One second of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Second {
    /// Seconds since the run's measurement started.
    pub t: f64,
    pub responses: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub responses_by_cluster: BTreeMap<String, u64>,
}

/// A worker's CPU as sampled during a run (≥ 2 Hz).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CpuSample {
    /// Seconds since the run's measurement started (negative during warm-up).
    pub t: f64,
    pub instance_id: String,
    pub cluster: String,
    /// Fraction of the CPU the worker may use.
    pub cpu_utilization: f64,
    pub in_flight: u64,
}

/// The balancer's view of a worker, sampled from its `/status` during a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BalancerSample {
    pub t: f64,
    pub worker: String,
    pub instance_id: Option<String>,
    pub in_flight: u64,
    pub picks: u64,
    pub healthy: bool,
}

/// The load generator's own cost: a saturated generator produces fake flat latency.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Generator {
    pub cpu_seconds: f64,
    /// Of the cores its threads could use.
    pub cpu_utilization: f64,
    pub saturated: bool,
}

/// What `fulcrum experiment` concluded, step by step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Experiment {
    pub quick: bool,
    /// Per cluster: the highest rate it sustained in the ramp (see `Capacity` for the
    /// criteria), and the first rate at which it did not.
    pub capacity: Vec<Capacity>,
    /// Rounds per contender in every scenario.
    pub rounds: u32,
    /// The peer balancers the shoot-out looked for, and whether they ran.
    pub peers: Vec<PeerInfo>,
    /// The shoot-out, one scenario after the other.
    pub scenarios: Vec<ScenarioResult>,
}

/// A peer balancer (nginx, HAProxy) as the experiment found it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerInfo {
    /// `nginx` or `haproxy`.
    pub name: String,
    /// Its balancing rule, e.g. `least_conn`.
    pub policy: String,
    pub version: Option<String>,
    /// Why it did not run, if it did not (not installed, failed to start).
    pub missing: Option<String>,
}

/// One scenario of the shoot-out: the same offered load to every contender, rounds
/// interleaved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScenarioResult {
    /// `steady`, `antagonist`, `replicas` or `heavy-tail`.
    pub name: String,
    /// One sentence: what the scenario stands for.
    pub description: String,
    /// Offered load, and what fraction of the measured total capacity it is.
    pub rate: f64,
    pub fraction: f64,
    pub round_s: f64,
    pub params: ScenarioParams,
    pub contenders: Vec<ContenderResult>,
    /// `antagonist`: what the co-tenants actually took, read back from the cgroups.
    #[serde(default)]
    pub antagonists: Vec<AntagonistEffect>,
    /// `heavy-tail`: the per-request cost asked for, and what was sent.
    #[serde(default)]
    pub cost: Option<CostDistribution>,
}

/// A scenario's settings, as run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "scenario", rename_all = "kebab-case")]
pub enum ScenarioParams {
    Steady,
    Antagonist {
        /// Instances that host a co-tenant.
        instances: Vec<String>,
        /// Share of each host's CPU quota a co-tenant takes while on.
        share: f64,
        on_s: f64,
        off_s: f64,
    },
    Replicas {
        /// Balancer instances of each contender, the load spread evenly over them.
        replicas: usize,
        threads_each: usize,
    },
    HeavyTail {
        /// `lognormal`.
        distribution: String,
        mean_us: f64,
        sigma: f64,
        /// The request mix the generator used (written beside the results).
        mix_file: String,
    },
}

/// One co-tenant's measured effect.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AntagonistEffect {
    pub instance: String,
    pub instance_id: String,
    /// CPU the co-tenant used over the scenario, in seconds, and as a share of the host's
    /// quota over the time it was on.
    pub cpu_s: f64,
    pub on_s: f64,
    pub share_while_on: f64,
    /// The host cgroup's CPU over the scenario and the periods it was throttled in.
    pub group_cpu_s: f64,
    pub throttled_periods: u64,
    pub periods: u64,
}

/// Per-request CPU cost: configured, and what the sent requests asked for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CostDistribution {
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Over every request sent in the scenario.
    pub sent_mean_us: f64,
    pub sent_p50_us: f64,
    pub sent_p99_us: f64,
}

/// One contender of a scenario: a fulcrum policy or a peer balancer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContenderResult {
    /// e.g. `fulcrum adaptive`, `nginx least_conn`.
    pub label: String,
    /// `fulcrum`, `nginx` or `haproxy`.
    pub balancer: String,
    pub policy: String,
    /// fulcrum's telemetry source for the policy, if it reads one.
    pub telemetry: Option<String>,
    /// Proxy threads (worker processes for nginx) of each instance.
    pub threads: usize,
    pub instances: usize,
    /// Every round's run, merged.
    pub latency: Hist,
    pub responses: u64,
    pub errors: u64,
    /// Mean over rounds of the responses per second inside each round's window.
    pub achieved_rate: f64,
    pub rounds: Vec<RoundResult>,
    /// Each worker's share of responses beside its share of capacity.
    pub shares: Vec<Share>,
}

impl ContenderResult {
    pub fn p99_by_round_ms(&self) -> Vec<f64> {
        self.rounds.iter().map(|r| r.p99_ms).collect()
    }

    /// Median of the per-round p99s: the figure contenders are compared by.
    pub fn median_p99_ms(&self) -> f64 {
        median(self.p99_by_round_ms())
    }
}

/// One round of one contender.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoundResult {
    /// The run's name in `runs`.
    pub run: String,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Responses per second inside the round's window (goodput: 2xx/3xx only).
    pub goodput: f64,
    pub errors: u64,
}

/// The median of `v` (the mean of the middle two for an even count); 0 when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Capacity {
    pub cluster: String,
    pub route: String,
    pub sustained_rate: f64,
    pub failed_rate: Option<f64>,
    /// A step is sustained when it achieves at least this share of its target rate...
    #[serde(default = "default_sustained_fraction")]
    pub sustained_fraction: f64,
    /// ...with p99 at most this, no errors and nothing left unsent.
    #[serde(default = "default_p99_bound_ms")]
    pub p99_bound_ms: f64,
    /// Names of the runs that made up the ramp.
    pub runs: Vec<String>,
}

fn default_sustained_fraction() -> f64 {
    0.97
}

fn default_p99_bound_ms() -> f64 {
    200.0
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Share {
    pub instance_id: String,
    pub cluster: String,
    pub share_of_requests: f64,
    pub share_of_capacity: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_and_clamp() {
        let mut h = new_histogram();
        for us in [0, 500, 1_000, 20_000, u64::MAX] {
            record(&mut h, us);
        }
        let hist = Hist::from_histogram(&h);
        assert_eq!(hist.count, 5);
        assert_eq!(hist.min_ms, 0.001);
        assert!(hist.max_ms >= 3_600_000.0 * 0.999);
        assert!(hist.p50_ms <= hist.p90_ms && hist.p90_ms <= hist.p99_ms);
        let back = hist.histogram().unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
    }
}
