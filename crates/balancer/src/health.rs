//! Active health checks: each worker is asked `GET <path>` every interval (±10 % jitter, so
//! checks of many workers do not line up); `unhealthy_threshold` failures in a row mark it
//! unhealthy, `healthy_threshold` successes in a row healthy again. A check whose connection
//! is refused also calls `on_refused`, which ejects the worker at once as a refused request
//! would: a worker that dies while no request happens to be sent to it is taken out at the
//! next check rather than `unhealthy_threshold` checks later.

use std::sync::Arc;
use std::time::Duration;

use crate::config::HealthCheck;
use crate::fleet::{Health, Worker};
use crate::probe::Probe;
use crate::transport::Transport;

pub fn spawn(
    worker: Arc<Worker>,
    check: HealthCheck,
    transport: Transport,
    on_refused: impl Fn() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut probe = Probe::new(worker.addr, transport);
        let mut successes = 0u32;
        let mut failures = 0u32;
        loop {
            let ok = match probe.get(&check.path, check.timeout).await {
                Ok((status, _)) if status.is_success() => true,
                Ok((status, _)) => {
                    tracing::debug!(worker = %worker.addr, %status, "health check failed");
                    false
                }
                Err(e) => {
                    tracing::debug!(worker = %worker.addr, error = %e, "health check failed");
                    if e.refused {
                        on_refused();
                    }
                    false
                }
            };
            if ok {
                successes += 1;
                failures = 0;
            } else {
                failures += 1;
                successes = 0;
            }
            let next = match worker.health() {
                // The first answer settles an unchecked worker's state.
                Health::Unknown if ok => Some(Health::Healthy),
                Health::Unknown | Health::Healthy if failures >= check.unhealthy_threshold => {
                    Some(Health::Unhealthy)
                }
                Health::Unhealthy if successes >= check.healthy_threshold => Some(Health::Healthy),
                _ => None,
            };
            if let Some(h) = next {
                if worker.set_health(h) {
                    match h {
                        Health::Unhealthy => {
                            tracing::warn!(worker = %worker.addr, "worker unhealthy")
                        }
                        _ => tracing::info!(worker = %worker.addr, "worker healthy"),
                    }
                }
            }
            tokio::time::sleep(jittered(check.interval)).await;
        }
    })
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.9 + fastrand::f64() * 0.2)
}
