//! `fulcrum experiment --provider aws`: the same experiment as on the local provider, driven
//! against the EC2 deployment through its balancer's public address.
//!
//! From outside the VPC only the balancer is reachable (its admin listener stays on the
//! instance's loopback, the workers admit only the balancer), so the run has no admin address
//! and samples no worker CPU itself; the experiment's load and latency figures are complete.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use fulcrum_experiment::{Options, Outcome, Target};

use crate::{AwsOptions, Wait};

pub fn experiment(
    opts: &Options,
    aws: &AwsOptions,
    interrupted: &AtomicBool,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut timing = opts.timing();
    // Real CloudWatch publishes EC2 metrics every 60 s at best; nothing to shorten here.
    timing.cloudwatch_period = Duration::from_secs(60);
    let name = opts.topology.name.clone();
    let mut brought_up = false;
    if opts.reuse {
        say("step 1/5: reusing the running AWS deployment");
    } else {
        say("step 1/5: deploying the topology on AWS");
        let up_opts = AwsOptions {
            wait: Wait::Healthy,
            ..aws.clone()
        };
        brought_up = crate::block_on(crate::up::up(&opts.topology, &up_opts))?;
    }
    let result = (|| {
        let deployment = crate::deployment(&name, aws)?;
        let target = Target {
            balancer: deployment.balancer_url.clone(),
            deployment,
            admin: None,
            workers: Vec::new(),
            // No peers, replicas or co-tenants on EC2: the shoot-out is skipped, and says so.
            local: None,
        };
        fulcrum_experiment::run(&target, opts, &timing, interrupted, started, say)
    })();
    // Only what this run created is removed; --keep leaves it, unless the run was interrupted.
    if brought_up && (!opts.keep || interrupted.load(std::sync::atomic::Ordering::Relaxed)) {
        say("removing the deployment (use --keep to leave it running)");
        crate::down(&name, aws, false)?;
    }
    result
}
