//! The local provider: a topology's instances as `fulcrum worker` processes on loopback, each in
//! its own cgroup whose CPU quota (and memory limit) emulates its instance type, behind one
//! `fulcrum balance` process.
//!
//! Emulation: one emulated vCPU gets `scale` of a real core, with `scale` chosen so every
//! worker's quota fits in this machine's cores minus what the balancer and the load generator
//! keep (`[local]` reserves). The CFS period is 10 ms unless the smallest quota needs a longer
//! one to reach the kernel's 1 ms minimum: with the default 100 ms period a 0.1-core worker could
//! run 10 ms and then stall for 90 ms; with 10 ms the stall is at most 9 ms.
//!
//! Every step is recorded in the state file before it is taken, so `down` can always remove
//! what `up` started, even after a crash; Ctrl-C during `up` removes everything at once.

use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cgroup::{CgroupError, CgroupHost};
use crate::process::{
    reap, spawn_detached, stop_instance, stop_processes, wait_for_address, wait_healthy, CHILDREN,
};
use crate::state::{EmulationState, InstanceState, ProcessState, State, StateDir, STATE_VERSION};
use crate::topology::{Topology, WorkerSource};
use fulcrum_telemetry::probe;

/// How long a worker or the balancer may take to announce itself and answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const MIN_QUOTA_US: f64 = 1000.0;
const DEFAULT_PERIOD_US: f64 = 10_000.0;
const MIN_MEMORY: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(
        "the topology needs {vcpus} emulated vCPUs but this machine has {cores} cores and \
         {reserve} are reserved for the balancer and the load generator; lower the reserves or \
         the counts in [local] / [[cluster]]"
    )]
    NoRoom {
        vcpus: u32,
        cores: usize,
        reserve: f64,
    },
    #[error("{what} did not start: {why}; see {log}")]
    Start {
        what: String,
        why: String,
        log: String,
    },
    #[error("{0}")]
    Io(String),
    #[error("interrupted; everything this `up` started was stopped and removed")]
    Interrupted,
    #[error(
        "deployment `{name}` is managed by the {provider} provider; use `--provider {provider}`"
    )]
    OtherProvider { name: String, provider: String },
}

fn io_error(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> DeployError {
    move |e| DeployError::Io(format!("{context}: {e}"))
}

/// What `up` needs besides the topology.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The `fulcrum` binary to run workers and the balancer with.
    pub binary: PathBuf,
    pub state_dir: PathBuf,
    /// Run unthrottled when cgroups cannot be made, instead of failing.
    pub no_emulation: bool,
}

/// What `up` will do, before it does it.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    pub emulation: Option<EmulationState>,
    pub clusters: Vec<PlanCluster>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanCluster {
    pub id: u32,
    pub route: String,
    pub instance_type: String,
    pub count: u32,
    pub vcpus: u32,
    /// Cores each instance may use here.
    pub cores: f64,
    pub memory_bytes: Option<u64>,
}

impl Plan {
    /// The plan as lines for a person.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.emulation {
            Some(e) => out.push(format!(
                "emulation: 1 vCPU = {:.3} of a core (machine: {} cores, {:.2} reserved for the balancer \
                 and the load generator), CFS period {} ms, cgroup {}, CPU credits {}",
                e.scale,
                e.machine_cores,
                e.reserve_cores,
                e.period_us / 1000,
                e.cgroup,
                if e.credits { "emulated" } else { "not emulated" }
            )),
            None => out.push("emulation: off (--no-emulation): workers run unthrottled".into()),
        }
        for c in &self.clusters {
            out.push(format!(
                "cluster {} on {}: {} × {} ({} vCPU each → {:.3} cores{}), {:.3} cores in all",
                c.id,
                c.route,
                c.count,
                c.instance_type,
                c.vcpus,
                c.cores,
                c.memory_bytes
                    .map(|m| format!(", {} MiB", m >> 20))
                    .unwrap_or_default(),
                c.cores * c.count as f64
            ));
        }
        out
    }
}

/// The cores a local deployment may give its workers.
fn machine_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Works out the emulation for a topology on this machine (or none).
pub fn plan(t: &Topology, cgroup: Option<&str>) -> Result<Plan, DeployError> {
    let cores = machine_cores();
    let reserve = t.local.balancer_reserve_cores + t.local.loadgen_reserve_cores;
    let vcpus = t.total_vcpus();
    let emulation = match cgroup {
        None => None,
        Some(kind) => {
            let room = cores as f64 - reserve;
            let scale = match t.local.scale {
                Some(s) => s,
                None if room > 0.0 => (room / vcpus as f64).min(1.0),
                None => {
                    return Err(DeployError::NoRoom {
                        vcpus,
                        cores,
                        reserve,
                    })
                }
            };
            let min_cores = t
                .clusters
                .iter()
                .map(|c| c.instance_type.vcpus as f64 * scale)
                .fold(f64::INFINITY, f64::min);
            let period_us = (MIN_QUOTA_US / min_cores)
                .ceil()
                .clamp(DEFAULT_PERIOD_US, 1_000_000.0) as u64;
            Some(EmulationState {
                scale,
                period_us,
                cgroup: kind.to_owned(),
                credits: t.local.credits,
                memory_limits: t.local.memory_limits,
                machine_cores: cores,
                reserve_cores: reserve,
            })
        }
    };
    let clusters = t
        .clusters
        .iter()
        .map(|c| {
            let vcpus = c.instance_type.vcpus;
            let (cores_each, memory) = match &emulation {
                Some(e) => (
                    vcpus as f64 * e.scale,
                    e.memory_limits.then(|| {
                        ((c.instance_type.memory_mib << 20) as f64 * e.scale).max(MIN_MEMORY as f64)
                            as u64
                    }),
                ),
                None => (cores as f64, None),
            };
            PlanCluster {
                id: c.id,
                route: c.route.clone(),
                instance_type: c.instance_type.name.into(),
                count: c.count,
                vcpus,
                cores: cores_each,
                memory_bytes: memory,
            }
        })
        .collect();
    Ok(Plan {
        name: t.name.clone(),
        emulation,
        clusters,
    })
}

/// A stable id shaped like an EC2 one, from the deployment and the instance's name.
pub fn instance_id(deployment: &str, instance: &str) -> String {
    let mut h = std::hash::DefaultHasher::new();
    (deployment, instance).hash(&mut h);
    format!("i-0{:016x}", h.finish())
}

/// The result of `up`.
#[derive(Debug, Clone, Serialize)]
pub struct UpOutcome {
    pub plan: Plan,
    /// False when the deployment was already up as asked.
    pub changed: bool,
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    pub elapsed_s: f64,
    pub balancer_url: String,
    pub admin_url: String,
    pub workers: Vec<WorkerEndpoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerEndpoint {
    pub name: String,
    pub cluster: u32,
    pub instance_type: String,
    pub instance_id: String,
    pub url: String,
    pub cores: f64,
}

/// Brings the topology up, or changes a running deployment to match it. `say` receives progress
/// lines; `interrupted` is polled, and when it turns true everything started is removed.
pub fn up(
    t: &Topology,
    opts: &UpOptions,
    interrupted: &AtomicBool,
    say: &mut dyn FnMut(&str),
) -> Result<UpOutcome, DeployError> {
    let started_at = Instant::now();
    let dir = StateDir::new(&opts.state_dir, &t.name);
    let previous = dir.load().map_err(io_error("reading the state"))?;
    if let Some(p) = &previous {
        if p.provider != "local" {
            return Err(DeployError::OtherProvider {
                name: t.name.clone(),
                provider: p.provider.clone(),
            });
        }
    }

    let host = match CgroupHost::detect().and_then(|h| {
        // Creating the deployment's own group proves we may.
        h.create(&cgroup_rel(&t.name, None)).map(|_| h)
    }) {
        Ok(h) => Some(h),
        Err(e) if opts.no_emulation => {
            say(&format!(
                "cgroups unavailable ({e}); --no-emulation: workers run unthrottled"
            ));
            None
        }
        Err(e) => return Err(e.into()),
    };
    let kind = host.as_ref().map(|h| match h.version() {
        crate::cgroup::Version::V1 => "v1",
        crate::cgroup::Version::V2 => "v2",
    });
    let plan = plan(t, kind)?;
    for line in plan.describe() {
        say(&line);
    }

    let mut state = previous.unwrap_or_else(|| State {
        version: STATE_VERSION,
        name: t.name.clone(),
        provider: "local".into(),
        topology: String::new(),
        emulation: None,
        cgroup_roots: Vec::new(),
        instances: Vec::new(),
        balancer: None,
        balancer_listen: None,
        balancer_admin: None,
        credit_keeper: None,
        companions: Vec::new(),
    });
    let emulation_changed = state.emulation != plan.emulation;
    state.emulation = plan.emulation.clone();
    if let Some(h) = &host {
        state.cgroup_roots = h.roots(&cgroup_rel(&t.name, None));
    }
    fs::create_dir_all(dir.logs()).map_err(io_error(dir.logs().display()))?;
    fs::create_dir_all(dir.targets()).map_err(io_error(dir.targets().display()))?;
    dir.save(&state).map_err(io_error("writing the state"))?;

    let result = apply(
        t,
        opts,
        &plan,
        host.as_ref(),
        &dir,
        &mut state,
        emulation_changed,
        interrupted,
        say,
    );
    match result {
        Ok((started, stopped)) => {
            let changed = !started.is_empty() || !stopped.is_empty() || emulation_changed;
            let outcome = outcome(&state, plan, changed, started, stopped, started_at);
            Ok(outcome)
        }
        Err(e) => {
            if matches!(e, DeployError::Interrupted) {
                say("interrupted: stopping everything this deployment started");
                let _ = down(&opts.state_dir, &t.name, &mut |_| {});
            }
            Err(e)
        }
    }
}

/// The deployment's cgroup path, or an instance's within it.
pub(crate) fn cgroup_rel(deployment: &str, instance: Option<&str>) -> PathBuf {
    let base = PathBuf::from("fulcrum").join(deployment);
    match instance {
        Some(i) => base.join(i),
        None => base,
    }
}

#[allow(clippy::too_many_arguments)]
fn apply(
    t: &Topology,
    opts: &UpOptions,
    plan: &Plan,
    host: Option<&CgroupHost>,
    dir: &StateDir,
    state: &mut State,
    emulation_changed: bool,
    interrupted: &AtomicBool,
    say: &mut dyn FnMut(&str),
) -> Result<(Vec<String>, Vec<String>), DeployError> {
    let check = || {
        if interrupted.load(Ordering::Relaxed) {
            Err(DeployError::Interrupted)
        } else {
            Ok(())
        }
    };
    let mut started = Vec::new();
    let mut stopped = Vec::new();

    // Instances no longer wanted (or of another type now) go first.
    let wanted: BTreeMap<String, (&crate::topology::Cluster, u32)> = t
        .instances()
        .map(|(c, i)| (format!("c{}-{i}", c.id), (c, i)))
        .collect();
    let mut keep = Vec::new();
    for inst in std::mem::take(&mut state.instances) {
        let same = wanted.get(&inst.name).is_some_and(|(c, _)| {
            c.instance_type.name == inst.instance_type
                && c.work_us == inst.work_us
                && c.id == inst.cluster
        });
        if same {
            keep.push(inst);
        } else {
            say(&format!(
                "stopping {} ({}): no longer in the topology",
                inst.name, inst.instance_type
            ));
            stop_instance(&inst);
            stopped.push(inst.name.clone());
        }
    }
    state.instances = keep;
    dir.save(state).map_err(io_error("writing the state"))?;

    // Record every wanted instance (with its cgroup) before starting anything.
    for (name, (c, _)) in &wanted {
        check()?;
        let pc = plan
            .clusters
            .iter()
            .find(|p| p.id == c.id)
            .expect("plan covers every cluster");
        let existing = state.instances.iter().position(|i| &i.name == name);
        let idx = match existing {
            Some(i) => i,
            None => {
                state.instances.push(InstanceState {
                    name: name.clone(),
                    cluster: c.id,
                    instance_type: c.instance_type.name.into(),
                    instance_id: instance_id(&t.name, name),
                    vcpus: c.instance_type.vcpus,
                    cores: pc.cores,
                    memory_bytes: pc.memory_bytes,
                    work_us: c.work_us,
                    cgroup: None,
                    process: None,
                    address: None,
                });
                state.instances.len() - 1
            }
        };
        let inst = &mut state.instances[idx];
        inst.cores = pc.cores;
        inst.memory_bytes = pc.memory_bytes;
        if let (Some(h), Some(e)) = (host, &plan.emulation) {
            if inst.cgroup.is_none() || emulation_changed {
                let group = h.create(&cgroup_rel(&t.name, Some(name)))?;
                inst.cgroup = Some(group.clone());
                dir.save(state).map_err(io_error("writing the state"))?;
                let period = Duration::from_micros(e.period_us);
                let quota = Duration::from_micros((pc.cores * e.period_us as f64).round() as u64);
                group.set_cpu_limit(quota, period)?;
                if let Some(m) = pc.memory_bytes {
                    group.set_memory_limit(m)?;
                }
            }
        }
        dir.save(state).map_err(io_error("writing the state"))?;
    }

    // Start what is not running (new instances, or ones that died).
    let mut pending: Vec<usize> = Vec::new();
    for (i, inst) in state.instances.iter_mut().enumerate() {
        check()?;
        if inst.process.as_ref().is_some_and(|p| p.is_alive()) && inst.address.is_some() {
            continue;
        }
        let log = dir.logs().join(format!("{}.log", inst.name));
        let out = dir.logs().join(format!("{}.out", inst.name));
        let mut cmd = Command::new(&opts.binary);
        cmd.args([
            "worker",
            "--cluster",
            &inst.cluster.to_string(),
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--instance-id",
            &inst.instance_id,
            "--work-us",
            &inst.work_us.to_string(),
        ]);
        let child = spawn_detached(cmd, inst.cgroup.as_ref(), &out, &log).map_err(|e| {
            DeployError::Start {
                what: inst.name.clone(),
                why: e.to_string(),
                log: log.display().to_string(),
            }
        })?;
        inst.process = Some(ProcessState::of(child.id(), log));
        inst.address = None;
        CHILDREN.lock().expect("never poisoned").push(child);
        pending.push(i);
        started.push(inst.name.clone());
    }
    dir.save(state).map_err(io_error("writing the state"))?;

    // Learn each new worker's address, then wait until all answer /health.
    let deadline = Instant::now() + START_TIMEOUT;
    for &i in &pending {
        let inst = &mut state.instances[i];
        let out = dir.logs().join(format!("{}.out", inst.name));
        let proc_ = inst.process.clone().expect("started above");
        let addr = wait_for_address(&out, &proc_, deadline, interrupted).map_err(|why| {
            if interrupted.load(Ordering::Relaxed) {
                return DeployError::Interrupted;
            }
            DeployError::Start {
                what: inst.name.clone(),
                why,
                log: proc_.log.display().to_string(),
            }
        })?;
        inst.address = Some(addr.to_string());
        dir.save(state).map_err(io_error("writing the state"))?;
    }
    for inst in &state.instances {
        let addr: SocketAddr = inst
            .address
            .as_deref()
            .expect("known by now")
            .parse()
            .expect("valid");
        wait_healthy(addr, deadline, interrupted).map_err(|why| {
            if interrupted.load(Ordering::Relaxed) {
                return DeployError::Interrupted;
            }
            DeployError::Start {
                what: inst.name.clone(),
                why,
                log: inst
                    .process
                    .as_ref()
                    .map(|p| p.log.display().to_string())
                    .unwrap_or_default(),
            }
        })?;
    }
    if !pending.is_empty() {
        say(&format!("{} worker(s) started and healthy", pending.len()));
    }

    // Who serves what: written atomically, watched by the balancer.
    let workers: Vec<(u32, String)> = state
        .instances
        .iter()
        .map(|i| (i.cluster, i.address.clone().expect("known")))
        .collect();
    for (group, members) in t.target_groups(&workers) {
        write_targets(&dir.targets().join(format!("{group}.json")), &members)?;
    }

    // The balancer: started once, reused while alive (it picks up worker changes itself).
    check()?;
    let balancer_alive = state.balancer.as_ref().is_some_and(|b| b.is_alive());
    if !balancer_alive {
        let config = dir.root.join("balancer.toml");
        let text = t.balancer_config(
            &t.balancer.listen,
            &t.balancer.admin,
            WorkerSource::Files(&dir.targets()),
        );
        fs::write(&config, text).map_err(io_error(config.display()))?;
        let log = dir.logs().join("balancer.log");
        let out = dir.logs().join("balancer.out");
        let mut cmd = Command::new(&opts.binary);
        cmd.args(["balance", "--config"]).arg(&config);
        let group = match host {
            Some(h) => Some(h.create(&cgroup_rel(&t.name, Some("balancer")))?),
            None => None,
        };
        let child =
            spawn_detached(cmd, group.as_ref(), &out, &log).map_err(|e| DeployError::Start {
                what: "the balancer".into(),
                why: e.to_string(),
                log: log.display().to_string(),
            })?;
        let proc_ = ProcessState::of(child.id(), log);
        CHILDREN.lock().expect("never poisoned").push(child);
        state.balancer = Some(proc_.clone());
        dir.save(state).map_err(io_error("writing the state"))?;
        let (listen, admin) =
            wait_for_balancer(&out, &proc_, deadline, interrupted).map_err(|why| {
                if interrupted.load(Ordering::Relaxed) {
                    return DeployError::Interrupted;
                }
                DeployError::Start {
                    what: "the balancer".into(),
                    why,
                    log: proc_.log.display().to_string(),
                }
            })?;
        wait_healthy(admin, deadline, interrupted).map_err(|why| DeployError::Start {
            what: "the balancer".into(),
            why,
            log: proc_.log.display().to_string(),
        })?;
        state.balancer_listen = Some(listen.to_string());
        state.balancer_admin = Some(admin.to_string());
        dir.save(state).map_err(io_error("writing the state"))?;
        started.push("balancer".into());
        say(&format!("balancer started on http://{listen}"));
    }

    // The credit keeper, when burstable credits are emulated.
    let wants_keeper = plan.emulation.as_ref().is_some_and(|e| e.credits);
    if wants_keeper && !state.credit_keeper.as_ref().is_some_and(|k| k.is_alive()) {
        let log = dir.logs().join("credit-keeper.log");
        let mut cmd = Command::new(&opts.binary);
        cmd.arg("credit-keeper")
            .arg("--state-dir")
            .arg(
                dir.root
                    .parent()
                    .expect("a deployment directory has a parent"),
            )
            .args(["--name", &t.name]);
        if let Some(i) = t.local.initial_credits {
            cmd.args(["--initial-credits", &i.to_string()]);
        }
        let child = spawn_detached(cmd, None, &dir.logs().join("credit-keeper.out"), &log)
            .map_err(|e| DeployError::Start {
                what: "the credit keeper".into(),
                why: e.to_string(),
                log: log.display().to_string(),
            })?;
        state.credit_keeper = Some(ProcessState::of(child.id(), log));
        CHILDREN.lock().expect("never poisoned").push(child);
        dir.save(state).map_err(io_error("writing the state"))?;
        started.push("credit keeper".into());
        say("burstable CPU credits emulated: quotas follow each instance's credit balance");
    }
    reap();
    Ok((started, stopped))
}

fn write_targets(path: &Path, members: &[String]) -> Result<(), DeployError> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::json!({ "workers": members });
    fs::write(&tmp, serde_json::to_vec_pretty(&body).expect("JSON"))
        .map_err(io_error(tmp.display()))?;
    fs::rename(&tmp, path).map_err(io_error(path.display()))
}

fn wait_for_balancer(
    out: &Path,
    p: &ProcessState,
    deadline: Instant,
    interrupted: &AtomicBool,
) -> Result<(SocketAddr, SocketAddr), String> {
    let listen = wait_for_address(out, p, deadline, interrupted)?;
    loop {
        if let Ok(text) = fs::read_to_string(out) {
            if let Some(a) = text
                .lines()
                .find_map(|l| l.split("admin on http://").nth(1))
            {
                return Ok((
                    listen,
                    a.trim()
                        .parse()
                        .map_err(|e| format!("bad admin address: {e}"))?,
                ));
            }
        }
        if !p.is_alive() || Instant::now() > deadline || interrupted.load(Ordering::Relaxed) {
            return Err("the balancer did not announce its admin address".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn outcome(
    state: &State,
    plan: Plan,
    changed: bool,
    started: Vec<String>,
    stopped: Vec<String>,
    t0: Instant,
) -> UpOutcome {
    UpOutcome {
        plan,
        changed,
        started,
        stopped,
        elapsed_s: t0.elapsed().as_secs_f64(),
        balancer_url: format!(
            "http://{}",
            state.balancer_listen.as_deref().unwrap_or_default()
        ),
        admin_url: format!(
            "http://{}",
            state.balancer_admin.as_deref().unwrap_or_default()
        ),
        workers: state
            .instances
            .iter()
            .map(|i| WorkerEndpoint {
                name: i.name.clone(),
                cluster: i.cluster,
                instance_type: i.instance_type.clone(),
                instance_id: i.instance_id.clone(),
                url: format!("http://{}", i.address.clone().unwrap_or_default()),
                cores: i.cores,
            })
            .collect(),
    }
}

/// Addresses of a deployment's balancer, as it announced them: `(listen, admin)`.
pub fn balancer_addresses(state: &State) -> Option<(SocketAddr, SocketAddr)> {
    Some((
        state.balancer_listen.as_deref()?.parse().ok()?,
        state.balancer_admin.as_deref()?.parse().ok()?,
    ))
}

/// What `down` did.
#[derive(Debug, Clone, Serialize)]
pub struct DownReport {
    pub existed: bool,
    pub stopped: usize,
    pub cgroups_removed: usize,
}

/// Removes a local deployment: stops exactly the processes its state names, removes its
/// cgroups (killing anything left inside them) and its state. Idempotent.
pub fn down(
    state_dir: &Path,
    name: &str,
    say: &mut dyn FnMut(&str),
) -> Result<DownReport, DeployError> {
    let dir = StateDir::new(state_dir, name);
    let Some(state) = dir.load().map_err(io_error("reading the state"))? else {
        return Ok(DownReport {
            existed: false,
            stopped: 0,
            cgroups_removed: 0,
        });
    };
    if state.provider != "local" {
        return Err(DeployError::OtherProvider {
            name: name.into(),
            provider: state.provider,
        });
    }
    let mut procs: Vec<ProcessState> = Vec::new();
    procs.extend(state.credit_keeper.clone());
    procs.extend(state.companions.iter().filter_map(|c| c.process.clone()));
    procs.extend(state.balancer.clone());
    procs.extend(state.instances.iter().filter_map(|i| i.process.clone()));
    let alive = procs.iter().filter(|p| p.is_alive()).count();
    say(&format!("stopping {alive} process(es)"));
    stop_processes(&procs);
    let mut removed = 0;
    for root in &state.cgroup_roots {
        // Anything still inside our groups is ours, recorded or not.
        for _ in 0..50 {
            let left = crate::cgroup::procs_under(root);
            if left.is_empty() {
                break;
            }
            for pid in left {
                // SAFETY: plain kill(2) of a process inside a group only fulcrum creates.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            reap();
            std::thread::sleep(Duration::from_millis(20));
        }
        if root.exists() {
            removed += 1;
        }
        crate::cgroup::remove_dir_tree(root)?;
        // The shared `fulcrum` parent goes too once no other deployment uses it.
        if let Some(parent) = root.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    dir.remove().map_err(io_error("removing the state"))?;
    say(&format!("removed deployment `{name}`"));
    Ok(DownReport {
        existed: true,
        stopped: alive,
        cgroups_removed: removed,
    })
}

/// One instance as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceStatus {
    pub name: String,
    pub cluster: u32,
    pub instance_type: String,
    pub instance_id: String,
    pub address: Option<String>,
    pub pid: Option<u32>,
    pub alive: bool,
    pub healthy: bool,
    /// Cores it may use (its quota).
    pub cores: f64,
    pub quota: Option<String>,
    pub cpu_utilization: Option<f64>,
    pub requests_served: Option<u64>,
    pub in_flight: Option<u64>,
    /// Burstable-credit balance, when credits are emulated.
    pub credits: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub name: String,
    pub provider: String,
    pub emulation: Option<EmulationState>,
    pub balancer_url: Option<String>,
    pub admin_url: Option<String>,
    pub balancer_alive: bool,
    pub balancer_healthy: bool,
    pub instances: Vec<InstanceStatus>,
}

/// The state of every instance of a deployment, asked live; `None` if there is no such
/// deployment.
pub fn status(state_dir: &Path, name: &str) -> Result<Option<StatusReport>, DeployError> {
    let dir = StateDir::new(state_dir, name);
    let Some(state) = dir.load().map_err(io_error("reading the state"))? else {
        return Ok(None);
    };
    let addrs = balancer_addresses(&state);
    let timeout = Duration::from_millis(500);
    let credits = crate::credits::read(&dir);
    let instances = state
        .instances
        .iter()
        .map(|i| {
            let alive = i.process.as_ref().is_some_and(|p| p.is_alive());
            let addr: Option<SocketAddr> = i.address.as_deref().and_then(|a| a.parse().ok());
            let load = addr
                .filter(|_| alive)
                .and_then(|a| probe::get(a, "/load", timeout).ok())
                .filter(|(s, _)| *s == 200)
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok());
            InstanceStatus {
                name: i.name.clone(),
                cluster: i.cluster,
                instance_type: i.instance_type.clone(),
                instance_id: i.instance_id.clone(),
                address: i.address.clone(),
                pid: i.process.as_ref().map(|p| p.pid),
                alive,
                healthy: alive && addr.is_some_and(|a| probe::healthy(a, timeout)),
                cores: i.cores,
                quota: i
                    .cgroup
                    .as_ref()
                    .and_then(|g| g.cpu_limit().ok().flatten())
                    .map(|(q, p)| format!("{} µs / {} µs", q.as_micros(), p.as_micros())),
                cpu_utilization: load.as_ref().and_then(|l| l["cpu_utilization"].as_f64()),
                requests_served: load.as_ref().and_then(|l| l["requests_served"].as_u64()),
                in_flight: load.as_ref().and_then(|l| l["in_flight"].as_u64()),
                credits: credits
                    .as_ref()
                    .and_then(|c| c.get(&i.name))
                    .map(|a| a.balance),
            }
        })
        .collect();
    let balancer_alive = state.balancer.as_ref().is_some_and(|b| b.is_alive());
    Ok(Some(StatusReport {
        name: state.name.clone(),
        provider: state.provider.clone(),
        emulation: state.emulation.clone(),
        balancer_url: addrs.map(|(l, _)| format!("http://{l}")),
        admin_url: addrs.map(|(_, a)| format!("http://{a}")),
        balancer_alive,
        balancer_healthy: balancer_alive && addrs.is_some_and(|(_, a)| probe::healthy(a, timeout)),
        instances,
    }))
}
