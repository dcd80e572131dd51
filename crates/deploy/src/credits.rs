//! Burstable CPU credits (t2/t3), emulated by adjusting quotas over time.
//!
//! AWS's model: one credit is one vCPU at 100% for one minute. An instance earns credits at its
//! baseline (`baseline × vCPUs × 60` per hour), spends them on whatever CPU it uses, banks at
//! most 24 hours of earnings, and when the bank is empty is held at its baseline. The keeper
//! replays that every second for every burstable instance of a local deployment: CPU used is
//! read from the instance's cgroup (in real cores, converted to emulated vCPUs through the
//! deployment's scale), and the quota is switched between the full `vCPUs × scale` and the
//! baseline `baseline × vCPUs × scale`.
//!
//! t2 instances start with 30 launch credits per vCPU, t3 (standard mode) with none, unless
//! `[local] initial_credits` says otherwise. The keeper writes the balances to `credits.json`
//! in the deployment's directory, where `status` and reports read them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::catalog;
use crate::state::StateDir;

/// One instance's credit account, as written to `credits.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Account {
    pub balance: f64,
    pub max: f64,
    /// Held at its baseline because the bank is empty.
    pub throttled: bool,
}

/// Credits an instance of `type_name` starts with.
pub fn launch_credits(type_name: &str, initial: Option<f64>) -> f64 {
    if let Some(i) = initial {
        return i;
    }
    match catalog::lookup(type_name) {
        Ok(t) if t.name.starts_with("t2.") => 30.0 * t.vcpus as f64,
        _ => 0.0,
    }
}

/// Advances an account by `dt` during which the instance used `used_vcpus` emulated vCPUs.
/// Returns whether the instance must be held at its baseline.
pub fn step(a: &mut Account, baseline_vcpus: f64, used_vcpus: f64, dt: Duration) -> bool {
    let minutes = dt.as_secs_f64() / 60.0;
    a.balance = (a.balance + (baseline_vcpus - used_vcpus) * minutes).clamp(0.0, a.max);
    // Spend down to zero, then hold; release once ten minutes of baseline have been earned
    // back, so the quota does not flip every second at the boundary.
    a.throttled = if a.throttled {
        a.balance < baseline_vcpus * 10.0
    } else {
        a.balance <= 0.0
    };
    a.throttled
}

/// Runs the keeper for deployment `name` until it is removed (its state file disappears).
pub fn keep(state_dir: &Path, name: &str, initial: Option<f64>) -> anyhow::Result<()> {
    let dir = StateDir::new(state_dir, name);
    let mut accounts: BTreeMap<String, Account> = BTreeMap::new();
    let mut last: BTreeMap<String, (Instant, Duration)> = BTreeMap::new();
    loop {
        let Some(state) = dir.load()? else {
            return Ok(()); // the deployment is gone
        };
        let Some(e) = state.emulation.clone() else {
            anyhow::bail!("deployment `{name}` has no emulation; nothing to keep");
        };
        let period = Duration::from_micros(e.period_us);
        for inst in &state.instances {
            let (Some(group), Ok(t)) = (&inst.cgroup, catalog::lookup(&inst.instance_type)) else {
                continue;
            };
            let Some(baseline) = t.baseline_per_vcpu else {
                continue; // not burstable
            };
            let Ok(used) = group.cpu_usage() else {
                continue;
            };
            let now = Instant::now();
            let account = accounts
                .entry(inst.name.clone())
                .or_insert_with(|| Account {
                    balance: launch_credits(t.name, initial),
                    max: t.max_credits().unwrap_or(0.0),
                    throttled: false,
                });
            let was = account.throttled;
            if let Some((then, before)) = last.insert(inst.name.clone(), (now, used)) {
                let dt = now.duration_since(then);
                let used_vcpus = used.saturating_sub(before).as_secs_f64()
                    / dt.as_secs_f64().max(1e-6)
                    / e.scale;
                step(account, baseline * t.vcpus as f64, used_vcpus, dt);
            } else if account.balance <= 0.0 {
                account.throttled = true;
            }
            if account.throttled != was {
                let vcpus = if account.throttled {
                    baseline * t.vcpus as f64
                } else {
                    t.vcpus as f64
                };
                let (quota, period) = bandwidth(vcpus * e.scale, period);
                group.set_cpu_limit(quota, period)?;
            }
        }
        let tmp = dir.root.join(".credits.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&accounts)?)?;
        std::fs::rename(&tmp, dir.root.join("credits.json"))?;
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Quota and period for `cores`: the deployment's period, stretched when the quota would fall
/// under the kernel's 1 ms minimum (a baseline can be a small fraction of a small quota).
pub fn bandwidth(cores: f64, period: Duration) -> (Duration, Duration) {
    let min_quota = Duration::from_millis(1);
    let quota = period.mul_f64(cores);
    if quota >= min_quota {
        (quota, period)
    } else {
        (
            min_quota,
            min_quota.div_f64(cores).min(Duration::from_secs(1)),
        )
    }
}

/// The balances the keeper last wrote, if it runs.
pub fn read(dir: &StateDir) -> Option<BTreeMap<String, Account>> {
    serde_json::from_slice(&std::fs::read(dir.root.join("credits.json")).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t2_micro_spends_its_bank_then_is_held_at_baseline_then_earns_back() {
        let t = catalog::lookup("t2.micro").unwrap();
        let mut a = Account {
            balance: launch_credits(t.name, None),
            max: t.max_credits().unwrap(),
            throttled: false,
        };
        assert_eq!(a.balance, 30.0);
        // Busy at 100% of its one vCPU: 0.9 credit a minute net; 30 credits last ~33 minutes.
        let minute = Duration::from_secs(60);
        let mut minutes = 0;
        while !step(&mut a, 0.1, 1.0, minute) {
            minutes += 1;
            assert!(minutes < 100);
        }
        assert_eq!(minutes, 33);
        assert_eq!(a.balance, 0.0);
        // Held at baseline it uses 0.1 vCPU: earns nothing net, stays held.
        assert!(step(&mut a, 0.1, 0.1, minute));
        // Idle, it earns 0.1 credit a minute; released once 10 minutes of baseline are banked.
        let mut idle = 0;
        while step(&mut a, 0.1, 0.0, minute) {
            idle += 1;
        }
        assert!((8..=11).contains(&idle), "{idle}");
        assert_eq!(launch_credits("t3.micro", None), 0.0);
        // A 0.043-core baseline keeps its ratio by stretching the period, not by rounding up.
        let (q, p) = bandwidth(0.0433, Duration::from_millis(10));
        assert_eq!(q, Duration::from_millis(1));
        assert!((q.as_secs_f64() / p.as_secs_f64() - 0.0433).abs() < 1e-4);
        assert_eq!(
            bandwidth(0.2, Duration::from_millis(10)).0,
            Duration::from_millis(2)
        );
        assert_eq!(launch_credits("m5.large", Some(5.0)), 5.0);
    }
}
