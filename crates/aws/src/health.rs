//! The health of a deployment's instances, asked from outside the VPC the way an operator sees
//! it: the balancer at its public address; a worker at its `fulcrum:endpoint` tag when it has
//! one, otherwise through the balancer (its cluster's route answering), because the workers'
//! port admits only the balancer's security group. `status` shows it; `up` waits for it.

use std::collections::HashMap;
use std::time::Duration;

use crate::instances::Ec2Instance;
use crate::probe::{self, ProbeScope};
use crate::state::State;
use crate::tags;

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    /// `/health` answered 2xx.
    Healthy,
    /// Its cluster's route answered through the balancer (the worker itself is not reachable
    /// from here).
    ServingViaBalancer,
    Unhealthy,
    /// Not asked, and why.
    NotProbed(&'static str),
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy | Health::ServingViaBalancer)
    }

    pub fn label(&self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::ServingViaBalancer => "serving (via balancer)",
            Health::Unhealthy => "unhealthy",
            Health::NotProbed(why) => why,
        }
    }
}

/// The health of each instance, probed concurrently.
pub async fn health_of(
    found: &[Ec2Instance],
    st: &State,
    scope: &ProbeScope,
) -> HashMap<String, Health> {
    let probe = |addr: Option<std::net::SocketAddr>, path: String| async move {
        match addr {
            None => Health::NotProbed("no address"),
            Some(a) if !scope.allows(a.ip()) => {
                Health::NotProbed("outside FULCRUM_AWS_PROBE_CIDRS")
            }
            Some(a) => {
                if probe::get_ok(a, &path, PROBE_TIMEOUT).await {
                    Health::Healthy
                } else {
                    Health::Unhealthy
                }
            }
        }
    };
    let balancer = found
        .iter()
        .find(|i| i.role == tags::ROLE_BALANCER && i.state == "running")
        .and_then(|b| b.outside_address(st.balancer_port));
    let checks = found.iter().map(|i| {
        let probe = &probe;
        async move {
            let h = if i.state != "running" {
                Health::NotProbed("not running")
            } else if i.role == tags::ROLE_BALANCER || i.endpoint.is_some() {
                let port = if i.role == tags::ROLE_BALANCER {
                    st.balancer_port
                } else {
                    st.worker_port
                };
                probe(i.outside_address(port), "/health".into()).await
            } else {
                let route = i
                    .cluster
                    .and_then(|c| st.clusters.iter().find(|x| x.id == c))
                    .map(|c| format!("{}?work_us=0", c.route));
                match route {
                    None => Health::NotProbed("unknown cluster"),
                    Some(path) => match probe(balancer, path).await {
                        Health::Healthy => Health::ServingViaBalancer,
                        other => other,
                    },
                }
            };
            (i.id.clone(), h)
        }
    });
    join_all(checks).await.into_iter().collect()
}

/// Runs futures concurrently on the current task and collects their results in order (the
/// probes borrow the instance list, so they cannot be spawned).
async fn join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut pending: Vec<Option<std::pin::Pin<Box<F>>>> = futs.map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        out[i] = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => done = false,
                }
            }
        }
        if done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}
