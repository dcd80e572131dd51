//! The commands that do more than hand flags to one crate: they call into the crates and print
//! what happened for a person (or as JSON).

use std::path::Path;

use crate::cli::{BenchArgs, ExperimentArgs, ReportArgs, UpArgs};
use fulcrum_deploy::topology::Topology;

pub fn local_up(_t: &Topology, _a: &UpArgs) -> anyhow::Result<()> {
    anyhow::bail!("local up: being built")
}

pub fn local_status(_state_dir: &Path, _name: &str, _json: bool) -> anyhow::Result<()> {
    anyhow::bail!("local status: being built")
}

pub fn local_down(_state_dir: &Path, _name: &str) -> anyhow::Result<()> {
    anyhow::bail!("local down: being built")
}

pub fn bench(_a: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench: being built")
}

pub fn report(_a: ReportArgs) -> anyhow::Result<()> {
    anyhow::bail!("report: being built")
}

pub fn experiment(_a: ExperimentArgs) -> anyhow::Result<()> {
    anyhow::bail!("experiment: being built")
}
