//! Launching instances: one `RunInstances` per cluster (and one for the balancer), tagged at
//! launch, then distinct `Name` tags for the workers.

use std::time::Duration;

use aws_sdk_ec2::operation::run_instances::RunInstancesOutput;
use aws_sdk_ec2::types::{
    HttpTokensState, IamInstanceProfileSpecification, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceType, ResourceType, RunInstancesMonitoringEnabled, Tag,
};
use base64::Engine as _;
use fulcrum_deploy::topology::Cluster;

use crate::error::{AwsError, Result};
use crate::tags::{self, tag_spec};
use crate::wait;

/// What every launch of one `up` shares.
pub struct Launch<'a> {
    pub ec2: &'a aws_sdk_ec2::Client,
    pub name: &'a str,
    pub ami: &'a str,
    pub key: &'a str,
    pub subnet: Option<&'a str>,
}

pub struct LaunchSpec<'a> {
    pub role: &'a str,
    pub cluster: Option<&'a Cluster>,
    pub instance_type: &'a str,
    pub count: usize,
    pub group: &'a str,
    pub user_data: &'a str,
    pub profile: Option<&'a str>,
    /// Names already used in this cluster.
    pub taken: &'a [&'a str],
}

impl LaunchSpec<'_> {
    /// What is launched, for messages.
    pub fn what(&self) -> String {
        match self.cluster {
            Some(c) => format!(
                "{} × {} for cluster {}",
                self.count, self.instance_type, c.id
            ),
            None => format!("the balancer ({})", self.instance_type),
        }
    }
}

impl Launch<'_> {
    /// Runs the instances of `spec`; returns their ids.
    pub async fn run_instances(&self, spec: &LaunchSpec<'_>) -> Result<Vec<String>> {
        let what = spec.what();
        let cluster_tag = spec.cluster.map(|c| c.id.to_string());
        let mut tag_pairs: Vec<(&str, &str)> = vec![(tags::ROLE, spec.role)];
        if let Some(c) = &cluster_tag {
            tag_pairs.push((tags::CLUSTER, c));
        }
        let group_name = match spec.cluster {
            Some(c) => format!("{}-c{}", tags::base(self.name), c.id),
            None => tags::balancer_name(self.name),
        };
        let mut instance_tags = tag_pairs.clone();
        instance_tags.push((tags::NAME, &group_name));
        let encoded = base64::engine::general_purpose::STANDARD.encode(spec.user_data);
        let send = || self.send(spec, &encoded, &instance_tags, &tag_pairs, what.clone());
        // A new instance profile takes a few seconds to be visible to EC2: retry only that.
        let profile_not_visible = |e: &AwsError| {
            let m = e.to_string().to_ascii_lowercase();
            spec.profile.is_some()
                && e.code() == Some("InvalidParameterValue")
                && (m.contains("instance profile") || m.contains("iaminstanceprofile"))
        };
        let out = wait::retry_while(profile_not_visible, Duration::from_secs(90), send).await?;
        Ok(out
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect())
    }

    /// One `RunInstances` call.
    fn send(
        &self,
        spec: &LaunchSpec<'_>,
        encoded_user_data: &str,
        instance_tags: &[(&str, &str)],
        volume_tags: &[(&str, &str)],
        what: String,
    ) -> impl std::future::Future<Output = Result<RunInstancesOutput>> {
        let mut req = self
            .ec2
            .run_instances()
            .image_id(self.ami)
            .instance_type(InstanceType::from(spec.instance_type))
            .min_count(spec.count as i32)
            .max_count(spec.count as i32)
            .key_name(self.key)
            .security_group_ids(spec.group)
            .set_subnet_id(self.subnet.map(str::to_owned))
            .user_data(encoded_user_data)
            // 1-minute CloudWatch metrics: the period the balancer's cloudwatch source reads.
            .monitoring(
                RunInstancesMonitoringEnabled::builder()
                    .enabled(true)
                    .build(),
            )
            // IMDSv2 only: the instance profile's credentials are not exposed to SSRF.
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .build(),
            )
            .tag_specifications(tag_spec(ResourceType::Instance, self.name, instance_tags))
            .tag_specifications(tag_spec(ResourceType::Volume, self.name, volume_tags));
        if let Some(p) = spec.profile {
            req = req
                .iam_instance_profile(IamInstanceProfileSpecification::builder().name(p).build());
        }
        async move {
            req.send()
                .await
                .map_err(|e| AwsError::api(format!("RunInstances ({what})"), e))
        }
    }

    /// Distinct names for a cluster's new workers, for the console and `status`.
    pub async fn name_workers(&self, cluster: u32, ids: &[String], taken: &[&str]) -> Result<()> {
        let mut index = 0;
        for id in ids {
            let name = loop {
                let n = tags::worker_name(self.name, cluster, index);
                index += 1;
                if !taken.contains(&n.as_str()) {
                    break n;
                }
            };
            self.ec2
                .create_tags()
                .resources(id)
                .tags(Tag::builder().key(tags::NAME).value(name).build())
                .send()
                .await
                .map_err(|e| AwsError::api(format!("CreateTags {id}"), e))?;
        }
        Ok(())
    }
}
