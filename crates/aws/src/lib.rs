//! # fulcrum-aws
//!
//! Owns the AWS provider (being built).
