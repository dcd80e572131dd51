//! `fulcrum up --provider aws`: look at what exists, print the plan and its hourly cost, ask
//! (or take `--yes`), create what is missing in dependency order — recording each resource in
//! the state the moment it exists — then wait as asked.
//!
//! `up` converges: run twice, the second run finds everything and creates nothing; after a
//! failure it resumes where the first stopped (or `down` removes what was made).

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_ec2::types::{
    HttpTokensState, IamInstanceProfileSpecification, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceType, KeyType, ResourceType,
    RunInstancesMonitoringEnabled, Tag, TagSpecification,
};
use base64::Engine as _;
use fulcrum_deploy::catalog;
use fulcrum_deploy::topology::{Cluster, Topology};

use crate::error::{AwsError, Result};
use crate::instances::{self, filter, Ec2Instance};
use crate::security_groups::{self as sg, Rule};
use crate::session::Session;
use crate::state::{self, State, StateDir};
use crate::{delivery, instance_profile, tags, user_data, wait, AwsOptions, Wait};

/// Amazon Linux 2023 (x86_64), from AWS's public SSM parameter: its glibc (2.34) runs the
/// fulcrum binary built on Debian 12, and the t2/t3 types are x86_64.
pub const DEFAULT_AMI_PARAMETER: &str =
    "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";
/// The balancer's admin listener stays on the instance's loopback.
const ADMIN_ADDRESS: &str = "127.0.0.1:9900";
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);

pub fn tag_spec(rt: ResourceType, deployment: &str, extra: &[(&str, &str)]) -> TagSpecification {
    let mut b = TagSpecification::builder().resource_type(rt).tags(
        Tag::builder()
            .key(tags::DEPLOYMENT)
            .value(deployment)
            .build(),
    );
    for (k, v) in extra {
        b = b.tags(Tag::builder().key(*k).value(*v).build());
    }
    b.build()
}

/// What exists already, looked up before the plan is shown.
struct Inventory {
    key_pair: bool,
    balancer_group: Option<String>,
    worker_group: Option<String>,
    profile_ready: bool,
    bucket_exists: bool,
    instances: Vec<Ec2Instance>,
}

impl Inventory {
    fn live(&self, role: &str, cluster: Option<u32>) -> Vec<&Ec2Instance> {
        self.instances
            .iter()
            .filter(|i| i.is_live() && i.role == role && i.cluster == cluster)
            .collect()
    }
}

/// Returns whether anything was created.
pub async fn up(t: &Topology, opts: &AwsOptions) -> anyhow::Result<bool> {
    sg::check_cidr("--allow-cidr", &opts.allow_cidr)?;
    if let Some(c) = &opts.ssh_cidr {
        sg::check_cidr("--ssh-cidr", c)?;
    }
    for c in &t.clusters {
        check_x86(c.instance_type.name)?;
    }
    let balancer_type = catalog::lookup(&t.aws.balancer_instance_type)
        .map_err(|e| AwsError::Usage(format!("aws.balancer_instance_type: {e}")))?;
    check_x86(balancer_type.name)?;
    let dir = StateDir::new(&opts.state_dir, &t.name);
    let prior = dir.load()?;
    let explicit = opts
        .region
        .clone()
        .or_else(|| prior.as_ref().map(|s| s.region.clone()));
    let session = Session::connect(explicit.as_deref(), t.aws.region.as_deref()).await?;
    if let Some(p) = &prior {
        if p.region != session.region {
            return Err(AwsError::Usage(format!(
                "deployment `{}` lives in {}, not {}: pass --region {} (or `down` it first)",
                t.name, p.region, session.region, p.region
            ))
            .into());
        }
    }
    let mut st = prior.unwrap_or_else(|| State::new(&t.name, &session.region));
    let ami = resolve_ami(&session, opts.ami.as_deref()).await?;
    let inv = inventory(&session, &dir, &st, t, opts).await?;
    let plan = plan(t, opts, &st, &inv, &ami, balancer_type);
    print!("{}", plan.text);
    if plan.creates == 0 && plan.terminates.is_empty() {
        println!("Nothing to create: deployment `{}` is complete.", t.name);
    } else {
        confirm(opts)?;
        let surplus = &plan.terminates;
        if let Err(e) = apply(
            t,
            opts,
            &session,
            &dir,
            &mut st,
            &inv,
            &ami,
            balancer_type,
            surplus,
        )
        .await
        {
            let e = anyhow::Error::from(e);
            return Err(e.context(format!(
                "`up` stopped halfway; everything created so far is recorded in {} — rerun `up` \
                 to finish, or `fulcrum down --provider aws --name {}` to remove it",
                dir.state_file().display(),
                t.name
            )));
        }
        println!("Created; state in {}.", dir.state_file().display());
    }
    wait_for(&session, &st, opts).await?;
    if opts.wait != Wait::None {
        print_endpoints(&session, &st).await?;
    }
    Ok(plan.creates > 0)
}

/// The binary is x86_64 Linux; ARM (Graviton) types would not run it: `a1`, and families whose
/// attribute letters after the generation include `g` (t4g, m6g, c7gn, r8gd). `g4dn` is x86.
fn check_x86(name: &str) -> Result<()> {
    let family = name.split('.').next().unwrap_or_default();
    let attributes = family.trim_start_matches(|c: char| c.is_ascii_lowercase());
    let attributes = attributes.trim_start_matches(|c: char| c.is_ascii_digit());
    if family == "a1" || attributes.contains('g') {
        return Err(AwsError::Usage(format!(
            "{name} is an ARM (Graviton) type and the fulcrum binary is x86_64: pick an x86 type"
        )));
    }
    Ok(())
}

async fn resolve_ami(session: &Session, ami: Option<&str>) -> Result<String> {
    let parameter = match ami {
        Some(a) => match a.strip_prefix("resolve:ssm:") {
            Some(p) => p.to_owned(),
            None => return Ok(a.to_owned()),
        },
        None => DEFAULT_AMI_PARAMETER.to_owned(),
    };
    let got = session
        .ssm
        .get_parameter()
        .name(&parameter)
        .send()
        .await
        .map_err(|e| AwsError::api(format!("SSM GetParameter {parameter} (the AMI)"), e))?;
    got.parameter()
        .and_then(|p| p.value())
        .map(str::to_owned)
        .ok_or_else(|| {
            AwsError::Usage(format!(
                "SSM parameter {parameter} has no value; pass --ami"
            ))
        })
}

async fn inventory(
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
        None => {
            let name = tags::balancer_role(&t.name);
            match session
                .iam
                .get_instance_profile()
                .instance_profile_name(&name)
                .send()
                .await
            {
                Ok(p) => p
                    .instance_profile()
                    .is_some_and(|p| p.roles().iter().any(|r| r.role_name() == name)),
                Err(e) => {
                    let e = AwsError::api(format!("GetInstanceProfile {name}"), e);
                    if !e.is_not_found() {
                        return Err(e);
                    }
                    false
                }
            }
        }
    };
    let bucket_exists = match (&opts.binary_url, &st.bucket) {
        (None, Some(b)) => session.s3.head_bucket().bucket(b).send().await.is_ok(),
        _ => false,
    };
    let mut instances = instances::of_deployment(ec2, &t.name).await?;
    let extra: Vec<String> = st
        .instances
        .iter()
        .filter(|i| !instances.iter().any(|x| x.id == i.id))
        .map(|i| i.id.clone())
        .collect();
    instances.extend(instances::by_ids(ec2, &extra).await?);
    Ok(Inventory {
        key_pair,
        balancer_group,
        worker_group,
        profile_ready,
        bucket_exists,
        instances,
    })
}

async fn key_pair_exists(ec2: &aws_sdk_ec2::Client, name: &str) -> Result<bool> {
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
        .filters(instances::tag_filter(tags::DEPLOYMENT, [deployment]))
        .send()
        .await
        .map_err(|e| AwsError::api(format!("DescribeSecurityGroups {name}"), e))?;
    Ok(r.security_groups()
        .first()
        .and_then(|g| g.group_id())
        .map(str::to_owned))
}

struct Plan {
    text: String,
    creates: usize,
    /// Instances beyond a cluster's count (the topology lowered it).
    terminates: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
fn plan(
    t: &Topology,
    opts: &AwsOptions,
    st: &State,
    inv: &Inventory,
    ami: &str,
    balancer_type: &catalog::InstanceType,
) -> Plan {
    let mut text = format!(
        "Plan for deployment `{}` in {} (AMI {ami}):\n",
        t.name, st.region
    );
    let mut creates = 0;
    let mut line = |create: bool, what: String, text: &mut String| {
        if create {
            creates += 1;
        }
        text.push_str(&format!("  {} {what}\n", if create { "+" } else { "=" }));
    };
    line(
        !inv.key_pair,
        format!(
            "key pair {} (private key saved 0600 in {})",
            tags::key_pair(&t.name),
            opts.state_dir.join(&t.name).display()
        ),
        &mut text,
    );
    let ssh = opts
        .ssh_cidr
        .as_deref()
        .map_or("SSH closed".to_owned(), |c| format!("SSH from {c}"));
    line(
        inv.balancer_group.is_none(),
        format!(
            "security group {}: tcp {} and 443 from {}; {ssh}",
            tags::balancer_group(&t.name),
            t.aws.balancer_port,
            opts.allow_cidr
        ),
        &mut text,
    );
    line(
        inv.worker_group.is_none(),
        format!(
            "security group {}: tcp {} from the balancer's group only; {ssh}",
            tags::worker_group(&t.name),
            t.aws.worker_port
        ),
        &mut text,
    );
    match &opts.instance_profile {
        Some(p) => text.push_str(&format!("  = instance profile {p} (existing, left alone)\n")),
        None => line(
            !inv.profile_ready,
            format!(
                "IAM role and instance profile {} (ec2:DescribeInstances, cloudwatch:GetMetricData only)",
                tags::balancer_role(&t.name)
            ),
            &mut text,
        ),
    }
    match &opts.binary_url {
        Some(u) => text.push_str(&format!(
            "  = binary from {}\n",
            u.split('?').next().unwrap_or(u)
        )),
        None => {
            let size = std::fs::metadata(&opts.binary)
                .map(|m| m.len())
                .unwrap_or(0);
            line(
                !inv.bucket_exists,
                format!(
                    "private S3 bucket {} with the fulcrum binary ({:.1} MB), fetched through a \
                     presigned URL valid {}",
                    st.bucket.as_deref().unwrap_or("fulcrum-<name>-<random>"),
                    size as f64 / 1e6,
                    humantime::format_duration(delivery::URL_LIFETIME)
                ),
                &mut text,
            );
        }
    }
    let mut cost = 0.0;
    let mut terminates = Vec::new();
    let mut instance_line =
        |n: usize, ty: &catalog::InstanceType, what: String, exist: usize, text: &mut String| {
            let missing = n.saturating_sub(exist);
            cost += n as f64 * ty.price_per_hour;
            text.push_str(&format!(
                "  {} {n} × {:<9} {what:<24} ${:.4}/h each, ${:.4}/h{}\n",
                if missing > 0 { "+" } else { "=" },
                ty.name,
                ty.price_per_hour,
                n as f64 * ty.price_per_hour,
                if missing > 0 && exist > 0 {
                    format!(" ({missing} to create)")
                } else {
                    String::new()
                }
            ));
            missing
        };
    for c in &t.clusters {
        let live = inv.live(tags::ROLE_WORKER, Some(c.id));
        creates += instance_line(
            c.count as usize,
            c.instance_type,
            format!("cluster {} ({})", c.id, c.route),
            live.len(),
            &mut text,
        );
        for extra in live.iter().skip(c.count as usize) {
            terminates.push(extra.id.clone());
            text.push_str(&format!(
                "  - terminate {} (cluster {} has more than {} instances)\n",
                extra.id, c.id, c.count
            ));
        }
    }
    let balancers = inv.live(tags::ROLE_BALANCER, None);
    creates += instance_line(
        1,
        balancer_type,
        format!("balancer (port {})", t.aws.balancer_port),
        balancers.len(),
        &mut text,
    );
    for extra in balancers.iter().skip(1) {
        terminates.push(extra.id.clone());
        text.push_str(&format!("  - terminate {} (a second balancer)\n", extra.id));
    }
    text.push_str(&format!(
        "Hourly on-demand cost: ${cost:.4}/h (Linux, us-east-1 list prices; EBS volumes, data \
         transfer and detailed monitoring are billed on top; `fulcrum down --provider aws` stops \
         it all)\n"
    ));
    Plan {
        text,
        creates,
        terminates,
    }
}

fn confirm(opts: &AwsOptions) -> Result<()> {
    if opts.yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(AwsError::Usage(
            "not applied: pass --yes to apply the plan without a terminal to confirm on".into(),
        ));
    }
    print!("Apply this plan? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(AwsError::Usage("not applied (answer `y` to apply)".into()))
    }
}

#[allow(clippy::too_many_arguments)]
async fn apply(
    t: &Topology,
    opts: &AwsOptions,
    session: &Session,
    dir: &StateDir,
    st: &mut State,
    inv: &Inventory,
    ami: &str,
    balancer_type: &catalog::InstanceType,
    surplus: &[String],
) -> Result<()> {
    let ec2 = &session.ec2;
    let name = t.name.as_str();
    st.clusters = t
        .clusters
        .iter()
        .map(|c| state::ClusterSpec {
            id: c.id,
            route: c.route.clone(),
            instance_type: c.instance_type.name.to_owned(),
            count: c.count,
            work_us: c.work_us,
        })
        .collect();
    st.worker_port = t.aws.worker_port;
    st.balancer_port = t.aws.balancer_port;
    st.ami = Some(ami.to_owned());
    // Instances that exist but the state lost (an interrupted RunInstances) join it.
    for i in &inv.instances {
        if i.is_live() && !st.instances.iter().any(|s| s.id == i.id) {
            st.instances.push(state::Instance {
                id: i.id.clone(),
                role: i.role.clone(),
                cluster: i.cluster,
                instance_type: i.instance_type.clone(),
            });
        }
    }
    dir.save(st)?;

    // Network: the default VPC unless a subnet is given.
    let (vpc, subnet) = network(ec2, opts.subnet.as_deref()).await?;
    st.vpc_id = Some(vpc.clone());
    st.subnet_id = subnet.clone();
    dir.save(st)?;

    ensure_key_pair(ec2, dir, st, name, inv.key_pair).await?;

    let (balancer_group, created) = sg::ensure_group(
        ec2,
        name,
        &tags::balancer_group(name),
        &format!("fulcrum {name}: the balancer, HTTP/HTTPS from the allowed CIDR"),
        &vpc,
        st.balancer_group.as_deref(),
    )
    .await?;
    st.balancer_group = Some(balancer_group.clone());
    dir.save(st)?;
    report(
        created,
        "security group",
        &format!("{} ({balancer_group})", tags::balancer_group(name)),
    );
    let (worker_group, created) = sg::ensure_group(
        ec2,
        name,
        &tags::worker_group(name),
        &format!("fulcrum {name}: the workers, reachable from the balancer only"),
        &vpc,
        st.worker_group.as_deref(),
    )
    .await?;
    st.worker_group = Some(worker_group.clone());
    dir.save(st)?;
    report(
        created,
        "security group",
        &format!("{} ({worker_group})", tags::worker_group(name)),
    );
    let rules: Vec<(String, Vec<Rule>)> = vec![
        (
            balancer_group.clone(),
            sg::balancer_rules(
                t.aws.balancer_port,
                &opts.allow_cidr,
                opts.ssh_cidr.as_deref(),
            ),
        ),
        (
            worker_group.clone(),
            sg::worker_rules(t.aws.worker_port, &balancer_group, opts.ssh_cidr.as_deref()),
        ),
    ];
    for (group, wanted) in &rules {
        let (added, revoked) = sg::reconcile(ec2, group, wanted).await?;
        if added + revoked > 0 {
            println!("  rules of {group}: {added} added, {revoked} revoked");
        }
    }

    let profile = match &opts.instance_profile {
        Some(p) => {
            st.instance_profile = Some(state::InstanceProfile {
                name: p.clone(),
                created: false,
                role: None,
            });
            dir.save(st)?;
            p.clone()
        }
        None => {
            let role = tags::balancer_role(name);
            // Recorded before creation: the name is fixed, and `down` tolerates absent parts.
            st.instance_profile = Some(state::InstanceProfile {
                name: role.clone(),
                created: true,
                role: Some(role.clone()),
            });
            dir.save(st)?;
            if !inv.profile_ready {
                instance_profile::ensure(&session.iam, name, &role).await?;
                report(true, "instance profile", &role);
            }
            role
        }
    };

    let binary_url = match &opts.binary_url {
        Some(u) => u.clone(),
        None => {
            let bucket = match &st.bucket {
                Some(b) => b.clone(),
                None => {
                    let b = delivery::new_bucket_name(name);
                    st.bucket = Some(b.clone());
                    dir.save(st)?;
                    b
                }
            };
            if !inv.bucket_exists {
                delivery::ensure_bucket(&session.s3, &session.region, name, &bucket).await?;
                report(true, "S3 bucket", &bucket);
            }
            if delivery::upload(&session.s3, &bucket, &opts.binary).await? {
                println!(
                    "  uploaded {} to s3://{bucket}/{}",
                    opts.binary.display(),
                    delivery::OBJECT_KEY
                );
            }
            delivery::presigned_url(&session.s3, &bucket).await?
        }
    };

    let launch = Launch {
        ec2,
        name,
        ami,
        key: &tags::key_pair(name),
        subnet: subnet.as_deref(),
    };
    for c in &t.clusters {
        let live = inv.live(tags::ROLE_WORKER, Some(c.id));
        let missing = (c.count as usize).saturating_sub(live.len());
        if missing == 0 {
            continue;
        }
        let data = user_data::worker(&binary_url, c.id, t.aws.worker_port, c.work_us);
        let taken: Vec<&str> = live.iter().filter_map(|i| i.name.as_deref()).collect();
        launch
            .run(
                dir,
                st,
                LaunchSpec {
                    role: tags::ROLE_WORKER,
                    cluster: Some(c),
                    instance_type: c.instance_type.name,
                    count: missing,
                    group: &worker_group,
                    user_data: &data,
                    profile: None,
                    taken: &taken,
                },
            )
            .await?;
    }
    if inv.live(tags::ROLE_BALANCER, None).is_empty() {
        let config = user_data::balancer_config(
            t,
            &session.region,
            &format!("0.0.0.0:{}", t.aws.balancer_port),
            ADMIN_ADDRESS,
            DISCOVERY_INTERVAL,
        );
        let data = user_data::balancer(&binary_url, &config, &session.region);
        launch
            .run(
                dir,
                st,
                LaunchSpec {
                    role: tags::ROLE_BALANCER,
                    cluster: None,
                    instance_type: balancer_type.name,
                    count: 1,
                    group: &balancer_group,
                    user_data: &data,
                    profile: Some(&profile),
                    taken: &[],
                },
            )
            .await?;
    }
    // The topology lowered a count: the surplus goes, once the rest is in place.
    if !surplus.is_empty() {
        ec2.terminate_instances()
            .set_instance_ids(Some(surplus.to_vec()))
            .send()
            .await
            .map_err(|e| AwsError::api("TerminateInstances (surplus)", e))?;
        println!("  terminating {} surplus instance(s)", surplus.len());
    }
    Ok(())
}

fn report(created: bool, what: &str, id: &str) {
    if created {
        println!("  created {what} {id}");
    }
}

async fn network(
    ec2: &aws_sdk_ec2::Client,
    subnet: Option<&str>,
) -> Result<(String, Option<String>)> {
    match subnet {
        Some(s) => {
            let r = ec2
                .describe_subnets()
                .subnet_ids(s)
                .send()
                .await
                .map_err(|e| AwsError::api(format!("DescribeSubnets {s}"), e))?;
            let vpc = r
                .subnets()
                .first()
                .and_then(|s| s.vpc_id())
                .ok_or_else(|| AwsError::Usage(format!("subnet {s} not found in this region")))?;
            Ok((vpc.to_owned(), Some(s.to_owned())))
        }
        None => {
            let r = ec2
                .describe_vpcs()
                .filters(filter("is-default", ["true"]))
                .send()
                .await
                .map_err(|e| AwsError::api("DescribeVpcs (default VPC)", e))?;
            let vpc = r.vpcs().first().and_then(|v| v.vpc_id()).ok_or_else(|| {
                AwsError::Usage(
                    "this region has no default VPC: pass --subnet SUBNET_ID (a subnet that \
                     assigns public addresses)"
                        .into(),
                )
            })?;
            Ok((vpc.to_owned(), None))
        }
    }
}

async fn ensure_key_pair(
    ec2: &aws_sdk_ec2::Client,
    dir: &StateDir,
    st: &mut State,
    name: &str,
    ready: bool,
) -> Result<()> {
    let key_name = tags::key_pair(name);
    let path = dir.key_file(&key_name);
    if ready {
        if st.key_pair.is_none() {
            st.key_pair = Some(state::KeyPair {
                name: key_name,
                id: None,
                private_key: path,
            });
            dir.save(st)?;
        }
        return Ok(());
    }
    if key_pair_exists(ec2, &key_name).await? {
        // It exists but its private key is not here: useless. Replace it only if it is ours.
        let r = ec2
            .describe_key_pairs()
            .filters(filter("key-name", [key_name.as_str()]))
            .filters(instances::tag_filter(tags::DEPLOYMENT, [name]))
            .send()
            .await
            .map_err(|e| AwsError::api(format!("DescribeKeyPairs {key_name}"), e))?;
        if r.key_pairs().is_empty() {
            return Err(AwsError::Usage(format!(
                "a key pair named {key_name} exists that fulcrum did not create: delete it or \
                 use another deployment name"
            )));
        }
        ec2.delete_key_pair()
            .key_name(&key_name)
            .send()
            .await
            .map_err(|e| AwsError::api(format!("DeleteKeyPair {key_name}"), e))?;
    }
    if path.exists() {
        // A key file without its key pair: stale. Keep it aside rather than overwrite it.
        let aside = path.with_extension("pem.old");
        std::fs::rename(&path, &aside).map_err(|e| AwsError::File {
            path: path.clone(),
            message: format!("cannot move a stale private key aside: {e}"),
        })?;
    }
    let created = ec2
        .create_key_pair()
        .key_name(&key_name)
        .key_type(KeyType::Ed25519)
        .tag_specifications(tag_spec(ResourceType::KeyPair, name, &[]))
        .send()
        .await
        .map_err(|e| AwsError::api(format!("CreateKeyPair {key_name}"), e))?;
    st.key_pair = Some(state::KeyPair {
        name: key_name.clone(),
        id: created.key_pair_id().map(str::to_owned),
        private_key: path.clone(),
    });
    dir.save(st)?;
    let material = created.key_material().unwrap_or_default();
    dir.save_private_key(&path, material)?;
    println!(
        "  created key pair {key_name}; private key in {}",
        path.display()
    );
    Ok(())
}

struct Launch<'a> {
    ec2: &'a aws_sdk_ec2::Client,
    name: &'a str,
    ami: &'a str,
    key: &'a str,
    subnet: Option<&'a str>,
}

struct LaunchSpec<'a> {
    role: &'a str,
    cluster: Option<&'a Cluster>,
    instance_type: &'a str,
    count: usize,
    group: &'a str,
    user_data: &'a str,
    profile: Option<&'a str>,
    /// Names already used in this cluster.
    taken: &'a [&'a str],
}

impl Launch<'_> {
    async fn run(&self, dir: &StateDir, st: &mut State, spec: LaunchSpec<'_>) -> Result<()> {
        let cluster_tag = spec.cluster.map(|c| c.id.to_string());
        let what = match spec.cluster {
            Some(c) => format!(
                "{} × {} for cluster {}",
                spec.count, spec.instance_type, c.id
            ),
            None => format!("the balancer ({})", spec.instance_type),
        };
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
        let send = || {
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
                .user_data(&encoded)
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
                .tag_specifications(tag_spec(ResourceType::Instance, self.name, &instance_tags))
                .tag_specifications(tag_spec(ResourceType::Volume, self.name, &tag_pairs));
            if let Some(p) = spec.profile {
                req = req.iam_instance_profile(
                    IamInstanceProfileSpecification::builder().name(p).build(),
                );
            }
            let what = what.clone();
            async move {
                req.send()
                    .await
                    .map_err(|e| AwsError::api(format!("RunInstances ({what})"), e))
            }
        };
        // A new instance profile takes a few seconds to be visible to EC2: retry only that.
        let profile_not_visible = |e: &AwsError| {
            let m = e.to_string().to_ascii_lowercase();
            spec.profile.is_some()
                && e.code() == Some("InvalidParameterValue")
                && (m.contains("instance profile") || m.contains("iaminstanceprofile"))
        };
        let out = wait::retry_while(profile_not_visible, Duration::from_secs(90), send).await?;
        let launched: Vec<String> = out
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        for id in &launched {
            st.instances.push(state::Instance {
                id: id.clone(),
                role: spec.role.to_owned(),
                cluster: spec.cluster.map(|c| c.id),
                instance_type: spec.instance_type.to_owned(),
            });
        }
        dir.save(st)?;
        println!("  launched {what}: {}", launched.join(" "));
        // Distinct names, for the console and `status`.
        if let Some(c) = spec.cluster {
            let mut index = 0;
            for id in &launched {
                let name = loop {
                    let n = tags::worker_name(self.name, c.id, index);
                    index += 1;
                    if !spec.taken.contains(&n.as_str()) {
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
        }
        Ok(())
    }
}

/// The deployment's live instances (state plus tag), freshly described.
pub async fn current_instances(session: &Session, st: &State) -> Result<Vec<Ec2Instance>> {
    let mut found = instances::of_deployment(&session.ec2, &st.name).await?;
    let extra: Vec<String> = st
        .instances
        .iter()
        .filter(|i| !found.iter().any(|x| x.id == i.id))
        .map(|i| i.id.clone())
        .collect();
    found.extend(instances::by_ids(&session.ec2, &extra).await?);
    found.retain(|i| i.is_live() || i.state == "stopped" || i.state == "stopping");
    Ok(found)
}

async fn wait_for(session: &Session, st: &State, opts: &AwsOptions) -> anyhow::Result<()> {
    if opts.wait == Wait::None {
        return Ok(());
    }
    let expected = st.clusters.iter().map(|c| c.count as usize).sum::<usize>() + 1;
    let advice =
        "`fulcrum status --provider aws` shows where each instance is; rerun `up` to keep \
                  waiting, or `down` to remove it";
    let started = std::time::Instant::now();
    wait::until("instances to run", opts.wait_timeout, advice, || async {
        let found = current_instances(session, st).await?;
        if let Some(bad) = found
            .iter()
            .find(|i| i.state == "stopped" || i.state == "stopping")
        {
            return Err(AwsError::Usage(format!(
                "instance {} is {}: start it or terminate it and rerun `up`",
                bad.id, bad.state
            )));
        }
        let running = found.iter().filter(|i| i.state == "running").count();
        if running >= expected && found.len() >= expected {
            Ok(Ok(()))
        } else {
            Ok(Err(format!("{running}/{expected} running")))
        }
    })
    .await
    .context("waiting for the instances")?;
    println!("All {expected} instances are running.");
    if opts.wait != Wait::Healthy {
        return Ok(());
    }
    let left = opts.wait_timeout.saturating_sub(started.elapsed());
    let scope = crate::probe::ProbeScope::from_env();
    wait::until("services to answer /health", left, advice, || async {
        let found = current_instances(session, st).await?;
        let health = crate::status::health_of(&found, st, &scope).await;
        let healthy = health.values().filter(|h| h.is_healthy()).count();
        if healthy == found.len() && found.len() >= expected {
            Ok(Ok(()))
        } else {
            let waiting: Vec<String> = found
                .iter()
                .filter(|i| !health.get(&i.id).is_some_and(|h| h.is_healthy()))
                .take(3)
                .map(|i| {
                    format!(
                        "{} {}",
                        i.id,
                        health.get(&i.id).map_or("unknown", |h| h.label())
                    )
                })
                .collect();
            Ok(Err(format!(
                "{healthy}/{} healthy; e.g. {}",
                found.len(),
                waiting.join(", ")
            )))
        }
    })
    .await
    .context("waiting for health")?;
    println!("All {expected} instances answer /health.");
    Ok(())
}

async fn print_endpoints(session: &Session, st: &State) -> Result<()> {
    let found = current_instances(session, st).await?;
    if let Some(b) = found.iter().find(|i| i.role == tags::ROLE_BALANCER) {
        match b.outside_address(st.balancer_port) {
            Some(a) => println!("Balancer: http://{a}/  (routes: {})", routes(st)),
            None => println!("Balancer {} has no public address yet.", b.id),
        }
    }
    Ok(())
}

fn routes(st: &State) -> String {
    let mut r: Vec<String> = st.clusters.iter().map(|c| c.route.clone()).collect();
    r.push("/".into());
    r.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_types_are_refused() {
        assert!(check_x86("t2.micro").is_ok());
        assert!(check_x86("c5.large").is_ok());
        assert!(check_x86("t4g.micro").is_err());
        assert!(check_x86("a1.large").is_err());
        assert!(check_x86("c7gn.large").is_err());
        assert!(check_x86("g4dn.xlarge").is_ok());
        assert!(check_x86("m5.large").is_ok());
    }
}
