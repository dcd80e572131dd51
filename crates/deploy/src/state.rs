//! A local deployment's state: `.fulcrum/<name>/state.json`, written atomically after every step
//! so that whatever `up` managed to start — even if it crashed halfway — `down` can find and
//! remove: processes by PID (checked against their start time, so a recycled PID is never
//! signalled), cgroups by path.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;
use crate::error::DeployError;

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub name: String,
    pub provider: String,
    /// The topology the deployment was made from, verbatim.
    pub topology: String,
    pub emulation: Option<EmulationState>,
    /// The deployment's cgroup directory in each hierarchy (removed by `down`).
    pub cgroup_roots: Vec<PathBuf>,
    pub instances: Vec<InstanceState>,
    pub balancer: Option<ProcessState>,
    /// Where the balancer listens and serves its admin API, once it has said.
    #[serde(default)]
    pub balancer_listen: Option<String>,
    #[serde(default)]
    pub balancer_admin: Option<String>,
    /// The credit keeper (burstable-credit emulation), when enabled.
    pub credit_keeper: Option<ProcessState>,
    /// Processes run beside the deployment for a while (peer balancers, replicas,
    /// antagonists), recorded before they start so `down` removes them too.
    #[serde(default)]
    pub companions: Vec<CompanionState>,
}

/// One companion process (see [`crate::companion`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompanionState {
    /// Unique within the deployment, e.g. `nginx`, `replica-2`, `antagonist-c2-0`.
    pub name: String,
    pub role: Role,
    pub process: Option<ProcessState>,
    /// The companion's own cgroup (removed with it), if it has one.
    pub own_cgroup: Option<Cgroup>,
    /// The instance whose cgroup it runs in, if any (an antagonist).
    pub instance: Option<String>,
    /// Its standard output, where it may announce addresses.
    pub stdout: PathBuf,
}

/// What a companion is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Another balancer compared with fulcrum's (nginx, HAProxy).
    Peer,
    /// One more `fulcrum balance` in front of the same workers.
    Replica,
    /// A co-tenant burning CPU inside a worker's cgroup.
    Antagonist,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EmulationState {
    /// Real cores per emulated vCPU.
    pub scale: f64,
    pub period_us: u64,
    /// `v1` or `v2`.
    pub cgroup: String,
    pub credits: bool,
    pub memory_limits: bool,
    pub machine_cores: usize,
    pub reserve_cores: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceState {
    /// `c<cluster>-<index>`, unique in the deployment.
    pub name: String,
    pub cluster: u32,
    pub instance_type: String,
    pub instance_id: String,
    pub vcpus: u32,
    /// Cores it may use here (its quota); the machine's cores without emulation.
    pub cores: f64,
    pub memory_bytes: Option<u64>,
    pub work_us: u64,
    pub cgroup: Option<Cgroup>,
    /// Set once the process is started.
    pub process: Option<ProcessState>,
    /// Set once the worker announced where it listens.
    pub address: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessState {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: tells a live process from a recycled PID.
    pub start_time: u64,
    pub log: PathBuf,
}

impl ProcessState {
    pub fn of(pid: u32, log: PathBuf) -> ProcessState {
        ProcessState {
            pid,
            start_time: start_time(pid).unwrap_or(0),
            log,
        }
    }

    /// Whether the recorded process is still the one running under this PID.
    pub fn is_alive(&self) -> bool {
        start_time(self.pid).is_some_and(|t| t == self.start_time)
    }
}

/// The start time of `pid` in clock ticks since boot, if it exists (and is not a zombie).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: split after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // `rest` starts at field 3 (state); field 22 is index 19.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Where a deployment's files live.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    /// The deployment's directory, made absolute: files named in generated configs must not
    /// depend on the directory a process happens to run in.
    pub fn new(state_dir: &Path, name: &str) -> StateDir {
        let dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_owned());
        StateDir {
            root: dir.join(name),
        }
    }

    pub fn file(&self) -> PathBuf {
        self.root.join("state.json")
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn targets(&self) -> PathBuf {
        self.root.join("targets")
    }

    pub fn exists(&self) -> bool {
        self.file().exists()
    }

    pub fn load(&self) -> io::Result<Option<State>> {
        match fs::read_to_string(self.file()) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", self.file().display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the state atomically (a reader sees the old or the new file, never half).
    pub fn save(&self, state: &State) -> io::Result<()> {
        fs::create_dir_all(&self.root)?;
        let tmp = self.root.join(".state.json.tmp");
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(state).expect("state serializes"),
        )?;
        fs::rename(tmp, self.file())
    }

    /// The state of local deployment `name`, if there is one; another provider's is refused.
    pub(crate) fn load_local(&self, name: &str) -> Result<Option<State>, DeployError> {
        let state = self.load().map_err(DeployError::io("reading the state"))?;
        match state {
            Some(s) if s.provider != "local" => Err(DeployError::OtherProvider {
                name: name.into(),
                provider: s.provider,
            }),
            other => Ok(other),
        }
    }

    pub fn remove(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_tells_this_process_apart() {
        let me = std::process::id();
        let t = start_time(me).unwrap();
        assert!(t > 0);
        let p = ProcessState::of(me, PathBuf::from("/dev/null"));
        assert!(p.is_alive());
        let recycled = ProcessState {
            start_time: t + 1,
            ..p
        };
        assert!(!recycled.is_alive());
        assert!(start_time(u32::MAX - 7).is_none());
    }
}
