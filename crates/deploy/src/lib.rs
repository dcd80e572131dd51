//! # fulcrum-deploy
//!
//! Owns where fulcrum's instances run. Today: kernel control groups ([`cgroup`]) that give an
//! emulated instance its CPU quota and memory limit.
//!
//! It does not own what runs inside an instance (`fulcrum-worker`, `fulcrum-balancer`) or how
//! CPU use is turned into a load figure (`fulcrum-telemetry`).

pub mod catalog;
pub mod cgroup;
pub mod topology;
