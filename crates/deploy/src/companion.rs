//! Companions: processes run beside a local deployment for a while — peer balancers (nginx,
//! HAProxy), balancer replicas, CPU antagonists inside a worker's cgroup.
//!
//! A companion is written to the deployment's state before it is started and removed from it
//! only once it has stopped, so an interrupted experiment, a crash or a plain `down` always
//! removes it: by recorded PID (checked against its start time), and by its cgroup, which lives
//! under the deployment's own and is swept with it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cgroup::{deployment_cgroup, Cgroup, CgroupHost};
use crate::error::DeployError;
use crate::process::{kill_group, log_tail, spawn_recorded, stop_processes};
use crate::state::{CompanionState, State, StateDir};

// Recorded in the state with each companion, so it is defined there.
pub use crate::state::Role;

/// Where a companion runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// In a cgroup of its own under the deployment's (no limits; swept by `down`). Without
    /// cgroups (an unemulated deployment), in the caller's.
    OwnGroup,
    /// Inside the named instance's cgroup, sharing its CPU quota.
    Instance(String),
}

pub struct CompanionSpec {
    /// Unique within the deployment; names its log files.
    pub name: String,
    pub role: Role,
    pub command: Command,
    pub placement: Placement,
}

/// Starts a companion, recorded in the deployment's state first.
pub fn start(
    state_dir: &Path,
    deployment: &str,
    spec: CompanionSpec,
) -> Result<CompanionState, DeployError> {
    let dir = StateDir::new(state_dir, deployment);
    let mut state = load(&dir, deployment)?;
    if let Some(old) = state.companions.iter().find(|c| c.name == spec.name) {
        if old.process.as_ref().is_some_and(|p| p.is_alive()) {
            return Err(DeployError::CompanionRunning {
                name: spec.name.clone(),
                deployment: deployment.into(),
            });
        }
        let old = old.clone();
        remove_recorded(&dir, &mut state, &old)?;
    }
    let placed = place(&state, deployment, &spec)?;
    let logs = dir.logs();
    fs::create_dir_all(&logs).map_err(DeployError::io(logs.display()))?;
    let stdout = logs.join(format!("{}.out", spec.name));
    let log = logs.join(format!("{}.log", spec.name));
    let mut record = CompanionState {
        name: spec.name.clone(),
        role: spec.role,
        process: None,
        own_cgroup: placed.own_cgroup,
        instance: placed.instance,
        stdout: stdout.clone(),
    };
    state.companions.push(record.clone());
    save(&dir, &state)?;
    let process = spawn_recorded(spec.command, placed.group.as_ref(), &stdout, &log)
        .map_err(|e| DeployError::start(&spec.name, e.to_string(), Some(&log)))?;
    record.process = Some(process);
    if let Some(r) = state.companions.iter_mut().find(|c| c.name == spec.name) {
        *r = record.clone();
    }
    save(&dir, &state)?;
    Ok(record)
}

/// A companion's placement, resolved against the deployment.
struct Placed {
    /// The group it joins.
    group: Option<Cgroup>,
    /// The group it has to itself (removed with it).
    own_cgroup: Option<Cgroup>,
    /// The instance whose group it shares.
    instance: Option<String>,
}

fn place(state: &State, deployment: &str, spec: &CompanionSpec) -> Result<Placed, DeployError> {
    match &spec.placement {
        Placement::OwnGroup => {
            let group = CgroupHost::detect().ok().and_then(|h| {
                h.create(&deployment_cgroup(
                    deployment,
                    Some(&format!("companion-{}", spec.name)),
                ))
                .ok()
            });
            Ok(Placed {
                group: group.clone(),
                own_cgroup: group,
                instance: None,
            })
        }
        Placement::Instance(name) => {
            let inst = state
                .instances
                .iter()
                .find(|i| &i.name == name)
                .ok_or_else(|| DeployError::NoInstance {
                    instance: name.clone(),
                    deployment: deployment.into(),
                })?;
            Ok(Placed {
                group: inst.cgroup.clone(),
                own_cgroup: None,
                instance: Some(name.clone()),
            })
        }
    }
}

/// Stops a companion and forgets it; `false` if there was none of that name.
pub fn stop(state_dir: &Path, deployment: &str, name: &str) -> Result<bool, DeployError> {
    let dir = StateDir::new(state_dir, deployment);
    let Some(mut state) = dir.load().map_err(DeployError::io("reading the state"))? else {
        return Ok(false);
    };
    let Some(c) = state.companions.iter().find(|c| c.name == name).cloned() else {
        return Ok(false);
    };
    remove_recorded(&dir, &mut state, &c)?;
    Ok(true)
}

/// Stops every companion of `role` (all of them with `None`).
pub fn stop_all(
    state_dir: &Path,
    deployment: &str,
    role: Option<Role>,
) -> Result<usize, DeployError> {
    let dir = StateDir::new(state_dir, deployment);
    let Some(state) = dir.load().map_err(DeployError::io("reading the state"))? else {
        return Ok(0);
    };
    let names: Vec<String> = state
        .companions
        .iter()
        .filter(|c| role.is_none_or(|r| c.role == r))
        .map(|c| c.name.clone())
        .collect();
    let processes: Vec<_> = state
        .companions
        .iter()
        .filter(|c| names.contains(&c.name))
        .filter_map(|c| c.process.clone())
        .collect();
    // Signal them all at once, so the grace periods overlap.
    stop_processes(&processes);
    for name in &names {
        stop(state_dir, deployment, name)?;
    }
    Ok(names.len())
}

/// Waits until the companion's standard output has a line containing `marker`, and returns
/// what follows the marker on it.
pub fn wait_for_line(
    c: &CompanionState,
    marker: &str,
    timeout: Duration,
) -> Result<String, DeployError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = fs::read_to_string(&c.stdout) {
            if let Some(rest) = text.lines().find_map(|l| l.split(marker).nth(1)) {
                return Ok(rest.trim().to_owned());
            }
        }
        let process = c.process.as_ref();
        let why = if !process.is_some_and(|p| p.is_alive()) {
            Some(format!(
                "exited: {}",
                process.map(|p| log_tail(&p.log)).unwrap_or_default()
            ))
        } else if Instant::now() > deadline {
            Some(format!("did not print `{marker}` within {timeout:?}"))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(DeployError::start(
                &c.name,
                why,
                process.map(|p| p.log.as_path()),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The cgroup a companion's CPU can be read from: its own, or its instance's.
pub fn cgroup_of(state: &State, c: &CompanionState) -> Option<Cgroup> {
    c.own_cgroup.clone().or_else(|| {
        let name = c.instance.as_ref()?;
        state
            .instances
            .iter()
            .find(|i| &i.name == name)?
            .cgroup
            .clone()
    })
}

fn remove_recorded(
    dir: &StateDir,
    state: &mut State,
    c: &CompanionState,
) -> Result<(), DeployError> {
    if let Some(p) = &c.process {
        stop_processes(std::slice::from_ref(p));
    }
    // Only a group of its own is emptied: an antagonist shares its instance's.
    if let Some(g) = &c.own_cgroup {
        kill_group(g);
        let _ = g.remove();
    }
    state.companions.retain(|x| x.name != c.name);
    save(dir, state)
}

fn load(dir: &StateDir, deployment: &str) -> Result<State, DeployError> {
    dir.load_local(deployment)?
        .ok_or_else(|| DeployError::NoDeployment {
            name: deployment.into(),
        })
}

fn save(dir: &StateDir, state: &State) -> Result<(), DeployError> {
    dir.save(state)
        .map_err(DeployError::io("writing the state"))
}

/// A companion's log file, for messages.
pub fn log_of(c: &CompanionState) -> Option<PathBuf> {
    c.process.as_ref().map(|p| p.log.clone())
}
