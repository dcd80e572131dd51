//! Each run's own figures (its cluster, CPU per worker and cluster, requests per worker), and
//! the latency rows the headline runs make.

use fulcrum_loadgen::results::{ClusterInfo, Deployment, Group, Hist, InstanceGroup, Run};

use super::cpu::{self, ClusterCpu, CpuStats, WorkerCpu};

/// One run's figures.
#[derive(Debug)]
pub struct RunFigures<'a> {
    pub run: &'a Run,
    /// The cluster whose route the run targeted, when the route is one cluster's own.
    pub cluster: Option<&'a ClusterInfo>,
    /// Workers that reported CPU, by cluster then instance id.
    pub workers: Vec<WorkerCpu<'a>>,
    /// Each cluster's CPU, from its workers measured in the run.
    pub cluster_cpu: Vec<ClusterCpu<'a>>,
    /// Each worker that answered, in instance id order.
    pub requests: Vec<WorkerRequests<'a>>,
    /// The seed's "average time per request": total time / requests, in ms. It is the inverse
    /// of throughput, which is why the report shows it only beside real latency.
    pub seed_average_ms: Option<f64>,
    /// How many times the seed's "average" the median request took.
    pub p50_over_seed_average: Option<f64>,
}

/// A worker's part of a run's responses.
#[derive(Debug)]
pub struct WorkerRequests<'a> {
    pub instance_id: &'a str,
    pub group: &'a InstanceGroup,
    /// Of all the run's responses.
    pub share: f64,
    /// The responses a split in proportion to cores would have given it (an even split when
    /// any worker's cores are unknown).
    pub by_capacity: f64,
}

impl<'a> RunFigures<'a> {
    pub fn new(d: Option<&'a Deployment>, run: &'a Run) -> RunFigures<'a> {
        let cores = |id: &str| instance_cores(d, id);
        let workers = cpu::workers(run, cores);
        let seed_average_ms =
            (run.responses > 0).then(|| run.duration_s * 1000.0 / run.responses as f64);
        RunFigures {
            run,
            cluster: d.and_then(|d| route_cluster(d, &run.url)),
            cluster_cpu: cpu::clusters(&workers),
            workers,
            requests: worker_requests(run, cores),
            seed_average_ms,
            p50_over_seed_average: seed_average_ms.map(|avg| run.latency.p50_ms / avg),
        }
    }

    /// A cluster's CPU in this run, when its workers were measured.
    pub fn cpu_of(&self, cluster: &str) -> Option<CpuStats> {
        self.cluster_cpu
            .iter()
            .find(|c| c.cluster == cluster)
            .map(|c| c.stats)
    }
}

/// The cores a worker may use, from the deployment.
fn instance_cores(d: Option<&Deployment>, id: &str) -> Option<f64> {
    d?.instances
        .iter()
        .find(|i| i.instance_id == id)
        .map(|i| i.cores)
}

/// The path of a URL (`http://host:port/cluster1?x` → `/cluster1`).
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    path.split(['?', '#']).next().unwrap_or("/")
}

fn route_cluster<'a>(d: &'a Deployment, url: &str) -> Option<&'a ClusterInfo> {
    let path = url_path(url);
    d.clusters.iter().find(|c| c.route == path)
}

fn worker_requests<'a>(
    run: &'a Run,
    cores: impl Fn(&str) -> Option<f64>,
) -> Vec<WorkerRequests<'a>> {
    let cores: Vec<Option<f64>> = run.by_instance.keys().map(|id| cores(id)).collect();
    let known = cores.iter().all(Option::is_some);
    let total_cores: f64 = cores.iter().flatten().sum();
    let total: u64 = run.by_instance.values().map(|g| g.responses).sum();
    let n = run.by_instance.len().max(1) as f64;
    run.by_instance
        .iter()
        .zip(cores)
        .map(|((id, group), c)| {
            let split = match (known && total_cores > 0.0, c) {
                (true, Some(c)) => c / total_cores,
                _ => 1.0 / n,
            };
            WorkerRequests {
                instance_id: id,
                group,
                share: group.responses as f64 / total.max(1) as f64,
                by_capacity: split * total as f64,
            }
        })
        .collect()
}

/// A latency histogram the charts and tables describe: one cluster in one headline run, or a
/// whole run when responses were not attributed to clusters.
#[derive(Debug)]
pub struct LatencyRow<'a> {
    pub run: &'a Run,
    /// Cluster key, when attributed.
    pub cluster: Option<&'a str>,
    pub responses: u64,
    pub errors: u64,
    pub latency: &'a Hist,
    /// Responses per second; `None` for a run of no length.
    pub throughput: Option<f64>,
    /// The seed's "average time per request" for these responses (see `RunFigures`).
    pub seed_average_ms: Option<f64>,
    /// The histogram's percentile spectrum (see `spectrum`).
    pub spectrum: Option<Vec<(f64, f64)>>,
}

/// A headline run's rows: one per cluster, or the whole run when it has none.
pub fn latency_rows(run: &Run) -> Vec<LatencyRow<'_>> {
    let mut rows = Vec::new();
    if run.by_cluster.is_empty() {
        let whole = (run.responses, run.errors.total(), &run.latency);
        rows.push(LatencyRow::new(run, None, whole));
    }
    for (k, g) in &run.by_cluster {
        let Group {
            responses,
            errors,
            latency,
        } = g;
        rows.push(LatencyRow::new(
            run,
            Some(k),
            (*responses, *errors, latency),
        ));
    }
    rows
}

impl<'a> LatencyRow<'a> {
    fn new(
        run: &'a Run,
        cluster: Option<&'a str>,
        (responses, errors, latency): (u64, u64, &'a Hist),
    ) -> LatencyRow<'a> {
        LatencyRow {
            run,
            cluster,
            responses,
            errors,
            latency,
            throughput: (run.duration_s > 0.0).then(|| responses as f64 / run.duration_s),
            seed_average_ms: (responses > 0).then(|| run.duration_s * 1000.0 / responses as f64),
            spectrum: spectrum(latency),
        }
    }
}

/// `(nines, ms)` along a latency histogram: x = −log10(1 − q), so 1 is p90, 2 is p99, 3 is
/// p99.9. Stops where the data stops resolving quantiles (one sample per step).
pub fn spectrum(h: &Hist) -> Option<Vec<(f64, f64)>> {
    let hist = h.histogram().ok()?;
    if hist.is_empty() {
        return None;
    }
    let max_nines = (hist.len() as f64).log10().min(5.0);
    let mut pts: Vec<(f64, f64)> = (0..)
        .map(|k| k as f64 * 0.05)
        .take_while(|n| *n < max_nines)
        .map(|n| {
            (
                n,
                hist.value_at_quantile(1.0 - 10f64.powf(-n)) as f64 / 1000.0,
            )
        })
        .collect();
    let q = 1.0 - 10f64.powf(-max_nines);
    pts.push((max_nines, hist.value_at_quantile(q) as f64 / 1000.0));
    Some(pts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_split_by_capacity_follows_cores() {
        let mut r = crate::sample::experiment();
        r.runs.truncate(2);
        // Put both clusters in one run: large workers should get twice a micro's share.
        let mut run = r.runs[0].clone();
        run.by_instance.extend(r.runs[1].by_instance.clone());
        let rows = RunFigures::new(r.deployment.as_ref(), &run).requests;
        let split = |id: &str| {
            rows.iter()
                .find(|x| x.instance_id == id)
                .unwrap()
                .by_capacity
        };
        assert!((split("i-large0") / split("i-micro0") - 2.0).abs() < 1e-9);
        let total: u64 = rows.iter().map(|x| x.group.responses).sum();
        let fair: f64 = rows.iter().map(|x| x.by_capacity).sum();
        assert!((fair - total as f64).abs() < 1e-6);
    }

    #[test]
    fn url_paths() {
        assert_eq!(url_path("http://127.0.0.1:8080/cluster1"), "/cluster1");
        assert_eq!(url_path("http://h/cluster2?x=1"), "/cluster2");
        assert_eq!(url_path("http://h:1"), "/");
    }

    #[test]
    fn spectrum_follows_the_histogram() {
        let mut h = fulcrum_loadgen::results::new_histogram();
        for us in 1..=10_000u64 {
            fulcrum_loadgen::results::record(&mut h, us);
        }
        let s = spectrum(&Hist::from_histogram(&h)).unwrap();
        assert_eq!(s[0].0, 0.0);
        assert!((s.last().unwrap().0 - 4.0).abs() < 1e-9);
        // p90 of 1..=10000 µs is ~9 ms.
        let p90 = s.iter().find(|p| (p.0 - 1.0).abs() < 1e-6).unwrap().1;
        assert!((p90 - 9.0).abs() < 0.05, "{p90}");
        assert!(s.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(spectrum(&Hist::from_histogram(
            &fulcrum_loadgen::results::new_histogram()
        ))
        .is_none());
    }
}
