//! The capacity ramps and what they decide: each cluster's steps, how the clusters rank (only
//! when their brackets do not overlap) and whether the seed's expectation — the cluster with
//! the least CPU saturates first — holds.

use fulcrum_loadgen::results::{Capacity, Run};

use super::cpu::CpuStats;
use super::{ClusterFigures, RunFigures};

/// Every ramp of the experiment and the verdicts on them.
#[derive(Debug)]
pub struct CapacityAnalysis<'a> {
    /// One per cluster ramped, in the experiment's order.
    pub ramps: Vec<Ramp<'a>>,
    /// How the clusters rank; `None` with fewer than two ramps.
    pub order: Option<CapacityOrder>,
    /// The seed's expectation against the ranking; `None` when the ramps never reached a
    /// limit, or a cluster's CPU-bound ceiling is unknown.
    pub expectation: Option<Expectation>,
}

/// One cluster's ramp.
#[derive(Debug)]
pub struct Ramp<'a> {
    /// What the experiment decided, with the criteria it decided by.
    pub capacity: &'a Capacity,
    /// The cluster's CPU-bound ceiling, from the deployment.
    pub ceiling_rps: Option<f64>,
    /// The highest sustained rate as a share of the ceiling.
    pub share_of_ceiling: Option<f64>,
    /// In order of target rate.
    pub steps: Vec<Step<'a>>,
    /// Steps (run names) in which the load generator ran out of CPU: they cap the ramp, not
    /// the cluster.
    pub saturated_steps: Vec<&'a str>,
}

/// One step of a ramp.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    pub run: &'a Run,
    pub target: f64,
    /// Achieved rate as a share of the target.
    pub achieved_share: f64,
    pub highest_sustained: bool,
    pub first_failed: bool,
    /// The ramped cluster's CPU during the step.
    pub cpu: Option<CpuStats>,
}

/// How the clusters' capacities compare; indexes are into `CapacityAnalysis::ramps`.
#[derive(Debug, PartialEq)]
pub enum CapacityOrder {
    /// `first` failed at a rate every other cluster sustained.
    Clear {
        first: usize,
        /// The rest, by sustained rate.
        others: Vec<Ranked>,
    },
    /// `lowest` sustained the least, but `overlapping`'s bracket overlaps it: the ramp's steps
    /// are too coarse (or it stopped too early) to say who saturates first.
    Unresolved { lowest: usize, overlapping: usize },
    /// No cluster failed a step: the ramp never reached a limit.
    NoneFailed,
}

/// A cluster ranked after the first to saturate.
#[derive(Debug, PartialEq)]
pub struct Ranked {
    pub ramp: usize,
    /// Its sustained rate over the first's; `None` when the first sustained no step at all.
    pub times_first: Option<f64>,
}

/// The seed's expectation against the ramps.
#[derive(Debug, PartialEq)]
pub enum Expectation {
    /// The cluster with the least CPU saturated first; `next` is the one ranked after it.
    Holds {
        first: usize,
        next: usize,
        /// `next`'s ceiling over `first`'s: the ratio CPU alone predicts.
        expected_ratio: f64,
        /// `next`'s sustained rate over `first`'s: a lower bound when `next` never failed.
        measured_ratio: f64,
    },
    /// Another cluster than `least_cpu` saturated first.
    Refuted { least_cpu: usize, first: usize },
    /// The ramps overlap: neither confirmed nor refuted.
    Undecided,
}

impl<'a> CapacityAnalysis<'a> {
    /// `None` when the file has no ramp.
    pub fn new(
        caps: &'a [Capacity],
        clusters: &[ClusterFigures<'_>],
        runs: &[RunFigures<'a>],
    ) -> Option<CapacityAnalysis<'a>> {
        if caps.is_empty() {
            return None;
        }
        let ramps: Vec<Ramp<'a>> = caps.iter().map(|c| Ramp::new(c, clusters, runs)).collect();
        let order = order_capacity(caps);
        let expectation = order.as_ref().and_then(|o| expectation(&ramps, o));
        Some(CapacityAnalysis {
            ramps,
            order,
            expectation,
        })
    }

    /// The criteria a step passed by, as the first ramp records them.
    pub fn criteria(&self) -> &'a Capacity {
        self.ramps[0].capacity
    }
}

impl<'a> Ramp<'a> {
    fn new(
        cap: &'a Capacity,
        clusters: &[ClusterFigures<'_>],
        runs: &[RunFigures<'a>],
    ) -> Ramp<'a> {
        let steps = steps(cap, runs);
        let ceiling_rps = clusters
            .iter()
            .find(|c| c.key == cap.cluster)
            .and_then(|c| c.ceiling_rps);
        Ramp {
            capacity: cap,
            ceiling_rps,
            share_of_ceiling: ceiling_rps.map(|c| cap.sustained_rate / c),
            saturated_steps: steps
                .iter()
                .filter(|s| s.run.generator.saturated)
                .map(|s| s.run.name.as_str())
                .collect(),
            steps,
        }
    }

    pub fn cluster(&self) -> &'a str {
        &self.capacity.cluster
    }

    pub fn highest_sustained(&self) -> Option<&Step<'a>> {
        self.steps.iter().find(|s| s.highest_sustained)
    }

    pub fn first_failed(&self) -> Option<&Step<'a>> {
        self.steps.iter().find(|s| s.first_failed)
    }
}

/// Matching rates from a ramp against the rates recorded in `Capacity` (both are f64).
fn same_rate(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

/// A ramp's steps in order of target rate.
fn steps<'a>(cap: &'a Capacity, runs: &[RunFigures<'a>]) -> Vec<Step<'a>> {
    let mut steps: Vec<Step<'a>> = cap
        .runs
        .iter()
        .filter_map(|name| runs.iter().find(|f| f.run.name == *name))
        .map(|f| {
            let run = f.run;
            let target = run.target_rate.unwrap_or(run.achieved_rate);
            Step {
                run,
                target,
                achieved_share: run.achieved_rate / target,
                highest_sustained: same_rate(target, cap.sustained_rate),
                first_failed: cap.failed_rate.is_some_and(|f| same_rate(target, f)),
                cpu: f.cpu_of(&cap.cluster),
            }
        })
        .collect();
    steps.sort_by(|a, b| a.target.total_cmp(&b.target));
    steps
}

fn upper(c: &Capacity) -> f64 {
    c.failed_rate.unwrap_or(f64::INFINITY)
}

/// Orders two or more clusters by capacity; `None` with fewer than two.
pub fn order_capacity(caps: &[Capacity]) -> Option<CapacityOrder> {
    if caps.len() < 2 {
        return None;
    }
    if caps.iter().all(|c| c.failed_rate.is_none()) {
        return Some(CapacityOrder::NoneFailed);
    }
    let mut by_rate: Vec<usize> = (0..caps.len()).collect();
    by_rate.sort_by(|&a, &b| {
        let (a, b) = (&caps[a], &caps[b]);
        a.sustained_rate
            .total_cmp(&b.sustained_rate)
            .then(upper(a).total_cmp(&upper(b)))
    });
    let (lowest, rest) = (by_rate[0], &by_rate[1..]);
    match rest
        .iter()
        .find(|&&o| caps[o].sustained_rate < upper(&caps[lowest]))
    {
        None => Some(CapacityOrder::Clear {
            first: lowest,
            others: rest
                .iter()
                .map(|&o| Ranked {
                    ramp: o,
                    times_first: (caps[lowest].sustained_rate > 0.0)
                        .then(|| caps[o].sustained_rate / caps[lowest].sustained_rate),
                })
                .collect(),
        }),
        Some(&o) => Some(CapacityOrder::Unresolved {
            lowest,
            overlapping: o,
        }),
    }
}

/// The expectation, from the CPU each cluster may use: the lowest ceiling should go first.
fn expectation(ramps: &[Ramp<'_>], order: &CapacityOrder) -> Option<Expectation> {
    let ceilings: Vec<f64> = ramps.iter().filter_map(|r| r.ceiling_rps).collect();
    if ceilings.len() < ramps.len() {
        return None;
    }
    let least_cpu = (0..ramps.len()).min_by(|&a, &b| ceilings[a].total_cmp(&ceilings[b]))?;
    match order {
        CapacityOrder::Clear { first, others } => {
            let (first, next) = (*first, others[0].ramp);
            Some(if ramps[least_cpu].cluster() == ramps[first].cluster() {
                Expectation::Holds {
                    first,
                    next,
                    expected_ratio: ceilings[next] / ceilings[first],
                    measured_ratio: ramps[next].capacity.sustained_rate
                        / ramps[first].capacity.sustained_rate,
                }
            } else {
                Expectation::Refuted { least_cpu, first }
            })
        }
        CapacityOrder::Unresolved { .. } => Some(Expectation::Undecided),
        CapacityOrder::NoneFailed => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Analysis;
    use crate::sample;

    fn cap(cluster: &str, s: f64, f: Option<f64>) -> Capacity {
        let mut c = sample::experiment().experiment.unwrap().capacity.remove(0);
        c.cluster = cluster.into();
        c.route = format!("/cluster{cluster}");
        c.sustained_rate = s;
        c.failed_rate = f;
        c.runs.clear();
        c
    }

    #[test]
    fn capacity_is_ranked_only_when_brackets_separate() {
        let caps = [cap("2", 750.0, Some(800.0)), cap("1", 450.0, Some(500.0))];
        match order_capacity(&caps).unwrap() {
            CapacityOrder::Clear { first, others } => {
                assert_eq!(caps[first].cluster, "1");
                assert_eq!(caps[others[0].ramp].cluster, "2");
            }
            o => panic!("{o:?}"),
        }
        // Cluster 1 failed at 500, a rate cluster 2 never sustained: overlapping brackets.
        let caps = [cap("1", 450.0, Some(500.0)), cap("2", 480.0, Some(520.0))];
        assert!(matches!(
            order_capacity(&caps).unwrap(),
            CapacityOrder::Unresolved { lowest, .. } if caps[lowest].cluster == "1"
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
    fn the_expectation_is_judged_from_ceilings_and_the_order() {
        let r = sample::experiment();
        let a = Analysis::new(&r);
        let c = a.capacity.as_ref().unwrap();
        // From CPU: 4 × 0.2 cores vs 5 × 0.1 cores at 1 ms per request.
        assert_eq!(
            c.expectation,
            Some(Expectation::Holds {
                first: 0,
                next: 1,
                expected_ratio: 800.0 / 500.0,
                measured_ratio: 750.0 / 450.0,
            })
        );
        assert_eq!(c.ramps[0].share_of_ceiling, Some(450.0 / 500.0));
        let failed = c.ramps[0].first_failed().unwrap();
        assert_eq!(failed.target, 500.0);
        assert!((failed.achieved_share - 0.9).abs() < 1e-12);

        let mut r = sample::experiment();
        let d = r.deployment.as_mut().unwrap();
        d.clusters[0].cores_per_instance = 0.4;
        let a = Analysis::new(&r);
        assert_eq!(
            a.capacity.unwrap().expectation,
            Some(Expectation::Refuted {
                least_cpu: 1,
                first: 0
            })
        );
    }
}
