//! One `up` of a local deployment, phase by phase: retire the instances no longer wanted, record
//! the wanted ones with their cgroups, start what is not running, learn addresses and wait for
//! health, write the target files, start the balancer, start the credit keeper. Each phase
//! writes the state before the step it takes.

use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::emulation::{plan, Plan, PlanCluster};
use crate::cgroup::{deployment_cgroup, Cgroup, CgroupHost, Version};
use crate::error::DeployError;
use crate::process::{reap, spawn_recorded, stop_instance, wait_for_address, wait_healthy};
use crate::state::{InstanceState, ProcessState, State, StateDir, STATE_VERSION};
use crate::topology::{generated_config, Cluster, Topology, WorkerSource};
use fulcrum_balancer::config::file::unplaced;

/// How long a worker or the balancer may take to announce itself and answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What `up` needs besides the topology.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The `fulcrum` binary to run workers and the balancer with.
    pub binary: PathBuf,
    pub state_dir: PathBuf,
    /// Run unthrottled when cgroups cannot be made, instead of failing.
    pub no_emulation: bool,
}

/// A stable id shaped like an EC2 one, from the deployment and the instance's name.
pub fn instance_id(deployment: &str, instance: &str) -> String {
    let mut h = std::hash::DefaultHasher::new();
    (deployment, instance).hash(&mut h);
    format!("i-0{:016x}", h.finish())
}

/// What one `up` did.
pub(super) struct Deployed {
    pub state: State,
    pub plan: Plan,
    /// False when the deployment was already up as asked.
    pub changed: bool,
    pub started: Vec<String>,
    pub stopped: Vec<String>,
}

/// Everything the phases of one `up` share.
pub(super) struct LocalDeployer<'a> {
    topology: &'a Topology,
    options: &'a UpOptions,
    plan: Plan,
    /// `None` without emulation (`--no-emulation` where cgroups cannot be made).
    host: Option<CgroupHost>,
    dir: StateDir,
    state: State,
    /// The emulation differs from the recorded one: every instance's limits are set anew.
    emulation_changed: bool,
    interrupted: &'a AtomicBool,
    say: &'a mut dyn FnMut(&str),
    started: Vec<String>,
    stopped: Vec<String>,
}

impl<'a> LocalDeployer<'a> {
    /// Reads the previous state, makes the deployment's cgroup, plans and says the plan, and
    /// records the emulation before anything starts.
    pub fn prepare(
        topology: &'a Topology,
        options: &'a UpOptions,
        interrupted: &'a AtomicBool,
        say: &'a mut dyn FnMut(&str),
    ) -> Result<LocalDeployer<'a>, DeployError> {
        let dir = StateDir::new(&options.state_dir, &topology.name);
        let previous = dir.load_local(&topology.name)?;
        let host = cgroup_host(&topology.name, options.no_emulation, say)?;
        let kind = host.as_ref().map(|h| match h.version() {
            Version::V1 => "v1",
            Version::V2 => "v2",
        });
        let plan = plan(topology, kind)?;
        for line in plan.describe() {
            say(&line);
        }
        let mut state = previous.unwrap_or_else(|| empty_state(&topology.name));
        let emulation_changed = state.emulation != plan.emulation;
        state.emulation = plan.emulation.clone();
        if let Some(h) = &host {
            state.cgroup_roots = h.roots(&deployment_cgroup(&topology.name, None));
        }
        for d in [dir.logs(), dir.targets()] {
            fs::create_dir_all(&d).map_err(DeployError::io(d.display()))?;
        }
        let deployer = LocalDeployer {
            topology,
            options,
            plan,
            host,
            dir,
            state,
            emulation_changed,
            interrupted,
            say,
            started: Vec::new(),
            stopped: Vec::new(),
        };
        deployer.save()?;
        Ok(deployer)
    }

    /// Runs the phases in order; stops at the first failure or interrupt.
    pub fn deploy(&mut self) -> Result<(), DeployError> {
        let wanted = self.wanted();
        self.retire_unwanted(&wanted)?;
        self.record_wanted(&wanted)?;
        let pending = self.start_workers()?;
        let deadline = Instant::now() + START_TIMEOUT;
        self.await_workers(&pending, deadline)?;
        self.write_targets()?;
        self.start_balancer(deadline)?;
        self.start_credit_keeper()?;
        reap();
        Ok(())
    }

    pub fn say(&mut self, line: &str) {
        (self.say)(line)
    }

    pub fn finish(self) -> Deployed {
        let changed =
            !self.started.is_empty() || !self.stopped.is_empty() || self.emulation_changed;
        Deployed {
            state: self.state,
            plan: self.plan,
            changed,
            started: self.started,
            stopped: self.stopped,
        }
    }

    /// Every instance the topology asks for, by name.
    fn wanted(&self) -> BTreeMap<String, &'a Cluster> {
        self.topology
            .instances()
            .map(|(c, i)| (format!("c{}-{i}", c.id), c))
            .collect()
    }

    /// Instances no longer wanted (or of another type now) go first.
    fn retire_unwanted(&mut self, wanted: &BTreeMap<String, &Cluster>) -> Result<(), DeployError> {
        let (keep, retire): (Vec<_>, Vec<_>) = std::mem::take(&mut self.state.instances)
            .into_iter()
            .partition(|inst| {
                wanted.get(&inst.name).is_some_and(|c| {
                    c.instance_type.name == inst.instance_type
                        && c.work_us == inst.work_us
                        && c.id == inst.cluster
                })
            });
        for inst in retire {
            self.say(&format!(
                "stopping {} ({}): no longer in the topology",
                inst.name, inst.instance_type
            ));
            stop_instance(&inst);
            self.stopped.push(inst.name);
        }
        self.state.instances = keep;
        self.save()
    }

    /// Records every wanted instance (with its cgroup) before starting anything.
    fn record_wanted(&mut self, wanted: &BTreeMap<String, &Cluster>) -> Result<(), DeployError> {
        for (name, c) in wanted {
            self.check()?;
            let planned = self.plan.cluster(c.id).clone();
            let i = self.record_instance(name, c, &planned);
            let inst = &mut self.state.instances[i];
            inst.cores = planned.cores;
            inst.memory_bytes = planned.memory_bytes;
            self.confine(i, &planned)?;
            self.save()?;
        }
        Ok(())
    }

    /// The instance's index in the state, added there if it is new.
    fn record_instance(&mut self, name: &str, c: &Cluster, planned: &PlanCluster) -> usize {
        if let Some(i) = self.state.instances.iter().position(|i| i.name == name) {
            return i;
        }
        self.state.instances.push(InstanceState {
            name: name.to_owned(),
            cluster: c.id,
            instance_type: c.instance_type.name.into(),
            instance_id: instance_id(&self.topology.name, name),
            vcpus: c.instance_type.vcpus,
            cores: planned.cores,
            memory_bytes: planned.memory_bytes,
            work_us: c.work_us,
            cgroup: None,
            process: None,
            address: None,
        });
        self.state.instances.len() - 1
    }

    /// Gives instance `i` its cgroup and limits, when emulating and not done already for this
    /// emulation. The group is recorded before its limits are set.
    fn confine(&mut self, i: usize, planned: &PlanCluster) -> Result<(), DeployError> {
        let (Some(h), Some(e)) = (&self.host, &self.plan.emulation) else {
            return Ok(());
        };
        let inst = &mut self.state.instances[i];
        if inst.cgroup.is_some() && !self.emulation_changed {
            return Ok(());
        }
        let group = h.create(&deployment_cgroup(&self.topology.name, Some(&inst.name)))?;
        inst.cgroup = Some(group.clone());
        let period = Duration::from_micros(e.period_us);
        let quota = Duration::from_micros((planned.cores * e.period_us as f64).round() as u64);
        self.save()?;
        group.set_cpu_limit(quota, period)?;
        if let Some(m) = planned.memory_bytes {
            group.set_memory_limit(m)?;
        }
        Ok(())
    }

    /// Starts what is not running (new instances, or ones that died); returns their indices.
    fn start_workers(&mut self) -> Result<Vec<usize>, DeployError> {
        let mut pending = Vec::new();
        for i in 0..self.state.instances.len() {
            self.check()?;
            let inst = &self.state.instances[i];
            if inst.process.as_ref().is_some_and(|p| p.is_alive()) && inst.address.is_some() {
                continue;
            }
            let name = inst.name.clone();
            let group = inst.cgroup.clone();
            let cmd = self.worker_command(inst);
            self.spawn(&name, &name, cmd, group.as_ref(), |state, process| {
                state.instances[i].process = Some(process);
                state.instances[i].address = None;
            })?;
            pending.push(i);
            self.started.push(name);
        }
        self.save()?;
        Ok(pending)
    }

    fn worker_command(&self, inst: &InstanceState) -> Command {
        let mut cmd = Command::new(&self.options.binary);
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
        cmd
    }

    /// Learns each new worker's address, then waits until every worker answers `/health`.
    fn await_workers(&mut self, pending: &[usize], deadline: Instant) -> Result<(), DeployError> {
        for &i in pending {
            let inst = &self.state.instances[i];
            let out = self.dir.logs().join(format!("{}.out", inst.name));
            let process = inst.process.clone().expect("started above");
            let addr = wait_for_address(&out, &process, deadline, self.interrupted)
                .map_err(|why| self.wait_failed(&inst.name, why, Some(&process.log)))?;
            self.state.instances[i].address = Some(addr.to_string());
            self.save()?;
        }
        for inst in &self.state.instances {
            let addr: SocketAddr = inst
                .address
                .as_deref()
                .expect("known by now")
                .parse()
                .expect("valid");
            let log = inst.process.as_ref().map(|p| p.log.as_path());
            wait_healthy(addr, deadline, self.interrupted)
                .map_err(|why| self.wait_failed(&inst.name, why, log))?;
        }
        if !pending.is_empty() {
            self.say(&format!("{} worker(s) started and healthy", pending.len()));
        }
        Ok(())
    }

    /// Who serves what: written atomically, watched by the balancer.
    fn write_targets(&self) -> Result<(), DeployError> {
        let workers: Vec<(u32, String)> = self
            .state
            .instances
            .iter()
            .map(|i| (i.cluster, i.address.clone().expect("known")))
            .collect();
        for (group, members) in self.topology.target_groups(&workers) {
            write_targets(&self.dir.targets().join(format!("{group}.json")), &members)?;
        }
        Ok(())
    }

    /// The balancer: started once, reused while alive (it picks up worker changes itself).
    fn start_balancer(&mut self, deadline: Instant) -> Result<(), DeployError> {
        self.check()?;
        if self.state.balancer.as_ref().is_some_and(|b| b.is_alive()) {
            return Ok(());
        }
        let t = self.topology;
        let config = self.dir.root.join("balancer.toml");
        let mut file = t.balancer_file(
            &t.balancer.listen,
            &t.balancer.admin,
            WorkerSource::Files(&self.dir.targets()),
        );
        // Beside the other logs, not in the balancer's stdout (where its addresses are read).
        let access_log = self.dir.logs().join("access.log");
        file.access_log.path = Some(unplaced(access_log.display().to_string()));
        let text = generated_config(&file);
        fs::write(&config, text).map_err(DeployError::io(config.display()))?;
        let mut cmd = Command::new(&self.options.binary);
        cmd.args(["balance", "--config"]).arg(&config);
        let group = match &self.host {
            Some(h) => Some(h.create(&deployment_cgroup(&t.name, Some("balancer")))?),
            None => None,
        };
        let process = self.spawn("the balancer", "balancer", cmd, group.as_ref(), |s, p| {
            s.balancer = Some(p)
        })?;
        let out = self.dir.logs().join("balancer.out");
        let (listen, admin) = wait_for_balancer(&out, &process, deadline, self.interrupted)
            .map_err(|why| self.wait_failed("the balancer", why, Some(&process.log)))?;
        // As before the phases were split out: an interrupt here reads as a failed start.
        wait_healthy(admin, deadline, self.interrupted)
            .map_err(|why| DeployError::start("the balancer", why, Some(&process.log)))?;
        self.state.balancer_listen = Some(listen.to_string());
        self.state.balancer_admin = Some(admin.to_string());
        self.save()?;
        self.started.push("balancer".into());
        self.say(&format!("balancer started on http://{listen}"));
        Ok(())
    }

    /// The credit keeper, when burstable credits are emulated.
    fn start_credit_keeper(&mut self) -> Result<(), DeployError> {
        let wanted = self.plan.emulation.as_ref().is_some_and(|e| e.credits);
        if !wanted
            || self
                .state
                .credit_keeper
                .as_ref()
                .is_some_and(|k| k.is_alive())
        {
            return Ok(());
        }
        let t = self.topology;
        let mut cmd = Command::new(&self.options.binary);
        cmd.arg("credit-keeper")
            .arg("--state-dir")
            .arg(
                self.dir
                    .root
                    .parent()
                    .expect("a deployment directory has a parent"),
            )
            .args(["--name", &t.name]);
        if let Some(i) = t.local.initial_credits {
            cmd.args(["--initial-credits", &i.to_string()]);
        }
        self.spawn("the credit keeper", "credit-keeper", cmd, None, |s, p| {
            s.credit_keeper = Some(p)
        })?;
        self.started.push("credit keeper".into());
        self.say("burstable CPU credits emulated: quotas follow each instance's credit balance");
        Ok(())
    }

    /// Starts one process of the deployment, detached, inside `group` if given, with its output
    /// in `logs/<file>.out` and `.log`; `record` puts it in the state, which is written at once
    /// so `down` finds it whatever happens next.
    fn spawn(
        &mut self,
        what: &str,
        file: &str,
        cmd: Command,
        group: Option<&Cgroup>,
        record: impl FnOnce(&mut State, ProcessState),
    ) -> Result<ProcessState, DeployError> {
        let out = self.dir.logs().join(format!("{file}.out"));
        let log = self.dir.logs().join(format!("{file}.log"));
        let process = spawn_recorded(cmd, group, &out, &log)
            .map_err(|e| DeployError::start(what, e.to_string(), Some(&log)))?;
        record(&mut self.state, process.clone());
        self.save()?;
        Ok(process)
    }

    /// A wait that gave up: because of the interrupt, or because `what` did not come up.
    fn wait_failed(&self, what: &str, why: String, log: Option<&Path>) -> DeployError {
        if self.interrupted.load(Ordering::Relaxed) {
            return DeployError::Interrupted;
        }
        DeployError::start(what, why, log)
    }

    fn check(&self) -> Result<(), DeployError> {
        if self.interrupted.load(Ordering::Relaxed) {
            Err(DeployError::Interrupted)
        } else {
            Ok(())
        }
    }

    fn save(&self) -> Result<(), DeployError> {
        self.dir
            .save(&self.state)
            .map_err(DeployError::io("writing the state"))
    }
}

/// The cgroup host, once creating the deployment's own group has proved we may; `None` with
/// `--no-emulation` where we may not.
fn cgroup_host(
    name: &str,
    no_emulation: bool,
    say: &mut dyn FnMut(&str),
) -> Result<Option<CgroupHost>, DeployError> {
    match CgroupHost::detect().and_then(|h| h.create(&deployment_cgroup(name, None)).map(|_| h)) {
        Ok(h) => Ok(Some(h)),
        Err(e) if no_emulation => {
            say(&format!(
                "cgroups unavailable ({e}); --no-emulation: workers run unthrottled"
            ));
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn empty_state(name: &str) -> State {
    State {
        version: STATE_VERSION,
        name: name.to_owned(),
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
    }
}

fn write_targets(path: &Path, members: &[String]) -> Result<(), DeployError> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::json!({ "workers": members });
    fs::write(&tmp, serde_json::to_vec_pretty(&body).expect("JSON"))
        .map_err(DeployError::io(tmp.display()))?;
    fs::rename(&tmp, path).map_err(DeployError::io(path.display()))
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
