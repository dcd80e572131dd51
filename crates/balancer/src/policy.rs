//! Picking a worker: the six policies.
//!
//! Every policy chooses among *candidates* the caller has already filtered (healthy, not
//! ejected, below their in-flight cap, not yet tried by this request), so policies only rank.
//!
//! - `round-robin`: the next candidate in turn.
//! - `least-outstanding` (ALB): fewest requests in flight at this balancer; random among ties.
//! - `p2c-ewma` (Finagle, Linkerd): two distinct random candidates, the lower
//!   `peak-EWMA latency × (in-flight + 1)` wins.
//! - `lowest-cpu`: the seed's rule, kept faithfully as a baseline — the argmin of the latest CPU
//!   reading from the group's telemetry source, however old; a worker with no reading counts
//!   as 0 % (what naive code does with an empty datapoint list); random among exact ties.
//!   It herds: between readings every request goes to the same worker.
//! - `capacity-weighted`: fulcrum's default (see below).
//! - `cpu-aware`: power of two choices over
//!
//!   ```text
//!   cost(w) = (in_flight(w) + 1) / cores(w)      expected delay: outstanding work per core
//!           × (1 + 40 · max(0, u(w) − 0.9))      saturation guard, from a fresh report only
//!           × (1 + 20 · err(w))                  failures count as load (no sinkholes)
//!   ```
//!
//!   `cores(w)` is the CPU the worker reports it may use (its quota: a t2.large-like worker has
//!   twice a micro's, so at equal queues it is the cheaper, and it is handed about twice the
//!   work), or the mean of the candidates that reported, or 1. The first factor is "shortest
//!   expected delay", the right rule for servers of different speeds, computed from the
//!   balancer's own in-flight count, which is never stale. `u(w)` is the worker's reported CPU
//!   utilization when the reading is younger than `stale_after`, else 0: a stale or missing
//!   report falls back to the in-flight count alone. The guard only acts on a worker at or near
//!   its quota (×5 at 100%), which catches load this balancer does not see (other balancers,
//!   other work) without letting a utilization figure that lags by a sampling window steer
//!   ordinary traffic: an earlier form, `1 / (1 − u)` at every utilization, turned that lag into
//!   2× swings between workers at 85% load and lost to least-outstanding on p99. `err(w)` is the
//!   larger of the balancer's own decaying failure share for the worker and the worker's
//!   reported `eps / (rps + eps)`. Two random candidates, not a global argmin, so no figure can
//!   herd traffic onto one worker (Mitzenmacher); given the two, the cheaper always wins.
//!
//! ## `capacity-weighted`
//!
//! Smooth weighted round-robin (nginx's algorithm) with each worker weighted by the CPU it
//! reports it can give our requests — its quota, less what co-tenants in its cgroup took over
//! the last few hundred milliseconds (`named_metrics.cpu_available`; its quota alone when that
//! is stale or absent) — and a busy skip: when the worker whose turn it is already runs as many
//! requests as it has cores for, the request goes to the candidate with the least
//! `(in-flight + 1) / weight` instead, the turn kept for later. In-flight counts include other
//! balancers' requests, as the worker reported them on its last response, while that report is
//! younger than two of its response times.
//!
//! Why, measured on the seed's topology (0.1-core and 0.2-core workers, CFS period 10 ms,
//! 1 ms requests) against nginx `least_conn` and HAProxy `leastconn`:
//! - least-connections ties almost always at 0 or 1 in flight, so it splits traffic about
//!   evenly and runs the small workers near their quota, where a second request in a CFS period
//!   waits out the throttle (~9 ms): their tail is everyone's p99;
//! - weights from reported capacity put each worker's share where its quota is, whatever
//!   this balancer has seen, so N independent balancers (replicas) split alike, and a worker a
//!   co-tenant is eating loses share within a few hundred milliseconds, before its queue shows;
//! - round-robin spacing keeps requests to one worker apart in time (fewer throttled periods
//!   than random or least-connections arrivals), and the busy skip keeps a long request (heavy
//!   tails) from holding up the next.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{Policy, TelemetrySource};
use crate::fleet::Worker;

/// What a pick may read besides the candidates.
pub struct PickContext<'a> {
    pub policy: Policy,
    pub source: TelemetrySource,
    pub stale_after_us: u64,
    pub now: u64,
    pub rr: &'a AtomicUsize,
    pub weighted: &'a CapacityWeighted,
    /// The group's per-worker weights (1 when not listed) and slow start.
    pub weights: &'a HashMap<SocketAddr, u32>,
    pub slow_start_us: u64,
    /// What the request brings to the pick.
    pub affinity: Affinity,
}

/// What a request brings to the pick beyond the group's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Affinity {
    /// The hash of the request's key (`hash_key`), for `consistent-hash`.
    pub key: Option<u64>,
    /// The worker the request's sticky cookie names (its [`worker_token`]), if any.
    pub sticky: Option<u64>,
}

/// What a sticky cookie holds for a worker: an opaque hash of its address, the same in every
/// balancer process (replicas honour each other's cookies), never the address itself.
pub fn worker_token(addr: SocketAddr) -> u64 {
    address_hash(addr)
}

impl PickContext<'_> {
    /// The operator's share for `w`: its configured weight, times its slow-start ramp.
    pub fn share(&self, w: &Worker) -> f64 {
        let weight = self.weights.get(&w.addr).copied().unwrap_or(1) as f64;
        weight * w.ramp(self.now, self.slow_start_us)
    }

    /// Whether every candidate has the same share, so a policy can ignore shares.
    fn shares_equal(&self, candidates: &[&Arc<Worker>]) -> bool {
        if self.weights.is_empty() && self.slow_start_us == 0 {
            return true;
        }
        let first = self.share(candidates[0]);
        candidates.iter().all(|w| self.share(w) == first)
    }
}

/// Index of the chosen candidate. `candidates` must not be empty.
pub fn pick(candidates: &[&Arc<Worker>], ctx: &PickContext) -> usize {
    debug_assert!(!candidates.is_empty());
    let n = candidates.len();
    if n == 1 {
        return 0;
    }
    if let Some(token) = ctx.affinity.sticky {
        if let Some(i) = candidates
            .iter()
            .position(|w| worker_token(w.addr) == token)
        {
            return i;
        }
    }
    if ctx.policy == Policy::ConsistentHash {
        return match ctx.affinity.key {
            Some(key) => rendezvous(candidates, key, ctx),
            None => least_then_smooth(candidates, ctx),
        };
    }
    if ctx.shares_equal(candidates) {
        return pick_unweighted(candidates, ctx);
    }
    // Weights and slow start: every cost divided by the worker's share, every turn in
    // proportion to it.
    match ctx.policy {
        Policy::RoundRobin => {
            let shares: Vec<f64> = candidates.iter().map(|w| ctx.share(w)).collect();
            ctx.weighted.smooth(candidates, &shares, None)
        }
        Policy::LeastOutstanding => least_then_smooth(candidates, ctx),
        Policy::P2cEwma => p2c(candidates, |w| {
            w.ewma_us(ctx.now) * (w.in_flight() as f64 + 1.0) / ctx.share(w)
        }),
        Policy::LowestCpu => {
            argmin_random_ties(candidates, |w| (cpu_reading(w, ctx) + 0.01) / ctx.share(w))
        }
        Policy::CpuAware => {
            let fallback_cores = mean_cores(candidates);
            p2c(candidates, |w| {
                cpu_aware_cost(w, ctx, fallback_cores) / ctx.share(w)
            })
        }
        // consistent-hash returned above.
        Policy::CapacityWeighted | Policy::ConsistentHash => ctx.weighted.pick(candidates, ctx),
    }
}

/// Weighted least-outstanding (nginx's weighted `least_conn`): the fewest in flight per unit
/// of share; among those tied, smooth weighted round-robin, so idle workers take turns in
/// proportion to their weights instead of the heaviest taking everything.
fn least_then_smooth(candidates: &[&Arc<Worker>], ctx: &PickContext) -> usize {
    let load: Vec<f64> = candidates
        .iter()
        .map(|w| w.in_flight() as f64 / ctx.share(w))
        .collect();
    let least = load.iter().copied().fold(f64::INFINITY, f64::min);
    let tied: Vec<usize> = (0..candidates.len())
        .filter(|&i| load[i] <= least * (1.0 + 1e-9))
        .collect();
    let tied_workers: Vec<&Arc<Worker>> = tied.iter().map(|&i| candidates[i]).collect();
    let shares: Vec<f64> = tied_workers.iter().map(|w| ctx.share(w)).collect();
    tied[ctx.weighted.smooth(&tied_workers, &shares, None)]
}

/// Weighted rendezvous hashing (highest random weight): each candidate scores
/// `-share / ln(u)`, `u` a uniform draw seeded by the key and the worker's address, and the
/// highest wins. A key stays on its worker while that worker is a candidate; when one leaves,
/// only its own keys move (to their next-highest), spread over the rest in proportion to their
/// shares. No table to build or keep: O(candidates) hashes per pick.
fn rendezvous(candidates: &[&Arc<Worker>], key: u64, ctx: &PickContext) -> usize {
    let score = |w: &Worker| {
        let u = (mix(key ^ address_hash(w.addr)) >> 11) as f64 / (1u64 << 53) as f64;
        -ctx.share(w) / u.max(f64::MIN_POSITIVE).ln()
    };
    (0..candidates.len())
        .max_by(|&a, &b| score(candidates[a]).total_cmp(&score(candidates[b])))
        .unwrap_or(0)
}

/// A stable 64-bit hash of a worker's address (the same in every process and generation).
fn address_hash(addr: SocketAddr) -> u64 {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => u32::from(v4) as u128,
        std::net::IpAddr::V6(v6) => u128::from(v6),
    };
    mix(mix(ip as u64 ^ (ip >> 64) as u64) ^ addr.port() as u64)
}

/// splitmix64's finalizer: every input bit moves every output bit.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The policies as they are when every candidate has the same share.
fn pick_unweighted(candidates: &[&Arc<Worker>], ctx: &PickContext) -> usize {
    match ctx.policy {
        Policy::RoundRobin => ctx.rr.fetch_add(1, Ordering::Relaxed) % candidates.len(),
        Policy::LeastOutstanding => argmin_random_ties(candidates, |w| w.in_flight() as f64),
        Policy::P2cEwma => p2c(candidates, |w| {
            w.ewma_us(ctx.now) * (w.in_flight() as f64 + 1.0)
        }),
        Policy::LowestCpu => argmin_random_ties(candidates, |w| cpu_reading(w, ctx)),
        Policy::CpuAware => {
            let fallback_cores = mean_cores(candidates);
            p2c(candidates, |w| cpu_aware_cost(w, ctx, fallback_cores))
        }
        Policy::CapacityWeighted | Policy::ConsistentHash => ctx.weighted.pick(candidates, ctx),
    }
}

/// The latest CPU reading from the group's source, however old; none counts as 0 %.
fn cpu_reading(w: &Worker, ctx: &PickContext) -> f64 {
    w.slot(ctx.source)
        .read(ctx.now)
        .map_or(0.0, |r| r.cpu_utilization)
}

/// How long a worker's report of other balancers' in-flight requests is trusted, at most.
const OTHERS_FRESH_MAX_US: u64 = 200_000;

/// The `capacity-weighted` policy's state for one target group: smooth weighted round-robin
/// credits (nginx's `current_weight`), one per worker.
#[derive(Default)]
pub struct CapacityWeighted {
    credits: Mutex<Vec<(SocketAddr, f64)>>,
}

impl CapacityWeighted {
    fn pick(&self, candidates: &[&Arc<Worker>], ctx: &PickContext) -> usize {
        let fallback = mean_cores(candidates);
        let weights: Vec<f64> = candidates
            .iter()
            .map(|w| weight(w, ctx, fallback) * ctx.share(w))
            .collect();
        self.smooth(candidates, &weights, Some(ctx.now))
    }

    /// Smooth weighted round-robin over `weights`; with `busy_skip_at` (now), a busy worker's
    /// turn goes to the most owed one that is not, or the least expected delay when all are.
    fn smooth(
        &self,
        candidates: &[&Arc<Worker>],
        weights: &[f64],
        busy_skip_at: Option<u64>,
    ) -> usize {
        let mut credits = self.credits.lock().expect("never poisoned");
        // Workers that left are forgotten; new ones start level.
        credits.retain(|(a, _)| candidates.iter().any(|w| w.addr == *a));
        let slots: Vec<usize> = candidates
            .iter()
            .map(|w| match credits.iter().position(|(a, _)| *a == w.addr) {
                Some(i) => i,
                None => {
                    credits.push((w.addr, 0.0));
                    credits.len() - 1
                }
            })
            .collect();
        let total: f64 = weights.iter().sum();
        for (i, &slot) in slots.iter().enumerate() {
            credits[slot].1 += weights[i];
        }
        let most_owed = |among: &mut dyn Iterator<Item = usize>| {
            among.max_by(|&a, &b| credits[slots[a]].1.total_cmp(&credits[slots[b]].1))
        };
        let chosen = match busy_skip_at {
            None => most_owed(&mut (0..candidates.len())).unwrap_or(0),
            Some(now) => {
                let idle =
                    most_owed(&mut (0..candidates.len()).filter(|&i| !is_busy(candidates[i], now)));
                idle.unwrap_or_else(|| {
                    least_expected_delay(candidates, weights, |i| credits[slots[i]].1, now)
                })
            }
        };
        credits[slots[chosen]].1 -= total;
        chosen
    }
}

/// A worker's weight: the CPU it can give our requests, in cores.
fn weight(w: &Worker, ctx: &PickContext, fallback: f64) -> f64 {
    w.capacity(ctx.now, ctx.stale_after_us)
        .unwrap_or(fallback)
        .max(1e-3)
}

/// Requests in flight at `w`: this balancer's, plus other balancers' as `w` last reported
/// them, while that report is younger than a couple of the worker's response times.
fn load(w: &Worker, now: u64) -> f64 {
    let fresh = (2.0 * w.ewma_us(now)).clamp(1_000.0, OTHERS_FRESH_MAX_US as f64) as u64;
    w.in_flight() as f64 + w.others_in_flight(now, fresh)
}

/// Whether `w` already runs as many requests as it has cores to run them on.
fn is_busy(w: &Worker, now: u64) -> bool {
    load(w, now) >= w.cores().map_or(1.0, f64::ceil).max(1.0)
}

/// The candidate with the least `(load + 1) / weight`; among equals, the one most owed.
fn least_expected_delay(
    candidates: &[&Arc<Worker>],
    weights: &[f64],
    credit: impl Fn(usize) -> f64,
    now: u64,
) -> usize {
    let mut best = 0;
    let mut best_cost = f64::INFINITY;
    for (i, w) in candidates.iter().enumerate() {
        let cost = (load(w, now) + 1.0) / weights[i];
        if cost < best_cost || (cost == best_cost && credit(i) > credit(best)) {
            best = i;
            best_cost = cost;
        }
    }
    best
}

/// Above this reported utilization a worker is treated as saturated by load it may be carrying
/// for someone else.
const SATURATION: f64 = 0.9;

/// The `cpu-aware` cost of sending one more request to `w` (see the module docs).
pub fn cpu_aware_cost(w: &Worker, ctx: &PickContext, fallback_cores: f64) -> f64 {
    let cores = w.cores().unwrap_or(fallback_cores);
    let fresh = w
        .slot(ctx.source)
        .read(ctx.now)
        .filter(|r| (r.age.as_micros() as u64) <= ctx.stale_after_us);
    let u = fresh.map_or(0.0, |r| r.cpu_utilization.clamp(0.0, 1.0));
    let guard = 1.0 + 40.0 * (u - SATURATION).max(0.0);
    let reported_err = fresh.map_or(0.0, |r| {
        let total = r.rps + r.eps;
        if total > 0.0 {
            r.eps / total
        } else {
            0.0
        }
    });
    let err = w.error_rate(ctx.now).max(reported_err);
    (w.in_flight() as f64 + 1.0) / cores * guard * (1.0 + 20.0 * err)
}

fn mean_cores(candidates: &[&Arc<Worker>]) -> f64 {
    let (sum, n) = candidates
        .iter()
        .filter_map(|w| w.cores())
        .fold((0.0, 0usize), |(s, n), c| (s + c, n + 1));
    if n == 0 {
        1.0
    } else {
        sum / n as f64
    }
}

/// Two distinct random candidates; the cheaper wins (the first on an exact tie).
fn p2c(candidates: &[&Arc<Worker>], cost: impl Fn(&Worker) -> f64) -> usize {
    let n = candidates.len();
    let a = fastrand::usize(..n);
    let mut b = fastrand::usize(..n - 1);
    if b >= a {
        b += 1;
    }
    if cost(candidates[b]) < cost(candidates[a]) {
        b
    } else {
        a
    }
}

/// The minimum of `key`, choosing uniformly among exact ties (reservoir sampling).
fn argmin_random_ties(candidates: &[&Arc<Worker>], key: impl Fn(&Worker) -> f64) -> usize {
    let mut best = 0;
    let mut best_key = f64::INFINITY;
    let mut ties = 0u32;
    for (i, w) in candidates.iter().enumerate() {
        let k = key(w);
        if k < best_key {
            best = i;
            best_key = k;
            ties = 1;
        } else if k == best_key {
            ties += 1;
            if fastrand::u32(..ties) == 0 {
                best = i;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::now_us;
    use fulcrum_telemetry::LoadReport;

    fn workers(n: usize) -> Vec<Arc<Worker>> {
        (0..n)
            .map(|i| {
                Arc::new(Worker::new(
                    format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                    100,
                    Default::default(),
                ))
            })
            .collect()
    }

    fn counts(ws: &[Arc<Worker>], policy: Policy, picks: usize) -> Vec<usize> {
        weighted_counts(ws, policy, &vec![1; ws.len()], picks)
    }

    /// A group's pick state, and one pick with it.
    #[derive(Default)]
    struct Picker {
        rr: AtomicUsize,
        weighted: CapacityWeighted,
        weights: HashMap<SocketAddr, u32>,
    }

    impl Picker {
        fn pick(&self, refs: &[&Arc<Worker>], policy: Policy, affinity: Affinity) -> usize {
            let ctx = PickContext {
                policy,
                source: TelemetrySource::Inband,
                stale_after_us: 2_000_000,
                now: now_us(),
                rr: &self.rr,
                weighted: &self.weighted,
                weights: &self.weights,
                slow_start_us: 0,
                affinity,
            };
            pick(refs, &ctx)
        }
    }

    fn weighted_counts(
        ws: &[Arc<Worker>],
        policy: Policy,
        weights: &[u32],
        picks: usize,
    ) -> Vec<usize> {
        let picker = Picker {
            weights: ws.iter().zip(weights).map(|(w, n)| (w.addr, *n)).collect(),
            ..Picker::default()
        };
        let refs: Vec<&Arc<Worker>> = ws.iter().collect();
        let mut c = vec![0; ws.len()];
        for _ in 0..picks {
            c[picker.pick(&refs, policy, Affinity::default())] += 1;
        }
        c
    }

    #[test]
    fn weights_split_turns_in_every_turn_taking_policy() {
        let ws = workers(3);
        for policy in [
            Policy::RoundRobin,
            Policy::LeastOutstanding,
            Policy::CapacityWeighted,
        ] {
            assert_eq!(
                weighted_counts(&ws, policy, &[1, 3, 6], 1000),
                vec![100, 300, 600],
                "{policy:?}"
            );
        }
    }

    /// The worker `consistent-hash` gives each of `keys` among `ws`.
    fn owners(ws: &[Arc<Worker>], keys: u64) -> Vec<SocketAddr> {
        let picker = Picker::default();
        let refs: Vec<&Arc<Worker>> = ws.iter().collect();
        (0..keys)
            .map(|k| {
                let affinity = Affinity {
                    key: Some(mix(k)),
                    sticky: None,
                };
                refs[picker.pick(&refs, Policy::ConsistentHash, affinity)].addr
            })
            .collect()
    }

    #[test]
    fn consistent_hash_keeps_keys_in_place_when_one_of_ten_workers_leaves() {
        let ws = workers(10);
        let before = owners(&ws, 10_000);
        // Balanced: every worker holds about a tenth of the keys.
        for w in &ws {
            let n = before.iter().filter(|a| **a == w.addr).count();
            assert!((800..1200).contains(&n), "{}: {n}", w.addr);
        }
        let leaving = ws[3].addr;
        let rest: Vec<Arc<Worker>> = ws.iter().filter(|w| w.addr != leaving).cloned().collect();
        let after = owners(&rest, 10_000);
        let moved: Vec<usize> = (0..10_000).filter(|&k| before[k] != after[k]).collect();
        // Only the leaving worker's keys move: every other key stays where it was.
        assert!(moved.iter().all(|&k| before[k] == leaving));
        let stayed = 1.0 - moved.len() as f64 / 10_000.0;
        assert!(stayed >= 0.88, "{stayed}");
        assert_eq!(
            moved.len(),
            before.iter().filter(|a| **a == leaving).count()
        );
        eprintln!(
            "one of ten workers left: {:.1}% of keys stayed",
            100.0 * stayed
        );
    }

    #[test]
    fn slow_start_ramps_a_new_worker_from_a_trickle() {
        let ws = workers(2);
        let (t, slow) = (now_us() + 100_000_000, 10_000_000);
        ws[0].force_up_since(t - 60_000_000);
        ws[1].force_up_since(t);
        assert_eq!(ws[0].ramp(t, slow), 1.0);
        assert_eq!(ws[1].ramp(t, slow), crate::fleet::SLOW_START_FLOOR);
        assert!((ws[1].ramp(t + 5_000_000, slow) - 0.5).abs() < 1e-9);
        assert_eq!(ws[1].ramp(t + 11_000_000, slow), 1.0);
        assert_eq!(ws[1].ramp(t, 0), 1.0, "no slow start");
        // Turning healthy again starts a new ramp.
        ws[0].set_health(crate::fleet::Health::Unhealthy);
        ws[0].set_health(crate::fleet::Health::Healthy);
        assert!(ws[0].ramp(now_us(), slow) < 0.1);
    }

    fn report(w: &Worker, cpu: f64, cores: f64) {
        w.store_report(
            TelemetrySource::Inband,
            &LoadReport {
                cpu_utilization: Some(cpu),
                rps_fractional: Some(100.0),
                eps: Some(0.0),
                inflight: None,
                cpu_cores: Some(cores),
                cpu_available: None,
                service_p90_ms: None,
            },
            now_us(),
        );
    }

    /// A worker's in-band report of its quota, what it can use of it, and its in-flight count.
    fn capacity_report(w: &Worker, cores: f64, available: f64, inflight: f64) {
        w.store_report(
            TelemetrySource::Inband,
            &LoadReport {
                cpu_utilization: Some(0.5),
                rps_fractional: Some(100.0),
                eps: Some(0.0),
                inflight: Some(inflight),
                cpu_cores: Some(cores),
                cpu_available: Some(available),
                service_p90_ms: None,
            },
            now_us(),
        );
    }

    #[test]
    fn capacity_weighted_splits_by_reported_capacity_and_spaces_picks() {
        let ws = workers(3);
        capacity_report(&ws[0], 0.1, 0.1, 0.0);
        capacity_report(&ws[1], 0.2, 0.2, 0.0);
        capacity_report(&ws[2], 0.1, 0.1, 0.0);
        assert_eq!(
            counts(&ws, Policy::CapacityWeighted, 400),
            vec![100, 200, 100]
        );
        // Smooth: the big worker never gets three in a row, a small one never two.
        let weighted = CapacityWeighted::default();
        let rr = AtomicUsize::new(0);
        let refs: Vec<&Arc<Worker>> = ws.iter().collect();
        let seq: Vec<usize> = (0..40)
            .map(|_| {
                pick(
                    &refs,
                    &PickContext {
                        policy: Policy::CapacityWeighted,
                        source: TelemetrySource::Inband,
                        stale_after_us: 2_000_000,
                        now: now_us(),
                        rr: &rr,
                        weighted: &weighted,
                        weights: &HashMap::new(),
                        slow_start_us: 0,
                        affinity: Affinity::default(),
                    },
                )
            })
            .collect();
        assert!(seq.windows(2).all(|p| p[0] == 1 || p[0] != p[1]), "{seq:?}");
        assert!(
            seq.windows(3)
                .all(|p| !(p[0] == 1 && p[1] == 1 && p[2] == 1)),
            "{seq:?}"
        );
    }

    #[test]
    fn capacity_weighted_follows_what_co_tenants_leave() {
        let ws = workers(2);
        capacity_report(&ws[0], 0.2, 0.2, 0.0);
        // Same quota, but a co-tenant takes half of it.
        capacity_report(&ws[1], 0.2, 0.1, 0.0);
        assert_eq!(counts(&ws, Policy::CapacityWeighted, 300), vec![200, 100]);
    }

    #[test]
    fn capacity_weighted_skips_a_busy_worker_for_the_least_expected_delay() {
        let ws = workers(3);
        for w in &ws {
            capacity_report(w, 0.2, 0.2, 0.0);
        }
        // Busy with one request here: its turns go to idle workers instead.
        let _held = ws[0].begin();
        let c = counts(&ws, Policy::CapacityWeighted, 300);
        assert_eq!(c[0], 0, "{c:?}");
        assert!(c[1] > 100 && c[2] > 100, "{c:?}");
    }

    #[test]
    fn capacity_weighted_sees_other_balancers_requests() {
        let ws = workers(2);
        capacity_report(&ws[0], 0.2, 0.2, 0.0);
        // The worker says it runs 3 requests, none of them ours: another balancer's.
        capacity_report(&ws[1], 0.2, 0.2, 3.0);
        let c = counts(&ws, Policy::CapacityWeighted, 200);
        assert_eq!(c[1], 0, "{c:?}");
        // Once that report is older than a couple of response times, it no longer counts.
        let rr = AtomicUsize::new(0);
        let weighted = CapacityWeighted::default();
        let refs: Vec<&Arc<Worker>> = ws.iter().collect();
        let later = now_us() + 1_000_000;
        let mut c = [0; 2];
        for _ in 0..200 {
            let ctx = PickContext {
                policy: Policy::CapacityWeighted,
                source: TelemetrySource::Inband,
                stale_after_us: 2_000_000,
                now: later,
                rr: &rr,
                weighted: &weighted,
                weights: &HashMap::new(),
                slow_start_us: 0,
                affinity: Affinity::default(),
            };
            c[pick(&refs, &ctx)] += 1;
        }
        assert_eq!(c, [100, 100]);
    }

    #[test]
    fn round_robin_is_exactly_even() {
        assert_eq!(
            counts(&workers(3), Policy::RoundRobin, 300),
            vec![100, 100, 100]
        );
    }

    #[test]
    fn least_outstanding_avoids_busy_workers_and_breaks_ties_randomly() {
        let ws = workers(3);
        let _busy = ws[0].begin();
        let c = counts(&ws, Policy::LeastOutstanding, 1000);
        assert_eq!(c[0], 0);
        assert!(c[1] > 400 && c[2] > 400, "{c:?}");
    }

    #[test]
    fn lowest_cpu_herds_onto_the_argmin() {
        let ws = workers(3);
        report(&ws[0], 0.30, 1.0);
        report(&ws[1], 0.10, 1.0);
        report(&ws[2], 0.20, 1.0);
        assert_eq!(counts(&ws, Policy::LowestCpu, 200), vec![0, 200, 0]);
    }

    #[test]
    fn cpu_aware_follows_capacity_without_starving_anyone() {
        let ws = workers(2);
        report(&ws[0], 0.5, 0.1);
        report(&ws[1], 0.5, 0.2);
        // Hold some requests on each, as a steady state would, and count who wins the pick.
        let _a: Vec<_> = (0..2).map(|_| ws[0].begin()).collect();
        let _b: Vec<_> = (0..2).map(|_| ws[1].begin()).collect();
        let c = counts(&ws, Policy::CpuAware, 1000);
        assert_eq!(
            c[0], 0,
            "with equal load the larger worker is cheaper: {c:?}"
        );
        let _more: Vec<_> = (0..4).map(|_| ws[1].begin()).collect();
        // 3/0.1 = 30 vs 7/0.2 = 35: now the small one wins.
        let c = counts(&ws, Policy::CpuAware, 1000);
        assert_eq!(c[1], 0, "{c:?}");
    }

    #[test]
    fn cpu_aware_reads_cpu_only_while_fresh() {
        let ws = workers(2);
        report(&ws[0], 0.95, 1.0);
        report(&ws[1], 0.10, 1.0);
        let c = counts(&ws, Policy::CpuAware, 500);
        assert_eq!(
            c[0], 0,
            "hot worker avoided while its report is fresh: {c:?}"
        );
        // The same readings, once stale, are ignored: equal in-flight → the pair's first wins,
        // which is random, so both get traffic.
        let rr = AtomicUsize::new(0);
        let refs: Vec<&Arc<Worker>> = ws.iter().collect();
        let mut c = [0; 2];
        for _ in 0..500 {
            let ctx = PickContext {
                policy: Policy::CpuAware,
                source: TelemetrySource::Inband,
                stale_after_us: 2_000_000,
                now: now_us() + 3_000_000,
                rr: &rr,
                weighted: &CapacityWeighted::default(),
                weights: &HashMap::new(),
                slow_start_us: 0,
                affinity: Affinity::default(),
            };
            c[pick(&refs, &ctx)] += 1;
        }
        assert!(
            c[0] > 150 && c[1] > 150,
            "stale reports must not steer: {c:?}"
        );
    }

    #[test]
    fn cpu_aware_lets_moderate_utilization_be() {
        // 40% vs 85% busy, equal queues and cores: a lagging utilization figure must not steer
        // ordinary traffic, so both get their share.
        let ws = workers(2);
        report(&ws[0], 0.40, 1.0);
        report(&ws[1], 0.85, 1.0);
        let c = counts(&ws, Policy::CpuAware, 1000);
        assert!(c[0] > 350 && c[1] > 350, "{c:?}");
        // Saturated, it is avoided.
        report(&ws[1], 1.0, 1.0);
        assert_eq!(counts(&ws, Policy::CpuAware, 500)[1], 0);
    }

    #[test]
    fn p2c_never_picks_the_worst_of_two() {
        let ws = workers(2);
        let _slow: Vec<_> = (0..5).map(|_| ws[0].begin()).collect();
        assert_eq!(counts(&ws, Policy::P2cEwma, 200), vec![0, 200]);
    }
}
