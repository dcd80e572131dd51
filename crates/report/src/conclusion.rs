//! The report's verdicts, worded from the numbers. Each claim is made only as far as the data
//! carries it: a ramp brackets a cluster's capacity between the highest step it sustained and
//! the first it failed, so two clusters are ranked only when the brackets do not overlap; a
//! policy "wins" only when its per-round p99 range clears every other policy's; a single run
//! has no spread, so it is described, never ranked.

use fulcrum_loadgen::results::{Capacity, Model, PolicyResult, Results, Run, RunKind};

use crate::figures::{self, cluster_info, cluster_name, same_rate};
use crate::units::{count, ms_u, pct, rate_u, times};

/// How the clusters' capacities compare.
#[derive(Debug, PartialEq)]
pub enum CapacityOrder<'a> {
    /// `first` failed at a rate every other cluster sustained.
    Clear {
        first: &'a Capacity,
        /// The rest, by sustained rate.
        others: Vec<&'a Capacity>,
    },
    /// `lowest` sustained the least, but `overlapping`'s bracket overlaps it: the ramp's steps
    /// are too coarse (or it stopped too early) to say who saturates first.
    Unresolved {
        lowest: &'a Capacity,
        overlapping: &'a Capacity,
    },
    /// No cluster failed a step: the ramp never reached a limit.
    NoneFailed,
}

fn upper(c: &Capacity) -> f64 {
    c.failed_rate.unwrap_or(f64::INFINITY)
}

/// Orders two or more clusters by capacity; `None` with fewer than two.
pub fn order_capacity(caps: &[Capacity]) -> Option<CapacityOrder<'_>> {
    if caps.len() < 2 {
        return None;
    }
    if caps.iter().all(|c| c.failed_rate.is_none()) {
        return Some(CapacityOrder::NoneFailed);
    }
    let mut by_rate: Vec<&Capacity> = caps.iter().collect();
    by_rate.sort_by(|a, b| {
        a.sustained_rate
            .total_cmp(&b.sustained_rate)
            .then(upper(a).total_cmp(&upper(b)))
    });
    let lowest = by_rate[0];
    let rest: Vec<&Capacity> = by_rate[1..].to_vec();
    match rest.iter().find(|o| o.sustained_rate < upper(lowest)) {
        None => Some(CapacityOrder::Clear {
            first: lowest,
            others: rest,
        }),
        Some(o) => Some(CapacityOrder::Unresolved {
            lowest,
            overlapping: o,
        }),
    }
}

/// The shoot-out's order by merged p99, and which policies the best cannot be told from.
#[derive(Debug, PartialEq)]
pub struct PolicyOrder {
    /// Indices into `policies`, best (lowest merged p99) first.
    pub order: Vec<usize>,
    /// Policies whose per-round p99 range overlaps the best's (never includes the best).
    pub tied: Vec<usize>,
    /// Rounds every policy ran (the fewest any ran).
    pub rounds: usize,
}

fn overlaps(a: (f64, f64), b: (f64, f64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

pub fn order_policies(ps: &[PolicyResult]) -> Option<PolicyOrder> {
    if ps.is_empty() {
        return None;
    }
    let mut order: Vec<usize> = (0..ps.len()).collect();
    order.sort_by(|&a, &b| {
        ps[a]
            .latency
            .p99_ms
            .total_cmp(&ps[b].latency.p99_ms)
            .then(ps[a].latency.p50_ms.total_cmp(&ps[b].latency.p50_ms))
    });
    let rounds = ps
        .iter()
        .map(|p| p.p99_by_round_ms.len())
        .min()
        .unwrap_or(0);
    let best = order[0];
    let tied = match figures::round_range(&ps[best].p99_by_round_ms) {
        Some(br) if rounds >= 2 => order[1..]
            .iter()
            .copied()
            .filter(|&i| {
                figures::round_range(&ps[i].p99_by_round_ms).is_some_and(|r| overlaps(br, r))
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(PolicyOrder {
        order,
        tied,
        rounds,
    })
}

fn range_text(p: &PolicyResult) -> String {
    match figures::round_range(&p.p99_by_round_ms) {
        Some((lo, hi)) => format!("{}–{}", crate::units::ms(lo), ms_u(hi)),
        None => "no rounds".into(),
    }
}

/// Runs in which the load generator ran out of CPU.
pub fn saturated_runs(r: &Results) -> Vec<&Run> {
    r.runs.iter().filter(|x| x.generator.saturated).collect()
}

fn name_list(names: &[&str]) -> String {
    const SHOWN: usize = 6;
    let mut s = names
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// Warnings for the top of the report; empty when there is nothing to warn about.
pub fn warnings(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let sat = saturated_runs(r);
    if !sat.is_empty() {
        let names: Vec<&str> = sat.iter().map(|x| x.name.as_str()).collect();
        let peak = sat
            .iter()
            .map(|x| x.generator.cpu_utilization)
            .fold(0.0, f64::max);
        out.push(format!(
            "The load generator was saturated in {} of {} runs ({}; its CPU peaked at {} of what it could use). \
             In those runs part of the latency is time requests waited inside the generator, and throughput may be \
             the generator's limit rather than the servers': read them as bounds, not measurements of the servers.",
            sat.len(),
            r.runs.len(),
            name_list(&names),
            pct(peak),
        ));
    }
    let errors: u64 = r.runs.iter().map(|x| x.errors.total()).sum();
    if errors > 0 {
        let failing: Vec<&str> = r
            .runs
            .iter()
            .filter(|x| x.errors.total() > 0 && x.kind != RunKind::Capacity)
            .map(|x| x.name.as_str())
            .collect();
        if !failing.is_empty() {
            out.push(format!(
                "Requests failed outside the capacity ramp (where failing steps are expected): {}.",
                failing
                    .iter()
                    .map(|n| {
                        let run = figures::run_by_name(r, n).expect("named from the runs");
                        format!("{n}: {}", figures::error_kinds(&run.errors))
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
    }
    out
}

/// Cluster names are written lower case mid-sentence; a sentence that opens with one gets a
/// capital.
fn sentence_case(s: String) -> String {
    let s = match s.strip_prefix("cluster ") {
        Some(rest) => format!("Cluster {rest}"),
        None => s,
    };
    s.replace(". cluster ", ". Cluster ")
}

fn capacity_name(r: &Results, c: &Capacity) -> String {
    cluster_name(r, &c.cluster)
}

/// Why the first failed step failed, from that step's own numbers.
fn failed_step_text(r: &Results, c: &Capacity) -> Option<String> {
    let f = c.failed_rate?;
    let step = figures::ramp(r, c)
        .into_iter()
        .find(|s| same_rate(s.target, f))?;
    let run = step.run;
    let mut why = vec![format!(
        "achieved {}, {} of it",
        rate_u(run.achieved_rate),
        pct(run.achieved_rate / f)
    )];
    why.push(format!("p99 {}", ms_u(run.latency.p99_ms)));
    if run.errors.total() > 0 {
        why.push(format!("{} errors", count(run.errors.total())));
    }
    Some(why.join(", "))
}

/// Capacity and the seed's expectation (micro saturates first).
pub fn capacity_findings(r: &Results) -> Vec<String> {
    let Some(exp) = &r.experiment else {
        return Vec::new();
    };
    let caps = &exp.capacity;
    let mut out = Vec::new();
    if caps.len() == 1 {
        let c = &caps[0];
        out.push(match c.failed_rate {
            Some(f) => format!(
                "{} sustained {} and first failed at {}.",
                capacity_name(r, c),
                rate_u(c.sustained_rate),
                rate_u(f)
            ),
            None => format!(
                "{} sustained every step of its ramp, up to {}: its limit is higher.",
                capacity_name(r, c),
                rate_u(c.sustained_rate)
            ),
        });
        return out;
    }
    // The expectation, from the CPU each cluster may use.
    let ceilings: Vec<(&Capacity, f64)> = caps
        .iter()
        .filter_map(|c| Some((c, figures::ceiling_rps(cluster_info(r, &c.cluster)?)?)))
        .collect();
    let expected_first = (ceilings.len() == caps.len())
        .then(|| {
            ceilings
                .iter()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|x| x.0.cluster.clone())
        })
        .flatten();

    match order_capacity(caps) {
        Some(CapacityOrder::Clear { first, others }) => {
            let next = others[0];
            let mut s = format!(
                "{} saturated first: it sustained {} and failed at {} ({}), a rate that {} sustained.",
                capacity_name(r, first),
                rate_u(first.sustained_rate),
                rate_u(first.failed_rate.expect("a clear first has failed")),
                failed_step_text(r, first).unwrap_or_else(|| "step not in the file".into()),
                capacity_name(r, next),
            );
            for o in &others {
                let ratio = if first.sustained_rate > 0.0 {
                    format!("{} as much", times(o.sustained_rate / first.sustained_rate))
                } else {
                    "while the first sustained no step at all".into()
                };
                match o.failed_rate {
                    Some(f) => s.push_str(&format!(
                        " {} sustained {} (failed at {}): {}.",
                        capacity_name(r, o),
                        rate_u(o.sustained_rate),
                        rate_u(f),
                        ratio
                    )),
                    None => s.push_str(&format!(
                        " {} sustained every step up to {} without failing, so it has at least {}.",
                        capacity_name(r, o),
                        rate_u(o.sustained_rate),
                        ratio.replace(" as much", " the capacity")
                    )),
                }
            }
            out.push(s);
            if let Some(exp_first) = &expected_first {
                let ceil = |c: &Capacity| {
                    ceilings
                        .iter()
                        .find(|x| x.0.cluster == c.cluster)
                        .map(|x| x.1)
                        .unwrap_or(f64::NAN)
                };
                let expected_ratio = ceil(next) / ceil(first);
                let measured_ratio = next.sustained_rate / first.sustained_rate;
                if *exp_first == first.cluster {
                    out.push(format!(
                        "The seed's expectation holds: the cluster with less CPU reached its limit first. From CPU alone \
                         {} should manage {} the rate of {}; the ramp measured {}{}. {} reached {} of its CPU-bound ceiling, {} {}.",
                        capacity_name(r, next),
                        times(expected_ratio),
                        capacity_name(r, first),
                        times(measured_ratio),
                        if next.failed_rate.is_none() { " (a lower bound)" } else { "" },
                        capacity_name(r, first),
                        pct(first.sustained_rate / ceil(first)),
                        capacity_name(r, next),
                        pct(next.sustained_rate / ceil(next)),
                    ));
                } else {
                    out.push(format!(
                        "The seed's expectation does not hold here: {} has the least CPU, yet {} reached its limit first.",
                        cluster_name(r, exp_first),
                        capacity_name(r, first),
                    ));
                }
            }
        }
        Some(CapacityOrder::Unresolved {
            lowest,
            overlapping,
        }) => {
            out.push(format!(
                "The ramp cannot say which cluster saturates first. {} sustained the lower rate ({} against {}), \
                 but its bracket reaches {} while {} sustained {}: the capacities overlap within the ramp's step size. \
                 A finer ramp would separate them.",
                capacity_name(r, lowest),
                rate_u(lowest.sustained_rate),
                rate_u(overlapping.sustained_rate),
                lowest
                    .failed_rate
                    .map(rate_u)
                    .unwrap_or_else(|| "beyond the ramp".into()),
                capacity_name(r, overlapping),
                rate_u(overlapping.sustained_rate),
            ));
            if expected_first.is_some() {
                out.push(
                    "So the seed's expectation (the smaller cluster saturates first) is neither confirmed nor refuted by this run."
                        .into(),
                );
            }
        }
        Some(CapacityOrder::NoneFailed) => {
            out.push(format!(
                "No cluster failed a step of its ramp ({}): the ramp never reached a limit, so this run cannot say which \
                 cluster saturates first.",
                caps.iter()
                    .map(|c| format!(
                        "{} up to {}",
                        capacity_name(r, c),
                        rate_u(c.sustained_rate)
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        None => {}
    }
    // A generator that ran out of CPU during a ramp caps that ramp, not the cluster.
    for c in caps {
        let sat: Vec<&str> = figures::ramp(r, c)
            .iter()
            .filter(|s| s.run.generator.saturated)
            .map(|s| s.run.name.as_str())
            .collect();
        if !sat.is_empty() {
            out.push(format!(
                "Caution: the load generator was saturated during {}'s ramp ({}), so its measured limit may be the \
                 generator's.",
                capacity_name(r, c),
                name_list(&sat)
            ));
        }
    }
    out.into_iter().map(sentence_case).collect()
}

/// The seed's benchmark (or plain bench runs): numbers per cluster, the seed's "average"
/// next to real latency, and no ranking from single runs.
pub fn headline_findings(r: &Results) -> Vec<String> {
    let runs = figures::headline_runs(r);
    let mut out = Vec::new();
    let mut single: Vec<String> = Vec::new();
    for run in &runs {
        let target = figures::run_cluster(r, run)
            .map(|c| cluster_name(r, &c.id.to_string()))
            .unwrap_or_else(|| run.url.clone());
        let mut s = format!(
            "Run {} ({}) on {}: {} responses in {}, {}; p50 {}, p99 {}, max {}; errors: {}.",
            run.name,
            figures::model_text(run),
            target,
            count(run.responses),
            crate::units::secs(run.duration_s),
            rate_u(run.achieved_rate),
            ms_u(run.latency.p50_ms),
            ms_u(run.latency.p99_ms),
            ms_u(run.latency.max_ms),
            figures::error_kinds(&run.errors),
        );
        if let (Model::Closed { concurrency, .. }, Some(avg)) =
            (&run.model, figures::seed_average_ms(run))
        {
            s.push_str(&format!(
                " The seed's \"average time per request\" (total time / requests) would be {} here: that is \
                 1 / throughput, not latency. With {} requests in flight the median request took {}, {} longer.",
                ms_u(avg),
                concurrency,
                ms_u(run.latency.p50_ms),
                times(run.latency.p50_ms / avg),
            ));
        }
        out.push(s);
        for key in run.by_cluster.keys() {
            single.push(key.clone());
        }
    }
    // Several clusters measured once each: say what the numbers are, not who won.
    if single.len() >= 2 {
        let groups: Vec<String> = runs
            .iter()
            .flat_map(|run| {
                run.by_cluster.iter().map(move |(k, g)| {
                    format!("{} p99 {}", cluster_name(r, k), ms_u(g.latency.p99_ms))
                })
            })
            .collect();
        out.push(format!(
            "At this load {}. Each figure comes from a single run, so there is no spread to tell a real difference \
             from noise: {}",
            groups.join(", "),
            if r.experiment.as_ref().is_some_and(|e| !e.capacity.is_empty()) {
                "the capacity ramp is the comparison to rely on."
            } else {
                "repeat the runs (fulcrum experiment does) before ranking the clusters."
            }
        ));
    }
    out
}

/// CPU per cluster in the headline runs and at each ramp's limit.
pub fn cpu_findings(r: &Results) -> Vec<String> {
    let mut parts = Vec::new();
    for run in figures::headline_runs(r) {
        let mut keys: Vec<String> = figures::cpu_workers(run)
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        keys.dedup();
        for k in keys {
            if let Some(c) = figures::cluster_cpu(run, &k) {
                parts.push(format!(
                    "{} averaged {} of its CPU (peak {}) during {}",
                    cluster_name(r, &k),
                    pct(c.mean),
                    pct(c.peak),
                    run.name
                ));
            }
        }
    }
    if let Some(exp) = &r.experiment {
        for cap in &exp.capacity {
            if let Some(step) = figures::ramp(r, cap).into_iter().find(|s| s.first_failed) {
                if let Some(c) = figures::cluster_cpu(step.run, &cap.cluster) {
                    parts.push(format!(
                        "{} averaged {} at its first failed step ({})",
                        cluster_name(r, &cap.cluster),
                        pct(c.mean),
                        rate_u(step.target)
                    ));
                }
            }
        }
    }
    if parts.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "CPU, as a share of what each worker may use: {}.",
        parts.join("; ")
    )]
}

/// The shoot-out: the winner on p99 when there is one, ties when rounds overlap.
pub fn policy_findings(r: &Results) -> Vec<String> {
    let Some(exp) = &r.experiment else {
        return Vec::new();
    };
    let ps = &exp.policies;
    let Some(po) = order_policies(ps) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let best = &ps[po.order[0]];
    let label = |p: &PolicyResult| p.label.clone();
    if ps.len() == 1 {
        out.push(format!(
            "Only one policy ran ({}): p99 {}; nothing to compare it with.",
            label(best),
            ms_u(best.latency.p99_ms)
        ));
        return out;
    }
    if po.rounds < 2 {
        out.push(format!(
            "Each policy ran a single round, so there is no spread to judge noise. Lowest p99: {} ({}), then {} ({}); \
             this is one sample, not a ranking.",
            label(best),
            ms_u(best.latency.p99_ms),
            label(&ps[po.order[1]]),
            ms_u(ps[po.order[1]].latency.p99_ms)
        ));
    } else if po.tied.is_empty() {
        let second = &ps[po.order[1]];
        out.push(format!(
            "On p99, {} won the shoot-out: {} against {} for the runner-up, {} ({} lower). Over {} rounds its \
             per-round p99 ({}) never overlapped another policy's.",
            label(best),
            ms_u(best.latency.p99_ms),
            ms_u(second.latency.p99_ms),
            label(second),
            pct(1.0 - best.latency.p99_ms / second.latency.p99_ms),
            po.rounds,
            range_text(best),
        ));
    } else {
        let tied: Vec<String> = po
            .tied
            .iter()
            .map(|&i| {
                format!(
                    "{} ({}, rounds {})",
                    label(&ps[i]),
                    ms_u(ps[i].latency.p99_ms),
                    range_text(&ps[i])
                )
            })
            .collect();
        let mut s = format!(
            "No single policy won on p99. The lowest merged p99 was {}'s ({}, rounds {}), but {} {} within noise of \
             it: the per-round p99 ranges overlap over {} rounds.",
            label(best),
            ms_u(best.latency.p99_ms),
            range_text(best),
            tied.join(" and "),
            if tied.len() == 1 { "is" } else { "are" },
            po.rounds,
        );
        // The best policy outside the tied group, and whether it is clearly behind all of them.
        let group: Vec<usize> = std::iter::once(po.order[0])
            .chain(po.tied.iter().copied())
            .collect();
        if let Some(&next) = po.order.iter().find(|i| !group.contains(i)) {
            let clear = figures::round_range(&ps[next].p99_by_round_ms).is_some_and(|nr| {
                group.iter().all(|&g| {
                    figures::round_range(&ps[g].p99_by_round_ms).is_some_and(|gr| gr.1 < nr.0)
                })
            });
            if clear {
                s.push_str(&format!(
                    " Together they beat the next policy, {} (p99 {}, rounds {}), whose rounds were all slower.",
                    label(&ps[next]),
                    ms_u(ps[next].latency.p99_ms),
                    range_text(&ps[next])
                ));
            }
        }
        out.push(s);
    }
    let worst = &ps[*po.order.last().expect("non-empty")];
    out.push(format!(
        "Worst p99: {}, with {}, {} the best.",
        label(worst),
        ms_u(worst.latency.p99_ms),
        times(worst.latency.p99_ms / best.latency.p99_ms)
    ));
    // The seed's own design, judged on the same footing.
    if let Some((i, seed)) = ps
        .iter()
        .enumerate()
        .find(|(_, p)| p.policy == "lowest-cpu" && p.telemetry.contains("cloudwatch"))
    {
        let mut s = if i == po.order[0] {
            format!("The seed's design, {}, had the lowest p99.", label(seed))
        } else if po.tied.contains(&i) {
            format!(
                "The seed's design, {}, is within noise of the best.",
                label(seed)
            )
        } else {
            format!(
                "The seed's design (lowest CPU on CloudWatch-like telemetry), {}, had p99 {}, {} the best.",
                label(seed),
                ms_u(seed.latency.p99_ms),
                times(seed.latency.p99_ms / best.latency.p99_ms)
            )
        };
        if let Some((sh, ratio)) = figures::busiest(&seed.shares) {
            if ratio > 1.5 {
                s.push_str(&format!(
                    " Its busiest worker, {}, got {} of the requests for {} of the capacity ({}): sending everything \
                     to the apparently least-loaded worker on stale data herds traffic.",
                    sh.instance_id,
                    pct(sh.share_of_requests),
                    pct(sh.share_of_capacity),
                    times(ratio)
                ));
            }
        }
        out.push(s);
    }
    let with_errors: Vec<String> = ps
        .iter()
        .filter(|p| p.errors > 0)
        .map(|p| format!("{} ({} errors)", label(p), count(p.errors)))
        .collect();
    if !with_errors.is_empty() {
        out.push(format!(
            "Policies with failed requests (their p99 covers successful and failed requests alike): {}.",
            with_errors.join(", ")
        ));
    }
    let sat: Vec<&str> = r
        .runs
        .iter()
        .filter(|x| x.kind == RunKind::Shootout && x.generator.saturated)
        .map(|x| x.name.as_str())
        .collect();
    if !sat.is_empty() {
        out.push(format!(
            "Caution: the load generator was saturated in shoot-out rounds {}; latency there includes waiting in the generator.",
            name_list(&sat)
        ));
    }
    out
}

/// Open-model runs that fell short of their schedule.
pub fn schedule_findings(r: &Results) -> Vec<String> {
    let short: Vec<String> = r
        .runs
        .iter()
        .filter(|x| x.kind != RunKind::Capacity)
        .filter_map(|x| {
            let t = x.target_rate?;
            (t > 0.0 && (x.achieved_rate < 0.95 * t || x.unsent_requests > 0)).then(|| {
                format!(
                    "{} achieved {} of its {} target ({} late, {} never sent)",
                    x.name,
                    rate_u(x.achieved_rate),
                    rate_u(t),
                    count(x.late_requests),
                    count(x.unsent_requests)
                )
            })
        })
        .collect();
    if short.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "Runs that fell behind their schedule (their latency counts from the intended send time, so the delay is in it): {}.",
        short.join("; ")
    )]
}

/// The conclusion, paragraph by paragraph.
pub fn conclusion(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    if !saturated_runs(r).is_empty() {
        out.push(
            "Warning: the load generator was saturated in some runs (see the top of this report); the figures from \
             those runs are bounds, not measurements of the servers."
                .to_owned(),
        );
    }
    out.extend(capacity_findings(r));
    out.extend(headline_findings(r));
    out.extend(cpu_findings(r));
    out.extend(policy_findings(r));
    out.extend(schedule_findings(r));
    let errors: u64 = r.runs.iter().map(|x| x.errors.total()).sum();
    if errors == 0 && !r.runs.is_empty() {
        out.push("No request failed in any run.".into());
    }
    if out.is_empty() {
        out.push("The file holds no runs, so there is nothing to conclude.".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample;

    fn cap(cluster: &str, s: f64, f: Option<f64>) -> Capacity {
        Capacity {
            cluster: cluster.into(),
            route: format!("/cluster{cluster}"),
            sustained_rate: s,
            failed_rate: f,
            sustained_fraction: 0.97,
            p99_bound_ms: 200.0,
            runs: vec![],
        }
    }

    #[test]
    fn capacity_is_ranked_only_when_brackets_separate() {
        let caps = [cap("2", 750.0, Some(800.0)), cap("1", 450.0, Some(500.0))];
        match order_capacity(&caps).unwrap() {
            CapacityOrder::Clear { first, others } => {
                assert_eq!(first.cluster, "1");
                assert_eq!(others[0].cluster, "2");
            }
            o => panic!("{o:?}"),
        }
        // Cluster 1 failed at 500, a rate cluster 2 never sustained: overlapping brackets.
        let caps = [cap("1", 450.0, Some(500.0)), cap("2", 480.0, Some(520.0))];
        assert!(matches!(
            order_capacity(&caps).unwrap(),
            CapacityOrder::Unresolved { lowest, .. } if lowest.cluster == "1"
        ));
        let caps = [cap("1", 450.0, None), cap("2", 480.0, None)];
        assert_eq!(order_capacity(&caps).unwrap(), CapacityOrder::NoneFailed);
        // A cluster that never failed above another's failure is clearly bigger.
        let caps = [cap("1", 450.0, Some(500.0)), cap("2", 900.0, None)];
        assert!(matches!(
            order_capacity(&caps).unwrap(),
            CapacityOrder::Clear { .. }
        ));
        assert!(order_capacity(&caps[..1]).is_none());
    }

    #[test]
    fn capacity_wording_names_the_first_to_saturate_and_by_how_much() {
        let r = sample::experiment();
        let text = capacity_findings(&r).join("\n");
        assert!(
            text.contains("Cluster 1 (5 × t2.micro) saturated first: it sustained 450 req/s and failed at 500 req/s"),
            "{text}"
        );
        assert!(
            text.contains(
                "Cluster 2 (4 × t2.large) sustained 750 req/s (failed at 800 req/s): 1.67× as much"
            ),
            "{text}"
        );
        assert!(text.contains("The seed's expectation holds"), "{text}");
        // From CPU: 4 × 0.2 cores vs 5 × 0.1 cores at 1 ms per request.
        assert!(text.contains("should manage 1.60× the rate"), "{text}");
    }

    #[test]
    fn overlapping_ramps_are_reported_as_unresolved() {
        let mut r = sample::experiment();
        let exp = r.experiment.as_mut().unwrap();
        exp.capacity[1].sustained_rate = 480.0;
        exp.capacity[1].failed_rate = Some(520.0);
        let text = capacity_findings(&r).join("\n");
        assert!(
            text.contains("cannot say which cluster saturates first"),
            "{text}"
        );
        assert!(text.contains("neither confirmed nor refuted"), "{text}");
        assert!(!text.contains("saturated first"), "{text}");
    }

    fn policy(label: &str, p99: f64, rounds: &[f64]) -> PolicyResult {
        let mut p = sample::policy(label, "inband", p99);
        p.latency.p99_ms = p99;
        p.p99_by_round_ms = rounds.to_vec();
        p
    }

    #[test]
    fn a_policy_wins_only_when_its_rounds_clear_the_others() {
        let ps = [
            policy("round-robin", 900.0, &[850.0, 950.0]),
            policy("cpu-aware", 20.0, &[19.0, 21.0]),
            policy("least-outstanding", 28.0, &[26.0, 30.0]),
        ];
        let po = order_policies(&ps).unwrap();
        assert_eq!(po.order, vec![1, 2, 0]);
        assert!(po.tied.is_empty());
        let mut r = sample::experiment();
        r.experiment.as_mut().unwrap().policies = ps.to_vec();
        let text = policy_findings(&r).join("\n");
        assert!(
            text.contains("On p99, cpu-aware won the shoot-out: 20.0 ms against 28.0 ms for the runner-up, least-outstanding (29% lower)"),
            "{text}"
        );
        assert!(
            text.contains("Worst p99: round-robin, with 900 ms, 45.0× the best."),
            "{text}"
        );
    }

    #[test]
    fn overlapping_rounds_are_within_noise() {
        let ps = [
            policy("cpu-aware", 20.0, &[19.0, 23.0]),
            policy("p2c-ewma", 22.0, &[21.0, 24.0]),
            policy("least-outstanding", 28.0, &[26.0, 30.0]),
        ];
        let po = order_policies(&ps).unwrap();
        assert_eq!(po.tied, vec![1]);
        let mut r = sample::experiment();
        r.experiment.as_mut().unwrap().policies = ps.to_vec();
        let text = policy_findings(&r).join("\n");
        assert!(text.contains("No single policy won on p99"), "{text}");
        assert!(
            text.contains("p2c-ewma (22.0 ms, rounds 21.0–24.0 ms) is within noise"),
            "{text}"
        );
        assert!(
            text.contains("Together they beat the next policy, least-outstanding"),
            "{text}"
        );
        assert!(!text.contains(" won the shoot-out"), "{text}");
    }

    #[test]
    fn a_single_round_is_not_a_ranking() {
        let ps = [policy("a", 20.0, &[20.0]), policy("b", 40.0, &[40.0])];
        let mut r = sample::experiment();
        r.experiment.as_mut().unwrap().policies = ps.to_vec();
        let text = policy_findings(&r).join("\n");
        assert!(text.contains("single round"), "{text}");
        assert!(text.contains("not a ranking"), "{text}");
        assert!(!text.contains("won"), "{text}");
    }

    #[test]
    fn the_seeds_design_is_judged_and_herding_shown() {
        let r = sample::experiment();
        let text = policy_findings(&r).join("\n");
        assert!(
            text.contains("The seed's design (lowest CPU on CloudWatch-like telemetry), lowest-cpu (cloudwatch, emulated), had p99"),
            "{text}"
        );
        assert!(text.contains("herds traffic"), "{text}");
    }

    #[test]
    fn saturated_generator_is_warned_about() {
        let mut r = sample::experiment();
        assert!(warnings(&r).is_empty(), "{:?}", warnings(&r));
        r.runs[0].generator.saturated = true;
        r.runs[0].generator.cpu_utilization = 0.99;
        let w = warnings(&r);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("load generator was saturated in 1 of"),
            "{}",
            w[0]
        );
        assert!(w[0].contains("99%"), "{}", w[0]);
        assert!(conclusion(&r)[0].starts_with("Warning: the load generator was saturated"));
    }

    #[test]
    fn the_seeds_average_is_called_inverse_throughput() {
        let r = sample::experiment();
        let text = headline_findings(&r).join("\n");
        assert!(
            text.contains("that is 1 / throughput, not latency"),
            "{text}"
        );
        assert!(text.contains("single run"), "{text}");
        assert!(!text.contains("faster"), "{text}");
    }
}
