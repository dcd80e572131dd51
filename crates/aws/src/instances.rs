//! The deployment's EC2 instances as fulcrum sees them: found by tag or id, with their role,
//! cluster, state and addresses.

use std::net::{IpAddr, SocketAddr};

use aws_sdk_ec2::types::{Filter, Instance as SdkInstance, InstanceStateName};

use crate::error::{AwsError, Result};
use crate::state::{self, State};
use crate::tags;

#[derive(Debug, Clone, PartialEq)]
pub struct Ec2Instance {
    pub id: String,
    pub state: String,
    pub role: String,
    pub cluster: Option<u32>,
    pub instance_type: String,
    pub name: Option<String>,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    /// The `fulcrum:endpoint` tag: where to reach the service instead of the instance's IP.
    pub endpoint: Option<SocketAddr>,
}

impl Ec2Instance {
    pub fn from_sdk(i: &SdkInstance) -> Ec2Instance {
        let tag = |k: &str| {
            i.tags()
                .iter()
                .find(|t| t.key() == Some(k))
                .and_then(|t| t.value())
                .map(str::to_owned)
        };
        Ec2Instance {
            id: i.instance_id().unwrap_or_default().to_owned(),
            state: i
                .state()
                .and_then(|s| s.name())
                .map_or("unknown", |n| n.as_str())
                .to_owned(),
            role: tag(tags::ROLE).unwrap_or_default(),
            cluster: tag(tags::CLUSTER).and_then(|c| c.parse().ok()),
            instance_type: i
                .instance_type()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            name: tag(tags::NAME),
            public_ip: i.public_ip_address().map(str::to_owned),
            private_ip: i.private_ip_address().map(str::to_owned),
            endpoint: tag(tags::ENDPOINT).and_then(|e| e.parse().ok()),
        }
    }

    /// Pending or running: it counts towards the topology's instances.
    pub fn is_live(&self) -> bool {
        self.state == "pending" || self.state == "running"
    }

    pub fn is_gone(&self) -> bool {
        self.state == "terminated"
    }

    /// Where fulcrum reaches the service of this instance from outside the VPC: the endpoint
    /// tag, else the public address.
    pub fn outside_address(&self, port: u16) -> Option<SocketAddr> {
        self.endpoint.or_else(|| {
            let ip: IpAddr = self.public_ip.as_deref()?.parse().ok()?;
            Some(SocketAddr::new(ip, port))
        })
    }

    /// Where a peer inside the VPC reaches it: the endpoint tag, else the private address.
    pub fn inside_address(&self, port: u16) -> Option<SocketAddr> {
        self.endpoint.or_else(|| {
            let ip: IpAddr = self.private_ip.as_deref()?.parse().ok()?;
            Some(SocketAddr::new(ip, port))
        })
    }
}

pub fn filter(name: &str, values: impl IntoIterator<Item = impl Into<String>>) -> Filter {
    let mut b = Filter::builder().name(name);
    for v in values {
        b = b.values(v);
    }
    b.build()
}

pub fn tag_filter(key: &str, values: impl IntoIterator<Item = impl Into<String>>) -> Filter {
    filter(&format!("tag:{key}"), values)
}

/// Every instance, not yet terminated, matching `filters` (paginated).
pub async fn describe(ec2: &aws_sdk_ec2::Client, filters: Vec<Filter>) -> Result<Vec<Ec2Instance>> {
    let mut out = Vec::new();
    let mut pages = ec2
        .describe_instances()
        .set_filters(Some(filters))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AwsError::api("DescribeInstances", e))?;
        for r in page.reservations() {
            for i in r.instances() {
                out.push(Ec2Instance::from_sdk(i));
            }
        }
    }
    out.sort_by(|a, b| {
        (&a.role, a.cluster, &a.name, &a.id).cmp(&(&b.role, b.cluster, &b.name, &b.id))
    });
    Ok(out)
}

/// The deployment's instances by tag, terminated ones excluded.
pub async fn of_deployment(
    ec2: &aws_sdk_ec2::Client,
    deployment: &str,
) -> Result<Vec<Ec2Instance>> {
    let states = [
        InstanceStateName::Pending,
        InstanceStateName::Running,
        InstanceStateName::ShuttingDown,
        InstanceStateName::Stopping,
        InstanceStateName::Stopped,
    ];
    describe(
        ec2,
        vec![
            tag_filter(tags::DEPLOYMENT, [deployment]),
            filter("instance-state-name", states.iter().map(|s| s.as_str())),
        ],
    )
    .await
}

/// Instances by id. Ids the service no longer knows are simply absent (terminated instances
/// disappear after a while).
pub async fn by_ids(ec2: &aws_sdk_ec2::Client, ids: &[String]) -> Result<Vec<Ec2Instance>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // A filter on instance-id, unlike InstanceIds, does not fail the whole call for one id
    // that has aged out.
    describe(ec2, vec![filter("instance-id", ids.iter().cloned())]).await
}

/// The deployment's instances by tag, and those its state records that the tag query did not
/// return (terminated ones excluded).
pub async fn tagged_or_recorded(
    ec2: &aws_sdk_ec2::Client,
    deployment: &str,
    recorded: &[state::Instance],
) -> Result<Vec<Ec2Instance>> {
    let mut found = of_deployment(ec2, deployment).await?;
    let extra: Vec<String> = recorded
        .iter()
        .filter(|i| !found.iter().any(|x| x.id == i.id))
        .map(|i| i.id.clone())
        .collect();
    found.extend(by_ids(ec2, &extra).await?);
    Ok(found)
}

/// The deployment's live instances (state plus tag), freshly described.
pub async fn current(ec2: &aws_sdk_ec2::Client, st: &State) -> Result<Vec<Ec2Instance>> {
    let mut found = tagged_or_recorded(ec2, &st.name, &st.instances).await?;
    found.retain(|i| i.is_live() || i.state == "stopped" || i.state == "stopping");
    Ok(found)
}
