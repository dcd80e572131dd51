//! Figures derived from results.json: which runs are the headline, what each cluster could do
//! in theory, CPU statistics per worker, ramp steps, percentile spectra, per-round ranges.
//! Everything here is a plain function of the data; wording lives in `conclusion`.

use fulcrum_loadgen::results::{Capacity, ClusterInfo, Errors, Hist, Results, Run, RunKind};

/// Matching rates from a ramp against the rates recorded in `Capacity` (both are f64).
pub fn same_rate(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

pub fn cluster_info<'a>(r: &'a Results, key: &str) -> Option<&'a ClusterInfo> {
    r.deployment
        .as_ref()?
        .clusters
        .iter()
        .find(|c| c.id.to_string() == key)
}

/// `cluster 1 (5 × t2.micro)`, or `cluster KEY` when the deployment is unknown.
pub fn cluster_name(r: &Results, key: &str) -> String {
    match cluster_info(r, key) {
        Some(c) => format!("cluster {} ({} × {})", c.id, c.count, c.instance_type),
        None => format!("cluster {key}"),
    }
}

/// The rate a cluster could serve if HTTP, the balancer and scheduling cost nothing: the cores
/// it may use divided by the CPU each request burns.
pub fn ceiling_rps(c: &ClusterInfo) -> Option<f64> {
    (c.work_us > 0 && c.cores_per_instance > 0.0)
        .then(|| c.count as f64 * c.cores_per_instance * 1e6 / c.work_us as f64)
}

/// The path of a URL (`http://host:port/cluster1?x` → `/cluster1`).
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    path.split(['?', '#']).next().unwrap_or("/")
}

/// The cluster whose route a run targeted, when the route is one cluster's own.
pub fn run_cluster<'a>(r: &'a Results, run: &Run) -> Option<&'a ClusterInfo> {
    let path = url_path(&run.url);
    r.deployment
        .as_ref()?
        .clusters
        .iter()
        .find(|c| c.route == path)
}

/// The runs the latency, CPU and per-instance sections are about: the seed's benchmark when
/// the file has it, else every plain `bench` run.
pub fn headline_runs(r: &Results) -> Vec<&Run> {
    let seed: Vec<&Run> = r.runs.iter().filter(|x| x.kind == RunKind::Seed).collect();
    if !seed.is_empty() {
        return seed;
    }
    r.runs.iter().filter(|x| x.kind == RunKind::Bench).collect()
}

pub fn run_by_name<'a>(r: &'a Results, name: &str) -> Option<&'a Run> {
    r.runs.iter().find(|x| x.name == name)
}

/// `1,000 requests, 100 at a time` or `500 req/s for 10 s (open)`.
pub fn model_text(run: &Run) -> String {
    use fulcrum_loadgen::results::Model;
    match &run.model {
        Model::Closed {
            requests,
            concurrency,
        } => format!(
            "closed: {} requests, {} at a time",
            crate::units::count(*requests),
            concurrency
        ),
        Model::Open { rate, duration_s } => format!(
            "open: {} for {}",
            crate::units::rate_u(*rate),
            crate::units::secs(*duration_s)
        ),
    }
}

/// CPU of one worker over a run's measured part, as a fraction of what it may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuStats {
    pub mean: f64,
    pub peak: f64,
    pub samples: usize,
}

pub fn cpu_stats(run: &Run, instance: &str) -> Option<CpuStats> {
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

/// Workers that reported CPU in a run, in order of first appearance, with their cluster.
pub fn cpu_workers(run: &Run) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = Vec::new();
    for s in &run.cpu {
        if !seen.iter().any(|(id, _)| *id == s.instance_id) {
            seen.push((s.instance_id.clone(), s.cluster.clone()));
        }
    }
    seen.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    seen
}

/// A cluster's CPU in a run: the mean over its workers of each worker's mean.
pub fn cluster_cpu(run: &Run, cluster: &str) -> Option<CpuStats> {
    let per: Vec<CpuStats> = cpu_workers(run)
        .into_iter()
        .filter(|(_, c)| c == cluster)
        .filter_map(|(id, _)| cpu_stats(run, &id))
        .collect();
    if per.is_empty() {
        return None;
    }
    Some(CpuStats {
        mean: per.iter().map(|s| s.mean).sum::<f64>() / per.len() as f64,
        peak: per.iter().map(|s| s.peak).fold(0.0, f64::max),
        samples: per.iter().map(|s| s.samples).sum(),
    })
}

/// Samples per worker per second over all runs (the median worker), to show the sampling
/// is fine enough for seconds-long runs.
pub fn cpu_sample_rate_hz(r: &Results) -> Option<f64> {
    let mut rates: Vec<f64> = Vec::new();
    for run in r.runs.iter().filter(|x| x.duration_s > 0.0) {
        for (id, _) in cpu_workers(run) {
            if let Some(s) = cpu_stats(run, &id) {
                rates.push(s.samples as f64 / run.duration_s);
            }
        }
    }
    if rates.is_empty() {
        return None;
    }
    rates.sort_by(f64::total_cmp);
    Some(rates[rates.len() / 2])
}

/// One step of a capacity ramp.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    pub run: &'a Run,
    pub target: f64,
    pub highest_sustained: bool,
    pub first_failed: bool,
}

/// A cluster's ramp steps in order of target rate.
pub fn ramp<'a>(r: &'a Results, cap: &Capacity) -> Vec<Step<'a>> {
    let mut steps: Vec<Step<'a>> = cap
        .runs
        .iter()
        .filter_map(|name| run_by_name(r, name))
        .map(|run| {
            let target = run.target_rate.unwrap_or(run.achieved_rate);
            Step {
                run,
                target,
                highest_sustained: same_rate(target, cap.sustained_rate),
                first_failed: cap.failed_rate.is_some_and(|f| same_rate(target, f)),
            }
        })
        .collect();
    steps.sort_by(|a, b| a.target.total_cmp(&b.target));
    steps
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

/// Ticks for a spectrum's x axis.
pub fn nines_ticks(max_nines: f64) -> Vec<(f64, String)> {
    let labels = ["p0", "p90", "p99", "p99.9", "p99.99", "p99.999"];
    (0..labels.len())
        .filter(|&i| i as f64 <= max_nines.ceil())
        .map(|i| (i as f64, labels[i].to_owned()))
        .collect()
}

/// `(min, max)` of the per-round p99s.
pub fn round_range(p99s: &[f64]) -> Option<(f64, f64)> {
    let v: Vec<f64> = p99s.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    Some((
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    ))
}

/// `2 connect, 1 timeout` (kinds with a count only), or `none`.
pub fn error_kinds(e: &Errors) -> String {
    let parts: Vec<String> = [
        ("connect", e.connect),
        ("timeout", e.timeout),
        ("I/O", e.io),
        ("4xx", e.status_4xx),
        ("5xx", e.status_5xx),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| format!("{} {k}", crate::units::count(*n)))
    .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// The seed's "average time per request": total time / requests, in ms. It is the inverse of
/// throughput, which is why the report shows it only beside real latency.
pub fn seed_average_ms(run: &Run) -> Option<f64> {
    (run.responses > 0).then(|| run.duration_s * 1000.0 / run.responses as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

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
