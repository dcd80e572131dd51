//! # fulcrum-experiment
//!
//! Owns `fulcrum experiment`: the seed's experiment and the policy shoot-out, end to end.
