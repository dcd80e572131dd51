//! # fulcrum-loadgen
//!
//! Owns `fulcrum bench` and the `results.json` schema every measurement is written in.
//!
//! It does not own what is measured (deployments, balancers) or how results are presented
//! (`fulcrum-report`).

pub mod results;
