//! The shoot-out: in every scenario, fulcrum's policies and the peer balancers (nginx
//! `least_conn`, HAProxy `leastconn`) in front of the same workers, the same offered load, the
//! same thread count, rounds interleaved.
//!
//! Peers and replicas are companions of the deployment (recorded in its state before they
//! start, so Ctrl-C and `down` remove them); co-tenants of the `antagonist` scenario are started
//! for each round on the same schedule, so every contender meets the same pattern.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use fulcrum_balancer::{Policy, TelemetrySource};
use fulcrum_deploy::companion::{self, CompanionSpec, Placement, Role};
use fulcrum_deploy::topology::{Topology, WorkerSource};
use fulcrum_loadgen::mix::RequestMix;
use fulcrum_loadgen::results::{
    self, AntagonistEffect, ContenderResult, CostDistribution, Deployment, PeerInfo, RoundResult,
    Run, ScenarioParams, ScenarioResult, Share,
};
use fulcrum_loadgen::{BenchConfig, Model, RunKind, Sampling};
use fulcrum_telemetry::probe;

use crate::peers::{self, PeerKind, PeerRoute, PeerSetup};
use crate::scenario::{AntagonistPlan, HeavyTail, Scenario, LOAD_FRACTION};
use crate::{Options, Target, Timing};

/// fulcrum's default policy (the balancer's own default): the first contender of every
/// scenario.
pub const DEFAULT_POLICY: Policy = fulcrum_balancer::config::DEFAULT_POLICY;

/// Who balances in one row of the shoot-out.
#[derive(Debug, Clone, PartialEq)]
pub enum Contender {
    Fulcrum {
        policy: Policy,
        telemetry: TelemetrySource,
    },
    Peer(PeerKind),
}

impl Contender {
    pub fn fulcrum(policy: Policy) -> Contender {
        Contender::Fulcrum {
            policy,
            telemetry: TelemetrySource::Inband,
        }
    }

    /// `policy` or `policy/telemetry` (e.g. `lowest-cpu/poll`); `lowest-cpu` alone reads
    /// emulated CloudWatch, as the seed did.
    pub fn parse(s: &str) -> anyhow::Result<Contender> {
        let (name, source) = s.split_once('/').unwrap_or((s, ""));
        let policy = Policy::from_name(name.trim()).with_context(|| {
            let names: Vec<&str> = Policy::ALL.iter().map(|p| p.name()).collect();
            format!("unknown policy `{name}`; one of {}", names.join(", "))
        })?;
        let telemetry = match (policy, source.trim()) {
            (Policy::LowestCpu, "") => TelemetrySource::Cloudwatch,
            (_, "") => TelemetrySource::Inband,
            (_, t) => TelemetrySource::from_name(t).with_context(|| {
                format!("unknown telemetry source `{t}`; one of inband, poll, cloudwatch")
            })?,
        };
        Ok(Contender::Fulcrum { policy, telemetry })
    }

    pub fn parse_list(names: &[String]) -> anyhow::Result<Vec<Contender>> {
        names.iter().map(|n| Contender::parse(n)).collect()
    }

    pub fn label(&self) -> String {
        match self {
            Contender::Fulcrum {
                policy: Policy::LowestCpu,
                telemetry,
            } => format!("fulcrum lowest-cpu ({})", telemetry.name()),
            Contender::Fulcrum { policy, .. } => format!("fulcrum {}", policy.name()),
            Contender::Peer(k) => format!("{} {}", k.name(), k.policy()),
        }
    }

    fn balancer(&self) -> &'static str {
        match self {
            Contender::Fulcrum { .. } => "fulcrum",
            Contender::Peer(k) => k.name(),
        }
    }
}

/// The contenders of `scenario`: fulcrum's default first, then the fulcrum policies asked
/// for, then the peers that are installed.
pub fn contenders(scenario: Scenario, opts: &Options, peers: &[PeerKind]) -> Vec<Contender> {
    let mut out = vec![Contender::fulcrum(DEFAULT_POLICY)];
    let policies: Vec<Contender> = match &opts.policies {
        Some(p) => p.clone(),
        None if opts.quick => Vec::new(),
        None => {
            let mut v = vec![Contender::fulcrum(Policy::LeastOutstanding)];
            if scenario == Scenario::Steady {
                // The seed's design, as the baseline it is.
                v.push(Contender::Fulcrum {
                    policy: Policy::LowestCpu,
                    telemetry: TelemetrySource::Cloudwatch,
                });
            }
            v
        }
    };
    for c in policies {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out.extend(peers.iter().map(|&k| Contender::Peer(k)));
    out
}

/// What one scenario offers every contender.
struct Setting {
    rate: f64,
    fraction: f64,
    plan: Option<AntagonistPlan>,
    heavy: Option<HeavyTail>,
    mix: Option<RequestMix>,
    params: ScenarioParams,
}

/// The progress line of one contender's round.
fn round_line(c: &Contender, round: usize, run: &Run) -> String {
    format!(
        "    {:<34} round {}: p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms, {:.0}/s, errors {}",
        c.label(),
        round + 1,
        run.latency.p50_ms,
        run.latency.p99_ms,
        run.latency.max_ms,
        run.achieved_rate,
        run.errors.total()
    )
}

/// Where one contender is reached during a scenario.
struct Endpoint {
    urls: Vec<String>,
    admins: Vec<SocketAddr>,
    threads: usize,
    instances: usize,
}

/// What the shoot-out needs from the experiment around it.
pub struct Shootout<'a> {
    pub target: &'a Target,
    pub opts: &'a Options,
    pub timing: &'a Timing,
    pub topology: &'a Topology,
    /// Measured total capacity of the deployment (requests/s).
    pub capacity: f64,
    pub origin: Instant,
    pub interrupted: &'a std::sync::atomic::AtomicBool,
}

/// What the shoot-out measured.
pub struct Outcome {
    pub runs: Vec<Run>,
    pub peers: Vec<PeerInfo>,
    pub scenarios: Vec<ScenarioResult>,
}

impl Shootout<'_> {
    /// Runs every scenario asked for; peers are looked up once and reported either way.
    pub fn run(&self, say: &mut dyn FnMut(&str)) -> anyhow::Result<Outcome> {
        let (peer_info, peer_kinds) = find_peers();
        for p in &peer_info {
            if let Some(why) = &p.missing {
                say(&format!(
                    "  {} is not available ({why}); the shoot-out runs without it",
                    p.name
                ));
            }
        }
        let mut out = Outcome {
            runs: Vec::new(),
            peers: peer_info,
            scenarios: Vec::new(),
        };
        let mut single_peers: Option<Vec<Endpoint>> = None;
        let result = (|| {
            for &scenario in &self.opts.scenarios {
                self.check()?;
                let contenders = contenders(scenario, self.opts, &peer_kinds);
                let r = if scenario == Scenario::Replicas {
                    self.replicas(&contenders, &mut out.runs, say)
                } else {
                    if single_peers.is_none() {
                        single_peers =
                            Some(self.start_peers(&peer_kinds, 1, self.threads(), "")?);
                    }
                    let endpoints =
                        self.single_endpoints(&contenders, single_peers.as_ref().expect("started"));
                    self.scenario(scenario, &contenders, &endpoints, &mut out.runs, say)
                }?;
                out.scenarios.push(r);
            }
            Ok::<_, anyhow::Error>(())
        })();
        // Peers go whatever happened; `down` would also remove them.
        let _ = self.stop_companions(Role::Peer);
        result.map(|_| out)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.interrupted.load(std::sync::atomic::Ordering::Relaxed),
            "interrupted"
        );
        Ok(())
    }

    fn local(&self) -> anyhow::Result<&crate::LocalHandles> {
        self.target
            .local
            .as_ref()
            .context("peers, replicas and co-tenants need a local deployment")
    }

    /// The deployment balancer's threads: what every single-instance contender gets.
    fn threads(&self) -> usize {
        self.topology
            .balancer
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    fn stop_companions(&self, role: Role) -> anyhow::Result<()> {
        let local = self.local()?;
        companion::stop_all(&local.state_dir, &self.topology.name, Some(role))?;
        Ok(())
    }

    /// Endpoints of single-instance contenders: fulcrum is the deployment's balancer.
    fn single_endpoints(&self, contenders: &[Contender], peers: &[Endpoint]) -> Vec<Endpoint> {
        contenders
            .iter()
            .map(|c| match c {
                Contender::Fulcrum { .. } => Endpoint {
                    urls: vec![format!("{}/", self.target.balancer)],
                    admins: self.target.admin.into_iter().collect(),
                    threads: self.threads(),
                    instances: 1,
                },
                Contender::Peer(k) => {
                    let i = peer_index(*k);
                    Endpoint {
                        urls: peers[i].urls.clone(),
                        admins: Vec::new(),
                        threads: peers[i].threads,
                        instances: peers[i].instances,
                    }
                }
            })
            .collect()
    }

    /// Starts `count` instances of every peer kind (in `PeerKind::ALL` order).
    fn start_peers(
        &self,
        kinds: &[PeerKind],
        count: usize,
        threads: usize,
        suffix: &str,
    ) -> anyhow::Result<Vec<Endpoint>> {
        let local = self.local()?;
        let routes = self.peer_routes()?;
        let mut out = Vec::new();
        for kind in PeerKind::ALL {
            let mut ep = Endpoint {
                urls: Vec::new(),
                admins: Vec::new(),
                threads,
                instances: count,
            };
            if kinds.contains(&kind) {
                for i in 0..count {
                    let name = format!(
                        "{}{suffix}{}",
                        kind.name(),
                        if count > 1 {
                            format!("-{i}")
                        } else {
                            String::new()
                        }
                    );
                    let setup = PeerSetup {
                        listen: SocketAddr::from(([127, 0, 0, 1], peers::free_loopback_port()?)),
                        threads,
                        routes: routes.clone(),
                        dir: local.peers_dir.clone(),
                    };
                    std::fs::create_dir_all(&setup.dir)?;
                    let p =
                        peers::start(&local.state_dir, &self.topology.name, &name, kind, &setup)?;
                    ep.urls.push(format!("{}/", p.url));
                }
            }
            out.push(ep);
        }
        Ok(out)
    }

    fn peer_routes(&self) -> anyhow::Result<Vec<PeerRoute>> {
        let workers: Vec<(u32, String)> = self
            .target
            .deployment
            .instances
            .iter()
            .map(|i| (i.cluster, i.address.clone()))
            .collect();
        let mut prefixes: Vec<String> = self
            .topology
            .clusters
            .iter()
            .map(|c| c.route.clone())
            .collect();
        prefixes.extend(
            self.topology
                .balancer
                .routes
                .iter()
                .map(|r| r.prefix.clone()),
        );
        self.topology
            .target_groups(&workers)
            .into_iter()
            .zip(prefixes)
            .map(|((_, members), prefix)| {
                let workers = members
                    .iter()
                    .map(|a| a.parse().with_context(|| format!("worker address `{a}`")))
                    .collect::<anyhow::Result<_>>()?;
                Ok(PeerRoute { prefix, workers })
            })
            .collect()
    }

    /// The `replicas` scenario: N instances of every contender, one thread each.
    fn replicas(
        &self,
        contenders: &[Contender],
        runs: &mut Vec<Run>,
        say: &mut dyn FnMut(&str),
    ) -> anyhow::Result<ScenarioResult> {
        let n = self.opts.replicas.max(1);
        let kinds: Vec<PeerKind> = contenders
            .iter()
            .filter_map(|c| match c {
                Contender::Peer(k) => Some(*k),
                _ => None,
            })
            .collect();
        let result = (|| {
            let fulcrum = self.start_replicas(n)?;
            let peers = self.start_peers(&kinds, n, 1, "-replica")?;
            let endpoints: Vec<Endpoint> = contenders
                .iter()
                .map(|c| match c {
                    Contender::Fulcrum { .. } => Endpoint {
                        urls: fulcrum.urls.clone(),
                        admins: fulcrum.admins.clone(),
                        threads: 1,
                        instances: n,
                    },
                    Contender::Peer(k) => {
                        let p = &peers[peer_index(*k)];
                        Endpoint {
                            urls: p.urls.clone(),
                            admins: Vec::new(),
                            threads: 1,
                            instances: n,
                        }
                    }
                })
                .collect();
            self.scenario(Scenario::Replicas, contenders, &endpoints, runs, say)
        })();
        let _ = self.stop_companions(Role::Replica);
        for k in kinds {
            for i in 0..n {
                let local = self.local()?;
                let _ = companion::stop(
                    &local.state_dir,
                    &self.topology.name,
                    &format!("{}-replica-{i}", k.name()),
                );
            }
        }
        result
    }

    /// Starts `n` more `fulcrum balance` processes with the deployment's configuration, one
    /// thread each, on ports of their own.
    fn start_replicas(&self, n: usize) -> anyhow::Result<Endpoint> {
        let local = self.local()?;
        let mut topology = self.topology.clone();
        topology.balancer.threads = Some(1);
        let text = topology.balancer_config(
            "127.0.0.1:0",
            "127.0.0.1:0",
            WorkerSource::Files(&local.targets_dir),
        );
        let mut ep = Endpoint {
            urls: Vec::new(),
            admins: Vec::new(),
            threads: 1,
            instances: n,
        };
        for i in 0..n {
            let config = local.peers_dir.join(format!("replica-{i}.toml"));
            std::fs::create_dir_all(&local.peers_dir)?;
            std::fs::write(&config, &text)
                .with_context(|| format!("cannot write {}", config.display()))?;
            let mut command = Command::new(&self.opts.binary);
            command.arg("balance").arg("--config").arg(&config);
            let c = companion::start(
                &local.state_dir,
                &self.topology.name,
                CompanionSpec {
                    name: format!("replica-{i}"),
                    role: Role::Replica,
                    command,
                    placement: Placement::OwnGroup,
                },
            )?;
            let wait = Duration::from_secs(10);
            let listen = companion::wait_for_line(&c, "listening on http://", wait)?;
            let admin: SocketAddr = companion::wait_for_line(&c, "admin on http://", wait)?
                .parse()
                .context("a replica's admin address")?;
            wait_serving(admin)?;
            ep.urls.push(format!("http://{listen}/"));
            ep.admins.push(admin);
        }
        Ok(ep)
    }

    /// One scenario: rounds × contenders, interleaved, the starting contender rotating.
    fn scenario(
        &self,
        scenario: Scenario,
        contenders: &[Contender],
        endpoints: &[Endpoint],
        runs: &mut Vec<Run>,
        say: &mut dyn FnMut(&str),
    ) -> anyhow::Result<ScenarioResult> {
        let setting = self.setting(scenario)?;
        say(&format!(
            "  scenario {}: {}/s ({:.0}% of the measured {:.0}/s), {} contender(s) × {} round(s)",
            scenario.name(),
            setting.rate,
            setting.fraction * 100.0,
            self.capacity,
            contenders.len(),
            self.timing.rounds
        ));
        let mut rounds: Vec<Vec<Run>> = vec![Vec::new(); contenders.len()];
        let mut effects: Vec<AntagonistEffect> = Vec::new();
        for round in 0..self.timing.rounds as usize {
            for k in 0..contenders.len() {
                self.check()?;
                let i = (k + round) % contenders.len();
                let name = format!(
                    "{} · {} #{}",
                    scenario.name(),
                    contenders[i].label(),
                    round + 1
                );
                let run =
                    self.round(&setting, &contenders[i], &endpoints[i], &name, &mut effects)?;
                say(&round_line(&contenders[i], round, &run));
                rounds[i].push(run.clone());
                runs.push(run);
                self.settle();
            }
        }
        // Leave the deployment as configured.
        if let Some(admin) = self.target.admin {
            let b = &self.topology.balancer;
            let _ = switch(admin, "all", b.policy, b.telemetry);
        }
        Ok(self.scenario_result(scenario, setting, contenders, endpoints, &rounds, effects))
    }

    /// What a scenario offers: its co-tenants or cost mix, its parameters, its load.
    fn setting(&self, scenario: Scenario) -> anyhow::Result<Setting> {
        let plan = self.antagonist_plan(scenario);
        let heavy = (scenario == Scenario::HeavyTail).then(|| self.heavy_tail());
        let (mix, params) = match (&plan, &heavy) {
            (Some(p), _) => (None, p.params()),
            (_, Some(h)) => {
                let (mix, file) = self.write_mix(h)?;
                (Some(mix), h.params(&file.display().to_string()))
            }
            _ if scenario == Scenario::Replicas => (
                None,
                ScenarioParams::Replicas {
                    replicas: self.opts.replicas.max(1),
                    threads_each: 1,
                },
            ),
            _ => (None, ScenarioParams::Steady),
        };
        // Co-tenants take part of the capacity: the load is 85% of what they leave.
        let fraction = match &plan {
            Some(p) => LOAD_FRACTION * (1.0 - p.mean_take(self.host_cores(p), self.total_cores())),
            None => LOAD_FRACTION,
        };
        Ok(Setting {
            rate: (self.capacity * fraction).max(1.0).round(),
            fraction,
            plan,
            heavy,
            mix,
            params,
        })
    }

    /// One contender's round: switched to its policy if it is fulcrum, with the co-tenants on
    /// if the scenario has them.
    fn round(
        &self,
        setting: &Setting,
        c: &Contender,
        ep: &Endpoint,
        name: &str,
        effects: &mut Vec<AntagonistEffect>,
    ) -> anyhow::Result<Run> {
        if let Contender::Fulcrum { policy, telemetry } = c {
            for &admin in &ep.admins {
                switch(admin, "all", *policy, *telemetry)?;
            }
        }
        let bench = || self.bench(name, ep, setting.rate, setting.mix.clone(), c);
        match &setting.plan {
            Some(p) => {
                let (run, effect) = self.with_antagonists(p, bench)?;
                merge_effects(effects, effect);
                Ok(run)
            }
            None => bench(),
        }
    }

    fn scenario_result(
        &self,
        scenario: Scenario,
        setting: Setting,
        contenders: &[Contender],
        endpoints: &[Endpoint],
        rounds: &[Vec<Run>],
        effects: Vec<AntagonistEffect>,
    ) -> ScenarioResult {
        let contenders_out = contenders
            .iter()
            .zip(endpoints)
            .zip(rounds)
            .map(|((c, ep), rs)| contender_result(c, ep, rs, &self.target.deployment))
            .collect();
        ScenarioResult {
            name: scenario.name().into(),
            description: scenario.description().into(),
            rate: setting.rate,
            fraction: setting.fraction,
            round_s: self.timing.shootout_step.as_secs_f64(),
            params: setting.params,
            contenders: contenders_out,
            antagonists: finish_effects(effects, setting.plan.as_ref(), self),
            cost: setting.heavy.map(|h| cost_distribution(&h, rounds)),
        }
    }

    fn bench(
        &self,
        name: &str,
        ep: &Endpoint,
        rate: f64,
        mix: Option<RequestMix>,
        c: &Contender,
    ) -> anyhow::Result<Run> {
        let (policy, telemetry) = match c {
            Contender::Fulcrum { policy, telemetry } => {
                (policy.name().to_owned(), Some(telemetry.name().to_owned()))
            }
            Contender::Peer(k) => (format!("{} {}", k.name(), k.policy()), None),
        };
        let sampling = Sampling {
            // Only fulcrum's own balancer has a /status to sample.
            admin: ep.admins.first().copied().filter(|_| ep.instances == 1),
            workers: self.target.workers.clone(),
        };
        let run = fulcrum_loadgen::run(BenchConfig {
            name: name.into(),
            kind: RunKind::Shootout,
            targets: ep.urls.clone(),
            model: Model::Open {
                rate,
                duration_s: self.timing.shootout_step.as_secs_f64(),
            },
            connections: 300usize.max(ep.urls.len()),
            threads: 1,
            warmup: self.timing.warmup,
            timeout: self.timing.request_timeout,
            sampling,
            progress: false,
            policy: Some(policy),
            telemetry,
            clock_origin: Some(self.origin),
            mix,
            shape: Default::default(),
            tls: Default::default(),
            protocol: Default::default(),
        })?;
        Ok(run)
    }

    /// Waits (bounded) until no worker has requests in flight, whoever balanced them.
    fn settle(&self) {
        crate::settle(self.target, self.timing.settle);
    }

    fn total_cores(&self) -> f64 {
        self.target
            .deployment
            .instances
            .iter()
            .map(|i| i.cores)
            .sum()
    }

    fn host_cores(&self, plan: &AntagonistPlan) -> f64 {
        let Some(local) = self.target.local.as_ref() else {
            return 0.0;
        };
        plan.instances
            .first()
            .and_then(|n| local.instance(n))
            .map_or(0.0, |i| i.cores)
    }

    /// Co-tenants in every instance of the cluster with the most cores per instance (where
    /// a balancer sends most), two on at a time, each taking half its host's quota.
    fn antagonist_plan(&self, scenario: Scenario) -> Option<AntagonistPlan> {
        if scenario != Scenario::Antagonist {
            return None;
        }
        let local = self.target.local.as_ref()?;
        let biggest = self
            .topology
            .clusters
            .iter()
            .max_by(|a, b| a.instance_type.vcpus.cmp(&b.instance_type.vcpus))?;
        let instances: Vec<String> = local
            .instances
            .iter()
            .filter(|i| i.cluster == biggest.id)
            .map(|i| i.name.clone())
            .collect();
        let active = 2.min(instances.len());
        Some(AntagonistPlan {
            instances,
            share: 0.5,
            active,
            dwell: self.timing.antagonist_dwell,
        })
    }

    fn heavy_tail(&self) -> HeavyTail {
        let mean = self
            .topology
            .clusters
            .iter()
            .map(|c| c.work_us as f64)
            .sum::<f64>()
            / self.topology.clusters.len().max(1) as f64;
        HeavyTail::with_mean(mean)
    }

    fn write_mix(&self, h: &HeavyTail) -> anyhow::Result<(RequestMix, PathBuf)> {
        let mix = h.mix("/");
        std::fs::create_dir_all(&self.opts.out)?;
        let file = self.opts.out.join("heavy-tail-mix.toml");
        std::fs::write(&file, mix.to_toml())
            .with_context(|| format!("cannot write {}", file.display()))?;
        Ok((mix, file))
    }

    /// Runs `bench` with the co-tenants on, started so that the pattern begins with the
    /// round's measurement, and measures what they took.
    fn with_antagonists(
        &self,
        plan: &AntagonistPlan,
        bench: impl FnOnce() -> anyhow::Result<Run>,
    ) -> anyhow::Result<(Run, Vec<AntagonistEffect>)> {
        let local = self.local()?;
        let epoch_ms = unix_ms() + self.timing.warmup.as_millis() as u64 + 20
            - plan.cycle().as_millis() as u64;
        let mut started = Vec::new();
        let result = (|| {
            for (i, inst) in plan.instances.iter().enumerate() {
                let host = local.instance(inst).context("a co-tenant's host")?;
                let cores = host.cores;
                let mut command = Command::new(&self.opts.binary);
                command.arg("antagonist");
                command.args([
                    "--cores",
                    &cores.to_string(),
                    "--share",
                    &plan.share.to_string(),
                ]);
                command.args(["--on", &format!("{}ms", plan.on().as_millis())]);
                command.args(["--off", &format!("{}ms", plan.off().as_millis())]);
                command.args(["--phase", &format!("{}ms", plan.phase(i).as_millis())]);
                command.args(["--epoch-ms", &epoch_ms.to_string()]);
                let name = format!("antagonist-{inst}");
                let group = host.cgroup.clone();
                let before = group
                    .as_ref()
                    .map(|g| (g.cpu_usage().ok(), g.cpu_stat().ok()));
                let c = companion::start(
                    &local.state_dir,
                    &self.topology.name,
                    CompanionSpec {
                        name: name.clone(),
                        role: Role::Antagonist,
                        command,
                        placement: Placement::Instance(inst.clone()),
                    },
                )?;
                started.push((inst.clone(), cores, c, before, Instant::now()));
            }
            bench()
        })();
        let mut effects = Vec::new();
        for (inst, cores, c, before, at) in started {
            let cpu = c
                .process
                .as_ref()
                .and_then(|p| fulcrum_deploy::antagonist::process_cpu(p.pid))
                .unwrap_or_default();
            let group = local.instance(&inst).and_then(|i| i.cgroup.clone());
            let after = group
                .as_ref()
                .map(|g| (g.cpu_usage().ok(), g.cpu_stat().ok()));
            let lived = at.elapsed();
            let _ = companion::stop(&local.state_dir, &self.topology.name, &c.name);
            effects.push(effect(
                plan, &inst, cores, cpu, lived, epoch_ms, before, after,
            ));
        }
        result.map(|run| (run, effects))
    }
}

type GroupReading = Option<(Option<Duration>, Option<fulcrum_deploy::cgroup::CpuStat>)>;

#[allow(clippy::too_many_arguments)]
fn effect(
    plan: &AntagonistPlan,
    inst: &str,
    cores: f64,
    cpu: Duration,
    lived: Duration,
    epoch_ms: u64,
    before: GroupReading,
    after: GroupReading,
) -> AntagonistEffect {
    let i = plan.instances.iter().position(|x| x == inst).unwrap_or(0);
    let on_s = on_time(plan, i, epoch_ms, lived);
    let (group_cpu_s, throttled_periods, periods) = match (before, after) {
        (Some((u0, s0)), Some((u1, s1))) => (
            u1.zip(u0)
                .map_or(0.0, |(a, b)| a.saturating_sub(b).as_secs_f64()),
            s1.as_ref().zip(s0.as_ref()).map_or(0, |(a, b)| {
                a.throttled_periods.saturating_sub(b.throttled_periods)
            }),
            s1.as_ref()
                .zip(s0.as_ref())
                .map_or(0, |(a, b)| a.periods.saturating_sub(b.periods)),
        ),
        _ => (0.0, 0, 0),
    };
    AntagonistEffect {
        instance: inst.into(),
        instance_id: String::new(),
        cpu_s: cpu.as_secs_f64(),
        on_s,
        share_while_on: if on_s > 0.0 && cores > 0.0 {
            cpu.as_secs_f64() / (on_s * cores)
        } else {
            0.0
        },
        group_cpu_s,
        throttled_periods,
        periods,
    }
}

/// Seconds host `i`'s co-tenant was on during its `lived` life, which began about now −
/// `lived`.
fn on_time(plan: &AntagonistPlan, i: usize, epoch_ms: u64, lived: Duration) -> f64 {
    let end = unix_ms();
    let start = end.saturating_sub(lived.as_millis() as u64);
    let schedule = fulcrum_deploy::antagonist::AntagonistPlan {
        share: plan.share,
        cores: 1.0,
        on: plan.on(),
        off: plan.off(),
        phase: plan.phase(i),
        epoch_unix_ms: epoch_ms,
        duration: None,
    };
    let on_ms = (start..end)
        .step_by(10)
        .filter(|&t| fulcrum_deploy::antagonist::is_on(&schedule, t))
        .count()
        * 10;
    on_ms as f64 / 1000.0
}

fn merge_effects(into: &mut Vec<AntagonistEffect>, more: Vec<AntagonistEffect>) {
    for e in more {
        match into.iter_mut().find(|x| x.instance == e.instance) {
            Some(x) => {
                x.cpu_s += e.cpu_s;
                x.on_s += e.on_s;
                x.group_cpu_s += e.group_cpu_s;
                x.throttled_periods += e.throttled_periods;
                x.periods += e.periods;
            }
            None => into.push(e),
        }
    }
}

fn finish_effects(
    mut effects: Vec<AntagonistEffect>,
    plan: Option<&AntagonistPlan>,
    s: &Shootout,
) -> Vec<AntagonistEffect> {
    let Some(_) = plan else { return effects };
    let Some(local) = s.target.local.as_ref() else {
        return effects;
    };
    for e in &mut effects {
        let Some(host) = local.instance(&e.instance) else {
            continue;
        };
        e.share_while_on = if e.on_s > 0.0 && host.cores > 0.0 {
            e.cpu_s / (e.on_s * host.cores)
        } else {
            0.0
        };
        e.instance_id = host.instance_id.clone();
    }
    effects
}

fn peer_index(k: PeerKind) -> usize {
    PeerKind::ALL
        .iter()
        .position(|&x| x == k)
        .expect("every kind is in ALL")
}

/// Looks for every peer: installed ones run, missing ones are reported.
fn find_peers() -> (Vec<PeerInfo>, Vec<PeerKind>) {
    let mut info = Vec::new();
    let mut kinds = Vec::new();
    for kind in PeerKind::ALL {
        let found = kind.find();
        let version = found.as_deref().and_then(|p| kind.version(p));
        if found.is_some() {
            kinds.push(kind);
        }
        info.push(PeerInfo {
            name: kind.name().into(),
            policy: kind.policy().into(),
            version,
            missing: found
                .is_none()
                .then(|| format!("`{}` is not installed", kind.name())),
        });
    }
    (info, kinds)
}

/// Merges a contender's rounds and sets each worker's share of responses beside its share of
/// the capacity.
fn contender_result(
    c: &Contender,
    ep: &Endpoint,
    rounds: &[Run],
    d: &Deployment,
) -> ContenderResult {
    let mut merged = results::new_histogram();
    let (mut responses, mut errors, mut achieved) = (0, 0, 0.0);
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
    let (policy, telemetry) = match c {
        Contender::Fulcrum { policy, telemetry } => {
            (policy.name().to_owned(), Some(telemetry.name().to_owned()))
        }
        Contender::Peer(k) => (k.policy().to_owned(), None),
    };
    ContenderResult {
        label: c.label(),
        balancer: c.balancer().into(),
        policy,
        telemetry,
        threads: ep.threads,
        instances: ep.instances,
        latency: results::Hist::from_histogram(&merged),
        responses,
        errors,
        achieved_rate: achieved,
        rounds: rounds.iter().map(round_result).collect(),
        shares: shares(d, &per_instance),
    }
}

fn round_result(r: &Run) -> RoundResult {
    // Goodput: responses inside the window that were not errors.
    let ok_share = if r.responses > 0 {
        r.responses.saturating_sub(r.errors.total()) as f64 / r.responses as f64
    } else {
        0.0
    };
    RoundResult {
        run: r.name.clone(),
        p50_ms: r.latency.p50_ms,
        p99_ms: r.latency.p99_ms,
        max_ms: r.latency.max_ms,
        goodput: r.achieved_rate * ok_share,
        errors: r.errors.total(),
    }
}

fn shares(d: &Deployment, per_instance: &std::collections::BTreeMap<String, u64>) -> Vec<Share> {
    let total_cores: f64 = d.instances.iter().map(|i| i.cores).sum();
    let total: u64 = per_instance.values().sum();
    d.instances
        .iter()
        .map(|i| Share {
            instance_id: i.instance_id.clone(),
            cluster: i.cluster.to_string(),
            share_of_requests: per_instance.get(&i.instance_id).copied().unwrap_or(0) as f64
                / total.max(1) as f64,
            share_of_capacity: if total_cores > 0.0 {
                i.cores / total_cores
            } else {
                0.0
            },
        })
        .collect()
}

/// The configured cost quantiles beside those of the requests actually sent.
fn cost_distribution(h: &HeavyTail, rounds: &[Vec<Run>]) -> CostDistribution {
    let costs = h.costs_us();
    let mut sent: Vec<u64> = Vec::new();
    for run in rounds.iter().flatten() {
        let Some(usage) = &run.mix else { continue };
        for (entry, &cost) in usage.entries.iter().zip(&costs) {
            sent.extend(std::iter::repeat_n(cost, entry.sent as usize));
        }
    }
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    CostDistribution {
        mean_us: h.mean_us,
        p50_us: h.quantile_us(0.5),
        p99_us: h.quantile_us(0.99),
        sent_mean_us: mean(&sent),
        sent_p50_us: crate::scenario::quantile(&sent, 0.5),
        sent_p99_us: crate::scenario::quantile(&sent, 0.99),
    }
}

/// Switches `group` of the balancer at `admin` to `policy` on `telemetry`.
pub fn switch(
    admin: SocketAddr,
    group: &str,
    policy: Policy,
    telemetry: TelemetrySource,
) -> anyhow::Result<()> {
    let body =
        serde_json::json!({ "policy": policy.name(), "telemetry": telemetry.name() }).to_string();
    let (status, answer) = probe::request(
        admin,
        "PUT",
        &format!("/target-groups/{group}"),
        Some(&body),
        Duration::from_secs(2),
    )?;
    anyhow::ensure!(
        status == 200,
        "the balancer at {admin} refused to switch `{group}` to {}/{}: {status} {answer}",
        policy.name(),
        telemetry.name()
    );
    Ok(())
}

fn wait_serving(admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut backoff = Duration::from_millis(5);
    while !probe::healthy(admin, Duration::from_millis(500)) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the replica at {admin} did not become healthy"
        );
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
    Ok(())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
