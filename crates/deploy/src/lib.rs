//! # fulcrum-deploy
//!
//! Owns where fulcrum's instances run and what a deployment is: the [`topology`] file, the
//! instance [`catalog`], and the [`local`] provider, which runs every instance as a `fulcrum
//! worker` process in its own kernel control group ([`cgroup`]) whose CPU quota and memory limit
//! emulate its instance type, behind a `fulcrum balance` process, recording every step in a
//! [`state`] file so `down` can always undo `up`; with `[local] credits = true`, a keeper
//! process ([`credits`]) replays AWS's burstable CPU credits by moving quotas over time.
//! Beside a deployment run its [`companion`]s, among them [`antagonist`]s: co-tenants that take
//! a share of a worker's quota on a schedule. [`local::up`] runs as phases of one deployer
//! (retire, record, start, await, targets, balancer, credit keeper), each process spawned,
//! recorded and saved in one step; every failure is one [`error::DeployError`].
//!
//! It does not own what runs inside an instance (`fulcrum-worker`, `fulcrum-balancer`) or how
//! CPU use is turned into a load figure (`fulcrum-telemetry`).

pub mod antagonist;
pub mod catalog;
pub mod cgroup;
pub mod companion;
pub mod credits;
pub mod error;
pub mod local;
pub mod process;
pub mod state;
pub mod topology;
