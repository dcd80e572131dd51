//! Names and tags of a deployment's resources: one place, so `up`, `down --by-tag`, discovery
//! and status agree on them.

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};

/// Every resource of a deployment carries `fulcrum:deployment=<name>`.
pub const DEPLOYMENT: &str = "fulcrum:deployment";
/// `worker` or `balancer`.
pub const ROLE: &str = "fulcrum:role";
/// The cluster id of a worker.
pub const CLUSTER: &str = "fulcrum:cluster";
/// Optional `HOST:PORT` to reach an instance's service at instead of its own address.
pub const ENDPOINT: &str = "fulcrum:endpoint";
pub const NAME: &str = "Name";

pub const ROLE_WORKER: &str = "worker";
pub const ROLE_BALANCER: &str = "balancer";

/// Base name of every named resource of the deployment.
pub fn base(deployment: &str) -> String {
    format!("fulcrum-{deployment}")
}

pub fn key_pair(deployment: &str) -> String {
    base(deployment)
}

pub fn balancer_group(deployment: &str) -> String {
    format!("{}-balancer", base(deployment))
}

pub fn worker_group(deployment: &str) -> String {
    format!("{}-workers", base(deployment))
}

/// The balancer's IAM role and instance profile share this name.
pub fn balancer_role(deployment: &str) -> String {
    format!("{}-balancer", base(deployment))
}

/// Bucket names are global: a random suffix (kept in the state) makes them unique, the prefix
/// lets `down --by-tag` find them.
pub fn bucket_prefix(deployment: &str) -> String {
    format!("{}-", base(deployment))
}

pub fn worker_name(deployment: &str, cluster: u32, index: usize) -> String {
    format!("{}-c{cluster}-{index}", base(deployment))
}

pub fn balancer_name(deployment: &str) -> String {
    format!("{}-balancer", base(deployment))
}

/// The tags an EC2 resource is created with: the deployment's, then `extra`.
pub fn tag_spec(rt: ResourceType, deployment: &str, extra: &[(&str, &str)]) -> TagSpecification {
    let mut b = TagSpecification::builder()
        .resource_type(rt)
        .tags(Tag::builder().key(DEPLOYMENT).value(deployment).build());
    for (k, v) in extra {
        b = b.tags(Tag::builder().key(*k).value(*v).build());
    }
    b.build()
}
