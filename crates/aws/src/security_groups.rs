//! The deployment's two security groups and their ingress rules, least privilege:
//!
//! - balancer group: HTTP (the balancer's port) and HTTPS (443) from `--allow-cidr`; SSH from
//!   `--ssh-cidr` only if given;
//! - worker group: the worker port from the balancer group only; SSH from `--ssh-cidr` only if
//!   given.
//!
//! `up` makes the rules exactly these: missing ones are added, others revoked. Egress stays
//! AWS's default (instances fetch the binary and call the EC2 and CloudWatch APIs).

use aws_sdk_ec2::types::{IpPermission, IpRange, ResourceType, UserIdGroupPair};

use crate::error::{AwsError, Result};
use crate::instances::{filter, tag_filter};
use crate::tags;

/// One ingress rule: TCP `port` from a CIDR or from a security group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub port: u16,
    pub from: Source,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Cidr(String),
    Group(String),
}

pub fn balancer_rules(balancer_port: u16, allow_cidr: &str, ssh_cidr: Option<&str>) -> Vec<Rule> {
    let mut rules = vec![
        Rule {
            port: balancer_port,
            from: Source::Cidr(allow_cidr.to_owned()),
            description: "fulcrum balancer HTTP".into(),
        },
        Rule {
            port: 443,
            from: Source::Cidr(allow_cidr.to_owned()),
            description: "fulcrum balancer HTTPS".into(),
        },
    ];
    if let Some(c) = ssh_cidr {
        rules.push(ssh(c));
    }
    rules.sort();
    rules.dedup_by(|a, b| a.port == b.port && a.from == b.from);
    rules
}

pub fn worker_rules(worker_port: u16, balancer_group: &str, ssh_cidr: Option<&str>) -> Vec<Rule> {
    let mut rules = vec![Rule {
        port: worker_port,
        from: Source::Group(balancer_group.to_owned()),
        description: "fulcrum worker, from the balancer only".into(),
    }];
    if let Some(c) = ssh_cidr {
        rules.push(ssh(c));
    }
    rules.sort();
    rules
}

fn ssh(cidr: &str) -> Rule {
    Rule {
        port: 22,
        from: Source::Cidr(cidr.to_owned()),
        description: "SSH from the operator".into(),
    }
}

/// Checks a CIDR flag before anything is created.
pub fn check_cidr(flag: &str, cidr: &str) -> Result<()> {
    match crate::probe::parse_cidr(cidr) {
        Some((ip, _)) if ip.is_ipv4() => Ok(()),
        _ => Err(AwsError::Usage(format!(
            "{flag} `{cidr}` is not an IPv4 CIDR like 203.0.113.7/32"
        ))),
    }
}

fn permission(r: &Rule) -> IpPermission {
    let b = IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(i32::from(r.port))
        .to_port(i32::from(r.port));
    match &r.from {
        Source::Cidr(c) => b
            .ip_ranges(
                IpRange::builder()
                    .cidr_ip(c)
                    .description(&r.description)
                    .build(),
            )
            .build(),
        Source::Group(g) => b
            .user_id_group_pairs(
                UserIdGroupPair::builder()
                    .group_id(g)
                    .description(&r.description)
                    .build(),
            )
            .build(),
    }
}

/// The rules a group has now, as `(protocol, from, to, source)`.
fn current(perms: &[IpPermission]) -> Vec<(IpPermission, (String, i32, i32, Source))> {
    let mut out = Vec::new();
    for p in perms {
        let proto = p.ip_protocol().unwrap_or_default().to_owned();
        let (from, to) = (p.from_port().unwrap_or(-1), p.to_port().unwrap_or(-1));
        let base = IpPermission::builder()
            .ip_protocol(&proto)
            .set_from_port(p.from_port())
            .set_to_port(p.to_port());
        for r in p.ip_ranges() {
            let cidr = r.cidr_ip().unwrap_or_default().to_owned();
            out.push((
                base.clone()
                    .ip_ranges(IpRange::builder().cidr_ip(&cidr).build())
                    .build(),
                (proto.clone(), from, to, Source::Cidr(cidr)),
            ));
        }
        for g in p.user_id_group_pairs() {
            let id = g.group_id().unwrap_or_default().to_owned();
            out.push((
                base.clone()
                    .user_id_group_pairs(UserIdGroupPair::builder().group_id(&id).build())
                    .build(),
                (proto.clone(), from, to, Source::Group(id)),
            ));
        }
        for r in p.ipv6_ranges() {
            let cidr = r.cidr_ipv6().unwrap_or_default().to_owned();
            out.push((
                base.clone().ipv6_ranges(r.clone()).build(),
                (proto.clone(), from, to, Source::Cidr(cidr)),
            ));
        }
        for l in p.prefix_list_ids() {
            let id = l.prefix_list_id().unwrap_or_default().to_owned();
            out.push((
                base.clone().prefix_list_ids(l.clone()).build(),
                (proto.clone(), from, to, Source::Group(id)),
            ));
        }
    }
    out
}

/// Finds the deployment's group named `name` in `vpc`, or creates it (tagged); returns its id
/// and whether it was created.
pub async fn ensure_group(
    ec2: &aws_sdk_ec2::Client,
    deployment: &str,
    name: &str,
    description: &str,
    vpc: &str,
    known: Option<&str>,
) -> Result<(String, bool)> {
    if let Some(id) = known {
        let found = describe_ids(ec2, &[id.to_owned()]).await?;
        if !found.is_empty() {
            return Ok((id.to_owned(), false));
        }
    }
    let existing = ec2
        .describe_security_groups()
        .filters(filter("group-name", [name]))
        .filters(filter("vpc-id", [vpc]))
        .filters(tag_filter(tags::DEPLOYMENT, [deployment]))
        .send()
        .await
        .map_err(|e| AwsError::api(format!("DescribeSecurityGroups {name}"), e))?;
    if let Some(id) = existing
        .security_groups()
        .first()
        .and_then(|g| g.group_id())
    {
        return Ok((id.to_owned(), false));
    }
    let created = ec2
        .create_security_group()
        .group_name(name)
        .description(description)
        .vpc_id(vpc)
        .tag_specifications(tags::tag_spec(
            ResourceType::SecurityGroup,
            deployment,
            &[(tags::NAME, name)],
        ))
        .send()
        .await
        .map_err(|e| AwsError::api(format!("CreateSecurityGroup {name}"), e))?;
    let id = created.group_id().unwrap_or_default().to_owned();
    Ok((id, true))
}

async fn describe_ids(ec2: &aws_sdk_ec2::Client, ids: &[String]) -> Result<Vec<String>> {
    let r = ec2
        .describe_security_groups()
        .filters(filter("group-id", ids.iter().cloned()))
        .send()
        .await
        .map_err(|e| AwsError::api("DescribeSecurityGroups", e))?;
    Ok(r.security_groups()
        .iter()
        .filter_map(|g| g.group_id().map(str::to_owned))
        .collect())
}

/// Makes the group's ingress exactly `wanted`: revokes the others, authorizes the missing.
/// Returns `(added, revoked)`.
pub async fn reconcile(
    ec2: &aws_sdk_ec2::Client,
    group: &str,
    wanted: &[Rule],
) -> Result<(usize, usize)> {
    let described = ec2
        .describe_security_groups()
        .group_ids(group)
        .send()
        .await
        .map_err(|e| AwsError::api(format!("DescribeSecurityGroups {group}"), e))?;
    let perms = described
        .security_groups()
        .first()
        .map(|g| g.ip_permissions().to_vec())
        .unwrap_or_default();
    let have = current(&perms);
    let key = |r: &Rule| {
        (
            "tcp".to_owned(),
            i32::from(r.port),
            i32::from(r.port),
            r.from.clone(),
        )
    };
    let wanted_keys: Vec<_> = wanted.iter().map(key).collect();
    let extra: Vec<IpPermission> = have
        .iter()
        .filter(|(_, k)| !wanted_keys.contains(k))
        .map(|(p, _)| p.clone())
        .collect();
    let missing: Vec<IpPermission> = wanted
        .iter()
        .filter(|r| !have.iter().any(|(_, k)| *k == key(r)))
        .map(permission)
        .collect();
    if !extra.is_empty() {
        ec2.revoke_security_group_ingress()
            .group_id(group)
            .set_ip_permissions(Some(extra.clone()))
            .send()
            .await
            .map_err(|e| AwsError::api(format!("RevokeSecurityGroupIngress {group}"), e))?;
    }
    if !missing.is_empty() {
        match ec2
            .authorize_security_group_ingress()
            .group_id(group)
            .set_ip_permissions(Some(missing.clone()))
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) => {
                let e = AwsError::api(format!("AuthorizeSecurityGroupIngress {group}"), e);
                // Someone (a concurrent `up`) added it meanwhile: the goal is reached.
                if e.code() != Some("InvalidPermission.Duplicate") {
                    return Err(e);
                }
            }
        }
    }
    Ok((missing.len(), extra.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_least_privilege() {
        let b = balancer_rules(80, "0.0.0.0/0", None);
        assert_eq!(b.len(), 2);
        assert!(b.iter().all(|r| r.port == 80 || r.port == 443));
        let w = worker_rules(8000, "sg-b", None);
        assert_eq!(
            w,
            vec![Rule {
                port: 8000,
                from: Source::Group("sg-b".into()),
                description: "fulcrum worker, from the balancer only".into()
            }]
        );
        let w = worker_rules(8000, "sg-b", Some("203.0.113.7/32"));
        assert!(w
            .iter()
            .any(|r| r.port == 22 && r.from == Source::Cidr("203.0.113.7/32".into())));
        assert!(!w.iter().any(|r| r.from == Source::Cidr("0.0.0.0/0".into())));
        assert!(check_cidr("--ssh-cidr", "203.0.113.7/32").is_ok());
        assert!(check_cidr("--ssh-cidr", "203.0.113.7").is_err());
    }
}
