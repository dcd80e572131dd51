//! The balancer's instance profile: a role EC2 may assume, allowed exactly the two calls the
//! balancer makes (`ec2:DescribeInstances` to find workers, `cloudwatch:GetMetricData` to read
//! their CPU). Neither action supports resource-level permissions, hence `Resource: "*"`.
//!
//! AWS Academy accounts cannot create roles; there `--instance-profile LabInstanceProfile`
//! names an existing profile, which `down` leaves alone.

use aws_sdk_iam::types::Tag;

use crate::error::{AwsError, Result};
use crate::tags;

pub const POLICY_NAME: &str = "fulcrum-balancer";

const TRUST: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [{
    "Effect": "Allow",
    "Principal": {"Service": "ec2.amazonaws.com"},
    "Action": "sts:AssumeRole"
  }]
}"#;

pub const POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [{
    "Sid": "FulcrumBalancer",
    "Effect": "Allow",
    "Action": ["ec2:DescribeInstances", "cloudwatch:GetMetricData"],
    "Resource": "*"
  }]
}"#;

fn tag(deployment: &str) -> Tag {
    Tag::builder()
        .key(tags::DEPLOYMENT)
        .value(deployment)
        .build()
        .expect("key and value are set")
}

/// Creates (or completes) the role, its inline policy and the instance profile holding it.
/// Each step tolerates "already exists", so an interrupted `up` resumes cleanly.
pub async fn ensure(iam: &aws_sdk_iam::Client, deployment: &str, name: &str) -> Result<()> {
    let exists = |e: &AwsError| e.code() == Some("EntityAlreadyExists");
    match iam
        .create_role()
        .role_name(name)
        .assume_role_policy_document(TRUST)
        .description(format!(
            "fulcrum deployment {deployment}: the balancer finds workers and reads their CPU"
        ))
        .tags(tag(deployment))
        .send()
        .await
        .map_err(|e| AwsError::api(format!("CreateRole {name}"), e))
    {
        Ok(_) => {}
        Err(e) if exists(&e) => {}
        Err(e) => return Err(e),
    }
    iam.put_role_policy()
        .role_name(name)
        .policy_name(POLICY_NAME)
        .policy_document(POLICY)
        .send()
        .await
        .map_err(|e| AwsError::api(format!("PutRolePolicy {name}"), e))?;
    match iam
        .create_instance_profile()
        .instance_profile_name(name)
        .tags(tag(deployment))
        .send()
        .await
        .map_err(|e| AwsError::api(format!("CreateInstanceProfile {name}"), e))
    {
        Ok(_) => {}
        Err(e) if exists(&e) => {}
        Err(e) => return Err(e),
    }
    let profile = iam
        .get_instance_profile()
        .instance_profile_name(name)
        .send()
        .await
        .map_err(|e| AwsError::api(format!("GetInstanceProfile {name}"), e))?;
    let has_role = profile
        .instance_profile()
        .is_some_and(|p| p.roles().iter().any(|r| r.role_name() == name));
    if !has_role {
        iam.add_role_to_instance_profile()
            .instance_profile_name(name)
            .role_name(name)
            .send()
            .await
            .map_err(|e| AwsError::api(format!("AddRoleToInstanceProfile {name}"), e))?;
    }
    Ok(())
}

/// Removes the profile and the role; absent pieces are fine.
pub async fn remove(iam: &aws_sdk_iam::Client, profile: &str, role: Option<&str>) -> Result<()> {
    let ok_if_gone = |r: Result<()>| match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    };
    if let Some(role) = role {
        ok_if_gone(
            iam.remove_role_from_instance_profile()
                .instance_profile_name(profile)
                .role_name(role)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| AwsError::api(format!("RemoveRoleFromInstanceProfile {profile}"), e)),
        )?;
    }
    ok_if_gone(
        iam.delete_instance_profile()
            .instance_profile_name(profile)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::api(format!("DeleteInstanceProfile {profile}"), e)),
    )?;
    if let Some(role) = role {
        ok_if_gone(
            iam.delete_role_policy()
                .role_name(role)
                .policy_name(POLICY_NAME)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| AwsError::api(format!("DeleteRolePolicy {role}"), e)),
        )?;
        ok_if_gone(
            iam.delete_role()
                .role_name(role)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| AwsError::api(format!("DeleteRole {role}"), e)),
        )?;
    }
    Ok(())
}

/// Whether an IAM role of this name exists and carries the deployment's tag (for
/// `down --by-tag`: never remove a role fulcrum did not make).
pub async fn is_ours(iam: &aws_sdk_iam::Client, deployment: &str, role: &str) -> Result<bool> {
    match iam.get_role().role_name(role).send().await {
        Ok(r) => Ok(r.role().is_some_and(|r| {
            r.tags()
                .iter()
                .any(|t| t.key() == tags::DEPLOYMENT && t.value() == deployment)
        })),
        Err(e) => {
            let e = AwsError::api(format!("GetRole {role}"), e);
            if e.is_not_found() {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}
