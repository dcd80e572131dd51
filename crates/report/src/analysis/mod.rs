//! The report's figures and verdicts, computed once from results.json: clusters and their
//! CPU-bound ceilings, each run's CPU and requests per worker, the headline runs' latency rows,
//! the capacity ramps with their ranking and the seed's expectation, the warnings, and the
//! shoot-out. Sections, charts and the conclusion read an `Analysis`; none of them recomputes a
//! figure or decides a verdict, so a number in a table and the sentence that judges it cannot
//! drift apart.

mod capacity;
mod cpu;
mod runs;
mod shootout;

use fulcrum_loadgen::results::{ClusterInfo, Results, Run, RunKind};

pub use capacity::{CapacityAnalysis, CapacityOrder, Expectation, Ramp, Ranked, Step};
pub use runs::{LatencyRow, RunFigures};
pub use shootout::{ContenderFigures, ScenarioAnalysis, Shootout, Verdict, KEPT_UP_SHARE};

/// An open-model run that achieved less than this share of its target fell behind its
/// schedule.
const ON_SCHEDULE_SHARE: f64 = 0.95;

/// Everything the report says, figured once.
#[derive(Debug)]
pub struct Analysis<'a> {
    pub results: &'a Results,
    /// The deployment's clusters, in its order.
    pub clusters: Vec<ClusterFigures<'a>>,
    /// Every run's figures, in the file's order.
    pub runs: Vec<RunFigures<'a>>,
    /// Indexes into `runs`: the seed's benchmark when the file has it, else every plain
    /// `bench` run. The latency, CPU and per-instance tables are about these.
    pub headline: Vec<usize>,
    /// The headline runs' latency, per cluster.
    pub latency_rows: Vec<LatencyRow<'a>>,
    /// Several cluster figures, each from a single run: they are described side by side, never
    /// ranked (no spread to tell a difference from noise).
    pub single_runs_compared: bool,
    /// Worker samples per second (the median worker over all runs).
    pub cpu_sample_rate_hz: Option<f64>,
    /// Clusters with CPU samples anywhere in the file, in order.
    pub cpu_clusters: Vec<&'a str>,
    /// `None` when the file has no capacity ramp.
    pub capacity: Option<CapacityAnalysis<'a>>,
    pub warnings: Warnings<'a>,
    /// `None` when the file has no experiment.
    pub shootout: Option<Shootout<'a>>,
}

/// A cluster of the deployment.
#[derive(Debug)]
pub struct ClusterFigures<'a> {
    pub info: &'a ClusterInfo,
    /// The key runs and ramps name it by.
    pub key: String,
    /// The cores its instances may use, together.
    pub cores: f64,
    /// The rate it could serve if HTTP, the balancer and scheduling cost nothing: the cores it
    /// may use divided by the CPU each request burns.
    pub ceiling_rps: Option<f64>,
}

/// What the top of the report and the conclusion warn about.
#[derive(Debug)]
pub struct Warnings<'a> {
    /// Runs in which the load generator ran out of CPU.
    pub saturated: Vec<&'a Run>,
    /// The generator's highest CPU among them.
    pub saturated_peak: f64,
    /// Runs outside the capacity ramp (where failing steps are expected) with failed requests.
    pub failing: Vec<&'a Run>,
    /// Failed requests over every run.
    pub errors: u64,
    /// Open-model runs outside the ramp that fell short of their schedule, with their target
    /// rate.
    pub behind_schedule: Vec<(&'a Run, f64)>,
}

impl<'a> Analysis<'a> {
    pub fn new(r: &'a Results) -> Analysis<'a> {
        let d = r.deployment.as_ref();
        let runs: Vec<RunFigures<'a>> = r.runs.iter().map(|x| RunFigures::new(d, x)).collect();
        let headline = headline(r);
        let latency_rows: Vec<LatencyRow<'a>> = headline
            .iter()
            .flat_map(|&i| runs::latency_rows(&r.runs[i]))
            .collect();
        let clusters = d.map_or_else(Vec::new, |d| {
            d.clusters.iter().map(ClusterFigures::new).collect()
        });
        let capacity = r
            .experiment
            .as_ref()
            .and_then(|e| CapacityAnalysis::new(&e.capacity, &clusters, &runs));
        Analysis {
            results: r,
            single_runs_compared: latency_rows.iter().filter(|x| x.cluster.is_some()).count() >= 2,
            cpu_sample_rate_hz: cpu::sample_rate_hz(&runs),
            cpu_clusters: cpu_clusters(&runs),
            warnings: Warnings::new(r),
            shootout: Shootout::new(r),
            clusters,
            runs,
            headline,
            latency_rows,
            capacity,
        }
    }

    pub fn headline(&self) -> impl Iterator<Item = &RunFigures<'a>> {
        self.headline.iter().map(|&i| &self.runs[i])
    }

    /// `cluster 1 (5 × t2.micro)`, or `cluster KEY` when the deployment does not know it.
    pub fn cluster_name(&self, key: &str) -> String {
        match self.clusters.iter().find(|c| c.key == key) {
            Some(c) => format!(
                "cluster {} ({} × {})",
                c.info.id, c.info.count, c.info.instance_type
            ),
            None => format!("cluster {key}"),
        }
    }
}

impl<'a> ClusterFigures<'a> {
    fn new(c: &'a ClusterInfo) -> ClusterFigures<'a> {
        let cores = c.count as f64 * c.cores_per_instance;
        ClusterFigures {
            info: c,
            key: c.id.to_string(),
            cores,
            ceiling_rps: (c.work_us > 0 && c.cores_per_instance > 0.0)
                .then(|| cores * 1e6 / c.work_us as f64),
        }
    }
}

impl<'a> Warnings<'a> {
    fn new(r: &'a Results) -> Warnings<'a> {
        let saturated: Vec<&Run> = r.runs.iter().filter(|x| x.generator.saturated).collect();
        let outside_ramp = || r.runs.iter().filter(|x| x.kind != RunKind::Capacity);
        Warnings {
            saturated_peak: saturated
                .iter()
                .map(|x| x.generator.cpu_utilization)
                .fold(0.0, f64::max),
            saturated,
            failing: outside_ramp().filter(|x| x.errors.total() > 0).collect(),
            errors: r.runs.iter().map(|x| x.errors.total()).sum(),
            behind_schedule: outside_ramp()
                .filter_map(|x| Some((x, x.target_rate?)))
                .filter(|&(x, t)| behind_schedule(x, t))
                .collect(),
        }
    }
}

fn behind_schedule(run: &Run, target: f64) -> bool {
    target > 0.0 && (run.achieved_rate < ON_SCHEDULE_SHARE * target || run.unsent_requests > 0)
}

/// The seed's benchmark when the file has it, else every plain `bench` run.
fn headline(r: &Results) -> Vec<usize> {
    let of = |kind| -> Vec<usize> {
        (0..r.runs.len())
            .filter(|&i| r.runs[i].kind == kind)
            .collect()
    };
    let seed = of(RunKind::Seed);
    if seed.is_empty() {
        of(RunKind::Bench)
    } else {
        seed
    }
}

fn cpu_clusters<'a>(runs: &[RunFigures<'a>]) -> Vec<&'a str> {
    let mut keys: Vec<&'a str> = runs
        .iter()
        .flat_map(|f| f.workers.iter().map(|w| w.cluster))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn run_by_name<'a>(r: &'a Results, name: &str) -> Option<&'a Run> {
    r.runs.iter().find(|x| x.name == name)
}
