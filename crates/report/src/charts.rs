//! The report's charts, built from results.json: latency percentiles and distributions, the
//! capacity ramp, throughput and CPU over time, requests per worker, and per shoot-out scenario
//! the contenders' p99 and the split of requests.
//! Each builder returns `None` when the file has nothing for it, so the page can say so instead
//! of drawing an empty frame.

use fulcrum_loadgen::results::{Group, Hist, Model, Results, Run, RunKind};

use crate::analysis::{ContenderFigures, ScenarioAnalysis};
use crate::figures::{self, cluster_name};
use crate::plot::{Axis, BarChart, Bars, Chart, Dots, Line, LineChart};

/// A latency histogram the charts and tables describe: one cluster in one headline run, or a
/// whole run when responses were not attributed to clusters.
pub struct LatencyRow<'a> {
    pub run: &'a Run,
    /// Cluster key, when attributed.
    pub cluster: Option<&'a str>,
    pub responses: u64,
    pub errors: u64,
    pub latency: &'a Hist,
}

pub fn latency_rows(r: &Results) -> Vec<LatencyRow<'_>> {
    let mut rows = Vec::new();
    for run in figures::headline_runs(r) {
        if run.by_cluster.is_empty() {
            rows.push(LatencyRow {
                run,
                cluster: None,
                responses: run.responses,
                errors: run.errors.total(),
                latency: &run.latency,
            });
        }
        for (k, g) in &run.by_cluster {
            let Group {
                responses,
                errors,
                latency,
            } = g;
            rows.push(LatencyRow {
                run,
                cluster: Some(k),
                responses: *responses,
                errors: *errors,
                latency,
            });
        }
    }
    rows
}

/// Legend label for a latency row: the cluster when that is unambiguous, else run and cluster.
pub fn row_label(r: &Results, rows: &[LatencyRow<'_>], row: &LatencyRow<'_>) -> String {
    match row.cluster {
        Some(k) => {
            let repeated = rows.iter().filter(|x| x.cluster == Some(k)).count() > 1;
            if repeated {
                format!("{} · {}", row.run.name, cluster_name(r, k))
            } else {
                cluster_name(r, k)
            }
        }
        None => row.run.name.clone(),
    }
}

pub fn latency_percentiles(r: &Results) -> Option<Chart> {
    let rows = latency_rows(r);
    let all: Vec<f64> = rows
        .iter()
        .flat_map(|x| [x.latency.p50_ms, x.latency.max_ms])
        .collect();
    let bars = rows
        .iter()
        .filter(|x| x.latency.count > 0)
        .map(|x| Bars {
            name: row_label(r, &rows, x),
            values: [
                x.latency.p50_ms,
                x.latency.p90_ms,
                x.latency.p99_ms,
                x.latency.p999_ms,
                x.latency.max_ms,
            ]
            .map(Some)
            .to_vec(),
            color: None,
        })
        .collect::<Vec<_>>();
    if bars.is_empty() {
        return None;
    }
    Some(Chart::Bar(BarChart {
        title: "Latency percentiles per cluster".into(),
        categories: ["p50", "p90", "p99", "p99.9", "max"]
            .map(String::from)
            .to_vec(),
        y: Axis::auto("latency (ms)", all, 1.5),
        bars,
        dots: vec![],
    }))
}

fn spectrum_chart(title: &str, named: Vec<(String, &Hist)>) -> Option<Chart> {
    let lines: Vec<Line> = named
        .into_iter()
        .filter_map(|(name, h)| Some(Line::new(name, figures::spectrum(h)?)))
        .collect();
    let max_nines = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(0.0, f64::max);
    if lines.is_empty() {
        return None;
    }
    let ys = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    Some(Chart::Line(LineChart {
        title: title.into(),
        x: Axis::linear("percentile").with_ticks(figures::nines_ticks(max_nines)),
        y: Axis::auto("latency (ms)", ys, 2.0),
        lines,
        markers: false,
    }))
}

pub fn latency_distribution(r: &Results) -> Option<Chart> {
    let rows = latency_rows(r);
    spectrum_chart(
        "Latency distribution (percentile spectrum from the HDR histograms)",
        rows.iter()
            .map(|x| (row_label(r, &rows, x), x.latency))
            .collect(),
    )
}

/// A run's responses per second as steps (each second's count holds for that second), at
/// `origin + t`, ending where the run ended and then a break.
fn rate_points(
    run: &Run,
    origin: f64,
    per_second: impl Fn(&fulcrum_loadgen::results::Second) -> u64,
) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = run
        .timeline
        .iter()
        .map(|s| {
            // The last second of a run is usually partial: scale by the time it covers.
            let covered = (run.duration_s - s.t).clamp(0.05, 1.0);
            (origin + s.t, per_second(s) as f64 / covered)
        })
        .collect();
    if let (Some(&(x, y)), Some(last)) = (pts.last(), run.timeline.last()) {
        let end = run.duration_s.max(last.t + 0.05);
        pts.push((x - last.t + end, y));
    }
    pts.push((f64::NAN, f64::NAN));
    pts
}

fn phase(r: &Results, run: &Run) -> String {
    match run.kind {
        RunKind::Seed => "seed benchmark".into(),
        RunKind::Bench => format!("bench {}", run.name),
        RunKind::Shootout => "policy shoot-out".into(),
        RunKind::Capacity => match figures::run_cluster(r, run) {
            Some(c) => format!("ramp, cluster {}", c.id),
            None => "capacity ramp".into(),
        },
    }
}

pub fn throughput_over_time(r: &Results) -> Option<Chart> {
    let mut lines: Vec<Line> = Vec::new();
    let timed: Vec<&Run> = r.runs.iter().filter(|x| !x.timeline.is_empty()).collect();
    if timed.len() == 1 {
        // One run: split it by cluster, on the run's own clock.
        let run = timed[0];
        lines.push(
            Line::new("all responses", rate_points(run, 0.0, |s| s.responses))
                .step()
                .color("#333"),
        );
        let keys: std::collections::BTreeSet<&String> = run
            .timeline
            .iter()
            .flat_map(|s| s.responses_by_cluster.keys())
            .collect();
        if keys.len() > 1 {
            // Same colors as the per-cluster latency charts.
            for (i, k) in keys.into_iter().enumerate() {
                lines.push(
                    Line::new(
                        cluster_name(r, k),
                        rate_points(run, 0.0, |s| {
                            s.responses_by_cluster.get(k).copied().unwrap_or(0)
                        }),
                    )
                    .step()
                    .color(crate::plot::PALETTE[i % crate::plot::PALETTE.len()]),
                );
            }
        }
    } else {
        for run in &timed {
            let name = phase(r, run);
            let pts = rate_points(run, run.started_s, |s| s.responses);
            match lines.iter_mut().find(|l| l.name == name) {
                Some(l) => l.points.extend(pts),
                None => lines.push(Line::new(name, pts).step()),
            }
        }
    }
    let mut target = Vec::new();
    for run in &timed {
        let origin = if timed.len() == 1 { 0.0 } else { run.started_s };
        if let Model::Open { rate, .. } = run.model {
            target.extend([
                (origin, rate),
                (origin + run.duration_s, rate),
                (f64::NAN, f64::NAN),
            ]);
        }
    }
    if !target.is_empty() {
        lines.push(
            Line::new("target rate", target)
                .dashed()
                .step()
                .color("#555"),
        );
    }
    if lines
        .iter()
        .all(|l| l.points.iter().all(|p| !p.0.is_finite()))
    {
        return None;
    }
    Some(Chart::Line(LineChart {
        title: "Throughput over time".into(),
        x: Axis::linear(if timed.len() == 1 {
            "seconds into the run"
        } else {
            "seconds since the first run started"
        }),
        y: Axis::from_zero("responses per second"),
        lines,
        markers: false,
    }))
}

/// Clusters that have CPU samples anywhere in the file, in order.
pub fn cpu_clusters(r: &Results) -> Vec<String> {
    let mut keys: Vec<String> = r
        .runs
        .iter()
        .flat_map(|run| run.cpu.iter().map(|s| s.cluster.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// CPU of each of a cluster's workers over the whole file's time line.
pub fn cpu_over_time(r: &Results, cluster: &str) -> Option<Chart> {
    let mut lines: Vec<Line> = Vec::new();
    for run in &r.runs {
        for (id, c) in figures::cpu_workers(run) {
            if c != cluster {
                continue;
            }
            let mut pts: Vec<(f64, f64)> = run
                .cpu
                .iter()
                .filter(|s| s.instance_id == id)
                .map(|s| (run.started_s + s.t, s.cpu_utilization * 100.0))
                .collect();
            pts.push((f64::NAN, f64::NAN));
            match lines.iter_mut().find(|l| l.name == id) {
                Some(l) => l.points.extend(pts),
                None => lines.push(Line::new(id, pts)),
            }
        }
    }
    if lines.is_empty() {
        return None;
    }
    lines.sort_by(|a, b| a.name.cmp(&b.name));
    Some(Chart::Line(LineChart {
        title: format!("CPU per worker over time: {}", cluster_name(r, cluster)),
        x: Axis::linear("seconds since the first run started"),
        y: Axis::from_zero("CPU (% of the worker's quota)"),
        lines,
        markers: false,
    }))
}

/// The cores a worker may use, from the deployment.
fn instance_cores(r: &Results, id: &str) -> Option<f64> {
    r.deployment
        .as_ref()?
        .instances
        .iter()
        .find(|i| i.instance_id == id)
        .map(|i| i.cores)
}

/// Per worker in a headline run: responses, and what a split by capacity would have given it.
pub fn worker_requests(r: &Results, run: &Run) -> Vec<(String, String, u64, f64)> {
    let cores: Vec<Option<f64>> = run
        .by_instance
        .keys()
        .map(|id| instance_cores(r, id))
        .collect();
    let known = cores.iter().all(Option::is_some);
    let total_cores: f64 = cores.iter().flatten().sum();
    let total: u64 = run.by_instance.values().map(|g| g.responses).sum();
    let n = run.by_instance.len().max(1) as f64;
    run.by_instance
        .iter()
        .zip(cores)
        .map(|((id, g), c)| {
            let share = match (known && total_cores > 0.0, c) {
                (true, Some(c)) => c / total_cores,
                _ => 1.0 / n,
            };
            (
                id.clone(),
                g.cluster.clone(),
                g.responses,
                share * total as f64,
            )
        })
        .collect()
}

pub fn requests_per_worker(r: &Results) -> Option<Chart> {
    let runs = figures::headline_runs(r);
    let mut categories = Vec::new();
    let (mut got, mut fair) = (Vec::new(), Vec::new());
    let ids: Vec<String> = runs
        .iter()
        .flat_map(|run| run.by_instance.keys().cloned())
        .collect();
    for run in &runs {
        for (id, _, n, share) in worker_requests(r, run) {
            let repeated = ids.iter().filter(|x| **x == id).count() > 1;
            categories.push(if repeated {
                format!("{} · {id}", run.name)
            } else {
                id
            });
            got.push(Some(n as f64));
            fair.push(Some(share));
        }
    }
    if categories.is_empty() {
        return None;
    }
    Some(Chart::Bar(BarChart {
        title: "Requests per worker, against a split by capacity".into(),
        categories,
        y: Axis::from_zero("responses"),
        bars: vec![
            Bars {
                name: "responses".into(),
                values: got,
                color: None,
            },
            Bars {
                name: "split by capacity (cores)".into(),
                values: fair,
                color: Some("#bab0ac"),
            },
        ],
        dots: vec![],
    }))
}

/// Achieved against offered rate in each cluster's ramp, with the ideal diagonal.
pub fn capacity_ramp(r: &Results) -> Option<Chart> {
    let exp = r.experiment.as_ref()?;
    let mut lines = Vec::new();
    let mut hi: f64 = 0.0;
    for cap in &exp.capacity {
        let pts: Vec<(f64, f64)> = figures::ramp(r, cap)
            .iter()
            .map(|s| (s.target, s.run.achieved_rate))
            .collect();
        hi = pts.iter().map(|p| p.0).fold(hi, f64::max);
        if !pts.is_empty() {
            lines.push(Line::new(cluster_name(r, &cap.cluster), pts));
        }
    }
    if lines.is_empty() {
        return None;
    }
    lines.push(
        Line::new("achieved = offered", vec![(0.0, 0.0), (hi, hi)])
            .dashed()
            .color("#999"),
    );
    Some(Chart::Line(LineChart {
        title: "Capacity ramp: achieved against offered rate".into(),
        x: Axis::from_zero("offered rate (req/s)"),
        y: Axis::from_zero("achieved rate (req/s)"),
        lines,
        markers: true,
    }))
}

/// p99 at each step of each cluster's ramp (response time against load).
pub fn capacity_latency(r: &Results) -> Option<Chart> {
    let exp = r.experiment.as_ref()?;
    let lines: Vec<Line> = exp
        .capacity
        .iter()
        .map(|cap| {
            Line::new(
                format!("{} p99", cluster_name(r, &cap.cluster)),
                figures::ramp(r, cap)
                    .iter()
                    .map(|s| (s.target, s.run.latency.p99_ms))
                    .collect(),
            )
        })
        .filter(|l| !l.points.is_empty())
        .collect();
    if lines.is_empty() {
        return None;
    }
    let ys = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    Some(Chart::Line(LineChart {
        title: "Capacity ramp: p99 latency against offered rate".into(),
        x: Axis::from_zero("offered rate (req/s)"),
        y: Axis::auto("p99 latency (ms)", ys, 1.5),
        lines,
        markers: true,
    }))
}

/// Per contender of a scenario: median p50 and p99 bars, each round's p99 as dots.
pub fn scenario_latency(s: &ScenarioAnalysis<'_>) -> Option<Chart> {
    let cs = &s.contenders;
    if cs.is_empty() {
        return None;
    }
    let all = cs.iter().flat_map(|c| {
        c.round_p99_ms
            .iter()
            .copied()
            .chain([c.median_p50_ms, c.median_p99_ms])
    });
    Some(Chart::Bar(BarChart {
        title: format!(
            "{}: p50 and p99 by contender (median of rounds; dots: each round's p99)",
            s.scenario.name
        ),
        categories: cs.iter().map(|c| c.label().to_owned()).collect(),
        y: Axis::auto("latency (ms)", all, 1.5),
        bars: vec![
            Bars {
                name: "median p50".into(),
                values: cs.iter().map(|c| Some(c.median_p50_ms)).collect(),
                color: None,
            },
            Bars {
                name: "median p99".into(),
                values: cs.iter().map(|c| Some(c.median_p99_ms)).collect(),
                color: None,
            },
        ],
        dots: vec![Dots {
            name: "p99 of one round".into(),
            over: Some(1),
            points: cs
                .iter()
                .enumerate()
                .flat_map(|(i, c)| c.round_p99_ms.iter().map(move |v| (i, *v)))
                .collect(),
        }],
    }))
}

/// Each worker's share of requests under fulcrum's default and the best peer, beside its
/// share of capacity.
pub fn scenario_shares(s: &ScenarioAnalysis<'_>) -> Option<Chart> {
    let shown: Vec<&ContenderFigures<'_>> = [s.fulcrum_default(), s.best_peer()]
        .into_iter()
        .flatten()
        .filter(|c| !c.contender.shares.is_empty())
        .collect();
    let workers = &shown.first()?.contender.shares;
    let share_of = |c: &ContenderFigures<'_>, id: &str| {
        c.contender
            .shares
            .iter()
            .find(|x| x.instance_id == id)
            .map(|x| x.share_of_requests * 100.0)
    };
    let mut bars: Vec<Bars> = shown
        .iter()
        .map(|c| Bars {
            name: format!("{}: share of requests", c.label()),
            values: workers
                .iter()
                .map(|w| share_of(c, &w.instance_id))
                .collect(),
            color: None,
        })
        .collect();
    bars.push(Bars {
        name: "share of capacity".into(),
        values: workers
            .iter()
            .map(|w| Some(w.share_of_capacity * 100.0))
            .collect(),
        color: Some("#bab0ac"),
    });
    let names: Vec<&str> = shown.iter().map(|c| c.label()).collect();
    Some(Chart::Bar(BarChart {
        title: format!(
            "{}: share of requests vs capacity, {}",
            s.scenario.name,
            names.join(" and ")
        ),
        categories: workers.iter().map(|w| w.instance_id.clone()).collect(),
        y: Axis::from_zero("% of all"),
        bars,
        dots: vec![],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Analysis;
    use crate::sample;

    #[test]
    fn every_chart_of_an_experiment_has_data() {
        let r = sample::experiment();
        let a = Analysis::new(&r).unwrap();
        let mut charts = vec![
            latency_percentiles(&r),
            latency_distribution(&r),
            throughput_over_time(&r),
            requests_per_worker(&r),
            capacity_ramp(&r),
            capacity_latency(&r),
        ];
        charts.extend(cpu_clusters(&r).iter().map(|c| cpu_over_time(&r, c)));
        for s in &a.scenarios {
            charts.push(scenario_latency(s));
            charts.push(scenario_shares(s));
        }
        assert_eq!(charts.len(), 6 + 2 + 4 * 2);
        for (i, c) in charts.into_iter().enumerate() {
            let svg = c
                .expect("chart built")
                .render()
                .unwrap_or_else(|| panic!("chart {i} rendered empty"));
            assert!(!svg.contains(r#"data-points="0""#), "chart {i}");
        }
    }

    #[test]
    fn scenario_charts_show_every_contender_and_the_two_compared() {
        let r = sample::experiment();
        let a = Analysis::new(&r).unwrap();
        let s = &a.scenarios[0];
        let svg = scenario_latency(s).unwrap().render().unwrap();
        // Two bars and two round dots per contender.
        assert!(svg.contains(r#"data-points="20""#), "{svg}");
        assert!(svg.contains("haproxy leastconn"));
        let svg = scenario_shares(s).unwrap().render().unwrap();
        assert!(svg.contains("fulcrum adaptive: share of requests"));
        assert!(svg.contains("haproxy leastconn: share of requests"));
        assert!(!svg.contains("nginx"));
        // Nine workers, three series.
        assert!(svg.contains(r#"data-points="27""#), "{svg}");
    }

    #[test]
    fn a_plain_bench_has_no_ramp_or_shootout() {
        let mut r = sample::experiment();
        r.experiment = None;
        r.runs.retain(|x| x.kind == RunKind::Seed);
        r.runs.truncate(1);
        r.runs[0].kind = RunKind::Bench;
        assert!(capacity_ramp(&r).is_none());
        assert!(Analysis::new(&r).is_none());
        assert!(latency_percentiles(&r).is_some());
        assert!(throughput_over_time(&r).is_some());
    }

    #[test]
    fn requests_split_by_capacity_follows_cores() {
        let mut r = sample::experiment();
        r.runs.truncate(2);
        // Put both clusters in one run: large workers should get twice a micro's share.
        let mut run = r.runs[0].clone();
        run.by_instance.extend(r.runs[1].by_instance.clone());
        let rows = worker_requests(&r, &run);
        let micro = rows.iter().find(|x| x.0 == "i-micro0").unwrap().3;
        let large = rows.iter().find(|x| x.0 == "i-large0").unwrap().3;
        assert!((large / micro - 2.0).abs() < 1e-9);
        let total: u64 = rows.iter().map(|x| x.2).sum();
        let fair: f64 = rows.iter().map(|x| x.3).sum();
        assert!((fair - total as f64).abs() < 1e-6);
    }
}
