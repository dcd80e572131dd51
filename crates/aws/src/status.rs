//! `fulcrum status --provider aws` and the deployment summary the experiment reads: the
//! deployment's instances with their state, addresses and health (see [`crate::health`]).

use fulcrum_deploy::catalog;
use fulcrum_loadgen::results::{ClusterInfo, Deployment, InstanceInfo};
use serde_json::json;

use crate::error::AwsError;
use crate::health::health_of;
use crate::instances::{self, Ec2Instance};
use crate::probe::ProbeScope;
use crate::session::Session;
use crate::state::{State, StateDir};
use crate::{tags, AwsOptions};

/// The state and the session for a deployment that must exist.
async fn open(name: &str, opts: &AwsOptions) -> anyhow::Result<(State, Session)> {
    let dir = StateDir::new(&opts.state_dir, name);
    let st = dir.load()?;
    let region = opts
        .region
        .clone()
        .or_else(|| st.as_ref().map(|s| s.region.clone()));
    let session = Session::connect(region.as_deref(), None).await?;
    match st {
        Some(st) => Ok((st, session)),
        None => {
            let tagged = instances::of_deployment(&session.ec2, name).await?;
            if tagged.is_empty() {
                Err(AwsError::Usage(format!(
                    "no AWS deployment `{name}`: no state in {} and no instance tagged {}={name} \
                     in {}",
                    dir.state_file().display(),
                    tags::DEPLOYMENT,
                    session.region
                ))
                .into())
            } else {
                // The state is lost but instances exist: show them from their tags.
                eprintln!(
                    "warning: no state in {}; showing the {} instance(s) tagged {}={name} \
                     (remove them with `down --by-tag`)",
                    dir.state_file().display(),
                    tagged.len(),
                    tags::DEPLOYMENT
                );
                let mut st = State::new(name, &session.region);
                st.worker_port = 8000;
                st.balancer_port = 80;
                Ok((st, session))
            }
        }
    }
}

pub async fn status(name: &str, opts: &AwsOptions, json: bool) -> anyhow::Result<()> {
    let (st, session) = open(name, opts).await?;
    let found = instances::current(&session.ec2, &st).await?;
    let health = health_of(&found, &st, &ProbeScope::from_env()).await;
    let balancer_url = balancer_url(&found, &st);
    if json {
        let list: Vec<_> = found
            .iter()
            .map(|i| {
                json!({
                    "instance_id": i.id,
                    "role": i.role,
                    "cluster": i.cluster,
                    "instance_type": i.instance_type,
                    "state": i.state,
                    "public_ip": i.public_ip,
                    "private_ip": i.private_ip,
                    "endpoint": i.endpoint.map(|e| e.to_string()),
                    "health": health.get(&i.id).map(|h| h.label()),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "name": name,
                "provider": "aws",
                "region": st.region,
                "balancer_url": balancer_url,
                "instances": list,
            }))?
        );
        return Ok(());
    }
    println!(
        "deployment `{name}` on AWS ({}): {} instance(s){}",
        st.region,
        found.len(),
        balancer_url
            .as_deref()
            .map(|u| format!(", balancer {u}"))
            .unwrap_or_default()
    );
    println!(
        "{:<9} {:<7} {:<20} {:<10} {:<9} {:<16} {:<16} HEALTH",
        "ROLE", "CLUSTER", "INSTANCE", "TYPE", "STATE", "PUBLIC", "PRIVATE"
    );
    for i in &found {
        println!(
            "{:<9} {:<7} {:<20} {:<10} {:<9} {:<16} {:<16} {}",
            i.role,
            i.cluster
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            i.id,
            i.instance_type,
            i.state,
            i.public_ip.as_deref().unwrap_or("-"),
            i.private_ip.as_deref().unwrap_or("-"),
            health.get(&i.id).map_or("-", |h| h.label())
        );
    }
    Ok(())
}

fn balancer_url(found: &[Ec2Instance], st: &State) -> Option<String> {
    found
        .iter()
        .find(|i| i.role == tags::ROLE_BALANCER && i.is_live())
        .and_then(|b| b.outside_address(st.balancer_port))
        .map(|a| format!("http://{a}"))
}

pub async fn deployment(name: &str, opts: &AwsOptions) -> anyhow::Result<Deployment> {
    let dir = StateDir::new(&opts.state_dir, name);
    let st = dir.load()?.ok_or_else(|| {
        AwsError::Usage(format!(
            "no AWS deployment `{name}` in {}: `fulcrum up --provider aws` first",
            dir.state_file().display()
        ))
    })?;
    let region = opts.region.clone().unwrap_or_else(|| st.region.clone());
    let session = Session::connect(Some(&region), None).await?;
    let found = instances::current(&session.ec2, &st).await?;
    let balancer_url = balancer_url(&found, &st).ok_or_else(|| {
        AwsError::Usage(format!(
            "deployment `{name}` has no running balancer with an address: `fulcrum up --provider aws` \
             to complete it"
        ))
    })?;
    let vcpus = |ty: &str| catalog::lookup(ty).map_or(1, |t| t.vcpus);
    Ok(Deployment {
        name: name.to_owned(),
        provider: "aws".into(),
        balancer_url,
        admin_url: None,
        emulation: None,
        clusters: st
            .clusters
            .iter()
            .map(|c| ClusterInfo {
                id: c.id,
                route: c.route.clone(),
                instance_type: c.instance_type.clone(),
                count: c.count,
                vcpus_per_instance: vcpus(&c.instance_type),
                cores_per_instance: f64::from(vcpus(&c.instance_type)),
                work_us: c.work_us,
            })
            .collect(),
        instances: found
            .iter()
            .filter(|i| i.role == tags::ROLE_WORKER && i.is_live())
            .map(|i| InstanceInfo {
                cluster: i.cluster.unwrap_or(0),
                instance_id: i.id.clone(),
                address: i
                    .inside_address(st.worker_port)
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                instance_type: i.instance_type.clone(),
                cores: f64::from(vcpus(&i.instance_type)),
            })
            .collect(),
    })
}
