//! The shoot-out's scenarios: what each stands for, its parameters, and the load it offers.
//!
//! - `steady`: one balancer, uniform per-request cost, 85% of the measured capacity.
//! - `antagonist`: co-tenants inside some workers' cgroups take a share of their CPU quota,
//!   switched on and off every few seconds, the active set moving between workers — the local
//!   analog of noisy neighbours, steal time and spent t2 credits.
//! - `replicas`: several independent balancers in front of the same workers, the load spread
//!   evenly over them, as ALB nodes or per-client sidecars are.
//! - `heavy-tail`: per-request CPU cost drawn from a log-normal distribution with the same mean
//!   (p99/p50 ≥ 20), sent through the worker's `?work_us=` with a request mix.

use std::time::Duration;

use fulcrum_loadgen::mix::{MixEntry, RequestMix};
use fulcrum_loadgen::results::ScenarioParams;

/// Every scenario, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    Steady,
    Antagonist,
    Replicas,
    HeavyTail,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::Steady,
        Scenario::Antagonist,
        Scenario::Replicas,
        Scenario::HeavyTail,
    ];

    /// What a plain `fulcrum experiment` runs.
    pub const DEFAULT: [Scenario; 3] = [Scenario::Steady, Scenario::Antagonist, Scenario::Replicas];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Antagonist => "antagonist",
            Scenario::Replicas => "replicas",
            Scenario::HeavyTail => "heavy-tail",
        }
    }

    pub fn from_name(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }

    /// The scenarios named (`all` for every one), in run order; the default when none is.
    pub fn parse_list(names: &[String]) -> Vec<Scenario> {
        if names.is_empty() {
            return Scenario::DEFAULT.to_vec();
        }
        let mut out: Vec<Scenario> = if names.iter().any(|n| n == "all") {
            Scenario::ALL.to_vec()
        } else {
            names
                .iter()
                .filter_map(|n| Scenario::from_name(n))
                .collect()
        };
        out.sort();
        out.dedup();
        out
    }

    pub fn description(self) -> &'static str {
        match self {
            Scenario::Steady => {
                "one balancer in front of every worker, every request the same CPU cost"
            }
            Scenario::Antagonist => {
                "co-tenant processes inside some workers' cgroups take part of their CPU quota, \
                 switched on and off every few seconds and moving between workers \
                 (noisy neighbours, steal time, spent t2 credits)"
            }
            Scenario::Replicas => {
                "several independent balancer instances in front of the same workers, the load \
                 spread evenly over them (ALB nodes, per-client sidecars)"
            }
            Scenario::HeavyTail => {
                "per-request CPU cost drawn from a log-normal distribution with the same mean \
                 (p99 ≥ 20 × p50)"
            }
        }
    }
}

/// The default fraction of the measured total capacity a scenario offers.
pub const LOAD_FRACTION: f64 = 0.85;

/// The co-tenants of the `antagonist` scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct AntagonistPlan {
    /// Instance names (`c2-0`, ...) hosting one co-tenant each.
    pub instances: Vec<String>,
    /// Share of the host's quota a co-tenant takes while on.
    pub share: f64,
    /// How many are on at any moment; the set moves by one host every `dwell`.
    pub active: usize,
    pub dwell: Duration,
}

impl AntagonistPlan {
    /// On for `active` dwells, off for the rest of the cycle.
    pub fn on(&self) -> Duration {
        self.dwell * self.active as u32
    }

    pub fn off(&self) -> Duration {
        self.dwell * (self.instances.len().saturating_sub(self.active)) as u32
    }

    /// Host `i` starts its cycle `i` dwells late, so the active set walks across the hosts.
    pub fn phase(&self, i: usize) -> Duration {
        self.dwell * i as u32
    }

    /// One whole pattern: every host on once.
    pub fn cycle(&self) -> Duration {
        self.dwell * self.instances.len() as u32
    }

    /// The share of the total capacity the co-tenants take on average.
    pub fn mean_take(&self, host_cores: f64, total_cores: f64) -> f64 {
        if total_cores <= 0.0 {
            return 0.0;
        }
        self.active.min(self.instances.len()) as f64 * self.share * host_cores / total_cores
    }

    pub fn params(&self) -> ScenarioParams {
        ScenarioParams::Antagonist {
            instances: self.instances.clone(),
            share: self.share,
            on_s: self.on().as_secs_f64(),
            off_s: self.off().as_secs_f64(),
        }
    }
}

/// The `heavy-tail` scenario's cost distribution: log-normal with the given mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeavyTail {
    pub mean_us: f64,
    pub sigma: f64,
}

/// Quantile points the log-normal is discretised into (equal weights): enough that p99 and
/// p99.5 are represented by several points each.
const COST_POINTS: usize = 400;
/// The worker's own bound on `?work_us=`.
const MAX_WORK_US: f64 = 100_000.0;

impl HeavyTail {
    /// σ = 1.35 puts p99 at 23 × p50 (≥ 20 once discretised).
    pub fn with_mean(mean_us: f64) -> HeavyTail {
        HeavyTail {
            mean_us,
            sigma: 1.35,
        }
    }

    /// μ of the underlying normal: the mean of a log-normal is exp(μ + σ²/2).
    fn mu(&self) -> f64 {
        self.mean_us.ln() - self.sigma * self.sigma / 2.0
    }

    pub fn quantile_us(&self, q: f64) -> f64 {
        (self.mu() + self.sigma * normal_quantile(q)).exp()
    }

    /// The costs sent, one per quantile point, rescaled so their mean is exactly `mean_us`
    /// (the discretisation and the worker's cap would otherwise shift it).
    pub fn costs_us(&self) -> Vec<u64> {
        let raw: Vec<f64> = (0..COST_POINTS)
            .map(|i| self.quantile_us((i as f64 + 0.5) / COST_POINTS as f64))
            .map(|c| c.min(MAX_WORK_US))
            .collect();
        let mean = raw.iter().sum::<f64>() / raw.len() as f64;
        let k = self.mean_us / mean;
        raw.iter()
            .map(|c| (c * k).round().clamp(1.0, MAX_WORK_US) as u64)
            .collect()
    }

    /// The request mix for `path`: one entry per cost point, equal weights.
    pub fn mix(&self, path: &str) -> RequestMix {
        let sep = if path.contains('?') { '&' } else { '?' };
        let entries = self
            .costs_us()
            .into_iter()
            .map(|c| MixEntry::new(format!("{path}{sep}work_us={c}"), 1.0))
            .collect();
        RequestMix::new(entries).expect("generated entries are valid")
    }

    pub fn params(&self, mix_file: &str) -> ScenarioParams {
        ScenarioParams::HeavyTail {
            distribution: "lognormal".into(),
            mean_us: self.mean_us,
            sigma: self.sigma,
            mix_file: mix_file.into(),
        }
    }
}

/// The standard normal's quantile function (Acklam's rational approximation, relative error
/// < 1.2e-9 — far below what a CPU-cost distribution needs).
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e+01,
        2.209460984245205e+02,
        -2.759285104469687e+02,
        1.38357751867269e+02,
        -3.066479806614716e+01,
        2.506628277459239e+00,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e+01,
        1.615858368580409e+02,
        -1.556989798598866e+02,
        6.680131188771972e+01,
        -1.328068155288572e+01,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e+00,
        -2.549732539343734e+00,
        4.374664141464968e+00,
        2.938163982698783e+00,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-03,
        3.224671290700398e-01,
        2.445134137142996e+00,
        3.754408661907416e+00,
    ];
    let tail = |q: f64| {
        let q = (-2.0 * q.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    if p < 0.02425 {
        tail(p)
    } else if p > 1.0 - 0.02425 {
        -tail(1.0 - p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The `q` quantile of `values` (nearest rank).
pub fn quantile(values: &[u64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::from_name(s.name()), Some(s));
        }
        assert_eq!(Scenario::from_name("nope"), None);
    }

    #[test]
    fn the_normal_quantile_is_right_where_it_matters() {
        assert!(normal_quantile(0.5).abs() < 1e-9);
        assert!((normal_quantile(0.99) - 2.326_347_874).abs() < 1e-6);
        assert!((normal_quantile(0.01) + 2.326_347_874).abs() < 1e-6);
        assert!((normal_quantile(0.975) - 1.959_963_985).abs() < 1e-6);
    }

    #[test]
    fn the_heavy_tail_keeps_its_mean_and_its_spread() {
        let h = HeavyTail::with_mean(1000.0);
        let costs = h.costs_us();
        let mean = costs.iter().sum::<u64>() as f64 / costs.len() as f64;
        assert!((mean - 1000.0).abs() < 5.0, "mean {mean}");
        let (p50, p99) = (quantile(&costs, 0.5), quantile(&costs, 0.99));
        assert!(p99 / p50 >= 20.0, "p99/p50 = {}", p99 / p50);
        let mix = h.mix("/");
        assert_eq!(mix.entries.len(), COST_POINTS);
        assert!(mix.entries[0].path.starts_with("/?work_us="));
    }

    #[test]
    fn the_active_set_walks_across_the_hosts() {
        let p = AntagonistPlan {
            instances: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            share: 0.5,
            active: 2,
            dwell: Duration::from_secs(2),
        };
        assert_eq!(p.on(), Duration::from_secs(4));
        assert_eq!(p.off(), Duration::from_secs(4));
        assert_eq!(p.cycle(), Duration::from_secs(8));
        assert_eq!(p.phase(3), Duration::from_secs(6));
        assert!((p.mean_take(0.2, 1.3) - 0.2 / 1.3).abs() < 1e-9);
    }
}
