//! # fulcrum-report
//!
//! Owns turning a `results.json` into `REPORT.md` and a self-contained `index.html`.
//! It does not measure anything (`fulcrum-loadgen`, `fulcrum-experiment` do).
