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
//! 4. Policy shoot-out on `/` across both clusters at 85% of the measured total capacity, the
//!    policies interleaved round by round: round-robin, least-outstanding, lowest-cpu on
//!    emulated CloudWatch (the seed's design), lowest-cpu on fresh telemetry, p2c-ewma, cpu-aware.
//! 5. `results.json`, `REPORT.md`, `index.html`; then down (unless kept or reused).
//!
//! It does not own deploying, load generation or reporting: it sequences `fulcrum-deploy`,
//! `fulcrum-loadgen` and `fulcrum-report`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fulcrum_deploy::local;
use fulcrum_deploy::state::StateDir;
use fulcrum_deploy::topology::Topology;
use fulcrum_loadgen::results::{
    self, Capacity, ClusterInfo, Deployment, Emulation, Experiment, InstanceInfo, PolicyResult,
    Results, Share,
};
use fulcrum_loadgen::{BenchConfig, CpuProbe, Model, Run, RunKind, Sampling, WorkerProbe};
use fulcrum_telemetry::probe;

/// The six contenders: `(label, policy, telemetry)`.
pub const CONTENDERS: [(&str, &str, &str); 6] = [
    ("round-robin", "round-robin", "inband"),
    ("least-outstanding", "least-outstanding", "inband"),
    (
        "lowest-cpu (cloudwatch, emulated)",
        "lowest-cpu",
        "cloudwatch",
    ),
    ("lowest-cpu (fresh, poll)", "lowest-cpu", "poll"),
    ("p2c-ewma", "p2c-ewma", "inband"),
    ("cpu-aware", "cpu-aware", "inband"),
];

/// The shoot-out runs at this fraction of the summed capacity of the clusters.
const SHOOTOUT_FRACTION: f64 = 0.85;
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
            shootout_step: Duration::from_millis(2500),
            warmup: Duration::from_millis(300),
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
}

impl Options {
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
    let mut topology = opts.topology.clone();
    topology.balancer.cloudwatch_period = timing.cloudwatch_period;
    // Every contender's telemetry must be collected from the start, so each has data when its
    // turn comes (the emulated CloudWatch needs whole windows).
    for s in [
        fulcrum_balancer::TelemetrySource::Poll,
        fulcrum_balancer::TelemetrySource::Cloudwatch,
    ] {
        if !topology.balancer.collect.contains(&s) {
            topology.balancer.collect.push(s);
        }
    }
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
    let state = dir.load()?.with_context(|| {
        format!(
            "no local deployment `{}` in {}",
            t.name,
            state_dir.display()
        )
    })?;
    let (listen, admin) =
        local::balancer_addresses(&state).context("the deployment's balancer is not running")?;
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
    let workers = state
        .instances
        .iter()
        .map(|i| {
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
        })
        .collect();
    let deployment = Deployment {
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
    };
    Ok(Target {
        deployment,
        balancer: format!("http://{listen}"),
        admin: Some(admin),
        workers,
    })
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
    let check = || -> anyhow::Result<()> {
        anyhow::ensure!(!interrupted.load(Ordering::Relaxed), "interrupted");
        Ok(())
    };
    let started_at = fulcrum_loadgen::now_rfc3339();
    let origin = Instant::now();
    let sampling = Sampling {
        admin: target.admin,
        workers: target.workers.clone(),
    };
    let bench = |name: String,
                 kind: RunKind,
                 url: String,
                 model: Model,
                 connections: usize,
                 policy: Option<(&str, &str)>| {
        fulcrum_loadgen::run(BenchConfig {
            name,
            kind,
            url,
            model,
            connections,
            threads: 1,
            warmup: if kind == RunKind::Seed {
                Duration::ZERO
            } else {
                timing.warmup
            },
            timeout: timing.request_timeout,
            sampling: sampling.clone(),
            progress: false,
            policy: policy.map(|p| p.0.to_owned()),
            telemetry: policy.map(|p| p.1.to_owned()),
            clock_origin: Some(origin),
        })
    };
    let mut runs: Vec<Run> = Vec::new();

    say("step 2/5: the seed's benchmark: 1000 requests, 100 at a time, per cluster");
    let mut seed_rate = Vec::new();
    for c in &target.deployment.clusters {
        check()?;
        let run = bench(
            format!("seed {}", c.route),
            RunKind::Seed,
            format!("{}{}", target.balancer, c.route),
            Model::Closed {
                requests: 1000,
                concurrency: 100,
            },
            100,
            None,
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

    say("step 3/5: capacity: an open-loop ramp per cluster");
    let mut capacity = Vec::new();
    for (c, &estimate) in target.deployment.clusters.iter().zip(&seed_rate) {
        let mut sustained = 0.0;
        let mut failed = None;
        let mut names = Vec::new();
        for &f in timing.ramp_steps {
            check()?;
            let rate = (estimate * f).max(1.0).round();
            let name = format!("capacity {} @ {rate}/s", c.route);
            let run = bench(
                name.clone(),
                RunKind::Capacity,
                format!("{}{}", target.balancer, c.route),
                Model::Open {
                    rate,
                    duration_s: timing.ramp_step.as_secs_f64(),
                },
                200,
                None,
            )?;
            let ok = run.achieved_rate >= SUSTAINED_RATE * rate
                && run.latency.p99_ms <= SUSTAINED_P99_MS
                && run.errors.total() == 0
                && run.unsent_requests == 0;
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
            settle(target.admin, timing.settle);
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

    let Some(admin) = target.admin else {
        // Without the admin API the policy cannot be switched: six rows would all measure the
        // policy in force under six labels. Say so instead of pretending.
        say("step 4/5: policy shoot-out skipped: the balancer's admin API is not reachable from here, so its policy cannot be switched");
        let m = Measured {
            started_at,
            runs,
            capacity,
            rate: 0.0,
            rounds: 0,
            policies: Vec::new(),
        };
        return finish(target, opts, started, m, say);
    };
    let total: f64 = capacity.iter().map(|c| c.sustained_rate).sum();
    let total = if total > 0.0 {
        total
    } else {
        seed_rate.iter().sum()
    };
    let rate = (total * SHOOTOUT_FRACTION).max(1.0).round();
    say(&format!(
        "step 4/5: policy shoot-out on / at {rate}/s ({:.0}% of the measured {total:.0}/s), {} round(s)",
        SHOOTOUT_FRACTION * 100.0,
        timing.rounds
    ));
    let mut shootout: Vec<Vec<Run>> = vec![Vec::new(); CONTENDERS.len()];
    for round in 1..=timing.rounds {
        for (i, (label, policy, telemetry)) in CONTENDERS.iter().enumerate() {
            check()?;
            switch(admin, "all", policy, telemetry)?;
            let run = bench(
                format!("shootout {label} #{round}"),
                RunKind::Shootout,
                format!("{}/", target.balancer),
                Model::Open {
                    rate,
                    duration_s: timing.shootout_step.as_secs_f64(),
                },
                300,
                Some((policy, telemetry)),
            )?;
            say(&format!(
                "  {label:<34} round {round}: p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms, errors {}",
                run.latency.p50_ms,
                run.latency.p99_ms,
                run.latency.max_ms,
                run.errors.total()
            ));
            shootout[i].push(run.clone());
            runs.push(run);
            settle(Some(admin), timing.settle);
        }
    }
    // Leave the deployment as configured.
    let _ = switch(admin, "all", "cpu-aware", "inband");

    let policies: Vec<PolicyResult> = CONTENDERS
        .iter()
        .zip(&shootout)
        .map(|((label, policy, telemetry), rounds)| {
            policy_result(label, policy, telemetry, rounds, &target.deployment)
        })
        .collect();

    let m = Measured {
        started_at,
        runs,
        capacity,
        rate,
        rounds: timing.rounds,
        policies,
    };
    finish(target, opts, started, m, say)
}

/// What steps 2 to 4 measured.
struct Measured {
    started_at: String,
    runs: Vec<Run>,
    capacity: Vec<Capacity>,
    /// The shoot-out's rate and rounds (0 when it was skipped).
    rate: f64,
    rounds: u32,
    policies: Vec<PolicyResult>,
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
            shootout_rate: m.rate,
            shootout_fraction: SHOOTOUT_FRACTION,
            shootout_rounds: m.rounds,
            policies: m.policies,
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

/// Merges a contender's rounds and sets each worker's share of responses beside its share of
/// the capacity.
fn policy_result(
    label: &str,
    policy: &str,
    telemetry: &str,
    rounds: &[Run],
    d: &Deployment,
) -> PolicyResult {
    let mut merged = results::new_histogram();
    let mut responses = 0;
    let mut errors = 0;
    let mut achieved = 0.0;
    let mut per_instance: std::collections::BTreeMap<String, u64> = Default::default();
    for r in rounds {
        if let Ok(h) = r.latency.histogram() {
            let _ = merged.add(&h);
        }
        responses += r.responses;
        errors += r.errors.total();
        achieved += r.achieved_rate / rounds.len().max(1) as f64;
        for (i, g) in &r.by_instance {
            *per_instance.entry(i.clone()).or_default() += g.responses;
        }
    }
    let total_cores: f64 = d.instances.iter().map(|i| i.cores).sum();
    let total_responses: u64 = per_instance.values().sum();
    let shares = d
        .instances
        .iter()
        .map(|i| Share {
            instance_id: i.instance_id.clone(),
            cluster: i.cluster.to_string(),
            share_of_requests: per_instance.get(&i.instance_id).copied().unwrap_or(0) as f64
                / total_responses.max(1) as f64,
            share_of_capacity: if total_cores > 0.0 {
                i.cores / total_cores
            } else {
                0.0
            },
        })
        .collect();
    PolicyResult {
        label: label.into(),
        policy: policy.into(),
        telemetry: telemetry.into(),
        latency: results::Hist::from_histogram(&merged),
        responses,
        errors,
        achieved_rate: achieved,
        p99_by_round_ms: rounds.iter().map(|r| r.latency.p99_ms).collect(),
        shares,
    }
}

/// Switches the balancer's `group` to `policy` on `telemetry` through its admin API.
fn switch(admin: SocketAddr, group: &str, policy: &str, telemetry: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({ "policy": policy, "telemetry": telemetry }).to_string();
    let (status, answer) = probe::request(
        admin,
        "PUT",
        &format!("/target-groups/{group}"),
        Some(&body),
        Duration::from_secs(2),
    )?;
    anyhow::ensure!(
        status == 200,
        "the balancer refused to switch `{group}` to {policy}/{telemetry}: {status} {answer}"
    );
    Ok(())
}

/// Waits (at most `limit`) until no worker has requests in flight, so one run's backlog does
/// not spill into the next.
fn settle(admin: Option<SocketAddr>, limit: Duration) {
    let Some(admin) = admin else { return };
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let busy = probe::get(admin, "/status", Duration::from_millis(500))
            .ok()
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .map(|s| {
                s["workers"].as_array().map_or(0, |w| {
                    w.iter()
                        .map(|w| w["in_flight"].as_u64().unwrap_or(0))
                        .sum::<u64>()
                })
            })
            .unwrap_or(0);
        if busy == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
