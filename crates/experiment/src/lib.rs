//! # fulcrum-experiment
//!
//! Owns `fulcrum experiment`, the main job: the seed's experiment done honestly, and a policy
//! shoot-out, end to end.
//!
//! 1. Deploy (or reuse) the topology.
//! 2. The seed's benchmark: 1000 requests, 100 at a time, to each cluster's route.
//! 3. Capacity: an open-loop rate ramp per cluster around the throughput the seed benchmark
//!    reached, to find where each cluster stops keeping up (the seed's "Expectations": the
//!    micro cluster should reach its limit first).
//! 4. The shoot-out on `/` across both clusters, scenario by scenario ([`scenario`]): fulcrum's
//!    policies beside nginx `least_conn` and HAProxy `leastconn` in front of the same workers,
//!    with the same threads and the same offered load, rounds interleaved ([`shootout`]; the
//!    peers' configs and lifecycles are [`peers`]).
//! 5. `results.json`, `REPORT.md`, `index.html`; then down (unless kept or reused).
//!
//! It does not own deploying, load generation or reporting: it sequences `fulcrum-deploy`,
//! `fulcrum-loadgen` and `fulcrum-report`.

pub mod peers;
pub mod scenario;
pub mod shootout;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fulcrum_deploy::cgroup::Cgroup;
use fulcrum_deploy::local;
use fulcrum_deploy::state::{InstanceState, State, StateDir};
use fulcrum_deploy::topology::Topology;
use fulcrum_loadgen::results::{
    self, Capacity, ClusterInfo, Deployment, Emulation, Experiment, InstanceInfo, PeerInfo,
    Results, ScenarioResult,
};
use fulcrum_loadgen::{BenchConfig, CpuProbe, Model, Run, RunKind, Sampling, WorkerProbe};
use fulcrum_telemetry::probe;

/// A ramp step is sustained when it achieves this share of its target rate...
const SUSTAINED_RATE: f64 = 0.97;
/// ...with p99 under this bound and no errors.
const SUSTAINED_P99_MS: f64 = 200.0;

/// How long each phase runs.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ramp_steps: &'static [f64],
    pub ramp_step: Duration,
    pub rounds: u32,
    pub shootout_step: Duration,
    pub warmup: Duration,
    /// `antagonist`: how long the set of co-tenants that are on stays put.
    pub antagonist_dwell: Duration,
    /// The emulated CloudWatch period (60 s, as CloudWatch's; shorter only for `--quick`).
    pub cloudwatch_period: Duration,
    /// A request slower than this counts as a timeout. Overloaded contenders (the seed's
    /// lowest-cpu reaches seconds) would otherwise hold each of their runs open this long.
    pub request_timeout: Duration,
    /// Longest wait, between runs, for the previous run's backlog to drain.
    pub settle: Duration,
}

impl Timing {
    pub fn default_run() -> Timing {
        Timing {
            ramp_steps: &[0.6, 0.8, 0.95, 1.1, 1.25],
            ramp_step: Duration::from_secs(3),
            rounds: 2,
            shootout_step: Duration::from_secs(8),
            warmup: Duration::from_millis(500),
            antagonist_dwell: Duration::from_secs(2),
            cloudwatch_period: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            settle: Duration::from_secs(3),
        }
    }

    pub fn quick() -> Timing {
        Timing {
            ramp_steps: &[0.7, 0.95, 1.2],
            ramp_step: Duration::from_millis(1500),
            rounds: 1,
            shootout_step: Duration::from_millis(2400),
            warmup: Duration::from_millis(300),
            antagonist_dwell: Duration::from_millis(600),
            cloudwatch_period: Duration::from_secs(10),
            request_timeout: Duration::from_secs(3),
            settle: Duration::from_millis(1500),
        }
    }
}

/// A deployment the experiment can drive, wherever it runs.
pub struct Target {
    pub deployment: Deployment,
    pub balancer: String,
    /// The balancer's admin address (policy switches, `/status` sampling).
    pub admin: Option<SocketAddr>,
    pub workers: Vec<WorkerProbe>,
    /// A local deployment's handles: where peers, replicas and co-tenants are recorded.
    pub local: Option<LocalHandles>,
}

/// What only a local deployment has: its state directory and its instances' cgroups.
pub struct LocalHandles {
    pub state_dir: PathBuf,
    /// The watched target files the balancer (and its replicas) learn workers from.
    pub targets_dir: PathBuf,
    /// Where peer and replica configurations are written.
    pub peers_dir: PathBuf,
    pub instances: Vec<LocalInstance>,
}

pub struct LocalInstance {
    /// `c<cluster>-<index>`.
    pub name: String,
    pub cluster: u32,
    pub cores: f64,
    pub instance_id: String,
    pub cgroup: Option<Cgroup>,
}

impl LocalHandles {
    pub fn instance(&self, name: &str) -> Option<&LocalInstance> {
        self.instances.iter().find(|i| i.name == name)
    }
}

pub struct Options {
    pub topology: Topology,
    pub binary: PathBuf,
    pub state_dir: PathBuf,
    pub reuse: bool,
    pub keep: bool,
    pub quick: bool,
    /// Shoot-out rounds per policy, instead of the default (2; 1 with `quick`).
    pub rounds: Option<u32>,
    pub out: PathBuf,
    pub no_emulation: bool,
    /// The exact command line, for the results.
    pub command: Vec<String>,
    /// The shoot-out's scenarios, in order.
    pub scenarios: Vec<scenario::Scenario>,
    /// `replicas`: balancer instances per contender.
    pub replicas: usize,
    /// fulcrum policies to run beside the default, instead of the usual ones.
    pub policies: Option<Vec<shootout::Contender>>,
}

impl Options {
    /// The topology as the experiment runs it: every telemetry source collected from the start
    /// (each contender has data when its turn comes; the emulated CloudWatch needs whole
    /// windows), with the timing's CloudWatch period, and no access log (the peers run with
    /// `access_log off` too: every contender pays for the same work).
    pub fn topology_for(&self, timing: &Timing) -> Topology {
        let mut topology = self.topology.clone();
        topology.balancer.cloudwatch_period = timing.cloudwatch_period;
        topology.balancer.access_log = false;
        for s in [
            fulcrum_balancer::TelemetrySource::Poll,
            fulcrum_balancer::TelemetrySource::Cloudwatch,
        ] {
            if !topology.balancer.collect.contains(&s) {
                topology.balancer.collect.push(s);
            }
        }
        topology
    }

    /// How long each phase runs: the default or `quick`, with `rounds` applied.
    pub fn timing(&self) -> Timing {
        let mut timing = if self.quick {
            Timing::quick()
        } else {
            Timing::default_run()
        };
        if let Some(rounds) = self.rounds {
            timing.rounds = rounds;
        }
        timing
    }
}

/// Where the files went.
pub struct Outcome {
    pub results: PathBuf,
    pub report: PathBuf,
    pub html: PathBuf,
    pub elapsed: Duration,
}

/// Runs the experiment on the local provider.
pub fn run_local(
    opts: &Options,
    interrupted: &AtomicBool,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<Outcome> {
    let timing = opts.timing();
    let topology = opts.topology_for(&timing);
    let started = Instant::now();
    let mut brought_up = false;
    if !opts.reuse {
        say("step 1/5: deploying the topology");
        let up_opts = local::UpOptions {
            binary: opts.binary.clone(),
            state_dir: opts.state_dir.clone(),
            no_emulation: opts.no_emulation,
        };
        let outcome = local::up(&topology, &up_opts, interrupted, &mut |l| {
            say(&format!("  {l}"))
        })?;
        brought_up = outcome.changed;
    } else {
        say("step 1/5: reusing the running deployment");
    }
    let result = (|| {
        let target = local_target(&opts.state_dir, &topology)?;
        run(&target, opts, &timing, interrupted, started, say)
    })();
    // An interrupted run always cleans up; otherwise --keep is honoured, errors included.
    if brought_up && (!opts.keep || interrupted.load(Ordering::Relaxed)) {
        say("removing the deployment (use --keep to leave it running)");
        local::down(&opts.state_dir, &topology.name, &mut |l| {
            say(&format!("  {l}"))
        })?;
    }
    result
}

/// The local deployment as a [`Target`], its workers' CPU read from their cgroups.
pub fn local_target(state_dir: &Path, t: &Topology) -> anyhow::Result<Target> {
    let dir = StateDir::new(state_dir, &t.name);
    let state = running_state(&dir, state_dir, t)?;
    let (listen, admin) =
        local::balancer_addresses(&state).context("the deployment's balancer is not running")?;
    Ok(Target {
        deployment: deployment_info(t, &state, listen, admin),
        balancer: format!("http://{listen}"),
        admin: Some(admin),
        workers: state.instances.iter().map(worker_probe).collect(),
        local: Some(LocalHandles {
            state_dir: state_dir.to_owned(),
            targets_dir: dir.targets(),
            peers_dir: dir.root.join("peers"),
            instances: state
                .instances
                .iter()
                .map(|i| LocalInstance {
                    name: i.name.clone(),
                    cluster: i.cluster,
                    cores: i.cores,
                    instance_id: i.instance_id.clone(),
                    cgroup: i.cgroup.clone(),
                })
                .collect(),
        }),
    })
}

/// The deployment's state, when every instance in it is running.
fn running_state(dir: &StateDir, state_dir: &Path, t: &Topology) -> anyhow::Result<State> {
    let state = dir.load()?.with_context(|| {
        format!(
            "no local deployment `{}` in {}",
            t.name,
            state_dir.display()
        )
    })?;
    let stopped: Vec<&str> = state
        .instances
        .iter()
        .filter(|i| !i.process.as_ref().is_some_and(|p| p.is_alive()))
        .map(|i| i.name.as_str())
        .collect();
    anyhow::ensure!(
        stopped.is_empty(),
        "deployment `{}` has stopped instances ({}); run `fulcrum up` first",
        t.name,
        stopped.join(", ")
    );
    Ok(state)
}

/// How the sampler reads an instance's CPU: its cgroup's counter, else its `/load` report.
fn worker_probe(i: &InstanceState) -> WorkerProbe {
    let cpu = match (&i.cgroup, i.address.as_deref().and_then(|a| a.parse().ok())) {
        (Some(g), _) => {
            let g = g.clone();
            CpuProbe::Counter {
                read: Arc::new(move || g.cpu_usage().ok()),
                cores: i.cores,
            }
        }
        (None, Some(addr)) => CpuProbe::Load(addr),
        (None, None) => CpuProbe::Load(SocketAddr::from(([127, 0, 0, 1], 9))),
    };
    WorkerProbe {
        instance_id: i.instance_id.clone(),
        cluster: i.cluster.to_string(),
        cpu,
    }
}

/// The deployment as `results.json` describes it.
fn deployment_info(
    t: &Topology,
    state: &State,
    listen: SocketAddr,
    admin: SocketAddr,
) -> Deployment {
    Deployment {
        name: t.name.clone(),
        provider: "local".into(),
        balancer_url: format!("http://{listen}"),
        admin_url: Some(format!("http://{admin}")),
        emulation: state.emulation.as_ref().map(|e| Emulation {
            scale: e.scale,
            period_us: e.period_us,
            credits: e.credits,
            memory_limits: e.memory_limits,
            cgroup: e.cgroup.clone(),
        }),
        clusters: t
            .clusters
            .iter()
            .map(|c| ClusterInfo {
                id: c.id,
                route: c.route.clone(),
                instance_type: c.instance_type.name.into(),
                count: c.count,
                vcpus_per_instance: c.instance_type.vcpus,
                cores_per_instance: state
                    .instances
                    .iter()
                    .find(|i| i.cluster == c.id)
                    .map_or(0.0, |i| i.cores),
                work_us: c.work_us,
            })
            .collect(),
        instances: state
            .instances
            .iter()
            .map(|i| InstanceInfo {
                cluster: i.cluster,
                instance_id: i.instance_id.clone(),
                address: i.address.clone().unwrap_or_default(),
                instance_type: i.instance_type.clone(),
                cores: i.cores,
            })
            .collect(),
    }
}

/// Runs steps 2 to 5 against a deployment that is up.
pub fn run(
    target: &Target,
    opts: &Options,
    timing: &Timing,
    interrupted: &AtomicBool,
    started: Instant,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<Outcome> {
    let started_at = fulcrum_loadgen::now_rfc3339();
    let origin = Instant::now();
    let steps = Steps {
        target,
        timing,
        interrupted,
        origin,
    };
    let mut runs: Vec<Run> = Vec::new();
    say("step 2/5: the seed's benchmark: 1000 requests, 100 at a time, per cluster");
    let seed_rate = steps.seed(&mut runs, say)?;
    say("step 3/5: capacity: an open-loop ramp per cluster");
    let capacity = steps.capacity(&seed_rate, &mut runs, say)?;
    let total: f64 = capacity.iter().map(|c| c.sustained_rate).sum();
    let total = if total > 0.0 {
        total
    } else {
        seed_rate.iter().sum()
    };
    let (peers, scenarios) = if target.admin.is_none() || target.local.is_none() {
        // Without the admin API the policy cannot be switched, and without a local deployment
        // no peer can be put in front of the workers: say so instead of pretending.
        say("step 4/5: shoot-out skipped: it needs a local deployment whose balancer's admin API is reachable");
        (Vec::new(), Vec::new())
    } else {
        say(&format!(
            "step 4/5: shoot-out on / in {} scenario(s), {} round(s) each",
            opts.scenarios.len(),
            timing.rounds
        ));
        let topology = opts.topology_for(timing);
        let outcome = shootout::Shootout {
            target,
            opts,
            timing,
            topology: &topology,
            capacity: total,
            origin,
            interrupted,
        }
        .run(say)?;
        runs.extend(outcome.runs);
        (outcome.peers, outcome.scenarios)
    };
    let m = Measured {
        started_at,
        runs,
        capacity,
        rounds: timing.rounds,
        peers,
        scenarios,
    };
    finish(target, opts, started, m, say)
}

/// Steps 2 and 3, and what they share.
struct Steps<'a> {
    target: &'a Target,
    timing: &'a Timing,
    interrupted: &'a AtomicBool,
    origin: Instant,
}

impl Steps<'_> {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.interrupted.load(Ordering::Relaxed), "interrupted");
        Ok(())
    }

    fn bench(
        &self,
        name: String,
        kind: RunKind,
        url: String,
        model: Model,
        connections: usize,
    ) -> anyhow::Result<Run> {
        Ok(fulcrum_loadgen::run(BenchConfig {
            name,
            kind,
            targets: vec![url],
            model,
            connections,
            threads: 1,
            warmup: if kind == RunKind::Seed {
                Duration::ZERO
            } else {
                self.timing.warmup
            },
            timeout: self.timing.request_timeout,
            sampling: Sampling {
                admin: self.target.admin,
                workers: self.target.workers.clone(),
            },
            progress: false,
            policy: None,
            telemetry: None,
            clock_origin: Some(self.origin),
            mix: None,
            shape: Default::default(),
            tls: Default::default(),
            protocol: Default::default(),
        })?)
    }

    /// The seed's benchmark on every cluster; returns each one's throughput.
    fn seed(&self, runs: &mut Vec<Run>, say: &mut dyn FnMut(&str)) -> anyhow::Result<Vec<f64>> {
        let mut seed_rate = Vec::new();
        for c in &self.target.deployment.clusters {
            self.check()?;
            let run = self.bench(
                format!("seed {}", c.route),
                RunKind::Seed,
                format!("{}{}", self.target.balancer, c.route),
                Model::Closed {
                    requests: 1000,
                    concurrency: 100,
                },
                100,
            )?;
            say(&format!(
                "  {}: {:.0} responses/s, p50 {:.1} ms, p99 {:.1} ms, errors {}",
                c.route,
                run.achieved_rate,
                run.latency.p50_ms,
                run.latency.p99_ms,
                run.errors.total()
            ));
            seed_rate.push(run.achieved_rate);
            runs.push(run);
        }
        Ok(seed_rate)
    }

    /// An open-loop ramp per cluster around the rate the seed benchmark reached.
    fn capacity(
        &self,
        seed_rate: &[f64],
        runs: &mut Vec<Run>,
        say: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Vec<Capacity>> {
        let mut capacity = Vec::new();
        for (c, &estimate) in self.target.deployment.clusters.iter().zip(seed_rate) {
            let mut sustained = 0.0;
            let mut failed = None;
            let mut names = Vec::new();
            for &f in self.timing.ramp_steps {
                self.check()?;
                let rate = (estimate * f).max(1.0).round();
                let name = format!("capacity {} @ {rate}/s", c.route);
                let run = self.bench(
                    name.clone(),
                    RunKind::Capacity,
                    format!("{}{}", self.target.balancer, c.route),
                    Model::Open {
                        rate,
                        duration_s: self.timing.ramp_step.as_secs_f64(),
                    },
                    200,
                )?;
                let ok = sustained_step(&run, rate);
                say(&format!(
                    "  {} at {rate}/s: achieved {:.0}/s, p99 {:.1} ms, errors {} → {}",
                    c.route,
                    run.achieved_rate,
                    run.latency.p99_ms,
                    run.errors.total(),
                    if ok { "sustained" } else { "not sustained" }
                ));
                names.push(name);
                runs.push(run);
                settle(self.target, self.timing.settle);
                if ok {
                    sustained = rate;
                } else {
                    failed = Some(rate);
                    break;
                }
            }
            capacity.push(Capacity {
                cluster: c.id.to_string(),
                route: c.route.clone(),
                sustained_rate: sustained,
                failed_rate: failed,
                sustained_fraction: SUSTAINED_RATE,
                p99_bound_ms: SUSTAINED_P99_MS,
                runs: names,
            });
        }
        Ok(capacity)
    }
}

/// Whether a ramp step kept up: see [`SUSTAINED_RATE`] and [`SUSTAINED_P99_MS`].
fn sustained_step(run: &Run, rate: f64) -> bool {
    run.achieved_rate >= SUSTAINED_RATE * rate
        && run.latency.p99_ms <= SUSTAINED_P99_MS
        && run.errors.total() == 0
        && run.unsent_requests == 0
}

/// What steps 2 to 4 measured.
struct Measured {
    started_at: String,
    runs: Vec<Run>,
    capacity: Vec<Capacity>,
    rounds: u32,
    peers: Vec<PeerInfo>,
    scenarios: Vec<ScenarioResult>,
}

/// Step 5: results.json, REPORT.md, index.html.
fn finish(
    target: &Target,
    opts: &Options,
    started: Instant,
    m: Measured,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<Outcome> {
    say("step 5/5: results and report");
    let results = Results {
        schema: results::SCHEMA_VERSION,
        fulcrum_version: env!("CARGO_PKG_VERSION").into(),
        command: opts.command.clone(),
        started_at: m.started_at,
        machine: fulcrum_loadgen::machine(),
        deployment: Some(target.deployment.clone()),
        runs: m.runs,
        experiment: Some(Experiment {
            quick: opts.quick,
            capacity: m.capacity,
            rounds: m.rounds,
            peers: m.peers,
            scenarios: m.scenarios,
        }),
    };
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let results_path = opts.out.join("results.json");
    std::fs::write(&results_path, serde_json::to_vec_pretty(&results)?)
        .with_context(|| format!("cannot write {}", results_path.display()))?;
    let written = fulcrum_report::write(&results, &opts.out)?;
    Ok(Outcome {
        results: results_path,
        report: written.markdown,
        html: written.html,
        elapsed: started.elapsed(),
    })
}

/// Waits (at most `limit`) until no worker has requests in flight, so one run's backlog does
/// not spill into the next, whoever balanced it.
pub(crate) fn settle(target: &Target, limit: Duration) {
    let deadline = Instant::now() + limit;
    let addrs: Vec<SocketAddr> = target
        .deployment
        .instances
        .iter()
        .filter_map(|i| i.address.parse().ok())
        .collect();
    while Instant::now() < deadline {
        let busy: u64 = addrs
            .iter()
            .filter_map(|&a| probe::load(a, Duration::from_millis(300)).ok())
            .map(|l| l.in_flight)
            .sum();
        if busy == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
