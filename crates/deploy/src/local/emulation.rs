//! The plan of a local deployment: how many real cores each emulated instance gets, and the CFS
//! period its quota is enforced over (see the provider's opening note for why 10 ms).

use serde::Serialize;

use crate::error::DeployError;
use crate::state::EmulationState;
use crate::topology::{Cluster, Topology};

const MIN_QUOTA_US: f64 = 1000.0;
const DEFAULT_PERIOD_US: f64 = 10_000.0;
const MIN_MEMORY: u64 = 64 << 20;

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

    /// The plan of cluster `id`; every cluster of the topology has one.
    pub(crate) fn cluster(&self, id: u32) -> &PlanCluster {
        self.clusters
            .iter()
            .find(|p| p.id == id)
            .expect("plan covers every cluster")
    }
}

/// The cores a local deployment may give its workers.
fn machine_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Works out the emulation for a topology on this machine (or none).
pub fn plan(t: &Topology, cgroup: Option<&str>) -> Result<Plan, DeployError> {
    let cores = machine_cores();
    let emulation = match cgroup {
        None => None,
        Some(kind) => Some(emulation(t, kind, cores)?),
    };
    let clusters = t
        .clusters
        .iter()
        .map(|c| plan_cluster(c, emulation.as_ref(), cores))
        .collect();
    Ok(Plan {
        name: t.name.clone(),
        emulation,
        clusters,
    })
}

/// The scale that fits every worker's quota into the cores left after the reserves, and the
/// shortest CFS period that still gives the smallest quota the kernel's minimum.
fn emulation(t: &Topology, kind: &str, cores: usize) -> Result<EmulationState, DeployError> {
    let reserve = t.local.balancer_reserve_cores + t.local.loadgen_reserve_cores;
    let vcpus = t.total_vcpus();
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
    Ok(EmulationState {
        scale,
        period_us,
        cgroup: kind.to_owned(),
        credits: t.local.credits,
        memory_limits: t.local.memory_limits,
        machine_cores: cores,
        reserve_cores: reserve,
    })
}

/// What each instance of a cluster gets: its scaled cores and memory, or the whole machine
/// without emulation.
fn plan_cluster(c: &Cluster, emulation: Option<&EmulationState>, cores: usize) -> PlanCluster {
    let vcpus = c.instance_type.vcpus;
    let (cores_each, memory) = match emulation {
        Some(e) => (
            vcpus as f64 * e.scale,
            e.memory_limits.then(|| {
                ((c.instance_type.memory_mib << 20) as f64 * e.scale).max(MIN_MEMORY as f64) as u64
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
}
