//! The report's verdicts, worded from the numbers. Each claim is made only as far as the data
//! carries it: a ramp brackets a cluster's capacity between the highest step it sustained and
//! the first it failed, so two clusters are ranked only when the brackets do not overlap;
//! fulcrum is "ahead" of the peers in a scenario only when its per-round p99 range clears every
//! peer's (the verdict is the `Analysis`'s; this only words it); a single run has no spread, so
//! it is described, never ranked.

use fulcrum_loadgen::results::{Capacity, Model, Results, Run, RunKind};

use crate::analysis::{Analysis, ContenderFigures, ScenarioAnalysis, Verdict, KEPT_UP_SHARE};
use crate::figures::{self, cluster_info, cluster_name, same_rate};
use crate::units::{count, counted, ms_u, pct, rate_u, times};

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

/// The shoot-out: peers that did not run, then a paragraph per scenario.
pub fn shootout_findings(a: &Analysis<'_>) -> Vec<String> {
    let mut out: Vec<String> = a
        .missing_peers
        .iter()
        .map(|p| {
            format!(
                "{} ({}) did not run: {}; no scenario compares fulcrum with it.",
                p.name,
                p.policy,
                p.missing.as_deref().unwrap_or("no reason recorded")
            )
        })
        .collect();
    out.extend(a.scenarios.iter().map(scenario_finding));
    out
}

/// One scenario: fulcrum's default against the best peer and the verdict, then who did not
/// keep up and whether the generator did.
pub fn scenario_finding(s: &ScenarioAnalysis<'_>) -> String {
    let mut text = comparison_text(s);
    if let Some(top) = s.contenders.first() {
        let top_is_compared = [s.fulcrum_default, s.best_peer].contains(&Some(0));
        if !top_is_compared && !top.round_p99_ms.is_empty() {
            text.push_str(&format!(
                " The lowest median p99 of all contenders was {}'s, {}.",
                top.label(),
                ms_u(top.median_p99_ms)
            ));
        }
    }
    text.push(' ');
    text.push_str(&kept_up_text(s));
    if !s.saturated_rounds.is_empty() {
        text.push_str(&format!(
            " Caution: the load generator was saturated in rounds {}; latency there includes waiting in the generator.",
            name_list(&s.saturated_rounds)
        ));
    }
    text
}

/// `12.0 / 13.0 ms`: each round's p99.
fn rounds_text(c: &ContenderFigures<'_>) -> String {
    let v: Vec<String> = c
        .round_p99_ms
        .iter()
        .map(|x| crate::units::ms(*x))
        .collect();
    format!("{} ms", v.join(" / "))
}

fn median_text(c: &ContenderFigures<'_>) -> String {
    format!(
        "{} p99 {} (median of {}: {})",
        c.label(),
        ms_u(c.median_p99_ms),
        counted(c.round_p99_ms.len(), "round"),
        rounds_text(c)
    )
}

fn comparison_text(s: &ScenarioAnalysis<'_>) -> String {
    let name = &s.scenario.name;
    let (f, b, c) = match (s.fulcrum_default(), s.best_peer(), s.comparison) {
        (Some(f), Some(b), Some(c)) => (f, b, c),
        (Some(f), None, _) if !f.round_p99_ms.is_empty() => {
            return format!(
                "{name}: no peer balancer ran, so fulcrum is compared with nothing here: {}.",
                median_text(f)
            )
        }
        (_, Some(b), _) => {
            return format!(
            "{name}: no fulcrum contender has rounds to compare; the best peer, {}, had p99 {}.",
            b.label(),
            ms_u(b.median_p99_ms)
        )
        }
        _ => return format!("{name}: no contender has rounds to compare."),
    };
    let role = match s.peers().filter(|p| !p.round_p99_ms.is_empty()).count() {
        1 => "the only peer that ran",
        2 => "the better peer",
        _ => "the best peer",
    };
    format!(
        "{name}: {} vs {role}, {}, {} ({}): {}; {}.",
        median_text(f),
        b.label(),
        ms_u(b.median_p99_ms),
        rounds_text(b),
        times(c.ratio),
        verdict_text(c.verdict, f, b)
    )
}

fn verdict_text(v: Verdict, fulcrum: &ContenderFigures<'_>, best: &ContenderFigures<'_>) -> String {
    match v {
        // Lower latency bought by serving less is not a win.
        Verdict::Wins if !fulcrum.kept_up => {
            "each of fulcrum's rounds had a lower p99 than every round of every peer, but it did not keep up (see \
             below), so this is not a clean win"
                .into()
        }
        Verdict::Wins => {
            "fulcrum is ahead: each of its rounds had a lower p99 than every round of every peer".into()
        }
        Verdict::Ties => "within noise (the round ranges overlap): neither is ahead".into(),
        Verdict::Loses => format!(
            "fulcrum loses here: each of its rounds had a higher p99 than every round of {}",
            best.label()
        ),
        Verdict::Unjudged => {
            "with fewer than two rounds there is no spread to tell a difference from noise, so no verdict".into()
        }
    }
}

fn kept_up_text(s: &ScenarioAnalysis<'_>) -> String {
    let offered = rate_u(s.scenario.rate);
    if s.all_kept_up {
        return format!(
            "Every contender kept goodput at {} or more of the offered {offered} in every round, with no errors.",
            pct(KEPT_UP_SHARE)
        );
    }
    let short: Vec<String> = s
        .contenders
        .iter()
        .filter(|c| !c.kept_up)
        .map(|c| {
            let mut t = format!(
                "{} (worst round {} of offered",
                c.label(),
                pct(c.worst_goodput_share)
            );
            if c.errors > 0 {
                t.push_str(&format!(", {} errors", count(c.errors)));
            }
            t.push(')');
            t
        })
        .collect();
    format!(
        "Not every contender kept goodput at {} of the offered {offered} with no errors: {}; a p99 there covers \
         failed requests too.",
        pct(KEPT_UP_SHARE),
        short.join(", ")
    )
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
pub fn conclusion(r: &Results, shootout: Option<&Analysis<'_>>) -> Vec<String> {
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
    out.extend(shootout.map(shootout_findings).unwrap_or_default());
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

    fn findings(r: &Results) -> Vec<String> {
        shootout_findings(&Analysis::new(r).unwrap())
    }

    fn finding<'a>(all: &'a [String], scenario: &str) -> &'a str {
        all.iter()
            .find(|f| f.starts_with(&format!("{scenario}: ")))
            .unwrap_or_else(|| panic!("no finding for {scenario}: {all:#?}"))
    }

    #[test]
    fn each_scenario_compares_fulcrum_with_the_best_peer() {
        let r = sample::experiment();
        let all = findings(&r);
        assert_eq!(all.len(), 4);
        let steady = finding(&all, "steady");
        assert!(
            steady.starts_with(
                "steady: fulcrum adaptive p99 12.5 ms (median of 2 rounds: 12.0 / 13.0 ms) vs the better peer, \
                 haproxy leastconn, 13.5 ms (12.8 / 14.2 ms): 0.93×; within noise (the round ranges overlap): \
                 neither is ahead."
            ),
            "{steady}"
        );
        assert!(steady
            .contains("Every contender kept goodput at 95% or more of the offered 1,020 req/s"));
        let ant = finding(&all, "antagonist");
        assert!(ant.contains("fulcrum is ahead"), "{ant}");
        assert!(
            ant.contains("the better peer, haproxy leastconn, 26.5 ms"),
            "{ant}"
        );
        let rep = finding(&all, "replicas");
        assert!(
            rep.contains("fulcrum loses here: each of its rounds had a higher p99 than every round of nginx least_conn"),
            "{rep}"
        );
        // The best peer is already named, so it is not named again as the best of all.
        assert!(!rep.contains("lowest median p99 of all"), "{rep}");
    }

    #[test]
    fn a_tie_is_never_called_a_win() {
        let r = sample::experiment();
        let all = findings(&r);
        for s in ["steady", "heavy-tail"] {
            let f = finding(&all, s);
            assert!(f.contains("within noise"), "{f}");
            assert!(!f.contains("ahead:") && !f.contains("win"), "{f}");
        }
        // heavy-tail: fulcrum's median is the lower one, and it is still a tie.
        assert!(finding(&all, "heavy-tail").contains(": 0.90×; within noise"));
    }

    #[test]
    fn another_fulcrum_policy_on_top_is_named() {
        let r = sample::experiment();
        let all = findings(&r);
        let mut r2 = r.clone();
        let s = &mut r2.experiment.as_mut().unwrap().scenarios[0];
        s.contenders[1].rounds[0].p99_ms = 9.0;
        s.contenders[1].rounds[1].p99_ms = 10.0;
        let all2 = findings(&r2);
        assert!(
            finding(&all2, "steady").contains(
                "The lowest median p99 of all contenders was fulcrum p2c-ewma's, 9.50 ms."
            ),
            "{all2:#?}"
        );
        assert!(!finding(&all, "steady").contains("lowest median p99 of all"));
    }

    #[test]
    fn shortfalls_missing_peers_and_single_rounds_are_said() {
        let mut r = sample::experiment_missing_peer();
        let s = &mut r.experiment.as_mut().unwrap().scenarios[0];
        s.contenders[3].rounds[1].goodput = 0.9 * s.rate;
        s.contenders[3].errors = 12;
        let all = findings(&r);
        assert!(
            all[0].starts_with(
                "haproxy (leastconn) did not run: not installed (no haproxy on PATH); no scenario"
            ),
            "{}",
            all[0]
        );
        let steady = finding(&all, "steady");
        assert!(
            steady.contains("vs the only peer that ran, nginx least_conn"),
            "{steady}"
        );
        assert!(
            steady.contains("nginx least_conn (worst round 90% of offered, 12 errors)"),
            "{steady}"
        );
        let s = &mut r.experiment.as_mut().unwrap().scenarios[1];
        s.contenders[0].errors = 5;
        let ant = finding(&findings(&r), "antagonist").to_owned();
        assert!(ant.contains("but it did not keep up"), "{ant}");
        assert!(!ant.contains("fulcrum is ahead"), "{ant}");
        for c in &mut r.experiment.as_mut().unwrap().scenarios[1].contenders {
            c.rounds.truncate(1);
        }
        let all = findings(&r);
        let ant = finding(&all, "antagonist");
        assert!(ant.contains("no verdict"), "{ant}");
        assert!(!ant.contains("ahead"), "{ant}");
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
        assert!(conclusion(&r, None)[0].starts_with("Warning: the load generator was saturated"));
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
