//! The shoot-out's figures and verdicts: per scenario, the contenders in order of median
//! per-round p99, the best peer balancer, fulcrum's default contender and a verdict on the two.

use std::collections::BTreeMap;

use fulcrum_loadgen::results::{
    median, ContenderResult, PeerInfo, Results, RunKind, ScenarioResult, Share,
};

use super::run_by_name;

/// Goodput a contender must keep, as a share of the offered rate, to count as keeping up.
pub const KEPT_UP_SHARE: f64 = 0.95;

/// A cluster given at least this much more of the requests than its share of capacity
/// (one percentage point) is worth naming.
pub const NOTABLE_OVER_SHARE: f64 = 0.01;

/// The balancer name fulcrum's own contenders carry.
pub const FULCRUM: &str = "fulcrum";

/// The whole shoot-out.
#[derive(Debug)]
pub struct Shootout<'a> {
    /// Rounds per contender the experiment asked for.
    pub rounds: u32,
    /// The peers looked for.
    pub peers: &'a [PeerInfo],
    /// Peers that did not run, with the reason in `missing`.
    pub missing_peers: Vec<&'a PeerInfo>,
    pub scenarios: Vec<ScenarioAnalysis<'a>>,
}

/// One scenario's contenders and verdict.
#[derive(Debug)]
pub struct ScenarioAnalysis<'a> {
    pub scenario: &'a ScenarioResult,
    /// Best (lowest median p99) first; contenders without rounds last.
    pub contenders: Vec<ContenderFigures<'a>>,
    /// Index into `contenders`: the peer (balancer other than fulcrum) with the lowest median
    /// p99.
    pub best_peer: Option<usize>,
    /// Index into `contenders`: fulcrum's default, which by the experiment's convention is the
    /// first contender in `ScenarioResult::contenders` whose balancer is `fulcrum`.
    pub fulcrum_default: Option<usize>,
    /// fulcrum's default against the best peer, when both ran.
    pub comparison: Option<Comparison>,
    /// Every contender kept goodput ≥ `KEPT_UP_SHARE` of the offered rate in every round, with
    /// no errors.
    pub all_kept_up: bool,
    /// Rounds (run names) in which the load generator ran out of CPU.
    pub saturated_rounds: Vec<&'a str>,
}

/// One contender's figures in a scenario.
#[derive(Debug)]
pub struct ContenderFigures<'a> {
    pub contender: &'a ContenderResult,
    /// Each round's p99, in round order.
    pub round_p99_ms: Vec<f64>,
    /// Lowest and highest per-round p99.
    pub p99_range: Option<(f64, f64)>,
    pub median_p99_ms: f64,
    pub median_p50_ms: f64,
    /// The highest of the rounds' maxima.
    pub max_ms: f64,
    /// Mean over rounds of each round's goodput (2xx/3xx per second), and that as a share of
    /// the offered rate.
    pub goodput: f64,
    pub goodput_share: f64,
    /// The lowest round's goodput as a share of the offered rate.
    pub worst_goodput_share: f64,
    pub errors: u64,
    /// Goodput ≥ `KEPT_UP_SHARE` of the offered rate in every round, and no errors.
    pub kept_up: bool,
    /// The cluster given the most requests beyond its share of capacity.
    pub over_share: Option<ClusterShare>,
}

impl ContenderFigures<'_> {
    pub fn label(&self) -> &str {
        &self.contender.label
    }

    pub fn is_fulcrum(&self) -> bool {
        self.contender.balancer == FULCRUM
    }
}

/// A cluster's workers together: their share of requests and of capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterShare {
    pub cluster: String,
    pub share_of_requests: f64,
    pub share_of_capacity: f64,
    /// Over its share of capacity by `NOTABLE_OVER_SHARE` or more.
    pub notable: bool,
}

/// fulcrum's default contender against the best peer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// Median p99 of fulcrum's default / median p99 of the best peer.
    pub ratio: f64,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// fulcrum's per-round p99 range lies entirely below every peer's, and it kept up.
    Wins,
    /// Its range lies below every peer's, but it did not keep up: lower latency bought by
    /// serving less is not a win.
    AheadButShort,
    /// Neither: its range overlaps the best peer's, or another peer's it does not clear
    /// (within noise).
    Ties,
    /// Its range lies entirely above the best peer's.
    Loses,
    /// Fewer than two rounds on one side: no spread to tell a difference from noise.
    Unjudged,
}

impl<'a> Shootout<'a> {
    /// `None` when the file has no experiment.
    pub fn new(r: &'a Results) -> Option<Shootout<'a>> {
        let exp = r.experiment.as_ref()?;
        Some(Shootout {
            rounds: exp.rounds,
            peers: &exp.peers,
            missing_peers: exp.peers.iter().filter(|p| p.missing.is_some()).collect(),
            scenarios: exp
                .scenarios
                .iter()
                .map(|s| ScenarioAnalysis::new(r, s))
                .collect(),
        })
    }
}

impl<'a> ScenarioAnalysis<'a> {
    fn new(r: &'a Results, s: &'a ScenarioResult) -> ScenarioAnalysis<'a> {
        let mut contenders: Vec<ContenderFigures<'a>> = s
            .contenders
            .iter()
            .map(|c| ContenderFigures::new(c, s.rate))
            .collect();
        // Contenders without rounds have no median to compare: they go last.
        let key = |c: &ContenderFigures<'_>| {
            if c.round_p99_ms.is_empty() {
                (f64::INFINITY, f64::INFINITY)
            } else {
                (c.median_p99_ms, c.median_p50_ms)
            }
        };
        contenders.sort_by(|a, b| {
            let (ka, kb) = (key(a), key(b));
            ka.0.total_cmp(&kb.0)
                .then(ka.1.total_cmp(&kb.1))
                .then(a.label().cmp(b.label()))
        });
        let best_peer = contenders
            .iter()
            .position(|c| !c.is_fulcrum() && !c.round_p99_ms.is_empty());
        let fulcrum_default = s
            .contenders
            .iter()
            .find(|c| c.balancer == FULCRUM)
            .and_then(|d| contenders.iter().position(|c| std::ptr::eq(c.contender, d)));
        let comparison = match (fulcrum_default, best_peer) {
            (Some(f), Some(b)) if !contenders[f].round_p99_ms.is_empty() => {
                Some(compare(&contenders, f, b))
            }
            _ => None,
        };
        ScenarioAnalysis {
            scenario: s,
            all_kept_up: contenders.iter().all(|c| c.kept_up),
            saturated_rounds: saturated_rounds(r, s),
            contenders,
            best_peer,
            fulcrum_default,
            comparison,
        }
    }

    pub fn best_peer(&self) -> Option<&ContenderFigures<'a>> {
        self.best_peer.map(|i| &self.contenders[i])
    }

    pub fn fulcrum_default(&self) -> Option<&ContenderFigures<'a>> {
        self.fulcrum_default.map(|i| &self.contenders[i])
    }

    /// Peers (contenders from another balancer) that ran in this scenario.
    pub fn peers(&self) -> impl Iterator<Item = &ContenderFigures<'a>> {
        self.contenders.iter().filter(|c| !c.is_fulcrum())
    }
}

impl<'a> ContenderFigures<'a> {
    fn new(c: &'a ContenderResult, offered: f64) -> ContenderFigures<'a> {
        let round_p99_ms = c.p99_by_round_ms();
        let goodputs: Vec<f64> = c.rounds.iter().map(|x| x.goodput).collect();
        let share = |g: f64| if offered > 0.0 { g / offered } else { 0.0 };
        let goodput = if goodputs.is_empty() {
            0.0
        } else {
            goodputs.iter().sum::<f64>() / goodputs.len() as f64
        };
        let worst = goodputs.iter().copied().fold(f64::INFINITY, f64::min);
        let worst_goodput_share = if goodputs.is_empty() {
            0.0
        } else {
            share(worst)
        };
        ContenderFigures {
            contender: c,
            p99_range: round_range(&round_p99_ms),
            median_p99_ms: c.median_p99_ms(),
            median_p50_ms: median(c.rounds.iter().map(|x| x.p50_ms).collect()),
            max_ms: c.rounds.iter().map(|x| x.max_ms).fold(0.0, f64::max),
            round_p99_ms,
            goodput,
            goodput_share: share(goodput),
            worst_goodput_share,
            errors: c.errors,
            kept_up: worst_goodput_share >= KEPT_UP_SHARE && c.errors == 0,
            over_share: largest_over_share(&c.shares),
        }
    }
}

/// Each cluster's workers summed, then the one with the most requests beyond its capacity.
fn largest_over_share(shares: &[Share]) -> Option<ClusterShare> {
    let mut by_cluster: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for s in shares {
        let e = by_cluster.entry(&s.cluster).or_default();
        e.0 += s.share_of_requests;
        e.1 += s.share_of_capacity;
    }
    by_cluster
        .into_iter()
        .map(|(cluster, (req, cap))| ClusterShare {
            cluster: cluster.to_owned(),
            share_of_requests: req,
            share_of_capacity: cap,
            notable: req - cap >= NOTABLE_OVER_SHARE,
        })
        .max_by(|a, b| {
            (a.share_of_requests - a.share_of_capacity)
                .total_cmp(&(b.share_of_requests - b.share_of_capacity))
        })
}

fn compare(cs: &[ContenderFigures<'_>], fulcrum: usize, best: usize) -> Comparison {
    let f = &cs[fulcrum];
    let b = &cs[best];
    let peers: Vec<&ContenderFigures<'_>> = cs.iter().filter(|c| !c.is_fulcrum()).collect();
    let rounds = peers
        .iter()
        .map(|p| p.round_p99_ms.len())
        .chain([f.round_p99_ms.len()])
        .min()
        .unwrap_or(0);
    let ratio = if b.median_p99_ms > 0.0 {
        f.median_p99_ms / b.median_p99_ms
    } else {
        f64::NAN
    };
    let verdict = match (f.p99_range, b.p99_range) {
        (Some(fr), Some(br)) if rounds >= 2 => {
            let below_all = peers
                .iter()
                .all(|p| p.p99_range.is_some_and(|pr| fr.1 < pr.0));
            if below_all && f.kept_up {
                Verdict::Wins
            } else if below_all {
                Verdict::AheadButShort
            } else if fr.0 > br.1 {
                Verdict::Loses
            } else {
                Verdict::Ties
            }
        }
        _ => Verdict::Unjudged,
    };
    Comparison { ratio, verdict }
}

/// `(min, max)` of the per-round p99s.
fn round_range(p99s: &[f64]) -> Option<(f64, f64)> {
    let v: Vec<f64> = p99s.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    Some((
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    ))
}

/// The scenario's rounds whose run shows a saturated load generator.
fn saturated_rounds<'a>(r: &'a Results, s: &ScenarioResult) -> Vec<&'a str> {
    s.contenders
        .iter()
        .flat_map(|c| &c.rounds)
        .filter_map(|round| run_by_name(r, &round.run))
        .filter(|run| run.kind == RunKind::Shootout && run.generator.saturated)
        .map(|run| run.name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample;

    fn scenario<'a>(a: &'a Shootout<'a>, name: &str) -> &'a ScenarioAnalysis<'a> {
        a.scenarios
            .iter()
            .find(|s| s.scenario.name == name)
            .unwrap()
    }

    #[test]
    fn contenders_are_ordered_by_median_round_p99() {
        let r = sample::experiment();
        let a = Shootout::new(&r).unwrap();
        assert_eq!(a.scenarios.len(), 4);
        for s in &a.scenarios {
            let m: Vec<f64> = s.contenders.iter().map(|c| c.median_p99_ms).collect();
            assert!(m.windows(2).all(|w| w[0] <= w[1]), "{m:?}");
            for c in &s.contenders {
                assert_eq!(c.median_p99_ms, c.contender.median_p99_ms());
            }
        }
    }

    #[test]
    fn the_default_is_the_first_fulcrum_contender_and_the_best_peer_is_not_fulcrum() {
        let r = sample::experiment();
        let a = Shootout::new(&r).unwrap();
        let s = scenario(&a, "steady");
        let first = r.experiment.as_ref().unwrap().scenarios[0]
            .contenders
            .iter()
            .find(|c| c.balancer == FULCRUM)
            .unwrap();
        assert_eq!(s.fulcrum_default().unwrap().label(), first.label);
        let best = s.best_peer().unwrap();
        assert!(!best.is_fulcrum());
        assert!(s.peers().all(|p| p.median_p99_ms >= best.median_p99_ms));
        let c = s.comparison.unwrap();
        assert_eq!(
            c.ratio,
            s.fulcrum_default().unwrap().median_p99_ms / best.median_p99_ms
        );
    }

    #[test]
    fn verdicts_follow_the_round_ranges() {
        let r = sample::experiment();
        let a = Shootout::new(&r).unwrap();
        let v = |n: &str| scenario(&a, n).comparison.unwrap().verdict;
        assert_eq!(v("steady"), Verdict::Ties);
        assert_eq!(v("antagonist"), Verdict::Wins);
        assert_eq!(v("replicas"), Verdict::Loses);
        assert_eq!(v("heavy-tail"), Verdict::Ties);
    }

    #[test]
    fn a_lower_p99_without_keeping_up_is_not_a_win() {
        let mut r = sample::experiment();
        r.experiment.as_mut().unwrap().scenarios[1].contenders[0].errors = 5;
        let a = Shootout::new(&r).unwrap();
        assert_eq!(
            scenario(&a, "antagonist").comparison.unwrap().verdict,
            Verdict::AheadButShort
        );
    }

    #[test]
    fn one_round_is_not_judged() {
        let mut r = sample::experiment();
        for c in &mut r.experiment.as_mut().unwrap().scenarios[1].contenders {
            c.rounds.truncate(1);
        }
        let a = Shootout::new(&r).unwrap();
        assert_eq!(
            scenario(&a, "antagonist").comparison.unwrap().verdict,
            Verdict::Unjudged
        );
    }

    #[test]
    fn goodput_and_errors_decide_who_kept_up() {
        let mut r = sample::experiment();
        let a = Shootout::new(&r).unwrap();
        assert!(a.scenarios.iter().all(|s| s.all_kept_up));
        let c = &scenario(&a, "steady").contenders[0];
        assert!((c.goodput_share - c.goodput / 1020.0).abs() < 1e-12);
        let s = &mut r.experiment.as_mut().unwrap().scenarios[0];
        s.contenders[3].rounds[1].goodput = 0.9 * s.rate;
        s.contenders[4].errors = 3;
        let a = Shootout::new(&r).unwrap();
        let s = scenario(&a, "steady");
        assert!(!s.all_kept_up);
        assert_eq!(s.contenders.iter().filter(|c| !c.kept_up).count(), 2);
    }

    #[test]
    fn over_share_is_per_cluster() {
        let r = sample::experiment();
        let a = Shootout::new(&r).unwrap();
        let s = scenario(&a, "antagonist");
        let nginx = s
            .contenders
            .iter()
            .find(|c| c.contender.balancer == "nginx")
            .unwrap();
        let o = nginx.over_share.as_ref().unwrap();
        // Even split over 9 workers: micro workers get 5/9 for 5/13 of capacity.
        assert_eq!(o.cluster, "1");
        assert!((o.share_of_requests - 5.0 / 9.0).abs() < 1e-9);
        assert!((o.share_of_capacity - 0.5 / 1.3).abs() < 1e-9);
    }

    #[test]
    fn missing_peers_and_no_peer_at_all() {
        let r = sample::experiment_missing_peer();
        let a = Shootout::new(&r).unwrap();
        assert_eq!(a.missing_peers.len(), 1);
        assert_eq!(a.missing_peers[0].name, "haproxy");
        assert!(a
            .scenarios
            .iter()
            .all(|s| s.peers().all(|p| p.contender.balancer == "nginx")));
        let mut r = r;
        for s in &mut r.experiment.as_mut().unwrap().scenarios {
            s.contenders.retain(|c| c.balancer == FULCRUM);
        }
        let a = Shootout::new(&r).unwrap();
        assert!(a
            .scenarios
            .iter()
            .all(|s| s.best_peer.is_none() && s.comparison.is_none()));
    }
}
