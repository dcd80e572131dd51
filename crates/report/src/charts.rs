//! The report's charts, drawn from the `Analysis`: latency percentiles and distributions, the
//! capacity ramp, throughput and CPU over time, requests per worker, and per shoot-out scenario
//! the contenders' p99 and the split of requests.
//! Each builder returns `None` when the file has nothing for it, so the page can say so instead
//! of drawing an empty frame.

use fulcrum_loadgen::results::{Model, Run, RunKind, Second};

use crate::analysis::{Analysis, ContenderFigures, LatencyRow, RunFigures, ScenarioAnalysis};
use crate::plot::{Axis, BarChart, Bars, Chart, Dots, Line, LineChart, PALETTE};

/// Legend label for a latency row: the cluster when that is unambiguous, else run and cluster.
fn row_label(a: &Analysis<'_>, row: &LatencyRow<'_>) -> String {
    match row.cluster {
        Some(k) => {
            let repeated = a
                .latency_rows
                .iter()
                .filter(|x| x.cluster == Some(k))
                .count()
                > 1;
            if repeated {
                format!("{} · {}", row.run.name, a.cluster_name(k))
            } else {
                a.cluster_name(k)
            }
        }
        None => row.run.name.clone(),
    }
}

pub fn latency_percentiles(a: &Analysis<'_>) -> Option<Chart> {
    let rows = &a.latency_rows;
    let all: Vec<f64> = rows
        .iter()
        .flat_map(|x| [x.latency.p50_ms, x.latency.max_ms])
        .collect();
    let bars = rows
        .iter()
        .filter(|x| x.latency.count > 0)
        .map(|x| Bars {
            name: row_label(a, x),
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

/// Ticks for a spectrum's x axis.
fn nines_ticks(max_nines: f64) -> Vec<(f64, String)> {
    let labels = ["p0", "p90", "p99", "p99.9", "p99.99", "p99.999"];
    (0..labels.len())
        .filter(|&i| i as f64 <= max_nines.ceil())
        .map(|i| (i as f64, labels[i].to_owned()))
        .collect()
}

pub fn latency_distribution(a: &Analysis<'_>) -> Option<Chart> {
    let lines: Vec<Line> = a
        .latency_rows
        .iter()
        .filter_map(|x| Some(Line::new(row_label(a, x), x.spectrum.clone()?)))
        .collect();
    if lines.is_empty() {
        return None;
    }
    let max_nines = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(0.0, f64::max);
    let ys = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    Some(Chart::Line(LineChart {
        title: "Latency distribution (percentile spectrum from the HDR histograms)".into(),
        x: Axis::linear("percentile").with_ticks(nines_ticks(max_nines)),
        y: Axis::auto("latency (ms)", ys, 2.0),
        lines,
        markers: false,
    }))
}

/// A run's responses per second as steps (each second's count holds for that second), at
/// `origin + t`, ending where the run ended and then a break.
fn rate_points(run: &Run, origin: f64, per_second: impl Fn(&Second) -> u64) -> Vec<(f64, f64)> {
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

fn phase(f: &RunFigures<'_>) -> String {
    let run = f.run;
    match run.kind {
        RunKind::Seed => "seed benchmark".into(),
        RunKind::Bench => format!("bench {}", run.name),
        RunKind::Shootout => "policy shoot-out".into(),
        RunKind::Capacity => match f.cluster {
            Some(c) => format!("ramp, cluster {}", c.id),
            None => "capacity ramp".into(),
        },
    }
}

pub fn throughput_over_time(a: &Analysis<'_>) -> Option<Chart> {
    let timed: Vec<&RunFigures<'_>> = a
        .runs
        .iter()
        .filter(|f| !f.run.timeline.is_empty())
        .collect();
    let one = timed.len() == 1;
    let mut lines = if one {
        cluster_rate_lines(a, timed[0].run)
    } else {
        phase_rate_lines(&timed)
    };
    lines.extend(target_line(&timed));
    if lines
        .iter()
        .all(|l| l.points.iter().all(|p| !p.0.is_finite()))
    {
        return None;
    }
    Some(Chart::Line(LineChart {
        title: "Throughput over time".into(),
        x: Axis::linear(if one {
            "seconds into the run"
        } else {
            "seconds since the first run started"
        }),
        y: Axis::from_zero("responses per second"),
        lines,
        markers: false,
    }))
}

/// One run: all its responses, then split by cluster, on the run's own clock.
fn cluster_rate_lines(a: &Analysis<'_>, run: &Run) -> Vec<Line> {
    let mut lines = vec![
        Line::new("all responses", rate_points(run, 0.0, |s| s.responses))
            .step()
            .color("#333"),
    ];
    let keys: std::collections::BTreeSet<&String> = run
        .timeline
        .iter()
        .flat_map(|s| s.responses_by_cluster.keys())
        .collect();
    if keys.len() > 1 {
        // Same colors as the per-cluster latency charts.
        for (i, k) in keys.into_iter().enumerate() {
            let pts = rate_points(run, 0.0, |s| {
                s.responses_by_cluster.get(k).copied().unwrap_or(0)
            });
            lines.push(
                Line::new(a.cluster_name(k), pts)
                    .step()
                    .color(PALETTE[i % PALETTE.len()]),
            );
        }
    }
    lines
}

/// Several runs: one line per phase of the experiment, on the file's clock.
fn phase_rate_lines(timed: &[&RunFigures<'_>]) -> Vec<Line> {
    let mut lines: Vec<Line> = Vec::new();
    for f in timed {
        let name = phase(f);
        let pts = rate_points(f.run, f.run.started_s, |s| s.responses);
        match lines.iter_mut().find(|l| l.name == name) {
            Some(l) => l.points.extend(pts),
            None => lines.push(Line::new(name, pts).step()),
        }
    }
    lines
}

/// The open-model runs' target rates, on the same clock as the lines beside them.
fn target_line(timed: &[&RunFigures<'_>]) -> Option<Line> {
    let mut target = Vec::new();
    for f in timed {
        let origin = if timed.len() == 1 {
            0.0
        } else {
            f.run.started_s
        };
        if let Model::Open { rate, .. } = f.run.model {
            target.extend([
                (origin, rate),
                (origin + f.run.duration_s, rate),
                (f64::NAN, f64::NAN),
            ]);
        }
    }
    (!target.is_empty()).then(|| {
        Line::new("target rate", target)
            .dashed()
            .step()
            .color("#555")
    })
}

/// CPU of each of a cluster's workers over the whole file's time line.
pub fn cpu_over_time(a: &Analysis<'_>, cluster: &str) -> Option<Chart> {
    let mut lines: Vec<Line> = Vec::new();
    for f in &a.runs {
        for w in f.workers.iter().filter(|w| w.cluster == cluster) {
            let mut pts: Vec<(f64, f64)> = f
                .run
                .cpu
                .iter()
                .filter(|s| s.instance_id == w.instance_id)
                .map(|s| (f.run.started_s + s.t, s.cpu_utilization * 100.0))
                .collect();
            pts.push((f64::NAN, f64::NAN));
            match lines.iter_mut().find(|l| l.name == w.instance_id) {
                Some(l) => l.points.extend(pts),
                None => lines.push(Line::new(w.instance_id, pts)),
            }
        }
    }
    if lines.is_empty() {
        return None;
    }
    lines.sort_by(|a, b| a.name.cmp(&b.name));
    Some(Chart::Line(LineChart {
        title: format!("CPU per worker over time: {}", a.cluster_name(cluster)),
        x: Axis::linear("seconds since the first run started"),
        y: Axis::from_zero("CPU (% of the worker's quota)"),
        lines,
        markers: false,
    }))
}

pub fn requests_per_worker(a: &Analysis<'_>) -> Option<Chart> {
    let mut categories = Vec::new();
    let (mut got, mut fair) = (Vec::new(), Vec::new());
    let ids: Vec<&str> = a
        .headline()
        .flat_map(|f| f.requests.iter().map(|w| w.instance_id))
        .collect();
    for f in a.headline() {
        for w in &f.requests {
            let id = w.instance_id;
            let repeated = ids.iter().filter(|x| **x == id).count() > 1;
            categories.push(if repeated {
                format!("{} · {id}", f.run.name)
            } else {
                id.to_owned()
            });
            got.push(Some(w.group.responses as f64));
            fair.push(Some(w.by_capacity));
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
pub fn capacity_ramp(a: &Analysis<'_>) -> Option<Chart> {
    let c = a.capacity.as_ref()?;
    let mut lines = Vec::new();
    let mut hi: f64 = 0.0;
    for ramp in &c.ramps {
        let pts: Vec<(f64, f64)> = ramp
            .steps
            .iter()
            .map(|s| (s.target, s.run.achieved_rate))
            .collect();
        hi = pts.iter().map(|p| p.0).fold(hi, f64::max);
        if !pts.is_empty() {
            lines.push(Line::new(a.cluster_name(ramp.cluster()), pts));
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
pub fn capacity_latency(a: &Analysis<'_>) -> Option<Chart> {
    let c = a.capacity.as_ref()?;
    let lines: Vec<Line> = c
        .ramps
        .iter()
        .map(|ramp| {
            Line::new(
                format!("{} p99", a.cluster_name(ramp.cluster())),
                ramp.steps
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
    use crate::sample;

    #[test]
    fn every_chart_of_an_experiment_has_data() {
        let r = sample::experiment();
        let a = Analysis::new(&r);
        let mut charts = vec![
            latency_percentiles(&a),
            latency_distribution(&a),
            throughput_over_time(&a),
            requests_per_worker(&a),
            capacity_ramp(&a),
            capacity_latency(&a),
        ];
        charts.extend(a.cpu_clusters.iter().map(|c| cpu_over_time(&a, c)));
        for s in &a.shootout.as_ref().unwrap().scenarios {
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
        let a = Analysis::new(&r);
        let s = &a.shootout.as_ref().unwrap().scenarios[0];
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
        let a = Analysis::new(&r);
        assert!(capacity_ramp(&a).is_none());
        assert!(a.shootout.is_none());
        assert!(latency_percentiles(&a).is_some());
        assert!(throughput_over_time(&a).is_some());
    }
}
