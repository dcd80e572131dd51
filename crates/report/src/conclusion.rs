//! The report's verdicts in words. Every figure and verdict comes from the `Analysis`; this
//! only words them, and only as far as the data carries: a ramp brackets a cluster's capacity
//! between the highest step it sustained and the first it failed, so two clusters are ranked
//! only when the brackets do not overlap; fulcrum is "ahead" of the peers in a scenario only
//! when its per-round p99 range clears every peer's; a single run has no spread, so it is
//! described, never ranked.

use fulcrum_loadgen::results::Model;

use crate::analysis::{
    Analysis, CapacityAnalysis, CapacityOrder, ContenderFigures, Expectation, Ramp, Ranked,
    RunFigures, ScenarioAnalysis, Shootout, Verdict, KEPT_UP_SHARE,
};
use crate::units::{count, counted, error_kinds, ms_u, pct, rate_u, secs, times};

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
pub fn warnings(a: &Analysis<'_>) -> Vec<String> {
    let w = &a.warnings;
    let mut out = Vec::new();
    if !w.saturated.is_empty() {
        let names: Vec<&str> = w.saturated.iter().map(|x| x.name.as_str()).collect();
        out.push(format!(
            "The load generator was saturated in {} of {} runs ({}; its CPU peaked at {} of what it could use). \
             In those runs part of the latency is time requests waited inside the generator, and throughput may be \
             the generator's limit rather than the servers': read them as bounds, not measurements of the servers.",
            w.saturated.len(),
            a.results.runs.len(),
            name_list(&names),
            pct(w.saturated_peak),
        ));
    }
    if !w.failing.is_empty() {
        out.push(format!(
            "Requests failed outside the capacity ramp (where failing steps are expected): {}.",
            w.failing
                .iter()
                .map(|run| format!("{}: {}", run.name, error_kinds(&run.errors)))
                .collect::<Vec<_>>()
                .join("; ")
        ));
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

/// Capacity and the seed's expectation (micro saturates first).
pub fn capacity_findings(a: &Analysis<'_>) -> Vec<String> {
    let Some(c) = &a.capacity else {
        return Vec::new();
    };
    if let [only] = c.ramps.as_slice() {
        return vec![single_ramp_text(a, only)];
    }
    let mut out = Vec::new();
    match &c.order {
        Some(CapacityOrder::Clear { first, others }) => {
            out.push(clear_order_text(a, c, *first, others));
            out.extend(expectation_text(a, c));
        }
        Some(CapacityOrder::Unresolved {
            lowest,
            overlapping,
        }) => {
            out.push(unresolved_text(
                a,
                &c.ramps[*lowest],
                &c.ramps[*overlapping],
            ));
            out.extend(expectation_text(a, c));
        }
        Some(CapacityOrder::NoneFailed) => out.push(none_failed_text(a, c)),
        None => {}
    }
    // A generator that ran out of CPU during a ramp caps that ramp, not the cluster.
    for ramp in c.ramps.iter().filter(|x| !x.saturated_steps.is_empty()) {
        out.push(format!(
            "Caution: the load generator was saturated during {}'s ramp ({}), so its measured limit may be the \
             generator's.",
            a.cluster_name(ramp.cluster()),
            name_list(&ramp.saturated_steps)
        ));
    }
    out.into_iter().map(sentence_case).collect()
}

fn single_ramp_text(a: &Analysis<'_>, ramp: &Ramp<'_>) -> String {
    let c = ramp.capacity;
    match c.failed_rate {
        Some(f) => format!(
            "{} sustained {} and first failed at {}.",
            a.cluster_name(&c.cluster),
            rate_u(c.sustained_rate),
            rate_u(f)
        ),
        None => format!(
            "{} sustained every step of its ramp, up to {}: its limit is higher.",
            a.cluster_name(&c.cluster),
            rate_u(c.sustained_rate)
        ),
    }
}

/// Who saturated first, where and why, then every other cluster against it.
fn clear_order_text(
    a: &Analysis<'_>,
    c: &CapacityAnalysis<'_>,
    first: usize,
    others: &[Ranked],
) -> String {
    let f = &c.ramps[first];
    let mut s = format!(
        "{} saturated first: it sustained {} and failed at {} ({}), a rate that {} sustained.",
        a.cluster_name(f.cluster()),
        rate_u(f.capacity.sustained_rate),
        rate_u(f.capacity.failed_rate.expect("a clear first has failed")),
        failed_step_text(f).unwrap_or_else(|| "step not in the file".into()),
        a.cluster_name(c.ramps[others[0].ramp].cluster()),
    );
    for o in others {
        s.push_str(&ranked_text(a, &c.ramps[o.ramp], o.times_first));
    }
    s
}

/// Why the first failed step failed, from that step's own numbers.
fn failed_step_text(ramp: &Ramp<'_>) -> Option<String> {
    let step = ramp.first_failed()?;
    let run = step.run;
    let mut why = vec![format!(
        "achieved {}, {} of it",
        rate_u(run.achieved_rate),
        pct(step.achieved_share)
    )];
    why.push(format!("p99 {}", ms_u(run.latency.p99_ms)));
    if run.errors.total() > 0 {
        why.push(format!("{} errors", count(run.errors.total())));
    }
    Some(why.join(", "))
}

fn ranked_text(a: &Analysis<'_>, ramp: &Ramp<'_>, times_first: Option<f64>) -> String {
    let c = ramp.capacity;
    let ratio = |unit: &str| match times_first {
        Some(t) => format!("{} {unit}", times(t)),
        None => "while the first sustained no step at all".into(),
    };
    match c.failed_rate {
        Some(f) => format!(
            " {} sustained {} (failed at {}): {}.",
            a.cluster_name(&c.cluster),
            rate_u(c.sustained_rate),
            rate_u(f),
            ratio("as much")
        ),
        None => format!(
            " {} sustained every step up to {} without failing, so it has at least {}.",
            a.cluster_name(&c.cluster),
            rate_u(c.sustained_rate),
            ratio("the capacity")
        ),
    }
}

fn unresolved_text(a: &Analysis<'_>, lowest: &Ramp<'_>, overlapping: &Ramp<'_>) -> String {
    let (l, o) = (lowest.capacity, overlapping.capacity);
    format!(
        "The ramp cannot say which cluster saturates first. {} sustained the lower rate ({} against {}), \
         but its bracket reaches {} while {} sustained {}: the capacities overlap within the ramp's step size. \
         A finer ramp would separate them.",
        a.cluster_name(&l.cluster),
        rate_u(l.sustained_rate),
        rate_u(o.sustained_rate),
        l.failed_rate
            .map(rate_u)
            .unwrap_or_else(|| "beyond the ramp".into()),
        a.cluster_name(&o.cluster),
        rate_u(o.sustained_rate),
    )
}

fn none_failed_text(a: &Analysis<'_>, c: &CapacityAnalysis<'_>) -> String {
    format!(
        "No cluster failed a step of its ramp ({}): the ramp never reached a limit, so this run cannot say which \
         cluster saturates first.",
        c.ramps
            .iter()
            .map(|r| format!(
                "{} up to {}",
                a.cluster_name(r.cluster()),
                rate_u(r.capacity.sustained_rate)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn expectation_text(a: &Analysis<'_>, c: &CapacityAnalysis<'_>) -> Option<String> {
    let name = |i: usize| a.cluster_name(c.ramps[i].cluster());
    Some(match c.expectation.as_ref()? {
        Expectation::Holds {
            first,
            next,
            expected_ratio,
            measured_ratio,
        } => format!(
            "The seed's expectation holds: the cluster with less CPU reached its limit first. From CPU alone \
             {} should manage {} the rate of {}; the ramp measured {}{}. {} reached {} of its CPU-bound ceiling, {} {}.",
            name(*next),
            times(*expected_ratio),
            name(*first),
            times(*measured_ratio),
            if c.ramps[*next].capacity.failed_rate.is_none() {
                " (a lower bound)"
            } else {
                ""
            },
            name(*first),
            pct(c.ramps[*first].share_of_ceiling.unwrap_or(f64::NAN)),
            name(*next),
            pct(c.ramps[*next].share_of_ceiling.unwrap_or(f64::NAN)),
        ),
        Expectation::Refuted { least_cpu, first } => format!(
            "The seed's expectation does not hold here: {} has the least CPU, yet {} reached its limit first.",
            name(*least_cpu),
            name(*first),
        ),
        Expectation::Undecided => {
            "So the seed's expectation (the smaller cluster saturates first) is neither confirmed nor refuted by this run."
                .into()
        }
    })
}

/// The seed's benchmark (or plain bench runs): numbers per cluster, the seed's "average"
/// next to real latency, and no ranking from single runs.
pub fn headline_findings(a: &Analysis<'_>) -> Vec<String> {
    let mut out: Vec<String> = a.headline().map(|f| headline_run_text(a, f)).collect();
    if a.single_runs_compared {
        out.push(single_runs_text(a));
    }
    out
}

fn headline_run_text(a: &Analysis<'_>, f: &RunFigures<'_>) -> String {
    let run = f.run;
    let target = f
        .cluster
        .map(|c| a.cluster_name(&c.id.to_string()))
        .unwrap_or_else(|| run.url.clone());
    let mut s = format!(
        "Run {} ({}) on {}: {} responses in {}, {}; p50 {}, p99 {}, max {}; errors: {}.",
        run.name,
        crate::units::model(&run.model),
        target,
        count(run.responses),
        secs(run.duration_s),
        rate_u(run.achieved_rate),
        ms_u(run.latency.p50_ms),
        ms_u(run.latency.p99_ms),
        ms_u(run.latency.max_ms),
        error_kinds(&run.errors),
    );
    if let (Model::Closed { concurrency, .. }, Some(avg), Some(ratio)) =
        (&run.model, f.seed_average_ms, f.p50_over_seed_average)
    {
        s.push_str(&format!(
            " The seed's \"average time per request\" (total time / requests) would be {} here: that is \
             1 / throughput, not latency. With {} requests in flight the median request took {}, {} longer.",
            ms_u(avg),
            concurrency,
            ms_u(run.latency.p50_ms),
            times(ratio),
        ));
    }
    s
}

/// Several clusters measured once each: say what the numbers are, not who won.
fn single_runs_text(a: &Analysis<'_>) -> String {
    let groups: Vec<String> = a
        .latency_rows
        .iter()
        .filter_map(|row| {
            Some(format!(
                "{} p99 {}",
                a.cluster_name(row.cluster?),
                ms_u(row.latency.p99_ms)
            ))
        })
        .collect();
    format!(
        "At this load {}. Each figure comes from a single run, so there is no spread to tell a real difference \
         from noise: {}",
        groups.join(", "),
        if a.capacity.is_some() {
            "the capacity ramp is the comparison to rely on."
        } else {
            "repeat the runs (fulcrum experiment does) before ranking the clusters."
        }
    )
}

/// `lead: a; b; c.`, or nothing when there are no parts.
fn listed(lead: &str, parts: &[String]) -> Option<String> {
    (!parts.is_empty()).then(|| format!("{lead}: {}.", parts.join("; ")))
}

/// CPU per cluster in the headline runs and at each ramp's limit.
pub fn cpu_findings(a: &Analysis<'_>) -> Option<String> {
    let mut parts: Vec<String> = a
        .headline()
        .flat_map(|f| {
            f.cluster_cpu.iter().map(move |c| {
                format!(
                    "{} averaged {} of its CPU (peak {}) during {}",
                    a.cluster_name(c.cluster),
                    pct(c.stats.mean),
                    pct(c.stats.peak),
                    f.run.name
                )
            })
        })
        .collect();
    for ramp in a.capacity.iter().flat_map(|c| &c.ramps) {
        let Some(step) = ramp.first_failed() else {
            continue;
        };
        if let Some(cpu) = step.cpu {
            parts.push(format!(
                "{} averaged {} at its first failed step ({})",
                a.cluster_name(ramp.cluster()),
                pct(cpu.mean),
                rate_u(step.target)
            ));
        }
    }
    listed("CPU, as a share of what each worker may use", &parts)
}

/// The shoot-out: peers that did not run, then a paragraph per scenario.
pub fn shootout_findings(a: &Shootout<'_>) -> Vec<String> {
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
        verdict_text(c.verdict, b)
    )
}

fn verdict_text(v: Verdict, best: &ContenderFigures<'_>) -> String {
    match v {
        Verdict::AheadButShort => {
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
pub fn schedule_findings(a: &Analysis<'_>) -> Option<String> {
    let short: Vec<String> = a
        .warnings
        .behind_schedule
        .iter()
        .map(|(x, target)| {
            format!(
                "{} achieved {} of its {} target ({} late, {} never sent)",
                x.name,
                rate_u(x.achieved_rate),
                rate_u(*target),
                count(x.late_requests),
                count(x.unsent_requests)
            )
        })
        .collect();
    listed(
        "Runs that fell behind their schedule (their latency counts from the intended send time, so the delay is in it)",
        &short,
    )
}

/// The conclusion, paragraph by paragraph.
pub fn conclusion(a: &Analysis<'_>) -> Vec<String> {
    let mut out = Vec::new();
    if !a.warnings.saturated.is_empty() {
        out.push(
            "Warning: the load generator was saturated in some runs (see the top of this report); the figures from \
             those runs are bounds, not measurements of the servers."
                .to_owned(),
        );
    }
    out.extend(capacity_findings(a));
    out.extend(headline_findings(a));
    out.extend(cpu_findings(a));
    out.extend(
        a.shootout
            .as_ref()
            .map(shootout_findings)
            .unwrap_or_default(),
    );
    out.extend(schedule_findings(a));
    if a.warnings.errors == 0 && !a.results.runs.is_empty() {
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

    #[test]
    fn capacity_wording_names_the_first_to_saturate_and_by_how_much() {
        let r = sample::experiment();
        let text = capacity_findings(&Analysis::new(&r)).join("\n");
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
        let text = capacity_findings(&Analysis::new(&r)).join("\n");
        assert!(
            text.contains("cannot say which cluster saturates first"),
            "{text}"
        );
        assert!(text.contains("neither confirmed nor refuted"), "{text}");
        assert!(!text.contains("saturated first"), "{text}");
    }

    fn findings(r: &fulcrum_loadgen::results::Results) -> Vec<String> {
        shootout_findings(&Shootout::new(r).unwrap())
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
        let w = warnings(&Analysis::new(&r));
        assert!(w.is_empty(), "{w:?}");
        r.runs[0].generator.saturated = true;
        r.runs[0].generator.cpu_utilization = 0.99;
        let a = Analysis::new(&r);
        let w = warnings(&a);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("load generator was saturated in 1 of"),
            "{}",
            w[0]
        );
        assert!(w[0].contains("99%"), "{}", w[0]);
        assert!(conclusion(&a)[0].starts_with("Warning: the load generator was saturated"));
    }

    #[test]
    fn the_seeds_average_is_called_inverse_throughput() {
        let r = sample::experiment();
        let text = headline_findings(&Analysis::new(&r)).join("\n");
        assert!(
            text.contains("that is 1 / throughput, not latency"),
            "{text}"
        );
        assert!(text.contains("single run"), "{text}");
        assert!(!text.contains("faster"), "{text}");
    }
}
