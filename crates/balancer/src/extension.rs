//! Extension points for providers that live outside this crate (the AWS provider): workers
//! discovered from an inventory, and CloudWatch `CPUUtilization` read from the real service.
//!
//! A target group opts in with `discovery = { provider = "NAME", ... }`; the rest of that table
//! goes to the provider registered under NAME. `[telemetry] cloudwatch_source = "aws"` makes the
//! `cloudwatch` source read [`CloudwatchCpu`] instead of the local emulation.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A worker found by a discovery provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredWorker {
    pub addr: SocketAddr,
    /// The provider's id for it (an EC2 instance id), used to match CloudWatch metrics.
    pub instance_id: Option<String>,
}

/// Lists a target group's workers; called in the background, never on the request path.
pub trait Discovery: Send + Sync + 'static {
    /// The current workers. An error keeps the last good list in force.
    fn list(&self) -> BoxFuture<'_, Result<Vec<DiscoveredWorker>, String>>;
}

/// Builds a [`Discovery`] from a target group's `discovery` table (minus `provider`).
pub trait DiscoveryProvider: Send + Sync + 'static {
    fn create(&self, settings: &toml::Table) -> Result<Arc<dyn Discovery>, String>;
}

/// Instance id → `(CPU utilization as a fraction, datapoint time)`.
pub type CpuDatapoints = HashMap<String, (f64, SystemTime)>;

/// The latest CloudWatch `CPUUtilization` datapoint per instance.
pub trait CloudwatchCpu: Send + Sync + 'static {
    /// The newest datapoint of each instance that has data.
    fn latest(&self, instance_ids: Vec<String>) -> BoxFuture<'_, Result<CpuDatapoints, String>>;
}

/// What the binary plugs in; empty by default.
#[derive(Clone, Default)]
pub struct Extensions {
    pub discovery: HashMap<String, Arc<dyn DiscoveryProvider>>,
    pub cloudwatch: Option<Arc<dyn CloudwatchCpu>>,
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extensions")
            .field("discovery", &self.discovery.keys().collect::<Vec<_>>())
            .field("cloudwatch", &self.cloudwatch.is_some())
            .finish()
    }
}
