//! # fulcrum-telemetry
//!
//! Owns the vocabulary of load that fulcrum's worker and balancer share, and the measurement
//! behind it:
//! - [`CpuMeter`]: how much CPU a process has used and how much it may use (cgroup v1 or v2
//!   quota and usage, or the process clock over the machine's cores);
//! - [`LoadTracker`]: request counters on the request path plus a sampler thread that turns
//!   them into windowed CPU utilization, requests/s and errors/s off the request path;
//! - [`LoadReport`]: the in-band report in ORCA's `endpoint-load-metrics` TEXT format, written
//!   by workers and parsed by the balancer;
//! - [`cgroupfs`]: where the cgroup hierarchies are (shared with the local provider);
//! - [`probe`]: a minimal blocking HTTP client with which tools (the deployer, the load
//!   generator's samplers, the experiment) read `/health`, `/load`, `/status` and switch policies.
//!
//! It does not own serving `/load`, the balancer's own polling on its async runtime, or reading
//! CloudWatch: those belong to the worker, the balancer and the AWS provider.

pub mod cgroupfs;
pub mod cpu;
pub mod probe;
mod report;
mod tracker;

pub use cpu::{CapacityOrigin, CpuMeter};
pub use report::{LoadReport, LoadReportError, LOAD_REPORT_HEADER, MAX_REPORT_LEN};
pub use tracker::{InFlight, LoadSnapshot, LoadTracker};
