//! CPU figures: each worker's and each cluster's CPU over a run's measured part, as a share of
//! what the worker may use, and how often workers were sampled.

use fulcrum_loadgen::results::Run;

use super::RunFigures;

/// CPU over a run's measured part, as a fraction of what the worker may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuStats {
    pub mean: f64,
    pub peak: f64,
    pub samples: usize,
}

/// A worker that reported CPU in a run.
#[derive(Debug, Clone)]
pub struct WorkerCpu<'a> {
    pub instance_id: &'a str,
    pub cluster: &'a str,
    /// The cores it may use, from the deployment.
    pub cores: Option<f64>,
    /// `None` when all its samples fall outside the measured part (warm-up only).
    pub stats: Option<CpuStats>,
}

/// A cluster's CPU in a run: the mean over its workers of each worker's mean.
#[derive(Debug, Clone)]
pub struct ClusterCpu<'a> {
    pub cluster: &'a str,
    pub stats: CpuStats,
}

/// Workers that reported CPU in a run, by cluster then instance id.
pub fn workers<'a>(run: &'a Run, cores: impl Fn(&str) -> Option<f64>) -> Vec<WorkerCpu<'a>> {
    let mut seen: Vec<WorkerCpu<'a>> = Vec::new();
    for s in &run.cpu {
        if !seen.iter().any(|w| w.instance_id == s.instance_id) {
            seen.push(WorkerCpu {
                instance_id: &s.instance_id,
                cluster: &s.cluster,
                cores: cores(&s.instance_id),
                stats: worker_stats(run, &s.instance_id),
            });
        }
    }
    seen.sort_by(|a, b| {
        a.cluster
            .cmp(b.cluster)
            .then(a.instance_id.cmp(b.instance_id))
    });
    seen
}

/// One worker's samples inside the measured part (the last one may land just after its end).
fn worker_stats(run: &Run, instance: &str) -> Option<CpuStats> {
    let vals: Vec<f64> = run
        .cpu
        .iter()
        .filter(|s| s.instance_id == instance && s.t >= 0.0 && s.t <= run.duration_s + 0.5)
        .map(|s| s.cpu_utilization)
        .filter(|v| v.is_finite())
        .collect();
    if vals.is_empty() {
        return None;
    }
    Some(CpuStats {
        mean: vals.iter().sum::<f64>() / vals.len() as f64,
        peak: vals.iter().copied().fold(0.0, f64::max),
        samples: vals.len(),
    })
}

/// Each cluster with measured workers, in the workers' order.
pub fn clusters<'a>(workers: &[WorkerCpu<'a>]) -> Vec<ClusterCpu<'a>> {
    let mut keys: Vec<&'a str> = workers.iter().map(|w| w.cluster).collect();
    keys.dedup();
    keys.into_iter()
        .filter_map(|cluster| {
            let per: Vec<CpuStats> = workers
                .iter()
                .filter(|w| w.cluster == cluster)
                .filter_map(|w| w.stats)
                .collect();
            (!per.is_empty()).then(|| ClusterCpu {
                cluster,
                stats: CpuStats {
                    mean: per.iter().map(|s| s.mean).sum::<f64>() / per.len() as f64,
                    peak: per.iter().map(|s| s.peak).fold(0.0, f64::max),
                    samples: per.iter().map(|s| s.samples).sum(),
                },
            })
        })
        .collect()
}

/// Samples per worker per second over all runs (the median worker), to show the sampling
/// is fine enough for seconds-long runs.
pub fn sample_rate_hz(runs: &[RunFigures<'_>]) -> Option<f64> {
    let mut rates: Vec<f64> = runs
        .iter()
        .filter(|f| f.run.duration_s > 0.0)
        .flat_map(|f| {
            f.workers
                .iter()
                .filter_map(|w| w.stats)
                .map(|s| s.samples as f64 / f.run.duration_s)
        })
        .collect();
    if rates.is_empty() {
        return None;
    }
    rates.sort_by(f64::total_cmp);
    Some(rates[rates.len() / 2])
}
