//! # fulcrum-aws
//!
//! Owns the AWS provider: `fulcrum up|status|down --provider aws` (the seed's EC2 deployment
//! done right: a plan with its hourly cost, a key pair, least-privilege security groups, an
//! instance profile instead of keys in user data, the binary delivered through a presigned S3
//! URL, systemd services, waiters with backoff, a state file written as each resource exists,
//! teardown in dependency order), and the two balancer extensions that only make sense on AWS:
//! the `ec2` discovery provider (workers found by tag) and the CloudWatch `CPUUtilization`
//! source.
//!
//! `up` finds what exists, prints the plan, and hands over to a deployer with one step per
//! resource kind in dependency order (network, key pair, security groups, instance profile,
//! binary delivery, each cluster's workers, the balancer), then waits; [`tags`] and the
//! instance lookups are the vocabulary `up`, `down`, `status` and discovery share.
//!
//! It does not own the topology or the instance catalog (`fulcrum-deploy`), what runs on the
//! instances (`fulcrum-worker`, `fulcrum-balancer`), nor the command line (`fulcrum`): the
//! functions here are blocking and build their own async runtime.
//!
//! Every resource carries the tag `fulcrum:deployment=<name>`; instances also carry
//! `fulcrum:role` (`worker` or `balancer`), `fulcrum:cluster` and `Name`. An instance may carry
//! `fulcrum:endpoint=HOST:PORT`, the address to reach its service at instead of its own IP
//! (set by an operator who fronts instances with a tunnel or proxy, and by the tests, which map
//! emulator instances to workers on loopback). `FULCRUM_AWS_PROBE_CIDRS` limits the addresses
//! fulcrum ever sends a health probe or balancer traffic to (see [`probe::ProbeScope`]).

mod cloudwatch;
mod delivery;
mod discovery;
mod down;
mod error;
mod experiment;
mod health;
mod instance_profile;
mod instances;
pub mod probe;
mod security_groups;
mod session;
pub mod state;
mod status;
pub mod tags;
mod up;
pub mod user_data;
mod wait;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use cloudwatch::{newest_per_instance, CloudwatchCpuSource};
pub use discovery::Ec2DiscoveryProvider;
pub use error::AwsError;
pub use experiment::experiment;

/// What `up`, `status` and `down` need besides the topology (the command line's `--region`,
/// `--yes`, `--wait` ... flags).
#[derive(Debug, Clone)]
pub struct AwsOptions {
    /// Region; default: the SDK's chain (AWS_REGION, profile), then the topology's or the
    /// state's.
    pub region: Option<String>,
    /// Apply the plan without asking.
    pub yes: bool,
    pub wait: Wait,
    pub wait_timeout: Duration,
    /// Who may reach the balancer's HTTP/HTTPS ports.
    pub allow_cidr: String,
    /// Who may reach SSH (22) on every instance; closed when `None`.
    pub ssh_cidr: Option<String>,
    /// AMI id instead of the current Amazon Linux 2023 from the public SSM parameter; also
    /// accepts `resolve:ssm:PARAMETER` to name another parameter.
    pub ami: Option<String>,
    /// Subnet to launch into instead of the default VPC's default subnets.
    pub subnet: Option<String>,
    /// Existing instance profile for the balancer (AWS Academy cannot create roles).
    pub instance_profile: Option<String>,
    /// Where instances download the fulcrum binary instead of the deployment's S3 bucket.
    pub binary_url: Option<String>,
    /// `<state_dir>/<deployment>/state.json` and the private key live here.
    pub state_dir: PathBuf,
    /// The fulcrum binary to ship to the instances (normally the running one).
    pub binary: PathBuf,
}

/// What `up` waits for once the instances are launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Every instance running and answering `/health`.
    Healthy,
    /// Every instance in the `running` state.
    Running,
    /// Nothing: return as soon as everything is launched.
    None,
}

impl std::str::FromStr for Wait {
    type Err = AwsError;
    fn from_str(s: &str) -> Result<Wait, AwsError> {
        match s {
            "healthy" => Ok(Wait::Healthy),
            "running" => Ok(Wait::Running),
            "none" => Ok(Wait::None),
            other => Err(AwsError::Usage(format!(
                "--wait `{other}` is not one of healthy, running, none"
            ))),
        }
    }
}

/// Deploys (or completes) the topology on EC2: prints the plan with its hourly cost, asks (or
/// takes `--yes`), creates what is missing, waits as asked.
pub fn up(topology: &fulcrum_deploy::topology::Topology, opts: &AwsOptions) -> anyhow::Result<()> {
    block_on(up::up(topology, opts)).map(|_| ())
}

/// Prints the deployment's instances: role, cluster, type, state, addresses, health.
pub fn status(name: &str, opts: &AwsOptions, json: bool) -> anyhow::Result<()> {
    block_on(status::status(name, opts, json))
}

/// Removes everything the deployment's state names (and instances tagged with it), in
/// dependency order; with `by_tag`, finds every resource by its tag (state file lost).
pub fn down(name: &str, opts: &AwsOptions, by_tag: bool) -> anyhow::Result<()> {
    block_on(down::down(name, opts, by_tag))
}

/// The deployment as the experiment and the report see it: balancer URL and every instance.
pub fn deployment(
    name: &str,
    opts: &AwsOptions,
) -> anyhow::Result<fulcrum_loadgen::results::Deployment> {
    block_on(status::deployment(name, opts))
}

/// The balancer extensions of this provider: the `ec2` discovery provider and the AWS
/// CloudWatch `CPUUtilization` source. Both create their SDK clients lazily, on first use, from
/// the standard credential and region chain (on an instance: its instance profile and region).
pub fn extensions() -> fulcrum_balancer::Extensions {
    let mut ext = fulcrum_balancer::Extensions::default();
    ext.discovery.insert(
        discovery::PROVIDER_NAME.to_owned(),
        Arc::new(Ec2DiscoveryProvider),
    );
    ext.cloudwatch = Some(Arc::new(CloudwatchCpuSource::new(None)));
    ext
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    // The SDK's HTTPS client brings aws-lc-rs beside the ring provider the balancer uses; with
    // both in the graph rustls wants one installed explicitly.
    fulcrum_balancer::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(f)
}
