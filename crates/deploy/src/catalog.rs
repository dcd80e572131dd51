//! EC2 instance types with AWS's published figures: vCPUs, baseline CPU for burstable types,
//! memory, and the Linux on-demand price in us-east-1.
//!
//! Sources: the "Amazon EC2 instance types" pages (burstable baselines and credit rates) and
//! the on-demand pricing page, as published for us-east-1. Prices change; they are used for
//! the cost shown in plans, never for anything that must be exact.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct InstanceType {
    pub name: &'static str,
    pub vcpus: u32,
    /// Burstable types: the share of each vCPU sustained without credits (e.g. 0.10).
    pub baseline_per_vcpu: Option<f64>,
    pub memory_mib: u64,
    /// Linux on-demand, us-east-1, USD per hour.
    pub price_per_hour: f64,
}

impl InstanceType {
    /// CPU credits earned per hour (one credit = one vCPU at 100% for one minute).
    pub fn credits_per_hour(&self) -> Option<f64> {
        self.baseline_per_vcpu.map(|b| b * self.vcpus as f64 * 60.0)
    }

    /// Most credits a burstable instance can bank (24 hours of earnings).
    pub fn max_credits(&self) -> Option<f64> {
        self.credits_per_hour().map(|c| c * 24.0)
    }

    pub fn is_burstable(&self) -> bool {
        self.baseline_per_vcpu.is_some()
    }
}

const fn t(
    name: &'static str,
    vcpus: u32,
    baseline: f64,
    memory_mib: u64,
    price: f64,
) -> InstanceType {
    InstanceType {
        name,
        vcpus,
        baseline_per_vcpu: Some(baseline),
        memory_mib,
        price_per_hour: price,
    }
}

const fn fixed(name: &'static str, vcpus: u32, memory_mib: u64, price: f64) -> InstanceType {
    InstanceType {
        name,
        vcpus,
        baseline_per_vcpu: None,
        memory_mib,
        price_per_hour: price,
    }
}

pub const CATALOG: &[InstanceType] = &[
    t("t2.nano", 1, 0.05, 512, 0.0058),
    t("t2.micro", 1, 0.10, 1024, 0.0116),
    t("t2.small", 1, 0.20, 2048, 0.023),
    t("t2.medium", 2, 0.20, 4096, 0.0464),
    t("t2.large", 2, 0.30, 8192, 0.0928),
    t("t2.xlarge", 4, 0.225, 16384, 0.1856),
    t("t2.2xlarge", 8, 0.169, 32768, 0.3712),
    t("t3.nano", 2, 0.05, 512, 0.0052),
    t("t3.micro", 2, 0.10, 1024, 0.0104),
    t("t3.small", 2, 0.20, 2048, 0.0208),
    t("t3.medium", 2, 0.20, 4096, 0.0416),
    t("t3.large", 2, 0.30, 8192, 0.0832),
    t("t3.xlarge", 4, 0.40, 16384, 0.1664),
    fixed("m5.large", 2, 8192, 0.096),
    fixed("m5.xlarge", 4, 16384, 0.192),
    fixed("c5.large", 2, 4096, 0.085),
    fixed("c5.xlarge", 4, 8192, 0.17),
];

/// An instance type that is not in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown instance type `{name}`{}", suggestion(.close))]
pub struct UnknownType {
    pub name: String,
    pub close: Vec<&'static str>,
}

fn suggestion(close: &[&str]) -> String {
    if close.is_empty() {
        let all: Vec<&str> = CATALOG.iter().map(|t| t.name).collect();
        format!("; known types: {}", all.join(", "))
    } else {
        format!("; did you mean {}?", close.join(" or "))
    }
}

/// Looks a type up by its exact name (case-insensitive).
pub fn lookup(name: &str) -> Result<&'static InstanceType, UnknownType> {
    let wanted = name.trim().to_ascii_lowercase();
    if let Some(t) = CATALOG.iter().find(|t| t.name == wanted) {
        return Ok(t);
    }
    let mut scored: Vec<(usize, &'static str)> = CATALOG
        .iter()
        .map(|t| (strsim::levenshtein(&wanted, t.name), t.name))
        .filter(|(d, _)| *d <= 3)
        .collect();
    scored.sort();
    Err(UnknownType {
        name: name.to_owned(),
        close: scored.into_iter().take(3).map(|(_, n)| n).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_types_have_aws_figures() {
        let micro = lookup("t2.micro").unwrap();
        assert_eq!((micro.vcpus, micro.memory_mib), (1, 1024));
        assert_eq!(micro.baseline_per_vcpu, Some(0.10));
        assert_eq!(micro.credits_per_hour(), Some(6.0));
        let large = lookup("T2.Large").unwrap();
        assert_eq!((large.vcpus, large.memory_mib), (2, 8192));
        assert!((large.credits_per_hour().unwrap() - 36.0).abs() < 1e-9);
        assert!(!lookup("m5.large").unwrap().is_burstable());
        for needed in [
            "t2.nano",
            "t2.small",
            "t2.medium",
            "t2.xlarge",
            "t3.micro",
            "t3.small",
            "t3.medium",
            "t3.large",
            "c5.large",
        ] {
            assert!(lookup(needed).is_ok(), "{needed}");
        }
    }

    #[test]
    fn unknown_types_suggest_close_matches() {
        let e = lookup("t2.mirco").unwrap_err();
        assert!(e.close.contains(&"t2.micro"), "{e}");
        assert!(e.to_string().contains("did you mean t2.micro"), "{e}");
        let e = lookup("z9.huge").unwrap_err();
        assert!(e.close.is_empty());
        assert!(e.to_string().contains("known types: t2.nano"), "{e}");
    }
}
