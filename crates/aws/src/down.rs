//! `fulcrum down --provider aws`: removes a deployment in the order AWS requires — instances
//! first, and only once they are terminated the security groups (a group in use, or named by
//! another group's rule, cannot be deleted: `DependencyViolation`), then the key pair, the
//! instance profile and role, the bucket, the state.
//!
//! Every step treats "already gone" as done and updates the state as it goes, so `down` can be
//! rerun after any failure and a second `down` succeeds. Instances tagged with the deployment
//! are removed too even if the state missed them (an interrupted `RunInstances`).
//! `--by-tag` rebuilds the list from tags when the state file is lost.

use std::time::Duration;

use crate::error::{AwsError, Result};
use crate::instances::{self, filter, tag_filter};
use crate::session::Session;
use crate::state::{self, State, StateDir};
use crate::{delivery, instance_profile, security_groups, tags, wait, AwsOptions};

pub async fn down(name: &str, opts: &AwsOptions, by_tag: bool) -> anyhow::Result<()> {
    let dir = StateDir::new(&opts.state_dir, name);
    let loaded = dir.load()?;
    let region = opts
        .region
        .clone()
        .or_else(|| loaded.as_ref().map(|s| s.region.clone()));
    let session = Session::connect(region.as_deref(), None).await?;
    let mut st = match loaded {
        Some(s) => s,
        None if by_tag => State::new(name, &session.region),
        None => {
            let tagged = instances::of_deployment(&session.ec2, name).await?;
            if !tagged.is_empty() {
                return Err(AwsError::Usage(format!(
                    "no state in {}, but {} instance(s) in {} are tagged {}={name}: run \
                     `fulcrum down --provider aws --name {name} --by-tag` to find and remove \
                     everything of the deployment by its tags",
                    dir.state_file().display(),
                    tagged.len(),
                    session.region,
                    tags::DEPLOYMENT
                ))
                .into());
            }
            println!(
                "Nothing to remove: no state for deployment `{name}` in {} and no instance \
                 tagged with it in {} (`--by-tag` searches every resource type).",
                dir.state_file().display(),
                session.region
            );
            return Ok(());
        }
    };
    if by_tag {
        adopt_by_tag(&session, &dir, &mut st).await?;
    }
    println!("Removing deployment `{name}` in {}:", session.region);
    remove(&session, &dir, &mut st, opts.wait_timeout)
        .await
        .map_err(|e| {
            anyhow::Error::from(e).context(format!(
                "`down` stopped; what is left is recorded in {} — rerun `down` to finish",
                dir.state_file().display()
            ))
        })?;
    dir.remove()?;
    println!("Deployment `{name}` removed.");
    Ok(())
}

/// Fills the state with every resource carrying the deployment's tag (or, for IAM and S3,
/// its names and tag).
async fn adopt_by_tag(session: &Session, dir: &StateDir, st: &mut State) -> Result<()> {
    let name = st.name.clone();
    let ec2 = &session.ec2;
    for i in instances::of_deployment(ec2, &name).await? {
        if !st.instances.iter().any(|s| s.id == i.id) {
            st.instances.push(state::Instance {
                id: i.id,
                role: i.role,
                cluster: i.cluster,
                instance_type: i.instance_type,
            });
        }
    }
    let groups = ec2
        .describe_security_groups()
        .filters(tag_filter(tags::DEPLOYMENT, [name.as_str()]))
        .send()
        .await
        .map_err(|e| AwsError::api("DescribeSecurityGroups (by tag)", e))?;
    for g in groups.security_groups() {
        let id = g.group_id().unwrap_or_default().to_owned();
        if g.group_name() == Some(tags::balancer_group(&name).as_str()) {
            st.balancer_group = Some(id);
        } else {
            st.worker_group = Some(id);
        }
    }
    let keys = ec2
        .describe_key_pairs()
        .filters(tag_filter(tags::DEPLOYMENT, [name.as_str()]))
        .send()
        .await
        .map_err(|e| AwsError::api("DescribeKeyPairs (by tag)", e))?;
    if let Some(k) = keys.key_pairs().first() {
        let key_name = k.key_name().unwrap_or_default().to_owned();
        st.key_pair = Some(state::KeyPair {
            private_key: dir.key_file(&key_name),
            name: key_name,
            id: k.key_pair_id().map(str::to_owned),
        });
    }
    let role = tags::balancer_role(&name);
    if instance_profile::is_ours(&session.iam, &name, &role).await? {
        st.instance_profile = Some(state::InstanceProfile {
            name: role.clone(),
            created: true,
            role: Some(role),
        });
    }
    if let Some(b) = delivery::find_buckets(&session.s3, &name)
        .await?
        .into_iter()
        .next()
    {
        st.bucket = Some(b);
    }
    println!(
        "Found by tag: {} instance(s), {} security group(s), {} key pair, {} instance profile, {} bucket.",
        st.instances.len(),
        usize::from(st.balancer_group.is_some()) + usize::from(st.worker_group.is_some()),
        usize::from(st.key_pair.is_some()),
        usize::from(st.instance_profile.is_some()),
        usize::from(st.bucket.is_some()),
    );
    dir.save(st)
}

async fn remove(
    session: &Session,
    dir: &StateDir,
    st: &mut State,
    timeout: Duration,
) -> Result<()> {
    terminate_instances(session, dir, st, timeout).await?;
    delete_security_groups(session, dir, st, timeout).await?;
    if let Some(k) = st.key_pair.clone() {
        match session.ec2.delete_key_pair().key_name(&k.name).send().await {
            Ok(_) => {}
            Err(e) => {
                let e = AwsError::api(format!("DeleteKeyPair {}", k.name), e);
                if !e.is_not_found() {
                    return Err(e);
                }
            }
        }
        match std::fs::remove_file(&k.private_key) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(AwsError::File {
                    path: k.private_key.clone(),
                    message: format!("cannot remove the private key: {e}"),
                })
            }
        }
        println!("  deleted key pair {} and its private key", k.name);
        st.key_pair = None;
        dir.save(st)?;
    }
    if let Some(p) = st.instance_profile.clone() {
        if p.created {
            instance_profile::remove(&session.iam, &p.name, p.role.as_deref()).await?;
            println!("  deleted instance profile and role {}", p.name);
        }
        st.instance_profile = None;
        dir.save(st)?;
    }
    if let Some(b) = st.bucket.clone() {
        delivery::remove_bucket(&session.s3, &b).await?;
        println!("  deleted bucket {b}");
        st.bucket = None;
        dir.save(st)?;
    }
    Ok(())
}

/// Terminates the state's and the tagged instances, then waits until every one is
/// terminated: only then do their network interfaces release the security groups.
async fn terminate_instances(
    session: &Session,
    dir: &StateDir,
    st: &mut State,
    timeout: Duration,
) -> Result<()> {
    let ec2 = &session.ec2;
    let mut ids: Vec<String> = st.instances.iter().map(|i| i.id.clone()).collect();
    for i in instances::of_deployment(ec2, &st.name).await? {
        if !ids.contains(&i.id) {
            ids.push(i.id);
        }
    }
    let alive: Vec<String> = instances::by_ids(ec2, &ids)
        .await?
        .into_iter()
        .filter(|i| !i.is_gone())
        .map(|i| i.id)
        .collect();
    if !alive.is_empty() {
        for chunk in alive.chunks(500) {
            ec2.terminate_instances()
                .set_instance_ids(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| AwsError::api("TerminateInstances", e))?;
        }
        println!("  terminating {} instance(s)", alive.len());
        wait::until(
            "instances to terminate",
            timeout,
            "rerun `down`: it picks up where it stopped",
            || async {
                let left: Vec<_> = instances::by_ids(ec2, &alive)
                    .await?
                    .into_iter()
                    .filter(|i| !i.is_gone())
                    .collect();
                if left.is_empty() {
                    Ok(Ok(()))
                } else {
                    Ok(Err(format!("{} of {} left", left.len(), alive.len())))
                }
            },
        )
        .await?;
        println!("  {} instance(s) terminated", alive.len());
    }
    st.instances.clear();
    dir.save(st)
}

/// Deletes the deployment's security groups: first the rules that name a group (AWS refuses
/// to delete a group another group's rule refers to), then the groups, retrying
/// `DependencyViolation` while terminated instances' interfaces are released.
async fn delete_security_groups(
    session: &Session,
    dir: &StateDir,
    st: &mut State,
    timeout: Duration,
) -> Result<()> {
    let ec2 = &session.ec2;
    // Workers first: their rule names the balancer's group.
    let groups: Vec<String> = [st.worker_group.clone(), st.balancer_group.clone()]
        .into_iter()
        .flatten()
        .collect();
    let existing: Vec<String> = if groups.is_empty() {
        Vec::new()
    } else {
        ec2.describe_security_groups()
            .filters(filter("group-id", groups.iter().cloned()))
            .send()
            .await
            .map_err(|e| AwsError::api("DescribeSecurityGroups", e))?
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_owned))
            .collect()
    };
    for g in &existing {
        match security_groups::reconcile(ec2, g, &[]).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    for g in &groups {
        if existing.contains(g) {
            let deleted = wait::until(
                &format!("security group {g} to be released"),
                timeout,
                "something else still uses it (an instance outside the deployment, an ENI): \
                 detach it, then rerun `down`",
                || async {
                    match ec2.delete_security_group().group_id(g).send().await {
                        Ok(_) => Ok(Ok(())),
                        Err(e) => {
                            let e = AwsError::api(format!("DeleteSecurityGroup {g}"), e);
                            if e.is_not_found() {
                                Ok(Ok(()))
                            } else if e.code() == Some("DependencyViolation") {
                                Ok(Err("still in use".to_owned()))
                            } else {
                                Err(e)
                            }
                        }
                    }
                },
            )
            .await;
            deleted?;
            println!("  deleted security group {g}");
        }
        if st.worker_group.as_deref() == Some(g.as_str()) {
            st.worker_group = None;
        }
        if st.balancer_group.as_deref() == Some(g.as_str()) {
            st.balancer_group = None;
        }
        dir.save(st)?;
    }
    Ok(())
}
