//! The balancer's monotonic clock, in microseconds: what every timestamp on a worker's state
//! (reports, estimates, ejections) is measured in.

use std::sync::OnceLock;
use std::time::Instant;

/// Monotonic microseconds since the balancer started; 0 is reserved for "never".
pub fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}
