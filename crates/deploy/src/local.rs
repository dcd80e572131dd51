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
//!
//! `emulation` makes the plan; `deployer` carries `up` out phase by phase; this file is the
//! provider's face: `up`, `status`, `down`.

mod deployer;
mod emulation;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::process::{reap, stop_processes};
use crate::state::{EmulationState, ProcessState, State, StateDir};
use crate::topology::Topology;
use deployer::{Deployed, LocalDeployer};
use fulcrum_telemetry::probe;

pub use crate::error::DeployError;
pub use deployer::{instance_id, UpOptions};
pub use emulation::{plan, Plan, PlanCluster};

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
    let mut deployer = LocalDeployer::prepare(t, opts, interrupted, say)?;
    match deployer.deploy() {
        Ok(()) => Ok(outcome(deployer.finish(), started_at)),
        Err(e) => {
            if matches!(e, DeployError::Interrupted) {
                deployer.say("interrupted: stopping everything this deployment started");
                let _ = down(&opts.state_dir, &t.name, &mut |_| {});
            }
            Err(e)
        }
    }
}

fn outcome(d: Deployed, t0: Instant) -> UpOutcome {
    let state = &d.state;
    UpOutcome {
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
        plan: d.plan,
        changed: d.changed,
        started: d.started,
        stopped: d.stopped,
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
    let Some(state) = dir.load_local(name)? else {
        return Ok(DownReport {
            existed: false,
            stopped: 0,
            cgroups_removed: 0,
        });
    };
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
    dir.remove()
        .map_err(DeployError::io("removing the state"))?;
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
    let Some(state) = dir.load().map_err(DeployError::io("reading the state"))? else {
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
