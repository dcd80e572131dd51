//! What of a deployment exists already, looked up before the plan is shown.

use fulcrum_deploy::topology::Topology;

use crate::error::{AwsError, Result};
use crate::instances::{self, filter, tag_filter, Ec2Instance};
use crate::session::Session;
use crate::state::{State, StateDir};
use crate::{tags, AwsOptions};

pub struct Inventory {
    /// The key pair exists and its private key is here.
    pub key_pair: bool,
    pub balancer_group: Option<String>,
    pub worker_group: Option<String>,
    pub profile_ready: bool,
    pub bucket_exists: bool,
    pub instances: Vec<Ec2Instance>,
}

impl Inventory {
    /// Pending or running instances of `role` (and `cluster`, for workers).
    pub fn live(&self, role: &str, cluster: Option<u32>) -> Vec<&Ec2Instance> {
        self.instances
            .iter()
            .filter(|i| i.is_live() && i.role == role && i.cluster == cluster)
            .collect()
    }
}

pub async fn inventory(
    session: &Session,
    dir: &StateDir,
    st: &State,
    t: &Topology,
    opts: &AwsOptions,
) -> Result<Inventory> {
    let ec2 = &session.ec2;
    let key_name = tags::key_pair(&t.name);
    let key_pair = dir.key_file(&key_name).exists() && key_pair_exists(ec2, &key_name).await?;
    let balancer_group = find_group(ec2, &t.name, &tags::balancer_group(&t.name)).await?;
    let worker_group = find_group(ec2, &t.name, &tags::worker_group(&t.name)).await?;
    let profile_ready = match &opts.instance_profile {
        Some(_) => true,
        None => profile_ready(session, &tags::balancer_role(&t.name)).await?,
    };
    let bucket_exists = match (&opts.binary_url, &st.bucket) {
        (None, Some(b)) => session.s3.head_bucket().bucket(b).send().await.is_ok(),
        _ => false,
    };
    let instances = instances::tagged_or_recorded(ec2, &t.name, &st.instances).await?;
    Ok(Inventory {
        key_pair,
        balancer_group,
        worker_group,
        profile_ready,
        bucket_exists,
        instances,
    })
}

/// Whether the instance profile `name` exists with its role (of the same name) in it.
async fn profile_ready(session: &Session, name: &str) -> Result<bool> {
    match session
        .iam
        .get_instance_profile()
        .instance_profile_name(name)
        .send()
        .await
    {
        Ok(p) => Ok(p
            .instance_profile()
            .is_some_and(|p| p.roles().iter().any(|r| r.role_name() == name))),
        Err(e) => {
            let e = AwsError::api(format!("GetInstanceProfile {name}"), e);
            if !e.is_not_found() {
                return Err(e);
            }
            Ok(false)
        }
    }
}

pub async fn key_pair_exists(ec2: &aws_sdk_ec2::Client, name: &str) -> Result<bool> {
    let r = ec2
        .describe_key_pairs()
        .filters(filter("key-name", [name]))
        .send()
        .await
        .map_err(|e| AwsError::api(format!("DescribeKeyPairs {name}"), e))?;
    Ok(!r.key_pairs().is_empty())
}

async fn find_group(
    ec2: &aws_sdk_ec2::Client,
    deployment: &str,
    name: &str,
) -> Result<Option<String>> {
    let r = ec2
        .describe_security_groups()
        .filters(filter("group-name", [name]))
        .filters(tag_filter(tags::DEPLOYMENT, [deployment]))
        .send()
        .await
        .map_err(|e| AwsError::api(format!("DescribeSecurityGroups {name}"), e))?;
    Ok(r.security_groups()
        .first()
        .and_then(|g| g.group_id())
        .map(str::to_owned))
}
